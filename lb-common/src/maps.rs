//! Map keys and values. Every type is `#[repr(C)]`, `bytemuck::Pod` (so no hidden padding), and
//! size-asserted: the XDP program and the agent read the same bytes.
//!
//! Ports are kept in network order (`[u8; 2]`) because the fast path copies them to and from the
//! wire.
//!
//! The maps are per family, as Cilium's `lb4_*`/`lb6_*`: the IPv4 maps (`*4`) hold 4-byte
//! addresses, so the IPv4 path never touches a 16-byte one. The agent plans in one
//! family-agnostic form, with addresses in map form (see [`crate::addr`]): [`ServiceKey`],
//! [`VipKey`], [`Backend`], ACL and route prefixes. Its map layer turns each into its family's
//! entry ([`ServiceKey::v4`], [`Backend::v4`], [`crate::addr::prefix_v4`]) and back. The IPv6
//! maps (`*6`) hold 16-byte addresses, in the same layouts ([`ServiceKey6`], [`Backend6`],
//! [`ConnEntry6`], [`RevKey6`], [`RevService6`]); backend ids, table slots, counters and the
//! "maybe ours" filter are shared by both families.

use bytemuck::{Pod, Zeroable};

use crate::{addr::Addr, impl_user_pod};

mod six;
pub use six::*;

/// One load-balanced endpoint, (VIP, port, protocol), in the agent's family-agnostic form;
/// the maps hold [`ServiceKey4`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct ServiceKey {
    pub vip: Addr,
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 20);

impl ServiceKey {
    /// Its `LB_SERVICES4` key, if the VIP is IPv4.
    #[must_use]
    pub fn v4(&self) -> Option<ServiceKey4> {
        crate::addr::as_v4(&self.vip).map(|a| ServiceKey4::of(a, self.port, self.proto))
    }

    /// The endpoint of an `LB_SERVICES4` key.
    #[must_use]
    pub fn from_v4(k: &ServiceKey4) -> Self {
        Self {
            vip: crate::addr::v4_mapped(k.vip),
            port: k.port,
            proto: k.proto,
            _pad: 0,
        }
    }
}

/// `LB_SERVICES4` key: an IPv4 load-balanced endpoint, (VIP, port, protocol).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C, align(4))]
pub struct ServiceKey4 {
    pub vip: [u8; 4],
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<ServiceKey4>() == 8);

impl ServiceKey4 {
    /// The key of a packet's destination, from two word stores.
    #[inline(always)]
    #[must_use]
    pub fn of(vip: [u8; 4], port: [u8; 2], proto: u8) -> Self {
        bytemuck::cast(endpoint_words(vip, port, proto))
    }
}

/// An IPv4 endpoint (address, port, protocol, a zero pad) as two words: the layout of
/// [`ServiceKey4`] and [`RevKey4`], built from word stores.
#[inline(always)]
fn endpoint_words(addr: [u8; 4], port: [u8; 2], proto: u8) -> [u32; 2] {
    [
        u32::from_ne_bytes(addr),
        u32::from_ne_bytes([port[0], port[1], proto, 0]),
    ]
}

/// `LB_SERVICES4` value.
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
    /// [`SVC_F_INTERNAL`], the distribution mode ([`SVC_DIST_MASK`]), [`SVC_F_TCP_RESET`], the
    /// data-path mode ([`SVC_FIP_MASK`]).
    pub flags: u32,
    /// The endpoint's ACL set in `LB_ACL4` (0: no ACL, everyone is permitted). Like the table,
    /// a rule change writes a new set under a new id and then switches this field.
    pub acl_id: u32,
}
const _: () = assert!(size_of::<ServiceInfo>() == 20);

/// [`ServiceInfo::flags`]: the service's VIP is internal, so a new flow's source is checked
/// against the VIP's source set (`VipInfo::ilb_id`). Public services skip that lookup.
pub const SVC_F_INTERNAL: u32 = 1;
/// [`ServiceInfo::flags`]: the service's distribution mode (`crate::hash::dist`), in bits
/// 1–2.
pub const SVC_DIST_SHIFT: u32 = 1;
pub const SVC_DIST_MASK: u32 = 0b11 << SVC_DIST_SHIFT;
/// [`ServiceInfo::flags`]: TCP reset on idle. New TCP flows record the client's sequence
/// numbers ([`crate::conn::CT_F_SEQ`]), so the sweeper can reset both sides when they expire.
pub const SVC_F_TCP_RESET: u32 = 1 << 3;
/// [`ServiceInfo::flags`]: the service's data-path mode (`crate::encap::mode`: DNAT, or a
/// floating-IP mode), in bits 4–5.
pub const SVC_FIP_SHIFT: u32 = 4;
pub const SVC_FIP_MASK: u32 = 0b11 << SVC_FIP_SHIFT;

