//! Floating IP (direct server return) through the real program: `l2` (the MACs only), IPIP
//! and GUE in both families, each with its exact output bytes (outer headers built from the
//! RFCs' layouts, checksums computed from scratch) and its one counter; a DNAT service on the
//! same VIP still translated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use lb_common::{
    encap::{flow_label, gue_sport},
    flow::{FlowKey4, FlowKey6, proto},
    hash::{flow_hash, flow_hash6},
    hdr::ext,
    verdict::Reason,
};
use lb_integration::{
    fixture::{LO, XDP_DROP, XDP_REDIRECT, XDP_TX, in_fresh_ns, nh},
    netns::Netns,
    packet::{Frame, Frame6, LB_MAC, Outer, TCP_ACK, TCP_SYN, encapsulated, remac},
};

use super::{B1, B1_MAC, B2, B2_MAC, FIB_MAC, Fixture};

mod probe;

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x60);
const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
const C6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
const B61: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11);
const B62: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x12);
const B61_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x61];
const B62_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x62];
const GUE_PORT: u16 = 6080;

const CONFIG: &str = r#"
[agent]
ring_slots = 8192
conntrack_flows = 4096
encap_source4 = "192.0.2.1"
encap_source6 = "2001:db8:2::1"
gue_port = 6080

[[service]]
vip = "203.0.113.60:80/tcp"
backends = ["192.0.2.11"]
table_size = 251
floating_ip = "l2"

[[service]]
vip = "203.0.113.60:53/udp"
backends = ["192.0.2.11"]
table_size = 251
floating_ip = "ipip"

[[service]]
vip = "203.0.113.60:443/tcp"
backends = ["192.0.2.12"]
table_size = 251
floating_ip = "gue"

# DNAT on the same VIP.
[[service]]
vip = "203.0.113.60:8080/tcp"
backends = ["192.0.2.12:8081"]
table_size = 251

# Backends the agent has not resolved: 192.0.2.14 is a neighbour on fx0 (the kernel FIB
# knows it), 192.0.2.15 sits behind it as a gateway.
[[service]]
vip = "203.0.113.60:81/tcp"
backends = ["192.0.2.14"]
table_size = 251
floating_ip = "l2"

[[service]]
vip = "203.0.113.60:82/tcp"
backends = ["192.0.2.15"]
table_size = 251
floating_ip = "l2"

[[service]]
vip = "203.0.113.60:83/tcp"
backends = ["192.0.2.14"]
table_size = 251
floating_ip = "ipip"

[[service]]
vip = "[2001:db8:3::60]:80/tcp"
backends = ["2001:db8:2::11"]
table_size = 251
floating_ip = "ipip"

[[service]]
vip = "[2001:db8:3::60]:443/tcp"
backends = ["2001:db8:2::12"]
table_size = 251
floating_ip = "gue"

[[service]]
vip = "[2001:db8:3::60]:53/udp"
backends = ["2001:db8:2::12"]
table_size = 251
floating_ip = "gue"

[[service]]
vip = "[2001:db8:3::60]:81/tcp"
backends = ["2001:db8:2::11"]
table_size = 251
floating_ip = "l2"
"#;

fn client() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000)
}

fn client6(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(C6, port, 0, 0)
}

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP, port)
}

fn vip6(port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(VIP6, port, 0, 0)
}

fn with_dsr(f: impl FnOnce(&mut Fixture, &Netns) + Send + 'static) {
    in_fresh_ns("fxd", move |ns| {
        let more = [
            (IpAddr::V6(B61), nh(LO, B61_MAC)),
            (IpAddr::V6(B62), nh(LO, B62_MAC)),
        ];
        let mut fx = Fixture::with_config_and(ns, CONFIG, &more);
        f(&mut fx, ns);
    });
}

