//! `lb agent --metrics`: a Prometheus scrape endpoint (text exposition format 0.0.4).
//!
//! A scrape is one more client of the reconciler, like `lb status` and `lb stats`: it sends
//! [`Query::Status`] and [`Query::Stats`] to the writer and renders the answers, which a reader
//! finishes off the writer loop (the conntrack walk of a status never delays a health change).
//! It never opens a map itself, and a scrape shows exactly what the CLI would.
//!
//! The endpoint has no authentication, so it exists only when asked for, and a bare port binds
//! loopback. The HTTP side is deliberately tiny (one `GET`, `Connection: close`): a scraper
//! needs nothing more, and every extra feature would be attack surface on a packet path host.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
    time::timeout,
};

use crate::{
    api::{CountersView, Query, Request, Response, StatsView, StatusView},
    reconcile::Event,
};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A scraper's request head is a few hundred bytes; anything bigger is not a scraper.
const MAX_HEAD: usize = 8 * 1024;
/// Bounds each of reading the request and writing the answer, so a client that stalls cannot
/// hold a connection (and a permit) for long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Every scrape costs a `Status` (a walk of the conntrack map, off the writer), so a flood of
/// connections must not queue unbounded work.
const MAX_CONNECTIONS: usize = 8;
/// The probe states of [`crate::api::BackendView::health`], each one `lb_backend_health` series.
const HEALTH_STATES: [&str; 4] = ["up", "down", "unknown", "unprobed"];

/// Parses the value of `--metrics`: `PORT` (on 127.0.0.1) or `ADDR:PORT` (`[::1]:PORT` for IPv6).
///
/// # Errors
/// Neither form; the message names `--metrics`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
    }
    s.parse().map_err(|_| {
        format!("--metrics: {s:?} is not PORT or ADDR:PORT (e.g. 9464, 0.0.0.0:9464, [::1]:9464)")
    })
}

