//! `cargo xtask test`: everything CI checks, in order: formatting, clippy with warnings
//! denied, and the whole test suite (which builds the BPF programs and Go fixtures and runs
//! them against the real kernel), then each fuzz target briefly.
//!
//! `--stress` runs the tests with every CPU loaded by a busy loop, and `--repeat N` runs
//! them N times, each `--test FILE` on its own and counted per file: the suite must hold on
//! a slower or busier machine of this kind, and a probe hit costs 10-18 us on these VMs, 2x
//! apart from one to the next.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::bail;

use crate::go;

/// Seconds of fuzzing per target in the test run (`cargo xtask fuzz` runs longer).
const FUZZ_SECONDS: u64 = 10;

/// How many runs' test outputs are kept (see [`scratch`]).
const RUNS_KEPT: usize = 3;

/// `cargo ARGS`, said and timed; the tests' temporary directory is `tmp` when given.
fn run_in(what: &str, args: &[&str], tmp: Option<&Path>) -> anyhow::Result<bool> {
    println!("\n==> {what}: cargo {}", args.join(" "));
    let start = Instant::now();
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(args).current_dir(go::repo_root());
    if let Some(t) = tmp {
        cargo.env("TMPDIR", t);
    }
    let status = cargo.status()?;
    println!(
        "==> {what}: {} in {:.0} s",
        if status.success() { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    Ok(status.success())
}

fn must(what: &str, args: &[&str]) -> anyhow::Result<()> {
    if !run_in(what, args, None)? {
        bail!("{what} failed");
    }
    Ok(())
}

/// How the test phase is run.
pub struct TestPlan<'a> {
    /// Load every CPU with a busy loop while the tests run.
    pub stress: bool,
    /// Run the tests this many times (formatting, clippy and fuzzing once).
    pub repeat: usize,
    /// Passed on to `cargo test`.
    pub args: &'a [String],
}

pub fn test(plan: &TestPlan) -> anyhow::Result<()> {
    if unsafe_geteuid() != 0 {
        bail!("the tests load BPF programs and trace processes: run them as root (sudo ./x test)");
    }
    let start = Instant::now();
    must("format", &["fmt", "--all", "--", "--check"])?;
    must(
        "clippy",
        &["clippy", "--all-targets", "--", "-D", "warnings"],
    )?;
    let tmp = scratch()?;
    let hog = plan.stress.then(Hog::start);
    let runs = plan.repeat.max(1);
    let groups = test_groups(plan);
    let mut passed = vec![0usize; groups.len()];
    for i in 1..=runs {
        for (group, passes) in groups.iter().zip(passed.iter_mut()) {
            let what = match (runs > 1, groups.len() > 1) {
                (false, _) => "tests".to_string(),
                (true, false) => format!("tests (run {i} of {runs})"),
                (true, true) => format!("{} (run {i} of {runs})", group.name),
            };
            let args: Vec<&str> = group.args.iter().map(String::as_str).collect();
            *passes += usize::from(run_in(&what, &args, Some(&tmp))?);
        }
    }
    drop(hog);
    report_hit_costs(&tmp);
    println!(
        "==> the tests' outputs (each trace's reports and leaktrace's stderr) are in {}",
        tmp.display()
    );
    if runs > 1 {
        let load = if plan.stress {
            ", every CPU loaded"
        } else {
            ""
        };
        for (group, passes) in groups.iter().zip(&passed) {
            println!("==> {}: {passes} of {runs} runs passed{load}", group.name);
        }
    }
    if passed.iter().any(|p| *p < runs) {
        bail!("tests failed");
    }
    // Every fuzz target, briefly, from its committed corpus: the parsers must not panic on
    // what it already knows, and the targets must keep building.
    crate::fuzz::fuzz(FUZZ_SECONDS, &[])?;
    println!(
        "\n==> all checks passed in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One `cargo test` invocation of the plan, run and counted on its own.
struct TestGroup {
    name: String,
    args: Vec<String>,
}

/// When repeating, every `--test FILE` of the plan runs on its own, so that one file's
/// failure neither hides the others' results nor stops them from running; otherwise the
/// plan is one `cargo test`.
fn test_groups(plan: &TestPlan) -> Vec<TestGroup> {
    let mut files = Vec::new();
    let mut rest = Vec::new();
    let mut args = plan.args.iter();
    while let Some(a) = args.next() {
        match (a.as_str(), a.strip_prefix("--test=")) {
            ("--test", _) => files.extend(args.next().cloned()),
            (_, Some(file)) => files.push(file.to_string()),
            _ => rest.push(a.clone()),
        }
    }
    let whole = |name: &str, extra: &[String]| TestGroup {
        name: name.to_string(),
        args: ["test".to_string()]
            .into_iter()
            .chain(extra.iter().cloned())
            .collect(),
    };
    if plan.repeat <= 1 || files.len() < 2 {
        return vec![whole("tests", plan.args)];
    }
    files
        .iter()
        .map(|f| {
            let mut extra = vec!["--test".to_string(), f.clone()];
            extra.extend(rest.iter().cloned());
            whole(f, &extra)
        })
        .collect()
}

/// A busy loop on every CPU, at the tests' own priority, until dropped.
struct Hog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
    started: Instant,
}

impl Hog {
    fn start() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..cpus)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut spins = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                    spins
                })
            })
            .collect();
        println!("==> stress: a busy loop on each of {cpus} CPUs while the tests run");
        Self {
            stop,
            threads,
            started: Instant::now(),
        }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let spins: u64 = self.threads.drain(..).map(|t| t.join().unwrap_or(0)).sum();
        println!(
            "==> stress: the busy loops ran {:.0} s ({:.1e} iterations)",
            self.started.elapsed().as_secs_f64(),
            spins as f64
        );
    }
}

