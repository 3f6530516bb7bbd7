//! The planner: the desired state and what the maps hold ([`Live`]) in, the ordered writes that
//! make the maps match out. Pure: it reads no map and writes none, so it is tested with plain
//! values (`tests/plan.rs`); the only thing it changes is the allocators, and a plan records
//! what it took ([`Fresh`]) so that a plan that fails is given back.
//!
//! A plan has three parts, because of how packets see the maps (the ordering argument is in
//! `apply.rs`): `prepare` holds writes no packet can see yet (new backend entries, a new table
//! region, a new ACL set), `switch` the one update that makes them visible, and `after` what
//! the switch made unused (retired backends, regions and sets released after the grace period,
//! flows purged).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    acl,
    addr::{self, Addr},
    maglev::{TableBackend, build_table},
    maps::{
        BACKEND_F_ACTIVE, Backend, BackendId, NextHop, REV_F_SHARED, REV_F_STATELESS, RevKey,
        RevService, SVC_DIST_SHIFT, SVC_F_INTERNAL, SVC_F_TCP_RESET, SVC_FIP_SHIFT, ServiceInfo,
        VIP_F_HA_PORTS, VIP_F_HAIRPIN_SNAT, VIP_F_NO_ECHO, VipInfo,
    },
};

use super::{
    alloc::{Alloc, Deferred, Exhausted},
    health::HealthBook,
    hops::Hops,
    live::{Live, vip_range},
};
use crate::{
    dataplane::PurgeJob,
    spec::{FloatingIp, Hairpin, Replies, ServiceSpec, map_prefix},
    state::{ServiceState, State},
};

/// One write of a plan, or a piece of bookkeeping that must happen at exactly that point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    ZeroServiceStats(u32),
    ZeroBackendStats(BackendId),
    /// An active entry: a new backend, or a new next hop for one.
    PutBackend(BackendId, Backend),
    /// The entry marked inactive: no table points at it any more.
    RetireBackend(BackendId),
    PutSlots(u32, Vec<BackendId>),
    PutAcl(u32, acl::Entry),
    DelAcl(u32, acl::Prefix),
    PutService(ServiceSpec, ServiceInfo),
    DelService(ServiceSpec),
    PutVip(IpAddr, VipInfo),
    DelVip(IpAddr),
    PutPip {
        pip: IpAddr,
        dip: IpAddr,
        nh: NextHop,
    },
    DelPip {
        pip: IpAddr,
        dip: IpAddr,
    },
    /// A covered backend's outbound entry (`LB_OUTBOUND4`).
    PutOutbound([u8; 4], lb_common::outbound::OutboundEntry4),
    DelOutbound([u8; 4]),
    /// A frontend address of an outbound rule (`LB_OUT_FRONTS4`).
    PutOutFront([u8; 4], lb_common::outbound::OutFront4),
    DelOutFront([u8; 4]),
    /// A stateless rule's block owner (`LB_OUT_BLOCKS4`).
    PutOutBlock(lb_common::outbound::OutBlockKey4, [u8; 4]),
    DelOutBlock(lb_common::outbound::OutBlockKey4),
    /// An inside prefix of an outbound rule (`LB_OUT_INSIDE4`): rule id, address, length.
    PutOutInside(u32, [u8; 4], u8),
    DelOutInside(u32, [u8; 4], u8),
    PutRoute(u32, Addr, NextHop),
    DelRoute(u32, Addr),
    /// One of the host's own IPv4 addresses in `LB_LOCAL4`, written or deleted.
    PutLocal(Addr),
    DelLocal(Addr),
    /// A backend endpoint's reverse-service entry.
    PutRev(RevKey, RevService),
    DelRev(RevKey),
    /// One word of the "maybe ours" filter (the applier also sets and clears bits itself,
    /// around the entries that need them; this step is the full repair at start).
    PutOurs(u32, u64),
    /// Not a write: release this after the grace period, counted from here.
    Defer(Deferred),
    /// Not a write: the service id is free for reuse (its counters are zeroed on reuse).
    FreeServiceId(u32),
    /// Not a write: delete these flows (after this event, off the writer loop).
    Purge(PurgeJob),
}

