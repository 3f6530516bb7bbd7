//! `lb vip swap`: the entries move as they are, the reply entries are held for the flows from
//! before, the holds go when the sweeper finds none of those flows, and what cannot be swapped
//! is refused.

use lb_common::maps::{REV_F_SHARED, ServiceKey};

use super::*;
use crate::dataplane::sweep::Hold;

const A: &str = "203.0.113.10";
const B: &str = "203.0.113.11";

fn key(s: &str) -> ServiceKey {
    spec(s).key()
}

fn ep(addr: &str, port: u16) -> RevKey {
    let ip: std::net::Ipv4Addr = addr.parse().unwrap();
    RevKey::of(addr::v4_mapped(ip.octets()), port.to_be_bytes(), 6)
}

fn swap(r: &mut Rec, a: &str, b: &str) -> Response {
    ask(
        r,
        Req::VipSwap {
            a: a.into(),
            b: b.into(),
        },
    )
}

/// Production on A (two ports), staging on B (one).
fn two_vips() -> Rec {
    let mut r = rec(4096);
    add(&mut r, "203.0.113.10:80/tcp", &["192.0.2.11", "192.0.2.12"]);
    add(&mut r, "203.0.113.10:443/tcp", &["192.0.2.11:8443"]);
    add(&mut r, "203.0.113.11:80/tcp", &["192.0.2.21"]);
    r.release_all();
    r
}

#[test]
fn a_swap_moves_every_entry_as_it_is_and_holds_the_reply_entries() {
    let mut r = two_vips();
    let before = r.maps.services.clone();
    let revs_before = r.maps.revs.clone();
    let backends_before = r.maps.backends.clone();
    let Response::Done(Change::VipsSwapped { services, .. }) = swap(&mut r, A, B) else {
        panic!("the swap was refused");
    };
    assert_eq!(services.len(), 3, "{services:?}");
    // Each service entry is the other VIP's, unchanged: same id, same table, same ACL.
    assert_eq!(
        r.maps.services[&key("203.0.113.11:80/tcp")],
        before[&key("203.0.113.10:80/tcp")]
    );
    assert_eq!(
        r.maps.services[&key("203.0.113.11:443/tcp")],
        before[&key("203.0.113.10:443/tcp")]
    );
    assert_eq!(
        r.maps.services[&key("203.0.113.10:80/tcp")],
        before[&key("203.0.113.11:80/tcp")]
    );
    assert!(!r.maps.services.contains_key(&key("203.0.113.10:443/tcp")));
    // No backend entry changed: established flows keep the ids they name.
    assert_eq!(r.maps.backends, backends_before);
    // Every endpoint's reply entry still names the VIP its flows were addressed to, shared
    // now, so new flows write their own reverse entries.
    for (e, vip) in [
        (ep("192.0.2.11", 80), A),
        (ep("192.0.2.12", 80), A),
        (ep("192.0.2.11", 8443), A),
        (ep("192.0.2.21", 80), B),
    ] {
        let was = revs_before[&e];
        let now = r.maps.revs[&e];
        assert_eq!(
            now,
            RevService {
                flags: REV_F_SHARED,
                ..was
            },
            "{e:?}"
        );
        let ip: std::net::Ipv4Addr = vip.parse().unwrap();
        assert_eq!(now.vip, addr::v4_mapped(ip.octets()));
    }
    assert_eq!(r.live().holds.len(), 4);
    // The desired state moved with it.
    assert!(
        r.state()
            .services
            .contains_key(&spec("203.0.113.11:443/tcp"))
    );
    assert!(
        !r.state()
            .services
            .contains_key(&spec("203.0.113.10:443/tcp"))
    );
    let b443 = &r.state().services[&spec("203.0.113.11:443/tcp")];
    assert!(
        b443.backends
            .contains_key(&"192.0.2.11:8443".parse().unwrap())
    );

    // A restarted agent finds the holds in the maps (shared entries naming another VIP than
    // their service's) and keeps them, writing nothing over them.
    let mut again = restarted(&r);
    start(&mut again, r.state().clone());
    assert_eq!(again.live().holds, r.live().holds);
    assert_eq!(again.maps.revs, r.maps.revs);

    // The sweeper finds no flow from before the swap: the holds go, and each entry names the
    // VIP its service answers on now, unshared.
    let policy = r.sweep_policy();
    assert_eq!(policy.holds.len(), 4);
    r.handle_now(Event::HoldsReleased(policy.holds.clone()));
    assert!(r.live().holds.is_empty());
    for (e, vip) in [
        (ep("192.0.2.11", 80), B),
        (ep("192.0.2.11", 8443), B),
        (ep("192.0.2.21", 80), A),
    ] {
        let ip: std::net::Ipv4Addr = vip.parse().unwrap();
        assert_eq!(
            (r.maps.revs[&e].vip, r.maps.revs[&e].flags),
            (addr::v4_mapped(ip.octets()), 0),
            "{e:?}"
        );
    }
    assert!(r.sweep_policy().holds.is_empty());
}

