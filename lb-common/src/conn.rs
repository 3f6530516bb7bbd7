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
/// the last ACKs and retransmitted FINs, short enough that a reused port is not captured.
pub const CLOSE_TIMEOUT_S: u32 = 10;

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
/// stale, and open or closed at most `timeout_s` ago (`closed_s`, when it closed; the program's
/// timeout is [`CLOSE_TIMEOUT_S`] unless the agent sets another at load).
#[inline(always)]
#[must_use]
pub const fn translates(s: u8, closed_s: u32, now_s: u32, timeout_s: u32) -> bool {
    s & CT_STALE == 0 && (!is_closed(s) || now_s.wrapping_sub(closed_s) <= timeout_s)
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

    proptest! {
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
