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
//! * `xdp_gen`: the benchmark's traffic generator, run with `BPF_PROG_TEST_RUN` in live-frames
//!   mode. Live frames are recycled, and whoever received a frame may have rewritten it (the LB
//!   DNATs in place), so every frame gets its Ethernet, IPv4 and UDP headers rewritten from
//!   the template `GEN_TMPL[0]`. Then it takes a new UDP source port (cycling over `GEN_CFG[0]`
//!   flows, so the traffic spreads over flows and backends) and leaves with `XDP_TX`. The UDP
//!   checksum is 0 (none), so the port needs no checksum patch.
//! * `xdp_count`: the sink: counts IPv4 frames (per CPU, `COUNT[0]`) and drops them; the rest
//!   (ARP) passes.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    hdr::{ETH_P_IPV4, EthHdr, Ipv4Hdr, UdpHdr},
    maps::NextHop,
};

/// `xdp_gen`: slot 0 is the number of flows to cycle over (0 means 1).
#[map(name = "GEN_CFG")]
static GEN_CFG: Array<u32> = Array::with_max_entries(1, 0);

/// Length of the generator's header template: Ethernet, IPv4 without options, UDP.
pub const GEN_HDR_LEN: usize = 42;

/// `xdp_gen`: slot 0 is the header template every frame is rewritten from.
#[map(name = "GEN_TMPL")]
static GEN_TMPL: Array<[u8; GEN_HDR_LEN]> = Array::with_max_entries(1, 0);

/// `xdp_gen`: the per-CPU frame sequence number.
#[map(name = "GEN_SEQ")]
static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `xdp_count`: frames seen, per CPU.
#[map(name = "COUNT")]
static COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The forwarder's next hop (slot 0), set by whoever loads it.
#[map(name = "FWD_NH")]
static FWD_NH: Array<NextHop> = Array::with_max_entries(1, 0);

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn xdp_fwd(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let l3 = size_of::<EthHdr>();
    if start + l3 + size_of::<Ipv4Hdr>() > end {
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

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let l4 = size_of::<EthHdr>() + size_of::<Ipv4Hdr>();
    if start + GEN_HDR_LEN > end || l4 + size_of::<UdpHdr>() != GEN_HDR_LEN {
        return xdp_action::XDP_ABORTED;
    }
    let Some(tmpl) = GEN_TMPL.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: GEN_HDR_LEN bytes are inside the frame (checked above); the template is a map
    // value of that size; the two do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(tmpl.as_ptr(), start as *mut u8, GEN_HDR_LEN);
    }
    let flows = GEN_CFG.get(0).copied().unwrap_or(1).max(1);
    let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU slot; bounds of the UDP header checked above (the generator's frames
    // have a 20-byte IPv4 header).
    unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        let udp = (start + l4) as *mut UdpHdr;
        #[expect(
            clippy::cast_possible_truncation,
            reason = "below 65536 by the modulus"
        )]
        let port = (1024 + n % flows.min(60_000)) as u16;
        (*udp).sport = port.to_be_bytes();
        (*udp).check = [0, 0];
    }
    xdp_action::XDP_TX
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn xdp_count(ctx: XdpContext) -> u32 {
    // ARP and everything else not IPv4 goes on to the stack, so neighbours still resolve.
    let start = ctx.data();
    if start + size_of::<EthHdr>() > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds-checked above.
    if u16::from_be_bytes(unsafe { (*(start as *const EthHdr)).ether_type }) != ETH_P_IPV4 {
        return xdp_action::XDP_PASS;
    }
    if let Some(c) = COUNT.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, valid for the run.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
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
