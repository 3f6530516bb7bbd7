//! The reconciler: the one task that writes the maps. It owns the desired [`State`] and what
//! has been applied, takes API calls and timer ticks as events, and makes the maps match.
//!
//! # Map write ordering (why a packet never sees a half-made service)
//! * A backend's entry (`LB_BACKENDS[id]`) is written before any table slot points at it.
//! * A service's table is written to a fresh region of `LB_RING`, then the service entry is
//!   replaced in one `LB_SERVICES` update, which is atomic for a hash map: a packet sees either
//!   the old region or the complete new one (a double buffer, not delta writes, so no slot is
//!   ever briefly wrong and no ordering among slot writes matters).
//! * The old region, and the ids of removed backends, are only reused after [`GRACE`]: a packet
//!   that read the old service entry finishes in microseconds, far within it.
//! * A removed backend's entry is marked inactive after the table stops pointing at it, and its
//!   conntrack entries are purged; a packet of such a flow that races the purge finds the entry
//!   inactive and is re-balanced (the fast path's "backend gone → fresh pick" rule).
//!
//! # A new agent adopts the maps it finds (why a restart drops nothing)
//! The maps are pinned, so an agent started after a crash, a `kill -9` or an upgrade finds the
//! previous agent's services, tables, backend entries, ACL sets and PIPs still serving traffic.
//! [`Reconciler::start`] reads them back and takes them over as if it had written them: the
//! same service ids, backend ids (each entry names its service), table regions and ACL sets,
//! reserved in the allocators. Health is seeded from the live tables (a backend in its
//! service's table starts up). Then the ordinary per-service sync runs: where the desired state
//! is what is live, it writes back the same values; where it differs, the usual
//! double-buffered swap applies, and what nothing wants any more is retired after the grace
//! period. No serving entry is cleared first, so no packet ever meets a missing service, and
//! conntrack entries keep pointing at the backend ids they name. (Only leftovers that no
//! consistent agent leaves are removed at once: invalid service entries, half PIP pairs, and
//! flows naming a backend id no live entry has.)

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::{
    acl,
    addr::{self, Addr},
    consts::{MAX_BACKENDS, MAX_SERVICES},
    health::{Health, Thresholds, Tracker},
    maglev::{TableBackend, build_table},
    maps::{BACKEND_F_ACTIVE, Backend, BackendId, NextHop, ServiceInfo, VipInfo, VipKey},
    verdict::ALL_REASONS,
};

use crate::{
    api::{
        AclRuleView, AclView, BackendView, CountersView, NextHopView, PipView, ProbeView, Query,
        Request, Response, ServiceStatus, ServiceView, StatsView, StatusView,
    },
    dataplane::MapOps,
    error::{ChangeError, MapOpError},
    probe::{ProbeReport, ProbeTarget},
    spec::{Established, ProbeSpec, Proto, ServiceSpec, WhenAllDown, format_duration, map_prefix},
    state::{Change, Command, Kind, ServiceState, State},
};

/// How long a freed table region or backend id stays unused before it is reused.
pub const GRACE: Duration = Duration::from_millis(100);

/// Resolves next hops (the real one asks the kernel through netlink; tests use a fake).
pub trait Resolver {
    /// The next hop towards a backend, `None` while unresolved.
    fn next_hop(&mut self, ip: IpAddr) -> Option<NextHop>;
    /// Client-facing next hops: (prefix length in map form, prefix, next hop).
    fn client_routes(&mut self) -> Vec<(u32, Addr, NextHop)>;
}

/// Static facts about the running agent, for `lb status`.
#[derive(Clone, Debug, Default)]
pub struct AgentInfo {
    pub interfaces: Vec<String>,
    pub xdp_mode: String,
    pub pin_dir: Option<String>,
    pub ring_slots: u32,
    pub conntrack_flows: u32,
}

/// A service as it is in the maps.
#[derive(Debug)]
struct Applied {
    id: u32,
    /// The live table region and its contents (`None`: no eligible backend, `table_len` 0).
    table: Option<(u32, Vec<BackendId>)>,
    backends: BTreeMap<SocketAddr, BackendId>,
    /// The live ACL set id and its compiled entries, in prefix order (`None`: no rules,
    /// everyone is permitted).
    acl: Option<(u32, Vec<acl::Entry>)>,
}

/// First-fit allocator of `LB_RING` regions.
#[derive(Debug)]
struct Ring {
    size: u32,
    /// Free (offset, length) ranges, sorted and coalesced.
    free: Vec<(u32, u32)>,
}

impl Ring {
    fn new(size: u32) -> Self {
        Self {
            size,
            free: vec![(0, size)],
        }
    }

    fn alloc(&mut self, len: u32) -> Option<u32> {
        let i = self.free.iter().position(|&(_, l)| l >= len)?;
        let (off, l) = self.free[i];
        if l == len {
            self.free.remove(i);
        } else {
            self.free[i] = (off + len, l - len);
        }
        Some(off)
    }

    /// Marks `off..off + len` used, if it is wholly free (a live table found at start).
    fn reserve(&mut self, off: u32, len: u32) -> bool {
        let Some(end) = off.checked_add(len) else {
            return false;
        };
        let Some(i) = self
            .free
            .iter()
            .position(|&(o, l)| o <= off && end <= o + l)
        else {
            return false;
        };
        let (o, l) = self.free.remove(i);
        let mut at = i;
        for piece in [(o, off - o), (end, o + l - end)] {
            if piece.1 > 0 {
                self.free.insert(at, piece);
                at += 1;
            }
        }
        true
    }

    fn release(&mut self, off: u32, len: u32) {
        let i = self.free.partition_point(|&(o, _)| o < off);
        self.free.insert(i, (off, len));
        // Coalesce with the neighbours.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    fn used(&self) -> u64 {
        u64::from(self.size) - self.free.iter().map(|&(_, l)| u64::from(l)).sum::<u64>()
    }
}

/// Lowest-free-first id allocator over `lo..hi`.
#[derive(Debug)]
struct Ids {
    lo: u32,
    hi: u32,
    /// Ids in use.
    used: std::collections::BTreeSet<u32>,
    /// Ids below `next` that were released: reused first, lowest first.
    released: std::collections::BTreeSet<u32>,
    /// The lowest id never handed out.
    next: u32,
}

impl Ids {
    fn new(lo: u32, hi: u32) -> Self {
        Self {
            lo,
            hi,
            used: std::collections::BTreeSet::new(),
            released: std::collections::BTreeSet::new(),
            next: lo,
        }
    }

    /// The lowest free id, in O(log n) (a scan of the used set made provisioning 10k services
    /// quadratic).
    fn alloc(&mut self) -> Option<u32> {
        let id = match self.released.pop_first() {
            Some(id) => id,
            None if self.next < self.hi => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.used.insert(id);
        Some(id)
    }

    /// Marks `id` used (an id found live at start); `false` if it is out of range or taken.
    fn reserve(&mut self, id: u32) -> bool {
        if id < self.lo || id >= self.hi || self.used.contains(&id) {
            return false;
        }
        if id >= self.next {
            self.released.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.released.remove(&id);
        }
        self.used.insert(id);
        true
    }

    /// Releases an id for reuse.
    fn free(&mut self, id: u32) {
        if self.used.remove(&id) {
            self.released.insert(id);
        }
    }

    fn free_count(&self) -> usize {
        (self.hi - self.lo) as usize - self.used.len()
    }
}

/// Every service of one VIP address, as a range of the (address, port, protocol) order:
/// per-VIP work looks at its own services, not all of them (10k services made it quadratic).
fn vip_range(ip: IpAddr) -> std::ops::RangeInclusive<ServiceSpec> {
    let at = |port, proto| ServiceSpec {
        vip: SocketAddr::new(ip, port),
        proto,
    };
    at(0, Proto::Tcp)..=at(u16::MAX, Proto::Udp)
}

/// One backend's probe history and last result.
#[derive(Debug)]
struct BackendHealth {
    tracker: Tracker,
    last: Option<(bool, String, Instant)>,
}

impl BackendHealth {
    fn new(t: Thresholds) -> Self {
        Self {
            tracker: Tracker::new(t),
            last: None,
        }
    }
}

/// What [`Reconciler::adopt`] found that the desired state may not want: handled by
/// [`Reconciler::start`] once every service is synced.
#[derive(Debug, Default)]
struct Leftovers {
    /// Service keys that cannot be adopted (no service spec names them, or their id is taken):
    /// deleted before anything else.
    services: Vec<lb_common::maps::ServiceKey>,
    /// Every live VIP address; the ones left with no service are deleted.
    vips: Vec<IpAddr>,
    /// Active backend entries no adopted service claims: retired.
    backends: Vec<BackendId>,
    /// ACL sets nothing points at: deleted after the grace period.
    acl_sets: Vec<(u32, Vec<acl::Prefix>)>,
}

enum Deferred {
    Region(u32, u32),
    Backend(BackendId),
    /// An ACL set no service points at any more: its entries and id.
    Acl(u32, Vec<acl::Prefix>),
}

/// What handling a request did: the answer, and whether the desired state changed (the agent
/// saves the state file only then).
#[derive(Debug)]
pub struct Outcome {
    pub response: Response,
    pub state_changed: bool,
}

/// The single writer of the maps.
pub struct Reconciler<M: MapOps, R: Resolver> {
    maps: M,
    resolver: R,
    info: AgentInfo,
    state: State,
    applied: BTreeMap<ServiceSpec, Applied>,
    ring: Ring,
    service_ids: Ids,
    backend_ids: Ids,
    acl_ids: Ids,
    deferred: Vec<(Instant, Deferred)>,
    /// Next hops found by the last refresh, by address.
    next_hops: HashMap<IpAddr, NextHop>,
    /// PIPs as written: PIP → (instance, next hop).
    applied_pips: HashMap<IpAddr, (IpAddr, NextHop)>,
    /// Internal VIPs' source sets in `LB_ACL`: set id and entries, by VIP address.
    ilb: HashMap<IpAddr, (u32, Vec<acl::Entry>)>,
    /// Probe history per (service, backend).
    health: HashMap<(ServiceSpec, SocketAddr), BackendHealth>,
    /// The clock the health trackers run on.
    started: Instant,
    /// The next hop each live backend entry carries in `LB_BACKENDS` (what status reports).
    written: HashMap<BackendId, NextHop>,
    routes: HashMap<(u32, Addr), NextHop>,
}

impl<M: MapOps, R: Resolver> Reconciler<M, R> {
    /// A reconciler over maps that may hold entries from an earlier agent: services and VIPs it
    /// does not know are removed by [`Self::start`].
    pub fn new(maps: M, resolver: R, info: AgentInfo) -> Self {
        Self {
            ring: Ring::new(info.ring_slots),
            maps,
            resolver,
            info,
            state: State::default(),
            applied: BTreeMap::new(),
            service_ids: Ids::new(0, MAX_SERVICES),
            backend_ids: Ids::new(1, MAX_BACKENDS),
            acl_ids: Ids::new(1, 2 * MAX_SERVICES + 1),
            deferred: Vec::new(),
            next_hops: HashMap::new(),
            written: HashMap::new(),
            health: HashMap::new(),
            ilb: HashMap::new(),
            applied_pips: HashMap::new(),
            started: Instant::now(),
            routes: HashMap::new(),
        }
    }

