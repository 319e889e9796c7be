//! The memory a group of goroutines pins, estimated from outside and read-only: their stacks,
//! and the heap objects their stacks reach.
//!
//! Stacks: the sum of `g.stack.hi - g.stack.lo`, the stack memory each goroutine holds.
//!
//! Heap: a conservative mark from the goroutines' stacks, like the GC's but without its
//! pointer maps. Every aligned 8-byte word of each stack, from the SP of its innermost frame
//! outside package runtime up to `g.stack.hi` (the whole stack of a running goroutine, whose
//! saved registers are stale), that points into an in-use heap span is taken as a reference
//! to the object containing it; the objects reached are scanned the same way, transitively,
//! and each distinct object counts its `elemsize` once, however many goroutines reach it. A
//! pointer is resolved the way the runtime's `spanOf` does (Go 1.21–1.27, runtime/mheap.go):
//! arena index `(p - arenaBaseOffset) / heapArenaBytes` into `mheap_.arenas`, then
//! `heapArena.spans[page]`; the span must be `mSpanInUse` (stacks are `mSpanManual`, so other
//! goroutines' stacks are never entered) and the slot allocated (`mspan.isFree`: below
//! `freeIndexForScan` or set in `allocBits`). Objects in `noscan` spans (`spanclass & 1`)
//! hold no pointers and are counted without being read, so a `[]byte` buffer costs one read
//! of its span header, not of its bytes.
//!
//! The scheduler is left out. The runtime frames of a parked goroutine (gopark, chansend,
//! selectgo, ...) are not scanned: they hold the scheduler's `m`, and whatever of the
//! goroutine's own data they hold, its caller's frame holds too. And the scheduler's own heap
//! objects, every g, m (with its g0 and gsignal) and p, are neither counted nor entered:
//! each leads to all the others, and `p.wbBuf` to whatever pointers the program wrote last.
//!
//! What this over- and under-counts:
//! - Conservative: a dead slot in a frame, or an integer that looks like a heap address,
//!   counts what it points at if that is allocated. The GC, with pointer maps, would not.
//!   Dead slots are the likelier: a goroutine whose stack grows leaves its old stack, stale
//!   pointers and all, to the next new goroutine, whose frames may never overwrite them.
//!   A group counts each object once, so this matters most for one goroutine alone.
//! - The channel a goroutine waits on counts when its frame holds the channel, and with it
//!   the sudogs of every goroutine queued on it (~100 bytes each).
//! - An object also reachable from elsewhere (a global, another goroutine) counts here too:
//!   this is what the goroutines reach, an upper bound of what freeing them alone would free.
//! - Memory reached only through the goroutine's registers or its `g` (defer records,
//!   panics, pprof labels) is missed, and so is its `g` itself (a few hundred bytes).
//!
//! `runtime.mheap_`, `allp` and `allm` come from `.symtab`, or in a stripped binary from the
//! runtime's code ([`crate::tracee::globals::locate_heap`]).
//!
//! The work is bounded by [`Limits`]; [`Retained::truncated`] says a bound was hit.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
};

use anyhow::{Context as _, anyhow};
use serde::Serialize;

use super::goroutines::{MAX_PS, all_gs, pointer_slice, u32_at, u64_at};
use super::unwind::{self, StackMemory};
use crate::tracee::{
    Target, batch,
    globals::{self, HeapGlobals},
};

/// How the estimate is made, in one line, for reports.
pub const METHOD: &str = "stack: sum of g.stack.hi - g.stack.lo; heap: conservative scan of \
     the goroutines' non-runtime stack frames and, transitively, of the pointer-holding heap \
     objects they reach, each distinct allocated object counted once at its size-class size \
     (the scheduler's g, m and p structs excluded)";

/// `_Grunning` (runtime/runtime2.go, Go 1.21-1.27): the saved SP of a running g is stale.
const G_RUNNING: u32 = 2;
/// `_Gscan`, or-ed into the status while the GC scans the stack.
const G_SCAN: u32 = 0x1000;
/// Addresses below this are never heap pointers (`runtime.minLegalPointer`, 4096).
const MIN_POINTER: u64 = 4096;
/// Ranges per `process_vm_readv` (IOV_MAX is 1024).
const IOV_BATCH: usize = 1024;
/// Bytes per `process_vm_readv`, and the largest piece one object is read in.
const READ_CHUNK: usize = 4 << 20;
/// A page with no span.
const NO_SPAN: u32 = u32::MAX;
/// Heap objects at most this far apart are read in one range ([`Heap::read_objects`]).
const OBJECT_GAP: u64 = 512;
/// Heap metadata at most this far apart is read in one range ([`Heap::read_meta`]).
const META_GAP: u64 = 1024;

/// A hasher for addresses and page numbers (FxHash's multiply): the scan looks up a span
/// for every word it follows, and SipHash was a third of its CPU.
#[derive(Default, Clone, Copy)]
pub(crate) struct AddrHasher(u64);

const FX: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(FX);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

/// A table that grows a chunk at a time and never moves what it holds: the span tables of a
/// 1 GiB heap hold 131072 entries, and a vector doubling to hold them would hold both its old
/// and new copies for a moment, most of the pass's peak memory.
pub(super) struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

const CHUNK: usize = 4096;

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn push(&mut self, value: T) {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks[self.len / CHUNK].push(value);
        self.len += 1;
    }

    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }
}

/// A map keyed by address, hashed with [`AddrHasher`].
pub(crate) type AddrMap<V> = HashMap<u64, V, BuildHasherDefault<AddrHasher>>;
/// A set of addresses, hashed with [`AddrHasher`].
pub(crate) type AddrSet = HashSet<u64, BuildHasherDefault<AddrHasher>>;

/// Bounds on the work of one [`estimate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Distinct heap objects visited.
    pub max_objects: u64,
    /// Bytes read from the target: stacks, objects and heap metadata.
    pub max_bytes_read: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_objects: 1_000_000,
            max_bytes_read: 256 << 20,
        }
    }
}

