//! Outbound rules (`[[outbound]]`, `lb outbound add`): which backends leave through which
//! frontend addresses, with how many ports each, and what is inside (never translated).
//!
//! One owner for the rule's checks ([`check_rule`] for one rule alone, [`check_all`] for the
//! rules against the rest of the desired state) and for the computation of every backend's
//! block ([`blocks`]), which calls the pure allocation of `lb_common::outbound`. The config
//! file, the CLI and the reconciler all go through these.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use lb_common::{
    consts::{MAX_OUTBOUND_BACKENDS, MAX_OUTBOUND_FRONTENDS, MAX_OUTBOUND_INSIDE},
    maps::{HAIRPIN_PORT_BASE, HAIRPIN_PORTS},
    outbound::{Frontend, OUT_F_TCP, OUT_F_UDP, Slot, allocate, check_ports_per_backend},
};
use serde::{Deserialize, Serialize};

use crate::{
    spec::{Hairpin, ServiceSpec},
    state::State,
};

/// Frontend addresses one rule may have.
pub const MAX_FRONTENDS_PER_RULE: usize = 16;

/// One outbound rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundRule {
    /// Its name: letters, digits, `-` and `_`, at most 63.
    pub name: String,
    /// The addresses covered backends' flows leave with (VIPs, or other addresses the LB
    /// owns), in order: blocks are cut from the first before the next.
    pub frontends: Vec<IpAddr>,
    /// The services whose backends the rule covers.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// And these backend addresses.
    #[serde(default)]
    pub backends: Vec<IpAddr>,
    /// Ports each covered backend gets on a frontend: a multiple of 8.
    pub ports_per_backend: u32,
    /// Destinations never translated: flows to them keep the backend's own address.
    #[serde(default, with = "crate::spec::serde_prefixes")]
    pub inside: Vec<(IpAddr, u8)>,
    /// `tcp`, `udp`, or both (the default).
    #[serde(default = "both")]
    pub protocols: Vec<String>,
    /// `stateful` (the default): the LB picks each flow's port and tracks the flow.
    /// `stateless`: each backend's own ephemeral port range is set to its block; only the
    /// address is rewritten, nothing is tracked, and any node maps a port back to its backend.
    #[serde(default)]
    pub mode: OutMode,
    /// TCP reset on idle: a TCP flow removed for being idle is reset on both sides, the
    /// backend and the remote.
    #[serde(default)]
    pub tcp_reset: bool,
    /// Idle timeout of the rule's flows (TCP and UDP); the protocol's default when unset.
    #[serde(
        default,
        with = "crate::spec::serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
}

/// How a rule translates: see [`OutboundRule::mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutMode {
    #[default]
    Stateful,
    Stateless,
}

impl std::str::FromStr for OutMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stateful" => Ok(Self::Stateful),
            "stateless" => Ok(Self::Stateless),
            o => Err(format!("mode {o:?}: stateful or stateless")),
        }
    }
}

impl std::fmt::Display for OutMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Stateful => "stateful",
            Self::Stateless => "stateless",
        })
    }
}

fn both() -> Vec<String> {
    vec!["tcp".into(), "udp".into()]
}

impl OutboundRule {
    /// The fast path's `OUT_F_*` protocol bits (the rule was checked).
    #[must_use]
    pub fn flags(&self) -> u32 {
        let mode = match self.mode {
            OutMode::Stateful => 0,
            OutMode::Stateless => lb_common::outbound::OUT_F_STATELESS,
        } | if self.tcp_reset {
            lb_common::outbound::OUT_F_TCP_RESET
        } else {
            0
        };
        self.protocols.iter().fold(mode, |f, p| match p.as_str() {
            "tcp" => f | OUT_F_TCP,
            "udp" => f | OUT_F_UDP,
            _ => f,
        })
    }

    /// The rule's idle timeouts (TCP, UDP), seconds.
    #[must_use]
    pub fn idle_s(&self) -> (u32, u32) {
        match self.idle_timeout {
            Some(d) => {
                let s = u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
                (s, s)
            }
            None => (
                lb_common::conn::IDLE_TIMEOUT_TCP_S,
                lb_common::conn::IDLE_TIMEOUT_UDP_S,
            ),
        }
    }
}

