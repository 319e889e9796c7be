//! Snapshots of every goroutine at memory speed, one after another.
//!
//! A snapshot reads `runtime.allgs` (a `[]*g`), then, 1024 goroutines at a time, their g
//! structs (many ranges per `process_vm_readv`) and the live part of every stopped one's
//! stack (saved SP to `stack.hi`), up to IOV_MAX stacks per call, and unwinds them locally.
//! PCs are resolved once for the life of the [`Census`] (frame sizes, functions, inlined
//! calls, file and line), and a stack is symbolized once per distinct list of PCs and
//! shared by every goroutine stopped at them.
//!
//! What a snapshot costs is mostly the kernel's: on this project's VMs `process_vm_readv`
//! takes ~330 ns per range even on memory in the caches and ~600 ns per cold page, against
//! ~0.12 ns per byte copied. So neighbouring g structs, and stacks whose live parts lie
//! within [`STACK_GAP`], are read as one range; and a stack whose walk would read the same
//! words as one of the same shape seen before is not walked (see [`Shape`]).
//!
//! A goroutine that provably did not run since the previous snapshot keeps the stack it had
//! then, unread; see [`Kept`]. The target runs on meanwhile, so a goroutine that changes
//! state during the walk may be seen half-way; such a stack is cut where it stops making
//! sense rather than reported wrong.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;

use super::{
    channels::{self, ChannelState},
    goroutines::{
        G_BATCH, GoroutineSnapshot, RawG, StackFrame, Symbolizer, all_gs_into, monotonic_ns,
        read_g_batch, set_arc, u64_at,
    },
    unwind::{PcMap, PhysFrame, StackMemory, Unwinder},
};
use crate::tracee::{Target, batch};

/// `_Gscan`, or-ed into the status while the GC scans the stack (runtime/runtime2.go,
/// Go 1.21-1.27).
const G_SCAN: u32 = 0x1000;
/// g statuses (runtime/runtime2.go, Go 1.21-1.27).
const G_RUNNABLE: u32 = 1;
const G_RUNNING: u32 = 2;
const G_WAITING: u32 = 4;
const G_DEAD: u32 = 6;
const G_PREEMPTED: u32 = 9;
/// Read at most this much of one goroutine's stack, from its saved SP up; the frames of a
/// deeper stack past that are cut, the outermost ones (where it was started) included.
/// Parked goroutines use a few hundred bytes; a deep recursion a few MiB.
const MAX_STACK_READ: u64 = 64 << 20;
/// Stack bytes read per batch (a larger stack is read alone): the buffer is reused, so it
/// stays in the CPU's caches while its stacks are unwound.
const BATCH_BYTES: usize = 1 << 19;
/// Stacks whose live parts lie at most this far apart in the target are read as one range.
/// Each range costs the kernel ~330 ns (pinning its pages, on this project's VMs) besides
/// ~0.12 ns per byte copied, so reading the gap costs less than a range up to ~2.7 KiB; 2
/// KiB and 4 KiB stacks of parked goroutines sit packed in their spans, their live parts
/// 1-1.5 KiB (2 KiB stacks) or ~3 KiB (4 KiB stacks) apart.
const STACK_GAP: u64 = 2 << 10;
/// One snapshot in this many reads every stack again, whatever the runtime says: it bounds
/// how long a stack that the 8-bit `trackingSeq` failed to show as changed (see [`Kept`]) can
/// stay stale.
const FULL_EVERY: u32 = 16;
/// Shapes kept per (PC, length, creation site): goroutines of one site parked at one PC
/// with stacks of one length differ at most in a few call paths.
const SHAPES_PER_KEY: usize = 4;