impl Step {
    /// Whether the step writes a map (the rest is bookkeeping).
    #[must_use]
    pub const fn is_write(&self) -> bool {
        !matches!(
            self,
            Self::Defer(_) | Self::FreeServiceId(_) | Self::Purge(_)
        )
    }
}

/// What a plan allocated: given back if the plan fails before its switch makes them live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fresh {
    pub service: Option<u32>,
    pub backends: Vec<BackendId>,
    pub region: Option<(u32, u32)>,
    pub acl: Option<u32>,
}

impl Fresh {
    /// Gives back every allocation of a plan that was never run.
    pub fn free_unwritten(self, alloc: &mut Alloc) {
        if let Some(id) = self.service {
            alloc.services.free(id);
        }
        for id in self.backends {
            alloc.backends.free(id);
        }
        if let Some((off, len)) = self.region {
            alloc.ring.release(off, len);
        }
        if let Some(aid) = self.acl {
            alloc.acl_sets.free(aid);
        }
    }

    /// Gives back what nothing in `live` uses: a plan that failed before its switch. A fresh
    /// region or set was never visible to a packet, so it is free at once; a fresh ACL set's
    /// written entries are deleted after the grace period like any other. A backend entry that
    /// was written stays in `live`: the re-converging sync retires it, except when its service
    /// never went live, which the returned steps (retire and purge) take care of.
    #[must_use]
    pub fn give_back(self, live: &mut Live, alloc: &mut Alloc) -> Vec<Step> {
        let mut orphans = Vec::new();
        for id in &self.backends {
            if let Some(b) = live.backends.get(id)
                && !live.services.values().any(|i| i.id == b.service)
            {
                orphans.push(Step::RetireBackend(*id));
                orphans.push(Step::Purge(PurgeJob {
                    backends: BTreeSet::from([*id]),
                    ..PurgeJob::default()
                }));
            }
        }
        if let Some(id) = self.service
            && !live.services.values().any(|i| i.id == id)
        {
            alloc.services.free(id);
        }
        for id in self.backends {
            if !live.backends.contains_key(&id) {
                alloc.backends.free(id);
            }
        }
        if let Some((off, len)) = self.region
            && !live
                .services
                .values()
                .any(|i| i.table_off == off && i.table_len > 0)
        {
            live.regions.remove(&off);
            alloc.ring.release(off, len);
        }
        if let Some(aid) = self.acl
            && !live.services.values().any(|i| i.acl_id == aid)
            && !live.vips.values().any(|v| v.ilb_id == aid)
        {
            match live.acl.get(&aid) {
                Some(set) => {
                    alloc.defer(Deferred::Acl(aid, set.iter().map(|e| e.prefix).collect()));
                }
                None => alloc.acl_sets.free(aid),
            }
        }
        orphans
    }
}

/// A plan for one service, one VIP address, or a group of entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Writes no packet sees until `switch`.
    pub prepare: Vec<Step>,
    /// The one update that makes the change visible (`None`: nothing to switch).
    pub switch: Option<Step>,
    /// After the switch: what it made unused.
    pub after: Vec<Step>,
    pub fresh: Fresh,
}

/// What the planner reads.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub state: &'a State,
    pub live: &'a Live,
    pub health: &'a HealthBook,
    pub hops: &'a Hops,
}

/// An active backend entry of a service whose protocol is `proto`, leaving by next hop `nh`
/// over a link of MTU `mtu` ([`Hops::next_hop_for`]).
#[must_use]
pub fn backend_entry(
    service: u32,
    addr: SocketAddr,
    proto: u8,
    (nh, mtu): (NextHop, u32),
) -> Backend {
    Backend {
        addr: addr::from_ip(addr.ip()),
        port: addr.port().to_be_bytes(),
        flags: BACKEND_F_ACTIVE,
        proto,
        nh,
        service,
        mtu,
    }
}

/// The filter words that differ from what the live entries need: the repair of a filter an
/// earlier agent left (an agent killed between an entry's delete and its bit's clear).
#[must_use]
pub fn ours_words(live: &Live) -> Vec<Step> {
    let words: BTreeSet<u32> = live
        .filter
        .keys()
        .copied()
        .chain(live.ours.words())
        .collect();
    words
        .into_iter()
        .filter_map(|w| {
            let want = live.ours.wanted(w);
            (live.filter.get(&w).copied().unwrap_or(0) != want).then_some(Step::PutOurs(w, want))
        })
        .collect()
}

