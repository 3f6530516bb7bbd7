//! Conntrack: the flow table's lookups, inserts and state. One entry per flow, its forward one
//! (see `ConnEntry4` in `lb-common`): a backend's reply finds it through the backend's
//! reverse-service entry (`LB_REVSVC4`), and is translated only if the entry exists, names that
//! backend, and its TCP state allows it (`lb_common::conn`). An LRU, so inserts are best effort
//! and a flow whose entry was evicted is re-picked from the same consistent table.

use aya_ebpf::{
    Global,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use lb_common::{
    conn,
    flow::{FlowKey4, proto},
    maps::{
        BackendId, CONN_HAIRPIN_REV, CONN_OUTBOUND, CONN_REVERSE, ConnEntry4, REV_F_SHARED,
        REV_F_STATELESS, RevKey4, RevService4,
    },
};

use crate::{
    maps::{LB_CONNTRACK4, LB_FLOW_RL, LB_LOCAL4, LB_REVSVC4},
    parse::Packet,
};

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

/// Whether the returning key `rev_key` of a two-sided NAT flow (hairpin, outbound) is free
/// for the flow from `src`: no entry holds it, or only that flow's own returning entry (of
/// kind `kind`, naming the flow's source), as a retransmitted SYN finds it.
#[inline(always)]
pub fn free_for(rev_key: &FlowKey4, kind: u8, (addr, port): ([u8; 4], [u8; 2])) -> bool {
    match lookup(rev_key) {
        None => true,
        Some(c) => c.kind == kind && c.addr == addr && c.port == port,
    }
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
        Some(e) => {
            // size: a whole-struct assignment of the 40-byte entry compiled to a `memmove`
            // call (the BPF backend inlines small copies only); ten word stores do not.
            let words = entry.words();
            let dst = e.cast::<u32>();
            // verifier: a constant trip count, unrolled.
            for (i, w) in words.iter().enumerate() {
                // SAFETY: a value pointer from the lookup above, used within this run; the
                // entry is ten 4-byte words, and map values are 8-byte aligned.
                unsafe { dst.add(i).write_volatile(*w) };
            }
        }
        None => track(key, entry),
    }
}

/// Seconds of the monotonic clock, coarse (`bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC_COARSE,
/// the agent's sweeper reads the same clock). time: the coarse clock reads the last tick's
/// time and no TSC, which matters now that every tracked packet reads it. Wraps after 136
/// years.
#[inline(always)]
pub fn now_s() -> u32 {
    // SAFETY: a plain helper call.
    let ns = unsafe { bpf_ktime_get_coarse_ns() };
    #[expect(clippy::cast_possible_truncation, reason = "seconds of uptime fit u32")]
    let s = (ns / 1_000_000_000) as u32;
    s
}

/// Whether a tracked flow still translates at `now`.
#[inline(always)]
pub fn translates(tcp: u8, seen_s: u32, now: u32) -> bool {
    conn::translates(tcp, seen_s, now, LB_CLOSE_TIMEOUT_S.load())
}

/// Writes a flow's new TCP state and last-seen second into its entry in place (the kernel
/// keeps no lock; a racing update on another CPU can lose a flag, which costs at most a close
/// seen late). Each is written only when it changes, so an established flow's packets write
/// the entry at most once a second (`conn::refreshes`). A flow that closes now records now as
/// its close time.
///
/// # Safety
/// `e` must be a value pointer of `LB_CONNTRACK4` from this program run.
#[inline(always)]
unsafe fn touch(e: *mut ConnEntry4, was: (u8, u32), new: u8, now: u32) {
    // SAFETY: the caller guarantees `e` points at a live map value.
    unsafe { touch_at(&raw mut (*e).tcp, &raw mut (*e).seen_s, was, new, now) }
}

/// [`touch`] through pointers to an entry's two fields, for either family's entry.
///
/// # Safety
/// `tcp` and `seen` must point into a conntrack map value from this program run.
#[inline(always)]
pub unsafe fn touch_at(tcp: *mut u8, seen: *mut u32, (old, seen_s): (u8, u32), new: u8, now: u32) {
    // SAFETY: the caller guarantees both point at a live map value.
    unsafe {
        if old != new {
            *tcp = new;
        }
        if conn::closes(old, new) || conn::refreshes(new, seen_s, now) {
            *seen = now;
        }
    }
}

