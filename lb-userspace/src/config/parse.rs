//! The config file's TOML: raw shapes, then [`parse`], which validates every field and reports
//! the first problem with file, line, column and field path.

use std::{collections::BTreeSet, fmt, ops::Range};

use lb_common::{
    consts::{MAX_BACKENDS, MAX_SERVICES},
    health::Thresholds,
};
use serde::Deserialize;
use toml::Spanned;

use super::{
    AclRuleConfig, AgentSettings, BackendConfig, Config, DEFAULT_WEIGHT, ForwardConfig,
    ServiceConfig, ServiceSettings, backend_is_vip, check_acl_rule, check_backend,
    check_floating_backend, check_forward, check_internal, check_pip, check_same_vip,
    check_service, check_settings, check_table_size, check_weight, default_timeout, stateless_pip,
    stateless_shared, table_too_small,
};
use crate::spec::{BackendSpec, Replies, ServiceSpec, SpecError, parse_action, parse_duration};

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
    #[serde(default)]
    outbound: Vec<Spanned<crate::outbound::OutboundRule>>,
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
    idle_timeout: Option<Spanned<String>>,
    tcp_reset: Option<Spanned<bool>>,
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
    tcp_close_timeout: Option<Spanned<u32>>,
    tcp_syn_timeout: Option<Spanned<u32>>,
    new_flow_rate: Option<Spanned<u32>>,
    encap_source4: Option<Spanned<String>>,
    encap_source6: Option<Spanned<String>>,
    gue_port: Option<Spanned<u16>>,
    announce_table: Option<Spanned<u32>>,
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
    replies: Option<Spanned<String>>,
    distribution: Option<Spanned<String>>,
    icmp_echo: Option<bool>,
    idle_timeout: Option<Spanned<String>>,
    tcp_reset: Option<Spanned<bool>>,
    floating_ip: Option<Spanned<String>>,
    probe_via: Option<Spanned<String>>,
}

/// `"192.0.2.11:80"` or `{ addr = "192.0.2.11:80", weight = 3, drained = false, admin = "up" }`.
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
        #[serde(default)]
        admin: Option<String>,
    },
}

/// Parses and validates a config file's text. `file` is only used in error messages.
///
/// # Errors
/// The first problem found, with file, line, column and field.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    parse_from(file, text, AgentSettings::default())
}

/// [`parse`] of the agent's state file, which holds no `[agent]` section: the config's
/// `agent` settings apply (the state file is used only with the config it was written under).
///
/// # Errors
/// As [`parse`].
pub fn parse_state(file: &str, text: &str, agent: AgentSettings) -> Result<Config, ConfigError> {
    parse_from(file, text, agent)
}

