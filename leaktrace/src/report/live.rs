//! The live view: one line per interval on stdout, a line naming each leak group the moment
//! it becomes a suspect (and again when it has doubled), and a summary table when tracing
//! stops.

use std::{collections::HashMap, fmt::Write as _, time::Duration};

use crate::{
    detect::{GroupKey, LeakGroup},
    model::Tally,
    tracee::layout::reason_name,
};

fn by_reason(counts: &std::collections::BTreeMap<u8, u64>, wait_reasons: &[String]) -> String {
    let mut v: Vec<_> = counts
        .iter()
        .map(|(r, n)| (*n, reason_name(wait_reasons, *r)))
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    v.iter()
        .map(|(n, name)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `[   3s] parked 12 (chan receive 8, select 4) | woken 11 (chan receive 8, ...) | lost 0`
pub fn interval_line(elapsed: Duration, t: &Tally, wait_reasons: &[String], lost: u64) -> String {
    let mut line = format!("[{:>5}s] parked {}", elapsed.as_secs(), t.total_parks());
    if !t.parks.is_empty() {
        let _ = write!(line, " ({})", by_reason(&t.parks, wait_reasons));
    }
    let _ = write!(line, " | woken {}", t.total_wakes());
    let mut parts = by_reason(&t.wakes, wait_reasons);
    if t.wakes_unseen_park > 0 {
        if !parts.is_empty() {
            parts.push_str(", ");
        }
        let _ = write!(parts, "parked before attach {}", t.wakes_unseen_park);
    }
    if !parts.is_empty() {
        let _ = write!(line, " ({parts})");
    }
    let _ = write!(line, " | lost {lost}");
    line
}

/// The end-of-trace table: parks and wake-ups per wait reason over the whole trace.
pub fn summary(
    total: &Tally,
    wait_reasons: &[String],
    lost: u64,
    goroutines_seen: usize,
) -> String {
    let mut reasons: Vec<u8> = total
        .parks
        .keys()
        .chain(total.wakes.keys())
        .copied()
        .collect();
    reasons.sort_unstable();
    reasons.dedup();
    reasons.sort_by_key(|r| std::cmp::Reverse(total.parks.get(r).copied().unwrap_or(0)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>10}",
        "wait reason", "parked", "woken"
    );
    for r in reasons {
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>10}",
            reason_name(wait_reasons, r),
            total.parks.get(&r).copied().unwrap_or(0),
            total.wakes.get(&r).copied().unwrap_or(0)
        );
    }
    if total.wakes_unseen_park > 0 {
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>10}",
            "(parked before attach)", "-", total.wakes_unseen_park
        );
    }
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>10}",
        "total",
        total.total_parks(),
        total.total_wakes()
    );
    let _ = writeln!(
        out,
        "goroutines seen: {goroutines_seen}; records lost: {lost}"
    );
    out
}

/// The leak groups the live output has named, and at what size: a group is named the moment
/// it becomes a suspect, and again each time it has doubled since it was last named.
#[derive(Debug, Default)]
pub struct Announced {
    sizes: HashMap<GroupKey, usize>,
}

impl Announced {
    /// A line for each of `leaks` that is new, or at least twice the size it was last named
    /// at.
    pub fn news(&mut self, elapsed: Duration, leaks: &[LeakGroup]) -> Vec<String> {
        let mut lines = Vec::new();
        for l in leaks {
            let before = self.sizes.get(&l.key()).copied();
            if before.is_some_and(|n| l.count < 2 * n) {
                continue;
            }
            self.sizes.insert(l.key(), l.count);
            lines.push(suspect_line(elapsed, l, before));
        }
        lines
    }
}

fn file_line(file: &str, line: u32) -> String {
    format!("{}:{line}", file.rsplit('/').next().unwrap_or(file))
}

/// `[    5s] suspect: 74 goroutines [chan send] at main.search.func1 (main.go:48), created
/// by main.search (main.go:47), confidence high`; `suspect grew 74 -> 596 goroutines ...`
/// when it was named before at `before`.
pub fn suspect_line(elapsed: Duration, l: &LeakGroup, before: Option<usize>) -> String {
    let noun = if l.count == 1 {
        "goroutine"
    } else {
        "goroutines"
    };
    let mut line = match before {
        None => format!("[{:>5}s] suspect: {} {noun}", elapsed.as_secs(), l.count),
        Some(n) => format!(
            "[{:>5}s] suspect grew {n} -> {} {noun}",
            elapsed.as_secs(),
            l.count
        ),
    };
    let _ = write!(line, " [{}]", l.wait_reason);
    if let Some(s) = &l.site {
        let _ = write!(line, " at {} ({})", s.function, file_line(&s.file, s.line));
    }
    if let Some(c) = &l.created_by {
        let _ = write!(
            line,
            ", created by {} ({})",
            c.function,
            file_line(&c.file, c.line)
        );
    }
    let _ = write!(
        line,
        ", confidence {}",
        format!("{:?}", l.confidence).to_lowercase()
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_use_gos_wording_and_fall_back_to_the_number() {
        let reasons = vec!["".into(), "GC assist marking".into(), "IO wait".into()];
        let mut t = Tally::default();
        t.parks.insert(2, 3);
        t.parks.insert(99, 1);
        t.wakes.insert(2, 2);
        t.wakes_unseen_park = 4;
        let line = interval_line(Duration::from_secs(3), &t, &reasons, 5);
        assert_eq!(
            line,
            "[    3s] parked 4 (IO wait 3, waitReason(99) 1) | woken 6 (IO wait 2, parked before attach 4) | lost 5"
        );
        let s = summary(&t, &reasons, 5, 10);
        assert!(s.contains("IO wait"), "{s}");
        assert!(s.contains("records lost: 5"), "{s}");
    }
}

/// A duration in ns as a person reads it: `850ns`, `12.3us`, `4.5ms`, `2.1s`, `3.0m`.
pub fn duration_ns(ns: u64) -> String {
    let n = ns as f64;
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", n / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", n / 1e6),
        1_000_000_000..120_000_000_000 => format!("{:.1}s", n / 1e9),
        _ => format!("{:.1}m", n / 60e9),
    }
}

#[cfg(test)]
mod duration_tests {
    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(super::duration_ns(850), "850ns");
        assert_eq!(super::duration_ns(12_340), "12.3us");
        assert_eq!(super::duration_ns(4_500_000), "4.5ms");
        assert_eq!(super::duration_ns(2_100_000_000), "2.1s");
        assert_eq!(super::duration_ns(180_000_000_000), "3.0m");
    }
}
