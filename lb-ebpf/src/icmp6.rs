//! ICMPv6 errors about tracked IPv6 flows: the `lb_icmp6` tail-call program, entered from
//! the IPv6 path (`family6`) for every ICMPv6 error (destination unreachable, packet too big, time exceeded,
//! parameter problem) right after the fixed header. The rules are IPv4's (`icmp.rs`):
//! * to a VIP, about a reply the LB sent (VIP:port → client): the flow is found by the
//!   embedded tuple reversed, and the error goes to the backend that owns it, outer
//!   destination and embedded source translated to it;
//! * from a backend's side (the backend or a router), about a packet the LB sent to the
//!   backend (client → DIP:port): the flow is found as a reply's would be, and the error goes
//!   to the client, the embedded destination translated back to the VIP, and the outer source
//!   too when the backend itself sent it.
//!
//! The ICMPv6 checksum covers the IPv6 pseudo-header, so every outer address change is patched
//! into it as well as the embedded bytes (the embedded IPv6 header has no checksum of its own;
//! the embedded TCP/UDP checksum is patched when the error carries it). Only a plain embedded
//! header (TCP or UDP right after it) is matched; anything else is unmatched: a counted drop
//! to a VIP, the kernel's otherwise.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    consts::PROG_ICMP6,
    csum,
    flow::{FlowKey6, proto},
    hdr::Ipv6Hdr,
    maps::{CONN_FORWARD, ServiceKey6},
    verdict::{DropReason, PassReason, SendReason},
};

use crate::{
    conntrack6::{self, FromBackend6},
    maps::LB_CONNTRACK6,
    parse::{self, ptr_at},
    six,
    verdict::Verdict,
    xlate6,
};

/// Whether an ICMPv6 type is an error that embeds the offending packet (RFC 4443: 1–4).
#[inline(always)]
pub const fn is_error(ty: u8) -> bool {
    ty >= 1 && ty <= 4
}

/// Hands an ICMPv6 error to `lb_icmp6`. If the tail call fails (the program is missing), an
/// error to a VIP is a counted drop and any other the kernel's.
#[inline(always)]
pub fn enter(ctx: &XdpContext, to_vip: bool) -> Verdict {
    // SAFETY: `ctx` is this program's context; on success control never comes back.
    unsafe { crate::maps::LB_PROGS.tail_call(ctx, PROG_ICMP6) };
    unmatched(to_vip)
}

#[inline(always)]
const fn unmatched(to_vip: bool) -> Verdict {
    if to_vip {
        Verdict::Drop(DropReason::IcmpUnmatched)
    } else {
        Verdict::Pass(PassReason::NotOurs)
    }
}

/// The embedded packet of an ICMPv6 error: its IPv6 header, ports and (when carried) L4
/// checksum.
struct Embedded6 {
    ip: *mut Ipv6Hdr,
    ports: *mut [u8; 4],
    l4_check: Option<*mut [u8; 2]>,
    udp: bool,
}

/// The ICMPv6 header at `off` and its embedded IPv6 + TCP/UDP headers, with the embedded tuple.
#[inline(always)]
fn embedded(ctx: &XdpContext, off: usize) -> Option<(*mut [u8; 4], Embedded6, FlowKey6)> {
    let icmp = ptr_at::<[u8; 4]>(ctx, off)?;
    let ip = ptr_at::<Ipv6Hdr>(ctx, off + 8)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let h = unsafe { &*ip };
    if h.vtc_flow[0] >> 4 != 6 || (h.next != proto::TCP && h.next != proto::UDP) {
        return None;
    }
    let l4 = off + 8 + 40;
    let ports = ptr_at::<[u8; 4]>(ctx, l4)?;
    let udp = h.next == proto::UDP;
    let at = if udp { l4 + 6 } else { l4 + 16 };
    let l4_check = ptr_at::<[u8; 2]>(ctx, at);
    // SAFETY: bounds-checked by `ptr_at`.
    let p = unsafe { *ports };
    let key = FlowKey6::of(h.src, h.dst, [p[0], p[1]], [p[2], p[3]], h.next);
    Some((
        icmp,
        Embedded6 {
            ip,
            ports,
            l4_check,
            udp,
        },
        key,
    ))
}

/// Rewrites one address/port pair of the embedded packet (`src` selects which) and patches
/// the embedded L4 checksum, when carried, and the ICMPv6 checksum, which covers all of it.
///
/// # Safety
/// The pointers come from [`embedded`].
#[inline(always)]
unsafe fn rewrite_embedded(
    icmp: *mut [u8; 4],
    e: &Embedded6,
    src: bool,
    addr: [u8; 16],
    port: [u8; 2],
) {
    // SAFETY: the caller guarantees the pointers are bounds-checked.
    unsafe {
        let be = u16::from_be_bytes;
        let ip = e.ip;
        let old_addr = if src { (*ip).src } else { (*ip).dst };
        let p = *e.ports;
        let old_port = if src { [p[0], p[1]] } else { [p[2], p[3]] };
        if src {
            (*ip).src = addr;
            (*e.ports)[0] = port[0];
            (*e.ports)[1] = port[1];
        } else {
            (*ip).dst = addr;
            (*e.ports)[2] = port[0];
            (*e.ports)[3] = port[1];
        }
        let mut ic = be([(*icmp)[2], (*icmp)[3]]);
        ic = csum::update128(ic, old_addr, addr);
        ic = csum::update16(ic, be(old_port), be(port));
        if let Some(c) = e.l4_check {
            let old_c = be(*c);
            let new_c = if e.udp {
                csum::udp_update16(
                    csum::udp_update128(old_c, old_addr, addr),
                    be(old_port),
                    be(port),
                )
            } else {
                csum::update16(
                    csum::update128(old_c, old_addr, addr),
                    be(old_port),
                    be(port),
                )
            };
            *c = new_c.to_be_bytes();
            ic = csum::update16(ic, old_c, new_c);
        }
        set_check(icmp, ic);
    }
}

