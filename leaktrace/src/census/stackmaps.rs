//! Precise stack scanning for the reachability pass ([`super::reach`]), as Go's GC scans a
//! stopped goroutine (go1.21.13..go1.27.3 `runtime/mgcmark.go` `scanstack` and
//! `scanframeworker`, `runtime/stkframe.go` `getStackMap`, `runtime/traceback.go`
//! `resolveInternal`): frame by frame from the saved SP and PC, only the words the
//! compiler's stack maps say hold a live pointer at the frame's PC.
//!
//! A frame of function f stopped at PC (a return address, looked up at PC-1) spans
//! `[sp, fp)`, `fp = sp + pcsp(PC) + 8` (amd64: the return address sits at `fp - 8`, the
//! caller's frame pointer below it when the frame is not empty). Its locals end at
//! `varp = fp - 16` (`fp - 8` for an empty frame), and bitmap number `PCDATA_StackMapIndex(PC)`
//! of `FUNCDATA_LocalsPointerMaps` covers the `nbit` words below `varp`; its arguments
//! start at `argp = fp`, in the caller's outgoing area, and the same bitmap number of
//! `FUNCDATA_ArgsPointerMaps` covers them. The variables whose address is taken
//! (`FUNCDATA_StackObjects`, at `off` from varp or argp) are scanned over their pointer
//! bytes: all of them, where Go scans only those a live slot points to (a superset; it also
//! covers the `_defer` and `_panic` records Go reaches from `g._defer` and `g._panic`, which
//! live in such objects or in the heap, reached through the g).
//!
//! As Go does, `runtime.asyncPreempt` and `runtime.debugCallV2` frames, and the frame they
//! interrupted, are scanned conservatively (every word); so is `runtime.sigpanic` and the
//! frame that faulted (Go looks that one up at its `deferreturn`). Anything the pass cannot
//! decode goes toward reachable: a frame without a map for its PC (index -1, out of range, a
//! missing table, sizes that do not fit) is scanned whole, one with an unknown argument size
//! (reflect's stubs) and its caller whole too, and where the walk cannot go on (a PC in no
//! function, a return address outside the stack, a stack switch) the rest of the stack is
//! scanned whole. Goroutines not stopped at a safe point (running, copying their stack) are
//! scanned whole from `stack.lo`, as before.
//!
//! Not covered, as before this module: pointers only in the extended registers of an
//! asynchronously preempted goroutine, which Go 1.25+ saves off the stack (`xRegScan`).

use serde::Serialize;

use super::{
    goroutines::RawG,
    retained::Heap,
    unwind::{INJECTED_CALLS, PcMap, STACK_SWITCHES},
};
use crate::tracee::{
    Target,
    pclntab::{FrameMaps, Pclntab, StackObject, stack_objects},
};

const G_RUNNABLE: u32 = 1;
const G_SYSCALL: u32 = 3;
const G_WAITING: u32 = 4;
const G_PREEMPTED: u32 = 9;
const G_LEAKED: u32 = 10;
const G_SCAN: u32 = 0x1000;
/// At most this many frames per stack; a deeper walk scans the rest whole.
const MAX_FRAMES: usize = 100_000;

/// How stacks are scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum StackMode {
    /// By the stack maps where they can be read, every word of a frame where not.
    #[default]
    #[serde(rename = "stack maps")]
    Precise,
    /// Every word from the saved SP to `stack.hi` (to compare).
    #[serde(rename = "conservative")]
    Conservative,
}

/// How one pass scanned the stacks it scanned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StackScan {
    pub mode: StackMode,
    /// Goroutine stacks scanned (roots, revived, and the unreachable ones measured).
    pub stacks: u64,
    /// Frames scanned by their stack maps.
    pub precise_frames: u64,
    /// Frames scanned whole: asynchronous preemption and the frame it stopped, a PC without
    /// a stack map, an unknown argument size, ...
    pub conservative_frames: u64,
    /// Stacks scanned whole, or from a frame the walk could not get past: goroutines not
    /// stopped at a safe point, unwinding that did not reach `runtime.goexit`, and every
    /// stack in conservative mode.
    pub conservative_stacks: u64,
}

impl StackScan {
    /// "N frames by stack maps, M whole, K stacks whole", for the evidence line.
    pub fn summary(&self) -> String {
        match self.mode {
            StackMode::Conservative => "conservative".to_string(),
            StackMode::Precise => format!(
                "{} frames by stack maps, {} frames and {} stacks conservatively",
                self.precise_frames, self.conservative_frames, self.conservative_stacks
            ),
        }
    }
}

/// Where the walk goes after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// On to the caller, at the return address below `fp`.
    Caller,
    /// `runtime.goexit`: the outermost frame of every goroutine; done.
    Goexit,
    /// A function that switches or starts stacks: what is above is not known.
    Lost,
}

