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
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;
use leaktrace::dump::DumpOptions;

const GOROUTINES: u32 = 100_000;
const UNTRACED: Duration = Duration::from_secs(3);
const DUMPS_PER_WINDOW: usize = 5;
/// The fixture's reporting period: a report at time t covers (t - PERIOD, t].
const PERIOD: Duration = Duration::from_millis(250);

// The test harness's helpers: Go toolchains from the project's cache and fixtures built by
// content hash.
#[path = "../tests/support/mod.rs"]
mod support;

/// The Go version to build the fixture with: LEAKTRACE_GO_VERSION, or the newest tested.
fn go_version() -> String {
    env::var("LEAKTRACE_GO_VERSION")
        .unwrap_or_else(|_| support::go_versions().pop().expect("GO_VERSIONS"))
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
    let version = go_version();
    let bin = support::build_fixture("manyparked", &version, &[]);
    let target = Target::start(&bin)?;
    let opts = DumpOptions {
        pid: target.child.id(),
        all: false,
        json: true,
        runtime: false,
        output: None,
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
