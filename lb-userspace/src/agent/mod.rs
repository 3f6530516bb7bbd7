//! `lb agent`: load and attach the program, apply the config, and run the writer and the tasks
//! around it until SIGTERM/SIGINT; then detach and clean up (unless `--keep-attached`).
//!
//! The tasks, each feeding the writer [`Event`]s:
//! * the control socket and the metrics endpoint (requests);
//! * the prober (probe results);
//! * the netlink watcher thread (kernel changes: links, addresses, routes, neighbours);
//! * the resolver thread (next hops the writer asked for) and the purger thread (flow
//!   deletions it asked for), each with its own netlink socket or map handle;
//! * the sweeper thread (expired flows, TCP reset on idle: [`sweeper`]), with its own map
//!   handle, following the policy the writer publishes;
//! * two timers: a tick every second (grace periods, retries) and the full next-hop resync,
//!   the safety net behind the netlink events, every `--resync-interval` (60 s by default);
//! * signals: SIGHUP reloads the config.
//!
//! Reads for status, stats and metrics run on tokio's blocking pool with a map handle of
//! their own, and the state file is written by a task, so the writer never waits on I/O.

pub mod memory;
mod sweeper;
pub mod veth;
mod writer;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, mpsc as std_mpsc},
    time::Duration,
};

use anyhow::{Context as _, bail};
use lb_common::maps::{BackendId, Counters};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};

pub use self::writer::{Tasks, run as run_writer};
use crate::{
    api,
    config::Config,
    dataplane::{
        Dataplane, FlowPurge as _, LoadOptions, MapReader, SideMaps,
        sweep::{AgentTimeouts, OutboundUsage, OutboundUse, SweepCounters, SweepTotals},
        unpin_all, xdp_mode,
    },
    error::MapOpError,
    link, metrics,
    netlink::{NetlinkResolver, Watcher},
    persist,
    probe::Prober,
    reconcile::{AgentInfo, Event, Reconciler, Resolver as _},
    state::State,
};

/// Everything `lb agent` is told on its command line.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub config: Option<PathBuf>,
    pub interfaces: Vec<String>,
    pub native: bool,
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub bpf_log_level: u8,
    /// How often every next hop and the client routes are re-read from the kernel, whatever
    /// the netlink events said (the safety net behind them).
    pub resync_interval: Duration,
    /// Where the desired state is saved after every change (see [`crate::persist`]).
    pub state_file: PathBuf,
    /// Where to serve Prometheus metrics; `None`: no TCP listener at all.
    pub metrics: Option<SocketAddr>,
    /// On SIGTERM/SIGINT leave the program attached (pinned links) and the maps pinned.
    pub keep_attached: bool,
    /// `XDP_TX` or a redirect for frames that leave by their ingress device.
    pub xdp_tx: crate::cli::XdpTx,
    /// On a plain stop, how long to keep serving after the VIPs' routes are withdrawn.
    pub announce_drain: Duration,
}

