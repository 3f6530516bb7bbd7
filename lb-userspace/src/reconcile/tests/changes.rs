//! API changes: what each writes, in which order, and what it refuses.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_common::{
    acl, addr,
    consts::{MAX_BACKENDS, MAX_SERVICES},
    maps::Backend,
};
use proptest::prelude::*;

use super::*;
use crate::{
    spec::{Proto, map_prefix},
    state::{Kind, State},
};

/// Text an operator (or an attacker with the socket) might type: near-valid addresses,
/// prefixes, durations and words, and plain garbage.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(WEB.to_owned()),
        Just("203.0.113.10:53/udp".to_owned()),
        Just("192.0.2.11".to_owned()),
        Just("192.0.2.11:8080".to_owned()),
        Just("198.51.100.0/24".to_owned()),
        Just("2001:db8::1".to_owned()),
        Just("203.0.113.10:0/tcp".to_owned()),
        Just("203.0.113.10:80/sctp".to_owned()),
        Just("999.0.0.1:80/tcp".to_owned()),
        Just("0s".to_owned()),
        Just("18446744073709551615ms".to_owned()),
        Just("permit".to_owned()),
        Just("http:70000/x".to_owned()),
        "[ -~]{0,40}",
        "\\PC{0,20}",
    ]
}

/// A request line a hand-written client (or an attacker with the socket) might send: the
/// right shapes with hostile text in every field.
fn hostile_line() -> impl Strategy<Value = String> {
    use serde_json::json;
    let t = hostile_text;
    let change = |c: serde_json::Value| json!({ "change": c }).to_string();
    prop_oneof![
        (t(), t(), t(), any::<Option<u32>>(), any::<u32>()).prop_map(
            move |(service, probe, interval, table_size, unhealthy_after)| {
                change(json!({
                    "op": "vip_add",
                    "service": service,
                    "settings": {
                        "table_size": table_size,
                        "probe": probe,
                        "interval": interval,
                        "thresholds": { "unhealthy_after": unhealthy_after, "healthy_after": 1 },
                    },
                }))
            }
        ),
        t().prop_map(move |service| change(json!({ "op": "vip_del", "service": service }))),
        (t(), t(), any::<Option<u32>>()).prop_map(move |(service, backend, weight)| {
            change(json!({ "op": "backend_add", "service": service, "backend": backend, "weight": weight }))
        }),
        (t(), t(), any::<u32>()).prop_map(move |(service, backend, weight)| {
            change(json!({ "op": "backend_set_weight", "service": service, "backend": backend, "weight": weight }))
        }),
        (t(), t()).prop_map(move |(service, to)| {
            change(json!({ "op": "forward_add", "service": service, "to": to }))
        }),
        (t(), any::<u32>(), t(), t(), t()).prop_map(
            move |(service, order, action, prefix, description)| {
                change(json!({
                    "op": "acl_add",
                    "service": service,
                    "rule": { "order": order, "action": action, "prefix": prefix, "description": description },
                }))
            }
        ),
        (t(), t()).prop_map(move |(pip, dip)| {
            change(json!({ "op": "pip_add", "pip": pip, "dip": dip }))
        }),
        "[ -~]{0,60}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Any sequence of hostile request lines: decoding refuses what does not parse, the
    /// reconciler never panics, every refusal says what is wrong, and a refused request
    /// changes nothing.
    #[test]
    fn hostile_requests_are_refused_cleanly(lines in prop::collection::vec(hostile_line(), 1..12)) {
        let mut r = rec(1 << 16);
        add(&mut r, WEB, &["192.0.2.11"]);
        for line in lines {
            let before = r.state().clone();
            let resp = match crate::api::decode(&line) {
                Ok(req) => r.handle(req).response,
                Err(refusal) => Response::error(ErrorKind::Invalid, refusal),
            };
            if let Response::Error { message, .. } = resp {
                prop_assert!(!message.trim().is_empty(), "{}: empty error", line);
                prop_assert!(r.state() == &before, "{} was refused but changed the state", line);
            }
        }
    }
}

/// A backend whose address is also an internal /32 of its VIP is marked hairpin (with its
/// backend id) in the VIP's source set, not permitted.
#[test]
fn a_backend_host_that_is_an_internal_prefix_is_hairpin() {
    let mut r = rec(1 << 16);
    ok(
        &mut r,
        Req::VipAdd {
            service: WEB.into(),
            settings: VipSettings {
                table_size: Some(251),
                internal: Some("192.0.2.11/32,198.51.100.0/24".into()),
                ..VipSettings::default()
            },
        },
    );
    ok(
        &mut r,
        Req::BackendAdd {
            service: WEB.into(),
            backend: "192.0.2.11".into(),
            weight: None,
        },
    );
    // The VIP's live set (the set from before the backend was added may still be
    // there, waiting for its grace period).
    let ilb_id = r.maps().vips.values().next().expect("the VIP").ilb_id;
    let host = map_prefix("192.0.2.11".parse().unwrap(), 32);
    let e = r.maps().acl[&(ilb_id, host)];
    assert_eq!(e.action, acl::Action::Hairpin, "{e:?}");
    assert!(e.rule.is_some_and(|id| id != 0), "{e:?}");
}

#[test]
fn a_table_change_is_a_double_buffered_swap() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
    let live = r.maps().services.values().next().copied().unwrap();
    r.maps.ops.clear();
    ok(
        &mut r,
        Req::BackendAdd {
            service: WEB.into(),
            backend: "192.0.2.13".into(),
            weight: None,
        },
    );
    let ops = r.maps().ops.clone();
    // New backend entry, then a whole new region and the endpoint's reverse-service entry,
    // then the one switching write.
    let [
        Op::Backend(id, true),
        Op::Slots(off, 251),
        Op::Rev(_, Some(rev)),
        Op::Service(info),
    ] = ops.as_slice()
    else {
        panic!("unexpected write sequence {ops:?}")
    };
    assert_eq!((info.table_off, info.table_len), (*off, 251));
    assert!(
        off.abs_diff(live.table_off) >= 251,
        "the new table overlaps the live one"
    );
    assert_eq!(rev.backend, *id);
    assert!(r.maps().ring.values().any(|s| s == id));
    assert_tables_point_at_live_backends(r.maps());
}

