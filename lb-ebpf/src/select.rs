//! Stages 2 and 3, classify and select: one map lookup per function.

use aya_ebpf::Global;
use lb_common::{
    flow::FlowKey,
    hash::flow_hash,
    maglev,
    maps::{
        ACL_HAIRPIN, ACL_PERMIT, AclValue, Backend, BackendId, CONN_FORWARD, CONN_HAIRPIN,
        CONN_HAIRPIN_REV, CONN_REVERSE, ConnEntry, NextHop, ServiceInfo, ServiceKey,
        VIP_F_HAIRPIN_SNAT, VipKey,
    },
    verdict::Reason,
};

use crate::maps::{LB_ACL, LB_BACKENDS, LB_CONNTRACK, LB_RING, LB_ROUTES, LB_SERVICES, LB_VIPS};

/// Seed of the flow hash, set by the agent at load time (`override_global`).
#[unsafe(no_mangle)]
static LB_HASH_SEED: Global<u32> = Global::new(lb_common::consts::DEFAULT_HASH_SEED);

/// The service this packet is addressed to, if any.
#[inline(always)]
pub fn service(flow: &FlowKey) -> Option<ServiceInfo> {
    let key = ServiceKey {
        vip: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        _pad: 0,
    };
    service_at(key)
}

/// The service of a (VIP, port, protocol).
#[inline(always)]
pub fn service_at(key: ServiceKey) -> Option<ServiceInfo> {
    // SAFETY: the value is copied out before any other map operation.
    unsafe { LB_SERVICES.get(key).copied() }
}

/// The flow hash (seeded by the agent).
#[inline(always)]
pub fn hash(flow: &FlowKey) -> u32 {
    flow_hash(flow, LB_HASH_SEED.load())
}

/// Whether `addr` is a VIP (of any port or protocol).
#[inline(always)]
pub fn is_vip(addr: lb_common::addr::Addr) -> bool {
    LB_VIPS.get_ptr(VipKey { vip: addr }).is_some()
}

/// The VIP entry of an address, if it is a VIP.
#[inline(always)]
pub fn vip(addr: lb_common::addr::Addr) -> Option<lb_common::maps::VipInfo> {
    // SAFETY: copied out at once.
    unsafe { LB_VIPS.get(VipKey { vip: addr }).copied() }
}

/// The conntrack entry of a reply from a backend, if this packet is one (of a plain flow, or
/// of a hairpin flow: [`CONN_HAIRPIN_REV`]).
#[inline(always)]
pub fn reply(flow: &FlowKey) -> Option<ConnEntry> {
    // SAFETY: copied out at once.
    let ct = unsafe { LB_CONNTRACK.get(flow).copied() }?;
    (ct.kind == CONN_REVERSE || ct.kind == CONN_HAIRPIN_REV).then_some(ct)
}

/// The conntrack entry of a 5-tuple, if tracked.
#[inline(always)]
pub fn flow(key: &FlowKey) -> Option<ConnEntry> {
    // SAFETY: copied out at once.
    unsafe { LB_CONNTRACK.get(key).copied() }
}

/// A live backend by id (for ICMP errors about its flows).
#[inline(always)]
pub fn live_backend(id: BackendId) -> Option<Backend> {
    backend(id)
}

/// A live backend by id.
#[inline(always)]
fn backend(id: BackendId) -> Option<Backend> {
    if id == 0 {
        return None;
    }
    let b = *LB_BACKENDS.get(id)?;
    b.is_active().then_some(b)
}

