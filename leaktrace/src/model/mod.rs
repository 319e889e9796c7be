//! The model: what leaktrace knows about the target, kept current by records and snapshots:
//! its goroutines as the probes saw them (here), the histograms of park durations,
//! lifetimes and sizes (`histograms`), and the memory timeline (`memory`). Plain data
//! structures; they neither read the target nor print anything.

pub mod histograms;
pub mod memory;

use std::collections::{BTreeMap, HashMap};

use leaktrace_common::{Record, RecordKind};

pub use memory::MemoryPoint;

/// Where a goroutine stands, as far as the records say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Blocked in gopark since `since_ns`, with `reason` (a raw waitReason value).
    Parked { reason: u8, since_ns: u64 },
    /// Made runnable by `ready` at `since_ns`.
    Runnable { since_ns: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Goroutine {
    pub goid: u64,
    pub state: State,
    /// gopark's lock argument at the last park (the hchan for channel operations).
    pub wait_addr: u64,
    /// Return address into gopark's caller at the last park (runtime address).
    pub park_pc: u64,
    /// `g.trackingSeq` while in the last park: a wake-up or a snapshot with another value
    /// is about a later park.
    pub park_seq: u8,
    pub parks: u64,
    pub wakes: u64,
    /// When the create probe saw it start, if it did.
    pub created_ns: Option<u64>,
    /// The last time a record or a snapshot saw it in its last park.
    pub last_seen_parked_ns: u64,
}

impl Goroutine {
    /// When the last record about it was made.
    fn last_record_ns(&self) -> u64 {
        let (State::Parked { since_ns, .. } | State::Runnable { since_ns }) = self.state;
        since_ns.max(self.created_ns.unwrap_or(0))
    }

    /// A goroutine first seen runnable at `ts_ns`.
    fn runnable(goid: u64, ts_ns: u64) -> Self {
        Self {
            goid,
            state: State::Runnable { since_ns: ts_ns },
            wait_addr: 0,
            park_pc: 0,
            park_seq: 0,
            parks: 0,
            wakes: 0,
            created_ns: None,
            last_seen_parked_ns: 0,
        }
    }
}

/// Counts per wait reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub parks: BTreeMap<u8, u64>,
    /// Wake-ups, by the wait reason of the park they ended.
    pub wakes: BTreeMap<u8, u64>,
    /// Wake-ups of goroutines whose park was not seen (they blocked before we attached).
    pub wakes_unseen_park: u64,
}

impl Tally {
    pub fn total_parks(&self) -> u64 {
        self.parks.values().sum()
    }
    pub fn total_wakes(&self) -> u64 {
        self.wakes.values().sum::<u64>() + self.wakes_unseen_park
    }

    /// The counts divided by `duty`: what they would have been had the probes been in
    /// place all the time.
    pub fn scaled(&self, duty: f64) -> Tally {
        let s = |n: u64| (n as f64 / duty.max(1e-6)).round() as u64;
        Tally {
            parks: self.parks.iter().map(|(r, n)| (*r, s(*n))).collect(),
            wakes: self.wakes.iter().map(|(r, n)| (*r, s(*n))).collect(),
            wakes_unseen_park: s(self.wakes_unseen_park),
        }
    }
}

/// What applying a record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Parked,
    /// A second gopark entry for a goroutine already parked with the same reason and site:
    /// the entry probe fires again when gopark's prologue grows the stack and restarts the
    /// function (Go's morestack re-entry), so it is not a new park.
    ReEntry,
    Woken {
        reason: Option<u8>,
        /// How long it was parked, when its park was seen.
        parked_ns: Option<u64>,
    },
    /// The same wake-up seen by a second probe.
    Duplicate,
    Created,
    /// With its lifetime, when its creation was seen.
    Exited {
        lifetime_ns: Option<u64>,
    },
    /// A channel operation or select: the model keeps no state for it.
    Other,
    Unknown,
}

