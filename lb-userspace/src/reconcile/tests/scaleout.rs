//! Scale-out: what the agent announces (`crate::announce`), each VIP address with a backend in
//! rotation in at least one of its services, and the effects that say when that may have
//! changed; and the table fingerprints that let operators compare nodes.

use super::*;

fn announced(r: &Rec) -> Vec<String> {
    r.announced().iter().map(ToString::to_string).collect()
}

/// A probe result for `backend` of `service`, as the writer handles it; whether its effects
/// said the rotation changed.
fn probe(r: &mut Rec, service: &str, backend: &str, ok: bool) -> bool {
    let fx = r.handle_event(Event::Probe(ProbeReport {
        service: service.parse().unwrap(),
        backend: backend.parse().unwrap(),
        ok,
        detail: String::new(),
    }));
    let changed = fx.rotation_changed;
    r.settle(fx);
    changed
}

#[test]
fn a_vip_is_announced_while_any_of_its_services_has_a_backend_in_rotation() {
    let mut r = rec(1 << 16);
    // 203.0.113.10: WEB (probed, out after 2 failures) and an unprobed UDP service.
    probed(&mut r, VipSettings::default());
    add(&mut r, "203.0.113.10:53/udp", &["192.0.2.11"]);
    // 203.0.113.11: one service without backends; 203.0.113.12: one whose only backend is
    // drained.
    add(&mut r, "203.0.113.11:80/tcp", &[]);
    add(&mut r, "203.0.113.12:80/tcp", &["192.0.2.13"]);
    ok(
        &mut r,
        Req::BackendDrain {
            service: "203.0.113.12:80/tcp".into(),
            backend: "192.0.2.13".into(),
            drained: true,
        },
    );
    // The unprobed service is always in rotation; WEB's backends are not probed yet.
    assert_eq!(announced(&r), ["203.0.113.10"]);
    ok(
        &mut r,
        Req::VipDel {
            service: "203.0.113.10:53/udp".into(),
        },
    );
    assert!(announced(&r).is_empty(), "WEB is not probed healthy yet");
    // A probe brings a backend in: the effects say so, and the VIP is announced.
    assert!(probe(&mut r, WEB, "192.0.2.11:80", true));
    assert_eq!(announced(&r), ["203.0.113.10"]);
    assert!(
        !probe(&mut r, WEB, "192.0.2.11:80", true),
        "no change, no effect"
    );
    assert!(probe(&mut r, WEB, "192.0.2.12:80", true));
    // One backend out: still announced. Both out: withdrawn.
    assert!(
        !probe(&mut r, WEB, "192.0.2.11:80", false),
        "one failure is not enough"
    );
    assert!(probe(&mut r, WEB, "192.0.2.11:80", false));
    assert_eq!(announced(&r), ["203.0.113.10"]);
    probe(&mut r, WEB, "192.0.2.12:80", false);
    assert!(probe(&mut r, WEB, "192.0.2.12:80", false));
    assert!(announced(&r).is_empty(), "all down: withdrawn");
    // Admin up overrides the probes, as it does for the table.
    ok(
        &mut r,
        Req::BackendAdmin {
            service: WEB.into(),
            backend: "192.0.2.12".into(),
            state: "up".into(),
        },
    );
    assert_eq!(announced(&r), ["203.0.113.10"]);
    // Undrained, the other VIP comes in too.
    ok(
        &mut r,
        Req::BackendDrain {
            service: "203.0.113.12:80/tcp".into(),
            backend: "192.0.2.13".into(),
            drained: false,
        },
    );
    assert_eq!(announced(&r), ["203.0.113.10", "203.0.113.12"]);
}

