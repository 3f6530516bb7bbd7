//! The reconciler: the one writer of the maps. It owns the desired [`State`] and a mirror of
//! what the maps hold ([`Live`]), takes one [`Event`] at a time, and makes the maps match.
//!
//! The rooms:
//! * `alloc.rs`: table regions, ids, and their release after the grace period;
//! * `adopt.rs`: a restarted agent takes over what the pinned maps hold;
//! * `plan.rs`: pure: desired state + `Live` → the ordered writes;
//! * `apply.rs`: executes plans in the documented order (the ordering argument is there);
//! * `health.rs`: probe state, and which backends take new flows;
//! * `hops.rs`: resolved next hops, and which addresses a kernel change touches;
//! * `outbound.rs`: outbound rules' ids, held blocks and writes;
//! * `capacity.rs`: every capacity check, before any write;
//! * `views.rs`: status and stats, finished by a reader off the writer loop.
//!
//! A change is transactional: it is planned and applied against the candidate state, and
//! committed only if every write succeeds. If one fails, the state stays as it was and the
//! touched services are synced back to it (the mirror knows exactly what was written); the
//! answer says which happened. Slow work never runs here: conntrack walks and flow purges go to
//! tasks with their own map handles, netlink resolution to a thread of its own; their results
//! come back as events.

mod adopt;
mod alloc;
mod apply;
mod capacity;
mod explain;
mod health;
mod hops;
mod live;
mod outbound;
mod plan;
mod views;

#[cfg(test)]
mod tests;

use std::{collections::BTreeSet, net::IpAddr, time::Instant};

use lb_common::{
    addr::Addr,
    maps::{BackendId, ServiceInfo},
};
use tokio::sync::oneshot;

pub use self::{
    alloc::GRACE,
    health::{ProbeReport, ProbeTarget, Tunnel},
    hops::{Hop, NetChange, Resolution, ResolveJob, Resolver},
    live::Live,
    outbound::OutHold,
    views::{AgentInfo, FlowQuery, Pending},
};
use self::{
    alloc::{Alloc, Deferred, Exhausted},
    apply::Applier,
    health::HealthBook,
    hops::Hops,
    plan::{Inputs, Phase, Plan, Step},
};
use crate::{
    api::{Query, Request, Response},
    dataplane::{
        FlowPurge, MapOps, MapReader, PurgeJob,
        sweep::{Hold, SweepPolicy},
    },
    error::{ChangeError, MapOpError},
    spec::{ProbeSpec, ServiceSpec},
    state::{Change, Command, State},
};

/// Everything that reaches the writer.
#[derive(Debug)]
pub enum Event {
    /// A control-socket request and where its answer goes.
    Api(Request, oneshot::Sender<Response>),
    /// A probe result.
    Probe(ProbeReport),
    /// Kernel changes announced on the rtnetlink groups.
    Net(Vec<NetChange>),
    /// A resolution the reconciler asked for.
    Resolved(Resolution),
    /// A flow purge the reconciler asked for, done (or failed).
    Purged {
        job: PurgeJob,
        result: Result<usize, String>,
    },
    /// A new desired state from the config file (SIGHUP), and a tag for it (the agent's config
    /// digest) that comes back with the outcome.
    Reload {
        state: Box<State>,
        tag: String,
        /// Where `lb reload`'s answer goes (none for SIGHUP).
        reply: Option<oneshot::Sender<Response>>,
    },
    /// `lb reload` could not read or parse the file: the answer to send (nothing changes).
    ReloadRefused(String, oneshot::Sender<Response>),
    /// Periodic housekeeping: grace periods, retries.
    Tick,
    /// The slow safety net: re-resolve every next hop and the client routes.
    Resync,
    /// The sweeper walked the whole table and found no flow that still needs these VIP-swap
    /// holds (endpoint and the entry held, as the policy it followed named them).
    HoldsReleased(Vec<Hold>),
    /// The sweeper walked the whole table and found no flow using these held outbound blocks.
    OutboundReleased(Vec<OutHold>),
    /// The agent is stopping: the writer loop returns (the reconciler ignores it).
    Stop,
    /// A plain stop has begun: announce nothing from now on (`crate::announce`).
    StopAnnouncing,
}

/// An answer: ready now, or waiting for a reader to add what it reads from the maps.
#[derive(Debug)]
pub enum Answer {
    Now(Response),
    Read(Pending),
    /// Flows to delete, by the purger (which answers).
    Flush(FlowQuery),
}

/// What handling one event asks of the tasks around the writer.
#[derive(Debug, Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent signals to the writer, each read once"
)]
pub struct Effects {
    /// The answer to an API request, and where it goes.
    pub reply: Option<(oneshot::Sender<Response>, Answer)>,
    /// The desired state changed: save it, and sync the probes (and the sweeper's policy).
    pub state_changed: bool,
    /// The sweeper's policy changed without the desired state (VIP-swap holds released).
    pub sweep_changed: bool,
    /// A backend got another entry, or lost its entry, without the desired state changing (a
    /// write retried on a tick, say): sync the probes, since a probe through the tunnel is
    /// marked with its backend's entry.
    pub backend_ids_changed: bool,
    /// A backend went in or out of rotation by its probes (the desired state unchanged):
    /// what to announce may have changed.
    pub rotation_changed: bool,
    /// The outcome of a reload: its tag, or why it was refused (nothing changed then).
    pub reload: Option<Result<String, String>>,
    /// Resolve these (none is in flight when this is set).
    pub resolve: Option<ResolveJob>,
    /// Delete these flows.
    pub purge: Option<PurgeJob>,
}

/// The answer to one request, for callers that drive the reconciler synchronously.
#[derive(Debug)]
pub struct Outcome {
    pub response: Response,
    pub state_changed: bool,
}

/// What a change touches.
#[derive(Clone, Debug, Default)]
struct Touched {
    services: Vec<ServiceSpec>,
    pips: bool,
}

/// Refuses a service or forward whose VIP is one of the host's own addresses (`locals`, map
/// form, from netlink): the fast path would take the host's own traffic to that address for the
/// VIP's (its probes' answers, its connections), and the address's own services would be
/// unreachable.
fn refuse_local_vip<'a>(
    specs: impl IntoIterator<Item = &'a ServiceSpec>,
    locals: &BTreeSet<Addr>,
) -> Result<(), ChangeError> {
    for s in specs {
        if locals.contains(&lb_common::addr::from_ip(s.vip.ip())) {
            return Err(ChangeError::Invalid(format!(
                "VIP {} of {s} is one of this host's own addresses: the LB would take the \
                 host's own traffic to it (its probes' answers, its connections) for the VIP's; \
                 give the VIP an address of its own",
                s.vip.ip()
            )));
        }
    }
    Ok(())
}

