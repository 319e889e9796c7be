//! The runtime layout against real Go binaries, built with every toolchain in
//! scripts/versions.sh: the committed table must be exactly what the toolchains generate,
//! agree with the DWARF of any program, hold the values GO-RUNTIME.md documents, and be what
//! leaktrace falls back to for a binary without DWARF.
//!
//! Binaries are built once and cached under `$LEAKTRACE_CACHE/fixtures/layout-<sha256>/`,
//! keyed by the source, the toolchain and the build flags. The toolchains are installed by
//! scripts/setup.sh; a missing one fails the test.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use leaktrace::tracee::layout::{self, LayoutError, LayoutSource, RuntimeLayout};
use object::{Object as _, ObjectSymbol as _};
use sha2::{Digest as _, Sha256};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("leaktrace is in the workspace")
        .to_path_buf()
}

/// `GO_VERSIONS` from scripts/versions.sh, e.g. ["1.21.13", ...].
fn go_versions() -> Vec<String> {
    let path = workspace().join("scripts/versions.sh");
    let text = fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("GO_VERSIONS="))
        .expect("a GO_VERSIONS= line in scripts/versions.sh");
    line.trim_matches('"')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn minor(version: &str) -> u32 {
    version.split('.').nth(1).unwrap().parse().unwrap()
}

fn cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("LEAKTRACE_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("leaktrace");
    }
    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/leaktrace")
}

#[derive(Clone, Copy, Debug)]
enum Build {
    /// `go build`: what most targets are.
    Default,
    /// `go build -ldflags=-w`: no DWARF, `.symtab` kept.
    NoDwarf,
    /// `go build -buildmode=pie`.
    Pie,
}

impl Build {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Build::Default => &[],
            Build::NoDwarf => &["-ldflags=-w"],
            Build::Pie => &["-buildmode=pie"],
        }
    }
}

/// The fixture program: testdata/go/layout.
fn layout_program() -> PathBuf {
    workspace().join("testdata/go/layout")
}

/// The program `cargo xtask gen-layouts` generates the table from.
fn layout_probe() -> PathBuf {
    workspace().join("xtask/layout-probe")
}

/// One `go build` at a time in this process: the tests share fixtures and 2 cores.
static BUILDS: Mutex<()> = Mutex::new(());

/// Builds the main package in `dir` with Go `version` and `build`'s flags, in the offline
/// environment `cargo xtask gen-layouts` uses, and returns the binary's bytes. Cached under
/// `$LEAKTRACE_CACHE/fixtures/layout-<sha256>/` by the package's files, the toolchain and
/// the flags.
fn build(dir: &Path, version: &str, build: Build) -> Vec<u8> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut hash = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    part(version.as_bytes());
    for flag in build.flags() {
        part(flag.as_bytes());
    }
    for file in &files {
        part(file.file_name().unwrap().as_encoded_bytes());
        part(&fs::read(file).unwrap());
    }
    let key: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let out_dir = cache().join("fixtures").join(format!("layout-{key}"));
    let binary = out_dir.join("prog");

    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    if !binary.exists() {
        let go = cache().join("go").join(version).join("go/bin/go");
        assert!(
            go.exists(),
            "Go {version} is not installed at {}: run scripts/setup.sh",
            go.display()
        );
        fs::create_dir_all(&out_dir).unwrap();
        // Build to a name of this process and rename: another test process may be reading.
        let partial = out_dir.join(format!(".prog.{}", std::process::id()));
        let output = Command::new(&go)
            .arg("build")
            .args(build.flags())
            .arg("-o")
            .arg(&partial)
            .arg(".")
            .current_dir(dir)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOTELEMETRY", "off")
            .env("CGO_ENABLED", "0")
            .env("GOOS", "linux")
            .env("GOARCH", "amd64")
            .env("GOCACHE", cache().join("gocache"))
            .env("GOPATH", cache().join("gopath"))
            .env_remove("GOROOT")
            .env_remove("GOEXPERIMENT")
            .env_remove("GOAMD64")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "go{version} build {:?} of {} failed:\n{}",
            build.flags(),
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        fs::rename(&partial, &binary).unwrap();
    }
    fs::read(&binary).unwrap()
}

