//! One reachability pass over the target's heap, read-only: which goroutines blocked on a
//! channel or a sync primitive nothing live can reach, the question Go's own detector asks
//! during a GC (Go 1.27 `runtime/mgc.go`: `findGoroutineLeaks`,
//! `findMaybeRunnableGoroutines`, `(*g).isMaybeRunnable`, `setSyncObjectsUntraceable`).
//!
//! Rules, as Go's of 1.27 and applied to every version 1.21-1.27:
//! - A goroutine is a candidate when it waits (`_Gwaiting`, or `_Gleaked` once Go's own
//!   detector has run) in "chan send", "chan receive" or "select" (it waits on the channels
//!   of its sudogs, `g.waiting` linked by `waitlink`, field `c`), in "sync.Cond.Wait",
//!   "sync.Mutex.Lock", "sync.RWMutex.RLock", "sync.RWMutex.Lock" or "sync.WaitGroup.Wait"
//!   (it waits on the object at `elem` of its first sudog), or on a nil channel or in a
//!   `select {}` (it can never run). Every other goroutine (running, runnable, in a syscall,
//!   IO wait, sleep, "semacquire", timers, GC workers, ...) is a root: its stack is scanned.
//! - Before Go 1.26 a goroutine blocked in package sync has no `g.waiting`: its sudog is only
//!   in `semtable` (Mutex, RWMutex, WaitGroup: keyed by the semaphore's address, `elem`) or
//!   on the Cond's `notifyList` (`head`, `next`; `elem` unset), as Go 1.21-1.25
//!   `runtime/sema.go` keeps them. The pass finds it where the waiter itself keeps it: in
//!   the frame of `runtime.semacquire1` or `runtime.notifyListWait`, which hold the sudog
//!   across `gopark` (no register survives a call in Go's ABI, so it is in a stack slot), the
//!   one heap object of the frame whose `sudog.g` is the waiter. A semaphore waiter then waits
//!   on `elem`; a Cond waiter is live when its sudog is marked, which only the Cond's list
//!   leads to. WaitGroup.Wait parks as "semacquire" before Go 1.24: such a waiter counts as a
//!   WaitGroup's when a frame of `sync.(*WaitGroup).Wait` is on its stack. A waiter whose
//!   sudog is not found, or not found once, is a root.
//! - Roots: the program's data and bss (`moduledata.data..edata`, `bss..ebss`), the words
//!   the GC's pointer bitmaps mark, or every word where they cannot be read
//!   ([`super::data_roots`]); the finalizers, weak handles and cleanups the GC scans
//!   from mspan specials (`census::specials`); and the stack of each root goroutine, runtime
//!   frames included: frame by frame by the compiler's stack maps, the live pointer slots
//!   only, as Go's GC scans a stopped goroutine, or every word where a frame cannot be
//!   decoded (the whole of `g.stack` for a running one; [`super::stackmaps`]).
//! - Marking follows every word of every reached object that may hold pointers (not noscan),
//!   with one mark bit per object slot in a bitmap per span. The g, m and p structs are
//!   followed as Go follows them (a g's stack is not a heap object, so a g leads to no
//!   stack; a p's write barrier buffer, `uintptr`s, leads nowhere); the candidates' sudogs
//!   are not entered, as Go makes their `c` and `elem` untraceable: through them every
//!   waiter would reach what it waits on.
//! - A candidate becomes live when what it waits on is marked or is not a heap object (a
//!   global, a stack slot, or anything the pass could not resolve); its stack is then
//!   scanned. Repeated to a fixed point; the candidates left are unreachable.
//!
//! Conservative scanning (words that only look like pointers, in heap objects and in the
//! stack frames that cannot be scanned by their maps) and
//! read errors (an object read as zeros is not followed, but a span that cannot be read
//! makes what it holds "not in heap", hence live) err toward reachable. What it cannot see:
//! a pointer held only in a running goroutine's registers, or one that moves while the pass
//! reads. That is why one pass proves nothing: [`crate::detect::proof`] asks for two.
//!
//! A pass is bounded ([`PassLimits`]); one that hits a bound says so in [`Pass::bounded`]
//! and its result must not be used.
//!
//! After the fixed point, what each unreachable goroutine alone keeps from being collected
//! ([`Pass::holds`]): the mark goes on from their stacks, and every object it newly marks
//! is reachable from them and from no root or live goroutine, so it is what the heap would
//! lose if they were gone. Their stacks are read in one batch and marked together, each
//! word tagged with the goroutine whose stack it came from; an object reached by several of
//! them in the same wave goes to the one of lowest goid, one reached in an earlier wave to
//! the goroutine that reached it first. Each object is counted once, so a group's sum is
//! exact whatever its goroutines share; an object two groups share counts in one of them.
//! Under the same [`PassLimits`]: a bound hit there leaves no figure
//! ([`Pass::holds_bounded`]) and does not touch the proof.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    data_roots::{self, GlobalScan},
    goroutines::{MAX_PS, RawG, all_gs, pointer_slice, read_gs, u64_at},
    retained::{self, AddrSet, Heap, Marked, Slot, runtime_vars},
    specials,
    stackmaps::{StackMode, StackScan, Stacks},
    unwind::{self, StackMemory},
};
use crate::tracee::{Target, batch};

