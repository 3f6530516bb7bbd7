//! ICMP around VIPs: the LB answers echo requests to a VIP itself (so operators can ping it),
//! rate-limited per CPU; ICMP errors about tracked flows are translated to the party that owns
//! the flow (to its backend, or back to the client as from the VIP), outer and embedded headers
//! and every checksum included; other ICMP to a VIP is a counted drop.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::PerCpuArray, programs::XdpContext};
use lb_common::{
    consts::{ECHO_BURST, ECHO_RATE_PER_SEC},
    csum,
    flow::{FlowKey4, proto},
    hdr::Ipv4Hdr,
    maps::{
        ACL_PERMIT, CONN_FORWARD, CONN_OUTBOUND, CONN_OUTBOUND_REV, RateState, VIP_F_NO_ECHO,
        VipInfo,
    },
    verdict::{DropReason, SendReason},
};

use crate::{
    conntrack::{self, FromBackend, Reply},
    maps::LB_ECHO_RL,
    parse::{Packet, ptr_at},
    policy, select,
    verdict::Verdict,
    xlate,
};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const REPLY_TTL: u8 = 64;

/// Handles an ICMP packet addressed to a VIP (well-formed IPv4, no options, not a fragment).
#[inline(always)]
pub fn to_vip(ctx: &XdpContext, pkt: &Packet, vip: &VipInfo) -> Verdict {
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    let src = unsafe { (*pkt.ip).src };
    let Some(icmp) = ptr_at::<[u8; 4]>(ctx, pkt.l3_off + 20) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    // SAFETY: bounds-checked by `ptr_at`.
    let (ty, code) = unsafe { ((*icmp)[0], (*icmp)[1]) };
    // An internal VIP does not exist outside its internal prefixes, for ICMP errors too: an
    // outside host must not reach a backend with an error that embeds an internal flow.
    let internal = vip.ilb_id == 0 || policy::acl_lookup(vip.ilb_id, src) == Some(ACL_PERMIT);
    if is_error(ty) {
        if !internal {
            return Verdict::Drop(DropReason::NotInternal);
        }
        return error_to_vip(ctx, pkt);
    }
    if ty != ECHO_REQUEST || code != 0 {
        return Verdict::Drop(DropReason::Proto);
    }
    // An internal VIP answers only its internal sources, pings included.
    if !internal {
        return Verdict::Drop(DropReason::NotInternal);
    }
    if vip.flags & VIP_F_NO_ECHO != 0 || !take_token() {
        return Verdict::Drop(DropReason::EchoLimited);
    }
    // SAFETY: `pkt` comes from the parser, and `icmp` was bounds-checked.
    unsafe {
        xlate::turn_around(pkt, REPLY_TTL);
        (*icmp)[0] = ECHO_REPLY;
        let c = u16::from_be_bytes([(*icmp)[2], (*icmp)[3]]);
        // An all-zero reply (identifier, sequence and payload zero) needs 0xffff, not eqn.
        // 3's 0x0000 (see `update16_nonzero`).
        let c = csum::update16_nonzero(
            c,
            u16::from_be_bytes([ECHO_REQUEST, 0]),
            u16::from_be_bytes([ECHO_REPLY, 0]),
        );
        let c = c.to_be_bytes();
        (*icmp)[2] = c[0];
        (*icmp)[3] = c[1];
    }
    // Back out of the ingress device: XDP_TX, the cheapest way out on a NIC, or a redirect to
    // it on veth (see `xlate::back_out`).
    Verdict::Sent(xlate::back_out(ctx), SendReason::EchoReply)
}

/// Token bucket: `ECHO_RATE_PER_SEC` replies per second per CPU, bursts of `ECHO_BURST`
/// (`RateState::take`, the rule the flood guard uses too).
#[inline(always)]
pub fn take_token() -> bool {
    take_from(&LB_ECHO_RL, ECHO_RATE_PER_SEC, ECHO_BURST)
}

/// One token of the per-CPU bucket `rl`: `rate` per second, bursts of `burst`.
#[inline(always)]
pub fn take_from(rl: &PerCpuArray<RateState>, rate: u64, burst: u64) -> bool {
    let cost = 1_000_000_000 / rate;
    let Some(s) = rl.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot; no other writer on this CPU during the program's run. The
    // helper is a plain call.
    unsafe { (*s).take(bpf_ktime_get_ns(), cost, burst * cost) }
}

const DEST_UNREACH: u8 = 3;
const TIME_EXCEEDED: u8 = 11;
const PARAM_PROBLEM: u8 = 12;

/// Whether an ICMP type is an error that embeds the offending packet's headers.
#[inline(always)]
const fn is_error(ty: u8) -> bool {
    ty == DEST_UNREACH || ty == TIME_EXCEEDED || ty == PARAM_PROBLEM
}

