//! Floating IP (direct server return): a service's mode, and the outer headers its forward
//! packets get. Both sides apply these rules: the fast path builds the headers, the backends'
//! decapsulation program (`lb-ebpf/src/decap.rs`) strips them, and host tests check both
//! against full computations.
//!
//! The inner packet is never touched: it keeps VIP:port as its destination, so its own
//! checksums stay valid. The backend holds the VIP itself and answers the client directly.

use crate::csum::fold;

/// A service's data-path mode (`ServiceInfo::flags`, bits [`crate::maps::SVC_FIP_SHIFT`]..).
pub mod mode {
    /// Destination NAT to the backend's address and port (the default).
    pub const DNAT: u32 = 0;
    /// Floating IP, L2: only the MACs are rewritten, to a backend on a connected link (IPVS's
    /// "direct routing").
    pub const L2: u32 = 1;
    /// Floating IP, IPIP: IPv4-in-IPv4 (protocol 4) or IPv6-in-IPv6 (next header 41).
    pub const IPIP: u32 = 2;
    /// Floating IP, GUE variant 1 (RFC draft-ietf-intarea-gue): the inner IP packet straight
    /// after an outer UDP header, whose destination port is the LB's GUE port.
    pub const GUE: u32 = 3;
}

/// The mode's name, as the CLI and the metrics spell it.
#[must_use]
pub const fn mode_name(m: u32) -> &'static str {
    match m {
        mode::L2 => "l2",
        mode::IPIP => "ipip",
        mode::GUE => "gue",
        _ => "dnat",
    }
}

/// The outer header's TTL / hop limit (Katran's, and Linux's default).
pub const OUTER_TTL: u8 = 64;
/// The GUE destination port when the config names none (Katran's default).
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// IP protocol numbers of the outer headers.
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6: u8 = 41;
/// IPv4 DF, as the outer header always sets it: an encapsulated packet is never fragmented on
/// the way (the LB answers one that would not fit with "fragmentation needed" instead).
pub const IPV4_DF: u16 = 0x4000;

/// Bytes an encapsulated packet grows by (0 for DNAT and `l2`).
#[must_use]
pub const fn overhead(m: u32, v6: bool) -> usize {
    let ip = if v6 { 40 } else { 20 };
    match m {
        mode::IPIP => ip,
        mode::GUE => ip + 8,
        _ => 0,
    }
}

/// `LB_ENCAP` value (one entry, written by the agent): the outer source addresses and the GUE
/// port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct EncapConfig {
    /// Outer source of IPv4 encapsulation: an LB address the backends can reach.
    pub src4: [u8; 4],
    /// Outer source of IPv6 encapsulation.
    pub src6: [u8; 16],
    /// GUE destination port, network order.
    pub gue_port: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<EncapConfig>() == 24);
crate::impl_user_pod!(EncapConfig);

/// The GUE outer source port of a flow whose flow hash is `hash`: one of 16 384 ports in the
/// dynamic range (49152..=65535, as RFC 7510 recommends for entropy ports), so a backend NIC's
/// RSS, which hashes the outer ports, spreads flows over its queues as a plain flow would be
/// spread. Both halves of the hash count.
#[inline(always)]
#[must_use]
pub const fn gue_sport(hash: u32) -> u16 {
    let low = ((hash ^ (hash >> 16)) & 0x3fff) as u16;
    0xc000 | low
}

/// The outer IPv6 flow label of a flow whose flow hash is `hash` (RFC 6438: a tunnel's flow
/// label from the inner flow, so that ECMP and RSS on the way see the flows apart).
#[inline(always)]
#[must_use]
pub const fn flow_label(hash: u32) -> u32 {
    (hash ^ (hash >> 20)) & 0xf_ffff
}

