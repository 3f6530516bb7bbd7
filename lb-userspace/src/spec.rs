//! The text forms operators type: `ADDR:PORT/PROTO` for a service and `DIP[:PORT]` for a
//! backend. The CLI, the config file and the API all parse through here, so they agree.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use lb_common::{addr, flow::proto, maps::ServiceKey};

/// Transport protocol of a load-balanced service. `Any` is the HA-ports endpoint `ADDR:0/any`
/// (every TCP and UDP port of an internal VIP); it sorts last, so a VIP's services stay one
/// range (`live::vip_range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Any,
}

impl Proto {
    /// The protocol number in map keys; 0 for `Any`, whose entries the map layer writes once
    /// per protocol.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
            Self::Any => 0,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Any => "any",
        })
    }
}

/// A service: VIP, port and protocol, e.g. `203.0.113.10:80/tcp` or `[2001:db8::10]:80/udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceSpec {
    pub vip: SocketAddr,
    pub proto: Proto,
}

/// A backend: `DIP` or `DIP:PORT`; without a port it listens on the service's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendSpec {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

/// Why a spec did not parse; the message names what is wrong and shows the expected form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

impl FromStr for ServiceSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = "expected ADDR:PORT/PROTO, e.g. 203.0.113.10:80/tcp";
        let (addr, p) = s
            .rsplit_once('/')
            .ok_or_else(|| SpecError(format!("no /PROTO ({form})")))?;
        let proto = match p {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "any" => Proto::Any,
            other => {
                return Err(SpecError(format!(
                    "protocol {other:?} is not load-balanced (only tcp and udp; any with port 0 is HA ports)"
                )));
            }
        };
        let vip = parse_socket_addr(addr).map_err(|why| SpecError(format!("{why} ({form})")))?;
        match (vip.port(), proto) {
            (0, Proto::Any) | (1.., Proto::Tcp | Proto::Udp) => {}
            (0, _) => {
                return Err(SpecError(
                    "port 0 is not a service port (ADDR:0/any is HA ports: every TCP and UDP port)"
                        .into(),
                ));
            }
            (_, Proto::Any) => {
                return Err(SpecError(
                    "/any takes port 0: ADDR:0/any (HA ports: every TCP and UDP port)".into(),
                ));
            }
        }
        check_unicast(vip.ip()).map_err(|e| SpecError(format!("VIP {e}")))?;
        Ok(Self { vip, proto })
    }
}

/// `ADDR:PORT` (`[V6]:PORT` for IPv6), or the reason it is not one: the part that is wrong and
/// why, without echoing the whole value (clap and the config errors show it already).
///
/// # Errors
/// No port, a port outside 0..=65535, or an address that is not one.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((ip, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port"));
    };
    let ip_text = ip.trim_start_matches('[').trim_end_matches(']');
    if ip_text.parse::<IpAddr>().is_err() {
        return Err(format!("{ip_text:?} is not an IPv4 or IPv6 address"));
    }
    if ip.contains(':') && !ip.starts_with('[') {
        return Err(format!(
            "an IPv6 address with a port is written [{ip}]:PORT"
        ));
    }
    Err(format!("port {port:?} is not a port number (0..=65535)"))
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vip, self.proto)
    }
}

impl ServiceSpec {
    /// The service an `LB_SERVICES4` key names (the inverse of [`Self::key`]); `None` for a key
    /// no service spec produces (another protocol, port 0).
    #[must_use]
    pub fn from_key(k: &ServiceKey) -> Option<Self> {
        let port = u16::from_be_bytes(k.port);
        let proto = match k.proto {
            p if p == Proto::Tcp.number() && port != 0 => Proto::Tcp,
            p if p == Proto::Udp.number() && port != 0 => Proto::Udp,
            0 if port == 0 => Proto::Any,
            _ => return None,
        };
        (k._pad == 0).then(|| Self {
            vip: SocketAddr::new(addr::to_ip(&k.vip), port),
            proto,
        })
    }