fn table(version: &str) -> RuntimeLayout {
    layout::from_table(1, minor(version))
        .unwrap_or_else(|| panic!("Go {version} is in GO_VERSIONS but not in the layout table"))
}

fn dwarf(data: &[u8], what: &str) -> RuntimeLayout {
    layout::from_dwarf(data)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .unwrap_or_else(|| panic!("{what}: no DWARF"))
}

/// Every leaf of the two layouts' JSON, except where they came from, that differs.
fn differences(a: &RuntimeLayout, b: &RuntimeLayout) -> Vec<String> {
    fn leaves(prefix: String, value: serde_json::Value, out: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    leaves(format!("{prefix}.{k}"), v, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.into_iter().enumerate() {
                    leaves(format!("{prefix}[{i}]"), v, out);
                }
            }
            other => {
                out.insert(prefix, other.to_string());
            }
        }
    }
    let flat = |l: &RuntimeLayout| {
        let mut out = BTreeMap::new();
        leaves(String::new(), serde_json::to_value(l).unwrap(), &mut out);
        for skip in [".source", ".generated_by", ".toolchain"] {
            out.remove(skip);
        }
        out
    };
    let (a, b) = (flat(a), flat(b));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: {} vs {}",
                a.get(k).map_or("absent", String::as_str),
                b.get(k).map_or("absent", String::as_str)
            )
        })
        .collect()
}

#[test]
fn the_table_has_exactly_the_toolchains_of_versions_sh() {
    let versions = go_versions();
    let wanted: Vec<(u32, u32)> = versions.iter().map(|v| (1, minor(v))).collect();
    assert_eq!(
        layout::table_versions(),
        wanted,
        "leaktrace/layouts is not generated for GO_VERSIONS; run `cargo xtask gen-layouts`"
    );
    for version in &versions {
        assert_eq!(table(version).toolchain, format!("go{version}"));
    }
}

