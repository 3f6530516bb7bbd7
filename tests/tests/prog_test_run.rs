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
    flow::{FlowKey, proto},
    hash::flow_hash,
    maglev::{TableBackend, build_table, slot},
    maps::{HAIRPIN_PORT_TRIES, hairpin_port},
    verdict::{ALL_REASONS, Reason},
};
use lb_integration::{
    fixture::{
        FixedResolver, Harness, LO, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, in_fresh_ns, nh,
        pin_dir,
    },
    netns::Netns,
    packet::{CLIENT_MAC, Frame, L4, LB_MAC, TCP_ACK, TCP_SYN, hex},
};
use lb_userspace::{
    api::{Query, Request, Response},
    dataplane::{Dataplane, LoadOptions},
};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000);
const B1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const B2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const B1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const B2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const B3_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];
const FIB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x14];
const TABLE: u32 = 251;

const CONFIG: &str = r#"
[agent]
ring_slots = 4096
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
            ]),
            fallback: None,
            routes: vec![(
                96 + 24,
                addr::v4_mapped([198, 51, 100, 0]),
                nh(LO, CLIENT_MAC),
            )],
        };
        let h = Harness::load(ns, CONFIG, resolver).expect("load and provision");
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
        let before = self.counts();
        let bytes = input.build();
        let (got, out) = self.run(&bytes);
        assert_eq!(got, action, "{what}: action");
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
        match output {
            Some(f) => assert_eq!(
                hex(&out),
                hex(&f.build()),
                "{what}: output bytes (left: kernel, right: expected)"
            ),
            None if action == XDP_PASS => {
                assert_eq!(out, bytes, "{what}: a passed frame must be untouched")
            }
            None => {}
        }
    }

    /// The backend `lb-common`'s model picks for a flow of the 80/tcp service.
    fn model_pick(&self, src: SocketAddrV4, dport: u16) -> SocketAddrV4 {
        let flow = FlowKey::new(src.into(), SocketAddrV4::new(VIP, dport).into(), proto::TCP);
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

/// Runs `f` with a fixture inside a fresh namespace that is deleted afterwards.
fn with_fixture(f: impl FnOnce(&mut Fixture) + Send + 'static) {
    in_fresh_ns("fx", move |ns| {
        let mut fx = Fixture::new(ns);
        f(&mut fx);
    });
}

#[test]
fn tcp_flow_is_balanced_tracked_and_reverse_natted() {
    with_fixture(|fx| {
        let vip80 = SocketAddrV4::new(VIP, 80);
        let be = fx.model_pick(CLIENT, 80);
        let syn = Frame::tcp(CLIENT, vip80, TCP_SYN);
        fx.check(
            "SYN to VIP",
            &syn,
            XDP_TX,
            Some(&syn.dnat(be, LB_MAC, mac_of(be))),
            Reason::Forward,
        );
        let ack = Frame::tcp(CLIENT, vip80, TCP_ACK);
        fx.check(
            "ACK of the same flow",
            &ack,
            XDP_TX,
            Some(&ack.dnat(be, LB_MAC, mac_of(be))),
            Reason::Forward,
        );

        // The reply from the chosen backend goes back from the VIP to the client's MAC.
        let mut reply = Frame::tcp(be, CLIENT, TCP_SYN | TCP_ACK);
        reply.smac = mac_of(be);
        reply.dmac = LB_MAC;
        fx.check(
            "reply from backend",
            &reply,
            XDP_TX,
            Some(&reply.snat(vip80, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );

        let views = fx.h.rec.handle(Request::Query(Query::VipList)).response;
        let json = serde_json::to_value(&views).unwrap();
        let svc = json["vips"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["service"] == "203.0.113.10:80/tcp")
            .unwrap()
            .clone();
        assert_eq!(svc["counters"]["packets"], 2, "{svc}");
        assert_eq!(
            svc["counters"]["new_flows"], 1,
            "the ACK must hit conntrack: {svc}"
        );
        assert_eq!(svc["counters"]["reply_packets"], 1, "{svc}");
    });
}

#[test]
fn many_source_ports_reach_every_backend_as_the_model_predicts() {
    with_fixture(|fx| {
        let mut seen = std::collections::BTreeSet::new();
        for port in 20000..20064 {
            let src = SocketAddrV4::new(*CLIENT.ip(), port);
            let be = fx.model_pick(src, 80);
            let syn = Frame::tcp(src, SocketAddrV4::new(VIP, 80), TCP_SYN);
            fx.check(
                &format!("SYN from port {port}"),
                &syn,
                XDP_TX,
                Some(&syn.dnat(be, LB_MAC, mac_of(be))),
                Reason::Forward,
            );
            seen.insert(be);
        }
        assert_eq!(
            seen.len(),
            2,
            "64 flows should reach both backends: {seen:?}"
        );
    });
}

#[test]
fn udp_with_and_without_checksum() {
    with_fixture(|fx| {
        let vip53 = SocketAddrV4::new(VIP, 53);
        let b = SocketAddrV4::new(B1, 53);
        let q = Frame::udp(CLIENT, vip53);
        fx.check(
            "UDP query",
            &q,
            XDP_TX,
            Some(&q.dnat(b, LB_MAC, B1_MAC)),
            Reason::Forward,
        );
        let mut q0 = Frame::udp(SocketAddrV4::new(*CLIENT.ip(), 40001), vip53);
        q0.l4 = L4::Udp {
            sport: 40001,
            dport: 53,
            no_csum: true,
        };
        // The expected frame also has a zero checksum: "none" must stay "none".
        fx.check(
            "UDP with zero checksum",
            &q0,
            XDP_TX,
            Some(&q0.dnat(b, LB_MAC, B1_MAC)),
            Reason::Forward,
        );
        let mut r = Frame::udp(b, SocketAddrV4::new(*CLIENT.ip(), 40001));
        r.l4 = L4::Udp {
            sport: 53,
            dport: 40001,
            no_csum: true,
        };
        fx.check(
            "UDP reply with zero checksum",
            &r,
            XDP_TX,
            Some(&r.snat(vip53, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
    });
}

#[test]
fn vlan_tagged_frame_keeps_its_tag() {
    with_fixture(|fx| {
        let vip80 = SocketAddrV4::new(VIP, 80);
        let src = SocketAddrV4::new(*CLIENT.ip(), 41000);
        let be = fx.model_pick(src, 80);
        let mut syn = Frame::tcp(src, vip80, TCP_SYN);
        syn.vlan = Some(100);
        fx.check(
            "802.1Q SYN",
            &syn,
            XDP_TX,
            Some(&syn.dnat(be, LB_MAC, mac_of(be))),
            Reason::Forward,
        );
    });
}

#[test]
fn next_hop_kinds_redirect_fib_fallback_and_pass() {
    with_fixture(|fx| {
        let syn = Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 8443), TCP_SYN);
        let b3 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 13), 8443);
        fx.check(
            "backend behind another device",
            &syn,
            XDP_REDIRECT,
            Some(&syn.dnat(b3, LB_MAC, B3_MAC)),
            Reason::Forward,
        );

        // Unresolved by the agent; the kernel FIB knows 192.0.2.14 on fx0 with a permanent
        // neighbour, so the fallback sends it there with fx0's MAC as the source.
        let fib_ns_mac = {
            let out = std::process::Command::new("ip")
                .args(["-o", "link", "show", "dev", "fx0"])
                .output()
                .unwrap();
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            let m = s
                .split("link/ether ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
            let mut mac = [0u8; 6];
            for (d, p) in mac.iter_mut().zip(m.split(':')) {
                *d = u8::from_str_radix(p, 16).unwrap();
            }
            mac
        };
        let syn = Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 9000), TCP_SYN);
        let b4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 14), 9000);
        fx.check(
            "FIB fallback",
            &syn,
            XDP_REDIRECT,
            Some(&syn.dnat(b4, fib_ns_mac, FIB_MAC)),
            Reason::ForwardFib,
        );
        assert_ne!(fx.fib_ifindex, LO);

        // Nothing resolves 192.0.2.15: translated, TTL untouched, handed to the kernel.
        let syn = Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 9001), TCP_SYN);
        let mut want = syn.dnat(
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 15), 9001),
            syn.smac,
            syn.dmac,
        );
        want.ttl = syn.ttl;
        let (action, out) = fx.run(&syn.build());
        assert_eq!(action, XDP_PASS, "no next hop: XDP_PASS");
        assert_eq!(
            hex(&out),
            hex(&want.build()),
            "no next hop: DNAT done, TTL and MACs untouched"
        );
        assert_eq!(
            fx.counts()[Reason::PassNoNextHop as usize],
            1,
            "counts: {:?}",
            fx.counts()
        );
    });
}

