//! The planner on its own: plain values in, the ordered steps out; no map, no fake.

use std::net::SocketAddr;

use lb_common::maps::{BackendId, NextHop};

use super::*;
use crate::{
    config::ServiceSettings,
    reconcile::{
        alloc::Alloc,
        health::HealthBook,
        hops::Hops,
        live::Live,
        plan::{self, Inputs, Phase, Step},
    },
    state::{Command, State},
};

fn state(cmds: &[Command]) -> State {
    let mut s = State::default();
    for c in cmds {
        s.apply(c).unwrap();
    }
    s
}

fn vip_add(svc: &str, settings: ServiceSettings) -> Command {
    Command::VipAdd {
        service: spec(svc),
        settings,
    }
}

fn backend_add(svc: &str, b: &str) -> Command {
    Command::BackendAdd {
        service: spec(svc),
        backend: b.parse().unwrap(),
        weight: None,
    }
}

fn small() -> ServiceSettings {
    ServiceSettings {
        table_size: 7,
        ..ServiceSettings::default()
    }
}

/// Applies a plan's steps to `live` the way the applier records them (no maps involved).
fn record(live: &mut Live, steps: &[Step]) {
    for s in steps {
        match s {
            Step::PutBackend(id, b) => live.put_backend(*id, *b),
            Step::RetireBackend(id) => live.retire_backend(*id),
            Step::PutSlots(off, slots) => {
                live.regions.insert(*off, slots.clone());
            }
            Step::PutAcl(id, e) => live.put_acl(*id, *e),
            Step::PutService(spec, info) => {
                live.services.insert(*spec, *info);
            }
            Step::DelService(spec) => {
                live.services.remove(spec);
            }
            Step::PutVip(ip, info) => {
                live.put_vip(*ip, *info);
            }
            Step::DelVip(ip) => {
                live.del_vip(*ip);
            }
            _ => {}
        }
    }
}

fn all_steps(p: &Plan) -> Vec<Step> {
    p.prepare
        .iter()
        .chain(&p.switch)
        .chain(&p.after)
        .cloned()
        .collect()
}

/// What the planner reads, owned, and the allocators it takes from.
struct World {
    state: State,
    live: Live,
    health: HealthBook,
    hops: Hops,
    alloc: Alloc,
}

impl World {
    fn new(state: State) -> Self {
        Self {
            state,
            live: Live::default(),
            health: HealthBook::default(),
            hops: Hops::default(),
            alloc: Alloc::new(100),
        }
    }

    fn service(&mut self, svc: &str) -> Plan {
        let i = Inputs {
            state: &self.state,
            live: &self.live,
            health: &self.health,
            hops: &self.hops,
        };
        plan::service(&spec(svc), i, &mut self.alloc).unwrap()
    }

    fn vip(&mut self, ip: IpAddr, phase: Phase) -> Plan {
        let i = Inputs {
            state: &self.state,
            live: &self.live,
            health: &self.health,
            hops: &self.hops,
        };
        plan::vip(ip, phase, i, &mut self.alloc).unwrap()
    }

    fn record(&mut self, steps: &[Step]) {
        record(&mut self.live, steps);
    }
}

/// A new service: stats zeroed, each backend's entry before the table, the table before the
/// one switching write; nothing after it.
#[test]
fn a_new_service_is_prepared_then_switched_in_one_write() {
    let st = state(&[
        vip_add(WEB, small()),
        backend_add(WEB, "192.0.2.11"),
        backend_add(WEB, "192.0.2.12"),
    ]);
    let p = World::new(st).service(WEB);
    let kinds: Vec<&str> = p
        .prepare
        .iter()
        .map(|s| match s {
            Step::ZeroServiceStats(_) => "zero-service",
            Step::ZeroBackendStats(_) => "zero-backend",
            Step::PutBackend(..) => "backend",
            Step::PutSlots(..) => "slots",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "zero-service",
            "zero-backend",
            "backend",
            "zero-backend",
            "backend",
            "slots"
        ]
    );
    let Some(Step::PutService(s, info)) = &p.switch else {
        panic!("{p:?}")
    };
    assert_eq!((s, info.table_len, info.acl_id), (&spec(WEB), 7, 0));
    assert!(p.after.is_empty(), "{p:?}");
    // The table names exactly the two new ids, and unresolved hops (none known yet).
    let Some(Step::PutSlots(_, slots)) = p.prepare.last() else {
        panic!()
    };
    let ids: BTreeSet<BackendId> = slots.iter().copied().collect();
    assert_eq!(ids, p.fresh.backends.iter().copied().collect());
    assert!(p.prepare.iter().all(|s| match s {
        Step::PutBackend(_, b) => b.nh == NextHop::default(),
        _ => true,
    }));
}

