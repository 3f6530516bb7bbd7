//! Map keys and values. Every type is `#[repr(C)]`, `bytemuck::Pod` (so no hidden padding), and
//! size-asserted: the XDP program and the agent read the same bytes.
//!
//! Ports are kept in network order (`[u8; 2]`) because the fast path copies them to and from the
//! wire; addresses are in map form (see [`crate::addr`]).

use bytemuck::{Pod, Zeroable};

use crate::{addr::Addr, impl_user_pod};

/// `LB_SERVICES` key: one load-balanced endpoint, (VIP, port, protocol).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct ServiceKey {
    pub vip: Addr,
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// `LB_SERVICES` value.
///
/// The service's lookup table is the region `LB_RING[table_off .. table_off + table_len]`; the
/// fast path reads slot [`crate::maglev::slot`]`(hash, table_len)` of it. A table change writes a
/// complete new region and then replaces this value in one map update, which the kernel makes
/// atomic for a hash map (readers see the old value or the new one, never a mix).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct ServiceInfo {
    /// Index into the per-service counters (`LB_SVC_STATS`); stable for the service's lifetime.
    pub id: u32,
    pub table_off: u32,
    /// Number of slots; 0 means the service has no eligible backend (new flows are dropped).
    pub table_len: u32,
    pub flags: u32,
    /// The endpoint's ACL set in `LB_ACL` (0: no ACL, everyone is permitted). Like the table,
    /// a rule change writes a new set under a new id and then switches this field.
    pub acl_id: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 20);

/// `LB_VIPS` key: a VIP address (any port). Lets the fast path tell "to a VIP, but malformed or
/// to a port we do not serve" (a counted drop) from "not ours" (pass), without per-port lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct VipKey {
    pub vip: Addr,
}

/// `LB_VIPS` value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct VipInfo {
    /// Number of services on this address (the agent deletes the entry at zero).
    pub services: u32,
    pub flags: u32,
    /// Internal VIP: its source set in `LB_ACL` (internal prefixes permitted, the VIP's own
    /// backends marked hairpin, everything else denied); 0 for a public VIP.
    pub ilb_id: u32,
}

/// Where a frame goes out: resolved by the agent through netlink, so the fast path does no
/// per-packet FIB lookup. `ifindex == 0` means unresolved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 16);

impl NextHop {
    #[inline(always)]
    #[must_use]
    pub const fn is_resolved(&self) -> bool {
        self.ifindex != 0
    }
}

/// `LB_BACKENDS` value, indexed by [`BackendId`]. Id 0 is never a backend: an all-zero table slot
/// means "none", which is how an empty table is spelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Backend {
    pub addr: Addr,
    pub port: [u8; 2],
    pub flags: u16,
    pub nh: NextHop,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 36);

/// [`Backend::flags`]: the entry describes a live backend. Cleared entries make conntrack entries
/// that still point at them fall back to a fresh table pick.
pub const BACKEND_F_ACTIVE: u16 = 1;

impl Backend {
    #[inline(always)]
    #[must_use]
    pub const fn is_active(&self) -> bool {
        self.flags & BACKEND_F_ACTIVE != 0
    }
}

/// Index into `LB_BACKENDS` and the value of every table slot.
pub type BackendId = u32;

/// Conntrack entry kind: packet from client to VIP; the backend comes from `backend`.
pub const CONN_FORWARD: u8 = 1;
/// Conntrack entry kind: reply from backend to client; rewrite the source to `addr:port`.
pub const CONN_REVERSE: u8 = 2;

/// `LB_CONNTRACK` value. The key is the [`crate::flow::FlowKey`] of the packet as it arrives:
/// (client → VIP) for [`CONN_FORWARD`], (backend → client) for [`CONN_REVERSE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct ConnEntry {
    /// Reverse entries: the VIP the reply's source is rewritten to.
    pub addr: Addr,
    /// Reverse entries: the VIP port.
    pub port: [u8; 2],
    pub kind: u8,
    pub _pad: u8,
    pub backend: BackendId,
    /// Service id, for the per-service reply counters.
    pub service: u32,
}
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 28);

/// Per-service and per-backend counters (per CPU; the agent sums them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Counters {
    /// Client → backend packets and bytes (frame length).
    pub packets: u64,
    pub bytes: u64,
    /// Flows that got a backend from the table (conntrack misses and SYNs).
    pub new_flows: u64,
    /// Backend → client packets and bytes.
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// New flows the endpoint's ACL denied.
    pub acl_drops: u64,
}

impl Counters {
    #[must_use]
    pub const fn add(mut self, o: &Self) -> Self {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.reply_packets += o.reply_packets;
        self.reply_bytes += o.reply_bytes;
        self.acl_drops += o.acl_drops;
        self
    }
}

/// `LB_ROUTES` key data (the LPM trie's `Key<[u8; 16]>`): a client-facing destination prefix in
/// map form; an IPv4 /p is stored with prefix length `96 + p`.
pub type RouteKeyData = Addr;

/// `LB_ACL` key data (the LPM trie's `Key<[u8; 20]>`): the ACL set id (big-endian, so its 32
/// bits come first in the match) and the source address in map form. Prefix length is
/// `32 + map-form prefix length`.
pub type AclKeyData = [u8; 20];

/// Builds `LB_ACL` key data.
#[inline(always)]
#[must_use]
pub const fn acl_key(acl_id: u32, addr: &Addr) -> AclKeyData {
    let mut k = [0u8; 20];
    let id = acl_id.to_be_bytes();
    let mut i = 0;
    // verifier: constant trip counts, unrolled.
    while i < 4 {
        k[i] = id[i];
        i += 1;
    }
    while i < 20 {
        k[i] = addr[i - 4];
        i += 1;
    }
    k
}

/// `LB_ACL` value: the verdict of the longest matching prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct AclValue {
    /// [`ACL_PERMIT`] or [`ACL_DENY`].
    pub action: u32,
    /// The deciding rule's order number, or `u32::MAX` for the default verdict.
    pub rule: u32,
}

/// [`VipInfo::flags`]: the LB does not answer ICMP echo requests to this VIP.
pub const VIP_F_NO_ECHO: u32 = 1;

/// `LB_ECHO_RL` value: a per-CPU token bucket for echo replies, in nanoseconds of credit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct RateState {
    pub credit_ns: u64,
    pub last_ns: u64,
}

pub const ACL_PERMIT: u32 = 1;
pub const ACL_DENY: u32 = 2;
/// Internal-VIP sets only: the source is a backend of the VIP connecting to the VIP itself.
pub const ACL_HAIRPIN: u32 = 3;

/// `LB_PIPS` (PIP → instance) and `LB_PIP_REV` (instance → PIP) value. Key: [`VipKey`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct PipEntry {
    /// The address the packet's destination (`LB_PIPS`) or source (`LB_PIP_REV`) becomes.
    pub addr: Addr,
    /// `LB_PIPS`: the agent-resolved next hop towards the instance (unused in `LB_PIP_REV`).
    pub nh: NextHop,
}
const _: () = assert!(core::mem::size_of::<PipEntry>() == 32);

impl_user_pod!(
    ServiceKey,
    ServiceInfo,
    VipKey,
    VipInfo,
    NextHop,
    Backend,
    ConnEntry,
    Counters,
    AclValue,
    PipEntry,
    RateState
);