impl ServiceInfo {
    /// The service's distribution mode (`crate::hash::dist`).
    #[inline(always)]
    #[must_use]
    pub const fn distribution(&self) -> u32 {
        (self.flags & SVC_DIST_MASK) >> SVC_DIST_SHIFT
    }

    /// The service's data-path mode (`crate::encap::mode`).
    #[inline(always)]
    #[must_use]
    pub const fn floating_ip(&self) -> u32 {
        (self.flags & SVC_FIP_MASK) >> SVC_FIP_SHIFT
    }
}

/// A VIP address (any port), in the agent's form; `LB_VIPS4` is keyed by the 4-byte address.
/// Lets the fast path tell "to a VIP, but malformed or to a port we do not serve" (a counted
/// drop) from "not ours" (pass), without per-port lookups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
#[repr(C)]
pub struct VipKey {
    pub vip: Addr,
}

/// `LB_VIPS4` value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct VipInfo {
    /// Number of services on this address (the agent deletes the entry at zero).
    pub services: u32,
    pub flags: u32,
    /// Internal VIP: its source set in `LB_ACL4` (internal prefixes permitted, the VIP's own
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
const _: () = assert!(size_of::<NextHop>() == 16);

impl NextHop {
    #[inline(always)]
    #[must_use]
    pub const fn is_resolved(&self) -> bool {
        self.ifindex != 0
    }
}

/// A backend, indexed by [`BackendId`], in the agent's family-agnostic form; `LB_BACKENDS4`
/// holds [`Backend4`]. Id 0 is never a backend: an all-zero table slot means "none", which is
/// how an empty table is spelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Backend {
    pub addr: Addr,
    pub port: [u8; 2],
    pub flags: u8,
    /// The service's protocol: with `addr` and `port`, the key of the backend's reverse-service
    /// entry (`LB_REVSVC4`).
    pub proto: u8,
    pub nh: NextHop,
    /// The service id (`ServiceInfo::id`) this entry belongs to: each (service, backend) pair
    /// has its own id. The fast path does not read it; a restarted agent does, to adopt the
    /// live entries of each service instead of re-allocating them (see the agent's
    /// `Reconciler::start`).
    pub service: u32,
    /// The MTU of the link [`Self::nh`] leaves by, from the agent's netlink view (0: not
    /// known, with an unresolved next hop). Read only for an encapsulating floating-IP
    /// service: a packet that would exceed it once encapsulated is answered with "too big".
    pub mtu: u32,
}
const _: () = assert!(size_of::<Backend>() == 44);

/// [`Backend::flags`]: the entry describes a live backend. Cleared entries make conntrack entries
/// that still point at them fall back to a fresh table pick.
pub const BACKEND_F_ACTIVE: u8 = 1;

impl Backend {
    #[inline(always)]
    #[must_use]
    pub const fn is_active(&self) -> bool {
        self.flags & BACKEND_F_ACTIVE != 0
    }

    /// Its `LB_BACKENDS4` entry, if the address is IPv4.
    #[must_use]
    pub fn v4(&self) -> Option<Backend4> {
        crate::addr::as_v4(&self.addr).map(|addr| Backend4 {
            addr,
            port: self.port,
            flags: self.flags,
            proto: self.proto,
            nh: self.nh,
            service: self.service,
            mtu: self.mtu,
        })
    }

    /// The backend of an `LB_BACKENDS4` entry.
    #[must_use]
    pub fn from_v4(b: &Backend4) -> Self {
        Self {
            addr: crate::addr::v4_mapped(b.addr),
            port: b.port,
            flags: b.flags,
            proto: b.proto,
            nh: b.nh,
            service: b.service,
            mtu: b.mtu,
        }
    }
}

/// `LB_BACKENDS4` value, indexed by [`BackendId`]: an IPv4 backend (see [`Backend`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Backend4 {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub flags: u8,
    /// The service's protocol: with `addr` and `port`, the key of the backend's reverse-service
    /// entry (`LB_REVSVC4`).
    pub proto: u8,
    pub nh: NextHop,
    /// The service id this entry belongs to (read by a restarted agent, not the fast path).
    pub service: u32,
    /// As [`Backend::mtu`].
    pub mtu: u32,
}
const _: () = assert!(size_of::<Backend4>() == 32);

