//! A change is transactional: with the n-th of its writes failing, for every n, the desired
//! state stays as it was, the maps say what they said before (compared by meaning, not ids),
//! nothing leaks, and the same change made again gives what a clean run gives.

use std::collections::BTreeMap;

use lb_common::{
    acl,
    addr::{self, Addr},
    maps::{NextHop, ServiceKey},
};

use super::*;

/// The maps as a packet sees them: services by key with their table (as backend addresses)
/// and ACL; VIPs with their source set (hairpin hosts by backend address); active backends;
/// PIPs. Ids and table offsets are left out: a rolled-back change may move them.
/// A service by key: (VIP, port, protocol).
type Key = (Addr, [u8; 2], u8);
/// A source-set entry: prefix, action, and the backend a hairpin entry names.
type SetEntry = (acl::Prefix, u32, Option<std::net::SocketAddr>);
/// A table as backend addresses, and an ACL as (prefix, action).
type Service = (Vec<std::net::SocketAddr>, Vec<(acl::Prefix, u32)>);

#[derive(Debug, PartialEq, Eq)]
struct View {
    /// Each service's table (as backend addresses) and ACL (prefix, action).
    services: BTreeMap<Key, Service>,
    /// Each VIP's service count, flags and source set.
    vips: BTreeMap<Addr, (u32, u32, Vec<SetEntry>)>,
    /// Active backends as (service port, address), sorted, duplicates kept: two live entries
    /// for one address would be a leak.
    backends: Vec<(u32, std::net::SocketAddr)>,
    pips: BTreeMap<Addr, (Addr, NextHop)>,
    /// Reverse-service entries: endpoint → flags (each checked to name an active backend at
    /// that endpoint, of a live service, with that service's VIP and port).
    revs: BTreeMap<RevKey, (u16, addr::Addr, [u8; 2])>,
}

fn action(a: acl::Action) -> u32 {
    match a {
        acl::Action::Permit => 0,
        acl::Action::Deny => 1,
        acl::Action::Hairpin => 2,
    }
}

fn view(m: &FakeMaps) -> View {
    let addr_of = |id: u32| {
        m.backends
            .get(&id)
            .filter(|b| b.is_active())
            .map(live::backend_addr)
    };
    let set = |id: u32| -> Vec<SetEntry> {
        let mut v: Vec<_> = m
            .acl
            .iter()
            .filter(|((aid, _), _)| *aid == id)
            .map(|(_, e)| (e.prefix, action(e.action), e.rule.and_then(addr_of)))
            .collect();
        v.sort();
        v
    };
    // The port of a service id, to name backends by service rather than by id.
    let service_of: BTreeMap<u32, Key> = m
        .services
        .iter()
        .map(|(k, i): (&ServiceKey, _)| (i.id, (k.vip, k.port, k.proto)))
        .collect();
    View {
        services: m
            .services
            .iter()
            .map(|(k, i)| {
                let table = (i.table_off..i.table_off + i.table_len)
                    .map(|s| addr_of(m.ring[&s]).expect("a slot names an active backend"))
                    .collect();
                let acl = set(i.acl_id).into_iter().map(|(p, a, _)| (p, a)).collect();
                ((k.vip, k.port, k.proto), (table, acl))
            })
            .collect(),
        vips: m
            .vips
            .iter()
            .map(|(k, v)| (k.vip, (v.services, v.flags, set(v.ilb_id))))
            .collect(),
        backends: {
            let mut v: Vec<_> = m
                .backends
                .values()
                .filter(|b| b.is_active())
                .map(|b| {
                    let port = service_of
                        .get(&b.service)
                        .map_or(0, |(_, p, _)| u32::from(u16::from_be_bytes(*p)));
                    (port, live::backend_addr(b))
                })
                .collect();
            v.sort();
            v
        },
        pips: m.pips.iter().map(|(k, v)| (*k, *v)).collect(),
        revs: m
            .revs
            .iter()
            .map(|(k, e)| {
                let b = m.backends.get(&e.backend).filter(|b| b.is_active());
                assert!(
                    b.is_some_and(|b| live::endpoint(b) == *k && b.service == e.service),
                    "{k:?} → {e:?} names no active backend of that endpoint and service"
                );
                // A VIP swap holds entries at the VIP their older flows were addressed to
                // (shared): only those may name another VIP than their service's.
                let (vip, port, _) = service_of[&e.service];
                assert!(
                    (e.vip, e.vport) == (vip, port) || e.flags == lb_common::maps::REV_F_SHARED,
                    "{k:?} → {e:?}"
                );
                (*k, (e.flags, e.vip, e.vport))
            })
            .collect(),
    }
}

