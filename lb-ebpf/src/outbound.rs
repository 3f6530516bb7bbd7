//! Outbound NAT (`[[outbound]]` rules): a covered backend's own flow to an address outside its
//! rule's inside prefixes leaves with the rule's frontend address as its source and a port of
//! the backend's block (`lb_common::outbound`); the returning packets to frontend:port are
//! translated back to the backend.
//!
//! Each flow has two conntrack entries: the forward one (backend → remote, `CONN_OUTBOUND`,
//! which keeps the flow's TCP state and names its frontend port) and the returning one
//! (remote → frontend:port, `CONN_OUTBOUND_REV`, which names the backend). A port is free for a
//! new flow when no returning entry holds it towards the same remote endpoint, so one port
//! carries flows to many destinations. The new flow's port is hash-chosen among
//! `OUT_PORT_TRIES` candidates, as hairpin SNAT's is; none free is a counted drop
//! (`drop_snat_exhausted`). The flood guard does not apply: these are the backends' own flows,
//! and an untracked one could not be translated back.
//!
//! It runs as its own XDP program (`lb_outbound`), entered from `lb_xdp` by tail call, for the
//! reason `hairpin.rs` gives: two-sided NAT needs a second key and entry, and `lb_xdp`'s stack
//! frame has no room for them.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    conn,
    consts::PROG_OUTBOUND,
    csum,
    flow::{FlowKey4, proto},
    maps::{CONN_OUTBOUND, CONN_OUTBOUND_REV, ConnEntry4, acl_key4},
    outbound::{
        OUT_F_STATELESS, OUT_F_TCP_RESET, OUT_PORT_TRIES, OUT_SERVICE_FLAG, OutBlockKey4,
        OutFront4, OutboundEntry4, candidate,
    },
    verdict::{DropReason, PassReason, SendReason},
};

use crate::{
    conntrack, icmp,
    maps::{LB_OUT_BLOCKS4, LB_OUT_FRONTS4, LB_OUT_INSIDE4, LB_OUTBOUND4},
    parse::{self, Hdr, L4, Packet},
    select,
    verdict::Verdict,
    xlate,
};

/// Hands the packet to the outbound program (a counted drop if it is not installed).
#[inline(always)]
pub fn enter(ctx: &XdpContext) -> Verdict {
    xlate::tail_call(ctx, PROG_OUTBOUND, DropReason::OutboundUnavailable)
}

/// The outbound entry of a covered backend address.
#[inline(always)]
pub fn entry(src: [u8; 4]) -> Option<OutboundEntry4> {
    // SAFETY: copied out at once.
    unsafe { LB_OUTBOUND4.get(src).copied() }
}

/// Whether `dst` is inside rule `rule`'s prefixes (then the flow keeps the backend's address).
#[inline(always)]
pub fn inside(rule: u32, dst: [u8; 4]) -> bool {
    LB_OUT_INSIDE4
        .get(aya_ebpf::maps::lpm_trie::Key::new(
            32 + 32,
            acl_key4(rule, dst),
        ))
        .is_some()
}

/// The frontend entry of an address, if it is a frontend of an outbound rule.
#[inline(always)]
pub fn front(dst: [u8; 4]) -> Option<OutFront4> {
    // SAFETY: copied out at once.
    unsafe { LB_OUT_FRONTS4.get(dst).copied() }
}

/// The backend that owns the block holding `port` on stateless frontend `frontend`.
#[inline(always)]
pub fn block_owner(frontend: [u8; 4], port: [u8; 2], f: &OutFront4) -> Option<[u8; 4]> {
    let key = OutBlockKey4::of(frontend, u16::from_be_bytes(port), f.ports)?;
    // SAFETY: copied out at once.
    unsafe { LB_OUT_BLOCKS4.get(key).copied() }
}

