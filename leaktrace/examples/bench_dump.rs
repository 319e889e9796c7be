//! What a `leaktrace dump` costs a busy target with 100 000 goroutines, measured side by side
//! in one run: `testdata/go/manyparked` parks them and hashes on one core, reporting its rate
//! every 250 ms. Windows without leaktrace (3 s) alternate with windows of 5 consecutive
//! dumps; the result is the target's throughput during the dumps over its throughput without
//! them, and the wall time of one dump.
//!
//! ```text
//! cargo run --release --example bench_dump [-- ROUNDS]
//! ```
//!
//! Needs root (or CAP_SYS_PTRACE) and the Go toolchains of scripts/setup.sh; it uses the
//! newest of scripts/versions.sh, or LEAKTRACE_GO_VERSION. The dumps run in this process
//! (`leaktrace::dump::run`, the whole `dump --json` minus process start-up).

use std::{
    env, fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use leaktrace::dump::DumpOptions;

const GOROUTINES: u32 = 100_000;
const UNTRACED: Duration = Duration::from_secs(3);
const DUMPS_PER_WINDOW: usize = 5;
/// The fixture's reporting period: a report at time t covers (t - PERIOD, t].
const PERIOD: Duration = Duration::from_millis(250);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cache_dir() -> PathBuf {
    if let Some(d) = env::var_os("LEAKTRACE_CACHE") {
        return d.into();
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cache"));
    base.join("leaktrace")
}

fn go_version() -> anyhow::Result<String> {
    if let Ok(v) = env::var("LEAKTRACE_GO_VERSION") {
        return Ok(v);
    }
    let text = fs::read_to_string(repo_root().join("scripts/versions.sh"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("GO_VERSIONS="))
        .and_then(|l| l.trim_matches('"').split_whitespace().last())
        .map(String::from)
        .context("no GO_VERSIONS in scripts/versions.sh")
}

/// Builds the fixture with `go build` (its own cache makes a rebuild instant).
fn build_fixture(version: &str) -> anyhow::Result<PathBuf> {
    let cache = cache_dir();
    let go = cache.join("go").join(version).join("go/bin/go");
    if !go.exists() {
        bail!(
            "Go {version} is not installed at {}: run scripts/setup.sh",
            go.display()
        );
    }
    let out = cache.join("bench").join(format!("manyparked-{version}"));
    fs::create_dir_all(out.parent().unwrap())?;
    let status = Command::new(go)
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(repo_root().join("testdata/go/manyparked"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOTELEMETRY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache.join("gocache"))
        .env("GOPATH", cache.join("gopath"))
        .status()?;
    if !status.success() {
        bail!("go build of testdata/go/manyparked failed");
    }
    Ok(out)
}

/// The fixture, with its rate reports timestamped as they arrive.
struct Target {
    child: Child,
    reports: Arc<Mutex<Vec<(Instant, f64)>>>,
}

impl Target {
    fn start(bin: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(["-n", &GOROUTINES.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().unwrap();
        for line in BufReader::new(stderr).lines() {
            if line? == "ready" {
                break;
            }
        }
        let reports = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&reports);
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rate) = line.strip_prefix("ops/s ").and_then(|r| r.parse().ok()) {
                    sink.lock().unwrap().push((Instant::now(), rate));
                }
            }
        });
        Ok(Self { child, reports })
    }

    /// The mean rate over the reports that lie wholly inside [from, to].
    fn rate(&self, from: Instant, to: Instant) -> anyhow::Result<f64> {
        let reports = self.reports.lock().unwrap();
        let inside: Vec<f64> = reports
            .iter()
            .filter(|(t, _)| *t >= from + PERIOD && *t <= to)
            .map(|r| r.1)
            .collect();
        if inside.is_empty() {
            bail!("no rate report inside a {:?} window", to - from);
        }
        Ok(inside.iter().sum::<f64>() / inside.len() as f64)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The 1-minute load average: on a shared machine, other work moves both windows.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, min, max)
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(3);
    let version = go_version()?;
    let bin = build_fixture(&version)?;
    let target = Target::start(&bin)?;
    let opts = DumpOptions {
        pid: target.child.id(),
        all: false,
        json: true,
        runtime: false,
    };
    println!(
        "Go {version}, {GOROUTINES} parked goroutines, a hashing loop on one core; {rounds} rounds of {UNTRACED:?} untraced / {DUMPS_PER_WINDOW} dumps; {} CPUs, load average {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    thread::sleep(Duration::from_secs(1)); // let the worker settle
    let (mut ratios, mut dump_times) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let start = Instant::now();
        thread::sleep(UNTRACED);
        let untraced = target.rate(start, Instant::now())?;

        let start = Instant::now();
        for _ in 0..DUMPS_PER_WINDOW {
            let t = Instant::now();
            let out = leaktrace::dump::run(&opts)?;
            dump_times.push(t.elapsed().as_secs_f64());
            std::hint::black_box(out);
        }
        let end = Instant::now();
        // Let the last report that lies inside the window arrive.
        thread::sleep(Duration::from_millis(50));
        let traced = target.rate(start, end)?;
        let ratio = traced / untraced;
        ratios.push(ratio);
        println!(
            "round {round}: untraced {untraced:.0} ops/s, during dumps {traced:.0} ops/s, ratio {ratio:.3}, dumps took {:.0} ms",
            (end - start).as_secs_f64() * 1000.0 / DUMPS_PER_WINDOW as f64
        );
    }
    let (r_mean, r_min, r_max) = spread(&ratios);
    let (d_mean, d_min, d_max) = spread(&dump_times);
    println!(
        "dump of {GOROUTINES} goroutines: {:.0} ms (min {:.0}, max {:.0}, n={})",
        d_mean * 1000.0,
        d_min * 1000.0,
        d_max * 1000.0,
        dump_times.len()
    );
    println!(
        "target throughput during dumps / without: {r_mean:.3} (min {r_min:.3}, max {r_max:.3}, {rounds} rounds); load average now {}",
        load_average()
    );
    Ok(())
}
