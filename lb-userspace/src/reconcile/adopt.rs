//! Adoption after a restart: read back what an earlier agent left in the pinned maps, take it
//! over as if this agent had written it, and seed health from the live tables.
//!
//! The maps are pinned, so an agent started after a crash, a `kill -9` or an upgrade finds the
//! previous agent's services, tables, backend entries, ACL sets and PIPs still serving traffic.
//! [`adopt`] reads them into [`Live`] and reserves their service ids, backend ids (each entry
//! names its service), table regions and ACL sets in the allocators. A probed backend found in
//! its service's live table starts healthy. Then the ordinary sync runs: where the desired state
//! is what is live, it writes nothing; where it differs, the usual double-buffered swap applies,
//! and what nothing wants any more is retired after the grace period. No serving entry is
//! cleared first, so no packet ever meets a missing service, and conntrack entries keep pointing
//! at the backend ids they name.
//!
//! Only leftovers that no consistent agent leaves are removed at once: invalid service keys,
//! half PIP pairs, and flows naming a backend id no live entry has.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::{
    acl,
    addr::{self, Addr},
    maps::{Backend, BackendId, Counters, ServiceKey},
};

use super::{alloc::Alloc, health::HealthBook, live::Live};
use crate::{
    dataplane::{FlowPurge, MapOps, PurgeJob},
    error::ChangeError,
    spec::ServiceSpec,
    state::State,
};

/// What adoption found that the desired state may not want; handled once every service is
/// synced.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Every live VIP address; those left with no service are deleted.
    pub vips: Vec<IpAddr>,
    /// Active backend entries no adopted service claims: retired.
    pub backends: Vec<BackendId>,
    /// ACL sets nothing points at: deleted after the grace period.
    pub acl_sets: Vec<(u32, Vec<acl::Prefix>)>,
}