/// The embedded packet of an ICMP error: its IP header and, when present, its L4 checksum.
pub struct Embedded {
    pub ip: *mut Ipv4Hdr,
    /// Source and destination ports (the first 4 bytes of the embedded TCP/UDP header).
    ports: *mut [u8; 4],
    /// The embedded TCP/UDP checksum, when the error carries that far (`None` also for a UDP
    /// checksum of 0, which stays 0).
    l4_check: Option<*mut [u8; 2]>,
    udp: bool,
}

/// Finds the ICMP error header at `off` and its embedded IPv4 + TCP/UDP headers.
#[inline(always)]
pub fn embedded(ctx: &XdpContext, off: usize) -> Option<(*mut [u8; 4], Embedded, FlowKey4)> {
    let icmp = ptr_at::<[u8; 4]>(ctx, off)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, off + 8)?;
    // SAFETY: bounds-checked by `ptr_at`.
    let h = unsafe { &*ip };
    // verifier-friendly and exact: only a plain 20-byte embedded header is matched.
    if h.version_ihl != 0x45 || (h.proto != proto::TCP && h.proto != proto::UDP) {
        return None;
    }
    let l4 = off + 8 + 20;
    let ports = ptr_at::<[u8; 4]>(ctx, l4)?;
    let udp = h.proto == proto::UDP;
    let at = if udp { l4 + 6 } else { l4 + 16 };
    // SAFETY: bounds-checked by `ptr_at`.
    let l4_check = ptr_at::<[u8; 2]>(ctx, at).filter(|c| !(udp && unsafe { **c } == [0, 0]));
    // SAFETY: bounds-checked by `ptr_at`.
    let p = unsafe { *ports };
    let key = FlowKey4::of(h.src, h.dst, [p[0], p[1]], [p[2], p[3]], h.proto);
    Some((
        icmp,
        Embedded {
            ip,
            ports,
            l4_check,
            udp,
        },
        key,
    ))
}

/// Rewrites an address/port of the embedded packet (`src` selects which side) and patches the
/// embedded IP checksum, the embedded L4 checksum when present, and the ICMP checksum, which
/// covers all of those bytes.
///
/// # Safety
/// The pointers in `e` and `icmp` must come from [`embedded`].
#[inline(always)]
pub unsafe fn rewrite_embedded(
    icmp: *mut [u8; 4],
    e: &Embedded,
    src: bool,
    addr: [u8; 4],
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
        let old_ipc = be((*ip).check);
        let new_ipc = csum::update32(old_ipc, old_addr, addr);
        (*ip).check = new_ipc.to_be_bytes();
        let mut ic = be([(*icmp)[2], (*icmp)[3]]);
        ic = csum::update32(ic, old_addr, addr);
        ic = csum::update16(ic, old_ipc, new_ipc);
        ic = csum::update16(ic, be(old_port), be(port));
        if let Some(c) = e.l4_check {
            let old_c = be(*c);
            let c1 = if e.udp {
                csum::udp_update32(old_c, old_addr, addr)
            } else {
                csum::update32(old_c, old_addr, addr)
            };
            let new_c = if e.udp {
                csum::udp_update16(c1, be(old_port), be(port))
            } else {
                csum::update16(c1, be(old_port), be(port))
            };
            *c = new_c.to_be_bytes();
            ic = csum::update16(ic, old_c, new_c);
        }
        let ic = ic.to_be_bytes();
        (*icmp)[2] = ic[0];
        (*icmp)[3] = ic[1];
    }
}

