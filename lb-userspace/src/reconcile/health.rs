//! The health book: each probed backend's tracker and last result, and the rule that says
//! whether a backend takes new flows, and why (not).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_common::health::{Health, Thresholds, Tracker, Transition};

use crate::{
    spec::{Admin, ServiceSpec, WhenAllDown},
    state::ServiceState,
};

/// What to probe and how (derived from a service's settings by the reconciler).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTarget {
    pub service: ServiceSpec,
    pub backend: SocketAddr,
    /// Where the probe connects: the backend's address and the probe port, or through the
    /// tunnel the VIP and the probe port.
    pub addr: SocketAddr,
    /// `None`: TCP connect; `Some(path)`: HTTP GET that must answer 200.
    pub http_path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// `Some`: through the tunnel (`--probe-via tunnel`).
    pub via: Option<Tunnel>,
}

/// How a probe goes through the floating-IP tunnel (`lb_common::encap::probe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    /// The socket's mark (the backend's id and the service's mode) and the LB address it
    /// binds to: the outer source, which the backend answers straight from VIP:port.
    Via { mark: u32, source: std::net::IpAddr },
    /// The backend has no entry yet (the writer has not placed it): the probe fails, saying
    /// so, until it has one.
    NoEntry,
}

/// One probe's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    pub service: ServiceSpec,
    pub backend: SocketAddr,
    pub ok: bool,
    /// What happened, for `lb status`: "connected", "HTTP 200", "HTTP 500", "timeout after 1s",
    /// "connect: Connection refused".
    pub detail: String,
}

/// One backend's probe history and last result.
#[derive(Clone, Debug)]
pub struct BackendHealth {
    pub tracker: Tracker,
    /// The last result: success, its detail ("HTTP 200"), when it came.
    pub last: Option<(bool, String, Instant)>,
}

/// Probe state per (service, backend). Ordered by service, so dropping a service's entries is
/// a range, not a scan of every backend (10k services made deletion quadratic).
#[derive(Debug)]
pub struct HealthBook {
    entries: BTreeMap<(ServiceSpec, SocketAddr), BackendHealth>,
    /// The clock the trackers run on.
    started: Instant,
}

impl Default for HealthBook {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            started: Instant::now(),
        }
    }
}

impl HealthBook {
    /// Takes one probe result; a change of health comes back as a transition.
    pub fn observe(&mut self, r: &ProbeReport, thresholds: Thresholds) -> Option<Transition> {
        let now: Duration = self.started.elapsed();
        let h = self
            .entries
            .entry((r.service, r.backend))
            .or_insert_with(|| BackendHealth {
                tracker: Tracker::new(thresholds),
                last: None,
            });
        h.last = Some((r.ok, r.detail.clone(), Instant::now()));
        h.tracker.observe(r.ok, now)
    }

    /// Starts a backend healthy (a restarted agent found it in its service's live table).
    pub fn seed_up(&mut self, spec: ServiceSpec, addr: SocketAddr, thresholds: Thresholds) {
        self.entries.insert(
            (spec, addr),
            BackendHealth {
                tracker: Tracker::seeded_up(thresholds),
                last: None,
            },
        );
    }

    #[must_use]
    pub fn get(&self, spec: &ServiceSpec, addr: &SocketAddr) -> Option<&BackendHealth> {
        self.entries.get(&(*spec, *addr))
    }

    /// Whether the probes say the backend is up.
    #[must_use]
    pub fn is_up(&self, spec: &ServiceSpec, addr: &SocketAddr) -> bool {
        self.get(spec, addr).is_some_and(|h| h.tracker.is_up())
    }

    /// Moves every entry of a service to the service `to` gives it (a VIP swap), keeping the
    /// rest.
    pub fn rename(&mut self, to: impl Fn(&ServiceSpec) -> Option<ServiceSpec>) {
        let old = std::mem::take(&mut self.entries);
        self.entries = old
            .into_iter()
            .map(|((s, a), h)| ((to(&s).unwrap_or(s), a), h))
            .collect();
    }