/// `_Gscan`, or-ed into the status while the GC scans the stack.
const G_SCAN: u32 = 0x1000;
const G_IDLE: u32 = 0;
const G_WAITING: u32 = 4;
const G_DEAD: u32 = 6;
/// `_Gleaked` (Go 1.26+): a goroutine Go's own detector found leaked; still parked.
const G_LEAKED: u32 = 10;
/// Addresses below this are never heap pointers (`runtime.minLegalPointer`).
const MIN_POINTER: u64 = 4096;
/// Bytes of a level's objects [`Marker::mark`] reads at a time ([`Heap::read_objects`]).
const LEVEL_PART: u64 = 4 << 20;
/// A select has at most 65536 cases; stop following a wait list well before.
const MAX_SUDOGS: usize = 1 << 16;

/// What a waiting goroutine waits on, by its wait reason (Go 1.27 `isMaybeRunnable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitClass {
    /// A root: not blocked on a concurrency primitive the pass can follow.
    Root,
    /// A channel operation or a select with cases: live if any of its channels is.
    Chan,
    /// A sync primitive: live if the object at its first sudog's `elem` is.
    Sync,
    /// A nil channel or `select {}`: never runnable.
    Never,
    /// "semacquire": a root (Go 1.27 `isSyncWait` leaves it out), except WaitGroup.Wait of
    /// Go 1.21-1.23, which parks with this reason and is a sync wait.
    Semacquire,
}

/// Whether a goroutine in wait `reason` is one a pass may find unreachable: blocked on a
/// channel or sync primitive rather than a root.
pub fn may_prove(reason: &str) -> bool {
    wait_class(reason) != WaitClass::Root
}

fn wait_class(reason: &str) -> WaitClass {
    match reason {
        "chan send" | "chan receive" | "select" => WaitClass::Chan,
        "sync.Cond.Wait"
        | "sync.Mutex.Lock"
        | "sync.RWMutex.RLock"
        | "sync.RWMutex.Lock"
        | "sync.WaitGroup.Wait" => WaitClass::Sync,
        "chan send (nil chan)" | "chan receive (nil chan)" | "select (no cases)" => {
            WaitClass::Never
        }
        "semacquire" => WaitClass::Semacquire,
        _ => WaitClass::Root,
    }
}

/// Bounds on one pass; a pass that reaches one proves nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassLimits {
    /// Distinct heap objects marked.
    pub max_objects: u64,
    /// Bytes read from the target.
    pub max_bytes_read: u64,
    /// Wall time of the pass.
    pub max_time: Duration,
    /// Whether to measure what the unreachable goroutines alone hold ([`Pass::holds`]) after
    /// the fixed point: a proof needs it of its second pass only.
    pub holds: bool,
}

impl Default for PassLimits {
    fn default() -> Self {
        Self {
            max_objects: 50_000_000,
            max_bytes_read: 8 << 30,
            max_time: Duration::from_secs(20),
            holds: true,
        }
    }
}

/// A blocked goroutine as one pass saw it: the fields that must not change for two passes
/// to speak of the same wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct BlockedG {
    pub goid: u64,
    #[serde(skip)]
    pub g_addr: u64,
    pub wait_reason: u8,
    /// `g.waitsince` (0 until a GC of the target has seen it blocked).
    pub wait_since: i64,
    #[serde(skip)]
    pub sched_sp: u64,
    #[serde(skip)]
    pub sched_pc: u64,
    /// `g.waiting`: the first sudog.
    #[serde(skip)]
    pub waiting: u64,
}

impl BlockedG {
    fn of(g: &RawG) -> Self {
        Self {
            goid: g.goid,
            g_addr: g.addr,
            wait_reason: g.waitreason,
            wait_since: g.waitsince,
            sched_sp: g.sched_sp,
            sched_pc: g.sched_pc,
            waiting: g.waiting,
        }
    }

    /// Whether `later`, read after `self`, is the same wait. Every field must be equal but
    /// the wait start: a GC of the target fills in a waiting g's `waitsince` the first time
    /// it sees the g blocked (0 becomes the cycle's start), so 0 then a time is one wait; a
    /// g that runs again has it reset to 0, so a time then 0, or two different times, is not.
    pub fn same_wait(&self, later: &BlockedG) -> bool {
        let since = self.wait_since == later.wait_since || self.wait_since == 0;
        since
            && Self {
                wait_since: later.wait_since,
                ..*self
            } == *later
    }
}

/// The goroutines of `before`, re-read: each as read now where it is in the same wait
/// ([`BlockedG::same_wait`]), or None where it is not any more (moved, woken, exited, or
/// could not be read).
pub fn still_blocked(target: &Target, before: &[BlockedG]) -> Vec<Option<BlockedG>> {
    let addrs: Vec<u64> = before.iter().map(|b| b.g_addr).collect();
    let Ok(now) = read_gs(target, &addrs) else {
        return vec![None; before.len()];
    };
    before
        .iter()
        .zip(now)
        .map(|(b, g)| {
            let status = g.status & !G_SCAN;
            let now = BlockedG::of(&g);
            let same = (status == G_WAITING || status == G_LEAKED) && b.same_wait(&now);
            same.then_some(now)
        })
        .collect()
}

