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

use std::{collections::BTreeSet, fmt, ops::Range, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use crate::{
    acl::Action,
    consts::{
        DEFAULT_CONNTRACK_ENTRIES, DEFAULT_HASH_SEED, DEFAULT_RING_SLOTS, DEFAULT_TABLE_SIZE,
        MAX_BACKENDS, MAX_SERVICES, MAX_TABLE_SIZE,
    },
    health::{self, Thresholds},
    maglev::is_prime,
    spec::{
        BackendSpec, Established, Hairpin, ProbeSpec, ServiceSpec, SpecError, WhenAllDown,
        parse_duration,
    },
};

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub agent: AgentSettings,
    pub services: Vec<ServiceConfig>,
    pub forwards: Vec<ForwardConfig>,
    /// Instance-level public IPs: PIP → instance address.
    pub pips: Vec<(std::net::IpAddr, std::net::IpAddr)>,
}

/// Checks a PIP mapping: unicast IPv4 addresses (the fast path is IPv4), not the same address.
///
/// # Errors
/// A message naming the problem.
pub fn check_pip(pip: std::net::IpAddr, dip: std::net::IpAddr) -> Result<(), String> {
    for (what, a) in [("PIP", pip), ("instance", dip)] {
        let std::net::IpAddr::V4(v4) = a else {
            return Err(format!(
                "{what} {a}: IPv6 is not supported by the fast path yet"
            ));
        };
        if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback() {
            return Err(format!("{what} {a} is not a unicast address"));
        }
    }
    if pip == dip {
        return Err(format!("PIP {pip} cannot map to itself"));
    }
    Ok(())
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
    pub settings: ServiceSettings,
    pub backends: Vec<BackendConfig>,
    pub acl: Vec<AclRuleConfig>,
}

/// One endpoint ACL rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclRuleConfig {
    pub order: u32,
    pub action: Action,
    pub prefix: (std::net::IpAddr, u8),
    pub description: String,
}

/// Checks an ACL rule for an endpoint: the prefix's family, the description.
///
/// # Errors
/// A message naming the problem.
pub fn check_acl_rule(
    s: &ServiceSpec,
    prefix: (std::net::IpAddr, u8),
    description: &str,
) -> Result<(), String> {
    if prefix.0.is_ipv4() != s.vip.is_ipv4() {
        return Err(format!(
            "prefix {}/{} is not of the same address family as {s}",
            prefix.0, prefix.1
        ));
    }
    if description.len() > 256 || description.chars().any(char::is_control) {
        return Err(
            "the description must be at most 256 characters without control characters".into(),
        );
    }
    Ok(())
}

/// Parses an ACL action word.
///
/// # Errors
/// Neither `permit` nor `deny`.
pub fn parse_action(s: &str) -> Result<Action, String> {
    match s {
        "permit" => Ok(Action::Permit),
        "deny" => Ok(Action::Deny),
        _ => Err(format!("{s:?}: the action must be permit or deny")),
    }
}

/// A port-forward endpoint: one VIP port to one backend's port (e.g. SSH to one VM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardConfig {
    pub spec: ServiceSpec,
    pub to: std::net::SocketAddr,
    pub acl: Vec<AclRuleConfig>,
}

/// Checks a port forward's target: an explicit port, the service's address family.
///
/// # Errors
/// A message naming the target and the problem.
pub fn check_forward(s: &ServiceSpec, to: &BackendSpec) -> Result<std::net::SocketAddr, String> {
    check_backend(s, to)?;
    let port = to
        .port
        .ok_or_else(|| format!("forward target {to} needs a port (DIP:PORT)"))?;
    Ok(std::net::SocketAddr::new(to.ip, port))
}

/// A backend with its weight and drain flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    pub spec: BackendSpec,
    pub weight: u32,
    pub drained: bool,
}

/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Default backend weight.
pub const DEFAULT_WEIGHT: u32 = 1;