#[test]
fn not_ours_passes_untouched() {
    with_fixture(|fx| {
        let other = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 99), 80);
        fx.check(
            "TCP to a non-VIP",
            &Frame::tcp(CLIENT, other, TCP_SYN),
            XDP_PASS,
            None,
            Reason::PassNotOurs,
        );
        // A reply-shaped packet with no conntrack entry is not ours either (from a backend
        // without a PIP: 192.0.2.11 has one, and everything it sends leaves as its PIP).
        let stray = Frame::tcp(
            SocketAddrV4::new(B2, 8080),
            SocketAddrV4::new(*CLIENT.ip(), 1),
            TCP_ACK,
        );
        fx.check(
            "untracked backend packet",
            &stray,
            XDP_PASS,
            None,
            Reason::PassNotOurs,
        );
        let mut arp = Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 80), TCP_SYN);
        arp.ether_type = 0x0806;
        fx.check("ARP", &arp, XDP_PASS, None, Reason::PassNotIpv4);
        let mut qinq = Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 80), TCP_SYN);
        qinq.vlan = Some(10);
        qinq.ether_type = 0x8100;
        fx.check(
            "QinQ (second tag)",
            &qinq,
            XDP_PASS,
            None,
            Reason::PassNotIpv4,
        );
        let icmp = Frame::raw(
            *CLIENT.ip(),
            Ipv4Addr::new(198, 51, 100, 99),
            proto::ICMP,
            vec![8, 0, 0, 0, 0, 1, 0, 1],
        );
        fx.check(
            "ICMP to a non-VIP",
            &icmp,
            XDP_PASS,
            None,
            Reason::PassNotOurs,
        );
    });
}

