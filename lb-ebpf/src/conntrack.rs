//! Conntrack: the flow table's lookups, inserts and state. One entry per flow, its forward one
//! (see `ConnEntry4` in `lb-common`): a backend's reply finds it through the backend's
//! reverse-service entry (`LB_REVSVC4`), and is translated only if the entry exists, names that
//! backend, and its TCP state allows it (`lb_common::conn`). An LRU, so inserts are best effort
//! and a flow whose entry was evicted is re-picked from the same consistent table.

use aya_ebpf::{Global, helpers::bpf_ktime_get_ns};
use lb_common::{
    conn,
    flow::{FlowKey4, proto},
    maps::{
        BackendId, CONN_HAIRPIN_REV, CONN_REVERSE, ConnEntry4, REV_F_SHARED, REV_F_STATELESS,
        RevKey4, RevService4,
    },
};

use crate::maps::{LB_CONNTRACK4, LB_FLOW_RL, LB_LOCAL4, LB_REVSVC4};

/// How long a closed flow still translates (seconds), set by the agent at load time
/// (`override_global`).
#[unsafe(no_mangle)]
static LB_CLOSE_TIMEOUT_S: Global<u32> = Global::new(conn::CLOSE_TIMEOUT_S);

/// The flood guard's bucket (`lb_common::maps::flow_bucket`): nanoseconds of credit per new
/// flow, and the most credit a CPU holds. Cost 0 turns the guard off. Set at load time.
#[unsafe(no_mangle)]
static LB_FLOW_COST_NS: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static LB_FLOW_BURST_NS: Global<u64> = Global::new(0);

/// Whether this CPU may track one more new flow: the flood guard. Above its rate, new flows
/// are forwarded by the consistent table without an entry, so a flood of SYNs cannot evict
/// the entries of established flows (Katran's rule, at the same default rate).
#[inline(always)]
pub fn may_track() -> bool {
    let cost = LB_FLOW_COST_NS.load();
    if cost == 0 {
        return true;
    }
    let Some(s) = LB_FLOW_RL.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a per-CPU slot; no other writer on this CPU during the program's run. The
    // helper is a plain call.
    unsafe { (*s).take(bpf_ktime_get_ns(), cost, LB_FLOW_BURST_NS.load()) }
}

/// The conntrack entry of a 5-tuple, if tracked.
#[inline(always)]
pub fn lookup(key: &FlowKey4) -> Option<ConnEntry4> {
    // SAFETY: copied out at once.
    unsafe { LB_CONNTRACK4.get(key).copied() }
}

/// Inserts an entry (best effort: the LRU makes room by evicting the least recently used).
#[inline(always)]
pub fn track(key: &FlowKey4, entry: &ConnEntry4) {
    let _ = LB_CONNTRACK4.insert(key, entry, 0);
}

/// Tracks a 5-tuple with `entry`: written in place over the entry it has (a retransmitted SYN,
/// a reused port, a flow tracked again), else inserted. time: an LRU update of an existing key
/// takes a fresh node and frees the old one (about 250 ns here); a lookup and seven stores
/// cost a tenth of that. A reader on another CPU may see the entry half written; packets of
/// one flow arrive on one CPU (RSS), and the worst case is one packet sent as the old entry
/// said.
#[inline(always)]
fn put(key: &FlowKey4, entry: &ConnEntry4) {
    match LB_CONNTRACK4.get_ptr_mut(key) {
        // SAFETY: a value pointer from the lookup above, used within this run.
        Some(e) => unsafe { *e = *entry },
        None => track(key, entry),
    }
}

/// Seconds of the monotonic clock (the clock `bpf_ktime_get_ns` reads; wraps after 136 years).
#[inline(always)]
fn now_s() -> u32 {
    // SAFETY: a plain helper call.
    let ns = unsafe { bpf_ktime_get_ns() };
    #[expect(clippy::cast_possible_truncation, reason = "seconds of uptime fit u32")]
    let s = (ns / 1_000_000_000) as u32;
    s
}

/// Whether a tracked flow still translates. The clock is read only for a closed flow.
#[inline(always)]
fn translates(tcp: u8, closed_s: u32) -> bool {
    if tcp & conn::CT_STALE == 0 && !conn::is_closed(tcp) {
        return true;
    }
    conn::translates(tcp, closed_s, now_s(), LB_CLOSE_TIMEOUT_S.load())
}

/// Writes a new TCP state into an entry in place (the kernel keeps no lock; a racing update
/// on another CPU can lose a flag, which costs at most a close seen late). Written only when
/// the state changes, so an established flow's packets do not write.
///
/// # Safety
/// `e` must be a value pointer of `LB_CONNTRACK4` from this program run.
#[inline(always)]
unsafe fn set_state(e: *mut ConnEntry4, old: u8, new: u8) {
    if old == new {
        return;
    }
    // SAFETY: the caller guarantees `e` points at a live map value.
    unsafe {
        if conn::closes(old, new) {
            (*e).closed_s = now_s();
        }
        (*e).tcp = new;
    }
}

/// The tracked backend of a client → VIP packet, if its flow is tracked and still translates;
/// the packet's TCP flags are recorded on the entry.
#[inline(always)]
pub fn forward(flow: &FlowKey4, flags: u8) -> Option<ConnEntry4> {
    let e = LB_CONNTRACK4.get_ptr_mut(flow)?;
    // SAFETY: a value pointer from the lookup above, used within this run.
    unsafe {
        let ct = *e;
        if !translates(ct.tcp, ct.closed_s) {
            return None;
        }
        if flow.proto == proto::TCP {
            set_state(e, ct.tcp, conn::after_forward(ct.tcp, flags));
        }
        Some(ct)
    }
}

