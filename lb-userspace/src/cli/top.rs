//! `lb top`: a refreshing terminal view of what the load balancer does now: per service and
//! per backend packets/s, new flows/s and replies/s, with health; drops/s by reason; lost
//! frames. Each refresh asks the agent for `status` and `stats` (the same answers as the
//! commands) and shows the rates between two answers.
//!
//! The rates ([`Rates::between`]) and the drawing ([`draw`]) are plain functions, tested with
//! ratatui's `TestBackend`; the loop around them only fetches, draws and reads keys.

use std::{collections::BTreeMap, path::Path, time::Duration};

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
};

use crate::api::{self, Query, Request, Response, StatsView, StatusView};

/// One fetch: both answers.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub status: StatusView,
    pub stats: StatsView,
}

/// What one refresh shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    pub header: String,
    /// Service, kind, packets/s in, new flows/s, replies/s, backends in rotation / all.
    pub services: Vec<(String, f64, f64, f64, String)>,
    /// Service, backend, health (and why not in rotation), packets/s, new flows/s, flows.
    pub backends: Vec<(String, String, String, f64, f64, u64)>,
    /// Drop reason, drops/s (only reasons that moved), highest first.
    pub drops: Vec<(String, f64)>,
    /// Interface, lost frames/s (only interfaces that lost any since the last refresh).
    pub lost: Vec<(String, f64)>,
}

impl Rates {
    /// The rates between `prev` and `cur`, `secs` apart (counters that went back, as after a
    /// service was re-created, count as 0).
    #[must_use]
    pub fn between(prev: &Snapshot, cur: &Snapshot, secs: f64) -> Self {
        let per_s = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs.max(1e-3);
        let s = &cur.status;
        let header = format!(
            "lb {} (pid {}), {} mode on {}   services {}   backends {} ({} unresolved)   trace {}",
            s.version,
            s.pid,
            s.xdp_mode,
            s.interfaces.join(", "),
            s.services,
            s.backends,
            s.backends_unresolved,
            s.trace
        );
        let prev_svc: BTreeMap<&str, &api::ServiceView> = prev
            .stats
            .services
            .iter()
            .map(|v| (v.service.as_str(), v))
            .collect();
        let services = cur
            .stats
            .services
            .iter()
            .map(|v| {
                let p = prev_svc.get(v.service.as_str()).map(|p| &p.counters);
                let c = &v.counters;
                (
                    v.service.clone(),
                    per_s(c.packets, p.map_or(c.packets, |p| p.packets)),
                    per_s(c.new_flows, p.map_or(c.new_flows, |p| p.new_flows)),
                    per_s(
                        c.reply_packets,
                        p.map_or(c.reply_packets, |p| p.reply_packets),
                    ),
                    format!("{}/{}", v.in_rotation, v.backends),
                )
            })
            .collect();
        let prev_be: BTreeMap<(&str, &str), &api::BackendView> = prev
            .status
            .vips
            .iter()
            .flat_map(|v| {
                v.backends
                    .iter()
                    .map(move |b| ((v.service.as_str(), b.backend.as_str()), b))
            })
            .collect();
        let backends = s
            .vips
            .iter()
            .flat_map(|v| {
                let prev_be = &prev_be;
                v.backends.iter().map(move |b| {
                    let p = prev_be
                        .get(&(v.service.as_str(), b.backend.as_str()))
                        .map(|p| &p.counters);
                    let c = &b.counters;
                    let health = if b.in_rotation {
                        b.health.clone()
                    } else {
                        format!("{} (out: {})", b.health, b.reason)
                    };
                    (
                        v.service.clone(),
                        b.backend.clone(),
                        health,
                        per_s(c.packets, p.map_or(c.packets, |p| p.packets)),
                        per_s(c.new_flows, p.map_or(c.new_flows, |p| p.new_flows)),
                        b.flows,
                    )
                })
            })
            .collect();
        let mut drops: Vec<(String, f64)> = cur
            .stats
            .reasons
            .iter()
            .filter(|(k, _)| k.starts_with("drop_"))
            .map(|(k, n)| {
                (
                    k.clone(),
                    per_s(*n, prev.stats.reasons.get(k).copied().unwrap_or(*n)),
                )
            })
            .filter(|(_, r)| *r > 0.0)
            .collect();
        drops.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let lost = cur
            .stats
            .xmit_failures
            .iter()
            .filter_map(|x| {
                let p = prev
                    .stats
                    .xmit_failures
                    .iter()
                    .find(|y| y.interface == x.interface)?;
                let r = per_s(x.redirect + x.tx, p.redirect + p.tx);
                (r > 0.0).then(|| (x.interface.clone(), r))
            })
            .collect();
        Self {
            header,
            services,
            backends,
            drops,
            lost,
        }
    }
}

