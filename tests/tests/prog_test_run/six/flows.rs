//! IPv6 flow handling beyond the translation itself: stateless replies and the numbers TCP
//! reset on idle records.

use std::net::{Ipv6Addr, SocketAddrV6};

use lb_common::{
    flow::{FlowKey6, proto},
    hdr::ext,
    verdict::Reason,
};
use lb_integration::{
    fixture::{XDP_PASS, XDP_TX},
    packet::{CLIENT_MAC, Frame6, LB_MAC, TCP_ACK, TCP_PSH, TCP_SYN},
};

use super::{B1, B1_MAC, B2, B2_MAC, Fixture, LB6, client, vip, with_fixture6};

/// `replies = "stateless"` over IPv6, as for IPv4: a packet from the endpoint is translated as
/// a reply with no flow behind it, a SYN-ACK too, except to the LB's own IPv6 address (its
/// probe's answer, the kernel's); the forward direction is tracked as before.
#[test]
fn ipv6_stateless_replies_need_no_flow_but_spare_the_lbs_own_connections() {
    with_fixture6(|fx| {
        let front = vip(8443);
        let b = SocketAddrV6::new(B2, 8443, 0, 0);
        let c = SocketAddrV6::new(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 9), 5555, 0, 0);
        for (what, flags) in [
            ("a reply of a flow this node never saw", TCP_ACK),
            (
                "a SYN-ACK too: no TCP state is kept for it",
                TCP_SYN | TCP_ACK,
            ),
        ] {
            let mut reply = Frame6::tcp(b, c, flags);
            reply.smac = B2_MAC;
            let out = reply.snat(front, LB_MAC, CLIENT_MAC);
            fx.check_bytes(
                what,
                &reply.build(),
                XDP_TX,
                Some(out.build()),
                Reason::Reply,
            );
        }
        let probe = Frame6::tcp(b, SocketAddrV6::new(LB6, 40000, 0, 0), TCP_SYN | TCP_ACK);
        fx.check_bytes(
            "to the LB's own address: its probe's answer",
            &probe.build(),
            XDP_PASS,
            None,
            Reason::PassNotOurs,
        );
        let syn = Frame6::tcp(c, front, TCP_SYN);
        fx.check_bytes(
            "a new flow",
            &syn.build(),
            XDP_TX,
            Some(syn.dnat(b, LB_MAC, B2_MAC).build()),
            Reason::Forward,
        );
        // A tracked service's endpoint is not stateless: [2001:db8:2::12]:8080 with no flow.
        let tracked = Frame6::tcp(SocketAddrV6::new(B2, 8080, 0, 0), c, TCP_ACK);
        fx.check_bytes(
            "a tracked endpoint's packet of no flow",
            &tracked.build(),
            XDP_PASS,
            None,
            Reason::PassNotOurs,
        );
    });
}

/// TCP reset on idle over IPv6: the flow's entry records the sequence number the backend
/// expects next (the segment's plus its payload, counted up to the end of the IPv6 payload past
/// any extension header) and the client's last acknowledgement, as for IPv4.
#[test]
fn ipv6_flows_with_tcp_reset_record_their_sequence_numbers() {
    use lb_common::conn::{CT_F_SEQ, CT_SYN};
    with_fixture6(|fx| {
        let c = client();
        let front = vip(8444);
        let be = SocketAddrV6::new(B1, 8444, 0, 0);
        let key = FlowKey6::new(c, front, proto::TCP);
        let sent = |fx: &mut Fixture, what: &str, f: &Frame6| {
            fx.check_bytes(
                what,
                &f.build(),
                XDP_TX,
                Some(f.dnat(be, LB_MAC, B1_MAC).build()),
                Reason::Forward,
            );
            fx.h.rec
                .maps()
                .side
                .flow6(&key)
                .expect("a lookup")
                .expect("tracked")
        };
        // The SYN with 5 bytes of data: seq + 5 + 1 for the SYN.
        let mut syn = Frame6::tcp(c, front, TCP_SYN);
        syn.seq = 5000;
        let e = sent(fx, "SYN", &syn);
        assert_eq!((e.tcp, e.flags), (CT_SYN, CT_F_SEQ), "{e:?}");
        assert_eq!((e.seq, e.ack), (5006, 0), "{e:?}");
        // Data behind a destination-options header: the header is not payload.
        let mut data = Frame6::tcp(c, front, TCP_ACK | TCP_PSH)
            .with_ext(ext::DEST_OPTS, vec![0, 0, 1, 4, 0, 0, 0, 0]);
        data.seq = 5006;
        data.ack = 0xdead_beef;
        data.payload = b"hello, world".to_vec();
        let e = sent(fx, "data", &data);
        assert_eq!((e.tcp, e.seq, e.ack), (0, 5018, 0xdead_beef), "{e:?}");
        // Without TCP reset nothing is recorded.
        let plain = FlowKey6::new(c, vip(80), proto::TCP);
        let syn80 = Frame6::tcp(c, vip(80), TCP_SYN);
        let (action, _) = fx.run(&syn80.build());
        assert_eq!(action, XDP_TX);
        let e =
            fx.h.rec
                .maps()
                .side
                .flow6(&plain)
                .unwrap()
                .expect("tracked");
        assert_eq!((e.flags, e.seq, e.ack), (0, 0, 0), "{e:?}");
    });
}
