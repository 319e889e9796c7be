//! The Go runtime's memory layout as leaktrace reads it, for one Go version: byte offsets of
//! the fields of `runtime.g`, `runtime.m`, `runtime.hchan`, `runtime.sudog` and of the GC
//! globals, and the `waitReason` and g-status constants with Go's own wording.
//!
//! The numbers have two sources, and they are the same numbers: the DWARF of the traced
//! binary itself ([`from_dwarf`]), or, for a binary built with `-ldflags=-w`, the committed
//! table in `leaktrace/layouts/go1.X.json` ([`from_table`]). `cargo xtask gen-layouts`
//! writes that table by compiling `xtask/layout-probe/main.go` with every toolchain named in
//! scripts/versions.sh and running [`from_dwarf`] on the result, so no offset or wait-reason
//! number in leaktrace is typed in by hand; `leaktrace/tests/layout.rs` regenerates the table
//! and fails on any difference.
//!
//! This module parses the ELF file itself (with `object` and `gimli`) and does not depend on
//! the other `target` modules.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    io::Read as _,
};

use gimli::{AttributeValue, EndianSlice, LittleEndian, SectionId};
use object::{
    CompressedData, CompressionFormat, Endianness, Object as _, ObjectSection as _,
    ObjectSegment as _, ObjectSymbol as _, elf,
    read::elf::{ElfFile64, FileHeader as _, Rela as _, SectionHeader as _},
};
use serde::{Deserialize, Serialize};

/// Go's wording for a raw waitReason value, from the target's own table (`wait_reasons` of
/// its [`RuntimeLayout`]); `waitReason(N)` for a value the table does not name.
pub fn reason_name(wait_reasons: &[String], reason: u8) -> String {
    match wait_reasons.get(reason as usize) {
        Some(s) if !s.is_empty() => s.clone(),
        _ => format!("waitReason({reason})"),
    }
}

/// Offsets, constants and wait-reason strings of one Go version's runtime (amd64).
///
/// Every offset is in bytes from the start of the struct named by its group (`g`, `m`,
/// `hchan`, ...) or, for the globals (`gc_controller`, `memstats`, `work_cycles`), from the
/// address of the ELF symbol (`runtime.gcController`, `runtime.memstats`, `runtime.work`).
/// The width a reader should use is in each field's doc comment; [`from_dwarf`] checks it and
/// fails if a Go version changes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeLayout {
    /// Where the numbers came from.
    #[serde(flatten)]
    pub source: LayoutSource,
    /// The Go major.minor the numbers hold for, e.g. "1.26".
    pub go_version: String,
    /// The exact toolchain whose DWARF they were read from, as in its `DW_AT_producer`, e.g.
    /// "go1.26.6".
    pub toolchain: String,
    pub g: GOffsets,
    pub m: MOffsets,
    pub p: POffsets,
    pub sched: SchedOffsets,
    pub hchan: HchanOffsets,
    pub waitq: WaitqOffsets,
    pub sudog: SudogOffsets,
    pub gc_controller: GcControllerOffsets,
    pub memstats: MemstatsOffsets,
    /// `runtime.work.cycles` (u32): GC cycles started. None where `runtime.workType` has no
    /// `cycles` field (none of Go 1.21–1.27).
    pub work_cycles: Option<u64>,
    /// `runtime.mheap`, at the symbol `runtime.mheap_`: where the heap's span map starts.
    pub mheap: MheapOffsets,
    /// `runtime.heapArena`, the metadata of one 64 MiB heap arena.
    pub heap_arena: HeapArenaOffsets,
    /// `runtime.mspan`, a run of pages holding objects of one size class (or one large
    /// object).
    pub mspan: MspanOffsets,
    /// `runtime.special` and the specials the GC scans as roots (finalizers, weak handles,
    /// cleanups), with their kinds.
    pub special: SpecialOffsets,
    /// The constants of the heap's address-to-span map (runtime/malloc.go, mheap.go).
    pub arena: ArenaConstants,
    /// Go's wording for each wait reason, indexed by the `waitReason` value: the array
    /// `runtime.waitReasonStrings` ("chan send", "select", "sleep", ...; index 0 is "").
    pub wait_reasons: Vec<String>,
    /// `waitReason` constants by name without the `waitReason` prefix ("ChanSend"), from
    /// the DWARF constants `runtime.waitReason*`. The values move between Go versions.
    pub wait_reason_values: BTreeMap<String, u8>,
    /// g status values (`g.atomicstatus`) by name without the `_G` prefix: "idle",
    /// "runnable", "running", "syscall", "waiting", "dead", "preempted", "scan" (the bit
    /// or-ed in while the GC scans the stack), "scanwaiting", ...
    pub g_status: BTreeMap<String, u32>,
    /// Where [`RuntimeLayout::g_status`] came from.
    pub g_status_source: GStatusSource,
}

/// Where a [`RuntimeLayout`] came from. In the JSON it is flattened into the top level:
/// `"source": "table", "generated_by": "cargo xtask gen-layouts (...)"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum LayoutSource {
    /// The DWARF and symbol table of the traced binary itself.
    Dwarf,
    /// leaktrace's committed table, `leaktrace/layouts/go1.X.json`.
    Table {
        /// The command that wrote the table, and from what.
        generated_by: String,
    },
}

/// Where the g status values came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GStatusSource {
    /// The DWARF constants `runtime._G*`.
    Dwarf,
    /// The binary's DWARF has no `runtime._G*` constants, so these are the values that
    /// runtime/runtime2.go defines in every Go version from 1.21 to 1.27: `_Gidle` = 0 ...
    /// `_Gpreempted` = 9 and `_Gscan` = 0x1000 (see [`FIXED_G_STATUS`]).
    Fixed,
}

/// `runtime.g`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GOffsets {
    /// sizeof(runtime.g).
    pub size: u64,
    /// `g.stack.lo` (uintptr).
    pub stack_lo: u64,
    /// `g.stack.hi` (uintptr).
    pub stack_hi: u64,
    /// `g.m` (*m).
    pub m: u64,
    /// `g.sched`, the `gobuf` that holds the registers of a g that is not running.
    pub sched: u64,
    /// `g.sched.sp` (uintptr), from the start of g.
    pub sched_sp: u64,
    /// `g.sched.pc` (uintptr), from the start of g.
    pub sched_pc: u64,
    /// `g.sched.bp` (uintptr), from the start of g.
    pub sched_bp: u64,
    /// `g.atomicstatus` (u32).
    pub atomicstatus: u64,
    /// `g.goid` (u64).
    pub goid: u64,
    /// `g.waitsince` (i64, nanotime): coarse, set only when a GC first sees the g waiting.
    pub waitsince: u64,
    /// `g.waitreason` (u8, a `waitReason`).
    pub waitreason: u64,
    /// `g.trackingSeq` (u8): `casgstatus` adds one each time the g stops running
    /// (runtime/proc.go, Go 1.21-1.27), so an unchanged value says it did not run, modulo 256.
    pub tracking_seq: u64,
    /// `g.parentGoid` (u64).
    pub parent_goid: u64,
    /// `g.gopc` (uintptr): the pc of the `go` statement that created this g.
    pub gopc: u64,
    /// `g.startpc` (uintptr): the pc of the goroutine's function.
    pub startpc: u64,
    /// `g.waiting` (*sudog): the sudogs this g waits on, linked by `sudog.waitlink`.
    pub waiting: u64,
    /// `g.labels` (unsafe.Pointer): pprof labels.
    pub labels: u64,
}

/// `runtime.m`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MOffsets {
    /// sizeof(runtime.m).
    pub size: u64,
    /// `m.g0` (*g).
    pub g0: u64,
    /// `m.procid` (u64): the Linux thread id.
    pub procid: u64,
    /// `m.gsignal` (*g): the g that runs signal handlers on this m.
    pub gsignal: u64,
    /// `m.curg` (*g): the user g running on this m.
    pub curg: u64,
    /// `m.p` (puintptr).
    pub p: u64,
    /// `m.id` (i64).
    pub id: u64,
    /// `m.alllink` (*m): the next m in `runtime.allm`.
    pub alllink: u64,
}