/// The memory a group of goroutines pins (see the module header for how it is counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Retained {
    /// Stack memory the goroutines hold (allocated size, not the part in use).
    pub stack_bytes: u64,
    /// Heap bytes reachable from their stacks: the size-class size of each object, once.
    pub heap_bytes: u64,
    /// Distinct heap objects reachable from their stacks.
    pub heap_objects: u64,
    /// A bound of [`Limits`] was hit: the heap figures are a lower bound.
    pub truncated: bool,
}

/// Estimates the memory pinned by the goroutines whose g structs are at `g_addrs` in the
/// target. Objects reachable from several goroutines are counted once.
pub fn estimate(target: &Target, g_addrs: &[u64], limits: Limits) -> anyhow::Result<Retained> {
    let vars = runtime_vars(target)?;
    let mut heap = Heap::new(target, vars.mheap, limits);
    heap.stop_at(scheduler_structs(target, &vars)?);

    let mut out = Retained::default();
    let roots = heap.stacks(g_addrs, &mut out)?;
    heap.mark(roots);
    out.heap_bytes = heap.heap_bytes;
    out.heap_objects = heap.visited.len() as u64;
    out.truncated |= heap.truncated;
    Ok(out)
}

/// The runtime variables the scan starts from (`runtime.mheap_`, `allp`, `allm`), as
/// addresses in the target: from `.symtab`, or read off the runtime's code in a stripped
/// binary (see `tracee::globals`).
pub(super) fn runtime_vars(target: &Target) -> anyhow::Result<HeapGlobals> {
    let link = globals::locate_heap(&target.binary).map_err(|e| {
        anyhow!(
            "PID {} ({}): estimating the memory goroutines pin: {e}",
            target.process.pid(),
            target.process.exe_name()
        )
    })?;
    let bias = target.load_bias;
    Ok(HeapGlobals {
        mheap: link.mheap.wrapping_add(bias),
        allp: link.allp.wrapping_add(bias),
        allm: link.allm.wrapping_add(bias),
    })
}

/// At most this many m's are followed on `runtime.allm` (a program has one per OS thread it
/// ever started; Go's default limit is 10000, debug.SetMaxThreads).
const MAX_MS: usize = 100_000;

/// The scheduler's structures, which the scan neither counts nor enters: every g in
/// `runtime.allgs`, every p in `runtime.allp`, and every m on `runtime.allm` with its `g0`
/// and `gsignal`. They are heap objects, and each leads to all the others, and through
/// `p.wbBuf` (the write barrier's buffer of recently written pointers) to whatever the
/// program touched last: one stale pointer to an m or a p in a stack frame would count the
/// whole program.
fn scheduler_structs(target: &Target, vars: &HeapGlobals) -> anyhow::Result<HashSet<u64>> {
    let (gs, ms) = gs_and_ms(target, vars)?;
    let mut stops = gs;
    stops.extend(ms);
    stops.extend(pointer_slice(target, vars.allp, "runtime.allp", MAX_PS)?);
    Ok(stops)
}

/// Every g struct: those of `runtime.allgs` and each m's `g0` and `gsignal`.
pub(super) fn g_structs(target: &Target, vars: &HeapGlobals) -> anyhow::Result<HashSet<u64>> {
    Ok(gs_and_ms(target, vars)?.0)
}

/// Every g struct (allgs, each m's g0 and gsignal) and every m on `runtime.allm`.
fn gs_and_ms(target: &Target, vars: &HeapGlobals) -> anyhow::Result<(HashSet<u64>, HashSet<u64>)> {
    let mut gs: HashSet<u64> = all_gs(target)
        .context("reading runtime.allgs, whose g structs the scan must not enter")?
        .into_iter()
        .collect();
    let mut ms = HashSet::new();
    let p = &target.process;
    let m = &target.layout.m;
    let mut mp = p.read_u64(vars.allm)?;
    while mp != 0 && ms.len() < MAX_MS && ms.insert(mp) {
        for field in [m.g0, m.gsignal] {
            gs.insert(p.read_u64(mp + field).context("reading an m")?);
        }
        mp = p.read_u64(mp + m.alllink).context("reading an m")?;
    }
    gs.remove(&0);
    Ok((gs, ms))
}

/// What [`Heap::mark_at`] did.
pub(super) enum Marked {
    /// Marked the object at this slot, which was not marked.
    New(Slot),
    /// Nothing: not an allocated heap object, marked already, or a stop.
    Not,
    /// Its page is not looked up yet: [`Heap::resolve_spans`], then again.
    Unknown,
}

/// An allocated object slot, as [`Heap::slot`] finds it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    /// The span's index among those the heap read: the key of its mark bitmap.
    pub span: u64,
    pub index: u64,
    pub base: u64,
    pub size: u64,
    /// The object may hold pointers (its span is not noscan).
    pub scan: bool,
    /// Its span holds a stop or an object flagged by [`Heap::flag_spans`]: the caller looks
    /// closer; objects of other spans are none of those.
    pub special: bool,
}

/// Where a span's bits are in [`Bits`].
#[derive(Debug, Clone, Copy, Default)]
struct BitsAt {
    chunk: u32,
    at: u32,
    words: u32,
}

/// The bit arrays of many spans (allocBits, mark bits) packed in chunks: one allocation per
/// chunk rather than one per span, and none moved as more are added.
#[derive(Default)]
struct Bits {
    chunks: Vec<Vec<u64>>,
}

/// Words per chunk of [`Bits`] (a span of 8-byte objects needs 16).
const BITS_CHUNK: usize = 8192;

