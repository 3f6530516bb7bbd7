//! Read views for `lb status`, `lb stats`, the lists and the metrics, in two steps: the writer
//! builds a [`Pending`] answer from what it owns (the desired state, [`Live`], the health book),
//! which is cheap; a reader then fills in what must be read from the maps (counters, and the
//! per-backend flow counts, a walk of conntrack) on its own handle, off the writer loop.

use std::collections::HashMap;

use lb_common::{
    addr,
    maps::{BackendId, ConnEntry4, Counters},
    verdict::ALL_REASONS,
    xmit::XmitFails,
};

use super::{health::HealthBook, live::Live};
use crate::{
    api::{
        AclRuleView, AclView, BackendView, CountersView, ExplainView, FlowView, NextHopView,
        PipView, ProbeView, Query, Response, ServiceStatus, ServiceView, StatsView, StatusView,
        TrackedView, XmitFailView,
    },
    dataplane::{MapReader, TrackedFlow},
    error::{ChangeError, MapOpError},
    spec::{ServiceSpec, format_duration, serde_action::action_word},
    state::{Kind, State},
};

/// Static facts about the running agent, for `lb status`.
#[derive(Clone, Debug, Default)]
pub struct AgentInfo {
    pub interfaces: Vec<String>,
    /// Their ifindexes: neighbour and link changes on these rebuild the client routes.
    pub ifindexes: Vec<u32>,
    pub xdp_mode: String,
    pub pin_dir: Option<String>,
    pub ring_slots: u32,
    pub conntrack_flows: u32,
    /// Why the lost-frame counters are off (`Dataplane::count_lost_frames`); `None`: counting.
    pub xmit_off: Option<String>,
    /// The flow-hash seed the program was loaded with (`lb explain` hashes as it does).
    pub hash_seed: u32,
    /// Floating IP's settings as loaded (`LB_ENCAP`): a new encapsulating service needs its
    /// family's outer source.
    pub encap: lb_common::encap::EncapConfig,
    /// The table announced VIPs' routes go in (`crate::announce`); 0: no announcing.
    pub announce_table: u32,
}

impl AgentInfo {
    /// The served interfaces as (name, ifindex).
    fn ifaces(&self) -> Vec<(String, u32)> {
        self.interfaces
            .iter()
            .cloned()
            .zip(self.ifindexes.iter().copied())
            .collect()
    }
}

/// A service's view, with what its counters are summed from, as the writer saw them: its live
/// backend ids and its retired backends' sum (`Counters::service_total`). Taken together, so
/// a backend retired while the reader runs is counted once: in the ids or in the sum.
#[derive(Clone, Debug)]
pub struct ServiceRead {
    pub view: ServiceView,
    pub backends: Vec<BackendId>,
    pub retired: Counters,
}

/// An answer the writer has built, waiting for the reads a reader adds.
#[derive(Clone, Debug)]
pub enum Pending {
    Vips(Vec<ServiceRead>),
    Backends {
        service: String,
        backends: Vec<BackendView>,
    },
    /// The view, and the served interfaces as (name, ifindex) for the lost-frame counters.
    /// (Boxed: the largest view by far.)
    Status(Box<StatusView>, Vec<(String, u32)>),
    Stats(Vec<ServiceRead>, Vec<(String, u32)>),
    /// The view and the service's id (for its ACL drops), if it is in the maps.
    Acl(AclView, Option<u32>),
    Pips(Vec<PipView>),
    /// The rules with their blocks; the reader adds each backend's use.
    Outbound(Vec<crate::api::OutboundView>),
    Flows(FlowQuery),
    /// The view, the flow's key, and every live backend id's address (for its tracked entry).
    Explain(
        Box<ExplainView>,
        super::explain::ExplainKey,
        HashMap<BackendId, String>,
    ),
}

/// `lb flows`, as the writer resolved it: the selection in ids, and the names to show.
#[derive(Clone, Debug, Default)]
pub struct FlowQuery {
    /// Only this service id's flows.
    pub service: Option<u32>,
    /// Only flows to one of these backend ids (`Some(empty)`: none can match).
    pub backends: Option<std::collections::BTreeSet<BackendId>>,
    pub client: Option<lb_common::acl::Prefix>,
    pub limit: usize,
    /// Every live backend id's address.
    pub backend_names: HashMap<BackendId, String>,
}

