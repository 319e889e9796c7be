//! Probe windows: probes that cannot stay on within `--max-overhead` are placed for a short
//! window each second, as long as their measured hit rate lets the window's cost fit the
//! budget's share left by the continuous probes. Each window's hits set the next one's
//! length; a window is skipped when the last one cost more than planned.
//!
//! A window is opened by attaching the uprobes and closed by detaching them, not by
//! disabling their perf events: on this kernel a disabled uprobe event keeps its breakpoint
//! in the target's code (the int3, and so most of a hit's cost, stays), while the removal's
//! ~110 ms grace period is spent waiting on a thread, not on a CPU. The fixed cost of a
//! window (the attach, and the CPU the detach uses) is measured and counted with its hits.

use std::{
    collections::{BTreeMap, HashMap},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use super::session::Session;
use crate::{
    census, collector,
    probes::{Counts, Probe, thread_cpu_time},
    report::schema::Sampling,
};

/// A window opens once a period.
pub(super) const PERIOD: Duration = Duration::from_secs(1);

/// The shortest window worth its fixed cost, and the longest (beyond it the probes fit
/// continuously, or nearly).
const MIN_WINDOW: Duration = Duration::from_millis(2);
const MAX_WINDOW: Duration = Duration::from_millis(500);

/// The first window when nothing says how often the probes fire.
const FIRST_WINDOW: Duration = Duration::from_millis(5);

/// A window being closed: its links drop on a thread.
struct Closing {
    detach: JoinHandle<Duration>,
    length: Duration,
    attach: Duration,
    counts_at_open: Counts,
}

struct Open {
    at: Instant,
    attach: Duration,
    counts: Counts,
}

#[derive(Default)]
pub(super) struct Windows {
    /// The probes placed only in windows.
    pub probes: Vec<Probe>,
    offsets: HashMap<Probe, Vec<u64>>,
    /// The next window's length, and what it is planned to cost (CPU seconds).
    length: Duration,
    planned: f64,
    /// Hits per second of the windowed probes together, as last measured.
    rate: Option<f64>,
    open: Option<Open>,
    closing: Option<Closing>,
    /// From one window's opening to the next's.
    period: Duration,
    /// When the next window opens, or the open one closes.
    pub next: Option<Instant>,
    /// When windowing began.
    since: Option<Instant>,
    /// The windows' time in place, measured: from the attach to the last record.
    pub on: Duration,
    pub windows: u32,
    pub skipped: u32,
    /// What the last closed window cost (CPU seconds), hits and fixed cost together.
    pub last_cost: f64,
    /// Its fixed cost alone.
    pub fixed: Duration,
}

impl Windows {
    /// Adds `probes` (with the file offsets to place them at) to the windowed set;
    /// `rate` is what they are expected to fire per second together, when known.
    pub fn add(&mut self, probes: Vec<(Probe, Vec<u64>)>, rate: Option<f64>) {
        if probes.is_empty() {
            return;
        }
        for (p, offs) in probes {
            if !self.probes.contains(&p) {
                self.probes.push(p);
                self.offsets.insert(p, offs);
            }
        }
        self.rate = match (self.rate, rate) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        let now = Instant::now();
        self.since.get_or_insert(now);
        if self.next.is_none() {
            self.next = Some(now + QUICK_FIRST);
        }
    }

    pub fn windowed(&self, p: Probe) -> bool {
        self.probes.contains(&p)
    }

    /// The fraction of the time since windowing began that the windows were open (0 before
    /// the first closes).
    pub fn duty(&self) -> f64 {
        match self.since {
            Some(t) => (self.on.as_secs_f64() / t.elapsed().as_secs_f64().max(1e-3)).min(1.0),
            None => 1.0,
        }
    }

    /// How each of `placed` (probes placed continuously at some point) and the windowed
    /// probes were placed.
    pub fn sampling(&self, placed: &[Probe]) -> BTreeMap<String, Sampling> {
        let mut out = BTreeMap::new();
        for p in placed.iter().filter(|p| !self.windowed(**p)) {
            out.insert(
                p.function().to_string(),
                Sampling {
                    mode: "continuous",
                    duty: 1.0,
                    windows: 0,
                    window_ms: 0.0,
                },
            );
        }
        for p in &self.probes {
            out.insert(
                p.function().to_string(),
                Sampling {
                    mode: "windows",
                    duty: self.duty(),
                    windows: self.windows,
                    window_ms: self.on.as_secs_f64() * 1e3 / f64::from(self.windows.max(1)),
                },
            );
        }
        out
    }
}

/// The first window opens soon after the probes are windowed.
const QUICK_FIRST: Duration = Duration::from_millis(50);

impl Session {
    /// Opens or closes the window that is due.
    pub(super) fn window_tick(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if let Some(open) = self.windows.open.take() {
            let ts = census::goroutines::monotonic_ns() as u64;
            self.findings.model.close_window(ts);
            let probes = self.windows.probes.clone();
            let detach = self.probes.detach_later(&probes)?;
            let w = &mut self.windows;
            w.closing = Some(Closing {
                detach,
                length: now.duration_since(open.at),
                attach: open.attach,
                counts_at_open: open.counts,
            });
            w.windows += 1;
            w.next = Some(open.at + w.period);
            return Ok(());
        }
        let next_period = now + self.windows.period.max(PERIOD);
        if let Some(c) = self.windows.closing.take() {
            if !c.detach.is_finished() {
                // The kernel has not let go of the last window's probes yet.
                self.windows.closing = Some(c);
                self.windows.skipped += 1;
                self.windows.next = Some(next_period);
                return Ok(());
            }
            let detach_cpu = c.detach.join().unwrap_or_default();
            let counts = self.probes.counts()?;
            let probes = self.windows.probes.clone();
            let hits = windowed_hits(&probes, &counts, &c.counts_at_open);
            // Hits after the close, before the kernel removed the breakpoints, cost the
            // target too: they count in the rate, not in the sample.
            let length = c.length;
            log::debug!("window closed: {hits} hits in {length:?}");
            let w = &mut self.windows;
            w.on += length;
            w.fixed = c.attach + detach_cpu;
            w.rate = Some(hits as f64 / length.as_secs_f64().max(1e-6));
            w.last_cost = hits as f64 * self.hit_cost.as_secs_f64() + w.fixed.as_secs_f64();
            if w.last_cost > w.planned * 1.1 {
                log::debug!(
                    "window cost {:.2} ms of CPU, planned {:.2} ms: the next is skipped",
                    w.last_cost * 1e3,
                    w.planned * 1e3
                );
                w.skipped += 1;
                w.planned = f64::INFINITY; // skip one, then plan again
                w.next = Some(next_period);
                return Ok(());
            }
        }
        // The share of the budget the continuous probes leave.
        let share = (self.opts.max_overhead - self.continuous_cost).max(0.0);
        let w = &mut self.windows;
        if share <= 0.0 {
            w.skipped += 1;
            w.next = Some(next_period);
            return Ok(());
        }
        let per_second = w.rate.unwrap_or(0.0) * self.hit_cost.as_secs_f64();
        let length = if w.rate.is_none() {
            FIRST_WINDOW
        } else if per_second <= 0.0 {
            MAX_WINDOW
        } else {
            let fits = share * PERIOD.as_secs_f64() - w.fixed.as_secs_f64();
            Duration::from_secs_f64((fits / per_second).max(0.0))
        };
        w.length = length.clamp(MIN_WINDOW, MAX_WINDOW);
        // The first window, at a rate not yet measured, has no plan to exceed.
        w.planned = match w.rate {
            Some(_) => per_second * w.length.as_secs_f64() + w.fixed.as_secs_f64(),
            None => f64::INFINITY,
        };
        // A window shorter than the shortest worth having comes less often than once a
        // period: as often as the budget pays for it.
        w.period = match w.planned.is_finite() {
            true => PERIOD.max(Duration::from_secs_f64(w.planned / share)),
            false => PERIOD,
        };
        log::debug!(
            "window of {:?} every {:?}: {:.0} hits/s measured, {:.2} ms of CPU planned, fixed cost {:?}",
            w.length,
            w.period,
            w.rate.unwrap_or(f64::NAN),
            w.planned * 1e3,
            w.fixed
        );
        let counts = self.probes.counts()?;
        let exe = self.target.process.exe_path();
        let cpu0 = thread_cpu_time();
        for p in self.windows.probes.clone() {
            self.probes.attach(p, &exe, &self.windows.offsets[&p])?;
        }
        let attach = thread_cpu_time().saturating_sub(cpu0);
        // The sample starts once every probe of the window is in place.
        self.findings
            .model
            .open_window(census::goroutines::monotonic_ns() as u64);
        let w = &mut self.windows;
        w.open = Some(Open {
            at: Instant::now(),
            attach,
            counts,
        });
        w.next = Some(Instant::now() + w.length);
        Ok(())
    }

    /// Closes an open window and waits for the last one's probes to go, for the report;
    /// their records are taken from `records`.
    pub(super) fn close_windows(&mut self, records: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        if self.windows.open.is_some() {
            self.window_tick()?;
        }
        if let Some(c) = self.windows.closing.take() {
            let _ = c.detach.join();
            let (target, findings) = (&self.target, &mut self.findings);
            collector::drain(records, |rec| findings.apply(target, rec));
            self.windows.on += c.length;
        }
        self.windows.next = None;
        Ok(())
    }
}

fn windowed_hits(probes: &[Probe], now: &Counts, then: &Counts) -> u64 {
    probes
        .iter()
        .map(|p| now.hits(*p).saturating_sub(then.hits(*p)))
        .sum()
}