/// The outer IPv4 header's checksum: version 4, IHL 5, `tos`, total length `tot_len`, ID 0,
/// DF, TTL [`OUTER_TTL`], protocol `proto`, `src` → `dst`.
#[inline(always)]
#[must_use]
pub const fn outer4_check(src: [u8; 4], dst: [u8; 4], tos: u8, tot_len: u16, proto: u8) -> u16 {
    const fn w(a: u8, b: u8) -> u32 {
        ((a as u32) << 8) | b as u32
    }
    let sum = w(0x45, tos)
        + tot_len as u32
        + IPV4_DF as u32
        + w(OUTER_TTL, proto)
        + w(src[0], src[1])
        + w(src[2], src[3])
        + w(dst[0], dst[1])
        + w(dst[2], dst[3]);
    !fold(sum)
}

/// The first word of an outer IPv6 header: version 6, traffic class `tclass`, flow label
/// `label` (20 bits).
#[inline(always)]
#[must_use]
pub const fn outer6_word(tclass: u8, label: u32) -> [u8; 4] {
    (0x6000_0000 | ((tclass as u32) << 20) | (label & 0xf_ffff)).to_be_bytes()
}

/// One's-complement sum (unfolded) of an IPv6 pseudo-header (RFC 8200 8.1): `src`, `dst`,
/// upper-layer length `len`, next header `proto`.
#[inline(always)]
#[must_use]
pub const fn pseudo6_sum(src: &[u8; 16], dst: &[u8; 16], len: u32, proto: u8) -> u32 {
    let mut sum = (len >> 16) + (len & 0xffff) + proto as u32;
    let mut i = 0;
    while i < 16 {
        sum += ((src[i] as u32) << 8) | src[i + 1] as u32;
        sum += ((dst[i] as u32) << 8) | dst[i + 1] as u32;
        i += 2;
    }
    sum
}

/// The outer UDP checksum of a GUE packet over IPv6, without reading the inner payload (the
/// "local checksum offload" of Linux's `Documentation/networking/checksum-offloads.rst`):
/// a valid inner TCP, UDP or ICMPv6 checksum makes the inner segment sum to the complement
/// of its pseudo-header, so the whole inner packet sums to its IP headers' sum plus that.
///
/// `outer` is the outer pseudo-header's sum ([`pseudo6_sum`] with the UDP length and 17),
/// `udp` the outer UDP header's words with its checksum zero, `inner_hdrs` the sum of the
/// inner IPv6 header and its extension headers as they are on the wire, and `inner_pseudo`
/// the inner segment's pseudo-header sum. An inner packet whose own checksum is wrong gets
/// an outer one wrong by as much, so nothing on the way takes a bad packet for a good one.
/// Never 0 (RFC 8200 makes the IPv6 UDP checksum mandatory): a computed 0 is sent as 0xffff.
#[inline(always)]
#[must_use]
pub const fn gue6_check(outer: u32, udp: u32, inner_hdrs: u32, inner_pseudo: u32) -> u16 {
    let segment = !fold(inner_pseudo) as u32;
    let c = !fold(fold(outer) as u32 + fold(udp) as u32 + fold(inner_hdrs) as u32 + segment);
    if c == 0 { 0xffff } else { c }
}

/// "Too big": a floating-IP packet (IPv4 with DF, or IPv6) that would exceed its egress
/// link's MTU once encapsulated is answered by the fast path, as a router on the way would:
/// ICMP "fragmentation needed" (type 3, code 4, RFC 1191) or ICMPv6 "packet too big" (type
/// 2, RFC 4443), from the VIP to the client, quoting the packet's start and giving the link's
/// MTU minus the outer headers, so that the client's path MTU discovery settles on a size
/// that fits the tunnel.
pub mod too_big {
    use super::{overhead, pseudo6_sum};
    use crate::csum::fold;

    /// Bytes of the offending packet an ICMP answer quotes, at most (RFC 792 asks for the IP
    /// header and 8 bytes; 128 carry a TCP header with options).
    pub const QUOTE4: usize = 128;
    /// Bytes an ICMPv6 answer quotes, at most (RFC 4443 asks for as much as fits in 1280;
    /// 256 carry the TCP header behind a chain of extension headers, and keep the
    /// checksum's bounded loop short).
    pub const QUOTE6: usize = 256;
    /// The headers an answer puts before the quote: IPv4 + ICMP, IPv6 + ICMPv6.
    pub const HEADERS4: usize = 28;
    pub const HEADERS6: usize = 48;
    /// ICMP type 3 (destination unreachable), code 4 (fragmentation needed and DF set).
    pub const ICMP4_TYPE_CODE: u16 = 0x0304;
    /// ICMPv6 type 2 (packet too big), code 0.
    pub const ICMP6_TYPE_CODE: u16 = 0x0200;
    /// ICMPv6's next-header number.
    pub const PROTO_ICMP6: u8 = crate::flow::proto::ICMPV6;

