//! The backends' decapsulation program, `lb_decap`, in an object of its own (a backend loads
//! it, never the LB): floating IP's IPIP and GUE packets have their outer headers stripped in
//! XDP, so a backend needs no tunnel device (this very kernel has no IPIP, FOU or ip6tnl
//! module). Like Katran's decapsulation program for its servers.
//!
//! A frame whose outer header is IPv4 protocol 4 (IPIP), IPv6 next header 41, or UDP to the
//! GUE port (`LB_DECAP_CFG`) over either, carries an inner IPv4 or IPv6 packet. If its inner
//! destination is one of the backend's VIPs (`LB_DECAP_VIPS`), the outer headers go
//! (`bpf_xdp_adjust_head`), the L2 header moves up in front of the inner packet with the
//! inner family's ethertype, and the stack gets it (`XDP_PASS`): it is addressed to the VIP on
//! the backend's loopback, its checksums are the client's own. Anything else is not
//! encapsulated and passes untouched. Each outcome is counted
//! (`lb_common::encap::decap::Outcome`).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    addr::v4_mapped,
    encap::{
        PROTO_IPIP, PROTO_IPV6,
        decap::{DecapConfig, MAX_VIPS, Outcome},
    },
    flow::proto,
    hdr::{ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, Ipv4Hdr, Ipv6Hdr, UdpHdr},
};

/// The backend's VIPs (16-byte addresses, IPv4 ones v4-mapped) → 1. Writer: `lb backend
/// setup`.
#[map(name = "LB_DECAP_VIPS")]
static LB_DECAP_VIPS: HashMap<[u8; 16], u32> = HashMap::pinned(MAX_VIPS, 0);

/// Frames per outcome (`Outcome as u32`), per CPU.
#[map(name = "LB_DECAP_STATS")]
static LB_DECAP_STATS: PerCpuArray<u64> = PerCpuArray::pinned(4, 0);

/// The GUE port to strip.
#[map(name = "LB_DECAP_CFG")]
static LB_DECAP_CFG: Array<DecapConfig> = Array::pinned(1, 0);

/// A bounds-checked pointer to a `T` at `off` bytes into the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// What the frame is: not encapsulated (`None`), or the outer headers' length past the L2
/// header (`Some(Ok)`), or encapsulated but unreadable (`Some(Err)`).
type Found = Option<Result<usize, Outcome>>;

/// The outer headers of an encapsulated frame whose outer IP header is at `l3` and whose
/// ethertype is `et`.
#[inline(always)]
fn outer(ctx: &XdpContext, l3: usize, et: u16) -> Found {
    let gue = LB_DECAP_CFG.get(0).map_or([0; 2], |c| c.gue_port);
    let (ip_len, next) = if et == ETH_P_IPV4 {
        let ip = ptr_at::<Ipv4Hdr>(ctx, l3)?;
        // SAFETY: bounds-checked above.
        let h = unsafe { &*ip };
        let ihl = usize::from(h.version_ihl & 0x0f) * 4;
        if h.proto != PROTO_IPIP && h.proto != proto::UDP {
            return None;
        }
        // (A UDP fragment is refused below even when it is not GUE: only its first fragment
        // carries the port. The kernel would reassemble it; this program cannot.)
        // An outer fragment cannot be stripped on its own (the LB sets DF, so none should
        // come); nor can a header shorter than 20 bytes be read.
        if ihl < 20 || u16::from_be_bytes(h.frag_off) & lb_common::hdr::IPV4_FRAG_MASK != 0 {
            return Some(Err(Outcome::Malformed));
        }
        (ihl, h.proto)
    } else {
        let ip = ptr_at::<Ipv6Hdr>(ctx, l3)?;
        // SAFETY: bounds-checked above.
        (40, unsafe { (*ip).next })
    };
    // IPIP is the family in itself (the LB sends IPv4 in IPv4, IPv6 in IPv6); GUE carries
    // either. A UDP datagram too short for its header is no GUE packet.
    let ipip = if et == ETH_P_IPV4 {
        PROTO_IPIP
    } else {
        PROTO_IPV6
    };
    if next == ipip {
        return Some(Ok(ip_len));
    }
    if next != proto::UDP || gue == [0; 2] {
        return None;
    }
    let u = ptr_at::<UdpHdr>(ctx, l3 + ip_len)?;
    // SAFETY: bounds-checked above.
    (unsafe { (*u).dport } == gue).then_some(Ok(ip_len + 8))
}

