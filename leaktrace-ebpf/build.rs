//! Rebuild when bpf-linker changes: the object it links is what the kernel verifies.
use which::which;

fn main() {
    let bpf_linker = which("bpf-linker").expect(
        "bpf-linker not found on PATH: run scripts/setup.sh (it builds bpf-linker 0.13 against LLVM 22)",
    );
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