/// `runtime.p`, a processor: what runs Go code, one per GOMAXPROCS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct POffsets {
    /// `p.schedtick` (u32): incremented each time the P starts a goroutine on a fresh time
    /// slice (not when the goroutine inherits the slice, as a `runnext` hand-off does).
    pub schedtick: u64,
    /// `p.wbBuf` (runtime.wbBuf): the write barrier's buffer of recently written pointers,
    /// kept as `uintptr`s that the GC does not trace; its offset and size in bytes.
    pub wb_buf: u64,
    pub wb_buf_size: u64,
    /// `p.pcache` (runtime.pageCache: base, cache, scav), the P's cache of free pages:
    /// `uintptr`s the GC does not trace, `base` the address of a page, hence of the object
    /// at its start; its offset and size in bytes.
    pub pcache: u64,
    pub pcache_size: u64,
}

/// `runtime.schedt`, the scheduler's globals, at the symbol `runtime.sched`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedOffsets {
    /// `schedt.timeToRun` (`timeHistogram`): scheduling latencies, one sample for every
    /// eighth time each goroutine stops running (gTrackingPeriod), when it next runs.
    pub time_to_run: u64,
    /// sizeof(runtime.timeHistogram): bucket counts, then underflow and overflow, all u64.
    pub time_histogram_size: u64,
}

/// `runtime.hchan`, a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HchanOffsets {
    /// sizeof(runtime.hchan).
    pub size: u64,
    /// `hchan.qcount` (uint): elements in the buffer.
    pub qcount: u64,
    /// `hchan.dataqsiz` (uint): buffer capacity.
    pub dataqsiz: u64,
    /// `hchan.buf` (unsafe.Pointer).
    pub buf: u64,
    /// `hchan.elemsize` (u16).
    pub elemsize: u64,
    /// `hchan.closed` (u32).
    pub closed: u64,
    /// `hchan.timer` (*timer; non-nil for the channel of a time.Timer or time.Ticker).
    /// None before Go 1.23.
    pub timer: Option<u64>,
    /// `hchan.elemtype` (*_type).
    pub elemtype: u64,
    /// `hchan.sendx` (uint).
    pub sendx: u64,
    /// `hchan.recvx` (uint).
    pub recvx: u64,
    /// `hchan.recvq` (waitq): receivers parked on the channel.
    pub recvq: u64,
    /// `hchan.sendq` (waitq): senders parked on the channel.
    pub sendq: u64,
    /// `hchan.lock` (mutex).
    pub lock: u64,
}

/// `runtime.waitq`, the queue of sudogs parked on a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitqOffsets {
    /// `waitq.first` (*sudog).
    pub first: u64,
    /// `waitq.last` (*sudog).
    pub last: u64,
}

/// `runtime.sudog`, a g waiting on a channel or a semaphore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SudogOffsets {
    /// sizeof(runtime.sudog).
    pub size: u64,
    /// `sudog.g` (*g).
    pub g: u64,
    /// `sudog.next` (*sudog).
    pub next: u64,
    /// `sudog.prev` (*sudog).
    pub prev: u64,
    /// The word to read for `sudog.elem` (a pointer): the field itself before Go 1.26; from
    /// 1.26 `elem` is a `maybeTraceablePtr{vp, vu}` and this is `vu`, which stays set.
    pub elem: u64,
    /// The word to read for `sudog.c` (*hchan): the field itself before Go 1.26; from 1.26
    /// `c` is a `maybeTraceableChan{vp, vu}` and this is `vu` (`vp` may be nil'd).
    pub c: u64,
    /// `sudog.isSelect` (bool).
    pub isselect: u64,
    /// `sudog.waitlink` (*sudog): the next sudog in `g.waiting`.
    pub waitlink: u64,
    /// `sudog.ticket` (u32).
    pub ticket: Option<u64>,
    /// `sudog.releasetime` (i64).
    pub releasetime: Option<u64>,
}

/// `runtime.gcControllerState`, at the symbol `runtime.gcController`. All fields are u64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcControllerOffsets {
    /// `heapInUse`: MemStats.HeapInuse.
    pub heap_inuse: u64,
    /// `heapReleased`: MemStats.HeapReleased.
    pub heap_released: u64,
    /// `heapFree`: HeapIdle = heapFree + heapReleased.
    pub heap_free: u64,
    /// `totalAlloc`: HeapAlloc ~= totalAlloc - totalFree.
    pub total_alloc: u64,
    /// `totalFree`.
    pub total_free: u64,
    /// `heapLive`: the pacer's live heap.
    pub heap_live: u64,
}

/// `runtime.mstats`, at the symbol `runtime.memstats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemstatsOffsets {
    /// `numgc` (u32): completed GC cycles.
    pub numgc: u64,
    /// `pause_total_ns` (u64).
    pub pause_total_ns: u64,
    /// `last_gc_unix` (u64, ns since the epoch).
    pub last_gc_unix: u64,
}

/// `runtime.mheap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MheapOffsets {
    /// `mheap.arenas` (`[1 << arenaL1Bits]*[1 << arenaL2Bits]*heapArena`): the L1 array of
    /// pointers to L2 arrays of arena metadata, indexed by [`ArenaConstants`].
    pub arenas: u64,
    /// `mheap.allArenas` (`[]arenaIdx`; `heapArenas` from Go 1.25): the index of every
    /// mapped heap arena.
    pub all_arenas: u64,
}

/// `runtime.heapArena`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapArenaOffsets {
    /// `heapArena.spans` (`[pagesPerArena]*mspan`): the span of each page of the arena.
    pub spans: u64,
    /// `heapArena.pageSpecials` (`[pagesPerArena / 8]uint8`): a bit per page whose span has
    /// specials, set at the span's first page.
    pub page_specials: u64,
}

/// `runtime.mspan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MspanOffsets {
    /// sizeof(runtime.mspan).
    pub size: u64,
    /// `mspan.startAddr` (uintptr): the address of the span's first byte.
    pub start_addr: u64,
    /// `mspan.npages` (uintptr): its length in pages.
    pub npages: u64,
    /// `mspan.freeIndexForScan`: objects below it are allocated. Its width is
    /// [`MspanOffsets::free_index_for_scan_width`].
    pub free_index_for_scan: u64,
    /// The width of `freeIndexForScan`: 8 (uintptr) in Go 1.21, 2 (uint16) from 1.22.
    pub free_index_for_scan_width: u64,
    /// `mspan.allocBits` (*gcBits): one bit per object, set when allocated (as of the last
    /// sweep, for objects at or past `freeIndexForScan`).
    pub alloc_bits: u64,
    /// `mspan.spanclass` (u8): size class << 1 | noscan.
    pub spanclass: u64,
    /// `mspan.state` (u8, the value inside an `mSpanStateBox`).
    pub state: u64,
    /// `mspan.elemsize` (uintptr): the size of each object.
    pub elemsize: u64,
    /// `mspan.limit` (uintptr): the end of the span's objects.
    pub limit: u64,
    /// `mspan.specials` (*special): the span's specials, a list linked by `special.next`.
    pub specials: u64,
}

/// `runtime.special`, the header of every mspan special, and the specials the GC scans as
/// roots in `markrootSpans` (runtime/mgcmark.go): finalizers (Go 1.21+), weak handles (Go
/// 1.23+) and cleanups (Go 1.24+). Kinds are the DWARF constants `runtime._KindSpecial*`,
/// which Go renumbers between versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialOffsets {
    /// sizeof(runtime.special): a kind's own fields follow the header.
    pub size: u64,
    /// `special.next` (*special).
    pub next: u64,
    /// `special.offset`: the object's offset in its span, [`SpecialOffsets::offset_width`]
    /// bytes wide.
    pub offset: u64,
    /// 2 (uint16) in Go 1.21-1.23, 8 (uintptr) from 1.24.
    pub offset_width: u64,
    /// `special.kind` (u8).
    pub kind: u64,
    /// `_KindSpecialFinalizer`, and sizeof(runtime.specialfinalizer).
    pub finalizer_kind: u8,
    pub finalizer_size: u64,
    /// `_KindSpecialWeakHandle`, and sizeof(runtime.specialWeakHandle); None before Go 1.23.
    pub weak_handle_kind: Option<u8>,
    pub weak_handle_size: Option<u64>,
    /// `_KindSpecialCleanup`, and sizeof(runtime.specialCleanup); None before Go 1.24.
    pub cleanup_kind: Option<u8>,
    pub cleanup_size: Option<u64>,
}