/// A stateless rule's backend → outside: only the source address changes (the backend's own
/// port is in its block, or the packet is dropped: its ephemeral range is not set to it); no
/// flow is tracked.
#[inline(always)]
pub fn stateless_out(
    ctx: &XdpContext,
    pkt: &Packet,
    (flow, l4): (&FlowKey4, L4),
    e: &OutboundEntry4,
) -> Verdict {
    if xlate::ttl(pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    if flow.proto == proto::TCP && conn::invalid_flags(pkt.flags()) {
        return Verdict::Drop(DropReason::TcpFlags);
    }
    let p = u16::from_be_bytes(flow.sport);
    if p < e.base || p - e.base >= e.ports {
        return Verdict::Drop(DropReason::OutboundPort);
    }
    xlate::rnat(pkt, l4, e.frontend, flow.sport);
    xlate::forward(ctx, pkt, select::route(flow.dst), SendReason::Outbound)
}

/// Returning to a stateless rule's frontend port: the block's owner (`owner`, looked up by
/// classification) gets it, address only.
#[inline(always)]
pub fn stateless_in(
    ctx: &XdpContext,
    pkt: &Packet,
    (flow, l4): (&FlowKey4, L4),
    owner: Option<[u8; 4]>,
) -> Verdict {
    let Some((dip, e)) = owner
        .and_then(|d| entry(d).map(|e| (d, e)))
        .filter(|(_, e)| e.covers(flow.proto))
    else {
        return Verdict::Drop(DropReason::OutboundPort);
    };
    if xlate::ttl(pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    xlate::dnat(pkt, l4, dip, flow.dport);
    xlate::forward(ctx, pkt, Some(e.nh), SendReason::OutboundReturn)
}

/// The outbound program: a returning packet, a tracked outbound flow, or a new one.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Verdict {
    // `lb_xdp` only tail-calls for well-formed TCP/UDP, so these misses cannot happen; they
    // are still defined outcomes.
    let Ok(pkt) = parse::ipv4(ctx) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let Some((&flow, l4)) = pkt.flow() else {
        // The only packets without a flow sent here: ICMP errors about outbound flows.
        if pkt.problem == Some(DropReason::Proto) {
            return icmp_error(ctx, &pkt);
        }
        return Verdict::Drop(pkt.problem.unwrap_or(DropReason::Malformed));
    };
    if xlate::ttl(&pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    let tcp = flow.proto == proto::TCP;
    // Garbage never leaves, nor comes back, nor moves a flow's state.
    if tcp && conn::invalid_flags(pkt.flags()) {
        return Verdict::Drop(DropReason::TcpFlags);
    }
    // A SYN takes a fresh port choice (its own old port is free to it), so it advances no
    // entry (kind 0 matches none); a flow closed too long ago is a new one too. One lookup
    // either way.
    let syn = tcp && conn::is_syn(pkt.flags());
    let own = if syn { 0 } else { CONN_OUTBOUND };
    match conntrack::forward_of_kind(&flow, &pkt, own) {
        Some(c) if c.kind == CONN_OUTBOUND_REV => back_in(ctx, &pkt, l4, &flow, &c),
        Some(c) if c.kind == CONN_OUTBOUND && !syn => out(ctx, &pkt, l4, &flow, (c.addr, c.port)),
        _ => new_flow(ctx, &pkt, l4, &flow),
    }
}

/// A new outbound flow: checks (again: this program trusts nothing about its caller), a port
/// of the backend's block, both entries, out.
#[inline(always)]
fn new_flow(ctx: &XdpContext, pkt: &Packet, l4: L4, flow: &FlowKey4) -> Verdict {
    // Neither a covered backend's packet nor a tracked return: a packet to a frontend port
    // that no flow holds.
    let Some(e) = entry(flow.src).filter(|e| e.covers(flow.proto)) else {
        return Verdict::Drop(DropReason::NoService);
    };
    if inside(e.rule, flow.dst) {
        return Verdict::Pass(PassReason::OutboundInside);
    }
    let hash = select::hash(flow);
    // The returning packets' key: (remote → frontend:port).
    let mut rev_key = FlowKey4::of(flow.dst, e.frontend, flow.dport, [0; 2], flow.proto);
    let mut found = false;
    // verifier: a constant trip count, unrolled.
    for attempt in 0..OUT_PORT_TRIES {
        rev_key.dport = candidate(e.base, e.ports, hash, attempt).to_be_bytes();
        if port_free(flow, &rev_key) {
            found = true;
            break;
        }
    }
    if !found {
        return refuse(ctx, pkt, l4);
    }
    let now = conntrack::now_s();
    let service = OUT_SERVICE_FLAG | e.rule;
    let rev = ConnEntry4::new(
        0,
        service,
        CONN_OUTBOUND_REV,
        0,
        flow.sport,
        flow.src,
        [0; 2],
        0,
        now,
    );
    conntrack::track(&rev_key, &rev);
    let state = if flow.proto == proto::TCP && conn::is_syn(pkt.flags()) {
        conn::CT_SYN
    } else {
        0
    };
    let mut fwd = ConnEntry4::new(
        0,
        service,
        CONN_OUTBOUND,
        state,
        rev_key.dport,
        e.frontend,
        [0; 2],
        0,
        now,
    );
    // TCP reset on idle: the numbers the sweeper's RSTs need, kept up to date by
    // `conntrack::forward` on every later packet of the flow.
    if e.flags & OUT_F_TCP_RESET != 0 && flow.proto == proto::TCP {
        let (seq, ack) = pkt.tcp_numbers();
        fwd.flags = conn::CT_F_SEQ;
        fwd.seq = seq;
        fwd.ack = ack;
    }
    conntrack::track(flow, &fwd);
    out(ctx, pkt, l4, flow, (e.frontend, rev_key.dport))
}

/// An ICMP error about an outbound flow: from the outside about a packet that left with the
/// frontend (its outer destination and embedded source go back to the backend, and it is sent
/// to the backend), or from the backends' side about a returning packet (its embedded
/// destination, and its outer source if the backend itself sent it, become the frontend; it
/// is sent towards the remote). Every checksum is patched (`icmp::rewrite_embedded`).
#[inline(always)]
fn icmp_error(ctx: &XdpContext, pkt: &Packet) -> Verdict {
    let unmatched = Verdict::Drop(DropReason::IcmpUnmatched);
    let Some((icmp, e, key)) = icmp::embedded(ctx, pkt.l3_off + 20) else {
        return unmatched;
    };
    if xlate::ttl(pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    // A stateless rule's flow has no entry: the embedded frontend port names its backend
    // (from the outside), or the embedded destination is a stateless rule's backend.
    let ct = match conntrack::lookup(&key.reversed()) {
        Some(c) => c,
        None => match stateless_error(&key) {
            Some((true, dip)) => {
                ConnEntry4::new(0, 0, CONN_OUTBOUND_REV, 0, key.sport, dip, [0; 2], 0, 0)
            }
            Some((false, front)) => {
                ConnEntry4::new(0, 0, CONN_OUTBOUND, 0, key.dport, front, [0; 2], 0, 0)
            }
            None => return unmatched,
        },
    };
    if ct.kind == CONN_OUTBOUND_REV {
        let (dip, dport) = (ct.addr, ct.port);
        // SAFETY: all pointers were bounds-checked (`pkt` by the parser, the rest by
        // `embedded`).
        unsafe {
            icmp::rewrite_embedded(icmp, &e, true, dip, dport);
            let ip = pkt.ip;
            let old = (*ip).dst;
            (*ip).dst = dip;
            (*ip).check = csum::update32(u16::from_be_bytes((*ip).check), old, dip).to_be_bytes();
        }
        return xlate::forward(
            ctx,
            pkt,
            entry(dip).map(|b| b.nh),
            SendReason::IcmpToBackend,
        );
    }
    if ct.kind == CONN_OUTBOUND {
        let (front, port) = (ct.addr, ct.port);
        // SAFETY: as above.
        unsafe {
            let dip = (*e.ip).dst;
            icmp::rewrite_embedded(icmp, &e, false, front, port);
            let ip = pkt.ip;
            if (*ip).src == dip {
                (*ip).src = front;
                (*ip).check =
                    csum::update32(u16::from_be_bytes((*ip).check), dip, front).to_be_bytes();
            }
        }
        // The embedded packet came from the remote: the error goes there.
        return xlate::forward(ctx, pkt, select::route(key.src), SendReason::IcmpToClient);
    }
    unmatched
}

/// Whether an ICMP error's embedded packet `key` is about a stateless rule's flow: `(true,
/// backend)` when it left with a stateless frontend (the error comes from the outside),
/// `(false, frontend)` when it went to a stateless rule's backend (the error comes from its
/// side).
#[inline(always)]
pub fn stateless_error(key: &FlowKey4) -> Option<(bool, [u8; 4])> {
    if let Some(f) = front(key.src).filter(OutFront4::stateless) {
        let dip = block_owner(key.src, key.sport, &f)?;
        return Some((true, dip));
    }
    let e = entry(key.dst).filter(|e| e.flags & OUT_F_STATELESS != 0)?;
    Some((false, e.frontend))
}

/// TTL of the RST that refuses a flow (a packet of the LB's own).
const REFUSAL_TTL: u8 = 64;

/// A new outbound flow with no free port: a counted drop (`drop_snat_exhausted`). A TCP SYN
/// is also answered, in place, with the RST that refuses it (`lb_common::outbound::refusal`),
/// sent back to the backend: its `connect()` fails at once (ECONNREFUSED) instead of
/// retrying into the same full block. Anything else is only dropped.
#[inline(always)]
fn refuse(ctx: &XdpContext, pkt: &Packet, l4: L4) -> Verdict {
    let Some(Hdr::Tcp(t)) = l4.hdr() else {
        return Verdict::Drop(DropReason::SnatExhausted);
    };
    let (next, _) = pkt.tcp_numbers();
    let Some(r) = lb_common::outbound::refusal(pkt.flags(), next) else {
        return Verdict::Drop(DropReason::SnatExhausted);
    };
    // SAFETY: `pkt` comes from the parser, and `t` is its bounds-checked TCP header.
    unsafe {
        xlate::turn_around(pkt, REFUSAL_TTL);
        // Swapping the ports leaves the TCP checksum as it is, as the addresses did.
        core::mem::swap(&mut (*t).sport, &mut (*t).dport);
        let mut c = u16::from_be_bytes((*t).check);
        c = csum::update32(c, (*t).seq, r.seq.to_be_bytes());
        c = csum::update32(c, (*t).ack, r.ack.to_be_bytes());
        let old_flags = u16::from_be_bytes([(*t).doff, (*t).flags]);
        c = csum::update16(c, old_flags, u16::from_be_bytes([(*t).doff, r.flags]));
        c = csum::update16(c, u16::from_be_bytes((*t).window), 0);
        (*t).seq = r.seq.to_be_bytes();
        (*t).ack = r.ack.to_be_bytes();
        (*t).flags = r.flags;
        (*t).window = [0; 2];
        (*t).check = c.to_be_bytes();
    }
    Verdict::Refused(xlate::back_out(ctx), DropReason::SnatExhausted)
}

/// Whether the frontend port in `rev_key` may carry `flow`: no other flow's returning entry
/// holds it towards the same remote endpoint. The flow's own (a retransmitted SYN) counts as
/// free. Blocks never hold a service port (the agent's allocation), so no service is checked.
#[inline(always)]
fn port_free(flow: &FlowKey4, rev_key: &FlowKey4) -> bool {
    conntrack::free_for(rev_key, CONN_OUTBOUND_REV, (flow.src, flow.sport))
}

/// Backend → remote: the source becomes frontend:port; sent by the client routes.
#[inline(always)]
fn out(
    ctx: &XdpContext,
    pkt: &Packet,
    l4: L4,
    flow: &FlowKey4,
    (front, port): ([u8; 4], [u8; 2]),
) -> Verdict {
    xlate::rnat(pkt, l4, front, port);
    xlate::forward(ctx, pkt, select::route(flow.dst), SendReason::Outbound)
}

/// Remote → frontend:port of a tracked flow: its TCP state moved on the forward entry, the
/// destination back to the backend's address and port, sent through the backend's next hop.
#[inline(always)]
fn back_in(ctx: &XdpContext, pkt: &Packet, l4: L4, flow: &FlowKey4, ct: &ConnEntry4) -> Verdict {
    let (dip, dport) = (ct.addr, ct.port);
    let fwd = FlowKey4::of(dip, flow.src, dport, flow.sport, flow.proto);
    if !conntrack::outbound_return(&fwd, (flow.dst, flow.dport), pkt.flags()) {
        return Verdict::Drop(DropReason::NoService);
    }
    xlate::dnat(pkt, l4, dip, dport);
    xlate::forward(
        ctx,
        pkt,
        entry(dip).map(|e| e.nh),
        SendReason::OutboundReturn,
    )
}
