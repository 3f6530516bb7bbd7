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
