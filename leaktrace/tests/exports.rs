//! The export formats read back by the tools people use them with, not by our own code:
//! pprof profiles by `go tool pprof`, HdrHistogram interval logs by HdrHistogram's Python
//! library.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use hdrhistogram::Histogram;
use leaktrace::{
    report::{
        hlog::{HlogInterval, write_hlog},
        pprof::{self, Profile, Sample, ValueType},
    },
    target::pclntab::Frame,
};
use serde_json::Value;
use support::*;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leaktrace-exports-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `python leaktrace/tests/scripts/SCRIPT ARGS` in the venv of readers that
/// scripts/setup.sh installs; its stdout as JSON.
fn python_reader(script: &str, args: &[&str]) -> Value {
    let python = cache_dir().join("venv-readers/bin/python");
    assert!(
        python.exists(),
        "the Python readers are not installed at {}: run scripts/setup.sh",
        python.display()
    );
    let script = repo_root().join("leaktrace/tests/scripts").join(script);
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}{stdout}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("$ {} {args:?}\n{stdout}", script.display());
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn frame(function: &str, line: u32) -> Frame {
    Frame {
        function: function.to_string(),
        file: "/src/leakyservice/main.go".to_string(),
        line,
    }
}

/// `go tool pprof ARGS FILE` with the newest Go under test; its stdout.
fn pprof_tool(args: &[&str], file: &Path) -> String {
    let version = go_versions().pop().expect("a Go version under test");
    let cache = cache_dir();
    let out = Command::new(go_binary(&version))
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .env("GOTOOLCHAIN", "local")
        .env("GOTELEMETRY", "off")
        .env("GOCACHE", cache.join("gocache"))
        .env("GOPATH", cache.join("gopath"))
        // pprof would otherwise look for the binary to symbolize with; the frames are there.
        .env("PPROF_BINARY_PATH", "/nonexistent")
        .output()
        .expect("running go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed:\n{stderr}\n{stdout}"
    );
    println!("$ go tool pprof {} FILE\n{stdout}{stderr}", args.join(" "));
    stdout
}

/// The `-top` row of `function`: its columns before the name.
fn top_row<'a>(top: &'a str, function: &str) -> Vec<&'a str> {
    let row = top
        .lines()
        .find(|l| l.split_whitespace().last() == Some(function))
        .unwrap_or_else(|| panic!("{function} not in pprof -top:\n{top}"));
    let mut cols: Vec<&str> = row.split_whitespace().collect();
    cols.pop();
    cols
}