    /// The `LB_SERVICES4` key of this service.
    #[must_use]
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            vip: addr::from_ip(self.vip.ip()),
            port: self.vip.port().to_be_bytes(),
            proto: self.proto.number(),
            _pad: 0,
        }
    }
}

impl FromStr for BackendSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = "expected DIP or DIP:PORT, e.g. 192.0.2.11 or 192.0.2.11:8080";
        let (ip, port) = if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(SpecError(format!("{s:?}: port 0 is not a backend port")));
            }
            (sa.ip(), Some(sa.port()))
        } else if let Ok(ip) = s.parse::<IpAddr>() {
            (ip, None)
        } else {
            // The part that is wrong and why (a port out of range, say), as services say it.
            let why = if s.contains(':') {
                parse_socket_addr(s).err().unwrap_or_default()
            } else {
                format!("{s:?} is not an IPv4 or IPv6 address")
            };
            return Err(SpecError(format!("{why} ({form})")));
        };
        check_unicast(ip).map_err(|e| SpecError(format!("{s:?}: backend {e}")))?;
        Ok(Self { ip, port })
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}", SocketAddr::new(self.ip, p)),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl BackendSpec {
    /// The backend's socket address for a given service (port defaults to the service port).
    #[must_use]
    pub fn resolve(&self, svc: &ServiceSpec) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(svc.vip.port()))
    }
}

