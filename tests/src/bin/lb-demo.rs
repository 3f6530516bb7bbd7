//! `cargo xtask demo`: the main job on the embedded default config, in a lab of namespaces.
//!
//! Builds the lab (client, LB, three backends with HTTP and UDP-echo servers), starts
//! `lb agent` in native XDP mode, sends real requests from the client to the VIP, prints which
//! backend answered each and the LB's counters, and tears everything down: at the end, on
//! failure, and on Ctrl-C.
use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
};

use lb_integration::lab::{DEMO_CONFIG, Lab, VIP, VIP6};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

fn main() -> ExitCode {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nodes = match args.as_slice() {
        [] => None,
        [flag, n] if flag == "--nodes" => {
            if let Ok(n @ 2..=8) = n.parse::<usize>() {
                Some(n)
            } else {
                eprintln!("--nodes: {n:?} is not a node count in 2..=8");
                return ExitCode::from(2);
            }
        }
        _ => {
            eprintln!("usage: lb-demo [--nodes N]");
            return ExitCode::from(2);
        }
    };
    let result = match nodes {
        Some(n) => cluster::run(n),
        None => run(),
    };
    if nodes.is_some() {
        return match result {
            Ok(()) => {
                println!(
                    "\nlab torn down. demo passed: every node gave every flow the same backend, and traffic kept flowing when one stopped."
                );
                ExitCode::SUCCESS
            }
            Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
                eprintln!("\ninterrupted: lab torn down (namespaces, agents, daemons, pins).");
                ExitCode::from(130)
            }
            Err(e) => {
                eprintln!("\nlab torn down. demo failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // `run` has dropped the lab by now: namespaces, agent, servers and pins are gone.
    match result {
        Ok(()) => {
            println!("\nlab torn down. demo passed: every backend answered through both VIPs.");
            ExitCode::SUCCESS
        }
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("\ninterrupted: lab torn down (namespaces, agent, servers, pins).");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\nlab torn down. demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    println!("== building the lab: client ns, LB ns, 3 backend ns (veth pairs, native XDP) ==");
    let mut lab = Lab::new(3)?;
    println!("   client 198.51.100.2 → VIP {VIP} via LB 198.51.100.1; backends 192.0.2.11-13");
    println!(
        "   dual stack: client 2001:db8:1::2 → VIP {VIP6} via LB 2001:db8:1::1; backends 2001:db8:2::11-13"
    );
    interrupted()?;
    println!("== starting `lb agent` with the embedded default config ==");
    for l in DEMO_CONFIG.lines() {
        println!("   | {l}");
    }
    lab.start_agent(DEMO_CONFIG)?;
    // Probed backends take new flows after their first good probe (milliseconds here).
    lab.wait_ready()?;
    println!("\n$ lb vip list\n{}", lab.lb(&["vip", "list"])?);

    let mut answered: BTreeMap<String, u32> = BTreeMap::new();
    println!("\n== 12 HTTP requests from the client, each on a new connection ==");
    for i in 1..=12 {
        interrupted()?;
        let who = lab.http_get(80)?;
        println!("   GET http://{VIP}/  #{i:<2} → answered by {who}");
        *answered.entry(who).or_default() += 1;
    }
    println!("\n== 6 UDP requests to {VIP}:53 ==");
    for i in 1..=6 {
        interrupted()?;
        let who = lab.udp_ask(53, &format!("query-{i}"))?;
        println!("   UDP {VIP}:53 query-{i} → echoed by {who}");
        *answered.entry(who).or_default() += 1;
    }
    let mut answered6: BTreeMap<String, u32> = BTreeMap::new();
    println!("\n== 12 HTTP requests over IPv6, each on a new connection ==");
    for i in 1..=12 {
        interrupted()?;
        let who = lab.http_get6(80)?;
        println!("   GET http://[{VIP6}]/  #{i:<2} → answered by {who}");
        *answered6.entry(who).or_default() += 1;
    }
    println!("\n== 6 UDP requests to [{VIP6}]:53 ==");
    for i in 1..=6 {
        interrupted()?;
        let who = lab.udp_flow6(53)?.ask(&format!("query6-{i}"))?;
        println!("   UDP [{VIP6}]:53 query6-{i} → echoed by {who}");
        *answered6.entry(who).or_default() += 1;
    }
    println!("\n$ lb status\n{}", lab.lb(&["status"])?);
    println!("\n$ lb stats\n{}", lab.lb(&["stats"])?);
    println!("\nanswers per backend: IPv4 {answered:?}, IPv6 {answered6:?}");
    let missing: Vec<String> = lab
        .backends
        .iter()
        .map(|b| b.name.clone())
        .filter(|n| !answered.contains_key(n) || !answered6.contains_key(n))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!("backends that did not answer over both families: {missing:?}");
    }
    let st = lab.stop_agent()?;
    println!("agent stopped on SIGTERM ({st}); XDP detached, pins removed");
    Ok(())
}

/// `cargo xtask demo --nodes N`: the scale-out lab (`lab::cluster`).
mod cluster {
    use std::net::Ipv4Addr;

    use lb_integration::lab::cluster::{CLIENT, Cluster, http_get_here};

    use super::interrupted;

    const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const CONFIG: &str = r#"
[[service]]
vip = "203.0.113.10:80/tcp"
backends = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
floating_ip = "l2"
probe = "tcp:80"
probe_interval = "200ms"
"#;

    pub fn run(n: usize) -> anyhow::Result<()> {
        println!("== building the scale-out lab: client, router, {n} LB nodes, 3 backends ==");
        println!(
            "   each node: `lb agent` (native XDP) and BIRD with the config `lb bgp example` prints"
        );
        for l in CONFIG.lines() {
            println!("   | {l}");
        }
        let mut c = Cluster::new(n, 3, &[VIP], CONFIG)?;
        let all: Vec<Ipv4Addr> = c.nodes.iter().map(|n| n.addr).collect();
        c.wait_next_hops(VIP, &all)?;
        println!(
            "\n$ ip route show {VIP} (in the router: learned over BGP, through a resilient group)\n{}",
            c.router.ip(&["route", "show", &format!("{VIP}/32")])?
        );
        println!(
            "$ ip nexthop show (a node's loss moves only its own buckets)\n{}",
            c.router.ip(&["nexthop", "show"])?
        );
        println!("== one flow's backend from each node's point of view (lb explain) ==");
        for sport in [40001u16, 40002, 40003, 40004] {
            interrupted()?;
            let mut picks = Vec::new();
            for node in &c.nodes {
                let e = node.lb_json(&[
                    "explain",
                    &format!("{CLIENT}:{sport}"),
                    "203.0.113.10:80/tcp",
                ])?;
                picks.push(e["backend"].as_str().unwrap_or("-").to_owned());
            }
            println!("   {CLIENT}:{sport} → {VIP}:80: {}", picks.join(" | "));
            anyhow::ensure!(
                picks.windows(2).all(|w| w[0] == w[1]),
                "the nodes disagree: {picks:?}"
            );
        }
        for (i, node) in c.nodes.iter().enumerate() {
            let s = node.lb_json(&["status"])?;
            println!(
                "   node {} ({}): table fingerprint {}",
                i + 1,
                node.addr,
                s["vips"][0]["table_fingerprint"].as_str().unwrap_or("-")
            );
        }
        println!("\n== 12 connections from the client, spread by the router ==");
        for i in 1..=12 {
            interrupted()?;
            let who = c.client.enter(move || http_get_here(VIP))?;
            println!("   GET http://{VIP}/ #{i:<2} → answered by {who}");
        }
        println!("\n== node 1 stops (SIGTERM: its VIPs withdrawn, a 2 s drain, then it exits) ==");
        c.stop(0)?;
        c.wait_next_hops(VIP, &all[1..])?;
        println!(
            "$ ip route show {VIP} (in the router)\n{}",
            c.router.ip(&["route", "show", &format!("{VIP}/32")])?
        );
        println!("== 12 more connections ==");
        for i in 1..=12 {
            interrupted()?;
            let who = c.client.enter(move || http_get_here(VIP))?;
            println!("   GET http://{VIP}/ #{i:<2} → answered by {who}");
        }
        Ok(())
    }
}
