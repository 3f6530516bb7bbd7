//! ICMP to a VIP: the LB answers echo requests itself (so operators can ping a VIP), rate
//! limited per CPU; a VIP balances only TCP and UDP, so other ICMP is a counted drop.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, generated::bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    addr::v4_mapped,
    consts::{ECHO_BURST, ECHO_RATE_PER_SEC},
    csum,
    maps::{ACL_PERMIT, VIP_F_NO_ECHO, VipInfo},
    verdict::Reason,
};

use crate::{
    maps::LB_ECHO_RL,
    parse::{Packet, ptr_at},
    select,
};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const REPLY_TTL: u8 = 64;

/// Handles an ICMP packet addressed to a VIP (well-formed IPv4, no options, not a fragment).
#[inline(always)]
pub fn to_vip(ctx: &XdpContext, pkt: &Packet, vip: &VipInfo) -> (u32, Reason) {
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    let src = unsafe { (*pkt.ip).src };
    let Some(icmp) = ptr_at::<[u8; 4]>(ctx, pkt.l3_off + 20) else {
        return (xdp_action::XDP_DROP, Reason::DropMalformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (ty, code) = unsafe { ((*icmp)[0], (*icmp)[1]) };
    if ty != ECHO_REQUEST || code != 0 {
        return (xdp_action::XDP_DROP, Reason::DropProto);
    }
    // An internal VIP answers only its internal sources, pings included.
    if vip.ilb_id != 0 && select::acl_lookup(vip.ilb_id, &v4_mapped(src)) != Some(ACL_PERMIT) {
        return (xdp_action::XDP_DROP, Reason::DropNotInternal);
    }
    if vip.flags & VIP_F_NO_ECHO != 0 || !take_token() {
        return (xdp_action::XDP_DROP, Reason::DropEchoLimited);
    }
    // SAFETY: `pkt.eth`, `pkt.ip` and `icmp` were bounds-checked.
    unsafe {
        let eth = pkt.eth;
        core::mem::swap(&mut (*eth).src, &mut (*eth).dst);
        let ip = pkt.ip;
        // Swapping the addresses leaves the header checksum as it is (the sum is the same).
        core::mem::swap(&mut (*ip).src, &mut (*ip).dst);
        let old = u16::from_be_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl = REPLY_TTL;
        let new = u16::from_be_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).check = csum::update16(u16::from_be_bytes((*ip).check), old, new).to_be_bytes();
        (*icmp)[0] = ECHO_REPLY;
        let c = u16::from_be_bytes([(*icmp)[2], (*icmp)[3]]);
        let c = csum::update16(
            c,
            u16::from_be_bytes([ECHO_REQUEST, 0]),
            u16::from_be_bytes([ECHO_REPLY, 0]),
        );
        let c = c.to_be_bytes();
        (*icmp)[2] = c[0];
        (*icmp)[3] = c[1];
    }
    // Back out of the ingress device. A redirect to it rather than XDP_TX: on veth, an XDP_TX of
    // a frame that arrived as an skb was counted as sent (rx_queue_0_xdp_tx) but never reached
    // the peer in the lab, while redirects into veth devices deliver; on a NIC both are the
    // same. The other forwarding paths already send through `xlate::forward`, which redirects
    // unless the egress is the ingress device.
    // SAFETY: a plain helper call with flags 0.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "ifindex is a u32 in xdp_md"
    )]
    let out = unsafe { bpf_redirect(ctx.ingress_ifindex() as u32, 0) as u32 };
    (out, Reason::EchoReply)
}

/// Token bucket: `ECHO_RATE_PER_SEC` replies per second per CPU, bursts of `ECHO_BURST`.
#[inline(always)]
fn take_token() -> bool {
    const COST: u64 = 1_000_000_000 / ECHO_RATE_PER_SEC;
    let Some(s) = LB_ECHO_RL.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot; no other writer on this CPU during the program's run.
    unsafe {
        let now = bpf_ktime_get_ns();
        let credit = ((*s).credit_ns + now.saturating_sub((*s).last_ns)).min(ECHO_BURST * COST);
        (*s).last_ns = now;
        if credit < COST {
            (*s).credit_ns = credit;
            return false;
        }
        (*s).credit_ns = credit - COST;
    }
    true
}
