//! Conntrack for IPv6 flows (`LB_CONNTRACK6`): the rules of `conntrack.rs`, applied to
//! 16-byte addresses. One forward entry per flow; a shared backend endpoint's flows also write
//! the reverse entry their replies are matched by first. The TCP state machine, the close
//! timeout, the once-a-second refresh and the flood guard are the IPv4 family's own
//! (`lb_common::conn`, `conntrack::{translates, touch_at, may_track}`). Hairpin flows keep
//! their two entries here as IPv4's do in `LB_CONNTRACK4` (`hairpin6.rs`).

use lb_common::{
    conn,
    flow::{FlowKey6, proto},
    maps::{
        BackendId, CONN_FORWARD, CONN_HAIRPIN_REV, CONN_REVERSE, ConnEntry6, REV_F_SHARED,
        REV_F_STATELESS, RevKey6,
    },
};

use crate::{
    conntrack::{now_s, touch_at, translates},
    maps::{LB_CONNTRACK6, LB_LOCAL6, LB_REVSVC6},
    parse6::Packet6,
};

/// Tracks `key` with `entry`: in place over an entry it has, else inserted (see
/// `conntrack::put` for why in place).
#[inline(always)]
fn put(key: &FlowKey6, entry: &ConnEntry6) {
    match LB_CONNTRACK6.get_ptr_mut(key) {
        Some(e) => {
            // size: word stores, as `conntrack::put` (a whole-struct copy is a `memmove` call).
            let words = entry.words();
            let dst = e.cast::<u32>();
            for (i, w) in words.iter().enumerate() {
                // SAFETY: a value pointer from the lookup above; 13 words, 8-byte aligned.
                unsafe { dst.add(i).write_volatile(*w) };
            }
        }
        None => {
            let _ = LB_CONNTRACK6.insert(key, entry, 0);
        }
    }
}

/// A flow's entry, in the map (read in place, field by field: verifier, a 52-byte copy costs
/// the hairpin program's frame more than it has).
#[inline(always)]
pub fn entry(key: &FlowKey6) -> Option<*mut ConnEntry6> {
    LB_CONNTRACK6.get_ptr_mut(key)
}

/// Inserts a hairpin flow's entry (best effort, as `conntrack::track`).
#[inline(always)]
pub fn track(key: &FlowKey6, entry: &ConnEntry6) {
    let _ = LB_CONNTRACK6.insert(key, entry, 0);
}

/// As `conntrack::free_for`: whether `rev_key` is free for the hairpin flow from `addr`:`port`.
#[inline(always)]
pub fn free_for(rev_key: &FlowKey6, kind: u8, (addr, port): ([u8; 16], [u8; 2])) -> bool {
    match entry(rev_key) {
        None => true,
        // SAFETY: a value pointer from the lookup, read at once.
        Some(c) => unsafe { (*c).kind == kind && (*c).addr == addr && (*c).port == port },
    }
}

/// As `conntrack::refresh`: the entry's time, at most once a second.
///
/// # Safety
/// `e` is a value pointer from [`entry`] in this run.
#[inline(always)]
pub unsafe fn refresh(e: *mut ConnEntry6) {
    let now = now_s();
    // SAFETY: the caller guarantees the pointer.
    unsafe {
        if conn::refreshes((*e).tcp, (*e).seen_s, now) {
            (*e).seen_s = now;
        }
    }
}

/// The tracked backend of a client → VIP packet, if its flow is tracked and still translates;
/// its TCP flags and time are recorded on the entry.
#[inline(always)]
pub fn forward(flow: &FlowKey6, pkt: &Packet6) -> Option<ConnEntry6> {
    let e = LB_CONNTRACK6.get_ptr_mut(flow)?;
    // TCP reset on idle: the numbers each side expects next, as `conntrack::forward`. Written
    // before the clock is read, so that nothing of it lives across the helper call (verifier:
    // written after, it spilled past the 512-byte stack); a stale entry's numbers are
    // overwritten when the flow is picked again.
    // SAFETY: a value pointer from the lookup above, used within this run.
    unsafe {
        if flow.proto == proto::TCP && (*e).flags & conn::CT_F_SEQ != 0 {
            let (seq, ack) = pkt.tcp_numbers();
            (*e).seq = seq;
            (*e).ack = ack;
        }
    }
    let now = now_s();
    // SAFETY: a value pointer from the lookup above, used within this run.
    unsafe {
        let ct = *e;
        if !translates(ct.tcp, ct.seen_s, now) {
            return None;
        }
        let new = if flow.proto == proto::TCP {
            conn::after_forward(ct.tcp, pkt.flags())
        } else {
            ct.tcp
        };
        touch_at(
            &raw mut (*e).tcp,
            &raw mut (*e).seen_s,
            (ct.tcp, ct.seen_s),
            new,
            now,
        );
        Some(ct)
    }
}