#[test]
fn a_removed_backend_is_retired_only_after_the_switch() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
    r.maps.ops.clear();
    ok(
        &mut r,
        Req::BackendDel {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
        },
    );
    let ops = r.maps().ops.clone();
    let [
        Op::Slots(..),
        Op::Service(_),
        Op::Backend(id, false),
        Op::Rev(_, None),
        Op::Purge(p),
    ] = ops.as_slice()
    else {
        panic!("unexpected write sequence {ops:?}")
    };
    assert_eq!(id, p);
    assert_tables_point_at_live_backends(r.maps());
    // The last backend gone: an empty table (drop, counted), not a dangling one.
    ok(
        &mut r,
        Req::BackendDel {
            service: WEB.into(),
            backend: "192.0.2.11".into(),
        },
    );
    assert_eq!(r.maps().services.values().next().unwrap().table_len, 0);
}

/// Every map the agent fills from the desired state refuses, before any write, a state
/// one past its capacity, with an error naming the map and its limit.
#[test]
fn each_map_refuses_one_more_than_it_holds() {
    use lb_common::consts::{MAX_ACL_ENTRIES, MAX_PIPS};

    use crate::{
        config::ServiceSettings,
        state::{BackendState, ServiceState},
    };
    let settings = ServiceSettings {
        table_size: 7,
        ..ServiceSettings::default()
    };
    let svc = |ip: &str, port: u16| ServiceSpec {
        vip: SocketAddr::new(ip.parse().unwrap(), port),
        proto: Proto::Tcp,
    };
    let empty = ServiceState {
        kind: Kind::Balanced,
        settings: settings.clone(),
        acl: BTreeMap::new(),
        backends: BTreeMap::new(),
    };
    let refuses = |state: State, want: &str| {
        let mut r = rec(1 << 24);
        let Err(ChangeError::Capacity(msg)) = r.reload(state) else {
            panic!("{want}: not refused for capacity")
        };
        assert!(msg.contains(want), "{msg:?} does not say {want:?}");
        assert!(r.maps().ops.is_empty(), "{want}: wrote {:?}", r.maps().ops);
    };

    let mut st = State::default();
    for i in 0..=MAX_SERVICES {
        let (ip, port) = if i < 65_535 {
            ("203.0.113.10", u16::try_from(i + 1).unwrap())
        } else {
            ("203.0.113.11", u16::try_from(i - 65_534).unwrap())
        };
        st.services.insert(svc(ip, port), empty.clone());
    }
    refuses(
        st,
        &format!("service map is full ({MAX_SERVICES} services)"),
    );

    let mut one = empty.clone();
    for i in 0..MAX_BACKENDS {
        let (host, port) = if i < 65_535 { (11, i + 1) } else { (12, 1) };
        let spec = crate::spec::BackendSpec {
            ip: IpAddr::from([192, 0, 2, host]),
            port: Some(u16::try_from(port).unwrap()),
        };
        let b = BackendState {
            spec,
            weight: 1,
            drained: false,
            admin: crate::spec::Admin::None,
        };
        one.backends
            .insert(SocketAddr::new(spec.ip, spec.port.unwrap()), b);
    }
    let mut st = State::default();
    st.services.insert(svc("203.0.113.10", 80), one);
    refuses(
        st,
        &format!("backend map is full ({} backends)", MAX_BACKENDS - 1),
    );

    let mut st = State::default();
    for i in 0..=MAX_PIPS {
        let pip = IpAddr::from(std::net::Ipv6Addr::new(
            0x2001,
            0xdb8,
            1,
            0,
            0,
            0,
            0,
            u16::try_from(i).unwrap(),
        ));
        let dip = IpAddr::from(std::net::Ipv6Addr::new(
            0x2001,
            0xdb8,
            2,
            0,
            0,
            0,
            0,
            u16::try_from(i).unwrap(),
        ));
        st.pips.insert(pip, dip);
    }
    refuses(st, &format!("PIP maps are full ({MAX_PIPS} PIPs)"));

    // 110 endpoints × 600 host rules (plus one default entry each) pass 65 536 entries.
    let mut st = State::default();
    for port in 1..=110 {
        let mut e = empty.clone();
        for i in 0..600u32 {
            let host = [[192, 0, 2], [198, 51, 100], [203, 0, 113]][(i / 256) as usize];
            let last = u8::try_from(i % 256).unwrap();
            e.acl.insert(
                i,
                crate::config::AclRuleConfig {
                    order: i,
                    action: acl::Action::Deny,
                    prefix: (IpAddr::from([host[0], host[1], host[2], last]), 32),
                    description: String::new(),
                },
            );
        }
        st.services.insert(svc("203.0.113.10", port), e);
    }
    refuses(st, &format!("the map holds {MAX_ACL_ENTRIES}"));
}

#[test]
fn a_refused_change_writes_nothing() {
    let mut r = rec(600);
    add(&mut r, WEB, &["192.0.2.11"]);
    r.maps.ops.clear();
    let resp = ask(
        &mut r,
        Req::VipAdd {
            service: "203.0.113.10:81/tcp".into(),
            settings: VipSettings {
                table_size: Some(251),
                ..VipSettings::default()
            },
        },
    );
    let Response::Error { message, .. } = resp else {
        panic!("{resp:?}")
    };
    assert!(
        message.contains("need 753 slots but the agent has 600"),
        "{message}"
    );
    assert!(r.maps().ops.is_empty(), "{:?}", r.maps().ops);
    let resp = ask(
        &mut r,
        Req::BackendAdd {
            service: WEB.into(),
            backend: "nope".into(),
            weight: None,
        },
    );
    assert!(
        matches!(resp, Response::Error { message, .. } if message.starts_with("backend: \"nope\""))
    );
}

