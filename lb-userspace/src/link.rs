//! XDP attachments as pinned bpf_links, one per interface, at `<pin dir>/link_<iface>`.
//!
//! A pinned link outlives the agent: after a `kill -9`, or a stop with `--keep-attached`, the
//! program keeps running on its interfaces with the pinned maps. The next agent finds the pin
//! and swaps its own program in with one `BPF_LINK_UPDATE`, which is atomic: every packet runs
//! either the old program or the new one, and the interface is never without one. A plain stop
//! removes the pin, which destroys the link and detaches the program.
//!
//! aya 0.14 neither turns an XDP link into a pinnable fd link nor updates one, so these are
//! four `bpf(2)` commands of the raw layer (`crate::dataplane::sys`).

use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use crate::dataplane::sys;

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

/// Attaches program `prog` to `ifindex` through the link pinned at `pin`: replaces the
/// program of an existing pinned link, or creates and pins a new link (native or generic
/// mode). A pinned link that no longer works (its interface was deleted) is replaced by a new
/// one. The XDP mode of an existing link stays as it was created.
///
/// # Errors
/// The kernel refuses the link (e.g. another program is attached to the interface without a
/// link) or the pin.
pub fn attach(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    native: bool,
    pin: &Path,
) -> io::Result<Attached> {
    if pin.exists() {
        match sys::obj_get(pin) {
            Ok(link) => match sys::link_update(link.as_fd(), prog) {
                Ok(()) => return Ok(Attached::Replaced),
                Err(e) => {
                    tracing::warn!(pin = %pin.display(), error = %e, "pinned XDP link is defunct; creating a new one");
                }
            },
            Err(e) => {
                tracing::warn!(pin = %pin.display(), error = %e, "pinned XDP link unreadable; creating a new one");
            }
        }
        std::fs::remove_file(pin)?;
    }
    let link = sys::xdp_link_create(prog, ifindex, native)?;
    sys::obj_pin(link.as_fd(), pin)?;
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
