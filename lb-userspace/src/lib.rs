//! The load balancer's agent and CLI (`lb`), as a library so the integration tests drive the
//! same loader, maps and reconciler the binary uses.

pub mod agent;
pub mod announce;
pub mod api;
pub mod backend_setup;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod error;
pub mod link;
pub mod metrics;
pub mod netlink;
pub mod outbound;
pub mod peer;
pub mod persist;
pub mod probe;
pub mod reconcile;
pub mod spec;
pub mod state;
