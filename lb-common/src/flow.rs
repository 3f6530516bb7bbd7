//! The 5-tuple: hash input, conntrack key, and what the fast path parses out of a packet.
//!
//! Per family: [`FlowKey4`] holds 4-byte IPv4 addresses, so the IPv4 path builds and hashes a
//! 16-byte key and never touches a 16-byte address (Cilium's `lb4_*`/`lb6_*` split);
//! [`FlowKey6`] holds 16-byte IPv6 addresses (40 bytes).

use bytemuck::{Pod, Zeroable};

/// IP protocol numbers the load balancer cares about.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// An IPv4 flow's 5-tuple. Addresses and ports in network order, as on the wire, so the fast
/// path copies bytes without swapping.
///
/// Aligned to 4 bytes and built from four 32-bit words ([`Self::of`]), so that keys compile to
/// word stores and loads. verifier and size: a byte-aligned key was loaded byte by byte and
/// spilled ahead of the hash, and zeroing its padding field by field became a `memset` call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C, align(4))]
pub struct FlowKey4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey4>() == 16);
crate::impl_user_pod!(FlowKey4);

impl FlowKey4 {
    /// The key of a 5-tuple, from four word stores (the padding is the zero upper bytes of the
    /// last word).
    #[inline(always)]
    #[must_use]
    pub fn of(src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> Self {
        bytemuck::cast([
            u32::from_ne_bytes(src),
            u32::from_ne_bytes(dst),
            u32::from_ne_bytes([sport[0], sport[1], dport[0], dport[1]]),
            u32::from_ne_bytes([proto, 0, 0, 0]),
        ])
    }

    /// The 5-tuple of the packet travelling the other way.
    #[inline(always)]
    #[must_use]
    pub fn reversed(&self) -> Self {
        Self::of(self.dst, self.src, self.dport, self.sport, self.proto)
    }

    /// The key a backend's reply to this flow arrives with, once the flow was sent to the
    /// backend at `addr`:`port`: from the backend, to the flow's client.
    #[inline(always)]
    #[must_use]
    pub fn reply_from(&self, addr: [u8; 4], port: [u8; 2]) -> Self {
        Self::of(addr, self.src, port, self.sport, self.proto)
    }

    /// The client → VIP key of the flow a backend's reply (this key) belongs to, when the
    /// backend serves `vip`:`vport`: the reply's destination is the client.
    #[inline(always)]
    #[must_use]
    pub fn forward_of_reply(&self, vip: [u8; 4], vport: [u8; 2]) -> Self {
        Self::of(self.dst, vip, self.dport, vport, self.proto)
    }

    /// The key as four little-endian 32-bit words: exactly the key's 16 bytes (padding is always
    /// zero), so [`crate::hash::flow_hash`] equals MurmurHash3_x86_32 of those bytes.
    #[inline(always)]
    #[must_use]
    pub fn words(&self) -> [u32; 4] {
        let w: [u32; 4] = bytemuck::cast(*self);
        w.map(u32::from_le)
    }
}

/// An IPv6 flow's 5-tuple, as [`FlowKey4`] with 16-byte addresses: ten 32-bit words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C, align(4))]
pub struct FlowKey6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey6>() == 40);
crate::impl_user_pod!(FlowKey6);

/// An IPv6 address as four native-order words, for word-built keys. verifier and size: as
/// for [`FlowKey4::of`], keys are stored word by word.
#[inline(always)]
#[must_use]
pub fn words6(a: [u8; 16]) -> [u32; 4] {
    bytemuck::cast(a)
}

impl FlowKey6 {
    /// The key of a 5-tuple, from ten word stores.
    #[inline(always)]
    #[must_use]
    pub fn of(src: [u8; 16], dst: [u8; 16], sport: [u8; 2], dport: [u8; 2], proto: u8) -> Self {
        let (s, d) = (words6(src), words6(dst));
        bytemuck::cast([
            s[0],
            s[1],
            s[2],
            s[3],
            d[0],
            d[1],
            d[2],
            d[3],
            u32::from_ne_bytes([sport[0], sport[1], dport[0], dport[1]]),
            u32::from_ne_bytes([proto, 0, 0, 0]),
        ])
    }