impl Bits {
    /// A zeroed array of `words` words.
    fn alloc(&mut self, words: usize) -> BitsAt {
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= words);
        if !fits {
            self.chunks.push(Vec::with_capacity(words.max(BITS_CHUNK)));
        }
        let chunk = self.chunks.len() - 1;
        let c = &mut self.chunks[chunk];
        let at = c.len();
        c.resize(at + words, 0);
        BitsAt {
            chunk: chunk as u32,
            at: at as u32,
            words: words as u32,
        }
    }

    fn words(&self, b: BitsAt) -> &[u64] {
        let (at, words) = (b.at as usize, b.words as usize);
        self.chunks
            .get(b.chunk as usize)
            .and_then(|c| c.get(at..at + words))
            .unwrap_or_default()
    }

    fn words_mut(&mut self, b: BitsAt) -> &mut [u64] {
        let (at, words) = (b.at as usize, b.words as usize);
        self.chunks
            .get_mut(b.chunk as usize)
            .and_then(|c| c.get_mut(at..at + words))
            .unwrap_or_default()
    }

    fn get(&self, b: BitsAt, i: u64) -> bool {
        self.words(b)
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Sets bit `i`; false when it was set already (or is out of the array).
    fn set(&mut self, b: BitsAt, i: u64) -> bool {
        match self.words_mut(b).get_mut((i / 64) as usize) {
            Some(w) if *w & (1 << (i % 64)) == 0 => {
                *w |= 1 << (i % 64);
                true
            }
            _ => false,
        }
    }
}

/// What the scan needs of one span.
#[derive(Debug, Clone)]
struct Span {
    start: u64,
    limit: u64,
    elemsize: u64,
    /// The runtime's `divMul`, `ceil(2^32 / elemsize)`: `(offset * div_mul) >> 32` is
    /// `offset / elemsize` for every offset in the span when `(limit - start) * elemsize
    /// <= 2^32` (the error, `offset * (div_mul * elemsize - 2^32) / 2^32`, stays under one
    /// object); 0 where that does not hold, and the slot is found by dividing.
    div_mul: u64,
    /// `spanclass & 1`: the objects hold no pointers.
    noscan: bool,
    /// Size class 0: one large object.
    large: bool,
    /// It holds a stop or a flagged object ([`Slot::special`]).
    special: bool,
    /// Object slots below this are allocated.
    free_index: u64,
    /// Where `allocBits` is in the target.
    alloc_bits_addr: u64,
    /// `allocBits`, one bit per object slot (small spans only), in [`Heap::bits`].
    alloc: BitsAt,
    /// The mark bits of the pass, one per object slot, in [`Heap::bits`].
    marks: BitsAt,
}

impl Span {
    fn new(start: u64, limit: u64, elemsize: u64, large: bool) -> Self {
        let exact = (limit - start)
            .checked_mul(elemsize)
            .is_some_and(|n| n <= 1 << 32)
            && elemsize <= u64::from(u32::MAX);
        Self {
            start,
            limit,
            elemsize,
            div_mul: if exact && !large {
                u64::from(u32::MAX / elemsize as u32) + 1
            } else {
                0
            },
            noscan: false,
            large,
            special: false,
            free_index: 0,
            alloc_bits_addr: 0,
            alloc: BitsAt::default(),
            marks: BitsAt::default(),
        }
    }

    /// Object slots in the span.
    fn objects(&self) -> u64 {
        if self.large {
            1
        } else {
            (self.limit - self.start) / self.elemsize
        }
    }

    /// The slot index and base of the allocated object holding `p`, if any; `bits` holds
    /// its allocBits.
    #[inline]
    fn object(&self, bits: &Bits, p: u64) -> Option<(u64, u64)> {
        if p < self.start || p >= self.limit || self.elemsize == 0 {
            return None;
        }
        if self.large {
            return Some((0, self.start));
        }
        let off = p - self.start;
        let index = if self.div_mul != 0 {
            (off * self.div_mul) >> 32
        } else {
            off / self.elemsize
        };
        let allocated = index < self.free_index || bits.get(self.alloc, index);
        allocated.then_some((index, self.start + index * self.elemsize))
    }
}

/// Object slots of a span at most: a span of a size class holds at most 1024 (one page of
/// 8-byte objects); one of more is a header read half-written.
const MAX_SLOTS: u64 = 1 << 16;
/// A page whose span is not looked up yet ([`Heap::heap_arenas`]).
const PAGE_UNKNOWN: u32 = u32::MAX - 1;
/// Arenas per block of [`Heap::arena_dir`].
const DIR_BLOCK: u64 = 1024;
/// [`Heap::arena_dir`]: an arena not looked up yet, and one that is not heap; other values
/// are 2 + the arena's index in [`Heap::heap_arenas`].
const ARENA_UNKNOWN: u32 = 0;
const ARENA_NOT_HEAP: u32 = 1;

/// Where the page of an address stands in the caches ([`Heap::page_span`]).
enum PageSpan {
    /// The index of its span in [`Heap::spans`], or [`NO_SPAN`].
    Span(u32),
    NotHeap,
    Unknown,
}

/// The target's heap as the scan sees it, with every lookup cached.
pub(super) struct Heap<'t> {
    target: &'t Target,
    limits: Limits,
    /// `mheap_.arenas` in the target.
    arenas: u64,
    /// log2(heapArenaBytes) and log2(pageSize).
    arena_shift: u32,
    page_shift: u32,
    /// Arena indexes are below this (`1 << (arenaL1Bits + arenaL2Bits)`).
    arena_count: u64,
    /// `arenaBaseOffset`, and `pagesPerArena - 1`: kept here, next to the tables, for the
    /// lookup of every word.
    base_offset: u64,
    page_mask: u64,
    /// L1 index -> the L2 array (0: none).
    l2: AddrMap<u64>,
    /// Arena index -> [`ARENA_UNKNOWN`], [`ARENA_NOT_HEAP`] or 2 + its index in
    /// `heap_arenas`: one lookup per word, no hashing. In blocks of [`DIR_BLOCK`] made as
    /// they are needed, a few KiB in all.
    arena_dir: Vec<Option<Box<[u32]>>>,
    /// The heap arenas looked up: the address of their heapArena, and for each of their
    /// pages the index of its span in `spans` ([`NO_SPAN`]: none; [`PAGE_UNKNOWN`]).
    heap_arenas: Vec<(u64, Box<[u32]>)>,
    /// Span address -> its index in `spans`.
    span_index: AddrMap<u32>,
    /// The spans read, None where one is not an in-use heap span. Held in a vector, and
    /// the pages map to their index: one lookup per word, and a few words per span (a 1 GiB
    /// heap has 131072 spans of 8 KiB).
    spans: Chunked<Option<Span>>,
    /// The spans' allocBits and mark bits.
    bits: Bits,
    /// The bases of the scheduler's objects: never counted or entered.
    stops: AddrSet,
    visited: AddrSet,
    heap_bytes: u64,
    pub(super) bytes_read: u64,
    pub(super) truncated: bool,
}