#[test]
fn bad_packets_to_a_vip_are_counted_drops() {
    with_fixture(|fx| {
        let vip80 = SocketAddrV4::new(VIP, 80);
        let good = Frame::tcp(CLIENT, vip80, TCP_SYN);
        let l3 = good.l3_offset();
        let bytes = good.build();

        // Truncations: inside the TCP header (to a VIP: drop), inside the IP header (cannot
        // tell the destination: pass), inside the 802.1Q tag (pass). Frames shorter than an
        // Ethernet header never reach XDP (BPF_PROG_TEST_RUN refuses them too).
        let mut tagged = good.clone();
        tagged.vlan = Some(7);
        let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
            (
                "TCP header cut",
                bytes[..l3 + 20 + 10].to_vec(),
                XDP_DROP,
                Reason::DropMalformed,
            ),
            (
                "IP header cut",
                bytes[..l3 + 12].to_vec(),
                XDP_PASS,
                Reason::PassShort,
            ),
            (
                "802.1Q tag cut",
                tagged.build()[..16].to_vec(),
                XDP_PASS,
                Reason::PassShort,
            ),
            (
                "bad IHL (4)",
                {
                    let mut b = bytes.clone();
                    b[l3] = 0x44;
                    b
                },
                XDP_DROP,
                Reason::DropMalformed,
            ),
            (
                "IP version 6 in an IPv4 frame",
                {
                    let mut b = bytes.clone();
                    b[l3] = 0x65;
                    b
                },
                XDP_DROP,
                Reason::DropMalformed,
            ),
            (
                "total length beyond the frame",
                {
                    let mut b = bytes.clone();
                    b[l3 + 2..l3 + 4].copy_from_slice(&200u16.to_be_bytes());
                    b
                },
                XDP_DROP,
                Reason::DropMalformed,
            ),
            (
                "total length below IHL",
                {
                    let mut b = bytes.clone();
                    b[l3 + 2..l3 + 4].copy_from_slice(&19u16.to_be_bytes());
                    b
                },
                XDP_DROP,
                Reason::DropMalformed,
            ),
            (
                "TCP data offset 4",
                {
                    let mut b = bytes.clone();
                    b[l3 + 20 + 12] = 4 << 4;
                    b
                },
                XDP_DROP,
                Reason::DropMalformed,
            ),
            (
                "TCP data offset past the packet",
                {
                    let mut b = bytes.clone();
                    b[l3 + 20 + 12] = 15 << 4;
                    b
                },
                XDP_DROP,
                Reason::DropMalformed,
            ),
        ];
        for (what, input, action, reason) in cases {
            let before = fx.counts();
            let (got, _) = fx.run(&input);
            assert_eq!(got, action, "{what}: action");
            let after = fx.counts();
            assert_eq!(
                after[reason as usize] - before[reason as usize],
                1,
                "{what}: {} not counted",
                reason.name()
            );
            assert_eq!(
                after.iter().sum::<u64>() - before.iter().sum::<u64>(),
                1,
                "{what}: counted more than once"
            );
        }

        let mut opts = good.clone();
        opts.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
        fx.check("IP options", &opts, XDP_DROP, None, Reason::DropIpOptions);
        let mut first = good.clone();
        first.frag = 0x2000; // MF
        fx.check(
            "first fragment",
            &first,
            XDP_DROP,
            None,
            Reason::DropFragment,
        );
        let mut later = good.clone();
        later.frag = 185; // offset 1480
        fx.check(
            "non-first fragment",
            &later,
            XDP_DROP,
            None,
            Reason::DropFragment,
        );
        let mut ttl = good.clone();
        ttl.ttl = 1;
        fx.check("TTL 1", &ttl, XDP_DROP, None, Reason::DropTtl);
        let mut udp_len = Frame::udp(CLIENT, SocketAddrV4::new(VIP, 53));
        let mut b = udp_len.build();
        let u = udp_len.l3_offset() + 20;
        b[u + 4..u + 6].copy_from_slice(&500u16.to_be_bytes());
        let (got, _) = fx.run(&b);
        assert_eq!(got, XDP_DROP, "UDP length beyond the packet");
        udp_len.payload.clear();
        fx.check(
            "wrong port on the VIP",
            &Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 81), TCP_SYN),
            XDP_DROP,
            None,
            Reason::DropNoService,
        );
        fx.check(
            "service without backends",
            &Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 443), TCP_SYN),
            XDP_DROP,
            None,
            Reason::DropNoBackend,
        );
        // A timestamp request: the LB answers only echo requests on a VIP.
        let icmp = Frame::raw(
            *CLIENT.ip(),
            VIP,
            proto::ICMP,
            vec![13, 0, 0xf2, 0xff, 0, 0, 0, 0],
        );
        fx.check("ICMP to a VIP", &icmp, XDP_DROP, None, Reason::DropProto);
    });
}

