//! Wire header layouts. Every field is a byte array (alignment 1), so a header can be read in
//! place at any packet offset, and values are converted with `from_be_bytes` where used.

use bytemuck::{Pod, Zeroable};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// IPv4 `frag_off` bits: more-fragments flag and the offset; DF (0x4000) is not a fragment.
pub const IPV4_FRAG_MASK: u16 = 0x3fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// An 802.1Q tag as it follows the outer ethertype: TCI, then the inner ethertype.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// The fixed IPv6 header (RFC 8200).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (4 bits), traffic class (8), flow label (20).
    pub vtc_flow: [u8; 4],
    /// Length of everything after this header, extension headers included.
    pub payload_len: [u8; 2],
    pub next: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The first two bytes of every extension header the fast path walks: the next header, and
/// the length in 8-byte units past the first 8 (the fragment header's is reserved: always 8
/// bytes). A routing header's third and fourth bytes are its type and segments left.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub next: u8,
    pub len: u8,
    pub b2: u8,
    pub b3: u8,
}

/// IPv6 next-header values of the extension headers the fast path walks.
pub mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const DEST_OPTS: u8 = 60;
}

/// The most extension headers the IPv6 parser walks before the transport header. A longer
/// chain to a VIP is dropped (`drop_ext_headers`): RFC 8200's recommended order has at most
/// hop-by-hop, destination options, routing, fragment and destination options again, and a
/// packet of ours needs none of them but the first.
pub const IPV6_MAX_EXT: usize = 4;

/// ICMPv6 types that are neighbour discovery or router messages (RFC 4861: router
/// solicitation and advertisement, neighbour solicitation and advertisement, redirect): the
/// kernel's, always, even to a VIP.
#[must_use]
pub const fn icmpv6_is_ndp(t: u8) -> bool {
    t >= 133 && t <= 137
}

/// The fixed 20 bytes of a TCP header.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    /// Data offset (high nibble) and reserved bits.
    pub doff: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

const _: () = assert!(size_of::<EthHdr>() == 14);
const _: () = assert!(size_of::<Ipv4Hdr>() == 20);
const _: () = assert!(size_of::<Ipv6Hdr>() == 40);
const _: () = assert!(size_of::<TcpHdr>() == 20);
const _: () = assert!(size_of::<UdpHdr>() == 8);
