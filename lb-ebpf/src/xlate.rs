//! Stage 4 and 5, translate and forward: DNAT / reverse NAT with incremental checksums, then
//! TTL, MACs and the way out.

use core::{mem::size_of, ptr::addr_of_mut};

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{bpf_fib_lookup, xdp_action},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    csum,
    hdr::Ipv4Hdr,
    maps::NextHop,
    verdict::{DropReason, PassReason, SendReason},
};

use crate::{
    parse::{Hdr, L4, Packet},
    verdict::Verdict,
};

const AF_INET: u8 = 2;

/// 1: a frame that leaves by its ingress device is redirected to it rather than sent with
/// `XDP_TX`. Set by the agent at load time when it serves a veth (`--xdp-tx`): veth flushes an
/// `XDP_TX` frame to its peer without waking the peer's NAPI unless the peer runs an XDP
/// program, so the frame waits for the next packet; a redirect (`ndo_xdp_xmit`) wakes it. A
/// load-time constant, so the verifier prunes the branch not taken and a NIC pays nothing.
#[unsafe(no_mangle)]
static LB_TX_REDIRECT: Global<u8> = Global::new(0);
/// `BPF_FIB_LKUP_RET_SUCCESS`.
pub const FIB_SUCCESS: i64 = 0;

#[inline(always)]
const fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Rewrites one (address, port) pair of the packet and patches the IPv4 and L4 checksums.
/// `dst` selects the destination pair (DNAT) or the source pair (reverse NAT).
///
/// # Safety
/// `pkt.ip` and the pointer in `l4` must be the bounds-checked pointers from `parse::packet`.
#[inline(always)]
unsafe fn rewrite(pkt: &Packet, l4: L4, dst: bool, addr: [u8; 4], port: [u8; 2]) {
    let ip = pkt.ip;
    // SAFETY: the caller guarantees `ip` and `l4` point into the frame.
    unsafe {
        let a = if dst {
            addr_of_mut!((*ip).dst)
        } else {
            addr_of_mut!((*ip).src)
        };
        let old_addr = *a;
        *a = addr;
        (*ip).check = csum::update32(be16((*ip).check), old_addr, addr).to_be_bytes();
        match l4.hdr() {
            Some(Hdr::Tcp(t)) => {
                let p = if dst {
                    addr_of_mut!((*t).dport)
                } else {
                    addr_of_mut!((*t).sport)
                };
                let old_port = *p;
                *p = port;
                let c = csum::update32(be16((*t).check), old_addr, addr);
                (*t).check = csum::update16(c, be16(old_port), be16(port)).to_be_bytes();
            }
            Some(Hdr::Udp(u)) => {
                let p = if dst {
                    addr_of_mut!((*u).dport)
                } else {
                    addr_of_mut!((*u).sport)
                };
                let old_port = *p;
                *p = port;
                let c = csum::udp_update32(be16((*u).check), old_addr, addr);
                (*u).check = csum::udp_update16(c, be16(old_port), be16(port)).to_be_bytes();
            }
            // A packet without a transport header is never translated (callers hold one).
            None => {}
        }
    }
}

/// DNAT: the destination becomes the backend's address and port.
#[inline(always)]
pub fn dnat(pkt: &Packet, l4: L4, addr: [u8; 4], port: [u8; 2]) {
    // SAFETY: `pkt` comes from `parse::packet`.
    unsafe { rewrite(pkt, l4, true, addr, port) }
}

/// Reverse NAT: the source becomes the VIP's address and port.
#[inline(always)]
pub fn rnat(pkt: &Packet, l4: L4, addr: [u8; 4], port: [u8; 2]) {
    // SAFETY: `pkt` comes from `parse::packet`.
    unsafe { rewrite(pkt, l4, false, addr, port) }
}

/// The packet's TTL.
#[inline(always)]
pub fn ttl(pkt: &Packet) -> u8 {
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    unsafe { (*pkt.ip).ttl }
}

/// Sends a translated packet: through `nh` (agent-resolved) when it is resolved, else through
/// the kernel FIB (`bpf_fib_lookup`), else hands it to the kernel to route (`XDP_PASS`, without
/// touching the TTL, which the kernel then decrements).
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, nh: Option<NextHop>, ok: SendReason) -> Verdict {
    if let Some(nh) = nh.filter(NextHop::is_resolved) {
        return Verdict::Sent(send(ctx, pkt, &nh), ok);
    }
    match fib(ctx, pkt) {
        Some(nh) => Verdict::Sent(send(ctx, pkt, &nh), SendReason::ForwardFib),
        None => Verdict::Pass(PassReason::NoNextHop),
    }
}

