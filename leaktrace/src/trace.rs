//! The live trace (`leaktrace -p PID`): identify the target, attach the probes, stream records
//! into the model, print a line per interval, and stop on Ctrl-C, SIGTERM, `--duration`, or
//! when the target exits or execs. Every probe is detached before this returns.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use leaktrace_common::{Config, Record, RecordKind};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    collector,
    model::{Applied, Model},
    probes::{Probe, Probes},
    report::live,
    target::Target,
};

#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub pid: u32,
    pub duration: Option<Duration>,
    pub interval: Duration,
    /// Write every record as a JSON line here.
    pub events: Option<PathBuf>,
}

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Duration,
    Signal(&'static str),
    TargetExited,
    TargetExeced,
}

pub async fn run(opts: TraceOptions) -> anyhow::Result<Stop> {
    crate::privileges::check().map_err(|e| anyhow!(e))?;
    let target = Target::inspect(opts.pid)?;
    let config = Config {
        tgid: opts.pid,
        g_goid: target.layout.g.goid,
        g_m: target.layout.g.m,
        m_curg: target.layout.m.curg,
        ..Config::default()
    };
    let mut probes = Probes::load(config)?;
    let exe = target.process.exe_path();
    for probe in Probe::ALL {
        let f = target.binary.function(probe.function()).ok_or_else(|| {
            anyhow!(
                "PID {} ({}): no function {} in the binary; is it a Go program built with a supported toolchain?",
                opts.pid,
                target.process.exe_name(),
                probe.function()
            )
        })?;
        let offset = target.binary.file_offset(f.addr).ok_or_else(|| {
            anyhow!(
                "{} at {:#x} is outside every loadable segment",
                f.name,
                f.addr
            )
        })?;
        probes.attach(probe, &exe, offset)?;
    }
    let records = probes.take_records()?;
    eprintln!(
        "leaktrace: attached to PID {} ({}, {}): probes on {}; Ctrl-C to stop",
        opts.pid,
        target.process.exe_name(),
        target.binary.build().version_string,
        Probe::ALL.map(|p| p.function()).join(", ")
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
    let start = Instant::now();
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + opts.interval, opts.interval);
    let mut lost_reported = 0;

    let handle = |model: &mut Model, rec: Record, events: &mut Option<BufWriter<File>>| {
        // A morestack re-entry of gopark is the same park: not logged twice.
        if model.apply(&rec) == Applied::ReEntry {
            return;
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
                        handle(&mut model, rec, &mut events);
                    }
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                let counts = probes.counts()?;
                let t = model.take_interval();
                println!("{}", live::interval_line(start.elapsed(), &t, &target.layout.wait_reasons, counts.lost - lost_reported));
                lost_reported = counts.lost;
                if target.process.has_execed() {
                    break Stop::TargetExeced;
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
            handle(&mut model, rec, &mut events);
        }
    }
    let counts = probes.counts()?;
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
    drop(records);
    drop(probes); // detaches every uprobe and unloads the programs
    if let Some(mut w) = events {
        w.flush().context("writing the event log")?;
    }
    let why = match stop {
        Stop::Duration => "duration reached".to_string(),
        Stop::Signal(s) => format!("{s} received"),
        Stop::TargetExited => format!("PID {} exited", opts.pid),
        Stop::TargetExeced => format!("PID {} exec'd another program", opts.pid),
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
    Ok(stop)
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
