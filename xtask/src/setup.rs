//! `cargo xtask setup`: make a bare machine of this kind able to build and test, idempotently.
//!
//! * apt packages the tests and demo use (only if one is missing: a second run is quick);
//! * `rust-src` for the `nightly` toolchain that builds the XDP crate;
//! * bpf-linker 0.13.0 built against that toolchain's own libLLVM (there is no prebuilt one),
//!   through a persistent prefix of symlinks; rebuilt when the toolchain's LLVM changes;
//! * the lint tools: typos and taplo (prebuilt wheels from PyPI, in a venv of their own) and
//!   cargo-deny (built from crates.io, about three minutes once);
//! * the bpffs mount at /sys/fs/bpf, and tracefs at /sys/kernel/tracing (the agent's
//!   tracepoints need it; a machine booted without systemd's mounts has neither).
//!
//! It never runs `rustup update` or lets rustup update itself: a new nightly would bring a new
//! LLVM and break bpf-linker.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian packages used by the tests and the demo.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "util-linux",
    "binutils",
    "nftables",
    "fonts-dejavu-core",
    // promtool, for the alert rules in contrib/ (tests/contrib.rs); python3 for its checks.
    "prometheus",
    "python3",
    // `lb top`'s smoke test runs it in a real terminal (tests/netns_top.rs).
    "tmux",
    // The routing daemon of the scale-out setup: contrib/bird/lb.conf is checked with it, and
    // tests/netns_scaleout.rs runs it (the LB node's and the router's).
    "bird2",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The lint tools from PyPI (prebuilt binaries in wheels), pinned.
const PY_TOOLS: &[(&str, &str)] = &[("typos", "1.52.0"), ("taplo", "0.9.3")];
const CARGO_DENY_VERSION: &str = "0.20.2";
const EBPF_TOOLCHAIN: &str = "nightly";

pub fn run() -> anyhow::Result<()> {
    require_root("setup (apt, bpffs and tracefs mounts)")?;
    apt()?;
    ensure_toolchain()?;
    bpf_linker()?;
    py_tools()?;
    cargo_deny()?;
    mounts()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

/// Runs setup only when something is missing (quick checks first).
pub fn ensure() -> anyhow::Result<()> {
    let missing = !APT_PACKAGES.iter().all(|p| dpkg_installed(p))
        || sysroot().is_none_or(|s| !s.join("lib/rustlib/src/rust/library").is_dir())
        || !nightly_tools_ok()
        || !bpf_linker_ok()
        || !py_tools_ok()
        || !cargo_deny_ok()
        || MOUNTS.iter().any(|(p, fs)| !is_fs(Path::new(p), fs));
    if missing {
        eprintln!("setup: something is missing; running `cargo xtask setup`");
        run()
    } else {
        Ok(())
    }
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        bail!("{what} needs root; run it as root (CI does)");
    }
    Ok(())
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn sysroot() -> Option<PathBuf> {
    let o = Command::new("rustc")
        .arg(format!("+{EBPF_TOOLCHAIN}"))
        .args(["--print", "sysroot"])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

fn ensure_toolchain() -> anyhow::Result<()> {
    if sysroot().is_none() {
        eprintln!("setup: installing the {EBPF_TOOLCHAIN} toolchain (minimal profile)");
        crate::run(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--no-self-update",
        ]))?;
    }
    let sysroot = sysroot().context("the nightly toolchain is not usable")?;
    if !sysroot.join("lib/rustlib/src/rust/library").is_dir() || !nightly_tools_ok() {
        eprintln!("setup: adding rust-src, rustfmt and clippy to {EBPF_TOOLCHAIN}");
        crate::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "rustfmt",
            "clippy",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }
    Ok(())
}

/// rustfmt (for the nightly-only import options) and clippy (for the BPF target) on nightly.
fn nightly_tools_ok() -> bool {
    ["rustfmt", "cargo-clippy"]
        .iter()
        .all(|t| quiet(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, t, "--version"])))
}

/// The nightly's libLLVM: (file name, LLVM major version).
fn toolchain_llvm() -> anyhow::Result<(PathBuf, String, u32)> {
    let lib = sysroot().context("no nightly toolchain")?.join("lib");
    for e in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        // e.g. libLLVM.so.22.1-rust-1.97.0-nightly
        if let Some(ver) = name.strip_prefix("libLLVM.so.") {
            let major = ver
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .context("unexpected libLLVM name")?;
            return Ok((lib.join(&name), name, major));
        }
    }
    bail!("no libLLVM.so.* in {}", lib.display())
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn cargo_bin(name: &str) -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map_or_else(|| home().join(".cargo"), PathBuf::from)
        .join("bin")
        .join(name)
}

