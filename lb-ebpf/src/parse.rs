//! Stage 1, parse: Ethernet (+ one 802.1Q tag) → IPv4 → TCP/UDP, every read bounds-checked
//! (IPv6: `parse6.rs`).
//!
//! Parsing never decides whether a packet is ours: it reports what it found and what is wrong
//! with it ([`Packet::problem`]), and the caller decides drop (to a VIP) or pass (not ours).

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    flow::{FlowKey4, proto},
    hdr::{ETH_P_8021Q, ETH_P_IPV4, EthHdr, IPV4_FRAG_MASK, Ipv4Hdr, TcpHdr, UdpHdr, VlanHdr},
    verdict::{DropReason, PassReason},
};

/// A bounds-checked pointer to a `T` at `off` bytes into the frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// The transport header the fast path rewrites, as [`L4::hdr`] gives it.
#[derive(Clone, Copy)]
pub enum Hdr {
    Tcp(*mut TcpHdr),
    Udp(*mut UdpHdr),
}

/// The transport header, stored: a kind and a pointer, both written on every path.
///
/// verifier: no enum, and no `Option`, in what the parser returns. An enum's padding, or the
/// payload of its empty variant, is undefined, and LLVM copies it with the rest: a one-byte
/// tag had its seven padding bytes stored from whatever register was at hand, once a packet
/// pointer shifted byte by byte ("pointer arithmetic with >>= operator prohibited"); an
/// `Option<(FlowKey4, L4)>` left `None` had its flow key stored from a register no path had
/// written ("R9 !read_ok").
#[derive(Clone, Copy)]
#[repr(C)]
pub struct L4 {
    /// 0: none, [`L4::TCP`], [`L4::UDP`].
    kind: u64,
    hdr: *mut u8,
}

impl L4 {
    const NONE: Self = Self {
        kind: 0,
        hdr: core::ptr::null_mut(),
    };
    const TCP: u64 = 1;
    const UDP: u64 = 2;

    /// A TCP header at `hdr` (the IPv6 parser's constructor).
    #[inline(always)]
    pub fn tcp(hdr: *mut TcpHdr) -> Self {
        Self {
            kind: Self::TCP,
            hdr: hdr.cast(),
        }
    }

    /// A UDP header at `hdr`.
    #[inline(always)]
    pub fn udp(hdr: *mut UdpHdr) -> Self {
        Self {
            kind: Self::UDP,
            hdr: hdr.cast(),
        }
    }

    /// The header's offset in the frame (0 if there is none).
    #[inline(always)]
    pub fn offset(self, ctx: &XdpContext) -> usize {
        if self.kind == 0 {
            0
        } else {
            (self.hdr as usize).wrapping_sub(ctx.data())
        }
    }

    /// No transport header the fast path may rewrite.
    pub const fn none() -> Self {
        Self::NONE
    }

    /// Whether there is one.
    #[inline(always)]
    pub fn is_some(self) -> bool {
        self.kind != 0
    }

    /// The header, if the packet has one the fast path may rewrite.
    #[inline(always)]
    pub fn hdr(self) -> Option<Hdr> {
        match self.kind {
            Self::TCP => Some(Hdr::Tcp(self.hdr.cast())),
            Self::UDP => Some(Hdr::Udp(self.hdr.cast())),
            _ => None,
        }
    }
}

/// What the parser found in a frame that carries a readable IPv4 header.
pub struct Packet {
    pub ip: *mut Ipv4Hdr,
    pub eth: *mut EthHdr,
    /// The 5-tuple, when `l4` is set (all zero otherwise): see [`Packet::flow`].
    flow: FlowKey4,
    /// Set when the headers are fine enough to balance.
    l4: L4,
    /// Why this packet cannot be balanced, if it cannot: malformed, fragment, IP options,
    /// or not TCP/UDP. Only relevant when the destination is a VIP.
    pub problem: Option<DropReason>,
    /// The TCP flags byte (0 for UDP): see `lb_common::conn` for what they decide. A `u32`
    /// beside the 4-byte `problem`, so the struct has no padding (see [`L4`]).
    pub tcp_flags: u32,
    /// Frame length, for byte counters.
    pub len: u64,
    /// Offset of the IPv4 header in the frame.
    pub l3_off: usize,
}

impl Packet {
    /// The 5-tuple and L4 header, when the headers are fine enough to balance.
    #[inline(always)]
    pub fn flow(&self) -> Option<(&FlowKey4, L4)> {
        (self.l4.kind != 0).then_some((&self.flow, self.l4))
    }