/// TTL decrement, MAC rewrite, and out: `XDP_TX` on the ingress device, else a redirect.
#[inline(always)]
fn send(ctx: &XdpContext, pkt: &Packet, nh: &NextHop) -> u32 {
    // SAFETY: `pkt.ip` and `pkt.eth` were bounds-checked by the parser; the caller checked
    // that the TTL is above 1.
    unsafe {
        let ip = pkt.ip;
        let old = u16::from_be_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl -= 1;
        let new = u16::from_be_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).check = csum::update16(be16((*ip).check), old, new).to_be_bytes();
        out(ctx, pkt.eth, nh)
    }
}

/// MACs from `nh`, and out: `XDP_TX` on the ingress device, else a redirect. Both families'
/// last step.
///
/// # Safety
/// `eth` is the frame's bounds-checked Ethernet header.
#[inline(always)]
pub unsafe fn out(ctx: &XdpContext, eth: *mut lb_common::hdr::EthHdr, nh: &NextHop) -> u32 {
    // SAFETY: the caller guarantees `eth` is bounds-checked.
    unsafe {
        (*eth).src = nh.smac;
        (*eth).dst = nh.dmac;
    }
    if nh.ifindex as usize == ingress_ifindex(ctx) {
        back_out(ctx)
    } else {
        redirect(nh.ifindex)
    }
}

/// The action that sends the frame out of `ifindex`: `XDP_TX` (or [`back_out`]'s redirect) on
/// the ingress device, else a redirect. ([`out`] spells it out again: through this function,
/// LLVM gave `lb_hairpin6` 8 more bytes of stack, and its chain with the FIB fallback's frame
/// came to 528 of the verifier's 512.)
#[inline(always)]
pub fn leave(ctx: &XdpContext, ifindex: u32) -> u32 {
    if ifindex as usize == ingress_ifindex(ctx) {
        back_out(ctx)
    } else {
        redirect(ifindex)
    }
}

/// Turns a frame around, to go back to where it came from as the LB's own packet: MACs and
/// addresses swapped, TTL `ttl`, the IPv4 checksum patched for it. Swapping the addresses
/// leaves the checksums as they are (the sums are the same); the caller rewrites the rest
/// (an echo's type, a RST's numbers) and sends it with [`back_out`].
///
/// # Safety
/// `pkt` comes from `parse::packet` (its header pointers were bounds-checked).
#[inline(always)]
pub unsafe fn turn_around(pkt: &Packet, ttl: u8) {
    // SAFETY: the caller guarantees the pointers are bounds-checked.
    unsafe {
        let eth = pkt.eth;
        core::mem::swap(&mut (*eth).src, &mut (*eth).dst);
        let ip = pkt.ip;
        core::mem::swap(&mut (*ip).src, &mut (*ip).dst);
        let old = u16::from_be_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl = ttl;
        let new = u16::from_be_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).check = csum::update16(u16::from_be_bytes((*ip).check), old, new).to_be_bytes();
    }
}

/// Hands the packet to the tail-call program in `LB_PROGS` slot `slot`. Returns only if the
/// tail call fails (the agent has not installed the program), as the drop `missing`.
#[inline(always)]
pub fn tail_call(ctx: &XdpContext, slot: u32, missing: DropReason) -> Verdict {
    // SAFETY: `ctx` is this program's context; on success control never comes back.
    unsafe { crate::maps::LB_PROGS.tail_call(ctx, slot) };
    Verdict::Drop(missing)
}

/// The action that sends the frame back out of its ingress device: `XDP_TX`, or a redirect
/// to that device where the agent says `XDP_TX` cannot be trusted (see [`LB_TX_REDIRECT`]).
#[inline(always)]
pub fn back_out(ctx: &XdpContext) -> u32 {
    if LB_TX_REDIRECT.load() == 0 {
        xdp_action::XDP_TX
    } else {
        // ifindex is a u32 in xdp_md.
        redirect(ingress_ifindex(ctx) as u32)
    }
}

