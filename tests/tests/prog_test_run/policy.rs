//! Policy: endpoint ACLs, internal VIPs, hairpin SNAT, instance-level public IPs.

use super::*;

#[test]
fn endpoint_acl_permits_and_denies_new_flows() {
    with_fixture(|fx| {
        let vip = SocketAddrV4::new(VIP, 8080);
        let b = SocketAddrV4::new(B1, 8080);
        let ok_src = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000);
        let syn = Frame::tcp(ok_src, vip, TCP_SYN);
        fx.check(
            "permitted source",
            &syn,
            XDP_TX,
            Some(&syn.dnat(b, LB_MAC, B1_MAC)),
            Reason::Forward,
        );
        let ack = Frame::tcp(ok_src, vip, TCP_ACK);
        fx.check(
            "its established flow",
            &ack,
            XDP_TX,
            Some(&ack.dnat(b, LB_MAC, B1_MAC)),
            Reason::Forward,
        );
        let denied = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            vip,
            TCP_SYN,
        );
        fx.check(
            "denied by rule 20",
            &denied,
            XDP_DROP,
            None,
            Reason::DropAcl,
        );
        let denied_ack = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            vip,
            TCP_ACK,
        );
        fx.check(
            "a non-SYN without a flow is a new flow too",
            &denied_ack,
            XDP_DROP,
            None,
            Reason::DropAcl,
        );
        let other = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 40000),
            vip,
            TCP_SYN,
        );
        fx.check(
            "no rule matches: default deny",
            &other,
            XDP_DROP,
            None,
            Reason::DropAcl,
        );
        // Other endpoints of the VIP have no ACL.
        let web = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            SocketAddrV4::new(VIP, 80),
            TCP_SYN,
        );
        let (action, _) = fx.run(&web.build());
        assert_eq!(action, XDP_TX, "the ACL of :8080 must not apply to :80");
        let Response::Acl(view) =
            fx.h.rec
                .handle(Request::Query(Query::AclList {
                    service: "203.0.113.10:8080/tcp".parse().unwrap(),
                }))
                .response
        else {
            panic!()
        };
        assert_eq!(view.drops, 3, "denials are counted per endpoint: {view:?}");
    });
}

/// A rule for 0.0.0.0/0 and an internal 0.0.0.0/0 decide where they apply: in the IPv4 ACL
/// map they share their key with a set's default entry, which must not be written over them.
#[test]
fn a_rule_or_internal_prefix_for_all_of_ipv4_beats_the_default() {
    with_fixture(|fx| {
        let b = |port| SocketAddrV4::new(B1, port);
        let src = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 99), 40000);
        let vip = SocketAddrV4::new(VIP, 8081);
        let syn = Frame::tcp(src, vip, TCP_SYN);
        fx.check(
            "permitted by rule 20, 0.0.0.0/0",
            &syn,
            XDP_TX,
            Some(&syn.dnat(b(8081), LB_MAC, B1_MAC)),
            Reason::Forward,
        );
        let denied = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            vip,
            TCP_SYN,
        );
        fx.check(
            "denied by rule 10",
            &denied,
            XDP_DROP,
            None,
            Reason::DropAcl,
        );
        let ilb = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 22), 80);
        let syn = Frame::tcp(src, ilb, TCP_SYN);
        fx.check(
            "an internal VIP open to all of IPv4",
            &syn,
            XDP_TX,
            Some(&syn.dnat(b(80), LB_MAC, B1_MAC)),
            Reason::Forward,
        );
    });
}

#[test]
fn internal_vip_admits_only_internal_sources_and_drops_hairpin() {
    with_fixture(|fx| {
        let ilb = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 20), 80);
        let b = SocketAddrV4::new(B1, 80);
        let syn = Frame::tcp(CLIENT, ilb, TCP_SYN);
        fx.check(
            "internal source",
            &syn,
            XDP_TX,
            Some(&syn.dnat(b, LB_MAC, B1_MAC)),
            Reason::Forward,
        );
        let outside = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            ilb,
            TCP_SYN,
        );
        fx.check(
            "external source",
            &outside,
            XDP_DROP,
            None,
            Reason::DropNotInternal,
        );
        let hairpin = Frame::tcp(SocketAddrV4::new(B1, 40000), ilb, TCP_SYN);
        fx.check(
            "its own backend (hairpin)",
            &hairpin,
            XDP_DROP,
            None,
            Reason::DropHairpin,
        );
        // The public VIP next door is not affected.
        let public = Frame::tcp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 70), 40000),
            SocketAddrV4::new(VIP, 80),
            TCP_SYN,
        );
        assert_eq!(fx.run(&public.build()).0, XDP_TX);
    });
}

