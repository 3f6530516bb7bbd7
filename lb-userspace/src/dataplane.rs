//! The XDP object: loading it (pinned maps, load-time settings, the layout check) and its
//! maps. Attaching is `crate::link` (pinned bpf_links).
//!
//! [`Maps`] is the only owner of the kernel maps in the agent; the reconciler holds it, and
//! nothing else writes them (tests provision fixtures through the same type).

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues, ProgramArray,
        lpm_trie::Key as LpmKey,
    },
    programs::{Xdp, XdpMode},
};
use lb_common::{
    addr::Addr,
    consts::{
        HAIRPIN_PROGRAM_NAME, PROG_HAIRPIN, PROGRAM_NAME, global_names, map_layout_version,
        map_names,
    },
    flow::FlowKey,
    maps::{
        AclKeyData, AclValue, Backend, BackendId, ConnEntry, Counters, NextHop, PipEntry,
        RouteKeyData, ServiceInfo, ServiceKey, VipInfo, VipKey,
    },
};

use crate::error::{LoadError, MapOpError};

/// The XDP object, as the agent embeds it (built by `build.rs`).
pub static LB_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));

/// The baseline programs (`xdp_pass`, `xdp_fwd`; see `lb-ebpf/src/baseline.rs`), for the
/// benchmark and the lab. The agent never loads them.
pub static BASELINE_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-baseline"));

