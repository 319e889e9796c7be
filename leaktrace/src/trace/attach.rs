//! Attaching: one path for a running process (`-p`) and a spawned command (`-- CMD`),
//! returning a session. The binary is identified, the BPF programs loaded, the goroutines
//! read (before any probe on a running process, so that the probes' first burst is short;
//! once the command runs when spawned), and the chosen probes placed, those that fit the
//! budget on a running process; then the session is set up and says what was placed.
//! Ctrl-C at any point places no further probe.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use aya::maps::{MapData, RingBuf};
use leaktrace_common::Config;

use super::{
    TargetSpec, TraceOptions,
    apply::Findings,
    budget,
    session::{Session, memory_point},
    snapshot::{self, Snapshot},
    windows::{SchedRead, Windows},
};
use crate::{
    alloc::{self, AllocPlan},
    census::{self, Census, activity::ActivityEstimate, retained::AddrMap},
    detect::{DetectOptions, Tracker, pinned::PinnedEstimates},
    probes::{HitCosts, Probe, Probes, calibrate::HitCost},
    report::prometheus,
    signals::{self, Interrupted},
    tracee::{Target, binary::GoBinary, layout, process::Process, spawn},
};

/// A target with leaktrace's programs loaded and the chosen probes placed.
pub(super) struct Attached {
    pub target: Target,
    pub probes: Probes,
    /// What a hit of each probe costs the target.
    pub costs: HitCosts,
    pub plan: AllocPlan,
    /// The spawned command's PID (reaped at the end, for its exit status).
    pub spawned: Option<u32>,
    /// When the trace started, and the same moment on the BPF clock (CLOCK_MONOTONIC).
    pub start: Instant,
    pub start_mono_ns: u64,
    /// The first snapshot, or why it failed; none when a signal came first.
    pub first: Option<anyhow::Result<Snapshot>>,
    /// What the first snapshot learnt, for the next ones.
    pub census: Census,
    /// Probes the pre-attach estimate kept off, and why.
    pub not_placed: Vec<String>,
    /// Those to place in windows instead, with their file offsets, and how often they
    /// would fire together (per second), when estimated.
    pub windowed: Vec<(Probe, Vec<u64>)>,
    pub windowed_rate: Option<f64>,
    pub estimated: Option<ActivityEstimate>,
    /// A signal came while attaching: no further probe was placed.
    pub interrupted: bool,
}

pub(super) fn attach(opts: &TraceOptions, measured: HitCost) -> anyhow::Result<Attached> {
    let start = Instant::now();
    let start_mono_ns = census::goroutines::monotonic_ns() as u64;
    let mut a = match &opts.target {
        TargetSpec::Pid(pid) => running(*pid, opts, measured, start)?,
        TargetSpec::Spawn(argv) => spawned(argv, opts, measured, start)?,
    };
    a.start_mono_ns = start_mono_ns;
    a.interrupted = signals::received() > 0;
    if a.interrupted {
        eprintln!(
            "leaktrace: {} received while attaching to PID {}: no further probe placed; stopping",
            signals::name(signals::last()),
            a.target.process.pid()
        );
    }
    Ok(a)
}

/// A running process: read first, then place what fits the budget.
fn running(
    pid: u32,
    opts: &TraceOptions,
    measured: HitCost,
    start: Instant,
) -> anyhow::Result<Attached> {
    let target = Target::inspect(pid)?;
    let costs = HitCosts::for_binary(measured, &target.binary);
    let (mut probes, plan) = load(pid, &target.binary, &target.layout, opts)?;
    eprintln!(
        "leaktrace: attaching to PID {pid} ({}, {}): reading its goroutines, then placing probes",
        target.process.exe_name(),
        target.binary.build().version_string
    );
    // The snapshot at attach time sees what happened before: goroutines blocked for hours.
    // It is taken before any probe is placed, so that the probes' first burst is short.
    let mut census = Census::new();
    let first = (signals::received() == 0).then(|| snapshot::take(&mut census, &target));
    let mut not_placed = Vec::new();
    let mut estimated = None;
    let (mut windowed, mut windowed_rate) = (Vec::new(), None);
    let wanted = if signals::received() == 0 {
        let fit = budget::fitting(
            &target,
            &with(&opts.probes, &plan.probes),
            &plan.exempt,
            opts.max_overhead,
            &costs,
        );
        if plan.exempt.contains(&Probe::Alloc) {
            announce_exact(
                costs.of(Probe::Alloc),
                fit.estimated.and_then(|e| e.allocations_per_second),
            );
        }
        not_placed.extend(fit.not_placed);
        estimated = fit.estimated;
        windowed_rate = fit.windowed_rate;
        for p in fit.windowed {
            if let Some(offs) = offsets(&target.binary, p)? {
                windowed.push((p, offs));
            }
        }
        fit.probes
    } else {
        Vec::new()
    };
    place(
        &mut probes,
        &target.binary,
        &target.process.probe_path(),
        &wanted,
        &|| target.process.is_alive(),
    )?;
    Ok(Attached {
        target,
        probes,
        costs,
        plan,
        spawned: None,
        start,
        start_mono_ns: 0,
        first,
        census,
        not_placed,
        windowed,
        windowed_rate,
        estimated,
        interrupted: false,
    })
}

