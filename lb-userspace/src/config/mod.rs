//! The agent's config file (TOML): parsing and validation.
//!
//! A bad file changes nothing: [`parse`] returns the first error, naming the file, line, column
//! and field (`service[1].backends[0]`). The checks that also apply to runtime (CLI) changes are
//! the `check_*` functions, so a file and a CLI call reject the same things the same way.
//!
//! ```toml
//! [agent]                      # optional; these are the defaults
//! hash_seed = 0x5eed1b00
//! conntrack_flows = 1048576
//! ring_slots = 8388608
//! tcp_close_timeout = 10       # seconds a closed TCP flow still translates, 1..=3600
//! new_flow_rate = 125000       # new flows per second per CPU that get tracked; 0: no limit
//! encap_source4 = "192.0.2.1"  # floating IP (ipip, gue): outer source; no default
//! encap_source6 = "2001:db8:2::1"
//! gue_port = 6080
//! announce_table = 19521       # VIP host routes for a routing daemon; 0: none
//!
//! [[service]]
//! vip = "203.0.113.10:80/tcp"
//! backends = ["192.0.2.11", "192.0.2.12:8080"]
//! table_size = 65537           # optional, a prime
//! ```

mod check;
mod parse;

use std::time::Duration;

use lb_common::{
    acl::Action,
    consts::{
        DEFAULT_CONNTRACK_ENTRIES, DEFAULT_HASH_SEED, DEFAULT_RING_SLOTS, DEFAULT_TABLE_SIZE,
    },
    health::{self, Thresholds},
};
use serde::{Deserialize, Serialize};

pub use self::{
    check::*,
    parse::{ConfigError, parse, parse_state},
};
use crate::spec::{
    BackendSpec, Distribution, Established, FloatingIp, Hairpin, ProbeSpec, ProbeVia, Replies,
    ServiceSpec, WhenAllDown,
};

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub agent: AgentSettings,
    pub services: Vec<ServiceConfig>,
    pub forwards: Vec<ForwardConfig>,
    /// Instance-level public IPs: PIP → instance address.
    pub pips: Vec<(std::net::IpAddr, std::net::IpAddr)>,
    /// Outbound rules (`crate::outbound`).
    pub outbound: Vec<crate::outbound::OutboundRule>,
}

/// `lb config check FILE`: the file read and parsed as the agent does at start; a one-line
/// summary, or the agent's own error.
///
/// # Errors
/// The file cannot be read, or the config is refused (file, line, column, field, reason).
pub fn check_file(path: &std::path::Path) -> Result<String, String> {
    check(path).map_err(|e| e.to_string())
}

/// As [`check_file`], with the error's parts (file, line, column, field) kept apart; a file
/// that cannot be read is an error at line 0.
///
/// # Errors
/// The file cannot be read, or it is refused.
pub fn check(path: &std::path::Path) -> Result<String, Box<ConfigError>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Box::new(ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read it: {e}"),
        })
    })?;
    let c = parse(&name, &text).map_err(Box::new)?;
    Ok(format!(
        "{}: ok ({} services, {} forwards, {} PIPs, {} outbound rules, {} backends)",
        path.display(),
        c.services.len(),
        c.forwards.len(),
        c.pips.len(),
        c.outbound.len(),
        c.services.iter().map(|s| s.backends.len()).sum::<usize>() + c.forwards.len()
    ))
}

/// Load-time settings (they size maps and seed the hash, so they apply at agent start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentSettings {
    pub hash_seed: u32,
    /// Entries the conntrack table holds: one per flow (two for a flow to a backend endpoint
    /// shared by several services, and for a hairpin flow).
    pub conntrack_flows: u32,
    /// Slots in the shared lookup-table array.
    pub ring_slots: u32,
    /// How long a TCP flow closed by a RST, or by a FIN each way, still translates (seconds).
    pub tcp_close_timeout_s: u32,
    /// How long a TCP flow whose handshake never completed is kept (seconds).
    pub tcp_syn_timeout_s: u32,
    /// The flood guard: new flows per second per CPU that are tracked; above it, new flows
    /// are forwarded by the table untracked. 0 turns it off.
    pub new_flow_rate: u32,
    /// Floating IP: the outer source of IPv4 and IPv6 encapsulation (an LB address the
    /// backends can reach), and the GUE destination port.
    pub encap_source4: Option<std::net::Ipv4Addr>,
    pub encap_source6: Option<std::net::Ipv6Addr>,
    pub gue_port: u16,
    /// The routing table the agent keeps one host route per announced VIP address in, for a
    /// routing daemon to export (`crate::announce`); 0: no announcing.
    pub announce_table: u32,
}

