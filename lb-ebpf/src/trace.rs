//! `lb trace`'s hooks (`lb_common::trace`): at entry, whether tracing is on and the packet's
//! 5-tuple as it arrived (into a per-CPU scratch slot, not the stack, which the fast path
//! needs); at exit, the filter, the rate bucket and one ring-buffer record.
//!
//! Off, a packet pays one array read and a branch. `LB_TRACE_HOOKS = 0` (a load-time
//! constant) prunes even that, for the benchmark's baseline.

use aya_ebpf::{Global, helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{
    flow::FlowKey4,
    trace::{self, LOST_RATE, LOST_RING, TraceEvent},
};

use crate::{
    maps::{LB_TRACE, LB_TRACE_CFG, LB_TRACE_LOST, LB_TRACE_RL, LB_TRACE_TMP},
    parse::ptr_at,
};

/// 0: the hooks are compiled out (see the module doc). The agent loads 1.
#[unsafe(no_mangle)]
static LB_TRACE_HOOKS: Global<u8> = Global::new(1);

/// Entry hook: `true` if tracing is on, with the arriving 5-tuple saved for [`exit`].
#[inline(always)]
pub fn enter(ctx: &XdpContext) -> bool {
    if LB_TRACE_HOOKS.load() == 0 {
        return false;
    }
    let Some(c) = LB_TRACE_CFG.get_ptr(0) else {
        return false;
    };
    // SAFETY: a value pointer of an array slot, read at once.
    if unsafe { (*c).on } == 0 {
        return false;
    }
    if let Some(t) = LB_TRACE_TMP.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch slot; nothing else runs on this CPU meanwhile.
        unsafe { *t = flow_of(ctx) };
    }
    true
}

/// Exit hook, after [`enter`] said `true`: the record, if the filter selects the packet and
/// the bucket has a token.
#[inline(never)]
pub fn exit(ctx: &XdpContext, reason: u32, action: u32) {
    let (Some(c), Some(t)) = (LB_TRACE_CFG.get_ptr(0), LB_TRACE_TMP.get_ptr(0)) else {
        return;
    };
    // SAFETY: value pointers of array slots, copied out at once.
    let (cfg, before) = unsafe { (*c, *t) };
    let after = flow_of(ctx);
    if !trace::selects(&cfg, &before, &after) {
        return;
    }
    let Some(rl) = LB_TRACE_RL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's bucket. The helper is a plain call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above.
    if !unsafe { (*rl).take(now, u64::from(cfg.cost_ns), cfg.burst_ns) } {
        lost(LOST_RATE);
        return;
    }
    let Some(mut e) = LB_TRACE.reserve::<TraceEvent>(0) else {
        lost(LOST_RING);
        return;
    };
    let len = (ctx.data_end() - ctx.data()) as u32;
    // Field by field: a whole-struct write would be a memcpy of 56 bytes.
    let p = e.as_mut_ptr();
    // SAFETY: `p` is the reserved record, valid until submit.
    unsafe {
        (*p).time_ns = now;
        (*p).ifindex = ctx.ingress_ifindex() as u32;
        (*p).reason = reason;
        (*p).action = action;
        (*p).len = len;
        (*p).before = before;
        (*p).after = after;
    }
    e.submit(0);
}

#[inline(always)]
fn lost(slot: u32) {
    if let Some(n) = LB_TRACE_LOST.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot.
        unsafe { *n += 1 };
    }
}

/// The IPv4 TCP/UDP 5-tuple of the frame as it is now (after one 802.1Q tag, if any); all
/// zero for anything else. Its own bounds checks: it runs after the fast path may have
/// rewritten the headers.
#[inline(always)]
fn flow_of(ctx: &XdpContext) -> FlowKey4 {
    let mut l3 = 14;
    let Some(et) = ptr_at::<[u8; 2]>(ctx, 12) else {
        return FlowKey4::default();
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let mut ty = unsafe { *et };
    if ty == [0x81, 0x00] {
        let Some(inner) = ptr_at::<[u8; 2]>(ctx, 16) else {
            return FlowKey4::default();
        };
        // SAFETY: bounds-checked.
        ty = unsafe { *inner };
        l3 = 18;
    }
    if ty != [0x08, 0x00] {
        return FlowKey4::default();
    }
    // Small reads of what the key needs: a copy of the whole header could become a memcpy.
    let (Some(vihl), Some(pr), Some(src), Some(dst)) = (
        ptr_at::<u8>(ctx, l3),
        ptr_at::<u8>(ctx, l3 + 9),
        ptr_at::<[u8; 4]>(ctx, l3 + 12),
        ptr_at::<[u8; 4]>(ctx, l3 + 16),
    ) else {
        return FlowKey4::default();
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (vihl, proto, src, dst) = unsafe { (*vihl, *pr, *src, *dst) };
    if proto != 6 && proto != 17 {
        return FlowKey4::default();
    }
    // verifier: a bounded offset (the header length is at most 60).
    let ihl = usize::from(vihl & 0x0f) * 4;
    let Some(ports) = ptr_at::<[u8; 4]>(ctx, l3 + (ihl & 0x3c)) else {
        return FlowKey4::default();
    };
    // SAFETY: bounds-checked.
    let ports = unsafe { *ports };
    FlowKey4::of(src, dst, [ports[0], ports[1]], [ports[2], ports[3]], proto)
}
