//! Unwinding a goroutine that is not running, from its saved `g.sched` registers, the way the
//! Go runtime's own traceback does (runtime/traceback.go, `unwinder.next`): each frame's size
//! comes from the function's `pcsp` table, the return address sits just below the caller's
//! SP. Frame pointers are not enough: since Go 1.21 `mcall` stores the *caller's caller's*
//! frame pointer in `g.sched.bp` (CL 476235, asm_amd64.s), which would drop the function that
//! called `gopark` from every parked stack.

use std::{collections::HashMap, hash::BuildHasherDefault};

use crate::tracee::binary::GoBinary;

/// At most this many physical frames. Go's traceback walks every frame and prints the
/// innermost and outermost 50 (report::dump does the same); this only bounds the work on a
/// runaway recursion.
const MAX_FRAMES: usize = 100_000;

/// One physical frame: a link-time PC, and whether it is a return address (look up `pc - 1`)
/// or the exact instruction (a function entry, or where an asynchronous preemption stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysFrame {
    pub pc: u64,
    pub lookup_pc: u64,
    /// The frame's SP in the target: its locals, and the spill space of the arguments it
    /// passes to its callee, are at and above it, up to the caller's SP.
    pub sp: u64,
}

/// The goroutine's stack memory, as read from the target: `bytes` start at `base`.
pub struct StackMemory<'a> {
    pub base: u64,
    pub bytes: &'a [u8],
}

impl StackMemory<'_> {
    pub(crate) fn word(&self, addr: u64) -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let b = self.bytes.get(off..off.checked_add(8)?)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

/// Functions the runtime makes a goroutine "call" without a CALL instruction: the signal
/// handler pushes the interrupted PC as their return address (runtime/preempt.go,
/// signal_amd64.go `pushCall`). The frame above one of them stopped at that exact
/// instruction, so its PC is looked up as is, not minus one (runtime/traceback.go,
/// `unwinder.next` sets unwindTrap for FuncID_sigpanic, asyncPreempt and debugCallV2).
pub(super) const INJECTED_CALLS: [&str; 3] = [
    "runtime.asyncPreempt",
    "runtime.sigpanic",
    "runtime.debugCallV2",
];

/// Hashes a PC (or a word made of one) with one multiplication: the keys of the per-PC caches
/// are addresses, not attacker-chosen strings, and SipHash would cost more than the lookup.
#[derive(Clone, Copy, Default)]
pub(crate) struct PcHash(u64);