/// The default announce table: 0x4c41 (19521), beside the tunnel probes' 0x4c42.
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 0x4c41;

impl AgentSettings {
    /// The `LB_ENCAP` entry these settings give (zero addresses where none is set: the agent
    /// then refuses the services that would need one).
    #[must_use]
    pub fn encap(&self) -> lb_common::encap::EncapConfig {
        lb_common::encap::EncapConfig {
            src4: self.encap_source4.map_or([0; 4], |a| a.octets()),
            src6: self.encap_source6.map_or([0; 16], |a| a.octets()),
            gue_port: self.gue_port.to_be_bytes(),
            _pad: [0; 2],
        }
    }

    /// Why a service with `settings` cannot run under these settings, if it cannot (see
    /// [`check_encap`]).
    ///
    /// # Errors
    /// The message names the setting to add.
    pub fn check_encap(
        &self,
        spec: &ServiceSpec,
        settings: &ServiceSettings,
    ) -> Result<(), String> {
        check_encap(&self.encap(), spec, settings)
    }
}

/// Why a service with `settings` cannot run with the floating-IP settings `encap` (`LB_ENCAP`),
/// if it cannot: an encapsulating mode needs an outer source of its VIP's family.
///
/// # Errors
/// The message names the setting to add.
pub fn check_encap(
    encap: &lb_common::encap::EncapConfig,
    spec: &ServiceSpec,
    settings: &ServiceSettings,
) -> Result<(), String> {
    if !settings.floating_ip.encapsulates() {
        return Ok(());
    }
    let (has, name) = if spec.vip.is_ipv4() {
        (encap.src4 != [0; 4], "encap_source4")
    } else {
        (encap.src6 != [0; 16], "encap_source6")
    };
    if has {
        Ok(())
    } else {
        Err(format!(
            "{spec} has floating_ip = \"{}\": its outer header needs a source address; set \
             agent.{name} in the config file (an address of this LB its backends can reach)",
            settings.floating_ip
        ))
    }
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            hash_seed: DEFAULT_HASH_SEED,
            conntrack_flows: DEFAULT_CONNTRACK_ENTRIES,
            ring_slots: DEFAULT_RING_SLOTS,
            tcp_close_timeout_s: lb_common::conn::CLOSE_TIMEOUT_S,
            tcp_syn_timeout_s: lb_common::conn::SYN_TIMEOUT_S,
            #[expect(clippy::cast_possible_truncation, reason = "a constant below 2^32")]
            new_flow_rate: lb_common::consts::DEFAULT_NEW_FLOW_RATE as u32,
            encap_source4: None,
            encap_source6: None,
            gue_port: lb_common::encap::DEFAULT_GUE_PORT,
            announce_table: DEFAULT_ANNOUNCE_TABLE,
        }
    }
}

/// One service and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub spec: ServiceSpec,
    pub settings: ServiceSettings,
    pub backends: Vec<BackendConfig>,
    pub acl: Vec<AclRuleConfig>,
}

/// One endpoint ACL rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    pub order: u32,
    #[serde(with = "crate::spec::serde_action")]
    pub action: Action,
    #[serde(with = "crate::spec::serde_prefix")]
    pub prefix: (std::net::IpAddr, u8),
    #[serde(default)]
    pub description: String,
}

/// A port-forward endpoint: one VIP port to one backend's port (e.g. SSH to one VM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    pub spec: ServiceSpec,
    pub to: std::net::SocketAddr,
    pub acl: Vec<AclRuleConfig>,
    /// As a service's `idle_timeout` and `tcp_reset`.
    pub idle_timeout: Option<Duration>,
    pub tcp_reset: bool,
}

/// A backend with its weight and drain flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub spec: BackendSpec,
    pub weight: u32,
    pub drained: bool,
    pub admin: crate::spec::Admin,
}

/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Default backend weight.
pub const DEFAULT_WEIGHT: u32 = 1;

