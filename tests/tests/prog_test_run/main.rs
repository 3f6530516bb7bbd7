//! Real packets through the real XDP object with `BPF_PROG_TEST_RUN`: for each input frame,
//! the expected action, the exact output bytes and the verdict counter.
//!
//! Maps are provisioned through the agent's own reconciler (with a fixed next-hop resolver, so
//! output MACs are known). Each test runs in a fresh network namespace, so the
//! `bpf_fib_lookup` fallback sees only the routes the test sets up.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
};

use lb_common::{
    addr,
    flow::{FlowKey4, proto},
    hash::flow_hash,
    maglev::{TableBackend, build_table, slot},
    maps::{HAIRPIN_PORT_TRIES, hairpin_port},
    verdict::{ALL_REASONS, Reason},
};
use lb_integration::{
    coarse_now_s,
    fixture::{
        FixedResolver, Harness, LO, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, in_fresh_ns, nh,
        pin_dir,
    },
    netns::Netns,
    packet::{
        CLIENT_MAC, Frame, L4, LB_MAC, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG, hex,
    },
};
use lb_userspace::{
    api::{Query, Request, Response},
    dataplane::{Dataplane, LoadOptions},
    state::Command,
};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000);
const B1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const B2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const B1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const B2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const B3_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];
const FIB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x14];
/// The HA-ports VIP's backends, and its exact 22/tcp service's.
const HA_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 40);
const HA1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 16);
const HA2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 17);
const SSH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 18);
const HA1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x16];
const HA2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x17];
const SSH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x18];
const TABLE: u32 = 251;

const CONFIG: &str = r#"
[agent]
ring_slots = 8192
conntrack_flows = 4096

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12:8080"]
table_size = 251

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11"]
table_size = 251

[[service]]
vip = "203.0.113.10:443/tcp"
table_size = 251

# One backend reached through another device (XDP_REDIRECT).
[[service]]
vip = "203.0.113.10:8443/tcp"
backends = ["192.0.2.13"]
table_size = 251

# Backends the agent has not resolved: the FIB fallback finds .14, nothing finds .15.
[[service]]
vip = "203.0.113.10:9000/tcp"
backends = ["192.0.2.14"]
table_size = 251

[[service]]
vip = "203.0.113.10:9001/tcp"
backends = ["192.0.2.15"]
table_size = 251

# An endpoint ACL: permit the client /26, deny the rest of its /24; others are denied by
# default (a permit rule exists).
[[service]]
vip = "203.0.113.10:8080/tcp"
backends = ["192.0.2.11"]
table_size = 251
acl = [
  { order = 10, action = "permit", prefix = "198.51.100.0/26" },
  { order = 20, action = "deny", prefix = "198.51.100.0/24" },
]

# An ACL whose last rule is 0.0.0.0/0: that rule, not the default verdict, decides every
# other source (in the IPv4 map the two would be one key).
[[service]]
vip = "203.0.113.10:8081/tcp"
backends = ["192.0.2.11"]
table_size = 251
acl = [
  { order = 10, action = "deny", prefix = "198.51.100.64/26" },
  { order = 20, action = "permit", prefix = "0.0.0.0/0" },
]

# An internal VIP open to every IPv4 source: its 0.0.0.0/0 permit, not the source set's
# default deny, decides.
[[service]]
vip = "203.0.113.22:80/tcp"
backends = ["192.0.2.11"]
table_size = 251
internal = ["0.0.0.0/0"]

# An internal VIP: only 198.51.100.0/26 may reach it; its backend connecting to it is hairpin.
[[service]]
vip = "203.0.113.20:80/tcp"
backends = ["192.0.2.11"]
table_size = 251
internal = ["198.51.100.0/26"]

# Hairpin SNAT: 192.0.2.11 backs 50001/tcp of this internal VIP and connects to its 80/tcp,
# which 192.0.2.12:8080 serves; 50001 also lies in the SNAT port range, which must skip it.
[[service]]
vip = "203.0.113.21:80/tcp"
backends = ["192.0.2.12:8080"]
table_size = 251
internal = ["198.51.100.0/26"]
hairpin = "snat"

[[service]]
vip = "203.0.113.21:50001/tcp"
backends = ["192.0.2.11"]
table_size = 251
internal = ["198.51.100.0/26"]
hairpin = "snat"

# One backend endpoint of one service, without a PIP: replies are matched through its
# reverse-service entry alone.
[[service]]
vip = "203.0.113.10:82/tcp"
backends = ["192.0.2.12:8082"]
table_size = 251

# Stateless replies: every packet from 192.0.2.12:8444 is a reply, except to the LB itself.
[[service]]
vip = "203.0.113.10:8444/tcp"
backends = ["192.0.2.12:8444"]
table_size = 251
replies = "stateless"

