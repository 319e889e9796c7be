//! Proof of a goroutine leak by reachability, from outside: two passes of
//! [`crate::census::reach`] with a GC cycle of the target or a few seconds between them, and
//! the goroutines found unreachable in both, in the same wait (goid, wait reason, wait start,
//! saved SP and PC, wait list), and never seen moving in between.
//!
//! Every error goes toward "not proven": a pass that hit its bound proves nothing, a
//! goroutine that could not be re-read or changed is dropped, and conservative scanning only
//! adds reachability. `main` in `select {}` is left out, as Go's detector leaves it out.

use std::{
    collections::HashMap,
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    census::{
        data_roots::GlobalScan,
        memory,
        reach::{self, BlockedG, Holds, Pass, PassLimits},
    },
    tracee::Target,
};

/// How the proof is made, in one line, for reports.
pub const METHOD: &str = "reachability from outside, as Go's goroutineleak detector decides: \
     roots are data, bss, finalizers, cleanups and the stacks of goroutines not blocked on \
     a channel or sync primitive; a blocked goroutine is live once what it waits on is marked; proven when \
     unreachable in two passes with a GC cycle or seconds between them, in the same wait, \
     never seen moving";

/// Pacing and bounds of a proof.
#[derive(Debug, Clone, Copy)]
pub struct ProofOptions {
    pub limits: PassLimits,
    /// The second pass waits at least this long after the first...
    pub min_gap: Duration,
    /// ... and for a GC cycle of the target, or this long, whichever comes first.
    pub max_gap: Duration,
    /// How often the candidates are re-read between the passes.
    pub poll: Duration,
}

impl Default for ProofOptions {
    fn default() -> Self {
        Self {
            limits: PassLimits::default(),
            min_gap: Duration::from_millis(500),
            max_gap: Duration::from_secs(3),
            poll: Duration::from_millis(100),
        }
    }
}

/// What a proof found and how.
#[derive(Debug, Clone, Serialize)]
pub struct Proof {
    pub method: &'static str,
    pub passes: Vec<Pass>,
    /// GC cycles of the target between the passes (None: `memstats` unreadable).
    pub gc_cycles_between: Option<u32>,
    #[serde(serialize_with = "secs")]
    pub between: Duration,
    /// The goroutines proven leaked (main in `select {}` excluded).
    pub proven: Vec<BlockedG>,
    /// Why nothing could be proven, when so (a bound hit).
    pub not_proven: Option<String>,
    /// What each proven goroutine alone keeps from being collected, by goid, from the
    /// second pass ([`reach::Pass::holds`]).
    #[serde(skip)]
    pub holds: HashMap<u64, Holds>,
    /// Why there is no [`Proof::holds`] though goroutines are proven: the mark from their
    /// stacks stopped at a bound.
    pub holds_not_measured: Option<String>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Proof {
    /// The evidence line: passes, objects marked, bytes read, time.
    pub fn evidence(&self) -> String {
        let objects: u64 = self.passes.iter().map(|p| p.objects_marked).sum();
        let read: u64 = self.passes.iter().map(|p| p.bytes_read).sum();
        let ms: f64 = self
            .passes
            .iter()
            .map(|p| p.elapsed.as_secs_f64() * 1e3)
            .sum();
        let gcs = self
            .gc_cycles_between
            .map_or("unknown".into(), |n| n.to_string());
        // Conservative if any pass was: the weaker scan is the one the proof rests on.
        let roots = self
            .passes
            .iter()
            .map(|p| p.roots)
            .max_by_key(|r| *r == GlobalScan::Conservative)
            .unwrap_or_default();
        // The stacks as the last pass scanned them.
        let stacks = self
            .passes
            .last()
            .map_or_else(String::new, |p| p.stacks.summary());
        format!(
            "proof: unreachable in {} passes {:.1} s apart ({gcs} GC cycles between), \
             {objects} objects marked, {:.1} MiB read, {ms:.0} ms, globals by {}, stacks: {stacks}",
            self.passes.len(),
            self.between.as_secs_f64(),
            read as f64 / (1 << 20) as f64,
            roots.as_str(),
        )
    }
}

fn num_gc(target: &Target) -> Option<u32> {
    memory::read(target).ok().map(|m| m.num_gc)
}

/// A proof under way: the first pass done, its unreachable goroutines watched until the
/// second. [`prove`] runs one start to end; the live trace advances one at its snapshots.
#[derive(Debug)]
pub struct Prover {
    first: Pass,
    gc0: Option<u32>,
    t0: Instant,
    /// The first pass's unreachable goroutines not yet seen moving.
    watched: Vec<BlockedG>,
}

impl Prover {
    /// Runs the first pass (what the goroutines hold is measured by the second only).
    pub fn start(target: &Target, limits: PassLimits) -> anyhow::Result<Self> {
        let limits = PassLimits {
            holds: false,
            ..limits
        };
        let first = reach::pass(target, limits)?;
        Ok(Self {
            gc0: num_gc(target),
            t0: Instant::now(),
            watched: first.unreachable.clone(),
            first,
        })
    }

