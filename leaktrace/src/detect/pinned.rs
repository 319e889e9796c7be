//! The memory each leak group pins. A proven group's comes from the proof's own mark
//! ([`crate::census::reach`]): the heap objects reachable from its goroutines' stacks and from
//! no root or live goroutine, what the heap would lose if they were gone. Any other group's
//! is estimated from a read of the target ([`crate::census::retained`]), which also counts what
//! live code still holds, and kept per group: a group's estimate is made again only when it
//! changed size and its last one is [`PINNED_EVERY`] old and [`PINNED_PACE`] times the CPU it
//! used, because a scan reads the target's heap.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{Confidence, GroupKey, LeakGroup, Pinned, proof::Proof};
use crate::census::{
    reach::Holds,
    retained::{self, AddrMap},
};
use crate::{probes::thread_cpu_time, tracee::Target};

/// How often, at most, one leak group's pinned memory is estimated again while tracing.
pub const PINNED_EVERY: Duration = Duration::from_secs(10);

/// A group's estimate is made again no sooner than PINNED_PACE times the CPU the last one
/// used, so that a large group's estimates take at most 0.25% of a CPU, as proofs do: the
/// scan of a growing leak of 13,000 goroutines on the benchmark's HTTP service costs ~50 ms
/// (leaktrace as a whole aims at 1.5% of the target's CPU), and is then refreshed after 20 s
/// instead of 10 s. The report's figures are estimated afresh at the end.
pub const PINNED_PACE: u32 = 400;

/// How a proven group's pinned memory is measured, in one line, for reports.
pub const REACH_METHOD: &str = "reachability: objects reachable only from these goroutines' \
     stacks, marked on from the stacks of the proven goroutines once everything reachable \
     from the roots and the live goroutines was marked (the proof's second pass), each \
     object counted once at its size-class size; stack: sum of g.stack.hi - g.stack.lo";

/// One group's latest estimate.
struct Estimate {
    /// When it was made, for how many goroutines.
    at: Instant,
    count: usize,
    /// The CPU it used.
    cpu: Duration,
    pinned: Pinned,
}

impl Estimate {
    /// Whether a group of `count` goroutines needs another: it changed size, and this one is
    /// [`PINNED_EVERY`] old and [`PINNED_PACE`] times its CPU.
    fn stale(&self, count: usize) -> bool {
        self.count != count && self.at.elapsed() >= PINNED_EVERY.max(self.cpu * PINNED_PACE)
    }
}

/// The latest estimate of each group; and what the last proof measured of each proven
/// goroutine.
#[derive(Default)]
pub struct PinnedEstimates {
    by_group: HashMap<GroupKey, Estimate>,
    proven: HashMap<u64, Holds>,
    /// Why the last proof measured nothing, when it proved goroutines.
    proven_unmeasured: Option<String>,
}

impl PinnedEstimates {
    /// Takes what the last proof measured of its proven goroutines (those of an earlier
    /// proof are dropped, as the detector drops their proof).
    pub fn set_proven(&mut self, proof: &Proof) {
        self.proven = proof.holds.clone();
        self.proven_unmeasured = proof.holds_not_measured.clone();
    }

    /// A proven group's pinned memory from the proof's mark: the sum over its goroutines,
    /// when the proof measured every one of them.
    fn by_reachability(&self, group: &LeakGroup) -> Option<Pinned> {
        if group.confidence != Confidence::Proven || group.goids.is_empty() {
            return None;
        }
        let mut p = Pinned {
            method: REACH_METHOD.to_string(),
            ..Pinned::default()
        };
        for goid in &group.goids {
            let h = self.proven.get(goid)?;
            p.stack_bytes += h.stack_bytes;
            p.heap_bytes += h.heap_bytes;
            p.heap_objects += h.heap_objects;
        }
        Some(p)
    }