    /// Whether a packet of `len` bytes (its IP header on) fits a link of MTU `link_mtu`
    /// once it carries mode `m`'s outer headers. An MTU of 0 (not known) fits anything.
    #[inline(always)]
    #[must_use]
    pub const fn fits(len: u32, m: u32, v6: bool, link_mtu: u32) -> bool {
        link_mtu == 0 || len + overhead(m, v6) as u32 <= link_mtu
    }

    /// The MTU an answer gives: the link's less the outer headers (what the inner packet may
    /// be), at least 0; for IPv4 at most 65 535, the field's width.
    #[inline(always)]
    #[must_use]
    pub const fn inner_mtu(link_mtu: u32, m: u32, v6: bool) -> u32 {
        let m = link_mtu.saturating_sub(overhead(m, v6) as u32);
        if !v6 && m > 0xffff { 0xffff } else { m }
    }

    /// How many bytes of a packet of `len` bytes (its IP header on) an answer quotes.
    #[inline(always)]
    #[must_use]
    pub const fn quote_len(len: usize, v6: bool) -> usize {
        let max = if v6 { QUOTE6 } else { QUOTE4 };
        if len < max { len } else { max }
    }

    /// The ICMP checksum of a "fragmentation needed" giving `mtu`, whose quoted bytes sum
    /// (unfolded, [`crate::csum::sum_words`]) to `quote`.
    #[inline(always)]
    #[must_use]
    pub const fn icmp4_check(mtu: u16, quote: u32) -> u16 {
        !fold(ICMP4_TYPE_CODE as u32 + mtu as u32 + fold(quote) as u32)
    }

    /// The ICMPv6 checksum of a "packet too big" from `src` to `dst` giving `mtu`, quoting
    /// `quote_len` bytes that sum (unfolded) to `quote`.
    #[inline(always)]
    #[must_use]
    pub const fn icmp6_check(
        src: &[u8; 16],
        dst: &[u8; 16],
        mtu: u32,
        quote_len: u32,
        quote: u32,
    ) -> u16 {
        let pseudo = pseudo6_sum(src, dst, HEADERS6 as u32 - 40 + quote_len, PROTO_ICMP6);
        let hdr = ICMP6_TYPE_CODE as u32 + (mtu >> 16) + (mtu & 0xffff);
        !fold(fold(pseudo) as u32 + hdr + fold(quote) as u32)
    }
}

/// The backends' decapsulation program (`lb-ebpf/src/decap.rs`): its maps, its counters and
/// what it does with a frame.
pub mod decap {
    /// Map names, exactly as the `#[map]` statics of the decapsulation object.
    pub const VIPS: &str = "LB_DECAP_VIPS";
    pub const STATS: &str = "LB_DECAP_STATS";
    pub const CFG: &str = "LB_DECAP_CFG";
    /// The program's name.
    pub const PROGRAM: &str = "lb_decap";
    /// Most VIPs one backend holds.
    pub const MAX_VIPS: u32 = 1024;

    /// What the program did with a frame; each is counted (`LB_DECAP_STATS[n]`, per CPU).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(u32)]
    pub enum Outcome {
        /// An IPIP or GUE packet to one of the backend's VIPs: the outer headers stripped, the
        /// inner packet passed to the stack (`XDP_PASS`).
        Stripped = 0,
        /// Encapsulated, but its inner destination is none of the backend's VIPs: dropped.
        NotVip = 1,
        /// Encapsulated, but an outer or inner header is truncated, the inner version is
        /// neither 4 nor 6, or the outer IPv4 packet is a fragment: dropped.
        Malformed = 2,
        /// Not IPIP, nor UDP to the GUE port: passed untouched.
        Passed = 3,
    }