/// The tracked backend of a client → VIP packet `pkt`, if its flow is tracked and still
/// translates; the packet's TCP flags and time are recorded on the entry, and its sequence
/// numbers if the entry records them (TCP reset on idle).
#[inline(always)]
pub fn forward(flow: &FlowKey4, pkt: &Packet) -> Option<ConnEntry4> {
    let e = LB_CONNTRACK4.get_ptr_mut(flow)?;
    // SAFETY: a value pointer from the lookup above, used within this run.
    unsafe { advance(e, *e, flow, pkt) }
}

/// The entry of `flow`, in one lookup: an entry of kind `kind` as [`forward`] handles it
/// (`None` once it no longer translates), any other kind returned as it is, untouched. For a
/// caller that branches on the kind (the outbound program: a returning entry, or a flow's own).
#[inline(always)]
pub fn forward_of_kind(flow: &FlowKey4, pkt: &Packet, kind: u8) -> Option<ConnEntry4> {
    let e = LB_CONNTRACK4.get_ptr_mut(flow)?;
    // SAFETY: a value pointer from the lookup above, used within this run.
    unsafe {
        let ct = *e;
        if ct.kind != kind {
            return Some(ct);
        }
        advance(e, ct, flow, pkt)
    }
}

/// [`forward`]'s work on a found entry `e` (whose copy is `ct`).
///
/// # Safety
/// `e` must be a value pointer of `LB_CONNTRACK4` from this program run.
#[inline(always)]
unsafe fn advance(
    e: *mut ConnEntry4,
    ct: ConnEntry4,
    flow: &FlowKey4,
    pkt: &Packet,
) -> Option<ConnEntry4> {
    let now = now_s();
    // SAFETY: the caller guarantees `e` points at a live map value.
    unsafe {
        if !translates(ct.tcp, ct.seen_s, now) {
            return None;
        }
        let tcp = flow.proto == proto::TCP;
        let new = if tcp {
            conn::after_forward(ct.tcp, pkt.flags())
        } else {
            ct.tcp
        };
        touch(e, (ct.tcp, ct.seen_s), new, now);
        if tcp && ct.flags & conn::CT_F_SEQ != 0 {
            let (seq, ack) = pkt.tcp_numbers();
            (*e).seq = seq;
            (*e).ack = ack;
        }
        Some(ct)
    }
}

/// Refreshes a tracked flow's last-seen second from a copy `ct` of its entry: the entry is
/// looked up again only when the second changed, so the second lookup is paid at most once a
/// second. For hairpin flows, whose packets read their entry by copy; their TCP state is not
/// tracked, so they end by the idle timeout.
#[inline(always)]
pub fn refresh(key: &FlowKey4, ct: &ConnEntry4) {
    let now = now_s();
    if conn::refreshes(ct.tcp, ct.seen_s, now)
        && let Some(e) = LB_CONNTRACK4.get_ptr_mut(key)
    {
        // SAFETY: a value pointer from the lookup above, used at once.
        unsafe { (*e).seen_s = now };
    }
}

/// Whether a packet returning to frontend `front`:port of an outbound flow whose forward
/// key is `fwd` is translated: the forward entry exists, is that flow's (names this frontend
/// port), still translates, and takes the packet's TCP flags (`flags`) as a reply; the new state
/// and time are recorded on it. A SYN-ACK the backend's side never asked for is not
/// translated, and, unlike a backend's reply, does not mark the flow stale: it comes from the
/// outside, where anyone who guessed the flow's endpoints could otherwise end it.
#[inline(always)]
pub fn outbound_return(fwd: &FlowKey4, front: ([u8; 4], [u8; 2]), flags: u8) -> bool {
    let Some(e) = LB_CONNTRACK4.get_ptr_mut(fwd) else {
        return false;
    };
    let now = now_s();
    // SAFETY: a value pointer from the lookup above, used within this run.
    unsafe {
        let ct = *e;
        if ct.kind != CONN_OUTBOUND
            || (ct.addr, ct.port) != front
            || !translates(ct.tcp, ct.seen_s, now)
        {
            return false;
        }
        let f = if fwd.proto == proto::TCP { flags } else { 0 };
        match conn::after_reply(ct.tcp, f) {
            Ok(new) => {
                touch(e, (ct.tcp, ct.seen_s), new, now);
                true
            }
            Err(_) => false,
        }
    }
}