#[test]
fn deleting_a_service_frees_its_vip_and_backends() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11"]);
    add(&mut r, "203.0.113.10:53/udp", &["192.0.2.11"]);
    assert_eq!(r.maps().vips.values().next().unwrap().services, 2);
    ok(
        &mut r,
        Req::VipDel {
            service: WEB.into(),
        },
    );
    assert_eq!(r.maps().vips.values().next().unwrap().services, 1);
    ok(
        &mut r,
        Req::VipDel {
            service: "203.0.113.10:53/udp".into(),
        },
    );
    assert!(r.maps().vips.is_empty() && r.maps().services.is_empty());
    assert!(r.maps().backends.values().all(|b| !b.is_active()));
}

/// Two services share a backend address; both entries must get the next hop once it
/// resolves (a per-address cache once left the second entry unresolved for good).
#[test]
fn every_entry_gets_the_next_hop_when_it_resolves() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11"]);
    add(&mut r, "203.0.113.10:53/udp", &["192.0.2.11"]);
    assert!(r.maps().backends.values().all(|b| !b.nh.is_resolved()));
    r.resolve_with(&mut FakeResolver { resolved: true });
    let active: Vec<&Backend> = r
        .maps()
        .backends
        .values()
        .filter(|b| b.is_active())
        .collect();
    assert_eq!(active.len(), 2);
    assert!(active.iter().all(|b| b.nh.ifindex == 11), "{active:?}");
    let Response::Status(s) = ask(&mut r, Req::Status) else {
        panic!()
    };
    assert_eq!(s.backends_unresolved, 0);
    // A tick with nothing new writes nothing.
    r.maps.ops.clear();
    r.resolve_with(&mut FakeResolver { resolved: true });
    assert!(r.maps().ops.is_empty(), "{:?}", r.maps().ops);
}

#[test]
fn ring_regions_are_reused_after_the_grace_period() {
    let mut ring = alloc::Ring::new(1000);
    let a = ring.alloc(400).unwrap();
    let b = ring.alloc(400).unwrap();
    assert_eq!(ring.alloc(400), None);
    ring.release(a, 400);
    ring.release(b, 400);
    assert_eq!(ring.free, vec![(0, 1000)], "released neighbours coalesce");
    let mut r = rec(600);
    add(&mut r, WEB, &["192.0.2.11"]);
    // Each change needs a second region while the first is in its grace period; the
    // reconciler waits it out instead of failing.
    for b in ["192.0.2.12", "192.0.2.13", "192.0.2.14"] {
        ok(
            &mut r,
            Req::BackendAdd {
                service: WEB.into(),
                backend: b.into(),
                weight: None,
            },
        );
    }
    assert_tables_point_at_live_backends(r.maps());
}

#[test]
fn only_healthy_backends_are_in_the_table() {
    let mut r = rec(4096);
    probed(&mut r, VipSettings::default());
    // Unknown until probed: nothing in rotation, new flows are dropped (counted).
    assert_eq!(r.maps().services.values().next().unwrap().table_len, 0);
    assert_eq!(r.wanted_probes().len(), 2);
    report(&mut r, "192.0.2.11:80", true);
    report(&mut r, "192.0.2.12:80", true);
    assert_eq!(shares(&r).len(), 2);
    // One failure is not enough; two take it out.
    report(&mut r, "192.0.2.12:80", false);
    assert_eq!(shares(&r).len(), 2);
    report(&mut r, "192.0.2.12:80", false);
    assert_eq!(shares(&r).keys().collect::<Vec<_>>(), vec!["192.0.2.11:80"]);
    let Response::Backends { backends, .. } = ask(
        &mut r,
        Req::BackendList {
            service: WEB.into(),
        },
    ) else {
        panic!()
    };
    let b12 = backends
        .iter()
        .find(|b| b.backend == "192.0.2.12:80")
        .unwrap();
    assert_eq!((b12.health.as_str(), b12.in_rotation), ("down", false));
    assert!(
        b12.reason.contains("failed probes: HTTP 500"),
        "{}",
        b12.reason
    );
    assert_eq!(b12.last_probe.as_ref().map(|p| p.ok), Some(false));
    // Back on the first good answer.
    report(&mut r, "192.0.2.12:80", true);
    assert_eq!(shares(&r).len(), 2);
}

#[test]
fn all_down_drops_or_spreads_as_configured() {
    let mut r = rec(4096);
    probed(&mut r, VipSettings::default());
    for b in ["192.0.2.11:80", "192.0.2.12:80"] {
        report(&mut r, b, false);
        report(&mut r, b, false);
    }
    assert_eq!(
        r.maps().services.values().next().unwrap().table_len,
        0,
        "drop by default"
    );

    let mut r = rec(4096);
    probed(
        &mut r,
        VipSettings {
            when_all_down: Some("spread".into()),
            ..VipSettings::default()
        },
    );
    ok(
        &mut r,
        Req::BackendDrain {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
            drained: true,
        },
    );
    for b in ["192.0.2.11:80", "192.0.2.12:80"] {
        report(&mut r, b, false);
        report(&mut r, b, false);
    }
    assert_eq!(
        shares(&r).keys().collect::<Vec<_>>(),
        vec!["192.0.2.11:80"],
        "spread, but never to a drained backend"
    );
}