/// The Prometheus text for one `Status` and one `Stats` answer.
#[must_use]
pub fn render(status: &StatusView, stats: &StatsView) -> String {
    let mut o = Out(String::new());
    o.family(
        "lb_agent_up",
        GAUGE,
        "1 when the agent's reconciler answered this scrape.",
    );
    o.sample("lb_agent_up", &[], 1);
    o.family(
        "lb_agent_info",
        GAUGE,
        "Agent version and XDP mode, in the labels; always 1.",
    );
    o.sample(
        "lb_agent_info",
        &[("version", &status.version), ("xdp_mode", &status.xdp_mode)],
        1,
    );
    for (name, help, value) in [
        (
            "lb_services",
            "Services (balanced VIP ports and port forwards) in the maps.",
            status.services as u64,
        ),
        (
            "lb_backends",
            "Backends over all services.",
            status.backends as u64,
        ),
        (
            "lb_backends_unresolved",
            "Backends whose next hop is not resolved yet (the kernel FIB serves them meanwhile).",
            status.backends_unresolved as u64,
        ),
        (
            "lb_ring_slots_used",
            "Lookup-table slots in use.",
            status.ring_slots_used,
        ),
        (
            "lb_ring_slots_limit",
            "Lookup-table slots available in total.",
            u64::from(status.ring_slots),
        ),
        (
            "lb_conntrack_flows_limit",
            "Flows the conntrack map can track.",
            u64::from(status.conntrack_flows),
        ),
        (
            "lb_vips_announced",
            "VIP and PIP addresses whose host route is in the announce table.",
            status.announced.len() as u64,
        ),
    ] {
        o.family(name, GAUGE, help);
        o.sample(name, &[], value);
    }
    o.family(
        "lb_vip_announced",
        GAUGE,
        "1 for each VIP or PIP address announced (its host route in the announce table).",
    );
    for vip in &status.announced {
        o.sample("lb_vip_announced", &[("vip", vip)], 1);
    }

    o.family(
        "lb_packets_total",
        COUNTER,
        "Packets the XDP program handled, by verdict reason.",
    );
    for (reason, n) in &stats.reasons {
        o.sample("lb_packets_total", &[("reason", reason)], *n);
    }

    o.family(
        "lb_flows_expired_total",
        COUNTER,
        "Tracked flows the sweeper removed, by cause: idle, closed (RST or FIN each way), syn (handshake never completed).",
    );
    for (cause, n) in &stats.flows_expired {
        o.sample("lb_flows_expired_total", &[("cause", cause)], *n);
    }
    o.family(
        "lb_tcp_resets_total",
        COUNTER,
        "RST segments sent by TCP reset on idle (two per reset flow), by result.",
    );
    o.sample(
        "lb_tcp_resets_total",
        &[("result", "sent")],
        stats.tcp_resets,
    );
    o.sample(
        "lb_tcp_resets_total",
        &[("result", "failed")],
        stats.tcp_reset_errors,
    );
    o.family(
        "lb_sweeps_total",
        COUNTER,
        "Passes of the flow sweeper over the conntrack table, by result (a failed one is retried a second later; the log says why).",
    );
    o.sample("lb_sweeps_total", &[("result", "done")], stats.sweeps);
    o.sample(
        "lb_sweeps_total",
        &[("result", "failed")],
        stats.sweep_errors,
    );
    o.family(
        "lb_xdp_lost_frames_total",
        COUNTER,
        "Frames the program sent (and counted under a sending verdict) that the kernel then dropped, per served interface and way out: redirect (the target refused it; on veth: its peer has no NAPI), tx (XDP_TX dropped), aborted (XDP_ABORTED).",
    );
    for x in &stats.xmit_failures {
        for (how, n) in [
            ("redirect", x.redirect),
            ("tx", x.tx),
            ("aborted", x.aborted),
        ] {
            o.sample(
                "lb_xdp_lost_frames_total",
                &[("interface", x.interface.as_str()), ("way", how)],
                n,
            );
        }
    }

    o.family(
        "lb_probe_tunnel_packets_total",
        COUNTER,
        "Packets of health probes through the tunnel (--probe-via tunnel) at the probe device's tc program, by outcome: sent (encapsulated to the backend), no_backend (no entry for the probe's mark), no_route (the backend's next hop is not resolved yet), malformed.",
    );
    for (outcome, n) in &stats.probe_tunnel {
        o.sample(
            "lb_probe_tunnel_packets_total",
            &[("outcome", outcome.as_str())],
            *n,
        );
    }

    let services: Vec<_> = stats
        .services
        .iter()
        .map(|s| (vec![("service", s.service.as_str())], &s.counters))
        .collect();
    o.flow_counters("lb_service", "service", &services);
    o.family(
        "lb_service_info",
        GAUGE,
        "Always 1: the service's data path as a label, mode = dnat, or a floating-IP mode (l2, ipip, gue: the backends answer clients straight, so the service's reply counters stay 0).",
    );
    for s in &stats.services {
        o.sample(
            "lb_service_info",
            &[("service", s.service.as_str()), ("mode", s.mode.as_str())],
            1,
        );
    }
    o.family(
        "lb_service_acl_drops_total",
        COUNTER,
        "New flows the service's ACL denied.",
    );
    for (labels, c) in &services {
        o.sample("lb_service_acl_drops_total", labels, c.acl_drops);
    }
    o.family(
        "lb_service_conntrack_misses_total",
        COUNTER,
        "Non-SYN packets with no conntrack entry (evicted or never seen), re-picked from the table.",
    );
    for (labels, c) in &services {
        o.sample(
            "lb_service_conntrack_misses_total",
            labels,
            c.conntrack_misses,
        );
    }
    o.family(
        "lb_service_untracked_flows_total",
        COUNTER,
        "New flows the flood guard forwarded by the table without tracking them.",
    );
    for (labels, c) in &services {
        o.sample(
            "lb_service_untracked_flows_total",
            labels,
            c.untracked_flows,
        );
    }

    let backends: Vec<_> = status
        .vips
        .iter()
        .flat_map(|v| {
            let service = v.service.as_str();
            v.backends.iter().map(move |b| {
                (
                    vec![("service", service), ("backend", b.backend.as_str())],
                    b,
                )
            })
        })
        .collect();
    let counters: Vec<_> = backends
        .iter()
        .map(|(labels, b)| (labels.clone(), &b.counters))
        .collect();
    o.flow_counters("lb_backend", "backend", &counters);
    o.family(
        "lb_backend_up",
        GAUGE,
        "1 when the backend takes new flows; 0 when its health, a drain or weight 0 keeps it out.",
    );
    for (labels, b) in &backends {
        o.sample("lb_backend_up", labels, u64::from(b.in_rotation));
    }
    o.family(
        "lb_backend_admin",
        GAUGE,
        "Administrative state: 1 for the backend's current one (none = the probes decide, up, down).",
    );
    for (labels, b) in &backends {
        for state in ["none", "up", "down"] {
            let labels = with(labels, ("state", state));
            o.sample("lb_backend_admin", &labels, u64::from(b.admin == state));
        }
    }
    o.family(
        "lb_backend_health",
        GAUGE,
        "Probe state: 1 for the backend's current state (up, down, unknown = not probed yet, unprobed = no probe).",
    );
    for (labels, b) in &backends {
        for state in HEALTH_STATES {
            let labels = with(labels, ("state", state));
            o.sample("lb_backend_health", &labels, u64::from(b.health == state));
        }
    }
    o.family(
        "lb_backend_flows",
        GAUGE,
        "Flows the conntrack map tracks to the backend.",
    );
    for (labels, b) in &backends {
        o.sample("lb_backend_flows", labels, b.flows);
    }
    outbound(&mut o, status);
    o.0
}