    /// Every outcome, in number order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Stripped,
        Outcome::NotVip,
        Outcome::Malformed,
        Outcome::Passed,
    ];

    impl Outcome {
        /// Stable snake-case name, as `lb backend status` and the tests spell it.
        #[must_use]
        pub const fn name(self) -> &'static str {
            match self {
                Self::Stripped => "stripped",
                Self::NotVip => "refused_not_vip",
                Self::Malformed => "refused_malformed",
                Self::Passed => "passed",
            }
        }
    }

    /// `LB_DECAP_CFG[0]`: the GUE port (network order) the program strips.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    pub struct DecapConfig {
        pub gue_port: [u8; 2],
        pub _pad: [u8; 2],
    }
    crate::impl_user_pod!(DecapConfig);
}

/// Health probes through the tunnel (`--probe-via tunnel`): the agent's probe sockets carry a
/// mark naming the (service, backend) pair's backend id and the service's mode; a policy rule
/// sends marked packets to a table whose only route leaves by the probe device
/// ([`probe::DEVICE`]), where the tc program [`probe::PROGRAM`] (in the XDP object, so that it
/// reads the same backend entries and `LB_ENCAP`) encapsulates each to its backend as the fast
/// path would a client's packet, and hands it to the backend's link.
pub mod probe {
    /// The mark's tag (bits 18..32): the policy rule matches it under [`MARK_MASK`].
    pub const MARK_TAG: u32 = 0x4c40_0000;
    pub const MARK_MASK: u32 = 0xfffc_0000;
    /// The routing table the rule points to, and the rule's priority (before `main`'s 32766).
    pub const TABLE: u32 = 0x4c42;
    pub const RULE_PRIORITY: u32 = 0x4c42;
    /// The device the table's routes leave by: a dummy (or ifb) device, which answers no ARP,
    /// so the kernel hands the packet to its tc egress hook without resolving a neighbour.
    pub const DEVICE: &str = "lbprobe0";
    /// Its MTU, so that the LB's probe segments fit every tunnel on a 1500-byte link (1280 +
    /// the largest overhead, 48, is well under 1500) and IPv6 has its minimum.
    pub const DEVICE_MTU: u32 = 1280;
    /// The tc classifier's name in the XDP object.
    pub const PROGRAM: &str = "lb_probe_encap";
    /// Its counters (`Outcome as u32`, per CPU).
    pub const STATS: &str = "LB_PROBE_STATS";

    /// The mark of a probe to backend `id` (an `LB_BACKENDS4`/`6` index, at most 16 bits) of a
    /// service in floating-IP mode `mode` (`super::mode`, 2 bits): tag, mode in bits 16..18,
    /// id in bits 0..16. `None` for an id that does not fit or a mode without a tunnel.
    #[must_use]
    pub const fn mark(mode: u32, id: u32) -> Option<u32> {
        if id == 0 || id > 0xffff || mode == super::mode::DNAT || mode > super::mode::GUE {
            return None;
        }
        Some(MARK_TAG | (mode << 16) | id)
    }

    /// The (mode, backend id) a mark names, if it is a probe's.
    #[must_use]
    pub const fn unmark(mark: u32) -> Option<(u32, u32)> {
        if mark & MARK_MASK != MARK_TAG {
            return None;
        }
        let (mode, id) = ((mark >> 16) & 3, mark & 0xffff);
        if mode == super::mode::DNAT || id == 0 {
            return None;
        }
        Some((mode, id))
    }

    /// What the tc program did with a packet leaving the probe device; each is counted.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(u32)]
    pub enum Outcome {
        /// Encapsulated (or, for `l2`, readdressed) and handed to the backend's link.
        Sent = 0,
        /// Not a probe's mark, or its backend entry is empty: dropped.
        NoBackend = 1,
        /// No route to the backend, or the kernel refused the redirect: dropped.
        NoRoute = 2,
        /// The packet is not IPv4 or IPv6 of the backend's family, or growing it failed:
        /// dropped.
        Malformed = 3,
    }

