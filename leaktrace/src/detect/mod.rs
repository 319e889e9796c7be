//! Leak groups and verdicts: goroutines grouped by (wait reason, blocking site, creation
//! site), followed across snapshots, and judged on the evidence for and against a leak.
//!
//! Evidence for: blocked at least `min_age`; no goroutine of the group left its site while
//! observed; no wake-up seen by the park/wake probes; the group grew and never shrank; a nil
//! channel or an empty select, which can never proceed; each goroutine waiting on its own
//! channel with nobody on the other side. Evidence against: goroutines moving on from the
//! site, a group that shrinks (a pool, not a leak), a select that waits on a timer channel
//! (it will fire), receivers sharing one channel without growing (an idle pool), the main
//! goroutine. Sleep, IO wait and runtime-internal waits are never suspects.

pub mod pinned;
pub mod proof;
pub mod verdict;

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::BuildHasherDefault,
    sync::Arc,
    time::Duration,
};

use serde::Serialize;

use crate::{
    alloc::Allocated,
    census::{
        CreatedBy, Seconds, StackFrame,
        channels::ChannelState,
        retained::{AddrHasher, AddrMap, AddrSet},
    },
    detect::proof::Proof,
};

/// Suspects are reported at or above this score (see [`Confidence`]).
const REPORT_SCORE: i32 = 2;

/// A source position: function, file, line.
pub type Site = (Arc<str>, Arc<str>, u32);

/// What makes goroutines one group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// Go's wording of the wait reason ("chan send"), or the status ("runnable").
    pub state: Arc<str>,
    /// The innermost frame Go's traceback shows: where the goroutine blocked in user code.
    pub site: Option<Site>,
    /// The `go` statement that created it.
    pub created: Option<Site>,
}

/// One goroutine in one snapshot, as the detector needs it.
#[derive(Clone, Debug)]
pub struct Observed {
    pub goid: u64,
    pub state: Arc<str>,
    /// `g.waitsince`-based: how long the runtime says it has been waiting, when known.
    pub waiting: Option<Duration>,
    /// Frames Go shows, innermost first; shared by the goroutines stopped at the same PCs.
    pub stack: Arc<[StackFrame]>,
    pub created_by: Option<CreatedBy>,
    /// The channels it waits on (empty unless blocked in a channel operation).
    pub channels: Vec<ChannelState>,
}

/// The package of a Go function name: `sync` for `sync.(*Mutex).Lock`, `internal/sync`
/// for `internal/sync.runtime_SemacquireMutex`, `main` for `main.main.func1`.
fn package(function: &str) -> &str {
    let slash = function.rfind('/').map_or(0, |i| i + 1);
    match function[slash..].find('.') {
        Some(dot) => &function[..slash + dot],
        None => function,
    }
}

/// Packages whose frames are the blocking machinery rather than the place that blocked:
/// a Mutex leak blocks in `sync.runtime_SemacquireMutex`, called from the user's `Lock`.
const MACHINERY: &[&str] = &["sync", "internal/sync", "runtime"];

impl Observed {
    /// Where the goroutine blocked: the innermost shown frame outside the blocking
    /// machinery (or the innermost frame if they all belong to it).
    pub fn site(&self) -> Option<&StackFrame> {
        self.stack
            .iter()
            .find(|f| !MACHINERY.contains(&package(&f.function)))
            .or_else(|| self.stack.first())
    }

    pub fn key(&self) -> GroupKey {
        GroupKey::of(&self.state, self.site(), self.created_by.as_ref())
    }
}

impl GroupKey {
    fn of(state: &Arc<str>, site: Option<&StackFrame>, created: Option<&CreatedBy>) -> Self {
        Self {
            state: Arc::clone(state),
            site: site.map(|f| (f.function.clone(), f.file.clone(), f.line)),
            created: created.map(|c| (c.function.clone(), c.file.clone(), c.line)),
        }
    }
}

impl LeakGroup {
    /// The group's identity across snapshots.
    pub fn key(&self) -> GroupKey {
        GroupKey::of(
            &Arc::from(self.wait_reason.as_str()),
            self.site.as_ref(),
            self.created_by.as_ref(),
        )
    }
}

/// How a wait reason can end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocking {
    /// Can never proceed: a nil channel, an empty select.
    Never,
    /// Proceeds only when another goroutine acts on the channel.
    Channel,
    /// Proceeds only when another goroutine releases a lock, a WaitGroup, a Cond.
    Sync,
    /// Proceeds by itself or by the outside world (sleep, IO, timers, GC): not a leak site.
    Not,
}

fn blocking(state: &str) -> Blocking {
    match state {
        "chan send (nil chan)" | "chan receive (nil chan)" | "select (no cases)" => Blocking::Never,
        "chan send" | "chan receive" | "select" => Blocking::Channel,
        s if s.starts_with("sync.") || s == "semacquire" => Blocking::Sync,
        _ => Blocking::Not,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    Low,
    Medium,
    High,
    /// Every goroutine of the group unreachable in a proof by reachability ([`proof`]).
    Proven,
}

fn confidence(score: i32) -> Confidence {
    match score {
        s if s >= 4 => Confidence::High,
        s if s >= REPORT_SCORE => Confidence::Medium,
        _ => Confidence::Low,
    }
}

/// The channels a leak group waits on.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ChannelSummary {
    /// How many distinct channels the group's goroutines wait on.
    pub distinct: usize,
    /// Buffer capacities seen (0: unbuffered).
    pub capacities: Vec<u64>,
    /// Whether any of them has goroutines waiting on the other side.
    pub other_side_waiting: bool,
    pub closed: bool,
    /// The last operation of the other side (a receive for blocked senders, a send or close
    /// for blocked receivers) on one of these channels, when the channel probes saw one
    /// (running continuously or in windows).
    pub last_other_side: Option<Touch>,
}

