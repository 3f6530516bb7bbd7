//! The reconciler's tests, with an in-memory fake of the maps: `changes.rs` (API changes and
//! their write order), `restart.rs` (adoption), `transact.rs` (a write that fails, at every
//! position of a change), and `planner.rs` (the pure planner,
//! no fake at all).

mod changes;
mod outbound;
mod planner;
mod restart;
mod scaleout;
mod swap;
mod transact;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{
    acl,
    addr::{self, Addr},
    maps::{
        Backend, BackendId, Counters, NextHop, RevKey, RevService, ServiceInfo, ServiceKey,
        VipInfo, VipKey,
    },
    verdict::ALL_REASONS,
};

use super::*;
use crate::{
    api::Request, cli::VipSettings, dataplane::LiveMaps, error::ErrorKind, spec::ServiceSpec,
};

/// One map write, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Service(ServiceInfo),
    DelService,
    Backend(BackendId, bool),
    Slots(u32, u32),
    /// A reverse-service entry written (`Some`) or deleted.
    Rev(RevKey, Option<RevService>),
    /// The flows of a backend id purged (one op per id of a purge job).
    Purge(BackendId),
    Acl(u32, bool),
    PurgeSources(u32, usize),
    /// Flows of unused ids removed (only recorded when there were some).
    PurgeStale(usize),
}

/// The maps in memory. `fail_at = Some(n)`: the n-th write from now on fails (once);
/// `fail_from = Some(n)`: every write from the n-th on fails, until it is cleared.
#[derive(Clone, Default)]
pub struct FakeMaps {
    pub services: HashMap<ServiceKey, ServiceInfo>,
    pub vips: HashMap<VipKey, VipInfo>,
    pub backends: HashMap<BackendId, Backend>,
    pub ring: HashMap<u32, BackendId>,
    pub routes: HashMap<(u32, Addr), NextHop>,
    pub acl: HashMap<(u32, acl::Prefix), acl::Entry>,
    pub pips: HashMap<Addr, (Addr, NextHop)>,
    pub revs: HashMap<RevKey, RevService>,
    /// `LB_OURS4`, its non-zero words.
    pub ours: HashMap<u32, u64>,
    /// Tracked flows, by the backend id each names.
    pub flows: Vec<BackendId>,
    /// `LB_BE_STATS` (what a test says the fast path counted) and `LB_SVC_RETIRED`.
    pub counters: HashMap<BackendId, Counters>,
    pub retired: HashMap<u32, Counters>,
    /// `LB_LOCAL4`.
    pub locals: BTreeSet<Addr>,
    /// `LB_OUTBOUND4`, `LB_OUT_FRONTS4`, `LB_OUT_INSIDE4`.
    pub outbound: BTreeMap<[u8; 4], lb_common::outbound::OutboundEntry4>,
    pub out_fronts: BTreeMap<[u8; 4], lb_common::outbound::OutFront4>,
    pub out_blocks: BTreeMap<lb_common::outbound::OutBlockKey4, [u8; 4]>,
    pub out_inside: BTreeSet<(u32, [u8; 4], u8)>,
    /// `LB_TRACE_CFG` (not a transaction's write: it never fails here).
    pub trace: lb_common::trace::TraceConfig,
    pub ops: Vec<Op>,
    /// Writes so far, and the one that fails.
    pub writes: usize,
    pub fail_at: Option<usize>,
    pub fail_from: Option<usize>,
}

impl FakeMaps {
    fn write(&mut self) -> Result<(), MapOpError> {
        self.writes += 1;
        if self.fail_from.is_some_and(|n| self.writes >= n) || self.fail_at == Some(self.writes) {
            self.fail_at = None;
            return Err(MapOpError {
                map: "FAKE",
                op: format!("write {}", self.writes),
                source: aya::maps::MapError::KeyNotFound,
            });
        }
        Ok(())
    }
}