fn parse_from(file: &str, text: &str, base: AgentSettings) -> Result<Config, ConfigError> {
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
        let span = e.span().unwrap_or(0..0);
        let field = field_at(text, span.start);
        err(span, field, type_message(e.message().trim_end()))
    })?;

    let mut agent = base;
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
            (
                "agent.tcp_close_timeout",
                &a.tcp_close_timeout,
                &mut agent.tcp_close_timeout_s,
                3600,
            ),
            (
                "agent.tcp_syn_timeout",
                &a.tcp_syn_timeout,
                &mut agent.tcp_syn_timeout_s,
                3600,
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
        if let Some(v) = &a.new_flow_rate {
            // 0 is allowed here: it turns the guard off.
            if *v.get_ref() > 100_000_000 {
                return Err(err(
                    v.span(),
                    "agent.new_flow_rate".into(),
                    format!("{} is outside 0..=100000000 (0: no limit)", v.get_ref()),
                ));
            }
            agent.new_flow_rate = *v.get_ref();
        }
        if let Some(v) = &a.encap_source4 {
            let ip: std::net::Ipv4Addr = v.get_ref().parse().map_err(|_| {
                err(
                    v.span(),
                    "agent.encap_source4".into(),
                    format!("{:?} is not an IPv4 address", v.get_ref()),
                )
            })?;
            crate::spec::check_unicast(ip.into())
                .map_err(|m| err(v.span(), "agent.encap_source4".into(), m))?;
            agent.encap_source4 = Some(ip);
        }
        if let Some(v) = &a.encap_source6 {
            let ip: std::net::Ipv6Addr = v.get_ref().parse().map_err(|_| {
                err(
                    v.span(),
                    "agent.encap_source6".into(),
                    format!("{:?} is not an IPv6 address", v.get_ref()),
                )
            })?;
            crate::spec::check_unicast(ip.into())
                .map_err(|m| err(v.span(), "agent.encap_source6".into(), m))?;
            agent.encap_source6 = Some(ip);
        }
        if let Some(v) = &a.gue_port {
            if *v.get_ref() == 0 {
                return Err(err(
                    v.span(),
                    "agent.gue_port".into(),
                    "0 is not a port".into(),
                ));
            }
            agent.gue_port = *v.get_ref();
        }
        if let Some(v) = &a.announce_table {
            let t = *v.get_ref();
            let taken = match t {
                253 => Some("the kernel's default table"),
                254 => Some("the kernel's main table"),
                255 => Some("the kernel's local table"),
                lb_common::encap::probe::TABLE => Some("the tunnel probes' table"),
                _ => None,
            };
            if let Some(what) = taken {
                return Err(err(
                    v.span(),
                    "agent.announce_table".into(),
                    format!("{t} is {what}: give the announcements a table of their own (0: none)"),
                ));
            }
            agent.announce_table = t;
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
    // Where each service's `replies` is (its `vip` when not given), and its `vip` and each of
    // its backends, for the cross-checks.
    let mut raw_spans = Vec::with_capacity(raw.service.len());
    let mut addr_spans = Vec::with_capacity(raw.service.len());
    for (i, s) in raw.service.into_iter().enumerate() {
        let s = s.into_inner();
        raw_spans.push(s.replies.as_ref().map_or(s.vip.span(), Spanned::span));
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
        if let Some(d) = &s.distribution {
            settings.distribution = d
                .get_ref()
                .parse()
                .map_err(|e: SpecError| err(d.span(), field("distribution"), e.0))?;
        }
        if let Some(r) = &s.replies {
            settings.replies = r
                .get_ref()
                .parse()
                .map_err(|e: SpecError| err(r.span(), field("replies"), e.0))?;
        }
        if let Some(f) = &s.floating_ip {
            settings.floating_ip = f
                .get_ref()
                .parse()
                .map_err(|e: SpecError| err(f.span(), field("floating_ip"), e.0))?;
            agent
                .check_encap(&spec, &settings)
                .map_err(|m| err(f.span(), field("floating_ip"), m))?;
        }
        if let Some(v) = &s.probe_via {
            settings.probe_via = v
                .get_ref()
                .parse()
                .map_err(|e: SpecError| err(v.span(), field("probe_via"), e.0))?;
        }
        settings.icmp_echo = s.icmp_echo.unwrap_or(true);
        (settings.idle_timeout, settings.tcp_reset) = parse_lifetime(
            &spec,
            s.idle_timeout.as_ref(),
            s.tcp_reset.as_ref(),
            &field,
            &err,
        )?;
        check_settings(&settings).map_err(|m| err(s.vip.span(), field("settings"), m))?;
        crate::config::check_ha(&spec, &settings)
            .map_err(|m| err(s.vip.span(), field("vip"), m))?;
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
            let (addr, weight, drained, admin) = match b.get_ref() {
                RawBackend::Plain(a) => (a, DEFAULT_WEIGHT, false, None),
                RawBackend::Full {
                    addr,
                    weight,
                    drained,
                    admin,
                } => (
                    addr,
                    weight.unwrap_or(DEFAULT_WEIGHT),
                    *drained,
                    admin.as_ref(),
                ),
            };
            let admin = match admin {
                Some(a) => a
                    .parse()
                    .map_err(|e: SpecError| err(b.span(), bf.clone(), e.0))?,
                None => crate::spec::Admin::None,
            };
            let spec_b: BackendSpec = addr
                .parse()
                .map_err(|e: SpecError| err(b.span(), bf.clone(), e.0))?;
            check_backend(&spec, &spec_b).map_err(|m| err(b.span(), bf.clone(), m))?;
            check_floating_backend(&spec, &settings, &spec_b)
                .map_err(|m| err(b.span(), bf.clone(), m))?;
            check_weight(weight).map_err(|m| err(b.span(), bf.clone(), m))?;
            let at = spec_b.resolve(&spec);
            if !seen_b.insert(at) {
                return Err(err(b.span(), bf, format!("backend {at} is listed twice")));
            }
            bs.push(BackendConfig {
                spec: spec_b,
                weight,
                drained,
                admin,
            });
        }
        if bs.len() > settings.table_size as usize {
            let span = s.table_size.as_ref().map_or(s.vip.span(), Spanned::span);
            return Err(err(
                span,
                field("table_size"),
                table_too_small(settings.table_size, bs.len()),
            ));
        }
        addr_spans.push((
            s.vip.span(),
            s.backends.iter().map(Spanned::span).collect::<Vec<_>>(),
        ));
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
    let mut forward_spans = Vec::with_capacity(raw.forward.len());
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
        let (idle_timeout, tcp_reset) = parse_lifetime(
            &spec,
            f.idle_timeout.as_ref(),
            f.tcp_reset.as_ref(),
            &field,
            &err,
        )?;
        forward_spans.push(f.to.span());
        forwards.push(ForwardConfig {
            spec,
            to,
            acl,
            idle_timeout,
            tcp_reset,
        });
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
    if pips.len() > lb_common::consts::MAX_PIPS as usize {
        return Err(err(
            0..0,
            "pip".into(),
            format!("more than {} PIPs", lb_common::consts::MAX_PIPS),
        ));
    }
    check_stateless(&raw_spans, &services, &forwards, &pips, &err)?;
    check_addresses(&addr_spans, &forward_spans, &services, &forwards, &err)?;
    let mut outbound = Vec::with_capacity(raw.outbound.len());
    let mut out_spans = Vec::with_capacity(raw.outbound.len());
    for (i, r) in raw.outbound.into_iter().enumerate() {
        let span = r.span();
        let r = r.into_inner();
        crate::outbound::check_rule(&r)
            .map_err(|m| err(span.clone(), format!("outbound[{i}]"), m))?;
        if outbound
            .iter()
            .any(|o: &crate::outbound::OutboundRule| o.name == r.name)
        {
            return Err(err(
                span,
                format!("outbound[{i}].name"),
                format!("rule {} is defined twice", r.name),
            ));
        }
        out_spans.push(span);
        outbound.push(r);
    }
    let config = Config {
        agent,
        services,
        forwards,
        pips,
        outbound,
    };
    if let Err(e) = crate::outbound::check_all(&crate::state::State::from_config(&config)) {
        // The later of the rules at fault, in the file's order: where the conflict shows.
        let at = |n: &String| config.outbound.iter().position(|r| r.name == *n);
        let i = at(&e.rule).max(e.other.as_ref().and_then(at)).unwrap_or(0);
        return Err(err(
            out_spans.get(i).cloned().unwrap_or(0..0),
            format!("outbound[{i}]"),
            e.message,
        ));
    }
    Ok(config)
}

type ErrAt<'a> = dyn Fn(Range<usize>, String, String) -> ConfigError + 'a;

/// The field path of the value at byte `at` of a config text, for errors the TOML decoder
/// reports with a position only (a value of the wrong type, say): the table the position is in
/// (`service[1]`, counting `[[service]]` headers; `agent`) and the key of its line. Empty when
/// the position is in no `key = value` line.
fn field_at(text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for line in before.lines() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let n = counts.entry(name.trim().to_owned()).or_insert(0);
            table = format!("{}[{n}]", name.trim());
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            name.trim().clone_into(&mut table);
        }
    }
    let line = before.rsplit('\n').next().unwrap_or("");
    let Some((key, _)) = line.split_once('=') else {
        return String::new();
    };
    let key = key.trim();
    if key.is_empty() || key.contains(['{', '[', '"']) {
        return String::new();
    }
    if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    }
}

