//! The deployment files under `contrib/` (alert rules and their promtool unit tests, the
//! Grafana dashboard, the systemd unit, the sample config, the example BIRD config) pass
//! `contrib/check.sh`, with the sample config checked by the real `lb config check` and the
//! BIRD config by `bird -p`. promtool or bird missing is a failure.

use std::process::Command;

#[test]
fn contrib_files_pass_their_checks() {
    let lb = lb_integration::lab::workspace_bin("lb").unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("contrib/check.sh"))
        .arg(&lb)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "contrib/check.sh failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
    // Each part ran (a check that silently skipped would not print its line).
    for part in [
        "ok    promtool check rules",
        "ok    promtool test rules",
        "ok    json.tool",
        "config check contrib/lb.toml",
        "ok    bird -p -c contrib/bird/lb.conf",
        "ok    lb bgp example --config contrib/lb.toml is contrib/bird/lb.conf",
    ] {
        assert!(text.contains(part), "missing `{part}`:\n{text}");
    }
    // systemd-analyze is used where it exists, and its absence is said.
    assert!(
        text.contains("ok    systemd-analyze verify")
            || text.contains("systemd-analyze: not available, unit not verified"),
        "{text}"
    );
}
