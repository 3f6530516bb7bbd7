#!/usr/bin/env bash
# Checks the deployment files under contrib/: alert rules and their unit tests, the Grafana
# dashboard, the systemd unit and its environment file, the example BIRD config, and (given an
# lb binary) the sample config.
#
#   contrib/check.sh                      # everything that needs no lb binary
#   contrib/check.sh target/debug/lb      # plus `lb config check contrib/lb.toml`
#
# Needs promtool (Debian/Ubuntu: apt-get install --no-install-recommends prometheus), bird
# (bird2) and python3. systemd-analyze is used when present. Every check runs even after one fails, and
# the script exits 1 if any failed: a missing tool that a check needs is a failure, never a
# silent pass. The one exception is systemd-analyze, which a container may lack; its absence
# is reported plainly.
set -euo pipefail

# Resolved before the cd below, so that a path relative to the caller's directory still works.
lb_bin=${1:+$(realpath -m "$1")}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cd "$repo"
failed=()
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pass() { printf 'ok    %s\n' "$1"; }
fail() {
    printf 'FAIL  %s\n' "$1"
    failed+=("$1")
}
# Runs a command, shows its output indented, and records the result under a name.
check() {
    local name=$1
    shift
    local out
    if out=$("$@" 2>&1); then
        pass "$name"
    else
        fail "$name"
    fi
    [[ -n $out ]] && printf '%s\n' "$out" | sed 's/^/      /'
    return 0
}

rules=contrib/prometheus/lb-alerts.yml
tests=contrib/prometheus/lb-alerts.test.yml
dashboard=contrib/grafana/lb-dashboard.json
unit=contrib/systemd/lb.service
defaults=contrib/systemd/lb.default
config=contrib/lb.toml
metrics_src=lb-userspace/src/metrics.rs

# --- Prometheus rules -------------------------------------------------------------------------
if command -v promtool >/dev/null; then
    check "promtool check rules $rules" promtool check rules "$rules"
    check "promtool test rules $tests" promtool test rules "$tests"
else
    fail "promtool not found: install it (apt-get install --no-install-recommends prometheus); rules not checked"
fi

# --- Metric names -----------------------------------------------------------------------------
# An alert on a metric that does not exist never fires, and nothing else would notice. Every
# lb_* name in the rules, their tests and the dashboard must be one the agent renders. The names
# come from metrics.rs itself (its code, not its tests): the literal ones, and the
# service/backend families that flow_counters builds from a prefix.
metric_names() {
    python3 - "$metrics_src" "$rules" "$tests" "$dashboard" <<'EOF'
import re, sys
src = open(sys.argv[1]).read().split("#[cfg(test)]")[0]
prefixes = set(re.findall(r'flow_counters\(\s*"(lb_[a-z_]+)"', src))
suffixes = set(re.findall(r'format!\(\s*"\{prefix\}(_[a-z_]+)"', src))
known = (set(re.findall(r'"(lb_[a-z_]+)"', src)) - prefixes) | {p + s for p in prefixes for s in suffixes}
if not prefixes or not suffixes or len(known) < 10:
    sys.exit(f"{sys.argv[1]}: could not read the metric names (found {sorted(known)})")
bad = 0
for path in sys.argv[2:]:
    used = set(re.findall(r'\blb_[a-z_]+', open(path).read()))
    unknown = used - known
    for name in sorted(unknown):
        print(f"{path}: {name} is not a metric the agent exports")
    if not unknown:
        print(f"{path}: {len(used)} metric names, all exported")
    bad += len(unknown)
sys.exit(1 if bad else 0)
EOF
}
if ! command -v python3 >/dev/null; then
    fail "python3 not found: metric names and the dashboard not checked"
elif [[ ! -f $metrics_src ]]; then
    fail "$metrics_src not found: metric names not checked"
else
    check "metric names exist in $metrics_src" metric_names
fi

