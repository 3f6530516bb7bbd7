//! The IPv6 fast path: parse (`parse6.rs`) → classify → select → translate (`xlate6.rs`) →
//! forward, with the IPv4 path's rules over the IPv6 maps (Cilium's `lb6_*` beside `lb4_*`).
//!
//! What it serves: TCP and UDP services (exact ports and HA ports), the table pick with the
//! service's distribution mode, conntrack with reply matching (`conntrack6.rs`), weights and
//! drain (they live in the table and the backend entries). Neighbour discovery and router
//! messages always pass; other ICMPv6 to a VIP is a counted drop. The precedence is the IPv4
//! one: a service, else a tracked flow's reply, else to a VIP (drop), else not ours.
//!
//! verifier: the stack is full. `family6` (`main.rs`), which runs this, has a 432-byte frame
//! (448 as the verifier rounds it; a check of the ethertype in `parse6::packet`, or moving
//! `conntrack6::remember` or `from_backend` out of line, each made it larger, not smaller), and
//! with its FIB fallback's 64 the chain is the verifier's 512. It is traced through a tail call
//! (`counted!(six, ..)` in `main.rs`, `lb_trace6`), not the IPv4 exit hook's frame. What IPv6
//! needs beyond this (ICMPv6 errors, PIPs, hairpin SNAT) goes to programs of its own; a change
//! that adds stack fails every fixture at load.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    conn,
    flow::{FlowKey6, proto},
    hash::dist_hash6,
    hdr::Ipv6Hdr,
    maglev,
    maps::{
        ACL_HAIRPIN, ACL_PERMIT, AclValue, Backend6, BackendId, CONN_FORWARD, CONN_HAIRPIN,
        NextHop, SVC_F_INTERNAL, SVC_F_TCP_RESET, ServiceInfo, ServiceKey6, VIP_F_HA_PORTS,
        VIP_F_HAIRPIN_SNAT, VIP_F_NO_ECHO, VipInfo, acl_key6, ours_bit6,
    },
    verdict::{DropReason, PassReason, SendReason},
};

use crate::{
    conntrack,
    conntrack6::{self, FromBackend6, Reply6},
    maps::{LB_ACL6, LB_BACKENDS6, LB_OURS4, LB_RING, LB_ROUTES6, LB_SERVICES6, LB_VIPS6},
    parse::{self, L4},
    parse6::{self, Packet6},
    stats::{self, Dir},
    verdict::Verdict,
    xlate6,
};

/// Whether an IPv6 frame is surely none of ours: TCP or UDP right after the fixed header, and
/// neither address's filter bit set. [`classify`] would pass it as `pass_not_ours` too (only a
/// set bit can be a VIP or a backend), so the common case, IPv6 traffic that is the host's
/// own, is passed before the extension-header walk. Anything else (a short frame, an
/// extension header, ICMPv6) takes the walk.
#[inline(always)]
fn surely_not_ours(ctx: &XdpContext, l2: &parse::L2) -> bool {
    let Some(ip) = parse::ptr_at::<Ipv6Hdr>(ctx, l2.off) else {
        return false;
    };
    // SAFETY: bounds-checked above; byte-array fields.
    let (next, src, dst) = unsafe { ((*ip).next, (*ip).src, (*ip).dst) };
    (next == proto::TCP || next == proto::UDP) && !maybe_ours(dst) && !maybe_ours(src)
}