/// How to load the object.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// bpffs directory for the maps. Every map is pinned by name (so a restarted agent finds
    /// them); there is no unpinned mode, because aya would then pin into /sys/fs/bpf itself.
    pub pin_dir: PathBuf,
    pub hash_seed: u32,
    pub conntrack_flows: u32,
    pub ring_slots: u32,
    /// aya-log level for the kernel side (0 = off, 4 = debug).
    pub bpf_log_level: u8,
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
            bpf_log_level: 0,
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
            .override_global(global_names::AYA_LOG_LEVEL, &opts.bpf_log_level, false)
            .map_max_entries(map_names::CONNTRACK, opts.conntrack_flows.saturating_mul(2))
            .map_max_entries(map_names::RING, opts.ring_slots);
        let mut ebpf = loader.load(LB_OBJ)?;
        for name in [PROGRAM_NAME, HAIRPIN_PROGRAM_NAME] {
            program_mut(&mut ebpf, name)?
                .load()
                .map_err(|source| LoadError::Program {
                    what: format!("load {name}"),
                    source,
                })?;
        }
        // The tail-call slot of the hairpin program, replaced in place: a pinned array that a
        // previous agent filled keeps working until this update.
        let mut progs: ProgramArray<MapData> = take_map(&mut ebpf, map_names::PROGS)?;
        let fd = program_mut(&mut ebpf, HAIRPIN_PROGRAM_NAME)?
            .fd()
            .map_err(|source| LoadError::Program {
                what: HAIRPIN_PROGRAM_NAME.into(),
                source,
            })?;
        progs
            .set(PROG_HAIRPIN, fd, 0)
            .map_err(|source| LoadError::Map {
                name: map_names::PROGS,
                source,
            })?;
        let mut layout: Array<MapData, u64> = take_map(&mut ebpf, map_names::LAYOUT)?;
        layout
            .set(0, map_layout_version(), 0)
            .map_err(|source| LoadError::Map {
                name: map_names::LAYOUT,
                source,
            })?;
        let maps = Maps::take(&mut ebpf)?;
        Ok((Self { ebpf }, maps))
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
    for (map, setting, want, per_entry) in [
        (map_names::RING, "agent.ring_slots", opts.ring_slots, 1),
        // Two entries per flow (module doc of the conntrack map).
        (
            map_names::CONNTRACK,
            "agent.conntrack_flows",
            opts.conntrack_flows,
            2,
        ),
    ] {
        let pin = dir.join(map);
        if !pin.exists() {
            continue;
        }
        let entries = MapData::from_pin(&pin)
            .and_then(|d| d.info())
            .map_err(|source| LoadError::Map { name: map, source })?
            .max_entries();
        let pinned = entries / per_entry;
        if entries != want.saturating_mul(per_entry) {
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
fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
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

// The batch helpers below pack bpf_attr's two u32 fields (count, map_fd) into one u64, low
// half first: that is the layout on little-endian hosts only.
const _: () = assert!(
    cfg!(target_endian = "little"),
    "bpf_attr packing assumes little endian"
);

/// The `batch` member of `union bpf_attr` for an array map: in_batch, out_batch, keys, values
/// (u64 each), count and map_fd (u32 each), elem_flags and flags (u64 each, zero); the rest of
/// the union stays zero.
fn batch_attr<V: aya::Pod>(
    map: &Array<MapData, V>,
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
) -> [u64; 16] {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya::maps::IterableMap as _;
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut attr = [0u64; 16];
    attr[..4].copy_from_slice(&[in_batch, out_batch, keys, values]);
    attr[4] = u64::from(count) | (u64::from(fd.cast_unsigned()) << 32);
    attr
}

/// Runs one batch command. `Ok(true)`: done (with `end_ok`, also when the kernel's walk hit
/// the array's end, `ENOENT`); `Ok(false)`: the kernel has no batch operations for this map,
/// so the caller falls back to single-slot calls.
///
/// # Safety
/// `attr` must be a valid `bpf_attr` for `cmd` whose pointers reference buffers of the sizes
/// it states, alive for the call.
unsafe fn bpf_batch(
    cmd: libc::c_long,
    call: &'static str,
    attr: &mut [u64; 16],
    end_ok: bool,
) -> Result<bool, aya::sys::SyscallError> {
    let Err(io_error) = crate::link::bpf(cmd, attr) else {
        return Ok(true);
    };
    match io_error.raw_os_error() {
        Some(libc::ENOENT) if end_ok => Ok(true),
        // EINVAL: a kernel that predates the command (a real EINVAL then shows in the
        // fallback); 524: the kernel's ENOTSUPP, for maps without batch operations.
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524) => Ok(false),
        _ => Err(aya::sys::SyscallError { call, io_error }),
    }
}

/// Writes `values` to array slots `off..` with one `BPF_MAP_UPDATE_BATCH`. `Ok(false)` when
/// the kernel does not support batch updates for this map (the caller falls back).
fn update_batch(
    map: &Array<MapData, BackendId>,
    off: u32,
    values: &[BackendId],
) -> Result<bool, aya::sys::SyscallError> {
    let keys: Vec<u32> = (off..).take(values.len()).collect();
    let count = u32::try_from(values.len()).expect("chunked");
    let mut attr = batch_attr(
        map,
        0,
        0,
        keys.as_ptr() as u64,
        values.as_ptr() as u64,
        count,
    );
    // SAFETY: the pointers reference `keys` and `values`, both `count` u32s long and alive
    // for the call.
    unsafe { bpf_batch(26, "bpf_map_update_batch", &mut attr, false) }
}

/// Reads array slots `off..off + out.len()` into `out` with one `BPF_MAP_LOOKUP_BATCH`.
/// `Ok(false)` when the kernel does not support batch lookups for this map (the caller falls
/// back to one lookup per slot). A read past the array's end is an error, not a short read.
fn lookup_batch<V: aya::Pod>(
    map: &Array<MapData, V>,
    off: u32,
    out: &mut [V],
) -> Result<bool, aya::sys::SyscallError> {
    let mut keys = vec![0u32; out.len()];
    let count = u32::try_from(out.len()).expect("chunked");
    // The kernel walks keys with get_next_key from `in_batch`, so the batch starts *after* it:
    // `off - 1`, or no in_batch at all to start at slot 0.
    let in_batch = off.wrapping_sub(1);
    let mut out_batch = 0u32;
    let in_ptr = if off == 0 {
        0
    } else {
        (&raw const in_batch) as u64
    };
    let mut attr = batch_attr(
        map,
        in_ptr,
        (&raw mut out_batch) as u64,
        keys.as_mut_ptr() as u64,
        out.as_mut_ptr() as u64,
        count,
    );
    // SAFETY: `keys` and `out` have room for `count` keys and values (`V` is the map's value
    // type, Pod), `in_batch` and `out_batch` for one key; all outlive the call. ENOENT: the
    // walk reached the array's end, and the count written back says how far it got.
    if !unsafe { bpf_batch(24, "bpf_map_lookup_batch", &mut attr, true) }? {
        return Ok(false);
    }
    let done = u32::try_from(attr[4] & 0xffff_ffff).expect("masked");
    if done != count || keys.iter().zip(off..).any(|(k, want)| *k != want) {
        return Err(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error: std::io::Error::other(format!(
                "asked for {count} slots from {off}, got {done}"
            )),
        });
    }
    Ok(true)
}