/// The kernel-side debug log (aya-log) is off by default; with it on, the program still loads
/// and a new flow still forwards.
#[test]
fn program_loads_with_kernel_debug_logging_on() {
    in_fresh_ns("log", |ns| {
        let opts = LoadOptions {
            bpf_log_level: 4,
            ring_slots: 4096,
            conntrack_flows: 1024,
            ..LoadOptions::new(pin_dir(ns))
        };
        let (mut dp, _maps) = Dataplane::load(&opts).expect("load with aya-log at debug");
        let _logger = aya_log::EbpfLogger::init(&mut dp.ebpf)
            .expect("aya-log's ring buffer is in the object");
    });
}

#[test]
fn endpoint_acl_permits_and_denies_new_flows() {
    with_fixture(|fx| {
        let vip = SocketAddrV4::new(VIP, 8080);
        let b = SocketAddrV4::new(B1, 8080);
        let ok_src = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000);
        let syn = Frame::tcp(ok_src, vip, TCP_SYN);
        fx.check(
            "permitted source",
            &syn,
            XDP_TX,
            Some(&syn.dnat(b, LB_MAC, B1_MAC)),
            Reason::Forward,
        );
        let ack = Frame::tcp(ok_src, vip, TCP_ACK);
        fx.check(
            "its established flow",
            &ack,
            XDP_TX,
            Some(&ack.dnat(b, LB_MAC, B1_MAC)),
            Reason::Forward,
        );
        let denied = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            vip,
            TCP_SYN,
        );
        fx.check(
            "denied by rule 20",
            &denied,
            XDP_DROP,
            None,
            Reason::DropAcl,
        );
        let denied_ack = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            vip,
            TCP_ACK,
        );
        fx.check(
            "a non-SYN without a flow is a new flow too",
            &denied_ack,
            XDP_DROP,
            None,
            Reason::DropAcl,
        );
        let other = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 40000),
            vip,
            TCP_SYN,
        );
        fx.check(
            "no rule matches: default deny",
            &other,
            XDP_DROP,
            None,
            Reason::DropAcl,
        );
        // Other endpoints of the VIP have no ACL.
        let web = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            SocketAddrV4::new(VIP, 80),
            TCP_SYN,
        );
        let (action, _) = fx.run(&web.build());
        assert_eq!(action, XDP_TX, "the ACL of :8080 must not apply to :80");
        let Response::Acl(view) =
            fx.h.rec
                .handle(Request::Query(Query::AclList {
                    service: "203.0.113.10:8080/tcp".parse().unwrap(),
                }))
                .response
        else {
            panic!()
        };
        assert_eq!(view.drops, 3, "denials are counted per endpoint: {view:?}");
    });
}

