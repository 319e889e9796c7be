//! A Go executable on disk: its Go version, where its functions are, and how link-time
//! addresses map to file offsets (what a uprobe attaches to).
//!
//! Function addresses come from `.symtab` when the binary has one, else from the runtime's
//! `.gopclntab`, which `-ldflags=-s -w` keeps; PCs are symbolized through `.gopclntab`, inlined
//! calls included. Everything is read once into memory, and every failure names the file and
//! what is wrong with it: a user who points leaktrace at the wrong process should learn that
//! from the first line of output.
//!
//! Section names differ between releases: the table is `.gopclntab`, except in PIE builds of
//! Go 1.21-1.25 where it is `.data.rel.ro.gopclntab` (it held a relocated `textStart` then).
//! The inline tree lives outside it, at `moduledata.gofunc`; stripped binaries have no symbol
//! for that, so `runtime.firstmoduledata` is found by its first two words, which point into
//! the table (see `find_moduledata`).

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::Path;

use object::elf::{ET_DYN, PT_LOAD, SHF_ALLOC, SHF_WRITE, SHT_NOBITS};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::{LittleEndian, Object, ObjectSymbol, SymbolKind};
use thiserror::Error;

use super::buildinfo::{self, BuildInfo, BuildInfoError, GoVersion, MIN_SUPPORTED};
use super::pclntab::{Frame, Pclntab, PclntabError, u64_at};

/// A function's address range, at link-time addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The name found: the `.symtab` name (which may end in `.abi0`) or the pclntab name.
    pub name: String,
    /// Link-time virtual address; [`GoBinary::file_offset`] turns it into a uprobe offset.
    pub addr: u64,
    /// From `.symtab` the exact size; from pclntab the distance to the next function, which
    /// includes alignment padding.
    pub size: u64,
}

/// Why a file cannot be traced. Each message names the file, says what is wrong, and where
/// possible what to do.
#[derive(Debug, Error)]
pub enum BinaryError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is not an ELF file; leaktrace traces linux/amd64 Go programs")]
    NotElf { path: String },
    #[error("{path} is a damaged ELF file ({reason}); was it truncated or still being written?")]
    BadElf { path: String, reason: String },
    #[error("{path} is built for {arch}; leaktrace supports linux/amd64 Go binaries")]
    WrongArch { path: String, arch: String },
    #[error("{path} is a Go program for GOOS={goos}; leaktrace supports linux/amd64 Go binaries")]
    WrongOs { path: String, goos: String },
    #[error("{path} is not a Go program: no .go.buildinfo section and no Go version string")]
    NotGo { path: String },
    #[error(
        "{path} has a garbled .go.buildinfo section ({source}) and no Go version string \
         elsewhere; is it a Go program?"
    )]
    BuildInfo {
        path: String,
        source: BuildInfoError,
    },
    #[error(
        "{path} was built with {version}; leaktrace supports Go 1.21 and newer (rebuild it with \
         a newer Go toolchain)"
    )]
    TooOld { path: String, version: String },
    #[error("{path} has no .gopclntab section (garbled or not Go)")]
    NoPclntab { path: String },
    #[error("{path} has an unreadable .gopclntab section: {source}")]
    Pclntab { path: String, source: PclntabError },
}

/// A PT_LOAD segment: `[vaddr, vaddr + filesz)` is backed by `[offset, offset + filesz)` of
/// the file.
#[derive(Debug, Clone, Copy)]
struct LoadSegment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
}

/// An ELF symbol's address and size.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    addr: u64,
    size: u64,
}

/// An opened Go executable, held in memory.
#[derive(Debug)]
pub struct GoBinary {
    path: String,
    data: Vec<u8>,
    build: BuildInfo,
    pie: bool,
    stripped: bool,
    dwarf: bool,
    text: Range<u64>,
    segments: Vec<LoadSegment>,
    functions: HashMap<String, Symbol>,
    objects: HashMap<String, Symbol>,
    /// File range of the pclntab section.
    pclntab: Range<usize>,
    moduledata: Option<u64>,
    gofunc: Option<u64>,
}