/// Tracks a new flow to backend `id` at `addr`:`port` (with `pkt`'s sequence numbers when
/// `numbered`: TCP reset on idle), and for a shared endpoint also the reverse entry its replies
/// are matched by. The numbers are read here, after the clock, rather than passed in:
/// verifier, as in `forward` (nothing of them lives across a helper call).
#[inline(always)]
pub fn remember(
    flow: &FlowKey6,
    pkt: &Packet6,
    (id, addr, port): (BackendId, [u8; 16], [u8; 2]),
    service: u32,
    (syn, numbered, replies): (bool, bool, bool),
) {
    let tcp = if syn { conn::CT_SYN } else { 0 };
    let now = now_s();
    let (flags, numbers) = if numbered {
        (conn::CT_F_SEQ, pkt.tcp_numbers())
    } else {
        (0, (0, 0))
    };
    put(
        flow,
        &ConnEntry6::forward(id, service, tcp, flags, now, numbers),
    );
    // A floating-IP flow has no reverse entry (see `conntrack::remember`).
    if !replies {
        return;
    }
    // SAFETY: copied out at once.
    let shared = unsafe { LB_REVSVC6.get(RevKey6::of(addr, port, flow.proto)) }
        .is_some_and(|r| r.flags & REV_F_SHARED != 0);
    if shared {
        let reply_port = lb_common::maps::port_at(port, flow.dport);
        let rev = ConnEntry6::reverse(id, service, flow.dport, flow.dst, now);
        put(&flow.reply_from(addr, reply_port), &rev);
    }
}

/// An IPv6 flow a packet from a backend endpoint belongs to, as its reply (see
/// `conntrack::Reply`).
#[derive(Clone, Copy)]
pub struct Reply6 {
    pub vip: [u8; 16],
    pub vport: [u8; 2],
    pub backend: BackendId,
    entry: *mut ConnEntry6,
    old: u8,
    new: u8,
    seen_s: u32,
    now: u32,
}

impl Reply6 {
    /// Records the reply's flags and time on its flow (once the reply is really sent on). A
    /// stateless endpoint's reply has no flow (a null `entry`).
    #[inline(always)]
    pub fn commit(&self) {
        if self.entry.is_null() {
            return;
        }
        // SAFETY: `entry` is the value pointer `from_backend` found in this run.
        unsafe {
            touch_at(
                &raw mut (*self.entry).tcp,
                &raw mut (*self.entry).seen_s,
                (self.old, self.seen_s),
                self.new,
                self.now,
            );
        }
    }
}

/// What a TCP/UDP IPv6 packet that is not to a service is, seen from the backends' side.
pub enum FromBackend6 {
    Reply(Reply6),
    /// The reply of a hairpin flow (the hairpin program translates it).
    Hairpin,
    /// From a backend endpoint, but not its flow's reply (see `conntrack::FromBackend`).
    Refused,
    None,
}

/// As `conntrack::from_backend`, for IPv6: the source's reverse-service entry (exact, then
/// HA ports), a shared endpoint's reverse entry, then the flow's forward entry.
#[inline(always)]
pub fn from_backend(flow: &FlowKey6, flags: u8) -> FromBackend6 {
    // SAFETY: copied out at once.
    let exact = unsafe { LB_REVSVC6.get(RevKey6::of(flow.src, flow.sport, flow.proto)) };
    let rev = match exact {
        Some(r) => Some(*r),
        // SAFETY: copied out at once.
        None => unsafe { LB_REVSVC6.get(RevKey6::of(flow.src, [0; 2], flow.proto)) }.copied(),
    };
    let Some(mut rev) = rev else {
        return FromBackend6::None;
    };
    if rev.vport == [0; 2] {
        rev.vport = flow.sport;
    }
    if rev.flags & REV_F_STATELESS != 0 {
        // As `conntrack::from_backend`: a reply translated from this entry alone, unless it
        // answers the LB's own connection.
        // SAFETY: only whether an entry exists is read.
        if unsafe { LB_LOCAL6.get(flow.dst).is_some() } {
            return FromBackend6::None;
        }
        return FromBackend6::Reply(Reply6 {
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
    let (mut vip, mut vport, mut backend) = (rev.vip, rev.vport, rev.backend);
    let shared = rev.flags & REV_F_SHARED != 0;
    if shared {
        // SAFETY: copied out at once.
        if let Some(o) = unsafe { LB_CONNTRACK6.get(flow) } {
            if o.kind == CONN_HAIRPIN_REV {
                return FromBackend6::Hairpin;
            }
            if o.kind == CONN_REVERSE {
                (vip, vport, backend) = (o.addr, o.port, o.backend);
            }
        }
    }
    let Some(e) = LB_CONNTRACK6.get_ptr_mut(flow.forward_of_reply(vip, vport)) else {
        // A hairpin reply goes to VIP:SNAT port, which no forward key has: its own entry says
        // (as for IPv4; only packets of no tracked flow pay this lookup, and a shared
        // endpoint's looked its entry up above already).
        if shared {
            return FromBackend6::None;
        }
        // SAFETY: only the kind is read.
        return match unsafe { LB_CONNTRACK6.get(flow) } {
            Some(o) if o.kind == CONN_HAIRPIN_REV => FromBackend6::Hairpin,
            _ => FromBackend6::None,
        };
    };
    // SAFETY: a value pointer from the lookup above, used within this run.
    let ct = unsafe { *e };
    let now = now_s();
    if ct.kind != CONN_FORWARD || ct.backend != backend || !translates(ct.tcp, ct.seen_s, now) {
        return FromBackend6::Refused;
    }
    let f = if flow.proto == proto::TCP { flags } else { 0 };
    match conn::after_reply(ct.tcp, f) {
        Ok(new) => FromBackend6::Reply(Reply6 {
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
            // SAFETY: as above.
            unsafe { (*e).tcp = stale };
            FromBackend6::Refused
        }
    }
}