#[derive(Debug, Default)]
pub struct Model {
    pub goroutines: HashMap<u64, Goroutine>,
    /// Since the last [`Model::take_interval`].
    pub interval: Tally,
    pub total: Tally,
    /// Goroutines created and exited while the create/exit probes ran.
    pub created: u64,
    pub exited: u64,
    /// When park/wake run in windows: when the current one opened (BPF clock). A state
    /// recorded before it is stale: the goroutine may have moved any number of times
    /// between windows.
    pub window_start_ns: u64,
    /// And when it closed (`u64::MAX` while open): a park or wake-up after it, from a
    /// breakpoint the kernel has not removed yet, is outside the sample and not counted.
    pub window_end_ns: Option<u64>,
    /// When create/exit run in windows: the current one (its end `u64::MAX` while open).
    /// A creation or exit outside it is not counted.
    pub lives_window: Option<(u64, u64)>,
    /// Parks that outlasted their window and whose end was seen too late to time: by a
    /// wake-up whose `trackingSeq` says a later park ended (the duration of neither is
    /// known), or by a snapshot long after the park was last seen on.
    pub outlasted_window: u64,
    /// Parks that began in one window and ended in a later one (the wake-up carries the
    /// park's `trackingSeq`): measured exactly.
    pub exact_across_windows: u64,
    /// Parks that outlasted their window, that a snapshot saw still on and a later one
    /// over: their duration is known to within the time between the two, at most as long
    /// as the time they were seen to last.
    pub closed_by_snapshot: u64,
}

/// A park a snapshot saw over: its wait reason, its duration (the middle of the interval
/// in which it ended) and how far that can be off either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClosedBySnapshot {
    pub reason: u8,
    pub parked_ns: u64,
    pub within_ns: u64,
}

impl Model {
    pub fn apply(&mut self, r: &Record) -> Applied {
        match RecordKind::from_u8(r.kind) {
            Some(RecordKind::Park | RecordKind::Wake) if !self.in_window(r.ts_ns) => Applied::Other,
            Some(RecordKind::Park) => self.park(r),
            Some(RecordKind::Wake) => self.wake(r),
            Some(RecordKind::Create | RecordKind::Exit)
                if self
                    .lives_window
                    .is_some_and(|(a, b)| !(a..=b).contains(&r.ts_ns)) =>
            {
                Applied::Other
            }
            Some(RecordKind::Create) => {
                self.created += 1;
                self.goroutines
                    .entry(r.goid)
                    .or_insert(Goroutine::runnable(r.goid, r.ts_ns))
                    .created_ns = Some(r.ts_ns);
                Applied::Created
            }
            Some(RecordKind::Exit) => {
                self.exited += 1;
                // goids are never reused: forget the goroutine, keep the count.
                let created = self.goroutines.remove(&r.goid).and_then(|g| g.created_ns);
                Applied::Exited {
                    lifetime_ns: created.map(|c| r.ts_ns.saturating_sub(c)),
                }
            }
            Some(_) => Applied::Other,
            None => Applied::Unknown,
        }
    }

    fn park(&mut self, r: &Record) -> Applied {
        let g = self
            .goroutines
            .entry(r.goid)
            .or_insert(Goroutine::runnable(r.goid, r.ts_ns));
        if let State::Parked { reason, since_ns } = g.state
            && reason == r.reason
            && g.park_pc == r.pc
            && since_ns >= self.window_start_ns
        {
            return Applied::ReEntry;
        }
        g.state = State::Parked {
            reason: r.reason,
            since_ns: r.ts_ns,
        };
        g.wait_addr = r.addr;
        g.park_pc = r.pc;
        g.park_seq = r.seq;
        g.last_seen_parked_ns = r.ts_ns;
        g.parks += 1;
        for t in [&mut self.interval, &mut self.total] {
            *t.parks.entry(r.reason).or_default() += 1;
        }
        Applied::Parked
    }

    fn wake(&mut self, r: &Record) -> Applied {
        let (reason, parked_ns) = match self.goroutines.get_mut(&r.goid) {
            // `ready` and, inside it, `casgstatus` both report the same wake-up when both
            // probes are placed: a goroutine already runnable is not woken again.
            Some(g)
                if matches!(g.state, State::Runnable { since_ns } if since_ns >= self.window_start_ns)
                    && g.wakes > 0 =>
            {
                return Applied::Duplicate;
            }
            Some(g) => {
                let parked = match g.state {
                    State::Parked { reason, since_ns }
                        if since_ns < self.window_start_ns && r.seq == g.park_seq =>
                    {
                        self.exact_across_windows += 1;
                        (Some(reason), Some(r.ts_ns.saturating_sub(since_ns)))
                    }
                    State::Parked { reason, since_ns } if since_ns < self.window_start_ns => {
                        self.outlasted_window += 1;
                        (Some(reason), None)
                    }
                    State::Parked { reason, since_ns } => {
                        (Some(reason), Some(r.ts_ns.saturating_sub(since_ns)))
                    }
                    State::Runnable { .. } => (None, None),
                };
                g.state = State::Runnable { since_ns: r.ts_ns };
                g.wakes += 1;
                parked
            }
            None => {
                self.goroutines.insert(
                    r.goid,
                    Goroutine {
                        wakes: 1,
                        ..Goroutine::runnable(r.goid, r.ts_ns)
                    },
                );
                (None, None)
            }
        };
        for t in [&mut self.interval, &mut self.total] {
            match reason {
                Some(reason) => *t.wakes.entry(reason).or_default() += 1,
                None => t.wakes_unseen_park += 1,
            }
        }
        Applied::Woken { reason, parked_ns }
    }

