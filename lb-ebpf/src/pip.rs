//! Instance-level public IPs: stateless 1:1 NAT between a PIP and its instance, for every
//! protocol (ICMP included), bypassing the balancing tables. Inbound `dst PIP → DIP`, outbound
//! `src DIP → PIP`; the IPv4 checksum is patched, and the TCP/UDP one too where the segment
//! starts in this packet (a non-first fragment carries no L4 header; ICMP has no pseudo-header).
//! Endpoint ACLs do not apply: the instance's own firewall does.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    addr::{as_v4, v4_mapped},
    csum,
    flow::proto,
    hdr::IPV4_FRAG_MASK,
    maps::{PipEntry, VipKey},
    verdict::Reason,
};

use crate::{
    maps::{LB_PIP_REV, LB_PIPS},
    parse::{Packet, ptr_at},
    select, xlate,
};

/// Translates and sends a packet to or from a PIP; `None` when it is neither.
#[inline(always)]
pub fn translate(ctx: &XdpContext, pkt: &Packet) -> Option<(u32, Reason)> {
    if pkt.problem == Some(Reason::DropMalformed) {
        return None;
    }
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    let (src, dst) = unsafe { ((*pkt.ip).src, (*pkt.ip).dst) };
    // SAFETY: values are copied out at once.
    if let Some(e) = unsafe {
        LB_PIPS
            .get(VipKey {
                vip: v4_mapped(dst),
            })
            .copied()
    } {
        return Some(nat(ctx, pkt, &e, true, Reason::PipIn));
    }
    // SAFETY: as above.
    if let Some(e) = unsafe {
        LB_PIP_REV
            .get(VipKey {
                vip: v4_mapped(src),
            })
            .copied()
    } {
        return Some(nat(ctx, pkt, &e, false, Reason::PipOut));
    }
    None
}

#[inline(always)]
fn nat(ctx: &XdpContext, pkt: &Packet, e: &PipEntry, inbound: bool, ok: Reason) -> (u32, Reason) {
    use aya_ebpf::bindings::xdp_action;
    if xlate::ttl(pkt) <= 1 {
        return (xdp_action::XDP_DROP, Reason::DropTtl);
    }
    let Some(new) = as_v4(&e.addr) else {
        return (xdp_action::XDP_PASS, Reason::PassNotOurs);
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
        select::route(v4_mapped(unsafe { (*pkt.ip).dst }))
    };
    xlate::forward(ctx, pkt, nh, ok)
}
