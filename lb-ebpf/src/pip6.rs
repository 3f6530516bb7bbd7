//! Instance-level public IPs over IPv6: the `lb_pip6` tail-call program, the rules of
//! `pip.rs` for the IPv6 maps. Stateless 1:1 NAT between a PIP and its instance, for every
//! protocol, ICMPv6 included: inbound `dst PIP → DIP`, outbound `src DIP → PIP`. IPv6 has no
//! header checksum; the TCP, UDP and ICMPv6 checksums cover the addresses through the
//! pseudo-header and are patched. A fragment is a counted drop (`drop_fragment`): a first
//! fragment's checksum could not be patched (the walk stops at the fragment header), and a
//! translated packet with a stale checksum would be lost silently at the instance.
//!
//! Entered from the IPv6 path (`family6`) for a packet to a PIP or from an instance, and from `lb_icmp6` for
//! an instance's ICMPv6 error that is about no balanced flow.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    consts::PROG_PIP6,
    csum,
    verdict::{DropReason, PassReason, SendReason},
};

use crate::{
    maps::{LB_PIP_REV6, LB_PIPS6},
    parse::{self, Hdr},
    parse6, six,
    verdict::Verdict,
    xlate6,
};

/// Hands the packet to `lb_pip6`; if the tail call fails (the program is missing), the
/// kernel has it.
#[inline(always)]
pub fn enter(ctx: &XdpContext) -> Verdict {
    // SAFETY: `ctx` is this program's context; on success control never comes back.
    unsafe { crate::maps::LB_PROGS.tail_call(ctx, PROG_PIP6) };
    Verdict::Pass(PassReason::NotOurs)
}

/// The `lb_pip6` program's body.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Verdict {
    let Ok(l2) = parse::l2(ctx) else {
        return Verdict::Pass(PassReason::Short);
    };
    let pkt = match parse6::packet(ctx, &l2) {
        Ok(p) => p,
        Err(r) => return Verdict::Pass(r),
    };
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    let (src, dst) = unsafe { ((*pkt.ip).src, (*pkt.ip).dst) };
    // SAFETY: copied out at once.
    let (e, inbound) = match unsafe { LB_PIPS6.get(dst).copied() } {
        Some(e) => (e, true),
        // SAFETY: copied out at once.
        None => match unsafe { LB_PIP_REV6.get(src).copied() } {
            Some(e) => (e, false),
            None => return Verdict::Pass(PassReason::NotOurs),
        },
    };
    // Every protocol, so not TCP/UDP (`drop_proto`) is fine; what the walk could not pass
    // keeps its reason, and a malformed packet is the kernel's, as for IPv4.
    match pkt.problem {
        None | Some(DropReason::Proto) => {}
        Some(DropReason::Malformed) => return Verdict::Pass(PassReason::NotOurs),
        Some(r) => return Verdict::Drop(r),
    }
    if xlate6::hop_limit(&pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    let (old, new) = if inbound {
        (dst, e.addr)
    } else {
        (src, e.addr)
    };
    // SAFETY: every pointer was bounds-checked by the parser.
    unsafe {
        if inbound {
            (*pkt.ip).dst = new;
        } else {
            (*pkt.ip).src = new;
        }
        match pkt.flow().and_then(|(_, l4)| l4.hdr()) {
            Some(Hdr::Tcp(t)) => {
                let c = csum::update128(u16::from_be_bytes((*t).check), old, new);
                (*t).check = c.to_be_bytes();
            }
            Some(Hdr::Udp(u)) => {
                let c = csum::udp_update128(u16::from_be_bytes((*u).check), old, new);
                (*u).check = c.to_be_bytes();
            }
            None if !pkt.icmp.is_null() => {
                let i = pkt.icmp;
                let c =
                    csum::update128(u16::from_be_bytes([(*i)[2], (*i)[3]]), old, new).to_be_bytes();
                (*i)[2] = c[0];
                (*i)[3] = c[1];
            }
            None => {}
        }
    }
    if inbound {
        xlate6::forward(ctx, &pkt, Some(e.nh), SendReason::PipIn)
    } else {
        xlate6::forward(ctx, &pkt, six::route(dst), SendReason::PipOut)
    }
}
