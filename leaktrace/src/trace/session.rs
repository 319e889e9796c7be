//! A trace's state from attach to report: the target and its probes, what was learnt
//! (`Findings`), the memory timeline, the heap profile, the budget's bookkeeping and the
//! outputs that run alongside (Prometheus, the event log). [`Session::start`] sets it up
//! after attaching and says what was placed; the stages (`follow`, `snapshot`, `budget`,
//! `apply`, `finish`) are its methods.

use std::{
    collections::HashMap,
    fs::File,
    io::BufWriter,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};

use super::{
    TraceOptions, apply::Findings, attach::Attached, budget::CHANNEL_PROBES, snapshot::memory_point,
};
use crate::{
    alloc::{self, AllocPlan, HeapProfile},
    census::activity::ActivityEstimate,
    detect::{DetectOptions, Tracker, pinned::PinnedEstimates},
    model::MemoryPoint,
    probes::{Counts, Probe, Probes},
    report::prometheus,
    tracee::Target,
};

pub(super) struct Session {
    pub opts: TraceOptions,
    pub target: Target,
    pub probes: Probes,
    pub plan: AllocPlan,
    /// What one probe hit costs here, measured at start-up.
    pub hit_cost: Duration,
    pub start: Instant,
    /// The spawned command's PID.
    pub spawned: Option<u32>,
    /// A signal came while attaching.
    pub interrupted_attaching: bool,
    pub findings: Findings,
    pub detect: DetectOptions,
    /// The g address of every goroutine of the last snapshot, by goid.
    pub g_addrs: HashMap<u64, u64>,
    /// Why goroutine snapshots cannot be taken, when they cannot.
    pub snapshot_error: Option<anyhow::Error>,
    pub next_snapshot: tokio::time::Instant,
    pub timeline: Vec<MemoryPoint>,
    /// The runtime's heap profile at the start and at the last snapshot (a target that
    /// exits can no longer be read at the end).
    pub profile_start: anyhow::Result<HeapProfile>,
    pub profile_last: Option<HeapProfile>,
    pub pinned: PinnedEstimates,
    pub pinned_next: Instant,
    /// The Prometheus endpoint's feed and server.
    pub metrics: Option<(
        tokio::sync::watch::Sender<String>,
        tokio::task::JoinHandle<()>,
    )>,
    /// The budget's last check: the counters then, and when.
    pub last_counts: Counts,
    pub last_check: Instant,
    /// Probes not placed or shed, and why.
    pub shed: Vec<String>,
    pub estimated: Option<ActivityEstimate>,
    pub sites_enabled: bool,
    pub sites_placed: usize,
    /// Lost records already shown on a live line.
    pub lost_reported: u64,
}

impl Session {
    /// Sets up the trace after attaching; returns it with the ring buffer the records come
    /// through.
    pub async fn start(
        opts: TraceOptions,
        a: Attached,
        hit_cost: Duration,
    ) -> anyhow::Result<(Self, RingBuf<MapData>)> {
        let Attached {
            target,
            mut probes,
            plan,
            spawned,
            start,
            start_mono_ns,
            first,
            not_placed,
            estimated,
            interrupted,
        } = a;
        let records = probes.take_records()?;
        if let Some(e) = &probes.madvise_error {
            eprintln!("leaktrace: madvise not traced: {e}");
        }
        let mut tracker = Tracker::default();
        let (mut g_addrs, mut snapshot_error, mut goroutines_now) = (HashMap::new(), None, None);
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
        if CHANNEL_PROBES.iter().all(|p| attached.contains(p)) {
            tracker.chan_probes_active(Duration::ZERO);
        }
        if let Some(e) = &snapshot_error {
            eprintln!("leaktrace: goroutine snapshots unavailable, following probes only: {e:#}");
        }
        say_attached(&target, &probes, hit_cost, &opts);
        let events = match &opts.events {
            Some(path) => Some(BufWriter::new(
                File::create(path).with_context(|| format!("creating {}", path.display()))?,
            )),
            None => None,
        };
        let session = Self {
            detect: DetectOptions {
                min_age: opts.min_age,
            },
            sites_enabled: opts.probes.contains(&Probe::Site),
            next_snapshot: tokio::time::Instant::now() + opts.snapshot_interval,
            last_counts: probes.counts()?,
            last_check: Instant::now(),
            findings: Findings::new(tracker, events, start_mono_ns),
            opts,
            target,
            probes,
            plan,
            hit_cost,
            start,
            spawned,
            interrupted_attaching: interrupted,
            g_addrs,
            snapshot_error,
            timeline,
            profile_start,
            profile_last: None,
            pinned: PinnedEstimates::default(),
            pinned_next: Instant::now(),
            metrics,
            shed: not_placed,
            estimated,
            sites_placed: 0,
            lost_reported: 0,
        };
        Ok((session, records))
    }
}

/// The attach line: what was placed, what a hit costs, how often snapshots come.
fn say_attached(target: &Target, probes: &Probes, hit_cost: Duration, opts: &TraceOptions) {
    let placed: Vec<&str> = probes.attached().iter().map(|p| p.function()).collect();
    eprintln!(
        "leaktrace: attached to PID {} ({}, {}): {} (a hit costs {:.1} us here{}); snapshot every {:.1} s; Ctrl-C to stop",
        target.process.pid(),
        target.process.exe_name(),
        target.binary.build().version_string,
        if placed.is_empty() {
            "no probes".to_string()
        } else {
            format!("probes on {}", placed.join(", "))
        },
        hit_cost.as_secs_f64() * 1e6,
        if opts.max_overhead.is_finite() {
            ""
        } else {
            ", no budget"
        },
        opts.snapshot_interval.as_secs_f64()
    );
}