#[inline(always)]
fn redirect(ifindex: u32) -> u32 {
    // SAFETY: a plain helper call; flags 0. It returns XDP_REDIRECT (or XDP_ABORTED for
    // invalid flags, which 0 is not).
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

#[inline(always)]
pub fn ingress_ifindex(ctx: &XdpContext) -> usize {
    ctx.ingress_ifindex()
}

/// The fallback next hop: the kernel FIB, for entries the agent has not resolved (yet).
/// Out of line: every forwarding site would otherwise carry its own 64-byte
/// `bpf_fib_lookup` on the hot function's stack (verifier: 512 bytes for the whole chain).
#[inline(never)]
fn fib(ctx: &XdpContext, pkt: &Packet) -> Option<NextHop> {
    fib_hdr(ctx, pkt.ip)
}

/// [`fib`] for the IPv4 header at `ip` (a translated packet's, or an encapsulated one's outer
/// header).
#[inline(always)]
pub fn fib_hdr(ctx: &XdpContext, ip: *const Ipv4Hdr) -> Option<NextHop> {
    // SAFETY: callers pass a header bounds-checked since the last helper that moved the packet.
    let ip: &Ipv4Hdr = unsafe { &*ip };
    fib_query(ctx, |p| {
        p.family = AF_INET;
        p.l4_protocol = ip.proto;
        p.__bindgen_anon_1.tot_len = be16(ip.tot_len);
        // The address unions are __be32: keep the wire bytes as they are.
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    })
}

/// The kernel FIB's next hop towards `dst` (from `src`), only if `dst` is on a connected link:
/// the lookup gives the gateway's address in place of `dst` when there is one. A floating-IP
/// `l2` backend must be a neighbour; a gateway would route the VIP back. Out of line, as
/// [`fib`].
#[inline(never)]
pub fn fib_on_link4(ctx: &XdpContext, src: [u8; 4], dst: [u8; 4]) -> Option<NextHop> {
    let want = u32::from_ne_bytes(dst);
    fib_query_if(
        ctx,
        |p| {
            p.family = AF_INET;
            p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
            p.__bindgen_anon_4.ipv4_dst = want;
        },
        // SAFETY: the union holds the IPv4 destination (family AF_INET).
        |p| unsafe { p.__bindgen_anon_4.ipv4_dst } == want,
    )
}

/// A `bpf_fib_lookup` from the ingress device, its family's fields set by `fill`: the
/// resolved next hop, if the kernel has one. Inlined into each family's out-of-line `fib`.
#[inline(always)]
pub fn fib_query(ctx: &XdpContext, fill: impl FnOnce(&mut bpf_fib_lookup)) -> Option<NextHop> {
    let mut p = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    let p = fib_params(&mut p);
    fill(p);
    (fib_call(ctx, p) == FIB_SUCCESS).then_some(NextHop {
        ifindex: p.ifindex,
        smac: p.smac,
        dmac: p.dmac,
    })
}

/// [`fib_query`], whose answer counts only if `accept` takes the lookup's output.
#[inline(always)]
pub fn fib_query_if(
    ctx: &XdpContext,
    fill: impl FnOnce(&mut bpf_fib_lookup),
    accept: impl FnOnce(&bpf_fib_lookup) -> bool,
) -> Option<NextHop> {
    let mut p = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    let p = fib_params(&mut p);
    fill(p);
    (fib_call(ctx, p) == FIB_SUCCESS && accept(p)).then_some(NextHop {
        ifindex: p.ifindex,
        smac: p.smac,
        dmac: p.dmac,
    })
}

/// `p` zeroed word by word with volatile stores. size: `mem::zeroed()` of the 64-byte struct
/// compiled to a byte-wise `memset` call.
#[inline(always)]
fn fib_params(p: &mut core::mem::MaybeUninit<bpf_fib_lookup>) -> &mut bpf_fib_lookup {
    let words = p.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    // verifier: a constant trip count, unrolled.
    while i < size_of::<bpf_fib_lookup>() / 4 {
        // SAFETY: `i` words into a 64-byte, 4-aligned struct.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: all-zero is a valid `bpf_fib_lookup` (plain integers and unions of integers).
    unsafe { &mut *p.as_mut_ptr() }
}

/// The lookup itself, from the ingress device: its return code.
#[inline(always)]
fn fib_call(ctx: &XdpContext, p: &mut bpf_fib_lookup) -> i64 {
    #[expect(
        clippy::cast_possible_truncation,
        reason = "ifindex is a u32 in xdp_md"
    )]
    {
        p.ifindex = ingress_ifindex(ctx) as u32;
    }
    // SAFETY: `p` is a valid, writable `bpf_fib_lookup` of the size passed.
    unsafe {
        fib_lookup(
            ctx.as_ptr(),
            core::ptr::from_mut(p),
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    }
}
