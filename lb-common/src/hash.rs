//! The flow hash both sides use to pick a table slot.
//!
//! MurmurHash3 (x86, 32-bit) over the four words of [`FlowKey4::words`]: a fixed number of rounds,
//! only wrapping arithmetic and no branches on data, so it verifies cheaply in BPF and cannot
//! panic. The seed is a load-time global in the XDP program; all LB nodes of a deployment must
//! share it to agree on backends.

use crate::flow::{FlowKey4, FlowKey6};

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// Hash of a flow's 5-tuple (source and destination address and port, protocol).
#[inline(always)]
#[must_use]
pub fn flow_hash(k: &FlowKey4, seed: u32) -> u32 {
    murmur3(&k.words(), seed)
}

/// A service's load distribution mode (the reference's): which part of a new flow's 5-tuple
/// picks its backend.
pub mod dist {
    /// Source and destination address and port, and protocol (the default).
    pub const FIVE_TUPLE: u32 = 0;
    /// Source and destination address ("2-tuple"): a client address always reaches the same
    /// backend, whatever its ports and protocol.
    pub const SOURCE_IP: u32 = 1;
    /// Source and destination address and protocol ("3-tuple").
    pub const SOURCE_IP_PROTOCOL: u32 = 2;
}

/// The hash input of a new flow under distribution mode `mode` ([`dist`]): its key with the
/// fields the mode ignores zeroed (ports, and for [`dist::SOURCE_IP`] the protocol). An
/// unknown mode hashes the whole 5-tuple. Word masks, no branch on the packet: the fast path
/// and the agent's model use this one rule.
#[inline(always)]
#[must_use]
pub fn hash_input(k: &FlowKey4, mode: u32) -> FlowKey4 {
    let w: [u32; 4] = bytemuck::cast(*k);
    let (ports, proto) = masks(mode);
    bytemuck::cast([w[0], w[1], w[2] & ports, w[3] & proto])
}

/// The masks of the ports word and the protocol word under distribution mode `mode`.
#[inline(always)]
const fn masks(mode: u32) -> (u32, u32) {
    let ports = if mode == dist::SOURCE_IP || mode == dist::SOURCE_IP_PROTOCOL {
        0
    } else {
        u32::MAX
    };
    let proto = if mode == dist::SOURCE_IP { 0 } else { u32::MAX };
    (ports, proto)
}

/// The slot hash of a new flow under distribution mode `mode`.
#[inline(always)]
#[must_use]
pub fn dist_hash(k: &FlowKey4, mode: u32, seed: u32) -> u32 {
    flow_hash(&hash_input(k, mode), seed)
}

/// Hash of an IPv6 flow's 5-tuple: MurmurHash3_x86_32 of the key's 40 bytes.
#[inline(always)]
#[must_use]
pub fn flow_hash6(k: &FlowKey6, seed: u32) -> u32 {
    murmur3(&k.words(), seed)
}

/// [`hash_input`] for an IPv6 flow.
#[inline(always)]
#[must_use]
pub fn hash_input6(k: &FlowKey6, mode: u32) -> FlowKey6 {
    let mut w: [u32; 10] = bytemuck::cast(*k);
    let (ports, proto) = masks(mode);
    w[8] &= ports;
    w[9] &= proto;
    bytemuck::cast(w)
}

/// [`dist_hash`] for an IPv6 flow.
#[inline(always)]
#[must_use]
pub fn dist_hash6(k: &FlowKey6, mode: u32, seed: u32) -> u32 {
    flow_hash6(&hash_input6(k, mode), seed)
}

/// MurmurHash3_x86_32 of `N` little-endian words (`4 * N` bytes).
#[inline(always)]
#[must_use]
pub fn murmur3<const N: usize>(words: &[u32; N], seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    // verifier: a constant trip count; LLVM unrolls it, so there is no loop to bound.
    while i < N {
        let mut w = words[i].wrapping_mul(C1);
        w = w.rotate_left(15).wrapping_mul(C2);
        h ^= w;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        i += 1;
    }
    #[expect(clippy::cast_possible_truncation, reason = "N is a small constant")]
    fmix32(h ^ (4 * N) as u32)
}