/// The TOML decoder's message for a value it cannot take, said in the config's terms.
fn type_message(m: &str) -> String {
    if m.contains("untagged enum RawBackend") {
        return "a backend is \"DIP[:PORT]\" or { addr = \"DIP[:PORT]\", weight = 0..=10000, \
                drained = true|false, admin = \"none|up|down\" }"
            .into();
    }
    m.replace("expected u32", "expected a whole number")
        .replace("expected u16", "expected a whole number")
        .replace("expected u64", "expected a whole number")
}

/// A VIP is an address of its own: no backend or forward target is a VIP, and no VIP is a
/// backend's. `spans[i]` locates service `i`'s `vip` and backends, `forward_spans[i]`
/// forward `i`'s `to`.
fn check_addresses(
    spans: &[(Range<usize>, Vec<Range<usize>>)],
    forward_spans: &[Range<usize>],
    services: &[ServiceConfig],
    forwards: &[ForwardConfig],
    err: &ErrAt<'_>,
) -> Result<(), ConfigError> {
    use std::collections::HashMap;
    let vips: HashMap<std::net::IpAddr, ServiceSpec> = services
        .iter()
        .map(|s| s.spec)
        .chain(forwards.iter().map(|f| f.spec))
        .map(|s| (s.vip.ip(), s))
        .collect();
    for (i, s) in services.iter().enumerate() {
        for (j, b) in s.backends.iter().enumerate() {
            if let Some(of) = vips.get(&b.spec.ip) {
                return Err(err(
                    spans[i].1[j].clone(),
                    format!("service[{i}].backends[{j}]"),
                    backend_is_vip(b.spec.ip, of),
                ));
            }
        }
    }
    for (i, f) in forwards.iter().enumerate() {
        if let Some(of) = vips.get(&f.to.ip()) {
            return Err(err(
                forward_spans[i].clone(),
                format!("forward[{i}].to"),
                backend_is_vip(f.to.ip(), of),
            ));
        }
    }
    // An HA-ports backend serves nothing else: each endpoint with where it is written.
    let mut endpoints = Vec::new();
    let mut at = Vec::new();
    for (i, s) in services.iter().enumerate() {
        for (j, b) in s.backends.iter().enumerate() {
            endpoints.push((s.spec, b.spec.ip));
            at.push((spans[i].1[j].clone(), format!("service[{i}].backends[{j}]")));
        }
    }
    for (i, f) in forwards.iter().enumerate() {
        endpoints.push((f.spec, f.to.ip()));
        at.push((forward_spans[i].clone(), format!("forward[{i}].to")));
    }
    if let Some((k, why)) = crate::config::ha_conflict(&endpoints) {
        let (span, field) = at.swap_remove(k);
        return Err(err(span, field, why));
    }
    Ok(())
}