/// Per-service settings: table size, health probe, and the policies around health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSettings {
    pub table_size: u32,
    /// `None`: no probe, backends are always healthy.
    pub probe: Option<ProbeSpec>,
    pub interval: Duration,
    pub timeout: Duration,
    pub thresholds: Thresholds,
    pub when_all_down: WhenAllDown,
    pub established: Established,
    /// Internal VIP: the only source prefixes it answers (empty: a public VIP). A property of
    /// the VIP address: all its services must agree.
    pub internal: Vec<(std::net::IpAddr, u8)>,
    pub hairpin: Hairpin,
    /// The LB answers ICMP echo requests to the VIP (rate-limited). A property of the VIP
    /// address, like `internal`.
    pub icmp_echo: bool,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            table_size: DEFAULT_TABLE_SIZE,
            probe: None,
            interval: health::DEFAULT_INTERVAL,
            timeout: health::DEFAULT_TIMEOUT,
            thresholds: Thresholds::default(),
            when_all_down: WhenAllDown::Drop,
            established: Established::Keep,
            internal: Vec::new(),
            hairpin: Hairpin::Drop,
            icmp_echo: true,
        }
    }
}

/// Checks a service's settings; the message names the setting (as the CLI spells it).
///
/// # Errors
/// The first setting that is out of range.
pub fn check_settings(s: &ServiceSettings) -> Result<(), String> {
    if s.hairpin == Hairpin::Snat && s.internal.is_empty() {
        return Err("--hairpin snat applies to internal VIPs only (give --internal PREFIX)".into());
    }
    check_table_size(s.table_size).map_err(|m| format!("--table-size: {m}"))?;
    if !(Duration::from_millis(50)..=Duration::from_secs(3600)).contains(&s.interval) {
        return Err(format!(
            "--probe-interval {:?} is outside 50ms..=60m",
            s.interval
        ));
    }
    if s.timeout < Duration::from_millis(10) || s.timeout > s.interval {
        return Err(format!(
            "--probe-timeout {:?} must be at least 10ms and at most the interval ({:?})",
            s.timeout, s.interval
        ));
    }
    for (name, v) in [
        ("--unhealthy-after", s.thresholds.unhealthy_after),
        ("--healthy-after", s.thresholds.healthy_after),
    ] {
        if !(1..=100).contains(&v) {
            return Err(format!("{name} {v} is outside 1..=100"));
        }
    }
    Ok(())
}

/// The probe timeout when none is given: 5 s, or the interval if that is shorter.
#[must_use]
pub fn default_timeout(interval: Duration) -> Duration {
    health::DEFAULT_TIMEOUT.min(interval)
}

/// Checks an internal VIP's prefixes against its address family.
///
/// # Errors
/// A prefix of the other family.
pub fn check_internal(s: &ServiceSpec, internal: &[(std::net::IpAddr, u8)]) -> Result<(), String> {
    for (ip, len) in internal {
        if ip.is_ipv4() != s.vip.is_ipv4() {
            return Err(format!(
                "--internal {ip}/{len} is not of the same address family as {s}"
            ));
        }
    }
    Ok(())
}

/// Parses `--internal`: comma-separated prefixes.
///
/// # Errors
/// A prefix that does not parse.
pub fn parse_internal(s: &str) -> Result<Vec<(std::net::IpAddr, u8)>, String> {
    s.split(',')
        .map(|p| crate::spec::parse_prefix(p.trim()).map_err(|e| format!("--internal: {e}")))
        .collect()
}