impl<'t> Heap<'t> {
    pub(super) fn new(target: &'t Target, mheap: u64, limits: Limits) -> Self {
        let a = &target.layout.arena;
        let arena_count = 1u64 << (a.l1_bits + a.l2_bits);
        Self {
            target,
            limits,
            arenas: mheap + target.layout.mheap.arenas,
            arena_shift: a.heap_arena_bytes.trailing_zeros(),
            page_shift: a.page_size.trailing_zeros(),
            arena_count,
            base_offset: a.base_offset,
            page_mask: a.pages_per_arena - 1,
            l2: AddrMap::default(),
            arena_dir: vec![None; arena_count.div_ceil(DIR_BLOCK) as usize],
            heap_arenas: Vec::new(),
            span_index: AddrMap::default(),
            spans: Chunked::default(),
            bits: Bits::default(),
            stops: AddrSet::default(),
            visited: AddrSet::default(),
            heap_bytes: 0,
            bytes_read: 0,
            truncated: false,
        }
    }

    /// Makes the objects holding `addrs` stops. An address is not always its object's base:
    /// from Go 1.22 an object of more than 512 bytes that holds pointers starts with an
    /// 8-byte malloc header, and a pointer to it points past that (runtime/mbitmap.go).
    pub(super) fn stop_at(&mut self, addrs: HashSet<u64>) {
        let mut addrs: Vec<u64> = addrs.into_iter().collect();
        addrs.sort_unstable();
        self.resolve_spans(&addrs);
        self.stops = addrs
            .iter()
            .filter_map(|&a| self.object_of(a).map(|(base, _, _)| base))
            .collect();
        self.flag_spans(&addrs);
    }

    /// Flags the spans of `addrs` ([`Slot::special`]), looking them up first.
    pub(super) fn flag_spans(&mut self, addrs: &[u64]) {
        let mut addrs = addrs.to_vec();
        addrs.sort_unstable();
        addrs.dedup();
        self.resolve_spans(&addrs);
        for &a in &addrs {
            if let PageSpan::Span(i) = self.page_span(a)
                && let Some(Some(span)) = self.spans.get_mut(i as usize)
            {
                span.special = true;
            }
        }
    }

    /// Counts the goroutines' stacks into `out` and returns the words of their live parts.
    fn stacks(&mut self, g_addrs: &[u64], out: &mut Retained) -> anyhow::Result<Vec<u64>> {
        let l = &self.target.layout.g;
        let size = l.size as usize;
        // (saved SP, saved PC or 0 when the stack is to be read whole, stack.hi)
        let mut stacks = Vec::new();
        for chunk in g_addrs.chunks(IOV_BATCH) {
            let reads: Vec<(u64, usize)> = chunk.iter().map(|&a| (a, size)).collect();
            let mut buf = vec![0u8; size * chunk.len()];
            self.target
                .process
                .read_many(&reads, &mut buf)
                .context("reading goroutine structs")?;
            for g in buf.chunks_exact(size) {
                let lo = u64_at(g, l.stack_lo);
                let hi = u64_at(g, l.stack_hi);
                let sp = u64_at(g, l.sched_sp);
                let pc = u64_at(g, l.sched_pc);
                let status = u32_at(g, l.atomicstatus) & !G_SCAN;
                if hi <= lo {
                    continue; // a dead g without a stack
                }
                out.stack_bytes += hi - lo;
                if status != G_RUNNING && pc != 0 && (lo..hi).contains(&sp) {
                    stacks.push((sp & !7, pc, hi));
                } else {
                    stacks.push((lo, 0, hi));
                }
            }
        }
        let ranges: Vec<(u64, u64)> = stacks.iter().map(|&(sp, _, hi)| (sp, hi - sp)).collect();
        let mut words = Vec::new();
        self.read_words(&ranges, &mut words);
        // Keep, of each stack, the words from its innermost frame outside the runtime.
        let mut roots = Vec::new();
        let mut at = 0;
        for &(sp, pc, hi) in &stacks {
            let len = ((hi - sp) / 8) as usize;
            let Some(stack) = words.get(at..at + len) else {
                break; // cut by the read budget
            };
            at += len;
            let from = if pc == 0 {
                sp
            } else {
                self.user_frames(stack, sp, pc)
            };
            let skip = ((from - sp) / 8) as usize;
            roots.extend_from_slice(&stack[skip.min(len)..]);
        }
        Ok(roots)
    }

