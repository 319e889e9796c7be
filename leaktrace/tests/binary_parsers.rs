//! The binary parsers of `leaktrace::tracee` (`.go.buildinfo`, `.gopclntab`, the ELF around
//! them) against real Go binaries: `testdata/go/symbolize` built by every Go toolchain under
//! test, four ways (default, `-ldflags=-s -w`, `-buildmode=pie`, both). The symbol table and
//! section headers, read here with the `object` crate directly, are the reference.

mod support;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

use leaktrace::tracee::binary::{BinaryError, GoBinary};
use leaktrace::tracee::buildinfo::GoVersion;
use leaktrace::tracee::pclntab::{Frame, wrapper_func_id};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use support::{build_fixture, go_versions, repo_root};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Default,
    Stripped,
    Pie,
    PieStripped,
}

const VARIANTS: [Variant; 4] = [
    Variant::Default,
    Variant::Stripped,
    Variant::Pie,
    Variant::PieStripped,
];

impl Variant {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Variant::Default => &[],
            Variant::Stripped => &["-ldflags=-s -w"],
            Variant::Pie => &["-buildmode=pie"],
            Variant::PieStripped => &["-buildmode=pie", "-ldflags=-s -w"],
        }
    }

    fn stripped(self) -> bool {
        matches!(self, Variant::Stripped | Variant::PieStripped)
    }

    fn pie(self) -> bool {
        matches!(self, Variant::Pie | Variant::PieStripped)
    }

    /// The same build without `-s -w`.
    fn unstripped(self) -> Variant {
        if self.pie() {
            Variant::Pie
        } else {
            Variant::Default
        }
    }
}

fn fixture(version: &str, variant: Variant) -> PathBuf {
    build_fixture("symbolize", version, variant.flags())
}

fn open(version: &str, variant: Variant) -> GoBinary {
    let path = fixture(version, variant);
    GoBinary::open(&path).unwrap_or_else(|e| panic!("Go {version} {variant:?}: {e}"))
}

fn expected_version(version: &str) -> GoVersion {
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    GoVersion::new(parts[0], parts[1], parts[2])
}

/// The line of the fixture's source holding `MARK:<mark>`, or starting `func <name>(`.
fn line_of(pattern: &str) -> u32 {
    let src = fs::read_to_string(repo_root().join("testdata/go/symbolize/main.go")).unwrap();
    let hits: Vec<usize> = src
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            l.contains(&format!("MARK:{pattern}")) || l.starts_with(&format!("func {pattern}("))
        })
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "exactly one line of main.go should match {pattern:?}"
    );
    hits[0] as u32
}

/// Function symbols of `.symtab`: name -> addresses (a name can repeat).
fn symtab_functions(path: &PathBuf) -> HashMap<String, Vec<u64>> {
    let data = fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let mut map: HashMap<String, Vec<u64>> = HashMap::new();
    for sym in file.symbols().filter(|s| s.kind() == SymbolKind::Text) {
        map.entry(sym.name().unwrap().to_string())
            .or_default()
            .push(sym.address());
    }
    map
}

/// Functions looked up by leaktrace's probes, plus the fixture's own.
const PROBED: [&str; 10] = [
    "runtime.gopark",
    "runtime.ready",
    "runtime.newproc1",
    "runtime.casgstatus",
    "runtime.mallocgc",
    "runtime.gcMarkTermination",
    "main.main",
    "main.relay",
    "main.produce",
    "main.worker",
];

/// Names whose ELF symbol differs from the pclntab name: a Go function with an ABI0 wrapper
/// (osinit), an assembly function with an ABIInternal wrapper (asmcgocall), a lone assembly
/// function (madvise, whose only symbol is `runtime.madvise.abi0`).
const ABI_VARIANTS: [&str; 5] = [
    "runtime.osinit",
    "runtime.osinit.abi0",
    "runtime.asmcgocall",
    "runtime.asmcgocall.abi0",
    "runtime.madvise",
];

