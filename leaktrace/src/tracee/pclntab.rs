//! The Go runtime's own symbol table, `.gopclntab`: function names and entry points, and the
//! PC-to-file:line tables with the inline tree, present even in binaries stripped with
//! `-ldflags=-s -w`.
//!
//! leaktrace needs it for two things: finding runtime functions to probe when `.symtab` is
//! gone, and turning the PCs of goroutine stacks into `function file:line` frames, inlined
//! calls included, the way Go's own tracebacks print them.
//!
//! Only the Go 1.20+ format (magic 0xfffffff1) is read; it is the one of every supported
//! release (1.21-1.27). The layout follows go1.21.13..go1.27.3 `src/runtime/symtab.go`
//! (`pcHeader`, `functab`, `pcvalue`, `step`) and `src/runtime/symtabinl.go` (`inlinedCall`),
//! checked identical in all seven. Two per-version facts matter:
//! - `pcHeader.textStart` is written by 1.21-1.25 but always 0 from 1.26 (it needed a
//!   relocation), so the caller passes the `.text` address instead;
//! - `FuncIDWrapper`, which marks ABI wrappers sharing a name with the real function, moved
//!   from 21 to 22 to 23 as funcIDs were added (see [`wrapper_func_id`]).
//!
//! Nothing here trusts the data: every read is bounds-checked, a corrupt table gives `None` or
//! fewer frames, never a panic.

use thiserror::Error;

use super::buildinfo::GoVersion;

/// One function of the function table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncEntry {
    /// Full Go name as the runtime prints it, e.g. `runtime.gopark`, `main.(*T).M`. ABI0
    /// wrappers and assembly functions carry no `.abi0` suffix here, unlike in `.symtab`.
    pub name: String,
    /// Link-time address of the first instruction.
    pub entry: u64,
    /// Link-time address where the next function starts (so it includes alignment padding).
    pub end: u64,
    /// `abi.FuncID`: 0 for ordinary functions; see [`wrapper_func_id`].
    pub func_id: u8,
    /// Offset of this function's `_func` record from the start of the function table.
    func_off: u32,
}

/// One frame of a symbolized PC: a physical function or a call inlined into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    /// The source file as recorded by the compiler (an absolute path unless built with
    /// `-trimpath`), or `?` when the table does not say.
    pub file: String,
    /// 0 when the table does not say.
    pub line: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PclntabError {
    #[error("the table is {0} bytes, shorter than its header")]
    Truncated(usize),
    #[error(
        "pclntab magic {magic:#010x} is the format of {go_versions}; leaktrace reads the Go 1.20+ \
         format (0xfffffff1) of Go 1.21 and newer"
    )]
    OldFormat {
        magic: u32,
        go_versions: &'static str,
    },
    #[error("pclntab magic {0:#010x} is not one Go ever wrote")]
    BadMagic(u32),
    #[error("the header says {what} = {value}, which is not a linux/amd64 Go table")]
    BadHeader { what: &'static str, value: u64 },
    #[error("the header's {what} offset {offset:#x} is outside the {len}-byte table")]
    BadOffset {
        what: &'static str,
        offset: u64,
        len: usize,
    },
}

/// Magic of the Go 1.20+ format (go1.27.3 `src/internal/abi/symtab.go`, `Go120PCLnTabMagic`).
const MAGIC_GO120: u32 = 0xffff_fff1;
/// Older magics, to tell the user which Go release wrote the table
/// (`src/debug/gosym/pclntab.go`, go1.27.3).
const OLD_MAGICS: [(u32, &str); 3] = [
    (0xffff_fff0, "Go 1.18-1.19"),
    (0xffff_fffa, "Go 1.16-1.17"),
    (0xffff_fffb, "Go 1.2-1.15"),
];
/// `pcHeader` is 8 words: magic+pads+minLC+ptrSize, nfunc, nfiles, textStart, then the five
/// table offsets (go1.27.3 `src/runtime/symtab.go`).
const HEADER_SIZE: usize = 72;
/// `_func` size before its pcdata/funcdata arrays, the same in 1.21-1.27
/// (`src/runtime/runtime2.go`).
const FUNC_SIZE: usize = 44;
/// `abi.PCDATA_InlTreeIndex` and `abi.FUNCDATA_InlTree` (go1.21.13..go1.27.3
/// `src/internal/abi/symtab.go`).
const PCDATA_INL_TREE_INDEX: u32 = 2;
const FUNCDATA_INL_TREE: u8 = 3;
/// `abi.PCDATA_StackMapIndex`: which of a function's stack maps holds at a PC
/// (go1.21.13..go1.27.3 `src/internal/abi/symtab.go`). `PCDATA_UnsafePoint` (0) is not read:
/// it concerns asynchronous preemption, and Go's own stack scan (`scanframeworker`) does not
/// consult it; every function of package runtime is marked unsafe throughout, call sites
/// included, yet scanned precisely at them.
const PCDATA_STACK_MAP_INDEX: u32 = 1;
/// `abi.FUNCDATA_ArgsPointerMaps`, `FUNCDATA_LocalsPointerMaps` and `FUNCDATA_StackObjects`
/// (go1.21.13..go1.27.3 `src/internal/abi/symtab.go`).
pub const FUNCDATA_ARGS_POINTER_MAPS: u8 = 0;
pub const FUNCDATA_LOCALS_POINTER_MAPS: u8 = 1;
pub const FUNCDATA_STACK_OBJECTS: u8 = 2;
/// Size of `runtime.stackObjectRecord`: `{off, size, ptrdata, gcdataoff}`, four 32-bit words
/// (the third `_ptrdata`, negative for a GC program, in 1.21-1.23; `ptrBytes` from 1.24).
const STACK_OBJECT_RECORD_SIZE: usize = 16;
/// More stack objects than this in one function is taken for corrupt data.
const MAX_STACK_OBJECTS: u64 = 1 << 16;
/// Size of `runtime.inlinedCall`: `{funcID u8, _ [3]u8, nameOff i32, parentPc i32,
/// startLine i32}` (go1.21.13..go1.27.3 `src/runtime/symtabinl.go`).
const INLINED_CALL_SIZE: usize = 16;
/// Inlining depth past which the inline tree is assumed to loop (corrupt data). The compiler's
/// inlining budget keeps real depths far below this.
const MAX_INLINE_DEPTH: usize = 64;
/// The suffix the linker gives ELF symbols of ABI0 functions (`cmd/link/internal/ld/symtab.go`,
/// `mangleABIName`, go1.21.13..go1.27.3).
const ABI0_SUFFIX: &str = ".abi0";
/// Names longer than this are treated as corrupt (the longest runtime-generated names, closures
/// of generic methods, stay well under it).
const MAX_NAME_LEN: usize = 64 * 1024;