/// The endpoints (reverse-service keys) of a service id's active backends.
#[must_use]
pub fn endpoints_of(service_id: u32, live: &Live) -> BTreeSet<RevKey> {
    live.backends_of(service_id)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|id| live.backends.get(id).map(super::live::endpoint))
        .collect()
}

/// The plan that keeps `LB_REVSVC4[ep]` in step with the active backends at each endpoint in
/// `eps`: none, the entry deleted; one or more, an entry naming one of them (the one it names
/// already if it is still there, so the flows it serves keep being found; else the lowest id),
/// marked shared when there are several, and stateless when its one service has
/// `replies = "stateless"` in `state` (the state's checks keep such endpoints unshared).
/// `pending` is a service whose entry is not written yet (a new service before its switch), by
/// id.
#[must_use]
pub fn replies(
    eps: &BTreeSet<RevKey>,
    live: &Live,
    state: &State,
    pending: Option<(u32, &ServiceSpec)>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for ep in eps {
        let cur = live.revs.get(ep);
        let users = reply_users(*ep, live, state, pending);
        let Some(users) = Some(&users).filter(|u| !u.is_empty()) else {
            if cur.is_some() {
                steps.push(Step::DelRev(*ep));
            }
            continue;
        };
        // A VIP swap's hold: the entry keeps naming the VIP its older flows (which have no
        // reverse entry of their own) were addressed to, shared, so that every newer flow
        // writes its own. Until the sweeper releases it, or its backend is gone.
        let want = match live.holds.get(ep).filter(|h| users.contains(&h.backend)) {
            Some(h) => RevService {
                flags: REV_F_SHARED,
                ..*h
            },
            None => match unheld_reply(*ep, live, state, pending) {
                Some(w) => w,
                None => continue,
            },
        };
        if cur != Some(&want) {
            steps.push(Step::PutRev(*ep, want));
        }
    }
    steps
}

/// The active backends at endpoint `ep` whose replies come through the LB: all but those of
/// floating-IP services, whose backends answer the client straight from the VIP (their flows
/// have no reply to find, so they neither need the entry nor make it shared).
fn reply_users(
    ep: RevKey,
    live: &Live,
    state: &State,
    pending: Option<(u32, &ServiceSpec)>,
) -> BTreeSet<BackendId> {
    let floating = |sid: u32| {
        live.spec_of(sid)
            .or(pending.filter(|(p, _)| *p == sid).map(|(_, s)| s))
            .and_then(|spec| state.services.get(spec))
            .is_some_and(|st| st.settings.floating_ip != FloatingIp::Off)
    };
    live.by_endpoint
        .get(&ep)
        .into_iter()
        .flatten()
        .copied()
        .filter(|id| live.backends.get(id).is_some_and(|b| !floating(b.service)))
        .collect()
}

/// The reverse-service entry an endpoint with active backends wants, leaving holds aside (see
/// [`replies`]); `None` if it has none, or its service is not known yet.
#[must_use]
pub fn unheld_reply(
    ep: RevKey,
    live: &Live,
    state: &State,
    pending: Option<(u32, &ServiceSpec)>,
) -> Option<RevService> {
    let users = reply_users(ep, live, state, pending);
    let users = Some(&users).filter(|u| !u.is_empty())?;
    let primary = live
        .revs
        .get(&ep)
        .map(|r| r.backend)
        .filter(|b| users.contains(b))
        .or_else(|| users.first().copied())?;
    let b = live.backends.get(&primary)?;
    let spec = live
        .spec_of(b.service)
        .or(pending.filter(|(sid, _)| *sid == b.service).map(|(_, s)| s))?;
    let vip = spec.vip.ip();
    let stateless = state
        .services
        .get(spec)
        .is_some_and(|st| st.settings.replies == Replies::Stateless);
    let flags = match (users.len() > 1, stateless) {
        (true, _) => REV_F_SHARED,
        (false, true) => REV_F_STATELESS,
        (false, false) => 0,
    };
    Some(RevService {
        vip: addr::from_ip(vip),
        vport: spec.vip.port().to_be_bytes(),
        flags,
        service: b.service,
        backend: primary,
    })
}

