//! The export formats read back by the tools people use them with, not by our own code:
//! pprof profiles by `go tool pprof`, HdrHistogram interval logs by HdrHistogram's Python
//! library, the Prometheus endpoint by curl and the Prometheus client's own parser.

mod support;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use hdrhistogram::Histogram;
use leaktrace::{
    report::{
        hlog::{HlogInterval, write_hlog},
        pprof::{self, Profile, Sample, ValueType},
        prometheus::{self, Metrics},
    },
    tracee::pclntab::Frame,
};
use serde_json::Value;
use support::*;

/// A fresh directory for a test's files, left behind only when the test fails (the test
/// removes it at its end).
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
    std::fs::remove_dir_all(&dir).unwrap();
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
    std::fs::remove_dir_all(&dir).unwrap();
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
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Figures as the collector would publish them, `parked` goroutines in `chan send`.
fn metrics(parked: u32) -> Metrics {
    let mut m = Metrics::new();
    m.gauge(
        "leaktrace_goroutines",
        "Goroutines of the target by state.",
        &[("state", "chan send")],
        f64::from(parked),
    );
    m.gauge(
        "leaktrace_goroutines",
        "Goroutines of the target by state.",
        &[("state", "select (no cases)")],
        2.0,
    );
    // A label value with every character the format escapes.
    m.gauge(
        "leaktrace_suspect_blocked_seconds",
        "How long the oldest goroutine of a suspected leak group has been blocked.\nOne \\ per group.",
        &[("site", "main.(*srv).get \"C:\\tmp\"\nline 2"), ("wait_reason", "chan send")],
        11.375,
    );
    m.counter(
        "leaktrace_probe_events_total",
        "Probe events handled since leaktrace attached.",
        &[("probe", "park")],
        3257.0,
    );
    m.histogram(
        "leaktrace_park_seconds",
        "How long goroutines stayed parked.",
        &[("wait_reason", "chan receive")],
        &[(0.001, 10), (0.01, 25), (1.0, 30)],
        4.5,
        31,
    );
    m
}

