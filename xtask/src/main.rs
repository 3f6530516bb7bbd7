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

mod kfuzz;
mod package;
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
    /// rust-src, bpf-linker against the nightly's libLLVM, the bpffs and tracefs mounts.
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
    /// Lints only: rustfmt and taplo (TOML) checks, typos, clippy with -D warnings on both
    /// targets (workspace lints: pedantic and chosen restriction lints), and cargo-deny's
    /// licence, source and ban checks (offline: no advisory database).
    Lint,
    /// The main job: a namespace lab (client, LB, three backends), the agent with an embedded
    /// default config, real HTTP and UDP requests through the VIP, counters, teardown. With
    /// --nodes, the scale-out lab: N nodes behind a router (BGP, ECMP), one stopped.
    Demo {
        /// The scale-out lab instead: N LB nodes (2..=8) behind a router with ECMP and BGP.
        #[arg(long)]
        nodes: Option<usize>,
    },
    /// The coverage-guided fuzz target over lb-common's packet parsing and classification,
    /// for a bounded time (installs cargo-fuzz 0.13.2 the first time). With --kernel, the
    /// differential target instead: every input through the real XDP program and the model,
    /// which must agree (root).
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The kernel differential target (tests/fuzz).
        #[arg(long)]
        kernel: bool,
        /// With --kernel, instead of fuzzing: rebuild its checked-in seed corpus from every
        /// frame the fixture and corpus tests run, merged with what earlier rounds found, then
        /// minimised (cargo fuzz cmin).
        #[arg(long, requires = "kernel")]
        reseed: bool,
    },
    /// The benchmark (root): cost per packet per traffic class, throughput through the real
    /// path next to the minimal XDP forwarder and nftables DNAT, scale curves, control plane.
    /// Writes results.json and results.png under --out.
    Bench {
        /// A small version of every part (seconds): proves it works, says nothing about speed.
        #[arg(long)]
        quick: bool,
        /// Only part 1, the cost per packet (a minute): prints its table and the IPv6 / IPv4
        /// ratios, writes nothing.
        #[arg(long)]
        cost_only: bool,
        /// Where the results go.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Instead of the benchmark: run one cost class (its name as in the cost table) over
        /// and over, for a profiler (`perf record -a` beside it); prints its mean.
        #[arg(long, value_name = "CLASS")]
        spin: Option<String>,
        /// Runs for --spin.
        #[arg(long, default_value_t = 2_000_000, requires = "spin")]
        runs: u32,
    },
    /// A Debian package (.deb) of lb: the release binary, the systemd unit, the sample config,
    /// completions, man pages and the Prometheus/Grafana examples; then unpacks and checks it.
    Package {
        #[arg(long, default_value = "target/package")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => build(release),
        Cmd::Test { host_only, args } => test(host_only, &args),
        Cmd::Lint => setup::ensure().and_then(|()| lint()),
        Cmd::Demo { nodes } => demo(nodes),
        Cmd::Bench {
            quick,
            cost_only,
            out,
            spin,
            runs,
        } => bench(quick, cost_only, &out, spin.as_deref().map(|c| (c, runs))),
        Cmd::Fuzz {
            seconds,
            kernel: false,
            ..
        } => fuzz(seconds),
        Cmd::Fuzz {
            kernel: true,
            reseed: true,
            ..
        } => kfuzz::reseed(),
        Cmd::Fuzz {
            seconds,
            kernel: true,
            ..
        } => kfuzz::run(seconds),
        Cmd::Package { out } => package::package(&out).map(drop),
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
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
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
    build_bins(release)?;
    let dir = root()
        .join("target")
        .join(if release { "release" } else { "debug" });
    let obj = copy_xdp_object(&dir)?;
    eprintln!(
        "built {} (the XDP object is embedded in it)",
        dir.join("lb").display()
    );
    eprintln!(
        "built {} (the XDP object alone, for bpftool or xdp-loader)",
        obj.display()
    );
    Ok(())
}

/// Copies the XDP object aya-build left in lb-userspace's OUT_DIR to `<dir>/lb-xdp.o`.
fn copy_xdp_object(dir: &Path) -> anyhow::Result<PathBuf> {
    let newest = std::fs::read_dir(dir.join("build"))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("lb-userspace-"))
        .map(|e| e.path().join("out/lb-xdp"))
        .filter(|p| p.exists())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .context("no XDP object under target/*/build/lb-userspace-*/out")?;
    let obj = dir.join("lb-xdp.o");
    std::fs::copy(&newest, &obj)?;
    Ok(obj)
}

