//! Outbound NAT: a covered backend's flows to the outside leave with the frontend address and
//! a port of its block; the returning packets go back to the backend; the inside, and a
//! backend with a PIP, are left alone; a block with no free port is a counted drop.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::outbound::{Frontend, Slot, allocate, candidate};

use super::*;

const OUT_CONFIG: &str = r#"
[agent]
ring_slots = 8192
conntrack_flows = 4096

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12"]
table_size = 251

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11"]
table_size = 251

# 192.0.2.13 is covered too, but has a PIP: it leaves through the PIP.
[[pip]]
pip = "203.0.113.50"
dip = "192.0.2.13"

[[outbound]]
name = "web"
frontends = ["203.0.113.10"]
services = ["203.0.113.10:80/tcp"]
backends = ["192.0.2.13"]
ports_per_backend = 8
inside = ["192.0.2.0/24", "198.51.100.0/28"]
tcp_reset = true
idle_timeout = "30s"

# Stateless: 192.0.2.16's own ephemeral ports are its block on 203.0.113.11; only the
# address is rewritten, and nothing is tracked.
[[outbound]]
name = "direct"
frontends = ["203.0.113.11"]
backends = ["192.0.2.16"]
ports_per_backend = 4096
mode = "stateless"
"#;

const DIRECT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

/// The outside: routed through the client route (198.51.100.0/24), outside the inside /28.
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);

/// Each covered backend's block, as every node computes it.
fn blocks() -> BTreeMap<[u8; 4], Slot> {
    let fe = Frontend {
        addr: VIP.octets(),
        reserved: vec![80..=80, 53..=53],
    };
    let bs: BTreeSet<[u8; 4]> = [B1, B2, Ipv4Addr::new(192, 0, 2, 13)]
        .iter()
        .map(Ipv4Addr::octets)
        .collect();
    allocate(&[fe], 8, &bs, &BTreeSet::new()).unwrap()
}

/// The `attempt`th candidate port of a flow of backend `be` in its block.
fn port_of(fx: &Fixture, flow: &FlowKey4, be: Ipv4Addr, attempt: u32) -> u16 {
    let b = blocks()[&be.octets()];
    candidate(b.base, 8, flow_hash(flow, fx.seed), attempt)
}

fn with_outbound(f: impl FnOnce(&mut Fixture) + Send + 'static) {
    in_fresh_ns("ob", move |ns| {
        let mut fx = Fixture::with_config(ns, OUT_CONFIG);
        f(&mut fx);
    });
}

/// A segment from backend `be` as it reaches the LB.
fn from_be(be: SocketAddrV4, to: SocketAddrV4, flags: u8, mac: [u8; 6]) -> Frame {
    let mut f = Frame::tcp(be, to, flags);
    f.smac = mac;
    f.dmac = LB_MAC;
    f
}

