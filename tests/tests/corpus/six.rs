//! The corpus's IPv6 part: frames to the IPv6 VIP and elsewhere (every extension-header
//! case, fragments, hop limits, lengths, ICMPv6, neighbour discovery), their expected output
//! computed from scratch, and the bypass test over IPv6 extension headers.

use std::net::{Ipv6Addr, SocketAddrV6};

use lb_common::{csum, flow::proto, hdr, verdict::Reason};
use lb_integration::{
    fixture::in_fresh_ns,
    packet::{CLIENT_MAC, Frame6, LB_MAC, TCP_SYN},
};

use super::{B1_MAC, B6, Case, ILB6, VIP6, Want, case, harness, run_cases, with};

/// [`dnat_from_scratch`] for IPv6: the extension headers walked to find the transport header,
/// the hop limit one less, the checksum recomputed over the IPv6 pseudo-header.
pub fn dnat6_from_scratch(input: &[u8], to: SocketAddrV6) -> Vec<u8> {
    let mut b = input.to_vec();
    b[0..6].copy_from_slice(&B1_MAC);
    b[6..12].copy_from_slice(&LB_MAC);
    let l3 = if u16::from_be_bytes([b[12], b[13]]) == hdr::ETH_P_8021Q {
        18
    } else {
        14
    };
    let end = l3 + 40 + usize::from(u16::from_be_bytes([b[l3 + 4], b[l3 + 5]]));
    b[l3 + 7] -= 1;
    b[l3 + 24..l3 + 40].copy_from_slice(&to.ip().octets());
    let (mut next, mut l4) = (b[l3 + 6], l3 + 40);
    while matches!(next, 0 | 43 | 60) {
        next = b[l4];
        l4 += (usize::from(b[l4 + 1]) + 1) * 8;
    }
    b[l4 + 2..l4 + 4].copy_from_slice(&to.port().to_be_bytes());
    let at = if next == proto::TCP { l4 + 16 } else { l4 + 6 };
    b[at..at + 2].copy_from_slice(&[0, 0]);
    let src: [u8; 16] = b[l3 + 8..l3 + 24].try_into().expect("16");
    let c = csum::l4_v6(src, to.ip().octets(), next, &b[l4..end]);
    b[at..at + 2].copy_from_slice(&c.to_be_bytes());
    b
}

/// A minimal IPv6 frame to the IPv6 VIP with `next` as the first next-header and `ext` after
/// the fixed header (checksums are the caller's: see [`v6_seg`]).
fn ipv6(next: u8, ext: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&LB_MAC);
    b.extend_from_slice(&CLIENT_MAC);
    b.extend_from_slice(&0x86ddu16.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&u16::try_from(ext.len()).expect("short").to_be_bytes());
    ip.push(next);
    ip.push(64);
    ip.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().expect("v6").octets());
    ip.extend_from_slice(&VIP6.parse::<Ipv6Addr>().expect("v6").octets());
    b.extend_from_slice(&ip);
    b.extend_from_slice(ext);
    b
}

/// A TCP segment header (20 bytes) for an IPv6 extension-header chain's payload.
fn tcp_hdr(dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = TCP_SYN;
    t
}

/// An IPv6 TCP (or UDP) segment to `dport` with valid checksums behind the extension
/// headers `ext` (each given whole, its next-header byte filled in here).
fn v6_seg(ext: &[(u8, Vec<u8>)], p: u8, dport: u16, flags: u8) -> Vec<u8> {
    let mut seg = if p == proto::TCP {
        let mut t = tcp_hdr(dport);
        t[13] = flags;
        t
    } else {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&40000u16.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&13u16.to_be_bytes());
        u.extend_from_slice(b"hello");
        u
    };
    let src = "2001:db8::2".parse::<Ipv6Addr>().expect("v6").octets();
    let dst = VIP6.parse::<Ipv6Addr>().expect("v6").octets();
    let at = if p == proto::TCP { 16 } else { 6 };
    let c = csum::l4_v6(src, dst, p, &seg);
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let mut chain = Vec::new();
    for (i, (_, body)) in ext.iter().enumerate() {
        let mut b = body.clone();
        b[0] = ext.get(i + 1).map_or(p, |(k, _)| *k);
        chain.extend_from_slice(&b);
    }
    chain.extend_from_slice(&seg);
    ipv6(ext.first().map_or(p, |(k, _)| *k), &chain)
}

