//! The applier: executes a plan's steps in order, the only code that calls [`MapOps`], and
//! records each successful write in [`Live`], so the mirror is exact even when a write fails
//! half way through a plan.
//!
//! # Map write ordering (why a packet never sees a half-made service)
//! * A backend's entry (`LB_BACKENDS4[id]`) is written before any table slot points at it, and
//!   its endpoint's reverse-service entry (`LB_REVSVC4`) before the switch that puts it in a
//!   table: the first reply of its first flow finds it. An endpoint that a second service
//!   starts to use is marked shared before that service's switch, so every flow of the second
//!   service has a reverse entry of its own, while the first service's older flows are still
//!   found through the entry, which keeps naming the first service. Entries of endpoints no
//!   active backend uses any more are deleted after the switch and the retirements.
//! * A service's table is written to a fresh region of `LB_RING`, then the service entry is
//!   replaced in one `LB_SERVICES4` update, which is atomic for a hash map: a packet sees either
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
//! * The "maybe ours" filter bit of an address (`LB_OURS4`) is set before the first entry that
//!   names it (a VIP, a PIP or its instance, a backend) and cleared after the last one goes:
//!   a clear bit makes the fast path pass the packet unlooked-at.

use std::net::IpAddr;

use lb_common::{
    acl, addr,
    maps::{Backend, BackendId, VipKey, ours_bit_of},
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
            Step::ZeroServiceStats(id) => {
                m.zero_service_stats(id)?;
                live.retired.remove(&id);
            }
            Step::ZeroBackendStats(id) => m.zero_backend_stats(id)?,
            Step::PutBackend(id, b) => {
                let ips = [addr::to_ip(&b.addr)];
                covered(m, live, &ips, |m| m.put_backend(id, &b))?;
                live.put_backend(id, b);
            }
            Step::RetireBackend(id) => {
                // Its counters join its service's retired sum, so the service's totals never
                // go back; then the entry goes inactive. Each is recorded as it succeeds: if
                // the entry's write fails, the backend stays live (and counted), and a retry
                // adds only what its record counted since (`folded`). What reaches the id
                // after both (packets in flight, a hairpin flow's replies until its purge)
                // stays in the id's own record, uncounted by the service.
                if let Some(svc) = live.backends.get(&id).map(|b| b.service) {
                    let sum = live.retired.get(&svc).copied().unwrap_or_default();
                    let folded = live.folded.get(&id).copied().unwrap_or_default();
                    let (total, record) = m.retire_counters(id, svc, &sum, &folded)?;
                    live.retired.insert(svc, total);
                    live.folded.insert(id, record);
                }
                m.put_backend(id, &Backend::default())?;
                live.folded.remove(&id);
                let gone = live.backends.get(&id).map(|b| addr::to_ip(&b.addr));
                live.retire_backend(id);
                uncover(m, live, gone.as_slice())?;
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
                let key = VipKey {
                    vip: addr::from_ip(ip),
                };
                covered(m, live, &[ip], |m| m.put_vip(&key, &info))?;
                live.put_vip(ip, info);
            }
            Step::DelVip(ip) => {
                m.del_vip(&VipKey {
                    vip: addr::from_ip(ip),
                })?;
                live.del_vip(ip);
                uncover(m, live, &[ip])?;
            }
            Step::PutPip { pip, dip, nh } => {
                let (p, d) = (addr::from_ip(pip), addr::from_ip(dip));
                covered(m, live, &[pip, dip], |m| m.put_pip(&p, &d, &nh))?;
                live.put_pip(pip, dip, nh);
            }
            Step::DelPip { pip, dip } => {
                m.del_pip(&addr::from_ip(pip), &addr::from_ip(dip))?;
                live.del_pip(pip);
                uncover(m, live, &[pip, dip])?;
            }
            Step::PutOutbound(dip, e) => {
                covered(m, live, &[IpAddr::from(dip)], |m| m.put_outbound(dip, &e))?;
                live.put_outbound(dip, e);
            }
            Step::DelOutbound(dip) => {
                m.del_outbound(dip)?;
                live.del_outbound(dip);
                uncover(m, live, &[IpAddr::from(dip)])?;
            }
            Step::PutOutFront(a, f) => {
                covered(m, live, &[IpAddr::from(a)], |m| m.put_out_front(a, &f))?;
                live.put_out_front(a, f);
            }
            Step::PutOutBlock(k, dip) => {
                m.put_out_block(&k, dip)?;
                live.out_blocks.insert(k, dip);
            }
            Step::DelOutBlock(k) => {
                m.del_out_block(&k)?;
                live.out_blocks.remove(&k);
            }
            Step::DelOutFront(a) => {
                m.del_out_front(a)?;
                live.del_out_front(a);
                uncover(m, live, &[IpAddr::from(a)])?;
            }
            Step::PutOutInside(rule, a, len) => {
                m.put_out_inside(rule, (a, len))?;
                live.out_inside.insert((rule, a, len));
            }
            Step::DelOutInside(rule, a, len) => {
                m.del_out_inside(rule, (a, len))?;
                live.out_inside.remove(&(rule, a, len));
            }
            Step::PutOurs(w, bits) => {
                m.put_ours(w, bits)?;
                set_word(live, w, bits);
            }
            Step::PutRoute(len, a, nh) => {
                m.put_route(len, a, &nh)?;
                live.routes.insert((len, a), nh);
            }
            Step::DelRoute(len, a) => {
                m.del_route(len, a)?;
                live.routes.remove(&(len, a));
            }
            Step::PutLocal(a) => {
                m.put_local(a)?;
                live.locals.insert(a);
            }
            Step::DelLocal(a) => {
                m.del_local(a)?;
                live.locals.remove(&a);
            }
            Step::Defer(d) => self.alloc.defer(d),
            Step::FreeServiceId(id) => self.alloc.services.free(id),
            Step::Purge(job) => self.purge.merge(job),
        }
        Ok(())
    }
}

