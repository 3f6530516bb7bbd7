//! Loading the XDP object: pinned maps (reused by a restarted agent), load-time settings, and
//! the checks that refuse pins of another layout or size.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuHashMap, PerCpuValues, ProgramArray},
    programs::{SchedClassifier, TcAttachType, TracePoint, Xdp, XdpMode},
};
use lb_common::{
    consts::{
        PROGRAM_NAME, TAIL_PROGRAMS, XMIT_PROGRAMS, global_names, map_layout_version, map_names,
    },
    xmit::XmitFails,
};

use super::Maps;
use crate::error::LoadError;

/// The XDP object, as the agent embeds it (built by `build.rs`).
pub static LB_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));

/// The baseline programs (`xdp_pass`, `xdp_fwd`; see `lb-ebpf/src/baseline.rs`), for the
/// benchmark and the lab. The agent never loads them.
pub static BASELINE_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-baseline"));

/// The conntrack variants the benchmark compares (`lb-ebpf/src/ctprobe.rs`); its maps are
/// pinned by name, so load it only under a pin directory of its own.
pub static CTPROBE_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ctprobe"));

/// The backends' decapsulation program (`lb-ebpf/src/decap.rs`), loaded by `lb backend
/// setup` on a floating-IP backend (and the fixtures); its maps are pinned by name, so load it
/// only under a pin directory of its own.
pub static DECAP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

/// How to load the object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// bpffs directory for the maps. Every map is pinned by name (so a restarted agent finds
    /// them); there is no unpinned mode, because aya would then pin into /sys/fs/bpf itself.
    pub pin_dir: PathBuf,
    pub hash_seed: u32,
    pub conntrack_flows: u32,
    pub ring_slots: u32,
    /// How long a closed TCP flow still translates, in seconds.
    pub tcp_close_timeout_s: u32,
    /// The flood guard's rate: new flows per second per CPU that are tracked (0: no limit).
    pub new_flow_rate: u32,
    /// aya-log level for the kernel side (0 = off, 4 = debug).
    pub bpf_log_level: u8,
    /// Leave by the ingress device with a redirect instead of `XDP_TX` (`--xdp-tx`).
    pub tx_redirect: bool,
    /// `lb trace`'s hooks compiled in (the agent's always are; the benchmark's baseline
    /// compiles them out to measure what they cost when tracing is off).
    pub trace_hooks: bool,
    /// Floating IP's outer source addresses and GUE port (`LB_ENCAP`), written at every load.
    pub encap: lb_common::encap::EncapConfig,
}

impl LoadOptions {
    /// Options with the default settings, pinning under `pin_dir`.
    #[must_use]
    pub fn new(pin_dir: PathBuf) -> Self {
        let s = crate::config::AgentSettings::default();
        Self {
            pin_dir,
            hash_seed: s.hash_seed,
            conntrack_flows: s.conntrack_flows,
            ring_slots: s.ring_slots,
            tcp_close_timeout_s: s.tcp_close_timeout_s,
            new_flow_rate: s.new_flow_rate,
            bpf_log_level: 0,
            tx_redirect: false,
            trace_hooks: true,
            encap: s.encap(),
        }
    }
}

/// The loaded object: its program and (until taken) its maps.
pub struct Dataplane {
    pub ebpf: Ebpf,
}

