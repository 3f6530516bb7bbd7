//! The desired state: services, their settings, their backends with weight and drain. Pure
//! data with validated mutations. The config file and runtime (CLI) changes both end up here,
//! so they converge on one model that the reconciler makes true in the maps.
//!
//! Every runtime change is a [`Command`], and [`State::apply`] is the one place that checks and
//! applies it: it returns the [`Change`] made, or a typed [`ChangeError`] (invalid, not found,
//! conflict) and leaves the state as it was.
//!
//! The state is saved as a config file ([`State::to_toml`]): same format, same validation on
//! load, so what the CLI built survives an agent restart (see [`crate::persist`]).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
};

use lb_common::acl::Action;
use serde::{Deserialize, Serialize};

use crate::{
    config::{
        AclRuleConfig, BackendConfig, Config, DEFAULT_WEIGHT, ServiceSettings, backend_is_vip,
        check_acl_rule, check_backend, check_forward, check_internal, check_lifetime, check_pip,
        check_same_vip, check_service, check_settings, check_weight, stateless_pip,
        stateless_shared, table_too_small, vip_is_backend,
    },
    error::ChangeError,
    outbound::{OutboundRule, check_all, check_rule},
    spec::{Admin, BackendSpec, Distribution, Replies, ServiceSpec, format_duration},
};

/// Desired state of every service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub services: BTreeMap<ServiceSpec, ServiceState>,
    /// Instance-level public IPs: PIP → instance address.
    pub pips: BTreeMap<IpAddr, IpAddr>,
    /// Outbound rules by name.
    pub outbound: BTreeMap<String, OutboundRule>,
}

/// A load-balanced service, or a port forward to one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Balanced,
    /// One backend, a one-slot table, no probe: e.g. SSH to one VM.
    Forward,
}

/// Desired state of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    pub kind: Kind,
    pub settings: ServiceSettings,
    /// The endpoint's ACL rules by order number (first match wins; see `lb_common::acl`).
    pub acl: BTreeMap<u32, AclRuleConfig>,
    /// Backends by their resolved address (port defaulted to the service port).
    pub backends: BTreeMap<SocketAddr, BackendState>,
}

/// Desired state of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendState {
    pub spec: BackendSpec,
    /// Relative share of new flows; 0 takes no new flows.
    pub weight: u32,
    /// Drained: no new flows; established flows continue.
    pub drained: bool,
    /// Administrative state: up or down whatever the probes say, or none (they decide).
    pub admin: Admin,
}

/// A change to the desired state, as the CLI (or any client of the control socket) asks for it.
/// Every value is typed: it was parsed once, where it was typed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    VipAdd {
        service: ServiceSpec,
        #[serde(default)]
        settings: ServiceSettings,
    },
    VipDel {
        service: ServiceSpec,
    },
    /// Exchanges everything behind two VIP addresses (services, forwards, backends, ACLs,
    /// probes, settings).
    VipSwap {
        a: IpAddr,
        b: IpAddr,
    },
    BackendAdd {
        service: ServiceSpec,
        backend: BackendSpec,
        #[serde(default)]
        weight: Option<u32>,
    },
    BackendDel {
        service: ServiceSpec,
        backend: BackendSpec,
    },
    BackendSetWeight {
        service: ServiceSpec,
        backend: BackendSpec,
        weight: u32,
    },
    BackendDrain {
        service: ServiceSpec,
        backend: BackendSpec,
        drained: bool,
    },
    BackendAdmin {
        service: ServiceSpec,
        backend: BackendSpec,
        admin: Admin,
    },
    ForwardAdd {
        service: ServiceSpec,
        to: BackendSpec,
        #[serde(default, with = "crate::spec::serde_opt_duration")]
        idle_timeout: Option<std::time::Duration>,
        #[serde(default)]
        tcp_reset: bool,
    },
    ForwardDel {
        service: ServiceSpec,
    },
    AclAdd {
        service: ServiceSpec,
        rule: AclRuleConfig,
    },
    AclDel {
        service: ServiceSpec,
        order: u32,
    },
    PipAdd {
        pip: IpAddr,
        dip: IpAddr,
    },
    PipDel {
        pip: IpAddr,
    },
    OutboundAdd {
        rule: OutboundRule,
    },
    OutboundDel {
        name: String,
    },
}

/// What a [`Command`] changed, with what the CLI needs to say so. Backends are named by their
/// resolved address (the port defaulted to the service's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    ServiceAdded {
        service: ServiceSpec,
    },
    ServiceDeleted {
        service: ServiceSpec,
    },
    BackendAdded {
        service: ServiceSpec,
        backend: SocketAddr,
    },
    BackendDeleted {
        service: ServiceSpec,
        backend: SocketAddr,
    },
    WeightSet {
        service: ServiceSpec,
        backend: SocketAddr,
        weight: u32,
    },
    DrainSet {
        service: ServiceSpec,
        backend: SocketAddr,
        drained: bool,
    },
    AdminSet {
        service: ServiceSpec,
        backend: SocketAddr,
        admin: Admin,
    },
    ForwardAdded {
        service: ServiceSpec,
        to: SocketAddr,
    },
    ForwardDeleted {
        service: ServiceSpec,
    },
    AclAdded {
        service: ServiceSpec,
        rule: AclRuleConfig,
    },
    AclDeleted {
        service: ServiceSpec,
        order: u32,
    },
    PipAdded {
        pip: IpAddr,
        dip: IpAddr,
    },
    PipDeleted {
        pip: IpAddr,
        dip: IpAddr,
    },
    OutboundAdded {
        name: String,
    },
    OutboundDeleted {
        name: String,
    },
    /// Two VIPs exchanged what was behind them: each service as (was, is now).
    VipsSwapped {
        a: IpAddr,
        b: IpAddr,
        services: Vec<(ServiceSpec, ServiceSpec)>,
    },
}

impl Change {
    /// The service whose maps the change touches; `None` for a PIP or outbound change.
    #[must_use]
    pub const fn service(&self) -> Option<&ServiceSpec> {
        match self {
            Self::ServiceAdded { service }
            | Self::ServiceDeleted { service }
            | Self::BackendAdded { service, .. }
            | Self::BackendDeleted { service, .. }
            | Self::WeightSet { service, .. }
            | Self::DrainSet { service, .. }
            | Self::AdminSet { service, .. }
            | Self::ForwardAdded { service, .. }
            | Self::ForwardDeleted { service }
            | Self::AclAdded { service, .. }
            | Self::AclDeleted { service, .. } => Some(service),
            Self::PipAdded { .. }
            | Self::PipDeleted { .. }
            | Self::OutboundAdded { .. }
            | Self::OutboundDeleted { .. }
            | Self::VipsSwapped { .. } => None,
        }
    }
}