impl Backend4 {
    #[inline(always)]
    #[must_use]
    pub const fn is_active(&self) -> bool {
        self.flags & BACKEND_F_ACTIVE != 0
    }
}

/// The port a flow is sent to at a backend whose own port is `backend_port`: that port, or
/// for an HA-ports backend (port 0: it answers on every port) the port the client sent to,
/// `sent_to`. Both families' translations use it: forward packets and the ICMP errors that
/// reach the backend about its flows.
#[inline(always)]
#[must_use]
pub const fn port_at(backend_port: [u8; 2], sent_to: [u8; 2]) -> [u8; 2] {
    if backend_port[0] == 0 && backend_port[1] == 0 {
        sent_to
    } else {
        backend_port
    }
}

/// Index into `LB_BACKENDS4` and the value of every table slot.
pub type BackendId = u32;

/// Conntrack entry kind: packet from client to VIP; the backend comes from `backend`.
pub const CONN_FORWARD: u8 = 1;
/// Conntrack entry kind: reply from backend to client; rewrite the source to `addr:port`.
pub const CONN_REVERSE: u8 = 2;
/// Conntrack entry kind: a backend connecting to its own internal VIP with `--hairpin snat`
/// (key: backend → VIP, as it arrives). The destination becomes `backend`, and the source
/// becomes the VIP (the key's destination) with SNAT port `port`.
pub const CONN_HAIRPIN: u8 = 3;
/// Conntrack entry kind: the reply of a hairpin flow (key: chosen backend → VIP:SNAT port). The
/// source becomes the VIP with port `vport`, the destination the connecting backend `addr:port`,
/// sent through backend `peer`'s next hop.
pub const CONN_HAIRPIN_REV: u8 = 4;
/// Conntrack entry kind: a covered backend's outbound flow (key: backend → remote, as it
/// arrives). The source becomes the frontend `addr` with port `port`; `service` is
/// `outbound::OUT_SERVICE_FLAG | rule`, and the flow's TCP state is kept here.
pub const CONN_OUTBOUND: u8 = 5;
/// Conntrack entry kind: an outbound flow returning (key: remote → frontend:port). The
/// destination becomes the backend `addr:port`, sent through its `LB_OUTBOUND4` next hop.
pub const CONN_OUTBOUND_REV: u8 = 6;

/// First SNAT source port of hairpin flows: the IANA dynamic range 49152..=65535.
pub const HAIRPIN_PORT_BASE: u16 = 49_152;
/// Number of ports in the hairpin SNAT range.
pub const HAIRPIN_PORTS: u16 = 16_384;
/// Candidate SNAT ports tried for one new hairpin flow before it is dropped
/// (`drop_hairpin_no_port`). A bounded loop for the verifier.
pub const HAIRPIN_PORT_TRIES: u32 = 4;

/// The `attempt`th candidate SNAT port of a hairpin flow whose flow hash is `hash`: inside
/// [`HAIRPIN_PORT_BASE`]`..`, and a different port on every attempt (consecutive candidates are
/// a fixed odd stride apart, modulo the power-of-two range). It uses the hash's upper half; the
/// backend pick uses it whole (mostly its low bits), so the two do not simply repeat each other.
#[inline(always)]
#[must_use]
pub const fn hairpin_port(hash: u32, attempt: u32) -> u16 {
    let h = hash.rotate_left(16);
    let off = (h.wrapping_add(attempt.wrapping_mul(7_919))) % HAIRPIN_PORTS as u32;
    #[expect(clippy::cast_possible_truncation, reason = "off < HAIRPIN_PORTS")]
    let off = off as u16;
    HAIRPIN_PORT_BASE + off
}