/// `moduledata.gofunc` offset: 40 words in 1.21-1.26, 43 in 1.27, where `types` gained
/// `typedesclen` and `itaboffset`/`itabsize` were added (go1.21.13..go1.27.3
/// `src/runtime/symtab.go`, `type moduledata`).
fn gofunc_field_offset(version: GoVersion) -> usize {
    if (version.major, version.minor) >= (1, 27) {
        344
    } else {
        320
    }
}

/// `moduledata.text` offset: word 22 in 1.21-1.27 (after pcHeader, six slices, findfunctab,
/// minpc, maxpc).
const MODULEDATA_TEXT: usize = 176;

impl GoBinary {
    /// Reads and checks the executable at `path`, e.g. `/proc/4242/exe`.
    pub fn open(path: &Path) -> Result<GoBinary, BinaryError> {
        let name = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| BinaryError::Read {
            path: name.clone(),
            source,
        })?;
        GoBinary::from_bytes(&name, data)
    }

    /// Checks an executable already in memory; `name` is used in error messages.
    pub fn from_bytes(name: &str, data: Vec<u8>) -> Result<GoBinary, BinaryError> {
        let path = name.to_string();
        check_ident(&path, &data)?;
        let elf =
            ElfFile64::<LittleEndian>::parse(data.as_slice()).map_err(|e| BinaryError::BadElf {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let endian = elf.endian();
        let pie = elf.elf_header().e_type(endian) == ET_DYN;

        let mut sections: Vec<SectionInfo> = Vec::new();
        let table = elf.elf_section_table();
        for header in table.iter() {
            let name = table.section_name(endian, header).unwrap_or_default();
            let file = if header.sh_type(endian) == SHT_NOBITS {
                None
            } else {
                header.file_range(endian).and_then(|(off, size)| {
                    let start = usize::try_from(off).ok()?;
                    let end = start.checked_add(usize::try_from(size).ok()?)?;
                    (end <= data.len()).then_some(start..end)
                })
            };
            sections.push(SectionInfo {
                name: String::from_utf8_lossy(name).into_owned(),
                addr: header.sh_addr(endian),
                size: header.sh_size(endian),
                flags: header.sh_flags(endian).0,
                file,
            });
        }
        let section = |name: &str| sections.iter().find(|s| s.name == name);

        let segments: Vec<LoadSegment> = elf
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == PT_LOAD)
            .map(|ph| LoadSegment {
                vaddr: ph.p_vaddr(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
            })
            .collect();

        let build = read_build_info(
            &path,
            section(".go.buildinfo").and_then(|s| s.bytes(&data)),
            &data,
        )?;
        if let Some(goos) = build.setting("GOOS")
            && goos != "linux"
        {
            return Err(BinaryError::WrongOs {
                path,
                goos: goos.to_string(),
            });
        }
        if build.version < MIN_SUPPORTED {
            return Err(BinaryError::TooOld {
                path,
                version: build.version_string.clone(),
            });
        }

        let pcln_section = section(".gopclntab")
            .or_else(|| section(".data.rel.ro.gopclntab"))
            .filter(|s| s.file.is_some())
            .ok_or_else(|| BinaryError::NoPclntab { path: path.clone() })?;
        let pclntab = pcln_section.file.clone().unwrap_or_default();
        let text = section(".text")
            .map(|s| s.addr..s.addr.saturating_add(s.size))
            .ok_or_else(|| BinaryError::BadElf {
                path: path.clone(),
                reason: "no .text section".to_string(),
            })?;
        let table =
            Pclntab::new(&data[pclntab.clone()], text.start, build.version).map_err(|source| {
                BinaryError::Pclntab {
                    path: path.clone(),
                    source,
                }
            })?;

        let mut functions = HashMap::new();
        let mut objects = HashMap::new();
        for sym in elf.symbols() {
            let (Ok(name), Some(_)) = (sym.name(), sym.section_index()) else {
                continue;
            };
            let map = match sym.kind() {
                SymbolKind::Text => &mut functions,
                SymbolKind::Data | SymbolKind::Tls => &mut objects,
                _ => continue,
            };
            map.entry(name.to_string()).or_insert(Symbol {
                addr: sym.address(),
                size: sym.size(),
            });
        }
        let stripped = section(".symtab").is_none();
        let dwarf = section(".debug_info").is_some() || section(".zdebug_info").is_some();

        let moduledata = find_moduledata(&sections, &data, pcln_section.addr, &table, text.start);
        let mut binary = GoBinary {
            path,
            data,
            build,
            pie,
            stripped,
            dwarf,
            text,
            segments,
            functions,
            objects,
            pclntab,
            moduledata,
            gofunc: None,
        };
        binary.gofunc = moduledata
            .and_then(|md| {
                let field = md.checked_add(gofunc_field_offset(binary.build.version) as u64)?;
                binary.read_u64(field)
            })
            .filter(|&addr| binary.vaddr_tail(addr).is_some())
            .or_else(|| binary.data_symbol("go:func.*").map(|s| s.addr));
        Ok(binary)
    }

    /// The path or name the binary was opened as.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn build(&self) -> &BuildInfo {
        &self.build
    }

    pub fn version(&self) -> GoVersion {
        self.build.version
    }

    /// Position-independent (ET_DYN): the process maps it at a load bias to be read from
    /// `/proc/PID/maps`; link-time addresses must be shifted by that bias.
    pub fn is_pie(&self) -> bool {
        self.pie
    }

    /// No `.symtab` (built with `-ldflags=-s` or run through `strip`): no data symbols, and
    /// function addresses come from pclntab.
    pub fn is_stripped(&self) -> bool {
        self.stripped
    }

    /// Has DWARF (`.debug_info`, compressed or not); `-ldflags=-w` removes it.
    pub fn has_dwarf(&self) -> bool {
        self.dwarf
    }

    /// The whole file.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Link-time address range of `.text`.
    pub fn text_range(&self) -> Range<u64> {
        self.text.clone()
    }

    /// Link-time address of `runtime.firstmoduledata`, found without symbols. `None` if the
    /// search failed (a layout from a newer Go), in which case inlined calls are not expanded.
    pub fn moduledata_addr(&self) -> Option<u64> {
        self.moduledata
    }

    /// Link-time address of `go:func.*` (`moduledata.gofunc`), where FUNCDATA such as the
    /// inline trees is stored.
    pub fn gofunc_addr(&self) -> Option<u64> {
        self.gofunc
    }

    /// The runtime symbol table, with the inline trees when they were found.
    pub fn pclntab(&self) -> Pclntab<'_> {
        // `from_bytes` built this same view from these same bytes, so it cannot fail here.
        let table = Pclntab::new(
            &self.data[self.pclntab.clone()],
            self.text.start,
            self.build.version,
        )
        .expect("pclntab was validated when the binary was opened");
        match self.gofunc.and_then(|addr| self.vaddr_tail(addr)) {
            Some(gofunc) => table.with_gofunc(gofunc),
            None => table,
        }
    }

    /// A function by its ELF symbol name, e.g. `runtime.gopark` or `main.(*Server).handle`.
    ///
    /// From `.symtab` when present. ABI0 code (assembly) has symbols ending in `.abi0`: a
    /// plain name finds `name.abi0` when no plain symbol exists (`runtime.madvise` gives
    /// `runtime.madvise.abi0`). When both exist the plain one is returned, which is the
    /// ABIInternal entry, the one with arguments in registers: the body for a Go function
    /// with an ABI0 wrapper (`runtime.newproc`), the wrapper for an assembly function with an
    /// ABIInternal one (`runtime.asmcgocall`). Without `.symtab`, the same symbol is found in
    /// pclntab (see [`Pclntab::lookup_symbol`]), so stripped and unstripped builds agree.
    pub fn function(&self, name: &str) -> Option<Function> {
        let abi0 = (!name.ends_with(".abi0")).then(|| format!("{name}.abi0"));
        let candidates = std::iter::once(name).chain(abi0.as_deref());
        // A .symtab without function symbols (damaged, or emptied by some tool) is treated
        // as absent, so that pclntab still answers.
        if !self.functions.is_empty() {
            return candidates
                .filter_map(|n| Some((n, self.functions.get(n)?)))
                .map(|(n, sym)| Function {
                    name: n.to_string(),
                    addr: sym.addr,
                    size: sym.size,
                })
                .next();
        }
        let table = self.pclntab();
        candidates
            .filter_map(|n| Some((n, table.lookup_symbol(n)?)))
            .map(|(n, f)| Function {
                name: n.to_string(),
                addr: f.entry,
                size: f.end - f.entry,
            })
            .next()
    }

    /// A data symbol (a global variable such as `runtime.allgs`) from `.symtab`. `None` when
    /// the binary is stripped: pclntab describes only code.
    pub fn data_symbol(&self, name: &str) -> Option<Function> {
        self.objects.get(name).map(|sym| Function {
            name: name.to_string(),
            addr: sym.addr,
            size: sym.size,
        })
    }

    /// The file offset holding link-time address `vaddr`, through the PT_LOAD segments. This
    /// is the offset a uprobe is attached at. `None` for addresses not backed by the file
    /// (`.bss`, or outside every segment).
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments.iter().find_map(|seg| {
            let delta = vaddr.checked_sub(seg.vaddr)?;
            (delta < seg.filesz)
                .then(|| seg.offset.checked_add(delta))
                .flatten()
        })
    }

    /// The link-time address of file offset `offset`, through the PT_LOAD segments: where a
    /// uprobe attached at that offset puts its breakpoint (add the load bias).
    pub fn vaddr_of_offset(&self, offset: u64) -> Option<u64> {
        self.segments.iter().find_map(|seg| {
            let delta = offset.checked_sub(seg.offset)?;
            (delta < seg.filesz)
                .then(|| seg.vaddr.checked_add(delta))
                .flatten()
        })
    }

    /// The file's bytes at link-time addresses `vaddr..vaddr + len`: the initial contents of
    /// code and static data, not what a running process holds now.
    pub fn read_vaddr(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        self.vaddr_tail(vaddr)?.get(..len)
    }

    /// The frames at link-time address `pc`, innermost inlined call first; see
    /// [`Pclntab::symbolize`]. For a return address from a stack, pass `pc - 1`.
    pub fn symbolize(&self, pc: u64) -> Vec<Frame> {
        self.pclntab().symbolize(pc)
    }

    /// The bytes from `vaddr` to the end of its segment's file-backed part.
    fn vaddr_tail(&self, vaddr: u64) -> Option<&[u8]> {
        self.segments.iter().find_map(|seg| {
            let delta = vaddr.checked_sub(seg.vaddr)?;
            if delta >= seg.filesz {
                return None;
            }
            let start = usize::try_from(seg.offset.checked_add(delta)?).ok()?;
            let end = usize::try_from(seg.offset.checked_add(seg.filesz)?).ok()?;
            self.data.get(start..end.min(self.data.len()))
        })
    }

    fn read_u64(&self, vaddr: u64) -> Option<u64> {
        let bytes = self.read_vaddr(vaddr, 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

/// What is needed of a section header after parsing.
struct SectionInfo {
    name: String,
    addr: u64,
    size: u64,
    flags: u64,
    /// Byte range in the file; `None` for NOBITS or out-of-file ranges.
    file: Option<Range<usize>>,
}

impl SectionInfo {
    fn bytes<'d>(&self, data: &'d [u8]) -> Option<&'d [u8]> {
        data.get(self.file.clone()?)
    }
}