/// `replies = "stateless"` only where it can be right: no backend of such a service is also a
/// backend (or forward target) of another service of its protocol, or has a PIP. `spans[i]`
/// locates service `i`'s `replies`.
fn check_stateless(
    spans: &[Range<usize>],
    services: &[ServiceConfig],
    forwards: &[ForwardConfig],
    pips: &[(std::net::IpAddr, std::net::IpAddr)],
    err: &ErrAt<'_>,
) -> Result<(), ConfigError> {
    use std::collections::HashMap;
    // Every backend endpoint, with the first two services it serves.
    let mut users: HashMap<(std::net::SocketAddr, u8), Vec<ServiceSpec>> = HashMap::new();
    let endpoints = services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.spec.resolve(&s.spec), s.spec)))
        .chain(forwards.iter().map(|f| (f.to, f.spec)));
    for (addr, spec) in endpoints {
        let u = users.entry((addr, spec.proto.number())).or_default();
        if u.len() < 2 {
            u.push(spec);
        }
    }
    let dips: std::collections::HashSet<_> = pips.iter().map(|(_, d)| *d).collect();
    for (i, s) in services.iter().enumerate() {
        if s.settings.replies != Replies::Stateless {
            continue;
        }
        let field = format!("service[{i}].replies");
        for b in &s.backends {
            let addr = b.spec.resolve(&s.spec);
            if dips.contains(&addr.ip()) {
                return Err(err(spans[i].clone(), field, stateless_pip(addr)));
            }
            let others = &users[&(addr, s.spec.proto.number())];
            if let Some(other) = others.iter().find(|o| **o != s.spec) {
                return Err(err(
                    spans[i].clone(),
                    field,
                    stateless_shared(addr, &s.spec, other),
                ));
            }
        }
    }
    Ok(())
}