    /// The maps (tests read counters through them).
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Applies the initial desired state over whatever a previous agent left in the pinned
    /// maps: adopts it (module doc), then syncs every service, live or desired. No serving
    /// entry is cleared first; entries nothing wants are removed the usual way.
    ///
    /// # Errors
    /// A capacity limit of the desired state (checked before anything is written), a new
    /// table that fits nowhere even in place (see below), or a map failure.
    pub fn start(&mut self, state: State) -> Result<(), ChangeError> {
        self.check_capacity(&state, None)?;
        self.state = state;
        let left = self.adopt()?;
        for k in &left.services {
            self.maps.del_service(k)?;
        }
        // Services going away first: their service ids are free at once, their regions and
        // backend ids after the grace period (which `alloc_region` waits out when short).
        let (mut specs, keep): (Vec<ServiceSpec>, Vec<ServiceSpec>) = self
            .applied
            .keys()
            .copied()
            .partition(|s| !self.state.services.contains_key(s));
        specs.extend(keep);
        specs.extend(
            self.state
                .services
                .keys()
                .filter(|s| !self.applied.contains_key(*s)),
        );
        for s in specs {
            match self.sync_service(&s) {
                // The new table does not fit next to the live ones (a config edited while no
                // agent ran, with bigger tables and a nearly full ring): swap this one in
                // place. Its service entry first points at no table, so new flows to it are
                // dropped (counted as `drop_no_backend`) until the new table is written;
                // established flows keep their backends through conntrack.
                Err(ChangeError::Capacity(why))
                    if self.applied.get(&s).is_some_and(|a| a.table.is_some()) =>
                {
                    tracing::warn!(service = %s, %why, "no room for the new table next to the live one; replacing it in place (new flows to this service are dropped meanwhile)");
                    self.drop_table(&s)?;
                    self.release_deferred(true);
                    self.sync_service(&s)?;
                }
                r => r?,
            }
        }
        // A VIP with a service was synced with it; only the entries of addresses left with
        // none remain (sync_vip deletes them).
        for ip in left.vips {
            if self.applied.range(vip_range(ip)).next().is_none() {
                self.sync_vip(ip)?;
            }
        }
        for id in left.backends {
            self.retire_backend(id)?;
        }
        for (aid, prefixes) in left.acl_sets {
            self.defer(Deferred::Acl(aid, prefixes));
        }
        self.sync_pips()?;
        self.refresh_routes()?;
        Ok(())
    }

    /// Takes over what the pinned maps hold (module doc): every live service whose key names
    /// a service, with its id, table, backend entries and ACL set; internal VIPs' source
    /// sets; consistent PIP pairs; client routes. Backends in a live table of a probed service start healthy.
    /// Only reads and reserves, except for inconsistent PIP halves (deleted at once: a crash
    /// between the two writes of a PIP leaves one).
    fn adopt(&mut self) -> Result<Leftovers, ChangeError> {
        let live = self.maps.read_live()?;
        let mut left = Leftovers::default();
        let mut sets: BTreeMap<u32, Vec<acl::Entry>> = BTreeMap::new();
        for (aid, e) in live.acl {
            sets.entry(aid).or_default().push(e);
        }
        for v in sets.values_mut() {
            v.sort_by_key(|e| e.prefix);
        }
        let mut by_service: HashMap<u32, Vec<(BackendId, Backend)>> = HashMap::new();
        let mut unclaimed = std::collections::BTreeSet::new();
        for (id, b) in live.backends {
            if self.backend_ids.reserve(id) {
                by_service.entry(b.service).or_default().push((id, b));
                unclaimed.insert(id);
            }
        }
        // Every other id is free to hand out now, but tracked flows may still name one: the
        // previous agent may have died while purging the flows of a backend it had just
        // marked inactive. Such a flow would follow the id to whatever backend gets it next,
        // so flows naming an inactive id are removed first (one walk of the conntrack map;
        // their next packet takes a fresh pick, as it would have anyway).
        let active = unclaimed.clone();
        let stale = self.maps.purge_stale(&|id| active.contains(&id))?;
        if stale > 0 {
            tracing::info!(
                flows = stale,
                "removed tracked flows of backend ids no longer in use"
            );
        }
        for (key, info) in live.services {
            let Some(spec) = ServiceSpec::from_key(&key) else {
                tracing::warn!(?key, "a live service entry names no service; removing it");
                left.services.push(key);
                continue;
            };
            if !self.service_ids.reserve(info.id) {
                tracing::warn!(service = %spec, id = info.id, "a live service entry has an id that is out of range or taken; replacing it");
                left.services.push(key);
                continue;
            }
            let mut backends = BTreeMap::new();
            for (bid, b) in by_service.get(&info.id).into_iter().flatten() {
                let a = SocketAddr::new(addr::to_ip(&b.addr), u16::from_be_bytes(b.port));
                if let std::collections::btree_map::Entry::Vacant(v) = backends.entry(a) {
                    v.insert(*bid);
                    unclaimed.remove(bid);
                    self.written.insert(*bid, b.nh);
                }
            }
            let table = if info.table_len == 0 {
                None
            } else if self.ring.reserve(info.table_off, info.table_len) {
                Some((
                    info.table_off,
                    self.maps.read_slots(info.table_off, info.table_len)?,
                ))
            } else {
                tracing::warn!(service = %spec, off = info.table_off, len = info.table_len, "a live table region overlaps another or lies outside the ring; replacing it");
                None
            };
            let acl = match sets.get(&info.acl_id) {
                Some(e) if info.acl_id != 0 && self.acl_ids.reserve(info.acl_id) => {
                    Some((info.acl_id, e.clone()))
                }
                _ => None,
            };
            // Health from the live table: a probed backend in it was healthy a moment ago
            // (starting it Unknown would empty the table until the first probe answers).
            if let (Some(svc), Some((_, slots))) = (self.state.services.get(&spec), &table)
                && svc.settings.probe.is_some()
            {
                let in_table: std::collections::HashSet<&BackendId> = slots.iter().collect();
                for (a, bid) in &backends {
                    if in_table.contains(bid) {
                        self.health.insert(
                            (spec, *a),
                            BackendHealth {
                                tracker: Tracker::seeded_up(svc.settings.thresholds),
                                last: None,
                            },
                        );
                    }
                }
            }
            self.applied.insert(
                spec,
                Applied {
                    id: info.id,
                    table,
                    backends,
                    acl,
                },
            );
        }
        for (k, v) in live.vips {
            let ip = addr::to_ip(&k.vip);
            left.vips.push(ip);
            if let Some(e) = sets.get(&v.ilb_id)
                && v.ilb_id != 0
                && self.acl_ids.reserve(v.ilb_id)
            {
                self.ilb.insert(ip, (v.ilb_id, e.clone()));
            }
        }
        for (aid, entries) in sets {
            // Sets nothing adopted points at (reserved above otherwise): deleted after the grace
            // period, like any replaced set.
            if self.acl_ids.reserve(aid) {
                left.acl_sets
                    .push((aid, entries.iter().map(|e| e.prefix).collect()));
            }
        }
        left.backends = unclaimed.into_iter().collect();
        // PIPs: the pairs whose two halves agree; any other half is deleted (and rewritten by
        // the sync if it is still wanted). `del_pip` removes both keys of the half's pair; the
        // other key cannot belong to a consistent pair, since a crash between the two writes
        // of `put_pip` or `del_pip` leaves only a lone reverse entry, and PIPs map 1:1.
        let fwd: HashMap<Addr, Addr> = live.pips.iter().map(|(p, d, _)| (*p, *d)).collect();
        let rev: HashMap<Addr, Addr> = live.pip_revs.iter().copied().collect();
        let mut touched = std::collections::HashSet::new();
        let halves = live
            .pips
            .iter()
            .map(|(p, d, _)| (*p, *d))
            .chain(live.pip_revs.iter().map(|(d, p)| (*p, *d)));
        for (p, d) in halves {
            if fwd.get(&p) != Some(&d) || rev.get(&d) != Some(&p) {
                self.maps.del_pip(&p, &d)?;
                touched.insert(p);
                touched.insert(d);
            }
        }
        for (p, d, nh) in live.pips {
            if !touched.contains(&p) && !touched.contains(&d) {
                self.applied_pips
                    .insert(addr::to_ip(&p), (addr::to_ip(&d), nh));
            }
        }
        // Client routes as written: the refresh then changes only what differs, and removes
        // routes the kernel no longer has.
        self.routes = live
            .routes
            .iter()
            .map(|(l, a, nh)| ((*l, *a), *nh))
            .collect();
        tracing::info!(
            services = self.applied.len(),
            backends = self.written.len(),
            pips = self.applied_pips.len(),
            "adopted the live maps"
        );
        Ok(left)
    }