/// An address a packet can carry as its source or destination: not unspecified, multicast,
/// broadcast or loopback.
///
/// # Errors
/// The message names the address.
pub fn check_unicast(ip: IpAddr) -> Result<(), String> {
    let bad = match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback()
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || v6.is_loopback(),
    };
    if bad {
        Err(format!("{ip} is not a unicast address"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_services() {
        let s: ServiceSpec = "203.0.113.10:80/tcp".parse().unwrap();
        assert_eq!(s.to_string(), "203.0.113.10:80/tcp");
        assert_eq!(s.key().port, [0, 80]);
        let s: ServiceSpec = "[2001:db8::10]:53/udp".parse().unwrap();
        assert_eq!(s.proto, Proto::Udp);
        // Each error says what is wrong with which part, without echoing the whole value
        // (clap and the config errors show that already).
        for (bad, why) in [
            ("203.0.113.10:80", "no /PROTO"),
            ("203.0.113.10/tcp", "\"203.0.113.10\" has no port"),
            ("203.0.113.10:80/icmp", "protocol \"icmp\""),
            ("203.0.113.10:0/tcp", "port 0"),
            (
                "203.0.113.300:80/tcp",
                "\"203.0.113.300\" is not an IPv4 or IPv6 address",
            ),
            (
                "203.0.113.10:70000/tcp",
                "port \"70000\" is not a port number",
            ),
            ("2001:db8::1:80/tcp", "[2001:db8::1]:PORT"),
            ("224.0.0.1:80/tcp", "VIP"),
            ("0.0.0.0:80/tcp", "VIP"),
            ("", "no /PROTO"),
        ] {
            let e = bad.parse::<ServiceSpec>().unwrap_err();
            assert!(e.0.contains(why), "error for {bad:?}: {e}");
            assert!(
                bad.is_empty() || !e.0.contains(&format!("{bad:?}")),
                "error for {bad:?} echoes it: {e}"
            );
        }
    }

    /// A backend that is not one says which part is wrong and why, without echoing it whole.
    #[test]
    fn bad_backends_name_the_part_and_the_reason() {
        for (bad, why) in [
            ("192.0.2.11:70000", "port \"70000\" is not a port number"),
            (
                "192.0.2.300",
                "\"192.0.2.300\" is not an IPv4 or IPv6 address",
            ),
            (
                "192.0.2.300:80",
                "\"192.0.2.300\" is not an IPv4 or IPv6 address",
            ),
            ("192.0.2.11:0", "port 0 is not a backend port"),
        ] {
            let e = bad.parse::<BackendSpec>().unwrap_err();
            assert!(e.0.contains(why), "error for {bad:?}: {e}");
        }
    }

    proptest::proptest! {
        /// A restarted agent names live services by their map keys: the key is a lossless
        /// encoding of the spec.
        #[test]
        fn a_service_key_names_its_service(v4 in proptest::prelude::any::<[u8; 4]>(), v6 in proptest::prelude::any::<[u8; 16]>(), port in 1u16.., udp: bool, six: bool) {
            let ip = if six { IpAddr::from(v6) } else { IpAddr::from(v4) };
            let s = ServiceSpec { vip: SocketAddr::new(ip, port), proto: if udp { Proto::Udp } else { Proto::Tcp } };
            proptest::prop_assert_eq!(ServiceSpec::from_key(&s.key()), Some(s));
        }
    }

    #[test]
    fn keys_no_spec_produces_name_no_service() {
        let good = "203.0.113.10:80/tcp".parse::<ServiceSpec>().unwrap().key();
        for bad in [
            ServiceKey { proto: 1, ..good },
            ServiceKey {
                port: [0, 0],
                ..good
            },
            ServiceKey { _pad: 1, ..good },
        ] {
            assert_eq!(ServiceSpec::from_key(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_backends() {
        let b: BackendSpec = "192.0.2.11".parse().unwrap();
        assert_eq!(b.port, None);
        let svc: ServiceSpec = "203.0.113.10:80/tcp".parse().unwrap();
        assert_eq!(b.resolve(&svc).to_string(), "192.0.2.11:80");
        let b: BackendSpec = "192.0.2.11:8080".parse().unwrap();
        assert_eq!(b.resolve(&svc).to_string(), "192.0.2.11:8080");
        assert_eq!(
            "[2001:db8::11]:80".parse::<BackendSpec>().unwrap().port,
            Some(80)
        );
        for bad in [
            "192.0.2.11:0",
            "backend1",
            "192.0.2.11:99999",
            "255.255.255.255",
            "127.0.0.1",
        ] {
            assert!(bad.parse::<BackendSpec>().is_err(), "{bad:?} parsed");
        }
    }
}

/// A health probe: `tcp[:PORT]` (the connect succeeds) or `http[:PORT]/PATH` (a GET answers
/// 200). Without a port the probe uses the backend's port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeSpec {
    Tcp { port: Option<u16> },
    Http { port: Option<u16>, path: String },
}

impl FromStr for ProbeSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = "expected tcp[:PORT] or http[:PORT]/PATH, e.g. tcp, tcp:8080, http/healthz, http:8080/healthz";
        let (head, path) = match s.find('/') {
            Some(i) => (&s[..i], Some(&s[i..])),
            None => (s, None),
        };
        let (kind, port) = match head.split_once(':') {
            Some((k, p)) => {
                let port: u16 = p.parse().map_err(|_| {
                    SpecError(format!(
                        "{s:?}: port {p:?} is not a number 1-65535 ({form})"
                    ))
                })?;
                if port == 0 {
                    return Err(SpecError(format!("{s:?}: port 0 cannot be probed")));
                }
                (k, Some(port))
            }
            None => (head, None),
        };
        match (kind, path) {
            ("tcp", None) => Ok(Self::Tcp { port }),
            ("tcp", Some(_)) => Err(SpecError(format!(
                "{s:?}: a tcp probe has no path ({form})"
            ))),
            ("http", Some(path)) => {
                if path.len() > 256 || !path.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(SpecError(format!(
                        "{s:?}: the path must be at most 256 printable ASCII characters without spaces"
                    )));
                }
                Ok(Self::Http {
                    port,
                    path: path.to_owned(),
                })
            }
            ("http", None) => Err(SpecError(format!(
                "{s:?}: an http probe needs a path ({form})"
            ))),
            (other, _) => Err(SpecError(format!(
                "{s:?}: unknown probe kind {other:?} ({form})"
            ))),
        }
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, port, path) = match self {
            Self::Tcp { port } => ("tcp", port, ""),
            Self::Http { port, path } => ("http", port, path.as_str()),
        };
        match port {
            Some(p) => write!(f, "{kind}:{p}{path}"),
            None => write!(f, "{kind}{path}"),
        }
    }
}

/// A duration as operators write it: `500ms`, `15s`, `2m`.
///
/// # Errors
/// Not a number followed by `ms`, `s` or `m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, SpecError> {
    let (num, unit_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        return Err(SpecError(format!(
            "{s:?}: a duration needs a unit: ms, s or m (e.g. 15s)"
        )));
    };
    let n: u64 = num.parse().map_err(|_| {
        SpecError(format!(
            "{s:?} is not a duration: a whole number and its unit, ms, s or m, with no space \
             (e.g. 15s)"
        ))
    })?;
    n.checked_mul(unit_ms)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| SpecError(format!("{s:?}: too long")))
}