# Distribution modes: source affinity, and source and protocol.
[[service]]
vip = "203.0.113.10:85/tcp"
backends = ["192.0.2.11:85", "192.0.2.12:85"]
table_size = 251
distribution = "source-ip"

[[service]]
vip = "203.0.113.10:86/tcp"
backends = ["192.0.2.11:86", "192.0.2.12:86"]
table_size = 251
distribution = "source-ip-protocol"

# TCP reset on idle: new flows record the client's sequence numbers.
[[service]]
vip = "203.0.113.10:87/tcp"
backends = ["192.0.2.11:87"]
table_size = 251
idle_timeout = "5s"
tcp_reset = true

# HA ports on an internal VIP: every TCP and UDP port, to two backends, port kept; 22/tcp is
# an exact service, which wins.
[[service]]
vip = "203.0.113.40:0/any"
backends = ["192.0.2.16", "192.0.2.17"]
table_size = 251
internal = ["198.51.100.0/26"]

[[service]]
vip = "203.0.113.40:22/tcp"
backends = ["192.0.2.18:2222"]
table_size = 251
internal = ["198.51.100.0/26"]

# A VIP that does not answer pings.
[[service]]
vip = "203.0.113.30:80/tcp"
backends = ["192.0.2.11"]
table_size = 251
icmp_echo = false

# An instance-level public IP: every protocol and port to 192.0.2.11.
[[pip]]
pip = "203.0.113.50"
dip = "192.0.2.11"
"#;

struct Fixture {
    h: Harness,
    seed: u32,
    /// Where `fx0` (the FIB fallback's device) is.
    fib_ifindex: u32,
}

impl Fixture {
    /// Loads the program (pinned under a directory named after the namespace, removed with
    /// it) and provisions the config above. Must run inside the
    /// test's namespace.
    fn new(ns: &Netns) -> Self {
        Self::with_config(ns, CONFIG)
    }

    /// As [`Self::new`], with another config (the same next hops and routes).
    fn with_config(ns: &Netns, config: &str) -> Self {
        Self::with_config_and(ns, config, &[])
    }

