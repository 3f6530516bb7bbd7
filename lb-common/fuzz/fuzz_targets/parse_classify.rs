//! Any byte string as a frame: parsing and classification never panic, a balanceable frame's
//! 5-tuple is the frame's own bytes, a verdict is the same when asked twice, and a frame the
//! model forwards really is a TCP/UDP flow to a service with a live backend.
#![no_main]

use lb_common::{
    addr::{Addr, v4_mapped},
    conn,
    flow::proto,
    hash::dist,
    maps::{RevKey, RevService, ServiceKey},
    model::{Model, ModelBackend, Verdict, parse},
};
use libfuzzer_sys::fuzz_target;

/// `2001:db8:<a>::<b>`.
fn v6(a: u8, b: u8) -> Addr {
    let mut x = [0u8; 16];
    x[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    x[5] = a;
    x[15] = b;
    x
}

/// Two VIPs of each family, 203.0.113.10 and 2001:db8:3::10, each with 80/tcp over two
/// backends (with their reverse-service entries), 53/udp with an empty table and 8080/tcp
/// spread by source.
fn model() -> Model {
    let mut m = Model {
        seed: 0x5eed_1b00,
        ..Model::default()
    };
    let families = [
        (v4_mapped([203, 0, 113, 10]), [1u32, 2], false),
        (v6(3, 0x10), [3, 4], true),
    ];
    for (vip, [a, b], six) in families {
        let backend = |i| if six { v6(2, i) } else { v4_mapped([192, 0, 2, i]) };
        m.vips.insert(vip);
        for (port, p, table, mode) in [
            (
                80u16,
                proto::TCP,
                vec![a, b, a, b, b, a, a],
                dist::FIVE_TUPLE,
            ),
            (53, proto::UDP, vec![], dist::FIVE_TUPLE),
            // Source affinity: the hash covers the addresses only.
            (8080, proto::TCP, vec![b, a, a, b, a], dist::SOURCE_IP),
        ] {
            let key = ServiceKey {
                vip,
                port: port.to_be_bytes(),
                proto: p,
                _pad: 0,
            };
            m.services.insert(key, table);
            m.modes.insert(key, mode);
        }
        for (id, last) in [(a, 11u8), (b, 12)] {
            m.backends.insert(
                id,
                ModelBackend {
                    addr: backend(last),
                    port: 80u16.to_be_bytes(),
                    active: true,
                },
            );
            m.revs.insert(
                RevKey::of(backend(last), 80u16.to_be_bytes(), proto::TCP),
                RevService {
                    vip,
                    vport: 80u16.to_be_bytes(),
                    flags: 0,
                    service: 0,
                    backend: id,
                },
            );
        }
    }
    m
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse(data) {
        assert!(p.l3_off == 14 || p.l3_off == 18);
        if let Some((k, _)) = p.flow {
            assert!(p.problem.is_none());
            let l4 = p.l4_off;
            assert_eq!(k.sport, [data[l4], data[l4 + 1]]);
            assert_eq!(k.dport, [data[l4 + 2], data[l4 + 3]]);
            assert_eq!(k.dst, p.dst);
        } else {
            assert!(p.problem.is_some());
        }
    }
    let mut a = model();
    let mut b = model();
    let v = a.classify(data);
    assert_eq!(v, b.classify(data), "classification is deterministic");
    if let Verdict::Forward(id) = v {
        let (k, flags) = parse(data)
            .expect("forwarded frames parse")
            .flow
            .expect("a flow");
        assert!(a.backends[&id].active);
        let stray = k.proto == proto::TCP && !conn::is_syn(flags) && conn::is_teardown(flags);
        assert!(
            stray || a.flows.contains_key(&k),
            "a forwarded flow is tracked (unless a stray RST or FIN)"
        );
        // The same frame again goes to the same backend (tracked or re-picked alike).
        assert_eq!(a.classify(data), Verdict::Forward(id));
    }
});
