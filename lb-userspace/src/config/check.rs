//! The rules a config file and a CLI change both obey: each `check_*` refuses with a message
//! that names the setting (as the CLI spells it) and the reason.

use std::time::Duration;

use lb_common::{consts::MAX_TABLE_SIZE, health, maglev::is_prime};

use super::{MAX_WEIGHT, ServiceSettings};
use crate::spec::{BackendSpec, Hairpin, Proto, Replies, ServiceSpec};

/// Checks a PIP mapping: unicast addresses of one family, not the same address.
///
/// # Errors
/// A message naming the problem.
pub fn check_pip(pip: std::net::IpAddr, dip: std::net::IpAddr) -> Result<(), String> {
    if pip.is_ipv4() != dip.is_ipv4() {
        return Err(format!(
            "PIP {pip} and instance {dip} are not of the same address family"
        ));
    }
    for (what, a) in [("PIP", pip), ("instance", dip)] {
        let unicast = match a {
            std::net::IpAddr::V4(v4) => {
                !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback())
            }
            std::net::IpAddr::V6(v6) => {
                !(v6.is_unspecified()
                    || v6.is_multicast()
                    || v6.is_loopback()
                    || v6.is_unicast_link_local()
                    || v6.to_ipv4_mapped().is_some())
            }
        };
        if !unicast {
            return Err(format!("{what} {a} is not a unicast address"));
        }
    }
    if pip == dip {
        return Err(format!("PIP {pip} cannot map to itself"));
    }
    Ok(())
}

/// Checks an ACL rule for an endpoint: the prefix's family, the description.
///
/// # Errors
/// A message naming the problem.
pub fn check_acl_rule(
    s: &ServiceSpec,
    prefix: (std::net::IpAddr, u8),
    description: &str,
) -> Result<(), String> {
    if prefix.0.is_ipv4() != s.vip.is_ipv4() {
        return Err(format!(
            "prefix {}/{} is not of the same address family as {s}",
            prefix.0, prefix.1
        ));
    }
    if description.len() > 256 || description.chars().any(char::is_control) {
        return Err(
            "the description must be at most 256 characters without control characters".into(),
        );
    }
    Ok(())
}

/// Checks a port forward's target: an explicit port, the service's address family.
///
/// # Errors
/// A message naming the target and the problem.
pub fn check_forward(s: &ServiceSpec, to: &BackendSpec) -> Result<std::net::SocketAddr, String> {
    if s.proto == Proto::Any {
        return Err(format!(
            "{s} is HA ports (every port): a port forward is one VIP port to one backend port"
        ));
    }
    check_backend(s, to)?;
    let port = to
        .port
        .ok_or_else(|| format!("forward target {to} needs a port (DIP:PORT)"))?;
    Ok(std::net::SocketAddr::new(to.ip, port))
}

/// Checks a service's settings; the message names the setting (as the CLI spells it).
///
/// # Errors
/// The first setting that is out of range.
pub fn check_settings(s: &ServiceSettings) -> Result<(), String> {
    if s.hairpin == Hairpin::Snat && s.internal.is_empty() {
        return Err("--hairpin snat applies to internal VIPs only (give --internal PREFIX)".into());
    }
    if s.replies == Replies::Stateless && s.hairpin == Hairpin::Snat {
        return Err(
            "--replies stateless cannot be combined with --hairpin snat: a hairpin \
                    reply goes to the VIP's SNAT port, and only its flow can say so"
                .into(),
        );
    }
    check_floating(s)?;
    check_table_size(s.table_size).map_err(|m| format!("--table-size: {m}"))?;
    if !(Duration::from_millis(50)..=Duration::from_hours(1)).contains(&s.interval) {
        return Err(format!(
            "--probe-interval {} is outside 50ms..=60m",
            crate::spec::format_duration(s.interval)
        ));
    }
    if s.timeout < Duration::from_millis(10) || s.timeout > s.interval {
        return Err(format!(
            "--probe-timeout {} must be at least 10ms and at most the interval ({})",
            crate::spec::format_duration(s.timeout),
            crate::spec::format_duration(s.interval)
        ));
    }
    for (name, v) in [
        ("--unhealthy-after", s.thresholds.unhealthy_after),
        ("--healthy-after", s.thresholds.healthy_after),
    ] {
        if !(1..=100).contains(&v) {
            return Err(format!("{name} {v} is outside 1..=100"));
        }
    }
    Ok(())
}

