//! The live trace (`leaktrace -p PID`) against real Go processes and the real kernel, for
//! every Go version under test.

mod support;

use std::{collections::BTreeMap, fs, time::Duration};

use support::*;

fn events(path: &std::path::Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// N goroutines each block once on an unbuffered send; main then receives N values. leaktrace
/// must see exactly N parks with wait reason "chan send" on exactly those goroutine ids, and
/// exactly one wake-up of each, done by main (goroutine 1).
#[test]
fn blocking_sends_are_parked_and_woken_on_the_right_goroutines() {
    const N: usize = 25;
    for version in go_versions() {
        let bin = build_fixture("chansend", &version, &[]);
        let mut fixture = Fixture::start(&bin, &["-n", &N.to_string()]);
        fixture.stderr.wait_for("ready", Duration::from_secs(10));
        let log = tempfile(&format!("chansend-{version}.jsonl"));
        let tracer = Tracer::attach(
            fixture.pid(),
            &[
                "--probes",
                "all",
                "--max-overhead",
                "off",
                "--events",
                log.to_str().unwrap(),
            ],
        );
        let gopark = probe_address(&bin, "runtime.gopark");
        assert_eq!(
            first_byte_in_target(fixture.pid(), gopark),
            0xcc,
            "Go {version}: no uprobe on gopark"
        );
        fixture.go_on();
        let (out, code) = fixture.finish();
        assert_eq!(code, Some(0), "Go {version}: fixture failed: {out}");
        let senders: Vec<u64> = out
            .lines()
            .filter_map(|l| l.strip_prefix("sender goid "))
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(senders.len(), N);
        let (stdout, stderr, code) = tracer.finish(Duration::from_secs(20));
        assert_eq!(code, Some(0), "Go {version}: {stderr:?}");
        assert!(
            stderr.iter().any(|l| l.contains("exited")),
            "Go {version}: {stderr:?}"
        );
        assert!(
            stdout.contains("chan send"),
            "Go {version}: summary lacks chan send:\n{stdout}"
        );

        let evs = events(&log);
        let mut parks: BTreeMap<u64, usize> = BTreeMap::new();
        let mut wakes: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for e in &evs {
            let goid = e["goid"].as_u64().unwrap();
            match e["kind"].as_str().unwrap() {
                "park" if e["reason"] == "chan send" => *parks.entry(goid).or_default() += 1,
                "wake" if senders.contains(&goid) => wakes
                    .entry(goid)
                    .or_default()
                    .push(e["waker_goid"].as_u64().unwrap()),
                _ => {}
            }
        }
        let expected: BTreeMap<u64, usize> = senders.iter().map(|&g| (g, 1)).collect();
        assert_eq!(
            parks, expected,
            "Go {version}: chan send parks by goroutine"
        );
        for &g in &senders {
            assert_eq!(
                wakes.get(&g),
                Some(&vec![1]),
                "Go {version}: wake-ups of goroutine {g}"
            );
        }
        let park = evs.iter().find(|e| e["reason"] == "chan send").unwrap();
        assert_eq!(park["caller"], "runtime.chansend", "Go {version}: {park}");

        // Creation (at newproc1's RETs) and exit probes: each sender created by goroutine 1
        // at the `go` statement in main.main, and each one exiting.
        let kind = |k: &'static str| evs.iter().filter(move |e| e["kind"] == k);
        let created: BTreeMap<u64, &serde_json::Value> = kind("create")
            .map(|e| (e["goid"].as_u64().unwrap(), e))
            .collect();
        let exited: Vec<u64> = kind("exit").map(|e| e["goid"].as_u64().unwrap()).collect();
        for &g in &senders {
            let c = created
                .get(&g)
                .unwrap_or_else(|| panic!("Go {version}: no create record for {g}"));
            assert_eq!(c["parent_goid"], 1, "Go {version}: {c}");
            assert_eq!(c["go_statement"][0], "main.main", "Go {version}: {c}");
            assert!(exited.contains(&g), "Go {version}: no exit record for {g}");
        }
        // Channel probes: every sender's send on `ch`, and main's N receives from it.
        let sends = kind("chansend")
            .filter(|e| senders.contains(&e["goid"].as_u64().unwrap()))
            .count();
        assert!(
            sends >= 2 * N,
            "Go {version}: each sender sends its id and its value: {sends}"
        );
        let recvs = kind("chanrecv").filter(|e| e["goid"] == 1).count();
        assert!(
            recvs >= 2 * N,
            "Go {version}: main receives ids and values: {recvs}"
        );
    }
}

/// The target behaves the same traced and untraced: same output, same exit status.
#[test]
fn traced_and_untraced_runs_print_the_same() {
    for version in go_versions() {
        for name in ["classicleak", "classicleak-fixed"] {
            let bin = build_fixture(name, &version, &[]);
            let args = ["-wait-stdin", "-requests", "20"];
            let mut plain = Fixture::start(&bin, &args);
            plain.stderr.wait_for("ready", Duration::from_secs(10));
            plain.go_on();
            let untraced = plain.finish();

            let mut traced = Fixture::start(&bin, &args);
            traced.stderr.wait_for("ready", Duration::from_secs(10));
            let tracer = Tracer::attach(traced.pid(), &[]);
            traced.go_on();
            let traced_result = traced.finish();
            let (stdout, _, code) = tracer.finish(Duration::from_secs(20));
            assert_eq!(code, Some(0));
            assert_eq!(traced_result, untraced, "Go {version} {name}");
            assert_eq!(
                untraced.1,
                Some(1),
                "the fixture reports its failed requests"
            );
            assert!(
                stdout.contains("chan receive"),
                "Go {version} {name}: {stdout}"
            );
        }
    }
}

/// After leaktrace exits, by --duration or by SIGINT mid-trace, the target's code is as it
/// was (no int3 left at the probed functions) and none of leaktrace's programs is loaded.
#[test]
fn no_probe_remains_after_exit() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let mut fixture = Fixture::start(&bin, &["-hold"]);
    fixture.stderr.wait_for("holding", Duration::from_secs(10));
    let pid = fixture.pid();
    let addrs = [
        probe_address(&bin, "runtime.gopark"),
        probe_address(&bin, "runtime.ready"),
    ];
    let before: Vec<u8> = addrs
        .iter()
        .map(|&a| first_byte_in_target(pid, a))
        .collect();
    assert!(before.iter().all(|&b| b != 0xcc));

    for how in ["duration", "sigint", "sigterm"] {
        // The probes must be in place whatever a hit costs here: no budget.
        let extra: &[&str] = if how == "duration" {
            &["--max-overhead", "off", "-d", "1500ms"]
        } else {
            &["--max-overhead", "off"]
        };
        let tracer = Tracer::attach(pid, extra);
        let during: Vec<u8> = addrs
            .iter()
            .map(|&a| first_byte_in_target(pid, a))
            .collect();
        assert_eq!(
            during,
            vec![0xcc, 0xcc],
            "{how}: uprobes in place while tracing"
        );
        let programs = programs_held_by(tracer.child.id());
        assert_eq!(
            programs.len(),
            leaktrace::probes::Probe::ALL.len() + 1,
            "{how}: leaktrace holds one program per probe, and the madvise tracepoint's"
        );
        std::thread::sleep(Duration::from_millis(1200));
        match how {
            "sigint" => tracer.signal(libc::SIGINT),
            "sigterm" => tracer.signal(libc::SIGTERM),
            _ => {}
        }
        let (stdout, stderr, code) = tracer.finish(Duration::from_secs(10));
        assert_eq!(code, Some(0), "{how}: {stderr:?}");
        assert!(
            stderr.iter().any(|l| l.contains("all probes detached")),
            "{how}: {stderr:?}"
        );
        // The first line comes a second after attaching, stamped with the time since
        // leaktrace started: 1 s, or more when attaching took a while on a loaded machine.
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with('[') && l.contains("s] parked")),
            "{how}: one live line per second:\n{stdout}"
        );
        let after: Vec<u8> = addrs
            .iter()
            .map(|&a| first_byte_in_target(pid, a))
            .collect();
        assert_eq!(after, before, "{how}: the target's code is restored");
        assert_eq!(
            still_loaded(&programs),
            Vec::<u32>::new(),
            "{how}: programs left loaded"
        );
    }
    let (out, _) = fixture.finish();
    assert!(out.contains("5 requests, 5 failed"));
}

