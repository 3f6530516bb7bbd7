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
///
/// Aligned to 4 bytes, so that [`Self::words`] compiles to ten 32-bit loads. verifier: with
/// byte alignment, LLVM loaded all 36 bytes one by one ahead of the hash and spilled them,
/// which took 288 bytes of `lb_xdp`'s 512-byte stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C, align(4))]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 40);
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

    /// The key a backend's reply to this flow arrives with, once the flow was sent to the
    /// backend at `addr`:`port`: from the backend, to the flow's client. The fast path records
    /// it for reverse NAT, and the model predicts with it.
    #[inline(always)]
    #[must_use]
    pub const fn reply_from(&self, addr: Addr, port: [u8; 2]) -> Self {
        Self {
            src: addr,
            sport: port,
            ..self.reversed()
        }
    }

    /// The key as ten little-endian 32-bit words: exactly the key's 40 bytes (padding is always
    /// zero), so [`crate::hash::flow_hash`] equals MurmurHash3_x86_32 of those bytes.
    #[inline(always)]
    #[must_use]
    pub fn words(&self) -> [u32; 10] {
        // verifier: ten aligned 32-bit loads (the key is 4-aligned); reading the bytes one by
        // one made LLVM load and spill them all ahead of the hash.
        let w: [u32; 10] = bytemuck::cast(*self);
        w.map(u32::from_le)
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::{FlowKey, proto};
    use crate::addr;

    #[test]
    fn a_reply_runs_from_the_backend_to_the_client() {
        let client: SocketAddr = "198.51.100.2:40000".parse().unwrap();
        let vip: SocketAddr = "203.0.113.10:80".parse().unwrap();
        let backend: SocketAddr = "192.0.2.11:8080".parse().unwrap();
        let flow = FlowKey::new(client, vip, proto::TCP);
        let reply = flow.reply_from(addr::from_ip(backend.ip()), backend.port().to_be_bytes());
        assert_eq!(reply, FlowKey::new(backend, client, proto::TCP));
    }
}
