//! `lb trace`'s hooks (`lb_common::trace`): at entry, whether tracing is on and the packet's
//! 5-tuple as it arrived (into a per-CPU scratch slot, not the stack, which the fast path
//! needs); at exit, the filter, the rate bucket and one ring-buffer record.
//!
//! The IPv6 programs' exit is a tail call instead (`exit6` → `lb_trace6`): their frames are
//! within 100 bytes of the verifier's 512, and the exit hook's own frame (128 bytes for IPv4,
//! more with IPv6 keys) would not fit beside them. The verdict goes through the per-CPU
//! scratch slot, and `lb_trace6` returns the action the program decided (a redirect's target
//! is per-CPU state the helper set, which the tail call keeps).
//!
//! Off, a packet pays one array read and a branch. `LB_TRACE_HOOKS = 0` (a load-time
//! constant) prunes even that, for the benchmark's baseline.

use core::mem::MaybeUninit;

use aya_ebpf::{Global, bindings::xdp_action, helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{
    consts::PROG_TRACE6,
    flow::{FlowKey4, FlowKey6},
    trace::{self, LOST_RATE, LOST_RING, TraceConfig, TraceEvent, TraceEvent6},
};

use crate::{
    maps::{
        LB_PROGS, LB_TRACE, LB_TRACE_CFG, LB_TRACE_LOST, LB_TRACE_RL, LB_TRACE_TMP, LB_TRACE_TMP6,
    },
    parse::ptr_at,
};

/// 0: the hooks are compiled out (see the module doc). The agent loads 1.
#[unsafe(no_mangle)]
static LB_TRACE_HOOKS: Global<u8> = Global::new(1);

/// Entry hook: `true` if tracing is on, with the arriving 5-tuple saved for [`exit`].
#[inline(always)]
pub fn enter(ctx: &XdpContext) -> bool {
    if !on() {
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
    let Some(now) = token(&cfg) else {
        return;
    };
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

/// Whether tracing is on (hooks compiled in, and the agent turned it on).
#[inline(always)]
fn on() -> bool {
    if LB_TRACE_HOOKS.load() == 0 {
        return false;
    }
    // SAFETY: a value pointer of an array slot, read at once.
    LB_TRACE_CFG
        .get_ptr(0)
        .is_some_and(|c| unsafe { (*c).on } != 0)
}

/// The IPv6 programs' entry hook: `true` if tracing is on, with the arriving 5-tuple saved in
/// this CPU's `LB_TRACE_TMP6` slot.
#[inline(always)]
pub fn enter6(ctx: &XdpContext) -> bool {
    if !on() {
        return false;
    }
    if let Some(t) = LB_TRACE_TMP6.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch slot; nothing else runs on this CPU meanwhile.
        unsafe { flow_of6(ctx, &raw mut (*t).before) };
    }
    true
}

/// The IPv6 programs' exit hook, after [`enter6`] said `true`: the verdict into the scratch
/// slot, then `lb_trace6` by tail call, which writes the record and returns `action`.
/// Returns only if the tail call fails (the agent has not installed `lb_trace6`): the record
/// is then counted as lost (the ring slot), and the caller returns `action` itself.
#[inline(always)]
pub fn exit6(ctx: &XdpContext, reason: u32, action: u32) {
    if let Some(t) = LB_TRACE_TMP6.get_ptr_mut(0) {
        // SAFETY: this CPU's scratch slot.
        unsafe {
            (*t).reason = reason;
            (*t).action = action;
        }
    }
    // SAFETY: `ctx` is this program's context; on success control never comes back.
    unsafe { LB_PROGS.tail_call(ctx, PROG_TRACE6) };
    lost(LOST_RING);
}

/// The `lb_trace6` program: the record of the IPv6 packet the scratch slot describes, if the
/// filter selects it and the bucket has a token; the packet's action either way.
#[inline(always)]
pub fn run6(ctx: &XdpContext) -> u32 {
    let (Some(c), Some(t)) = (LB_TRACE_CFG.get_ptr(0), LB_TRACE_TMP6.get_ptr(0)) else {
        // Cannot happen (one-slot arrays); the frame is not sent half-decided.
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: value pointers of array slots, read at once.
    let (cfg, reason, action) = unsafe { (*c, (*t).reason, (*t).action) };
    let mut after = MaybeUninit::<FlowKey6>::uninit();
    // SAFETY: `flow_of6` writes all ten words of the key.
    let after = unsafe {
        flow_of6(ctx, after.as_mut_ptr());
        after.assume_init()
    };
    // SAFETY: as above; the scratch slot is this CPU's, written by the program before.
    if !trace::selects6(&cfg, unsafe { &(*t).before }, &after) {
        return action;
    }
    let Some(now) = token(&cfg) else {
        return action;
    };
    let Some(mut e) = LB_TRACE.reserve::<TraceEvent6>(0) else {
        lost(LOST_RING);
        return action;
    };
    let len = (ctx.data_end() - ctx.data()) as u32;
    let p = e.as_mut_ptr();
    // SAFETY: `p` is the reserved record, valid until submit; `t` as above.
    unsafe {
        (*p).time_ns = now;
        (*p).ifindex = ctx.ingress_ifindex() as u32;
        (*p).reason = reason;
        (*p).action = action;
        (*p).len = len;
        copy_key6(&raw mut (*p).before, &(*t).before);
        copy_key6(&raw mut (*p).after, &after);
    }
    e.submit(0);
    action
}

/// A 40-byte key copied word by word (a whole-struct copy would be a `memcpy` call).
///
/// # Safety
/// `dst` is valid for writes of a key.
#[inline(always)]
unsafe fn copy_key6(dst: *mut FlowKey6, src: &FlowKey6) {
    let w = src.words();
    let d = dst.cast::<u32>();
    // verifier: a constant trip count, unrolled.
    for (i, x) in w.iter().enumerate() {
        // SAFETY: the caller guarantees `dst`; keys are 4-aligned, ten words.
        unsafe { d.add(i).write_volatile(*x) };
    }
}

/// A token of this CPU's bucket for one record: the time now, or `None` (counted as lost
/// when the rate limit refused it).
#[inline(always)]
fn token(cfg: &TraceConfig) -> Option<u64> {
    let rl = LB_TRACE_RL.get_ptr_mut(0)?;
    // SAFETY: this CPU's bucket. The helper is a plain call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above.
    if !unsafe { (*rl).take(now, u64::from(cfg.cost_ns), cfg.burst_ns) } {
        lost(LOST_RATE);
        return None;
    }
    Some(now)
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
    let Some(l3) = l3_of(ctx, [0x08, 0x00]) else {
        return FlowKey4::default();
    };
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

/// The offset of the network header if the frame's ethertype (after one 802.1Q tag, if any)
/// is `want`.
#[inline(always)]
fn l3_of(ctx: &XdpContext, want: [u8; 2]) -> Option<usize> {
    let mut l3 = 14;
    // SAFETY: bounds-checked by `ptr_at`.
    let mut ty = unsafe { *ptr_at::<[u8; 2]>(ctx, 12)? };
    if ty == [0x81, 0x00] {
        // SAFETY: bounds-checked.
        ty = unsafe { *ptr_at::<[u8; 2]>(ctx, 16)? };
        l3 = 18;
    }
    (ty == want).then_some(l3)
}

/// Writes the IPv6 5-tuple of the frame as it is now into `out`, word by word (a 40-byte
/// struct store would be a `memcpy` call): the fixed header's addresses, and the ports and
/// protocol of TCP or UDP right after it (behind extension headers, the protocol and ports
/// stay zero); all zero for a frame that is not IPv6. Its own bounds checks, as [`flow_of`].
///
/// # Safety
/// `out` is valid for writes of a key.
#[inline(always)]
unsafe fn flow_of6(ctx: &XdpContext, out: *mut FlowKey6) {
    let w = out.cast::<u32>();
    // verifier: constant trip counts, unrolled.
    for i in 0..10 {
        // SAFETY: the caller guarantees `out`; a key is ten 4-aligned words.
        unsafe { w.add(i).write_volatile(0) };
    }
    let Some(l3) = l3_of(ctx, [0x86, 0xdd]) else {
        return;
    };
    let (Some(next), Some(src), Some(dst)) = (
        ptr_at::<u8>(ctx, l3 + 6),
        ptr_at::<[u8; 16]>(ctx, l3 + 8),
        ptr_at::<[u8; 16]>(ctx, l3 + 24),
    ) else {
        return;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (next, src, dst) = unsafe {
        (
            *next,
            lb_common::flow::words6(*src),
            lb_common::flow::words6(*dst),
        )
    };
    for i in 0..4 {
        // SAFETY: as above.
        unsafe {
            w.add(i).write_volatile(src[i]);
            w.add(4 + i).write_volatile(dst[i]);
        }
    }
    if next != 6 && next != 17 {
        return;
    }
    let Some(ports) = ptr_at::<[u8; 4]>(ctx, l3 + 40) else {
        return;
    };
    // SAFETY: bounds-checked; `out` as above.
    unsafe {
        w.add(8).write_volatile(u32::from_ne_bytes(*ports));
        w.add(9).write_volatile(u32::from_ne_bytes([next, 0, 0, 0]));
    }
}
