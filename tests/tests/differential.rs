//! Randomized differential test: 100 000 random packets of both families through the real
//! program (`BPF_PROG_TEST_RUN`) and through `lb_common::model`, the host model of parse,
//! classify and select. For each packet the kernel's verdict (action and the one reason counter
//! that moved) and its chosen backend (read from the output packet's destination) must equal
//! the model's, and so must the output bytes (`lb_integration::differential::compare`: the
//! translated fields only, checksums valid exactly when the input's were). Zero mismatches.
//!
//! The traffic, half IPv4 and half IPv6, over the same service shapes in each family: flows
//! from a pool (so most packets belong to tracked flows), SYNs, ACKs, FINs, RSTs and refused
//! flag combinations, TCP and UDP, to service ports, to other ports of a VIP and to other
//! addresses, replies from the backends (SYN-ACKs among them, which test the reused-port rule),
//! TTL and hop limit 1, and one packet in ten with random bytes of its headers flipped, which
//! exercises every parse check. IPv6 packets also carry chains of extension headers (up to one
//! past the bound, routing headers with segments left, fragment headers), and now and then are
//! ICMPv6 (neighbour discovery, echo, errors, other types). A backend endpoint serves two
//! services, so replies are matched both through the reverse-service entry and through
//! reverse entries. The seed is printed, so a failure can be replayed. The program runs with a
//! close timeout far longer than the test (the model treats closed flows as within it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::{
    addr::{as_v4, to_ip},
    flow::proto,
    hdr::ext,
    maps::{REV_F_SHARED, REV_F_STATELESS},
    model::Model,
    verdict::{ALL_REASONS, Reason},
};
use lb_integration::{
    differential::{Agreed, CONFIG, checksums_ok, compare, model_of, resolver},
    fixture::{Harness, in_fresh_ns},
    packet::{Frame, Frame6, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const PACKETS: u32 = 100_000;

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

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// `2001:db8:<a>::<b>`.
fn v6(a: u16, b: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, a, 0, 0, 0, 0, b))
}

/// A TCP (with `flags`) or UDP packet's frame of either family; an IPv6 one carries `exts`.
fn frame(
    src: SocketAddr,
    dst: SocketAddr,
    tcp: Option<u8>,
    ttl: u8,
    exts: Vec<(u8, Vec<u8>)>,
) -> Vec<u8> {
    let l4 = match tcp {
        Some(flags) => L4::Tcp {
            sport: src.port(),
            dport: dst.port(),
            flags,
        },
        None => L4::Udp {
            sport: src.port(),
            dport: dst.port(),
            no_csum: false,
        },
    };
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            let mut f = Frame::tcp(s, d, 0);
            (f.l4, f.ttl) = (l4, ttl);
            f.build()
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            let mut f = Frame6::tcp(s, d, 0);
            (f.l4, f.hop_limit, f.ext) = (l4, ttl, exts);
            f.build()
        }
        _ => unreachable!("one family per packet"),
    }
}

/// A chain of one to five extension headers (the fast path walks four): hop-by-hop and
/// destination options of one or two 8-byte units, routing headers (now and then with
/// segments left) and, rarely, a fragment header.
fn ext_chain(rng: &mut Rng) -> Vec<(u8, Vec<u8>)> {
    (0..=rng.below(5))
        .map(|_| {
            let kind = match rng.below(100) {
                0..40 => ext::HOP_BY_HOP,
                40..75 => ext::DEST_OPTS,
                75..93 => ext::ROUTING,
                _ => ext::FRAGMENT,
            };
            let units = if kind != ext::FRAGMENT && rng.chance(20) {
                2
            } else {
                1
            };
            let mut body = vec![0u8; 8 * units];
            body[1] = u8::try_from(units - 1).expect("small");
            if kind == ext::ROUTING {
                // Type 4 (segment routing); segments left in byte 3.
                body[2] = 4;
                body[3] = u8::from(rng.chance(30));
            }
            (kind, body)
        })
        .collect()
}