/// Formats a duration the way [`parse_duration`] reads it.
#[must_use]
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// What a service does with new flows when no backend is healthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WhenAllDown {
    /// Drop them, counted as `drop_no_backend` (the default).
    #[default]
    Drop,
    /// Fail open: spread them over all non-drained backends anyway.
    Spread,
}

/// What happens to established flows of a backend that turns unhealthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Established {
    /// By protocol, as the reference does (the default): TCP flows are kept, UDP flows are
    /// rebalanced. A TCP connection moved to another backend would be reset by it, while a
    /// UDP flow simply goes on elsewhere.
    #[default]
    Auto,
    /// They stay on it until they end or age out (a probe can fail while connections still
    /// work).
    Keep,
    /// Their conntrack entries are removed, so their next packets are balanced afresh over the
    /// healthy backends (TCP connections are then reset by the new backend; UDP flows move).
    Rebalance,
}

impl Established {
    /// Whether a backend going down loses its tracked flows, for a service of protocol `p`.
    #[must_use]
    pub const fn rebalances(self, p: Proto) -> bool {
        match self {
            Self::Auto => matches!(p, Proto::Udp),
            Self::Keep => false,
            Self::Rebalance => true,
        }
    }
}

macro_rules! word_enum {
    ($t:ty, $what:literal, $($v:ident = $s:literal),+) => {
        impl FromStr for $t {
            type Err = SpecError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok(Self::$v),)+
                    _ => Err(SpecError(format!(concat!("{:?}: ", $what, " must be one of: ", $($s, " "),+), s))),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$v => $s,)+ })
            }
        }
    };
}
/// What an internal VIP does with a connection from one of its own backends (hairpin).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Hairpin {
    /// Drop it, counted as `drop_hairpin` (the reference's behaviour).
    #[default]
    Drop,
    /// Rewrite the source to an LB-owned address so the reply comes back through the LB.
    Snat,
}

word_enum!(Hairpin, "hairpin", Drop = "drop", Snat = "snat");

/// How the fast path tells a backend's replies from its other traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Replies {
    /// A reply is translated only if it belongs to a tracked flow of the service (its
    /// conntrack entry names this backend, and its TCP state allows it).
    #[default]
    Tracked,
    /// The operator declares the backends' service port reachable only through the LB: every
    /// packet from a backend's address and port is a reply and is translated from the
    /// backend's reverse-service entry alone, with no per-flow lookup (except towards the
    /// LB's own addresses: its probes). Any LB node can then translate any reply.
    Stateless,
}

/// Which part of a new flow's 5-tuple picks its backend (the reference's load distribution
/// modes; `lb_common::hash::dist`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// Source and destination address and port, and protocol.
    #[default]
    FiveTuple,
    /// Source and destination address: one client address, one backend (source affinity).
    SourceIp,
    /// Source and destination address and protocol.
    SourceIpProtocol,
}