/// One HTTP/1.1 request on a new connection, read until the server closes it:
/// (status line, headers lowercased, body).
fn http(addr: SocketAddr, request: &[u8]) -> (String, BTreeMap<String, String>, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .expect("the server answers and closes the connection");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {response:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_ascii_lowercase(), v.to_string())
        })
        .collect();
    (status, headers, body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (String, BTreeMap<String, String>, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n");
    http(addr, request.as_bytes())
}

#[test]
fn prometheus_endpoint_serves_the_text_format() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (publish, latest) = tokio::sync::watch::channel(metrics(0).render());
    let listen = prometheus::parse_listen("127.0.0.1:0").unwrap();
    let (addr, server) = runtime.block_on(prometheus::serve(listen, latest)).unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    // A client that connects and says nothing holds one connection, not the server.
    let _silent = TcpStream::connect(addr).unwrap();

    // Many scrapes in a row, each seeing what was published just before it.
    for parked in 0..200 {
        publish.send_replace(metrics(parked).render());
        let (status, headers, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(
            headers["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(headers["content-length"], body.len().to_string());
        assert_eq!(headers["connection"], "close");
        assert_eq!(body, metrics(parked).render());
    }

    let (status, _, _) = get(addr, "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _, _) = get(addr, "/metrics/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _, body) = get(addr, "/metrics?name[]=x");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.starts_with("# HELP leaktrace_goroutines "), "{body}");
    let (status, headers, _) = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(headers["allow"], "GET, HEAD");
    let (status, headers, body) = http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        headers["content-length"],
        metrics(199).render().len().to_string()
    );
    assert_eq!(body, "");
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nCookie: {}\r\n\r\n",
        "x".repeat(16 * 1024)
    );
    let (status, _, _) = http(addr, huge.as_bytes());
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");

    // curl, as any scraper would.
    let url = format!("http://{addr}/metrics");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{content_type}",
            &url,
        ])
        .output()
        .expect("curl is installed by scripts/setup.sh");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, meta) = text.rsplit_once('\n').unwrap();
    assert_eq!(meta, "200 text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(body, metrics(199).render());

    // The Prometheus client's parser reads back every family, label and value.
    let dir = scratch_dir("prometheus");
    let file = dir.join("metrics.txt");
    std::fs::write(&file, body).unwrap();
    let families = python_reader("read_prometheus.py", &[file.to_str().unwrap()]);
    let want = serde_json::json!([
        {
            "name": "leaktrace_goroutines",
            "type": "gauge",
            "help": "Goroutines of the target by state.",
            "samples": [
                {"name": "leaktrace_goroutines", "labels": {"state": "chan send"}, "value": 199.0},
                {"name": "leaktrace_goroutines", "labels": {"state": "select (no cases)"}, "value": 2.0},
            ],
        },
        {
            "name": "leaktrace_suspect_blocked_seconds",
            "type": "gauge",
            "help": "How long the oldest goroutine of a suspected leak group has been blocked.\nOne \\ per group.",
            "samples": [{
                "name": "leaktrace_suspect_blocked_seconds",
                "labels": {"site": "main.(*srv).get \"C:\\tmp\"\nline 2", "wait_reason": "chan send"},
                "value": 11.375,
            }],
        },
        {
            "name": "leaktrace_probe_events",
            "type": "counter",
            "help": "Probe events handled since leaktrace attached.",
            "samples": [
                {"name": "leaktrace_probe_events_total", "labels": {"probe": "park"}, "value": 3257.0},
            ],
        },
        {
            "name": "leaktrace_park_seconds",
            "type": "histogram",
            "help": "How long goroutines stayed parked.",
            "samples": [
                {"name": "leaktrace_park_seconds_bucket", "labels": {"wait_reason": "chan receive", "le": "0.001"}, "value": 10.0},
                {"name": "leaktrace_park_seconds_bucket", "labels": {"wait_reason": "chan receive", "le": "0.01"}, "value": 25.0},
                {"name": "leaktrace_park_seconds_bucket", "labels": {"wait_reason": "chan receive", "le": "1"}, "value": 30.0},
                {"name": "leaktrace_park_seconds_bucket", "labels": {"wait_reason": "chan receive", "le": "+Inf"}, "value": 31.0},
                {"name": "leaktrace_park_seconds_sum", "labels": {"wait_reason": "chan receive"}, "value": 4.5},
                {"name": "leaktrace_park_seconds_count", "labels": {"wait_reason": "chan receive"}, "value": 31.0},
            ],
        },
    ]);
    assert_eq!(families, want);
    std::fs::remove_dir_all(&dir).unwrap();

    server.abort();
    runtime.block_on(async {
        assert!(server.await.unwrap_err().is_cancelled());
    });
    assert!(
        TcpStream::connect(addr).is_err(),
        "the port is closed once the server task is aborted"
    );
}

