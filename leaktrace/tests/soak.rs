//! Soak: leaktrace attaches to a busy Go HTTP service under load from wrk and detaches,
//! every two seconds, for LEAKTRACE_SOAK_SECONDS (60 by default; set it higher to soak for
//! longer by hand). The service must see no error, leaktrace no failure, and no probe may
//! stay behind.

mod support;

use std::{
    fs,
    io::{Read as _, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use support::*;

fn soak_seconds() -> u64 {
    std::env::var("LEAKTRACE_SOAK_SECONDS")
        .ok()
        .map(|s| {
            s.parse()
                .expect("LEAKTRACE_SOAK_SECONDS is a number of seconds")
        })
        .unwrap_or(60)
}

/// The settings each run cycles through: the defaults (on this service the budget usually
/// keeps runtime-wide probes off), and a 100% budget with probes that are placed under load
/// and then shed when their measured cost is over it.
const SETTINGS: [&[&str]; 3] = [
    &[],
    &["--max-overhead", "100", "--probes", "park,wake,create,exit"],
    &["--max-overhead", "100", "--probes", "all"],
];

#[test]
fn attach_and_detach_every_two_seconds_under_load() {
    let seconds = soak_seconds();
    let bin = build_fixture("busyservice", &go_versions().pop().unwrap(), &[]);
    let gopark = symbol_address(&bin, "runtime.gopark");
    let mut fx = Fixture::start(&bin, &[]);
    let line = fx.stderr.wait_for("listening on", Duration::from_secs(10));
    let addr = line.rsplit(' ').next().unwrap().to_string();
    let pid = fx.pid();
    let original = first_byte_in_target(pid, gopark);
    assert_ne!(original, 0xcc);

    let wrk = Command::new("wrk")
        .args(["-t2", "-c16", "--timeout", "5s", "-d"])
        .arg(format!("{seconds}s"))
        .arg(format!("http://{addr}/search?q=soak"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running wrk (scripts/setup.sh installs it)");
    let mut wrk = Wrk(wrk);
    let start = Instant::now();
    let dir = std::env::temp_dir().join(format!("leaktrace-soak-{}", std::process::id()));
    let (mut runs, mut probed, mut shed) = (0usize, 0usize, 0usize);
    let mut programs = Vec::new();
    while wrk.0.try_wait().unwrap().is_none() {
        let settings = SETTINGS[runs % SETTINGS.len()];
        let out = dir.join(runs.to_string());
        let pid_s = pid.to_string();
        let mut args = vec!["record", "-p", &pid_s, "-d", "2s", "--min-age", "1s"];
        args.extend(["-o", out.to_str().unwrap()]);
        args.extend(settings);
        let mut tracer = Tracer::start(&args);
        tracer
            .stderr
            .wait_for("attached to PID", Duration::from_secs(30));
        programs.extend(programs_held_by(tracer.child.id()));
        let (_, stderr, code) = tracer.finish(Duration::from_secs(30));
        assert_eq!(code, Some(0), "run {runs} {settings:?} failed: {stderr:?}");
        assert!(!stderr.iter().any(|l| l.contains("panicked")), "{stderr:?}");
        let r: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(r["stopped"], "duration reached", "run {runs}");
        let hits = r["probes"]["hits"].as_object().unwrap();
        if hits.keys().any(|k| k != "(sites of suspected leaks)") {
            probed += 1;
        }
        if !r["probes"]["shed"].as_array().unwrap().is_empty() {
            shed += 1;
        }
        assert_eq!(
            first_byte_in_target(pid, gopark),
            original,
            "run {runs}: the breakpoint is gone once leaktrace exits"
        );
        runs += 1;
    }
    let elapsed = start.elapsed();
    let status = wrk.0.wait().unwrap();
    let mut report = String::new();
    wrk.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .unwrap();
    assert!(status.success(), "wrk failed:\n{report}");
    let requests: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .map(|(n, _)| n.parse().unwrap())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{report}"));
    eprintln!(
        "soak: {runs} runs of leaktrace in {:.0} s ({probed} placed runtime-wide probes, {shed} left out or shed probes over budget), {requests} requests served\n{report}",
        elapsed.as_secs_f64()
    );
    assert!(
        !report.contains("Socket errors") && !report.contains("Non-2xx"),
        "the service saw errors under leaktrace:\n{report}"
    );
    assert!(
        requests > 0 && runs >= (seconds / 4) as usize,
        "{runs} runs"
    );
    assert!(
        probed > 0,
        "some runs placed runtime-wide probes under load, or the soak proves less"
    );
    assert_eq!(
        still_loaded(&programs),
        Vec::<u32>::new(),
        "programs left loaded"
    );
    let _ = fs::remove_dir_all(&dir);

    // The service still answers, then shuts down cleanly, having failed no request.
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(conn, "GET /search?q=after HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    // SAFETY: signalling the fixture we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let (out, code) = fx.finish();
    assert_eq!(code, Some(0), "{out}");
    let served: u64 = out
        .strip_prefix("served ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the service's count: {out}"));
    assert!(served > requests, "served {served}, wrk counted {requests}");
    assert!(out.contains(", 0 failed"), "{out}");
}

/// wrk, killed if the test fails before it ends.
struct Wrk(std::process::Child);

impl Drop for Wrk {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
