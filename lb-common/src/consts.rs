//! Limits, defaults and map names: one list that both sides read.

/// Default capacity of the service map (VIP, port, protocol).
pub const MAX_SERVICES: u32 = 65_536;
/// Capacity of the backend array. Id 0 is reserved, so at most `MAX_BACKENDS - 1` backends.
pub const MAX_BACKENDS: u32 = 65_536;
/// Default number of flows the conntrack LRU holds (one entry per flow; flows to a backend
/// endpoint shared by several services, and hairpin flows, use two).
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 1 << 20;
/// Default number of slots in the shared lookup-table array (`LB_RING`), 32 MiB of `u32`.
/// Every service owns a region of `table_size` slots, and a table change needs a second region
/// while it is swapped in, so this holds ~127 services at the default table size.
pub const DEFAULT_RING_SLOTS: u32 = 1 << 23;
/// Default per-service lookup-table size. A prime, as Maglev requires (katran uses the same).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Largest allowed per-service table size.
pub const MAX_TABLE_SIZE: u32 = 1 << 20;
/// Capacity of the client-facing next-hop LPM trie.
pub const MAX_ROUTES: u32 = 16_384;
/// Echo replies per second the LB sends for VIPs, per CPU.
pub const ECHO_RATE_PER_SEC: u64 = 100;
/// Echo replies one CPU may send in a burst.
pub const ECHO_BURST: u64 = 50;
/// "Fragmentation needed" / "packet too big" answers per second the LB sends for floating-IP
/// packets that would not fit their egress link once encapsulated, per CPU (RFC 4443 2.4
/// asks for a limit; Linux's default `icmp_ratelimit` is one per second per destination).
pub const TOO_BIG_RATE_PER_SEC: u64 = 100;
/// Such answers one CPU may send in a burst.
pub const TOO_BIG_BURST: u64 = 50;
/// New flows per second one CPU tracks before the flood guard forwards the rest untracked
/// (Katran's figure); 0 turns the guard off.
pub const DEFAULT_NEW_FLOW_RATE: u64 = 125_000;
/// Capacity of the instance-level public IP maps (each direction).
pub const MAX_PIPS: u32 = 16_384;
/// Capacity of `LB_LOCAL4`, the LB host's own IPv4 addresses.
pub const MAX_LOCALS: u32 = 4_096;
/// Capacity of `LB_OUTBOUND4`: backends covered by outbound rules.
pub const MAX_OUTBOUND_BACKENDS: u32 = 16_384;
/// Capacity of `LB_OUT_INSIDE4`: every rule's inside prefixes.
pub const MAX_OUTBOUND_INSIDE: u32 = 4_096;
/// Capacity of `LB_OUT_FRONTS4`: frontend addresses of outbound rules.
pub const MAX_OUTBOUND_FRONTENDS: u32 = 1_024;
/// Capacity of the ACL LPM trie (all endpoints' compiled entries, plus one set while it changes).
pub const MAX_ACL_ENTRIES: u32 = 65_536;
/// Number of slots in the verdict-reason counter array (room for future reasons).
pub const REASON_SLOTS: u32 = 64;
/// Default seed of the flow hash. Every LB node of one deployment must use the same seed so
/// that they all pick the same backend for a flow.
pub const DEFAULT_HASH_SEED: u32 = 0x5eed_1b00;