#[test]
fn outbound_tcp_leaves_with_the_frontend_and_returns_to_the_backend() {
    with_outbound(|fx| {
        let be = SocketAddrV4::new(B1, 40000);
        let remote = SocketAddrV4::new(REMOTE, 443);
        let syn = from_be(be, remote, TCP_SYN, B1_MAC);
        let flow = FlowKey4::new(be, remote, proto::TCP);
        let port = port_of(fx, &flow, B1, 0);
        let front = SocketAddrV4::new(VIP, port);
        fx.check(
            "outbound SYN",
            &syn,
            XDP_TX,
            Some(&syn.snat(front, LB_MAC, CLIENT_MAC)),
            Reason::Outbound,
        );
        let synack = Frame::tcp(remote, front, TCP_SYN | TCP_ACK);
        fx.check(
            "the SYN-ACK returns to the backend",
            &synack,
            XDP_TX,
            Some(&synack.dnat(be, LB_MAC, B1_MAC)),
            Reason::OutboundReturn,
        );
        // TCP reset on idle: the entry records the numbers each side expects next.
        let e = fx.h.rec.maps().side.flow(&flow).unwrap().expect("tracked");
        assert_eq!(e.flags, lb_common::conn::CT_F_SEQ);
        assert_eq!(e.seq, syn.seq + 5 + 1, "the backend's next sequence number");
        let ack = from_be(be, remote, TCP_ACK, B1_MAC);
        fx.check(
            "its established packets keep the port",
            &ack,
            XDP_TX,
            Some(&ack.snat(front, LB_MAC, CLIENT_MAC)),
            Reason::Outbound,
        );
        let late = Frame::tcp(remote, front, TCP_SYN | TCP_ACK);
        fx.check(
            "a SYN-ACK after the handshake is not translated (nor does it end the flow)",
            &late,
            XDP_DROP,
            None,
            Reason::DropNoService,
        );
        let data = Frame::tcp(remote, front, TCP_ACK | TCP_PSH);
        fx.check(
            "its data return too",
            &data,
            XDP_TX,
            Some(&data.dnat(be, LB_MAC, B1_MAC)),
            Reason::OutboundReturn,
        );
        // The remote resets: translated, and the flow is closed (it translates for the close
        // timeout, then the sweeper removes it and its port is free).
        let rst = Frame::tcp(remote, front, TCP_RST);
        fx.check(
            "a RST returns too",
            &rst,
            XDP_TX,
            Some(&rst.dnat(be, LB_MAC, B1_MAC)),
            Reason::OutboundReturn,
        );
        let e = fx.h.rec.maps().side.flow(&flow).unwrap().expect("tracked");
        assert_ne!(
            e.tcp & lb_common::conn::CT_RST,
            0,
            "closed by the RST: {e:?}"
        );
        let other = Frame::tcp(SocketAddrV4::new(REMOTE, 444), front, TCP_ACK);
        fx.check(
            "another remote port has no flow on that frontend port",
            &other,
            XDP_DROP,
            None,
            Reason::DropNoService,
        );
        let unused = if port == blocks()[&B1.octets()].base {
            port + 1
        } else {
            port - 1
        };
        let stray = Frame::tcp(remote, SocketAddrV4::new(VIP, unused), TCP_SYN);
        fx.check(
            "a frontend port no flow holds",
            &stray,
            XDP_DROP,
            None,
            Reason::DropNoService,
        );
        let xmas = from_be(
            SocketAddrV4::new(B1, 40001),
            remote,
            TCP_FIN | TCP_PSH | TCP_URG,
            B1_MAC,
        );
        fx.check(
            "flags no stack sends never leave",
            &xmas,
            XDP_DROP,
            None,
            Reason::DropTcpFlags,
        );
        let xmas_in = Frame::tcp(remote, front, TCP_FIN | TCP_PSH | TCP_URG);
        fx.check(
            "nor come back",
            &xmas_in,
            XDP_DROP,
            None,
            Reason::DropTcpFlags,
        );
    });
}