/// The IPv6 part of the corpus: every extension-header case, fragments, hop limits, lengths,
/// ICMPv6 and neighbour discovery, to the IPv6 VIP and elsewhere.
#[expect(clippy::too_many_lines, reason = "a table of cases")]
pub fn corpus6() -> Vec<Case> {
    let b80 = SocketAddrV6::new(B6.parse().expect("v6"), 80, 0, 0);
    let b53 = SocketAddrV6::new(B6.parse().expect("v6"), 53, 0, 0);
    let pad = || vec![0u8, 0, 1, 4, 0, 0, 0, 0];
    let (hbh, rh, frag, dst) = (0u8, 43u8, 44u8, 60u8);
    let mut v = Vec::new();
    let tcp = |ext: &[(u8, Vec<u8>)]| v6_seg(ext, proto::TCP, 80, TCP_SYN);
    let udp = |ext: &[(u8, Vec<u8>)]| v6_seg(ext, proto::UDP, 53, 0);
    // Balanced, with the headers kept.
    for (name, ext) in [
        ("no extension header", vec![]),
        ("hop-by-hop", vec![(hbh, pad())]),
        ("destination options", vec![(dst, pad())]),
        (
            "routing, 0 segments left",
            vec![(rh, vec![0, 0, 4, 0, 0, 0, 0, 0])],
        ),
        (
            "hop-by-hop, destination options",
            vec![(hbh, pad()), (dst, pad())],
        ),
        (
            "a 16-byte hop-by-hop",
            vec![(hbh, vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])],
        ),
        (
            "four headers (the bound)",
            vec![
                (hbh, pad()),
                (dst, pad()),
                (rh, vec![0, 0, 4, 0, 0, 0, 0, 0]),
                (dst, pad()),
            ],
        ),
    ] {
        v.push(case(
            format!("IPv6 TCP, {name}"),
            tcp(&ext),
            Want::Dnat6(b80),
            Reason::Forward,
        ));
        v.push(case(
            format!("IPv6 UDP, {name}"),
            udp(&ext),
            Want::Dnat6(b53),
            Reason::Forward,
        ));
    }
    let mut tagged = tcp(&[]);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    v.push(case(
        "IPv6 TCP, 802.1Q",
        tagged,
        Want::Dnat6(b80),
        Reason::Forward,
    ));
    // Refused by the walk.
    for (name, ext, r) in [
        (
            "routing, 1 segment left",
            vec![(rh, vec![0, 0, 4, 1, 0, 0, 0, 0])],
            Reason::DropRoutingHeader,
        ),
        (
            "routing behind hop-by-hop, 2 left",
            vec![(hbh, pad()), (rh, vec![0, 0, 0, 2, 0, 0, 0, 0])],
            Reason::DropRoutingHeader,
        ),
        (
            "first fragment",
            vec![(frag, vec![0, 0, 0, 1, 0, 0, 0, 9])],
            Reason::DropFragment,
        ),
        (
            "later fragment",
            vec![(frag, vec![0, 0, 0x05, 0x00, 0, 0, 0, 9])],
            Reason::DropFragment,
        ),
        (
            "atomic fragment",
            vec![(frag, vec![0, 0, 0, 0, 0, 0, 0, 9])],
            Reason::DropFragment,
        ),
        (
            "fragment behind destination options",
            vec![(dst, pad()), (frag, vec![0, 0, 0, 1, 0, 0, 0, 9])],
            Reason::DropFragment,
        ),
        (
            "five headers",
            vec![
                (hbh, pad()),
                (dst, pad()),
                (dst, pad()),
                (dst, pad()),
                (dst, pad()),
            ],
            Reason::DropExtHeaders,
        ),
        (
            "four headers, then a fragment",
            vec![
                (hbh, pad()),
                (dst, pad()),
                (dst, pad()),
                (dst, pad()),
                (frag, vec![0, 0, 0, 1, 0, 0, 0, 9]),
            ],
            Reason::DropExtHeaders,
        ),
    ] {
        v.push(case(format!("IPv6 TCP, {name}"), tcp(&ext), Want::Drop, r));
        v.push(case(format!("IPv6 UDP, {name}"), udp(&ext), Want::Drop, r));
    }
    // A header longer than the packet: its length byte says 200 × 8 bytes.
    v.push(case(
        "IPv6 hop-by-hop past the end",
        tcp(&[(hbh, vec![0, 200, 1, 4, 0, 0, 0, 0])]),
        Want::Drop,
        Reason::DropExtHeaders,
    ));
    let only_hbh = ipv6(hbh, &[6, 0, 1, 4]);
    v.push(case(
        "IPv6 hop-by-hop cut in its first bytes",
        only_hbh,
        Want::Drop,
        Reason::DropExtHeaders,
    ));
    // Lengths, versions, hop limits.
    let long = with(&tcp(&[]), |b| {
        b[18..20].copy_from_slice(&400u16.to_be_bytes());
    });
    v.push(case(
        "IPv6 payload length beyond the frame",
        long,
        Want::Drop,
        Reason::DropMalformed,
    ));
    let short = with(&tcp(&[]), |b| {
        b[18..20].copy_from_slice(&10u16.to_be_bytes());
    });
    v.push(case(
        "IPv6 payload length shorter than TCP",
        short,
        Want::Drop,
        Reason::DropMalformed,
    ));
    let v4ver = with(&tcp(&[]), |b| b[14] = 0x40);
    v.push(case(
        "IPv6 ethertype, version 4",
        v4ver,
        Want::Drop,
        Reason::DropMalformed,
    ));
    for hl in [0u8, 1] {
        let f = with(&tcp(&[]), |b| b[21] = hl);
        v.push(case(
            format!("IPv6 hop limit {hl}"),
            f,
            Want::Drop,
            Reason::DropTtl,
        ));
    }
    let cut_tcp = tcp(&[])[..14 + 40 + 10].to_vec();
    let cut_tcp = with(&cut_tcp, |b| {
        b[18..20].copy_from_slice(&10u16.to_be_bytes());
    });
    v.push(case(
        "IPv6 TCP header cut",
        cut_tcp,
        Want::Drop,
        Reason::DropMalformed,
    ));
    let doff4 = with(&tcp(&[]), |b| b[14 + 40 + 12] = 4 << 4);
    v.push(case(
        "IPv6 TCP data offset 4",
        doff4,
        Want::Drop,
        Reason::DropMalformed,
    ));
    let doff15 = with(&tcp(&[]), |b| b[14 + 40 + 12] = 15 << 4);
    v.push(case(
        "IPv6 TCP data offset past the end",
        doff15,
        Want::Drop,
        Reason::DropMalformed,
    ));
    let ulen = with(&udp(&[]), |b| {
        b[14 + 40 + 4..14 + 40 + 6].copy_from_slice(&4u16.to_be_bytes());
    });
    v.push(case(
        "IPv6 UDP length 4",
        ulen,
        Want::Drop,
        Reason::DropMalformed,
    ));
    let ulong = with(&udp(&[]), |b| {
        b[14 + 40 + 4..14 + 40 + 6].copy_from_slice(&99u16.to_be_bytes());
    });
    v.push(case(
        "IPv6 UDP length past the payload",
        ulong,
        Want::Drop,
        Reason::DropMalformed,
    ));
    let uzero = with(&udp(&[]), |b| {
        b[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
    });
    v.push(case(
        "IPv6 UDP zero checksum",
        uzero,
        Want::Drop,
        Reason::DropMalformed,
    ));
    v.push(case(
        "IPv6 SYN+FIN",
        v6_seg(&[], proto::TCP, 80, TCP_SYN | 0x01),
        Want::Drop,
        Reason::DropTcpFlags,
    ));
    v.push(case(
        "IPv6 TCP, no flags",
        v6_seg(&[], proto::TCP, 80, 0),
        Want::Drop,
        Reason::DropTcpFlags,
    ));
    v.push(case(
        "IPv6 TCP to a port with no service",
        v6_seg(&[], proto::TCP, 81, TCP_SYN),
        Want::Drop,
        Reason::DropNoService,
    ));
    v.push(case(
        "IPv6 UDP to a port with no service",
        v6_seg(&[], proto::UDP, 54, 0),
        Want::Drop,
        Reason::DropNoService,
    ));
    // Other protocols, ICMPv6 and neighbour discovery.
    for (name, next) in [("no next header", 59u8), ("ESP", 50), ("SCTP", 132)] {
        v.push(case(
            format!("IPv6 {name} to the VIP"),
            ipv6(next, &[0; 16]),
            Want::Drop,
            Reason::DropProto,
        ));
    }
    // An echo request is answered (its checksum is valid: the reply's is patched from it).
    let src = "2001:db8::2".parse::<Ipv6Addr>().expect("v6").octets();
    let vip = VIP6.parse::<Ipv6Addr>().expect("v6").octets();
    let mut req = vec![128u8, 0, 0, 0, 0, 1, 0, 1];
    let c = csum::l4_v6(src, vip, 58, &req);
    req[2..4].copy_from_slice(&c.to_be_bytes());
    let echo = ipv6(58, &req);
    let mut rep = vec![129u8, 0, 0, 0, 0, 1, 0, 1];
    let c = csum::l4_v6(vip, src, 58, &rep);
    rep[2..4].copy_from_slice(&c.to_be_bytes());
    let reply = with(&ipv6(58, &rep), |b| {
        b.copy_within(6..12, 0);
        b[6..12].copy_from_slice(&LB_MAC);
        b[21] = 64;
        b[22..38].copy_from_slice(&vip);
        b[38..54].copy_from_slice(&src);
    });
    v.push(case(
        "ICMPv6 echo request to the VIP",
        echo,
        Want::Tx(reply),
        Reason::EchoReply,
    ));
    v.push(case(
        "ICMPv6 echo request, code 1",
        ipv6(58, &[128, 1, 0, 0, 0, 1, 0, 1]),
        Want::Drop,
        Reason::DropProto,
    ));
    v.push(case(
        "ICMPv6 MLD report to the VIP",
        ipv6(58, &[131, 0, 0, 0, 0, 0, 0, 0]),
        Want::Drop,
        Reason::DropProto,
    ));
    v.push(case(
        "ICMPv6 cut in its first word",
        ipv6(58, &[135, 0]),
        Want::Drop,
        Reason::DropProto,
    ));
    for (name, ty) in [
        ("router solicitation", 133u8),
        ("router advertisement", 134),
        ("neighbour solicitation", 135),
        ("neighbour advertisement", 136),
        ("redirect", 137),
    ] {
        v.push(case(
            format!("ICMPv6 {name} to the VIP"),
            ipv6(58, &[ty, 0, 0, 0, 0, 0, 0, 0]),
            Want::Pass,
            Reason::PassNdp,
        ));
    }
    // Elsewhere: not ours, whatever it carries.
    let elsewhere = |b: Vec<u8>| with(&b, |b| b[14 + 24 + 15] = 0x99);
    v.push(case(
        "IPv6 TCP to another address",
        elsewhere(tcp(&[])),
        Want::Pass,
        Reason::PassNotOurs,
    ));
    v.push(case(
        "IPv6 fragment to another address",
        elsewhere(tcp(&[(frag, vec![0, 0, 0, 1, 0, 0, 0, 9])])),
        Want::Pass,
        Reason::PassNotOurs,
    ));
    v.push(case(
        "IPv6 echo to another address",
        elsewhere(ipv6(58, &[128, 0, 0, 0, 0, 1, 0, 1])),
        Want::Pass,
        Reason::PassNotOurs,
    ));
    v.push(case(
        "IPv6 header cut",
        ipv6(6, &[])[..30].to_vec(),
        Want::Pass,
        Reason::PassShort,
    ));
    v.push(case(
        "IPv6, ethertype only",
        with(&ipv6(6, &[]), |b| b.truncate(14)),
        Want::Pass,
        Reason::PassShort,
    ));
    v
}

