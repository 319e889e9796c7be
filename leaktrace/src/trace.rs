//! The live trace (`leaktrace -p PID`, `leaktrace record`): identify the target (or spawn it),
//! take a snapshot of its goroutines, attach the park/wake probes if they fit the overhead
//! budget, then follow it: records into the model, a snapshot every `--snapshot-interval`
//! into the leak detector, a line per interval. Stops on Ctrl-C, SIGTERM, `--duration`, or
//! when the target exits or execs, then reports. Every probe is detached before the report.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use leaktrace_common::{Config, Record, RecordKind};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    census::{self, channels},
    collector,
    detect::{DetectOptions, Observed, Tracker},
    model::{Applied, Model},
    probes::{HIT_COST, Probe, Probes},
    report::{
        leaks::{self, ProbeSummary, Report},
        live,
    },
    target::{Target, binary::GoBinary, layout, process::Process, spawn},
};

/// What to trace.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// A running process.
    Pid(u32),
    /// Spawn this command and trace it from its first instruction.
    Spawn(Vec<OsString>),
}

/// Whether the runtime-wide park/wake probes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    /// Attach, and shed them if their measured cost exceeds --max-overhead.
    Auto,
    /// Keep them whatever they cost (say so).
    On,
    /// Snapshots only.
    Off,
}

#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub target: TargetSpec,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub snapshot_interval: Duration,
    pub min_age: Duration,
    pub probes: ProbeMode,
    /// The most of one CPU the probes may cost the target, as a fraction (0.01 = 1%).
    pub max_overhead: f64,
    /// Write every record as a JSON line here.
    pub events: Option<PathBuf>,
    /// Write report.txt and report.json here.
    pub output: Option<PathBuf>,
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
        ..Config::default()
    }
}

/// Loads the programs and, unless `mode` is Off, places the park/wake probes on `exe`.
fn attach(
    pid: u32,
    binary: &GoBinary,
    layout: &layout::RuntimeLayout,
    exe: &Path,
    mode: ProbeMode,
) -> anyhow::Result<Probes> {
    let mut probes = Probes::load(config_for(pid, layout))?;
    if mode == ProbeMode::Off {
        return Ok(probes);
    }
    for probe in Probe::ALL {
        let f = binary.function(probe.function()).ok_or_else(|| {
            anyhow!(
                "{}: no function {} in the binary; is it a Go program built with a supported toolchain?",
                exe.display(),
                probe.function()
            )
        })?;
        let offset = binary.file_offset(f.addr).ok_or_else(|| {
            anyhow!(
                "{} at {:#x} is outside every loadable segment",
                f.name,
                f.addr
            )
        })?;
        probes.attach(probe, exe, offset)?;
    }
    Ok(probes)
}

/// The goroutines of a snapshot as the detector sees them (runtime goroutines left out).
fn observe(target: &Target) -> anyhow::Result<Vec<Observed>> {
    let gs = census::goroutines::walk(target)?;
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

/// Creates `dir/name` for writing, refusing to follow a symlink planted there.
fn create_output(dir: &Path, name: &str) -> anyhow::Result<File> {
    let path = dir.join(name);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))
}

