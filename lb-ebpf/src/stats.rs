//! Counter updates. Per-CPU maps, so plain (non-atomic) adds are safe.

use lb_common::{maps::Counters, verdict::Reason};

use crate::maps::{LB_BE_STATS, LB_REASONS, LB_SVC_STATS};

#[inline(always)]
pub fn count_reason(r: Reason) {
    if let Some(p) = LB_REASONS.get_ptr_mut(r as u32) {
        // SAFETY: a per-CPU slot, valid for the program's run; no other writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Which side of a flow a packet belongs to.
#[derive(Clone, Copy)]
pub enum Dir {
    /// Client → backend; `true` when this packet started a new flow.
    Forward {
        new_flow: bool,
    },
    Reply,
}

/// A balanced packet: one record, its backend's (the agent adds the backends' records into
/// their service's totals, see `lb_common::maps::Counters`).
#[inline(always)]
pub fn count_flow(backend: u32, bytes: u64, dir: Dir) {
    if let Some(p) = LB_BE_STATS.get_ptr_mut(backend) {
        // SAFETY: as above.
        unsafe { add(&mut *p, bytes, dir) };
    }
}

#[inline(always)]
fn add(c: &mut Counters, bytes: u64, dir: Dir) {
    match dir {
        Dir::Forward { new_flow } => {
            c.packets += 1;
            c.bytes += bytes;
            c.new_flows += u64::from(new_flow);
        }
        Dir::Reply => {
            c.reply_packets += 1;
            c.reply_bytes += bytes;
        }
    }
}

/// A non-SYN packet of a service without a conntrack entry (see `Counters::conntrack_misses`).
#[inline(always)]
pub fn count_conntrack_miss(service: u32) {
    if let Some(p) = LB_SVC_STATS.get_ptr_mut(service) {
        // SAFETY: a per-CPU slot, valid for the program's run; no other writer on this CPU.
        unsafe { (*p).conntrack_misses += 1 };
    }
}

/// A new flow denied by the endpoint's ACL.
#[inline(always)]
pub fn count_acl_drop(service: u32) {
    if let Some(p) = LB_SVC_STATS.get_ptr_mut(service) {
        // SAFETY: a per-CPU slot, valid for the program's run; no other writer on this CPU.
        unsafe { (*p).acl_drops += 1 };
    }
}

/// A new flow the flood guard forwarded without tracking it.
#[inline(always)]
pub fn count_untracked(service: u32) {
    if let Some(p) = LB_SVC_STATS.get_ptr_mut(service) {
        // SAFETY: a per-CPU slot, valid for the program's run; no other writer on this CPU.
        unsafe { (*p).untracked_flows += 1 };
    }
}