impl State {
    /// Applies one command, with every check it needs. On error the state is unchanged.
    ///
    /// # Errors
    /// Invalid values, a service/backend/rule/PIP that does not exist, or one that exists; or
    /// a change the outbound rules cannot take (a backend covered twice, blocks that no longer
    /// fit, a service a rule names removed).
    pub fn apply(&mut self, cmd: &Command) -> Result<Change, ChangeError> {
        let before = (!self.outbound.is_empty()).then(|| self.clone());
        let change = self.apply_one(cmd);
        let checked = change.and_then(|c| {
            if before.is_some() || matches!(c, Change::OutboundAdded { .. }) {
                check_all(self).map_err(|e| ChangeError::Invalid(e.message))?;
            }
            Ok(c)
        });
        if checked.is_err()
            && let Some(b) = before
        {
            *self = b;
        }
        checked
    }

    /// [`Self::apply`] without the outbound rules' check.
    fn apply_one(&mut self, cmd: &Command) -> Result<Change, ChangeError> {
        Ok(match cmd.clone() {
            Command::VipAdd { service, settings } => {
                self.add_service(service, settings)?;
                Change::ServiceAdded { service }
            }
            Command::VipDel { service } => {
                self.del_service(&service)?;
                Change::ServiceDeleted { service }
            }
            Command::VipSwap { a, b } => Change::VipsSwapped {
                services: self.swap_vips(a, b)?,
                a,
                b,
            },
            Command::BackendAdd {
                service,
                backend,
                weight,
            } => Change::BackendAdded {
                backend: self.add_backend(&service, backend, weight)?,
                service,
            },
            Command::BackendDel { service, backend } => Change::BackendDeleted {
                backend: self.del_backend(&service, &backend)?,
                service,
            },
            Command::BackendSetWeight {
                service,
                backend,
                weight,
            } => Change::WeightSet {
                backend: self.set_weight(&service, &backend, weight)?,
                service,
                weight,
            },
            Command::BackendDrain {
                service,
                backend,
                drained,
            } => Change::DrainSet {
                backend: self.set_drained(&service, &backend, drained)?,
                service,
                drained,
            },
            Command::BackendAdmin {
                service,
                backend,
                admin,
            } => Change::AdminSet {
                backend: self.set_admin(&service, &backend, admin)?,
                service,
                admin,
            },
            Command::ForwardAdd {
                service,
                to,
                idle_timeout,
                tcp_reset,
            } => Change::ForwardAdded {
                to: self.add_forward(service, &to, (idle_timeout, tcp_reset))?,
                service,
            },
            Command::ForwardDel { service } => {
                self.del_forward(&service)?;
                Change::ForwardDeleted { service }
            }
            Command::AclAdd { service, rule } => {
                self.add_acl(&service, rule.clone())?;
                Change::AclAdded { service, rule }
            }
            Command::AclDel { service, order } => {
                self.del_acl(&service, order)?;
                Change::AclDeleted { service, order }
            }
            Command::PipAdd { pip, dip } => {
                self.add_pip(pip, dip)?;
                Change::PipAdded { pip, dip }
            }
            Command::PipDel { pip } => Change::PipDeleted {
                dip: self.del_pip(pip)?,
                pip,
            },
            Command::OutboundAdd { rule } => {
                check_rule(&rule).map_err(ChangeError::Invalid)?;
                if self.outbound.contains_key(&rule.name) {
                    return Err(ChangeError::Conflict(format!(
                        "outbound rule {}",
                        rule.name
                    )));
                }
                let name = rule.name.clone();
                self.outbound.insert(name.clone(), rule);
                Change::OutboundAdded { name }
            }
            Command::OutboundDel { name } => {
                self.outbound
                    .remove(&name)
                    .ok_or_else(|| ChangeError::NotFound(format!("outbound rule {name}")))?;
                Change::OutboundDeleted { name }
            }
        })
    }

    /// The state a (validated) config file describes.
    #[must_use]
    pub fn from_config(c: &Config) -> Self {
        let services = c
            .services
            .iter()
            .map(|s| {
                let backends = s
                    .backends
                    .iter()
                    .map(|b: &BackendConfig| {
                        let st = BackendState {
                            spec: b.spec,
                            weight: b.weight,
                            drained: b.drained,
                            admin: b.admin,
                        };
                        (b.spec.resolve(&s.spec), st)
                    })
                    .collect();
                let acl = s.acl.iter().map(|r| (r.order, r.clone())).collect();
                let st = ServiceState {
                    kind: Kind::Balanced,
                    settings: s.settings.clone(),
                    backends,
                    acl,
                };
                (s.spec, st)
            })
            .chain(c.forwards.iter().map(|f| {
                let mut st = forward_state(f.to, (f.idle_timeout, f.tcp_reset));
                st.acl = f.acl.iter().map(|r| (r.order, r.clone())).collect();
                (f.spec, st)
            }))
            .collect();
        Self {
            services,
            pips: c.pips.iter().copied().collect(),
            outbound: c
                .outbound
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
        }
    }

    /// Adds a port forward.
    ///
    /// # Errors
    /// Invalid service or target (a port is required), or the service exists.
    fn add_forward(
        &mut self,
        spec: ServiceSpec,
        to: &BackendSpec,
        lifetime: (Option<std::time::Duration>, bool),
    ) -> Result<SocketAddr, ChangeError> {
        check_service(&spec).map_err(ChangeError::Invalid)?;
        let to = check_forward(&spec, to).map_err(ChangeError::Invalid)?;
        check_lifetime(&spec, lifetime.0, lifetime.1).map_err(ChangeError::Invalid)?;
        if self.services.contains_key(&spec) {
            return Err(ChangeError::Conflict(format!("service {spec}")));
        }
        self.check_backend_addr(to)?;
        self.check_ha_address(&spec, to)?;
        self.check_stateless_endpoint(&spec, to)?;
        if self
            .services
            .iter()
            .any(|(o, st)| o.vip.ip() == spec.vip.ip() && !st.settings.internal.is_empty())
        {
            return Err(ChangeError::Invalid(format!(
                "VIP {} is internal: port forwards on internal VIPs are not supported yet",
                spec.vip.ip()
            )));
        }
        self.services.insert(spec, forward_state(to, lifetime));
        Ok(to)
    }

    /// Removes a port forward.
    ///
    /// # Errors
    /// No such forward.
    fn del_forward(&mut self, spec: &ServiceSpec) -> Result<(), ChangeError> {
        match self.services.get(spec) {
            Some(s) if s.kind == Kind::Forward => {
                self.services.remove(spec);
                Ok(())
            }
            Some(_) => Err(ChangeError::Invalid(format!(
                "{spec} is a load-balanced service: use lb vip del"
            ))),
            None => Err(ChangeError::NotFound(format!("forward {spec}"))),
        }
    }