    /// Forgets the goroutines a snapshot no longer holds (`live` is false for them) whose
    /// last record is older than `before_ns`, when the walk began: their exit was not seen
    /// (the exit probe was shed, or its record lost). Without this the model would grow
    /// with every goroutine that ever ran. Returns how many were forgotten.
    pub fn forget_absent(&mut self, live: impl Fn(u64) -> bool, before_ns: u64) -> usize {
        let before = self.goroutines.len();
        self.goroutines
            .retain(|goid, g| live(*goid) || g.last_record_ns() >= before_ns);
        before - self.goroutines.len()
    }

    /// Closes the parks that outlasted their window and that a snapshot, whose walk began
    /// at `walk_ns` and ended at `taken_ns`, saw over: `parked(goid)` is the goroutine's
    /// `trackingSeq` when the snapshot saw it waiting, none when it was running, runnable
    /// or gone. A park it saw still on is known to have lasted until the walk began.
    /// Only when park/wake run in windows, and between them: in one, or with the probes
    /// always on, the wake-up's record is the witness.
    pub fn close_by_snapshot(
        &mut self,
        parked: impl Fn(u64) -> Option<u8>,
        walk_ns: u64,
        taken_ns: u64,
    ) -> Vec<ClosedBySnapshot> {
        if matches!(self.window_end_ns, None | Some(u64::MAX)) {
            return Vec::new();
        }
        let mut closed = Vec::new();
        for g in self.goroutines.values_mut() {
            let State::Parked { reason, since_ns } = g.state else {
                continue;
            };
            // Parked after the walk began: the walk may have read it before.
            if g.last_seen_parked_ns >= walk_ns {
                continue;
            }
            if parked(g.goid) == Some(g.park_seq) {
                g.last_seen_parked_ns = walk_ns;
                continue;
            }
            // Over between `lo` and `hi`. Timed only when that span is no longer than the
            // time it is known to have lasted (a snapshot saw it on before): then the
            // middle is within a third of the truth. A park last seen at its beginning
            // may have ended a microsecond after the window closed or a second later.
            let (lo, hi) = (g.last_seen_parked_ns, taken_ns.max(g.last_seen_parked_ns));
            if lo > since_ns && lo - since_ns >= hi - lo {
                closed.push(ClosedBySnapshot {
                    reason,
                    parked_ns: (lo + (hi - lo) / 2).saturating_sub(since_ns),
                    within_ns: (hi - lo) / 2,
                });
            } else {
                self.outlasted_window += 1;
            }
            // Runnable since some time in between: the earliest, so that a goroutine gone
            // from the snapshot is forgotten with the rest.
            g.state = State::Runnable { since_ns: lo };
        }
        self.closed_by_snapshot += closed.len() as u64;
        closed
    }

    /// A probe window opens at `ts_ns`: what was recorded before is stale.
    pub fn open_window(&mut self, ts_ns: u64) {
        self.window_start_ns = ts_ns;
        self.window_end_ns = Some(u64::MAX);
    }

    /// The window closes at `ts_ns`.
    pub fn close_window(&mut self, ts_ns: u64) {
        self.window_end_ns = Some(ts_ns);
    }

    /// A window of the create/exit probes opens at `ts_ns`.
    pub fn open_lives_window(&mut self, ts_ns: u64) {
        self.lives_window = Some((ts_ns, u64::MAX));
    }

    /// And closes at `ts_ns`.
    pub fn close_lives_window(&mut self, ts_ns: u64) {
        if let Some((_, end)) = self.lives_window.as_mut() {
            *end = ts_ns;
        }
    }

    /// Whether a park or wake-up at `ts_ns` is in the sample: always, unless park/wake
    /// run in windows and it fell outside the current one.
    fn in_window(&self, ts_ns: u64) -> bool {
        match self.window_end_ns {
            Some(end) => (self.window_start_ns..=end).contains(&ts_ns),
            None => true,
        }
    }

