//! Real binaries leaktrace must trace correctly or refuse clearly, never panicking: a
//! program built with Go 1.19 (Debian's golang-1.19), one built for arm64, one built with
//! cgo, PIE and stripped builds traced live, and copies of a real program with a garbled
//! .gopclntab, .go.buildinfo or DWARF, or cut in half.

mod support;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use leaktrace::tracee::binary::GoBinary;
use support::*;

/// Debian's Go 1.19, installed by scripts/setup.sh (package golang-1.19-go).
const GO_1_19: &str = "/usr/lib/go-1.19/bin/go";

fn latest() -> String {
    go_versions().pop().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leaktrace-bad-inputs-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs leaktrace with `args`; (stderr, exit code). It must never panic.
fn leaktrace(args: &[&str]) -> (String, Option<i32>) {
    let out = Command::new(leaktrace_bin()).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !err.contains("panicked"),
        "leaktrace {args:?} panicked:\n{err}"
    );
    (err, out.status.code())
}

/// `leaktrace record -- BIN`: refused with exit 1 and a message containing `wanted`, before
/// the command runs.
fn spawn_is_refused(bin: &Path, wanted: &str) -> String {
    let out = scratch("refused");
    let (err, code) = leaktrace(&[
        "record",
        "-o",
        out.to_str().unwrap(),
        "--",
        bin.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{}: {err}", bin.display());
    assert!(err.contains(wanted), "{}: {err}", bin.display());
    assert!(err.contains(bin.to_str().unwrap()), "names the file: {err}");
    assert!(
        !err.contains("\nready"),
        "{}: the command did not run",
        bin.display()
    );
    err.trim().to_string()
}

/// The chansend protocol (N goroutines each block once on an unbuffered send, main receives)
/// traced live: a breakpoint at runtime.gopark while traced and none after, exactly the N
/// blocking sends parked on the senders' goroutine ids, each woken once by main, the park's
/// caller symbolized as runtime.chansend, and the program's own output unchanged.
fn traced_exactly(bin: &Path, what: &str, expected_sum: u64) {
    const N: usize = 12;
    // Where the probe traps: gopark's frame push, after its stack check.
    let binary = GoBinary::open(bin).unwrap();
    let gopark = leaktrace::tracee::code::entry_probe_address(
        &binary,
        binary.function("runtime.gopark").unwrap().addr,
    );
    let mut fx = Fixture::start(bin, &["-n", &N.to_string()]);
    fx.stderr.wait_for("ready", Duration::from_secs(10));
    let pid = fx.pid();
    let at = runtime_address(pid, bin, gopark);
    let original = first_byte_in_target(pid, at);
    assert_ne!(original, 0xcc, "{what}");
    let log = scratch(&format!("{what}.jsonl"));
    let tracer = Tracer::attach(
        pid,
        &[
            "--probes",
            "park,wake",
            "--max-overhead",
            "off",
            "--events",
            log.to_str().unwrap(),
        ],
    );
    assert_eq!(first_byte_in_target(pid, at), 0xcc, "{what}: probe placed");
    fx.go_on();
    let (out, code) = fx.finish();
    assert_eq!(code, Some(0), "{what}: {out}");
    assert!(
        out.contains(&format!("received {N} values, sum {expected_sum}")),
        "{what}: {out}"
    );
    let (_, stderr, code) = tracer.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{what}: {stderr:?}");
    let senders: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("sender goid "))
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(senders.len(), N);
    let evs: Vec<serde_json::Value> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut parks: BTreeMap<u64, usize> = BTreeMap::new();
    for e in evs.iter().filter(|e| e["reason"] == "chan send") {
        *parks.entry(e["goid"].as_u64().unwrap()).or_default() += 1;
        assert_eq!(e["caller"], "runtime.chansend", "{what}: {e}");
    }
    let expected: BTreeMap<u64, usize> = senders.iter().map(|&g| (g, 1)).collect();
    assert_eq!(parks, expected, "{what}: chan send parks by goroutine");
    for &g in &senders {
        let wakers: Vec<u64> = evs
            .iter()
            .filter(|e| e["kind"] == "wake" && e["goid"] == g)
            .map(|e| e["waker_goid"].as_u64().unwrap())
            .collect();
        assert_eq!(wakers, vec![1], "{what}: wake-ups of goroutine {g}");
    }
}

fn sum_to(n: u64) -> u64 {
    n * (n - 1) / 2
}

/// PIE (mapped at a random base), stripped (`-s -w`: no .symtab, no DWARF; functions from
/// pclntab, the layout from leaktrace's tables), and both: traced live, exactly.
#[test]
fn pie_and_stripped_binaries_are_traced_live() {
    let version = latest();
    for (what, flags) in [
        ("pie", &["-buildmode=pie"][..]),
        ("stripped", &["-ldflags=-s -w"][..]),
        ("pie-stripped", &["-buildmode=pie", "-ldflags=-s -w"][..]),
    ] {
        let bin = build_fixture("chansend", &version, flags);
        let b = GoBinary::open(&bin).unwrap();
        assert_eq!(b.is_pie(), what.starts_with("pie"), "{what}");
        assert_eq!(b.is_stripped(), what.ends_with("stripped"), "{what}");
        traced_exactly(&bin, what, sum_to(12));
    }
}

/// A cgo program (dynamically linked, threads started by libc, goroutines calling C) is
/// traced live as exactly as a pure Go one.
#[test]
fn a_cgo_binary_is_traced_live() {
    let version = latest();
    let bin = build_fixture_with(
        "cgosend",
        &version,
        &go_binary(&version),
        &[],
        &[("CGO_ENABLED", "1")],
    );
    let data = fs::read(&bin).unwrap();
    assert!(
        data.windows(b"ld-linux-x86-64".len())
            .any(|w| w == b"ld-linux-x86-64"),
        "dynamically linked through libc"
    );
    traced_exactly(&bin, "cgo", 2 * sum_to(12));
}

/// A program built with Go 1.19: refused when spawned, when traced by PID and when dumped,
/// naming the version and what to do; the running program is not disturbed.
#[test]
fn a_go_1_19_program_is_refused_clearly() {
    assert!(
        Path::new(GO_1_19).exists(),
        "{GO_1_19} is missing: scripts/setup.sh installs Debian's golang-1.19-go"
    );
    let bin = build_fixture_with("chansend", "go1.19-debian", Path::new(GO_1_19), &[], &[]);
    let wanted = "was built with go1.19";
    let said = spawn_is_refused(&bin, wanted);
    assert!(
        said.contains("leaktrace supports Go 1.21 and newer"),
        "{said}"
    );
    let mut fx = Fixture::start(&bin, &["-n", "3"]);
    fx.stderr.wait_for("ready", Duration::from_secs(10));
    let pid = fx.pid().to_string();
    for args in [&["-p", &pid][..], &["dump", "-p", &pid][..]] {
        let (err, code) = leaktrace(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
        assert!(err.contains(&format!("PID {pid}")), "{args:?}: {err}");
    }
    fx.go_on();
    let (out, code) = fx.finish();
    assert_eq!(code, Some(0));
    assert!(out.contains("received 3 values, sum 3"), "{out}");
}

/// A program built for arm64 is refused before it is run.
#[test]
fn an_arm64_program_is_refused_clearly() {
    let version = latest();
    let bin = build_fixture_with(
        "chansend",
        &version,
        &go_binary(&version),
        &[],
        &[("GOARCH", "arm64")],
    );
    let said = spawn_is_refused(&bin, "is built for arm64");
    assert!(said.contains("leaktrace supports linux/amd64"), "{said}");
}

/// A Go program without execute permission: spawn mode says the kernel's reason, after
/// placing no probe on anything that runs.
#[test]
fn a_program_that_cannot_be_executed_is_refused_clearly() {
    let copy = scratch("not-executable");
    fs::copy(build_fixture("chansend", &latest(), &[]), &copy).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
    spawn_is_refused(&copy, "Permission denied");
}

/// A copy of the Go 1.27 chansend binary with `damage` done to the bytes of `section`.
fn damaged(name: &str, section: &str, damage: impl Fn(&mut [u8])) -> PathBuf {
    use object::{Object, ObjectSection};
    let bin = build_fixture("chansend", &latest(), &[]);
    let mut data = fs::read(&bin).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let (off, size) = file
        .section_by_name(section)
        .unwrap_or_else(|| panic!("no {section}"))
        .file_range()
        .unwrap();
    damage(&mut data[off as usize..(off + size) as usize]);
    let out = scratch(name);
    fs::write(&out, &data).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
    out
}

/// Garbled copies of a real program, spawned with `record -- ./copy`: a .gopclntab whose
/// magic or header is wrong, and a file cut in half, are refused before they run, with the
/// file and the damage named; exit 1, no panic.
#[test]
fn garbled_binaries_are_refused_clearly() {
    let magic = damaged("pclntab-magic", ".gopclntab", |s| s[..8].fill(0));
    spawn_is_refused(
        &magic,
        "has an unreadable .gopclntab section: pclntab magic",
    );
    let header = damaged("pclntab-header", ".gopclntab", |s| s[8..64].fill(0xff));
    spawn_is_refused(&header, "has an unreadable .gopclntab section");
    let whole = fs::read(build_fixture("chansend", &latest(), &[])).unwrap();
    let half = scratch("truncated");
    fs::write(&half, &whole[..whole.len() / 2]).unwrap();
    spawn_is_refused(&half, "is a damaged ELF file");
}

/// Damage that the program itself survives, so it runs: a zeroed .go.buildinfo (the Go
/// version is then read from the runtime's own version string) and garbled DWARF (the
/// runtime layout then comes from leaktrace's tables, with a warning). Both are traced live,
/// by PID, exactly.
#[test]
fn a_garbled_buildinfo_or_dwarf_in_a_running_program_is_worked_around() {
    let buildinfo = damaged("buildinfo-zeroed", ".go.buildinfo", |s| s.fill(0));
    traced_exactly(&buildinfo, "buildinfo", sum_to(12));
    let dwarf = damaged("dwarf-garbled", ".debug_info", |s| {
        for (i, b) in s.iter_mut().enumerate().skip(24) {
            *b = (i as u8).wrapping_mul(151);
        }
    });
    let mut fx = Fixture::start(&dwarf, &["-n", "1"]);
    fx.stderr.wait_for("ready", Duration::from_secs(10));
    let (err, code) = leaktrace(&["-p", &fx.pid().to_string(), "-d", "500ms"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("using leaktrace's layout table for Go"),
        "says it fell back: {err}"
    );
    fx.go_on();
    assert_eq!(fx.finish().1, Some(0));
    traced_exactly(&dwarf, "dwarf", sum_to(12));
}
