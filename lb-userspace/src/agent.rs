//! `lb agent`: load and attach the program, apply the config, serve the control socket, keep
//! next hops fresh, and on SIGTERM/SIGINT detach and clean up.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    api,
    config::Config,
    dataplane::{Dataplane, LoadOptions, unpin_all, xdp_mode},
    link, metrics,
    nexthop::NetlinkResolver,
    persist,
    probe::Prober,
    reconcile::{AgentInfo, Reconciler},
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
    /// How often next hops and client routes are re-read from the kernel.
    pub resolve_interval: Duration,
    /// Where the desired state is saved after every change (see [`crate::persist`]).
    pub state_file: PathBuf,
    /// Where to serve Prometheus metrics; `None`: no TCP listener at all.
    pub metrics: Option<SocketAddr>,
    /// On SIGTERM/SIGINT leave the program attached (pinned links) and the maps pinned.
    pub keep_attached: bool,
}

/// The config file, parsed, and the digest of its text (of "" without a file).
fn load_config(path: Option<&PathBuf>) -> anyhow::Result<(Config, String)> {
    let Some(path) = path else {
        let empty = Config {
            agent: crate::config::AgentSettings::default(),
            services: Vec::new(),
            forwards: Vec::new(),
            pips: Vec::new(),
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

/// Runs the agent until SIGTERM or SIGINT.
///
/// # Errors
/// Bad config, not root, no bpffs, load or attach failure, socket failure.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let (config, mut config_digest) = load_config(opts.config.as_ref())?;
    let (initial, source) = persist::initial_state(
        &opts.state_file,
        &config_digest,
        State::from_config(&config),
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

    let load = LoadOptions {
        pin_dir: opts.pin_dir.clone(),
        hash_seed: config.agent.hash_seed,
        conntrack_flows: config.agent.conntrack_flows,
        ring_slots: config.agent.ring_slots,
        bpf_log_level: opts.bpf_log_level,
    };
    let (mut dp, maps) = Dataplane::load(&load).context("loading the XDP program")?;
    let _logger = if opts.bpf_log_level > 0 {
        Some(aya_log::EbpfLogger::init(&mut dp.ebpf).context("starting aya-log")?)
    } else {
        None
    };
    let mode = xdp_mode(opts.native);
    let prog_fd = {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        dp.program()?
            .fd()
            .context("the loaded program's fd")?
            .as_fd()
            .as_raw_fd()
    };
    for (name, &ifindex) in opts.interfaces.iter().zip(&ifindexes) {
        let how = link::attach(
            prog_fd,
            ifindex,
            opts.native,
            &link::pin_path(&opts.pin_dir, name),
        )
        .with_context(|| format!("attaching to {name} in {mode:?} mode"))?;
        tracing::info!(interface = %name, ?how, "XDP program attached through a pinned link");
    }
    tracing::info!(interfaces = ?opts.interfaces, ?mode, pin_dir = %opts.pin_dir.display(), "XDP program attached");

    let info = AgentInfo {
        interfaces: opts.interfaces.clone(),
        xdp_mode: if opts.native { "native" } else { "skb" }.into(),
        pin_dir: Some(opts.pin_dir.display().to_string()),
        ring_slots: config.agent.ring_slots,
        conntrack_flows: config.agent.conntrack_flows,
    };
    let resolver = NetlinkResolver::new(ifindexes).context("opening netlink")?;
    let mut rec = Reconciler::new(maps, resolver, info);
    rec.start(initial).context("applying the initial state")?;
    tracing::info!(services = rec.state().services.len(), "state applied");
    let save = |rec: &Reconciler<_, _>, digest: &str| {
        if let Err(e) = persist::save(&opts.state_file, digest, rec.state()) {
            tracing::error!(error = %e, path = %opts.state_file.display(), "saving the state file failed");
        }
    };
    save(&rec, &config_digest);
    let (probe_tx, mut probe_rx) = mpsc::channel(1024);
    let mut prober = Prober::new(probe_tx);
    prober.sync(rec.wanted_probes());

    let listener =
        api::bind(&opts.socket).with_context(|| format!("binding {}", opts.socket.display()))?;
    let (tx, mut rx) = mpsc::channel(64);
    // Bound before "agent ready", so a taken port stops the agent at start instead of leaving it
    // running unscraped.
    let metrics_server = match opts.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics: binding {addr}"))?;
            let url = format!("http://{}/metrics", l.local_addr()?);
            tracing::info!(%url, "metrics endpoint listening");
            Some(tokio::spawn(metrics::serve(l, tx.clone())))
        }
        None => None,
    };
    let server = tokio::spawn(api::serve(listener, tx));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ticker = tokio::time::interval(opts.resolve_interval);
    tracing::info!(socket = %opts.socket.display(), "agent ready");

    loop {
        tokio::select! {
            Some((req, reply)) = rx.recv() => {
                tracing::debug!(?req, "api request");
                let out = rec.handle(req);
                if out.state_changed {
                    // A change: save it and run the probes it asks for.
                    save(&rec, &config_digest);
                    prober.sync(rec.wanted_probes());
                }
                let _ = reply.send(out.response);
            }
            Some(report) = probe_rx.recv() => {
                if let Err(e) = rec.observe(&report) {
                    tracing::warn!(error = %e, "applying a probe result failed");
                }
            }
            _ = ticker.tick() => {
                if let Err(e) = rec.tick() {
                    tracing::warn!(error = %e, "refreshing next hops failed");
                }
            }
            _ = hup.recv() => {
                match load_config(opts.config.as_ref()) {
                    Ok((c, digest)) => match rec.reload(State::from_config(&c)) {
                        Ok(()) => {
                            config_digest = digest;
                            save(&rec, &config_digest);
                            prober.sync(rec.wanted_probes());
                            tracing::info!("config reloaded");
                        }
                        Err(e) => tracing::error!(error = %e, "config reload refused; nothing changed"),
                    },
                    Err(e) => tracing::error!(error = %e, "config reload refused; nothing changed"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    server.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    drop(prober);
    drop(rec);
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
    Ok(())
}

fn check_bpffs(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut dir = pin_dir.to_path_buf();
    while !dir.exists() {
        if !dir.pop() {
            break;
        }
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 || st.f_type != 0xcafe_4a11 {
        bail!(
            "--pin-dir {}: {} is not on a bpffs; mount one with `mount -t bpf bpf /sys/fs/bpf` (cargo xtask setup does)",
            pin_dir.display(),
            dir.display()
        );
    }
    Ok(())
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