/// Constants of the heap's address-to-span map, from the DWARF constants of the same names
/// (`runtime.arenaL1Bits`, ...). On linux/amd64 (Go 1.21–1.27) the map is one level
/// (L1 bits = 0): arena index = (p - arenaBaseOffset) >> log2(heapArenaBytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArenaConstants {
    /// `runtime.arenaL1Bits`.
    pub l1_bits: u64,
    /// `runtime.arenaL2Bits`.
    pub l2_bits: u64,
    /// `runtime.arenaBaseOffsetUintptr`, subtracted (wrapping) from an address before it is
    /// split into arena indexes.
    pub base_offset: u64,
    /// `runtime.heapArenaBytes`: the bytes of one arena.
    pub heap_arena_bytes: u64,
    /// `runtime.pageSize`: the heap's page (not the OS's).
    pub page_size: u64,
    /// `runtime.pagesPerArena`.
    pub pages_per_arena: u64,
    /// The `mSpanState` value `runtime.mSpanInUse`: a span of heap objects (stacks are
    /// `mSpanManual`).
    pub span_in_use: u8,
}

/// The DWARF constants [`ArenaConstants`] is read from.
const ARENA_CONSTANTS: &[&str] = &[
    "runtime.arenaL1Bits",
    "runtime.arenaL2Bits",
    "runtime.arenaBaseOffsetUintptr",
    "runtime.heapArenaBytes",
    "runtime.pageSize",
    "runtime.pagesPerArena",
    "runtime.mSpanInUse",
];

/// Why a layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("not an ELF file leaktrace can read: {0}")]
    Elf(#[from] object::Error),
    #[error("this is {0}")]
    Unsupported(&'static str),
    #[error("reading the DWARF: {0}")]
    Dwarf(#[from] gimli::Error),
    #[error("decompressing {section}: {source}")]
    Decompress {
        section: &'static str,
        source: std::io::Error,
    },
    #[error(
        "{section} is compressed with {format:?}, which leaktrace does not read (Go writes zlib)"
    )]
    UnsupportedCompression {
        section: &'static str,
        format: CompressionFormat,
    },
    #[error("the DWARF names no Go toolchain (no DW_AT_producer \"Go cmd/compile go1.X\")")]
    NoGoProducer,
    #[error("the DWARF of this {toolchain} binary has no {what}")]
    Missing { toolchain: String, what: String },
    #[error(
        "{toolchain}: {what} is {found} bytes wide, leaktrace reads {expected}; \
         leaktrace's readers need updating for this Go version"
    )]
    FieldWidth {
        toolchain: String,
        what: String,
        expected: u64,
        found: u64,
    },
    #[error("{toolchain}: wait reason {name} = {value} does not fit the u8 waitReason")]
    WaitReasonRange {
        toolchain: String,
        name: String,
        value: i64,
    },
    #[error("reading runtime.waitReasonStrings: {0}")]
    WaitReasonStrings(String),
    #[error(
        "Go {major}.{minor} is not in leaktrace's layout table (generated for {range}); \
         rebuild the target without -ldflags=-w so leaktrace can read its DWARF, or add a \
         go{major}.{minor} toolchain to GO_VERSIONS in scripts/versions.sh and run \
         `cargo xtask gen-layouts`"
    )]
    NotInTable {
        major: u32,
        minor: u32,
        range: String,
    },
}

/// The g status values runtime/runtime2.go defines in Go 1.21–1.27 (unchanged in all of
/// them; 1.26 appended `_Gleaked` = 10 and `_Gdeadextra` = 11). Used only when a binary's
/// DWARF lacks the `runtime._G*` constants, which no default build does.
pub const FIXED_G_STATUS: &[(&str, u32)] = &[
    ("idle", 0),
    ("runnable", 1),
    ("running", 2),
    ("syscall", 3),
    ("waiting", 4),
    ("moribund_unused", 5),
    ("dead", 6),
    ("enqueue_unused", 7),
    ("copystack", 8),
    ("preempted", 9),
    ("scan", 0x1000),
];

/// The committed table: `(minor, JSON)` for every Go 1.x in it. `layouts/table.rs` is
/// written by `cargo xtask gen-layouts`, one entry per toolchain in scripts/versions.sh.
const TABLE: &[(u32, &str)] = include!("../../layouts/table.rs");

impl RuntimeLayout {
    /// The value of the wait reason `name` (the constant's name without `waitReason`, e.g.
    /// "ChanSend", "Select", "Sleep"), or None if this Go version has no such reason.
    pub fn wait_reason(&self, name: &str) -> Option<u8> {
        self.wait_reason_values.get(name).copied()
    }

    /// Go's wording for a `waitReason` value ("chan send"), as `runtime.Stack` prints it.
    pub fn wait_reason_string(&self, value: u8) -> Option<&str> {
        self.wait_reasons
            .get(usize::from(value))
            .map(String::as_str)
    }

    /// The g status value named `name` without `_G` ("waiting", "scan"), if it exists.
    pub fn g_status(&self, name: &str) -> Option<u32> {
        self.g_status.get(name).copied()
    }

    /// (major, minor) of [`RuntimeLayout::go_version`].
    pub fn version(&self) -> Option<(u32, u32)> {
        let (major, minor) = self.go_version.split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    }

    /// This layout as an entry of the committed table: source set to the table and its
    /// generator named after [`RuntimeLayout::toolchain`].
    pub fn into_table_entry(mut self) -> Self {
        self.source = LayoutSource::Table {
            generated_by: generated_by(&self.toolchain),
        };
        self
    }

    /// The JSON text of a table file (`leaktrace/layouts/go1.X.json`), with a final newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("a layout always serializes");
        text.push('\n');
        text
    }
}

/// What a table entry names as its generator.
pub fn generated_by(toolchain: &str) -> String {
    format!(
        "cargo xtask gen-layouts (compiles xtask/layout-probe/main.go with {toolchain} and \
         reads its DWARF)"
    )
}

/// The Go versions in the committed table, oldest first.
pub fn table_versions() -> Vec<(u32, u32)> {
    let mut versions: Vec<(u32, u32)> = TABLE.iter().map(|&(minor, _)| (1, minor)).collect();
    versions.sort_unstable();
    versions
}

/// The committed table's layout for Go `major.minor`, if the table has that version.
pub fn from_table(major: u32, minor: u32) -> Option<RuntimeLayout> {
    if major != 1 {
        return None;
    }
    let &(_, json) = TABLE.iter().find(|&&(m, _)| m == minor)?;
    // The files are generated and checked by tests (every entry parses and names its
    // version), so a parse failure here is a bug in the build, not in the input.
    let layout: RuntimeLayout = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("leaktrace/layouts/go1.{minor}.json does not parse: {e}"));
    Some(layout)
}

/// The layout for a binary of Go `major.minor` (from its `.go.buildinfo`): from its DWARF
/// when it has some, else from the committed table. DWARF that cannot be read (say,
/// zstd-compressed by an external linker) is logged and the table used if it has the
/// version; otherwise that error is returned.
pub fn for_binary(elf_data: &[u8], major: u32, minor: u32) -> Result<RuntimeLayout, LayoutError> {
    match from_dwarf(elf_data) {
        Ok(Some(layout)) => return Ok(layout),
        Ok(None) => {}
        Err(e) => {
            let Some(layout) = from_table(major, minor) else {
                return Err(e);
            };
            log::warn!("{e}; using leaktrace's layout table for Go {major}.{minor} instead");
            return Ok(layout);
        }
    }
    from_table(major, minor).ok_or_else(|| {
        let versions = table_versions();
        let range = match (versions.first(), versions.last()) {
            (Some(a), Some(b)) => format!("{}.{}–{}.{}", a.0, a.1, b.0, b.1),
            _ => "no version".to_string(),
        };
        LayoutError::NotInTable {
            major,
            minor,
            range,
        }
    })
}