#[test]
fn version_and_build_settings_match_the_toolchain() {
    for version in go_versions() {
        for variant in VARIANTS {
            let path = fixture(&version, variant);
            let started = Instant::now();
            let bin =
                GoBinary::open(&path).unwrap_or_else(|e| panic!("Go {version} {variant:?}: {e}"));
            let took = started.elapsed();
            let what = format!("Go {version} {variant:?}");
            eprintln!("{what}: open took {took:?} ({} bytes)", bin.data().len());
            let build = bin.build();
            assert_eq!(bin.version(), expected_version(&version), "{what}");
            assert!(bin.version().is_tested(), "{what}");
            assert_eq!(build.version_string, format!("go{version}"), "{what}");
            assert_eq!(build.main_path.as_deref(), Some("fixture"), "{what}");
            assert_eq!(build.setting("GOARCH"), Some("amd64"), "{what}");
            assert_eq!(build.setting("GOOS"), Some("linux"), "{what}");
            assert_eq!(build.setting("CGO_ENABLED"), Some("0"), "{what}");
            let ldflags = variant.stripped().then_some("-s -w");
            assert_eq!(build.setting("-ldflags"), ldflags, "{what}");
            let buildmode = if variant.pie() { "pie" } else { "exe" };
            assert_eq!(build.setting("-buildmode"), Some(buildmode), "{what}");
            assert_eq!(bin.is_pie(), variant.pie(), "{what}");
            assert_eq!(bin.is_stripped(), variant.stripped(), "{what}");
            assert_eq!(bin.has_dwarf(), !variant.stripped(), "{what}");
        }
    }
}

/// Every pclntab function is at its `.symtab` address; names that appear twice are an ABI0
/// wrapper (funcID FuncIDWrapper, symbol `name.abi0`) and the body.
#[test]
fn pclntab_agrees_with_the_symbol_table() {
    for version in go_versions() {
        for variant in [Variant::Default, Variant::Pie] {
            let what = format!("Go {version} {variant:?}");
            let path = fixture(&version, variant);
            let symtab = symtab_functions(&path);
            let bin = open(&version, variant);
            let table = bin.pclntab();
            let wrapper = wrapper_func_id(bin.version());
            assert_eq!(table.wrapper_id(), wrapper, "{what}");
            assert_eq!(table.detect_wrapper_func_id(), Some(wrapper), "{what}");

            let symbols = table.symbols();
            assert!(
                symbols.len() > 1000,
                "{what}: only {} functions",
                symbols.len()
            );
            assert_eq!(symbols.len(), table.len(), "{what}");
            let mut wrong = Vec::new();
            let mut mangled = 0;
            let at = |name: &str, addr: u64| symtab.get(name).is_some_and(|a| a.contains(&addr));
            for (name, f) in &symbols {
                let abi0 = format!("{name}.abi0");
                if at(name, f.entry) {
                    mangled += usize::from(name.ends_with(".abi0"));
                } else if at(&abi0, f.entry) && table.lookup_symbol(&abi0).as_ref() == Some(f) {
                    // A lone assembly function that the linker suffixed anyway.
                    mangled += 1;
                } else {
                    wrong.push(format!("{name} {:#x} funcID {}", f.entry, f.func_id));
                }
                assert_eq!(
                    table.lookup_symbol(name).as_ref(),
                    Some(f),
                    "{what}: {name}"
                );
            }
            assert!(
                wrong.is_empty(),
                "{what}: pclntab entries not in .symtab: {wrong:?}"
            );
            assert!(mangled >= 20, "{what}: only {mangled} .abi0 names");

            // The inline trees are found through moduledata, the same way as when stripped.
            let sym = |n: &str| bin.data_symbol(n).map(|s| s.addr);
            assert_eq!(
                bin.moduledata_addr(),
                sym("runtime.firstmoduledata"),
                "{what}"
            );
            assert_eq!(bin.gofunc_addr(), sym("go:func.*"), "{what}");
            assert!(bin.gofunc_addr().is_some(), "{what}");
            assert!(sym("runtime.allgs").is_some(), "{what}");

            for name in PROBED {
                let f = bin
                    .function(name)
                    .unwrap_or_else(|| panic!("{what}: no {name}"));
                assert_eq!(symtab.get(name), Some(&vec![f.addr]), "{what}: {name}");
                assert_eq!(f.name, name);
                assert_eq!(
                    table.lookup_name(name).map(|e| e.entry),
                    Some(f.addr),
                    "{what}: {name}"
                );
            }
            // An assembly function: only an ABI0 symbol, found by its plain name.
            let madvise = bin.function("runtime.madvise").unwrap();
            assert_eq!(madvise.name, "runtime.madvise.abi0", "{what}");
            assert_eq!(
                table.lookup_name("runtime.madvise").map(|e| e.entry),
                Some(madvise.addr)
            );
            // A Go function with an ABI0 wrapper: the plain name is the body.
            let osinit = bin.function("runtime.osinit").unwrap();
            let osinit_abi0 = bin.function("runtime.osinit.abi0").unwrap();
            assert_ne!(osinit.addr, osinit_abi0.addr, "{what}");
            assert_eq!(
                table.lookup_name("runtime.osinit").map(|e| e.entry),
                Some(osinit.addr)
            );
            // An assembly function with an ABIInternal wrapper: the plain symbol is the wrapper,
            // and pclntab's lookup_name skips it for the body, the .abi0 symbol.
            let asm_body = bin.function("runtime.asmcgocall.abi0").unwrap();
            assert_ne!(
                bin.function("runtime.asmcgocall").unwrap().addr,
                asm_body.addr
            );
            assert_eq!(
                table.lookup_name("runtime.asmcgocall").map(|e| e.entry),
                Some(asm_body.addr),
                "{what}"
            );
            assert!(
                bin.function("main.addOne").is_none(),
                "{what}: main.addOne was not inlined"
            );
            assert!(bin.function("runtime.noSuchFunction").is_none());
        }
    }
}

