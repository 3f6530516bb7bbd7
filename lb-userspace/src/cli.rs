//! The `lb` command line: `lb agent` runs the daemon; every other command asks it over the
//! control socket and prints the answer (a table, or JSON with `-o json`).

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_common::spec::{BackendSpec, ServiceSpec};

use crate::api::{self, Request, Response};

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
pub enum VipCmd {
    /// Add a service, e.g. `lb vip add 203.0.113.10:80/tcp`.
    Add {
        service: ServiceSpec,
        /// Lookup-table size (a prime).
        #[arg(long)]
        table_size: Option<u32>,
    },
    /// Delete a service and its backends.
    Del { service: ServiceSpec },
    /// List services.
    List(OutputArg),
}

#[derive(Debug, Subcommand)]
pub enum BackendCmd {
    /// Add a backend: `lb backend add 203.0.113.10:80/tcp 192.0.2.11[:PORT]`.
    Add {
        service: ServiceSpec,
        backend: BackendSpec,
    },
    /// Delete a backend.
    Del {
        service: ServiceSpec,
        backend: BackendSpec,
    },
    /// List a service's backends.
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
        })
    }
}

/// The request a (non-agent) command sends, and how its answer is shown.
#[must_use]
pub fn request(cmd: &Command) -> Option<(Request, Format)> {
    let t = Format::Table;
    Some(match cmd {
        Command::Agent(_) => return None,
        Command::Vip(VipCmd::Add {
            service,
            table_size,
        }) => (
            Request::VipAdd {
                service: service.to_string(),
                table_size: *table_size,
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
        Command::Backend(BackendCmd::Add { service, backend }) => (
            Request::BackendAdd {
                service: service.to_string(),
                backend: backend.to_string(),
            },
            t,
        ),
        Command::Backend(BackendCmd::Del { service, backend }) => (
            Request::BackendDel {
                service: service.to_string(),
                backend: backend.to_string(),
            },
            t,
        ),
        Command::Backend(BackendCmd::List { service, out }) => (
            Request::BackendList {
                service: service.to_string(),
            },
            out.format,
        ),
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
        Response::Error { .. } => {}
        Response::Vips { vips } => {
            let _ = writeln!(
                o,
                "{:<28} {:>4} {:>8} {:>8} {:>12} {:>10}",
                "SERVICE", "ID", "TABLE", "BACKENDS", "PACKETS", "NEW FLOWS"
            );
            for v in vips {
                let _ = writeln!(
                    o,
                    "{:<28} {:>4} {:>8} {:>8} {:>12} {:>10}",
                    v.service,
                    v.id,
                    v.table_size,
                    v.backends,
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
        "  {:<22} {:>5} {:>7} {:>6} {:>8} {:>10} {:>10}  NEXT HOP",
        "BACKEND", "ID", "SHARE", "FLOWS", "PACKETS", "NEW FLOWS", "REPLIES"
    );
    for b in backends {
        let nh = b.next_hop.as_ref().map_or_else(
            || "unresolved (kernel FIB fallback)".to_owned(),
            |n| format!("if {} → {}", n.ifindex, n.dmac),
        );
        let _ = writeln!(
            o,
            "  {:<22} {:>5} {:>6.1}% {:>6} {:>8} {:>10} {:>10}  {nh}",
            b.backend,
            b.id,
            b.share * 100.0,
            b.flows,
            b.counters.packets,
            b.counters.new_flows,
            b.counters.reply_packets
        );
    }
}
