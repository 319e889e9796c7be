//! Proofs under churn: a busy HTTP service (testdata/go/busyservice, newest Go) under load
//! from wrk for 100 s, proven by `dump --leaks` back to back (under load the target's GC
//! cycles come fast, so the two passes of each proof are often half a second apart), each
//! proof followed by a plain dump. Following the goids: no goroutine proven leaked is ever
//! seen afterwards out of the wait it was proven in (gone, woken, or somewhere else). The
//! service leaks one backend every 500 requests, so there is something to prove all along.

mod support;

use std::{
    collections::BTreeMap,
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

const LOAD: Duration = Duration::from_secs(100);

/// The waits a proof may find a goroutine in (census/reach.rs).
const BLOCKED: [&str; 12] = [
    "chan send",
    "chan receive",
    "select",
    "chan send (nil chan)",
    "chan receive (nil chan)",
    "select (no cases)",
    "sync.Cond.Wait",
    "sync.Mutex.Lock",
    "sync.RWMutex.RLock",
    "sync.RWMutex.Lock",
    "sync.WaitGroup.Wait",
    "semacquire",
];

/// A goroutine's wait as a dump shows it: its stack (function:line, innermost first) and wait
/// reason.
fn waits(dump: &Value, key: &str) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for group in dump[key].as_array().unwrap() {
        let stack: Vec<String> = group["stack"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{}:{}", f["function"].as_str().unwrap_or("?"), f["line"]))
            .collect();
        let wait = format!("{} [{}]", stack.join(" < "), group["wait_reason"]);
        for goid in group["goids"].as_array().unwrap() {
            out.insert(goid.as_u64().unwrap(), wait.clone());
        }
    }
    out
}

fn dump(pid: u32, extra: &[&str]) -> Value {
    let out = Command::new(leaktrace_bin())
        .args(["dump", "-p", &pid.to_string(), "--json"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("running leaktrace dump");
    assert!(
        out.status.success(),
        "dump {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn no_goroutine_proven_under_churn_is_ever_seen_moving() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("busyservice", &version, &[]);
    let mut fx = Fixture::start(&bin, &["-leak-every", "500"]);
    let line = fx.stderr.wait_for("listening on", Duration::from_secs(10));
    let addr = line.rsplit(' ').next().unwrap().to_string();
    let pid = fx.pid();

    // Paced at 5 ms between requests on each of 32 connections: busy, yet leaving the
    // tracer some CPU on this 2-core machine.
    let dir = std::env::temp_dir().join(format!("leaktrace-churn-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let pacing = dir.join("pace.lua");
    fs::write(&pacing, "function delay() return 5 end\n").unwrap();
    let mut wrk = Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            "-s",
            pacing.to_str().unwrap(),
            "--timeout",
            "5s",
        ])
        .args(["-d", &format!("{}s", LOAD.as_secs())])
        .arg(format!("http://{addr}/search?q=churn"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running wrk (scripts/setup.sh installs it)");

    // goid -> (the wait it was proven in, the proof's number).
    let mut proven: BTreeMap<u64, (String, usize)> = BTreeMap::new();
    let mut moved = Vec::new();
    let (mut proofs, mut looks, mut fastest) = (0usize, 0usize, f64::MAX);
    let start = Instant::now();
    while start.elapsed() < LOAD - Duration::from_secs(5) {
        let r = dump(pid, &["--leaks"]);
        assert!(r["not_proven"].is_null(), "{}", r["not_proven"]);
        proofs += 1;
        fastest = fastest.min(r["proof"]["between"].as_f64().unwrap());
        for (goid, wait) in waits(&r, "leaks") {
            // The group shows the goroutine as it was once the proof was done: out of every
            // wait a proof considers, it had moved already.
            if !BLOCKED
                .iter()
                .any(|b| wait.ends_with(&format!("[\"{b}\"]")))
            {
                moved.push(format!(
                    "goroutine {goid}, proven in proof {proofs}, shown as {wait}"
                ));
                continue;
            }
            proven.entry(goid).or_insert((wait, proofs));
        }
        let now = waits(&dump(pid, &[]), "goroutines");
        looks += 1;
        // A moving goroutine is reported once, then no longer followed.
        proven.retain(|goid, (wait, proof)| {
            let seen = now.get(goid);
            if seen != Some(wait) {
                moved.push(format!(
                    "goroutine {goid}, proven in proof {proof} as {wait}, seen after proof \
                     {proofs} as {}",
                    seen.map_or("gone", String::as_str)
                ));
            }
            seen == Some(wait)
        });
    }
    let status = wrk.wait().unwrap();
    assert!(status.success(), "wrk failed");
    drop(fx);
    let functions: BTreeMap<&str, usize> =
        proven.values().fold(BTreeMap::new(), |mut m, (w, _)| {
            *m.entry(w.split(':').next().unwrap_or("?")).or_default() += 1;
            m
        });
    eprintln!(
        "churn: {proofs} proofs and {looks} dumps in {:.0} s under load (passes as close as \
         {fastest:.2} s apart); proven and never seen moving: {functions:?}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        moved.is_empty(),
        "proven goroutines seen moving afterwards:\n{}",
        moved.join("\n")
    );
    assert!(
        proofs >= 10 && !proven.is_empty(),
        "{proofs} proofs, {} goroutines proven: the test proves too little",
        proven.len()
    );
    for f in functions.keys() {
        assert!(
            *f == "main.backend",
            "{f} proven: only the leaked backends are leaks ({functions:?})"
        );
    }
}
