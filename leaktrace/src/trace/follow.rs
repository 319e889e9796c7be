//! Following the target: one loop that drains the probes' records as they come, checks the
//! budget, prints a line each `--interval`, takes a snapshot each `--snapshot-interval`, and
//! stops on Ctrl-C, SIGTERM, `--duration`, or the target's exit or exec.

use std::os::fd::OwnedFd;

use anyhow::anyhow;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at, sleep_until},
};

use super::{
    Observer, Stop,
    budget::{BUDGET_PERIOD, QUICK_CHECK},
    session::Session,
    windows::PERIOD,
};
use crate::{
    collector,
    detect::{Confidence, LeakGroup},
    probes::{Counts, Probe},
    report::{
        live,
        top::{self, Interval},
    },
};

/// What the loop waits on besides time.
pub(super) struct Io {
    pub records: AsyncFd<RingBuf<MapData>>,
    /// The target's pidfd (a copy), readable once it exits.
    pidfd: AsyncFd<OwnedFd>,
    sigint: Signal,
    sigterm: Signal,
}

impl Io {
    /// Listens for SIGINT and SIGTERM: once this is made, they stop the trace instead of
    /// ending leaktrace (tokio buffers them for the loop).
    pub fn signals() -> anyhow::Result<(Signal, Signal)> {
        Ok((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    }

    pub fn new(
        records: RingBuf<MapData>,
        session: &Session,
        (sigint, sigterm): (Signal, Signal),
    ) -> anyhow::Result<Self> {
        let pidfd = session
            .target
            .process
            .pidfd()
            .try_clone_to_owned()
            .map_err(|e| anyhow!("copying the target's pidfd: {e}"))?;
        // SAFETY: the ring buffer and the pidfd copy own their descriptors, and the AsyncFds
        // own them: each descriptor lives exactly as long as its registration.
        let records = unsafe { AsyncFd::register(records) }
            .map_err(|e| anyhow!("polling the ring buffer: {}", e.into_parts().1))?;
        let pidfd = unsafe { AsyncFd::register(pidfd) }
            .map_err(|e| anyhow!("polling the target's pidfd: {}", e.into_parts().1))?;
        Ok(Self {
            records,
            pidfd,
            sigint,
            sigterm,
        })
    }
}

/// Follows the target until something stops the trace; `observer` is shown each interval
/// instead of the live lines.
pub(super) async fn follow(
    s: &mut Session,
    io: &mut Io,
    mut observer: Option<&mut dyn Observer>,
) -> anyhow::Result<Stop> {
    let deadline = s.opts.duration.map(|d| Instant::now() + d);
    s.pinned_shown = observer.is_some() || s.metrics.is_some();
    let mut tick = interval_at(Instant::now() + s.opts.interval, s.opts.interval);
    // The probes' cost is checked 20 ms after they are placed (a hot probe shows in so
    // short a window), then four times a second, so that a busy target pays for a probe that
    // does not fit the budget for at most a quarter of a second. A check delayed by a long
    // snapshot is not made up for with a burst of short ones.
    let mut budget = interval_at(Instant::now() + QUICK_CHECK, BUDGET_PERIOD);
    budget.set_missed_tick_behavior(MissedTickBehavior::Delay);
    s.next_snapshot = Instant::now() + s.opts.snapshot_interval;
    // The proof's first pass now, on the goroutines as the attach found them: leaks begun
    // before leaktrace are proven a few seconds in.
    s.advance_proof(io.records.get_mut());
    // Records wake the collector only once a quarter of the ring waits
    // (`probes::WAKE_AT_FRACTION`): it drains on this timer instead. A busy Go program's
    // scavenger alone calls madvise a thousand times a second, each a record.
    let mut drain = Instant::now() + DRAIN_PERIOD;
    let stop = loop {
        tokio::select! {
            guard = io.records.readable_mut() => {
                let mut guard = guard?;
                s.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = sleep_until(drain) => {
                s.drain(io.records.get_mut());
                drain = Instant::now() + s.drain_period();
            }
            _ = budget.tick() => s.check_budget()?,
            _ = async { sleep_until(s.windows.next.unwrap().into()).await }, if s.windows.next.is_some() => s.window_tick(io.records.get_mut())?,
            _ = tick.tick() => {
                s.live_line(observer.as_mut().map(|o| &mut **o as _))?;
                if s.target.process.has_execed() {
                    break Stop::TargetExeced;
                }
            }
            // Nothing long runs while a window is open: its breakpoints would stay in place,
            // the target slowed, for as long as a snapshot, a proof pass or a site's trial
            // took (a 40 ms window was seen in place 160 ms).
            _ = sleep_until(s.proof_next.into()), if s.prover.is_some() && s.windows.open.is_none() => {
                s.advance_proof(io.records.get_mut());
            }
            _ = sleep_until(s.next_snapshot), if s.snapshot_error.is_none() && s.windows.open.is_none() => {
                if s.snapshot(io.records.get_mut())? {
                    budget.reset_at(Instant::now() + QUICK_CHECK);
                }
            }
            _ = io.sigint.recv() => break Stop::Signal("SIGINT"),
            _ = io.sigterm.recv() => break Stop::Signal("SIGTERM"),
            _ = io.pidfd.readable() => break Stop::TargetExited,
            _ = async { sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break Stop::Duration,
        }
    };
    Ok(stop)
}

/// How often the collector drains the ring buffer while uprobes are in place: at most this
/// late, a record is applied (sooner once a quarter of the ring waits).
const DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(20);
/// How often while none is (snapshots only, or between windows): only the madvise
/// tracepoint writes records then, a few thousand a second at most, which the ring holds for
/// far longer; fifty wake-ups a second were a tenth of leaktrace's CPU on a busy service
/// traced with snapshots only. A window drains the ring itself when it opens and closes.
const IDLE_DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(200);

impl Session {
    /// How long until the next drain.
    fn drain_period(&self) -> std::time::Duration {
        match self.probes.any_attached() {
            true => DRAIN_PERIOD,
            false => IDLE_DRAIN_PERIOD,
        }
    }

    /// Applies every record waiting in the ring buffer.
    pub(super) fn drain(&mut self, records: &mut RingBuf<MapData>) {
        let (target, findings) = (&self.target, &mut self.findings);
        collector::drain(records, |rec| findings.apply(target, rec));
    }

    /// The live line of the interval that just ended, or the observer's view of it.
    fn live_line(&mut self, observer: Option<&mut dyn Observer>) -> anyhow::Result<()> {
        let elapsed = self.start.elapsed();
        self.findings.hist.close_interval(elapsed);
        let counts = self.probes.counts()?;
        let t = self.findings.model.take_interval();
        let leaks = self.findings.tracker.leaks(&self.detect);
        if let Some(o) = observer {
            o.interval(self.interval(leaks, &counts));
            self.lost_reported = counts.lost;
            return Ok(());
        }
        let proven = leaks
            .iter()
            .filter(|l| l.confidence == Confidence::Proven)
            .count();
        let suspects = format!("{} ({proven} proven)", leaks.len());
        let windowed = self.windows.windowed(Probe::Gopark);
        let parks_traced = windowed || self.probes.attached().contains(&Probe::Gopark);
        if parks_traced || t.total_parks() + t.total_wakes() > 0 {
            // Windowed counts stand for the runtime's own parks in the interval, spread
            // over the wait reasons as every window so far saw them (windows are seconds
            // apart, so most intervals have none); without the runtime's counters, the
            // interval's own sample is scaled by the share of the time.
            let total = &self.findings.model.total;
            let runtime = match windowed {
                true => self.windows.parks_since_last_line(&self.target),
                false => None,
            };
            let (t, share) = match runtime {
                Some(n) if total.total_parks() > 0 => (
                    total.clone(),
                    total.total_parks() as f64 / (n as f64).max(1e-6),
                ),
                _ => (t, self.windows.duty()),
            };
            let (t, sampled) = match windowed && share > 0.0 {
                true => (
                    t.scaled(share),
                    format!(
                        " | sampled, {:.1}% of the time",
                        self.windows.duty() * 100.0
                    ),
                ),
                false => (t, String::new()),
            };
            self.opts.say(&format!(
                "{}{sampled} | suspects {suspects}\n",
                live::interval_line(
                    elapsed,
                    &t,
                    &self.target.layout.wait_reasons,
                    counts.lost - self.lost_reported
                )
            ));
        } else {
            self.opts.say(&format!(
                "[{:>5}s] park/wake not probed (over budget or not chosen); {} snapshots | suspects {suspects}\n",
                elapsed.as_secs(),
                self.findings.tracker.snapshots()
            ));
        }
        self.lost_reported = counts.lost;
        for line in self.announced.news(elapsed, &leaks) {
            self.opts.say(&format!("{line}\n"));
        }
        Ok(())
    }

    /// What the observer is shown of the interval that just ended: the leak groups with the
    /// memory they pin (as last estimated), the memory timeline's last points, the probes
    /// and their cost.
    fn interval(&self, mut leaks: Vec<LeakGroup>, counts: &Counts) -> Interval {
        for l in &mut leaks {
            l.pinned = self.pinned.get(l);
        }
        let placed = self.probes.attached();
        let w = &self.windows;
        // The windows' cost: what the last one cost, once per period (at least a second).
        let windows_cost = match w.windows {
            0 => 0.0,
            _ => w.last_cost / w.period.max(PERIOD).as_secs_f64(),
        };
        Interval {
            target: format!(
                "PID {} ({}, {})",
                self.target.process.pid(),
                base_name(&self.target.process.exe_name()),
                self.target.binary.build().version_string
            ),
            elapsed: self.start.elapsed(),
            leaks,
            memory: self.timeline[self.timeline.len().saturating_sub(top::MEMORY_POINTS)..]
                .to_vec(),
            status: top::Status {
                probes: placed
                    .iter()
                    .filter(|p| !w.windowed(**p))
                    .map(|p| p.name())
                    .collect(),
                windowed: w.probes.iter().map(|p| p.name()).collect(),
                duty: w.duty(),
                windows: w.windows,
                cost: self.continuous_cost + windows_cost,
                budget: self.opts.max_overhead,
                snapshots: self.findings.tracker.snapshots(),
                lost: counts.lost,
            },
        }
    }
}

/// `server` for `/srv/bin/server`: the title of a narrow screen.
fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