#[test]
fn outbound_udp_and_the_inside_and_a_pip() {
    with_outbound(|fx| {
        let be = SocketAddrV4::new(B1, 5353);
        let remote = SocketAddrV4::new(REMOTE, 53);
        let mut q = Frame::udp(be, remote);
        q.smac = B1_MAC;
        q.dmac = LB_MAC;
        let flow = FlowKey4::new(be, remote, proto::UDP);
        let front = SocketAddrV4::new(VIP, port_of(fx, &flow, B1, 0));
        fx.check(
            "outbound UDP query",
            &q,
            XDP_TX,
            Some(&q.snat(front, LB_MAC, CLIENT_MAC)),
            Reason::Outbound,
        );
        let answer = Frame::udp(remote, front);
        fx.check(
            "its answer",
            &answer,
            XDP_TX,
            Some(&answer.dnat(be, LB_MAC, B1_MAC)),
            Reason::OutboundReturn,
        );
        for (what, dst) in [
            ("the backends' own subnet", Ipv4Addr::new(192, 0, 2, 99)),
            ("an inside client prefix", Ipv4Addr::new(198, 51, 100, 5)),
        ] {
            let f = from_be(
                SocketAddrV4::new(B1, 40002),
                SocketAddrV4::new(dst, 5432),
                TCP_SYN,
                B1_MAC,
            );
            fx.check(what, &f, XDP_PASS, None, Reason::PassOutboundInside);
        }
        let pip_be = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 13), 40000);
        let out = from_be(pip_be, SocketAddrV4::new(REMOTE, 443), TCP_SYN, B3_MAC);
        let mut want = out.clone();
        want.src = Ipv4Addr::new(203, 0, 113, 50);
        want.ttl -= 1;
        want.smac = LB_MAC;
        want.dmac = CLIENT_MAC;
        fx.check(
            "a backend with a PIP leaves through it",
            &out,
            XDP_TX,
            Some(&want),
            Reason::PipOut,
        );
        // Inbound flows are untouched by the rule: a client's flow and its reply.
        let client = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000);
        let syn = Frame::tcp(client, SocketAddrV4::new(VIP, 80), TCP_SYN);
        let (action, out) = fx.run(&syn.build());
        assert_eq!(action, XDP_TX);
        let picked = lb_integration::packet::endpoints(&out)
            .expect("a TCP frame")
            .1;
        let reply = from_be(
            SocketAddrV4::new(*picked.ip(), 80),
            client,
            TCP_SYN | TCP_ACK,
            mac_of(picked),
        );
        fx.check(
            "a covered backend's reply to an inbound flow is a reply",
            &reply,
            XDP_TX,
            Some(&reply.snat(SocketAddrV4::new(VIP, 80), LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
    });
}

/// Ports per backend 8: eight concurrent flows to one destination take the whole block, the
/// ninth is dropped and counted; a ninth to another destination port reuses a port.
#[test]
fn a_full_block_is_a_counted_drop_and_ports_are_reused_across_destinations() {
    with_outbound(|fx| {
        let remote = SocketAddrV4::new(REMOTE, 443);
        let b = blocks()[&B2.octets()];
        let mut used = BTreeSet::new();
        for i in 0..8u16 {
            let be = SocketAddrV4::new(B2, 41000 + i);
            let syn = from_be(be, remote, TCP_SYN, B2_MAC);
            let (action, out) = fx.run(&syn.build());
            assert_eq!(action, XDP_TX, "flow {i}");
            let src = lb_integration::packet::endpoints(&out)
                .expect("a TCP frame")
                .0;
            assert_eq!(*src.ip(), VIP, "flow {i} leaves with the frontend");
            assert!(
                (b.base..b.base + 8).contains(&src.port()),
                "flow {i}: port {} outside the block {}..{}",
                src.port(),
                b.base,
                b.base + 8
            );
            used.insert(src.port());
        }
        assert_eq!(used.len(), 8, "eight flows, eight ports: {used:?}");
        let be9 = SocketAddrV4::new(B2, 41008);
        let ninth = from_be(be9, remote, TCP_SYN, B2_MAC);
        // Refused in place: the SYN comes back as the RST that acknowledges it (its 5 bytes
        // of payload and the SYN), from the remote, so the backend's connect fails at once.
        let mut rst = Frame::tcp(remote, be9, TCP_RST | TCP_ACK);
        rst.seq = 0;
        rst.ack = ninth.seq + 5 + 1;
        rst.window = 0;
        rst.ttl = 64;
        rst.smac = LB_MAC;
        rst.dmac = B2_MAC;
        fx.check(
            "the ninth flow to the same destination",
            &ninth,
            XDP_TX,
            Some(&rst),
            Reason::DropSnatExhausted,
        );
        // UDP has its own ports (the returning key holds the protocol): eight flows to one
        // destination take them, the ninth is only dropped (UDP has nothing to refuse with).
        let dns = SocketAddrV4::new(REMOTE, 53);
        for i in 0..8u16 {
            let mut u = Frame::udp(SocketAddrV4::new(B2, 42000 + i), dns);
            u.smac = B2_MAC;
            let (action, _) = fx.run(&u.build());
            assert_eq!(action, XDP_TX, "UDP flow {i}");
        }
        let mut u = Frame::udp(SocketAddrV4::new(B2, 42008), dns);
        u.smac = B2_MAC;
        fx.check(
            "the ninth UDP flow is dropped",
            &u,
            XDP_DROP,
            None,
            Reason::DropSnatExhausted,
        );
        let elsewhere = SocketAddrV4::new(REMOTE, 8443);
        let be = SocketAddrV4::new(B2, 41008);
        let syn = from_be(be, elsewhere, TCP_SYN, B2_MAC);
        let flow = FlowKey4::new(be, elsewhere, proto::TCP);
        let front = SocketAddrV4::new(VIP, port_of(fx, &flow, B2, 0));
        fx.check(
            "to another destination port, the first candidate is free again",
            &syn,
            XDP_TX,
            Some(&syn.snat(front, LB_MAC, CLIENT_MAC)),
            Reason::Outbound,
        );
    });
}

