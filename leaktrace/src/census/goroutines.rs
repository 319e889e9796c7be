//! A read-only walk of every goroutine in the target: status, wait reason, how long it has
//! waited, its stack, and where it was created, as `runtime.Stack(all)` would print them.
//!
//! The walk itself, batched and incremental, is [`Census`] (census/snapshots.rs); this file
//! holds what it produces and how a PC becomes the frames Go prints.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;

pub use super::snapshots::Census;

/// g structs read per batch: their buffer (~480 KiB, a g is 456 bytes in a 480-byte slot)
/// stays in the CPU's L2 cache (1 MiB on this project's VMs) until they are decoded, and so
/// do the decoded ones until a snapshot has listed them.
pub(crate) const G_BATCH: usize = 1024;
use super::unwind::{PcMap, PhysFrame};
use crate::tracee::{Target, batch, layout::GOffsets, pclntab::Frame};

/// One frame of a goroutine's stack, innermost first; inlined calls are frames of their own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StackFrame {
    /// Shared with every other frame at the same PC.
    pub function: Arc<str>,
    pub file: Arc<str>,
    pub line: u32,
    /// The physical PC (link-time address) this frame belongs to.
    #[serde(skip)]
    pub pc: u64,
    /// True for a call inlined into the next frame (Go prints it with `(...)`).
    #[serde(skip)]
    pub inlined: bool,
    /// False for frames Go's own traceback hides: runtime internals and wrappers.
    #[serde(skip)]
    pub shown: bool,
}

/// Where a goroutine was created: the `go` statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct CreatedBy {
    /// Shared by every goroutine created at the same `go` statement.
    pub function: Arc<str>,
    pub file: Arc<str>,
    pub line: u32,
    /// The goroutine that executed the `go` statement (0 before Go recorded it).
    pub goid: u64,
    /// `g.gopc` as a link-time address: the return address of the `go` statement's call
    /// into the runtime, where a targeted probe counts creations.
    #[serde(skip)]
    pub pc: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GoroutineSnapshot {
    pub goid: u64,
    /// `g.atomicstatus` without the scan bit.
    pub status: u32,
    /// What Go prints between the brackets: the wait reason for a waiting goroutine
    /// ("chan send"), else the status ("running", "runnable", "syscall"). Shared by every
    /// goroutine in the same state.
    pub state: Arc<str>,
    /// For a waiting goroutine, the raw `waitReason`.
    pub wait_reason_value: Option<u8>,
    /// How long it has been waiting, when the runtime recorded it: `g.waitsince` is set by
    /// the GC the first time it finds the goroutine blocked, so a goroutine that blocked after
    /// the last GC has no figure yet.
    pub waiting: Option<Duration>,
    /// Shared by every goroutine stopped at the same PCs, and kept from one snapshot to the
    /// next while the goroutine does not run.
    pub stack: Arc<[StackFrame]>,
    pub created_by: Option<CreatedBy>,
    /// The goroutine's start function (`g.startpc`), e.g. `main.main.gowrap1`.
    pub start_function: Option<Arc<str>>,
    /// A runtime-internal goroutine, which Go's tracebacks leave out.
    pub system: bool,
    /// The g's address in the target.
    pub g_addr: u64,
    /// `g.trackingSeq`: one more each time the goroutine stops running.
    pub tracking_seq: u8,
    /// The g's index in `runtime.allgs`, where the census keeps what it knows of it.
    #[serde(skip)]
    pub(crate) allgs_index: usize,
}

impl GoroutineSnapshot {
    /// Go's traceback header: `goroutine 18 [chan send, 3 minutes]:`.
    pub fn header(&self) -> String {
        let minutes = self.waiting.map(|w| w.as_secs() / 60).unwrap_or(0);
        if minutes >= 1 {
            format!(
                "goroutine {} [{}, {} minutes]:",
                self.goid, self.state, minutes
            )
        } else {
            format!("goroutine {} [{}]:", self.goid, self.state)
        }
    }

