//! The lab: a client namespace, an LB namespace running `lb agent`, and backend namespaces
//! running `lb-labd` (HTTP and UDP echo). Used by the demo, the end-to-end tests and the
//! benchmark. The rooms: the topology (here), the agent and its CLI (`agent.rs`), the backends'
//! servers (`servers.rs`), the clients (`clients.rs`), ICMP helpers (`icmp.rs`).
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
//!
//! The lab is dual stack: the same links also carry IPv6, with the client 2001:db8:1::2
//! (LB 2001:db8:1::1), backend `i` 2001:db8:2::1`i` (LB 2001:db8:2::1 on every backend link),
//! and the IPv6 VIP 2001:db8:3::10 routed by the client via the LB, which again has no route
//! for it. Addresses are added without duplicate address detection (`nodad`), so they are
//! usable at once.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

mod agent;
mod clients;
pub mod cluster;
pub mod dsr;
pub mod ecmp;
mod icmp;
mod servers;

use self::agent::Agent;
pub use self::{
    clients::{ConnStream, HttpConn, StreamTally},
    icmp::{icmp_socket, icmp6_socket, ping, ping6, recv_icmp, recv_icmp6, send_icmp, send_icmp6},
    servers::BackendNs,
};
use crate::netns::{Netns, sweep_stale, unique_prefix};

pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const LB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const LB_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The IPv6 VIP, the client's IPv6 address and the LB's on both sides.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x10);
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const LB_CLIENT_SIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
pub const LB_BACKEND_SIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The outside host of [`Lab::add_outside`].
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
/// How long one request may take before it counts as failed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Backend `i` (1-based) has address 192.0.2.(10 + i).
#[must_use]
pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + u8::try_from(i).expect("few backends"))
}

/// Backend `i` (1-based) has IPv6 address 2001:db8:2::1`i` (hex).
#[must_use]
pub fn backend_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        2,
        0,
        0,
        0,
        0,
        0x10 + u16::try_from(i).expect("few backends"),
    )
}

/// The config the demo runs on: one VIP per family, tcp/80 and udp/53 each, over three
/// backends (each with an address of both families).
pub const DEMO_CONFIG: &str = r#"# The demo's embedded default: one VIP per family with tcp/80 and udp/53 over three backends.
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

# The same over IPv6: the backends' IPv6 addresses, probed over IPv6.
[[service]]
vip = "[2001:db8:3::10]:80/tcp"
backends = ["2001:db8:2::11", "2001:db8:2::12", "2001:db8:2::13"]
probe = "http/healthz"
probe_interval = "2s"

[[service]]
vip = "[2001:db8:3::10]:53/udp"
backends = ["2001:db8:2::11", "2001:db8:2::12", "2001:db8:2::13"]
probe = "tcp:80"
probe_interval = "2s"
"#;