/// Reads the layout from the binary's own DWARF (plain, SHF_COMPRESSED or `.zdebug_*`
/// zlib sections). Ok(None) when the binary has no DWARF (`-ldflags=-w` or `-s`).
///
/// The wait-reason strings come from the array `runtime.waitReasonStrings` in the file
/// (see [`wait_reason_strings`]). When they cannot be read from the file (no `.symtab`, or a
/// PIE whose string pointers are 0 in the file and have no `R_*_RELATIVE` relocation) they
/// are taken from the committed table for the same Go version; if the table has no such
/// version either, this fails.
pub fn from_dwarf(elf_data: &[u8]) -> Result<Option<RuntimeLayout>, LayoutError> {
    let file = ElfFile64::<Endianness>::parse(elf_data)?;
    if !file.is_little_endian() {
        return Err(LayoutError::Unsupported(
            "a big-endian ELF: leaktrace reads little-endian Go binaries only",
        ));
    }
    match debug_section(&file, ".debug_info") {
        Some(section) if section.size() > 0 => {}
        _ => return Ok(None),
    }
    let sections = gimli::DwarfSections::load(|id| dwarf_section(&file, id))?;
    let dwarf = sections.borrow(|data| EndianSlice::new(data.as_ref(), LittleEndian));
    let index = DwarfIndex::build(&dwarf)?;
    let layout = index.layout()?;
    let Some(mut layout) = layout else {
        return Ok(None);
    };
    layout.wait_reasons = match wait_reason_strings(elf_data)? {
        Some(strings) => strings,
        None => {
            let (major, minor) = layout.version().ok_or(LayoutError::NoGoProducer)?;
            from_table(major, minor)
                .map(|table| table.wait_reasons)
                .ok_or_else(|| {
                    LayoutError::WaitReasonStrings(format!(
                        "this {} binary's runtime.waitReasonStrings cannot be read from the \
                         file (no .symtab, or PIE pointers without relocations), and Go {} is \
                         not in leaktrace's layout table",
                        layout.toolchain, layout.go_version
                    ))
                })?
        }
    };
    Ok(Some(layout))
}

/// The array `runtime.waitReasonStrings` (a `[N]string`: N pairs of pointer and length),
/// read statically from the file through its `.symtab` symbol and the `PT_LOAD` segments.
///
/// In a PIE the pointer words are link-time addresses that the dynamic loader relocates. Go's
/// internal linker writes the address into the word as well as into the `R_X86_64_RELATIVE`
/// addend; an external linker may leave the word 0, and then the addend from the `SHT_RELA`
/// sections is used. Ok(None) when there is no `.symtab` symbol or a pointer is 0 with no
/// relocation.
pub fn wait_reason_strings(elf_data: &[u8]) -> Result<Option<Vec<String>>, LayoutError> {
    const SYMBOL: &str = "runtime.waitReasonStrings";
    let file = ElfFile64::<Endianness>::parse(elf_data)?;
    let Some(symbol) = file.symbols().find(|s| s.name() == Ok(SYMBOL)) else {
        return Ok(None);
    };
    let bad = |what: String| LayoutError::WaitReasonStrings(what);
    let count = symbol.size() / 16;
    if symbol.size() % 16 != 0 || count == 0 {
        return Err(bad(format!(
            "{SYMBOL} is {} bytes, not a [N]string",
            symbol.size()
        )));
    }
    // Slot addresses are computed from the symbol's below. One running past the top of the
    // address space is garbage, and nothing has refused it yet: object does not check symbol
    // or segment addresses for that.
    if symbol.address().checked_add(symbol.size()).is_none() {
        return Err(bad(format!(
            "{SYMBOL} at {:#x} runs past the end of the address space",
            symbol.address()
        )));
    }
    let words = read_vaddr(&file, symbol.address(), symbol.size()).ok_or_else(|| {
        bad(format!(
            "{SYMBOL} at {:#x} is not in the file",
            symbol.address()
        ))
    })?;
    let mut relative: Option<HashMap<u64, u64>> = None;
    let mut strings = Vec::with_capacity(count as usize);
    for (i, pair) in words.as_chunks::<16>().0.iter().enumerate() {
        let (ptr, len) = pair.split_at(8);
        let mut ptr = u64::from_le_bytes(ptr.try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        if len == 0 {
            strings.push(String::new());
            continue;
        }
        if ptr == 0 {
            let relocs = match &relative {
                Some(r) => r,
                None => relative.insert(relative_relocations(&file)?),
            };
            match relocs.get(&(symbol.address() + 16 * i as u64)) {
                Some(&addend) => ptr = addend,
                None => return Ok(None),
            }
        }
        let bytes = read_vaddr(&file, ptr, len).ok_or_else(|| {
            bad(format!(
                "{SYMBOL}[{i}] points at {ptr:#x}+{len}, outside the file"
            ))
        })?;
        strings.push(String::from_utf8_lossy(bytes).into_owned());
    }
    Ok(Some(strings))
}

/// `len` bytes at virtual address `addr`, if a `PT_LOAD` segment maps them from the file.
fn read_vaddr<'data>(
    file: &ElfFile64<'data, Endianness>,
    addr: u64,
    len: u64,
) -> Option<&'data [u8]> {
    file.segments().find_map(|segment| {
        let data = segment.data().ok()?;
        let start = addr.checked_sub(segment.address())?;
        let end = start.checked_add(len)?;
        data.get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    })
}

/// Address -> addend of every `R_X86_64_RELATIVE` (or `R_AARCH64_RELATIVE`) relocation in
/// the file's `SHT_RELA` sections.
fn relative_relocations(
    file: &ElfFile64<'_, Endianness>,
) -> Result<HashMap<u64, u64>, LayoutError> {
    let endian = file.endian();
    let relative = match file.elf_header().e_machine(endian) {
        elf::EM_X86_64 => elf::R_X86_64_RELATIVE,
        elf::EM_AARCH64 => elf::R_AARCH64_RELATIVE,
        _ => return Ok(HashMap::new()),
    };
    let mut map = HashMap::new();
    for section in file.elf_section_table().iter() {
        let Some((relas, _)) = section.rela(endian, file.data())? else {
            continue;
        };
        for rela in relas {
            if rela.r_type(endian, false) == relative {
                map.insert(rela.r_offset(endian), rela.r_addend(endian) as u64);
            }
        }
    }
    Ok(map)
}

/// The section `.debug_X`, or `.zdebug_X` when the file has that instead.
fn debug_section<'data, 'file>(
    file: &'file ElfFile64<'data, Endianness>,
    name: &str,
) -> Option<object::read::elf::ElfSection64<'data, 'file, Endianness>> {
    file.section_by_name(name).or_else(|| {
        let rest = name.strip_prefix(".debug_")?;
        file.section_by_name(&format!(".zdebug_{rest}"))
    })
}

/// The bytes of one DWARF section, decompressed; empty if the file lacks it. `object` parses
/// both compression headers (SHF_COMPRESSED's `Elf64_Chdr`, and "ZLIB" + size of
/// `.zdebug_*`); this inflates the zlib stream behind them.
fn dwarf_section<'data>(
    file: &ElfFile64<'data, Endianness>,
    id: SectionId,
) -> Result<Cow<'data, [u8]>, LayoutError> {
    // Location and range lists are a third of a Go binary's compressed DWARF, and the
    // layouts need neither: only the types' DIEs (and the units' line-program headers, which
    // gimli parses with each unit). Not inflated, they are not paid for at attach.
    let unused = matches!(
        id,
        SectionId::DebugLoc
            | SectionId::DebugLocLists
            | SectionId::DebugRanges
            | SectionId::DebugRngLists
            | SectionId::DebugAranges
            | SectionId::DebugMacinfo
            | SectionId::DebugMacro
    );
    match debug_section(file, id.name()) {
        Some(section) if !unused => decompress(id.name(), section.compressed_data()?),
        _ => Ok(Cow::Borrowed(&[])),
    }
}

/// Inflates a section. Go compresses its DWARF with zlib: SHF_COMPRESSED `.debug_*`
/// sections in Go 1.21–1.27, `.zdebug_*` sections in older releases (and after
/// `objcopy --compress-debug-sections=zlib-gnu`).
fn decompress<'data>(
    section: &'static str,
    data: CompressedData<'data>,
) -> Result<Cow<'data, [u8]>, LayoutError> {
    match data.format {
        CompressionFormat::None => Ok(Cow::Borrowed(data.data)),
        CompressionFormat::Zlib => {
            // Capacity from the header, bounded so a corrupt size cannot exhaust memory.
            let capacity = usize::try_from(data.uncompressed_size.min(1 << 28)).unwrap_or(0);
            let mut out = Vec::with_capacity(capacity);
            // Never inflate past the size the header promises: a crafted stream could
            // otherwise expand a thousandfold.
            flate2::read::ZlibDecoder::new(data.data)
                .take(data.uncompressed_size.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|source| LayoutError::Decompress { section, source })?;
            if out.len() as u64 != data.uncompressed_size {
                return Err(LayoutError::Decompress {
                    section,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{} bytes inflated, the header says {}",
                            out.len(),
                            data.uncompressed_size
                        ),
                    ),
                });
            }
            Ok(Cow::Owned(out))
        }
        format => Err(LayoutError::UnsupportedCompression { section, format }),
    }
}

