//! What the agent announces (`crate::announce`): each VIP address with a backend in rotation
//! in at least one of its services, and the effects that say when that may have changed.

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
