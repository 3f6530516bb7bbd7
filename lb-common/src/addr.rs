//! Addresses as the maps store them: 16 bytes, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
//!
//! One representation for both families keeps every key type family-agnostic, and the mapped
//! form is what an LPM trie needs: an IPv4 prefix of length `p` is the 16-byte prefix `96 + p`.

/// An address in map form.
pub type Addr = [u8; 16];

/// Length of the `::ffff:0:0/96` prefix that marks an IPv4-mapped address.
pub const V4_MAPPED_PREFIX_LEN: u32 = 96;

/// Maps an IPv4 address (network order) into the 16-byte map form. Built from four words:
/// the byte-wise literal's ten-byte zero prefix compiled to a `memset` call in the fast path.
#[inline(always)]
#[must_use]
pub fn v4_mapped(a: [u8; 4]) -> Addr {
    bytemuck::cast([
        0u32,
        0,
        u32::from_ne_bytes([0, 0, 0xff, 0xff]),
        u32::from_ne_bytes(a),
    ])
}

/// The IPv4 address inside a mapped address, if it is one.
#[inline(always)]
#[must_use]
pub fn as_v4(a: &Addr) -> Option<[u8; 4]> {
    if a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff {
        Some([a[12], a[13], a[14], a[15]])
    } else {
        None
    }
}

/// The IPv6 address of a map-form address that is not IPv4-mapped.
#[inline(always)]
#[must_use]
pub fn as_v6(a: &Addr) -> Option<[u8; 16]> {
    as_v4(a).is_none().then_some(*a)
}

/// An IPv6 prefix in map form as the IPv6 maps hold it: itself. `None` for an IPv4-mapped
/// prefix (the IPv4 maps hold it).
#[must_use]
pub fn prefix_v6(a: &Addr, len: u32) -> Option<(u32, [u8; 16])> {
    if len > 128 || prefix_v4(a, len).is_some() {
        return None;
    }
    as_v6(a).map(|v6| (len, v6))
}

/// An IPv4 prefix in map form (`::ffff:a.b.c.d`, length `96 + p`) as the IPv4 maps hold it:
/// `(p, a.b.c.d)`. `None` for a prefix that is not one (an IPv6 prefix, or a length below 96).
#[must_use]
pub fn prefix_v4(a: &Addr, len: u32) -> Option<(u32, [u8; 4])> {
    let p = len.checked_sub(V4_MAPPED_PREFIX_LEN)?;
    if p > 32 {
        return None;
    }
    as_v4(a).map(|v4| (p, v4))
}

/// The map form of an IPv4 prefix `a/p` as the IPv4 maps hold it: the inverse of
/// [`prefix_v4`].
#[must_use]
pub fn prefix_from_v4(p: u32, a: [u8; 4]) -> (u32, Addr) {
    (V4_MAPPED_PREFIX_LEN + p, v4_mapped(a))
}

#[cfg(feature = "std")]
mod std_impls {
    use std::net::IpAddr;

    use super::{Addr, as_v4, v4_mapped};

    /// `IpAddr` → map form.
    #[must_use]
    pub fn from_ip(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(v4) => v4_mapped(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    /// Map form → `IpAddr` (IPv4-mapped addresses come back as IPv4).
    #[must_use]
    pub fn to_ip(a: &Addr) -> IpAddr {
        match as_v4(a) {
            Some(v4) => IpAddr::from(v4),
            None => IpAddr::from(*a),
        }
    }
}
#[cfg(feature = "std")]
pub use std_impls::{from_ip, to_ip};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_round_trip() {
        let a = v4_mapped([203, 0, 113, 10]);
        assert_eq!(as_v4(&a), Some([203, 0, 113, 10]));
        assert_eq!(to_ip(&a).to_string(), "203.0.113.10");
        let v6: Addr = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        assert_eq!(as_v4(&v6), None);
        assert_eq!(from_ip(to_ip(&v6)), v6);
    }

    #[test]
    fn v4_prefixes_round_trip_and_nothing_else_is_one() {
        for p in 0..=32 {
            let (len, a) = prefix_from_v4(p, [198, 51, 100, 0]);
            assert_eq!(prefix_v4(&a, len), Some((p, [198, 51, 100, 0])));
        }
        let mapped = v4_mapped([0; 4]);
        assert_eq!(
            prefix_v4(&mapped, 95),
            None,
            "shorter than the mapped prefix"
        );
        assert_eq!(prefix_v4(&mapped, 129), None);
        assert_eq!(prefix_v4(&[0; 16], 0), None, "::/0 is not an IPv4 prefix");
    }
}
