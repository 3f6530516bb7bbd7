//! Every map of the program. All are legacy `#[map]` maps pinned by name (BTF maps cannot be
//! pinned in aya-ebpf 0.2), so a restarted agent finds them under its pin directory. Sizes here
//! are defaults; the agent sets `LB_CONNTRACK` and `LB_RING` sizes at load time.
//! The agent's reconciler is the only user-space writer of every map.

use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, ProgramArray, RingBuf,
    },
};
use lb_common::{
    consts::{
        DEFAULT_CONNTRACK_ENTRIES, DEFAULT_RING_SLOTS, MAX_ACL_ENTRIES, MAX_BACKENDS, MAX_LOCALS,
        MAX_OUTBOUND_BACKENDS, MAX_OUTBOUND_FRONTENDS, MAX_OUTBOUND_INSIDE, MAX_PIPS, MAX_ROUTES,
        MAX_SERVICES, PROG_SLOTS, REASON_SLOTS,
    },
    flow::{FlowKey4, FlowKey6},
    maps::{
        AclKey4, AclKey6, AclValue, Backend4, Backend6, BackendId, ConnEntry4, ConnEntry6,
        Counters, NextHop, OURS_WORDS, PipEntry4, PipEntry6, RateState, RevKey4, RevKey6,
        RevService4, RevService6, RouteKey4, RouteKey6, ServiceInfo, ServiceKey4, ServiceKey6,
        VipInfo,
    },
    outbound::{OutBlockKey4, OutFront4, OutboundEntry4},
    trace::{RING_BYTES, TraceConfig, TraceScratch6},
    xmit::{MAX_IFACES, XmitFails},
};

/// (VIP, port, proto) → service: table region and stats id. Writer: agent. Reader: fast path.
#[map(name = "LB_SERVICES4")]
pub static LB_SERVICES4: HashMap<ServiceKey4, ServiceInfo> = HashMap::pinned(MAX_SERVICES, 0);

/// IPv4 VIP address → number of services on it. Tells "to a VIP but not servable" (drop) from
/// "not ours" (pass). Writer: agent.
#[map(name = "LB_VIPS4")]
pub static LB_VIPS4: HashMap<[u8; 4], VipInfo> = HashMap::pinned(MAX_SERVICES, 0);

/// BackendId → IPv4 backend address, port and resolved next hop. Id 0 is never used.
/// Writer: agent (next hops refreshed through netlink).
#[map(name = "LB_BACKENDS4")]
pub static LB_BACKENDS4: Array<Backend4> = Array::pinned(MAX_BACKENDS, 0);

/// All services' lookup tables, back to back: slot → BackendId. Writer: agent.
#[map(name = "LB_RING")]
pub static LB_RING: Array<BackendId> = Array::pinned(DEFAULT_RING_SLOTS, 0);

/// IPv4 flow 5-tuple as it arrives → conntrack entry: one forward entry per flow (plus a
/// reverse entry for flows to shared backend endpoints and hairpin flows). Writer: fast path
/// (new flows, TCP state) and agent (purges). LRU, so old flows age out under pressure.
#[map(name = "LB_CONNTRACK4")]
pub static LB_CONNTRACK4: LruHashMap<FlowKey4, ConnEntry4> =
    LruHashMap::pinned(DEFAULT_CONNTRACK_ENTRIES, 0);

/// IPv4 backend (address, port, protocol) → the service it serves (VIP, port, service and
/// backend id), or that it serves several: how a reply finds its flow's forward entry.
/// Writer: agent.
#[map(name = "LB_REVSVC4")]
pub static LB_REVSVC4: HashMap<RevKey4, RevService4> = HashMap::pinned(MAX_BACKENDS, 0);

/// The "maybe ours" filter over IPv4 addresses (`lb_common::maps::ours_bit`): word → bits.
/// Writer: agent (a bit is set before the entry that needs it, cleared after the last goes).
#[map(name = "LB_OURS4")]
pub static LB_OURS4: Array<u64> = Array::pinned(OURS_WORDS, 0);