/// The toolchain ("go1.26.6") and major.minor ("1.26") named by a Go `DW_AT_producer`
/// such as "Go cmd/compile go1.26.6; regabi" or "Go cmd/compile devel go1.27-abc; regabi".
fn parse_producer(producer: &str) -> Option<(String, String)> {
    let token = producer
        .split([' ', ';'])
        .find(|t| t.starts_with("go") && t[2..].starts_with(|c: char| c.is_ascii_digit()))?;
    let digits = &token[2..];
    let mut parts = digits.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((token.to_string(), format!("{major}.{minor}")))
}

/// The g-status key of a DWARF constant name: "runtime._Gwaiting" -> "waiting". Status
/// names are all lower case, which sets them apart from `_GCoff` or `_GoidCacheBatch`.
fn g_status_name(constant: &str) -> Option<&str> {
    let rest = constant.strip_prefix("runtime._G")?;
    (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(rest)
}

/// A type DIE, reduced to what the layout needs.
#[derive(Default)]
struct TypeDie<'a> {
    name: Option<&'a str>,
    byte_size: Option<u64>,
    /// DW_AT_type, as a .debug_info offset.
    ty: Option<usize>,
    members: Vec<Member<'a>>,
}

struct Member<'a> {
    name: &'a str,
    offset: u64,
    ty: Option<usize>,
    embedded: bool,
}

struct Constant<'a> {
    name: &'a str,
    value: i64,
    ty: Option<usize>,
}

/// One pass over .debug_info: every type DIE by offset, structs by name, the constants.
struct DwarfIndex<'a> {
    types: HashMap<usize, TypeDie<'a>>,
    structs: HashMap<&'a str, usize>,
    constants: Vec<Constant<'a>>,
    producer: Option<&'a str>,
}

/// DW_AT_go_embedded_field, Go's vendor attribute marking an embedded struct field
/// (cmd/internal/dwarf/dwarf.go, the same in Go 1.21–1.27).
const DW_AT_GO_EMBEDDED_FIELD: gimli::DwAt = gimli::DwAt(0x2903);

type Reader<'a> = EndianSlice<'a, LittleEndian>;

