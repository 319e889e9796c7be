//! What `--prometheus ADDR` serves, refreshed at every snapshot: the target's memory, its
//! goroutines and suspected leaks, park durations, and what the probes cost. Names are
//! documented in the README ("Prometheus").

use super::prometheus::Metrics;
use crate::model::{MemoryPoint, histograms::Histograms};
use crate::{census::MemorySnapshot, detect::LeakGroup, probes::Counts};

/// A probe's hits since the trace started (what the target paid: not scaled), and the
/// fraction of the time it has been in place (1 when continuous).
pub struct ProbeFigures {
    pub function: &'static str,
    pub hits: u64,
    pub duty: f64,
}

/// Park-duration bucket bounds, in seconds.
const PARK_BOUNDS: [f64; 10] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 60.0, 600.0];

pub fn render(
    memory: Option<&MemoryPoint>,
    leaks: &[LeakGroup],
    hist: &Histograms,
    counts: &Counts,
    probes: &[ProbeFigures],
) -> String {
    let mut m = Metrics::new();
    if let Some(p) = memory {
        let mem = &p.memory;
        memory_gauges(&mut m, mem, &[]);
        for (advice, bytes) in &p.madvise_bytes {
            m.counter(
                "leaktrace_target_madvise_bytes_total",
                "Bytes the target passed to madvise since the trace started, by advice.",
                &[("advice", advice)],
                *bytes as f64,
            );
        }
        if let Some(n) = p.goroutines {
            m.gauge(
                "leaktrace_target_goroutines",
                "Goroutines of the target (runtime ones left out).",
                &[],
                n as f64,
            );
        }
    }
    m.gauge(
        "leaktrace_leak_groups",
        "Suspected goroutine leak groups.",
        &[],
        leaks.len() as f64,
    );
    for l in leaks {
        let site = l
            .site
            .as_ref()
            .map(|s| format!("{} {}:{}", s.function, s.file, s.line))
            .unwrap_or_default();
        let confidence = format!("{:?}", l.confidence).to_lowercase();
        m.gauge(
            "leaktrace_leaked_goroutines",
            "Goroutines in a suspected leak group, by wait reason and blocking site.",
            &[
                ("wait_reason", &l.wait_reason),
                ("site", &site),
                ("confidence", &confidence),
            ],
            l.count as f64,
        );
        if let Some(p) = &l.pinned {
            for (memory, bytes) in [("heap", p.heap_bytes), ("stack", p.stack_bytes)] {
                m.gauge(
                    "leaktrace_leak_pinned_bytes",
                    "Memory a leak group keeps alive, by kind: for a proven group what only its goroutines' stacks reach (measured by reachability), else an estimate that also counts what live code holds.",
                    &[
                        ("wait_reason", &l.wait_reason),
                        ("site", &site),
                        ("confidence", &confidence),
                        ("memory", memory),
                    ],
                    bytes as f64,
                );
            }
        }
    }
    for (tag, _) in hist.percentiles() {
        let Some(reason) = tag.strip_prefix("park_ns.") else {
            continue;
        };
        let Some(h) = hist.total(&tag) else { continue };
        let buckets: Vec<(f64, u64)> = PARK_BOUNDS
            .iter()
            .map(|&b| (b, h.count_between(0, (b * 1e9) as u64)))
            .collect();
        m.histogram(
            "leaktrace_park_duration_seconds",
            "How long goroutines stayed parked, by wait reason (park and wake probes).",
            &[("wait_reason", reason)],
            &buckets,
            h.mean() * h.len() as f64 / 1e9,
            h.len(),
        );
    }
    for p in probes {
        m.counter(
            "leaktrace_probe_hits_total",
            "Hits of each probe since the trace started (in windows too, not scaled).",
            &[("function", p.function)],
            p.hits as f64,
        );
        m.gauge(
            "leaktrace_probe_duty_ratio",
            "The fraction of the time each probe has been in place: 1 when continuous, less when it runs in windows. Divide a windowed probe's hit rate, and leaktrace_park_duration_seconds' counts, by it for the whole.",
            &[("function", p.function)],
            p.duty,
        );
    }
    m.counter(
        "leaktrace_lost_records_total",
        "Records dropped because leaktrace's ring buffer was full.",
        &[],
        counts.lost as f64,
    );
    m.render()
}

/// The target's memory as gauges (and its GC cycles as a counter), with `labels`: the live
/// trace's `/metrics` and the agent's, per target.
pub(super) fn memory_gauges(m: &mut Metrics, mem: &MemorySnapshot, labels: &[(&str, &str)]) {
    for (name, help, v) in [
        (
            "leaktrace_target_rss_bytes",
            "Resident set size of the target (VmRSS).",
            mem.rss_bytes,
        ),
        (
            "leaktrace_target_heap_inuse_bytes",
            "Go heap in use (HeapInuse).",
            mem.heap_inuse,
        ),
        (
            "leaktrace_target_heap_idle_bytes",
            "Go heap idle (HeapIdle).",
            mem.heap_idle,
        ),
        (
            "leaktrace_target_heap_released_bytes",
            "Go heap returned to the OS (HeapReleased).",
            mem.heap_released,
        ),
        (
            "leaktrace_target_heap_alloc_bytes",
            "Go heap allocated and not yet freed (HeapAlloc).",
            mem.heap_alloc,
        ),
    ] {
        m.gauge(name, help, labels, v as f64);
    }
    m.counter(
        "leaktrace_target_gc_cycles_total",
        "GC cycles of the target (NumGC).",
        labels,
        mem.num_gc as f64,
    );
}
