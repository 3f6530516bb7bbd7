//! Stage 1 for IPv6: the fixed header, a bounded walk over extension headers, then TCP/UDP
//! (or the ICMPv6 type), every read bounds-checked.
//!
//! As for IPv4, parsing never decides whether a packet is ours: it reports what is wrong with
//! it ([`Packet6::problem`]) and the caller decides drop (to a VIP) or pass.
//! * At most [`IPV6_MAX_EXT`] hop-by-hop, destination-options and routing headers are walked;
//!   a longer chain, or one cut short by the frame, is `drop_ext_headers`.
//! * A routing header with segments left is `drop_routing_header`: the VIP is not the
//!   packet's final destination.
//! * A fragment header is `drop_fragment`, first fragment or not (no reassembly, as for IPv4).
//! * A UDP checksum of zero is malformed (RFC 8200 8.1: mandatory over IPv6).

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    flow::{FlowKey6, proto},
    hdr::{EthHdr, IPV6_MAX_EXT, Ipv6ExtHdr, Ipv6Hdr, TcpHdr, UdpHdr, ext},
    verdict::{DropReason, PassReason},
};

use crate::parse::{L2, L4, ptr_at};

/// What the parser found in a frame that carries a readable IPv6 header.
pub struct Packet6 {
    pub ip: *mut Ipv6Hdr,
    pub eth: *mut EthHdr,
    /// The 5-tuple, when `l4` is set (all zero otherwise).
    flow: FlowKey6,
    l4: L4,
    /// Why this packet cannot be balanced, if it cannot (see the module doc).
    pub problem: Option<DropReason>,
    /// The TCP flags byte (0 for UDP); a `u64`, so the struct has no padding (see
    /// `parse::L4`).
    pub tcp_flags: u64,
    /// The ICMPv6 header's first word (type, code, checksum), for an ICMPv6 packet that has
    /// one in the frame; null otherwise.
    pub icmp: *mut [u8; 4],
    /// Frame length, for byte counters.
    pub len: u64,
}

impl Packet6 {
    /// The 5-tuple and L4 header, when the headers are fine enough to balance.
    #[inline(always)]
    pub fn flow(&self) -> Option<(&FlowKey6, L4)> {
        self.l4.is_some().then_some((&self.flow, self.l4))
    }

    /// The TCP flags (0 for UDP).
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        #[expect(clippy::cast_possible_truncation, reason = "holds a flags byte")]
        let f = self.tcp_flags as u8;
        f
    }

    /// The ICMPv6 type and code, for an ICMPv6 packet.
    #[inline(always)]
    pub fn icmp(&self) -> Option<(u8, u8)> {
        // SAFETY: a non-null `icmp` was bounds-checked by the parser.
        (!self.icmp.is_null()).then(|| unsafe { ((*self.icmp)[0], (*self.icmp)[1]) })
    }

    /// A TCP packet's sequence numbers as TCP reset on idle records them, as
    /// `Packet::tcp_numbers`: the sequence number the backend expects next and the
    /// acknowledgement, host order. The payload is what follows the TCP header up to the end
    /// of the IPv6 payload (the parser checked that the extension headers and the TCP header
    /// lie within it). Only for a packet whose `flow()` is TCP; (0, 0) otherwise.
    #[inline(always)]
    pub fn tcp_numbers(&self) -> (u32, u32) {
        let Some(crate::parse::Hdr::Tcp(tp)) = self.l4.hdr() else {
            return (0, 0);
        };
        // The TCP header's offset from the IPv6 header: two packet pointers of one frame.
        #[expect(clippy::cast_possible_truncation, reason = "an offset within a frame")]
        let off = (tp as usize - self.ip as usize) as u32;
        // SAFETY: the parser bounds-checked both headers.
        let (t, plen) = unsafe { (&*tp, u16::from_be_bytes((*self.ip).payload_len)) };
        let doff = u32::from(t.doff >> 4) * 4;
        let payload = (size_of::<Ipv6Hdr>() as u32 + u32::from(plen))
            .wrapping_sub(off)
            .wrapping_sub(doff);
        (
            lb_common::conn::next_seq(u32::from_be_bytes(t.seq), payload, t.flags),
            u32::from_be_bytes(t.ack),
        )
    }

    /// Whether this is an ICMPv6 neighbour-discovery or router message.
    #[inline(always)]
    pub fn is_ndp(&self) -> bool {
        self.icmp()
            .is_some_and(|(t, _)| lb_common::hdr::icmpv6_is_ndp(t))
    }
}