    /// Replaces the whole desired state (a config reload), syncing every service that was or
    /// is now desired. Nothing changes if the new state does not fit.
    ///
    /// # Errors
    /// A capacity limit or a map write failure.
    pub fn reload(&mut self, state: State) -> Result<(), ChangeError> {
        self.check_capacity(&state, None)?;
        let mut specs: Vec<ServiceSpec> = self
            .state
            .services
            .keys()
            .chain(state.services.keys())
            .copied()
            .collect();
        specs.sort_unstable();
        specs.dedup();
        self.state = state;
        for s in specs {
            self.sync_service(&s)?;
        }
        self.sync_pips()?;
        Ok(())
    }

    /// Handles one API request. The outcome says whether the desired state changed (and so
    /// must be saved); the response carries data only.
    pub fn handle(&mut self, req: Request) -> Outcome {
        match req {
            Request::Change(cmd) => match self.change(&cmd) {
                Ok(change) => Outcome {
                    response: Response::Done(change),
                    state_changed: true,
                },
                Err(e) => Outcome {
                    response: e.into(),
                    state_changed: false,
                },
            },
            Request::Query(q) => Outcome {
                response: self.query(q).unwrap_or_else(Response::from),
                state_changed: false,
            },
        }
    }

    /// Applies one command: tried on a copy of the state, checked against capacity, synced.
    fn change(&mut self, cmd: &Command) -> Result<Change, ChangeError> {
        let mut next = self.state.clone();
        let change = next.apply(cmd)?;
        match change.service().copied() {
            Some(spec) => self.commit(next, &spec)?,
            None => {
                self.check_capacity(&next, None)?;
                self.state = next;
                self.sync_pips()?;
            }
        }
        Ok(change)
    }

    /// Answers a query from the desired state and the maps.
    fn query(&mut self, q: Query) -> Result<Response, ChangeError> {
        Ok(match q {
            Query::PipList => {
                let pips = self
                    .applied_pips
                    .iter()
                    .map(|(p, (d, nh))| PipView {
                        pip: p.to_string(),
                        dip: d.to_string(),
                        next_hop: nh.is_resolved().then(|| NextHopView {
                            ifindex: nh.ifindex,
                            smac: mac(&nh.smac),
                            dmac: mac(&nh.dmac),
                        }),
                    })
                    .collect();
                Response::Pips { pips }
            }
            Query::AclList { service } => Response::Acl(self.acl_view(&service)?),
            Query::VipList => Response::Vips {
                vips: self.service_views()?,
            },
            Query::BackendList { service } => {
                let flows = self.maps.flows_per_backend()?;
                Response::Backends {
                    service: service.to_string(),
                    backends: self.backend_views(&service, &flows)?,
                }
            }
            Query::Status => Response::Status(self.status()?),
            Query::Stats => Response::Stats(self.stats()?),
        })
    }

    /// Takes one probe result. A change of health re-balances the service's new flows; with
    /// `established = rebalance`, a backend going down also loses its tracked flows.
    ///
    /// # Errors
    /// A map write failure.
    pub fn observe(&mut self, r: &ProbeReport) -> Result<(), ChangeError> {
        let Some(svc) = self.state.services.get(&r.service) else {
            return Ok(());
        };
        if !svc.backends.contains_key(&r.backend) {
            return Ok(()); // a report from a probe stopped meanwhile
        }
        let (thresholds, established) = (svc.settings.thresholds, svc.settings.established);
        let now = self.started.elapsed();
        let h = self
            .health
            .entry((r.service, r.backend))
            .or_insert_with(|| BackendHealth::new(thresholds));
        h.last = Some((r.ok, r.detail.clone(), Instant::now()));
        let Some(t) = h.tracker.observe(r.ok, now) else {
            return Ok(());
        };
        tracing::info!(service = %r.service, backend = %r.backend, from = ?t.from, to = ?t.to, detail = %r.detail, "backend health changed");
        self.sync_service(&r.service)?;
        if t.to == Health::Down
            && established == Established::Rebalance
            && let Some(id) = self
                .applied
                .get(&r.service)
                .and_then(|a| a.backends.get(&r.backend))
        {
            let n = self.maps.purge_flows(*id)?;
            tracing::info!(service = %r.service, backend = %r.backend, flows = n, "established flows rebalanced");
        }
        Ok(())
    }

    /// The probes the desired state asks for (the agent runs them).
    #[must_use]
    pub fn wanted_probes(&self) -> Vec<ProbeTarget> {
        let mut v = Vec::new();
        for (spec, svc) in &self.state.services {
            let Some(p) = &svc.settings.probe else {
                continue;
            };
            let (port, http_path) = match p {
                ProbeSpec::Tcp { port } => (*port, None),
                ProbeSpec::Http { port, path } => (*port, Some(path.clone())),
            };
            for addr in svc.backends.keys() {
                v.push(ProbeTarget {
                    service: *spec,
                    backend: *addr,
                    addr: SocketAddr::new(addr.ip(), port.unwrap_or(addr.port())),
                    http_path: http_path.clone(),
                    interval: svc.settings.interval,
                    timeout: svc.settings.timeout,
                });
            }
        }
        v
    }

    /// The desired state (what the state file saves).
    #[must_use]
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether a backend takes new flows, and why (not).
    fn rotation(&self, spec: &ServiceSpec, addr: &SocketAddr) -> (bool, String) {
        let Some(svc) = self.state.services.get(spec) else {
            return (false, "unknown".into());
        };
        let Some(b) = svc.backends.get(addr) else {
            return (false, "unknown".into());
        };
        if b.drained {
            return (false, "drained".into());
        }
        if b.weight == 0 {
            return (false, "weight 0".into());
        }
        if svc.settings.probe.is_none() {
            return (true, "no probe: always in rotation".into());
        }
        match self.health.get(&(*spec, *addr)) {
            Some(h) if h.tracker.is_up() => (true, "healthy".into()),
            Some(h) => {
                let last = h
                    .last
                    .as_ref()
                    .map_or(String::new(), |(_, d, _)| format!(": {d}"));
                match h.tracker.health {
                    Health::Down => (
                        false,
                        format!(
                            "{} failed probes{last}",
                            h.tracker.fails.max(svc.settings.thresholds.unhealthy_after)
                        ),
                    ),
                    _ => (false, format!("not probed healthy yet{last}")),
                }
            }
            None => (false, "not probed yet".into()),
        }
    }

    /// Makes `next` the desired state, after checking it fits, and syncs `changed`.
    fn commit(&mut self, next: State, changed: &ServiceSpec) -> Result<(), ChangeError> {
        self.check_capacity(&next, Some(changed))?;
        self.state = next;
        self.sync_service(changed)
    }

