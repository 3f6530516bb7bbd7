//! Part 1b: the conntrack variants, measured as the fast path uses them for a new flow: the
//! cost of inserting a new IPv4 5-tuple, with one CPU sending and with two CPUs sending at once
//! (each its own clients, so the keys never collide). The variants are the `xdp_ct_*` programs
//! of their own object (`lb-ebpf/src/ctprobe.rs`): one shared LRU (the fast path's map today), an LRU with
//! `BPF_F_NO_COMMON_LRU` (per-CPU LRU lists over one table), and one LRU per CPU (Katran's
//! layout). Two loads of the object, one per sending thread, share the pinned maps.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::Context as _;

use super::{Stats, cost, progress};
use crate::{
    fixture::{XDP_DROP, in_fresh_ns, pin_dir, run_once},
    packet::{Frame, TCP_SYN},
};

/// One measurement: a variant, how many CPUs sent, and the slowest sender's figures.
#[derive(Clone, Debug)]
pub struct Row {
    pub variant: &'static str,
    pub cpus: usize,
    pub stats: Stats,
}

/// The variants: their name and program.
pub const VARIANTS: [(&str, &str); 3] = [
    ("shared LRU", "xdp_ct_shared"),
    ("BPF_F_NO_COMMON_LRU", "xdp_ct_nocommon"),
    ("an LRU per CPU", "xdp_ct_percpu"),
];

/// Runs part 1b: `runs` inserts per sending CPU (plus a tenth as warm-up), every variant with
/// one and with two CPUs, each measurement on freshly loaded, empty maps.
///
/// # Errors
/// Loading fails, or a run does not insert (the program then aborts).
pub fn run(runs: u32) -> anyhow::Result<Vec<Row>> {
    in_fresh_ns("bench-ct", move |ns| -> anyhow::Result<Vec<Row>> {
        let cpus_here = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let mut rows = Vec::new();
        for (variant, prog) in VARIANTS {
            for cpus in [1, 2].into_iter().filter(|c| *c <= cpus_here) {
                progress(&format!("conntrack variants: {variant}, {cpus} CPU(s)"));
                let dir = pin_dir(ns).join(format!("{prog}-{cpus}"));
                std::fs::create_dir_all(&dir)?;
                let mut objs = Vec::new();
                for _ in 0..cpus {
                    let mut obj = aya::EbpfLoader::new()
                        .default_map_pin_directory(&dir)
                        .load(lb_userspace::dataplane::CTPROBE_OBJ)?;
                    let p: &mut aya::programs::Xdp =
                        obj.program_mut(prog).context("program")?.try_into()?;
                    p.load()?;
                    objs.push(obj);
                }
                let per_cpu: Vec<anyhow::Result<Stats>> = std::thread::scope(|s| {
                    let handles: Vec<_> = objs
                        .iter_mut()
                        .enumerate()
                        .map(|(t, obj)| {
                            s.spawn(move || -> anyhow::Result<Stats> {
                                super::pin(0, t);
                                let p: &mut aya::programs::Xdp =
                                    obj.program_mut(prog).context("program")?.try_into()?;
                                let client = SocketAddrV4::new(
                                    Ipv4Addr::new(198, 51, 100, 2 + u8::try_from(t)?),
                                    1024,
                                );
                                let vip = SocketAddrV4::new(cost::VIP, 80);
                                let mut frame = Frame::tcp(client, vip, TCP_SYN).build();
                                let mut port: u16 = 1024;
                                let (stats, _) =
                                    cost::best_of_rounds(prog, XDP_DROP, runs / 10, runs, || {
                                        cost::set_sport(&mut frame, port);
                                        port = port.wrapping_add(1).max(1024);
                                        let (a, _, t) = run_once(p, &frame);
                                        (a, t)
                                    })?;
                                Ok(stats)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
                        })
                        .collect()
                });
                let mut worst = Stats::default();
                for s in per_cpu {
                    let s = s?;
                    if s.p50_ns > worst.p50_ns {
                        worst = s;
                    }
                }
                rows.push(Row {
                    variant,
                    cpus,
                    stats: worst,
                });
                drop(objs);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Ok(rows)
    })
}
