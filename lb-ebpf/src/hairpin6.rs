//! Hairpin SNAT over IPv6 (`--hairpin snat` on an internal IPv6 VIP): `hairpin.rs`'s rules
//! for the IPv6 maps. A backend of the VIP connecting to it gets a backend by the table with
//! its source rewritten to VIP:SNAT port (a port of the dynamic range no service of the VIP
//! listens on and no other hairpin flow to that backend holds); the chosen backend's reply to
//! VIP:SNAT port comes back through the LB and is translated to the connecting backend.
//!
//! It runs as its own XDP program (`lb_hairpin6`), which the IPv6 path (`family6`) enters by tail
//! call for hairpin flows only. verifier: `family6`'s frame is near the 512-byte limit, and the second
//! flow key and entry need about 100 bytes more; a tail call starts with a fresh stack. Only
//! hairpin flows pay the second parse.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    conn,
    consts::PROG_HAIRPIN6,
    flow::{FlowKey6, proto},
    hash::{dist_hash6, flow_hash6},
    maps::{
        ACL_HAIRPIN, Backend6, BackendId, CONN_HAIRPIN, CONN_HAIRPIN_REV, ConnEntry6,
        HAIRPIN_PORT_TRIES, ServiceKey6, VIP_F_HAIRPIN_SNAT, hairpin_port,
    },
    verdict::{DropReason, PassReason, SendReason},
};

use crate::{
    conntrack, conntrack6,
    maps::{LB_SERVICES6, LB_VIPS6},
    parse::{self, L4},
    parse6::{self, Packet6},
    six,
    stats::{self, Dir},
    verdict::Verdict,
    xlate, xlate6,
};

/// Hands the packet to `lb_hairpin6` (a counted drop if it is not installed).
#[inline(always)]
pub fn enter(ctx: &XdpContext) -> Verdict {
    xlate::tail_call(ctx, PROG_HAIRPIN6, DropReason::HairpinUnavailable)
}

/// The `lb_hairpin6` program: a reply of a hairpin flow, a tracked hairpin flow, or a new one.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> Verdict {
    // `family6` only tail-calls for well-formed TCP/UDP, so these misses cannot happen; they
    // are still defined outcomes.
    let Ok(l2) = parse::l2(ctx) else {
        return Verdict::Pass(PassReason::Short);
    };
    let Ok(pkt) = parse6::packet(ctx, &l2) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let Some((&flow, l4)) = pkt.flow() else {
        return Verdict::Drop(pkt.problem.unwrap_or(DropReason::Malformed));
    };
    if xlate6::hop_limit(&pkt) <= 1 {
        return Verdict::Drop(DropReason::Ttl);
    }
    if let Some(ct) = conntrack6::entry(&flow) {
        // SAFETY: a value pointer from the lookup, used within this run.
        let (kind, id, port) = unsafe { ((*ct).kind, (*ct).backend, (*ct).port) };
        if kind == CONN_HAIRPIN_REV {
            // SAFETY: as above.
            return unsafe { reply(ctx, &pkt, l4, ct) };
        }
        // As for plain flows: a SYN re-picks, and a removed backend falls through to a pick.
        if kind == CONN_HAIRPIN
            && !(flow.proto == proto::TCP && conn::is_syn(pkt.flags()))
            && let Some(b) = six::live_backend(id)
        {
            // SAFETY: as above.
            unsafe { conntrack6::refresh(ct) };
            return out(ctx, &pkt, l4, &flow, (id, &b), port, false);
        }
    }
    new_flow(ctx, &pkt, l4, &flow)
}

/// A new hairpin flow: checks, backend pick, SNAT port, both conntrack entries, out.
#[inline(always)]
fn new_flow(ctx: &XdpContext, pkt: &Packet6, l4: L4, flow: &FlowKey6) -> Verdict {
    // SAFETY: copied out at once.
    let svc = unsafe { LB_SERVICES6.get(ServiceKey6::of(flow.dst, flow.dport, flow.proto)) };
    // The VIP's two fields only, read in place (verifier: stack, as for the entries).
    let vip = LB_VIPS6
        .get_ptr(flow.dst)
        // SAFETY: a value pointer from the lookup, read at once.
        .map(|v| unsafe { ((*v).ilb_id, (*v).flags) });
    let (Some(&svc), Some((ilb_id, vip_flags))) = (svc, vip) else {
        return Verdict::Drop(DropReason::NoService);
    };
    // Re-checked here because this program trusts nothing about its caller: only a backend
    // of this internal VIP (an `ACL_HAIRPIN` host entry, whose rule is its backend id) with
    // hairpin SNAT on gets through.
    let peer = match six::acl_entry(ilb_id, flow.src) {
        Some(a) if ilb_id != 0 && a.action == ACL_HAIRPIN => a.rule,
        _ => return Verdict::Drop(DropReason::Hairpin),
    };
    if vip_flags & VIP_F_HAIRPIN_SNAT == 0 {
        return Verdict::Drop(DropReason::Hairpin);
    }
    if !six::acl_permits(&svc, flow.src) {
        return Verdict::Drop(DropReason::Acl);
    }
    // The backend by the service's distribution mode; the SNAT port by the whole 5-tuple, so
    // that one source's flows (the same under `source-ip`) try different ports.
    let hashes = hashes(flow, svc.distribution());
    #[expect(clippy::cast_possible_truncation, reason = "two hashes in one word")]
    let (pick, ports) = ((hashes >> 32) as u32, hashes as u32);
    let (id, b) = match six::from_table(&svc, pick) {
        Ok(x) => x,
        Err(r) => return Verdict::Drop(r),
    };
    // The reply's key: (chosen backend → VIP:SNAT port).
    let mut rev_key = FlowKey6::of(b.addr, flow.dst, b.port, [0; 2], flow.proto);
    if !snat_port(flow, &mut rev_key, ports) {
        return Verdict::Drop(DropReason::HairpinNoPort);
    }
    // One entry, written as the reply's and then changed into the flow's own. verifier: two
    // 52-byte entries side by side took this frame past the stack limit.
    let mut e = ConnEntry6::hairpin(
        id,
        svc.id,
        CONN_HAIRPIN_REV,
        flow.sport,
        flow.src,
        flow.dport,
        peer,
        conntrack::now_s(),
    );
    conntrack6::track(&rev_key, &e);
    e.kind = CONN_HAIRPIN;
    e.port = rev_key.dport;
    e.addr = flow.dst;
    e.vport = [0; 2];
    conntrack6::track(flow, &e);
    out(ctx, pkt, l4, flow, (id, &b), rev_key.dport, true)
}