/// Array slots `off..off + len`, read in batches of 64 Ki (one lookup per slot on kernels
/// without batch lookups).
fn read_array<V: aya::Pod + Default>(
    map: &Array<MapData, V>,
    name: &'static str,
    off: u32,
    len: u32,
) -> Result<Vec<V>, MapOpError> {
    const CHUNK: u32 = 1 << 16;
    let mut out = vec![V::default(); len as usize];
    let mut at = 0u32;
    while at < len {
        let n = CHUNK.min(len - at);
        let buf = &mut out[at as usize..(at + n) as usize];
        let batched = lookup_batch(map, off + at, buf).map_err(|source| MapOpError {
            map: name,
            op: format!("batch lookup of {n} slots at {}", off + at),
            source: aya::maps::MapError::SyscallError(source),
        })?;
        if !batched {
            for (i, v) in (off + at..).zip(buf.iter_mut()) {
                *v = map
                    .get(&i, 0)
                    .map_err(op_err(name, format!("read slot {i}")))?;
            }
        }
        at += n;
    }
    Ok(out)
}

/// Sum of one per-CPU slot of counters.
fn sum_counters(v: &PerCpuValues<Counters>) -> Counters {
    v.iter().fold(Counters::default(), |a, c| a.add(c))
}

/// The program's maps, typed.
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceInfo>,
    pub vips: HashMap<MapData, VipKey, VipInfo>,
    pub backends: Array<MapData, Backend>,
    pub ring: Array<MapData, BackendId>,
    pub conntrack: HashMap<MapData, FlowKey, ConnEntry>,
    pub routes: LpmTrie<MapData, RouteKeyData, NextHop>,
    pub reasons: PerCpuArray<MapData, u64>,
    pub svc_stats: PerCpuArray<MapData, Counters>,
    pub be_stats: PerCpuArray<MapData, Counters>,
    pub acl: LpmTrie<MapData, AclKeyData, AclValue>,
    pub pips: HashMap<MapData, VipKey, PipEntry>,
    pub pip_rev: HashMap<MapData, VipKey, PipEntry>,
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        Ok(Self {
            services: take_map(ebpf, map_names::SERVICES)?,
            vips: take_map(ebpf, map_names::VIPS)?,
            backends: take_map(ebpf, map_names::BACKENDS)?,
            ring: take_map(ebpf, map_names::RING)?,
            conntrack: take_map(ebpf, map_names::CONNTRACK)?,
            routes: take_map(ebpf, map_names::ROUTES)?,
            reasons: take_map(ebpf, map_names::REASON_STATS)?,
            svc_stats: take_map(ebpf, map_names::SERVICE_STATS)?,
            be_stats: take_map(ebpf, map_names::BACKEND_STATS)?,
            acl: take_map(ebpf, map_names::ACL)?,
            pips: take_map(ebpf, map_names::PIPS)?,
            pip_rev: take_map(ebpf, map_names::PIP_REV)?,
        })
    }

    /// Deletes the conntrack entries `doomed` selects; returns how many. An entry the LRU
    /// evicted meanwhile is already gone, which is fine.
    fn purge_where(
        &mut self,
        doomed: impl Fn(&FlowKey, &ConnEntry) -> bool,
    ) -> Result<usize, MapOpError> {
        let keys: Vec<FlowKey> = self
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| doomed(k, e))
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            deleted(self.conntrack.remove(k)).map_err(op_err(map_names::CONNTRACK, "purge"))?;
        }
        Ok(keys.len())
    }

    /// Packets counted under verdict reason `r`, summed over CPUs.
    ///
    /// # Errors
    /// The map read fails.
    pub fn reason_count(&self, r: u32) -> Result<u64, MapOpError> {
        let v = self
            .reasons
            .get(&r, 0)
            .map_err(op_err(map_names::REASON_STATS, "read"))?;
        Ok(v.iter().sum())
    }
}

