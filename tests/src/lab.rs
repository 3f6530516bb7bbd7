//! The lab: a client namespace, an LB namespace running `lb agent`, and backend namespaces
//! running `lb-labd` (HTTP and UDP echo). Used by the demo and the end-to-end tests.
//!
//! ```text
//!  client ns            lb ns                                 backend ns (one per backend)
//!  c0 198.51.100.2 ──── l0 198.51.100.1   [XDP]
//!                       l1 192.0.2.1/32   [XDP] ────────────  eth0 192.0.2.11  (b1)
//!                       l2 192.0.2.1/32   [XDP] ────────────  eth0 192.0.2.12  (b2)
//!                       ...
//!  VIP 203.0.113.10 is routed by the client via 198.51.100.1; the LB kernel has no route for
//!  it, so a VIP packet only reaches a backend through the XDP program. Backends route
//!  everything via 192.0.2.1 (the LB), which is how replies come back for reverse NAT.
//! ```

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::netns::{Netns, sweep_stale, unique_prefix};

pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const LB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const LB_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// How long one request may take before it counts as failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Backend `i` (1-based) has address 192.0.2.(10 + i).
#[must_use]
pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + u8::try_from(i).expect("few backends"))
}

/// The config the demo runs on: one VIP, tcp/80 and udp/53, over three backends.
pub const DEMO_CONFIG: &str = r#"# The demo's embedded default: one VIP with tcp/80 and udp/53 over three backends.
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
probe = "http/healthz"      # GET /healthz must answer 200
probe_interval = "2s"

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
probe = "tcp:80"            # UDP has no handshake: probe the backend's web port
probe_interval = "2s"
"#;

/// A binary of this workspace next to the running executable (`target/<profile>/NAME`), or
/// from `$LB_BIN_DIR`.
///
/// # Errors
/// The binary is not built.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("LB_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe()?;
            let mut dir = exe.parent().context("exe dir")?.to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is not built: run `cargo build -p lb-userspace -p lb-integration --bins` (cargo xtask test does)",
            p.display()
        );
    }
    Ok(p)
}

/// One backend namespace and its server.
pub struct BackendNs {
    pub ns: Netns,
    pub name: String,
    pub ip: Ipv4Addr,
    server: Option<Child>,
}

impl BackendNs {
    /// Starts (or restarts) this backend's HTTP and UDP servers; returns once they listen.
    ///
    /// # Errors
    /// The server does not start.
    pub fn start_server(&mut self) -> anyhow::Result<()> {
        self.start_server_with_health(200)
    }