impl MapOps for FakeMaps {
    fn put_service(&mut self, k: &ServiceKey, v: &ServiceInfo) -> Result<(), MapOpError> {
        self.write()?;
        self.ops.push(Op::Service(*v));
        self.services.insert(*k, *v);
        Ok(())
    }
    fn del_service(&mut self, k: &ServiceKey) -> Result<(), MapOpError> {
        self.write()?;
        self.ops.push(Op::DelService);
        self.services.remove(k);
        Ok(())
    }
    fn put_vip(&mut self, k: &VipKey, v: &VipInfo) -> Result<(), MapOpError> {
        self.write()?;
        self.vips.insert(*k, *v);
        Ok(())
    }
    fn del_vip(&mut self, k: &VipKey) -> Result<(), MapOpError> {
        self.write()?;
        self.vips.remove(k);
        Ok(())
    }
    fn put_backend(&mut self, id: BackendId, b: &Backend) -> Result<(), MapOpError> {
        self.write()?;
        self.ops.push(Op::Backend(id, b.is_active()));
        self.backends.insert(id, *b);
        Ok(())
    }
    fn put_rev(&mut self, k: &RevKey, v: &RevService) -> Result<(), MapOpError> {
        self.write()?;
        self.ops.push(Op::Rev(*k, Some(*v)));
        self.revs.insert(*k, *v);
        Ok(())
    }
    fn del_rev(&mut self, k: &RevKey) -> Result<(), MapOpError> {
        self.write()?;
        self.ops.push(Op::Rev(*k, None));
        self.revs.remove(k);
        Ok(())
    }
    fn put_ours(&mut self, word: u32, bits: u64) -> Result<(), MapOpError> {
        self.write()?;
        if bits == 0 {
            self.ours.remove(&word);
        } else {
            self.ours.insert(word, bits);
        }
        Ok(())
    }
    fn put_slots(&mut self, off: u32, slots: &[BackendId]) -> Result<(), MapOpError> {
        self.write()?;
        self.ops.push(Op::Slots(off, slots.len() as u32));
        for (i, s) in (off..).zip(slots) {
            self.ring.insert(i, *s);
        }
        Ok(())
    }
    fn put_route(&mut self, l: u32, a: Addr, nh: &NextHop) -> Result<(), MapOpError> {
        self.write()?;
        self.routes.insert((l, a), *nh);
        Ok(())
    }
    fn del_route(&mut self, l: u32, a: Addr) -> Result<(), MapOpError> {
        self.write()?;
        self.routes.remove(&(l, a));
        Ok(())
    }
    fn put_trace(&mut self, c: &lb_common::trace::TraceConfig) -> Result<(), MapOpError> {
        self.trace = *c;
        Ok(())
    }
    fn put_local(&mut self, a: Addr) -> Result<(), MapOpError> {
        self.write()?;
        self.locals.insert(a);
        Ok(())
    }
    fn del_local(&mut self, a: Addr) -> Result<(), MapOpError> {
        self.write()?;
        self.locals.remove(&a);
        Ok(())
    }
    fn zero_service_stats(&mut self, id: u32) -> Result<(), MapOpError> {
        self.write()?;
        self.retired.remove(&id);
        Ok(())
    }
    fn zero_backend_stats(&mut self, id: BackendId) -> Result<(), MapOpError> {
        self.write()?;
        self.counters.remove(&id);
        Ok(())
    }
    fn retire_counters(
        &mut self,
        backend: BackendId,
        service: u32,
        sum: &Counters,
        folded: &Counters,
    ) -> Result<(Counters, Counters), MapOpError> {
        self.write()?;
        let record = self.counters.get(&backend).copied().unwrap_or_default();
        let total = sum.add(&record.since(folded));
        self.retired.insert(service, total);
        Ok((total, record))
    }
    fn put_pip(&mut self, pip: &Addr, dip: &Addr, nh: &NextHop) -> Result<(), MapOpError> {
        self.write()?;
        self.pips.insert(*pip, (*dip, *nh));
        Ok(())
    }
    fn del_pip(&mut self, pip: &Addr, _dip: &Addr) -> Result<(), MapOpError> {
        self.write()?;
        self.pips.remove(pip);
        Ok(())
    }
    fn put_outbound(
        &mut self,
        dip: [u8; 4],
        e: &lb_common::outbound::OutboundEntry4,
    ) -> Result<(), MapOpError> {
        self.write()?;
        self.outbound.insert(dip, *e);
        Ok(())
    }
    fn del_outbound(&mut self, dip: [u8; 4]) -> Result<(), MapOpError> {
        self.write()?;
        self.outbound.remove(&dip);
        Ok(())
    }
    fn put_out_front(
        &mut self,
        a: [u8; 4],
        f: &lb_common::outbound::OutFront4,
    ) -> Result<(), MapOpError> {
        self.write()?;
        self.out_fronts.insert(a, *f);
        Ok(())
    }
    fn put_out_block(
        &mut self,
        k: &lb_common::outbound::OutBlockKey4,
        dip: [u8; 4],
    ) -> Result<(), MapOpError> {
        self.write()?;
        self.out_blocks.insert(*k, dip);
        Ok(())
    }
    fn del_out_block(&mut self, k: &lb_common::outbound::OutBlockKey4) -> Result<(), MapOpError> {
        self.write()?;
        self.out_blocks.remove(k);
        Ok(())
    }
    fn del_out_front(&mut self, a: [u8; 4]) -> Result<(), MapOpError> {
        self.write()?;
        self.out_fronts.remove(&a);
        Ok(())
    }
    fn put_out_inside(&mut self, rule: u32, (a, l): ([u8; 4], u8)) -> Result<(), MapOpError> {
        self.write()?;
        self.out_inside.insert((rule, a, l));
        Ok(())
    }
    fn del_out_inside(&mut self, rule: u32, (a, l): ([u8; 4], u8)) -> Result<(), MapOpError> {
        self.write()?;
        self.out_inside.remove(&(rule, a, l));
        Ok(())
    }
    fn read_live(&self) -> Result<LiveMaps, MapOpError> {
        Ok(LiveMaps {
            outbound: self.outbound.iter().map(|(k, v)| (*k, *v)).collect(),
            out_fronts: self.out_fronts.iter().map(|(k, v)| (*k, *v)).collect(),
            out_blocks: self.out_blocks.iter().map(|(k, v)| (*k, *v)).collect(),
            out_inside: self.out_inside.iter().copied().collect(),
            revs: self.revs.iter().map(|(k, v)| (*k, *v)).collect(),
            ours: self
                .ours
                .iter()
                .filter(|(_, v)| **v != 0)
                .map(|(k, v)| (*k, *v))
                .collect(),
            services: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
            vips: self.vips.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: self
                .backends
                .iter()
                .filter(|(_, b)| b.is_active())
                .map(|(i, b)| (*i, *b))
                .collect(),
            acl: self.acl.iter().map(|((aid, _), e)| (*aid, *e)).collect(),
            pips: self.pips.iter().map(|(p, (d, nh))| (*p, *d, *nh)).collect(),
            pip_revs: self.pips.iter().map(|(p, (d, _))| (*d, *p)).collect(),
            routes: self
                .routes
                .iter()
                .map(|((l, a), nh)| (*l, *a, *nh))
                .collect(),
            retired: self.retired.iter().map(|(k, v)| (*k, *v)).collect(),
            locals: self.locals.iter().copied().collect(),
        })
    }
    fn read_slots(&self, off: u32, len: u32) -> Result<Vec<BackendId>, MapOpError> {
        Ok((off..off + len)
            .map(|i| self.ring.get(&i).copied().unwrap_or(0))
            .collect())
    }
    fn put_acl(&mut self, acl_id: u32, e: &acl::Entry) -> Result<(), MapOpError> {
        self.write()?;
        self.ops.push(Op::Acl(acl_id, true));
        self.acl.insert((acl_id, e.prefix), *e);
        Ok(())
    }
    fn del_acl(&mut self, acl_id: u32, p: &acl::Prefix) -> Result<(), MapOpError> {
        self.write()?;
        self.ops.push(Op::Acl(acl_id, false));
        self.acl.remove(&(acl_id, *p));
        Ok(())
    }
}