/// A delete whose key is already gone counts as done: every delete of the agent is idempotent
/// (the LRU may have evicted a flow first, or a key may be synced twice). aya reports a missing
/// key as the syscall's `ENOENT`, not as `MapError::KeyNotFound`, so both are accepted.
fn deleted(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        r => r,
    }
}

fn op_err(
    map: &'static str,
    op: impl Into<String>,
) -> impl FnOnce(aya::maps::MapError) -> MapOpError {
    let op = op.into();
    move |source| MapOpError { map, op, source }
}

/// What the reconciler needs from the maps. The real implementation is [`Maps`]; unit tests
/// use an in-memory fake, so reconciliation logic is tested without a kernel.
///
/// Deletes are idempotent: deleting a key that is not there succeeds.
pub trait MapOps {
    fn put_service(&mut self, k: &ServiceKey, v: &ServiceInfo) -> Result<(), MapOpError>;
    fn del_service(&mut self, k: &ServiceKey) -> Result<(), MapOpError>;
    fn put_vip(&mut self, k: &VipKey, v: &VipInfo) -> Result<(), MapOpError>;
    fn del_vip(&mut self, k: &VipKey) -> Result<(), MapOpError>;
    fn put_backend(&mut self, id: BackendId, b: &Backend) -> Result<(), MapOpError>;
    fn put_slots(&mut self, off: u32, slots: &[BackendId]) -> Result<(), MapOpError>;
    fn put_route(
        &mut self,
        prefix_len: u32,
        dst: RouteKeyData,
        nh: &NextHop,
    ) -> Result<(), MapOpError>;
    fn del_route(&mut self, prefix_len: u32, dst: RouteKeyData) -> Result<(), MapOpError>;
    /// Clears the counters of a service id and a backend id before they are reused.
    fn zero_service_stats(&mut self, id: u32) -> Result<(), MapOpError>;
    fn zero_backend_stats(&mut self, id: BackendId) -> Result<(), MapOpError>;
    /// Deletes every conntrack entry that points at `backend`; returns how many.
    fn purge_flows(&mut self, backend: BackendId) -> Result<usize, MapOpError>;
    /// Deletes every conntrack entry that points at a backend id `active` says is not in use
    /// (as its backend, or as the connecting backend of a hairpin flow); returns how many.
    fn purge_stale(&mut self, active: &dyn Fn(BackendId) -> bool) -> Result<usize, MapOpError>;
    fn service_counters(&self, id: u32) -> Result<Counters, MapOpError>;
    fn backend_counters(&self, id: BackendId) -> Result<Counters, MapOpError>;
    fn reason_counters(&self) -> Result<Vec<u64>, MapOpError>;
    /// Writes one compiled ACL entry of set `acl_id`.
    fn put_acl(&mut self, acl_id: u32, e: &lb_common::acl::Entry) -> Result<(), MapOpError>;
    /// Deletes one ACL entry of set `acl_id`.
    fn del_acl(&mut self, acl_id: u32, p: &lb_common::acl::Prefix) -> Result<(), MapOpError>;
    /// Deletes the client → VIP conntrack entries of `service` whose source `doomed` selects;
    /// returns how many.
    fn purge_sources(
        &mut self,
        service: u32,
        doomed: &dyn Fn(&lb_common::addr::Addr) -> bool,
    ) -> Result<usize, MapOpError>;
    /// Writes both directions of a PIP: PIP → (instance, next hop), instance → PIP.
    fn put_pip(&mut self, pip: &Addr, dip: &Addr, nh: &NextHop) -> Result<(), MapOpError>;
    /// Deletes both directions of a PIP.
    fn del_pip(&mut self, pip: &Addr, dip: &Addr) -> Result<(), MapOpError>;
    /// Live conntrack entries per backend id (an O(table) walk, for status output).
    fn flows_per_backend(&self) -> Result<std::collections::HashMap<BackendId, u64>, MapOpError>;
    /// Everything an earlier agent left in the pinned maps, except table slots and conntrack
    /// (read once, when an agent starts).
    fn read_live(&self) -> Result<LiveMaps, MapOpError>;
    /// Table slots `off..off + len` of `LB_RING`.
    fn read_slots(&self, off: u32, len: u32) -> Result<Vec<BackendId>, MapOpError>;
}