/// fx0's MAC: the source the kernel FIB gives for a frame out of it.
fn fx0_mac(ns: &Netns) -> [u8; 6] {
    let out = ns.ip(&["-o", "link", "show", "dev", "fx0"]).unwrap();
    let m = out
        .split("link/ether ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("fx0 has a MAC");
    let mut mac = [0u8; 6];
    for (d, p) in mac.iter_mut().zip(m.split(':')) {
        *d = u8::from_str_radix(p, 16).unwrap();
    }
    mac
}

/// The frame with its IPv4 TOS byte set (and the header checksum redone).
fn with_tos(mut f: Vec<u8>, tos: u8) -> Vec<u8> {
    f[15] = tos;
    f[24..26].copy_from_slice(&[0, 0]);
    let c = lb_common::csum::ipv4_header(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn l2_rewrites_only_the_macs_and_refuses_a_gateway() {
    with_dsr(|fx, ns| {
        let c = client();
        let syn = Frame::tcp(c, vip(80), TCP_SYN).build();
        fx.check_bytes(
            "l2 SYN",
            &syn,
            XDP_TX,
            Some(remac(&syn, LB_MAC, B1_MAC)),
            Reason::ForwardEncap,
        );
        // Tracked: the next segment goes the same way, and nothing came back to learn.
        let mut ack = Frame::tcp(c, vip(80), TCP_ACK);
        ack.seq = 1001;
        let ack = ack.build();
        fx.check_bytes(
            "l2 established",
            &ack,
            XDP_TX,
            Some(remac(&ack, LB_MAC, B1_MAC)),
            Reason::ForwardEncap,
        );
        let key = FlowKey4::new(c, vip(80), proto::TCP);
        let ct = fx.h.flow(&key).expect("the flow is tracked");
        assert!(ct.is_forward(), "{ct:?}");
        // The backend's reply comes from the VIP, straight to the client: a packet from the
        // backend's own address and port is nobody's reply here.
        let back = Frame::tcp(SocketAddrV4::new(B1, 80), c, TCP_SYN | TCP_ACK).build();
        fx.check_bytes(
            "no reverse entry",
            &back,
            lb_integration::fixture::XDP_PASS,
            None,
            Reason::PassNotOurs,
        );

        // Unresolved, a neighbour in the kernel's table: its MAC from the FIB.
        let mac = fx0_mac(ns);
        let syn81 = Frame::tcp(c, vip(81), TCP_SYN).build();
        fx.check_bytes(
            "l2 through the FIB",
            &syn81,
            XDP_REDIRECT,
            Some(remac(&syn81, mac, FIB_MAC)),
            Reason::ForwardFib,
        );
        // Behind a gateway: the gateway would route the VIP back, so the packet is dropped.
        ns.ip(&[
            "route",
            "add",
            "192.0.2.15/32",
            "via",
            "192.0.2.14",
            "dev",
            "fx0",
        ])
        .unwrap();
        let syn82 = Frame::tcp(c, vip(82), TCP_SYN).build();
        fx.check_bytes(
            "l2 behind a gateway",
            &syn82,
            XDP_DROP,
            None,
            Reason::DropNoNextHop,
        );
    });
}

#[test]
fn ipip_and_gue_over_ipv4_carry_the_packet_untouched() {
    with_dsr(|fx, ns| {
        let c = client();
        let src = IpAddr::V4(SRC4);
        // IPIP, UDP inner, the client's TOS on the outer header.
        let q = with_tos(Frame::udp(c, vip(53)).build(), 0xb8);
        let out = encapsulated(&q, (src, IpAddr::V4(B1)), Outer::Ipip, 0, (LB_MAC, B1_MAC));
        fx.check_bytes("IPIP", &q, XDP_TX, Some(out), Reason::ForwardEncap);

        // GUE, TCP inner: the outer source port from the flow hash.
        for port in [40000u16, 40001, 40002] {
            let from = SocketAddrV4::new(*c.ip(), port);
            let syn = Frame::tcp(from, vip(443), TCP_SYN).build();
            let h = flow_hash(&FlowKey4::new(from, vip(443), proto::TCP), fx.seed);
            let sport = gue_sport(h);
            assert!(sport >= 49_152);
            let out = encapsulated(
                &syn,
                (src, IpAddr::V4(B2)),
                Outer::Gue {
                    sport,
                    dport: GUE_PORT,
                },
                0,
                (LB_MAC, B2_MAC),
            );
            fx.check_bytes("GUE", &syn, XDP_TX, Some(out), Reason::ForwardEncap);
        }

        // With an 802.1Q tag: the tag stays in front of the outer header.
        let mut tagged = Frame::tcp(c, vip(443), TCP_ACK);
        tagged.vlan = Some(7);
        tagged.seq = 1001;
        let tagged = tagged.build();
        let h = flow_hash(&FlowKey4::new(c, vip(443), proto::TCP), fx.seed);
        let out = encapsulated(
            &tagged,
            (src, IpAddr::V4(B2)),
            Outer::Gue {
                sport: gue_sport(h),
                dport: GUE_PORT,
            },
            0,
            (LB_MAC, B2_MAC),
        );
        fx.check_bytes(
            "GUE, tagged",
            &tagged,
            XDP_TX,
            Some(out),
            Reason::ForwardEncap,
        );

        // An unresolved backend: the outer header's next hop from the kernel FIB.
        let mac = fx0_mac(ns);
        let syn83 = Frame::tcp(c, vip(83), TCP_SYN).build();
        let out = encapsulated(
            &syn83,
            (src, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 14))),
            Outer::Ipip,
            0,
            (mac, FIB_MAC),
        );
        fx.check_bytes(
            "IPIP via the FIB",
            &syn83,
            XDP_REDIRECT,
            Some(out),
            Reason::ForwardFib,
        );

        // The DNAT service on the same VIP is still translated.
        let syn = Frame::tcp(c, vip(8080), TCP_SYN);
        let out = syn.dnat(SocketAddrV4::new(B2, 8081), LB_MAC, B2_MAC);
        fx.check("DNAT beside", &syn, XDP_TX, Some(&out), Reason::Forward);
    });
}

#[test]
fn ipip_and_gue_over_ipv6_carry_the_packet_untouched() {
    with_dsr(|fx, _| {
        let src = IpAddr::V6(SRC6);
        let label = |f: &FlowKey6| flow_label(flow_hash6(f, fx.seed));
        // IPIP (next header 41), the flow label from the flow.
        let syn = Frame6::tcp(client6(40000), vip6(80), TCP_SYN);
        let key = FlowKey6::new(client6(40000), vip6(80), proto::TCP);
        let bytes = syn.build();
        let out = encapsulated(
            &bytes,
            (src, IpAddr::V6(B61)),
            Outer::Ipip,
            label(&key),
            (LB_MAC, B61_MAC),
        );
        fx.check_bytes("IPIP6", &bytes, XDP_TX, Some(out), Reason::ForwardEncap);

        // GUE over IPv6: TCP and UDP inner, the outer UDP checksum over the whole datagram.
        for (f, port) in [
            (Frame6::tcp(client6(40001), vip6(443), TCP_SYN), 443),
            (Frame6::udp(client6(40002), vip6(53)), 53),
        ] {
            let p = if port == 53 { proto::UDP } else { proto::TCP };
            let from = client6(if port == 53 { 40002 } else { 40001 });
            let key = FlowKey6::new(from, vip6(port), p);
            let h = flow_hash6(&key, fx.seed);
            let bytes = f.build();
            let out = encapsulated(
                &bytes,
                (src, IpAddr::V6(B62)),
                Outer::Gue {
                    sport: gue_sport(h),
                    dport: GUE_PORT,
                },
                flow_label(h),
                (LB_MAC, B62_MAC),
            );
            fx.check_bytes("GUE6", &bytes, XDP_TX, Some(out), Reason::ForwardEncap);
        }

        // Extension headers before the inner TCP: summed into the outer checksum.
        let pad8 = vec![0, 0, 1, 4, 0, 0, 0, 0];
        let f = Frame6::tcp(client6(40003), vip6(443), TCP_SYN)
            .with_ext(ext::HOP_BY_HOP, pad8.clone())
            .with_ext(ext::DEST_OPTS, pad8);
        let key = FlowKey6::new(client6(40003), vip6(443), proto::TCP);
        let h = flow_hash6(&key, fx.seed);
        let bytes = f.build();
        let out = encapsulated(
            &bytes,
            (src, IpAddr::V6(B62)),
            Outer::Gue {
                sport: gue_sport(h),
                dport: GUE_PORT,
            },
            flow_label(h),
            (LB_MAC, B62_MAC),
        );
        fx.check_bytes(
            "GUE6 + HBH + DO",
            &bytes,
            XDP_TX,
            Some(out),
            Reason::ForwardEncap,
        );

        // l2 over IPv6: the MACs only.
        let bytes = Frame6::tcp(client6(40004), vip6(81), TCP_SYN).build();
        fx.check_bytes(
            "l2 v6",
            &bytes,
            XDP_TX,
            Some(remac(&bytes, LB_MAC, B61_MAC)),
            Reason::ForwardEncap,
        );
    });
}

/// An ICMP error a router on the client's side sends to the VIP about the backend's reply
/// (VIP:port → client, which went straight from the backend) reaches the backend that owns the
/// flow, untouched and encapsulated like the flow's packets (its GUE source port too).
#[test]
fn icmp_errors_about_dsr_flows_reach_their_backend_encapsulated() {
    use super::{
        icmp::{icmp_error, ip_bytes},
        six::icmp6_error,
    };
    with_dsr(|fx, _| {
        let c = client();
        let router = Ipv4Addr::new(198, 51, 100, 254);
        let syn = Frame::tcp(c, vip(443), TCP_SYN).build();
        assert_eq!(fx.run(&syn).0, XDP_TX, "the flow is set up");
        let reply = Frame::tcp(vip(443), c, TCP_ACK);
        let err = Frame::raw(
            router,
            VIP,
            proto::ICMP,
            icmp_error(3, 4, [0, 0, 0x05, 0x78], &ip_bytes(&reply, 28)),
        )
        .build();
        let h = flow_hash(&FlowKey4::new(c, vip(443), proto::TCP), fx.seed);
        let out = encapsulated(
            &err,
            (IpAddr::V4(SRC4), IpAddr::V4(B2)),
            Outer::Gue {
                sport: gue_sport(h),
                dport: GUE_PORT,
            },
            0,
            (LB_MAC, B2_MAC),
        );
        fx.check_bytes(
            "frag needed, GUE",
            &err,
            XDP_TX,
            Some(out),
            Reason::IcmpToBackend,
        );
        // About a flow it never saw: dropped, as for DNAT.
        let stray = Frame::tcp(vip(443), SocketAddrV4::new(*c.ip(), 40999), TCP_ACK);
        let err = Frame::raw(
            router,
            VIP,
            proto::ICMP,
            icmp_error(3, 4, [0, 0, 0x05, 0x78], &ip_bytes(&stray, 28)),
        );
        fx.check(
            "no such flow",
            &err,
            XDP_DROP,
            None,
            Reason::DropIcmpUnmatched,
        );

        // IPv6: a Packet Too Big about an IPIP6 flow's reply, and about a GUE6 one (the outer
        // UDP checksum over an ICMPv6 inner packet).
        let router6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xfe);
        for (port, to, mac, outer) in [(80u16, B61, B61_MAC, None), (443, B62, B62_MAC, Some(()))] {
            let from = client6(41000 + port);
            let syn = Frame6::tcp(from, vip6(port), TCP_SYN).build();
            assert_eq!(fx.run(&syn).0, XDP_TX, "the flow is set up");
            let reply = Frame6::tcp(vip6(port), from, TCP_ACK).build();
            let e = Frame6::raw(
                router6,
                VIP6,
                proto::ICMPV6,
                icmp6_error(2, 1280, &reply[14..]),
            )
            .build();
            let h = flow_hash6(&FlowKey6::new(from, vip6(port), proto::TCP), fx.seed);
            let outer = match outer {
                None => Outer::Ipip,
                Some(()) => Outer::Gue {
                    sport: gue_sport(h),
                    dport: GUE_PORT,
                },
            };
            let out = encapsulated(
                &e,
                (IpAddr::V6(SRC6), IpAddr::V6(to)),
                outer,
                flow_label(h),
                (LB_MAC, mac),
            );
            fx.check_bytes("PTB6", &e, XDP_TX, Some(out), Reason::IcmpToBackend);
        }
    });
}