impl<'a> DwarfIndex<'a> {
    fn build(dwarf: &gimli::Dwarf<Reader<'a>>) -> Result<Self, LayoutError> {
        let mut index = DwarfIndex {
            types: HashMap::new(),
            structs: HashMap::new(),
            constants: Vec::new(),
            producer: None,
        };
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            let unit = dwarf.unit(header)?;
            let name_of = |value: AttributeValue<Reader<'a>>| -> Option<&'a str> {
                dwarf
                    .attr_string(&unit, value)
                    .ok()
                    .and_then(|s| std::str::from_utf8(s.slice()).ok())
            };
            let ref_of = |value: AttributeValue<Reader<'a>>| -> Option<usize> {
                match value {
                    AttributeValue::UnitRef(o) => o.to_debug_info_offset(&unit.header).map(|o| o.0),
                    AttributeValue::DebugInfoRef(o) => Some(o.0),
                    _ => None,
                }
            };
            // The struct whose members are being read, and its depth.
            let mut open_struct: Option<(usize, isize)> = None;
            let mut cursor = unit.entries();
            while let Some(entry) = cursor.next_dfs()? {
                let depth = entry.depth();
                if open_struct.is_some_and(|(_, d)| depth <= d) {
                    open_struct = None;
                }
                let Some(offset) = entry
                    .offset()
                    .to_debug_info_offset(&unit.header)
                    .map(|o| o.0)
                else {
                    continue;
                };
                let name = entry.attr_value(gimli::DW_AT_name).and_then(name_of);
                let ty = entry.attr_value(gimli::DW_AT_type).and_then(ref_of);
                match entry.tag() {
                    gimli::DW_TAG_compile_unit => {
                        if index.producer.is_none() {
                            index.producer = entry
                                .attr_value(gimli::DW_AT_producer)
                                .and_then(name_of)
                                .filter(|p| p.starts_with("Go "));
                        }
                    }
                    gimli::DW_TAG_member => {
                        let (Some((owner, d)), Some(name)) = (open_struct, name) else {
                            continue;
                        };
                        if depth != d + 1 {
                            continue;
                        }
                        let Some(member_offset) = entry
                            .attr(gimli::DW_AT_data_member_location)
                            .and_then(|a| a.udata_value())
                        else {
                            continue;
                        };
                        let embedded = match entry.attr_value(DW_AT_GO_EMBEDDED_FIELD) {
                            Some(AttributeValue::Flag(flag)) => flag,
                            Some(other) => other.udata_value().is_some_and(|v| v != 0),
                            None => false,
                        };
                        if let Some(owner) = index.types.get_mut(&owner) {
                            owner.members.push(Member {
                                name,
                                offset: member_offset,
                                ty,
                                embedded,
                            });
                        }
                    }
                    gimli::DW_TAG_constant => {
                        let (Some(name), Some(value)) = (
                            name,
                            entry.attr(gimli::DW_AT_const_value).and_then(|a| {
                                a.sdata_value()
                                    .or_else(|| a.udata_value().and_then(|v| i64::try_from(v).ok()))
                            }),
                        ) else {
                            continue;
                        };
                        if name.starts_with("runtime.waitReason")
                            || name.starts_with("runtime._G")
                            || ARENA_CONSTANTS.contains(&name)
                            || name.starts_with("runtime._KindSpecial")
                        {
                            index.constants.push(Constant { name, value, ty });
                        }
                    }
                    tag @ (gimli::DW_TAG_structure_type
                    | gimli::DW_TAG_typedef
                    | gimli::DW_TAG_base_type
                    | gimli::DW_TAG_pointer_type
                    | gimli::DW_TAG_array_type) => {
                        // Go writes no DW_AT_byte_size on pointer types.
                        let byte_size = entry
                            .attr(gimli::DW_AT_byte_size)
                            .and_then(|a| a.udata_value())
                            .or_else(|| {
                                (tag == gimli::DW_TAG_pointer_type)
                                    .then(|| u64::from(unit.header.address_size()))
                            });
                        index.types.insert(
                            offset,
                            TypeDie {
                                name,
                                byte_size,
                                ty,
                                members: Vec::new(),
                            },
                        );
                        if tag == gimli::DW_TAG_structure_type {
                            open_struct = Some((offset, depth));
                            if let Some(name) = name {
                                index.structs.entry(name).or_insert(offset);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(index)
    }

    /// Follows typedefs to the type that has a size or members.
    fn resolve(&self, mut offset: usize) -> Option<&TypeDie<'a>> {
        for _ in 0..16 {
            let die = self.types.get(&offset)?;
            if die.byte_size.is_some() || !die.members.is_empty() {
                return Some(die);
            }
            offset = die.ty?;
        }
        None
    }

    fn name_of_type(&self, offset: Option<usize>) -> Option<&'a str> {
        self.types.get(&offset?)?.name
    }

    /// Builds the layout, without the wait-reason strings. None when the DWARF has no Go
    /// producer and no `runtime.g`: not a Go binary's DWARF.
    fn layout(&self) -> Result<Option<RuntimeLayout>, LayoutError> {
        let Some(producer) = self.producer else {
            return if self.structs.contains_key("runtime.g") {
                Err(LayoutError::NoGoProducer)
            } else {
                Ok(None)
            };
        };
        let (toolchain, go_version) = parse_producer(producer).ok_or(LayoutError::NoGoProducer)?;
        let s = Structs {
            index: self,
            toolchain: &toolchain,
        };

        let g = s.get("runtime.g")?;
        let m = s.get("runtime.m")?;
        let p = s.get("runtime.p")?;
        let schedt = s.get("runtime.schedt")?;
        let time_histogram = s.get("runtime.timeHistogram")?;
        let hchan = s.get("runtime.hchan")?;
        let waitq = s.get("runtime.waitq")?;
        let sudog = s.get("runtime.sudog")?;
        let gc = s.get("runtime.gcControllerState")?;
        let mstats = s.get("runtime.mstats")?;
        let work = s.get("runtime.workType")?;
        let mheap = s.get("runtime.mheap")?;
        let heap_arena = s.get("runtime.heapArena")?;
        let mspan = s.get("runtime.mspan")?;
        let (free_index_for_scan, free_index_for_scan_width) =
            s.field_of_width(mspan, "freeIndexForScan", &[2, 8])?;
        let arena = self.arena_constants(&toolchain)?;

        let sched = s.field(g, &["sched"], None)?;
        let layout = RuntimeLayout {
            source: LayoutSource::Dwarf,
            go_version,
            toolchain: toolchain.clone(),
            g: GOffsets {
                size: s.size(g)?,
                stack_lo: s.field(g, &["stack", "lo"], Some(8))?,
                stack_hi: s.field(g, &["stack", "hi"], Some(8))?,
                m: s.field(g, &["m"], Some(8))?,
                sched,
                sched_sp: s.field(g, &["sched", "sp"], Some(8))?,
                sched_pc: s.field(g, &["sched", "pc"], Some(8))?,
                sched_bp: s.field(g, &["sched", "bp"], Some(8))?,
                atomicstatus: s.field(g, &["atomicstatus"], Some(4))?,
                goid: s.field(g, &["goid"], Some(8))?,
                waitsince: s.field(g, &["waitsince"], Some(8))?,
                waitreason: s.field(g, &["waitreason"], Some(1))?,
                tracking_seq: s.field(g, &["trackingSeq"], Some(1))?,
                parent_goid: s.field(g, &["parentGoid"], Some(8))?,
                gopc: s.field(g, &["gopc"], Some(8))?,
                startpc: s.field(g, &["startpc"], Some(8))?,
                waiting: s.field(g, &["waiting"], Some(8))?,
                labels: s.field(g, &["labels"], Some(8))?,
            },
            m: MOffsets {
                size: s.size(m)?,
                g0: s.field(m, &["g0"], Some(8))?,
                procid: s.field(m, &["procid"], Some(8))?,
                gsignal: s.field(m, &["gsignal"], Some(8))?,
                curg: s.field(m, &["curg"], Some(8))?,
                p: s.field(m, &["p"], Some(8))?,
                id: s.field(m, &["id"], Some(8))?,
                alllink: s.field(m, &["alllink"], Some(8))?,
            },
            p: {
                // next, end and 512 entries (wbBufEntries, Go 1.21-1.27).
                let (wb_buf, wb_buf_size) = s.field_of_width(p, "wbBuf", &[4112])?;
                // base, cache, scav (Go 1.21-1.27).
                let (pcache, pcache_size) = s.field_of_width(p, "pcache", &[24])?;
                POffsets {
                    schedtick: s.field(p, &["schedtick"], Some(4))?,
                    wb_buf,
                    wb_buf_size,
                    pcache,
                    pcache_size,
                }
            },
            sched: SchedOffsets {
                time_to_run: s.field(schedt, &["timeToRun"], None)?,
                time_histogram_size: s.size(time_histogram)?,
            },
            hchan: HchanOffsets {
                size: s.size(hchan)?,
                qcount: s.field(hchan, &["qcount"], Some(8))?,
                dataqsiz: s.field(hchan, &["dataqsiz"], Some(8))?,
                buf: s.field(hchan, &["buf"], Some(8))?,
                elemsize: s.field(hchan, &["elemsize"], Some(2))?,
                closed: s.field(hchan, &["closed"], Some(4))?,
                timer: s.optional(hchan, "timer", Some(8))?,
                elemtype: s.field(hchan, &["elemtype"], Some(8))?,
                sendx: s.field(hchan, &["sendx"], Some(8))?,
                recvx: s.field(hchan, &["recvx"], Some(8))?,
                recvq: s.field(hchan, &["recvq"], None)?,
                sendq: s.field(hchan, &["sendq"], None)?,
                lock: s.field(hchan, &["lock"], None)?,
            },
            waitq: WaitqOffsets {
                first: s.field(waitq, &["first"], Some(8))?,
                last: s.field(waitq, &["last"], Some(8))?,
            },
            sudog: SudogOffsets {
                size: s.size(sudog)?,
                g: s.field(sudog, &["g"], Some(8))?,
                next: s.field(sudog, &["next"], Some(8))?,
                prev: s.field(sudog, &["prev"], Some(8))?,
                elem: s.traceable_word(sudog, "elem")?,
                c: s.traceable_word(sudog, "c")?,
                isselect: s.field(sudog, &["isSelect"], Some(1))?,
                waitlink: s.field(sudog, &["waitlink"], Some(8))?,
                ticket: s.optional(sudog, "ticket", Some(4))?,
                releasetime: s.optional(sudog, "releasetime", Some(8))?,
            },
            gc_controller: GcControllerOffsets {
                heap_inuse: s.field(gc, &["heapInUse"], Some(8))?,
                heap_released: s.field(gc, &["heapReleased"], Some(8))?,
                heap_free: s.field(gc, &["heapFree"], Some(8))?,
                total_alloc: s.field(gc, &["totalAlloc"], Some(8))?,
                total_free: s.field(gc, &["totalFree"], Some(8))?,
                heap_live: s.field(gc, &["heapLive"], Some(8))?,
            },
            memstats: MemstatsOffsets {
                numgc: s.field(mstats, &["numgc"], Some(4))?,
                pause_total_ns: s.field(mstats, &["pause_total_ns"], Some(8))?,
                last_gc_unix: s.field(mstats, &["last_gc_unix"], Some(8))?,
            },
            work_cycles: s.optional(work, "cycles", Some(4))?,
            mheap: MheapOffsets {
                arenas: s.field(mheap, &["arenas"], Some(8 << arena.l1_bits))?,
                all_arenas: match s.optional(mheap, "allArenas", Some(24))? {
                    Some(off) => off,
                    None => s.field(mheap, &["heapArenas"], Some(24))?,
                },
            },
            heap_arena: HeapArenaOffsets {
                spans: s.field(heap_arena, &["spans"], None)?,
                page_specials: s.field(heap_arena, &["pageSpecials"], None)?,
            },
            mspan: MspanOffsets {
                size: s.size(mspan)?,
                start_addr: s.field(mspan, &["startAddr"], Some(8))?,
                npages: s.field(mspan, &["npages"], Some(8))?,
                free_index_for_scan,
                free_index_for_scan_width,
                alloc_bits: s.field(mspan, &["allocBits"], Some(8))?,
                spanclass: s.field(mspan, &["spanclass"], Some(1))?,
                state: s.field(mspan, &["state", "s", "value"], Some(1))?,
                elemsize: s.field(mspan, &["elemsize"], Some(8))?,
                limit: s.field(mspan, &["limit"], Some(8))?,
                specials: s.field(mspan, &["specials"], Some(8))?,
            },
            special: self.special_offsets(&s, &toolchain)?,
            arena,
            wait_reasons: Vec::new(),
            wait_reason_values: self.wait_reason_values(&toolchain)?,
            g_status: BTreeMap::new(),
            g_status_source: GStatusSource::Dwarf,
        };
        let g_status: BTreeMap<String, u32> = self
            .constants
            .iter()
            .filter_map(|c| {
                Some((
                    g_status_name(c.name)?.to_string(),
                    u32::try_from(c.value).ok()?,
                ))
            })
            .collect();
        let layout = if g_status.contains_key("waiting") {
            RuntimeLayout { g_status, ..layout }
        } else {
            RuntimeLayout {
                g_status: FIXED_G_STATUS
                    .iter()
                    .map(|&(name, value)| (name.to_string(), value))
                    .collect(),
                g_status_source: GStatusSource::Fixed,
                ..layout
            }
        };
        Ok(Some(layout))
    }

    /// [`SpecialOffsets`]: the header's fields, and each root kind's constant and struct size
    /// where this version has that kind.
    fn special_offsets(
        &self,
        s: &Structs<'_, 'a>,
        toolchain: &str,
    ) -> Result<SpecialOffsets, LayoutError> {
        let special = s.get("runtime.special")?;
        let (offset, offset_width) = s.field_of_width(special, "offset", &[2, 8])?;
        let kind = |name: &str| -> Result<Option<u8>, LayoutError> {
            match self.constants.iter().find(|c| c.name == name) {
                None => Ok(None),
                Some(c) => u8::try_from(c.value)
                    .map(Some)
                    .map_err(|_| LayoutError::Missing {
                        toolchain: toolchain.to_string(),
                        what: format!("a u8 constant {name}"),
                    }),
            }
        };
        let size = |name: &str| s.get(name).and_then(|d| s.size(d));
        let finalizer_kind =
            kind("runtime._KindSpecialFinalizer")?.ok_or_else(|| LayoutError::Missing {
                toolchain: toolchain.to_string(),
                what: "constant runtime._KindSpecialFinalizer".to_string(),
            })?;
        // A kind and its struct come together: both or neither.
        let both = |k: &str, t: &str| -> Result<(Option<u8>, Option<u64>), LayoutError> {
            match kind(k)? {
                Some(k) => Ok((Some(k), Some(size(t)?))),
                None => Ok((None, None)),
            }
        };
        let (weak_handle_kind, weak_handle_size) = both(
            "runtime._KindSpecialWeakHandle",
            "runtime.specialWeakHandle",
        )?;
        let (cleanup_kind, cleanup_size) =
            both("runtime._KindSpecialCleanup", "runtime.specialCleanup")?;
        Ok(SpecialOffsets {
            size: s.size(special)?,
            next: s.field(special, &["next"], Some(8))?,
            offset,
            offset_width,
            kind: s.field(special, &["kind"], Some(1))?,
            finalizer_kind,
            finalizer_size: size("runtime.specialfinalizer")?,
            weak_handle_kind,
            weak_handle_size,
            cleanup_kind,
            cleanup_size,
        })
    }

    /// The value of the DWARF constant `name`.
    fn constant(&self, name: &str, toolchain: &str) -> Result<i64, LayoutError> {
        self.constants
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value)
            .ok_or_else(|| LayoutError::Missing {
                toolchain: toolchain.to_string(),
                what: format!("constant {name}"),
            })
    }

    /// [`ArenaConstants`] from the DWARF constants of [`ARENA_CONSTANTS`]. The values are
    /// checked for the shape the span lookup relies on (powers of two that agree with each
    /// other); `arenaBaseOffsetUintptr` is a uintptr that DWARF writes as a negative int64.
    fn arena_constants(&self, toolchain: &str) -> Result<ArenaConstants, LayoutError> {
        let c = |name| self.constant(name, toolchain);
        let non_negative = |name| -> Result<u64, LayoutError> {
            u64::try_from(c(name)?).map_err(|_| LayoutError::Missing {
                toolchain: toolchain.to_string(),
                what: format!("non-negative constant {name}"),
            })
        };
        let arena = ArenaConstants {
            l1_bits: non_negative("runtime.arenaL1Bits")?,
            l2_bits: non_negative("runtime.arenaL2Bits")?,
            base_offset: c("runtime.arenaBaseOffsetUintptr")? as u64,
            heap_arena_bytes: non_negative("runtime.heapArenaBytes")?,
            page_size: non_negative("runtime.pageSize")?,
            pages_per_arena: non_negative("runtime.pagesPerArena")?,
            span_in_use: u8::try_from(c("runtime.mSpanInUse")?).map_err(|_| {
                LayoutError::Missing {
                    toolchain: toolchain.to_string(),
                    what: "a u8 runtime.mSpanInUse".to_string(),
                }
            })?,
        };
        let shaped = arena.heap_arena_bytes.is_power_of_two()
            && arena.page_size.is_power_of_two()
            && arena.page_size.checked_mul(arena.pages_per_arena) == Some(arena.heap_arena_bytes)
            && arena.l1_bits + arena.l2_bits < 48;
        if !shaped {
            return Err(LayoutError::Missing {
                toolchain: toolchain.to_string(),
                what: format!("heap arena constants of the expected shape ({arena:?})"),
            });
        }
        Ok(arena)
    }

    /// The constants of type `runtime.waitReason`, by name without the prefix.
    fn wait_reason_values(&self, toolchain: &str) -> Result<BTreeMap<String, u8>, LayoutError> {
        let mut values = BTreeMap::new();
        for c in &self.constants {
            let Some(name) = c.name.strip_prefix("runtime.waitReason") else {
                continue;
            };
            if self.name_of_type(c.ty) != Some("runtime.waitReason") || name.is_empty() {
                continue;
            }
            let value = u8::try_from(c.value).map_err(|_| LayoutError::WaitReasonRange {
                toolchain: toolchain.to_string(),
                name: name.to_string(),
                value: c.value,
            })?;
            values.insert(name.to_string(), value);
        }
        if values.is_empty() {
            return Err(LayoutError::Missing {
                toolchain: toolchain.to_string(),
                what: "runtime.waitReason* constants".to_string(),
            });
        }
        Ok(values)
    }
}

/// Field lookups in named structs, with errors that name the toolchain.
struct Structs<'i, 'a> {
    index: &'i DwarfIndex<'a>,
    toolchain: &'i str,
}

impl<'i, 'a> Structs<'i, 'a> {
    fn missing(&self, what: String) -> LayoutError {
        LayoutError::Missing {
            toolchain: self.toolchain.to_string(),
            what,
        }
    }