/// Refuses what is not a little-endian 64-bit x86-64 ELF before parsing, so the message can
/// name the architecture the file is for.
fn check_ident(path: &str, data: &[u8]) -> Result<(), BinaryError> {
    if data.len() < 20 || &data[..4] != b"\x7fELF" {
        return Err(BinaryError::NotElf {
            path: path.to_string(),
        });
    }
    let class64 = data[4] == 2;
    let little = data[5] == 1;
    let machine = if little {
        u16::from_le_bytes([data[18], data[19]])
    } else {
        u16::from_be_bytes([data[18], data[19]])
    };
    // e_machine values from the ELF gABI, named as GOARCH does.
    let arch = match (machine, class64, little) {
        (62, true, true) => return Ok(()),
        (62, ..) => "a non-64-bit x86-64 variant".to_string(),
        (3, ..) => "386".to_string(),
        (40, ..) => "arm".to_string(),
        (183, ..) => "arm64".to_string(),
        (243, ..) => "riscv64".to_string(),
        (21, _, true) => "ppc64le".to_string(),
        (21, _, false) => "ppc64".to_string(),
        (22, ..) => "s390x".to_string(),
        (8, true, true) => "mips64le".to_string(),
        (8, true, false) => "mips64".to_string(),
        (8, false, true) => "mipsle".to_string(),
        (8, false, false) => "mips".to_string(),
        (258, ..) => "loong64".to_string(),
        (other, ..) => format!("ELF machine {other}"),
    };
    Err(BinaryError::WrongArch {
        path: path.to_string(),
        arch,
    })
}

