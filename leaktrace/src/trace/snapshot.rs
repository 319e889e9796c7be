//! Snapshots while tracing: every goroutine read from the target (while the ring buffer
//! keeps draining), the memory figures beside them, the heap profile read again, the
//! metrics published, the detector fed, the pinned-memory estimates refreshed and the
//! suspects' sites probed. Walks and scans are paced to at most 1/[`SNAPSHOT_PACE`] of the
//! time.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use super::session::{Session, memory_point};
use crate::{
    alloc,
    census::{self, Census, GoroutineSnapshot, StackFrame, retained::AddrMap},
    collector,
    detect::{
        Observed,
        pinned::PINNED_EVERY,
        proof::{ProofOptions, Prover},
    },
    model::histograms,
    probes::{Probe, thread_cpu_time},
    report::{self, metrics::ProbeFigures},
    tracee::Target,
};

/// A snapshot walk may take at most 1/SNAPSHOT_PACE of the time between snapshots: a walk
/// of 100,000 goroutines takes leaktrace 0.05-0.2 s of CPU (incremental or full,
/// BENCHMARKS.md), which a small machine takes from the target, so walks stay under ~5% of
/// a CPU.
pub(super) const SNAPSHOT_PACE: u32 = 20;

/// A snapshot's CPU (the walk and the detector after it) may be at most 1/SNAPSHOT_CPU_PACE
/// of the time between snapshots: 0.5% of a CPU. On a small program a snapshot takes 1-5 ms
/// and they come every `--snapshot-interval`; on the benchmark's HTTP service with a leak
/// of 20,000 goroutines one takes ~20 ms, and every 2 s that was 1% of a CPU, most of what
/// leaktrace cost the service (its goal is 1.5% of the target's CPU, probes and proofs
/// included).
pub(super) const SNAPSHOT_CPU_PACE: u32 = 200;
/// ... but snapshots come at least this often (or each `--snapshot-interval`, if longer): a
/// million goroutines take ~0.8 s to walk in full, which would otherwise put the next
/// snapshot minutes away.
const SNAPSHOT_PACED_MAX: Duration = Duration::from_secs(30);

/// The goroutines of one snapshot.
pub(super) struct Snapshot {
    /// As the detector sees them (runtime goroutines left out).
    pub observed: Vec<Observed>,
    /// The g address of every goroutine alive, runtime ones included, by goid.
    pub g_addrs: AddrMap<u64>,
    /// The `trackingSeq` of every waiting goroutine, by goid.
    pub parked: AddrMap<u8>,
    pub taken: Instant,
}

/// Reads every goroutine of the target through `census`, which reads again only the stacks
/// of goroutines that may have run since its last snapshot.
pub(super) fn take(census: &mut Census, target: &Target) -> anyhow::Result<Snapshot> {
    let gs = census.snapshot(target)?;
    let taken = Instant::now();
    let g_addrs = gs.iter().map(|g| (g.goid, g.g_addr)).collect();
    let parked = gs
        .iter()
        .filter(|g| g.wait_reason_value.is_some())
        .map(|g| (g.goid, g.tracking_seq))
        .collect();
    Ok(Snapshot {
        observed: observed(target, census, gs),
        g_addrs,
        parked,
        taken,
    })
}

/// The goroutines of a snapshot as the detector sees them: runtime goroutines left out, and
/// the channels each one blocked in a channel operation waits on, read for all of them at
/// once (`gs` is `census`'s last snapshot, which knows the channels of goroutines that did
/// not run since the one before). `gs` goes back to `census` for its next snapshot.
pub(crate) fn observed(
    target: &Target,
    census: &mut Census,
    mut gs: Vec<GoroutineSnapshot>,
) -> Vec<Observed> {
    gs.retain(|g| !g.system);
    let blocked: Vec<&GoroutineSnapshot> = gs.iter().filter(|g| in_channel_op(g)).collect();
    let mut chans = match census.channels(target, &blocked) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("reading the channels goroutines wait on: {e}");
            Vec::new()
        }
    }
    .into_iter();
    // The frames Go shows, once per distinct stack: the census shares a stack between the
    // goroutines stopped at the same PCs.
    let mut shown: HashMap<*const StackFrame, Arc<[StackFrame]>> = HashMap::new();
    let observed = gs
        .drain(..)
        .map(|g| {
            let channels = if in_channel_op(&g) {
                chans.next().unwrap_or_default()
            } else {
                Vec::new()
            };
            Observed {
                goid: g.goid,
                waiting: g.waiting,
                stack: Arc::clone(
                    shown
                        .entry(g.stack.as_ptr())
                        .or_insert_with(|| g.shown_frames().cloned().collect()),
                ),
                created_by: g.created_by,
                state: g.state,
                channels,
            }
        })
        .collect();
    census.recycle(gs);
    observed
}

