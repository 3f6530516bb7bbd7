//! A frame builder for fixtures: Ethernet (+ optional 802.1Q) / IPv4 (+ options) / TCP or UDP
//! or raw, with correct checksums computed from scratch by `lb_common::csum`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use lb_common::{csum, flow::proto, hdr};

pub const TCP_SYN: u8 = hdr::TCP_SYN;
pub const TCP_ACK: u8 = hdr::TCP_ACK;
pub const TCP_FIN: u8 = hdr::TCP_FIN;
pub const TCP_RST: u8 = hdr::TCP_RST;
pub const TCP_PSH: u8 = hdr::TCP_PSH;
pub const TCP_URG: u8 = hdr::TCP_URG;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    /// `no_csum`: send a zero checksum ("none", allowed for UDP over IPv4).
    Udp {
        sport: u16,
        dport: u16,
        no_csum: bool,
    },
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub vlan: Option<u16>,
    pub ether_type: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// Raw flags + fragment offset field.
    pub frag: u16,
    pub ip_options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// TCP only: the sequence and acknowledgement numbers (1000 and 0 unless set).
    pub seq: u32,
    pub ack: u32,
    /// TCP only: the window (64240 unless set).
    pub window: u16,
}

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

impl Frame {
    fn base(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            dmac: LB_MAC,
            smac: CLIENT_MAC,
            vlan: None,
            ether_type: hdr::ETH_P_IPV4,
            src,
            dst,
            ttl: 64,
            frag: 0x4000, // DF
            ip_options: Vec::new(),
            l4,
            payload: b"hello".to_vec(),
            seq: 1000,
            ack: 0,
            window: 64240,
        }
    }

    #[must_use]
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Self::base(
            *src.ip(),
            *dst.ip(),
            L4::Tcp {
                sport: src.port(),
                dport: dst.port(),
                flags,
            },
        )
    }

    #[must_use]
    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self::base(
            *src.ip(),
            *dst.ip(),
            L4::Udp {
                sport: src.port(),
                dport: dst.port(),
                no_csum: false,
            },
        )
    }

    #[must_use]
    pub fn raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, bytes: Vec<u8>) -> Self {
        let mut f = Self::base(src, dst, L4::Raw { proto, bytes });
        f.payload.clear();
        f
    }

    /// The frame as it should look after the LB rewrote `dst` (DNAT) and sent it: TTL one
    /// less, MACs from the next hop.
    #[must_use]
    pub fn dnat(&self, to: SocketAddrV4, smac: [u8; 6], dmac: [u8; 6]) -> Self {
        let mut f = self.clone();
        f.dst = *to.ip();
        match &mut f.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = to.port(),
            L4::Raw { .. } => {}
        }
        f.ttl -= 1;
        f.smac = smac;
        f.dmac = dmac;
        f
    }

    /// As [`Self::dnat`], for the source (reverse NAT of a reply).
    #[must_use]
    pub fn snat(&self, to: SocketAddrV4, smac: [u8; 6], dmac: [u8; 6]) -> Self {
        let mut f = self.clone();
        f.src = *to.ip();
        match &mut f.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = to.port(),
            L4::Raw { .. } => {}
        }
        f.ttl -= 1;
        f.smac = smac;
        f.dmac = dmac;
        f
    }

    fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Raw { proto, .. } => *proto,
        }
    }

    fn segment(&self) -> Vec<u8> {
        let mut seg = self.bare_segment();
        let (src, dst, p) = (self.src.octets(), self.dst.octets(), self.proto());
        match &self.l4 {
            L4::Tcp { .. } => {
                let c = csum::l4_v4(src, dst, p, &seg);
                seg[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp { no_csum: false, .. } => {
                let c = csum::l4_v4(src, dst, p, &seg);
                seg[6..8].copy_from_slice(&c.to_be_bytes());
            }
            _ => {}
        }
        seg
    }

    /// The transport header and payload, checksum field zero (either family's builder
    /// fills it in).
    fn bare_segment(&self) -> Vec<u8> {
        let mut seg = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[4..8].copy_from_slice(&self.seq.to_be_bytes());
                t[8..12].copy_from_slice(&self.ack.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = *flags;
                t[14..16].copy_from_slice(&self.window.to_be_bytes());
                t
            }
            L4::Udp { sport, dport, .. } => {
                let mut u = vec![0u8; 8];
                u[0..2].copy_from_slice(&sport.to_be_bytes());
                u[2..4].copy_from_slice(&dport.to_be_bytes());
                let len = u16::try_from(8 + self.payload.len()).expect("short payload");
                u[4..6].copy_from_slice(&len.to_be_bytes());
                u
            }
            L4::Raw { bytes, .. } => bytes.clone(),
        };
        seg.extend_from_slice(&self.payload);
        seg
    }

    /// The frame's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.dmac);
        f.extend_from_slice(&self.smac);
        if let Some(tci) = self.vlan {
            f.extend_from_slice(&hdr::ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&self.ether_type.to_be_bytes());
        let seg = self.segment();
        let ihl = 20 + self.ip_options.len();
        assert!(
            ihl.is_multiple_of(4) && ihl <= 60,
            "IP options must pad to 4 bytes"
        );
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | u8::try_from(ihl / 4).expect("ihl");
        let tot = u16::try_from(ihl + seg.len()).expect("short frame");
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6..8].copy_from_slice(&self.frag.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = self.proto();
        ip[12..16].copy_from_slice(&self.src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.ip_options);
        let c = csum::ipv4_header(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&seg);
        f
    }

    /// Offset of the IPv4 header in [`Self::build`]'s output.
    #[must_use]
    pub fn l3_offset(&self) -> usize {
        if self.vlan.is_some() { 18 } else { 14 }
    }
}

