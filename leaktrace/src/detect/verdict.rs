//! The memory verdict: is the memory the target holds a leak, and whose? Made from the
//! memory timeline (RSS, the Go heap, madvise), the goroutine counts of the snapshots, the
//! leak groups, and the heap profile's allocation sites. The values of `kind` are documented
//! in the README ("The memory verdict") and never renamed.
//!
//! Proven groups come first: what they pin is measured by reachability (what the heap would
//! lose without them), so when the heap grows the explanation names their pinned memory
//! first, and when it grows but they pin a negligible part of the growth
//! ([`NEGLIGIBLE_SHARE`]) and no other group is suspected, the growth is not blamed on them.

use serde::Serialize;

use super::{Confidence, LeakGroup, pinned::REACH_METHOD};
use crate::{alloc::AllocSite, census::memory::mib, model::MemoryPoint};

/// Heap in use grows when the lowest reading of the last third of the trace is this much
/// above the lowest reading of the first third (lowest: the GC's sawtooth is read at its
/// troughs)...
const GROWTH_RATIO: f64 = 1.2;
/// ... and at least this many bytes above it.
const GROWTH_MIN_BYTES: u64 = 4 << 20;
/// Goroutines grow under the same rule, with at least this many more.
const GOROUTINE_GROWTH_MIN: usize = 10;
/// Proven groups whose pinned memory (heap and stacks, by reachability) is under this share
/// of the heap's growth do not hold it.
pub const NEGLIGIBLE_SHARE: f64 = 0.1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// Heap in use flat or falling while the runtime returns pages with madvise: RSS is high
    /// only because pages are not returned yet. Not a leak.
    NotALeakPagesNotYetReturned,
    /// Heap in use grows and leak groups hold it (see their `pinned`).
    GoroutineLeakHoldingHeap,
    /// Goroutines leak, but the heap does not grow: the cost is their stacks and what they
    /// held when they blocked.
    GoroutineLeak,
    /// Heap in use grows with no goroutine growth and no leak group: memory referenced from
    /// elsewhere (a global map, a cache); see `top_growing_sites`.
    HeapGrowthWithoutGoroutineGrowth,
    /// Nothing grows and nothing is returned.
    Stable,
    /// Fewer than three memory readings: trace longer.
    InsufficientData,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct MemoryVerdict {
    pub kind: VerdictKind,
    /// One sentence with the figures behind the kind.
    pub explanation: String,
    pub heap_inuse_start: u64,
    pub heap_inuse_end: u64,
    pub heap_inuse_growth: i64,
    pub rss_end: u64,
    /// Bytes the target returned to the OS during the trace (madvise DONTNEED and FREE).
    pub madvised_bytes: u64,
    pub goroutines_start: Option<usize>,
    pub goroutines_end: Option<usize>,
    /// For heap growth: the allocation sites whose in-use bytes grew most (from the heap
    /// profile, or the fallback sampler's bytes).
    pub top_growing_sites: Vec<AllocSite>,
}

/// The lowest value of `f` over the first and over the last third of `points`.
fn troughs<T: Copy + Ord>(
    points: &[MemoryPoint],
    f: impl Fn(&MemoryPoint) -> Option<T>,
) -> Option<(T, T)> {
    let third = points.len().div_ceil(3);
    let first = points[..third].iter().filter_map(&f).min()?;
    let last = points[points.len() - third..].iter().filter_map(&f).min()?;
    Some((first, last))
}

/// The proven groups whose pinned memory was measured by reachability: how many, and the
/// bytes (heap and stacks) they pin, largest group first.
fn proven_pins(leaks: &[LeakGroup]) -> Vec<(&LeakGroup, u64)> {
    let mut out: Vec<(&LeakGroup, u64)> = leaks
        .iter()
        .filter(|l| l.confidence == Confidence::Proven)
        .filter_map(|l| {
            let p = l.pinned.as_ref().filter(|p| p.method == REACH_METHOD)?;
            Some((l, p.heap_bytes + p.stack_bytes))
        })
        .collect();
    out.sort_by_key(|&(_, b)| std::cmp::Reverse(b));
    out
}

