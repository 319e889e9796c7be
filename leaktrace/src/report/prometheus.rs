//! Metrics for Prometheus: the text exposition format (version 0.0.4) that every scraper
//! reads, and a small HTTP server that answers `GET /metrics` with the latest rendering.
//!
//! The collector renders a [`Metrics`] whenever it has new figures and hands the text to
//! the server through a `tokio::sync::watch` channel; a scrape only copies the latest text,
//! so it never waits for the collector and the collector never waits for a scraper.

use std::{
    fmt::Write as _,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinHandle,
};

/// The metric types leaktrace writes (the format also has `summary` and `untyped`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

struct Family {
    name: String,
    help: String,
    kind: Kind,
    /// The family's sample lines, rendered.
    lines: String,
}

/// A set of metric families being built, rendered with [`Metrics::render`]. Samples of
/// the same name are grouped under one `# HELP` and `# TYPE`, in the order the names were
/// first used.
///
/// Names must match Prometheus' rules (`[a-zA-Z_:][a-zA-Z0-9_:]*` for metrics,
/// `[a-zA-Z_][a-zA-Z0-9_]*` for labels, not starting with `__`), and a name keeps one
/// type: they come from leaktrace's code, not from the target, so a bad one is a bug and
/// panics. Label values can be anything (a wait reason, a function name) and are escaped.
#[derive(Default)]
pub struct Metrics {
    families: Vec<Family>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// A value that goes up and down (goroutines parked now, bytes in use).
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let family = self.family(name, help, Kind::Gauge);
        sample(&mut family.lines, name, labels, None, value);
    }

    /// A value that only goes up, such as a number of events since leaktrace started; its
    /// name ends in `_total`, as Prometheus' conventions and OpenMetrics require.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        assert!(
            name.ends_with("_total"),
            "counter {name}: a counter's name ends in _total"
        );
        let family = self.family(name, help, Kind::Counter);
        sample(&mut family.lines, name, labels, None, value);
    }

    /// A histogram: `buckets` are `(upper bound, cumulative count)` in increasing order of
    /// bound; the `+Inf` bucket is added with `count` unless the last bucket is already
    /// `+Inf`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        assert!(
            labels.iter().all(|(k, _)| *k != "le"),
            "metric {name}: `le` is the bucket label of a histogram"
        );
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "metric {name}: buckets must have increasing bounds and cumulative counts: {buckets:?}"
        );
        let family = self.family(name, help, Kind::Histogram);
        let bucket = format!("{name}_bucket");
        for &(le, cumulative) in buckets {
            sample(
                &mut family.lines,
                &bucket,
                labels,
                Some(le),
                cumulative as f64,
            );
        }
        if buckets.last().is_none_or(|&(le, _)| le != f64::INFINITY) {
            let inf = Some(f64::INFINITY);
            sample(&mut family.lines, &bucket, labels, inf, count as f64);
        }
        sample(&mut family.lines, &format!("{name}_sum"), labels, None, sum);
        let count = count as f64;
        sample(
            &mut family.lines,
            &format!("{name}_count"),
            labels,
            None,
            count,
        );
    }

    /// The text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let help = f.help.replace('\\', r"\\").replace('\n', r"\n");
            let _ = writeln!(out, "# HELP {} {help}", f.name);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.name());
            out.push_str(&f.lines);
        }
        out
    }

    fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Family {
        assert!(
            valid_name(name, true),
            "{name:?} is not a valid metric name"
        );
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => {
                let was = self.families[i].kind;
                assert!(
                    was == kind,
                    "metric {name} is already a {}, not a {}",
                    was.name(),
                    kind.name()
                );
                i
            }
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    lines: String::new(),
                });
                self.families.len() - 1
            }
        };
        &mut self.families[i]
    }
}

/// One sample line: `name{label="value",le="0.5"} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], le: Option<f64>, value: f64) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let le = le.map(number);
        let all = labels
            .iter()
            .copied()
            .chain(le.as_deref().map(|le| ("le", le)));
        for (i, (key, value)) in all.enumerate() {
            assert!(
                valid_name(key, false) && !key.starts_with("__"),
                "{key:?} is not a valid label name (metric {name})"
            );
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            for c in value.chars() {
                match c {
                    '\\' => out.push_str(r"\\"),
                    '"' => out.push_str("\\\""),
                    '\n' => out.push_str(r"\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&number(value));
    out.push('\n');
}

/// A float as the format spells it: Go's ParseFloat syntax, with `+Inf`, `-Inf`, `NaN`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        // Rust's shortest representation that reads back as the same f64.
        v.to_string()
    }
}

fn valid_name(name: &str, colon: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
    };
    let mut chars = name.chars();
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

/// Where to listen, from what a user typed: `9464` and `:9464` mean 127.0.0.1:9464 (the
/// metrics name the target's functions and goroutines, so they stay on this machine unless
/// asked), `localhost:9464` too, and `0.0.0.0:9464` or `[::]:9464` every interface.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let loopback = |port: &str| {
        port.parse::<u16>()
            .ok()
            .map(|p| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)))
    };
    let s = s.trim();
    let addr = match s.strip_prefix(':').or_else(|| s.strip_prefix("localhost:")) {
        Some(port) => loopback(port),
        None => loopback(s).or_else(|| s.parse().ok()),
    };
    addr.ok_or_else(|| {
        format!(
            "cannot listen on {s:?}: expected PORT, :PORT or IP:PORT (9464 and :9464 mean \
             127.0.0.1:9464; 0.0.0.0:9464 listens on every interface)"
        )
    })
}

