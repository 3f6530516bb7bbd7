//! `cargo xtask bench`: the numbers that say whether the fast path is fast. Timings live here,
//! never in tests. Every part runs inside namespaces it creates, bounded in packets and time,
//! and reports ratios against baselines measured in the same run: absolute figures vary
//! between machines, ratios from one run are what to compare.
//!
//! 1. [`cost`]: nanoseconds per packet in the kernel, per traffic class (`BPF_PROG_TEST_RUN`);
//!    [`ctvariants`]: the conntrack variants' insert cost with one and two CPUs sending.
//! 2. [`throughput`]: packets per second through the real path (generator → LB → sinks), in
//!    DNAT and in each floating-IP (DSR) mode, next to the minimal XDP forwarder and nftables
//!    DNAT on the same topology.
//! 3. [`scale`]: the established-flow cost as services, backends, flows and ACL rules grow.
//! 4. [`control`]: Maglev build time, provisioning many services, failover time, agent memory.

pub mod control;
pub mod cost;
pub mod ctvariants;
pub mod plot;
pub mod scale;
pub mod throughput;

use std::{path::PathBuf, time::Duration};

use serde_json::{Value, json};

/// What to run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// A small version of every part (seconds): proves the bench works, says nothing about speed.
    pub quick: bool,
    /// Part 1 only, printed, nothing written.
    pub cost_only: bool,
    /// Where `results.json` and `results.png` go.
    pub out: PathBuf,
}

/// Summary statistics of a set of timings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub n: usize,
    pub mean_ns: f64,
    pub p50_ns: f64,
    pub p90_ns: f64,
}

impl Stats {
    /// Mean, median and 90th percentile.
    #[must_use]
    pub fn of(times: &[Duration]) -> Self {
        if times.is_empty() {
            return Self::default();
        }
        let mut ns: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e9).collect();
        ns.sort_by(f64::total_cmp);
        let at = |q: f64| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "an index into a short vector"
            )]
            let i = ((ns.len() - 1) as f64 * q).round() as usize;
            ns[i]
        };
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let mean = ns.iter().sum::<f64>() / ns.len() as f64;
        Self {
            n: ns.len(),
            mean_ns: mean,
            p50_ns: at(0.5),
            p90_ns: at(0.9),
        }
    }

    fn json(self) -> Value {
        json!({"runs": self.n, "mean_ns": round1(self.mean_ns), "p50_ns": round1(self.p50_ns), "p90_ns": round1(self.p90_ns)})
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The CPU the measured side runs on: the last one.
#[must_use]
pub fn measured_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1
}