/// A placed backend's labels, its view and its rule's block size.
type Placed<'a> = (
    Vec<(&'a str, &'a str)>,
    &'a crate::api::OutboundBackendView,
    u32,
);
/// One outbound family's value of a placed backend.
type OutValue = fn(&crate::api::OutboundBackendView, u32) -> u64;

/// The outbound rules' families: each placed backend's block size, ports in use, peak, flows,
/// and the fraction of its block in use (what an exhaustion alert watches).
fn outbound(o: &mut Out, status: &StatusView) {
    let placed: Vec<Placed<'_>> = status
        .outbound
        .iter()
        .flat_map(|r| {
            r.backends.iter().filter_map(move |b| {
                let f = b.frontend.as_deref()?;
                Some((
                    vec![
                        ("rule", r.name.as_str()),
                        ("backend", b.backend.as_str()),
                        ("frontend", f),
                    ],
                    b,
                    r.ports_per_backend,
                ))
            })
        })
        .collect();
    let families: [(&str, &str, OutValue); 4] = [
        (
            "lb_outbound_ports",
            "Ports of the backend's outbound block.",
            |_, n| u64::from(n),
        ),
        (
            "lb_outbound_ports_in_use",
            "Distinct ports of the block the backend's tracked outbound flows hold (counted each flow sweep).",
            |b, _| b.ports_in_use,
        ),
        (
            "lb_outbound_ports_peak",
            "The most ports of the block in use at once since the agent started.",
            |b, _| b.peak,
        ),
        (
            "lb_outbound_flows",
            "Tracked outbound flows of the backend.",
            |b, _| b.flows,
        ),
    ];
    for (name, help, value) in families {
        o.family(name, GAUGE, help);
        for (labels, b, n) in &placed {
            o.sample(name, labels, value(b, *n));
        }
    }
    o.family(
        "lb_outbound_port_use_ratio",
        GAUGE,
        "Fraction of the backend's outbound block in use: new flows are dropped (drop_snat_exhausted) as it nears 1.",
    );
    for (labels, b, n) in &placed {
        #[expect(clippy::cast_precision_loss, reason = "a ratio")]
        let r = if *n == 0 {
            0.0
        } else {
            b.ports_in_use as f64 / f64::from(*n)
        };
        o.sample_f64("lb_outbound_port_use_ratio", labels, r);
    }
}

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

