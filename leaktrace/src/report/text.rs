//! The report as text for a person: the memory story, the verdict, the allocation sites and
//! the suspected leak groups with their evidence.

use std::fmt::Write as _;

use super::schema::Report;
use crate::census::memory::mib;

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
    park_durations(&mut out, r);
    targeted_probes(&mut out, r);
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

/// The targeted probes tried at the suspects' sites, and what each came to.
fn targeted_probes(out: &mut String, r: &Report) {
    if r.probes.sites.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "targeted probes (each tried for a few ms first, kept if it fits the budget):"
    );
    for s in &r.probes.sites {
        let _ = writeln!(
            out,
            "  {:<10} after {} {}:{}  ({:.0} hits/s in the trial, {:.2}% of a CPU, {:.2}% allowed)",
            s.mode,
            s.function,
            s.file,
            s.line,
            s.trial_hits_per_second,
            s.cost * 100.0,
            s.allowed * 100.0
        );
    }
    out.push('\n');
}

/// Park durations per wait reason, and which part of them is exact when sampled.
fn park_durations(out: &mut String, r: &Report) {
    let parks: Vec<_> = r
        .histograms
        .iter()
        .filter(|(t, p)| t.starts_with("park_ns.") && p.count > 0)
        .collect();
    if !parks.is_empty() {
        let _ = writeln!(out, "park durations (p50 / p99 / max):");
        if let (Some(d), Some(s)) = (
            &r.probes.park_durations,
            r.probes.sampling.get("runtime.gopark"),
        ) {
            let _ = writeln!(
                out,
                "  sampled, {:.1}% of the time in {} windows: {} parks measured exactly ({} of them from one window to a later one); {} outlasted their window and were timed by snapshots that saw them on and then over (to within the snapshot interval, marked below); {} outlasted theirs untimed and {} were still open at the end (not in these figures)",
                s.duty * 100.0,
                s.windows,
                d.exact,
                d.exact_across_windows,
                d.closed_by_snapshot,
                d.outlasted_window,
                d.open_at_end
            );
        }
        for (t, p) in parks {
            let inexact = r
                .probes
                .park_durations
                .as_ref()
                .and_then(|d| d.closed_by_snapshot_in.get(t.as_str()))
                .map(|n| format!("  ({n} closed by a snapshot)"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<32} {:>8} parks  {:>10} / {:>10} / {:>10}{inexact}",
                &t["park_ns.".len()..],
                p.count,
                super::live::duration_ns(p.p50),
                super::live::duration_ns(p.p99),
                super::live::duration_ns(p.max)
            );
        }
        out.push('\n');
    }
}