/// ICMP errors about an outbound flow reach the other side, translated: from the outside to the
/// backend (outer destination and embedded source back to it), and from the backend to the
/// outside (outer source and embedded destination to the frontend).
#[test]
fn icmp_errors_about_outbound_flows_are_translated_both_ways() {
    use super::icmp::{icmp_error, ip_bytes};
    with_outbound(|fx| {
        let be = SocketAddrV4::new(B1, 40000);
        let remote = SocketAddrV4::new(REMOTE, 443);
        let syn = from_be(be, remote, TCP_SYN, B1_MAC);
        assert_eq!(fx.run(&syn.build()).0, XDP_TX, "the flow is set up");
        let flow = FlowKey4::new(be, remote, proto::TCP);
        let front = SocketAddrV4::new(VIP, port_of(fx, &flow, B1, 0));
        let router = Ipv4Addr::new(198, 51, 100, 254);
        let mtu = [0, 0, 0x05, 0x78];
        let left = Frame::tcp(front, remote, TCP_ACK);
        let err = Frame::raw(
            router,
            VIP,
            proto::ICMP,
            icmp_error(3, 4, mtu, &ip_bytes(&left, 40)),
        );
        let mut want = Frame::raw(
            router,
            B1,
            proto::ICMP,
            icmp_error(3, 4, mtu, &ip_bytes(&Frame::tcp(be, remote, TCP_ACK), 40)),
        );
        want.ttl = err.ttl - 1;
        want.smac = LB_MAC;
        want.dmac = B1_MAC;
        fx.check(
            "frag needed from the outside reaches the backend",
            &err,
            XDP_TX,
            Some(&want),
            Reason::IcmpToBackend,
        );
        // The backend refuses a returning packet (port unreachable, say).
        let returning = Frame::tcp(remote, be, TCP_ACK);
        let mut err = Frame::raw(
            B1,
            REMOTE,
            proto::ICMP,
            icmp_error(3, 3, [0; 4], &ip_bytes(&returning, 28)),
        );
        err.smac = B1_MAC;
        let mut want = Frame::raw(
            VIP,
            REMOTE,
            proto::ICMP,
            icmp_error(
                3,
                3,
                [0; 4],
                &ip_bytes(&Frame::tcp(remote, front, TCP_ACK), 28),
            ),
        );
        want.ttl = err.ttl - 1;
        want.smac = LB_MAC;
        want.dmac = CLIENT_MAC;
        fx.check(
            "the backend's error leaves with the frontend",
            &err,
            XDP_TX,
            Some(&want),
            Reason::IcmpToClient,
        );
        let stranger = Frame::tcp(
            SocketAddrV4::new(VIP, front.port()),
            SocketAddrV4::new(REMOTE, 1),
            TCP_ACK,
        );
        let forged = Frame::raw(
            router,
            VIP,
            proto::ICMP,
            icmp_error(3, 4, mtu, &ip_bytes(&stranger, 28)),
        );
        fx.check(
            "an error about no outbound flow",
            &forged,
            XDP_DROP,
            None,
            Reason::DropIcmpUnmatched,
        );
    });
}