/// How one frame is scanned.
#[derive(Debug, Clone)]
enum FrameScan<'t> {
    Precise {
        /// Bitmaps and their lengths in words: locals below varp, arguments from argp.
        locals: (&'t [u8], u64),
        args: (&'t [u8], u64),
        objects: Vec<StackObject>,
    },
    /// Every word of `[sp, varp)` and of the arguments.
    Whole,
}

/// What the walk needs of the function at one link-time PC.
#[derive(Debug, Clone)]
struct FrameInfo<'t> {
    /// pcsp at the PC: `fp = sp + delta + 8`.
    delta: u64,
    end: End,
    /// asyncPreempt, sigpanic, debugCallV2: the caller stopped at an arbitrary instruction
    /// and is scanned whole.
    injected: bool,
    /// Bytes of arguments and results from argp; None when unknown (reflect's stubs), and
    /// then the caller, whose frame holds them, is scanned whole.
    args: Option<u64>,
    scan: FrameScan<'t>,
}

/// Scans the stacks of one pass, each PC's maps decoded once.
pub(super) struct Stacks<'t> {
    table: Pclntab<'t>,
    bias: u64,
    /// Link-time PC -> index in `infos`, or None: in no function, or no frame size.
    by_pc: PcMap<u64, Option<usize>>,
    infos: Vec<FrameInfo<'t>>,
    pub(super) scan: StackScan,
}

impl<'t> Stacks<'t> {
    pub(super) fn new(target: &'t Target, mode: StackMode) -> Self {
        Self {
            table: target.binary.pclntab(),
            bias: target.load_bias,
            by_pc: PcMap::default(),
            infos: Vec::new(),
            scan: StackScan {
                mode,
                ..StackScan::default()
            },
        }
    }

    /// Reads the stacks of `gs` and appends to `words` what they hold that may point into
    /// the heap; `counts[i]` (cleared first) says how many of them came from `gs[i]`.
    pub(super) fn words(
        &mut self,
        heap: &mut Heap,
        gs: &[&RawG],
        words: &mut Vec<u64>,
        counts: &mut Vec<usize>,
    ) {
        counts.clear();
        let ranges: Vec<Option<(u64, u64)>> = gs.iter().map(|g| stack_range(g)).collect();
        let read: Vec<(u64, u64)> = ranges.iter().flatten().copied().collect();
        let mut raw = Vec::new();
        heap.read_words(&read, &mut raw);
        let mut at = 0;
        for (g, range) in gs.iter().zip(ranges) {
            let before = words.len();
            if let Some((base, len)) = range {
                let n = (len / 8) as usize;
                let stack = raw.get(at..(at + n).min(raw.len())).unwrap_or_default();
                at += n;
                self.scan.stacks += 1;
                if self.scan.mode == StackMode::Precise && at_safe_point(g) {
                    self.frames(g, base, stack, words);
                } else {
                    self.scan.conservative_stacks += 1;
                    words.extend_from_slice(stack);
                }
            }
            counts.push(words.len() - before);
        }
    }

    /// Walks the frames of `g`, whose stack from its saved SP is `stack` (words from
    /// `base`), appending the words its stack maps mark (see the module header).
    fn frames(&mut self, g: &RawG, base: u64, stack: &[u64], out: &mut Vec<u64>) {
        let hi = base + 8 * stack.len() as u64;
        let word = |a: u64| -> Option<u64> {
            let i = usize::try_from(a.checked_sub(base)? / 8).ok()?;
            stack.get(i).copied()
        };
        let words = |lo: u64, end: u64, out: &mut Vec<u64>| {
            if let (Some(i), Some(j)) = (lo.checked_sub(base), end.checked_sub(base)) {
                let (i, j) = ((i / 8) as usize, ((j / 8) as usize).min(stack.len()));
                if i < j {
                    out.extend_from_slice(&stack[i..j]);
                }
            }
        };
        let (mut sp, mut pc) = (g.sched_sp, g.sched_pc);
        let mut whole_next = false;
        for _ in 0..MAX_FRAMES {
            let Some(i) = self.info(pc.wrapping_sub(self.bias)) else {
                break;
            };
            let info = &self.infos[i];
            let Some(fp) = sp.checked_add(info.delta + 8).filter(|&fp| fp <= hi) else {
                break;
            };
            if info.end == End::Lost {
                break;
            }
            let varp = if info.delta > 0 { fp - 16 } else { fp - 8 };
            match &info.scan {
                FrameScan::Precise {
                    locals,
                    args,
                    objects,
                } if !whole_next => {
                    self.scan.precise_frames += 1;
                    marked(varp - 8 * locals.1, locals, &word, out);
                    marked(fp, args, &word, out);
                    for o in objects {
                        let from = if o.off >= 0 { fp } else { varp };
                        let at = from.wrapping_add_signed(i64::from(o.off));
                        // Below sp: not allocated in the frame yet.
                        if at >= sp {
                            words(at, at.saturating_add(u64::from(o.ptr_bytes)), out);
                        }
                    }
                }
                _ => {
                    self.scan.conservative_frames += 1;
                    words(sp, varp, out);
                    words(fp, fp.saturating_add(info.args.unwrap_or(0)), out);
                }
            }
            if info.end == End::Goexit {
                return;
            }
            whole_next = info.injected || info.args.is_none();
            match word(fp - 8) {
                Some(ret) if ret != 0 => (sp, pc) = (fp, ret),
                _ => {
                    sp = fp;
                    break;
                }
            }
        }
        // The walk stopped short of goexit: the rest, from the frame it could not pass.
        self.scan.conservative_stacks += 1;
        words(sp, hi, out);
    }