#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct LeakGroup {
    pub wait_reason: String,
    /// Where the goroutines blocked: the innermost frame of the stack outside the sync and
    /// runtime machinery (the line that sends, receives, locks or waits).
    pub site: Option<StackFrame>,
    /// Innermost first, as Go's traceback shows it.
    pub stack: Vec<StackFrame>,
    pub created_by: Option<CreatedBy>,
    pub count: usize,
    pub goids: Vec<u64>,
    pub blocked_seconds: Seconds,
    pub channel: Option<ChannelSummary>,
    pub confidence: Confidence,
    pub score: i32,
    pub evidence: Vec<String>,
    pub against: Vec<String>,
    /// (seconds since the trace started, goroutines in the group) at each snapshot.
    pub growth: Vec<(f64, usize)>,
    /// What these goroutines allocated while traced: every allocation (`--alloc exact`), or
    /// the span refills and large allocations the fallback sampler saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Allocated>,
    /// The memory the group keeps from being collected: for a proven group, what only its
    /// goroutines' stacks reach, measured by the proof's own mark (see `detect::pinned`);
    /// for any other, estimated from a read of the target (see `census::retained`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Pinned>,
    /// How long each goroutine of the group has been blocked.
    #[serde(skip)]
    pub ages: Vec<Duration>,
}

#[cfg(test)]
impl LeakGroup {
    /// For unit tests to adjust: `count` goroutines in `chan send`, blocked a second, at
    /// `main.produce` on `line` of /src/main.go (no site when None).
    pub(crate) fn for_tests(count: usize, line: Option<u32>, confidence: Confidence) -> Self {
        LeakGroup {
            wait_reason: "chan send".into(),
            site: line.map(|line| crate::census::StackFrame {
                function: "main.produce".into(),
                file: "/src/main.go".into(),
                line,
                pc: 0,
                inlined: false,
                shown: true,
            }),
            stack: Vec::new(),
            created_by: None,
            count,
            goids: Vec::new(),
            blocked_seconds: crate::census::Seconds::of(1.0),
            channel: None,
            confidence,
            score: 5,
            evidence: Vec::new(),
            against: Vec::new(),
            growth: Vec::new(),
            allocated: None,
            pinned: None,
            ages: Vec::new(),
        }
    }
}

/// The memory a leak group pins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Pinned {
    /// Their stacks (stack.hi - stack.lo, summed).
    pub stack_bytes: u64,
    /// Heap objects reachable from their stacks (for a proven group: from their stacks
    /// only, from no root or live goroutine), each counted once.
    pub heap_bytes: u64,
    pub heap_objects: u64,
    /// The scan stopped at its bound: the figure is a lower bound.
    pub truncated: bool,
    /// How the estimate is made.
    pub method: String,
}

#[derive(Clone, Debug)]
pub struct DetectOptions {
    pub min_age: Duration,
}

#[derive(Clone, Debug, Default)]
struct Member {
    first_seen: Duration,
}

#[derive(Debug, Default)]
struct History {
    counts: Vec<(Duration, usize)>,
    members: AddrMap<Member>,
    /// Goroutines that were in the group and left it while observed.
    left: usize,
    latest: Vec<Observed>,
}

/// One operation on a channel, seen by a channel probe.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Touch {
    /// "send", "receive" or "close".
    pub op: &'static str,
    /// Trace time, in seconds.
    pub at_seconds: f64,
    pub goid: u64,
    /// Where in the program: the innermost frame of the call.
    pub function: String,
    pub file: String,
    pub line: u32,
    /// The goroutine has exited since (seen by the exit probe).
    pub exited: bool,
}

#[derive(Clone, Debug, Default)]
struct ChannelTouches {
    send: Option<(Duration, Touch)>,
    recv: Option<(Duration, Touch)>,
    close: Option<(Duration, Touch)>,
}

#[derive(Clone, Debug)]
struct SiteProbe {
    since: Duration,
    hits: u64,
    /// The goroutines that passed it (at most [`MAX_PASSED`]).
    passed: AddrSet,
    active: bool,
}

/// How long the last operations on a channel nobody waits on are kept: a goroutine that
/// blocks on it later than this after them is judged without them.
const TOUCHES_KEPT: Duration = Duration::from_secs(60);

/// A goroutine the runtime says has waited this long is settled in its wait
/// ([`Tracker::settled_blocked`]).
const SETTLED_WAIT: Duration = Duration::from_secs(1);

/// Goroutine ids kept per targeted probe: enough to recognise a group's members.
const MAX_PASSED: usize = 100_000;

/// The physical PC of the group's blocking site: the return address of the blocking call.
fn first_site_pc(p: &Part) -> Option<u64> {
    p.latest.first()?.site().map(|f| f.pc)
}

/// Follows groups across snapshots; a plain data structure.
#[derive(Debug, Default)]
pub struct Tracker {
    groups: BTreeMap<GroupKey, History>,
    snapshots: usize,
    first_at: Option<Duration>,
    last_at: Duration,
    /// Wake-ups seen by the probes, per goroutine, and since when the probes watch.
    /// The last wake-up of each goroutine, in trace time.
    wakes: AddrMap<Duration>,
    /// The last operation of the other side on each channel, from the channel probes.
    touches: AddrMap<ChannelTouches>,
    /// Since when the channel probes watch continuously (send, recv and close all attached;
    /// None while they run in windows or not at all).
    chan_probes_since: Option<Duration>,
    /// Goroutines seen exiting by the exit probe.
    exited: BTreeSet<u64>,
    /// Targeted probes by link-time PC: after a blocking call (resume) or a `go` statement.
    sites: HashMap<u64, SiteProbe>,
    probes_since: Option<Duration>,
    /// The goroutines the last proof by reachability proved leaked, and its evidence line.
    proven: AddrSet,
    /// The goroutines that proof examined (blocked on a channel or sync primitive at its
    /// first pass): a group's members it did not examine came later, and do not count
    /// against the group's proof until the next.
    examined: AddrSet,
    proof_evidence: String,
    /// The last verdicts and the --min-age they were judged with, until anything above
    /// changes: the live line, the snapshot and the metrics all ask for them, and judging
    /// tens of thousands of leaked goroutines each time was a fifth of leaktrace's CPU.
    judged: RefCell<Option<(Duration, Vec<LeakGroup>)>>,
}