impl MapReader for FakeMaps {
    fn probe_tunnel(&self) -> Result<Vec<u64>, MapOpError> {
        Ok(vec![0; lb_common::encap::probe::ALL.len()])
    }
    fn service_counters(&self, _: u32) -> Result<Counters, MapOpError> {
        Ok(Counters::default())
    }
    fn backend_counters(&self, id: BackendId) -> Result<Counters, MapOpError> {
        Ok(self.counters.get(&id).copied().unwrap_or_default())
    }
    fn reason_counters(&self) -> Result<Vec<u64>, MapOpError> {
        Ok(vec![0; ALL_REASONS.len()])
    }
    fn flows_per_backend(&self) -> Result<HashMap<BackendId, u64>, MapOpError> {
        let mut m = HashMap::new();
        for id in &self.flows {
            *m.entry(*id).or_default() += 1;
        }
        Ok(m)
    }
    /// The fake's flows by backend id alone: each as a UDP flow from 198.51.100.2, source
    /// port its position, to 203.0.113.10:53.
    fn each_flow(
        &self,
        f: &mut dyn FnMut(crate::dataplane::TrackedFlow<'_>),
    ) -> Result<(), MapOpError> {
        for (i, id) in self.flows.iter().enumerate() {
            let port = u16::try_from(i).unwrap_or(u16::MAX).to_be_bytes();
            let k = lb_common::flow::FlowKey4::of(
                [198, 51, 100, 2],
                [203, 0, 113, 10],
                port,
                53u16.to_be_bytes(),
                17,
            );
            f(crate::dataplane::TrackedFlow::V4(
                &k,
                &lb_common::maps::ConnEntry4::forward(*id, 0, 0, 0, 0, (0, 0)),
            ));
        }
        Ok(())
    }
}

impl FlowPurge for FakeMaps {
    /// The fake keeps backend ids, not flow keys, so no selection by key can pick one: the
    /// agent's purger runs flushes on the real maps (`tests/netns_lifetime.rs`).
    fn flush(
        &mut self,
        _select: &dyn Fn(crate::dataplane::TrackedFlow<'_>) -> bool,
    ) -> Result<usize, MapOpError> {
        Ok(0)
    }
    fn purge(&mut self, job: &PurgeJob) -> Result<usize, MapOpError> {
        let mut n = 0;
        for id in &job.backends {
            self.ops.push(Op::Purge(*id));
            let before = self.flows.len();
            self.flows.retain(|f| f != id);
            n += before - self.flows.len();
        }
        // One tracked client per service: 198.51.100.70.
        for (service, entries) in &job.denied {
            let doomed = acl::lpm(entries, &addr::v4_mapped([198, 51, 100, 70]))
                .is_some_and(|e| e.action == acl::Action::Deny);
            self.ops
                .push(Op::PurgeSources(*service, usize::from(doomed)));
            n += usize::from(doomed);
        }
        if let Some(active) = &job.unless_active {
            let before = self.flows.len();
            self.flows.retain(|id| active.contains(id));
            let stale = before - self.flows.len();
            if stale > 0 {
                self.ops.push(Op::PurgeStale(stale));
            }
            n += stale;
        }
        Ok(n)
    }
}

/// Resolves 192.0.2.x to ifindex x (through itself) once `resolved` is set.
#[derive(Default)]
pub struct FakeResolver {
    pub resolved: bool,
}

impl Resolver for FakeResolver {
    fn resolve(&mut self, job: &ResolveJob) -> Resolution {
        let hop = |ip: IpAddr| {
            let IpAddr::V4(v4) = ip else { return None };
            self.resolved.then(|| Hop {
                nh: NextHop {
                    ifindex: u32::from(v4.octets()[3]),
                    smac: [1; 6],
                    dmac: [2; 6],
                },
                via: ip,
                mtu: 1500,
            })
        };
        Resolution {
            hops: job.addrs.iter().map(|ip| (*ip, hop(*ip))).collect(),
            routes: job.routes.then(Vec::new),
            locals: job.routes.then(|| {
                vec![
                    addr::v4_mapped([192, 0, 2, 1]),
                    addr::from_ip("2001:db8:2::1".parse().expect("address")),
                ]
            }),
        }
    }
}

pub type Rec = Reconciler<FakeMaps>;

pub const WEB: &str = "203.0.113.10:80/tcp";

pub fn rec(ring_slots: u32) -> Rec {
    let info = AgentInfo {
        ring_slots,
        ..AgentInfo::default()
    };
    Reconciler::new(FakeMaps::default(), info)
}

/// A reconciler whose agent has an IPv4 encapsulation source (192.0.2.1), as floating-IP
/// `ipip` and `gue` services need.
pub fn encap_rec() -> Rec {
    let info = AgentInfo {
        ring_slots: 1 << 16,
        encap: lb_common::encap::EncapConfig {
            src4: [192, 0, 2, 1],
            ..lb_common::encap::EncapConfig::default()
        },
        ..AgentInfo::default()
    };
    Reconciler::new(FakeMaps::default(), info)
}

pub fn spec(s: &str) -> ServiceSpec {
    s.parse().unwrap()
}

/// Requests as an operator types them, parsed the way the CLI parses them (a parse error
/// is the edge's refusal, as `lb` would print it).
#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "test requests, built one at a time"
)]
pub enum Req {
    VipAdd {
        service: String,
        settings: VipSettings,
    },
    VipDel {
        service: String,
    },
    VipSwap {
        a: String,
        b: String,
    },
    VipList,
    BackendAdd {
        service: String,
        backend: String,
        weight: Option<u32>,
    },
    BackendDel {
        service: String,
        backend: String,
    },
    BackendSetWeight {
        service: String,
        backend: String,
        weight: u32,
    },
    BackendDrain {
        service: String,
        backend: String,
        drained: bool,
    },
    /// `lb backend admin SERVICE BACKEND up|down|none` (parsed as the CLI parses it).
    BackendAdmin {
        service: String,
        backend: String,
        state: String,
    },
    BackendList {
        service: String,
    },
    ForwardAdd {
        service: String,
        to: String,
    },
    ForwardDel {
        service: String,
    },
    AclAdd {
        service: String,
        order: u32,
        action: String,
        prefix: String,
        description: String,
    },
    AclDel {
        service: String,
        order: u32,
    },
    AclList {
        service: String,
    },
    PipAdd {
        pip: String,
        dip: String,
    },
    PipDel {
        pip: String,
    },
    PipList,
    Status,
}