/// The writes of a VIP swap, from the maps as they are (`live`): every service entry of `a`
/// written at the same port and protocol of `b` and the other way round, each in one update
/// (ids, tables, ACLs and backends move with their entry, so nothing is rebuilt), then the
/// entries left without a counterpart deleted; the two VIP entries exchanged before them.
/// Also the holds: each endpoint of the moved services keeps its reverse-service entry as it
/// is, marked shared ([`Live::holds`]), written first.
#[must_use]
pub fn swap(a: IpAddr, b: IpAddr, live: &Live) -> (Vec<(RevKey, RevService)>, Vec<Step>) {
    let other = |ip: IpAddr| if ip == a { b } else { a };
    // Each entry of either VIP: (its key, the key it moves to, the entry).
    let moved: Vec<(ServiceSpec, ServiceSpec, ServiceInfo)> = live
        .services
        .iter()
        .filter(|(s, _)| s.vip.ip() == a || s.vip.ip() == b)
        .map(|(s, i)| {
            let mut to = *s;
            to.vip.set_ip(other(s.vip.ip()));
            (*s, to, *i)
        })
        .collect();
    let mut holds = Vec::new();
    let mut steps = Vec::new();
    for (_, _, info) in &moved {
        for ep in endpoints_of(info.id, live) {
            if let Some(r) = live.revs.get(&ep)
                && r.service == info.id
            {
                let h = RevService {
                    flags: REV_F_SHARED,
                    ..*r
                };
                holds.push((ep, h));
                if h != *r {
                    steps.push(Step::PutRev(ep, h));
                }
            }
        }
    }
    for ip in [a, b] {
        match live.vips.get(&other(ip)) {
            Some(v) => steps.push(Step::PutVip(ip, *v)),
            None => steps.push(Step::DelVip(ip)),
        }
    }
    let targets: BTreeSet<ServiceSpec> = moved.iter().map(|(_, to, _)| *to).collect();
    steps.extend(
        moved
            .iter()
            .map(|(_, to, info)| Step::PutService(*to, *info)),
    );
    steps.extend(
        moved
            .iter()
            .filter(|(from, _, _)| !targets.contains(from))
            .map(|(from, _, _)| Step::DelService(*from)),
    );
    (holds, steps)
}

/// The writes that put the entries a swap changed back as they were (`before`, the live
/// entries of both VIPs then): a failed swap's rollback.
#[must_use]
pub fn unswap(
    (a, b): (IpAddr, IpAddr),
    before: &[(ServiceSpec, ServiceInfo)],
    vips: &[(IpAddr, Option<VipInfo>)],
    live: &Live,
) -> Vec<Step> {
    let mut steps: Vec<Step> = before
        .iter()
        .map(|(s, i)| Step::PutService(*s, *i))
        .collect();
    for s in live.services.keys() {
        if (s.vip.ip() == a || s.vip.ip() == b) && !before.iter().any(|(o, _)| o == s) {
            steps.push(Step::DelService(*s));
        }
    }
    for (ip, v) in vips {
        steps.push(match v {
            Some(v) => Step::PutVip(*ip, *v),
            None => Step::DelVip(*ip),
        });
    }
    steps
}

/// An endpoint's rules as the ACL compiler takes them.
#[must_use]
pub fn acl_rules(s: &ServiceState) -> Vec<acl::Rule> {
    s.acl
        .values()
        .map(|r| acl::Rule {
            order: r.order,
            action: r.action,
            prefix: map_prefix(r.prefix.0, r.prefix.1),
        })
        .collect()
}

/// The plan that makes one service's maps match the desired state: created, changed, or
/// deleted.
///
/// # Errors
/// An allocator has no room (the allocations made so far are given back).
pub fn service(spec: &ServiceSpec, i: Inputs<'_>, alloc: &mut Alloc) -> Result<Plan, Exhausted> {
    match (i.state.services.get(spec), i.live.services.get(spec)) {
        (None, None) => Ok(Plan::default()),
        (None, Some(info)) => Ok(delete(spec, info, i.live)),
        (Some(want), info) => {
            let mut fresh = Fresh::default();
            let r = build(spec, want, info, i, alloc, &mut fresh);
            if r.is_err() {
                fresh.free_unwritten(alloc);
            }
            r
        }
    }
}