/// Extension headers in order: (next-header value, the header's bytes).
type Chain = Vec<(u8, Vec<u8>)>;

/// IPv6 extension headers cannot get past an ACL or an internal VIP: a denied source's SYN
/// behind any chain is still the denied source's (`drop_acl`, `drop_not_internal`), a
/// fragment is dropped before any lookup, and a permitted source behind the same chain is
/// forwarded, headers kept.
#[test]
fn ipv6_extension_headers_do_not_get_past_an_acl_or_an_internal_vip() {
    in_fresh_ns("bypass-v6", |ns| {
        let mut h = harness(ns);
        let mut cases = Vec::new();
        let v6 = |a: &str, p| SocketAddrV6::new(a.parse().expect("v6"), p, 0, 0);
        let (inside, outside) = (v6("2001:db8:1::2", 40000), v6("2001:db8:5::2", 40000));
        let pad = vec![0, 0, 1, 4, 0, 0, 0, 0];
        let chains: [(&str, Chain); 5] = [
            ("hop-by-hop", vec![(0, pad.clone())]),
            ("routing, 0 left", vec![(43, vec![0, 0, 4, 0, 0, 0, 0, 0])]),
            ("destination options", vec![(60, pad.clone())]),
            (
                "hop-by-hop, destination options",
                vec![(0, pad.clone()), (60, pad.clone())],
            ),
            ("fragment", vec![(44, vec![0, 0, 0, 1, 0, 0, 0, 1])]),
        ];
        for (name, chain) in &chains {
            let frag = chain.iter().any(|(k, _)| *k == 44);
            for (what, dst, denied) in [
                ("ACL endpoint", v6(VIP6, 8080), Reason::DropAcl),
                ("internal VIP", v6(ILB6, 80), Reason::DropNotInternal),
            ] {
                for (who, src) in [("outside", outside), ("inside", inside)] {
                    let mut f = Frame6::tcp(src, dst, TCP_SYN);
                    f.smac = CLIENT_MAC;
                    for (k, body) in chain {
                        f = f.with_ext(*k, body.clone());
                    }
                    let (want, reason) = match (frag, who) {
                        (true, _) => (Want::Drop, Reason::DropFragment),
                        (false, "outside") => (Want::Drop, denied),
                        _ => (Want::Dnat6(v6(B6, dst.port())), Reason::Forward),
                    };
                    cases.push(case(
                        format!("IPv6 {name}, {who} to the {what}"),
                        f.build(),
                        want,
                        reason,
                    ));
                }
            }
        }
        run_cases(&mut h, &cases);
    });
}
