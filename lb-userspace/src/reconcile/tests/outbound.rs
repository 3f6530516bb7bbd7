//! Outbound rules through the reconciler: placement, refusals that name the numbers, holds,
//! their release by the sweeper, restart adoption.

use std::collections::BTreeSet;

use lb_common::outbound::{OUT_F_STATELESS, OUT_F_TCP, OUT_F_UDP, OUT_SERVICE_FLAG, Slot};

use super::*;
use crate::{
    api::OutboundView,
    outbound::{OutMode, OutboundRule},
};

const FRONT: [u8; 4] = [203, 0, 113, 10];

fn rule(name: &str, ppb: u32) -> OutboundRule {
    OutboundRule {
        name: name.into(),
        frontends: vec![IpAddr::from(FRONT)],
        services: vec![spec(WEB)],
        backends: Vec::new(),
        ports_per_backend: ppb,
        inside: vec![("192.0.2.0".parse().unwrap(), 24)],
        protocols: vec!["tcp".into(), "udp".into()],
        mode: OutMode::Stateful,
        tcp_reset: false,
        idle_timeout: None,
    }
}

fn change(r: &mut Rec, cmd: Command) -> Response {
    r.handle(Request::Change(cmd)).response
}

fn refused(r: &mut Rec, cmd: Command) -> String {
    match change(r, cmd) {
        Response::Error { message, .. } => message,
        other => panic!("accepted: {other:?}"),
    }
}

fn list(r: &mut Rec) -> Vec<OutboundView> {
    match r.handle(Request::Query(Query::OutboundList)).response {
        Response::Outbound { rules } => rules,
        other => panic!("{other:?}"),
    }
}

fn ip4(s: &str) -> [u8; 4] {
    let IpAddr::V4(v) = s.parse().unwrap() else {
        panic!()
    };
    v.octets()
}

#[test]
fn a_rule_places_every_covered_backend_and_writes_its_maps() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
    let Response::Done(_) = change(
        &mut r,
        Command::OutboundAdd {
            rule: rule("web", 1024),
        },
    ) else {
        panic!()
    };
    let m = r.maps();
    let (blocks, _) = crate::outbound::blocks(r.state(), &BTreeMap::new()).unwrap();
    let want = &blocks["web"];
    assert_eq!(m.outbound.len(), 2);
    for (dip, e) in &m.outbound {
        let s = want[dip];
        assert_eq!((e.frontend, e.base, e.ports), (s.frontend, s.base, 1024));
        assert_eq!(e.rule, 1);
        assert_eq!(e.flags, OUT_F_TCP | OUT_F_UDP);
        // The service's own port is never in a block.
        assert!(!(e.base..=e.base + 1023).contains(&80));
    }
    assert_eq!(m.out_fronts[&FRONT].rule, 1);
    assert_eq!(m.out_fronts[&FRONT].ports, 1024);
    assert_eq!(m.out_inside, BTreeSet::from([(1, [192, 0, 2, 0], 24)]));
    assert_filter_covers_exactly_the_live_entries(m);
    // The sweeper expires the rule's flows by its timeouts.
    let p = r.sweep_policy();
    assert_eq!(
        p.services.get(&(OUT_SERVICE_FLAG | 1)),
        Some(&(
            lb_common::conn::IDLE_TIMEOUT_TCP_S,
            lb_common::conn::IDLE_TIMEOUT_UDP_S,
            false
        ))
    );
    let v = list(&mut r);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].backends.len(), 2);
    assert!(
        v[0].backends
            .iter()
            .all(|b| b.frontend.as_deref() == Some("203.0.113.10"))
    );
    // A service added on the frontend moves the block that held its port, and only that one.
    let before = r.maps().outbound.clone();
    let port = before.values().next().unwrap().base + 7;
    add(&mut r, &format!("203.0.113.10:{port}/tcp"), &[]);
    let after = &r.maps().outbound;
    let moved: Vec<_> = before.keys().filter(|k| before[*k] != after[*k]).collect();
    assert_eq!(moved.len(), 1, "{before:?} → {after:?}");
    assert!(
        after
            .values()
            .all(|e| !(e.base..e.base + 1024).contains(&port))
    );
    // Deleting the rule removes every entry and filter bit it set.
    let Response::Done(_) = change(&mut r, Command::OutboundDel { name: "web".into() }) else {
        panic!()
    };
    let m = r.maps();
    assert!(m.outbound.is_empty() && m.out_fronts.is_empty() && m.out_inside.is_empty());
    assert_filter_covers_exactly_the_live_entries(m);
}

