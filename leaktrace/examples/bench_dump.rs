//! What goroutine snapshots cost, for 10k, 100k and 1M parked goroutines with realistic
//! stacks (`testdata/go/parkedstacks`: five creation sites, 10-30 frames each, a hashing
//! worker on one core that reports its rate every 250 ms). For each size it prints:
//!
//! - leaktrace's CPU per full snapshot (every stack read and unwound; symbols cached, as in
//!   a live trace), and per incremental snapshot after 1% of the goroutines moved;
//! - the target's throughput during back-to-back full snapshots over its throughput without
//!   them, measured side by side in alternating windows of one run. On a small machine the
//!   loop takes a whole CPU, which the target had to itself in the windows without it: so
//!   also the same ratio per CPU second the target got (its work slowed by leaktrace's
//!   reads rather than by the CPU it lost), and the ratio with snapshots paced as the live
//!   trace paces them (a walk at most 1/20 of the time);
//! - leaktrace's RSS while it holds the census and one snapshot, per 100k goroutines.
//!
//! Each snapshot is given back to its census once read (`Census::recycle`), as the live
//! trace does, and the CPU per snapshot counts that.
//!
//! ```text
//! cargo run --release --example bench_dump [-- SIZES [ROUNDS]]   # e.g. -- 10000,100000 3
//! ```
//!
//! Needs root (or CAP_SYS_PTRACE) and the Go toolchains of scripts/setup.sh; it uses the
//! newest of scripts/versions.sh, or LEAKTRACE_GO_VERSION. Snapshots run in this process
//! (`leaktrace::census::Census`), CPU is this thread's (CLOCK_THREAD_CPUTIME_ID).

