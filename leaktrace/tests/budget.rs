//! The overhead budget: leaktrace measures what one probe hit costs on this machine at
//! start-up, and does not place, or sheds, the probes whose cost at that figure would
//! exceed --max-overhead: under a park-heavy load (testdata/go/pipeline: nearly every
//! hand-off parks a goroutine) and an allocation-heavy one (testdata/go/allocloop), attached
//! to a running process (judged before placing) and spawned (judged once placed). The
//! budget does not depend on the Go version, so the newest Go is enough.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

fn newest() -> String {
    go_versions().pop().expect("a Go version")
}

/// report.json's probes.attached.
fn attached(r: &Value) -> Vec<String> {
    r["probes"]["attached"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The estimated cost, as a fraction of a CPU, of the probes still placed at the end: they
/// ran the whole trace, so their hits over the trace are their rate.
fn remaining_cost(r: &Value) -> f64 {
    let p = &r["probes"];
    let seconds = r["observed_seconds"].as_f64().unwrap();
    attached(r)
        .iter()
        .map(|f| {
            // Each probe at what a hit of it costs: on an emulated instruction or not.
            let us = p["hit_cost_us_by_function"][f]
                .as_f64()
                .unwrap_or_else(|| p["hit_cost_us"].as_f64().unwrap());
            p["hits"][f].as_u64().unwrap_or(0) as f64 / seconds * us * 1e-6
        })
        .sum()
}

/// The probes still placed at the end cost at most twice the default budget (1% of a CPU).
/// The budget judges each quarter second as it goes, at the hit cost this run measured (so a
/// slower or faster machine moves both sides alike); this averages the whole trace, whose
/// last quarter second and first 20 ms no check judged: a burst there may pass.
fn assert_remaining_within_budget(r: &Value, how: &str) {
    let cost = remaining_cost(r);
    assert!(
        cost <= 0.02,
        "{how}: the probes left cost an estimated {:.2}% of a CPU: {:#}",
        cost * 100.0,
        r["probes"]
    );
}

/// `record` against `fixture` run with `args`, attached once it runs (`spawn` false) or
/// spawned, with the default budget (1% of a CPU) and `extra` options.
fn traced(fixture: &str, args: &[&str], spawn: bool, extra: &[&str]) -> Value {
    let bin = build_fixture(fixture, &newest(), &[]);
    let name = format!(
        "budget-{fixture}-{}",
        if spawn { "spawn" } else { "attach" }
    );
    let mut opts: Vec<&str> = vec!["-d", "3s"];
    opts.extend(extra);
    if spawn {
        opts.push("--");
        opts.push(bin.to_str().unwrap());
        opts.extend(args);
        opts.extend(["-exit-after", "6s"]);
        return record(&name, &opts).0;
    }
    let mut fx = Fixture::start(&bin, args);
    fx.stderr.wait_for("ready", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let pid = fx.pid().to_string();
    opts.extend(["-p", &pid]);
    record(&name, &opts).0
}

/// `record` as `name` with `opts`, attached to `fixture` run with `args` once it is ready,
/// with no budget (`--max-overhead off`).
fn unbudgeted(name: &str, fixture: &str, args: &[&str], opts: &[&str]) -> Value {
    let bin = build_fixture(fixture, &newest(), &[]);
    let mut fx = Fixture::start(&bin, args);
    fx.stderr.wait_for("ready", Duration::from_secs(20));
    let pid = fx.pid().to_string();
    let opts = [&["-p", pid.as_str(), "--max-overhead", "off"][..], opts].concat();
    record(name, &opts).0
}

#[test]
fn a_probe_hit_is_measured_at_start_up() {
    let r = unbudgeted(
        "budget-calibration",
        "parkrate",
        &["-pairs", "1", "-rate", "100"],
        &["-d", "500ms", "--probes", "park,wake"],
    );
    let p = &r["probes"];
    let us = p["hit_cost_us"].as_f64().unwrap();
    let push = p["hit_cost_push_us"].as_f64().unwrap();
    // 0.3-0.9 us on bare metal, 5-20 us on this project's 2-vCPU VMs. The fallback when the
    // measurement fails is exactly 5 us.
    assert!((1.0..=50.0).contains(&us), "a hit measured at {us} us");
    assert_ne!(us, 5.0, "calibration fell back to its assumed figure");
    // A hit on a push, which the kernel emulates from Linux 6.12 on (this project's 6.18),
    // costs less than one it single-steps: 1-1.5 us against 9-12 us on these VMs.
    assert!(
        (0.1..us).contains(&push),
        "a hit on a push measured at {push} us, {us} us otherwise"
    );
    // The probes on the runtime trap on emulated instructions, and are costed as such: with
    // their own program in place of the calibration's where it was timed.
    let calibration = p["hit_cost_program_us"].as_f64().unwrap();
    assert!((0.0..push).contains(&calibration), "{p:#}");
    for f in ["runtime.gopark", "runtime.ready"] {
        let expected = match p["program_us_by_function"][f].as_f64() {
            Some(ran) => push - calibration + ran,
            None => push,
        };
        let cost = p["hit_cost_us_by_function"][f].as_f64().unwrap();
        assert!((cost - expected).abs() < 1e-6, "{f}: {p:#}");
    }
}

/// The fallback allocation sampler's programs walk the target's user stack: the kernel's
/// BPF statistics time them over their first hits, and their hits are priced at that, above
/// the calibration's program (a few reads and one record) and the park probe's.
#[test]
fn a_stack_walking_probe_is_priced_at_what_its_program_runs() {
    let r = unbudgeted(
        "budget-pricing",
        "allocloop",
        &[],
        &["-d", "2s", "--probes", "refill,large,park,wake"],
    );
    let p = &r["probes"];
    let f = "runtime.(*mcache).refill";
    let ran = p["program_us_by_function"][f]
        .as_f64()
        .unwrap_or_else(|| panic!("the refill program was not timed: {p:#}"));
    let calibration = p["hit_cost_program_us"].as_f64().unwrap();
    assert!(
        ran > calibration && calibration > 0.0,
        "the refill program ran {ran} us a hit, the calibration's {calibration} us: {p:#}"
    );
    let push = p["hit_cost_push_us"].as_f64().unwrap();
    let cost = p["hit_cost_us_by_function"][f].as_f64().unwrap();
    assert!(
        (cost - (push - calibration + ran)).abs() < 1e-6 && cost > push,
        "a refill hit priced at {cost} us, a hit on a push {push} us: {p:#}"
    );
    if let Some(park) = p["program_us_by_function"]["runtime.gopark"].as_f64() {
        assert!(ran > park, "{p:#}");
    }
}

#[test]
fn a_park_heavy_load_sheds_park_and_wake() {
    for spawn in [false, true] {
        let r = traced("pipeline", &[], spawn, &[]);
        let how = if spawn { "spawned" } else { "attached" };
        let shed = r["probes"]["shed"].as_array().unwrap();
        assert!(!shed.is_empty(), "{how}: nothing shed: {:#}", r["probes"]);
        let left = attached(&r);
        assert!(
            !left
                .iter()
                .any(|f| f == "runtime.gopark" || f == "runtime.ready"),
            "{how}: park/wake still placed: {:#}",
            r["probes"]
        );
        assert_remaining_within_budget(&r, how);
    }
}

#[test]
fn an_allocation_heavy_load_does_not_keep_the_alloc_probe() {
    for spawn in [false, true] {
        let r = traced("allocloop", &[], spawn, &["--probes", "default,alloc"]);
        let how = if spawn { "spawned" } else { "attached" };
        assert!(
            !attached(&r).iter().any(|f| f == "runtime.mallocgc"),
            "{how}: the alloc probe is still placed: {:#}",
            r["probes"]
        );
        let shed = r["probes"]["shed"].to_string();
        assert!(
            shed.contains("alloc"),
            "{how}: the alloc probe was not shed: {:#}",
            r["probes"]
        );
        assert_remaining_within_budget(&r, how);
    }
}

/// Before placing probes on a running target, leaktrace reads how often its goroutines
/// stop from the runtime's own sample of them (`sched.timeToRun`). Paced ping-pong
/// hand-offs (testdata/go/parkrate) are the hard case: each goroutine moves thousands of
/// times between two reads, and a hand-off through `runnext` leaves the Ps' schedtick
/// alone. The estimate must be near what the park probe then counts.
#[test]
fn the_estimate_before_attaching_is_close_to_the_parks_then_counted() {
    let bin = build_fixture("parkrate", &newest(), &[]);
    // 4,000 exchanges/s, each parking two goroutines.
    let mut fx = Fixture::start(&bin, &["-pairs", "4", "-rate", "4000"]);
    fx.stderr.wait_for("ready", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let pid = fx.pid().to_string();
    let (r, _) = record(
        "budget-estimate",
        &[
            "-p",
            &pid,
            "-d",
            "3s",
            "--probes",
            "park,wake",
            // Never shed: the parks counted must cover the whole trace, on any machine.
            "--max-overhead",
            "off",
        ],
    );
    let p = &r["probes"];
    let estimated = p["estimated_before_attach"]["state_changes_per_second"]
        .as_f64()
        .unwrap();
    let parks = p["hits"]["runtime.gopark"].as_u64().unwrap() as f64
        / r["observed_seconds"].as_f64().unwrap();
    // It aims at 8,000; a loaded machine (both CPUs busy, the probes at 20-30 us a hit)
    // keeps it near 3,000. The estimate is judged against what it really did.
    assert!(
        parks > 1000.0,
        "the fixture parked only {parks:.0} times/s: {p:#}"
    );
    // Within 4x either way: the other tests of this file load the CPUs meanwhile, and the
    // estimate is 100 ms of a paced load. The old estimate, which counted each goroutine
    // that moved once, read 0-2% of the parks here.
    let ratio = estimated / parks;
    assert!(
        (0.25..=4.0).contains(&ratio),
        "estimated {estimated:.0} state changes/s before attaching, then counted {parks:.0} parks/s: {p:#}"
    );
}

/// A targeted probe is tried for a few ms before it stays. At a cold site (testdata/go/
/// classicleak: five producers blocked for good on their send, passed by nobody since) the
/// trial measures next to nothing: the probe stays on, and its silence is evidence that
/// none of the group moved on.
#[test]
fn a_cold_site_stays_on_after_its_trial_and_gives_its_evidence() {
    let bin = build_fixture("classicleak", &newest(), &[]);
    let mut fx = Fixture::start(&bin, &["-hold"]);
    fx.stderr.wait_for("holding", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let pid = fx.pid().to_string();
    let (r, stdout) = record(
        "budget-cold-site",
        &[
            "-p",
            &pid,
            "-d",
            "5s",
            "--min-age",
            "1s",
            "--snapshot-interval",
            "1s",
        ],
    );
    let p = &r["probes"];
    let sites = p["sites"].as_array().unwrap();
    let produce = sites
        .iter()
        .find(|s| s["function"] == "main.produce")
        .unwrap_or_else(|| panic!("no targeted probe after main.produce's send: {p:#}"));
    assert_eq!(produce["mode"], "continuous", "{p:#}");
    assert!(
        produce["trial_ms"].as_f64().unwrap() < 100.0
            && produce["cost"].as_f64().unwrap() <= produce["allowed"].as_f64().unwrap(),
        "{p:#}"
    );
    assert!(
        attached(&r)
            .iter()
            .any(|f| f == "(sites of suspected leaks)"),
        "{p:#}"
    );
    assert_eq!(
        p["sampling"]["(sites of suspected leaks)"]["mode"], "continuous",
        "{p:#}"
    );
    let leak = &r["leaks"][0];
    assert_eq!(leak["site"]["function"], "main.produce", "{r:#}");
    assert!(
        leak["evidence"].as_array().unwrap().iter().any(|e| e
            .as_str()
            .unwrap()
            .contains("none of them moved on past the blocking call")),
        "the targeted probe's silence is not in the evidence: {leak:#}"
    );
    assert!(
        stdout.contains("targeted probes") && stdout.contains("continuous"),
        "the text report does not list the targeted probes:\n{stdout}"
    );
}