    /// Adds a service with no backends.
    ///
    /// # Errors
    /// Invalid service or settings, or the service exists.
    fn add_service(
        &mut self,
        spec: ServiceSpec,
        settings: ServiceSettings,
    ) -> Result<(), ChangeError> {
        check_service(&spec).map_err(ChangeError::Invalid)?;
        check_settings(&settings).map_err(ChangeError::Invalid)?;
        check_internal(&spec, &settings.internal).map_err(ChangeError::Invalid)?;
        crate::config::check_ha(&spec, &settings).map_err(ChangeError::Invalid)?;
        check_lifetime(&spec, settings.idle_timeout, settings.tcp_reset)
            .map_err(ChangeError::Invalid)?;
        if self.services.contains_key(&spec) {
            return Err(ChangeError::Conflict(format!("service {spec}")));
        }
        if self.pips.contains_key(&spec.vip.ip()) {
            return Err(ChangeError::Invalid(format!(
                "{} is a PIP; a VIP must be an address of its own",
                spec.vip.ip()
            )));
        }
        if let Some((of, _)) = self
            .services
            .iter()
            .find(|(_, st)| st.backends.keys().any(|b| b.ip() == spec.vip.ip()))
        {
            return Err(ChangeError::Invalid(vip_is_backend(spec.vip.ip(), of)));
        }
        // VIP-level settings (internal, icmp_echo) belong to the address: its services agree.
        if let Some((other, o)) = self
            .services
            .iter()
            .find(|(o, _)| o.vip.ip() == spec.vip.ip())
        {
            if o.kind == Kind::Forward && !settings.internal.is_empty() {
                return Err(ChangeError::Invalid(format!(
                    "VIP {} has port forwards: they cannot be internal yet",
                    spec.vip.ip()
                )));
            }
            check_same_vip(&settings, other, &o.settings).map_err(|(f, m)| {
                ChangeError::Invalid(format!("--{}: {m}", f.replace('_', "-")))
            })?;
        }
        let st = ServiceState {
            kind: Kind::Balanced,
            settings,
            backends: BTreeMap::new(),
            acl: BTreeMap::new(),
        };
        self.services.insert(spec, st);
        Ok(())
    }

    /// Removes a service and its backends.
    ///
    /// # Errors
    /// The service does not exist.
    fn del_service(&mut self, spec: &ServiceSpec) -> Result<ServiceState, ChangeError> {
        self.service_mut(spec)?;
        self.services
            .remove(spec)
            .ok_or_else(|| ChangeError::NotFound(format!("service {spec}")))
    }

    /// Exchanges everything behind VIPs `a` and `b`: every service and forward of one moves to
    /// the same port and protocol on the other, with its backends, ACL, probe and settings.
    /// Returns each service as (was, is now).
    ///
    /// # Errors
    /// The same address twice, an address with no service, two families, or an internal VIP
    /// with a public one (their source checks and hairpin differ).
    fn swap_vips(
        &mut self,
        a: IpAddr,
        b: IpAddr,
    ) -> Result<Vec<(ServiceSpec, ServiceSpec)>, ChangeError> {
        if a == b {
            return Err(ChangeError::Invalid(format!(
                "lb vip swap {a} {b}: a VIP cannot be swapped with itself"
            )));
        }
        if a.is_ipv4() != b.is_ipv4() {
            return Err(ChangeError::Invalid(format!(
                "lb vip swap {a} {b}: the VIPs are of different address families"
            )));
        }
        let internal = |ip: IpAddr| {
            self.services
                .iter()
                .find(|(s, _)| s.vip.ip() == ip)
                .map(|(_, st)| !st.settings.internal.is_empty())
                .ok_or_else(|| ChangeError::NotFound(format!("VIP {ip}: it has no service")))
        };
        let (ia, ib) = (internal(a)?, internal(b)?);
        if ia != ib {
            let (i, p) = if ia { (a, b) } else { (b, a) };
            return Err(ChangeError::Invalid(format!(
                "lb vip swap {a} {b}: {i} is an internal VIP and {p} a public one; their \
                 source checks differ, so they cannot be swapped"
            )));
        }
        let other = |ip: IpAddr| if ip == a { b } else { a };
        let moved: Vec<(ServiceSpec, ServiceSpec)> = self
            .services
            .keys()
            .filter(|s| s.vip.ip() == a || s.vip.ip() == b)
            .map(|s| {
                let mut to = *s;
                to.vip.set_ip(other(s.vip.ip()));
                (*s, to)
            })
            .collect();
        let taken: Vec<(ServiceSpec, ServiceState)> = moved
            .iter()
            .map(|(from, _)| (*from, self.services.remove(from).expect("listed above")))
            .collect();
        for ((_, to), (_, st)) in moved.iter().zip(taken) {
            self.services.insert(*to, st);
        }
        Ok(moved)
    }

    /// A load-balanced service (forwards are changed only through `lb forward`).
    fn service_mut(&mut self, spec: &ServiceSpec) -> Result<&mut ServiceState, ChangeError> {
        match self.services.get_mut(spec) {
            Some(s) if s.kind == Kind::Forward => Err(ChangeError::Invalid(format!(
                "{spec} is a port forward: use lb forward add/del"
            ))),
            Some(s) => Ok(s),
            None => Err(ChangeError::NotFound(format!("service {spec}"))),
        }
    }

    fn backend_mut(
        &mut self,
        spec: &ServiceSpec,
        b: &BackendSpec,
    ) -> Result<&mut BackendState, ChangeError> {
        let addr = b.resolve(spec);
        self.service_mut(spec)?
            .backends
            .get_mut(&addr)
            .ok_or_else(|| ChangeError::NotFound(format!("backend {addr} of {spec}")))
    }

    /// Adds a backend to a service.
    ///
    /// # Errors
    /// Unknown service, wrong address family, bad weight, or the backend exists.
    fn add_backend(
        &mut self,
        spec: &ServiceSpec,
        b: BackendSpec,
        weight: Option<u32>,
    ) -> Result<SocketAddr, ChangeError> {
        let weight = weight.unwrap_or(DEFAULT_WEIGHT);
        check_weight(weight).map_err(|m| ChangeError::Invalid(format!("--weight: {m}")))?;
        check_backend(spec, &b).map_err(ChangeError::Invalid)?;
        if let Some(st) = self.services.get(spec) {
            crate::config::check_floating_backend(spec, &st.settings, &b)
                .map_err(ChangeError::Invalid)?;
        }
        let addr = b.resolve(spec);
        self.check_backend_addr(addr)?;
        self.check_ha_address(spec, addr)?;
        self.check_stateless_endpoint(spec, addr)?;
        let svc = self.service_mut(spec)?;
        if svc.backends.len() + 1 > svc.settings.table_size as usize
            && !svc.backends.contains_key(&addr)
        {
            return Err(ChangeError::Invalid(format!(
                "--table-size: {}",
                table_too_small(svc.settings.table_size, svc.backends.len() + 1)
            )));
        }
        if svc.backends.contains_key(&addr) {
            return Err(ChangeError::Conflict(format!("backend {addr} of {spec}")));
        }
        svc.backends.insert(
            addr,
            BackendState {
                spec: b,
                weight,
                drained: false,
                admin: Admin::None,
            },
        );
        Ok(addr)
    }

