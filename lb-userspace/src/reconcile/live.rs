//! What the maps hold: every entry the applier wrote, or adoption found when the agent started,
//! kept in step with the kernel one successful write at a time. The planner reads this, never
//! a map, so a plan is a pure function of the desired state and this mirror.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    acl,
    addr::{self, Addr},
    maps::{
        Backend, BackendId, Counters, NextHop, RevKey, RevService, ServiceInfo, VipInfo,
        ours_bit_of,
    },
};

use crate::spec::{Proto, ServiceSpec};

/// The maps as the agent knows them to be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    /// `LB_SERVICES4`, by service (change it with [`Self::put_service`] and
    /// [`Self::del_service`], which keep [`Self::spec_of`] in step).
    pub services: BTreeMap<ServiceSpec, ServiceInfo>,
    /// The service of each live service id (an index of `services`).
    ids: HashMap<u32, ServiceSpec>,
    /// `LB_VIPS4`, by address.
    pub vips: BTreeMap<IpAddr, VipInfo>,
    /// The active entries of `LB_BACKENDS4` (an inactive entry is as good as none).
    pub backends: HashMap<BackendId, Backend>,
    /// The active entries of each service id, by backend address (an index of `backends`).
    pub by_service: HashMap<u32, BTreeMap<SocketAddr, BackendId>>,
    /// Bumped whenever `by_service` gives a (service, address) another entry or none: a
    /// probe through the tunnel is marked with its backend's entry, so its target is stale
    /// from then on (see `Effects::backend_ids_changed`).
    pub ids_generation: u64,
    /// `LB_RING` regions written and not yet released, by offset: their slots.
    pub regions: HashMap<u32, Vec<BackendId>>,
    /// `LB_ACL4` sets written and not yet deleted, by set id: their entries in prefix order.
    pub acl: HashMap<u32, Vec<acl::Entry>>,
    /// `LB_PIPS4` / `LB_PIP_REV4` pairs: PIP → (instance, next hop).
    pub pips: HashMap<IpAddr, (IpAddr, NextHop)>,
    /// `LB_ROUTES4`: (prefix length in map form, prefix) → next hop.
    pub routes: HashMap<(u32, Addr), NextHop>,
    /// `LB_REVSVC4`, by backend endpoint.
    pub revs: HashMap<RevKey, RevService>,
    /// The active backend entries at each IPv4 backend endpoint (address, port, protocol),
    /// over all services (an index of `backends`).
    pub by_endpoint: HashMap<RevKey, std::collections::BTreeSet<BackendId>>,
    /// The addresses the "maybe ours" filter must cover, from the entries above.
    pub ours: Ours,
    /// `LB_OURS4`: its non-zero words.
    pub filter: HashMap<u32, u64>,
    /// `LB_LOCAL4`: the host's own IPv4 addresses.
    pub locals: std::collections::BTreeSet<Addr>,
    /// `LB_SVC_RETIRED`: each service id's retired backends' counters (non-zero sums only).
    pub retired: HashMap<u32, Counters>,
    /// Backends being retired whose counters were added to `retired` but whose entry is still
    /// active (its write failed): the record as added, so a retry adds only what came since.
    pub folded: HashMap<BackendId, Counters>,
    /// Reverse-service entries held as they were before a VIP swap, marked shared, by
    /// endpoint: flows tracked before the swap have no reverse entry of their own, and their
    /// replies must still find the VIP they were addressed to. Not a map's content but a note
    /// on `revs`, which the planner keeps (`plan::replies`) until the sweeper finds none of
    /// those flows left (`Event::HoldsReleased`).
    pub holds: HashMap<RevKey, RevService>,
    /// `LB_OUTBOUND4`: covered backend address → its entry.
    pub outbound: BTreeMap<[u8; 4], lb_common::outbound::OutboundEntry4>,
    /// `LB_OUT_FRONTS4`: frontend address → its rule's id, block size and mode.
    pub out_fronts: BTreeMap<[u8; 4], lb_common::outbound::OutFront4>,
    /// `LB_OUT_BLOCKS4`: a stateless rule's (frontend, block index) → its backend.
    pub out_blocks: BTreeMap<lb_common::outbound::OutBlockKey4, [u8; 4]>,
    /// `LB_OUT_INSIDE4`: (rule id, address, prefix length).
    pub out_inside: std::collections::BTreeSet<(u32, [u8; 4], u8)>,
}

/// The addresses (both families, in map form) the fast path must look up rather than pass as
/// none of its own, with how many live entries use each: VIP entries, both ends of a PIP,
/// active backend entries. One filter serves both families (`lb_common::maps::ours_bit_of`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ours {
    uses: HashMap<Addr, u32>,
    /// The used addresses of each filter word.
    by_word: HashMap<u32, std::collections::BTreeSet<Addr>>,
}