/// What the pinned maps hold when an agent starts: the previous agent's work, which the new
/// one adopts instead of rebuilding (see `Reconciler::start`).
#[derive(Clone, Debug, Default)]
pub struct LiveMaps {
    pub services: Vec<(ServiceKey, ServiceInfo)>,
    pub vips: Vec<(VipKey, VipInfo)>,
    /// The active entries of `LB_BACKENDS`.
    pub backends: Vec<(BackendId, Backend)>,
    /// Every `LB_ACL` entry, with its set id.
    pub acl: Vec<(u32, lb_common::acl::Entry)>,
    /// `LB_PIPS`: (PIP, instance, next hop).
    pub pips: Vec<(Addr, Addr, NextHop)>,
    /// `LB_PIP_REV`: (instance, PIP).
    pub pip_revs: Vec<(Addr, Addr)>,
    /// `LB_ROUTES`: (prefix length, prefix, next hop).
    pub routes: Vec<(u32, Addr, NextHop)>,
}

fn zero_per_cpu<V: aya::Pod + Default + Clone>(
    m: &mut PerCpuArray<MapData, V>,
    name: &'static str,
    id: u32,
) -> Result<(), MapOpError> {
    let as_map_err = |call, io_error| {
        let source = aya::maps::MapError::SyscallError(aya::sys::SyscallError { call, io_error });
        MapOpError {
            map: name,
            op: format!("zero slot {id}"),
            source,
        }
    };
    let cpus = aya::util::nr_cpus().map_err(|(call, e)| as_map_err(call, e))?;
    let zeros = PerCpuValues::try_from(vec![V::default(); cpus])
        .map_err(|e| as_map_err("PerCpuValues", e))?;
    m.set(id, zeros, 0)
        .map_err(op_err(name, format!("zero slot {id}")))
}

