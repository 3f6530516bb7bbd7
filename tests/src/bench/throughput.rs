//! Part 2: packets per second through the real path. The lab topology: the client namespace
//! is the generator, the LB namespace runs the path under test on `l0`, and the two backend
//! namespaces are sinks that count (and drop) what arrives.
//!
//! The generator is the project's XDP live-frames generator (`xdp_gen` with
//! `BPF_PROG_TEST_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES`): every frame gets a new source port
//! (1024 flows) and leaves through `c0` with `XDP_TX`. This kernel has no pktgen; on hosts
//! that have it, `tests/pktgen/` drives the same topology with kernel pktgen.
//!
//! Paths, on the same topology in the same run, each delivering to the same one sink (so the
//! sink side costs the same for all of them, but for the encapsulated frames' extra bytes):
//! * the agent's XDP program (`lb agent`, native mode): a VIP with that one backend;
//! * the same, the service in floating-IP (DSR) mode, `l2`, `ipip` and `gue`: the sink gets
//!   the encapsulated frames (20 and 28 bytes longer for IPIP and GUE);
//! * the minimal XDP forwarder (`xdp_fwd`: MAC rewrite and redirect), our ceiling;
//! * nftables DNAT (no XDP on `l0`; the kernel forwards), what users would otherwise pick.
//!
//! Two CPUs at least are assumed: the generator runs on CPU 0, every NAPI thread (the path
//! under test on `l0`, the sink) on the last CPU, so the figure is the path's capacity rather
//! than a share of the generator's CPU.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use aya::{
    maps::{Array, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};
use lb_common::maps::NextHop;
use serde_json::{Value, json};

use super::{measured_cpu, pin, progress};
use crate::{
    lab::{Lab, backend_ip, peer_program},
    netns::Netns,
    packet::Frame,
};

pub const LB: &str = "lb (agent's XDP program)";
pub const FWD: &str = "minimal XDP forwarder";
pub const NFT: &str = "nftables DNAT";
/// The floating-IP (DSR) paths: the same program, the VIP's service in each encapsulation
/// mode. The LB carries only the client's direction in these modes (the backends answer the
/// client directly), so each figure is the whole of a flow's LB load, where DNAT's [`LB`]
/// figure is half of it for a flow whose replies are as many packets as its requests.
pub const DSR: [(&str, &str); 3] = [
    ("l2", "lb floating IP, l2 (DSR)"),
    ("ipip", "lb floating IP, IPIP (DSR)"),
    ("gue", "lb floating IP, GUE (DSR)"),
];

const FLOWS: u32 = 1024;
const PORT: u16 = 9;

const CONFIG: &str = r#"
[agent]
ring_slots = 4096

[[service]]
vip = "203.0.113.10:9/udp"
backends = ["192.0.2.11"]
table_size = 251
"#;

/// [`CONFIG`] with the service in floating-IP `mode`. The sink drops what arrives, so it needs
/// no decapsulation: it counts the encapsulated frames.
fn dsr_config(mode: &str) -> String {
    format!(
        r#"
[agent]
ring_slots = 4096
encap_source4 = "192.0.2.1"

[[service]]
vip = "203.0.113.10:9/udp"
backends = ["192.0.2.11"]
table_size = 251
floating_ip = "{mode}"
"#
    )
}

const NFT_RULES: &str = "table ip lbbench {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 203.0.113.10 udp dport 9 dnat to 192.0.2.11
  }
}
";

/// One measured path.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub sent: u64,
    pub delivered: u64,
    pub seconds: f64,
    pub delivered_mpps: f64,
}

impl Row {
    #[must_use]
    pub fn json(&self) -> Value {
        json!({
            "path": self.name,
            "sent": self.sent,
            "delivered": self.delivered,
            "seconds": (self.seconds * 1e6).round() / 1e6,
            "delivered_mpps": (self.delivered_mpps * 1e4).round() / 1e4,
        })
    }
}

