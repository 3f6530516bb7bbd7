//! Network namespaces that clean up after themselves.

use std::{
    os::fd::AsRawFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name prefix for this process's objects: `lbt-<pid>-<n>`.
#[must_use]
pub fn unique_prefix() -> String {
    format!(
        "lbt-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command; fails with its stderr if it fails.
///
/// # Errors
/// The command could not start or exited non-zero.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    output(Command::new(program).args(args))
}

/// Runs a command; returns its stdout, or fails with the command line and its stderr.
///
/// # Errors
/// The command could not start or exited non-zero.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates the namespace with `lo` up.
    ///
    /// # Errors
    /// `ip netns add` fails (not root?).
    pub fn new(name: &str) -> anyhow::Result<Self> {
        sh("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ARGS`.
    ///
    /// # Errors
    /// The command fails.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// Runs a program inside the namespace (`ip netns exec`), e.g. sysctl or ethtool.
    ///
    /// # Errors
    /// The command fails.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut a = vec!["netns", "exec", self.name.as_str(), program];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    /// A command that runs in the namespace through `nsenter --net`, which (unlike
    /// `ip netns exec`) keeps /sys and so /sys/fs/bpf: use it for anything that pins.
    #[must_use]
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a fresh thread that has entered the namespace. Sockets created in `f` stay
    /// in the namespace and can be used from any thread afterwards.
    ///
    /// # Panics
    /// If the namespace cannot be entered.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn_in(f).join().expect("namespace thread panicked")
    }

    /// Runs `f` on a new thread inside the namespace, in the background.
    ///
    /// # Panics
    /// (On that thread) if the namespace cannot be entered.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; setns only affects this (fresh) thread.
            let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// A counter of the namespace's TCP MIB (`/proc/net/snmp`, line `Tcp:`), such as
    /// `RetransSegs` or `OutRsts`.
    ///
    /// # Errors
    /// The file cannot be read, or it has no such counter.
    pub fn tcp_stat(&self, name: &str) -> anyhow::Result<u64> {
        self.mib("/proc/net/snmp", "Tcp:", name)
    }

    /// A counter of the namespace's TCP extension MIB (`/proc/net/netstat`, line `TcpExt:`),
    /// such as `TCPDSACKRecv`.
    ///
    /// # Errors
    /// The file cannot be read, or it has no such counter.
    pub fn tcp_ext_stat(&self, name: &str) -> anyhow::Result<u64> {
        self.mib("/proc/net/netstat", "TcpExt:", name)
    }

    /// Counter `name` of the `prefix` lines of `file` (a line of names, then one of values).
    fn mib(&self, file: &str, prefix: &str, name: &str) -> anyhow::Result<u64> {
        let text = self.exec("cat", &[file])?;
        let mut lines = text.lines().filter(|l| l.starts_with(prefix));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            bail!("no {prefix} lines in {file} of {}", self.name);
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .with_context(|| format!("no counter {name} in {file} of {}", self.name))?
            .1
            .parse()
            .with_context(|| format!("counter {name} of {}", self.name))
    }

    /// Segments this namespace's TCP sent that were lost: its retransmissions
    /// (`RetransSegs`) less the retransmitted segments the peer reported as duplicates
    /// (D-SACK, `TCPDSACKRecvSegs`). A segment sent twice because its ACK came late (a busy
    /// core) is no loss, and its peer says so. A lost data segment, SYN or SYN-ACK is
    /// retransmitted with no D-SACK, and counts here; a lost pure ACK does not (the
    /// retransmission it causes arrives as a duplicate), so a caller checks the drop
    /// counters on the way as well ([`Self::link_drops`], the LB's own).
    ///
    /// # Errors
    /// A counter cannot be read.
    pub fn tcp_lost_segments(&self) -> anyhow::Result<u64> {
        let resent = self.tcp_stat("RetransSegs")?;
        let duplicates = self.tcp_ext_stat("TCPDSACKRecvSegs")?;
        if resent > 0 {
            let more: Vec<String> = ["TCPLossProbes", "TCPTimeouts", "TCPSpuriousRTOs"]
                .iter()
                .map(|c| format!("{c} {}", self.tcp_ext_stat(c).unwrap_or(0)))
                .collect();
            eprintln!(
                "{}: {resent} TCP segments sent again, {duplicates} reported as duplicates ({})",
                self.name,
                more.join(", ")
            );
        }
        Ok(resent.saturating_sub(duplicates))
    }

    /// Each interface's dropped frames, received and sent (`ip -s link`), by name.
    ///
    /// # Errors
    /// `ip` fails or prints something else than expected.
    pub fn link_drops(&self) -> anyhow::Result<Vec<(String, u64, u64)>> {
        let out = self.ip(&["-s", "-j", "link", "show"])?;
        let links: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("ip -s -j link: {out}"))?;
        links
            .as_array()
            .context("ip -s -j link: not a list")?
            .iter()
            .map(|l| {
                let n = |dir: &str| l["stats64"][dir]["dropped"].as_u64();
                Some((l["ifname"].as_str()?.to_owned(), n("rx")?, n("tx")?))
            })
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("ip -s -j link in {}: {out}", self.name))
    }

    /// The interface index of `dev` in this namespace.
    ///
    /// # Errors
    /// No such interface.
    pub fn ifindex(&self, dev: &str) -> anyhow::Result<u32> {
        let out = self.ip(&["-o", "link", "show", "dev", dev])?;
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("ifindex of {dev}"))
    }

    /// The MAC address of `dev` in this namespace.
    ///
    /// # Errors
    /// No such interface.
    pub fn mac(&self, dev: &str) -> anyhow::Result<[u8; 6]> {
        let out = self.ip(&["-o", "link", "show", "dev", dev])?;
        let s = out
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .context("no MAC")?;
        let mut mac = [0u8; 6];
        for (m, p) in mac.iter_mut().zip(s.split(':')) {
            *m = u8::from_str_radix(p, 16)?;
        }
        Ok(mac)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.name]);
    }
}

/// Deletes namespaces and pins that killed runs of these tests left behind (their pid is gone).
pub fn sweep_stale() {
    let alive = |name: &str| {
        name.strip_prefix("lbt-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(list) = sh("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with("lbt-") && !alive(name) {
                let _ = sh("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("lbt-") && !alive(&name) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
