//! What the agent answers to queries: plain data, rendered by the CLI (`crate::cli::render`)
//! and the metrics endpoint, or printed as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An instance-level public IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipView {
    pub pip: String,
    pub dip: String,
    /// `None`: not resolved yet (the kernel FIB fallback serves meanwhile).
    pub next_hop: Option<NextHopView>,
}

/// An outbound rule, its covered backends' blocks and use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundView {
    pub name: String,
    pub frontends: Vec<String>,
    pub ports_per_backend: u32,
    pub protocols: Vec<String>,
    /// `stateful` or `stateless`.
    #[serde(default)]
    pub mode: String,
    pub inside: Vec<String>,
    /// The rule's idle timeouts, TCP and UDP (`4m`, `60s`).
    pub idle_timeout_tcp: String,
    pub idle_timeout_udp: String,
    pub backends: Vec<OutboundBackendView>,
    /// Blocks of backends that left, held until their flows are gone (`ADDR:FIRST-LAST`).
    pub held: Vec<String>,
}

/// One covered backend: its block and what it uses of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundBackendView {
    pub backend: String,
    /// `None`: not in the maps (yet).
    pub frontend: Option<String>,
    pub first_port: u16,
    pub last_port: u16,
    /// Distinct ports its tracked flows hold, the flows, and the most ports held at once since
    /// the agent started (as the flow sweeper counts them, once a second).
    pub ports_in_use: u64,
    pub flows: u64,
    pub peak: u64,
    /// The backend has a PIP: it leaves through it, not through this rule.
    pub via_pip: Option<String>,
}