/// Deleting a service: its entry first (new packets stop), then its backends, table and set.
fn delete(spec: &ServiceSpec, info: &ServiceInfo, live: &Live) -> Plan {
    let mut after = Vec::new();
    for id in live
        .backends_of(info.id)
        .into_iter()
        .flat_map(|m| m.values())
    {
        after.push(Step::RetireBackend(*id));
        after.push(Step::Purge(PurgeJob {
            backends: BTreeSet::from([*id]),
            ..PurgeJob::default()
        }));
    }
    if let Some((off, slots)) = live.table(spec) {
        after.push(Step::Defer(Deferred::Region(off, slots.len() as u32)));
    }
    if let Some((aid, set)) = live.acl_of(spec) {
        after.push(Step::Defer(Deferred::Acl(
            aid,
            set.iter().map(|e| e.prefix).collect(),
        )));
    }
    after.push(Step::FreeServiceId(info.id));
    Plan {
        switch: Some(Step::DelService(*spec)),
        after,
        ..Plan::default()
    }
}

fn build(
    spec: &ServiceSpec,
    want: &ServiceState,
    info: Option<&ServiceInfo>,
    i: Inputs<'_>,
    alloc: &mut Alloc,
    fresh: &mut Fresh,
) -> Result<Plan, Exhausted> {
    let mut prepare = Vec::new();
    let id = if let Some(info) = info {
        info.id
    } else {
        let id = alloc.service_id()?;
        fresh.service = Some(id);
        prepare.push(Step::ZeroServiceStats(id));
        id
    };
    let empty = BTreeMap::new();
    let live_backends = info
        .and_then(|inf| i.live.backends_of(inf.id))
        .unwrap_or(&empty);
    // New backends: entry first, so no slot ever points at an unwritten entry.
    let mut ids: BTreeMap<SocketAddr, BackendId> = BTreeMap::new();
    let l2 = want.settings.floating_ip == FloatingIp::L2;
    for addr in want.backends.keys() {
        let bid = if let Some(b) = live_backends.get(addr) {
            *b
        } else {
            let b = alloc.backend_id()?;
            fresh.backends.push(b);
            prepare.push(Step::ZeroBackendStats(b));
            prepare.push(Step::PutBackend(
                b,
                backend_entry(
                    id,
                    *addr,
                    spec.proto.number(),
                    i.hops.next_hop_for(addr.ip(), l2),
                ),
            ));
            b
        };
        ids.insert(*addr, bid);
    }

    let eligible: Vec<TableBackend> = i
        .health
        .eligible(spec, want)
        .into_iter()
        .map(|(a, weight)| TableBackend {
            id: ids[a],
            addr: addr::from_ip(a.ip()),
            port: a.port(),
            weight,
        })
        .collect();
    let table = match (eligible.first(), want.settings.table_size) {
        (None, _) => None,
        // A port forward: its one backend in a one-slot table (slot = hash % 1 = 0).
        (Some(only), 1) => Some(vec![only.id]),
        (Some(_), size) => Some(build_table(&eligible, size)),
    };
    let cur_table = i.live.table(spec);
    let table_changed = match (cur_table, &table) {
        (Some((_, cur)), Some(new)) => cur != new.as_slice(),
        (None, None) => false,
        _ => true,
    };
    let table_len = table.as_ref().map_or(0, |t| t.len() as u32);
    let table_off = match (table_changed, table) {
        (true, Some(slots)) => {
            let off = alloc.region(table_len)?;
            fresh.region = Some((off, table_len));
            prepare.push(Step::PutSlots(off, slots));
            off
        }
        (true, None) => 0,
        (false, _) => cur_table.map_or(0, |(o, _)| o),
    };

    // The endpoint's ACL, compiled to LPM entries; a change writes a whole new set under a new
    // id, switched with the table in the same service update (a double buffer again). In
    // prefix order, as `Live` keeps every set, so sets compare with `==`.
    let mut entries = acl::compile(&acl_rules(want));
    entries.sort_by_key(|e| e.prefix);
    let cur_acl = i.live.acl_of(spec);
    let acl_changed = match cur_acl {
        Some((_, cur)) => cur != entries.as_slice(),
        None => !entries.is_empty(),
    };
    let acl_id = if acl_changed && !entries.is_empty() {
        let aid = alloc.acl_set()?;
        fresh.acl = Some(aid);
        prepare.extend(entries.iter().map(|e| Step::PutAcl(aid, *e)));
        aid
    } else if acl_changed {
        0
    } else {
        cur_acl.map_or(0, |(aid, _)| aid)
    };

    let new_info = ServiceInfo {
        id,
        table_off,
        table_len,
        flags: (want.settings.distribution.mode() << SVC_DIST_SHIFT)
            | (want.settings.floating_ip.mode() << SVC_FIP_SHIFT)
            | if want.settings.internal.is_empty() {
                0
            } else {
                SVC_F_INTERNAL
            }
            | if want.settings.tcp_reset {
                SVC_F_TCP_RESET
            } else {
                0
            },
        acl_id,
    };
    let mut after = Vec::new();
    if table_changed && let Some((off, slots)) = cur_table {
        after.push(Step::Defer(Deferred::Region(off, slots.len() as u32)));
    }
    if acl_changed {
        if let Some((aid, set)) = cur_acl {
            after.push(Step::Defer(Deferred::Acl(
                aid,
                set.iter().map(|e| e.prefix).collect(),
            )));
        }
        // A rule change applies to established flows too: tracked flows from sources the new
        // rules deny are removed, so their next packet meets the ACL (and is dropped).
        if !entries.is_empty() {
            after.push(Step::Purge(PurgeJob {
                denied: vec![(id, entries)],
                ..PurgeJob::default()
            }));
        }
    }
    for (_, b) in live_backends
        .iter()
        .filter(|(a, _)| !want.backends.contains_key(*a))
    {
        after.push(Step::RetireBackend(*b));
        after.push(Step::Purge(PurgeJob {
            backends: BTreeSet::from([*b]),
            ..PurgeJob::default()
        }));
    }
    Ok(Plan {
        prepare,
        // The atomic switch to the new table and ACL set: one hash-map update swaps whole
        // tables, so every packet sees one complete table and one complete ACL.
        switch: (info != Some(&new_info)).then_some(Step::PutService(*spec, new_info)),
        after,
        fresh: std::mem::take(fresh),
    })
}