impl Tracker {
    /// Takes the result of a proof by reachability: the goroutines it proved leaked (those
    /// of an earlier proof not proven again are dropped), those it examined, and its
    /// evidence line. True when it proved a goroutine the last one had not.
    pub fn set_proven(&mut self, proof: &Proof) -> bool {
        self.judged.take();
        let proven: AddrSet = proof.proven.iter().map(|b| b.goid).collect();
        let more = proven.iter().any(|g| !self.proven.contains(g));
        self.proven = proven;
        self.examined = proof
            .passes
            .first()
            .map(|p| p.examined.iter().copied().collect())
            .unwrap_or_default();
        self.proof_evidence = proof.evidence();
        more
    }

    /// Goroutines settled in a wait a proof may find unreachable (a channel or sync
    /// primitive) that the last proof did not judge already: what a new proof could be
    /// about. Settled: the runtime says it has waited `SETTLED_WAIT`, or, before a GC of
    /// the target stamped its wait, it was in it at the snapshot before the last too. A busy
    /// service's goroutines that pass through such waits (a connection's goroutine back at
    /// the same receive at the next snapshot) are not counted, nor are those the last proof
    /// proved or found reachable.
    pub fn settled_blocked(&self) -> usize {
        self.groups
            .iter()
            .filter(|(key, _)| crate::census::reach::may_prove(&key.state))
            .map(|(_, h)| {
                h.latest
                    .iter()
                    .filter(|g| !self.proven.contains(&g.goid) && !self.reachable(g.goid))
                    .filter(|g| match g.waiting {
                        Some(w) => w >= SETTLED_WAIT,
                        None => first_seen(h, g.goid) < self.last_at,
                    })
                    .count()
            })
            .sum()
    }

    /// Adds a snapshot taken `at` (since the trace started).
    pub fn observe(&mut self, at: Duration, goroutines: Vec<Observed>) {
        self.judged.take();
        self.snapshots += 1;
        self.first_at.get_or_insert(at);
        self.last_at = at;
        self.forget_the_past(at, &goroutines);
        let now = by_group(goroutines);
        for (key, h) in &mut self.groups {
            let present: AddrSet = now
                .get(key)
                .map(|v| v.iter().map(|g| g.goid).collect())
                .unwrap_or_default();
            let before = h.members.len();
            h.members.retain(|goid, _| present.contains(goid));
            h.left += before - h.members.len();
            if !now.contains_key(key) {
                h.counts.push((at, 0));
                h.latest.clear();
            }
        }
        for (key, gs) in now {
            let h = self.groups.entry(key).or_default();
            for g in &gs {
                h.members.entry(g.goid).or_insert(Member { first_seen: at });
            }
            h.counts.push((at, gs.len()));
            h.latest = gs;
        }
    }

    /// Keeps what the probes said only while it can still matter, so that memory follows
    /// the goroutines alive, not how many ever ran: wake-ups of goroutines alive now; the
    /// last operations on a channel someone waits on, or made in the last [`TOUCHES_KEPT`];
    /// exits of the goroutines those operations name.
    fn forget_the_past(&mut self, at: Duration, now: &[Observed]) {
        if self.wakes.is_empty() && self.touches.is_empty() && self.exited.is_empty() {
            return;
        }
        let live: AddrSet = now.iter().map(|g| g.goid).collect();
        let waited: AddrSet = now
            .iter()
            .flat_map(|g| g.channels.iter().map(|c| c.addr))
            .collect();
        self.wakes.retain(|goid, _| live.contains(goid));
        self.touches.retain(|chan, t| {
            waited.contains(chan)
                || [&t.send, &t.recv, &t.close]
                    .into_iter()
                    .flatten()
                    .any(|(when, _)| at.saturating_sub(*when) < TOUCHES_KEPT)
        });
        let named: AddrSet = self
            .touches
            .values()
            .flat_map(|t| [&t.send, &t.recv, &t.close])
            .flatten()
            .map(|(_, touch)| touch.goid)
            .collect();
        self.exited.retain(|goid| named.contains(goid));
    }

    /// The park/wake probes watch from `at` on: wake-ups now count as evidence.
    pub fn probes_active(&mut self, at: Duration) {
        self.judged.take();
        self.probes_since.get_or_insert(at);
    }

    /// The probes were detached: their silence proves nothing from now on.
    pub fn probes_inactive(&mut self) {
        self.judged.take();
        self.probes_since = None;
    }

    /// A wake-up of `goid` at `at` (trace time, from the probe's own timestamp).
    pub fn record_wake(&mut self, goid: u64, at: Duration) {
        self.judged.take();
        let last = self.wakes.entry(goid).or_default();
        *last = (*last).max(at);
    }

    /// A channel operation at `at` (trace time): `op` is "send", "receive" or "close".
    pub fn record_touch(&mut self, chan: u64, at: Duration, touch: Touch) {
        self.judged.take();
        let t = self.touches.entry(chan).or_default();
        let slot = match touch.op {
            "send" => &mut t.send,
            "receive" => &mut t.recv,
            _ => &mut t.close,
        };
        *slot = Some((at, touch));
    }

    /// The send, receive and close probes all watch from `at` on.
    pub fn chan_probes_active(&mut self, at: Duration) {
        self.judged.take();
        self.chan_probes_since.get_or_insert(at);
    }

    pub fn chan_probes_inactive(&mut self) {
        self.judged.take();
        self.chan_probes_since = None;
    }

    /// A targeted probe was placed at link-time `pc` at `at`.
    pub fn site_placed(&mut self, pc: u64, at: Duration) {
        self.judged.take();
        self.sites.insert(
            pc,
            SiteProbe {
                since: at,
                hits: 0,
                passed: AddrSet::default(),
                active: true,
            },
        );
    }

    /// Goroutine `goid` passed the targeted probe at link-time `pc`.
    pub fn record_site_hit(&mut self, pc: u64, goid: u64) {
        self.judged.take();
        if let Some(s) = self.sites.get_mut(&pc) {
            s.hits += 1;
            if s.passed.len() < MAX_PASSED {
                s.passed.insert(goid);
            }
        }
    }

