//! The 5-tuple: hash input, conntrack key, and what the fast path parses out of a packet.

use bytemuck::{Pod, Zeroable};

use crate::addr::Addr;

/// IP protocol numbers the load balancer cares about.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// A flow's 5-tuple. Addresses in map form (see [`crate::addr`]); ports in network order, as on
/// the wire, so the fast path copies bytes without swapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
crate::impl_user_pod!(FlowKey);

impl FlowKey {
    /// The 5-tuple of the packet travelling the other way.
    #[inline(always)]
    #[must_use]
    pub const fn reversed(&self) -> Self {
        Self {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// The key as ten little-endian 32-bit words: exactly the key's 40 bytes (padding is always
    /// zero), so [`crate::hash::flow_hash`] equals MurmurHash3_x86_32 of those bytes.
    #[inline(always)]
    #[must_use]
    pub fn words(&self) -> [u32; 10] {
        let s = &self.src;
        let d = &self.dst;
        [
            u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
            u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
            u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
            u32::from_le_bytes([s[12], s[13], s[14], s[15]]),
            u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
            u32::from_le_bytes([d[4], d[5], d[6], d[7]]),
            u32::from_le_bytes([d[8], d[9], d[10], d[11]]),
            u32::from_le_bytes([d[12], d[13], d[14], d[15]]),
            u32::from_le_bytes([self.sport[0], self.sport[1], self.dport[0], self.dport[1]]),
            u32::from(self.proto),
        ]
    }
}

#[cfg(feature = "std")]
impl FlowKey {
    /// Builds a key from socket addresses (host-side tests, the CLI and the differential test).
    #[must_use]
    pub fn new(src: std::net::SocketAddr, dst: std::net::SocketAddr, proto: u8) -> Self {
        Self {
            src: crate::addr::from_ip(src.ip()),
            dst: crate::addr::from_ip(dst.ip()),
            sport: src.port().to_be_bytes(),
            dport: dst.port().to_be_bytes(),
            proto,
            _pad: [0; 3],
        }
    }
}