/// Per-service settings: table size, health probe, and the policies around health.
///
/// On the control socket they travel as typed values in their text forms (`"15s"`,
/// `"http/healthz"`); a field left out takes its default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    pub table_size: u32,
    /// `None`: no probe, backends are always healthy.
    pub probe: Option<ProbeSpec>,
    #[serde(with = "crate::spec::serde_duration")]
    pub interval: Duration,
    #[serde(with = "crate::spec::serde_duration")]
    pub timeout: Duration,
    #[serde(with = "crate::spec::serde_thresholds")]
    pub thresholds: Thresholds,
    pub when_all_down: WhenAllDown,
    pub established: Established,
    /// Internal VIP: the only source prefixes it answers (empty: a public VIP). A property of
    /// the VIP address: all its services must agree.
    #[serde(with = "crate::spec::serde_prefixes")]
    pub internal: Vec<(std::net::IpAddr, u8)>,
    pub hairpin: Hairpin,
    /// How replies are told apart: tracked flows, or (`stateless`) every packet from a backend
    /// endpoint. A property of the service.
    #[serde(default)]
    pub replies: Replies,
    /// Which part of a new flow's 5-tuple picks its backend. A property of the service.
    #[serde(default)]
    pub distribution: Distribution,
    /// The LB answers ICMP echo requests to the VIP (rate-limited). A property of the VIP
    /// address, like `internal`.
    pub icmp_echo: bool,
    /// How long a flow may stay idle before the sweeper removes it (whole seconds,
    /// `lb_common::conn::IDLE_TIMEOUT_MIN_S..=IDLE_TIMEOUT_MAX_S`); `None`: the protocol's
    /// default ([`idle_timeout_of`]).
    #[serde(default, with = "crate::spec::serde_opt_duration")]
    pub idle_timeout: Option<Duration>,
    /// TCP reset on idle: an idle TCP flow that expires is reset on both sides.
    #[serde(default)]
    pub tcp_reset: bool,
    /// Floating IP (direct server return): the backends hold the VIP, and forward packets
    /// reach them with it as their destination. A property of the service.
    #[serde(default)]
    pub floating_ip: FloatingIp,
    /// Where the probes go: the backend's address, or (floating IP only) through the tunnel to
    /// VIP:port.
    #[serde(default)]
    pub probe_via: ProbeVia,
}

/// The idle timeouts of an endpoint's TCP and UDP flows: its own, or each protocol's default
/// (TCP: the reference's 4 minutes; UDP: 60 s, `lb_common::conn`). An HA-ports endpoint has
/// flows of both.
#[must_use]
pub fn idle_timeouts(own: Option<Duration>) -> (Duration, Duration) {
    let d = |s: u32| Duration::from_secs(u64::from(s));
    own.map_or(
        (
            d(lb_common::conn::IDLE_TIMEOUT_TCP_S),
            d(lb_common::conn::IDLE_TIMEOUT_UDP_S),
        ),
        |o| (o, o),
    )
}

/// The idle timeout of an endpoint's flows, as `lb vip list` shows it: one duration, or for
/// an HA-ports endpoint without one of its own, each protocol's (`4m tcp, 1m udp`).
#[must_use]
pub fn idle_timeout_text(proto: crate::spec::Proto, own: Option<Duration>) -> String {
    use crate::spec::{Proto, format_duration};
    let (tcp, udp) = idle_timeouts(own);
    match proto {
        Proto::Tcp => format_duration(tcp),
        Proto::Udp => format_duration(udp),
        Proto::Any if tcp == udp => format_duration(tcp),
        Proto::Any => format!("{} tcp, {} udp", format_duration(tcp), format_duration(udp)),
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            table_size: DEFAULT_TABLE_SIZE,
            probe: None,
            interval: health::DEFAULT_INTERVAL,
            timeout: health::DEFAULT_TIMEOUT,
            thresholds: Thresholds::default(),
            when_all_down: WhenAllDown::Drop,
            established: Established::Auto,
            internal: Vec::new(),
            hairpin: Hairpin::Drop,
            replies: Replies::Tracked,
            distribution: Distribution::FiveTuple,
            icmp_echo: true,
            idle_timeout: None,
            tcp_reset: false,
            floating_ip: FloatingIp::Off,
            probe_via: ProbeVia::Direct,
        }
    }
}
