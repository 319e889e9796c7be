//! Probe windows: probes that cannot stay on within `--max-overhead` are placed for a short
//! window each second, as long as their measured hit rate lets the window's cost fit the
//! budget's share left by the continuous probes. Each window's hits set the next one's
//! length, and the next opens only once the budget has paid for what the last one cost.
//!
//! A window is opened by attaching the uprobes and closed by detaching them, not by
//! disabling their perf events: on this kernel a disabled uprobe event keeps its breakpoint
//! in the target's code (the int3, and so most of a hit's cost, stays). Detaching is no
//! cleaner end either: the kernel detaches the BPF program, waits a grace period (100-580 ms
//! here) and only then removes the int3, the target trapping on every hit meanwhile with no
//! record of it. The removal runs on a thread; its end is timed, and a window's cost is its
//! measured rate over all the time its breakpoints were in place, with the fixed CPU of the
//! attach and of the detach.

use std::{
    collections::{BTreeMap, HashMap},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    census::activity::SchedCounters,
    probes::{Counts, Detached, HitCosts, Probe},
    report::schema::Sampling,
    tracee::Target,
};

/// When [`Windows::read_sched`] reads the runtime's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SchedRead {
    Start,
    /// A window's sample starts or ends; the parks the probes have recorded so far.
    Open {
        probed_parks: u64,
    },
    Close {
        probed_parks: u64,
    },
    End,
}

/// A window's parks by the runtime's count and by the probes' differ by more than this
/// factor either way: its runtime count is set aside. The two agree within 0.56-1.44x in
/// windows of 1,000-2,000 parks on the benchmark's HTTP service, but the runtime's count
/// jumps by 20,000-35,000 stops within 5 ms a few times a minute there, traced or not (its
/// `timeToRun` read every 0.5 ms, 9 s untraced): a window that met such a jump held 29x
/// the parks its probes saw, and scaled the trace's parks to 0.21x the runtime's count.
pub(super) const COUNTS_DISAGREE: f64 = 3.0;

/// A window opens once a period.
pub(super) const PERIOD: Duration = Duration::from_secs(1);

/// The shortest window worth its fixed cost, and the longest (beyond it the probes fit
/// continuously, or nearly).
pub(super) const MIN_WINDOW: Duration = Duration::from_millis(2);
pub(super) const MAX_WINDOW: Duration = Duration::from_millis(500);

/// The first window when nothing says how often the probes fire.
pub(super) const FIRST_WINDOW: Duration = Duration::from_millis(5);

/// A window saturates the target when it keeps less than this share of its pace outside
/// the windows (the runtime's own count of its parks, in the window and out of it): every
/// park traps, and whatever the target does while the breakpoints are in place (requests
/// in flight) waits for the traps. On the benchmark's HTTP service a window keeps 5-10%.
pub(super) const SATURATED: f64 = 0.5;

/// The fewest parks a window must expect at the target's pace outside the windows for
/// its pace inside to be judged (the runtime counts one in 8: 25 of its samples).
pub(super) const PACE_PARKS: f64 = 200.0;

/// A window's length on a target windows saturate, once the sample holds
/// [`SAMPLE_PARKS`]: the runtime counts a park when its goroutine runs again, which a
/// saturated target delays past a short window's close (windows of 2-20 ms scaled parks
/// to 1.5-1.9x the runtime's count); the sample's own windows, 20-100 ms, agree within 5-18%.
pub(super) const SATURATED_WINDOW: Duration = Duration::from_millis(40);

/// The share of the time a saturating window's breakpoints may be in place. A request that
/// meets a window is slowed by about the breakpoints' time in place, so this is about the
/// share of requests slowed: the target's p99 becomes about its p99.1 untraced. At 1% of
/// the time, the old duty at the default budget, the p99 was the window's length (1.2x of
/// untraced on the HTTP service, where p99 is a few ms and a window 5-20 ms in place).
pub(super) const LATENCY_SHARE: f64 = 0.001;

/// The same share while the sample is not yet in ([`SAMPLE_PARKS`]): the gap after a
/// saturating window is 99 times its breakpoints' time in place, about 5 s after one of
/// 50 ms. Windows every second or two until the sample was in (4-5 of them, 300 ms in
/// place in an 8 s run of the benchmark's HTTP service, 3.6% of the time) slowed a few
/// per mille of its requests: p99 1.14x of untraced.
pub(super) const SAMPLE_SHARE: f64 = 0.01;

