//! The Go toolchains the project builds test programs and the demo with: the versions named in
//! scripts/versions.sh, installed by scripts/setup.sh under the project's cache.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn cache_dir() -> PathBuf {
    if let Some(d) = env::var_os("LEAKTRACE_CACHE") {
        return d.into();
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cache"));
    base.join("leaktrace")
}

/// GO_VERSIONS from scripts/versions.sh, oldest first.
pub fn versions() -> anyhow::Result<Vec<String>> {
    let path = repo_root().join("scripts/versions.sh");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("GO_VERSIONS="))
        .ok_or_else(|| anyhow!("no GO_VERSIONS= in {}", path.display()))?;
    Ok(line
        .trim_matches('"')
        .split_whitespace()
        .map(String::from)
        .collect())
}

/// `go` of that version, with an environment that never reaches for the network.
pub fn command(version: &str) -> anyhow::Result<Command> {
    let cache = cache_dir();
    let go = cache.join("go").join(version).join("go/bin/go");
    if !go.exists() {
        bail!(
            "Go {version} is not installed at {}: run scripts/setup.sh",
            go.display()
        );
    }
    let mut cmd = Command::new(go);
    cmd.env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTELEMETRY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache.join("gocache"))
        .env("GOPATH", cache.join("gopath"));
    Ok(cmd)
}

/// Builds the Go package in `src` to `out` with Go `version`.
pub fn build(version: &str, src: &Path, out: &Path) -> anyhow::Result<()> {
    let status = command(version)?
        .args(["build", "-o"])
        .arg(out)
        .arg(".")
        .current_dir(src)
        .status()
        .context("running go build")?;
    if !status.success() {
        bail!("go build of {} with Go {version} failed", src.display());
    }
    Ok(())
}

/// Builds the Go program in `src` (relative to the repository) with the newest Go of
/// versions.sh into the project's cache as `<kind>/<name>`; its path and the Go version.
pub fn build_newest(src: &str, kind: &str) -> anyhow::Result<(PathBuf, String)> {
    let version = versions()?
        .pop()
        .ok_or_else(|| anyhow!("no Go version in scripts/versions.sh"))?;
    let name = Path::new(src)
        .file_name()
        .ok_or_else(|| anyhow!("no program name in {src}"))?;
    let out = cache_dir().join(kind).join(name);
    fs::create_dir_all(out.parent().unwrap())?;
    build(&version, &repo_root().join(src), &out)?;
    Ok((out, version))
}

/// `cargo build --release -p leaktrace`; the binary's path.
pub fn build_leaktrace_release() -> anyhow::Result<PathBuf> {
    let root = repo_root();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "leaktrace"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p leaktrace failed");
    }
    Ok(root.join("target/release/leaktrace"))
}