/// The words of `lb flows` for a TCP state (`lb_common::conn` bits).
fn tcp_state(s: u8) -> &'static str {
    use lb_common::conn::{CT_FIN_FWD, CT_FIN_REV, CT_STALE, CT_SYN, is_closed};
    if s & CT_STALE != 0 {
        "stale"
    } else if is_closed(s) {
        "closed"
    } else if s & CT_SYN != 0 {
        "syn-sent"
    } else if s & CT_FIN_FWD != 0 {
        "fin-client"
    } else if s & CT_FIN_REV != 0 {
        "fin-backend"
    } else {
        "established"
    }
}

impl FlowQuery {
    /// Whether the query selects the entry: a flow's own entry (client → VIP, or a hairpin
    /// flow's), of the service, to one of the backends, from the client prefix, each where
    /// named. A flow's reverse entry is not selected: it follows its forward entry (the
    /// sweeper removes a reverse entry whose flow is gone).
    #[must_use]
    pub fn selects(&self, f: TrackedFlow<'_>) -> bool {
        let (_, service, backend, ..) = f.entry();
        f.is_forward()
            && self.service.is_none_or(|s| s == service)
            && self.backends.as_ref().is_none_or(|b| b.contains(&backend))
            && self.client.as_ref().is_none_or(|p| {
                lb_common::acl::lpm(
                    &[lb_common::acl::Entry {
                        prefix: *p,
                        action: lb_common::acl::Action::Permit,
                        rule: None,
                    }],
                    &f.src(),
                )
                .is_some()
            })
    }

    /// The flows the query selects, from a walk of `r`'s conntrack, at most `limit`, and how
    /// many matched.
    fn run(&self, r: &dyn MapReader) -> Result<(Vec<FlowView>, u64), MapOpError> {
        use lb_common::flow::proto;
        let now = crate::dataplane::sweep::monotonic_s();
        let mut flows = Vec::new();
        let mut matched = 0u64;
        r.each_flow(&mut |f| {
            if !self.selects(f) {
                return;
            }
            matched += 1;
            if flows.len() >= self.limit {
                return;
            }
            let proto_name = if f.proto() == proto::TCP {
                "tcp"
            } else {
                "udp"
            };
            let t = tracked(f, &self.backend_names, now);
            let (client, vip) = f.endpoints();
            flows.push(FlowView {
                client: client.to_string(),
                service: format!("{vip}/{proto_name}"),
                backend: t.backend,
                state: t.state,
                idle_s: t.idle_s,
                age_s: t.age_s,
                hairpin: t.hairpin,
            });
        })?;
        Ok((flows, matched))
    }
}

impl Pending {
    /// Whether the answer needs the conntrack walk (the slow read).
    #[must_use]
    pub const fn walks_conntrack(&self) -> bool {
        matches!(self, Self::Backends { .. } | Self::Status(..))
    }

