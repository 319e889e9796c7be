//! `cargo xtask gen-layouts [--check]`: writes leaktrace's per-Go-version runtime layout
//! table, `leaktrace/layouts/go1.X.json`, and its index `leaktrace/layouts/table.rs`.
//!
//! For every toolchain in `GO_VERSIONS` of scripts/versions.sh it builds
//! `xtask/layout-probe/main.go` (a program that uses channels, select, mutexes and timers)
//! with that toolchain, then runs leaktrace's hidden `leaktrace-gen-layout` entry point on
//! the binary, which reads the DWARF with `leaktrace::tracee::layout::from_dwarf`: the table
//! and the runtime reader are one piece of code. leaktrace is built with `AYA_BUILD_SKIP=1`,
//! so this needs no BPF toolchain.
//!
//! With `--check` nothing is written; any difference is printed and the command fails.

use std::{collections::BTreeMap, env, fs, path::Path, process::Command};

use anyhow::{Context as _, bail, ensure};

use crate::go;

/// Regenerates the table (or, with `check`, verifies it).
pub fn gen_layouts(check: bool) -> anyhow::Result<()> {
    let root = go::repo_root();
    let versions = go::versions()?;
    ensure!(
        !versions.is_empty(),
        "GO_VERSIONS in scripts/versions.sh is empty"
    );
    let layouts = root.join("leaktrace/layouts");
    let probe_dir = root.join("xtask/layout-probe");
    let out_dir = go::cache_dir().join("layout-probe");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    // File name (in leaktrace/layouts) -> the content it must have.
    let mut wanted: BTreeMap<String, String> = BTreeMap::new();
    let mut minors = Vec::new();
    for version in &versions {
        let minor = go_minor(version)?;
        eprintln!("gen-layouts: go{version}");
        let probe = out_dir.join(format!("probe-go{version}"));
        build_probe(version, &probe_dir, &probe)?;
        let json = run_generator(&root, &probe)?;
        wanted.insert(format!("go1.{minor}.json"), json);
        minors.push(minor);
    }
    wanted.insert("table.rs".to_string(), table_rs(&minors));

    let stale: Vec<String> = existing_tables(&layouts)?
        .into_iter()
        .filter(|name| !wanted.contains_key(name))
        .collect();

    if check {
        let mut problems = 0;
        for (name, content) in &wanted {
            let path = layouts.join(name);
            let committed = fs::read_to_string(&path).unwrap_or_default();
            if committed != *content {
                problems += 1;
                println!("--- {} (committed)", path.display());
                println!("+++ {} (generated)", path.display());
                print!("{}", line_diff(&committed, content));
            }
        }
        for name in &stale {
            problems += 1;
            println!("leaktrace/layouts/{name}: no toolchain in scripts/versions.sh generates it");
        }
        if problems > 0 {
            bail!(
                "{problems} file(s) in leaktrace/layouts differ from what the Go toolchains \
                 generate; run `cargo xtask gen-layouts` and commit the result"
            );
        }
        eprintln!("gen-layouts: leaktrace/layouts is up to date");
        return Ok(());
    }

    fs::create_dir_all(&layouts).with_context(|| format!("creating {}", layouts.display()))?;
    for (name, content) in &wanted {
        let path = layouts.join(name);
        if fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("gen-layouts: wrote {}", path.display());
        }
    }
    for name in &stale {
        let path = layouts.join(name);
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        eprintln!("gen-layouts: removed {}", path.display());
    }
    Ok(())
}

/// "1.26.6" -> 26.
fn go_minor(version: &str) -> anyhow::Result<u32> {
    let mut parts = version.split('.');
    match (parts.next(), parts.next().map(str::parse::<u32>)) {
        (Some("1"), Some(Ok(minor))) => Ok(minor),
        _ => bail!("GO_VERSIONS entry {version:?} is not a Go 1.x version"),
    }
}

/// Builds the probe with one toolchain: a default `go build` (the layout of a default build
/// is what the table describes) for linux/amd64, with the offline environment of
/// [`go::command`].
fn build_probe(version: &str, probe_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let output = go::command(version)?
        .args(["build", "-o"])
        .arg(out)
        .arg(".")
        .current_dir(probe_dir)
        .env("GOOS", "linux")
        .env("GOARCH", "amd64")
        .env_remove("GOEXPERIMENT")
        .env_remove("GOAMD64")
        .output()
        .context("running go build")?;
    ensure!(
        output.status.success(),
        "go{version} build of {} failed:\n{}",
        probe_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Runs `leaktrace-gen-layout --table` on a probe binary and returns its JSON.
fn run_generator(root: &Path, probe: &Path) -> anyhow::Result<String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--package",
            "leaktrace",
            "--bin",
            "leaktrace-gen-layout",
            "--",
            "--table",
        ])
        .arg(probe)
        .current_dir(root)
        .env("AYA_BUILD_SKIP", "1")
        .output()
        .context("running cargo")?;
    ensure!(
        output.status.success(),
        "leaktrace-gen-layout {} failed:\n{}",
        probe.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).context("leaktrace-gen-layout printed non-UTF-8")
}

/// The index that layout.rs includes: one `include_str!` per table file.
fn table_rs(minors: &[u32]) -> String {
    let mut text = String::from(
        "// @generated by `cargo xtask gen-layouts` from GO_VERSIONS in scripts/versions.sh; \
         do not edit.\n// (minor, JSON) for each Go 1.x in the table, included by \
         leaktrace/src/tracee/layout.rs.\n&[\n",
    );
    for minor in minors {
        text.push_str(&format!(
            "    ({minor}, include_str!(\"go1.{minor}.json\")),\n"
        ));
    }
    text.push_str("]\n");
    text
}

/// The `go1.*.json` files now in leaktrace/layouts.
fn existing_tables(dir: &Path) -> anyhow::Result<Vec<String>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("go1.") && name.ends_with(".json") {
            names.push(name);
        }
    }
    Ok(names)
}

/// A line diff of `old` -> `new` (longest common subsequence), showing changed lines with two
/// lines of context around them.
fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    const CONTEXT: usize = 2;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut out = String::new();
    let mut last_shown: Option<usize> = None;
    for (k, (mark, line)) in ops.iter().enumerate() {
        let near = changed
            .iter()
            .any(|&c| k + CONTEXT >= c && k <= c + CONTEXT);
        if !near {
            continue;
        }
        if last_shown.is_some_and(|l| l + 1 != k) {
            out.push_str("...\n");
        }
        out.push_str(&format!("{mark}{line}\n"));
        last_shown = Some(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_versions_sh() {
        let versions = go::versions().unwrap();
        assert!(!versions.is_empty());
        assert!(versions.iter().all(|v| go_minor(v).is_ok()), "{versions:?}");
    }

    #[test]
    fn minor_of_a_version() {
        assert_eq!(go_minor("1.26.6").unwrap(), 26);
        assert!(go_minor("2.0.1").is_err());
        assert!(go_minor("1.x").is_err());
    }

    #[test]
    fn diff_shows_changes_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nD\ne\nf\ng\nh\n";
        assert_eq!(line_diff(old, new), " b\n c\n-d\n+D\n e\n f\n");
        assert_eq!(line_diff(old, old), "");
        assert_eq!(line_diff("", "x\n"), "+x\n");
    }

    #[test]
    fn table_index_includes_each_file() {
        assert_eq!(
            table_rs(&[21, 22]).lines().skip(2).collect::<Vec<_>>(),
            [
                "&[",
                "    (21, include_str!(\"go1.21.json\")),",
                "    (22, include_str!(\"go1.22.json\")),",
                "]"
            ]
        );
    }
}