/// A PIP is announced while it is configured (its instance has no probe), beside the VIPs,
/// and withdrawn when it is deleted; a config change says what to announce (`state_changed`,
/// on which the writer re-sends the set).
#[test]
fn a_pip_is_announced_while_it_is_configured() {
    let mut r = rec(4096);
    assert!(announced(&r).is_empty());
    let req = Req::PipAdd {
        pip: "203.0.113.50".into(),
        dip: "192.0.2.13".into(),
    };
    assert!(r.handle(req.typed().unwrap()).state_changed);
    assert_eq!(announced(&r), ["203.0.113.50"]);
    add(&mut r, "203.0.113.10:53/udp", &["192.0.2.11"]);
    assert_eq!(announced(&r), ["203.0.113.10", "203.0.113.50"]);
    ok(
        &mut r,
        Req::PipDel {
            pip: "203.0.113.50".into(),
        },
    );
    assert_eq!(announced(&r), ["203.0.113.10"]);
    // A plain stop withdraws the PIPs with the rest.
    ok(
        &mut r,
        Req::PipAdd {
            pip: "203.0.113.50".into(),
            dip: "192.0.2.13".into(),
        },
    );
    let fx = r.handle_event(Event::StopAnnouncing);
    r.settle(fx);
    assert!(announced(&r).is_empty());
}

fn fingerprints(r: &mut Rec) -> Vec<(String, Option<String>)> {
    match ask(r, Req::Status) {
        Response::Status(s) => s
            .vips
            .iter()
            .map(|v| (v.service.clone(), v.table_fingerprint.clone()))
            .collect(),
        other => panic!("{other:?}"),
    }
}

/// Two nodes given the same services in another order (so their backend ids differ) report
/// the same fingerprints, which `lb vip list` carries too; a change of the table's content
/// (a backend drained) or of the seed changes it.
#[test]
fn nodes_with_the_same_config_report_the_same_table_fingerprints() {
    let services = [
        (
            "203.0.113.10:80/tcp",
            vec!["192.0.2.11", "192.0.2.12", "192.0.2.13"],
        ),
        ("203.0.113.11:53/udp", vec!["192.0.2.12", "192.0.2.11"]),
    ];
    let node = |order: &[usize], seed: u32| {
        let info = AgentInfo {
            ring_slots: 1 << 16,
            hash_seed: seed,
            ..AgentInfo::default()
        };
        let mut r = Reconciler::new(FakeMaps::default(), info);
        for &i in order {
            let (svc, backends) = &services[i];
            let mut b = backends.clone();
            if order[0] == 1 {
                b.reverse();
            }
            add(&mut r, svc, &b);
        }
        r
    };
    let mut a = node(&[0, 1], 7);
    let mut b = node(&[1, 0], 7);
    let id_of = |r: &Rec| {
        r.live()
            .backends_of_spec(&spec("203.0.113.10:80/tcp"))
            .find(|(a, _)| a.to_string() == "192.0.2.11:80")
            .map(|(_, id)| *id)
    };
    assert_ne!(id_of(&a), id_of(&b), "the nodes' backend ids differ");
    let fa = fingerprints(&mut a);
    assert!(
        fa.iter()
            .all(|(_, f)| f.as_deref().is_some_and(|f| f.len() == 18)),
        "{fa:?}"
    );
    assert_eq!(fa, fingerprints(&mut b));
    let listed: Vec<Option<String>> = match ask(&mut a, Req::VipList) {
        Response::Vips { vips } => vips.into_iter().map(|v| v.table_fingerprint).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        listed,
        fa.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>()
    );
    // Another seed: other fingerprints (flows hash to other slots).
    let mut c = node(&[0, 1], 8);
    assert_ne!(fa, fingerprints(&mut c));
    // A backend drained on one node: that service's table differs, the other's does not.
    ok(
        &mut b,
        Req::BackendDrain {
            service: "203.0.113.10:80/tcp".into(),
            backend: "192.0.2.13".into(),
            drained: true,
        },
    );
    let fb = fingerprints(&mut b);
    assert_ne!(fa[0], fb[0]);
    assert_eq!(fa[1], fb[1]);
}