use std::{
    env, fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use leaktrace::{census::Census, tracee::Target};

const UNTRACED: Duration = Duration::from_secs(2);
const TRACED: Duration = Duration::from_secs(2);
/// The live trace's pacing (trace/snapshot.rs SNAPSHOT_PACE): a walk takes at most this
/// fraction of the time.
const PACE: u32 = 20;
/// The fixture's reporting period: a report at time t covers (t - PERIOD, t].
const PERIOD: Duration = Duration::from_millis(250);
/// Snapshots timed per kind and size.
const SAMPLES: usize = 5;

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
struct Fixture {
    child: Child,
    stdin: ChildStdin,
    stderr: mpsc::Receiver<String>,
    reports: Arc<Mutex<Vec<(Instant, f64)>>>,
}

impl Fixture {
    fn start(bin: &Path, goroutines: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .args(["-n", &goroutines.to_string()])
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
        let stdin = child.stdin.take().unwrap();
        let mut f = Self {
            child,
            stdin,
            stderr,
            reports,
        };
        f.wait_for("ready")?;
        Ok(f)
    }

    fn wait_for(&mut self, what: &str) -> anyhow::Result<()> {
        loop {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(600))
                .with_context(|| format!("the fixture never said {what:?}"))?;
            if line.starts_with(what) {
                return Ok(());
            }
        }
    }

    /// Wakes `k` goroutines, which park again with another stack.
    fn move_goroutines(&mut self, k: usize) -> anyhow::Result<()> {
        writeln!(self.stdin, "move {k}")?;
        self.stdin.flush()?;
        self.wait_for("moved")
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

/// The CPU time of process `pid` so far (user and system, all its threads).
fn process_cpu(pid: u32) -> Duration {
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which may hold spaces: utime and stime are the
            // 14th and 15th of the whole line.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// The target's rate over a window, and its rate per CPU second it got then.
struct Window {
    rate: f64,
    per_cpu: f64,
}

impl Window {
    /// Runs `during` until `length` has passed, then reads the target's rate and CPU.
    fn measure(
        fixture: &Fixture,
        length: Duration,
        mut during: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let pid = fixture.child.id();
        let (start, cpu) = (Instant::now(), process_cpu(pid));
        while start.elapsed() < length {
            during()?;
        }
        let (end, cpu) = (Instant::now(), process_cpu(pid) - cpu);
        thread::sleep(Duration::from_millis(50)); // the last report inside the window
        let rate = fixture.rate(start, end)?;
        let share = cpu.as_secs_f64() / (end - start).as_secs_f64();
        Ok(Self {
            rate,
            per_cpu: rate / share.max(1e-9),
        })
    }
}

/// Mean, min and max.
fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (min, max) = v
        .iter()
        .fold((f64::INFINITY, 0f64), |(a, b), &r| (a.min(r), b.max(r)));
    (mean, min, max)
}

/// This process's resident set, in bytes.
fn rss() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The 1-minute load average: on a shared machine, other work moves the windows.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and maximum, in ms.
fn median_max(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    (ms(v[v.len() / 2]), ms(*v.last().unwrap()))
}

fn bench(bin: &Path, n: usize, rounds: usize, baseline_rss: u64) -> anyhow::Result<()> {
    let mut fixture = Fixture::start(bin, n)?;
    let target = Target::inspect(fixture.child.id())?;
    let one_percent = (n / 100).max(1);

    // Full snapshots, caches warm after the first (as in a live trace).
    let mut full = Census::full();
    let first = full.snapshot(&target)?;
    let parked = first.iter().filter(|g| g.stack.len() >= 10).count();
    full.recycle(first);
    let mut full_cpu = Vec::new();
    for _ in 0..SAMPLES {
        let t = thread_cpu();
        let gs = std::hint::black_box(full.snapshot(&target)?);
        full.recycle(gs);
        full_cpu.push(thread_cpu() - t);
    }

    // Incremental snapshots, each after 1% of the goroutines moved.
    let mut census = Census::new();
    let mut held = census.snapshot(&target)?;
    let mut incr_cpu = Vec::new();
    for _ in 0..SAMPLES {
        fixture.move_goroutines(one_percent)?;
        let t = thread_cpu();
        census.recycle(std::mem::take(&mut held));
        held = census.snapshot(&target)?;
        incr_cpu.push(thread_cpu() - t);
    }
    let held_rss = rss();

    // Target throughput: untraced windows alternate with back-to-back full snapshots and
    // with full snapshots paced as in a live trace.
    let (mut ratios, mut per_cpu, mut paced) = (Vec::new(), Vec::new(), Vec::new());
    let mut snapshots = 0usize;
    for _ in 0..rounds {
        let untraced = Window::measure(&fixture, UNTRACED, || {
            thread::sleep(Duration::from_millis(10));
            Ok(())
        })?;
        let traced = Window::measure(&fixture, TRACED, || {
            let gs = std::hint::black_box(full.snapshot(&target)?);
            full.recycle(gs);
            snapshots += 1;
            Ok(())
        })?;
        let slow = Window::measure(&fixture, TRACED, || {
            let t = Instant::now();
            let gs = std::hint::black_box(full.snapshot(&target)?);
            full.recycle(gs);
            thread::sleep(t.elapsed() * (PACE - 1));
            Ok(())
        })?;
        ratios.push(traced.rate / untraced.rate);
        per_cpu.push(traced.per_cpu / untraced.per_cpu);
        paced.push(slow.rate / untraced.rate);
    }
    let (ratio, rmin, rmax) = spread(&ratios);
    let (per_cpu, _, _) = spread(&per_cpu);
    let (paced, _, _) = spread(&paced);

    let (full_med, full_max) = median_max(full_cpu);
    let (incr_med, incr_max) = median_max(incr_cpu);
    let grown = held_rss.saturating_sub(baseline_rss);
    println!(
        "{n:>8} goroutines ({parked} with 10+ frames): full snapshot {full_med:.1} ms CPU (max {full_max:.1}), \
         incremental with 1% moved {incr_med:.1} ms (max {incr_max:.1}); \
         target throughput during back-to-back full snapshots / without: {ratio:.3} \
         (min {rmin:.3}, max {rmax:.3}, {rounds} rounds, {snapshots} snapshots), \
         per CPU second of the target {per_cpu:.3}, with snapshots paced 1/{PACE} {paced:.3}; \
         leaktrace RSS {:.0} MiB, {:.0} MiB above start, {:.0} MiB per 100k goroutines",
        rss() as f64 / 1048576.0,
        grown as f64 / 1048576.0,
        grown as f64 / 1048576.0 * 100_000.0 / held.len() as f64,
    );
    drop(held);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = match env::args().nth(1) {
        Some(s) => s.split(',').map(|n| n.parse()).collect::<Result<_, _>>()?,
        None => vec![10_000, 100_000, 1_000_000],
    };
    let rounds: usize = env::args()
        .nth(2)
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(3);
    let version = go_version();
    let bin = support::build_fixture("parkedstacks", &version, &[]);
    println!(
        "Go {version}, parkedstacks (5 creation sites, 10-30 frames, a hashing loop on one core); \
         {SAMPLES} snapshots timed per kind, {rounds} rounds of {UNTRACED:?} untraced / {TRACED:?} of back-to-back snapshots / {TRACED:?} paced; \
         {} CPUs, load average {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let baseline = rss();
    for n in sizes {
        bench(&bin, n, rounds, baseline)?;
    }
    println!("load average now {}", load_average());
    Ok(())
}
