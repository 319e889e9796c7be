//! `cargo xtask dist`: a statically linked leaktrace (musl, the BPF object inside) packed for
//! people who only want to run it:
//!
//! - `dist/leaktrace-VERSION-x86_64-linux.tar.gz`: the binary, LICENSE-MIT, LICENSE-APACHE,
//!   README.md, the man pages (`man/`) and bash, zsh and fish completions (`completions/`);
//! - `dist/leaktrace_VERSION_amd64.deb`, built with dpkg-deb: the same files where Debian
//!   puts them, the agent's systemd unit (`packaging/leaktrace-agent.service`, not enabled),
//!   and in its description what it needs of the kernel;
//! - `dist/SHA256SUMS` of both.
//!
//! The man pages and completions come from the binary itself (`leaktrace man DIR`,
//! `leaktrace completions SHELL`), so they always match its options.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::go;

/// The static target; scripts/setup.sh adds it to the userspace toolchain.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The package's description: its second paragraph says what the kernel must have (the
/// checks in leaktrace/src/kernel.rs and the README's Requirements).
const DESCRIPTION: &str = "find goroutine leaks and the memory they pin in a running Go program
 leaktrace attaches to a running Go program (Go 1.21 to 1.27, linux/amd64)
 without restarting or changing it: it reads the program's goroutines from
 outside and places uprobes on the Go runtime within a CPU budget, and
 reports the groups of goroutines that are stuck, with the evidence.
 .
 Kernel: Linux 5.8 or newer (the BPF ring buffer) with uprobes
 (CONFIG_UPROBE_EVENTS) and tracefs; kernel BTF is not needed. Run it as
 root, or with CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE. `leaktrace dump`
 needs only CAP_SYS_PTRACE and none of the kernel features.";

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Runs the command and returns its standard output.
fn output(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Builds the static binary (cached by cargo's target dir) and checks that it is static.
fn build_static(root: &Path) -> anyhow::Result<PathBuf> {
    run(Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(["-p", "leaktrace", "--bin", "leaktrace"])
        .current_dir(root))
    .with_context(|| {
        format!("building the static binary (is the {TARGET} target installed? scripts/setup.sh dist adds it)")
    })?;
    let bin = root.join("target").join(TARGET).join("release/leaktrace");
    let kind = String::from_utf8(output(Command::new("file").arg("-b").arg(&bin))?)?;
    if !kind.contains("statically linked") && !kind.contains("static-pie linked") {
        bail!(
            "{} is not statically linked: {}",
            bin.display(),
            kind.trim()
        );
    }
    Ok(bin)
}

/// The man pages and completions the binary generates, into `man/` and `completions/`.
fn generate(bin: &Path, into: &Path) -> anyhow::Result<()> {
    run(Command::new(bin).arg("man").arg(into.join("man")))?;
    let completions = into.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in [
        ("bash", "leaktrace.bash"),
        ("zsh", "_leaktrace"),
        ("fish", "leaktrace.fish"),
    ] {
        let script = output(Command::new(bin).args(["completions", shell]))?;
        fs::write(completions.join(file), script)?;
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The tarball's directory: `leaktrace-VERSION-x86_64-linux/`.
fn tarball(root: &Path, bin: &Path, stage: &Path, dist: &Path) -> anyhow::Result<PathBuf> {
    let name = format!("leaktrace-{VERSION}-x86_64-linux");
    let dir = stage.join(&name);
    copy(bin, &dir.join("leaktrace"))?;
    for f in ["LICENSE-MIT", "LICENSE-APACHE", "README.md"] {
        copy(&root.join(f), &dir.join(f))?;
    }
    generate(bin, &dir)?;
    let out = dist.join(format!("{name}.tar.gz"));
    run(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .args(["--mtime=@0", "-czf"])
        .arg(&out)
        .arg("-C")
        .arg(stage)
        .arg(&name))?;
    Ok(out)
}

/// The Debian package, from the staged tarball directory.
fn deb(root: &Path, stage: &Path, dist: &Path) -> anyhow::Result<PathBuf> {
    let files = stage.join(format!("leaktrace-{VERSION}-x86_64-linux"));
    let pkg = stage.join("deb");
    let usr = pkg.join("usr");
    copy(&files.join("leaktrace"), &usr.join("bin/leaktrace"))?;
    for page in fs::read_dir(files.join("man"))? {
        let page = page?.path();
        let to = usr.join("share/man/man1").join(page.file_name().unwrap());
        copy(&page, &to)?;
        run(Command::new("gzip").args(["-9n"]).arg(&to))?;
    }
    let c = files.join("completions");
    copy(
        &c.join("leaktrace.bash"),
        &usr.join("share/bash-completion/completions/leaktrace"),
    )?;
    copy(
        &c.join("_leaktrace"),
        &usr.join("share/zsh/vendor-completions/_leaktrace"),
    )?;
    copy(
        &c.join("leaktrace.fish"),
        &usr.join("share/fish/vendor_completions.d/leaktrace.fish"),
    )?;
    // The agent's unit, installed but not enabled (README, "Agent").
    copy(
        &root.join("packaging/leaktrace-agent.service"),
        &usr.join("lib/systemd/system/leaktrace-agent.service"),
    )?;
    let doc = usr.join("share/doc/leaktrace");
    fs::create_dir_all(&doc)?;
    let mit = fs::read_to_string(root.join("LICENSE-MIT"))?;
    fs::write(
        doc.join("copyright"),
        format!(
            "leaktrace is dual-licensed: MIT OR Apache-2.0, at your option.\n\
             The Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.\n\n{mit}"
        ),
    )?;
    let installed_kib: u64 = du_kib(&usr)?;
    fs::create_dir_all(pkg.join("DEBIAN"))?;
    fs::write(
        pkg.join("DEBIAN/control"),
        format!(
            "Package: leaktrace\n\
             Version: {VERSION}\n\
             Architecture: amd64\n\
             Maintainer: the leaktrace developers\n\
             Installed-Size: {installed_kib}\n\
             Section: devel\n\
             Priority: optional\n\
             Description: {DESCRIPTION}\n"
        ),
    )?;
    let out = dist.join(format!("leaktrace_{VERSION}_amd64.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&pkg)
        .arg(&out))?;
    Ok(out)
}

/// The size of a tree in KiB, as dpkg counts Installed-Size.
fn du_kib(dir: &Path) -> anyhow::Result<u64> {
    let out = String::from_utf8(output(Command::new("du").args(["-sk"]).arg(dir))?)?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du -sk {}: {out:?}", dir.display()))
}

/// `cargo xtask dist`; the tarball's and the package's paths.
pub fn dist() -> anyhow::Result<(PathBuf, PathBuf)> {
    let root = go::repo_root();
    let bin = build_static(&root)?;
    let stage = root.join("target/dist-stage");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage)?;
    let dist = root.join("dist");
    fs::create_dir_all(&dist)?;
    let tar = tarball(&root, &bin, &stage, &dist)?;
    let deb = deb(&root, &stage, &dist)?;
    let sums = output(
        Command::new("sha256sum")
            .arg(tar.file_name().unwrap())
            .arg(deb.file_name().unwrap())
            .current_dir(&dist),
    )?;
    fs::write(dist.join("SHA256SUMS"), &sums)?;
    for f in [&tar, &deb] {
        println!("{} ({} KiB)", f.display(), fs::metadata(f)?.len() / 1024);
    }
    println!("{}", dist.join("SHA256SUMS").display());
    Ok((tar, deb))
}