    /// As [`Self::start_server`], with `GET /healthz` answering `status`.
    ///
    /// # Errors
    /// The server does not start.
    pub fn start_server_with_health(&mut self, status: u16) -> anyhow::Result<()> {
        self.stop_server();
        let labd = workspace_bin("lb-labd")?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(&labd)
            .args([
                "--name",
                &self.name,
                "--http",
                &format!("{}:80", self.ip),
                "--udp",
                &format!("{}:53", self.ip),
                "--health-status",
                &status.to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting lb-labd")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("lb-labd for {} did not start: {line:?}", self.name);
        }
        self.server = Some(child);
        Ok(())
    }

    /// Stops the server (its listening sockets close at once).
    pub fn stop_server(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BackendNs {
    fn drop(&mut self) {
        self.stop_server();
    }
}

/// The running agent.
struct Agent {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

/// The whole lab. Dropping it stops the agent (SIGTERM, then SIGKILL), the servers, deletes
/// the namespaces, pins and temp files.
pub struct Lab {
    pub prefix: String,
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<BackendNs>,
    /// A second client namespace on its own LB interface (`lx`): 198.51.100.129/25.
    pub external: Option<Netns>,
    pub pin_dir: PathBuf,
    pub tmp: PathBuf,
    pub socket: PathBuf,
    agent: Option<Agent>,
    /// `xdp_pass` on the far end of every veth pair (see [`peer_program`]); detached on
    /// drop. The benchmark swaps in its sink program.
    pub peer_xdp: Vec<PeerXdp>,
}

/// A baseline program attached to a veth end outside the LB.
pub struct PeerXdp {
    /// Namespace name and device.
    pub ns: String,
    pub dev: String,
    pub ebpf: aya::Ebpf,
}

impl Lab {
    /// Builds the topology with `n` backends (servers started).
    ///
    /// # Errors
    /// Any `ip`/`ethtool`/`sysctl` step fails.
    pub fn new(n: usize) -> anyhow::Result<Self> {
        crate::require_root();
        sweep_stale();
        let prefix = unique_prefix();
        let tmp = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&tmp)?;
        let client = Netns::new(&format!("{prefix}-client"))?;
        let lb = Netns::new(&format!("{prefix}-lb"))?;
        let mut lab = Self {
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&prefix),
            socket: tmp.join("lb.sock"),
            tmp,
            prefix,
            client,
            lb,
            backends: Vec::new(),
            external: None,
            agent: None,
            peer_xdp: Vec::new(),
        };
        let lbn = lab.lb.name.clone();
        lab.lb.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // Client side.
        lab.client.ip(&[
            "link", "add", "c0", "type", "veth", "peer", "name", "l0", "netns", &lbn,
        ])?;
        lab.client
            .ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "c0"])?;
        lab.client.ip(&["link", "set", "c0", "up"])?;
        lab.client.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &LB_CLIENT_SIDE.to_string(),
        ])?;
        lab.lb
            .ip(&["addr", "add", &format!("{LB_CLIENT_SIDE}/24"), "dev", "l0"])?;
        lab.lb.ip(&["link", "set", "l0", "up"])?;
        // The client side stands in for the LB's upstream router: replies to any client go
        // to it, through one gateway route the agent resolves at start.
        lab.lb
            .ip(&["route", "add", "default", "via", &CLIENT_IP.to_string()])?;
        // Frames XDP redirects into a veth land on its peer only if the peer has NAPI (GRO on);
        // locally made TCP/UDP on veth has partial checksums that native XDP cannot finish,
        // so senders compute checksums in software (tx off). Real NICs need neither.
        harden_veth(&lab.client, "c0")?;
        lab.peer_xdp
            .push(peer_program(&lab.client, "c0", "xdp_pass")?);
        for i in 1..=n {
            lab.add_backend_ns(i)?;
        }
        Ok(lab)
    }

    /// Adds backend namespace `i` (192.0.2.(10+i)) with its link to the LB and its server.
    ///
    /// # Errors
    /// A setup step fails.
    pub fn add_backend_ns(&mut self, i: usize) -> anyhow::Result<()> {
        let name = format!("b{i}");
        let ns = Netns::new(&format!("{}-{name}", self.prefix))?;
        let ip = backend_ip(i);
        let dev = format!("l{i}");
        self.lb.ip(&[
            "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        self.lb
            .ip(&["addr", "add", &format!("{LB_BACKEND_SIDE}/32"), "dev", &dev])?;
        self.lb.ip(&["link", "set", &dev, "up"])?;
        self.lb
            .ip(&["route", "add", &format!("{ip}/32"), "dev", &dev])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &LB_BACKEND_SIDE.to_string(),
        ])?;
        harden_veth(&ns, "eth0")?;
        harden_veth(&self.lb, &dev)?;
        self.peer_xdp.push(peer_program(&ns, "eth0", "xdp_pass")?);
        let mut b = BackendNs {
            ns,
            name,
            ip,
            server: None,
        };
        b.start_server()?;
        self.backends.push(b);
        Ok(())
    }

    /// The LB-side interfaces the agent attaches to.
    #[must_use]
    pub fn lb_interfaces(&self) -> Vec<String> {
        let mut v = vec!["l0".to_owned()];
        v.extend((1..=self.backends.len()).map(|i| format!("l{i}")));
        if self.external.is_some() {
            v.push("lx".to_owned());
        }
        v
    }

    /// Adds the external client namespace (before the agent starts): 198.51.100.129/25 behind
    /// the LB's `lx` (198.51.100.254/25), so it is outside an internal prefix 198.51.100.0/25.
    ///
    /// # Errors
    /// A setup step fails.
    pub fn add_external_client(&mut self) -> anyhow::Result<()> {
        let ns = Netns::new(&format!("{}-ext", self.prefix))?;
        self.lb.ip(&[
            "link", "add", "lx", "type", "veth", "peer", "name", "e0", "netns", &ns.name,
        ])?;
        self.lb
            .ip(&["addr", "add", "198.51.100.254/25", "dev", "lx"])?;
        self.lb.ip(&["link", "set", "lx", "up"])?;
        ns.ip(&["addr", "add", "198.51.100.129/25", "dev", "e0"])?;
        ns.ip(&["link", "set", "e0", "up"])?;
        ns.ip(&["route", "add", "default", "via", "198.51.100.254"])?;
        harden_veth(&ns, "e0")?;
        harden_veth(&self.lb, "lx")?;
        self.peer_xdp.push(peer_program(&ns, "e0", "xdp_pass")?);
        self.external = Some(ns);
        Ok(())
    }

    /// One HTTP GET from the external client to `vip:port`.
    ///
    /// # Errors
    /// No external client, or the request fails within `timeout`.
    pub fn http_get_external(
        &self,
        vip: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let ns = self.external.as_ref().context("no external client")?;
        let dst = SocketAddr::new(IpAddr::V4(vip), port);
        let s = ns.enter(move || TcpStream::connect_timeout(&dst, timeout))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        HttpConn {
            stream: BufReader::new(s),
        }
        .get()
    }

    /// Stops the agent and starts it again with the same config file (the state file and,
    /// after a plain stop, nothing else carries over).
    ///
    /// # Errors
    /// The agent does not stop or start.
    pub fn restart_agent(&mut self) -> anyhow::Result<()> {
        let st = self.stop_agent()?;
        if !st.success() {
            bail!("lb agent exited with {st}");
        }
        let config = std::fs::read_to_string(self.tmp.join("lb.toml"))?;
        self.start_agent(&config)
    }

    /// Starts `lb agent` in the LB namespace (native XDP) with `config`, and waits until it
    /// reports ready.
    ///
    /// # Errors
    /// The agent exits or does not become ready.
    pub fn start_agent(&mut self, config: &str) -> anyhow::Result<()> {
        self.start_agent_with(config, &[])
    }

    /// As [`Self::start_agent`], with `extra_args` appended to `lb agent`'s command line.
    ///
    /// # Errors
    /// The agent exits or does not become ready.
    pub fn start_agent_with(&mut self, config: &str, extra_args: &[&str]) -> anyhow::Result<()> {
        let cfg = self.tmp.join("lb.toml");
        std::fs::write(&cfg, config)?;
        let lb = workspace_bin("lb")?;
        let mut cmd = self.lb.command(&lb);
        cmd.arg("agent").arg("--config").arg(&cfg);
        for i in self.lb_interfaces() {
            cmd.args(["--iface", &i]);
        }
        cmd.args(["--xdp-mode", "native"])
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-file")
            .arg(self.tmp.join("state.toml"))
            .args(extra_args)
            .env("RUST_LOG", "info,netlink_packet_route=error")
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting lb agent")?;
        let stderr = child.stderr.take().context("stderr")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        // Drains the agent's log (so it never blocks on a full pipe) and signals readiness.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("agent ready") {
                    let _ = tx.send(());
                }
                if std::env::var_os("LB_AGENT_LOG").is_some() {
                    eprintln!("[agent] {line}");
                }
                log2.lock().expect("log").push_str(&(line + "\n"));
            }
        });
        self.agent = Some(Agent { child, log });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            bail!(
                "lb agent did not become ready; its log:\n{}",
                self.agent_log()
            );
        }
        Ok(())
    }

    /// What the agent logged so far.
    #[must_use]
    pub fn agent_log(&self) -> String {
        self.agent
            .as_ref()
            .map(|a| a.log.lock().expect("log").clone())
            .unwrap_or_default()
    }

    /// The agent's process id, while it runs.
    #[must_use]
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|a| a.child.id())
    }

    /// Rewrites the agent's config file with `config` and sends it SIGHUP (the agent reloads
    /// it; see its log for the outcome).
    ///
    /// # Errors
    /// No agent runs, or the file cannot be written.
    pub fn reload(&self, config: &str) -> anyhow::Result<()> {
        std::fs::write(self.tmp.join("lb.toml"), config)?;
        let pid = self.agent_pid().context("no agent")?;
        // SAFETY: signalling the agent this lab started.
        if unsafe { libc::kill(i32::try_from(pid)?, libc::SIGHUP) } != 0 {
            bail!("SIGHUP: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Kills the agent with SIGKILL (nothing of its own shutdown runs) and reaps it.
    ///
    /// # Errors
    /// No agent is running.
    pub fn kill_agent(&mut self) -> anyhow::Result<()> {
        let Some(mut a) = self.agent.take() else {
            bail!("no agent running")
        };
        a.child.kill()?;
        a.child.wait()?;
        Ok(())
    }

    /// The id of the XDP program attached to `dev` in the LB namespace, if any.
    ///
    /// # Errors
    /// `ip` fails.
    pub fn xdp_prog_id(&self, dev: &str) -> anyhow::Result<Option<u32>> {
        let out = self.lb.ip(&["-d", "link", "show", "dev", dev])?;
        Ok(out
            .split("prog/xdp id ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|id| id.parse().ok()))
    }

    /// Stops the agent with SIGTERM and waits for it (bounded); returns its exit status.
    ///
    /// # Errors
    /// It does not exit within 10 s (it is then killed).
    pub fn stop_agent(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut a) = self.agent.take() else {
            bail!("no agent running")
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(a.child.id())?, libc::SIGTERM) };
        for _ in 0..200 {
            if let Some(st) = a.child.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = a.child.kill();
        bail!("lb agent ignored SIGTERM for 10 s")
    }

    /// Runs `lb ARGS` against this lab's agent; returns stdout, or an error with stderr.
    ///
    /// # Errors
    /// The command fails.
    pub fn lb(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::netns::output(
            Command::new(workspace_bin("lb")?)
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
        )
    }

    /// `lb ARGS -o json`, parsed.
    ///
    /// # Errors
    /// The command fails or prints no JSON.
    pub fn lb_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        Ok(serde_json::from_str(&self.lb(&a)?)?)
    }

    /// Waits until the agent has resolved every backend's next hop and the default route to
    /// the clients (bounded).
    ///
    /// # Errors
    /// Not resolved within 10 s.
    pub fn wait_resolved(&self) -> anyhow::Result<()> {
        crate::wait_until(
            "next hops to resolve",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                self.lb_json(&["status"]).is_ok_and(|s| {
                    let default_route = s["client_routes"].as_array().is_some_and(|r| {
                        r.iter()
                            .any(|r| r.as_str().is_some_and(|r| r.starts_with("0.0.0.0/0 ")))
                    });
                    s["backends_unresolved"] == 0 && default_route
                })
            },
        )
    }

    /// Waits until next hops are resolved and every backend that may take new flows (not
    /// drained, weight > 0) is in rotation, i.e. probed healthy where a probe is set (bounded).
    ///
    /// # Errors
    /// Not ready within 10 s.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        self.wait_resolved()?;
        crate::wait_until(
            "backends to be in rotation",
            Duration::from_secs(10),
            Duration::from_millis(25),
            || {
                self.lb_json(&["status"]).is_ok_and(|s| {
                    s["vips"].as_array().is_some_and(|vips| {
                        vips.iter()
                            .flat_map(|v| v["backends"].as_array().into_iter().flatten())
                            .all(|b| {
                                b["in_rotation"] == true || b["drained"] == true || b["weight"] == 0
                            })
                    })
                })
            },
        )
    }

    /// A verdict-reason counter of the agent's program.
    ///
    /// # Errors
    /// The stats call fails.
    pub fn reason(&self, name: &str) -> anyhow::Result<u64> {
        let s = self.lb_json(&["stats"])?;
        s["reasons"][name]
            .as_u64()
            .with_context(|| format!("no reason {name} in {s}"))
    }

    /// One HTTP GET on a new connection from the client to `VIP:port`; returns the answering
    /// backend's name.
    ///
    /// # Errors
    /// Connect, send or receive fails or times out.
    pub fn http_get(&self, port: u16) -> anyhow::Result<String> {
        let mut c = self.http_connect(port)?;
        c.get()
    }

    /// As [`Self::http_get`], from a chosen client source address (the client namespace must
    /// have it), with `timeout` for the connect.
    ///
    /// # Errors
    /// Connect, send or receive fails or times out.
    pub fn http_get_from(
        &self,
        src: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.http_connect_from(src, port, timeout)?.get()
    }

    /// Connects from inside `ns` (a backend, say) to `ip:port`.
    ///
    /// # Errors
    /// The connection cannot be made within `timeout`.
    pub fn http_connect_in(
        ns: &Netns,
        ip: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<HttpConn> {
        let dst = SocketAddr::new(IpAddr::V4(ip), port);
        let s = ns.enter(move || TcpStream::connect_timeout(&dst, timeout))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpConn {
            stream: BufReader::new(s),
        })
    }

    /// As [`Self::http_connect`], from a chosen client source address.
    ///
    /// # Errors
    /// The connection cannot be made within `timeout`.
    pub fn http_connect_from(
        &self,
        src: Ipv4Addr,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<HttpConn> {
        let s = self
            .client
            .enter(move || connect_from(src, SocketAddr::new(IpAddr::V4(VIP), port), timeout))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpConn {
            stream: BufReader::new(s),
        })
    }

    /// One HTTP GET from the client to any address (a PIP, say); returns the answering name.
    ///
    /// # Errors
    /// The request fails or times out.
    pub fn http_get_at(&self, ip: Ipv4Addr, port: u16) -> anyhow::Result<String> {
        let dst = SocketAddr::new(IpAddr::V4(ip), port);
        let s = self
            .client
            .enter(move || TcpStream::connect_timeout(&dst, IO_TIMEOUT))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        HttpConn {
            stream: BufReader::new(s),
        }
        .get()
    }

    /// A keep-alive HTTP connection from the client to `VIP:port`.
    ///
    /// # Errors
    /// The connection cannot be made.
    pub fn http_connect(&self, port: u16) -> anyhow::Result<HttpConn> {
        let vip = SocketAddr::new(IpAddr::V4(VIP), port);
        let s = self
            .client
            .enter(move || TcpStream::connect_timeout(&vip, IO_TIMEOUT))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpConn {
            stream: BufReader::new(s),
        })
    }

    /// Starts a [`ConnStream`] from the client to `VIP:port`. Widens the client's ephemeral
    /// port range first: every closed connection holds its port in TIME_WAIT for 60 s.
    ///
    /// # Errors
    /// The sysctl fails.
    pub fn conn_stream(&self, port: u16) -> anyhow::Result<ConnStream> {
        self.client.exec(
            "sysctl",
            &["-qw", "net.ipv4.ip_local_port_range=1024 65535"],
        )?;
        Ok(ConnStream::start(
            &self.client,
            SocketAddr::new(IpAddr::V4(VIP), port),
        ))
    }

    /// One UDP request from the client to `VIP:port`; returns the answering backend's name.
    ///
    /// # Errors
    /// No answer within the timeout, or an answer from another address than the VIP.
    pub fn udp_ask(&self, port: u16, payload: &str) -> anyhow::Result<String> {
        let s = self
            .client
            .enter(|| UdpSocket::bind(SocketAddr::new(IpAddr::V4(CLIENT_IP), 0)))?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let vip = SocketAddr::new(IpAddr::V4(VIP), port);
        s.send_to(payload.as_bytes(), vip)?;
        let mut buf = [0u8; 1500];
        let (n, from) = s.recv_from(&mut buf).context("no UDP answer")?;
        if from != vip {
            bail!("UDP answer came from {from}, not from the VIP {vip}");
        }
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (name, echo) = text.split_once(' ').context("malformed echo")?;
        if echo != payload {
            bail!("echo {echo:?} != {payload:?}");
        }
        Ok(name.to_owned())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.agent.is_some() {
            let _ = self.stop_agent();
        }
        self.backends.clear();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// A raw ICMP socket in namespace `ns` (it receives every ICMP message the namespace gets),
/// with a short receive timeout so callers can poll against their own deadline.
///
/// # Errors
/// The socket cannot be made (not root?).
pub fn icmp_socket(ns: &Netns) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    Ok(ns.enter(|| -> std::io::Result<OwnedFd> {
        // SAFETY: a plain socket call; the descriptor is owned by the returned OwnedFd.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let sock = OwnedFd::from_raw_fd(fd);
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            let len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                len,
            );
            Ok(sock)
        }
    })?)
}