/// What proves that a goroutine did not run between two snapshots, and the stack it had.
///
/// `casgstatus` (runtime/proc.go) adds one to `g.trackingSeq` every time a goroutine stops
/// running: in Go 1.21-1.26 on every transition out of `_Grunning`, in Go 1.27 out of
/// `_Grunning` or `_Gsyscall` into any other status (proc.go, "Do not track _Grunning <->
/// _Gsyscall transitions"). A goroutine that is waiting, runnable or preempted now got there
/// from `_Grunning`, so if it ran since the last snapshot the counter moved, and so, almost
/// always, did its saved PC and SP (`g.sched`, written by the `mcall` or `gosave` that
/// stopped it) or, for a channel operation, its sudog (`g.waiting`). All must match, with the
/// same g (goid) on the same stack (`stack.hi`; a stack the GC moved or shrank has another).
/// `_Gsyscall` stacks are always read again: in Go 1.27 a goroutine can leave and re-enter a
/// system call without the counter moving. The counter is 8 bits, so a goroutine that ran
/// exactly a multiple of 256 times and stopped again at the same PC, SP and sudog keeps its
/// old stack, which for a goroutine looping on one blocking call is its stack anyway; every
/// [`FULL_EVERY`]th snapshot reads every stack.
#[derive(Clone, PartialEq, Eq)]
struct Proof {
    goid: u64,
    status: u32,
    tracking_seq: u8,
    sched_pc: u64,
    sched_sp: u64,
    stack_hi: u64,
    waiting: u64,
}

impl Proof {
    fn of(g: &RawG, status: u32) -> Option<Self> {
        matches!(status, G_WAITING | G_RUNNABLE | G_PREEMPTED).then(|| Self {
            goid: g.goid,
            status,
            tracking_seq: g.tracking_seq,
            sched_pc: g.sched_pc,
            sched_sp: g.sched_sp,
            stack_hi: g.stack_hi,
            waiting: g.waiting,
        })
    }
}

/// The last walk of a stack of one length stopped at one PC: the words it read (offset from
/// the saved SP, value) and the stack they gave.
struct Shape {
    reads: Box<[(u64, u64)]>,
    stack: Arc<[StackFrame]>,
    /// The last snapshot that used it: a shape no goroutine had in the last snapshot is
    /// dropped with it, and so, unless held elsewhere, is its stack.
    used: u32,
}

struct Kept {
    proof: Proof,
    stack: Arc<[StackFrame]>,
    /// The channels of its sudogs (`g.waiting`), once read: a goroutine that did not run
    /// still waits on the same ones (their state is read again each time).
    channels: Option<Arc<[u64]>>,
}

/// A stack waiting to be read: the goroutine's index in the stretch listed and in allgs,
/// its saved SP and PC.
struct Pending {
    index: usize,
    g_index: usize,
    sp: u64,
    pc: u64,
    len: usize,
    gopc: u64,
}

/// A live goroutine of the stretch being listed: its index in allgs, and its stack once
/// read (none: kept, not read, or could not be).
struct Listed {
    g_index: usize,
    stack: Option<Arc<[StackFrame]>>,
    /// Its stack is the one kept from the last snapshot (taken from there when its entry is
    /// written, not cloned beforehand).
    kept: bool,
}

/// Takes snapshots of one target's goroutines, keeping what it learnt (symbols, frame sizes,
/// the previous snapshot's stacks) from one to the next. Use one `Census` per target.
pub struct Census {
    unwinder: Unwinder,
    symbolizer: Symbolizer,
    /// Symbolized stacks by their physical frames (see [`stack_key`]).
    stacks: PcMap<Box<[u64]>, Arc<[StackFrame]>>,
    /// By (saved PC, bytes from the saved SP to `stack.hi`, `g.gopc`), the latest last.
    shapes: PcMap<(u64, usize, u64), Vec<Shape>>,
    /// The previous snapshot's provably unchanged-if-still-equal stacks, by the g's index in
    /// `runtime.allgs`: the runtime only appends to it (a dead g is kept there for reuse), so
    /// an index names the same g from one snapshot to the next, and the proof's goid and
    /// stack say whether it is still the same goroutine on the same stack.
    kept: Vec<Option<Kept>>,
    incremental: bool,
    /// Takes a stack for one of a shape seen before (see [`Shape`]).
    match_shapes: bool,
    snapshots: u32,
    stacks_read: usize,
    chains_read: usize,
    empty: Arc<[StackFrame]>,
    /// Reused from one snapshot to the next: fresh, their pages would be faulted in again
    /// each time.
    buf: Vec<u8>,
    frames: Vec<PhysFrame>,
    key: Vec<u64>,
    reads: Vec<(u64, u64)>,
    addrs: Vec<u64>,
    raw: Vec<RawG>,
    g_scratch: Vec<u8>,
    pending: Vec<Pending>,
    listed: Vec<Listed>,
    /// A snapshot given back by [`Census::recycle`]: the next one is written over its
    /// entries (see [`Census::list`]) and into its memory.
    spare: Vec<GoroutineSnapshot>,
}