#[test]
fn conflicts_and_shortfalls_are_refused_with_the_numbers_and_change_nothing() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
    add(&mut r, "203.0.113.11:80/tcp", &["192.0.2.13"]);
    let Response::Done(_) = change(
        &mut r,
        Command::OutboundAdd {
            rule: rule("a", 1024),
        },
    ) else {
        panic!()
    };
    let state = r.state().clone();
    let maps = r.maps().outbound.clone();
    let mut b = rule("b", 64);
    b.frontends = vec!["203.0.113.11".parse().unwrap()];
    b.services = vec![spec("203.0.113.11:80/tcp")];
    b.backends = vec!["192.0.2.12".parse().unwrap()];
    let m = refused(&mut r, Command::OutboundAdd { rule: b.clone() });
    assert!(
        m.contains("192.0.2.12 is covered by outbound rules a and b"),
        "{m}"
    );
    b.backends.clear();
    b.frontends = vec![IpAddr::from(FRONT)];
    let m = refused(&mut r, Command::OutboundAdd { rule: b.clone() });
    assert!(m.contains("both use frontend 203.0.113.10"), "{m}");
    // Two backends, blocks of 64512: one fits.
    let mut big = rule("big", 64_512);
    big.frontends = vec!["203.0.113.12".parse().unwrap()];
    big.services.clear();
    big.backends = vec!["192.0.2.21".parse().unwrap(), "192.0.2.22".parse().unwrap()];
    let m = refused(&mut r, Command::OutboundAdd { rule: big });
    assert!(
        m.contains("2 backends need 2 blocks of 64512 ports, but the frontends offer 1"),
        "{m}"
    );
    let mut odd = rule("odd", 100);
    odd.frontends = vec!["203.0.113.12".parse().unwrap()];
    let m = refused(&mut r, Command::OutboundAdd { rule: odd });
    assert!(
        m.contains("ports_per_backend 100: must be a multiple of 8"),
        "{m}"
    );
    // A backend added to a service makes it covered twice: refused too.
    let mut c = rule("c", 64);
    c.frontends = vec!["203.0.113.11".parse().unwrap()];
    c.services = vec![spec("203.0.113.11:80/tcp")];
    let Response::Done(_) = change(&mut r, Command::OutboundAdd { rule: c }) else {
        panic!()
    };
    let m = match ask(
        &mut r,
        Req::BackendAdd {
            service: "203.0.113.11:80/tcp".into(),
            backend: "192.0.2.11".into(),
            weight: None,
        },
    ) {
        Response::Error { message, .. } => message,
        other => panic!("{other:?}"),
    };
    assert!(
        m.contains("192.0.2.11 is covered by outbound rules a and c"),
        "{m}"
    );
    // A service a rule names cannot go first.
    let m = match ask(
        &mut r,
        Req::VipDel {
            service: WEB.into(),
        },
    ) {
        Response::Error { message, .. } => message,
        other => panic!("{other:?}"),
    };
    assert!(
        m.contains("names service 203.0.113.10:80/tcp, which does not exist"),
        "{m}"
    );
    assert_eq!(r.state().services, state.services);
    assert_eq!(
        r.maps().outbound.len(),
        maps.len() + 1,
        "only rule c's backend was added"
    );
}

/// A backend that leaves keeps its block taken until the sweeper finds none of its flows: a
/// newcomer gets another block meanwhile, and the block is free again after the release.
#[test]
fn a_departed_backends_block_is_held_until_its_flows_are_gone() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
    // Blocks of 21504 ports: three on the frontend.
    let Response::Done(_) = change(
        &mut r,
        Command::OutboundAdd {
            rule: rule("web", 21_504),
        },
    ) else {
        panic!()
    };
    let old = r.maps().outbound[&ip4("192.0.2.12")];
    ok(
        &mut r,
        Req::BackendDel {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
        },
    );
    assert!(!r.maps().outbound.contains_key(&ip4("192.0.2.12")));
    let holds = r.sweep_policy().out_holds;
    assert_eq!(holds.len(), 1);
    assert_eq!(
        holds[0].slot,
        Slot {
            frontend: old.frontend,
            base: old.base
        }
    );
    assert_eq!(list(&mut r)[0].held.len(), 1);
    // A newcomer takes the free block (three blocks: one in use, one held, one free), not
    // the held one.
    ok(
        &mut r,
        Req::BackendAdd {
            service: WEB.into(),
            backend: "192.0.2.13".into(),
            weight: None,
        },
    );
    let new = r.maps().outbound[&ip4("192.0.2.13")];
    assert_ne!(
        (new.frontend, new.base),
        (old.frontend, old.base),
        "the held block was reused"
    );
    // The sweeper found no flow in it: released, and the sweeper stops checking it.
    r.handle_now(Event::OutboundReleased(holds));
    assert!(r.sweep_policy().out_holds.is_empty());
    assert!(list(&mut r)[0].held.is_empty());
}

#[test]
fn a_restarted_agent_keeps_rule_ids_and_blocks_and_writes_nothing() {
    let mut r = rec(4096);
    // Started as an agent is (its first start writes the host's own addresses).
    start(&mut r, State::default());
    add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
    let mut s = rule("s", 4096);
    s.mode = OutMode::Stateless;
    s.frontends = vec!["203.0.113.11".parse().unwrap()];
    s.services.clear();
    s.backends = vec!["192.0.2.30".parse().unwrap()];
    for rl in [rule("web", 1024), s] {
        let Response::Done(_) = change(&mut r, Command::OutboundAdd { rule: rl }) else {
            panic!()
        };
    }
    let m = r.maps();
    assert_eq!(
        m.out_blocks.len(),
        1,
        "one block owner for the stateless rule"
    );
    let e = m.outbound[&ip4("192.0.2.30")];
    assert_ne!(e.flags & OUT_F_STATELESS, 0);
    assert_eq!(m.out_blocks.values().next(), Some(&ip4("192.0.2.30")));
    let before = r.maps().clone();
    let mut r2 = restarted(&r);
    // Rules in another order of ids would be a change: the ids come back from the maps.
    start(&mut r2, r.state().clone());
    let after = r2.maps();
    assert_eq!(after.outbound, before.outbound);
    assert_eq!(after.out_fronts, before.out_fronts);
    assert_eq!(after.out_inside, before.out_inside);
    assert_eq!(after.out_blocks, before.out_blocks);
    assert_eq!(
        after.writes, before.writes,
        "a restart with the same rules writes nothing"
    );
}