/// When a VIP's entry is planned: around a service's switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before the service's switch: the VIP entry and its source set already cover what the
    /// switch brings (a new service, new backends), so an internal VIP never serves a flow it
    /// has not admitted. `new_service` is the id of a service being created.
    Before { new_service: Option<u32> },
    /// After it: the entry drops what the switch retired (a deleted service, backends).
    After,
}

/// The plan that keeps `LB_VIPS4[ip]` (service count, flags, an internal VIP's source set) in
/// line with the services on that address.
///
/// # Errors
/// No free ACL set id for a changed source set.
pub fn vip(ip: IpAddr, phase: Phase, i: Inputs<'_>, alloc: &mut Alloc) -> Result<Plan, Exhausted> {
    let cur = i.live.vips.get(&ip);
    let live_specs: BTreeSet<&ServiceSpec> = i.live.services_on(ip).map(|(s, _)| s).collect();
    let desired = i.state.services.range(vip_range(ip));
    let n = match phase {
        Phase::Before { .. } => {
            let mut all = live_specs.clone();
            all.extend(desired.clone().map(|(s, _)| s));
            all.len()
        }
        Phase::After => live_specs.len(),
    };
    let first = desired.clone().next();
    if n == 0 {
        let Some(cur) = cur else {
            return Ok(Plan::default());
        };
        let mut after = Vec::new();
        if cur.ilb_id != 0 {
            after.push(defer_set(i.live, cur.ilb_id));
        }
        return Ok(Plan {
            switch: Some(Step::DelVip(ip)),
            after,
            ..Plan::default()
        });
    }
    // The VIP-level settings come from its desired services (they agree); while every one of
    // them is being deleted, the entry stays as it is until the last is gone.
    let Some((_, st)) = first else {
        return Ok(Plan::default());
    };
    let mut flags = 0;
    if !st.settings.icmp_echo {
        flags |= VIP_F_NO_ECHO;
    }
    if st.settings.hairpin == Hairpin::Snat {
        flags |= VIP_F_HAIRPIN_SNAT;
    }
    // HA ports: the catch-all's lookup is on from before its entry is written until after it
    // is gone (a lookup that finds nothing is a counted drop, as without the flag).
    let ha = |s: &&ServiceSpec| s.proto == crate::spec::Proto::Any;
    let has_ha = live_specs.iter().any(ha)
        || (matches!(phase, Phase::Before { .. }) && desired.clone().any(|(s, _)| ha(&s)));
    if has_ha {
        flags |= VIP_F_HA_PORTS;
    }
    let mut service_ids: Vec<u32> = i.live.services_on(ip).map(|(_, inf)| inf.id).collect();
    if let Phase::Before {
        new_service: Some(id),
    } = phase
    {
        service_ids.push(id);
    }
    let entries = ilb_set(&st.settings.internal, &service_ids, i.live);
    let cur_set = cur.map(|c| c.ilb_id).filter(|id| *id != 0);
    let mut fresh = Fresh::default();
    let mut prepare = Vec::new();
    let ilb_id = match cur_set {
        Some(id) if i.live.acl.get(&id).is_some_and(|s| *s == entries) => id,
        _ if entries.is_empty() => 0,
        _ => {
            let id = alloc
                .acl_set()
                .map_err(|_| Exhausted("no free ACL set id for the internal VIP".into()))?;
            fresh.acl = Some(id);
            prepare.extend(entries.iter().map(|e| Step::PutAcl(id, *e)));
            id
        }
    };
    let info = VipInfo {
        services: n as u32,
        flags,
        ilb_id,
    };
    let mut after = Vec::new();
    if let Some(old) = cur_set.filter(|o| *o != ilb_id) {
        after.push(defer_set(i.live, old));
    }
    Ok(Plan {
        prepare,
        switch: (cur != Some(&info)).then_some(Step::PutVip(ip, info)),
        after,
        fresh,
    })
}

