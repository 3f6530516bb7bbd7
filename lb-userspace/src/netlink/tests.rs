//! These tests need root: each builds its own pair of network namespaces
//! (`ip netns add`), connected by a veth pair, and runs the client from a
//! thread that `setns()`ed into one of them, so the host's network is
//! never touched. Run with `cargo test -- --test-threads=1`.

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use super::*;

/// A next hop as the tests compare it: (ifindex, own MAC, neighbour MAC).
type NextHop = (u32, [u8; 6], [u8; 6]);

fn tuple(h: Option<crate::reconcile::Hop>) -> Option<NextHop> {
    h.map(|h| (h.nh.ifindex, h.nh.smac, h.nh.dmac))
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

const A_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const B_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// Deletes the namespaces it holds on drop, also when a test panics.
struct NetnsGuard(Vec<String>);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `ip ARGS`, panicking with its stderr on failure; returns stdout.
fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// `ns` holds veth `a` (192.0.2.1/24, 2001:db8::1/64) with routes
/// 198.51.100.0/24 via 192.0.2.2, 2001:db8:1::/64 via 2001:db8::2 and
/// blackhole 203.0.113.0/25; `peer` holds veth `b` (192.0.2.2/24,
/// 2001:db8::2/64).
struct Topology {
    guard: NetnsGuard,
    ifindex_a: u32,
    mac_a: [u8; 6],
    mac_b: [u8; 6],
}

impl Topology {
    fn new() -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let base = format!("lbnl-test-{}-{id}", std::process::id());
        let ns = format!("{base}a");
        let peer = format!("{base}b");
        let mut guard = NetnsGuard(Vec::new());
        for name in [&ns, &peer] {
            ip(&["netns", "add", name]);
            guard.0.push(name.clone());
            // No duplicate address detection: link-local addresses are
            // usable as soon as the link is, which keeps the tests fast.
            let output = Command::new("ip")
                .args(["netns", "exec", name, "sysctl", "-qw"])
                .args([
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ])
                .output()
                .expect("run sysctl");
            assert!(output.status.success(), "sysctl: {output:?}");
        }
        let batch = format!(
            "link add name a type veth peer name b netns {peer}
             link set lo up
             addr add 192.0.2.1/24 dev a
             addr add 2001:db8::1/64 dev a nodad
             link set dev a up"
        );
        run_batch(&ns, &batch);
        run_batch(
            &peer,
            "link set lo up
             addr add 192.0.2.2/24 dev b
             addr add 2001:db8::2/64 dev b nodad
             link set dev b up",
        );
        run_batch(
            &ns,
            "route add 198.51.100.0/24 via 192.0.2.2
             route add blackhole 203.0.113.0/25
             route add 2001:db8:1::/64 via 2001:db8::2",
        );
        wait_ipv6_ready(&ns, "a");
        wait_ipv6_ready(&peer, "b");
        let (ifindex_a, mac_a) = link_info(&ns, "a");
        let (_, mac_b) = link_info(&peer, "b");
        Self {
            guard,
            ifindex_a,
            mac_a,
            mac_b,
        }
    }

    fn ns(&self) -> &str {
        &self.guard.0[0]
    }

    /// Runs `f` on a thread that has entered the first namespace, and
    /// re-raises its panic so the test fails with the original message.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns());
        let handle = thread::spawn(move || {
            let file = File::open(&path).expect("open netns file");
            // SAFETY: a valid netns fd; CLONE_NEWNET only switches the
            // network namespace of this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            f()
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Waits (bounded, 5 s) until `dev` has a usable (non-tentative)
/// link-local address. The kernel adds it only when the link-up event
/// reaches addrconf via linkwatch (up to ~1 s after `link set up`), and
/// without it `ndisc_send_ns()` silently sends nothing, so an IPv6
/// resolution started earlier would only progress at the next retransmit
/// (1 s later).
fn wait_ipv6_ready(ns: &str, dev: &str) {
    for _ in 0..100 {
        let addrs = ip(&[
            "-n",
            ns,
            "-6",
            "addr",
            "show",
            "dev",
            dev,
            "scope",
            "link",
            "-tentative",
        ]);
        if !addrs.trim().is_empty() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("IPv6 link-local on {dev} in {ns} not ready after 5 s");
}

/// `ip -n NS -batch -` with one command per line.
fn run_batch(ns: &str, commands: &str) {
    let script: String = commands.lines().flat_map(|l| [l.trim(), "\n"]).collect();
    run_batch_script(ns, &script);
}

fn run_batch_script(ns: &str, script: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write batch");
    let output = child.wait_with_output().expect("wait ip -batch");
    assert!(
        output.status.success(),
        "ip -n {ns} -batch: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// (ifindex, MAC) from `ip -j link show`, parsed just enough.
fn link_info(ns: &str, dev: &str) -> (u32, [u8; 6]) {
    let json = ip(&["-n", ns, "-j", "link", "show", "dev", dev]);
    let field = |name: &str| {
        let key = format!("\"{name}\":");
        let start = json.find(&key).expect("field present") + key.len();
        json[start..]
            .split([',', '}'])
            .next()
            .expect("value")
            .trim_matches('"')
            .to_owned()
    };
    let ifindex = field("ifindex").parse().expect("ifindex");
    let mut mac = [0u8; 6];
    let text = field("address");
    let octets: Vec<&str> = text.split(':').collect();
    assert_eq!(octets.len(), 6, "address {text}");
    for (byte, octet) in mac.iter_mut().zip(octets) {
        *byte = u8::from_str_radix(octet, 16).expect("hex octet");
    }
    (ifindex, mac)
}

/// Polls `next_hop` (bounded: 50 × 20 ms) until it returns a hop.
fn poll_next_hop(nl: &mut Netlink, dst: IpAddr) -> Option<NextHop> {
    for _ in 0..50 {
        if let Some(hop) = tuple(nl.next_hop(dst).expect("next_hop")) {
            return Some(hop);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn neighbour_validity() {
    let mut n = Neighbour {
        ifindex: 1,
        ip: A_V4.into(),
        mac: Some([2, 0, 0, 0, 0, 1]),
        state: libc::NUD_STALE,
    };
    assert!(n.is_valid());
    n.state = libc::NUD_FAILED;
    assert!(!n.is_valid());
    n.state = libc::NUD_INCOMPLETE;
    assert!(!n.is_valid());
    n.state = libc::NUD_REACHABLE;
    n.mac = None;
    assert!(!n.is_valid());
}

#[test]
fn route_get() {
    let topo = Topology::new();
    let ifindex_a = topo.ifindex_a;
    topo.run(move || {
        let mut nl = Netlink::open().expect("open");

        let connected = nl
            .route_get(B_V4.into())
            .expect("route_get")
            .expect("route");
        assert_eq!(connected.oif, ifindex_a);
        assert_eq!(connected.gateway, None);
        assert_eq!(connected.prefsrc, Some(A_V4.into()));

        let via = nl
            .route_get(Ipv4Addr::new(198, 51, 100, 7).into())
            .expect("route_get")
            .expect("route");
        assert_eq!(via.oif, ifindex_a);
        assert_eq!(via.gateway, Some(B_V4.into()));

        let via6 = nl
            .route_get("2001:db8:1::7".parse().expect("addr"))
            .expect("route_get")
            .expect("route");
        assert_eq!(via6.oif, ifindex_a);
        assert_eq!(via6.gateway, Some(B_V6.into()));

        // No default route: unreachable. Blackhole: no next hop either.
        for dst in ["203.0.113.200", "203.0.113.1", "2001:db8:2::1"] {
            let dst: IpAddr = dst.parse().expect("addr");
            assert_eq!(nl.route_get(dst).expect("route_get"), None, "{dst}");
        }
        // Own address: a local route, not a next hop.
        assert_eq!(nl.route_get(A_V4.into()).expect("route_get"), None);
    });
}

#[test]
fn routes_dump() {
    let topo = Topology::new();
    // Enough routes to need many datagrams, so the multipart path and
    // NLMSG_DONE handling are exercised.
    let script = (0..1000).fold(String::new(), |mut s, i| {
        use std::fmt::Write as _;
        let _ = writeln!(s, "route add 2001:db8:2:{i:x}::/64 via 2001:db8::2");
        s
    });
    run_batch_script(topo.ns(), &script);
    let ifindex_a = topo.ifindex_a;
    topo.run(move || {
        let mut nl = Netlink::open().expect("open");
        let routes = nl.routes().expect("routes");
        let expect = [
            Route {
                dst: Ipv4Addr::new(198, 51, 100, 0).into(),
                prefix_len: 24,
                oif: Some(ifindex_a),
                gateway: Some(B_V4.into()),
            },
            Route {
                dst: Ipv4Addr::new(192, 0, 2, 0).into(),
                prefix_len: 24,
                oif: Some(ifindex_a),
                gateway: None,
            },
            Route {
                dst: "2001:db8:1::".parse().expect("addr"),
                prefix_len: 64,
                oif: Some(ifindex_a),
                gateway: Some(B_V6.into()),
            },
            Route {
                dst: "2001:db8:2:3e7::".parse().expect("addr"),
                prefix_len: 64,
                oif: Some(ifindex_a),
                gateway: Some(B_V6.into()),
            },
        ];
        for route in expect {
            assert!(routes.contains(&route), "{route:?} missing from {routes:?}");
        }
        let many = routes
            .iter()
            .filter(|r| matches!(r.dst, IpAddr::V6(v6) if v6.segments()[..3] == [0x2001, 0xdb8, 2]))
            .count();
        assert_eq!(many, 1000);
        // Blackhole (no next hop) and local-table routes are not listed.
        assert!(
            !routes
                .iter()
                .any(|r| r.dst == IpAddr::from(Ipv4Addr::new(203, 0, 113, 0)))
        );
        assert!(!routes.iter().any(|r| r.dst == IpAddr::from(A_V4)));
    });
}

/// A hop carries its link's MTU, or its route's if that is smaller: what the "too big"
/// answers of encapsulating services give.
#[test]
fn next_hop_mtu() {
    let topo = Topology::new();
    let ns = topo.ns().to_owned();
    run_batch(
        &ns,
        "link set dev a mtu 1400
         route add 198.51.100.128/25 via 192.0.2.2 mtu 1300
         route add 203.0.113.128/25 via 192.0.2.2 mtu 9000",
    );
    topo.run(move || {
        let mut nl = Netlink::open().expect("open");
        let mtu = |nl: &mut Netlink, dst: Ipv4Addr| {
            for _ in 0..50 {
                if let Some(hop) = nl.next_hop(dst.into()).expect("next_hop") {
                    return hop.mtu;
                }
                thread::sleep(Duration::from_millis(20));
            }
            panic!("{dst} never resolved");
        };
        assert_eq!(mtu(&mut nl, B_V4), 1400, "the link's");
        assert_eq!(
            mtu(&mut nl, Ipv4Addr::new(198, 51, 100, 200)),
            1300,
            "the route's"
        );
        assert_eq!(
            mtu(&mut nl, Ipv4Addr::new(203, 0, 113, 200)),
            1400,
            "a route's MTU above the link's does not apply"
        );
    });
}

#[test]
fn link_mac() {
    let topo = Topology::new();
    let (ifindex_a, mac_a) = (topo.ifindex_a, topo.mac_a);
    topo.run(move || {
        let mut nl = Netlink::open().expect("open");
        assert_eq!(nl.link_mac(ifindex_a).expect("link_mac"), Some(mac_a));
        // Loopback has an all-zero 6-byte address.
        assert_eq!(nl.link_mac(1).expect("link_mac"), Some([0; 6]));
        // With the MTUs: veth's default, loopback's.
        assert_eq!(
            nl.link_info(ifindex_a).expect("link_info"),
            (Some(mac_a), 1500)
        );
        assert_eq!(nl.link_info(1).expect("link_info"), (Some([0; 6]), 65536));
        let err = nl.link_mac(999_999).expect_err("no such link");
        assert_eq!(err.kernel_errno(), Some(libc::ENODEV), "{err:?}");
        assert!(matches!(
            err,
            NetlinkError::Kernel {
                request: Request::LinkGet(999_999),
                ..
            }
        ));
    });
}

#[test]
fn next_hop_resolves() {
    let topo = Topology::new();
    let (ifindex_a, mac_a, mac_b) = (topo.ifindex_a, topo.mac_a, topo.mac_b);
    let ns = topo.ns().to_owned();
    topo.run(move || {
        let mut nl = Netlink::open().expect("open");
        let expected = Some((ifindex_a, mac_a, mac_b));

        // Nothing has talked to 192.0.2.2 yet: the first call triggers
        // resolution (or, if something did, already succeeds).
        let first = tuple(nl.next_hop(B_V4.into()).expect("next_hop"));
        assert!(first.is_none() || first == expected, "{first:?}");
        assert_eq!(poll_next_hop(&mut nl, B_V4.into()), expected);

        // Via the gateway: same hop.
        assert_eq!(
            poll_next_hop(&mut nl, Ipv4Addr::new(198, 51, 100, 7).into()),
            expected
        );
        // IPv6, through neighbour discovery.
        assert_eq!(
            poll_next_hop(&mut nl, "2001:db8:1::7".parse().expect("addr")),
            expected
        );

        // A STALE entry is still a usable hop, and next_hop nudges the
        // kernel to re-confirm it (STALE -> DELAY -> PROBE/REACHABLE).
        let mac_b_text = mac_b.map(|b| format!("{b:02x}")).join(":");
        ip(&[
            "-n",
            &ns,
            "neigh",
            "change",
            "192.0.2.2",
            "dev",
            "a",
            "lladdr",
            &mac_b_text,
            "nud",
            "stale",
        ]);
        let stale = nl.neighbour(ifindex_a, B_V4.into()).expect("neighbour");
        assert_eq!(stale.map(|n| n.state), Some(libc::NUD_STALE));
        assert_eq!(tuple(nl.next_hop(B_V4.into()).expect("next_hop")), expected);
        let nudged = nl.neighbour(ifindex_a, B_V4.into()).expect("neighbour");
        assert!(
            nudged.is_some_and(|n| n.state & (libc::NUD_DELAY | libc::NUD_REACHABLE) != 0),
            "{nudged:?}"
        );

        let neighbours = nl.neighbours().expect("neighbours");
        for ip in [IpAddr::from(B_V4), IpAddr::from(B_V6)] {
            let entry = neighbours
                .iter()
                .find(|n| n.ip == ip && n.ifindex == ifindex_a)
                .unwrap_or_else(|| panic!("{ip} missing from {neighbours:?}"));
            assert_eq!(entry.mac, Some(mac_b));
            assert!(entry.is_valid(), "{entry:?}");
            // Learned, not administratively set.
            assert_eq!(entry.state & libc::NUD_PERMANENT, 0, "{entry:?}");
        }

        // Unreachable destination: no hop.
        let none = nl
            .next_hop(Ipv4Addr::new(203, 0, 113, 200).into())
            .expect("next_hop");
        assert_eq!(none, None);
    });
}

#[test]
fn resolving_a_silent_host_creates_no_permanent_entry() {
    let topo = Topology::new();
    let ifindex_a = topo.ifindex_a;
    topo.run(move || {
        let mut nl = Netlink::open().expect("open");
        let silent: IpAddr = Ipv4Addr::new(192, 0, 2, 99).into();
        assert_eq!(nl.neighbour(ifindex_a, silent).expect("neighbour"), None);
        assert_eq!(nl.next_hop(silent).expect("next_hop"), None);

        let entry = nl
            .neighbour(ifindex_a, silent)
            .expect("neighbour")
            .expect("entry created by NTF_USE");
        assert_ne!(
            entry.state & (libc::NUD_INCOMPLETE | libc::NUD_FAILED),
            0,
            "{entry:?}"
        );
        assert_eq!(entry.state & libc::NUD_PERMANENT, 0, "{entry:?}");
        assert!(!entry.is_valid());

        // Resolving again while INCOMPLETE is harmless and still no hop.
        nl.resolve_neighbour(ifindex_a, silent).expect("resolve");
        assert_eq!(nl.next_hop(silent).expect("next_hop"), None);
    });
}