#[test]
fn drain_weight_and_rebalance() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
    ok(
        &mut r,
        Req::BackendSetWeight {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
            weight: 3,
        },
    );
    let s = shares(&r);
    let (a, b) = (f64::from(s["192.0.2.11:80"]), f64::from(s["192.0.2.12:80"]));
    assert!(
        (b / (a + b) - 0.75).abs() < 0.01,
        "weights 1:3 give {a}:{b}"
    );
    r.maps.ops.clear();
    ok(
        &mut r,
        Req::BackendDrain {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
            drained: true,
        },
    );
    assert_eq!(shares(&r).keys().collect::<Vec<_>>(), vec!["192.0.2.11:80"]);
    // Draining keeps the entry live (established flows continue) and purges nothing.
    assert!(
        !r.maps()
            .ops
            .iter()
            .any(|o| matches!(o, Op::Purge(_) | Op::Backend(_, false))),
        "{:?}",
        r.maps().ops
    );
    ok(
        &mut r,
        Req::BackendDrain {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
            drained: false,
        },
    );
    ok(
        &mut r,
        Req::BackendSetWeight {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
            weight: 0,
        },
    );
    assert_eq!(shares(&r).len(), 1, "weight 0 takes no new flows");

    // established = rebalance: a backend going down loses its tracked flows.
    let mut r = rec(4096);
    probed(
        &mut r,
        VipSettings {
            established: Some("rebalance".into()),
            ..VipSettings::default()
        },
    );
    report(&mut r, "192.0.2.11:80", true);
    report(&mut r, "192.0.2.12:80", true);
    r.maps.ops.clear();
    report(&mut r, "192.0.2.12:80", false);
    report(&mut r, "192.0.2.12:80", false);
    assert!(
        r.maps().ops.iter().any(|o| matches!(o, Op::Purge(_))),
        "{:?}",
        r.maps().ops
    );
}

#[test]
fn a_forward_is_a_one_slot_table_of_its_backend() {
    let mut r = rec(4096);
    ok(
        &mut r,
        Req::ForwardAdd {
            service: "203.0.113.10:50001/tcp".into(),
            to: "192.0.2.11:22".into(),
        },
    );
    let info = r.maps().services.values().next().copied().unwrap();
    assert_eq!(info.table_len, 1);
    let b = r.maps().backends[&r.maps().ring[&info.table_off]];
    assert_eq!(
        (addr::to_ip(&b.addr).to_string(), u16::from_be_bytes(b.port)),
        ("192.0.2.11".into(), 22)
    );
    let Response::Vips { vips } = ask(&mut r, Req::VipList) else {
        panic!()
    };
    assert_eq!(vips[0].kind, "forward to 192.0.2.11:22");
    let resp = ask(
        &mut r,
        Req::BackendAdd {
            service: "203.0.113.10:50001/tcp".into(),
            backend: "192.0.2.12".into(),
            weight: None,
        },
    );
    assert!(matches!(resp, Response::Error { message, .. } if message.contains("port forward")));
    ok(
        &mut r,
        Req::ForwardDel {
            service: "203.0.113.10:50001/tcp".into(),
        },
    );
    assert!(r.maps().services.is_empty() && r.maps().vips.is_empty());
}

#[test]
fn acl_changes_are_double_buffered_and_cut_newly_denied_flows() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11"]);
    let acl_add = |order: u32, action: &str, prefix: &str| Req::AclAdd {
        service: WEB.into(),
        order,
        action: action.into(),
        prefix: prefix.into(),
        description: String::new(),
    };
    r.maps.ops.clear();
    ok(&mut r, acl_add(100, "permit", "198.51.100.0/26"));
    let info = r.maps().services.values().next().copied().unwrap();
    assert_ne!(info.acl_id, 0);
    // Rule + default deny, written before the switching service update.
    let ops = r.maps().ops.clone();
    let switch = ops
        .iter()
        .position(|o| matches!(o, Op::Service(_)))
        .unwrap();
    assert_eq!(
        ops[..switch]
            .iter()
            .filter(|o| matches!(o, Op::Acl(_, true)))
            .count(),
        2,
        "{ops:?}"
    );
    // 198.51.100.70 is outside the permitted /26: its tracked flow is cut.
    assert!(ops.contains(&Op::PurgeSources(info.id, 1)), "{ops:?}");

    // A second rule: a new set under a new id; the old set is deleted only later.
    r.maps.ops.clear();
    ok(&mut r, acl_add(200, "permit", "198.51.100.64/26"));
    let info2 = r.maps().services.values().next().copied().unwrap();
    assert_ne!(info2.acl_id, info.acl_id);
    assert!(
        !r.maps().ops.contains(&Op::Acl(info.acl_id, false)),
        "old set deleted before its grace period"
    );
    assert!(
        r.maps().ops.contains(&Op::PurgeSources(info2.id, 0)),
        "{:?}",
        r.maps().ops
    );
    let Response::Acl(view) = ask(
        &mut r,
        Req::AclList {
            service: WEB.into(),
        },
    ) else {
        panic!()
    };
    assert_eq!(
        (
            view.rules.len(),
            view.compiled_entries,
            view.default.as_str()
        ),
        (2, 3, "deny")
    );

    // Removing every rule: no set at all (everyone permitted), no lookup in the fast path.
    ok(
        &mut r,
        Req::AclDel {
            service: WEB.into(),
            order: 100,
        },
    );
    ok(
        &mut r,
        Req::AclDel {
            service: WEB.into(),
            order: 200,
        },
    );
    assert_eq!(r.maps().services.values().next().unwrap().acl_id, 0);
    let resp = ask(&mut r, acl_add(1, "permit", "198.51.100.1/24"));
    assert!(matches!(resp, Response::Error { message, .. } if message.contains("host bits")));
}