#[test]
fn committed_tables_are_what_the_toolchains_generate() {
    let mut stale = Vec::new();
    for version in go_versions() {
        let probe = build(&layout_probe(), &version, Build::Default);
        let generated = dwarf(&probe, &format!("layout probe, go{version}"))
            .into_table_entry()
            .to_json();
        let path = workspace().join(format!("leaktrace/layouts/go1.{}.json", minor(&version)));
        let committed = fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            let changed: Vec<String> = committed
                .lines()
                .zip(generated.lines())
                .filter(|(a, b)| a != b)
                .map(|(a, b)| format!("  committed: {a}\n  generated: {b}"))
                .collect();
            stale.push(format!(
                "{} (committed {} lines, generated {}):\n{}",
                path.display(),
                committed.lines().count(),
                generated.lines().count(),
                changed.join("\n")
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "the layout table is stale; run `cargo xtask gen-layouts` and commit it:\n{}",
        stale.join("\n")
    );
}

#[test]
fn dwarf_of_any_program_agrees_with_the_table() {
    for version in go_versions() {
        let expected = table(&version);
        for kind in [Build::Default, Build::Pie] {
            let what = format!("testdata/go/layout, go{version} {kind:?}");
            let binary = build(&layout_program(), &version, kind);
            let found = dwarf(&binary, &what);
            assert_eq!(found.source, LayoutSource::Dwarf, "{what}");
            assert_eq!(found.toolchain, format!("go{version}"), "{what}");
            assert_eq!(found.go_version, format!("1.{}", minor(&version)), "{what}");
            let diff = differences(&found, &expected);
            assert!(
                diff.is_empty(),
                "{what} differs from the table:\n{}",
                diff.join("\n")
            );
            // With DWARF, for_binary reads it, whatever version it is told.
            let chosen = layout::for_binary(&binary, 1, 99).unwrap();
            assert_eq!(chosen, found, "{what}");
        }
    }
}

/// What the design notes (shared/design/GO-RUNTIME.md) report for one Go version: §5
/// (runtime.g offsets) and §4 (waitReason numbers), checked there with [DWARF] and [RUN] on
/// go1.21.13 ... go1.27.3.
struct Documented {
    minor: u32,
    atomicstatus: u64,
    goid: u64,
    waitreason: u64,
    chan_receive: u8,
    chan_send: u8,
    select: u8,
    sleep: u8,
}

const fn doc(minor: u32, g: [u64; 3], reasons: [u8; 4]) -> Documented {
    Documented {
        minor,
        atomicstatus: g[0],
        goid: g[1],
        waitreason: g[2],
        chan_receive: reasons[0],
        chan_send: reasons[1],
        select: reasons[2],
        sleep: reasons[3],
    }
}

/// (minor, [g.atomicstatus, g.goid, g.waitreason], [ChanReceive, ChanSend, Select, Sleep]).
const GO_RUNTIME_MD: &[Documented] = &[
    doc(21, [144, 152, 176], [14, 15, 9, 19]),
    doc(22, [144, 152, 176], [14, 15, 9, 19]),
    doc(23, [152, 160, 184], [14, 15, 9, 19]),
    doc(24, [152, 160, 184], [14, 15, 9, 19]),
    doc(25, [144, 152, 176], [14, 15, 9, 20]),
    doc(26, [144, 152, 176], [19, 20, 18, 14]),
    doc(27, [144, 152, 176], [19, 20, 18, 14]),
];

#[test]
fn key_values_are_those_go_runtime_md_reports() {
    let versions = go_versions();
    for documented in GO_RUNTIME_MD {
        let version = versions
            .iter()
            .find(|v| minor(v) == documented.minor)
            .unwrap_or_else(|| panic!("Go 1.{} is not in GO_VERSIONS", documented.minor));
        let from_binary = dwarf(
            &build(&layout_program(), version, Build::Default),
            &format!("go{version}"),
        );
        for (source, l) in [("table", table(version)), ("DWARF", from_binary)] {
            let what = format!("go{version} ({source})");
            assert_eq!(
                (l.g.atomicstatus, l.g.goid, l.g.waitreason),
                (
                    documented.atomicstatus,
                    documented.goid,
                    documented.waitreason
                ),
                "{what}: g.atomicstatus, g.goid, g.waitreason"
            );
            for (name, value, wording) in [
                ("ChanReceive", documented.chan_receive, "chan receive"),
                ("ChanSend", documented.chan_send, "chan send"),
                ("Select", documented.select, "select"),
                ("Sleep", documented.sleep, "sleep"),
            ] {
                assert_eq!(l.wait_reason(name), Some(value), "{what}: waitReason{name}");
                assert_eq!(l.wait_reason_string(value), Some(wording), "{what}: {name}");
            }
            assert_eq!(l.g_status("waiting"), Some(4), "{what}: _Gwaiting");
        }
    }
}

#[test]
fn without_dwarf_the_table_is_used() {
    for version in go_versions() {
        let what = format!("go{version} -ldflags=-w");
        let binary = build(&layout_program(), &version, Build::NoDwarf);
        assert!(layout::from_dwarf(&binary).unwrap().is_none(), "{what}");
        let chosen = layout::for_binary(&binary, 1, minor(&version)).unwrap();
        assert_eq!(chosen, table(&version), "{what}");
        assert!(
            matches!(chosen.source, LayoutSource::Table { .. }),
            "{what}"
        );
        // -w keeps .symtab: the program's own wait-reason strings are the table's.
        assert_eq!(
            layout::wait_reason_strings(&binary).unwrap(),
            Some(table(&version).wait_reasons),
            "{what}"
        );

        let err = layout::for_binary(&binary, 1, 99).unwrap_err();
        assert!(
            matches!(err, LayoutError::NotInTable { .. }),
            "{what}: {err}"
        );
        let first = layout::table_versions()[0];
        let last = *layout::table_versions().last().unwrap();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "Go 1.99 is not in leaktrace's layout table (generated for {}.{}–{}.{}); \
                 rebuild the target without -ldflags=-w",
                first.0, first.1, last.0, last.1
            )),
            "{message}"
        );
    }
}

