//! The XDP object and its maps, in three layers:
//! * `loader.rs`: loading the object, pinning its maps, refusing pins of another layout;
//! * `maps.rs`: the typed maps, [`Maps`] (the single writer's handle) and [`SideMaps`]
//!   (conntrack and counters, opened again from the pins by tasks off the writer loop);
//! * `sys.rs`: the one raw `bpf(2)` layer (map batches, links), on aya-obj's `bpf_attr`.
//!
//! The reconciler reaches the maps only through the traits below, so its logic is tested with
//! an in-memory fake: [`MapOps`] for its writes (and the reads of adoption), [`MapReader`] for
//! the counters and walks that views need, [`FlowPurge`] for flow deletions.

mod decap;
mod flows;
mod live;
mod loader;
mod maps;
pub mod sweep;
pub(crate) mod sys;

use std::collections::{BTreeSet, HashMap};

use lb_common::{
    acl,
    addr::{Addr, v4_mapped},
    flow::{FlowKey4, FlowKey6},
    maps::{
        Backend, BackendId, ConnEntry4, ConnEntry6, Counters, NextHop, RevKey, RevService,
        ServiceInfo, ServiceKey, VipInfo, VipKey,
    },
};

pub use self::{
    decap::Decap,
    loader::{
        BASELINE_OBJ, CTPROBE_OBJ, DECAP_OBJ, Dataplane, LB_OBJ, LoadOptions, unpin_all, xdp_mode,
    },
    maps::{Maps, SideMaps},
};
use crate::error::MapOpError;