/// The first part of two views that differs, shown whole.
fn differ(got: &View, want: &View) -> Option<String> {
    let show = |name: &str, a: String, b: String| Some(format!("{name}:\n got {a}\nwant {b}"));
    if got.services.keys().ne(want.services.keys()) {
        return show(
            "services",
            format!("{:?}", got.services.keys()),
            format!("{:?}", want.services.keys()),
        );
    }
    for (k, (t, a)) in &got.services {
        let (wt, wa) = &want.services[k];
        if a != wa {
            return show("an ACL", format!("{a:?}"), format!("{wa:?}"));
        }
        if t != wt {
            let count = |t: &[std::net::SocketAddr]| {
                let mut m: BTreeMap<std::net::SocketAddr, usize> = BTreeMap::new();
                for x in t {
                    *m.entry(*x).or_default() += 1;
                }
                m
            };
            return show(
                "a table",
                format!("{:?}", count(t)),
                format!("{:?}", count(wt)),
            );
        }
    }
    if got.vips != want.vips {
        return show(
            "vips",
            format!("{:?}", got.vips),
            format!("{:?}", want.vips),
        );
    }
    if got.backends != want.backends {
        return show(
            "backends",
            format!("{:?}", got.backends),
            format!("{:?}", want.backends),
        );
    }
    if got.revs != want.revs {
        return show(
            "reverse-service entries",
            format!("{:?}", got.revs),
            format!("{:?}", want.revs),
        );
    }
    if got.pips != want.pips {
        return show(
            "pips",
            format!("{:?}", got.pips),
            format!("{:?}", want.pips),
        );
    }
    None
}

/// What the allocators and the ACL map hold once every grace period is over: a rollback
/// that leaks shows here.
fn settled(r: &mut Rec) -> (u64, usize, usize, usize, usize) {
    r.release_all();
    (
        r.alloc.ring.used(),
        r.alloc.services.free_count(),
        r.alloc.backends.free_count(),
        r.alloc.acl_sets.free_count(),
        r.maps.acl.len(),
    )
}

fn fails_cleanly_at_every_write(
    what: &str,
    build: impl Fn() -> Rec,
    change: impl Fn(&mut Rec) -> Result<(), String>,
) {
    let mut clean = build();
    let w0 = clean.maps.writes;
    change(&mut clean).unwrap_or_else(|e| panic!("{what}: the clean run failed: {e}"));
    let total = clean.maps.writes - w0;
    assert!(
        total >= 4,
        "{what}: only {total} writes, not representative"
    );
    let want = view(&clean.maps);
    let want_state = clean.state().clone();
    let want_settled = settled(&mut clean);
    for n in 1..=total {
        let mut r = build();
        let (before, before_state) = (view(&r.maps), r.state().clone());
        r.maps.fail_at = Some(r.maps.writes + n);
        let e = change(&mut r).err().unwrap_or_else(|| {
            panic!("{what}: write {n} of {total} failed, and the change succeeded")
        });
        assert!(
            e.contains("nothing changed") && e.contains("FAKE"),
            "{what}, write {n}/{total}: the answer does not say what happened: {e}"
        );
        assert_eq!(
            r.state(),
            &before_state,
            "{what}, write {n}/{total}: state changed"
        );
        if let Some(d) = differ(&view(&r.maps), &before) {
            panic!("{what}, write {n}/{total}: the maps were not brought back: {d}");
        }
        assert_tables_point_at_live_backends(&r.maps);
        assert!(r.dirty.is_empty(), "{what}, write {n}/{total}");
        // Nothing is lost: the same change now gives the clean run's maps, and leaks nothing.
        change(&mut r).unwrap_or_else(|e| panic!("{what}, write {n}/{total}: retry failed: {e}"));
        assert_eq!(r.state(), &want_state);
        if let Some(d) = differ(&view(&r.maps), &want) {
            panic!("{what}, write {n}/{total}: the retry differs from a clean run: {d}");
        }
        assert_eq!(
            settled(&mut r),
            want_settled,
            "{what}, write {n}/{total}: allocations or ACL entries leaked"
        );
    }
}

fn api(req: Req) -> impl Fn(&mut Rec) -> Result<(), String> {
    move |r| match ask(r, req.clone()) {
        Response::Done(_) => Ok(()),
        Response::Error { message, .. } => Err(message),
        other => panic!("{other:?}"),
    }
}

/// An internal VIP with two backends, an ACL on its service, and a second service.
fn base() -> Rec {
    let mut r = rec(4096);
    ok(
        &mut r,
        Req::VipAdd {
            service: WEB.into(),
            settings: VipSettings {
                table_size: Some(251),
                internal: Some("198.51.100.0/24".into()),
                ..VipSettings::default()
            },
        },
    );
    for b in ["192.0.2.11", "192.0.2.12"] {
        ok(
            &mut r,
            Req::BackendAdd {
                service: WEB.into(),
                backend: b.into(),
                weight: None,
            },
        );
    }
    ok(
        &mut r,
        Req::AclAdd {
            service: WEB.into(),
            order: 10,
            action: "permit".into(),
            prefix: "198.51.100.0/25".into(),
            description: String::new(),
        },
    );
    add(&mut r, "203.0.113.20:53/udp", &["192.0.2.13"]);
    r.release_all();
    r
}