/// Floating IP with the settings it cannot serve: replies never pass the LB, so there are none
/// to tell apart (`--replies stateless`), no hairpin reply to translate back (`--hairpin
/// snat`), and no backend side the sweeper could reset (`--tcp-reset`: its RST would have to
/// be encapsulated).
fn check_floating(s: &ServiceSettings) -> Result<(), String> {
    use crate::spec::{FloatingIp, ProbeVia};
    if s.probe_via == ProbeVia::Tunnel {
        if s.floating_ip == FloatingIp::Off {
            return Err(
                "--probe-via tunnel needs --floating-ip l2, ipip or gue: with destination \
                        NAT there is no tunnel, and the probe already goes where clients' \
                        packets go"
                    .into(),
            );
        }
        if s.probe.is_none() {
            return Err("--probe-via tunnel needs a probe (--probe tcp[:PORT] or \
                        http[:PORT]/PATH)"
                .into());
        }
    }
    if s.floating_ip == FloatingIp::Off {
        return Ok(());
    }
    let f = s.floating_ip;
    if s.replies == Replies::Stateless {
        return Err(format!(
            "--floating-ip {f} cannot be combined with --replies stateless: with floating IP \
             the backends answer the client straight, so no reply passes the LB"
        ));
    }
    if s.hairpin == Hairpin::Snat {
        return Err(format!(
            "--floating-ip {f} cannot be combined with --hairpin snat: a backend holding the VIP \
             reaches it on its own loopback, never through the LB"
        ));
    }
    if s.tcp_reset {
        return Err(format!(
            "--floating-ip {f} cannot be combined with --tcp-reset yet: the backend's side of \
             an idle flow would need its RST encapsulated"
        ));
    }
    Ok(())
}

/// A floating-IP service's backend keeps the VIP's port: the packet reaches it with VIP:port
/// as its destination, untranslated, so a backend port of its own would never be used.
///
/// # Errors
/// The message names the backend and the port it would need.
pub fn check_floating_backend(
    s: &ServiceSpec,
    settings: &ServiceSettings,
    b: &BackendSpec,
) -> Result<(), String> {
    use crate::spec::FloatingIp;
    match b.port {
        Some(p) if settings.floating_ip != FloatingIp::Off && p != s.vip.port() => Err(format!(
            "backend {b}: {s} has floating_ip = \"{}\", so its packets reach the backend \
             addressed to the VIP's own port {}; give the address alone (or port {})",
            settings.floating_ip,
            s.vip.port(),
            s.vip.port()
        )),
        _ => Ok(()),
    }
}

/// Checks an endpoint's flow lifetime settings against its protocol: an idle timeout of whole
/// seconds in range, and TCP reset only on TCP.
///
/// # Errors
/// A message naming the setting (as the CLI spells it).
pub fn check_lifetime(
    s: &ServiceSpec,
    idle_timeout: Option<Duration>,
    tcp_reset: bool,
) -> Result<(), String> {
    use lb_common::conn::{IDLE_TIMEOUT_MAX_S, IDLE_TIMEOUT_MIN_S};
    if let Some(d) = idle_timeout {
        let range = Duration::from_secs(IDLE_TIMEOUT_MIN_S.into())
            ..=Duration::from_secs(IDLE_TIMEOUT_MAX_S.into());
        if !range.contains(&d) || d.subsec_nanos() != 0 {
            return Err(format!(
                "--idle-timeout {} must be whole seconds within {}..={} (the fast path keeps a \
                 flow's time in seconds)",
                crate::spec::format_duration(d),
                crate::spec::format_duration(*range.start()),
                crate::spec::format_duration(*range.end()),
            ));
        }
    }
    if tcp_reset && s.proto == Proto::Udp {
        return Err(format!(
            "--tcp-reset on applies to TCP endpoints; {s} is not one"
        ));
    }
    Ok(())
}

/// The probe timeout when none is given: 5 s, or the interval if that is shorter.
#[must_use]
pub fn default_timeout(interval: Duration) -> Duration {
    health::DEFAULT_TIMEOUT.min(interval)
}