/// The writes of the reconciler (its only path to the kernel), and the reads adoption needs
/// when an agent starts. The real implementation is [`Maps`].
///
/// Keys, values and prefixes are in the family-agnostic form the reconciler plans in; the
/// implementation writes each into its family's maps (`LB_SERVICES4`, ...). An address of a
/// family without maps (IPv6, until that family lands; the configuration refuses it first)
/// fails with `EAFNOSUPPORT`.
///
/// Deletes are idempotent: deleting a key that is not there succeeds.
#[expect(
    clippy::missing_errors_doc,
    reason = "every method fails only with the map operation's own error"
)]
pub trait MapOps {
    fn put_service(&mut self, k: &ServiceKey, v: &ServiceInfo) -> Result<(), MapOpError>;
    fn del_service(&mut self, k: &ServiceKey) -> Result<(), MapOpError>;
    fn put_vip(&mut self, k: &VipKey, v: &VipInfo) -> Result<(), MapOpError>;
    fn del_vip(&mut self, k: &VipKey) -> Result<(), MapOpError>;
    fn put_backend(&mut self, id: BackendId, b: &Backend) -> Result<(), MapOpError>;
    /// Writes a backend endpoint's reverse-service entry (`LB_REVSVC4`).
    fn put_rev(&mut self, k: &RevKey, v: &RevService) -> Result<(), MapOpError>;
    fn del_rev(&mut self, k: &RevKey) -> Result<(), MapOpError>;
    /// Writes one word of the "maybe ours" filter (`LB_OURS4`).
    fn put_ours(&mut self, word: u32, bits: u64) -> Result<(), MapOpError>;
    fn put_slots(&mut self, off: u32, slots: &[BackendId]) -> Result<(), MapOpError>;
    /// Writes a client route: `dst` / `prefix_len` in map form (an IPv4 /p is `96 + p`).
    fn put_route(&mut self, prefix_len: u32, dst: Addr, nh: &NextHop) -> Result<(), MapOpError>;
    fn del_route(&mut self, prefix_len: u32, dst: Addr) -> Result<(), MapOpError>;
    /// Writes / deletes one of the host's own addresses, in map form (`LB_LOCAL4`,
    /// `LB_LOCAL6`).
    fn put_local(&mut self, a: Addr) -> Result<(), MapOpError>;
    /// `lb trace`'s config (`lb_common::trace`; all zero is off).
    fn put_trace(&mut self, c: &lb_common::trace::TraceConfig) -> Result<(), MapOpError>;
    fn del_local(&mut self, a: Addr) -> Result<(), MapOpError>;
    /// Clears the counters of a service id (its own and its retired backends') and a backend
    /// id before they are reused.
    fn zero_service_stats(&mut self, id: u32) -> Result<(), MapOpError>;
    fn zero_backend_stats(&mut self, id: BackendId) -> Result<(), MapOpError>;
    /// Adds a retiring backend's counters to its service's retired sum: writes `sum` plus
    /// what the backend's record counted since `folded` (an earlier reading, added already)
    /// into `LB_SVC_RETIRED[service]`. Returns the new sum and the record as read.
    fn retire_counters(
        &mut self,
        backend: BackendId,
        service: u32,
        sum: &Counters,
        folded: &Counters,
    ) -> Result<(Counters, Counters), MapOpError>;
    /// Writes one compiled ACL entry of set `acl_id`.
    fn put_acl(&mut self, acl_id: u32, e: &acl::Entry) -> Result<(), MapOpError>;
    /// Deletes one ACL entry of set `acl_id`.
    fn del_acl(&mut self, acl_id: u32, p: &acl::Prefix) -> Result<(), MapOpError>;
    /// Writes both directions of a PIP: PIP → (instance, next hop), instance → PIP.
    fn put_pip(&mut self, pip: &Addr, dip: &Addr, nh: &NextHop) -> Result<(), MapOpError>;
    /// Deletes both directions of a PIP.
    fn del_pip(&mut self, pip: &Addr, dip: &Addr) -> Result<(), MapOpError>;
    /// Writes a covered backend's outbound entry (`LB_OUTBOUND4`).
    fn put_outbound(
        &mut self,
        dip: [u8; 4],
        e: &lb_common::outbound::OutboundEntry4,
    ) -> Result<(), MapOpError>;
    fn del_outbound(&mut self, dip: [u8; 4]) -> Result<(), MapOpError>;
    /// Writes a frontend address of an outbound rule (`LB_OUT_FRONTS4`).
    fn put_out_front(
        &mut self,
        a: [u8; 4],
        f: &lb_common::outbound::OutFront4,
    ) -> Result<(), MapOpError>;
    /// Writes / deletes a stateless rule's block owner (`LB_OUT_BLOCKS4`).
    fn put_out_block(
        &mut self,
        k: &lb_common::outbound::OutBlockKey4,
        dip: [u8; 4],
    ) -> Result<(), MapOpError>;
    fn del_out_block(&mut self, k: &lb_common::outbound::OutBlockKey4) -> Result<(), MapOpError>;
    fn del_out_front(&mut self, a: [u8; 4]) -> Result<(), MapOpError>;
    /// Writes an inside prefix `(address, length)` of outbound rule `rule` (`LB_OUT_INSIDE4`).
    fn put_out_inside(&mut self, rule: u32, p: ([u8; 4], u8)) -> Result<(), MapOpError>;
    fn del_out_inside(&mut self, rule: u32, p: ([u8; 4], u8)) -> Result<(), MapOpError>;
    /// Everything an earlier agent left in the pinned maps, except table slots and conntrack
    /// (read once, when an agent starts).
    fn read_live(&self) -> Result<LiveMaps, MapOpError>;
    /// Table slots `off..off + len` of `LB_RING`.
    fn read_slots(&self, off: u32, len: u32) -> Result<Vec<BackendId>, MapOpError>;
}

