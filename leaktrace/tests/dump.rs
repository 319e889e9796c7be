//! `leaktrace dump` against the target's own view of itself: `runtime.Stack(all)` and
//! `runtime.ReadMemStats` asked of the same process right after the dump, for every Go
//! version under test and every build mode; then a hundred thousand goroutines, a target
//! that exits while it is read, and PIDs that are not Go programs.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

/// The ways the fixtures are built. Stripped ones (`-s -w`) have no symbol table: leaktrace
/// finds `runtime.allgs`, `gcController` and `memstats` through the code (tracee::globals).
const BUILDS: [(&str, &[&str]); 4] = [
    ("default", &[]),
    ("pie", &["-buildmode=pie"]),
    ("stripped", &["-ldflags=-s -w"]),
    ("pie-stripped", &["-buildmode=pie", "-ldflags=-s -w"]),
];

/// Runs `leaktrace ARGS`, killing it after `timeout`; returns (stdout, stderr, exit code).
fn leaktrace(args: &[&str], timeout: Duration) -> (String, String, Option<i32>) {
    let mut child = Command::new(leaktrace_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting leaktrace");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let timeout = patience(timeout);
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("leaktrace {args:?} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    (out.join().unwrap(), err.join().unwrap(), status.code())
}

fn dump_json(pid: u32, extra: &[&str]) -> Result<Value, String> {
    let pid = pid.to_string();
    let mut args = vec!["dump", "-p", &pid, "--json"];
    args.extend_from_slice(extra);
    let (out, err, code) = leaktrace(&args, Duration::from_secs(120));
    if code != Some(0) {
        return Err(format!("exit code {code:?}: {err}"));
    }
    serde_json::from_str(&out).map_err(|e| format!("bad JSON ({e}): {out}"))
}

/// The primitives fixture, answering "stack" and "memstats" on stdin.
struct Primitives {
    fixture: Fixture,
    stdout: Lines,
}

impl Primitives {
    fn start(bin: &Path) -> Self {
        let mut fixture = Fixture::start(bin, &[]);
        let stdout = Lines::new(fixture.child.stdout.take().unwrap());
        fixture.stderr.wait_for("ready", Duration::from_secs(60));
        Self { fixture, stdout }
    }

    /// Sends `command` and returns the lines between "BEGIN STACK" and "END STACK".
    fn ask(&mut self, command: &str) -> Vec<String> {
        let stdin = self.fixture.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.stdout.wait_for("BEGIN STACK", Duration::from_secs(30));
        let start = self.stdout.seen.len();
        self.stdout.wait_for("END STACK", Duration::from_secs(30));
        self.stdout.seen[start..self.stdout.seen.len() - 1].to_vec()
    }

    fn memstats(&mut self) -> Value {
        let lines = self.ask("memstats");
        serde_json::from_str(&lines.concat()).unwrap()
    }
}

/// A source position: (function, file, line).
type Frame = (String, String, u64);

/// One goroutine as `runtime.Stack` prints it.
#[derive(Debug)]
struct GoGoroutine {
    goid: u64,
    /// The first item between the brackets: the wait reason or status.
    state: String,
    frames: Vec<Frame>,
    /// "...N frames elided..." after the 50th frame of a deep stack.
    elided: u64,
    /// (function, file, line, parent goid).
    created_by: Option<(String, String, u64, u64)>,
}

/// `\t/path/file.go:123 +0x1d` (the offset only on physical frames) to (file, line).
fn parse_position(line: &str) -> (String, u64) {
    let pos = line
        .strip_prefix('\t')
        .expect("position line starts with a tab");
    let pos = match pos.rsplit_once(' ') {
        Some((p, off)) if off.starts_with("+0x") => p,
        _ => pos,
    };
    let (file, line) = pos.rsplit_once(':').expect("file:line");
    (file.to_string(), line.parse().expect("line number"))
}

/// Parses Go's traceback text: headers `goroutine N [state(, N minutes)(, locked to
/// thread)]:`, frames `function(args)` or `function(...)` then `\tfile:line( +0x..)`, and
/// `created by F( in goroutine N)` then `\tfile:line +0x..`.
fn parse_go_stacks(lines: &[String]) -> Vec<GoGoroutine> {
    let mut out: Vec<GoGoroutine> = Vec::new();
    let mut it = lines.iter().peekable();
    while let Some(line) = it.next() {
        if line.is_empty() {
            continue;
        }
        if let Some(n) = line
            .strip_prefix("...")
            .and_then(|l| l.strip_suffix(" frames elided..."))
        {
            out.last_mut().unwrap().elided = n.parse().unwrap();
            continue;
        }
        if let Some(rest) = line.strip_prefix("goroutine ") {
            let (goid, rest) = rest.split_once(' ').unwrap();
            let inner = rest
                .strip_prefix('[')
                .and_then(|r| r.rsplit_once("]:"))
                .unwrap_or_else(|| panic!("bad goroutine header: {line}"))
                .0;
            out.push(GoGoroutine {
                goid: goid.parse().unwrap(),
                state: inner.split(", ").next().unwrap().to_string(),
                frames: Vec::new(),
                elided: 0,
                created_by: None,
            });
            continue;
        }
        let g = out
            .last_mut()
            .unwrap_or_else(|| panic!("frame before any header: {line}"));
        let pos = it
            .next()
            .unwrap_or_else(|| panic!("no position after {line}"));
        let (file, lineno) = parse_position(pos);
        if let Some(c) = line.strip_prefix("created by ") {
            let (function, parent) = match c.split_once(" in goroutine ") {
                Some((f, p)) => (f, p.parse().unwrap()),
                None => (c, 0),
            };
            g.created_by = Some((function.to_string(), file, lineno, parent));
        } else {
            let open = line
                .rfind('(')
                .unwrap_or_else(|| panic!("bad frame: {line}"));
            g.frames.push((line[..open].to_string(), file, lineno));
        }
    }
    out
}

fn frames_of(v: &Value) -> Vec<Frame> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap().to_string(),
                f["file"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn created_by_of(v: &Value) -> Option<(String, String, u64, u64)> {
    (!v.is_null()).then(|| {
        (
            v["function"].as_str().unwrap().to_string(),
            v["file"].as_str().unwrap().to_string(),
            v["line"].as_u64().unwrap(),
            v["goid"].as_u64().unwrap(),
        )
    })
}

/// Go's name for the wait of `WaitGroup.Wait`: its own reason from 1.24 on
/// (runtime/runtime2.go waitReasonSyncWaitGroupWait), a plain semaphore before.
fn wait_group_reason(version: &str) -> &'static str {
    let minor: u32 = version.split('.').nth(1).unwrap().parse().unwrap();
    if minor >= 24 {
        "sync.WaitGroup.Wait"
    } else {
        "semacquire"
    }
}

/// Each primitive of the fixture: the function that blocks in it, and the wait reason.
fn primitives(version: &str) -> [(&'static str, &'static str); 19] {
    [
        ("main.chanSend", "chan send"),
        ("main.main.func1", "chan receive"),
        ("main.bufferedSend", "chan send"),
        ("main.bufferedRecv", "chan receive"),
        ("main.nilSend", "chan send (nil chan)"),
        ("main.nilRecv", "chan receive (nil chan)"),
        ("main.selectTwo", "select"),
        ("main.selectNoCases", "select (no cases)"),
        ("main.mutexLock", "sync.Mutex.Lock"),
        ("main.rwRLock", "sync.RWMutex.RLock"),
        ("main.rwLock", "sync.RWMutex.Lock"),
        ("main.waitGroupWait", wait_group_reason(version)),
        ("main.condWait", "sync.Cond.Wait"),
        ("main.sleep", "sleep"),
        ("main.ioWait", "IO wait"),
        ("main.relay", "chan receive"),
        ("main.recvGeneric[...]", "chan receive"),
        ("main.parkInDefer", "chan receive"),
        ("main.deep", "chan receive"),
    ]
}

/// Checks every goroutine of `dump --all --json` against `runtime.Stack` taken right after.
/// Returns how many goroutines were compared.
fn check_goroutines(what: &str, version: &str, dump: &Value, go_text: &[String]) -> usize {
    let go = parse_go_stacks(go_text);
    // The goroutine that ran runtime.Stack (main, reading stdin) is "running" in Go's view
    // and was in a read system call during the dump: its stack differs by design.
    let running: BTreeSet<u64> = go
        .iter()
        .filter(|g| g.state == "running")
        .map(|g| g.goid)
        .collect();
    assert_eq!(running.len(), 1, "{what}: one running goroutine in {go:#?}");
    let ours: BTreeMap<u64, &Value> = dump["each"]
        .as_array()
        .expect("--all --json has \"each\"")
        .iter()
        .map(|g| (g["goid"].as_u64().unwrap(), g))
        .filter(|(goid, _)| !running.contains(goid))
        .collect();
    let theirs: BTreeMap<u64, &GoGoroutine> = go
        .iter()
        .filter(|g| !running.contains(&g.goid))
        .map(|g| (g.goid, g))
        .collect();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "{what}: goroutine ids (leaktrace, then runtime.Stack)\n{}",
        go_text.join("\n")
    );
    for (goid, g) in &theirs {
        let o = ours[goid];
        let context = || format!("{what}, goroutine {goid}: leaktrace {o:#}\nGo: {g:#?}");
        assert_eq!(o["wait_reason"], g.state.as_str(), "{}", context());
        assert_eq!(frames_of(&o["stack"]), g.frames, "{}", context());
        assert_eq!(o["elided_frames"], g.elided, "{}", context());
        assert_eq!(
            created_by_of(&o["created_by"]),
            g.created_by,
            "{}",
            context()
        );
    }
    // Every primitive by name, on the goroutine that blocks in it.
    for (function, reason) in primitives(version) {
        let holders: Vec<&&Value> = ours
            .values()
            .filter(|g| frames_of(&g["stack"]).iter().any(|f| f.0 == function))
            .collect();
        assert_eq!(
            holders.len(),
            1,
            "{what}: one goroutine with {function} on its stack"
        );
        assert_eq!(
            holders[0]["wait_reason"], reason,
            "{what}: the goroutine in {function}"
        );
    }
    theirs.len()
}

/// The grouped `dump --json`: the documented fields, with the values they must have here.
fn check_grouped_schema(what: &str, dump: &Value) {
    for key in [
        "pid",
        "executable",
        "go_version",
        "layout_source",
        "goroutine_count",
        "system_goroutines_hidden",
    ] {
        assert!(!dump[key].is_null(), "{what}: no {key} in {dump:#}");
    }
    let groups = dump["goroutines"].as_array().unwrap();
    let mut total = 0;
    for g in groups {
        let count = g["count"].as_u64().unwrap();
        total += count;
        assert!(g["wait_reason"].is_string(), "{what}: {g:#}");
        assert_eq!(g["goids"].as_array().unwrap().len() as u64, count, "{g:#}");
        assert!(
            !frames_of(&g["stack"]).is_empty(),
            "{what}: empty stack {g:#}"
        );
        let c = &g["created_by"];
        assert!(c.is_null() || created_by_of(c).is_some(), "{g:#}");
        let w = &g["waiting_seconds"];
        if g["goids"][0] == 1 {
            continue; // main ran the GC, so it has no g.waitsince
        }
        // The fixture ran a GC after every goroutine had parked, so the GC recorded
        // g.waitsince on all of them.
        let (min, max) = (w["min"].as_f64(), w["max"].as_f64());
        assert!(
            min.is_some() && max.is_some() && min <= max && min >= Some(0.0),
            "{what}: waiting_seconds {w} in {g:#}"
        );
    }
    assert_eq!(
        Some(total),
        dump["goroutine_count"].as_u64(),
        "{what}: groups add up"
    );
    // deep(150) is 151 frames: Go prints 50 + 50 and says 51 were left out.
    let deep: Vec<&Value> = groups
        .iter()
        .filter(|g| frames_of(&g["stack"])[0].0 == "main.deep")
        .collect();
    assert_eq!(deep.len(), 1, "{what}: the deep goroutine");
    assert_eq!(deep[0]["elided_frames"], 51, "{what}: {:#}", deep[0]);
    assert_eq!(frames_of(&deep[0]["stack"]).len(), 100, "{what}");
    assert!(
        groups.iter().all(|g| g["elided_frames"].is_u64()),
        "{what}: elided_frames in every group"
    );
    // The two unbuffered and buffered sends block in different functions: two groups.
    let sends = groups.iter().filter(|g| g["wait_reason"] == "chan send");
    assert_eq!(sends.count(), 2, "{what}: chan send groups");
    let m = &dump["memory"];
    for key in [
        "rss_bytes",
        "rss_anon_bytes",
        "rss_file_bytes",
        "HeapAlloc",
        "HeapInuse",
        "HeapIdle",
        "HeapReleased",
        "HeapSys",
        "TotalAlloc",
        "NumGC",
        "PauseTotalNs",
        "LastGC",
    ] {
        assert!(m[key].is_u64(), "{what}: memory.{key} in {m:#}");
    }
    assert!(m["rss_bytes"].as_u64() > Some(0));
}

/// The heap figures of a dump against `runtime.ReadMemStats` before (`before`) and after
/// (`after`) it. The fixture allocates nothing between the two (its answer is formatted in a
/// buffer allocated up front), and ReadMemStats flushes every P's mcache, so the runtime's
/// own counters that leaktrace reads are exactly those ReadMemStats reports
/// (GO-RUNTIME.md section 5). Returns the differences seen, for the log.
fn check_memory(what: &str, dump: &Value, before: &Value, after: &Value) -> String {
    const PAGE_SLACK: u64 = 64 << 10;
    let m = &dump["memory"];
    let get = |v: &Value, k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{what}: no {k} in {v}"))
    };
    let near = |k: &str, tolerance: u64| {
        let (ours, theirs) = (get(m, k), get(after, k));
        assert!(
            ours.abs_diff(theirs) <= tolerance,
            "{what}: {k}: leaktrace {ours}, ReadMemStats {theirs} (tolerance {tolerance})\n{m:#}\n{after}"
        );
    };
    assert_eq!(
        get(before, "TotalAlloc"),
        get(after, "TotalAlloc"),
        "{what}: the fixture allocated between two ReadMemStats in each of 5 attempts"
    );
    // Counters: nothing allocates or collects in between, so they match exactly.
    near("NumGC", 0);
    near("TotalAlloc", 0);
    // gcController.heapInUse is what ReadMemStats reports as HeapInuse; the background
    // sweeper may still free a span in between: 64 KiB, eight 8 KiB pages.
    near("HeapInuse", PAGE_SLACK);
    // totalAlloc - totalFree lags ReadMemStats by what the per-P mcaches hold unflushed;
    // here they were just flushed, but a busy target may lag up to about 1 MiB.
    near("HeapAlloc", 1 << 20);
    // HeapIdle = heapFree + heapReleased and HeapSys = HeapInuse + HeapIdle: the background
    // scavenger only moves pages from free to released, which changes neither, so they move
    // only with HeapInuse.
    near("HeapIdle", PAGE_SLACK);
    near("HeapSys", PAGE_SLACK);
    // HeapReleased grows while the scavenger returns pages to the OS, which it may do
    // between the reads; in a program that does not allocate it never shrinks, so the dump's
    // figure lies between the two ReadMemStats (plus the same page slack).
    let released = get(m, "HeapReleased");
    let (lo, hi) = (get(before, "HeapReleased"), get(after, "HeapReleased"));
    assert!(
        released + PAGE_SLACK >= lo.min(hi) && released <= lo.max(hi) + PAGE_SLACK,
        "{what}: HeapReleased {released} outside ReadMemStats before {lo} / after {hi}"
    );
    let diffs: Vec<String> = [
        "NumGC",
        "TotalAlloc",
        "HeapAlloc",
        "HeapInuse",
        "HeapIdle",
        "HeapReleased",
        "HeapSys",
    ]
    .iter()
    .filter_map(|k| {
        let d = get(m, k) as i64 - get(after, k) as i64;
        (d != 0).then(|| format!("{k} {d:+}"))
    })
    .collect();
    if diffs.is_empty() {
        "memory exact".into()
    } else {
        format!("memory off by {}", diffs.join(", "))
    }
}

