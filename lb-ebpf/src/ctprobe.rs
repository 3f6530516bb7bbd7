//! The conntrack variants the benchmark compares, in an object of their own: its maps are
//! pinned by name, so two loads (one per sending CPU) share them, and only the benchmark loads
//! it, always under a pin directory of its own (the baseline object, which the lab loads
//! everywhere, pins nothing).
//!
//! `xdp_ct_shared`, `xdp_ct_nocommon`, `xdp_ct_percpu` each insert the frame's IPv4 5-tuple
//! (`FlowKey4`, the fast path's key) with a `ConnEntry4` into their own LRU: one shared LRU (the fast path's choice today), one with
//! `BPF_F_NO_COMMON_LRU` (per-CPU LRU lists over one table), and one LRU per CPU chosen by
//! the CPU's number (Katran's layout, an array of per-CPU LRU maps; two CPUs here, as
//! aya-ebpf 0.2 has no map-of-maps). Each drops the frame.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_smp_processor_id,
    macros::{map, xdp},
    maps::LruHashMap,
    programs::XdpContext,
};
use lb_common::{
    flow::FlowKey4,
    hdr::{EthHdr, Ipv4Hdr},
    maps::ConnEntry4,
};

/// Entries of each conntrack variant (the per-CPU one: per CPU, so all hold the same).
pub const CT_VARIANT_ENTRIES: u32 = 1 << 16;
/// `BPF_F_NO_COMMON_LRU`.
const NO_COMMON_LRU: u32 = 2;

// Pinned (by name, under the loader's pin directory) so that two loads of this object, one per
// sending CPU, share them.

#[map(name = "CT_SHARED")]
static CT_SHARED: LruHashMap<FlowKey4, ConnEntry4> = LruHashMap::pinned(CT_VARIANT_ENTRIES, 0);
#[map(name = "CT_NOCOMMON")]
static CT_NOCOMMON: LruHashMap<FlowKey4, ConnEntry4> =
    LruHashMap::pinned(CT_VARIANT_ENTRIES, NO_COMMON_LRU);
#[map(name = "CT_CPU0")]
static CT_CPU0: LruHashMap<FlowKey4, ConnEntry4> = LruHashMap::pinned(CT_VARIANT_ENTRIES / 2, 0);
#[map(name = "CT_CPU1")]
static CT_CPU1: LruHashMap<FlowKey4, ConnEntry4> = LruHashMap::pinned(CT_VARIANT_ENTRIES / 2, 0);

/// The IPv4 5-tuple of a frame with a plain 20-byte IPv4 header and a TCP/UDP header (the
/// ports sit at the same offsets in both).
#[inline(always)]
fn tuple(ctx: &XdpContext) -> Option<FlowKey4> {
    let start = ctx.data();
    let l4 = size_of::<EthHdr>() + size_of::<Ipv4Hdr>();
    if start + l4 + 4 > ctx.data_end() {
        return None;
    }
    // SAFETY: the Ethernet and IPv4 headers and four L4 bytes are inside the frame.
    unsafe {
        let ip = &*((start + size_of::<EthHdr>()) as *const Ipv4Hdr);
        let p = &*((start + l4) as *const [u8; 4]);
        Some(FlowKey4::of(
            ip.src,
            ip.dst,
            [p[0], p[1]],
            [p[2], p[3]],
            ip.proto,
        ))
    }
}

/// Inserts the frame's 5-tuple into `map`, as the fast path tracks a new flow.
#[inline(always)]
fn ct_insert(ctx: &XdpContext, map: &LruHashMap<FlowKey4, ConnEntry4>) -> u32 {
    let Some(k) = tuple(ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    if map
        .insert(k, ConnEntry4::forward(1, 1, 1, 0, 0, (0, 0)), 0)
        .is_err()
    {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_DROP
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn xdp_ct_shared(ctx: XdpContext) -> u32 {
    ct_insert(&ctx, &CT_SHARED)
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn xdp_ct_nocommon(ctx: XdpContext) -> u32 {
    ct_insert(&ctx, &CT_NOCOMMON)
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn xdp_ct_percpu(ctx: XdpContext) -> u32 {
    // SAFETY: a plain helper call.
    if unsafe { bpf_get_smp_processor_id() } == 0 {
        ct_insert(&ctx, &CT_CPU0)
    } else {
        ct_insert(&ctx, &CT_CPU1)
    }
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