/// Tracks a new client → VIP flow: its forward entry (with the client's sequence numbers when
/// `numbers` has them: TCP reset on idle), and for a backend endpoint shared by several
/// services also the reverse entry its replies are matched by first. A floating-IP flow
/// (`replies` false) has none: its replies never come back, and a reverse entry keyed like a
/// DNAT flow's reply from the same endpoint would catch that reply.
#[inline(always)]
pub fn remember(
    flow: &FlowKey4,
    (id, addr, port): (BackendId, [u8; 4], [u8; 2]),
    service: u32,
    (syn, replies): (bool, bool),
    numbers: Option<(u32, u32)>,
) {
    let tcp = if syn { conn::CT_SYN } else { 0 };
    let now = now_s();
    let entry = match numbers {
        Some(n) => ConnEntry4::forward(id, service, tcp, conn::CT_F_SEQ, now, n),
        None => ConnEntry4::forward(id, service, tcp, 0, now, (0, 0)),
    };
    put(flow, &entry);
    if !replies {
        return;
    }
    // SAFETY: copied out at once.
    let shared = unsafe { LB_REVSVC4.get(RevKey4::of(addr, port, flow.proto)) }
        .is_some_and(|r| r.flags & REV_F_SHARED != 0);
    if shared {
        // An HA-ports backend (port 0) replies from the port the client sent to.
        let reply_port = lb_common::maps::port_at(port, flow.dport);
        let rev = ConnEntry4::new(
            id,
            service,
            CONN_REVERSE,
            0,
            flow.dport,
            flow.dst,
            [0; 2],
            0,
            now,
        );
        put(&flow.reply_from(addr, reply_port), &rev);
    }
}

/// The flow a packet from a backend endpoint belongs to, as its reply.
#[derive(Clone, Copy)]
pub struct Reply {
    /// The VIP and port the reply's source becomes.
    pub vip: [u8; 4],
    pub vport: [u8; 2],
    pub backend: BackendId,
    /// The flow's forward entry as found, the state it moves to once the reply is sent, and
    /// when.
    entry: *mut ConnEntry4,
    old: u8,
    new: u8,
    seen_s: u32,
    now: u32,
}

impl Reply {
    /// Records the reply's flags and time on its flow (call once the reply is really sent on).
    /// A stateless reply has no flow (`entry` is null) and records nothing.
    #[inline(always)]
    pub fn commit(&self) {
        if self.entry.is_null() {
            return;
        }
        // SAFETY: `entry` is the value pointer `from_backend` found in this run.
        unsafe { touch(self.entry, (self.old, self.seen_s), self.new, self.now) };
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
    let exact = unsafe { LB_REVSVC4.get(RevKey4::of(flow.src, flow.sport, flow.proto)) };
    // An HA-ports backend's entry has port 0: it answers from every port. time: the second
    // lookup is paid only by packets from a backend address that are no exact endpoint's.
    let rev = match exact {
        Some(r) => Some(*r),
        // SAFETY: copied out at once.
        None => unsafe { LB_REVSVC4.get(RevKey4::of(flow.src, [0; 2], flow.proto)) }.copied(),
    };
    let Some(mut rev) = rev else {
        return FromBackend::None;
    };
    // HA ports keep the port: the reply's source port is the VIP port its flow was sent to.
    if rev.vport == [0; 2] {
        rev.vport = flow.sport;
    }
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
            seen_s: 0,
            now: 0,
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
    let now = now_s();
    if ct.backend != backend || !translates(ct.tcp, ct.seen_s, now) {
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
            seen_s: ct.seen_s,
            now,
        }),
        Err(stale) => {
            // A stale flow is not refreshed: it ages out by the close timeout.
            // SAFETY: as above.
            unsafe { (*e).tcp = stale };
            FromBackend::Refused
        }
    }
}

#[inline(always)]
fn primary(rev: &RevService4) -> ([u8; 4], [u8; 2], BackendId) {
    (rev.vip, rev.vport, rev.backend)
}