    /// Every outcome, in number order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Sent,
        Outcome::NoBackend,
        Outcome::NoRoute,
        Outcome::Malformed,
    ];

    impl Outcome {
        /// Stable snake-case name, as the metrics spell it.
        #[must_use]
        pub const fn name(self) -> &'static str {
            match self {
                Self::Sent => "sent",
                Self::NoBackend => "no_backend",
                Self::NoRoute => "no_route",
                Self::Malformed => "malformed",
            }
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::csum::{l4_v6, sum_words};

    proptest! {
        /// Every probe mark names its pair back, carries the tag the policy rule matches, and
        /// nothing else is taken for one.
        #[test]
        fn probe_marks_round_trip(mode in 1u32..=3, id in 1u32..=0xffff, other: u32) {
            let m = probe::mark(mode, id).unwrap();
            prop_assert_eq!(m & probe::MARK_MASK, probe::MARK_TAG);
            prop_assert_eq!(probe::unmark(m), Some((mode, id)));
            if other & probe::MARK_MASK != probe::MARK_TAG {
                prop_assert_eq!(probe::unmark(other), None);
            }
        }
    }

    #[test]
    fn probe_marks_refuse_what_has_no_tunnel() {
        assert_eq!(probe::mark(mode::DNAT, 7), None);
        assert_eq!(probe::mark(mode::GUE, 0), None);
        assert_eq!(probe::mark(mode::GUE, 0x1_0000), None);
        assert_eq!(probe::unmark(probe::MARK_TAG | 7), None, "mode 0 is DNAT");
        assert_eq!(
            probe::unmark(probe::MARK_TAG | (2 << 16)),
            None,
            "id 0 is no backend"
        );
        // The tag fits the kernel's 32-bit mark and leaves the low 18 bits to the pair.
        assert_eq!(probe::MARK_TAG & !probe::MARK_MASK, 0);
        assert_eq!(!probe::MARK_MASK, 0x3_ffff);
    }

    #[test]
    fn overheads_are_the_outer_headers() {
        assert_eq!(overhead(mode::DNAT, false), 0);
        assert_eq!(overhead(mode::L2, true), 0);
        assert_eq!(overhead(mode::IPIP, false), 20);
        assert_eq!(overhead(mode::IPIP, true), 40);
        assert_eq!(overhead(mode::GUE, false), 28);
        assert_eq!(overhead(mode::GUE, true), 48);
    }

    #[test]
    fn too_big_sizes() {
        use too_big::*;
        assert!(fits(1472, mode::GUE, false, 1500) && !fits(1473, mode::GUE, false, 1500));
        assert!(fits(1460, mode::IPIP, true, 1500) && !fits(1461, mode::IPIP, true, 1500));
        assert!(
            fits(9000, mode::GUE, true, 0),
            "an unknown MTU fits anything"
        );
        assert_eq!(inner_mtu(1500, mode::GUE, false), 1472);
        assert_eq!(inner_mtu(1500, mode::GUE, true), 1452);
        assert_eq!(inner_mtu(20, mode::GUE, true), 0);
        assert_eq!(inner_mtu(70_000, mode::IPIP, false), 0xffff);
        assert_eq!(quote_len(1500, false), QUOTE4);
        assert_eq!(quote_len(100, true), 100);
    }

    proptest! {
        /// The outer IPv4 checksum is the full computation over the header it describes.
        #[test]
        fn outer4_check_is_the_header_checksum(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(),
            tos in any::<u8>(), len in 20u16.., proto in prop_oneof![Just(4u8), Just(17u8)]) {
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[1] = tos;
            h[2..4].copy_from_slice(&len.to_be_bytes());
            h[6] = 0x40;
            h[8] = OUTER_TTL;
            h[9] = proto;
            h[12..16].copy_from_slice(&src);
            h[16..20].copy_from_slice(&dst);
            prop_assert_eq!(outer4_check(src, dst, tos, len, proto), crate::csum::ipv4_header(&h));
        }

        /// GUE sources stay in the dynamic range, and flow labels in 20 bits.
        #[test]
        fn entropy_fields_stay_in_their_ranges(h in any::<u32>()) {
            prop_assert!(gue_sport(h) >= 49_152);
            prop_assert!(flow_label(h) < 1 << 20);
            let w = outer6_word(0xff, flow_label(h));
            prop_assert_eq!(w[0], 0x6f);
        }

        /// The outer GUE checksum computed without the payload is the full computation over
        /// the whole outer UDP datagram, for any inner segment with a valid checksum (TCP,
        /// UDP, ICMPv6, with or without an extension header before it).
        #[test]
        fn gue6_check_is_the_full_udp_checksum(
            osrc in any::<[u8; 16]>(), odst in any::<[u8; 16]>(),
            isrc in any::<[u8; 16]>(), idst in any::<[u8; 16]>(),
            proto in prop_oneof![Just(6u8), Just(17u8), Just(58u8)],
            tclass in any::<u8>(), label in 0u32..1 << 20, hop in any::<u8>(),
            ext in proptest::option::of(proptest::collection::vec(any::<u8>(), 6..=6)),
            mut seg in proptest::collection::vec(any::<u8>(), 8..200),
            sport in any::<u16>(), dport in any::<u16>(),
        ) {
            // The inner segment with its own valid checksum (at 6 for UDP, 16 for TCP, 2 for
            // ICMPv6; TCP segments get at least 20 bytes).
            if proto == 6 { seg.resize(seg.len().max(20), 0); }
            let at = match proto { 6 => 16, 17 => 6, _ => 2 };
            seg[at] = 0;
            seg[at + 1] = 0;
            let c = l4_v6(isrc, idst, proto, &seg);
            seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
            // The inner IPv6 header (and a destination-options header).
            let mut inner = Vec::new();
            inner.extend_from_slice(&outer6_word(tclass, label));
            let ext_len = ext.as_ref().map_or(0, |_| 8);
            inner.extend_from_slice(&u16::try_from(seg.len() + ext_len).unwrap().to_be_bytes());
            inner.push(if ext.is_some() { 60 } else { proto });
            inner.push(hop);
            inner.extend_from_slice(&isrc);
            inner.extend_from_slice(&idst);
            if let Some(e) = &ext {
                inner.push(proto);
                inner.push(0);
                inner.extend_from_slice(e);
            }
            let hdrs = sum_words(&inner, 0);
            inner.extend_from_slice(&seg);
            let udp_len = u16::try_from(8 + inner.len()).unwrap();
            let mut dgram = Vec::new();
            dgram.extend_from_slice(&sport.to_be_bytes());
            dgram.extend_from_slice(&dport.to_be_bytes());
            dgram.extend_from_slice(&udp_len.to_be_bytes());
            dgram.extend_from_slice(&[0, 0]);
            let udp = sum_words(&dgram, 0);
            dgram.extend_from_slice(&inner);
            let want = l4_v6(osrc, odst, 17, &dgram);
            let seg_len = u32::try_from(seg.len()).unwrap();
            let got = gue6_check(
                pseudo6_sum(&osrc, &odst, u32::from(udp_len), 17),
                udp,
                hdrs,
                pseudo6_sum(&isrc, &idst, seg_len, proto),
            );
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        /// The "too big" checksums are the full computations over the ICMP messages they
        /// describe, for any quote (odd lengths included).
        #[test]
        fn too_big_checks_are_full_checksums(quote in proptest::collection::vec(any::<u8>(), 0..300),
            mtu in any::<u32>(), src in any::<[u8; 16]>(), dst in any::<[u8; 16]>()) {
            use too_big::*;
            let q = sum_words(&quote, 0);
            let mut m4 = vec![3u8, 4, 0, 0, 0, 0];
            m4.extend_from_slice(&(mtu as u16).to_be_bytes());
            m4.extend_from_slice(&quote);
            prop_assert_eq!(icmp4_check(mtu as u16, q), !fold(sum_words(&m4, 0)));
            let mut m6 = vec![2u8, 0, 0, 0];
            m6.extend_from_slice(&mtu.to_be_bytes());
            m6.extend_from_slice(&quote);
            #[expect(clippy::cast_possible_truncation, reason = "under 300 bytes")]
            let len = quote.len() as u32;
            prop_assert_eq!(icmp6_check(&src, &dst, mtu, len, q), l4_v6(src, dst, 58, &m6));
        }
    }
}
