//! The scale-out lab: several LB nodes behind one router that spreads flows over them with
//! ECMP, each node running the real agent (native XDP) with the same config and its own
//! BIRD (the config `lb bgp example` prints), peering with the router's BIRD (BFD on both
//! sides). The router forwards each VIP by a resilient next-hop group over the nodes that
//! announce it (its BIRD learns them; [`super::ecmp`] makes the groups), or, with
//! [`Ecmp::Plain`], by BIRD's own multipath route.
//!
//! ```text
//!  client c0 198.51.100.2 ── r0 198.51.100.1  router  f0 192.0.2.254 ─┐
//!                                                                      │  sw: bridge br0
//!  node N (N = 1..): f0 192.0.2.N [XDP, agent, BIRD] ─────────────────┤  (xdp_pass on the
//!  backend i: eth0 192.0.2.1i, the VIPs on lo (lb backend setup l2) ──┘   nodes' ports)
//! ```
//!
//! The services are floating IP `l2`: a node rewrites the MACs to the backend's on the
//! shared segment, and the backend answers the client through the router, never through a
//! node. The router hashes flows over the nodes by their 5-tuple
//! (`fib_multipath_hash_policy = 1`).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::{
    BackendNs, PeerXdp,
    ecmp::{LEARNED, Mirror},
    peer_program, workspace_bin,
};
use crate::netns::{Netns, output, sweep_stale, unique_prefix};

pub const ROUTER_FABRIC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
pub const ROUTER_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const NODE_AS: u32 = 64512;
const ROUTER_AS: u32 = 64513;

/// A foreground process killed (and reaped) when dropped.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One LB node.
pub struct Node {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub agent: Option<Daemon>,
    pub bird: Option<Bird>,
}

impl Node {
    /// Runs `lb ARGS` against this node's agent.
    ///
    /// # Errors
    /// The command fails.
    pub fn lb_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = output(
            Command::new(workspace_bin("lb")?)
                .arg("--socket")
                .arg(&self.socket)
                .args(args)
                .args(["-o", "json"]),
        )?;
        Ok(serde_json::from_str(&out)?)
    }
}

/// The cluster.
pub struct Cluster {
    pub prefix: String,
    pub tmp: PathBuf,
    /// The router's resilient groups ([`Ecmp::Resilient`]); before `router`, so that it
    /// stops first.
    mirror: Option<Mirror>,
    pub client: Netns,
    pub router: Netns,
    pub sw: Netns,
    pub nodes: Vec<Node>,
    pub backends: Vec<BackendNs>,
    pub router_bird: Option<Bird>,
    pub config: String,
    /// Each agent's `--announce-drain`.
    pub drain: String,
    pub ecmp: Ecmp,
    peer_xdp: Vec<PeerXdp>,
}

/// How the router spreads a VIP's flows over the nodes (see [`super::ecmp`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ecmp {
    /// A resilient next-hop group per VIP: a lost node's flows move, and only those.
    Resilient,
    /// BIRD's multipath route, hash-threshold: a lost node also moves some flows between
    /// the survivors.
    Plain,
}

impl Cluster {
    /// `nodes` LB nodes and `backends` backends serving `vips` (floating IP `l2` services in
    /// `config`), everything started: agents ready, BIRD sessions up, the router on
    /// resilient ECMP.
    ///
    /// # Errors
    /// A step of the topology, an agent or a daemon fails.
    pub fn new(
        nodes: usize,
        backends: usize,
        vips: &[Ipv4Addr],
        config: &str,
    ) -> anyhow::Result<Self> {
        Self::with_ecmp(nodes, backends, vips, config, Ecmp::Resilient)
    }

