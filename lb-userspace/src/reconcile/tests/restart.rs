//! Restart adoption: a new agent takes over what the pinned maps hold.

use lb_common::{acl, addr, maps::NextHop};

use super::*;
use crate::spec::map_prefix;

/// The restart that must drop nothing: a new agent with the same state finds the maps
/// serving and leaves every entry as it is (same ids, tables, ACL sets, PIPs); health
/// comes from the live table, so a probed service keeps its table before any probe.
#[test]
fn a_restarted_agent_adopts_the_live_maps_and_changes_nothing() {
    let mut r = rec(4096);
    probed(&mut r, VipSettings::default());
    report(&mut r, "192.0.2.11:80", true);
    report(&mut r, "192.0.2.12:80", false);
    report(&mut r, "192.0.2.12:80", false);
    ok(
        &mut r,
        Req::AclAdd {
            service: WEB.into(),
            order: 10,
            action: "permit".into(),
            prefix: "198.51.100.0/24".into(),
            description: String::new(),
        },
    );
    ok(
        &mut r,
        Req::VipAdd {
            service: "203.0.113.20:80/tcp".into(),
            settings: VipSettings {
                table_size: Some(251),
                internal: Some("198.51.100.0/24".into()),
                ..VipSettings::default()
            },
        },
    );
    ok(
        &mut r,
        Req::BackendAdd {
            service: "203.0.113.20:80/tcp".into(),
            backend: "192.0.2.13".into(),
            weight: None,
        },
    );
    ok(
        &mut r,
        Req::PipAdd {
            pip: "203.0.113.50".into(),
            dip: "192.0.2.14".into(),
        },
    );
    let before = r.maps().clone();
    let mut r2 = restarted(&r);
    start(&mut r2, r.state().clone());
    let after = r2.maps();
    assert_eq!(after.services, before.services);
    assert_eq!(after.vips, before.vips);
    assert_eq!(after.backends, before.backends);
    assert_eq!(after.acl, before.acl);
    assert_eq!(after.pips, before.pips);
    assert_eq!(after.ring, before.ring);
    for op in &after.ops {
        match op {
            Op::Service(v) => assert!(
                before.services.values().any(|b| b == v),
                "a service entry changed: {v:?}"
            ),
            // Rewriting a live backend with the same value is harmless; nothing else is
            // written (no slots, ACL entries, purges or deletions).
            Op::Backend(id, true) => assert!(before.backends.contains_key(id)),
            other => panic!("a restart with the same state wrote {other:?}"),
        }
    }
    // The healthy backend kept its slots before any probe; the down one stays out.
    assert_eq!(
        shares(&r2).keys().collect::<Vec<_>>(),
        vec!["192.0.2.11:80"]
    );
    // And the adopted allocators hand out fresh ids and regions (an unprobed service, so
    // the new backend enters the table at once).
    ok(
        &mut r2,
        Req::BackendAdd {
            service: "203.0.113.20:80/tcp".into(),
            backend: "192.0.2.15".into(),
            weight: None,
        },
    );
    let new_ids: Vec<&BackendId> = r2
        .maps()
        .backends
        .keys()
        .filter(|id| !before.backends.contains_key(id))
        .collect();
    assert_eq!(new_ids.len(), 1, "one new entry");
    let Some(Op::Slots(off, len)) = r2
        .maps()
        .ops
        .iter()
        .rev()
        .find(|o| matches!(o, Op::Slots(..)))
        .cloned()
    else {
        panic!("no new table")
    };
    for live in before.services.values().filter(|v| v.table_len > 0) {
        let disjoint = off + len <= live.table_off || live.table_off + live.table_len <= off;
        assert!(disjoint, "new region {off}+{len} overlaps live {live:?}");
    }
}