/// Blocked in a channel operation: waits on the channels of its sudogs.
fn in_channel_op(g: &GoroutineSnapshot) -> bool {
    matches!(&*g.state, "chan send" | "chan receive" | "select")
}

/// While a proof waits for its second pass (a GC cycle of the target, or at most a few
/// seconds), how often its goroutines are looked at again: the second pass comes when it
/// may, not at the next snapshot, which on a busy machine can be seconds away.
const PROOF_WATCH: Duration = Duration::from_millis(250);
/// A proof cycle (one or two passes) is followed by at least PROOF_PACE times the CPU its
/// passes used before the next begins, so that proofs take at most 0.25% of a CPU: a pass
/// over a busy service's heap and stacks costs leaktrace 20-300 ms, and the target needs its
/// CPUs (leaktrace as a whole aims at 1.5% of the target's, which on the benchmark's HTTP
/// service is about one CPU). A cycle of 150 ms (a leak of 20,000 goroutines on that
/// service) is followed by 60 s without one; the goroutines that leak meanwhile join the
/// proven group as having come since the proof.
const PROOF_PACE: u32 = 400;
/// A cycle that proved nothing new doubles the wait before the next one (from 2 s), up to
/// this, until more goroutines settle in a channel or sync wait: a leak that begins then is
/// proven a cycle later; one that begins while nothing new settles (a consumer that exits and
/// leaves its blocked producers unreachable) within this.
const PROOF_IDLE_MAX: Duration = Duration::from_secs(30);

/// `f`'s result and the CPU time it used on this thread.
fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let c0 = thread_cpu_time();
    f().map(|r| (r, thread_cpu_time().saturating_sub(c0)))
}

/// When the next proof cycle of the live trace may begin.
#[derive(Debug, Default)]
pub(super) struct ProofPace {
    /// CPU the passes of the current cycle used.
    cpu: Duration,
    /// Cycles in a row that proved no goroutine that was not proven already.
    idle: u32,
    /// Goroutines settled in a wait a proof may find unreachable when the last cycle began.
    settled: usize,
    /// Goroutines alive when the last cycle began.
    goroutines: usize,
    /// When the last cycle ended, and the least wait after it its CPU allows.
    ended: Option<(Instant, Duration)>,
}

impl ProofPace {
    fn begin(&mut self, settled: usize, goroutines: usize) {
        self.cpu = Duration::ZERO;
        self.settled = settled;
        self.goroutines = goroutines;
    }

    /// When a cycle may begin, paid for in advance: a cycle reads every stack and what they
    /// hold, so its CPU grows with the goroutines, and the wait after the last one is
    /// stretched by as much as they grew since it began. Otherwise a growing leak makes each
    /// cycle cost many times the one that set the wait: on the benchmark's HTTP service a
    /// cycle over 1,200 leaked goroutines took 15 ms and set a 6 s wait, after which one over
    /// 19,000 took 120 ms. None before the first cycle, or when they did not grow.
    fn grown(&self, goroutines: usize) -> Option<Instant> {
        let (ended, least) = self.ended?;
        let growth = goroutines as f64 / self.goroutines.max(1) as f64;
        (growth > 1.0).then(|| ended + least.mul_f64(growth))
    }

    /// Ends a cycle; when the next may begin.
    fn end(&mut self, proved_more: bool) -> Instant {
        self.idle = if proved_more { 0 } else { self.idle + 1 };
        let least = self.cpu * PROOF_PACE;
        self.ended = Some((Instant::now(), least));
        let idle = match self.idle {
            0 => Duration::ZERO,
            n => (Duration::from_secs(1) * 2u32.saturating_pow(n.min(16))).min(PROOF_IDLE_MAX),
        };
        Instant::now() + least.max(idle)
    }