/// Map names, exactly as the `#[map]` statics in `lb-ebpf` (BPF limits names to 15 bytes).
pub mod map_names {
    pub const SERVICES4: &str = "LB_SERVICES4";
    pub const VIPS4: &str = "LB_VIPS4";
    pub const BACKENDS4: &str = "LB_BACKENDS4";
    pub const RING: &str = "LB_RING";
    pub const CONNTRACK: &str = "LB_CONNTRACK4";
    pub const REVSVC: &str = "LB_REVSVC4";
    pub const OURS: &str = "LB_OURS4";
    pub const LOCALS: &str = "LB_LOCAL4";
    pub const ROUTES4: &str = "LB_ROUTES4";
    pub const REASON_STATS: &str = "LB_REASONS";
    pub const SERVICE_STATS: &str = "LB_SVC_STATS";
    pub const BACKEND_STATS: &str = "LB_BE_STATS";
    pub const RETIRED_STATS: &str = "LB_SVC_RETIRED";
    pub const ACL4: &str = "LB_ACL4";
    pub const PIPS4: &str = "LB_PIPS4";
    pub const PIP_REV4: &str = "LB_PIP_REV4";
    pub const ECHO_RL: &str = "LB_ECHO_RL";
    pub const FLOW_RL: &str = "LB_FLOW_RL";
    pub const PROGS: &str = "LB_PROGS";
    pub const LAYOUT: &str = "LB_LAYOUT";
    /// Frames lost after the program sent them, per interface (`crate::xmit`).
    pub const XMIT_FAILS: &str = "LB_XMIT_FAILS";
    /// `lb trace` (`crate::trace`): its config, ring, rate buckets, lost events, scratch.
    pub const TRACE_CFG: &str = "LB_TRACE_CFG";
    pub const TRACE_RING: &str = "LB_TRACE";
    pub const TRACE_RL: &str = "LB_TRACE_RL";
    pub const TRACE_LOST: &str = "LB_TRACE_LOST";
    pub const TRACE_TMP: &str = "LB_TRACE_TMP";
    pub const TRACE_TMP6: &str = "LB_TRACE_TMP6";
    /// Outbound NAT (`crate::outbound`): covered backends, inside prefixes, frontends.
    pub const OUTBOUND4: &str = "LB_OUTBOUND4";
    pub const OUT_INSIDE4: &str = "LB_OUT_INSIDE4";
    pub const OUT_FRONTS4: &str = "LB_OUT_FRONTS4";
    pub const OUT_BLOCKS4: &str = "LB_OUT_BLOCKS4";
    pub const SERVICES6: &str = "LB_SERVICES6";
    pub const VIPS6: &str = "LB_VIPS6";
    pub const BACKENDS6: &str = "LB_BACKENDS6";
    pub const CONNTRACK6: &str = "LB_CONNTRACK6";
    pub const REVSVC6: &str = "LB_REVSVC6";
    pub const ROUTES6: &str = "LB_ROUTES6";
    pub const ACL6: &str = "LB_ACL6";
    pub const PIPS6: &str = "LB_PIPS6";
    pub const PIP_REV6: &str = "LB_PIP_REV6";
    pub const LOCALS6: &str = "LB_LOCAL6";
    /// Floating IP: the outer source addresses and the GUE port (`crate::encap`).
    pub const ENCAP: &str = "LB_ENCAP";
    /// Floating IP: the chosen backend, flow hash and offsets, handed to the encapsulating
    /// program across its tail call (per CPU).
    pub const ENCAP_TMP: &str = "LB_ENCAP_TMP";
    pub const TOO_BIG_RL: &str = "LB_TOO_BIG_RL";
    /// Tunnel probes: what the probe device's tc program did (`crate::encap::probe`).
    pub const PROBE_STATS: &str = crate::encap::probe::STATS;
    /// Every map, in the order the agent opens them.
    pub const ALL: [&str; 45] = [
        SERVICES4,
        VIPS4,
        BACKENDS4,
        RING,
        CONNTRACK,
        REVSVC,
        OURS,
        LOCALS,
        ROUTES4,
        REASON_STATS,
        SERVICE_STATS,
        BACKEND_STATS,
        RETIRED_STATS,
        ACL4,
        PIPS4,
        PIP_REV4,
        ECHO_RL,
        FLOW_RL,
        PROGS,
        LAYOUT,
        XMIT_FAILS,
        TRACE_CFG,
        TRACE_RING,
        TRACE_RL,
        TRACE_LOST,
        TRACE_TMP,
        TRACE_TMP6,
        OUTBOUND4,
        OUT_INSIDE4,
        OUT_FRONTS4,
        OUT_BLOCKS4,
        SERVICES6,
        VIPS6,
        BACKENDS6,
        CONNTRACK6,
        REVSVC6,
        ROUTES6,
        ACL6,
        PIPS6,
        PIP_REV6,
        LOCALS6,
        ENCAP,
        ENCAP_TMP,
        TOO_BIG_RL,
        PROBE_STATS,
    ];
}

/// Bump when a map's key or value changes meaning without changing size (a field reordered or
/// reinterpreted); size changes alter [`map_layout_version`] by themselves.
pub const MAP_LAYOUT_REVISION: u64 = 7;

