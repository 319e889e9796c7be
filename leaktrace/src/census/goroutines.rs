//! A read-only walk of every goroutine in the target: status, wait reason, how long it has
//! waited, its stack, and where it was created, as `runtime.Stack(all)` would print them.
//!
//! The walk reads `runtime.allgs` (a `[]*g`), then every g in batches, then each stopped
//! goroutine's stack in one read, and unwinds it locally. The target runs on meanwhile, so a
//! goroutine that changes state during the walk may be seen half-way; such a stack is cut
//! where it stops making sense rather than reported wrong.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::unwind::{self, PhysFrame, StackMemory};
use crate::target::{Target, pclntab::Frame};

/// `_Gscan`, or-ed into the status while the GC scans the stack (runtime/runtime2.go,
/// Go 1.21-1.27).
const G_SCAN: u32 = 0x1000;
/// Read at most this much of one goroutine's stack (deeper frames are cut).
const MAX_STACK_READ: u64 = 1 << 20;
/// Goroutine structs read per `process_vm_readv` call (IOV_MAX is 1024).
const BATCH: usize = 512;

/// One frame of a goroutine's stack, innermost first; inlined calls are frames of their own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreatedBy {
    pub function: String,
    pub file: String,
    pub line: u32,
    /// The goroutine that executed the `go` statement (0 before Go recorded it).
    pub goid: u64,
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

struct RawG {
    addr: u64,
    status: u32,
    goid: u64,
    waitsince: i64,
    waitreason: u8,
    parent_goid: u64,
    gopc: u64,
    startpc: u64,
    stack_lo: u64,
    stack_hi: u64,
    sched_sp: u64,
    sched_pc: u64,
}

fn u64_at(b: &[u8], off: u64) -> u64 {
    let o = off as usize;
    b.get(o..o + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap()))
}

fn u32_at(b: &[u8], off: u64) -> u32 {
    let o = off as usize;
    b.get(o..o + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()))
}

/// The addresses of every g in `runtime.allgs`.
fn all_gs(target: &Target) -> anyhow::Result<Vec<u64>> {
    let allgs = target.globals()?.allgs + target.load_bias;
    let mut hdr = [0u8; 16];
    target
        .process
        .read(allgs, &mut hdr)
        .context("reading runtime.allgs")?;
    let (ptr, len) = (u64_at(&hdr, 0), u64_at(&hdr, 8));
    if len > 50_000_000 {
        bail!(
            "runtime.allgs has an implausible length {len}: the runtime layout does not match this binary"
        );
    }
    let mut buf = vec![0u8; len as usize * 8];
    target
        .process
        .read(ptr, &mut buf)
        .context("reading the allgs array")?;
    Ok(buf
        .as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_le_bytes(*c))
        .filter(|&g| g != 0)
        .collect())
}

fn read_gs(target: &Target, addrs: &[u64]) -> anyhow::Result<Vec<RawG>> {
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

/// Expands physical frames into source frames (inlined calls first), marking those Go hides.
fn symbolize(target: &Target, frames: &[PhysFrame]) -> Vec<StackFrame> {
    let table = target.binary.pclntab();
    let wrapper = table.wrapper_id();
    let mut out = Vec::new();
    for pf in frames {
        let is_wrapper = table
            .find_func(pf.lookup_pc)
            .is_some_and(|f| f.func_id == wrapper);
        let sym = target.binary.symbolize(pf.lookup_pc);
        let n = sym.len();
        for (
            i,
            Frame {
                function,
                file,
                line,
            },
        ) in sym.into_iter().enumerate()
        {
            let physical = i + 1 == n;
            let shown = shown_by_go(&function) && !(physical && is_wrapper);
            out.push(StackFrame {
                function,
                file,
                line,
                pc: pf.pc,
                inlined: !physical,
                shown,
            });
        }
    }
    out
}

fn created_by(target: &Target, g: &RawG) -> Option<CreatedBy> {
    if g.gopc == 0 {
        return None;
    }
    let pc = target.link_addr(g.gopc);
    let table = target.binary.pclntab();
    let f = table.find_func(pc)?;
    // Go names the physical function and gives the position of the call (pc - 1), which
    // for an inlined `go` statement is in the inlined callee (traceback.go printcreatedby1).
    let at = if pc > f.entry { pc - 1 } else { pc };
    let (file, line) = table.file_line(&f, at)?;
    Some(CreatedBy {
        function: f.name,
        file,
        line,
        goid: g.parent_goid,
    })
}

/// Every live goroutine of the target, system ones included (see
/// [`GoroutineSnapshot::system`]), in allgs order.
pub fn walk(target: &Target) -> anyhow::Result<Vec<GoroutineSnapshot>> {
    let addrs = all_gs(target)?;
    let raw = read_gs(target, &addrs)?;
    let now = monotonic_ns();
    let table = target.binary.pclntab();
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
        let start_function = table.find_func(target.link_addr(g.startpc)).map(|f| f.name);
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
                    let trap = status == 9; // _Gpreempted: stopped asynchronously, not at a call
                    symbolize(
                        target,
                        &unwind::unwind(
                            &target.binary,
                            &mem,
                            g.sched_sp,
                            g.sched_pc,
                            target.load_bias,
                            trap,
                        ),
                    )
                }
                Err(_) => Vec::new(), // the goroutine moved on (stack freed or grown) mid-walk
            }
        };
        let created_by = if g.goid == 1 {
            None
        } else {
            created_by(target, &g)
        };
        out.push(GoroutineSnapshot {
            goid: g.goid,
            status,
            state,
            wait_reason_value: waiting_status.then_some(g.waitreason),
            waiting,
            stack,
            created_by,
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
    fn system_goroutines_are_those_started_in_the_runtime() {
        assert!(is_system(Some("runtime.bgsweep")));
        assert!(is_system(Some("runtime.gcBgMarkWorker")));
        assert!(!is_system(Some("runtime.main")));
        assert!(!is_system(Some("main.main.gowrap1")));
    }
}
