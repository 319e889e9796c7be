//! Histograms over time as an HdrHistogram interval log (`.hlog`), the format that
//! HdrHistogram's Java, Python, Go and Rust libraries, HistogramLogAnalyzer and
//! wrk2/jHiccup-style tooling read: one line per interval and tag (`park_ns.chan_send`,
//! `alloc_size_bytes`), each a compressed histogram.
//!
//! The log's header, as the Java `HistogramLogWriter` writes it:
//! ```text
//! #[Histogram log format version 1.3]
//! #leaktrace: ... (what the columns and tags mean)
//! #[StartTime: 1790000000.000 (seconds since epoch)]
//! #[BaseTime: 1790000000.000 (seconds since epoch)]
//! "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
//! Tag=park_ns.chan_send,0.000,1.000,52428.000,HISTFAAAA...
//! ```
//! Interval timestamps are seconds since BaseTime, which is the start time. Interval_Max
//! is in the histogram's own unit (a max value divisor of 1): the tags of one log mix
//! nanoseconds and bytes, so no single divisor would make it readable, and each tag names
//! its unit instead. The histograms themselves always hold the exact recorded values.

use std::{
    io::{self, Write},
    time::{Duration, SystemTime},
};

use hdrhistogram::{
    Histogram,
    serialization::{
        V2DeflateSerializer,
        interval_log::{IntervalLogWriterBuilder, Tag},
    },
};

/// One histogram of one measurement over one interval.
#[derive(Clone, Copy, Debug)]
pub struct HlogInterval<'a> {
    /// What was measured and in which unit, e.g. `park_ns.chan_send`; no comma, space or
    /// line break (the format cannot carry them).
    pub tag: &'a str,
    /// When the interval began, since the log's start time.
    pub start: Duration,
    pub duration: Duration,
    pub histogram: &'a Histogram<u64>,
}

/// Writes a complete interval log: the header with `start_time`, then `intervals` ordered
/// by their start (a stable sort, so intervals that start together keep their order).
pub fn write_hlog<W: Write>(
    mut out: W,
    start_time: SystemTime,
    intervals: &[HlogInterval],
) -> io::Result<()> {
    if let Some(bad) = intervals.iter().find(|i| Tag::new(i.tag).is_none()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "histogram tag {:?} cannot be written to an interval log: it contains a comma, space or line break",
                bad.tag
            ),
        ));
    }
    let mut serializer = V2DeflateSerializer::new();
    IntervalLogWriterBuilder::new()
        .add_comment("[Histogram log format version 1.3]")
        .add_comment(LEGEND)
        .with_start_time(start_time)
        .with_base_time(start_time)
        .begin_log_with(&mut out, &mut serializer)?;
    // The column names, which the Java writer puts after the header and readers skip. The
    // Rust builder has no call for it, so the intervals go through a second writer that
    // writes no header of its own.
    out.write_all(
        b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    )?;
    let mut log = IntervalLogWriterBuilder::new().begin_log_with(&mut out, &mut serializer)?;
    let mut ordered: Vec<&HlogInterval> = intervals.iter().collect();
    ordered.sort_by_key(|i| i.start);
    for i in ordered {
        log.write_histogram(i.histogram, i.start, i.duration, Tag::new(i.tag))
            .map_err(|e| io::Error::other(format!("writing histogram {}: {e}", i.tag)))?;
    }
    drop(log);
    out.flush()
}

const LEGEND: &str = "leaktrace: one histogram per interval and tag; the tag names the \
measurement and its unit (park_ns.<wait reason>: how long goroutines stayed parked, in \
nanoseconds; alloc_size_bytes: allocation sizes). Timestamps are seconds since BaseTime. \
Interval_Max is in the tag's unit (max value divisor 1).";

#[cfg(test)]
mod tests {
    use hdrhistogram::serialization::{
        Deserializer,
        interval_log::{IntervalLogIterator, LogEntry},
    };

    use super::*;

    #[test]
    fn header_then_intervals_in_start_order() {
        let mut a = Histogram::<u64>::new(3).unwrap();
        a.record_n(1000, 3).unwrap();
        let mut b = Histogram::<u64>::new(3).unwrap();
        b.record(7).unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_250);
        let second = Duration::from_secs(1);
        let mut out = Vec::new();
        write_hlog(
            &mut out,
            start,
            &[
                HlogInterval {
                    tag: "b",
                    start: second,
                    duration: second,
                    histogram: &b,
                },
                HlogInterval {
                    tag: "a",
                    start: Duration::ZERO,
                    duration: second,
                    histogram: &a,
                },
            ],
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#[Histogram log format version 1.3]");
        assert!(lines[1].starts_with("#leaktrace: "), "{text}");
        assert_eq!(
            lines[2],
            "#[StartTime: 1790000000.250 (seconds since epoch)]"
        );
        assert_eq!(
            lines[3],
            "#[BaseTime: 1790000000.250 (seconds since epoch)]"
        );
        assert!(lines[4].starts_with("\"StartTimestamp\""));
        assert!(
            lines[5].starts_with("Tag=a,0.000,1.000,1000.000,HISTF"),
            "{text}"
        );
        assert!(
            lines[6].starts_with("Tag=b,1.000,1.000,7.000,HISTF"),
            "{text}"
        );

        let entries: Vec<LogEntry> = IntervalLogIterator::new(text.as_bytes())
            .map(Result::unwrap)
            .collect();
        assert_eq!(entries.len(), 4, "StartTime, BaseTime and two intervals");
        let LogEntry::Interval(first) = &entries[2] else {
            panic!("{entries:?}");
        };
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut base64_decode(first.encoded_histogram()).as_slice())
            .unwrap();
        assert_eq!(decoded, a);
    }

    #[test]
    fn a_tag_with_a_comma_is_refused() {
        let h = Histogram::<u64>::new(3).unwrap();
        let err = write_hlog(
            io::sink(),
            SystemTime::UNIX_EPOCH,
            &[HlogInterval {
                tag: "park_ns.select,no cases",
                start: Duration::ZERO,
                duration: Duration::from_secs(1),
                histogram: &h,
            }],
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("select,no cases"), "{err}");
    }

    /// Standard base64 (the interval log's encoding), decoded here so that the test does
    /// not add a dependency.
    fn base64_decode(s: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        };
        let mut out = Vec::new();
        for chunk in s.trim_end_matches('=').as_bytes().chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= u32::from(value(c)) << (18 - 6 * i);
            }
            out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
        }
        out
    }
}