/// `--hairpin snat`: a backend's connection to its own internal VIP goes to a backend with the
/// source rewritten to VIP:port, its reply comes back translated to the connecting backend,
/// and the SNAT port skips the VIP's service ports and ports other hairpin flows hold, until
/// none of the candidates is free (a counted drop).
#[test]
fn hairpin_snat_translates_both_ways_and_picks_free_ports() {
    with_fixture(|fx| {
        let v = Ipv4Addr::new(203, 0, 113, 21);
        let vip = SocketAddrV4::new(v, 80);
        let server = SocketAddrV4::new(B2, 8080);
        let seed = fx.seed;
        let cand = move |sport: u16, attempt: u32| {
            let flow = FlowKey4::new(SocketAddrV4::new(B1, sport), vip, proto::TCP);
            hairpin_port(flow_hash(&flow, seed), attempt)
        };
        // The frames of one hairpin flow from B1:sport that should get SNAT port `port`.
        let expect = |fx: &mut Fixture, what: &str, sport: u16, port: u16| {
            let client = SocketAddrV4::new(B1, sport);
            let snat = SocketAddrV4::new(v, port);
            let syn = Frame::tcp(client, vip, TCP_SYN);
            let mut out = syn.dnat(server, LB_MAC, B2_MAC).snat(snat, LB_MAC, B2_MAC);
            out.ttl += 1; // one hop, two rewrites
            fx.check(what, &syn, XDP_TX, Some(&out), Reason::HairpinSnat);
            (client, snat)
        };
        let mut held = vec![50001u16];

        // One flow, both ways, and its tracked next packet.
        let sport = (40000..=u16::MAX).find(|&p| cand(p, 0) != 50001).unwrap();
        let (client, snat) = expect(fx, "hairpin SYN", sport, cand(sport, 0));
        held.push(snat.port());
        let ack = Frame::tcp(client, vip, TCP_ACK);
        let mut out = ack.dnat(server, LB_MAC, B2_MAC).snat(snat, LB_MAC, B2_MAC);
        out.ttl += 1;
        fx.check("tracked ACK", &ack, XDP_TX, Some(&out), Reason::HairpinSnat);
        let reply = Frame::tcp(server, snat, TCP_SYN | TCP_ACK);
        let mut out = reply.snat(vip, LB_MAC, B1_MAC).dnat(client, LB_MAC, B1_MAC);
        out.ttl += 1;
        fx.check(
            "reply, through the connecting backend's next hop",
            &reply,
            XDP_TX,
            Some(&out),
            Reason::HairpinReply,
        );

        // A flow whose first candidate is a service port of the VIP, and one whose first
        // candidate another hairpin flow holds: both take their second.
        for (what, taken) in [("service port", 50001), ("held port", snat.port())] {
            let sp = (1024..=u16::MAX)
                .find(|&p| p != sport && cand(p, 0) == taken && !held.contains(&cand(p, 1)))
                .expect("a source port with that first candidate");
            expect(fx, what, sp, cand(sp, 1));
            held.push(cand(sp, 1));
        }

        // Every candidate of one flow held (by flows that took them as first choice): dropped.
        let target = (30000..=u16::MAX)
            .find(|&p| (0..HAIRPIN_PORT_TRIES).all(|a| !held.contains(&cand(p, a))))
            .unwrap();
        for a in 0..HAIRPIN_PORT_TRIES {
            let port = cand(target, a);
            let sp = (1024..=u16::MAX)
                .find(|&p| p != target && cand(p, 0) == port)
                .expect("a source port with that first candidate");
            expect(fx, "occupier", sp, port);
        }
        let syn = Frame::tcp(SocketAddrV4::new(B1, target), vip, TCP_SYN);
        fx.check(
            "no free SNAT port",
            &syn,
            XDP_DROP,
            None,
            Reason::DropHairpinNoPort,
        );
    });
}