/// A file name for a frame written to disk (the fuzz seeds and frame dumps): `frame-` and the
/// frame's FNV-1a hash, so the same frame twice is one file.
#[must_use]
pub fn frame_file_name(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("frame-{h:016x}")
}

/// Bytes as space-separated hex, for assertion messages about frames.
#[must_use]
pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The (source, destination) endpoints of an untagged Ethernet + IPv4 (no options) TCP or UDP
/// frame, as the program sent it; `None` for anything else.
#[must_use]
pub fn endpoints(frame: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4)> {
    if frame.len() < 14 + 20 + 4 || frame[12..14] != [0x08, 0x00] || frame[14] != 0x45 {
        return None;
    }
    if frame[23] != 6 && frame[23] != 17 {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
    let port = |o: usize| u16::from_be_bytes([frame[o], frame[o + 1]]);
    Some((
        SocketAddrV4::new(ip(26), port(34)),
        SocketAddrV4::new(ip(30), port(36)),
    ))
}

/// An IPv6 frame for fixtures: Ethernet (+ optional 802.1Q) / IPv6 / extension headers (raw,
/// each given whole) / TCP, UDP or raw, with correct checksums computed from scratch by
/// `lb_common::csum` (ICMPv6's too, for a raw segment of protocol 58 whose checksum bytes are
/// zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame6 {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// Extension headers in order: (next-header value of this header, its bytes, the first
    /// of which is overwritten with the next header's type).
    pub ext: Vec<(u8, Vec<u8>)>,
    pub l4: L4,
    pub payload: Vec<u8>,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// Overrides the payload length field (for malformed frames).
    pub payload_len: Option<u16>,
}

impl Frame6 {
    fn base(src: Ipv6Addr, dst: Ipv6Addr, l4: L4) -> Self {
        Self {
            dmac: LB_MAC,
            smac: CLIENT_MAC,
            vlan: None,
            src,
            dst,
            hop_limit: 64,
            ext: Vec::new(),
            l4,
            payload: b"hello".to_vec(),
            seq: 1000,
            ack: 0,
            window: 64240,
            payload_len: None,
        }
    }

    #[must_use]
    pub fn tcp(src: SocketAddrV6, dst: SocketAddrV6, flags: u8) -> Self {
        Self::base(
            *src.ip(),
            *dst.ip(),
            L4::Tcp {
                sport: src.port(),
                dport: dst.port(),
                flags,
            },
        )
    }

    #[must_use]
    pub fn udp(src: SocketAddrV6, dst: SocketAddrV6) -> Self {
        Self::base(
            *src.ip(),
            *dst.ip(),
            L4::Udp {
                sport: src.port(),
                dport: dst.port(),
                no_csum: false,
            },
        )
    }

    #[must_use]
    pub fn raw(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, bytes: Vec<u8>) -> Self {
        let mut f = Self::base(src, dst, L4::Raw { proto, bytes });
        f.payload.clear();
        f
    }

    /// Adds an extension header of type `kind` with `body` (its first byte is the next header,
    /// filled in by [`Self::build`]; the second its length, which the caller sets).
    #[must_use]
    pub fn with_ext(mut self, kind: u8, body: Vec<u8>) -> Self {
        self.ext.push((kind, body));
        self
    }

    /// As [`Frame::dnat`].
    #[must_use]
    pub fn dnat(&self, to: SocketAddrV6, smac: [u8; 6], dmac: [u8; 6]) -> Self {
        let mut f = self.clone();
        f.dst = *to.ip();
        if let L4::Tcp { dport, .. } | L4::Udp { dport, .. } = &mut f.l4 {
            *dport = to.port();
        }
        f.hop_limit -= 1;
        f.smac = smac;
        f.dmac = dmac;
        f
    }

    /// As [`Frame::snat`].
    #[must_use]
    pub fn snat(&self, to: SocketAddrV6, smac: [u8; 6], dmac: [u8; 6]) -> Self {
        let mut f = self.clone();
        f.src = *to.ip();
        if let L4::Tcp { sport, .. } | L4::Udp { sport, .. } = &mut f.l4 {
            *sport = to.port();
        }
        f.hop_limit -= 1;
        f.smac = smac;
        f.dmac = dmac;
        f
    }

    fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Raw { proto, .. } => *proto,
        }
    }

    /// The frame's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        // The transport segment: the IPv4 builder's, with the IPv6 pseudo-header sum.
        let mut t = Frame::base(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            self.l4.clone(),
        );
        t.payload.clone_from(&self.payload);
        (t.seq, t.ack, t.window) = (self.seq, self.ack, self.window);
        let mut seg = t.bare_segment();
        let (src, dst, p) = (self.src.octets(), self.dst.octets(), self.proto());
        let at = match &self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp { no_csum: false, .. } => Some(6),
            L4::Raw { proto: 58, bytes } if bytes.len() >= 4 && bytes[2..4] == [0, 0] => Some(2),
            _ => None,
        };
        if let Some(at) = at {
            let c = csum::l4_v6(src, dst, p, &seg);
            seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let mut exts = Vec::new();
        for (i, (_, body)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(p, |(k, _)| *k);
            let mut b = body.clone();
            b[0] = next;
            exts.extend_from_slice(&b);
        }
        let first = self.ext.first().map_or(p, |(k, _)| *k);
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.dmac);
        f.extend_from_slice(&self.smac);
        if let Some(tci) = self.vlan {
            f.extend_from_slice(&hdr::ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&hdr::ETH_P_IPV6.to_be_bytes());
        let plen = self
            .payload_len
            .unwrap_or_else(|| u16::try_from(exts.len() + seg.len()).expect("short frame"));
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.to_be_bytes());
        f.push(first);
        f.push(self.hop_limit);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&exts);
        f.extend_from_slice(&seg);
        f
    }
}

/// How a floating-IP service's packet leaves the LB (the expected bytes of the fixtures,
/// built from the RFCs' layouts, with every checksum computed from scratch).
#[derive(Clone, Copy, Debug)]
pub enum Outer {
    /// IPIP: protocol 4 (IPv4) or next header 41 (IPv6).
    Ipip,
    /// GUE variant 1: an outer UDP header from `sport` to `dport`.
    Gue { sport: u16, dport: u16 },
}

/// `inner` (a built frame, its IP packet untouched) encapsulated from `src` to `dst` as the
/// LB sends it: the L2 header kept but for the MACs (`smac`, `dmac`), then an outer IPv4 or
/// IPv6 header (TTL / hop limit 64; IPv4: DF, ID 0, the inner TOS; IPv6: the inner traffic
/// class, flow label `label`), then for GUE a UDP header (checksum 0 over IPv4, computed over
/// IPv6), then the inner packet.
#[must_use]
pub fn encapsulated(
    inner: &[u8],
    (src, dst): (IpAddr, IpAddr),
    outer: Outer,
    label: u32,
    (smac, dmac): ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let l3 = if inner[12..14] == hdr::ETH_P_8021Q.to_be_bytes() {
        18
    } else {
        14
    };
    let packet = &inner[l3..];
    let mut f = Vec::with_capacity(inner.len() + 48);
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&inner[12..l3]);
    let udp = |len: usize, check: u16, (sport, dport): (u16, u16)| {
        let mut u = Vec::with_capacity(8);
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&u16::try_from(len).expect("short").to_be_bytes());
        u.extend_from_slice(&check.to_be_bytes());
        u
    };
    let gue = match outer {
        Outer::Ipip => None,
        Outer::Gue { sport, dport } => Some((sport, dport)),
    };
    let over_udp = if gue.is_some() { 8 } else { 0 };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[1] = packet[1];
            let tot = u16::try_from(20 + over_udp + packet.len()).expect("short");
            ip[2..4].copy_from_slice(&tot.to_be_bytes());
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = if gue.is_some() { 17 } else { 4 };
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = csum::ipv4_header(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            if let Some(ports) = gue {
                f.extend_from_slice(&udp(8 + packet.len(), 0, ports));
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let tclass = (packet[0] << 4) | (packet[1] >> 4);
            let word = 0x6000_0000 | (u32::from(tclass) << 20) | (label & 0xf_ffff);
            f.extend_from_slice(&word.to_be_bytes());
            let plen = u16::try_from(over_udp + packet.len()).expect("short");
            f.extend_from_slice(&plen.to_be_bytes());
            f.push(if gue.is_some() { 17 } else { 41 });
            f.push(64);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            if let Some(ports) = gue {
                let mut dgram = udp(8 + packet.len(), 0, ports);
                dgram.extend_from_slice(packet);
                let c = csum::l4_v6(s.octets(), d.octets(), 17, &dgram);
                dgram[6..8].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&dgram[..8]);
            }
        }
        _ => panic!("an outer header of one family"),
    }
    f.extend_from_slice(packet);
    f
}

/// `frame` with only its MACs rewritten (floating IP `l2`).
#[must_use]
pub fn remac(frame: &[u8], smac: [u8; 6], dmac: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[..6].copy_from_slice(&dmac);
    f[6..12].copy_from_slice(&smac);
    f
}