/// The acceptance test of `dump`: every goroutine, wait reason, frame and creation site, and
/// the heap figures, as the target itself reports them, for every Go version and build mode.
#[test]
fn dump_matches_runtime_stack_and_read_memstats() {
    for version in go_versions() {
        for (build, flags) in BUILDS {
            let what = format!("Go {version} {build}");
            let bin = build_fixture("primitives", &version, flags);
            let mut target = Primitives::start(&bin);
            let pid = target.fixture.pid();
            // The runtime allocates on its own now and then (a new M is a heap object), so
            // the dump is bracketed by two ReadMemStats and retried until nothing was
            // allocated between them.
            let mut attempts = 0;
            let (before, each, after) = loop {
                let before = target.memstats();
                let each = dump_json(pid, &["--all"])
                    .unwrap_or_else(|e| panic!("{what}: dump --all failed: {e}"));
                let after = target.memstats();
                attempts += 1;
                if before["TotalAlloc"] == after["TotalAlloc"] || attempts == 5 {
                    break (before, each, after);
                }
            };
            let go_text = target.ask("stack");
            let compared = check_goroutines(&what, &version, &each, &go_text);
            let memory = check_memory(&what, &each, &before, &after);
            println!("{what}: {compared} goroutines as runtime.Stack has them; {memory}");
            let grouped = dump_json(pid, &[]).unwrap_or_else(|e| panic!("{what}: {e}"));
            check_grouped_schema(&what, &grouped);
        }
    }
}

