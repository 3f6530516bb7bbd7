//! ICMP: echo to a VIP, and errors delivered to the owner of a flow.

use super::*;

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
        let rest: &[u8] = &[0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        let ping = Frame::raw(*CLIENT.ip(), VIP, proto::ICMP, icmp(8, rest));
        // The reply: addresses and MACs swapped, TTL 64, type 0, checksum still valid. Then
        // identifier, sequence number and payload zero: the reply's data is all zeros, and its
        // checksum 0xffff (the incremental update once wrote 0x0000, which does not verify;
        // the kernel differential fuzz target found it).
        let zero = icmp(0, &[0; 4]);
        assert_eq!(zero[2..4], [0xff, 0xff], "from scratch");
        for (what, rest) in [("ping to a VIP", rest), ("an all-zero ping", &[0u8; 4][..])] {
            let req = Frame::raw(*CLIENT.ip(), VIP, proto::ICMP, icmp(8, rest));
            let mut want = Frame::raw(VIP, *CLIENT.ip(), proto::ICMP, icmp(0, rest));
            (want.smac, want.dmac, want.ttl) = (req.dmac, req.smac, 64);
            fx.check(what, &req, XDP_TX, Some(&want), Reason::EchoReply);
        }
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
        // starts full (ECHO_BURST) and refills at ECHO_RATE_PER_SEC.
        fx.rate_limited_burst(
            &ping.build(),
            (Reason::EchoReply, Reason::DropEchoLimited),
            (
                lb_common::consts::ECHO_BURST,
                lb_common::consts::ECHO_RATE_PER_SEC,
            ),
        );
    });
}

/// An ICMP error message: type, code, the 4 "rest of header" bytes, the embedded bytes; with a
/// checksum computed from scratch.
pub(super) fn icmp_error(ty: u8, code: u8, rest: [u8; 4], embedded: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(embedded);
    let c = lb_common::csum::ipv4_header(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// The first `len` bytes of a frame's IPv4 packet (what an ICMP error embeds).
pub(super) fn ip_bytes(f: &Frame, len: usize) -> Vec<u8> {
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