/// `LB_CONNTRACK4` value. The key is the [`crate::flow::FlowKey4`] of the packet as it arrives.
///
/// A plain flow has **one** entry, its forward one ([`CONN_FORWARD`], client → VIP): a reply
/// finds it through the backend's reverse-service entry ([`RevService4`]), which gives the VIP
/// and port the reply's flow was addressed to. Reverse entries ([`CONN_REVERSE`], keyed by the
/// reply's own 5-tuple) are written only for flows to a backend whose address and port serve
/// several services ([`REV_F_SHARED`]), and hairpin flows keep both of theirs.
///
/// Built from whole fields (no `..Default::default()`), so no `memset` is emitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct ConnEntry4 {
    pub backend: BackendId,
    /// Service id, for the per-service reply counters and the sweeper's timeouts.
    pub service: u32,
    pub kind: u8,
    /// Forward entries: the TCP state seen so far ([`crate::conn`]'s `CT_*` bits).
    pub tcp: u8,
    /// Reverse entries: the VIP port. Hairpin entries: the SNAT port (forward) or the connecting
    /// backend's port (reverse).
    pub port: [u8; 2],
    /// Reverse entries: the VIP. Hairpin reverse entries: the connecting backend.
    pub addr: [u8; 4],
    /// Hairpin reverse entries: the VIP port the reply's source becomes.
    pub vport: [u8; 2],
    /// Forward entries: [`crate::conn::CT_F_SEQ`] (the client's sequence numbers are recorded).
    pub flags: u8,
    pub _pad: u8,
    /// Hairpin entries: the connecting backend (whose next hop a hairpin reply takes); 0 for
    /// every other kind.
    pub peer: BackendId,
    /// Seconds of the monotonic clock when the flow was last seen, refreshed at most once a
    /// second ([`crate::conn::refreshes`]); once the flow is closed, when it closed (a closed
    /// flow's packets no longer refresh it). The sweeper expires flows by it.
    pub seen_s: u32,
    /// With [`crate::conn::CT_F_SEQ`]: the sequence number the backend expects next from the
    /// client (its last packet's sequence number plus its length), and the client's last
    /// acknowledgement (what the client expects next), host order. What TCP reset on idle
    /// needs to send each side a RST it accepts.
    pub seq: u32,
    pub ack: u32,
    /// Seconds of the same clock when the entry was made: the flow's age (`lb flows`). A new
    /// flow's entry is written whole, so this costs no write of its own.
    pub created_s: u32,
}
const _: () = assert!(size_of::<ConnEntry4>() == 40);

impl ConnEntry4 {
    /// Whether the entry tracks a client → VIP direction (plain or hairpin).
    #[inline(always)]
    #[must_use]
    pub const fn is_forward(&self) -> bool {
        self.kind == CONN_FORWARD || self.kind == CONN_HAIRPIN
    }

    /// An entry from its fields, as ten word stores, seen and made at `seen_s` (no flags, no sequence
    /// numbers). size: a struct literal with zero fields compiled to a `memset` call, and so did
    /// four constant zero words in a row (LLVM merges them, and the BPF backend emits the merged
    /// store as a call): the zero words come from an opaque zero (`black_box`), which the
    /// optimiser cannot merge.
    #[inline(always)]
    #[must_use]
    #[expect(clippy::too_many_arguments, reason = "one per field; inlined")]
    pub fn new(
        backend: BackendId,
        service: u32,
        kind: u8,
        tcp: u8,
        port: [u8; 2],
        addr: [u8; 4],
        vport: [u8; 2],
        peer: BackendId,
        seen_s: u32,
    ) -> Self {
        let zero = core::hint::black_box(0u32);
        bytemuck::cast([
            backend,
            service,
            u32::from_ne_bytes([kind, tcp, port[0], port[1]]),
            u32::from_ne_bytes(addr) | zero,
            u32::from_ne_bytes([vport[0], vport[1], 0, 0]) | zero,
            peer | zero,
            seen_s | zero,
            zero,
            zero,
            seen_s | zero,
        ])
    }

    /// The entry as its ten 4-byte words (the fast path writes an entry in place word by
    /// word: a whole-struct copy compiles to a `memmove` call).
    #[inline(always)]
    #[must_use]
    pub fn words(&self) -> [u32; 10] {
        bytemuck::cast(*self)
    }

    /// A plain flow's forward entry, seen and made at `seen_s`, with `flags` (`conn::CT_F_*`) and the
    /// client's sequence numbers (`seq`, `ack`; 0 unless `CT_F_SEQ`).
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
            zero,
            u32::from_ne_bytes([0, 0, flags, 0]) | zero,
            zero,
            seen_s | zero,
            seq | zero,
            ack | zero,
            seen_s | zero,
        ])
    }
}

