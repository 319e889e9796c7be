//! `cargo xtask bench`: what leaktrace costs Go programs, measured side by side in one run.
//!
//! 1. Overhead. Three workloads, each run untraced, traced with default settings, traced
//!    with no probe (snapshots only: leaktrace's own work) and traced with exact allocation
//!    tracing, each traced window between two untraced ones (the traced modes' order rotating
//!    between repetitions): the
//!    fan-out HTTP service (testdata/go/fanout) under closed-loop load from wrk on 127.0.0.1
//!    (req/s, p99), a channel-heavy worker pipeline (testdata/go/pipeline, items/s: nearly
//!    every hand-off parks one goroutine and wakes another) and an allocation loop
//!    (testdata/go/allocloop, allocations/s); the last two drive themselves, and each of
//!    their windows runs an untraced twin beside the target, whose rate divides the target's
//!    (the host moves both alike). Each window begins with a 5 s lead-in under
//!    the same load: leaktrace starts 0.2 s into it, attaches to the busy program, as it
//!    would in production, and starts up (its first probe windows and, where they saturate
//!    the target, the sample of parks the scaling needs); the measured window begins once
//!    it has attached and the lead-in is over: a trace in progress, as on a service traced
//!    for hours. The lead-in's own ratio says what starting costs. Ratios are traced over
//!    the mean of the untraced windows either side, and leaktrace's CPU share is over the
//!    measured window.
//! 2. Collector throughput: goroutines ping-ponging at a controlled rate
//!    (testdata/go/parkrate) traced with the park and wake probes and the budget at its
//!    maximum; records offered, received and lost at each rate.
//! 3. Scale: 100,000 goroutines parked at once and 1,000,000 created and exiting over the
//!    run (testdata/go/manyparked); leaktrace's peak RSS and whether the report is right.
//!
//! Prints everything and writes BENCHMARKS.md. Figures, not pass/fail: machines are noisy.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::go;

/// How leaktrace is run in each mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Untraced,
    Default,
    /// Goroutine snapshots and no probe: what leaktrace's own work costs a busy machine,
    /// apart from the probes.
    Snapshots,
    Exact,
}

impl Mode {
    const TRACED: [Mode; 3] = [Mode::Default, Mode::Snapshots, Mode::Exact];

    fn name(self) -> &'static str {
        match self {
            Mode::Untraced => "untraced",
            Mode::Default => "default",
            Mode::Snapshots => "snapshots only",
            Mode::Exact => "exact alloc",
        }
    }
}

/// leaktrace's options in each traced mode. Exact allocation tracing probes every allocation
/// entry and is exempt from the budget; its cost is what the benchmark reports.
fn mode_args(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::Untraced | Mode::Default => &[],
        Mode::Snapshots => &["--probes", "none", "--alloc", "off"],
        Mode::Exact => &["--alloc", "exact"],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Http,
    Pipeline,
    AllocLoop,
}

impl Workload {
    const ALL: [Workload; 3] = [Workload::Http, Workload::Pipeline, Workload::AllocLoop];

    fn fixture(self) -> &'static str {
        match self {
            Workload::Http => "testdata/go/fanout",
            Workload::Pipeline => "testdata/go/pipeline",
            Workload::AllocLoop => "testdata/go/allocloop",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Workload::Http => {
                "Fan-out HTTP service (testdata/go/fanout), `wrk -t1 -c32` on 127.0.0.1"
            }
            Workload::Pipeline => {
                "Channel pipeline (testdata/go/pipeline): source, 2 stages x 4 workers, sink, unbuffered channels"
            }
            Workload::AllocLoop => {
                "Allocation loop (testdata/go/allocloop): 2 goroutines allocating 32-byte objects"
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Http => "HTTP service",
            Workload::Pipeline => "pipeline",
            Workload::AllocLoop => "alloc loop",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Workload::Http => "req/s",
            Workload::Pipeline => "items/s",
            Workload::AllocLoop => "allocs/s",
        }
    }

    /// Whether the workload drives itself, and so is measured beside an untraced twin: a copy
    /// of it started with it, whose rate over the same span divides the target's. The
    /// allocation loop alone moved by 0.81-1.08x of its median between 8 s windows of one
    /// untraced minute here, at a steady 175% of CPU and no steal time (the host's memory
    /// bandwidth); beside a twin, its rate over the twin's moved by 0.98-1.02x. The twin
    /// shares the CPUs with the target, so the target has about half of them, and what
    /// leaktrace's own CPU takes it takes from both: that part is not in the ratio, and is
    /// reported as leaktrace's CPU over the target's. The HTTP service is driven by wrk,
    /// which already takes the second CPU.
    fn twinned(self) -> bool {
        self != Workload::Http
    }

    /// The goal for default settings: the least throughput ratio.
    fn goal(self) -> f64 {
        match self {
            Workload::Http => 0.98,
            Workload::Pipeline => 0.95,
            Workload::AllocLoop => 0.97,
        }
    }
}

/// The goal for the HTTP service's p99 latency under default settings: the most ratio.
const GOAL_P99: f64 = 1.05;
/// leaktrace's CPU as a share of the target's CPU over the same window (issue: snapshots at memory speed).
const GOAL_CPU_SHARE: f64 = 0.015;

/// One measured window of a workload.
struct Sample {
    rate: f64,
    p99_ms: Option<f64>,
    /// The rate over the lead-in, in which leaktrace started and attached.
    attach_rate: f64,
    /// The untraced twin's rates over the same spans, for a workload that drives itself
    /// ([`Workload::twinned`]).
    twin: Option<Twin>,
    tracer: Option<Tracer>,
}

/// An untraced copy of the target, run beside it: its rate over the measured window and
/// over the lead-in.
#[derive(Clone, Copy)]
struct Twin {
    rate: f64,
    attach_rate: f64,
}

impl Sample {
    /// The rate the ratios compare: the target's over its twin's, where it has one.
    fn relative(&self) -> f64 {
        self.rate / self.twin.map_or(1.0, |t| t.rate)
    }

    /// The same over the lead-in.
    fn relative_attach(&self) -> f64 {
        self.attach_rate / self.twin.map_or(1.0, |t| t.attach_rate)
    }
}

/// What leaktrace did and cost in one traced run.
struct Tracer {
    cpu_seconds: f64,
    peak_rss_kib: u64,
    observed_seconds: f64,
    attached: Vec<String>,
    hits: BTreeMap<String, u64>,
    lost: u64,
    shed: Vec<String>,
    /// What a hit cost on a single-stepped instruction and on an emulated one.
    hit_cost_us: f64,
    hit_cost_push_us: f64,
    /// The probes' hits at what each cost, over the trace: a fraction of a CPU.
    hit_cpu: f64,
    report: serde_json::Value,
    /// leaktrace's CPU over the target's CPU, both over the measured window (None where the
    /// window could not be read).
    cpu_share: Option<f64>,
    /// leaktrace's CPU from its start to the measured window's: attaching and its first
    /// snapshots.
    attach_cpu_seconds: Option<f64>,
}

impl Tracer {
    fn hits_per_second(&self) -> f64 {
        self.hits.values().sum::<u64>() as f64 / self.observed_seconds.max(1e-3)
    }
}

// ---------------------------------------------------------------------------------------
// Running things

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn interrupt(child: &Child) {
    // SAFETY: signalling our own child.
    unsafe { libc_kill(child.id() as i32, 2) };
}