/// Builds `lb` (with the XDP object) and the lab binaries (`lb-demo`, `lb-labd`).
fn build_bins(release: bool) -> anyhow::Result<()> {
    let mut c = cargo();
    c.args([
        "build",
        "-p",
        "lb-userspace",
        "-p",
        "lb-integration",
        "--bins",
    ]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

fn lint() -> anyhow::Result<()> {
    // rustfmt.toml's import grouping options are nightly-only; the nightly is installed anyway.
    run(Command::new("rustup").args(["run", "nightly", "cargo", "fmt", "--all", "--", "--check"]))?;
    run(Command::new(setup::py_tool("taplo")).args(["fmt", "--check"]))?;
    run(Command::new(setup::py_tool("typos"))
        .arg("--format")
        .arg("brief"))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The XDP crate is linted for the target it runs on, with the toolchain that builds it.
    run(Command::new("rustup").args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "-p",
        "lb-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Licences and sources of every dependency; the advisories check would download the
    // advisory database, which this machine's registries do not include.
    run(cargo().args(["deny", "check", "licenses", "sources", "bans"]))
}

fn test(host_only: bool, args: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    setup::ensure()?;
    lint()?;
    let mut total = Tally::default();
    // --lib --bins --tests: there are no doc-tests, and empty runs only add noise.
    let host = ["-p", "lb-common", "-p", "lb-userspace", "-p", "xtask"];
    total.add(run_tests(
        cargo()
            .arg("test")
            .args(host)
            .args(["--lib", "--bins", "--tests"]),
    )?);
    if host_only {
        eprintln!(
            "\nhost checks passed in {:.0?} (kernel tests skipped)",
            started.elapsed()
        );
        println!("{} passed, {} failed", total.passed, total.failed);
        return Ok(());
    }
    setup::require_root("the kernel tests (BPF_PROG_TEST_RUN and network namespaces)")?;
    // The integration tests start the real `lb` binary and the lab servers.
    build_bins(false)?;
    let mut c = cargo();
    c.args(["test", "-p", "lb-integration", "--lib", "--bins", "--tests"])
        .args(["--", "--test-threads=1"])
        .args(args);
    total.add(run_tests(&mut c)?);
    // The fuzz targets, in their bounded form: a crash or a disagreement fails the run like
    // a failed test.
    fuzz(FUZZ_SECONDS_IN_TEST)?;
    kfuzz::run(KERNEL_FUZZ_SECONDS_IN_TEST)?;
    // The .deb, built, unpacked and checked (its lb --version, completions, man pages).
    package::package(&root().join("target/package"))?;
    eprintln!("\nall tests passed in {:.0?}", started.elapsed());
    // A plain closing line with the totals of every cargo test run above.
    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(())
}

/// Test counts summed over cargo's `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn add(&mut self, o: Self) {
        self.passed += o.passed;
        self.failed += o.failed;
    }

    /// Parses `test result: ok. 7 passed; 0 failed; ...`.
    fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let (_, counts) = rest.split_once(". ")?;
        let num = |key: &str| -> Option<u64> {
            counts
                .split(';')
                .find_map(|p| p.trim().strip_suffix(key)?.trim().parse().ok())
        };
        Some(Self {
            passed: num("passed")?,
            failed: num("failed")?,
        })
    }
}

/// Runs a `cargo test`, passing its output through and summing its results.
fn run_tests(cmd: &mut Command) -> anyhow::Result<Tally> {
    use std::io::{BufRead as _, BufReader};
    cmd.current_dir(root()).stdout(std::process::Stdio::piped());
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("\n\x1b[1m$ {shown}\x1b[0m");
    let mut child = cmd.spawn().with_context(|| format!("starting {shown}"))?;
    let mut t = Tally::default();
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(r) = Tally::parse(&line) {
            t.add(r);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "{shown} failed ({status}): {} passed, {} failed",
            t.passed,
            t.failed
        );
    }
    if t.passed == 0 {
        bail!("{shown} ran no test");
    }
    Ok(t)
}

fn demo(nodes: Option<usize>) -> anyhow::Result<()> {
    setup::ensure()?;
    setup::require_root("the demo (it creates network namespaces and loads XDP)")?;
    // One debug build, quiet: the XDP object's inner build reports every crate it compiles
    // as a `cargo:warning=` line, which is noise here (`cargo xtask build` shows it).
    eprintln!("demo: building lb and the lab (cargo build -q) ...");
    run(cargo().args([
        "build",
        "-q",
        "-p",
        "lb-userspace",
        "-p",
        "lb-integration",
        "--bins",
    ]))?;
    let mut demo = Command::new(root().join("target/debug/lb-demo"));
    if let Some(n) = nodes {
        demo.args(["--nodes", &n.to_string()]);
    }
    run(&mut demo)
}

/// How long `cargo xtask test` fuzzes (`cargo xtask fuzz` runs longer rounds).
const FUZZ_SECONDS_IN_TEST: u64 = 30;
/// How long `cargo xtask test` runs the kernel differential target.
const KERNEL_FUZZ_SECONDS_IN_TEST: u64 = 60;

fn fuzz(seconds: u64) -> anyhow::Result<()> {
    setup::ensure()?;
    setup::cargo_fuzz()?;
    let dir = root().join("lb-common/fuzz");
    // libFuzzer stops by itself after max_total_time; a crash fails the command and leaves
    // the input under lb-common/fuzz/artifacts/.
    run(Command::new("cargo")
        .current_dir(root())
        .args(["+nightly", "fuzz", "run", "parse_classify", "--fuzz-dir"])
        .arg(&dir)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=2048"))
}

fn bench(
    quick: bool,
    cost_only: bool,
    out: &Path,
    spin: Option<(&str, u32)>,
) -> anyhow::Result<()> {
    setup::ensure()?;
    setup::require_root("the benchmark (it creates network namespaces and loads XDP)")?;
    // Release builds: the agent, the lab helpers and the bench measure optimised code.
    build_bins(true)?;
    let mut c = Command::new(root().join("target/release/lb-bench"));
    c.current_dir(root()).arg("--out").arg(out);
    if quick {
        c.arg("--quick");
    }
    if cost_only {
        c.arg("--cost-only");
    }
    if let Some((class, runs)) = spin {
        c.arg("--spin")
            .arg(class)
            .arg("--runs")
            .arg(runs.to_string());
    }
    run(&mut c)
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn parses_cargo_test_results() {
        let ok = "test result: ok. 18 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; \
                  finished in 0.06s";
        assert_eq!(
            Tally::parse(ok),
            Some(Tally {
                passed: 18,
                failed: 0
            })
        );
        let bad = "test result: FAILED. 6 passed; 1 failed; 0 ignored; 0 measured";
        assert_eq!(
            Tally::parse(bad),
            Some(Tally {
                passed: 6,
                failed: 1
            })
        );
        assert_eq!(Tally::parse("running 7 tests"), None);
    }
}