/// A backend endpoint (address, port, protocol), in the agent's family-agnostic form: the
/// key of its reverse-service entry, [`RevKey4`] or [`RevKey6`] in the maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
#[repr(C)]
pub struct RevKey {
    pub addr: Addr,
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

impl RevKey {
    #[must_use]
    pub const fn of(addr: Addr, port: [u8; 2], proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }

    /// Its `LB_REVSVC4` key, if the address is IPv4.
    #[must_use]
    pub fn v4(&self) -> Option<RevKey4> {
        crate::addr::as_v4(&self.addr).map(|a| RevKey4::of(a, self.port, self.proto))
    }

    /// Its `LB_REVSVC6` key, if the address is IPv6.
    #[must_use]
    pub fn v6(&self) -> Option<RevKey6> {
        crate::addr::as_v6(&self.addr).map(|a| RevKey6::of(a, self.port, self.proto))
    }

    #[must_use]
    pub fn from_v4(k: &RevKey4) -> Self {
        Self::of(crate::addr::v4_mapped(k.addr), k.port, k.proto)
    }

    #[must_use]
    pub const fn from_v6(k: &RevKey6) -> Self {
        Self::of(k.addr, k.port, k.proto)
    }
}

/// A reverse-service entry in the agent's family-agnostic form ([`RevService4`],
/// [`RevService6`] in the maps): the VIP's family is its backend's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct RevService {
    pub vip: Addr,
    pub vport: [u8; 2],
    pub flags: u16,
    pub service: u32,
    pub backend: BackendId,
}

impl RevService {
    /// Its `LB_REVSVC4` value, if the VIP is IPv4.
    #[must_use]
    pub fn v4(&self) -> Option<RevService4> {
        crate::addr::as_v4(&self.vip).map(|vip| RevService4 {
            vip,
            vport: self.vport,
            flags: self.flags,
            service: self.service,
            backend: self.backend,
        })
    }

    /// Its `LB_REVSVC6` value, if the VIP is IPv6.
    #[must_use]
    pub fn v6(&self) -> Option<RevService6> {
        crate::addr::as_v6(&self.vip).map(|vip| RevService6 {
            vip,
            vport: self.vport,
            flags: self.flags,
            service: self.service,
            backend: self.backend,
        })
    }

    #[must_use]
    pub fn from_v4(v: &RevService4) -> Self {
        Self {
            vip: crate::addr::v4_mapped(v.vip),
            vport: v.vport,
            flags: v.flags,
            service: v.service,
            backend: v.backend,
        }
    }

    #[must_use]
    pub const fn from_v6(v: &RevService6) -> Self {
        Self {
            vip: v.vip,
            vport: v.vport,
            flags: v.flags,
            service: v.service,
            backend: v.backend,
        }
    }
}

/// `LB_REVSVC4` key: a backend's (address, port, protocol), as its replies carry them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
#[repr(C, align(4))]
pub struct RevKey4 {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<RevKey4>() == 8);

impl RevKey4 {
    /// The key of a reply's source, from two word stores.
    #[inline(always)]
    #[must_use]
    pub fn of(addr: [u8; 4], port: [u8; 2], proto: u8) -> Self {
        bytemuck::cast(endpoint_words(addr, port, proto))
    }
}

/// `LB_REVSVC4` value: the service a backend address:port:protocol serves, so that a reply
/// from it finds its flow's forward entry, `(client, vip, client port, vport, proto)`, and is
/// translated only if that entry exists and names `backend`. Written by the agent for every
/// active backend endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct RevService4 {
    pub vip: [u8; 4],
    pub vport: [u8; 2],
    pub flags: u16,
    pub service: u32,
    /// The backend id of this endpoint in `service`.
    pub backend: BackendId,
}
const _: () = assert!(size_of::<RevService4>() == 16);

/// [`RevService4::flags`]: the endpoint serves several services. New flows to it also write a
/// reverse entry keyed by the reply's 5-tuple, which a reply looks up first; `vip`, `vport`,
/// `service` and `backend` name the service it served first, whose older flows may have none.
pub const REV_F_SHARED: u16 = 1;
/// [`RevService4::flags`]: the endpoint's service has `replies = "stateless"`: every packet
/// from the endpoint is its reply and is translated from this entry alone, without looking for
/// its flow, unless it goes to one of the LB's own addresses (`LB_LOCAL4`: its probes). The
/// agent sets it only on an endpoint of one service, and never with [`REV_F_SHARED`].
pub const REV_F_STATELESS: u16 = 2;

