//! The live trace (`leaktrace -p PID`, `leaktrace record`): identify the target (or spawn it),
//! take a snapshot of its goroutines, attach the park/wake probes if they fit the overhead
//! budget, then follow it: records into the model, a snapshot every `--snapshot-interval`
//! into the leak detector, a line per interval. Stops on Ctrl-C, SIGTERM, `--duration`, or
//! when the target exits or execs, then reports. Every probe is detached before the report.

use std::{
    collections::{BTreeMap, HashMap},
    ffi::OsString,
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use leaktrace_common::{Config, MADVISE_NAMES, Record, RecordKind};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    alloc::{self, AllocMode, Allocated},
    census::{self, activity::ActivityEstimate, channels, retained},
    collector,
    detect::{DetectOptions, LeakGroup, Observed, Pinned, Touch, Tracker, verdict},
    model::{
        Applied, MemoryPoint, Model,
        histograms::{self, Histograms},
    },
    probes::{Probe, Probes, calibrate, over_budget},
    report::{
        self, events, exports, live, pprof, prometheus,
        schema::{ProbeSummary, Report},
        text,
    },
    signals::{self, Interrupted},
    tracee::{Target, binary::GoBinary, layout, process::Process, spawn},
};

/// What to trace.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// A running process.
    Pid(u32),
    /// Spawn this command and trace it from its first instruction.
    Spawn(Vec<OsString>),
}

#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub target: TargetSpec,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub snapshot_interval: Duration,
    pub min_age: Duration,
    /// The probes to place; any of them is shed if the probes together cost more than
    /// `max_overhead`.
    pub probes: Vec<Probe>,
    /// The most of one CPU the probes may cost the target, as a fraction (0.01 = 1%).
    pub max_overhead: f64,
    /// Write every record as a JSON line here.
    pub events: Option<PathBuf>,
    /// Write report.txt, report.json and the exports here.
    pub output: Option<PathBuf>,
    /// The size of the ring buffer records pass through, in bytes (a power of two, at least
    /// a page); records that find it full are counted as lost.
    pub ring_bytes: u32,
    /// How allocations are seen.
    pub alloc: AllocMode,
    /// Serve metrics for Prometheus here.
    pub prometheus: Option<std::net::SocketAddr>,
}

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Duration,
    Signal(&'static str),
    TargetExited,
    TargetExeced,
}

/// What a trace produced.
#[derive(Debug)]
pub struct Outcome {
    pub stop: Stop,
    pub report: Report,
}

fn config_for(pid: u32, layout: &layout::RuntimeLayout) -> Config {
    Config {
        tgid: pid,
        g_goid: layout.g.goid,
        g_m: layout.g.m,
        m_curg: layout.m.curg,
        g_parent_goid: layout.g.parent_goid,
        g_gopc: layout.g.gopc,
        g_startpc: layout.g.startpc,
        ..Config::default()
    }
}

/// Places `wanted` on `exe`.
fn place(
    probes: &mut Probes,
    binary: &GoBinary,
    exe: &Path,
    wanted: &[Probe],
) -> anyhow::Result<()> {
    for &probe in wanted {
        if signals::received() > 0 {
            break; // Ctrl-C while attaching: no further probe
        }
        if probe == Probe::Site {
            continue; // placed while tracing, at the suspects' sites
        }
        // The linker drops runtime functions a program never calls: a program without a
        // select has no runtime.selectgo, and nothing for that probe to see.
        let optional = !matches!(probe, Probe::Gopark | Probe::Ready);
        if optional && binary.function(probe.function()).is_none() {
            eprintln!(
                "leaktrace: {} is not in this program (it never calls it): no {} probe",
                probe.function(),
                probe.name()
            );
            continue;
        }
        let offsets = probe
            .addresses(binary)?
            .into_iter()
            .map(|a| {
                binary.file_offset(a).ok_or_else(|| {
                    anyhow!(
                        "{} at {a:#x} is outside every loadable segment",
                        probe.function()
                    )
                })
            })
            .collect::<anyhow::Result<Vec<u64>>>()?;
        probes.attach(probe, exe, &offsets)?;
    }
    Ok(())
}