/// A stripped binary finds the functions where the unstripped build's `.symtab` has them.
#[test]
fn stripped_binaries_find_functions_through_pclntab() {
    for version in go_versions() {
        for variant in [Variant::Stripped, Variant::PieStripped] {
            let what = format!("Go {version} {variant:?}");
            let bin = open(&version, variant);
            let full = open(&version, variant.unstripped());
            assert!(bin.data_symbol("runtime.allgs").is_none(), "{what}");
            for name in PROBED.iter().chain(&ABI_VARIANTS) {
                let f = bin
                    .function(name)
                    .unwrap_or_else(|| panic!("{what}: no {name}"));
                let reference = full.function(name).unwrap();
                // -s -w changes data addresses only; the code keeps its layout.
                assert_eq!(f.addr, reference.addr, "{what}: {name}");
                assert!(
                    f.size >= reference.size,
                    "{what}: {name} size {} < {}",
                    f.size,
                    reference.size
                );
            }
            assert_eq!(bin.text_range(), full.text_range(), "{what}");
            assert!(bin.gofunc_addr().is_some(), "{what}: moduledata not found");
        }
    }
}

/// A PC inside the call that `main.addOne`, inlined into `main.relay`, makes to `main.produce`
/// gives the inlined frame first, then its caller, with the lines marked in main.go.
#[test]
fn symbolize_expands_inlined_calls() {
    let frame = |function: &str, line: u32| (function.to_string(), line);
    for version in go_versions() {
        for variant in VARIANTS {
            let what = format!("Go {version} {variant:?}");
            let bin = open(&version, variant);
            let produce = bin.function("main.produce").unwrap().addr;
            let relay = bin.function("main.relay").unwrap();
            let worker = bin.function("main.worker").unwrap();

            let calls = calls_to(&bin, &relay, produce);
            assert_eq!(
                calls.len(),
                1,
                "{what}: calls from main.relay to main.produce: {calls:x?}"
            );
            let frames = bin.symbolize(calls[0] - 1);
            let got: Vec<_> = frames
                .iter()
                .map(|f| (f.function.clone(), f.line))
                .collect();
            assert_eq!(
                got,
                vec![
                    frame("main.addOne", line_of("inlined-call")),
                    frame("main.relay", line_of("inline-site"))
                ],
                "{what}"
            );
            assert!(frames.iter().all(in_fixture_source), "{what}: {frames:?}");

            let calls = calls_to(&bin, &worker, produce);
            assert_eq!(
                calls.len(),
                1,
                "{what}: calls from main.worker to main.produce"
            );
            let frames = bin.symbolize(calls[0] - 1);
            let got: Vec<_> = frames
                .iter()
                .map(|f| (f.function.clone(), f.line))
                .collect();
            assert_eq!(
                got,
                vec![frame("main.worker", line_of("direct-call"))],
                "{what}"
            );

            let table = bin.pclntab();
            let entry = table.find_func(relay.addr + 1).unwrap();
            assert_eq!(entry.name, "main.relay");
            assert_eq!(
                table.func_start_line(&entry),
                Some(line_of("relay")),
                "{what}"
            );
            assert!(bin.symbolize(bin.text_range().end + 0x1000).is_empty());
        }
    }
}