/// An ICMPv6 message of a type the fast path tells apart: neighbour solicitation and
/// advertisement (the kernel's), echo request and reply, an error, and one it does not serve.
fn icmp6(rng: &mut Rng, src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        unreachable!("IPv6 addresses")
    };
    let ty = [135u8, 136, 128, 129, 1, 200][usize::try_from(rng.below(6)).expect("small")];
    let mut body = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&[0u8; 16]);
    Frame6::raw(s, d, proto::ICMPV6, body).build()
}

/// An ICMP message of either family from `src` to `dst`: type, code, the four bytes after the
/// checksum, then `embedded` (an error's offending packet); the checksum computed (ICMPv6's by
/// the frame builder, over its pseudo-header).
fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8, embedded: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0, 0x05, 0x00];
    m.extend_from_slice(embedded);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let c = lb_common::csum::ipv4_header(&m);
            m[2..4].copy_from_slice(&c.to_be_bytes());
            Frame::raw(s, d, proto::ICMP, m).build()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => Frame6::raw(s, d, proto::ICMPV6, m).build(),
        _ => unreachable!("one family per packet"),
    }
}

/// The packet an ICMP error embeds: `inner`'s from its network header on, cut now and then
/// to 8 bytes of transport header (no TCP checksum) or fewer.
fn offending(rng: &mut Rng, inner: &[u8]) -> Vec<u8> {
    let l3 = &inner[14..];
    let hdr = if l3[0] >> 4 == 6 { 40 } else { 20 };
    let keep = match rng.below(10) {
        0..6 => l3.len(),
        6..9 => hdr + 8,
        _ => hdr + usize::try_from(rng.below(8)).expect("small"),
    };
    l3[..keep.min(l3.len())].to_vec()
}

/// One family's share of the traffic: its clients, the destinations they send to (service
/// ports, other ports of a VIP, another address) and its backends' ids.
struct Family {
    v6: bool,
    targets: Vec<(SocketAddr, u8)>,
    ids: Vec<u32>,
}

impl Family {
    fn client(&self, rng: &mut Rng) -> SocketAddr {
        // Host 1 more often: it is inside the internal VIPs' prefixes, so its flows (HA ports
        // among them) and the errors about them take the internal paths.
        let host = if rng.chance(4) {
            1
        } else {
            1 + u8::try_from(rng.below(200)).expect("small")
        };
        let port = 1024 + u16::try_from(rng.below(20)).expect("small");
        let ip = if self.v6 {
            v6(1, u16::from(host))
        } else {
            v4(198, 51, 100, host)
        };
        SocketAddr::new(ip, port)
    }
}

fn families(model: &Model) -> [Family; 2] {
    let shapes = |vip: &dyn Fn(u16) -> IpAddr, other: IpAddr| {
        vec![
            (SocketAddr::new(vip(0x10), 80), proto::TCP),
            (SocketAddr::new(vip(0x10), 53), proto::UDP),
            (SocketAddr::new(vip(0x11), 443), proto::TCP),
            (SocketAddr::new(vip(0x12), 443), proto::TCP),
            (SocketAddr::new(vip(0x11), 444), proto::TCP),
            (SocketAddr::new(vip(0x14), 80), proto::TCP),
            (SocketAddr::new(vip(0x14), 53), proto::UDP),
            (SocketAddr::new(vip(0x10), 81), proto::TCP),
            (SocketAddr::new(vip(0x10), 80), proto::UDP),
            (SocketAddr::new(other, 80), proto::TCP),
            // The endpoint ACL, and the internal VIP's HA ports (any port, both protocols).
            (SocketAddr::new(vip(0x15), 80), proto::TCP),
            (SocketAddr::new(vip(0x16), 80), proto::TCP),
            (SocketAddr::new(vip(0x16), 5432), proto::TCP),
            (SocketAddr::new(vip(0x16), 53), proto::UDP),
            // The PIP, whose instance is also a backend of 0x11:443.
            (SocketAddr::new(vip(0x17), 22), proto::TCP),
            (SocketAddr::new(vip(0x17), 443), proto::UDP),
        ]
    };
    let mut t4 = shapes(
        &|x| v4(203, 0, 113, u8::try_from(x - 6).expect("small")),
        v4(192, 0, 2, 99),
    );
    t4.push((SocketAddr::new(v4(203, 0, 113, 13), 8443), proto::TCP));
    // Floating IP: l2, IPIP and GUE.
    t4.push((SocketAddr::new(v4(203, 0, 113, 30), 80), proto::TCP));
    t4.push((SocketAddr::new(v4(203, 0, 113, 31), 53), proto::UDP));
    t4.push((SocketAddr::new(v4(203, 0, 113, 32), 443), proto::TCP));
    let mut t6 = shapes(&|x| v6(3, x), v6(2, 0x99));
    t6.push((SocketAddr::new(v6(3, 0x13), 8443), proto::TCP));
    t6.push((SocketAddr::new(v6(3, 0x31), 80), proto::TCP));
    t6.push((SocketAddr::new(v6(3, 0x32), 53), proto::UDP));
    // Backend ids in order, so a seed replays the same packets.
    let ids = |v6: bool| {
        let mut ids: Vec<u32> = model
            .backends
            .iter()
            .filter(|(_, b)| as_v4(&b.addr).is_none() == v6)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    };
    [
        Family {
            v6: false,
            targets: t4,
            ids: ids(false),
        },
        Family {
            v6: true,
            targets: t6,
            ids: ids(true),
        },
    ]
}

