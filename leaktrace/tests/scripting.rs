//! What scripts and CI rely on: the exit status of `--fail-on-leak`, and `--events -`
//! writing the event lines alone to stdout.

mod support;

use std::process::Command;

use support::*;

/// `record --fail-on-leak -- CMD`: the status and leaktrace's stderr.
fn record_status(fixture: &str, fail_on: &[&str]) -> (Option<i32>, String) {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture(fixture, &version, &[]);
    let dir = std::env::temp_dir().join(format!(
        "leaktrace-scripting-{fixture}-{}-{}",
        fail_on.join(""),
        std::process::id()
    ));
    let out = Command::new(leaktrace_bin())
        .args(["record", "-o"])
        .arg(&dir)
        .args(["--min-age", "1s", "--snapshot-interval", "300ms"])
        .args(fail_on)
        .arg("--")
        .arg(&bin)
        .args(["-linger", "3s"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The classic leak (high confidence) fails `--fail-on-leak` and `--fail-on-leak high`;
/// its fixed twin passes even `--fail-on-leak low`; without the option a leak exits 0.
#[test]
fn fail_on_leak_exits_3_when_a_group_is_confident_enough() {
    let cases: [(&str, &[&str], i32); 4] = [
        ("classicleak", &["--fail-on-leak"], 3),
        ("classicleak", &["--fail-on-leak", "high"], 3),
        ("classicleak", &[], 0),
        ("classicleak-fixed", &["--fail-on-leak", "low"], 0),
    ];
    let runs: Vec<_> = cases
        .iter()
        .map(|&(fixture, args, _)| std::thread::spawn(move || record_status(fixture, args)))
        .collect();
    for (run, (fixture, args, want)) in runs.into_iter().zip(cases) {
        let (status, stderr) = run.join().unwrap();
        assert_eq!(status, Some(want), "{fixture} {args:?}:\n{stderr}");
        assert_eq!(
            stderr.contains("(--fail-on-leak): exit status 3"),
            want == 3,
            "{stderr}"
        );
    }
}

/// `record --events - -- CMD`: stdout is the event lines and nothing else (each a JSON
/// object, the leaked sends among them); the report and the command's own output are on
/// stderr.
#[test]
fn events_to_stdout_leave_stdout_to_the_events() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let dir =
        std::env::temp_dir().join(format!("leaktrace-scripting-events-{}", std::process::id()));
    let out = Command::new(leaktrace_bin())
        .args(["record", "-o"])
        .arg(&dir)
        .args(["--min-age", "1s", "--snapshot-interval", "300ms"])
        .args(["--max-overhead", "off", "--events", "-", "--"])
        .arg(&bin)
        .args(["-linger", "3s"])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not an event line: {l:?}"))
        })
        .collect();
    let sends = events
        .iter()
        .filter(|e| e["kind"] == "park" && e["reason"] == "chan send")
        .count();
    assert!(
        sends >= 5,
        "{sends} chan send parks in {} events",
        events.len()
    );
    for e in &events {
        assert!(e["ts_ns"].is_u64() && e["kind"].is_string(), "{e}");
    }
    assert!(
        stderr.contains("suspected goroutine leak group"),
        "the report is not on stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("5 requests, 5 failed"),
        "the command's output is not on stderr:\n{stderr}"
    );
}
