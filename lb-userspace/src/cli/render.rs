//! Every word `lb` prints about an answer: tables, confirmations, JSON. The agent sends data.

use std::fmt::Write as _;

use super::Format;
use crate::{
    api::{BackendView, ExplainView, Response, XmitFailView},
    error::ErrorKind,
    spec::serde_action::action_word,
    state::Change,
};

/// Renders a response; `Err` carries the agent's refusal: its kind and message.
///
/// # Errors
/// The agent refused the request.
pub fn render(resp: &Response, format: Format) -> Result<String, (ErrorKind, String)> {
    if let Response::Error { kind, message } = resp {
        return Err((*kind, message.clone()));
    }
    if format == Format::Json {
        return Ok(serde_json::to_string_pretty(resp).unwrap_or_default());
    }
    let mut o = String::new();
    match resp {
        Response::Done(change) => o.push_str(&confirmation(change)),
        Response::Pips { pips } => {
            let _ = writeln!(o, "{:<18} {:<18} NEXT HOP", "PIP", "INSTANCE");
            for p in pips {
                let nh = p.next_hop.as_ref().map_or_else(
                    || "unresolved (FIB fallback)".to_owned(),
                    |n| format!("if {} → {}", n.ifindex, n.dmac),
                );
                let _ = writeln!(o, "{:<18} {:<18} {nh}", p.pip, p.dip);
            }
        }
        Response::Outbound { rules } => {
            for r in rules {
                let _ = writeln!(
                    o,
                    "{}  frontends {}  {} ports per backend  {} {}  inside {}  idle {} (tcp) {} (udp)",
                    r.name,
                    r.frontends.join(","),
                    r.ports_per_backend,
                    r.mode,
                    r.protocols.join(","),
                    if r.inside.is_empty() {
                        "-".into()
                    } else {
                        r.inside.join(",")
                    },
                    r.idle_timeout_tcp,
                    r.idle_timeout_udp,
                );
                let _ = writeln!(
                    o,
                    "  {:<16} {:<22} {:>8} {:>6} {:>8} {:>6}  NOTE",
                    "BACKEND", "BLOCK", "IN USE", "USED", "FLOWS", "PEAK"
                );
                for b in &r.backends {
                    let block = b.frontend.as_ref().map_or_else(
                        || "not placed yet".to_owned(),
                        |f| format!("{f}:{}-{}", b.first_port, b.last_port),
                    );
                    let note = b
                        .via_pip
                        .as_ref()
                        .map_or(String::new(), |p| format!("leaves through its PIP {p}"));
                    let _ = writeln!(
                        o,
                        "  {:<16} {:<22} {:>8} {:>5.0}% {:>8} {:>6}  {note}",
                        b.backend,
                        block,
                        b.ports_in_use,
                        percent(b.ports_in_use, r.ports_per_backend),
                        b.flows,
                        b.peak
                    );
                }
                for h in &r.held {
                    let _ = writeln!(
                        o,
                        "  held {h} (its backend left; freed once its flows are gone)"
                    );
                }
            }
        }
        Response::Acl(a) => {
            let _ = writeln!(
                o,
                "{}  ({} rules → {} LPM entries, {} new flows denied)",
                a.service,
                a.rules.len(),
                a.compiled_entries,
                a.drops
            );
            let _ = writeln!(
                o,
                "  {:>8}  {:<7} {:<20} DESCRIPTION",
                "ORDER", "ACTION", "PREFIX"
            );
            for r in &a.rules {
                let _ = writeln!(
                    o,
                    "  {:>8}  {:<7} {:<20} {}",
                    r.order, r.action, r.prefix, r.description
                );
            }
            let _ = writeln!(
                o,
                "  {:>8}  {:<7} {:<20} sources no rule matches",
                "default", a.default, ""
            );
        }
        Response::Error { .. } => {}
        Response::Vips { vips } => {
            let _ = writeln!(
                o,
                "{:<26} {:>4} {:>6} {:>9} {:<5} {:<28} {:<10} {:>10} {:>10}",
                "SERVICE",
                "ID",
                "TABLE",
                "IN/TOTAL",
                "MODE",
                "KIND / PROBE",
                "IDLE",
                "PACKETS",
                "NEW FLOWS"
            );
            for v in vips {
                let what = match &v.probe {
                    _ if v.kind != "balanced" => v.kind.clone(),
                    Some(p) if v.probe_via == "tunnel" => {
                        format!("{p} via tunnel every {}", v.probe_interval)
                    }
                    Some(p) => format!("{p} every {}", v.probe_interval),
                    None => "no probe".to_owned(),
                };
                // The idle timeout, and whether an idle TCP flow is reset when it expires.
                let idle = if v.tcp_reset {
                    format!("{} reset", v.idle_timeout)
                } else {
                    v.idle_timeout.clone()
                };
                let _ = writeln!(
                    o,
                    "{:<26} {:>4} {:>6} {:>4}/{:<4} {:<5} {:<28} {idle:<10} {:>10} {:>10}",
                    v.service,
                    v.id,
                    v.table_size,
                    v.in_rotation,
                    v.backends,
                    v.mode,
                    what,
                    v.counters.packets,
                    v.counters.new_flows
                );
            }
        }
        Response::Backends { service, backends } => backend_table(&mut o, service, backends),
        Response::Explain(v) => explain(&mut o, v),
        Response::Tracing { seconds, .. } => {
            let _ = write!(o, "tracing is on for {seconds} s");
        }
        Response::TraceStopped => o.push_str("tracing is off"),
        Response::Flushed { flushed } => {
            let _ = write!(o, "{flushed} flows flushed");
        }
        Response::Flows { flows, matched } => {
            let _ = writeln!(
                o,
                "{:<22} {:<26} {:<22} {:<12} {:>8} {:>8}",
                "CLIENT", "SERVICE", "BACKEND", "STATE", "AGE", "IDLE"
            );
            for f in flows {
                let state = if f.hairpin {
                    format!("{} (hairpin)", f.state)
                } else {
                    f.state.clone()
                };
                let _ = writeln!(
                    o,
                    "{:<22} {:<26} {:<22} {state:<12} {:>7}s {:>7}s",
                    f.client, f.service, f.backend, f.age_s, f.idle_s
                );
            }
            let _ = write!(o, "{} flows", flows.len());
            if *matched > flows.len() as u64 {
                let _ = write!(
                    o,
                    " shown of {matched} that match (raise --limit to see more)"
                );
            }
        }
        Response::Reloaded { changed: false, .. } => o.push_str(
            "the config file is unchanged since it was applied: nothing to reload (the changes \
             made with lb since then are kept)",
        ),
        Response::Reloaded { changes, .. } if changes.is_empty() => {
            o.push_str("reloaded: the file changed, but not what the agent runs");
        }
        Response::Reloaded { changes, .. } => {
            let _ = writeln!(o, "reloaded; the file replaced:");
            for c in changes {
                let _ = writeln!(o, "  {c}");
            }
        }
        Response::Status(s) => {
            let _ = writeln!(o, "agent      lb {} (pid {})", s.version, s.pid);
            let _ = writeln!(
                o,
                "xdp        {} mode on {}",
                s.xdp_mode,
                s.interfaces.join(", ")
            );
            let _ = writeln!(o, "pins       {}", s.pin_dir.as_deref().unwrap_or("-"));
            let _ = writeln!(
                o,
                "services   {}   backends {} ({} without a resolved next hop)",
                s.services, s.backends, s.backends_unresolved
            );
            let _ = writeln!(
                o,
                "tables     {} of {} slots in use",
                s.ring_slots_used, s.ring_slots
            );
            let _ = writeln!(o, "conntrack  {} flows", s.conntrack_flows);
            if s.swap_holds > 0 {
                let _ = writeln!(
                    o,
                    "swap       {} backend endpoints still answer for flows from before a VIP swap",
                    s.swap_holds
                );
            }
            let _ = writeln!(o, "trace      {}", s.trace);
            if s.announce_table == 0 {
                let _ = writeln!(o, "announced  off (agent.announce_table = 0)");
            } else if s.announced.is_empty() {
                let _ = writeln!(
                    o,
                    "announced  none (table {}: no VIP has a backend in rotation)",
                    s.announce_table
                );
            } else {
                let _ = writeln!(
                    o,
                    "announced  {} (table {})",
                    s.announced.join(", "),
                    s.announce_table
                );
            }
            for r in &s.outbound {
                let (used, peak) = r
                    .backends
                    .iter()
                    .fold((0, 0), |(u, p), b| (u + b.ports_in_use, p.max(b.peak)));
                let _ = writeln!(
                    o,
                    "outbound   {}: {} backends, {} ports each, {used} ports in use (highest one backend's peak {peak}), {} blocks held",
                    r.name,
                    r.backends.len(),
                    r.ports_per_backend,
                    r.held.len()
                );
            }
            let _ = writeln!(o, "lost-frame counters {}", s.xmit_counting);
            lost_frames(&mut o, &s.xmit_failures);
            let _ = writeln!(o, "client-facing next hops ({}):", s.client_routes.len());
            for r in &s.client_routes {
                let _ = writeln!(o, "           {r}");
            }
            for v in &s.vips {
                o.push('\n');
                let head = match &v.table_fingerprint {
                    Some(f) => format!("{}   table fingerprint {f}", v.service),
                    None => v.service.clone(),
                };
                backend_table(&mut o, &head, &v.backends);
            }
        }
        Response::Stats(s) => {
            // Columns as wide as the longest reason name (some pass 20 characters).
            let w = s.reasons.keys().map(String::len).max().unwrap_or(0).max(6);
            let _ = writeln!(o, "{:<w$} {:>12}", "REASON", "PACKETS");
            for (k, v) in &s.reasons {
                let _ = writeln!(o, "{k:<w$} {v:>12}");
            }
            o.push('\n');
            let w = s
                .services
                .iter()
                .map(|v| v.service.len())
                .max()
                .unwrap_or(0)
                .max(7);
            let _ = writeln!(
                o,
                "{:<w$} {:>10} {:>12} {:>10} {:>10} {:>12}",
                "SERVICE", "PACKETS", "BYTES", "NEW FLOWS", "REPLIES", "REPLY BYTES"
            );
            for v in &s.services {
                let c = &v.counters;
                let _ = writeln!(
                    o,
                    "{:<w$} {:>10} {:>12} {:>10} {:>10} {:>12}",
                    v.service, c.packets, c.bytes, c.new_flows, c.reply_packets, c.reply_bytes
                );
            }
            o.push('\n');
            let _ = writeln!(o, "{:<24} {:>12}", "FLOWS EXPIRED", "FLOWS");
            for (cause, n) in &s.flows_expired {
                let _ = writeln!(o, "{cause:<24} {n:>12}");
            }
            let _ = writeln!(o, "{:<24} {:>12}", "tcp resets sent", s.tcp_resets);
            let _ = writeln!(o, "{:<24} {:>12}", "tcp resets failed", s.tcp_reset_errors);
            let _ = writeln!(o, "{:<24} {:>12}", "sweeps failed", s.sweep_errors);
            o.push('\n');
            lost_frames(&mut o, &s.xmit_failures);
        }
    }
    Ok(o.trim_end().to_owned())
}

