//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Checksums and the 16-bit words they cover are handled as host-order `u16` values of the
//! big-endian wire bytes (`u16::from_be_bytes`). One's-complement arithmetic is byte-order
//! independent, but one convention everywhere keeps the code obvious. The fast path uses the
//! incremental functions; the full ones exist so host tests can check the incremental ones.

/// Folds a 32-bit one's-complement accumulator into 16 bits (not inverted).
#[inline(always)]
#[must_use]
pub const fn fold(mut sum: u32) -> u16 {
    // verifier: two folds always suffice for a sum of at most 2^16 words; no loop.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word of the covered data changes from `old`
/// to `new`: `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
#[must_use]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// [`update16`] for a checksum whose covered data can be all zeros: an ICMP echo message with
/// identifier, sequence number and payload zero (no pseudo-header). Eqn. 3 then gives +0
/// (`0x0000`), which fails verification, where a computation from scratch gives `0xffff`;
/// `0xffff` verifies for any data that sums to zero, so a computed `0x0000` is sent as that.
/// (The kernel differential fuzz target found this on an echo reply.)
#[inline(always)]
#[must_use]
pub const fn update16_nonzero(check: u16, old: u16, new: u16) -> u16 {
    match update16(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// The checksum after a 32-bit field (an IPv4 address, or two adjacent ports) changes.
#[inline(always)]
#[must_use]
pub const fn update32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let sum = (!check) as u32
        + (!u16::from_be_bytes([old[0], old[1]])) as u32
        + (!u16::from_be_bytes([old[2], old[3]])) as u32
        + u16::from_be_bytes([new[0], new[1]]) as u32
        + u16::from_be_bytes([new[2], new[3]]) as u32;
    !fold(sum)
}

/// The checksum after a 128-bit field (an IPv6 address) changes: four 32-bit updates, which
/// compose (RFC 1624).
#[inline(always)]
#[must_use]
pub fn update128(check: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
    let (o, n): ([[u8; 4]; 4], [[u8; 4]; 4]) = (bytemuck::cast(old), bytemuck::cast(new));
    let mut c = check;
    let mut i = 0;
    // verifier: a constant trip count, unrolled.
    while i < 4 {
        c = update32(c, o[i], n[i]);
        i += 1;
    }
    c
}

/// [`update128`] for an IPv6 UDP checksum: never zero on the wire (RFC 8200 makes it
/// mandatory; the parser refuses a zero one), so a computed zero is sent as `0xffff`.
#[inline(always)]
#[must_use]
pub fn udp_update128(check: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
    match update128(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// A UDP checksum update that keeps RFC 768's rules: a zero checksum means "none" and stays
/// zero, and a computed zero is sent as `0xffff`.
#[inline(always)]
#[must_use]
pub const fn udp_update32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    if check == 0 {
        return 0;
    }
    match update32(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// [`udp_update32`] for a 16-bit field (a port).
#[inline(always)]
#[must_use]
pub const fn udp_update16(check: u16, old: u16, new: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    match update16(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

/// One's-complement sum of `data` as big-endian 16-bit words (odd length padded with zero).
#[must_use]
pub fn sum_words(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// The IPv4 header checksum of `hdr` computed from scratch (its checksum field must be zero).
#[must_use]
pub fn ipv4_header(hdr: &[u8]) -> u16 {
    !fold(sum_words(hdr, 0))
}

/// The TCP/UDP/ICMPv6 checksum of an IPv6 `segment` computed from scratch, pseudo-header
/// included (RFC 8200 8.1; the segment's own checksum field must be zero). For UDP a result of
/// zero is returned as `0xffff`.
#[must_use]
pub fn l4_v6(src: [u8; 16], dst: [u8; 16], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 40];
    pseudo[..16].copy_from_slice(&src);
    pseudo[16..32].copy_from_slice(&dst);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "segments are shorter than 4 GiB"
    )]
    pseudo[32..36].copy_from_slice(&(segment.len() as u32).to_be_bytes());
    pseudo[39] = proto;
    let c = !fold(sum_words(segment, sum_words(&pseudo, 0)));
    if c == 0 && proto == crate::flow::proto::UDP {
        0xffff
    } else {
        c
    }
}

/// The TCP/UDP checksum of an IPv4 `segment` computed from scratch, pseudo-header included (the
/// segment's own checksum field must be zero). For UDP a result of zero is returned as `0xffff`.
#[must_use]
pub fn l4_v4(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&dst);
    pseudo[9] = proto;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "segments are shorter than 64 KiB"
    )]
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    let c = !fold(sum_words(segment, sum_words(&pseudo, 0)));
    if c == 0 && proto == crate::flow::proto::UDP {
        0xffff
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::flow::proto;

    /// Writes the full checksum of an IPv4 TCP/UDP segment into it.
    fn seal(src: [u8; 4], dst: [u8; 4], p: u8, seg: &mut [u8]) {
        let at = if p == proto::TCP { 16 } else { 6 };
        seg[at..at + 2].copy_from_slice(&[0, 0]);
        let c = l4_v4(src, dst, p, seg);
        seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// An ICMP echo request with identifier, sequence number and payload zero: its reply's
    /// data is all zeros, whose checksum is `0xffff`; plain eqn. 3 gives `0x0000`, which does
    /// not verify.
    #[test]
    fn an_all_zero_echo_reply_gets_a_checksum_that_verifies() {
        let request = [0x08, 0x00, 0xf7, 0xff, 0, 0, 0, 0];
        assert_eq!(ipv4_header(&request), 0, "the request verifies");
        assert_eq!(update16(0xf7ff, 0x0800, 0), 0, "eqn. 3's +0");
        let c = update16_nonzero(0xf7ff, 0x0800, 0);
        let mut reply = [0u8; 8];
        reply[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(ipv4_header(&reply), 0, "the reply verifies");
    }

    proptest! {
        /// A message with a valid checksum keeps one when a word changes, zeros included.
        #[test]
        fn update16_nonzero_keeps_a_valid_checksum_valid(
            mut words in proptest::collection::vec(prop_oneof![Just(0u16), any::<u16>()], 2..12),
            at in any::<prop::sample::Index>(),
            new in prop_oneof![Just(0u16), any::<u16>()],
        ) {
            // The checksum is word 1, as in ICMP.
            words[1] = 0;
            let bytes = |w: &[u16]| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            words[1] = ipv4_header(&bytes(&words));
            let i = at.index(words.len());
            prop_assume!(i != 1);
            let c = update16_nonzero(words[1], words[i], new);
            words[i] = new;
            words[1] = c;
            prop_assert_eq!(ipv4_header(&bytes(&words)), 0);
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(
            fold(sum_words(
                &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7],
                0
            )),
            0xddf2
        );
    }

    #[test]
    fn known_ipv4_header() {
        // A real header (from Wikipedia's IPv4 header checksum example): checksum b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(
            fold(sum_words(&h, 0)),
            0xffff,
            "a valid header sums to all ones"
        );
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        assert_eq!(udp_update32(0, [1, 2, 3, 4], [5, 6, 7, 8]), 0);
        assert_eq!(udp_update16(0, 80, 8080), 0);
    }

    proptest! {
        /// DNAT of address and port, patched incrementally, equals a full recomputation.
        #[test]
        fn incremental_equals_full(
            src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), new_dst in any::<[u8; 4]>(),
            new_port in any::<u16>(), is_tcp in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            sport in any::<u16>(), dport in any::<u16>(),
        ) {
            let p = if is_tcp { proto::TCP } else { proto::UDP };
            let hdr_len = if is_tcp { 20 } else { 8 };
            let mut seg = vec![0u8; hdr_len];
            seg[0..2].copy_from_slice(&sport.to_be_bytes());
            seg[2..4].copy_from_slice(&dport.to_be_bytes());
            if is_tcp { seg[12] = 0x50; } else {
                #[expect(clippy::cast_possible_truncation, reason = "short test payloads")]
                seg[4..6].copy_from_slice(&((hdr_len + payload.len()) as u16).to_be_bytes());
            }
            seg.extend_from_slice(&payload);
            seal(src, dst, p, &mut seg);

            let at = if is_tcp { 16 } else { 6 };
            let old = u16::from_be_bytes([seg[at], seg[at + 1]]);
            // The address lives in the pseudo-header, the port in the segment: both are patched.
            let c2 = if is_tcp {
                update16(update32(old, dst, new_dst), dport, new_port)
            } else {
                udp_update16(udp_update32(old, dst, new_dst), dport, new_port)
            };
            seg[2..4].copy_from_slice(&new_port.to_be_bytes());
            let mut want = seg.clone();
            seal(src, new_dst, p, &mut want);
            let want = u16::from_be_bytes([want[at], want[at + 1]]);
            // 0x0000 and 0xffff are the same one's-complement value; TCP may carry either.
            let norm = |c: u16| if c == 0xffff { 0 } else { c };
            prop_assert_eq!(norm(c2), norm(want));
            if !is_tcp { prop_assert_ne!(c2, 0, "UDP must never produce a zero checksum"); }
        }

        /// IPv6 DNAT (or reverse NAT) of a 16-byte address and a port, patched incrementally,
        /// equals a full recomputation over the IPv6 pseudo-header; UDP never gets a zero.
        #[test]
        fn incremental_equals_full_v6(
            src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), new_dst in any::<[u8; 16]>(),
            new_port in any::<u16>(), is_tcp in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64), dport in any::<u16>(),
        ) {
            let p = if is_tcp { proto::TCP } else { proto::UDP };
            let hdr_len = if is_tcp { 20 } else { 8 };
            let mut seg = vec![0u8; hdr_len];
            seg[2..4].copy_from_slice(&dport.to_be_bytes());
            seg.extend_from_slice(&payload);
            let c = l4_v6(src, dst, p, &seg);
            let c2 = if is_tcp {
                update16(update128(c, dst, new_dst), dport, new_port)
            } else {
                udp_update16(udp_update128(c, dst, new_dst), dport, new_port)
            };
            seg[2..4].copy_from_slice(&new_port.to_be_bytes());
            let want = l4_v6(src, new_dst, p, &seg);
            let norm = |c: u16| if c == 0xffff { 0 } else { c };
            prop_assert_eq!(norm(c2), norm(want));
            if !is_tcp { prop_assert_ne!(c2, 0, "UDP must never produce a zero checksum"); }
        }

        /// TTL decrement patched into the IPv4 header checksum equals a full recomputation.
        #[test]
        fn ttl_decrement(mut hdr in any::<[u8; 20]>(), ttl in 2u8..=255) {
            hdr[0] = 0x45;
            hdr[8] = ttl;
            hdr[10] = 0; hdr[11] = 0;
            let c = ipv4_header(&hdr);
            let old = u16::from_be_bytes([hdr[8], hdr[9]]);
            hdr[8] = ttl - 1;
            let new = u16::from_be_bytes([hdr[8], hdr[9]]);
            let inc = update16(c, old, new);
            let full = ipv4_header(&hdr);
            let norm = |c: u16| if c == 0xffff { 0 } else { c };
            prop_assert_eq!(norm(inc), norm(full));
        }
    }
}