/// Per-service and per-backend counters (per CPU; the agent sums them).
///
/// One record per packet: the fast path counts a flow's packets and bytes, both ways, and its
/// new flows in its backend's record only (`LB_BE_STATS`; every (service, backend) pair has its
/// own id). A service's record (`LB_SVC_STATS`) holds what has no backend or is the service's
/// alone: `acl_drops`, `conntrack_misses`, `untracked_flows`. The agent reports a service's
/// totals as its record, plus its live backends' records, plus `LB_SVC_RETIRED`, where it adds
/// a backend's record when it retires the backend ([`Counters::service_total`]).
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
    /// Packets that were not a SYN but found no conntrack entry (evicted by the LRU under
    /// pressure, or never seen): re-picked from the table, which gives the same backend while
    /// the backend set is unchanged.
    pub conntrack_misses: u64,
    /// New flows the flood guard forwarded by the table without tracking them (the CPU was
    /// over its new-flow rate): their next packets are re-picked, to the same backend while
    /// the backend set is unchanged.
    pub untracked_flows: u64,
}

impl Counters {
    /// A service's totals: its own record, its retired backends' sum, and the records of its
    /// live backends (see the type's doc).
    #[must_use]
    pub fn service_total<'a>(
        own: &Self,
        retired: &Self,
        backends: impl IntoIterator<Item = &'a Self>,
    ) -> Self {
        backends.into_iter().fold(own.add(retired), Self::add)
    }

    /// What was counted since `o`, an earlier reading of the same record (never below zero).
    #[must_use]
    pub const fn since(mut self, o: &Self) -> Self {
        self.packets = self.packets.saturating_sub(o.packets);
        self.bytes = self.bytes.saturating_sub(o.bytes);
        self.new_flows = self.new_flows.saturating_sub(o.new_flows);
        self.reply_packets = self.reply_packets.saturating_sub(o.reply_packets);
        self.reply_bytes = self.reply_bytes.saturating_sub(o.reply_bytes);
        self.acl_drops = self.acl_drops.saturating_sub(o.acl_drops);
        self.conntrack_misses = self.conntrack_misses.saturating_sub(o.conntrack_misses);
        self.untracked_flows = self.untracked_flows.saturating_sub(o.untracked_flows);
        self
    }

    #[must_use]
    pub const fn add(mut self, o: &Self) -> Self {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.reply_packets += o.reply_packets;
        self.reply_bytes += o.reply_bytes;
        self.acl_drops += o.acl_drops;
        self.conntrack_misses += o.conntrack_misses;
        self.untracked_flows += o.untracked_flows;
        self
    }
}

/// `LB_ROUTES4` key data (the LPM trie's `Key<[u8; 4]>`): a client-facing IPv4 destination
/// prefix, with its own length (0..=32).
pub type RouteKey4 = [u8; 4];

/// `LB_ACL4` key data (the LPM trie's `Key<[u8; 8]>`): the ACL set id (big-endian, so its 32
/// bits come first in the match), then the IPv4 source. Prefix length is `32 + p`.
pub type AclKey4 = [u8; 8];

/// Builds `LB_ACL4` key data from two words.
#[inline(always)]
#[must_use]
pub fn acl_key4(acl_id: u32, a: [u8; 4]) -> AclKey4 {
    bytemuck::cast([
        u32::from_ne_bytes(acl_id.to_be_bytes()),
        u32::from_ne_bytes(a),
    ])
}

/// `LB_ACL4` value: the verdict of the longest matching prefix.
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
/// [`VipInfo::flags`]: an internal VIP whose own backends may connect to it (`--hairpin snat`):
/// their flows are also source-NATed to the VIP, so replies come back through the LB.
pub const VIP_F_HAIRPIN_SNAT: u32 = 2;
/// [`VipInfo::flags`]: the VIP has HA ports (`ADDR:0/any`): a TCP or UDP packet to a port no
/// exact service has is looked up again as (VIP, port 0, protocol), and keeps its port. Only
/// such VIPs pay that second lookup.
pub const VIP_F_HA_PORTS: u32 = 4;

/// `LB_ECHO_RL` and `LB_FLOW_RL` value: a per-CPU token bucket, in nanoseconds of credit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct RateState {
    pub credit_ns: u64,
    pub last_ns: u64,
}