impl Distribution {
    /// The fast path's mode number (`lb_common::hash::dist`).
    #[must_use]
    pub const fn mode(self) -> u32 {
        match self {
            Self::FiveTuple => lb_common::hash::dist::FIVE_TUPLE,
            Self::SourceIp => lb_common::hash::dist::SOURCE_IP,
            Self::SourceIpProtocol => lb_common::hash::dist::SOURCE_IP_PROTOCOL,
        }
    }
}

word_enum!(
    Distribution,
    "distribution",
    FiveTuple = "5-tuple",
    SourceIp = "source-ip",
    SourceIpProtocol = "source-ip-protocol"
);

/// A service's floating IP (direct server return): how its forward packets reach a backend
/// that holds the VIP itself (`lb_common::encap`). Off is destination NAT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FloatingIp {
    /// Destination NAT to the backend's address and port (the default).
    #[default]
    Off,
    /// The MACs only, to a backend on a connected link.
    L2,
    /// IPv4-in-IPv4 or IPv6-in-IPv6.
    Ipip,
    /// GUE (UDP) to the LB's GUE port.
    Gue,
}

impl FloatingIp {
    /// The fast path's mode number (`lb_common::encap::mode`).
    #[must_use]
    pub const fn mode(self) -> u32 {
        match self {
            Self::Off => lb_common::encap::mode::DNAT,
            Self::L2 => lb_common::encap::mode::L2,
            Self::Ipip => lb_common::encap::mode::IPIP,
            Self::Gue => lb_common::encap::mode::GUE,
        }
    }

    /// Whether the mode puts an outer header on (and so needs an outer source address).
    #[must_use]
    pub const fn encapsulates(self) -> bool {
        matches!(self, Self::Ipip | Self::Gue)
    }
}

word_enum!(
    FloatingIp,
    "floating IP",
    Off = "off",
    L2 = "l2",
    Ipip = "ipip",
    Gue = "gue"
);

/// Where a floating-IP service's probes go: straight to the backend's address (the default),
/// or through the tunnel to VIP:port, as clients' packets do (`lb_common::encap::probe`), so
/// that the whole DSR path is probed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProbeVia {
    /// DIP:probe port.
    #[default]
    Direct,
    /// VIP:probe port, encapsulated (or, for `l2`, readdressed) to the backend.
    Tunnel,
}

word_enum!(ProbeVia, "probe path", Direct = "direct", Tunnel = "tunnel");

/// A backend's administrative state: it overrides the probes, not a drain or weight 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Admin {
    /// The probes decide (the default).
    #[default]
    None,
    /// In rotation whatever the probes say.
    Up,
    /// Out of rotation whatever the probes say; its established flows continue.
    Down,
}

word_enum!(
    Admin,
    "admin state",
    None = "none",
    Up = "up",
    Down = "down"
);