# --- Grafana dashboard ------------------------------------------------------------------------
# Valid JSON first; then every panel query through promtool's PromQL parser, by writing them as
# recording rules with the dashboard variables replaced by what they expand to.
dashboard_exprs() {
    python3 - "$dashboard" "$tmp/dashboard-rules.yml" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
assert d.get("schemaVersion") == 39, "schemaVersion must be 39"
names = [v["name"] for v in d["templating"]["list"]]
assert "datasource" in names and "service" in names, f"template variables: {names}"
exprs = []
def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            assert t.get("datasource", {}).get("uid") == "${datasource}", f"panel {p['title']!r}: datasource"
            exprs.append((p["title"], t["expr"]))
walk(d["panels"])
assert exprs, "no panel queries"
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, e) in enumerate(exprs):
        for var, val in (("$__rate_interval", "5m"), ("$job", ".*"), ("$instance", ".*"), ("$service", ".*")):
            e = e.replace(var, val)
        assert "$" not in e, f"panel {title!r}: unknown variable in {e}"
        f.write(f"      - record: dashboard:expr:{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(exprs)} panel queries")
EOF
}
if command -v python3 >/dev/null; then
    check "json.tool $dashboard" python3 -m json.tool "$dashboard" /dev/null
    check "dashboard structure" dashboard_exprs
    if command -v promtool >/dev/null && [[ -f $tmp/dashboard-rules.yml ]]; then
        check "dashboard queries parse as PromQL" promtool check rules "$tmp/dashboard-rules.yml"
    fi
fi

# --- systemd ----------------------------------------------------------------------------------
# verify refuses a unit whose ExecStart binary is missing. Where lb is not installed as
# /usr/bin/lb, the unit is verified as a copy that names the given binary instead (or
# /bin/true), which checks everything but the path itself. verify reports unknown keys and
# bad values as warnings with exit status 0, so any line about the unit counts as a failure.
verify_unit() {
    local copy=$tmp/unit/lb.service stand_in
    mkdir -p "$tmp/unit"
    if [[ -x /usr/bin/lb ]]; then
        cp "$unit" "$copy"
    else
        stand_in=${lb_bin:-/bin/true}
        echo "/usr/bin/lb is not installed here: verifying with ExecStart/ExecReload on $stand_in"
        sed "s#/usr/bin/lb #$stand_in #g" "$unit" >"$copy"
    fi
    local out
    out=$(systemd-analyze verify "$copy" 2>&1) || {
        printf '%s\n' "$out"
        return 1
    }
    if grep -q 'lb\.service' <<<"$out"; then
        printf '%s\n' "$out"
        return 1
    fi
    [[ -z $out ]] || printf '%s\n' "$out"
}
if command -v systemd-analyze >/dev/null; then
    check "systemd-analyze verify $unit" verify_unit
else
    echo "systemd-analyze: not available, unit not verified"
fi

# An EnvironmentFile is not shell: only comments and NAME=value lines, and LB_IFACES must give
# the agent its required --iface.
check_defaults() {
    local bad
    bad=$(grep -nvE '^[[:space:]]*(#.*)?$|^[A-Za-z_][A-Za-z0-9_]*=' "$defaults" || true)
    if [[ -n $bad ]]; then
        printf 'not NAME=value:\n%s\n' "$bad"
        return 1
    fi
    grep -qE '^LB_IFACES=.*--iface ' "$defaults" || {
        echo "LB_IFACES must set at least one --iface"
        return 1
    }
}
check "environment file $defaults" check_defaults

# --- Sample config ----------------------------------------------------------------------------
if [[ -n $lb_bin ]]; then
    if [[ -x $lb_bin ]]; then
        check "$lb_bin config check $config" "$lb_bin" config check "$config"
    else
        fail "$lb_bin is not an executable: $config not checked"
    fi
else
    echo "lb binary not given: $config not checked (contrib/check.sh PATH/TO/lb checks it)"
fi

# --- BIRD ------------------------------------------------------------------------------------
# The example daemon config parses (bird -p), and is what `lb bgp example` prints for the
# sample config (the command renders it; the file must not drift from it).
bird_conf=contrib/bird/lb.conf
if command -v bird >/dev/null; then
    check "bird -p -c $bird_conf" bird -p -c "$bird_conf"
    if [[ -n $lb_bin && -x $lb_bin ]]; then
        "$lb_bin" bgp example --config "$config" >"$tmp/bird.conf"
        check "lb bgp example --config $config is $bird_conf" diff -u "$bird_conf" "$tmp/bird.conf"
    fi
else
    fail "bird not found: install it (apt-get install --no-install-recommends bird2); $bird_conf not checked"
fi

if ((${#failed[@]})); then
    printf '\n%d check(s) failed:\n' "${#failed[@]}" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
echo
echo "all checks passed"