/// Every address the desired state needs a next hop for, and the client routes: what an
/// agent resolves before [`Self::start`].
#[must_use]
pub fn initial_job(state: &State) -> ResolveJob {
    ResolveJob {
        addrs: state
            .services
            .values()
            .flat_map(|s| s.backends.keys().map(std::net::SocketAddr::ip))
            .chain(state.pips.values().copied())
            .chain(outbound_addrs(state))
            .collect(),
        routes: true,
    }
}

/// Every backend address an outbound rule of `state` covers (their next hops are kept).
fn outbound_addrs(state: &State) -> impl Iterator<Item = IpAddr> + '_ {
    state
        .outbound
        .values()
        .flat_map(|r| crate::outbound::covered(r, state))
        .map(IpAddr::from)
}

/// The single writer of the maps.
pub struct Reconciler<M> {
    maps: M,
    info: AgentInfo,
    state: State,
    live: Live,
    alloc: Alloc,
    health: HealthBook,
    hops: Hops,
    /// Flow deletions decided while handling the current event.
    purge: PurgeJob,
    /// Addresses to resolve once no resolution is in flight.
    want: ResolveJob,
    /// The client routes of the resolution [`Self::prime`] took in, written by [`Self::start`].
    primed_routes: Option<Vec<(u32, Addr, lb_common::maps::NextHop)>>,
    /// The host's own addresses of that resolution, written by [`Self::start`] too.
    primed_locals: Option<Vec<Addr>>,
    resolving: bool,
    /// Purges that failed: retried on the next tick.
    failed_purges: PurgeJob,
    /// Services (and the PIPs) whose maps could not be brought back after a failed change:
    /// synced again on every tick until they match.
    dirty: BTreeSet<ServiceSpec>,
    dirty_pips: bool,
    /// False once a plain stop has begun: [`Self::announced`] is empty from then on.
    announcing: bool,
    /// Until when `lb trace` sampling is on (the tick turns it off then).
    trace_until: Option<Instant>,
    /// Outbound rules' ids and held blocks.
    outbound: outbound::OutboundBook,
}

impl<M: MapOps> Reconciler<M> {
    /// A reconciler over maps that may hold entries from an earlier agent: [`Self::start`]
    /// adopts them.
    pub fn new(maps: M, info: AgentInfo) -> Self {
        Self {
            alloc: Alloc::new(info.ring_slots),
            maps,
            info,
            state: State::default(),
            live: Live::default(),
            health: HealthBook::default(),
            hops: Hops::default(),
            purge: PurgeJob::default(),
            want: ResolveJob::default(),
            primed_routes: None,
            primed_locals: None,
            resolving: false,
            failed_purges: PurgeJob::default(),
            dirty: BTreeSet::new(),
            dirty_pips: false,
            announcing: true,
            trace_until: None,
            outbound: outbound::OutboundBook::default(),
        }
    }

    /// The maps (tests read counters through them).
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The maps, writable (tests plant entries).
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// The desired state (what the state file saves).
    #[must_use]
    pub fn state(&self) -> &State {
        &self.state
    }

    /// What the maps hold, as the reconciler knows it.
    #[must_use]
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Takes in a resolution made before anything is written (the agent resolves the initial
    /// state's addresses and the client routes first, so the first entries are written
    /// resolved and [`Self::start`] writes the routes).
    pub fn prime(&mut self, r: &Resolution) {
        self.hops.learn(r);
        self.primed_routes.clone_from(&r.routes);
        self.primed_locals.clone_from(&r.locals);
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            state: &self.state,
            live: &self.live,
            health: &self.health,
            hops: &self.hops,
        }
    }

    /// Runs steps through the applier.
    fn run(&mut self, steps: Vec<Step>, writes: &mut usize) -> Result<(), MapOpError> {
        Applier {
            maps: &mut self.maps,
            live: &mut self.live,
            alloc: &mut self.alloc,
            purge: &mut self.purge,
            writes,
        }
        .run(steps)
    }

    /// Runs a whole plan; if it fails, gives back what it allocated and nothing uses.
    fn run_plan(&mut self, p: Plan, writes: &mut usize) -> Result<(), MapOpError> {
        let fresh = p.fresh.clone();
        let r = Applier {
            maps: &mut self.maps,
            live: &mut self.live,
            alloc: &mut self.alloc,
            purge: &mut self.purge,
            writes,
        }
        .plan(p);
        if r.is_err() {
            let orphans = fresh.give_back(&mut self.live, &mut self.alloc);
            if let Err(e) = self.run(orphans, writes) {
                tracing::warn!(error = %e, "retiring the entries of a failed plan failed");
            }
        }
        r
    }

