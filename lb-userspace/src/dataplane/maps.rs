//! The program's maps, typed: [`Maps`], the writer's handle on all of them, and [`SideMaps`],
//! the handle that side tasks open from the pins for walks and counters off the writer loop.

use std::{collections::HashMap as StdHashMap, os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, IterableMap as _, LpmTrie, MapData, PerCpuArray, PerCpuHashMap,
        PerCpuValues, lpm_trie::Key as LpmKey,
    },
};
use lb_common::{
    addr::{Addr, as_v4, as_v6, prefix_v4, prefix_v6},
    consts::map_names,
    flow::{FlowKey4, FlowKey6},
    maps::{
        AclKey4, AclKey6, AclValue, Backend, Backend4, Backend6, BackendId, CONN_FORWARD,
        ConnEntry4, ConnEntry6, Counters, NextHop, PipEntry4, PipEntry6, RevKey, RevKey4, RevKey6,
        RevService, RevService4, RevService6, RouteKey4, RouteKey6, ServiceInfo, ServiceKey,
        ServiceKey4, ServiceKey6, VipInfo, VipKey, acl_key4, acl_key6,
    },
    outbound::{OutBlockKey4, OutFront4, OutboundEntry4},
    trace::TraceConfig,
    xmit::XmitFails,
};

use super::{
    FlowPurge, LiveMaps, MapOps, MapReader, PurgeJob, TrackedFlow,
    flows::{delete_keys, lookup, walk_batches},
    loader::take_map,
    sys,
};
use crate::error::{LoadError, MapOpError};

/// The program's maps, typed: the only writer's handle (the reconciler holds it; tests
/// provision fixtures through the same type).
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey4, ServiceInfo>,
    pub vips: HashMap<MapData, [u8; 4], VipInfo>,
    pub backends: Array<MapData, Backend4>,
    pub ring: Array<MapData, BackendId>,
    pub routes: LpmTrie<MapData, RouteKey4, NextHop>,
    pub acl: LpmTrie<MapData, AclKey4, AclValue>,
    pub pips: HashMap<MapData, [u8; 4], PipEntry4>,
    pub pip_rev: HashMap<MapData, [u8; 4], PipEntry4>,
    pub revsvc: HashMap<MapData, RevKey4, RevService4>,
    pub services6: HashMap<MapData, ServiceKey6, ServiceInfo>,
    pub vips6: HashMap<MapData, [u8; 16], VipInfo>,
    pub backends6: Array<MapData, Backend6>,
    pub revsvc6: HashMap<MapData, RevKey6, RevService6>,
    pub routes6: LpmTrie<MapData, RouteKey6, NextHop>,
    pub acl6: LpmTrie<MapData, AclKey6, AclValue>,
    pub pips6: HashMap<MapData, [u8; 16], PipEntry6>,
    pub pip_rev6: HashMap<MapData, [u8; 16], PipEntry6>,
    pub ours: Array<MapData, u64>,
    pub retired: Array<MapData, Counters>,
    pub locals: HashMap<MapData, [u8; 4], u32>,
    pub locals6: HashMap<MapData, [u8; 16], u32>,
    pub trace_cfg: Array<MapData, TraceConfig>,
    pub outbound: HashMap<MapData, [u8; 4], OutboundEntry4>,
    pub out_fronts: HashMap<MapData, [u8; 4], OutFront4>,
    pub out_inside: LpmTrie<MapData, AclKey4, u32>,
    pub out_blocks: HashMap<MapData, OutBlockKey4, [u8; 4]>,
    /// Conntrack and the counters, also reachable from the writer (adoption's flow purge at
    /// start, and tests that read counters through the reconciler's maps).
    pub side: SideMaps,
}