fn run_leaktrace(args: &[&str]) -> (String, Option<i32>) {
    let out = std::process::Command::new(leaktrace_bin())
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

#[test]
fn a_pid_that_does_not_exist_is_refused() {
    let (err, code) = run_leaktrace(&["-p", "4194305"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no process with PID 4194305"), "{err}");
}

#[test]
fn a_program_that_is_not_go_is_refused() {
    let mut sleep = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let (err, code) = run_leaktrace(&["-p", &sleep.id().to_string()]);
    sleep.kill().unwrap();
    sleep.wait().unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a Go program"), "{err}");
    assert!(err.contains("sleep"), "names the binary: {err}");
}

#[test]
fn missing_privileges_are_named() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let mut fixture = Fixture::start(&bin, &["-hold"]);
    fixture.stderr.wait_for("holding", Duration::from_secs(10));
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(leaktrace_bin())
        .args(["-p", &fixture.pid().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("missing privileges: CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE"),
        "{err}"
    );
    assert!(err.contains("run leaktrace as root"), "{err}");
}

#[test]
fn a_target_that_exits_mid_trace_ends_the_trace_cleanly() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let mut fixture = Fixture::start(&bin, &["-hold"]);
    fixture.stderr.wait_for("holding", Duration::from_secs(10));
    let pid = fixture.pid();
    let tracer = Tracer::attach(pid, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = fixture.finish(); // closes stdin: the fixture exits
    let (_, stderr, code) = tracer.finish(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains(&format!("PID {pid} exited"))),
        "{stderr:?}"
    );
}

fn tempfile(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("leaktrace-test-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A goroutine woken by the network poller (data arriving on its connection) becomes
/// runnable without runtime.ready; the wake-any probe (runtime.casgstatus) sees that
/// wake-up, on the right goroutine.
#[test]
fn netpoll_wake_ups_are_seen_by_the_wake_any_probe() {
    use std::io::Write as _;
    for version in go_versions() {
        let bin = build_fixture("netpollwake", &version, &[]);
        let mut fx = Fixture::start(&bin, &[]);
        let line = fx.stderr.wait_for("listening on", Duration::from_secs(10));
        let mut conn = std::net::TcpStream::connect(line.rsplit(' ').next().unwrap()).unwrap();
        let reader: u64 = fx
            .stderr
            .wait_for("reader goid", Duration::from_secs(10))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100)); // let it block in the read
        let log = tempfile(&format!("netpoll-{version}.jsonl"));
        let tracer = Tracer::attach(
            fx.pid(),
            &[
                "--probes",
                "park,wake,wake-any",
                "--max-overhead",
                "off",
                "--events",
                log.to_str().unwrap(),
            ],
        );
        conn.write_all(b"ping").unwrap();
        fx.stderr.wait_for("got 4 bytes", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(200)); // and block again
        drop(conn);
        let _ = fx.finish();
        let (_, stderr, code) = tracer.finish(Duration::from_secs(20));
        assert_eq!(code, Some(0), "Go {version}: {stderr:?}");
        let evs = events(&log);
        let wakes = evs
            .iter()
            .filter(|e| e["kind"] == "wake" && e["goid"] == reader)
            .count();
        let parks = evs
            .iter()
            .filter(|e| e["kind"] == "park" && e["goid"] == reader && e["reason"] == "IO wait")
            .count();
        assert!(
            wakes >= 1,
            "Go {version}: the reader's netpoll wake-up: {evs:?}"
        );
        assert!(
            parks >= 1,
            "Go {version}: the reader parks again in IO wait"
        );
    }
}

/// The target replaces itself with another program (execve) mid-trace: leaktrace says so,
/// stops cleanly, and leaves nothing loaded.
#[test]
fn a_target_that_execs_mid_trace_ends_the_trace_cleanly() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("execs", &version, &[]);
    let mut fx = Fixture::start(&bin, &[]);
    fx.stderr.wait_for("ready", Duration::from_secs(10));
    let pid = fx.pid();
    let tracer = Tracer::attach(pid, &[]);
    let programs = programs_held_by(tracer.child.id());
    std::thread::sleep(Duration::from_millis(300));
    fx.go_on();
    let (_, stderr, code) = tracer.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr:?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains(&format!("PID {pid} exec'd another program"))),
        "{stderr:?}"
    );
    assert_eq!(
        still_loaded(&programs),
        Vec::<u32>::new(),
        "programs left loaded"
    );
    assert!(
        fs::read_link(format!("/proc/{pid}/exe"))
            .unwrap()
            .ends_with("sleep"),
        "the target really exec'd"
    );
}

