//! `cargo xtask bench [--quick]`: runs the benchmark (see `lb_integration::bench`).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut opts = lb_integration::bench::Opts {
        quick: false,
        cost_only: false,
        out: PathBuf::from("target/bench"),
    };
    let (mut spin, mut runs) = (None, 2_000_000u32);
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
            "--spin" => {
                spin = Some(
                    args.next()
                        .ok_or_else(|| anyhow::anyhow!("--spin needs a class name"))?,
                );
            }
            "--runs" => {
                let v = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--runs needs a count"))?;
                runs = v
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--runs {v:?}: {e}"))?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: lb-bench [--quick] [--cost-only] [--out DIR] [--spin CLASS [--runs N]]   (run as root; cargo xtask bench)"
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if let Some(class) = spin {
        return lb_integration::bench::cost::spin(&class, runs);
    }
    lb_integration::bench::run(&opts)
}