/// The blocks of `pprof -traces`, one per sample, each with its lines' words joined by one
/// space (`"wait_reason: chan send"`, `"718 main.search.func1"`).
fn traces(text: &str) -> Vec<Vec<String>> {
    text.split("-----------+")
        .skip(1)
        .map(|block| {
            block
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|b| !b.is_empty())
        .collect()
}

#[test]
fn goroutine_profile_reads_in_go_tool_pprof() {
    let leak = vec![
        frame("main.search.func1", 48),
        frame("main.search", 47),
        frame("main.handler", 30),
    ];
    let idle = vec![frame("main.worker", 60), frame("main.main", 12)];
    let profile = Profile {
        sample_types: vec![ValueType::new("goroutine", "count")],
        period_type: Some(ValueType::new("goroutine", "count")),
        period: 1,
        time_nanos: 1_790_000_000_000_000_000,
        samples: vec![
            Sample {
                stack: leak,
                values: vec![718],
                labels: vec![("wait_reason".into(), "chan send".into())],
                ..Default::default()
            },
            Sample {
                stack: idle,
                values: vec![4],
                labels: vec![("wait_reason".into(), "chan receive".into())],
                ..Default::default()
            },
        ],
        comments: vec!["leaktrace goroutine profile".into()],
        ..Default::default()
    };
    let dir = scratch_dir("goroutine");
    let file = dir.join("goroutine.pb.gz");
    std::fs::write(&file, pprof::encode(&profile)).unwrap();

    let top = pprof_tool(&["-top"], &file);
    assert!(top.contains("Type: goroutine"), "{top}");
    assert!(top.contains("of 722 total"), "{top}");
    assert_eq!(top_row(&top, "main.search.func1")[0], "718");
    assert_eq!(top_row(&top, "main.worker")[0], "4");
    // Callers have no flat count, only cumulative.
    let handler = top_row(&top, "main.handler");
    assert_eq!((handler[0], handler[3]), ("0", "718"));

    let traces = traces(&pprof_tool(&["-traces"], &file));
    assert_eq!(
        traces,
        [
            vec![
                "wait_reason: chan send",
                "718 main.search.func1",
                "main.search",
                "main.handler",
            ],
            vec!["wait_reason: chan receive", "4 main.worker", "main.main"],
        ],
        "one trace per sample, innermost frame first, with its label"
    );

    let comments = pprof_tool(&["-comments"], &file);
    assert!(
        comments.contains("leaktrace goroutine profile"),
        "{comments}"
    );
}

#[test]
fn heap_profile_reads_in_go_tool_pprof() {
    // (stack, [alloc_objects, alloc_space, inuse_objects, inuse_space], size)
    let samples = [
        (
            vec![
                frame("main.newBuffer", 20),
                frame("main.handler", 40),
                frame("main.main", 60),
            ],
            [10, 40960, 8, 32768],
            4096,
        ),
        (
            vec![
                frame("main.cacheEntry", 30),
                frame("main.handler", 41),
                frame("main.main", 60),
            ],
            [100, 102400, 50, 51200],
            1024,
        ),
        (
            vec![
                frame("main.cacheEntry", 30),
                frame("main.refresh", 80),
                frame("main.main", 61),
            ],
            [20, 20480, 20, 20480],
            1024,
        ),
    ];
    let profile = Profile {
        sample_types: vec![
            ValueType::new("alloc_objects", "count"),
            ValueType::new("alloc_space", "bytes"),
            ValueType::new("inuse_objects", "count"),
            ValueType::new("inuse_space", "bytes"),
        ],
        period_type: Some(ValueType::new("space", "bytes")),
        // runtime.MemProfileRate's default (runtime/mprof.go, Go 1.21-1.27).
        period: 512 * 1024,
        samples: samples
            .iter()
            .map(|(stack, values, size)| Sample {
                stack: stack.clone(),
                values: values.to_vec(),
                num_labels: vec![("bytes".into(), *size, "bytes".into())],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let dir = scratch_dir("heap");
    let file = dir.join("heap.pb.gz");
    std::fs::write(&file, pprof::encode(&profile)).unwrap();

    let top = pprof_tool(&["-top", "-sample_index=inuse_space", "-unit=B"], &file);
    assert!(top.contains("Type: inuse_space"), "{top}");
    assert!(top.contains("of 104448B total"), "{top}");
    assert_eq!(top_row(&top, "main.cacheEntry")[0], "71680B");
    assert_eq!(top_row(&top, "main.newBuffer")[0], "32768B");
    assert_eq!(top_row(&top, "main.handler")[3], "83968B");
    // The sample with the most in use comes first.
    let first = top.lines().find(|l| l.contains("main.")).unwrap();
    assert!(first.ends_with("main.cacheEntry"), "{top}");

    let top = pprof_tool(&["-top", "-sample_index=alloc_objects"], &file);
    assert!(top.contains("Type: alloc_objects"), "{top}");
    assert_eq!(top_row(&top, "main.cacheEntry")[0], "120");
    assert_eq!(top_row(&top, "main.newBuffer")[0], "10");

    let traces = traces(&pprof_tool(
        &["-traces", "-sample_index=inuse_space"],
        &file,
    ));
    assert_eq!(
        traces,
        [
            vec![
                "bytes: 4kB",
                "32kB main.newBuffer",
                "main.handler",
                "main.main"
            ],
            vec![
                "bytes: 1kB",
                "50kB main.cacheEntry",
                "main.handler",
                "main.main"
            ],
            vec![
                "bytes: 1kB",
                "20kB main.cacheEntry",
                "main.refresh",
                "main.main"
            ],
        ],
        "one trace per sample, with its numeric label in its unit"
    );
}

/// What read_hlog.py reports of a histogram, computed here from the Rust histogram.
/// The counts are multiples of 100 so that p50/p90/p99 fall on whole counts, where the
/// Python library's rounding (to nearest) and the Rust crate's (up) agree.
fn hdr_summary(h: &Histogram<u64>) -> Value {
    serde_json::json!({
        "count": h.len(),
        "min": h.min(),
        "max": h.max(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
    })
}

#[test]
fn interval_log_reads_in_hdrhistogram_python() {
    // Park times in nanoseconds, from microseconds to seconds; allocation sizes in bytes.
    // One interval per second; the park histogram is bounded like a long-running tracer's,
    // the size one grows as it needs.
    let park = |seed: u64, n: u64| {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for i in 1..=n {
            h.record(1_000 + (i * i * 7919 + seed * 104_729) % 2_000_000_000)
                .unwrap();
        }
        h
    };
    let sizes = |seed: u64, n: u64| {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for i in 1..=n {
            h.record(8 << ((i + seed) % 13)).unwrap();
        }
        h
    };
    let second = Duration::from_secs(1);
    let tagged = [
        ("park_ns.chan_send", park(1, 300)),
        ("alloc_size_bytes", sizes(0, 1000)),
        ("park_ns.chan_send", park(2, 100)),
        ("alloc_size_bytes", sizes(5, 200)),
        ("park_ns.chan_send", park(3, 1200)),
        ("alloc_size_bytes", sizes(9, 100)),
    ];
    let intervals: Vec<HlogInterval> = tagged
        .iter()
        .enumerate()
        .map(|(i, (tag, histogram))| HlogInterval {
            tag,
            start: second * (i as u32 / 2),
            duration: second,
            histogram,
        })
        .collect();
    let start_time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_790_000_000_500);
    let dir = scratch_dir("hlog");
    let file = dir.join("histograms.hlog");
    write_hlog(
        std::fs::File::create(&file).unwrap(),
        start_time,
        &intervals,
    )
    .unwrap();

    let read = python_reader("read_hlog.py", &[file.to_str().unwrap()]);
    assert_eq!(read["start_time_sec"], 1_790_000_000.5);
    let read_intervals = read["intervals"].as_array().unwrap();
    assert_eq!(read_intervals.len(), intervals.len());
    for (i, (want, got)) in intervals.iter().zip(read_intervals).enumerate() {
        assert_eq!(got["tag"], want.tag, "interval {i}");
        let start_ms = 1_790_000_000_500.0 + want.start.as_millis() as f64;
        assert_eq!(got["start_ms"].as_f64(), Some(start_ms), "interval {i}");
        assert_eq!(
            got["end_ms"].as_f64(),
            Some(start_ms + 1000.0),
            "interval {i}"
        );
        let mut summary = got.clone();
        for key in ["tag", "start_ms", "end_ms"] {
            summary.as_object_mut().unwrap().remove(key);
        }
        assert_eq!(summary, hdr_summary(want.histogram), "interval {i}");
    }

    let mut totals: BTreeMap<&str, Histogram<u64>> = BTreeMap::new();
    for i in &intervals {
        totals
            .entry(i.tag)
            .or_insert_with(|| Histogram::new(3).unwrap())
            .add(i.histogram)
            .unwrap();
    }
    let read_tags = read["tags"].as_object().unwrap();
    assert_eq!(read_tags.len(), 2);
    for (tag, total) in &totals {
        assert_eq!(read_tags[*tag], hdr_summary(total), "tag {tag}");
    }
    assert_eq!(read_tags["park_ns.chan_send"]["count"], 1600);
    assert_eq!(read_tags["alloc_size_bytes"]["count"], 1300);
}
