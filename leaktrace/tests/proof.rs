//! Proofs by reachability (`dump --leaks`) against real Go programs, Go 1.21 to 1.27, default,
//! stripped and PIE builds: testdata/go/reach's leaks, channel and sync alike, started before
//! leaktrace attaches, are proven in one `dump --leaks` (3-5 s; 10 s is the aim); its controls
//! (blocked for long on what something live holds: a global map's object, a sleeping mutex
//! holder, an object with a finalizer, a finalizer's or a cleanup's closure, ...) and `main`
//! in `select {}` never are; and on Go 1.27 every proof is one Go's own goroutineleak profile
//! makes on the same process.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

const BUILDS: [(&str, &[&str]); 3] = [
    ("default", &[]),
    ("stripped", &["-ldflags=-s -w"]),
    ("pie", &["-buildmode=pie"]),
];

fn minor(version: &str) -> u32 {
    version.split('.').nth(1).unwrap().parse().unwrap()
}

/// The leak functions that must be proven, with their goroutine counts, on every version:
/// before Go 1.26 a goroutine blocked in package sync records nothing in `g.waiting`, and the
/// proof finds its sudog on its stack instead. Left out: `leakMutex` (an 8-byte Mutex shares
/// a tiny-allocator block with live objects; `leakMutexInStruct` is the same leak without
/// the shared block).
fn must_prove() -> BTreeMap<&'static str, usize> {
    BTreeMap::from([
        ("main.leakUnbufferedSend", 1),
        ("main.leakUnbufferedRecv", 1),
        ("main.leakBufferedSend", 1),
        ("main.leakBufferedRecv", 1),
        ("main.leakNilSend", 1),
        ("main.leakNilRecv", 1),
        ("main.leakSelect", 1),
        ("main.leakEmptySelect", 1),
        ("main.leakCycle", 2),
        ("main.leakMutexInStruct", 1),
        ("main.leakRWMutexLock", 1),
        // Its RWMutex's address stayed in a p's write barrier buffer, which the mark followed
        // until it found the p behind Go 1.22+'s malloc header.
        ("main.leakRWMutexRLock", 1),
        ("main.leakWaitGroup", 1),
        ("main.leakCond", 1),
        // Its channel is in a dead slot of a live frame: found by stack maps only.
        ("main.leakDeadSlot", 1),
    ])
}

/// The innermost `main.` function of each proven group, with the group's count.
fn proven_functions(r: &Value) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for g in r["leaks"].as_array().unwrap() {
        let f = g["stack"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["function"].as_str())
            .find(|f| f.starts_with("main.") && !f.starts_with("main.startLeaks"))
            .unwrap_or("?")
            .to_string();
        *out.entry(f).or_default() += g["count"].as_u64().unwrap() as usize;
    }
    out
}