/// A command to spawn: held before its exec until every chosen probe is placed (nothing
/// can be estimated before it runs; the measured check judges them), then read once it runs.
fn spawned(
    argv: &[std::ffi::OsString],
    opts: &TraceOptions,
    measured: HitCost,
    start: Instant,
) -> anyhow::Result<Attached> {
    let program = spawn::resolve(Path::new(
        argv.first()
            .ok_or_else(|| anyhow!("no command given after --"))?,
    ))?;
    let binary = GoBinary::open(&program).map_err(|e| anyhow!("{e}"))?;
    let v = binary.version();
    let layout = layout::for_binary(binary.data(), v.major, v.minor)?;
    let costs = HitCosts::for_binary(measured, &binary);
    let held = spawn::hold(argv, opts.stdout_taken())?;
    let pid = held.pid;
    let (mut probes, plan) = load(pid, &binary, &layout, opts)?;
    if plan.exempt.contains(&Probe::Alloc) {
        announce_exact(costs.of(Probe::Alloc), None);
    }
    place(
        &mut probes,
        &binary,
        &held.program,
        &with(&opts.probes, &plan.probes),
        &|| true, // held before its exec: it cannot have gone
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
    let mut census = Census::new();
    let first = Some(snapshot::take(&mut census, &target));
    Ok(Attached {
        target,
        probes,
        costs,
        plan,
        spawned: Some(pid),
        start,
        start_mono_ns: 0,
        first,
        census,
        not_placed: Vec::new(),
        windowed: Vec::new(),
        windowed_rate: None,
        estimated: None,
        interrupted: false,
    })
}

/// Loads the BPF programs for PID and decides where allocation figures come from.
fn load(
    pid: u32,
    binary: &GoBinary,
    layout: &layout::RuntimeLayout,
    opts: &TraceOptions,
) -> anyhow::Result<(Probes, AllocPlan)> {
    let plan = alloc::plan::plan(binary, opts.alloc);
    let mut probes = Probes::load(config_for(pid, layout), opts.ring_bytes)?;
    if let Some(c) = &plan.classes {
        probes.set_span_bytes(&c.by_span_class())?;
    }
    Ok((probes, plan))
}

/// `--alloc exact` states its cost before it starts, at the target's allocation rate when
/// it could be read.
fn announce_exact(hit_cost: Duration, allocs_per_second: Option<f64>) {
    let us = hit_cost.as_secs_f64() * 1e6;
    let at_rate = allocs_per_second
        .map(|a| {
            format!(
                "; at the ~{a:.0} allocations/s it makes now, that is about {:.1}% of a CPU",
                a * hit_cost.as_secs_f64() * 100.0
            )
        })
        .unwrap_or_default();
    eprintln!(
        "leaktrace: --alloc exact probes every allocation: each costs the target about {us:.1} us more (one probe hit, measured here; a small allocation alone takes about 30 ns){at_rate}"
    );
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
        g_tracking_seq: layout.g.tracking_seq,
        ..Config::default()
    }
}

