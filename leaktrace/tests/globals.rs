//! `tracee::globals` against real Go binaries: `testdata/go/classicleak` built by every Go
//! toolchain under test, default and `-buildmode=pie`, each with and without `-ldflags=-s -w`.
//! The unstripped build's `.symtab`, read here with the `object` crate, is the reference.
//!
//! A `-s -w` build is not the unstripped build minus its symbols: cmd/go records the
//! `-ldflags` in `.go.buildinfo`, which moves every data section by a few bytes. So the
//! exact-address check strips the unstripped build itself (`objcopy --strip-all`, what a
//! user's `strip` does), and the `-s -w` build is checked to find each global at the same
//! offset in the same section as the reference. Then `leaktrace dump` walks a live stripped
//! PIE program with the globals found that way.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use leaktrace::tracee::binary::GoBinary;
use leaktrace::tracee::globals::{self, Globals, HeapGlobals};
use object::{Object, ObjectSection, ObjectSymbol};
use support::{Fixture, build_fixture, go_versions, leaktrace_bin};

const FIXTURE: &str = "classicleak";
const STRIP: &str = "-ldflags=-s -w";
const NAMES: [&str; 3] = ["runtime.allgs", "runtime.gcController", "runtime.memstats"];

fn open(path: &Path) -> GoBinary {
    GoBinary::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn as_array(g: &Globals) -> [u64; 3] {
    [g.allgs, g.gc_controller, g.memstats]
}

/// The three globals' addresses from `.symtab`, read without leaktrace.
fn symtab_addresses(path: &Path) -> [u64; 3] {
    symtab_addresses_of(path, NAMES)
}

/// The addresses of `names` from `.symtab`, read without leaktrace.
fn symtab_addresses_of(path: &Path, names: [&str; 3]) -> [u64; 3] {
    let data = fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    names.map(|name| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("{name} not in the .symtab of {}", path.display()))
            .address()
    })
}

/// The section holding link-time address `addr`, and `addr`'s offset in it.
fn section_offset(path: &Path, addr: u64) -> Option<(String, u64)> {
    let data = fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.sections()
        .filter(|s| s.address() != 0)
        .find(|s| (s.address()..s.address() + s.size()).contains(&addr))
        .map(|s| (s.name().unwrap().to_string(), addr - s.address()))
}

/// `bin` with its symbol table removed, as `strip` does to a release binary.
fn strip_copy(bin: &Path, tag: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("globals");
    fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{FIXTURE}-{tag}-stripped"));
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(bin)
        .arg(&out)
        .status()
        .expect("running objcopy (binutils) to strip a fixture");
    assert!(
        status.success(),
        "objcopy --strip-all {} failed",
        bin.display()
    );
    out
}