/// Draws one refresh.
pub fn draw(f: &mut Frame<'_>, r: &Rates) {
    let [head, svc, be, bottom] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(r.services.len() as u16 + 3),
        Constraint::Min(4),
        Constraint::Length((r.drops.len().max(r.lost.len()) as u16).max(1) + 3),
    ])
    .areas(f.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    f.render_widget(
        Paragraph::new(Line::from(r.header.as_str())).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" lb top (q to quit) "),
        ),
        head,
    );
    let rows = r.services.iter().map(|(s, p, n, rep, rot)| {
        Row::new(vec![
            s.clone(),
            format!("{p:.0}"),
            format!("{n:.0}"),
            format!("{rep:.0}"),
            rot.clone(),
        ])
    });
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Min(26),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Length(12),
            ],
        )
        .header(
            Row::new([
                "SERVICE",
                "PKTS/S",
                "NEW FLOWS/S",
                "REPLIES/S",
                "IN ROTATION",
            ])
            .style(bold),
        )
        .block(Block::default().borders(Borders::ALL).title(" services ")),
        svc,
    );
    let rows = r.backends.iter().map(|(s, b, h, p, n, flows)| {
        Row::new(vec![
            s.clone(),
            b.clone(),
            h.clone(),
            format!("{p:.0}"),
            format!("{n:.0}"),
            flows.to_string(),
        ])
    });
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Min(22),
                Constraint::Length(22),
                Constraint::Min(12),
                Constraint::Length(10),
                Constraint::Length(12),
                Constraint::Length(8),
            ],
        )
        .header(
            Row::new([
                "SERVICE",
                "BACKEND",
                "HEALTH",
                "PKTS/S",
                "NEW FLOWS/S",
                "FLOWS",
            ])
            .style(bold),
        )
        .block(Block::default().borders(Borders::ALL).title(" backends ")),
        be,
    );
    let [drops, lost] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(bottom);
    f.render_widget(
        rates_table(" drops ", "DROP REASON", "PER S", &r.drops, "no drops"),
        drops,
    );
    f.render_widget(
        rates_table(" lost frames ", "INTERFACE", "LOST/S", &r.lost, "none lost"),
        lost,
    );
}

/// A two-column table of names and rates, saying `empty` when there is none.
fn rates_table<'a>(
    title: &'a str,
    name: &'a str,
    unit: &'a str,
    rows: &[(String, f64)],
    empty: &'a str,
) -> Table<'a> {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let rows: Vec<Row> = if rows.is_empty() {
        vec![Row::new(vec![empty.to_owned(), String::new()])]
    } else {
        rows.iter()
            .map(|(k, v)| Row::new(vec![k.clone(), format!("{v:.0}")]))
            .collect()
    };
    Table::new(rows, [Constraint::Min(12), Constraint::Length(10)])
        .header(Row::new([name, unit]).style(bold))
        .block(Block::default().borders(Borders::ALL).title(title))
}

async fn fetch(socket: &Path) -> anyhow::Result<Snapshot> {
    let status = match api::call(socket, &Request::Query(Query::Status)).await? {
        Response::Status(s) => s,
        Response::Error { kind, message } => {
            return Err(super::output::Failure::new(kind, message).into());
        }
        other => anyhow::bail!("unexpected answer to status: {other:?}"),
    };
    let stats = match api::call(socket, &Request::Query(Query::Stats)).await? {
        Response::Stats(s) => s,
        Response::Error { kind, message } => {
            return Err(super::output::Failure::new(kind, message).into());
        }
        other => anyhow::bail!("unexpected answer to stats: {other:?}"),
    };
    Ok(Snapshot {
        status: *status,
        stats,
    })
}

