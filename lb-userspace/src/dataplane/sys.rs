//! The one raw `bpf(2)` layer: the commands aya 0.14 does not wrap (map batches, pinned XDP
//! links), each filling aya-obj's generated `union bpf_attr` by field name instead of packing
//! words by hand.
//!
//! Every function here is a single command or a loop of one command; the typed maps
//! (`super::maps`) and the links (`crate::link`) build on them.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use aya_obj::generated::{
    XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE, bpf_attach_type, bpf_attr, bpf_attr__bindgen_ty_3,
    bpf_cmd,
};

/// A zeroed `bpf_attr`: every command reads only its own member, and the kernel requires the
/// rest of the union to be zero.
fn zeroed() -> bpf_attr {
    // SAFETY: `bpf_attr` is a union of plain integer structs; all-zero is valid for each.
    unsafe { std::mem::zeroed() }
}

/// `bpf(cmd, attr)`.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable bpf_attr of the size passed; the callers guarantee
    // that every pointer in it refers to memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    fd.as_raw_fd().cast_unsigned()
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}

/// Whether an error means "this kernel has no batch operations for this map": `EINVAL` from a
/// kernel that predates the command (a real `EINVAL` then shows in the caller's fallback), or
/// `ENOTSUPP` (524) for a map type without them.
#[must_use]
pub fn batch_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524)
    )
}

fn batch_attr(
    map: BorrowedFd<'_>,
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
) -> bpf_attr {
    let mut attr = zeroed();
    attr.batch = bpf_attr__bindgen_ty_3 {
        in_batch,
        out_batch,
        keys,
        values,
        count,
        map_fd: fd_u32(map),
        elem_flags: 0,
        flags: 0,
    };
    attr
}

/// `BPF_MAP_UPDATE_BATCH`: writes `count` key/value pairs.
///
/// # Safety
/// `keys` and `values` must point to `count` keys and values of the map's sizes.
///
/// # Errors
/// The kernel's error (see [`batch_unsupported`] for kernels without batches).
pub unsafe fn update_batch(
    map: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    count: u32,
) -> io::Result<()> {
    let mut attr = batch_attr(map, 0, 0, keys as u64, values as u64, count);
    bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr).map(drop)
}

/// `BPF_MAP_LOOKUP_BATCH`: reads up to `count` entries after the position `in_batch` names
/// (`None`: from the start), into `keys` and `values`. Returns how many were read and whether
/// the walk reached the map's end (`ENOENT`, which also reports the last, short batch).
///
/// For an array the position is the last key read; for a hash map it is an opaque bucket
/// cursor of `token_size` bytes, which the kernel writes to `out_batch`.
///
/// # Safety
/// `keys`/`values` must have room for `count` keys and values of the map's sizes, and
/// `in_batch`/`out_batch` for one token.
///
/// # Errors
/// The kernel's error (see [`batch_unsupported`]).
pub unsafe fn lookup_batch(
    map: BorrowedFd<'_>,
    in_batch: Option<*const u8>,
    out_batch: *mut u8,
    keys: *mut u8,
    values: *mut u8,
    count: u32,
) -> io::Result<(u32, bool)> {
    let mut attr = batch_attr(
        map,
        in_batch.map_or(0, |p| p as u64),
        out_batch as u64,
        keys as u64,
        values as u64,
        count,
    );
    let done = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
    // SAFETY: the kernel wrote back the `batch` member it read.
    let n = unsafe { attr.batch.count };
    match done {
        Ok(_) => Ok((n, false)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((n, true)),
        Err(e) => Err(e),
    }
}

/// `BPF_MAP_DELETE_BATCH`: deletes `count` keys, in order, stopping at the first that fails.
/// Returns how many were deleted, and the error of the one that stopped it.
///
/// # Safety
/// `keys` must point to `count` keys of the map's size.
pub unsafe fn delete_batch(
    map: BorrowedFd<'_>,
    keys: *const u8,
    count: u32,
) -> (u32, Option<io::Error>) {
    let mut attr = batch_attr(map, 0, 0, keys as u64, 0, count);
    let r = bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr);
    // SAFETY: the kernel wrote back the `batch` member it read.
    let n = unsafe { attr.batch.count };
    (n, r.err())
}

/// `BPF_OBJ_GET`: the object pinned at `pin`.
///
/// # Errors
/// No such pin, or not a BPF object.
pub fn obj_get(pin: &Path) -> io::Result<OwnedFd> {
    let path = c_path(pin)?;
    let mut attr = zeroed();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    owned(bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?)
}

/// `BPF_OBJ_PIN`: pins `fd` at `pin`.
///
/// # Errors
/// The path exists, or is not on a bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, pin: &Path) -> io::Result<()> {
    let path = c_path(pin)?;
    let mut attr = zeroed();
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    attr.__bindgen_anon_4.bpf_fd = fd_u32(fd);
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `BPF_LINK_CREATE` of an XDP link: `prog` on `ifindex`, native (driver) or generic mode.
///
/// # Errors
/// The kernel refuses (another program attached without a link, no such interface, ...).
pub fn xdp_link_create(prog: BorrowedFd<'_>, ifindex: u32, native: bool) -> io::Result<OwnedFd> {
    let mut attr = zeroed();
    attr.link_create.__bindgen_anon_1.prog_fd = fd_u32(prog);
    attr.link_create.__bindgen_anon_2.target_ifindex = ifindex;
    attr.link_create.attach_type = bpf_attach_type::BPF_XDP as u32;
    attr.link_create.flags = if native {
        XDP_FLAGS_DRV_MODE
    } else {
        XDP_FLAGS_SKB_MODE
    };
    owned(bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)?)
}

/// `BPF_LINK_UPDATE`: `link` runs `prog` from now on (atomically: every packet sees one of
/// the two programs).
///
/// # Errors
/// The link is defunct (its interface is gone), or the program does not fit the link.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = zeroed();
    attr.link_update.link_fd = fd_u32(link);
    attr.link_update.__bindgen_anon_1.new_prog_fd = fd_u32(prog);
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}
