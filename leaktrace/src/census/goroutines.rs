//! A read-only walk of every goroutine in the target: status, wait reason, how long it has
//! waited, its stack, and where it was created, as `runtime.Stack(all)` would print them.
//!
//! The walk reads `runtime.allgs` (a `[]*g`), then every g in batches, then each stopped
//! goroutine's stack in one read, and unwinds it locally. The target runs on meanwhile, so a
//! goroutine that changes state during the walk may be seen half-way; such a stack is cut
//! where it stops making sense rather than reported wrong.

use std::{collections::HashMap, io, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::unwind::{self, PhysFrame, StackMemory};
use crate::tracee::{Target, pclntab::Frame};

/// `_Gscan`, or-ed into the status while the GC scans the stack (runtime/runtime2.go,
/// Go 1.21-1.27).
const G_SCAN: u32 = 0x1000;
/// Read at most this much of one goroutine's stack, from its saved SP up; the frames of a
/// deeper stack past that are cut, the outermost ones (where it was started) included.
/// Parked goroutines use a few hundred bytes; a deep recursion a few MiB.
const MAX_STACK_READ: u64 = 64 << 20;
/// Goroutine structs read per `process_vm_readv` call (IOV_MAX is 1024).
const BATCH: usize = 512;

/// One frame of a goroutine's stack, innermost first; inlined calls are frames of their own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StackFrame {
    pub function: String,
    pub file: String,
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
    pub function: String,
    pub file: String,
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
    /// ("chan send"), else the status ("running", "runnable", "syscall").
    pub state: String,
    /// For a waiting goroutine, the raw `waitReason`.
    pub wait_reason_value: Option<u8>,
    /// How long it has been waiting, when the runtime recorded it: `g.waitsince` is set by
    /// the GC the first time it finds the goroutine blocked, so a goroutine that blocked after
    /// the last GC has no figure yet.
    pub waiting: Option<Duration>,
    pub stack: Vec<StackFrame>,
    pub created_by: Option<CreatedBy>,
    /// The goroutine's start function (`g.startpc`), e.g. `main.main.gowrap1`.
    pub start_function: Option<String>,
    /// A runtime-internal goroutine, which Go's tracebacks leave out.
    pub system: bool,
    /// The g's address in the target.
    pub g_addr: u64,
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
fn status_string(status: u32) -> &'static str {
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
fn is_system(start_function: Option<&str>) -> bool {
    match start_function {
        Some("runtime.main" | "runtime.corostart" | "runtime.handleAsyncEvent") => false,
        Some(f) => f.starts_with("runtime."),
        None => false,
    }
}

pub(crate) struct RawG {
    pub(crate) addr: u64,
    pub(crate) status: u32,
    pub(crate) goid: u64,
    waitsince: i64,
    waitreason: u8,
    parent_goid: u64,
    gopc: u64,
    startpc: u64,
    stack_lo: u64,
    stack_hi: u64,
    sched_sp: u64,
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
    let allgs = target.globals()?.allgs + target.load_bias;
    pointer_slice(target, allgs, "runtime.allgs", 50_000_000)
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
    let mut buf = vec![0u8; len as usize * 8];
    target
        .process
        .read(ptr, &mut buf)
        .with_context(|| format!("reading the array of {name}"))?;
    Ok(buf
        .as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_le_bytes(*c))
        .filter(|&p| p != 0)
        .collect())
}

pub(crate) fn read_gs(target: &Target, addrs: &[u64]) -> anyhow::Result<Vec<RawG>> {
    let l = &target.layout.g;
    let size = l.size as usize;
    let mut out = Vec::with_capacity(addrs.len());
    let mut buf = vec![0u8; size * BATCH];
    for chunk in addrs.chunks(BATCH) {
        let ranges: Vec<(u64, usize)> = chunk.iter().map(|&a| (a, size)).collect();
        let bytes = &mut buf[..size * chunk.len()];
        target
            .process
            .read_many(&ranges, bytes)
            .context("reading goroutine structs")?;
        for (i, &addr) in chunk.iter().enumerate() {
            let g = &bytes[i * size..(i + 1) * size];
            out.push(RawG {
                addr,
                status: u32_at(g, l.atomicstatus),
                goid: u64_at(g, l.goid),
                waitsince: u64_at(g, l.waitsince) as i64,
                waitreason: g.get(l.waitreason as usize).copied().unwrap_or(0),
                parent_goid: u64_at(g, l.parent_goid),
                gopc: u64_at(g, l.gopc),
                startpc: u64_at(g, l.startpc),
                stack_lo: u64_at(g, l.stack_lo),
                stack_hi: u64_at(g, l.stack_hi),
                sched_sp: u64_at(g, l.sched_sp),
                sched_pc: u64_at(g, l.sched_pc),
            });
        }
    }
    Ok(out)
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

/// What one physical PC symbolizes to, computed once per walk: most goroutines of a program
/// stop at the same few PCs.
struct PcInfo {
    /// Innermost first; the last one is the physical function.
    frames: Vec<Frame>,
    /// The physical function is a compiler wrapper (funcID wrapper).
    wrapper: bool,
}

/// Symbolizes stacks and creation sites for one walk, caching by PC.
struct Symbolizer<'a> {
    target: &'a Target,
    pcs: HashMap<u64, PcInfo>,
    created: HashMap<u64, Option<(String, String, u32)>>,
    starts: HashMap<u64, Option<String>>,
}

