//! The rules of a tracked flow's life, which the fast path applies and the model predicts: which
//! TCP flag combinations are refused, and when a backend's reply is still translated.
//!
//! A forward entry records the TCP state it has seen ([`ConnEntry4::tcp`]): whether the last
//! client packet was a SYN, a FIN in each direction, a RST. That is what makes reply matching
//! correct: a reply is translated only if the flow it names is open (or closed less than
//! [`CLOSE_TIMEOUT_S`] ago), and a SYN-ACK only if the client's last packet was a SYN. A
//! SYN-ACK that fails that test means the 5-tuple now belongs to a connection that did not go
//! through the VIP (a client reusing its port to reach the backend directly); the entry is
//! marked stale and never translates again, so none of that connection's packets is hijacked.
//!
//!
//! A flow's life ends in the agent's sweeper, which removes forward entries by [`expiry`]: idle
//! for the endpoint's timeout, closed for [`CLOSE_TIMEOUT_S`], or never past the SYN for
//! [`SYN_TIMEOUT_S`]. The fast path only keeps `seen_s` current ([`refreshes`]).
//!
//! [`ConnEntry4::tcp`]: crate::maps::ConnEntry4::tcp

use crate::hdr::{TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG};

/// The client's last packet was a SYN: a SYN-ACK from the backend is expected.
pub const CT_SYN: u8 = 1;
/// A FIN from the client.
pub const CT_FIN_FWD: u8 = 2;
/// A FIN from the backend.
pub const CT_FIN_REV: u8 = 4;
/// A RST from either side.
pub const CT_RST: u8 = 8;
/// The 5-tuple was reused by a connection that did not go through the VIP: never translate.
pub const CT_STALE: u8 = 16;

/// How long a closed flow (a RST, or a FIN each way) still translates, in seconds: enough for
/// the last ACKs and retransmitted FINs, short enough that a reused port is not captured. The
/// sweeper removes it then (`agent.tcp_close_timeout`).
pub const CLOSE_TIMEOUT_S: u32 = 10;

/// How long a TCP flow whose handshake never completed (the client's last packet was its SYN)
/// is kept, in seconds (`agent.tcp_syn_timeout`): Cilium's figure. A client still trying
/// retransmits its SYN, which takes a fresh pick and a fresh entry.
pub const SYN_TIMEOUT_S: u32 = 60;

/// Default idle timeout of a TCP endpoint, in seconds: the reference's 4 minutes.
pub const IDLE_TIMEOUT_TCP_S: u32 = 240;
/// Default idle timeout of a UDP endpoint, in seconds. Shorter than TCP's: UDP has no close, so
/// every flow (each DNS query's port) lingers for the whole timeout, and an expired UDP flow
/// re-picks from the same consistent table, so it lands on the same backend unless the
/// backend set changed.
pub const IDLE_TIMEOUT_UDP_S: u32 = 60;
/// The shortest idle timeout (seconds): the clock the fast path records has whole seconds and
/// the sweeper runs once a second, so a flow expires between the timeout and 2 s after it.
pub const IDLE_TIMEOUT_MIN_S: u32 = 2;
/// The longest idle timeout (seconds): 2 hours, the Linux default TCP keepalive time.
pub const IDLE_TIMEOUT_MAX_S: u32 = 7_200;

/// [`ConnEntry4::flags`]: the fast path records the client's sequence numbers on every packet
/// (`seq`, `ack`), for TCP reset on idle. Set on a new flow of a service with `tcp_reset`.
///
/// [`ConnEntry4::flags`]: crate::maps::ConnEntry4::flags
pub const CT_F_SEQ: u8 = 1;

/// Whether a packet seen at `now_s` writes the entry's `seen_s`: only when the second changed
/// (so an established flow writes its entry at most once a second), and never once the flow is
/// closed (then `seen_s` is when it closed, which the close timeout counts from).
#[inline(always)]
#[must_use]
pub const fn refreshes(s: u8, seen_s: u32, now_s: u32) -> bool {
    seen_s != now_s && !is_closed(s)
}