impl Dataplane {
    /// Loads and verifies the program. With a pin directory, maps already pinned there are
    /// reused (their entries survive an agent restart) and new ones are pinned.
    ///
    /// # Errors
    /// The pin directory cannot be made, the object does not load or verify.
    pub fn load(opts: &LoadOptions) -> Result<(Self, Maps), LoadError> {
        let mut loader = EbpfLoader::new();
        let (flow_cost, flow_burst) =
            lb_common::maps::flow_bucket(u64::from(opts.new_flow_rate)).unwrap_or((0, 0));
        let tx_redirect = u8::from(opts.tx_redirect);
        let trace_hooks = u8::from(opts.trace_hooks);
        let dir = &opts.pin_dir;
        std::fs::create_dir_all(dir).map_err(|source| LoadError::PinDir {
            path: dir.clone(),
            source,
        })?;
        check_layout(dir)?;
        check_sizes(dir, opts)?;
        loader.default_map_pin_directory(dir);
        loader
            .override_global(global_names::HASH_SEED, &opts.hash_seed, true)
            .override_global(global_names::CLOSE_TIMEOUT, &opts.tcp_close_timeout_s, true)
            .override_global(global_names::FLOW_COST, &flow_cost, true)
            .override_global(global_names::FLOW_BURST, &flow_burst, true)
            .override_global(global_names::AYA_LOG_LEVEL, &opts.bpf_log_level, false)
            .override_global(global_names::TX_REDIRECT, &tx_redirect, true)
            .override_global(global_names::TRACE_HOOKS, &trace_hooks, true)
            .map_max_entries(map_names::CONNTRACK, opts.conntrack_flows)
            .map_max_entries(map_names::CONNTRACK6, opts.conntrack_flows)
            .map_max_entries(map_names::RING, opts.ring_slots);
        let mut ebpf = loader.load(LB_OBJ)?;
        for name in std::iter::once(PROGRAM_NAME).chain(TAIL_PROGRAMS.map(|(_, n)| n)) {
            program_mut(&mut ebpf, name)?
                .load()
                .map_err(|source| LoadError::Program {
                    what: format!("load {name}"),
                    source,
                })?;
        }
        // The tunnel probes' tc program, verified with the rest; attached by
        // `attach_probe_encap` once the probe device exists.
        let probe: &mut SchedClassifier = ebpf
            .program_mut(lb_common::encap::probe::PROGRAM)
            .ok_or(LoadError::MissingProgram(lb_common::encap::probe::PROGRAM))?
            .try_into()
            .map_err(|source| LoadError::Program {
                what: lb_common::encap::probe::PROGRAM.into(),
                source,
            })?;
        probe.load().map_err(|source| LoadError::Program {
            what: format!("load {}", lb_common::encap::probe::PROGRAM),
            source,
        })?;
        // The tail-call slots (hairpin, outbound, IPv6), each replaced in place: a pinned array
        // that a previous agent filled keeps working until this update.
        let mut progs: ProgramArray<MapData> = take_map(&mut ebpf, map_names::PROGS)?;
        for (slot, name) in TAIL_PROGRAMS {
            let fd = program_mut(&mut ebpf, name)?
                .fd()
                .map_err(|source| LoadError::Program {
                    what: name.into(),
                    source,
                })?;
            progs.set(slot, fd, 0).map_err(|source| LoadError::Map {
                name: map_names::PROGS,
                source,
            })?;
        }
        let mut layout: Array<MapData, u64> = take_map(&mut ebpf, map_names::LAYOUT)?;
        layout
            .set(0, map_layout_version(), 0)
            .map_err(|source| LoadError::Map {
                name: map_names::LAYOUT,
                source,
            })?;
        // Floating IP's settings: the config's, whatever an earlier agent left.
        let mut encap: Array<MapData, lb_common::encap::EncapConfig> =
            take_map(&mut ebpf, map_names::ENCAP)?;
        encap
            .set(0, opts.encap, 0)
            .map_err(|source| LoadError::Map {
                name: map_names::ENCAP,
                source,
            })?;
        let maps = Maps::take(&mut ebpf)?;
        Ok((Self { ebpf }, maps))
    }

    /// Starts counting the frames the kernel loses after the program sent them
    /// (`lb_common::xmit`), for the interfaces `ifindexes`: an entry per interface in
    /// `LB_XMIT_FAILS` (kept if a previous agent made it, so the counts survive a restart;
    /// entries of interfaces no longer served are removed), then the tracepoint programs,
    /// attached for as long as `self` lives.
    ///
    /// # Errors
    /// The map cannot be written, or a program does not load or attach (no tracefs, say); the
    /// text names which and why. The data plane works without the counters.
    pub fn count_lost_frames(&mut self, dir: &Path, ifindexes: &[u32]) -> Result<(), String> {
        let name = map_names::XMIT_FAILS;
        let data = MapData::from_pin(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let mut fails =
            PerCpuHashMap::<MapData, u32, XmitFails>::try_from(aya::maps::Map::PerCpuHashMap(data))
                .map_err(|e| format!("{name}: {e}"))?;
        let stale: Vec<u32> = fails
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !ifindexes.contains(k))
            .collect();
        for k in stale {
            fails
                .remove(&k)
                .map_err(|e| format!("{}: remove {k}: {e}", map_names::XMIT_FAILS))?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| format!("counting CPUs: {e}"))?;
        for &i in ifindexes {
            let zero = PerCpuValues::try_from(vec![XmitFails::default(); cpus])
                .map_err(|e| e.to_string())?;
            match fails.insert(i, zero, u64::from(aya_obj::generated::BPF_NOEXIST)) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(format!("{}: add {i}: {e}", map_names::XMIT_FAILS)),
            }
        }
        for (prog, point) in XMIT_PROGRAMS {
            let tp: &mut TracePoint = self
                .ebpf
                .program_mut(prog)
                .ok_or_else(|| format!("the object has no program {prog}"))?
                .try_into()
                .map_err(|e| format!("{prog}: {e}"))?;
            tp.load().map_err(|e| format!("load {prog}: {e}"))?;
            tp.attach("xdp", point)
                .map_err(|e| format!("attach {prog} to xdp:{point}: {e}"))?;
        }
        Ok(())
    }

    /// Attaches the tunnel probes' tc program (`lb_common::encap::probe`) to `iface`'s egress,
    /// for as long as `self` lives (a TCX link: a restarted agent attaches its own).
    ///
    /// # Errors
    /// The kernel refuses the attachment.
    pub fn attach_probe_encap(&mut self, iface: &str) -> Result<(), String> {
        let name = lb_common::encap::probe::PROGRAM;
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| format!("the object has no program {name}"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))?;
        prog.attach(iface, TcAttachType::Egress)
            .map_err(|e| format!("attach {name} to {iface} egress: {e}"))?;
        Ok(())
    }

    /// The XDP program (its fd for the pinned links of `crate::link`, and `BPF_PROG_TEST_RUN`).
    ///
    /// # Errors
    /// Only if the object lacks the program, which the load already checked.
    pub fn program(&mut self) -> Result<&mut Xdp, LoadError> {
        program_mut(&mut self.ebpf, PROGRAM_NAME)
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program {
            what: name.into(),
            source,
        })
}