impl<'a> Symbolizer<'a> {
    fn new(target: &'a Target) -> Self {
        Self {
            target,
            pcs: HashMap::new(),
            created: HashMap::new(),
            starts: HashMap::new(),
        }
    }

    /// Expands physical frames into source frames (inlined calls first) and marks those
    /// Go's traceback prints, following `traceback2` with showRuntime=false: runtime
    /// internals are hidden, and so are wrappers unless they called a panic function;
    /// `runtime.gopanic` is shown (as `panic`) unless it is the first frame printed. When
    /// that leaves nothing, Go prints every frame (`traceback1`), and so every frame is
    /// marked shown.
    fn stack(&mut self, frames: &[PhysFrame]) -> Vec<StackFrame> {
        let table = self.target.binary.pclntab();
        let wrapper_id = table.wrapper_id();
        let mut out = Vec::new();
        let mut callee: Option<String> = None;
        let mut printed = 0;
        for pf in frames {
            let info = self.pcs.entry(pf.lookup_pc).or_insert_with(|| PcInfo {
                frames: self.target.binary.symbolize(pf.lookup_pc),
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
                    function: print_name(name),
                    file: f.file.clone(),
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

    fn created_by(&mut self, g: &RawG) -> Option<CreatedBy> {
        if g.gopc == 0 || g.goid == 1 {
            return None;
        }
        let target = self.target;
        let (function, file, line) = self
            .created
            .entry(g.gopc)
            .or_insert_with(|| {
                let pc = target.link_addr(g.gopc);
                let table = target.binary.pclntab();
                let f = table.find_func(pc)?;
                // Go names the physical function and gives the position of the call
                // (pc - 1), which for an inlined `go` statement is in the inlined callee
                // (traceback.go printcreatedby1).
                let at = if pc > f.entry { pc - 1 } else { pc };
                let (file, line) = table.file_line(&f, at)?;
                Some((print_name(&f.name), file, line))
            })
            .clone()?;
        Some(CreatedBy {
            function,
            file,
            line,
            goid: g.parent_goid,
            pc: self.target.link_addr(g.gopc),
        })
    }

    fn start_function(&mut self, startpc: u64) -> Option<String> {
        let target = self.target;
        self.starts
            .entry(startpc)
            .or_insert_with(|| {
                target
                    .binary
                    .pclntab()
                    .find_func(target.link_addr(startpc))
                    .map(|f| f.name)
            })
            .clone()
    }
}

/// The target has exited: its memory is gone, and `process_vm_readv` says ESRCH.
fn exited(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ESRCH)
}

/// Every live goroutine of the target, system ones included (see
/// [`GoroutineSnapshot::system`]), in allgs order.
pub fn walk(target: &Target) -> anyhow::Result<Vec<GoroutineSnapshot>> {
    let addrs = all_gs(target)?;
    let raw = read_gs(target, &addrs)?;
    let now = monotonic_ns();
    let mut symbolizer = Symbolizer::new(target);
    let mut out = Vec::with_capacity(raw.len());
    let mut stack_buf = Vec::new();
    for g in raw {
        let status = g.status & !G_SCAN;
        if status == 6 || (status == 0 && g.goid == 0) {
            continue; // _Gdead (free g kept for reuse) or _Gidle (just allocated)
        }
        let waiting_status = status == 4;
        let state = if waiting_status && g.waitreason != 0 {
            target.reason_name(g.waitreason)
        } else {
            status_string(status).to_string()
        };
        let waiting = (g.waitsince != 0 && (waiting_status || status == 3))
            .then(|| Duration::from_nanos(now.saturating_sub(g.waitsince).max(0) as u64));
        let start_function = symbolizer.start_function(g.startpc);
        // A running goroutine's registers are on a CPU, not in g.sched: no stack, as in Go.
        let stack = if status == 2
            || g.sched_pc == 0
            || g.sched_sp < g.stack_lo
            || g.sched_sp >= g.stack_hi
        {
            Vec::new()
        } else {
            let len = (g.stack_hi - g.sched_sp).min(MAX_STACK_READ) as usize;
            stack_buf.resize(len, 0);
            match target.process.read(g.sched_sp, &mut stack_buf) {
                Ok(()) => {
                    let mem = StackMemory {
                        base: g.sched_sp,
                        bytes: &stack_buf,
                    };
                    symbolizer.stack(&unwind::unwind(
                        &target.binary,
                        &mem,
                        g.sched_sp,
                        g.sched_pc,
                        target.load_bias,
                    ))
                }
                Err(e) if exited(&e) => {
                    return Err(e).context("reading a goroutine's stack");
                }
                Err(_) => Vec::new(), // the goroutine moved on (stack freed or grown) mid-walk
            }
        };
        out.push(GoroutineSnapshot {
            goid: g.goid,
            status,
            state,
            wait_reason_value: waiting_status.then_some(g.waitreason),
            waiting,
            stack,
            created_by: symbolizer.created_by(&g),
            system: is_system(start_function.as_deref()),
            start_function,
            g_addr: g.addr,
        });
    }
    Ok(out)
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
