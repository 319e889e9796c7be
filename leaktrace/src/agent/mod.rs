//! `leaktrace agent`: every Go process of the host watched within one CPU budget, served to
//! Prometheus (`/metrics`) and to pull-based profile stores (`/debug/pprof/...?pid=N`).
//!
//! The watching runs on a thread of its own, one piece of work at a time (a scan of /proc
//! for processes, or one target's snapshot with what follows from it: memory figures, the
//! heap profile, a step of the proof by reachability), each paced by the budget
//! (`schedule`); after each, what the endpoints serve is replaced whole (`serve`). No probe
//! is placed: the agent only reads the targets' memory, as `leaktrace dump` does, so it
//! needs only CAP_SYS_PTRACE and stopping it leaves nothing behind.

pub mod discover;
pub mod schedule;
pub mod serve;

use std::{
    collections::HashMap,
    fmt::Display,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};

use self::{
    discover::{Classified, Filters, Found},
    schedule::Budget,
    serve::{Profiles, Published, Shared},
};
use crate::{
    alloc,
    census::{self, Census, MemorySnapshot},
    detect::{
        DetectOptions, LeakGroup, Tracker,
        proof::{ProofOptions, Prover},
    },
    report::{
        agent::{self as render, TargetEntry, TargetFigures},
        exports, pprof,
    },
    signals,
    tracee::Target,
};

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The filters given on the command line.
    pub filters: Filters,
    /// A file of more filters, read at the start and again at each SIGHUP.
    pub config: Option<PathBuf>,
    pub listen: SocketAddr,
    /// How often each target is snapshotted and /proc scanned for new processes.
    pub interval: Duration,
    /// The watching's budget, a share of one CPU (infinite: no limit).
    pub max_overhead: f64,
    pub min_age: Duration,
    /// Leak groups per process that are series of their own.
    pub top_groups: usize,
}

/// How long SIGTERM or SIGINT waits for the piece of work under way before leaving anyway
/// (the agent writes nothing and places no probe, so leaving mid-read is safe).
const STOP_GRACE: Duration = Duration::from_millis(500);
/// The longest sleep between two looks at the stop flag.
const TICK: Duration = Duration::from_millis(50);

static HUP: AtomicBool = AtomicBool::new(false);

