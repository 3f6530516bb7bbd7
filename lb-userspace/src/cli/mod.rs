//! The `lb` command line: `lb agent` runs the daemon; every other command asks it over the
//! control socket and prints the answer (a table, or JSON with `-o json`).
//!
//! This is the edge where operator input is parsed: every argument becomes a typed value here
//! (clap for specs and addresses, [`VipSettings::resolve`] for the settings), with errors that
//! name the flag. What the agent answers is rendered in [`render`].

pub mod docs;
pub mod output;
mod render;
pub mod top;
pub mod trace;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use self::render::render;
use crate::{
    api::{self, Query, Request},
    config::{AclRuleConfig, ServiceSettings},
    spec::{BackendSpec, ServiceSpec, SpecError, parse_duration, parse_prefix},
    state::Command,
};

/// `lb --version`: the package version, the build's commit, and the map layout version the
/// build's pins must match (a build of another layout refuses the pins: see the README).
pub fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        format!(
            "{} (commit {}, map layout {:#018x}, api {})",
            env!("CARGO_PKG_VERSION"),
            env!("LB_COMMIT"),
            lb_common::consts::map_layout_version(),
            api::API_VERSION
        )
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version = version(),
    about = "XDP L4 load balancer: agent and control CLI"
)]
pub struct Cli {
    /// Control socket of the agent.
    #[arg(long, global = true, env = "LB_SOCKET", default_value = api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format of every command: a table (text), or JSON (answers, changes and errors
    /// alike; see the README's "Control socket API").
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only complicate the clap derive"
)]
pub enum CliCommand {
    /// Run the agent: load and attach the XDP program, apply the config, serve the CLI.
    Agent(AgentArgs),
    /// Services (VIP, port, protocol).
    #[command(subcommand)]
    Vip(VipCmd),
    /// Backends of a service.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Port forwards: one VIP port to one backend's port (e.g. SSH to one VM).
    #[command(subcommand)]
    Forward(ForwardCmd),
    /// Endpoint ACLs: ordered permit/deny rules by remote prefix, first match wins.
    #[command(subcommand)]
    Acl(AclCmd),
    /// Instance-level public IPs: every protocol and port to one instance, no balancing.
    #[command(subcommand)]
    Pip(PipCmd),
    /// Outbound rules: backends' own connections to the outside leave with a frontend address
    /// and a port of their block; the inside keeps their own addresses.
    #[command(subcommand)]
    Outbound(OutboundCmd),
    /// Agent state, services, backends with next hops and table shares.
    Status,
    /// Counters: per verdict reason and per service.
    Stats,
    /// Tracked flows: client, service, backend, TCP state and idle time (as conntrack -L),
    /// selected by service, backend address and client prefix.
    Flows(FlowsArgs),
    /// Re-read the agent's config file (as SIGHUP does) and print what changed, or why the
    /// file was refused (nothing changes then). An unchanged file keeps the changes made with
    /// lb since it was applied; a changed file replaces them.
    Reload,
    /// How a new flow from CLIENT:PORT to the service would be handled: the internal-VIP and
    /// ACL decisions with the deciding entry, the distribution mode's hash input, the table
    /// slot, the backend and its next hop; and whether the flow is tracked already. From the
    /// maps' own entries and the rules the fast path runs.
    Explain(ExplainArgs),
    /// "tcpdump for the fast path": samples packets' verdicts as the XDP program handles them
    /// (as they arrived, as they left, the reason), which tcpdump cannot see. The agent turns
    /// sampling on for --seconds and off again; at most --rate records per second per CPU.
    Trace(TraceArgs),
    /// A refreshing terminal view: per service and backend packets/s, new flows/s, replies/s
    /// and health; drops/s by reason; lost frames. q, Esc or Ctrl-C quits.
    Top {
        /// Time between refreshes (each asks the agent for status and stats).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// Stop after this many refreshes.
        #[arg(long)]
        iterations: Option<u32>,
    },
    /// Config files, checked offline (no agent needed).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The routing daemon's side of announcing VIPs (offline, no agent needed).
    #[command(subcommand)]
    Bgp(BgpCmd),
    /// The far end of a veth: a pass-everything XDP program that lets it receive the frames
    /// the LB sends into the pair (run it in the peer's namespace, with
    /// `nsenter --net=/run/netns/NAME`; no agent needed).
    #[command(subcommand)]
    Peer(PeerCmd),
    /// Print the shell completion script for bash, zsh or fish (e.g.
    /// `lb completions bash > /usr/share/bash-completion/completions/lb`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (lb.1 and one per subcommand, e.g. lb-vip-add.1) into DIR.
    Man {
        /// Where the pages go (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeerCmd {
    /// Attach `xdp_pass` to IFACE in native mode, pinned so that it stays after the command.
    Attach(PeerArgs),
    /// Remove what `lb peer attach` attached to IFACE.
    Detach(PeerArgs),
}

#[derive(Debug, Args)]
pub struct PeerArgs {
    /// The interface (in this network namespace), e.g. a container's eth0.
    pub iface: String,
    /// bpffs directory for the pinned links.
    #[arg(long, default_value = crate::peer::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// `lb trace`'s selection and bounds.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Only packets to or from this VIP.
    #[arg(long)]
    pub vip: Option<std::net::IpAddr>,
    /// Only packets to or from this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Stop after this many records.
    #[arg(short = 'c', long)]
    pub count: Option<u32>,
    /// Stop after this long at most (the agent turns sampling off then in any case).
    #[arg(long, default_value_t = 30)]
    pub seconds: u32,
    /// At most this many records per second per CPU [default: 1000].
    #[arg(long)]
    pub rate: Option<u32>,
}

/// `lb explain`'s flow.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The client's address and port, e.g. 198.51.100.7:40000.
    #[arg(value_parser = parse_client)]
    pub client: std::net::SocketAddr,
    /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
    pub service: ServiceSpec,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.0)?;
    if d < Duration::from_millis(100) || d > Duration::from_hours(1) {
        return Err(format!("{s:?} is outside 100ms..=60m"));
    }
    Ok(d)
}