    /// Refuses a state that cannot fit the maps, before anything is written.
    fn check_capacity(
        &mut self,
        next: &State,
        changed: Option<&ServiceSpec>,
    ) -> Result<(), ChangeError> {
        let new_services = next
            .services
            .keys()
            .filter(|s| !self.applied.contains_key(*s))
            .count();
        if new_services > self.service_ids.free_count() {
            return Err(ChangeError::Capacity(format!(
                "the service map is full ({MAX_SERVICES} services)"
            )));
        }
        let new_backends: usize = next
            .services
            .iter()
            .map(|(s, st)| {
                let applied = self.applied.get(s);
                st.backends
                    .keys()
                    .filter(|a| applied.is_none_or(|ap| !ap.backends.contains_key(*a)))
                    .count()
            })
            .sum();
        if new_backends > self.backend_ids.free_count() {
            return Err(ChangeError::Capacity(format!(
                "the backend map is full ({} backends)",
                MAX_BACKENDS - 1
            )));
        }
        if next.pips.len() > lb_common::consts::MAX_PIPS as usize {
            return Err(ChangeError::Capacity(format!(
                "the PIP maps are full ({} PIPs)",
                lb_common::consts::MAX_PIPS
            )));
        }
        // Every endpoint's compiled ACL, plus the changed one's new set while it is swapped in;
        // every internal VIP's source set (see `sync_vip`: its prefixes, one host entry per
        // backend address, the default deny; an upper bound), plus the changed VIP's again.
        let ilb_set = |ip: IpAddr| -> usize {
            let Some((_, first)) = next.services.range(vip_range(ip)).next() else {
                return 0;
            };
            if first.settings.internal.is_empty() {
                return 0;
            }
            let hosts: std::collections::BTreeSet<IpAddr> = next
                .services
                .range(vip_range(ip))
                .flat_map(|(_, s)| s.backends.keys().map(SocketAddr::ip))
                .collect();
            first.settings.internal.len() + hosts.len() + 1
        };
        let vips: std::collections::BTreeSet<IpAddr> =
            next.services.keys().map(|s| s.vip.ip()).collect();
        let acl_need: usize = next
            .services
            .values()
            .map(|s| acl::compile(&acl_rules(s)).len())
            .sum::<usize>()
            + changed
                .and_then(|c| next.services.get(c))
                .map_or(0, |s| acl::compile(&acl_rules(s)).len())
            + vips.iter().map(|ip| ilb_set(*ip)).sum::<usize>()
            + changed.map_or(0, |c| ilb_set(c.vip.ip()));
        if acl_need > lb_common::consts::MAX_ACL_ENTRIES as usize {
            return Err(ChangeError::Capacity(format!(
                "the ACLs would need {acl_need} LPM entries; the map holds {}",
                lb_common::consts::MAX_ACL_ENTRIES
            )));
        }
        // Every service's table plus, while it is swapped, one new table for a changed one.
        let need: u64 = next
            .services
            .values()
            .map(|s| u64::from(s.settings.table_size))
            .sum::<u64>()
            + changed
                .and_then(|c| next.services.get(c))
                .map_or(0, |s| u64::from(s.settings.table_size));
        if need > u64::from(self.info.ring_slots) {
            return Err(ChangeError::Capacity(format!(
                "the lookup tables need {need} slots but the agent has {} (raise agent.ring_slots or use smaller --table-size)",
                self.info.ring_slots
            )));
        }
        Ok(())
    }

    /// Makes the maps match the desired state of one service.
    fn sync_service(&mut self, spec: &ServiceSpec) -> Result<(), ChangeError> {
        self.release_deferred(false);
        let key = spec.key();
        let Some(desired) = self.state.services.get(spec).cloned() else {
            // Deleted: service entry first (new packets stop), then its backends and table.
            self.health.retain(|(s, _), _| s != spec);
            if let Some(ap) = self.applied.remove(spec) {
                self.maps.del_service(&key)?;
                self.sync_vip(spec.vip.ip())?;
                for id in ap.backends.into_values() {
                    self.retire_backend(id)?;
                }
                if let Some((off, slots)) = ap.table {
                    self.defer(Deferred::Region(off, slots.len() as u32));
                }
                if let Some((aid, entries)) = ap.acl {
                    self.defer(Deferred::Acl(
                        aid,
                        entries.iter().map(|e| e.prefix).collect(),
                    ));
                }
                self.service_ids.free(ap.id);
            }
            return Ok(());
        };

        if !self.applied.contains_key(spec) {
            let id = self
                .service_ids
                .alloc()
                .ok_or_else(|| ChangeError::Capacity("the service map is full".into()))?;
            self.maps.zero_service_stats(id)?;
            self.applied.insert(
                *spec,
                Applied {
                    id,
                    table: None,
                    backends: BTreeMap::new(),
                    acl: None,
                },
            );
        }

        // New backends: entry first, so no slot ever points at an unwritten entry.
        let known: Vec<SocketAddr> = self.applied[spec].backends.keys().copied().collect();
        for addr in desired.backends.keys().filter(|a| !known.contains(a)) {
            let id = self.alloc_backend_id()?;
            self.maps.zero_backend_stats(id)?;
            let nh = self.next_hop(addr.ip());
            let service = self.applied[spec].id;
            self.put_backend(id, service, *addr, nh)?;
            self.applied
                .get_mut(spec)
                .expect("inserted above")
                .backends
                .insert(*addr, id);
        }
        let ap = self.applied.get_mut(spec).expect("inserted above");
        let gone: Vec<(SocketAddr, BackendId)> = ap
            .backends
            .iter()
            .filter(|(a, _)| !desired.backends.contains_key(*a))
            .map(|(a, i)| (*a, *i))
            .collect();
        for (a, _) in &gone {
            ap.backends.remove(a);
            self.health.remove(&(*spec, *a));
        }

        // The table: backends in rotation (healthy, not drained, weight > 0), by weight. With
        // none in rotation, `when_all_down = spread` fails open over the non-drained ones.
        let candidates: Vec<(SocketAddr, BackendId, u32)> = ap
            .backends
            .iter()
            .filter_map(|(a, &id)| {
                let b = desired.backends.get(a)?;
                (!b.drained && b.weight > 0).then_some((*a, id, b.weight))
            })
            .collect();
        let probed = desired.settings.probe.is_some();
        let up = |a: &SocketAddr| {
            !probed
                || self
                    .health
                    .get(&(*spec, *a))
                    .is_some_and(|h| h.tracker.is_up())
        };
        let mut chosen: Vec<&(SocketAddr, BackendId, u32)> =
            candidates.iter().filter(|(a, ..)| up(a)).collect();
        if chosen.is_empty() && desired.settings.when_all_down == WhenAllDown::Spread {
            chosen = candidates.iter().collect();
        }
        let eligible: Vec<TableBackend> = chosen
            .iter()
            .map(|(a, id, w)| TableBackend {
                id: *id,
                addr: addr::from_ip(a.ip()),
                port: a.port(),
                weight: *w,
            })
            .collect();
        let table = match (eligible.first(), desired.settings.table_size) {
            (None, _) => None,
            // A port forward: its one backend in a one-slot table (slot = hash % 1 = 0).
            (Some(only), 1) => Some(vec![only.id]),
            (Some(_), size) => Some(build_table(&eligible, size)),
        };
        let ap = self.applied.get_mut(spec).expect("inserted above");
        let table_changed = match (&ap.table, &table) {
            (Some((_, cur)), Some(new)) => cur != new,
            (None, None) => false,
            _ => true,
        };
        let id = ap.id;
        // The endpoint's ACL, compiled to LPM entries; a change writes a whole new set under a
        // new id, switched with the table in the same service update (a double buffer again).
        // In prefix order, like every set the reconciler keeps (a set read back from the map
        // comes that way; the LPM trie does not care), so sets compare with `==`.
        let mut entries = acl::compile(&acl_rules(&desired));
        entries.sort_by_key(|e| e.prefix);
        let acl_changed = match &ap.acl {
            Some((_, cur)) => *cur != entries,
            None => !entries.is_empty(),
        };
        let new_region = if table_changed {
            match &table {
                Some(slots) => {
                    let off = self.alloc_region(slots.len() as u32)?;
                    self.maps.put_slots(off, slots)?;
                    Some(off)
                }
                None => None,
            }
        } else {
            self.applied[spec].table.as_ref().map(|(o, _)| *o)
        };
        let new_acl = if acl_changed && !entries.is_empty() {
            let aid = self
                .acl_ids
                .alloc()
                .ok_or_else(|| ChangeError::Capacity("no free ACL set id".into()))?;
            for e in &entries {
                self.maps.put_acl(aid, e)?;
            }
            Some(aid)
        } else if acl_changed {
            None
        } else {
            self.applied[spec].acl.as_ref().map(|(aid, _)| *aid)
        };
        let info = ServiceInfo {
            id,
            table_off: new_region.unwrap_or(0),
            table_len: table.as_ref().map_or(0, |t| t.len() as u32),
            flags: 0,
            acl_id: new_acl.unwrap_or(0),
        };
        // The atomic switch to the new table and ACL set. A double buffer rather than delta
        // writes into the live region: a delta sequence passes through tables that match
        // neither the old nor the new backend set (flows hop twice), while one hash-map update
        // swaps whole tables, so every packet sees one complete table (and one complete ACL).
        // Written even when nothing changed, so a re-added service always has its entry.
        self.maps.put_service(&key, &info)?;
        let ap = self.applied.get_mut(spec).expect("present");
        let old_table = if table_changed {
            std::mem::replace(&mut ap.table, new_region.zip(table))
        } else {
            None
        };
        let old_acl = if acl_changed {
            std::mem::replace(&mut ap.acl, new_acl.map(|aid| (aid, entries.clone())))
        } else {
            None
        };
        if let Some((off, slots)) = old_table {
            self.defer(Deferred::Region(off, slots.len() as u32));
        }
        if let Some((aid, old)) = old_acl {
            self.defer(Deferred::Acl(aid, old.iter().map(|e| e.prefix).collect()));
        }
        if acl_changed {
            // A rule change applies to established flows too: tracked flows from sources the
            // new rules deny are removed, so their next packet meets the ACL (and is dropped).
            if !entries.is_empty() {
                let denied =
                    |a: &Addr| acl::lpm(&entries, a).is_some_and(|e| e.action == acl::Action::Deny);
                let n = self.maps.purge_sources(id, &denied)?;
                if n > 0 {
                    tracing::info!(service = %spec, flows = n, "flows from newly denied sources removed");
                }
            }
        }
        self.sync_vip(spec.vip.ip())?;
        for (_, bid) in gone {
            self.retire_backend(bid)?;
        }
        Ok(())
    }