/// What one pass found, and what it cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pass {
    /// Blocked goroutines that nothing live reaches.
    pub unreachable: Vec<BlockedG>,
    /// Goroutines blocked on a channel or sync primitive (the candidates).
    pub candidates: usize,
    /// Their goids: the goroutines this pass could have found unreachable.
    #[serde(skip)]
    pub examined: Vec<u64>,
    /// Of those, the ones that became live because what they wait on was marked.
    pub revived: usize,
    pub goroutines: usize,
    pub objects_marked: u64,
    pub bytes_marked: u64,
    pub bytes_read: u64,
    #[serde(serialize_with = "millis")]
    pub elapsed: Duration,
    /// Why the pass stopped before its fixed point ("objects", "bytes read", "time"); such a
    /// pass proves nothing.
    pub bounded: Option<&'static str>,
    /// How data and bss were scanned: "gc bitmaps" or "conservative".
    pub roots: GlobalScan,
    /// Why they were scanned conservatively, when they were.
    pub conservative_why: Option<String>,
    /// How goroutine stacks were scanned: by the compiler's stack maps, frame by frame, or
    /// conservatively ([`super::stackmaps`]).
    pub stacks: StackScan,
    /// What each unreachable goroutine alone keeps from being collected, by goid (see the
    /// module header); empty when the pass was bounded.
    #[serde(skip)]
    pub holds: HashMap<u64, Holds>,
    /// Why there is no [`Pass::holds`]: the mark from the unreachable stacks stopped at a
    /// bound ("objects", "bytes read", "time").
    pub holds_bounded: Option<&'static str>,
}

/// What one unreachable goroutine alone keeps from being collected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Holds {
    /// Its stack: `g.stack.hi - g.stack.lo`.
    pub stack_bytes: u64,
    /// Heap objects reachable from its stack and from no root or live goroutine, at their
    /// size-class size, each counted once (to one goroutine).
    pub heap_bytes: u64,
    pub heap_objects: u64,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// A blocked candidate and what it waits on.
struct Candidate {
    g: RawG,
    class: WaitClass,
    /// Channels (Chan) or the sync object (Sync) it waits on.
    on: Vec<u64>,
    live: bool,
}

/// The marking state of one pass.
struct Marker<'t> {
    heap: Heap<'t>,
    limits: PassLimits,
    started: Instant,
    objects: u64,
    bytes: u64,
    bounded: Option<&'static str>,
    /// Every g struct (allgs, each m's g0 and gsignal) and the word offsets in it that are
    /// stack addresses, not pointers: `stack.lo`, `stack.hi`, `sched.sp`, `sched.bp`. Go's
    /// precise scan does not follow them, and the pass must not either: `stack.hi` is one
    /// past the stack's end, often the address of the heap object on the next page.
    g_structs: AddrSet,
    stack_words: [u64; 4],
    /// Every p struct (`runtime.allp`) and the byte ranges in it of `uintptr`s Go does not
    /// trace: `p.wbBuf`, the write barrier's buffer, stale pointers to whatever the program
    /// wrote last (through it a leaked goroutine's channel or buffers would be live), and
    /// `p.pcache`, whose `base` is the address of a page, so of the object at its start.
    /// The spans of g and p structs are flagged ([`Heap::flag_spans`]): a level of the
    /// mark that reaches none of those spans has none of these objects to look for.
    p_structs: AddrSet,
    p_untraced: [(u64, u64); 2],
}