/// The exposition text being built. Callers write each family's header once, then all its
/// samples, because the format requires a family's samples to be contiguous.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.labels(name, labels);
        let _ = writeln!(self.0, " {value}");
    }

    fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.labels(name, labels);
        let _ = writeln!(self.0, " {value}");
    }

    fn labels(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.0.push_str(name);
        for (i, (k, v)) in labels.iter().enumerate() {
            self.0.push(if i == 0 { '{' } else { ',' });
            let _ = write!(self.0, "{k}=\"");
            escape_label(&mut self.0, v);
            self.0.push('"');
        }
        if !labels.is_empty() {
            self.0.push('}');
        }
    }

    /// The counters services and backends share: packets and bytes both ways, new flows.
    fn flow_counters(
        &mut self,
        prefix: &str,
        what: &str,
        rows: &[(Vec<(&str, &str)>, &CountersView)],
    ) {
        let directions = |c: &CountersView| {
            [
                ("in", c.packets, c.bytes),
                ("out", c.reply_packets, c.reply_bytes),
            ]
        };
        let name = format!("{prefix}_packets_total");
        self.family(
            &name,
            COUNTER,
            &format!(
                "Packets through the {what}: in = client to backend, out = backend to client."
            ),
        );
        for (labels, c) in rows {
            for (dir, packets, _) in directions(c) {
                self.sample(&name, &with(labels, ("direction", dir)), packets);
            }
        }
        let name = format!("{prefix}_bytes_total");
        self.family(
            &name,
            COUNTER,
            &format!("Bytes (whole frames) through the {what}, by direction as the packets."),
        );
        for (labels, c) in rows {
            for (dir, _, bytes) in directions(c) {
                self.sample(&name, &with(labels, ("direction", dir)), bytes);
            }
        }
        let name = format!("{prefix}_new_flows_total");
        self.family(
            &name,
            COUNTER,
            &format!("New flows (conntrack misses and SYNs) the lookup table placed, per {what}."),
        );
        for (labels, c) in rows {
            self.sample(&name, labels, c.new_flows);
        }
    }
}

fn with<'a>(labels: &[(&'a str, &'a str)], extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut v = labels.to_vec();
    v.push(extra);
    v
}

/// A label value as the format quotes it: only `\`, `"` and newline are escaped.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Serves `GET /metrics` on `listener` until the task is aborted; one task per connection.
pub async fn serve(listener: TcpListener, calls: mpsc::Sender<Event>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics connection refused: too many at once");
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &calls).await {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, calls: &mpsc::Sender<Event>) -> std::io::Result<()> {
    let head = timeout(IO_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    let answer = match head.as_deref().map(route) {
        None => reply(
            400,
            "Bad Request",
            &format!("request head over {MAX_HEAD} bytes\n"),
        ),
        Some(Route::Metrics) => match scrape(calls).await {
            Ok(text) => reply(200, "OK", &text),
            Err(e) => {
                tracing::warn!(error = %e, "metrics scrape failed");
                reply(503, "Service Unavailable", &format!("{e}\n"))
            }
        },
        Some(Route::Refuse(code, reason)) => reply(code, reason, &format!("{reason}\n")),
    };
    timeout(IO_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response"))?
}

/// The request head up to its blank line, or `None` if it exceeds [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut chunk = [0; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok((end <= MAX_HEAD).then_some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Refuse(u16, &'static str),
}

/// Only the request line matters: no header changes the answer.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Refuse(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Refuse(400, "Bad Request");
    }
    if target.split('?').next() != Some("/metrics") {
        return Route::Refuse(404, "Not Found");
    }
    if method != "GET" {
        return Route::Refuse(405, "Method Not Allowed");
    }
    Route::Metrics
}

