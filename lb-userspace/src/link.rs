//! XDP attachments as pinned bpf_links, one per interface, at `<pin dir>/link_<iface>`.
//!
//! A pinned link outlives the agent: after a `kill -9`, or a stop with `--keep-attached`, the
//! program keeps running on its interfaces with the pinned maps. The next agent finds the pin
//! and swaps its own program in with one `BPF_LINK_UPDATE`, which is atomic: every packet runs
//! either the old program or the new one, and the interface is never without one. A plain stop
//! removes the pin, which destroys the link and detaches the program.
//!
//! aya 0.14 neither turns an XDP link into a pinnable fd link nor updates one, so these are
//! the four `bpf(2)` commands, raw.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `enum bpf_attach_type`: `BPF_XDP`.
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// What [`attach`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link, now pinned.
    Created,
    /// The pinned link of an earlier agent now runs this program.
    Replaced,
}

/// Where the link of `iface` is pinned.
#[must_use]
pub fn pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

/// `bpf(cmd, attr)`; `attr` is a zero-padded `union bpf_attr` (also the map batch commands
/// of `crate::dataplane`).
pub(crate) fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable bpf_attr of the size passed; every pointer in it
    // refers to memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}

fn fd_u64(fd: RawFd) -> u64 {
    u64::from(fd.cast_unsigned())
}

/// Attaches program `prog_fd` to `ifindex` through the link pinned at `pin`: replaces the
/// program of an existing pinned link, or creates and pins a new link (native or generic
/// mode). A pinned link that no longer works (its interface was deleted) is replaced by a new
/// one. The XDP mode of an existing link stays as it was created.
///
/// # Errors
/// The kernel refuses the link (e.g. another program is attached to the interface without a
/// link) or the pin.
pub fn attach(prog_fd: RawFd, ifindex: u32, native: bool, pin: &Path) -> io::Result<Attached> {
    if pin.exists() {
        let path = c_path(pin)?;
        let mut attr = [0u64; 16];
        attr[0] = path.as_ptr() as u64;
        match bpf(BPF_OBJ_GET, &mut attr).and_then(owned) {
            Ok(link) => {
                // link_update: link_fd, new_prog_fd, flags, old_prog_fd.
                let mut attr = [0u64; 16];
                attr[0] = fd_u64(link.as_raw_fd()) | (fd_u64(prog_fd) << 32);
                match bpf(BPF_LINK_UPDATE, &mut attr) {
                    Ok(_) => return Ok(Attached::Replaced),
                    Err(e) => {
                        tracing::warn!(pin = %pin.display(), error = %e, "pinned XDP link is defunct; creating a new one")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "pinned XDP link unreadable; creating a new one");
            }
        }
        std::fs::remove_file(pin)?;
    }
    // link_create: prog_fd, target_ifindex, attach_type, flags.
    let flags = if native {
        XDP_FLAGS_DRV_MODE
    } else {
        XDP_FLAGS_SKB_MODE
    };
    let mut attr = [0u64; 16];
    attr[0] = fd_u64(prog_fd) | (u64::from(ifindex) << 32);
    attr[1] = u64::from(BPF_XDP) | (u64::from(flags) << 32);
    let link = owned(bpf(BPF_LINK_CREATE, &mut attr)?)?;
    // obj_pin: pathname, bpf_fd, file_flags.
    let path = c_path(pin)?;
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    attr[1] = fd_u64(link.as_raw_fd());
    bpf(BPF_OBJ_PIN, &mut attr)?;
    Ok(Attached::Created)
}

/// Detaches: removes the pin, the link's last reference once no process holds it, so the
/// kernel destroys the link and the interface runs no program. A missing pin is fine.
///
/// # Errors
/// The pin exists but cannot be removed.
pub fn detach(pin: &Path) -> io::Result<()> {
    match std::fs::remove_file(pin) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
