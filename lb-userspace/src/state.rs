//! The desired state: which services exist and which backends they have. Pure data with
//! validated mutations; the config file and runtime (CLI) changes both end up here, so they
//! converge on one model that the reconciler makes true in the maps.

use std::{collections::BTreeMap, net::SocketAddr};

use lb_common::{
    config::{Config, check_backend, check_service, check_table_size},
    consts::DEFAULT_TABLE_SIZE,
    spec::{BackendSpec, ServiceSpec},
};

use crate::error::ChangeError;

/// Desired state of every service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub services: BTreeMap<ServiceSpec, ServiceState>,
}

/// Desired state of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    pub table_size: u32,
    /// Backends by their resolved address (port defaulted to the service port).
    pub backends: BTreeMap<SocketAddr, BackendSpec>,
}

impl State {
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
                    .map(|b| (b.resolve(&s.spec), *b))
                    .collect();
                (
                    s.spec,
                    ServiceState {
                        table_size: s.table_size,
                        backends,
                    },
                )
            })
            .collect();
        Self { services }
    }

    /// Adds a service with no backends.
    ///
    /// # Errors
    /// Invalid service or table size, or the service exists.
    pub fn add_service(
        &mut self,
        spec: ServiceSpec,
        table_size: Option<u32>,
    ) -> Result<(), ChangeError> {
        check_service(&spec).map_err(ChangeError::Invalid)?;
        let table_size = table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        check_table_size(table_size)
            .map_err(|m| ChangeError::Invalid(format!("--table-size: {m}")))?;
        if self.services.contains_key(&spec) {
            return Err(ChangeError::Exists(format!("service {spec}")));
        }
        self.services.insert(
            spec,
            ServiceState {
                table_size,
                backends: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Removes a service and its backends.
    ///
    /// # Errors
    /// The service does not exist.
    pub fn del_service(&mut self, spec: &ServiceSpec) -> Result<ServiceState, ChangeError> {
        self.services
            .remove(spec)
            .ok_or_else(|| ChangeError::NotFound(format!("service {spec}")))
    }

    /// Adds a backend to a service.
    ///
    /// # Errors
    /// Unknown service, wrong address family, or the backend exists.
    pub fn add_backend(
        &mut self,
        spec: &ServiceSpec,
        b: BackendSpec,
    ) -> Result<SocketAddr, ChangeError> {
        let svc = self
            .services
            .get_mut(spec)
            .ok_or_else(|| ChangeError::NotFound(format!("service {spec}")))?;
        check_backend(spec, &b).map_err(ChangeError::Invalid)?;
        let addr = b.resolve(spec);
        if svc.backends.contains_key(&addr) {
            return Err(ChangeError::Exists(format!("backend {addr} of {spec}")));
        }
        svc.backends.insert(addr, b);
        Ok(addr)
    }

    /// Removes a backend from a service.
    ///
    /// # Errors
    /// Unknown service or backend.
    pub fn del_backend(
        &mut self,
        spec: &ServiceSpec,
        b: &BackendSpec,
    ) -> Result<SocketAddr, ChangeError> {
        let svc = self
            .services
            .get_mut(spec)
            .ok_or_else(|| ChangeError::NotFound(format!("service {spec}")))?;
        let addr = b.resolve(spec);
        svc.backends
            .remove(&addr)
            .ok_or_else(|| ChangeError::NotFound(format!("backend {addr} of {spec}")))?;
        Ok(addr)
    }

    /// Number of backends over all services.
    #[must_use]
    pub fn backend_count(&self) -> usize {
        self.services.values().map(|s| s.backends.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(s: &str) -> ServiceSpec {
        s.parse().unwrap()
    }

    #[test]
    fn config_and_cli_converge() {
        let text = "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12:8080\"]\n";
        let from_file = State::from_config(&lb_common::config::parse("t.toml", text).unwrap());
        let mut by_cli = State::default();
        by_cli
            .add_service(svc("203.0.113.10:80/tcp"), None)
            .unwrap();
        by_cli
            .add_backend(&svc("203.0.113.10:80/tcp"), "192.0.2.11".parse().unwrap())
            .unwrap();
        by_cli
            .add_backend(
                &svc("203.0.113.10:80/tcp"),
                "192.0.2.12:8080".parse().unwrap(),
            )
            .unwrap();
        assert_eq!(from_file, by_cli);
    }

    #[test]
    fn refuses_bad_changes_with_named_errors() {
        let mut s = State::default();
        let web = svc("203.0.113.10:80/tcp");
        assert!(
            matches!(s.add_backend(&web, "192.0.2.11".parse().unwrap()), Err(ChangeError::NotFound(m)) if m.contains("203.0.113.10:80/tcp"))
        );
        s.add_service(web, None).unwrap();
        assert!(matches!(
            s.add_service(web, None),
            Err(ChangeError::Exists(_))
        ));
        assert!(
            matches!(s.add_service(svc("203.0.113.10:81/tcp"), Some(100)), Err(ChangeError::Invalid(m)) if m.contains("--table-size"))
        );
        assert!(
            matches!(s.add_backend(&web, "2001:db8::1".parse().unwrap()), Err(ChangeError::Invalid(m)) if m.contains("family"))
        );
        s.add_backend(&web, "192.0.2.11".parse().unwrap()).unwrap();
        // The same backend spelled with the service's port is the same backend.
        assert!(matches!(
            s.add_backend(&web, "192.0.2.11:80".parse().unwrap()),
            Err(ChangeError::Exists(_))
        ));
        assert!(matches!(
            s.del_backend(&web, &"192.0.2.12".parse().unwrap()),
            Err(ChangeError::NotFound(_))
        ));
        s.del_backend(&web, &"192.0.2.11:80".parse().unwrap())
            .unwrap();
        assert_eq!(s.backend_count(), 0);
    }
}
