//! `leaktrace agent` against real processes and a real Prometheus (Debian's `prometheus`
//! package, started here on 127.0.0.1 with a 1 s scrape interval): two leaking Go fixtures,
//! a clean one and one built with Go 1.19 that must be refused; Prometheus' HTTP API must
//! return the leaking processes' leak series with the right counts and nothing for the clean
//! one, `go tool pprof` must read the per-PID profiles from the agent, a process started
//! later must be picked up, one the filters exclude after a SIGHUP and one that exits
//! dropped, a flood of slow and oversized requests must not stop the answers nor the
//! watching, and SIGTERM must stop it within a second.

mod support;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use support::{
    Fixture, Lines, build_fixture, build_fixture_with, go_binary, go_versions, leaktrace_bin,
    patience,
};

/// Debian's Go 1.19, installed by scripts/setup.sh (package golang-1.19-go).
const GO_1_19: &str = "/usr/lib/go-1.19/bin/go";
/// Debian's Prometheus, installed by scripts/setup.sh (package prometheus).
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// The agent's --interval: it reads every target and scans /proc this often.
const INTERVAL: &str = "500ms";
/// Prometheus' scrape interval in this test.
const SCRAPE: Duration = Duration::from_secs(1);
/// The agent's --max-overhead, percent of one CPU.
const BUDGET_PERCENT: f64 = 50.0;

/// A child process killed and reaped when dropped (Prometheus, the agent).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET: the status code and the body, or None if nothing came in `timeout`.
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(&buf[9..12]).ok()?.parse().ok()?;
    Some((status, buf[end + 4..].to_vec()))
}

