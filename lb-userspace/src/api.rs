//! The agent's control socket: one JSON request per line, one JSON response per line.
//!
//! The socket is a Unix socket, mode 0600 and owned by root, and the server also checks the
//! peer's uid (`SO_PEERCRED`), so only root can change the load balancer. Requests carry specs
//! as text; the agent parses them again, so a hand-written client gets the same validation.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{config::ServiceSettings, spec::SpecError};

/// Default socket path (override with `--socket` or `LB_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/run/lb/lb.sock";
/// Longest request line the server reads; longer ones are refused, not truncated.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    VipAdd {
        service: String,
        #[serde(default)]
        settings: SettingsArgs,
    },
    VipDel {
        service: String,
    },
    VipList,
    BackendAdd {
        service: String,
        backend: String,
        weight: Option<u32>,
    },
    BackendDel {
        service: String,
        backend: String,
    },
    BackendSetWeight {
        service: String,
        backend: String,
        weight: u32,
    },
    BackendDrain {
        service: String,
        backend: String,
        drained: bool,
    },
    BackendList {
        service: String,
    },
    ForwardAdd {
        service: String,
        to: String,
    },
    ForwardDel {
        service: String,
    },
    AclAdd {
        service: String,
        order: u32,
        /// `permit` or `deny`.
        action: String,
        prefix: String,
        #[serde(default)]
        description: String,
    },
    AclDel {
        service: String,
        order: u32,
    },
    AclList {
        service: String,
    },
    PipAdd {
        pip: String,
        dip: String,
    },
    PipDel {
        pip: String,
    },
    PipList,
    Status,
    Stats,
}

/// `lb vip add` settings as typed (text), resolved and checked by the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsArgs {
    pub table_size: Option<u32>,
    pub probe: Option<String>,
    pub probe_interval: Option<String>,
    pub probe_timeout: Option<String>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
    pub when_all_down: Option<String>,
    pub established: Option<String>,
    pub internal: Option<String>,
    pub hairpin: Option<String>,
    pub icmp_echo: Option<String>,
}

impl SettingsArgs {
    /// The settings, defaults filled in; errors name the flag.
    ///
    /// # Errors
    /// A value that does not parse or is out of range.
    pub fn resolve(&self) -> Result<ServiceSettings, String> {
        use crate::spec::parse_duration;
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
        if let Some(h) = &self.hairpin {
            s.hairpin = h
                .parse()
                .map_err(|e: SpecError| format!("--hairpin: {e}"))?;
        }
        crate::config::check_settings(&s)?;
        Ok(s)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Ok {
        message: String,
    },
    Error {
        message: String,
    },
    Vips {
        vips: Vec<ServiceView>,
    },
    Backends {
        service: String,
        backends: Vec<BackendView>,
    },
    Status(StatusView),
    Stats(StatsView),
    Acl(AclView),
    Pips {
        pips: Vec<PipView>,
    },
}

/// An instance-level public IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipView {
    pub pip: String,
    pub dip: String,
    /// `None`: not resolved yet (the kernel FIB fallback serves meanwhile).
    pub next_hop: Option<NextHopView>,
}

