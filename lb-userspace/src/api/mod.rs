//! The agent's control socket: one JSON request per line, one JSON response per line.
//!
//! Requests carry typed values: a service is a `ServiceSpec`, a backend a `BackendSpec`, a
//! duration a `Duration`, each in the text form an operator types (`"203.0.113.10:80/tcp"`,
//! `"15s"`). They are parsed once, at the edge: by clap in the CLI, and by serde when the agent
//! decodes a line, so a hand-written client is refused with the same messages. Responses carry
//! data; every word shown to an operator is rendered by the CLI.
//!
//! ```json
//! {"change":{"op":"backend_add","service":"203.0.113.10:80/tcp","backend":"192.0.2.11"}}
//! {"query":{"op":"status"}}
//! ```

mod client;
mod server;
mod views;

use serde::{Deserialize, Serialize};

pub use self::{
    client::{ClientError, call},
    server::{
        Call, DEFAULT_SOCKET, MAX_CONNECTIONS, MAX_REQUEST, REQUEST_TIMEOUT, bind, decode, serve,
    },
    views::*,
};
use crate::{
    error::ErrorKind,
    spec::ServiceSpec,
    state::{Change, Command},
};

/// The version of the control socket's JSON-lines protocol (README, "Control socket API"):
/// within a version, answers only gain fields and requests only gain optional ones; anything
/// else is a new version. `lb status` and `lb --version` report it.
pub const API_VERSION: u32 = 1;

/// One request: a change to the desired state, or a question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Change(Command),
    Query(Query),
    /// Re-read the agent's config file (as SIGHUP does) and answer with what changed.
    Reload,
    /// Delete the tracked flows selected as `Query::Flows` selects them (all of them when
    /// nothing is named): their next packet is a new flow.
    FlushFlows {
        #[serde(default)]
        service: Option<ServiceSpec>,
        #[serde(default)]
        backend: Option<std::net::IpAddr>,
        #[serde(default, with = "crate::spec::serde_opt_prefix")]
        client: Option<(std::net::IpAddr, u8)>,
    },
    /// Turn `lb trace`'s sampling on for `seconds` (then the agent turns it off, unless a
    /// `trace_stop` came first): packets to or from `vip` and `port` (each optional), at most
    /// `rate` events per second per CPU.
    Trace {
        #[serde(default)]
        vip: Option<std::net::IpAddr>,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        rate: Option<u32>,
        seconds: u32,
    },
    TraceStop,
}

/// The questions the agent answers (nothing changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Query {
    VipList,
    BackendList {
        service: ServiceSpec,
    },
    AclList {
        service: ServiceSpec,
    },
    PipList,
    OutboundList,
    Status,
    Stats,
    /// Tracked flows, selected by service, backend address and client prefix (each
    /// optional), at most `limit` of them (the answer says how many matched).
    Flows {
        #[serde(default)]
        service: Option<ServiceSpec>,
        #[serde(default)]
        backend: Option<std::net::IpAddr>,
        #[serde(default, with = "crate::spec::serde_opt_prefix")]
        client: Option<(std::net::IpAddr, u8)>,
        #[serde(default)]
        limit: Option<u32>,
    },
    /// How a new flow from `client` to `service` would be handled, and whether it is tracked.
    Explain {
        client: std::net::SocketAddr,
        service: ServiceSpec,
    },
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The change was applied to the maps and committed to the desired state.
    Done(Change),
    /// Refused or failed; nothing changed unless the message says otherwise.
    Error {
        kind: ErrorKind,
        message: String,
    },
    Vips {
        vips: Vec<ServiceView>,
    },
    Backends {
        service: String,
        backends: Vec<BackendView>,
    },
    Status(Box<StatusView>),
    Stats(StatsView),
    Acl(AclView),
    Pips {
        pips: Vec<PipView>,
    },
    Outbound {
        rules: Vec<OutboundView>,
    },
    /// Tracked flows: those shown (at most the limit asked for) and how many matched.
    Flows {
        flows: Vec<FlowView>,
        matched: u64,
    },
    /// A reload: whether the file had changed since it was applied, and each service or PIP it
    /// added, removed or changed (what it replaced of the running state, CLI changes included).
    Reloaded {
        changed: bool,
        changes: Vec<String>,
    },
    Explain(Box<ExplainView>),
    /// Tracing is on: where its records and lost-event counters are pinned, for how long, and
    /// the served interfaces by ifindex (to name them in the records).
    Tracing {
        ring: String,
        lost: String,
        seconds: u32,
        interfaces: Vec<(u32, String)>,
    },
    TraceStopped,
    /// `lb flows flush`: how many flows were deleted.
    Flushed {
        flushed: u64,
    },
}

impl Response {
    /// An error answer.
    #[must_use]
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Error {
            kind,
            message: message.into(),
        }
    }
}

impl From<crate::error::ChangeError> for Response {
    fn from(e: crate::error::ChangeError) -> Self {
        Self::error(e.kind(), e.to_string())
    }
}
