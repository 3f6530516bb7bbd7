//! `lb explain` against the kernel: for 1,000 pseudo-random new flows over services of every
//! kind (two backends, UDP, an ACL, an internal VIP with sources inside and outside it, HA
//! ports, the distribution modes), the verdict and backend the explanation gives are what the
//! program does with the flow's first packet, and afterwards the explanation finds the flow
//! tracked to that backend.

use super::*;

/// The services explained, each with the flows' protocol.
const SERVICES: [(Ipv4Addr, u16, u8); 9] = [
    (VIP, 80, proto::TCP),
    (VIP, 53, proto::UDP),
    (VIP, 8080, proto::TCP),
    (VIP, 85, proto::TCP),
    (VIP, 86, proto::TCP),
    (Ipv4Addr::new(203, 0, 113, 20), 80, proto::TCP),
    (HA_VIP, 0, proto::TCP),
    (HA_VIP, 0, proto::UDP),
    (HA_VIP, 22, proto::TCP),
];

/// A small deterministic generator (xorshift), so a failure names a reproducible flow.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn explain(
    fx: &mut Fixture,
    client: SocketAddrV4,
    service: &str,
) -> lb_userspace::api::ExplainView {
    let q = Query::Explain {
        client: client.into(),
        service: service.parse().unwrap(),
    };
    match fx.h.rec.handle(Request::Query(q)).response {
        Response::Explain(v) => *v,
        other => panic!("explain {client} {service}: {other:?}"),
    }
}

#[test]
fn explain_agrees_with_the_kernel_on_1000_new_flows() {
    with_fixture(|fx| {
        let mut rng = Rng(0x5eed_1b00_cafe_f00d);
        let (mut forwarded, mut dropped) = (0, 0);
        for i in 0..1000 {
            let (vip, port, p) = SERVICES[(rng.next() % SERVICES.len() as u64) as usize];
            // HA ports: any port but the exact 22/tcp service's.
            let port = if port == 0 {
                let r = 1 + (rng.next() % 60_000) as u16;
                if r == 22 { 23 } else { r }
            } else {
                port
            };
            let client = SocketAddrV4::new(
                Ipv4Addr::new(198, 51, 100, (rng.next() % 250) as u8 + 1),
                1024 + (rng.next() % 60_000) as u16,
            );
            let dst = SocketAddrV4::new(vip, port);
            let service = format!("{dst}/{}", if p == proto::TCP { "tcp" } else { "udp" });
            let what = format!("flow {i}: {client} -> {service}");
            let e = explain(fx, client, &service);
            let frame = if p == proto::TCP {
                Frame::tcp(client, dst, TCP_SYN)
            } else {
                Frame::udp(client, dst)
            };
            let (action, out, _) = fx.h.run(&frame.build());
            match e.verdict.as_str() {
                "forward" => {
                    assert!(
                        action == XDP_TX || action == XDP_REDIRECT,
                        "{what}: explained forward, kernel action {action}"
                    );
                    let l3 = frame.l3_offset();
                    let ip = Ipv4Addr::new(out[l3 + 16], out[l3 + 17], out[l3 + 18], out[l3 + 19]);
                    let dport = u16::from_be_bytes([out[l3 + 22], out[l3 + 23]]);
                    let got = SocketAddrV4::new(ip, dport).to_string();
                    assert_eq!(Some(got.clone()), e.backend, "{what}: {e:?}");
                    let again = explain(fx, client, &service);
                    let t = again
                        .tracked
                        .unwrap_or_else(|| panic!("{what}: not tracked"));
                    // The tracked entry names the backend as configured: an HA-ports backend
                    // has port 0 (the flow keeps its own).
                    let tracked: SocketAddrV4 = t.backend.parse().unwrap();
                    assert_eq!(*tracked.ip(), ip, "{what}: tracked {t:?}");
                    assert!(
                        tracked.port() == 0 || tracked.port() == dport,
                        "{what}: {t:?}"
                    );
                    forwarded += 1;
                }
                v if v.starts_with("drop_") => {
                    assert_eq!(action, XDP_DROP, "{what}: explained {v}");
                    assert!(e.tracked.is_none(), "{what}");
                    dropped += 1;
                }
                v => panic!("{what}: unexpected verdict {v}: {e:?}"),
            }
        }
        // Both outcomes were exercised, in numbers.
        assert!(
            forwarded > 500 && dropped > 100,
            "{forwarded} forwarded, {dropped} dropped"
        );
    });
}

/// A flow's age and idle time come from its entry: made when its first packet was tracked
/// (and kept while later packets refresh it), last seen at its latest. `lb flows` and `lb
/// explain` show both.
#[test]
fn flows_show_age_and_idle_time_from_the_entry() {
    with_fixture(|fx| {
        let vip80 = SocketAddrV4::new(VIP, 80);
        let syn = Frame::tcp(CLIENT, vip80, TCP_SYN);
        let (action, _, _) = fx.h.run(&syn.build());
        assert!(action == XDP_TX || action == XDP_REDIRECT);
        let key = FlowKey4::new(CLIENT, vip80, proto::TCP);
        let e = fx.h.flow(&key).expect("the SYN is tracked");
        assert_eq!(
            e.created_s, e.seen_s,
            "a new entry is made and seen at once"
        );
        // Age it: made 100 s ago, last seen 5 s ago.
        let now = coarse_now_s();
        let mut old = e;
        old.created_s = now - 100;
        old.seen_s = now - 5;
        fx.h.plant_flow(&key, &old);
        let q = Query::Flows {
            service: Some("203.0.113.10:80/tcp".parse().unwrap()),
            backend: None,
            client: None,
            limit: None,
        };
        let Response::Flows { flows, .. } = fx.h.rec.handle(Request::Query(q)).response else {
            panic!("no flows answer");
        };
        assert_eq!(flows.len(), 1, "{flows:?}");
        // The clock may tick between planting and reading.
        assert!((100..=101).contains(&flows[0].age_s), "{flows:?}");
        assert!((5..=6).contains(&flows[0].idle_s), "{flows:?}");
        // An ACK refreshes the last-seen time, not the age.
        let (action, _, _) = fx.h.run(&Frame::tcp(CLIENT, vip80, TCP_ACK).build());
        assert!(action == XDP_TX || action == XDP_REDIRECT);
        let after = fx.h.flow(&key).unwrap();
        assert_eq!(after.created_s, old.created_s, "{after:?}");
        assert!(after.seen_s >= now, "{after:?}");
        let t = explain(fx, CLIENT, "203.0.113.10:80/tcp")
            .tracked
            .expect("tracked");
        assert!((100..=101).contains(&t.age_s) && t.idle_s <= 1, "{t:?}");
    });
}