    /// Removes a backend from a service.
    ///
    /// # Errors
    /// Unknown service or backend.
    fn del_backend(
        &mut self,
        spec: &ServiceSpec,
        b: &BackendSpec,
    ) -> Result<SocketAddr, ChangeError> {
        let addr = b.resolve(spec);
        self.service_mut(spec)?
            .backends
            .remove(&addr)
            .ok_or_else(|| ChangeError::NotFound(format!("backend {addr} of {spec}")))?;
        Ok(addr)
    }

    /// Sets a backend's weight.
    ///
    /// # Errors
    /// Unknown service or backend, or a bad weight.
    fn set_weight(
        &mut self,
        spec: &ServiceSpec,
        b: &BackendSpec,
        weight: u32,
    ) -> Result<SocketAddr, ChangeError> {
        check_weight(weight).map_err(|m| ChangeError::Invalid(format!("weight: {m}")))?;
        self.backend_mut(spec, b)?.weight = weight;
        Ok(b.resolve(spec))
    }

    /// Drains or undrains a backend.
    ///
    /// # Errors
    /// Unknown service or backend.
    fn set_drained(
        &mut self,
        spec: &ServiceSpec,
        b: &BackendSpec,
        drained: bool,
    ) -> Result<SocketAddr, ChangeError> {
        self.backend_mut(spec, b)?.drained = drained;
        Ok(b.resolve(spec))
    }

    /// Sets a backend's administrative state.
    ///
    /// # Errors
    /// Unknown service or backend.
    fn set_admin(
        &mut self,
        spec: &ServiceSpec,
        b: &BackendSpec,
        admin: Admin,
    ) -> Result<SocketAddr, ChangeError> {
        self.backend_mut(spec, b)?.admin = admin;
        Ok(b.resolve(spec))
    }

    /// Adds an ACL rule to an endpoint (load-balanced or forward).
    ///
    /// # Errors
    /// Unknown endpoint, a rule with that order exists, a bad prefix or description.
    fn add_acl(&mut self, spec: &ServiceSpec, rule: AclRuleConfig) -> Result<(), ChangeError> {
        check_acl_rule(spec, rule.prefix, &rule.description).map_err(ChangeError::Invalid)?;
        let svc = self
            .services
            .get_mut(spec)
            .ok_or_else(|| ChangeError::NotFound(format!("endpoint {spec}")))?;
        if svc.acl.contains_key(&rule.order) {
            return Err(ChangeError::Conflict(format!(
                "ACL rule --order {} of {spec}",
                rule.order
            )));
        }
        svc.acl.insert(rule.order, rule);
        Ok(())
    }

    /// Removes an ACL rule.
    ///
    /// # Errors
    /// Unknown endpoint or rule.
    fn del_acl(&mut self, spec: &ServiceSpec, order: u32) -> Result<(), ChangeError> {
        let svc = self
            .services
            .get_mut(spec)
            .ok_or_else(|| ChangeError::NotFound(format!("endpoint {spec}")))?;
        svc.acl
            .remove(&order)
            .map(|_| ())
            .ok_or_else(|| ChangeError::NotFound(format!("ACL rule --order {order} of {spec}")))
    }

    /// Maps a public IP to one instance (every protocol and port).
    ///
    /// # Errors
    /// Bad addresses, the PIP is a VIP, or either address is already mapped.
    fn add_pip(&mut self, pip: IpAddr, dip: IpAddr) -> Result<(), ChangeError> {
        check_pip(pip, dip).map_err(ChangeError::Invalid)?;
        if self.services.keys().any(|s| s.vip.ip() == pip) {
            return Err(ChangeError::Invalid(format!(
                "{pip} is a VIP; a PIP must be an address of its own"
            )));
        }
        if self.pips.contains_key(&pip) {
            return Err(ChangeError::Conflict(format!("PIP {pip}")));
        }
        if let Some((other, _)) = self.pips.iter().find(|(_, d)| **d == dip) {
            return Err(ChangeError::Invalid(format!(
                "instance {dip} already has PIP {other} (a PIP maps 1:1)"
            )));
        }
        if let Some(b) = self
            .stateless()
            .flat_map(|(_, st)| st.backends.keys())
            .find(|b| b.ip() == dip)
        {
            return Err(ChangeError::Invalid(stateless_pip(*b)));
        }
        self.pips.insert(pip, dip);
        Ok(())
    }

    /// Whether `addr` may be a backend (or forward target): not a VIP.
    fn check_backend_addr(&self, addr: SocketAddr) -> Result<(), ChangeError> {
        match self.services.keys().find(|o| o.vip.ip() == addr.ip()) {
            Some(of) => Err(ChangeError::Invalid(backend_is_vip(addr.ip(), of))),
            None => Ok(()),
        }
    }

    /// Whether `addr` may join `spec` as far as HA ports go: an HA-ports backend serves
    /// nothing else (the config's `ha_conflict` is the same rule).
    fn check_ha_address(&self, spec: &ServiceSpec, addr: SocketAddr) -> Result<(), ChangeError> {
        let mut endpoints: Vec<(ServiceSpec, IpAddr)> = self
            .services
            .iter()
            .filter(|(o, _)| *o != spec)
            .flat_map(|(o, st)| st.backends.keys().map(|b| (*o, b.ip())))
            .filter(|(_, ip)| *ip == addr.ip())
            .collect();
        endpoints.push((*spec, addr.ip()));
        match crate::config::ha_conflict(&endpoints) {
            Some((_, why)) => Err(ChangeError::Invalid(why)),
            None => Ok(()),
        }
    }

    /// The services with `replies = "stateless"` (a scan of plain fields: cheap next to the
    /// change it guards).
    fn stateless(&self) -> impl Iterator<Item = (&ServiceSpec, &ServiceState)> {
        self.services
            .iter()
            .filter(|(_, st)| st.settings.replies == Replies::Stateless)
    }

