//! Floating IP (direct server return) in the lab: a return-path router that carries the
//! backends' replies to the client without the LB, and the backends set up by the real
//! `lb backend setup --apply`.
//!
//! ```text
//!  client ns                 lb ns                        backend ns i
//!  c0 198.51.100.2 ───────── l0          l_i ──────────── eth0 192.0.2.1i  (VIPs on lo)
//!  c1 203.0.113.249/30 ─┐                                 eth1 203.0.113.(130+4i)/30
//!                       │    return ns                      │  default route: the router
//!                       └─── r0 203.0.113.250/30            │
//!                            r_i 203.0.113.(129+4i)/30 ─────┘
//! ```
//!
//! The client sends to the VIPs through the LB (its route 203.0.113.0/24), the backends
//! answer from the VIPs through the router: the LB sees only the forward direction.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, bail};

use super::{Lab, harden_veth, workspace_bin};
use crate::netns::{Netns, output};

/// The client's address on the return-path link.
pub const CLIENT_RETURN_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 249);
/// The router's address towards the client.
pub const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 250);

/// The router's and backend `i`'s addresses on their link (a /30 each).
#[must_use]
pub fn return_link(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let base = 128 + 4 * u8::try_from(i).expect("few backends");
    (
        Ipv4Addr::new(203, 0, 113, base + 1),
        Ipv4Addr::new(203, 0, 113, base + 2),
    )
}

impl Lab {
    /// Adds the return-path router (after the backends, before the agent): a link to the
    /// client and one to each backend, whose default route then goes through it.
    ///
    /// # Errors
    /// A setup step fails.
    pub fn add_return_path(&mut self) -> anyhow::Result<()> {
        let rr = Netns::new(&format!("{}-ret", self.prefix))?;
        rr.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        rr.ip(&[
            "link",
            "add",
            "r0",
            "type",
            "veth",
            "peer",
            "name",
            "c1",
            "netns",
            &self.client.name,
        ])?;
        rr.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_CLIENT_SIDE}/30"),
            "dev",
            "r0",
        ])?;
        rr.ip(&["link", "set", "r0", "up"])?;
        self.client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_RETURN_IP}/30"),
            "dev",
            "c1",
        ])?;
        self.client.ip(&["link", "set", "c1", "up"])?;
        // Replies from the VIPs arrive on c1 while the route to the VIPs leaves by c0: an
        // asymmetric path, which strict reverse-path filtering would drop.
        for k in ["all", "default", "c1"] {
            self.client.exec(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{k}.rp_filter=0")],
            )?;
        }
        rr.ip(&[
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            &CLIENT_RETURN_IP.to_string(),
        ])?;
        harden_veth(&rr, "r0")?;
        harden_veth(&self.client, "c1")?;
        for (idx, b) in self.backends.iter().enumerate() {
            let i = idx + 1;
            let (r, own) = return_link(i);
            let dev = format!("r{i}");
            rr.ip(&[
                "link", "add", &dev, "type", "veth", "peer", "name", "eth1", "netns", &b.ns.name,
            ])?;
            rr.ip(&["addr", "add", &format!("{r}/30"), "dev", &dev])?;
            rr.ip(&["link", "set", &dev, "up"])?;
            b.ns.ip(&["addr", "add", &format!("{own}/30"), "dev", "eth1"])?;
            b.ns.ip(&["link", "set", "eth1", "up"])?;
            b.ns.ip(&["route", "replace", "default", "via", &r.to_string()])?;
            harden_veth(&rr, &dev)?;
            harden_veth(&b.ns, "eth1")?;
        }
        self.return_path = Some(rr);
        Ok(())
    }

    /// Runs `lb backend setup|teardown MODE --vip … --iface eth0 --apply` in backend `i`'s
    /// namespace (1-based), its pins under the lab's pin directory; returns its output.
    ///
    /// # Errors
    /// The command fails.
    pub fn backend_setup(
        &self,
        i: usize,
        what: &str,
        mode: &str,
        vips: &[IpAddr],
    ) -> anyhow::Result<String> {
        let b = self.backends.get(i - 1).context("no such backend")?;
        let lb = workspace_bin("lb")?;
        let mut cmd = b.ns.command(&lb);
        cmd.args(["backend", what, mode, "--iface", "eth0", "--apply"])
            .arg("--pin-dir")
            .arg(self.decap_pin_dir());
        for v in vips {
            cmd.args(["--vip", &v.to_string()]);
        }
        output(&mut cmd).with_context(|| format!("lb backend {what} {mode} in b{i}"))
    }

    /// Where the backends' decapsulation programs are pinned (removed with the lab).
    #[must_use]
    pub fn decap_pin_dir(&self) -> std::path::PathBuf {
        self.pin_dir.join("decap")
    }

    /// The return-path router's packet counters towards the client: (rx, tx) of `r0`.
    ///
    /// # Errors
    /// No return path, or the counters cannot be read.
    pub fn return_path_packets(&self) -> anyhow::Result<(u64, u64)> {
        let rr = self.return_path.as_ref().context("no return path")?;
        let read = |what: &str| -> anyhow::Result<u64> {
            let v = rr.exec(
                "cat",
                &[&format!("/sys/class/net/r0/statistics/{what}_packets")],
            )?;
            Ok(v.trim().parse()?)
        };
        Ok((read("rx")?, read("tx")?))
    }
}

/// Asks "who has `target`?" on `dev` of `ns` (an ARP request from `sender`, broadcast) and
/// returns the MAC of the first answer within one second, if any: whether a neighbour claims
/// an address on the link.
///
/// # Errors
/// The packet socket cannot be made or used.
pub fn arp_who_has(
    ns: &Netns,
    dev: &str,
    sender: Ipv4Addr,
    target: Ipv4Addr,
) -> anyhow::Result<Option<[u8; 6]>> {
    let ifindex = ns.ifindex(dev)?;
    let mac = ns.mac(dev)?;
    ns.enter(move || arp_exchange(ifindex, mac, sender, target))
}

fn arp_exchange(
    ifindex: u32,
    mac: [u8; 6],
    sender: Ipv4Addr,
    target: Ipv4Addr,
) -> anyhow::Result<Option<[u8; 6]>> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    const ETH_P_ARP: u16 = 0x0806;
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = i32::try_from(ifindex)?;
    // SAFETY: a valid socket and address of the right length.
    let rc = unsafe {
        libc::bind(
            raw,
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("bind: {}", std::io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: a valid socket and timeval.
    let rc = unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // Without the timeout a silent link would block the receive below for ever.
    if rc != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    // SAFETY: a valid socket and buffer.
    if unsafe { libc::send(raw, f.as_ptr().cast(), f.len(), 0) } < 0 {
        bail!("send: {}", std::io::Error::last_os_error());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut buf = [0u8; 128];
    while std::time::Instant::now() < deadline {
        // SAFETY: a valid socket and buffer.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            break; // the receive timeout
        };
        // An ARP reply (opcode 2) whose sender address is the target.
        if n >= 42
            && buf[12..14] == ETH_P_ARP.to_be_bytes()
            && buf[20..22] == [0, 2]
            && buf[28..32] == target.octets()
        {
            let mut m = [0u8; 6];
            m.copy_from_slice(&buf[22..28]);
            return Ok(Some(m));
        }
    }
    Ok(None)
}
