//! The leak report: the suspected leak groups with their evidence, as text for a person and
//! as JSON for a program. The JSON schema is documented in the README ("The report").

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::{histograms::Percentiles, verdict::MemoryVerdict};
use crate::{
    census::{MemorySnapshot, heapprofile::AllocSite},
    detect::{Allocated, LeakGroup},
};

/// What the probes did during the trace.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProbeSummary {
    /// Runtime functions probed at the end of the trace.
    pub attached: Vec<String>,
    /// Hits per probed function over the whole trace.
    pub hits: BTreeMap<String, u64>,
    pub lost_records: u64,
    /// Each time probes were shed to stay under --max-overhead, and why.
    pub shed: Vec<String>,
    /// What one probe hit costs on this machine, measured at start-up: the budget
    /// multiplies hits by it.
    pub hit_cost_us: f64,
    /// The target's activity, read just before any probe was placed on a running target:
    /// what judged which probes fit the budget.
    pub estimated_before_attach: Option<ActivityEstimate>,
}

/// Rates read off the target's runtime in 100 ms, without probes (`census::activity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ActivityEstimate {
    pub goroutines_created_per_second: f64,
    /// Parks, wake-ups and other goroutine state changes per second (a lower bound).
    pub state_changes_per_second: f64,
    /// From the heap's byte counter at 64 B an object; absent when it cannot be read.
    pub allocations_per_second: Option<f64>,
}

/// The target's memory at one moment of the trace.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryPoint {
    pub seconds: f64,
    /// RSS and the Go heap, named as in `dump --json`.
    #[serde(flatten)]
    pub memory: MemorySnapshot,
    /// Bytes the target passed to madvise since the trace started, by advice
    /// ("DONTNEED", "FREE", "HUGEPAGE", "NOHUGEPAGE", "other").
    pub madvise_bytes: BTreeMap<String, u64>,
    /// Goroutines in the target at this moment (from the snapshot taken with it).
    pub goroutines: Option<usize>,
}

/// Where allocations happen (`report.json` `allocation_sites`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct AllocationSites {
    /// Where the figures come from.
    pub source: String,
    /// Why the runtime's own profile is not used, or is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `runtime.MemProfileRate` when the runtime's profile is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// By estimated bytes allocated since the program started (the runtime's profile) or
    /// while traced (the fallback sampler), largest first.
    pub sites: Vec<AllocSite>,
}

