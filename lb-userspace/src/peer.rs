//! `lb peer attach|detach IFACE`: a pass-everything XDP program on the far end of a veth, so
//! that the peer can receive the frames the LB redirects into the pair even with GRO off
//! (veth delivers them only to a peer with NAPI; an XDP program gives it one). No C compiler
//! and no other tool needed: the program is `xdp_pass` of the embedded baseline object.
//!
//! The peer usually lives in another namespace: run the command there with
//! `nsenter --net=/run/netns/NAME lb peer attach eth0` (not `ip netns exec`, whose private
//! /sys hides the bpffs). The attachment is a bpf_link pinned under `--pin-dir`, named by the
//! namespace and the interface, so it outlives the command and `detach` finds it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aya::programs::Xdp;

use crate::{dataplane::BASELINE_OBJ, link};

/// The default pin directory of peer attachments.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb-peer";

/// Where the link of `iface` in this network namespace is pinned: the namespace's inode
/// keeps two containers' `eth0` apart.
///
/// # Errors
/// This namespace cannot be named.
pub fn pin_path(pin_dir: &Path, iface: &str) -> anyhow::Result<PathBuf> {
    Ok(link::pin_path(pin_dir, &ns_iface(iface)?))
}

/// `INODE_IFACE`: `iface` in this network namespace, named so that two namespaces' `eth0`
/// differ (pins under one bpffs directory).
///
/// # Errors
/// This namespace cannot be named.
pub fn ns_iface(iface: &str) -> anyhow::Result<String> {
    let ns = std::fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    let ns = ns.to_string_lossy();
    let inode = ns
        .strip_prefix("net:[")
        .and_then(|s| s.strip_suffix(']'))
        .with_context(|| format!("unexpected namespace name {ns}"))?;
    Ok(format!("{inode}_{iface}"))
}

/// Attaches `xdp_pass` to `iface` (native mode) through a pinned link; an earlier attachment
/// of this command is replaced in place. Returns what it did, for the terminal.
///
/// # Errors
/// Not root, no bpffs, no such interface, or the kernel refuses (another program without a
/// link holds the interface, say).
pub fn attach(iface: &str, pin_dir: &Path) -> anyhow::Result<String> {
    require_root()?;
    crate::agent::check_bpffs(pin_dir)?;
    let ifindex = crate::agent::ifindex(iface)?;
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("--pin-dir {}: cannot create it", pin_dir.display()))?;
    let pin = pin_path(pin_dir, iface)?;
    let mut ebpf = aya::Ebpf::load(BASELINE_OBJ).context("loading the baseline object")?;
    let prog: &mut Xdp = ebpf
        .program_mut("xdp_pass")
        .context("the baseline object has no xdp_pass")?
        .try_into()?;
    prog.load().context("loading xdp_pass")?;
    let fd = prog.fd()?.try_clone()?;
    let how = {
        use std::os::fd::AsFd as _;
        link::attach(fd.as_fd(), ifindex, true, &pin)
            .with_context(|| format!("attaching xdp_pass to {iface} in native mode"))?
    };
    Ok(format!(
        "{iface}: xdp_pass attached in native mode ({}), pinned at {}",
        match how {
            link::Attached::Created => "new link",
            link::Attached::Replaced => "replaced the earlier one",
        },
        pin.display()
    ))
}

/// Removes the attachment `attach` made on `iface`.
///
/// # Errors
/// Not root, or the pin exists but cannot be removed; no attachment is an error too, so that a
/// typo is not mistaken for success.
pub fn detach(iface: &str, pin_dir: &Path) -> anyhow::Result<String> {
    require_root()?;
    let pin = pin_path(pin_dir, iface)?;
    if !pin.exists() {
        bail!(
            "{iface}: no attachment of `lb peer attach` in this namespace (no {})",
            pin.display()
        );
    }
    link::detach(&pin).with_context(|| format!("removing {}", pin.display()))?;
    Ok(format!("{iface}: xdp_pass detached"))
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb peer must run as root (it attaches an XDP program)");
    }
    Ok(())
}
