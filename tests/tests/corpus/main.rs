//! The bad-packet corpus: malformed and unusual frames through the real program
//! (`BPF_PROG_TEST_RUN`), each with a defined verdict, exactly one verdict counter moved, and
//! for forwarded frames the exact output bytes (computed here from scratch: addresses, ports,
//! TTL, MACs and both checksums). Passed frames must come out untouched.
//!
//! Also the attempts to get past an endpoint ACL or an internal VIP with fragments,
//! ICMP-embedded headers and IPv6 extension headers, one test each.

use std::net::{Ipv4Addr, SocketAddrV4, SocketAddrV6};

use lb_common::{csum, flow::proto, hdr, verdict::Reason};
use lb_integration::{
    fixture::{FixedResolver, Harness, XDP_DROP, XDP_PASS, XDP_TX, in_fresh_ns},
    packet::{Frame, L4, LB_MAC, TCP_ACK, TCP_SYN, hex},
};

mod six;

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const ILB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000);
/// Outside the permitted /26 of the ACL endpoint and of the internal VIP.
const OUTSIDER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000);
const B1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const B1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

/// One backend per endpoint, so every forwarded frame's output is known without a model.
const CONFIG: &str = r#"
[agent]
ring_slots = 4096
conntrack_flows = 4096

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11"]
table_size = 251

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11"]
table_size = 251

[[service]]
vip = "203.0.113.10:8080/tcp"
backends = ["192.0.2.11"]
table_size = 251
acl = [{ order = 10, action = "permit", prefix = "198.51.100.0/26" }]

[[service]]
vip = "203.0.113.20:80/tcp"
backends = ["192.0.2.11"]
table_size = 251
internal = ["198.51.100.0/26"]

# The IPv6 VIP of the corpus's IPv6 frames (`ipv6()`), one backend per endpoint.
[[service]]
vip = "[2001:db8::10]:80/tcp"
backends = ["2001:db8:2::11"]
table_size = 251

[[service]]
vip = "[2001:db8::10]:53/udp"
backends = ["2001:db8:2::11"]
table_size = 251

# The IPv6 ACL endpoint and internal VIP of the IPv6 bypass test.
[[service]]
vip = "[2001:db8::10]:8080/tcp"
backends = ["2001:db8:2::11"]
table_size = 251
acl = [{ order = 10, action = "permit", prefix = "2001:db8:1::/64" }]

[[service]]
vip = "[2001:db8::20]:80/tcp"
backends = ["2001:db8:2::11"]
table_size = 251
internal = ["2001:db8:1::/64"]
"#;

const ILB6: &str = "2001:db8::20";

const VIP6: &str = "2001:db8::10";
const B6: &str = "2001:db8:2::11";

fn harness(ns: &lb_integration::netns::Netns) -> Harness {
    let resolver = FixedResolver::all_on_lo(B1_MAC);
    Harness::load(ns, CONFIG, resolver).expect("load and provision")
}

/// What a case must do.
enum Want {
    /// Forwarded with `XDP_TX`, the destination rewritten to this backend address and port.
    Dnat(SocketAddrV4),
    /// The same for an IPv6 frame.
    Dnat6(SocketAddrV6),
    /// `XDP_TX` with exactly these bytes (the echo reply).
    Tx(Vec<u8>),
    Pass,
    Drop,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    want: Want,
    reason: Reason,
}

fn case(name: impl Into<String>, bytes: Vec<u8>, want: Want, reason: Reason) -> Case {
    Case {
        name: name.into(),
        bytes,
        want,
        reason,
    }
}