impl Req {
    pub fn typed(self) -> Result<Request, String> {
        use crate::{
            api::Query,
            spec::{BackendSpec, parse_prefix},
        };
        let svc = |s: &str| -> Result<ServiceSpec, String> {
            s.parse().map_err(|e| format!("service: {e}"))
        };
        let be = |s: &str| -> Result<BackendSpec, String> {
            s.parse().map_err(|e| format!("backend: {e}"))
        };
        let ip = |s: &str, what: &str| -> Result<IpAddr, String> {
            s.parse()
                .map_err(|_| format!("{what}: {s:?} is not an address"))
        };
        let c = |c: Command| Ok(Request::Change(c));
        let q = |q: Query| Ok(Request::Query(q));
        match self {
            Self::VipAdd { service, settings } => c(Command::VipAdd {
                service: svc(&service)?,
                settings: settings.resolve()?,
            }),
            Self::VipDel { service } => c(Command::VipDel {
                service: svc(&service)?,
            }),
            Self::VipSwap { a, b } => c(Command::VipSwap {
                a: ip(&a, "VIP")?,
                b: ip(&b, "VIP")?,
            }),
            Self::VipList => q(Query::VipList),
            Self::BackendAdd {
                service,
                backend,
                weight,
            } => c(Command::BackendAdd {
                service: svc(&service)?,
                backend: be(&backend)?,
                weight,
            }),
            Self::BackendDel { service, backend } => c(Command::BackendDel {
                service: svc(&service)?,
                backend: be(&backend)?,
            }),
            Self::BackendSetWeight {
                service,
                backend,
                weight,
            } => c(Command::BackendSetWeight {
                service: svc(&service)?,
                backend: be(&backend)?,
                weight,
            }),
            Self::BackendDrain {
                service,
                backend,
                drained,
            } => c(Command::BackendDrain {
                service: svc(&service)?,
                backend: be(&backend)?,
                drained,
            }),
            Self::BackendAdmin {
                service,
                backend,
                state,
            } => c(Command::BackendAdmin {
                service: svc(&service)?,
                backend: be(&backend)?,
                admin: state.parse().map_err(|e: crate::spec::SpecError| e.0)?,
            }),
            Self::BackendList { service } => q(Query::BackendList {
                service: svc(&service)?,
            }),
            Self::ForwardAdd { service, to } => c(Command::ForwardAdd {
                idle_timeout: None,
                tcp_reset: false,
                service: svc(&service)?,
                to: be(&to)?,
            }),
            Self::ForwardDel { service } => c(Command::ForwardDel {
                service: svc(&service)?,
            }),
            Self::AclAdd {
                service,
                order,
                action,
                prefix,
                description,
            } => {
                let rule = crate::config::AclRuleConfig {
                    order,
                    action: crate::spec::parse_action(&action)?,
                    prefix: parse_prefix(&prefix).map_err(|e| format!("prefix: {e}"))?,
                    description,
                };
                c(Command::AclAdd {
                    service: svc(&service)?,
                    rule,
                })
            }
            Self::AclDel { service, order } => c(Command::AclDel {
                service: svc(&service)?,
                order,
            }),
            Self::AclList { service } => q(Query::AclList {
                service: svc(&service)?,
            }),
            Self::PipAdd { pip, dip } => c(Command::PipAdd {
                pip: ip(&pip, "PIP")?,
                dip: ip(&dip, "instance")?,
            }),
            Self::PipDel { pip } => c(Command::PipDel {
                pip: ip(&pip, "PIP")?,
            }),
            Self::PipList => q(Query::PipList),
            Self::Status => q(Query::Status),
        }
    }
}

