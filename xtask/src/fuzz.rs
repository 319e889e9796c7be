//! `cargo xtask fuzz`: runs the cargo-fuzz targets of `fuzz/` for a bounded time each, as CI
//! does, and fails on any crash.
//!
//! Each target starts from its committed seed corpus, `fuzz/corpus/<target>/`, copied to a
//! scratch directory: inputs libFuzzer finds during a short run are kept out of the repository
//! (`fuzz/seed.sh` writes the committed corpus; a fixed crash input is added by hand as a
//! regression seed). cargo-fuzz needs a nightly for `-Zsanitizer=address`; the eBPF nightly of
//! scripts/versions.sh is used, so that no other toolchain has to be installed. The BPF
//! programs are not built (`AYA_BUILD_SKIP=1`): the targets only call leaktrace's parsers.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, anyhow, bail};

use crate::go;

/// Per-input time limit, in seconds. A real input takes milliseconds; one that takes this long
/// is a hang, which libFuzzer then reports as a crash (its default waits 20 minutes).
const INPUT_TIMEOUT_S: u64 = 30;
/// Memory limit per target process; an input that makes a parser allocate past it is a crash.
const RSS_LIMIT_MB: u64 = 2048;

/// Builds the chosen targets (all of them when `targets` is empty), fuzzes each for
/// `seconds_per_target`, prints libFuzzer's figures for each, and fails naming every crash
/// input. All targets run even when one crashes, so that one CI run reports everything.
pub fn fuzz(seconds_per_target: u64, targets: &[String]) -> anyhow::Result<()> {
    let start = Instant::now();
    let root = go::repo_root();
    let fuzz_dir = root.join("fuzz");
    let available = fuzz_targets(&fuzz_dir)?;
    let targets: Vec<String> = if targets.is_empty() {
        available.clone()
    } else {
        if let Some(unknown) = targets.iter().find(|t| !available.contains(t)) {
            bail!(
                "no fuzz target {unknown:?}; fuzz/fuzz_targets/ has {}",
                available.join(", ")
            );
        }
        targets.to_vec()
    };
    let toolchain = nightly(&root)?;
    ensure_cargo_fuzz(&toolchain)?;

    println!("==> building {} with {toolchain}", targets.join(", "));
    let build_start = Instant::now();
    // `cargo fuzz build` takes one target or none (all of them).
    let builds: Vec<Option<&str>> = if targets == available {
        vec![None]
    } else {
        targets.iter().map(|t| Some(t.as_str())).collect()
    };
    for target in builds {
        let status = cargo_fuzz(&root, &toolchain)
            .arg("build")
            .args(target)
            .status()
            .context("running cargo fuzz build")?;
        if !status.success() {
            bail!("cargo +{toolchain} fuzz build failed (output above)");
        }
    }
    println!("==> built in {:.0} s", build_start.elapsed().as_secs_f64());

    let scratch = env::temp_dir().join(format!("leaktrace-fuzz-{}", std::process::id()));
    let mut results = Vec::new();
    for target in &targets {
        println!("\n==> fuzzing {target} for {seconds_per_target} s");
        results.push((
            target.as_str(),
            run_target(&root, &toolchain, target, seconds_per_target, &scratch)?,
        ));
    }

    println!("\n==> fuzz summary ({seconds_per_target} s per target)");
    println!(
        "{:<14} {:>12} {:>9} {:>14}  result",
        "target", "executions", "exec/s", "corpus"
    );
    let mut crashes = Vec::new();
    for (target, outcome) in &results {
        let (stats, result) = match outcome {
            Outcome::Done(stats) => (Some(stats), "ok".to_string()),
            Outcome::Crashed {
                stats,
                artifact,
                log,
            } => {
                crashes.push(format!(
                    "{target}: crash input {} (libFuzzer's output: {}); reproduce with \
                     `AYA_BUILD_SKIP=1 cargo +{toolchain} fuzz run {target} {}`",
                    artifact
                        .as_deref()
                        .map_or("not saved".into(), |a| a.display().to_string()),
                    log.display(),
                    artifact
                        .as_deref()
                        .map_or("<input>".into(), |a| a.display().to_string()),
                ));
                (stats.as_ref(), "CRASH".to_string())
            }
        };
        let cell = |f: fn(&Stats) -> String| stats.map_or("?".to_string(), f);
        println!(
            "{target:<14} {:>12} {:>9} {:>14}  {result}",
            cell(|s| s.executions.to_string()),
            cell(|s| s.exec_per_s.to_string()),
            cell(|s| format!("{}/{}", s.corpus_inputs, s.corpus_size)),
        );
    }
    // The scratch corpora grow by hundreds of MB a minute with these large inputs; they are
    // kept, with libFuzzer's logs, only when something crashed.
    if crashes.is_empty() {
        fs::remove_dir_all(&scratch)
            .with_context(|| format!("removing the scratch corpus {}", scratch.display()))?;
    } else {
        println!(
            "libFuzzer's logs and the grown corpora are in {}",
            scratch.display()
        );
    }
    println!(
        "==> fuzzing took {:.0} s in all",
        start.elapsed().as_secs_f64()
    );
    if !crashes.is_empty() {
        bail!(
            "{} fuzz target(s) crashed:\n  {}",
            crashes.len(),
            crashes.join("\n  ")
        );
    }
    Ok(())
}