#[test]
fn pips_map_one_to_one_and_follow_next_hops() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11"]);
    ok(
        &mut r,
        Req::PipAdd {
            pip: "203.0.113.50".into(),
            dip: "192.0.2.13".into(),
        },
    );
    let pip = addr::v4_mapped([203, 0, 113, 50]);
    assert_eq!(r.maps().pips[&pip].0, addr::v4_mapped([192, 0, 2, 13]));
    assert!(!r.maps().pips[&pip].1.is_resolved());
    for (p, d, want) in [
        ("203.0.113.51", "192.0.2.13", "1:1"),
        ("203.0.113.10", "192.0.2.14", "is a VIP"),
        ("203.0.113.52", "2001:db8::1", "same address family"),
    ] {
        let resp = ask(
            &mut r,
            Req::PipAdd {
                pip: p.into(),
                dip: d.into(),
            },
        );
        assert!(
            matches!(&resp, Response::Error { message, .. } if message.contains(want)),
            "{p} → {d}: {resp:?}"
        );
    }
    // The next refresh writes the resolved next hop.
    r.resolve_with(&mut FakeResolver { resolved: true });
    assert_eq!(r.maps().pips[&pip].1.ifindex, 13);
    let Response::Pips { pips } = ask(&mut r, Req::PipList) else {
        panic!()
    };
    assert_eq!(
        (
            pips[0].dip.as_str(),
            pips[0].next_hop.as_ref().map(|n| n.ifindex)
        ),
        ("192.0.2.13", Some(13))
    );
    ok(
        &mut r,
        Req::PipDel {
            pip: "203.0.113.50".into(),
        },
    );
    assert!(r.maps().pips.is_empty());
}

/// The reverse-service entry of a backend endpoint: written before the switch that gives the
/// backend its first flow, marked shared (still naming the first service) before a second
/// service's switch brings the same endpoint, handed to the remaining service when the first
/// goes, and deleted with the last.
#[test]
fn reverse_service_entries_follow_the_backend_endpoints() {
    use lb_common::maps::{REV_F_SHARED, RevKey};
    let mut rc = rec(1 << 16);
    let ep = RevKey::of(
        lb_common::addr::v4_mapped([192, 0, 2, 11]),
        80u16.to_be_bytes(),
        6,
    );
    let other = RevKey::of(
        lb_common::addr::v4_mapped([192, 0, 2, 12]),
        80u16.to_be_bytes(),
        6,
    );
    add(&mut rc, WEB, &["192.0.2.11:80", "192.0.2.12:80"]);
    let m = rc.maps();
    let web = m.services[&spec(WEB).key()];
    for k in [ep, other] {
        let e = m.revs[&k];
        assert_eq!(
            (e.vip, e.vport, e.flags, e.service),
            (
                lb_common::addr::v4_mapped([203, 0, 113, 10]),
                80u16.to_be_bytes(),
                0,
                web.id
            )
        );
        assert_eq!(m.backends[&e.backend].port, 80u16.to_be_bytes());
    }
    // Each entry was written after its backend's entry and before the switch that followed.
    for k in [ep, other] {
        let id = m.revs[&k].backend;
        let be = m
            .ops
            .iter()
            .position(|o| *o == Op::Backend(id, true))
            .unwrap();
        let at = m
            .ops
            .iter()
            .position(|o| matches!(o, Op::Rev(at, Some(_)) if *at == k))
            .unwrap();
        let switch = be
            + m.ops[be..]
                .iter()
                .position(|o| matches!(o, Op::Service(_)))
                .unwrap();
        assert!(be < at && at < switch, "{:?}", m.ops);
    }

    let second = "203.0.113.11:80/tcp";
    rc.maps_mut().ops.clear();
    add(&mut rc, second, &["192.0.2.11:80"]);
    let m = rc.maps();
    let e = m.revs[&ep];
    assert_eq!(
        (e.vip, e.flags, e.service),
        (
            lb_common::addr::v4_mapped([203, 0, 113, 10]),
            REV_F_SHARED,
            web.id
        )
    );
    let marked = m
        .ops
        .iter()
        .position(|o| matches!(o, Op::Rev(k, Some(v)) if *k == ep && v.flags == REV_F_SHARED))
        .unwrap();
    let switched = m
        .ops
        .iter()
        .position(|o| matches!(o, Op::Service(i) if i.table_len > 0))
        .unwrap();
    assert!(marked < switched, "{:?}", m.ops);
    assert_eq!(m.revs[&other].flags, 0);
    // The same address and port over UDP is another endpoint.
    add(&mut rc, "203.0.113.10:80/udp", &["192.0.2.11:80"]);
    assert_eq!(rc.maps().revs[&ep].flags, REV_F_SHARED);
    assert_eq!(
        rc.maps().revs[&RevKey::of(
            lb_common::addr::v4_mapped([192, 0, 2, 11]),
            80u16.to_be_bytes(),
            17
        )]
            .flags,
        0
    );

    ok(
        &mut rc,
        Req::VipDel {
            service: WEB.into(),
        },
    );
    let m = rc.maps();
    let sid = m.services[&spec(second).key()].id;
    let e = m.revs[&ep];
    assert_eq!(
        (e.vip, e.flags, e.service),
        (lb_common::addr::v4_mapped([203, 0, 113, 11]), 0, sid)
    );
    assert!(
        !m.revs.contains_key(&other),
        "the endpoint no service uses is gone"
    );
    ok(
        &mut rc,
        Req::VipDel {
            service: second.into(),
        },
    );
    assert!(!rc.maps().revs.contains_key(&ep));
}

/// A service's totals are its live backends' records plus the sum of its retired backends: a
/// removed backend's packets stay in them, what reaches its id afterwards does not, and a
/// restarted agent keeps the sum. A new service on a reused id starts from zero.
#[test]
fn a_retired_backends_counts_stay_in_its_services_totals() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
    let id_of = |r: &Rec, a: &str| {
        r.live()
            .backends_of_spec(&spec(WEB))
            .find(|(b, _)| b.to_string() == a)
            .map(|(_, id)| *id)
            .expect("a live backend")
    };
    let (b1, b2) = (id_of(&r, "192.0.2.11:80"), id_of(&r, "192.0.2.12:80"));
    let counted = |packets, replies| Counters {
        packets,
        reply_packets: replies,
        ..Counters::default()
    };
    r.maps.counters.insert(b1, counted(10, 1));
    r.maps.counters.insert(b2, counted(20, 2));
    let totals = |r: &mut Rec| match ask(r, Req::VipList) {
        Response::Vips { vips } => (vips[0].counters.packets, vips[0].counters.reply_packets),
        other => panic!("{other:?}"),
    };
    assert_eq!(totals(&mut r), (30, 3));
    ok(
        &mut r,
        Req::BackendDel {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
        },
    );
    assert_eq!(totals(&mut r), (30, 3), "the removed backend still counts");
    r.maps.counters.insert(b2, counted(1000, 0));
    assert_eq!(totals(&mut r), (30, 3), "its id's later packets do not");
    let mut r2 = restarted(&r);
    start(&mut r2, r.state().clone());
    assert_eq!(totals(&mut r2), (30, 3), "a restarted agent keeps the sum");
    ok(
        &mut r2,
        Req::VipDel {
            service: WEB.into(),
        },
    );
    add(&mut r2, WEB, &["192.0.2.13"]);
    r2.maps
        .counters
        .insert(id_of(&r2, "192.0.2.13:80"), counted(0, 0));
    assert_eq!(totals(&mut r2), (0, 0), "a new service starts from zero");
}