/// An IPv6 frame, from its link layer to its verdict.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Verdict {
    let l2 = match parse::l2(ctx) {
        Ok(l2) => l2,
        Err(pass) => return Verdict::Pass(pass),
    };
    if surely_not_ours(ctx, &l2) {
        return Verdict::Pass(PassReason::NotOurs);
    }
    let pkt = match parse6::packet(ctx, &l2) {
        Ok(p) => p,
        Err(pass) => return Verdict::Pass(pass),
    };
    match classify(&pkt) {
        Class6::Service(svc) => match pkt.flow() {
            Some((flow, l4)) => to_backend(ctx, &pkt, flow, l4, &svc),
            None => Verdict::Drop(DropReason::Malformed),
        },
        Class6::Reply(r) => match pkt.flow() {
            Some((flow, l4)) => to_client(ctx, &pkt, flow, l4, &r),
            None => Verdict::Drop(DropReason::Malformed),
        },
        Class6::Echo(vip) => echo(ctx, &pkt, &vip),
        Class6::IcmpError(to_vip) => crate::icmp6::enter(ctx, to_vip),
        Class6::Pip => crate::pip6::enter(ctx),
        Class6::Hairpin => crate::hairpin6::enter(ctx),
        Class6::Unservable(r) => Verdict::Drop(r),
        Class6::NotOurs(r) => Verdict::Pass(r),
    }
}

/// ICMPv6 echo request and reply types.
const ECHO_REQUEST6: u8 = 128;
const ECHO_REPLY6: u8 = 129;
/// The reply's hop limit.
const REPLY_HOP_LIMIT: u8 = 64;

/// Answers an echo request to a VIP, as IPv4's `icmp::to_vip` does: the same per-CPU rate
/// limit (`LB_ECHO_RL`) and the VIP's `icmp_echo` switch. The reply is the request turned
/// around: MACs and addresses swapped (the ICMPv6 checksum covers both addresses in its
/// pseudo-header, so the swap leaves it as it is), the type patched into the checksum.
#[inline(always)]
fn echo(ctx: &XdpContext, pkt: &Packet6, vip: &VipInfo) -> Verdict {
    // An internal VIP answers only its internal sources, pings included.
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    let src = unsafe { (*pkt.ip).src };
    if vip.ilb_id != 0 && acl_lookup(vip.ilb_id, src) != Some(ACL_PERMIT) {
        return Verdict::Drop(DropReason::NotInternal);
    }
    if vip.flags & VIP_F_NO_ECHO != 0 || !crate::icmp::take_token() {
        return Verdict::Drop(DropReason::EchoLimited);
    }
    let icmp = pkt.icmp;
    // SAFETY: the parser bounds-checked the Ethernet, IPv6 and ICMPv6 headers (`icmp` is
    // not null for a packet classified as an echo request).
    unsafe {
        core::mem::swap(&mut (*pkt.eth).src, &mut (*pkt.eth).dst);
        core::mem::swap(&mut (*pkt.ip).src, &mut (*pkt.ip).dst);
        (*pkt.ip).hop_limit = REPLY_HOP_LIMIT;
        (*icmp)[0] = ECHO_REPLY6;
        let c = u16::from_be_bytes([(*icmp)[2], (*icmp)[3]]);
        let c = lb_common::csum::update16(
            c,
            u16::from_be_bytes([ECHO_REQUEST6, 0]),
            u16::from_be_bytes([ECHO_REPLY6, 0]),
        )
        .to_be_bytes();
        (*icmp)[2] = c[0];
        (*icmp)[3] = c[1];
    }
    Verdict::Sent(crate::xlate::back_out(ctx), SendReason::EchoReply)
}

/// What an IPv6 packet is.
enum Class6 {
    Service(ServiceInfo),
    Reply(Reply6),
    /// An echo request to a VIP, right after the fixed header.
    Echo(VipInfo),
    /// An ICMPv6 error (`true`: to a VIP), for the ICMPv6 program.
    IcmpError(bool),
    /// To a PIP or from its instance, for the PIP program.
    Pip,
    /// The reply of a hairpin flow, for the hairpin program.
    Hairpin,
    Unservable(DropReason),
    NotOurs(PassReason),
}

/// Whether an IPv6 address may be one the fast path looks up (the shared filter).
#[inline(always)]
fn maybe_ours(a: [u8; 16]) -> bool {
    let (w, m) = ours_bit6(a);
    LB_OURS4.get(w).is_some_and(|v| v & m != 0)
}