/// `abi.FuncIDWrapper` for a Go release (go1.21.13..go1.27.3 `src/internal/abi/symtab.go`):
/// 21 in 1.21; 22 in 1.22-1.24 (`FuncID_corostart` added); 23 from 1.25
/// (`FuncID_runfinq` replaced by `runFinalizers` and `runCleanups`). For releases past
/// the tested ones, prefer [`Pclntab::detect_wrapper_func_id`].
pub fn wrapper_func_id(version: GoVersion) -> u8 {
    match (version.major, version.minor) {
        (1, ..=21) => 21,
        (1, 22..=24) => 22,
        _ => 23,
    }
}

/// A read-only view of a `.gopclntab` section.
#[derive(Debug, Clone, Copy)]
pub struct Pclntab<'a> {
    data: &'a [u8],
    text_start: u64,
    min_lc: u8,
    nfunc: usize,
    funcnametab: &'a [u8],
    cutab: &'a [u8],
    filetab: &'a [u8],
    pctab: &'a [u8],
    /// The function table and the `_func` records after it (`pclnOffset` onwards).
    functab: &'a [u8],
    wrapper_id: u8,
    /// Bytes from `moduledata.gofunc` onwards, where FUNCDATA offsets point.
    gofunc: Option<&'a [u8]>,
}

impl<'a> Pclntab<'a> {
    /// Reads the header of `data` (the whole section). `text_start` is the link-time address
    /// of `.text` (= `runtime.text`): function entries are stored relative to it, and the copy
    /// in the header is 0 from Go 1.26. `version` picks the funcID of ABI wrappers; past the
    /// tested releases it is read from the table itself.
    pub fn new(data: &'a [u8], text_start: u64, version: GoVersion) -> Result<Self, PclntabError> {
        if data.len() < HEADER_SIZE {
            return Err(PclntabError::Truncated(data.len()));
        }
        let magic = u32_at(data, 0).unwrap_or(0);
        if magic != MAGIC_GO120 {
            return Err(match OLD_MAGICS.iter().find(|(m, _)| *m == magic) {
                Some(&(magic, go_versions)) => PclntabError::OldFormat { magic, go_versions },
                None => PclntabError::BadMagic(magic),
            });
        }
        let min_lc = data[6];
        let ptr_size = data[7];
        if min_lc != 1 {
            return Err(PclntabError::BadHeader {
                what: "minLC",
                value: min_lc.into(),
            });
        }
        if ptr_size != 8 {
            return Err(PclntabError::BadHeader {
                what: "ptrSize",
                value: ptr_size.into(),
            });
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i).unwrap_or(0);
        let table = |what: &'static str, i: usize| -> Result<&'a [u8], PclntabError> {
            let offset = word(i);
            usize::try_from(offset)
                .ok()
                .filter(|&o| o >= HEADER_SIZE && o <= data.len())
                .map(|o| &data[o..])
                .ok_or(PclntabError::BadOffset {
                    what,
                    offset,
                    len: data.len(),
                })
        };
        let funcnametab = table("funcnametab", 3)?;
        let cutab = table("cutab", 4)?;
        let filetab = table("filetab", 5)?;
        let pctab = table("pctab", 6)?;
        let functab = table("pcln", 7)?;
        let nfunc = word(0);
        let nfunc = usize::try_from(nfunc)
            .ok()
            .filter(|n| {
                n.checked_mul(8)
                    .and_then(|b| b.checked_add(4))
                    .is_some_and(|b| b <= functab.len())
            })
            .ok_or(PclntabError::BadHeader {
                what: "nfunc",
                value: nfunc,
            })?;
        let mut table = Pclntab {
            data,
            text_start,
            min_lc,
            nfunc,
            funcnametab,
            cutab,
            filetab,
            pctab,
            functab,
            wrapper_id: wrapper_func_id(version),
            gofunc: None,
        };
        if version > super::buildinfo::MAX_TESTED
            && !version.is_tested()
            && let Some(id) = table.detect_wrapper_func_id()
        {
            table.wrapper_id = id;
        }
        Ok(table)
    }

    /// Gives the bytes at `moduledata.gofunc` (the `go:func.*` symbol) to the end of their
    /// segment. FUNCDATA, the inline tree among them, is stored there, outside `.gopclntab`;
    /// without it [`Pclntab::symbolize`] cannot expand inlined calls.
    pub fn with_gofunc(mut self, gofunc: &'a [u8]) -> Self {
        self.gofunc = Some(gofunc);
        self
    }

    /// The section bytes this view reads.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The `textStart` stored in the header: the `.text` address in Go 1.21-1.25 (non-PIE),
    /// 0 from Go 1.26. For diagnostics; lookups use the address given to [`Pclntab::new`].
    pub fn header_text_start(&self) -> u64 {
        u64_at(self.data, 24).unwrap_or(0)
    }

    /// Number of functions in the table.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// The funcID this view treats as `FuncIDWrapper`.
    pub fn wrapper_id(&self) -> u8 {
        self.wrapper_id
    }