/// The reads of status, stats and metrics: counters, and one walk of conntrack. They run off
/// the writer loop, on a [`SideMaps`] handle.
#[expect(
    clippy::missing_errors_doc,
    reason = "every method fails only with the map read's own error"
)]
pub trait MapReader {
    /// A service's own record (ACL drops, conntrack misses, untracked flows): its totals add
    /// its backends' records and its retired sum (`Counters::service_total`).
    fn service_counters(&self, id: u32) -> Result<Counters, MapOpError>;
    fn backend_counters(&self, id: BackendId) -> Result<Counters, MapOpError>;
    fn reason_counters(&self) -> Result<Vec<u64>, MapOpError>;
    /// Live conntrack entries per backend id (an O(table) walk).
    fn flows_per_backend(&self) -> Result<HashMap<BackendId, u64>, MapOpError>;
    /// Calls `f` on every tracked flow of both families (a walk of both tables, batched).
    fn each_flow(&self, f: &mut dyn FnMut(TrackedFlow<'_>)) -> Result<(), MapOpError>;
    /// The flow sweeper's counters (none where no sweeper runs).
    fn sweeps(&self) -> sweep::SweepTotals {
        sweep::SweepTotals::default()
    }
    /// Each covered backend's outbound use, as the sweeper last counted it (none where no
    /// sweeper runs).
    fn outbound_usage(&self) -> std::collections::BTreeMap<[u8; 4], sweep::OutboundUse> {
        std::collections::BTreeMap::new()
    }
    /// A flow's conntrack entry, if it has one.
    fn flow(&self, _k: &FlowKey4) -> Result<Option<ConnEntry4>, MapOpError> {
        Ok(None)
    }
    /// An IPv6 flow's conntrack entry, if it has one.
    fn flow6(&self, _k: &FlowKey6) -> Result<Option<ConnEntry6>, MapOpError> {
        Ok(None)
    }
    /// Packets of the tunnel probes' tc program per outcome, in
    /// `lb_common::encap::probe::ALL` order. No default: a reader that delegates must say so
    /// (a defaulted method here once read as empty through the agent's reader).
    fn probe_tunnel(&self) -> Result<Vec<u64>, MapOpError>;
    /// Frames lost after the program sent them, per served ifindex (`lb_common::xmit`).
    fn xmit_fails(&self) -> Result<Vec<(u32, lb_common::xmit::XmitFails)>, MapOpError> {
        Ok(Vec::new())
    }
}

/// Flow deletions the reconciler decides and a task off the writer loop carries out: one walk
/// of conntrack per [`PurgeJob`], however many backends and services it names.
pub trait FlowPurge {
    /// Deletes every tracked flow the job selects; returns how many.
    ///
    /// # Errors
    /// The walk or a delete fails.
    fn purge(&mut self, job: &PurgeJob) -> Result<usize, MapOpError>;
    /// Deletes every tracked flow `select` picks (`lb flows flush`); returns how many.
    ///
    /// # Errors
    /// The walk or a delete fails.
    fn flush(&mut self, select: &dyn Fn(TrackedFlow<'_>) -> bool) -> Result<usize, MapOpError>;
}

/// A conntrack entry of either family, as the views and `lb flows flush` read it.
#[derive(Clone, Copy, Debug)]
pub enum TrackedFlow<'a> {
    V4(&'a FlowKey4, &'a ConnEntry4),
    V6(&'a FlowKey6, &'a ConnEntry6),
}

impl TrackedFlow<'_> {
    /// The packet's source and destination as it arrives, as socket addresses.
    #[must_use]
    pub fn endpoints(&self) -> (std::net::SocketAddr, std::net::SocketAddr) {
        use std::net::SocketAddr;
        let port = u16::from_be_bytes;
        match self {
            Self::V4(k, _) => (
                SocketAddr::from((k.src, port(k.sport))),
                SocketAddr::from((k.dst, port(k.dport))),
            ),
            Self::V6(k, _) => (
                SocketAddr::from((k.src, port(k.sport))),
                SocketAddr::from((k.dst, port(k.dport))),
            ),
        }
    }

    /// The source in map form.
    #[must_use]
    pub fn src(&self) -> Addr {
        match self {
            Self::V4(k, _) => v4_mapped(k.src),
            Self::V6(k, _) => k.src,
        }
    }

    #[must_use]
    pub const fn proto(&self) -> u8 {
        match self {
            Self::V4(k, _) => k.proto,
            Self::V6(k, _) => k.proto,
        }
    }

    /// Whether it is a flow's own entry (client → VIP, or a hairpin flow's), not a reverse
    /// one.
    #[must_use]
    pub const fn is_forward(&self) -> bool {
        match self {
            Self::V4(_, e) => e.is_forward(),
            Self::V6(_, e) => e.is_forward(),
        }
    }

    /// The entry's (kind, service, backend, TCP state, seen, created) fields.
    #[must_use]
    pub const fn entry(&self) -> (u8, u32, BackendId, u8, u32, u32) {
        match self {
            Self::V4(_, e) => (e.kind, e.service, e.backend, e.tcp, e.seen_s, e.created_s),
            Self::V6(_, e) => (e.kind, e.service, e.backend, e.tcp, e.seen_s, e.created_s),
        }
    }
}

/// Which tracked flows to delete. A flow is deleted if any part selects it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeJob {
    /// Flows naming one of these backend ids, as their backend or as the connecting backend of
    /// a hairpin flow (`peer`): retired backends (their ids are reused only once the purge is
    /// done) and backends whose flows are rebalanced after a health failure.
    pub backends: BTreeSet<BackendId>,
    /// Client → VIP flows of a service (by id) whose source the service's new ACL denies: the
    /// compiled entries of that ACL.
    pub denied: Vec<(u32, Vec<acl::Entry>)>,
    /// Flows naming a backend id outside this set (adoption at start: ids no live entry has).
    pub unless_active: Option<BTreeSet<BackendId>>,
}

impl PurgeJob {
    /// Whether the job deletes this flow.
    #[must_use]
    pub fn matches(&self, k: &FlowKey4, e: &ConnEntry4) -> bool {
        let names = |ids: &BTreeSet<BackendId>| {
            ids.contains(&e.backend) || (e.peer != 0 && ids.contains(&e.peer))
        };
        if names(&self.backends) {
            return true;
        }
        if let Some(active) = &self.unless_active
            && (!active.contains(&e.backend) || (e.peer != 0 && !active.contains(&e.peer)))
        {
            return true;
        }
        e.is_forward()
            && self.denied.iter().any(|(service, entries)| {
                *service == e.service
                    && acl::lpm(entries, &v4_mapped(k.src))
                        .is_some_and(|x| x.action == acl::Action::Deny)
            })
    }