    /// Whether backend endpoint `addr` may join `spec`: a stateless service's endpoints are its
    /// own, and have no PIP (the config's `check_stateless` is the same rule).
    fn check_stateless_endpoint(
        &self,
        spec: &ServiceSpec,
        addr: SocketAddr,
    ) -> Result<(), ChangeError> {
        let me = self
            .services
            .get(spec)
            .is_some_and(|st| st.settings.replies == Replies::Stateless);
        if me {
            if self.pips.values().any(|d| *d == addr.ip()) {
                return Err(ChangeError::Invalid(stateless_pip(addr)));
            }
            if let Some((other, _)) = self.services.iter().find(|(o, st)| {
                *o != spec && o.proto == spec.proto && st.backends.contains_key(&addr)
            }) {
                return Err(ChangeError::Invalid(stateless_shared(addr, spec, other)));
            }
        } else if let Some((other, _)) = self
            .stateless()
            .find(|(o, st)| *o != spec && o.proto == spec.proto && st.backends.contains_key(&addr))
        {
            return Err(ChangeError::Invalid(stateless_shared(addr, other, spec)));
        }
        Ok(())
    }

    /// Removes a PIP.
    ///
    /// # Errors
    /// No such PIP.
    fn del_pip(&mut self, pip: IpAddr) -> Result<IpAddr, ChangeError> {
        self.pips
            .remove(&pip)
            .ok_or_else(|| ChangeError::NotFound(format!("PIP {pip}")))
    }

    /// What `next` changes of this state, one line per service or PIP: added, removed, or
    /// changed (its settings, backends or rules). What a reload reports it replaces.
    #[must_use]
    pub fn differences(&self, next: &Self) -> Vec<String> {
        let mut out = Vec::new();
        for (spec, st) in &self.services {
            match next.services.get(spec) {
                None => out.push(format!("service {spec} removed")),
                Some(n) if n != st => out.push(format!("service {spec} changed")),
                Some(_) => {}
            }
        }
        for spec in next.services.keys() {
            if !self.services.contains_key(spec) {
                out.push(format!("service {spec} added"));
            }
        }
        for (pip, dip) in &self.pips {
            match next.pips.get(pip) {
                None => out.push(format!("PIP {pip} removed")),
                Some(d) if d != dip => out.push(format!("PIP {pip} changed")),
                Some(_) => {}
            }
        }
        for pip in next.pips.keys() {
            if !self.pips.contains_key(pip) {
                out.push(format!("PIP {pip} added"));
            }
        }
        for (name, r) in &self.outbound {
            match next.outbound.get(name) {
                None => out.push(format!("outbound rule {name} removed")),
                Some(n) if n != r => out.push(format!("outbound rule {name} changed")),
                Some(_) => {}
            }
        }
        for name in next.outbound.keys() {
            if !self.outbound.contains_key(name) {
                out.push(format!("outbound rule {name} added"));
            }
        }
        out
    }

    /// Number of backends over all services.
    #[must_use]
    pub fn backend_count(&self) -> usize {
        self.services.values().map(|s| s.backends.len()).sum()
    }

    /// The state as a config file's `[[service]]` entries (what the state file holds).
    #[must_use]
    pub fn to_toml(&self) -> String {
        let mut o = String::new();
        for (pip, dip) in &self.pips {
            let _ = writeln!(o, "[[pip]]\npip = \"{pip}\"\ndip = \"{dip}\"\n");
        }
        for (spec, svc) in &self.services {
            if svc.kind == Kind::Forward {
                for to in svc.backends.keys() {
                    let _ = writeln!(o, "[[forward]]\nvip = \"{spec}\"\nto = \"{to}\"");
                }
                write_lifetime(&mut o, &svc.settings);
                write_acl(&mut o, &svc.acl);
                o.push('\n');
                continue;
            }
            let s = &svc.settings;
            let _ = writeln!(
                o,
                "[[service]]\nvip = \"{spec}\"\ntable_size = {}",
                s.table_size
            );
            if let Some(p) = &s.probe {
                let _ = writeln!(o, "probe = \"{p}\"");
            }
            let _ = writeln!(
                o,
                "probe_interval = \"{}\"\nprobe_timeout = \"{}\"\nunhealthy_after = {}\nhealthy_after = {}\nwhen_all_down = \"{}\"\nestablished = \"{}\"",
                format_duration(s.interval),
                format_duration(s.timeout),
                s.thresholds.unhealthy_after,
                s.thresholds.healthy_after,
                s.when_all_down,
                s.established,
            );
            if !s.internal.is_empty() {
                let list: Vec<String> = s
                    .internal
                    .iter()
                    .map(|(ip, l)| format!("\"{ip}/{l}\""))
                    .collect();
                let _ = writeln!(
                    o,
                    "internal = [{}]\nhairpin = \"{}\"",
                    list.join(", "),
                    s.hairpin
                );
            }
            if !s.icmp_echo {
                o.push_str("icmp_echo = false\n");
            }
            if s.distribution != Distribution::FiveTuple {
                let _ = writeln!(o, "distribution = \"{}\"", s.distribution);
            }
            if s.replies != Replies::Tracked {
                let _ = writeln!(o, "replies = \"{}\"", s.replies);
            }
            if s.floating_ip != crate::spec::FloatingIp::Off {
                let _ = writeln!(o, "floating_ip = \"{}\"", s.floating_ip);
            }
            if s.probe_via != crate::spec::ProbeVia::Direct {
                let _ = writeln!(o, "probe_via = \"{}\"", s.probe_via);
            }
            write_lifetime(&mut o, s);
            o.push_str("backends = [\n");
            for b in svc.backends.values() {
                let admin = if b.admin == Admin::None {
                    String::new()
                } else {
                    format!(", admin = \"{}\"", b.admin)
                };
                let _ = writeln!(
                    o,
                    "  {{ addr = \"{}\", weight = {}, drained = {}{admin} }},",
                    b.spec, b.weight, b.drained
                );
            }
            o.push_str("]\n");
            write_acl(&mut o, &svc.acl);
            o.push('\n');
        }
        if !self.outbound.is_empty() {
            #[derive(serde::Serialize)]
            struct Rules<'a> {
                outbound: Vec<&'a OutboundRule>,
            }
            let rules = Rules {
                outbound: self.outbound.values().collect(),
            };
            // Plain strings, numbers and lists: nothing TOML cannot represent.
            o.push_str(&toml::to_string(&rules).expect("outbound rules serialize"));
        }
        o
    }
}