/// Sets the pointer word of every non-empty `runtime.waitReasonStrings` entry to 0 in a copy
/// of the file, as an external linker may leave it in a PIE.
fn zero_wait_reason_pointers(data: &[u8]) -> Vec<u8> {
    let file = object::File::parse(data).unwrap();
    let symbol = file
        .symbols()
        .find(|s| s.name() == Ok("runtime.waitReasonStrings"))
        .expect("runtime.waitReasonStrings in .symtab");
    let offset = file
        .segments()
        .find_map(|seg| {
            use object::ObjectSegment as _;
            let (file_off, file_size) = seg.file_range();
            let start = symbol.address().checked_sub(seg.address())?;
            (start + symbol.size() <= file_size).then_some(file_off + start)
        })
        .unwrap() as usize;
    let mut patched = data.to_vec();
    for entry in patched[offset..offset + symbol.size() as usize]
        .as_chunks_mut::<16>()
        .0
    {
        if entry[8..] != [0; 8] {
            entry[..8].fill(0);
        }
    }
    patched
}

#[test]
fn wait_reason_strings_of_pie_come_from_relocations_and_else_from_the_table() {
    for version in go_versions() {
        let expected = table(&version).wait_reasons;

        let pie = build(&layout_program(), &version, Build::Pie);
        let patched = zero_wait_reason_pointers(&pie);
        assert_ne!(patched, pie, "go{version}: nothing was zeroed");
        assert_eq!(
            layout::wait_reason_strings(&patched).unwrap(),
            Some(expected.clone()),
            "go{version} PIE with zeroed pointers: R_X86_64_RELATIVE addends"
        );

        // A non-PIE has no relocations to fall back on: the file cannot say, the table does.
        let exe = build(&layout_program(), &version, Build::Default);
        let patched = zero_wait_reason_pointers(&exe);
        assert_eq!(
            layout::wait_reason_strings(&patched).unwrap(),
            None,
            "go{version}"
        );
        assert_eq!(
            dwarf(&patched, &version).wait_reasons,
            expected,
            "go{version}"
        );
    }
}

#[test]
fn compressed_uncompressed_and_zdebug_dwarf_read_the_same_and_zstd_falls_back() {
    let versions = go_versions();
    for version in [versions.first().unwrap(), versions.last().unwrap()] {
        let binary = build(&layout_program(), version, Build::Default);
        let expected = dwarf(&binary, version);
        let dir = tempdir(&format!("objcopy-{version}"));
        let original = dir.join("prog");
        fs::write(&original, &binary).unwrap();
        for (flag, section) in [
            ("--decompress-debug-sections", ".debug_info"),
            ("--compress-debug-sections=zlib-gnu", ".zdebug_info"),
        ] {
            let out = dir.join("converted");
            let status = Command::new("objcopy")
                .arg(flag)
                .arg(&original)
                .arg(&out)
                .status()
                .expect("objcopy (binutils) is installed");
            assert!(status.success(), "objcopy {flag}");
            let converted = fs::read(&out).unwrap();
            let file = object::File::parse(&*converted).unwrap();
            assert!(
                file.section_by_name(section).is_some(),
                "objcopy {flag} wrote no {section}"
            );
            assert_eq!(
                dwarf(&converted, flag),
                expected,
                "go{version} after objcopy {flag}"
            );
        }
        // zstd (which Go never writes) is refused by from_dwarf; for_binary then uses the table.
        let out = dir.join("zstd");
        let status = Command::new("objcopy")
            .arg("--compress-debug-sections=zstd")
            .arg(&original)
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "objcopy --compress-debug-sections=zstd");
        let zstd = fs::read(&out).unwrap();
        let err = layout::from_dwarf(&zstd).unwrap_err();
        assert!(
            matches!(err, LayoutError::UnsupportedCompression { .. }),
            "{err}"
        );
        let fallback = layout::for_binary(&zstd, 1, minor(version)).unwrap();
        assert_eq!(fallback, table(version), "go{version} zstd");
        assert!(matches!(
            layout::for_binary(&zstd, 1, 99),
            Err(LayoutError::UnsupportedCompression { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leaktrace-layout-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}