fn defer_set(live: &Live, id: u32) -> Step {
    let prefixes = live
        .acl
        .get(&id)
        .map(|s| s.iter().map(|e| e.prefix).collect())
        .unwrap_or_default();
    Step::Defer(Deferred::Acl(id, prefixes))
}

/// An internal VIP's source set: its internal prefixes permitted, every backend host of the
/// VIP (any service) marked hairpin as a host entry (longer than any prefix, so it wins the
/// LPM), everything else denied; in prefix order. Empty for a public VIP.
fn ilb_set(internal: &[(IpAddr, u8)], service_ids: &[u32], live: &Live) -> Vec<acl::Entry> {
    if internal.is_empty() {
        return Vec::new();
    }
    let mut entries: Vec<acl::Entry> = internal
        .iter()
        .map(|(p, l)| acl::Entry {
            prefix: map_prefix(*p, *l),
            action: acl::Action::Permit,
            rule: None,
        })
        .collect();
    // Each host's entry carries a backend id of that address (the lowest, if it backs several
    // services): hairpin SNAT sends the replies through its next hop.
    let mut hosts: BTreeMap<IpAddr, BackendId> = BTreeMap::new();
    for sid in service_ids {
        for (b, id) in live.backends_of(*sid).into_iter().flatten() {
            let e = hosts.entry(b.ip()).or_insert(*id);
            *e = (*e).min(*id);
        }
    }
    for (h, id) in hosts {
        let full = if h.is_ipv4() { 32 } else { 128 };
        entries.push(acl::Entry {
            prefix: map_prefix(h, full),
            action: acl::Action::Hairpin,
            rule: Some(id),
        });
    }
    // The VIP's family's whole space (its prefixes are all of its family): see
    // `acl::Prefix::family_space`.
    let space = entries[0].prefix.family_space();
    entries.push(acl::Entry {
        prefix: space,
        action: acl::Action::Deny,
        rule: None,
    });
    // A host that is also an internal /32: hairpin wins. Sorting puts it before the permit of
    // the same prefix, and dedup keeps the first of equal prefixes.
    entries.sort_by_key(|e| (e.prefix, e.action != acl::Action::Hairpin));
    entries.dedup_by_key(|e| e.prefix);
    entries
}