/// Pins thread `pid` (0: the calling thread) to `cpu`; best effort (a thread may be gone).
pub fn pin(pid: i32, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity get valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

/// A progress line on stderr.
pub fn progress(what: &str) {
    eprintln!("bench: {what}");
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Results {
    pub cost: Vec<cost::Row>,
    pub v6_pairs: Vec<cost::Pair>,
    pub sizes: Vec<cost::ProgSize>,
    pub ct_variants: Vec<ctvariants::Row>,
    pub throughput: Vec<throughput::Row>,
    pub scale: Vec<scale::Curve>,
    pub control: control::Results,
}

/// Runs every part, writes `results.json` and `results.png` under `opts.out`, prints the
/// summary table.
///
/// # Errors
/// A part fails (each says what went wrong), or the results cannot be written.
pub fn run(opts: &Opts) -> anyhow::Result<()> {
    crate::require_root();
    let q = opts.quick;
    let started = std::time::Instant::now();
    let mut r = Results::default();
    progress("part 1/4: cost per packet (BPF_PROG_TEST_RUN)");
    // 50 000 runs: the new-5-tuple class uses a source port per run, and stays below 64 Ki.
    (r.cost, r.sizes) = cost::run(if q { 2_000 } else { 50_000 })?;
    r.v6_pairs = cost::pairs(if q { 2_000 } else { 25_000 })?;
    if opts.cost_only {
        println!("{}", cost_summary(&r));
        return Ok(());
    }
    r.cost
        .push(cost::under_flood(if q { 2_000 } else { 50_000 })?);
    r.cost
        .extend(cost::trace_hooks(if q { 2_000 } else { 50_000 })?);
    // 25 000 inserts per CPU: two CPUs' worth stays below the maps' 64 Ki entries (and each
    // CPU's half of them), so every variant measures inserts, not evictions.
    r.ct_variants = ctvariants::run(if q { 2_000 } else { 25_000 })?;
    progress("part 2/4: throughput through the real path");
    r.throughput = throughput::run(if q { 50_000 } else { 2_000_000 }, if q { 1 } else { 5 })?;
    progress("part 3/4: scale curves");
    r.scale = scale::run(q)?;
    progress("part 4/4: control plane");
    r.control = control::run(q, &r.scale)?;
    std::fs::create_dir_all(&opts.out)?;
    let json = to_json(&r, q, started.elapsed());
    std::fs::write(
        opts.out.join("results.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    plot::draw(&r, &opts.out.join("results.png"))?;
    println!("{}", summary(&r));
    println!(
        "results: {} and {}",
        opts.out.join("results.json").display(),
        opts.out.join("results.png").display()
    );
    Ok(())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "kernel": kernel.trim(),
    })
}

/// The cost of the row named `name`, by median.
fn p50(r: &Results, name: &str) -> Option<f64> {
    r.cost
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.stats.p50_ns)
}

fn to_json(r: &Results, quick: bool, took: Duration) -> Value {
    let floor = p50(r, "floor: xdp_pass").unwrap_or(0.0);
    let cost: Vec<Value> = r
        .cost
        .iter()
        .map(|c| {
            let mut v = c.stats.json();
            v["class"] = json!(c.name);
            v["above_floor_p50_ns"] = json!(round1(c.stats.p50_ns - floor));
            v
        })
        .collect();
    let tput: Vec<Value> = r.throughput.iter().map(throughput::Row::json).collect();
    let scale: Vec<Value> = r.scale.iter().map(scale::Curve::json).collect();
    json!({
        "quick": quick,
        "seconds": took.as_secs(),
        "machine": machine(),
        "cost_per_packet": cost,
        "conntrack_variants": r.ct_variants.iter().map(|v| { let mut j = v.stats.json(); j["variant"] = json!(v.variant); j["cpus"] = json!(v.cpus); j["above_floor_p50_ns"] = json!(round1(v.stats.p50_ns - floor)); j }).collect::<Vec<_>>(),
        "program_sizes": r.sizes.iter().map(|p| json!({"program": p.name, "jited_bytes": p.jited_bytes, "xlated_bytes": p.xlated_bytes})).collect::<Vec<_>>(),
        "throughput": tput,
        "ratios": ratios(r),
        "scale": scale,
        "control_plane": r.control.json(),
    })
}

/// The target ratios, from this run.
fn ratios(r: &Results) -> Value {
    let mpps = |n: &str| {
        r.throughput
            .iter()
            .find(|t| t.name == n)
            .map(|t| t.delivered_mpps)
    };
    let lb = mpps(throughput::LB);
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => json!((a / b * 1000.0).round() / 1000.0),
        _ => Value::Null,
    };
    let scale: Vec<Value> = r
        .scale
        .iter()
        .map(|c| json!({"curve": c.name, "largest_over_smallest": c.ratio().map(|x| (x * 1000.0).round() / 1000.0)}))
        .collect();
    let floor = p50(r, "floor: xdp_pass").unwrap_or(0.0);
    let v6: serde_json::Map<String, Value> = r
        .v6_pairs
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                div(Some(p.v6.p50_ns - floor), Some(p.v4.p50_ns - floor)),
            )
        })
        .collect();
    // DSR against DNAT, in the direction both carry: the figure each mode's flows cost the LB
    // per request packet. (DNAT carries the replies too; DSR never sees them.)
    let dsr: serde_json::Map<String, Value> = throughput::DSR
        .iter()
        .map(|(mode, name)| ((*mode).to_owned(), div(mpps(name), lb)))
        .collect();
    json!({
        "ipv6_over_ipv4_above_floor": v6,
        "dsr_over_dnat_forward_direction": dsr,
        "lb_over_minimal_forwarder": div(lb, mpps(throughput::FWD)),
        "lb_over_nftables_dnat": div(lb, mpps(throughput::NFT)),
        "scale": scale,
    })
}