/// The sequence number the receiver expects after a TCP segment: its sequence number, plus its
/// payload length, plus one for a SYN and one for a FIN (each takes a sequence number).
#[inline(always)]
#[must_use]
pub const fn next_seq(seq: u32, payload: u32, flags: u8) -> u32 {
    let mut n = seq.wrapping_add(payload);
    if flags & TCP_SYN != 0 {
        n = n.wrapping_add(1);
    }
    if flags & TCP_FIN != 0 {
        n = n.wrapping_add(1);
    }
    n
}

/// Why the sweeper removed a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Expiry {
    /// Nothing seen for the endpoint's idle timeout.
    Idle,
    /// Closed (a RST, or a FIN each way) or stale, longer than the close timeout ago.
    Closed,
    /// The handshake never completed within the SYN timeout.
    Syn,
}

impl Expiry {
    pub const ALL: [Self; 3] = [Self::Idle, Self::Closed, Self::Syn];

    /// The label in counters and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Closed => "closed",
            Self::Syn => "syn",
        }
    }
}

/// The timeouts that apply to one flow, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The endpoint's idle timeout.
    pub idle_s: u32,
    pub close_s: u32,
    pub syn_s: u32,
}

/// Whether a forward entry (state `s`, last seen `seen_s`, of protocol `proto`) has expired at
/// `now_s`, and why. A flow expires strictly after its timeout: seen at second 100 with a 4 s
/// timeout, it lives through second 104.
#[inline(always)]
#[must_use]
pub const fn expiry(proto: u8, s: u8, seen_s: u32, now_s: u32, t: Timeouts) -> Option<Expiry> {
    let age = now_s.wrapping_sub(seen_s);
    // A clock read on another CPU may run a second ahead of ours: that is not an age.
    if age > u32::MAX / 2 {
        return None;
    }
    if proto == crate::flow::proto::TCP {
        if s & CT_STALE != 0 || is_closed(s) {
            return if age > t.close_s {
                Some(Expiry::Closed)
            } else {
                None
            };
        }
        if s & CT_SYN != 0 {
            return if age > t.syn_s {
                Some(Expiry::Syn)
            } else {
                None
            };
        }
    }
    if age > t.idle_s {
        Some(Expiry::Idle)
    } else {
        None
    }
}

/// Whether a TCP flag combination is one no real stack sends (SYN+FIN, SYN+RST, no flag at all,
/// FIN+PSH+URG "Xmas"): dropped to a VIP (`drop_tcp_flags`), never tracked.
#[inline(always)]
#[must_use]
pub const fn invalid_flags(f: u8) -> bool {
    let f = f & 0x3f;
    f == 0
        || f & (TCP_SYN | TCP_FIN) == TCP_SYN | TCP_FIN
        || f & (TCP_SYN | TCP_RST) == TCP_SYN | TCP_RST
        || f & (TCP_FIN | TCP_PSH | TCP_URG) == TCP_FIN | TCP_PSH | TCP_URG
}

