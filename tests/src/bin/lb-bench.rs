//! `cargo xtask bench [--quick]`: runs the benchmark (see `lb_integration::bench`).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut opts = lb_integration::bench::Opts {
        quick: false,
        cost_only: false,
        out: PathBuf::from("target/bench"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--cost-only" => opts.cost_only = true,
            "--out" => {
                opts.out = PathBuf::from(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--out needs a directory"))?,
                );
            }
            "-h" | "--help" => {
                println!(
                    "usage: lb-bench [--quick] [--cost-only] [--out DIR]   (run as root; cargo xtask bench)"
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    lb_integration::bench::run(&opts)
}