/// `wanted` and `more`, each once.
fn with(wanted: &[Probe], more: &[Probe]) -> Vec<Probe> {
    let mut v: Vec<Probe> = wanted.iter().chain(more).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

const CHANNEL_PROBES: [Probe; 3] = [Probe::ChanSend, Probe::ChanRecv, Probe::ChanClose];

/// The first budget check after probes are placed.
const QUICK_CHECK: Duration = Duration::from_millis(20);

/// A snapshot walk may take at most 1/SNAPSHOT_PACE of the time between snapshots.
const SNAPSHOT_PACE: u32 = 20;

/// At most this many targeted probes in one trace: each placement writes a breakpoint into
/// the target's code under its mmap lock.
const MAX_SITES: usize = 32;

/// The probes of `wanted` whose estimated cost fits `budget`, judged before any is placed:
/// removing a probe that does not fit costs the target its hits for the ~100 ms the kernel
/// takes to unregister it. Rates come from two reads of the goroutine structs 100 ms apart
/// ([`census::activity`]); a channel probe fires at least as often as the parks.
fn fitting(
    target: &Target,
    wanted: &[Probe],
    exempt: &[Probe],
    budget: f64,
    hit_cost: Duration,
    skipped: &mut Vec<String>,
    estimated: &mut Option<ActivityEstimate>,
) -> Vec<Probe> {
    let heap_before = census::memory::read(target)
        .ok()
        .map(|m| (Instant::now(), m.total_alloc));
    let rates = match census::activity::estimate(target, Duration::from_millis(100)) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("cannot estimate the target's scheduling rate: {e:#}");
            return wanted.to_vec();
        }
    };
    // Allocations/s from the heap's own byte counter, at a typical small object of 64 B;
    // unknown (as if hot) when the heap figures cannot be read.
    let allocs = match (heap_before, census::memory::read(target)) {
        (Some((t0, b0)), Ok(m)) => {
            m.total_alloc.saturating_sub(b0) as f64 / t0.elapsed().as_secs_f64().max(1e-3) / 64.0
        }
        _ => f64::INFINITY,
    };
    *estimated = Some(ActivityEstimate {
        goroutines_created_per_second: rates.creations,
        state_changes_per_second: rates.transitions,
        allocations_per_second: allocs.is_finite().then_some(allocs),
    });
    let per_probe: HashMap<Probe, f64> = wanted
        .iter()
        .map(|&p| {
            let r = match p {
                Probe::Create | Probe::Exit => rates.creations,
                // casgstatus sees every state change: parks, wake-ups, runs, preemptions.
                Probe::WakeAny => rates.transitions * 4.0,
                // Placed later, at suspects' sites; judged by their measured rate.
                Probe::Site => 0.0,
                Probe::Alloc => allocs,
                // One refill per span, 8 KiB at least; large allocations are rarer.
                Probe::Refill | Probe::Large => allocs * 64.0 / 8192.0,
                _ => rates.transitions,
            };
            (p, r)
        })
        .collect();
    if exempt.contains(&Probe::Alloc) {
        eprintln!(
            "leaktrace: --alloc exact probes every allocation: each costs the target about {:.1} us more (one probe hit, measured here; a small allocation alone takes about 30 ns); at the ~{allocs:.0} allocations/s it makes now, that is about {:.1}% of a CPU",
            hit_cost.as_secs_f64() * 1e6,
            allocs * hit_cost.as_secs_f64() * 100.0
        );
    }
    let judged: Vec<Probe> = wanted
        .iter()
        .copied()
        .filter(|p| !exempt.contains(p))
        .collect();
    let drop = over_budget(&per_probe, &judged, budget, hit_cost);
    if !drop.is_empty() {
        let msg = format!(
            "the target creates about {:.0} goroutines/s, changes goroutine states at least {:.0} times/s and allocates about {:.0} objects/s: {} would cost more than --max-overhead {:.1}% of a CPU, not placed",
            rates.creations,
            rates.transitions,
            allocs,
            drop.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
            budget * 100.0
        );
        eprintln!("leaktrace: {msg}; goroutine snapshots carry the picture");
        skipped.push(msg);
    }
    wanted
        .iter()
        .copied()
        .filter(|p| !drop.contains(p))
        .collect()
}

/// The goroutines of a snapshot as the detector sees them (runtime goroutines left out);
/// `g_addrs` gets the g address of every goroutine alive, runtime ones included, by goid.
fn observe(target: &Target, g_addrs: &mut HashMap<u64, u64>) -> anyhow::Result<Vec<Observed>> {
    let gs = census::goroutines::walk(target)?;
    g_addrs.clear();
    g_addrs.extend(gs.iter().map(|g| (g.goid, g.g_addr)));
    Ok(gs
        .into_iter()
        .filter(|g| !g.system)
        .map(|g| {
            let chans = match g.state.as_str() {
                "chan send" | "chan receive" | "select" => channels::waited_on(target, g.g_addr),
                _ => Vec::new(),
            };
            Observed {
                goid: g.goid,
                waiting: g.waiting,
                stack: g.shown_frames().cloned().collect(),
                created_by: g.created_by.clone(),
                state: g.state,
                channels: chans,
            }
        })
        .collect())
}