/// A SYN without ACK: a new connection, which always takes a fresh pick.
#[inline(always)]
#[must_use]
pub const fn is_syn(f: u8) -> bool {
    f & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A RST or FIN: it closes (or tears down) a connection. One that matches no tracked flow is
/// forwarded by the table, so an evicted connection can still close, but it is not tracked.
#[inline(always)]
#[must_use]
pub const fn is_teardown(f: u8) -> bool {
    f & (TCP_RST | TCP_FIN) != 0
}

/// Whether the state is closed: a RST, or a FIN in both directions.
#[inline(always)]
#[must_use]
pub const fn is_closed(s: u8) -> bool {
    s & CT_RST != 0 || s & (CT_FIN_FWD | CT_FIN_REV) == CT_FIN_FWD | CT_FIN_REV
}

/// Whether a tracked flow still translates at `now_s` (seconds of the monotonic clock): not
/// stale, and open or closed at most `timeout_s` ago (`seen_s` is when it closed, for a closed
/// flow; the program's timeout is [`CLOSE_TIMEOUT_S`] unless the agent sets another at load).
#[inline(always)]
#[must_use]
pub const fn translates(s: u8, seen_s: u32, now_s: u32, timeout_s: u32) -> bool {
    s & CT_STALE == 0 && (!is_closed(s) || now_s.wrapping_sub(seen_s) <= timeout_s)
}

/// The state after a client packet with TCP flags `f` (not a SYN: a SYN starts a new entry
/// whose state is [`CT_SYN`]). UDP flows pass `f = 0` and keep state 0.
#[inline(always)]
#[must_use]
pub const fn after_forward(s: u8, f: u8) -> u8 {
    let mut n = s & !CT_SYN;
    if f & TCP_FIN != 0 {
        n |= CT_FIN_FWD;
    }
    if f & TCP_RST != 0 {
        n |= CT_RST;
    }
    n
}

/// What a backend's reply with TCP flags `f` (UDP: 0) does to the flow's state: `Ok(new)` when
/// it is translated, `Err(new)` when it is not (the flow is marked [`CT_STALE`]).
///
/// # Errors
/// A SYN-ACK for a flow whose client's last packet was not a SYN.
#[inline(always)]
pub const fn after_reply(s: u8, f: u8) -> Result<u8, u8> {
    if f & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK && s & CT_SYN == 0 {
        return Err(s | CT_STALE);
    }
    let mut n = s;
    if f & TCP_FIN != 0 {
        n |= CT_FIN_REV;
    }
    if f & TCP_RST != 0 {
        n |= CT_RST;
    }
    Ok(n)
}

/// Whether a state change closes the flow now (so its close time is recorded).
#[inline(always)]
#[must_use]
pub const fn closes(old: u8, new: u8) -> bool {
    !is_closed(old) && is_closed(new)
}

/// One RST of TCP reset on idle: an IPv4 header (DF, TTL 64) and a 20-byte TCP header with
/// only RST set, checksums computed.
pub type Rst4 = [u8; 40];

/// The two RSTs that TCP reset on idle sends when a plain TCP flow `key` (client → VIP),
/// tracked to the backend at `backend` (address, port), expires idle: one to the client, from
/// VIP:port, with the sequence number the client expects next (its last acknowledgement); one
/// to the backend, from the client's address and port, with the sequence number the backend
/// expects next (the client's last sequence number plus its length). An exact match is what
/// RFC 5961 accepts (anything else in the window draws a challenge ACK). `None` unless the entry
/// recorded the numbers ([`CT_F_SEQ`]) and the flow is established (not mid-handshake, closed
/// or stale).
#[must_use]
pub fn idle_resets(
    key: &crate::flow::FlowKey4,
    backend: ([u8; 4], [u8; 2]),
    e: &crate::maps::ConnEntry4,
) -> Option<[Rst4; 2]> {
    resettable(key, e, crate::maps::CONN_FORWARD).then(|| {
        [
            rst4((key.dst, key.dport), (key.src, key.sport), e.ack),
            rst4((key.src, key.sport), backend, e.seq),
        ]
    })
}

/// Whether TCP reset on idle can reset the flow of `key` and its entry `e` of kind `kind`: a
/// TCP flow that recorded its numbers and is established (not mid-handshake, closed or stale).
fn resettable(key: &crate::flow::FlowKey4, e: &crate::maps::ConnEntry4, kind: u8) -> bool {
    resettable_fields(key.proto, (e.kind, e.flags, e.tcp), kind)
}

/// [`resettable`] over the fields both families' entries have: (kind, flags, TCP state).
const fn resettable_fields(proto_: u8, (kind, flags, tcp): (u8, u8, u8), want: u8) -> bool {
    proto_ == crate::flow::proto::TCP
        && kind == want
        && flags & CT_F_SEQ != 0
        && tcp & (CT_SYN | CT_STALE) == 0
        && !is_closed(tcp)
}

/// One IPv6 RST of TCP reset on idle: an IPv6 header (hop limit 64) and a 20-byte TCP header
/// with only RST set, its checksum computed over the IPv6 pseudo-header.
pub type Rst6 = [u8; 60];

/// [`idle_resets`] for an IPv6 flow: the same two RSTs, with the same numbers.
#[must_use]
pub fn idle_resets6(
    key: &crate::flow::FlowKey6,
    backend: ([u8; 16], [u8; 2]),
    e: &crate::maps::ConnEntry6,
) -> Option<[Rst6; 2]> {
    resettable_fields(
        key.proto,
        (e.kind, e.flags, e.tcp),
        crate::maps::CONN_FORWARD,
    )
    .then(|| {
        [
            rst6((key.dst, key.dport), (key.src, key.sport), e.ack),
            rst6((key.src, key.sport), backend, e.seq),
        ]
    })
}

/// An IPv6 RST from `src` to `dst` (address, port) with sequence number `seq`.
#[must_use]
pub fn rst6(src: ([u8; 16], [u8; 2]), dst: ([u8; 16], [u8; 2]), seq: u32) -> Rst6 {
    let mut p = [0u8; 60];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&20u16.to_be_bytes());
    p[6] = crate::flow::proto::TCP;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.0);
    p[24..40].copy_from_slice(&dst.0);
    p[40..42].copy_from_slice(&src.1);
    p[42..44].copy_from_slice(&dst.1);
    p[44..48].copy_from_slice(&seq.to_be_bytes());
    p[52] = 5 << 4;
    p[53] = TCP_RST;
    let tcp = crate::csum::l4_v6(src.0, dst.0, crate::flow::proto::TCP, &p[40..]);
    p[56..58].copy_from_slice(&tcp.to_be_bytes());
    p
}

