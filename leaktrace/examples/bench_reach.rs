//! What a reachability pass (`census::reach::pass`, the proof of `dump --leaks` and of the
//! live trace) costs, over heaps of small objects (`testdata/go/reachheap`: N MiB of 48-byte
//! objects in 4096 linked lists reachable from a global, 100 leaked goroutines, a hashing
//! worker on one core that reports its rate every 250 ms). For each heap size it prints:
//!
//! - leaktrace's CPU per pass (this thread's: the pass runs on it alone), objects and bytes
//!   marked, bytes read from the target, and whether the 100 leaks were found unreachable;
//! - leaktrace's extra memory during a pass (peak RSS over RSS before it) against the heap;
//! - the target's throughput during back-to-back passes over its throughput without them,
//!   in alternating windows of one run.
//!
//! ```text
//! cargo run --release --example bench_reach [-- MIBS [ROUNDS]]   # e.g. -- 100,1024 3
//! ```
//!
//! `LEAKTRACE_BENCH_STACKS=conservative` scans goroutine stacks word by word instead of by
//! their stack maps, to compare.
//!
//! Needs root (or CAP_SYS_PTRACE) and the Go toolchains of scripts/setup.sh; it uses the
//! newest of scripts/versions.sh, or LEAKTRACE_GO_VERSION. The figures go, by hand, under
//! "## Reachability pass (bench_reach)" in BENCHMARKS.md, which `cargo xtask bench` keeps.

use std::{
    env, fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use leaktrace::{
    census::{
        data_roots::GlobalScan,
        reach::{self, Pass, PassLimits},
        stackmaps::StackMode,
    },
    tracee::Target,
};

// The test harness's helpers: Go toolchains from the project's cache and fixtures built by
// content hash.
#[path = "../tests/support/mod.rs"]
mod support;

const UNTRACED: Duration = Duration::from_secs(2);
const TRACED: Duration = Duration::from_secs(2);
/// The fixture's reporting period: a report at time t covers (t - PERIOD, t].
const PERIOD: Duration = Duration::from_millis(250);
/// Passes timed per size.
const SAMPLES: usize = 3;
const LEAKS: usize = 100;

/// One pass, scanning stacks as `LEAKTRACE_BENCH_STACKS` asks.
fn one_pass(target: &Target) -> anyhow::Result<Pass> {
    let stacks = match env::var("LEAKTRACE_BENCH_STACKS").as_deref() {
        Ok("conservative") => StackMode::Conservative,
        _ => StackMode::Precise,
    };
    reach::pass_scanning(target, PassLimits::default(), GlobalScan::GcBitmaps, stacks)
}

fn go_version() -> String {
    env::var("LEAKTRACE_GO_VERSION")
        .unwrap_or_else(|_| support::go_versions().pop().expect("GO_VERSIONS"))
}

/// The fixture, with its rate reports timestamped as they arrive.
struct Fixture {
    child: Child,
    _stdin: ChildStdin,
    heap: u64,
    reports: Arc<Mutex<Vec<(Instant, f64)>>>,
}

impl Fixture {
    fn start(bin: &Path, mib: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(["-mib", &mib.to_string(), "-leaks", &LEAKS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
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
        let mut heap = 0;
        loop {
            let line = stderr
                .recv_timeout(Duration::from_secs(600))
                .context("the fixture never said \"ready\"")?;
            if let Some(h) = line.strip_prefix("heap ") {
                heap = h.parse()?;
            }
            if line == "ready" {
                break;
            }
        }
        Ok(Self {
            _stdin: child.stdin.take().unwrap(),
            child,
            heap,
            reports,
        })
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

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// One pass, with its CPU and the memory it added at its peak: freed memory is given back
/// first and the peak reset, so the peak is this pass's.
fn measured_pass(target: &Target) -> anyhow::Result<(Pass, Duration, u64)> {
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe { libc::malloc_trim(0) };
    fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let before = status_bytes("VmRSS:");
    let t = thread_cpu();
    let pass = one_pass(target)?;
    let cpu = thread_cpu() - t;
    let extra = status_bytes("VmHWM:").saturating_sub(before);
    Ok((pass, cpu, extra))
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn bench(bin: &Path, size: usize, rounds: usize) -> anyhow::Result<()> {
    let fixture = Fixture::start(bin, size)?;
    let target = Target::inspect(fixture.child.id())?;
    let mut timed = Vec::new();
    for _ in 0..SAMPLES {
        timed.push(measured_pass(&target)?);
    }
    timed.sort_by_key(|t| t.1);
    let (pass, cpu, _) = &timed[timed.len() / 2];
    let extra = timed.iter().map(|t| t.2).max().unwrap_or(0);
    let leaks_found = pass.unreachable.len();

    // Target throughput: untraced windows alternate with back-to-back passes.
    let mut ratios = Vec::new();
    let mut passes = 0usize;
    for _ in 0..rounds {
        let start = Instant::now();
        thread::sleep(UNTRACED);
        let untraced = fixture.rate(start, Instant::now())?;
        let start = Instant::now();
        while start.elapsed() < TRACED {
            std::hint::black_box(one_pass(&target)?);
            passes += 1;
        }
        let end = Instant::now();
        thread::sleep(Duration::from_millis(50)); // the last report inside the window
        ratios.push(fixture.rate(start, end)? / untraced);
    }
    let ratio = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let (rmin, rmax) = ratios
        .iter()
        .fold((f64::INFINITY, 0f64), |(a, b), &r| (a.min(r), b.max(r)));
    println!(
        "| {size} MiB | {:.0} MiB | {:.2} s (min {:.2}, max {:.2}) | {:.2} s | {} | {:.0} MiB | \
         {:.0} MiB | {:.1} MiB (1/{:.0} of the heap) | {leaks_found} of {LEAKS} | \
         {ratio:.3} (min {rmin:.3}, max {rmax:.3}; {passes} passes) | {} | {} | {} |",
        mib(fixture.heap),
        cpu.as_secs_f64(),
        timed[0].1.as_secs_f64(),
        timed[timed.len() - 1].1.as_secs_f64(),
        pass.elapsed.as_secs_f64(),
        pass.objects_marked,
        mib(pass.bytes_marked),
        mib(pass.bytes_read),
        mib(extra),
        fixture.heap as f64 / extra.max(1) as f64,
        pass.roots.as_str(),
        pass.stacks.summary(),
        load_average(),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = match env::args().nth(1) {
        Some(s) => s.split(',').map(|n| n.parse()).collect::<Result<_, _>>()?,
        None => vec![100, 1024],
    };
    let rounds: usize = env::args()
        .nth(2)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(3);
    let version = go_version();
    let bin = support::build_fixture("reachheap", &version, &[]);
    println!(
        "Go {version}, reachheap (48-byte objects in 4096 lists from a global, {LEAKS} leaked \
         goroutines, a hashing loop on one core); {SAMPLES} passes timed per size (median \
         CPU, peak extra RSS), {rounds} rounds of {UNTRACED:?} without / {TRACED:?} of \
         back-to-back passes; {} CPUs, load average {}\n",
        thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!(
        "| heap asked | Go HeapAlloc | leaktrace CPU per pass | wall | objects marked | \
         bytes marked | bytes read | leaktrace extra RSS | leaks unreachable | \
         target throughput during passes / without | globals | stacks | load |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        bench(&bin, n, rounds)?;
    }
    println!("\nload average now {}", load_average());
    Ok(())
}