/// One log line: `ts=... level=info event=watch pid=42 exe=/usr/bin/api ...`, values with
/// spaces or quotes quoted, on stderr (the journal under systemd).
pub fn log_event(level: &str, event: &str, fields: &[(&str, &dyn Display)]) {
    use std::fmt::Write as _;
    let mut line = format!("ts={} level={level} event={event}", jiff::Timestamp::now());
    for (k, v) in fields {
        let v = v.to_string();
        if v.is_empty() || v.contains([' ', '"', '=', '\\', '\n']) {
            let _ = write!(line, " {k}={v:?}");
        } else {
            let _ = write!(line, " {k}={v}");
        }
    }
    eprintln!("{line}");
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(opts: AgentOptions) -> anyhow::Result<()> {
    crate::privileges::check_read().map_err(|e| anyhow!(e))?;
    let filters = effective_filters(&opts)?;
    signals::watch()?;
    // SAFETY: the action only stores to an atomic, which is async-signal-safe.
    unsafe { signal_hook_registry::register(libc::SIGHUP, || HUP.store(true, Ordering::SeqCst)) }
        .map_err(|e| anyhow!("cannot handle SIGHUP: {e}"))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP server's event loop")?;
    let listener = runtime.block_on(serve::bind(opts.listen))?;
    let bound = listener.local_addr()?;
    let shared: Shared = Arc::new(Mutex::new(Published {
        metrics: "".into(),
        targets: render::targets_json(&[]).into(),
        budget_share: opts.max_overhead,
        ..Published::default()
    }));
    let server_state = Arc::clone(&shared);
    thread::Builder::new()
        .name("agent-http".into())
        .spawn(move || runtime.block_on(serve::serve(listener, server_state)))
        .context("cannot start the HTTP server's thread")?;
    log_event(
        "info",
        "listening",
        &[
            ("addr", &bound),
            ("interval", &format!("{:?}", opts.interval)),
            ("max_overhead_percent", &(opts.max_overhead * 100.0)),
        ],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("agent-watch".into())
            .spawn(move || Agent::new(opts, filters, shared).run(&stop))
            .context("cannot start the watching thread")?
    };
    while signals::received() == 0 && !watcher.is_finished() {
        thread::sleep(TICK);
    }
    if watcher.is_finished() {
        return watcher
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the watching thread panicked")));
    }
    stop.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + STOP_GRACE;
    while !watcher.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    log_event(
        "info",
        "stopped",
        &[("signal", &signals::name(signals::last()))],
    );
    Ok(())
}

/// The command line's filters and the config file's. A config file that does not exist
/// adds none (it can be written later, then SIGHUP); one that cannot be read or parsed is
/// an error.
fn effective_filters(opts: &AgentOptions) -> anyhow::Result<Filters> {
    Ok(match &opts.config {
        Some(path) if !path.exists() => {
            log_event(
                "info",
                "config_missing",
                &[
                    ("config", &path.display()),
                    ("action", &"the command line's filters alone"),
                ],
            );
            opts.filters.clone()
        }
        Some(path) => opts.filters.clone().and(&Filters::read(path)?),
        None => opts.filters.clone(),
    })
}

/// A watched process.
struct Watched {
    /// Its start time (/proc/PID/stat), which tells it from a later process with its PID.
    start: u64,
    exe: PathBuf,
    service: String,
    target: Target,
    census: Census,
    tracker: Tracker,
    since: Instant,
    snapshots: u64,
    goroutines: usize,
    previous: Option<usize>,
    last_snapshot: Option<Instant>,
    next_due: Instant,
    leaks: Vec<LeakGroup>,
    memory: Option<MemorySnapshot>,
    prover: Option<Prover>,
    profiles: Profiles,
    /// A snapshot failed and it was said (said once until one succeeds).
    failing: bool,
}

/// A Go program that is not watched, and why.
struct Refused {
    start: u64,
    exe: PathBuf,
    reason: String,
}

struct Agent {
    opts: AgentOptions,
    filters: Filters,
    shared: Shared,
    budget: Budget,
    detect: DetectOptions,
    watched: HashMap<u32, Watched>,
    refused: HashMap<u32, Refused>,
    /// Processes that are not Go programs, by PID, with their start time and executable.
    other: HashMap<u32, (u64, PathBuf)>,
    next_scan: Instant,
}

impl Agent {
    fn new(opts: AgentOptions, filters: Filters, shared: Shared) -> Self {
        Self {
            budget: Budget::new(opts.max_overhead),
            detect: DetectOptions {
                min_age: opts.min_age,
            },
            filters,
            shared,
            watched: HashMap::new(),
            refused: HashMap::new(),
            other: HashMap::new(),
            next_scan: Instant::now(),
            opts,
        }
    }

    fn run(mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        while !stop.load(Ordering::SeqCst) {
            if HUP.swap(false, Ordering::SeqCst) {
                self.reload();
            }
            let now = Instant::now();
            if now >= self.next_scan {
                if !self.pace(stop) {
                    break;
                }
                self.scan();
                self.next_scan = Instant::now() + self.opts.interval;
                self.publish();
                continue;
            }
            match self.next_target(now) {
                Some(pid) => {
                    if !self.pace(stop) {
                        break;
                    }
                    self.step(pid);
                    self.publish();
                }
                None => {
                    let next = self
                        .watched
                        .values()
                        .map(|w| w.next_due)
                        .chain([self.next_scan])
                        .min()
                        .unwrap_or(self.next_scan);
                    thread::sleep(next.saturating_duration_since(now).min(TICK));
                }
            }
        }
        Ok(())
    }

    /// Waits until the budget allows the next piece of work; false when asked to stop.
    fn pace(&self, stop: &AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            let wait = self.budget.wait();
            if wait.is_zero() {
                return true;
            }
            thread::sleep(wait.min(TICK));
        }
    }

    /// The due target to visit first: the fastest growing, then the busiest.
    fn next_target(&self, now: Instant) -> Option<u32> {
        self.watched
            .iter()
            .filter(|(_, w)| w.next_due <= now)
            .max_by_key(|(pid, w)| {
                (
                    schedule::priority(w.goroutines, w.previous),
                    std::cmp::Reverse(w.next_due),
                    std::cmp::Reverse(**pid),
                )
            })
            .map(|(pid, _)| *pid)
    }

    /// SIGHUP: the config file read again; a file that cannot be read keeps the filters.
    fn reload(&mut self) {
        match effective_filters(&self.opts) {
            Ok(f) => {
                let changed = f != self.filters;
                self.filters = f;
                let config = self
                    .opts
                    .config
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |p| p.display().to_string());
                log_event(
                    "info",
                    "reload",
                    &[("config", &config), ("filters_changed", &changed)],
                );
            }
            Err(e) => log_event(
                "error",
                "reload",
                &[
                    ("error", &format!("{e:#}")),
                    ("action", &"kept the previous filters"),
                ],
            ),
        }
        self.next_scan = Instant::now();
    }

    /// Looks through /proc: forgets the processes that exited, drops those the filters no
    /// longer admit, and classifies the new ones.
    fn scan(&mut self) {
        let found = discover::scan();
        let now: HashMap<u32, &Found> = found.iter().map(|f| (f.pid, f)).collect();
        let same = |pid: &u32, start: u64, exe: &PathBuf| {
            now.get(pid)
                .is_some_and(|f| f.start == start && f.exe == *exe)
        };
        self.watched.retain(|pid, w| {
            let keep = same(pid, w.start, &w.exe);
            if !keep {
                log_event("info", "exited", &[("pid", pid), ("exe", &w.exe.display())]);
            }
            keep
        });
        self.refused.retain(|pid, r| same(pid, r.start, &r.exe));
        self.other
            .retain(|pid, (start, exe)| same(pid, *start, exe));
        for f in &found {
            if self.other.contains_key(&f.pid) {
                continue;
            }
            let pid = f.pid;
            if !self.filters.admit(pid, &f.exe, || discover::cgroup(pid)) {
                if self.watched.remove(&pid).is_some() {
                    log_event(
                        "info",
                        "unwatched",
                        &[("pid", &pid), ("reason", &"the filters exclude it")],
                    );
                }
                self.refused.remove(&pid);
                continue;
            }
            if self.watched.contains_key(&pid) || self.refused.contains_key(&pid) {
                continue;
            }
            match discover::classify(pid) {
                Classified::Go(target) => {
                    let service = discover::service(discover::cgroup(pid).as_deref(), &f.exe);
                    log_event(
                        "info",
                        "watch",
                        &[
                            ("pid", &pid),
                            ("exe", &f.exe.display()),
                            ("service", &service),
                            ("go", &target.binary.build().version_string),
                        ],
                    );
                    self.watched.insert(
                        pid,
                        Watched {
                            start: f.start,
                            exe: f.exe.clone(),
                            service,
                            target: *target,
                            census: Census::new(),
                            tracker: Tracker::default(),
                            since: Instant::now(),
                            snapshots: 0,
                            goroutines: 0,
                            previous: None,
                            last_snapshot: None,
                            next_due: Instant::now(),
                            leaks: Vec::new(),
                            memory: None,
                            prover: None,
                            profiles: Profiles::default(),
                            failing: false,
                        },
                    );
                }
                Classified::Refused(reason) => {
                    log_event(
                        "warn",
                        "refused",
                        &[
                            ("pid", &pid),
                            ("exe", &f.exe.display()),
                            ("reason", &reason),
                        ],
                    );
                    self.refused.insert(
                        pid,
                        Refused {
                            start: f.start,
                            exe: f.exe.clone(),
                            reason,
                        },
                    );
                }
                Classified::Other => {
                    self.other.insert(pid, (f.start, f.exe.clone()));
                }
            }
        }
    }

    /// One target's snapshot and what follows from it.
    fn step(&mut self, pid: u32) {
        let Some(w) = self.watched.get_mut(&pid) else {
            return;
        };
        w.next_due = Instant::now() + self.opts.interval;
        let gs = match w.census.snapshot(&w.target) {
            Ok(gs) => gs,
            Err(e) => {
                if !w.target.process.is_alive() || w.target.process.has_execed() {
                    log_event(
                        "info",
                        "exited",
                        &[("pid", &pid), ("exe", &w.exe.display())],
                    );
                    self.watched.remove(&pid);
                } else if !w.failing {
                    w.failing = true;
                    log_event(
                        "warn",
                        "snapshot_failed",
                        &[("pid", &pid), ("error", &format!("{e:#}"))],
                    );
                }
                return;
            }
        };
        w.failing = false;
        let observed = crate::trace::observed(&w.target, &mut w.census, gs);
        if w.snapshots > 0 {
            w.previous = Some(w.goroutines);
        }
        w.goroutines = observed.len();
        w.snapshots += 1;
        w.last_snapshot = Some(Instant::now());
        w.tracker.observe(w.since.elapsed(), observed);
        w.memory = census::memory::read(&w.target).ok();
        self.advance_proof(pid);
        let Some(w) = self.watched.get_mut(&pid) else {
            return;
        };
        w.leaks = w.tracker.leaks(&self.detect);
        let exe = w.exe.display().to_string();
        let leak_profile =
            exports::goroutineleak_of(&w.leaks, pid, &exe, w.since.elapsed().as_secs_f64());
        w.profiles.goroutineleak = Some(pprof::encode(&leak_profile).into());
        w.profiles.allocs = alloc::profile::read(&w.target)
            .ok()
            .map(|p| pprof::encode(&pprof::heap_allocations(&p, &w.target)).into());
    }

    /// A step of the proof by reachability, as the live trace takes them: a first pass when
    /// goroutines are blocked where a leak can be, the goroutines it found unreachable
    /// watched at each snapshot, then the second pass, whose proven goroutines the tracker
    /// takes.
    fn advance_proof(&mut self, pid: u32) {
        let Some(w) = self.watched.get_mut(&pid) else {
            return;
        };
        let opts = ProofOptions::default();
        match w.prover.take() {
            None => {
                if w.tracker.verdicts(&self.detect).is_empty() {
                    return;
                }
                match Prover::start(&w.target, opts.limits) {
                    Ok(p) => w.prover = Some(p),
                    Err(e) => log::debug!("PID {pid}: reachability pass failed: {e:#}"),
                }
            }
            Some(mut p) => {
                if !p.watch(&w.target, &opts) {
                    w.prover = Some(p);
                    return;
                }
                match p.finish(&w.target, opts.limits) {
                    Ok(proof) => {
                        w.tracker.set_proven(&proof);
                    }
                    Err(e) => log::debug!("PID {pid}: reachability pass failed: {e:#}"),
                }
            }
        }
    }

    /// Replaces what the endpoints serve.
    fn publish(&self) {
        let mut pids: Vec<&u32> = self.watched.keys().collect();
        pids.sort();
        let exes: HashMap<u32, String> = self
            .watched
            .iter()
            .map(|(pid, w)| (*pid, w.exe.display().to_string()))
            .collect();
        let figures: Vec<TargetFigures> = pids
            .iter()
            .map(|pid| {
                let w = &self.watched[pid];
                TargetFigures {
                    pid: **pid,
                    exe: &exes[pid],
                    service: &w.service,
                    goroutines: w.goroutines,
                    leaks: &w.leaks,
                    memory: w.memory.as_ref(),
                    snapshots: w.snapshots,
                }
            })
            .filter(|f| f.snapshots > 0)
            .collect();
        let metrics = render::render(&figures, self.opts.top_groups);
        let mut entries: Vec<TargetEntry> = self
            .watched
            .iter()
            .map(|(pid, w)| TargetEntry {
                pid: *pid,
                exe: exes[pid].clone(),
                state: "watched",
                service: Some(w.service.clone()),
                go_version: Some(w.target.binary.build().version_string.clone()),
                reason: None,
                goroutines: (w.snapshots > 0).then_some(w.goroutines),
                leak_groups: (w.snapshots > 0).then_some(w.leaks.len()),
                snapshot_age_seconds: w.last_snapshot.map(|t| t.elapsed().as_secs_f64()),
            })
            .chain(self.refused.iter().map(|(pid, r)| TargetEntry {
                pid: *pid,
                exe: r.exe.display().to_string(),
                state: "refused",
                service: None,
                go_version: None,
                reason: Some(r.reason.clone()),
                goroutines: None,
                leak_groups: None,
                snapshot_age_seconds: None,
            }))
            .collect();
        entries.sort_by_key(|e| e.pid);
        let published = Published {
            metrics: metrics.into(),
            targets: render::targets_json(&entries).into(),
            profiles: self
                .watched
                .iter()
                .map(|(pid, w)| (*pid, w.profiles.clone()))
                .collect(),
            watch_cpu: self.budget.used(),
            budget_share: self.budget.share(),
        };
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = published;
    }
}