/// The cost table and the IPv6 / IPv4 ratios.
#[must_use]
pub fn cost_summary(r: &Results) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let floor = p50(r, "floor: xdp_pass").unwrap_or(0.0);
    let _ = writeln!(
        s,
        "\nCost per packet (BPF_PROG_TEST_RUN, single runs; best of 5 rounds)"
    );
    let _ = writeln!(
        s,
        "| class | p50 ns | mean ns | p90 ns | p50 above floor |\n|---|---:|---:|---:|---:|"
    );
    for c in &r.cost {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            c.name,
            c.stats.p50_ns,
            c.stats.mean_ns,
            c.stats.p90_ns,
            c.stats.p50_ns - floor
        );
    }
    let _ = writeln!(
        s,
        "\nIPv6 / IPv4, same class, measured in alternation (p50 above floor; target ≤ 1.3)"
    );
    for p in &r.v6_pairs {
        let _ = writeln!(
            s,
            "* {}: {:.0} / {:.0} ns = {:.2}",
            p.name,
            p.v6.p50_ns - floor,
            p.v4.p50_ns - floor,
            (p.v6.p50_ns - floor) / (p.v4.p50_ns - floor)
        );
    }
    s
}

/// The summary table printed at the end.
#[must_use]
pub fn summary(r: &Results) -> String {
    use std::fmt::Write as _;
    let mut s = cost_summary(r);
    let floor = p50(r, "floor: xdp_pass").unwrap_or(0.0);
    let _ = writeln!(
        s,
        "\nConntrack variants: a new flow's insert (p50 ns of the slowest sending CPU)"
    );
    let _ = writeln!(
        s,
        "| variant | CPUs sending | p50 ns | above floor |\n|---|---:|---:|---:|"
    );
    for v in &r.ct_variants {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.0} |",
            v.variant,
            v.cpus,
            v.stats.p50_ns,
            v.stats.p50_ns - floor
        );
    }
    let _ = writeln!(
        s,
        "\nProgram sizes (as loaded: JIT image, verified instructions)"
    );
    for p in &r.sizes {
        let _ = writeln!(
            s,
            "* {}: {} bytes JIT, {} bytes of instructions",
            p.name, p.jited_bytes, p.xlated_bytes
        );
    }
    let _ = writeln!(
        s,
        "\nThroughput (generator → LB namespace → sink, 64-byte UDP, 1024 flows; best of 5 rounds)"
    );
    let _ = writeln!(
        s,
        "| path | sent | delivered | Mpps delivered |\n|---|---:|---:|---:|"
    );
    for t in &r.throughput {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.3} |",
            t.name, t.sent, t.delivered, t.delivered_mpps
        );
    }
    let rt = ratios(r);
    let _ = writeln!(
        s,
        "\nRatios: LB / minimal forwarder = {}, LB / nftables DNAT = {}",
        rt["lb_over_minimal_forwarder"], rt["lb_over_nftables_dnat"]
    );
    let _ = writeln!(
        s,
        "Floating IP (DSR) / DNAT, the client's direction (DSR's replies never reach the LB): {}",
        rt["dsr_over_dnat_forward_direction"]
    );
    let _ = writeln!(s, "\nScale (p50 ns per packet)");
    for c in &r.scale {
        let pts: Vec<String> = c
            .points
            .iter()
            .map(|p| format!("{}: {:.0}", p.x, p.stats.p50_ns))
            .collect();
        let _ = writeln!(
            s,
            "* {} ({}): {}; largest/smallest = {}",
            c.name,
            c.measures,
            pts.join(", "),
            c.ratio().map_or("-".into(), |x| format!("{x:.2}"))
        );
    }
    let _ = writeln!(s, "\nControl plane");
    s.push_str(&r.control.table());
    s
}