    /// When more goroutines settled in such a wait than when the last cycle began, the
    /// back-off ends: the next cycle may begin as soon as the last one's CPU allows.
    fn sooner(&mut self, settled: usize) -> Option<Instant> {
        let (ended, least) = self.ended?;
        (settled > self.settled && self.idle > 0).then(|| {
            self.idle = 0;
            ended + least
        })
    }
}

impl Session {
    /// Takes a snapshot and everything that follows from it; true when a targeted probe
    /// was placed.
    pub(super) fn snapshot(&mut self, records: &mut RingBuf<MapData>) -> anyhow::Result<bool> {
        let walk = Instant::now();
        let walk_ns = census::goroutines::monotonic_ns() as u64;
        let (target, findings, census) = (&self.target, &mut self.findings, &mut self.census);
        let taken = collector::while_draining(
            records,
            || timed(|| take(census, target)),
            |rec| findings.apply(target, rec),
        );
        let (taken, walk_cpu) = match taken {
            Ok((s, cpu)) => (Ok(s), cpu),
            Err(e) => (Err(e), Duration::ZERO),
        };
        let taken_ns = census::goroutines::monotonic_ns() as u64;
        self.next_snapshot = tokio::time::Instant::now()
            + self
                .opts
                .snapshot_interval
                .max(walk.elapsed() * SNAPSHOT_PACE);
        self.timeline.extend(memory_point(
            &self.target,
            &self.probes,
            self.start.elapsed(),
            taken.as_ref().ok().map(|s| s.observed.len()),
        ));
        if self.plan.reads_profile() {
            self.profile_last = alloc::profile::read(&self.target)
                .ok()
                .or(self.profile_last.take());
        }
        self.publish_metrics()?;
        match taken {
            Ok(s) => {
                let c0 = thread_cpu_time();
                let goroutines = s.observed.len();
                self.g_addrs = s.g_addrs;
                let g_addrs = &self.g_addrs;
                // Parks that outlasted their window and are over now, the goroutines
                // that exited since included; then those exits are forgotten.
                let closed = self.findings.model.close_by_snapshot(
                    |goid| s.parked.get(&goid).copied(),
                    walk_ns,
                    taken_ns,
                );
                for c in closed {
                    let tag = histograms::tag("park_ns", &self.target.reason_name(c.reason));
                    self.findings.hist.record(&tag, c.parked_ns);
                    *self.findings.closed_by_snapshot.entry(tag).or_default() += 1;
                }
                self.findings
                    .model
                    .forget_absent(|goid| g_addrs.contains_key(&goid), walk_ns);
                self.findings
                    .tracker
                    .observe(self.start.elapsed(), s.observed);
                let c1 = thread_cpu_time();
                self.pace_snapshots(walk, walk_cpu + (c1 - c0), goroutines);
                self.advance_proof(records);
                let c2 = thread_cpu_time();
                let pinned_cpu = self.estimate_pinned(records);
                let c3 = thread_cpu_time();
                let placed = self.place_sites();
                log::debug!(
                    "snapshot of {goroutines} goroutines, CPU: walk {walk_cpu:.1?}, detector {:.1?}, \
                     proof {:.1?} (besides its passes), pinned {pinned_cpu:.1?}, sites {:.1?}",
                    c1 - c0,
                    c2 - c1,
                    thread_cpu_time() - c3,
                );
                return placed;
            }
            Err(e) if !self.target.process.is_alive() => {
                log::debug!("snapshot after exit: {e:#}")
            }
            Err(e) => eprintln!("leaktrace: snapshot failed: {e:#}"),
        }
        self.place_sites()
    }

