//! The trace's histograms (HdrHistogram, three significant digits): park duration per wait
//! reason, goroutine lifetime, allocation size, madvise size, and the blocked time of leak
//! groups. Each is kept for the whole trace and per interval; closed intervals are kept
//! compressed (HdrHistogram's V2 deflate encoding, a few hundred bytes each), so a long trace
//! costs little memory, and are written as an interval log (`histograms.hlog`).
//!
//! Tags name what is measured and its unit: `park_ns.<reason>`, `lifetime_ns`,
//! `alloc_size_bytes`, `madvise_bytes`, `leak_blocked_ms`.

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer as _, V2DeflateSerializer},
};
use serde::Serialize;

/// Significant digits kept by every histogram.
const SIGFIGS: u8 = 3;

/// A histogram tag from free text: HdrHistogram logs end a tag at a comma, and people grep
/// them, so anything but letters, digits, `.`, `-` and `_` becomes `_`.
pub fn tag(prefix: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}.{clean}")
}

/// One closed interval of one tag, compressed.
#[derive(Clone, Debug)]
pub struct Interval {
    pub tag: String,
    /// From the start of the trace.
    pub start: Duration,
    pub end: Duration,
    compressed: Vec<u8>,
}

impl Interval {
    pub fn histogram(&self) -> Histogram<u64> {
        Deserializer::new()
            .deserialize(&mut self.compressed.as_slice())
            .expect("an interval histogram this module serialized")
    }
}

/// Percentiles of one histogram, for the JSON report and the text summary.
#[derive(Clone, Debug, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Histograms {
    interval_start: Duration,
    current: BTreeMap<String, Histogram<u64>>,
    total: BTreeMap<String, Histogram<u64>>,
    closed: Vec<Interval>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new(SIGFIGS).expect("3 significant digits is a valid precision")
}

impl Histograms {
    pub fn record(&mut self, tag: &str, value: u64) {
        self.record_n(tag, value, 1);
    }

    /// Records `value` `count` times (values are at least 1: HdrHistogram's lowest
    /// discernible value).
    pub fn record_n(&mut self, tag: &str, value: u64, count: u64) {
        if count == 0 {
            return;
        }
        let value = value.max(1);
        for map in [&mut self.current, &mut self.total] {
            let h = match map.get_mut(tag) {
                Some(h) => h,
                None => map.entry(tag.to_string()).or_insert_with(new_histogram),
            };
            // Auto-resizing histograms take any u64.
            let _ = h.record_n(value, count);
        }
    }

    /// Ends the current interval at `now` (trace time): what was recorded since the last
    /// call becomes one interval per tag.
    pub fn close_interval(&mut self, now: Duration) {
        let start = std::mem::replace(&mut self.interval_start, now);
        for (tag, h) in std::mem::take(&mut self.current) {
            let mut compressed = Vec::new();
            if V2DeflateSerializer::new()
                .serialize(&h, &mut compressed)
                .is_ok()
            {
                self.closed.push(Interval {
                    tag,
                    start,
                    end: now,
                    compressed,
                });
            }
        }
    }

    /// Closed intervals, in the order they closed.
    pub fn intervals(&self) -> &[Interval] {
        &self.closed
    }

    /// The whole-trace histogram of `tag`.
    pub fn total(&self, tag: &str) -> Option<&Histogram<u64>> {
        self.total.get(tag)
    }

    /// Percentiles of every whole-trace histogram, by tag.
    pub fn percentiles(&self) -> BTreeMap<String, Percentiles> {
        self.total
            .iter()
            .map(|(t, h)| (t.clone(), Percentiles::of(h)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_totals_agree() {
        let mut h = Histograms::default();
        for v in 1..=100 {
            h.record("lifetime_ns", v * 1000);
        }
        h.close_interval(Duration::from_secs(1));
        h.record_n("lifetime_ns", 5_000_000, 10);
        h.record("madvise_bytes", 0);
        h.close_interval(Duration::from_secs(2));
        let total = h.total("lifetime_ns").unwrap();
        assert_eq!(total.len(), 110);
        assert_eq!(total.max(), total.highest_equivalent(5_000_000));
        let iv = h.intervals();
        assert_eq!(iv.len(), 3);
        assert_eq!(
            (iv[0].start, iv[0].end),
            (Duration::ZERO, Duration::from_secs(1))
        );
        let first = iv[0].histogram();
        assert_eq!(first.len(), 100);
        assert!(first.equivalent(first.value_at_quantile(0.5), 50_000));
        // A zero is recorded as the lowest value, 1.
        assert_eq!(h.total("madvise_bytes").unwrap().min(), 1);
        let p = h.percentiles();
        assert_eq!(p["lifetime_ns"].count, 110);
        assert_eq!(
            tag("park_ns", "chan send (nil chan)"),
            "park_ns.chan_send__nil_chan_"
        );
    }
}