/// Refuses a pin directory whose maps were pinned by a build with another map layout: aya
/// would reuse them by name and this build would misread their entries. A directory with
/// pinned maps but no `LB_LAYOUT` predates versioning and is refused the same way.
fn check_layout(dir: &Path) -> Result<(), LoadError> {
    let want = map_layout_version();
    let refuse = |found: String| LoadError::Layout {
        dir: dir.to_path_buf(),
        found,
        want: format!("{want:#018x}"),
    };
    let pin = dir.join(map_names::LAYOUT);
    if !pin.exists() {
        let others = map_names::ALL.iter().any(|m| dir.join(m).exists());
        return if others {
            Err(refuse("none (pinned before layouts were versioned)".into()))
        } else {
            Ok(())
        };
    }
    let found = MapData::from_pin(&pin)
        .ok()
        .and_then(|d| Array::<MapData, u64>::try_from(aya::maps::Map::Array(d)).ok())
        .and_then(|a| a.get(&0, 0).ok());
    match found {
        Some(v) if v == want => Ok(()),
        // 0: pinned by an agent that died between creating and stamping the maps; the maps
        // have this build's layout (they were created from this object).
        Some(0) => Ok(()),
        Some(v) => Err(refuse(format!("{v:#018x}"))),
        None => Err(refuse("unreadable".into())),
    }
}

/// Refuses pinned maps whose size differs from the configured one. aya reuses a pinned map
/// as it is and reports the object's size for it, so the agent would allocate table regions
/// past the ring's end (or count on flows the conntrack map cannot hold).
fn check_sizes(dir: &Path, opts: &LoadOptions) -> Result<(), LoadError> {
    // Both hold one entry per unit of their setting: a slot, a flow (module doc of the
    // conntrack map).
    for (map, setting, want) in [
        (map_names::RING, "agent.ring_slots", opts.ring_slots),
        (
            map_names::CONNTRACK,
            "agent.conntrack_flows",
            opts.conntrack_flows,
        ),
    ] {
        let pin = dir.join(map);
        if !pin.exists() {
            continue;
        }
        let pinned = MapData::from_pin(&pin)
            .and_then(|d| d.info())
            .map_err(|source| LoadError::Map { name: map, source })?
            .max_entries();
        if pinned != want {
            return Err(LoadError::Size {
                dir: dir.to_path_buf(),
                map,
                setting,
                pinned,
                want,
            });
        }
    }
    Ok(())
}

/// Takes a map out of the object, typed.
pub(super) fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}

/// Removes the map pins of a pin directory (a plain agent stop cleans up after itself).
///
/// # Errors
/// A pin that exists but cannot be removed.
pub fn unpin_all(dir: &Path) -> std::io::Result<()> {
    for name in map_names::ALL {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e)
            if e.kind() != std::io::ErrorKind::NotFound
                && e.raw_os_error() != Some(libc::ENOTEMPTY) =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

/// The XDP attach mode, as the CLI spells it.
#[must_use]
pub const fn xdp_mode(native: bool) -> XdpMode {
    if native {
        XdpMode::Driver
    } else {
        XdpMode::Skb
    }
}
