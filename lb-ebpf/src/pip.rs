//! Instance-level public IPs: stateless 1:1 NAT between a PIP and its instance, for every
//! protocol (ICMP included), bypassing the balancing tables. [`lookup`] is the one PIP check
//! (classification calls it); [`nat`] translates. Inbound `dst PIP → DIP`, outbound
//! `src DIP → PIP`; the IPv4 checksum is patched, and the TCP/UDP one too where the segment
//! starts in this packet (a non-first fragment carries no L4 header; ICMP has no pseudo-header).
//! Endpoint ACLs do not apply: the instance's own firewall does.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    csum,
    flow::proto,
    hdr::IPV4_FRAG_MASK,
    maps::PipEntry4,
    verdict::{DropReason, SendReason},
};

use crate::{
    maps::{LB_PIP_REV4, LB_PIPS4},
    parse::{Packet, ptr_at},
    select,
    verdict::Verdict,
    xlate,
};

/// The PIP entry of a packet to a PIP (`true`) or from a PIP's instance (`false`); `None`
/// when it is neither, or too malformed to translate. The one place PIPs are looked up;
/// `to_us` and `from_us` say whether the destination and source may be ours at all (the
/// "maybe ours" filter), so a lookup that must miss is not made.
#[inline(always)]
pub fn lookup(pkt: &Packet, to_us: bool, from_us: bool) -> Option<(PipEntry4, bool)> {
    if pkt.problem == Some(DropReason::Malformed) {
        return None;
    }
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    let (src, dst) = unsafe { ((*pkt.ip).src, (*pkt.ip).dst) };
    if to_us {
        // SAFETY: copied out at once.
        if let Some(e) = unsafe { LB_PIPS4.get(dst).copied() } {
            return Some((e, true));
        }
    }
    if from_us {
        // SAFETY: copied out at once.
        if let Some(e) = unsafe { LB_PIP_REV4.get(src).copied() } {
            return Some((e, false));
        }
    }
    None
}

/// Translates and sends a packet to a PIP (`inbound`) or from its instance: the address,
/// the IPv4 checksum, and the TCP/UDP one where the segment starts in this packet.
#[inline(always)]
pub fn nat(ctx: &XdpContext, pkt: &Packet, e: &PipEntry4, inbound: bool) -> Verdict {
    if xlate::ttl(pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    let new = e.addr;
    let ok = if inbound {
        SendReason::PipIn
    } else {
        SendReason::PipOut
    };
    // SAFETY: `pkt.ip` was bounds-checked by the parser; the header is not malformed, so IHL
    // is at least 5 and the whole header lies in the frame.
    let (old, ihl, proto_, first) = unsafe {
        let ip = pkt.ip;
        let old = if inbound { (*ip).dst } else { (*ip).src };
        if inbound {
            (*ip).dst = new;
        } else {
            (*ip).src = new;
        }
        (*ip).check = csum::update32(u16::from_be_bytes((*ip).check), old, new).to_be_bytes();
        let frag = u16::from_be_bytes((*ip).frag_off) & IPV4_FRAG_MASK & 0x1fff;
        (
            old,
            usize::from((*ip).version_ihl & 0x0f) * 4,
            (*ip).proto,
            frag == 0,
        )
    };
    // The L4 checksum covers the addresses through the pseudo-header.
    let l4 = pkt.l3_off + ihl;
    let l4_check = match proto_ {
        proto::TCP if first => Some((l4 + 16, false)),
        proto::UDP if first => Some((l4 + 6, true)),
        _ => None,
    };
    if let Some((at, udp)) = l4_check
        && let Some(c) = ptr_at::<[u8; 2]>(ctx, at)
    {
        // SAFETY: bounds-checked by `ptr_at`.
        unsafe {
            let cur = u16::from_be_bytes(*c);
            let next = if udp {
                csum::udp_update32(cur, old, new)
            } else {
                csum::update32(cur, old, new)
            };
            *c = next.to_be_bytes();
        }
    }
    let nh = if inbound {
        Some(e.nh)
    } else {
        // SAFETY: `pkt.ip` was bounds-checked by the parser.
        select::route(unsafe { (*pkt.ip).dst })
    };
    xlate::forward(ctx, pkt, nh, ok)
}