    /// Makes the PIP maps match the desired state (both directions, next hops included).
    fn sync_pips(&mut self) -> Result<(), ChangeError> {
        let gone: Vec<(IpAddr, IpAddr)> = self
            .applied_pips
            .iter()
            .filter(|(p, (d, _))| self.state.pips.get(p) != Some(d))
            .map(|(p, (d, _))| (*p, *d))
            .collect();
        for (p, d) in gone {
            self.maps.del_pip(&addr::from_ip(p), &addr::from_ip(d))?;
            self.applied_pips.remove(&p);
        }
        let want: Vec<(IpAddr, IpAddr)> = self.state.pips.iter().map(|(p, d)| (*p, *d)).collect();
        for (p, d) in want {
            let nh = self.next_hop(d);
            if self.applied_pips.get(&p) != Some(&(d, nh)) {
                self.maps
                    .put_pip(&addr::from_ip(p), &addr::from_ip(d), &nh)?;
                self.applied_pips.insert(p, (d, nh));
            }
        }
        Ok(())
    }

    /// Keeps `LB_VIPS[ip]` equal to the number of services on that address.
    fn sync_vip(&mut self, ip: IpAddr) -> Result<(), ChangeError> {
        let n = self.applied.range(vip_range(ip)).count();
        let key = VipKey {
            vip: addr::from_ip(ip),
        };
        if n == 0 {
            if let Some((aid, old)) = self.ilb.remove(&ip) {
                self.defer(Deferred::Acl(aid, old.iter().map(|e| e.prefix).collect()));
            }
            return Ok(self.maps.del_vip(&key)?);
        }
        // An internal VIP's source set: its internal prefixes permitted, every backend of the
        // VIP (any service) marked hairpin as a host entry (longer than any prefix, so it wins
        // the LPM), everything else denied. Double-buffered like endpoint ACLs.
        let (internal, echo, snat) = self.state.services.range(vip_range(ip)).next().map_or(
            (Vec::new(), true, false),
            |(_, st)| {
                (
                    st.settings.internal.clone(),
                    st.settings.icmp_echo,
                    st.settings.hairpin == crate::spec::Hairpin::Snat,
                )
            },
        );
        let mut flags = 0;
        if !echo {
            flags |= lb_common::maps::VIP_F_NO_ECHO;
        }
        if snat {
            flags |= lb_common::maps::VIP_F_HAIRPIN_SNAT;
        }
        let mut entries: Vec<acl::Entry> = Vec::new();
        if !internal.is_empty() {
            for (p, l) in &internal {
                entries.push(acl::Entry {
                    prefix: map_prefix(*p, *l),
                    action: acl::Action::Permit,
                    rule: None,
                });
            }
            // Each host's entry carries a backend id of that address (the lowest, if it backs
            // several services): hairpin SNAT sends the replies through its next hop.
            let mut hosts: std::collections::BTreeMap<IpAddr, BackendId> =
                std::collections::BTreeMap::new();
            for a in self.applied.range(vip_range(ip)).map(|(_, a)| a) {
                for (b, id) in &a.backends {
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
            entries.push(acl::Entry {
                prefix: acl::Prefix {
                    addr: [0; 16],
                    len: 0,
                },
                action: acl::Action::Deny,
                rule: None,
            });
            // A host that is also an internal /32: hairpin wins. Sorting puts it before the
            // permit of the same prefix, and dedup keeps the first of equal prefixes.
            entries.sort_by_key(|e| (e.prefix, e.action != acl::Action::Hairpin));
            entries.dedup_by_key(|e| e.prefix);
        }
        let current = self.ilb.get(&ip).map(|(aid, e)| (*aid, e.clone()));
        let ilb_id = match current {
            Some((aid, cur)) if cur == entries => aid,
            _ if entries.is_empty() => 0,
            _ => {
                let Some(aid) = self.acl_ids.alloc() else {
                    return Err(ChangeError::Capacity(
                        "no free ACL set id for the internal VIP".into(),
                    ));
                };
                for e in &entries {
                    self.maps.put_acl(aid, e)?;
                }
                aid
            }
        };
        self.maps.put_vip(
            &key,
            &VipInfo {
                services: n as u32,
                flags,
                ilb_id,
            },
        )?;
        let old = if ilb_id == 0 {
            self.ilb.remove(&ip)
        } else {
            self.ilb.insert(ip, (ilb_id, entries))
        };
        if let Some((aid, old)) = old.filter(|(aid, _)| *aid != ilb_id) {
            self.defer(Deferred::Acl(aid, old.iter().map(|e| e.prefix).collect()));
        }
        Ok(())
    }

    /// Points a service at no table (new flows are dropped) and frees its region after the
    /// grace period.
    fn drop_table(&mut self, spec: &ServiceSpec) -> Result<(), ChangeError> {
        let Some(ap) = self.applied.get_mut(spec) else {
            return Ok(());
        };
        let Some((off, slots)) = ap.table.take() else {
            return Ok(());
        };
        let info = ServiceInfo {
            id: ap.id,
            table_off: 0,
            table_len: 0,
            flags: 0,
            acl_id: ap.acl.as_ref().map_or(0, |(aid, _)| *aid),
        };
        self.maps.put_service(&spec.key(), &info)?;
        self.defer(Deferred::Region(off, slots.len() as u32));
        Ok(())
    }

    /// A backend no table points at any more: inactive entry, flows purged, id reused later.
    fn retire_backend(&mut self, id: BackendId) -> Result<(), MapOpError> {
        self.maps.put_backend(id, &Backend::default())?;
        self.written.remove(&id);
        let purged = self.maps.purge_flows(id)?;
        tracing::info!(backend_id = id, purged, "backend retired");
        self.defer(Deferred::Backend(id));
        Ok(())
    }

    fn defer(&mut self, d: Deferred) {
        self.deferred.push((Instant::now(), d));
    }

    /// Returns deferred regions and ids whose grace period is over (or, with `wait`, all of
    /// them after waiting out the youngest's grace period).
    fn release_deferred(&mut self, wait: bool) {
        if wait && let Some(youngest) = self.deferred.iter().map(|(t, _)| *t).max() {
            // Not a test sleep: the agent's grace period for in-flight packets (module doc).
            std::thread::sleep(GRACE.saturating_sub(youngest.elapsed()));
        }
        let now = Instant::now();
        let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(t, _)| now.duration_since(*t) >= GRACE);
        self.deferred = keep;
        for (_, d) in ready {
            match d {
                Deferred::Region(off, len) => self.ring.release(off, len),
                Deferred::Backend(id) => {
                    self.backend_ids.free(id);
                }
                Deferred::Acl(aid, prefixes) => {
                    for p in &prefixes {
                        if let Err(e) = self.maps.del_acl(aid, p) {
                            tracing::warn!(error = %e, "removing an old ACL entry failed");
                        }
                    }
                    self.acl_ids.free(aid);
                }
            }
        }
    }

    fn alloc_region(&mut self, len: u32) -> Result<u32, ChangeError> {
        if let Some(off) = self.ring.alloc(len) {
            return Ok(off);
        }
        self.release_deferred(true);
        self.ring.alloc(len).ok_or_else(|| {
            ChangeError::Capacity(format!(
                "no room for a {len}-slot table: {} of {} slots in use",
                self.ring.used(),
                self.ring.size
            ))
        })
    }

    fn alloc_backend_id(&mut self) -> Result<BackendId, ChangeError> {
        if let Some(id) = self.backend_ids.alloc() {
            return Ok(id);
        }
        self.release_deferred(true);
        self.backend_ids.alloc().ok_or_else(|| {
            ChangeError::Capacity(format!(
                "the backend map is full ({} backends)",
                MAX_BACKENDS - 1
            ))
        })
    }

    /// The next hop for a new backend entry: what the last refresh found, else a fresh lookup.
    fn next_hop(&mut self, ip: IpAddr) -> NextHop {
        if let Some(nh) = self.next_hops.get(&ip) {
            return *nh;
        }
        let nh = self.resolver.next_hop(ip).unwrap_or_default();
        if nh.is_resolved() {
            self.next_hops.insert(ip, nh);
        }
        nh
    }

    /// Writes a live backend entry and remembers which next hop it carries.
    fn put_backend(
        &mut self,
        id: BackendId,
        service: u32,
        addr: SocketAddr,
        nh: NextHop,
    ) -> Result<(), MapOpError> {
        self.maps
            .put_backend(id, &backend_entry(service, addr, nh))?;
        self.written.insert(id, nh);
        Ok(())
    }

    /// Periodic work: grace periods, next hops of backends, client routes.
    ///
    /// # Errors
    /// A map write failure.
    pub fn tick(&mut self) -> Result<(), MapOpError> {
        self.release_deferred(false);
        // Re-resolve every backend address once, then rewrite each entry whose written next
        // hop differs (several services can share an address; each entry is checked).
        let ips: std::collections::BTreeSet<IpAddr> = self
            .applied
            .values()
            .flat_map(|a| a.backends.keys().map(SocketAddr::ip))
            .chain(self.state.pips.values().copied())
            .collect();
        self.next_hops = ips
            .into_iter()
            .filter_map(|ip| self.resolver.next_hop(ip).map(|nh| (ip, nh)))
            .collect();
        let entries: Vec<(u32, SocketAddr, BackendId)> = self
            .applied
            .values()
            .flat_map(|a| a.backends.iter().map(|(s, i)| (a.id, *s, *i)))
            .collect();
        for (service, addr, id) in entries {
            let nh = self.next_hops.get(&addr.ip()).copied().unwrap_or_default();
            if self.written.get(&id) != Some(&nh) {
                self.put_backend(id, service, addr, nh)?;
                tracing::info!(backend = %addr, backend_id = id, ifindex = nh.ifindex, "backend next hop updated");
            }
        }
        if let Err(e) = self.sync_pips() {
            tracing::warn!(error = %e, "refreshing PIP next hops failed");
        }
        self.refresh_routes()
    }

    fn refresh_routes(&mut self) -> Result<(), MapOpError> {
        let want: HashMap<(u32, Addr), NextHop> = self
            .resolver
            .client_routes()
            .into_iter()
            .map(|(l, a, nh)| ((l, a), nh))
            .collect();
        for (k, nh) in &want {
            if self.routes.get(k) != Some(nh) {
                self.maps.put_route(k.0, k.1, nh)?;
            }
        }
        let stale: Vec<(u32, Addr)> = self
            .routes
            .keys()
            .filter(|k| !want.contains_key(*k))
            .copied()
            .collect();
        for k in stale {
            self.maps.del_route(k.0, k.1)?;
        }
        self.routes = want;
        Ok(())
    }

    fn service_views(&self) -> Result<Vec<ServiceView>, MapOpError> {
        let mut out = Vec::new();
        for (spec, ap) in &self.applied {
            let Some(svc) = self.state.services.get(spec) else {
                continue;
            };
            let st = &svc.settings;
            out.push(ServiceView {
                service: spec.to_string(),
                kind: match svc.kind {
                    Kind::Balanced => "balanced".into(),
                    Kind::Forward => {
                        let to = svc
                            .backends
                            .keys()
                            .next()
                            .map_or_else(String::new, ToString::to_string);
                        format!("forward to {to}")
                    }
                },
                id: ap.id,
                table_size: st.table_size,
                backends: ap.backends.len(),
                in_rotation: ap
                    .backends
                    .keys()
                    .filter(|a| self.rotation(spec, a).0)
                    .count(),
                probe: st.probe.as_ref().map(ToString::to_string),
                probe_interval: format_duration(st.interval),
                probe_timeout: format_duration(st.timeout),
                unhealthy_after: st.thresholds.unhealthy_after,
                healthy_after: st.thresholds.healthy_after,
                when_all_down: st.when_all_down.to_string(),
                established: st.established.to_string(),
                internal: crate::state::prefixes(&st.internal),
                hairpin: st.hairpin.to_string(),
                icmp_echo: st.icmp_echo,
                counters: self.maps.service_counters(ap.id)?.into(),
            });
        }
        Ok(out)
    }

    fn backend_views(
        &self,
        spec: &ServiceSpec,
        flows: &HashMap<BackendId, u64>,
    ) -> Result<Vec<BackendView>, ChangeError> {
        let ap = self
            .applied
            .get(spec)
            .ok_or_else(|| ChangeError::NotFound(format!("service {spec}")))?;
        let mut slots: HashMap<BackendId, u32> = HashMap::new();
        let total = ap.table.as_ref().map_or(0, |(_, t)| t.len());
        if let Some((_, t)) = &ap.table {
            for id in t {
                *slots.entry(*id).or_default() += 1;
            }
        }
        ap.backends
            .iter()
            .map(|(addr, &id)| {
                let nh = self.written.get(&id).filter(|n| n.is_resolved());
                let s = slots.get(&id).copied().unwrap_or(0);
                let desired = self
                    .state
                    .services
                    .get(spec)
                    .and_then(|s| s.backends.get(addr));
                let probed = self
                    .state
                    .services
                    .get(spec)
                    .is_some_and(|s| s.settings.probe.is_some());
                let h = self.health.get(&(*spec, *addr));
                let health = match (probed, h.map(|h| h.tracker.health)) {
                    (false, _) => "unprobed",
                    (true, Some(Health::Up)) => "up",
                    (true, Some(Health::Down)) => "down",
                    (true, _) => "unknown",
                };
                let (in_rotation, reason) = self.rotation(spec, addr);
                let last_probe =
                    h.and_then(|h| h.last.as_ref())
                        .map(|(ok, detail, at)| ProbeView {
                            ok: *ok,
                            detail: detail.clone(),
                            age_ms: u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
                        });
                Ok(BackendView {
                    backend: addr.to_string(),
                    id,
                    health: health.into(),
                    in_rotation,
                    reason,
                    last_probe,
                    weight: desired.map_or(0, |b| b.weight),
                    drained: desired.is_some_and(|b| b.drained),
                    next_hop: nh.map(|n| NextHopView {
                        ifindex: n.ifindex,
                        smac: mac(&n.smac),
                        dmac: mac(&n.dmac),
                    }),
                    slots: s,
                    share: if total == 0 {
                        0.0
                    } else {
                        f64::from(s) / total as f64
                    },
                    flows: flows.get(&id).copied().unwrap_or(0),
                    counters: CountersView::from(self.maps.backend_counters(id)?),
                })
            })
            .collect()
    }

    fn status(&self) -> Result<StatusView, ChangeError> {
        let flows = self.maps.flows_per_backend()?;
        let mut vips = Vec::new();
        for spec in self.applied.keys() {
            vips.push(ServiceStatus {
                service: spec.to_string(),
                backends: self.backend_views(spec, &flows)?,
            });
        }
        let backends: usize = self.applied.values().map(|a| a.backends.len()).sum();
        let resolved = self
            .applied
            .values()
            .flat_map(|a| a.backends.values())
            .filter(|id| self.written.get(id).is_some_and(NextHop::is_resolved))
            .count();
        Ok(StatusView {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            interfaces: self.info.interfaces.clone(),
            xdp_mode: self.info.xdp_mode.clone(),
            pin_dir: self.info.pin_dir.clone(),
            services: self.applied.len(),
            backends,
            backends_unresolved: backends - resolved,
            client_routes: self.route_views(),
            ring_slots_used: self.ring.used(),
            ring_slots: self.info.ring_slots,
            conntrack_flows: self.info.conntrack_flows,
            vips,
        })
    }

    fn acl_view(&self, spec: &ServiceSpec) -> Result<AclView, ChangeError> {
        let svc = self
            .state
            .services
            .get(spec)
            .ok_or_else(|| ChangeError::NotFound(format!("endpoint {spec}")))?;
        let word = |a: acl::Action| match a {
            acl::Action::Permit => "permit".to_owned(),
            acl::Action::Deny => "deny".to_owned(),
            acl::Action::Hairpin => "hairpin".to_owned(),
        };
        let rules = acl_rules(svc);
        let ap = self.applied.get(spec);
        let drops = match ap {
            Some(ap) => self.maps.service_counters(ap.id)?.acl_drops,
            None => 0,
        };
        Ok(AclView {
            service: spec.to_string(),
            rules: svc
                .acl
                .values()
                .map(|r| AclRuleView {
                    order: r.order,
                    action: word(r.action),
                    prefix: format!("{}/{}", r.prefix.0, r.prefix.1),
                    description: r.description.clone(),
                })
                .collect(),
            default: word(acl::default_action(&rules)),
            compiled_entries: ap.and_then(|a| a.acl.as_ref()).map_or(0, |(_, e)| e.len()),
            drops,
        })
    }

    fn route_views(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .routes
            .iter()
            .map(|((len, a), nh)| {
                let ip = addr::to_ip(a);
                let plen = if ip.is_ipv4() {
                    len - addr::V4_MAPPED_PREFIX_LEN
                } else {
                    *len
                };
                if nh.is_resolved() {
                    format!("{ip}/{plen} via if {} → {}", nh.ifindex, mac(&nh.dmac))
                } else {
                    format!(
                        "{ip}/{plen} connected (kernel FIB per host until its neighbour is learned)"
                    )
                }
            })
            .collect();
        v.sort();
        v
    }

    fn stats(&self) -> Result<StatsView, MapOpError> {
        let counts = self.maps.reason_counters()?;
        let reasons = ALL_REASONS
            .iter()
            .zip(counts)
            .map(|(r, c)| (r.name().to_owned(), c))
            .collect();
        Ok(StatsView {
            reasons,
            services: self.service_views()?,
        })
    }
}

/// An endpoint's rules as the compiler takes them.
fn acl_rules(s: &ServiceState) -> Vec<acl::Rule> {
    s.acl
        .values()
        .map(|r| acl::Rule {
            order: r.order,
            action: r.action,
            prefix: map_prefix(r.prefix.0, r.prefix.1),
        })
        .collect()
}

fn backend_entry(service: u32, addr: SocketAddr, nh: NextHop) -> Backend {
    Backend {
        addr: addr::from_ip(addr.ip()),
        port: addr.port().to_be_bytes(),
        flags: BACKEND_F_ACTIVE,
        nh,
        service,
    }
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use lb_common::maps::{Counters, ServiceKey};
    use proptest::prelude::*;

    use super::*;
    use crate::{api::Request, cli::VipSettings, error::ErrorKind};

    /// One map write, in order.
    #[derive(Clone, Debug, PartialEq)]
    enum Op {
        Service(ServiceInfo),
        DelService,
        Backend(BackendId, bool),
        Slots(u32, u32),
        Purge(BackendId),
        Acl(u32, bool),
        PurgeSources(u32, usize),
        /// Flows of unused ids removed (only recorded when there were some).
        PurgeStale(usize),
    }

    #[derive(Clone, Default)]
    struct FakeMaps {
        services: HashMap<ServiceKey, ServiceInfo>,
        vips: HashMap<VipKey, VipInfo>,
        backends: HashMap<BackendId, Backend>,
        ring: HashMap<u32, BackendId>,
        routes: HashMap<(u32, Addr), NextHop>,
        acl: HashMap<(u32, acl::Prefix), acl::Entry>,
        pips: HashMap<Addr, (Addr, NextHop)>,
        /// Tracked flows, by the backend id each names.
        flows: Vec<BackendId>,
        ops: Vec<Op>,
    }

    impl MapOps for FakeMaps {
        fn put_service(&mut self, k: &ServiceKey, v: &ServiceInfo) -> Result<(), MapOpError> {
            self.ops.push(Op::Service(*v));
            self.services.insert(*k, *v);
            Ok(())
        }
        fn del_service(&mut self, k: &ServiceKey) -> Result<(), MapOpError> {
            self.ops.push(Op::DelService);
            self.services.remove(k);
            Ok(())
        }
        fn put_vip(&mut self, k: &VipKey, v: &VipInfo) -> Result<(), MapOpError> {
            self.vips.insert(*k, *v);
            Ok(())
        }
        fn del_vip(&mut self, k: &VipKey) -> Result<(), MapOpError> {
            self.vips.remove(k);
            Ok(())
        }
        fn put_backend(&mut self, id: BackendId, b: &Backend) -> Result<(), MapOpError> {
            self.ops.push(Op::Backend(id, b.is_active()));
            self.backends.insert(id, *b);
            Ok(())
        }
        fn put_slots(&mut self, off: u32, slots: &[BackendId]) -> Result<(), MapOpError> {
            self.ops.push(Op::Slots(off, slots.len() as u32));
            for (i, s) in (off..).zip(slots) {
                self.ring.insert(i, *s);
            }
            Ok(())
        }
        fn put_route(&mut self, l: u32, a: Addr, nh: &NextHop) -> Result<(), MapOpError> {
            self.routes.insert((l, a), *nh);
            Ok(())
        }
        fn del_route(&mut self, l: u32, a: Addr) -> Result<(), MapOpError> {
            self.routes.remove(&(l, a));
            Ok(())
        }
        fn zero_service_stats(&mut self, _: u32) -> Result<(), MapOpError> {
            Ok(())
        }
        fn zero_backend_stats(&mut self, _: BackendId) -> Result<(), MapOpError> {
            Ok(())
        }
        fn purge_flows(&mut self, backend: BackendId) -> Result<usize, MapOpError> {
            self.ops.push(Op::Purge(backend));
            Ok(0)
        }
        fn purge_stale(&mut self, active: &dyn Fn(BackendId) -> bool) -> Result<usize, MapOpError> {
            let before = self.flows.len();
            self.flows.retain(|id| active(*id));
            let n = before - self.flows.len();
            if n > 0 {
                self.ops.push(Op::PurgeStale(n));
            }
            Ok(n)
        }
        fn service_counters(&self, _: u32) -> Result<Counters, MapOpError> {
            Ok(Counters::default())
        }
        fn backend_counters(&self, _: BackendId) -> Result<Counters, MapOpError> {
            Ok(Counters::default())
        }
        fn reason_counters(&self) -> Result<Vec<u64>, MapOpError> {
            Ok(vec![0; ALL_REASONS.len()])
        }
        fn flows_per_backend(&self) -> Result<HashMap<BackendId, u64>, MapOpError> {
            Ok(HashMap::new())
        }
        fn put_pip(&mut self, pip: &Addr, dip: &Addr, nh: &NextHop) -> Result<(), MapOpError> {
            self.pips.insert(*pip, (*dip, *nh));
            Ok(())
        }
        fn del_pip(&mut self, pip: &Addr, _dip: &Addr) -> Result<(), MapOpError> {
            self.pips.remove(pip);
            Ok(())
        }
        fn read_live(&self) -> Result<crate::dataplane::LiveMaps, MapOpError> {
            Ok(crate::dataplane::LiveMaps {
                services: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
                vips: self.vips.iter().map(|(k, v)| (*k, *v)).collect(),
                backends: self
                    .backends
                    .iter()
                    .filter(|(_, b)| b.is_active())
                    .map(|(i, b)| (*i, *b))
                    .collect(),
                acl: self.acl.iter().map(|((aid, _), e)| (*aid, *e)).collect(),
                pips: self.pips.iter().map(|(p, (d, nh))| (*p, *d, *nh)).collect(),
                pip_revs: self.pips.iter().map(|(p, (d, _))| (*d, *p)).collect(),
                routes: self
                    .routes
                    .iter()
                    .map(|((l, a), nh)| (*l, *a, *nh))
                    .collect(),
            })
        }
        fn read_slots(&self, off: u32, len: u32) -> Result<Vec<BackendId>, MapOpError> {
            Ok((off..off + len)
                .map(|i| self.ring.get(&i).copied().unwrap_or(0))
                .collect())
        }
        fn put_acl(&mut self, acl_id: u32, e: &acl::Entry) -> Result<(), MapOpError> {
            self.ops.push(Op::Acl(acl_id, true));
            self.acl.insert((acl_id, e.prefix), *e);
            Ok(())
        }
        fn del_acl(&mut self, acl_id: u32, p: &acl::Prefix) -> Result<(), MapOpError> {
            self.ops.push(Op::Acl(acl_id, false));
            self.acl.remove(&(acl_id, *p));
            Ok(())
        }
        fn purge_sources(
            &mut self,
            service: u32,
            doomed: &dyn Fn(&Addr) -> bool,
        ) -> Result<usize, MapOpError> {
            // One tracked client per test: 198.51.100.70.
            let n = usize::from(doomed(&addr::v4_mapped([198, 51, 100, 70])));
            self.ops.push(Op::PurgeSources(service, n));
            Ok(n)
        }
    }

    /// Resolves 192.0.2.x to ifindex x once `resolved` is set.
    #[derive(Default)]
    struct FakeResolver {
        resolved: bool,
    }

    impl Resolver for FakeResolver {
        fn next_hop(&mut self, ip: IpAddr) -> Option<NextHop> {
            let IpAddr::V4(v4) = ip else { return None };
            self.resolved.then(|| NextHop {
                ifindex: u32::from(v4.octets()[3]),
                smac: [1; 6],
                dmac: [2; 6],
            })
        }
        fn client_routes(&mut self) -> Vec<(u32, Addr, NextHop)> {
            Vec::new()
        }
    }

    /// Requests as an operator types them, parsed the way the CLI parses them (a parse error
    /// is the edge's refusal, as `lb` would print it).
    #[derive(Clone, Debug)]
    enum Req {
        VipAdd {
            service: String,
            settings: VipSettings,
        },
        VipDel {
            service: String,
        },
        VipList,
        BackendAdd {
            service: String,
            backend: String,
            weight: Option<u32>,
        },
        BackendDel {
            service: String,
            backend: String,
        },
        BackendSetWeight {
            service: String,
            backend: String,
            weight: u32,
        },
        BackendDrain {
            service: String,
            backend: String,
            drained: bool,
        },
        BackendList {
            service: String,
        },
        ForwardAdd {
            service: String,
            to: String,
        },
        ForwardDel {
            service: String,
        },
        AclAdd {
            service: String,
            order: u32,
            action: String,
            prefix: String,
            description: String,
        },
        AclDel {
            service: String,
            order: u32,
        },
        AclList {
            service: String,
        },
        PipAdd {
            pip: String,
            dip: String,
        },
        PipDel {
            pip: String,
        },
        PipList,
        Status,
    }

    impl Req {
        fn typed(self) -> Result<Request, String> {
            use crate::{
                api::Query,
                spec::{BackendSpec, parse_prefix},
            };
            let svc = |s: &str| -> Result<ServiceSpec, String> {
                s.parse().map_err(|e| format!("service: {e}"))
            };
            let be = |s: &str| -> Result<BackendSpec, String> {
                s.parse().map_err(|e| format!("backend: {e}"))
            };
            let ip = |s: &str, what: &str| -> Result<IpAddr, String> {
                s.parse()
                    .map_err(|_| format!("{what}: {s:?} is not an address"))
            };
            let c = |c: Command| Ok(Request::Change(c));
            let q = |q: Query| Ok(Request::Query(q));
            match self {
                Self::VipAdd { service, settings } => c(Command::VipAdd {
                    service: svc(&service)?,
                    settings: settings.resolve()?,
                }),
                Self::VipDel { service } => c(Command::VipDel {
                    service: svc(&service)?,
                }),
                Self::VipList => q(Query::VipList),
                Self::BackendAdd {
                    service,
                    backend,
                    weight,
                } => c(Command::BackendAdd {
                    service: svc(&service)?,
                    backend: be(&backend)?,
                    weight,
                }),
                Self::BackendDel { service, backend } => c(Command::BackendDel {
                    service: svc(&service)?,
                    backend: be(&backend)?,
                }),
                Self::BackendSetWeight {
                    service,
                    backend,
                    weight,
                } => c(Command::BackendSetWeight {
                    service: svc(&service)?,
                    backend: be(&backend)?,
                    weight,
                }),
                Self::BackendDrain {
                    service,
                    backend,
                    drained,
                } => c(Command::BackendDrain {
                    service: svc(&service)?,
                    backend: be(&backend)?,
                    drained,
                }),
                Self::BackendList { service } => q(Query::BackendList {
                    service: svc(&service)?,
                }),
                Self::ForwardAdd { service, to } => c(Command::ForwardAdd {
                    service: svc(&service)?,
                    to: be(&to)?,
                }),
                Self::ForwardDel { service } => c(Command::ForwardDel {
                    service: svc(&service)?,
                }),
                Self::AclAdd {
                    service,
                    order,
                    action,
                    prefix,
                    description,
                } => {
                    let rule = crate::config::AclRuleConfig {
                        order,
                        action: crate::config::parse_action(&action)?,
                        prefix: parse_prefix(&prefix).map_err(|e| format!("prefix: {e}"))?,
                        description,
                    };
                    c(Command::AclAdd {
                        service: svc(&service)?,
                        rule,
                    })
                }
                Self::AclDel { service, order } => c(Command::AclDel {
                    service: svc(&service)?,
                    order,
                }),
                Self::AclList { service } => q(Query::AclList {
                    service: svc(&service)?,
                }),
                Self::PipAdd { pip, dip } => c(Command::PipAdd {
                    pip: ip(&pip, "PIP")?,
                    dip: ip(&dip, "instance")?,
                }),
                Self::PipDel { pip } => c(Command::PipDel {
                    pip: ip(&pip, "PIP")?,
                }),
                Self::PipList => q(Query::PipList),
                Self::Status => q(Query::Status),
            }
        }
    }

    fn ask(r: &mut Reconciler<FakeMaps, FakeResolver>, req: Req) -> Response {
        match req.typed() {
            Ok(req) => r.handle(req).response,
            Err(m) => Response::error(ErrorKind::Invalid, m),
        }
    }

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

    const WEB: &str = "203.0.113.10:80/tcp";

    fn rec(ring_slots: u32) -> Reconciler<FakeMaps, FakeResolver> {
        let info = AgentInfo {
            ring_slots,
            ..AgentInfo::default()
        };
        Reconciler::new(FakeMaps::default(), FakeResolver::default(), info)
    }

    fn ok(r: &mut Reconciler<FakeMaps, FakeResolver>, req: Req) {
        if let Response::Error { message, .. } = ask(r, req.clone()) {
            panic!("{req:?}: {message}");
        }
    }

    fn add(r: &mut Reconciler<FakeMaps, FakeResolver>, svc: &str, backends: &[&str]) {
        ok(
            r,
            Req::VipAdd {
                service: svc.into(),
                settings: VipSettings {
                    table_size: Some(251),
                    ..VipSettings::default()
                },
            },
        );
        for b in backends {
            ok(
                r,
                Req::BackendAdd {
                    service: svc.into(),
                    backend: (*b).into(),
                    weight: None,
                },
            );
        }
    }

    /// The invariant the fast path relies on: every slot of every live table names an active
    /// backend.
    fn assert_tables_point_at_live_backends(m: &FakeMaps) {
        for info in m.services.values().filter(|i| i.table_len > 0) {
            for s in info.table_off..info.table_off + info.table_len {
                let id = m.ring[&s];
                assert!(
                    m.backends.get(&id).is_some_and(Backend::is_active),
                    "slot {s} → inactive backend {id}"
                );
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

    /// A reconciler over a copy of `r`'s maps (what a restarted agent finds pinned), with no
    /// writes recorded yet.
    fn restarted(r: &Reconciler<FakeMaps, FakeResolver>) -> Reconciler<FakeMaps, FakeResolver> {
        let mut maps = r.maps().clone();
        maps.ops.clear();
        let info = AgentInfo {
            ring_slots: r.info.ring_slots,
            ..AgentInfo::default()
        };
        Reconciler::new(maps, FakeResolver::default(), info)
    }

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
        r2.start(r.state().clone()).unwrap();
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
        let id_of = |r: &Reconciler<FakeMaps, FakeResolver>, a: &str| {
            r.applied[&WEB.parse::<ServiceSpec>().unwrap()].backends
                [&a.parse::<SocketAddr>().unwrap()]
        };
        let (id11, id12) = (id_of(&r, "192.0.2.11:80"), id_of(&r, "192.0.2.12:80"));
        let web_before = r.maps().services[&WEB.parse::<ServiceSpec>().unwrap().key()];
        let mut r2 = restarted(&r);
        // Leftovers of a crash: an entry of no live service and an unreferenced ACL set.
        r2.maps.backends.insert(
            900,
            backend_entry(4242, "192.0.2.99:80".parse().unwrap(), NextHop::default()),
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
        r2.start(want.state().clone()).unwrap();
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
        let web = r2.maps().services[&WEB.parse::<ServiceSpec>().unwrap().key()];
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
            .position(
                |o| matches!(o, Op::Service(v) if v.id == web.id && v.table_off == web.table_off),
            )
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
        r2.release_deferred(true);
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
        r2.start(want.state().clone()).unwrap();
        let info = r2.maps().services[&WEB.parse::<ServiceSpec>().unwrap().key()];
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

    #[test]
    fn reserving_live_ids_and_regions_carves_exactly_them() {
        let mut ids = Ids::new(1, 10);
        assert!(ids.reserve(5));
        assert!(!ids.reserve(5), "taken");
        assert!(!ids.reserve(0) && !ids.reserve(10), "out of range");
        let got: Vec<u32> = std::iter::from_fn(|| ids.alloc()).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 6, 7, 8, 9]);
        let mut ring = Ring::new(100);
        assert!(ring.reserve(10, 5));
        assert_eq!(ring.free, vec![(0, 10), (15, 85)]);
        assert!(!ring.reserve(12, 5), "overlaps a used region");
        assert!(!ring.reserve(95, 10), "past the end");
        assert!(ring.reserve(0, 10));
        assert_eq!(ring.alloc(85), Some(15));
        assert_eq!(ring.alloc(1), None);
    }

    /// Ids come lowest-free first, released ones are reused, and the range is respected.
    #[test]
    fn ids_reuse_the_lowest_free() {
        let mut ids = Ids::new(1, 5);
        assert_eq!(
            (ids.alloc(), ids.alloc(), ids.alloc()),
            (Some(1), Some(2), Some(3))
        );
        ids.free(2);
        ids.free(1);
        assert_eq!(ids.free_count(), 3);
        assert_eq!(
            (ids.alloc(), ids.alloc(), ids.alloc()),
            (Some(1), Some(2), Some(4))
        );
        assert_eq!(ids.alloc(), None);
        ids.free(9); // never handed out: no effect
        assert_eq!(ids.alloc(), None);
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
        // New backend entry, then a whole new region, then the one switching write.
        let [
            Op::Backend(id, true),
            Op::Slots(off, 251),
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
        r.resolver.resolved = true;
        r.tick().unwrap();
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
        r.tick().unwrap();
        assert!(r.maps().ops.is_empty(), "{:?}", r.maps().ops);
    }

    #[test]
    fn ring_regions_are_reused_after_the_grace_period() {
        let mut ring = Ring::new(1000);
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

    fn report(r: &mut Reconciler<FakeMaps, FakeResolver>, backend: &str, ok: bool) {
        let rep = ProbeReport {
            service: WEB.parse().unwrap(),
            backend: backend.parse().unwrap(),
            ok,
            detail: if ok {
                "HTTP 200".into()
            } else {
                "HTTP 500".into()
            },
        };
        r.observe(&rep).unwrap();
    }

    /// Slots per backend address of the web service's live table.
    fn shares(r: &Reconciler<FakeMaps, FakeResolver>) -> HashMap<String, u32> {
        let m = r.maps();
        let info = m.services[&WEB.parse::<ServiceSpec>().unwrap().key()];
        let mut out = HashMap::new();
        for s in info.table_off..info.table_off + info.table_len {
            let b = m.backends[&m.ring[&s]];
            let ip = addr::to_ip(&b.addr);
            *out.entry(format!("{ip}:{}", u16::from_be_bytes(b.port)))
                .or_default() += 1;
        }
        out
    }

    fn probed(r: &mut Reconciler<FakeMaps, FakeResolver>, extra: VipSettings) {
        let settings = VipSettings {
            table_size: Some(251),
            probe: Some("http/healthz".into()),
            unhealthy_after: Some(2),
            ..extra
        };
        ok(
            r,
            Req::VipAdd {
                service: WEB.into(),
                settings,
            },
        );
        for b in ["192.0.2.11", "192.0.2.12"] {
            ok(
                r,
                Req::BackendAdd {
                    service: WEB.into(),
                    backend: b.into(),
                    weight: None,
                },
            );
        }
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
        assert!(
            matches!(resp, Response::Error { message, .. } if message.contains("port forward"))
        );
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
            ("203.0.113.52", "2001:db8::1", "IPv6"),
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
        r.resolver.resolved = true;
        r.tick().unwrap();
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
}
