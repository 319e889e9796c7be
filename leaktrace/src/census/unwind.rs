//! Unwinding a goroutine that is not running, from its saved `g.sched` registers, the way the
//! Go runtime's own traceback does (runtime/traceback.go, `unwinder.next`): each frame's size
//! comes from the function's `pcsp` table, the return address sits just below the caller's
//! SP. Frame pointers are not enough: since Go 1.21 `mcall` stores the *caller's caller's*
//! frame pointer in `g.sched.bp` (CL 476235, asm_amd64.s), which would drop the function that
//! called `gopark` from every parked stack.

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
    fn word(&self, addr: u64) -> Option<u64> {
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
const INJECTED_CALLS: [&str; 3] = [
    "runtime.asyncPreempt",
    "runtime.sigpanic",
    "runtime.debugCallV2",
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
    let table = binary.pclntab();
    let wrapper_systemstack = [
        "runtime.systemstack",
        "runtime.mstart",
        "runtime.mcall",
        "runtime.morestack",
    ];
    let mut frames = Vec::new();
    let (mut sp, mut pc) = (sp, pc);
    let mut trap = false;
    while frames.len() < MAX_FRAMES {
        let link_pc = pc.wrapping_sub(bias);
        let Some(f) = table.find_func(link_pc) else {
            break;
        };
        let lookup_pc = if trap || link_pc == f.entry {
            link_pc
        } else {
            link_pc - 1
        };
        frames.push(PhysFrame {
            pc: link_pc,
            lookup_pc,
            sp,
        });
        if f.name == "runtime.goexit" || wrapper_systemstack.contains(&f.name.as_str()) {
            break;
        }
        let Some(delta) = table.sp_delta(&f, link_pc) else {
            break;
        };
        let Ok(delta) = u64::try_from(delta) else {
            break;
        };
        // amd64 has no link register: the return address is the word below the caller's SP.
        // The SP comes from the target's memory: a garbage one ends the walk, not leaktrace.
        let Some(fp) = sp.checked_add(delta).and_then(|v| v.checked_add(8)) else {
            break;
        };
        let Some(ret) = stack.word(fp - 8) else { break };
        if ret == 0 {
            break;
        }
        sp = fp;
        pc = ret;
        trap = INJECTED_CALLS.contains(&f.name.as_str());
    }
    frames
}