/// The "too big" answer the LB builds to `frame` (IPv4 or IPv6, optionally tagged), built from
/// RFC 792 / RFC 4443 with its checksum from scratch: the L2 header kept but for the MACs,
/// swapped (back to the neighbour that sent it); then from the packet's destination (the VIP)
/// to its source: IPv4 (TOS 0, ID 0, DF, TTL 64) with ICMP 3/4 giving `mtu` in the next-hop
/// MTU field, or IPv6 (class and label 0, hop limit 64) with ICMPv6 2/0 giving `mtu`; quoting
/// the packet's first 128 (IPv4) or 256 (IPv6) bytes.
fn too_big_answer(frame: &[u8], mtu: u32) -> Vec<u8> {
    use super::{icmp::icmp_error, six::icmp6_error};
    let l3 = if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    let v6 = frame[l3 - 2..l3] == [0x86, 0xdd];
    let packet = &frame[l3..];
    let mut out = frame[..l3].to_vec();
    out[..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[..6]);
    if v6 {
        let (src, dst) = (&packet[8..24], &packet[24..40]);
        let quote = &packet[..packet.len().min(256)];
        let mut f = Frame6::raw(
            Ipv6Addr::from(<[u8; 16]>::try_from(dst).unwrap()),
            Ipv6Addr::from(<[u8; 16]>::try_from(src).unwrap()),
            proto::ICMPV6,
            icmp6_error(2, mtu, quote),
        );
        f.hop_limit = 64;
        out.extend_from_slice(&f.build()[14..]);
    } else {
        let (src, dst) = (&packet[12..16], &packet[16..20]);
        let quote = &packet[..packet.len().min(128)];
        let m = u16::try_from(mtu).unwrap().to_be_bytes();
        let mut f = Frame::raw(
            Ipv4Addr::from(<[u8; 4]>::try_from(dst).unwrap()),
            Ipv4Addr::from(<[u8; 4]>::try_from(src).unwrap()),
            proto::ICMP,
            icmp_error(3, 4, [0, 0, m[0], m[1]], quote),
        );
        f.ttl = 64;
        f.frag = 0x4000;
        let mut ip = f.build()[14..].to_vec();
        // The builder's ID is 0x1234; the LB's answers carry 0 (DF set: RFC 6864 allows it).
        ip[4..6].copy_from_slice(&[0, 0]);
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = lb_common::csum::ipv4_header(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&ip);
    }
    out
}