impl Marker<'_> {
    fn is_bounded(&mut self) -> bool {
        if self.bounded.is_none() {
            if self.heap.truncated {
                self.bounded = Some("bytes read");
            } else if self.objects >= self.limits.max_objects {
                self.bounded = Some("objects");
            } else if self.started.elapsed() >= self.limits.max_time {
                self.bounded = Some("time");
            }
        }
        self.bounded.is_some()
    }

    /// Marks what `words` point at, transitively, a level at a time: the objects a level
    /// reaches are read in address order (neighbours in one range) and their words looked
    /// up where they were read. A word whose page the heap caches is looked up at once; the
    /// others are resolved together, by page, at the end of their level.
    fn mark(&mut self, words: Vec<u64>) {
        if self.is_bounded() {
            return;
        }
        let mut level = Level::default();
        for &p in &words {
            self.visit(p, &mut level);
        }
        drop(words);
        let (mut objects, mut places, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            self.resolve_unknown(&mut level);
            if level.to_scan.is_empty() {
                break;
            }
            // In address order, for reads of neighbours together. A stable sort: a level
            // often comes in a few ascending runs (the order of the level before), which it
            // merges in linear time.
            level.to_scan.sort_by_key(|o: &(u64, u64)| o.0);
            std::mem::swap(&mut objects, &mut level.to_scan);
            let special = std::mem::take(&mut level.special);
            // Read and scanned a part at a time: what is held in memory is a part's bytes,
            // not the level's.
            let mut rest = &objects[..];
            while !rest.is_empty() {
                let (n, read) = self
                    .heap
                    .read_objects(rest, LEVEL_PART, &mut places, &mut bytes);
                let (part, next) = rest.split_at(n);
                rest = next;
                if special {
                    self.drop_untraced_bytes(part, &places, &mut bytes);
                }
                if self.is_bounded() {
                    return;
                }
                for (&(_, size), &at) in part.iter().zip(&places) {
                    let (at, end) = (at as usize, (at + size) as usize);
                    // Cut by the read budget (the pass is bounded): nothing to follow.
                    let Some(b) = bytes.get(at..end).filter(|_| end <= read) else {
                        continue;
                    };
                    for w in b.as_chunks::<8>().0 {
                        self.visit(u64::from_le_bytes(*w), &mut level);
                    }
                }
            }
            objects.clear();
        }
    }

    /// Marks what `p` points at if its page is known, and adds it to `level` to scan;
    /// otherwise keeps `p` and its page for [`Marker::resolve_unknown`].
    #[inline]
    fn visit(&mut self, p: u64, level: &mut Level) {
        if p < MIN_POINTER {
            return;
        }
        match self.heap.mark_at(p) {
            Marked::New(s) => self.marked(s, level),
            Marked::Not => {}
            Marked::Unknown => {
                level.unknown.push(p);
                let page = self.heap.page_base(p);
                if level.pages.last() != Some(&page) {
                    level.pages.push(page);
                }
            }
        }
    }

    /// Looks up the pages of the level's unknown words, and marks what they point at.
    fn resolve_unknown(&mut self, level: &mut Level) {
        if level.unknown.is_empty() {
            return;
        }
        level.pages.sort_unstable();
        level.pages.dedup();
        self.heap.resolve_spans(&level.pages);
        level.pages.clear();
        let unknown = std::mem::take(&mut level.unknown);
        for &p in &unknown {
            if let Marked::New(s) = self.heap.mark_at(p) {
                self.marked(s, level);
            }
        }
        level.unknown = unknown;
        level.unknown.clear();
    }

    /// Counts the object just marked at `s` and adds it to the level's objects to scan if
    /// it holds pointers.
    #[inline]
    fn marked(&mut self, s: Slot, level: &mut Level) {
        self.objects += 1;
        self.bytes += s.size;
        if s.scan {
            level.to_scan.push((s.base, s.size));
        }
        level.special |= s.special;
    }

    /// The byte ranges (offset, length) of the object at `base` that Go does not trace and
    /// the pass must not follow: the stack addresses of a g struct, `p.wbBuf` and `p.pcache` of a p, wherever
    /// in the object the struct starts ([`struct_in`]).
    fn untraced(&self, base: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if let Some(g) = struct_in(base, |a| self.g_structs.contains(&a)) {
            out.extend(self.stack_words.iter().map(|&off| (g - base + off, 8)));
        }
        if let Some(p) = struct_in(base, |a| self.p_structs.contains(&a)) {
            out.extend(
                self.p_untraced
                    .iter()
                    .map(|&(off, len)| (p - base + off, len)),
            );
        }
        out
    }

    /// Zeroes the bytes of `objects` that [`Marker::untraced`] names, where `bytes` holds
    /// them at `places` ([`Heap::read_objects`]).
    fn drop_untraced_bytes(&self, objects: &[(u64, u64)], places: &[u64], bytes: &mut [u8]) {
        for (&(base, size), &at) in objects.iter().zip(places) {
            for (off, len) in self.untraced(base) {
                let lo = (at + off.min(size)) as usize;
                let hi = (at + (off + len).min(size)) as usize;
                if let Some(b) = bytes.get_mut(lo..hi) {
                    b.fill(0);
                }
            }
        }
    }

    /// Zeroes the words of `objects` that [`Marker::untraced`] names, where `words` are
    /// their words, object after object.
    fn drop_untraced(&self, objects: &[(u64, u64)], words: &mut [u64]) {
        let mut at = 0;
        for &(base, size) in objects {
            for (off, len) in self.untraced(base) {
                let lo = (at + (off / 8) as usize).min(words.len());
                let hi = (lo + (len / 8) as usize).min(words.len());
                words[lo..hi].fill(0);
            }
            at += (size / 8) as usize;
        }
    }

    /// Sets the mark bit of the object at `s` and counts it; false when it was marked
    /// already or is a stop.
    fn set_mark(&mut self, s: Slot) -> bool {
        if !self.heap.set_mark(&s) {
            return false;
        }
        self.objects += 1;
        self.bytes += s.size;
        true
    }

    /// Marks the object at `p` if it is an allocated heap object not marked yet and not a
    /// stop; returns its slot when it did. `p`'s span must have been looked up.
    fn mark_new(&mut self, p: u64) -> Option<retained::Slot> {
        let s = self.heap.slot(p)?;
        self.set_mark(s).then_some(s)
    }

    /// Like [`Marker::mark`], each word tagged with the index into `holds` of the goroutine
    /// whose stack led to it: an object newly marked counts to the owner of the word that
    /// reached it (the lowest index among those of one wave), and what it holds inherits
    /// that owner.
    fn mark_owned(&mut self, mut words: Vec<(u64, usize)>, holds: &mut [Holds]) {
        while !words.is_empty() && !self.is_bounded() {
            words.retain(|&(p, _)| p >= MIN_POINTER);
            words.sort_unstable();
            words.dedup_by_key(|w| w.0);
            let pointers: Vec<u64> = words.iter().map(|w| w.0).collect();
            self.heap.resolve_spans(&pointers);
            let mut to_scan = Vec::new();
            let mut owners = Vec::new();
            for &(p, owner) in &words {
                let Some(s) = self.mark_new(p) else { continue };
                holds[owner].heap_objects += 1;
                holds[owner].heap_bytes += s.size;
                if s.scan {
                    to_scan.push((s.base, s.size));
                    owners.push(owner);
                }
            }
            let mut flat = Vec::new();
            self.heap.read_words(&to_scan, &mut flat);
            self.drop_untraced(&to_scan, &mut flat);
            words = tag_words(&to_scan, &owners, flat);
        }
    }

    /// Go's `isMarkedOrNotInHeap`: marked, or not an allocated heap object. `p`'s span must
    /// have been looked up ([`Heap::resolve_spans`]).
    fn marked_or_not_heap(&self, p: u64) -> bool {
        if p < MIN_POINTER {
            return true;
        }
        self.heap.slot(p).is_none_or(|s| self.heap.is_marked(&s))
    }
}