/// Conntrack and the counters: what status, stats, metrics and flow purges need. Side tasks
/// open their own handle from the pins ([`SideMaps::open`]), so a walk over millions of flows
/// never runs on the writer loop.
pub struct SideMaps {
    pub conntrack: HashMap<MapData, FlowKey4, ConnEntry4>,
    pub conntrack6: HashMap<MapData, FlowKey6, ConnEntry6>,
    pub reasons: PerCpuArray<MapData, u64>,
    pub svc_stats: PerCpuArray<MapData, Counters>,
    pub be_stats: PerCpuArray<MapData, Counters>,
    pub xmit_fails: PerCpuHashMap<MapData, u32, XmitFails>,
    /// What the tunnel probes' tc program did (`lb_common::encap::probe::Outcome`).
    pub probe_stats: PerCpuArray<MapData, u64>,
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            services: take_map(ebpf, map_names::SERVICES4)?,
            vips: take_map(ebpf, map_names::VIPS4)?,
            backends: take_map(ebpf, map_names::BACKENDS4)?,
            ring: take_map(ebpf, map_names::RING)?,
            routes: take_map(ebpf, map_names::ROUTES4)?,
            acl: take_map(ebpf, map_names::ACL4)?,
            pips: take_map(ebpf, map_names::PIPS4)?,
            pip_rev: take_map(ebpf, map_names::PIP_REV4)?,
            revsvc: take_map(ebpf, map_names::REVSVC)?,
            services6: take_map(ebpf, map_names::SERVICES6)?,
            vips6: take_map(ebpf, map_names::VIPS6)?,
            backends6: take_map(ebpf, map_names::BACKENDS6)?,
            revsvc6: take_map(ebpf, map_names::REVSVC6)?,
            routes6: take_map(ebpf, map_names::ROUTES6)?,
            acl6: take_map(ebpf, map_names::ACL6)?,
            pips6: take_map(ebpf, map_names::PIPS6)?,
            pip_rev6: take_map(ebpf, map_names::PIP_REV6)?,
            ours: take_map(ebpf, map_names::OURS)?,
            retired: take_map(ebpf, map_names::RETIRED_STATS)?,
            locals: take_map(ebpf, map_names::LOCALS)?,
            locals6: take_map(ebpf, map_names::LOCALS6)?,
            trace_cfg: take_map(ebpf, map_names::TRACE_CFG)?,
            outbound: take_map(ebpf, map_names::OUTBOUND4)?,
            out_fronts: take_map(ebpf, map_names::OUT_FRONTS4)?,
            out_inside: take_map(ebpf, map_names::OUT_INSIDE4)?,
            out_blocks: take_map(ebpf, map_names::OUT_BLOCKS4)?,
            side: SideMaps {
                conntrack: take_map(ebpf, map_names::CONNTRACK)?,
                conntrack6: take_map(ebpf, map_names::CONNTRACK6)?,
                reasons: take_map(ebpf, map_names::REASON_STATS)?,
                svc_stats: take_map(ebpf, map_names::SERVICE_STATS)?,
                be_stats: take_map(ebpf, map_names::BACKEND_STATS)?,
                xmit_fails: take_map(ebpf, map_names::XMIT_FAILS)?,
                probe_stats: take_map(ebpf, map_names::PROBE_STATS)?,
            },
        })
    }
}