impl RateState {
    /// Takes one token at `now_ns` if the bucket has one: each token costs `cost_ns` of
    /// credit, credit accrues at one nanosecond per nanosecond up to `cap_ns` (the burst).
    /// The one rule of the echo-reply limit and the flood guard.
    #[inline(always)]
    pub const fn take(&mut self, now_ns: u64, cost_ns: u64, cap_ns: u64) -> bool {
        let mut credit = self.credit_ns + now_ns.saturating_sub(self.last_ns);
        if credit > cap_ns {
            credit = cap_ns;
        }
        self.last_ns = now_ns;
        if credit < cost_ns {
            self.credit_ns = credit;
            return false;
        }
        self.credit_ns = credit - cost_ns;
        true
    }
}

/// The flood guard's bucket for `rate` new flows per second per CPU: the cost of one flow
/// and the burst (a tenth of a second's worth, at least one flow), in nanoseconds. `None`
/// for rate 0, which turns the guard off.
#[must_use]
pub const fn flow_bucket(rate: u64) -> Option<(u64, u64)> {
    if rate == 0 {
        return None;
    }
    let cost = 1_000_000_000 / rate;
    let cost = if cost == 0 { 1 } else { cost };
    let burst = if rate / 10 == 0 { 1 } else { rate / 10 };
    Some((cost, cost * burst))
}

pub const ACL_PERMIT: u32 = 1;
pub const ACL_DENY: u32 = 2;
/// Internal-VIP sets only: the source is a backend of the VIP connecting to the VIP itself.
/// The entry's [`AclValue::rule`] is then that backend's id (one of them, if the address backs
/// several services of the VIP): hairpin replies go out through its next hop.
pub const ACL_HAIRPIN: u32 = 3;

/// `LB_PIPS4` (PIP → instance) and `LB_PIP_REV4` (instance → PIP) value, keyed by the 4-byte
/// address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct PipEntry4 {
    /// The address the packet's destination (`LB_PIPS4`) or source (`LB_PIP_REV4`) becomes.
    pub addr: [u8; 4],
    /// `LB_PIPS4`: the agent-resolved next hop towards the instance (unused in `LB_PIP_REV4`).
    pub nh: NextHop,
}
const _: () = assert!(size_of::<PipEntry4>() == 20);

/// Words of the "maybe ours" filter (`LB_OURS4`): 64 Ki bits, 8 KiB.
pub const OURS_WORDS: u32 = 1024;

/// Where an IPv4 address sits in the "maybe ours" filter: its word and bit. A bit is set when
/// some address the fast path must look at hashes to it: a VIP or a PIP (as a destination), a
/// backend or a PIP's instance (as a source). A TCP/UDP packet whose destination and source
/// bits are both clear is none of ours and passes after two array reads, which the verifier
/// inlines, instead of five hash lookups that miss. A set bit only means "look it up": a
/// collision costs the lookups, never a wrong verdict.
#[inline(always)]
#[must_use]
pub const fn ours_bit(a: [u8; 4]) -> (u32, u64) {
    // Fibonacci hashing: the top 16 bits of the product spread every address byte.
    let h = u32::from_le_bytes(a).wrapping_mul(0x9e37_79b1) >> 16;
    (h >> 6, 1u64 << (h & 63))
}

/// The filter place of an address in map form, whichever its family.
#[must_use]
pub fn ours_bit_of(a: &Addr) -> (u32, u64) {
    match crate::addr::as_v4(a) {
        Some(v4) => ours_bit(v4),
        None => ours_bit6(*a),
    }
}