/// What one level of [`Marker::mark`] gathers.
#[derive(Default)]
struct Level {
    /// The objects newly marked that hold pointers: base, size.
    to_scan: Vec<(u64, u64)>,
    /// Words whose page is not looked up yet, and those pages.
    unknown: Vec<u64>,
    pages: Vec<u64>,
    /// An object of a flagged span is among `to_scan`: it may be a g or p struct.
    special: bool,
}

/// Where the runtime struct in the heap object at `base` starts, if `known` says one does:
/// at `base`, or 8 bytes in, after the malloc header Go 1.22+ puts before objects over 512
/// bytes that hold pointers (`runtime/mbitmap.go`, `mallocHeaderSize`): a p (16 KiB in
/// Go 1.27) is one, and its write barrier buffer would otherwise be followed.
fn struct_in(base: u64, known: impl Fn(u64) -> bool) -> Option<u64> {
    [base, base + 8].into_iter().find(|&a| known(a))
}

/// The words of `ranges`, read in one run into `flat`, each tagged with its range's owner.
fn tag_words(ranges: &[(u64, u64)], owners: &[usize], flat: Vec<u64>) -> Vec<(u64, usize)> {
    let mut out = Vec::with_capacity(flat.len());
    let mut flat = flat.into_iter();
    for (&(_, len), &owner) in ranges.iter().zip(owners) {
        out.extend(flat.by_ref().take((len / 8) as usize).map(|w| (w, owner)));
    }
    out
}

/// What each of the `leaked` goroutines alone holds, marked on from the fixed point (see
/// the module header), by goid; or the bound the mark stopped at.
fn attribute(
    m: &mut Marker,
    stacks: &mut Stacks,
    leaked: &[&RawG],
) -> Result<HashMap<u64, Holds>, &'static str> {
    let mut leaked = leaked.to_vec();
    leaked.sort_by_key(|g| g.goid);
    let mut holds: Vec<Holds> = leaked
        .iter()
        .map(|g| Holds {
            stack_bytes: g.stack_hi.saturating_sub(g.stack_lo),
            ..Holds::default()
        })
        .collect();
    let (mut flat, mut counts) = (Vec::new(), Vec::new());
    stacks.words(&mut m.heap, &leaked, &mut flat, &mut counts);
    let ranges: Vec<(u64, u64)> = counts.iter().map(|&n| (0, 8 * n as u64)).collect();
    let owners: Vec<usize> = (0..leaked.len()).collect();
    m.mark_owned(tag_words(&ranges, &owners, flat), &mut holds);
    if m.is_bounded() {
        return Err(m.bounded.unwrap_or("objects"));
    }
    Ok(leaked.iter().map(|g| g.goid).zip(holds).collect())
}

/// Follows each candidate's wait list (`g.waiting`, `sudog.waitlink`) a level at a time, in
/// batched reads: fills `on` with the channels (`c`) or the sync object (`elem` of the
/// first sudog), and returns every sudog seen.
fn wait_lists(target: &Target, cands: &mut [Candidate]) -> HashSet<u64> {
    let s = &target.layout.sudog;
    let size = s.size as usize;
    let mut sudogs = HashSet::new();
    let mut frontier: Vec<(usize, u64)> = cands
        .iter()
        .enumerate()
        .filter(|(_, c)| c.g.waiting != 0 && c.class != WaitClass::Never)
        .map(|(i, c)| (i, c.g.waiting))
        .collect();
    let mut depth = 0;
    while !frontier.is_empty() && depth < MAX_SUDOGS {
        let mut next = Vec::new();
        for chunk in frontier.chunks(512) {
            let ranges: Vec<(u64, usize)> = chunk.iter().map(|&(_, a)| (a, size)).collect();
            let mut buf = vec![0u8; size * chunk.len()];
            if target.process.read_many(&ranges, &mut buf).is_err() {
                // Freed meanwhile: those goroutines moved; leave their lists short, which
                // makes them live (nothing to wait on) or is caught by the second pass.
                for &(i, _) in chunk {
                    cands[i].on.push(0);
                }
                continue;
            }
            for (&(i, addr), b) in chunk.iter().zip(buf.chunks_exact(size)) {
                if !sudogs.insert(addr) {
                    continue;
                }
                let c = &mut cands[i];
                match c.class {
                    WaitClass::Chan => c.on.push(u64_at(b, s.c)),
                    WaitClass::Sync if depth == 0 => c.on.push(u64_at(b, s.elem)),
                    _ => {}
                }
                let link = u64_at(b, s.waitlink);
                if link != 0 && c.class == WaitClass::Chan {
                    next.push((i, link));
                }
            }
        }
        frontier = next;
        depth += 1;
    }
    sudogs
}