    /// Estimates the memory each of `leaks` pins, unless a recent estimate of a group of the
    /// same size is at hand (or `fresh` says to redo them all) or the proof measured it.
    /// `g_addrs` gives each live goroutine's g address by goid. A target that has exited
    /// keeps its last estimates.
    pub(crate) fn update(
        &mut self,
        target: &Target,
        leaks: &[LeakGroup],
        g_addrs: &AddrMap<u64>,
        fresh: bool,
    ) {
        for l in leaks {
            if self.by_reachability(l).is_some() {
                continue;
            }
            let key = l.key();
            let stale = fresh || self.by_group.get(&key).is_none_or(|e| e.stale(l.count));
            if !stale {
                continue;
            }
            let gs: Vec<u64> = l
                .goids
                .iter()
                .filter_map(|g| g_addrs.get(g).copied())
                .collect();
            let c0 = thread_cpu_time();
            match retained::estimate(target, &gs, retained::Limits::default()) {
                Ok(r) => {
                    let pinned = Pinned {
                        stack_bytes: r.stack_bytes,
                        heap_bytes: r.heap_bytes,
                        heap_objects: r.heap_objects,
                        truncated: r.truncated,
                        method: retained::METHOD.to_string(),
                    };
                    let e = Estimate {
                        at: Instant::now(),
                        count: l.count,
                        cpu: thread_cpu_time().saturating_sub(c0),
                        pinned,
                    };
                    self.by_group.insert(key, e);
                }
                Err(e) => log::warn!("estimating the memory a leak group pins: {e:#}"),
            }
        }
    }

    /// What `group` pins: from the proof's mark for a proven group it measured, else the
    /// latest estimate (for a proven group, with why the proof's figure is missing).
    pub fn get(&self, group: &LeakGroup) -> Option<Pinned> {
        if let Some(p) = self.by_reachability(group) {
            return Some(p);
        }
        let mut p = self.by_group.get(&group.key()).map(|e| e.pinned.clone())?;
        if group.confidence == Confidence::Proven {
            let why = self.proven_unmeasured.as_deref().unwrap_or(
                "the proof did not measure every goroutine of the group (some proven since)",
            );
            p.method = format!("{} ({why}; estimated instead)", p.method);
        }
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(confidence: Confidence, goids: Vec<u64>) -> LeakGroup {
        LeakGroup {
            count: goids.len(),
            goids,
            ..LeakGroup::for_tests(0, None, confidence)
        }
    }

    fn holds(heap: u64) -> Holds {
        Holds {
            stack_bytes: 8192,
            heap_bytes: heap,
            heap_objects: 1,
        }
    }

    #[test]
    fn a_proven_group_sums_the_proofs_figures_and_falls_back_saying_why() {
        let mut p = PinnedEstimates {
            proven: HashMap::from([(7, holds(100)), (8, holds(50))]),
            ..PinnedEstimates::default()
        };
        let proven = group(Confidence::Proven, vec![7, 8]);
        let got = p.get(&proven).unwrap();
        assert_eq!(
            (got.heap_bytes, got.stack_bytes, got.heap_objects),
            (150, 16384, 2)
        );
        assert_eq!(got.method, REACH_METHOD);
        // Not proven: the proof's figures are not used, there is no estimate yet.
        assert_eq!(p.get(&group(Confidence::High, vec![7, 8])), None);
        // A goroutine the proof did not measure: the estimate, with why.
        let estimate = Pinned {
            heap_bytes: 1 << 20,
            method: retained::METHOD.to_string(),
            ..Pinned::default()
        };
        let wider = group(Confidence::Proven, vec![7, 8, 9]);
        let e = Estimate {
            at: Instant::now(),
            count: 3,
            cpu: Duration::ZERO,
            pinned: estimate.clone(),
        };
        p.by_group.insert(wider.key(), e);
        p.proven_unmeasured = Some("the mark stopped at its bound on objects".into());
        let got = p.get(&wider).unwrap();
        assert_eq!(got.heap_bytes, 1 << 20);
        assert!(
            got.method.starts_with(retained::METHOD)
                && got
                    .method
                    .contains("(the mark stopped at its bound on objects; estimated instead)"),
            "{}",
            got.method
        );
    }

    #[test]
    fn an_estimate_is_made_again_once_the_group_changed_and_its_cpu_allows() {
        let made = |ago: u64, cpu_ms: u64| Estimate {
            at: Instant::now() - Duration::from_secs(ago),
            count: 100,
            cpu: Duration::from_millis(cpu_ms),
            pinned: Pinned::default(),
        };
        // A cheap estimate: PINNED_EVERY paces it, and only a group that changed size.
        assert!(!made(5, 1).stale(200));
        assert!(made(11, 1).stale(200));
        assert!(!made(11, 1).stale(100));
        // One that used 50 ms of CPU waits 20 s, not 10.
        assert!(!made(11, 50).stale(200));
        assert!(made(21, 50).stale(200));
    }
}
