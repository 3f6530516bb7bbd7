//! The IPv6 family's map types (`*6`): the IPv4 ones' layouts with 16-byte addresses, and the
//! conversions of the agent's family-agnostic forms into them. Re-exported by `maps`.

use bytemuck::{Pod, Zeroable};

use super::{
    BACKEND_F_ACTIVE, Backend, BackendId, CONN_FORWARD, CONN_HAIRPIN, CONN_REVERSE, NextHop,
    ServiceKey, ours_bit,
};
use crate::impl_user_pod;

impl ServiceKey {
    /// Its `LB_SERVICES6` key, if the VIP is IPv6.
    #[must_use]
    pub fn v6(&self) -> Option<ServiceKey6> {
        crate::addr::as_v6(&self.vip).map(|a| ServiceKey6::of(a, self.port, self.proto))
    }

    /// The endpoint of an `LB_SERVICES6` key.
    #[must_use]
    pub fn from_v6(k: &ServiceKey6) -> Self {
        Self {
            vip: k.vip,
            port: k.port,
            proto: k.proto,
            _pad: 0,
        }
    }
}

/// `LB_SERVICES6` key: an IPv6 load-balanced endpoint, (VIP, port, protocol).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C, align(4))]
pub struct ServiceKey6 {
    pub vip: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceKey6>() == 20);

impl ServiceKey6 {
    /// The key of a packet's destination, from five word stores.
    #[inline(always)]
    #[must_use]
    pub fn of(vip: [u8; 16], port: [u8; 2], proto: u8) -> Self {
        bytemuck::cast(endpoint_words6(vip, port, proto))
    }
}

/// An IPv6 endpoint as five words: the layout of [`ServiceKey6`] and [`RevKey6`].
#[inline(always)]
fn endpoint_words6(addr: [u8; 16], port: [u8; 2], proto: u8) -> [u32; 5] {
    let a = crate::flow::words6(addr);
    [
        a[0],
        a[1],
        a[2],
        a[3],
        u32::from_ne_bytes([port[0], port[1], proto, 0]),
    ]
}

impl Backend {
    /// Its `LB_BACKENDS6` entry, if the address is IPv6.
    #[must_use]
    pub fn v6(&self) -> Option<Backend6> {
        crate::addr::as_v6(&self.addr).map(|addr| Backend6 {
            addr,
            port: self.port,
            flags: self.flags,
            proto: self.proto,
            nh: self.nh,
            service: self.service,
            mtu: self.mtu,
        })
    }

    /// The backend of an `LB_BACKENDS6` entry.
    #[must_use]
    pub fn from_v6(b: &Backend6) -> Self {
        Self {
            addr: b.addr,
            port: b.port,
            flags: b.flags,
            proto: b.proto,
            nh: b.nh,
            service: b.service,
            mtu: b.mtu,
        }
    }
}

/// `LB_BACKENDS6` value, indexed by [`BackendId`] (the ids are shared with `LB_BACKENDS4`: an id
/// is live in the map of its backend's family only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Backend6 {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub flags: u8,
    pub proto: u8,
    pub nh: NextHop,
    pub service: u32,
    /// As [`super::Backend::mtu`].
    pub mtu: u32,
}
const _: () = assert!(size_of::<Backend6>() == 44);

impl Backend6 {
    #[inline(always)]
    #[must_use]
    pub const fn is_active(&self) -> bool {
        self.flags & BACKEND_F_ACTIVE != 0
    }
}

/// `LB_CONNTRACK6` value: [`ConnEntry4`] for an IPv6 flow (key: the `FlowKey6` as it arrives),
/// with the same fields and meanings; the 16-byte `addr` comes last. The IPv6 family keeps
/// plain flows (forward entries), shared endpoints' reverse entries and hairpin flows' two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct ConnEntry6 {
    pub backend: BackendId,
    pub service: u32,
    pub kind: u8,
    pub tcp: u8,
    pub port: [u8; 2],
    pub vport: [u8; 2],
    pub flags: u8,
    pub _pad: u8,
    pub peer: BackendId,
    pub seen_s: u32,
    pub seq: u32,
    pub ack: u32,
    pub created_s: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<ConnEntry6>() == 52);

impl ConnEntry6 {
    /// A plain flow's forward entry, as [`ConnEntry4::forward`]: thirteen word stores, the zero
    /// ones opaque (`black_box`) so that no `memset` is emitted.
    #[inline(always)]
    #[must_use]
    pub fn forward(
        backend: BackendId,
        service: u32,
        tcp: u8,
        flags: u8,
        seen_s: u32,
        (seq, ack): (u32, u32),
    ) -> Self {
        let zero = core::hint::black_box(0u32);
        bytemuck::cast([
            backend,
            service,
            u32::from_ne_bytes([CONN_FORWARD, tcp, 0, 0]),
            u32::from_ne_bytes([0, 0, flags, 0]) | zero,
            zero,
            seen_s | zero,
            seq | zero,
            ack | zero,
            seen_s | zero,
            zero,
            zero,
            zero,
            zero,
        ])
    }