/// "N proven group(s) pin X MiB by reachability (the largest, at SITE, X MiB)", or nothing.
fn proven_clause(proven: &[(&LeakGroup, u64)]) -> String {
    let Some(&(top, top_bytes)) = proven.first() else {
        return String::new();
    };
    let total: u64 = proven.iter().map(|p| p.1).sum();
    let site = top.site.as_ref().map_or(top.wait_reason.clone(), |s| {
        format!("{} {}:{}", s.function, s.file, s.line)
    });
    format!(
        "{} proven leak group(s) pin {:.1} MiB, measured by reachability (the largest, {} goroutines at {site}, {:.1} MiB)",
        proven.len(),
        mib(total),
        top.count,
        mib(top_bytes)
    )
}

/// Judges the trace. `leaks` are the leak groups with their pinned memory; `growing_sites`
/// are allocation sites by in-use growth, largest first.
pub fn judge(
    timeline: &[MemoryPoint],
    leaks: &[LeakGroup],
    growing_sites: Vec<AllocSite>,
) -> MemoryVerdict {
    let leak_groups = leaks.len();
    let proven = proven_pins(leaks);
    let proven_bytes: u64 = proven.iter().map(|p| p.1).sum();
    let (first, last) = match (timeline.first(), timeline.last()) {
        (Some(f), Some(l)) => (f, l),
        _ => {
            return MemoryVerdict {
                kind: VerdictKind::InsufficientData,
                explanation: "no memory reading of the target".into(),
                heap_inuse_start: 0,
                heap_inuse_end: 0,
                heap_inuse_growth: 0,
                rss_end: 0,
                madvised_bytes: 0,
                goroutines_start: None,
                goroutines_end: None,
                top_growing_sites: Vec::new(),
            };
        }
    };
    let madvised = |p: &MemoryPoint| {
        ["DONTNEED", "FREE"]
            .iter()
            .map(|a| p.madvise_bytes.get(*a).copied().unwrap_or(0))
            .sum::<u64>()
    };
    let madvised_bytes = madvised(last).saturating_sub(madvised(first));
    let released = last
        .memory
        .heap_released
        .saturating_sub(first.memory.heap_released);
    let mut v = MemoryVerdict {
        kind: VerdictKind::InsufficientData,
        explanation: String::new(),
        heap_inuse_start: first.memory.heap_inuse,
        heap_inuse_end: last.memory.heap_inuse,
        heap_inuse_growth: last.memory.heap_inuse as i64 - first.memory.heap_inuse as i64,
        rss_end: last.memory.rss_bytes,
        madvised_bytes,
        goroutines_start: first.goroutines,
        goroutines_end: last.goroutines,
        top_growing_sites: Vec::new(),
    };
    if timeline.len() < 3 {
        v.explanation = format!(
            "{} memory readings; trace for at least three snapshot intervals",
            timeline.len()
        );
        return v;
    }
    let (heap_a, heap_b) =
        troughs(timeline, |p| Some(p.memory.heap_inuse)).expect("three readings");
    let heap_grows = heap_b as f64 > heap_a as f64 * GROWTH_RATIO
        && heap_b.saturating_sub(heap_a) >= GROWTH_MIN_BYTES;
    let goroutines_grow = troughs(timeline, |p| p.goroutines).is_some_and(|(a, b)| {
        b as f64 > a as f64 * GROWTH_RATIO && b.saturating_sub(a) >= GOROUTINE_GROWTH_MIN
    });
    let peak = timeline
        .iter()
        .map(|p| p.memory.heap_inuse)
        .max()
        .unwrap_or(0);
    let returning = madvised_bytes > 0 || released > 0;
    // Every group proven and measured, and together they pin a negligible part of the
    // growth: the heap is not theirs.
    let growth = heap_b.saturating_sub(heap_a);
    let proven_innocent = leak_groups > 0
        && proven.len() == leak_groups
        && (proven_bytes as f64) < growth as f64 * NEGLIGIBLE_SHARE;
    (v.kind, v.explanation) = if heap_grows
        && !proven_innocent
        && (leak_groups > 0 || goroutines_grow)
    {
        let others = leak_groups - proven.len();
        let whose = match (proven.is_empty(), others) {
            (true, _) => format!(
                "{leak_groups} leak group(s) stayed blocked; their pinned memory is estimated per group"
            ),
            (false, 0) => proven_clause(&proven),
            (false, n) => format!(
                "{}; {n} other leak group(s) stayed blocked, their pinned memory estimated per group",
                proven_clause(&proven)
            ),
        };
        (
            VerdictKind::GoroutineLeakHoldingHeap,
            format!(
                "heap in use grew from {:.1} to {:.1} MiB (lowest readings of the first and last third) while {whose}",
                mib(heap_a),
                mib(heap_b)
            ),
        )
    } else if heap_grows && proven_innocent {
        v.top_growing_sites = growing_sites.into_iter().take(5).collect();
        (
            VerdictKind::HeapGrowthWithoutGoroutineGrowth,
            format!(
                "heap in use grew from {:.1} to {:.1} MiB, but the {} proven leak group(s) pin only {:.1} MiB of it, measured by reachability: the rest is referenced from elsewhere (a global map, a cache){}",
                mib(heap_a),
                mib(heap_b),
                proven.len(),
                mib(proven_bytes),
                top_site(&v.top_growing_sites)
            ),
        )
    } else if heap_grows {
        v.top_growing_sites = growing_sites.into_iter().take(5).collect();
        (
            VerdictKind::HeapGrowthWithoutGoroutineGrowth,
            format!(
                "heap in use grew from {:.1} to {:.1} MiB with no goroutine growth and no leak group: memory is referenced from elsewhere (a global map, a cache){}",
                mib(heap_a),
                mib(heap_b),
                top_site(&v.top_growing_sites)
            ),
        )
    } else if leak_groups > 0 {
        (
            VerdictKind::GoroutineLeak,
            format!(
                "{leak_groups} leak group(s), but heap in use did not grow ({:.1} -> {:.1} MiB){}",
                mib(heap_a),
                mib(heap_b),
                match proven.is_empty() {
                    true => String::new(),
                    false => format!("; {}", proven_clause(&proven)),
                }
            ),
        )
    } else if returning && last.memory.heap_inuse <= peak {
        (
            VerdictKind::NotALeakPagesNotYetReturned,
            format!(
                "not a leak: heap in use is flat or falling ({:.1} MiB at its peak, {:.1} MiB now) and the runtime returned {:.1} MiB to the OS with madvise ({:.1} MiB more counted as released); RSS ({:.1} MiB) follows as pages are returned",
                mib(peak),
                mib(last.memory.heap_inuse),
                mib(madvised_bytes),
                mib(released),
                mib(last.memory.rss_bytes)
            ),
        )
    } else {
        (
            VerdictKind::Stable,
            format!(
                "heap in use steady ({:.1} -> {:.1} MiB), no leak group, no memory returned",
                mib(heap_a),
                mib(heap_b)
            ),
        )
    };
    v
}