fn v4(what: &str, a: IpAddr) -> Result<[u8; 4], String> {
    match a {
        IpAddr::V4(v)
            if !(v.is_unspecified() || v.is_multicast() || v.is_broadcast() || v.is_loopback()) =>
        {
            Ok(v.octets())
        }
        IpAddr::V4(_) => Err(format!("{what} {a} is not a unicast address")),
        IpAddr::V6(_) => Err(format!(
            "{what} {a}: IPv6 outbound rules are not supported yet"
        )),
    }
}

/// Checks one rule on its own: name, frontends, backends, ports, inside prefixes, protocols,
/// timeout.
///
/// # Errors
/// A message naming the field and the reason.
pub fn check_rule(r: &OutboundRule) -> Result<(), String> {
    let n = &r.name;
    if n.is_empty()
        || n.len() > 63
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("name {n:?}: 1 to 63 letters, digits, '-' or '_'"));
    }
    if r.frontends.is_empty() || r.frontends.len() > MAX_FRONTENDS_PER_RULE {
        return Err(format!(
            "rule {n}: frontends: {} given, 1 to {MAX_FRONTENDS_PER_RULE} needed",
            r.frontends.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for f in &r.frontends {
        v4("frontend", *f).map_err(|m| format!("rule {n}: {m}"))?;
        if !seen.insert(*f) {
            return Err(format!("rule {n}: frontend {f} is listed twice"));
        }
    }
    if r.services.is_empty() && r.backends.is_empty() {
        return Err(format!(
            "rule {n}: covers nothing: give services (their backends) or backends"
        ));
    }
    for s in &r.services {
        if !s.vip.is_ipv4() {
            return Err(format!(
                "rule {n}: service {s}: IPv6 outbound rules are not supported yet"
            ));
        }
    }
    for b in &r.backends {
        v4("backend", *b).map_err(|m| format!("rule {n}: {m}"))?;
    }
    check_ports_per_backend(r.ports_per_backend).map_err(|m| format!("rule {n}: {m}"))?;
    for (ip, len) in &r.inside {
        if !ip.is_ipv4() {
            return Err(format!(
                "rule {n}: inside {ip}/{len}: IPv6 outbound rules are not supported yet"
            ));
        }
    }
    if r.protocols.is_empty() {
        return Err(format!("rule {n}: protocols: none given (tcp, udp)"));
    }
    for p in &r.protocols {
        if p != "tcp" && p != "udp" {
            return Err(format!(
                "rule {n}: protocol {p:?}: only tcp and udp are translated"
            ));
        }
    }
    if r.tcp_reset && !r.protocols.iter().any(|p| p == "tcp") {
        return Err(format!(
            "rule {n}: tcp_reset applies to TCP, which the rule does not translate"
        ));
    }
    if r.tcp_reset && r.mode == OutMode::Stateless {
        return Err(format!(
            "rule {n}: tcp_reset needs tracked flows; a stateless rule tracks none"
        ));
    }
    if let Some(d) = r.idle_timeout {
        use lb_common::conn::{IDLE_TIMEOUT_MAX_S, IDLE_TIMEOUT_MIN_S};
        let range = u64::from(IDLE_TIMEOUT_MIN_S)..=u64::from(IDLE_TIMEOUT_MAX_S);
        if !range.contains(&d.as_secs()) || d.subsec_nanos() != 0 {
            return Err(format!(
                "rule {n}: idle_timeout {} must be whole seconds within {}..={}",
                crate::spec::format_duration(d),
                crate::spec::format_duration(Duration::from_secs(*range.start())),
                crate::spec::format_duration(Duration::from_secs(*range.end())),
            ));
        }
    }
    Ok(())
}

/// The backend addresses a rule covers in `state`: its services' backends and its own list.
#[must_use]
pub fn covered(r: &OutboundRule, state: &State) -> BTreeSet<[u8; 4]> {
    let mut out: BTreeSet<[u8; 4]> = r
        .backends
        .iter()
        .filter_map(|a| v4("backend", *a).ok())
        .collect();
    for s in &r.services {
        if let Some(st) = state.services.get(s) {
            out.extend(
                st.backends
                    .keys()
                    .filter_map(|a| v4("backend", a.ip()).ok()),
            );
        }
    }
    out
}

/// A rule's frontends with the ports no block may hold: every service port on the address
/// (whatever the protocol, so a block never hides a service), and the hairpin SNAT range where
/// the address is an internal VIP with hairpin SNAT.
#[must_use]
pub fn frontends(r: &OutboundRule, state: &State) -> Vec<Frontend> {
    r.frontends
        .iter()
        .filter_map(|f| {
            let addr = v4("frontend", *f).ok()?;
            let mut reserved = Vec::new();
            for (spec, st) in &state.services {
                if spec.vip.ip() != *f {
                    continue;
                }
                let p = spec.vip.port();
                reserved.push(p..=p);
                if !st.settings.internal.is_empty() && st.settings.hairpin == Hairpin::Snat {
                    reserved.push(HAIRPIN_PORT_BASE..=HAIRPIN_PORT_BASE + (HAIRPIN_PORTS - 1));
                }
            }
            Some(Frontend { addr, reserved })
        })
        .collect()
}

/// Every rule's blocks (rule name → backend → block), and the rules whose holds were dropped.
pub type Placed = (BTreeMap<String, BTreeMap<[u8; 4], Slot>>, Vec<String>);

/// Every rule's blocks: rule name → backend → block. `held` are blocks of backends that left
/// whose flows may still be alive, per rule; they stay taken. A rule whose holds no longer
/// leave room for its backends is allocated without them (the caller is told which, to warn:
/// the fast path's port choice still never reuses a port a live flow holds).
///
/// # Errors
/// A rule whose backends do not fit its frontends even without holds.
pub fn blocks(state: &State, held: &BTreeMap<String, BTreeSet<Slot>>) -> Result<Placed, String> {
    let mut out = BTreeMap::new();
    let mut dropped_holds = Vec::new();
    let none = BTreeSet::new();
    for r in state.outbound.values() {
        let fs = frontends(r, state);
        let bs = covered(r, state);
        let ppb = check_ports_per_backend(r.ports_per_backend)?;
        let h = held.get(&r.name).unwrap_or(&none);
        let got = match allocate(&fs, ppb, &bs, h) {
            Ok(a) => a,
            Err(_) if !h.is_empty() => {
                dropped_holds.push(r.name.clone());
                allocate(&fs, ppb, &bs, &none)
                    .map_err(|e| format!("outbound rule {}: {e}", r.name))?
            }
            Err(e) => return Err(format!("outbound rule {}: {e}", r.name)),
        };
        out.insert(r.name.clone(), got);
    }
    Ok((out, dropped_holds))
}

/// Why the rules and the rest of the desired state do not go together: the rule at fault (the
/// config file points at it) and the message, which names it too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    pub rule: String,
    /// The other rule of a conflict between two.
    pub other: Option<String>,
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Checks the rules against the rest of the desired state: the services they name exist, no
/// backend is covered twice, no frontend is shared or is a PIP, the map capacities, and every
/// rule's backends fit its frontends.
///
/// # Errors
/// The rule at fault, and a message naming the rule(s), the address and the numbers.
pub fn check_all(state: &State) -> Result<(), RuleError> {
    for r in state.outbound.values() {
        if let Some((other, message)) = conflict(r, state) {
            return Err(RuleError {
                rule: r.name.clone(),
                other: Some(other),
                message,
            });
        }
        check_one(r, state).map_err(|message| RuleError {
            rule: r.name.clone(),
            other: None,
            message,
        })?;
    }
    Ok(())
}

/// A conflict of rule `r` with a rule before it (by name): that rule, and the message.
fn conflict(r: &OutboundRule, state: &State) -> Option<(String, String)> {
    let mine = covered(r, state);
    for o in state.outbound.values().filter(|o| o.name < r.name) {
        if let Some(f) = r.frontends.iter().find(|f| o.frontends.contains(f)) {
            return Some((
                o.name.clone(),
                format!(
                    "outbound rules {} and {}: both use frontend {f} (a frontend address belongs to one rule)",
                    o.name, r.name
                ),
            ));
        }
        if let Some(b) = covered(o, state).intersection(&mine).next() {
            return Some((
                o.name.clone(),
                format!(
                    "backend {} is covered by outbound rules {} and {}: a backend leaves through one rule",
                    IpAddr::from(*b),
                    o.name,
                    r.name
                ),
            ));
        }
    }
    None
}

/// [`check_all`] for rule `r` alone: the services it names, its frontends, capacities, its fit.
fn check_one(r: &OutboundRule, state: &State) -> Result<(), String> {
    for s in &r.services {
        if !state.services.contains_key(s) {
            return Err(format!(
                "outbound rule {}: names service {s}, which does not exist (change or delete the rule first)",
                r.name
            ));
        }
    }
    let mine = covered(r, state);
    for f in &r.frontends {
        if state.pips.contains_key(f) || state.pips.values().any(|d| d == f) {
            return Err(format!(
                "outbound rule {}: frontend {f} is a PIP or a PIP's instance",
                r.name
            ));
        }
    }
    if let Some(b) = mine
        .iter()
        .find(|b| r.frontends.contains(&IpAddr::from(**b)))
    {
        return Err(format!(
            "outbound rule {}: backend {} is also its frontend",
            r.name,
            IpAddr::from(*b)
        ));
    }
    let backends: usize = state
        .outbound
        .values()
        .map(|o| covered(o, state).len())
        .sum();
    let fronts: usize = state.outbound.values().map(|o| o.frontends.len()).sum();
    let inside: usize = state.outbound.values().map(|o| o.inside.len()).sum();
    if backends > MAX_OUTBOUND_BACKENDS as usize
        || fronts > MAX_OUTBOUND_FRONTENDS as usize
        || inside > MAX_OUTBOUND_INSIDE as usize
    {
        return Err(format!(
            "outbound rules cover {backends} backends with {fronts} frontends and {inside} inside prefixes; at most {MAX_OUTBOUND_BACKENDS}, {MAX_OUTBOUND_FRONTENDS} and {MAX_OUTBOUND_INSIDE}"
        ));
    }
    let ppb = check_ports_per_backend(r.ports_per_backend)?;
    allocate(&frontends(r, state), ppb, &mine, &BTreeSet::new())
        .map(drop)
        .map_err(|e| format!("outbound rule {}: {e}", r.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]

[[outbound]]
name = "web"
frontends = ["203.0.113.10", "203.0.113.11"]
services = ["203.0.113.10:80/tcp"]
backends = ["192.0.2.20"]
ports_per_backend = 1024
inside = ["192.0.2.0/24"]
protocols = ["tcp"]
idle_timeout = "10m"
"#;

    #[test]
    fn a_config_rule_is_read_checked_and_saved_back() {
        let c = crate::config::parse("lb.toml", CONFIG).unwrap();
        assert_eq!(c.outbound.len(), 1);
        let r = &c.outbound[0];
        assert_eq!(r.flags(), OUT_F_TCP);
        assert_eq!(r.idle_s(), (600, 600));
        assert_eq!(r.mode, OutMode::Stateful);
        let s = State::from_config(&c);
        assert_eq!(
            covered(r, &s),
            BTreeSet::from([[192, 0, 2, 11], [192, 0, 2, 12], [192, 0, 2, 20]])
        );
        // The state file holds the rule as it was.
        let back = State::from_config(&crate::config::parse("state.toml", &s.to_toml()).unwrap());
        assert_eq!(back, s);
    }

    #[test]
    fn bad_rules_are_refused_at_their_line_with_the_reason() {
        let cases: Vec<(String, &str, &str)> = vec![
            (
                CONFIG.replace("ports_per_backend = 1024", "ports_per_backend = 1001"),
                "outbound[0]",
                "ports_per_backend 1001: must be a multiple of 8",
            ),
            (
                CONFIG.replace("protocols = [\"tcp\"]", "protocols = [\"icmp\"]"),
                "outbound[0]",
                "protocol \"icmp\": only tcp and udp",
            ),
            (
                CONFIG.replace(
                    "\"203.0.113.10:80/tcp\"]\nbackends = [\"192.0.2.20\"]",
                    "\"203.0.113.99:80/tcp\"]",
                ),
                "outbound[0]",
                "names service 203.0.113.99:80/tcp, which does not exist",
            ),
            (
                format!(
                    "{CONFIG}\n[[outbound]]\nname = \"two\"\nfrontends = [\"203.0.113.12\"]\nbackends = [\"192.0.2.11\"]\nports_per_backend = 8\n"
                ),
                "outbound[1]",
                "192.0.2.11 is covered by outbound rules two and web",
            ),
            (
                CONFIG.replace("ports_per_backend = 1024", "ports_per_backend = 64512"),
                "outbound[0]",
                "3 backends need 3 blocks of 64512 ports, but the frontends offer 2",
            ),
            (
                CONFIG.replace("name = \"web\"", "name = \"no spaces\""),
                "outbound[0]",
                "1 to 63 letters",
            ),
        ];
        for (text, field, reason) in cases {
            let e = crate::config::parse("lb.toml", &text).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(reason), "{e}");
            assert!(e.line > 0, "{e}");
        }
    }
}