    /// Fills in counters and flow counts from `r`.
    ///
    /// # Errors
    /// A map read fails.
    pub fn finish(self, r: &dyn MapReader) -> Result<Response, MapOpError> {
        let flows = if self.walks_conntrack() {
            r.flows_per_backend()?
        } else {
            HashMap::new()
        };
        let services = |v: Vec<ServiceRead>| -> Result<Vec<ServiceView>, MapOpError> {
            v.into_iter()
                .map(|s| {
                    let own = r.service_counters(s.view.id)?;
                    let backends = s
                        .backends
                        .iter()
                        .map(|b| r.backend_counters(*b))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(ServiceView {
                        counters: Counters::service_total(&own, &s.retired, &backends).into(),
                        ..s.view
                    })
                })
                .collect()
        };
        let backends = |v: &mut Vec<BackendView>| -> Result<(), MapOpError> {
            for b in v {
                b.flows = flows.get(&b.id).copied().unwrap_or(0);
                b.counters = r.backend_counters(b.id)?.into();
            }
            Ok(())
        };
        Ok(match self {
            Self::Vips(v) => Response::Vips { vips: services(v)? },
            Self::Backends {
                service,
                backends: mut b,
            } => {
                backends(&mut b)?;
                Response::Backends {
                    service,
                    backends: b,
                }
            }
            Self::Status(mut s, ifaces) => {
                for v in &mut s.vips {
                    backends(&mut v.backends)?;
                }
                s.xmit_failures = xmit_views(r, &ifaces)?;
                super::outbound::add_usage(&mut s.outbound, &r.outbound_usage());
                Response::Status(s)
            }
            Self::Stats(v, ifaces) => {
                let counts = r.reason_counters()?;
                let reasons = ALL_REASONS
                    .iter()
                    .zip(counts)
                    .map(|(r, c)| (r.name().to_owned(), c))
                    .collect();
                let sweeps = r.sweeps();
                Response::Stats(StatsView {
                    reasons,
                    services: services(v)?,
                    flows_expired: sweeps.expired,
                    tcp_resets: sweeps.resets,
                    tcp_reset_errors: sweeps.reset_errors,
                    sweeps: sweeps.passes,
                    sweep_errors: sweeps.pass_errors,
                    xmit_failures: xmit_views(r, &ifaces)?,
                    probe_tunnel: lb_common::encap::probe::ALL
                        .iter()
                        .zip(r.probe_tunnel()?)
                        .map(|(o, n)| (o.name().to_owned(), n))
                        .collect(),
                })
            }
            Self::Acl(mut a, id) => {
                if let Some(id) = id {
                    a.drops = r.service_counters(id)?.acl_drops;
                }
                Response::Acl(a)
            }
            Self::Pips(pips) => Response::Pips { pips },
            Self::Outbound(mut rules) => {
                super::outbound::add_usage(&mut rules, &r.outbound_usage());
                Response::Outbound { rules }
            }
            Self::Flows(q) => {
                let (flows, matched) = q.run(r)?;
                Response::Flows { flows, matched }
            }
            Self::Explain(mut v, k, names) => {
                let now = crate::dataplane::sweep::monotonic_s();
                v.tracked = match k {
                    super::explain::ExplainKey::V4(k) => r
                        .flow(&k)?
                        .filter(ConnEntry4::is_forward)
                        .map(|e| tracked(TrackedFlow::V4(&k, &e), &names, now)),
                    super::explain::ExplainKey::V6(k) => r
                        .flow6(&k)?
                        .filter(|e| e.kind == lb_common::maps::CONN_FORWARD)
                        .map(|e| tracked(TrackedFlow::V6(&k, &e), &names, now)),
                };
                Response::Explain(v)
            }
        })
    }
}

/// A tracked flow's entry as `lb flows` and `lb explain` show it: its backend by address (or
/// by id, once gone), TCP state, idle time, age, and whether it is a hairpin flow.
fn tracked(f: TrackedFlow<'_>, names: &HashMap<BackendId, String>, now: u32) -> TrackedView {
    let (kind, _, backend, tcp, seen_s, created_s) = f.entry();
    TrackedView {
        backend: names
            .get(&backend)
            .cloned()
            .unwrap_or_else(|| format!("backend id {backend} (gone)")),
        state: if f.proto() == lb_common::flow::proto::TCP {
            tcp_state(tcp).to_owned()
        } else {
            "udp".to_owned()
        },
        idle_s: since(now, seen_s),
        age_s: since(now, created_s),
        hairpin: kind == lb_common::maps::CONN_HAIRPIN,
    }
}

/// Seconds from `then` to `now` on the conntrack clock (which wraps; a time ahead of `now`,
/// written between the two reads, is 0).
fn since(now: u32, then: u32) -> u64 {
    let d = now.wrapping_sub(then);
    u64::from(if d > u32::MAX / 2 { 0 } else { d })
}

/// The lost-frame counters of the served interfaces, in their order (an interface the map
/// has no entry for shows zeros).
fn xmit_views(
    r: &dyn MapReader,
    ifaces: &[(String, u32)],
) -> Result<Vec<XmitFailView>, MapOpError> {
    let counts: HashMap<u32, XmitFails> = r.xmit_fails()?.into_iter().collect();
    Ok(ifaces
        .iter()
        .map(|(name, i)| {
            let c = counts.get(i).copied().unwrap_or_default();
            XmitFailView {
                interface: name.clone(),
                ifindex: *i,
                redirect: c.redirect,
                tx: c.tx,
                aborted: c.aborted,
            }
        })
        .collect())
}