/// libFuzzer's final figures for one run.
#[derive(Debug, PartialEq, Eq)]
struct Stats {
    executions: u64,
    exec_per_s: u64,
    corpus_inputs: u64,
    /// As libFuzzer prints it, e.g. `1234Kb`.
    corpus_size: String,
}

enum Outcome {
    Done(Stats),
    Crashed {
        /// The last figures libFuzzer printed before the crash, if any.
        stats: Option<Stats>,
        artifact: Option<PathBuf>,
        log: PathBuf,
    },
}

/// Fuzzes `target` for `seconds` on a scratch copy of its corpus, with libFuzzer's output in a
/// log file beside it (what went wrong is shown on a crash).
fn run_target(
    root: &Path,
    toolchain: &str,
    target: &str,
    seconds: u64,
    scratch: &Path,
) -> anyhow::Result<Outcome> {
    let seeds = root.join("fuzz/corpus").join(target);
    let corpus = scratch.join(target).join("corpus");
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let mut seeded = 0;
    if seeds.is_dir() {
        for entry in fs::read_dir(&seeds).with_context(|| format!("reading {}", seeds.display()))? {
            let path = entry?.path();
            if path.is_file() {
                fs::copy(&path, corpus.join(path.file_name().unwrap_or_default()))
                    .with_context(|| format!("copying {}", path.display()))?;
                seeded += 1;
            }
        }
    }
    if seeded == 0 {
        println!(
            "warning: no seeds in {}; {target} starts from nothing",
            seeds.display()
        );
    }
    let log = scratch.join(target).join("libfuzzer.log");
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let status = cargo_fuzz(root, toolchain)
        .args(["run", target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("running cargo fuzz run")?;
    let output = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let stats = final_stats(&output);
    if status.success()
        && let Some(stats) = stats
    {
        println!(
            "{target}: {} executions, {} exec/s, corpus {} inputs ({})",
            stats.executions, stats.exec_per_s, stats.corpus_inputs, stats.corpus_size
        );
        return Ok(Outcome::Done(stats));
    }
    for line in crash_excerpt(&output) {
        println!("  | {line}");
    }
    let artifact = crash_artifact(&output).map(|p| root.join("fuzz").join(p));
    println!(
        "{target}: FAILED ({status}); crash input: {}",
        artifact
            .as_deref()
            .map_or("none saved".into(), |a| a.display().to_string())
    );
    Ok(Outcome::Crashed {
        stats,
        artifact,
        log,
    })
}

/// `cargo +TOOLCHAIN fuzz`, run in the repository root, with the BPF build skipped.
fn cargo_fuzz(root: &Path, toolchain: &str) -> Command {
    // The rustup proxy on PATH, which understands `+toolchain` (the CARGO this xtask was started
    // by is the pinned userspace toolchain's own binary).
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{toolchain}"))
        .arg("fuzz")
        .current_dir(root)
        .env("AYA_BUILD_SKIP", "1");
    cmd
}

/// Installs cargo-fuzz when `cargo fuzz` is not a command yet.
fn ensure_cargo_fuzz(toolchain: &str) -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args([&format!("+{toolchain}"), "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    println!("==> cargo fuzz not found: cargo install cargo-fuzz --locked (about a minute)");
    let status = Command::new(env!("CARGO"))
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install cargo-fuzz --locked failed (output above); is crates.io reachable?");
    }
    Ok(())
}

/// RUST_EBPF from scripts/versions.sh: the nightly scripts/setup.sh installs.
fn nightly(root: &Path) -> anyhow::Result<String> {
    let path = root.join("scripts/versions.sh");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let toolchain = text
        .lines()
        .find_map(|l| l.strip_prefix("RUST_EBPF="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| anyhow!("no RUST_EBPF= line in {}", path.display()))?;
    let installed = Command::new("rustup")
        .args(["run", &toolchain, "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        bail!(
            "the nightly {toolchain} (RUST_EBPF in scripts/versions.sh) is not installed: run scripts/setup.sh"
        );
    }
    Ok(toolchain)
}

/// The targets: the files of fuzz/fuzz_targets/, by name.
fn fuzz_targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    Ok(names)
}

/// The figures of libFuzzer's last status line, `#N DONE cov: .. corp: C/S .. exec/s: E ..`
/// at the end of a run (else the last `#N ...` line, for a run cut short by a crash).
fn final_stats(output: &str) -> Option<Stats> {
    let lines: Vec<&str> = output.lines().filter(|l| l.starts_with('#')).collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("DONE"))
        .or_else(|| lines.iter().rev().find(|l| l.contains("exec/s:")))?;
    let mut words = line.split_whitespace();
    let executions = words.next()?.strip_prefix('#')?.parse().ok()?;
    let mut exec_per_s = None;
    let mut corpus = None;
    let words: Vec<&str> = words.collect();
    for pair in words.windows(2) {
        match pair[0] {
            "exec/s:" => exec_per_s = pair[1].parse().ok(),
            "corp:" => corpus = pair[1].split_once('/'),
            _ => {}
        }
    }
    let (inputs, size) = corpus?;
    Some(Stats {
        executions,
        exec_per_s: exec_per_s?,
        corpus_inputs: inputs.parse().ok()?,
        corpus_size: size.to_string(),
    })
}

/// The lines that say what went wrong: from the first panic, sanitizer report or libFuzzer
/// error (timeout, out-of-memory), else the end of the output.
fn crash_excerpt(output: &str) -> Vec<&str> {
    const MARKERS: [&str; 4] = [
        "panicked at",
        "ERROR: AddressSanitizer",
        "ERROR: libFuzzer",
        "ALARM: working on the last Unit",
    ];
    let lines: Vec<&str> = output.lines().collect();
    match lines
        .iter()
        .position(|l| MARKERS.iter().any(|m| l.contains(m)))
    {
        Some(first) => lines[first..].iter().take(20).copied().collect(),
        None => lines[lines.len().saturating_sub(30)..].to_vec(),
    }
}

/// Where libFuzzer saved the input that crashed (`Test unit written to PATH`), relative to the
/// fuzz directory when cargo-fuzz gave a relative artifact prefix.
fn crash_artifact(output: &str) -> Option<PathBuf> {
    output
        .lines()
        .rev()
        .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_final_status_line() {
        let output = "INFO: seed corpus: files: 9 min: 256b max: 784b total: 5136b rss: 38Mb\n\
            #2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
            #8192\tpulse  cov: 412 ft: 1205 corp: 87/9011b lim: 784 exec/s: 4096 rss: 61Mb\n\
            #1234567\tDONE   cov: 523 ft: 1730 corp: 112/14Kb lim: 784 exec/s: 20575 rss: 350Mb\n\
            Done 1234567 runs in 61 second(s)\n";
        assert_eq!(
            final_stats(output),
            Some(Stats {
                executions: 1234567,
                exec_per_s: 20575,
                corpus_inputs: 112,
                corpus_size: "14Kb".to_string(),
            })
        );
        assert_eq!(final_stats("no status here\n"), None);
    }

    #[test]
    fn finds_the_crash_input() {
        let output = "==123== ERROR: libFuzzer: deadly signal\n\
            artifact_prefix='/r/fuzz/artifacts/elf/'; Test unit written to /r/fuzz/artifacts/elf/crash-da39a3ee\n\
            Base64: AAAA\n";
        assert_eq!(
            crash_artifact(output),
            Some(PathBuf::from("/r/fuzz/artifacts/elf/crash-da39a3ee"))
        );
        assert_eq!(crash_artifact("#1 DONE\n"), None);
    }

    #[test]
    fn shows_the_panic_not_the_stack_tail() {
        let mut output = String::from("#1 INITED\n");
        output.push_str(
            "thread '<unnamed>' panicked at fuzz_targets/elf.rs:3:5:\nindex out of bounds\n",
        );
        for i in 0..100 {
            output.push_str(&format!("    #{i} 0x1234 in frame\n"));
        }
        let excerpt = crash_excerpt(&output);
        assert_eq!(excerpt.len(), 20);
        assert!(excerpt[0].contains("panicked at"));
        assert_eq!(crash_excerpt("a\nb\n"), ["a", "b"]);
    }
}