/// The inner packet at `at`: its ethertype, if its destination is one of the VIPs.
#[inline(always)]
fn inner(ctx: &XdpContext, at: usize) -> Result<u16, Outcome> {
    let v = ptr_at::<u8>(ctx, at).ok_or(Outcome::Malformed)?;
    // SAFETY: bounds-checked above.
    let (et, dst) = match unsafe { *v } >> 4 {
        4 => {
            let ip = ptr_at::<Ipv4Hdr>(ctx, at).ok_or(Outcome::Malformed)?;
            // SAFETY: bounds-checked above.
            (ETH_P_IPV4, v4_mapped(unsafe { (*ip).dst }))
        }
        6 => {
            let ip = ptr_at::<Ipv6Hdr>(ctx, at).ok_or(Outcome::Malformed)?;
            // SAFETY: bounds-checked above.
            (ETH_P_IPV6, unsafe { (*ip).dst })
        }
        _ => return Err(Outcome::Malformed),
    };
    // SAFETY: a plain lookup; the value is not read.
    if unsafe { LB_DECAP_VIPS.get(dst) }.is_none() {
        return Err(Outcome::NotVip);
    }
    Ok(et)
}

/// Strips `by` bytes of outer headers after the `l3`-byte L2 header, which moves up in front
/// of the inner packet with ethertype `et`.
///
/// verifier/size: the L2 header is copied byte by byte with volatile stores (an array copy
/// within the packet compiled to a `memmove` call), through pointers checked before the
/// helper; the helper then moves the start, and nothing reads the packet after it.
#[inline(always)]
fn strip(ctx: &XdpContext, l3: usize, by: usize, et: u16) -> Result<(), Outcome> {
    let from = ptr_at::<[u8; 18]>(ctx, 0).ok_or(Outcome::Malformed)?;
    let to = ptr_at::<[u8; 18]>(ctx, by).ok_or(Outcome::Malformed)?;
    let (from, to) = (from.cast::<u8>(), to.cast::<u8>());
    let mut i = 0;
    // verifier: a constant trip count; `by` >= 20, so the copy never reads what it wrote.
    while i < 18 {
        if i + 2 < l3 {
            // SAFETY: both inside the 18 bytes checked above.
            unsafe { to.add(i).write_volatile(from.add(i).read_volatile()) };
        }
        i += 1;
    }
    let et = et.to_be_bytes();
    // SAFETY: `l3 - 2` and `l3 - 1` are inside the 18 bytes at `to` (l3 is 14 or 18).
    unsafe {
        to.add(l3 - 2).write_volatile(et[0]);
        to.add(l3 - 1).write_volatile(et[1]);
    }
    #[expect(
        clippy::cast_possible_wrap,
        reason = "at most 68 bytes of outer headers"
    )]
    let delta = by as i32;
    // SAFETY: the context is this program's; the helper checks the length itself.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(Outcome::Malformed);
    }
    Ok(())
}

#[inline(always)]
fn count(o: Outcome) {
    if let Some(c) = LB_DECAP_STATS.get_ptr_mut(o as u32) {
        // SAFETY: this CPU's slot, valid for the run.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn run(ctx: &XdpContext) -> Result<(), Outcome> {
    let Some(eth) = ptr_at::<[u8; 14]>(ctx, 0) else {
        return Err(Outcome::Passed);
    };
    // SAFETY: bounds-checked above.
    let mut et = u16::from_be_bytes(unsafe { [(*eth)[12], (*eth)[13]] });
    let mut l3 = 14;
    if et == ETH_P_8021Q {
        let tag = ptr_at::<[u8; 4]>(ctx, 14).ok_or(Outcome::Passed)?;
        // SAFETY: bounds-checked above.
        et = u16::from_be_bytes(unsafe { [(*tag)[2], (*tag)[3]] });
        l3 = 18;
    }
    if et != ETH_P_IPV4 && et != ETH_P_IPV6 {
        return Err(Outcome::Passed);
    }
    let by = match outer(ctx, l3, et) {
        None => return Err(Outcome::Passed),
        Some(r) => r?,
    };
    let inner_et = inner(ctx, l3 + by)?;
    strip(ctx, l3, by, inner_et)
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "the #[xdp] entry point takes its context by value"
)]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    match run(&ctx) {
        Ok(()) => {
            count(Outcome::Stripped);
            xdp_action::XDP_PASS
        }
        Err(Outcome::Passed) => {
            count(Outcome::Passed);
            xdp_action::XDP_PASS
        }
        Err(o) => {
            count(o);
            xdp_action::XDP_DROP
        }
    }
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as the helpers it calls require.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