/// A backend removal that fails at any write, and is then retried, still counts each packet of
/// the removed backend once in its service's totals: its counters may be added to the retired
/// sum before its entry's write fails, and the retry adds only what came since.
#[test]
fn a_failed_removal_counts_the_backend_once() {
    for n in 1..=8 {
        let mut r = rec(4096);
        add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
        let ids: Vec<(String, BackendId)> = r
            .live()
            .backends_of_spec(&spec(WEB))
            .map(|(a, id)| (a.to_string(), *id))
            .collect();
        let b2 = ids.iter().find(|(a, _)| a == "192.0.2.12:80").unwrap().1;
        for (i, (_, id)) in ids.iter().enumerate() {
            let packets = 10 * (i as u64 + 1);
            r.maps.counters.insert(
                *id,
                Counters {
                    packets,
                    ..Counters::default()
                },
            );
        }
        let packets = |r: &mut Rec| match ask(r, Req::VipList) {
            Response::Vips { vips } => vips[0].counters.packets,
            other => panic!("{other:?}"),
        };
        let del = Req::BackendDel {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
        };
        r.maps.fail_at = Some(r.maps.writes + n);
        let _ = ask(&mut r, del.clone());
        r.maps.fail_at = None;
        assert_eq!(packets(&mut r), 30, "write {n} failed");
        if r.live().backends.contains_key(&b2) {
            r.maps.counters.get_mut(&b2).unwrap().packets += 5;
            ok(&mut r, del);
            assert_eq!(packets(&mut r), 35, "write {n} failed, then the retry");
        }
    }
}

/// `--replies stateless` marks the service's backend endpoints stateless in `LB_REVSVC4`, and
/// the host's own addresses are in `LB_LOCAL4` once an agent has started.
#[test]
fn a_stateless_services_endpoints_are_marked_and_the_lbs_addresses_known() {
    let mut r = rec(4096);
    add_with(
        &mut r,
        WEB,
        VipSettings {
            table_size: Some(251),
            replies: Some("stateless".into()),
            ..VipSettings::default()
        },
        &["192.0.2.11"],
    );
    let flags: Vec<u16> = r.maps().revs.values().map(|v| v.flags).collect();
    assert_eq!(flags, [lb_common::maps::REV_F_STATELESS]);
    let mut r2 = restarted(&r);
    start(&mut r2, r.state().clone());
    assert_eq!(
        r2.maps().locals.iter().copied().collect::<Vec<_>>(),
        [
            lb_common::addr::v4_mapped([192, 0, 2, 1]),
            lb_common::addr::from_ip("2001:db8:2::1".parse().unwrap())
        ]
    );
    assert_eq!(
        r2.maps().revs.values().map(|v| v.flags).collect::<Vec<_>>(),
        [lb_common::maps::REV_F_STATELESS],
        "kept by a restart"
    );
}

/// Admin state overrides the probes, not a drain: `down` takes a healthy backend out (its
/// flows are not purged), `up` keeps a failing one in, `none` hands it back to the probes;
/// `lb backend list` shows it, and the state keeps it.
#[test]
fn admin_state_overrides_the_probes() {
    let mut r = rec(4096);
    probed(&mut r, VipSettings::default());
    report(&mut r, "192.0.2.11:80", true);
    report(&mut r, "192.0.2.12:80", true);
    assert_eq!(shares(&r).len(), 2);
    let admin = |r: &mut Rec, b: &str, state: &str| {
        ok(
            r,
            Req::BackendAdmin {
                service: WEB.into(),
                backend: b.into(),
                state: state.into(),
            },
        );
    };
    r.maps.ops.clear();
    admin(&mut r, "192.0.2.12", "down");
    assert_eq!(shares(&r).keys().collect::<Vec<_>>(), ["192.0.2.11:80"]);
    assert!(
        !r.maps().ops.iter().any(|o| matches!(o, Op::Purge(_))),
        "its established flows continue: {:?}",
        r.maps().ops
    );
    admin(&mut r, "192.0.2.11", "up");
    report(&mut r, "192.0.2.11:80", false);
    report(&mut r, "192.0.2.11:80", false);
    assert_eq!(
        shares(&r).keys().collect::<Vec<_>>(),
        ["192.0.2.11:80"],
        "admin up: in rotation although its probes fail"
    );
    let Response::Backends { backends, .. } = ask(
        &mut r,
        Req::BackendList {
            service: WEB.into(),
        },
    ) else {
        panic!()
    };
    let by: BTreeMap<&str, (&str, bool, &str)> = backends
        .iter()
        .map(|b| {
            (
                b.backend.as_str(),
                (b.admin.as_str(), b.in_rotation, b.reason.as_str()),
            )
        })
        .collect();
    assert_eq!(by["192.0.2.11:80"], ("up", true, "admin up"));
    assert_eq!(by["192.0.2.12:80"], ("down", false, "admin down"));
    admin(&mut r, "192.0.2.11", "none");
    admin(&mut r, "192.0.2.12", "none");
    assert_eq!(
        shares(&r).keys().collect::<Vec<_>>(),
        ["192.0.2.12:80"],
        "none: the probes decide again (.11 failed, .12 is healthy)"
    );
    ok(
        &mut r,
        Req::BackendDrain {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
            drained: true,
        },
    );
    admin(&mut r, "192.0.2.12", "up");
    assert!(shares(&r).is_empty(), "admin up does not undo a drain");
    assert!(matches!(
        ask(
            &mut r,
            Req::BackendAdmin {
                service: WEB.into(),
                backend: "192.0.2.12".into(),
                state: "maybe".into(),
            }
        ),
        Response::Error { message, .. } if message.contains("up down")
    ));
    let text = r.state().to_toml();
    assert!(text.contains("admin = \"up\""), "{text}");
}