    /// Forgets the entries of `spec` that `keep` does not want (all of them for a deleted
    /// service).
    pub fn prune(&mut self, spec: &ServiceSpec, keep: impl Fn(&SocketAddr) -> bool) {
        let lo = (*spec, SocketAddr::from(([0, 0, 0, 0], 0)));
        let doomed: Vec<(ServiceSpec, SocketAddr)> = self
            .entries
            .range(lo..)
            .take_while(|((s, _), _)| s == spec)
            .filter(|((_, a), _)| !keep(a))
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            self.entries.remove(&k);
        }
    }

    /// The health word of `lb backend list`: up, down, unknown (not probed yet) or unprobed.
    #[must_use]
    pub fn word(
        &self,
        spec: &ServiceSpec,
        svc: Option<&ServiceState>,
        addr: &SocketAddr,
    ) -> &'static str {
        let probed = svc.is_some_and(|s| s.settings.probe.is_some());
        match (probed, self.get(spec, addr).map(|h| h.tracker.health)) {
            (false, _) => "unprobed",
            (true, Some(Health::Up)) => "up",
            (true, Some(Health::Down)) => "down",
            (true, _) => "unknown",
        }
    }

    /// The addresses to announce (`crate::announce`), while `announcing` (until a plain
    /// stop begins):
    /// - each VIP with at least one service that has a backend in rotation. A VIP all of
    ///   whose backends are out (down, drained, weight 0, admin down) is withdrawn, so the
    ///   routers send its traffic to nodes that can serve it, or, with every node alike, to
    ///   none;
    /// - each PIP, while it is configured: it goes to its one instance, which has no probe.
    #[must_use]
    pub fn announced(
        &self,
        state: &crate::state::State,
        announcing: bool,
    ) -> std::collections::BTreeSet<std::net::IpAddr> {
        if !announcing {
            return std::collections::BTreeSet::new();
        }
        state
            .services
            .iter()
            .filter(|(spec, svc)| {
                svc.backends
                    .keys()
                    .any(|a| self.rotation(spec, Some(svc), a).0)
            })
            .map(|(spec, _)| spec.vip.ip())
            .chain(state.pips.keys().copied())
            .collect()
    }

    /// Whether a backend takes new flows, and why (not).
    #[must_use]
    pub fn rotation(
        &self,
        spec: &ServiceSpec,
        svc: Option<&ServiceState>,
        addr: &SocketAddr,
    ) -> (bool, String) {
        let Some(svc) = svc else {
            return (false, "unknown".into());
        };
        let Some(b) = svc.backends.get(addr) else {
            return (false, "unknown".into());
        };
        if b.drained {
            return (false, "drained".into());
        }
        if b.weight == 0 {
            return (false, "weight 0".into());
        }
        match b.admin {
            Admin::Down => return (false, "admin down".into()),
            Admin::Up => return (true, "admin up".into()),
            Admin::None => {}
        }
        if svc.settings.probe.is_none() {
            return (true, "no probe: always in rotation".into());
        }
        match self.get(spec, addr) {
            Some(h) if h.tracker.is_up() => (true, "healthy".into()),
            Some(h) => {
                let last = h
                    .last
                    .as_ref()
                    .map_or(String::new(), |(_, d, _)| format!(": {d}"));
                match h.tracker.health {
                    Health::Down => (
                        false,
                        format!(
                            "{} failed probes{last}",
                            h.tracker.fails.max(svc.settings.thresholds.unhealthy_after)
                        ),
                    ),
                    _ => (false, format!("not probed healthy yet{last}")),
                }
            }
            None => (false, "not probed yet".into()),
        }
    }

    /// The backends of a service that go into its table, by address: those in rotation
    /// (healthy or admin up, not drained, weight > 0, not admin down), or, with none in
    /// rotation and `when_all_down = spread`, every one that is not drained, admin down or
    /// weightless (fail open).
    pub fn eligible<'a>(
        &self,
        spec: &ServiceSpec,
        svc: &'a ServiceState,
    ) -> Vec<(&'a SocketAddr, u32)> {
        let candidates: Vec<(&SocketAddr, u32)> = svc
            .backends
            .iter()
            .filter(|(_, b)| !b.drained && b.weight > 0 && b.admin != Admin::Down)
            .map(|(a, b)| (a, b.weight))
            .collect();
        let probed = svc.settings.probe.is_some();
        let up: Vec<(&SocketAddr, u32)> = candidates
            .iter()
            .copied()
            .filter(|(a, _)| !probed || svc.backends[*a].admin == Admin::Up || self.is_up(spec, a))
            .collect();
        if up.is_empty() && svc.settings.when_all_down == WhenAllDown::Spread {
            candidates
        } else {
            up
        }
    }
}