/// A new directory for this run's test outputs, the tests' temporary directory: each trace
/// a test runs writes its reports there (under /tmp they piled up: 4,900 directories, 790
/// MiB after some days of runs). Under the cache, named by the time and xtask's PID; the
/// oldest beyond [`RUNS_KEPT`] are removed, unless their run is still going.
fn scratch() -> anyhow::Result<PathBuf> {
    let root = go::cache_dir().join("test-runs");
    fs::create_dir_all(&root)?;
    let mut old: Vec<PathBuf> = fs::read_dir(&root)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    old.sort();
    let running = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .is_some_and(|pid| Path::new("/proc").join(pid).exists())
    };
    let excess = (old.len() + 1).saturating_sub(RUNS_KEPT);
    for p in old.iter().take(excess).filter(|p| !running(p)) {
        if let Err(e) = fs::remove_dir_all(p) {
            println!(
                "==> could not remove an old run's test outputs, {}: {e}",
                p.display()
            );
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let dir = root.join(format!("{now:012}-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Prints the probe hit costs leaktrace measured at start-up in the reports the tests wrote
/// (report.json under `tmp`, this run's own directory): how fast this machine was.
fn report_hit_costs(tmp: &Path) {
    let mut costs: Vec<f64> = Vec::new();
    collect_hit_costs(tmp, 3, &mut costs);
    if costs.is_empty() {
        return;
    }
    costs.sort_by(f64::total_cmp);
    println!(
        "==> a probe hit cost {:.1} us (median; {:.1}-{:.1} over {} reports the tests wrote)",
        costs[costs.len() / 2],
        costs[0],
        costs[costs.len() - 1],
        costs.len()
    );
}

fn collect_hit_costs(dir: &Path, depth: u32, out: &mut Vec<f64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() && depth > 0 {
            collect_hit_costs(&path, depth - 1, out);
        } else if path.file_name().is_some_and(|n| n == "report.json")
            && let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(r) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(us) = r["probes"]["hit_cost_us"].as_f64()
        {
            out.push(us);
        }
    }
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
