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
const _: () = assert!(size_of::<ServiceKey>() == 20);

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
    /// [`SVC_F_INTERNAL`].
    pub flags: u32,
    /// The endpoint's ACL set in `LB_ACL` (0: no ACL, everyone is permitted). Like the table,
    /// a rule change writes a new set under a new id and then switches this field.
    pub acl_id: u32,
}
const _: () = assert!(size_of::<ServiceInfo>() == 20);

/// [`ServiceInfo::flags`]: the service's VIP is internal, so a new flow's source is checked
/// against the VIP's source set (`VipInfo::ilb_id`). Public services skip that lookup.
pub const SVC_F_INTERNAL: u32 = 1;

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
const _: () = assert!(size_of::<NextHop>() == 16);

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
}
const _: () = assert!(size_of::<Backend>() == 40);

/// [`Backend::flags`]: the entry describes a live backend. Cleared entries make conntrack entries
/// that still point at them fall back to a fresh table pick.
pub const BACKEND_F_ACTIVE: u8 = 1;

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
/// Conntrack entry kind: a backend connecting to its own internal VIP with `--hairpin snat`
/// (key: backend → VIP, as it arrives). The destination becomes `backend`, and the source
/// becomes the VIP (the key's destination) with SNAT port `port`.
pub const CONN_HAIRPIN: u8 = 3;
/// Conntrack entry kind: the reply of a hairpin flow (key: chosen backend → VIP:SNAT port). The
/// source becomes the VIP with port `vport`, the destination the connecting backend `addr:port`,
/// sent through backend `peer`'s next hop.
pub const CONN_HAIRPIN_REV: u8 = 4;

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
    /// Service id, for the per-service reply counters.
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
    pub _pad: [u8; 2],
    /// Hairpin entries: the connecting backend (whose next hop a hairpin reply takes); 0 for
    /// every other kind.
    pub peer: BackendId,
    /// When the flow closed (a RST, or a FIN each way), in seconds of the monotonic clock;
    /// meaningful only while the state says closed.
    pub closed_s: u32,
}
const _: () = assert!(size_of::<ConnEntry4>() == 28);

impl ConnEntry4 {
    /// Whether the entry tracks a client → VIP direction (plain or hairpin).
    #[inline(always)]
    #[must_use]
    pub const fn is_forward(&self) -> bool {
        self.kind == CONN_FORWARD || self.kind == CONN_HAIRPIN
    }

    /// An entry from its fields, as seven word stores. size: a struct literal with zero fields
    /// compiled to a `memset` call, and so did four constant zero words in a row (LLVM merges
    /// them, and the BPF backend emits the merged store as a call): the zero words come from
    /// an opaque zero (`black_box`), which the optimiser cannot merge.
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
    ) -> Self {
        let zero = core::hint::black_box(0u32);
        bytemuck::cast([
            backend,
            service,
            u32::from_ne_bytes([kind, tcp, port[0], port[1]]),
            u32::from_ne_bytes(addr) | zero,
            u32::from_ne_bytes([vport[0], vport[1], 0, 0]) | zero,
            peer | zero,
            zero,
        ])
    }

    /// A plain flow's forward entry.
    #[inline(always)]
    #[must_use]
    pub fn forward(backend: BackendId, service: u32, tcp: u8) -> Self {
        Self::new(
            backend,
            service,
            CONN_FORWARD,
            tcp,
            [0; 2],
            [0; 4],
            [0; 2],
            0,
        )
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
        bytemuck::cast([
            u32::from_ne_bytes(addr),
            u32::from_ne_bytes([port[0], port[1], proto, 0]),
        ])
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

/// `LB_ROUTES` key data (the LPM trie's `Key<[u8; 16]>`): a client-facing destination prefix in
/// map form; an IPv4 /p is stored with prefix length `96 + p`.
pub type RouteKeyData = Addr;

/// An LPM trie key (`prefix_len`, then the data) for an IPv4 address in map form: the five
/// words of aya's packed `Key<[u8; 16]>`, built as words in an aligned buffer that the caller
/// passes by pointer. verifier and size: `Key::new` on the packed struct stored the mapped
/// address's ten-byte zero prefix with a byte-wise `memset` call.
#[inline(always)]
#[must_use]
pub fn lpm_key_v4(prefix_len: u32, a: [u8; 4]) -> [u32; 5] {
    [
        prefix_len,
        0,
        0,
        u32::from_ne_bytes([0, 0, 0xff, 0xff]),
        u32::from_ne_bytes(a),
    ]
}

/// An `LB_ACL` key (`prefix_len`, set id, source address in map form) for an IPv4 source, as
/// the six words of aya's packed `Key<[u8; 20]>` (see [`lpm_key_v4`]).
#[inline(always)]
#[must_use]
pub fn acl_key_v4(prefix_len: u32, acl_id: u32, a: [u8; 4]) -> [u32; 6] {
    [
        prefix_len,
        u32::from_ne_bytes(acl_id.to_be_bytes()),
        0,
        0,
        u32::from_ne_bytes([0, 0, 0xff, 0xff]),
        u32::from_ne_bytes(a),
    ]
}

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
/// [`VipInfo::flags`]: an internal VIP whose own backends may connect to it (`--hairpin snat`):
/// their flows are also source-NATed to the VIP, so replies come back through the LB.
pub const VIP_F_HAIRPIN_SNAT: u32 = 2;

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

/// `LB_PIPS` (PIP → instance) and `LB_PIP_REV` (instance → PIP) value. Key: [`VipKey`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct PipEntry {
    /// The address the packet's destination (`LB_PIPS`) or source (`LB_PIP_REV`) becomes.
    pub addr: Addr,
    /// `LB_PIPS`: the agent-resolved next hop towards the instance (unused in `LB_PIP_REV`).
    pub nh: NextHop,
}
const _: () = assert!(size_of::<PipEntry>() == 32);

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

impl_user_pod!(
    ServiceKey,
    ServiceInfo,
    VipKey,
    VipInfo,
    NextHop,
    Backend,
    ConnEntry4,
    RevKey4,
    RevService4,
    Counters,
    AclValue,
    PipEntry,
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
        /// The fast path's word-built LPM keys are exactly the agent's: `acl_key_v4` is the
        /// prefix length then `acl_key` of the mapped address, `lpm_key_v4` the prefix length
        /// then the mapped address (the byte layout of aya's packed `Key`).
        #[test]
        fn word_built_lpm_keys_match_the_agents(len in any::<u32>(), id in any::<u32>(), a in any::<[u8; 4]>()) {
            let mapped = crate::addr::v4_mapped(a);
            let acl: [u8; 24] = bytemuck::cast(acl_key_v4(len, id, a));
            prop_assert_eq!(&acl[..4], &len.to_ne_bytes());
            prop_assert_eq!(&acl[4..], &acl_key(id, &mapped));
            let route: [u8; 20] = bytemuck::cast(lpm_key_v4(len, a));
            prop_assert_eq!(&route[..4], &len.to_ne_bytes());
            prop_assert_eq!(&route[4..], &mapped);
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