/// Picks the backend of a client → VIP packet: the flow's tracked backend if it has one that is
/// still live, else the service table's choice (which is then tracked). A SYN always takes the
/// table's choice, so a new connection never inherits a stale entry of a reused 5-tuple.
/// Returns (id, backend, is_new_flow), or the drop reason; [`Reason::HairpinSnat`] means the
/// flow belongs to the hairpin program (see `hairpin.rs`), new or tracked.
#[inline(always)]
pub fn backend_for(
    flow: &FlowKey,
    is_syn: bool,
    svc: &ServiceInfo,
) -> Result<(BackendId, Backend, bool), Reason> {
    if !is_syn {
        // SAFETY: copied out at once.
        let ct = unsafe { LB_CONNTRACK.get(flow).copied() };
        if ct.is_none() {
            crate::stats::count_conntrack_miss(svc.id);
        }
        if let Some(ct) = ct {
            if ct.kind == CONN_HAIRPIN {
                return Err(Reason::HairpinSnat);
            }
            // A removed backend (inactive entry) falls through to a fresh pick (cilium's rule).
            if ct.kind == CONN_FORWARD
                && let Some(b) = backend(ct.backend)
            {
                return Ok((ct.backend, b, false));
            }
        }
    }
    // A new flow: an internal VIP admits only its internal prefixes (and drops hairpin from its
    // own backends), then the endpoint's ACL decides. Established flows are not re-checked.
    if let Some(vip) = LB_VIPS.get_ptr(VipKey { vip: flow.dst }) {
        // SAFETY: read at once; the value is plain data.
        let (ilb_id, flags) = unsafe { ((*vip).ilb_id, (*vip).flags) };
        if ilb_id != 0 {
            match acl_lookup(ilb_id, &flow.src) {
                Some(ACL_PERMIT) => {}
                Some(ACL_HAIRPIN) if flags & VIP_F_HAIRPIN_SNAT != 0 => {
                    return Err(Reason::HairpinSnat);
                }
                Some(ACL_HAIRPIN) => return Err(Reason::DropHairpin),
                _ => return Err(Reason::DropNotInternal),
            }
        }
    }
    if !acl_permits(svc, &flow.src) {
        return Err(Reason::DropAcl);
    }
    let (id, b) = pick(svc, hash(flow))?;
    remember(flow, id, &b, svc);
    Ok((id, b, true))
}

/// The service table's backend for a flow hash.
#[inline(always)]
pub fn pick(svc: &ServiceInfo, hash: u32) -> Result<(BackendId, Backend), Reason> {
    let slot = maglev::slot(hash, svc.table_len).ok_or(Reason::DropNoBackend)?;
    let id = *LB_RING
        .get(svc.table_off.wrapping_add(slot))
        .ok_or(Reason::DropNoBackend)?;
    let b = backend(id).ok_or(Reason::DropNoBackend)?;
    Ok((id, b))
}

/// Whether a new flow's source passes the endpoint's ACL (counted per service when not).
#[inline(always)]
pub fn acl_permits(svc: &ServiceInfo, src: &lb_common::addr::Addr) -> bool {
    if svc.acl_id != 0 && acl_lookup(svc.acl_id, src) != Some(ACL_PERMIT) {
        crate::stats::count_acl_drop(svc.id);
        return false;
    }
    true
}

/// Tracks a new flow in both directions. Best effort: the LRU makes room by evicting the
/// least recently used flows, and a flow whose entry is gone is re-picked from the same table.
#[inline(always)]
fn remember(flow: &FlowKey, id: BackendId, b: &Backend, svc: &ServiceInfo) {
    let fwd = ConnEntry {
        kind: CONN_FORWARD,
        backend: id,
        service: svc.id,
        ..ConnEntry::default()
    };
    let _ = LB_CONNTRACK.insert(flow, fwd, 0);
    let rev_key = FlowKey {
        src: b.addr,
        dst: flow.src,
        sport: b.port,
        dport: flow.sport,
        proto: flow.proto,
        _pad: [0; 3],
    };
    let rev = ConnEntry {
        addr: flow.dst,
        port: flow.dport,
        kind: CONN_REVERSE,
        backend: id,
        service: svc.id,
        ..ConnEntry::default()
    };
    let _ = LB_CONNTRACK.insert(rev_key, rev, 0);
}

/// A source's verdict in an `LB_ACL` set: one LPM lookup. The agent always installs a default
/// entry, so a miss cannot happen for a live set; callers treat it as a deny anyway.
#[inline(always)]
pub fn acl_lookup(acl_id: u32, src: &lb_common::addr::Addr) -> Option<u32> {
    acl_entry(acl_id, src).map(|v| v.action)
}

/// A source's entry in an `LB_ACL` set (verdict and deciding rule).
#[inline(always)]
pub fn acl_entry(acl_id: u32, src: &lb_common::addr::Addr) -> Option<AclValue> {
    let key = aya_ebpf::maps::lpm_trie::Key::new(32 + 128, lb_common::maps::acl_key(acl_id, src));
    LB_ACL.get(key).copied()
}

/// Inserts a conntrack entry (best effort, like [`remember`]).
#[inline(always)]
pub fn track(key: &FlowKey, entry: &ConnEntry) {
    let _ = LB_CONNTRACK.insert(key, entry, 0);
}

/// The agent-resolved next hop towards a client address.
#[inline(always)]
pub fn route(dst: lb_common::addr::Addr) -> Option<NextHop> {
    let key = aya_ebpf::maps::lpm_trie::Key::new(128, dst);
    LB_ROUTES.get(key).copied()
}
