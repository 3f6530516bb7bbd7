//! Hairpin SNAT over IPv6 (`lb_xdp` → `lb_hairpin6` by tail call), as the IPv4 fixture in
//! `policy.rs`: exact bytes both ways, and the SNAT port search.

use std::net::{Ipv6Addr, SocketAddrV6};

use lb_common::{
    flow::{FlowKey6, proto},
    hash::flow_hash6,
    maps::{HAIRPIN_PORT_TRIES, hairpin_port},
    verdict::Reason,
};
use lb_integration::{
    fixture::{XDP_DROP, XDP_TX},
    packet::{Frame6, LB_MAC, TCP_ACK, TCP_SYN},
};

use super::{B1, B1_MAC, B2, B2_MAC, Fixture, with_fixture6};

/// `--hairpin snat` on an internal IPv6 VIP: a backend's connection to its own VIP goes to a
/// backend with the source rewritten to VIP:port, the reply comes back translated to the
/// connecting backend through its next hop, and the SNAT port skips the VIP's service ports
/// and ports other hairpin flows hold, until none of the candidates is free (a counted drop).
#[test]
fn ipv6_hairpin_snat_translates_both_ways_and_picks_free_ports() {
    with_fixture6(|fx| {
        let v = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x21);
        let vip = SocketAddrV6::new(v, 80, 0, 0);
        let server = SocketAddrV6::new(B2, 8081, 0, 0);
        let seed = fx.seed;
        let at = |ip, port| SocketAddrV6::new(ip, port, 0, 0);
        let cand = move |sport: u16, attempt: u32| {
            let flow = FlowKey6::new(at(B1, sport), vip, proto::TCP);
            hairpin_port(flow_hash6(&flow, seed), attempt)
        };
        // The SYN of one hairpin flow from B1:sport that should get SNAT port `port`.
        let expect = |fx: &mut Fixture, what: &str, sport: u16, port: u16| {
            let (client, snat) = (at(B1, sport), at(v, port));
            let mut syn = Frame6::tcp(client, vip, TCP_SYN);
            syn.smac = B1_MAC;
            let mut out = syn.dnat(server, LB_MAC, B2_MAC).snat(snat, LB_MAC, B2_MAC);
            out.hop_limit += 1; // one hop, two rewrites
            fx.check_bytes(
                what,
                &syn.build(),
                XDP_TX,
                Some(out.build()),
                Reason::HairpinSnat,
            );
            (client, snat)
        };
        let mut held = vec![50001u16];

        // One flow, both ways, and its tracked next packet.
        let sport = (40000..=u16::MAX).find(|&p| cand(p, 0) != 50001).unwrap();
        let (client, snat) = expect(fx, "hairpin SYN", sport, cand(sport, 0));
        held.push(snat.port());
        let mut ack = Frame6::tcp(client, vip, TCP_ACK);
        ack.smac = B1_MAC;
        let mut out = ack.dnat(server, LB_MAC, B2_MAC).snat(snat, LB_MAC, B2_MAC);
        out.hop_limit += 1;
        fx.check_bytes(
            "tracked ACK",
            &ack.build(),
            XDP_TX,
            Some(out.build()),
            Reason::HairpinSnat,
        );
        let mut reply = Frame6::tcp(server, snat, TCP_SYN | TCP_ACK);
        reply.smac = B2_MAC;
        let mut out = reply.snat(vip, LB_MAC, B1_MAC).dnat(client, LB_MAC, B1_MAC);
        out.hop_limit += 1;
        fx.check_bytes(
            "reply, through the connecting backend's next hop",
            &reply.build(),
            XDP_TX,
            Some(out.build()),
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
        let mut syn = Frame6::tcp(at(B1, target), vip, TCP_SYN);
        syn.smac = B1_MAC;
        fx.check_bytes(
            "no free SNAT port",
            &syn.build(),
            XDP_DROP,
            None,
            Reason::DropHairpinNoPort,
        );
    });
}