/// CPU seconds (user + system) and peak RSS (KiB) of a live process, from /proc.
fn proc_cpu_and_rss(pid: u32) -> Option<(f64, u64)> {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat
        .rsplit(')')
        .next()?
        .split_whitespace()
        .collect::<Vec<_>>();
    let cpu = (rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?) / ticks;
    let rss = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    Some((cpu, rss))
}

/// A fresh output directory for one leaktrace run.
fn out_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leaktrace-bench-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// `leaktrace record -p PID ARGS -o DIR`, stderr kept in DIR/stderr.
fn start_leaktrace(leaktrace: &Path, pid: u32, args: &[&str], dir: &Path) -> anyhow::Result<Child> {
    fs::create_dir_all(dir)?;
    Command::new(leaktrace)
        .args(["record", "-p", &pid.to_string()])
        .args(args)
        .arg("-o")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("stderr"))?)
        .spawn()
        .context("starting leaktrace")
}

/// Follows leaktrace until it exits, interrupting it (Ctrl-C) at `stop_at` if given; its
/// CPU time and peak RSS are the last read before it exited, and report.json is read.
fn finish_leaktrace(mut lt: Child, stop_at: Option<Instant>, dir: &Path) -> anyhow::Result<Tracer> {
    let (mut cpu, mut rss) = (0.0, 0);
    let mut interrupted = false;
    let status = loop {
        if let Some(s) = lt.try_wait()? {
            break s;
        }
        if let Some((c, r)) = proc_cpu_and_rss(lt.id()) {
            (cpu, rss) = (c, r);
        }
        // Interrupted only once attached: before that, Ctrl-C would kill it.
        if !interrupted && stop_at.is_some_and(|t| Instant::now() >= t) && says_attached(dir) {
            interrupt(&lt);
            interrupted = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        bail!(
            "leaktrace failed ({status}):\n{}",
            fs::read_to_string(dir.join("stderr")).unwrap_or_default()
        );
    }
    let report: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.join("report.json")).context("reading report.json")?,
    )?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let p = &report["probes"];
    Ok(Tracer {
        cpu_seconds: cpu,
        peak_rss_kib: rss,
        observed_seconds: report["observed_seconds"].as_f64().unwrap_or(0.0),
        attached: strings(&p["attached"]),
        hits: p["hits"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default(),
        lost: p["lost_records"].as_u64().unwrap_or(0),
        shed: strings(&p["shed"]),
        hit_cost_us: p["hit_cost_us"].as_f64().unwrap_or(0.0),
        hit_cost_push_us: p["hit_cost_push_us"].as_f64().unwrap_or(0.0),
        hit_cpu: p["hits"].as_object().map_or(0.0, |hits| {
            hits.iter()
                .map(|(f, n)| {
                    let us = p["hit_cost_us_by_function"][f]
                        .as_f64()
                        .or(p["hit_cost_us"].as_f64())
                        .unwrap_or(0.0);
                    n.as_u64().unwrap_or(0) as f64 * us * 1e-6
                })
                .sum::<f64>()
                / report["observed_seconds"].as_f64().unwrap_or(1.0).max(1e-3)
        }),
        report,
        cpu_share: None,
        attach_cpu_seconds: None,
    })
}

/// CPU seconds of leaktrace and of its target at one moment, for [`CpuWindow::share`].
struct CpuWindow {
    leaktrace: f64,
    target: f64,
}

impl CpuWindow {
    fn now(leaktrace: u32, target: u32) -> Option<Self> {
        Some(Self {
            leaktrace: proc_cpu_and_rss(leaktrace)?.0,
            target: proc_cpu_and_rss(target)?.0,
        })
    }

    /// leaktrace's CPU as a share of the target's between `self` and now: unlike throughput,
    /// a figure that a noisy machine hardly moves.
    fn share(&self, lt: &Child, target: u32) -> Option<f64> {
        let end = Self::now(lt.id(), target)?;
        let target_cpu = end.target - self.target;
        (target_cpu > 0.0).then(|| (end.leaktrace - self.leaktrace) / target_cpu)
    }
}

/// Progress lines of a fixture ("NAME ELAPSED_NS COUNT" on stdout), with when each arrived.
type Progress = Arc<Mutex<Vec<(Instant, u64, u64)>>>;

/// A started fixture: the HTTP service's address, or the progress it prints.
struct Running {
    child: Child,
    addr: String,
    progress: Progress,
    stderr: Option<std::io::Lines<BufReader<std::process::ChildStderr>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a fixture and waits for its first stderr line: "ready", or the HTTP service's
/// "listening on ADDR".
fn start_fixture(bin: &Path, args: &[&str]) -> anyhow::Result<Running> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = stderr
        .next()
        .ok_or_else(|| anyhow!("{} printed nothing", bin.display()))??;
    let addr = first.trim().rsplit(' ').next().unwrap_or("").to_string();
    let progress: Progress = Arc::default();
    let stdout = child.stdout.take().unwrap();
    let sink = progress.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut f = line.split_whitespace().skip(1);
            if let (Some(Ok(ns)), Some(Ok(n))) =
                (f.next().map(str::parse), f.next().map(str::parse))
            {
                sink.lock().unwrap().push((Instant::now(), ns, n));
            }
        }
    });
    Ok(Running {
        child,
        addr,
        progress,
        stderr: Some(stderr),
    })
}

/// The fixture's rate over the progress lines that arrived between `from` and `to`, by its
/// own clock.
fn progress_rate(p: &Progress, from: Instant, to: Instant) -> anyhow::Result<f64> {
    let v = p.lock().unwrap();
    let inside: Vec<_> = v.iter().filter(|s| s.0 >= from && s.0 <= to).collect();
    let (Some(a), Some(b)) = (inside.first(), inside.last()) else {
        bail!("no progress lines in the window");
    };
    if b.1 <= a.1 {
        bail!("fewer than two progress lines in the window");
    }
    Ok((b.2 - a.2) as f64 / ((b.1 - a.1) as f64 / 1e9))
}

/// Runs wrk against `addr` for `seconds`; requests/s and the p99 latency in ms.
fn wrk(addr: &str, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c32",
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://{addr}/search?q=bench"),
        ])
        .output()
        .context("running wrk (scripts/setup.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| anyhow!("no 99% latency in wrk's output:\n{text}"))?;
    Ok((rps, parse_latency(&p99)?))
}

/// wrk prints latencies as `812.00us`, `1.52ms` or `2.01s`.
fn parse_latency(s: &str) -> anyhow::Result<f64> {
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e3)
    } else {
        bail!("latency {s:?}")
    };
    Ok(num.parse::<f64>()? * scale)
}

/// How long the load runs before the measured window: leaktrace starts [`ATTACH_AFTER`]
/// into it and attaches under load, as it would to a busy service in production, then
/// starts up. On the HTTP service that is attaching (0.3-0.6 s), a first probe window that
/// saturates the target, and 1-3 s later the one window that takes the sample of parks
/// the scaling needs (40-120 ms in place); after it, windows come about once a minute. With
/// a 2 s lead-in the sample window fell in the measured 8 s, where its one-off slowdown
/// moved the p99 by a few percent.
const LEAD_IN: Duration = Duration::from_secs(5);
const ATTACH_AFTER: Duration = Duration::from_millis(200);

