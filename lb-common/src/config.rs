//! The agent's config file (TOML): parsing and validation.
//!
//! A bad file changes nothing: [`parse`] returns the first error, naming the file, line, column
//! and field (`service[1].backends[0]`). The checks that also apply to runtime (CLI) changes are
//! the `check_*` functions, so a file and a CLI call reject the same things the same way.
//!
//! ```toml
//! [agent]                      # optional; these are the defaults
//! hash_seed = 0x5eed1b00
//! conntrack_flows = 1048576
//! ring_slots = 8388608
//!
//! [[service]]
//! vip = "203.0.113.10:80/tcp"
//! backends = ["192.0.2.11", "192.0.2.12:8080"]
//! table_size = 65537           # optional, a prime
//! ```

use std::{collections::BTreeSet, fmt, ops::Range};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    consts::{
        DEFAULT_CONNTRACK_ENTRIES, DEFAULT_HASH_SEED, DEFAULT_RING_SLOTS, DEFAULT_TABLE_SIZE,
        MAX_BACKENDS, MAX_SERVICES, MAX_TABLE_SIZE,
    },
    maglev::is_prime,
    spec::{BackendSpec, ServiceSpec},
};

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub agent: AgentSettings,
    pub services: Vec<ServiceConfig>,
}

/// Load-time settings (they size maps and seed the hash, so they apply at agent start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentSettings {
    pub hash_seed: u32,
    /// Flows the conntrack table holds (two LRU entries each: both directions).
    pub conntrack_flows: u32,
    /// Slots in the shared lookup-table array.
    pub ring_slots: u32,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            hash_seed: DEFAULT_HASH_SEED,
            conntrack_flows: DEFAULT_CONNTRACK_ENTRIES,
            ring_slots: DEFAULT_RING_SLOTS,
        }
    }
}

/// One service and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub spec: ServiceSpec,
    pub table_size: u32,
    pub backends: Vec<BackendSpec>,
}

/// A config error: where, which field, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field path, e.g. `service[1].backends[0]`; empty for syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Checks a table size (a prime no larger than [`MAX_TABLE_SIZE`]).
///
/// # Errors
/// A message saying why the size is not acceptable.
pub fn check_table_size(n: u32) -> Result<(), String> {
    if n > MAX_TABLE_SIZE {
        return Err(format!(
            "table size {n} exceeds the maximum {MAX_TABLE_SIZE}"
        ));
    }
    if !is_prime(n) {
        return Err(format!(
            "table size {n} is not a prime (try 251, 4093, 65537)"
        ));
    }
    Ok(())
}

/// Checks a service the fast path can serve.
///
/// # Errors
/// A message naming the service and the problem.
pub fn check_service(s: &ServiceSpec) -> Result<(), String> {
    if s.vip.is_ipv6() {
        return Err(format!(
            "{s}: IPv6 services are not supported by the fast path yet"
        ));
    }
    Ok(())
}

/// Checks a backend for a service.
///
/// # Errors
/// A message naming the backend and the problem.
pub fn check_backend(s: &ServiceSpec, b: &BackendSpec) -> Result<(), String> {
    if s.vip.is_ipv4() != b.ip.is_ipv4() {
        return Err(format!(
            "backend {b} is not of the same address family as {s}"
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: Option<RawAgent>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    hash_seed: Option<u32>,
    conntrack_flows: Option<Spanned<u32>>,
    ring_slots: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    vip: Spanned<String>,
    #[serde(default)]
    backends: Vec<Spanned<String>>,
    table_size: Option<Spanned<u32>>,
}

/// Parses and validates a config file's text. `file` is only used in error messages.
///
/// # Errors
/// The first problem found, with file, line, column and field.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let err = |span: Range<usize>, field: String, message: String| {
        let (line, column) = line_col(text, span.start);
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            field,
            message,
        }
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        err(
            e.span().unwrap_or(0..0),
            String::new(),
            e.message().trim_end().to_owned(),
        )
    })?;

    let mut agent = AgentSettings::default();
    if let Some(a) = raw.agent {
        agent.hash_seed = a.hash_seed.unwrap_or(agent.hash_seed);
        if let Some(c) = a.conntrack_flows {
            if !(1..=1 << 27).contains(c.get_ref()) {
                return Err(err(
                    c.span(),
                    "agent.conntrack_flows".into(),
                    format!("{} is outside 1..=134217728", c.get_ref()),
                ));
            }
            agent.conntrack_flows = c.into_inner();
        }
        if let Some(r) = a.ring_slots {
            if !(1..=1 << 28).contains(r.get_ref()) {
                return Err(err(
                    r.span(),
                    "agent.ring_slots".into(),
                    format!("{} is outside 1..=268435456", r.get_ref()),
                ));
            }
            agent.ring_slots = r.into_inner();
        }
    }

    if raw.service.len() > MAX_SERVICES as usize {
        return Err(err(
            raw.service[MAX_SERVICES as usize].span(),
            format!("service[{MAX_SERVICES}]"),
            format!(
                "{} services exceed the capacity of {MAX_SERVICES}",
                raw.service.len()
            ),
        ));
    }
    let mut services = Vec::with_capacity(raw.service.len());
    let mut seen = BTreeSet::new();
    let mut slots: u64 = 0;
    let mut backends_total: usize = 0;
    for (i, s) in raw.service.into_iter().enumerate() {
        let s = s.into_inner();
        let field = |f: &str| format!("service[{i}].{f}");
        let spec: ServiceSpec = s
            .vip
            .get_ref()
            .parse()
            .map_err(|e: crate::spec::SpecError| err(s.vip.span(), field("vip"), e.0))?;
        check_service(&spec).map_err(|m| err(s.vip.span(), field("vip"), m))?;
        if !seen.insert(spec) {
            return Err(err(
                s.vip.span(),
                field("vip"),
                format!("{spec} is defined twice"),
            ));
        }
        let table_size = match &s.table_size {
            Some(t) => {
                check_table_size(*t.get_ref())
                    .map_err(|m| err(t.span(), field("table_size"), m))?;
                *t.get_ref()
            }
            None => DEFAULT_TABLE_SIZE,
        };
        slots += u64::from(table_size);
        if slots > u64::from(agent.ring_slots) {
            let span = s.table_size.as_ref().map_or(s.vip.span(), Spanned::span);
            return Err(err(
                span,
                field("table_size"),
                format!(
                    "the services' tables need {slots} slots, more than agent.ring_slots = {}",
                    agent.ring_slots
                ),
            ));
        }
        let mut bs = Vec::with_capacity(s.backends.len());
        let mut seen_b = BTreeSet::new();
        for (j, b) in s.backends.iter().enumerate() {
            let bf = field(&format!("backends[{j}]"));
            let spec_b: BackendSpec = b
                .get_ref()
                .parse()
                .map_err(|e: crate::spec::SpecError| err(b.span(), bf.clone(), e.0))?;
            check_backend(&spec, &spec_b).map_err(|m| err(b.span(), bf.clone(), m))?;
            if !seen_b.insert(spec_b.resolve(&spec)) {
                return Err(err(
                    b.span(),
                    bf,
                    format!("backend {} is listed twice", spec_b.resolve(&spec)),
                ));
            }
            bs.push(spec_b);
        }
        backends_total += bs.len();
        if backends_total >= MAX_BACKENDS as usize {
            return Err(err(
                s.vip.span(),
                field("backends"),
                format!("more than {} backends in total", MAX_BACKENDS - 1),
            ));
        }
        services.push(ServiceConfig {
            spec,
            table_size,
            backends: bs,
        });
    }
    Ok(Config { agent, services })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[agent]