impl MapOps for Maps {
    fn put_service(&mut self, k: &ServiceKey, v: &ServiceInfo) -> Result<(), MapOpError> {
        self.services.insert(k, v, 0).map_err(|source| {
            let op = format!("insert service {k:?}");
            MapOpError {
                map: map_names::SERVICES,
                op,
                source,
            }
        })
    }
    fn del_service(&mut self, k: &ServiceKey) -> Result<(), MapOpError> {
        deleted(self.services.remove(k)).map_err(op_err(map_names::SERVICES, "remove service"))
    }
    fn put_vip(&mut self, k: &VipKey, v: &VipInfo) -> Result<(), MapOpError> {
        self.vips
            .insert(k, v, 0)
            .map_err(op_err(map_names::VIPS, "insert"))
    }
    fn del_vip(&mut self, k: &VipKey) -> Result<(), MapOpError> {
        deleted(self.vips.remove(k)).map_err(op_err(map_names::VIPS, "remove"))
    }
    fn put_backend(&mut self, id: BackendId, b: &Backend) -> Result<(), MapOpError> {
        self.backends
            .set(id, b, 0)
            .map_err(op_err(map_names::BACKENDS, format!("set {id}")))
    }
    fn put_slots(&mut self, off: u32, slots: &[BackendId]) -> Result<(), MapOpError> {
        // One syscall per 64 Ki slots (BPF_MAP_UPDATE_BATCH) instead of one per slot: a
        // default table is 65 537 slots, and 10k small services are 2.5 M.
        const CHUNK: usize = 1 << 16;
        let mut at = off;
        for chunk in slots.chunks(CHUNK) {
            let done = update_batch(&self.ring, at, chunk).map_err(|source| MapOpError {
                map: map_names::RING,
                op: format!("batch update of {} slots at {at}", chunk.len()),
                source: aya::maps::MapError::SyscallError(source),
            })?;
            if !done {
                // A kernel without batch updates for arrays: slot by slot.
                for (i, id) in (at..).zip(chunk) {
                    self.ring
                        .set(i, id, 0)
                        .map_err(op_err(map_names::RING, format!("set slot {i}")))?;
                }
            }
            at += u32::try_from(chunk.len()).expect("a chunk is 64 Ki at most");
        }
        Ok(())
    }
    fn put_route(
        &mut self,
        prefix_len: u32,
        dst: RouteKeyData,
        nh: &NextHop,
    ) -> Result<(), MapOpError> {
        self.routes
            .insert(&LpmKey::new(prefix_len, dst), nh, 0)
            .map_err(op_err(map_names::ROUTES, "insert"))
    }
    fn del_route(&mut self, prefix_len: u32, dst: RouteKeyData) -> Result<(), MapOpError> {
        deleted(self.routes.remove(&LpmKey::new(prefix_len, dst)))
            .map_err(op_err(map_names::ROUTES, "remove"))
    }
    fn zero_service_stats(&mut self, id: u32) -> Result<(), MapOpError> {
        zero_per_cpu(&mut self.svc_stats, map_names::SERVICE_STATS, id)
    }
    fn zero_backend_stats(&mut self, id: BackendId) -> Result<(), MapOpError> {
        zero_per_cpu(&mut self.be_stats, map_names::BACKEND_STATS, id)
    }
    fn purge_flows(&mut self, backend: BackendId) -> Result<usize, MapOpError> {
        // Hairpin entries also die with their connecting backend (`peer`; 0 elsewhere).
        self.purge_where(|_, e| e.backend == backend || e.peer == backend)
    }
    fn purge_stale(&mut self, active: &dyn Fn(BackendId) -> bool) -> Result<usize, MapOpError> {
        self.purge_where(|_, e| !active(e.backend) || (e.peer != 0 && !active(e.peer)))
    }
    fn service_counters(&self, id: u32) -> Result<Counters, MapOpError> {
        let v = self
            .svc_stats
            .get(&id, 0)
            .map_err(op_err(map_names::SERVICE_STATS, "read"))?;
        Ok(sum_counters(&v))
    }
    fn backend_counters(&self, id: BackendId) -> Result<Counters, MapOpError> {
        let v = self
            .be_stats
            .get(&id, 0)
            .map_err(op_err(map_names::BACKEND_STATS, "read"))?;
        Ok(sum_counters(&v))
    }
    fn reason_counters(&self) -> Result<Vec<u64>, MapOpError> {
        lb_common::verdict::ALL_REASONS
            .iter()
            .map(|r| self.reason_count(*r as u32))
            .collect()
    }
    fn put_acl(&mut self, acl_id: u32, e: &lb_common::acl::Entry) -> Result<(), MapOpError> {
        let key = LpmKey::new(
            32 + e.prefix.len,
            lb_common::maps::acl_key(acl_id, &e.prefix.addr),
        );
        let action = match e.action {
            lb_common::acl::Action::Permit => lb_common::maps::ACL_PERMIT,
            lb_common::acl::Action::Deny => lb_common::maps::ACL_DENY,
            lb_common::acl::Action::Hairpin => lb_common::maps::ACL_HAIRPIN,
        };
        let v = AclValue {
            action,
            rule: e.rule.unwrap_or(u32::MAX),
        };
        self.acl
            .insert(&key, v, 0)
            .map_err(op_err(map_names::ACL, format!("insert set {acl_id}")))
    }
    fn del_acl(&mut self, acl_id: u32, p: &lb_common::acl::Prefix) -> Result<(), MapOpError> {
        let key = LpmKey::new(32 + p.len, lb_common::maps::acl_key(acl_id, &p.addr));
        deleted(self.acl.remove(&key))
            .map_err(op_err(map_names::ACL, format!("remove from set {acl_id}")))
    }
    fn purge_sources(
        &mut self,
        service: u32,
        doomed: &dyn Fn(&lb_common::addr::Addr) -> bool,
    ) -> Result<usize, MapOpError> {
        self.purge_where(|k, e| e.is_forward() && e.service == service && doomed(&k.src))
    }
    fn put_pip(&mut self, pip: &Addr, dip: &Addr, nh: &NextHop) -> Result<(), MapOpError> {
        // Reverse first: replies can be translated before the first inbound packet arrives.
        let rev = PipEntry {
            addr: *pip,
            nh: NextHop::default(),
        };
        self.pip_rev
            .insert(VipKey { vip: *dip }, rev, 0)
            .map_err(op_err(map_names::PIP_REV, "insert"))?;
        let fwd = PipEntry {
            addr: *dip,
            nh: *nh,
        };
        self.pips
            .insert(VipKey { vip: *pip }, fwd, 0)
            .map_err(op_err(map_names::PIPS, "insert"))
    }
    fn del_pip(&mut self, pip: &Addr, dip: &Addr) -> Result<(), MapOpError> {
        for (m, name, k) in [
            (&mut self.pips, map_names::PIPS, pip),
            (&mut self.pip_rev, map_names::PIP_REV, dip),
        ] {
            deleted(m.remove(&VipKey { vip: *k })).map_err(op_err(name, "remove"))?;
        }
        Ok(())
    }
    fn flows_per_backend(&self) -> Result<std::collections::HashMap<BackendId, u64>, MapOpError> {
        let mut m = std::collections::HashMap::new();
        for item in self.conntrack.iter() {
            match item {
                Ok((_, e)) if e.is_forward() => *m.entry(e.backend).or_default() += 1,
                Ok(_) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(MapOpError {
                        map: map_names::CONNTRACK,
                        op: "walk".into(),
                        source,
                    });
                }
            }
        }
        Ok(m)
    }
    fn read_live(&self) -> Result<LiveMaps, MapOpError> {
        let services = self
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(op_err(map_names::SERVICES, "walk"))?;
        let vips = self
            .vips
            .iter()
            .collect::<Result<_, _>>()
            .map_err(op_err(map_names::VIPS, "walk"))?;
        let backends = (0..)
            .zip(read_array(
                &self.backends,
                map_names::BACKENDS,
                0,
                self.backends.len(),
            )?)
            .filter(|(_, b)| b.is_active())
            .collect();
        let mut acl = Vec::new();
        for item in self.acl.iter() {
            let (k, v) = item.map_err(op_err(map_names::ACL, "walk"))?;
            let data = k.data();
            let (id, a) = data.split_at(4);
            let action = match v.action {
                lb_common::maps::ACL_PERMIT => lb_common::acl::Action::Permit,
                lb_common::maps::ACL_HAIRPIN => lb_common::acl::Action::Hairpin,
                // ACL_DENY, and anything unknown: such a set never equals a wanted one, so it
                // is replaced, and its entries are deleted by prefix all the same.
                _ => lb_common::acl::Action::Deny,
            };
            acl.push((
                u32::from_be_bytes(id.try_into().expect("4 bytes")),
                lb_common::acl::Entry {
                    prefix: lb_common::acl::Prefix {
                        addr: a.try_into().expect("16 bytes"),
                        len: k.prefix_len().saturating_sub(32),
                    },
                    action,
                    rule: (v.rule != u32::MAX).then_some(v.rule),
                },
            ));
        }
        let mut pips = Vec::new();
        for item in self.pips.iter() {
            let (k, v) = item.map_err(op_err(map_names::PIPS, "walk"))?;
            pips.push((k.vip, v.addr, v.nh));
        }
        let mut pip_revs = Vec::new();
        for item in self.pip_rev.iter() {
            let (k, v) = item.map_err(op_err(map_names::PIP_REV, "walk"))?;
            pip_revs.push((k.vip, v.addr));
        }
        let mut routes = Vec::new();
        for item in self.routes.iter() {
            let (k, nh) = item.map_err(op_err(map_names::ROUTES, "walk"))?;
            routes.push((k.prefix_len(), k.data(), nh));
        }
        Ok(LiveMaps {
            services,
            vips,
            backends,
            acl,
            pips,
            pip_revs,
            routes,
        })
    }
    fn read_slots(&self, off: u32, len: u32) -> Result<Vec<BackendId>, MapOpError> {
        read_array(&self.ring, map_names::RING, off, len)
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