pub async fn run(opts: TraceOptions) -> anyhow::Result<Outcome> {
    crate::privileges::check().map_err(|e| anyhow!(e))?;
    if let Some(dir) = &opts.output {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (target, mut probes, spawned) = match &opts.target {
        TargetSpec::Pid(pid) => {
            let target = Target::inspect(*pid)?;
            let probes = attach(
                *pid,
                &target.binary,
                &target.layout,
                &target.process.exe_path(),
                opts.probes,
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
            let held = spawn::hold(argv)?;
            let pid = held.pid;
            let probes = attach(pid, &binary, &layout, &held.program, opts.probes)?;
            held.release()?;
            let target = Target::from_parts(Process::open(pid)?, binary)?;
            (target, probes, Some(pid))
        }
    };
    let pid = target.process.pid();
    let records = probes.take_records()?;
    let start = Instant::now();
    // bpf_ktime_get_ns is CLOCK_MONOTONIC: records are placed in trace time with it.
    let start_mono_ns = census::goroutines::monotonic_ns() as u64;
    let mut tracker = Tracker::default();
    if !probes.attached().is_empty() {
        tracker.probes_active(Duration::ZERO);
    }
    // The snapshot at attach time sees what happened before: goroutines blocked for hours.
    let mut snapshot_error = None;
    match observe(&target) {
        Ok(gs) => tracker.observe(start.elapsed(), gs),
        Err(e) => snapshot_error = Some(e),
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
        "leaktrace: attached to PID {pid} ({}, {}): {}; snapshot every {:.1} s; Ctrl-C to stop",
        target.process.exe_name(),
        target.binary.build().version_string,
        if probe_list.is_empty() {
            "no probes".to_string()
        } else {
            format!("probes on {}", probe_list.join(", "))
        },
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
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let first_tick = tokio::time::Instant::now() + opts.interval;
    let mut tick = tokio::time::interval_at(first_tick, opts.interval);
    let first_snap = tokio::time::Instant::now() + opts.snapshot_interval;
    let mut snap = tokio::time::interval_at(first_snap, opts.snapshot_interval);
    let mut last_counts = probes.counts()?;
    let mut last_tick = Instant::now();
    let mut lost_reported = 0;
    let mut shed = None;
    let detect = DetectOptions {
        min_age: opts.min_age,
    };

    let handle = |model: &mut Model,
                  tracker: &mut Tracker,
                  rec: Record,
                  events: &mut Option<BufWriter<File>>| {
        let applied = model.apply(&rec);
        // A morestack re-entry of gopark is the same park: not logged twice.
        if applied == Applied::ReEntry {
            return;
        }
        if let Applied::Woken { .. } = applied {
            tracker.record_wake(
                rec.goid,
                Duration::from_nanos(rec.ts_ns.saturating_sub(start_mono_ns)),
            );
        }
        if let Some(w) = events.as_mut() {
            let _ = writeln!(w, "{}", event_json(&target, &rec));
        }
    };

    let stop = loop {
        tokio::select! {
            guard = records.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if let Some(rec) = collector::decode(&item) {
                        handle(&mut model, &mut tracker, rec, &mut events);
                    }
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let counts = probes.counts()?;
                let hits = (counts.gopark_hits + counts.ready_hits) - (last_counts.gopark_hits + last_counts.ready_hits);
                let secs = last_tick.elapsed().as_secs_f64().max(1e-3);
                let cost = hits as f64 / secs * HIT_COST.as_secs_f64();
                if cost > opts.max_overhead && !probes.attached().is_empty() {
                    let msg = format!(
                        "the park/wake probes fired {:.0} times/s, an estimated {:.1}% of a CPU (over --max-overhead {:.1}%)",
                        hits as f64 / secs, cost * 100.0, opts.max_overhead * 100.0
                    );
                    if opts.probes == ProbeMode::Auto {
                        for p in probes.attached() {
                            probes.detach(p)?;
                        }
                        tracker.probes_inactive();
                        eprintln!("leaktrace: {msg}: detached them; following goroutine snapshots only");
                        shed = Some(msg);
                    } else if shed.is_none() {
                        eprintln!("leaktrace: warning: {msg}; kept because of --probes on");
                        shed = Some(format!("{msg} (kept: --probes on)"));
                    }
                }
                last_counts = counts;
                last_tick = Instant::now();
                let t = model.take_interval();
                let suspects = tracker.leaks(&detect).len();
                println!(
                    "{} | suspects {suspects}",
                    live::interval_line(start.elapsed(), &t, &target.layout.wait_reasons, counts.lost - lost_reported)
                );
                lost_reported = counts.lost;
                if target.process.has_execed() {
                    break Stop::TargetExeced;
                }
            }
            _ = snap.tick(), if snapshot_error.is_none() => {
                match observe(&target) {
                    Ok(gs) => tracker.observe(start.elapsed(), gs),
                    Err(e) if !target.process.is_alive() => log::debug!("snapshot after exit: {e:#}"),
                    Err(e) => eprintln!("leaktrace: snapshot failed: {e:#}"),
                }
            }
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            _ = pidfd.readable() => break Stop::TargetExited,
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break Stop::Duration,
        }
    };
    // What the programs sent before we stopped is still in the ring buffer.
    let rb = records.get_mut();
    while let Some(item) = rb.next() {
        if let Some(rec) = collector::decode(&item) {
            handle(&mut model, &mut tracker, rec, &mut events);
        }
    }
    let counts = probes.counts()?;
    let attached: Vec<String> = probes
        .attached()
        .iter()
        .map(|p| p.function().to_string())
        .collect();
    drop(records);
    drop(probes); // detaches every uprobe and unloads the programs
    // A last look, unless the target is gone: the verdict is about its state now.
    if snapshot_error.is_none()
        && matches!(stop, Stop::Duration | Stop::Signal(_))
        && let Ok(gs) = observe(&target)
    {
        tracker.observe(start.elapsed(), gs);
    }
    if let Some(mut w) = events {
        w.flush().context("writing the event log")?;
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
        probes: ProbeSummary {
            attached,
            gopark_hits: counts.gopark_hits,
            ready_hits: counts.ready_hits,
            lost_records: counts.lost,
            shed,
        },
        leaks: tracker.leaks(&detect),
    };
    let text = leaks::text(&report);
    print!("\n{text}");
    if let Some(dir) = &opts.output {
        create_output(dir, "report.txt")?.write_all(text.as_bytes())?;
        let mut json = serde_json::to_string_pretty(&report)?;
        json.push('\n');
        create_output(dir, "report.json")?.write_all(json.as_bytes())?;
        eprintln!(
            "leaktrace: wrote {0}/report.txt and {0}/report.json",
            dir.display()
        );
    }
    Ok(Outcome { stop, report })
}

fn event_json(target: &Target, r: &Record) -> String {
    match RecordKind::from_u8(r.kind) {
        Some(RecordKind::Park) => serde_json::json!({
            "ts_ns": r.ts_ns,
            "kind": "park",
            "goid": r.goid,
            "reason": target.reason_name(r.reason),
            "reason_value": r.reason,
            "wait_addr": format!("{:#x}", r.addr),
            "caller": target.function_at_return(r.pc),
            "tid": r.tid,
        }),
        Some(RecordKind::Wake) => serde_json::json!({
            "ts_ns": r.ts_ns,
            "kind": "wake",
            "goid": r.goid,
            "waker_goid": r.other_goid,
            "tid": r.tid,
        }),
        None => serde_json::json!({ "kind": "unknown", "raw_kind": r.kind }),
    }
    .to_string()
}
