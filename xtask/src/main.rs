//! `cargo xtask`: setup, build, test and demo for the workspace.
//!
//! Every command is safe to re-run. `setup` installs what a fresh machine lacks; `test` and
//! `demo` run it first, so one command is enough on a bare machine.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod setup;

#[derive(Parser)]
#[command(name = "xtask", about = "Workspace tasks for the XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and tests need (idempotent; root): apt packages, the nightly's
    /// rust-src, bpf-linker against the nightly's libLLVM, the bpffs mount.
    Setup,
    /// Build the XDP object and the `lb` binary (plus the lab helpers).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Everything: fmt check, clippy (host and BPF target), host unit tests, the
    /// BPF_PROG_TEST_RUN fixtures and the namespace end-to-end tests. Needs root.
    Test {
        /// Only the host checks and unit tests (no root, no kernel).
        #[arg(long)]
        host_only: bool,
        /// Extra arguments for the integration test binaries (e.g. a test-name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Lints only: fmt check and clippy with -D warnings on both targets.
    Lint,
    /// The main job: a namespace lab (client, LB, three backends), the agent with an embedded
    /// default config, real HTTP and UDP requests through the VIP, counters, teardown.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => build(release),
        Cmd::Test { host_only, args } => test(host_only, &args),
        Cmd::Lint => setup::ensure().and_then(|()| lint()),
        Cmd::Demo => demo(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Runs a command in the workspace root, echoing it; fails on a non-zero exit.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("\n\x1b[1m$ {shown}\x1b[0m");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build(release: bool) -> anyhow::Result<()> {
    setup::ensure()?;
    let mut c = cargo();
    c.args(["build", "-p", "lb-userspace", "-p", "lb-integration", "--bins"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    let dir = root().join("target").join(if release { "release" } else { "debug" });
    eprintln!("built {} (the XDP object is embedded in it)", dir.join("lb").display());
    Ok(())
}

fn lint() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--exclude", "lb-ebpf", "--all-targets", "--", "-D", "warnings"]))?;
    // The XDP crate is linted for the target it runs on, with the toolchain that builds it.
    run(Command::new("rustup").args([
        "run", "nightly", "cargo", "clippy", "-p", "lb-ebpf", "--target", "bpfel-unknown-none",
        "-Z", "build-std=core", "--release", "--", "-D", "warnings",
    ]))
}

fn test(host_only: bool, args: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    setup::ensure()?;
    lint()?;
    run(cargo().args(["test", "-p", "lb-common", "-p", "lb-userspace", "-p", "xtask"]))?;
    if host_only {
        eprintln!("\nhost checks passed in {:.0?} (kernel tests skipped: --host-only)", started.elapsed());
        return Ok(());
    }
    setup::require_root("the kernel tests (BPF_PROG_TEST_RUN and network namespaces)")?;
    // The integration tests start the real `lb` binary and the lab servers.
    run(cargo().args(["build", "-p", "lb-userspace", "-p", "lb-integration", "--bins"]))?;
    let mut c = cargo();
    c.args(["test", "-p", "lb-integration", "--", "--test-threads=1"]).args(args);
    run(&mut c)?;
    eprintln!("\nall tests passed in {:.0?}", started.elapsed());
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    setup::ensure()?;
    setup::require_root("the demo (it creates network namespaces and loads XDP)")?;
    run(cargo().args(["build", "-p", "lb-userspace", "-p", "lb-integration", "--bins"]))?;
    run(&mut Command::new(root().join("target/debug/lb-demo")))
}
