//! Leak verdicts against real Go programs, Go 1.21 to 1.27: every blocking primitive's leak
//! is reported with Go's wait reason, the negative controls are not, the classic leak points
//! at the producer's send, its fixed twin reports nothing; attaching after the leak happened
//! and spawning the program under leaktrace. Prints precision and recall over the set.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    sync::Mutex,
    time::Duration,
};

use support::*;

/// The leak functions of testdata/go/leakset and the wait reason Go gives each, by version.
fn expected_leaks(version: &str) -> BTreeMap<&'static str, &'static str> {
    let minor: u32 = version.split('.').nth(1).unwrap().parse().unwrap();
    let wg = if minor >= 24 {
        "sync.WaitGroup.Wait"
    } else {
        "semacquire"
    };
    BTreeMap::from([
        ("main.leakUnbufferedSend", "chan send"),
        ("main.leakUnbufferedRecv", "chan receive"),
        ("main.leakBufferedSend", "chan send"),
        ("main.leakBufferedRecv", "chan receive"),
        ("main.leakNilSend", "chan send (nil chan)"),
        ("main.leakNilRecv", "chan receive (nil chan)"),
        ("main.leakSelect", "select"),
        ("main.leakEmptySelect", "select (no cases)"),
        ("main.leakMutex", "sync.Mutex.Lock"),
        ("main.leakRWMutexRLock", "sync.RWMutex.RLock"),
        ("main.leakRWMutexLock", "sync.RWMutex.Lock"),
        ("main.leakWaitGroup", wg),
        ("main.leakCond", "sync.Cond.Wait"),
    ])
}