#[test]
fn pip_translates_every_protocol_both_ways() {
    with_fixture(|fx| {
        let pip = Ipv4Addr::new(203, 0, 113, 50);
        let to_b1 = |port| SocketAddrV4::new(B1, port);
        let echo = Frame::raw(
            *CLIENT.ip(),
            pip,
            proto::ICMP,
            vec![8, 0, 0xf7, 0xfe, 0, 1, 0, 0],
        );
        fx.check(
            "ping to a PIP",
            &echo,
            XDP_TX,
            Some(&echo.dnat(to_b1(0), LB_MAC, B1_MAC)),
            Reason::PipIn,
        );
        let syn = Frame::tcp(CLIENT, SocketAddrV4::new(pip, 2222), TCP_SYN);
        fx.check(
            "TCP to any port of a PIP",
            &syn,
            XDP_TX,
            Some(&syn.dnat(to_b1(2222), LB_MAC, B1_MAC)),
            Reason::PipIn,
        );
        let mut udp = Frame::udp(CLIENT, SocketAddrV4::new(pip, 5000));
        udp.l4 = L4::Udp {
            sport: CLIENT.port(),
            dport: 5000,
            no_csum: true,
        };
        fx.check(
            "UDP without checksum to a PIP",
            &udp,
            XDP_TX,
            Some(&udp.dnat(to_b1(5000), LB_MAC, B1_MAC)),
            Reason::PipIn,
        );
        let mut frag = Frame::raw(*CLIENT.ip(), pip, proto::TCP, vec![0xab; 24]);
        frag.frag = 185; // a non-first fragment: no L4 header to touch
        fx.check(
            "non-first fragment to a PIP",
            &frag,
            XDP_TX,
            Some(&frag.dnat(to_b1(0), LB_MAC, B1_MAC)),
            Reason::PipIn,
        );

        // Everything the instance sends leaves as the PIP (not a tracked VIP flow).
        let vip_src = |port| SocketAddrV4::new(pip, port);
        let mut reply = Frame::raw(
            B1,
            *CLIENT.ip(),
            proto::ICMP,
            vec![0, 0, 0xff, 0xfe, 0, 1, 0, 0],
        );
        reply.smac = B1_MAC;
        fx.check(
            "echo reply from the instance",
            &reply,
            XDP_TX,
            Some(&reply.snat(vip_src(0), LB_MAC, CLIENT_MAC)),
            Reason::PipOut,
        );
        let mut out = Frame::tcp(SocketAddrV4::new(B1, 2222), CLIENT, TCP_SYN | TCP_ACK);
        out.smac = B1_MAC;
        fx.check(
            "TCP from the instance",
            &out,
            XDP_TX,
            Some(&out.snat(vip_src(2222), LB_MAC, CLIENT_MAC)),
            Reason::PipOut,
        );
        let mut bad =
            Frame::raw(*CLIENT.ip(), pip, proto::ICMP, vec![8, 0, 0, 0, 0, 1, 0, 0]).build();
        let l3 = 14;
        bad[l3] = 0x44; // bad IHL: malformed is never translated
        let (action, _) = fx.run(&bad);
        assert_eq!(
            action, XDP_PASS,
            "a malformed packet to a PIP is not translated (not a VIP: passed)"
        );
    });
}