    /// As [`Self::new`], with the router's ECMP chosen.
    ///
    /// # Errors
    /// A step of the topology, an agent or a daemon fails.
    pub fn with_ecmp(
        nodes: usize,
        backends: usize,
        vips: &[Ipv4Addr],
        config: &str,
        ecmp: Ecmp,
    ) -> anyhow::Result<Self> {
        crate::require_root();
        require_bird()?;
        sweep_stale();
        let prefix = unique_prefix();
        let tmp = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&tmp)?;
        let mut c = Self {
            client: Netns::new(&format!("{prefix}-client"))?,
            router: Netns::new(&format!("{prefix}-router"))?,
            sw: Netns::new(&format!("{prefix}-sw"))?,
            nodes: Vec::new(),
            backends: Vec::new(),
            router_bird: None,
            config: config.to_owned(),
            drain: "2s".into(),
            peer_xdp: Vec::new(),
            tmp,
            prefix,
            mirror: None,
            ecmp,
        };
        c.sw.ip(&["link", "add", "br0", "type", "bridge"])?;
        c.sw.ip(&["link", "set", "br0", "up"])?;
        // Client ↔ router.
        c.client
            .ip(&["link", "add", "c0", "type", "veth", "peer", "name", "r0"])?;
        c.client
            .ip(&["link", "set", "r0", "netns", &c.router.name])?;
        c.client
            .ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "c0"])?;
        c.client.ip(&["link", "set", "c0", "up"])?;
        c.client.ip(&["link", "set", "lo", "up"])?;
        c.client
            .ip(&["route", "add", "default", "via", &ROUTER_CLIENT.to_string()])?;
        c.router
            .ip(&["addr", "add", &format!("{ROUTER_CLIENT}/24"), "dev", "r0"])?;
        c.router.ip(&["link", "set", "r0", "up"])?;
        c.router.ip(&["link", "set", "lo", "up"])?;
        c.router.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        c.router
            .exec("sysctl", &["-qw", "net.ipv4.fib_multipath_hash_policy=1"])?;
        let router = c.router.name.clone();
        c.port("rf", &router, "f0", ROUTER_FABRIC)?;
        for i in 1..=nodes {
            let ns = Netns::new(&format!("{}-n{i}", c.prefix))?;
            let addr = Ipv4Addr::new(192, 0, 2, u8::try_from(i)?);
            c.port(&format!("port{i}"), &ns.name, "f0", addr)?;
            // The way to the clients, for replies a node translates (DNAT modes).
            ns.ip(&["route", "add", "default", "via", &ROUTER_FABRIC.to_string()])?;
            // Frames the node's program sends back out of f0 reach the bridge only through
            // a program on its port (veth needs NAPI there; GRO is not enough on a bridge port).
            let p = peer_program(&c.sw, &format!("port{i}"), "xdp_pass")?;
            c.peer_xdp.push(p);
            c.nodes.push(Node {
                socket: c.tmp.join(format!("n{i}.sock")),
                pin_dir: PathBuf::from("/sys/fs/bpf").join(format!("{}-n{i}", c.prefix)),
                ns,
                addr,
                agent: None,
                bird: None,
            });
        }
        for i in 1..=backends {
            let ns = Netns::new(&format!("{}-b{i}", c.prefix))?;
            let ip = Ipv4Addr::new(192, 0, 2, u8::try_from(10 + i)?);
            c.port(&format!("pb{i}"), &ns.name, "eth0", ip)?;
            ns.ip(&["link", "set", "lo", "up"])?;
            ns.ip(&["route", "add", "default", "via", &ROUTER_FABRIC.to_string()])?;
            // Floating IP: the VIPs on the backend's loopback (none for DNAT services).
            if !vips.is_empty() {
                let lb = workspace_bin("lb")?;
                let mut cmd = ns.command(&lb);
                cmd.args(["backend", "setup", "l2", "--iface", "eth0", "--apply"])
                    .arg("--pin-dir")
                    .arg(PathBuf::from("/sys/fs/bpf").join(format!("{}-decap", c.prefix)));
                for v in vips {
                    cmd.args(["--vip", &v.to_string()]);
                }
                output(&mut cmd).with_context(|| format!("lb backend setup l2 in b{i}"))?;
            }
            let mut b = BackendNs {
                ns,
                name: format!("b{i}"),
                ip,
                ip6: None,
                also: vips.iter().copied().map(IpAddr::V4).collect(),
                server: None,
            };
            b.start_server_on(200, &[80], &[53])?;
            c.backends.push(b);
        }
        for i in 0..nodes {
            c.start_node(i)?;
        }
        if ecmp == Ecmp::Resilient {
            c.mirror = Some(Mirror::start(&c.router, "f0")?);
        }
        c.start_router_bird()?;
        Ok(c)
    }

    /// A veth from the switch's bridge (port `port`) to `dev` in namespace `ns`, with `addr`.
    fn port(&self, port: &str, ns: &str, dev: &str, addr: Ipv4Addr) -> anyhow::Result<()> {
        self.sw.ip(&[
            "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns,
        ])?;
        self.sw.ip(&["link", "set", port, "master", "br0"])?;
        self.sw.ip(&["link", "set", port, "up"])?;
        let cidr = format!("{addr}/24");
        for args in [
            &["-n", ns, "addr", "add", &cidr, "dev", dev][..],
            &["-n", ns, "link", "set", dev, "up"],
            // Locally made TCP carries a partial checksum that native XDP cannot complete.
            &["netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"],
        ] {
            output(Command::new("ip").args(args))?;
        }
        Ok(())
    }

    /// Starts node `i`'s agent (waits until it answers with its VIPs' backends in rotation)
    /// and its BIRD.
    ///
    /// # Errors
    /// The agent or BIRD does not start.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let cfg = self.tmp.join("lb.toml");
        std::fs::write(&cfg, &self.config)?;
        let n = &mut self.nodes[i];
        let lb = workspace_bin("lb")?;
        let child =
            n.ns.command(&lb)
                .args(["agent", "--config"])
                .arg(&cfg)
                .args([
                    "--iface",
                    "f0",
                    "--xdp-mode",
                    "native",
                    "--announce-drain",
                    "0s",
                ])
                .arg("--pin-dir")
                .arg(&n.pin_dir)
                .arg("--socket")
                .arg(&n.socket)
                .arg("--state-file")
                .arg(self.tmp.join(format!("n{}.state", i + 1)))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(
                    self.tmp.join(format!("n{}.log", i + 1)),
                )?)
                .spawn()
                .context("lb agent")?;
        n.agent = Some(Daemon(child));
        crate::wait_until(
            &format!("node {} ready", i + 1),
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                n.lb_json(&["status"]).is_ok_and(|s| {
                    s["vips"].as_array().is_some_and(|v| {
                        !v.is_empty()
                            && v.iter()
                                .flat_map(|v| v["backends"].as_array().into_iter().flatten())
                                .all(|b| b["in_rotation"] == true)
                    })
                })
            },
        )?;
        let conf = output(
            Command::new(&lb)
                .args(["bgp", "example", "--config"])
                .arg(&cfg)
                .args(["--router-id", &n.addr.to_string()])
                .args(["--peer", &ROUTER_FABRIC.to_string()])
                .args(["--local-as", &NODE_AS.to_string()])
                .args(["--peer-as", &ROUTER_AS.to_string()]),
        )?;
        let name = format!("n{}", i + 1);
        n.bird = Some(Bird::start(&n.ns, &self.tmp, &name, &conf)?);
        Ok(())
    }

    fn start_router_bird(&mut self) -> anyhow::Result<()> {
        // Resilient: the learned routes go to a table of their own, which the mirror turns
        // into next-hop groups; plain: into the main table, as BIRD's multipath routes.
        let table = match self.ecmp {
            Ecmp::Resilient => format!("kernel table {LEARNED}; "),
            Ecmp::Plain => String::new(),
        };
        let mut conf = format!(
            "log stderr all;\nrouter id {ROUTER_FABRIC};\nprotocol device {{}}\n\
             protocol kernel {{ {table}merge paths on; ipv4 {{ import none; export all; }}; }}\n\
             protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n"
        );
        for n in &self.nodes {
            let _ = writeln!(
                conf,
                "protocol bgp node{} {{ local as {ROUTER_AS}; neighbor {} as {NODE_AS}; bfd on; hold time 9; keepalive time 3; ipv4 {{ import all; export none; }}; }}",
                n.addr.octets()[3],
                n.addr
            );
        }
        self.router_bird = Some(Bird::start(&self.router, &self.tmp, "router", &conf)?);
        Ok(())
    }

    /// Routes the backends' replies to the clients through the nodes: their default route is
    /// the router, and the router sends what comes from a backend over the live nodes, by
    /// the resilient group of `vip`'s route (which BFD and BGP keep to the live nodes). For
    /// DNAT with stateless replies.
    ///
    /// # Errors
    /// A step fails, or the router is on plain ECMP (which has no return path here).
    pub fn return_through_nodes(&mut self, vip: Ipv4Addr) -> anyhow::Result<()> {
        let Some(mirror) = &self.mirror else {
            bail!("the return path through the nodes needs the router's resilient groups");
        };
        mirror.route_back(vip)?;
        self.router.ip(&[
            "rule",
            "add",
            "iif",
            "f0",
            "from",
            "192.0.2.0/24",
            "lookup",
            "100",
            "pref",
            "100",
        ])?;
        // The replies leave by the interface they came in on: no redirects to the backends.
        for k in ["all", "f0"] {
            self.router.exec(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{k}.send_redirects=0")],
            )?;
        }
        Ok(())
    }

    /// A keep-alive HTTP connection from the client's port `sport` to `vip`:80, through the
    /// router.
    ///
    /// # Errors
    /// It cannot be made within the lab's I/O timeout.
    pub fn http_connect(&self, vip: Ipv4Addr, sport: u16) -> anyhow::Result<super::HttpConn> {
        let s = self.client.enter(move || {
            super::clients::connect_from(
                std::net::SocketAddrV4::new(CLIENT, sport),
                std::net::SocketAddr::new(vip.into(), 80),
                super::IO_TIMEOUT,
            )
        })?;
        Ok(super::HttpConn::over(s)?)
    }

    /// The router's next hops for `vip` in its kernel table (the nodes ECMP spreads over).
    ///
    /// # Errors
    /// `ip route` fails.
    pub fn next_hops(&self, vip: Ipv4Addr) -> anyhow::Result<Vec<Ipv4Addr>> {
        let out = self.router.ip(&["route", "show", &format!("{vip}/32")])?;
        let mut v: Vec<Ipv4Addr> = out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Waits (bounded) until the router spreads `vip` over exactly `want`.
    ///
    /// # Errors
    /// It does not within 30 s.
    pub fn wait_next_hops(&self, vip: Ipv4Addr, want: &[Ipv4Addr]) -> anyhow::Result<()> {
        crate::wait_until(
            &format!("the router's next hops for {vip}: {want:?}"),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || self.next_hops(vip).is_ok_and(|h| h == want),
        )
        .with_context(|| match self.mirror.as_ref().map(Mirror::check) {
            Some(Err(e)) => format!("{e:#}"),
            _ => format!("it has {:?}", self.next_hops(vip)),
        })
    }

    /// Stops node `i`'s agent as an operator would (SIGTERM: withdraw, drain, stop) and
    /// waits for it to exit (bounded).
    ///
    /// # Errors
    /// It does not exit within 30 s.
    pub fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        let mut a = self.nodes[i].agent.take().context("not running")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(a.0.id())?, libc::SIGTERM) };
        for _ in 0..600 {
            if a.0.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("node {} ignored SIGTERM for 30 s", i + 1)
    }

    /// Kills node `i` as a crash would: its link down, then `kill -9` of its agent and its
    /// BIRD (the router's BFD notices the silence).
    ///
    /// # Errors
    /// The link cannot be set down.
    pub fn crash(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &mut self.nodes[i];
        // The link first: a killed BIRD's socket would otherwise close its BGP session with
        // a FIN, and the router would learn of the loss from that rather than from BFD.
        n.ns.ip(&["link", "set", "f0", "down"])?;
        n.agent = None;
        n.bird = None;
        Ok(())
    }
}