/// Runs part 2 with `packets` frames per round, and the best of `rounds` rounds per path: on
/// this VM a whole round sometimes stalls (the receiving NAPI thread sleeps with a full ring,
/// and most frames never reach the path), which says nothing about the path.
///
/// # Errors
/// The topology, the agent or a baseline cannot be set up, or a path delivers nothing.
pub fn run(packets: u32, rounds: u32) -> anyhow::Result<Vec<Row>> {
    let mut lab = Lab::new(1)?;
    // The sink: `xdp_count` instead of the lab's `xdp_pass`.
    let name = lab.backends[0].ns.name.clone();
    lab.peer_xdp.retain(|p| p.ns != name);
    let sink = peer_program(&lab.backends[0].ns, "eth0", "xdp_count")?;
    lab.peer_xdp.push(sink);
    // Permanent neighbours on the LB side: no ARP in any measured path.
    for (i, b) in lab.backends.iter().enumerate() {
        let mac = mac_str(b.ns.mac("eth0")?);
        let dev = format!("l{}", i + 1);
        lab.lb.ip(&[
            "neigh",
            "replace",
            &backend_ip(i + 1).to_string(),
            "lladdr",
            &mac,
            "dev",
            &dev,
            "nud",
            "permanent",
        ])?;
    }
    let frame = {
        let mut f = Frame::udp(
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 1024),
            SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), PORT),
        );
        f.smac = lab.client.mac("c0")?;
        f.dmac = lab.lb.mac("l0")?;
        f.payload = vec![0; 18]; // a 60-byte frame: 64 bytes on the wire with the FCS
        f.build()
    };
    // The generator runs on CPU 0 (see `generate`); the LB's receive processing on `l0`
    // runs in its own NAPI thread, pinned to the last CPU, so the path is measured on a CPU
    // of its own rather than sharing the generator's softirq time.
    // GRO on gives `l0` its NAPI instance even without an XDP program (needed for the
    // nftables path, which takes the generator's XDP_TX frames through it), and threaded mode
    // needs one to exist.
    lab.lb.exec("ethtool", &["-K", "l0", "gro", "on"])?;
    lab.lb
        .exec("sh", &["-c", "echo 1 > /sys/class/net/l0/threaded"])
        .context("threaded NAPI on l0")?;
    let mut rows = Vec::new();

    rows.push(agent_row(
        &mut lab, LB, CONFIG, "forward", &frame, packets, rounds,
    )?);
    for (mode, name) in DSR {
        let config = dsr_config(mode);
        rows.push(agent_row(
            &mut lab,
            name,
            &config,
            "forward_encap",
            &frame,
            packets,
            rounds,
        )?);
    }

    progress(&format!("throughput: {FWD}, {packets} frames"));
    let fwd = attach_fwd(&lab)?;
    rows.push(best(rounds, || measure(&lab, FWD, &frame, packets))?.0);
    drop(fwd);

    progress(&format!("throughput: {NFT}, {packets} frames"));
    let rules = lab.tmp.join("nft.rules");
    std::fs::write(&rules, NFT_RULES)?;
    lab.lb
        .exec("nft", &["-f", &rules.to_string_lossy()])
        .context("nftables (apt install nftables; cargo xtask setup does)")?;
    let row = best(rounds, || measure(&lab, NFT, &frame, packets));
    let _ = lab.lb.exec("nft", &["delete", "table", "ip", "lbbench"]);
    rows.push(row?.0);
    Ok(rows)
}

/// One path through the agent's program: the agent started on `config`, the best of `rounds`
/// rounds, checked against the LB's own count of `reason` (a path that delivered frames the
/// program did not count as `reason` measured something else), and the agent stopped again
/// (a plain stop, which detaches the program for the next path).
fn agent_row(
    lab: &mut Lab,
    name: &str,
    config: &str,
    reason: &str,
    frame: &[u8],
    packets: u32,
    rounds: u32,
) -> anyhow::Result<Row> {
    progress(&format!("throughput: {name}, {packets} frames"));
    lab.start_agent(config)?;
    lab.wait_resolved()?;
    let before = lab.reason(reason)?;
    let (row, delivered) = best(rounds, || measure(lab, name, frame, packets))?;
    let counted = lab.reason(reason)? - before;
    ensure!(
        counted >= delivered,
        "{name}: the sinks counted {delivered} frames but the LB counted only {counted} as {reason}",
    );
    lab.stop_agent()?;
    Ok(row)
}

