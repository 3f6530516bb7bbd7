//! Rebuild the eBPF object when bpf-linker changes (it is the linker, invisible to cargo).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