/// The two RSTs that TCP reset on idle sends when an outbound TCP flow `key` (backend →
/// remote, its entry naming the frontend address and port it left with) expires idle: one to
/// the backend, from the remote, with the sequence number the backend expects next (its last
/// acknowledgement); one to the remote, from the frontend address and port, with the sequence
/// number the remote expects next. `None` under the same conditions as [`idle_resets`].
#[must_use]
pub fn outbound_idle_resets(
    key: &crate::flow::FlowKey4,
    e: &crate::maps::ConnEntry4,
) -> Option<[Rst4; 2]> {
    resettable(key, e, crate::maps::CONN_OUTBOUND).then(|| {
        [
            rst4((key.dst, key.dport), (key.src, key.sport), e.ack),
            rst4((e.addr, e.port), (key.dst, key.dport), e.seq),
        ]
    })
}

/// A RST from `src` to `dst` (address, port) with sequence number `seq`.
#[must_use]
pub fn rst4(src: ([u8; 4], [u8; 2]), dst: ([u8; 4], [u8; 2]), seq: u32) -> Rst4 {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = crate::flow::proto::TCP;
    p[12..16].copy_from_slice(&src.0);
    p[16..20].copy_from_slice(&dst.0);
    let ip = crate::csum::ipv4_header(&p[..20]);
    p[10..12].copy_from_slice(&ip.to_be_bytes());
    p[20..22].copy_from_slice(&src.1);
    p[22..24].copy_from_slice(&dst.1);
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = TCP_RST;
    let tcp = crate::csum::l4_v4(src.0, dst.0, crate::flow::proto::TCP, &p[20..]);
    p[36..38].copy_from_slice(&tcp.to_be_bytes());
    p
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_refused_combinations() {
        for f in [
            TCP_SYN | TCP_FIN,
            TCP_SYN | TCP_RST,
            0,
            TCP_FIN | TCP_PSH | TCP_URG,
            TCP_SYN | TCP_FIN | TCP_ACK,
        ] {
            assert!(invalid_flags(f), "{f:#x}");
        }
        for f in [
            TCP_SYN,
            TCP_SYN | TCP_ACK,
            TCP_ACK,
            TCP_ACK | TCP_PSH,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
        ] {
            assert!(!invalid_flags(f), "{f:#x}");
        }
    }

    #[test]
    fn a_handshake_then_a_close_in_both_directions() {
        let s = CT_SYN;
        assert_eq!(after_reply(s, TCP_SYN | TCP_ACK), Ok(CT_SYN));
        let s = after_forward(s, TCP_ACK);
        assert_eq!(s, 0);
        let s = after_forward(s, TCP_FIN | TCP_ACK);
        assert!(!is_closed(s) && translates(s, 0, 1_000, CLOSE_TIMEOUT_S));
        let n = after_reply(s, TCP_FIN | TCP_ACK).unwrap();
        assert!(closes(s, n));
        assert!(translates(n, 100, 100 + CLOSE_TIMEOUT_S, CLOSE_TIMEOUT_S));
        assert!(!translates(n, 100, 101 + CLOSE_TIMEOUT_S, CLOSE_TIMEOUT_S));
    }

    #[test]
    fn a_syn_ack_after_the_handshake_is_a_reused_port() {
        // The flow went through the VIP and ended; the client reuses its port to reach the
        // backend directly: the backend's SYN-ACK must not be taken for the VIP flow's.
        let s = after_forward(CT_SYN, TCP_ACK);
        let stale = after_reply(s, TCP_SYN | TCP_ACK).unwrap_err();
        assert!(!translates(stale, 0, 0, CLOSE_TIMEOUT_S));
        assert_eq!(after_reply(stale, TCP_ACK), Ok(stale));
    }

    const T: Timeouts = Timeouts {
        idle_s: 4,
        close_s: CLOSE_TIMEOUT_S,
        syn_s: SYN_TIMEOUT_S,
    };

    #[test]
    fn each_state_expires_by_its_own_timeout() {
        use crate::flow::proto::{TCP, UDP};
        // Established TCP and any UDP: the idle timeout, strictly after it.
        for p in [TCP, UDP] {
            assert_eq!(expiry(p, 0, 100, 104, T), None);
            assert_eq!(expiry(p, 0, 100, 105, T), Some(Expiry::Idle));
        }
        // Mid-handshake: the SYN timeout, not the (shorter) idle one.
        assert_eq!(expiry(TCP, CT_SYN, 100, 105, T), None);
        assert_eq!(
            expiry(TCP, CT_SYN, 100, 101 + SYN_TIMEOUT_S, T),
            Some(Expiry::Syn)
        );
        // Closed or stale: the close timeout, however short the idle one.
        for s in [CT_RST, CT_FIN_FWD | CT_FIN_REV, CT_STALE] {
            assert_eq!(expiry(TCP, s, 100, 100 + CLOSE_TIMEOUT_S, T), None);
            assert_eq!(
                expiry(TCP, s, 100, 101 + CLOSE_TIMEOUT_S, T),
                Some(Expiry::Closed)
            );
        }
        // Half closed is still open.
        assert_eq!(expiry(TCP, CT_FIN_FWD, 100, 105, T), Some(Expiry::Idle));
        // UDP has no TCP state: its bits mean nothing.
        assert_eq!(expiry(UDP, CT_SYN, 100, 105, T), Some(Expiry::Idle));
        // A clock a second behind the entry's is not an age.
        assert_eq!(expiry(TCP, 0, 100, 99, T), None);
    }

    #[test]
    fn a_refresh_writes_once_a_second_and_never_after_the_close() {
        assert!(!refreshes(0, 7, 7));
        assert!(refreshes(0, 7, 8));
        assert!(refreshes(CT_FIN_FWD, 7, 8));
        assert!(!refreshes(CT_RST, 7, 8));
        assert!(!refreshes(CT_FIN_FWD | CT_FIN_REV, 7, 8));
    }

    #[test]
    fn next_seq_counts_syn_fin_and_payload() {
        assert_eq!(next_seq(1000, 0, TCP_ACK), 1000);
        assert_eq!(next_seq(1000, 10, TCP_ACK | TCP_PSH), 1010);
        assert_eq!(next_seq(1000, 0, TCP_SYN), 1001);
        assert_eq!(next_seq(1000, 5, TCP_FIN | TCP_ACK), 1006);
        assert_eq!(next_seq(u32::MAX, 2, TCP_ACK), 1);
    }

    #[test]
    fn outbound_idle_resets_go_to_the_backend_from_the_remote_and_to_the_remote_from_the_frontend()
    {
        use crate::{
            flow::FlowKey4,
            maps::{CONN_OUTBOUND, ConnEntry4},
        };
        // Backend 192.0.2.11:40000 → remote 198.51.100.77:443, left as 203.0.113.10:2049.
        let key = FlowKey4::of(
            [192, 0, 2, 11],
            [198, 51, 100, 77],
            [0x9c, 0x40],
            [1, 187],
            6,
        );
        let mut e = ConnEntry4::new(
            0,
            1 << 31,
            CONN_OUTBOUND,
            0,
            [8, 1],
            [203, 0, 113, 10],
            [0; 2],
            0,
            50,
        );
        assert_eq!(outbound_idle_resets(&key, &e), None, "no numbers recorded");
        e.flags = CT_F_SEQ;
        e.seq = 0x1111_2222;
        e.ack = 0x3333_4444;
        let [to_backend, to_remote] = outbound_idle_resets(&key, &e).expect("established");
        assert_eq!(&to_backend[12..20], &[198, 51, 100, 77, 192, 0, 2, 11]);
        assert_eq!(&to_backend[20..24], &[1, 187, 0x9c, 0x40]);
        assert_eq!(&to_backend[24..28], &0x3333_4444u32.to_be_bytes());
        assert_eq!(&to_remote[12..20], &[203, 0, 113, 10, 198, 51, 100, 77]);
        assert_eq!(&to_remote[20..24], &[8, 1, 1, 187]);
        assert_eq!(&to_remote[24..28], &0x1111_2222u32.to_be_bytes());
        e.tcp = CT_RST;
        assert_eq!(
            outbound_idle_resets(&key, &e),
            None,
            "a closed flow is not reset"
        );
        // A plain flow's entry is not an outbound one.
        let plain = ConnEntry4::forward(3, 1, 0, CT_F_SEQ, 50, (1, 2));
        assert_eq!(outbound_idle_resets(&key, &plain), None);
    }

    #[test]
    fn ipv6_idle_resets_carry_the_numbers_each_side_expects_and_valid_checksums() {
        use crate::{flow::FlowKey6, maps::ConnEntry6};
        let v6 = |last: u8| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            a[15] = last;
            a
        };
        let key = FlowKey6::of(v6(7), v6(10), [0x9c, 0x40], [0, 80], 6);
        let be = (v6(11), [0x1f, 0x90]);
        let mut e = ConnEntry6::forward(3, 1, 0, CT_F_SEQ, 50, (0x1111_2222, 0x3333_4444));
        let [to_client, to_backend] = idle_resets6(&key, be, &e).expect("established");
        assert_eq!(&to_client[8..24], &v6(10));
        assert_eq!(&to_client[24..40], &v6(7));
        assert_eq!(&to_client[40..44], &[0, 80, 0x9c, 0x40]);
        assert_eq!(&to_client[44..48], &0x3333_4444u32.to_be_bytes());
        assert_eq!(&to_backend[8..24], &v6(7));
        assert_eq!(&to_backend[24..40], &v6(11));
        assert_eq!(&to_backend[40..44], &[0x9c, 0x40, 0x1f, 0x90]);
        assert_eq!(&to_backend[44..48], &0x1111_2222u32.to_be_bytes());
        for r in [to_client, to_backend] {
            assert_eq!((r[0], r[6], r[53]), (0x60, 6, TCP_RST));
            let src: [u8; 16] = r[8..24].try_into().unwrap();
            let dst: [u8; 16] = r[24..40].try_into().unwrap();
            // Summed with its own checksum, a valid segment folds to zero.
            assert_eq!(crate::csum::l4_v6(src, dst, 6, &r[40..]), 0);
        }
        e.tcp = CT_RST;
        assert_eq!(
            idle_resets6(&key, be, &e),
            None,
            "a closed flow is not reset"
        );
        let unnumbered = ConnEntry6::forward(3, 1, 0, 0, 50, (0, 0));
        assert_eq!(idle_resets6(&key, be, &unnumbered), None);
    }

    #[test]
    fn idle_resets_carry_the_numbers_each_side_expects() {
        use crate::{flow::FlowKey4, maps::ConnEntry4};
        let key = FlowKey4::of(
            [198, 51, 100, 7],
            [203, 0, 113, 10],
            [0x9c, 0x40],
            [0, 80],
            6,
        );
        let be = ([192, 0, 2, 11], [0x1f, 0x90]);
        let e = ConnEntry4::forward(3, 1, 0, CT_F_SEQ, 50, (0x1111_2222, 0x3333_4444));
        let [to_client, to_backend] = idle_resets(&key, be, &e).expect("established");
        // To the client: from VIP:80, its next expected sequence number (its last ACK).
        assert_eq!(&to_client[12..16], &[203, 0, 113, 10]);
        assert_eq!(&to_client[16..20], &[198, 51, 100, 7]);
        assert_eq!(&to_client[20..24], &[0, 80, 0x9c, 0x40]);
        assert_eq!(&to_client[24..28], &0x3333_4444u32.to_be_bytes());
        // To the backend: from the client, the client's next sequence number.
        assert_eq!(&to_backend[12..16], &[198, 51, 100, 7]);
        assert_eq!(&to_backend[16..20], &[192, 0, 2, 11]);
        assert_eq!(&to_backend[20..24], &[0x9c, 0x40, 0x1f, 0x90]);
        assert_eq!(&to_backend[24..28], &0x1111_2222u32.to_be_bytes());
        for p in [to_client, to_backend] {
            assert_eq!(p[33], TCP_RST);
            assert_eq!(p[32], 0x50);
            // Both checksums verify: a header summing to 0xffff, and the segment with its
            // pseudo-header.
            assert_eq!(
                crate::csum::fold(crate::csum::sum_words(&p[..20], 0)),
                0xffff
            );
            let mut src = [0; 4];
            src.copy_from_slice(&p[12..16]);
            let mut dst = [0; 4];
            dst.copy_from_slice(&p[16..20]);
            let mut seg = p[20..].to_vec();
            let check = u16::from_be_bytes([seg[16], seg[17]]);
            seg[16..18].copy_from_slice(&[0, 0]);
            assert_eq!(crate::csum::l4_v4(src, dst, 6, &seg), check);
        }
        // Nothing without recorded numbers, mid-handshake, or once closed.
        let mut off = e;
        off.flags = 0;
        assert!(idle_resets(&key, be, &off).is_none());
        for s in [CT_SYN, CT_RST, CT_STALE, CT_FIN_FWD | CT_FIN_REV] {
            let mut x = e;
            x.tcp = s;
            assert!(idle_resets(&key, be, &x).is_none(), "{s:#x}");
        }
        let udp = FlowKey4 { proto: 17, ..key };
        assert!(idle_resets(&udp, be, &e).is_none());
    }

    proptest! {
        /// A flow never expires before its timeout, always does after it, and the cause is the
        /// one its state names.
        #[test]
        fn expiry_is_exactly_the_timeout(
            p in prop_oneof![Just(6u8), Just(17u8)],
            s in 0u8..32,
            seen in any::<u32>(),
            age in 0u32..100_000,
            idle in IDLE_TIMEOUT_MIN_S..=IDLE_TIMEOUT_MAX_S,
        ) {
            let t = Timeouts { idle_s: idle, close_s: CLOSE_TIMEOUT_S, syn_s: SYN_TIMEOUT_S };
            let now = seen.wrapping_add(age);
            let (limit, cause) = if p != 6 {
                (idle, Expiry::Idle)
            } else if s & CT_STALE != 0 || is_closed(s) {
                (CLOSE_TIMEOUT_S, Expiry::Closed)
            } else if s & CT_SYN != 0 {
                (SYN_TIMEOUT_S, Expiry::Syn)
            } else {
                (idle, Expiry::Idle)
            };
            let want = (age > limit).then_some(cause);
            prop_assert_eq!(expiry(p, s, seen, now, t), want);
            // A flow that still translates is not removed as closed.
            if p == 6 && translates(s, seen, now, CLOSE_TIMEOUT_S) {
                prop_assert_ne!(expiry(p, s, seen, now, t), Some(Expiry::Closed));
            }
        }

        /// Stale is for ever, closed stays closed, and a reset closes from any state (a refused
        /// reply changes nothing but staleness).
        #[test]
        fn states_only_move_forward(s in 0u8..32, f in any::<u8>(), t in any::<u32>()) {
            let n = after_forward(s, f);
            prop_assert!(!is_closed(s) || is_closed(n));
            prop_assert_eq!(s & CT_STALE, n & CT_STALE);
            let reply = after_reply(s, f);
            let r = match reply { Ok(r) | Err(r) => r };
            prop_assert!(!is_closed(s) || is_closed(r));
            prop_assert!(s & CT_STALE == 0 || !translates(r, t, t, u32::MAX));
            if let Err(r) = reply {
                prop_assert_eq!(r, s | CT_STALE);
            }
            if f & TCP_RST != 0 {
                prop_assert!(is_closed(n));
                prop_assert!(reply.is_err() || is_closed(r));
            }
        }
    }
}