/// A hundred thousand goroutines parked on one channel with one stack: one group, all of
/// them, read while the target keeps a core busy.
#[test]
fn a_hundred_thousand_parked_goroutines_are_one_group() {
    const N: u64 = 100_000;
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("manyparked", &version, &[]);
    let mut fixture = Fixture::start(&bin, &["-n", &N.to_string()]);
    fixture.stderr.wait_for("ready", Duration::from_secs(120));
    let started = Instant::now();
    let dump = dump_json(fixture.pid(), &[]).unwrap();
    println!(
        "Go {version}: dump of {N} goroutines took {:?}",
        started.elapsed()
    );
    let groups = dump["goroutines"].as_array().unwrap();
    let parked = &groups[0];
    assert_eq!(parked["count"].as_u64(), Some(N), "{:#}", groups[0]);
    assert_eq!(parked["goids"].as_array().unwrap().len() as u64, N);
    assert_eq!(parked["wait_reason"], "chan receive");
    assert_eq!(frames_of(&parked["stack"])[0].0, "main.park");
    // main (reading stdin) and the hashing worker.
    assert_eq!(dump["goroutine_count"].as_u64(), Some(N + 2));
}

/// A target that exits while it is being read: the dump either completes or fails with exit
/// code 1 and a message naming the PID; it never crashes.
#[test]
fn a_target_exiting_during_the_dump_is_reported_not_crashed_on() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("manyparked", &version, &[]);
    let (mut completed, mut failed) = (0, 0);
    let mut messages = BTreeSet::new();
    // From right away to after the dump: the exit lands in Target::inspect, in the walk of
    // the goroutines, or after it.
    for i in 0..12u32 {
        let exit_after = format!("{}ms", 1 + i * 60);
        let mut fixture = Fixture::start(
            &bin,
            &["-n", "20000", "-no-worker", "-exit-after", &exit_after],
        );
        fixture.stderr.wait_for("ready", Duration::from_secs(60));
        let pid = fixture.pid().to_string();
        let (out, err, code) = leaktrace(
            &["dump", "-p", &pid, "--all", "--json"],
            Duration::from_secs(60),
        );
        match code {
            Some(0) => {
                let v: Value = serde_json::from_str(&out).unwrap();
                assert!(v["goroutine_count"].as_u64() > Some(0));
                completed += 1;
            }
            Some(1) => {
                assert!(
                    err.starts_with("leaktrace: error: ") && err.contains(&pid),
                    "exit after {exit_after}: unclear error: {err}"
                );
                assert!(!err.contains("panicked"), "{err}");
                messages.insert(err.trim().replace(&pid, "PID"));
                failed += 1;
            }
            _ => panic!("exit after {exit_after}: dump ended with {code:?}: {err}"),
        }
    }
    println!("target exiting during the dump: {completed} complete dumps, {failed} clean errors:");
    for m in messages {
        println!("  {m}");
    }
}

#[test]
fn non_go_and_missing_pids_are_refused_clearly() {
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let (_, err, code) = leaktrace(&["dump", "-p", &pid], Duration::from_secs(30));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("PID {pid}")) && err.contains("not a Go program"),
        "{err}"
    );

    // PIDs above pid_max (at most 2^22) never exist.
    let (_, err, code) = leaktrace(&["dump", "-p", "4194305"], Duration::from_secs(30));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no process with PID 4194305"), "{err}");
}