/// The most of a request that is read: the request line and headers of a scrape are a
/// few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A client that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Listens on `addr` and answers `GET /metrics` with the latest text in `metrics`, one
/// request per connection; returns the address bound (port 0 picks one) and the server's
/// task, which runs until aborted. Other paths get 404, other methods 405, a request head
/// over 8 KiB 431.
pub async fn serve(
    addr: SocketAddr,
    metrics: watch::Receiver<String>,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: wait a little rather than spin.
                    log::debug!("metrics server on {bound}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &metrics).await {
                    log::debug!("metrics server on {bound}: {e}");
                }
                drop(slot);
            });
        }
    });
    Ok((bound, task))
}

/// Reads one request and answers it, then closes the connection.
async fn answer(mut stream: TcpStream, metrics: &watch::Receiver<String>) -> io::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request in time",
            ));
        }
    };
    let (status, body) = match head {
        None => ("431 Request Header Fields Too Large", None),
        Some(head) => {
            let mut words = head.split(' ');
            let method = words.next().unwrap_or("");
            let path = words.next().unwrap_or("").split('?').next().unwrap_or("");
            match (method, path) {
                ("GET" | "HEAD", "/metrics") => {
                    let text = metrics.borrow().clone();
                    ("200 OK", Some((text, method == "HEAD")))
                }
                ("GET" | "HEAD", _) => ("404 Not Found", None),
                _ => ("405 Method Not Allowed", None),
            }
        }
    };
    let response = match body {
        Some((text, head_only)) => {
            let mut r = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                text.len()
            );
            if !head_only {
                r.push_str(&text);
            }
            r
        }
        None => {
            let text = format!("{status}: leaktrace serves its metrics at GET /metrics\n");
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )
        }
    };
    stream.write_all(response.as_bytes()).await?;
    // Send FIN and let the client close first, so that its unread request bytes (if any)
    // do not turn our close into a reset that could cut the response short.
    stream.shutdown().await?;
    let mut rest = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

/// The request line of a request whose head (line and headers) fits in
/// `MAX_REQUEST_HEAD`; `None` if it does not.
pub(crate) async fn read_head(stream: &mut TcpStream) -> io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            return Ok(Some(head.lines().next().unwrap_or("").to_string()));
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a whole request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_once_with_escaped_labels() {
        let mut m = Metrics::new();
        m.gauge(
            "leaktrace_goroutines",
            "Goroutines by state.",
            &[("state", "chan send")],
            718.0,
        );
        m.counter(
            "leaktrace_probe_events_total",
            "Probe events.\nPer probe.",
            &[],
            3257.0,
        );
        m.gauge(
            "leaktrace_goroutines",
            "ignored: the first help stays",
            &[("state", "say \"hi\"\\\n")],
            0.5,
        );
        m.histogram(
            "leaktrace_park_seconds",
            "How long goroutines stayed parked.",
            &[("reason", "select")],
            &[(0.001, 2), (0.1, 5)],
            1.25,
            7,
        );
        assert_eq!(
            m.render(),
            r#"# HELP leaktrace_goroutines Goroutines by state.
# TYPE leaktrace_goroutines gauge
leaktrace_goroutines{state="chan send"} 718
leaktrace_goroutines{state="say \"hi\"\\\n"} 0.5
# HELP leaktrace_probe_events_total Probe events.\nPer probe.
# TYPE leaktrace_probe_events_total counter
leaktrace_probe_events_total 3257
# HELP leaktrace_park_seconds How long goroutines stayed parked.
# TYPE leaktrace_park_seconds histogram
leaktrace_park_seconds_bucket{reason="select",le="0.001"} 2
leaktrace_park_seconds_bucket{reason="select",le="0.1"} 5
leaktrace_park_seconds_bucket{reason="select",le="+Inf"} 7
leaktrace_park_seconds_sum{reason="select"} 1.25
leaktrace_park_seconds_count{reason="select"} 7
"#
        );
    }

    #[test]
    fn numbers_read_back_as_the_same_float() {
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(1e-7), "0.0000001");
        assert_eq!(number(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(number(2f64.powi(53)), "9007199254740992");
    }

    #[test]
    #[should_panic(expected = "already a gauge, not a counter")]
    fn a_name_keeps_its_type() {
        let mut m = Metrics::new();
        m.gauge("x_total", "", &[], 1.0);
        m.counter("x_total", "", &[], 1.0);
    }

    #[test]
    #[should_panic(expected = "a counter's name ends in _total")]
    fn counters_end_in_total() {
        Metrics::new().counter("leaktrace_probe_hits", "", &[], 1.0);
    }

    #[test]
    #[should_panic(expected = "not a valid label name")]
    fn label_names_are_checked() {
        Metrics::new().gauge("x", "", &[("wait-reason", "a")], 1.0);
    }

    #[test]
    fn listen_addresses_default_to_loopback() {
        let ok = |s: &str| parse_listen(s).unwrap().to_string();
        assert_eq!(ok("9464"), "127.0.0.1:9464");
        assert_eq!(ok(":9464"), "127.0.0.1:9464");
        assert_eq!(ok("localhost:9464"), "127.0.0.1:9464");
        assert_eq!(ok("0.0.0.0:9464"), "0.0.0.0:9464");
        assert_eq!(ok("[::1]:9464"), "[::1]:9464");
        for bad in ["", "metrics", "70000", ":", "0.0.0.0", "example.com:9464"] {
            let err = parse_listen(bad).unwrap_err();
            assert!(
                err.contains("expected PORT, :PORT or IP:PORT"),
                "{bad}: {err}"
            );
        }
    }
}