/// And that gap is at most this long, so that the sample is in a few seconds into the
/// trace even on a loaded machine, where placing and removing the probes of the first
/// 5 ms window kept them in place 70-110 ms (a gap of 10 s, past a 10 s trace).
pub(super) const SAMPLE_GAP: Duration = Duration::from_secs(3);

/// A saturating window taken while the sample is not yet in lasts until the runtime's
/// count says the windows hold [`SAMPLE_PARKS`] (read every [`SAMPLE_POLL`], from
/// [`SATURATED_WINDOW`] on), and at most this long: the whole sample in one window. The
/// HTTP service keeps 110,000-150,000 parks/s in a window (a hit on a push costs ~1 us),
/// so its sample windows close at 40-110 ms holding 6,000-12,000.
pub(super) const SAMPLE_WINDOW: Duration = Duration::from_millis(120);
pub(super) const SAMPLE_POLL: Duration = Duration::from_millis(5);

/// A sample window is taken when the park probe's rate in the last window would fill the
/// sample in this many windows of [`SAMPLE_WINDOW`]: the HTTP service fires it 10-30,000
/// times a second (measured with the probes' placing and removal, 1,300-3,600 in 120 ms),
/// the allocation loop, whose stops the runtime counts are mostly preemptions, a few
/// hundred.
pub(super) const SAMPLE_FILL: f64 = 4.0;

/// A window that saturates the target starts its sample this long after its probes are in
/// place. The runtime counts a park when its goroutine runs again: a window's first
/// milliseconds run the goroutines that parked before it, at the target's own pace, and
/// the runtime counts them in the window, where no probe saw their parks (a sample window
/// closed at 1,500 of the runtime's parks 45 ms in scaled parks to 0.64x its count). Once
/// the target runs at the probes' pace, what the window's first parks leave to run after
/// its close is about what it ran of those before it.
pub(super) const SETTLE: Duration = Duration::from_millis(10);

/// The runtime's parks the windows must hold before saturating windows become rare. The
/// runtime counts one stop in 8 per goroutine, and its count of a window's parks is its
/// stops less the first runs of the goroutines created in it (`parks_since`): on the
/// benchmark's HTTP service, which creates two goroutines for every three parks, a window
/// of 1,000-2,000 parks is off by 20-60% either way (edges, rounding to eights). With
/// 1,500 parks, two windows of 10 ms scaled parks to 0.28-0.68x the runtime's count over
/// the trace in 2 of 18 runs; with 4,000 (about 500 of its samples, 40-110 ms in place
/// once), 0.86-1.06x in 16 runs.
pub(super) const SAMPLE_PARKS: u64 = 4000;

/// A window being closed: its links drop on a thread.
pub(super) struct Closing {
    pub(super) detach: JoinHandle<Detached>,
    /// The sample's length: from the last probe in place to the close.
    pub(super) length: Duration,
    /// When the first probe of the window began to be placed.
    pub(super) placing: Instant,
    pub(super) attach: Duration,
    pub(super) counts_at_open: Counts,
}

pub(super) struct Open {
    /// When the sample starts (see [`SETTLE`]), and whether it has.
    pub(super) at: Instant,
    pub(super) settled: bool,
    pub(super) placing: Instant,
    pub(super) attach: Duration,
    pub(super) counts: Counts,
}