    /// [`Self::matches`] for an IPv6 flow.
    #[must_use]
    pub fn matches6(&self, k: &FlowKey6, e: &ConnEntry6) -> bool {
        let names = |ids: &BTreeSet<BackendId>| {
            ids.contains(&e.backend) || (e.peer != 0 && ids.contains(&e.peer))
        };
        if names(&self.backends) {
            return true;
        }
        if let Some(active) = &self.unless_active
            && (!active.contains(&e.backend) || (e.peer != 0 && !active.contains(&e.peer)))
        {
            return true;
        }
        e.is_forward()
            && self.denied.iter().any(|(service, entries)| {
                *service == e.service
                    && acl::lpm(entries, &k.src).is_some_and(|x| x.action == acl::Action::Deny)
            })
    }

    /// Whether the job selects nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty() && self.denied.is_empty() && self.unless_active.is_none()
    }

    /// Adds another job's selections to this one (one walk for both).
    pub fn merge(&mut self, o: Self) {
        self.backends.extend(o.backends);
        self.denied.extend(o.denied);
        if let Some(a) = o.unless_active {
            self.unless_active = Some(a);
        }
    }
}

/// What the pinned maps hold when an agent starts: the previous agent's work, which the new
/// one adopts instead of rebuilding (see `Reconciler::start`).
#[derive(Clone, Debug, Default)]
pub struct LiveMaps {
    pub services: Vec<(ServiceKey, ServiceInfo)>,
    pub vips: Vec<(VipKey, VipInfo)>,
    /// The active entries of `LB_BACKENDS4`.
    pub backends: Vec<(BackendId, Backend)>,
    /// Every `LB_ACL4` entry, with its set id.
    pub acl: Vec<(u32, acl::Entry)>,
    /// `LB_PIPS4`: (PIP, instance, next hop).
    pub pips: Vec<(Addr, Addr, NextHop)>,
    /// `LB_PIP_REV4`: (instance, PIP).
    pub pip_revs: Vec<(Addr, Addr)>,
    /// `LB_ROUTES4`: (prefix length, prefix, next hop), in map form.
    pub routes: Vec<(u32, Addr, NextHop)>,
    /// `LB_REVSVC4`.
    pub revs: Vec<(RevKey, RevService)>,
    /// The non-zero words of `LB_OURS4`.
    pub ours: Vec<(u32, u64)>,
    /// `LB_LOCAL4` and `LB_LOCAL6`, in map form.
    pub locals: Vec<Addr>,
    /// The non-zero entries of `LB_SVC_RETIRED`: service id → its retired backends' sum.
    pub retired: Vec<(u32, Counters)>,
    /// `LB_OUTBOUND4`, `LB_OUT_FRONTS4` and `LB_OUT_INSIDE4` (rule, address, length).
    pub outbound: Vec<([u8; 4], lb_common::outbound::OutboundEntry4)>,
    pub out_fronts: Vec<([u8; 4], lb_common::outbound::OutFront4)>,
    pub out_blocks: Vec<(lb_common::outbound::OutBlockKey4, [u8; 4])>,
    pub out_inside: Vec<(u32, [u8; 4], u8)>,
}