/// Probes go on the binary leaktrace read its offsets from, through its own descriptor of it,
/// never through `/proc/PID/exe`: after the target exec'd another program, a probe placed at
/// the first binary's offsets lands nowhere in the new one. Through `/proc/PID/exe` it does
/// (the control): an int3 at offsets that mean nothing in that program, mid-instruction at
/// worst.
#[test]
fn probes_placed_after_an_exec_never_land_in_the_new_program() {
    use leaktrace::{
        probes::{Probe, Probes},
        tracee::process::Process,
    };
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("execs", &version, &[]);
    let mut fx = Fixture::start(&bin, &[]);
    fx.stderr.wait_for("ready", Duration::from_secs(10));
    let pid = fx.pid();
    let process = Process::open(pid).unwrap();
    fx.go_on();
    let exe = format!("/proc/{pid}/exe");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fs::read_link(&exe).is_ok_and(|p| p.ends_with("sleep")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the target did not exec"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // sleep's entry point: an instruction boundary in its code, as a file offset and as
    // the address it is mapped at in the target.
    let sleep = fs::read_link(&exe).unwrap();
    let (offset, addr) = entry_point(&sleep, pid);
    assert_ne!(first_byte_in_target(pid, addr), 0xcc);
    let config = leaktrace_common::Config {
        tgid: pid,
        ..Default::default()
    };
    let mut probes = Probes::load(config, 1 << 16).unwrap();
    probes
        .attach(Probe::Gopark, &process.probe_path(), &[offset])
        .unwrap();
    assert_ne!(
        first_byte_in_target(pid, addr),
        0xcc,
        "a probe at the Go binary's offset landed in {}",
        sleep.display()
    );
    probes
        .attach(Probe::Ready, &process.exe_path(), &[offset])
        .unwrap();
    assert_eq!(
        first_byte_in_target(pid, addr),
        0xcc,
        "the control: through /proc/PID/exe the probe lands in the new program"
    );
    drop(probes);
    let _ = fx.finish();
}

/// The file offset of an ELF binary's entry point and the address it has in `pid`.
fn entry_point(path: &std::path::Path, pid: u32) -> (u64, u64) {
    use object::{Object, ObjectSegment};
    let data = fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let entry = file.entry();
    let offset = file
        .segments()
        .find_map(|s| {
            let (start, size) = (s.address(), s.size());
            (entry >= start && entry < start + size).then(|| entry - start + s.file_range().0)
        })
        .expect("the entry point is in a segment");
    (offset, runtime_address(pid, path, entry))
}

/// Two copies of the same binary: only the chosen PID is traced. The other's code gets no
/// breakpoint and none of its goroutines appears in the records.
#[test]
fn only_the_chosen_copy_of_a_binary_is_traced() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("chansend", &version, &[]);
    let mut chosen = Fixture::start(&bin, &["-n", "5"]);
    let mut other = Fixture::start(&bin, &["-n", "7"]);
    chosen.stderr.wait_for("ready", Duration::from_secs(10));
    other.stderr.wait_for("ready", Duration::from_secs(10));
    let log = tempfile("two-copies.jsonl");
    let tracer = Tracer::attach(
        chosen.pid(),
        &["--max-overhead", "off", "--events", log.to_str().unwrap()],
    );
    let gopark = probe_address(&bin, "runtime.gopark");
    assert_eq!(first_byte_in_target(chosen.pid(), gopark), 0xcc);
    assert_ne!(
        first_byte_in_target(other.pid(), gopark),
        0xcc,
        "the other copy has no breakpoint"
    );
    other.go_on();
    let (other_out, _) = other.finish();
    assert!(other_out.contains("received 7 values"));
    chosen.go_on();
    let (out, _) = chosen.finish();
    assert!(out.contains("received 5 values"));
    let (_, stderr, code) = tracer.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr:?}");
    let sends = events(&log)
        .iter()
        .filter(|e| e["reason"] == "chan send")
        .count();
    assert_eq!(
        sends, 5,
        "only the chosen process's 5 blocking sends, not the other's 7"
    );
}