/// (blocking site function, wait reason) of each reported leak.
fn reported(r: &serde_json::Value) -> Vec<(String, String)> {
    r["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["site"]["function"].as_str().unwrap_or("").to_string(),
                l["wait_reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `leaktrace record` with a snapshot a second, to completion; its report.
fn record_leaks(name: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--snapshot-interval", "1s"];
    all.extend_from_slice(args);
    support::record(name, &all).0
}

#[derive(Default)]
struct Score {
    tp: usize,
    fp: usize,
    fn_: usize,
    misses: Vec<String>,
}

/// Compares reported leaks with the truth: expected (site -> reason); anything else
/// reported is a false positive.
fn score(s: &Mutex<Score>, case: &str, got: &[(String, String)], expected: &BTreeMap<&str, &str>) {
    let mut s = s.lock().unwrap();
    let got_map: BTreeMap<&str, &str> = got.iter().map(|(f, r)| (f.as_str(), r.as_str())).collect();
    for (f, reason) in expected {
        match got_map.get(f) {
            Some(r) if r == reason => s.tp += 1,
            Some(r) => {
                s.fn_ += 1;
                s.misses.push(format!(
                    "{case}: {f} reported as {r:?}, expected {reason:?}"
                ));
            }
            None => {
                s.fn_ += 1;
                s.misses
                    .push(format!("{case}: {f} ({reason}) not reported"));
            }
        }
    }
    for (f, r) in got {
        if !expected.contains_key(f.as_str()) {
            s.fp += 1;
            s.misses.push(format!("{case}: false positive {f} [{r}]"));
        }
    }
}

#[test]
fn leak_verdicts_over_the_fixture_set() {
    let versions = go_versions();
    let score_all = Mutex::new(Score::default());
    std::thread::scope(|scope| {
        for version in &versions {
            let score_all = &score_all;
            scope.spawn(move || {
                // 1. Every primitive's leak and the negative controls, attaching afterwards.
                let bin = build_fixture("leakset", version, &[]);
                let mut fx = Fixture::start(&bin, &["-hold"]);
                fx.stderr.wait_for("ready", Duration::from_secs(10));
                let r = record_leaks(
                    &format!("leakset-{version}"),
                    &["-p", &fx.pid().to_string(), "-d", "4s", "--min-age", "3s"],
                );
                drop(fx);
                score(
                    score_all,
                    &format!("go{version} leakset attach"),
                    &reported(&r),
                    &expected_leaks(version),
                );

                // 2. The same program spawned under leaktrace: seen from its first instruction.
                let r = record_leaks(
                    &format!("leakset-spawn-{version}"),
                    &[
                        "-d",
                        "20s",
                        // The program lives 5 s after its leaks: a 1 s age leaves room for
                        // several snapshots a second apart on a loaded machine (with a 2 s
                        // age and 3.5 s, the one snapshot old enough could fall short).
                        "--min-age",
                        "1s",
                        // The parks from the first instruction are checked: never shed
                        // (a spawned program's start-up bursts, judged at 10-18 us a hit).
                        "--max-overhead",
                        "off",
                        "--",
                        bin.to_str().unwrap(),
                        "-mode",
                        "leaks",
                        "-linger",
                        "5s",
                    ],
                );
                assert!(
                    r["stopped"]
                        .as_str()
                        .unwrap()
                        .contains("exited with status 0"),
                    "go{version}: {}",
                    r["stopped"]
                );
                let parks = r["parks"]["chan send"].as_u64().unwrap_or(0);
                assert!(
                    parks >= 2,
                    "go{version} spawn: the leaks' parks were seen from the start: {}",
                    r["parks"]
                );
                score(
                    score_all,
                    &format!("go{version} leakset spawn"),
                    &reported(&r),
                    &expected_leaks(version),
                );

                // 3. The classic leak spawned with every probe: the channel probes name the
                // consumer's last receive, the loop it returned from.
                let classic = build_fixture("classicleak", version, &[]);
                let r = record_leaks(
                    &format!("classic-spawn-{version}"),
                    &[
                        "--probes",
                        "all",
                        "--max-overhead",
                        "off",
                        "-d",
                        "20s",
                        "--min-age",
                        "1s",
                        "--",
                        classic.to_str().unwrap(),
                        // Long enough for several snapshots a second apart while seven
                        // versions run at once, every probe on (at 20+ us a hit, loaded).
                        "-linger",
                        "5s",
                    ],
                );
                let l = &r["leaks"][0];
                assert_eq!(l["site"]["function"], "main.produce", "go{version}: {l}");
                let last = &l["channel"]["last_other_side"];
                assert_eq!(last["op"], "receive", "go{version}: {l}");
                assert_eq!(last["function"], "main.consume", "go{version}: {l}");
                assert_eq!(last["goid"], 1, "go{version}: {l}");
                assert!(
                    l["evidence"].as_array().unwrap().iter().any(|e| e
                        .as_str()
                        .unwrap()
                        .contains("nobody received from their channels")),
                    "go{version}: {l}"
                );
                score(
                    score_all,
                    &format!("go{version} classicleak spawn"),
                    &reported(&r),
                    &BTreeMap::from([("main.produce", "chan send")]),
                );

                // 4. The classic leak and its fixed twin, attaching afterwards.
                let src = fs::read_to_string(repo_root().join("testdata/go/classicleak/main.go"))
                    .unwrap();
                let send_line =
                    src.lines().position(|l| l.contains("leaks here")).unwrap() as u64 + 1;
                for (name, leaks) in [("classicleak", true), ("classicleak-fixed", false)] {
                    let bin = build_fixture(name, version, &[]);
                    let mut fx = Fixture::start(&bin, &["-hold"]);
                    fx.stderr.wait_for("holding", Duration::from_secs(10));
                    let r = record_leaks(
                        &format!("{name}-{version}"),
                        &[
                            "-p",
                            &fx.pid().to_string(),
                            "-d",
                            "2500ms",
                            "--min-age",
                            "2s",
                        ],
                    );
                    drop(fx);
                    let expected = if leaks {
                        let l = &r["leaks"][0];
                        assert_eq!(
                            l["site"]["line"], send_line,
                            "go{version}: the producer's send line: {l}"
                        );
                        assert_eq!(l["count"], 5, "go{version}: one per failed request");
                        assert_eq!(l["created_by"]["function"], "main.handle", "go{version}");
                        assert_eq!(l["goids"].as_array().unwrap().len(), 5);
                        assert!(
                            ["medium", "high", "proven"]
                                .contains(&l["confidence"].as_str().unwrap())
                        );
                        assert!(l["blocked_seconds"]["min"].as_f64().unwrap() >= 2.0);
                        assert_eq!(
                            l["channel"]["distinct"], 5,
                            "go{version}: each producer has its own channel"
                        );
                        BTreeMap::from([("main.produce", "chan send")])
                    } else {
                        BTreeMap::new()
                    };
                    score(
                        score_all,
                        &format!("go{version} {name}"),
                        &reported(&r),
                        &expected,
                    );
                }
            });
        }
    });
    let s = score_all.into_inner().unwrap();
    let precision = s.tp as f64 / (s.tp + s.fp).max(1) as f64;
    let recall = s.tp as f64 / (s.tp + s.fn_).max(1) as f64;
    println!(
        "leak verdicts over {} Go versions: {} true positives, {} false positives, {} false negatives; precision {:.3}, recall {:.3}",
        versions.len(),
        s.tp,
        s.fp,
        s.fn_,
        precision,
        recall
    );
    let misses: BTreeSet<String> = s.misses.into_iter().collect();
    assert!(
        misses.is_empty(),
        "precision {precision:.3}, recall {recall:.3}:\n{}",
        misses.into_iter().collect::<Vec<_>>().join("\n")
    );
}
