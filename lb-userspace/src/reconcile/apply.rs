//! The applier: executes a plan's steps in order, the only code that calls [`MapOps`], and
//! records each successful write in [`Live`], so the mirror is exact even when a write fails
//! half way through a plan.
//!
//! # Map write ordering (why a packet never sees a half-made service)
//! * A backend's entry (`LB_BACKENDS[id]`) is written before any table slot points at it, and
//!   its endpoint's reverse-service entry (`LB_REVSVC4`) before the switch that puts it in a
//!   table: the first reply of its first flow finds it. An endpoint that a second service
//!   starts to use is marked shared before that service's switch, so every flow of the second
//!   service has a reverse entry of its own, while the first service's older flows are still
//!   found through the entry, which keeps naming the first service. Entries of endpoints no
//!   active backend uses any more are deleted after the switch and the retirements.
//! * A service's table is written to a fresh region of `LB_RING`, then the service entry is
//!   replaced in one `LB_SERVICES` update, which is atomic for a hash map: a packet sees either
//!   the old region or the complete new one (a double buffer, not delta writes, so no slot is
//!   ever briefly wrong and no ordering among slot writes matters). An ACL change is a new set
//!   under a new id, switched by the same update.
//! * An internal VIP's entry and source set are written before the switch of a service that
//!   adds to them (a new service, new backends), and trimmed after the switch of one that takes
//!   away: a flow is never admitted to an internal VIP whose set does not cover it yet.
//! * The old region, old ACL sets and the ids of removed backends are only reused after
//!   [`super::alloc::GRACE`]: a packet that read the old service entry finishes in
//!   microseconds, far within it.
//! * A removed backend's entry is marked inactive after the table stops pointing at it, and its
//!   conntrack entries are purged (off the writer loop); its id is reused only once that purge
//!   is done. A packet of such a flow that races the purge finds the entry inactive and is
//!   re-balanced (the fast path's "backend gone → fresh pick" rule).

use lb_common::{
    acl, addr,
    maps::{Backend, BackendId, VipKey},
};

use super::{
    alloc::Alloc,
    live::Live,
    plan::{Plan, Step},
};
use crate::{
    dataplane::{MapOps, PurgeJob},
    error::MapOpError,
};

/// What executing steps needs besides the maps: the mirror, the allocators, and where flow
/// purges collect (one job per event, however many steps ask for one).
pub struct Applier<'a, M> {
    pub maps: &'a mut M,
    pub live: &'a mut Live,
    pub alloc: &'a mut Alloc,
    pub purge: &'a mut PurgeJob,
    /// Map writes done, for the change summary.
    pub writes: &'a mut usize,
}

impl<M: MapOps> Applier<'_, M> {
    /// Executes `steps` in order, stopping at the first write that fails.
    ///
    /// # Errors
    /// The failed write; everything before it is done and recorded in `live`.
    pub fn run(&mut self, steps: Vec<Step>) -> Result<(), MapOpError> {
        for s in steps {
            self.step(s)?;
        }
        Ok(())
    }

    /// Executes a whole plan: prepare, switch, after.
    ///
    /// # Errors
    /// As [`Self::run`].
    pub fn plan(&mut self, p: Plan) -> Result<(), MapOpError> {
        self.run(p.prepare)?;
        if let Some(s) = p.switch {
            self.step(s)?;
        }
        self.run(p.after)
    }

    fn step(&mut self, s: Step) -> Result<(), MapOpError> {
        if s.is_write() {
            *self.writes += 1;
        }
        let (m, live) = (&mut *self.maps, &mut *self.live);
        match s {
            Step::ZeroServiceStats(id) => m.zero_service_stats(id)?,
            Step::ZeroBackendStats(id) => m.zero_backend_stats(id)?,
            Step::PutBackend(id, b) => {
                m.put_backend(id, &b)?;
                live.put_backend(id, b);
            }
            Step::RetireBackend(id) => {
                m.put_backend(id, &Backend::default())?;
                live.retire_backend(id);
            }
            Step::PutRev(k, v) => {
                m.put_rev(&k, &v)?;
                live.revs.insert(k, v);
            }
            Step::DelRev(k) => {
                m.del_rev(&k)?;
                live.revs.remove(&k);
            }
            Step::PutSlots(off, slots) => {
                m.put_slots(off, &slots)?;
                live.regions.insert(off, slots);
            }
            Step::PutAcl(id, e) => {
                m.put_acl(id, &e)?;
                live.put_acl(id, e);
            }
            Step::DelAcl(id, p) => {
                m.del_acl(id, &p)?;
                live.del_acl(id, &p);
            }
            Step::PutService(spec, info) => {
                m.put_service(&spec.key(), &info)?;
                live.put_service(spec, info);
            }
            Step::DelService(spec) => {
                m.del_service(&spec.key())?;
                live.del_service(&spec);
            }
            Step::PutVip(ip, info) => {
                m.put_vip(
                    &VipKey {
                        vip: addr::from_ip(ip),
                    },
                    &info,
                )?;
                live.vips.insert(ip, info);
            }
            Step::DelVip(ip) => {
                m.del_vip(&VipKey {
                    vip: addr::from_ip(ip),
                })?;
                live.vips.remove(&ip);
            }
            Step::PutPip { pip, dip, nh } => {
                m.put_pip(&addr::from_ip(pip), &addr::from_ip(dip), &nh)?;
                live.pips.insert(pip, (dip, nh));
            }
            Step::DelPip { pip, dip } => {
                m.del_pip(&addr::from_ip(pip), &addr::from_ip(dip))?;
                live.pips.remove(&pip);
            }
            Step::PutRoute(len, a, nh) => {
                m.put_route(len, a, &nh)?;
                live.routes.insert((len, a), nh);
            }
            Step::DelRoute(len, a) => {
                m.del_route(len, a)?;
                live.routes.remove(&(len, a));
            }
            Step::Defer(d) => self.alloc.defer(d),
            Step::FreeServiceId(id) => self.alloc.services.free(id),
            Step::Purge(job) => self.purge.merge(job),
        }
        Ok(())
    }
}

/// The steps that delete a released ACL set's entries (then its id is free).
#[must_use]
pub fn delete_set(id: u32, prefixes: &[acl::Prefix]) -> Vec<Step> {
    prefixes.iter().map(|p| Step::DelAcl(id, *p)).collect()
}

/// Backend ids a finished purge selected whose entries are not live: retired backends, whose
/// ids may now be reused (after the grace period).
#[must_use]
pub fn released_ids(job: &PurgeJob, live: &Live) -> Vec<BackendId> {
    job.backends
        .iter()
        .filter(|id| !live.backends.contains_key(id))
        .copied()
        .collect()
}
