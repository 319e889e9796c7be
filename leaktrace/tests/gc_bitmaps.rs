//! The reachability pass scans the program's data and bss by the GC's own pointer bitmaps
//! (`moduledata.gcdatamask`, `gcbssmask`) on every Go version under test (1.21-1.25, 1.26
//! and 1.27 keep them at three offsets of `moduledata`), default, stripped and PIE builds, against
//! `testdata/go/globalbits`: a goroutine whose channel's address is held only as a `uintptr`
//! in a global of .data or .bss (a leak to the GC and to Go's own detector) is unreachable
//! by the bitmaps, and live to a conservative scan of the same process, which takes the
//! integer for a pointer; goroutines whose channel a real pointer global holds stay live in
//! both. `dump --leaks` proves the two leaks and says it scanned the globals by the bitmaps.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use leaktrace::{
    census::{
        data_roots::GlobalScan,
        goroutines,
        reach::{self, Pass, PassLimits},
    },
    tracee::Target,
};
use serde_json::Value;
use support::*;

const BUILDS: [(&str, &[&str]); 3] = [
    ("default", &[]),
    ("stripped", &["-ldflags=-s -w"]),
    ("pie", &["-buildmode=pie"]),
];

const LEAKS: [&str; 2] = ["main.leakAddrInData", "main.leakAddrInBss"];
const CONTROLS: [&str; 2] = ["main.controlChanInData", "main.controlChanInBss"];

/// The fixture's functions of interest whose goroutines `pass` found unreachable.
fn unreachable_functions(by_g: &BTreeMap<u64, String>, pass: &Pass) -> BTreeSet<String> {
    pass.unreachable
        .iter()
        .filter_map(|b| by_g.get(&b.g_addr).cloned())
        .collect()
}

/// The g address of each goroutine with one of the fixture's leak or control functions.
fn fixture_goroutines(target: &Target) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for g in goroutines::walk(target).unwrap() {
        if let Some(f) = g
            .stack
            .iter()
            .find(|f| LEAKS.contains(&&*f.function) || CONTROLS.contains(&&*f.function))
        {
            out.insert(g.g_addr, f.function.to_string());
        }
    }
    out
}

fn check_passes(case: &str, pid: u32, fail: &dyn Fn(String)) {
    let target = Target::inspect(pid).unwrap();
    let by_g = fixture_goroutines(&target);
    if by_g.len() != LEAKS.len() + CONTROLS.len() {
        fail(format!(
            "{case}: the fixture's goroutines not all found: {by_g:?}"
        ));
        return;
    }
    let precise = reach::pass(&target, PassLimits::default()).unwrap();
    let conservative =
        reach::pass_with(&target, PassLimits::default(), GlobalScan::Conservative).unwrap();
    if precise.roots != GlobalScan::GcBitmaps {
        fail(format!(
            "{case}: globals scanned {:?}: {:?}",
            precise.roots, precise.conservative_why
        ));
    }
    if conservative.roots != GlobalScan::Conservative {
        fail(format!("{case}: a conservative pass was asked for"));
    }
    let want: BTreeSet<String> = LEAKS.iter().map(|s| s.to_string()).collect();
    let got = unreachable_functions(&by_g, &precise);
    if got != want {
        fail(format!(
            "{case}: by the bitmaps, unreachable {got:?}, want {want:?}"
        ));
    }
    // The same process scanned conservatively: the uintptr words keep the leaks live, which
    // is what the bitmaps add.
    let got = unreachable_functions(&by_g, &conservative);
    if !got.is_empty() {
        fail(format!(
            "{case}: conservatively, unreachable {got:?}, want none"
        ));
    }
    if precise.bounded.is_some() || conservative.bounded.is_some() {
        fail(format!("{case}: a pass hit its bound"));
    }
}

fn check_dump(case: &str, pid: u32, fail: &dyn Fn(String)) {
    let out = Command::new(leaktrace_bin())
        .args(["dump", "-p", &pid.to_string(), "--leaks", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("running leaktrace dump --leaks");
    if !out.status.success() {
        fail(format!(
            "{case}: dump --leaks failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
        return;
    }
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in r["proof"]["passes"].as_array().unwrap() {
        if p["roots"] != "gc bitmaps" || !p["conservative_why"].is_null() {
            fail(format!(
                "{case}: dump --leaks pass roots {} ({})",
                p["roots"], p["conservative_why"]
            ));
        }
    }
    let mut proven = BTreeSet::new();
    for g in r["leaks"].as_array().unwrap() {
        for f in g["stack"].as_array().unwrap() {
            let f = f["function"].as_str().unwrap_or("");
            if LEAKS.contains(&f) || CONTROLS.contains(&f) {
                proven.insert(f.to_string());
            }
        }
    }
    let want: BTreeSet<String> = LEAKS.iter().map(|s| s.to_string()).collect();
    if proven != want {
        fail(format!(
            "{case}: dump --leaks proved {proven:?}, want {want:?}"
        ));
    }
}

#[test]
fn globals_are_scanned_by_the_gc_bitmaps_and_an_address_in_a_uintptr_is_no_pointer() {
    let failures = Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for version in go_versions() {
            let failures = &failures;
            scope.spawn(move || {
                let fail = |m: String| failures.lock().unwrap().push(m);
                for (build, flags) in BUILDS {
                    let case = format!("Go {version} {build}");
                    let bin = build_fixture("globalbits", &version, flags);
                    let mut fx = Fixture::start(&bin, &[]);
                    fx.stderr.wait_for("ready", Duration::from_secs(30));
                    check_passes(&case, fx.pid(), &fail);
                    check_dump(&case, fx.pid(), &fail);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
