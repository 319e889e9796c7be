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
                "128",
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
        // The program's release is at least 128 MiB; madvise also counts what the scavenger
        // returned before the program's first ReadMemStats (a few MiB at most), so the two
        // agree within 16 MiB.
        assert!(
            released >= 120 << 20,
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
            peak >= 128 << 20,
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
    }
}
