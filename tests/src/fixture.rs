//! The real XDP object, loaded and provisioned through the agent's own reconciler, driven with
//! `BPF_PROG_TEST_RUN`: the base of the fixture tests (`tests/prog_test_run.rs`) and of the
//! benchmark's per-packet costs.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{addr::Addr, maps::NextHop};
use lb_userspace::{
    config,
    dataplane::{Dataplane, LoadOptions, MapReader as _, Maps},
    reconcile::{AgentInfo, Hop, Reconciler, Resolution, ResolveJob, Resolver, initial_job},
    state::State,
};

use crate::{netns::Netns, packet::LB_MAC};

/// XDP actions as `BPF_PROG_TEST_RUN` returns them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The ingress device of every run: `lo` of the harness's namespace.
pub const LO: u32 = 1;

/// Next hops as an agent would have resolved them: listed backends, else `fallback` (if
/// set) for any other address, and the client-facing routes.
#[derive(Clone, Debug, Default)]
pub struct FixedResolver {
    pub backends: HashMap<IpAddr, NextHop>,
    pub fallback: Option<NextHop>,
    pub routes: Vec<(u32, Addr, NextHop)>,
    /// The host's own addresses (map form), as the agent would find them.
    pub locals: Vec<Addr>,
    /// The MTU every resolved hop's link has (0: not known).
    pub mtu: u32,
}

impl Resolver for FixedResolver {
    fn resolve(&mut self, job: &ResolveJob) -> Resolution {
        Resolution {
            hops: job
                .addrs
                .iter()
                .map(|ip| {
                    let nh = self.backends.get(ip).copied().or(self.fallback);
                    (
                        *ip,
                        nh.map(|nh| Hop {
                            nh,
                            via: *ip,
                            mtu: self.mtu,
                        }),
                    )
                })
                .collect(),
            routes: job.routes.then(|| self.routes.clone()),
            locals: job.routes.then(|| self.locals.clone()),
        }
    }
}

impl FixedResolver {
    /// Every backend, and every client (a default route), resolved to `lo`: all forwarding
    /// ends in `XDP_TX` and nothing leaves the namespace. Backends get `backend_mac`.
    #[must_use]
    pub fn all_on_lo(backend_mac: [u8; 6]) -> Self {
        Self {
            backends: HashMap::new(),
            fallback: Some(nh(LO, backend_mac)),
            // Both families' default routes: 0.0.0.0/0 (96 in map form) and ::/0.
            routes: vec![
                (
                    96,
                    lb_common::addr::v4_mapped([0, 0, 0, 0]),
                    nh(LO, crate::packet::CLIENT_MAC),
                ),
                (0, [0; 16], nh(LO, crate::packet::CLIENT_MAC)),
            ],
            // The LB's backend-side address, the source of its probes.
            locals: vec![
                lb_common::addr::v4_mapped([192, 0, 2, 1]),
                lb_common::addr::from_ip("2001:db8:2::1".parse().expect("address")),
            ],
            // An Ethernet-sized MTU rather than lo's 65 536, so that the "too big" fixtures
            // need no jumbo frames.
            mtu: FIXTURE_MTU,
        }
    }
}

/// The MTU [`FixedResolver::all_on_lo`] gives every hop.
pub const FIXTURE_MTU: u32 = 1500;

/// A next hop out of `ifindex` from the LB's MAC to `dmac`.
#[must_use]
pub const fn nh(ifindex: u32, dmac: [u8; 6]) -> NextHop {
    NextHop {
        ifindex,
        smac: LB_MAC,
        dmac,
    }
}

/// The loaded program and its reconciler.
pub struct Harness {
    pub dp: Dataplane,
    pub rec: Reconciler<Maps>,
    /// The next hops the reconciler resolves with.
    pub resolver: FixedResolver,
    /// The flow-hash seed the program was loaded with.
    pub seed: u32,
    /// How long the reconciler took to provision the config.
    pub provision_time: Duration,
    /// The counters after the last [`Self::run_counted`], while no other run has happened
    /// since: the next one's "before" (half the counter reads of a comparison).
    counted: Option<Vec<u64>>,
}

