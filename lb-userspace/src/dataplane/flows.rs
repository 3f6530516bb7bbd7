//! The conntrack tables' walk, lookup and delete, for either family's map: batched
//! (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`), with aya's one-by-one calls as the
//! fallback on kernels without batches.

use std::os::fd::{AsFd as _, BorrowedFd};

use aya::maps::{HashMap, IterableMap as _, MapData};

use super::{
    maps::{deleted, op_err},
    sys,
};
use crate::error::MapOpError;

/// A conntrack table's entry for `k`, if it has one.
pub(super) fn lookup<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    k: &K,
) -> Result<Option<V>, MapOpError> {
    match map.get(k, 0) {
        Ok(e) => Ok(Some(e)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(MapOpError {
            map: name,
            op: "lookup".into(),
            source,
        }),
    }
}

/// Calls `f` on each batch of a conntrack table's entries (see [`SideMaps::walk_flows`]).
pub(super) fn walk_batches<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    f: &mut dyn FnMut(&[K], &[V]),
) -> Result<usize, MapOpError> {
    let err = |e: std::io::Error| MapOpError {
        map: name,
        op: "batch walk".into(),
        source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error: e,
        }),
    };
    let fd: BorrowedFd<'_> = map.map().fd().as_fd();
    let mut keys = vec![K::default(); WALK_BATCH];
    let mut values = vec![V::default(); WALK_BATCH];
    // The hash map's cursor is a bucket index (a u32); the kernel writes the next one.
    let (mut cursor, mut next) = (0u32, 0u32);
    let mut first = true;
    let mut seen = 0;
    loop {
        // SAFETY: `keys` and `values` hold WALK_BATCH keys and values of the map's types,
        // and `cursor`/`next` one u32 each; all outlive the call.
        let r = unsafe {
            sys::lookup_batch(
                fd,
                (!first).then_some((&raw const cursor).cast()),
                (&raw mut next).cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                WALK_BATCH as u32,
            )
        };
        let (n, end) = match r {
            Ok(x) => x,
            Err(e) if first && sys::batch_unsupported(&e) => {
                return walk_one_by_one(map, name, f);
            }
            Err(e) => return Err(err(e)),
        };
        f(&keys[..n as usize], &values[..n as usize]);
        seen += n as usize;
        if end {
            return Ok(seen);
        }
        cursor = next;
        first = false;
    }
}

fn walk_one_by_one<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
    f: &mut dyn FnMut(&[K], &[V]),
) -> Result<usize, MapOpError> {
    let mut seen = 0;
    for item in map {
        match item {
            Ok((k, e)) => {
                f(&[k], &[e]);
                seen += 1;
            }
            // Evicted between the key walk and the lookup.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(MapOpError {
                    map: name,
                    op: "walk".into(),
                    source,
                });
            }
        }
    }
    Ok(seen)
}

/// Deletes `keys` from a conntrack table with `BPF_MAP_DELETE_BATCH`; a key the LRU evicted
/// meanwhile is skipped.
pub(super) fn delete_keys<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    keys: &[K],
) -> Result<(), MapOpError> {
    let mut at = 0;
    while at < keys.len() {
        let rest = &keys[at..];
        let count = u32::try_from(rest.len().min(WALK_BATCH)).expect("bounded");
        let fd = map.map().fd().as_fd();
        // SAFETY: `rest` holds at least `count` keys of the map's key type.
        let (n, e) = unsafe { sys::delete_batch(fd, rest.as_ptr().cast(), count) };
        at += n as usize;
        match e {
            None => {}
            // The key at `at` is gone already (evicted, or ended): skip it.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => at += 1,
            Some(e) if sys::batch_unsupported(&e) && n == 0 => {
                for k in rest {
                    deleted(map.remove(k)).map_err(op_err(name, "purge"))?;
                }
                return Ok(());
            }
            Some(e) => {
                return Err(MapOpError {
                    map: name,
                    op: "batch delete".into(),
                    source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_delete_batch",
                        io_error: e,
                    }),
                });
            }
        }
    }
    Ok(())
}

/// Entries per conntrack batch (keys and values of a batch: 4096 × 80 bytes).
pub(super) const WALK_BATCH: usize = 4096;