    /// As [`Self::with_config`], with more resolved backends.
    fn with_config_and(
        ns: &Netns,
        config: &str,
        more: &[(IpAddr, lb_common::maps::NextHop)],
    ) -> Self {
        ns.ip(&["link", "add", "fx0", "type", "veth", "peer", "name", "fx1"])
            .unwrap();
        ns.ip(&["link", "set", "fx0", "up"]).unwrap();
        ns.ip(&["link", "set", "fx1", "up"]).unwrap();
        ns.ip(&["route", "add", "192.0.2.14/32", "dev", "fx0"])
            .unwrap();
        ns.ip(&[
            "neigh",
            "add",
            "192.0.2.14",
            "lladdr",
            "02:00:00:00:00:14",
            "dev",
            "fx0",
            "nud",
            "permanent",
        ])
        .unwrap();
        ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .unwrap();
        let fib_ifindex = ns.ifindex("fx0").unwrap();

        let resolver = FixedResolver {
            backends: HashMap::from([
                (IpAddr::V4(B1), nh(LO, B1_MAC)),
                (IpAddr::V4(B2), nh(LO, B2_MAC)),
                (
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 13)),
                    nh(fib_ifindex + 100, B3_MAC),
                ),
                (IpAddr::V4(HA1), nh(LO, HA1_MAC)),
                (IpAddr::V4(HA2), nh(LO, HA2_MAC)),
                (IpAddr::V4(SSH), nh(LO, SSH_MAC)),
            ]),
            fallback: None,
            routes: vec![(
                96 + 24,
                addr::v4_mapped([198, 51, 100, 0]),
                nh(LO, CLIENT_MAC),
            )],
            // The LB's own address on the backends' side (its probes come from it).
            locals: vec![addr::v4_mapped([192, 0, 2, 1])],
            mtu: lb_integration::fixture::FIXTURE_MTU,
        };
        let mut resolver = resolver;
        resolver.backends.extend(more.iter().copied());
        let h = Harness::load(ns, config, resolver).expect("load and provision");
        Self {
            seed: h.seed,
            h,
            fib_ifindex,
        }
    }

    fn counts(&self) -> Vec<u64> {
        self.h.counts()
    }

    /// Runs one frame; returns (action, output bytes).
    fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>) {
        let (action, out, _) = self.h.run(input);
        (action, out)
    }

    /// Runs `input`, and checks action, output and that exactly `reason` was counted once.
    fn check(
        &mut self,
        what: &str,
        input: &Frame,
        action: u32,
        output: Option<&Frame>,
        reason: Reason,
    ) {
        self.check_bytes(
            what,
            &input.build(),
            action,
            output.map(Frame::build),
            reason,
        );
    }

    /// [`Self::check`] on frame bytes (any family's builder).
    /// Sends `frame` 1000 times as fast as it goes, each answered (`XDP_TX`, counted under
    /// `answered`) or refused by a per-CPU token bucket (counted under `limited`) that starts
    /// full (`burst`, less what earlier answers took) and refills at `rate` per second. The
    /// answers must reach the burst and stay within what every CPU's bucket could give over
    /// the time the loop really took (so a slow machine cannot make this fail), and every
    /// packet must be counted once. Returns how many were answered.
    fn rate_limited_burst(
        &mut self,
        frame: &[u8],
        (answered, limited): (Reason, Reason),
        (burst, rate): (u64, u64),
    ) -> u64 {
        let cpus = u64::try_from(aya::util::nr_cpus().unwrap()).unwrap();
        let before = self.counts();
        let spent = before[answered as usize];
        let started = std::time::Instant::now();
        let mut sent = 0u64;
        for _ in 0..1000 {
            if self.run(frame).0 == XDP_TX {
                sent += 1;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "small, positive"
        )]
        let refill = (rate as f64 * elapsed).ceil() as u64;
        assert!(
            sent >= burst.saturating_sub(spent),
            "the burst was not honoured: {sent} answers after {spent} earlier ones"
        );
        assert!(
            // Each CPU's bucket refills on its own: a thread that moves between CPUs during
            // a slow loop (the seed dump writes every frame) draws on all of them. (This bound
            // once counted one refill for all CPUs, and failed under the dump.)
            sent <= cpus * (burst + refill) + cpus,
            "{sent} answers in {elapsed:.3}s beat the bucket"
        );
        let after = self.counts();
        assert_eq!(after[answered as usize] - spent, sent, "answers counted");
        assert_eq!(
            after[limited as usize] - before[limited as usize],
            1000 - sent,
            "every packet is either answered or counted"
        );
        sent
    }

    fn check_bytes(
        &mut self,
        what: &str,
        bytes: &[u8],
        action: u32,
        output: Option<Vec<u8>>,
        reason: Reason,
    ) {
        let before = self.counts();
        let (got, out) = self.run(bytes);
        let after = self.counts();
        for r in ALL_REASONS {
            let d = after[r as usize] - before[r as usize];
            let want = u64::from(r == reason);
            assert_eq!(
                d,
                want,
                "{what}: counter {} moved by {d}, expected {want}",
                r.name()
            );
        }
        assert_eq!(got, action, "{what}: action");
        match output {
            Some(f) => assert_eq!(
                hex(&out),
                hex(&f),
                "{what}: output bytes (left: kernel, right: expected)"
            ),
            None if action == XDP_PASS => {
                assert_eq!(out, bytes, "{what}: a passed frame must be untouched");
            }
            None => {}
        }
    }

    /// The backend `lb-common`'s model picks for a flow of the 80/tcp service.
    fn model_pick(&self, src: SocketAddrV4, dport: u16) -> SocketAddrV4 {
        let flow = FlowKey4::new(src, SocketAddrV4::new(VIP, dport), proto::TCP);
        let bs = [(1, B1, 80u16), (2, B2, 8080)];
        let tb: Vec<TableBackend> = bs
            .iter()
            .map(|&(id, ip, port)| TableBackend {
                id,
                addr: addr::v4_mapped(ip.octets()),
                port,
                weight: 1,
            })
            .collect();
        let table = build_table(&tb, TABLE);
        let id = table[slot(flow_hash(&flow, self.seed), TABLE).unwrap() as usize];
        let (_, ip, port) = bs.iter().find(|b| b.0 == id).unwrap();
        SocketAddrV4::new(*ip, *port)
    }
}

fn mac_of(b: SocketAddrV4) -> [u8; 6] {
    if *b.ip() == B1 { B1_MAC } else { B2_MAC }
}

/// A TCP segment from backend `be` to `to`, as it reaches the LB (from the backend's MAC).
fn from_backend(be: SocketAddrV4, to: SocketAddrV4, flags: u8) -> Frame {
    let mut f = Frame::tcp(be, to, flags);
    f.smac = mac_of(be);
    f.dmac = LB_MAC;
    f
}

/// Runs `f` with a fixture inside a fresh namespace that is deleted afterwards.
fn with_fixture(f: impl FnOnce(&mut Fixture) + Send + 'static) {
    in_fresh_ns("fx", move |ns| {
        let mut fx = Fixture::new(ns);
        f(&mut fx);
    });
}

mod decap;
mod dsr;
mod explain;
mod forwarding;
mod icmp;
mod outbound;
mod policy;
mod six;