fn write_acl(o: &mut String, acl: &BTreeMap<u32, AclRuleConfig>) {
    if acl.is_empty() {
        return;
    }
    o.push_str("acl = [\n");
    for r in acl.values() {
        let action = match r.action {
            Action::Permit => "permit",
            // Rules never hold hairpin (only internal-VIP sets do).
            Action::Deny | Action::Hairpin => "deny",
        };
        // Descriptions have no control characters (checked); escape quotes and backslashes.
        let desc = r.description.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            o,
            "  {{ order = {}, action = \"{action}\", prefix = \"{}/{}\", description = \"{desc}\" }},",
            r.order, r.prefix.0, r.prefix.1
        );
    }
    o.push_str("]\n");
}

/// An endpoint's `idle_timeout` and `tcp_reset` lines, when they are not the defaults.
fn write_lifetime(o: &mut String, s: &ServiceSettings) {
    if let Some(d) = s.idle_timeout {
        let _ = writeln!(o, "idle_timeout = \"{}\"", format_duration(d));
    }
    if s.tcp_reset {
        o.push_str("tcp_reset = true\n");
    }
}

/// Prefixes as `a/len, b/len` (`none` when empty).
#[must_use]
pub fn prefixes(p: &[(IpAddr, u8)]) -> String {
    crate::config::format_prefixes(p)
}