/// Checks an internal VIP's prefixes against its address family.
///
/// # Errors
/// A prefix of the other family.
pub fn check_internal(s: &ServiceSpec, internal: &[(std::net::IpAddr, u8)]) -> Result<(), String> {
    for (ip, len) in internal {
        if ip.is_ipv4() != s.vip.is_ipv4() {
            return Err(format!(
                "--internal {ip}/{len} is not of the same address family as {s}"
            ));
        }
    }
    Ok(())
}

/// Parses `--internal`: comma-separated prefixes.
///
/// # Errors
/// A prefix that does not parse.
pub fn parse_internal(s: &str) -> Result<Vec<(std::net::IpAddr, u8)>, String> {
    s.split(',')
        .map(|p| crate::spec::parse_prefix(p.trim()).map_err(|e| format!("--internal: {e}")))
        .collect()
}

/// Prefixes as `a/len, b/len` (`none` when empty).
#[must_use]
pub fn format_prefixes(p: &[(std::net::IpAddr, u8)]) -> String {
    if p.is_empty() {
        return "none".into();
    }
    p.iter()
        .map(|(ip, l)| format!("{ip}/{l}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that a new service agrees with `other`, a service on the same VIP address, on the
/// settings that belong to the address: `internal`, `hairpin` and `icmp_echo`.
///
/// # Errors
/// The setting that differs (config spelling) and a message.
pub fn check_same_vip(
    s: &ServiceSettings,
    other: &ServiceSpec,
    o: &ServiceSettings,
) -> Result<(), (&'static str, String)> {
    let ip = other.vip.ip();
    if o.internal != s.internal {
        let has = format_prefixes(&o.internal);
        return Err((
            "internal",
            format!(
                "all services of VIP {ip} must have the same internal prefixes ({other} has {has})"
            ),
        ));
    }
    if o.hairpin != s.hairpin {
        return Err((
            "hairpin",
            format!(
                "all services of VIP {ip} must have the same hairpin mode ({other} has {})",
                o.hairpin
            ),
        ));
    }
    if o.icmp_echo != s.icmp_echo {
        let has = if o.icmp_echo { "on" } else { "off" };
        return Err((
            "icmp_echo",
            format!("all services of VIP {ip} must have the same icmp_echo ({other} has {has})"),
        ));
    }
    Ok(())
}

/// Checks a backend weight.
///
/// # Errors
/// Above [`MAX_WEIGHT`].
pub fn check_weight(w: u32) -> Result<(), String> {
    if w > MAX_WEIGHT {
        return Err(format!("weight {w} is above the maximum {MAX_WEIGHT}"));
    }
    Ok(())
}

/// Checks a table size (a prime no larger than [`MAX_TABLE_SIZE`]).
///
/// # Errors
/// A message saying why the size is not acceptable.
pub fn check_table_size(n: u32) -> Result<(), String> {
    if n > MAX_TABLE_SIZE {
        return Err(format!(
            "table size {n} exceeds the maximum {MAX_TABLE_SIZE}"
        ));
    }
    if !is_prime(n) {
        return Err(format!(
            "table size {n} is not a prime (try 251, 4093, 65537)"
        ));
    }
    Ok(())
}

/// Checks a service the fast path can serve.
///
/// # Errors
/// A message naming the service and the problem.
pub fn check_service(s: &ServiceSpec) -> Result<(), String> {
    if let std::net::IpAddr::V6(v6) = s.vip.ip()
        && (v6.is_unicast_link_local() || v6.to_ipv4_mapped().is_some())
    {
        return Err(format!(
            "{s}: an IPv6 VIP must be a global or unique-local address (not link-local or \
             IPv4-mapped)"
        ));
    }
    Ok(())
}

/// Checks a backend for a service.
///
/// # Errors
/// A message naming the backend and the problem.
pub fn check_backend(s: &ServiceSpec, b: &BackendSpec) -> Result<(), String> {
    if s.vip.is_ipv4() != b.ip.is_ipv4() {
        return Err(format!(
            "backend {b} is not of the same address family as {s}"
        ));
    }
    if s.proto == Proto::Any && b.port.is_some() {
        return Err(format!(
            "backend {b}: an HA-ports backend has no port of its own (a flow keeps the port it \
             was sent to); give the address alone"
        ));
    }
    Ok(())
}

/// Checks an HA-ports endpoint (`ADDR:0/any`): on an internal VIP only, as in the reference
/// (a public VIP open on every port would be an open relay into the backends); no hairpin
/// SNAT (every port of the VIP is served, so no SNAT port is free); a probe names its port
/// (the backends have none). Other endpoints pass.
///
/// # Errors
/// A message naming the setting (as the CLI spells it).
pub fn check_ha(s: &ServiceSpec, settings: &ServiceSettings) -> Result<(), String> {
    if s.proto != Proto::Any {
        return Ok(());
    }
    if settings.internal.is_empty() {
        return Err(format!(
            "{s}: HA ports are for internal VIPs only (give --internal PREFIX), as in the reference"
        ));
    }
    if settings.hairpin == Hairpin::Snat {
        return Err(format!(
            "{s}: --hairpin snat cannot be combined with HA ports: every port of the VIP is \
             served, so no SNAT port is free"
        ));
    }
    let port = match &settings.probe {
        Some(crate::spec::ProbeSpec::Tcp { port } | crate::spec::ProbeSpec::Http { port, .. }) => {
            *port
        }
        None => Some(1),
    };
    if port.is_none() {
        return Err(format!(
            "{s}: an HA-ports probe names its port (--probe tcp:PORT or http:PORT/PATH): the \
             backends have none"
        ));
    }
    Ok(())
}

/// Why `ip` cannot serve both `ha` (HA ports) and `other`: an HA-ports backend replies from
/// every port, so its replies could not be told from `other`'s.
#[must_use]
pub fn ha_shared(ip: std::net::IpAddr, ha: &ServiceSpec, other: &ServiceSpec) -> String {
    format!(
        "{ip} is an HA-ports backend of {ha} and cannot also serve {other}: it answers from \
         every port, so its replies to the two could not be told apart"
    )
}

/// The first address that is a backend (or forward target) of an HA-ports endpoint and of
/// another endpoint too, among `endpoints` (service, backend address): its index, and why.
#[must_use]
pub fn ha_conflict(endpoints: &[(ServiceSpec, std::net::IpAddr)]) -> Option<(usize, String)> {
    let mut first: std::collections::HashMap<std::net::IpAddr, ServiceSpec> =
        std::collections::HashMap::new();
    for (i, (spec, ip)) in endpoints.iter().enumerate() {
        match first.get(ip) {
            Some(o) if o != spec && (o.proto == Proto::Any || spec.proto == Proto::Any) => {
                let (ha, other) = if o.proto == Proto::Any {
                    (o, spec)
                } else {
                    (spec, o)
                };
                return Some((i, ha_shared(*ip, ha, other)));
            }
            Some(_) => {}
            None => {
                first.insert(*ip, *spec);
            }
        }
    }
    None
}

/// Why a service with `table_size` slots cannot take `backends` backends.
#[must_use]
pub fn table_too_small(table_size: u32, backends: usize) -> String {
    format!(
        "table_size {table_size} is smaller than the service's {backends} backends: a table needs \
         a slot for every backend (and Maglev spreads evenly only with many more; the default \
         is 65537)"
    )
}

/// Why `ip` cannot be a VIP: it is a backend (or forward target) of `of`.
#[must_use]
pub fn vip_is_backend(ip: std::net::IpAddr, of: &ServiceSpec) -> String {
    format!(
        "{ip} is a backend of {of}; a VIP must be an address of its own (traffic to that \
         backend would be taken for the VIP's)"
    )
}

/// Why `ip` cannot be a backend: it is the VIP of `of`.
#[must_use]
pub fn backend_is_vip(ip: std::net::IpAddr, of: &ServiceSpec) -> String {
    format!(
        "backend {ip} is the VIP of {of}; a backend must be a real instance (its probes and \
         flows would meet the LB itself)"
    )
}

/// Why backend `addr` of the stateless service `stateless` cannot also serve `other` (of the
/// same protocol).
#[must_use]
pub fn stateless_shared(
    addr: std::net::SocketAddr,
    stateless: &ServiceSpec,
    other: &ServiceSpec,
) -> String {
    format!(
        "{stateless} has replies = \"stateless\": its backend {addr} cannot also serve {other} \
         (a stateless service needs backend endpoints of its own: its replies are known by the \
         backend's address and port alone)"
    )
}

/// Why `replies = "stateless"` cannot be right for a service with backend `addr`, whose
/// address has a PIP.
#[must_use]
pub fn stateless_pip(addr: std::net::SocketAddr) -> String {
    format!(
        "replies = \"stateless\": backend {addr} has a PIP, and its own connections from that \
         port would be taken for the service's replies"
    )
}