/// Places `wanted` on `exe`. A target that exits meanwhile (`alive` turns false) ends the
/// placing, not the trace: the trace then stops as for any target that exits, with its
/// report.
fn place(
    probes: &mut Probes,
    binary: &GoBinary,
    exe: &Path,
    wanted: &[Probe],
    alive: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    for &probe in wanted {
        if signals::received() > 0 {
            break; // Ctrl-C while attaching: no further probe
        }
        if let Some(offsets) = offsets(binary, probe)? {
            match probes.attach(probe, exe, &offsets) {
                Ok(()) => {}
                Err(_) if !alive() => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The file offsets to place `probe` at in `binary`; none for the targeted probes (placed
/// while tracing) and for a runtime function the program does not contain (said once).
pub(super) fn offsets(binary: &GoBinary, probe: Probe) -> anyhow::Result<Option<Vec<u64>>> {
    if probe == Probe::Site {
        return Ok(None); // placed while tracing, at the suspects' sites
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
        return Ok(None);
    }
    probe
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
        .collect::<anyhow::Result<Vec<u64>>>()
        .map(Some)
}

/// `wanted` and `more`, each once.
fn with(wanted: &[Probe], more: &[Probe]) -> Vec<Probe> {
    let mut v: Vec<Probe> = wanted.iter().chain(more).copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl Session {
    /// Sets up the trace after attaching; returns it with the ring buffer the records come
    /// through.
    pub async fn start(
        opts: TraceOptions,
        a: Attached,
    ) -> anyhow::Result<(Self, RingBuf<MapData>)> {
        let Attached {
            target,
            mut probes,
            costs,
            plan,
            spawned,
            start,
            start_mono_ns,
            first,
            census,
            not_placed,
            windowed,
            windowed_rate,
            estimated,
            interrupted,
        } = a;
        let mut windows = Windows::default();
        windows.add(windowed, windowed_rate, &costs);
        windows.read_sched(&target, SchedRead::Start);
        let records = probes.take_records()?;
        if let Some(e) = &probes.madvise_error {
            eprintln!("leaktrace: madvise not traced: {e}");
        }
        let mut tracker = Tracker::default();
        let (mut g_addrs, mut snapshot_error, mut goroutines_now) =
            (AddrMap::default(), None, None);
        match first {
            Some(Ok(s)) => {
                goroutines_now = Some(s.observed.len());
                tracker.observe(s.taken.duration_since(start), s.observed);
                g_addrs = s.g_addrs;
            }
            Some(Err(e)) => snapshot_error = Some(e),
            None => {}
        }
        let timeline = memory_point(&target, &probes, start.elapsed(), goroutines_now)
            .into_iter()
            .collect();
        let profile_start = alloc::profile::read(&target);
        if let Some(note) = &plan.note {
            eprintln!("leaktrace: {note}");
        }
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
        let attached = probes.attached();
        if attached.contains(&Probe::Gopark) && attached.contains(&Probe::Ready) {
            tracker.probes_active(Duration::ZERO);
        }
        if Probe::CHANNEL_OPS.iter().all(|p| attached.contains(p)) {
            tracker.chan_probes_active(Duration::ZERO);
        }
        if let Some(e) = &snapshot_error {
            eprintln!("leaktrace: goroutine snapshots unavailable, following probes only: {e:#}");
        }
        say_attached(&target, &probes, &windows, &costs, &opts);
        let events: Option<BufWriter<Box<dyn Write>>> = match &opts.events {
            Some(_) if opts.events_to_stdout() => Some(BufWriter::new(Box::new(std::io::stdout()))),
            Some(path) => Some(BufWriter::new(Box::new(
                File::create(path).with_context(|| format!("creating {}", path.display()))?,
            ))),
            None => None,
        };
        let pricing = super::pricing::Pricing::start(&probes);
        let session = Self {
            pricing,
            detect: DetectOptions {
                min_age: opts.min_age,
            },
            sites: super::sites::Sites::new(opts.probes.contains(&Probe::Site)),
            next_snapshot: tokio::time::Instant::now() + opts.snapshot_interval,
            snapshots_paced: false,
            last_counts: probes.counts()?,
            last_check: Instant::now(),
            findings: Findings::new(tracker, events, start_mono_ns),
            opts,
            target,
            probes,
            plan,
            costs,
            start,
            spawned,
            interrupted_attaching: interrupted,
            g_addrs,
            census,
            snapshot_error,
            timeline,
            profile_start,
            profile_last: None,
            pinned: PinnedEstimates::default(),
            pinned_next: Instant::now(),
            pinned_shown: false,
            metrics,
            shed: not_placed,
            estimated,
            lost_reported: 0,
            prover: None,
            proof_next: Instant::now(),
            proof_pace: Default::default(),
            announced: crate::report::live::Announced::default(),
            windows,
            continuous_cost: 0.0,
        };
        Ok((session, records))
    }
}

/// The attach line: what was placed, continuously or in windows, what a hit costs, how
/// often snapshots come.
fn say_attached(
    target: &Target,
    probes: &Probes,
    windows: &Windows,
    costs: &HitCosts,
    opts: &TraceOptions,
) {
    let names = |ps: &[Probe], f: fn(Probe) -> &'static str| {
        ps.iter().map(|p| f(*p)).collect::<Vec<_>>().join(", ")
    };
    let placed = probes.attached();
    let what = match (placed.is_empty(), windows.probes.is_empty()) {
        (true, true) => "no probes".to_string(),
        (false, true) => format!("probes on {}", names(&placed, Probe::function)),
        (true, false) => format!(
            "{} in short windows, no continuous probes",
            names(&windows.probes, Probe::name)
        ),
        (false, false) => format!(
            "probes on {}; {} in short windows",
            names(&placed, Probe::function),
            names(&windows.probes, Probe::name)
        ),
    };
    eprintln!(
        "leaktrace: attached to PID {} ({}, {}): {what} (a hit costs {:.1} us here on a function's entry, {:.1} us on a return or a site{}); snapshot every {:.1} s; Ctrl-C to stop",
        target.process.pid(),
        target.process.exe_name(),
        target.binary.build().version_string,
        costs.measured.emulated.as_secs_f64() * 1e6,
        costs.measured.stepped.as_secs_f64() * 1e6,
        if opts.max_overhead.is_finite() {
            ""
        } else {
            ", no budget"
        },
        opts.snapshot_interval.as_secs_f64()
    );
}