pub fn ask(r: &mut Rec, req: Req) -> Response {
    match req.typed() {
        Ok(req) => r.handle(req).response,
        Err(m) => Response::error(ErrorKind::Invalid, m),
    }
}

pub fn ok(r: &mut Rec, req: Req) {
    let shown = format!("{req:?}");
    if let Response::Error { message, .. } = ask(r, req) {
        panic!("{shown}: {message}");
    }
}

pub fn add(r: &mut Rec, svc: &str, backends: &[&str]) {
    add_with(
        r,
        svc,
        VipSettings {
            table_size: Some(251),
            ..VipSettings::default()
        },
        backends,
    );
}

/// A service with `settings`, then its backends, each through the API.
pub fn add_with(r: &mut Rec, svc: &str, settings: VipSettings, backends: &[&str]) {
    ok(
        r,
        Req::VipAdd {
            service: svc.into(),
            settings,
        },
    );
    for b in backends {
        ok(
            r,
            Req::BackendAdd {
                service: svc.into(),
                backend: (*b).into(),
                weight: None,
            },
        );
    }
}

/// The "maybe ours" filter holds exactly the bits of the addresses live entries name: every
/// VIP, both ends of every PIP, every active backend (a missing bit would pass their packets
/// unlooked-at; an extra one only costs lookups, but shows a leak).
pub fn assert_filter_covers_exactly_the_live_entries(m: &FakeMaps) {
    let mut want: HashMap<u32, u64> = HashMap::new();
    let mut add = |a: &Addr| {
        if let Some(v4) = addr::as_v4(a) {
            let (w, bit) = lb_common::maps::ours_bit(v4);
            *want.entry(w).or_default() |= bit;
        }
    };
    m.vips.keys().for_each(|k| add(&k.vip));
    for (pip, (dip, _)) in &m.pips {
        add(pip);
        add(dip);
    }
    m.backends
        .values()
        .filter(|b| b.is_active())
        .for_each(|b| add(&b.addr));
    for a in m.outbound.keys().chain(m.out_fronts.keys()) {
        add(&addr::v4_mapped(*a));
    }
    assert_eq!(m.ours, want, "the filter words");
}