/// The best of `rounds` measurements (by delivered rate), and the frames delivered in all.
fn best(rounds: u32, mut m: impl FnMut() -> anyhow::Result<Row>) -> anyhow::Result<(Row, u64)> {
    let mut best: Option<Row> = None;
    let mut delivered = 0;
    for _ in 0..rounds.max(1) {
        let r = m()?;
        delivered += r.delivered;
        if best
            .as_ref()
            .is_none_or(|b| r.delivered_mpps > b.delivered_mpps)
        {
            best = Some(r);
        }
    }
    Ok((best.expect("at least one round"), delivered))
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `xdp_fwd` on the LB's `l0`, sending everything to the sink.
fn attach_fwd(lab: &Lab) -> anyhow::Result<aya::Ebpf> {
    let ifindex = lab.lb.ifindex("l1")?;
    let nh = NextHop {
        ifindex,
        smac: lab.lb.mac("l1")?,
        dmac: lab.backends[0].ns.mac("eth0")?,
    };
    lab.lb.enter(move || -> anyhow::Result<aya::Ebpf> {
        let mut ebpf = aya::Ebpf::load(lb_userspace::dataplane::BASELINE_OBJ)?;
        let mut m: Array<_, NextHop> = Array::try_from(ebpf.map_mut("FWD_NH").context("FWD_NH")?)?;
        m.set(0, nh, 0)?;
        let p: &mut Xdp = ebpf.program_mut("xdp_fwd").context("xdp_fwd")?.try_into()?;
        p.load()?;
        p.attach("l0", aya::programs::XdpMode::Driver)?;
        Ok(ebpf)
    })
}

/// Frames counted by all sinks so far.
fn delivered(lab: &Lab) -> anyhow::Result<u64> {
    let mut n = 0;
    for p in &lab.peer_xdp {
        if let Some(m) = p.ebpf.map("COUNT") {
            let c: PerCpuArray<_, u64> = PerCpuArray::try_from(m)?;
            n += c.get(&0, 0)?.iter().sum::<u64>();
        }
    }
    Ok(n)
}

/// Sends `packets` frames from the generator and counts what the sinks got.
fn measure(lab: &Lab, name: &str, frame: &[u8], packets: u32) -> anyhow::Result<Row> {
    pin_napi_threads()?;
    let start_count = delivered(lab)?;
    let elapsed = generate(&lab.client, "c0", frame.to_vec(), packets)?;
    // Frames still in flight in veth rings: wait (bounded) until the sinks' count settles.
    let mut last = delivered(lab)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = delivered(lab)?;
        if now == last {
            break;
        }
        last = now;
    }
    let got = last - start_count;
    ensure!(got > 0, "{name}: no frame reached the sinks");
    let secs = elapsed.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "frame counts far below 2^52")]
    let mpps = got as f64 / secs / 1e6;
    Ok(Row {
        name: name.into(),
        sent: u64::from(packets),
        delivered: got,
        seconds: secs,
        delivered_mpps: mpps,
    })
}

/// Pins every threaded-NAPI kernel thread (`napi/<dev>-<id>`) to the last CPU, away from the
/// generator on CPU 0. On one CPU there is nothing to separate.
fn pin_napi_threads() -> anyhow::Result<()> {
    let cpu = measured_cpu();
    if cpu == 0 {
        return Ok(());
    }
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("napi/") {
            pin(pid, cpu);
        }
    }
    Ok(())
}

/// Runs `xdp_gen` in live-frames mode in `ns`, out of `dev`; returns the wall time it took.
fn generate(ns: &Netns, dev: &str, frame: Vec<u8>, packets: u32) -> anyhow::Result<Duration> {
    let ifindex = ns.ifindex(dev)?;
    ns.enter(move || -> anyhow::Result<Duration> {
        let mut ebpf = aya::Ebpf::load(lb_userspace::dataplane::BASELINE_OBJ)?;
        let mut cfg: Array<_, u32> = Array::try_from(ebpf.map_mut("GEN_CFG").context("GEN_CFG")?)?;
        cfg.set(0, FLOWS, 0)?;
        let mut tmpl: Array<_, [u8; 42]> =
            Array::try_from(ebpf.map_mut("GEN_TMPL").context("GEN_TMPL")?)?;
        tmpl.set(0, <[u8; 42]>::try_from(&frame[..42])?, 0)?;
        let p: &mut Xdp = ebpf.program_mut("xdp_gen").context("xdp_gen")?.try_into()?;
        p.load()?;
        let mut ctx = [0u8; 24]; // struct xdp_md
        ctx[4..8].copy_from_slice(&u32::try_from(frame.len())?.to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        pin(0, 0);
        let started = Instant::now();
        p.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: packets,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::default()
        })
        .context("live-frames generator")?;
        Ok(started.elapsed())
    })
}