#[test]
fn adding_a_backend_to_an_internal_vip_fails_cleanly_at_every_write() {
    fails_cleanly_at_every_write(
        "backend add",
        base,
        api(Req::BackendAdd {
            service: WEB.into(),
            backend: "192.0.2.14".into(),
            weight: None,
        }),
    );
}

#[test]
fn removing_a_backend_and_changing_an_acl_fail_cleanly_at_every_write() {
    fails_cleanly_at_every_write(
        "backend del",
        base,
        api(Req::BackendDel {
            service: WEB.into(),
            backend: "192.0.2.11".into(),
        }),
    );
    fails_cleanly_at_every_write(
        "acl add",
        base,
        api(Req::AclAdd {
            service: WEB.into(),
            order: 20,
            action: "deny".into(),
            prefix: "198.51.100.128/25".into(),
            description: String::new(),
        }),
    );
}

/// A whole reload: one service deleted, one edited (a backend out, one in, its ACL dropped),
/// one added on a new VIP, a PIP added.
#[test]
fn a_reload_fails_cleanly_at_every_write() {
    let next = {
        let mut r = base();
        for req in [
            Req::VipDel {
                service: "203.0.113.20:53/udp".into(),
            },
            Req::BackendDel {
                service: WEB.into(),
                backend: "192.0.2.11".into(),
            },
            Req::BackendAdd {
                service: WEB.into(),
                backend: "192.0.2.15".into(),
                weight: Some(3),
            },
            Req::AclDel {
                service: WEB.into(),
                order: 10,
            },
            Req::PipAdd {
                pip: "203.0.113.50".into(),
                dip: "192.0.2.16".into(),
            },
        ] {
            ok(&mut r, req);
        }
        add(
            &mut r,
            "203.0.113.30:443/tcp",
            &["192.0.2.17", "192.0.2.18"],
        );
        r.state().clone()
    };
    fails_cleanly_at_every_write("reload", base, move |r| {
        let mut fx = r.handle_event(Event::Reload {
            state: Box::new(next.clone()),
            tag: "t".into(),
            reply: None,
        });
        let res = fx.reload.take().expect("a reload outcome");
        r.settle(fx);
        res.map(drop)
    });
}

/// The PIP maps take part too (a change that touches no service).
#[test]
fn a_pip_change_fails_cleanly_at_every_write() {
    let build = || {
        let mut r = base();
        ok(
            &mut r,
            Req::PipAdd {
                pip: "203.0.113.50".into(),
                dip: "192.0.2.16".into(),
            },
        );
        r
    };
    // A PIP is two writes; deleting it and adding two more is representative.
    fails_cleanly_at_every_write("pip swap", build, |r| {
        let mut next = r.state().clone();
        next.pips.remove(&"203.0.113.50".parse().unwrap());
        next.pips.insert(
            "203.0.113.51".parse().unwrap(),
            "192.0.2.16".parse().unwrap(),
        );
        next.pips.insert(
            "203.0.113.52".parse().unwrap(),
            "192.0.2.19".parse().unwrap(),
        );
        next.pips.insert(
            "203.0.113.53".parse().unwrap(),
            "192.0.2.20".parse().unwrap(),
        );
        r.transact(
            next,
            &Touched {
                services: Vec::new(),
                pips: true,
            },
            None,
        )
        .map_err(|e| e.to_string())
    });
    let _ = addr::v4_mapped([0; 4]);
}

/// A VIP swap is one transaction: with any of its writes failing, both VIPs are as they were.
#[test]
fn a_vip_swap_fails_cleanly_at_every_write() {
    let build = || {
        let mut r = base();
        add_with(
            &mut r,
            "203.0.113.11:80/tcp",
            VipSettings {
                table_size: Some(251),
                internal: Some("198.51.100.0/24".into()),
                ..VipSettings::default()
            },
            &["192.0.2.14"],
        );
        add_with(
            &mut r,
            "203.0.113.11:81/tcp",
            VipSettings {
                table_size: Some(251),
                internal: Some("198.51.100.0/24".into()),
                ..VipSettings::default()
            },
            &["192.0.2.15"],
        );
        r.release_all();
        r
    };
    fails_cleanly_at_every_write(
        "vip swap",
        build,
        api(Req::VipSwap {
            a: "203.0.113.10".into(),
            b: "203.0.113.11".into(),
        }),
    );
}