word_enum!(
    Replies,
    "replies",
    Tracked = "tracked",
    Stateless = "stateless"
);
word_enum!(
    WhenAllDown,
    "when-all-down",
    Drop = "drop",
    Spread = "spread"
);
word_enum!(
    Established,
    "established",
    Auto = "auto",
    Keep = "keep",
    Rebalance = "rebalance"
);

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_errors_name_the_input() {
        for ok in [
            "tcp",
            "tcp:8080",
            "http/healthz",
            "http:8080/healthz",
            "http/",
        ] {
            let p: ProbeSpec = ok.parse().unwrap();
            assert_eq!(p.to_string(), ok);
        }
        for bad in [
            "udp", "tcp/x", "http", "http:0/x", "http:x/y", "http/a b", "",
        ] {
            let e = bad.parse::<ProbeSpec>().unwrap_err();
            assert!(e.0.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("15s").unwrap(),
            std::time::Duration::from_secs(15)
        );
        assert_eq!(
            parse_duration("250ms").unwrap(),
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("2m").unwrap(),
            std::time::Duration::from_mins(2)
        );
        for bad in ["15", "s", "1.5s", "-1s", "99999999999999999999m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for d in ["15s", "250ms", "2m"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
        assert_eq!(
            "spread".parse::<WhenAllDown>().unwrap(),
            WhenAllDown::Spread
        );
        assert!(
            "maybe"
                .parse::<Established>()
                .unwrap_err()
                .0
                .contains("keep rebalance")
        );
    }
}

/// Parses an ACL action word.
///
/// # Errors
/// Neither `permit` nor `deny`.
pub fn parse_action(s: &str) -> Result<lb_common::acl::Action, String> {
    match s {
        "permit" => Ok(lb_common::acl::Action::Permit),
        "deny" => Ok(lb_common::acl::Action::Deny),
        _ => Err(format!("{s:?}: the action must be permit or deny")),
    }
}

/// A prefix as typed, `198.51.100.0/26` or `2001:db8::/32` (a bare address is a host prefix).
/// Host bits must be zero, so a typo does not silently widen or narrow a rule.
///
/// # Errors
/// Not a prefix, a length beyond the family's, or host bits set.
pub fn parse_prefix(s: &str) -> Result<(IpAddr, u8), SpecError> {
    let (a, l) = s.split_once('/').unwrap_or((s, ""));
    let ip: IpAddr = a.parse().map_err(|_| {
        SpecError(format!(
            "{s:?}: {a:?} is not an address (expected e.g. 198.51.100.0/26)"
        ))
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = if l.is_empty() {
        max
    } else {
        l.parse()
            .map_err(|_| SpecError(format!("{s:?}: prefix length {l:?} is not a number")))?
    };
    if len > max {
        return Err(SpecError(format!(
            "{s:?}: prefix length {len} is longer than {max}"
        )));
    }
    let masked = mask(ip, len);
    if masked != ip {
        return Err(SpecError(format!(
            "{s:?}: host bits are set; did you mean {masked}/{len}?"
        )));
    }
    Ok((ip, len))
}

/// `ip` with all bits after the first `len` cleared.
#[must_use]
pub fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::from((u32::from(v) & m).to_be_bytes())
        }
        IpAddr::V6(v) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::from((u128::from(v) & m).to_be_bytes())
        }
    }
}

/// A parsed prefix in map form (IPv4 lengths offset by 96).
#[must_use]
pub fn map_prefix(ip: IpAddr, len: u8) -> lb_common::acl::Prefix {
    let off = if ip.is_ipv4() {
        addr::V4_MAPPED_PREFIX_LEN
    } else {
        0
    };
    lb_common::acl::Prefix {
        addr: addr::from_ip(ip),
        len: off + u32::from(len),
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(parse_prefix("198.51.100.0/26").unwrap().1, 26);
        assert_eq!(parse_prefix("198.51.100.7").unwrap().1, 32);
        assert_eq!(parse_prefix("0.0.0.0/0").unwrap().1, 0);
        assert_eq!(parse_prefix("2001:db8::/32").unwrap().1, 32);
        let e = parse_prefix("198.51.100.7/24").unwrap_err();
        assert!(e.0.contains("did you mean 198.51.100.0/24"), "{e}");
        assert!(parse_prefix("198.51.100.0/33").is_err());
        assert!(parse_prefix("nope/8").is_err());
        assert_eq!(map_prefix("198.51.100.0".parse().unwrap(), 26).len, 122);
    }
}

/// Serde through the text form: specs cross the control socket as operators type them, so a
/// hand-written client's request is parsed (and refused) exactly as the CLI's arguments are.
macro_rules! serde_text {
    ($($t:ty),* $(,)?) => { $(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )* };
}
serde_text!(
    ServiceSpec,
    BackendSpec,
    ProbeSpec,
    WhenAllDown,
    Established,
    Hairpin,
    Replies,
    Distribution,
    FloatingIp,
    ProbeVia,
    Admin
);

