//! Select: which backend a client → VIP packet goes to. The service lookup, the flow's
//! tracked backend, or a new pick from the service's table (after admission).

use aya_ebpf::Global;
use lb_common::{
    conn,
    flow::{FlowKey4, proto},
    hash::flow_hash,
    maglev,
    maps::{
        Backend4, BackendId, CONN_FORWARD, CONN_HAIRPIN, NextHop, SVC_F_TCP_RESET, ServiceInfo,
        ServiceKey4, VipInfo,
    },
    verdict::DropReason,
};

use crate::{
    maps::{LB_BACKENDS4, LB_RING, LB_ROUTES4, LB_SERVICES4, LB_VIPS4},
    parse::Packet,
    policy::{self, Admitted},
};

/// Seed of the flow hash, set by the agent at load time (`override_global`).
#[unsafe(no_mangle)]
static LB_HASH_SEED: Global<u32> = Global::new(lb_common::consts::DEFAULT_HASH_SEED);

/// The flow-hash seed (both families).
#[inline(always)]
pub fn seed() -> u32 {
    LB_HASH_SEED.load()
}

/// The service this packet is addressed to, if any.
#[inline(always)]
pub fn service(flow: &FlowKey4) -> Option<ServiceInfo> {
    service_at(ServiceKey4::of(flow.dst, flow.dport, flow.proto))
}

/// The service of a (VIP, port, protocol).
#[inline(always)]
pub fn service_at(key: ServiceKey4) -> Option<ServiceInfo> {
    // SAFETY: the value is copied out before any other map operation.
    unsafe { LB_SERVICES4.get(key).copied() }
}

/// The flow hash (seeded by the agent): the whole 5-tuple.
#[inline(always)]
pub fn hash(flow: &FlowKey4) -> u32 {
    flow_hash(flow, LB_HASH_SEED.load())
}

/// The hash that picks a new flow's backend: over the part of the 5-tuple the service's
/// distribution mode covers (`lb_common::hash::hash_input`).
#[inline(always)]
pub fn pick_hash(flow: &FlowKey4, svc: &ServiceInfo) -> u32 {
    lb_common::hash::dist_hash(flow, svc.distribution(), LB_HASH_SEED.load())
}

/// The VIP entry of an address, if it is a VIP.
#[inline(always)]
pub fn vip(addr: [u8; 4]) -> Option<VipInfo> {
    // SAFETY: copied out at once.
    unsafe { LB_VIPS4.get(addr).copied() }
}

/// A live backend by id (id 0 and inactive entries are none).
#[inline(always)]
pub fn live_backend(id: BackendId) -> Option<Backend4> {
    if id == 0 {
        return None;
    }
    let b = *LB_BACKENDS4.get(id)?;
    b.is_active().then_some(b)
}

/// The port a flow is sent to at backend `b`: its own, or for an HA-ports backend (port 0) the
/// port the client sent to.
#[inline(always)]
pub fn backend_port(b: &Backend4, flow: &FlowKey4) -> [u8; 2] {
    lb_common::maps::port_at(b.port, flow.dport)
}

/// Where a client → VIP packet goes.
pub enum Pick {
    /// The flow's tracked backend.
    Tracked(BackendId, Backend4),
    /// A new flow: the table's choice, now tracked (unless it was a stray RST or FIN).
    New(BackendId, Backend4),
    /// A hairpin flow (new or tracked): the hairpin program takes it.
    Hairpin,
}

/// Picks the backend of a client → VIP packet: the flow's tracked backend if it has one that is
/// still live (and the flow still translates), else (after admission) the service table's
/// choice, which is then tracked (unless the flood guard says this CPU is over its new-flow
/// rate). A SYN always takes the table's choice, so a new connection
/// never inherits a stale entry of a reused 5-tuple. A RST or FIN that matches no tracked flow
/// is forwarded by the table, so an evicted connection can still close, but is not tracked: a
/// flood of them cannot fill the table.
///
/// # Errors
/// The drop reason: not admitted, or no backend in the table.
#[inline(always)]
pub fn pick(flow: &FlowKey4, pkt: &Packet, svc: &ServiceInfo) -> Result<Pick, DropReason> {
    let tcp = flow.proto == proto::TCP;
    let flags = pkt.flags();
    let syn = tcp && conn::is_syn(flags);
    if !syn {
        let ct = crate::conntrack::forward(flow, pkt);
        if ct.is_none() {
            crate::stats::count_conntrack_miss(svc.id);
        }
        if let Some(ct) = ct {
            if ct.kind == CONN_HAIRPIN {
                return Ok(Pick::Hairpin);
            }
            // A removed backend (inactive entry) falls through to a fresh pick (cilium's rule).
            if ct.kind == CONN_FORWARD
                && let Some(b) = live_backend(ct.backend)
            {
                return Ok(Pick::Tracked(ct.backend, b));
            }
        }
    }
    if let Admitted::Hairpin = policy::admit(flow, svc)? {
        return Ok(Pick::Hairpin);
    }
    let (id, b) = from_table(svc, pick_hash(flow, svc))?;
    if !(tcp && !syn && conn::is_teardown(flags)) {
        if crate::conntrack::may_track() {
            let numbers = (tcp && svc.flags & SVC_F_TCP_RESET != 0).then(|| pkt.tcp_numbers());
            let replies = svc.floating_ip() == lb_common::encap::mode::DNAT;
            let how = (syn, replies);
            crate::conntrack::remember(flow, (id, b.addr, b.port), svc.id, how, numbers);
        } else {
            crate::stats::count_untracked(svc.id);
        }
    }
    Ok(Pick::New(id, b))
}

/// The service table's backend for a flow hash.
///
/// # Errors
/// [`DropReason::NoBackend`]: an empty table, or a slot naming no live backend.
#[inline(always)]
pub fn from_table(svc: &ServiceInfo, hash: u32) -> Result<(BackendId, Backend4), DropReason> {
    let slot = maglev::slot(hash, svc.table_len).ok_or(DropReason::NoBackend)?;
    let id = *LB_RING
        .get(svc.table_off.wrapping_add(slot))
        .ok_or(DropReason::NoBackend)?;
    let b = live_backend(id).ok_or(DropReason::NoBackend)?;
    Ok((id, b))
}

/// The agent-resolved next hop towards a client address.
#[inline(always)]
pub fn route(dst: [u8; 4]) -> Option<NextHop> {
    LB_ROUTES4
        .get(aya_ebpf::maps::lpm_trie::Key::new(32, dst))
        .copied()
}
