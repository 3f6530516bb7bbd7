//! Hairpin SNAT (`--hairpin snat`): a backend of an internal VIP connecting to that VIP.
//!
//! DNAT alone cannot work here: the chosen backend would answer the connecting backend
//! directly (both sit behind the LB), skipping the reverse NAT, and the connecting socket would
//! ignore a reply from an address it never connected to. So the source is rewritten too, to the
//! VIP with a port from the dynamic range ([`lb_common::maps::hairpin_port`]); the chosen
//! backend replies to the VIP, through the LB, which translates the reply back.
//!
//! It runs as its own XDP program (`lb_hairpin`), which `lb_xdp` enters by tail call for
//! hairpin flows only. verifier: `lb_xdp`'s single stack frame is at 400 of the 512 bytes, and
//! two-sided NAT needs a second flow key and entry beside it; bpf-to-bpf calls share the
//! 512-byte budget across the call chain (measured 576–672), while a tail call starts afresh.
//! The cost, a second parse, is paid by hairpin flows only.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    conn,
    consts::PROG_HAIRPIN,
    flow::{FlowKey4, proto},
    maps::{
        ACL_HAIRPIN, Backend4, BackendId, CONN_HAIRPIN, CONN_HAIRPIN_REV, ConnEntry4,
        HAIRPIN_PORT_TRIES, ServiceKey4, VIP_F_HAIRPIN_SNAT, hairpin_port,
    },
    verdict::{DropReason, SendReason},
};

use crate::{
    conntrack,
    parse::{self, L4, Packet},
    policy, select,
    stats::{self, Dir},
    verdict::Verdict,
    xlate,
};

/// Hands the packet to the hairpin program (a counted drop if it is not installed).
#[inline(always)]
pub fn enter(ctx: &XdpContext) -> Verdict {
    xlate::tail_call(ctx, PROG_HAIRPIN, DropReason::HairpinUnavailable)
}

/// The hairpin program: a reply of a hairpin flow, a tracked hairpin flow, or a new one.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Verdict {
    // `lb_xdp` only tail-calls for well-formed TCP/UDP, so these misses cannot happen; they
    // are still defined outcomes.
    let Ok(pkt) = parse::ipv4(ctx) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let Some((&flow, l4)) = pkt.flow() else {
        return Verdict::Drop(pkt.problem.unwrap_or(DropReason::Malformed));
    };
    if xlate::ttl(&pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    if let Some(ct) = conntrack::lookup(&flow) {
        if ct.kind == CONN_HAIRPIN_REV {
            return reply(ctx, &pkt, l4, &flow, &ct);
        }
        // As for plain flows: a SYN re-picks, and a removed backend falls through to a pick.
        if ct.kind == CONN_HAIRPIN
            && !(flow.proto == proto::TCP && conn::is_syn(pkt.flags()))
            && let Some(b) = select::live_backend(ct.backend)
        {
            conntrack::refresh(&flow, &ct);
            return out(ctx, &pkt, l4, &flow, (ct.backend, &b), ct.port, false);
        }
    }
    new_flow(ctx, &pkt, l4, &flow)
}