fn dump_leaks(pid: u32) -> (Value, Duration) {
    let started = Instant::now();
    let out = Command::new(leaktrace_bin())
        .args(["dump", "-p", &pid.to_string(), "--leaks", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("running leaktrace dump --leaks");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "dump --leaks failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (v, took)
}

/// Go's own goroutineleak profile (debug=1) of the fixture: innermost `main.` function of
/// each record, with its count.
fn go_profile(fx: &mut Fixture, path: &std::path::Path) -> BTreeMap<String, usize> {
    let stdin = fx.child.stdin.as_mut().unwrap();
    stdin.write_all(b"profile\n").unwrap();
    stdin.flush().unwrap();
    fx.stderr.wait_for("profiled", Duration::from_secs(30));
    let mut text = String::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let mut out = BTreeMap::new();
    let mut count = 0;
    let mut named = false;
    for line in text.lines() {
        if let Some((n, _)) = line.split_once(" @") {
            count = n.trim().parse().unwrap_or(0);
            named = false;
        } else if let Some(f) = line
            .split_whitespace()
            .nth(2)
            .filter(|_| line.starts_with('#'))
        {
            let f = f.rsplit_once('+').map_or(f, |(n, _)| n);
            if !named && f.starts_with("main.") && !f.starts_with("main.startLeaks") {
                *out.entry(f.to_string()).or_default() += count;
                named = true;
            }
        }
    }
    out
}

#[test]
fn leaks_are_proven_and_controls_never_are() {
    let failures = Mutex::new(Vec::<String>::new());
    let table = Mutex::new(Vec::<String>::new());
    // (expected proven, proven) over every case, and what was missed.
    let recall = Mutex::new((0usize, 0usize, Vec::<String>::new()));
    std::thread::scope(|scope| {
        for version in go_versions() {
            let (failures, table, recall) = (&failures, &table, &recall);
            scope.spawn(move || {
                for (build, flags) in BUILDS {
                    let case = format!("Go {version} {build}");
                    let bin = build_fixture("reach", &version, flags);
                    let dir = tempdir(&format!("reach-{version}-{build}"));
                    let profile = dir.join("goroutineleak.txt");
                    let mut fx = Fixture::start(
                        &bin,
                        &["-mode", "all", "-profile", profile.to_str().unwrap()],
                    );
                    fx.stderr.wait_for("ready", Duration::from_secs(10));
                    let (r, took) = dump_leaks(fx.pid());
                    let got = proven_functions(&r);
                    let fail = |m: String| failures.lock().unwrap().push(format!("{case}: {m}"));
                    if took > Duration::from_secs(30) {
                        fail(format!("the proof took {took:?}: it hangs"));
                    }
                    if !r["not_proven"].is_null() {
                        fail(format!("nothing proven: {}", r["not_proven"]));
                    }
                    // Every pass says it scanned the stacks by their maps.
                    for p in r["proof"]["passes"].as_array().unwrap() {
                        let s = &p["stacks"];
                        if s["mode"] != "stack maps" || s["precise_frames"].as_u64() < Some(1) {
                            fail(format!("stacks not scanned by their maps: {s}"));
                        }
                    }
                    for (f, n) in &got {
                        if !f.starts_with("main.leak") {
                            fail(format!("{f} ({n}) proven leaked: it is not a leak"));
                        }
                    }
                    {
                        let mut recall = recall.lock().unwrap();
                        for (f, n) in must_prove() {
                            let proven = got.get(f).copied().unwrap_or(0);
                            recall.0 += n;
                            recall.1 += proven.min(n);
                            if proven != n {
                                recall.2.push(format!("{case}: {f} {proven} of {n} proven"));
                            }
                        }
                    }
                    table.lock().unwrap().push(format!(
                        "{case}: {} proven in {:.1} s ({} objects marked)",
                        got.values().sum::<usize>(),
                        took.as_secs_f64(),
                        r["proof"]["passes"][1]["objects_marked"]
                    ));
                    // Go 1.27's own detector on the same process: every proof is one of its.
                    if minor(&version) >= 27 && build == "default" {
                        let go = go_profile(&mut fx, &profile);
                        for (f, n) in &got {
                            if go.get(f) != Some(n) {
                                fail(format!(
                                    "{f} ({n}) proven, Go's goroutineleak profile says {:?}",
                                    go.get(f)
                                ));
                            }
                        }
                        let only_go: Vec<_> = go.keys().filter(|f| !got.contains_key(*f)).collect();
                        table.lock().unwrap().push(format!(
                            "{case}: Go's goroutineleak profile also has {only_go:?}"
                        ));
                    }
                }
            });
        }
    });
    let mut table = table.into_inner().unwrap();
    table.sort();
    println!("{}", table.join("\n"));
    let (expected, proven, missed) = recall.into_inner().unwrap();
    println!(
        "recall: {proven} of {expected} leaks proven; missed:\n{}",
        missed.join("\n")
    );
    let mut failures = failures.into_inner().unwrap();
    // Stacks are scanned by their maps, but heap objects word by word: a stale word in a live
    // object may still keep a leak's primitive reachable, a miss, never a false proof. Misses
    // stay rare (none in three runs of 336); false proofs fail above.
    if proven * 100 < expected * 98 {
        failures.push(format!("only {proven} of {expected} leaks proven (< 98%)"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("leaktrace-proof-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `record -d 10s` begun 2 s after the leaks: the proven groups are the leaks (confidence
/// `proven`, with the proof's evidence line), none is a control, and `goroutineleak.pb.gz`
/// holds them; the oldest and the newest Go.
#[test]
fn record_proves_leaks_begun_after_them() {
    let versions = go_versions();
    let picked = [versions.first().unwrap(), versions.last().unwrap()];
    std::thread::scope(|scope| {
        for version in picked {
            scope.spawn(move || {
                let bin = build_fixture("reach", version, &[]);
                let mut fx = Fixture::start(&bin, &["-mode", "all"]);
                fx.stderr.wait_for("ready", Duration::from_secs(10));
                std::thread::sleep(Duration::from_secs(2));
                let name = format!("proof-record-{version}");
                let (r, _) = record(&name, &["-p", &fx.pid().to_string(), "-d", "10s"]);
                let dir = std::env::temp_dir()
                    .join(format!("leaktrace-record-{}-{name}", std::process::id()));
                let mut proven: BTreeMap<String, usize> = BTreeMap::new();
                for l in r["leaks"].as_array().unwrap() {
                    if l["confidence"] != "proven" {
                        continue;
                    }
                    let site = l["site"]["function"].as_str().unwrap_or("?").to_string();
                    assert!(
                        site.starts_with("main.leak"),
                        "Go {version}: {site} proven leaked: it is not a leak"
                    );
                    assert!(
                        l["evidence"][0]
                            .as_str()
                            .unwrap()
                            .contains("unreachable: proof: unreachable in 2 passes"),
                        "Go {version}: no proof evidence: {l}"
                    );
                    *proven.entry(site).or_default() += l["count"].as_u64().unwrap() as usize;
                }
                let missed: BTreeSet<_> = must_prove()
                    .into_iter()
                    .filter(|(f, n)| proven.get(*f) != Some(n))
                    .map(|(f, _)| f)
                    .collect();
                // A stale word may hide one leak (see the recall above); never more here.
                assert!(
                    missed.len() <= 1,
                    "Go {version}: not proven: {missed:?}; proven: {proven:?}"
                );
                let pb = std::fs::read(dir.join("goroutineleak.pb.gz"))
                    .expect("goroutineleak.pb.gz written");
                let out = Command::new(go_binary(version))
                    .args(["tool", "pprof", "-raw"])
                    .arg(dir.join("goroutineleak.pb.gz"))
                    .env("GOTOOLCHAIN", "local")
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    !pb.is_empty() && text.contains("goroutineleak/count"),
                    "go tool pprof cannot read goroutineleak.pb.gz: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                for f in proven.keys() {
                    assert!(
                        text.contains(f.as_str()),
                        "{f} not in goroutineleak.pb.gz: {text}"
                    );
                }
            });
        }
    });
}

/// A program with nothing unreachable (classicleak-fixed, holding): `dump --leaks` proves
/// nothing, and runs one pass, not two: a second pass can only confirm what the first found.
#[test]
fn nothing_unreachable_takes_one_pass() {
    let version = go_versions().last().unwrap().clone();
    let bin = build_fixture("classicleak-fixed", &version, &[]);
    let mut fx = Fixture::start(&bin, &["-hold"]);
    fx.stderr.wait_for("holding", Duration::from_secs(20));
    let (r, _) = dump_leaks(fx.pid());
    let passes = r["proof"]["passes"].as_array().expect("proof.passes");
    assert_eq!(passes.len(), 1, "one pass expected: {}", r["proof"]);
    assert_eq!(
        passes[0]["unreachable"],
        serde_json::json!([]),
        "{}",
        r["proof"]
    );
    assert_eq!(
        r["leaks"],
        serde_json::json!([]),
        "nothing is leaked: {}",
        r["leaks"]
    );
}

/// A GC cycle of the target between the two passes fills in `g.waitsince` (0 until a GC first
/// sees a g blocked): the wait is the same, and its goroutines are proven. Before, every leak
/// parked since the last GC cycle was dropped as "seen moving" when one ran between the
/// passes (the scale test lost 15,691 of 100,000 so under load). The fixture runs no GC cycle
/// but the one asked for between the passes; every Go version.
#[test]
fn a_gc_cycle_between_the_passes_is_not_taken_for_a_move() {
    use leaktrace::{census::reach::PassLimits, detect::proof::Prover, tracee::Target};
    for version in go_versions() {
        let bin = build_fixture("reach", &version, &[]);
        let mut fx = Fixture::start(&bin, &["-mode", "leaks", "-gc-off"]);
        fx.stderr.wait_for("ready", Duration::from_secs(20));
        let target = Target::inspect(fx.pid()).unwrap();
        let prover = Prover::start(&target, PassLimits::default()).unwrap();
        let stdin = fx.child.stdin.as_mut().unwrap();
        stdin.write_all(b"gc\n").unwrap();
        stdin.flush().unwrap();
        fx.stderr.wait_for("collected", Duration::from_secs(20));
        let proof = prover.finish(&target, PassLimits::default()).unwrap();
        let [first, second] = &proof.passes[..] else {
            panic!("Go {version}: two passes expected: {proof:?}");
        };
        // The case under test: the leaks were parked with no wait start in the first pass,
        // and have one in the second.
        let leaks: Vec<_> = first.unreachable.iter().filter(|b| b.goid != 1).collect();
        assert!(leaks.len() >= 10, "Go {version}: {first:?}");
        assert!(
            leaks.iter().all(|b| b.wait_since == 0),
            "Go {version}: a GC cycle ran before the first pass: {first:?}"
        );
        assert!(
            second.unreachable.iter().all(|b| b.wait_since != 0),
            "Go {version}: the GC cycle left a wait start unset: {second:?}"
        );
        assert_eq!(
            proof.proven.len(),
            leaks.len(),
            "Go {version}: proven {:?} of {leaks:?}",
            proof.proven
        );
        assert_eq!(proof.gc_cycles_between, Some(1), "Go {version}");
        drop(fx.finish());
    }
}