/// One measured window of `workload` in `mode`: warmed up for a second, then a lead-in of
/// [`LEAD_IN`] under load in which leaktrace attaches and starts up, then `seconds` measured
/// from the moment both are over: a trace in progress, as on a service traced for hours.
/// The lead-in's own rate is kept too: what starting costs.
fn run(
    workload: Workload,
    bin: &Path,
    mode: Mode,
    leaktrace: &Path,
    seconds: u64,
    tag: &str,
) -> anyhow::Result<Sample> {
    let fx = start_fixture(bin, &[])?;
    let twin = match workload.twinned() {
        true => Some(start_fixture(bin, &[])?),
        false => None,
    };
    let http = workload == Workload::Http;
    if http {
        wrk(&fx.addr, 1)?;
    } else {
        std::thread::sleep(Duration::from_secs(1));
    }
    let load = |d: Duration| {
        http.then(|| {
            let addr = fx.addr.clone();
            std::thread::spawn(move || wrk(&addr, d.as_secs()))
        })
    };
    // The lead-in: the load runs while leaktrace starts.
    let lead_t0 = Instant::now();
    let lead = load(LEAD_IN);
    let tracer = if mode == Mode::Untraced {
        None
    } else {
        std::thread::sleep(ATTACH_AFTER);
        let dir = out_dir(tag);
        let args = [&["-d", "1h", "--min-age", "2s"][..], mode_args(mode)].concat();
        let lt = start_leaktrace(leaktrace, fx.child.id(), &args, &dir)?;
        if !attached(&dir, Duration::from_secs(30)) {
            bail!(
                "leaktrace did not attach within 30 s: {:?}",
                fs::read_to_string(dir.join("stderr"))
            );
        }
        Some((lt, dir))
    };
    let attach = finish_load(lead, &fx, twin.as_ref(), lead_t0, LEAD_IN)?;
    // The measured window, leaktrace's CPU and the target's over exactly its span.
    let t0 = Instant::now();
    let window = Duration::from_secs(seconds);
    let cpu = tracer
        .as_ref()
        .and_then(|(lt, _)| CpuWindow::now(lt.id(), fx.child.id()));
    let measured = finish_load(load(window), &fx, twin.as_ref(), t0, window)?;
    let tracer = match tracer {
        Some((lt, dir)) => {
            let share = cpu.as_ref().and_then(|w| w.share(&lt, fx.child.id()));
            let attach_cpu = cpu.map(|w| w.leaktrace);
            let mut t = finish_leaktrace(lt, Some(Instant::now()), &dir)?;
            t.cpu_share = share;
            t.attach_cpu_seconds = attach_cpu;
            Some(t)
        }
        None => None,
    };
    drop(fx);
    Ok(Sample {
        rate: measured.rate,
        p99_ms: measured.p99_ms,
        attach_rate: attach.rate,
        twin: match (measured.twin_rate, attach.twin_rate) {
            (Some(rate), Some(attach_rate)) => Some(Twin { rate, attach_rate }),
            _ => None,
        },
        tracer,
    })
}

/// leaktrace said (in DIR/stderr) that it attached.
fn says_attached(dir: &Path) -> bool {
    fs::read_to_string(dir.join("stderr")).is_ok_and(|e| e.contains("attached to PID"))
}

/// Waits (up to `limit`) for leaktrace to say it attached.
fn attached(dir: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !says_attached(dir) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// What one load window measured.
struct Load {
    rate: f64,
    p99_ms: Option<f64>,
    twin_rate: Option<f64>,
}

/// The rate (and, under wrk, the p99) of a load window begun at `t0`: wrk's own figures, or
/// the fixture's progress over `length`, and its twin's over the same span.
fn finish_load(
    wrk: Option<std::thread::JoinHandle<anyhow::Result<(f64, f64)>>>,
    fx: &Running,
    twin: Option<&Running>,
    t0: Instant,
    length: Duration,
) -> anyhow::Result<Load> {
    match wrk {
        Some(load) => {
            let (rps, p99) = load.join().map_err(|_| anyhow!("wrk thread panicked"))??;
            Ok(Load {
                rate: rps,
                p99_ms: Some(p99),
                twin_rate: None,
            })
        }
        None => {
            std::thread::sleep(length.saturating_sub(t0.elapsed()));
            let end = Instant::now();
            Ok(Load {
                rate: progress_rate(&fx.progress, t0, end)?,
                p99_ms: None,
                twin_rate: twin
                    .map(|t| progress_rate(&t.progress, t0, end))
                    .transpose()?,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// Figures

/// Median and range.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Option<Spread> {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Spread {
            median: *v.get(v.len() / 2)?,
            min: *v.first()?,
            max: *v.last()?,
        })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} ({:.3}-{:.3})", self.median, self.min, self.max)
    }
}

fn holds(ok: bool) -> &'static str {
    if ok { "holds" } else { "does not hold" }
}

/// One repetition of a workload: an untraced window before each traced mode and one after
/// the last, so that every traced window is compared with the untraced windows on either
/// side of it. The machine drifts by more than leaktrace costs between windows a minute
/// apart (untraced throughput alone moved by a quarter between the repetitions of one run).
struct Rep {
    /// The untraced windows, in the order they ran.
    untraced: Vec<Sample>,
    /// Each traced mode's window and the index in `untraced` of the window just before it.
    traced: BTreeMap<Mode, (Sample, usize)>,
}

impl Rep {
    fn get(&self, mode: Mode) -> Option<&Sample> {
        self.traced.get(&mode).map(|(s, _)| s)
    }

    /// The untraced windows either side of `mode`'s.
    fn neighbours(&self, mode: Mode) -> Option<[&Sample; 2]> {
        let (_, i) = self.traced.get(&mode)?;
        Some([self.untraced.get(*i)?, self.untraced.get(*i + 1)?])
    }

    /// `mode`'s throughput over the mean of its two untraced neighbours', each over its
    /// twin's where there is one.
    fn ratio(&self, mode: Mode) -> Option<f64> {
        let [a, b] = self.neighbours(mode)?;
        Some(self.get(mode)?.relative() / ((a.relative() + b.relative()) / 2.0))
    }

    /// The same without the twins: the target's own rate over its neighbours'.
    fn alone_ratio(&self, mode: Mode) -> Option<f64> {
        let [a, b] = self.neighbours(mode)?;
        Some(self.get(mode)?.rate / ((a.rate + b.rate) / 2.0))
    }

    /// `mode`'s rate over the lead-in in which leaktrace started and attached, over the mean
    /// of its two untraced neighbours' lead-ins (each over its twin's).
    fn attach_ratio(&self, mode: Mode) -> Option<f64> {
        let [a, b] = self.neighbours(mode)?;
        Some(
            self.get(mode)?.relative_attach() / ((a.relative_attach() + b.relative_attach()) / 2.0),
        )
    }

    /// `mode`'s p99 over the mean of its two untraced neighbours'.
    fn p99_ratio(&self, mode: Mode) -> Option<f64> {
        let [a, b] = self.neighbours(mode)?;
        Some(self.get(mode)?.p99_ms? / ((a.p99_ms? + b.p99_ms?) / 2.0))
    }

    /// Mean, lowest and highest untraced throughput of the repetition.
    fn untraced_rates(&self) -> (f64, f64, f64) {
        let rates: Vec<f64> = self.untraced.iter().map(|s| s.rate).collect();
        let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        (mean, min, max)
    }

    /// Mean untraced p99 of the repetition.
    fn untraced_p99(&self) -> Option<f64> {
        let p: Vec<f64> = self.untraced.iter().filter_map(|s| s.p99_ms).collect();
        (!p.is_empty()).then(|| p.iter().sum::<f64>() / p.len() as f64)
    }
}

/// Every repetition of one workload.
struct Results {
    workload: Workload,
    reps: Vec<Rep>,
}