/// The layout version of every pinned map: a hash of the revision, the map names, capacities
/// fixed at build time, and the sizes of every key and value type. The agent stores it in the
/// pinned `LB_LAYOUT` map and refuses to reuse pins of another version.
#[must_use]
pub const fn map_layout_version() -> u64 {
    use core::mem::size_of;

    use crate::{flow::FlowKey4, maps};
    const fn mix(h: u64, v: u64) -> u64 {
        // FNV-1a over the value's 8 bytes.
        let mut h = h;
        let mut i = 0;
        while i < 8 {
            h ^= (v >> (8 * i)) & 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
            i += 1;
        }
        h
    }
    let parts: [u64; 45] = [
        MAP_LAYOUT_REVISION,
        map_names::ALL.len() as u64,
        size_of::<maps::ServiceKey4>() as u64,
        size_of::<maps::ServiceInfo>() as u64,
        size_of::<[u8; 4]>() as u64,
        size_of::<maps::VipInfo>() as u64,
        size_of::<maps::Backend4>() as u64,
        size_of::<maps::BackendId>() as u64,
        size_of::<FlowKey4>() as u64,
        size_of::<maps::ConnEntry4>() as u64,
        size_of::<maps::RevKey4>() as u64,
        size_of::<maps::RevService4>() as u64,
        size_of::<maps::NextHop>() as u64,
        size_of::<maps::Counters>() as u64,
        size_of::<maps::AclKey4>() as u64,
        size_of::<maps::AclValue>() as u64,
        size_of::<maps::PipEntry4>() as u64,
        size_of::<maps::RateState>() as u64,
        maps::OURS_WORDS as u64,
        MAX_SERVICES as u64,
        MAX_BACKENDS as u64,
        MAX_ACL_ENTRIES as u64,
        REASON_SLOTS as u64,
        size_of::<crate::xmit::XmitFails>() as u64,
        crate::xmit::MAX_IFACES as u64,
        size_of::<crate::trace::TraceConfig>() as u64,
        size_of::<crate::trace::TraceEvent>() as u64,
        size_of::<crate::trace::TraceEvent6>() as u64,
        size_of::<crate::trace::TraceScratch6>() as u64,
        crate::trace::RING_BYTES as u64,
        size_of::<crate::outbound::OutboundEntry4>() as u64,
        size_of::<crate::outbound::OutFront4>() as u64,
        size_of::<crate::outbound::OutBlockKey4>() as u64,
        MAX_OUTBOUND_BACKENDS as u64,
        MAX_OUTBOUND_INSIDE as u64,
        MAX_OUTBOUND_FRONTENDS as u64,
        PROG_SLOTS as u64,
        size_of::<maps::ServiceKey6>() as u64,
        size_of::<maps::Backend6>() as u64,
        size_of::<crate::flow::FlowKey6>() as u64,
        size_of::<maps::ConnEntry6>() as u64,
        size_of::<maps::RevService6>() as u64,
        size_of::<maps::AclKey6>() as u64,
        size_of::<maps::PipEntry6>() as u64,
        size_of::<crate::encap::EncapConfig>() as u64,
    ];
    let mut h = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < parts.len() {
        h = mix(h, parts[i]);
        i += 1;
    }
    h
}

/// Load-time globals (`EbpfLoader::override_global`), exactly as the statics in `lb-ebpf`.
pub mod global_names {
    pub const HASH_SEED: &str = "LB_HASH_SEED";
    /// How long a closed TCP flow still translates (`conn::CLOSE_TIMEOUT_S` by default).
    pub const CLOSE_TIMEOUT: &str = "LB_CLOSE_TIMEOUT_S";
    /// The flood guard's bucket: nanoseconds per new flow and the burst (0: off).
    pub const FLOW_COST: &str = "LB_FLOW_COST_NS";
    pub const FLOW_BURST: &str = "LB_FLOW_BURST_NS";
    /// aya-log's level global; the agent sets it to 0 (off) unless `--bpf-log` asks otherwise.
    pub const AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";
    /// 1: a frame that leaves by its ingress device is redirected there instead of `XDP_TX`
    /// (veth delivers `XDP_TX` frames late to a peer without an XDP program).
    pub const TX_REDIRECT: &str = "LB_TX_REDIRECT";
    /// 0 compiles `lb trace`'s hooks out (the verifier prunes them): the benchmark's baseline
    /// for the cost of tracing when it is off. The agent always loads 1.
    pub const TRACE_HOOKS: &str = "LB_TRACE_HOOKS";
}