impl Ours {
    fn hold(&mut self, ip: IpAddr) {
        let a = addr::from_ip(ip);
        let n = self.uses.entry(a).or_default();
        *n += 1;
        if *n == 1 {
            self.by_word.entry(ours_bit_of(&a).0).or_default().insert(a);
        }
    }

    fn release(&mut self, ip: IpAddr) {
        let a = addr::from_ip(ip);
        let Some(n) = self.uses.get_mut(&a) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.uses.remove(&a);
            let w = ours_bit_of(&a).0;
            if let Some(set) = self.by_word.get_mut(&w) {
                set.remove(&a);
                if set.is_empty() {
                    self.by_word.remove(&w);
                }
            }
        }
    }

    /// The bits word `w` must hold.
    #[must_use]
    pub fn wanted(&self, w: u32) -> u64 {
        self.by_word
            .get(&w)
            .into_iter()
            .flatten()
            .fold(0, |acc, a| acc | ours_bit_of(a).1)
    }

    /// Every word that must hold a bit.
    pub fn words(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_word.keys().copied()
    }
}

/// Every service of one VIP address, as a range of the (address, port, protocol) order:
/// per-VIP work looks at its own services, not all of them (10k services made it quadratic).
#[must_use]
pub fn vip_range(ip: IpAddr) -> std::ops::RangeInclusive<ServiceSpec> {
    let at = |port, proto| ServiceSpec {
        vip: SocketAddr::new(ip, port),
        proto,
    };
    at(0, Proto::Tcp)..=at(u16::MAX, Proto::Udp)
}

/// A backend entry's address and port.
#[must_use]
pub fn backend_addr(b: &Backend) -> SocketAddr {
    SocketAddr::new(addr::to_ip(&b.addr), u16::from_be_bytes(b.port))
}

/// A backend entry's endpoint, the key of its reverse-service entry (either family).
#[must_use]
pub const fn endpoint(b: &Backend) -> RevKey {
    RevKey::of(b.addr, b.port, b.proto)
}

impl Live {
    /// A service's live table: its region offset and slots (`None`: no table).
    #[must_use]
    pub fn table(&self, spec: &ServiceSpec) -> Option<(u32, &[BackendId])> {
        let info = self.services.get(spec)?;
        if info.table_len == 0 {
            return None;
        }
        let slots = self.regions.get(&info.table_off)?;
        (slots.len() == info.table_len as usize).then_some((info.table_off, slots.as_slice()))
    }

    /// A service's live ACL set: its id and entries (`None`: no rules, everyone permitted).
    #[must_use]
    pub fn acl_of(&self, spec: &ServiceSpec) -> Option<(u32, &[acl::Entry])> {
        let id = self.services.get(spec)?.acl_id;
        (id != 0).then(|| (id, self.acl.get(&id).map_or(&[][..], Vec::as_slice)))
    }

    /// The active backend entries of a service id, by address.
    #[must_use]
    pub fn backends_of(&self, service_id: u32) -> Option<&BTreeMap<SocketAddr, BackendId>> {
        self.by_service.get(&service_id)
    }

    /// A service's active backends, by address (empty for a service not in the maps).
    pub fn backends_of_spec(
        &self,
        spec: &ServiceSpec,
    ) -> impl Iterator<Item = (&SocketAddr, &BackendId)> {
        self.services
            .get(spec)
            .and_then(|i| self.by_service.get(&i.id))
            .into_iter()
            .flatten()
    }

    /// The live services of one VIP address.
    pub fn services_on(&self, ip: IpAddr) -> impl Iterator<Item = (&ServiceSpec, &ServiceInfo)> {
        self.services.range(vip_range(ip))
    }

    /// The live service of a service id.
    #[must_use]
    pub fn spec_of(&self, id: u32) -> Option<&ServiceSpec> {
        self.ids.get(&id)
    }

    /// Records a service entry written.
    pub fn put_service(&mut self, spec: ServiceSpec, info: ServiceInfo) {
        if let Some(old) = self.services.insert(spec, info)
            && old.id != info.id
            && self.ids.get(&old.id) == Some(&spec)
        {
            self.ids.remove(&old.id);
        }
        self.ids.insert(info.id, spec);
    }

    /// Records a service entry deleted.
    pub fn del_service(&mut self, spec: &ServiceSpec) {
        if let Some(old) = self.services.remove(spec)
            && self.ids.get(&old.id) == Some(spec)
        {
            self.ids.remove(&old.id);
        }
    }