/// How much of a sync waiter's stack, from its saved SP, is read to find its sudog: the
/// frames from `gopark` up to `sync.(*WaitGroup).Wait` take a few hundred bytes.
const SYNC_WAITER_STACK: u64 = 4096;

/// Sync waiters whose sudog is not on `g.waiting` (Go < 1.26), as their stacks resolve them
/// (see the module header).
#[derive(Default)]
struct HiddenWaits {
    cands: Vec<Candidate>,
    /// Their semaphore sudogs, which the mark must not enter: through `semtable`, a global,
    /// every waiter would reach what it waits on.
    stops: Vec<u64>,
    /// The waiters whose sudog was not found once, or not a WaitGroup's "semacquire".
    roots: Vec<RawG>,
}

/// Finds each waiter's sudog in the frame of `runtime.semacquire1` or `notifyListWait` on its
/// stack: the one heap object there of a sudog's size or more whose `sudog.g` is the waiter.
fn hidden_sync_waits(
    target: &Target,
    heap: &mut Heap,
    waiters: Vec<(RawG, WaitClass)>,
) -> HiddenWaits {
    let mut out = HiddenWaits::default();
    if waiters.is_empty() {
        return out;
    }
    let range_of = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| target.binary.function(n))
            .map(|f| f.addr..f.addr + f.size)
    };
    let sema = range_of(&["runtime.semacquire1"]);
    // Pushed to package sync by a linkname: its symbol is sync's name.
    let notify = range_of(&["sync.runtime_notifyListWait", "runtime.notifyListWait"]);
    let wait_group = range_of(&["sync.(*WaitGroup).Wait"]);
    let in_range =
        |r: &Option<std::ops::Range<u64>>, pc: u64| r.as_ref().is_some_and(|r| r.contains(&pc));

    let ranges: Vec<(u64, usize)> = waiters
        .iter()
        .map(|(g, _)| {
            let live = (g.stack_lo..g.stack_hi).contains(&g.sched_sp);
            let len = if live {
                (g.stack_hi - g.sched_sp).min(SYNC_WAITER_STACK)
            } else {
                0
            };
            (g.sched_sp, len as usize)
        })
        .collect();
    let total: usize = ranges.iter().map(|r| r.1).sum();
    let mut buf = vec![0u8; total];
    let read = batch::read_ranges(&target.process, &ranges, &mut buf).unwrap_or_default();
    heap.bytes_read += total as u64;

    // For each waiter: is it a Cond's, and the words of its holding frame.
    let mut held: Vec<Option<(bool, Vec<u64>)>> = Vec::with_capacity(waiters.len());
    let mut offset = 0;
    for (i, ((g, class), &(sp, len))) in waiters.iter().zip(&ranges).enumerate() {
        let bytes = &buf[offset..offset + len];
        offset += len;
        if !read.get(i).copied().unwrap_or(false) || len == 0 {
            held.push(None);
            continue;
        }
        let stack = StackMemory { base: sp, bytes };
        let frames = unwind::unwind(&target.binary, &stack, sp, g.sched_pc, target.load_bias);
        if *class == WaitClass::Semacquire && !frames.iter().any(|f| in_range(&wait_group, f.pc)) {
            held.push(None);
            continue;
        }
        let holder = frames
            .iter()
            .position(|f| in_range(&sema, f.pc) || in_range(&notify, f.pc));
        held.push(holder.map(|h| {
            let lo = frames[h].sp;
            let hi = frames.get(h + 1).map_or(sp + len as u64, |f| f.sp);
            let words = (lo..hi)
                .step_by(8)
                .filter_map(|a| stack.word(a))
                .filter(|&w| w >= MIN_POINTER)
                .collect();
            (in_range(&notify, frames[h].pc), words)
        }));
    }

    // The heap objects at the words' addresses that may be sudogs, read in one batch.
    let mut words: Vec<u64> = held
        .iter()
        .flatten()
        .flat_map(|(_, w)| w.iter().copied())
        .collect();
    words.sort_unstable();
    words.dedup();
    heap.resolve_spans(&words);
    let s = &target.layout.sudog;
    let mut tried: Vec<(usize, u64)> = Vec::new();
    for (i, h) in held.iter().enumerate() {
        let Some((_, words)) = h else { continue };
        let mut seen = HashSet::new();
        for &w in words {
            let is_object = heap
                .slot(w)
                .is_some_and(|o| o.base == w && o.size >= s.size);
            if is_object && seen.insert(w) {
                tried.push((i, w));
            }
        }
    }
    let sudog_ranges: Vec<(u64, usize)> =
        tried.iter().map(|&(_, w)| (w, s.size as usize)).collect();
    let mut sudogs = vec![0u8; sudog_ranges.len() * s.size as usize];
    let read = batch::read_ranges(&target.process, &sudog_ranges, &mut sudogs).unwrap_or_default();
    heap.bytes_read += sudogs.len() as u64;
    // Waiter -> its sudogs, and what they wait on.
    let mut found: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
    for (k, (&(i, w), b)) in tried
        .iter()
        .zip(sudogs.chunks_exact(s.size as usize))
        .enumerate()
    {
        if read.get(k).copied().unwrap_or(false) && u64_at(b, s.g) == waiters[i].0.addr {
            found.entry(i).or_default().push((w, u64_at(b, s.elem)));
        }
    }

    for (i, ((g, _), h)) in waiters.into_iter().zip(held).enumerate() {
        let (cond, sudog, elem) = match (h, found.get(&i).map(Vec::as_slice)) {
            (Some((cond, _)), Some(&[(sudog, elem)])) => (cond, sudog, elem),
            _ => {
                out.roots.push(g);
                continue;
            }
        };
        let on = if cond {
            // Go < 1.26 leaves a Cond waiter's elem unset: its sudog, which only the Cond's
            // notifyList (head, then each waiter's next) leads to, stands for the Cond.
            sudog
        } else {
            out.stops.push(sudog);
            elem
        };
        out.cands.push(Candidate {
            g,
            class: WaitClass::Sync,
            on: vec![on],
            live: false,
        });
    }
    out
}