    /// The index in `infos` of what the walk needs at `link_pc`, decoded once.
    fn info(&mut self, link_pc: u64) -> Option<usize> {
        if let Some(&i) = self.by_pc.get(&link_pc) {
            return i;
        }
        let info = self.decode(link_pc);
        let i = info.map(|info| {
            self.infos.push(info);
            self.infos.len() - 1
        });
        self.by_pc.insert(link_pc, i);
        i
    }

    fn decode(&self, link_pc: u64) -> Option<FrameInfo<'t>> {
        let f = self.table.find_func(link_pc)?;
        let delta = u64::try_from(self.table.sp_delta(&f, link_pc)?).ok()?;
        let name = f.name.as_str();
        let end = if name == "runtime.goexit" {
            End::Goexit
        } else if STACK_SWITCHES.contains(&name) {
            End::Lost
        } else {
            End::Caller
        };
        let injected = INJECTED_CALLS.contains(&name);
        let lookup = if link_pc == f.entry {
            link_pc
        } else {
            link_pc - 1
        };
        let maps = self.table.frame_maps(&f, lookup);
        let scan = match &maps {
            Some(maps) if !injected => precise(maps, delta).unwrap_or(FrameScan::Whole),
            _ => FrameScan::Whole,
        };
        Some(FrameInfo {
            delta,
            end,
            injected,
            args: maps.and_then(|m| m.args),
            scan,
        })
    }
}

/// The precise scan of a frame of `delta` bytes by `maps`, as `getStackMap` reads them; None
/// where Go would throw or guess (no map, index -1 or out of range, a map larger than the
/// frame, unreadable stack objects).
fn precise<'t>(maps: &FrameMaps<'t>, delta: u64) -> Option<FrameScan<'t>> {
    if !maps.has_gofunc {
        return None;
    }
    // Bytes below varp: the frame less the caller's saved frame pointer.
    let local_bytes = delta.saturating_sub(8);
    let bitmap = |map: Option<_>, room: u64| -> Option<(&'t [u8], u64)> {
        let map: crate::tracee::pclntab::StackMap = map?;
        if map.n <= 0 {
            return None;
        }
        if map.nbit == 0 {
            return Some((&[][..], 0));
        }
        let bits = map.bitmap(maps.index)?;
        let n = u64::try_from(map.nbit).ok()?;
        (8 * n <= room).then_some((bits, n))
    };
    let locals = if local_bytes > 0 {
        bitmap(maps.locals, local_bytes)?
    } else {
        (&[][..], 0)
    };
    let args = match maps.args? {
        0 => (&[][..], 0),
        n => bitmap(maps.args_map, n)?,
    };
    let objects = match maps.objects {
        Some(data) => stack_objects(data)?,
        None => Vec::new(),
    };
    Some(FrameScan::Precise {
        locals,
        args,
        objects,
    })
}

/// Appends the words at `from + 8 * i` for each bit i set in `map` (`map.1` bits).
fn marked(from: u64, map: &(&[u8], u64), word: &impl Fn(u64) -> Option<u64>, out: &mut Vec<u64>) {
    for i in 0..map.1 {
        if map.0[(i / 8) as usize] & (1 << (i % 8)) != 0
            && let Some(w) = word(from + 8 * i)
        {
            out.push(w);
        }
    }
}

/// Whether `g` is stopped where Go's GC would scan it precisely, its registers saved in
/// `g.sched` (`g.syscallsp` equals `g.sched.sp` on linux): waiting, runnable, in a syscall,
/// preempted, or leaked.
fn at_safe_point(g: &RawG) -> bool {
    let status = g.status & !G_SCAN;
    matches!(
        status,
        G_RUNNABLE | G_SYSCALL | G_WAITING | G_PREEMPTED | G_LEAKED
    ) && g.sched_pc != 0
        && (g.stack_lo..g.stack_hi).contains(&g.sched_sp)
}

/// The part of a goroutine's stack to read: from its saved SP to `stack.hi` when it is
/// stopped at a safe point, or all of it (a running goroutine's saved SP is stale).
pub(super) fn stack_range(g: &RawG) -> Option<(u64, u64)> {
    if g.stack_hi <= g.stack_lo {
        return None;
    }
    let from = if at_safe_point(g) {
        g.sched_sp & !7
    } else {
        g.stack_lo
    };
    Some((from, g.stack_hi - from))
}