hash_seed = 7

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12:8080"]

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11"]
table_size = 251
"#;

    #[test]
    fn parses_good_config() {
        let c = parse("lb.toml", GOOD).unwrap();
        assert_eq!(c.agent.hash_seed, 7);
        assert_eq!(c.agent.conntrack_flows, DEFAULT_CONNTRACK_ENTRIES);
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].table_size, DEFAULT_TABLE_SIZE);
        assert_eq!(c.services[1].table_size, 251);
        assert_eq!(c.services[0].backends[1].port, Some(8080));
        assert_eq!(parse("empty.toml", "").unwrap().services.len(), 0);
    }

    /// Each bad config gives an error with the right line and field, and a message that says
    /// what is wrong.
    #[test]
    fn errors_name_file_line_and_field() {
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "[[service]]\nvip = \"203.0.113.10:80/sctp\"\n",
                2,
                "service[0].vip",
                "only tcp and udp",
            ),
            (
                "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"nope\"]\n",
                3,
                "service[0].backends[1]",
                "not an address",
            ),
            (
                "[[service]]\nvip = \"203.0.113.10:80/tcp\"\ntable_size = 65536\n",
                3,
                "service[0].table_size",
                "not a prime",
            ),
            (
                "[[service]]\nvip = \"203.0.113.10:80/tcp\"\n[[service]]\nvip = \"203.0.113.10:80/tcp\"\n",
                4,
                "service[1].vip",
                "defined twice",
            ),
            (
                "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.11:80\"]\n",
                3,
                "service[0].backends[1]",
                "listed twice",
            ),
            (
                "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"2001:db8::1\"]\n",
                3,
                "service[0].backends[0]",
                "address family",
            ),
            (
                "[[service]]\nvip = \"[2001:db8::10]:80/tcp\"\n",
                2,
                "service[0].vip",
                "IPv6",
            ),
            (
                "[agent]\nring_slots = 100\n[[service]]\nvip = \"203.0.113.10:80/tcp\"\n",
                4,
                "service[0].table_size",
                "ring_slots",
            ),
            (
                "[agent]\nconntrack_flows = 0\n",
                2,
                "agent.conntrack_flows",
                "outside",
            ),
            (
                "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackend = []\n",
                3,
                "",
                "unknown field `backend`",
            ),
            ("[[service]\n", 1, "", ""),
            ("[[service]]\nbackends = []\n", 1, "", "missing field `vip`"),
        ];
        for (text, line, field, msg) in cases {
            let e = parse("bad.toml", text).expect_err(text);
            assert_eq!(
                (e.line, e.field.as_str()),
                (*line, *field),
                "{text:?} gave {e}"
            );
            assert!(
                e.message.contains(msg),
                "{text:?}: message {:?} lacks {msg:?}",
                e.message
            );
            assert!(
                e.to_string().starts_with(&format!("bad.toml:{line}:")),
                "{e}"
            );
        }
    }
}