    /// Where the frames of a stopped goroutine that are not the runtime's begin: the SP of
    /// its innermost frame outside package runtime (`runtime.asyncPreempt`, which holds the
    /// registers of the frame it interrupted, counts as outside). The runtime frames of a
    /// parked goroutine (gopark, chansend, selectgo, semacquire, ...) hold the scheduler's
    /// `m` and other runtime structures, which lead to every goroutine's data; what they
    /// hold of the goroutine's own data, its caller holds too. The SP of the outermost frame
    /// found when no frame is outside the runtime (a runtime goroutine, or a walk cut short).
    fn user_frames(&self, stack: &[u64], sp: u64, pc: u64) -> u64 {
        let bytes: Vec<u8> = stack.iter().flat_map(|w| w.to_le_bytes()).collect();
        let memory = StackMemory {
            base: sp,
            bytes: &bytes,
        };
        let binary = &self.target.binary;
        let frames = unwind::unwind(binary, &memory, sp, pc, self.target.load_bias);
        let table = binary.pclntab();
        let outside = frames.iter().find(|f| {
            table.find_func(f.lookup_pc).is_none_or(|func| {
                !func.name.starts_with("runtime.") || func.name == "runtime.asyncPreempt"
            })
        });
        outside.or(frames.last()).map_or(sp, |f| f.sp)
    }

    /// The transitive scan from `roots`, counting each allocated object once.
    fn mark(&mut self, mut candidates: Vec<u64>) {
        while !candidates.is_empty() && !self.truncated {
            candidates.retain(|&p| p >= MIN_POINTER);
            candidates.sort_unstable();
            candidates.dedup();
            self.resolve_spans(&candidates);
            let mut to_scan = Vec::new();
            for &p in &candidates {
                let Some((base, size, scan)) = self.object_of(p) else {
                    continue;
                };
                if self.stops.contains(&base) || !self.visited.insert(base) {
                    continue;
                }
                self.heap_bytes += size;
                if self.visited.len() as u64 >= self.limits.max_objects {
                    self.truncated = true;
                    break;
                }
                if scan {
                    to_scan.push((base, size));
                }
            }
            candidates.clear();
            self.read_words(&to_scan, &mut candidates);
        }
    }

    /// Where `p`'s page stands in the caches.
    #[inline]
    fn page_span(&self, p: u64) -> PageSpan {
        let ai = p.wrapping_sub(self.base_offset) >> self.arena_shift;
        if ai >= self.arena_count {
            return PageSpan::NotHeap;
        }
        match self.arena_entry(ai) {
            ARENA_UNKNOWN => PageSpan::Unknown,
            ARENA_NOT_HEAP => PageSpan::NotHeap,
            e => match self.heap_arenas[(e - 2) as usize].1[self.page_in_arena(p)] {
                PAGE_UNKNOWN => PageSpan::Unknown,
                index => PageSpan::Span(index),
            },
        }
    }

    #[inline]
    fn arena_entry(&self, ai: u64) -> u32 {
        match &self.arena_dir[(ai / DIR_BLOCK) as usize] {
            Some(block) => block[(ai % DIR_BLOCK) as usize],
            None => ARENA_UNKNOWN,
        }
    }

    fn set_arena_entry(&mut self, ai: u64, entry: u32) {
        let block = self.arena_dir[(ai / DIR_BLOCK) as usize]
            .get_or_insert_with(|| vec![ARENA_UNKNOWN; DIR_BLOCK as usize].into());
        block[(ai % DIR_BLOCK) as usize] = entry;
    }

    /// `p`'s page among its arena's (`pagesPerArena`, a power of two).
    #[inline]
    fn page_in_arena(&self, p: u64) -> usize {
        ((p >> self.page_shift) & self.page_mask) as usize
    }

    /// The allocated slot holding `p` in the span at `index`.
    #[inline]
    fn slot_in(&self, index: u32, p: u64) -> Option<Slot> {
        let span = self.spans.get(index as usize)?.as_ref()?;
        let (slot, base) = span.object(&self.bits, p)?;
        Some(Slot {
            span: u64::from(index),
            index: slot,
            base,
            size: span.elemsize,
            scan: !span.noscan,
            special: span.special,
        })
    }

    /// The allocated slot holding `p`, from the caches that [`Heap::resolve_spans`] filled:
    /// its span's address, slot index and slot count, for a mark bitmap per span.
    pub(super) fn slot(&self, p: u64) -> Option<Slot> {
        match self.page_span(p) {
            PageSpan::Span(index) => self.slot_in(index, p),
            PageSpan::NotHeap | PageSpan::Unknown => None,
        }
    }

    /// Sets the mark bit of the object at `s` (a slot of this heap); false when it was
    /// marked already or is a stop.
    #[inline]
    pub(super) fn set_mark(&mut self, s: &Slot) -> bool {
        if s.special && self.is_stop(s.base) {
            return false;
        }
        let Some(Some(span)) = self.spans.get(s.span as usize) else {
            return false;
        };
        let marks = span.marks;
        self.bits.set(marks, s.index)
    }

    /// Whether the object at `s` (a slot of this heap) is marked.
    pub(super) fn is_marked(&self, s: &Slot) -> bool {
        self.spans
            .get(s.span as usize)
            .and_then(Option::as_ref)
            .is_some_and(|span| self.bits.get(span.marks, s.index))
    }

    /// [`Heap::slot`] and [`Heap::set_mark`] in one: marks the allocated object holding
    /// `p` unless it is marked or a stop.
    #[inline]
    pub(super) fn mark_at(&mut self, p: u64) -> Marked {
        let index = match self.page_span(p) {
            PageSpan::Span(index) => index,
            PageSpan::NotHeap => return Marked::Not,
            PageSpan::Unknown => return Marked::Unknown,
        };
        let Some(Some(span)) = self.spans.get(index as usize) else {
            return Marked::Not;
        };
        let Some((slot, base)) = span.object(&self.bits, p) else {
            return Marked::Not;
        };
        if span.special && self.stops.contains(&base) {
            return Marked::Not;
        }
        let s = Slot {
            span: u64::from(index),
            index: slot,
            base,
            size: span.elemsize,
            scan: !span.noscan,
            special: span.special,
        };
        let marks = span.marks;
        if self.bits.set(marks, slot) {
            Marked::New(s)
        } else {
            Marked::Not
        }
    }

    /// The first address of `p`'s page.
    pub(super) fn page_base(&self, p: u64) -> u64 {
        p & !(self.target.layout.arena.page_size - 1)
    }