fn reply(code: u16, reason: &str, body: &str) -> String {
    let allow = if code == 405 { "Allow: GET\r\n" } else { "" };
    let kind = if code == 200 {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn scrape(calls: &mpsc::Sender<Event>) -> Result<String, String> {
    let Response::Status(status) = ask(calls, Request::Query(Query::Status)).await? else {
        return Err("unexpected answer to status".into());
    };
    let Response::Stats(stats) = ask(calls, Request::Query(Query::Stats)).await? else {
        return Err("unexpected answer to stats".into());
    };
    Ok(render(&status, &stats))
}

async fn ask(calls: &mpsc::Sender<Event>, req: Request) -> Result<Response, String> {
    let (tx, rx) = oneshot::channel();
    calls
        .send(Event::Api(req, tx))
        .await
        .map_err(|_| "the agent is shutting down".to_owned())?;
    match rx.await {
        Ok(Response::Error { message, .. }) => Err(message),
        Ok(r) => Ok(r),
        Err(_) => Err("the agent is shutting down".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashSet};

    use proptest::prelude::*;

    use super::*;
    use crate::api::{BackendView, ServiceStatus, ServiceView};

    fn counters(base: u64) -> CountersView {
        CountersView {
            packets: base,
            bytes: base * 100,
            new_flows: base / 10,
            reply_packets: base + 1,
            reply_bytes: (base + 1) * 100,
            acl_drops: 3,
            conntrack_misses: 4,
            untracked_flows: 5,
        }
    }

    fn backend(addr: &str, health: &str, in_rotation: bool) -> BackendView {
        BackendView {
            backend: addr.into(),
            id: 1,
            health: health.into(),
            in_rotation,
            reason: String::new(),
            last_probe: None,
            weight: 1,
            drained: false,
            admin: "none".into(),
            next_hop: None,
            slots: 0,
            share: 0.0,
            flows: 7,
            counters: counters(50),
        }
    }

    fn service(name: &str) -> ServiceView {
        ServiceView {
            table_fingerprint: None,
            service: name.into(),
            kind: "balanced".into(),
            id: 1,
            table_size: 251,
            backends: 2,
            in_rotation: 1,
            probe: None,
            probe_via: "direct".into(),
            probe_interval: "15s".into(),
            probe_timeout: "5s".into(),
            unhealthy_after: 2,
            healthy_after: 1,
            when_all_down: "drop".into(),
            established: "keep".into(),
            internal: "none".into(),
            hairpin: "drop".into(),
            icmp_echo: true,
            replies: "tracked".into(),
            distribution: "5-tuple".into(),
            idle_timeout: "4m".into(),
            tcp_reset: false,
            mode: "dnat".into(),
            counters: counters(100),
        }
    }

    fn views(svc: &str, backends: Vec<BackendView>) -> (StatusView, StatsView) {
        let status = StatusView {
            version: "0.1.0".into(),
            api_version: 1,
            pid: 1,
            interfaces: vec!["eth0".into()],
            xdp_mode: "native".into(),
            pin_dir: None,
            services: 1,
            backends: backends.len(),
            backends_unresolved: 0,
            client_routes: Vec::new(),
            ring_slots_used: 502,
            ring_slots: 8_388_608,
            conntrack_flows: 1_048_576,
            swap_holds: 0,
            xmit_counting: "on".into(),
            xmit_failures: Vec::new(),
            trace: "off".into(),
            announce_table: 19521,
            announced: vec!["203.0.113.10".into()],
            vips: vec![ServiceStatus {
                service: svc.into(),
                table_fingerprint: None,
                backends,
            }],
            outbound: vec![crate::api::OutboundView {
                name: "web".into(),
                frontends: vec!["203.0.113.10".into()],
                ports_per_backend: 64,
                protocols: vec!["tcp".into()],
                mode: "stateful".into(),
                inside: Vec::new(),
                idle_timeout_tcp: "4m".into(),
                idle_timeout_udp: "60s".into(),
                backends: vec![
                    crate::api::OutboundBackendView {
                        backend: "192.0.2.11".into(),
                        frontend: Some("203.0.113.10".into()),
                        first_port: 1024,
                        last_port: 1087,
                        ports_in_use: 16,
                        flows: 20,
                        peak: 32,
                        via_pip: None,
                    },
                    // Not placed: no series.
                    crate::api::OutboundBackendView {
                        backend: "192.0.2.12".into(),
                        frontend: None,
                        first_port: 0,
                        last_port: 0,
                        ports_in_use: 0,
                        flows: 0,
                        peak: 0,
                        via_pip: None,
                    },
                ],
                held: Vec::new(),
            }],
        };
        let stats = StatsView {
            reasons: BTreeMap::from([("forward".into(), 42), ("drop_ttl".into(), 0)]),
            services: vec![service(svc)],
            flows_expired: BTreeMap::from([("idle".into(), 3), ("syn".into(), 1)]),
            tcp_resets: 2,
            tcp_reset_errors: 0,
            sweeps: 9,
            sweep_errors: 1,
            probe_tunnel: BTreeMap::from([("sent".into(), 6), ("no_route".into(), 1)]),
            xmit_failures: vec![crate::api::XmitFailView {
                interface: "l0".into(),
                ifindex: 2,
                redirect: 5,
                tx: 1,
                aborted: 0,
            }],
        };
        (status, stats)
    }

    fn sample_views() -> (StatusView, StatsView) {
        views(
            "203.0.113.10:80/tcp",
            vec![
                backend("192.0.2.11:80", "up", true),
                backend("192.0.2.12:80", "down", false),
            ],
        )
    }

    /// Name, labels, value (every sample value parses as a float; counts are whole).
    type Sample = (String, Vec<(String, String)>, f64);

    /// A strict reader of one sample line, `name{label="value",...} value`, undoing the escapes.
    fn parse_sample(line: &str) -> Option<Sample> {
        let is_name = |s: &str, colon: bool| {
            let mut cs = s.chars();
            cs.next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
        };
        let end = line.find(['{', ' '])?;
        let name = &line[..end];
        if !is_name(name, true) {
            return None;
        }
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                let eq = rest.find('=')?;
                let key = &rest[..eq];
                if !is_name(key, false) {
                    return None;
                }
                rest = rest[eq + 1..].strip_prefix('"')?;
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let close = loop {
                    match chars.next()? {
                        (i, '"') => break i,
                        (_, '\\') => value.push(match chars.next()?.1 {
                            '\\' => '\\',
                            '"' => '"',
                            'n' => '\n',
                            _ => return None,
                        }),
                        (_, '\n') => return None,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.to_owned(), value));
                rest = &rest[close + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else {
                    rest = rest.strip_prefix('}')?;
                    break;
                }
            }
        }
        let value = rest.strip_prefix(' ')?.parse().ok()?;
        Some((name.to_owned(), labels, value))
    }

    /// Checks the whole text against the format's rules; returns the samples.
    fn check_exposition(text: &str) -> Vec<Sample> {
        assert!(text.ends_with('\n'), "the last line must end in a newline");
        let mut help = HashSet::new();
        let mut types = BTreeMap::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("# HELP ") {
                let name = h.split(' ').next().unwrap();
                assert!(help.insert(name.to_owned()), "second HELP for {name}");
                current = Some(name.to_owned());
            } else if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap();
                assert_eq!(
                    current.as_deref(),
                    Some(name),
                    "TYPE {name} not after its HELP"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "second TYPE for {name}"
                );
                assert_eq!(
                    kind == "counter",
                    name.ends_with("_total"),
                    "{name} is a {kind}: counters and only counters end in _total"
                );
            } else {
                let s = parse_sample(line).unwrap_or_else(|| panic!("malformed line {line:?}"));
                assert_eq!(
                    current.as_deref(),
                    Some(s.0.as_str()),
                    "{line:?} outside its family"
                );
                assert!(types.contains_key(&s.0), "{line:?} before its TYPE");
                samples.push(s);
            }
        }
        samples
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
        let want: BTreeSet<_> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let found: Vec<_> = samples
            .iter()
            .filter(|(n, l, _)| n == name && l.iter().cloned().collect::<BTreeSet<_>>() == want)
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        let v = found[0].2;
        assert!(v.fract() == 0.0 && v >= 0.0, "{name}: {v} is not a count");
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked whole and non-negative"
        )]
        let n = v as u64;
        n
    }

    #[test]
    fn render_is_well_formed_and_complete() {
        let (status, stats) = sample_views();
        let text = render(&status, &stats);
        let s = check_exposition(&text);
        let svc = ("service", "203.0.113.10:80/tcp");
        let b1 = ("backend", "192.0.2.11:80");
        let b2 = ("backend", "192.0.2.12:80");
        assert_eq!(value(&s, "lb_agent_up", &[]), 1);
        assert_eq!(
            value(
                &s,
                "lb_agent_info",
                &[("version", "0.1.0"), ("xdp_mode", "native")]
            ),
            1
        );
        assert_eq!(value(&s, "lb_services", &[]), 1);
        assert_eq!(value(&s, "lb_backends", &[]), 2);
        assert_eq!(value(&s, "lb_ring_slots_used", &[]), 502);
        assert_eq!(value(&s, "lb_conntrack_flows_limit", &[]), 1_048_576);
        assert_eq!(value(&s, "lb_packets_total", &[("reason", "forward")]), 42);
        assert_eq!(value(&s, "lb_packets_total", &[("reason", "drop_ttl")]), 0);
        assert_eq!(value(&s, "lb_flows_expired_total", &[("cause", "idle")]), 3);
        assert_eq!(value(&s, "lb_flows_expired_total", &[("cause", "syn")]), 1);
        assert_eq!(value(&s, "lb_tcp_resets_total", &[("result", "sent")]), 2);
        assert_eq!(value(&s, "lb_tcp_resets_total", &[("result", "failed")]), 0);
        assert_eq!(value(&s, "lb_sweeps_total", &[("result", "done")]), 9);
        assert_eq!(value(&s, "lb_sweeps_total", &[("result", "failed")]), 1);
        let tunnel = |o| value(&s, "lb_probe_tunnel_packets_total", &[("outcome", o)]);
        assert_eq!((tunnel("sent"), tunnel("no_route")), (6, 1));
        let lost = |way| {
            value(
                &s,
                "lb_xdp_lost_frames_total",
                &[("interface", "l0"), ("way", way)],
            )
        };
        assert_eq!((lost("redirect"), lost("tx"), lost("aborted")), (5, 1, 0));
        assert_eq!(
            value(&s, "lb_service_packets_total", &[svc, ("direction", "in")]),
            100
        );
        assert_eq!(
            value(&s, "lb_service_packets_total", &[svc, ("direction", "out")]),
            101
        );
        assert_eq!(
            value(&s, "lb_service_bytes_total", &[svc, ("direction", "out")]),
            10_100
        );
        assert_eq!(value(&s, "lb_service_new_flows_total", &[svc]), 10);
        assert_eq!(value(&s, "lb_service_acl_drops_total", &[svc]), 3);
        assert_eq!(
            value(
                &s,
                "lb_backend_packets_total",
                &[svc, b1, ("direction", "in")]
            ),
            50
        );
        assert_eq!(
            value(
                &s,
                "lb_backend_bytes_total",
                &[svc, b2, ("direction", "in")]
            ),
            5_000
        );
        assert_eq!(value(&s, "lb_backend_new_flows_total", &[svc, b1]), 5);
        assert_eq!(value(&s, "lb_backend_up", &[svc, b1]), 1);
        assert_eq!(value(&s, "lb_backend_up", &[svc, b2]), 0);
        assert_eq!(value(&s, "lb_backend_flows", &[svc, b2]), 7);
        for (b, current) in [(b1, "up"), (b2, "down")] {
            for state in HEALTH_STATES {
                assert_eq!(
                    value(&s, "lb_backend_health", &[svc, b, ("state", state)]),
                    u64::from(state == current),
                    "{b:?} {state}"
                );
            }
        }
        let ob = [
            ("rule", "web"),
            ("backend", "192.0.2.11"),
            ("frontend", "203.0.113.10"),
        ];
        assert_eq!(value(&s, "lb_outbound_ports", &ob), 64);
        assert_eq!(value(&s, "lb_outbound_ports_in_use", &ob), 16);
        assert_eq!(value(&s, "lb_outbound_ports_peak", &ob), 32);
        assert_eq!(value(&s, "lb_outbound_flows", &ob), 20);
        assert!(!text.contains("backend=\"192.0.2.12\",frontend"), "{text}");
        // The exact lines a reader of the README sees.
        for line in [
            "lb_outbound_port_use_ratio{rule=\"web\",backend=\"192.0.2.11\",frontend=\"203.0.113.10\"} 0.25",
            "# TYPE lb_packets_total counter",
            "lb_packets_total{reason=\"forward\"} 42",
            "lb_backend_up{service=\"203.0.113.10:80/tcp\",backend=\"192.0.2.11:80\"} 1",
            "lb_agent_up 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn no_services_still_renders_agent_health() {
        let (mut status, mut stats) = sample_views();
        status.vips.clear();
        stats.services.clear();
        let s = check_exposition(&render(&status, &stats));
        assert_eq!(value(&s, "lb_agent_up", &[]), 1);
        assert!(s.iter().all(|(n, ..)| !n.starts_with("lb_backend_")));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        escape_label(&mut out, "a\\b\"c\nd");
        assert_eq!(out, r#"a\\b\"c\nd"#);
        let (status, stats) = views("x\"}\n{y=\"1\\", vec![backend("z", "up", true)]);
        let text = render(&status, &stats);
        assert!(
            text.contains(r#"lb_backend_up{service="x\"}\n{y=\"1\\",backend="z"} 1"#),
            "{text}"
        );
        check_exposition(&text);
    }

    #[test]
    fn flag_takes_a_port_or_an_address() {
        assert_eq!(parse_listen("9464"), Ok("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            parse_listen("0.0.0.0:9100"),
            Ok("0.0.0.0:9100".parse().unwrap())
        );
        assert_eq!(
            parse_listen("[::1]:9464"),
            Ok("[::1]:9464".parse().unwrap())
        );
        for bad in [
            "",
            "nope",
            "65536",
            "localhost:9464",
            "1.2.3.4",
            "1.2.3.4:99999",
            ":9464",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.starts_with("--metrics: "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1"), Route::Refuse(404, "Not Found"));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1"),
            Route::Refuse(405, "Method Not Allowed")
        );
        assert_eq!(route(b"GET /metrics"), Route::Refuse(400, "Bad Request"));
        assert_eq!(
            route(b"\x16\x03\x01 garbage"),
            Route::Refuse(400, "Bad Request")
        );
        assert!(reply(405, "Method Not Allowed", "").contains("\r\nAllow: GET\r\n"));
        let ok = reply(200, "OK", "lb_agent_up 1\n");
        assert!(ok.contains("\r\nContent-Type: text/plain; version=0.0.4"));
        assert!(ok.ends_with("\r\nContent-Length: 14\r\nConnection: close\r\n\r\nlb_agent_up 1\n"));
    }

    proptest! {
        #[test]
        fn any_label_value_gives_well_formed_lines(
            svc in any::<String>(),
            be in any::<String>(),
            health in prop::sample::select(&HEALTH_STATES[..]),
            reason in "[a-z_]{1,20}",
        ) {
            let (status, mut stats) = views(&svc, vec![backend(&be, health, true)]);
            stats.reasons.insert(reason.clone(), 5);
            let s = check_exposition(&render(&status, &stats));
            let up = [("service", svc.as_str()), ("backend", be.as_str())];
            prop_assert_eq!(value(&s, "lb_backend_up", &up), 1);
            prop_assert_eq!(value(&s, "lb_service_new_flows_total", &[("service", &svc)]), 10);
            prop_assert_eq!(value(&s, "lb_packets_total", &[("reason", &reason)]), 5);
        }
    }
}