/// An endpoint's ACL: its rules in order, the verdict for sources no rule matches, and how
/// many LPM entries the rules compiled to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclView {
    pub service: String,
    pub rules: Vec<AclRuleView>,
    pub default: String,
    pub compiled_entries: usize,
    /// New flows the ACL denied.
    pub drops: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRuleView {
    pub order: u32,
    pub action: String,
    pub prefix: String,
    pub description: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersView {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    pub acl_drops: u64,
    pub conntrack_misses: u64,
}

impl From<lb_common::maps::Counters> for CountersView {
    fn from(c: lb_common::maps::Counters) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            reply_packets: c.reply_packets,
            reply_bytes: c.reply_bytes,
            acl_drops: c.acl_drops,
            conntrack_misses: c.conntrack_misses,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub service: String,
    /// `balanced`, or `forward to DIP:PORT`.
    pub kind: String,
    pub id: u32,
    pub table_size: u32,
    pub backends: usize,
    /// Backends that take new flows now.
    pub in_rotation: usize,
    /// The probe (`tcp:80`, `http/healthz`), or none.
    pub probe: Option<String>,
    pub probe_interval: String,
    pub probe_timeout: String,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    pub when_all_down: String,
    pub established: String,
    /// Internal VIP prefixes (`none`: public).
    pub internal: String,
    pub hairpin: String,
    pub icmp_echo: bool,
    pub counters: CountersView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeView {
    pub ok: bool,
    pub detail: String,
    /// Milliseconds since the result came in.
    pub age_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopView {
    pub ifindex: u32,
    pub smac: String,
    pub dmac: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendView {
    pub backend: String,
    pub id: u32,
    /// `up`, `down`, `unknown` (not probed yet) or `unprobed` (the service has no probe).
    pub health: String,
    /// Whether new flows may go to it.
    pub in_rotation: bool,
    /// Why it is (not) in rotation: "healthy", "drained", "weight 0", "2 failed probes: ...".
    pub reason: String,
    pub last_probe: Option<ProbeView>,
    pub weight: u32,
    pub drained: bool,
    /// `None`: not resolved yet (the fast path falls back to the kernel FIB meanwhile).
    pub next_hop: Option<NextHopView>,
    /// Slots of the service's table that point at this backend.
    pub slots: u32,
    /// Share of the table, 0.0 ..= 1.0.
    pub share: f64,
    /// Tracked flows (conntrack entries client → backend).
    pub flows: u64,
    pub counters: CountersView,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub pid: u32,
    pub interfaces: Vec<String>,
    pub xdp_mode: String,
    pub pin_dir: Option<String>,
    pub services: usize,
    pub backends: usize,
    pub backends_unresolved: usize,
    /// Client-facing next hops in `LB_ROUTES`, e.g. `0.0.0.0/0 via if 2 → 02:..`.
    pub client_routes: Vec<String>,
    pub ring_slots_used: u64,
    pub ring_slots: u32,
    pub conntrack_flows: u32,
    pub vips: Vec<ServiceStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    /// Verdict reason → packets, in reason-number order.
    pub reasons: BTreeMap<String, u64>,
    pub services: Vec<ServiceView>,
}

/// What the server hands the reconciler: a request and where to send the answer.
pub type ApiCall = (Request, oneshot::Sender<Response>);

/// Errors of a CLI call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no agent is listening on {path} (start one with `lb agent`, or set --socket / LB_SOCKET)"
    )]
    NoAgent { path: String },
    #[error("talking to the agent on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent's answer is not valid: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Sends one request to the agent and returns its response.
///
/// # Errors
/// No agent, a broken connection or an undecodable answer.
pub async fn call(path: &Path, req: &Request) -> Result<Response, ClientError> {
    let p = path.display().to_string();
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NoAgent { path: p.clone() }
            }
            _ => ClientError::Io {
                path: p.clone(),
                source: e,
            },
        })?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    let io = |source| ClientError::Io {
        path: p.clone(),
        source,
    };
    stream.write_all(line.as_bytes()).await.map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .await
        .map_err(|source| ClientError::Io {
            path: p.clone(),
            source,
        })?;
    Ok(serde_json::from_str(&answer)?)
}

/// Binds the control socket: parent directory created, stale socket replaced, mode 0600.
///
/// # Errors
/// The directory or socket cannot be created.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by a killed agent: connecting to it fails, so it is stale.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the control socket until the listener fails; each connection is one request.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<ApiCall>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                continue;
            }
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, calls).await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        });
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<ApiCall>) -> std::io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let n = BufReader::new(rd)
        .take(MAX_REQUEST as u64 + 1)
        .read_line(&mut line)
        .await?;
    let resp = if uid != 0 {
        Response::Error {
            message: format!("permission denied: uid {uid} is not root"),
        }
    } else if n > MAX_REQUEST {
        Response::Error {
            message: format!("request longer than {MAX_REQUEST} bytes"),
        }
    } else {
        match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((req, tx)).await.is_err() {
                    Response::Error {
                        message: "the agent is shutting down".into(),
                    }
                } else {
                    rx.await.unwrap_or(Response::Error {
                        message: "the agent is shutting down".into(),
                    })
                }
            }
        }
    };
    let mut out = serde_json::to_string(&resp).map_err(std::io::Error::other)?;
    out.push('\n');
    wr.write_all(out.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    /// The control socket changes the data plane, so only root may connect: mode 0600 (not
    /// what the umask gives), and an unprivileged caller is refused by the kernel.
    #[tokio::test]
    async fn the_control_socket_is_root_only() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test checks socket ownership: run it as root (cargo xtask test)"
        );
        let dir = std::env::temp_dir().join(format!("lb-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Searchable by anyone, so only the socket's own mode can refuse the caller below.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("lb.sock");
        let _listener = super::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let p = path.clone();
        // A thread that drops to uid/gid 65534 ("nobody"). The raw syscall changes only this
        // thread's credentials (glibc's setresuid would change every thread of the test
        // process); the thread ends right after.
        let as_nobody = std::thread::spawn(move || {
            // SAFETY: plain syscalls on this thread's own credentials.
            let rc = unsafe {
                libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534)
                    | libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534)
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            std::os::unix::net::UnixStream::connect(&p).map(drop)
        })
        .join()
        .unwrap();
        let as_root = std::os::unix::net::UnixStream::connect(&path).map(drop);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(mode, 0o600, "socket mode {mode:o}");
        assert_eq!(
            as_nobody.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::PermissionDenied),
            "an unprivileged connect must be refused"
        );
        as_root.expect("root connects");
    }
}
