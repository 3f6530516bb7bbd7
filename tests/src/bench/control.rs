//! Part 4: the control plane. Maglev table builds, provisioning many services (from the
//! scale curve's largest services point), the time from a backend failing to its removal from
//! rotation, and the agent's resident memory with many services.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use lb_common::{
    addr,
    maglev::{TableBackend, build_table},
};
use serde_json::{Value, json};

use super::{Stats, progress, scale::Curve};
use crate::lab::Lab;

/// Everything part 4 measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    /// (backends, build time) for a 65537-slot table.
    pub maglev: Vec<(u64, Stats)>,
    /// (services, time to provision them into the maps).
    pub provision: Option<(u64, Duration)>,
    /// Probe settings and the time from killing a backend's server until the agent had taken
    /// it out of rotation.
    pub failover: Option<(String, Duration)>,
    /// (services, agent start-to-ready time, agent resident memory in KiB).
    pub agent: Option<(u64, Duration, u64)>,
    /// Reloads of a running agent: (services, adding them, removing them again, log lines the
    /// removal wrote).
    pub churn: Option<(u64, Duration, Duration, usize)>,
}

impl Results {
    #[must_use]
    pub fn json(&self) -> Value {
        let maglev: Vec<Value> = self
            .maglev
            .iter()
            .map(|(n, s)| json!({"slots": 65_537, "backends": n, "p50_ms": s.p50_ns / 1e6, "runs": s.n}))
            .collect();
        json!({
            "maglev_build": maglev,
            "provision": self.provision.map(|(n, d)| json!({"services": n, "ms": d.as_millis()})),
            "failover": self.failover.as_ref().map(|(p, d)| json!({"probe": p, "ms": d.as_millis()})),
            "agent": self.agent.map(|(n, d, kib)| json!({"services": n, "start_to_ready_ms": d.as_millis(), "rss_kib": kib})),
            "churn": self.churn.map(|(n, add, del, lines)| json!({"services": n, "add_ms": add.as_millis(), "remove_ms": del.as_millis(), "remove_log_lines": lines})),
        })
    }

    /// The summary table rows.
    #[must_use]
    pub fn table(&self) -> String {
        let mut s = String::from("| measure | value |\n|---|---:|\n");
        for (n, st) in &self.maglev {
            let _ = writeln!(
                s,
                "| Maglev build, 65537 slots × {n} backends | {:.2} ms |",
                st.p50_ns / 1e6
            );
        }
        if let Some((n, d)) = self.provision {
            let _ = writeln!(
                s,
                "| provision {n} services into the maps | {} ms |",
                d.as_millis()
            );
        }
        if let Some((p, d)) = &self.failover {
            let _ = writeln!(
                s,
                "| backend failure → out of rotation ({p}) | {} ms |",
                d.as_millis()
            );
        }
        if let Some((n, d, kib)) = self.agent {
            let _ = writeln!(
                s,
                "| agent start → ready with {n} services | {} ms |",
                d.as_millis()
            );
            let _ = writeln!(
                s,
                "| agent resident memory with {n} services | {} MiB |",
                kib / 1024
            );
        }
        if let Some((n, add, del, lines)) = self.churn {
            let _ = writeln!(
                s,
                "| reload: add {n} services / remove them again | {} / {} ms ({lines} log lines) |",
                add.as_millis(),
                del.as_millis()
            );
        }
        s
    }
}

/// Runs part 4; `scale` are part 3's curves (their largest services point is the provisioning
/// figure).
///
/// # Errors
/// The lab or the agent fails.
pub fn run(quick: bool, scale: &[Curve]) -> anyhow::Result<Results> {
    let mut r = Results::default();
    let repeats = if quick { 1 } else { 7 };
    for n in [10u64, 100, 1_000] {
        progress(&format!("control: Maglev 65537 × {n}"));
        let bs: Vec<TableBackend> = (0..n)
            .map(|i| TableBackend {
                id: u32::try_from(i + 1).expect("small"),
                addr: addr::v4_mapped([192, 0, 2, u8::try_from(i % 250).expect("small")]),
                port: u16::try_from(10_000 + i / 250).expect("small"),
                weight: 1,
            })
            .collect();
        let times: Vec<Duration> = (0..repeats)
            .map(|_| {
                let t = Instant::now();
                let table = build_table(&bs, 65_537);
                let d = t.elapsed();
                assert_eq!(table.len(), 65_537);
                d
            })
            .collect();
        r.maglev.push((n, Stats::of(&times)));
    }
    r.provision = scale
        .iter()
        .find(|c| c.name == "services")
        .and_then(|c| c.points.last())
        .map(|p| (p.x, p.provision));
    r.failover = Some(failover()?);
    r.agent = Some(agent_memory(if quick { 100 } else { 10_000 })?);
    r.churn = Some(churn(if quick { 100 } else { 10_000 })?);
    Ok(r)
}