    /// Advances the proof by reachability: a first pass, the goroutines it found unreachable
    /// watched at each snapshot and every PROOF_WATCH between them, then the second pass
    /// (skipped when none of them stayed in its wait), whose proven goroutines the detector
    /// takes. Cycles are paced by [`ProofPace`].
    pub(super) fn advance_proof(&mut self, records: &mut RingBuf<MapData>) {
        let opts = ProofOptions::default();
        if self.prover.is_none() {
            let settled = self.findings.tracker.settled_blocked();
            if let Some(at) = self.proof_pace.sooner(settled) {
                log::debug!("proof back-off ended: {settled} goroutines settled");
                self.proof_next = self.proof_next.min(at);
            }
            let goroutines = self.g_addrs.len();
            let next = match self.proof_pace.grown(goroutines) {
                Some(grown) => self.proof_next.max(grown),
                None => self.proof_next,
            };
            if Instant::now() < next {
                return;
            }
            self.proof_pace.begin(settled, goroutines);
        }
        let (target, findings) = (&self.target, &mut self.findings);
        let Some(mut p) = self.prover.take() else {
            match collector::while_draining(
                records,
                || timed(|| Prover::start(target, opts.limits)),
                |rec| findings.apply(target, rec),
            ) {
                Ok((p, cpu)) => {
                    self.proof_pace.cpu += cpu;
                    self.prover = Some(p);
                    self.proof_next = Instant::now() + PROOF_WATCH;
                }
                Err(e) => {
                    log::warn!("reachability pass failed: {e:#}");
                    self.proof_next = self.proof_pace.end(false);
                }
            }
            return;
        };
        if !p.watch(target, &opts) {
            self.prover = Some(p);
            self.proof_next = Instant::now() + PROOF_WATCH;
            return;
        }
        let mut p = Some(p);
        let done = collector::while_draining(
            records,
            || timed(|| p.take().expect("finished once").finish(target, opts.limits)),
            |rec| findings.apply(target, rec),
        );
        let mut proved_more = false;
        match done {
            Ok((proof, cpu)) => {
                self.proof_pace.cpu += cpu;
                if let Some(why) = &proof.not_proven {
                    log::warn!("leaks not proven: {why}");
                }
                if let Some(why) = &proof.holds_not_measured {
                    log::warn!("{why}");
                }
                proved_more = self.findings.tracker.set_proven(&proof);
                self.pinned.set_proven(&proof);
            }
            Err(e) => log::warn!("reachability pass failed: {e:#}"),
        }
        self.proof_next = self.proof_pace.end(proved_more);
        log::debug!(
            "proof cycle: {:?} of CPU, proved a new group: {proved_more}, next in {:?}",
            self.proof_pace.cpu,
            self.proof_next.saturating_duration_since(Instant::now())
        );
    }

    /// Puts the next snapshot off until the last one's CPU is 1/[`SNAPSHOT_CPU_PACE`] of the
    /// time since it began (up to [`SNAPSHOT_PACED_MAX`]), and says so the first time that
    /// stretches `--snapshot-interval` by more than a quarter.
    fn pace_snapshots(&mut self, began: Instant, cpu: Duration, goroutines: usize) {
        let every =
            (cpu * SNAPSHOT_CPU_PACE).min(SNAPSHOT_PACED_MAX.max(self.opts.snapshot_interval));
        let paced = tokio::time::Instant::from_std(began) + every;
        if paced <= self.next_snapshot {
            return;
        }
        self.next_snapshot = paced;
        if !self.snapshots_paced && every > self.opts.snapshot_interval.mul_f64(1.25) {
            self.snapshots_paced = true;
            eprintln!(
                "leaktrace: snapshots now every {:.1} s, not every {:.1} s \
                 (--snapshot-interval): one of {goroutines} goroutines takes {:.0} ms of CPU, \
                 and snapshots are kept to {:.1}% of a CPU",
                every.as_secs_f64(),
                self.opts.snapshot_interval.as_secs_f64(),
                cpu.as_secs_f64() * 1e3,
                100.0 / f64::from(SNAPSHOT_CPU_PACE),
            );
        }
    }

    /// Estimates what the leak groups pin, like walks at most 1/SNAPSHOT_PACE of the time;
    /// the CPU the estimates used. Unless they are shown while tracing, only groups seen for
    /// [`PINNED_EVERY`] are estimated: the report estimates every group afresh at the end,
    /// and these estimates stand in for it only when the target exits before.
    fn estimate_pinned(&mut self, records: &mut RingBuf<MapData>) -> Duration {
        if Instant::now() < self.pinned_next {
            return Duration::ZERO;
        }
        let t0 = Instant::now();
        let mut leaks = self.findings.tracker.leaks(&self.detect);
        if !self.pinned_shown {
            let now = self.start.elapsed().as_secs_f64();
            leaks.retain(|l| {
                l.growth
                    .first()
                    .is_some_and(|(seen, _)| now - seen >= PINNED_EVERY.as_secs_f64())
            });
            if leaks.is_empty() {
                return Duration::ZERO;
            }
        }
        let (target, findings, pinned, g_addrs) = (
            &self.target,
            &mut self.findings,
            &mut self.pinned,
            &self.g_addrs,
        );
        let cpu = collector::while_draining(
            records,
            || {
                let c0 = thread_cpu_time();
                pinned.update(target, &leaks, g_addrs, false);
                thread_cpu_time().saturating_sub(c0)
            },
            |rec| findings.apply(target, rec),
        );
        self.pinned_next = Instant::now() + t0.elapsed() * SNAPSHOT_PACE;
        cpu
    }