impl Harness {
    /// Loads the object with maps pinned under `/sys/fs/bpf/<ns name>` and provisions `config`
    /// (its `[agent]` sizes apply). Must run inside `ns`.
    ///
    /// # Errors
    /// The config does not parse, the object does not load, provisioning fails.
    pub fn load(ns: &Netns, config: &str, resolver: FixedResolver) -> anyhow::Result<Self> {
        Self::load_with(ns, config, resolver, |_| {})
    }

    /// As [`Self::load`], with `tweak` applied to the load options (the benchmark's object
    /// without trace hooks, say).
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn load_with(
        ns: &Netns,
        config: &str,
        mut resolver: FixedResolver,
        tweak: impl FnOnce(&mut LoadOptions),
    ) -> anyhow::Result<Self> {
        let cfg = config::parse("harness.toml", config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut opts = LoadOptions {
            ring_slots: cfg.agent.ring_slots,
            conntrack_flows: cfg.agent.conntrack_flows,
            tcp_close_timeout_s: cfg.agent.tcp_close_timeout_s,
            new_flow_rate: cfg.agent.new_flow_rate,
            encap: cfg.agent.encap(),
            ..LoadOptions::new(pin_dir(ns))
        };
        tweak(&mut opts);
        let seed = opts.hash_seed;
        let (dp, maps) = Dataplane::load(&opts).context("load the XDP object")?;
        let info = AgentInfo {
            hash_seed: seed,
            ring_slots: cfg.agent.ring_slots,
            conntrack_flows: cfg.agent.conntrack_flows,
            encap: cfg.agent.encap(),
            ..AgentInfo::default()
        };
        let mut rec = Reconciler::new(maps, info);
        let state = State::from_config(&cfg);
        let started = std::time::Instant::now();
        // As the agent does: the initial state's next hops first, then adoption and the sync,
        // then the work they queued (purges) and the client routes.
        rec.prime(&resolver.resolve(&initial_job(&state)));
        rec.start(state)
            .map_err(|e| anyhow::anyhow!("provision: {e}"))?;
        let fx = rec.flush();
        rec.settle(fx);
        rec.resolve_with(&mut resolver);
        Ok(Self {
            dp,
            rec,
            resolver,
            seed,
            provision_time: started.elapsed(),
            counted: None,
        })
    }

    /// Every verdict counter, by reason number.
    ///
    /// # Panics
    /// The counters cannot be read.
    #[must_use]
    pub fn counts(&self) -> Vec<u64> {
        self.rec.maps().reason_counters().expect("read counters")
    }

    /// Fills every CPU's echo-reply token bucket (`LB_ECHO_RL`), so that the next echo request
    /// is answered whatever the clock says.
    ///
    /// # Panics
    /// The map cannot be read or written.
    pub fn refill_echo(&mut self) {
        // Read once: the fuzz target refills before every echo request it sends.
        static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let cost = 1_000_000_000 / lb_common::consts::ECHO_RATE_PER_SEC;
        let full = lb_common::maps::RateState {
            credit_ns: lb_common::consts::ECHO_BURST * cost,
            last_ns: 0,
        };
        let mut rl: aya::maps::PerCpuArray<_, lb_common::maps::RateState> =
            aya::maps::PerCpuArray::try_from(
                self.dp
                    .ebpf
                    .map_mut(lb_common::consts::map_names::ECHO_RL)
                    .expect("LB_ECHO_RL"),
            )
            .expect("a per-CPU array");
        let cpus = *CPUS.get_or_init(|| aya::util::nr_cpus().expect("CPU count"));
        rl.set(
            0,
            aya::maps::PerCpuValues::try_from(vec![full; cpus]).expect("per CPU"),
            0,
        )
        .expect("refill the echo bucket");
    }

    /// Runs one frame once (ingress `lo`); returns (action, output bytes, kernel run time).
    ///
    /// # Panics
    /// `BPF_PROG_TEST_RUN` fails.
    pub fn run(&mut self, input: &[u8]) -> (u32, Vec<u8>, Duration) {
        self.counted = None;
        run_once(self.dp.program().expect("program"), input)
    }

    /// [`Self::run`], with the counters before and after the run. Only a run of the program
    /// moves them, so the last call's "after" serves as this one's "before" when no other run
    /// happened in between.
    ///
    /// # Panics
    /// `BPF_PROG_TEST_RUN` fails, or the counters cannot be read.
    pub fn run_counted(&mut self, input: &[u8]) -> (u32, Vec<u8>, Vec<u64>, Vec<u64>) {
        let before = self.counted.take().unwrap_or_else(|| self.counts());
        let (action, out, _) = self.run(input);
        let after = self.counts();
        self.counted = Some(after.clone());
        (action, out, before, after)
    }

    /// The conntrack entry of a 5-tuple, read from the writer's handle on the map.
    #[must_use]
    pub fn flow(&self, key: &lb_common::flow::FlowKey4) -> Option<lb_common::maps::ConnEntry4> {
        self.rec.maps().side.conntrack.get(key, 0).ok()
    }

    /// Writes a conntrack entry (a fixture's way to age a flow without waiting).
    pub fn plant_flow(&mut self, key: &lb_common::flow::FlowKey4, e: &lb_common::maps::ConnEntry4) {
        self.rec
            .maps_mut()
            .side
            .conntrack
            .insert(key, e, 0)
            .expect("plant a conntrack entry");
    }
}

/// Runs an XDP program once on `input` (ingress `lo`); returns (action, output, run time as
/// the kernel measured it).
///
/// # Panics
/// `BPF_PROG_TEST_RUN` fails.
pub fn run_once(prog: &mut aya::programs::Xdp, input: &[u8]) -> (u32, Vec<u8>, Duration) {
    dump_seed(input);
    let mut out = vec![0u8; input.len() + 256];
    let mut ctx = [0u8; 24]; // struct xdp_md
    ctx[4..8].copy_from_slice(&u32::try_from(input.len()).expect("len").to_ne_bytes()); // data_end
    ctx[12..16].copy_from_slice(&LO.to_ne_bytes()); // ingress_ifindex
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out, r.duration)
}