/// What the views read from the writer.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub state: &'a State,
    pub live: &'a Live,
    pub health: &'a HealthBook,
    pub info: &'a AgentInfo,
    pub ring_used: u64,
    /// Seconds `lb trace` sampling stays on, if it is on.
    pub trace_left_s: Option<u64>,
    pub outbound: &'a super::outbound::OutboundBook,
    /// False once a plain stop has begun: nothing is announced (`Reconciler::announced`).
    pub announcing: bool,
}

impl Source<'_> {
    /// The pending answer to a query.
    ///
    /// # Errors
    /// The query names a service that does not exist.
    pub fn query(&self, q: Query) -> Result<Pending, ChangeError> {
        Ok(match q {
            Query::VipList => Pending::Vips(self.services()),
            Query::BackendList { service } => Pending::Backends {
                service: service.to_string(),
                backends: self.backends(&service)?,
            },
            Query::AclList { service } => {
                let id = self.live.services.get(&service).map(|i| i.id);
                Pending::Acl(self.acl(&service)?, id)
            }
            Query::PipList => Pending::Pips(self.pips()),
            Query::OutboundList => {
                Pending::Outbound(super::outbound::views(self.state, self.live, self.outbound))
            }
            Query::Status => Pending::Status(Box::new(self.status()?), self.info.ifaces()),
            Query::Stats => Pending::Stats(self.services(), self.info.ifaces()),
            Query::Flows {
                service,
                backend,
                client,
                limit,
            } => Pending::Flows(self.flows(service, backend, client, limit)?),
            Query::Explain { client, service } => {
                let (v, k) = self.explain(client, service)?;
                Pending::Explain(Box::new(v), k, self.backend_names())
            }
        })
    }

    fn services(&self) -> Vec<ServiceRead> {
        let mut out = Vec::new();
        for (spec, info) in &self.live.services {
            let Some(svc) = self.state.services.get(spec) else {
                continue;
            };
            let st = &svc.settings;
            let live_backends: Vec<_> = self.live.backends_of_spec(spec).collect();
            let view = ServiceView {
                service: spec.to_string(),
                table_fingerprint: self.fingerprint(spec),
                kind: match svc.kind {
                    Kind::Balanced => "balanced".into(),
                    Kind::Forward => {
                        let to = svc
                            .backends
                            .keys()
                            .next()
                            .map_or_else(String::new, ToString::to_string);
                        format!("forward to {to}")
                    }
                },
                id: info.id,
                table_size: st.table_size,
                backends: live_backends.len(),
                in_rotation: live_backends
                    .iter()
                    .filter(|(a, _)| self.health.rotation(spec, Some(svc), a).0)
                    .count(),
                probe: st.probe.as_ref().map(ToString::to_string),
                probe_interval: format_duration(st.interval),
                probe_timeout: format_duration(st.timeout),
                unhealthy_after: st.thresholds.unhealthy_after,
                healthy_after: st.thresholds.healthy_after,
                when_all_down: st.when_all_down.to_string(),
                established: st.established.to_string(),
                internal: crate::config::format_prefixes(&st.internal),
                hairpin: st.hairpin.to_string(),
                icmp_echo: st.icmp_echo,
                replies: st.replies.to_string(),
                distribution: st.distribution.to_string(),
                idle_timeout: crate::config::idle_timeout_text(spec.proto, st.idle_timeout),
                tcp_reset: st.tcp_reset,
                mode: lb_common::encap::mode_name(st.floating_ip.mode()).to_owned(),
                probe_via: st.probe_via.to_string(),
                counters: CountersView::default(),
            };
            let backends: Vec<BackendId> = live_backends.iter().map(|(_, id)| **id).collect();
            // A live backend whose retirement failed half-way is in the sum already: it is
            // read in full with the others, so its added part comes off the sum.
            let folded = backends
                .iter()
                .filter_map(|id| self.live.folded.get(id))
                .fold(Counters::default(), Counters::add);
            out.push(ServiceRead {
                view,
                backends,
                retired: self
                    .live
                    .retired
                    .get(&info.id)
                    .copied()
                    .unwrap_or_default()
                    .since(&folded),
            });
        }
        out
    }

    /// Resolves `lb flows`' selection to ids.
    /// `lb flows`' (and `lb flows flush`'s) selection, resolved to ids.
    ///
    /// # Errors
    /// The service does not exist.
    pub fn flows(
        &self,
        service: Option<ServiceSpec>,
        backend: Option<std::net::IpAddr>,
        client: Option<(std::net::IpAddr, u8)>,
        limit: Option<u32>,
    ) -> Result<FlowQuery, ChangeError> {
        let service = match service {
            Some(s) => Some(
                self.live
                    .services
                    .get(&s)
                    .map(|i| i.id)
                    .ok_or_else(|| ChangeError::NotFound(format!("service {s}")))?,
            ),
            None => None,
        };
        let backend_names = self.backend_names();
        let backends = backend.map(|ip| {
            self.live
                .backends
                .iter()
                .filter(|(_, b)| super::live::backend_addr(b).ip() == ip)
                .map(|(id, _)| *id)
                .collect()
        });
        Ok(FlowQuery {
            service,
            backends,
            client: client.map(|(a, l)| crate::spec::map_prefix(a, l)),
            limit: limit.map_or(1000, |l| l as usize),
            backend_names,
        })
    }

    /// Every live backend id's address.
    fn backend_names(&self) -> HashMap<BackendId, String> {
        self.live
            .backends
            .iter()
            .map(|(id, b)| (*id, super::live::backend_addr(b).to_string()))
            .collect()
    }

    fn backends(&self, spec: &ServiceSpec) -> Result<Vec<BackendView>, ChangeError> {
        if !self.live.services.contains_key(spec) {
            return Err(ChangeError::NotFound(format!("service {spec}")));
        }
        let mut slots: HashMap<BackendId, u32> = HashMap::new();
        let table = self.live.table(spec).map(|(_, t)| t);
        let total = table.map_or(0, <[BackendId]>::len);
        for id in table.into_iter().flatten() {
            *slots.entry(*id).or_default() += 1;
        }
        let svc = self.state.services.get(spec);
        Ok(self
            .live
            .backends_of_spec(spec)
            .map(|(addr, &id)| {
                let nh = self
                    .live
                    .backends
                    .get(&id)
                    .map(|b| b.nh)
                    .filter(lb_common::maps::NextHop::is_resolved);
                let s = slots.get(&id).copied().unwrap_or(0);
                let desired = svc.and_then(|s| s.backends.get(addr));
                let (in_rotation, reason) = self.health.rotation(spec, svc, addr);
                let last_probe = self
                    .health
                    .get(spec, addr)
                    .and_then(|h| h.last.as_ref())
                    .map(|(ok, detail, at)| ProbeView {
                        ok: *ok,
                        detail: detail.clone(),
                        age_ms: u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
                    });
                BackendView {
                    backend: addr.to_string(),
                    id,
                    health: self.health.word(spec, svc, addr).into(),
                    in_rotation,
                    reason,
                    last_probe,
                    weight: desired.map_or(0, |b| b.weight),
                    drained: desired.is_some_and(|b| b.drained),
                    admin: desired.map_or_else(|| "none".into(), |b| b.admin.to_string()),
                    next_hop: nh.map(|n| NextHopView {
                        ifindex: n.ifindex,
                        smac: mac(n.smac),
                        dmac: mac(n.dmac),
                    }),
                    slots: s,
                    share: if total == 0 {
                        0.0
                    } else {
                        f64::from(s) / total as f64
                    },
                    flows: 0,
                    counters: CountersView::default(),
                }
            })
            .collect())
    }

    /// The fingerprint of `spec`'s live table, from the backends its slots hold and the
    /// program's seed, as `0x` and 16 hex digits.
    fn fingerprint(&self, spec: &ServiceSpec) -> Option<String> {
        let (_, slots) = self.live.table(spec)?;
        let content: Option<Vec<_>> = slots
            .iter()
            .map(|id| {
                self.live
                    .backends
                    .get(id)
                    .map(|b| (b.addr, u16::from_be_bytes(b.port)))
            })
            .collect();
        Some(format!(
            "{:#018x}",
            lb_common::maglev::fingerprint(self.info.hash_seed, content?.into_iter())
        ))
    }

    fn status(&self) -> Result<StatusView, ChangeError> {
        let mut vips = Vec::new();
        for spec in self.live.services.keys() {
            vips.push(ServiceStatus {
                service: spec.to_string(),
                table_fingerprint: self.fingerprint(spec),
                backends: self.backends(spec)?,
            });
        }
        let (mut backends, mut resolved) = (0, 0);
        for spec in self.live.services.keys() {
            for (_, id) in self.live.backends_of_spec(spec) {
                backends += 1;
                resolved += usize::from(
                    self.live
                        .backends
                        .get(id)
                        .is_some_and(|b| b.nh.is_resolved()),
                );
            }
        }
        Ok(StatusView {
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: crate::api::API_VERSION,
            pid: std::process::id(),
            interfaces: self.info.interfaces.clone(),
            xdp_mode: self.info.xdp_mode.clone(),
            pin_dir: self.info.pin_dir.clone(),
            services: self.live.services.len(),
            backends,
            backends_unresolved: backends - resolved,
            client_routes: self.routes(),
            ring_slots_used: self.ring_used,
            ring_slots: self.info.ring_slots,
            conntrack_flows: self.info.conntrack_flows,
            swap_holds: self.live.holds.len(),
            xmit_counting: match &self.info.xmit_off {
                None => "on".into(),
                Some(why) => format!("off: {why}"),
            },
            xmit_failures: Vec::new(),
            outbound: super::outbound::views(self.state, self.live, self.outbound),
            trace: self
                .trace_left_s
                .map_or_else(|| "off".into(), |s| format!("on for {s} s more")),
            announce_table: self.info.announce_table,
            // The reconciler's rule (`Reconciler::announced`); with no table, nothing.
            announced: self
                .health
                .announced(self.state, self.announcing && self.info.announce_table != 0)
                .iter()
                .map(ToString::to_string)
                .collect(),
            vips,
        })
    }

    fn acl(&self, spec: &ServiceSpec) -> Result<AclView, ChangeError> {
        let svc = self
            .state
            .services
            .get(spec)
            .ok_or_else(|| ChangeError::NotFound(format!("endpoint {spec}")))?;
        let rules = super::plan::acl_rules(svc);
        Ok(AclView {
            service: spec.to_string(),
            rules: svc
                .acl
                .values()
                .map(|r| AclRuleView {
                    order: r.order,
                    action: action_word(r.action).into(),
                    prefix: format!("{}/{}", r.prefix.0, r.prefix.1),
                    description: r.description.clone(),
                })
                .collect(),
            default: action_word(lb_common::acl::default_action(&rules)).into(),
            compiled_entries: self.live.acl_of(spec).map_or(0, |(_, e)| e.len()),
            drops: 0,
        })
    }

    fn pips(&self) -> Vec<PipView> {
        let mut v: Vec<PipView> = self
            .live
            .pips
            .iter()
            .map(|(p, (d, nh))| PipView {
                pip: p.to_string(),
                dip: d.to_string(),
                next_hop: nh.is_resolved().then(|| NextHopView {
                    ifindex: nh.ifindex,
                    smac: mac(nh.smac),
                    dmac: mac(nh.dmac),
                }),
            })
            .collect();
        v.sort_by(|a, b| a.pip.cmp(&b.pip));
        v
    }

    fn routes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .live
            .routes
            .iter()
            .map(|((len, a), nh)| {
                let ip = addr::to_ip(a);
                let plen = if ip.is_ipv4() {
                    len - addr::V4_MAPPED_PREFIX_LEN
                } else {
                    *len
                };
                if nh.is_resolved() {
                    format!("{ip}/{plen} via if {} → {}", nh.ifindex, mac(nh.dmac))
                } else {
                    format!(
                        "{ip}/{plen} connected (kernel FIB per host until its neighbour is learned)"
                    )
                }
            })
            .collect();
        v.sort();
        v
    }
}

pub(super) fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