/// `leaktrace record -o DIR` on real programs writes every export, and other tools read
/// them: `go tool pprof` the goroutine and allocation profiles, HdrHistogram's Python
/// library the interval log (with the counts report.json gives), and a Prometheus scrape of
/// `--prometheus` while it runs.
#[test]
fn record_writes_exports_that_other_tools_read() {
    let version = go_versions().pop().unwrap();
    // The classic leak, with metrics served while it runs.
    let bin = build_fixture("classicleak", &version, &[]);
    let dir = scratch_dir("record-classic");
    let mut child = Command::new(leaktrace_bin())
        .args(["record", "-o"])
        .arg(&dir)
        .args([
            "--min-age",
            "1s",
            "--snapshot-interval",
            "300ms",
            "-d",
            "20s",
            // leaktrace_probe_hits_total is checked below.
            "--max-overhead",
            "off",
        ])
        .args(["--prometheus", "127.0.0.1:0", "--"])
        .arg(&bin)
        .args(["-linger", "3s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let addr: SocketAddr = loop {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "leaktrace ended without serving metrics"
        );
        if let Some(rest) = line
            .trim()
            .strip_prefix("leaktrace: serving metrics for Prometheus on http://")
        {
            break rest.trim_end_matches("/metrics").parse().unwrap();
        }
    };
    assert!(addr.ip().is_loopback());
    // Scrape until the leak shows (snapshots refresh the metrics).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let body = loop {
        let (status, _, body) = get(addr, "/metrics");
        assert!(status.contains("200"), "{status}");
        // The group first, then what it pins (estimated at the snapshot after).
        if body.contains("leaktrace_leaked_goroutines{")
            && body.contains("leaktrace_leak_pinned_bytes{")
        {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leak in the metrics:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let scrape = dir.join("scrape.txt");
    std::fs::write(&scrape, &body).unwrap();
    let families = python_reader("read_prometheus.py", &[scrape.to_str().unwrap()]);
    let text = families.to_string();
    for name in [
        "leaktrace_target_heap_inuse_bytes",
        "leaktrace_leak_groups",
        "leaktrace_leaked_goroutines",
        "leaktrace_leak_pinned_bytes",
    ] {
        assert!(text.contains(name), "{name} not parsed: {families:#}");
    }
    // Every counter's samples end in _total (the parser names the family without it).
    let counters: Vec<&Value> = families
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "counter")
        .collect();
    for name in [
        "leaktrace_target_madvise_bytes",
        "leaktrace_target_gc_cycles",
        "leaktrace_probe_hits",
        "leaktrace_lost_records",
    ] {
        let family = counters
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no counter {name}: {families:#}"));
        for sample in family["samples"].as_array().unwrap() {
            assert_eq!(sample["name"], format!("{name}_total"), "{family:#}");
        }
    }
    assert!(text.contains("main.produce"), "{families:#}");
    let rest: String = std::iter::from_fn(|| {
        let mut l = String::new();
        (std::io::BufRead::read_line(&mut stderr, &mut l).unwrap_or(0) > 0).then_some(l)
    })
    .collect();
    assert!(child.wait().unwrap().success(), "{rest}");
    for f in [
        "report.txt",
        "report.json",
        "report.html",
        "histograms.hlog",
        "goroutines.pb.gz",
        "goroutineleak.pb.gz",
        "allocations.pb.gz",
    ] {
        assert!(dir.join(f).exists(), "{f} not written: {rest}");
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let top = pprof_tool(&["-top"], &dir.join("goroutines.pb.gz"));
    let leaked = report["leaks"][0]["count"].as_u64().unwrap().to_string();
    assert_eq!(top_row(&top, "main.produce")[0], leaked, "{top}");
    let traced = pprof_tool(&["-traces"], &dir.join("goroutines.pb.gz"));
    assert!(traced.contains("chan send"), "{traced}");
    // The interval log holds what report.json summarizes.
    let log = python_reader(
        "read_hlog.py",
        &[dir.join("histograms.hlog").to_str().unwrap()],
    );
    let hists = report["histograms"].as_object().unwrap();
    assert!(hists.keys().any(|t| t.starts_with("park_ns.")), "{hists:?}");
    for (tag, p) in hists {
        assert_eq!(
            log["tags"][tag]["count"], p["count"],
            "{tag}: the log and report.json disagree: {log:#}"
        );
        assert_eq!(log["tags"][tag]["max"], p["max"], "{tag}: {log:#}");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    // The session map with runtime/pprof linked: the runtime's heap profile, with in-use.
    let bin = build_fixture("sessionmap", &version, &["-tags", "pprof"]);
    let dir = scratch_dir("record-sessionmap");
    let out = Command::new(leaktrace_bin())
        .args(["record", "-o"])
        .arg(&dir)
        .args(["--snapshot-interval", "500ms", "--"])
        .arg(&bin)
        .args(["-requests", "500", "-seconds", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inuse = pprof_tool(
        &["-top", "-sample_index=inuse_space"],
        &dir.join("allocations.pb.gz"),
    );
    // The sessions it keeps are the heap's largest in-use site.
    let first = inuse
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        first.trim_end().ends_with(" main.handle"),
        "main.handle holds the most: {inuse}"
    );
    let allocs = pprof_tool(
        &["-top", "-sample_index=alloc_space", "-unit=B"],
        &dir.join("allocations.pb.gz"),
    );
    // 500 requests/s for 3 s: about 1500 sessions of 8 KiB, 12.3 MB, estimated from about
    // 23 samples (one per 512 KiB). Bytes, not objects: one sample of the 48-byte session
    // struct beside each buffer stands for ~11,000 of them, and made this count 9445.
    let bytes: f64 = top_row(&allocs, "main.handle")[0]
        .trim_end_matches('B')
        .parse()
        .unwrap();
    assert!((4e6..=36e6).contains(&bytes), "{allocs}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `dump -o FILE.pb.gz` of a program holding the classic leak: `go tool pprof` reads every
/// goroutine by stack, the five blocked producers on their send with their wait reason, and
/// the total `dump --json` counts.
#[test]
fn dump_writes_a_goroutine_profile_that_go_tool_pprof_reads() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let mut fixture = Fixture::start(&bin, &["-hold"]);
    fixture
        .stderr
        .wait_for("holding", std::time::Duration::from_secs(90));
    let pid = fixture.pid().to_string();
    let dir = scratch_dir("dump-pprof");
    let file = dir.join("goroutines.pb.gz");
    let out = Command::new(leaktrace_bin())
        .args(["dump", "-p", &pid, "-o"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "dump -o printed the dump too");
    assert!(stderr.contains("go tool pprof"), "{stderr}");
    let json = Command::new(leaktrace_bin())
        .args(["dump", "--json", "-p", &pid])
        .output()
        .unwrap();
    fixture.finish();
    let dump: Value = serde_json::from_slice(&json.stdout).unwrap();

    let top = pprof_tool(&["-top"], &file);
    assert!(top.contains("Type: goroutine"), "{top}");
    let total = dump["goroutine_count"].as_u64().unwrap();
    assert!(top.contains(&format!("of {total} total")), "{top}");
    assert_eq!(top_row(&top, "main.produce")[0], "5", "{top}");
    let traces = traces(&pprof_tool(&["-traces"], &file));
    let line = line_of_in("classicleak", "ch <- make([]byte");
    assert!(
        traces.iter().any(
            |t| t.first().map(String::as_str) == Some("wait_reason: chan send")
                && t.iter().any(|l| l == "5 main.produce")
        ),
        "{traces:?} (main.go:{line})"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Probes in windows, as Prometheus sees them (testdata/go/parkrate's paced hand-offs, too
/// many for park/wake to stay on, and light enough to leave the other tests a CPU): their
/// hits are still published between windows, unscaled (what the target paid), with
/// `leaktrace_probe_duty_ratio` below 1 to scale by; a continuous probe's is 1.
#[test]
fn prometheus_publishes_windowed_probes_with_their_duty() {
    let bin = build_fixture("parkrate", &go_versions().pop().unwrap(), &[]);
    let mut fx = Fixture::start(&bin, &["-pairs", "4", "-rate", "3000"]);
    fx.stderr
        .wait_for("ready", std::time::Duration::from_secs(20));
    let mut t = Tracer::start(&[
        "-p",
        &fx.pid().to_string(),
        "-d",
        "3s",
        "--snapshot-interval",
        "500ms",
        "--prometheus",
        "127.0.0.1:0",
    ]);
    let line = t.stderr.wait_for(
        "serving metrics for Prometheus",
        std::time::Duration::from_secs(20),
    );
    let addr: SocketAddr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let duty = |body: &str, function: &str| -> Option<f64> {
        let key = format!("leaktrace_probe_duty_ratio{{function=\"{function}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .map(|v| v.parse().unwrap())
    };
    // Scrape until a window has closed (its duty is then above 0).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    let body = loop {
        let (_, _, body) = get(addr, "/metrics");
        if duty(&body, "runtime.gopark").is_some_and(|d| d > 0.0) {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let d = duty(&body, "runtime.gopark").unwrap();
    assert!(d < 0.5, "{body}");
    assert_eq!(duty(&body, "runtime.ready"), Some(d), "{body}");
    assert_eq!(duty(&body, "runtime.newproc1"), Some(1.0), "{body}");
    assert!(
        body.contains("leaktrace_probe_hits_total{function=\"runtime.gopark\"}"),
        "{body}"
    );
    let (_, _, code) = t.finish(std::time::Duration::from_secs(30));
    assert_eq!(code, Some(0));
}