#[derive(Default)]
pub(super) struct Windows {
    /// The probes placed only in windows.
    pub probes: Vec<Probe>,
    pub(super) offsets: HashMap<Probe, Vec<u64>>,
    /// The next window's length, and what it is planned to cost (CPU seconds).
    pub(super) length: Duration,
    pub(super) planned: f64,
    /// Hits per second of the windowed probes together, as last measured.
    pub(super) rate: Option<f64>,
    /// What one hit of each windowed probe costs, and one of them on average over the
    /// last window's hits (at first, over the probes).
    cost_of: HashMap<Probe, Duration>,
    pub(super) per_hit: Duration,
    pub(super) open: Option<Open>,
    pub(super) closing: Option<Closing>,
    /// From one window's opening to the next's.
    pub(super) period: Duration,
    /// When the next window opens, or the open one closes.
    pub next: Option<Instant>,
    /// When windowing began, and ended (when the trace stopped).
    pub(super) since: Option<Instant>,
    pub(super) until: Option<Instant>,
    /// The windows' time in place, measured: from the attach to the last record.
    pub on: Duration,
    pub windows: u32,
    /// Of those, the windows that slowed the target under [`SATURATED`] of its pace.
    pub(super) saturated_windows: u32,
    /// What the last closed window cost (CPU seconds), hits and fixed cost together.
    pub last_cost: f64,
    /// Its fixed cost alone.
    pub fixed: Duration,
    /// How long the last window's breakpoints were in place outside its sample: while the
    /// probes were placed, and from the close until the removal began (longer on a busy
    /// machine, where the removing thread waits for a CPU). They are hit then too.
    pub(super) overrun: Duration,
    /// The runtime's own counters (see [`SchedCounters`]) when windowing began, when it
    /// ended, and at the open window's opening; and the parks they counted inside the
    /// windows. The target runs slower inside a window (every hit costs it microseconds),
    /// so it parks less there than outside: the share of the runtime's parks that fell in
    /// the windows, not the share of the time, is what the sampled counts stand for.
    pub(super) sched_since: Option<SchedCounters>,
    pub(super) sched_until: Option<SchedCounters>,
    pub(super) sched_open: Option<SchedCounters>,
    pub(super) sched_parks_in_windows: u64,
    /// The same in every window, those set aside for the scaling too: what the sample
    /// holds ([`SAMPLE_PARKS`]; on the allocation loop the runtime's count is mostly
    /// preemptions, which the park probe does not see, and every window is set aside).
    sched_parks_sampled: u64,
    /// And the goroutines they counted created inside the windows.
    pub(super) sched_created_in_windows: u64,
    /// The parks the probes recorded by the open window's opening; over the windows whose
    /// runtime count is kept, and over those set aside ([`COUNTS_DISAGREE`]).
    probed_at_open: u64,
    probed_parks_kept: u64,
    probed_parks_set_aside: u64,
    pub(super) windows_set_aside: u32,
    /// The runtime's counters at the last live line.
    pub(super) sched_line: Option<SchedCounters>,
    /// The breakpoints' time in the target's code, over the windows closed.
    pub(super) in_place: Duration,
    /// The runtime's counters when the target last ran with no window open (when
    /// windowing began, or the last window closed), and when the open window opened; the
    /// target's parks per second between the two.
    sched_outside: Option<(Instant, SchedCounters)>,
    sched_open_at: Option<Instant>,
    parks_outside: Option<f64>,
    /// The park probe's hits per second in the last window.
    pub(super) parks_inside: Option<f64>,
    /// The target's pace in the last window against its pace outside, from the runtime's
    /// own parks: 1 when the probes did not slow it, under [`SATURATED`] when every park
    /// trapped. The hits a window counts are then what the target managed under the
    /// probes, not what it would do: they are divided by this to plan the next.
    pub(super) pace: Option<f64>,
    /// The open window closes once the sample is in (see [`SAMPLE_WINDOW`]).
    pub(super) sampling: bool,
    /// No window opens before this: the budget has paid for the last one's measured cost
    /// and, when it saturated the target, its breakpoints' time in place is within
    /// [`SAMPLE_SHARE`] or [`LATENCY_SHARE`] of the time.
    pub(super) not_before: Option<Instant>,
}