/// `lb explain`, one step a line.
fn explain(o: &mut String, v: &ExplainView) {
    let _ = writeln!(o, "flow       {} -> {}", v.client, v.service);
    if v.taken_by != v.service {
        let _ = writeln!(o, "service    {} (the VIP's HA ports)", v.taken_by);
    }
    if let Some(i) = &v.internal {
        let _ = writeln!(o, "internal   {i}");
    }
    if let Some(a) = &v.acl {
        let _ = writeln!(o, "acl        {a}");
    }
    if !v.distribution.is_empty() {
        let _ = writeln!(
            o,
            "hash       {} of {} = {:#010x}",
            v.distribution, v.hash_input, v.hash
        );
        let _ = writeln!(
            o,
            "slot       {} of {}",
            v.slot.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            v.table_size
        );
    }
    if let Some(b) = &v.backend {
        let _ = writeln!(o, "backend    {b} (id {})", v.backend_id);
        let _ = match &v.next_hop {
            Some(n) => writeln!(o, "next hop   ifindex {} -> {}", n.ifindex, n.dmac),
            None => writeln!(o, "next hop   unresolved: the kernel FIB decides"),
        };
    }
    let _ = writeln!(o, "verdict    {} (a new flow)", v.verdict);
    match &v.tracked {
        Some(t) => {
            let _ = writeln!(
                o,
                "tracked    yes: to {}{}, {}, age {}s, idle {}s; its packets go there (a SYN re-picks)",
                t.backend,
                if t.hairpin { " (hairpin)" } else { "" },
                t.state,
                t.age_s,
                t.idle_s
            );
        }
        None => {
            let _ = writeln!(o, "tracked    no");
        }
    }
}