/// A forward as a service: one backend, a one-slot table, no probe; its idle timeout and TCP
/// reset.
fn forward_state(
    to: SocketAddr,
    (idle_timeout, tcp_reset): (Option<std::time::Duration>, bool),
) -> ServiceState {
    let spec = BackendSpec {
        ip: to.ip(),
        port: Some(to.port()),
    };
    let settings = ServiceSettings {
        table_size: 1,
        idle_timeout,
        tcp_reset,
        ..ServiceSettings::default()
    };
    let backend = BackendState {
        spec,
        weight: DEFAULT_WEIGHT,
        drained: false,
        admin: Admin::None,
    };
    ServiceState {
        kind: Kind::Forward,
        settings,
        backends: BTreeMap::from([(to, backend)]),
        acl: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ProbeSpec;

    fn svc(s: &str) -> ServiceSpec {
        s.parse().unwrap()
    }

    #[test]
    fn config_and_cli_converge() {
        let text = "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", { addr = \"192.0.2.12:8080\", weight = 3 }]\n";
        let from_file = State::from_config(&crate::config::parse("t.toml", text).unwrap());
        let mut by_cli = State::default();
        let web = svc("203.0.113.10:80/tcp");
        by_cli.add_service(web, ServiceSettings::default()).unwrap();
        by_cli
            .add_backend(&web, "192.0.2.11".parse().unwrap(), None)
            .unwrap();
        by_cli
            .add_backend(&web, "192.0.2.12:8080".parse().unwrap(), Some(3))
            .unwrap();
        assert_eq!(from_file, by_cli);
    }

    #[test]
    fn state_file_round_trips_through_the_config_parser() {
        let mut s = State::default();
        let web = svc("203.0.113.10:80/tcp");
        let settings = ServiceSettings {
            probe: Some(ProbeSpec::Http {
                port: Some(8080),
                path: "/healthz".into(),
            }),
            interval: std::time::Duration::from_millis(200),
            timeout: std::time::Duration::from_millis(100),
            table_size: 251,
            ..ServiceSettings::default()
        };
        s.add_service(web, settings).unwrap();
        s.add_service(svc("203.0.113.10:53/udp"), ServiceSettings::default())
            .unwrap();
        s.add_backend(&web, "192.0.2.11".parse().unwrap(), Some(2))
            .unwrap();
        s.add_backend(&web, "192.0.2.12:8080".parse().unwrap(), None)
            .unwrap();
        s.set_drained(&web, &"192.0.2.12:8080".parse().unwrap(), true)
            .unwrap();
        let text = s.to_toml();
        let back = State::from_config(&crate::config::parse("state.toml", &text).unwrap());
        assert_eq!(back, s, "{text}");
    }

    #[test]
    fn refuses_bad_changes_with_named_errors() {
        let mut s = State::default();
        let web = svc("203.0.113.10:80/tcp");
        let b11: BackendSpec = "192.0.2.11".parse().unwrap();
        assert!(
            matches!(s.add_backend(&web, b11, None), Err(ChangeError::NotFound(m)) if m.contains("203.0.113.10:80/tcp"))
        );
        s.add_service(web, ServiceSettings::default()).unwrap();
        assert!(matches!(
            s.add_service(web, ServiceSettings::default()),
            Err(ChangeError::Conflict(_))
        ));
        let bad = ServiceSettings {
            table_size: 100,
            ..ServiceSettings::default()
        };
        assert!(
            matches!(s.add_service(svc("203.0.113.10:81/tcp"), bad), Err(ChangeError::Invalid(m)) if m.contains("--table-size"))
        );
        assert!(
            matches!(s.add_backend(&web, "2001:db8::1".parse().unwrap(), None), Err(ChangeError::Invalid(m)) if m.contains("family"))
        );
        assert!(
            matches!(s.add_backend(&web, b11, Some(20_000)), Err(ChangeError::Invalid(m)) if m.contains("--weight"))
        );
        s.add_backend(&web, b11, None).unwrap();
        // The same backend spelled with the service's port is the same backend.
        assert!(matches!(
            s.add_backend(&web, "192.0.2.11:80".parse().unwrap(), None),
            Err(ChangeError::Conflict(_))
        ));
        assert!(matches!(
            s.set_weight(&web, &"192.0.2.12".parse().unwrap(), 2),
            Err(ChangeError::NotFound(_))
        ));
        s.set_weight(&web, &b11, 0).unwrap();
        s.set_drained(&web, &b11, true).unwrap();
        assert_eq!(
            s.services[&web]
                .backends
                .values()
                .next()
                .map(|b| (b.weight, b.drained)),
            Some((0, true))
        );
        s.del_backend(&web, &"192.0.2.11:80".parse().unwrap())
            .unwrap();
        assert_eq!(s.backend_count(), 0);
    }

    /// A stateless service's backend endpoints are its own and have no PIP, whichever change
    /// would break that: a backend, a forward or a PIP. The same address on another port, or
    /// of another protocol, is another endpoint.
    fn refused<T: std::fmt::Debug>(r: &Result<T, ChangeError>, what: &str) {
        assert!(
            matches!(r, Err(ChangeError::Invalid(m)) if m.contains(what) && m.contains("stateless")),
            "{r:?}"
        );
    }

    #[test]
    fn stateless_endpoints_are_refused_where_replies_would_be_ambiguous() {
        let mut s = State::default();
        let web = svc("203.0.113.10:80/tcp");
        let other = svc("203.0.113.11:80/tcp");
        let stateless = ServiceSettings {
            replies: Replies::Stateless,
            distribution: Distribution::SourceIpProtocol,
            ..ServiceSettings::default()
        };
        s.add_service(web, stateless).unwrap();
        s.add_service(other, ServiceSettings::default()).unwrap();
        s.add_service(svc("203.0.113.11:80/udp"), ServiceSettings::default())
            .unwrap();
        let b11: BackendSpec = "192.0.2.11".parse().unwrap();
        s.add_backend(&web, b11, None).unwrap();
        refused(
            &s.add_backend(&other, b11, None),
            "cannot also serve 203.0.113.11:80/tcp",
        );
        refused(
            &s.add_forward(
                svc("203.0.113.12:80/tcp"),
                &"192.0.2.11:80".parse().unwrap(),
                (None, false),
            ),
            "cannot also serve 203.0.113.12:80/tcp",
        );
        refused(
            &s.add_pip(
                "203.0.113.50".parse().unwrap(),
                "192.0.2.11".parse().unwrap(),
            ),
            "has a PIP",
        );
        s.add_backend(&other, "192.0.2.11:8080".parse().unwrap(), None)
            .unwrap();
        s.add_backend(&svc("203.0.113.11:80/udp"), b11, None)
            .unwrap();
        s.add_backend(&other, "192.0.2.12".parse().unwrap(), None)
            .unwrap();
        refused(
            &s.add_backend(&web, "192.0.2.12".parse().unwrap(), None),
            "cannot also serve 203.0.113.11:80/tcp",
        );
        s.add_pip(
            "203.0.113.50".parse().unwrap(),
            "192.0.2.13".parse().unwrap(),
        )
        .unwrap();
        refused(
            &s.add_backend(&web, "192.0.2.13".parse().unwrap(), None),
            "has a PIP",
        );
        // The setting round-trips through the state file.
        let text = s.to_toml();
        assert!(text.contains("replies = \"stateless\""), "{text}");
        assert!(
            text.contains("distribution = \"source-ip-protocol\""),
            "{text}"
        );
        let back = State::from_config(&crate::config::parse("state.toml", &text).unwrap());
        assert_eq!(back, s, "{text}");
    }

    /// HA ports (`ADDR:0/any`): internal VIPs only, backends without a port and serving
    /// nothing else, no hairpin SNAT, a probe with its port; kept by the state file.
    #[test]
    fn ha_ports_are_checked_and_kept() {
        let mut s = State::default();
        let ha = svc("203.0.113.40:0/any");
        let internal = ServiceSettings {
            internal: vec![("198.51.100.0".parse().unwrap(), 24)],
            ..ServiceSettings::default()
        };
        let invalid = |r: Result<(), ChangeError>, what: &str| {
            assert!(
                matches!(&r, Err(ChangeError::Invalid(m)) if m.contains(what)),
                "{what}: {r:?}"
            );
        };
        invalid(
            s.add_service(ha, ServiceSettings::default()),
            "internal VIPs only",
        );
        invalid(
            s.add_service(
                ha,
                ServiceSettings {
                    hairpin: crate::spec::Hairpin::Snat,
                    ..internal.clone()
                },
            ),
            "no SNAT port is free",
        );
        invalid(
            s.add_service(
                ha,
                ServiceSettings {
                    probe: Some("tcp".parse().unwrap()),
                    ..internal.clone()
                },
            ),
            "names its port",
        );
        s.add_service(
            ha,
            ServiceSettings {
                probe: Some("tcp:5432".parse().unwrap()),
                ..internal.clone()
            },
        )
        .unwrap();
        let with_port = s.add_backend(&ha, "192.0.2.11:5432".parse().unwrap(), None);
        invalid(with_port.map(drop), "has no port of its own");
        s.add_backend(&ha, "192.0.2.11".parse().unwrap(), None)
            .unwrap();
        // The same address behind another endpoint, either way round, is refused.
        let web = svc("203.0.113.10:80/tcp");
        s.add_service(web, ServiceSettings::default()).unwrap();
        invalid(
            s.add_backend(&web, "192.0.2.11:8080".parse().unwrap(), None)
                .map(drop),
            "is an HA-ports backend of 203.0.113.40:0/any and cannot also serve 203.0.113.10:80/tcp",
        );
        s.add_backend(&web, "192.0.2.12".parse().unwrap(), None)
            .unwrap();
        invalid(
            s.add_backend(&ha, "192.0.2.12".parse().unwrap(), None)
                .map(drop),
            "cannot also serve 203.0.113.10:80/tcp",
        );
        // An exact service on the HA VIP is fine; a forward on HA ports is not one.
        s.add_service(svc("203.0.113.40:22/tcp"), internal.clone())
            .unwrap();
        invalid(
            s.add_forward(ha, &"192.0.2.13:22".parse().unwrap(), (None, false))
                .map(drop),
            "a port forward is one VIP port",
        );
        let text = s.to_toml();
        assert!(text.contains("vip = \"203.0.113.40:0/any\""), "{text}");
        let back = State::from_config(&crate::config::parse("state.toml", &text).unwrap());
        assert_eq!(back, s, "{text}");
        // The spec's own forms.
        for (bad, why) in [
            ("203.0.113.40:0/tcp", "port 0 is not a service port"),
            ("203.0.113.40:80/any", "/any takes port 0"),
        ] {
            let e = bad.parse::<ServiceSpec>().unwrap_err();
            assert!(e.0.contains(why), "{bad}: {e}");
        }
    }

    /// Idle timeouts and TCP reset: checked against the endpoint's protocol on services and
    /// forwards alike, kept by the state file, the protocol's default when not given.
    #[test]
    fn flow_lifetimes_are_checked_and_kept() {
        use std::time::Duration;
        let mut s = State::default();
        let web = svc("203.0.113.10:80/tcp");
        let dns = svc("203.0.113.10:53/udp");
        let lifetime = |idle: u64, reset: bool| ServiceSettings {
            idle_timeout: Some(Duration::from_secs(idle)),
            tcp_reset: reset,
            ..ServiceSettings::default()
        };
        let invalid = |r: Result<(), ChangeError>, what: &str| {
            assert!(
                matches!(&r, Err(ChangeError::Invalid(m)) if m.contains(what)),
                "{r:?}"
            );
        };
        invalid(s.add_service(web, lifetime(1, false)), "within 2s..=120m");
        invalid(
            s.add_service(web, lifetime(7201, false)),
            "within 2s..=120m",
        );
        let half = ServiceSettings {
            idle_timeout: Some(Duration::from_millis(2500)),
            ..ServiceSettings::default()
        };
        invalid(s.add_service(web, half), "whole seconds");
        invalid(
            s.add_service(dns, lifetime(30, true)),
            "applies to TCP endpoints",
        );
        s.add_service(web, lifetime(5, true)).unwrap();
        s.add_service(dns, lifetime(30, false)).unwrap();
        s.add_service(svc("203.0.113.10:81/tcp"), ServiceSettings::default())
            .unwrap();
        let ssh = svc("203.0.113.10:22/tcp");
        invalid(
            s.add_forward(
                svc("203.0.113.10:2053/udp"),
                &"192.0.2.11:53".parse().unwrap(),
                (None, true),
            )
            .map(drop),
            "applies to TCP endpoints",
        );
        s.add_forward(
            ssh,
            &"192.0.2.11:22".parse().unwrap(),
            (Some(Duration::from_mins(30)), true),
        )
        .unwrap();
        let text = s.to_toml();
        for line in [
            "idle_timeout = \"5s\"",
            "idle_timeout = \"30s\"",
            "idle_timeout = \"30m\"",
            "tcp_reset = true",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        let back = State::from_config(&crate::config::parse("state.toml", &text).unwrap());
        assert_eq!(back, s, "{text}");
        assert_eq!(
            crate::config::idle_timeouts(None),
            (Duration::from_mins(4), Duration::from_mins(1))
        );
        assert_eq!(
            crate::config::idle_timeout_text(crate::spec::Proto::Any, None),
            "4m tcp, 1m udp"
        );
    }

    /// Addresses and sizes that were accepted and then misbehaved are refused with the reason:
    /// a table smaller than its backends, a VIP that is a backend's address, a backend (or
    /// forward target) that is a VIP.
    #[test]
    fn refuses_addresses_and_sizes_that_cannot_work() {
        let mut s = State::default();
        let web = svc("203.0.113.10:80/tcp");
        let small = ServiceSettings {
            table_size: 2,
            ..ServiceSettings::default()
        };
        s.add_service(web, small).unwrap();
        for b in ["192.0.2.11", "192.0.2.12"] {
            s.add_backend(&web, b.parse().unwrap(), None).unwrap();
        }
        let r = s.add_backend(&web, "192.0.2.13".parse().unwrap(), None);
        assert!(
            matches!(&r, Err(ChangeError::Invalid(m)) if m.contains("--table-size") && m.contains("smaller than the service's 3 backends")),
            "{r:?}"
        );
        let r = s.add_service(svc("192.0.2.11:443/tcp"), ServiceSettings::default());
        assert!(
            matches!(&r, Err(ChangeError::Invalid(m)) if m.contains("is a backend of 203.0.113.10:80/tcp")),
            "{r:?}"
        );
        s.add_service(svc("203.0.113.11:80/tcp"), ServiceSettings::default())
            .unwrap();
        let r = s.add_backend(&web, "203.0.113.11".parse().unwrap(), None);
        assert!(
            matches!(&r, Err(ChangeError::Invalid(m)) if m.contains("is the VIP of 203.0.113.11:80/tcp")),
            "{r:?}"
        );
        let r = s.add_forward(
            svc("203.0.113.12:22/tcp"),
            &"203.0.113.10:22".parse().unwrap(),
            (None, false),
        );
        assert!(
            matches!(&r, Err(ChangeError::Invalid(m)) if m.contains("is the VIP of 203.0.113.10:80/tcp")),
            "{r:?}"
        );
    }

    /// What a reload reports it replaces: services and PIPs added, removed or changed.
    #[test]
    fn differences_name_each_service_and_pip() {
        let mut a = State::default();
        let web = svc("203.0.113.10:80/tcp");
        a.add_service(web, ServiceSettings::default()).unwrap();
        a.add_service(svc("203.0.113.10:53/udp"), ServiceSettings::default())
            .unwrap();
        a.add_pip(
            "203.0.113.50".parse().unwrap(),
            "192.0.2.13".parse().unwrap(),
        )
        .unwrap();
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.add_backend(&web, "192.0.2.11".parse().unwrap(), None)
            .unwrap();
        b.del_service(&svc("203.0.113.10:53/udp")).unwrap();
        b.add_service(svc("203.0.113.11:80/tcp"), ServiceSettings::default())
            .unwrap();
        b.del_pip("203.0.113.50".parse().unwrap()).unwrap();
        assert_eq!(
            a.differences(&b),
            [
                "service 203.0.113.10:53/udp removed",
                "service 203.0.113.10:80/tcp changed",
                "service 203.0.113.11:80/tcp added",
                "PIP 203.0.113.50 removed",
            ]
        );
    }

    #[test]
    fn forwards_need_a_port_and_stay_apart_from_services() {
        let mut s = State::default();
        let web = svc("203.0.113.10:80/tcp");
        let ssh = svc("203.0.113.10:50001/tcp");
        s.add_service(web, ServiceSettings::default()).unwrap();
        let b11: BackendSpec = "192.0.2.11".parse().unwrap();
        assert!(
            matches!(s.add_forward(ssh, &b11, (None, false)), Err(ChangeError::Invalid(m)) if m.contains("needs a port"))
        );
        assert_eq!(
            s.add_forward(ssh, &"192.0.2.11:22".parse().unwrap(), (None, false))
                .unwrap()
                .to_string(),
            "192.0.2.11:22"
        );
        assert!(matches!(
            s.add_forward(web, &"192.0.2.11:22".parse().unwrap(), (None, false)),
            Err(ChangeError::Conflict(_))
        ));
        assert!(
            matches!(s.add_backend(&ssh, b11, None), Err(ChangeError::Invalid(m)) if m.contains("lb forward"))
        );
        assert!(matches!(s.del_service(&ssh), Err(ChangeError::Invalid(_))));
        assert!(
            matches!(s.del_forward(&web), Err(ChangeError::Invalid(m)) if m.contains("lb vip del"))
        );
        // ACLs on both kinds of endpoint; the state file keeps forwards and rules.
        let rule = |order, action, p: &str, d: &str| AclRuleConfig {
            order,
            action,
            prefix: crate::spec::parse_prefix(p).unwrap(),
            description: d.into(),
        };
        s.add_acl(
            &ssh,
            rule(10, Action::Permit, "198.51.100.0/26", "admins \"ops\""),
        )
        .unwrap();
        s.add_acl(&web, rule(20, Action::Deny, "0.0.0.0/0", ""))
            .unwrap();
        assert!(matches!(
            s.add_acl(&web, rule(20, Action::Deny, "0.0.0.0/0", "")),
            Err(ChangeError::Conflict(_))
        ));
        let back = State::from_config(&crate::config::parse("s.toml", &s.to_toml()).unwrap());
        assert_eq!(back, s, "{}", s.to_toml());
        s.del_acl(&web, 20).unwrap();
        assert!(matches!(s.del_acl(&web, 20), Err(ChangeError::NotFound(_))));
        s.del_forward(&ssh).unwrap();
        assert!(matches!(s.del_forward(&ssh), Err(ChangeError::NotFound(_))));
    }
}