    /// The targeted probe at link-time `pc` was removed (its trial measured it over budget):
    /// what it did not see proves nothing.
    pub fn site_off(&mut self, pc: u64) {
        if let Some(s) = self.sites.get_mut(&pc) {
            s.active = false;
        }
    }

    /// The targeted probes were removed: what they did not see proves nothing from now on.
    pub fn sites_inactive(&mut self) {
        self.judged.take();
        for s in self.sites.values_mut() {
            s.active = false;
        }
    }

    /// Link-time PCs where targeted probes would sharpen the verdict on the current
    /// suspects, not probed yet: after each group's blocking call, and its `go` statement.
    pub fn wanted_sites(&self, opts: &DetectOptions) -> Vec<u64> {
        let mut out = Vec::new();
        for l in self.leaks(opts) {
            let pcs = [
                l.site.as_ref().map(|f| f.pc),
                l.created_by.as_ref().map(|c| c.pc),
            ];
            for pc in pcs.into_iter().flatten() {
                if pc != 0 && !self.sites.contains_key(&pc) && !out.contains(&pc) {
                    out.push(pc);
                }
            }
        }
        out
    }

    pub fn record_exit(&mut self, goid: u64) {
        self.judged.take();
        self.exited.insert(goid);
    }

    pub fn snapshots(&self) -> usize {
        self.snapshots
    }

    /// Every current group with its verdict, the strongest suspects first.
    pub fn verdicts(&self, opts: &DetectOptions) -> Vec<LeakGroup> {
        if let Some((min_age, v)) = &*self.judged.borrow()
            && *min_age == opts.min_age
        {
            return v.clone();
        }
        let v = self.judge_all(opts);
        *self.judged.borrow_mut() = Some((opts.min_age, v.clone()));
        v
    }

    fn judge_all(&self, opts: &DetectOptions) -> Vec<LeakGroup> {
        let mut out: Vec<LeakGroup> = self
            .groups
            .iter()
            .filter(|(_, h)| !h.latest.is_empty())
            .filter_map(|(k, h)| self.judge(k, h, opts))
            .collect();
        out.sort_by(|a, b| {
            (b.confidence == Confidence::Proven)
                .cmp(&(a.confidence == Confidence::Proven))
                .then(b.score.cmp(&a.score))
                .then(b.count.cmp(&a.count))
        });
        out
    }

    /// Only the groups worth reporting.
    pub fn leaks(&self, opts: &DetectOptions) -> Vec<LeakGroup> {
        self.verdicts(opts)
            .into_iter()
            .filter(|g| g.score >= REPORT_SCORE)
            .collect()
    }

    fn judge(&self, key: &GroupKey, h: &History, opts: &DetectOptions) -> Option<LeakGroup> {
        let kind = blocking(&key.state);
        if kind == Blocking::Not {
            return None;
        }
        let (p, left_out) = self.proven_part(h);
        let p = &p;
        let ages = self.ages(p);
        let (min_age, max_age) = (ages.iter().min().copied()?, ages.iter().max().copied()?);
        let count = p.latest.len();
        let mut j = Judgement::default();

        j.weigh_age(&ages, max_age, opts);
        if kind == Blocking::Never {
            j.for_leak(3, format!("{}: nothing can ever wake it", key.state));
        }
        self.weigh_movement(p, opts, &mut j);
        let growth = j.weigh_growth(p);
        self.weigh_wakes(p, opts, &mut j);
        let chans = waited_channels(p);
        let mut channel = channel_summary(key, &chans);
        if kind == Blocking::Channel {
            j.weigh_channels(key, &chans, channel.as_ref(), count, growth);
        }
        self.weigh_other_side(key, p, opts, channel.as_mut(), &mut j);
        self.weigh_sites(p, opts, &mut j);
        if p.latest.iter().all(|g| g.goid == 1) {
            j.against_leak(
                2,
                "it is the main goroutine, which programs often block on purpose".into(),
            );
        }
        let confidence = self.weigh_proof(p, left_out, &mut j);

        let mut goids: Vec<u64> = p.latest.iter().map(|g| g.goid).collect();
        goids.sort_unstable();
        let first_g = p.latest[0];
        Some(LeakGroup {
            wait_reason: key.state.to_string(),
            site: first_g.site().cloned(),
            stack: first_g.stack.to_vec(),
            created_by: first_g.created_by.clone(),
            count,
            goids,
            blocked_seconds: Seconds {
                min: min_age.as_secs_f64(),
                max: max_age.as_secs_f64(),
            },
            channel,
            confidence,
            score: j.score,
            evidence: j.evidence,
            against: j.against,
            ages,
            pinned: None,
            growth: h
                .counts
                .iter()
                .map(|(t, n)| (t.as_secs_f64(), *n))
                .collect(),
            allocated: None,
        })
    }

    /// How long each goroutine of the group has been blocked: since it was first seen here or
    /// since the runtime says it began waiting, whichever is longer.
    fn ages(&self, p: &Part) -> Vec<Duration> {
        p.latest
            .iter()
            .map(|g| {
                let seen = p.h.members.get(&g.goid).map_or(Duration::ZERO, |m| {
                    self.last_at.saturating_sub(m.first_seen)
                });
                seen.max(g.waiting.unwrap_or_default())
            })
            .collect()
    }

    /// Goroutines leaving the site mean it is serviced.
    fn weigh_movement(&self, p: &Part, opts: &DetectOptions, j: &mut Judgement) {
        let observed_for = self
            .last_at
            .saturating_sub(self.first_at.unwrap_or_default());
        let count = p.latest.len();
        if p.h.left == 0 && observed_for >= opts.min_age {
            j.for_leak(
                1,
                format!(
                    "no goroutine left this site in {:.1} s of observation ({} snapshots)",
                    observed_for.as_secs_f64(),
                    self.snapshots
                ),
            );
        } else if p.h.left > 0 {
            j.against_leak(
                if p.h.left >= count { 3 } else { 1 },
                format!(
                    "{} goroutines left this site while observed: it is serviced",
                    p.h.left
                ),
            );
        }
    }