/// "; the top allocation site is F FILE:LINE", or nothing.
fn top_site(sites: &[AllocSite]) -> String {
    match sites.first() {
        Some(s) => format!(
            "; the top allocation site is {} {}:{}",
            s.function, s.file, s.line
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::MemorySnapshot;
    use crate::detect::Pinned;

    /// A leak group of `count` goroutines at `line`, pinning `pinned` bytes measured by
    /// `method`.
    fn group(confidence: Confidence, line: u32, pinned: u64, method: &str) -> LeakGroup {
        LeakGroup {
            pinned: Some(Pinned {
                heap_bytes: pinned,
                method: method.into(),
                ..Pinned::default()
            }),
            ..LeakGroup::for_tests(10, Some(line), confidence)
        }
    }

    fn point(heap: u64, madvised: u64, goroutines: usize) -> MemoryPoint {
        MemoryPoint {
            seconds: 0.0,
            memory: MemorySnapshot {
                heap_inuse: heap << 20,
                rss_bytes: (heap + 10) << 20,
                ..MemorySnapshot::default()
            },
            madvise_bytes: [("DONTNEED".to_string(), madvised << 20)].into(),
            goroutines: Some(goroutines),
        }
    }

    #[test]
    fn each_kind_from_its_shape() {
        let burst = [
            point(10, 0, 5),
            point(500, 0, 5),
            point(400, 0, 5),
            point(12, 480, 5),
        ];
        assert_eq!(
            judge(&burst, &[], Vec::new()).kind,
            VerdictKind::NotALeakPagesNotYetReturned
        );
        let map = [
            point(10, 0, 5),
            point(30, 0, 5),
            point(60, 0, 5),
            point(90, 0, 5),
        ];
        assert_eq!(
            judge(&map, &[], Vec::new()).kind,
            VerdictKind::HeapGrowthWithoutGoroutineGrowth
        );
        let leak = [point(10, 0, 5), point(30, 0, 100), point(60, 0, 200)];
        let high = group(Confidence::High, 1, 40 << 20, "estimate");
        assert_eq!(
            judge(&leak, std::slice::from_ref(&high), Vec::new()).kind,
            VerdictKind::GoroutineLeakHoldingHeap
        );
        let flat = [point(10, 0, 5), point(11, 0, 5), point(10, 0, 5)];
        assert_eq!(judge(&flat, &[], Vec::new()).kind, VerdictKind::Stable);
        assert_eq!(
            judge(&flat, &[high.clone(), high], Vec::new()).kind,
            VerdictKind::GoroutineLeak
        );
        assert_eq!(
            judge(&flat[..2], &[], Vec::new()).kind,
            VerdictKind::InsufficientData
        );
    }

    #[test]
    fn proven_groups_come_first() {
        let grows = [point(10, 0, 5), point(30, 0, 100), point(60, 0, 200)];
        // A proven group pinning most of the growth is named first, with its figure.
        let big = group(Confidence::Proven, 7, 45 << 20, REACH_METHOD);
        let high = group(Confidence::High, 9, 1 << 20, "estimate");
        let v = judge(&grows, &[high.clone(), big.clone()], Vec::new());
        assert_eq!(v.kind, VerdictKind::GoroutineLeakHoldingHeap);
        assert!(
            v.explanation.contains(
                "1 proven leak group(s) pin 45.0 MiB, measured by reachability \
                 (the largest, 10 goroutines at main.produce /src/main.go:7, 45.0 MiB); \
                 1 other leak group(s)"
            ),
            "{}",
            v.explanation
        );
        // Proven groups that pin next to nothing of 50 MiB of growth do not hold it...
        let small = group(Confidence::Proven, 7, 1 << 20, REACH_METHOD);
        let v = judge(&grows, std::slice::from_ref(&small), Vec::new());
        assert_eq!(v.kind, VerdictKind::HeapGrowthWithoutGoroutineGrowth);
        assert!(
            v.explanation
                .contains("the 1 proven leak group(s) pin only 1.0 MiB of it"),
            "{}",
            v.explanation
        );
        // ... unless a group not proven may, or the figure is an estimate, not the proof's.
        assert_eq!(
            judge(&grows, &[small.clone(), high], Vec::new()).kind,
            VerdictKind::GoroutineLeakHoldingHeap
        );
        let estimated = group(Confidence::Proven, 7, 1 << 20, "estimate");
        assert_eq!(
            judge(&grows, &[estimated], Vec::new()).kind,
            VerdictKind::GoroutineLeakHoldingHeap
        );
        // Flat heap: a goroutine leak, with what the proven group pins.
        let flat = [point(10, 0, 5), point(11, 0, 5), point(10, 0, 5)];
        let v = judge(&flat, &[small], Vec::new());
        assert_eq!(v.kind, VerdictKind::GoroutineLeak);
        assert!(v.explanation.contains("pin 1.0 MiB"), "{}", v.explanation);
    }
}