/// Parses an IPv6 frame whose link layer is `l2` (the caller checked the ethertype:
/// `lb_xdp` tail-calls only IPv6 frames here). `Err` for a frame too short for the fixed
/// header (it cannot be ours).
#[inline(always)]
pub fn packet(ctx: &XdpContext, l2: &L2) -> Result<Packet6, PassReason> {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let off = l2.off;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, off).ok_or(PassReason::Short)?;
    // SAFETY: bounds-checked above; every field is a byte array (alignment 1).
    let iph = unsafe { &*ip };
    let mut pkt = Packet6 {
        ip,
        eth: l2.eth,
        flow: FlowKey6::of([0; 16], [0; 16], [0; 2], [0; 2], 0),
        l4: L4::none(),
        problem: None,
        tcp_flags: 0,
        icmp: core::ptr::null_mut(),
        len,
    };
    let room = ctx.data_end() - ctx.data() - off;
    // The end of the packet's IPv6 payload, as an offset into the frame.
    let end = off + size_of::<Ipv6Hdr>() + usize::from(u16::from_be_bytes(iph.payload_len));
    if iph.vtc_flow[0] >> 4 != 6 || end - off > room {
        pkt.problem = Some(DropReason::Malformed);
        return Ok(pkt);
    }
    let (next, l4_off) = match walk(ctx, iph.next, off + size_of::<Ipv6Hdr>(), end) {
        Ok(at) => at,
        Err(r) => {
            pkt.problem = Some(r);
            return Ok(pkt);
        }
    };
    let l4_len = end - l4_off;
    let (l4, sport, dport) = match next {
        proto::TCP => {
            let Some(tcp) = ptr_at::<TcpHdr>(ctx, l4_off) else {
                pkt.problem = Some(DropReason::Malformed);
                return Ok(pkt);
            };
            // SAFETY: bounds-checked above.
            let t = unsafe { &*tcp };
            let doff = usize::from(t.doff >> 4) * 4;
            if doff < 20 || doff > l4_len {
                pkt.problem = Some(DropReason::Malformed);
                return Ok(pkt);
            }
            pkt.tcp_flags = u64::from(t.flags);
            (L4::tcp(tcp), t.sport, t.dport)
        }
        proto::UDP => {
            let Some(udp) = ptr_at::<UdpHdr>(ctx, l4_off) else {
                pkt.problem = Some(DropReason::Malformed);
                return Ok(pkt);
            };
            // SAFETY: bounds-checked above.
            let u = unsafe { &*udp };
            let ulen = usize::from(u16::from_be_bytes(u.len));
            if ulen < size_of::<UdpHdr>() || ulen > l4_len || u.check == [0; 2] {
                pkt.problem = Some(DropReason::Malformed);
                return Ok(pkt);
            }
            (L4::udp(udp), u.sport, u.dport)
        }
        _ => {
            // The ICMPv6 header's first word (type, code, checksum). verifier: a one-byte
            // read after `ptr_at::<u8>` compiled to `p >= end`, whose right-open range proves
            // no byte readable.
            if next == proto::ICMPV6
                && let Some(t) = ptr_at::<[u8; 4]>(ctx, l4_off)
            {
                pkt.icmp = t;
            }
            pkt.problem = Some(DropReason::Proto);
            return Ok(pkt);
        }
    };
    pkt.flow = FlowKey6::of(iph.src, iph.dst, sport, dport, next);
    pkt.l4 = l4;
    Ok(pkt)
}

/// Walks the extension headers from `off` (the first one's type is `next`) up to the upper-
/// layer header, which must start before `end`: its type and offset, or why the packet cannot
/// be balanced.
#[inline(always)]
fn walk(
    ctx: &XdpContext,
    mut next: u8,
    mut off: usize,
    end: usize,
) -> Result<(u8, usize), DropReason> {
    let mut i = 0;
    // verifier: a constant trip count, unrolled; each step adds at most 2 KiB to `off`, so
    // its range stays known and every `ptr_at` below is a bounded check.
    while i < IPV6_MAX_EXT {
        match next {
            ext::HOP_BY_HOP | ext::DEST_OPTS | ext::ROUTING => {
                let h = ptr_at::<Ipv6ExtHdr>(ctx, off).ok_or(DropReason::ExtHeaders)?;
                // SAFETY: bounds-checked above.
                let h = unsafe { &*h };
                if next == ext::ROUTING && h.b3 != 0 {
                    return Err(DropReason::RoutingHeader);
                }
                next = h.next;
                off += (usize::from(h.len) + 1) * 8;
            }
            ext::FRAGMENT => return Err(DropReason::Fragment),
            _ => break,
        }
        i += 1;
    }
    if matches!(
        next,
        ext::HOP_BY_HOP | ext::DEST_OPTS | ext::ROUTING | ext::FRAGMENT
    ) {
        // The chain goes on past the bound.
        return Err(DropReason::ExtHeaders);
    }
    if off > end {
        return Err(DropReason::ExtHeaders);
    }
    Ok((next, off))
}