/// Sends an ICMP message (checksum filled in here) to `dst`; the kernel adds the IP header.
///
/// # Errors
/// The send fails.
pub fn send_icmp(
    sock: &std::os::fd::OwnedFd,
    dst: Ipv4Addr,
    mut msg: Vec<u8>,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    msg[2..4].copy_from_slice(&[0, 0]);
    let c = lb_common::csum::ipv4_header(&msg); // the same one's-complement sum
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: valid buffer and address for the duration of the call.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const to).cast(),
            len,
        )
    };
    if n < 0 {
        bail!("sendto {dst}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives IP packets carrying ICMP on `sock` until `want` accepts one (returned whole, IP
/// header included) or `timeout` passes.
#[must_use]
pub fn recv_icmp(
    sock: &std::os::fd::OwnedFd,
    timeout: Duration,
    want: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd as _;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        // SAFETY: a valid buffer of the given length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue }; // a receive-timeout tick
        if want(&buf[..n]) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// Sends one ICMP echo request from namespace `ns` to `dst` and returns the source address of
/// the matching echo reply.
///
/// # Errors
/// No matching reply within `timeout`.
pub fn ping(ns: &Netns, dst: Ipv4Addr, timeout: Duration) -> anyhow::Result<Ipv4Addr> {
    let sock = icmp_socket(ns)?;
    let id = u16::try_from(std::process::id() & 0xffff).expect("masked");
    let mut msg = vec![8u8, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&1u16.to_be_bytes());
    msg.extend_from_slice(b"lb-lab-ping");
    send_icmp(&sock, dst, msg)?;
    let reply = recv_icmp(&sock, timeout, |p| {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        p.len() >= ihl + 8 && p[ihl] == 0 && p[ihl + 4..ihl + 6] == id.to_be_bytes()
    })
    .with_context(|| format!("no echo reply from {dst} within {timeout:?}"))?;
    Ok(Ipv4Addr::new(reply[12], reply[13], reply[14], reply[15]))
}

/// A TCP connection bound to `src` (std cannot bind before connecting).
fn connect_from(src: Ipv4Addr, dst: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let SocketAddr::V4(dst) = dst else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sin = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; the TcpStream takes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(std::net::SocketAddrV4::new(src, 0));
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SO_SNDTIMEO bounds a blocking connect on Linux.
        stream.set_write_timeout(Some(timeout))?;
        let remote = sin(dst);
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Attaches baseline program `program` (native mode) to `dev` in `ns`, for as long as the
/// returned value lives. The lab uses `xdp_pass`: veth delivers an `XDP_TX` frame (the LB sending a frame back out of its ingress
/// device: a one-armed LB, a hairpin to the connecting backend itself) by queueing it on the
/// peer and kicking the peer's NAPI only if the peer has an XDP program; without one the frame
/// waits until the next packet arrives. Physical NICs have no such condition.
///
/// # Errors
/// The program does not load or attach.
pub fn peer_program(ns: &Netns, dev: &str, program: &'static str) -> anyhow::Result<PeerXdp> {
    let d = dev.to_owned();
    let ebpf = ns.enter(move || -> anyhow::Result<aya::Ebpf> {
        let mut ebpf = aya::Ebpf::load(lb_userspace::dataplane::BASELINE_OBJ)?;
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut(program)
            .with_context(|| format!("{program} missing"))?
            .try_into()?;
        prog.load()?;
        prog.attach(&d, aya::programs::XdpMode::Driver)
            .with_context(|| format!("attach {program} to {d}"))?;
        Ok(ebpf)
    })?;
    Ok(PeerXdp {
        ns: ns.name.clone(),
        dev: dev.to_owned(),
        ebpf,
    })
}

fn harden_veth(ns: &Netns, dev: &str) -> anyhow::Result<()> {
    ns.exec("ethtool", &["-K", dev, "tx", "off", "gro", "on"])?;
    Ok(())
}

/// What a [`ConnStream`] has seen so far.
#[derive(Clone, Debug, Default)]
pub struct StreamTally {
    /// Connections that got their answer.
    pub ok: u64,
    /// Every failed connection: its number and what went wrong.
    pub failures: Vec<String>,
    /// Answers per backend name.
    pub per_backend: std::collections::BTreeMap<String, u64>,
    /// The stream's thread has ended (stopped, or at its count or time bound).
    pub ended: bool,
}

type Shared = std::sync::Arc<(std::sync::Mutex<StreamTally>, std::sync::Condvar)>;

/// New connections, one after another on a background thread in the client namespace: each
/// connects, makes one HTTP GET and closes. Traffic that must keep flowing while the agent is
/// killed, restarted or upgraded. Paced to at most one connection per [`Self::PACE`] (so the
/// load, and the ports it holds in TIME_WAIT, do not grow with the host's speed); bounded by
/// [`Self::MAX_CONNECTIONS`] and [`Self::MAX_TIME`]; stopped on drop.
pub struct ConnStream {
    shared: Shared,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConnStream {
    pub const PACE: Duration = Duration::from_millis(1);
    /// 40 s at full pace, within the 64 Ki ports of the widened range.
    pub const MAX_CONNECTIONS: u64 = 40_000;
    pub const MAX_TIME: Duration = Duration::from_secs(120);
    /// How long [`Self::wait_more`] waits at most.
    pub const WAIT: Duration = Duration::from_secs(30);

    fn start(ns: &Netns, dst: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let shared: Shared = std::sync::Arc::default();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        let thread = ns.spawn_in(move || {
            let began = std::time::Instant::now();
            let mut n = 0u64;
            while !st.load(Ordering::Relaxed)
                && n < Self::MAX_CONNECTIONS
                && began.elapsed() < Self::MAX_TIME
            {
                // Pacing, not synchronisation: the next connection starts one PACE after the
                // previous one started, or at once if that one took longer.
                let due = began + Self::PACE * u32::try_from(n).unwrap_or(u32::MAX);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                n += 1;
                let got = TcpStream::connect_timeout(&dst, IO_TIMEOUT)
                    .map_err(anyhow::Error::from)
                    .and_then(|s| {
                        s.set_read_timeout(Some(IO_TIMEOUT))?;
                        s.set_write_timeout(Some(IO_TIMEOUT))?;
                        HttpConn {
                            stream: BufReader::new(s),
                        }
                        .get()
                    });
                let mut t = sh.0.lock().expect("tally");
                match got {
                    Ok(name) => {
                        t.ok += 1;
                        *t.per_backend.entry(name).or_default() += 1;
                    }
                    Err(e) => t.failures.push(format!("connection {n}: {e:#}")),
                }
                sh.1.notify_all();
            }
            sh.0.lock().expect("tally").ended = true;
            sh.1.notify_all();
        });
        Self {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// Blocks until `n` more connections than now have succeeded.
    ///
    /// # Errors
    /// The stream ended, or [`Self::WAIT`] passed first.
    pub fn wait_more(&self, n: u64) -> anyhow::Result<()> {
        let (lock, cv) = &*self.shared;
        let mut t = lock.lock().expect("tally");
        let want = t.ok + n;
        let deadline = std::time::Instant::now() + Self::WAIT;
        while t.ok < want {
            if t.ended {
                bail!("the connection stream ended after {} connections", t.ok);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bail!(
                    "{} of {n} more connections in {:?}; failures so far: {:?}",
                    n + t.ok - want,
                    Self::WAIT,
                    t.failures
                );
            }
            t = cv.wait_timeout(t, left).expect("tally").0;
        }
        Ok(())
    }

    /// Stops the stream and returns what it saw.
    #[must_use]
    pub fn stop(mut self) -> StreamTally {
        self.halt();
        self.shared.0.lock().expect("tally").clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ConnStream {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
}

impl HttpConn {
    /// One request on this connection; returns the body's first line (the backend's name).
    ///
    /// # Errors
    /// The request fails, times out or gets no 200.
    pub fn get(&mut self) -> anyhow::Result<String> {
        Ok(self.get_with_peer()?.0)
    }

    /// As [`Self::get`], also returning the client address the server saw (its `X-Peer`).
    ///
    /// # Errors
    /// As [`Self::get`], or no `X-Peer` header.
    pub fn get_with_peer(&mut self) -> anyhow::Result<(String, SocketAddr)> {
        self.stream
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
        let mut status = String::new();
        self.stream.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("bad status line {status:?}");
        }
        let mut len = 0usize;
        let mut peer = None;
        loop {
            let mut h = String::new();
            if self.stream.read_line(&mut h)? == 0 {
                bail!("connection closed in headers");
            }
            if h == "\r\n" {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse()?;
            } else if let Some(v) = lower.strip_prefix("x-peer:") {
                peer = Some(v.trim().parse::<SocketAddr>()?);
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        let peer = peer.context("no X-Peer header")?;
        Ok((String::from_utf8_lossy(&body).trim().to_owned(), peer))
    }

    /// The local (client) address of the connection.
    ///
    /// # Errors
    /// The socket is gone.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.stream.get_ref().local_addr()
    }
}

/// Removes a directory tree if it exists (for pin dirs).
pub fn remove_tree(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}