    /// Records an active entry (a new backend, or a new next hop for one).
    pub fn put_backend(&mut self, id: BackendId, b: Backend) {
        self.ours.hold(addr::to_ip(&b.addr));
        if let Some(old) = self.backends.insert(id, b) {
            self.ours.release(addr::to_ip(&old.addr));
            if old.service != b.service
                || backend_addr(&old) != backend_addr(&b)
                || old.proto != b.proto
            {
                self.unindex(id, &old);
            }
        }
        if self
            .by_service
            .entry(b.service)
            .or_default()
            .insert(backend_addr(&b), id)
            != Some(id)
        {
            self.ids_generation += 1;
        }
        self.by_endpoint.entry(endpoint(&b)).or_default().insert(id);
    }

    /// Records an active entry found at start that no service has claimed yet (indexed by
    /// [`Self::put_backend`] once one does, else retired).
    pub fn reserve_backend(&mut self, id: BackendId, b: Backend) {
        if let Some(old) = self.backends.insert(id, b) {
            self.ours.release(addr::to_ip(&old.addr));
        }
        self.ours.hold(addr::to_ip(&b.addr));
    }

    /// Records an entry marked inactive.
    pub fn retire_backend(&mut self, id: BackendId) {
        if let Some(old) = self.backends.remove(&id) {
            self.ours.release(addr::to_ip(&old.addr));
            self.unindex(id, &old);
        }
    }

    /// Records a VIP entry written.
    pub fn put_vip(&mut self, ip: IpAddr, info: VipInfo) {
        if self.vips.insert(ip, info).is_none() {
            self.ours.hold(ip);
        }
    }

    /// Records a VIP entry deleted.
    pub fn del_vip(&mut self, ip: IpAddr) {
        if self.vips.remove(&ip).is_some() {
            self.ours.release(ip);
        }
    }

    /// Records a PIP pair written.
    pub fn put_pip(&mut self, pip: IpAddr, dip: IpAddr, nh: NextHop) {
        self.ours.hold(pip);
        self.ours.hold(dip);
        if let Some((old, _)) = self.pips.insert(pip, (dip, nh)) {
            self.ours.release(pip);
            self.ours.release(old);
        }
    }

    /// Records an outbound entry written (its backend's address is then ours).
    pub fn put_outbound(&mut self, dip: [u8; 4], e: lb_common::outbound::OutboundEntry4) {
        if self.outbound.insert(dip, e).is_none() {
            self.ours.hold(IpAddr::from(dip));
        }
    }

    /// Records an outbound entry deleted.
    pub fn del_outbound(&mut self, dip: [u8; 4]) {
        if self.outbound.remove(&dip).is_some() {
            self.ours.release(IpAddr::from(dip));
        }
    }

    /// Records a frontend entry written (its address is then ours).
    pub fn put_out_front(&mut self, a: [u8; 4], f: lb_common::outbound::OutFront4) {
        if self.out_fronts.insert(a, f).is_none() {
            self.ours.hold(IpAddr::from(a));
        }
    }

    /// Records a frontend entry deleted.
    pub fn del_out_front(&mut self, a: [u8; 4]) {
        if self.out_fronts.remove(&a).is_some() {
            self.ours.release(IpAddr::from(a));
        }
    }

    /// Records a PIP pair deleted.
    pub fn del_pip(&mut self, pip: IpAddr) {
        if let Some((dip, _)) = self.pips.remove(&pip) {
            self.ours.release(pip);
            self.ours.release(dip);
        }
    }

    fn unindex(&mut self, id: BackendId, b: &Backend) {
        let ep = endpoint(b);
        if let Some(ids) = self.by_endpoint.get_mut(&ep) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_endpoint.remove(&ep);
            }
        }
        if let Some(m) = self.by_service.get_mut(&b.service) {
            if m.get(&backend_addr(b)) == Some(&id) {
                m.remove(&backend_addr(b));
                self.ids_generation += 1;
            }
            if m.is_empty() {
                self.by_service.remove(&b.service);
            }
        }
    }

    /// Records one ACL entry written, keeping the set in prefix order.
    pub fn put_acl(&mut self, id: u32, e: acl::Entry) {
        let set = self.acl.entry(id).or_default();
        match set.binary_search_by_key(&e.prefix, |x| x.prefix) {
            Ok(i) => set[i] = e,
            Err(i) => set.insert(i, e),
        }
    }

    /// Records one ACL entry deleted.
    pub fn del_acl(&mut self, id: u32, p: &acl::Prefix) {
        if let Some(set) = self.acl.get_mut(&id) {
            set.retain(|e| e.prefix != *p);
            if set.is_empty() {
                self.acl.remove(&id);
            }
        }
    }

    /// Every backend and PIP instance address: what next hops are resolved for.
    #[must_use]
    pub fn hop_addresses(&self) -> std::collections::BTreeSet<IpAddr> {
        self.backends
            .values()
            .map(|b| addr::to_ip(&b.addr))
            .chain(self.pips.values().map(|(d, _)| *d))
            .chain(self.outbound.keys().map(|a| IpAddr::from(*a)))
            .collect()
    }
}