    /// A shared endpoint's reverse entry ([`CONN_REVERSE`]): the VIP `addr` and port `port`
    /// its reply's source becomes.
    #[inline(always)]
    #[must_use]
    pub fn reverse(
        backend: BackendId,
        service: u32,
        port: [u8; 2],
        addr: [u8; 16],
        seen_s: u32,
    ) -> Self {
        Self::hairpin(
            backend,
            service,
            CONN_REVERSE,
            port,
            addr,
            [0; 2],
            0,
            seen_s,
        )
    }

    /// A hairpin flow's entry ([`CONN_HAIRPIN`] or [`super::CONN_HAIRPIN_REV`]), as
    /// [`ConnEntry4::new`] with the same fields (and the layout [`Self::reverse`] fills):
    /// `port` the SNAT port (forward) or the connecting backend's port (reverse), `addr` the
    /// VIP (forward) or the connecting backend (reverse), `vport` the VIP port a reply's
    /// source becomes (reverse), `peer` the connecting backend's id.
    #[inline(always)]
    #[must_use]
    #[expect(clippy::too_many_arguments, reason = "one per field; inlined")]
    pub fn hairpin(
        backend: BackendId,
        service: u32,
        kind: u8,
        port: [u8; 2],
        addr: [u8; 16],
        vport: [u8; 2],
        peer: BackendId,
        seen_s: u32,
    ) -> Self {
        let zero = core::hint::black_box(0u32);
        let a = crate::flow::words6(addr);
        bytemuck::cast([
            backend,
            service,
            u32::from_ne_bytes([kind, 0, port[0], port[1]]),
            u32::from_ne_bytes([vport[0], vport[1], 0, 0]) | zero,
            peer | zero,
            seen_s | zero,
            zero,
            zero,
            seen_s | zero,
            a[0],
            a[1],
            a[2],
            a[3],
        ])
    }

    /// Whether the entry tracks a client → VIP direction (plain or hairpin).
    #[inline(always)]
    #[must_use]
    pub const fn is_forward(&self) -> bool {
        self.kind == CONN_FORWARD || self.kind == CONN_HAIRPIN
    }

    /// The entry as its thirteen 4-byte words (written in place word by word).
    #[inline(always)]
    #[must_use]
    pub fn words(&self) -> [u32; 13] {
        bytemuck::cast(*self)
    }
}

/// `LB_REVSVC6` key: an IPv6 backend's (address, port, protocol).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
#[repr(C, align(4))]
pub struct RevKey6 {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<RevKey6>() == 20);

impl RevKey6 {
    /// The key of a reply's source, from five word stores.
    #[inline(always)]
    #[must_use]
    pub fn of(addr: [u8; 16], port: [u8; 2], proto: u8) -> Self {
        bytemuck::cast(endpoint_words6(addr, port, proto))
    }
}

/// `LB_REVSVC6` value: [`RevService4`] for an IPv6 endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct RevService6 {
    pub vip: [u8; 16],
    pub vport: [u8; 2],
    pub flags: u16,
    pub service: u32,
    pub backend: BackendId,
}
const _: () = assert!(size_of::<RevService6>() == 28);

/// `LB_ROUTES6` key data: a client-facing IPv6 destination prefix (length 0..=128).
pub type RouteKey6 = [u8; 16];

/// `LB_ACL6` key data (the LPM trie's `Key<[u8; 20]>`): the ACL set id (big-endian), then the
/// IPv6 source. Prefix length is `32 + p`.
pub type AclKey6 = [u8; 20];

/// Builds `LB_ACL6` key data from five words.
#[inline(always)]
#[must_use]
pub fn acl_key6(acl_id: u32, a: [u8; 16]) -> AclKey6 {
    let w = crate::flow::words6(a);
    bytemuck::cast([
        u32::from_ne_bytes(acl_id.to_be_bytes()),
        w[0],
        w[1],
        w[2],
        w[3],
    ])
}

/// An IPv6 address's place in the same filter: its four words folded by XOR, then
/// [`ours_bit`]. One filter serves both families; a collision between them costs lookups only.
#[inline(always)]
#[must_use]
pub fn ours_bit6(a: [u8; 16]) -> (u32, u64) {
    let w = crate::flow::words6(a);
    ours_bit((w[0] ^ w[1] ^ w[2] ^ w[3]).to_ne_bytes())
}

/// `LB_PIPS6` (PIP → instance) and `LB_PIP_REV6` (instance → PIP) value, as `PipEntry4`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct PipEntry6 {
    /// The address the packet's destination (`LB_PIPS6`) or source (`LB_PIP_REV6`) becomes.
    pub addr: [u8; 16],
    /// `LB_PIPS6`: the agent-resolved next hop towards the instance.
    pub nh: NextHop,
}
const _: () = assert!(size_of::<PipEntry6>() == 32);

impl_user_pod!(
    ServiceKey6,
    Backend6,
    ConnEntry6,
    RevKey6,
    RevService6,
    PipEntry6
);
