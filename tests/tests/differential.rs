//! Randomized differential test: 100 000 random packets through the real program
//! (`BPF_PROG_TEST_RUN`) and through `lb_common::model`, the host model of parse, classify and
//! select. For each packet the kernel's verdict (action and the one reason counter that moved)
//! and its chosen backend (read from the output packet's destination) must equal the model's.
//! Zero mismatches.
//!
//! The traffic: flows from a pool (so most packets belong to tracked flows), SYNs, ACKs, FINs,
//! RSTs and refused flag combinations, TCP and UDP, to service ports, to other ports of a VIP
//! and to other addresses, replies from the backends (SYN-ACKs among them, which test the
//! reused-port rule), TTL 1, and one packet in ten with random bytes of its headers flipped,
//! which exercises every parse check. A backend endpoint serves two services, so replies are
//! matched both through the reverse-service entry and through reverse entries. The seed is
//! printed, so a failure can be replayed. The program runs with a close timeout far longer
//! than the test (the model treats closed flows as within it).

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{
    flow::proto,
    maps::{REV_F_SHARED, REV_F_STATELESS},
    model::{Model, ModelBackend, Verdict},
    verdict::{ALL_REASONS, Reason},
};
use lb_integration::{
    fixture::{FixedResolver, Harness, XDP_DROP, XDP_PASS, XDP_TX, in_fresh_ns},
    packet::{Frame, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const PACKETS: u32 = 100_000;

const CONFIG: &str = r#"
[agent]
ring_slots = 8192
conntrack_flows = 65536
tcp_close_timeout = 3600

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12:8080", "192.0.2.13"]
table_size = 251

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251

[[service]]
vip = "203.0.113.11:443/tcp"
backends = ["192.0.2.14", "192.0.2.15", "192.0.2.16", "192.0.2.17"]
table_size = 1021

# 192.0.2.14:443 also serves this one: a shared endpoint.
[[service]]
vip = "203.0.113.12:443/tcp"
backends = ["192.0.2.14"]
table_size = 251

# Stateless replies: every packet from 192.0.2.18:8443 is a reply, except to the LB itself.
[[service]]
vip = "203.0.113.13:8443/tcp"
backends = ["192.0.2.18"]
table_size = 251
replies = "stateless"

# Source affinity, and source and protocol: the hash covers less of the 5-tuple.
[[service]]
vip = "203.0.113.14:80/tcp"
backends = ["192.0.2.20", "192.0.2.21", "192.0.2.22"]
table_size = 251
distribution = "source-ip"

[[service]]
vip = "203.0.113.14:53/udp"
backends = ["192.0.2.20", "192.0.2.21", "192.0.2.22"]
table_size = 251
distribution = "source-ip-protocol"

# A service with no backend: new flows are dropped.
[[service]]
vip = "203.0.113.11:444/tcp"
table_size = 251
"#;

/// xorshift64*: small, seedable, good enough to spread packets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Builds the model from what the agent installed (tables, backends, VIPs): the kernel's job
/// under test is what it does with them.
fn model_of(h: &Harness) -> Model {
    let maps = h.rec.maps();
    let mut m = Model {
        seed: h.seed,
        ..Model::default()
    };
    for item in &maps.services {
        let (key, info) = item.expect("service entry");
        let table: Vec<u32> = (info.table_off..info.table_off + info.table_len)
            .map(|i| maps.ring.get(&i, 0).expect("ring slot"))
            .collect();
        for &id in &table {
            if id != 0 && !m.backends.contains_key(&id) {
                let b = maps.backends.get(&id, 0).expect("backend");
                m.backends.insert(
                    id,
                    ModelBackend {
                        addr: b.addr,
                        port: b.port,
                        active: b.is_active(),
                    },
                );
            }
        }
        m.modes.insert(key, info.distribution());
        m.services.insert(key, table);
    }
    for k in maps.vips.keys() {
        m.vips.insert(k.expect("vip"));
    }
    for k in maps.locals.keys() {
        m.locals.insert(k.expect("local address"));
    }
    for item in &maps.revsvc {
        let (k, v) = item.expect("reverse-service entry");
        m.revs.insert(k, v);
    }
    m
}

#[test]
fn kernel_and_model_agree_on_100k_random_packets() {
    let seed = std::env::var("LB_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("differential seed: {seed} (replay with LB_DIFF_SEED={seed})");
    in_fresh_ns("diff", move |ns| {
        let resolver = FixedResolver::all_on_lo([2, 0, 0, 0, 0, 0x11]);
        let mut h = Harness::load(ns, CONFIG, resolver).expect("load");
        let mut model = model_of(&h);
        assert_eq!(model.services.len(), 8);
        assert_eq!(
            model.modes.values().filter(|m| **m != 0).count(),
            2,
            "two services spread by source"
        );
        assert!(
            model.revs.values().any(|r| r.flags & REV_F_STATELESS != 0),
            "the stateless endpoint is marked"
        );
        assert!(!model.locals.is_empty(), "the LB's own address is known");
        assert!(
            model.revs.values().any(|r| r.flags & REV_F_SHARED != 0),
            "the shared endpoint is marked"
        );
        let mut rng = Rng(seed);
        let targets = [
            (Ipv4Addr::new(203, 0, 113, 10), 80u16, proto::TCP),
            (Ipv4Addr::new(203, 0, 113, 10), 53, proto::UDP),
            (Ipv4Addr::new(203, 0, 113, 11), 443, proto::TCP),
            (Ipv4Addr::new(203, 0, 113, 12), 443, proto::TCP),
            (Ipv4Addr::new(203, 0, 113, 11), 444, proto::TCP),
            (Ipv4Addr::new(203, 0, 113, 13), 8443, proto::TCP),
            (Ipv4Addr::new(203, 0, 113, 14), 80, proto::TCP),
            (Ipv4Addr::new(203, 0, 113, 14), 53, proto::UDP),
            (Ipv4Addr::new(203, 0, 113, 10), 81, proto::TCP),
            (Ipv4Addr::new(203, 0, 113, 10), 80, proto::UDP),
            (Ipv4Addr::new(192, 0, 2, 99), 80, proto::TCP),
        ];
        // Clients: 198.51.100.0/24 × a range of ports; a pool of 4096 flows.
        let flow = |rng: &mut Rng| {
            let c = SocketAddrV4::new(
                Ipv4Addr::new(
                    198,
                    51,
                    100,
                    1 + u8::try_from(rng.below(200)).expect("small"),
                ),
                1024 + u16::try_from(rng.below(20)).expect("small"),
            );
            let t = targets[usize::try_from(rng.below(targets.len() as u64)).expect("small")];
            (c, t)
        };
        // Backend ids in order, so a seed replays the same packets.
        let mut ids: Vec<u32> = model.backends.keys().copied().collect();
        ids.sort_unstable();
        let mut mismatches = Vec::new();
        let mut skipped = 0u32;
        let mut seen = [0u64; 64];
        for i in 0..PACKETS {
            let (client, (ip, port, p)) = flow(&mut rng);
            let vip = SocketAddrV4::new(ip, port);
            let mut frame = if p == proto::TCP {
                let flags = match rng.below(100) {
                    0..25 => TCP_SYN,
                    25..80 => TCP_ACK,
                    80..88 => TCP_FIN | TCP_ACK,
                    88..93 => TCP_RST,
                    93..96 => TCP_SYN | TCP_FIN,
                    _ => 0,
                };
                Frame::tcp(client, vip, flags)
            } else {
                Frame::udp(client, vip)
            };
            // A reply from a backend of a flow that may be tracked.
            if rng.chance(15) {
                let id = ids[usize::try_from(rng.below(ids.len() as u64)).expect("small")];
                let b = model.backends[&id];
                let bip = Ipv4Addr::from(b.addr);
                let bport = u16::from_be_bytes(b.port);
                let flags = match rng.below(100) {
                    0..15 => TCP_SYN | TCP_ACK,
                    15..25 => TCP_FIN | TCP_ACK,
                    25..30 => TCP_RST | TCP_ACK,
                    _ => TCP_ACK,
                };
                // Now and then to the LB's own address (its probes' replies).
                let to = if rng.chance(10) {
                    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), client.port())
                } else {
                    client
                };
                frame = Frame::tcp(SocketAddrV4::new(bip, bport), to, flags);
                if p == proto::UDP {
                    frame.l4 = L4::Udp {
                        sport: bport,
                        dport: to.port(),
                        no_csum: false,
                    };
                }
            }
            if rng.chance(3) {
                frame.ttl = 1;
            }
            let mut bytes = frame.build();
            if rng.chance(10) {
                for _ in 0..=rng.below(3) {
                    let at = 12 + usize::try_from(rng.below(48)).expect("small");
                    if at < bytes.len() {
                        bytes[at] ^= 1 << rng.below(8);
                    }
                }
                if rng.chance(20) {
                    bytes.truncate(14 + usize::try_from(rng.below(50)).expect("small"));
                }
            }
            let want = model.classify(&bytes);
            let before = h.counts();
            let (action, out, _) = h.run(&bytes);
            let after = h.counts();
            let moved: Vec<Reason> = ALL_REASONS
                .iter()
                .copied()
                .filter(|r| after[*r as usize] != before[*r as usize])
                .collect();
            let [reason] = moved[..] else {
                mismatches.push(format!("packet {i}: counters moved {moved:?}"));
                continue;
            };
            seen[reason as usize] += 1;
            let got = match reason {
                Reason::Forward | Reason::ForwardFib => {
                    // The backend the kernel chose, from the output's destination.
                    let l3 = if out[12..14] == [0x81, 0x00] { 18 } else { 14 };
                    let dst = [out[l3 + 16], out[l3 + 17], out[l3 + 18], out[l3 + 19]];
                    let dport = [out[l3 + 22], out[l3 + 23]];
                    let is = |b: &ModelBackend| b.addr == dst && b.port == dport;
                    // An endpoint of two services has two ids: the model's, if it is that one.
                    match want {
                        Verdict::Forward(w) if model.backends.get(&w).is_some_and(is) => want,
                        _ => model
                            .backends
                            .iter()
                            .find(|(_, b)| is(b))
                            .map_or(Verdict::Other(Reason::Forward), |(id, _)| {
                                Verdict::Forward(*id)
                            }),
                    }
                }
                Reason::Reply => {
                    let l3 = if out[12..14] == [0x81, 0x00] { 18 } else { 14 };
                    let src = [out[l3 + 12], out[l3 + 13], out[l3 + 14], out[l3 + 15]];
                    Verdict::Reply(src, [out[l3 + 20], out[l3 + 21]])
                }
                r => Verdict::Other(r),
            };
            let action_ok = match reason {
                Reason::Forward | Reason::Reply => action == XDP_TX,
                r if r.is_drop() => action == XDP_DROP,
                _ => action == XDP_PASS || action == XDP_TX,
            };
            if want == Verdict::OutOfScope {
                skipped += 1;
                continue;
            }
            if got != want || !action_ok {
                mismatches.push(format!(
                    "packet {i}: kernel {got:?} (action {action}), model {want:?}; frame {}",
                    lb_integration::packet::hex(&bytes)
                ));
            }
        }
        let summary: Vec<String> = ALL_REASONS
            .iter()
            .filter(|r| seen[**r as usize] > 0)
            .map(|r| format!("{}={}", r.name(), seen[*r as usize]))
            .collect();
        eprintln!(
            "verdicts: {}; out of the model's scope (ICMP): {skipped}",
            summary.join(" ")
        );
        assert!(
            mismatches.is_empty(),
            "{} mismatches (seed {seed}), first ones:\n{}",
            mismatches.len(),
            mismatches
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The traffic really covered the paths it claims to.
        for r in [
            Reason::Forward,
            Reason::Reply,
            Reason::DropNoService,
            Reason::DropNoBackend,
            Reason::DropTtl,
            Reason::DropMalformed,
            Reason::DropTcpFlags,
            Reason::PassNotOurs,
            Reason::PassNotReply,
        ] {
            assert!(seen[r as usize] > 0, "no packet took {}", r.name());
        }
        assert!(
            skipped < PACKETS / 100,
            "{skipped} packets were out of the model's scope"
        );
    });
}