/// The build info from `.go.buildinfo`, or, when that section is missing or garbled, a version
/// found in the file's bytes (without build settings).
fn read_build_info(
    path: &str,
    section: Option<&[u8]>,
    data: &[u8],
) -> Result<BuildInfo, BinaryError> {
    let scanned = || {
        buildinfo::version_from_bytes(data).map(|version| BuildInfo {
            version_string: version.to_string(),
            version,
            main_path: None,
            settings: Vec::new(),
        })
    };
    let Some(section) = section else {
        return scanned().ok_or_else(|| BinaryError::NotGo {
            path: path.to_string(),
        });
    };
    match buildinfo::parse(section) {
        Ok(info) => Ok(info),
        Err(BuildInfoError::TooOld { .. }) => Err(BinaryError::TooOld {
            path: path.to_string(),
            version: scanned().map_or_else(|| "Go 1.17 or older".to_string(), |b| b.version_string),
        }),
        Err(source) => scanned().ok_or_else(|| BinaryError::BuildInfo {
            path: path.to_string(),
            source,
        }),
    }
}

/// Finds `runtime.firstmoduledata` in the writable data: the only place holding, 8-byte
/// aligned, the address of the pclntab header followed by the address of its funcnametab
/// (`moduledata.pcHeader` and `funcnametab.ptr`), with `moduledata.text` equal to `.text`.
/// Go's PIE builds store these pointers in place as well as in their relocations, so the file
/// bytes suffice for PIE too.
fn find_moduledata(
    sections: &[SectionInfo],
    data: &[u8],
    pclntab_addr: u64,
    table: &Pclntab<'_>,
    text_start: u64,
) -> Option<u64> {
    let funcnametab = pclntab_addr.checked_add(u64_at(table.data(), 32)?)?;
    let writable = SHF_ALLOC.0 | SHF_WRITE.0;
    sections
        .iter()
        .filter(|s| s.flags & writable == writable)
        .find_map(|s| {
            let bytes = s.bytes(data)?;
            let skip = usize::try_from((8 - s.addr % 8) % 8).ok()?;
            (skip..bytes.len())
                .step_by(8)
                .find(|&i| {
                    u64_at(bytes, i) == Some(pclntab_addr)
                        && u64_at(bytes, i + 8) == Some(funcnametab)
                        && u64_at(bytes, i + MODULEDATA_TEXT) == Some(text_start)
                })
                .and_then(|i| s.addr.checked_add(i as u64))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn elf_header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = b"\x7fELF".to_vec();
        h.extend([class, data, 1]);
        h.resize(18, 0);
        if data == 1 {
            h.extend(machine.to_le_bytes());
        } else {
            h.extend(machine.to_be_bytes());
        }
        h.resize(64, 0);
        h
    }

    #[test]
    fn refusals_name_the_file_and_the_problem() {
        let err = GoBinary::from_bytes("/proc/4242/exe", b"#!/bin/sh\n".to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc/4242/exe is not an ELF file; leaktrace traces linux/amd64 Go programs"
        );
        let err = GoBinary::from_bytes("app", elf_header(2, 1, 183)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "app is built for arm64; leaktrace supports linux/amd64 Go binaries"
        );
        let err = GoBinary::from_bytes("app", elf_header(2, 2, 21)).unwrap_err();
        assert!(err.to_string().contains("built for ppc64;"), "{err}");
        let err = GoBinary::from_bytes("app", elf_header(1, 1, 3)).unwrap_err();
        assert!(err.to_string().contains("built for 386;"), "{err}");
        // An x86-64 header with nothing behind it.
        let err = GoBinary::from_bytes("app", elf_header(2, 1, 62)).unwrap_err();
        assert!(
            matches!(err, BinaryError::BadElf { .. } | BinaryError::NotGo { .. }),
            "{err}"
        );
    }

    #[test]
    fn build_info_fallbacks() {
        let data = b"\0\0go1.19.13\0\0".to_vec();
        let info = read_build_info("app", None, &data).unwrap();
        assert_eq!(info.version, GoVersion::new(1, 19, 13));
        let err = read_build_info("/proc/4242/exe", None, b"nothing here").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/proc/4242/exe is not a Go program: no .go.buildinfo section and no Go version string"
        );
        // Pointer-format header: too old, with the version found elsewhere when there is one.
        let mut old = b"\xff Go buildinf:\x08\x00".to_vec();
        old.resize(32, 0);
        let err = read_build_info("app", Some(&old), &data).unwrap_err();
        assert_eq!(
            err.to_string(),
            "app was built with go1.19.13; leaktrace supports Go 1.21 and newer (rebuild it with a \
             newer Go toolchain)"
        );
        let err = read_build_info("app", Some(&old), b"").unwrap_err();
        assert!(
            err.to_string().contains("built with Go 1.17 or older"),
            "{err}"
        );
        // A garbled section: the version scan still answers.
        let info = read_build_info("app", Some(b"garbage"), b"\0go1.24.11\0").unwrap();
        assert_eq!(info.version, GoVersion::new(1, 24, 11));
        let err = read_build_info("app", Some(b"garbage"), b"").unwrap_err();
        assert!(matches!(err, BinaryError::BuildInfo { .. }), "{err}");
    }

    #[test]
    fn gofunc_offset_by_release() {
        assert_eq!(gofunc_field_offset(GoVersion::new(1, 21, 13)), 320);
        assert_eq!(gofunc_field_offset(GoVersion::new(1, 26, 6)), 320);
        assert_eq!(gofunc_field_offset(GoVersion::new(1, 27, 3)), 344);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = GoBinary::from_bytes("fuzz", data);
        }

        /// Arbitrary bytes behind a valid x86-64 ELF identification, so that parsing goes past
        /// the first check.
        #[test]
        fn arbitrary_elf_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut data = elf_header(2, 1, 62);
            data.truncate(20);
            data.extend(body);
            let _ = GoBinary::from_bytes("fuzz", data);
        }
    }
}