impl Windows {
    /// Adds `probes` (with the file offsets to place them at) to the windowed set;
    /// `rate` is what they are expected to fire per second together, when known.
    pub fn add(&mut self, probes: Vec<(Probe, Vec<u64>)>, rate: Option<f64>, costs: &HitCosts) {
        if probes.is_empty() {
            return;
        }
        for (p, offs) in probes {
            if !self.probes.contains(&p) {
                self.probes.push(p);
                self.offsets.insert(p, offs);
                self.cost_of.insert(p, costs.of(p));
            }
        }
        if self.windows == 0 {
            self.per_hit = self.cost_of.values().sum::<Duration>() / self.cost_of.len() as u32;
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

    /// A windowed probe's hits cost `cost` from now on (its program was timed).
    pub(super) fn reprice(&mut self, probe: Probe, cost: Duration) {
        if let Some(c) = self.cost_of.get_mut(&probe) {
            *c = cost;
        }
    }

    /// The windowed probes' hits from `then` to `now`, and the CPU (seconds) they cost.
    pub(super) fn hits(&self, now: &Counts, then: &Counts) -> (u64, f64) {
        self.probes.iter().fold((0, 0.0), |(n, cpu), p| {
            let hits = now.hits(*p).saturating_sub(then.hits(*p));
            (n + hits, cpu + hits as f64 * self.cost_of[p].as_secs_f64())
        })
    }

    /// Reads the runtime's counters when windowing begins (`at_start`), a window opens or
    /// closes, or windowing ends.
    pub(super) fn read_sched(&mut self, target: &Target, when: SchedRead) {
        if self.probes.is_empty() {
            return;
        }
        let now = SchedCounters::read(target)
            .inspect_err(|e| log::debug!("the runtime's scheduler counters cannot be read: {e:#}"))
            .ok();
        match when {
            SchedRead::Start => {
                if self.sched_since.is_none() {
                    self.sched_since = now;
                    self.sched_outside = now.map(|c| (Instant::now(), c));
                }
            }
            SchedRead::Open { probed_parks } => {
                self.probed_at_open = probed_parks;
                self.sched_open = now;
                self.sched_open_at = Some(Instant::now());
                self.parks_outside = match (self.sched_outside, now) {
                    (Some((at, then)), Some(now)) => {
                        Some(now.parks_since(&then) as f64 / at.elapsed().as_secs_f64())
                    }
                    _ => None,
                };
            }
            SchedRead::Close { probed_parks } => {
                if let (Some(open), Some(now)) = (self.sched_open.take(), now) {
                    let parks = now.parks_since(&open);
                    self.sched_created_in_windows += now.created_since(&open);
                    let lasted = self
                        .sched_open_at
                        .map(|at| at.elapsed().as_secs_f64().max(1e-4));
                    // A target that parks too seldom for the window to expect
                    // [`PACE_PARKS`] of them at its pace outside has no pace to judge by
                    // (the allocation loop: a few hundred parks a second, and its counted
                    // stops are mostly preemptions).
                    self.pace = match (lasted, self.parks_outside) {
                        (Some(t), Some(o)) if o * t >= PACE_PARKS => {
                            Some((parks as f64 / t / o).clamp(0.01, 1.0))
                        }
                        _ => None,
                    };
                    self.saturated_windows += u32::from(self.saturated());
                    let probed = probed_parks.saturating_sub(self.probed_at_open);
                    self.sched_parks_sampled += parks;
                    log::debug!(
                        "window sample: the runtime counted {} stops, {} created, {parks} parks in {lasted:?} s (pace {:?}); the probes {probed} parks",
                        now.stops.wrapping_sub(open.stops),
                        now.created_since(&open),
                        self.pace
                    );
                    // The pace is judged by the runtime's count in and out of the windows
                    // alike, whatever it counts; the share of the parks is not.
                    if self.windowed(Probe::Gopark) && disagree(parks, probed) {
                        log::debug!("window sample set aside for the scaling");
                        self.windows_set_aside += 1;
                        self.probed_parks_set_aside += probed;
                    } else {
                        self.probed_parks_kept += probed;
                        self.sched_parks_in_windows += parks;
                    }
                }
                self.sched_outside = now.map(|c| (Instant::now(), c));
            }
            SchedRead::End => self.sched_until = now,
        }
    }

    /// The runtime's parks the windows still need for [`SAMPLE_PARKS`]; none when its
    /// counters cannot be read.
    pub(super) fn missing_parks(&self) -> Option<u64> {
        self.sched_since?;
        Some(SAMPLE_PARKS.saturating_sub(self.sched_parks_sampled))
    }

    /// Whether the open window holds the parks the sample still needed when it opened, by
    /// the runtime's count now.
    pub(super) fn sample_in(&self, target: &Target) -> bool {
        let (Some(missing), Some(open)) = (self.missing_parks(), self.sched_open) else {
            return false;
        };
        SchedCounters::read(target).is_ok_and(|now| now.parks_since(&open) >= missing)
    }

    /// Whether the park probe fired fast enough in the last window for sample windows to
    /// fill the `missing` parks of the sample ([`SAMPLE_FILL`]).
    pub(super) fn can_fill(&self, missing: u64) -> bool {
        self.parks_inside
            .is_some_and(|p| p * SAMPLE_WINDOW.as_secs_f64() * SAMPLE_FILL >= missing as f64)
    }

    /// Whether the last window slowed the target under [`SATURATED`] of its pace.
    pub(super) fn saturated(&self) -> bool {
        self.pace.is_some_and(|p| p < SATURATED)
    }

    /// The runtime's parks over the windowed time, and the share of them the windows
    /// covered, when its counters could be read throughout. Windows whose runtime count
    /// was set aside stand in the share for what the probes saw in them, at the kept
    /// windows' ratio of the two: a scaled count is the kept windows' parks over their
    /// share of the runtime's.
    pub fn runtime_parks(&self) -> Option<(u64, f64)> {
        let total = self.sched_until?.parks_since(&self.sched_since?);
        let (total, kept) = share(total, self.sched_parks_in_windows)?;
        if self.probed_parks_set_aside == 0 {
            return Some((total, kept));
        }
        (self.probed_parks_kept > 0).then(|| {
            let all = self.probed_parks_kept + self.probed_parks_set_aside;
            let share = kept * all as f64 / self.probed_parks_kept as f64;
            (total, share.min(1.0))
        })
    }

    /// The runtime's parks since the last call (the first time: since windowing began),
    /// read now: what a live line of windowed parks stands for, whether or not a window
    /// fell in its interval.
    pub fn parks_since_last_line(&mut self, target: &Target) -> Option<u64> {
        let now = SchedCounters::read(target).ok()?;
        let since = self.sched_line.or(self.sched_since)?;
        self.sched_line = Some(now);
        Some(now.parks_since(&since))
    }

    /// The same for the goroutines the runtime created.
    pub fn runtime_created(&self) -> Option<(u64, f64)> {
        let total = self.sched_until?.created_since(&self.sched_since?);
        share(total, self.sched_created_in_windows)
    }

    /// How long windowing lasted (so far, or until the trace stopped).
    pub fn lasted(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |since| {
            self.until
                .unwrap_or_else(Instant::now)
                .duration_since(since)
        })
    }

    pub fn windowed(&self, p: Probe) -> bool {
        self.probes.contains(&p)
    }

    /// The fraction of the time windowing lasted (so far, or until the trace stopped) that
    /// the windows were open (0 before the first closes).
    pub fn duty(&self) -> f64 {
        let Some(since) = self.since else {
            return 1.0;
        };
        let lasted = self
            .until
            .unwrap_or_else(Instant::now)
            .duration_since(since);
        (self.on.as_secs_f64() / lasted.as_secs_f64().max(1e-3)).min(1.0)
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
                    saturated: 0,
                    window_ms: 0.0,
                    breakpoints_in_place_ms: 0.0,
                },
            );
        }
        let duty = self.duty();
        for p in &self.probes {
            out.insert(
                p.function().to_string(),
                Sampling {
                    mode: "windows",
                    duty,
                    windows: self.windows,
                    saturated: self.saturated_windows,
                    window_ms: self.on.as_secs_f64() * 1e3 / f64::from(self.windows.max(1)),
                    breakpoints_in_place_ms: self.in_place.as_secs_f64() * 1e3,
                },
            );
        }
        out
    }
}