/// leaktrace killed outright (SIGKILL) mid-trace: it pins nothing, so the kernel removes its
/// probes and programs when it closes its descriptors; the target's code is restored and
/// the next run starts clean.
#[test]
fn sigkill_leaves_nothing_behind() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let mut fx = Fixture::start(&bin, &["-hold"]);
    fx.stderr.wait_for("holding", Duration::from_secs(10));
    let pid = fx.pid();
    let gopark = probe_address(&bin, "runtime.gopark");
    let before = first_byte_in_target(pid, gopark);
    let tracer = Tracer::attach(pid, &[]);
    let programs = programs_held_by(tracer.child.id());
    assert_eq!(first_byte_in_target(pid, gopark), 0xcc);
    tracer.signal(libc::SIGKILL);
    let (_, _, code) = tracer.finish(Duration::from_secs(10));
    assert_eq!(code, None, "killed by a signal");
    // Descriptors are released asynchronously after the process dies.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (first_byte_in_target(pid, gopark) == 0xcc || !still_loaded(&programs).is_empty())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        first_byte_in_target(pid, gopark),
        before,
        "the breakpoint is gone"
    );
    assert_eq!(
        still_loaded(&programs),
        Vec::<u32>::new(),
        "no program left loaded"
    );
    // And the next run attaches and stops normally.
    let again = Tracer::attach(pid, &["-d", "1s"]);
    let (_, stderr, code) = again.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr:?}");
    let (out, _) = fx.finish();
    assert!(out.contains("5 requests, 5 failed"));
}