    /// Goroutines parked in a window and not seen to wake since.
    pub fn open_parks(&self) -> u64 {
        self.goroutines
            .values()
            .filter(|g| matches!(g.state, State::Parked { .. }))
            .count() as u64
    }

    /// Returns the tallies since the last call and starts a new interval.
    pub fn take_interval(&mut self) -> Tally {
        std::mem::take(&mut self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: RecordKind, goid: u64, reason: u8, pc: u64, ts: u64) -> Record {
        Record {
            ts_ns: ts,
            goid,
            kind: kind as u8,
            reason,
            pc,
            ..Record::default()
        }
    }

    #[test]
    fn goroutines_a_snapshot_misses_are_forgotten_unless_recorded_during_the_walk() {
        let mut m = Model::default();
        m.apply(&rec(RecordKind::Create, 1, 0, 0, 10)); // alive, in the snapshot
        m.apply(&rec(RecordKind::Create, 2, 0, 0, 20)); // exited unseen
        m.apply(&rec(RecordKind::Park, 3, 15, 0x10, 30)); // parked, then exited unseen
        m.apply(&rec(RecordKind::Create, 4, 0, 0, 100)); // created during the walk
        assert_eq!(m.forget_absent(|goid| goid == 1, 50), 2);
        let mut left: Vec<u64> = m.goroutines.keys().copied().collect();
        left.sort();
        assert_eq!(left, [1, 4]);
        assert_eq!(m.created, 3, "the counts stay");
    }

    #[test]
    fn park_then_wake_is_counted_under_the_parks_reason() {
        let mut m = Model::default();
        assert_eq!(
            m.apply(&rec(RecordKind::Park, 7, 15, 0x10, 1)),
            Applied::Parked
        );
        assert_eq!(
            m.apply(&rec(RecordKind::Wake, 7, 0, 0, 2)),
            Applied::Woken {
                reason: Some(15),
                parked_ns: Some(1)
            }
        );
        assert_eq!(m.total.parks[&15], 1);
        assert_eq!(m.total.wakes[&15], 1);
        assert_eq!(m.goroutines[&7].state, State::Runnable { since_ns: 2 });
    }

    #[test]
    fn a_second_entry_at_the_same_site_is_a_reentry_not_a_park() {
        let mut m = Model::default();
        m.apply(&rec(RecordKind::Park, 7, 15, 0x10, 1));
        assert_eq!(
            m.apply(&rec(RecordKind::Park, 7, 15, 0x10, 2)),
            Applied::ReEntry
        );
        assert_eq!(m.total.total_parks(), 1);
        // A different site is a real new park (the earlier one was abandoned).
        assert_eq!(
            m.apply(&rec(RecordKind::Park, 7, 15, 0x20, 3)),
            Applied::Parked
        );
    }

    #[test]
    fn an_exit_after_a_seen_creation_gives_the_lifetime() {
        let mut m = Model::default();
        m.apply(&rec(RecordKind::Create, 5, 0, 0, 100));
        m.apply(&rec(RecordKind::Park, 5, 15, 0x10, 150));
        m.apply(&rec(RecordKind::Wake, 5, 0, 0, 170));
        assert_eq!(
            m.apply(&rec(RecordKind::Exit, 5, 0, 0, 400)),
            Applied::Exited {
                lifetime_ns: Some(300)
            }
        );
        assert_eq!(
            m.apply(&rec(RecordKind::Exit, 6, 0, 0, 500)),
            Applied::Exited { lifetime_ns: None }
        );
    }

    #[test]
    fn in_windows_only_creations_and_exits_within_one_count_and_parks_are_judged_apart() {
        let mut m = Model::default();
        m.open_lives_window(100);
        m.apply(&rec(RecordKind::Create, 1, 0, 0, 110));
        m.apply(&rec(RecordKind::Exit, 1, 0, 0, 150));
        m.close_lives_window(200);
        // A breakpoint not yet removed: outside the sample.
        assert_eq!(
            m.apply(&rec(RecordKind::Create, 2, 0, 0, 210)),
            Applied::Other
        );
        assert_eq!(
            m.apply(&rec(RecordKind::Exit, 3, 0, 0, 220)),
            Applied::Other
        );
        assert_eq!((m.created, m.exited), (1, 1));
        // Park/wake not in windows: counted whenever they come.
        m.apply(&rec(RecordKind::Park, 4, 7, 0x10, 300));
        assert_eq!(m.total.total_parks(), 1);
    }

    #[test]
    fn waking_an_unseen_goroutine_is_counted_apart() {
        let mut m = Model::default();
        m.apply(&rec(RecordKind::Wake, 9, 0, 0, 1));
        assert_eq!(m.total.wakes_unseen_park, 1);
        assert_eq!(m.take_interval().total_wakes(), 1);
        assert_eq!(m.interval.total_wakes(), 0);
    }

    #[test]
    fn in_windows_only_parks_within_one_window_are_timed_and_nothing_outside_counts() {
        let mut m = Model::default();
        m.open_window(100);
        m.apply(&rec(RecordKind::Park, 1, 7, 0x10, 110));
        m.apply(&rec(RecordKind::Park, 2, 7, 0x10, 120));
        m.apply(&rec(RecordKind::Wake, 2, 0, 0, 150));
        m.close_window(200);
        // A breakpoint not yet removed: after the close, outside the sample.
        assert_eq!(
            m.apply(&rec(RecordKind::Park, 3, 7, 0x10, 210)),
            Applied::Other
        );
        m.open_window(1000);
        // Goroutine 2 parked and woke unseen between the windows: its wake-up now is
        // neither a duplicate nor the end of the park seen at 110.
        m.apply(&rec(RecordKind::Park, 2, 7, 0x10, 1010));
        assert_eq!(
            m.apply(&rec(RecordKind::Wake, 2, 0, 0, 1030)),
            Applied::Woken {
                reason: Some(7),
                parked_ns: Some(20)
            }
        );
        // Goroutine 1's park began in the last window, and its trackingSeq says the
        // wake-up ends a later park, unseen: the wake-up is counted, untimed.
        assert_eq!(
            m.apply(&Record {
                seq: 9,
                ..rec(RecordKind::Wake, 1, 0, 0, 1040)
            }),
            Applied::Woken {
                reason: Some(7),
                parked_ns: None
            }
        );
        assert_eq!(m.outlasted_window, 1);
        assert_eq!(m.total.total_parks(), 3);
        assert_eq!(m.total.scaled(0.5).total_parks(), 6);
    }

    #[test]
    fn a_park_outlasting_its_window_is_timed_by_the_next_windows_wake_of_the_same_park() {
        let mut m = Model::default();
        m.open_window(100);
        m.apply(&Record {
            seq: 41,
            ..rec(RecordKind::Park, 1, 7, 0x10, 110)
        });
        m.close_window(200);
        m.open_window(1000);
        assert_eq!(
            m.apply(&Record {
                seq: 41,
                ..rec(RecordKind::Wake, 1, 0, 0, 1040)
            }),
            Applied::Woken {
                reason: Some(7),
                parked_ns: Some(930)
            }
        );
        assert_eq!((m.exact_across_windows, m.outlasted_window), (1, 0));
    }

    #[test]
    fn between_windows_snapshots_time_the_parks_they_saw_on_and_then_over() {
        let mut m = Model::default();
        let park = |goid, seq, ts| Record {
            seq,
            ..rec(RecordKind::Park, goid, 7, 0x10, ts)
        };
        m.open_window(100);
        m.apply(&park(1, 5, 110)); // still in that park at the snapshot
        m.apply(&park(2, 5, 120)); // parked again since (another trackingSeq)
        m.apply(&park(3, 5, 130)); // running at the snapshot
        m.apply(&park(4, 5, 140)); // exited
        // Inside a window, snapshots leave parks to the wake-ups.
        assert!(m.close_by_snapshot(|_| None, 150, 160).is_empty());
        m.close_window(200);
        let seen = |goid| match goid {
            1 => Some(5),
            2 => Some(6),
            _ => None,
        };
        // Over somewhere between the park and the snapshot's end, with nothing to say
        // when: not timed.
        assert!(m.close_by_snapshot(seen, 1000, 1100).is_empty());
        assert_eq!((m.closed_by_snapshot, m.outlasted_window), (0, 3));
        assert_eq!(m.goroutines[&1].last_seen_parked_ns, 1000);
        // Seen on at 1000, over by 1600: 890 to 1490 ns, timed as the middle.
        assert_eq!(
            m.close_by_snapshot(|_| None, 1500, 1600),
            [ClosedBySnapshot {
                reason: 7,
                parked_ns: 1300 - 110,
                within_ns: 300
            }]
        );
        assert_eq!(m.closed_by_snapshot, 1);
        // Gone from the snapshot and closed: forgotten with the other exits.
        assert_eq!(m.forget_absent(|goid| goid != 4, 2000), 1);
    }
}