    /// Plans with `f`; if an allocator is full while something waits out its grace period,
    /// waits for it once and plans again.
    fn plan_with_grace(
        &mut self,
        f: impl Fn(Inputs<'_>, &mut Alloc) -> Result<Plan, Exhausted>,
    ) -> Result<Plan, ChangeError> {
        let first = {
            let i = Inputs {
                state: &self.state,
                live: &self.live,
                health: &self.health,
                hops: &self.hops,
            };
            f(i, &mut self.alloc)
        };
        match first {
            Ok(p) => Ok(p),
            Err(_) if self.alloc.has_deferred() => {
                self.release_deferred(true);
                let i = Inputs {
                    state: &self.state,
                    live: &self.live,
                    health: &self.health,
                    hops: &self.hops,
                };
                f(i, &mut self.alloc).map_err(|Exhausted(m)| ChangeError::Capacity(m))
            }
            Err(Exhausted(m)) => Err(ChangeError::Capacity(m)),
        }
    }

    /// Brings one service, and its VIP's entry, in line with the desired state: the service's
    /// prepared writes, the VIP entry widened for what the switch brings, the switch, what it
    /// made unused, and the VIP entry trimmed (ordering argument in `apply.rs`).
    ///
    /// Until the switch, a failure gives back what the plan allocated. Once the switch is
    /// written the change is live, so everything after it runs even if one write fails (a
    /// skipped release would leak a region or an id); the first failure is returned.
    fn sync_service(&mut self, spec: &ServiceSpec, writes: &mut usize) -> Result<(), ChangeError> {
        let p = self.plan_with_grace(|i, a| plan::service(spec, i, a))?;
        let ip = spec.vip.ip();
        let new_service = p.fresh.service;
        let sid = new_service.or_else(|| self.live.services.get(spec).map(|i| i.id));
        let mut eps = sid.map_or_else(BTreeSet::new, |id| plan::endpoints_of(id, &self.live));
        let fresh = p.fresh.clone();
        let Plan {
            prepare,
            switch,
            after,
            ..
        } = p;
        let r = (|| -> Result<(), ChangeError> {
            self.run(prepare, writes)?;
            // The endpoints' reverse-service entries, for the backends the switch brings.
            if let Some(id) = sid {
                let now = plan::endpoints_of(id, &self.live);
                let steps = plan::replies(&now, &self.live, &self.state, Some((id, spec)));
                eps.extend(now);
                self.run(steps, writes)?;
            }
            let before =
                self.plan_with_grace(|i, a| plan::vip(ip, Phase::Before { new_service }, i, a))?;
            self.run_plan(before, writes)?;
            self.run(switch.into_iter().collect(), writes)?;
            Ok(())
        })();
        if let Err(e) = r {
            let orphans = fresh.give_back(&mut self.live, &mut self.alloc);
            if let Err(e) = self.run(orphans, writes) {
                tracing::warn!(error = %e, "retiring the entries of a failed plan failed");
            }
            // Entries written for backends the failed plan gave back name them no more.
            let steps = plan::replies(&eps, &self.live, &self.state, None);
            if let Err(e) = self.run(steps, writes) {
                tracing::warn!(error = %e, "restoring reverse-service entries failed");
            }
            return Err(e);
        }
        let mut first: Option<ChangeError> = None;
        for s in after {
            if let Err(e) = self.run(vec![s], writes) {
                first.get_or_insert(e.into());
            }
        }
        // What the switch and the retirements left of the endpoints' entries.
        let steps = plan::replies(&eps, &self.live, &self.state, None);
        if let Err(e) = self.run(steps, writes) {
            first.get_or_insert(e.into());
        }
        match self.plan_with_grace(|i, a| plan::vip(ip, Phase::After, i, a)) {
            Ok(p) => {
                if let Err(e) = self.run_plan(p, writes) {
                    first.get_or_insert(e.into());
                }
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Retires every active backend entry no live service claims (its service is gone, or
    /// another entry now serves its address there): what a change that failed between deleting
    /// a service and retiring its backends leaves.
    fn sweep_orphans(&mut self, writes: &mut usize) -> Result<(), MapOpError> {
        let ids: BTreeSet<u32> = self.live.services.values().map(|i| i.id).collect();
        let claimed = |id: &BackendId, b: &lb_common::maps::Backend| {
            ids.contains(&b.service)
                && self
                    .live
                    .backends_of(b.service)
                    .and_then(|m| m.get(&live::backend_addr(b)))
                    == Some(id)
        };
        let mut orphans: Vec<BackendId> = self
            .live
            .backends
            .iter()
            .filter(|(id, b)| !claimed(id, b))
            .map(|(id, _)| *id)
            .collect();
        orphans.sort_unstable();
        let eps: BTreeSet<_> = orphans
            .iter()
            .filter_map(|id| self.live.backends.get(id).map(live::endpoint))
            .collect();
        let steps = orphans
            .into_iter()
            .flat_map(|id| {
                [
                    Step::RetireBackend(id),
                    Step::Purge(PurgeJob {
                        backends: BTreeSet::from([id]),
                        ..PurgeJob::default()
                    }),
                ]
            })
            .collect();
        self.run(steps, writes)?;
        // Their endpoints' reverse-service entries name a remaining user, or go.
        let steps = plan::replies(&eps, &self.live, &self.state, None);
        self.run(steps, writes)
    }

    /// Makes the PIP maps match the desired PIPs.
    fn sync_pips(&mut self, writes: &mut usize) -> Result<(), ChangeError> {
        let steps = plan::pips(self.inputs());
        Ok(self.run(steps, writes)?)
    }

    /// Makes the outbound maps match the rules: every change may move them (a service's
    /// backends or ports, a PIP), and the plan is empty when nothing did.
    fn sync_outbound(&mut self, writes: &mut usize) -> Result<(), ChangeError> {
        self.outbound.assign(&self.state, &self.live);
        let d = outbound::desired(&self.state, &self.live, &self.hops, &self.outbound)
            .map_err(ChangeError::Invalid)?;
        self.run(outbound::plan(&d, &self.live), writes)?;
        self.outbound.held = d.held;
        Ok(())
    }

    fn converge(&mut self, t: &Touched, writes: &mut usize) -> Result<(), ChangeError> {
        for s in &t.services {
            self.sync_service(s, writes)?;
        }
        if t.pips {
            self.sync_pips(writes)?;
        }
        self.sync_outbound(writes)
    }

    /// Applies a candidate desired state to the maps and commits it only if every write
    /// succeeds; otherwise the state stays as it was and the touched services are synced back
    /// to it. Capacity is checked before anything is written.
    fn transact(
        &mut self,
        next: State,
        t: &Touched,
        changed: Option<&ServiceSpec>,
    ) -> Result<(), ChangeError> {
        capacity::check(
            &next,
            &self.live,
            &self.alloc,
            self.info.ring_slots,
            changed,
        )?;
        let started = Instant::now();
        let prev = std::mem::replace(&mut self.state, next);
        let mut writes = 0;
        match self.converge(t, &mut writes) {
            Ok(()) => {
                self.committed(t);
                tracing::info!(
                    services = t.services.len(),
                    writes,
                    ms = started.elapsed().as_millis(),
                    "change applied"
                );
                Ok(())
            }
            Err(e) => {
                self.state = prev;
                let back = self
                    .converge(t, &mut writes)
                    .and_then(|()| Ok(self.sweep_orphans(&mut writes)?));
                let kind_of = |m: String| match &e {
                    ChangeError::Capacity(_) => ChangeError::Capacity(m),
                    _ => ChangeError::Failed(m),
                };
                match back {
                    Ok(()) => {
                        tracing::warn!(error = %e, "change failed and was rolled back");
                        Err(kind_of(format!(
                            "{e}; nothing changed: the maps were brought back to the previous state"
                        )))
                    }
                    Err(e2) => {
                        tracing::error!(error = %e, rollback = %e2, "change failed, and so did the rollback");
                        self.dirty.extend(t.services.iter().copied());
                        self.dirty_pips |= t.pips;
                        Err(kind_of(format!(
                            "{e}; the desired state is unchanged, but bringing the maps back to it failed too ({e2}); the agent retries every tick"
                        )))
                    }
                }
            }
        }
    }

    /// After a commit: health of what is gone is forgotten, and addresses never resolved are
    /// queued for resolution.
    fn committed(&mut self, t: &Touched) {
        for spec in &t.services {
            match self.state.services.get(spec) {
                Some(svc) => {
                    self.health.prune(spec, |a| svc.backends.contains_key(a));
                    for a in svc.backends.keys() {
                        if !self.hops.knows(a.ip()) {
                            self.want.addrs.insert(a.ip());
                        }
                    }
                }
                None => self.health.prune(spec, |_| false),
            }
        }
        if t.pips {
            for d in self.state.pips.values() {
                if !self.hops.knows(*d) {
                    self.want.addrs.insert(*d);
                }
            }
        }
        for a in outbound_addrs(&self.state) {
            if !self.hops.knows(a) {
                self.want.addrs.insert(a);
            }
        }
    }

    /// Releases what waited out its grace period (with `wait`, everything, after waiting).
    fn release_deferred(&mut self, wait: bool) {
        for d in self.alloc.due(wait) {
            match d {
                Deferred::Region(off, len) => {
                    self.live.regions.remove(&off);
                    self.alloc.ring.release(off, len);
                }
                Deferred::Backend(id) => self.alloc.backends.free(id),
                Deferred::Acl(aid, prefixes) => {
                    let mut w = 0;
                    match self.run(apply::delete_set(aid, &prefixes), &mut w) {
                        Ok(()) => self.alloc.acl_sets.free(aid),
                        Err(e) => {
                            // Kept (and retried): a reused id must not find old entries.
                            tracing::warn!(error = %e, set = aid, "removing an old ACL set failed; retrying later");
                            self.alloc.defer(Deferred::Acl(aid, prefixes));
                        }
                    }
                }
            }
        }
    }

    /// Applies the initial desired state over whatever a previous agent left in the pinned
    /// maps: adopts it (`adopt.rs`), then syncs every service, live or desired. No serving
    /// entry is cleared first; entries nothing wants are removed the usual way.
    ///
    /// # Errors
    /// A capacity limit of the desired state (checked before anything is written), a new table
    /// that fits nowhere even in place (see below), or a map failure.
    pub fn start(&mut self, state: State) -> Result<(), ChangeError>
    where
        M: FlowPurge,
    {
        capacity::check(
            &state,
            &Live::default(),
            &Alloc::new(self.info.ring_slots),
            self.info.ring_slots,
            None,
        )?;
        if let Some(locals) = &self.primed_locals {
            refuse_local_vip(state.services.keys(), &locals.iter().copied().collect())?;
        }
        self.state = state;
        // A trace of an agent that died mid-trace stays on in the pinned config: off it goes.
        if let Err(e) = self.trace_off() {
            tracing::warn!(error = %e, "cannot turn off a previous agent's lb trace");
        }
        let (live, left) = adopt::adopt(
            &mut self.maps,
            &self.state,
            &mut self.alloc,
            &mut self.health,
        )?;
        self.live = live;
        // A previous agent's VIP-swap holds, which only the maps remember: a shared entry that
        // names another VIP or port than its backend's service is one (the planner writes no
        // other such entry). Held again, so the flows from before that swap keep their
        // replies; the sweeper releases them as usual.
        let held: Vec<_> = self
            .live
            .revs
            .iter()
            .filter(|(ep, r)| {
                r.flags == lb_common::maps::REV_F_SHARED
                    && plan::unheld_reply(**ep, &self.live, &self.state, None).is_some_and(|w| {
                        w.backend == r.backend && (w.vip, w.vport) != (r.vip, r.vport)
                    })
            })
            .map(|(ep, r)| (*ep, *r))
            .collect();
        self.live.holds.extend(held);
        // Services going away first: their service ids are free at once, their regions and
        // backend ids after the grace period (which the planner waits out when short).
        let (mut specs, keep): (Vec<ServiceSpec>, Vec<ServiceSpec>) = self
            .live
            .services
            .keys()
            .copied()
            .partition(|s| !self.state.services.contains_key(s));
        specs.extend(keep);
        specs.extend(
            self.state
                .services
                .keys()
                .filter(|s| !self.live.services.contains_key(*s)),
        );
        let mut writes = 0;
        for s in specs {
            match self.sync_service(&s, &mut writes) {
                // The new table does not fit next to the live ones (a config edited while no
                // agent ran, with bigger tables and a nearly full ring): swap this one in place.
                // Its service entry first points at no table, so new flows to it are dropped
                // (counted as `drop_no_backend`) until the new table is written; established
                // flows keep their backends through conntrack.
                Err(ChangeError::Capacity(why)) if self.live.table(&s).is_some() => {
                    tracing::warn!(service = %s, %why, "no room for the new table next to the live one; replacing it in place (new flows to this service are dropped meanwhile)");
                    let p = plan::drop_table(&s, &self.live);
                    self.run_plan(p, &mut writes)?;
                    self.release_deferred(true);
                    self.sync_service(&s, &mut writes)?;
                }
                r => r?,
            }
        }
        // A VIP with a service was synced with it; only the entries of addresses left with
        // none remain.
        for ip in left.vips {
            if self.live.services_on(ip).next().is_none() {
                let p = self.plan_with_grace(|i, a| plan::vip(ip, Phase::After, i, a))?;
                self.run_plan(p, &mut writes)?;
            }
        }
        let mut retire = Vec::new();
        for id in left.backends {
            if self.live.backends.contains_key(&id) {
                retire.push(Step::RetireBackend(id));
                retire.push(Step::Purge(PurgeJob {
                    backends: BTreeSet::from([id]),
                    ..PurgeJob::default()
                }));
            }
        }
        self.run(retire, &mut writes)?;
        // Reverse-service entries of endpoints no service uses any more (an earlier agent's),
        // and filter bits no entry needs, or that an entry needs and lacks.
        let eps = self.live.revs.keys().copied().collect();
        let steps = plan::replies(&eps, &self.live, &self.state, None);
        self.run(steps, &mut writes)?;
        let steps = plan::ours_words(&self.live);
        self.run(steps, &mut writes)?;
        for (aid, prefixes) in left.acl_sets {
            self.alloc.defer(Deferred::Acl(aid, prefixes));
        }
        self.sync_pips(&mut writes)?;
        self.sync_outbound(&mut writes)?;
        // Client routes as the primed resolution found them: nothing else may bring them soon
        // (with every neighbour already valid, the kernel announces no change).
        if let Some(routes) = self.primed_routes.take() {
            let steps = plan::routes(&routes, &self.live);
            self.run(steps, &mut writes)?;
        }
        if let Some(locals) = self.primed_locals.take() {
            let steps = self.locals_plan(&locals);
            self.run(steps, &mut writes)?;
        }
        self.committed(&Touched {
            services: self.state.services.keys().copied().collect(),
            pips: true,
        });
        tracing::info!(
            services = self.live.services.len(),
            writes,
            "initial state applied"
        );
        Ok(())
    }

    /// The work queued outside any event (after [`Self::start`]: the purges of retired
    /// leftovers, the first resolutions), as effects to dispatch.
    pub fn flush(&mut self) -> Effects {
        let mut fx = Effects::default();
        if !self.resolving && !self.want.is_empty() {
            fx.resolve = Some(std::mem::take(&mut self.want));
            self.resolving = true;
        }
        if !self.purge.is_empty() {
            fx.purge = Some(std::mem::take(&mut self.purge));
        }
        fx
    }

    /// Handles one event; what it asks of the tasks around the writer comes back as effects.
    pub fn handle_event(&mut self, ev: Event) -> Effects {
        let mut fx = Effects::default();
        let ids = self.live.ids_generation;
        match ev {
            Event::Api(Request::Change(cmd), tx) => {
                let (resp, changed) = match self.change(&cmd) {
                    Ok(c) => (Response::Done(c), true),
                    Err(e) => (e.into(), false),
                };
                fx.reply = Some((tx, Answer::Now(resp)));
                fx.state_changed = changed;
            }
            // Handled by the agent's writer loop, which reads the file off the writer; a
            // reconciler driven without it has no file.
            Event::Api(Request::Reload, tx) => {
                let answer = Response::error(
                    crate::error::ErrorKind::Invalid,
                    "no config file to reload here",
                );
                fx.reply = Some((tx, Answer::Now(answer)));
            }
            Event::Api(
                Request::FlushFlows {
                    service,
                    backend,
                    client,
                },
                tx,
            ) => {
                let a = match self.views().flows(service, backend, client, None) {
                    Ok(q) => Answer::Flush(q),
                    Err(e) => Answer::Now(e.into()),
                };
                fx.reply = Some((tx, a));
            }
            Event::Api(
                Request::Trace {
                    vip,
                    port,
                    rate,
                    seconds,
                },
                tx,
            ) => {
                let r = self.trace_on(vip, port, rate, seconds);
                fx.reply = Some((tx, Answer::Now(r.unwrap_or_else(Into::into))));
            }
            Event::Api(Request::TraceStop, tx) => {
                let r = self.trace_off().map(|()| Response::TraceStopped);
                fx.reply = Some((tx, Answer::Now(r.unwrap_or_else(Into::into))));
            }
            Event::Api(Request::Query(q), tx) => {
                let a = match self.pending(q) {
                    Ok(p) => Answer::Read(p),
                    Err(e) => Answer::Now(e.into()),
                };
                fx.reply = Some((tx, a));
            }
            Event::Probe(r) => fx.rotation_changed = self.observe(&r),
            Event::Net(changes) => {
                let wanted = self.hop_addresses();
                let job = self.hops.touched(&changes, &wanted, &self.info.ifindexes);
                self.want.merge(job);
            }
            Event::Resolved(r) => {
                self.resolving = false;
                self.resolved(&r);
            }
            Event::Purged { job, result } => self.purged(job, result),
            Event::Reload { state, tag, reply } => {
                let r = self.reload(*state);
                fx.state_changed = r.is_ok();
                let (outcome, answer) = match r {
                    // The writer fills in what the file replaced.
                    Ok(()) => (
                        Ok(tag),
                        Response::Reloaded {
                            changed: true,
                            changes: Vec::new(),
                        },
                    ),
                    Err(e) => (Err(e.to_string()), e.into()),
                };
                fx.reload = Some(outcome);
                if let Some(tx) = reply {
                    fx.reply = Some((tx, Answer::Now(answer)));
                }
            }
            Event::ReloadRefused(why, tx) => {
                fx.reply = Some((
                    tx,
                    Answer::Now(Response::error(crate::error::ErrorKind::Invalid, why)),
                ));
            }
            Event::Tick => self.tick(),
            Event::HoldsReleased(released) => {
                fx.sweep_changed = self.release_holds(&released);
            }
            Event::OutboundReleased(released) => {
                if self.outbound.release(&released) {
                    fx.sweep_changed = true;
                    let mut writes = 0;
                    if let Err(e) = self.sync_outbound(&mut writes) {
                        tracing::warn!(error = %e, "placing outbound blocks after a hold was released failed; retried on the next change");
                    }
                }
            }
            Event::Stop => {}
            Event::StopAnnouncing => {
                self.announcing = false;
                fx.rotation_changed = true;
            }
            Event::Resync => {
                let wanted = self.hop_addresses();
                self.hops.retain(&wanted);
                self.want.merge(ResolveJob {
                    addrs: wanted,
                    routes: true,
                });
            }
        }
        self.release_deferred(false);
        let queued = self.flush();
        fx.resolve = queued.resolve;
        fx.purge = queued.purge;
        fx.backend_ids_changed = self.live.ids_generation != ids;
        fx
    }

    /// Applies one command: checked on a copy of the state, then applied transactionally.
    fn change(&mut self, cmd: &Command) -> Result<Change, ChangeError> {
        if let Command::VipSwap { a, b } = cmd {
            return self.swap(*a, *b, cmd);
        }
        let mut next = self.state.clone();
        let change = next.apply(cmd)?;
        if let Change::ServiceAdded { service } | Change::ForwardAdded { service, .. } = &change {
            refuse_local_vip(std::iter::once(service), &self.live.locals)?;
            if let Some(st) = next.services.get(service) {
                crate::config::check_encap(&self.info.encap, service, &st.settings)
                    .map_err(ChangeError::Invalid)?;
            }
        }
        let t = match change.service() {
            Some(s) => Touched {
                services: vec![*s],
                pips: false,
            },
            None => Touched {
                services: Vec::new(),
                pips: true,
            },
        };
        self.transact(next, &t, change.service())?;
        Ok(change)
    }

    /// Exchanges two VIPs (`lb vip swap`) as one transaction. The service entries move as they
    /// are (`plan::swap`): each switches in one update, and keeps its id, table and backend
    /// ids, so established flows keep their backends; the endpoints' reverse-service entries
    /// are held as they were, so those flows' replies still find the VIP they were addressed
    /// to. Then every touched service is converged as usual (nothing to rebuild). If any write
    /// fails, the entries are put back as they were and the state is unchanged.
    fn swap(&mut self, a: IpAddr, b: IpAddr, cmd: &Command) -> Result<Change, ChangeError> {
        let mut next = self.state.clone();
        let change = next.apply(cmd)?;
        let Change::VipsSwapped { services, .. } = &change else {
            unreachable!("a swap command gives a swap change");
        };
        let started = Instant::now();
        let rename = |pairs: &[(ServiceSpec, ServiceSpec)], s: &ServiceSpec| {
            pairs.iter().find(|(from, _)| from == s).map(|(_, to)| *to)
        };
        let forth = services.clone();
        let back: Vec<_> = forth.iter().map(|(f, t)| (*t, *f)).collect();
        let before: Vec<(ServiceSpec, ServiceInfo)> = self
            .live
            .services
            .iter()
            .filter(|(s, _)| s.vip.ip() == a || s.vip.ip() == b)
            .map(|(s, i)| (*s, *i))
            .collect();
        let vips = [
            (a, self.live.vips.get(&a).copied()),
            (b, self.live.vips.get(&b).copied()),
        ];
        let (holds, steps) = plan::swap(a, b, &self.live);
        let held_before = self.live.holds.clone();
        for (ep, h) in &holds {
            self.live.holds.entry(*ep).or_insert(*h);
        }
        let mut touched: Vec<ServiceSpec> = forth.iter().flat_map(|(f, t)| [*f, *t]).collect();
        touched.sort_unstable();
        touched.dedup();
        let scope = Touched {
            services: touched,
            pips: false,
        };
        let prev = std::mem::replace(&mut self.state, next);
        self.health.rename(|s| rename(&forth, s));
        let mut writes = 0;
        let outcome = self
            .run(steps, &mut writes)
            .map_err(ChangeError::from)
            .and_then(|()| self.converge(&scope, &mut writes));
        match outcome {
            Ok(()) => {
                self.committed(&scope);
                tracing::info!(
                    %a,
                    %b,
                    services = forth.len(),
                    held_endpoints = holds.len(),
                    writes,
                    ms = started.elapsed().as_millis(),
                    "VIPs swapped"
                );
                Ok(change)
            }
            Err(e) => {
                self.state = prev;
                self.health.rename(|s| rename(&back, s));
                let back_steps = plan::unswap((a, b), &before, &vips, &self.live);
                let restored = self.run(back_steps, &mut writes).map_err(ChangeError::from);
                self.live.holds = held_before;
                let restored = restored.and_then(|()| self.converge(&scope, &mut writes));
                match restored {
                    Ok(()) => {
                        tracing::warn!(error = %e, "VIP swap failed and was rolled back");
                        Err(ChangeError::Failed(format!(
                            "{e}; nothing changed: both VIPs were put back as they were"
                        )))
                    }
                    Err(e2) => {
                        tracing::error!(error = %e, rollback = %e2, "VIP swap failed, and so did the rollback");
                        self.dirty.extend(scope.services.iter().copied());
                        Err(ChangeError::Failed(format!(
                            "{e}; the desired state is unchanged, but bringing the maps back to it failed too ({e2}); the agent retries every tick"
                        )))
                    }
                }
            }
        }
    }

    /// Drops the VIP-swap holds the sweeper found no flow for (those still as it saw them,
    /// whose endpoint would still name the VIP it checked for), and rewrites their endpoints'
    /// reverse-service entries as the state wants them.
    fn release_holds(&mut self, released: &[Hold]) -> bool {
        let mut eps = BTreeSet::new();
        for h in released {
            let want = plan::unheld_reply(h.ep, &self.live, &self.state, None);
            if self.live.holds.get(&h.ep) == Some(&h.held)
                && want.is_some_and(|w| (w.vip, w.vport) == h.want)
            {
                self.live.holds.remove(&h.ep);
                eps.insert(h.ep);
            }
        }
        if eps.is_empty() {
            return false;
        }
        let steps = plan::replies(&eps, &self.live, &self.state, None);
        let mut writes = 0;
        match self.run(steps, &mut writes) {
            Ok(()) => tracing::info!(
                endpoints = eps.len(),
                writes,
                "VIP-swap holds released: no flow from before the swap is left"
            ),
            Err(e) => {
                // Held again, so the next sweep releases them again (the writes that did go
                // through are in `revs`; the planner skips what matches).
                tracing::warn!(error = %e, "rewriting released reverse-service entries failed; the next sweep retries");
                for h in released {
                    if eps.contains(&h.ep) {
                        self.live.holds.insert(h.ep, h.held);
                    }
                }
            }
        }
        true
    }

    /// Replaces the whole desired state (a config reload), transactionally: services that go
    /// away are synced first (they free room), then the rest.
    fn reload(&mut self, next: State) -> Result<(), ChangeError> {
        refuse_local_vip(next.services.keys(), &self.live.locals)?;
        let mut gone: Vec<ServiceSpec> = self
            .state
            .services
            .keys()
            .filter(|s| !next.services.contains_key(*s))
            .copied()
            .collect();
        gone.extend(next.services.keys().copied());
        let t = Touched {
            services: gone,
            pips: true,
        };
        self.transact(next, &t, None)
    }

    /// The pending answer to a query (finished by a reader).
    fn pending(&self, q: Query) -> Result<Pending, ChangeError> {
        self.views().query(q)
    }

    fn views(&self) -> views::Source<'_> {
        views::Source {
            state: &self.state,
            live: &self.live,
            health: &self.health,
            info: &self.info,
            ring_used: self.alloc.ring.used(),
            trace_left_s: self
                .trace_until
                .and_then(|t| t.checked_duration_since(Instant::now()))
                .map(|d| d.as_secs() + 1),
            outbound: &self.outbound,
            announcing: self.announcing,
        }
    }

    /// Takes one probe result. A change of health re-balances the service's new flows; where
    /// `established` rebalances (`rebalance`, or `auto` for a UDP service), a backend going
    /// down also loses its tracked flows. Whether the backend's health changed.
    fn observe(&mut self, r: &ProbeReport) -> bool {
        let Some(svc) = self.state.services.get(&r.service) else {
            return false;
        };
        if !svc.backends.contains_key(&r.backend) {
            return false; // a report from a probe stopped meanwhile
        }
        let (thresholds, established) = (svc.settings.thresholds, svc.settings.established);
        let Some(t) = self.health.observe(r, thresholds) else {
            return false;
        };
        tracing::info!(service = %r.service, backend = %r.backend, from = ?t.from, to = ?t.to, detail = %r.detail, "backend health changed");
        let mut writes = 0;
        if let Err(e) = self.sync_service(&r.service, &mut writes) {
            tracing::warn!(service = %r.service, error = %e, "applying a health change failed; retrying every tick");
            self.dirty.insert(r.service);
        }
        if t.to == lb_common::health::Health::Down
            && established.rebalances(r.service.proto)
            && let Some((_, id)) = self
                .live
                .backends_of_spec(&r.service)
                .find(|(a, _)| **a == r.backend)
        {
            tracing::info!(service = %r.service, backend = %r.backend, "rebalancing its established flows");
            self.purge.merge(PurgeJob {
                backends: BTreeSet::from([*id]),
                ..PurgeJob::default()
            });
        }
        true
    }

    /// Takes in a resolution: rewrites the backend entries and PIPs whose next hop moved, and
    /// the client routes if they came with it.
    /// The writes for the host's own addresses, reporting those past the map's capacity: a
    /// stateless service's replies to them would be translated rather than passed.
    fn locals_plan(&self, locals: &[Addr]) -> Vec<Step> {
        let cap = lb_common::consts::MAX_LOCALS as usize;
        let v6 = locals
            .iter()
            .filter(|a| lb_common::addr::as_v6(a).is_some())
            .count();
        if v6.max(locals.len() - v6) > cap {
            tracing::warn!(
                addresses = locals.len(),
                kept_per_family = cap,
                "more local addresses than LB_LOCAL4 or LB_LOCAL6 holds; stateless replies to the others are translated, not passed"
            );
        }
        plan::locals(locals, &self.live)
    }

    fn resolved(&mut self, r: &Resolution) {
        self.hops.learn(r);
        let addrs: BTreeSet<IpAddr> = r.hops.iter().map(|(ip, _)| *ip).collect();
        let mut steps = plan::next_hops(&addrs, &self.live, &self.hops);
        let moved = steps.len();
        steps.extend(plan::pips(self.inputs()));
        // New next hops of covered backends (the state is unchanged, so no block moves).
        self.outbound.assign(&self.state, &self.live);
        if let Ok(d) = outbound::desired(&self.state, &self.live, &self.hops, &self.outbound) {
            steps.extend(outbound::plan(&d, &self.live));
        }
        if let Some(routes) = &r.routes {
            steps.extend(plan::routes(routes, &self.live));
        }
        if let Some(locals) = &r.locals {
            steps.extend(self.locals_plan(locals));
            // An address the host took after the VIP was set up: said, not undone.
            let set: BTreeSet<Addr> = locals.iter().copied().collect();
            if let Err(e) = refuse_local_vip(self.state.services.keys(), &set) {
                tracing::warn!(error = %e, "a VIP is now one of this host's own addresses");
            }
        }
        let mut writes = 0;
        match self.run(steps, &mut writes) {
            Ok(()) if writes > 0 => {
                tracing::info!(backends = moved, writes, "next hops updated");
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "writing next hops failed; the next resolution retries");
            }
        }
    }

    fn purged(&mut self, job: PurgeJob, result: Result<usize, String>) {
        match result {
            Ok(n) => {
                for id in apply::released_ids(&job, &self.live) {
                    self.alloc.defer(Deferred::Backend(id));
                }
                if n > 0 {
                    tracing::info!(flows = n, "tracked flows purged");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging tracked flows failed; retrying on the next tick");
                self.failed_purges.merge(job);
            }
        }
    }

    /// Retries what failed: syncs of dirty services, purges.
    fn tick(&mut self) {
        if self.trace_until.is_some_and(|t| t <= Instant::now()) {
            match self.trace_off() {
                Ok(()) => tracing::info!("lb trace: its time is up; tracing is off"),
                Err(e) => tracing::warn!(error = %e, "lb trace: cannot turn tracing off; retried"),
            }
        }
        let mut writes = 0;
        for spec in std::mem::take(&mut self.dirty) {
            if let Err(e) = self.sync_service(&spec, &mut writes) {
                tracing::warn!(service = %spec, error = %e, "still failing to sync");
                self.dirty.insert(spec);
            }
        }
        if self.dirty_pips {
            self.dirty_pips = self.sync_pips(&mut writes).is_err();
        }
        if !self.failed_purges.is_empty() {
            self.purge.merge(std::mem::take(&mut self.failed_purges));
        }
    }

    /// Turns `lb trace` sampling on for `seconds`; one trace at a time.
    fn trace_on(
        &mut self,
        vip: Option<IpAddr>,
        port: Option<u16>,
        rate: Option<u32>,
        seconds: u32,
    ) -> Result<Response, ChangeError> {
        use lb_common::trace;
        if !(1..=3600).contains(&seconds) {
            return Err(ChangeError::Invalid(format!(
                "--seconds: {seconds} is outside 1..=3600"
            )));
        }
        let rate = rate.unwrap_or(trace::DEFAULT_RATE);
        if !(1..=trace::MAX_RATE).contains(&rate) {
            return Err(ChangeError::Invalid(format!(
                "--rate: {rate} is outside 1..={} events per second per CPU",
                trace::MAX_RATE
            )));
        }
        let now = Instant::now();
        if let Some(t) = self.trace_until.filter(|t| *t > now) {
            return Err(ChangeError::Conflict(format!(
                "an lb trace, ending in {} s (one at a time: traces share one ring),",
                (t - now).as_secs() + 1
            )));
        }
        let dir = self
            .info
            .pin_dir
            .clone()
            .ok_or_else(|| ChangeError::Failed("the agent has no pin directory".into()))?;
        self.maps.put_trace(&trace::config(vip, port, rate))?;
        self.trace_until = Some(now + std::time::Duration::from_secs(u64::from(seconds)));
        tracing::info!(?vip, ?port, rate, seconds, "lb trace: tracing is on");
        let dir = std::path::Path::new(&dir);
        Ok(Response::Tracing {
            ring: dir
                .join(lb_common::consts::map_names::TRACE_RING)
                .display()
                .to_string(),
            lost: dir
                .join(lb_common::consts::map_names::TRACE_LOST)
                .display()
                .to_string(),
            seconds,
            interfaces: self
                .info
                .ifindexes
                .iter()
                .copied()
                .zip(self.info.interfaces.iter().cloned())
                .collect(),
        })
    }

    /// Turns `lb trace` sampling off (it is off when nothing traces, too).
    fn trace_off(&mut self) -> Result<(), ChangeError> {
        self.maps
            .put_trace(&lb_common::trace::TraceConfig::default())?;
        self.trace_until = None;
        Ok(())
    }

    /// Every address a next hop is kept for: live backends and the desired PIP instances.
    fn hop_addresses(&self) -> BTreeSet<IpAddr> {
        let mut a = self.live.hop_addresses();
        a.extend(self.state.pips.values().copied());
        a.extend(outbound_addrs(&self.state));
        a
    }

    /// What the flow sweeper needs: each live service's idle timeout and TCP reset, and the
    /// addresses of the backends whose flows it may reset.
    #[must_use]
    pub fn sweep_policy(&self) -> SweepPolicy {
        let mut p = SweepPolicy::default();
        for (spec, info) in &self.live.services {
            let Some(st) = self.state.services.get(spec) else {
                continue;
            };
            let (tcp, udp) = crate::config::idle_timeouts(st.settings.idle_timeout);
            let secs = |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
            p.services
                .insert(info.id, (secs(tcp), secs(udp), st.settings.tcp_reset));
            if st.settings.tcp_reset
                && let Some(bs) = self.live.by_service.get(&info.id)
            {
                for (addr, id) in bs {
                    p.backends.insert(*id, *addr);
                }
            }
        }
        for (name, id) in &self.outbound.ids {
            if let Some(r) = self.state.outbound.get(name) {
                let (tcp, udp) = r.idle_s();
                p.services.insert(
                    lb_common::outbound::OUT_SERVICE_FLAG | id,
                    (tcp, udp, r.tcp_reset),
                );
            }
        }
        p.out_holds = self.outbound.holds(&self.state);
        for (ep, held) in &self.live.holds {
            if let Some(w) = plan::unheld_reply(*ep, &self.live, &self.state, None) {
                p.holds.push(Hold {
                    ep: *ep,
                    held: *held,
                    want: (w.vip, w.vport),
                });
            }
        }
        p
    }

    /// The VIP and PIP addresses to announce now ([`HealthBook::announced`]).
    #[must_use]
    pub fn announced(&self) -> BTreeSet<IpAddr> {
        self.health.announced(&self.state, self.announcing)
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
            let tunnel = svc.settings.probe_via == crate::spec::ProbeVia::Tunnel;
            let ids = self
                .live
                .services
                .get(spec)
                .and_then(|i| self.live.backends_of(i.id));
            for addr in svc.backends.keys() {
                let (to, via) = if tunnel {
                    let e = &self.info.encap;
                    let source = if spec.vip.is_ipv4() {
                        IpAddr::from(e.src4)
                    } else {
                        IpAddr::from(e.src6)
                    };
                    let mode = svc.settings.floating_ip.mode();
                    let via = ids
                        .and_then(|m| m.get(addr))
                        .and_then(|id| lb_common::encap::probe::mark(mode, *id))
                        .map_or(Tunnel::NoEntry, |mark| Tunnel::Via { mark, source });
                    (spec.vip.ip(), Some(via))
                } else {
                    (addr.ip(), None)
                };
                v.push(ProbeTarget {
                    service: *spec,
                    backend: *addr,
                    addr: std::net::SocketAddr::new(to, port.unwrap_or(addr.port())),
                    http_path: http_path.clone(),
                    interval: svc.settings.interval,
                    timeout: svc.settings.timeout,
                    via,
                });
            }
        }
        v
    }
}

/// Synchronous driving, for tests and tools that run without the agent's tasks: reads and
/// purges run here, on the reconciler's own maps, as the agent's tasks would run them.
impl<M: MapOps + MapReader + FlowPurge> Reconciler<M> {
    /// Handles one request to the end.
    pub fn handle(&mut self, req: Request) -> Outcome {
        let (tx, mut rx) = oneshot::channel();
        let fx = self.handle_event(Event::Api(req, tx));
        let state_changed = fx.state_changed;
        self.settle(fx);
        let response = rx
            .try_recv()
            .unwrap_or_else(|_| Response::error(crate::error::ErrorKind::Unavailable, "no answer"));
        Outcome {
            response,
            state_changed,
        }
    }

    /// Handles an event to the end (see [`Self::handle`]).
    pub fn handle_now(&mut self, ev: Event) {
        let fx = self.handle_event(ev);
        self.settle(fx);
    }

    /// Carries out effects here: answers (read from these maps), purges (fed back as events).
    /// Resolutions stay queued until [`Self::resolve_with`].
    pub fn settle(&mut self, mut fx: Effects) {
        loop {
            if let Some((tx, a)) = fx.reply.take() {
                let r = match a {
                    Answer::Now(r) => r,
                    Answer::Read(p) => p.finish(&self.maps).unwrap_or_else(|e| {
                        Response::error(crate::error::ErrorKind::Failed, e.to_string())
                    }),
                    Answer::Flush(q) => match self.maps.flush(&|f| q.selects(f)) {
                        Ok(n) => Response::Flushed { flushed: n as u64 },
                        Err(e) => Response::error(crate::error::ErrorKind::Failed, e.to_string()),
                    },
                };
                let _ = tx.send(r);
            }
            if let Some(job) = fx.resolve.take() {
                self.want.merge(job);
                self.resolving = false;
            }
            let Some(job) = fx.purge.take() else {
                return;
            };
            let result = self.maps.purge(&job).map_err(|e| e.to_string());
            fx = self.handle_event(Event::Purged { job, result });
        }
    }

    /// Resolves every next hop and the client routes with `r`, here, and applies the result.
    pub fn resolve_with(&mut self, r: &mut dyn Resolver) {
        let mut job = std::mem::take(&mut self.want);
        job.merge(ResolveJob {
            addrs: self.hop_addresses(),
            routes: true,
        });
        self.resolving = true;
        let res = r.resolve(&job);
        self.handle_now(Event::Resolved(res));
    }

    /// Waits out every grace period and releases what waited (tests).
    pub fn release_all(&mut self) {
        self.release_deferred(true);
    }
}