/// Persistent prefix whose `lib/` holds the symlinks bpf-linker's build links against.
fn llvm_prefix(soname: &str) -> PathBuf {
    home().join(".local/share/lb-toolchain").join(soname)
}

/// Whether the installed bpf-linker was built against the current nightly's libLLVM.
fn bpf_linker_ok() -> bool {
    let bin = cargo_bin("bpf-linker");
    if !bin.exists() {
        return false;
    }
    let Ok((_, soname, _)) = toolchain_llvm() else {
        return false;
    };
    // The NEEDED entry must name the current libLLVM, and the binary must start.
    let needed = Command::new("readelf").arg("-d").arg(&bin).output();
    let links_current = needed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&soname));
    links_current && quiet(Command::new(&bin).arg("--version"))
}

fn bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    let (lib, soname, major) = toolchain_llvm()?;
    let prefix = llvm_prefix(&soname);
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir)?;
    for link in ["libLLVM.so", soname.as_str()] {
        let p = libdir.join(link);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(&lib, &p).with_context(|| format!("symlink {}", p.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {soname} (LLVM {major}); this takes 1-2 minutes"
    );
    crate::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            // The host toolchain builds bpf-linker; only its libLLVM comes from the nightly.
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was built but does not run against {soname}");
    }
    Ok(())
}

/// The venv that holds the PyPI lint tools.
fn py_venv() -> PathBuf {
    home().join(".local/share/lb-toolchain/pytools")
}

/// A lint tool from the venv.
pub fn py_tool(name: &str) -> PathBuf {
    py_venv().join("bin").join(name)
}

/// Whether `bin --version` runs and names `version`.
fn has_version(bin: &Path, version: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version))
}

/// Whether every PyPI tool is there, at its pinned version.
fn py_tools_ok() -> bool {
    PY_TOOLS
        .iter()
        .all(|(name, version)| has_version(&py_tool(name), version))
}

fn py_tools() -> anyhow::Result<()> {
    if py_tools_ok() {
        return Ok(());
    }
    let venv = py_venv();
    if !venv.join("bin/pip").exists() {
        eprintln!("setup: creating {}", venv.display());
        crate::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    let pins: Vec<String> = PY_TOOLS.iter().map(|(n, v)| format!("{n}=={v}")).collect();
    eprintln!("setup: installing {}", pins.join(" "));
    crate::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&pins),
    )?;
    if !py_tools_ok() {
        bail!("{} installed but do not run", pins.join(" "));
    }
    Ok(())
}

fn cargo_deny_ok() -> bool {
    has_version(&cargo_bin("cargo-deny"), CARGO_DENY_VERSION)
}

fn cargo_deny() -> anyhow::Result<()> {
    if cargo_deny_ok() {
        return Ok(());
    }
    eprintln!("setup: installing cargo-deny {CARGO_DENY_VERSION} (about three minutes)");
    crate::run(
        Command::new("cargo")
            .args([
                "install",
                "cargo-deny",
                "--locked",
                "--version",
                CARGO_DENY_VERSION,
            ])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs cargo-fuzz (for `cargo xtask fuzz`) unless this version is there.
pub fn cargo_fuzz() -> anyhow::Result<()> {
    if has_version(&cargo_bin("cargo-fuzz"), CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    crate::run(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
            ])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

/// The pseudo-filesystems the agent and the tests need: (mount point, filesystem type).
const MOUNTS: &[(&str, &str)] = &[("/sys/fs/bpf", "bpf"), ("/sys/kernel/tracing", "tracefs")];

/// Whether `p` is a mount of filesystem type `fs` (`stat -f` names bpffs `bpf_fs`).
fn is_fs(p: &Path, fs: &str) -> bool {
    let want = if fs == "bpf" { "bpf_fs" } else { fs };
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(p)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == want)
}

fn mounts() -> anyhow::Result<()> {
    for (p, fs) in MOUNTS {
        if !is_fs(Path::new(p), fs) {
            eprintln!("setup: mounting {fs} on {p}");
            crate::run(Command::new("mount").args(["-t", fs, fs, p]))?;
        }
    }
    Ok(())
}