/// The LB host's own IPv4 addresses (value unused): a stateless service's packet from a
/// backend to one of them is not a reply but the answer to the LB's own connection (a health
/// probe), and goes to the kernel. Writer: agent (from netlink).
#[map(name = "LB_LOCAL4")]
pub static LB_LOCAL4: HashMap<[u8; 4], u32> = HashMap::pinned(MAX_LOCALS, 0);

/// Client-facing IPv4 destination prefix → next hop, for replies. Writer: agent (from the kernel's
/// routes and neighbours).
#[map(name = "LB_ROUTES4")]
pub static LB_ROUTES4: LpmTrie<RouteKey4, NextHop> = LpmTrie::pinned(MAX_ROUTES, 0);

/// Verdict reason → packets (per CPU). Writer: fast path.
#[map(name = "LB_REASONS")]
pub static LB_REASONS: PerCpuArray<u64> = PerCpuArray::pinned(REASON_SLOTS, 0);

/// Service id → its own counters (per CPU): ACL drops, conntrack misses, untracked flows; a
/// flow's packets are counted in its backend's record (`lb_common::maps::Counters`). Writer:
/// fast path; the agent zeroes an id before reuse.
#[map(name = "LB_SVC_STATS")]
pub static LB_SVC_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_SERVICES, 0);

/// BackendId → its flows' counters (per CPU), both directions: the one counter record a
/// balanced packet updates. Writer: fast path; the agent zeroes an id before reuse.
#[map(name = "LB_BE_STATS")]
pub static LB_BE_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_BACKENDS, 0);

/// Service id → the summed counters of its retired backends, added by the agent when it
/// retires one, so that a service's totals never go back. Never read by the program; pinned
/// so that a restarted agent keeps them. Writer: agent.
#[map(name = "LB_SVC_RETIRED")]
pub static LB_SVC_RETIRED: Array<Counters> = Array::pinned(MAX_SERVICES, 0);

/// (ACL set id, source prefix) → permit/deny: every endpoint's compiled ACL. Checked for new
/// flows of services whose `acl_id` is not 0. Writer: agent.
#[map(name = "LB_ACL4")]
pub static LB_ACL4: LpmTrie<AclKey4, AclValue> = LpmTrie::pinned(MAX_ACL_ENTRIES, 0);

/// Instance-level public IP → its instance's address and next hop (every protocol and port
/// bypasses balancing). Writer: agent.
#[map(name = "LB_PIPS4")]
pub static LB_PIPS4: HashMap<[u8; 4], PipEntry4> = HashMap::pinned(MAX_PIPS, 0);

/// Instance address → its public IP, for everything the instance sends. Writer: agent.
#[map(name = "LB_PIP_REV4")]
pub static LB_PIP_REV4: HashMap<[u8; 4], PipEntry4> = HashMap::pinned(MAX_PIPS, 0);

/// The echo-reply token bucket, per CPU (one slot). Writer: fast path.
#[map(name = "LB_ECHO_RL")]
pub static LB_ECHO_RL: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);

/// The "too big" answers' token bucket, per CPU (one slot): ICMP "fragmentation needed" /
/// ICMPv6 "packet too big" for floating-IP packets too big once encapsulated. Writer: fast
/// path.
#[map(name = "LB_TOO_BIG_RL")]
pub static LB_TOO_BIG_RL: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);

/// The flood guard's token bucket, per CPU (one slot): new flows it may track. Writer: fast
/// path.
#[map(name = "LB_FLOW_RL")]
pub static LB_FLOW_RL: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);

/// The layout version of the pinned maps (`lb_common::consts::map_layout_version`), slot 0,
/// written by the agent; never read by the program. A pin directory whose version differs is
/// refused instead of reused. Writer: agent.
#[map(name = "LB_LAYOUT")]
pub static LB_LAYOUT: Array<u64> = Array::pinned(1, 0);

