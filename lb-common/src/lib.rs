//! Everything the XDP program and the agent must agree on, and every pure algorithm.
//!
//! The crate is `no_std` so the eBPF program can use the very same functions the host tests
//! cover: the flow hash, the table slot rule, the checksum arithmetic and the verdict reasons.
//! Table construction, ACL compilation and the host model need allocation and sit behind the
//! `std` feature; `user` adds the `aya::Pod` markers the agent needs to put these types in maps.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "std")]
pub mod acl;
pub mod addr;
pub mod conn;
pub mod consts;
pub mod csum;
pub mod encap;
pub mod flow;
pub mod hash;
pub mod hdr;
pub mod health;
pub mod maglev;
pub mod maps;
pub mod outbound;
pub mod trace;
pub mod verdict;
pub mod xmit;

#[cfg(feature = "std")]
pub mod model;

/// Implements `aya::Pod` for map types, but only for types that are `bytemuck::Pod`.
///
/// `bytemuck::Pod` refuses to derive on a type with padding or invalid bit patterns, so a layout
/// mistake is a compile error here instead of garbage read from a map at run time.
macro_rules! impl_user_pod {
    ($($t:ty),* $(,)?) => { $(
        #[cfg(feature = "user")]
        // SAFETY: `$t: bytemuck::Pod` (checked below) implies no padding and no invalid bit patterns.
        unsafe impl aya::Pod for $t {}
        const _: fn() = || {
            fn check<T: bytemuck::Pod>() {}
            check::<$t>();
        };
    )* };
}
pub(crate) use impl_user_pod;