/// A binary of this workspace next to the running executable (`target/<profile>/NAME`), or
/// from `$LB_BIN_DIR`.
///
/// # Errors
/// The binary is not built.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("LB_BIN_DIR") {
        PathBuf::from(d)
    } else {
        let exe = std::env::current_exe()?;
        let mut dir = exe.parent().context("exe dir")?.to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        dir
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

/// The whole lab. Dropping it stops the agent (SIGTERM, then SIGKILL), the servers, deletes
/// the namespaces, pins and temp files.
pub struct Lab {
    pub prefix: String,
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<BackendNs>,
    /// A second client namespace on its own LB interface (`lx`): 198.51.100.129/25.
    pub external: Option<Netns>,
    /// The outside, for outbound NAT: a host on the client side (LB interface `lw`), running
    /// `lb-labd` (its HTTP answers name the peer it saw): [`OUTSIDE_IP`].
    pub outside: Option<BackendNs>,
    /// The return-path router of floating-IP tests ([`Lab::add_return_path`]).
    pub return_path: Option<Netns>,
    pub pin_dir: PathBuf,
    pub tmp: PathBuf,
    pub socket: PathBuf,
    agent: Option<Agent>,
    /// The log of the last agent that was stopped or killed (its reader may still be adding
    /// the last lines).
    last_log: std::sync::Arc<std::sync::Mutex<String>>,
    /// Programs on the far ends of veth pairs (see [`peer_program`]), detached on drop. The
    /// lab itself attaches none: the peers have GRO on, which is what veth needs to deliver
    /// the LB's frames, and the agent redirects where `XDP_TX` would wait (`--xdp-tx auto`).
    /// The benchmark adds its sink programs here.
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
            outside: None,
            return_path: None,
            agent: None,
            last_log: std::sync::Arc::default(),
            peer_xdp: Vec::new(),
        };
        let lbn = lab.lb.name.clone();
        lab.lb.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        lab.lb
            .exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        // Client side.
        lab.client.ip(&[
            "link", "add", "c0", "type", "veth", "peer", "name", "l0", "netns", &lbn,
        ])?;
        lab.client
            .ip(&["addr", "add", &format!("{CLIENT_IP}/24"), "dev", "c0"])?;
        lab.client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_IP6}/64"),
            "dev",
            "c0",
            "nodad",
        ])?;
        lab.client.ip(&["link", "set", "c0", "up"])?;
        lab.client.ip(&[
            "route",
            "add",
            "203.0.113.0/24",
            "via",
            &LB_CLIENT_SIDE.to_string(),
        ])?;
        lab.client.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:3::/64",
            "via",
            &LB_CLIENT_SIDE6.to_string(),
        ])?;
        lab.lb
            .ip(&["addr", "add", &format!("{LB_CLIENT_SIDE}/24"), "dev", "l0"])?;
        lab.lb.ip(&[
            "addr",
            "add",
            &format!("{LB_CLIENT_SIDE6}/64"),
            "dev",
            "l0",
            "nodad",
        ])?;
        lab.lb.ip(&["link", "set", "l0", "up"])?;
        // The client side stands in for the LB's upstream router: replies to any client go
        // to it, through one gateway route the agent resolves at start.
        lab.lb
            .ip(&["route", "add", "default", "via", &CLIENT_IP.to_string()])?;
        lab.lb.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &CLIENT_IP6.to_string(),
        ])?;
        // Frames XDP redirects into a veth land on its peer only if the peer has NAPI (GRO on);
        // locally made TCP/UDP on veth has partial checksums that native XDP cannot finish,
        // so senders compute checksums in software (tx off). Real NICs need neither, and no
        // peer runs an XDP program: the agent must work without one.
        harden_veth(&lab.client, "c0")?;
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
        let ip6 = backend_ip6(i);
        self.lb
            .ip(&["addr", "add", &format!("{LB_BACKEND_SIDE}/32"), "dev", &dev])?;
        self.lb.ip(&[
            "addr",
            "add",
            &format!("{LB_BACKEND_SIDE6}/128"),
            "dev",
            &dev,
            "nodad",
        ])?;
        self.lb.ip(&["link", "set", &dev, "up"])?;
        self.lb
            .ip(&["route", "add", &format!("{ip}/32"), "dev", &dev])?;
        self.lb
            .ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", &dev])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &LB_BACKEND_SIDE.to_string(),
        ])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &LB_BACKEND_SIDE6.to_string(),
            "dev",
            "eth0",
        ])?;
        harden_veth(&ns, "eth0")?;
        harden_veth(&self.lb, &dev)?;
        let mut b = BackendNs {
            ns,
            name,
            ip,
            ip6: Some(ip6),
            also: Vec::new(),
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
        if self.outside.is_some() {
            v.push("lw".to_owned());
        }
        v
    }

    /// Adds the outside (before the agent starts): [`OUTSIDE_IP`]/26 behind the LB's `lw`
    /// (198.51.100.193/26), serving HTTP on 80 and 8080 and UDP echo on 53. The LB learns its
    /// neighbour first, as it would from any traffic, so the fast path's FIB lookup finds it.
    ///
    /// # Errors
    /// A setup step fails, or the server does not start.
    pub fn add_outside(&mut self) -> anyhow::Result<()> {
        let ns = Netns::new(&format!("{}-out", self.prefix))?;
        self.lb.ip(&[
            "link", "add", "lw", "type", "veth", "peer", "name", "w0", "netns", &ns.name,
        ])?;
        self.lb
            .ip(&["addr", "add", "198.51.100.193/26", "dev", "lw"])?;
        self.lb.ip(&["link", "set", "lw", "up"])?;
        ns.ip(&["addr", "add", &format!("{OUTSIDE_IP}/26"), "dev", "w0"])?;
        ns.ip(&["link", "set", "w0", "up"])?;
        ns.ip(&["route", "add", "default", "via", "198.51.100.193"])?;
        harden_veth(&ns, "w0")?;
        harden_veth(&self.lb, "lw")?;
        let mut out = BackendNs {
            ns,
            name: "outside".into(),
            ip: OUTSIDE_IP,
            ip6: None,
            also: Vec::new(),
            server: None,
        };
        out.start_server_on(200, &[80, 8080], &[53])?;
        // One UDP echo from the LB itself: its answer means the neighbour is resolved.
        self.lb.enter(|| -> anyhow::Result<()> {
            let s = std::net::UdpSocket::bind("198.51.100.193:0")?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.send_to(b"hello", (OUTSIDE_IP, 53))?;
            let mut buf = [0u8; 64];
            s.recv_from(&mut buf).context("no echo from the outside")?;
            Ok(())
        })?;
        self.outside = Some(out);
        Ok(())
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
        self.external = Some(ns);
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.agent.is_some() {
            let _ = self.stop_agent();
        }
        self.backends.clear();
        self.outside = None;
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Attaches baseline program `program` (native mode) to `dev` in `ns`, for as long as the
/// returned value lives: the benchmark's sinks. (veth delivers an `XDP_TX` frame by queueing
/// it on the peer and kicking the peer's NAPI only if the peer has an XDP program; without one
/// the frame waits until the next packet arrives. The agent therefore redirects such frames
/// on veth, and the lab needs no program on its peers.)
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

/// Removes a directory tree if it exists (for pin dirs).
pub fn remove_tree(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}