#[test]
fn kernel_and_model_agree_on_100k_random_packets_of_both_families() {
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
    // The checksum check itself can fail.
    for f in [
        frame(
            "198.51.100.1:1000".parse().expect("addr"),
            "203.0.113.10:53".parse().expect("addr"),
            None,
            64,
            Vec::new(),
        ),
        frame(
            "[2001:db8:1::1]:1000".parse().expect("addr"),
            "[2001:db8:3::10]:80".parse().expect("addr"),
            Some(TCP_ACK),
            64,
            Vec::new(),
        ),
    ] {
        assert_eq!(checksums_ok(&f), Some((true, true)));
        let mut bad = f.clone();
        *bad.last_mut().expect("payload") ^= 1;
        assert_eq!(checksums_ok(&bad), Some((true, false)));
    }
    in_fresh_ns("diff", move |ns| {
        let mut h = Harness::load(ns, CONFIG, resolver()).expect("load");
        let mut model = model_of(&h);
        assert_eq!(model.services.len(), 29);
        assert_eq!(model.encap.len(), 5, "the floating-IP services");
        assert_eq!(
            model.modes.values().filter(|m| **m != 0).count(),
            4,
            "two services of each family spread by source"
        );
        let marked = |flag: u16, v6: bool| {
            model
                .revs
                .values()
                .any(|r| r.flags & flag != 0 && as_v4(&r.vip).is_none() == v6)
        };
        assert!(
            marked(REV_F_STATELESS, false) && marked(REV_F_STATELESS, true),
            "the stateless endpoint of each family is marked"
        );
        assert_eq!(model.locals.len(), 2, "the LB's own address in each family");
        assert!(
            marked(REV_F_SHARED, false) && marked(REV_F_SHARED, true),
            "the shared endpoint of each family is marked"
        );
        let fams = families(&model);
        assert!(
            fams.iter().all(|f| f.ids.len() > 10),
            "backends of both families"
        );
        let mut rng = Rng(seed);
        let mut mismatches = Vec::new();
        let mut skipped = 0u32;
        // Verdicts seen, per family.
        let mut seen = [[0u64; 64]; 2];
        for i in 0..PACKETS {
            let fam = &fams[usize::from(rng.chance(50))];
            let client = fam.client(&mut rng);
            let (dst, p) =
                fam.targets[usize::try_from(rng.below(fam.targets.len() as u64)).expect("small")];
            let ttl = if rng.chance(3) { 1 } else { 64 };
            let exts = if fam.v6 && rng.chance(10) {
                ext_chain(&mut rng)
            } else {
                Vec::new()
            };
            let mut bytes = if p == proto::TCP {
                let flags = match rng.below(100) {
                    0..25 => TCP_SYN,
                    25..80 => TCP_ACK,
                    80..88 => TCP_FIN | TCP_ACK,
                    88..93 => TCP_RST,
                    93..96 => TCP_SYN | TCP_FIN,
                    _ => 0,
                };
                frame(client, dst, Some(flags), ttl, exts.clone())
            } else {
                frame(client, dst, None, ttl, exts.clone())
            };
            // A reply from a backend of a flow that may be tracked.
            if rng.chance(15) {
                let id = fam.ids[usize::try_from(rng.below(fam.ids.len() as u64)).expect("small")];
                let b = model.backends[&id];
                let from = SocketAddr::new(to_ip(&b.addr), u16::from_be_bytes(b.port));
                let flags = match rng.below(100) {
                    0..15 => TCP_SYN | TCP_ACK,
                    15..25 => TCP_FIN | TCP_ACK,
                    25..30 => TCP_RST | TCP_ACK,
                    _ => TCP_ACK,
                };
                // Now and then to the LB's own address (its probes' replies).
                let to = match (fam.v6, rng.chance(10)) {
                    (false, true) => SocketAddr::new(v4(192, 0, 2, 1), client.port()),
                    (true, true) => SocketAddr::new(v6(2, 1), client.port()),
                    _ => client,
                };
                let tcp = (p == proto::TCP).then_some(flags);
                bytes = frame(from, to, tcp, ttl, exts);
            }
            // Hairpin SNAT: a backend of the internal VIP 0x18:80 connecting to it, and the
            // chosen backend's replies to VIP:SNAT port (of a flow the model tracks).
            if rng.chance(4) {
                let (vip, b) = if fam.v6 {
                    (v6(3, 0x18), v6(2, 0x40 + u16::from(rng.chance(50))))
                } else {
                    (
                        v4(203, 0, 113, 18),
                        v4(192, 0, 2, 40 + u8::from(rng.chance(50))),
                    )
                };
                let from = SocketAddr::new(b, client.port());
                let flags = match rng.below(10) {
                    0..3 => TCP_SYN,
                    3..8 => TCP_ACK,
                    8 => TCP_FIN | TCP_ACK,
                    _ => TCP_RST,
                };
                bytes = frame(from, SocketAddr::new(vip, 80), Some(flags), ttl, Vec::new());
                let mut replies: Vec<_> = model
                    .hairpin_replies
                    .keys()
                    .filter(|k| as_v4(&k.src).is_none() == fam.v6)
                    .copied()
                    .collect();
                if !replies.is_empty() && rng.chance(50) {
                    replies.sort_unstable_by_key(|k| (k.src, k.sport, k.dst, k.dport));
                    let k =
                        replies[usize::try_from(rng.below(replies.len() as u64)).expect("small")];
                    let at = |a, p| SocketAddr::new(to_ip(&a), u16::from_be_bytes(p));
                    let flags = if rng.chance(20) {
                        TCP_SYN | TCP_ACK
                    } else {
                        TCP_ACK
                    };
                    bytes = frame(
                        at(k.src, k.sport),
                        at(k.dst, k.dport),
                        Some(flags),
                        ttl,
                        Vec::new(),
                    );
                }
            }
            // ICMP about the flows: an error to the VIP about its reply to the client (which
            // the flow's backend must get), an error from a backend (or a router beside it)
            // about a packet sent to it (which the client must get, as from the VIP), an echo
            // request, and errors and other types that match nothing.
            if rng.chance(6) {
                let udp = p == proto::UDP;
                let tcp = (!udp).then_some(TCP_ACK);
                let (ty, code) = match (fam.v6, rng.below(4)) {
                    (false, 0) => (11, 0),
                    (false, _) => (3, 4),
                    (true, 0) => (1, 4),
                    (true, _) => (2, 0),
                };
                bytes = match rng.below(10) {
                    0..4 => {
                        let reply = frame(dst, client, tcp, 64, Vec::new());
                        let e = offending(&mut rng, &reply);
                        // From the client, or a router inside the internal prefixes.
                        let from = match (rng.chance(50), fam.v6) {
                            (true, _) => client.ip(),
                            (false, false) => v4(198, 51, 100, 0),
                            (false, true) => v6(1, 0),
                        };
                        icmp(from, dst.ip(), ty, code, &e)
                    }
                    4..8 => {
                        let id = fam.ids
                            [usize::try_from(rng.below(fam.ids.len() as u64)).expect("small")];
                        let b = model.backends[&id];
                        let port = match u16::from_be_bytes(b.port) {
                            0 => dst.port(),
                            p => p,
                        };
                        let dip = SocketAddr::new(to_ip(&b.addr), port);
                        let sent = frame(client, dip, tcp, 63, Vec::new());
                        let e = offending(&mut rng, &sent);
                        let router = if fam.v6 {
                            v6(2, 0xfe)
                        } else {
                            v4(192, 0, 2, 254)
                        };
                        let from = if rng.chance(50) { dip.ip() } else { router };
                        icmp(from, client.ip(), ty, code, &e)
                    }
                    8 => {
                        let (ty, code) = if fam.v6 { (128, 0) } else { (8, 0) };
                        icmp(client.ip(), dst.ip(), ty, code, &[0; 16])
                    }
                    _ => {
                        let ty = [3u8, 5, 13, 200, 1, 2, 129]
                            [usize::try_from(rng.below(7)).expect("small")];
                        icmp(client.ip(), dst.ip(), ty, 0, &[0x45; 28])
                    }
                };
            }
            if fam.v6 && rng.chance(2) {
                let to = if rng.chance(80) {
                    dst.ip()
                } else {
                    client.ip()
                };
                bytes = icmp6(&mut rng, client.ip(), to);
            }
            let mutated = rng.chance(10);
            if mutated {
                let span = u64::try_from(bytes.len().min(112) - 12).expect("small");
                for _ in 0..=rng.below(3) {
                    let at = 12 + usize::try_from(rng.below(span)).expect("small");
                    bytes[at] ^= 1 << rng.below(8);
                }
                if rng.chance(20) {
                    let keep = 14 + rng.below(u64::try_from(bytes.len() - 14).expect("small"));
                    bytes.truncate(usize::try_from(keep).expect("small"));
                }
            }
            match compare(&mut h, &mut model, &bytes) {
                Ok(Agreed::Verdict(r)) => seen[usize::from(fam.v6)][r as usize] += 1,
                Ok(Agreed::OutOfScope(_)) => skipped += 1,
                Err(e) => mismatches.push(format!(
                    "packet {i}{}: {e}",
                    if mutated { " (mutated)" } else { "" }
                )),
            }
        }
        for (fam, seen) in ["IPv4", "IPv6"].iter().zip(&seen) {
            let summary: Vec<String> = ALL_REASONS
                .iter()
                .filter(|r| seen[**r as usize] > 0)
                .map(|r| format!("{}={}", r.name(), seen[*r as usize]))
                .collect();
            eprintln!("{fam} verdicts: {}", summary.join(" "));
        }
        eprintln!(
            "out of the model's scope (a hairpin reply with its connecting backend gone): {skipped}"
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
        // The traffic really covered the paths it claims to, in each family.
        let both = [
            Reason::Forward,
            Reason::Reply,
            Reason::DropNoService,
            Reason::DropNoBackend,
            Reason::DropTtl,
            Reason::DropMalformed,
            Reason::DropTcpFlags,
            Reason::PassNotOurs,
            Reason::PassNotReply,
            Reason::DropAcl,
            Reason::DropNotInternal,
            Reason::PipIn,
            Reason::PipOut,
            Reason::EchoReply,
            Reason::IcmpToBackend,
            Reason::IcmpToClient,
            Reason::DropIcmpUnmatched,
            Reason::HairpinSnat,
            Reason::HairpinReply,
            Reason::ForwardEncap,
        ];
        for (fam, seen) in ["IPv4", "IPv6"].iter().zip(&seen) {
            for r in both {
                assert!(seen[r as usize] > 0, "no {fam} packet took {}", r.name());
            }
        }
        for r in [
            Reason::DropExtHeaders,
            Reason::DropRoutingHeader,
            Reason::DropFragment,
            Reason::DropProto,
            Reason::PassNdp,
        ] {
            assert!(seen[1][r as usize] > 0, "no IPv6 packet took {}", r.name());
        }
        // Every backend stays live here, so no hairpin reply leaves the model's scope.
        assert_eq!(skipped, 0, "packets out of the model's scope");
    });
}