    /// Reads `FuncIDWrapper` from the table itself: in every release since funcIDs exist,
    /// `FuncID_systemstack_switch` is the last special ID before `FuncIDWrapper`, and
    /// `runtime.systemstack_switch` (assembly) is in every binary.
    pub fn detect_wrapper_func_id(&self) -> Option<u8> {
        let f = self
            .lookup_all("runtime.systemstack_switch")
            .into_iter()
            .next()?;
        f.func_id.checked_add(1).filter(|_| f.func_id != 0)
    }

    /// All functions, in address order. Entries whose record is unreadable are skipped.
    pub fn functions(&self) -> impl Iterator<Item = FuncEntry> + '_ {
        (0..self.nfunc).filter_map(move |i| self.entry(i))
    }

    /// The function whose code contains `pc` (a link-time address). For a return address
    /// taken from a stack, pass `pc - 1`: the return address is the instruction after the
    /// call and may belong to the next line, or to the next function when the call was the
    /// last instruction (a call to a function that does not return, such as `panic`).
    pub fn find_func(&self, pc: u64) -> Option<FuncEntry> {
        let off = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let end = u32_at(self.functab, self.nfunc * 8)?;
        if off >= end {
            return None;
        }
        // Last entry whose entryOff <= off (the table is sorted by the linker).
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if u32_at(self.functab, mid * 8)? <= off {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.entry(lo.checked_sub(1)?)
    }

    /// The function named `name`. When a name appears twice (an ABI wrapper and the function
    /// it wraps, e.g. `runtime.osinit`), the function is returned, not the wrapper: the entry
    /// without the wrapper funcID, or, when both carry it (`reflect.callMethod` is marked a
    /// wrapper for tracebacks), the one whose code is not `<autogenerated>`.
    pub fn lookup_name(&self, name: &str) -> Option<FuncEntry> {
        let all = self.lookup_all(name);
        if all.len() < 2 {
            return all.into_iter().next();
        }
        let rank = |f: &FuncEntry| (f.func_id == self.wrapper_id, self.is_generated(f));
        all.into_iter().min_by_key(rank)
    }

    /// The entry that the `.symtab` symbol `symbol` points to, for binaries without
    /// `.symtab`. pclntab names lack the `.abi0` suffix of ABI0 symbols; which entry has it is
    /// inferred as described at [`Pclntab::symbols`]. A lone assembly function answers to both
    /// `name` and `name.abi0`, because the linker adds the suffix only when an ABIInternal
    /// twin was ever referenced (`runtime.madvise.abi0` but `runtime.memmove`).
    pub fn lookup_symbol(&self, symbol: &str) -> Option<FuncEntry> {
        let base = symbol.strip_suffix(ABI0_SUFFIX);
        let want = base.unwrap_or(symbol).as_bytes();
        let group: Vec<FuncEntry> = (0..self.nfunc)
            .filter(|&i| {
                self.func_record(i)
                    .and_then(|(_, rec)| self.name_bytes(i32_at(rec, 4)?))
                    .is_some_and(|n| elf_name_matches(n, want))
            })
            .filter_map(|i| self.entry(i))
            .collect();
        if let [single] = group.as_slice() {
            let matches = base.is_none() || self.is_assembly(single);
            return matches.then(|| single.clone());
        }
        let names = self.symbol_names(&group);
        group
            .into_iter()
            .zip(names)
            .find_map(|(f, n)| (n == symbol).then_some(f))
    }

    /// Every function, in address order, with the name of its `.symtab` symbol. pclntab gives
    /// both halves of an ABI wrapper pair the same name, where `.symtab` adds `.abi0` to the
    /// ABI0 half (go1.27.3 `src/cmd/link/internal/ld/symtab.go`, `mangleABIName`):
    /// - a Go function called from assembly: the body is `name`, its ABI0 wrapper
    ///   `name.abi0` (`runtime.osinit`, `runtime.newproc`);
    /// - an assembly function called from Go: the body is `name.abi0`, its ABIInternal
    ///   wrapper `name` (`runtime.asmcgocall`, `runtime.osyield`).
    ///
    /// `.symtab` also spells `·` as `.` (`type:.eq.runtime.untracedG·4` is
    /// `type:.eq.runtime.untracedG.4` there; same file, `putelfsym`). The wrapper is the half whose code is `<autogenerated>`, and assembly is recognised by
    /// its `.s` source file. A lone function keeps its plain name here, although a lone
    /// assembly function may have the suffix in `.symtab` (see [`Pclntab::lookup_symbol`]).
    pub fn symbols(&self) -> Vec<(String, FuncEntry)> {
        let mut groups: std::collections::HashMap<String, Vec<FuncEntry>> = Default::default();
        for f in self.functions() {
            groups.entry(f.name.clone()).or_default().push(f);
        }
        let mut all: Vec<(String, FuncEntry)> = groups
            .into_values()
            .flat_map(|group| {
                let names = self.symbol_names(&group);
                names.into_iter().zip(group)
            })
            .collect();
        all.sort_by_key(|(_, f)| f.entry);
        all
    }

    /// The `.symtab` names of a group of entries sharing one pclntab name.
    fn symbol_names(&self, group: &[FuncEntry]) -> Vec<String> {
        let plain = |f: &FuncEntry| elf_symbol_name(f.name.as_bytes());
        let abi0 = |f: &FuncEntry| format!("{}{ABI0_SUFFIX}", plain(f));
        if group.len() < 2 {
            return group.iter().map(plain).collect();
        }
        let generated: Vec<bool> = group.iter().map(|f| self.is_generated(f)).collect();
        let Some(body) = group
            .iter()
            .zip(&generated)
            .find(|(_, g)| !**g)
            .map(|(f, _)| f)
        else {
            return group.iter().map(plain).collect();
        };
        // A wrapper is ABI0 when the body is Go; the body is ABI0 when it is assembly.
        let body_is_asm = self.is_assembly(body);
        group
            .iter()
            .zip(&generated)
            .map(|(f, &is_wrapper)| {
                if is_wrapper != body_is_asm {
                    abi0(f)
                } else {
                    plain(f)
                }
            })
            .collect()
    }

    /// Whether `f` was written in assembly (its code comes from a `.s` file).
    fn is_assembly(&self, f: &FuncEntry) -> bool {
        self.file_line(f, f.entry)
            .is_some_and(|(file, _)| file.ends_with(".s"))
    }

    /// Whether `f` is compiler-generated code (ABI and method wrappers, equality and hash
    /// functions), which the compiler attributes to the file `<autogenerated>`.
    fn is_generated(&self, f: &FuncEntry) -> bool {
        self.file_line(f, f.entry)
            .is_some_and(|(file, _)| file == "<autogenerated>")
    }

    /// Every function named `name`, in address order (usually zero or one; two for ABI
    /// wrappers).
    pub fn lookup_all(&self, name: &str) -> Vec<FuncEntry> {
        let want = name.as_bytes();
        (0..self.nfunc)
            .filter(|&i| {
                self.func_record(i)
                    .and_then(|(_, rec)| self.name_bytes(i32_at(rec, 4)?))
                    .is_some_and(|n| n == want)
            })
            .filter_map(|i| self.entry(i))
            .collect()
    }

    /// The line of the `func` keyword (or the TEXT directive) of `f`.
    pub fn func_start_line(&self, f: &FuncEntry) -> Option<u32> {
        let rec = self.record_at(f.func_off)?;
        u32::try_from(i32_at(rec, 36)?).ok()
    }

    /// The size of `f`'s frame at `pc`, in bytes below the return address: the `pcsp` table
    /// (`_func.pcsp`, offset 16). Go's unwinder finds a frame's return address at
    /// `sp + sp_delta` (runtime/traceback.go `unwinder.next`, `funcspdelta`).
    pub fn sp_delta(&self, f: &FuncEntry, pc: u64) -> Option<i32> {
        let rec = self.record_at(f.func_off)?;
        let pcsp = u32_at(rec, 16)?;
        if pcsp == 0 {
            return Some(0);
        }
        self.pcvalue(pcsp, f.entry, pc)
    }

    /// The source position of `pc` in `f`, innermost inlined position included, without
    /// expanding inlined calls.
    pub fn file_line(&self, f: &FuncEntry, pc: u64) -> Option<(String, u32)> {
        let rec = self.record_at(f.func_off)?;
        self.file_line_in(rec, f.entry, pc)
    }

    /// The frames at `pc` (a link-time address), innermost first: each call inlined at `pc`,
    /// then the physical function, each with the file:line reached in it. Empty when `pc` is
    /// in no function. For return addresses pass `pc - 1` (see [`Pclntab::find_func`]).
    ///
    /// Without [`Pclntab::with_gofunc`] inlined calls cannot be named, and only the physical
    /// function is returned, with the position of `pc` (which is then in the inlined callee's
    /// source, as in Go before 1.12).
    pub fn symbolize(&self, pc: u64) -> Vec<Frame> {
        let Some(f) = self.find_func(pc) else {
            return Vec::new();
        };
        let Some(rec) = self.record_at(f.func_off) else {
            return Vec::new();
        };
        let frame = |function: String, at: u64| {
            let (file, line) = self
                .file_line_in(rec, f.entry, at)
                .unwrap_or_else(|| ("?".to_string(), 0));
            Frame {
                function,
                file,
                line,
            }
        };
        let mut frames = Vec::new();
        let mut at = pc;
        if let Some(tree) = self.inline_tree(rec) {
            while frames.len() < MAX_INLINE_DEPTH {
                let Some(index) = self
                    .pcdata_value(rec, f.entry, PCDATA_INL_TREE_INDEX, at)
                    .and_then(|i| usize::try_from(i).ok())
                else {
                    break;
                };
                let Some(call) = index
                    .checked_mul(INLINED_CALL_SIZE)
                    .and_then(|o| tree.get(o..o.checked_add(INLINED_CALL_SIZE)?))
                else {
                    break;
                };
                let name = i32_at(call, 4)
                    .and_then(|off| self.name_bytes(off))
                    .map_or_else(
                        || "?".to_string(),
                        |n| String::from_utf8_lossy(n).into_owned(),
                    );
                frames.push(frame(name, at));
                // The call site: an instruction of the caller's, as an offset from the entry.
                let Some(parent) = i32_at(call, 8)
                    .and_then(|p| u64::try_from(p).ok())
                    .and_then(|p| f.entry.checked_add(p))
                else {
                    break;
                };
                at = parent;
            }
        }
        frames.push(frame(f.name.clone(), at));
        frames
    }

    /// The entry of function number `i`.
    fn entry(&self, i: usize) -> Option<FuncEntry> {
        let (func_off, rec) = self.func_record(i)?;
        let entry_off = u32_at(rec, 0)?;
        let next = u32_at(self.functab, (i + 1) * 8)?;
        let entry = self.text_start.checked_add(entry_off.into())?;
        let end = self.text_start.checked_add(next.into())?.max(entry);
        let name = String::from_utf8_lossy(self.name_bytes(i32_at(rec, 4)?)?).into_owned();
        Some(FuncEntry {
            name,
            entry,
            end,
            func_id: *rec.get(40)?,
            func_off,
        })
    }

    /// The `_func` record of function number `i`, with its offset.
    fn func_record(&self, i: usize) -> Option<(u32, &'a [u8])> {
        if i >= self.nfunc {
            return None;
        }
        let func_off = u32_at(self.functab, i * 8 + 4)?;
        Some((func_off, self.record_at(func_off)?))
    }

    /// The `_func` record at `func_off`, including its pcdata and funcdata arrays.
    fn record_at(&self, func_off: u32) -> Option<&'a [u8]> {
        let start = usize::try_from(func_off).ok()?;
        let fixed = self.functab.get(start..start.checked_add(FUNC_SIZE)?)?;
        let npcdata = usize::try_from(u32_at(fixed, 28)?).ok()?;
        let nfuncdata = usize::from(fixed[43]);
        let len = npcdata
            .checked_add(nfuncdata)?
            .checked_mul(4)?
            .checked_add(FUNC_SIZE)?;
        self.functab.get(start..start.checked_add(len)?)
    }

    /// A NUL-terminated name in funcnametab.
    fn name_bytes(&self, name_off: i32) -> Option<&'a [u8]> {
        let start = usize::try_from(name_off).ok()?;
        let tail = self.funcnametab.get(start..)?;
        let tail = &tail[..tail.len().min(MAX_NAME_LEN)];
        let end = tail.iter().position(|&b| b == 0)?;
        Some(&tail[..end])
    }

    fn file_line_in(&self, rec: &[u8], entry: u64, pc: u64) -> Option<(String, u32)> {
        let fileno = self.pcvalue(u32_at(rec, 20)?, entry, pc)?;
        let line = self.pcvalue(u32_at(rec, 24)?, entry, pc)?;
        let cu = u32_at(rec, 32)?;
        let slot = u64::from(cu).checked_add(u64::try_from(fileno).ok()?)?;
        let file_off = u32_at(self.cutab, usize::try_from(slot).ok()?.checked_mul(4)?)?;
        let file = self
            .filetab
            .get(usize::try_from(file_off).ok()?..)
            .and_then(|t| t.iter().position(|&b| b == 0).map(|e| &t[..e]))
            .map_or_else(
                || "?".to_string(),
                |f| String::from_utf8_lossy(f).into_owned(),
            );
        Some((file, u32::try_from(line).unwrap_or(0)))
    }

    /// The value of PCDATA table `table` at `pc`.
    fn pcdata_value(&self, rec: &[u8], entry: u64, table: u32, pc: u64) -> Option<i32> {
        let npcdata = u32_at(rec, 28)?;
        if table >= npcdata {
            return None;
        }
        let off = u32_at(rec, FUNC_SIZE + 4 * usize::try_from(table).ok()?)?;
        self.pcvalue(off, entry, pc)
    }

    /// The inline tree of a function: its FUNCDATA_InlTree, from the table at gofunc.
    fn inline_tree(&self, rec: &[u8]) -> Option<&'a [u8]> {
        self.funcdata_in(rec, FUNCDATA_INL_TREE)
    }

    /// FUNCDATA `index` of a `_func` record: the bytes from where it starts in the table at
    /// gofunc (go1.27.3 `src/runtime/symtab.go`, `funcdata`: offset `^0` means none).
    fn funcdata_in(&self, rec: &[u8], index: u8) -> Option<&'a [u8]> {
        let gofunc = self.gofunc?;
        let npcdata = usize::try_from(u32_at(rec, 28)?).ok()?;
        if *rec.get(43)? <= index {
            return None;
        }
        let slot = FUNC_SIZE + 4 * (npcdata + usize::from(index));
        let off = u32_at(rec, slot)?;
        if off == u32::MAX {
            return None;
        }
        gofunc.get(usize::try_from(off).ok()?..)
    }

    /// What Go's GC needs to scan a frame of `f` stopped at `pc` (go1.27.3
    /// `src/runtime/stkframe.go`, `getStackMap`): the stack map index at `pc` (pass the
    /// return address minus one, or the entry, as [`Pclntab::find_func`] says), the argument
    /// size, the locals and arguments pointer maps and the stack object records. None when
    /// the record cannot be read.
    pub fn frame_maps(&self, f: &FuncEntry, pc: u64) -> Option<FrameMaps<'a>> {
        let rec = self.record_at(f.func_off)?;
        let args = i32_at(rec, 8)?;
        // At the entry Go uses the entry map; -1 says so (see getStackMap).
        let index = if pc == f.entry {
            -1
        } else {
            self.pcdata_value(rec, f.entry, PCDATA_STACK_MAP_INDEX, pc)
                .unwrap_or(-1)
        };
        let map = |i| self.funcdata_in(rec, i).and_then(StackMap::parse);
        Some(FrameMaps {
            index,
            // `abi.ArgsSizeUnknown` (i32::MIN, reflect's call stubs) or garbage: None.
            args: u64::try_from(args).ok(),
            locals: map(FUNCDATA_LOCALS_POINTER_MAPS),
            args_map: map(FUNCDATA_ARGS_POINTER_MAPS),
            objects: self.funcdata_in(rec, FUNCDATA_STACK_OBJECTS),
            has_gofunc: self.gofunc.is_some(),
        })
    }

    /// Decodes the pc-value table at `off` in pctab up to `target` (go1.27.3
    /// `src/runtime/symtab.go`, `pcvalue` and `step`): pairs of (zig-zag value delta, pc
    /// delta in units of minLC), starting at value -1 at the function entry, ending at a zero
    /// value delta. Offset 0 means no table.
    fn pcvalue(&self, off: u32, entry: u64, target: u64) -> Option<i32> {
        if off == 0 {
            return None;
        }
        let mut p = self.pctab.get(usize::try_from(off).ok()?..)?;
        let mut pc = entry;
        let mut val: i32 = -1;
        let mut first = true;
        loop {
            let (uvdelta, n) = read_varint(p)?;
            if uvdelta == 0 && !first {
                return None;
            }
            first = false;
            p = &p[n..];
            let delta = (uvdelta >> 1) as i32 ^ -((uvdelta & 1) as i32);
            val = val.wrapping_add(delta);
            let (pcdelta, n) = read_varint(p)?;
            p = &p[n..];
            pc = pc.checked_add(u64::from(pcdelta) * u64::from(self.min_lc))?;
            if target < pc {
                return Some(val);
            }
        }
    }
}