    fn get(&self, name: &str) -> Result<&'i TypeDie<'a>, LayoutError> {
        self.index
            .structs
            .get(name)
            .and_then(|&o| self.index.types.get(&o))
            .ok_or_else(|| self.missing(format!("struct {name}")))
    }

    fn size(&self, die: &TypeDie<'a>) -> Result<u64, LayoutError> {
        die.byte_size
            .ok_or_else(|| self.missing(format!("size of {}", die.name.unwrap_or("?"))))
    }

    fn member(die: &'i TypeDie<'a>, name: &str) -> Option<&'i Member<'a>> {
        die.members.iter().find(|m| m.name == name)
    }

    /// The offset of `path` (a field, or a field of a nested struct) from the start of
    /// `die`, checking that the last field is `width` bytes wide when `width` is given.
    fn field(
        &self,
        die: &'i TypeDie<'a>,
        path: &[&str],
        width: Option<u64>,
    ) -> Result<u64, LayoutError> {
        let struct_name = die.name.unwrap_or("?");
        let what = || format!("field {struct_name}.{}", path.join("."));
        let mut current = die;
        let mut offset = 0;
        let mut last: Option<&Member<'a>> = None;
        for (i, part) in path.iter().enumerate() {
            if i > 0 {
                current = last
                    .and_then(|m| self.index.resolve(m.ty?))
                    .ok_or_else(|| self.missing(what()))?;
            }
            let member = Self::member(current, part).ok_or_else(|| self.missing(what()))?;
            // DW_AT_data_member_location is any u64 in a corrupt file.
            offset = u64::checked_add(offset, member.offset)
                .ok_or_else(|| self.missing(format!("plausible offset of {}", what())))?;
            last = Some(member);
        }
        if let (Some(expected), Some(member)) = (width, last) {
            self.check_width(member, expected, &what())?;
        }
        Ok(offset)
    }

    fn check_width(
        &self,
        member: &Member<'a>,
        expected: u64,
        what: &str,
    ) -> Result<(), LayoutError> {
        let found = member
            .ty
            .and_then(|t| self.index.resolve(t))
            .and_then(|t| t.byte_size)
            .ok_or_else(|| self.missing(format!("type size of {what}")))?;
        if found != expected {
            return Err(LayoutError::FieldWidth {
                toolchain: self.toolchain.to_string(),
                what: what.to_string(),
                expected,
                found,
            });
        }
        Ok(())
    }

    /// Like `field` for a field whose width differs between Go versions: its offset and
    /// width, which must be one of `widths`.
    fn field_of_width(
        &self,
        die: &'i TypeDie<'a>,
        name: &str,
        widths: &[u64],
    ) -> Result<(u64, u64), LayoutError> {
        let what = format!("field {}.{name}", die.name.unwrap_or("?"));
        let member = Self::member(die, name).ok_or_else(|| self.missing(what.clone()))?;
        let width = member
            .ty
            .and_then(|t| self.index.resolve(t))
            .and_then(|t| t.byte_size)
            .ok_or_else(|| self.missing(format!("type size of {what}")))?;
        if !widths.contains(&width) {
            return Err(LayoutError::FieldWidth {
                toolchain: self.toolchain.to_string(),
                what,
                expected: widths[0],
                found: width,
            });
        }
        Ok((member.offset, width))
    }