/// The tracepoint programs that count lost frames (`crate::xmit`), with their tracepoints
/// (`xdp:NAME`).
pub const XMIT_PROGRAMS: [(&str, &str); 4] = [
    ("lb_tp_exception", "xdp_exception"),
    ("lb_tp_redirect_err", "xdp_redirect_err"),
    ("lb_tp_bulk_tx", "xdp_bulk_tx"),
    ("lb_tp_devmap_xmit", "xdp_devmap_xmit"),
];

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "lb_xdp";
/// Name of the hairpin-SNAT XDP program, entered from [`PROGRAM_NAME`] by tail call.
pub const HAIRPIN_PROGRAM_NAME: &str = "lb_hairpin";
/// `LB_PROGS` slot of the hairpin program.
pub const PROG_HAIRPIN: u32 = 0;
/// Name of the outbound-NAT XDP program, entered from [`PROGRAM_NAME`] by tail call.
pub const OUTBOUND_PROGRAM_NAME: &str = "lb_outbound";
/// `LB_PROGS` slot of the outbound program.
pub const PROG_OUTBOUND: u32 = 1;
/// Name of the ICMPv6-error program, entered by tail call from [`PROGRAM_NAME`]'s IPv6 path
/// for ICMPv6 errors: translating one about a tracked flow needs a stack of its own.
pub const ICMP6_PROGRAM_NAME: &str = "lb_icmp6";
/// `LB_PROGS` slot of the ICMPv6-error program.
pub const PROG_ICMP6: u32 = 2;
/// Name of the IPv6 PIP program, entered by tail call from the IPv6 path (a packet to
/// or from a PIP) and from [`ICMP6_PROGRAM_NAME`] (an error from an instance that is about
/// no balanced flow).
pub const PIP6_PROGRAM_NAME: &str = "lb_pip6";
/// `LB_PROGS` slot of the IPv6 PIP program.
pub const PROG_PIP6: u32 = 3;
/// Name of the IPv6 hairpin-SNAT program, entered by tail call from the IPv6 path for hairpin
/// flows (the IPv4 one's reason: two-sided NAT needs a second key and entry, and the IPv6
/// path's stack has no room for them).
pub const HAIRPIN6_PROGRAM_NAME: &str = "lb_hairpin6";
/// `LB_PROGS` slot of the IPv6 hairpin program.
pub const PROG_HAIRPIN6: u32 = 4;
/// Name of the IPv6 trace program: the IPv6 path and programs end in it by tail call when `lb trace`
/// is on, so that the record is written in a stack of its own (theirs are near the limit).
pub const TRACE6_PROGRAM_NAME: &str = "lb_trace6";
/// `LB_PROGS` slot of the IPv6 trace program.
pub const PROG_TRACE6: u32 = 5;
/// Name of the floating-IP program (IPv4), entered by tail call from [`PROGRAM_NAME`] for a
/// floating-IP service's forward packet once its backend is chosen: growing the frame and
/// building the outer headers takes a stack and a verification of its own.
pub const ENCAP_PROGRAM_NAME: &str = "lb_encap";
/// `LB_PROGS` slot of the IPv4 floating-IP program.
pub const PROG_ENCAP: u32 = 6;
/// Name of the floating-IP program for IPv6, entered from the IPv6 path.
pub const ENCAP6_PROGRAM_NAME: &str = "lb_encap6";
/// `LB_PROGS` slot of the IPv6 floating-IP program.
pub const PROG_ENCAP6: u32 = 7;
/// Slots of `LB_PROGS`.
pub const PROG_SLOTS: u32 = 8;
/// Every tail-call program, with its `LB_PROGS` slot.
pub const TAIL_PROGRAMS: [(u32, &str); 8] = [
    (PROG_HAIRPIN, HAIRPIN_PROGRAM_NAME),
    (PROG_OUTBOUND, OUTBOUND_PROGRAM_NAME),
    (PROG_ICMP6, ICMP6_PROGRAM_NAME),
    (PROG_PIP6, PIP6_PROGRAM_NAME),
    (PROG_HAIRPIN6, HAIRPIN6_PROGRAM_NAME),
    (PROG_TRACE6, TRACE6_PROGRAM_NAME),
    (PROG_ENCAP, ENCAP_PROGRAM_NAME),
    (PROG_ENCAP6, ENCAP6_PROGRAM_NAME),
];
