//! The reachability pass scans goroutine stacks by the compiler's stack maps, as Go's GC does,
//! on every Go version under test, default, stripped and PIE builds, against
//! `testdata/go/reach`: `main.spawnDeadSlot` makes a channel, starts `main.leakDeadSlot` on
//! it and sleeps for an hour, its frame still holding the channel in a stack slot that is
//! dead from the `go` statement on. By the maps that goroutine is unreachable (Go's own
//! detector finds it too); a conservative scan of the same process takes the stale slot for
//! a pointer and keeps it live. Every goroutine a conservative pass finds unreachable, the
//! precise one finds too (it scans a subset of the same words), and no control is ever
//! unreachable.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::Duration,
};

use leaktrace::{
    census::{
        data_roots::GlobalScan,
        goroutines,
        reach::{self, Pass, PassLimits},
        stackmaps::StackMode,
    },
    tracee::Target,
};
use support::*;

const BUILDS: [(&str, &[&str]); 3] = [
    ("default", &[]),
    ("stripped", &["-ldflags=-s -w"]),
    ("pie", &["-buildmode=pie"]),
];

const DEAD_SLOT: &str = "main.leakDeadSlot";

/// The innermost `main.` function of every goroutine, by g address.
fn main_functions(target: &Target) -> BTreeMap<u64, String> {
    goroutines::walk(target)
        .unwrap()
        .into_iter()
        .filter_map(|g| {
            let f = g.stack.iter().find(|f| f.function.starts_with("main."))?;
            Some((g.g_addr, f.function.to_string()))
        })
        .collect()
}

fn unreachable(by_g: &BTreeMap<u64, String>, pass: &Pass) -> BTreeSet<String> {
    pass.unreachable
        .iter()
        .map(|b| by_g.get(&b.g_addr).cloned().unwrap_or_else(|| "?".into()))
        .collect()
}

fn check(case: &str, pid: u32, fail: &dyn Fn(String)) -> String {
    let target = Target::inspect(pid).unwrap();
    let by_g = main_functions(&target);
    let scan = |mode| {
        reach::pass_scanning(&target, PassLimits::default(), GlobalScan::GcBitmaps, mode).unwrap()
    };
    let precise = scan(StackMode::Precise);
    let conservative = scan(StackMode::Conservative);
    if precise.bounded.is_some() || conservative.bounded.is_some() {
        fail(format!("{case}: a pass hit its bound"));
    }
    let (p, c) = (
        unreachable(&by_g, &precise),
        unreachable(&by_g, &conservative),
    );
    if !p.contains(DEAD_SLOT) {
        fail(format!(
            "{case}: by the stack maps, {DEAD_SLOT} is live: {p:?}"
        ));
    }
    if c.contains(DEAD_SLOT) {
        fail(format!(
            "{case}: conservatively, {DEAD_SLOT} is unreachable: the fixture's slot is not stale"
        ));
    }
    for f in p.iter().chain(&c) {
        if !f.starts_with("main.leak") && f != "main.main" {
            fail(format!("{case}: {f} found unreachable: it is not a leak"));
        }
    }
    if !c.is_subset(&p) {
        fail(format!(
            "{case}: unreachable conservatively but not by the maps: {:?}",
            c.difference(&p).collect::<Vec<_>>()
        ));
    }
    let s = precise.stacks;
    if s.mode != StackMode::Precise || s.precise_frames == 0 {
        fail(format!("{case}: stacks not scanned by their maps: {s:?}"));
    }
    // Only the goroutines not stopped at a safe point (running ones) are scanned whole.
    if s.conservative_stacks > 2 {
        fail(format!(
            "{case}: {} stacks scanned whole: {s:?}",
            s.conservative_stacks
        ));
    }
    let cs = conservative.stacks;
    if cs.mode != StackMode::Conservative || cs.precise_frames != 0 {
        fail(format!("{case}: a conservative pass used the maps: {cs:?}"));
    }
    format!(
        "{case}: {} unreachable by the maps, {} conservatively; {}",
        p.len(),
        c.len(),
        s.summary()
    )
}

#[test]
fn dead_slots_do_not_keep_leaks_alive() {
    let failures = Mutex::new(Vec::<String>::new());
    let table = Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for version in go_versions() {
            let (failures, table) = (&failures, &table);
            scope.spawn(move || {
                for (build, flags) in BUILDS {
                    let case = format!("Go {version} {build}");
                    let bin = build_fixture("reach", &version, flags);
                    let mut fx = Fixture::start(&bin, &["-mode", "all"]);
                    fx.stderr.wait_for("ready", Duration::from_secs(10));
                    let fail = |m: String| failures.lock().unwrap().push(m);
                    let line = check(&case, fx.pid(), &fail);
                    table.lock().unwrap().push(line);
                }
            });
        }
    });
    let mut table = table.into_inner().unwrap();
    table.sort();
    println!("{}", table.join("\n"));
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