/// Sets the "maybe ours" bits of `ips` that the live filter lacks, before the entry that
/// needs them is written (a packet then finds the entry; a bit set early only costs lookups).
fn cover<M: MapOps>(m: &mut M, live: &mut Live, ips: &[IpAddr]) -> Result<(), MapOpError> {
    for ip in ips {
        let (w, bit) = ours_bit_of(&addr::from_ip(*ip));
        let cur = live.filter.get(&w).copied().unwrap_or(0);
        if cur & bit == 0 {
            m.put_ours(w, cur | bit)?;
            set_word(live, w, cur | bit);
        }
    }
    Ok(())
}

/// Writes an entry that names `ips` with `write`, their filter bits first; if a bit's or the
/// entry's write fails, the bits it would have needed are cleared again (best effort: a bit left set
/// only costs lookups).
fn covered<M: MapOps>(
    m: &mut M,
    live: &mut Live,
    ips: &[IpAddr],
    write: impl FnOnce(&mut M) -> Result<(), MapOpError>,
) -> Result<(), MapOpError> {
    let r = cover(m, live, ips).and_then(|()| write(m));
    if r.is_err() {
        let _ = uncover(m, live, ips);
    }
    r
}

/// Clears the bits of `ips`' words that no live entry needs any more, after the entries went.
fn uncover<M: MapOps>(m: &mut M, live: &mut Live, ips: &[IpAddr]) -> Result<(), MapOpError> {
    for ip in ips {
        let (w, _) = ours_bit_of(&addr::from_ip(*ip));
        let cur = live.filter.get(&w).copied().unwrap_or(0);
        let want = live.ours.wanted(w);
        if cur & !want != 0 {
            m.put_ours(w, cur & want)?;
            set_word(live, w, cur & want);
        }
    }
    Ok(())
}

fn set_word(live: &mut Live, w: u32, bits: u64) {
    if bits == 0 {
        live.filter.remove(&w);
    } else {
        live.filter.insert(w, bits);
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