/// One HTTP GET of `vip`:80 from the client's address and an ephemeral port, made in the
/// calling thread's namespace (run it in the client's, `Netns::spawn_in`): the backend's name.
///
/// # Errors
/// The connection or the exchange fails.
pub fn http_get_here(vip: Ipv4Addr) -> anyhow::Result<String> {
    http_get_here_within(vip, super::IO_TIMEOUT)
}

/// As [`http_get_here`], giving the connect `timeout`.
///
/// # Errors
/// The connection or the exchange fails.
pub fn http_get_here_within(vip: Ipv4Addr, timeout: Duration) -> anyhow::Result<String> {
    let s = super::clients::connect_from(
        std::net::SocketAddrV4::new(CLIENT, 0),
        std::net::SocketAddr::new(vip.into(), 80),
        timeout,
    )?;
    super::HttpConn::over(s)?.get()
}

/// A BIRD daemon in a namespace, in the foreground, its control socket under the directory
/// it was started with; killed (and reaped) when dropped, also when a test fails.
pub struct Bird {
    _daemon: Daemon,
    pub ctl: PathBuf,
}

impl Bird {
    /// Starts BIRD in `ns` with `conf` (written to `dir`).
    ///
    /// # Errors
    /// The file cannot be written or BIRD cannot be started.
    pub fn start(
        ns: &Netns,
        dir: &std::path::Path,
        name: &str,
        conf: &str,
    ) -> anyhow::Result<Self> {
        let file = dir.join(format!("{name}.bird.conf"));
        std::fs::write(&file, conf)?;
        let ctl = dir.join(format!("{name}.ctl"));
        let child = ns
            .command(std::path::Path::new("bird"))
            .arg("-f")
            .arg("-c")
            .arg(&file)
            .arg("-s")
            .arg(&ctl)
            .arg("-P")
            .arg(dir.join(format!("{name}.pid")))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.bird.log")))?)
            .spawn()
            .context("bird (apt-get install bird2; cargo xtask setup does)")?;
        Ok(Self {
            _daemon: Daemon(child),
            ctl,
        })
    }

    /// The IPv4 prefixes in the daemon's `master4` table (host routes without their `/32`).
    #[must_use]
    pub fn routes(&self) -> Vec<String> {
        let Ok(out) = Command::new("birdc")
            .arg("-s")
            .arg(&self.ctl)
            .args(["show", "route", "table", "master4"])
            .output()
        else {
            return Vec::new();
        };
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.contains('/'))
            .map(|w| w.trim_end_matches("/32").to_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.router_bird = None;
        for n in &mut self.nodes {
            n.bird = None;
            if let Some(mut a) = n.agent.take() {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(i32::try_from(a.0.id()).unwrap_or(0), libc::SIGTERM) };
                for _ in 0..100 {
                    if a.0.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = std::fs::remove_dir_all(&n.pin_dir);
        }
        self.peer_xdp.clear();
        let _ = std::fs::remove_dir_all(
            PathBuf::from("/sys/fs/bpf").join(format!("{}-decap", self.prefix)),
        );
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Fails unless `bird` is installed.
///
/// # Errors
/// It is not.
pub fn require_bird() -> anyhow::Result<()> {
    if Command::new("bird").arg("--version").output().is_err() {
        bail!("bird is not installed (apt-get install bird2; cargo xtask setup does)");
    }
    Ok(())
}