/// An endpoint's ACL: its rules in order, the verdict for sources no rule matches, and how
/// many LPM entries the rules compiled to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclView {
    pub service: String,
    pub rules: Vec<AclRuleView>,
    pub default: String,
    pub compiled_entries: usize,
    /// New flows the ACL denied.
    pub drops: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRuleView {
    pub order: u32,
    pub action: String,
    pub prefix: String,
    pub description: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountersView {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    pub acl_drops: u64,
    pub conntrack_misses: u64,
    /// New flows the flood guard forwarded untracked.
    #[serde(default)]
    pub untracked_flows: u64,
}

impl From<lb_common::maps::Counters> for CountersView {
    fn from(c: lb_common::maps::Counters) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            reply_packets: c.reply_packets,
            reply_bytes: c.reply_bytes,
            acl_drops: c.acl_drops,
            conntrack_misses: c.conntrack_misses,
            untracked_flows: c.untracked_flows,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub service: String,
    /// As [`ServiceStatus::table_fingerprint`].
    #[serde(default)]
    pub table_fingerprint: Option<String>,
    /// `balanced`, or `forward to DIP:PORT`.
    pub kind: String,
    pub id: u32,
    pub table_size: u32,
    pub backends: usize,
    /// Backends that take new flows now.
    pub in_rotation: usize,
    /// The probe (`tcp:80`, `http/healthz`), or none.
    pub probe: Option<String>,
    pub probe_interval: String,
    pub probe_timeout: String,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
    pub when_all_down: String,
    pub established: String,
    /// Internal VIP prefixes (`none`: public).
    pub internal: String,
    pub hairpin: String,
    pub icmp_echo: bool,
    /// `tracked` or `stateless`.
    #[serde(default)]
    pub replies: String,
    /// `5-tuple`, `source-ip` or `source-ip-protocol`.
    #[serde(default)]
    pub distribution: String,
    /// The idle timeout in force (the endpoint's own, or its protocol's default), e.g. `4m`.
    #[serde(default)]
    pub idle_timeout: String,
    /// TCP reset on idle.
    #[serde(default)]
    pub tcp_reset: bool,
    /// The data path: `dnat`, or a floating-IP mode (`l2`, `ipip`, `gue`).
    #[serde(default)]
    pub mode: String,
    /// Where the probes go: `direct` (the backend's address) or `tunnel` (VIP:port, through
    /// the floating-IP tunnel).
    #[serde(default)]
    pub probe_via: String,
    pub counters: CountersView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeView {
    pub ok: bool,
    pub detail: String,
    /// Milliseconds since the result came in.
    pub age_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextHopView {
    pub ifindex: u32,
    pub smac: String,
    pub dmac: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendView {
    pub backend: String,
    pub id: u32,
    /// `up`, `down`, `unknown` (not probed yet) or `unprobed` (the service has no probe).
    pub health: String,
    /// Whether new flows may go to it.
    pub in_rotation: bool,
    /// Why it is (not) in rotation: "healthy", "drained", "weight 0", "2 failed probes: ...".
    pub reason: String,
    pub last_probe: Option<ProbeView>,
    pub weight: u32,
    pub drained: bool,
    /// `none` (the probes decide), `up` or `down`.
    #[serde(default)]
    pub admin: String,
    /// `None`: not resolved yet (the fast path falls back to the kernel FIB meanwhile).
    pub next_hop: Option<NextHopView>,
    /// Slots of the service's table that point at this backend.
    pub slots: u32,
    /// Share of the table, 0.0 ..= 1.0.
    pub share: f64,
    /// Tracked flows (conntrack entries client → backend).
    pub flows: u64,
    pub counters: CountersView,
}

/// One tracked flow, as `lb flows` shows it (`conntrack -L`, `ipvsadm -Lc`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    /// The client's address and port, as the flow arrives.
    pub client: String,
    /// The endpoint it is addressed to (VIP:PORT/PROTO), as the flow names it.
    pub service: String,
    /// The backend it goes to (DIP:PORT; an HA-ports backend's port 0 is the flow's own).
    pub backend: String,
    /// TCP: `syn-sent`, `established`, `fin-client`, `fin-backend`, `closed`, `stale`; UDP: `udp`.
    pub state: String,
    /// Seconds since the flow was last seen (since it closed, once closed).
    pub idle_s: u64,
    /// Seconds since the flow's entry was made.
    #[serde(default)]
    pub age_s: u64,
    /// A hairpin flow (SNAT to the VIP).
    pub hairpin: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    /// The control socket's protocol version (`API_VERSION`).
    #[serde(default)]
    pub api_version: u32,
    pub pid: u32,
    pub interfaces: Vec<String>,
    pub xdp_mode: String,
    pub pin_dir: Option<String>,
    pub services: usize,
    pub backends: usize,
    pub backends_unresolved: usize,
    /// Client-facing next hops in `LB_ROUTES4`, e.g. `0.0.0.0/0 via if 2 → 02:..`.
    pub client_routes: Vec<String>,
    pub ring_slots_used: u64,
    pub ring_slots: u32,
    pub conntrack_flows: u32,
    /// Backend endpoints whose reply entry a VIP swap holds for flows from before it.
    #[serde(default)]
    pub swap_holds: usize,
    /// Whether the lost-frame counters run: `on`, or `off: why`.
    #[serde(default)]
    pub xmit_counting: String,
    /// Per served interface, frames lost after the program sent them.
    #[serde(default)]
    pub xmit_failures: Vec<XmitFailView>,
    /// `lb trace` sampling: `off`, or `on for N s more`.
    #[serde(default)]
    pub trace: String,
    /// The routing table of the VIPs' host routes (0: no announcing), and the VIP addresses
    /// announced there: each VIP with a backend in rotation in one of its services, and each
    /// PIP.
    #[serde(default)]
    pub announce_table: u32,
    #[serde(default)]
    pub announced: Vec<String>,
    pub vips: Vec<ServiceStatus>,
    /// Outbound rules, with each backend's block and use.
    #[serde(default)]
    pub outbound: Vec<OutboundView>,
}

/// `lb explain`: how a new flow would be handled, step by step, from the maps' own entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainView {
    pub client: String,
    /// The service asked about, and the one that takes the flow (itself, or the VIP's HA
    /// ports `VIP:0/any`).
    pub service: String,
    pub taken_by: String,
    /// The internal VIP's decision, with the entry of its source set that decided.
    pub internal: Option<String>,
    /// The endpoint ACL's decision, with the deciding rule (or the default) and its prefix.
    pub acl: Option<String>,
    /// The verdict a new flow gets: `forward` (`forward_fib` without a resolved next hop),
    /// `hairpin_snat`, or the drop reason.
    pub verdict: String,
    pub distribution: String,
    /// The 5-tuple the hash covers (fields the mode ignores are 0).
    pub hash_input: String,
    pub hash: u32,
    pub table_size: u32,
    pub slot: Option<u32>,
    pub backend: Option<String>,
    pub backend_id: u32,
    pub next_hop: Option<NextHopView>,
    /// The flow's conntrack entry, if it has one: where its non-SYN packets go instead.
    pub tracked: Option<TrackedView>,
}

/// A tracked flow's entry, for `lb explain`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedView {
    pub backend: String,
    pub state: String,
    pub idle_s: u64,
    #[serde(default)]
    pub age_s: u64,
    pub hairpin: bool,
}

/// One served interface's frames lost after the program sent them (`lb_common::xmit`): the
/// verdicts count them as sent, the kernel dropped them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XmitFailView {
    pub interface: String,
    pub ifindex: u32,
    /// Redirected frames the kernel refused or dropped.
    pub redirect: u64,
    /// `XDP_TX` frames the driver dropped.
    pub tx: u64,
    /// `XDP_ABORTED` verdicts.
    pub aborted: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    /// The table's fingerprint (`lb_common::maglev::fingerprint`): equal on two nodes, every
    /// flow of the service goes to the same backend on both. `None` without a table.
    #[serde(default)]
    pub table_fingerprint: Option<String>,
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    /// Verdict reason → packets, in reason-number order.
    pub reasons: BTreeMap<String, u64>,
    pub services: Vec<ServiceView>,
    /// Flows the sweeper removed since the agent started, by cause: `idle`, `closed`, `syn`.
    #[serde(default)]
    pub flows_expired: BTreeMap<String, u64>,
    /// RST segments TCP reset on idle sent, and sends that failed.
    #[serde(default)]
    pub tcp_resets: u64,
    #[serde(default)]
    pub tcp_reset_errors: u64,
    /// The sweeper's whole passes over the table, and passes that failed (the log says why).
    #[serde(default)]
    pub sweeps: u64,
    #[serde(default)]
    pub sweep_errors: u64,
    /// Per served interface, frames lost after the program sent them.
    #[serde(default)]
    pub xmit_failures: Vec<XmitFailView>,
    /// Probes through the tunnel: packets of the probe device's tc program per outcome
    /// (`sent`, `no_backend`, `no_route`, `malformed`).
    #[serde(default)]
    pub probe_tunnel: BTreeMap<String, u64>,
}
