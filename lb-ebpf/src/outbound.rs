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
    flow::{FlowKey4, proto},
    maps::{CONN_OUTBOUND, CONN_OUTBOUND_REV, ConnEntry4, acl_key4},
    outbound::{OUT_PORT_TRIES, OUT_SERVICE_FLAG, OutboundEntry4, candidate},
    verdict::{DropReason, PassReason, SendReason},
};

use crate::{
    conntrack,
    maps::{LB_OUT_FRONTS4, LB_OUT_INSIDE4, LB_OUTBOUND4, LB_PROGS},
    parse::{self, L4, Packet},
    select,
    verdict::Verdict,
    xlate,
};

/// Hands the packet to the outbound program. Returns only if the tail call fails (the agent
/// has not installed the program), as a counted drop.
#[inline(always)]
pub fn enter(ctx: &XdpContext) -> Verdict {
    // SAFETY: `ctx` is this program's context; on success control never comes back.
    unsafe { LB_PROGS.tail_call(ctx, PROG_OUTBOUND) };
    Verdict::Drop(DropReason::OutboundUnavailable)
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

/// Whether `dst` is a frontend address of an outbound rule.
#[inline(always)]
pub fn is_frontend(dst: [u8; 4]) -> bool {
    // SAFETY: only whether an entry exists is read.
    unsafe { LB_OUT_FRONTS4.get(dst).is_some() }
}

/// The outbound program: a returning packet, a tracked outbound flow, or a new one.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Verdict {
    // `lb_xdp` only tail-calls for well-formed TCP/UDP, so these misses cannot happen; they
    // are still defined outcomes.
    let Ok(pkt) = parse::packet(ctx) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let Some((&flow, l4)) = pkt.flow() else {
        return Verdict::Drop(pkt.problem.unwrap_or(DropReason::Malformed));
    };
    if xlate::ttl(&pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    let tcp = flow.proto == proto::TCP;
    let ct = conntrack::lookup(&flow);
    if let Some(c) = ct
        && c.kind == CONN_OUTBOUND_REV
    {
        return back_in(ctx, &pkt, l4, &flow, &c);
    }
    if tcp && conn::invalid_flags(pkt.flags()) {
        return Verdict::Drop(DropReason::TcpFlags);
    }
    // A SYN takes a fresh port choice (its own old port is free to it); a flow closed too long
    // ago is a new one too.
    if ct.is_some_and(|c| c.kind == CONN_OUTBOUND)
        && !(tcp && conn::is_syn(pkt.flags()))
        && let Some(c) = conntrack::forward(&flow, &pkt)
    {
        return out(ctx, &pkt, l4, &flow, (c.addr, c.port));
    }
    new_flow(ctx, &pkt, l4, &flow)
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
        return Verdict::Drop(DropReason::SnatExhausted);
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
    let fwd = ConnEntry4::new(
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
    conntrack::track(flow, &fwd);
    out(ctx, pkt, l4, flow, (e.frontend, rev_key.dport))
}

/// Whether the frontend port in `rev_key` may carry `flow`: no other flow's returning entry
/// holds it towards the same remote endpoint. The flow's own (a retransmitted SYN) counts as
/// free. Blocks never hold a service port (the agent's allocation), so no service is checked.
#[inline(always)]
fn port_free(flow: &FlowKey4, rev_key: &FlowKey4) -> bool {
    match conntrack::lookup(rev_key) {
        None => true,
        Some(c) => c.kind == CONN_OUTBOUND_REV && c.addr == flow.src && c.port == flow.sport,
    }
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