    /// The 5-tuple of the packet travelling the other way.
    #[inline(always)]
    #[must_use]
    pub fn reversed(&self) -> Self {
        Self::of(self.dst, self.src, self.dport, self.sport, self.proto)
    }

    /// As [`FlowKey4::reply_from`].
    #[inline(always)]
    #[must_use]
    pub fn reply_from(&self, addr: [u8; 16], port: [u8; 2]) -> Self {
        Self::of(addr, self.src, port, self.sport, self.proto)
    }

    /// As [`FlowKey4::forward_of_reply`].
    #[inline(always)]
    #[must_use]
    pub fn forward_of_reply(&self, vip: [u8; 16], vport: [u8; 2]) -> Self {
        Self::of(self.dst, vip, self.dport, vport, self.proto)
    }

    /// The key as ten little-endian 32-bit words (its 40 bytes), as [`FlowKey4::words`].
    #[inline(always)]
    #[must_use]
    pub fn words(&self) -> [u32; 10] {
        let w: [u32; 10] = bytemuck::cast(*self);
        w.map(u32::from_le)
    }
}

#[cfg(feature = "std")]
impl FlowKey6 {
    /// Builds a key from socket addresses (host-side tests and the CLI).
    #[must_use]
    pub fn new(src: std::net::SocketAddrV6, dst: std::net::SocketAddrV6, proto: u8) -> Self {
        Self::of(
            src.ip().octets(),
            dst.ip().octets(),
            src.port().to_be_bytes(),
            dst.port().to_be_bytes(),
            proto,
        )
    }
}

#[cfg(feature = "std")]
impl FlowKey4 {
    /// Builds a key from socket addresses (host-side tests, the CLI and the differential test).
    #[must_use]
    pub fn new(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4, proto: u8) -> Self {
        Self::of(
            src.ip().octets(),
            dst.ip().octets(),
            src.port().to_be_bytes(),
            dst.port().to_be_bytes(),
            proto,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use proptest::prelude::*;

    use super::{FlowKey4, proto};

    #[test]
    fn a_reply_runs_from_the_backend_to_the_client_and_leads_back_to_its_flow() {
        let client: SocketAddrV4 = "198.51.100.2:40000".parse().unwrap();
        let vip: SocketAddrV4 = "203.0.113.10:80".parse().unwrap();
        let backend: SocketAddrV4 = "192.0.2.11:8080".parse().unwrap();
        let flow = FlowKey4::new(client, vip, proto::TCP);
        let reply = flow.reply_from(backend.ip().octets(), backend.port().to_be_bytes());
        assert_eq!(reply, FlowKey4::new(backend, client, proto::TCP));
        assert_eq!(
            reply.forward_of_reply(vip.ip().octets(), vip.port().to_be_bytes()),
            flow
        );
    }

    proptest! {
        /// `of` puts every field where the struct says, and the padding is zero.
        #[test]
        fn of_is_the_struct(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), sp in any::<[u8; 2]>(), dp in any::<[u8; 2]>(), p in any::<u8>()) {
            let k = FlowKey4::of(src, dst, sp, dp, p);
            prop_assert_eq!(k, FlowKey4 { src, dst, sport: sp, dport: dp, proto: p, _pad: [0; 3] });
            prop_assert_eq!(k.reversed().reversed(), k);
        }

        /// The same for the IPv6 key, and a reply leads back to its flow.
        #[test]
        fn of6_is_the_struct(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), sp in any::<[u8; 2]>(), dp in any::<[u8; 2]>(), p in any::<u8>(), b in any::<[u8; 16]>(), bp in any::<[u8; 2]>()) {
            let k = super::FlowKey6::of(src, dst, sp, dp, p);
            prop_assert_eq!(k, super::FlowKey6 { src, dst, sport: sp, dport: dp, proto: p, _pad: [0; 3] });
            prop_assert_eq!(k.reversed().reversed(), k);
            prop_assert_eq!(k.reply_from(b, bp).forward_of_reply(dst, dp), k);
        }
    }
}