#[inline(always)]
fn classify(pkt: &Packet6) -> Class6 {
    if pkt.is_ndp() {
        return Class6::NotOurs(PassReason::Ndp);
    }
    let mut not_ours = PassReason::NotOurs;
    if let Some((flow, _)) = pkt.flow() {
        let (to_us, from_us) = (maybe_ours(flow.dst), maybe_ours(flow.src));
        if to_us && let Some(svc) = service(ServiceKey6::of(flow.dst, flow.dport, flow.proto)) {
            return Class6::Service(svc);
        }
        if from_us {
            match conntrack6::from_backend(flow, pkt.flags()) {
                FromBackend6::Reply(r) => return Class6::Reply(r),
                FromBackend6::Hairpin => return Class6::Hairpin,
                FromBackend6::Refused => not_ours = PassReason::NotReply,
                FromBackend6::None => {}
            }
        }
        // A PIP, after VIP flows (a DIP can also be a VIP's backend), and, as for IPv4, also
        // for a packet its flow refused as a reply: the client may have reused its port to
        // reach the instance through the PIP, and that connection's replies must leave from
        // the PIP, not from the DIP. (This once kept such a packet the kernel's, unlike IPv4;
        // the kernel differential test found it.)
        if is_pip((to_us, &flow.dst), (from_us, &flow.src)) {
            return Class6::Pip;
        }
        if !to_us {
            return Class6::NotOurs(not_ours);
        }
    } else {
        // Every other protocol is looked up as it comes. An instance's ICMPv6 error goes to
        // `lb_icmp6` first (it may be about a balanced flow), which hands it on when not.
        let error = pkt.icmp().is_some_and(|(t, _)| crate::icmp6::is_error(t));
        // SAFETY: `pkt.ip` was bounds-checked by the parser.
        let (src, dst) = unsafe { ((*pkt.ip).src, (*pkt.ip).dst) };
        if is_pip((true, &dst), (!error, &src)) {
            return Class6::Pip;
        }
    }
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    let dst = unsafe { (*pkt.ip).dst };
    let vip = vip(dst);
    // An ICMPv6 error right after the fixed header, to a VIP or from a backend's side: the
    // ICMPv6 program matches it to its flow (or not).
    if let Some((t, _)) = pkt.icmp()
        && crate::icmp6::is_error(t)
        && pkt.icmp as usize == pkt.ip as usize + size_of::<Ipv6Hdr>()
    {
        // An internal VIP does not exist outside its internal prefixes, for errors too (as
        // IPv4's `icmp::to_vip`): an outside host must not reach a backend with an error
        // that embeds an internal flow. (This once went on to `lb_icmp6`; the kernel
        // differential test found it.)
        if let Some(v) = vip
            && v.ilb_id != 0
            // SAFETY: `pkt.ip` was bounds-checked by the parser.
            && acl_lookup(v.ilb_id, unsafe { (*pkt.ip).src }) != Some(ACL_PERMIT)
        {
            return Class6::Unservable(DropReason::NotInternal);
        }
        return Class6::IcmpError(vip.is_some());
    }
    let Some(vip) = vip else {
        return Class6::NotOurs(not_ours);
    };
    match pkt.flow() {
        // HA ports: a port no exact service has is the catch-all's, (VIP, 0, protocol).
        Some((flow, _)) if vip.flags & VIP_F_HA_PORTS != 0 => {
            match service(ServiceKey6::of(flow.dst, [0; 2], flow.proto)) {
                Some(svc) => Class6::Service(svc),
                None => Class6::Unservable(DropReason::NoService),
            }
        }
        Some(_) => Class6::Unservable(DropReason::NoService),
        // An echo request behind extension headers is not answered: the reply would carry
        // them back (a counted `drop_proto`).
        None if pkt.icmp() == Some((ECHO_REQUEST6, 0))
            && pkt.icmp as usize == pkt.ip as usize + size_of::<Ipv6Hdr>() =>
        {
            Class6::Echo(vip)
        }
        None => Class6::Unservable(pkt.problem.unwrap_or(DropReason::Malformed)),
    }
}