/// With `LB_FRAME_DUMP=DIR` set (`cargo xtask fuzz --kernel --reseed`), every frame run is
/// also written to DIR as a seed of the kernel fuzz target: its raw form, a zero byte and the
/// frame, named by [`crate::packet::frame_file_name`].
///
/// # Panics
/// The file cannot be written.
fn dump_seed(input: &[u8]) {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var_os("LB_FRAME_DUMP").map(PathBuf::from)) else {
        return;
    };
    let mut seed = vec![0u8];
    seed.extend_from_slice(input);
    std::fs::write(dir.join(crate::packet::frame_file_name(input)), seed)
        .expect("write a seed frame");
}

/// Where a harness in `ns` pins its maps.
#[must_use]
pub fn pin_dir(ns: &Netns) -> PathBuf {
    PathBuf::from("/sys/fs/bpf").join(&ns.name)
}

/// Runs `f` inside a fresh namespace (named with `tag`), deleted afterwards together with the
/// pins under its name, also when `f` panics.
///
/// # Panics
/// The namespace cannot be made, or `f` panics.
pub fn in_fresh_ns<T: Send + 'static>(
    tag: &str,
    f: impl FnOnce(&Netns) -> T + Send + 'static,
) -> T {
    crate::require_root();
    let ns = std::sync::Arc::new(
        Netns::new(&format!("{}-{tag}", crate::netns::unique_prefix())).expect("namespace"),
    );
    let _cleanup = RemoveOnDrop(pin_dir(&ns));
    let ns2 = ns.clone();
    ns.enter(move || f(&ns2))
}

/// Removes a directory tree when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        remove(&self.0);
    }
}

fn remove(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}