/// The lost-frame table: per served interface, frames the verdicts counted as sent that the
/// kernel then dropped, with what to do when there are any.
fn lost_frames(o: &mut String, v: &[XmitFailView]) {
    let w = v
        .iter()
        .map(|x| x.interface.len())
        .max()
        .unwrap_or(0)
        .max(9);
    let _ = writeln!(
        o,
        "{:<w$} {:>14} {:>10} {:>10}",
        "INTERFACE", "REDIRECT LOST", "TX LOST", "ABORTED"
    );
    for x in v {
        let _ = writeln!(
            o,
            "{:<w$} {:>14} {:>10} {:>10}",
            x.interface, x.redirect, x.tx, x.aborted
        );
    }
    if v.iter().any(|x| x.redirect != 0 || x.tx != 0) {
        let _ = writeln!(
            o,
            "frames were lost after the program sent them (the verdict counts above include \
             them); on a veth, its peer needs GRO on or an XDP program: see the agent's log and \
             the README, \"Deploying on veth, containers and VMs\""
        );
    }
}

fn backend_table(o: &mut String, service: &str, backends: &[BackendView]) {
    let _ = writeln!(o, "{service}");
    let _ = writeln!(
        o,
        "  {:<20} {:>4} {:<9} {:<4} {:>3} {:>6} {:>6} {:>8} {:>9}  {:<30} NEXT HOP",
        "BACKEND",
        "ID",
        "HEALTH",
        "NEW",
        "WT",
        "SHARE",
        "FLOWS",
        "PACKETS",
        "NEW FLOWS",
        "REASON (LAST PROBE)"
    );
    for b in backends {
        let nh = b.next_hop.as_ref().map_or_else(
            || "unresolved (FIB fallback)".to_owned(),
            |n| format!("if {} → {}", n.ifindex, n.dmac),
        );
        let probe = b.last_probe.as_ref().map_or(String::new(), |p| {
            format!(" ({} {}s ago)", p.detail, p.age_ms / 1000)
        });
        let _ = writeln!(
            o,
            "  {:<20} {:>4} {:<9} {:<4} {:>3} {:>5.1}% {:>6} {:>8} {:>9}  {:<30} {nh}",
            b.backend,
            b.id,
            b.health,
            if b.in_rotation { "yes" } else { "no" },
            b.weight,
            b.share * 100.0,
            b.flows,
            b.counters.packets,
            b.counters.new_flows,
            format!("{}{probe}", b.reason),
        );
    }
}