    /// Wake-ups, when the park/wake probes watched these goroutines.
    fn weigh_wakes(&self, p: &Part, opts: &DetectOptions, j: &mut Judgement) {
        let Some(since) = self.probes_since else {
            return;
        };
        let watched = self.last_at.saturating_sub(since);
        if watched < opts.min_age {
            return;
        }
        // Only a wake-up after the goroutine was seen blocked here counts: before that it
        // was on its way (a sleep, a lock) to this site.
        let woken = p
            .latest
            .iter()
            .filter(|g| {
                let seen = first_seen(p.h, g.goid);
                self.wakes.get(&g.goid).is_some_and(|w| *w > seen)
            })
            .count();
        if woken == 0 {
            j.for_leak(
                2,
                format!(
                    "no wake-up of these goroutines in {:.1} s of gopark/ready probes",
                    watched.as_secs_f64()
                ),
            );
        } else {
            j.against_leak(
                2,
                format!(
                    "{woken} of these goroutines woke up after they were seen blocked here (gopark/ready probes)"
                ),
            );
        }
    }

    /// The other side of their channels, as far as the channel probes saw it: the last
    /// operation of the other side, whenever a probe saw it (continuously or in a window);
    /// an operation after they blocked counts against a leak; silence counts for one only
    /// over time the probes were on continuously (a window's absence of touches says
    /// nothing of the time between windows).
    fn weigh_other_side(
        &self,
        key: &GroupKey,
        p: &Part,
        opts: &DetectOptions,
        channel: Option<&mut ChannelSummary>,
        j: &mut Judgement,
    ) {
        let sends = &*key.state == "chan send";
        if !sends && &*key.state != "chan receive" {
            return;
        }
        let other = |t: &ChannelTouches| -> Option<(Duration, Touch)> {
            if sends {
                t.recv.clone()
            } else {
                [t.send.clone(), t.close.clone()]
                    .into_iter()
                    .flatten()
                    .max_by_key(|(at, _)| *at)
            }
        };
        let mut touched_after = 0;
        let mut last: Option<(Duration, Touch)> = None;
        for g in &p.latest {
            let seen = first_seen(p.h, g.goid);
            for c in &g.channels {
                if let Some((at, t)) = self.touches.get(&c.addr).and_then(other) {
                    if at > seen {
                        touched_after += 1;
                    }
                    if last.as_ref().is_none_or(|(l, _)| at > *l) {
                        last = Some((at, t));
                    }
                }
            }
        }
        let side = if sends {
            "received from"
        } else {
            "sent to or closed"
        };
        let watched = self
            .chan_probes_since
            .map(|since| self.last_at.saturating_sub(since));
        if touched_after == 0
            && let Some(watched) = watched.filter(|w| *w >= opts.min_age)
        {
            j.for_leak(
                1,
                format!(
                    "nobody {side} their channels since they blocked (channel probes, {:.1} s)",
                    watched.as_secs_f64()
                ),
            );
        } else if touched_after > 0 {
            j.against_leak(
                2,
                format!("{touched_after} of their channels were {side} after they blocked"),
            );
        }
        if let Some((_, mut t)) = last {
            t.exited = self.exited.contains(&t.goid);
            if t.exited {
                j.for_leak(
                    1,
                    format!(
                        "the last goroutine that {side} them (goroutine {} at {} {}:{}) has exited",
                        t.goid, t.function, t.file, t.line
                    ),
                );
            }
            if let Some(c) = channel {
                c.last_other_side = Some(t);
            }
        }
    }

    /// Targeted probes: after the blocking call (only the group's own goroutines passing it
    /// count: others run through the same line when the site works), and on the `go`
    /// statement.
    fn weigh_sites(&self, part: &Part, opts: &DetectOptions, j: &mut Judgement) {
        if let Some(p) = first_site_pc(part).and_then(|pc| self.sites.get(&pc))
            && p.active
        {
            let watched = self.last_at.saturating_sub(p.since);
            let moved = part
                .latest
                .iter()
                .filter(|g| p.passed.contains(&g.goid))
                .count();
            if moved == 0 && watched >= opts.min_age {
                j.for_leak(
                    2,
                    format!(
                        "none of them moved on past the blocking call in {:.1} s (targeted probe on the instruction after it; {} other goroutines passed it)",
                        watched.as_secs_f64(),
                        p.passed.len()
                    ),
                );
            } else if moved > 0 {
                j.against_leak(
                    3,
                    format!(
                        "{moved} of them moved on past the blocking call and came back (targeted probe): the site is serviced"
                    ),
                );
            }
        }
        if let Some(p) = part.latest[0]
            .created_by
            .as_ref()
            .and_then(|c| self.sites.get(&c.pc))
            && p.active
            && p.hits > 0
        {
            j.for_leak(
                0,
                format!(
                    "{} goroutines created at this go statement in {:.1} s (targeted probe)",
                    p.hits,
                    self.last_at.saturating_sub(p.since).as_secs_f64()
                ),
            );
        }
    }

    /// A proof by reachability outranks the evidence gathered over time, and needs no
    /// --min-age: the group's confidence, with the proof's line first in its evidence.
    fn weigh_proof(&self, p: &Part, left_out: Option<LeftOut>, j: &mut Judgement) -> Confidence {
        let count = p.latest.len();
        let proven = p
            .latest
            .iter()
            .filter(|g| self.proven.contains(&g.goid))
            .count();
        if proven == 0 {
            return confidence(j.score);
        }
        // A part with proven goroutines holds only those and the newcomers the proof could
        // not examine (a leak that goes on growing between proofs): the ones it examined
        // and did not prove are left out of it ([`Tracker::proven_part`]).
        let newer = count - proven;
        j.score = j.score.max(REPORT_SCORE);
        let mut line = match newer {
            0 => format!("all {count} unreachable: {}", self.proof_evidence),
            _ => format!(
                "{proven} of {count} unreachable, the other {newer} came since the proof \
                 (examined at the next): {}",
                self.proof_evidence
            ),
        };
        if let Some(o) = left_out {
            line += &format!(
                "; not counted here: {} in the same wait it examined and did not prove \
                 (reachable, or seen moving)",
                o.reachable
            );
        }
        j.evidence.insert(0, line);
        Confidence::Proven
    }