/// `established = auto`, the default, decides by protocol as the reference does: a TCP
/// service keeps the flows of a backend that goes down, a UDP service moves them (its
/// backend's flows are purged, so their next packets are re-picked).
#[test]
fn by_default_tcp_flows_stay_and_udp_flows_move_when_a_backend_goes_down() {
    for (service, purged) in [(WEB, false), ("203.0.113.10:53/udp", true)] {
        let mut r = rec(4096);
        add_with(
            &mut r,
            service,
            VipSettings {
                table_size: Some(251),
                probe: Some("tcp:80".into()),
                unhealthy_after: Some(1),
                ..VipSettings::default()
            },
            &["192.0.2.11", "192.0.2.12"],
        );
        let port = if service == WEB { 80 } else { 53 };
        let probe = |r: &mut Rec, b: &str, ok: bool| {
            r.handle_now(Event::Probe(ProbeReport {
                service: service.parse().unwrap(),
                backend: format!("{b}:{port}").parse().unwrap(),
                ok,
                detail: "probe".into(),
            }));
        };
        probe(&mut r, "192.0.2.11", true);
        probe(&mut r, "192.0.2.12", true);
        r.maps.ops.clear();
        probe(&mut r, "192.0.2.12", false);
        let ops = &r.maps().ops;
        assert_eq!(
            ops.iter().any(|o| matches!(o, Op::Purge(_))),
            purged,
            "{service}: {ops:?}"
        );
    }
}