#[test]
fn internal_vip_admits_only_internal_sources_and_drops_hairpin() {
    with_fixture(|fx| {
        let ilb = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 20), 80);
        let b = SocketAddrV4::new(B1, 80);
        let syn = Frame::tcp(CLIENT, ilb, TCP_SYN);
        fx.check(
            "internal source",
            &syn,
            XDP_TX,
            Some(&syn.dnat(b, LB_MAC, B1_MAC)),
            Reason::Forward,
        );
        let outside = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            ilb,
            TCP_SYN,
        );
        fx.check(
            "external source",
            &outside,
            XDP_DROP,
            None,
            Reason::DropNotInternal,
        );
        let hairpin = Frame::tcp(SocketAddrV4::new(B1, 40000), ilb, TCP_SYN);
        fx.check(
            "its own backend (hairpin)",
            &hairpin,
            XDP_DROP,
            None,
            Reason::DropHairpin,
        );
        // The public VIP next door is not affected.
        let public = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            SocketAddrV4::new(VIP, 80),
            TCP_SYN,
        );
        assert_eq!(fx.run(&public.build()).0, XDP_TX);
    });
}

/// `--hairpin snat`: a backend's connection to its own internal VIP goes to a backend with the
/// source rewritten to VIP:port, its reply comes back translated to the connecting backend,
/// and the SNAT port skips the VIP's service ports and ports other hairpin flows hold, until
/// none of the candidates is free (a counted drop).
#[test]
fn hairpin_snat_translates_both_ways_and_picks_free_ports() {
    with_fixture(|fx| {
        let v = Ipv4Addr::new(203, 0, 113, 21);
        let vip = SocketAddrV4::new(v, 80);
        let server = SocketAddrV4::new(B2, 8080);
        let seed = fx.seed;
        let cand = move |sport: u16, attempt: u32| {
            let flow = FlowKey::new(SocketAddrV4::new(B1, sport).into(), vip.into(), proto::TCP);
            hairpin_port(flow_hash(&flow, seed), attempt)
        };
        // The frames of one hairpin flow from B1:sport that should get SNAT port `port`.
        let expect = |fx: &mut Fixture, what: &str, sport: u16, port: u16| {
            let client = SocketAddrV4::new(B1, sport);
            let snat = SocketAddrV4::new(v, port);
            let syn = Frame::tcp(client, vip, TCP_SYN);
            let mut out = syn.dnat(server, LB_MAC, B2_MAC).snat(snat, LB_MAC, B2_MAC);
            out.ttl += 1; // one hop, two rewrites
            fx.check(what, &syn, XDP_TX, Some(&out), Reason::HairpinSnat);
            (client, snat)
        };
        let mut held = vec![50001u16];

        // One flow, both ways, and its tracked next packet.
        let sport = (40000..).find(|&p| cand(p, 0) != 50001).unwrap();
        let (client, snat) = expect(fx, "hairpin SYN", sport, cand(sport, 0));
        held.push(snat.port());
        let ack = Frame::tcp(client, vip, TCP_ACK);
        let mut out = ack.dnat(server, LB_MAC, B2_MAC).snat(snat, LB_MAC, B2_MAC);
        out.ttl += 1;
        fx.check("tracked ACK", &ack, XDP_TX, Some(&out), Reason::HairpinSnat);
        let reply = Frame::tcp(server, snat, TCP_SYN | TCP_ACK);
        let mut out = reply.snat(vip, LB_MAC, B1_MAC).dnat(client, LB_MAC, B1_MAC);
        out.ttl += 1;
        fx.check(
            "reply, through the connecting backend's next hop",
            &reply,
            XDP_TX,
            Some(&out),
            Reason::HairpinReply,
        );

        // A flow whose first candidate is a service port of the VIP, and one whose first
        // candidate another hairpin flow holds: both take their second.
        for (what, taken) in [("service port", 50001), ("held port", snat.port())] {
            let sp = (1024..=u16::MAX)
                .find(|&p| p != sport && cand(p, 0) == taken && !held.contains(&cand(p, 1)))
                .expect("a source port with that first candidate");
            expect(fx, what, sp, cand(sp, 1));
            held.push(cand(sp, 1));
        }

        // Every candidate of one flow held (by flows that took them as first choice): dropped.
        let target = (30000..)
            .find(|&p| (0..HAIRPIN_PORT_TRIES).all(|a| !held.contains(&cand(p, a))))
            .unwrap();
        for a in 0..HAIRPIN_PORT_TRIES {
            let port = cand(target, a);
            let sp = (1024..=u16::MAX)
                .find(|&p| p != target && cand(p, 0) == port)
                .expect("a source port with that first candidate");
            expect(fx, "occupier", sp, port);
        }
        let syn = Frame::tcp(SocketAddrV4::new(B1, target), vip, TCP_SYN);
        fx.check(
            "no free SNAT port",
            &syn,
            XDP_DROP,
            None,
            Reason::DropHairpinNoPort,
        );
    });
}

