//! `cargo xtask test`: everything CI checks, in order: formatting, clippy with warnings
//! denied, and the whole test suite (which builds the BPF programs and Go fixtures and runs
//! them against the real kernel).

use std::{process::Command, time::Instant};

use anyhow::bail;

use crate::go;

/// Seconds of fuzzing per target in the test run (`cargo xtask fuzz` runs longer).
const FUZZ_SECONDS: u64 = 10;

fn run(what: &str, args: &[&str]) -> anyhow::Result<()> {
    println!("\n==> {what}: cargo {}", args.join(" "));
    let start = Instant::now();
    let status = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(go::repo_root())
        .status()?;
    println!(
        "==> {what}: {} in {:.0} s",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{what} failed");
    }
    Ok(())
}

pub fn test(extra: &[String]) -> anyhow::Result<()> {
    if unsafe_geteuid() != 0 {
        bail!("the tests load BPF programs and trace processes: run them as root (sudo ./x test)");
    }
    let start = Instant::now();
    run("format", &["fmt", "--all", "--", "--check"])?;
    run(
        "clippy",
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    )?;
    let mut args = vec!["test"];
    args.extend(extra.iter().map(String::as_str));
    run("tests", &args)?;
    // Every fuzz target, briefly, from its committed corpus: the parsers must not panic on
    // what it already knows, and the targets must keep building.
    crate::fuzz::fuzz(FUZZ_SECONDS, &[])?;
    println!(
        "\n==> all checks passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn unsafe_geteuid() -> u32 {
    // /proc/self/status avoids a libc dependency in xtask.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}