fn get_text(addr: SocketAddr, path: &str) -> String {
    let (status, body) = get(addr, path, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no answer from {addr}{path}"));
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Prometheus' instant query: each series' labels and value.
fn query(prom: SocketAddr, q: &str) -> Vec<(serde_json::Value, f64)> {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = get_text(prom, &format!("/api/v1/query?query={enc}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{q}: {body}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let value = r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
            (r["metric"].clone(), value)
        })
        .collect()
}

/// Polls `what` until it returns Some, or panics after the test's patience.
fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + patience(timeout);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the agent's sample `name{...pid="PID"...}`, straight from its /metrics.
fn agent_sample(agent: SocketAddr, name: &str, pid: u32) -> Option<f64> {
    let text = get_text(agent, "/metrics");
    let needle = format!("pid=\"{pid}\"");
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&needle))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn agent_value(agent: SocketAddr, name: &str) -> f64 {
    let text = get_text(agent, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

/// Leaked goroutines Prometheus has for PID, summed over its leak series.
fn leaked_in_prometheus(prom: SocketAddr, pid: u32) -> Option<f64> {
    let r = query(
        prom,
        &format!("leaktrace_leaked_goroutines{{pid=\"{pid}\"}}"),
    );
    (!r.is_empty()).then(|| r.iter().map(|(_, v)| v).sum())
}

/// A copy of a fixture under a name of this run's own, so that `--exe` picks this test's
/// processes and no one else's.
fn named(bin: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    fs::copy(bin, &to).unwrap();
    to
}

fn start_leaking(bin: &Path, requests: u32) -> Fixture {
    let n = requests.to_string();
    let mut f = Fixture::start(bin, &["-requests", &n, "-hold"]);
    f.stderr.wait_for("holding", Duration::from_secs(30));
    f
}

/// `go tool pprof -raw URL`, as a profile store would fetch it.
fn pprof_raw(url: &str, tmp: &Path) -> String {
    let go = go_binary(go_versions().last().unwrap());
    let out = Command::new(go)
        .args(["tool", "pprof", "-raw", url])
        .env("PPROF_TMPDIR", tmp)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof -raw {url} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_agent_feeds_prometheus_and_pprof_and_survives_bad_clients() {
    assert!(
        Path::new(GO_1_19).exists(),
        "{GO_1_19} is missing: scripts/setup.sh installs Debian's golang-1.19-go"
    );
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: scripts/setup.sh installs Debian's prometheus"
    );
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());
    let version = go_versions().last().unwrap().clone();
    let (leak, clean, old) = thread::scope(|s| {
        let leak = s.spawn(|| build_fixture("classicleak", &version, &[]));
        let clean = s.spawn(|| build_fixture("classicleak-fixed", &version, &[]));
        let old = s.spawn(|| {
            build_fixture_with("chansend", "go1.19-debian", Path::new(GO_1_19), &[], &[])
        });
        (
            leak.join().unwrap(),
            clean.join().unwrap(),
            old.join().unwrap(),
        )
    });
    phase("fixtures built");
    let (scene, watched) = start(&leak, &clean, &old);
    phase("Prometheus ready");
    leak_series_are_in_prometheus(&scene);
    phase("leak series in Prometheus");
    the_go_1_19_process_is_refused(&scene);
    profiles_are_read_by_pprof(&scene);
    phase("profiles read");
    let late = a_late_process_is_picked_up(&scene, &leak);
    phase("late process picked up");
    sighup_rereads_the_filters(&scene, &late);
    phase("filters reread");
    an_exited_process_is_dropped(&scene, watched.b);
    phase("exited process dropped");
    a_flood_stops_neither_answers_nor_watching(&scene);
    the_budget_held(&scene);
    phase("flood survived");
    let Scene {
        prom,
        tmp,
        agent,
        log,
        pold,
        ..
    } = scene;
    sigterm_stops_it_within_a_second(agent, log, pold);
    drop(prom);
    drop((watched.a, watched.c, late, watched.old));
    let _ = fs::remove_dir_all(&tmp);
}

/// What the steps share: the agent, Prometheus, where they listen, and the PIDs watched.
struct Scene {
    prom: Reaped,
    agent: Reaped,
    log: Lines,
    agent_started: Instant,
    agent_addr: SocketAddr,
    prom_addr: SocketAddr,
    tmp: PathBuf,
    prefix: String,
    pa: u32,
    pb: u32,
    pc: u32,
    pold: u32,
}

impl Scene {
    /// A process name of this run's own.
    fn name(&self, n: &str) -> String {
        format!("{}-{n}", self.prefix)
    }
}

/// The processes the agent watches: two leaking (5 and 7), a clean one, a Go 1.19 one.
struct Watched {
    a: Fixture,
    b: Fixture,
    c: Fixture,
    old: Fixture,
}

/// Starts the watched processes, the agent, and Prometheus scraping it.
fn start(leak: &Path, clean: &Path, old: &Path) -> (Scene, Watched) {
    let tmp = std::env::temp_dir().join(format!("leaktrace-agent-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap();
    let prefix = format!("agt{}", std::process::id());
    let name = |n: &str| format!("{prefix}-{n}");

    // Two leaking processes (5 and 7 producers blocked for good), a clean one, a Go 1.19 one.
    let a = start_leaking(&named(leak, &tmp, &name("leak-a")), 5);
    let b = start_leaking(&named(leak, &tmp, &name("leak-b")), 7);
    let c = start_leaking(&named(clean, &tmp, &name("clean")), 5);
    let mut old = Fixture::start(&named(old, &tmp, &name("old")), &["-n", "3"]);
    old.stderr.wait_for("ready", Duration::from_secs(30));
    let (pa, pb, pc, pold) = (a.pid(), b.pid(), c.pid(), old.pid());

    let agent_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let glob = format!("{prefix}-*");
    let budget = BUDGET_PERCENT.to_string();
    let mut agent = Command::new(leaktrace_bin())
        .args([
            "agent",
            "--exe",
            &glob,
            "--interval",
            INTERVAL,
            "--min-age",
            "1s",
        ])
        .args([
            "--max-overhead",
            &budget,
            "--listen",
            &agent_addr.to_string(),
        ])
        // Not there yet: it adds no filters until it is written and the agent gets SIGHUP.
        .arg("--config")
        .arg(tmp.join("agent.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = Lines::new(agent.stderr.take().unwrap());
    let agent = Reaped(agent);
    let agent_started = Instant::now();
    log.wait_for("event=listening", Duration::from_secs(30));

    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = tmp.join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: leaktrace\n    static_configs:\n      - targets: ['{agent_addr}']\n"
        ),
    )
    .unwrap();
    let prom = Reaped(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("Prometheus to be ready", Duration::from_secs(30), || {
        get(prom_addr, "/-/ready", Duration::from_secs(2)).filter(|(s, _)| *s == 200)
    });

    let scene = Scene {
        prom,
        agent,
        log,
        agent_started,
        agent_addr,
        prom_addr,
        tmp,
        prefix,
        pa,
        pb,
        pc,
        pold,
    };
    (scene, Watched { a, b, c, old })
}

fn leak_series_are_in_prometheus(s: &Scene) {
    let (prom_addr, pa, pb, pc) = (s.prom_addr, s.pa, s.pb, s.pc);
    let name = |n: &str| s.name(n);
    // The leak series, with the right counts, through Prometheus; nothing for the clean one.
    for (pid, count) in [(pa, 5.0), (pb, 7.0)] {
        wait_until(
            &format!("Prometheus to have {count} leaked goroutines of PID {pid}"),
            Duration::from_secs(60),
            || leaked_in_prometheus(prom_addr, pid).filter(|v| *v == count),
        );
    }
    let clean_watched = query(
        prom_addr,
        &format!("leaktrace_target_goroutines{{pid=\"{pc}\"}}"),
    );
    assert_eq!(
        clean_watched.len(),
        1,
        "the clean process is watched: {clean_watched:?}"
    );
    assert_eq!(clean_watched[0].0["service"], name("clean").as_str());
    assert_eq!(
        leaked_in_prometheus(prom_addr, pc),
        None,
        "no leak series for the clean process"
    );
    let series = query(
        prom_addr,
        &format!("leaktrace_leaked_goroutines{{pid=\"{pa}\"}}"),
    );
    let site = series[0].0["site"].as_str().unwrap();
    assert!(site.starts_with("main.produce "), "{series:?}");
    assert_eq!(series[0].0["wait_reason"], "chan send");
}

fn the_go_1_19_process_is_refused(s: &Scene) {
    let (agent_addr, prom_addr, pa, pold) = (s.agent_addr, s.prom_addr, s.pa, s.pold);
    // The Go 1.19 program: refused with one log line, listed with its reason, no series.
    let targets: serde_json::Value =
        serde_json::from_str(&get_text(agent_addr, "/targets")).unwrap();
    let entry = |pid: u32| {
        targets["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["pid"] == pid)
            .cloned()
    };
    let refused = entry(pold).expect("the Go 1.19 process is listed in /targets");
    assert_eq!(refused["state"], "refused");
    assert!(
        refused["reason"].as_str().unwrap().contains("go1.19"),
        "{refused}"
    );
    assert_eq!(entry(pa).unwrap()["state"], "watched");
    assert!(
        query(
            prom_addr,
            &format!("leaktrace_target_goroutines{{pid=\"{pold}\"}}")
        )
        .is_empty()
    );
}

fn profiles_are_read_by_pprof(s: &Scene) {
    let (agent_addr, pa, tmp) = (s.agent_addr, s.pa, &s.tmp);
    // go tool pprof reads the per-PID profiles from the agent's endpoints.
    let leaks = pprof_raw(
        &format!("http://{agent_addr}/debug/pprof/goroutineleak?pid={pa}"),
        tmp,
    );
    assert!(leaks.contains("goroutineleak/count"), "{leaks}");
    assert!(leaks.contains("main.produce"), "{leaks}");
    let five = leaks
        .lines()
        .skip_while(|l| !l.starts_with("Samples:"))
        .any(|l| l.trim_start().starts_with("5: "));
    assert!(five, "a sample of 5 goroutines:\n{leaks}");
    let allocs = pprof_raw(
        &format!("http://{agent_addr}/debug/pprof/allocs?pid={pa}"),
        tmp,
    );
    assert!(allocs.contains("PeriodType: space bytes"), "{allocs}");
    assert!(allocs.contains("inuse_space/bytes"), "{allocs}");
}

fn a_late_process_is_picked_up(s: &Scene, leak: &Path) -> Fixture {
    let (agent_addr, prom_addr, tmp) = (s.agent_addr, s.prom_addr, &s.tmp);
    let name = |n: &str| s.name(n);
    // A process started now is picked up within two scrape intervals.
    let late = start_leaking(&named(leak, tmp, &name("late")), 3);
    let up = Instant::now();
    wait_until(
        "the late process in the agent's /metrics",
        Duration::from_secs(30),
        || agent_sample(agent_addr, "leaktrace_target_goroutines", late.pid()),
    );
    let picked_up = up.elapsed();
    eprintln!("late process picked up after {picked_up:?}");
    assert!(
        picked_up <= 2 * SCRAPE,
        "picked up after {picked_up:?}, more than two scrape intervals"
    );
    wait_until(
        "Prometheus to have the late process",
        Duration::from_secs(30),
        || {
            (!query(
                prom_addr,
                &format!("leaktrace_target_goroutines{{pid=\"{}\"}}", late.pid()),
            )
            .is_empty())
            .then_some(())
        },
    );
    late
}

fn an_exited_process_is_dropped(s: &Scene, b: Fixture) {
    let (agent_addr, prom_addr, pb) = (s.agent_addr, s.prom_addr, s.pb);
    // One that exits is dropped: gone from /targets, and from Prometheus' current series.
    drop(b);
    wait_until(
        "the exited process to leave /targets",
        Duration::from_secs(30),
        || {
            let t = get_text(agent_addr, "/targets");
            (!t.contains(&format!("\"pid\": {pb},"))).then_some(())
        },
    );
    wait_until(
        "Prometheus to drop the exited process",
        Duration::from_secs(30),
        || leaked_in_prometheus(prom_addr, pb).is_none().then_some(()),
    );
}

fn a_flood_stops_neither_answers_nor_watching(s: &Scene) {
    let (agent_addr, prom_addr, pa) = (s.agent_addr, s.prom_addr, s.pa);
    // A flood of slow (slowloris) and oversized requests: /metrics still answers and the
    // watching goes on.
    let snapshots_before =
        agent_sample(agent_addr, "leaktrace_target_snapshots_total", pa).unwrap();
    let flood_end = Instant::now() + Duration::from_secs(4);
    let slow: Vec<TcpStream> = (0..300)
        .filter_map(|_| {
            let mut s = TcpStream::connect(agent_addr).ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").ok()?;
            Some(s)
        })
        .collect();
    let oversized = thread::spawn(move || {
        let junk = vec![b'a'; 64 << 10];
        let mut sent = 0;
        while Instant::now() < flood_end {
            if let Ok(mut s) = TcpStream::connect(agent_addr) {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX-Big: ");
                let _ = s.write_all(&junk);
                sent += 1;
            }
            thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    let mut answered = 0;
    while Instant::now() < flood_end {
        let r = get(agent_addr, "/metrics", Duration::from_secs(2));
        assert!(
            matches!(r, Some((200, _))),
            "/metrics did not answer during the flood: {r:?}"
        );
        answered += 1;
        thread::sleep(Duration::from_millis(200));
    }
    let oversized_sent = oversized.join().unwrap();
    drop(slow);
    let snapshots_after = agent_sample(agent_addr, "leaktrace_target_snapshots_total", pa).unwrap();
    eprintln!(
        "flood: 300 slow connections, {oversized_sent} oversized requests; /metrics answered {answered} times; snapshots of PID {pa}: {snapshots_before} -> {snapshots_after}"
    );
    assert!(
        snapshots_after > snapshots_before,
        "the watching stalled during the flood"
    );
    let up = query(prom_addr, "min_over_time(up{job=\"leaktrace\"}[4s])");
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].1, 1.0, "a Prometheus scrape failed during the flood");
}

fn the_budget_held(s: &Scene) {
    let (agent_addr, agent_started) = (s.agent_addr, s.agent_started);
    // The budget held: the watching's CPU within its share of the time, plus its burst.
    let used = agent_value(agent_addr, "leaktrace_agent_watch_cpu_seconds_total");
    let allowed = BUDGET_PERCENT / 100.0 * agent_started.elapsed().as_secs_f64() + 0.2;
    eprintln!(
        "agent: watching used {used:.2} s of CPU in {:.1} s (allowed {allowed:.2} s); whole agent {:.2} s",
        agent_started.elapsed().as_secs_f64(),
        agent_value(agent_addr, "leaktrace_agent_cpu_seconds_total")
    );
    assert!(
        used <= allowed + 0.1,
        "{used} s of CPU, over the budget's {allowed} s"
    );
    assert!(agent_value(agent_addr, "leaktrace_agent_rss_bytes") > 0.0);
}

fn sigterm_stops_it_within_a_second(agent: Reaped, log: Lines, pold: u32) {
    // SIGTERM stops it within a second, cleanly.
    let mut agent = agent;
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the agent did not stop"
        );
        thread::sleep(Duration::from_millis(10));
    };
    let stopped_in = t0.elapsed();
    eprintln!("SIGTERM: stopped in {stopped_in:?}");
    assert!(status.success(), "{status:?}");
    assert!(
        stopped_in < Duration::from_secs(1),
        "stopped in {stopped_in:?}"
    );
    let lines = log.rest();
    let refusals = lines
        .iter()
        .filter(|l| l.contains("event=refused") && l.contains(&format!("pid={pold} ")))
        .count();
    assert_eq!(
        refusals,
        1,
        "one log line for the Go 1.19 process:\n{}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("event=stopped signal=SIGTERM"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("event=reload") && l.contains("filters_changed=true")),
        "the SIGHUP is logged:\n{}",
        lines.join("\n")
    );
}

/// SIGHUP rereads the filter file: a process it now excludes is dropped, the others stay.
fn sighup_rereads_the_filters(s: &Scene, late: &Fixture) {
    let excluded = format!("\"pid\": {},", late.pid());
    let before = get_text(s.agent_addr, "/targets");
    assert!(before.contains(&excluded), "watched before: {before}");
    fs::write(
        s.tmp.join("agent.conf"),
        format!("# written by the test\nexclude = {}\n", s.name("late")),
    )
    .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(s.agent.0.id() as i32, libc::SIGHUP) };
    wait_until(
        "the process the filters now exclude to leave /targets",
        Duration::from_secs(30),
        || {
            let t = get_text(s.agent_addr, "/targets");
            (!t.contains(&excluded)).then_some(())
        },
    );
    let t = get_text(s.agent_addr, "/targets");
    assert!(
        t.contains(&format!("\"pid\": {},", s.pa)),
        "the others stay watched: {t}"
    );
}