/// Reads the pinned maps into a [`Live`], reserving what they hold (module doc). Writes only to
/// remove what cannot be adopted: invalid service keys, inconsistent PIP halves, and flows that
/// name a backend id no live entry has (one walk of conntrack, before any id is handed out).
///
/// # Errors
/// A map read or one of those removals fails.
pub fn adopt<M: MapOps + FlowPurge>(
    maps: &mut M,
    state: &State,
    alloc: &mut Alloc,
    health: &mut HealthBook,
) -> Result<(Live, Leftovers), ChangeError> {
    let found = maps.read_live()?;
    let mut live = Live::default();
    let mut left = Leftovers::default();
    let mut sets: BTreeMap<u32, Vec<acl::Entry>> = BTreeMap::new();
    let retired: HashMap<u32, Counters> = found.retired.iter().copied().collect();
    // As written: the next resolution changes only what differs.
    live.locals = found.locals.iter().copied().collect();
    for (aid, e) in found.acl {
        sets.entry(aid).or_default().push(e);
    }
    for v in sets.values_mut() {
        v.sort_by_key(|e| e.prefix);
    }
    let mut by_service: HashMap<u32, Vec<(BackendId, Backend)>> = HashMap::new();
    for (id, b) in found.backends {
        if alloc.backends.reserve(id) {
            by_service.entry(b.service).or_default().push((id, b));
            // Indexed by service only once a live service claims it (below).
            live.reserve_backend(id, b);
        }
    }
    // Every other id is free to hand out now, but tracked flows may still name one: the
    // previous agent may have died while purging the flows of a backend it had just marked
    // inactive. Such a flow would follow the id to whatever backend gets it next, so flows
    // naming an inactive id are removed first (their next packet takes a fresh pick, as it
    // would have anyway).
    let stale = maps.purge(&PurgeJob {
        unless_active: Some(live.backends.keys().copied().collect()),
        ..PurgeJob::default()
    })?;
    if stale > 0 {
        tracing::info!(
            flows = stale,
            "removed tracked flows of backend ids no longer in use"
        );
    }
    let mut claimed: HashSet<BackendId> = HashSet::new();
    let mut bad_keys: Vec<ServiceKey> = Vec::new();
    for (key, info) in found.services {
        let Some(spec) = ServiceSpec::from_key(&key) else {
            tracing::warn!(?key, "a live service entry names no service; removing it");
            bad_keys.push(key);
            continue;
        };
        if !alloc.services.reserve(info.id) {
            tracing::warn!(service = %spec, id = info.id, "a live service entry has an id that is out of range or taken; replacing it");
            bad_keys.push(key);
            continue;
        }
        let mut info = info;
        if info.table_len != 0 {
            if alloc.ring.reserve(info.table_off, info.table_len) {
                live.regions.insert(
                    info.table_off,
                    maps.read_slots(info.table_off, info.table_len)?,
                );
            } else {
                tracing::warn!(service = %spec, off = info.table_off, len = info.table_len, "a live table region overlaps another or lies outside the ring; replacing it");
                info.table_off = 0;
                info.table_len = 0;
            }
        }
        match sets.get(&info.acl_id) {
            Some(e) if info.acl_id != 0 && alloc.acl_sets.reserve(info.acl_id) => {
                live.acl.insert(info.acl_id, e.clone());
            }
            _ => info.acl_id = 0,
        }
        // One entry per address (an earlier agent keeps them unique; a duplicate is unclaimed
        // and retired).
        let mut seen = HashSet::new();
        for (bid, b) in by_service.get(&info.id).into_iter().flatten() {
            if seen.insert(super::live::backend_addr(b)) {
                claimed.insert(*bid);
                live.put_backend(*bid, *b);
            }
        }
        if let Some(c) = retired.get(&info.id) {
            live.retired.insert(info.id, *c);
        }
        // Health from the live table: a probed backend in it was healthy a moment ago
        // (starting it Unknown would empty the table until the first probe answers).
        if let Some(svc) = state.services.get(&spec)
            && svc.settings.probe.is_some()
            && let Some(slots) = live
                .regions
                .get(&info.table_off)
                .filter(|_| info.table_len > 0)
        {
            let in_table: HashSet<&BackendId> = slots.iter().collect();
            for (bid, b) in by_service.get(&info.id).into_iter().flatten() {
                if in_table.contains(bid) {
                    health.seed_up(spec, super::live::backend_addr(b), svc.settings.thresholds);
                }
            }
        }
        // Recorded as found (a replaced region or set shows as none, so the sync rewrites it).
        live.put_service(spec, info);
    }
    for k in &bad_keys {
        maps.del_service(k)?;
    }
    for (k, v) in found.vips {
        let ip = addr::to_ip(&k.vip);
        left.vips.push(ip);
        let mut v = v;
        match sets.get(&v.ilb_id) {
            Some(e) if v.ilb_id != 0 && alloc.acl_sets.reserve(v.ilb_id) => {
                live.acl.insert(v.ilb_id, e.clone());
            }
            _ => v.ilb_id = 0,
        }
        live.put_vip(ip, v);
    }
    for (aid, entries) in sets {
        // Sets nothing adopted points at (reserved above otherwise): deleted after the grace
        // period, like any replaced set.
        if alloc.acl_sets.reserve(aid) {
            left.acl_sets
                .push((aid, entries.iter().map(|e| e.prefix).collect()));
            live.acl.insert(aid, entries);
        }
    }
    left.backends = live
        .backends
        .keys()
        .filter(|id| !claimed.contains(id))
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    live.revs = found.revs.iter().copied().collect();
    live.filter = found.ours.iter().copied().collect();
    // PIPs: the pairs whose two halves agree; any other half is deleted (and rewritten by the
    // sync if it is still wanted). `del_pip` removes both keys of the half's pair; the other
    // key cannot belong to a consistent pair, since a crash between the two writes of
    // `put_pip` or `del_pip` leaves only a lone reverse entry, and PIPs map 1:1.
    let fwd: HashMap<Addr, Addr> = found.pips.iter().map(|(p, d, _)| (*p, *d)).collect();
    let rev: HashMap<Addr, Addr> = found.pip_revs.iter().copied().collect();
    let mut touched = HashSet::new();
    let halves = found
        .pips
        .iter()
        .map(|(p, d, _)| (*p, *d))
        .chain(found.pip_revs.iter().map(|(d, p)| (*p, *d)));
    for (p, d) in halves {
        if fwd.get(&p) != Some(&d) || rev.get(&d) != Some(&p) {
            maps.del_pip(&p, &d)?;
            touched.insert(p);
            touched.insert(d);
        }
    }
    for (p, d, nh) in found.pips {
        if !touched.contains(&p) && !touched.contains(&d) {
            live.put_pip(addr::to_ip(&p), addr::to_ip(&d), nh);
        }
    }
    // Outbound entries as written: the sync rewrites what the desired rules place otherwise,
    // and the rule ids come back from the frontends (`OutboundBook::adopt`).
    for (dip, e) in found.outbound {
        live.put_outbound(dip, e);
    }
    for (a, f) in found.out_fronts {
        live.put_out_front(a, f);
    }
    live.out_blocks = found.out_blocks.into_iter().collect();
    live.out_inside = found.out_inside.into_iter().collect();
    // Client routes as written: the refresh then changes only what differs, and removes routes
    // the kernel no longer has.
    live.routes = found
        .routes
        .iter()
        .map(|(l, a, nh)| ((*l, *a), *nh))
        .collect();
    tracing::info!(
        services = live.services.len(),
        backends = live.backends.len(),
        pips = live.pips.len(),
        "adopted the live maps"
    );
    Ok((live, left))
}