impl_user_pod!(
    ServiceKey,
    ServiceKey4,
    ServiceInfo,
    VipKey,
    VipInfo,
    NextHop,
    Backend,
    Backend4,
    ConnEntry4,
    RevKey4,
    RevService4,
    Counters,
    AclValue,
    PipEntry4,
    RateState
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_rate_of_zero_turns_the_guard_off() {
        assert_eq!(flow_bucket(0), None);
        assert_eq!(flow_bucket(125_000), Some((8_000, 8_000 * 12_500)));
    }

    proptest! {
        /// The word-built keys are the byte layouts the agent reads back: an ACL key is the
        /// set id big-endian, then the address; a service key the address, port, protocol and
        /// a zero pad; and the family-agnostic forms round-trip through them.
        #[test]
        fn word_built_keys_have_their_layouts(id in any::<u32>(), a in any::<[u8; 4]>(), port in any::<[u8; 2]>(), proto in any::<u8>()) {
            let acl = acl_key4(id, a);
            prop_assert_eq!(&acl[..4], &id.to_be_bytes());
            prop_assert_eq!(&acl[4..], &a);
            let k = ServiceKey4::of(a, port, proto);
            prop_assert_eq!(k, ServiceKey4 { vip: a, port, proto, _pad: 0 });
            prop_assert_eq!(ServiceKey::from_v4(&k).v4(), Some(k));
            let b = Backend4 { addr: a, port, flags: BACKEND_F_ACTIVE, proto, nh: NextHop::default(), service: id, mtu: 0 };
            prop_assert_eq!(Backend::from_v4(&b).v4(), Some(b));
        }

        /// A word-built IPv6 hairpin entry has its fields where the named-field form puts
        /// them (the sweeper and `lb flows` read it by field).
        #[test]
        fn a_word_built_hairpin6_entry_has_its_fields(b in any::<u32>(), svc in any::<u32>(), port in any::<[u8; 2]>(), addr in any::<[u8; 16]>(), vport in any::<[u8; 2]>(), peer in any::<u32>(), now in any::<u32>()) {
            let e = ConnEntry6::hairpin(b, svc, CONN_HAIRPIN_REV, port, addr, vport, peer, now);
            prop_assert_eq!(e, ConnEntry6 {
                backend: b, service: svc, kind: CONN_HAIRPIN_REV, tcp: 0, port, vport, flags: 0,
                _pad: 0, peer, seen_s: now, seq: 0, ack: 0, created_s: now, addr,
            });
            prop_assert!(!e.is_forward());
            prop_assert!(ConnEntry6::hairpin(b, svc, CONN_HAIRPIN, port, addr, vport, peer, now).is_forward());
            prop_assert_eq!(ConnEntry6::reverse(b, svc, port, addr, now), ConnEntry6 {
                backend: b, service: svc, kind: CONN_REVERSE, tcp: 0, port, vport: [0; 2],
                flags: 0, _pad: 0, peer: 0, seen_s: now, seq: 0, ack: 0, created_s: now, addr,
            });
        }

        /// The bucket never grants more than its burst plus what accrued: over any sequence of
        /// takes in `t` ns, at most `cap / cost + t / cost + 1` succeed; and a full bucket
        /// grants the burst at once.
        #[test]
        fn a_bucket_grants_its_rate_and_burst(rate in 1u64..2_000_000, steps in prop::collection::vec(0u64..50_000, 1..400)) {
            let (cost, cap) = flow_bucket(rate).unwrap();
            let mut s = RateState { credit_ns: cap, last_ns: 0 };
            let (mut now, mut granted) = (0u64, 0u64);
            for d in &steps {
                now += d;
                granted += u64::from(s.take(now, cost, cap));
            }
            prop_assert!(granted <= cap / cost + now / cost + 1, "{granted} granted");
            let mut full = RateState { credit_ns: cap, last_ns: 0 };
            let burst = (0..cap / cost).filter(|_| full.take(0, cost, cap)).count() as u64;
            prop_assert_eq!(burst, cap / cost);
            prop_assert!(!full.take(0, cost, cap));
        }

        /// The filter position of an address is always in range, a single bit, and spreads:
        /// 200 addresses of one /24 fall on at least 150 distinct bits.
        #[test]
        fn ours_bits_are_in_range_and_spread(net in any::<[u8; 3]>()) {
            let mut bits = std::collections::HashSet::new();
            for last in 0..200u8 {
                let (w, m) = ours_bit([net[0], net[1], net[2], last]);
                prop_assert!(w < OURS_WORDS);
                prop_assert_eq!(m.count_ones(), 1);
                bits.insert((w, m));
            }
            prop_assert!(bits.len() >= 150, "{} distinct bits", bits.len());
        }

        /// Every candidate SNAT port is in the dynamic range, and the tries of one flow are
        /// distinct ports (so a flow really gets `HAIRPIN_PORT_TRIES` chances).
        #[test]
        fn hairpin_ports_are_in_range_and_distinct(hash in any::<u32>()) {
            let ports: Vec<u16> = (0..HAIRPIN_PORT_TRIES).map(|a| hairpin_port(hash, a)).collect();
            for p in &ports {
                prop_assert!(*p >= HAIRPIN_PORT_BASE);
            }
            let mut d = ports.clone();
            d.sort_unstable();
            d.dedup();
            prop_assert_eq!(d.len(), ports.len());
        }
    }
}