impl std::hash::Hasher for PcHash {
    fn finish(&self) -> u64 {
        // The multiplication leaves the low bits, which pick the bucket, as aligned as the
        // addresses were: bring high bits down.
        self.0.rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        let (words, rest) = bytes.as_chunks::<8>();
        for w in words {
            self.write_u64(u64::from_le_bytes(*w));
        }
        for &b in rest {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

pub(crate) type PcMap<K, V> = HashMap<K, V, BuildHasherDefault<PcHash>>;

/// What unwinding needs of the function at one link-time PC.
#[derive(Clone, Copy)]
enum Step {
    /// In no function: the walk ends before this frame.
    Outside,
    Frame {
        entry: u64,
        /// The frame's size at this PC; `None` ends the walk after this frame (the
        /// outermost function of a goroutine, a stack switch, or a size the table lacks).
        delta: Option<u64>,
        /// One of [`INJECTED_CALLS`].
        injected: bool,
    },
}

/// Slots of the [`Unwinder`]'s direct-mapped cache of steps (a power of two).
const RECENT: usize = 512;

/// Unwinds many stacks of one binary, looking each PC's function and frame size up once:
/// a program's goroutines stop at a few hundred distinct PCs. A stack of 100,000 goroutines
/// is millions of frames, each one lookup that waits on the last: the steps of recent PCs
/// sit in a small direct-mapped table, one probe each, in front of the map of all of them.
pub struct Unwinder {
    steps: PcMap<u64, Step>,
    recent: Box<[(u64, Step); RECENT]>,
}

impl Default for Unwinder {
    fn default() -> Self {
        Self {
            steps: PcMap::default(),
            // PC 0 is in no function, as the empty slots say.
            recent: Box::new([(0, Step::Outside); RECENT]),
        }
    }
}

impl Unwinder {
    fn step(&mut self, binary: &GoBinary, link_pc: u64) -> Step {
        let slot = (link_pc.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 55) as usize % RECENT;
        let (pc, step) = self.recent[slot];
        if pc == link_pc {
            return step;
        }
        let step = self.lookup(binary, link_pc);
        self.recent[slot] = (link_pc, step);
        step
    }

    fn lookup(&mut self, binary: &GoBinary, link_pc: u64) -> Step {
        if let Some(&s) = self.steps.get(&link_pc) {
            return s;
        }
        let table = binary.pclntab();
        let step = match table.find_func(link_pc) {
            None => Step::Outside,
            Some(f) => {
                let last = f.name == "runtime.goexit" || STACK_SWITCHES.contains(&f.name.as_str());
                Step::Frame {
                    entry: f.entry,
                    delta: if last {
                        None
                    } else {
                        table
                            .sp_delta(&f, link_pc)
                            .and_then(|d| u64::try_from(d).ok())
                    },
                    injected: INJECTED_CALLS.contains(&f.name.as_str()),
                }
            }
        };
        self.steps.insert(link_pc, step);
        step
    }

    /// Walks from (`sp`, `pc`), both runtime addresses, into `frames` (cleared first); `bias`
    /// turns them into link-time PCs. See [`unwind`].
    pub fn unwind_into(
        &mut self,
        binary: &GoBinary,
        stack: &StackMemory,
        sp: u64,
        pc: u64,
        bias: u64,
        frames: &mut Vec<PhysFrame>,
    ) {
        self.walk(binary, stack, sp, pc, bias, frames, |_, _| {});
    }

    /// [`Unwinder::unwind_into`], which also lists in `reads` (cleared first) every word of
    /// the stack the walk read, as (offset from `stack.base`, value). The walk depends on
    /// nothing else of the stack: another stack of the same length from the same `pc`, `sp`
    /// at its base, with the same words at those offsets, unwinds to the same PCs.
    #[allow(clippy::too_many_arguments)]
    pub fn unwind_recording(
        &mut self,
        binary: &GoBinary,
        stack: &StackMemory,
        sp: u64,
        pc: u64,
        bias: u64,
        frames: &mut Vec<PhysFrame>,
        reads: &mut Vec<(u64, u64)>,
    ) {
        reads.clear();
        let base = stack.base;
        self.walk(binary, stack, sp, pc, bias, frames, |addr, word| {
            reads.push((addr - base, word));
        });
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn walk(
        &mut self,
        binary: &GoBinary,
        stack: &StackMemory,
        sp: u64,
        pc: u64,
        bias: u64,
        frames: &mut Vec<PhysFrame>,
        mut read: impl FnMut(u64, u64),
    ) {
        frames.clear();
        let (mut sp, mut pc) = (sp, pc);
        let mut trap = false;
        while frames.len() < MAX_FRAMES {
            let link_pc = pc.wrapping_sub(bias);
            let Step::Frame {
                entry,
                delta,
                injected,
            } = self.step(binary, link_pc)
            else {
                break;
            };
            let lookup_pc = if trap || link_pc == entry {
                link_pc
            } else {
                link_pc - 1
            };
            frames.push(PhysFrame {
                pc: link_pc,
                lookup_pc,
                sp,
            });
            let Some(delta) = delta else { break };
            // amd64 has no link register: the return address is the word below the caller's
            // SP. The SP comes from the target's memory: a garbage one ends the walk, not
            // leaktrace.
            let Some(fp) = sp.checked_add(delta).and_then(|v| v.checked_add(8)) else {
                break;
            };
            let Some(ret) = stack.word(fp - 8) else { break };
            read(fp - 8, ret);
            if ret == 0 {
                break;
            }
            sp = fp;
            pc = ret;
            trap = injected;
        }
    }
}

/// Functions that switch stacks or start one: the walk of a goroutine's stack ends at them.
pub(super) const STACK_SWITCHES: [&str; 4] = [
    "runtime.systemstack",
    "runtime.mstart",
    "runtime.mcall",
    "runtime.morestack",
];

/// Walks from (`sp`, `pc`), both runtime addresses; `bias` turns them into link-time PCs.
/// The first PC is a return address: `g.sched` is always saved by a call (gopark's `mcall`,
/// `asyncPreempt2`'s `mcall`, `entersyscall`), even for a goroutine stopped asynchronously,
/// whose interrupted frame sits above `runtime.asyncPreempt`.
pub fn unwind(
    binary: &GoBinary,
    stack: &StackMemory,
    sp: u64,
    pc: u64,
    bias: u64,
) -> Vec<PhysFrame> {
    let mut frames = Vec::new();
    Unwinder::default().unwind_into(binary, stack, sp, pc, bias, &mut frames);
    frames
}