/// Rewrites an outer address (`dst` selects which) and patches the ICMPv6 checksum's
/// pseudo-header part.
///
/// # Safety
/// `ip` and `icmp` are bounds-checked.
#[inline(always)]
unsafe fn rewrite_outer(ip: *mut Ipv6Hdr, icmp: *mut [u8; 4], dst: bool, addr: [u8; 16]) {
    // SAFETY: the caller guarantees the pointers are bounds-checked.
    unsafe {
        let a = if dst {
            &raw mut (*ip).dst
        } else {
            &raw mut (*ip).src
        };
        let old = *a;
        *a = addr;
        let ic = u16::from_be_bytes([(*icmp)[2], (*icmp)[3]]);
        set_check(icmp, csum::update128(ic, old, addr));
    }
}

/// # Safety
/// `icmp` is bounds-checked.
#[inline(always)]
unsafe fn set_check(icmp: *mut [u8; 4], c: u16) {
    let c = c.to_be_bytes();
    // SAFETY: the caller guarantees the pointer is bounds-checked.
    unsafe {
        (*icmp)[2] = c[0];
        (*icmp)[3] = c[1];
    }
}

/// The `lb_icmp6` program's body.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Verdict {
    // Only the headers' pointers, no `Packet6`: this program's stack goes to the embedded
    // headers (verifier: with a `Packet6` it needed 496 bytes, and 560 with the FIB fallback).
    let Ok(l2) = parse::l2(ctx) else {
        return Verdict::Pass(PassReason::Short);
    };
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l2.off) else {
        return Verdict::Pass(PassReason::Short);
    };
    // SAFETY: bounds-checked above.
    let (next, dst, hop_limit) = unsafe { ((*ip).next, (*ip).dst, (*ip).hop_limit) };
    let to_vip = six::vip(dst).is_some();
    // `family6` sends only errors right after the fixed header; checked again here.
    if next != proto::ICMPV6 {
        return unmatched(to_vip);
    }
    let Some((icmp, e, key)) = embedded(ctx, l2.off + 40) else {
        // An error whose embedded packet is no flow's we can read is still a PIP instance's
        // own, out through its PIP as one about no balanced flow is (as over IPv4). (This once
        // passed untranslated, from the instance's address; the kernel differential test
        // found it.)
        return if to_vip {
            unmatched(true)
        } else {
            crate::pip6::enter(ctx)
        };
    };
    let hdrs = (ip, l2.eth);
    if to_vip {
        // The embedded packet went VIP → client; its flow is tracked client → VIP.
        // SAFETY: copied out at once.
        let ct = unsafe { LB_CONNTRACK6.get(key.reversed()).copied() };
        let Some((id, be)) = ct
            .filter(|c| c.kind == CONN_FORWARD)
            .and_then(|c| six::live_backend(c.backend).map(|b| (c.backend, b)))
        else {
            return unmatched(true);
        };
        // A floating-IP flow's error goes to its backend untouched, encapsulated (see
        // `icmp::error_to_vip`).
        let fwd = key.reversed();
        let fip = six::service(ServiceKey6::of(fwd.dst, fwd.dport, fwd.proto))
            .or_else(|| six::service(ServiceKey6::of(fwd.dst, [0; 2], fwd.proto)))
            .map_or(lb_common::encap::mode::DNAT, |s| s.floating_ip());
        if fip != lb_common::encap::mode::DNAT {
            let hash = lb_common::hash::flow_hash6(&fwd, crate::select::seed());
            let at = crate::encap::at(fip, l2.off, l2.off + 40, proto::ICMPV6);
            let to = (id, hash, at | crate::encap::AT_ICMP);
            return crate::encap::enter(ctx, lb_common::consts::PROG_ENCAP6, to);
        }
        if hop_limit <= 1 {
            return Verdict::Drop(DropReason::Ttl);
        }
        // SAFETY: every pointer was bounds-checked (`pkt` by the parser, the rest by
        // `embedded`).
        unsafe {
            // An HA-ports backend's own port is 0: the embedded one (the VIP's) stays.
            let port = lb_common::maps::port_at(be.port, key.sport);
            rewrite_embedded(icmp, &e, true, be.addr, port);
            rewrite_outer(ip, icmp, true, be.addr);
            return xlate6::forward_hdrs(
                ctx,
                hdrs,
                proto::ICMPV6,
                Some(be.nh),
                SendReason::IcmpToBackend,
            );
        }
    }
    // From the backends' side: the embedded packet went client → DIP, so its reverse is a
    // reply of the flow. No flags: an error changes no flow's TCP state.
    let FromBackend6::Reply(r) = conntrack6::from_backend(&key.reversed(), 0) else {
        // Not a balanced flow's: a PIP's instance's error goes out through its PIP.
        return crate::pip6::enter(ctx);
    };
    if hop_limit <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    // SAFETY: bounds-checked by `embedded`.
    let dip = unsafe { (*e.ip).dst };
    // SAFETY: as above.
    unsafe {
        rewrite_embedded(icmp, &e, false, r.vip, r.vport);
        // The outer source is the backend itself for its own errors; a router's stays.
        if (*ip).src == dip {
            rewrite_outer(ip, icmp, false, r.vip);
        }
        // The embedded packet came from the client: its source is where the error goes.
        xlate6::forward_hdrs(
            ctx,
            hdrs,
            proto::ICMPV6,
            six::route(key.src),
            SendReason::IcmpToClient,
        )
    }
}
