//! What `leaktrace agent` serves about its targets: the metrics of every watched process
//! (labelled `pid`, `exe`, `service`) and the `/targets` listing. Names are documented in the
//! README ("Agent").

use serde::Serialize;

use super::prometheus::Metrics;
use crate::{census::MemorySnapshot, detect::LeakGroup};

/// One watched process, as its metrics need it.
pub struct TargetFigures<'a> {
    pub pid: u32,
    pub exe: &'a str,
    pub service: &'a str,
    /// Goroutines at the last snapshot (runtime ones left out).
    pub goroutines: usize,
    pub leaks: &'a [LeakGroup],
    pub memory: Option<&'a MemorySnapshot>,
    pub snapshots: u64,
}

/// The label value of the series that sums the groups past the top ones.
pub const OTHER: &str = "other";

/// The targets' metrics; at most `top` leak groups per process are series of their own, the
/// rest one series labelled `other`, so that a process with a thousand distinct leaks
/// still makes a handful of series.
pub fn render(targets: &[TargetFigures], top: usize) -> String {
    let mut m = Metrics::new();
    for t in targets {
        let pid = t.pid.to_string();
        let base = [
            ("pid", pid.as_str()),
            ("exe", t.exe),
            ("service", t.service),
        ];
        m.gauge(
            "leaktrace_target_goroutines",
            "Goroutines of the target at its last snapshot (runtime ones left out).",
            &base,
            t.goroutines as f64,
        );
        m.counter(
            "leaktrace_target_snapshots_total",
            "Snapshots of the target's goroutines taken by the agent.",
            &base,
            t.snapshots as f64,
        );
        m.gauge(
            "leaktrace_leak_groups",
            "Suspected goroutine leak groups of the target.",
            &base,
            t.leaks.len() as f64,
        );
        for l in t.leaks.iter().take(top) {
            let site = l
                .site
                .as_ref()
                .map(|s| format!("{} {}:{}", s.function, s.file, s.line))
                .unwrap_or_default();
            let confidence = format!("{:?}", l.confidence).to_lowercase();
            let labels = [
                base[0],
                base[1],
                base[2],
                ("wait_reason", l.wait_reason.as_str()),
                ("site", site.as_str()),
                ("confidence", confidence.as_str()),
            ];
            m.gauge(
                "leaktrace_leaked_goroutines",
                "Goroutines in a suspected leak group, by wait reason and blocking site (the \
                 groups past --top-groups summed in one series labelled other).",
                &labels,
                l.count as f64,
            );
        }
        if t.leaks.len() > top {
            let rest: usize = t.leaks[top..].iter().map(|l| l.count).sum();
            let labels = [
                base[0],
                base[1],
                base[2],
                ("wait_reason", OTHER),
                ("site", OTHER),
                ("confidence", OTHER),
            ];
            m.gauge("leaktrace_leaked_goroutines", "", &labels, rest as f64);
        }
        if let Some(mem) = t.memory {
            super::metrics::memory_gauges(&mut m, mem, &base);
        }
    }
    m.render()
}

/// A line of `/targets`.
#[derive(Debug, Serialize)]
pub struct TargetEntry {
    pub pid: u32,
    pub exe: String,
    /// `watched`, or `refused` with the reason.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutines: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak_groups: Option<usize>,
    /// Seconds since its last snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_age_seconds: Option<f64>,
}

/// `/targets`: what is watched, and the Go programs that are not, with why.
pub fn targets_json(entries: &[TargetEntry]) -> String {
    let mut s = serde_json::to_string_pretty(&serde_json::json!({ "targets": entries }))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Confidence;

    fn group(count: usize, line: u32) -> LeakGroup {
        LeakGroup::for_tests(count, Some(line), Confidence::Proven)
    }

    #[test]
    fn groups_past_the_top_are_one_series() {
        let leaks: Vec<LeakGroup> = (0..5).map(|i| group(10 - i, 20 + i as u32)).collect();
        let text = render(
            &[TargetFigures {
                pid: 42,
                exe: "api",
                service: "api.service",
                goroutines: 60,
                leaks: &leaks,
                memory: None,
                snapshots: 3,
            }],
            2,
        );
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("leaktrace_leaked_goroutines{"))
            .collect();
        assert_eq!(series.len(), 3, "{text}");
        assert!(
            series[0].ends_with("site=\"main.produce /src/main.go:20\",confidence=\"proven\"} 10")
        );
        assert!(series[2].contains("wait_reason=\"other\""), "{}", series[2]);
        assert!(series[2].ends_with(" 21"), "8 + 7 + 6: {}", series[2]);
        assert!(
            text.contains(
                "leaktrace_leak_groups{pid=\"42\",exe=\"api\",service=\"api.service\"} 5"
            )
        );
    }
}