/// A new agent whose state differs: what it no longer wants is removed after the switch
/// (a backend retired, a service and its VIP deleted), what it keeps keeps its ids, and
/// leftovers no service claims (a backend entry, an ACL set, a route) are cleaned up.
#[test]
fn a_restart_with_another_state_removes_only_what_is_unwanted() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
    add(&mut r, "203.0.113.20:53/udp", &["192.0.2.13"]);
    let mut want = rec(4096);
    add(&mut want, WEB, &["192.0.2.11", "192.0.2.14"]);
    let id_of = |r: &Rec, a: &str| {
        let a: std::net::SocketAddr = a.parse().unwrap();
        r.live()
            .backends_of_spec(&spec(WEB))
            .find(|(x, _)| **x == a)
            .map(|(_, id)| *id)
            .unwrap()
    };
    let (id11, id12) = (id_of(&r, "192.0.2.11:80"), id_of(&r, "192.0.2.12:80"));
    let web_before = r.maps().services[&spec(WEB).key()];
    let mut r2 = restarted(&r);
    // Leftovers of a crash: an entry of no live service and an unreferenced ACL set.
    r2.maps.backends.insert(
        900,
        plan::backend_entry(
            4242,
            "192.0.2.99:80".parse().unwrap(),
            6,
            (NextHop::default(), 0),
        ),
    );
    let stray = map_prefix("198.51.100.0".parse().unwrap(), 24);
    r2.maps.acl.insert(
        (77, stray),
        acl::Entry {
            prefix: stray,
            action: acl::Action::Deny,
            rule: None,
        },
    );
    // Tracked flows: one of a live backend, one of an id a dead agent had just retired.
    r2.maps.flows = vec![id11, 777];
    let gone_route = (120, addr::v4_mapped([198, 51, 100, 0]));
    r2.maps.routes.insert(gone_route, NextHop::default());
    start(&mut r2, want.state().clone());
    assert!(
        !r2.maps().routes.contains_key(&gone_route),
        "a client route the kernel no longer has is removed"
    );
    assert_eq!(
        id_of(&r2, "192.0.2.11:80"),
        id11,
        "a kept backend keeps its id"
    );
    assert_eq!(
        r2.maps().flows,
        vec![id11],
        "the flow naming an unused id is removed"
    );
    let purged = r2.maps().ops.iter().position(|o| *o == Op::PurgeStale(1));
    let first_new = r2
        .maps()
        .ops
        .iter()
        .position(|o| matches!(o, Op::Backend(_, true)));
    assert!(
        purged.is_some() && purged < first_new,
        "stale flows go before any id is handed out: {:?}",
        r2.maps().ops
    );
    let web = r2.maps().services[&spec(WEB).key()];
    assert_eq!(web.id, web_before.id);
    assert!(
        web.table_off + web.table_len <= web_before.table_off
            || web_before.table_off + web_before.table_len <= web.table_off,
        "the new table must not overwrite the live one: {web:?} vs {web_before:?}"
    );
    assert_eq!(shares(&r2).len(), 2);
    assert!(!shares(&r2).contains_key("192.0.2.12:80"));
    let ops = r2.maps().ops.clone();
    let switch = ops
        .iter()
        .position(|o| matches!(o, Op::Service(v) if v.id == web.id && v.table_off == web.table_off))
        .expect("the switch");
    let retire = ops
        .iter()
        .position(|o| *o == Op::Backend(id12, false))
        .expect("the removed backend is retired");
    assert!(switch < retire, "retired before the switch: {ops:?}");
    assert!(ops.contains(&Op::Purge(id12)));
    assert!(
        ops.contains(&Op::Purge(900)),
        "the stray entry is retired: {ops:?}"
    );
    assert!(!r2.maps().backends[&900].is_active());
    assert_eq!(r2.maps().services.len(), 1, "the UDP service is gone");
    assert_eq!(r2.maps().vips.len(), 1, "and its VIP");
    r2.release_all();
    assert!(
        !r2.maps().acl.contains_key(&(77, stray)),
        "the stray ACL set is deleted after the grace period"
    );
}

/// A restart whose bigger table fits nowhere next to the live one (an edited config, a
/// nearly full ring) replaces that table in place instead of failing to start: the service
/// points at no table for the grace period, then at the new one.
#[test]
fn a_restart_replaces_a_table_in_place_when_it_fits_nowhere_else() {
    let mut r = rec(600);
    add(&mut r, WEB, &["192.0.2.11", "192.0.2.12"]);
    // (Built on a bigger ring: a live change counts the table twice, a start once.)
    let mut want = rec(4096);
    ok(
        &mut want,
        Req::VipAdd {
            service: WEB.into(),
            settings: VipSettings {
                table_size: Some(353),
                ..VipSettings::default()
            },
        },
    );
    for b in ["192.0.2.11", "192.0.2.12"] {
        ok(
            &mut want,
            Req::BackendAdd {
                service: WEB.into(),
                backend: b.into(),
                weight: None,
            },
        );
    }
    let mut r2 = restarted(&r);
    start(&mut r2, want.state().clone());
    let info = r2.maps().services[&spec(WEB).key()];
    assert_eq!(info.table_len, 353);
    let services: Vec<u32> = r2
        .maps()
        .ops
        .iter()
        .filter_map(|o| match o {
            Op::Service(v) => Some(v.table_len),
            _ => None,
        })
        .collect();
    assert_eq!(services, vec![0, 353], "no table, then the new one");
    assert_eq!(shares(&r2).len(), 2);
}

/// The client routes of the resolution an agent makes before it starts are written by the
/// start itself: when every neighbour is already valid (a restart), no kernel change would
/// bring them later. (A restarted agent once served with no client route for a minute.)
#[test]
fn the_primed_client_routes_are_written_at_start() {
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11"]);
    let mut r2 = restarted(&r);
    let default_route = (96, addr::v4_mapped([0, 0, 0, 0]));
    let nh = NextHop {
        ifindex: 2,
        smac: [1; 6],
        dmac: [3; 6],
    };
    r2.prime(&Resolution {
        hops: Vec::new(),
        routes: Some(vec![(default_route.0, default_route.1, nh)]),
        locals: None,
    });
    r2.start(r.state().clone()).unwrap();
    assert_eq!(r2.maps().routes.get(&default_route), Some(&nh));
}

/// A restarted agent repairs the "maybe ours" filter an earlier one left: a bit no entry needs
/// (killed between a delete and its clear) goes, a bit an entry needs and lacks is set, and
/// the reverse-service entry of an endpoint no service uses is deleted.
#[test]
fn a_restarted_agent_repairs_the_filter_and_stale_reverse_entries() {
    use lb_common::maps::{RevKey, RevService, ours_bit};
    let mut r = rec(4096);
    add(&mut r, WEB, &["192.0.2.11:80", "192.0.2.12:80"]);
    let mut r2 = restarted(&r);
    let (w, bit) = ours_bit([192, 0, 2, 11]);
    let cur = r2.maps.ours[&w];
    r2.maps.ours.insert(w, cur & !bit);
    r2.maps.ours.retain(|_, v| *v != 0);

    let (sw, sbit) = ours_bit([198, 18, 0, 1]);
    *r2.maps.ours.entry(sw).or_default() |= sbit;
    let stale = RevKey::of(
        lb_common::addr::v4_mapped([192, 0, 2, 99]),
        80u16.to_be_bytes(),
        6,
    );
    r2.maps.revs.insert(stale, RevService::default());
    let state = r.state().clone();
    start(&mut r2, state);

    assert_tables_point_at_live_backends(&r2.maps);
    assert!(!r2.maps.revs.contains_key(&stale));
}