/// Tail-call targets: slot `PROG_HAIRPIN` holds the hairpin-SNAT program (`lb_hairpin`),
/// `PROG_OUTBOUND` the outbound-NAT program (`lb_outbound`); each runs with its own stack
/// frame. Pinned so that its entry survives the agent (the kernel clears
/// a program array's entries when its last user reference goes). Writer: agent.
#[map(name = "LB_PROGS")]
pub static LB_PROGS: ProgramArray = ProgramArray::pinned(PROG_SLOTS, 0);

/// Served ifindex → frames lost after the program sent them (per CPU; `lb_common::xmit`).
/// Writer: the tracepoint programs of `xmit.rs`; the agent creates one entry per interface it
/// serves, and only those count.
#[map(name = "LB_XMIT_FAILS")]
pub static LB_XMIT_FAILS: PerCpuHashMap<u32, XmitFails> = PerCpuHashMap::pinned(MAX_IFACES, 0);

/// `lb trace`'s config, slot 0 (`lb_common::trace::TraceConfig`): off unless the agent turned
/// it on for a trace. Writer: agent.
#[map(name = "LB_TRACE_CFG")]
pub static LB_TRACE_CFG: Array<TraceConfig> = Array::pinned(1, 0);

/// `lb trace`'s records (`lb_common::trace::TraceEvent`). Writer: fast path; reader: `lb trace`.
#[map(name = "LB_TRACE")]
pub static LB_TRACE: RingBuf = RingBuf::pinned(RING_BYTES, 0);

/// `lb trace`'s token bucket, per CPU (one slot). Writer: fast path.
#[map(name = "LB_TRACE_RL")]
pub static LB_TRACE_RL: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);

/// Events the rate limit (slot 0) or a full ring (slot 1) refused, per CPU. Writer: fast path.
#[map(name = "LB_TRACE_LOST")]
pub static LB_TRACE_LOST: PerCpuArray<u64> = PerCpuArray::pinned(2, 0);

/// The arriving 5-tuple of the packet being traced, per CPU (off the stack). Writer: fast path.
#[map(name = "LB_TRACE_TMP")]
pub static LB_TRACE_TMP: PerCpuArray<FlowKey4> = PerCpuArray::pinned(1, 0);

/// An IPv6 packet being traced, per CPU: its arriving 5-tuple and verdict, for `lb_trace6`.
/// Writer: fast path.
#[map(name = "LB_TRACE_TMP6")]
pub static LB_TRACE_TMP6: PerCpuArray<TraceScratch6> = PerCpuArray::pinned(1, 0);

/// Covered backend address → its outbound block, rule and next hop (`lb_common::outbound`).
/// Writer: agent.
#[map(name = "LB_OUTBOUND4")]
pub static LB_OUTBOUND4: HashMap<[u8; 4], OutboundEntry4> =
    HashMap::pinned(MAX_OUTBOUND_BACKENDS, 0);

/// (rule id, destination prefix) → 1: the rules' inside prefixes, which outbound flows to are
/// never translated. Writer: agent.
#[map(name = "LB_OUT_INSIDE4")]
pub static LB_OUT_INSIDE4: LpmTrie<AclKey4, u32> = LpmTrie::pinned(MAX_OUTBOUND_INSIDE, 0);

/// Frontend address of an outbound rule → its rule: a packet to one that no service takes may
/// be an outbound flow returning. Writer: agent.
#[map(name = "LB_OUT_FRONTS4")]
pub static LB_OUT_FRONTS4: HashMap<[u8; 4], OutFront4> = HashMap::pinned(MAX_OUTBOUND_FRONTENDS, 0);

/// (frontend address, block index) → the backend that owns the block, for stateless outbound
/// rules only: a returning packet's port names its backend. Writer: agent.
#[map(name = "LB_OUT_BLOCKS4")]
pub static LB_OUT_BLOCKS4: HashMap<OutBlockKey4, [u8; 4]> =
    HashMap::pinned(MAX_OUTBOUND_BACKENDS, 0);