fn in_fixture_source(f: &Frame) -> bool {
    f.file.ends_with("symbolize/main.go")
}

/// Return addresses of `call rel32` instructions in `f` whose target is `target`.
fn calls_to(bin: &GoBinary, f: &leaktrace::tracee::binary::Function, target: u64) -> Vec<u64> {
    let code = bin.read_vaddr(f.addr, f.size as usize).unwrap();
    (0..code.len().saturating_sub(4))
        .filter(|&i| code[i] == 0xe8)
        .filter_map(|i| {
            let rel = i32::from_le_bytes(code[i + 1..i + 5].try_into().unwrap());
            let ret = f.addr + i as u64 + 5;
            (ret.wrapping_add_signed(rel.into()) == target).then_some(ret)
        })
        .collect()
}

/// Link-time addresses map to the file offsets that the section headers give.
#[test]
fn file_offsets_follow_the_load_segments() {
    for version in go_versions() {
        for variant in VARIANTS {
            let what = format!("Go {version} {variant:?}");
            let path = fixture(&version, variant);
            let data = fs::read(&path).unwrap();
            let file = object::File::parse(&*data).unwrap();
            let text = file.section_by_name(".text").unwrap();
            let bin = open(&version, variant);
            assert_eq!(
                bin.text_range(),
                text.address()..text.address() + text.size(),
                "{what}"
            );
            for name in PROBED {
                let f = bin.function(name).unwrap();
                let expected = text.file_range().unwrap().0 + (f.addr - text.address());
                assert_eq!(bin.file_offset(f.addr), Some(expected), "{what}: {name}");
                let at = expected as usize;
                assert_eq!(
                    bin.read_vaddr(f.addr, 16),
                    Some(&data[at..at + 16]),
                    "{what}: {name}"
                );
            }
            let rodata = file.section_by_name(".rodata").unwrap();
            assert_eq!(
                bin.file_offset(rodata.address() + 8),
                Some(rodata.file_range().unwrap().0 + 8),
                "{what}"
            );
            let bss = file.section_by_name(".bss").unwrap();
            assert_eq!(
                bin.file_offset(bss.address() + 64),
                None,
                "{what}: .bss is not in the file"
            );
            assert_eq!(bin.read_vaddr(bss.address() + 64, 8), None, "{what}");
            assert_eq!(bin.file_offset(0), None, "{what}");
            assert_eq!(
                bin.read_vaddr(text.address() + text.size() - 4, 4096),
                None,
                "{what}"
            );
        }
    }
}