/// Runs the view until `q`, Esc or Ctrl-C (or after `iterations` refreshes).
///
/// # Errors
/// The agent cannot be reached, or the terminal cannot be set up.
pub async fn run(socket: &Path, interval: Duration, iterations: Option<u32>) -> anyhow::Result<()> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let mut prev = fetch(socket).await?;
    let mut at = tokio::time::Instant::now();
    let mut terminal = ratatui::init();
    let result = async {
        let mut shown = 0u32;
        loop {
            // Keys are read between refreshes, in slices, so a `q` is taken at once.
            let until = at + interval;
            while tokio::time::Instant::now() < until {
                if event::poll(Duration::from_millis(50))?
                    && let Event::Key(k) = event::read()?
                {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
            }
            let cur = fetch(socket).await?;
            let now = tokio::time::Instant::now();
            let rates = Rates::between(&prev, &cur, (now - at).as_secs_f64());
            terminal.draw(|f| draw(f, &rates))?;
            (prev, at) = (cur, now);
            shown += 1;
            if iterations.is_some_and(|n| shown >= n) {
                return Ok(());
            }
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::api::{BackendView, CountersView, ServiceStatus, ServiceView, XmitFailView};

    fn counters(packets: u64, new_flows: u64, replies: u64) -> CountersView {
        CountersView {
            packets,
            new_flows,
            reply_packets: replies,
            ..CountersView::default()
        }
    }

    fn snapshot(packets: u64, drops: u64, lost: u64) -> Snapshot {
        let backend = |name: &str, up: bool| BackendView {
            backend: name.into(),
            id: 1,
            health: if up { "up" } else { "down" }.into(),
            in_rotation: up,
            reason: if up { "healthy" } else { "2 failed probes" }.into(),
            last_probe: None,
            weight: 1,
            drained: false,
            admin: "none".into(),
            next_hop: None,
            slots: 0,
            share: 0.5,
            flows: 3,
            counters: counters(packets, packets / 10, 0),
        };
        let json = serde_json::json!({
            "version": "0.1.0", "pid": 7, "interfaces": ["l0", "l1"], "xdp_mode": "native",
            "pin_dir": null, "services": 1, "backends": 2, "backends_unresolved": 0,
            "client_routes": [], "ring_slots_used": 0, "ring_slots": 1, "conntrack_flows": 1,
            "trace": "off", "vips": [],
        });
        let mut status: StatusView = serde_json::from_value(json).unwrap();
        status.vips = vec![ServiceStatus {
            service: "203.0.113.10:80/tcp".into(),
            table_fingerprint: None,
            backends: vec![
                backend("192.0.2.11:80", true),
                backend("192.0.2.12:80", false),
            ],
        }];
        let svc: ServiceView = serde_json::from_value(serde_json::json!({
            "service": "203.0.113.10:80/tcp", "kind": "balanced", "id": 1, "table_size": 251,
            "backends": 2, "in_rotation": 1, "probe": null, "probe_interval": "15s",
            "probe_timeout": "5s", "unhealthy_after": 2, "healthy_after": 2,
            "when_all_down": "drop", "established": "auto", "internal": "", "hairpin": "drop",
            "icmp_echo": true, "replies": "tracked", "distribution": "5-tuple",
            "idle_timeout": "4m", "tcp_reset": false,
            "counters": serde_json::to_value(counters(packets, packets / 10, packets / 2)).unwrap(),
        }))
        .unwrap();
        let stats = StatsView {
            reasons: BTreeMap::from([
                ("forward".into(), packets),
                ("drop_acl".into(), drops),
                ("drop_ttl".into(), 5),
            ]),
            services: vec![svc],
            flows_expired: BTreeMap::new(),
            tcp_resets: 0,
            tcp_reset_errors: 0,
            sweeps: 0,
            sweep_errors: 0,
            probe_tunnel: BTreeMap::new(),
            xmit_failures: vec![XmitFailView {
                interface: "l1".into(),
                ifindex: 3,
                redirect: lost,
                tx: 0,
                aborted: 0,
            }],
        };
        Snapshot { status, stats }
    }

    #[test]
    fn rates_are_deltas_over_the_interval() {
        // Rates of whole counts over 2 s are exact in f64; compared as text to say so.
        let f = |x: f64| format!("{x:.3}");
        let r = Rates::between(&snapshot(1000, 10, 0), &snapshot(3000, 30, 4), 2.0);
        assert_eq!(f(r.services[0].1), "1000.000", "packets/s");
        assert_eq!(f(r.services[0].2), "100.000", "new flows/s");
        assert_eq!(f(r.services[0].3), "500.000", "replies/s");
        assert_eq!(r.services[0].4, "1/2");
        // Only reasons that moved, as drops/s.
        let drops: Vec<(String, String)> =
            r.drops.iter().map(|(k, v)| (k.clone(), f(*v))).collect();
        assert_eq!(drops, vec![("drop_acl".to_owned(), "10.000".to_owned())]);
        let lost: Vec<(String, String)> = r.lost.iter().map(|(k, v)| (k.clone(), f(*v))).collect();
        assert_eq!(lost, vec![("l1".to_owned(), "2.000".to_owned())]);
        assert_eq!(r.backends.len(), 2);
        assert_eq!(r.backends[1].2, "down (out: 2 failed probes)");
        assert_eq!(f(r.backends[0].3), "1000.000");
        // A counter that went back (a re-created service) counts as 0, not as a huge rate.
        let back = Rates::between(&snapshot(3000, 30, 0), &snapshot(10, 30, 0), 1.0);
        assert_eq!(f(back.services[0].1), "0.000");
    }

    #[test]
    fn the_view_shows_services_backends_health_and_drops() {
        let r = Rates::between(&snapshot(1000, 10, 0), &snapshot(3000, 30, 4), 2.0);
        let mut t = Terminal::new(TestBackend::new(140, 30)).unwrap();
        t.draw(|f| draw(f, &r)).unwrap();
        let text: String = t
            .backend()
            .buffer()
            .content()
            .chunks(140)
            .map(|row| {
                row.iter()
                    .map(ratatui::buffer::Cell::symbol)
                    .collect::<String>()
                    + "\n"
            })
            .collect();
        for want in [
            "lb top (q to quit)",
            "203.0.113.10:80/tcp",
            "192.0.2.12:80",
            "down (out: 2 failed probes)",
            "drop_acl",
            "1000",
            "trace off",
            "l1",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
        assert!(
            !text.contains("drop_ttl"),
            "a reason that did not move is not shown\n{text}"
        );
    }
}