    /// Like `field` for a field that some Go versions lack.
    fn optional(
        &self,
        die: &'i TypeDie<'a>,
        name: &str,
        width: Option<u64>,
    ) -> Result<Option<u64>, LayoutError> {
        match Self::member(die, name) {
            Some(_) => self.field(die, &[name], width).map(Some),
            None => Ok(None),
        }
    }

    /// The pointer word of `sudog.elem` or `sudog.c`: the field itself when it is a plain
    /// pointer, or its `vu` word when it is a `maybeTraceablePtr`/`maybeTraceableChan`
    /// (Go 1.26+), found through embedded fields.
    fn traceable_word(&self, die: &'i TypeDie<'a>, name: &str) -> Result<u64, LayoutError> {
        let what = format!("field {}.{name}", die.name.unwrap_or("?"));
        let member = Self::member(die, name).ok_or_else(|| self.missing(what.clone()))?;
        let ty = member
            .ty
            .and_then(|t| self.index.resolve(t))
            .ok_or_else(|| self.missing(format!("type of {what}")))?;
        if ty.members.is_empty() {
            self.check_width(member, 8, &what)?;
            return Ok(member.offset);
        }
        let inner = self
            .find_embedded(ty, "vu", 4)
            .ok_or_else(|| self.missing(format!("{what}.vu")))?;
        self.check_width(inner.1, 8, &format!("{what}.vu"))?;
        member
            .offset
            .checked_add(inner.0)
            .ok_or_else(|| self.missing(format!("plausible offset of {what}.vu")))
    }

    /// `name` in `die` or in a struct embedded in it (depth-first), with its offset.
    fn find_embedded(
        &self,
        die: &'i TypeDie<'a>,
        name: &str,
        depth: u32,
    ) -> Option<(u64, &'i Member<'a>)> {
        if let Some(m) = Self::member(die, name) {
            return Some((m.offset, m));
        }
        if depth == 0 {
            return None;
        }
        die.members.iter().filter(|m| m.embedded).find_map(|m| {
            let inner = self.index.resolve(m.ty?)?;
            let (offset, found) = self.find_embedded(inner, name, depth - 1)?;
            Some((m.offset.checked_add(offset)?, found))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn producer_names_toolchain_and_version() {
        assert_eq!(
            parse_producer("Go cmd/compile go1.26.6; regabi"),
            Some(("go1.26.6".to_string(), "1.26".to_string()))
        );
        assert_eq!(
            parse_producer("Go cmd/compile go1.21.13"),
            Some(("go1.21.13".to_string(), "1.21".to_string()))
        );
        assert_eq!(
            parse_producer("Go cmd/compile devel go1.27-a1b2c3 Tue Jan 1; regabi"),
            Some(("go1.27-a1b2c3".to_string(), "1.27".to_string()))
        );
        assert_eq!(parse_producer("GNU C17 13.2.0"), None);
        assert_eq!(parse_producer("Go cmd/compile gofoo"), None);
    }

    #[test]
    fn g_status_names_exclude_other_underscore_g_constants() {
        assert_eq!(g_status_name("runtime._Gwaiting"), Some("waiting"));
        assert_eq!(
            g_status_name("runtime._Gmoribund_unused"),
            Some("moribund_unused")
        );
        assert_eq!(g_status_name("runtime._Gscanwaiting"), Some("scanwaiting"));
        assert_eq!(g_status_name("runtime._GoidCacheBatch"), None);
        assert_eq!(g_status_name("runtime._GCoff"), None);
        assert_eq!(g_status_name("runtime._G"), None);
        assert_eq!(g_status_name("runtime.waitReasonSleep"), None);
    }

    #[test]
    fn zlib_sections_inflate_and_sizes_are_checked() {
        let plain = b"DWARF bytes, DWARF bytes, DWARF bytes".repeat(20);
        let mut encoder =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&plain).unwrap();
        let packed = encoder.finish().unwrap();

        let ok = CompressedData {
            format: CompressionFormat::Zlib,
            data: &packed,
            uncompressed_size: plain.len() as u64,
        };
        assert_eq!(decompress(".debug_info", ok).unwrap().as_ref(), &plain[..]);

        let wrong_size = CompressedData {
            format: CompressionFormat::Zlib,
            data: &packed,
            uncompressed_size: plain.len() as u64 + 1,
        };
        assert!(matches!(
            decompress(".debug_info", wrong_size),
            Err(LayoutError::Decompress { .. })
        ));

        let zstd = CompressedData {
            format: CompressionFormat::Zstandard,
            data: &packed,
            uncompressed_size: plain.len() as u64,
        };
        let err = decompress(".debug_info", zstd).unwrap_err().to_string();
        assert!(err.contains("Zstandard"), "{err}");

        let none = CompressedData::none(&plain);
        assert!(matches!(
            decompress(".debug_info", none),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn every_table_entry_parses_and_names_its_version_and_generator() {
        assert!(!TABLE.is_empty());
        for (major, minor) in table_versions() {
            let layout = from_table(major, minor).unwrap();
            assert_eq!(layout.go_version, format!("{major}.{minor}"));
            assert_eq!(layout.version(), Some((major, minor)));
            assert!(
                layout.toolchain.starts_with(&format!("go{major}.{minor}.")),
                "{}",
                layout.toolchain
            );
            assert_eq!(
                layout.source,
                LayoutSource::Table {
                    generated_by: generated_by(&layout.toolchain)
                }
            );
            // A table entry round-trips through its own JSON text unchanged.
            let again: RuntimeLayout = serde_json::from_str(&layout.to_json()).unwrap();
            assert_eq!(again, layout);
            // Every named wait reason has a string, and the strings are Go's wording.
            for (name, &value) in &layout.wait_reason_values {
                assert!(
                    layout.wait_reason_string(value).is_some(),
                    "go{major}.{minor}: {name} = {value} has no string"
                );
            }
            assert_eq!(layout.wait_reason_string(0), Some(""));
        }
        assert_eq!(from_table(2, 0), None);
        assert_eq!(from_table(1, 0), None);
    }

    #[test]
    fn lookups_by_name() {
        let (major, minor) = *table_versions().last().unwrap();
        let layout = from_table(major, minor).unwrap();
        let send = layout.wait_reason("ChanSend").unwrap();
        assert_eq!(layout.wait_reason_string(send), Some("chan send"));
        assert_eq!(layout.wait_reason("NoSuchReason"), None);
        assert_eq!(layout.g_status("waiting"), Some(4));
        assert_eq!(layout.g_status("scan"), Some(0x1000));
        assert_eq!(layout.g_status_source, GStatusSource::Dwarf);
    }

    #[test]
    fn fixed_g_status_values_are_those_of_every_table_version() {
        for (major, minor) in table_versions() {
            let layout = from_table(major, minor).unwrap();
            for &(name, value) in FIXED_G_STATUS {
                assert_eq!(
                    layout.g_status(name),
                    Some(value),
                    "go{major}.{minor} _G{name}"
                );
            }
        }
    }

    #[test]
    fn table_json_puts_the_generator_at_the_top_level() {
        let (major, minor) = *table_versions().first().unwrap();
        let layout = from_table(major, minor).unwrap();
        let value: serde_json::Value = serde_json::from_str(&layout.to_json()).unwrap();
        assert_eq!(value["source"], "table");
        assert!(
            value["generated_by"]
                .as_str()
                .unwrap()
                .starts_with("cargo xtask gen-layouts")
        );
    }

    #[test]
    fn not_an_elf_is_an_error_and_the_missing_version_message_says_what_to_do() {
        assert!(matches!(
            from_dwarf(b"not an ELF"),
            Err(LayoutError::Elf(_))
        ));
        let err = LayoutError::NotInTable {
            major: 1,
            minor: 99,
            range: "1.21–1.27".to_string(),
        }
        .to_string();
        assert!(err.starts_with(
            "Go 1.99 is not in leaktrace's layout table (generated for 1.21–1.27); rebuild \
             the target without -ldflags=-w so leaktrace can read its DWARF, or"
        ));
    }
}