/// A VIP that is one of the host's own addresses (netlink's, here the fake's 192.0.2.1) is
/// refused: at start, as a CLI change, and in a reload; nothing changes.
#[test]
fn a_vip_that_is_the_hosts_own_address_is_refused() {
    let local = "192.0.2.1:80/tcp";
    let mut state = State::default();
    state
        .apply(&Command::VipAdd {
            service: spec(local),
            settings: crate::config::ServiceSettings {
                table_size: 251,
                ..crate::config::ServiceSettings::default()
            },
        })
        .unwrap();
    let mut r = rec(4096);
    let job = initial_job(&state);
    r.prime(&FakeResolver::default().resolve(&job));
    let e = r.start(state).unwrap_err().to_string();
    assert!(
        e.contains("VIP 192.0.2.1 of 192.0.2.1:80/tcp is one of this host's own addresses"),
        "{e}"
    );

    let mut r = rec(4096);
    start(&mut r, State::default());
    add(&mut r, WEB, &["192.0.2.11"]);
    match ask(
        &mut r,
        Req::VipAdd {
            service: local.into(),
            settings: VipSettings {
                table_size: Some(251),
                ..VipSettings::default()
            },
        },
    ) {
        Response::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Invalid);
            assert!(message.contains("host's own addresses"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut next = r.state().clone();
    next.services
        .insert(spec(local), next.services[&spec(WEB)].clone());
    let before = r.maps.services.clone();
    assert!(
        r.reload(next)
            .unwrap_err()
            .to_string()
            .contains("host's own addresses")
    );
    assert_eq!(r.maps.services, before);
    assert!(!r.state().services.contains_key(&spec(local)));
}

/// A floating-IP service: its mode in the service entry's flags, no reverse-service entry for
/// its backend endpoints (their replies never come back), and a DNAT service at the same
/// endpoint keeps its entry unshared. Without an outer source of its family an encapsulating
/// one is refused, naming the setting; `l2` needs none.
#[test]
fn floating_ip_services_carry_their_mode_and_have_no_reverse_entries() {
    use lb_common::{encap::mode, maps::RevKey};
    let mut bare = rec(1 << 16);
    let gue = |s: &str| VipSettings {
        table_size: Some(251),
        floating_ip: Some(s.into()),
        ..VipSettings::default()
    };
    let r = ask(
        &mut bare,
        Req::VipAdd {
            service: WEB.into(),
            settings: gue("gue"),
        },
    );
    assert!(
        matches!(&r, Response::Error { message, .. } if message.contains("agent.encap_source4")),
        "{r:?}"
    );
    assert!(bare.maps().services.is_empty());
    add_with(&mut bare, WEB, gue("l2"), &["192.0.2.11"]);

    let mut rc = encap_rec();
    add_with(&mut rc, WEB, gue("gue"), &["192.0.2.11"]);
    let ep = RevKey::of(
        lb_common::addr::v4_mapped([192, 0, 2, 11]),
        80u16.to_be_bytes(),
        6,
    );
    let m = rc.maps();
    assert_eq!(m.services[&spec(WEB).key()].floating_ip(), mode::GUE);
    assert!(!m.revs.contains_key(&ep), "{:?}", m.revs);
    // A DNAT service at the same endpoint: its entry, unshared.
    add(&mut rc, "203.0.113.11:80/tcp", &["192.0.2.11:80"]);
    let m = rc.maps();
    let e = m.revs[&ep];
    assert_eq!(
        (e.vip, e.flags),
        (lb_common::addr::v4_mapped([203, 0, 113, 11]), 0)
    );
    assert_eq!(
        m.services[&spec("203.0.113.11:80/tcp").key()].floating_ip(),
        mode::DNAT
    );
    // The floating service gone, the DNAT one keeps its entry; a backend port of its own is
    // refused on a floating service.
    ok(
        &mut rc,
        Req::VipDel {
            service: WEB.into(),
        },
    );
    assert_eq!(rc.maps().revs[&ep].flags, 0);
    add_with(&mut rc, WEB, gue("ipip"), &[]);
    let r = ask(
        &mut rc,
        Req::BackendAdd {
            service: WEB.into(),
            backend: "192.0.2.12:8080".into(),
            weight: None,
        },
    );
    assert!(
        matches!(&r, Response::Error { message, .. } if message.contains("VIP's own port 80")),
        "{r:?}"
    );
}

/// A backend's entry replaced while the desired state stays as it was: a backend removal that
/// fails, and whose rollback fails too, retires the entry and leaves the service to a later
/// tick, which writes a new one. Each event that moves a backend's entry says so in its
/// effects (the writer then re-sends the probes), and the probes it gives then mark the new
/// entry: the old one is free for another backend, and a probe still marked with it would
/// test that other backend.
#[test]
fn a_backend_entry_replaced_without_a_state_change_re_marks_its_tunnel_probe() {
    use crate::reconcile::{Event, Tunnel};
    let settings = VipSettings {
        table_size: Some(251),
        floating_ip: Some("gue".into()),
        probe: Some("tcp:8081".into()),
        probe_via: Some("tunnel".into()),
        ..VipSettings::default()
    };
    let b2: SocketAddr = "192.0.2.12:80".parse().unwrap();
    let via = |r: &Rec| {
        r.wanted_probes()
            .into_iter()
            .find(|t| t.backend == b2)
            .and_then(|t| t.via)
    };
    let live_id = |r: &Rec| {
        r.live()
            .backends_of_spec(&spec(WEB))
            .find(|(a, _)| **a == b2)
            .map(|(_, id)| *id)
    };
    // Handles one event as the writer does; whether its effects said a backend's entry moved.
    let moved = |r: &mut Rec, ev: Event| {
        let fx = r.handle_event(ev);
        let moved = fx.backend_ids_changed;
        r.settle(fx);
        moved
    };
    let mut replaced = 0;
    for n in 1.. {
        let mut r = encap_rec();
        add_with(&mut r, WEB, settings.clone(), &["192.0.2.11", "192.0.2.12"]);
        let first = live_id(&r).unwrap();
        let del = Req::BackendDel {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
        };
        let (tx, _rx) = oneshot::channel();
        r.maps.fail_from = Some(r.maps.writes + n);
        let failed = moved(&mut r, Event::Api(del.typed().unwrap(), tx));
        r.maps.fail_from = None;
        if !r.state().services[&spec(WEB)].backends.contains_key(&b2) {
            assert!(
                replaced > 0,
                "no failure point replaced the entry: the test tests nothing"
            );
            return; // n is past the change's last write: it went through
        }
        assert_eq!(
            failed,
            live_id(&r) != Some(first),
            "write {n}: the failed change's effects"
        );
        if r.dirty.is_empty() {
            continue; // the rollback went through
        }
        let ticked = moved(&mut r, Event::Tick);
        assert!(r.dirty.is_empty(), "write {n}: the tick put the maps right");
        let now = live_id(&r).unwrap();
        if now == first {
            continue;
        }
        replaced += 1;
        assert!(
            ticked,
            "write {n}: a new entry, and the tick's effects did not say so"
        );
        let Some(Tunnel::Via { mark, .. }) = via(&r) else {
            panic!("write {n}: {:?}", via(&r));
        };
        assert_eq!(
            lb_common::encap::probe::unmark(mark).map(|(_, id)| id),
            Some(now),
            "write {n}: the probe names the new entry"
        );
    }
}

/// A floating-IP service probed through the tunnel: each backend's probe connects to VIP:port
/// from the outer source, marked with the backend's own entry and the service's mode; a direct
/// service's probe goes to the backend's address, unmarked.
#[test]
fn tunnel_probes_target_the_vip_marked_for_their_backend() {
    use lb_common::encap::{mode, probe};

    use crate::reconcile::Tunnel;
    let mut rc = encap_rec();
    let settings = |via: &str| VipSettings {
        table_size: Some(251),
        floating_ip: Some("gue".into()),
        probe: Some("http:8081/healthz".into()),
        probe_via: Some(via.into()),
        ..VipSettings::default()
    };
    add_with(
        &mut rc,
        WEB,
        settings("tunnel"),
        &["192.0.2.11", "192.0.2.12"],
    );
    add_with(
        &mut rc,
        "203.0.113.11:80/tcp",
        settings("direct"),
        &["192.0.2.11"],
    );
    let ids = rc.maps().backends.clone();
    let mut seen = 0;
    for t in rc.wanted_probes() {
        if t.service == spec(WEB) {
            assert_eq!(t.addr, "203.0.113.10:8081".parse().unwrap(), "{t:?}");
            let Some(Tunnel::Via { mark, source }) = t.via else {
                panic!("{t:?}");
            };
            assert_eq!(source, IpAddr::from([192, 0, 2, 1]));
            let (m, id) = probe::unmark(mark).unwrap();
            assert_eq!(m, mode::GUE);
            let be = ids[&id];
            assert_eq!(
                (be.addr, be.service),
                (
                    lb_common::addr::from_ip(t.backend.ip()),
                    rc.maps().services[&spec(WEB).key()].id
                ),
                "the mark names this pair's own entry"
            );
            seen += 1;
        } else {
            assert_eq!(t.addr, "192.0.2.11:8081".parse().unwrap());
            assert_eq!(t.via, None);
        }
    }
    assert_eq!(seen, 2);
    // Through the tunnel needs floating IP and a probe.
    let r = ask(
        &mut rc,
        Req::VipAdd {
            service: "203.0.113.12:80/tcp".into(),
            settings: VipSettings {
                probe: Some("tcp".into()),
                probe_via: Some("tunnel".into()),
                ..VipSettings::default()
            },
        },
    );
    assert!(
        matches!(&r, Response::Error { message, .. } if message.contains("--probe-via tunnel needs --floating-ip")),
        "{r:?}"
    );
}
