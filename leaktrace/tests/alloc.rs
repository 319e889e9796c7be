//! Exact allocation tracing (`--alloc exact`): every allocation entry of the target's Go version
//! (mallocgc, or Go 1.27's size-specialized functions), counted per goroutine in the kernel,
//! and attributed to the leak group that made them. Go 1.21 to 1.27, spawn mode.

mod support;

use support::*;

#[test]
fn a_leaked_goroutines_allocations_are_counted_exactly() {
    const BIG: u64 = 1000;
    const SMALL: u64 = 1000;
    for version in go_versions() {
        let bin = build_fixture("allocs", &version, &[]);
        let (big, small) = (BIG.to_string(), SMALL.to_string());
        let (r, _) = record(
            &format!("allocs-{version}"),
            &[
                "--alloc",
                "exact",
                "-d",
                "20s",
                "--min-age",
                "1s",
                "--snapshot-interval",
                "500ms",
                "--",
                bin.to_str().unwrap(),
                "-n",
                &big,
                "-small",
                &small,
                "-linger",
                "2500ms",
            ],
        );
        let leak = r["leaks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["site"]["function"] == "main.allocator")
            .unwrap_or_else(|| panic!("Go {version}: no leak at main.allocator: {:#}", r["leaks"]));
        assert_eq!(leak["wait_reason"], "select (no cases)", "Go {version}");
        let (count, bytes) = (
            leak["allocated"]["count"].as_u64().unwrap(),
            leak["allocated"]["bytes"].as_u64().unwrap(),
        );
        // The fixture's own allocations, plus the few the runtime makes on this goroutine when
        // its allocations start a GC (gcStart creating mark workers: seen 0 to 9 objects,
        // 240 bytes, depending on the version). Missing Go 1.27's size-specialized entries
        // would lose the 1000 small ones; counting a hit twice would add about as many.
        assert!(
            (BIG + SMALL..=BIG + SMALL + 32).contains(&count),
            "Go {version}: {count} allocations"
        );
        let expected = BIG * 4096 + SMALL * 16;
        assert!(
            (expected..=expected + 32 * 1024).contains(&bytes),
            "Go {version}: {bytes} bytes, expected {expected}"
        );
        assert!(
            r["allocations"]["count"].as_u64().unwrap() >= count,
            "Go {version}"
        );
    }
}