/// Whether the destination is a PIP or the source a PIP's instance, each looked up only where
/// its flag says it may be (existence only: `lb_pip6` reads the entry).
#[inline(always)]
fn is_pip((to_us, dst): (bool, &[u8; 16]), (from_us, src): (bool, &[u8; 16])) -> bool {
    (to_us && crate::maps::LB_PIPS6.get_ptr(dst).is_some())
        || (from_us && crate::maps::LB_PIP_REV6.get_ptr(src).is_some())
}

/// The IPv6 service of a (VIP, port, protocol).
#[inline(always)]
pub fn service(key: ServiceKey6) -> Option<ServiceInfo> {
    // SAFETY: copied out at once.
    unsafe { LB_SERVICES6.get(key).copied() }
}

#[inline(always)]
pub fn vip(addr: [u8; 16]) -> Option<VipInfo> {
    // SAFETY: copied out at once.
    unsafe { LB_VIPS6.get(addr).copied() }
}

/// A live IPv6 backend by id (id 0 and inactive entries are none).
#[inline(always)]
pub fn live_backend(id: BackendId) -> Option<Backend6> {
    if id == 0 {
        return None;
    }
    let b = *LB_BACKENDS6.get(id)?;
    b.is_active().then_some(b)
}

/// The agent-resolved next hop towards a client address.
#[inline(always)]
pub fn route(dst: [u8; 16]) -> Option<NextHop> {
    LB_ROUTES6
        .get(aya_ebpf::maps::lpm_trie::Key::new(128, dst))
        .copied()
}

/// A source's entry in an `LB_ACL6` set (verdict and deciding rule): one LPM lookup (the
/// agent always installs the set's default entry, so a miss is treated as a deny).
#[inline(always)]
pub fn acl_entry(acl_id: u32, src: [u8; 16]) -> Option<AclValue> {
    LB_ACL6
        .get(aya_ebpf::maps::lpm_trie::Key::new(
            32 + 128,
            acl_key6(acl_id, src),
        ))
        .copied()
}

#[inline(always)]
fn acl_lookup(acl_id: u32, src: [u8; 16]) -> Option<u32> {
    acl_entry(acl_id, src).map(|v| v.action)
}

/// Whether a new flow's source passes the endpoint's ACL (counted per service when not).
#[inline(always)]
pub fn acl_permits(svc: &ServiceInfo, src: [u8; 16]) -> bool {
    if svc.acl_id != 0 && acl_lookup(svc.acl_id, src) != Some(ACL_PERMIT) {
        stats::count_acl_drop(svc.id);
        return false;
    }
    true
}

/// Admission of a new IPv6 flow, as `policy::admit`: an internal VIP's source set first,
/// then the endpoint's ACL. `Ok(true)`: a VIP's own backend connecting to it with hairpin
/// SNAT on, for the hairpin program (which checks the endpoint's ACL itself); without
/// hairpin SNAT that is `drop_hairpin`.
#[inline(always)]
fn admit(flow: &FlowKey6, svc: &ServiceInfo) -> Result<bool, DropReason> {
    if svc.flags & SVC_F_INTERNAL != 0
        && let Some(v) = vip(flow.dst)
        && v.ilb_id != 0
    {
        match acl_lookup(v.ilb_id, flow.src) {
            Some(ACL_PERMIT) => {}
            Some(ACL_HAIRPIN) if v.flags & VIP_F_HAIRPIN_SNAT != 0 => return Ok(true),
            Some(ACL_HAIRPIN) => return Err(DropReason::Hairpin),
            _ => return Err(DropReason::NotInternal),
        }
    }
    if !acl_permits(svc, flow.src) {
        return Err(DropReason::Acl);
    }
    Ok(false)
}

/// The backend the service's table gives `hash`, if live.
#[inline(always)]
pub fn from_table(svc: &ServiceInfo, hash: u32) -> Result<(BackendId, Backend6), DropReason> {
    let slot = maglev::slot(hash, svc.table_len).ok_or(DropReason::NoBackend)?;
    let id = *LB_RING
        .get(svc.table_off.wrapping_add(slot))
        .ok_or(DropReason::NoBackend)?;
    let b = live_backend(id).ok_or(DropReason::NoBackend)?;
    Ok((id, b))
}