/// `report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub pid: u32,
    pub executable: String,
    pub go_version: String,
    pub stopped: String,
    pub observed_seconds: f64,
    pub snapshots: usize,
    pub min_age_seconds: f64,
    /// Goroutines parked and woken while traced, by Go's wording of the wait reason.
    pub parks: BTreeMap<String, u64>,
    pub wakes: BTreeMap<String, u64>,
    /// Seen by the create/exit probes while they ran.
    pub goroutines_created: u64,
    pub goroutines_exited: u64,
    /// Every allocation the alloc probe saw, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocations: Option<Allocated>,
    pub probes: ProbeSummary,
    /// RSS, the Go heap and madvise at each snapshot: a heap in use that stays flat while
    /// pages are returned tells "not returned yet" from "still referenced".
    pub memory_timeline: Vec<MemoryPoint>,
    /// Leak, or memory not yet returned? See the README for the values of `kind`.
    pub memory_verdict: MemoryVerdict,
    pub allocation_sites: AllocationSites,
    /// Percentiles of every histogram, by tag (`histograms.hlog` has them per interval).
    pub histograms: BTreeMap<String, Percentiles>,
    /// Suspected leak groups, strongest first.
    pub leaks: Vec<LeakGroup>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub fn text(r: &Report) -> String {
    let mut out = String::new();
    if let (Some(a), Some(b)) = (r.memory_timeline.first(), r.memory_timeline.last()) {
        let _ = writeln!(
            out,
            "memory over {:.1} s: RSS {:.1} -> {:.1} MiB (peak {:.1}), Go heap in use {:.1} -> {:.1} MiB (peak {:.1}), released to the OS {:.1} -> {:.1} MiB, madvise(DONTNEED) {:.1} MiB, {} GCs\n",
            b.seconds - a.seconds,
            mib(a.memory.rss_bytes),
            mib(b.memory.rss_bytes),
            mib(r
                .memory_timeline
                .iter()
                .map(|p| p.memory.rss_bytes)
                .max()
                .unwrap_or(0)),
            mib(a.memory.heap_inuse),
            mib(b.memory.heap_inuse),
            mib(r
                .memory_timeline
                .iter()
                .map(|p| p.memory.heap_inuse)
                .max()
                .unwrap_or(0)),
            mib(a.memory.heap_released),
            mib(b.memory.heap_released),
            mib(b.madvise_bytes.get("DONTNEED").copied().unwrap_or(0)),
            b.memory.num_gc.saturating_sub(a.memory.num_gc)
        );
    }
    let _ = writeln!(
        out,
        "memory verdict: {} - {}\n",
        serde_json::to_value(r.memory_verdict.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        r.memory_verdict.explanation
    );
    if !r.allocation_sites.sites.is_empty() {
        let _ = writeln!(out, "top allocation sites ({}):", r.allocation_sites.source);
        for s in r.allocation_sites.sites.iter().take(5) {
            let _ = writeln!(
                out,
                "  {:>10.1} MiB allocated, {:>8.1} MiB in use  {} {}:{}",
                mib(s.alloc_bytes),
                mib(s.inuse_bytes),
                s.function,
                s.file,
                s.line
            );
        }
        out.push('\n');
    }
    if let Some(note) = &r.allocation_sites.note {
        let _ = writeln!(out, "allocations: {note}\n");
    }
    let parks: Vec<_> = r
        .histograms
        .iter()
        .filter(|(t, p)| t.starts_with("park_ns.") && p.count > 0)
        .collect();
    if !parks.is_empty() {
        let _ = writeln!(out, "park durations (p50 / p99 / max):");
        for (t, p) in parks {
            let _ = writeln!(
                out,
                "  {:<32} {:>8} parks  {:>10} / {:>10} / {:>10}",
                &t["park_ns.".len()..],
                p.count,
                super::live::duration_ns(p.p50),
                super::live::duration_ns(p.p99),
                super::live::duration_ns(p.max)
            );
        }
        out.push('\n');
    }
    if r.leaks.is_empty() {
        let _ = writeln!(
            out,
            "no goroutine leak suspected in {:.1} s of observation ({} snapshots, --min-age {:.1} s)",
            r.observed_seconds, r.snapshots, r.min_age_seconds
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{} suspected goroutine leak group(s) in {:.1} s of observation ({} snapshots):\n",
        r.leaks.len(),
        r.observed_seconds,
        r.snapshots
    );
    for l in &r.leaks {
        let noun = if l.count == 1 {
            "goroutine"
        } else {
            "goroutines"
        };
        let _ = writeln!(
            out,
            "{} {noun} [{}], blocked {:.1}-{:.1} s, confidence {:?} (score {}):",
            l.count,
            l.wait_reason,
            l.blocked_seconds.min,
            l.blocked_seconds.max,
            l.confidence,
            l.score
        );
        super::dump::write_frames(&mut out, &l.stack, 0, l.created_by.as_ref(), "    ");
        if let Some(c) = &l.channel {
            let kind = if c.capacities == [0] {
                "unbuffered".to_string()
            } else {
                format!("capacity {:?}", c.capacities)
            };
            let _ = writeln!(
                out,
                "    channel: {} distinct, {kind}{}{}",
                c.distinct,
                if c.other_side_waiting {
                    ", goroutines waiting on the other side"
                } else {
                    ", nobody waiting on the other side"
                },
                if c.closed { ", closed" } else { "" }
            );
            if let Some(t) = &c.last_other_side {
                let _ = writeln!(
                    out,
                    "    last {} on them: goroutine {}{} at {:.1} s\n    \t{} {}:{}",
                    t.op,
                    t.goid,
                    if t.exited { " (exited since)" } else { "" },
                    t.at_seconds,
                    t.function,
                    t.file,
                    t.line
                );
            }
        }
        if let Some(a) = &l.allocated {
            let _ = writeln!(
                out,
                "    allocated while traced ({}): {} objects, {} bytes",
                a.source, a.count, a.bytes
            );
        }
        if let Some(p) = &l.pinned {
            let _ = writeln!(
                out,
                "    pins about {:.1} MiB of heap ({} objects{}) and {:.1} MiB of stacks ({})",
                mib(p.heap_bytes),
                p.heap_objects,
                if p.truncated {
                    ", scan bounded: at least"
                } else {
                    ""
                },
                mib(p.stack_bytes),
                p.method
            );
        }
        for e in &l.evidence {
            let _ = writeln!(out, "    + {e}");
        }
        for a in &l.against {
            let _ = writeln!(out, "    - {a}");
        }
        let ids: Vec<String> = l.goids.iter().take(20).map(u64::to_string).collect();
        let more = if l.goids.len() > 20 {
            format!(" ... ({} more)", l.goids.len() - 20)
        } else {
            String::new()
        };
        let _ = writeln!(out, "    goroutines: {}{more}\n", ids.join(" "));
    }
    out
}