/// The writes that make the PIP maps match the desired PIPs (both directions, next hops
/// included): removals first, so a PIP moved to another instance never maps both.
#[must_use]
pub fn pips(i: Inputs<'_>) -> Vec<Step> {
    let mut steps: Vec<Step> = i
        .live
        .pips
        .iter()
        .filter(|(p, (d, _))| i.state.pips.get(p) != Some(d))
        .map(|(p, (d, _))| Step::DelPip { pip: *p, dip: *d })
        .collect();
    steps.sort_by_key(|s| match s {
        Step::DelPip { pip, .. } => *pip,
        _ => IpAddr::from([0, 0, 0, 0]),
    });
    for (p, d) in &i.state.pips {
        let nh = i.hops.next_hop(*d);
        if i.live.pips.get(p) != Some(&(*d, nh)) {
            steps.push(Step::PutPip {
                pip: *p,
                dip: *d,
                nh,
            });
        }
    }
    steps
}

/// The writes that make `LB_ROUTES4` hold exactly `want`.
#[must_use]
pub fn routes(want: &[(u32, Addr, NextHop)], live: &Live) -> Vec<Step> {
    let want_map: BTreeMap<(u32, Addr), NextHop> =
        want.iter().map(|(l, a, nh)| ((*l, *a), *nh)).collect();
    let mut steps: Vec<Step> = want_map
        .iter()
        .filter(|(k, nh)| live.routes.get(k) != Some(nh))
        .map(|((l, a), nh)| Step::PutRoute(*l, *a, *nh))
        .collect();
    let mut stale: Vec<&(u32, Addr)> = live
        .routes
        .keys()
        .filter(|k| !want_map.contains_key(k))
        .collect();
    stale.sort();
    steps.extend(stale.into_iter().map(|(l, a)| Step::DelRoute(*l, *a)));
    steps
}

/// The writes that make `LB_LOCAL4` and `LB_LOCAL6` hold the host's own addresses `want`
/// (map form): at most `MAX_LOCALS` of each family, the lowest (the caller reports the rest).
#[must_use]
pub fn locals(want: &[Addr], live: &Live) -> Vec<Step> {
    let all: BTreeSet<Addr> = want.iter().copied().collect();
    let family = |v6: bool| {
        all.iter()
            .copied()
            .filter(move |a| addr::as_v6(a).is_some() == v6)
            .take(lb_common::consts::MAX_LOCALS as usize)
    };
    let want: BTreeSet<Addr> = family(false).chain(family(true)).collect();
    let mut steps: Vec<Step> = want
        .iter()
        .filter(|a| !live.locals.contains(*a))
        .map(|a| Step::PutLocal(*a))
        .collect();
    steps.extend(
        live.locals
            .iter()
            .filter(|a| !want.contains(*a))
            .map(|a| Step::DelLocal(*a)),
    );
    steps
}

/// The writes that give every live backend entry of an address in `addrs` the next hop the book
/// has for it now (several services can share an address; each entry is checked).
#[must_use]
pub fn next_hops(addrs: &BTreeSet<IpAddr>, live: &Live, hops: &Hops) -> Vec<Step> {
    let mut steps: Vec<(BackendId, Backend)> = live
        .backends
        .iter()
        .filter_map(|(id, b)| {
            let ip = addr::to_ip(&b.addr);
            let l2 = live
                .spec_of(b.service)
                .and_then(|s| live.services.get(s))
                .is_some_and(|i| i.floating_ip() == lb_common::encap::mode::L2);
            let (nh, mtu) = hops.next_hop_for(ip, l2);
            (addrs.contains(&ip) && (b.nh, b.mtu) != (nh, mtu))
                .then_some((*id, Backend { nh, mtu, ..*b }))
        })
        .collect();
    steps.sort_by_key(|(id, _)| *id);
    steps
        .into_iter()
        .map(|(id, b)| Step::PutBackend(id, b))
        .collect()
}

/// Points a service at no table (new flows are dropped, counted) and releases its region after
/// the grace period: the start-up fallback for a bigger table that fits nowhere else.
#[must_use]
pub fn drop_table(spec: &ServiceSpec, live: &Live) -> Plan {
    let (Some(info), Some((off, slots))) = (live.services.get(spec), live.table(spec)) else {
        return Plan::default();
    };
    Plan {
        switch: Some(Step::PutService(
            *spec,
            ServiceInfo {
                table_off: 0,
                table_len: 0,
                ..*info
            },
        )),
        after: vec![Step::Defer(Deferred::Region(off, slots.len() as u32))],
        ..Plan::default()
    }
}