#[cfg(test)]
mod tests {
    use lb_common::maps::{CONN_HAIRPIN, CONN_HAIRPIN_REV};

    use super::*;

    /// A purge selects IPv6 flows as it selects IPv4 ones: by backend id, by ids no live entry
    /// has (adoption), and by a service's denied sources; reverse entries only by id; hairpin
    /// flows by their connecting backend's id too.
    #[test]
    fn a_purge_selects_ipv6_flows_by_the_same_rules() {
        let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let k = FlowKey6::of(
            a("2001:db8:1::7"),
            a("2001:db8:3::10"),
            [0x9c, 0x40],
            [0, 80],
            6,
        );
        let e = ConnEntry6::forward(3, 1, 0, 0, 100, (0, 0));
        let by_id = PurgeJob {
            backends: BTreeSet::from([3]),
            ..PurgeJob::default()
        };
        assert!(by_id.matches6(&k, &e));
        let other = PurgeJob {
            backends: BTreeSet::from([4]),
            ..PurgeJob::default()
        };
        assert!(!other.matches6(&k, &e));
        let adopt = PurgeJob {
            unless_active: Some(BTreeSet::from([4])),
            ..PurgeJob::default()
        };
        assert!(adopt.matches6(&k, &e));
        let deny = |p: &str, len| acl::Entry {
            prefix: acl::Prefix { addr: a(p), len },
            action: acl::Action::Deny,
            rule: Some(1),
        };
        let denied = PurgeJob {
            denied: vec![(1, vec![deny("2001:db8:1::", 48)])],
            ..PurgeJob::default()
        };
        assert!(denied.matches6(&k, &e));
        let elsewhere = PurgeJob {
            denied: vec![(1, vec![deny("2001:db8:9::", 48)])],
            ..PurgeJob::default()
        };
        assert!(!elsewhere.matches6(&k, &e));
        let rev = ConnEntry6::reverse(3, 1, k.dport, k.dst, 0);
        assert!(!denied.matches6(&k.reply_from(a("2001:db8:2::11"), [0, 80]), &rev));
        // A hairpin flow goes with its connecting backend (`peer`) too, both its entries.
        let hairpin = ConnEntry6::hairpin(3, 1, CONN_HAIRPIN, [0xc0, 1], k.dst, [0; 2], 4, 0);
        let peer_gone = PurgeJob {
            backends: BTreeSet::from([4]),
            ..PurgeJob::default()
        };
        assert!(peer_gone.matches6(&k, &hairpin));
        assert!(!other.matches6(&k, &ConnEntry6::forward(3, 1, 0, 0, 100, (0, 0))));
        let hrev = ConnEntry6::hairpin(3, 1, CONN_HAIRPIN_REV, k.sport, k.src, k.dport, 4, 0);
        assert!(peer_gone.matches6(&k, &hrev));
        let peer_unknown = PurgeJob {
            unless_active: Some(BTreeSet::from([3])),
            ..PurgeJob::default()
        };
        assert!(peer_unknown.matches6(&k, &hairpin));
        // A hairpin flow's own entry is a forward one: a denied source's goes.
        assert!(denied.matches6(&k, &hairpin));
        assert!(!denied.matches6(&k, &hrev));
    }
}