/// One pass: marks from the roots, revives candidates whose primitive is marked, to a fixed
/// point, and returns the candidates left unreachable. Data and bss are scanned with the
/// GC's pointer bitmaps where they can be read ([`data_roots`]).
pub fn pass(target: &Target, limits: PassLimits) -> anyhow::Result<Pass> {
    pass_with(target, limits, GlobalScan::GcBitmaps)
}

/// [`pass`], scanning data and bss as `globals` asks (conservatively, to compare).
pub fn pass_with(target: &Target, limits: PassLimits, globals: GlobalScan) -> anyhow::Result<Pass> {
    pass_scanning(target, limits, globals, StackMode::Precise)
}

/// [`pass_with`], scanning goroutine stacks as `stacks` asks (conservatively, to compare).
pub fn pass_scanning(
    target: &Target,
    limits: PassLimits,
    globals: GlobalScan,
    stack_mode: StackMode,
) -> anyhow::Result<Pass> {
    let started = Instant::now();
    let vars = runtime_vars(target)?;
    let gs = read_gs(target, &all_gs(target)?)?;
    let mut reasons: HashMap<u8, WaitClass> = HashMap::new();
    let mut roots = Vec::new();
    let mut cands = Vec::new();
    let mut hidden = Vec::new();
    let mut goroutines = 0;
    for g in gs {
        let status = g.status & !G_SCAN;
        if status == G_DEAD || (status == G_IDLE && g.goid == 0) {
            continue;
        }
        goroutines += 1;
        let class = if status == G_WAITING || status == G_LEAKED {
            *reasons
                .entry(g.waitreason)
                .or_insert_with(|| wait_class(&target.reason_name(g.waitreason)))
        } else {
            WaitClass::Root
        };
        match class {
            WaitClass::Root => roots.push(g),
            // Go < 1.26: the sudog is not on g.waiting; looked for on the stack below.
            WaitClass::Sync | WaitClass::Semacquire if g.waiting == 0 => hidden.push((g, class)),
            // Go >= 1.26: a semaphore of the runtime or of internal/poll, not a sync wait.
            WaitClass::Semacquire => roots.push(g),
            // A channel wait with no wait list: a g caught half-way, a root.
            WaitClass::Chan if g.waiting == 0 => roots.push(g),
            WaitClass::Chan | WaitClass::Sync | WaitClass::Never => cands.push(Candidate {
                g,
                class,
                on: Vec::new(),
                live: false,
            }),
        }
    }
    let mut stops = wait_lists(target, &mut cands);

    let heap_limits = retained::Limits {
        max_objects: u64::MAX,
        max_bytes_read: limits.max_bytes_read,
    };
    let mut heap = Heap::new(target, vars.mheap, heap_limits);
    let hidden = hidden_sync_waits(target, &mut heap, hidden);
    cands.extend(hidden.cands);
    roots.extend(hidden.roots);
    stops.extend(hidden.stops);
    heap.stop_at(stops);
    let gl = &target.layout.g;
    let g_structs: AddrSet = retained::g_structs(target, &vars)?.into_iter().collect();
    let p_structs: AddrSet = pointer_slice(target, vars.allp, "runtime.allp", MAX_PS)?
        .into_iter()
        .collect();
    heap.flag_spans(
        &g_structs
            .iter()
            .chain(&p_structs)
            .copied()
            .collect::<Vec<_>>(),
    );
    let mut m = Marker {
        heap,
        limits,
        started,
        objects: 0,
        bytes: 0,
        bounded: None,
        g_structs,
        stack_words: [gl.stack_lo, gl.stack_hi, gl.sched_sp, gl.sched_bp],
        p_structs,
        p_untraced: {
            let p = &target.layout.p;
            [(p.wb_buf, p.wb_buf_size), (p.pcache, p.pcache_size)]
        },
    };
    let data_bss = data_roots::data_and_bss(target, globals == GlobalScan::GcBitmaps)?;
    let mut words = Vec::new();
    data_bss.words(&mut m.heap, &mut words);
    let ranges = specials::roots(target, vars.mheap).context(
        "reading the finalizers, cleanups and weak handles, which the GC treats as roots",
    )?;
    m.heap.read_words(&ranges, &mut words);
    let mut stacks = Stacks::new(target, stack_mode);
    let mut counts = Vec::new();
    let root_gs: Vec<&RawG> = roots.iter().collect();
    stacks.words(&mut m.heap, &root_gs, &mut words, &mut counts);
    m.mark(words);

    // What the candidates wait on, looked up in one batch.
    let mut waited: Vec<u64> = cands.iter().flat_map(|c| c.on.iter().copied()).collect();
    waited.retain(|&p| p >= MIN_POINTER);
    waited.sort_unstable();
    waited.dedup();
    m.heap.resolve_spans(&waited);
    let mut revived = 0;
    loop {
        let mut revive = Vec::new();
        for (i, c) in cands.iter_mut().enumerate().filter(|(_, c)| !c.live) {
            let live = match c.class {
                WaitClass::Never | WaitClass::Root | WaitClass::Semacquire => false,
                WaitClass::Chan | WaitClass::Sync => {
                    c.on.is_empty() || c.on.iter().any(|&p| m.marked_or_not_heap(p))
                }
            };
            if live {
                c.live = true;
                revived += 1;
                revive.push(i);
            }
        }
        if revive.is_empty() || m.is_bounded() {
            break;
        }
        let gs: Vec<&RawG> = revive.iter().map(|&i| &cands[i].g).collect();
        let mut words = Vec::new();
        stacks.words(&mut m.heap, &gs, &mut words, &mut counts);
        m.mark(words);
    }
    m.is_bounded();
    let (bounded, objects_marked, bytes_marked) = (m.bounded, m.objects, m.bytes);
    let leaked: Vec<&RawG> = cands.iter().filter(|c| !c.live).map(|c| &c.g).collect();
    let holds = match bounded {
        Some(why) => Err(why),
        None if !limits.holds => Ok(HashMap::new()),
        None => attribute(&mut m, &mut stacks, &leaked),
    };
    Ok(Pass {
        unreachable: cands
            .iter()
            .filter(|c| !c.live)
            .map(|c| BlockedG::of(&c.g))
            .collect(),
        candidates: cands.len(),
        examined: cands.iter().map(|c| c.g.goid).collect(),
        revived,
        goroutines,
        objects_marked,
        bytes_marked,
        bytes_read: m.heap.bytes_read,
        elapsed: started.elapsed(),
        bounded,
        roots: data_bss.scan(),
        conservative_why: data_bss.conservative_why,
        stacks: stacks.scan,
        holds_bounded: holds.as_ref().err().copied(),
        holds: holds.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_tagged_with_the_owner_of_their_range() {
        let ranges = [(0x1000, 16), (0x2000, 8), (0x3000, 24)];
        let flat = vec![1, 2, 3, 4, 5, 6];
        assert_eq!(
            tag_words(&ranges, &[0, 2, 1], flat),
            [(1, 0), (2, 0), (3, 2), (4, 1), (5, 1), (6, 1)]
        );
        // A read cut short (a bound hit) tags what there is.
        assert_eq!(tag_words(&ranges, &[0, 2, 1], vec![1, 2]), [(1, 0), (2, 0)]);
    }

    #[test]
    fn wait_reasons_are_classed_as_go_1_27_classes_them() {
        assert_eq!(wait_class("chan send"), WaitClass::Chan);
        assert_eq!(wait_class("select"), WaitClass::Chan);
        assert_eq!(wait_class("sync.WaitGroup.Wait"), WaitClass::Sync);
        assert_eq!(wait_class("sync.RWMutex.RLock"), WaitClass::Sync);
        assert_eq!(wait_class("select (no cases)"), WaitClass::Never);
        assert_eq!(wait_class("chan receive (nil chan)"), WaitClass::Never);
        // WaitGroup.Wait's reason before Go 1.24, otherwise a root.
        assert_eq!(wait_class("semacquire"), WaitClass::Semacquire);
        // Not primitives Go's detector follows: roots.
        for r in [
            "sleep",
            "IO wait",
            "chan receive (durable)",
            "GC sweep wait",
        ] {
            assert_eq!(wait_class(r), WaitClass::Root, "{r}");
        }
    }
}