/// Every way of finding the globals gives the `.symtab` addresses: on the unstripped build
/// (through `.symtab`, and through its code alone), on that build stripped by objcopy, and,
/// offset for offset, on the `-s -w` build.
#[test]
fn stripped_binaries_locate_the_symbol_table_addresses() {
    let mut failures = Vec::new();
    for version in go_versions() {
        for base in [&[][..], &["-buildmode=pie"][..]] {
            let what = format!("Go {version} {base:?}");
            let full_path = build_fixture(FIXTURE, &version, base);
            let want = symtab_addresses(&full_path);
            let full = open(&full_path);
            assert!(!full.is_stripped(), "{what}");
            let mut check = |how: &str, got: Result<Globals, globals::GlobalsError>| match got {
                Ok(g) if as_array(&g) == want => {}
                Ok(g) => failures.push(format!(
                    "{what} {how}: found {:x?}, .symtab has {want:x?}",
                    as_array(&g)
                )),
                Err(e) => failures.push(format!("{what} {how}: {e}")),
            };
            check("unstripped", globals::locate(&full));
            check("unstripped, from code", globals::locate_in_code(&full));

            let tag = format!("{version}-{}", if base.is_empty() { "exe" } else { "pie" });
            let stripped = open(&strip_copy(&full_path, &tag));
            assert!(stripped.is_stripped(), "{what}: objcopy left a .symtab");
            check("objcopy --strip-all", globals::locate(&stripped));

            let flags: Vec<&str> = base.iter().copied().chain([STRIP]).collect();
            let s_path = build_fixture(FIXTURE, &version, &flags);
            let s = open(&s_path);
            assert!(s.is_stripped(), "{what} -s -w has a .symtab");
            match globals::locate(&s) {
                Ok(g) => {
                    for ((name, got), want) in NAMES.iter().zip(as_array(&g)).zip(want) {
                        let got_at = section_offset(&s_path, got);
                        let want_at = section_offset(&full_path, want);
                        if got_at.is_none() || got_at != want_at {
                            failures.push(format!(
                                "{what} {STRIP}: {name} found at {got:#x} = {got_at:?}, the \
                                 unstripped build has it at {want_at:?}"
                            ));
                        }
                    }
                }
                Err(e) => failures.push(format!("{what} {STRIP}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const HEAP_NAMES: [&str; 3] = ["runtime.mheap_", "runtime.allp", "runtime.allm"];

fn heap_array(g: &HeapGlobals) -> [u64; 3] {
    [g.mheap, g.allp, g.allm]
}

/// The same for the globals of the pinned-memory estimate: `.symtab`, the code alone, an
/// objcopy-stripped copy and, offset for offset, the `-s -w` build agree.
#[test]
fn stripped_binaries_locate_the_heap_globals() {
    let mut failures = Vec::new();
    for version in go_versions() {
        for base in [&[][..], &["-buildmode=pie"][..]] {
            let what = format!("Go {version} {base:?}");
            let full_path = build_fixture(FIXTURE, &version, base);
            let want = symtab_addresses_of(&full_path, HEAP_NAMES);
            let full = open(&full_path);
            let mut check = |how: &str, got: Result<HeapGlobals, globals::GlobalsError>| match got {
                Ok(g) if heap_array(&g) == want => {}
                Ok(g) => failures.push(format!(
                    "{what} {how}: found {:x?}, .symtab has {want:x?}",
                    heap_array(&g)
                )),
                Err(e) => failures.push(format!("{what} {how}: {e}")),
            };
            check("unstripped", globals::locate_heap(&full));
            check("unstripped, from code", globals::locate_heap_in_code(&full));
            // Its own copy: the other test strips the same build at the same time, and two
            // objcopy runs onto one path can leave neither (seen once in CI).
            let tag = format!(
                "heap-{version}-{}",
                if base.is_empty() { "exe" } else { "pie" }
            );
            let stripped = open(&strip_copy(&full_path, &tag));
            check("objcopy --strip-all", globals::locate_heap(&stripped));

            let flags: Vec<&str> = base.iter().copied().chain([STRIP]).collect();
            let s_path = build_fixture(FIXTURE, &version, &flags);
            match globals::locate_heap(&open(&s_path)) {
                Ok(g) => {
                    for ((name, got), want) in HEAP_NAMES.iter().zip(heap_array(&g)).zip(want) {
                        let got_at = section_offset(&s_path, got);
                        let want_at = section_offset(&full_path, want);
                        if got_at.is_none() || got_at != want_at {
                            failures.push(format!(
                                "{what} {STRIP}: {name} found at {got:#x} = {got_at:?}, the \
                                 unstripped build has it at {want_at:?}"
                            ));
                        }
                    }
                }
                Err(e) => failures.push(format!("{what} {STRIP}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `leaktrace dump` walks the goroutines and reads the heap figures of a running stripped
/// PIE program, through the globals found in its code and the load bias.
#[test]
fn dump_reads_a_stripped_pie_program() {
    for version in go_versions() {
        let bin = build_fixture(FIXTURE, &version, &["-buildmode=pie", STRIP]);
        let mut fixture = Fixture::start(&bin, &["-hold"]);
        fixture.stderr.wait_for("holding", Duration::from_secs(30));
        let out = Command::new(leaktrace_bin())
            .args(["dump", "-p", &fixture.pid().to_string(), "--json"])
            .output()
            .expect("running leaktrace dump");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "Go {version}: leaktrace dump failed:\n{stderr}"
        );
        // Memory figures failing is only a warning in dump: refuse that here.
        assert!(
            !stderr.contains("memory figures unavailable"),
            "Go {version}: {stderr}"
        );
        let dump: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("Go {version}: {e} in\n{stdout}"));

        let leaked: Vec<&serde_json::Value> = dump["goroutines"]
            .as_array()
            .unwrap_or_else(|| panic!("Go {version}: no goroutines in\n{stdout}"))
            .iter()
            .filter(|g| g["wait_reason"] == "chan send")
            .collect();
        assert_eq!(leaked.len(), 1, "Go {version}: {stdout}");
        assert_eq!(leaked[0]["count"], 5, "Go {version}: {stdout}");
        assert_eq!(
            leaked[0]["stack"][0]["function"], "main.produce",
            "Go {version}: {stdout}"
        );

        // heapInUse counts whole 8 KiB runtime pages (go1.21..go1.27 `runtime/mheap.go`,
        // `pageSize`); a few MiB for this program. NumGC is a u32.
        let memory = &dump["memory"];
        let heap_inuse = memory["HeapInuse"].as_u64().unwrap_or(0);
        assert!(
            heap_inuse > 0 && heap_inuse.is_multiple_of(8192) && heap_inuse < 1 << 30,
            "Go {version}: implausible HeapInuse {heap_inuse} in\n{stdout}"
        );
        assert!(
            memory["NumGC"].as_u64().is_some_and(|n| n < 1 << 32),
            "Go {version}: {stdout}"
        );
        let (_, code) = fixture.finish();
        // classicleak exits 1 when requests failed, as all of them do.
        assert_eq!(code, Some(1), "Go {version}");
    }
}