/// The stack maps of a function at one PC ([`Pclntab::frame_maps`]).
#[derive(Debug, Clone, Copy)]
pub struct FrameMaps<'a> {
    /// `PCDATA_StackMapIndex` at the PC; -1 where the table says nothing (a prologue, the
    /// entry, assembly).
    pub index: i32,
    /// `_func.args`: bytes of arguments and results above the frame; None for
    /// `abi.ArgsSizeUnknown` (functions whose argument size varies: reflect's call stubs).
    pub args: Option<u64>,
    /// `FUNCDATA_LocalsPointerMaps` and `FUNCDATA_ArgsPointerMaps`, where present.
    pub locals: Option<StackMap<'a>>,
    pub args_map: Option<StackMap<'a>>,
    /// `FUNCDATA_StackObjects`: a count (uintptr) then its records; see [`stack_objects`].
    pub objects: Option<&'a [u8]>,
    /// Whether the FUNCDATA could be read at all (the table at gofunc was found).
    pub has_gofunc: bool,
}

/// A `runtime.stackmap`: `n` bitmaps of `nbit` bits each, each starting on a byte
/// (go1.21.13..go1.27.3 `src/runtime/symtab.go`, `stackmap`, `stackmapdata`).
#[derive(Debug, Clone, Copy)]
pub struct StackMap<'a> {
    pub n: i32,
    pub nbit: i32,
    data: &'a [u8],
}

