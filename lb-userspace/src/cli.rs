//! The `lb` command line: `lb agent` runs the daemon; every other command asks it over the
//! control socket and prints the answer (a table, or JSON with `-o json`).

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    api::{self, Request, Response},
    spec::{BackendSpec, ServiceSpec},
};

#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version,
    about = "XDP L4 load balancer: agent and control CLI"
)]
pub struct Cli {
    /// Control socket of the agent.
    #[arg(long, global = true, env = "LB_SOCKET", default_value = api::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Agent state, services, backends with next hops and table shares.
    Status(OutputArg),
    /// Counters: per verdict reason and per service.
    Stats(OutputArg),
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
    /// Seconds between next-hop refreshes from the kernel's routes and neighbours.
    #[arg(long, default_value_t = 1.0)]
    pub resolve_interval: f64,
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
        service: ServiceSpec,
        #[command(flatten)]
        settings: VipSettings,
    },
    /// Delete a service and its backends.
    Del { service: ServiceSpec },
    /// List services.
    List(OutputArg),
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
    /// Established flows of a backend that turns unhealthy: keep or rebalance [default: keep].
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
}

impl From<&VipSettings> for crate::api::SettingsArgs {
    fn from(v: &VipSettings) -> Self {
        Self {
            table_size: v.table_size,
            probe: v.probe.clone(),
            probe_interval: v.probe_interval.clone(),
            probe_timeout: v.probe_timeout.clone(),
            unhealthy_after: v.unhealthy_after,
            healthy_after: v.healthy_after,
            when_all_down: v.when_all_down.clone(),
            established: v.established.clone(),
            internal: v.internal.clone(),
            hairpin: v.hairpin.clone(),
            icmp_echo: v.icmp_echo.clone(),
        }
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
    List(OutputArg),
}

#[derive(Debug, Subcommand)]
pub enum AclCmd {
    /// Add a rule: `lb acl add 203.0.113.10:80/tcp --order 100 --permit 198.51.100.0/26`.
    Add {
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
        service: ServiceSpec,
        #[arg(long)]
        order: u32,
    },
    /// List an endpoint's rules, its default verdict and its ACL drops.
    List {
        service: ServiceSpec,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum ForwardCmd {
    /// Forward a VIP port to one backend port: `lb forward add 203.0.113.10:50001/tcp 192.0.2.11:22`.
    Add {
        service: ServiceSpec,
        to: BackendSpec,
    },
    /// Delete a forward.
    Del { service: ServiceSpec },
    /// List forwards (with their counters).
    List(OutputArg),
}

#[derive(Debug, Subcommand)]
pub enum BackendCmd {
    /// Add a backend: `lb backend add 203.0.113.10:80/tcp 192.0.2.11[:PORT] [--weight N]`.
    Add {
        service: ServiceSpec,
        backend: BackendSpec,
        /// Relative share of new flows [default: 1].
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Delete a backend (its flows are re-balanced).
    Del {
        service: ServiceSpec,
        backend: BackendSpec,
    },
    /// Change a backend's weight (0: no new flows).
    SetWeight {
        service: ServiceSpec,
        backend: BackendSpec,
        weight: u32,
    },
    /// Stop new flows to a backend; established flows continue.
    Drain {
        service: ServiceSpec,
        backend: BackendSpec,
    },
    /// Put a drained backend back into rotation.
    Undrain {
        service: ServiceSpec,
        backend: BackendSpec,
    },
    /// List a service's backends: health, last probe, rotation, weight, share, flows.
    List {
        service: ServiceSpec,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, Args)]
pub struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

impl AgentArgs {
    /// # Errors
    /// An invalid `--resolve-interval`.
    pub fn options(&self, socket: PathBuf) -> anyhow::Result<crate::agent::AgentOptions> {
        if !(self.resolve_interval.is_finite() && (0.05..=3600.0).contains(&self.resolve_interval))
        {
            anyhow::bail!(
                "--resolve-interval: {} is outside 0.05..=3600 seconds",
                self.resolve_interval
            );
        }
        Ok(crate::agent::AgentOptions {
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
            resolve_interval: Duration::from_secs_f64(self.resolve_interval),
            state_file: self.state_file.clone(),
            metrics: self
                .metrics
                .as_deref()
                .map(crate::metrics::parse_listen)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            keep_attached: self.keep_attached,
        })
    }
}

/// The request a (non-agent) command sends, and how its answer is shown.
#[must_use]
pub fn request(cmd: &Command) -> Option<(Request, Format)> {
    let t = Format::Table;
    let pair =
        |service: &ServiceSpec, backend: &BackendSpec| (service.to_string(), backend.to_string());
    Some(match cmd {
        Command::Agent(_) => return None,
        Command::Vip(VipCmd::Add { service, settings }) => (
            Request::VipAdd {
                service: service.to_string(),
                settings: settings.into(),
            },
            t,
        ),
        Command::Vip(VipCmd::Del { service }) => (
            Request::VipDel {
                service: service.to_string(),
            },
            t,
        ),
        Command::Vip(VipCmd::List(o)) => (Request::VipList, o.format),
        Command::Backend(BackendCmd::Add {
            service,
            backend,
            weight,
        }) => {
            let (service, backend) = pair(service, backend);
            (
                Request::BackendAdd {
                    service,
                    backend,
                    weight: *weight,
                },
                t,
            )
        }
        Command::Backend(BackendCmd::Del { service, backend }) => {
            let (service, backend) = pair(service, backend);
            (Request::BackendDel { service, backend }, t)
        }
        Command::Backend(BackendCmd::SetWeight {
            service,
            backend,
            weight,
        }) => {
            let (service, backend) = pair(service, backend);
            (
                Request::BackendSetWeight {
                    service,
                    backend,
                    weight: *weight,
                },
                t,
            )
        }
        Command::Backend(BackendCmd::Drain { service, backend }) => {
            let (service, backend) = pair(service, backend);
            (
                Request::BackendDrain {
                    service,
                    backend,
                    drained: true,
                },
                t,
            )
        }
        Command::Backend(BackendCmd::Undrain { service, backend }) => {
            let (service, backend) = pair(service, backend);
            (
                Request::BackendDrain {
                    service,
                    backend,
                    drained: false,
                },
                t,
            )
        }
        Command::Backend(BackendCmd::List { service, out }) => (
            Request::BackendList {
                service: service.to_string(),
            },
            out.format,
        ),
        Command::Forward(ForwardCmd::Add { service, to }) => (
            Request::ForwardAdd {
                service: service.to_string(),
                to: to.to_string(),
            },
            t,
        ),
        Command::Forward(ForwardCmd::Del { service }) => (
            Request::ForwardDel {
                service: service.to_string(),
            },
            t,
        ),
        // The service list shows forwards with their targets.
        Command::Forward(ForwardCmd::List(o)) => (Request::VipList, o.format),
        Command::Acl(AclCmd::Add {
            service,
            order,
            permit,
            deny,
            description,
        }) => {
            let (action, prefix) = match (permit, deny) {
                (Some(p), _) => ("permit", p.clone()),
                (None, Some(d)) => ("deny", d.clone()),
                (None, None) => return None,
            };
            let req = Request::AclAdd {
                service: service.to_string(),
                order: *order,
                action: action.into(),
                prefix,
                description: description.clone(),
            };
            (req, t)
        }
        Command::Acl(AclCmd::Del { service, order }) => (
            Request::AclDel {
                service: service.to_string(),
                order: *order,
            },
            t,
        ),
        Command::Acl(AclCmd::List { service, out }) => (
            Request::AclList {
                service: service.to_string(),
            },
            out.format,
        ),
        Command::Pip(PipCmd::Add { pip, dip }) => (
            Request::PipAdd {
                pip: pip.to_string(),
                dip: dip.to_string(),
            },
            t,
        ),
        Command::Pip(PipCmd::Del { pip }) => (
            Request::PipDel {
                pip: pip.to_string(),
            },
            t,
        ),
        Command::Pip(PipCmd::List(o)) => (Request::PipList, o.format),
        Command::Status(o) => (Request::Status, o.format),
        Command::Stats(o) => (Request::Stats, o.format),
    })
}

/// Renders a response; `Err` carries the agent's error message.
///
/// # Errors
/// The agent refused the request.
pub fn render(resp: &Response, format: Format) -> Result<String, String> {
    if let Response::Error { message } = resp {
        return Err(message.clone());
    }
    if format == Format::Json {
        return Ok(serde_json::to_string_pretty(resp).unwrap_or_default());
    }
    let mut o = String::new();
    match resp {
        Response::Ok { message } => o.push_str(message),
        Response::Pips { pips } => {
            let _ = writeln!(o, "{:<18} {:<18} NEXT HOP", "PIP", "INSTANCE");
            for p in pips {
                let nh = p.next_hop.as_ref().map_or_else(
                    || "unresolved (FIB fallback)".to_owned(),
                    |n| format!("if {} → {}", n.ifindex, n.dmac),
                );
                let _ = writeln!(o, "{:<18} {:<18} {nh}", p.pip, p.dip);
            }
        }
        Response::Acl(a) => {
            let _ = writeln!(
                o,
                "{}  ({} rules → {} LPM entries, {} new flows denied)",
                a.service,
                a.rules.len(),
                a.compiled_entries,
                a.drops
            );
            let _ = writeln!(
                o,
                "  {:>8}  {:<7} {:<20} DESCRIPTION",
                "ORDER", "ACTION", "PREFIX"
            );
            for r in &a.rules {
                let _ = writeln!(
                    o,
                    "  {:>8}  {:<7} {:<20} {}",
                    r.order, r.action, r.prefix, r.description
                );
            }
            let _ = writeln!(
                o,
                "  {:>8}  {:<7} {:<20} sources no rule matches",
                "default", a.default, ""
            );
        }
        Response::Error { .. } => {}
        Response::Vips { vips } => {
            let _ = writeln!(
                o,
                "{:<26} {:>4} {:>6} {:>9} {:<28} {:>10} {:>10}",
                "SERVICE", "ID", "TABLE", "IN/TOTAL", "KIND / PROBE", "PACKETS", "NEW FLOWS"
            );
            for v in vips {
                let what = match &v.probe {
                    _ if v.kind != "balanced" => v.kind.clone(),
                    Some(p) => format!("{p} every {}", v.probe_interval),
                    None => "no probe".to_owned(),
                };
                let _ = writeln!(
                    o,
                    "{:<26} {:>4} {:>6} {:>4}/{:<4} {:<28} {:>10} {:>10}",
                    v.service,
                    v.id,
                    v.table_size,
                    v.in_rotation,
                    v.backends,
                    what,
                    v.counters.packets,
                    v.counters.new_flows
                );
            }
        }
        Response::Backends { service, backends } => backend_table(&mut o, service, backends),
        Response::Status(s) => {
            let _ = writeln!(o, "agent      lb {} (pid {})", s.version, s.pid);
            let _ = writeln!(
                o,
                "xdp        {} mode on {}",
                s.xdp_mode,
                s.interfaces.join(", ")
            );
            let _ = writeln!(o, "pins       {}", s.pin_dir.as_deref().unwrap_or("-"));
            let _ = writeln!(
                o,
                "services   {}   backends {} ({} without a resolved next hop)",
                s.services, s.backends, s.backends_unresolved
            );
            let _ = writeln!(
                o,
                "tables     {} of {} slots in use",
                s.ring_slots_used, s.ring_slots
            );
            let _ = writeln!(o, "conntrack  {} flows", s.conntrack_flows);
            let _ = writeln!(o, "client-facing next hops ({}):", s.client_routes.len());
            for r in &s.client_routes {
                let _ = writeln!(o, "           {r}");
            }
            for v in &s.vips {
                o.push('\n');
                backend_table(&mut o, &v.service, &v.backends);
            }
        }
        Response::Stats(s) => {
            let _ = writeln!(o, "{:<20} {:>12}", "REASON", "PACKETS");
            for (k, v) in &s.reasons {
                let _ = writeln!(o, "{k:<20} {v:>12}");
            }
            o.push('\n');
            let _ = writeln!(
                o,
                "{:<28} {:>10} {:>12} {:>10} {:>10} {:>12}",
                "SERVICE", "PACKETS", "BYTES", "NEW FLOWS", "REPLIES", "REPLY BYTES"
            );
            for v in &s.services {
                let c = &v.counters;
                let _ = writeln!(
                    o,
                    "{:<28} {:>10} {:>12} {:>10} {:>10} {:>12}",
                    v.service, c.packets, c.bytes, c.new_flows, c.reply_packets, c.reply_bytes
                );
            }
        }
    }
    Ok(o.trim_end().to_owned())
}

fn backend_table(o: &mut String, service: &str, backends: &[crate::api::BackendView]) {
    let _ = writeln!(o, "{service}");
    let _ = writeln!(
        o,
        "  {:<20} {:>4} {:<9} {:<4} {:>3} {:>6} {:>6} {:>8} {:>9}  {:<30} NEXT HOP",
        "BACKEND",
        "ID",
        "HEALTH",
        "NEW",
        "WT",
        "SHARE",
        "FLOWS",
        "PACKETS",
        "NEW FLOWS",
        "REASON (LAST PROBE)"
    );
    for b in backends {
        let nh = b.next_hop.as_ref().map_or_else(
            || "unresolved (FIB fallback)".to_owned(),
            |n| format!("if {} → {}", n.ifindex, n.dmac),
        );
        let probe = b.last_probe.as_ref().map_or(String::new(), |p| {
            format!(" ({} {}s ago)", p.detail, p.age_ms / 1000)
        });
        let _ = writeln!(
            o,
            "  {:<20} {:>4} {:<9} {:<4} {:>3} {:>5.1}% {:>6} {:>8} {:>9}  {:<30} {nh}",
            b.backend,
            b.id,
            b.health,
            if b.in_rotation { "yes" } else { "no" },
            b.weight,
            b.share * 100.0,
            b.flows,
            b.counters.packets,
            b.counters.new_flows,
            format!("{}{probe}", b.reason),
        );
    }
}