/// (IPv6 VIP, port, proto) → service, as `LB_SERVICES4`. Writer: agent.
#[map(name = "LB_SERVICES6")]
pub static LB_SERVICES6: HashMap<ServiceKey6, ServiceInfo> = HashMap::pinned(MAX_SERVICES, 0);

/// IPv6 VIP address → its VIP entry, as `LB_VIPS4`. Writer: agent.
#[map(name = "LB_VIPS6")]
pub static LB_VIPS6: HashMap<[u8; 16], VipInfo> = HashMap::pinned(MAX_SERVICES, 0);

/// BackendId → IPv6 backend, as `LB_BACKENDS4` (one id space: an id is live in one family's
/// array). Writer: agent.
#[map(name = "LB_BACKENDS6")]
pub static LB_BACKENDS6: Array<Backend6> = Array::pinned(MAX_BACKENDS, 0);

/// IPv6 flow 5-tuple as it arrives → conntrack entry, as `LB_CONNTRACK4` (the agent sizes it
/// alike). Writer: fast path and agent.
#[map(name = "LB_CONNTRACK6")]
pub static LB_CONNTRACK6: LruHashMap<FlowKey6, ConnEntry6> =
    LruHashMap::pinned(DEFAULT_CONNTRACK_ENTRIES, 0);

/// IPv6 backend (address, port, protocol) → the service it serves, as `LB_REVSVC4`.
/// Writer: agent.
#[map(name = "LB_REVSVC6")]
pub static LB_REVSVC6: HashMap<RevKey6, RevService6> = HashMap::pinned(MAX_BACKENDS, 0);

/// The LB host's own IPv6 addresses (value unused), as `LB_LOCAL4`: a stateless IPv6
/// endpoint's packet to one of them answers the LB's own connection (a probe). Writer: agent
/// (from netlink).
#[map(name = "LB_LOCAL6")]
pub static LB_LOCAL6: HashMap<[u8; 16], u32> = HashMap::pinned(MAX_LOCALS, 0);

/// Client-facing IPv6 destination prefix → next hop, for replies. Writer: agent.
#[map(name = "LB_ROUTES6")]
pub static LB_ROUTES6: LpmTrie<RouteKey6, NextHop> = LpmTrie::pinned(MAX_ROUTES, 0);

/// (ACL set id, IPv6 source prefix) → permit/deny/hairpin: IPv6 endpoints' ACLs and internal
/// IPv6 VIPs' source sets, as `LB_ACL4`. Writer: agent.
#[map(name = "LB_ACL6")]
pub static LB_ACL6: LpmTrie<AclKey6, AclValue> = LpmTrie::pinned(MAX_ACL_ENTRIES, 0);

/// IPv6 PIP → its instance's address and next hop, as `LB_PIPS4`. Writer: agent.
#[map(name = "LB_PIPS6")]
pub static LB_PIPS6: HashMap<[u8; 16], PipEntry6> = HashMap::pinned(MAX_PIPS, 0);

/// IPv6 instance address → its PIP, as `LB_PIP_REV4`. Writer: agent.
#[map(name = "LB_PIP_REV6")]
pub static LB_PIP_REV6: HashMap<[u8; 16], PipEntry6> = HashMap::pinned(MAX_PIPS, 0);

/// Floating IP: the outer source addresses and the GUE port, one entry. Writer: agent.
/// Reader: the encapsulation of floating-IP services' packets (`encap.rs`).
#[map(name = "LB_ENCAP")]
pub static LB_ENCAP: Array<lb_common::encap::EncapConfig> = Array::pinned(1, 0);

/// Floating IP: `[backend id, flow hash, encap::at, 0]`, written by the fast path just before
/// its tail call into the encapsulating program, which reads it (per CPU: nothing else runs on
/// this CPU in between).
#[map(name = "LB_ENCAP_TMP")]
pub static LB_ENCAP_TMP: PerCpuArray<[u32; 4]> = PerCpuArray::pinned(1, 0);