/// The backend pick's hash (by the service's distribution mode `mode`, high word) and the
/// SNAT port's (by the whole 5-tuple, low word): one source's flows try different ports even
/// under `source-ip`. verifier: out of line, so that the two unrolled hashes' registers spill
/// in a frame of their own, not in the program's (which the FIB fallback's joins).
#[inline(never)]
fn hashes(flow: &FlowKey6, mode: u32) -> u64 {
    let seed = crate::select::seed();
    (u64::from(dist_hash6(flow, mode, seed)) << 32) | u64::from(flow_hash6(flow, seed))
}

/// Sets `rev_key`'s port to the first free SNAT port candidate of `hash`; `false` if none of
/// the candidates is. A port is free when no service of the VIP listens on it (the reply would
/// be taken for a new client flow) and no other hairpin flow to the same backend holds it (the
/// replies would be indistinguishable); the flow's own entry (a retransmitted SYN) counts as
/// free. verifier: out of line, as [`hashes`], and the service key is built once and its port
/// changed per try (rebuilt each time, its words spilled past the stack this call may have).
#[inline(never)]
fn snat_port(flow: &FlowKey6, rev_key: &mut FlowKey6, hash: u32) -> bool {
    let mut svc_key = ServiceKey6::of(flow.dst, [0; 2], flow.proto);
    // verifier: a constant trip count, unrolled.
    for attempt in 0..HAIRPIN_PORT_TRIES {
        let port = hairpin_port(hash, attempt).to_be_bytes();
        rev_key.dport = port;
        svc_key.port = port;
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "verifier: by value, the key is copied first and the frame grows to 88 bytes"
        )]
        // SAFETY: only whether an entry exists is read.
        let listening = unsafe { LB_SERVICES6.get(&svc_key) }.is_some();
        if !listening && conntrack6::free_for(rev_key, CONN_HAIRPIN_REV, (flow.src, flow.sport)) {
            return true;
        }
    }
    false
}

/// Backend → VIP, hairpin: destination to the chosen backend, source to VIP:SNAT port, sent.
#[inline(always)]
fn out(
    ctx: &XdpContext,
    pkt: &Packet6,
    l4: L4,
    flow: &FlowKey6,
    (id, b): (BackendId, &Backend6),
    snat_port: [u8; 2],
    new_flow: bool,
) -> Verdict {
    let vip = flow.dst;
    xlate6::dnat(pkt, l4, b.addr, b.port);
    xlate6::rnat(pkt, l4, vip, snat_port);
    stats::count_flow(id, pkt.len, Dir::Forward { new_flow });
    xlate6::forward(ctx, pkt, Some(b.nh), SendReason::HairpinSnat)
}

/// Chosen backend → VIP:SNAT port: source back to VIP:port, destination back to the connecting
/// backend, sent through that backend's next hop.
///
/// # Safety
/// `ct` is the flow's value pointer from `conntrack6::entry` in this run.
#[inline(always)]
unsafe fn reply(ctx: &XdpContext, pkt: &Packet6, l4: L4, ct: *const ConnEntry6) -> Verdict {
    // SAFETY: `pkt.ip` was bounds-checked by the parser; the caller guarantees `ct`.
    let (vip, vport, client, cport, backend, peer) = unsafe {
        (
            (*pkt.ip).dst,
            (*ct).vport,
            (*ct).addr,
            (*ct).port,
            (*ct).backend,
            (*ct).peer,
        )
    };
    xlate6::rnat(pkt, l4, vip, vport);
    xlate6::dnat(pkt, l4, client, cport);
    stats::count_flow(backend, pkt.len, Dir::Reply);
    let nh = six::live_backend(peer).map(|b| b.nh);
    xlate6::forward(ctx, pkt, nh, SendReason::HairpinReply)
}