    /// The frames Go's traceback would print.
    pub fn shown_frames(&self) -> impl Iterator<Item = &StackFrame> {
        self.stack.iter().filter(|f| f.shown)
    }
}

/// Go's names for g statuses, for the traceback header (runtime/traceback.go gStatusStrings).
pub(crate) fn status_string(status: u32) -> &'static str {
    match status {
        0 => "idle",
        1 => "runnable",
        2 => "running",
        3 => "syscall",
        4 => "waiting",
        5 => "moribund",
        6 => "dead",
        7 => "enqueue",
        8 => "copystack",
        9 => "preempted",
        10 => "leaked",
        _ => "???",
    }
}

/// Go's `isExportedRuntime` (runtime/traceback.go): `runtime.Gosched`, `runtime.(*Func).Name`.
fn is_exported_runtime(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("runtime.") else {
        return false;
    };
    let (rcvr, func) = match rest.rfind('.') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => ("", rest),
    };
    let rcvr = rcvr
        .strip_prefix("(*")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(rcvr);
    let upper = |s: &str| s.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    upper(func) && (rcvr.is_empty() || upper(rcvr))
}

/// Go's `showfuncinfo` at GOTRACEBACK=single (runtime/traceback.go): runtime internals are
/// hidden, exported runtime functions and everything else are shown.
pub fn shown_by_go(name: &str) -> bool {
    name.contains('.') && (!name.starts_with("runtime.") || is_exported_runtime(name))
}

/// Go's `isSystemGoroutine` (runtime/traceback.go) with fixed=false, as `runtime.Stack` uses
/// it: a goroutine started in package runtime, except runtime.main and the coroutine and
/// event entry points. The finalizer goroutine counts as a system one here.
pub(crate) fn is_system(start_function: Option<&str>) -> bool {
    match start_function {
        Some("runtime.main" | "runtime.corostart" | "runtime.handleAsyncEvent") => false,
        Some(f) => f.starts_with("runtime."),
        None => false,
    }
}

#[derive(Default)]
pub(crate) struct RawG {
    pub(crate) addr: u64,
    pub(crate) status: u32,
    pub(crate) goid: u64,
    pub(crate) waitsince: i64,
    pub(crate) waitreason: u8,
    pub(crate) tracking_seq: u8,
    /// `g.waiting`: the sudog a goroutine blocked in a channel operation waits with.
    pub(crate) waiting: u64,
    pub(crate) parent_goid: u64,
    pub(crate) gopc: u64,
    pub(crate) startpc: u64,
    pub(crate) stack_lo: u64,
    pub(crate) stack_hi: u64,
    pub(crate) sched_sp: u64,
    pub(crate) sched_pc: u64,
}

/// The little-endian u64 at `off` in `b`; 0 past its end.
pub(crate) fn u64_at(b: &[u8], off: u64) -> u64 {
    let o = off as usize;
    b.get(o..o + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap()))
}

/// The little-endian u32 at `off` in `b`; 0 past its end.
pub(crate) fn u32_at(b: &[u8], off: u64) -> u32 {
    let o = off as usize;
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()))
}

/// The addresses of every g in `runtime.allgs`.
pub(crate) fn all_gs(target: &Target) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    all_gs_into(target, &mut out)?;
    Ok(out)
}

/// [`all_gs`] into `out`, whose buffer a caller that walks the goroutines again and again
/// reuses: for a million goroutines a fresh one is 2,000 page faults.
pub(crate) fn all_gs_into(target: &Target, out: &mut Vec<u64>) -> anyhow::Result<()> {
    let allgs = target.globals()?.allgs + target.load_bias;
    pointer_slice_into(target, allgs, "runtime.allgs", 50_000_000, out)
}

/// At most this many Ps are read from `runtime.allp` (one per GOMAXPROCS).
pub(crate) const MAX_PS: u64 = 1 << 20;

/// The non-nil pointers of the Go slice `name` (a `[]*T`, at `addr` in the target), which
/// may hold at most `max_len` of them.
pub(crate) fn pointer_slice(
    target: &Target,
    addr: u64,
    name: &str,
    max_len: u64,
) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    pointer_slice_into(target, addr, name, max_len, &mut out)?;
    Ok(out)
}