/// MurmurHash3's finaliser: full avalanche of a 32-bit value.
#[inline(always)]
#[must_use]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::{consts::DEFAULT_HASH_SEED, flow::proto};

    fn key(src: &str, dst: &str, p: u8) -> FlowKey4 {
        FlowKey4::new(
            src.parse::<SocketAddrV4>().unwrap(),
            dst.parse().unwrap(),
            p,
        )
    }

    /// Golden vectors, computed independently with the reference MurmurHash3_x86_32 (Python's
    /// `mmh3.hash(key_bytes, seed, signed=False)`) over the key's 16 bytes. Changing the hash
    /// moves every existing flow on an upgrade, so it must be a deliberate act.
    #[test]
    fn golden_vectors() {
        let cases = [
            (
                key("198.51.100.2:40000", "203.0.113.10:80", proto::TCP),
                0,
                0xd4fe_920d_u32,
            ),
            (
                key("198.51.100.2:40001", "203.0.113.10:80", proto::TCP),
                0,
                0x1fbc_da4e,
            ),
            (
                key("198.51.100.2:40000", "203.0.113.10:53", proto::UDP),
                0,
                0x53f8_98d6,
            ),
            (
                key("198.51.100.2:40000", "203.0.113.10:80", proto::TCP),
                DEFAULT_HASH_SEED,
                0x0b88_ae97,
            ),
        ];
        for (k, seed, want) in cases {
            assert_eq!(flow_hash(&k, seed), want, "flow_hash({k:?}, {seed:#x})");
        }
    }

    /// IPv6 golden vectors, from the same reference (`mmh3.hash`) over the key's 40 bytes.
    #[test]
    fn golden_vectors6() {
        let k = |s: &str, d: &str, p| {
            FlowKey6::new(
                s.parse::<std::net::SocketAddrV6>().unwrap(),
                d.parse().unwrap(),
                p,
            )
        };
        let tcp = k("[2001:db8:1::2]:40000", "[2001:db8:3::10]:80", proto::TCP);
        assert_eq!(flow_hash6(&tcp, 0), 0xfe07_f939);
        let udp = k("[2001:db8:1::2]:40000", "[2001:db8:3::10]:53", proto::UDP);
        assert_eq!(flow_hash6(&udp, 0x1234), 0x6d9c_ad46);
        // The modes mask the same fields as for IPv4.
        let other = k("[2001:db8:1::2]:50000", "[2001:db8:3::10]:53", proto::UDP);
        assert_eq!(
            dist_hash6(&udp, dist::SOURCE_IP, 1),
            dist_hash6(&other, dist::SOURCE_IP, 1)
        );
        assert_ne!(
            dist_hash6(&udp, dist::FIVE_TUPLE, 1),
            dist_hash6(&other, dist::FIVE_TUPLE, 1)
        );
        assert_eq!(dist_hash6(&udp, dist::FIVE_TUPLE, 1), flow_hash6(&udp, 1));
    }

    #[test]
    fn seed_and_every_field_matter() {
        let base = key("198.51.100.2:40000", "203.0.113.10:80", proto::TCP);
        let h = flow_hash(&base, 1);
        assert_ne!(h, flow_hash(&base, 2));
        let variants = [
            key("198.51.100.3:40000", "203.0.113.10:80", proto::TCP),
            key("198.51.100.2:40002", "203.0.113.10:80", proto::TCP),
            key("198.51.100.2:40000", "203.0.113.11:80", proto::TCP),
            key("198.51.100.2:40000", "203.0.113.10:81", proto::TCP),
            key("198.51.100.2:40000", "203.0.113.10:80", proto::UDP),
        ];
        for v in variants {
            assert_ne!(flow_hash(&v, 1), h, "{v:?} collides with the base key");
        }
    }

    /// Each mode hashes exactly its fields: flows that differ only in what a mode ignores
    /// hash alike under it, and the 5-tuple mode is the plain flow hash.
    #[test]
    fn each_mode_hashes_its_fields() {
        let a = key("198.51.100.2:40000", "203.0.113.10:80", proto::TCP);
        let other_ports = key("198.51.100.2:50000", "203.0.113.10:443", proto::TCP);
        let other_proto = key("198.51.100.2:40000", "203.0.113.10:80", proto::UDP);
        let other_src = key("198.51.100.3:40000", "203.0.113.10:80", proto::TCP);
        let h = |k: &FlowKey4, m| dist_hash(k, m, DEFAULT_HASH_SEED);
        assert_eq!(h(&a, dist::FIVE_TUPLE), flow_hash(&a, DEFAULT_HASH_SEED));
        assert_ne!(h(&a, dist::FIVE_TUPLE), h(&other_ports, dist::FIVE_TUPLE));
        assert_eq!(h(&a, dist::SOURCE_IP), h(&other_ports, dist::SOURCE_IP));
        assert_eq!(h(&a, dist::SOURCE_IP), h(&other_proto, dist::SOURCE_IP));
        assert_ne!(h(&a, dist::SOURCE_IP), h(&other_src, dist::SOURCE_IP));
        assert_eq!(
            h(&a, dist::SOURCE_IP_PROTOCOL),
            h(&other_ports, dist::SOURCE_IP_PROTOCOL)
        );
        assert_ne!(
            h(&a, dist::SOURCE_IP_PROTOCOL),
            h(&other_proto, dist::SOURCE_IP_PROTOCOL)
        );
        let zeroed = hash_input(&a, dist::SOURCE_IP);
        assert_eq!(
            (
                zeroed.src,
                zeroed.dst,
                zeroed.sport,
                zeroed.dport,
                zeroed.proto
            ),
            (a.src, a.dst, [0; 2], [0; 2], 0)
        );
    }
}
