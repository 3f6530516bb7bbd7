//! Baseline XDP programs for the benchmark and the lab, in an object of their own (they are
//! never loaded by the agent):
//!
//! * `xdp_pass`: returns `XDP_PASS`. The harness floor of the per-packet cost, and the program
//!   the lab attaches to the far end of each veth pair: veth kicks the receiving side's NAPI
//!   for `XDP_TX` frames only when that side has an XDP program, so without one a frame the LB
//!   sends back out of its ingress device waits for the next packet to be delivered.
//! * `xdp_fwd`: the minimal forwarder, our throughput ceiling: bounds-checks Ethernet and IPv4,
//!   rewrites the MACs from `FWD_NH[0]` and sends (`XDP_TX` on the ingress device, else a
//!   redirect). No balancing, no state.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_redirect,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use lb_common::{
    hdr::{ETH_P_IPV4, EthHdr, Ipv4Hdr},
    maps::NextHop,
};

/// The forwarder's next hop (slot 0), set by whoever loads it.
#[map(name = "FWD_NH")]
static FWD_NH: Array<NextHop> = Array::with_max_entries(1, 0);

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn xdp_fwd(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let l3 = core::mem::size_of::<EthHdr>();
    if start + l3 + core::mem::size_of::<Ipv4Hdr>() > end {
        return xdp_action::XDP_PASS;
    }
    let eth = start as *mut EthHdr;
    // SAFETY: bounds-checked above.
    if u16::from_be_bytes(unsafe { (*eth).ether_type }) != ETH_P_IPV4 {
        return xdp_action::XDP_PASS;
    }
    let Some(nh) = FWD_NH.get(0).copied() else {
        return xdp_action::XDP_ABORTED;
    };
    if nh.ifindex == 0 {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds-checked above.
    unsafe {
        (*eth).src = nh.smac;
        (*eth).dst = nh.dmac;
    }
    if nh.ifindex as usize == ctx.ingress_ifindex() {
        xdp_action::XDP_TX
    } else {
        // SAFETY: a plain helper call with flags 0.
        unsafe { bpf_redirect(nh.ifindex, 0) as u32 }
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