/// Whether a window's parks by the runtime's count and by the probes' differ by more than
/// [`COUNTS_DISAGREE`]; windows of fewer than [`PACE_PARKS`] are too small to judge.
fn disagree(runtime: u64, probed: u64) -> bool {
    let (r, p) = (runtime.max(1) as f64, probed.max(1) as f64);
    r.max(p) >= PACE_PARKS && (r / p > COUNTS_DISAGREE || p / r > COUNTS_DISAGREE)
}

/// `total`, with the share of it `inside` is, when both are counted.
fn share(total: u64, inside: u64) -> Option<(u64, f64)> {
    (total > 0 && inside > 0).then(|| (total, (inside as f64 / total as f64).min(1.0)))
}

/// The first window opens soon after the probes are windowed.
pub(super) const QUICK_FIRST: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_whose_counts_disagree_is_set_aside_and_scaled_at_the_others_ratio() {
        assert!(!disagree(1_516, 1_000));
        assert!(!disagree(449, 1_300));
        assert!(disagree(44_900, 1_525));
        assert!(disagree(200, 1_000));
        assert!(!disagree(10, 150), "too few to judge");
        let mut w = Windows {
            sched_since: Some(SchedCounters { stops: 0, goids: 0 }),
            sched_until: Some(SchedCounters {
                stops: 1_000_000,
                goids: 0,
            }),
            sched_parks_in_windows: 10_000,
            probed_parks_kept: 9_000,
            ..Windows::default()
        };
        assert_eq!(w.runtime_parks(), Some((1_000_000, 0.01)));
        // A window the probes saw 1,500 parks in counts as 1,500 * 10,000 / 9,000 of the
        // runtime's: all the probes' parks over the share are the kept ones' 9,000 / 0.01.
        w.probed_parks_set_aside = 1_500;
        w.windows_set_aside = 1;
        let (_, share) = w.runtime_parks().unwrap();
        assert!((10_500.0 / share - 900_000.0).abs() < 1.0, "{share}");
        // With every window set aside there is nothing to scale by.
        w.probed_parks_kept = 0;
        assert_eq!(w.runtime_parks(), None);
    }
}