/// The stateless rule's backend's block.
fn direct_block() -> Slot {
    let fe = Frontend {
        addr: DIRECT.octets(),
        reserved: Vec::new(),
    };
    allocate(
        &[fe],
        4096,
        &BTreeSet::from([HA1.octets()]),
        &BTreeSet::new(),
    )
    .unwrap()[&HA1.octets()]
}

fn flows(fx: &Fixture) -> usize {
    use lb_userspace::dataplane::MapReader as _;
    let mut n = 0;
    fx.h.rec.maps().each_flow(&mut |_| n += 1).unwrap();
    n
}

/// A stateless rule rewrites only the address, both ways, tracks nothing, and drops a port
/// outside the backend's block (its ephemeral range is not set to it).
#[test]
fn a_stateless_rule_rewrites_the_address_only_and_tracks_nothing() {
    use super::icmp::{icmp_error, ip_bytes};
    with_outbound(|fx| {
        let b = direct_block();
        let before = flows(fx);
        let be = SocketAddrV4::new(HA1, b.base + 5);
        let remote = SocketAddrV4::new(REMOTE, 443);
        let front = SocketAddrV4::new(DIRECT, b.base + 5);
        let syn = from_be(be, remote, TCP_SYN, HA1_MAC);
        fx.check(
            "stateless SYN: address only",
            &syn,
            XDP_TX,
            Some(&syn.snat(front, LB_MAC, CLIENT_MAC)),
            Reason::Outbound,
        );
        let synack = Frame::tcp(remote, front, TCP_SYN | TCP_ACK);
        fx.check(
            "its SYN-ACK, by the block alone",
            &synack,
            XDP_TX,
            Some(&synack.dnat(be, LB_MAC, HA1_MAC)),
            Reason::OutboundReturn,
        );
        assert_eq!(flows(fx), before, "a stateless rule tracks nothing");
        let outside_block = if b.base == 1024 { b.base + 4096 } else { 1024 };
        let wrong = from_be(
            SocketAddrV4::new(HA1, outside_block),
            remote,
            TCP_SYN,
            HA1_MAC,
        );
        fx.check(
            "a source port outside the block",
            &wrong,
            XDP_DROP,
            None,
            Reason::DropOutboundPort,
        );
        let stray = Frame::tcp(remote, SocketAddrV4::new(DIRECT, outside_block), TCP_ACK);
        fx.check(
            "a frontend port no block holds",
            &stray,
            XDP_DROP,
            None,
            Reason::DropOutboundPort,
        );
        let router = Ipv4Addr::new(198, 51, 100, 254);
        let mtu = [0, 0, 0x05, 0x78];
        let err = Frame::raw(
            router,
            DIRECT,
            proto::ICMP,
            icmp_error(
                3,
                4,
                mtu,
                &ip_bytes(&Frame::tcp(front, remote, TCP_ACK), 28),
            ),
        );
        let mut want = Frame::raw(
            router,
            HA1,
            proto::ICMP,
            icmp_error(3, 4, mtu, &ip_bytes(&Frame::tcp(be, remote, TCP_ACK), 28)),
        );
        want.ttl = err.ttl - 1;
        want.smac = LB_MAC;
        want.dmac = HA1_MAC;
        fx.check(
            "an error from the outside about a stateless flow",
            &err,
            XDP_TX,
            Some(&want),
            Reason::IcmpToBackend,
        );
    });
}