    /// Refreshes what the Prometheus endpoint serves, when it is on.
    fn publish_metrics(&self) -> anyhow::Result<()> {
        let Some((tx, _)) = &self.metrics else {
            return Ok(());
        };
        let counts = self.probes.counts()?;
        // The probes in windows too: detached between windows, they still have figures.
        let mut placed = self.probes.attached();
        placed.extend(&self.windows.probes);
        placed.sort_unstable();
        placed.dedup();
        let (w, duty) = (&self.windows, self.windows.duty());
        let probes: Vec<ProbeFigures> = placed
            .into_iter()
            .map(|p: Probe| ProbeFigures {
                function: p.function(),
                hits: counts.hits(p),
                duty: if w.windowed(p) { duty } else { 1.0 },
            })
            .collect();
        let mut leaks = self.findings.tracker.leaks(&self.detect);
        for l in &mut leaks {
            l.pinned = self.pinned.get(l);
        }
        tx.send_replace(report::metrics::render(
            self.timeline.last(),
            &leaks,
            &self.findings.hist,
            &counts,
            &probes,
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_cycles_back_off_while_nothing_new_is_proven_and_settles() {
        let mut pace = ProofPace::default();
        let cpu = Duration::from_millis(30);
        let gap = |p: &mut ProofPace, proved: bool| {
            p.begin(10, 1000);
            p.cpu = cpu;
            p.end(proved).saturating_duration_since(Instant::now())
        };
        // A cycle that proved something: only its CPU paces the next.
        let g = gap(&mut pace, true);
        assert!(g <= cpu * PROOF_PACE && g + Duration::from_millis(50) >= cpu * PROOF_PACE);
        // Idle cycles: 2 s, 4 s, 8 s ... never past PROOF_IDLE_MAX, never under the CPU pace.
        let mut last = Duration::ZERO;
        for _ in 0..8 {
            let g = gap(&mut pace, false);
            assert!(g + Duration::from_millis(50) >= last.min(PROOF_IDLE_MAX));
            assert!(g <= PROOF_IDLE_MAX && g + Duration::from_millis(50) >= cpu * PROOF_PACE);
            last = g;
        }
        assert!(last + Duration::from_millis(50) >= PROOF_IDLE_MAX);
        // The same number of settled goroutines keeps the back-off; more ends it, once.
        assert_eq!(pace.sooner(10), None);
        let at = pace.sooner(11).expect("more settled: sooner");
        assert!(at.saturating_duration_since(Instant::now()) <= cpu * PROOF_PACE);
        assert_eq!(pace.sooner(12), None, "the back-off already ended");
    }

    #[test]
    fn a_cycle_waits_longer_when_the_goroutines_grew_since_the_last() {
        let mut pace = ProofPace::default();
        assert_eq!(
            pace.grown(5000),
            None,
            "nothing to pay for before the first cycle"
        );
        pace.begin(10, 1000);
        pace.cpu = Duration::from_millis(10);
        let next = pace.end(true);
        let least = Duration::from_millis(10) * PROOF_PACE;
        // As many goroutines or fewer: the last cycle's CPU alone sets the wait.
        assert_eq!(pace.grown(1000), None);
        assert_eq!(pace.grown(500), None);
        // Sixteen times as many: sixteen times the wait.
        let at = pace.grown(16_000).expect("they grew");
        let wait = at.saturating_duration_since(Instant::now());
        assert!(
            wait + Duration::from_millis(50) >= least * 16 && wait <= least * 16,
            "{wait:?}"
        );
        assert!(at > next);
    }
}
