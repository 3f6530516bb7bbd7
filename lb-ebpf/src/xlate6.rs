//! Translate and forward for IPv6: DNAT / reverse NAT of a 16-byte address and a port, with
//! the transport checksum patched for the pseudo-header (IPv6 has no header checksum), then
//! the hop limit, MACs and the way out (`xlate::out`, shared with IPv4).

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    csum,
    hdr::{EthHdr, Ipv6Hdr},
    maps::NextHop,
    verdict::{PassReason, SendReason},
};

use crate::{
    parse::{Hdr, L4},
    parse6::Packet6,
    verdict::Verdict,
    xlate::{self, fib_query},
};

const AF_INET6: u8 = 10;

#[inline(always)]
const fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Rewrites one (address, port) pair and patches the TCP or UDP checksum: `dst` selects the
/// destination (DNAT) or the source (reverse NAT).
///
/// # Safety
/// `pkt.ip` and the pointer in `l4` must be the bounds-checked pointers from `parse6::packet`.
#[inline(always)]
unsafe fn rewrite(pkt: &Packet6, l4: L4, dst: bool, addr: [u8; 16], port: [u8; 2]) {
    let ip = pkt.ip;
    // SAFETY: the caller guarantees `ip` and `l4` point into the frame.
    unsafe {
        let a = if dst {
            &raw mut (*ip).dst
        } else {
            &raw mut (*ip).src
        };
        let old_addr = *a;
        *a = addr;
        match l4.hdr() {
            Some(Hdr::Tcp(t)) => {
                let p = if dst {
                    &raw mut (*t).dport
                } else {
                    &raw mut (*t).sport
                };
                let old_port = *p;
                *p = port;
                let c = csum::update128(be16((*t).check), old_addr, addr);
                (*t).check = csum::update16(c, be16(old_port), be16(port)).to_be_bytes();
            }
            Some(Hdr::Udp(u)) => {
                let p = if dst {
                    &raw mut (*u).dport
                } else {
                    &raw mut (*u).sport
                };
                let old_port = *p;
                *p = port;
                // Never zero here: the parser refused a zero IPv6 UDP checksum.
                let c = csum::udp_update128(be16((*u).check), old_addr, addr);
                (*u).check = csum::udp_update16(c, be16(old_port), be16(port)).to_be_bytes();
            }
            None => {}
        }
    }
}

/// DNAT: the destination becomes the backend's address and port.
#[inline(always)]
pub fn dnat(pkt: &Packet6, l4: L4, addr: [u8; 16], port: [u8; 2]) {
    // SAFETY: `pkt` comes from `parse6::packet`.
    unsafe { rewrite(pkt, l4, true, addr, port) }
}

/// Reverse NAT: the source becomes the VIP's address and port.
#[inline(always)]
pub fn rnat(pkt: &Packet6, l4: L4, addr: [u8; 16], port: [u8; 2]) {
    // SAFETY: `pkt` comes from `parse6::packet`.
    unsafe { rewrite(pkt, l4, false, addr, port) }
}

/// The packet's hop limit.
#[inline(always)]
pub fn hop_limit(pkt: &Packet6) -> u8 {
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    unsafe { (*pkt.ip).hop_limit }
}

/// Sends a translated packet, as `xlate::forward`: through `nh` when resolved, else the
/// kernel FIB, else to the kernel to route.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet6, nh: Option<NextHop>, ok: SendReason) -> Verdict {
    let proto = pkt.flow().map_or(0, |(f, _)| f.proto);
    // SAFETY: `pkt`'s headers were bounds-checked by the parser.
    unsafe { forward_hdrs(ctx, (pkt.ip, pkt.eth), proto, nh, ok) }
}

/// [`forward`] from the bare header pointers (the ICMPv6 program has no `Packet6`: its stack
/// is spent on the embedded headers). `proto` is the L4 protocol for the FIB fallback.
///
/// # Safety
/// `ip` and `eth` are the frame's bounds-checked IPv6 and Ethernet headers.
#[inline(always)]
pub unsafe fn forward_hdrs(
    ctx: &XdpContext,
    (ip, eth): (*mut Ipv6Hdr, *mut EthHdr),
    proto: u8,
    nh: Option<NextHop>,
    ok: SendReason,
) -> Verdict {
    if let Some(nh) = nh.filter(NextHop::is_resolved) {
        // SAFETY: the caller guarantees the pointers.
        return Verdict::Sent(unsafe { send(ctx, ip, eth, &nh) }, ok);
    }
    // SAFETY: as above.
    match unsafe { fib(ctx, ip, proto) } {
        // SAFETY: as above.
        Some(nh) => Verdict::Sent(unsafe { send(ctx, ip, eth, &nh) }, SendReason::ForwardFib),
        None => Verdict::Pass(PassReason::NoNextHop),
    }
}

/// Hop limit decrement (no header checksum in IPv6), MACs, and out.
///
/// # Safety
/// As [`forward_hdrs`]; the caller checked that the hop limit is above 1.
#[inline(always)]
unsafe fn send(ctx: &XdpContext, ip: *mut Ipv6Hdr, eth: *mut EthHdr, nh: &NextHop) -> u32 {
    // SAFETY: the caller guarantees the pointers.
    unsafe {
        (*ip).hop_limit -= 1;
        xlate::out(ctx, eth, nh)
    }
}

/// The FIB fallback for IPv6 (see `xlate::fib`; out of line for the same stack reason).
///
/// # Safety
/// `ip` is the frame's bounds-checked IPv6 header.
#[inline(never)]
pub unsafe fn fib(ctx: &XdpContext, ip: *mut Ipv6Hdr, proto: u8) -> Option<NextHop> {
    // SAFETY: the caller guarantees the pointer.
    let ip: &Ipv6Hdr = unsafe { &*ip };
    fib_query(ctx, |p| {
        p.family = AF_INET6;
        p.l4_protocol = proto;
        #[expect(clippy::cast_possible_truncation, reason = "a 40-byte header")]
        let hdr = size_of::<Ipv6Hdr>() as u16;
        p.__bindgen_anon_1.tot_len = be16(ip.payload_len).wrapping_add(hdr);
        // The address unions are __be32[4]: the wire bytes as they are.
        p.__bindgen_anon_3.ipv6_src = lb_common::flow::words6(ip.src);
        p.__bindgen_anon_4.ipv6_dst = lb_common::flow::words6(ip.dst);
    })
}

/// `xlate::fib_on_link4` for IPv6: the FIB's next hop towards `dst` only if it is a
/// neighbour (no gateway in place of `dst`).
#[inline(never)]
pub fn fib_on_link6(ctx: &XdpContext, src: [u8; 16], dst: [u8; 16]) -> Option<NextHop> {
    let want = lb_common::flow::words6(dst);
    xlate::fib_query_if(
        ctx,
        |p| {
            p.family = AF_INET6;
            p.__bindgen_anon_3.ipv6_src = lb_common::flow::words6(src);
            p.__bindgen_anon_4.ipv6_dst = want;
        },
        // SAFETY: the union holds the IPv6 destination (family AF_INET6).
        |p| unsafe { p.__bindgen_anon_4.ipv6_dst } == want,
    )
}