    /// True for the base of an object the scan must not enter ([`Heap::stop_at`]).
    pub(super) fn is_stop(&self, base: u64) -> bool {
        self.stops.contains(&base)
    }

    /// The object holding `p` (base, size, holds pointers), from the caches that
    /// [`Heap::resolve_spans`] filled.
    fn object_of(&self, p: u64) -> Option<(u64, u64, bool)> {
        self.slot(p).map(|s| (s.base, s.size, s.scan))
    }

    /// Fills the caches from arena to span for every page of `pointers` (in address order)
    /// not yet looked up, a level at a time so that each level is a few batched reads.
    pub(super) fn resolve_spans(&mut self, pointers: &[u64]) {
        let target = self.target;
        let a = &target.layout.arena;
        let l2_mask = (1u64 << a.l2_bits) - 1;
        let base_offset = a.base_offset;
        let (arena_shift, arena_count) = (self.arena_shift, self.arena_count);
        let arena_index = |p: u64| {
            let ai = p.wrapping_sub(base_offset) >> arena_shift;
            (ai < arena_count).then_some(ai)
        };

        // The arenas not looked up yet.
        let mut ais: Vec<u64> = pointers
            .iter()
            .filter_map(|&p| arena_index(p))
            .filter(|&ai| self.arena_entry(ai) == ARENA_UNKNOWN)
            .collect();
        ais.dedup();
        if !ais.is_empty() {
            // L1: mheap_.arenas[l1], the L2 arrays.
            let mut l1s: Vec<u64> = ais
                .iter()
                .map(|ai| ai >> a.l2_bits)
                .filter(|l1| !self.l2.contains_key(l1))
                .collect();
            l1s.dedup();
            let arenas = self.arenas;
            let values = self.read_pointers(l1s.iter().map(|l1| arenas + l1 * 8));
            self.l2.extend(l1s.into_iter().zip(values));
            // L2: the heapArena of each arena index. An arena whose L2 array is nil (or
            // could not be read) is no heap.
            let (no_l2, with_l2): (Vec<u64>, Vec<u64>) = ais
                .into_iter()
                .partition(|ai| self.l2.get(&(ai >> a.l2_bits)).is_none_or(|&l2| l2 == 0));
            for ai in no_l2 {
                self.set_arena_entry(ai, ARENA_NOT_HEAP);
            }
            let addrs: Vec<u64> = with_l2
                .iter()
                .map(|ai| self.l2[&(ai >> a.l2_bits)] + (ai & l2_mask) * 8)
                .collect();
            let values = self.read_pointers(addrs.into_iter());
            // An arena cut by the read budget stays unknown.
            for (ai, ha) in with_l2
                .into_iter()
                .zip(values.into_iter().map(Some).chain(std::iter::repeat(None)))
            {
                match ha {
                    Some(0) => self.set_arena_entry(ai, ARENA_NOT_HEAP),
                    Some(ha) => {
                        let pages = vec![PAGE_UNKNOWN; a.pages_per_arena as usize].into();
                        self.heap_arenas.push((ha, pages));
                        let entry = self.heap_arenas.len() as u32 + 1;
                        self.set_arena_entry(ai, entry);
                    }
                    None => {}
                }
            }
        }

        // heapArena.spans[page % pagesPerArena]: (heap arena, page in it).
        let mut pages: Vec<(u32, usize)> = pointers
            .iter()
            .filter_map(|&p| {
                let e = self.arena_entry(arena_index(p)?);
                let page = self.page_in_arena(p);
                (e >= 2 && self.heap_arenas[(e - 2) as usize].1[page] == PAGE_UNKNOWN)
                    .then(|| (e - 2, page))
            })
            .collect();
        pages.dedup();
        let spans_off = target.layout.heap_arena.spans;
        let ranges: Vec<(u64, usize)> = pages
            .iter()
            .map(|&(h, page)| {
                (
                    self.heap_arenas[h as usize].0 + spans_off + page as u64 * 8,
                    8,
                )
            })
            .collect();
        let values = words_of(&self.read_meta(&ranges));
        self.read_spans(&values);
        // A page whose span was not read (the read budget) stays unknown.
        for ((h, page), s) in pages.into_iter().zip(values) {
            let index = match s {
                0 => Some(NO_SPAN),
                s => self.span_index.get(&s).copied(),
            };
            if let Some(index) = index {
                self.heap_arenas[h as usize].1[page] = index;
            }
        }
    }