/// HA ports: TCP and UDP to any port of the internal VIP reach its backends with the port
/// kept, and their replies come back from VIP:that port; an exact service on the same VIP wins;
/// a source outside the VIP's prefixes is refused as on any internal VIP.
#[test]
fn ha_ports_balance_every_port_keep_it_and_lose_to_an_exact_service() {
    with_fixture(|fx| {
        // Whichever backend the table picked: the frame must be exactly one of the two DNATs.
        let picked = |fx: &mut Fixture, what: &str, f: &Frame, port: u16| -> SocketAddrV4 {
            let before = fx.counts();
            let (action, out) = fx.run(&f.build());
            assert_eq!(action, XDP_TX, "{what}");
            let mut hits = Vec::new();
            for (ip, mac) in [(HA1, HA1_MAC), (HA2, HA2_MAC)] {
                let be = SocketAddrV4::new(ip, port);
                if out == f.dnat(be, LB_MAC, mac).build() {
                    hits.push(be);
                }
            }
            assert_eq!(hits.len(), 1, "{what}: {}", hex(&out));
            let after = fx.counts();
            assert_eq!(
                after[Reason::Forward as usize] - before[Reason::Forward as usize],
                1,
                "{what}"
            );
            hits[0]
        };
        for port in [5432u16, 8080, 1, 65535] {
            let syn = Frame::tcp(CLIENT, SocketAddrV4::new(HA_VIP, port), TCP_SYN);
            let be = picked(fx, &format!("SYN to :{port}"), &syn, port);
            // The reply comes from the same port and leaves as VIP:port.
            let mut reply = Frame::tcp(be, CLIENT, TCP_SYN | TCP_ACK);
            reply.smac = if *be.ip() == HA1 { HA1_MAC } else { HA2_MAC };
            fx.check(
                &format!("SYN-ACK from :{port}"),
                &reply,
                XDP_TX,
                Some(&reply.snat(SocketAddrV4::new(HA_VIP, port), LB_MAC, CLIENT_MAC)),
                Reason::Reply,
            );
        }
        for port in [53u16, 5353, 40000] {
            let q = Frame::udp(CLIENT, SocketAddrV4::new(HA_VIP, port));
            picked(fx, &format!("UDP to :{port}"), &q, port);
        }
        // An error about the VIP's reply from :5432 reaches the backend as about its own
        // packet from that port: the backend has no port of its own, so the embedded one is
        // kept. (This once wrote the backend's port 0 there; the model found it.)
        let vip5432 = SocketAddrV4::new(HA_VIP, 5432);
        let syn = Frame::tcp(CLIENT, vip5432, TCP_SYN);
        let be = picked(fx, "SYN to :5432 again", &syn, 5432);
        let mtu = [0, 0, 0x05, 0x78];
        // A router inside the internal prefixes (an error from outside them is refused).
        let router = Ipv4Addr::new(198, 51, 100, 50);
        let reply = Frame::tcp(vip5432, CLIENT, TCP_ACK);
        let err = Frame::raw(
            router,
            HA_VIP,
            proto::ICMP,
            icmp::icmp_error(3, 4, mtu, &icmp::ip_bytes(&reply, 40)),
        );
        let mut want = Frame::raw(
            router,
            *be.ip(),
            proto::ICMP,
            icmp::icmp_error(
                3,
                4,
                mtu,
                &icmp::ip_bytes(&Frame::tcp(be, CLIENT, TCP_ACK), 40),
            ),
        );
        want.ttl = err.ttl - 1;
        want.smac = LB_MAC;
        want.dmac = if *be.ip() == HA1 { HA1_MAC } else { HA2_MAC };
        fx.check(
            "frag needed about the reply from :5432",
            &err,
            XDP_TX,
            Some(&want),
            Reason::IcmpToBackend,
        );
        // The exact service on the same VIP wins over the catch-all, with its own port.
        let ssh = Frame::tcp(CLIENT, SocketAddrV4::new(HA_VIP, 22), TCP_SYN);
        fx.check(
            "SYN to the exact 22/tcp",
            &ssh,
            XDP_TX,
            Some(&ssh.dnat(SocketAddrV4::new(SSH, 2222), LB_MAC, SSH_MAC)),
            Reason::Forward,
        );
        // Outside the internal prefixes: refused as by any internal VIP.
        let outsider = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 100), 40000);
        let syn = Frame::tcp(outsider, SocketAddrV4::new(HA_VIP, 5432), TCP_SYN);
        fx.check("an outsider", &syn, XDP_DROP, None, Reason::DropNotInternal);
        // Other protocols to the VIP are not HA ports' (ICMP other than echo is a drop, as
        // on any VIP): a raw protocol 47 packet is dropped as no balanced protocol.
        let gre = Frame::raw(*CLIENT.ip(), HA_VIP, 47, vec![0; 8]);
        fx.check("GRE to the VIP", &gre, XDP_DROP, None, Reason::DropProto);
    });
}