    /// A TCP packet's sequence numbers as TCP reset on idle records them: the sequence number
    /// the backend expects next (this one's plus its length, `conn::next_seq`) and the
    /// acknowledgement (what the client expects next), host order. Only for a packet whose
    /// `flow()` is TCP; (0, 0) otherwise.
    #[inline(always)]
    pub fn tcp_numbers(&self) -> (u32, u32) {
        let Some(Hdr::Tcp(t)) = self.l4.hdr() else {
            return (0, 0);
        };
        // SAFETY: the parser bounds-checked both headers, and `tot_len` against the frame; the
        // IP header of a balanced packet is 20 bytes.
        let (t, tot_len) = unsafe { (&*t, u16::from_be_bytes((*self.ip).tot_len)) };
        let doff = u32::from(t.doff >> 4) * 4;
        let payload = u32::from(tot_len).wrapping_sub(20).wrapping_sub(doff);
        (
            lb_common::conn::next_seq(u32::from_be_bytes(t.seq), payload, t.flags),
            u32::from_be_bytes(t.ack),
        )
    }

    /// The TCP flags (0 for UDP).
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        #[expect(clippy::cast_possible_truncation, reason = "holds a flags byte")]
        let f = self.tcp_flags as u8;
        f
    }
}

/// The link layer of a frame: Ethernet and at most one 802.1Q tag.
pub struct L2 {
    pub eth: *mut EthHdr,
    /// The ethertype after the tag, if any.
    pub ether_type: u16,
    /// Offset of the network header.
    pub off: usize,
}

/// Parses the link layer. `Err` for a frame too short for its Ethernet header or tag.
#[inline(always)]
pub fn l2(ctx: &XdpContext) -> Result<L2, PassReason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(PassReason::Short)?;
    // SAFETY: `ptr_at` checked the header lies inside the frame.
    let mut ether_type = u16::from_be_bytes(unsafe { (*eth).ether_type });
    let mut off = size_of::<EthHdr>();
    if ether_type == ETH_P_8021Q {
        let vlan: *mut VlanHdr = ptr_at(ctx, off).ok_or(PassReason::Short)?;
        // SAFETY: bounds-checked above.
        ether_type = u16::from_be_bytes(unsafe { (*vlan).ether_type });
        off += size_of::<VlanHdr>();
    }
    Ok(L2 {
        eth,
        ether_type,
        off,
    })
}

/// Parses an IPv4 frame from the start (the tail-call programs, which see only IPv4).
#[inline(always)]
pub fn ipv4(ctx: &XdpContext) -> Result<Packet, PassReason> {
    packet(ctx, &l2(ctx)?)
}

/// Parses an IPv4 frame whose link layer is `l2`. `Err` carries the pass reason for frames
/// without a readable IPv4 header.
#[inline(always)]
pub fn packet(ctx: &XdpContext, l2: &L2) -> Result<Packet, PassReason> {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (eth, off) = (l2.eth, l2.off);
    if l2.ether_type != ETH_P_IPV4 {
        // Includes a second tag (QinQ): one tag is what we parse.
        return Err(PassReason::NotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, off).ok_or(PassReason::Short)?;
    // SAFETY: bounds-checked above; every field of `Ipv4Hdr` is a byte array (alignment 1).
    let iph = unsafe { &*ip };
    let ihl = usize::from(iph.version_ihl & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes(iph.tot_len));
    let frag = u16::from_be_bytes(iph.frag_off);
    let l3_room = ctx.data_end() - ctx.data() - off;
    let mut pkt = Packet {
        ip,
        eth,
        flow: FlowKey4::of([0; 4], [0; 4], [0; 2], [0; 2], 0),
        l4: L4::NONE,
        problem: None,
        tcp_flags: 0,
        len,
        l3_off: off,
    };

    pkt.problem = if iph.version_ihl >> 4 != 4 || ihl < 20 || tot_len < ihl || tot_len > l3_room {
        Some(DropReason::Malformed)
    } else if frag & IPV4_FRAG_MASK != 0 {
        Some(DropReason::Fragment)
    } else if ihl != 20 {
        Some(DropReason::IpOptions)
    } else if iph.proto != proto::TCP && iph.proto != proto::UDP {
        Some(DropReason::Proto)
    } else {
        None
    };
    if pkt.problem.is_some() {
        return Ok(pkt);
    }

    // From here the IP header is exactly 20 bytes and `tot_len` fits in the frame.
    let l4_off = off + 20;
    let l4_len = tot_len - 20;
    let (l4, sport, dport) = if iph.proto == proto::TCP {
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
        pkt.tcp_flags = u32::from(t.flags);
        (
            L4 {
                kind: L4::TCP,
                hdr: tcp.cast(),
            },
            t.sport,
            t.dport,
        )
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, l4_off) else {
            pkt.problem = Some(DropReason::Malformed);
            return Ok(pkt);
        };
        // SAFETY: bounds-checked above.
        let u = unsafe { &*udp };
        let ulen = usize::from(u16::from_be_bytes(u.len));
        if ulen < size_of::<UdpHdr>() || ulen > l4_len {
            pkt.problem = Some(DropReason::Malformed);
            return Ok(pkt);
        }
        (
            L4 {
                kind: L4::UDP,
                hdr: udp.cast(),
            },
            u.sport,
            u.dport,
        )
    };
    pkt.flow = FlowKey4::of(iph.src, iph.dst, sport, dport, iph.proto);
    pkt.l4 = l4;
    Ok(pkt)
}