/// What a change did, in a sentence.
fn confirmation(c: &Change) -> String {
    match c {
        Change::ServiceAdded { service } => format!("added service {service}"),
        Change::ServiceDeleted { service } => format!("deleted service {service}"),
        Change::BackendAdded { service, backend } => {
            format!("added backend {backend} to {service}")
        }
        Change::BackendDeleted { service, backend } => {
            format!("deleted backend {backend} from {service}")
        }
        Change::WeightSet {
            service,
            backend,
            weight,
        } => format!("backend {backend} of {service} has weight {weight}"),
        Change::DrainSet {
            service,
            backend,
            drained,
        } => {
            let what = if *drained {
                "drained: no new flows, established flows continue"
            } else {
                "undrained"
            };
            format!("backend {backend} of {service} {what}")
        }
        Change::AdminSet {
            service,
            backend,
            admin,
        } => {
            let what = match admin {
                crate::spec::Admin::Up => "admin up: in rotation whatever the probes say",
                crate::spec::Admin::Down => {
                    "admin down: out of rotation whatever the probes say, established flows continue"
                }
                crate::spec::Admin::None => "admin none: the probes decide",
            };
            format!("backend {backend} of {service} {what}")
        }
        Change::ForwardAdded { service, to } => format!("added forward {service} → {to}"),
        Change::ForwardDeleted { service } => format!("deleted forward {service}"),
        Change::OutboundAdded { name } => format!("added outbound rule {name}"),
        Change::OutboundDeleted { name } => {
            format!(
                "deleted outbound rule {name}: its backends' new flows keep their own addresses"
            )
        }
        Change::AclAdded { service, rule } => format!(
            "added ACL rule --order {} ({} {}/{}) to {service}",
            rule.order,
            action_word(rule.action),
            rule.prefix.0,
            rule.prefix.1
        ),
        Change::AclDeleted { service, order } => {
            format!("deleted ACL rule --order {order} of {service}")
        }
        Change::PipAdded { pip, dip } => format!("added PIP {pip} → {dip}"),
        Change::PipDeleted { pip, dip } => format!("deleted PIP {pip} (was → {dip})"),
        Change::VipsSwapped { a, b, services } => {
            let mut o = format!("swapped VIPs {a} and {b}:");
            for (was, now) in services {
                let _ = write!(o, "\n  {was} now answers on {now}");
            }
            o
        }
    }
}