/// With the maps already matching, the plan is empty; a removed backend is retired after the
/// switch and its flows purged, and the old table released after the grace period.
#[test]
fn a_matching_service_plans_nothing_and_a_removal_retires_after_the_switch() {
    let mut w = World::new(state(&[
        vip_add(WEB, small()),
        backend_add(WEB, "192.0.2.11"),
        backend_add(WEB, "192.0.2.12"),
    ]));
    let first = w.service(WEB);
    w.record(&all_steps(&first));
    assert_eq!(w.service(WEB), Plan::default(), "nothing to do");

    w.state
        .apply(&Command::BackendDel {
            service: spec(WEB),
            backend: "192.0.2.12".parse().unwrap(),
        })
        .unwrap();
    let gone = w
        .live
        .backends_of_spec(&spec(WEB))
        .find(|(a, _)| **a == "192.0.2.12:80".parse::<SocketAddr>().unwrap())
        .map(|(_, id)| *id)
        .unwrap();
    let p = w.service(WEB);
    assert!(
        matches!(p.prepare.as_slice(), [Step::PutSlots(..)]),
        "{p:?}"
    );
    assert!(matches!(p.switch, Some(Step::PutService(..))));
    let old_region = first.fresh.region.unwrap();
    assert_eq!(
        p.after,
        vec![
            Step::Defer(Deferred::Region(old_region.0, old_region.1)),
            Step::RetireBackend(gone),
            Step::Purge(PurgeJob {
                backends: [gone].into(),
                ..PurgeJob::default()
            }),
        ]
    );
}

/// An internal VIP's entry and source set are planned before the switch with the new
/// service counted and its backends as hairpin hosts; after a deletion, the entry goes.
#[test]
fn an_internal_vip_is_widened_before_and_trimmed_after() {
    let internal = ServiceSettings {
        internal: vec![("198.51.100.0".parse().unwrap(), 24)],
        ..small()
    };
    let mut w = World::new(state(&[
        vip_add(WEB, internal),
        backend_add(WEB, "192.0.2.11"),
    ]));
    let p = w.service(WEB);
    w.record(&p.prepare);
    let ip = spec(WEB).vip.ip();
    let v = w.vip(
        ip,
        Phase::Before {
            new_service: p.fresh.service,
        },
    );
    let Some(Step::PutVip(_, info)) = v.switch else {
        panic!("{v:?}")
    };
    assert_eq!(info.services, 1);
    let hairpin: Vec<_> = v
        .prepare
        .iter()
        .filter_map(|s| match s {
            Step::PutAcl(_, e) if e.action == acl::Action::Hairpin => e.rule,
            _ => None,
        })
        .collect();
    assert_eq!(
        hairpin, p.fresh.backends,
        "the new backend is a hairpin host"
    );
    w.record(&all_steps(&v));
    w.record(&all_steps(&p));
    // Deleted: the service entry goes first, then the VIP's (After: no live service left).
    w.state = State::default();
    let d = w.service(WEB);
    assert_eq!(d.switch, Some(Step::DelService(spec(WEB))));
    let before = w.vip(ip, Phase::Before { new_service: None });
    assert_eq!(
        before.switch, None,
        "the entry stays until the service is gone"
    );
    w.record(&all_steps(&d));
    let after = w.vip(ip, Phase::After);
    assert_eq!(after.switch, Some(Step::DelVip(ip)));
    assert!(
        matches!(after.after.as_slice(), [Step::Defer(_)]),
        "{after:?}"
    );
}

/// Routes and next hops: only what differs is written, removals by key.
#[test]
fn routes_and_next_hops_write_only_what_differs() {
    let mut live = Live::default();
    let nh = |i| NextHop {
        ifindex: i,
        smac: [1; 6],
        dmac: [2; 6],
    };
    let a = (120, addr::v4_mapped([198, 51, 100, 0]));
    let b = (96, addr::v4_mapped([0, 0, 0, 0]));
    live.routes.insert(a, nh(1));
    live.routes.insert(b, nh(2));
    let want = [(a.0, a.1, nh(1)), (b.0, b.1, nh(3))];
    assert_eq!(
        plan::routes(&want, &live),
        vec![Step::PutRoute(b.0, b.1, nh(3))]
    );
    assert_eq!(plan::routes(&[], &live).len(), 2);

    let be = plan::backend_entry(
        1,
        "192.0.2.11:80".parse().unwrap(),
        6,
        (NextHop::default(), 0),
    );
    live.put_backend(5, be);
    let mut hops = Hops::default();
    let ip: IpAddr = "192.0.2.11".parse().unwrap();
    let learn = |hops: &mut Hops, mtu| {
        hops.learn(&Resolution {
            hops: vec![(
                ip,
                Some(Hop {
                    nh: nh(4),
                    via: ip,
                    mtu,
                }),
            )],
            routes: None,
            locals: None,
        });
    };
    learn(&mut hops, 1500);
    let steps = plan::next_hops(&[ip].into(), &live, &hops);
    let resolved = Backend {
        nh: nh(4),
        mtu: 1500,
        ..be
    };
    assert_eq!(steps, vec![Step::PutBackend(5, resolved)]);
    assert!(plan::next_hops(&["192.0.2.12".parse().unwrap()].into(), &live, &hops).is_empty());

    // The same next hop over a link whose MTU changed (`ip link set mtu`) is rewritten too:
    // the "too big" answers must give the new figure.
    live.put_backend(5, resolved);
    assert!(plan::next_hops(&[ip].into(), &live, &hops).is_empty());
    learn(&mut hops, 9000);
    assert_eq!(
        plan::next_hops(&[ip].into(), &live, &hops),
        vec![Step::PutBackend(
            5,
            Backend {
                mtu: 9000,
                ..resolved
            }
        )]
    );
}