#[test]
fn pip_translates_every_protocol_both_ways() {
    with_fixture(|fx| {
        let pip = Ipv4Addr::new(203, 0, 113, 50);
        let to_b1 = |port| SocketAddrV4::new(B1, port);
        let echo = Frame::raw(
            *CLIENT.ip(),
            pip,
            proto::ICMP,
            vec![8, 0, 0xf7, 0xfe, 0, 1, 0, 0],
        );
        fx.check(
            "ping to a PIP",
            &echo,
            XDP_TX,
            Some(&echo.dnat(to_b1(0), LB_MAC, B1_MAC)),
            Reason::PipIn,
        );
        let syn = Frame::tcp(CLIENT, SocketAddrV4::new(pip, 2222), TCP_SYN);
        fx.check(
            "TCP to any port of a PIP",
            &syn,
            XDP_TX,
            Some(&syn.dnat(to_b1(2222), LB_MAC, B1_MAC)),
            Reason::PipIn,
        );
        let mut udp = Frame::udp(CLIENT, SocketAddrV4::new(pip, 5000));
        udp.l4 = L4::Udp {
            sport: CLIENT.port(),
            dport: 5000,
            no_csum: true,
        };
        fx.check(
            "UDP without checksum to a PIP",
            &udp,
            XDP_TX,
            Some(&udp.dnat(to_b1(5000), LB_MAC, B1_MAC)),
            Reason::PipIn,
        );
        let mut frag = Frame::raw(*CLIENT.ip(), pip, proto::TCP, vec![0xab; 24]);
        frag.frag = 185; // a non-first fragment: no L4 header to touch
        fx.check(
            "non-first fragment to a PIP",
            &frag,
            XDP_TX,
            Some(&frag.dnat(to_b1(0), LB_MAC, B1_MAC)),
            Reason::PipIn,
        );

        // Everything the instance sends leaves as the PIP (not a tracked VIP flow).
        let vip_src = |port| SocketAddrV4::new(pip, port);
        let mut reply = Frame::raw(
            B1,
            *CLIENT.ip(),
            proto::ICMP,
            vec![0, 0, 0xff, 0xfe, 0, 1, 0, 0],
        );
        reply.smac = B1_MAC;
        fx.check(
            "echo reply from the instance",
            &reply,
            XDP_TX,
            Some(&reply.snat(vip_src(0), LB_MAC, CLIENT_MAC)),
            Reason::PipOut,
        );
        let mut out = Frame::tcp(SocketAddrV4::new(B1, 2222), CLIENT, TCP_SYN | TCP_ACK);
        out.smac = B1_MAC;
        fx.check(
            "TCP from the instance",
            &out,
            XDP_TX,
            Some(&out.snat(vip_src(2222), LB_MAC, CLIENT_MAC)),
            Reason::PipOut,
        );
        let mut bad =
            Frame::raw(*CLIENT.ip(), pip, proto::ICMP, vec![8, 0, 0, 0, 0, 1, 0, 0]).build();
        let l3 = 14;
        bad[l3] = 0x44; // bad IHL: malformed is never translated
        let (action, _) = fx.run(&bad);
        assert_eq!(
            action, XDP_PASS,
            "a malformed packet to a PIP is not translated (not a VIP: passed)"
        );
    });
}