/// Truncated and corrupted binaries give errors or degraded answers, never a panic.
#[test]
fn damaged_binaries_never_panic() {
    for version in go_versions() {
        for variant in [Variant::Default, Variant::PieStripped] {
            let what = format!("Go {version} {variant:?}");
            let path = fixture(&version, variant);
            let data = fs::read(&path).unwrap();
            let file = object::File::parse(&*data).unwrap();
            let range = |name: &str| {
                let s = file.section_by_name(name)?;
                let (off, len) = s.file_range()?;
                Some(off as usize..(off + len) as usize)
            };
            let pcln = range(".gopclntab")
                .or_else(|| range(".data.rel.ro.gopclntab"))
                .unwrap();
            let buildinfo = range(".go.buildinfo").unwrap();
            let text = file.section_by_name(".text").unwrap().address();
            let version_expected = expected_version(&version);

            for len in [
                0,
                3,
                4,
                19,
                20,
                63,
                64,
                65,
                200,
                4096,
                pcln.start,
                pcln.start + 100,
                pcln.end - 1,
                buildinfo.start + 20,
                data.len() / 2,
                data.len() - 1,
            ] {
                let cut = data[..len.min(data.len())].to_vec();
                match GoBinary::from_bytes("cut", cut) {
                    Ok(bin) => exercise(&bin, text),
                    Err(e) => assert!(e.to_string().starts_with("cut "), "{what}: {e}"),
                }
            }
            assert!(matches!(
                GoBinary::from_bytes("cut", data[..3].to_vec()),
                Err(BinaryError::NotElf { .. })
            ));

            // Pseudo-random byte flips in the two Go sections, many at a time.
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for round in 0..24 {
                let mut damaged = data.clone();
                let section = if round % 3 == 0 { &buildinfo } else { &pcln };
                let flips = 1 + (next() % 64) as usize;
                for _ in 0..flips {
                    // Half the rounds hit the headers, where the offsets live.
                    let span = if round % 2 == 0 {
                        96.min(section.len())
                    } else {
                        section.len()
                    };
                    let at = section.start + (next() as usize) % span;
                    damaged[at] ^= (next() as u8) | 1;
                }
                if let Ok(bin) = GoBinary::from_bytes("flipped", damaged) {
                    exercise(&bin, text);
                }
            }

            // Without a build info header, the runtime's version string is found instead.
            let mut no_magic = data.clone();
            no_magic[buildinfo.start..buildinfo.start + 14].fill(0);
            let bin = GoBinary::from_bytes("no-buildinfo", no_magic)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(bin.version(), version_expected, "{what}");
            assert!(bin.build().settings.is_empty());

            // A table from another Go era is refused with the era named.
            let mut old = data.clone();
            old[pcln.start..pcln.start + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
            let err = GoBinary::from_bytes("old", old).unwrap_err();
            assert!(err.to_string().contains("Go 1.18-1.19"), "{what}: {err}");
        }
    }
}

/// Calls everything that reads the tables.
fn exercise(bin: &GoBinary, text: u64) {
    let table = bin.pclntab();
    let n = table.functions().take(100_000).count();
    assert!(n <= table.len());
    for name in PROBED {
        let _ = bin.function(name);
    }
    let _ = table.detect_wrapper_func_id();
    for i in 0..200u64 {
        let pc = text + i * 0x397;
        let _ = bin.symbolize(pc);
        let _ = bin.file_offset(pc);
    }
}

/// Every runtime probe traps on an instruction the kernel emulates, on every Go version and
/// build: the entry probes on the frame's `push rbp` after the stack check (past the entry,
/// so a call that grows its stack is seen once), the create probe on a jump before each of
/// `newproc1`'s returns, from which nothing but RAX-preserving code leads to the `RET`.
/// On the single-stepped instructions they sat on before, a hit cost 7-10 times more.
#[test]
fn runtime_probes_trap_on_emulated_instructions() {
    use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic};
    use leaktrace::{probes::Probe, tracee::code};
    for version in go_versions() {
        for variant in VARIANTS {
            let bin = open(&version, variant);
            let case = format!("Go {version} {variant:?}");
            for probe in Probe::ALL {
                let Some(f) = bin.function(probe.function()) else {
                    continue; // not linked in: never placed
                };
                if probe == Probe::Site {
                    continue; // placed at suspects' sites
                }
                let addrs = probe.addresses(&bin).unwrap();
                for &a in &addrs {
                    assert!(code::emulated_at(&bin, a), "{case}: {probe:?} at {a:#x}");
                    if !matches!(probe, Probe::Create | Probe::Alloc) {
                        // Past the stack check, or on the entry of a function without one.
                        assert!(
                            a >= f.addr && a < f.addr + 24,
                            "{case}: {probe:?} at {a:#x}"
                        );
                        assert_eq!(
                            bin.read_vaddr(a, 1),
                            Some(&[0x55u8][..]),
                            "{case}: {probe:?}"
                        );
                    }
                }
                if probe == Probe::Create {
                    // One probe per RET, each before it: walked on from the probe, the
                    // code reaches a RET with no call and no other return between.
                    let code = bin.read_vaddr(f.addr, f.size as usize).unwrap();
                    let instrs: Vec<_> = Decoder::with_ip(64, code, f.addr, DecoderOptions::NONE)
                        .into_iter()
                        .collect();
                    let rets = instrs
                        .iter()
                        .filter(|i| i.mnemonic() == Mnemonic::Ret)
                        .count();
                    assert_eq!(addrs.len(), rets, "{case}: {addrs:#x?}");
                    for &a in &addrs {
                        let from = instrs.iter().position(|i| i.ip() == a).unwrap();
                        let ret = instrs[from..]
                            .iter()
                            .position(|i| i.mnemonic() == Mnemonic::Ret)
                            .unwrap();
                        assert!(ret <= 16, "{case}: {a:#x}");
                        assert!(
                            instrs[from + 1..from + ret]
                                .iter()
                                .all(|i| i.flow_control() != FlowControl::Call),
                            "{case}: {a:#x}"
                        );
                    }
                }
            }
        }
    }
}