/// [`pointer_slice`] into `out` (cleared first).
fn pointer_slice_into(
    target: &Target,
    addr: u64,
    name: &str,
    max_len: u64,
    out: &mut Vec<u64>,
) -> anyhow::Result<()> {
    let mut hdr = [0u8; 16];
    target
        .process
        .read(addr, &mut hdr)
        .with_context(|| format!("reading {name}"))?;
    let (ptr, len) = (u64_at(&hdr, 0), u64_at(&hdr, 8));
    if len > max_len {
        bail!(
            "{name} has an implausible length {len}: the runtime layout does not match this binary"
        );
    }
    out.clear();
    out.resize(len as usize, 0);
    // SAFETY: the bytes of `out`'s `len` initialized words, which it owns; any bytes are a
    // valid u64.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len() * 8) };
    target
        .process
        .read(ptr, bytes)
        .with_context(|| format!("reading the array of {name}"))?;
    out.retain_mut(|p| {
        *p = u64::from_le(*p);
        *p != 0
    });
    Ok(())
}

/// The part of a g that [`RawG`] holds: from the lowest field it reads to the end of the
/// highest, as (offset, length). In Go 1.27, 328 of the 456 bytes of a g.
fn g_span(l: &GOffsets) -> (u64, usize) {
    let fields = [
        (l.stack_lo, 8),
        (l.stack_hi, 8),
        (l.sched_sp, 8),
        (l.sched_pc, 8),
        (l.atomicstatus, 4),
        (l.goid, 8),
        (l.waitsince, 8),
        (l.waitreason, 1),
        (l.tracking_seq, 1),
        (l.parent_goid, 8),
        (l.gopc, 8),
        (l.startpc, 8),
        (l.waiting, 8),
    ];
    let lo = fields.iter().map(|f| f.0).min().unwrap_or(0);
    let hi = fields
        .iter()
        .map(|f| f.0 + f.1)
        .max()
        .unwrap_or(0)
        .min(l.size);
    (lo, hi.saturating_sub(lo) as usize)
}

/// The g structs at `addrs`, read in batches; a g that cannot be read (garbage in allgs)
/// reads as zeros, which is a dead g.
pub(crate) fn read_gs(target: &Target, addrs: &[u64]) -> anyhow::Result<Vec<RawG>> {
    let mut out = Vec::new();
    read_gs_into(target, addrs, &mut out, &mut Vec::new())?;
    Ok(out)
}

/// [`read_gs`] into `out` (cleared first), through `scratch`, [`G_BATCH`] at a time.
fn read_gs_into(
    target: &Target,
    addrs: &[u64],
    out: &mut Vec<RawG>,
    scratch: &mut Vec<u8>,
) -> anyhow::Result<()> {
    out.clear();
    for chunk in addrs.chunks(G_BATCH) {
        read_g_batch(target, chunk, out, scratch)?;
    }
    Ok(())
}

/// Appends the g structs at `addrs` (at most [`G_BATCH`] of them, for their buffer to stay
/// in the caches) to `out`, through `scratch`: a caller that reads them again and again
/// passes the same ones. A g that cannot be read (garbage in allgs) reads as zeros, which
/// is a dead g.
pub(crate) fn read_g_batch(
    target: &Target,
    addrs: &[u64],
    out: &mut Vec<RawG>,
    scratch: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let l = &target.layout.g;
    let (lo, len) = g_span(l);
    let first = out.len();
    out.extend(addrs.iter().map(|&addr| RawG::unread(addr)));
    let out = &mut out[first..];
    let ranges: Vec<(u64, usize)> = addrs.iter().map(|&a| (a + lo, len)).collect();
    // g structs are allocated packed in their spans: read as few stretches as that allows
    // (the kernel pins pages once per range, which costs more than copying the unused tail
    // of each g), and decode them where they landed.
    batch::visit_coalesced(&target.process, &ranges, l.size, scratch, |i, g| {
        if let Some(g) = g {
            out[i] = RawG::decode(l, addrs[i], lo, g);
        }
    })
    .context("reading goroutine structs")
}