impl SideMaps {
    /// Opens conntrack and the counters from the pins under `dir` (the agent's own maps, a
    /// second handle on each).
    ///
    /// # Errors
    /// A pin is missing or is not the map it should be.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        fn pinned<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
            dir: &Path,
            name: &'static str,
            wrap: fn(MapData) -> aya::maps::Map,
        ) -> Result<T, LoadError> {
            let data = MapData::from_pin(dir.join(name))
                .map_err(|source| LoadError::Map { name, source })?;
            T::try_from(wrap(data)).map_err(|source| LoadError::Map { name, source })
        }
        Ok(Self {
            conntrack: pinned(dir, map_names::CONNTRACK, aya::maps::Map::LruHashMap)?,
            conntrack6: pinned(dir, map_names::CONNTRACK6, aya::maps::Map::LruHashMap)?,
            reasons: pinned(dir, map_names::REASON_STATS, aya::maps::Map::PerCpuArray)?,
            svc_stats: pinned(dir, map_names::SERVICE_STATS, aya::maps::Map::PerCpuArray)?,
            be_stats: pinned(dir, map_names::BACKEND_STATS, aya::maps::Map::PerCpuArray)?,
            xmit_fails: pinned(dir, map_names::XMIT_FAILS, aya::maps::Map::PerCpuHashMap)?,
            probe_stats: pinned(dir, map_names::PROBE_STATS, aya::maps::Map::PerCpuArray)?,
        })
    }

    /// Packets counted under verdict reason `r`, summed over CPUs.
    ///
    /// # Errors
    /// The map read fails.
    pub fn reason_count(&self, r: u32) -> Result<u64, MapOpError> {
        let v = self
            .reasons
            .get(&r, 0)
            .map_err(op_err(map_names::REASON_STATS, "read"))?;
        Ok(v.iter().sum())
    }

    /// Calls `f` on every tracked IPv4 flow, one `BPF_MAP_LOOKUP_BATCH` of [`flows::WALK_BATCH`](super::flows::WALK_BATCH)
    /// entries at a time (aya's iterator costs two syscalls per entry); `on_batch` sees the
    /// running count after each batch. Kernels without batch lookups fall back to aya's
    /// iterator.
    ///
    /// Entries the fast path adds or the LRU evicts during the walk may or may not be seen.
    ///
    /// # Errors
    /// A lookup fails.
    pub fn walk_flows(
        &self,
        f: &mut dyn FnMut(&FlowKey4, &ConnEntry4),
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<usize, MapOpError> {
        let mut seen = 0;
        self.walk_flow_batches(&mut |keys, values| {
            for (k, v) in keys.iter().zip(values) {
                f(k, v);
            }
            seen += keys.len();
            on_batch(seen);
        })?;
        Ok(seen)
    }

    /// Calls `f` on each batch of tracked IPv4 flows (keys and entries, up to [`flows::WALK_BATCH`](super::flows::WALK_BATCH)),
    /// as [`Self::walk_flows`] reads them; returns how many there were.
    ///
    /// # Errors
    /// A lookup fails.
    pub fn walk_flow_batches(
        &self,
        f: &mut dyn FnMut(&[FlowKey4], &[ConnEntry4]),
    ) -> Result<usize, MapOpError> {
        walk_batches(&self.conntrack, map_names::CONNTRACK, f)
    }

    /// [`Self::walk_flow_batches`] over the IPv6 table.
    ///
    /// # Errors
    /// A lookup fails.
    pub fn walk_flow_batches6(
        &self,
        f: &mut dyn FnMut(&[FlowKey6], &[ConnEntry6]),
    ) -> Result<usize, MapOpError> {
        walk_batches(&self.conntrack6, map_names::CONNTRACK6, f)
    }

    /// An IPv4 flow's entry, if it is tracked.
    ///
    /// # Errors
    /// The lookup fails other than by a missing key.
    pub fn flow(&self, k: &FlowKey4) -> Result<Option<ConnEntry4>, MapOpError> {
        lookup(&self.conntrack, map_names::CONNTRACK, k)
    }

    /// An IPv6 flow's entry, if it is tracked.
    ///
    /// # Errors
    /// The lookup fails other than by a missing key.
    pub fn flow6(&self, k: &FlowKey6) -> Result<Option<ConnEntry6>, MapOpError> {
        lookup(&self.conntrack6, map_names::CONNTRACK6, k)
    }

    /// Live conntrack entries per backend id (client → backend entries, both families), with
    /// `on_batch` called as the walk proceeds.
    ///
    /// # Errors
    /// The walk fails.
    pub fn flows_per_backend_with(
        &self,
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<StdHashMap<BackendId, u64>, MapOpError> {
        let mut m = StdHashMap::new();
        let seen = self.walk_flows(
            &mut |_, e| {
                if e.is_forward() {
                    *m.entry(e.backend).or_default() += 1;
                }
            },
            on_batch,
        )?;
        let mut seen6 = seen;
        self.walk_flow_batches6(&mut |_, values| {
            for e in values {
                if e.kind == CONN_FORWARD {
                    *m.entry(e.backend).or_default() += 1;
                }
            }
            seen6 += values.len();
            on_batch(seen6);
        })?;
        Ok(m)
    }

    /// Deletes IPv4 `keys` with `BPF_MAP_DELETE_BATCH`; a key the LRU evicted meanwhile is
    /// skipped.
    ///
    /// # Errors
    /// A delete fails other than by a missing key.
    pub fn delete_flows(&mut self, keys: &[FlowKey4]) -> Result<(), MapOpError> {
        delete_keys(&mut self.conntrack, map_names::CONNTRACK, keys)
    }

    /// [`Self::delete_flows`] for IPv6 keys.
    ///
    /// # Errors
    /// A delete fails other than by a missing key.
    pub fn delete_flows6(&mut self, keys: &[FlowKey6]) -> Result<(), MapOpError> {
        delete_keys(&mut self.conntrack6, map_names::CONNTRACK6, keys)
    }
}

impl MapReader for SideMaps {
    fn service_counters(&self, id: u32) -> Result<Counters, MapOpError> {
        let v = self
            .svc_stats
            .get(&id, 0)
            .map_err(op_err(map_names::SERVICE_STATS, "read"))?;
        Ok(sum_counters(&v))
    }
    fn backend_counters(&self, id: BackendId) -> Result<Counters, MapOpError> {
        let v = self
            .be_stats
            .get(&id, 0)
            .map_err(op_err(map_names::BACKEND_STATS, "read"))?;
        Ok(sum_counters(&v))
    }
    fn reason_counters(&self) -> Result<Vec<u64>, MapOpError> {
        lb_common::verdict::ALL_REASONS
            .iter()
            .map(|r| self.reason_count(*r as u32))
            .collect()
    }
    fn flows_per_backend(&self) -> Result<StdHashMap<BackendId, u64>, MapOpError> {
        self.flows_per_backend_with(&mut |_| {})
    }
    fn each_flow(&self, f: &mut dyn FnMut(TrackedFlow<'_>)) -> Result<(), MapOpError> {
        self.walk_flows(&mut |k, e| f(TrackedFlow::V4(k, e)), &mut |_| {})?;
        self.walk_flow_batches6(&mut |keys, values| {
            for (k, e) in keys.iter().zip(values) {
                f(TrackedFlow::V6(k, e));
            }
        })
        .map(drop)
    }
    fn flow(&self, k: &FlowKey4) -> Result<Option<ConnEntry4>, MapOpError> {
        Self::flow(self, k)
    }
    fn flow6(&self, k: &FlowKey6) -> Result<Option<ConnEntry6>, MapOpError> {
        Self::flow6(self, k)
    }
    fn xmit_fails(&self) -> Result<Vec<(u32, XmitFails)>, MapOpError> {
        let mut out = Vec::new();
        for r in &self.xmit_fails {
            let (k, v) = r.map_err(op_err(map_names::XMIT_FAILS, "read"))?;
            out.push((k, XmitFails::sum(&v)));
        }
        Ok(out)
    }
    fn probe_tunnel(&self) -> Result<Vec<u64>, MapOpError> {
        lb_common::encap::probe::ALL
            .iter()
            .map(|o| {
                let v = self
                    .probe_stats
                    .get(&(*o as u32), 0)
                    .map_err(op_err(map_names::PROBE_STATS, "read"))?;
                Ok(v.iter().sum())
            })
            .collect()
    }
}

impl FlowPurge for SideMaps {
    fn purge(&mut self, job: &PurgeJob) -> Result<usize, MapOpError> {
        self.flush(&|f| match f {
            TrackedFlow::V4(k, e) => job.matches(k, e),
            TrackedFlow::V6(k, e) => job.matches6(k, e),
        })
    }
    fn flush(&mut self, select: &dyn Fn(TrackedFlow<'_>) -> bool) -> Result<usize, MapOpError> {
        let mut doomed = Vec::new();
        self.walk_flows(
            &mut |k, e| {
                if select(TrackedFlow::V4(k, e)) {
                    doomed.push(*k);
                }
            },
            &mut |_| {},
        )?;
        self.delete_flows(&doomed)?;
        let mut doomed6 = Vec::new();
        self.walk_flow_batches6(&mut |keys, values| {
            for (k, e) in keys.iter().zip(values) {
                if select(TrackedFlow::V6(k, e)) {
                    doomed6.push(*k);
                }
            }
        })?;
        self.delete_flows6(&doomed6)?;
        Ok(doomed.len() + doomed6.len())
    }
}

impl MapReader for Maps {
    fn service_counters(&self, id: u32) -> Result<Counters, MapOpError> {
        self.side.service_counters(id)
    }
    fn backend_counters(&self, id: BackendId) -> Result<Counters, MapOpError> {
        self.side.backend_counters(id)
    }
    fn reason_counters(&self) -> Result<Vec<u64>, MapOpError> {
        self.side.reason_counters()
    }
    fn flows_per_backend(&self) -> Result<StdHashMap<BackendId, u64>, MapOpError> {
        self.side.flows_per_backend()
    }
    fn each_flow(&self, f: &mut dyn FnMut(TrackedFlow<'_>)) -> Result<(), MapOpError> {
        self.side.each_flow(f)
    }
    fn xmit_fails(&self) -> Result<Vec<(u32, XmitFails)>, MapOpError> {
        self.side.xmit_fails()
    }
    fn probe_tunnel(&self) -> Result<Vec<u64>, MapOpError> {
        self.side.probe_tunnel()
    }
    fn flow(&self, k: &FlowKey4) -> Result<Option<ConnEntry4>, MapOpError> {
        self.side.flow(k)
    }
    fn flow6(&self, k: &FlowKey6) -> Result<Option<ConnEntry6>, MapOpError> {
        self.side.flow6(k)
    }
}

impl FlowPurge for Maps {
    fn purge(&mut self, job: &PurgeJob) -> Result<usize, MapOpError> {
        self.side.purge(job)
    }
    fn flush(&mut self, select: &dyn Fn(TrackedFlow<'_>) -> bool) -> Result<usize, MapOpError> {
        self.side.flush(select)
    }
}

impl MapOps for Maps {
    fn put_service(&mut self, k: &ServiceKey, v: &ServiceInfo) -> Result<(), MapOpError> {
        let op = || format!("insert service {k:?}");
        if let Some(k6) = k.v6() {
            for &p in per_proto(k6.proto) {
                self.services6
                    .insert(ServiceKey6 { proto: p, ..k6 }, v, 0)
                    .map_err(op_err(map_names::SERVICES6, op()))?;
            }
            return Ok(());
        }
        let k4 = k
            .v4()
            .ok_or_else(|| no_family(map_names::SERVICES4, op()))?;
        // HA ports: one entry per protocol, the TCP one first (each an atomic update).
        for &p in per_proto(k4.proto) {
            self.services
                .insert(ServiceKey4 { proto: p, ..k4 }, v, 0)
                .map_err(op_err(map_names::SERVICES4, op()))?;
        }
        Ok(())
    }
    fn del_service(&mut self, k: &ServiceKey) -> Result<(), MapOpError> {
        let op = "remove service";
        if let Some(k6) = k.v6() {
            for &p in per_proto(k6.proto) {
                deleted(self.services6.remove(&ServiceKey6 { proto: p, ..k6 }))
                    .map_err(op_err(map_names::SERVICES6, op))?;
            }
            return Ok(());
        }
        let k4 = k.v4().ok_or_else(|| no_family(map_names::SERVICES4, op))?;
        for &p in per_proto(k4.proto) {
            deleted(self.services.remove(&ServiceKey4 { proto: p, ..k4 }))
                .map_err(op_err(map_names::SERVICES4, op))?;
        }
        Ok(())
    }
    fn put_vip(&mut self, k: &VipKey, v: &VipInfo) -> Result<(), MapOpError> {
        if let Some(a) = as_v6(&k.vip) {
            return self
                .vips6
                .insert(a, v, 0)
                .map_err(op_err(map_names::VIPS6, "insert"));
        }
        let a = v4(map_names::VIPS4, "insert", &k.vip)?;
        self.vips
            .insert(a, v, 0)
            .map_err(op_err(map_names::VIPS4, "insert"))
    }
    fn del_vip(&mut self, k: &VipKey) -> Result<(), MapOpError> {
        if let Some(a) = as_v6(&k.vip) {
            return deleted(self.vips6.remove(&a)).map_err(op_err(map_names::VIPS6, "remove"));
        }
        let a = v4(map_names::VIPS4, "remove", &k.vip)?;
        deleted(self.vips.remove(&a)).map_err(op_err(map_names::VIPS4, "remove"))
    }
    fn put_backend(&mut self, id: BackendId, b: &Backend) -> Result<(), MapOpError> {
        let op = || format!("set {id}");
        // An all-zero entry (a cleared id) has no family: both arrays' entries are cleared,
        // so an id that held a backend of either family is free in both.
        if *b == Backend::default() {
            self.backends6
                .set(id, Backend6::default(), 0)
                .map_err(op_err(map_names::BACKENDS6, op()))?;
            return self
                .backends
                .set(id, Backend4::default(), 0)
                .map_err(op_err(map_names::BACKENDS4, op()));
        }
        if let Some(b6) = b.v6() {
            return self
                .backends6
                .set(id, b6, 0)
                .map_err(op_err(map_names::BACKENDS6, op()));
        }
        let b4 = b
            .v4()
            .ok_or_else(|| no_family(map_names::BACKENDS4, op()))?;
        self.backends
            .set(id, b4, 0)
            .map_err(op_err(map_names::BACKENDS4, op()))
    }
    fn put_rev(&mut self, k: &RevKey, v: &RevService) -> Result<(), MapOpError> {
        if let (Some(k6), Some(v6)) = (k.v6(), v.v6()) {
            for &p in per_proto(k6.proto) {
                self.revsvc6
                    .insert(RevKey6 { proto: p, ..k6 }, v6, 0)
                    .map_err(op_err(map_names::REVSVC6, "insert"))?;
            }
            return Ok(());
        }
        let (Some(k4), Some(v4)) = (k.v4(), v.v4()) else {
            return Err(no_family(
                map_names::REVSVC,
                "insert (the endpoint and its VIP differ in family)",
            ));
        };
        for &p in per_proto(k4.proto) {
            self.revsvc
                .insert(RevKey4 { proto: p, ..k4 }, v4, 0)
                .map_err(op_err(map_names::REVSVC, "insert"))?;
        }
        Ok(())
    }
    fn del_rev(&mut self, k: &RevKey) -> Result<(), MapOpError> {
        if let Some(k6) = k.v6() {
            for &p in per_proto(k6.proto) {
                deleted(self.revsvc6.remove(&RevKey6 { proto: p, ..k6 }))
                    .map_err(op_err(map_names::REVSVC6, "remove"))?;
            }
            return Ok(());
        }
        let k4 = k
            .v4()
            .ok_or_else(|| no_family(map_names::REVSVC, "remove"))?;
        for &p in per_proto(k4.proto) {
            deleted(self.revsvc.remove(&RevKey4 { proto: p, ..k4 }))
                .map_err(op_err(map_names::REVSVC, "remove"))?;
        }
        Ok(())
    }
    fn put_ours(&mut self, word: u32, bits: u64) -> Result<(), MapOpError> {
        self.ours
            .set(word, bits, 0)
            .map_err(op_err(map_names::OURS, format!("set {word}")))
    }
    fn put_slots(&mut self, off: u32, slots: &[BackendId]) -> Result<(), MapOpError> {
        // One syscall per 64 Ki slots (BPF_MAP_UPDATE_BATCH) instead of one per slot: a
        // default table is 65 537 slots, and 10k small services are 2.5 M.
        const CHUNK: usize = 1 << 16;
        let mut at = off;
        for chunk in slots.chunks(CHUNK) {
            let done = update_batch(&self.ring, at, chunk).map_err(|source| MapOpError {
                map: map_names::RING,
                op: format!("batch update of {} slots at {at}", chunk.len()),
                source: aya::maps::MapError::SyscallError(source),
            })?;
            if !done {
                // A kernel without batch updates for arrays: slot by slot.
                for (i, id) in (at..).zip(chunk) {
                    self.ring
                        .set(i, id, 0)
                        .map_err(op_err(map_names::RING, format!("set slot {i}")))?;
                }
            }
            at += u32::try_from(chunk.len()).expect("a chunk is 64 Ki at most");
        }
        Ok(())
    }
    fn put_route(&mut self, prefix_len: u32, dst: Addr, nh: &NextHop) -> Result<(), MapOpError> {
        if let Some((p, a)) = prefix_v6(&dst, prefix_len) {
            return self
                .routes6
                .insert(&LpmKey::new(p, a), nh, 0)
                .map_err(op_err(map_names::ROUTES6, "insert"));
        }
        let (p, a) =
            prefix_v4(&dst, prefix_len).ok_or_else(|| no_family(map_names::ROUTES4, "insert"))?;
        self.routes
            .insert(&LpmKey::new(p, a), nh, 0)
            .map_err(op_err(map_names::ROUTES4, "insert"))
    }
    fn del_route(&mut self, prefix_len: u32, dst: Addr) -> Result<(), MapOpError> {
        if let Some((p, a)) = prefix_v6(&dst, prefix_len) {
            return deleted(self.routes6.remove(&LpmKey::new(p, a)))
                .map_err(op_err(map_names::ROUTES6, "remove"));
        }
        let (p, a) =
            prefix_v4(&dst, prefix_len).ok_or_else(|| no_family(map_names::ROUTES4, "remove"))?;
        deleted(self.routes.remove(&LpmKey::new(p, a)))
            .map_err(op_err(map_names::ROUTES4, "remove"))
    }
    fn put_trace(&mut self, c: &TraceConfig) -> Result<(), MapOpError> {
        self.trace_cfg
            .set(0, *c, 0)
            .map_err(op_err(map_names::TRACE_CFG, "set"))
    }
    fn put_local(&mut self, a: Addr) -> Result<(), MapOpError> {
        if let Some(a6) = as_v6(&a) {
            return self
                .locals6
                .insert(a6, 1, 0)
                .map_err(op_err(map_names::LOCALS6, "insert"));
        }
        let a4 = v4(map_names::LOCALS, "insert", &a)?;
        self.locals
            .insert(a4, 1, 0)
            .map_err(op_err(map_names::LOCALS, "insert"))
    }
    fn del_local(&mut self, a: Addr) -> Result<(), MapOpError> {
        if let Some(a6) = as_v6(&a) {
            return deleted(self.locals6.remove(&a6)).map_err(op_err(map_names::LOCALS6, "remove"));
        }
        let a4 = v4(map_names::LOCALS, "remove", &a)?;
        deleted(self.locals.remove(&a4)).map_err(op_err(map_names::LOCALS, "remove"))
    }
    fn zero_service_stats(&mut self, id: u32) -> Result<(), MapOpError> {
        zero_per_cpu(&mut self.side.svc_stats, map_names::SERVICE_STATS, id)?;
        self.retired
            .set(id, Counters::default(), 0)
            .map_err(op_err(map_names::RETIRED_STATS, format!("zero slot {id}")))
    }
    fn retire_counters(
        &mut self,
        backend: BackendId,
        service: u32,
        sum: &Counters,
        folded: &Counters,
    ) -> Result<(Counters, Counters), MapOpError> {
        let record = self.side.backend_counters(backend)?;
        let total = sum.add(&record.since(folded));
        self.retired
            .set(service, total, 0)
            .map_err(op_err(map_names::RETIRED_STATS, format!("set {service}")))?;
        Ok((total, record))
    }
    fn zero_backend_stats(&mut self, id: BackendId) -> Result<(), MapOpError> {
        zero_per_cpu(&mut self.side.be_stats, map_names::BACKEND_STATS, id)
    }
    fn put_acl(&mut self, acl_id: u32, e: &lb_common::acl::Entry) -> Result<(), MapOpError> {
        let op = format!("insert set {acl_id}");
        let action = match e.action {
            lb_common::acl::Action::Permit => lb_common::maps::ACL_PERMIT,
            lb_common::acl::Action::Deny => lb_common::maps::ACL_DENY,
            lb_common::acl::Action::Hairpin => lb_common::maps::ACL_HAIRPIN,
        };
        let v = AclValue {
            action,
            rule: e.rule.unwrap_or(u32::MAX),
        };
        if let Some((p, a)) = prefix_v6(&e.prefix.addr, e.prefix.len) {
            let key = LpmKey::new(32 + p, acl_key6(acl_id, a));
            return self
                .acl6
                .insert(&key, v, 0)
                .map_err(op_err(map_names::ACL6, op));
        }
        let (p, a) = prefix_v4(&e.prefix.addr, e.prefix.len)
            .ok_or_else(|| no_family(map_names::ACL4, op.clone()))?;
        let key = LpmKey::new(32 + p, acl_key4(acl_id, a));
        self.acl
            .insert(&key, v, 0)
            .map_err(op_err(map_names::ACL4, op))
    }
    fn del_acl(&mut self, acl_id: u32, p: &lb_common::acl::Prefix) -> Result<(), MapOpError> {
        let op = format!("remove from set {acl_id}");
        if let Some((len, a)) = prefix_v6(&p.addr, p.len) {
            let key = LpmKey::new(32 + len, acl_key6(acl_id, a));
            return deleted(self.acl6.remove(&key)).map_err(op_err(map_names::ACL6, op));
        }
        let (len, a) =
            prefix_v4(&p.addr, p.len).ok_or_else(|| no_family(map_names::ACL4, op.clone()))?;
        let key = LpmKey::new(32 + len, acl_key4(acl_id, a));
        deleted(self.acl.remove(&key)).map_err(op_err(map_names::ACL4, op))
    }
    fn put_pip(&mut self, pip: &Addr, dip: &Addr, nh: &NextHop) -> Result<(), MapOpError> {
        if let (Some(pip), Some(dip)) = (as_v6(pip), as_v6(dip)) {
            // Reverse first, as for IPv4.
            let rev = PipEntry6 {
                addr: pip,
                nh: NextHop::default(),
            };
            self.pip_rev6
                .insert(dip, rev, 0)
                .map_err(op_err(map_names::PIP_REV6, "insert"))?;
            let fwd = PipEntry6 { addr: dip, nh: *nh };
            return self
                .pips6
                .insert(pip, fwd, 0)
                .map_err(op_err(map_names::PIPS6, "insert"));
        }
        let pip = v4(map_names::PIPS4, "insert", pip)?;
        let dip = v4(map_names::PIPS4, "insert", dip)?;
        // Reverse first: replies can be translated before the first inbound packet arrives.
        let rev = PipEntry4 {
            addr: pip,
            nh: NextHop::default(),
        };
        self.pip_rev
            .insert(dip, rev, 0)
            .map_err(op_err(map_names::PIP_REV4, "insert"))?;
        let fwd = PipEntry4 { addr: dip, nh: *nh };
        self.pips
            .insert(pip, fwd, 0)
            .map_err(op_err(map_names::PIPS4, "insert"))
    }
    fn del_pip(&mut self, pip: &Addr, dip: &Addr) -> Result<(), MapOpError> {
        if let (Some(pip), Some(dip)) = (as_v6(pip), as_v6(dip)) {
            for (m, name, k) in [
                (&mut self.pips6, map_names::PIPS6, pip),
                (&mut self.pip_rev6, map_names::PIP_REV6, dip),
            ] {
                deleted(m.remove(&k)).map_err(op_err(name, "remove"))?;
            }
            return Ok(());
        }
        let pip = v4(map_names::PIPS4, "remove", pip)?;
        let dip = v4(map_names::PIP_REV4, "remove", dip)?;
        for (m, name, k) in [
            (&mut self.pips, map_names::PIPS4, pip),
            (&mut self.pip_rev, map_names::PIP_REV4, dip),
        ] {
            deleted(m.remove(&k)).map_err(op_err(name, "remove"))?;
        }
        Ok(())
    }
    fn put_outbound(&mut self, dip: [u8; 4], e: &OutboundEntry4) -> Result<(), MapOpError> {
        self.outbound
            .insert(dip, e, 0)
            .map_err(op_err(map_names::OUTBOUND4, "insert"))
    }
    fn del_outbound(&mut self, dip: [u8; 4]) -> Result<(), MapOpError> {
        deleted(self.outbound.remove(&dip)).map_err(op_err(map_names::OUTBOUND4, "remove"))
    }
    fn put_out_front(&mut self, a: [u8; 4], f: &OutFront4) -> Result<(), MapOpError> {
        self.out_fronts
            .insert(a, f, 0)
            .map_err(op_err(map_names::OUT_FRONTS4, "insert"))
    }
    fn put_out_block(&mut self, k: &OutBlockKey4, dip: [u8; 4]) -> Result<(), MapOpError> {
        self.out_blocks
            .insert(k, dip, 0)
            .map_err(op_err(map_names::OUT_BLOCKS4, "insert"))
    }
    fn del_out_block(&mut self, k: &OutBlockKey4) -> Result<(), MapOpError> {
        deleted(self.out_blocks.remove(k)).map_err(op_err(map_names::OUT_BLOCKS4, "remove"))
    }
    fn del_out_front(&mut self, a: [u8; 4]) -> Result<(), MapOpError> {
        deleted(self.out_fronts.remove(&a)).map_err(op_err(map_names::OUT_FRONTS4, "remove"))
    }
    fn put_out_inside(&mut self, rule: u32, (a, len): ([u8; 4], u8)) -> Result<(), MapOpError> {
        let key = LpmKey::new(32 + u32::from(len), acl_key4(rule, a));
        self.out_inside
            .insert(&key, 1, 0)
            .map_err(op_err(map_names::OUT_INSIDE4, "insert"))
    }
    fn del_out_inside(&mut self, rule: u32, (a, len): ([u8; 4], u8)) -> Result<(), MapOpError> {
        let key = LpmKey::new(32 + u32::from(len), acl_key4(rule, a));
        deleted(self.out_inside.remove(&key)).map_err(op_err(map_names::OUT_INSIDE4, "remove"))
    }
    fn read_live(&self) -> Result<LiveMaps, MapOpError> {
        self.live()
    }
    fn read_slots(&self, off: u32, len: u32) -> Result<Vec<BackendId>, MapOpError> {
        read_array(&self.ring, map_names::RING, off, len)
    }
}

/// The protocols a key of protocol `p` is written under: TCP and UDP for 0 (an HA-ports
/// endpoint, `ADDR:0/any`), else `p` itself.
fn per_proto(p: u8) -> &'static [u8] {
    use lb_common::flow::proto::{TCP, UDP};
    match p {
        0 => &[TCP, UDP],
        TCP => &[TCP],
        UDP => &[UDP],
        _ => &[],
    }
}

/// Writes `values` to array slots `off..` with one `BPF_MAP_UPDATE_BATCH`. `Ok(false)` when
/// the kernel does not support batch updates for this map (the caller falls back).
fn update_batch(
    map: &Array<MapData, BackendId>,
    off: u32,
    values: &[BackendId],
) -> Result<bool, aya::sys::SyscallError> {
    let keys: Vec<u32> = (off..).take(values.len()).collect();
    let count = u32::try_from(values.len()).expect("chunked");
    // SAFETY: `keys` and `values` are both `count` u32s long and alive for the call.
    match unsafe {
        sys::update_batch(
            map.map().fd().as_fd(),
            keys.as_ptr().cast(),
            values.as_ptr().cast(),
            count,
        )
    } {
        Ok(()) => Ok(true),
        Err(e) if sys::batch_unsupported(&e) => Ok(false),
        Err(io_error) => Err(aya::sys::SyscallError {
            call: "bpf_map_update_batch",
            io_error,
        }),
    }
}

/// Reads array slots `off..off + out.len()` into `out` with one `BPF_MAP_LOOKUP_BATCH`.
/// `Ok(false)` when the kernel does not support batch lookups for this map (the caller falls
/// back to one lookup per slot). A read past the array's end is an error, not a short read.
fn lookup_batch<V: aya::Pod>(
    map: &Array<MapData, V>,
    off: u32,
    out: &mut [V],
) -> Result<bool, aya::sys::SyscallError> {
    let mut keys = vec![0u32; out.len()];
    let count = u32::try_from(out.len()).expect("chunked");
    // The kernel walks keys with get_next_key from `in_batch`, so the batch starts *after* it:
    // `off - 1`, or no in_batch at all to start at slot 0.
    let in_batch = off.wrapping_sub(1);
    let mut out_batch = 0u32;
    // SAFETY: `keys` and `out` have room for `count` keys and values (`V` is the map's value
    // type, Pod), `in_batch` and `out_batch` for one key; all outlive the call.
    let r = unsafe {
        sys::lookup_batch(
            map.map().fd().as_fd(),
            (off != 0).then_some((&raw const in_batch).cast()),
            (&raw mut out_batch).cast(),
            keys.as_mut_ptr().cast(),
            out.as_mut_ptr().cast(),
            count,
        )
    };
    let done = match r {
        Ok((n, _)) => n,
        Err(e) if sys::batch_unsupported(&e) => return Ok(false),
        Err(io_error) => {
            return Err(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error,
            });
        }
    };
    if done != count || keys.iter().zip(off..).any(|(k, want)| *k != want) {
        return Err(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error: std::io::Error::other(format!(
                "asked for {count} slots from {off}, got {done}"
            )),
        });
    }
    Ok(true)
}

/// Array slots `off..off + len`, read in batches of 64 Ki (one lookup per slot on kernels
/// without batch lookups).
pub(super) fn read_array<V: aya::Pod + Default>(
    map: &Array<MapData, V>,
    name: &'static str,
    off: u32,
    len: u32,
) -> Result<Vec<V>, MapOpError> {
    const CHUNK: u32 = 1 << 16;
    let mut out = vec![V::default(); len as usize];
    let mut at = 0u32;
    while at < len {
        let n = CHUNK.min(len - at);
        let buf = &mut out[at as usize..(at + n) as usize];
        let batched = lookup_batch(map, off + at, buf).map_err(|source| MapOpError {
            map: name,
            op: format!("batch lookup of {n} slots at {}", off + at),
            source: aya::maps::MapError::SyscallError(source),
        })?;
        if !batched {
            for (i, v) in (off + at..).zip(buf.iter_mut()) {
                *v = map
                    .get(&i, 0)
                    .map_err(op_err(name, format!("read slot {i}")))?;
            }
        }
        at += n;
    }
    Ok(out)
}

/// Sum of one per-CPU slot of counters.
fn sum_counters(v: &PerCpuValues<Counters>) -> Counters {
    v.iter().fold(Counters::default(), Counters::add)
}

fn zero_per_cpu<V: aya::Pod + Default + Clone>(
    m: &mut PerCpuArray<MapData, V>,
    name: &'static str,
    id: u32,
) -> Result<(), MapOpError> {
    let as_map_err = |call, io_error| {
        let source = aya::maps::MapError::SyscallError(aya::sys::SyscallError { call, io_error });
        MapOpError {
            map: name,
            op: format!("zero slot {id}"),
            source,
        }
    };
    let cpus = aya::util::nr_cpus().map_err(|(call, e)| as_map_err(call, e))?;
    let zeros = PerCpuValues::try_from(vec![V::default(); cpus])
        .map_err(|e| as_map_err("PerCpuValues", e))?;
    m.set(id, zeros, 0)
        .map_err(op_err(name, format!("zero slot {id}")))
}

/// A delete whose key is already gone counts as done: every delete of the agent is idempotent
/// (the LRU may have evicted a flow first, or a key may be synced twice). aya reports a missing
/// key as the syscall's `ENOENT`, not as `MapError::KeyNotFound`, so both are accepted.
pub(super) fn deleted(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// The IPv4 form of `a`, for an IPv4 map, or the error that its family has no maps.
fn v4(map: &'static str, op: &str, a: &Addr) -> Result<[u8; 4], MapOpError> {
    as_v4(a).ok_or_else(|| no_family(map, op))
}

/// A write of an address whose family has no maps (IPv6, until that family lands): the
/// configuration refuses such services first, so this is the map layer's own guard.
fn no_family(map: &'static str, op: impl Into<String>) -> MapOpError {
    MapOpError {
        map,
        op: format!(
            "{} (not an IPv4 address or prefix: the IPv6 maps come with the IPv6 family)",
            op.into()
        ),
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(libc::EAFNOSUPPORT),
        }),
    }
}

pub(super) fn op_err(
    map: &'static str,
    op: impl Into<String>,
) -> impl FnOnce(aya::maps::MapError) -> MapOpError {
    let op = op.into();
    move |source| MapOpError { map, op, source }
}
