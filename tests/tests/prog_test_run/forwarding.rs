//! Balancing and forwarding: TCP and UDP flows, VLANs, next-hop kinds, traffic that is not ours, bad packets.

use super::*;

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
        // The SYN-ACK from the chosen backend goes back from the VIP to the client's MAC.
        let reply = from_backend(be, CLIENT, TCP_SYN | TCP_ACK);
        fx.check(
            "SYN-ACK from backend",
            &reply,
            XDP_TX,
            Some(&reply.snat(vip80, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
        let ack = Frame::tcp(CLIENT, vip80, TCP_ACK);
        fx.check(
            "ACK of the same flow",
            &ack,
            XDP_TX,
            Some(&ack.dnat(be, LB_MAC, mac_of(be))),
            Reason::Forward,
        );
        // The other backend, from the same port to the same client: not this flow's reply.
        let other = if be == SocketAddrV4::new(B1, 80) {
            SocketAddrV4::new(B2, 8080)
        } else {
            SocketAddrV4::new(B1, 80)
        };
        let stray = from_backend(other, CLIENT, TCP_ACK);
        fx.check(
            "ACK from the other backend",
            &stray,
            XDP_PASS,
            None,
            Reason::PassNotReply,
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

/// The bug a new user found: a VIP flow from client port P to a backend, then a connection
/// from the same port straight to that backend. Its SYN-ACK is not the VIP flow's (the client's
/// last packet through the VIP was not a SYN), so it passes untouched, and from then on nothing
/// of that connection is rewritten to the VIP (which made the client reset it).
#[test]
fn a_port_reused_to_reach_the_backend_directly_is_not_hijacked() {
    with_fixture(|fx| {
        let vip80 = SocketAddrV4::new(VIP, 82);
        let be = SocketAddrV4::new(B2, 8082);
        let from_be = |flags| from_backend(be, CLIENT, flags);
        let syn = Frame::tcp(CLIENT, vip80, TCP_SYN);
        fx.check(
            "SYN",
            &syn,
            XDP_TX,
            Some(&syn.dnat(be, LB_MAC, mac_of(be))),
            Reason::Forward,
        );
        let sa = from_be(TCP_SYN | TCP_ACK);
        fx.check(
            "SYN-ACK",
            &sa,
            XDP_TX,
            Some(&sa.snat(vip80, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
        for (what, flags) in [("ACK", TCP_ACK), ("FIN", TCP_FIN | TCP_ACK)] {
            let f = Frame::tcp(CLIENT, vip80, flags);
            fx.check(
                what,
                &f,
                XDP_TX,
                Some(&f.dnat(be, LB_MAC, mac_of(be))),
                Reason::Forward,
            );
        }
        let fin = from_be(TCP_FIN | TCP_ACK);
        fx.check(
            "backend FIN",
            &fin,
            XDP_TX,
            Some(&fin.snat(vip80, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
        // The client connects to the backend directly from the same port: the backend's
        // SYN-ACK and everything after it pass to the kernel untouched.
        for (what, flags) in [
            ("direct SYN-ACK", TCP_SYN | TCP_ACK),
            ("direct data", TCP_ACK | TCP_PSH),
            ("direct FIN", TCP_FIN | TCP_ACK),
        ] {
            fx.check(what, &from_be(flags), XDP_PASS, None, Reason::PassNotReply);
        }
        // A new connection through the VIP from that port is a new flow again.
        fx.check(
            "new SYN",
            &syn,
            XDP_TX,
            Some(&syn.dnat(be, LB_MAC, mac_of(be))),
            Reason::Forward,
        );
        fx.check(
            "its SYN-ACK",
            &sa,
            XDP_TX,
            Some(&sa.snat(vip80, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
    });
}

/// Flag combinations no stack sends are dropped before any lookup; a RST or FIN of a flow
/// the LB does not track is forwarded by the table but creates no entry, so the backend's
/// answer to it is not taken for a reply.
#[test]
fn bad_tcp_flags_are_dropped_and_stray_teardowns_are_not_tracked() {
    with_fixture(|fx| {
        let vip80 = SocketAddrV4::new(VIP, 80);
        for (what, flags) in [
            ("SYN+FIN", TCP_SYN | TCP_FIN),
            ("SYN+RST", TCP_SYN | TCP_RST),
            ("no flags", 0),
            ("Xmas", TCP_FIN | TCP_PSH | TCP_URG),
        ] {
            let f = Frame::tcp(CLIENT, vip80, flags);
            fx.check(what, &f, XDP_DROP, None, Reason::DropTcpFlags);
        }
        for (port, flags) in [(41000, TCP_RST), (41001, TCP_FIN | TCP_ACK)] {
            let src = SocketAddrV4::new(*CLIENT.ip(), port);
            let be = SocketAddrV4::new(B2, 8082);
            let f = Frame::tcp(src, SocketAddrV4::new(VIP, 82), flags);
            fx.check(
                "stray teardown",
                &f,
                XDP_TX,
                Some(&f.dnat(be, LB_MAC, mac_of(be))),
                Reason::Forward,
            );
            let back = from_backend(be, src, TCP_RST | TCP_ACK);
            fx.check(
                "the backend's answer",
                &back,
                XDP_PASS,
                None,
                Reason::PassNotOurs,
            );
        }
    });
}

/// A flow closed longer ago than the close timeout no longer translates replies: an entry
/// planted as closed at boot time (the clock's second 0) is far past it.
#[test]
fn a_flow_closed_long_ago_translates_no_reply() {
    with_fixture(|fx| {
        let vip80 = SocketAddrV4::new(VIP, 82);
        let be = SocketAddrV4::new(B2, 8082);
        let syn = Frame::tcp(CLIENT, vip80, TCP_SYN);
        fx.check(
            "SYN",
            &syn,
            XDP_TX,
            Some(&syn.dnat(be, LB_MAC, mac_of(be))),
            Reason::Forward,
        );
        let key = FlowKey4::new(CLIENT, vip80, proto::TCP);
        let mut e = fx.h.flow(&key).expect("the SYN is tracked");
        e.tcp = lb_common::conn::CT_RST;
        e.seen_s = 0;
        fx.h.plant_flow(&key, &e);
        let ack = from_backend(be, CLIENT, TCP_ACK);
        fx.check(
            "reply of the closed flow",
            &ack,
            XDP_PASS,
            None,
            Reason::PassNotReply,
        );
        // Its client's next packet is re-picked from the table (same backend), tracked anew.
        let data = Frame::tcp(CLIENT, vip80, TCP_ACK);
        fx.check(
            "client data",
            &data,
            XDP_TX,
            Some(&data.dnat(be, LB_MAC, mac_of(be))),
            Reason::Forward,
        );
        fx.check(
            "reply again",
            &ack,
            XDP_TX,
            Some(&ack.snat(vip80, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
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

/// A packet is counted once, in its backend's record, and a service's totals add its
/// backends' records: removing the backend keeps its packets in the service's totals (the
/// agent moves them to the service's retired sum in `LB_SVC_RETIRED`).
#[test]
fn a_services_totals_are_its_backends_and_keep_a_removed_ones() {
    with_fixture(|fx| {
        let service = "203.0.113.10:82/tcp";
        let vip = SocketAddrV4::new(VIP, 82);
        let b = SocketAddrV4::new(B2, 8082);
        let totals = |fx: &mut Fixture| {
            let Response::Stats(s) = fx.h.rec.handle(Request::Query(Query::Stats)).response else {
                panic!("stats")
            };
            let c = &s
                .services
                .iter()
                .find(|v| v.service == service)
                .expect("the service")
                .counters;
            (c.packets, c.new_flows, c.reply_packets)
        };
        let syn = Frame::tcp(CLIENT, vip, TCP_SYN);
        fx.check(
            "SYN",
            &syn,
            XDP_TX,
            Some(&syn.dnat(b, LB_MAC, B2_MAC)),
            Reason::Forward,
        );
        let syn_ack = Frame::tcp(b, CLIENT, TCP_SYN | TCP_ACK);
        fx.check(
            "SYN-ACK",
            &syn_ack,
            XDP_TX,
            Some(&syn_ack.snat(vip, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
        let ack = Frame::tcp(CLIENT, vip, TCP_ACK);
        fx.check(
            "ACK",
            &ack,
            XDP_TX,
            Some(&ack.dnat(b, LB_MAC, B2_MAC)),
            Reason::Forward,
        );
        assert_eq!(totals(fx), (2, 1, 1));
        let out = fx.h.rec.handle(Request::Change(Command::BackendDel {
            service: service.parse().unwrap(),
            backend: "192.0.2.12:8082".parse().unwrap(),
        }));
        assert!(matches!(out.response, Response::Done(_)), "{out:?}");
        assert_eq!(totals(fx), (2, 1, 1), "the removed backend's packets stay");
        let (action, _) = fx.run(&ack.build());
        assert_eq!(action, XDP_DROP, "no backend left");
        assert_eq!(totals(fx), (2, 1, 1));
    });
}

/// `replies = "stateless"`: a packet from the backend's address and port is translated as a
/// reply with no flow behind it (any LB node can translate it), except when it goes to the
/// LB's own address: that is the answer to the LB's own connection, a probe, and the kernel
/// gets it as it is.
#[test]
fn stateless_replies_need_no_flow_but_spare_the_lbs_own_connections() {
    with_fixture(|fx| {
        let vip = SocketAddrV4::new(VIP, 8444);
        let b = SocketAddrV4::new(B2, 8444);
        let client = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 9), 5555);
        let reply = Frame::tcp(b, client, TCP_ACK);
        fx.check(
            "a reply of a flow this node never saw",
            &reply,
            XDP_TX,
            Some(&reply.snat(vip, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
        let syn_ack = Frame::tcp(b, client, TCP_SYN | TCP_ACK);
        fx.check(
            "a SYN-ACK too: no TCP state is kept for it",
            &syn_ack,
            XDP_TX,
            Some(&syn_ack.snat(vip, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
        let probe = Frame::tcp(
            b,
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 40000),
            TCP_SYN | TCP_ACK,
        );
        fx.check(
            "to the LB's own address: its probe's answer",
            &probe,
            XDP_PASS,
            None,
            Reason::PassNotOurs,
        );
        // The forward direction is as before: tracked, so the flow keeps its backend.
        let syn = Frame::tcp(client, vip, TCP_SYN);
        fx.check(
            "a new flow",
            &syn,
            XDP_TX,
            Some(&syn.dnat(b, LB_MAC, B2_MAC)),
            Reason::Forward,
        );
        // A tracked service's backend is not stateless: the same packet from 192.0.2.12:8082
        // (203.0.113.10:82) with no flow is refused.
        let tracked = Frame::tcp(SocketAddrV4::new(B2, 8082), client, TCP_ACK);
        let (action, _) = fx.run(&tracked.build());
        assert_eq!(action, XDP_PASS, "no flow, no reply");
    });
}

/// The backend the service's live table gives a new flow, by the service's own distribution
/// mode (`lb_common::hash::dist_hash`), read from the maps the agent wrote.
fn table_pick(fx: &Fixture, flow: &FlowKey4) -> SocketAddrV4 {
    let maps = fx.h.rec.maps();
    let info = maps
        .services
        .get(
            &lb_common::maps::ServiceKey4::of(flow.dst, flow.dport, flow.proto),
            0,
        )
        .expect("the service");
    let h = lb_common::hash::dist_hash(flow, info.distribution(), fx.seed);
    let at = info.table_off + slot(h, info.table_len).expect("a table");
    let id = maps.ring.get(&at, 0).expect("a slot");
    let b = maps.backends.get(&id, 0).expect("a backend");
    SocketAddrV4::new(b.addr.into(), u16::from_be_bytes(b.port))
}

/// Each distribution mode hashes its part of the 5-tuple: under `source-ip` one client
/// address reaches one backend whatever its ports, under `source-ip-protocol` too (one
/// protocol here), and under `5-tuple` its ports spread it. Exact bytes for every flow.
#[test]
fn distribution_modes_pick_by_their_part_of_the_5_tuple() {
    with_fixture(|fx| {
        for port in [80u16, 85, 86] {
            let vip = SocketAddrV4::new(VIP, port);
            let mut seen = std::collections::BTreeSet::new();
            for sport in 40_000..40_016u16 {
                let client = SocketAddrV4::new(*CLIENT.ip(), sport);
                let syn = Frame::tcp(client, vip, TCP_SYN);
                let be = table_pick(fx, &FlowKey4::new(client, vip, proto::TCP));
                fx.check(
                    &format!("port {port}, from {client}"),
                    &syn,
                    XDP_TX,
                    Some(&syn.dnat(be, LB_MAC, mac_of(be))),
                    Reason::Forward,
                );
                seen.insert(be);
            }
            let want = if port == 80 { 2 } else { 1 };
            assert_eq!(seen.len(), want, "port {port}: {seen:?}");
        }
        // Under source-ip, other client addresses reach the other backend too.
        let vip = SocketAddrV4::new(VIP, 85);
        let picks: std::collections::BTreeSet<_> = (2..40u8)
            .map(|last| {
                let c = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, last), 40_000);
                table_pick(fx, &FlowKey4::new(c, vip, proto::TCP))
            })
            .collect();
        assert_eq!(picks.len(), 2, "{picks:?}");
    });
}

/// A tracked flow's entry keeps when it was last seen (refreshed by its packets, but not once
/// it is closed: then it is the close time), and, with TCP reset on, the client's sequence
/// numbers: the one the backend expects next, and the client's last acknowledgement.
#[test]
fn flows_record_when_they_were_seen_and_with_tcp_reset_their_sequence_numbers() {
    use lb_common::conn::{CT_F_SEQ, CT_RST, CT_SYN};
    with_fixture(|fx| {
        let vip87 = SocketAddrV4::new(VIP, 87);
        let be = SocketAddrV4::new(B1, 87);
        let key = FlowKey4::new(CLIENT, vip87, proto::TCP);
        let sent = |fx: &mut Fixture, what: &str, f: &Frame| {
            let before = coarse_now_s();
            fx.check(
                what,
                f,
                XDP_TX,
                Some(&f.dnat(be, LB_MAC, B1_MAC)),
                Reason::Forward,
            );
            let after = coarse_now_s();
            (fx.h.flow(&key).expect("tracked"), before..=after)
        };

        // The SYN (with 5 bytes of data, as the frames carry): seq + 5 + 1 for the SYN.
        let mut syn = Frame::tcp(CLIENT, vip87, TCP_SYN);
        syn.seq = 5000;
        let (e, when) = sent(fx, "SYN", &syn);
        assert_eq!((e.tcp, e.flags), (CT_SYN, CT_F_SEQ), "{e:?}");
        assert_eq!((e.seq, e.ack), (5006, 0), "{e:?}");
        assert!(when.contains(&e.seen_s), "{e:?} seen outside {when:?}");

        // Data: its sequence number plus its length, and its acknowledgement.
        let mut data = Frame::tcp(CLIENT, vip87, TCP_ACK | TCP_PSH);
        data.seq = 5006;
        data.ack = 0xdead_beef;
        let (e, _) = sent(fx, "data", &data);
        assert_eq!((e.tcp, e.seq, e.ack), (0, 5011, 0xdead_beef), "{e:?}");

        // An entry last seen long ago is refreshed by the next packet.
        let mut old = e;
        old.seen_s = 0;
        fx.h.plant_flow(&key, &old);
        let (e, when) = sent(fx, "data after a long pause", &data);
        assert!(when.contains(&e.seen_s), "{e:?} seen outside {when:?}");

        // A RST closes the flow and records when.
        old.seen_s = 0;
        fx.h.plant_flow(&key, &old);
        let mut rst = Frame::tcp(CLIENT, vip87, TCP_RST);
        rst.seq = 5011;
        let (e, when) = sent(fx, "RST", &rst);
        assert_eq!(e.tcp, CT_RST, "{e:?}");
        assert!(when.contains(&e.seen_s), "{e:?} closed outside {when:?}");

        // Closed a second ago: still translated, but its packets no longer refresh it, so the
        // close timeout counts from the close.
        let mut closed = e;
        closed.seen_s = coarse_now_s() - 1;
        fx.h.plant_flow(&key, &closed);
        let (e, _) = sent(fx, "ACK after the close", &data);
        assert_eq!(e.seen_s, closed.seen_s, "{e:?}");

        // Without TCP reset nothing is recorded but the time.
        let vip80 = SocketAddrV4::new(VIP, 80);
        let syn80 = Frame::tcp(CLIENT, vip80, TCP_SYN);
        let b80 = fx.model_pick(CLIENT, 80);
        fx.check(
            "SYN to 80",
            &syn80,
            XDP_TX,
            Some(&syn80.dnat(b80, LB_MAC, mac_of(b80))),
            Reason::Forward,
        );
        let e =
            fx.h.flow(&FlowKey4::new(CLIENT, vip80, proto::TCP))
                .expect("tracked");
        assert_eq!((e.flags, e.seq, e.ack), (0, 0, 0), "{e:?}");
        assert_ne!(e.seen_s, 0, "{e:?}");
    });
}

/// A backend's reply refreshes its flow too (UDP flows that only the backend talks on stay).
#[test]
fn a_reply_refreshes_its_flow() {
    with_fixture(|fx| {
        let vip53 = SocketAddrV4::new(VIP, 53);
        let be = SocketAddrV4::new(B1, 53);
        let q = Frame::udp(CLIENT, vip53);
        fx.check(
            "query",
            &q,
            XDP_TX,
            Some(&q.dnat(be, LB_MAC, B1_MAC)),
            Reason::Forward,
        );
        let key = FlowKey4::new(CLIENT, vip53, proto::UDP);
        let mut e = fx.h.flow(&key).expect("tracked");
        e.seen_s = 0;
        fx.h.plant_flow(&key, &e);
        let mut a = Frame::udp(be, CLIENT);
        a.smac = B1_MAC;
        let before = coarse_now_s();
        fx.check(
            "answer",
            &a,
            XDP_TX,
            Some(&a.snat(vip53, LB_MAC, CLIENT_MAC)),
            Reason::Reply,
        );
        let after = coarse_now_s();
        let e = fx.h.flow(&key).expect("tracked");
        assert!((before..=after).contains(&e.seen_s), "{e:?}");
    });
}