/// Kills backend 1's server and times until `lb status` shows it out of rotation; then checks
/// that new connections avoid it.
fn failover() -> anyhow::Result<(String, Duration)> {
    progress("control: failover");
    let probe = "tcp, every 200ms, timeout 100ms, unhealthy after 2 failures";
    let mut lab = Lab::new(2)?;
    lab.start_agent(
        "[[service]]\nvip = \"203.0.113.10:80/tcp\"\nbackends = [\"192.0.2.11\", \"192.0.2.12\"]\ntable_size = 251\n\
         probe = \"tcp\"\nprobe_interval = \"200ms\"\nprobe_timeout = \"100ms\"\nunhealthy_after = 2\n",
    )?;
    lab.wait_ready()?;
    let t0 = Instant::now();
    lab.backends[0].stop_server();
    let out = |s: &Value| {
        s["vips"].as_array().is_some_and(|v| {
            v.iter()
                .flat_map(|v| v["backends"].as_array().into_iter().flatten())
                .any(|b| {
                    b["backend"]
                        .as_str()
                        .is_some_and(|a| a.starts_with("192.0.2.11:"))
                        && b["in_rotation"] == false
                })
        })
    };
    let mut took = None;
    while t0.elapsed() < Duration::from_secs(10) {
        if lab.lb_json(&["status"]).is_ok_and(|s| out(&s)) {
            took = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = took.context("backend 1 was not taken out within 10 s")?;
    for _ in 0..10 {
        let b = lab.http_get(80)?;
        ensure!(b == "b2", "a new connection went to {b} after failover");
    }
    Ok((probe.into(), took))
}

/// The config of `n` services with one backend each, on 240 VIP addresses.
fn many_services(n: u64) -> anyhow::Result<String> {
    let mut cfg = format!(
        "[agent]\nring_slots = {}\n",
        (n * 251 + 4096).next_power_of_two()
    );
    for i in 0..n {
        let ip = std::net::Ipv4Addr::new(203, 0, 113, 10 + u8::try_from(i % 240)?);
        let _ = writeln!(
            cfg,
            "[[service]]\nvip = \"{ip}:{}/tcp\"\nbackends = [\"192.0.2.11\"]\ntable_size = 251\n",
            80 + i / 240
        );
    }
    Ok(cfg)
}

/// A running agent reloads `n` services in, then out again: the time until `lb status` shows
/// each, and the log lines the removal wrote (a change logs a summary, not a line per entry).
///
/// # Errors
/// The lab or the agent fails, or the agent does not converge within 120 s.
pub fn churn(n: u64) -> anyhow::Result<(u64, Duration, Duration, usize)> {
    progress(&format!("control: reload {n} services in and out"));
    let mut lab = Lab::new(1)?;
    // The ring is sized for `n` from the start (it is a load-time setting).
    let full = many_services(n)?;
    let agent_part = full.lines().next().unwrap_or_default().to_owned();
    lab.start_agent(&format!("{agent_part}\n"))?;
    let services = |lab: &Lab| -> u64 {
        lab.lb_json(&["status"])
            .ok()
            .and_then(|s| s["services"].as_u64())
            .unwrap_or(u64::MAX)
    };
    let wait = |lab: &Lab, want: u64| -> anyhow::Result<Duration> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_mins(2) {
            if services(lab) == want {
                return Ok(t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        anyhow::bail!("the agent did not reach {want} services in 120 s")
    };
    lab.reload(&full)?;
    let add = wait(&lab, n)?;
    let lines_before = lab.agent_log().lines().count();
    lab.reload(&format!("{agent_part}\n"))?;
    let remove = wait(&lab, 0)?;
    let lines = lab.agent_log().lines().count() - lines_before;
    Ok((n, add, remove, lines))
}

/// Starts the agent with `n` services and reads its resident memory once it is ready.
fn agent_memory(n: u64) -> anyhow::Result<(u64, Duration, u64)> {
    progress(&format!("control: agent with {n} services"));
    let mut lab = Lab::new(1)?;
    let cfg = many_services(n)?;
    let t = Instant::now();
    lab.start_agent(&cfg)?;
    let ready = t.elapsed();
    let pid = lab.agent_pid().context("agent pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok((n, ready, kib))
}