    /// Reads the mspans at `addrs` not read yet, then the allocBits of the small ones, and
    /// adds them to the span table.
    fn read_spans(&mut self, addrs: &[u64]) {
        let mut spans: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|&s| s != 0 && !self.span_index.contains_key(&s))
            .collect();
        spans.sort_unstable();
        spans.dedup();
        let size = self.target.layout.mspan.size as usize;
        let ranges: Vec<(u64, usize)> = spans.iter().map(|&s| (s, size)).collect();
        let headers = self.read_meta(&ranges);
        let mut parsed: Vec<(u64, Option<Span>)> = spans
            .iter()
            .zip(headers.chunks_exact(size))
            .map(|(&addr, b)| (addr, self.parse_span(b)))
            .collect();
        let ranges: Vec<(u64, usize)> = parsed
            .iter()
            .filter_map(|(_, s)| s.as_ref())
            .filter(|s| !s.large)
            .map(|s| (s.alloc_bits_addr, s.objects().div_ceil(8) as usize))
            .collect();
        let alloc_bits = self.read_meta(&ranges);
        let mut off = 0;
        for span in parsed.iter_mut().filter_map(|(_, s)| s.as_mut()) {
            span.marks = self.bits.alloc(span.objects().div_ceil(64) as usize);
            if span.large {
                continue;
            }
            let len = span.objects().div_ceil(8) as usize;
            span.alloc = self.bits.alloc(len.div_ceil(8));
            // Cut by the read budget: no allocBits, every slot past free_index is free.
            let bytes = alloc_bits.get(off..off + len).unwrap_or_default();
            let words = self.bits.words_mut(span.alloc);
            for (w, c) in words.iter_mut().zip(bytes.chunks(8)) {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                *w = u64::from_le_bytes(b);
            }
            off += len;
        }
        for (addr, span) in parsed {
            self.span_index.insert(addr, self.spans.len() as u32);
            self.spans.push(span);
        }
    }

    /// An mspan header parsed, if it is an in-use heap span of plausible shape.
    fn parse_span(&self, b: &[u8]) -> Option<Span> {
        let m = &self.target.layout.mspan;
        let a = &self.target.layout.arena;
        if b.get(m.state as usize).copied()? != a.span_in_use {
            return None;
        }
        let start = u64_at(b, m.start_addr);
        let npages = u64_at(b, m.npages);
        let limit = u64_at(b, m.limit);
        let elemsize = u64_at(b, m.elemsize);
        let end = start.checked_add(npages.checked_mul(a.page_size)?)?;
        if npages == 0 || limit <= start || limit > end || elemsize == 0 {
            return None;
        }
        let spanclass = b.get(m.spanclass as usize).copied()?;
        let free_index = match m.free_index_for_scan_width {
            2 => u64::from(u16_at(b, m.free_index_for_scan)),
            _ => u64_at(b, m.free_index_for_scan),
        };
        let span = Span {
            noscan: spanclass & 1 == 1,
            free_index,
            alloc_bits_addr: u64_at(b, m.alloc_bits),
            ..Span::new(start, limit, elemsize, spanclass >> 1 == 0)
        };
        // A header read while the runtime rewrote it: no size class has more slots, and
        // its bitmaps would be as large as it says.
        (span.objects() <= MAX_SLOTS).then_some(span)
    }

    /// Reads 8-byte pointers at `addrs`, 0 for any that cannot be read.
    fn read_pointers(&mut self, addrs: impl Iterator<Item = u64>) -> Vec<u64> {
        let ranges: Vec<(u64, usize)> = addrs.map(|a| (a, 8)).collect();
        words_of(&self.read_ranges(&ranges))
    }

    /// Like [`Heap::read_ranges`], for heap metadata (span pointers, mspans, allocBits):
    /// ranges that lie close in the target are read as one, since the runtime allocates
    /// them next to each other (a heapArena's span pointers by page, mspans from a fixalloc
    /// chunk, allocBits from a gcBits arena).
    fn read_meta(&mut self, ranges: &[(u64, usize)]) -> Vec<u8> {
        let n = self.within_budget(ranges);
        let ranges = &ranges[..n];
        let mut out = vec![0u8; ranges.iter().map(|r| r.1).sum()];
        // A range that cannot be read reads as zeros, and so does all when the target has
        // gone.
        if batch::read_coalesced(&self.target.process, ranges, &mut out, META_GAP).is_err() {
            out.fill(0);
        }
        out
    }

    /// How many of `ranges` fit the read budget; counts them read, and sets `truncated`
    /// when some do not fit.
    fn within_budget(&mut self, ranges: &[(u64, usize)]) -> usize {
        for (i, &(_, len)) in ranges.iter().enumerate() {
            if self.bytes_read + len as u64 > self.limits.max_bytes_read {
                self.truncated = true;
                return i;
            }
            self.bytes_read += len as u64;
        }
        ranges.len()
    }

    /// The aligned words of `ranges` appended to `words`, within the read budget.
    pub(super) fn read_words(&mut self, ranges: &[(u64, u64)], words: &mut Vec<u64>) {
        let mut pieces = Vec::new();
        for &(addr, len) in ranges {
            let mut off = 0;
            while off < len {
                let n = (len - off).min(READ_CHUNK as u64);
                pieces.push((addr + off, n as usize));
                off += n;
            }
        }
        let bytes = self.read_ranges(&pieces);
        words.extend(
            bytes
                .as_chunks::<8>()
                .0
                .iter()
                .map(|c| u64::from_le_bytes(*c)),
        );
    }

    /// Reads the first of `objects` (disjoint heap objects, base and size, in address
    /// order) into `bytes`, as many as fit in `max` bytes (at least one), and says in
    /// `places` where each object's bytes begin there; returns how many objects it read
    /// and how many bytes: an object that ends past them was cut by the read budget.
    /// Objects less than [`OBJECT_GAP`] bytes apart are read as one range, the bytes
    /// between them read too: reading a few more bytes of a page costs less than an iovec
    /// of its own, which the kernel pins the page for. `bytes` is only grown, never cleared.
    pub(super) fn read_objects(
        &mut self,
        objects: &[(u64, u64)],
        max: u64,
        places: &mut Vec<u64>,
        bytes: &mut Vec<u8>,
    ) -> (usize, usize) {
        let mut ranges: Vec<(u64, usize)> = Vec::new();
        places.clear();
        let mut end = 0u64;
        for &(base, size) in objects {
            if let Some((start, len)) = ranges.last_mut() {
                let last_end = *start + *len as u64;
                let merge = base >= last_end
                    && base - last_end <= OBJECT_GAP
                    && base + size - *start <= READ_CHUNK as u64;
                let grow = if merge { base + size - last_end } else { size };
                if end + grow > max {
                    break;
                }
                if merge {
                    *len += grow as usize;
                    places.push(end + (base - last_end));
                    end += grow;
                    continue;
                }
            }
            places.push(end);
            let mut off = 0;
            while off < size {
                let n = (size - off).min(READ_CHUNK as u64);
                ranges.push((base + off, n as usize));
                off += n;
            }
            end += size;
        }
        (places.len(), self.read_ranges_into(&ranges, bytes))
    }

    /// The bytes of `ranges`, concatenated, in batched reads; a range that cannot be read
    /// reads as zeros, and ranges past the byte budget are left out (and set `truncated`).
    fn read_ranges(&mut self, ranges: &[(u64, usize)]) -> Vec<u8> {
        let mut out = Vec::new();
        let n = self.read_ranges_into(ranges, &mut out);
        out.truncate(n);
        out
    }

    /// [`Heap::read_ranges`] into the first bytes of `out`, grown as needed but not
    /// cleared (every byte read is written); returns how many bytes were read.
    fn read_ranges_into(&mut self, ranges: &[(u64, usize)], out: &mut Vec<u8>) -> usize {
        let n = self.within_budget(ranges);
        let ranges = &ranges[..n];
        let total: usize = ranges.iter().map(|r| r.1).sum();
        if out.len() < total {
            out.resize(total, 0);
        }
        // A range that cannot be read (freed and unmapped meanwhile, or garbage) reads as
        // zeros, and so does all when the target has gone.
        if batch::read_ranges(&self.target.process, ranges, &mut out[..total]).is_err() {
            out[..total].fill(0);
        }
        total
    }
}

