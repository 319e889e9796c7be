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

use crate::{
    probes::{Counts, Detached, Probe},
    report::schema::Sampling,
};

/// A window opens once a period.
pub(super) const PERIOD: Duration = Duration::from_secs(1);

/// The shortest window worth its fixed cost, and the longest (beyond it the probes fit
/// continuously, or nearly).
pub(super) const MIN_WINDOW: Duration = Duration::from_millis(2);
pub(super) const MAX_WINDOW: Duration = Duration::from_millis(500);

/// The first window when nothing says how often the probes fire.
pub(super) const FIRST_WINDOW: Duration = Duration::from_millis(5);

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
    pub(super) at: Instant,
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
    pub skipped: u32,
    /// What the last closed window cost (CPU seconds), hits and fixed cost together.
    pub last_cost: f64,
    /// Its fixed cost alone.
    pub fixed: Duration,
    /// How long the last window's breakpoints were in place outside its sample: while the
    /// probes were placed, and from the close until the removal began (longer on a busy
    /// machine, where the removing thread waits for a CPU). They are hit then too.
    pub(super) overrun: Duration,
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
                    window_ms: 0.0,
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
                    window_ms: self.on.as_secs_f64() * 1e3 / f64::from(self.windows.max(1)),
                },
            );
        }
        out
    }
}

/// The first window opens soon after the probes are windowed.
pub(super) const QUICK_FIRST: Duration = Duration::from_millis(50);
