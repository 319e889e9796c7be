//! Builds the BPF programs in `leaktrace-ebpf` for bpfel-unknown-none with the pinned nightly,
//! and places the object at `$OUT_DIR/leaktrace`, where `probes` embeds it.
use std::{
    env, fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The eBPF nightly is named once, in scripts/versions.sh (`RUST_EBPF=...`).
fn ebpf_toolchain(workspace: &Path) -> anyhow::Result<String> {
    let path = workspace.join("scripts/versions.sh");
    println!("cargo::rerun-if-changed={}", path.display());
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("RUST_EBPF="))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| anyhow!("no RUST_EBPF= line in {}", path.display()))
}

/// The commit the binary is built from, for `leaktrace --version` (`LEAKTRACE_COMMIT`):
/// `unknown` outside a git checkout (e.g. from a source tarball). Rebuilt when HEAD moves.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    // HEAD names the branch; the branch's ref (loose or packed) names the commit.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watch {
        // A missing file would rerun this script at every build: watch those that exist.
        let path = git(&["rev-parse", "--git-path", &name]).filter(|p| Path::new(p).exists());
        if let Some(path) = path {
            println!("cargo::rerun-if-changed={path}");
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
}

fn main() -> anyhow::Result<()> {
    println!("cargo::rustc-env=LEAKTRACE_COMMIT={}", commit());
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        // Unit tests of the parsers do not need the BPF object; the binary then refuses to
        // trace with a message saying it was built without it.
        fs::write(out_dir.join("leaktrace"), b"")?;
        return Ok(());
    }
    let cargo_metadata::Metadata {
        packages,
        workspace_root,
        ..
    } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let toolchain = ebpf_toolchain(workspace_root.as_std_path())?;
    let ebpf = packages
        .iter()
        .find(|p| p.name.as_str() == "leaktrace-ebpf")
        .ok_or_else(|| anyhow!("leaktrace-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("leaktrace-ebpf manifest has no parent"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