/// `used` of `of` as a percentage, for display.
fn percent(used: u64, of: u32) -> f64 {
    if of == 0 {
        return 0.0;
    }
    #[expect(clippy::cast_precision_loss, reason = "a percentage for display")]
    let p = used as f64 * 100.0 / f64::from(of);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::StatsView;

    /// The stats table's columns line up whatever the length of the reason names.
    #[test]
    fn stats_columns_line_up_for_long_reason_names() {
        let reasons = lb_common::verdict::ALL_REASONS
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    r.name().to_owned(),
                    10u64.pow(u32::try_from(i % 7).unwrap()),
                )
            })
            .collect();
        let text = render(
            &Response::Stats(StatsView {
                reasons,
                services: Vec::new(),
                flows_expired: std::collections::BTreeMap::new(),
                tcp_resets: 0,
                tcp_reset_errors: 0,
                sweeps: 0,
                sweep_errors: 0,
                xmit_failures: Vec::new(),
                probe_tunnel: std::collections::BTreeMap::new(),
            }),
            Format::Table,
        )
        .unwrap();
        let ends: std::collections::BTreeSet<usize> = text
            .lines()
            .take_while(|l| !l.is_empty())
            .map(str::len)
            .collect();
        assert_eq!(
            ends.len(),
            1,
            "the PACKETS column ends at one place:\n{text}"
        );
    }

    /// A limited flow list says how many it left out, and a reload says what it replaced.
    #[test]
    fn flows_and_reloads_say_what_they_leave_out_and_replace() {
        let f = crate::api::FlowView {
            client: "198.51.100.2:40000".into(),
            service: "203.0.113.10:80/tcp".into(),
            backend: "192.0.2.11:80".into(),
            state: "established".into(),
            idle_s: 3,
            age_s: 9,
            hairpin: false,
        };
        let text = render(
            &Response::Flows {
                flows: vec![f],
                matched: 7,
            },
            Format::Table,
        )
        .unwrap();
        assert!(text.contains("established"), "{text}");
        assert!(
            text.ends_with("1 flows shown of 7 that match (raise --limit to see more)"),
            "{text}"
        );
        let text = render(
            &Response::Reloaded {
                changed: true,
                changes: vec!["service 203.0.113.10:80/tcp changed".into()],
            },
            Format::Table,
        )
        .unwrap();
        assert!(
            text.contains("the file replaced:\n  service 203.0.113.10:80/tcp changed"),
            "{text}"
        );
        let text = render(
            &Response::Reloaded {
                changed: false,
                changes: Vec::new(),
            },
            Format::Table,
        )
        .unwrap();
        assert!(text.contains("nothing to reload"), "{text}");
    }
}