impl Results {
    fn ratios(&self, mode: Mode, p99: bool) -> Vec<f64> {
        self.reps
            .iter()
            .filter_map(|r| {
                if p99 {
                    r.p99_ratio(mode)
                } else {
                    r.ratio(mode)
                }
            })
            .collect()
    }

    fn alone_ratios(&self, mode: Mode) -> Vec<f64> {
        self.reps
            .iter()
            .filter_map(|r| r.alone_ratio(mode))
            .collect()
    }

    fn attach_ratios(&self, mode: Mode) -> Vec<f64> {
        self.reps
            .iter()
            .filter_map(|r| r.attach_ratio(mode))
            .collect()
    }

    /// leaktrace's CPU over the target's, per repetition of `mode`.
    fn cpu_shares(&self, mode: Mode) -> Vec<f64> {
        self.tracers(mode).filter_map(|t| t.cpu_share).collect()
    }

    fn tracers(&self, mode: Mode) -> impl Iterator<Item = &Tracer> {
        self.reps
            .iter()
            .filter_map(move |r| r.get(mode)?.tracer.as_ref())
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn overhead_section(md: &mut String, res: &Results, seconds: u64) {
    let w = res.workload;
    let _ = writeln!(md, "### {}\n", w.title());
    let _ = writeln!(
        md,
        "Each traced window's ratio is over the mean of the untraced windows just before and \
         just after it (each repetition runs untraced, a traced mode, untraced, the next traced \
         mode, ..., untraced; the traced modes' order rotates between repetitions).\n"
    );
    if w.twinned() {
        let _ = writeln!(
            md,
            "Every window runs two copies of the program side by side, one of them the target: \
             the rates in the table are the target's, the ratios the target's rate over its \
             untraced twin's, over the same over the untraced windows either side. The host \
             moves both alike (the allocation loop alone moved by 0.81-1.08x between 8 s \
             windows of one untraced minute; over its twin, by 0.98-1.02x). The two share the \
             CPUs, so leaktrace's own CPU slows both and is not in the ratio: it is the CPU \
             share below, over the target's CPU, about half the machine.\n"
        );
    }
    reps_table(md, res);
    for mode in Mode::TRACED {
        mode_summary(md, res, mode, seconds);
    }
    let _ = writeln!(md);
}

/// The table of every repetition: the untraced windows' rates, each traced mode's rate and
/// ratio, and on the HTTP service the p99s.
fn reps_table(md: &mut String, res: &Results) {
    let w = res.workload;
    let http = w == Workload::Http;
    let _ = writeln!(
        md,
        "| rep | untraced {u}: mean (min-max) |{}{}",
        Mode::TRACED
            .iter()
            .map(|m| format!(" {} {} | ratio |", m.name(), w.unit()))
            .collect::<String>(),
        if http {
            " p99 ms: untraced (mean) / default / snapshots only / exact alloc |"
        } else {
            ""
        },
        u = w.unit()
    );
    let _ = writeln!(
        md,
        "|---|---|{}{}",
        "---|---|".repeat(Mode::TRACED.len()),
        if http { "---|" } else { "" }
    );
    let ms = |p: Option<f64>| p.map_or("-".into(), |p| format!("{p:.2}"));
    for (i, r) in res.reps.iter().enumerate() {
        let cell = |m: Mode| match (r.get(m), r.ratio(m)) {
            (Some(s), Some(ratio)) => format!("{:.0} | {ratio:.3}", s.rate),
            _ => "- | -".to_string(),
        };
        let p99 = if http {
            let traced = Mode::TRACED
                .iter()
                .map(|m| ms(r.get(*m).and_then(|s| s.p99_ms)));
            format!(
                " {} |",
                std::iter::once(ms(r.untraced_p99()))
                    .chain(traced)
                    .collect::<Vec<_>>()
                    .join(" / ")
            )
        } else {
            String::new()
        };
        let (mean, min, max) = r.untraced_rates();
        let _ = writeln!(
            md,
            "| {i} | {mean:.0} ({min:.0}-{max:.0}) |{}{p99}",
            Mode::TRACED
                .iter()
                .map(|m| format!(" {} |", cell(*m)))
                .collect::<String>()
        );
    }
    let _ = writeln!(md);
}

/// What `mode` cost the workload over the repetitions: its ratios against the goals, its
/// probe hits, leaktrace's CPU and memory, and what the first run placed and shed.
fn mode_summary(md: &mut String, res: &Results, mode: Mode, seconds: u64) {
    let w = res.workload;
    let http = w == Workload::Http;
    let Some(r) = Spread::of(&res.ratios(mode, false)) else {
        return;
    };
    let goal = if mode == Mode::Default {
        format!("; goal >= {:.2}: {}", w.goal(), holds(r.median >= w.goal()))
    } else {
        String::new()
    };
    let _ = writeln!(md, "- **{}**: throughput ratio {r}{goal}", mode.name());
    if w.twinned()
        && let Some(a) = Spread::of(&res.alone_ratios(mode))
    {
        let _ = writeln!(
            md,
            "  - the target's own rate over its untraced neighbours', without the twins: {a}"
        );
    }
    if let Some(a) = Spread::of(&res.attach_ratios(mode)) {
        let _ = writeln!(
            md,
            "  - while starting (the {} s lead-in leaktrace starts {} ms into: attach, first windows, the park sample): throughput ratio {a}",
            LEAD_IN.as_secs(),
            ATTACH_AFTER.as_millis()
        );
    }
    if http && let Some(p) = Spread::of(&res.ratios(mode, true)) {
        let goal = if mode == Mode::Default {
            format!("; goal <= {GOAL_P99:.2}: {}", holds(p.median <= GOAL_P99))
        } else {
            String::new()
        };
        let _ = writeln!(md, "  - p99 ratio {p}{goal}");
    }
    let ts: Vec<&Tracer> = res.tracers(mode).collect();
    if ts.is_empty() {
        return;
    }
    let hits = Spread::of(&ts.iter().map(|t| t.hits_per_second()).collect::<Vec<_>>());
    let cost = Spread::of(&ts.iter().map(|t| t.hit_cost_us).collect::<Vec<_>>());
    let push = Spread::of(&ts.iter().map(|t| t.hit_cost_push_us).collect::<Vec<_>>());
    let hit_cpu = Spread::of(&ts.iter().map(|t| t.hit_cpu).collect::<Vec<_>>());
    let cpu = ts.iter().map(|t| t.cpu_seconds).fold(0.0, f64::max);
    let attach_cpu = Spread::of(
        &ts.iter()
            .filter_map(|t| t.attach_cpu_seconds)
            .collect::<Vec<_>>(),
    );
    let rss = ts.iter().map(|t| t.peak_rss_kib).max().unwrap_or(0);
    if let (Some(h), Some(c), Some(e), Some(x)) = (hits, cost, push, hit_cpu) {
        let _ = writeln!(
            md,
            "  - probe hits {:.0}/s (median of runs; {:.0}-{:.0}) at a measured {:.1} us per hit on a function's entry ({:.1}-{:.1}), {:.1} us on a return or a site ({:.1}-{:.1}): an estimated {:.2}% of a CPU ({:.2}-{:.2}%)",
            h.median,
            h.min,
            h.max,
            e.median,
            e.min,
            e.max,
            c.median,
            c.min,
            c.max,
            x.median * 100.0,
            x.min * 100.0,
            x.max * 100.0,
        );
    }
    let _ = writeln!(
        md,
        "  - leaktrace itself: at most {cpu:.2} s of CPU per run (the lead-in and the {seconds} s window), peak RSS {:.1} MiB",
        mib(rss)
    );
    if let Some(a) = attach_cpu {
        let _ = writeln!(
            md,
            "  - of which starting (the lead-in), up to the measured window: {:.0} ms ({:.0}-{:.0})",
            a.median * 1e3,
            a.min * 1e3,
            a.max * 1e3
        );
    }
    if let Some(s) = Spread::of(&res.cpu_shares(mode)) {
        let goal = if mode == Mode::Default {
            format!(
                "; goal <= {:.1}%: {}",
                GOAL_CPU_SHARE * 100.0,
                holds(s.median <= GOAL_CPU_SHARE)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "  - leaktrace's CPU as a share of the target's over the measured window: {:.2}% ({:.2}-{:.2}%){goal}",
            s.median * 100.0,
            s.min * 100.0,
            s.max * 100.0
        );
    }
    if mode == Mode::Exact
        && ts
            .iter()
            .all(|t| t.hits.get("runtime.mallocgc").copied().unwrap_or(0) == 0)
    {
        let _ = writeln!(
            md,
            "  - **the alloc probe never fired: not placed or shed at once, so this is not a measure of exact allocation tracing**"
        );
    }
    if let Some(t) = ts.first() {
        let _ = writeln!(
            md,
            "  - first run: probes left at the end: {}; hits {}",
            if t.attached.is_empty() {
                "none".to_string()
            } else {
                t.attached.join(", ")
            },
            serde_json::to_string(&t.hits).unwrap_or_default()
        );
        for s in &t.shed {
            let _ = writeln!(md, "  - budget: {s}");
        }
    }
    if http {
        let found = ts
            .iter()
            .filter(|t| {
                t.report["leaks"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|g| g["site"]["function"] == "main.backend"))
            })
            .count();
        let _ = writeln!(
            md,
            "  - the leak group (main.backend, chan send) found in {found} of {} runs",
            ts.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Collector throughput

struct Step {
    asked: u64,
    achieved: f64,
    seconds: f64,
    tracer: Tracer,
}

/// Goroutines ping-ponging at `asked` exchanges/s (0: as fast as they can), traced with the
/// park and wake probes for `seconds` with the budget at its maximum.
fn throughput_step(bin: &Path, leaktrace: &Path, asked: u64, seconds: u64) -> anyhow::Result<Step> {
    let fx = start_fixture(bin, &["-pairs", "8", "-rate", &asked.to_string()])?;
    std::thread::sleep(Duration::from_millis(500));
    let dir = out_dir(&format!("parkrate-{asked}"));
    let t0 = Instant::now();
    let lt = start_leaktrace(
        leaktrace,
        fx.child.id(),
        &[
            "-d",
            &format!("{seconds}s"),
            "--probes",
            "park,wake",
            // Only the records under test: no allocation sampler beside them.
            "--alloc",
            "off",
            "--max-overhead",
            "100",
        ],
        &dir,
    )?;
    let tracer = finish_leaktrace(lt, None, &dir)?;
    let achieved = progress_rate(&fx.progress, t0, Instant::now()).unwrap_or(0.0);
    Ok(Step {
        asked,
        achieved,
        seconds: seconds as f64,
        tracer,
    })
}

fn throughput_section(md: &mut String, steps: &[Step]) {
    let _ = writeln!(
        md,
        "## Collector throughput\n\n8 pairs of goroutines exchange values over unbuffered channels (testdata/go/parkrate; each exchange parks two goroutines and wakes two), traced with `--probes park,wake --alloc off --max-overhead 100` for a fixed window. Offered = records the probes emitted a second (their hits over the window), lost = records dropped because the ring buffer was full; the target never waits for leaktrace.\n"
    );
    let _ = writeln!(
        md,
        "| asked exchanges/s | achieved exchanges/s | offered records/s | received records/s | lost | lost % | probes shed |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let mut knee: Option<f64> = None;
    let mut first_loss: Option<f64> = None;
    for s in steps {
        let hits: u64 = s.tracer.hits.values().sum();
        let offered = hits as f64 / s.seconds;
        let received = hits.saturating_sub(s.tracer.lost) as f64 / s.seconds;
        let shed = !s.tracer.shed.is_empty();
        if s.tracer.lost == 0 && !shed {
            knee = Some(knee.map_or(offered, |k| k.max(offered)));
        }
        if s.tracer.lost > 0 && first_loss.is_none() {
            first_loss = Some(offered);
        }
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {} |",
            if s.asked == 0 {
                "unpaced".to_string()
            } else {
                s.asked.to_string()
            },
            s.achieved,
            offered,
            received,
            s.tracer.lost,
            s.tracer.lost as f64 * 100.0 / hits.max(1) as f64,
            if shed {
                // "the probes fired N times/s, an estimated ...: detached P": the rate
                // that made the budget remove them, and which.
                s.tracer
                    .shed
                    .iter()
                    .map(|m| {
                        let rate = m.split(',').next().unwrap_or(m);
                        let what = m.rsplit(": ").next().unwrap_or(m);
                        format!("{what} ({})", rate.trim_start_matches("the probes "))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            } else {
                "no".into()
            }
        );
    }
    let _ = writeln!(md);
    match knee {
        Some(k) => {
            let _ = writeln!(
                md,
                "- Highest sustained rate with no record lost and no probe shed: {k:.0} records/s."
            );
        }
        None => {
            let _ = writeln!(md, "- Every step lost records or shed its probes.");
        }
    }
    match first_loss {
        Some(r) => {
            let _ = writeln!(md, "- Records were first lost at {r:.0} records/s offered.");
        }
        None => {
            let _ = writeln!(
                md,
                "- No record was lost at any step: beyond the last rate the budget (100% of a CPU at the measured cost per hit) removes the probes before the collector falls behind."
            );
        }
    }
    let _ = writeln!(md);
}

// ---------------------------------------------------------------------------------------
// Scale

struct ScaleRun {
    churn: u64,
    churned: bool,
    tracer: Tracer,
}

/// 100,000 goroutines blocked for good, each on its own channel, then `churn` goroutines
/// created and exiting over the run; leaktrace attached after they are parked, its probes
/// allowed the whole budget so that they see the churn.
fn scale_run(bin: &Path, leaktrace: &Path, churn: u64, seconds: u64) -> anyhow::Result<ScaleRun> {
    let churn_s = churn.to_string();
    let mut fx = start_fixture(
        bin,
        &[
            "-n",
            "100000",
            "-own-channel",
            "-no-worker",
            "-churn",
            &churn_s,
            "-churn-rate",
            "40000",
            "-churn-delay",
            "3s",
        ],
    )?;
    let dir = out_dir(&format!("scale-{churn}"));
    let lt = start_leaktrace(
        leaktrace,
        fx.child.id(),
        &[
            "-d",
            &format!("{seconds}s"),
            "--min-age",
            "3s",
            "--max-overhead",
            "100",
        ],
        &dir,
    )?;
    let tracer = finish_leaktrace(lt, None, &dir)?;
    // "churned N" arrives on stderr once the churn is over; it is over before leaktrace
    // stops unless the machine was too slow.
    let stderr = fx.stderr.take().unwrap();
    let _ = fx.child.kill();
    let churned = churn == 0
        || stderr
            .map_while(Result::ok)
            .any(|l| l.starts_with("churned"));
    Ok(ScaleRun {
        churn,
        churned,
        tracer,
    })
}

fn scale_section(md: &mut String, runs: &[ScaleRun]) {
    let _ = writeln!(
        md,
        "## Scale\n\n100,000 goroutines each blocked sending on a channel of its own (testdata/go/manyparked -own-channel), leaktrace attached once they are parked (`--min-age 3s --max-overhead 100`, so that the create and exit probes see the churn), and short-lived goroutines created and exiting at 40,000/s from 3 s in.\n"
    );
    let _ = writeln!(
        md,
        "| goroutines churned | churn done in the run | leak group (main.leak, chan send) | created / exited seen by probes | records lost | leaktrace CPU s | peak RSS MiB | snapshots |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in runs {
        let t = &r.tracer;
        let group = t.report["leaks"]
            .as_array()
            .and_then(|l| l.iter().find(|g| g["site"]["function"] == "main.leak"))
            .map_or("not found".to_string(), |g| {
                format!(
                    "{} goroutines, {}",
                    g["count"],
                    g["confidence"].as_str().unwrap_or("")
                )
            });
        let _ = writeln!(
            md,
            "| {} | {} | {group} | {} / {} | {} | {:.2} | {:.1} | {} |",
            r.churn,
            if r.churned { "yes" } else { "no" },
            t.report["goroutines_created"],
            t.report["goroutines_exited"],
            t.lost,
            t.cpu_seconds,
            mib(t.peak_rss_kib),
            t.report["snapshots"]
        );
    }
    let _ = writeln!(md);
    for r in runs {
        for s in &r.tracer.shed {
            let _ = writeln!(md, "- budget ({} churned): {s}", r.churn);
        }
    }
    if let [quiet, churned] = runs {
        let _ = writeln!(
            md,
            "- leaktrace's peak RSS with {} goroutines churned: {:.1} MiB, against {:.1} MiB with none: it follows the goroutines alive, not those ever created.",
            churned.churn,
            mib(churned.tracer.peak_rss_kib),
            mib(quiet.tracer.peak_rss_kib)
        );
    }
    if runs.iter().any(|r| r.tracer.lost > 0) {
        let _ = writeln!(
            md,
            "- Records are lost here, and not in the collector throughput runs at the same rate: the collector drains the ring buffer (4 MiB, about 75,000 records) on the thread that walks the goroutines, and a walk of 100,000 takes longer than the buffer lasts."
        );
    }
    let _ = writeln!(md);
}

// ---------------------------------------------------------------------------------------

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    format!("{cores} vCPU ({cpu}), {mem} GiB, Linux {}", kernel.trim())
}

/// The 1-minute load average: how busy the machine was apart from the benchmark.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

/// One repetition: untraced, then each traced mode followed by another untraced window, the
/// traced modes rotated by `rep` so that no mode always runs first.
fn run_rep(
    workload: Workload,
    bin: &Path,
    leaktrace: &Path,
    seconds: u64,
    rep: usize,
) -> anyhow::Result<Rep> {
    let mut r = Rep {
        untraced: Vec::new(),
        traced: BTreeMap::new(),
    };
    let window = |mode: Mode, k: usize| {
        let tag = format!("{workload:?}-{rep}-{mode:?}-{k}");
        let s = run(workload, bin, mode, leaktrace, seconds, &tag);
        std::thread::sleep(Duration::from_millis(300));
        s
    };
    r.untraced.push(window(Mode::Untraced, 0)?);
    for k in 0..Mode::TRACED.len() {
        let mode = Mode::TRACED[(k + rep) % Mode::TRACED.len()];
        let s = window(mode, k)?;
        r.traced.insert(mode, (s, r.untraced.len() - 1));
        r.untraced.push(window(Mode::Untraced, k + 1)?);
    }
    Ok(r)
}

pub fn bench(seconds: u64, reps: usize, note: Option<&str>) -> anyhow::Result<()> {
    let root = go::repo_root();
    let started = Instant::now();
    println!("==> building leaktrace (release) and the benchmark programs");
    let leaktrace = go::build_leaktrace_release()?;
    let mut bins = BTreeMap::new();
    let mut version = String::new();
    for src in [
        "testdata/go/fanout",
        "testdata/go/pipeline",
        "testdata/go/allocloop",
        "testdata/go/parkrate",
        "testdata/go/manyparked",
    ] {
        let (bin, v) = go::build_newest(src, "bench")?;
        bins.insert(src, bin);
        version = v;
    }
    let load_before = load_average();

    let mut results = Vec::new();
    for workload in Workload::ALL {
        let bin = &bins[workload.fixture()];
        let mut res = Results {
            workload,
            reps: Vec::new(),
        };
        for rep in 0..reps {
            let r = run_rep(workload, bin, &leaktrace, seconds, rep)?;
            let (mean, _, _) = r.untraced_rates();
            println!(
                "{workload:?} rep {rep}: untraced {mean:.0} {} (mean of {}) | {}",
                workload.unit(),
                r.untraced.len(),
                Mode::TRACED
                    .iter()
                    .filter_map(|m| Some(format!(
                        "{} {:.0} {} (x{:.3})",
                        m.name(),
                        r.get(*m)?.rate,
                        workload.unit(),
                        r.ratio(*m)?
                    )))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            res.reps.push(r);
        }
        results.push(res);
    }

    println!("==> collector throughput");
    let mut steps = Vec::new();
    for asked in [2_500, 5_000, 10_000, 15_000, 20_000, 25_000, 0] {
        let s = throughput_step(&bins["testdata/go/parkrate"], &leaktrace, asked, 3)?;
        println!(
            "asked {asked} exchanges/s: achieved {:.0}, hits {:?}, lost {}",
            s.achieved, s.tracer.hits, s.tracer.lost
        );
        steps.push(s);
    }

    println!("==> scale: 100,000 parked, 1,000,000 created and exiting");
    let mut scale = Vec::new();
    for (churn, secs) in [(0, 8), (1_000_000, 30)] {
        let r = scale_run(&bins["testdata/go/manyparked"], &leaktrace, churn, secs)?;
        println!(
            "churn {churn}: peak RSS {:.1} MiB, lost {}",
            mib(r.tracer.peak_rss_kib),
            r.tracer.lost
        );
        scale.push(r);
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Benchmarks\n\nWritten by `cargo xtask bench` (`./x bench`): every figure from one run, traced and untraced side by side: each traced window runs between two untraced ones, the traced modes' order rotating between repetitions. Ratios are a traced window over the mean of the untraced windows either side of it: median (min-max) over the repetitions.\n"
    );
    let _ = writeln!(
        md,
        "Machine: {}. Go {version}. Load average before the run {load_before}, after {}. {seconds} s per measured window, {reps} repetitions; {:.0} s in all.\n",
        machine(),
        load_average(),
        started.elapsed().as_secs_f64()
    );
    if let Some(n) = note {
        let _ = writeln!(md, "{n}\n");
    }
    let _ = writeln!(
        md,
        "Modes: **default** = `leaktrace record -p PID` with default settings (`--max-overhead 1`); **snapshots only** = `--probes none --alloc off` (leaktrace's own work: start-up, goroutine snapshots, heap profile reads); **exact alloc** = `{}` (every allocation probed, exempt from the budget by design: its cost is reported, not limited).\n",
        mode_args(Mode::Exact).join(" ")
    );
    let _ = writeln!(md, "## Goals (default settings)\n");
    let _ = writeln!(
        md,
        "| workload | goal | default (median, min-max) | goal | snapshots only | exact alloc |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for res in &results {
        let w = res.workload;
        let d = Spread::of(&res.ratios(Mode::Default, false));
        let e = Spread::of(&res.ratios(Mode::Exact, false));
        let n = Spread::of(&res.ratios(Mode::Snapshots, false));
        let show = |s: Option<Spread>| s.map_or("-".into(), |s| s.to_string());
        let _ = writeln!(
            md,
            "| {} {} | >= {:.2} | {} | {} | {} | {} |",
            w.name(),
            w.unit(),
            w.goal(),
            show(d),
            d.map_or("-", |d| holds(d.median >= w.goal())),
            show(n),
            show(e)
        );
        if w == Workload::Http {
            let d = Spread::of(&res.ratios(Mode::Default, true));
            let _ = writeln!(
                md,
                "| HTTP service p99 | <= {GOAL_P99:.2} | {} | {} | {} | {} |",
                show(d),
                d.map_or("-", |d| holds(d.median <= GOAL_P99)),
                show(Spread::of(&res.ratios(Mode::Snapshots, true))),
                show(Spread::of(&res.ratios(Mode::Exact, true)))
            );
        }
        let pct = |s: Option<Spread>| {
            s.map_or("-".into(), |s| {
                format!(
                    "{:.2}% ({:.2}-{:.2}%)",
                    s.median * 100.0,
                    s.min * 100.0,
                    s.max * 100.0
                )
            })
        };
        let d = Spread::of(&res.cpu_shares(Mode::Default));
        let _ = writeln!(
            md,
            "| {} leaktrace CPU / target CPU | <= {:.1}% | {} | {} | {} | {} |",
            w.name(),
            GOAL_CPU_SHARE * 100.0,
            pct(d),
            d.map_or("-", |d| holds(d.median <= GOAL_CPU_SHARE)),
            pct(Spread::of(&res.cpu_shares(Mode::Snapshots))),
            pct(Spread::of(&res.cpu_shares(Mode::Exact)))
        );
    }
    let _ = writeln!(md, "\n## Overhead\n");
    for res in &results {
        overhead_section(&mut md, res, seconds);
    }
    throughput_section(&mut md, &steps);
    scale_section(&mut md, &scale);
    let reach = reach_run(&root)?;
    let path = root.join("BENCHMARKS.md");
    let old = fs::read_to_string(&path).unwrap_or_default();
    md.push_str(&kept_section(&old, SNAPSHOT_SECTION));
    md.push_str(&with_latest_reach(
        &kept_section(&old, REACH_SECTION),
        &reach,
    ));
    md.push_str(&kept_section(&old, AGENT_SECTION));
    print!("\n{md}");
    fs::write(path, md)?;
    println!(
        "\n==> wrote BENCHMARKS.md in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The heading of the section that `cargo run --release --example bench_dump` figures go
/// under, by hand: a run of this benchmark keeps it as it was.
const SNAPSHOT_SECTION: &str = "## Goroutine snapshots (bench_dump)";

/// The heading of the section that `cargo run --release --example bench_reach` figures go
/// under, by hand: a run of this benchmark keeps it as it was.
const REACH_SECTION: &str = "## Reachability pass (bench_reach)";

/// The reachability pass over heaps of 100 MiB and 1 GiB (`bench_reach 100,1024 3`): its
/// header line and table, as the example prints them.
fn reach_run(root: &Path) -> anyhow::Result<String> {
    println!("==> the reachability pass: cargo run --release --example bench_reach -- 100,1024 3");
    let out = Command::new("cargo")
        .args([
            "run",
            "--release",
            "-p",
            "leaktrace",
            "--example",
            "bench_reach",
            "--",
        ])
        .args(["100,1024", "3"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running the bench_reach example")?;
    if !out.status.success() {
        bail!("bench_reach failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('|') || l.starts_with("Go "))
        .collect();
    Ok(kept.join("\n"))
}

/// Marks the latest `./x bench` run of the reachability pass in its section, so that the
/// next run replaces it and the hand-kept history below stays.
const REACH_LATEST: (&str, &str) = (
    "<!-- ./x bench: latest bench_reach run -->",
    "<!-- end of the latest bench_reach run -->",
);

/// The reachability section with `run` as its latest `./x bench` run, right under its
/// heading (replacing the one an earlier run put there).
fn with_latest_reach(kept: &str, run: &str) -> String {
    let block = format!(
        "{}\nLatest `./x bench` run ({}, load average {}):\n\n{run}\n{}\n",
        REACH_LATEST.0,
        machine(),
        load_average(),
        REACH_LATEST.1
    );
    let kept = match (kept.find(REACH_LATEST.0), kept.find(REACH_LATEST.1)) {
        (Some(a), Some(b)) if a < b => {
            format!(
                "{}{}",
                &kept[..a],
                kept[b + REACH_LATEST.1.len()..].trim_start()
            )
        }
        _ => kept.to_string(),
    };
    match kept.find(REACH_SECTION) {
        Some(i) => {
            let after = i + REACH_SECTION.len();
            format!("{}\n\n{block}{}", &kept[..after], &kept[after..])
        }
        None => format!("\n{REACH_SECTION}\n\n{block}"),
    }
}

/// A section of the BENCHMARKS.md being replaced that another command writes (the snapshot
/// figures, the agent's), up to the next section.
fn kept_section(old: &str, heading: &str) -> String {
    let Some(start) = old.find(heading) else {
        return String::new();
    };
    let rest = &old[start..];
    let end = rest[heading.len()..]
        .find("\n## ")
        .map_or(rest.len(), |i| i + heading.len() + 1);
    format!("\n{}", rest[..end].trim_end()) + "\n"
}

// ---------------------------------------------------------------------------------------
// The agent: many busy Go processes, watched and not

/// The heading of the section `cargo xtask bench-agent` writes; `bench` keeps it.
const AGENT_SECTION: &str = "## Agent (bench-agent)";

/// One window: the processes' summed rate, and the agent's CPU in it (watched windows).
struct AgentWindow {
    rate: f64,
    agent_cpu: Option<f64>,
}

/// The fleet's summed items/s over the window starting now.
fn fleet_rate(fleet: &[Running], window: Duration) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    std::thread::sleep(window);
    let t1 = Instant::now();
    fleet
        .iter()
        .map(|f| progress_rate(&f.progress, t0, t1))
        .sum()
}

/// `leaktrace agent` with its default budget over the fleet (`--exe` names their copies);
/// returns once it watches all of them.
fn start_agent(leaktrace: &Path, glob: &str, count: usize) -> anyhow::Result<Child> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut agent = Command::new(leaktrace)
        .args(["agent", "--exe", glob, "--listen", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        use std::io::{Read as _, Write as _};
        let mut body = String::new();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /targets HTTP/1.1\r\n\r\n");
            let _ = s.read_to_string(&mut body);
        }
        if body.matches("\"goroutines\"").count() >= count {
            return Ok(agent);
        }
        if Instant::now() > end || agent.try_wait()?.is_some() {
            let _ = agent.kill();
            bail!("the agent did not watch all {count} processes within 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cargo xtask bench-agent`: `processes` busy copies of the channel pipeline, their summed
/// throughput with and without `leaktrace agent` (default settings: 1 % of one CPU), in
/// alternating windows; the agent's CPU in each watched window. Writes its section of
/// BENCHMARKS.md, keeping the rest.
pub fn bench_agent(
    processes: usize,
    seconds: u64,
    reps: usize,
    note: Option<&str>,
) -> anyhow::Result<()> {
    let root = go::repo_root();
    println!("==> building leaktrace (release) and the pipeline");
    let leaktrace = go::build_leaktrace_release()?;
    let (bin, version) = go::build_newest("testdata/go/pipeline", "bench")?;
    let dir = out_dir("agent-fleet");
    fs::create_dir_all(&dir)?;
    let prefix = format!("fleet{}", std::process::id());
    let load_before = load_average();
    let mut fleet = Vec::new();
    for i in 0..processes {
        let copy = dir.join(format!("{prefix}-{i}"));
        fs::copy(&bin, &copy)?;
        fleet.push(start_fixture(&copy, &[])?);
    }
    std::thread::sleep(Duration::from_secs(2));
    let window = Duration::from_secs(seconds);
    let glob = format!("{prefix}-*");
    let mut rows: Vec<(AgentWindow, AgentWindow)> = Vec::new();
    for rep in 0..reps {
        let mut unwatched = None;
        let mut watched = None;
        for k in 0..2 {
            if (k + rep) % 2 == 0 {
                unwatched = Some(AgentWindow {
                    rate: fleet_rate(&fleet, window)?,
                    agent_cpu: None,
                });
            } else {
                let mut agent = start_agent(&leaktrace, &glob, processes)?;
                let cpu0 = proc_cpu_and_rss(agent.id()).map_or(0.0, |c| c.0);
                let rate = fleet_rate(&fleet, window)?;
                let cpu1 = proc_cpu_and_rss(agent.id()).map_or(0.0, |c| c.0);
                interrupt(&agent);
                agent.wait()?;
                watched = Some(AgentWindow {
                    rate,
                    agent_cpu: Some(cpu1 - cpu0),
                });
            }
        }
        let (u, w) = (unwatched.unwrap(), watched.unwrap());
        println!(
            "rep {rep}: unwatched {:.0} items/s, watched {:.0} (x{:.3}), agent {:.2} s of CPU in {seconds} s",
            u.rate,
            w.rate,
            w.rate / u.rate,
            w.agent_cpu.unwrap_or(0.0)
        );
        rows.push((u, w));
    }
    drop(fleet);
    let _ = fs::remove_dir_all(&dir);

    let ratios: Vec<f64> = rows.iter().map(|(u, w)| w.rate / u.rate).collect();
    let shares: Vec<f64> = rows
        .iter()
        .map(|(_, w)| w.agent_cpu.unwrap_or(0.0) / seconds as f64)
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "\n{AGENT_SECTION}\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench-agent`: {processes} copies of the channel pipeline (testdata/go/pipeline, Go {version}) running at once on {}, their summed items/s in {seconds} s windows without and with `leaktrace agent` at its defaults (`--max-overhead 1`, `--interval 10s`; it watches all of them before its window starts), the order alternating; {reps} repetitions. Load average before {load_before}, after {}.{}\n",
        machine(),
        load_average(),
        note.map_or(String::new(), |n| format!(" {n}"))
    );
    let _ = writeln!(
        md,
        "| rep | unwatched items/s | watched items/s | ratio | agent CPU in the window (share of one CPU) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (i, ((u, w), share)) in rows.iter().zip(&shares).enumerate() {
        let _ = writeln!(
            md,
            "| {i} | {:.0} | {:.0} | {:.3} | {:.2} s ({:.2}%) |",
            u.rate,
            w.rate,
            w.rate / u.rate,
            w.agent_cpu.unwrap_or(0.0),
            share * 100.0
        );
    }
    if let (Some(r), Some(s)) = (Spread::of(&ratios), Spread::of(&shares)) {
        let _ = writeln!(
            md,
            "\n- throughput ratio {r}; goal >= 0.98: {}\n- the agent's CPU: median {:.2}% of one CPU ({:.2}-{:.2}%); budget 1%: {}",
            holds(r.median >= 0.98),
            s.median * 100.0,
            s.min * 100.0,
            s.max * 100.0,
            holds(s.max <= 0.01 + 0.2 / seconds as f64)
        );
    }
    let path = root.join("BENCHMARKS.md");
    let old = fs::read_to_string(&path).unwrap_or_default();
    let kept = match old.find(&format!("\n{AGENT_SECTION}")) {
        Some(start) => {
            let rest = &old[start + 1..];
            let end = rest[AGENT_SECTION.len()..]
                .find("\n## ")
                .map_or(old.len(), |i| start + 1 + AGENT_SECTION.len() + i + 1);
            format!("{}{}", &old[..start], &old[end..])
        }
        None => old,
    };
    let out = format!("{}\n{}", kept.trim_end(), md.trim_end()) + "\n";
    print!("{md}");
    fs::write(&path, out)?;
    println!("==> wrote the agent section of BENCHMARKS.md");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second `./x bench` run replaces the first's reachability figures and keeps the
    /// hand-kept history under them.
    #[test]
    fn the_latest_reach_run_replaces_the_last_and_keeps_the_history() {
        let kept = format!("\n{REACH_SECTION}\n\nIntro.\n\nHistory.\n");
        let once = with_latest_reach(&kept, "| run 1 |");
        let twice = with_latest_reach(&once, "| run 2 |");
        assert!(
            twice.contains("| run 2 |") && !twice.contains("| run 1 |"),
            "{twice}"
        );
        assert_eq!(twice.matches(REACH_LATEST.0).count(), 1, "{twice}");
        assert!(twice.ends_with("Intro.\n\nHistory.\n"), "{twice}");
        assert!(twice.starts_with(&format!("\n{REACH_SECTION}\n\n{}", REACH_LATEST.0)));
    }

    fn window(rate: f64, p99_ms: f64) -> Sample {
        Sample {
            rate,
            p99_ms: Some(p99_ms),
            attach_rate: rate,
            twin: None,
            tracer: None,
        }
    }

    /// A traced window is measured against the untraced windows either side of it, not
    /// against one taken minutes earlier while the machine ran faster.
    #[test]
    fn a_traced_window_is_measured_against_its_two_neighbours() {
        let r = Rep {
            untraced: vec![window(200.0, 4.0), window(100.0, 2.0), window(120.0, 2.4)],
            traced: BTreeMap::from([
                (Mode::Default, (window(75.0, 3.0), 0)),
                (Mode::Snapshots, (window(110.0, 2.2), 1)),
            ]),
        };
        assert_eq!(r.ratio(Mode::Default), Some(0.5));
        assert_eq!(r.ratio(Mode::Snapshots), Some(1.0));
        assert_eq!(r.p99_ratio(Mode::Default), Some(1.0));
        assert_eq!(r.p99_ratio(Mode::Snapshots), Some(1.0));
        assert_eq!(r.ratio(Mode::Exact), None);
        assert_eq!(r.untraced_rates(), (140.0, 100.0, 200.0));
    }

    /// Beside a twin, a window is measured by the target's rate over its twin's: a host that
    /// slows both alike between windows moves neither ratio.
    #[test]
    fn a_twinned_window_is_measured_over_its_twin() {
        let twinned = |rate: f64, twin: f64| Sample {
            twin: Some(Twin {
                rate: twin,
                attach_rate: twin * 2.0,
            }),
            ..window(rate, 1.0)
        };
        let r = Rep {
            untraced: vec![twinned(100.0, 100.0), twinned(80.0, 80.0)],
            traced: BTreeMap::from([(Mode::Default, (twinned(57.0, 60.0), 0))]),
        };
        assert_eq!(r.ratio(Mode::Default), Some(0.95));
        assert_eq!(r.alone_ratio(Mode::Default), Some(57.0 / 90.0));
        assert_eq!(r.attach_ratio(Mode::Default), Some(0.95));
    }
}