impl RawG {
    /// The g at `addr`, not (yet) read: all zeros, a dead g.
    fn unread(addr: u64) -> Self {
        Self {
            addr,
            ..Self::default()
        }
    }

    /// The g at `addr` from `g`, its bytes from offset `lo` on; fields past the end of `g`
    /// read as zeros.
    fn decode(l: &GOffsets, addr: u64, lo: u64, g: &[u8]) -> Self {
        let at = |off: u64| off - lo;
        Self {
            addr,
            status: u32_at(g, at(l.atomicstatus)),
            goid: u64_at(g, at(l.goid)),
            waitsince: u64_at(g, at(l.waitsince)) as i64,
            waitreason: g.get(at(l.waitreason) as usize).copied().unwrap_or(0),
            tracking_seq: g.get(at(l.tracking_seq) as usize).copied().unwrap_or(0),
            waiting: u64_at(g, at(l.waiting)),
            parent_goid: u64_at(g, at(l.parent_goid)),
            gopc: u64_at(g, at(l.gopc)),
            startpc: u64_at(g, at(l.startpc)),
            stack_lo: u64_at(g, at(l.stack_lo)),
            stack_hi: u64_at(g, at(l.stack_hi)),
            sched_sp: u64_at(g, at(l.sched_sp)),
            sched_pc: u64_at(g, at(l.sched_pc)),
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of Go's nanotime and of bpf_ktime_get_ns.
pub fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Go's `printFuncName` (runtime/traceback.go): `runtime.gopanic` prints as `panic`, and
/// the shape arguments of a generic function as `[...]` (`main.F[go.shape.int]` is
/// `main.F[...]`; a generic method of a generic type, Go 1.27, `T[...].M[...]`).
pub fn print_name(name: &str) -> String {
    if name == "runtime.gopanic" {
        return "panic".into();
    }
    let (Some(i), Some(j)) = (name.find('['), name.rfind(']')) else {
        return name.into();
    };
    if j <= i {
        return name.into();
    }
    let interior = &name[i + 1..j];
    if !interior.contains('[') {
        return format!("{}[...]{}", &name[..i], &name[j + 1..]);
    }
    // "...]___[..." inside the outer brackets: two bracket groups (funcNamePiecesForPrint).
    let (mut depth, mut rbr, mut lbr) = (1i32, None, None);
    for (k, c) in interior.char_indices() {
        match c {
            '[' => {
                depth += 1;
                if depth == 1 {
                    lbr = Some(k);
                    break;
                }
            }
            ']' => {
                depth -= 1;
                if depth < 0 {
                    break;
                }
                if depth == 0 {
                    rbr = Some(k);
                }
            }
            _ => {}
        }
    }
    match (depth, rbr, lbr) {
        (1, Some(r), Some(l)) if l > r => format!(
            "{}[...]{}[...]{}",
            &name[..i],
            &interior[r + 1..l],
            &name[j + 1..]
        ),
        (1, None, None) => format!("{}[...]{}", &name[..i], &name[j + 1..]),
        _ => name.into(),
    }
}

/// Go elides a wrapper frame unless the wrapper itself called a panic function
/// (runtime/traceback.go `elideWrapperCalling`).
fn elide_wrapper_calling(callee: Option<&str>) -> bool {
    !matches!(
        callee,
        Some("runtime.gopanic" | "runtime.sigpanic" | "runtime.panicwrap")
    )
}

/// What one physical PC symbolizes to, computed once: most goroutines of a program
/// stop at the same few PCs.
struct PcInfo {
    /// Innermost first; the last one is the physical function.
    frames: Vec<Frame>,
    /// The physical function is a compiler wrapper (funcID wrapper).
    wrapper: bool,
}

/// A `go` statement's function, file and line.
type GoStatement = (Arc<str>, Arc<str>, u32);

/// What every goroutine created at one `go` statement (`g.gopc`) to start one function
/// (`g.startpc`) shares, looked up once: one lookup per goroutine instead of one for its
/// creation site and one for its start function.
pub(crate) struct Site {
    /// The `go` statement, when `g.gopc` is in a function.
    statement: Option<GoStatement>,
    /// `g.gopc` as a link-time address.
    pc: u64,
    pub(crate) start_function: Option<Arc<str>>,
    /// Started in the runtime (see [`is_system`]).
    pub(crate) system: bool,
}

impl Site {
    /// Where `g` (one of this site's goroutines) was created; none for the main goroutine
    /// and for one the runtime started without a `go` statement.
    pub(crate) fn created_by(&self, g: &RawG) -> Option<CreatedBy> {
        let (function, file, line) = self.statement_of(g)?.clone();
        Some(CreatedBy {
            function,
            file,
            line,
            goid: g.parent_goid,
            pc: self.pc,
        })
    }

    /// The `go` statement that created `g`: none for the main goroutine and for one the
    /// runtime started without one.
    fn statement_of(&self, g: &RawG) -> Option<&GoStatement> {
        self.statement
            .as_ref()
            .filter(|_| g.gopc != 0 && g.goid != 1)
    }

    /// Makes `slot` what [`Site::created_by`] gives for `g`, touching no reference count
    /// where it already holds the same strings.
    pub(crate) fn write_created_by(&self, g: &RawG, slot: &mut Option<CreatedBy>) {
        match (self.statement_of(g), slot.as_mut()) {
            (Some((function, file, line)), Some(c)) => {
                set_arc(&mut c.function, function);
                set_arc(&mut c.file, file);
                c.line = *line;
                c.goid = g.parent_goid;
                c.pc = self.pc;
            }
            (Some(_), None) => *slot = self.created_by(g),
            (None, _) => *slot = None,
        }
    }
}

/// Makes `slot` point where `new` does, cloning (an atomic update of two counts) only if it
/// does not already.
pub(crate) fn set_arc<T: ?Sized>(slot: &mut Arc<T>, new: &Arc<T>) {
    if !Arc::ptr_eq(slot, new) {
        *slot = Arc::clone(new);
    }
}

/// Symbolizes stacks and creation sites of one target's goroutines, caching by PC (the
/// function, its inlined calls, file and line) for as long as it lives: a program's
/// goroutines stop at, and were created at, a few hundred distinct PCs.
#[derive(Default)]
pub(crate) struct Symbolizer {
    pcs: PcMap<u64, PcInfo>,
    /// By (`g.gopc`, `g.startpc`).
    sites: PcMap<(u64, u64), Site>,
    /// The header's state by (status, wait reason).
    states: PcMap<u64, Arc<str>>,
}

impl Symbolizer {
    /// What Go prints between the brackets of the header: the wait reason of a waiting
    /// goroutine ("chan send"), else its status ("running", "runnable", "syscall").
    pub(crate) fn state(&mut self, target: &Target, status: u32, waitreason: u8) -> &Arc<str> {
        let key = u64::from(status) << 8 | u64::from(waitreason);
        self.states.entry(key).or_insert_with(|| {
            if status == 4 && waitreason != 0 {
                target.reason_name(waitreason).into()
            } else {
                status_string(status).into()
            }
        })
    }

    /// Expands physical frames into source frames (inlined calls first) and marks those
    /// Go's traceback prints, following `traceback2` with showRuntime=false: runtime
    /// internals are hidden, and so are wrappers unless they called a panic function;
    /// `runtime.gopanic` is shown (as `panic`) unless it is the first frame printed. When
    /// that leaves nothing, Go prints every frame (`traceback1`), and so every frame is
    /// marked shown.
    pub(crate) fn stack(&mut self, target: &Target, frames: &[PhysFrame]) -> Vec<StackFrame> {
        let table = target.binary.pclntab();
        let wrapper_id = table.wrapper_id();
        let mut out = Vec::new();
        let mut callee: Option<String> = None;
        let mut printed = 0;
        for pf in frames {
            let info = self.pcs.entry(pf.lookup_pc).or_insert_with(|| PcInfo {
                frames: table.symbolize(pf.lookup_pc),
                wrapper: table
                    .find_func(pf.lookup_pc)
                    .is_some_and(|f| f.func_id == wrapper_id),
            });
            let n = info.frames.len();
            for (i, f) in info.frames.iter().enumerate() {
                let physical = i + 1 == n;
                let name = f.function.as_str();
                let shown = if physical && info.wrapper && elide_wrapper_calling(callee.as_deref())
                {
                    false
                } else if name == "runtime.gopanic" && printed > 0 {
                    true
                } else {
                    shown_by_go(name)
                };
                printed += usize::from(shown);
                callee = Some(f.function.clone());
                out.push(StackFrame {
                    function: print_name(name).into(),
                    file: f.file.as_str().into(),
                    line: f.line,
                    pc: pf.pc,
                    inlined: !physical,
                    shown,
                });
            }
        }
        if printed == 0 {
            for f in &mut out {
                f.shown = true;
            }
        }
        out
    }

    /// The creation site and start function of goroutines created at `gopc` to run
    /// `startpc`.
    pub(crate) fn site(&mut self, target: &Target, gopc: u64, startpc: u64) -> &Site {
        self.sites.entry((gopc, startpc)).or_insert_with(|| {
            let pc = target.link_addr(gopc);
            let table = target.binary.pclntab();
            let statement = (gopc != 0)
                .then(|| {
                    let f = table.find_func(pc)?;
                    // Go names the physical function and gives the position of the call
                    // (pc - 1), which for an inlined `go` statement is in the inlined callee
                    // (traceback.go printcreatedby1).
                    let at = if pc > f.entry { pc - 1 } else { pc };
                    let (file, line) = table.file_line(&f, at)?;
                    Some((print_name(&f.name).into(), file.into(), line))
                })
                .flatten();
            let start_function: Option<Arc<str>> = table
                .find_func(target.link_addr(startpc))
                .map(|f| f.name.into());
            Site {
                statement,
                pc,
                system: is_system(start_function.as_deref()),
                start_function,
            }
        })
    }
}

/// Every live goroutine of the target, system ones included (see
/// [`GoroutineSnapshot::system`]), in allgs order. One full snapshot; a loop that takes
/// many keeps a [`Census`] instead.
pub fn walk(target: &Target) -> anyhow::Result<Vec<GoroutineSnapshot>> {
    Census::full().snapshot(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_hides_runtime_internals_but_shows_exported_runtime_functions() {
        assert!(!shown_by_go("runtime.gopark"));
        assert!(!shown_by_go("runtime.chansend1"));
        assert!(shown_by_go("runtime.Gosched"));
        assert!(shown_by_go("runtime.(*Func).Name"));
        assert!(!shown_by_go("runtime.(*mheap).alloc"));
        assert!(shown_by_go("main.main"));
        assert!(shown_by_go("sync.(*WaitGroup).Wait"));
        assert!(shown_by_go("time.Sleep"));
    }

    #[test]
    fn names_print_as_go_prints_them() {
        assert_eq!(print_name("runtime.gopanic"), "panic");
        assert_eq!(print_name("main.main.func1"), "main.main.func1");
        assert_eq!(print_name("main.recv[go.shape.int]"), "main.recv[...]");
        assert_eq!(
            print_name("main.(*List[go.shape.string]).Push"),
            "main.(*List[...]).Push"
        );
        assert_eq!(
            print_name("main.F[go.shape.[]uint8].func1"),
            "main.F[...].func1"
        );
        assert_eq!(
            print_name("main.T[go.shape.int].M[go.shape.string]"),
            "main.T[...].M[...]"
        );
        assert_eq!(print_name("odd]name["), "odd]name[");
    }

    #[test]
    fn system_goroutines_are_those_started_in_the_runtime() {
        assert!(is_system(Some("runtime.bgsweep")));
        assert!(is_system(Some("runtime.gcBgMarkWorker")));
        assert!(!is_system(Some("runtime.main")));
        assert!(!is_system(Some("main.main.gowrap1")));
    }
}
