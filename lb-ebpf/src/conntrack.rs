//! Conntrack: the flow table's lookups and inserts. One entry per direction of a flow (see
//! `LB_CONNTRACK` in `maps.rs`); an LRU, so inserts are best effort and a flow whose entry was
//! evicted is re-picked from the same consistent table.

use lb_common::{
    flow::FlowKey,
    maps::{
        Backend, BackendId, CONN_FORWARD, CONN_HAIRPIN_REV, CONN_REVERSE, ConnEntry, ServiceInfo,
    },
};

use crate::maps::LB_CONNTRACK;

/// The conntrack entry of a 5-tuple, if tracked.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<ConnEntry> {
    // SAFETY: copied out at once.
    unsafe { LB_CONNTRACK.get(key).copied() }
}

/// The conntrack entry of a reply from a backend, if this packet is one (of a plain flow, or
/// of a hairpin flow: [`CONN_HAIRPIN_REV`]).
#[inline(always)]
pub fn reply(flow: &FlowKey) -> Option<ConnEntry> {
    let ct = lookup(flow)?;
    (ct.kind == CONN_REVERSE || ct.kind == CONN_HAIRPIN_REV).then_some(ct)
}

/// Inserts an entry (best effort: the LRU makes room by evicting the least recently used).
#[inline(always)]
pub fn track(key: &FlowKey, entry: &ConnEntry) {
    let _ = LB_CONNTRACK.insert(key, entry, 0);
}

/// Tracks a new client → VIP flow in both directions: the forward entry names the backend,
/// the reverse entry (backend → client) the VIP:port its replies are rewritten to.
#[inline(always)]
pub fn remember(flow: &FlowKey, id: BackendId, b: &Backend, svc: &ServiceInfo) {
    let fwd = ConnEntry {
        kind: CONN_FORWARD,
        backend: id,
        service: svc.id,
        ..ConnEntry::default()
    };
    track(flow, &fwd);
    let rev_key = flow.reply_from(b.addr, b.port);
    let rev = ConnEntry {
        addr: flow.dst,
        port: flow.dport,
        kind: CONN_REVERSE,
        backend: id,
        service: svc.id,
        ..ConnEntry::default()
    };
    track(&rev_key, &rev);
}