    /// Re-reads the watched goroutines, dropping those that moved; true when the second
    /// pass may run: a GC cycle of the target and `min_gap`, or `max_gap`, since the first.
    pub fn watch(&mut self, target: &Target, opts: &ProofOptions) -> bool {
        self.watched = reach::still_blocked(target, &self.watched)
            .into_iter()
            .flatten()
            .collect();
        let gc_done = matches!((self.gc0, num_gc(target)), (Some(a), Some(b)) if b != a);
        let waited = self.t0.elapsed();
        waited >= opts.max_gap || (gc_done && waited >= opts.min_gap)
    }

    /// Runs the second pass and says what is proven.
    pub fn finish(mut self, target: &Target, limits: PassLimits) -> anyhow::Result<Proof> {
        self.watch(target, &ProofOptions::default());
        let gc1 = num_gc(target);
        let between = self.t0.elapsed();
        // Nothing the first pass found unreachable stayed in its wait: a second pass could
        // prove nothing, and is not run.
        let second = if self.watched.is_empty() {
            None
        } else {
            Some(reach::pass(target, limits)?)
        };
        let again: HashMap<u64, BlockedG> = second
            .iter()
            .flat_map(|p| &p.unreachable)
            .map(|b| (b.goid, *b))
            .collect();
        let main_select = (0..=u8::MAX).find(|&r| target.reason_name(r) == "select (no cases)");
        let mut proven: Vec<BlockedG> = self
            .watched
            .into_iter()
            .filter_map(|b| again.get(&b.goid).filter(|a| b.same_wait(a)).copied())
            .filter(|b| !(b.goid == 1 && Some(b.wait_reason) == main_select))
            .collect();
        proven.sort_by_key(|b| b.goid);
        let passes: Vec<Pass> = std::iter::once(self.first).chain(second).collect();
        let not_proven = passes.iter().find_map(|p| p.bounded).map(|why| {
            format!(
                "a pass stopped at its bound on {why} before its fixed point: nothing is \
                     proven (the heap is larger than the pass may read)"
            )
        });
        if not_proven.is_some() {
            proven.clear();
        }
        let second = passes.get(1);
        let holds = proven
            .iter()
            .filter_map(|b| second?.holds.get(&b.goid).map(|h| (b.goid, *h)))
            .collect();
        let holds_not_measured = second
            .and_then(|p| p.holds_bounded)
            .filter(|_| !proven.is_empty())
            .map(|why| {
                format!(
                    "the mark from the proven goroutines' stacks stopped at its bound on {why}: \
                     what they alone pin is not measured"
                )
            });
        Ok(Proof {
            method: METHOD,
            gc_cycles_between: self.gc0.zip(gc1).map(|(a, b)| b.wrapping_sub(a)),
            between,
            passes,
            proven,
            not_proven,
            holds,
            holds_not_measured,
        })
    }
}

/// Runs a first pass, then watches its unreachable goroutines until a GC cycle of the
/// target (or `max_gap`), then a second pass; the goroutines unreachable in both, in the
/// same wait and never seen moving, are proven.
pub fn prove(target: &Target, opts: &ProofOptions) -> anyhow::Result<Proof> {
    let mut prover = Prover::start(target, opts.limits)?;
    loop {
        thread::sleep(opts.poll);
        if prover.watch(target, opts) {
            break;
        }
    }
    prover.finish(target, opts.limits)
}