/// The expected output of a DNAT, computed from scratch: destination address and port, TTL
/// one less, MACs from the next hop, the IPv4 checksum and the L4 checksum recomputed over the
/// IP payload (a zero UDP checksum stays zero). Bytes after the IP packet (Ethernet padding)
/// stay as they were.
fn dnat_from_scratch(input: &[u8], to: SocketAddrV4) -> Vec<u8> {
    let mut b = input.to_vec();
    b[0..6].copy_from_slice(&B1_MAC);
    b[6..12].copy_from_slice(&LB_MAC);
    let mut l3 = 14;
    if u16::from_be_bytes([b[12], b[13]]) == hdr::ETH_P_8021Q {
        l3 = 18;
    }
    let ihl = usize::from(b[l3] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([b[l3 + 2], b[l3 + 3]]));
    b[l3 + 8] -= 1;
    b[l3 + 16..l3 + 20].copy_from_slice(&to.ip().octets());
    b[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = csum::ipv4_header(&b[l3..l3 + ihl]);
    b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    let p = b[l3 + 9];
    let l4 = l3 + ihl;
    b[l4 + 2..l4 + 4].copy_from_slice(&to.port().to_be_bytes());
    let at = if p == proto::TCP { l4 + 16 } else { l4 + 6 };
    if p == proto::TCP || b[at..at + 2] != [0, 0] {
        b[at..at + 2].copy_from_slice(&[0, 0]);
        let src: [u8; 4] = b[l3 + 12..l3 + 16].try_into().expect("4");
        let c = csum::l4_v4(src, to.ip().octets(), p, &b[l4..l3 + tot]);
        b[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    b
}

fn run_cases(h: &mut Harness, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let before = h.counts();
        let (action, out, _) = h.run(&c.bytes);
        let after = h.counts();
        let moved: Vec<(Reason, u64)> = lb_common::verdict::ALL_REASONS
            .iter()
            .map(|r| (*r, after[*r as usize] - before[*r as usize]))
            .filter(|(_, d)| *d != 0)
            .collect();
        let (want_action, want_out) = match &c.want {
            Want::Dnat(to) => (XDP_TX, Some(dnat_from_scratch(&c.bytes, *to))),
            Want::Dnat6(to) => (XDP_TX, Some(six::dnat6_from_scratch(&c.bytes, *to))),
            Want::Tx(b) => (XDP_TX, Some(b.clone())),
            Want::Pass => (XDP_PASS, Some(c.bytes.clone())),
            Want::Drop => (XDP_DROP, None),
        };
        let mut why = Vec::new();
        if action != want_action {
            why.push(format!("action {action}, want {want_action}"));
        }
        if moved != [(c.reason, 1)] {
            why.push(format!(
                "counters moved {moved:?}, want [({:?}, 1)]",
                c.reason
            ));
        }
        if let Some(w) = want_out
            && out != w
        {
            why.push(format!("output\n  got  {}\n  want {}", hex(&out), hex(&w)));
        }
        if !why.is_empty() {
            failures.push(format!("{}: {}", c.name, why.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn with(bytes: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = bytes.to_vec();
    f(&mut b);
    b
}

/// Sets the IPv4 header checksum of the frame's (untagged) header from scratch, after a test
/// changed a header field.
fn fix_ip_csum(b: &mut [u8], l3: usize) {
    let ihl = usize::from(b[l3] & 0x0f) * 4;
    b[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let c = csum::ipv4_header(&b[l3..l3 + ihl]);
    b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

fn icmp(ty: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(rest);
    let c = csum::ipv4_header(&m); // the same one's-complement sum over the message
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

#[expect(clippy::too_many_lines, reason = "a table of cases")]
fn corpus() -> Vec<Case> {
    let b80 = SocketAddrV4::new(B1, 80);
    let b53 = SocketAddrV4::new(B1, 53);
    let syn = Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 80), TCP_SYN);
    let tcp = syn.build();
    let udp_f = Frame::udp(CLIENT, SocketAddrV4::new(VIP, 53));
    let udp = udp_f.build();
    let mut tagged_f = syn.clone();
    tagged_f.vlan = Some(7);
    let tagged = tagged_f.build();
    let l3 = 14;
    let mut v = Vec::new();

    // Every truncation of a TCP SYN to the VIP at and around each header boundary (Ethernet
    // 14, IPv4 34, TCP 54, the frame is 59). Below a whole IPv4 header nothing says where the
    // frame goes: pass. With the header, its total length claims more than the frame holds.
    for len in [14, 15, 20, 26, 33] {
        v.push(case(
            format!("TCP frame cut at {len}"),
            tcp[..len].to_vec(),
            Want::Pass,
            Reason::PassShort,
        ));
    }
    for len in [34, 35, 40, 47, 53, 54, 55, 58] {
        v.push(case(
            format!("TCP frame cut at {len}"),
            tcp[..len].to_vec(),
            Want::Drop,
            Reason::DropMalformed,
        ));
    }
    // The same for UDP (header ends at 42) and for a tagged frame (tag ends at 18).
    for len in [34, 38, 41, 42, 45] {
        v.push(case(
            format!("UDP frame cut at {len}"),
            udp[..len].to_vec(),
            Want::Drop,
            Reason::DropMalformed,
        ));
    }
    for len in [14, 16, 17, 18, 37] {
        v.push(case(
            format!("tagged frame cut at {len}"),
            tagged[..len].to_vec(),
            Want::Pass,
            Reason::PassShort,
        ));
    }
    for len in [38, 57] {
        v.push(case(
            format!("tagged frame cut at {len}"),
            tagged[..len].to_vec(),
            Want::Drop,
            Reason::DropMalformed,
        ));
    }

    // IHL and total length.
    for ihl in [0u8, 1, 4] {
        v.push(case(
            format!("IHL {ihl}"),
            with(&tcp, |b| {
                b[l3] = 0x40 | ihl;
                fix_ip_csum(b, l3);
            }),
            Want::Drop,
            Reason::DropMalformed,
        ));
    }
    v.push(case(
        "IHL 15 beyond the packet",
        with(&tcp, |b| b[l3] = 0x4f),
        Want::Drop,
        Reason::DropMalformed,
    ));
    v.push(case(
        "IP version 6 in an IPv4 frame",
        with(&tcp, |b| b[l3] = 0x65),
        Want::Drop,
        Reason::DropMalformed,
    ));
    v.push(case(
        "IP version 0",
        with(&tcp, |b| b[l3] = 0x05),
        Want::Drop,
        Reason::DropMalformed,
    ));
    for tot in [0u16, 19, 200, 0xffff] {
        v.push(case(
            format!("total length {tot}"),
            with(&tcp, |b| {
                b[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
                fix_ip_csum(b, l3);
            }),
            Want::Drop,
            Reason::DropMalformed,
        ));
    }
    v.push(case(
        "total length 20: no room for the TCP header",
        with(&tcp, |b| {
            b[l3 + 2..l3 + 4].copy_from_slice(&20u16.to_be_bytes());
            fix_ip_csum(b, l3);
        }),
        Want::Drop,
        Reason::DropMalformed,
    ));
    // Ethernet padding after the IP packet is legal: forwarded, padding untouched.
    v.push(case(
        "Ethernet padding after the packet",
        with(&tcp, |b| b.extend_from_slice(&[0; 7])),
        Want::Dnat(b80),
        Reason::Forward,
    ));
    let mut opts = syn.clone();
    opts.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    v.push(case(
        "IP options (IHL 6)",
        opts.build(),
        Want::Drop,
        Reason::DropIpOptions,
    ));

    // Fragments.
    for (name, frag) in [
        ("first fragment (MF)", 0x2000u16),
        ("non-first fragment", 100),
        ("last fragment", 0x0010),
        ("MF and DF", 0x6000),
    ] {
        let mut f = syn.clone();
        f.frag = frag;
        v.push(case(name, f.build(), Want::Drop, Reason::DropFragment));
    }
    let mut f = syn.clone();
    f.frag = 0;
    v.push(case(
        "no DF, not a fragment",
        f.build(),
        Want::Dnat(b80),
        Reason::Forward,
    ));
    let mut f = syn.clone();
    f.frag = 0x8000; // the reserved ("evil") bit is not a fragment
    v.push(case(
        "reserved flag bit",
        f.build(),
        Want::Dnat(b80),
        Reason::Forward,
    ));

    // TTL.
    for ttl in [0u8, 1] {
        let mut f = syn.clone();
        f.ttl = ttl;
        v.push(case(
            format!("TTL {ttl}"),
            f.build(),
            Want::Drop,
            Reason::DropTtl,
        ));
    }
    let mut f = syn.clone();
    f.ttl = 2;
    v.push(case("TTL 2", f.build(), Want::Dnat(b80), Reason::Forward));

    // VLAN and QinQ.
    v.push(case(
        "802.1Q tagged",
        tagged.clone(),
        Want::Dnat(b80),
        Reason::Forward,
    ));
    v.push(case(
        "QinQ (802.1ad outer tag)",
        with(&tagged, |b| {
            b[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
        }),
        Want::Pass,
        Reason::PassNotIpv4,
    ));
    v.push(case(
        "two 802.1Q tags",
        with(&tagged, |b| {
            b.splice(16..16, [0x81, 0x00, 0x00, 0x08]);
        }),
        Want::Pass,
        Reason::PassNotIpv4,
    ));

    // TCP data offset.
    for doff in [0u8, 4, 15] {
        v.push(case(
            format!("TCP data offset {doff}"),
            with(&tcp, |b| b[l3 + 20 + 12] = doff << 4),
            Want::Drop,
            Reason::DropMalformed,
        ));
    }
    v.push(case(
        "TCP data offset 6 (with options)",
        // Four payload bytes become options; the input's checksum is made valid again, as the
        // LB patches checksums incrementally and so carries an input's error over.
        with(&tcp, |b| {
            b[l3 + 20 + 12] = 6 << 4;
            b[l3 + 36..l3 + 38].copy_from_slice(&[0, 0]);
            let src: [u8; 4] = b[l3 + 12..l3 + 16].try_into().expect("4");
            let dst: [u8; 4] = b[l3 + 16..l3 + 20].try_into().expect("4");
            let c = csum::l4_v4(src, dst, proto::TCP, &b[l3 + 20..]);
            b[l3 + 36..l3 + 38].copy_from_slice(&c.to_be_bytes());
        }),
        Want::Dnat(b80),
        Reason::Forward,
    ));
    // TCP flag combinations to the VIP: a non-SYN without state is forwarded by the table (a
    // RST or FIN is not tracked); combinations no stack sends are dropped.
    for (name, flags, forwarded) in [
        ("SYN+ACK", TCP_SYN | TCP_ACK, true),
        ("RST", 0x04, true),
        ("FIN+ACK", 0x11, true),
        ("no flags", 0, false),
        ("all flags", 0xff, false),
        ("SYN+FIN", 0x03, false),
        ("SYN+RST", 0x06, false),
        ("FIN+PSH+URG", 0x29, false),
    ] {
        let f = Frame::tcp(
            SocketAddrV4::new(*CLIENT.ip(), 41000),
            SocketAddrV4::new(VIP, 80),
            flags,
        );
        let (want, reason) = if forwarded {
            (Want::Dnat(b80), Reason::Forward)
        } else {
            (Want::Drop, Reason::DropTcpFlags)
        };
        v.push(case(format!("TCP {name}"), f.build(), want, reason));
    }

    // UDP length.
    for ulen in [0u16, 7, 14, 0xffff] {
        v.push(case(
            format!("UDP length {ulen}"),
            with(&udp, |b| {
                b[l3 + 20 + 4..l3 + 20 + 6].copy_from_slice(&ulen.to_be_bytes());
            }),
            Want::Drop,
            Reason::DropMalformed,
        ));
    }
    v.push(case(
        "UDP length 8 (empty datagram)",
        {
            let mut f = udp_f.clone();
            f.payload.clear();
            f.build()
        },
        Want::Dnat(b53),
        Reason::Forward,
    ));
    let mut f = udp_f.clone();
    f.l4 = L4::Udp {
        sport: 40000,
        dport: 53,
        no_csum: true,
    };
    v.push(case(
        "UDP without checksum",
        f.build(),
        Want::Dnat(b53),
        Reason::Forward,
    ));

    // Broadcast and multicast.
    for (name, dst) in [
        ("limited broadcast", Ipv4Addr::BROADCAST),
        ("multicast 224.0.0.1", Ipv4Addr::new(224, 0, 0, 1)),
        ("multicast 239.1.2.3", Ipv4Addr::new(239, 1, 2, 3)),
    ] {
        let f = Frame::udp(CLIENT, SocketAddrV4::new(dst, 53));
        v.push(case(name, f.build(), Want::Pass, Reason::PassNotOurs));
    }
    let mut f = syn.clone();
    f.dmac = [0xff; 6];
    v.push(case(
        "Ethernet broadcast to the VIP",
        f.build(),
        Want::Dnat(b80),
        Reason::Forward,
    ));

    // Other protocols, ports and addresses.
    for (name, p) in [("GRE", 47u8), ("ESP", 50), ("SCTP", 132), ("IGMP", 2)] {
        let f = Frame::raw(*CLIENT.ip(), VIP, p, vec![0; 16]);
        v.push(case(
            format!("{name} to the VIP"),
            f.build(),
            Want::Drop,
            Reason::DropProto,
        ));
    }
    v.push(case(
        "TCP to a VIP port without a service",
        Frame::tcp(CLIENT, SocketAddrV4::new(VIP, 81), TCP_SYN).build(),
        Want::Drop,
        Reason::DropNoService,
    ));
    v.push(case(
        "UDP to a TCP-only port",
        Frame::udp(CLIENT, SocketAddrV4::new(VIP, 80)).build(),
        Want::Drop,
        Reason::DropNoService,
    ));
    v.push(case(
        "TCP to another address",
        Frame::tcp(
            CLIENT,
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 80),
            TCP_SYN,
        )
        .build(),
        Want::Pass,
        Reason::PassNotOurs,
    ));
    v.push(case(
        "ARP",
        with(&tcp, |b| {
            b[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        }),
        Want::Pass,
        Reason::PassNotIpv4,
    ));

    // ICMP to the VIP.
    let ping = Frame::raw(*CLIENT.ip(), VIP, proto::ICMP, icmp(8, 0, &[0, 1, 0, 1]));
    let mut reply = Frame::raw(VIP, *CLIENT.ip(), proto::ICMP, icmp(0, 0, &[0, 1, 0, 1]));
    reply.smac = ping.dmac;
    reply.dmac = ping.smac;
    v.push(case(
        "ICMP echo request",
        ping.build(),
        Want::Tx(reply.build()),
        Reason::EchoReply,
    ));
    v.push(case(
        "ICMP echo with code 1",
        Frame::raw(*CLIENT.ip(), VIP, proto::ICMP, icmp(8, 1, &[0, 1, 0, 1])).build(),
        Want::Drop,
        Reason::DropProto,
    ));
    v.push(case(
        "ICMP timestamp request",
        Frame::raw(*CLIENT.ip(), VIP, proto::ICMP, icmp(13, 0, &[0; 16])).build(),
        Want::Drop,
        Reason::DropProto,
    ));
    v.push(case(
        "ICMP header cut",
        Frame::raw(*CLIENT.ip(), VIP, proto::ICMP, vec![3, 4]).build(),
        Want::Drop,
        Reason::DropMalformed,
    ));
    // An error whose embedded header is cut short, and one about a flow nobody has.
    let embedded = Frame::tcp(
        SocketAddrV4::new(VIP, 80),
        SocketAddrV4::new(*CLIENT.ip(), 45000),
        TCP_ACK,
    )
    .build();
    let mut rest = vec![0, 0, 0x05, 0xdc];
    rest.extend_from_slice(&embedded[14..14 + 20 + 4]);
    v.push(case(
        "ICMP error, embedded L4 cut at 4 bytes",
        Frame::raw(
            Ipv4Addr::new(192, 0, 2, 1),
            VIP,
            proto::ICMP,
            icmp(3, 4, &rest),
        )
        .build(),
        Want::Drop,
        Reason::DropIcmpUnmatched,
    ));
    let mut rest = vec![0, 0, 0x05, 0xdc];
    rest.extend_from_slice(&embedded[14..14 + 20 + 8]);
    v.push(case(
        "ICMP error about an untracked flow",
        Frame::raw(
            Ipv4Addr::new(192, 0, 2, 1),
            VIP,
            proto::ICMP,
            icmp(3, 4, &rest),
        )
        .build(),
        Want::Drop,
        Reason::DropIcmpUnmatched,
    ));

    v.extend(six::corpus6());
    v
}

#[test]
fn every_corpus_packet_has_its_defined_outcome() {
    in_fresh_ns("corpus", |ns| {
        let mut h = harness(ns);
        let cases = corpus();
        assert!(cases.len() >= 60, "the corpus has {} cases", cases.len());
        let six = cases
            .iter()
            .filter(|c| {
                c.bytes.get(12..14) == Some(&[0x86, 0xdd][..])
                    || c.bytes.get(16..18) == Some(&[0x86, 0xdd][..])
            })
            .count();
        assert!(six >= 40, "the corpus has {six} IPv6 frames");
        run_cases(&mut h, &cases);
    });
}

/// Fragments cannot get past an ACL or an internal VIP: every fragment to a VIP is dropped
/// before any lookup (ports are unknown in non-first fragments), from inside or outside.
#[test]
fn fragments_do_not_get_past_an_acl_or_an_internal_vip() {
    in_fresh_ns("bypass-frag", |ns| {
        let mut h = harness(ns);
        let mut cases = Vec::new();
        for (what, dst) in [
            ("ACL endpoint", SocketAddrV4::new(VIP, 8080)),
            ("internal VIP", SocketAddrV4::new(ILB, 80)),
        ] {
            for (kind, frag) in [
                ("first", 0x2000u16),
                ("non-first", 0x0010),
                ("last", 0x0020),
            ] {
                let mut f = Frame::tcp(OUTSIDER, dst, TCP_SYN);
                f.frag = frag;
                cases.push(case(
                    format!("{kind} fragment to the {what}"),
                    f.build(),
                    Want::Drop,
                    Reason::DropFragment,
                ));
            }
        }
        // The same source without fragments is refused by the rule itself.
        cases.push(case(
            "whole SYN to the ACL endpoint",
            Frame::tcp(OUTSIDER, SocketAddrV4::new(VIP, 8080), TCP_SYN).build(),
            Want::Drop,
            Reason::DropAcl,
        ));
        cases.push(case(
            "whole SYN to the internal VIP",
            Frame::tcp(OUTSIDER, SocketAddrV4::new(ILB, 80), TCP_SYN).build(),
            Want::Drop,
            Reason::DropNotInternal,
        ));
        run_cases(&mut h, &cases);
    });
}

/// ICMP errors cannot get past an ACL or an internal VIP: an error whose embedded header
/// names a flow the outsider would like to have is unmatched (errors never create flows),
/// an internal VIP takes no error from outside at all, and afterwards the outsider's TCP is
/// still refused.
#[test]
fn icmp_embedded_headers_do_not_get_past_an_acl_or_an_internal_vip() {
    in_fresh_ns("bypass-icmp", |ns| {
        let mut h = harness(ns);
        // A permitted client's flow to the internal VIP exists (so an error could match it).
        let inside = Frame::tcp(CLIENT, SocketAddrV4::new(ILB, 80), TCP_SYN);
        assert_eq!(h.run(&inside.build()).0, XDP_TX);
        let error_about = |vip: SocketAddrV4, client: SocketAddrV4, from: Ipv4Addr| {
            let embedded = Frame::tcp(vip, client, TCP_ACK).build();
            let mut rest = vec![0, 0, 0x05, 0xdc];
            rest.extend_from_slice(&embedded[14..14 + 28]);
            Frame::raw(from, *vip.ip(), proto::ICMP, icmp(3, 4, &rest)).build()
        };
        let cases = vec![
            case(
                "error from the outsider about its own would-be ACL flow",
                error_about(SocketAddrV4::new(VIP, 8080), OUTSIDER, *OUTSIDER.ip()),
                Want::Drop,
                Reason::DropIcmpUnmatched,
            ),
            case(
                "error from outside about a tracked internal flow",
                error_about(SocketAddrV4::new(ILB, 80), CLIENT, *OUTSIDER.ip()),
                Want::Drop,
                Reason::DropNotInternal,
            ),
            case(
                "ping to the internal VIP from outside",
                Frame::raw(*OUTSIDER.ip(), ILB, proto::ICMP, icmp(8, 0, &[0, 1, 0, 1])).build(),
                Want::Drop,
                Reason::DropNotInternal,
            ),
            case(
                "the outsider's TCP afterwards (ACL)",
                Frame::tcp(OUTSIDER, SocketAddrV4::new(VIP, 8080), TCP_ACK).build(),
                Want::Drop,
                Reason::DropAcl,
            ),
            case(
                "the outsider's TCP afterwards (internal VIP)",
                Frame::tcp(OUTSIDER, SocketAddrV4::new(ILB, 80), TCP_ACK).build(),
                Want::Drop,
                Reason::DropNotInternal,
            ),
        ];
        run_cases(&mut h, &cases);
    });
}
