//! The memory timeline: RSS, the Go heap and the target's madvise calls (syscall
//! tracepoint), side by side. A burst-and-release program returns its memory with madvise;
//! the bytes leaktrace counts agree with the program's own HeapReleased growth, on Go 1.21
//! to 1.27, and nothing is reported as a leak.

mod support;

use support::*;

#[test]
fn bytes_returned_with_madvise_agree_with_heap_released() {
    for version in go_versions() {
        let bin = build_fixture("burst", &version, &[]);
        let (r, stdout) = record(
            &format!("burst-{version}"),
            &[
                "--probes",
                "none",
                "-d",
                "30s",
                "--min-age",
                "1s",
                "--snapshot-interval",
                "250ms",
                "--",
                bin.to_str().unwrap(),
                "-mib",
                "512",
                "-linger",
                "1s",
            ],
        );
        let released: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("released "))
            .unwrap_or_else(|| panic!("Go {version}: {stdout}"))
            .parse()
            .unwrap();
        let timeline = r["memory_timeline"].as_array().unwrap();
        assert!(timeline.len() >= 3, "Go {version}: {timeline:?}");
        let last = timeline.last().unwrap();
        let dontneed = last["madvise_bytes"]["DONTNEED"].as_u64().unwrap();
        // The program's release is at least 512 MiB; madvise also counts what the scavenger
        // returned before the program's first ReadMemStats (a few MiB at most), so the two
        // agree within 16 MiB.
        assert!(
            released >= 500 << 20,
            "Go {version}: the fixture released {released}"
        );
        assert!(
            dontneed >= released && dontneed <= released + (16 << 20),
            "Go {version}: madvise(DONTNEED) {dontneed} bytes, HeapReleased grew {released}"
        );
        let peak = timeline
            .iter()
            .map(|p| p["HeapInuse"].as_u64().unwrap())
            .max()
            .unwrap();
        assert!(
            peak >= 512 << 20,
            "Go {version}: the burst is seen in HeapInuse: {peak}"
        );
        assert!(
            last["HeapInuse"].as_u64().unwrap() < 16 << 20,
            "Go {version}: heap in use fell: {last}"
        );
        assert_eq!(
            r["leaks"].as_array().unwrap().len(),
            0,
            "Go {version}: not a leak"
        );
        assert_eq!(
            r["memory_verdict"]["kind"], "not_a_leak_pages_not_yet_returned",
            "Go {version}: {:#}",
            r["memory_verdict"]
        );
        // Each madvise call is in the size histogram, and they add up to about the total.
        let sizes = &r["histograms"]["madvise_bytes"];
        assert!(
            sizes["count"].as_u64().unwrap() >= 1 && sizes["max"].as_u64().unwrap() >= 1 << 20,
            "Go {version}: {sizes}"
        );
    }
}