impl<'a> StackMap<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        Some(Self {
            n: i32_at(data, 0)?,
            nbit: i32_at(data, 4)?,
            data: data.get(8..)?,
        })
    }

    /// Bitmap `index`: bit i (byte i/8, bit i%8) set when word i holds a live pointer. None
    /// when `index` is out of range or the bitmap is cut short.
    pub fn bitmap(&self, index: i32) -> Option<&'a [u8]> {
        if index < 0 || index >= self.n || self.nbit < 0 {
            return None;
        }
        let per = usize::try_from(self.nbit).ok()?.div_ceil(8);
        let at = usize::try_from(index).ok()?.checked_mul(per)?;
        self.data.get(at..at.checked_add(per)?)
    }
}

/// One `runtime.stackObjectRecord`: a variable whose address is taken, at `off` from the
/// frame's varp (negative) or argp (zero or more), `size` bytes of which the first
/// `ptr_bytes` may hold pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackObject {
    pub off: i32,
    pub size: u32,
    pub ptr_bytes: u32,
}

/// The records of a `FUNCDATA_StackObjects`; None when the table is cut short, implausibly
/// long, or a record is inconsistent (a size below zero, pointers past its end).
pub fn stack_objects(data: &[u8]) -> Option<Vec<StackObject>> {
    let n = u64_at(data, 0)?;
    if n > MAX_STACK_OBJECTS {
        return None;
    }
    (0..n as usize)
        .map(|i| {
            let r = data.get(8 + i * STACK_OBJECT_RECORD_SIZE..)?;
            let size = u32::try_from(i32_at(r, 4)?).ok()?;
            // Go 1.21-1.23: minus the pointer bytes when the type has a GC program.
            let ptr_bytes = i32_at(r, 8)?.unsigned_abs();
            (ptr_bytes <= size).then_some(StackObject {
                off: i32_at(r, 0)?,
                size,
                ptr_bytes,
            })
        })
        .collect()
}