/// A new hairpin flow: checks, backend pick, SNAT port, both conntrack entries, out.
#[inline(always)]
fn new_flow(ctx: &XdpContext, pkt: &Packet, l4: L4, flow: &FlowKey4) -> Verdict {
    let (Some(svc), Some(vip)) = (select::service(flow), select::vip(flow.dst)) else {
        return Verdict::Drop(DropReason::NoService);
    };
    // Re-checked here because this program trusts nothing about its caller: only a backend
    // of this internal VIP (an `ACL_HAIRPIN` host entry, whose rule is its backend id) with
    // hairpin SNAT on gets through.
    let peer = match policy::acl_entry(vip.ilb_id, flow.src) {
        Some(a) if vip.ilb_id != 0 && a.action == ACL_HAIRPIN => a.rule,
        _ => return Verdict::Drop(DropReason::Hairpin),
    };
    if vip.flags & VIP_F_HAIRPIN_SNAT == 0 {
        return Verdict::Drop(DropReason::Hairpin);
    }
    if !policy::acl_permits(&svc, flow.src) {
        return Verdict::Drop(DropReason::Acl);
    }
    // The backend by the service's distribution mode; the SNAT port by the whole 5-tuple, so
    // that one source's flows (the same under `source-ip`) try different ports.
    let hash = select::hash(flow);
    let (id, b) = match select::from_table(&svc, select::pick_hash(flow, &svc)) {
        Ok(x) => x,
        Err(r) => return Verdict::Drop(r),
    };
    let dip = b.addr;
    // The reply's key: (chosen backend → VIP:SNAT port).
    let mut rev_key = FlowKey4::of(dip, flow.dst, b.port, [0; 2], flow.proto);
    let mut found = false;
    // verifier: a constant trip count, unrolled.
    for attempt in 0..HAIRPIN_PORT_TRIES {
        rev_key.dport = hairpin_port(hash, attempt).to_be_bytes();
        if port_free(flow, &rev_key) {
            found = true;
            break;
        }
    }
    if !found {
        return Verdict::Drop(DropReason::HairpinNoPort);
    }
    let now = conntrack::now_s();
    let rev = ConnEntry4::new(
        id,
        svc.id,
        CONN_HAIRPIN_REV,
        0,
        flow.sport,
        flow.src,
        flow.dport,
        peer,
        now,
    );
    conntrack::track(&rev_key, &rev);
    let fwd = ConnEntry4::new(
        id,
        svc.id,
        CONN_HAIRPIN,
        0,
        rev_key.dport,
        flow.dst,
        [0; 2],
        peer,
        now,
    );
    conntrack::track(flow, &fwd);
    out(ctx, pkt, l4, flow, (id, &b), rev_key.dport, true)
}

/// Whether the SNAT port in `rev_key` may carry `flow`: no service listens on it (the reply
/// would be taken for a new client flow), and no other hairpin flow to the same backend uses
/// it (the replies would be indistinguishable). The flow's own entry (a retransmitted SYN)
/// counts as free.
#[inline(always)]
fn port_free(flow: &FlowKey4, rev_key: &FlowKey4) -> bool {
    if select::service_at(ServiceKey4::of(flow.dst, rev_key.dport, flow.proto)).is_some() {
        return false;
    }
    conntrack::free_for(rev_key, CONN_HAIRPIN_REV, (flow.src, flow.sport))
}

/// Backend → VIP, hairpin: destination to the chosen backend, source to VIP:SNAT port, sent.
#[inline(always)]
fn out(
    ctx: &XdpContext,
    pkt: &Packet,
    l4: L4,
    flow: &FlowKey4,
    (id, b): (BackendId, &Backend4),
    snat_port: [u8; 2],
    new_flow: bool,
) -> Verdict {
    let vip = flow.dst;
    xlate::dnat(pkt, l4, b.addr, b.port);
    xlate::rnat(pkt, l4, vip, snat_port);
    stats::count_flow(id, pkt.len, Dir::Forward { new_flow });
    xlate::forward(ctx, pkt, Some(b.nh), SendReason::HairpinSnat)
}

/// Chosen backend → VIP:SNAT port: source back to VIP:port, destination back to the connecting
/// backend, sent through that backend's next hop.
#[inline(always)]
fn reply(ctx: &XdpContext, pkt: &Packet, l4: L4, flow: &FlowKey4, ct: &ConnEntry4) -> Verdict {
    let (vip, client) = (flow.dst, ct.addr);
    xlate::rnat(pkt, l4, vip, ct.vport);
    xlate::dnat(pkt, l4, client, ct.port);
    stats::count_flow(ct.backend, pkt.len, Dir::Reply);
    let nh = select::live_backend(ct.peer).map(|b| b.nh);
    xlate::forward(ctx, pkt, nh, SendReason::HairpinReply)
}