/// Little-endian 8-byte words of `bytes`.
fn words_of(bytes: &[u8]) -> Vec<u64> {
    bytes
        .as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_le_bytes(*c))
        .collect()
}

fn u16_at(b: &[u8], off: u64) -> u16 {
    let o = off as usize;
    b.get(o..o + 2)
        .map_or(0, |s| u16::from_le_bytes(s.try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One 8 KiB page of 64-byte objects (128 slots), with `alloc_bits` in `bits`.
    fn small(bits: &mut Bits, free_index: u64, alloc_bits: &[u8]) -> Span {
        let mut span = Span::new(0xc000_010000, 0xc000_012000, 64, false);
        span.free_index = free_index;
        span.alloc = bits.alloc(2);
        for (i, b) in alloc_bits.iter().enumerate() {
            bits.words_mut(span.alloc)[i / 8] |= u64::from(*b) << (8 * (i % 8));
        }
        span
    }

    #[test]
    fn a_pointer_anywhere_in_an_allocated_slot_is_its_object() {
        let mut bits = Bits::default();
        let span = small(&mut bits, 2, &[0, 0b0000_0010]);
        assert_eq!(span.objects(), 128);
        let base = |p| span.object(&bits, p).map(|o| o.1);
        // Below freeIndexForScan: allocated whatever allocBits says.
        assert_eq!(span.object(&bits, 0xc000_010000), Some((0, 0xc000_010000)));
        assert_eq!(span.object(&bits, 0xc000_010047), Some((1, 0xc000_010040)));
        // Slot 2 is past the free index and its bit is clear: free.
        assert_eq!(base(0xc000_010080), None);
        // Slot 9 (byte 1, bit 1) is set in allocBits.
        assert_eq!(span.object(&bits, 0xc000_010248), Some((9, 0xc000_010240)));
        // Outside [start, limit).
        assert_eq!(base(0xc000_00fff8), None);
        assert_eq!(base(0xc000_012000), None);
        // allocBits that could not be read count as free.
        let mut bits = Bits::default();
        let unread = small(&mut bits, 0, &[]);
        assert_eq!(unread.object(&bits, 0xc000_010000), None);
    }

    #[test]
    fn a_large_span_is_one_object() {
        let span = Span::new(0xc000_400000, 0xc000_440000, 256 << 10, true);
        let bits = Bits::default();
        assert_eq!(span.objects(), 1);
        assert_eq!(span.object(&bits, 0xc000_43ffff), Some((0, 0xc000_400000)));
        assert_eq!(span.object(&bits, 0xc000_440000), None);
    }

    #[test]
    fn slots_found_by_multiplying_are_those_found_by_dividing() {
        // Every object size in 8-byte steps up to 32 KiB, in spans of 1 to 10 pages: where
        // the span takes the runtime's divMul, the slot of the last byte before each
        // object and of each object's first byte is the quotient (the product is monotonic
        // in the offset, so then every offset's is).
        let mut multiplied = 0;
        for elemsize in (8..=32768u64).step_by(8) {
            for pages in 1..=10u64 {
                let start = 0xc000_000000;
                let limit = start + pages * 8192 / elemsize * elemsize;
                if limit == start {
                    continue;
                }
                let mut span = Span::new(start, limit, elemsize, false);
                if span.div_mul == 0 {
                    continue;
                }
                multiplied += 1;
                span.free_index = u64::MAX;
                let bits = Bits::default();
                for k in 0..span.objects() {
                    for off in [k * elemsize, (k * elemsize).max(1) - 1] {
                        let want = (off / elemsize, start + off / elemsize * elemsize);
                        assert_eq!(
                            span.object(&bits, start + off),
                            Some(want),
                            "{elemsize} {pages}"
                        );
                    }
                }
                let last = limit - 1;
                assert_eq!(
                    span.object(&bits, last).map(|o| o.0),
                    Some(span.objects() - 1)
                );
            }
        }
        assert!(multiplied > 30_000, "{multiplied}");
        // Too large a span for the product, or too large an object: divided.
        assert_eq!(Span::new(0, 1 << 30, 8, false).div_mul, 0);
        let odd = Span::new(0x1000, 0x1001, 1 << 32, false);
        assert_eq!(
            (odd.div_mul, odd.object(&Bits::default(), 0x1000)),
            (0, None)
        );
    }

    #[test]
    fn bits_of_many_spans_share_chunks_and_keep_apart() {
        let mut bits = Bits::default();
        let a = bits.alloc(3);
        let b = bits.alloc(BITS_CHUNK);
        let c = bits.alloc(2);
        assert!(bits.set(a, 191));
        assert!(!bits.set(a, 191));
        assert!(!bits.set(a, 192), "past the array");
        assert!(bits.set(c, 0));
        assert!(bits.get(a, 191) && bits.get(c, 0));
        assert!(!bits.get(b, 0) && !bits.get(b, 191));
        assert_eq!((a.chunk, b.chunk), (0, 1));
    }
}
