//! The agent's HTTP endpoints: `/metrics`, `/debug/pprof/goroutineleak?pid=N`,
//! `/debug/pprof/allocs?pid=N`, `/targets`, `/healthz`. Every answer is built from what the
//! watching last published (a lock held for a few pointer copies), so a scrape never waits
//! for a snapshot and a snapshot never waits for a scraper; nothing here reads a target.
//!
//! Hardened for a port anyone on the network may reach: GET and HEAD only, one request per
//! connection, a request head of at most 8 KiB, [`HEAD_TIMEOUT`] to send it and as long to
//! take the answer. Connections still sending their request are capped at
//! [`MAX_WAITING`]; past that the oldest is dropped, so a flood of slow clients (slowloris)
//! cannot keep out a scraper, whose request arrives at once.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::AbortHandle,
};

use super::schedule;
use crate::report::prometheus::{Metrics, read_head};

/// How long a client has to send its request head, and then to take the answer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections still sending their request head; a new one past this drops the oldest.
pub const MAX_WAITING: usize = 64;
/// Connections open at once, answers being written included; past this, new ones are
/// closed at once.
pub const MAX_CONNECTIONS: usize = 512;

const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const PPROF_TYPE: &str = "application/octet-stream";

/// The latest profiles of one target, gzipped protobuf.
#[derive(Clone, Default)]
pub struct Profiles {
    pub goroutineleak: Option<Arc<[u8]>>,
    pub allocs: Option<Arc<[u8]>>,
}

/// What the watching last published.
#[derive(Clone, Default)]
pub struct Published {
    /// The targets' metrics; the agent's own are added at each scrape.
    pub metrics: Arc<str>,
    /// `/targets`, JSON.
    pub targets: Arc<str>,
    pub profiles: HashMap<u32, Profiles>,
    /// The watching's CPU so far, and its share of one CPU.
    pub watch_cpu: Duration,
    pub budget_share: f64,
}

pub type Shared = Arc<Mutex<Published>>;

/// Connections still sending their request, oldest first: an id and what stops it.
#[derive(Default)]
struct Waiting {
    next: u64,
    open: VecDeque<(u64, AbortHandle)>,
}

/// Binds `addr`; the server runs on the returned future (drive it on a runtime).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e} (choose another with --listen ADDR)"),
        )
    })
}

/// Answers connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Shared) {
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted.
                log::debug!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let mut w = waiting.lock().unwrap_or_else(|e| e.into_inner());
        while w.open.len() >= MAX_WAITING {
            if let Some((_, oldest)) = w.open.pop_front() {
                oldest.abort();
            }
        }
        let id = w.next;
        w.next += 1;
        let (shared, waiting2) = (shared.clone(), waiting.clone());
        let task = tokio::spawn(async move {
            let head = tokio::time::timeout(HEAD_TIMEOUT, read_head_of(stream)).await;
            // From here on the connection is answered, not dropped for a newer one.
            waiting2
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .open
                .retain(|(i, _)| *i != id);
            if let Ok(Ok((mut stream, head))) = head {
                let response = answer(head.as_deref(), &shared);
                let _ = tokio::time::timeout(HEAD_TIMEOUT, async {
                    stream.write_all(&response).await?;
                    stream.shutdown().await
                })
                .await;
            }
            drop(slot);
        });
        w.open.push_back((id, task.abort_handle()));
    }
}

async fn read_head_of(mut stream: TcpStream) -> io::Result<(TcpStream, Option<String>)> {
    let head = read_head(&mut stream).await?;
    Ok((stream, head))
}

/// The response to a request line (`None`: its head was over the limit).
fn answer(head: Option<&str>, shared: &Shared) -> Vec<u8> {
    let Some(head) = head else {
        return response(
            "431 Request Header Fields Too Large",
            "text/plain",
            b"request head over 8 KiB\n",
            false,
        );
    };
    let mut words = head.split(' ');
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !matches!(method, "GET" | "HEAD") {
        return response(
            "405 Method Not Allowed",
            "text/plain",
            b"only GET and HEAD\n",
            false,
        );
    }
    let head_only = method == "HEAD";
    let published = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match path {
        "/metrics" => {
            let mut text = published.metrics.to_string();
            text.push_str(&agent_metrics(&published));
            response("200 OK", METRICS_TYPE, text.as_bytes(), head_only)
        }
        "/targets" => response(
            "200 OK",
            "application/json",
            published.targets.as_bytes(),
            head_only,
        ),
        "/healthz" => response("200 OK", "text/plain", b"ok\n", head_only),
        "/debug/pprof/goroutineleak" | "/debug/pprof/allocs" => {
            let pid = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("pid="))
                .and_then(|p| p.parse::<u32>().ok());
            let Some(pid) = pid else {
                return response(
                    "400 Bad Request",
                    "text/plain",
                    b"give the process: ?pid=N (see /targets)\n",
                    head_only,
                );
            };
            let profiles = published.profiles.get(&pid);
            let profile = match path {
                "/debug/pprof/goroutineleak" => profiles.and_then(|p| p.goroutineleak.clone()),
                _ => profiles.and_then(|p| p.allocs.clone()),
            };
            match (profiles, profile) {
                (Some(_), Some(bytes)) => response("200 OK", PPROF_TYPE, &bytes, head_only),
                (Some(_), None) => response(
                    "503 Service Unavailable",
                    "text/plain",
                    format!("no profile of PID {pid} yet (or its heap profile is unreadable)\n")
                        .as_bytes(),
                    head_only,
                ),
                (None, _) => response(
                    "404 Not Found",
                    "text/plain",
                    format!("PID {pid} is not watched (see /targets)\n").as_bytes(),
                    head_only,
                ),
            }
        }
        _ => response(
            "404 Not Found",
            "text/plain",
            b"endpoints: /metrics /targets /healthz /debug/pprof/goroutineleak?pid=N /debug/pprof/allocs?pid=N\n",
            head_only,
        ),
    }
}

/// The agent's own footprint, fresh at each scrape.
fn agent_metrics(p: &Published) -> String {
    let mut m = Metrics::new();
    m.counter(
        "leaktrace_agent_cpu_seconds_total",
        "CPU time used by the agent (all its threads), user and system.",
        &[],
        schedule::process_cpu().as_secs_f64(),
    );
    m.counter(
        "leaktrace_agent_watch_cpu_seconds_total",
        "CPU time used by the agent's watching (what --max-overhead paces).",
        &[],
        p.watch_cpu.as_secs_f64(),
    );
    if p.budget_share.is_finite() {
        m.gauge(
            "leaktrace_agent_budget_ratio",
            "The watching's budget, a share of one CPU (--max-overhead).",
            &[],
            p.budget_share,
        );
    }
    if let Some(rss) = procfs::process::Process::myself()
        .and_then(|me| me.status())
        .ok()
        .and_then(|s| s.vmrss)
    {
        m.gauge(
            "leaktrace_agent_rss_bytes",
            "Resident set size of the agent (VmRSS).",
            &[],
            (rss * 1024) as f64,
        );
    }
    m.render()
}

fn response(status: &str, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        r.extend_from_slice(body);
    }
    r
}