/// A UDP frame from the client to the VIP's `port` whose IPv4 packet is `tot` bytes.
fn udp_of(port: u16, tot: usize) -> Frame {
    let mut f = Frame::udp(client(), vip(port));
    f.payload = (0..tot - 28).map(|i| (i * 7 % 251) as u8).collect();
    f
}

#[test]
fn a_df_packet_too_big_once_encapsulated_is_answered_with_the_mtu_left() {
    use lb_integration::fixture::FIXTURE_MTU;
    with_dsr(|fx, _| {
        let mtu = usize::try_from(FIXTURE_MTU).unwrap();
        let src = IpAddr::V4(SRC4);
        // IPIP adds 20 bytes: a 1480-byte packet fits a 1500 link exactly, 1481 does not.
        let fits = udp_of(53, mtu - 20).build();
        let out = encapsulated(
            &fits,
            (src, IpAddr::V4(B1)),
            Outer::Ipip,
            0,
            (LB_MAC, B1_MAC),
        );
        assert_eq!(out.len(), 14 + mtu);
        fx.check_bytes("IPIP, fits", &fits, XDP_TX, Some(out), Reason::ForwardEncap);
        let big = udp_of(53, mtu - 19).build();
        fx.check_bytes(
            "IPIP, DF, one byte over",
            &big,
            XDP_TX,
            Some(too_big_answer(&big, 1480)),
            Reason::IcmpTooBigSent,
        );
        // Without DF the packet may not be answered ("too big" means "set DF and retry") nor
        // fragmented by the LB: counted.
        let mut nodf = udp_of(53, mtu - 19);
        nodf.frag = 0;
        fx.check("IPIP, no DF", &nodf, XDP_DROP, None, Reason::DropEncapMtu);

        // GUE adds 28: a TCP segment with data, answered with 1472; tagged, the tag stays.
        let mut seg = Frame::tcp(client(), vip(443), TCP_ACK);
        seg.payload = vec![0x5a; mtu - 28 - 40 + 1];
        seg.vlan = Some(7);
        let seg = seg.build();
        fx.check_bytes(
            "GUE, DF, tagged",
            &seg,
            XDP_TX,
            Some(too_big_answer(&seg, 1472)),
            Reason::IcmpTooBigSent,
        );

        // `l2` adds nothing: a full-sized packet goes as it is.
        let mut full = Frame::tcp(client(), vip(80), TCP_SYN);
        full.payload = vec![1; mtu - 40];
        let full = full.build();
        fx.check_bytes(
            "l2, full size",
            &full,
            XDP_TX,
            Some(remac(&full, LB_MAC, B1_MAC)),
            Reason::ForwardEncap,
        );

        // IPv6 (never fragmented on the way): Packet Too Big, 1460 for IPIP6 (40 more bytes),
        // 1452 for GUE (48), quoting 256 bytes.
        for (port, udp, over) in [(80u16, false, 40usize), (53, true, 48)] {
            let mut f = if udp {
                Frame6::udp(client6(42000), vip6(port))
            } else {
                Frame6::tcp(client6(42000), vip6(port), TCP_SYN)
            };
            let l4 = if udp { 8 } else { 20 };
            f.payload = (0..=(mtu - over - 40 - l4))
                .map(|i| (i % 251) as u8)
                .collect();
            let big = f.build();
            let want = u32::try_from(mtu - over).unwrap();
            fx.check_bytes(
                "IPv6, one byte over",
                &big,
                XDP_TX,
                Some(too_big_answer(&big, want)),
                Reason::IcmpTooBigSent,
            );
            f.payload.pop();
            let fits = f.build();
            let (action, out) = fx.run(&fits);
            assert_eq!((action, out.len()), (XDP_TX, 14 + mtu), "IPv6, fits");
        }

        // A backend the agent has not resolved has no MTU yet: the kernel FIB fallback checks
        // the outer packet's length against fx0's 1500 itself and refuses it.
        let mut unresolved = Frame::tcp(client(), vip(83), TCP_ACK);
        unresolved.payload = vec![0x5a; mtu - 20 - 40 + 1];
        fx.check(
            "unresolved, over",
            &unresolved,
            XDP_DROP,
            None,
            Reason::DropNoNextHop,
        );

        // The answers are rate-limited like echo replies (a token bucket per CPU): a burst
        // far above it is cut, and every packet is either answered or counted.
        fx.rate_limited_burst(
            &big,
            (Reason::IcmpTooBigSent, Reason::DropEncapMtu),
            (
                lb_common::consts::TOO_BIG_BURST,
                lb_common::consts::TOO_BIG_RATE_PER_SEC,
            ),
        );
    });
}
