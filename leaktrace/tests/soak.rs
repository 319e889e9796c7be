//! Soak: leaktrace attaches to a busy Go HTTP service under load from wrk and detaches,
//! every two seconds, for LEAKTRACE_SOAK_SECONDS (60 by default; set it higher to soak for
//! longer by hand): half of it with wrk as fast as it goes, half paced. The service must see
//! no error, leaktrace no failure, and no probe may stay behind.

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

/// The settings each run cycles through: the defaults (a 1% budget keeps runtime-wide probes
/// off this service), and a 100% budget with park/wake/create/exit or every probe (placed
/// where the load and this machine's hit cost let them fit, and the hottest shed once their
/// measured cost is over it).
const SETTINGS: [&[&str]; 3] = [
    &[],
    &["--max-overhead", "100", "--probes", "park,wake,create,exit"],
    &["--max-overhead", "100", "--probes", "all"],
];

/// Under the paced load, one more: park/wake/create/exit with no budget, so that some runs
/// place runtime-wide probes under load whatever a hit costs on this machine (at 10-18 us a
/// hit, whether a 100% budget fits is the machine's call).
const PACED_ONLY: &[&str] = &["--max-overhead", "off", "--probes", "park,wake,create,exit"];

#[test]
fn attach_and_detach_every_two_seconds_under_load() {
    let seconds = soak_seconds();
    let bin = build_fixture("busyservice", &go_versions().pop().unwrap(), &[]);
    let gopark = probe_address(&bin, "runtime.gopark");
    let mut fx = Fixture::start(&bin, &[]);
    let line = fx.stderr.wait_for("listening on", Duration::from_secs(10));
    let addr = line.rsplit(' ').next().unwrap().to_string();
    let pid = fx.pid();
    let original = first_byte_in_target(pid, gopark);
    assert_ne!(original, 0xcc);

    // Two halves: wrk as fast as it goes (the service saturates both CPUs, and even a 100%
    // budget keeps most runtime-wide probes off), then paced at 5 ms between requests on
    // each of 32 connections (probes fit a 100% budget: placed, and shed, under load).
    let dir = std::env::temp_dir().join(format!("leaktrace-soak-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let pacing = dir.join("pace.lua");
    fs::write(&pacing, "function delay() return 5 end\n").unwrap();
    let half = format!("{}s", (seconds / 2).max(1));
    let url = format!("http://{addr}/search?q=soak");
    let phases: [(&str, Vec<&str>); 2] = [
        ("saturating", vec!["-t2", "-c16"]),
        ("paced", vec!["-t2", "-c32", "-s", pacing.to_str().unwrap()]),
    ];
    let start = Instant::now();
    let (mut runs, mut probed, mut shed, mut requests) = (0usize, 0usize, 0usize, 0u64);
    let mut programs = Vec::new();
    for (phase, load) in &phases {
        let mut wrk = Wrk(Command::new("wrk")
            .args(load)
            .args(["--timeout", "5s", "-d", &half, &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running wrk (scripts/setup.sh installs it)"));
        let mut phase_runs = 0;
        while wrk.0.try_wait().unwrap().is_none() {
            // The paced phase begins with the unbudgeted setting, so that it runs however
            // few runs a slow machine fits in the phase.
            let settings = match (*phase, phase_runs) {
                ("paced", 0) => PACED_ONLY,
                _ => SETTINGS[runs % SETTINGS.len()],
            };
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
                serde_json::from_str(&fs::read_to_string(out.join("report.json")).unwrap())
                    .unwrap();
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
            phase_runs += 1;
        }
        // How many runs fit depends on how fast this machine is; attaching and detaching
        // again and again under load is what matters.
        assert!(phase_runs >= 2, "{phase} load: only {phase_runs} runs");
        let status = wrk.0.wait().unwrap();
        let mut report = String::new();
        let mut stdout = wrk.0.stdout.take().unwrap();
        stdout.read_to_string(&mut report).unwrap();
        assert!(status.success(), "wrk failed:\n{report}");
        let n: u64 = report
            .lines()
            .find_map(|l| l.trim().split_once(" requests in "))
            .map(|(n, _)| n.parse().unwrap())
            .unwrap_or_else(|| panic!("no request count in wrk's output:\n{report}"));
        eprintln!("soak, {phase} load:\n{report}");
        assert!(
            !report.contains("Socket errors") && !report.contains("Non-2xx"),
            "the service saw errors under leaktrace ({phase} load):\n{report}"
        );
        requests += n;
    }
    eprintln!(
        "soak: {runs} runs of leaktrace in {:.0} s ({probed} placed runtime-wide probes, {shed} left out or shed probes over budget), {requests} requests served",
        start.elapsed().as_secs_f64()
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