/// The config file, parsed, and the digest of its text (of "" without a file).
fn load_config(path: Option<&PathBuf>) -> anyhow::Result<(Config, String)> {
    let Some(path) = path else {
        let empty = Config {
            agent: crate::config::AgentSettings::default(),
            services: Vec::new(),
            forwards: Vec::new(),
            pips: Vec::new(),
            outbound: Vec::new(),
        };
        return Ok((empty, persist::digest("")));
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    Ok((
        crate::config::parse(&path.display().to_string(), &text)?,
        persist::digest(&text),
    ))
}

/// The agent's log filter directives: `rust_log` (`RUST_LOG`; default `info`), with
/// netlink-packet-route kept to errors unless it is named: the crate warns about every
/// attribute newer kernels add (`IFLA_INET6_CONF`, about 14 lines a second), which is not
/// actionable.
#[must_use]
pub fn log_filter(rust_log: Option<&str>) -> String {
    const QUIET: &str = "netlink_packet_route=error";
    let asked = rust_log.unwrap_or("info");
    if asked.contains("netlink_packet_route") {
        asked.to_owned()
    } else {
        format!("{asked},{QUIET}")
    }
}

/// How often the writer gets `Event::Tick` (grace periods, retries).
const TICK: Duration = Duration::from_secs(1);

/// Runs the agent until SIGTERM or SIGINT.
///
/// # Errors
/// Bad config, not root, no bpffs, load or attach failure, socket failure.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let (config, config_digest) = load_config(opts.config.as_ref())?;
    let (initial, source) = persist::initial_state(
        &opts.state_file,
        &config_digest,
        (State::from_config(&config), config.agent),
    )?;
    tracing::info!(state_file = %opts.state_file.display(), ?source, "initial state chosen");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb agent must run as root (it loads BPF programs and owns the control socket)");
    }
    if opts.interfaces.is_empty() {
        bail!("--iface: at least one interface is required");
    }
    check_bpffs(&opts.pin_dir)?;
    let mut ifindexes = Vec::new();
    for name in &opts.interfaces {
        let idx =
            nix_ifindex(name).with_context(|| format!("--iface {name}: no such interface"))?;
        ifindexes.push(idx);
    }

    let served: Vec<(String, u32)> = opts
        .interfaces
        .iter()
        .cloned()
        .zip(ifindexes.iter().copied())
        .collect();
    let reports = crate::netlink::Netlink::open()
        .map(|mut nl| veth::inspect(&mut nl, &served))
        .context("opening netlink to inspect the interfaces")?;
    for r in &reports {
        for f in veth::findings(r) {
            tracing::warn!("{f}");
        }
    }
    let any_veth = reports.iter().any(|r| r.veth);
    let tx_redirect = match opts.xdp_tx {
        crate::cli::XdpTx::Auto => any_veth,
        crate::cli::XdpTx::Tx => false,
        crate::cli::XdpTx::Redirect => true,
    };
    tracing::info!(
        any_veth,
        tx_redirect,
        "frames that leave by their ingress interface use {}",
        if tx_redirect {
            "a redirect to it"
        } else {
            "XDP_TX"
        }
    );

    let load = LoadOptions {
        pin_dir: opts.pin_dir.clone(),
        hash_seed: config.agent.hash_seed,
        conntrack_flows: config.agent.conntrack_flows,
        ring_slots: config.agent.ring_slots,
        tcp_close_timeout_s: config.agent.tcp_close_timeout_s,
        new_flow_rate: config.agent.new_flow_rate,
        bpf_log_level: opts.bpf_log_level,
        tx_redirect,
        trace_hooks: true,
        encap: config.agent.encap(),
    };
    let (mut dp, maps) = Dataplane::load(&load).context("loading the XDP program")?;
    let xmit_off = dp.count_lost_frames(&opts.pin_dir, &ifindexes).err();
    if let Some(why) = &xmit_off {
        tracing::warn!(
            "frames the kernel loses after the program sent them are not counted: {why} \
             (the tracepoints need tracefs: `mount -t tracefs tracefs /sys/kernel/tracing`, which \
             cargo xtask setup does)"
        );
    }
    let _logger = if opts.bpf_log_level > 0 {
        Some(aya_log::EbpfLogger::init(&mut dp.ebpf).context("starting aya-log")?)
    } else {
        None
    };
    let mode = xdp_mode(opts.native);
    let prog_fd = dp
        .program()?
        .fd()
        .context("the loaded program's fd")?
        .try_clone()
        .context("the loaded program's fd")?;
    for (name, &ifindex) in opts.interfaces.iter().zip(&ifindexes) {
        use std::os::fd::AsFd as _;
        let how = link::attach(
            prog_fd.as_fd(),
            ifindex,
            opts.native,
            &link::pin_path(&opts.pin_dir, name),
        )
        .with_context(|| format!("attaching to {name} in {mode:?} mode"))?;
        tracing::info!(interface = %name, ?how, "XDP program attached through a pinned link");
    }
    tracing::info!(interfaces = ?opts.interfaces, ?mode, pin_dir = %opts.pin_dir.display(), "XDP program attached");
    let tunnel_path = Arc::new(probe_path(&mut dp));
    if let Err(why) = tunnel_path.as_ref() {
        tracing::warn!("probes through the tunnel (--probe-via tunnel) will fail: {why}");
    }

    let info = AgentInfo {
        interfaces: opts.interfaces.clone(),
        ifindexes: ifindexes.clone(),
        xdp_mode: if opts.native { "native" } else { "skb" }.into(),
        pin_dir: Some(opts.pin_dir.display().to_string()),
        ring_slots: config.agent.ring_slots,
        conntrack_flows: config.agent.conntrack_flows,
        xmit_off,
        hash_seed: config.agent.hash_seed,
        encap: config.agent.encap(),
        announce_table: config.agent.announce_table,
    };
    // The announce table's writer (`crate::announce`), reading what a previous agent left.
    let announcer = match config.agent.announce_table {
        0 => {
            // Announcing off: what a previous agent announced goes (a router would otherwise
            // keep sending those VIPs here).
            let mut nl = crate::netlink::Netlink::open().context("opening netlink")?;
            crate::announce::clear_other_tables(&mut nl, 0)
                .map_err(anyhow::Error::from)
                .context("reading the routing tables for announced VIPs")?;
            None
        }
        table => {
            let a = crate::announce::Announcer::new(table)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("reading the announce table {table}"))?;
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("lb-announcer".into())
                .spawn(move || a.run(&rx))?;
            Some(tx)
        }
    };
    let sweep_counters = Arc::new(SweepCounters::default());
    let usage = Arc::new(OutboundUsage::default());
    let reader = Reader {
        maps: SideMaps::open(&opts.pin_dir).context("opening the maps for readers")?,
        sweeps: sweep_counters.clone(),
        usage: usage.clone(),
    };
    let sweep_maps = SideMaps::open(&opts.pin_dir).context("opening the maps for the sweeper")?;
    let mut purger = SideMaps::open(&opts.pin_dir).context("opening the maps for the purger")?;
    let mut resolver = NetlinkResolver::new(ifindexes).context("opening netlink")?;
    let mut watcher = Watcher::open(TICK).context("subscribing to netlink changes")?;

    let (events, events_rx) = mpsc::channel::<Event>(1024);
    let (resolve_tx, resolve_rx) = std_mpsc::channel();
    let (purge_tx, purge_rx) = std_mpsc::channel();
    let (save_tx, mut save_rx) = watch::channel(None::<(State, String)>);
    let (probes_tx, mut probes_rx) = watch::channel(Vec::new());
    let (sweep_tx, sweep_rx) = watch::channel(None);
    let sweeper = sweeper::Sweeper {
        maps: sweep_maps,
        timeouts: AgentTimeouts {
            close_s: config.agent.tcp_close_timeout_s,
            syn_s: config.agent.tcp_syn_timeout_s,
        },
        policy: sweep_rx,
        counters: sweep_counters,
        usage,
        events: events.downgrade(),
    };
    std::thread::Builder::new()
        .name("lb-sweeper".into())
        .spawn(move || sweeper.run())?;

    // The resolver thread: the first job is the initial state's, done before the writer
    // starts, so the first entries are written with resolved next hops.
    let first = crate::reconcile::initial_job(&initial);
    let (first_tx, first_rx) = oneshot::channel();
    worker("lb-resolver", &events, move |send| {
        let _ = first_tx.send(resolver.resolve(&first));
        for job in resolve_rx {
            if !send(Event::Resolved(resolver.resolve(&job))) {
                return;
            }
        }
    })?;
    worker("lb-purger", &events, move |send| {
        for work in purge_rx {
            match work {
                writer::PurgeWork::Job(job) => {
                    let result = purger.purge(&job).map_err(|e| e.to_string());
                    if !send(Event::Purged { job, result }) {
                        return;
                    }
                }
                writer::PurgeWork::Flush(q, tx) => {
                    let r = match purger.flush(&|f| q.selects(f)) {
                        Ok(n) => {
                            tracing::info!(flows = n, "flows flushed (lb flows flush)");
                            api::Response::Flushed { flushed: n as u64 }
                        }
                        Err(e) => api::Response::error(
                            crate::error::ErrorKind::Failed,
                            format!("flushing flows: {e}"),
                        ),
                    };
                    let _ = tx.send(r);
                }
            }
        }
    })?;
    worker("lb-netlink", &events, move |send| {
        loop {
            match watcher.changes() {
                Ok(c) if c.is_empty() => {}
                Ok(c) => {
                    if !send(Event::Net(c)) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "netlink watch failed; the periodic resync still runs");
                    return;
                }
            }
        }
    })?;
    let primed = first_rx.await.context("the resolver thread ended")?;

    // The writer thread: adoption and the initial state first (reported back), then the loop.
    let tasks = Tasks {
        config: opts.config.clone(),
        events: events.downgrade(),
        reader: Arc::new(reader),
        resolve: resolve_tx,
        purge: purge_tx,
        save: save_tx,
        probes: probes_tx,
        sweep: sweep_tx,
        announce: announcer.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let (started_tx, started_rx) = oneshot::channel();
    let digest = config_digest.clone();
    let writer = std::thread::Builder::new()
        .name("lb-writer".into())
        .spawn(move || {
            let mut rec = Reconciler::new(maps, info);
            rec.prime(&primed);
            match rec.start(initial) {
                Ok(()) => {
                    tasks
                        .save
                        .send_replace(Some((rec.state().clone(), digest.clone())));
                    tasks.probes.send_replace(rec.wanted_probes());
                    tasks.sweep.send_replace(Some(Arc::new(rec.sweep_policy())));
                    tasks.announce(&rec);
                    let _ = started_tx.send(Ok(rec.state().services.len()));
                    memory::give_back();
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            }
            drop(run_writer(rec, events_rx, &tasks, digest));
        })?;
    let services = started_rx
        .await
        .context("the writer thread ended")?
        .context("applying the initial state")?;
    tracing::info!(services, "state applied");

    let state_file = opts.state_file.clone();
    let saver = tokio::spawn(async move {
        while save_rx.changed().await.is_ok() {
            let Some((state, digest)) = save_rx.borrow_and_update().clone() else {
                continue;
            };
            let path = state_file.clone();
            let r = tokio::task::spawn_blocking(move || {
                let r = persist::save(&path, &digest, &state);
                drop(state);
                memory::give_back();
                r
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::error!(error = %e, path = %state_file.display(), "saving the state file failed");
            }
        }
    });
    let prober_events = events.clone();
    let prober = tokio::spawn(async move {
        let mut prober = Prober::new(prober_events, tunnel_path);
        loop {
            let targets = probes_rx.borrow_and_update().clone();
            prober.sync(targets);
            if probes_rx.changed().await.is_err() {
                return;
            }
        }
    });

    let listener =
        api::bind(&opts.socket).with_context(|| format!("binding {}", opts.socket.display()))?;
    // Bound before "agent ready", so a taken port stops the agent at start instead of leaving it
    // running unscraped.
    let metrics_server = match opts.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics: binding {addr}"))?;
            let url = format!("http://{}/metrics", l.local_addr()?);
            tracing::info!(%url, "metrics endpoint listening");
            Some(tokio::spawn(metrics::serve(l, events.clone())))
        }
        None => None,
    };
    let server = tokio::spawn(api::serve(listener, events.clone(), |(req, tx)| {
        Event::Api(req, tx)
    }));
    let timers = {
        let events = events.clone();
        let resync = opts.resync_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            let mut full = tokio::time::interval(resync);
            full.tick().await; // the initial resolution just ran
            loop {
                let ev = tokio::select! {
                    _ = tick.tick() => Event::Tick,
                    _ = full.tick() => Event::Resync,
                };
                if events.send(ev).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tracing::info!(socket = %opts.socket.display(), "agent ready");

    loop {
        tokio::select! {
            _ = hup.recv() => {
                let path = opts.config.clone();
                match tokio::task::spawn_blocking(move || load_config(path.as_ref())).await {
                    Ok(Ok((c, digest))) => {
                        let ev = Event::Reload { state: Box::new(State::from_config(&c)), tag: digest, reply: None };
                        let _ = events.send(ev).await;
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "config reload refused; nothing changed"),
                    Err(e) => tracing::error!(error = %e, "config reload failed"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // A plain stop withdraws the VIPs first and keeps serving through the drain, so that the
    // routers move the flows to other nodes before this one stops.
    if let (false, Some(a)) = (opts.keep_attached, &announcer) {
        // The writer's view first (`lb status` announces nothing from now on), then the
        // table itself.
        let _ = events.send(Event::StopAnnouncing).await;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if a.send(crate::announce::Order::WithdrawAll(done_tx)).is_ok() {
            let n = tokio::task::spawn_blocking(move || {
                done_rx.recv_timeout(Duration::from_secs(10)).ok()
            })
            .await
            .ok()
            .flatten();
            if let Some(n) = n {
                tracing::info!(routes = n, drain = ?opts.announce_drain, "stopping: VIPs withdrawn; draining");
            } else {
                tracing::warn!("stopping: the announcer did not answer; draining anyway");
            }
            // A second SIGTERM or SIGINT cuts the drain short: the operator who waits for
            // nothing more should not have to reach for kill -9 (which leaves the pins).
            tokio::select! {
                () = tokio::time::sleep(opts.announce_drain) => {}
                _ = term.recv() => tracing::info!("a second signal: the drain cut short"),
                _ = int.recv() => tracing::info!("a second signal: the drain cut short"),
            }
        }
    }
    server.abort();
    timers.abort();
    prober.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    let _ = events.send(Event::Stop).await;
    drop(events);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("joining the writer")?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    // The writer is gone with its sender: the saver writes the last state it sent, then ends.
    let _ = saver.await;
    drop(dp);
    let _ = std::fs::remove_file(&opts.socket);
    if opts.keep_attached {
        tracing::info!(pin_dir = %opts.pin_dir.display(), "stopping; the data plane stays attached (--keep-attached) for the next agent");
        return Ok(());
    }
    tracing::info!("stopping: detaching and removing pins");
    for name in &opts.interfaces {
        link::detach(&link::pin_path(&opts.pin_dir, name))
            .with_context(|| format!("detaching from {name}"))?;
    }
    unpin_all(&opts.pin_dir)
        .with_context(|| format!("removing pins under {}", opts.pin_dir.display()))?;
    // The probe path too (set up at every start): blocking netlink, but the writer is gone.
    crate::netlink::Netlink::open()
        .and_then(|mut nl| nl.probe_path_teardown())
        .context("removing the probe path (lbprobe0, its rules)")?;
    Ok(())
}

/// The readers' handle: the maps, and the sweeper's counters.
struct Reader {
    maps: SideMaps,
    sweeps: Arc<SweepCounters>,
    usage: Arc<OutboundUsage>,
}

impl MapReader for Reader {
    fn service_counters(&self, id: u32) -> Result<Counters, MapOpError> {
        self.maps.service_counters(id)
    }
    fn backend_counters(&self, id: BackendId) -> Result<Counters, MapOpError> {
        self.maps.backend_counters(id)
    }
    fn reason_counters(&self) -> Result<Vec<u64>, MapOpError> {
        self.maps.reason_counters()
    }
    fn flows_per_backend(&self) -> Result<HashMap<BackendId, u64>, MapOpError> {
        self.maps.flows_per_backend()
    }
    fn sweeps(&self) -> SweepTotals {
        self.sweeps.totals()
    }
    fn outbound_usage(&self) -> std::collections::BTreeMap<[u8; 4], OutboundUse> {
        self.usage.get()
    }
    fn xmit_fails(&self) -> Result<Vec<(u32, lb_common::xmit::XmitFails)>, MapOpError> {
        self.maps.xmit_fails()
    }
    fn probe_tunnel(&self) -> Result<Vec<u64>, MapOpError> {
        self.maps.probe_tunnel()
    }
    fn flow(
        &self,
        k: &lb_common::flow::FlowKey4,
    ) -> Result<Option<lb_common::maps::ConnEntry4>, MapOpError> {
        self.maps.flow(k)
    }
    fn flow6(
        &self,
        k: &lb_common::flow::FlowKey6,
    ) -> Result<Option<lb_common::maps::ConnEntry6>, MapOpError> {
        self.maps.flow6(k)
    }
    fn each_flow(
        &self,
        f: &mut dyn FnMut(crate::dataplane::TrackedFlow<'_>),
    ) -> Result<(), MapOpError> {
        self.maps.each_flow(f)
    }
}

/// Starts a thread that feeds the writer: `body` gets a `send` that delivers one event and
/// says whether the writer still takes them. The thread holds only a weak sender, so it never
/// keeps the writer's channel open by itself.
fn worker(
    name: &str,
    events: &mpsc::Sender<Event>,
    body: impl FnOnce(&dyn Fn(Event) -> bool) + Send + 'static,
) -> std::io::Result<()> {
    let weak = events.downgrade();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            body(&|ev| {
                weak.upgrade()
                    .is_some_and(|tx| tx.blocking_send(ev).is_ok())
            });
        })
        .map(drop)
}

/// Refuses a pin directory that is not on a bpffs, and says why when `ip netns exec` is the
/// cause.
///
/// # Errors
/// Not on a bpffs.
pub fn check_bpffs(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut dir = pin_dir.to_path_buf();
    while !dir.exists() {
        if !dir.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: all-zero is a valid `statfs` (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let own_mounts = own_mount_namespace();
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 || st.f_type != 0xcafe_4a11 {
        let hint = if own_mounts {
            " This process has a mount namespace of its own, as `ip netns exec` gives (it \
             remounts /sys, which hides the host's /sys/fs/bpf): run the agent with \
             `nsenter --net=/run/netns/NAME lb agent ...` instead. A bpffs mounted in here \
             would vanish with this process, and a restarted agent would not find its pins."
        } else {
            ""
        };
        bail!(
            "--pin-dir {}: {} is not on a bpffs; mount one with `mount -t bpf bpf /sys/fs/bpf` (cargo xtask setup does).{hint}",
            pin_dir.display(),
            dir.display()
        );
    }
    if own_mounts {
        tracing::warn!(
            "this process has a mount namespace of its own (as `ip netns exec` gives): pins \
             under {} live only as long as that namespace's bpffs mount; for restarts that \
             drop nothing run the agent with `nsenter --net=/run/netns/NAME`",
            pin_dir.display()
        );
    }
    Ok(())
}

/// Whether this process's mount namespace differs from its parent's or init's, as a command
/// run by `ip netns exec` finds (it unshares one before it execs). Unreadable ones (init's,
/// inside some sandboxes) do not count.
fn own_mount_namespace() -> bool {
    let own = std::fs::read_link("/proc/self/ns/mnt");
    // SAFETY: getppid has no preconditions.
    let parent = format!("/proc/{}/ns/mnt", unsafe { libc::getppid() });
    [parent.as_str(), "/proc/1/ns/mnt"]
        .iter()
        .any(|p| match (&own, std::fs::read_link(p)) {
            (Ok(a), Ok(b)) => *a != b,
            _ => false,
        })
}

/// The ifindex of interface `name` in this namespace.
///
/// # Errors
/// No such interface (the message names it).
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    nix_ifindex(name).with_context(|| format!("{name}: no such interface in this namespace"))
}

fn nix_ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: `c` is a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    Ok(idx)
}

/// The path of probes through the tunnel (`lb_common::encap::probe`): the probe device, its
/// policy rule and routes (`crate::netlink::Netlink::probe_path_setup`), and the tc program
/// on the device's egress. Set up at every start, whatever the services: a probe through the
/// tunnel can be asked for at any time, and the steps are idempotent and cheap. Runs before
/// the writer loop, so its blocking netlink exchanges hold nothing up.
fn probe_path(dp: &mut Dataplane) -> Result<(), String> {
    let mut nl =
        crate::netlink::Netlink::open().map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
    nl.probe_path_setup()
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
    dp.attach_probe_encap(lb_common::encap::probe::DEVICE)
}

#[cfg(test)]
mod tests {
    /// netlink-packet-route stays quiet at any level the operator sets, unless named.
    #[test]
    fn netlink_noise_stays_quiet_unless_asked_for() {
        assert_eq!(super::log_filter(None), "info,netlink_packet_route=error");
        assert_eq!(
            super::log_filter(Some("info")),
            "info,netlink_packet_route=error"
        );
        assert_eq!(
            super::log_filter(Some("debug,lb_userspace=trace")),
            "debug,lb_userspace=trace,netlink_packet_route=error"
        );
        assert_eq!(
            super::log_filter(Some("netlink_packet_route=debug")),
            "netlink_packet_route=debug"
        );
    }
}
