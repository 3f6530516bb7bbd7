//! The kernel differential fuzz target (`tests/fuzz`, `kernel_differential`): its rounds, its
//! seed corpus, and the clean-up after a round that did not end by itself.

use std::{path::Path, process::Command};

use crate::{root, setup};

/// The target's checked-in seeds (read by every round, written only by [`reseed`]).
const SEEDS: &str = "tests/fuzz/corpus/kernel_differential";
/// Where rounds keep what they find (not checked in).
const SCRATCH: &str = "target/fuzz-corpus/kernel_differential";

fn prepare() -> anyhow::Result<()> {
    setup::ensure()?;
    setup::require_root(
        "the kernel differential fuzz target (it loads BPF and makes a network namespace)",
    )?;
    setup::cargo_fuzz()
}

/// `cargo fuzz` for the kernel target, with the fuzz dir and no sanitizer: the code under test
/// is the kernel's and the model's safe Rust, and the target's speed is what finds things.
fn cargo_fuzz(sub: &str) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root())
        .args(["+nightly", "fuzz", sub, "--fuzz-dir"])
        .arg(root().join("tests/fuzz"))
        .args(["--sanitizer", "none", "kernel_differential"]);
    c
}

/// A bounded round: new finds go to the scratch corpus, the seeds are read. A disagreement
/// fails the command and leaves the input under `tests/fuzz/artifacts/kernel_differential/`.
///
/// # Errors
/// The target could not be built or run, or it found a disagreement.
pub fn run(seconds: u64) -> anyhow::Result<()> {
    prepare()?;
    let scratch = root().join(SCRATCH);
    std::fs::create_dir_all(&scratch)?;
    let r = crate::run(
        cargo_fuzz("run")
            .arg(&scratch)
            .arg(root().join(SEEDS))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=4096"),
    );
    sweep();
    r
}

/// Rebuilds the seed corpus: every frame the fixtures and the bad-packet corpus run
/// (`LB_FRAME_DUMP`), what the rounds found, and the current seeds, minimised together.
///
/// # Errors
/// A test or `cargo fuzz cmin` fails.
pub fn reseed() -> anyhow::Result<()> {
    prepare()?;
    let dump = root().join("target/fuzz-seeds");
    let _ = std::fs::remove_dir_all(&dump);
    std::fs::create_dir_all(&dump)?;
    crate::build_bins(false)?;
    crate::run(
        crate::cargo()
            .args(["test", "-p", "lb-integration"])
            .args(["--test", "prog_test_run", "--test", "corpus"])
            .args(["--", "--test-threads=1"])
            .env("LB_FRAME_DUMP", &dump),
    )?;
    let seeds = root().join(SEEDS);
    std::fs::create_dir_all(&seeds)?;
    for dir in [dump, root().join(SCRATCH)] {
        copy_files(&dir, &seeds)?;
    }
    let r = crate::run(
        cargo_fuzz("cmin")
            .arg(&seeds)
            .arg("--")
            .arg("-rss_limit_mb=4096"),
    );
    sweep();
    r
}

fn copy_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Deletes the namespaces and pins of target processes that are gone. The target's exit hook
/// deletes its own when libFuzzer ends a round; a disagreement (a panic, so an abort) or a
/// kill skips the hook.
fn sweep() {
    let gone = |name: &str| {
        name.strip_prefix("lbt-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let ours = |name: &str| name.ends_with("-kfuzz") && gone(name);
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split_whitespace().next()
                && ours(name)
            {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            if ours(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