/// An ICMP error to a VIP about a tracked flow (e.g. "fragmentation needed" from the client's
/// path about our reply VIP:port → client): forwarded to the backend that owns the flow, outer
/// destination and embedded source translated to it.
#[inline(always)]
pub fn error_to_vip(ctx: &XdpContext, pkt: &Packet) -> Verdict {
    let unmatched = Verdict::Drop(DropReason::IcmpUnmatched);
    let Some((icmp, e, key)) = embedded(ctx, pkt.l3_off + 20) else {
        return unmatched;
    };
    // The embedded packet went VIP → client; its flow is tracked client → VIP.
    let fwd = key.reversed();
    let Some(ct) = conntrack::lookup(&fwd).filter(|c| c.kind == CONN_FORWARD) else {
        return unmatched;
    };
    let Some(be) = select::live_backend(ct.backend) else {
        return unmatched;
    };
    // A floating-IP flow's backend holds the VIP and sent the reply from it itself: the error
    // goes to it untouched, encapsulated like the flow's forward packets (the same outer
    // source port: the same flow hash). Katran does this; Cilium's DSR does not
    // (cilium#21262).
    let fip = floating(&fwd);
    if fip != lb_common::encap::mode::DNAT {
        let at = crate::encap::at(fip, pkt.l3_off, 0, 0) | crate::encap::AT_ICMP;
        let to = (ct.backend, select::hash(&fwd), at);
        return crate::encap::enter(ctx, lb_common::consts::PROG_ENCAP, to);
    }
    let dip = be.addr;
    if xlate::ttl(pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    // SAFETY: all pointers were bounds-checked (`pkt` by the parser, the rest by `embedded`).
    unsafe {
        // An HA-ports backend sent its packet from the port the client had sent to (this
        // once wrote its port 0 there; the model found it).
        rewrite_embedded(icmp, &e, true, dip, select::backend_port(&be, &fwd));
        let ip = pkt.ip;
        let old = (*ip).dst;
        (*ip).dst = dip;
        (*ip).check = csum::update32(u16::from_be_bytes((*ip).check), old, dip).to_be_bytes();
    }
    xlate::forward(ctx, pkt, Some(be.nh), SendReason::IcmpToBackend)
}

/// The data-path mode of the service a client → VIP flow belongs to: its exact service's, or
/// the VIP's HA-ports catch-all's (DNAT if neither is there any more).
#[inline(always)]
fn floating(fwd: &FlowKey4) -> u32 {
    select::service(fwd)
        .or_else(|| {
            select::service_at(lb_common::maps::ServiceKey4::of(fwd.dst, [0; 2], fwd.proto))
        })
        .map_or(lb_common::encap::mode::DNAT, |s| s.floating_ip())
}

/// The tracked flow an ICMP error from a backend's side is about (the embedded packet went
/// client → DIP, so its reverse is a reply of the flow); `None` when the packet is no such
/// error (the kernel's business).
#[inline(always)]
pub fn tracked_error_from_backend(ctx: &XdpContext, pkt: &Packet) -> Option<Reply> {
    let icmp_ty = ptr_at::<[u8; 1]>(ctx, pkt.l3_off + 20)?;
    // SAFETY: bounds-checked by `ptr_at`.
    if !is_error(unsafe { (*icmp_ty)[0] }) {
        return None;
    }
    let (_, _, key) = embedded(ctx, pkt.l3_off + 20)?;
    // No flags: an error changes no flow's TCP state.
    match conntrack::from_backend(&key.reversed(), 0) {
        FromBackend::Reply(r) => Some(r),
        _ => None,
    }
}

/// Whether an ICMP packet is an error about an outbound flow (`lb_common::outbound`): from
/// the outside about a packet that left with a frontend address (its embedded packet reversed
/// is the flow's returning key), or from the backends' side about a returning packet (reversed,
/// the flow's forward key). The outbound program translates it.
#[inline(always)]
pub fn about_outbound(ctx: &XdpContext, pkt: &Packet) -> bool {
    let Some(icmp_ty) = ptr_at::<[u8; 1]>(ctx, pkt.l3_off + 20) else {
        return false;
    };
    // SAFETY: bounds-checked by `ptr_at`.
    if !is_error(unsafe { (*icmp_ty)[0] }) {
        return false;
    }
    let Some((_, _, key)) = embedded(ctx, pkt.l3_off + 20) else {
        return false;
    };
    conntrack::lookup(&key.reversed())
        .is_some_and(|c| c.kind == CONN_OUTBOUND || c.kind == CONN_OUTBOUND_REV)
        || crate::outbound::stateless_error(&key).is_some()
}

/// An ICMP error from a backend (or a router on its side) about a packet of the tracked flow
/// `r` (found by [`tracked_error_from_backend`]): translated back to the VIP and sent to the
/// client.
#[inline(always)]
pub fn error_from_backend(ctx: &XdpContext, pkt: &Packet, r: &Reply) -> Verdict {
    // verifier: the embedded headers are found again here rather than carried over from the
    // classification, so every packet pointer is derived from a check in this function.
    let Some((icmp, e, key)) = embedded(ctx, pkt.l3_off + 20) else {
        return Verdict::Drop(DropReason::IcmpUnmatched);
    };
    let vip = r.vip;
    if xlate::ttl(pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    // SAFETY: `e.ip` was bounds-checked by `embedded`.
    let dip = unsafe { (*e.ip).dst };
    // SAFETY: all pointers were bounds-checked.
    unsafe {
        rewrite_embedded(icmp, &e, false, vip, r.vport);
        // The outer source is the backend itself for its own errors; a router's stays.
        let ip = pkt.ip;
        if (*ip).src == dip {
            (*ip).src = vip;
            (*ip).check = csum::update32(u16::from_be_bytes((*ip).check), dip, vip).to_be_bytes();
        }
    }
    // The embedded packet came from the client: its source is where the error goes.
    xlate::forward(ctx, pkt, select::route(key.src), SendReason::IcmpToClient)
}