/// Prefixes as `a/len, b/len` (`none` when empty).
#[must_use]
pub fn format_prefixes(p: &[(std::net::IpAddr, u8)]) -> String {
    if p.is_empty() {
        return "none".into();
    }
    p.iter()
        .map(|(ip, l)| format!("{ip}/{l}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that a new service agrees with `other`, a service on the same VIP address, on the
/// settings that belong to the address: `internal`, `hairpin` and `icmp_echo`.
///
/// # Errors
/// The setting that differs (config spelling) and a message.
pub fn check_same_vip(
    s: &ServiceSettings,
    other: &ServiceSpec,
    o: &ServiceSettings,
) -> Result<(), (&'static str, String)> {
    let ip = other.vip.ip();
    if o.internal != s.internal {
        let has = format_prefixes(&o.internal);
        return Err((
            "internal",
            format!(
                "all services of VIP {ip} must have the same internal prefixes ({other} has {has})"
            ),
        ));
    }
    if o.hairpin != s.hairpin {
        return Err((
            "hairpin",
            format!(
                "all services of VIP {ip} must have the same hairpin mode ({other} has {})",
                o.hairpin
            ),
        ));
    }
    if o.icmp_echo != s.icmp_echo {
        let has = if o.icmp_echo { "on" } else { "off" };
        return Err((
            "icmp_echo",
            format!("all services of VIP {ip} must have the same icmp_echo ({other} has {has})"),
        ));
    }
    Ok(())
}

/// Checks a backend weight.
///
/// # Errors
/// Above [`MAX_WEIGHT`].
pub fn check_weight(w: u32) -> Result<(), String> {
    if w > MAX_WEIGHT {
        return Err(format!("weight {w} is above the maximum {MAX_WEIGHT}"));
    }
    Ok(())
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
    #[serde(default)]
    forward: Vec<Spanned<RawForward>>,
    #[serde(default)]
    pip: Vec<Spanned<RawPip>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPip {
    pip: Spanned<String>,
    dip: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    vip: Spanned<String>,
    to: Spanned<String>,
    #[serde(default)]
    acl: Vec<Spanned<RawAcl>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcl {
    order: u32,
    action: String,
    prefix: String,
    #[serde(default)]
    description: String,
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
    backends: Vec<Spanned<RawBackend>>,
    table_size: Option<Spanned<u32>>,
    probe: Option<Spanned<String>>,
    probe_interval: Option<Spanned<String>>,
    probe_timeout: Option<Spanned<String>>,
    unhealthy_after: Option<u32>,
    healthy_after: Option<u32>,
    when_all_down: Option<Spanned<String>>,
    established: Option<Spanned<String>>,
    #[serde(default)]
    acl: Vec<Spanned<RawAcl>>,
    #[serde(default)]
    internal: Vec<Spanned<String>>,
    hairpin: Option<Spanned<String>>,
    icmp_echo: Option<bool>,
}

/// `"192.0.2.11:80"` or `{ addr = "192.0.2.11:80", weight = 3, drained = false }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawBackend {
    Plain(String),
    Full {
        addr: String,
        #[serde(default)]
        weight: Option<u32>,
        #[serde(default)]
        drained: bool,
    },
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
        for (name, v, slot, max) in [
            (
                "agent.conntrack_flows",
                &a.conntrack_flows,
                &mut agent.conntrack_flows,
                1u32 << 27,
            ),
            (
                "agent.ring_slots",
                &a.ring_slots,
                &mut agent.ring_slots,
                1 << 28,
            ),
        ] {
            if let Some(v) = v {
                if !(1..=max).contains(v.get_ref()) {
                    return Err(err(
                        v.span(),
                        name.into(),
                        format!("{} is outside 1..={max}", v.get_ref()),
                    ));
                }
                *slot = *v.get_ref();
            }
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
        let spec = endpoint_vip(&s.vip, &field("vip"), &mut seen, &err)?;

        let mut settings = ServiceSettings::default();
        if let Some(t) = &s.table_size {
            check_table_size(*t.get_ref()).map_err(|m| err(t.span(), field("table_size"), m))?;
            settings.table_size = *t.get_ref();
        }
        if let Some(p) = &s.probe {
            settings.probe = Some(
                p.get_ref()
                    .parse()
                    .map_err(|e: SpecError| err(p.span(), field("probe"), e.0))?,
            );
        }
        for (name, v, slot) in [
            ("probe_interval", &s.probe_interval, &mut settings.interval),
            ("probe_timeout", &s.probe_timeout, &mut settings.timeout),
        ] {
            if let Some(d) = v {
                *slot = parse_duration(d.get_ref()).map_err(|e| err(d.span(), field(name), e.0))?;
            }
        }
        if s.probe_timeout.is_none() {
            settings.timeout = default_timeout(settings.interval);
        }
        settings.thresholds = Thresholds {
            unhealthy_after: s
                .unhealthy_after
                .unwrap_or(settings.thresholds.unhealthy_after),
            healthy_after: s.healthy_after.unwrap_or(settings.thresholds.healthy_after),
        };
        if let Some(w) = &s.when_all_down {
            settings.when_all_down = w
                .get_ref()
                .parse()
                .map_err(|e: SpecError| err(w.span(), field("when_all_down"), e.0))?;
        }
        if let Some(w) = &s.established {
            settings.established = w
                .get_ref()
                .parse()
                .map_err(|e: SpecError| err(w.span(), field("established"), e.0))?;
        }
        for (k, p) in s.internal.iter().enumerate() {
            let prefix = crate::spec::parse_prefix(p.get_ref())
                .map_err(|e| err(p.span(), field(&format!("internal[{k}]")), e.0))?;
            settings.internal.push(prefix);
        }
        check_internal(&spec, &settings.internal)
            .map_err(|m| err(s.vip.span(), field("internal"), m))?;
        if let Some(h) = &s.hairpin {
            settings.hairpin = h
                .get_ref()
                .parse()
                .map_err(|e: SpecError| err(h.span(), field("hairpin"), e.0))?;
        }
        settings.icmp_echo = s.icmp_echo.unwrap_or(true);
        check_settings(&settings).map_err(|m| err(s.vip.span(), field("settings"), m))?;
        // VIP-level settings (internal, icmp_echo): the services of one address must agree.
        if let Some(other) = services
            .iter()
            .find(|o: &&ServiceConfig| o.spec.vip.ip() == spec.vip.ip())
        {
            check_same_vip(&settings, &other.spec, &other.settings)
                .map_err(|(f, m)| err(s.vip.span(), field(f), m))?;
        }

        slots += u64::from(settings.table_size);
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
            let (addr, weight, drained) = match b.get_ref() {
                RawBackend::Plain(a) => (a, DEFAULT_WEIGHT, false),
                RawBackend::Full {
                    addr,
                    weight,
                    drained,
                } => (addr, weight.unwrap_or(DEFAULT_WEIGHT), *drained),
            };
            let spec_b: BackendSpec = addr
                .parse()
                .map_err(|e: SpecError| err(b.span(), bf.clone(), e.0))?;
            check_backend(&spec, &spec_b).map_err(|m| err(b.span(), bf.clone(), m))?;
            check_weight(weight).map_err(|m| err(b.span(), bf.clone(), m))?;
            let at = spec_b.resolve(&spec);
            if !seen_b.insert(at) {
                return Err(err(b.span(), bf, format!("backend {at} is listed twice")));
            }
            bs.push(BackendConfig {
                spec: spec_b,
                weight,
                drained,
            });
        }
        backends_total += bs.len();
        if backends_total >= MAX_BACKENDS as usize {
            return Err(err(
                s.vip.span(),
                field("backends"),
                format!("more than {} backends in total", MAX_BACKENDS - 1),
            ));
        }
        let acl = parse_acl(&spec, &s.acl, &|f| field(f), &err)?;
        services.push(ServiceConfig {
            spec,
            settings,
            backends: bs,
            acl,
        });
    }
    let mut forwards = Vec::with_capacity(raw.forward.len());
    for (i, f) in raw.forward.into_iter().enumerate() {
        let f = f.into_inner();
        let field = |x: &str| format!("forward[{i}].{x}");
        let spec = endpoint_vip(&f.vip, &field("vip"), &mut seen, &err)?;
        let to: BackendSpec =
            f.to.get_ref()
                .parse()
                .map_err(|e: SpecError| err(f.to.span(), field("to"), e.0))?;
        let to = check_forward(&spec, &to).map_err(|m| err(f.to.span(), field("to"), m))?;
        // One table slot, plus one while it changes.
        slots += 1;
        backends_total += 1;
        if slots > u64::from(agent.ring_slots) || backends_total >= MAX_BACKENDS as usize {
            return Err(err(
                f.vip.span(),
                field("vip"),
                "the forwards exceed agent.ring_slots or the backend map".into(),
            ));
        }
        let acl = parse_acl(&spec, &f.acl, &|x| field(x), &err)?;
        forwards.push(ForwardConfig { spec, to, acl });
    }
    if services.len() + forwards.len() > MAX_SERVICES as usize {
        return Err(err(
            0..0,
            "forward".into(),
            format!("more than {MAX_SERVICES} services and forwards"),
        ));
    }
    let mut pips: Vec<(std::net::IpAddr, std::net::IpAddr)> = Vec::with_capacity(raw.pip.len());
    for (i, p) in raw.pip.into_iter().enumerate() {
        let p = p.into_inner();
        let field = |x: &str| format!("pip[{i}].{x}");
        let addr = |v: &Spanned<String>, f: &str| -> Result<std::net::IpAddr, ConfigError> {
            v.get_ref().parse().map_err(|_| {
                err(
                    v.span(),
                    field(f),
                    format!("{:?} is not an address", v.get_ref()),
                )
            })
        };
        let (pip, dip) = (addr(&p.pip, "pip")?, addr(&p.dip, "dip")?);
        check_pip(pip, dip).map_err(|m| err(p.pip.span(), field("pip"), m))?;
        if seen.iter().any(|s| s.vip.ip() == pip) {
            return Err(err(
                p.pip.span(),
                field("pip"),
                format!("{pip} is a VIP; a PIP must be an address of its own"),
            ));
        }
        if pips.iter().any(|(a, b)| *a == pip || *b == dip) {
            return Err(err(
                p.pip.span(),
                field("pip"),
                format!("{pip} → {dip}: a PIP maps 1:1 and this address is already used"),
            ));
        }
        pips.push((pip, dip));
    }
    if pips.len() > crate::consts::MAX_PIPS as usize {
        return Err(err(
            0..0,
            "pip".into(),
            format!("more than {} PIPs", crate::consts::MAX_PIPS),
        ));
    }
    Ok(Config {
        agent,
        services,
        forwards,
        pips,
    })
}

type ErrAt<'a> = dyn Fn(Range<usize>, String, String) -> ConfigError + 'a;

/// An endpoint's `vip` (a `[[service]]` or a `[[forward]]`): parsed, servable by the fast path,
/// and not defined twice across both kinds.
fn endpoint_vip(
    vip: &Spanned<String>,
    field: &str,
    seen: &mut BTreeSet<ServiceSpec>,
    err: &ErrAt<'_>,
) -> Result<ServiceSpec, ConfigError> {
    let spec: ServiceSpec = vip
        .get_ref()
        .parse()
        .map_err(|e: SpecError| err(vip.span(), field.to_owned(), e.0))?;
    check_service(&spec).map_err(|m| err(vip.span(), field.to_owned(), m))?;
    if !seen.insert(spec) {
        return Err(err(
            vip.span(),
            field.to_owned(),
            format!("{spec} is defined twice"),
        ));
    }
    Ok(spec)
}

fn parse_acl(
    spec: &ServiceSpec,
    raw: &[Spanned<RawAcl>],
    field: &dyn Fn(&str) -> String,
    err: &ErrAt<'_>,
) -> Result<Vec<AclRuleConfig>, ConfigError> {
    let mut out: Vec<AclRuleConfig> = Vec::with_capacity(raw.len());
    for (k, r) in raw.iter().enumerate() {
        let f = field(&format!("acl[{k}]"));
        let span = r.span();
        let r = r.get_ref();
        let action = parse_action(&r.action).map_err(|m| err(span.clone(), f.clone(), m))?;
        let prefix =
            crate::spec::parse_prefix(&r.prefix).map_err(|e| err(span.clone(), f.clone(), e.0))?;
        check_acl_rule(spec, prefix, &r.description)
            .map_err(|m| err(span.clone(), f.clone(), m))?;
        if out.iter().any(|x| x.order == r.order) {
            return Err(err(span, f, format!("order {} is used twice", r.order)));
        }
        out.push(AclRuleConfig {
            order: r.order,
            action,
            prefix,
            description: r.description.clone(),
        });
    }
    Ok(out)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any text: a config, or an error that points into the text and says something.
        #[test]
        fn any_text_gives_a_config_or_a_located_error(text in "\\PC{0,300}") {
            if let Err(e) = parse("p.toml", &text) {
                prop_assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e:?}");
                prop_assert!(!e.message.trim().is_empty());
            }
        }

        /// A good config with bytes inserted and removed anywhere: the same.
        #[test]
        fn mutated_configs_give_a_config_or_a_located_error(
            at in 0..GOOD.len(),
            cut in 0usize..6,
            insert in "[ -~\\n]{0,6}",
        ) {
            let mut text = GOOD.to_owned();
            let end = (at + cut).min(text.len());
            text.replace_range(at..end, &insert);
            if let Err(e) = parse("p.toml", &text) {
                prop_assert!(e.line >= 1 && e.line <= text.lines().count() + 1, "{e:?}");
                prop_assert!(!e.message.trim().is_empty());
            }
        }
    }

    /// Deep nesting and huge values are errors, not a stack overflow or a wrap-around.
    #[test]
    fn hostile_shapes_are_errors() {
        let deep = format!("x = {}1{}\n", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse("p.toml", &deep).is_err());
        let huge =
            "[[service]]\nvip = \"203.0.113.10:80/tcp\"\ntable_size = 99999999999999999999\n";
        let e = parse("p.toml", huge).unwrap_err();
        assert_eq!(e.line, 3, "{e:?}");
        let long = format!("[[service]]\nvip = \"{}\"\n", "9".repeat(100_000));
        let e = parse("p.toml", &long).unwrap_err();
        assert!(e.field.contains("vip"), "{e:?}");
    }

    const GOOD: &str = r#"
[agent]
hash_seed = 7

[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", { addr = "192.0.2.12:8080", weight = 3, drained = true }]

[[service]]
vip = "203.0.113.10:53/udp"
backends = ["192.0.2.11"]
table_size = 251
probe = "http:8080/healthz"
probe_interval = "2s"
probe_timeout = "500ms"
unhealthy_after = 3
healthy_after = 2
when_all_down = "spread"
established = "rebalance"
"#;

    #[test]
    fn parses_good_config() {
        let c = parse("lb.toml", GOOD).unwrap();
        assert_eq!(c.agent.hash_seed, 7);
        assert_eq!(c.agent.conntrack_flows, DEFAULT_CONNTRACK_ENTRIES);
        assert_eq!(c.services.len(), 2);
        assert_eq!(
            c.services[0].settings,
            ServiceSettings::default(),
            "defaults, no probe"
        );
        assert_eq!(c.services[0].backends[1].spec.port, Some(8080));
        assert_eq!(
            (
                c.services[0].backends[1].weight,
                c.services[0].backends[1].drained
            ),
            (3, true)
        );
        assert_eq!(
            (
                c.services[0].backends[0].weight,
                c.services[0].backends[0].drained
            ),
            (1, false)
        );
        let s = &c.services[1].settings;
        assert_eq!(s.table_size, 251);
        assert_eq!(
            s.probe,
            Some(ProbeSpec::Http {
                port: Some(8080),
                path: "/healthz".into()
            })
        );
        assert_eq!(
            (s.interval, s.timeout),
            (Duration::from_secs(2), Duration::from_millis(500))
        );
        assert_eq!(
            s.thresholds,
            Thresholds {
                unhealthy_after: 3,
                healthy_after: 2
            }
        );
        assert_eq!(
            (s.when_all_down, s.established),
            (WhenAllDown::Spread, Established::Rebalance)
        );
        assert_eq!(parse("empty.toml", "").unwrap().services.len(), 0);
        let p = parse(
            "p.toml",
            "[[pip]]\npip = \"203.0.113.50\"\ndip = \"192.0.2.13\"\n",
        )
        .unwrap();
        assert_eq!(p.pips[0].1.to_string(), "192.0.2.13");
        let fw = parse(
            "f.toml",
            "[[forward]]\nvip = \"203.0.113.10:50001/tcp\"\nto = \"192.0.2.11:22\"\n",
        )
        .unwrap();
        assert_eq!(fw.forwards[0].to.to_string(), "192.0.2.11:22");
        // Without a timeout, a short interval shortens the default timeout with it.
        let short = parse(
            "s.toml",
            "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nprobe_interval = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(short.services[0].settings.timeout, Duration::from_secs(2));
    }

    /// Each bad config gives an error with the right line and field, and a message that says
    /// what is wrong.
    #[test]
    fn errors_name_file_line_and_field() {
        let svc = "[[service]]\nvip = \"203.0.113.10:80/tcp\"\n";
        let with = |extra: &str| format!("{svc}{extra}");
        let cases: Vec<(String, usize, &str, &str)> = vec![
            (format!("{svc}[[pip]]\npip = \"203.0.113.10\"\ndip = \"192.0.2.11\"\n"), 4, "pip[0].pip", "is a VIP"),
            ("[[pip]]\npip = \"203.0.113.50\"\ndip = \"192.0.2.11\"\n[[pip]]\npip = \"203.0.113.51\"\ndip = \"192.0.2.11\"\n".into(), 5, "pip[1].pip", "1:1"),
            ("[[pip]]\npip = \"203.0.113.50\"\ndip = \"nope\"\n".into(), 3, "pip[0].dip", "not an address"),
            (with("hairpin = \"snat\"\n"), 2, "service[0].settings", "internal VIPs only"),
            (format!("{svc}internal = [\"198.51.100.0/26\"]\nhairpin = \"snat\"\n[[service]]\nvip = \"203.0.113.10:53/udp\"\ninternal = [\"198.51.100.0/26\"]\n"), 6, "service[1].hairpin", "same hairpin mode"),
            (with("internal = [\"198.51.100.1/26\"]\n"), 3, "service[0].internal[0]", "host bits"),
            (format!("{svc}internal = [\"198.51.100.0/26\"]\n[[service]]\nvip = \"203.0.113.10:53/udp\"\n"), 5, "service[1].internal", "same internal prefixes"),
            (
                "[[service]]\nvip = \"203.0.113.10:80/sctp\"\n".into(),
                2,
                "service[0].vip",
                "only tcp and udp",
            ),
            (
                with("backends = [\"192.0.2.11\", \"nope\"]\n"),
                3,
                "service[0].backends[1]",
                "not an address",
            ),
            (
                with("table_size = 65536\n"),
                3,
                "service[0].table_size",
                "not a prime",
            ),
            (format!("{svc}{svc}"), 4, "service[1].vip", "defined twice"),
            (
                with("backends = [\"192.0.2.11\", \"192.0.2.11:80\"]\n"),
                3,
                "service[0].backends[1]",
                "listed twice",
            ),
            (
                with("backends = [\"2001:db8::1\"]\n"),
                3,
                "service[0].backends[0]",
                "address family",
            ),
            (
                "[[service]]\nvip = \"[2001:db8::10]:80/tcp\"\n".into(),
                2,
                "service[0].vip",
                "IPv6",
            ),
            (
                format!("[agent]\nring_slots = 100\n{svc}"),
                4,
                "service[0].table_size",
                "ring_slots",
            ),
            (
                "[agent]\nconntrack_flows = 0\n".into(),
                2,
                "agent.conntrack_flows",
                "outside",
            ),
            (with("backend = []\n"), 3, "", "unknown field `backend`"),
            ("[[service]\n".into(), 1, "", ""),
            (
                "[[service]]\nbackends = []\n".into(),
                1,
                "",
                "missing field `vip`",
            ),
            (
                with("probe = \"icmp\"\n"),
                3,
                "service[0].probe",
                "unknown probe kind",
            ),
            (
                with("probe_interval = \"15\"\n"),
                3,
                "service[0].probe_interval",
                "needs a unit",
            ),
            (
                with("probe_interval = \"1s\"\nprobe_timeout = \"2s\"\n"),
                2,
                "service[0].settings",
                "at most the interval",
            ),
            (
                with("unhealthy_after = 0\n"),
                2,
                "service[0].settings",
                "--unhealthy-after 0",
            ),
            (
                with("when_all_down = \"panic\"\n"),
                3,
                "service[0].when_all_down",
                "drop spread",
            ),
            (
                with("backends = [{ addr = \"192.0.2.11\", weight = 10001 }]\n"),
                3,
                "service[0].backends[0]",
                "above the maximum",
            ),
        ];
        for (text, line, field, msg) in &cases {
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
