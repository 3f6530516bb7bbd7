//! Builds the XDP object (`lb-ebpf`, bin `lb-xdp`) into `OUT_DIR` with aya-build, which runs
//! `cargo +nightly build -Z build-std=core --target bpfel-unknown-none` (needs `rust-src` and
//! `bpf-linker`: `cargo xtask setup` installs both). The agent embeds the object.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let ebpf = root.join("lb-ebpf");
    // aya-build watches lb-ebpf; the program also compiles lb-common's sources.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("lb-common/src").display()
    );
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: ebpf.to_str().expect("UTF-8 path"),
        ..Default::default()
    };
    // The build's commit, for `lb --version` ("unknown" outside a git checkout, e.g. a
    // source package).
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
    println!("cargo:rustc-env=LB_COMMIT={commit}");
    println!(
        "cargo:rerun-if-changed={}",
        root.join(".git/HEAD").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join(".git/refs/heads").display()
    );
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