#[test]
fn a_release_for_a_vip_the_endpoint_no_longer_names_is_ignored() {
    let mut r = two_vips();
    assert!(matches!(swap(&mut r, A, B), Response::Done(_)));
    let stale = r.sweep_policy().holds;
    // Swapped back before the sweeper reported: the flows made between the swaps are
    // addressed to B, which the entries would no longer name, so the holds stay.
    assert!(matches!(swap(&mut r, B, A), Response::Done(_)));
    r.handle_now(Event::HoldsReleased(stale));
    assert_eq!(r.live().holds.len(), 4);
    for e in [ep("192.0.2.11", 80), ep("192.0.2.21", 80)] {
        assert_eq!(r.maps.revs[&e].flags, REV_F_SHARED, "{e:?}");
    }
    // A release checked against the entries as they are now goes through.
    let fresh = r.sweep_policy().holds;
    r.handle_now(Event::HoldsReleased(fresh));
    assert!(r.live().holds.is_empty());
    assert_eq!(r.maps.revs[&ep("192.0.2.11", 80)].flags, 0);
}

#[test]
fn what_cannot_be_swapped_is_refused_and_changes_nothing() {
    let mut r = two_vips();
    add_with(
        &mut r,
        "203.0.113.20:80/tcp",
        VipSettings {
            table_size: Some(251),
            internal: Some("198.51.100.0/24".into()),
            ..VipSettings::default()
        },
        &["192.0.2.31"],
    );
    let maps = r.maps.services.clone();
    for (a, b, kind, words) in [
        (A, A, ErrorKind::Invalid, "with itself"),
        (A, "203.0.113.99", ErrorKind::NotFound, "has no service"),
        (
            A,
            "2001:db8::1",
            ErrorKind::Invalid,
            "different address families",
        ),
        (A, "203.0.113.20", ErrorKind::Invalid, "internal VIP and"),
    ] {
        match swap(&mut r, a, b) {
            Response::Error { kind: k, message } => {
                assert_eq!(k, kind, "{a} {b}: {message}");
                assert!(message.contains(words), "{a} {b}: {message}");
            }
            other => panic!("{a} {b}: {other:?}"),
        }
    }
    assert_eq!(r.maps.services, maps);
    assert!(r.live().holds.is_empty());
}

#[test]
fn hold_checks_match_the_policy_the_sweeper_follows() {
    let mut r = two_vips();
    assert!(matches!(swap(&mut r, A, B), Response::Done(_)));
    let policy = r.sweep_policy();
    let h: &Hold = policy
        .holds
        .iter()
        .find(|h| h.ep == ep("192.0.2.21", 80))
        .unwrap();
    // 192.0.2.21 served B before the swap and serves A now: flows to B still need it.
    let b: std::net::Ipv4Addr = B.parse().unwrap();
    let a: std::net::Ipv4Addr = A.parse().unwrap();
    assert_eq!(h.held.vip, addr::v4_mapped(b.octets()));
    assert_eq!(h.want, (addr::v4_mapped(a.octets()), 80u16.to_be_bytes()));
}