/// A target in its own PID and mount namespaces (as in a container): leaktrace, in the
/// initial namespaces, reaches its binary through /proc/PID/exe and follows it by its PID
/// as the initial namespace numbers it.
#[test]
fn a_target_in_other_pid_and_mount_namespaces_is_traced() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let mut unshare = std::process::Command::new("unshare")
        .args(["--pid", "--mount", "--fork", "--mount-proc", "--"])
        .arg(&bin)
        .arg("-hold")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = Lines::new(unshare.stderr.take().unwrap());
    stderr.wait_for("holding", Duration::from_secs(10));
    // The fixture is unshare's child: PID 1 inside, another number outside.
    let children =
        fs::read_to_string(format!("/proc/{0}/task/{0}/children", unshare.id())).unwrap();
    let pid: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.split_whitespace().last() == Some("1"),
        "PID 1 in its namespace: {nspid}"
    );
    let out = std::process::Command::new(leaktrace_bin())
        .args([
            "record",
            "-p",
            &pid.to_string(),
            "-d",
            "2500ms",
            "--min-age",
            "2s",
            "--snapshot-interval",
            "1s",
        ])
        .arg("-o")
        .arg(tempfile("ns-report"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(tempfile("ns-report").join("report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["leaks"][0]["site"]["function"], "main.produce", "{r:#}");
    assert_eq!(r["leaks"][0]["count"], 5);
    drop(unshare.stdin.take());
    let _ = unshare.wait();
}

/// `record -o DIR` never writes through a symlink planted in DIR: leaktrace refuses, and the
/// file the link points to is untouched.
#[test]
fn output_files_are_not_written_through_a_planted_symlink() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let mut fx = Fixture::start(&bin, &["-hold"]);
    fx.stderr.wait_for("holding", Duration::from_secs(10));
    let dir = tempfile("planted");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let victim = tempfile("victim.txt");
    fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("report.txt")).unwrap();
    let out = std::process::Command::new(leaktrace_bin())
        .args(["record", "-p", &fx.pid().to_string(), "-d", "500ms", "-o"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("report.txt"), "{err}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    let (out, _) = fx.finish();
    assert!(
        out.contains("5 requests, 5 failed"),
        "the target carried on: {out}"
    );
}

/// Multi-uprobe links (Linux 6.6+) and per-point ones, as a kernel without the former gets
/// (`LEAKTRACE_PER_POINT_UPROBES=1`): either way the probes are placed in the target, fire
/// (the fixture's blocked senders park on gopark) until leaktrace exits. The fixture goes on
/// once leaktrace says it is attached: it exits at once after its sends, and per-point
/// probes are placed one after another (a target gone meanwhile ends the placing; see
/// `probes_placed_after_an_exec_never_land_in_the_new_program` for what is placed where).
#[test]
fn per_point_and_multi_uprobe_links_both_trace() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("chansend", &version, &[]);
    let gopark = probe_address(&bin, "runtime.gopark");
    for per_point in ["0", "1"] {
        let mut fixture = Fixture::start(&bin, &["-n", "5"]);
        fixture.stderr.wait_for("ready", Duration::from_secs(10));
        let pid = fixture.pid();
        let dir = tempfile(&format!("links-{per_point}"));
        let mut lt = std::process::Command::new(leaktrace_bin())
            .env("LEAKTRACE_PER_POINT_UPROBES", per_point)
            .args([
                "record",
                "-p",
                &pid.to_string(),
                "-d",
                "4s",
                "--max-overhead",
                "off",
            ])
            .arg("-o")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (lines, stderr) = std::sync::mpsc::channel();
        let reader = std::io::BufReader::new(lt.stderr.take().unwrap());
        let collect = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut all = String::new();
            for line in reader.lines().map_while(Result::ok) {
                let _ = lines.send(line.contains("attached to PID"));
                all += &line;
                all.push('\n');
            }
            all
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !stderr
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or_else(|_| panic!("per-point {per_point}: leaktrace never attached"))
        {}
        assert_eq!(
            first_byte_in_target(pid, gopark),
            0xcc,
            "per-point {per_point}: no uprobe on gopark"
        );
        fixture.go_on();
        let status = lt.wait().unwrap();
        let stderr = collect.join().unwrap();
        assert!(
            status.success(),
            "per-point {per_point}: leaktrace {status}: {stderr}"
        );
        let (out, code) = fixture.finish();
        assert_eq!(code, Some(0), "{out}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        let hits = r["probes"]["hits"]["runtime.gopark"].as_u64().unwrap_or(0);
        assert!(
            hits >= 5,
            "per-point {per_point}: gopark fired {hits} times: {r:#}"
        );
    }
}

/// Context switches of a thread so far: voluntary ones are its wake-ups from a wait.
fn voluntary_switches(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Thousands of probe records a second reach the collector without waking it at each one:
/// records wake it only once a quarter of the ring buffer waits, and it drains on a timer
/// otherwise. Before, every record that found the ring drained woke it (a context switch
/// each, and work in the target's context); on an allocation loop that was 1,700 wake-ups a
/// second, 2.3% of the target's CPU. Every record still arrives.
#[test]
fn records_wake_the_collector_tens_of_times_a_second_not_at_each_one() {
    let bin = build_fixture("parkrate", &go_versions().pop().unwrap(), &[]);
    let mut fx = Fixture::start(&bin, &["-pairs", "4", "-rate", "4000"]);
    fx.stderr.wait_for("ready", Duration::from_secs(20));
    let dir = tempfile("wake-ups");
    let pid = fx.pid().to_string();
    let mut tracer = Tracer::start(&[
        "record",
        "-p",
        &pid,
        "-d",
        "5s",
        "--probes",
        "park,wake",
        "--max-overhead",
        "off",
        "-o",
        dir.to_str().unwrap(),
    ]);
    tracer
        .stderr
        .wait_for("attached to PID", Duration::from_secs(30));
    // The main thread runs the collector; snapshots and proofs run on threads of their own.
    let collector = tracer.child.id();
    std::thread::sleep(Duration::from_secs(1));
    let (s0, t0) = (voluntary_switches(collector), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let woken = (voluntary_switches(collector) - s0) as f64 / t0.elapsed().as_secs_f64();
    let (_, stderr, code) = tracer.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr:?}");
    let r: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let p = &r["probes"];
    let seconds = r["observed_seconds"].as_f64().unwrap();
    let hits = p["hits"]["runtime.gopark"].as_u64().unwrap()
        + p["hits"]["runtime.ready"].as_u64().unwrap();
    let records_per_second = hits as f64 / seconds;
    assert!(
        records_per_second > 1000.0,
        "the fixture made only {records_per_second:.0} records/s: {p:#}"
    );
    // The drain timer (50/s), the live line, the budget checks and the snapshots.
    assert!(
        woken < 120.0,
        "the collector woke {woken:.0} times/s for {records_per_second:.0} records/s"
    );
    assert_eq!(p["lost_records"], 0, "{p:#}");
    let parks = total_parks(&r);
    // All but those sent between the last drain and the detach (they count as hits).
    let park_hits = p["hits"]["runtime.gopark"].as_u64().unwrap();
    assert!(
        parks <= park_hits && parks as f64 >= park_hits as f64 * 0.995,
        "{parks} parks applied of {park_hits} sent: {r:#}"
    );
}