/// The target's memory now, with the madvise totals so far.
fn memory_point(
    target: &Target,
    probes: &Probes,
    at: Duration,
    goroutines: Option<usize>,
) -> Option<MemoryPoint> {
    let m = census::memory::read(target).ok()?;
    let madvise = probes.madvise().ok()?;
    Some(MemoryPoint {
        seconds: at.as_secs_f64(),
        memory: m,
        madvise_bytes: MADVISE_NAMES
            .iter()
            .zip(madvise)
            .map(|(n, (bytes, _))| (n.to_string(), bytes))
            .collect(),
        goroutines,
    })
}

pub async fn run(opts: TraceOptions) -> anyhow::Result<Outcome> {
    // From here on SIGINT and SIGTERM stop the trace instead of killing leaktrace: counted
    // for the phases around the event loop, and buffered by tokio for the loop itself.
    signals::watch().context("handling SIGINT and SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    crate::privileges::check().map_err(|e| anyhow!(e))?;
    if let Some(dir) = &opts.output {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let hit_cost = calibrate::hit_cost();
    let start = Instant::now();
    // bpf_ktime_get_ns is CLOCK_MONOTONIC: records are placed in trace time with it.
    let start_mono_ns = census::goroutines::monotonic_ns() as u64;
    let mut tracker = Tracker::default();
    let mut snapshot_error = None;
    let mut skipped: Vec<String> = Vec::new();
    let mut estimated = None;
    let mut g_addrs: HashMap<u64, u64> = HashMap::new();
    let plan;
    let mut goroutines_now = None;
    let (target, mut probes, spawned) = match &opts.target {
        TargetSpec::Pid(pid) => {
            let target = Target::inspect(*pid)?;
            plan = alloc::plan::plan(&target.binary, opts.alloc);
            let mut probes = Probes::load(config_for(*pid, &target.layout), opts.ring_bytes)?;
            if let Some(c) = &plan.classes {
                probes.set_span_bytes(&c.by_span_class())?;
            }
            eprintln!(
                "leaktrace: attaching to PID {pid} ({}, {}): reading its goroutines, then placing probes",
                target.process.exe_name(),
                target.binary.build().version_string
            );
            // The snapshot at attach time sees what happened before: goroutines blocked for
            // hours. It is taken before any probe is placed, so that the probes' first
            // burst is short.
            if signals::received() == 0 {
                match observe(&target, &mut g_addrs) {
                    Ok(gs) => {
                        goroutines_now = Some(gs.len());
                        tracker.observe(start.elapsed(), gs);
                    }
                    Err(e) => snapshot_error = Some(e),
                }
            }
            let wanted = if signals::received() == 0 {
                fitting(
                    &target,
                    &with(&opts.probes, &plan.probes),
                    &plan.exempt,
                    opts.max_overhead,
                    hit_cost,
                    &mut skipped,
                    &mut estimated,
                )
            } else {
                Vec::new()
            };
            place(
                &mut probes,
                &target.binary,
                &target.process.exe_path(),
                &wanted,
            )?;
            (target, probes, None)
        }
        TargetSpec::Spawn(argv) => {
            let program = spawn::resolve(Path::new(
                argv.first()
                    .ok_or_else(|| anyhow!("no command given after --"))?,
            ))?;
            let binary = GoBinary::open(&program).map_err(|e| anyhow!("{e}"))?;
            let v = binary.version();
            let layout = layout::for_binary(binary.data(), v.major, v.minor)?;
            plan = alloc::plan::plan(&binary, opts.alloc);
            let held = spawn::hold(argv)?;
            let pid = held.pid;
            let mut probes = Probes::load(config_for(pid, &layout), opts.ring_bytes)?;
            if let Some(c) = &plan.classes {
                probes.set_span_bytes(&c.by_span_class())?;
            }
            if plan.exempt.contains(&Probe::Alloc) {
                eprintln!(
                    "leaktrace: --alloc exact probes every allocation: each costs the target about {:.1} us more (one probe hit, measured here; a small allocation alone takes about 30 ns)",
                    hit_cost.as_secs_f64() * 1e6
                );
            }
            place(
                &mut probes,
                &binary,
                &held.program,
                &with(&opts.probes, &plan.probes),
            )?;
            if signals::received() > 0 {
                // Dropping `held` closes its pipe: the child exits without running CMD.
                return Err(Interrupted::now(format!(
                    "while attaching: {} was not started; all probes detached",
                    held.program.display()
                ))
                .into());
            }
            let program = held.program.clone();
            held.release()?;
            let target = Target::from_parts(Process::open_spawned(pid, &program)?, binary)?;
            match observe(&target, &mut g_addrs) {
                Ok(gs) => {
                    goroutines_now = Some(gs.len());
                    tracker.observe(start.elapsed(), gs);
                }
                Err(e) => snapshot_error = Some(e),
            }
            (target, probes, Some(pid))
        }
    };
    let pid = target.process.pid();
    let interrupted_attaching = signals::received() > 0;
    if interrupted_attaching {
        eprintln!(
            "leaktrace: {} received while attaching to PID {pid}: no further probe placed; stopping",
            signals::name(signals::last())
        );
    }
    let records = probes.take_records()?;
    if let Some(e) = &probes.madvise_error {
        eprintln!("leaktrace: madvise not traced: {e}");
    }
    let mut timeline: Vec<MemoryPoint> =
        memory_point(&target, &probes, start.elapsed(), goroutines_now)
            .into_iter()
            .collect();
    let profile_start = alloc::profile::read(&target);
    // Read again at each snapshot: a target that exits can no longer be read at the end.
    let mut profile_last = None;
    if let Some(note) = &plan.note {
        eprintln!("leaktrace: {note}");
    }
    let mut hist = Histograms::default();
    let mut pinned: HashMap<String, (Instant, usize, Pinned)> = HashMap::new();
    let mut pinned_next = Instant::now();
    let metrics = match opts.prometheus {
        Some(addr) => {
            let (tx, rx) = tokio::sync::watch::channel(String::new());
            let (bound, server) = prometheus::serve(addr, rx)
                .await
                .with_context(|| format!("serving metrics on {addr}"))?;
            eprintln!("leaktrace: serving metrics for Prometheus on http://{bound}/metrics");
            Some((tx, server))
        }
        None => None,
    };
    let attached_now = probes.attached();
    if attached_now.contains(&Probe::Gopark) && attached_now.contains(&Probe::Ready) {
        tracker.probes_active(Duration::ZERO);
    }
    if CHANNEL_PROBES.iter().all(|p| attached_now.contains(p)) {
        tracker.chan_probes_active(Duration::ZERO);
    }
    if let Some(e) = &snapshot_error {
        eprintln!("leaktrace: goroutine snapshots unavailable, following probes only: {e:#}");
    }
    let probe_list = probes
        .attached()
        .iter()
        .map(|p| p.function())
        .collect::<Vec<_>>();
    eprintln!(
        "leaktrace: attached to PID {pid} ({}, {}): {} (a hit costs {:.1} us here); snapshot every {:.1} s; Ctrl-C to stop",
        target.process.exe_name(),
        target.binary.build().version_string,
        if probe_list.is_empty() {
            "no probes".to_string()
        } else {
            format!("probes on {}", probe_list.join(", "))
        },
        hit_cost.as_secs_f64() * 1e6,
        opts.snapshot_interval.as_secs_f64()
    );

    let mut events = match &opts.events {
        Some(path) => Some(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let mut model = Model::default();
    // SAFETY: the ring buffer owns its descriptor for as long as the AsyncFd holds it, and the
    // pidfd is owned by `target.process`, which outlives `pidfd` (both end in this function).
    let mut records = unsafe { AsyncFd::register(records) }
        .map_err(|e| anyhow!("polling the ring buffer: {}", e.into_parts().1))?;
    let pidfd = unsafe { AsyncFd::register(target.process.pidfd()) }
        .map_err(|e| anyhow!("polling the target's pidfd: {}", e.into_parts().1))?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let first_tick = tokio::time::Instant::now() + opts.interval;
    let mut tick = tokio::time::interval_at(first_tick, opts.interval);
    // Snapshots cost the target nothing per event, but a walk of 100,000 goroutines takes
    // leaktrace about a second of CPU, which a small machine takes from the target: the
    // next snapshot is at least SNAPSHOT_PACE walks away, keeping walks under ~5% of a CPU.
    let mut next_snapshot = tokio::time::Instant::now() + opts.snapshot_interval;
    // The probes' cost is checked 20 ms after they are placed (a hot probe shows in so short a
    // window), then four times a second, so that a busy target pays for a probe that does
    // not fit the budget for at most a quarter of a second. A check delayed by a long
    // snapshot is not made up for with a burst of short ones.
    let budget_period = Duration::from_millis(250);
    let mut budget =
        tokio::time::interval_at(tokio::time::Instant::now() + QUICK_CHECK, budget_period);
    budget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_counts = probes.counts()?;
    let mut last_tick = Instant::now();
    let mut lost_reported = 0;
    let mut shed: Vec<String> = skipped;
    let mut sites_enabled = opts.probes.contains(&Probe::Site);
    let mut sites_placed = 0usize;
    let detect = DetectOptions {
        min_age: opts.min_age,
    };

    let mut sites: HashMap<u64, (String, String, u32)> = HashMap::new();
    let mut handle = |model: &mut Model,
                      tracker: &mut Tracker,
                      hist: &mut Histograms,
                      rec: Record,
                      events: &mut Option<BufWriter<File>>| {
        let applied = model.apply(&rec);
        match applied {
            Applied::Woken {
                reason: Some(r),
                parked_ns: Some(ns),
            } => hist.record(&histograms::tag("park_ns", &target.reason_name(r)), ns),
            Applied::Exited {
                lifetime_ns: Some(ns),
            } => hist.record("lifetime_ns", ns),
            _ => {}
        }
        // A morestack re-entry of gopark is the same park, and casgstatus inside ready the
        // same wake-up: neither is logged twice.
        if matches!(applied, Applied::ReEntry | Applied::Duplicate) {
            return;
        }
        let at = Duration::from_nanos(rec.ts_ns.saturating_sub(start_mono_ns));
        match RecordKind::from_u8(rec.kind) {
            Some(RecordKind::Wake) => tracker.record_wake(rec.goid, at),
            Some(RecordKind::Exit) => tracker.record_exit(rec.goid),
            Some(RecordKind::Madvise) => hist.record("madvise_bytes", rec.addr),
            Some(RecordKind::Site) => tracker.record_site_hit(target.link_addr(rec.pc), rec.goid),
            Some(k @ (RecordKind::ChanSend | RecordKind::ChanRecv | RecordKind::ChanClose)) => {
                let (function, file, line) = sites
                    .entry(rec.pc)
                    .or_insert_with(|| target.site_at_return(rec.pc))
                    .clone();
                let op = match k {
                    RecordKind::ChanSend => "send",
                    RecordKind::ChanRecv => "receive",
                    _ => "close",
                };
                tracker.record_touch(
                    rec.addr,
                    at,
                    Touch {
                        op,
                        at_seconds: at.as_secs_f64(),
                        goid: rec.goid,
                        function,
                        file,
                        line,
                        exited: false,
                    },
                );
            }
            _ => {}
        }
        if let Some(w) = events.as_mut() {
            let _ = writeln!(w, "{}", events::json(&target, &rec));
        }
    };

    let stop = loop {
        tokio::select! {
            guard = records.readable_mut() => {
                let mut guard = guard?;
                collector::drain(guard.get_inner_mut(), |rec| {
                    handle(&mut model, &mut tracker, &mut hist, rec, &mut events)
                });
                guard.clear_ready();
            }
            _ = budget.tick() => {
                let (counts, now) = (probes.counts()?, Instant::now());
                let secs = now.duration_since(last_tick).as_secs_f64();
                if secs < QUICK_CHECK.as_secs_f64() * 0.75 {
                    continue; // too short a window to judge
                }
                let rates: HashMap<Probe, f64> = Probe::ALL
                    .into_iter()
                    .map(|p| (p, (counts.hits(p) - last_counts.hits(p)) as f64 / secs))
                    .collect();
                // --alloc exact is not shed: its cost was stated and chosen.
                let attached: Vec<Probe> = probes
                    .attached()
                    .into_iter()
                    .filter(|p| !plan.exempt.contains(p))
                    .collect();
                let shed_now = over_budget(&rates, &attached, opts.max_overhead, hit_cost);
                if !shed_now.is_empty() {
                    let total: f64 = attached.iter().map(|p| rates[p]).sum();
                    let msg = format!(
                        "the probes fired {:.0} times/s, an estimated {:.1}% of a CPU, over --max-overhead {:.1}%: detached {}",
                        total,
                        total * hit_cost.as_secs_f64() * 100.0,
                        opts.max_overhead * 100.0,
                        shed_now.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
                    );
                    let t0 = Instant::now();
                    probes.detach(&shed_now)?;
                    log::debug!("shedding {} probes took {:?}", shed_now.len(), t0.elapsed());
                    if shed_now.contains(&Probe::Gopark) || shed_now.contains(&Probe::Ready) {
                        tracker.probes_inactive();
                    }
                    if shed_now.iter().any(|p| CHANNEL_PROBES.contains(p)) {
                        tracker.chan_probes_inactive();
                    }
                    if shed_now.contains(&Probe::Site) {
                        tracker.sites_inactive();
                        sites_enabled = false;
                    }
                    eprintln!("leaktrace: {msg}; goroutine snapshots carry on");
                    shed.push(msg);
                }
                last_tick = now; // when `counts` were read: hits during a detach count
                last_counts = counts;
            }
            _ = tick.tick() => {
                hist.close_interval(start.elapsed());
                let counts = probes.counts()?;
                let t = model.take_interval();
                let suspects = tracker.leaks(&detect).len();
                let parks_traced = probes.attached().contains(&Probe::Gopark);
                if parks_traced || t.total_parks() + t.total_wakes() > 0 {
                    println!(
                        "{} | suspects {suspects}",
                        live::interval_line(start.elapsed(), &t, &target.layout.wait_reasons, counts.lost - lost_reported)
                    );
                } else {
                    println!(
                        "[{:>5}s] park/wake not probed (over budget or not chosen); {} snapshots | suspects {suspects}",
                        start.elapsed().as_secs(),
                        tracker.snapshots()
                    );
                }
                lost_reported = counts.lost;
                if target.process.has_execed() {
                    break Stop::TargetExeced;
                }
            }
            _ = tokio::time::sleep_until(next_snapshot), if snapshot_error.is_none() => {
                let walk = Instant::now();
                let walk_ns = census::goroutines::monotonic_ns() as u64;
                let observed = collector::while_draining(
                    records.get_mut(),
                    || observe(&target, &mut g_addrs),
                    |rec| handle(&mut model, &mut tracker, &mut hist, rec, &mut events),
                );
                next_snapshot = tokio::time::Instant::now() + opts.snapshot_interval.max(walk.elapsed() * SNAPSHOT_PACE);
                timeline.extend(memory_point(
                    &target,
                    &probes,
                    start.elapsed(),
                    observed.as_ref().ok().map(Vec::len),
                ));
                if plan.reads_profile() {
                    profile_last = alloc::profile::read(&target).ok().or(profile_last);
                }
                if let Some((tx, _)) = &metrics {
                    let counts = probes.counts()?;
                    let hits: Vec<(&'static str, u64)> = probes
                        .attached()
                        .iter()
                        .map(|p| (p.function(), counts.hits(*p)))
                        .collect();
                    tx.send_replace(report::metrics::render(
                        timeline.last(),
                        &tracker.leaks(&detect),
                        &hist,
                        &counts,
                        &hits,
                    ));
                }
                match observed {
                    Ok(gs) => {
                        model.forget_absent(|goid| g_addrs.contains_key(&goid), walk_ns);
                        tracker.observe(start.elapsed(), gs);
                        // Like walks, estimates take at most 1/SNAPSHOT_PACE of the time.
                        if Instant::now() >= pinned_next {
                            let t0 = Instant::now();
                            let leaks = tracker.leaks(&detect);
                            collector::while_draining(
                                records.get_mut(),
                                || estimate_pinned(&target, &leaks, &g_addrs, &mut pinned, false),
                                |rec| handle(&mut model, &mut tracker, &mut hist, rec, &mut events),
                            );
                            pinned_next = Instant::now() + t0.elapsed() * SNAPSHOT_PACE;
                        }
                    }
                    Err(e) if !target.process.is_alive() => log::debug!("snapshot after exit: {e:#}"),
                    Err(e) => eprintln!("leaktrace: snapshot failed: {e:#}"),
                }
                if sites_enabled {
                    for pc in tracker.wanted_sites(&detect).into_iter().take(MAX_SITES.saturating_sub(sites_placed)) {
                        match target.binary.file_offset(pc) {
                            Some(off) => match probes.attach(Probe::Site, &target.process.exe_path(), &[off]) {
                                Ok(()) => {
                                    tracker.site_placed(pc, start.elapsed());
                                    sites_placed += 1;
                                    // A site many goroutines pass is hot: judge it soon,
                                    // on a window that starts now.
                                    budget.reset_at(tokio::time::Instant::now() + QUICK_CHECK);
                                    last_counts = probes.counts()?;
                                    last_tick = Instant::now();
                                }
                                Err(e) => log::warn!("targeted probe at {pc:#x}: {e:#}"),
                            },
                            None => log::warn!("targeted probe at {pc:#x}: not in a loadable segment"),
                        }
                    }
                }
            }
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            _ = pidfd.readable() => break Stop::TargetExited,
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break Stop::Duration,
        }
    };
    // Finishing (detaching, a last snapshot, the report) takes a second on a large target:
    // a further signal abandons it.
    let signals_at_stop = signals::received();
    let abandoned = || signals::received() > signals_at_stop;
    match stop {
        Stop::Duration | Stop::Signal(_) => eprintln!(
            "leaktrace: stopping ({}): detaching, then the report; SIGINT or SIGTERM again abandons it",
            match stop {
                Stop::Signal(s) => format!("{s} received"),
                _ => "duration reached".to_string(),
            }
        ),
        Stop::TargetExited | Stop::TargetExeced => {}
    }
    // What the programs sent before we stopped is still in the ring buffer.
    collector::drain(records.get_mut(), |rec| {
        handle(&mut model, &mut tracker, &mut hist, rec, &mut events)
    });
    let counts = probes.counts()?;
    // Only what the sampler saw: where the budget did not place it, a group's allocations
    // and the sites are unknown, not zero.
    let sampled = counts.hits(Probe::Refill) + counts.hits(Probe::Large) > 0
        || probes.attached().contains(&Probe::Refill);
    let samples = if plan.fallback && sampled {
        probes.samples().ok()
    } else {
        None
    };
    let attached: Vec<String> = probes
        .attached()
        .iter()
        .map(|p| p.function().to_string())
        .collect();
    let alloc_probed = counts.hits(Probe::Alloc) > 0;
    let allocations = if alloc_probed {
        probes.allocations().unwrap_or_default()
    } else {
        HashMap::new()
    };
    let hits: BTreeMap<String, u64> = Probe::ALL
        .into_iter()
        .filter(|p| counts.hits(*p) > 0)
        .map(|p| (p.function().to_string(), counts.hits(p)))
        .collect();
    if matches!(stop, Stop::Duration | Stop::Signal(_)) {
        timeline.extend(memory_point(&target, &probes, start.elapsed(), None));
    }
    drop(records);
    drop(probes); // detaches every uprobe and unloads the programs
    if let Some((_, server)) = metrics {
        server.abort();
    }
    // A last look, unless the target is gone: the verdict is about its state now. Not
    // after a Ctrl-C while attaching, whose snapshot is only just taken: stop promptly.
    if snapshot_error.is_none()
        && matches!(stop, Stop::Duration | Stop::Signal(_))
        && !interrupted_attaching
        && !abandoned()
        && let Ok(gs) = observe(&target, &mut g_addrs)
    {
        if let Some(p) = timeline.last_mut() {
            p.goroutines = Some(gs.len());
        }
        tracker.observe(start.elapsed(), gs);
    }
    if let Some(mut w) = events {
        w.flush().context("writing the event log")?;
    }
    if abandoned() {
        return Err(Interrupted::now(
            "again while finishing: the report was abandoned; all probes detached",
        )
        .into());
    }
    let last = model.take_interval();
    if last.total_parks() + last.total_wakes() > 0 {
        println!(
            "{}",
            live::interval_line(
                start.elapsed(),
                &last,
                &target.layout.wait_reasons,
                counts.lost - lost_reported
            )
        );
    }
    let why = match stop {
        Stop::Duration => "duration reached".to_string(),
        Stop::Signal(s) => format!("{s} received"),
        Stop::TargetExited => match spawned.and_then(spawn::reap) {
            Some(code) => format!("PID {pid} exited with status {code}"),
            None => format!("PID {pid} exited"),
        },
        Stop::TargetExeced => format!("PID {pid} exec'd another program"),
    };
    eprintln!(
        "leaktrace: stopped after {:.1} s ({why}); all probes detached",
        start.elapsed().as_secs_f64()
    );
    print!(
        "{}",
        live::summary(
            &model.total,
            &target.layout.wait_reasons,
            counts.lost,
            model.goroutines.len()
        )
    );
    if counts.read_errors > 0 {
        eprintln!(
            "leaktrace: {} probe hits could not read the target's memory and were not recorded",
            counts.read_errors
        );
    }
    let name = |m: &BTreeMap<u8, u64>| -> BTreeMap<String, u64> {
        m.iter()
            .map(|(r, n)| (target.reason_name(*r), *n))
            .collect()
    };
    let mut leaks = tracker.leaks(&detect);
    if target.process.is_alive() {
        estimate_pinned(&target, &leaks, &g_addrs, &mut pinned, true);
    }
    for l in &mut leaks {
        l.pinned = pinned.get(&group_key(l)).map(|(_, _, p)| p.clone());
        if alloc_probed {
            l.allocated = Some(alloc::sites::sum_allocations(
                &l.goids,
                &allocations,
                "exact",
            ));
        } else if let Some(smp) = &samples {
            l.allocated = Some(alloc::sites::sum_allocations(
                &l.goids,
                &smp.by_goroutine,
                "sampled",
            ));
        }
        for age in &l.ages {
            hist.record("leak_blocked_ms", age.as_millis() as u64);
        }
    }
    if plan.reads_profile() && target.process.is_alive() {
        profile_last = alloc::profile::read(&target).ok().or(profile_last);
    }
    let allocation_sites = alloc::sites::report(
        &target,
        &plan,
        &profile_start,
        profile_last,
        samples.as_ref(),
    );
    for &(size, n) in &allocation_sites.sizes {
        hist.record_n("alloc_size_bytes", size, n);
    }
    let allocations_pprof = match (&samples, &allocation_sites.profile) {
        (Some(smp), _) => Some(pprof::sampled_allocations(
            &target,
            smp,
            plan.classes.as_ref(),
        )),
        (None, Some(profile)) => Some(pprof::heap_allocations(profile, &target)),
        (None, None) => None,
    };
    hist.close_interval(start.elapsed());
    let memory_verdict = verdict::judge(&timeline, leaks.len(), allocation_sites.growing.clone());
    let report = Report {
        pid,
        executable: target.process.exe_name(),
        go_version: target.binary.build().version_string.clone(),
        stopped: why,
        observed_seconds: start.elapsed().as_secs_f64(),
        snapshots: tracker.snapshots(),
        min_age_seconds: opts.min_age.as_secs_f64(),
        parks: name(&model.total.parks),
        wakes: name(&model.total.wakes),
        goroutines_created: model.created,
        goroutines_exited: model.exited,
        memory_timeline: timeline,
        memory_verdict,
        probes: ProbeSummary {
            attached,
            hits,
            lost_records: counts.lost,
            shed,
            hit_cost_us: hit_cost.as_secs_f64() * 1e6,
            estimated_before_attach: estimated,
        },
        allocations: alloc_probed.then_some(Allocated {
            count: counts.hits(Probe::Alloc),
            bytes: counts.alloc_bytes,
            source: "exact",
        }),
        allocation_sites: allocation_sites.report,
        histograms: hist.percentiles(),
        leaks,
    };
    let text = text::text(&report);
    print!("\n{text}");
    if let Some(dir) = &opts.output {
        exports::write_all(dir, &report, &hist, allocations_pprof.as_ref(), abandoned)?;
    }
    Ok(Outcome { stop, report })
}

/// How often, at most, one leak group's pinned memory is estimated again while tracing.
const PINNED_EVERY: Duration = Duration::from_secs(10);

/// A leak group's identity across snapshots.
fn group_key(l: &LeakGroup) -> String {
    let site = l
        .site
        .as_ref()
        .map(|f| format!("{} {}:{}", f.function, f.file, f.line))
        .unwrap_or_default();
    let creator = l
        .created_by
        .as_ref()
        .map(|c| format!("{} {}:{}", c.function, c.file, c.line))
        .unwrap_or_default();
    format!("{}|{site}|{creator}", l.wait_reason)
}

/// Estimates the memory each of `leaks` pins, from a read of the target, unless `cache`
/// holds a recent estimate of a group of the same size (or `fresh` says to redo them all).
/// A target that has exited keeps its last estimates.
fn estimate_pinned(
    target: &Target,
    leaks: &[LeakGroup],
    addr: &HashMap<u64, u64>,
    cache: &mut HashMap<String, (Instant, usize, Pinned)>,
    fresh: bool,
) {
    let stale: Vec<&LeakGroup> = leaks
        .iter()
        .filter(|l| {
            fresh
                || cache
                    .get(&group_key(l))
                    .is_none_or(|(at, count, _)| *count != l.count && at.elapsed() >= PINNED_EVERY)
        })
        .collect();
    if stale.is_empty() {
        return;
    }
    for l in stale {
        let g_addrs: Vec<u64> = l
            .goids
            .iter()
            .filter_map(|g| addr.get(g).copied())
            .collect();
        match retained::estimate(target, &g_addrs, retained::Limits::default()) {
            Ok(r) => {
                cache.insert(
                    group_key(l),
                    (
                        Instant::now(),
                        l.count,
                        Pinned {
                            stack_bytes: r.stack_bytes,
                            heap_bytes: r.heap_bytes,
                            heap_objects: r.heap_objects,
                            truncated: r.truncated,
                            method: retained::METHOD.to_string(),
                        },
                    ),
                );
            }
            Err(e) => log::warn!("estimating the memory a leak group pins: {e:#}"),
        }
    }
}