/// Client → VIP: pick (or recall) the backend, DNAT, forward.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet6,
    flow: &FlowKey6,
    l4: L4,
    svc: &ServiceInfo,
) -> Verdict {
    if flow.proto == proto::TCP && conn::invalid_flags(pkt.flags()) {
        return Verdict::Drop(DropReason::TcpFlags);
    }
    if xlate6::hop_limit(pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    let (id, be, new_flow) = match pick(flow, pkt, svc) {
        Ok(Some(p)) => p,
        Ok(None) => return crate::hairpin6::enter(ctx),
        Err(r) => return Verdict::Drop(r),
    };
    stats::count_flow(id, pkt.len, Dir::Forward { new_flow });
    let fip = svc.floating_ip();
    if fip != lb_common::encap::mode::DNAT {
        let hash = lb_common::hash::flow_hash6(flow, crate::select::seed());
        // The headers' offsets: packet pointers less the frame's start (scalars, which `at6`
        // masks to their bounds for the verifier).
        let l3 = (pkt.ip as usize).wrapping_sub(ctx.data());
        let at = crate::encap::at(fip, l3, l4.offset(ctx), flow.proto);
        return crate::encap::enter(ctx, lb_common::consts::PROG_ENCAP6, (id, hash, at));
    }
    // An HA-ports backend has no port: the flow keeps the one it was sent to.
    let port = lb_common::maps::port_at(be.port, flow.dport);
    xlate6::dnat(pkt, l4, be.addr, port);
    xlate6::forward(ctx, pkt, Some(be.nh), SendReason::Forward)
}

/// Backend → client reply of a tracked flow.
#[inline(always)]
fn to_client(ctx: &XdpContext, pkt: &Packet6, flow: &FlowKey6, l4: L4, r: &Reply6) -> Verdict {
    if xlate6::hop_limit(pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    r.commit();
    xlate6::rnat(pkt, l4, r.vip, r.vport);
    stats::count_flow(r.backend, pkt.len, Dir::Reply);
    xlate6::forward(ctx, pkt, route(flow.dst), SendReason::Reply)
}

/// The backend of a client → VIP packet, as `select::pick`: the tracked one if still live,
/// else the table's (tracked unless the flood guard refuses, or a stray RST or FIN). `true`
/// for a new flow; `None` for a hairpin flow, new or tracked (the hairpin program's).
#[inline(always)]
fn pick(
    flow: &FlowKey6,
    pkt: &Packet6,
    svc: &ServiceInfo,
) -> Result<Option<(BackendId, Backend6, bool)>, DropReason> {
    let tcp = flow.proto == proto::TCP;
    let flags = pkt.flags();
    let syn = tcp && conn::is_syn(flags);
    if !syn {
        match conntrack6::forward(flow, pkt) {
            Some(ct) => {
                if ct.kind == CONN_HAIRPIN {
                    return Ok(None);
                }
                if ct.kind == CONN_FORWARD
                    && let Some(b) = live_backend(ct.backend)
                {
                    return Ok(Some((ct.backend, b, false)));
                }
            }
            None => stats::count_conntrack_miss(svc.id),
        }
    }
    if admit(flow, svc)? {
        return Ok(None);
    }
    let hash = dist_hash6(flow, svc.distribution(), crate::select::seed());
    let (id, b) = from_table(svc, hash)?;
    if !(tcp && !syn && conn::is_teardown(flags)) {
        if conntrack::may_track() {
            let numbered = tcp && svc.flags & SVC_F_TCP_RESET != 0;
            let replies = svc.floating_ip() == lb_common::encap::mode::DNAT;
            let how = (syn, numbered, replies);
            conntrack6::remember(flow, pkt, (id, b.addr, b.port), svc.id, how);
        } else {
            stats::count_untracked(svc.id);
        }
    }
    Ok(Some((id, b, true)))
}