/// A pclntab name as the linker writes it in `.symtab`: with `·` rewritten to `.` "for
/// ASCII-only tools like DTrace" (go1.21.13..go1.27.3 `src/cmd/link/internal/ld/symtab.go`,
/// `putelfsym`).
fn elf_symbol_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).replace('·', ".")
}

/// Whether pclntab name `name` is written `symbol` in `.symtab` (see [`elf_symbol_name`]),
/// without allocating: this runs once per function per lookup.
fn elf_name_matches(name: &[u8], symbol: &[u8]) -> bool {
    const MIDDLE_DOT: &[u8] = "·".as_bytes();
    let (mut i, mut j) = (0, 0);
    while i < name.len() {
        let (step, want) = if name[i..].starts_with(MIDDLE_DOT) {
            (MIDDLE_DOT.len(), b'.')
        } else {
            (1, name[i])
        };
        if symbol.get(j) != Some(&want) {
            return false;
        }
        i += step;
        j += 1;
    }
    j == symbol.len()
}

/// Reads a Go runtime varint (7 bits a byte, little end first, at most 5 bytes for u32).
fn read_varint(p: &[u8]) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    for (i, &b) in p.iter().enumerate().take(5) {
        v |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn i32_at(data: &[u8], at: usize) -> Option<i32> {
    u32_at(data, at).map(|v| v as i32)
}

/// The little-endian u64 at `at` in `data`, if it is all there.
pub(crate) fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    let bytes = data.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V: GoVersion = GoVersion::new(1, 27, 3);

    /// Encodes a pc-value table the way the Go linker does (`cmd/internal/obj/pcln.go`).
    fn encode_pcvalue(pairs: &[(i32, u32)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = -1i32;
        for &(val, pc_len) in pairs {
            let d = val - prev;
            push_varint(&mut out, ((d << 1) ^ (d >> 31)) as u32);
            push_varint(&mut out, pc_len);
            prev = val;
        }
        out.push(0);
        out
    }

    fn push_varint(out: &mut Vec<u8>, mut v: u32) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A two-function table: `main.outer` (0x40 bytes, with `main.inner` inlined at
    /// 0x10..0x20) and `main.other` (0x20 bytes), file `/src/main.go`.
    fn synthetic() -> (Vec<u8>, Vec<u8>) {
        let names = b"\0main.outer\0main.inner\0main.other\0".to_vec();
        let files = b"/src/main.go\0".to_vec();
        let cutab: Vec<u8> = 0u32.to_le_bytes().to_vec();
        let mut pctab = vec![0u8]; // offset 0 means "no table"
        let file_tab = pctab.len() as u32;
        pctab.extend(encode_pcvalue(&[(0, 0x40)]));
        // outer: line 10 for 0x10 bytes, 21 (in inner) for 0x10, 11 for 0x20.
        let line_tab = pctab.len() as u32;
        pctab.extend(encode_pcvalue(&[(10, 0x10), (21, 0x10), (11, 0x20)]));
        let inl_tab = pctab.len() as u32;
        pctab.extend(encode_pcvalue(&[(-1, 0x10), (0, 0x10), (-1, 0x20)]));
        let other_line = pctab.len() as u32;
        pctab.extend(encode_pcvalue(&[(30, 0x20)]));

        // functab: 2 entries + end, then the _func records.
        let mut pcln = Vec::new();
        let rec_outer = 2 * 8 + 4;
        let rec_other = rec_outer + FUNC_SIZE as u32 + 3 * 4 + 4 * 4;
        for (entry, rec) in [(0u32, rec_outer), (0x40, rec_other)] {
            pcln.extend(entry.to_le_bytes());
            pcln.extend(rec.to_le_bytes());
        }
        pcln.extend(0x60u32.to_le_bytes());
        let record =
            |entry: u32, name: i32, pcln_off: u32, line: i32, pcdata: &[u32], funcdata: &[u32]| {
                let mut r = Vec::new();
                r.extend(entry.to_le_bytes());
                r.extend(name.to_le_bytes());
                r.extend([0u8; 8]); // args, deferreturn
                r.extend(0u32.to_le_bytes()); // pcsp
                r.extend(file_tab.to_le_bytes());
                r.extend(pcln_off.to_le_bytes());
                r.extend((pcdata.len() as u32).to_le_bytes());
                r.extend(0u32.to_le_bytes()); // cuOffset
                r.extend(line.to_le_bytes());
                r.extend([0u8, 0, 0, funcdata.len() as u8]);
                for v in pcdata.iter().chain(funcdata) {
                    r.extend(v.to_le_bytes());
                }
                r
            };
        pcln.extend(record(
            0,
            1,
            line_tab,
            9,
            &[0, 0, inl_tab],
            &[u32::MAX, u32::MAX, u32::MAX, 0],
        ));
        pcln.extend(record(0x40, 23, other_line, 29, &[], &[]));

        let mut data = Vec::new();
        let offsets = {
            let mut at = HEADER_SIZE;
            let mut v = Vec::new();
            for part in [&names, &cutab, &files, &pctab, &pcln] {
                v.push(at as u64);
                at += part.len();
            }
            v
        };
        data.extend(MAGIC_GO120.to_le_bytes());
        data.extend([0, 0, 1, 8]);
        data.extend(2u64.to_le_bytes());
        data.extend(1u64.to_le_bytes());
        data.extend(0u64.to_le_bytes());
        for o in offsets {
            data.extend(o.to_le_bytes());
        }
        for part in [&names, &cutab, &files, &pctab, &pcln] {
            data.extend_from_slice(part);
        }
        // The inline tree (at gofunc + 0): main.inner called from outer+0x08, starting line 20.
        let mut gofunc = Vec::new();
        gofunc.extend([0u8; 4]);
        gofunc.extend(12i32.to_le_bytes());
        gofunc.extend(0x08i32.to_le_bytes());
        gofunc.extend(20i32.to_le_bytes());
        (data, gofunc)
    }

    #[test]
    fn finds_functions_and_lines() {
        let (data, gofunc) = synthetic();
        let t = Pclntab::new(&data, 0x1000, V).unwrap().with_gofunc(&gofunc);
        let names: Vec<_> = t.functions().map(|f| (f.name, f.entry, f.end)).collect();
        assert_eq!(
            names,
            vec![
                ("main.outer".to_string(), 0x1000, 0x1040),
                ("main.other".to_string(), 0x1040, 0x1060)
            ]
        );
        assert_eq!(t.find_func(0x0fff), None);
        assert_eq!(t.find_func(0x1000).unwrap().name, "main.outer");
        assert_eq!(t.find_func(0x103f).unwrap().name, "main.outer");
        assert_eq!(t.find_func(0x1040).unwrap().name, "main.other");
        assert_eq!(t.find_func(0x1060), None);
        let other = t.lookup_name("main.other").unwrap();
        assert_eq!(t.func_start_line(&other), Some(29));
        assert_eq!(
            t.file_line(&other, 0x1050),
            Some(("/src/main.go".into(), 30))
        );
        assert_eq!(t.lookup_name("main.inner"), None);
    }

    #[test]
    fn expands_inlined_calls_innermost_first() {
        let (data, gofunc) = synthetic();
        let t = Pclntab::new(&data, 0x1000, V).unwrap().with_gofunc(&gofunc);
        let frame = |function: &str, line| Frame {
            function: function.into(),
            file: "/src/main.go".into(),
            line,
        };
        assert_eq!(
            t.symbolize(0x1018),
            vec![frame("main.inner", 21), frame("main.outer", 10)]
        );
        assert_eq!(t.symbolize(0x1008), vec![frame("main.outer", 10)]);
        assert_eq!(t.symbolize(0x1030), vec![frame("main.outer", 11)]);
        assert!(t.symbolize(0x2000).is_empty());
        // Without the FUNCDATA the physical function gets the innermost position.
        let bare = Pclntab::new(&data, 0x1000, V).unwrap();
        assert_eq!(bare.symbolize(0x1018), vec![frame("main.outer", 21)]);
    }

    #[test]
    fn refuses_older_formats_by_name() {
        let (mut data, _) = synthetic();
        data[..4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let err = Pclntab::new(&data, 0, V).unwrap_err();
        assert!(err.to_string().contains("Go 1.18-1.19"), "{err}");
        data[..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        assert_eq!(
            Pclntab::new(&data, 0, V).unwrap_err(),
            PclntabError::BadMagic(0x1234_5678)
        );
        assert_eq!(
            Pclntab::new(&data[..10], 0, V).unwrap_err(),
            PclntabError::Truncated(10)
        );
    }

    #[test]
    fn header_offsets_and_counts_are_checked() {
        let (data, _) = synthetic();
        let mut bad = data.clone();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Pclntab::new(&bad, 0, V),
            Err(PclntabError::BadHeader { what: "nfunc", .. })
        ));
        let mut bad = data.clone();
        bad[64..72].copy_from_slice(&(data.len() as u64 + 1).to_le_bytes());
        assert!(matches!(
            Pclntab::new(&bad, 0, V),
            Err(PclntabError::BadOffset { what: "pcln", .. })
        ));
    }

    #[test]
    fn wrapper_ids_by_release() {
        assert_eq!(wrapper_func_id(GoVersion::new(1, 21, 13)), 21);
        assert_eq!(wrapper_func_id(GoVersion::new(1, 22, 0)), 22);
        assert_eq!(wrapper_func_id(GoVersion::new(1, 24, 11)), 22);
        assert_eq!(wrapper_func_id(GoVersion::new(1, 25, 5)), 23);
        assert_eq!(wrapper_func_id(GoVersion::new(1, 27, 3)), 23);
    }

    #[test]
    fn elf_names_spell_middle_dots_as_dots() {
        let name = "type:.eq.runtime.untracedG·4".as_bytes();
        assert_eq!(elf_symbol_name(name), "type:.eq.runtime.untracedG.4");
        assert!(elf_name_matches(name, b"type:.eq.runtime.untracedG.4"));
        assert!(!elf_name_matches(name, b"type:.eq.runtime.untracedG.40"));
        assert!(!elf_name_matches(name, b"type:.eq.runtime.untracedG."));
        assert!(elf_name_matches(b"main.main", b"main.main"));
        assert!(!elf_name_matches(b"main.main", b"main.mai"));
    }

    #[test]
    fn stack_maps_and_objects_decode_as_the_runtime_reads_them() {
        // n = 3 bitmaps of 10 bits, 2 bytes each.
        let mut map = Vec::new();
        map.extend(3i32.to_le_bytes());
        map.extend(10i32.to_le_bytes());
        map.extend([0x01, 0x02, 0xff, 0x03, 0x00, 0x00]);
        let m = StackMap::parse(&map).unwrap();
        assert_eq!((m.n, m.nbit), (3, 10));
        assert_eq!(m.bitmap(0), Some(&[0x01, 0x02][..]));
        assert_eq!(m.bitmap(1), Some(&[0xff, 0x03][..]));
        assert_eq!(m.bitmap(-1), None);
        assert_eq!(m.bitmap(3), None);
        // Cut short: the last bitmap is not all there.
        assert_eq!(StackMap::parse(&map[..13]).unwrap().bitmap(2), None);

        let mut objs = Vec::new();
        objs.extend(2u64.to_le_bytes());
        for (off, size, ptr) in [(-32i32, 24i32, 16i32), (8, 16, -8)] {
            objs.extend(off.to_le_bytes());
            objs.extend(size.to_le_bytes());
            objs.extend(ptr.to_le_bytes());
            objs.extend(0u32.to_le_bytes());
        }
        assert_eq!(
            stack_objects(&objs),
            Some(vec![
                StackObject {
                    off: -32,
                    size: 24,
                    ptr_bytes: 16
                },
                // Go 1.21-1.23 write minus the pointer bytes for a GC program.
                StackObject {
                    off: 8,
                    size: 16,
                    ptr_bytes: 8
                },
            ])
        );
        assert_eq!(stack_objects(&objs[..30]), None);
        // Pointers past the object's end: corrupt.
        objs[16..20].copy_from_slice(&64i32.to_le_bytes());
        assert_eq!(stack_objects(&objs), None);
    }

    #[test]
    fn frame_maps_of_a_function_without_them() {
        let (data, gofunc) = synthetic();
        let t = Pclntab::new(&data, 0x1000, V).unwrap().with_gofunc(&gofunc);
        let outer = t.lookup_name("main.outer").unwrap();
        // No PCDATA_StackMapIndex table, FUNCDATA 0-2 absent (^0).
        let m = t.frame_maps(&outer, 0x1010).unwrap();
        assert_eq!((m.index, m.args, m.has_gofunc), (-1, Some(0), true));
        assert!(m.locals.is_none() && m.args_map.is_none() && m.objects.is_none());
        let bare = Pclntab::new(&data, 0x1000, V).unwrap();
        assert!(!bare.frame_maps(&outer, 0x1010).unwrap().has_gofunc);
    }

    #[test]
    fn varints() {
        assert_eq!(read_varint(&[0x05]), Some((5, 1)));
        assert_eq!(read_varint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(read_varint(&[0x80]), None);
        assert_eq!(read_varint(&[0xff; 6]), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), pc in any::<u64>()) {
            if let Ok(t) = Pclntab::new(&data, 0, V) {
                let t = t.with_gofunc(&data);
                let _ = t.functions().count();
                let _ = t.find_func(pc);
                let _ = t.symbolize(pc);
                let _ = t.lookup_name("main.main");
            }
        }

        /// A valid table with some bytes overwritten: gets past the header checks, so the
        /// decoders see garbage.
        #[test]
        fn corrupted_tables_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            pc in 0x0ff0u64..0x1070,
        ) {
            let (mut data, mut gofunc) = synthetic();
            for (i, b) in &edits {
                let n = i.index(data.len() + gofunc.len());
                if n < data.len() { data[n] = *b } else { gofunc[n - data.len()] = *b }
            }
            if let Ok(t) = Pclntab::new(&data, 0x1000, V) {
                let t = t.with_gofunc(&gofunc);
                for f in t.functions() {
                    let _ = t.func_start_line(&f);
                    let _ = t.file_line(&f, pc);
                }
                let _ = t.symbolize(pc);
                for f in t.functions() {
                    if let Some(m) = t.frame_maps(&f, pc) {
                        let _ = m.locals.map(|l| l.bitmap(m.index));
                        let _ = m.objects.map(stack_objects);
                    }
                }
                let _ = t.lookup_name("main.outer");
                let _ = t.detect_wrapper_func_id();
            }
        }
    }
}