    /// Whether the last proof examined goroutine `goid` and found it reachable.
    fn reachable(&self, goid: u64) -> bool {
        self.examined.contains(&goid) && !self.proven.contains(&goid)
    }

    /// A group some of whose goroutines the last proof proved leaked and some it found
    /// reachable (a busy service's goroutines passing the same line), as the proven ones
    /// and those that came since the proof (a leak that goes on growing) alone, and how many
    /// it left out; any other group whole. The goroutines are borrowed: judging a group of
    /// tens of thousands copies none of them.
    fn proven_part<'a>(&self, h: &'a History) -> (Part<'a>, Option<LeftOut>) {
        if !h.latest.iter().any(|g| self.proven.contains(&g.goid)) {
            return (Part::whole(h), None);
        }
        let latest: Vec<&Observed> = h
            .latest
            .iter()
            .filter(|g| !self.reachable(g.goid))
            .collect();
        let reachable = h.latest.len() - latest.len();
        let left_out = (reachable > 0).then_some(LeftOut { reachable });
        (Part { h, latest }, left_out)
    }
}

/// The goroutines of a group that a verdict is about: all of its latest snapshot's, or the
/// proven part of them ([`Tracker::proven_part`]); what they were seen doing is the group's.
struct Part<'a> {
    h: &'a History,
    latest: Vec<&'a Observed>,
}

impl<'a> Part<'a> {
    fn whole(h: &'a History) -> Self {
        Self {
            h,
            latest: h.latest.iter().collect(),
        }
    }
}

/// The goroutines of a group a proof left out of its proven part.
#[derive(Clone, Copy)]
struct LeftOut {
    /// Examined and not proven: reachable, or seen moving between its passes.
    reachable: usize,
}

/// The goroutines of a snapshot by group. Goroutines stopped at the same PCs share their
/// stack (and the census interns wait states and creation sites), so a group's key, which
/// looks for the blocking site through the frames, is made once per stack, state and
/// creation site, not once per goroutine.
fn by_group(goroutines: Vec<Observed>) -> BTreeMap<GroupKey, Vec<Observed>> {
    type Seen = (usize, usize, Option<(usize, u32)>);
    let mut seen: HashMap<Seen, usize, BuildHasherDefault<AddrHasher>> = HashMap::default();
    let mut slots: HashMap<GroupKey, usize> = HashMap::new();
    let mut groups: Vec<(GroupKey, Vec<Observed>)> = Vec::new();
    for g in goroutines {
        let id = (
            g.stack.as_ptr() as usize,
            Arc::as_ptr(&g.state) as *const u8 as usize,
            g.created_by
                .as_ref()
                .map(|c| (Arc::as_ptr(&c.function) as *const u8 as usize, c.line)),
        );
        let slot = *seen.entry(id).or_insert_with(|| {
            *slots.entry(g.key()).or_insert_with_key(|key| {
                groups.push((key.clone(), Vec::new()));
                groups.len() - 1
            })
        });
        groups[slot].1.push(g);
    }
    groups.into_iter().collect()
}

/// When goroutine `goid` was first seen in the group.
fn first_seen(h: &History, goid: u64) -> Duration {
    h.members
        .get(&goid)
        .map_or(Duration::ZERO, |m| m.first_seen)
}

/// The channels a group's goroutines wait on, by address.
fn waited_channels<'a>(p: &Part<'a>) -> AddrMap<&'a ChannelState> {
    p.latest
        .iter()
        .flat_map(|g| g.channels.iter())
        .map(|c| (c.addr, c))
        .collect()
}

fn channel_summary(key: &GroupKey, chans: &AddrMap<&ChannelState>) -> Option<ChannelSummary> {
    if chans.is_empty() {
        return None;
    }
    let mut caps: Vec<u64> = chans.values().map(|c| c.cap).collect();
    caps.sort_unstable();
    caps.dedup();
    Some(ChannelSummary {
        distinct: chans.len(),
        capacities: caps,
        other_side_waiting: chans.values().any(|c| {
            (&*key.state == "chan send" && c.receivers_waiting)
                || (&*key.state == "chan receive" && c.senders_waiting)
        }),
        closed: chans.values().any(|c| c.closed),
        last_other_side: None,
    })
}

/// The counts of a group at its first and last snapshot.
#[derive(Clone, Copy)]
struct Growth {
    first: usize,
    last: usize,
}

/// A group's score and the lines that explain it, built one piece of evidence at a time.
#[derive(Default)]
struct Judgement {
    score: i32,
    evidence: Vec<String>,
    against: Vec<String>,
}

impl Judgement {
    fn for_leak(&mut self, points: i32, line: String) {
        self.score += points;
        self.evidence.push(line);
    }

    fn against_leak(&mut self, points: i32, line: String) {
        self.score -= points;
        self.against.push(line);
    }

    fn weigh_age(&mut self, ages: &[Duration], max_age: Duration, opts: &DetectOptions) {
        let old_enough = ages.iter().filter(|a| **a >= opts.min_age).count();
        if old_enough == 0 {
            self.against_leak(
                10,
                format!(
                    "blocked for at most {:.1} s, less than --min-age {:.1} s",
                    max_age.as_secs_f64(),
                    opts.min_age.as_secs_f64()
                ),
            );
        } else {
            self.for_leak(
                1,
                format!(
                    "{old_enough} of {} blocked for at least {:.1} s (--min-age {:.1} s); the oldest for {:.1} s",
                    ages.len(),
                    opts.min_age.as_secs_f64(),
                    opts.min_age.as_secs_f64(),
                    max_age.as_secs_f64()
                ),
            );
        }
    }

    /// Growth and shrinkage, from the counts at each snapshot.
    fn weigh_growth(&mut self, p: &Part) -> Growth {
        let counts: Vec<usize> = p.h.counts.iter().map(|c| c.1).collect();
        let shrank = counts.windows(2).any(|w| w[1] < w[0]);
        let growth = Growth {
            first: counts.first().copied().unwrap_or(0),
            last: counts.last().copied().unwrap_or(0),
        };
        if shrank {
            self.against_leak(
                2,
                format!("the group shrank while observed (counts {counts:?}): a pool, not a leak"),
            );
        } else if growth.last > growth.first {
            self.for_leak(
                2,
                format!(
                    "the group grew from {} to {} goroutines while observed and never shrank",
                    growth.first, growth.last
                ),
            );
        }
        growth
    }