/// The invariant the fast path relies on: every slot of every live table names an active
/// backend.
pub fn assert_tables_point_at_live_backends(m: &FakeMaps) {
    assert_filter_covers_exactly_the_live_entries(m);
    for info in m.services.values().filter(|i| i.table_len > 0) {
        for s in info.table_off..info.table_off + info.table_len {
            let id = m.ring[&s];
            assert!(
                m.backends.get(&id).is_some_and(Backend::is_active),
                "slot {s} → inactive backend {id}"
            );
        }
    }
}

pub fn report(r: &mut Rec, backend: &str, ok: bool) {
    let rep = ProbeReport {
        service: WEB.parse().unwrap(),
        backend: backend.parse().unwrap(),
        ok,
        detail: if ok {
            "HTTP 200".into()
        } else {
            "HTTP 500".into()
        },
    };
    r.handle_now(Event::Probe(rep));
}

/// Slots per backend address of the web service's live table.
pub fn shares(r: &Rec) -> HashMap<String, u32> {
    let m = r.maps();
    let info = m.services[&spec(WEB).key()];
    let mut out = HashMap::new();
    for s in info.table_off..info.table_off + info.table_len {
        let b = m.backends[&m.ring[&s]];
        let ip = addr::to_ip(&b.addr);
        *out.entry(format!("{ip}:{}", u16::from_be_bytes(b.port)))
            .or_default() += 1;
    }
    out
}

pub fn probed(r: &mut Rec, extra: VipSettings) {
    let settings = VipSettings {
        table_size: Some(251),
        probe: Some("http/healthz".into()),
        unhealthy_after: Some(2),
        ..extra
    };
    add_with(r, WEB, settings, &["192.0.2.11", "192.0.2.12"]);
}

/// A reconciler over a copy of `r`'s maps (what a restarted agent finds pinned), with no
/// writes recorded yet.
pub fn restarted(r: &Rec) -> Rec {
    let mut maps = r.maps().clone();
    maps.ops.clear();
    let info = AgentInfo {
        ring_slots: r.info.ring_slots,
        ..AgentInfo::default()
    };
    Reconciler::new(maps, info)
}

/// Starts `r` over its maps with `state`, as the agent does: a resolution first (unresolved
/// hops, no client routes), then adoption and the initial sync, then the work they queued
/// (purges).
pub fn start(r: &mut Rec, state: State) {
    let job = initial_job(&state);
    r.prime(&FakeResolver::default().resolve(&job));
    r.start(state).unwrap();
    let fx = r.flush();
    r.settle(fx);
}