/// An endpoint's `idle_timeout` and `tcp_reset` (a `[[service]]` or a `[[forward]]`), checked
/// against its protocol.
fn parse_lifetime(
    spec: &ServiceSpec,
    idle: Option<&Spanned<String>>,
    reset: Option<&Spanned<bool>>,
    field: &dyn Fn(&str) -> String,
    err: &dyn Fn(Range<usize>, String, String) -> ConfigError,
) -> Result<(Option<std::time::Duration>, bool), ConfigError> {
    let idle_timeout = idle
        .map(|d| parse_duration(d.get_ref()).map_err(|e| err(d.span(), field("idle_timeout"), e.0)))
        .transpose()?;
    let tcp_reset = reset.is_some_and(|r| *r.get_ref());
    if let Err(m) = crate::config::check_lifetime(spec, idle_timeout, false) {
        let span = idle.map_or(0..0, Spanned::span);
        return Err(err(span, field("idle_timeout"), m));
    }
    if let Err(m) = crate::config::check_lifetime(spec, None, tcp_reset) {
        let span = reset.map_or(0..0, Spanned::span);
        return Err(err(span, field("tcp_reset"), m));
    }
    Ok((idle_timeout, tcp_reset))
}

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
    use std::time::Duration;

    use lb_common::consts::DEFAULT_CONNTRACK_ENTRIES;
    use proptest::prelude::*;

    use super::*;
    use crate::spec::{Established, ProbeSpec, WhenAllDown};

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
        assert_eq!(
            u64::from(c.agent.new_flow_rate),
            lb_common::consts::DEFAULT_NEW_FLOW_RATE
        );
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
            (with("replies = \"never\"\n"), 3, "service[0].replies", "tracked stateless"),
            (with("distribution = \"round-robin\"\n"), 3, "service[0].distribution", "5-tuple source-ip source-ip-protocol"),
            (with("floating_ip = \"vxlan\"\n"), 3, "service[0].floating_ip", "off l2 ipip gue"),
            (with("floating_ip = \"gue\"\n"), 3, "service[0].floating_ip", "set agent.encap_source4"),
            ("[[service]]\nvip = \"[2001:db8:3::10]:80/tcp\"\nfloating_ip = \"ipip\"\n".into(), 3, "service[0].floating_ip", "set agent.encap_source6"),
            (with("floating_ip = \"l2\"\nreplies = \"stateless\"\n"), 2, "service[0].settings", "--replies stateless"),
            (with("floating_ip = \"l2\"\ntcp_reset = true\n"), 2, "service[0].settings", "--tcp-reset"),
            (with("probe_via = \"sideways\"\n"), 3, "service[0].probe_via", "direct tunnel"),
            (with("probe = \"tcp\"\nprobe_via = \"tunnel\"\n"), 2, "service[0].settings", "needs --floating-ip"),
            (with("floating_ip = \"l2\"\nprobe_via = \"tunnel\"\n"), 2, "service[0].settings", "needs a probe"),
            (with("floating_ip = \"l2\"\nbackends = [\"192.0.2.11:8080\"]\n"), 4, "service[0].backends[0]", "the VIP's own port 80"),
            ("[agent]\nencap_source4 = \"2001:db8::1\"\n".into(), 2, "agent.encap_source4", "not an IPv4 address"),
            ("[agent]\nannounce_table = 254\n".into(), 2, "agent.announce_table", "254 is the kernel's main table"),
            ("[agent]\nannounce_table = 19522\n".into(), 2, "agent.announce_table", "the tunnel probes' table"),
            ("[agent]\nencap_source6 = \"ff02::1\"\n".into(), 2, "agent.encap_source6", "not a unicast address"),
            ("[agent]\ngue_port = 0\n".into(), 2, "agent.gue_port", "not a port"),
            (with("idle_timeout = \"1s\"\n"), 3, "service[0].idle_timeout", "whole seconds within 2s..=120m"),
            (with("idle_timeout = \"forever\"\n"), 3, "service[0].idle_timeout", "a duration needs a unit"),
            ("[[service]]\nvip = \"203.0.113.10:53/udp\"\ntcp_reset = true\n".into(), 3, "service[0].tcp_reset", "applies to TCP endpoints"),
            ("[[forward]]\nvip = \"203.0.113.10:53/udp\"\nto = \"192.0.2.11:53\"\ntcp_reset = true\n".into(), 4, "forward[0].tcp_reset", "applies to TCP endpoints"),
            (with("table_size = 2\nbackends = [\"192.0.2.11\", \"192.0.2.12\", \"192.0.2.13\"]\n"), 3, "service[0].table_size", "smaller than the service's 3 backends"),
            (format!("{svc}backends = [\"203.0.113.11\"]\n[[service]]\nvip = \"203.0.113.11:80/tcp\"\n"), 3, "service[0].backends[0]", "is the VIP of 203.0.113.11:80/tcp"),
            (format!("{svc}[[forward]]\nvip = \"203.0.113.12:22/tcp\"\nto = \"203.0.113.10:22\"\n"), 5, "forward[0].to", "is the VIP of"),
            (with("table_size = \"65537\"\n"), 3, "service[0].table_size", "expected a whole number"),
            (with("backends = [{ addr = \"192.0.2.11\", weight = -3 }]\n"), 3, "service[0].backends", "a backend is \"DIP[:PORT]\" or {"),
            (with("probe = \"tcp\"\nprobe_interval = \"15 seconds\"\n"), 4, "service[0].probe_interval", "is not a duration: a whole number and its unit"),
            (with("backends = [{ addr = \"192.0.2.11\", admin = \"maybe\" }]\n"), 3, "service[0].backends[0]", "admin state must be one of: none up down"),
            (format!("{svc}internal = [\"198.51.100.0/26\"]\nhairpin = \"snat\"\nreplies = \"stateless\"\n"), 2, "service[0].settings", "--hairpin snat"),
            (format!("{svc}backends = [\"192.0.2.11\"]\nreplies = \"stateless\"\n[[service]]\nvip = \"203.0.113.11:80/tcp\"\nbackends = [\"192.0.2.11\"]\n"), 4, "service[0].replies", "cannot also serve 203.0.113.11:80/tcp"),
            (format!("[[service]]\nvip = \"203.0.113.11:80/tcp\"\nbackends = [\"192.0.2.11:80\"]\n{svc}backends = [\"192.0.2.11\"]\nreplies = \"stateless\"\n"), 7, "service[1].replies", "cannot also serve 203.0.113.11:80/tcp"),
            (format!("{svc}backends = [\"192.0.2.11\"]\nreplies = \"stateless\"\n[[forward]]\nvip = \"203.0.113.12:80/tcp\"\nto = \"192.0.2.11:80\"\n"), 4, "service[0].replies", "cannot also serve 203.0.113.12:80/tcp"),
            (format!("{svc}backends = [\"192.0.2.11\"]\nreplies = \"stateless\"\n[[pip]]\npip = \"203.0.113.50\"\ndip = \"192.0.2.11\"\n"), 4, "service[0].replies", "has a PIP"),
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
                "\"nope\" is not an IPv4 or IPv6 address",
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
                "[[service]]\nvip = \"[fe80::10]:80/tcp\"\n".into(),
                2,
                "service[0].vip",
                "global or unique-local",
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