    /// What the channels they wait on say: a timer's channel will be sent to; one channel
    /// each with nobody on the other side is a leak's shape; receivers sharing a few channels
    /// without growing are an idle pool.
    fn weigh_channels(
        &mut self,
        key: &GroupKey,
        chans: &AddrMap<&ChannelState>,
        channel: Option<&ChannelSummary>,
        count: usize,
        growth: Growth,
    ) {
        if chans.values().any(|c| c.timer == Some(true)) {
            self.against_leak(
                5,
                "it waits on a timer's channel, which the timer will send to".into(),
            );
        }
        let Some(c) = channel else {
            return;
        };
        if c.distinct >= count && count > 1 && &*key.state != "select" {
            self.for_leak(
                1,
                format!(
                    "each goroutine waits on its own channel ({} channels), with nobody on the other side",
                    c.distinct
                ),
            );
        } else if c.distinct < count && &*key.state == "chan receive" && growth.last <= growth.first
        {
            self.against_leak(
                3,
                format!(
                    "{count} receivers share {} channel(s) and the group does not grow: an idle pool",
                    c.distinct
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::proof::{self, Proof};

    #[test]
    fn packages_of_go_function_names() {
        assert_eq!(package("sync.(*Mutex).Lock"), "sync");
        assert_eq!(
            package("internal/sync.runtime_SemacquireMutex"),
            "internal/sync"
        );
        assert_eq!(package("main.main.func1"), "main");
        assert_eq!(package("github.com/a/b.(*T).f"), "github.com/a/b");
    }

    fn g(goid: u64, state: &str, line: u32, chan: Option<u64>) -> Observed {
        Observed {
            goid,
            state: state.into(),
            waiting: None,
            stack: vec![StackFrame {
                function: "main.produce".into(),
                file: "main.go".into(),
                line,
                pc: 0,
                inlined: false,
                shown: true,
            }]
            .into(),
            created_by: None,
            channels: chan
                .map(|addr| ChannelState {
                    addr,
                    len: 0,
                    cap: 0,
                    closed: false,
                    receivers_waiting: false,
                    senders_waiting: false,
                    timer: Some(false),
                })
                .into_iter()
                .collect(),
        }
    }

    const S: Duration = Duration::from_secs(1);
    fn opts() -> DetectOptions {
        DetectOptions { min_age: 2 * S }
    }

    #[test]
    fn what_the_probes_said_is_kept_only_while_it_can_matter() {
        let touch = |goid, at: Duration| Touch {
            op: "receive",
            at_seconds: at.as_secs_f64(),
            goid,
            function: "main.consume".into(),
            file: "main.go".into(),
            line: 9,
            exited: false,
        };
        let mut t = Tracker::default();
        t.record_wake(10, S);
        t.record_wake(11, S); // then exits
        t.record_touch(100, S, touch(20, S)); // 100 is waited on below
        t.record_touch(101, S, touch(21, S)); // nobody waits on 101
        t.record_exit(20);
        t.record_exit(21);
        t.record_exit(22); // touched no channel
        t.observe(30 * S, vec![g(10, "chan send", 22, Some(100))]);
        assert_eq!(t.wakes.keys().collect::<Vec<_>>(), [&10]);
        assert_eq!(t.touches.len(), 2, "101 was touched 29 s ago: kept");
        assert_eq!(t.exited, BTreeSet::from([20, 21]));
        t.observe(62 * S, vec![g(10, "chan send", 22, Some(100))]);
        assert_eq!(t.touches.keys().collect::<Vec<_>>(), [&100]);
        assert_eq!(t.exited, BTreeSet::from([20]), "named by a kept touch");
    }

    #[test]
    fn stuck_senders_on_their_own_channels_are_a_leak() {
        let mut t = Tracker::default();
        for i in 0..4 {
            t.observe(
                i * S,
                (0..3)
                    .map(|n| g(10 + n, "chan send", 22, Some(100 + n)))
                    .collect(),
            );
        }
        let leaks = t.leaks(&opts());
        assert_eq!(leaks.len(), 1);
        assert_eq!(leaks[0].count, 3);
        assert_eq!(leaks[0].confidence, Confidence::Medium, "{:?}", leaks[0]);
        assert_eq!(leaks[0].channel.as_ref().unwrap().distinct, 3);
    }

    #[test]
    fn a_growing_group_is_a_stronger_suspect() {
        let mut t = Tracker::default();
        for i in 0..4u32 {
            t.observe(
                i * S,
                (0..=u64::from(i))
                    .map(|n| g(10 + n, "chan send", 22, Some(100 + n)))
                    .collect(),
            );
        }
        let leaks = t.leaks(&opts());
        assert_eq!(leaks[0].confidence, Confidence::High, "{:?}", leaks[0]);
        assert!(
            leaks[0]
                .evidence
                .iter()
                .any(|e| e.contains("grew from 1 to 4"))
        );
    }

    #[test]
    fn an_idle_pool_sharing_one_channel_is_not_a_leak() {
        let mut t = Tracker::default();
        for i in 0..4 {
            t.observe(
                i * S,
                (0..4)
                    .map(|n| g(10 + n, "chan receive", 30, Some(7)))
                    .collect(),
            );
        }
        assert!(t.leaks(&opts()).is_empty(), "{:?}", t.verdicts(&opts()));
    }

    #[test]
    fn goroutines_that_move_on_or_shrink_are_not_a_leak() {
        let mut t = Tracker::default();
        t.observe(
            Duration::ZERO,
            vec![
                g(1, "chan receive", 30, Some(5)),
                g(2, "chan receive", 30, Some(6)),
            ],
        );
        t.observe(S, vec![g(3, "chan receive", 30, Some(8))]);
        t.observe(3 * S, vec![g(3, "chan receive", 30, Some(8))]);
        assert!(t.leaks(&opts()).is_empty(), "{:?}", t.verdicts(&opts()));
    }

    #[test]
    fn sleep_and_io_wait_are_never_suspects_and_nil_channels_always_are() {
        let mut t = Tracker::default();
        for i in 0..4 {
            t.observe(
                i * S,
                vec![
                    g(1, "sleep", 5, None),
                    g(2, "IO wait", 6, None),
                    g(3, "chan send (nil chan)", 7, None),
                ],
            );
        }
        let leaks = t.leaks(&opts());
        assert_eq!(leaks.len(), 1);
        assert_eq!(leaks[0].wait_reason, "chan send (nil chan)");
        assert_eq!(leaks[0].confidence, Confidence::High);
    }

    /// Two senders blocked on their own channels, whose receiver took one value before they
    /// were first seen (at 0.5 s), as a window's channel probes saw it.
    fn senders_with_a_receive_seen_in_a_window() -> Tracker {
        let mut t = Tracker::default();
        t.record_touch(
            100,
            S / 2,
            Touch {
                op: "receive",
                at_seconds: 0.5,
                goid: 7,
                function: "main.search".into(),
                file: "main.go".into(),
                line: 38,
                exited: false,
            },
        );
        for i in 1..5 {
            t.observe(
                i * S,
                vec![
                    g(10, "chan send", 22, Some(100)),
                    g(11, "chan send", 22, Some(101)),
                ],
            );
        }
        t
    }

    #[test]
    fn the_other_side_seen_in_a_window_is_named_but_silence_between_windows_is_not_evidence() {
        let t = senders_with_a_receive_seen_in_a_window();
        let l = &t.verdicts(&opts())[0];
        let last = l.channel.as_ref().unwrap().last_other_side.as_ref();
        assert_eq!(
            last.map(|t| (t.goid, t.function.as_str())),
            Some((7, "main.search"))
        );
        assert!(
            !l.evidence.iter().any(|e| e.contains("nobody received")),
            "{l:?}"
        );

        let mut t = senders_with_a_receive_seen_in_a_window();
        t.chan_probes_active(Duration::ZERO);
        t.observe(
            5 * S,
            vec![
                g(10, "chan send", 22, Some(100)),
                g(11, "chan send", 22, Some(101)),
            ],
        );
        let l = &t.verdicts(&opts())[0];
        assert!(
            l.evidence
                .iter()
                .any(|e| e.contains("nobody received from their channels")),
            "continuous probes' silence is evidence: {l:?}"
        );
        assert!(l.channel.as_ref().unwrap().last_other_side.is_some());
    }

    #[test]
    fn too_young_is_not_yet_a_suspect_and_wakes_count_against() {
        let mut t = Tracker::default();
        t.observe(Duration::ZERO, vec![g(1, "sync.Mutex.Lock", 5, None)]);
        t.observe(S, vec![g(1, "sync.Mutex.Lock", 5, None)]);
        assert!(t.leaks(&opts()).is_empty());
        t.probes_active(Duration::ZERO);
        t.record_wake(1, Duration::from_millis(500)); // before it was seen: not evidence
        t.record_wake(1, 2 * S);
        t.observe(3 * S, vec![g(1, "sync.Mutex.Lock", 5, None)]);
        let v = t.verdicts(&opts());
        assert!(
            v[0].against.iter().any(|a| a.contains("woke up after")),
            "{v:?}"
        );
    }

    fn proof_of(proven: &[u64], examined: &[u64]) -> Proof {
        let blocked = |goid| crate::census::reach::BlockedG {
            goid,
            g_addr: 0,
            wait_reason: 0,
            wait_since: 0,
            sched_sp: 0,
            sched_pc: 0,
            waiting: 0,
        };
        Proof {
            method: proof::METHOD,
            passes: vec![crate::census::reach::Pass {
                examined: examined.to_vec(),
                ..Default::default()
            }],
            gc_cycles_between: Some(1),
            between: S,
            proven: proven.iter().map(|&g| blocked(g)).collect(),
            not_proven: None,
            holds: HashMap::new(),
            holds_not_measured: None,
        }
    }

    /// A busy service's goroutines pass the leak's line too, and a growing leak has
    /// newcomers between proofs: the group is reported proven as its proven goroutines and
    /// those that came since, and those the proof found reachable are named, not counted; a
    /// group none of whose goroutines is proven is judged on the evidence.
    #[test]
    fn a_group_is_proven_without_the_goroutines_the_proof_found_reachable() {
        let mut t = Tracker::default();
        // 10-13 leaked, 20 in flight (reachable), one channel each.
        let gs = |extra: &[u64]| -> Vec<Observed> {
            [10, 11, 12, 13, 20]
                .iter()
                .chain(extra)
                .map(|&id| g(id, "chan send", 7, Some(0x1000 + id)))
                .collect()
        };
        t.observe(S, gs(&[]));
        assert!(t.set_proven(&proof_of(&[10, 11, 12, 13], &[10, 11, 12, 13, 20])));
        t.observe(2 * S, gs(&[14]));
        let v = t.verdicts(&opts());
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].confidence, Confidence::Proven, "{v:?}");
        assert_eq!(v[0].goids, [10, 11, 12, 13, 14]);
        assert_eq!(v[0].count, 5);
        assert!(
            v[0].evidence[0].starts_with("4 of 5 unreachable, the other 1 came since the proof")
                && v[0].evidence[0].contains("1 in the same wait it examined and did not prove"),
            "{:?}",
            v[0].evidence
        );
        // The newcomer proven too: more proven, for the pacing.
        assert!(t.set_proven(&proof_of(&[10, 11, 12, 13, 14], &[10, 11, 12, 13, 14, 20])));
        assert_eq!(t.verdicts(&opts())[0].count, 5);
        // No goroutine of the group proven: judged on the evidence, not proven.
        assert!(!t.set_proven(&proof_of(&[], &[10, 11, 12, 13, 14, 20])));
        assert_ne!(t.verdicts(&opts())[0].confidence, Confidence::Proven);
    }
}