/// A global map that grows per request: the heap grows, goroutines do not, and the map
/// insertion is the top growing allocation site; from the runtime's own heap profile when
/// the program links runtime/pprof, from the refill/large-allocation sampler when the linker
/// turned memory profiling off.
#[test]
fn heap_growth_without_goroutine_growth_points_at_the_map_insertion() {
    for version in go_versions() {
        for (variant, flags, source) in [
            ("pprof", &["-tags", "pprof"][..], "runtime heap profile"),
            ("plain", &[][..], "span refills"),
        ] {
            let bin = build_fixture("sessionmap", &version, flags);
            let (r, stdout) = record(
                &format!("sessionmap-{variant}-{version}"),
                &[
                    // Only the sampler's probes. Each 8 KiB buffer is a span of its own, so
                    // the refill probe fires about 800 times/s here: near the 1% default at
                    // the ~10 us a hit this machine measures, and over it when a noisy run
                    // measures more (seen in CI: 1.2%). This test is about attribution;
                    // budget.rs is about shedding.
                    "--probes",
                    "none",
                    "--max-overhead",
                    "10",
                    "-d",
                    "30s",
                    "--snapshot-interval",
                    "500ms",
                    "--",
                    bin.to_str().unwrap(),
                    "-requests",
                    "500",
                    "-seconds",
                    "6",
                ],
            );
            let what = format!("Go {version} {variant}");
            assert_eq!(r["probes"]["shed"], serde_json::json!([]), "{what}");
            assert!(stdout.contains("sessions "), "{what}: {stdout}");
            let v = &r["memory_verdict"];
            assert_eq!(
                v["kind"], "heap_growth_without_goroutine_growth",
                "{what}: {v:#}"
            );
            let top = &v["top_growing_sites"][0];
            assert_eq!(top["function"], "main.handle", "{what}: {v:#}");
            assert_eq!(
                top["line"].as_u64().unwrap(),
                u64::from(line_of_in("sessionmap", "payload: make([]byte")),
                "{what}: {top}"
            );
            let sites = &r["allocation_sites"];
            assert!(
                sites["source"].as_str().unwrap().starts_with(source),
                "{what}: {sites:#}"
            );
            // 500 requests/s for 6 s, 8 KiB each: about 24 MiB allocated at that site.
            let bytes = top["alloc_bytes"].as_u64().unwrap();
            assert!(
                (12 << 20..=48 << 20).contains(&bytes),
                "{what}: {bytes} bytes allocated at the top site"
            );
        }
    }
}

/// The heap grows through a global map while a few goroutines leak, proven, holding next
/// to nothing: the growth is not blamed on them (heap growth, not a goroutine leak holding
/// the heap), and the explanation says how little the proven group pins. The oldest Go.
#[test]
fn a_proven_leak_that_pins_little_is_not_blamed_for_heap_growth() {
    let version = go_versions().remove(0);
    let bin = build_fixture("sessionmap", &version, &[]);
    let (r, stdout) = record(
        "sessionmap-proven-leak",
        &[
            "--probes",
            "none",
            "-d",
            "20s",
            "--",
            bin.to_str().unwrap(),
            "-requests",
            "500",
            "-seconds",
            "18",
            "-leaks",
            "5",
        ],
    );
    let leak = r["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["site"]["function"] == "main.leak")
        .unwrap_or_else(|| panic!("the leak is not reported: {:#}\n{stdout}", r["leaks"]));
    assert_eq!(leak["confidence"], "proven", "{leak:#}");
    assert!(
        leak["pinned"]["method"]
            .as_str()
            .unwrap()
            .starts_with("reachability:"),
        "{leak:#}"
    );
    let v = &r["memory_verdict"];
    assert_eq!(
        v["kind"], "heap_growth_without_goroutine_growth",
        "{v:#}\n{:#}",
        r["leaks"]
    );
    assert!(
        v["explanation"]
            .as_str()
            .unwrap()
            .contains("the 1 proven leak group(s) pin only"),
        "{v:#}"
    );
}

/// Where the fallback sampler does not fit the budget (judged before attaching to a running
/// program), it is not dropped: it runs in windows as short and rare as the budget pays for,
/// and the allocation sites say they come from windows.
#[test]
fn the_sampler_over_a_tiny_budget_runs_in_rare_windows() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("sessionmap", &version, &[]);
    let fx = Fixture::start(&bin, &["-requests", "500", "-seconds", "8"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let pid = fx.pid().to_string();
    let (r, _) = record(
        "sessionmap-unsampled",
        &["-p", &pid, "-d", "2s", "--max-overhead", "0.001"],
    );
    let p = &r["probes"];
    assert!(
        p["shed"].to_string().contains("placed in short windows"),
        "{p:#}"
    );
    let s = &p["sampling"]["runtime.(*mcache).refill"];
    assert_eq!(s["mode"], "windows", "{p:#}");
    assert!(
        s["duty"].as_f64().unwrap() < 0.01 && s["windows"].as_u64().unwrap() <= 3,
        "{p:#}"
    );
    let sites = &r["allocation_sites"];
    assert!(
        sites["source"]
            .as_str()
            .unwrap()
            .contains("probes in windows"),
        "{sites:#}"
    );
}