fn parse_client(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not CLIENT:PORT (an IPv4 address and a port, 0-65535)"))
}

/// `lb flows`' selection.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct FlowsArgs {
    #[command(subcommand)]
    pub cmd: Option<FlowsCmd>,
    /// Only this service's flows: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
    pub service: Option<ServiceSpec>,
    /// Only flows to this backend address (any port, any service).
    #[arg(long, value_name = "DIP")]
    pub backend: Option<std::net::IpAddr>,
    /// Only flows from clients in this prefix, e.g. 198.51.100.0/24.
    #[arg(long, value_name = "PREFIX")]
    pub client: Option<String>,
    /// Show at most this many (the answer says how many matched).
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum FlowsCmd {
    /// Delete the tracked flows selected (every flow when nothing is named): each one's next
    /// packet is a new flow, picked from the table again (a TCP connection whose backend
    /// changes that way is reset by the new backend). Prints how many were deleted.
    Flush(FlushArgs),
}

/// `lb flows flush`' selection, as `lb flows` selects.
#[derive(Debug, Args)]
pub struct FlushArgs {
    /// Only this service's flows: VIP:PORT/PROTO.
    pub service: Option<ServiceSpec>,
    /// Only flows to this backend address (any port, any service).
    #[arg(long, value_name = "DIP")]
    pub backend: Option<std::net::IpAddr>,
    /// Only flows from clients in this prefix.
    #[arg(long, value_name = "PREFIX")]
    pub client: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate a config file with the agent's own checks: the same errors, file, line, column
    /// and field, as `lb agent --config FILE` would give. Exit code 2 when it is refused.
    Check {
        /// The config file (TOML).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum BgpCmd {
    /// Print a BIRD 2 config that exports the VIPs the agent announces (its announce table,
    /// read from the agent's config file) over BGP with BFD, filled in with these values.
    Example {
        /// The agent's config file, for `agent.announce_table`.
        #[arg(long, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
        /// BIRD's router id: an IPv4 address of this node.
        #[arg(long, default_value = "192.0.2.1")]
        router_id: std::net::Ipv4Addr,
        /// This node's AS.
        #[arg(long, default_value_t = 64512)]
        local_as: u32,
        /// The router that spreads flows over the LB nodes (its IPv4 or IPv6 address).
        #[arg(long, default_value = "192.0.2.254")]
        peer: std::net::IpAddr,
        /// The router's AS.
        #[arg(long, default_value_t = 64513)]
        peer_as: u32,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Config file (TOML); without one the agent starts with no services.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Interface to attach to (repeat for several: client- and backend-facing).
    #[arg(long = "iface", required = true)]
    pub interfaces: Vec<String>,
    #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
    pub xdp_mode: XdpModeArg,
    /// bpffs directory for the pinned maps.
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    pub pin_dir: PathBuf,
    /// Kernel-side debug logs through aya-log (off by default: they cost per packet).
    #[arg(long, value_enum, default_value_t = BpfLog::Off)]
    pub bpf_log: BpfLog,
    /// Seconds between full re-resolutions of every next hop and client route. Changes are
    /// followed as the kernel announces them (netlink events); this is the safety net.
    #[arg(long, default_value_t = 60.0)]
    pub resync_interval: f64,
    /// Where the desired state (config + CLI changes) is saved, so restarts keep it.
    #[arg(long, default_value = crate::persist::DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics; a bare PORT means 127.0.0.1:PORT.
    /// Without it the agent opens no TCP port.
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub metrics: Option<String>,
    /// On SIGTERM/SIGINT, leave the XDP program attached and the maps pinned, so traffic keeps
    /// flowing until the next agent takes over (a plain stop detaches and cleans up).
    #[arg(long)]
    pub keep_attached: bool,
    /// On a plain stop, how long the agent keeps serving after withdrawing its VIPs' routes
    /// (`agent.announce_table`), so that the routers move the flows away first: `0s` to
    /// `300s`.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub announce_drain: String,
    /// How a frame leaves by the interface it came in on (a one-armed LB, echo replies):
    /// `tx` is XDP_TX; `redirect` redirects it to that interface, which veth delivers at once
    /// even when its peer runs no XDP program; `auto` redirects when any served interface is
    /// a veth.
    #[arg(long, value_enum, default_value_t = XdpTx::Auto)]
    pub xdp_tx: XdpTx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpTx {
    Auto,
    Tx,
    Redirect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Native,
    Skb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BpfLog {
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing buys nothing"
)]
pub enum VipCmd {
    /// Add a service, e.g. `lb vip add 203.0.113.10:80/tcp --probe http/healthz`.
    Add {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
        #[command(flatten)]
        settings: VipSettings,
    },
    /// Delete a service and its backends.
    Del {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
    },
    /// Exchange everything behind two VIPs (services, forwards, backends, ACLs, probes,
    /// settings) in one transaction; established flows keep their backends:
    /// `lb vip swap 203.0.113.10 203.0.113.11`.
    Swap {
        /// One VIP address.
        a: std::net::IpAddr,
        /// The other VIP address.
        b: std::net::IpAddr,
    },
    /// List services.
    List,
}

/// Per-service settings of `lb vip add`. Defaults follow the reference load balancer.
#[derive(Clone, Debug, Default, Args)]
pub struct VipSettings {
    /// Health probe: tcp[:PORT] (connect succeeds) or http[:PORT]/PATH (GET answers 200).
    /// Without one, backends are always in rotation.
    #[arg(long)]
    pub probe: Option<String>,
    /// Time between probes of one backend [default: 15s].
    #[arg(long)]
    pub probe_interval: Option<String>,
    /// A probe that takes longer has failed [default: 5s].
    #[arg(long)]
    pub probe_timeout: Option<String>,
    /// Consecutive failed probes that take a backend out [default: 2, i.e. 31 s at 15 s].
    #[arg(long)]
    pub unhealthy_after: Option<u32>,
    /// Consecutive good probes that bring it back [default: 1].
    #[arg(long)]
    pub healthy_after: Option<u32>,
    /// New flows when no backend is healthy: drop (counted) or spread over all [default: drop].
    #[arg(long)]
    pub when_all_down: Option<String>,
    /// Established flows of a backend that turns unhealthy: auto (TCP kept, UDP rebalanced),
    /// keep or rebalance [default: auto].
    #[arg(long)]
    pub established: Option<String>,
    /// Lookup-table size, a prime [default: 65537].
    #[arg(long)]
    pub table_size: Option<u32>,
    /// Make the VIP internal: it answers only these source prefixes (comma-separated).
    #[arg(long, value_name = "PREFIX[,PREFIX...]")]
    pub internal: Option<String>,
    /// Internal VIPs: a backend connecting to its own VIP is dropped (counted), or served
    /// with its source rewritten to the VIP (snat) [default: drop].
    #[arg(long, value_name = "drop|snat")]
    pub hairpin: Option<String>,
    /// The LB answers pings to the VIP (rate-limited): on or off [default: on].
    #[arg(long)]
    pub icmp_echo: Option<String>,
    /// Replies: of tracked flows only, or every packet from a backend's address and port
    /// (stateless: the backends' service port must be reachable only through the LB)
    /// [default: tracked].
    #[arg(long, value_name = "tracked|stateless")]
    pub replies: Option<String>,
    /// Which part of a new flow picks its backend: 5-tuple, source-ip (source affinity) or
    /// source-ip-protocol [default: 5-tuple].
    #[arg(long, value_name = "5-tuple|source-ip|source-ip-protocol")]
    pub distribution: Option<String>,
    /// Floating IP (direct server return): the backends hold the VIP and answer clients
    /// straight; forward packets reach them unchanged, by their MACs (l2, a backend on a
    /// connected link) or encapsulated (ipip, gue) [default: off, destination NAT].
    #[arg(long, value_name = "off|l2|ipip|gue")]
    pub floating_ip: Option<String>,
    /// Floating IP: probe each backend directly at its address, or through the tunnel at
    /// VIP:port, as clients' packets reach it (the whole DSR path) [default: direct].
    #[arg(long, value_name = "direct|tunnel")]
    pub probe_via: Option<String>,
    #[command(flatten)]
    pub lifetime: LifetimeArgs,
}

/// How an endpoint's flows end: `lb vip add` and `lb forward add`.
#[derive(Clone, Debug, Default, Args)]
pub struct LifetimeArgs {
    /// A flow idle this long is removed, whole seconds from 2s to 120m [default: 4m for TCP,
    /// 60s for UDP].
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// TCP reset on idle: a TCP flow removed for being idle is reset on both sides, client and
    /// backend [default: off].
    #[arg(long, value_name = "on|off")]
    pub tcp_reset: Option<String>,
}

impl LifetimeArgs {
    /// The idle timeout and TCP reset, checked against the endpoint's protocol.
    ///
    /// # Errors
    /// A value that does not parse or does not apply, naming the flag.
    pub fn resolve(&self, service: &ServiceSpec) -> Result<(Option<Duration>, bool), String> {
        let idle = self
            .idle_timeout
            .as_deref()
            .map(|d| parse_duration(d).map_err(|e| format!("--idle-timeout: {e}")))
            .transpose()?;
        let reset = match self.tcp_reset.as_deref() {
            None | Some("off") => false,
            Some("on") => true,
            Some(o) => return Err(format!("--tcp-reset: {o:?} must be on or off")),
        };
        crate::config::check_lifetime(service, idle, reset)?;
        Ok((idle, reset))
    }
}

impl VipSettings {
    /// The settings, defaults filled in; errors name the flag. The agent checks the settings
    /// again (with the rest of the desired state) when it applies them.
    ///
    /// # Errors
    /// A value that does not parse or is out of range.
    pub fn resolve(&self) -> Result<ServiceSettings, String> {
        let mut s = ServiceSettings::default();
        if let Some(t) = self.table_size {
            s.table_size = t;
        }
        if let Some(p) = &self.probe {
            s.probe = Some(p.parse().map_err(|e: SpecError| format!("--probe: {e}"))?);
        }
        if let Some(d) = &self.probe_interval {
            s.interval = parse_duration(d).map_err(|e| format!("--probe-interval: {e}"))?;
        }
        s.timeout = match &self.probe_timeout {
            Some(d) => parse_duration(d).map_err(|e| format!("--probe-timeout: {e}"))?,
            None => crate::config::default_timeout(s.interval),
        };
        if let Some(n) = self.unhealthy_after {
            s.thresholds.unhealthy_after = n;
        }
        if let Some(n) = self.healthy_after {
            s.thresholds.healthy_after = n;
        }
        if let Some(w) = &self.when_all_down {
            s.when_all_down = w
                .parse()
                .map_err(|e: SpecError| format!("--when-all-down: {e}"))?;
        }
        if let Some(w) = &self.established {
            s.established = w
                .parse()
                .map_err(|e: SpecError| format!("--established: {e}"))?;
        }
        if let Some(i) = &self.internal {
            s.internal = crate::config::parse_internal(i)?;
        }
        if let Some(e) = &self.icmp_echo {
            s.icmp_echo = match e.as_str() {
                "on" => true,
                "off" => false,
                _ => return Err(format!("--icmp-echo: {e:?} must be on or off")),
            };
        }
        if let Some(d) = &self.distribution {
            s.distribution = d
                .parse()
                .map_err(|e: SpecError| format!("--distribution: {e}"))?;
        }
        if let Some(r) = &self.replies {
            s.replies = r
                .parse()
                .map_err(|e: SpecError| format!("--replies: {e}"))?;
        }
        if let Some(f) = &self.floating_ip {
            s.floating_ip = f
                .parse()
                .map_err(|e: SpecError| format!("--floating-ip: {e}"))?;
        }
        if let Some(v) = &self.probe_via {
            s.probe_via = v
                .parse()
                .map_err(|e: SpecError| format!("--probe-via: {e}"))?;
        }
        if let Some(h) = &self.hairpin {
            s.hairpin = h
                .parse()
                .map_err(|e: SpecError| format!("--hairpin: {e}"))?;
        }
        crate::config::check_settings(&s)?;
        Ok(s)
    }
}

#[derive(Debug, Subcommand)]
pub enum PipCmd {
    /// Map a public IP to one instance: `lb pip add 203.0.113.50 192.0.2.13`.
    Add {
        pip: std::net::IpAddr,
        dip: std::net::IpAddr,
    },
    /// Remove a public IP.
    Del { pip: std::net::IpAddr },
    /// List public IPs with their instances and next hops.
    List,
}

#[derive(Debug, Subcommand)]
pub enum OutboundCmd {
    /// Add a rule: `lb outbound add web --frontend 203.0.113.10 --service 203.0.113.10:80/tcp
    /// --ports-per-backend 1024 --inside 192.0.2.0/24`.
    Add(OutboundAddArgs),
    /// Remove a rule: its backends' new flows keep their own addresses.
    Del { name: String },
    /// Rules, each covered backend's block, ports in use and the peak.
    List,
}

#[derive(Debug, Args)]
pub struct OutboundAddArgs {
    /// The rule's name.
    pub name: String,
    /// A frontend address (repeat for more; blocks are cut from the first ones first).
    #[arg(long = "frontend", required = true, value_name = "ADDR")]
    pub frontends: Vec<std::net::IpAddr>,
    /// Cover the backends of this service (repeatable).
    #[arg(long = "service", value_name = "VIP:PORT/PROTO")]
    pub services: Vec<ServiceSpec>,
    /// Cover this backend address (repeatable).
    #[arg(long = "backend", value_name = "ADDR")]
    pub backends: Vec<std::net::IpAddr>,
    /// Ports each backend gets, a multiple of 8.
    #[arg(long)]
    pub ports_per_backend: u32,
    /// A destination prefix that is never translated (repeatable).
    #[arg(long = "inside", value_name = "PREFIX")]
    pub inside: Vec<String>,
    /// Protocols translated.
    #[arg(long, value_delimiter = ',', default_value = "tcp,udp")]
    pub protocols: Vec<String>,
    /// stateful (the LB picks ports and tracks flows) or stateless (each backend's own
    /// ephemeral port range is set to its block: any LB node translates its flows).
    #[arg(long, default_value = "stateful")]
    pub mode: crate::outbound::OutMode,
    /// TCP reset on idle: a TCP flow removed for being idle is reset on both sides.
    #[arg(long)]
    pub tcp_reset: bool,
    /// Idle timeout of the rule's flows, whole seconds from 2s to 120m [default: 4m for TCP,
    /// 60s for UDP].
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
}

impl OutboundAddArgs {
    /// The rule, checked as the config file's is.
    ///
    /// # Errors
    /// A value that does not parse or does not fit, naming the flag or field.
    pub fn rule(&self) -> Result<crate::outbound::OutboundRule, String> {
        let inside = self
            .inside
            .iter()
            .map(|p| parse_prefix(p).map_err(|e| format!("--inside: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let idle_timeout = self
            .idle_timeout
            .as_deref()
            .map(|d| parse_duration(d).map_err(|e| format!("--idle-timeout: {e}")))
            .transpose()?;
        let r = crate::outbound::OutboundRule {
            name: self.name.clone(),
            frontends: self.frontends.clone(),
            services: self.services.clone(),
            backends: self.backends.clone(),
            ports_per_backend: self.ports_per_backend,
            inside,
            protocols: self.protocols.clone(),
            mode: self.mode,
            tcp_reset: self.tcp_reset,
            idle_timeout,
        };
        crate::outbound::check_rule(&r)?;
        Ok(r)
    }
}

#[derive(Debug, Subcommand)]
pub enum AclCmd {
    /// Add a rule: `lb acl add 203.0.113.10:80/tcp --order 100 --permit 198.51.100.0/26`.
    Add {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
        /// Evaluation order: lowest first; the first matching rule decides.
        #[arg(long)]
        order: u32,
        /// Permit sources in PREFIX.
        #[arg(
            long,
            value_name = "PREFIX",
            conflicts_with = "deny",
            required_unless_present = "deny"
        )]
        permit: Option<String>,
        /// Deny sources in PREFIX.
        #[arg(long, value_name = "PREFIX")]
        deny: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a rule by its order number.
    Del {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
        #[arg(long)]
        order: u32,
    },
    /// List an endpoint's rules, its default verdict and its ACL drops.
    List {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
    },
}

#[derive(Debug, Subcommand)]
pub enum ForwardCmd {
    /// Forward a VIP port to one backend port: `lb forward add 203.0.113.10:50001/tcp 192.0.2.11:22`.
    Add {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
        /// The target: DIP:PORT.
        to: BackendSpec,
        #[command(flatten)]
        lifetime: LifetimeArgs,
    },
    /// Delete a forward.
    Del {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
    },
    /// List forwards (with their counters).
    List,
}

#[derive(Debug, Subcommand)]
pub enum BackendCmd {
    /// Add a backend: `lb backend add 203.0.113.10:80/tcp 192.0.2.11[:PORT] [--weight N]`.
    Add {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
        /// The backend: DIP or DIP:PORT (without a port, the service's).
        backend: BackendSpec,
        /// Relative share of new flows [default: 1].
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Delete a backend (its flows are re-balanced).
    Del {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
        /// The backend: DIP or DIP:PORT (without a port, the service's).
        backend: BackendSpec,
    },
    /// Change a backend's weight (0: no new flows).
    SetWeight {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
        /// The backend: DIP or DIP:PORT (without a port, the service's).
        backend: BackendSpec,
        weight: u32,
    },
    /// Stop new flows to a backend; established flows continue.
    Drain {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
        /// The backend: DIP or DIP:PORT (without a port, the service's).
        backend: BackendSpec,
    },
    /// Put a drained backend back into rotation.
    Undrain {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
        /// The backend: DIP or DIP:PORT (without a port, the service's).
        backend: BackendSpec,
    },
    /// Set a backend's administrative state: up (in rotation whatever the probes say), down
    /// (out of rotation, established flows continue) or none (the probes decide).
    Admin {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
        /// The backend: DIP or DIP:PORT (without a port, the service's).
        backend: BackendSpec,
        #[arg(value_parser = parse_admin)]
        state: crate::spec::Admin,
    },
    /// List a service's backends: health, last probe, rotation, weight, share, flows.
    List {
        /// The service: VIP:PORT/PROTO, e.g. 203.0.113.10:80/tcp.
        service: ServiceSpec,
    },
    /// On a backend of a floating-IP service (no agent needed): print the steps it needs (the
    /// VIP on loopback, the ARP and reverse-path settings, for ipip/gue the decapsulation
    /// program), or run them with --apply. Each step is idempotent.
    Setup(BackendSetupArgs),
    /// Undo `lb backend setup` on a backend: the decapsulation program and the VIPs on
    /// loopback (the sysctls stay). Prints the steps, or runs them with --apply.
    Teardown(BackendSetupArgs),
}

/// `lb backend setup|teardown`'s request.
#[derive(Debug, Args)]
pub struct BackendSetupArgs {
    /// The services' floating-IP mode.
    #[arg(value_enum)]
    pub mode: crate::backend_setup::Mode,
    /// A VIP this backend serves (repeat for several, either family).
    #[arg(long = "vip", value_name = "ADDR", required = true)]
    pub vips: Vec<std::net::IpAddr>,
    /// The interface the LB's packets arrive on [default: the default route's].
    #[arg(long)]
    pub iface: Option<String>,
    /// The LB's GUE port (its `gue_port`).
    #[arg(long, default_value_t = lb_common::encap::DEFAULT_GUE_PORT)]
    pub gue_port: u16,
    /// Run the steps instead of printing them (root).
    #[arg(long)]
    pub apply: bool,
    /// bpffs directory for the decapsulation program's pins (one directory per namespace
    /// and interface under it).
    #[arg(long, default_value = crate::backend_setup::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

impl AgentArgs {
    /// # Errors
    /// An invalid `--resync-interval`.
    pub fn options(&self, socket: PathBuf) -> anyhow::Result<crate::agent::AgentOptions> {
        if !(self.resync_interval.is_finite() && (1.0..=86_400.0).contains(&self.resync_interval)) {
            anyhow::bail!(
                "--resync-interval: {} is outside 1..=86400 seconds",
                self.resync_interval
            );
        }
        let announce_drain = parse_duration(&self.announce_drain)
            .map_err(|e| anyhow::anyhow!("--announce-drain: {}", e.0))?;
        if announce_drain > Duration::from_mins(5) {
            anyhow::bail!(
                "--announce-drain: {} is longer than 300s",
                self.announce_drain
            );
        }
        Ok(crate::agent::AgentOptions {
            announce_drain,
            config: self.config.clone(),
            interfaces: self.interfaces.clone(),
            native: self.xdp_mode == XdpModeArg::Native,
            pin_dir: self.pin_dir.clone(),
            socket,
            bpf_log_level: match self.bpf_log {
                BpfLog::Off => 0,
                BpfLog::Error => 1,
                BpfLog::Warn => 2,
                BpfLog::Info => 3,
                BpfLog::Debug => 4,
            },
            resync_interval: Duration::from_secs_f64(self.resync_interval),
            state_file: self.state_file.clone(),
            metrics: self
                .metrics
                .as_deref()
                .map(crate::metrics::parse_listen)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            keep_attached: self.keep_attached,
            xdp_tx: self.xdp_tx,
        })
    }
}

/// The request a (non-agent) command sends, and how its answer is shown; `Ok(None)` for
/// `lb agent` and `lb config`, which run without the agent's socket.
///
/// # Errors
/// An argument that does not parse or is out of range (the message names the flag).
pub fn request(cmd: &CliCommand) -> Result<Option<Request>, String> {
    let query = |q: Query| Some(Request::Query(q));
    let change = match cmd {
        CliCommand::Agent(_)
        | CliCommand::Config(_)
        | CliCommand::Bgp(_)
        | CliCommand::Peer(_)
        | CliCommand::Backend(BackendCmd::Setup(_) | BackendCmd::Teardown(_))
        | CliCommand::Completions { .. }
        | CliCommand::Man { .. }
        | CliCommand::Trace(_)
        | CliCommand::Top { .. } => return Ok(None),
        CliCommand::Vip(VipCmd::Add { service, settings }) => {
            let mut s = settings.resolve()?;
            (s.idle_timeout, s.tcp_reset) = settings.lifetime.resolve(service)?;
            Command::VipAdd {
                service: *service,
                settings: s,
            }
        }
        CliCommand::Vip(VipCmd::Del { service }) => Command::VipDel { service: *service },
        CliCommand::Vip(VipCmd::Swap { a, b }) => Command::VipSwap { a: *a, b: *b },
        // The service list shows forwards with their targets.
        CliCommand::Vip(VipCmd::List) | CliCommand::Forward(ForwardCmd::List) => {
            return Ok(query(Query::VipList));
        }
        CliCommand::Backend(BackendCmd::Add {
            service,
            backend,
            weight,
        }) => Command::BackendAdd {
            service: *service,
            backend: *backend,
            weight: *weight,
        },
        CliCommand::Backend(BackendCmd::Del { service, backend }) => Command::BackendDel {
            service: *service,
            backend: *backend,
        },
        CliCommand::Backend(BackendCmd::SetWeight {
            service,
            backend,
            weight,
        }) => Command::BackendSetWeight {
            service: *service,
            backend: *backend,
            weight: *weight,
        },
        CliCommand::Backend(BackendCmd::Drain { service, backend }) => Command::BackendDrain {
            service: *service,
            backend: *backend,
            drained: true,
        },
        CliCommand::Backend(BackendCmd::Undrain { service, backend }) => Command::BackendDrain {
            service: *service,
            backend: *backend,
            drained: false,
        },
        CliCommand::Backend(BackendCmd::Admin {
            service,
            backend,
            state,
        }) => Command::BackendAdmin {
            service: *service,
            backend: *backend,
            admin: *state,
        },
        CliCommand::Backend(BackendCmd::List { service }) => {
            return Ok(query(Query::BackendList { service: *service }));
        }
        CliCommand::Forward(ForwardCmd::Add {
            service,
            to,
            lifetime,
        }) => {
            let (idle_timeout, tcp_reset) = lifetime.resolve(service)?;
            Command::ForwardAdd {
                service: *service,
                to: *to,
                idle_timeout,
                tcp_reset,
            }
        }
        CliCommand::Forward(ForwardCmd::Del { service }) => {
            Command::ForwardDel { service: *service }
        }
        CliCommand::Acl(AclCmd::Add {
            service,
            order,
            permit,
            deny,
            description,
        }) => {
            let (action, prefix) = match (permit, deny) {
                (Some(p), _) => (lb_common::acl::Action::Permit, p),
                (None, Some(d)) => (lb_common::acl::Action::Deny, d),
                (None, None) => return Err("give --permit PREFIX or --deny PREFIX".into()),
            };
            let rule = AclRuleConfig {
                order: *order,
                action,
                prefix: parse_prefix(prefix).map_err(|e| format!("prefix: {e}"))?,
                description: description.clone(),
            };
            Command::AclAdd {
                service: *service,
                rule,
            }
        }
        CliCommand::Acl(AclCmd::Del { service, order }) => Command::AclDel {
            service: *service,
            order: *order,
        },
        CliCommand::Acl(AclCmd::List { service }) => {
            return Ok(query(Query::AclList { service: *service }));
        }
        CliCommand::Pip(PipCmd::Add { pip, dip }) => Command::PipAdd {
            pip: *pip,
            dip: *dip,
        },
        CliCommand::Pip(PipCmd::Del { pip }) => Command::PipDel { pip: *pip },
        CliCommand::Pip(PipCmd::List) => return Ok(query(Query::PipList)),
        CliCommand::Outbound(OutboundCmd::Add(a)) => Command::OutboundAdd { rule: a.rule()? },
        CliCommand::Outbound(OutboundCmd::Del { name }) => {
            Command::OutboundDel { name: name.clone() }
        }
        CliCommand::Outbound(OutboundCmd::List) => return Ok(query(Query::OutboundList)),
        CliCommand::Status => return Ok(query(Query::Status)),
        CliCommand::Stats => return Ok(query(Query::Stats)),
        CliCommand::Reload => return Ok(Some(Request::Reload)),
        CliCommand::Explain(a) => {
            return Ok(query(Query::Explain {
                client: a.client,
                service: a.service,
            }));
        }
        CliCommand::Flows(FlowsArgs {
            cmd: Some(FlowsCmd::Flush(f)),
            ..
        }) => {
            let client = f
                .client
                .as_deref()
                .map(|p| parse_prefix(p).map_err(|e| format!("--client: {e}")))
                .transpose()?;
            return Ok(Some(Request::FlushFlows {
                service: f.service,
                backend: f.backend,
                client,
            }));
        }
        CliCommand::Flows(f) => {
            let client = f
                .client
                .as_deref()
                .map(|p| parse_prefix(p).map_err(|e| format!("--client: {e}")))
                .transpose()?;
            return Ok(query(Query::Flows {
                service: f.service,
                backend: f.backend,
                client,
                limit: Some(f.limit),
            }));
        }
    };
    Ok(Some(Request::Change(change)))
}

/// `up`, `down` or `none`, as clap takes it.
fn parse_admin(s: &str) -> Result<crate::spec::Admin, String> {
    s.parse().map_err(|e: SpecError| e.0)
}