/// An ICMP message with a correct checksum.
fn icmp(ty: u8, rest: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(rest);
    let c = lb_common::csum::ipv4_header(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

#[test]
fn the_lb_answers_pings_to_a_vip_rate_limited() {
    with_fixture(|fx| {
        let req = icmp(8, &[0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g']);
        let ping = Frame::raw(*CLIENT.ip(), VIP, proto::ICMP, req);
        // The reply: addresses and MACs swapped, TTL 64, type 0, checksum still valid.
        let mut want = Frame::raw(
            VIP,
            *CLIENT.ip(),
            proto::ICMP,
            icmp(0, &[0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g']),
        );
        want.smac = ping.dmac;
        want.dmac = ping.smac;
        want.ttl = 64;
        fx.check(
            "ping to a VIP",
            &ping,
            XDP_TX,
            Some(&want),
            Reason::EchoReply,
        );
        let off = Frame::raw(
            *CLIENT.ip(),
            Ipv4Addr::new(203, 0, 113, 30),
            proto::ICMP,
            icmp(8, &[0, 1, 0, 1]),
        );
        fx.check(
            "ping to a VIP with echo off",
            &off,
            XDP_DROP,
            None,
            Reason::DropEchoLimited,
        );
        let outside = Frame::raw(
            Ipv4Addr::new(198, 51, 100, 70),
            Ipv4Addr::new(203, 0, 113, 20),
            proto::ICMP,
            icmp(8, &[0, 1, 0, 1]),
        );
        fx.check(
            "ping to an internal VIP from outside",
            &outside,
            XDP_DROP,
            None,
            Reason::DropNotInternal,
        );
        // A burst far above the budget is cut to what the token bucket allows: each CPU's bucket
        // starts full (ECHO_BURST) and refills at ECHO_RATE_PER_SEC. The bound uses the time the
        // loop really took, so a slow machine cannot make this fail.
        let (burst, rate) = (
            lb_common::consts::ECHO_BURST,
            lb_common::consts::ECHO_RATE_PER_SEC,
        );
        let cpus = u64::try_from(aya::util::nr_cpus().unwrap()).unwrap();
        let before = fx.counts()[Reason::DropEchoLimited as usize];
        // Replies this program already sent took tokens from the same buckets.
        let spent = fx.counts()[Reason::EchoReply as usize];
        let bytes = ping.build();
        let started = std::time::Instant::now();
        let mut replied = 0u64;
        for _ in 0..1000 {
            if fx.run(&bytes).0 == XDP_TX {
                replied += 1;
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
            replied >= burst.saturating_sub(spent),
            "the burst was not honoured: {replied} replies after {spent} earlier ones"
        );
        assert!(
            replied <= cpus * burst + refill + cpus,
            "{replied} replies in {elapsed:.3}s beat the bucket"
        );
        let limited = fx.counts()[Reason::DropEchoLimited as usize] - before;
        assert_eq!(
            limited,
            1000 - replied,
            "every request is either answered or counted"
        );
    });
}

/// An ICMP error message: type, code, the 4 "rest of header" bytes, the embedded bytes; with a
/// checksum computed from scratch.
fn icmp_error(ty: u8, code: u8, rest: [u8; 4], embedded: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(embedded);
    let c = lb_common::csum::ipv4_header(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// The first `len` bytes of a frame's IPv4 packet (what an ICMP error embeds).
fn ip_bytes(f: &Frame, len: usize) -> Vec<u8> {
    f.build()[f.l3_offset()..f.l3_offset() + len].to_vec()
}

#[test]
fn icmp_errors_reach_the_party_that_owns_the_flow() {
    with_fixture(|fx| {
        let vip80 = SocketAddrV4::new(VIP, 80);
        let be = fx.model_pick(CLIENT, 80);
        let syn = Frame::tcp(CLIENT, vip80, TCP_SYN);
        assert_eq!(fx.run(&syn.build()).0, XDP_TX, "the flow is set up");
        let router = Ipv4Addr::new(198, 51, 100, 254);
        let mtu = [0, 0, 0x05, 0x78]; // next-hop MTU 1400

        // "Fragmentation needed" about our reply VIP:80 → client, embedding 8 and then 20 bytes
        // of TCP (only the second carries the TCP checksum).
        for l4_len in [8, 20] {
            let reply = Frame::tcp(vip80, CLIENT, TCP_ACK);
            let err = Frame::raw(
                router,
                VIP,
                proto::ICMP,
                icmp_error(3, 4, mtu, &ip_bytes(&reply, 20 + l4_len)),
            );
            let translated = Frame::tcp(be, CLIENT, TCP_ACK);
            let mut want = Frame::raw(
                router,
                *be.ip(),
                proto::ICMP,
                icmp_error(3, 4, mtu, &ip_bytes(&translated, 20 + l4_len)),
            );
            want.ttl = err.ttl - 1;
            want.smac = LB_MAC;
            want.dmac = mac_of(be);
            fx.check(
                &format!("frag needed, {l4_len} bytes of TCP"),
                &err,
                XDP_TX,
                Some(&want),
                Reason::IcmpToBackend,
            );
        }

        // Truncated or unknown embedded packets are counted drops.
        let reply = Frame::tcp(vip80, CLIENT, TCP_ACK);
        let cut = Frame::raw(
            router,
            VIP,
            proto::ICMP,
            icmp_error(3, 4, mtu, &ip_bytes(&reply, 10)),
        );
        fx.check(
            "embedded IP header cut",
            &cut,
            XDP_DROP,
            None,
            Reason::DropIcmpUnmatched,
        );
        let cut_l4 = Frame::raw(
            router,
            VIP,
            proto::ICMP,
            icmp_error(3, 4, mtu, &ip_bytes(&reply, 22)),
        );
        fx.check(
            "embedded ports cut",
            &cut_l4,
            XDP_DROP,
            None,
            Reason::DropIcmpUnmatched,
        );
        let stranger = Frame::tcp(vip80, SocketAddrV4::new(*CLIENT.ip(), 1), TCP_ACK);
        let forged = Frame::raw(
            router,
            VIP,
            proto::ICMP,
            icmp_error(3, 4, mtu, &ip_bytes(&stranger, 28)),
        );
        fx.check(
            "no such flow",
            &forged,
            XDP_DROP,
            None,
            Reason::DropIcmpUnmatched,
        );

        // A backend's "port unreachable" about a UDP flow goes back to the client as from the
        // VIP, the embedded destination (and its UDP checksum) translated too.
        let vip53 = SocketAddrV4::new(VIP, 53);
        let b53 = SocketAddrV4::new(B1, 53);
        let client = SocketAddrV4::new(*CLIENT.ip(), 40001);
        let q = Frame::udp(client, vip53);
        assert_eq!(fx.run(&q.build()).0, XDP_TX, "the UDP flow is set up");
        let seen = Frame::udp(client, b53); // the query as the backend received it
        let mut err = Frame::raw(
            B1,
            *CLIENT.ip(),
            proto::ICMP,
            icmp_error(3, 3, [0; 4], &ip_bytes(&seen, 28)),
        );
        err.smac = B1_MAC;
        let mut want = Frame::raw(
            VIP,
            *CLIENT.ip(),
            proto::ICMP,
            icmp_error(3, 3, [0; 4], &ip_bytes(&q, 28)),
        );
        want.ttl = err.ttl - 1;
        want.smac = LB_MAC;
        want.dmac = CLIENT_MAC;
        fx.check(
            "port unreachable from the backend",
            &err,
            XDP_TX,
            Some(&want),
            Reason::IcmpToClient,
        );
    });
}