/// `#[serde(with)]` for a [`std::time::Duration`] as `15s` / `500ms` / `2m`.
pub mod serde_duration {
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    /// # Errors
    /// Never, for the serializers this crate uses.
    pub fn serialize<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// # Errors
    /// Not a duration [`super::parse_duration`] reads.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        super::parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// `#[serde(with)]` for one prefix as `198.51.100.0/26` (host bits refused, as when typed).
/// An optional duration in [`format_duration`]'s form (`null`: none).
pub mod serde_opt_duration {
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    /// # Errors
    /// Never, for the serializers this crate uses.
    pub fn serialize<S: Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// # Errors
    /// Not a duration [`super::parse_duration`] reads.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| super::parse_duration(&t).map_err(D::Error::custom))
            .transpose()
    }
}

/// An optional prefix as `ADDR/LEN` (`null`: none).
pub mod serde_opt_prefix {
    use std::net::IpAddr;

    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    /// # Errors
    /// Never, for the serializers this crate uses.
    pub fn serialize<S: Serializer>(p: &Option<(IpAddr, u8)>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some((a, l)) => s.serialize_some(&format!("{a}/{l}")),
            None => s.serialize_none(),
        }
    }

    /// # Errors
    /// Not a prefix [`super::parse_prefix`] accepts.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(IpAddr, u8)>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| super::parse_prefix(&t).map_err(|e| D::Error::custom(e.0)))
            .transpose()
    }
}

pub mod serde_prefix {
    use std::net::IpAddr;

    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    /// # Errors
    /// Never, for the serializers this crate uses.
    pub fn serialize<S: Serializer>(p: &(IpAddr, u8), s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}/{}", p.0, p.1))
    }

    /// # Errors
    /// Not a prefix [`super::parse_prefix`] accepts.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(IpAddr, u8), D::Error> {
        super::parse_prefix(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// `#[serde(with)]` for a list of prefixes (see [`serde_prefix`]).
pub mod serde_prefixes {
    use std::net::IpAddr;

    use serde::{
        Deserialize as _, Deserializer, Serializer, de::Error as _, ser::SerializeSeq as _,
    };

    /// # Errors
    /// Never, for the serializers this crate uses.
    pub fn serialize<S: Serializer>(v: &[(IpAddr, u8)], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for (ip, len) in v {
            seq.serialize_element(&format!("{ip}/{len}"))?;
        }
        seq.end()
    }

    /// # Errors
    /// An element [`super::parse_prefix`] refuses.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(IpAddr, u8)>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|p| super::parse_prefix(p).map_err(D::Error::custom))
            .collect()
    }
}

/// `#[serde(with)]` for an ACL rule's action: `permit` or `deny`.
pub mod serde_action {
    use lb_common::acl::Action;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    /// # Errors
    /// Never, for the serializers this crate uses.
    pub fn serialize<S: Serializer>(a: &Action, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(action_word(*a))
    }

    /// # Errors
    /// Neither `permit` nor `deny`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        super::parse_action(&String::deserialize(d)?).map_err(D::Error::custom)
    }

    /// The word of an action; rules never hold hairpin (only internal-VIP sets do).
    #[must_use]
    pub const fn action_word(a: Action) -> &'static str {
        match a {
            Action::Permit => "permit",
            Action::Deny => "deny",
            Action::Hairpin => "hairpin",
        }
    }
}

/// `#[serde(with)]` for health thresholds, as `{ unhealthy_after, healthy_after }`.
pub mod serde_thresholds {
    use lb_common::health::Thresholds;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wire {
        unhealthy_after: u32,
        healthy_after: u32,
    }

    /// # Errors
    /// Never, for the serializers this crate uses.
    pub fn serialize<S: Serializer>(t: &Thresholds, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            unhealthy_after: t.unhealthy_after,
            healthy_after: t.healthy_after,
        }
        .serialize(s)
    }

    /// # Errors
    /// Not the two counts.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Thresholds, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(Thresholds {
            unhealthy_after: w.unhealthy_after,
            healthy_after: w.healthy_after,
        })
    }
}