impl Default for Census {
    fn default() -> Self {
        Self::new()
    }
}

impl Census {
    /// An incremental census: each snapshot reads only the stacks of goroutines that may
    /// have run since the previous one.
    pub fn new() -> Self {
        Self {
            unwinder: Unwinder::default(),
            symbolizer: Symbolizer::default(),
            stacks: PcMap::default(),
            shapes: PcMap::default(),
            kept: Vec::new(),
            incremental: true,
            match_shapes: true,
            snapshots: 0,
            stacks_read: 0,
            chains_read: 0,
            empty: Arc::from(Vec::new()),
            buf: Vec::new(),
            frames: Vec::new(),
            key: Vec::new(),
            reads: Vec::new(),
            addrs: Vec::new(),
            raw: Vec::new(),
            g_scratch: Vec::new(),
            pending: Vec::new(),
            listed: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// A census whose every snapshot reads every stack (its caches still apply).
    pub fn full() -> Self {
        Self {
            incremental: false,
            ..Self::new()
        }
    }

    /// A full census that unwinds every stack it reads, none taken for one of a shape seen
    /// before: slower, and what matching shapes must agree with.
    pub fn unwinding_every_stack() -> Self {
        Self {
            match_shapes: false,
            ..Self::full()
        }
    }

    /// Every live goroutine of the target, system ones included (see
    /// [`GoroutineSnapshot::system`]), in allgs order.
    pub fn snapshot(&mut self, target: &Target) -> anyhow::Result<Vec<GoroutineSnapshot>> {
        all_gs_into(target, &mut self.addrs)?;
        // Taken while the symbolizer and the stacks are borrowed, put back at the end.
        let addrs = std::mem::take(&mut self.addrs);
        let mut raw = std::mem::take(&mut self.raw);
        let mut pending = std::mem::take(&mut self.pending);
        let mut listed = std::mem::take(&mut self.listed);
        pending.clear();
        listed.clear();
        let now = monotonic_ns();
        let reuse = self.incremental && !self.snapshots.is_multiple_of(FULL_EVERY);
        self.snapshots = self.snapshots.wrapping_add(1);
        // Taken: a snapshot that fails leaves none kept.
        let mut kept = std::mem::take(&mut self.kept);
        if self.incremental {
            kept.resize_with(addrs.len(), || None);
        }
        // Written over from its start; what is left past the last entry written is dropped
        // at the end.
        let mut out = std::mem::take(&mut self.spare);
        let mut written = 0;
        out.reserve(addrs.len().saturating_sub(out.len()));
        self.stacks_read = 0;
        // The goroutines are taken G_BATCH (at most IOV_MAX) at a time: their g structs
        // read, what each one has decided, the stacks to read read, then their entries
        // written, while the batch's `raw` and stretch of `kept` are in the CPU's caches. A
        // stack read is moved into its entry, not put in place of a placeholder: the atomic
        // updates of the placeholder's count cost more than the rest of the entry.
        for (c, chunk) in addrs.chunks(G_BATCH).enumerate() {
            raw.clear();
            read_g_batch(target, chunk, &mut raw, &mut self.g_scratch)?;
            let base = c * G_BATCH;
            for (j, g) in raw.iter().enumerate() {
                self.decide(g, base + j, reuse, &mut kept, &mut listed, &mut pending);
            }
            self.read_stacks(target, &pending, &mut listed, &mut kept)?;
            self.stacks_read += pending.len();
            pending.clear();
            let stretch = (&raw[..], base, now);
            self.list(target, stretch, &kept, &mut listed, &mut out, &mut written);
        }
        out.truncate(written);
        self.addrs = addrs;
        self.kept = kept;
        self.raw = raw;
        self.pending = pending;
        self.listed = listed;
        // Drop stacks no goroutine holds any more.
        let this = self.snapshots;
        self.shapes.retain(|_, known| {
            known.retain(|s| s.used == this);
            !known.is_empty()
        });
        self.stacks.retain(|_, s| Arc::strong_count(s) > 1);
        Ok(out)
    }

    /// Decides what the g at `i` in allgs has: nothing (dead), the stack kept from the last
    /// snapshot, or one to read (into `pending`); a live one goes into `listed`.
    fn decide(
        &mut self,
        g: &RawG,
        i: usize,
        reuse: bool,
        kept: &mut [Option<Kept>],
        listed: &mut Vec<Listed>,
        pending: &mut Vec<Pending>,
    ) {
        let status = g.status & !G_SCAN;
        let slot = kept.get_mut(i);
        if status == G_DEAD || (status == 0 && g.goid == 0) {
            if let Some(slot) = slot {
                *slot = None;
            }
            return; // _Gdead (free g kept for reuse) or _Gidle (just allocated)
        }
        let proof = Proof::of(g, status);
        let kept_stack = match (&proof, &slot) {
            (Some(p), Some(Some(k))) if reuse && k.proof == *p => true,
            _ => {
                // Kept next time with the stack read below (or none).
                if let Some(slot) = slot {
                    *slot = proof.map(|proof| Kept {
                        proof,
                        stack: Arc::clone(&self.empty),
                        channels: None,
                    });
                }
                // A running goroutine's registers are on a CPU, not in g.sched: no stack, as
                // in Go.
                if status != G_RUNNING
                    && g.sched_pc != 0
                    && g.sched_sp >= g.stack_lo
                    && g.sched_sp < g.stack_hi
                {
                    pending.push(Pending {
                        index: listed.len(),
                        g_index: i,
                        sp: g.sched_sp,
                        pc: g.sched_pc,
                        len: (g.stack_hi - g.sched_sp).min(MAX_STACK_READ) as usize,
                        gopc: g.gopc,
                    });
                }
                false
            }
        };
        listed.push(Listed {
            g_index: i,
            stack: None,
            kept: kept_stack,
        });
    }

    /// Writes the entries of the `listed` goroutines of a stretch (the g structs of allgs
    /// from `base` on, read at `now`), whose stacks were read, into `out` from `written` on.
    ///
    /// An entry left there by a snapshot given back is written over, each shared string and
    /// stack assigned only where it differs: for a goroutine that did not run (most of them)
    /// that is none, and no reference count is touched. Dropping the old entries and cloning
    /// the same values again cost ~3 ms per 100k goroutines in atomic updates.
    fn list(
        &mut self,
        target: &Target,
        (raw, base, now): (&[RawG], usize, i64),
        kept: &[Option<Kept>],
        listed: &mut Vec<Listed>,
        out: &mut Vec<GoroutineSnapshot>,
        written: &mut usize,
    ) {
        for l in listed.drain(..) {
            let g = &raw[l.g_index - base];
            let status = g.status & !G_SCAN;
            let waiting_status = status == G_WAITING;
            let waiting = (g.waitsince != 0 && (waiting_status || status == 3))
                .then(|| Duration::from_nanos(now.saturating_sub(g.waitsince).max(0) as u64));
            let read;
            let stack = match (l.stack, l.kept) {
                (Some(s), _) => {
                    read = s;
                    &read
                }
                (None, true) => kept
                    .get(l.g_index)
                    .and_then(Option::as_ref)
                    .map_or(&self.empty, |k| &k.stack),
                (None, false) => &self.empty,
            };
            let Some(e) = out.get_mut(*written) else {
                let state = Arc::clone(self.symbolizer.state(target, status, g.waitreason));
                let site = self.symbolizer.site(target, g.gopc, g.startpc);
                out.push(GoroutineSnapshot {
                    goid: g.goid,
                    status,
                    state,
                    wait_reason_value: waiting_status.then_some(g.waitreason),
                    waiting,
                    stack: Arc::clone(stack),
                    created_by: site.created_by(g),
                    system: site.system,
                    start_function: site.start_function.clone(),
                    g_addr: g.addr,
                    tracking_seq: g.tracking_seq,
                    allgs_index: l.g_index,
                });
                *written += 1;
                continue;
            };
            *written += 1;
            e.goid = g.goid;
            e.status = status;
            set_arc(
                &mut e.state,
                self.symbolizer.state(target, status, g.waitreason),
            );
            e.wait_reason_value = waiting_status.then_some(g.waitreason);
            e.waiting = waiting;
            set_arc(&mut e.stack, stack);
            let site = self.symbolizer.site(target, g.gopc, g.startpc);
            site.write_created_by(g, &mut e.created_by);
            e.system = site.system;
            match (&mut e.start_function, &site.start_function) {
                (Some(old), Some(new)) => set_arc(old, new),
                (old, new) => *old = new.clone(),
            }
            e.g_addr = g.addr;
            e.tracking_seq = g.tracking_seq;
            e.allgs_index = l.g_index;
        }
    }

    /// Gives back a snapshot this census took, once its reader is done with it: the next
    /// snapshot is written over its entries, in its memory. A fresh one is ~160 bytes a
    /// goroutine that the allocator takes from the kernel and gives back each time (glibc
    /// and musl map allocations this large afresh): for a million goroutines ~40,000 page
    /// faults, 15% of a full snapshot's CPU. The census then holds that memory between
    /// snapshots.
    pub fn recycle(&mut self, gs: Vec<GoroutineSnapshot>) {
        if gs.capacity() >= self.spare.capacity() {
            self.spare = gs;
        }
    }

    /// How many stacks the last snapshot read; the others it kept from the one before.
    pub fn stacks_read(&self) -> usize {
        self.stacks_read
    }

    /// The channels each of `gs` (goroutines of this census's last snapshot) waits on, as
    /// [`channels::waited_on_all`] reads them, except that the sudogs of a goroutine kept
    /// from the snapshot before, whose channels were read then, are not read again: it did
    /// not run, so it waits on the same channels. Their state is read again.
    pub fn channels(
        &mut self,
        target: &Target,
        gs: &[&GoroutineSnapshot],
    ) -> std::io::Result<Vec<Vec<ChannelState>>> {
        let known = |k: &Option<Kept>, g: &GoroutineSnapshot| {
            k.as_ref()
                .filter(|k| k.proof.goid == g.goid)
                .and_then(|k| k.channels.clone())
        };
        let mut addrs: Vec<Option<Arc<[u64]>>> = gs
            .iter()
            .map(|g| known(self.kept.get(g.allgs_index)?, g))
            .collect();
        let unknown: Vec<usize> = (0..gs.len()).filter(|&i| addrs[i].is_none()).collect();
        let g_addrs: Vec<u64> = unknown.iter().map(|&i| gs[i].g_addr).collect();
        let read = channels::sudog_channels(target, &g_addrs)?;
        self.chains_read = unknown.len();
        for (i, chans) in unknown.into_iter().zip(read) {
            let chans: Arc<[u64]> = chans.into();
            if let Some(Some(k)) = self.kept.get_mut(gs[i].allgs_index)
                && k.proof.goid == gs[i].goid
            {
                k.channels = Some(Arc::clone(&chans));
            }
            addrs[i] = Some(chans);
        }
        channels::channel_states(target, addrs.iter().map(|a| a.as_deref().unwrap_or(&[])))
    }

    /// How many goroutines' sudogs the last [`Census::channels`] read.
    pub fn chains_read(&self) -> usize {
        self.chains_read
    }

    /// Reads, unwinds and symbolizes the `pending` stacks into `listed`, a batch at a time,
    /// and keeps them in `kept` with what proves them next time.
    fn read_stacks(
        &mut self,
        target: &Target,
        pending: &[Pending],
        listed: &mut [Listed],
        kept: &mut [Option<Kept>],
    ) -> anyhow::Result<()> {
        let mut ranges = Vec::with_capacity(batch::IOV_MAX);
        let mut start = 0;
        while start < pending.len() {
            // A batch: up to IOV_MAX stacks and BATCH_BYTES, or one larger stack alone.
            let mut end = start;
            let mut bytes = 0;
            while end < pending.len()
                && end - start < batch::IOV_MAX
                && (end == start || bytes + pending[end].len <= BATCH_BYTES)
            {
                bytes += pending[end].len;
                end += 1;
            }
            let batch_of = &pending[start..end];
            ranges.clear();
            ranges.extend(batch_of.iter().map(|p| (p.sp, p.len)));
            let mut buf = std::mem::take(&mut self.buf);
            let read = batch::visit_coalesced(
                &target.process,
                &ranges,
                STACK_GAP,
                &mut buf,
                |i, bytes| {
                    // A stack that could not be read: the goroutine moved on (stack freed or
                    // grown) mid-walk.
                    if let Some(bytes) = bytes {
                        let p = &batch_of[i];
                        let stack = self.stack(target, p, bytes);
                        if let Some(Some(k)) = kept.get_mut(p.g_index) {
                            k.stack = Arc::clone(&stack);
                        }
                        listed[p.index].stack = Some(stack);
                    }
                },
            );
            self.buf = buf;
            read.context("reading goroutine stacks")?;
            start = end;
        }
        Ok(())
    }

    /// The symbolized stack in `bytes`, shared with every goroutine stopped at the same PCs.
    fn stack(&mut self, target: &Target, p: &Pending, bytes: &[u8]) -> Arc<[StackFrame]> {
        // Most goroutines park in a few shapes: a stack of the same length stopped at the
        // same PC, holding the same return addresses where the last walk of that shape
        // found them, is that shape (see Unwinder::unwind_recording). Those words are
        // compared independently of each other, where a walk waits on each before the next.
        let shape = (p.pc, bytes.len(), p.gopc);
        let this = self.snapshots;
        if self.match_shapes
            && let Some(known) = self.shapes.get_mut(&shape)
            && let Some(t) = known.iter_mut().find(|t| {
                // Outermost first: stacks of one shape part where they were started.
                t.reads
                    .iter()
                    .rev()
                    .all(|&(off, word)| u64_at(bytes, off) == word)
            })
        {
            t.used = this;
            return Arc::clone(&t.stack);
        }
        let mem = StackMemory { base: p.sp, bytes };
        self.unwinder.unwind_recording(
            &target.binary,
            &mem,
            p.sp,
            p.pc,
            target.load_bias,
            &mut self.frames,
            &mut self.reads,
        );
        stack_key(&self.frames, &mut self.key);
        let stack = match self.stacks.get(self.key.as_slice()) {
            Some(s) => Arc::clone(s),
            None => {
                let stack: Arc<[StackFrame]> = self.symbolizer.stack(target, &self.frames).into();
                self.stacks
                    .insert(self.key.clone().into_boxed_slice(), Arc::clone(&stack));
                stack
            }
        };
        if self.match_shapes {
            let known = self.shapes.entry(shape).or_default();
            if known.len() == SHAPES_PER_KEY {
                known.remove(0);
            }
            known.push(Shape {
                reads: self.reads.as_slice().into(),
                stack: Arc::clone(&stack),
                used: this,
            });
        }
        stack
    }
}

/// What a stack's symbolization depends on: each frame's PC and whether it is looked up as
/// is (the top bit, free in a link-time address) or as a return address.
fn stack_key(frames: &[PhysFrame], key: &mut Vec<u64>) {
    key.clear();
    key.extend(
        frames
            .iter()
            .map(|f| f.pc | (u64::from(f.lookup_pc == f.pc) << 63)),
    );
}