/// Tracks a new client → VIP flow: its forward entry, and for a backend endpoint shared by
/// several services also the reverse entry its replies are matched by first.
#[inline(always)]
pub fn remember(
    flow: &FlowKey4,
    id: BackendId,
    addr: [u8; 4],
    port: [u8; 2],
    service: u32,
    syn: bool,
) {
    let tcp = if syn { conn::CT_SYN } else { 0 };
    put(flow, &ConnEntry4::forward(id, service, tcp));
    // SAFETY: copied out at once.
    let shared = unsafe { LB_REVSVC4.get(RevKey4::of(addr, port, flow.proto)) }
        .is_some_and(|r| r.flags & REV_F_SHARED != 0);
    if shared {
        let rev = ConnEntry4::new(
            id,
            service,
            CONN_REVERSE,
            0,
            flow.dport,
            flow.dst,
            [0; 2],
            0,
        );
        put(&flow.reply_from(addr, port), &rev);
    }
}

/// The flow a packet from a backend endpoint belongs to, as its reply.
#[derive(Clone, Copy)]
pub struct Reply {
    /// The VIP and port the reply's source becomes.
    pub vip: [u8; 4],
    pub vport: [u8; 2],
    pub backend: BackendId,
    /// The flow's forward entry, and the state it moves to once the reply is sent.
    entry: *mut ConnEntry4,
    old: u8,
    new: u8,
}

impl Reply {
    /// Records the reply's flags on its flow (call once the reply is really sent on). A
    /// stateless reply has no flow (`entry` is null) and records nothing.
    #[inline(always)]
    pub fn commit(&self) {
        if self.entry.is_null() {
            return;
        }
        // SAFETY: `entry` is the value pointer `from_backend` found in this run.
        unsafe { set_state(self.entry, self.old, self.new) };
    }
}

/// What a TCP/UDP packet that is not to a service is, seen from the backends' side.
pub enum FromBackend {
    /// The reply of a tracked flow.
    Reply(Reply),
    /// The reply of a hairpin flow (the hairpin program translates it).
    Hairpin,
    /// From a backend endpoint to a tracked flow's client, but not that flow's reply: another
    /// backend's flow, closed too long ago, or a port the client reused to reach the backend
    /// directly (then the flow is marked stale, so none of that connection is hijacked).
    Refused,
    /// Nothing we track.
    None,
}

/// Classifies a packet (`flow`, TCP flags `flags`, 0 for UDP and ICMP's embedded packets) that
/// may be a backend's reply: the reverse-service entry of its source, then its flow's forward
/// entry (after the reverse entry of a shared endpoint); a reverse entry of its own for a hairpin
/// reply.
#[inline(always)]
pub fn from_backend(flow: &FlowKey4, flags: u8) -> FromBackend {
    // SAFETY: copied out at once.
    let rev = unsafe { LB_REVSVC4.get(RevKey4::of(flow.src, flow.sport, flow.proto)) };
    let Some(rev) = rev.copied() else {
        return FromBackend::None;
    };
    if rev.flags & REV_F_STATELESS != 0 {
        // The operator declared the endpoint reachable only through the LB: the packet is a
        // reply, translated from this entry alone, unless it answers the LB's own connection.
        // SAFETY: only whether an entry exists is read.
        if unsafe { LB_LOCAL4.get(flow.dst).is_some() } {
            return FromBackend::None;
        }
        return FromBackend::Reply(Reply {
            vip: rev.vip,
            vport: rev.vport,
            backend: rev.backend,
            entry: core::ptr::null_mut(),
            old: 0,
            new: 0,
        });
    }
    let shared = rev.flags & REV_F_SHARED != 0;
    let own = if shared { lookup(flow) } else { None };
    let (vip, vport, backend) = match own {
        Some(o) if o.kind == CONN_HAIRPIN_REV => return FromBackend::Hairpin,
        Some(o) if o.kind == CONN_REVERSE => (o.addr, o.port, o.backend),
        _ => primary(&rev),
    };
    let Some(e) = LB_CONNTRACK4.get_ptr_mut(flow.forward_of_reply(vip, vport)) else {
        // A hairpin reply goes to VIP:SNAT port, which no forward key has: its own entry says.
        return match if shared { own } else { lookup(flow) } {
            Some(o) if o.kind == CONN_HAIRPIN_REV => FromBackend::Hairpin,
            _ => FromBackend::None,
        };
    };
    // SAFETY: a value pointer from the lookup above, used within this run.
    let ct = unsafe { *e };
    if ct.backend != backend || !translates(ct.tcp, ct.closed_s) {
        return FromBackend::Refused;
    }
    let f = if flow.proto == proto::TCP { flags } else { 0 };
    match conn::after_reply(ct.tcp, f) {
        Ok(new) => FromBackend::Reply(Reply {
            vip,
            vport,
            backend,
            entry: e,
            old: ct.tcp,
            new,
        }),
        Err(stale) => {
            // SAFETY: as above.
            unsafe { set_state(e, ct.tcp, stale) };
            FromBackend::Refused
        }
    }
}

#[inline(always)]
fn primary(rev: &RevService4) -> ([u8; 4], [u8; 2], BackendId) {
    (rev.vip, rev.vport, rev.backend)
}
