//! leaktrace's BPF programs: entry uprobes on Go runtime functions of one target process.
//!
//! Each program reads a few registers and fields of the target (never writes it), counts its
//! hit, and sends one record through the ring buffer. Decisions are made in userspace.
//! Registers follow Go's ABIInternal on amd64: arguments in RAX, RBX, RCX, ...; R14 holds the
//! current g at entry of every Go function (Go 1.17+, cmd/compile/abi-internal.md).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, tracepoint, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{ProbeContext, TracePointContext, tracing::StackIdContext as _},
};
use leaktrace_common::{
    ALLOC_GOROUTINES, AllocStat, Config, Counter, LARGE_CLASS, MADVISE_ADVICES, MADVISE_SLOTS,
    NO_STACK, RING_BYTES, Record, RecordKind, SAMPLE_KEYS, SAMPLE_STACKS, SPAN_CLASSES, SampleKey,
    madvise_slot,
};

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[map]
static MADVISE: PerCpuArray<u64> = PerCpuArray::with_max_entries(MADVISE_SLOTS, 0);

#[map]
static ALLOCS: LruHashMap<u64, AllocStat> = LruHashMap::with_max_entries(ALLOC_GOROUTINES, 0);

/// User stacks of sampled allocations (span refills and large allocations).
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(SAMPLE_STACKS, 0);

/// Sampled allocations by stack, span class and size.
#[map]
static SAMPLES: HashMap<SampleKey, AllocStat> = HashMap::with_max_entries(SAMPLE_KEYS, 0);

/// Sampled allocation bytes per goroutine: what each allocated while alive, as the fallback
/// sampler sees it (a refill counts its whole span).
#[map]
static SAMPLED: LruHashMap<u64, AllocStat> = LruHashMap::with_max_entries(ALLOC_GOROUTINES, 0);

/// Bytes of a span of each span class, written by userspace from the target's size tables.
#[map]
static SPAN_BYTES: Array<u64> = Array::with_max_entries(SPAN_CLASSES, 0);

#[inline(always)]
fn add(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of a map value; no other writer on this CPU while we run.
        unsafe { *slot += n };
    }
}

#[inline(always)]
fn bump(counter: Counter) {
    add(counter, 1);
}

/// The config, if userspace wrote it and this hit belongs to the target process.
#[inline(always)]
fn config_for_current() -> Option<&'static Config> {
    let cfg = CONFIG.get(0)?;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    (cfg.tgid != 0 && cfg.tgid == tgid).then_some(cfg)
}

#[inline(always)]
fn read_u64(addr: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user copies from the target's memory and fails cleanly on a bad
    // address; it never dereferences the pointer in the BPF program itself.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn read_u8(addr: u64) -> Option<u8> {
    // SAFETY: as in read_u64.
    unsafe { bpf_probe_read_user(addr as *const u8) }.ok()
}

#[inline(always)]
fn regs(ctx: &ProbeContext) -> &pt_regs {
    // SAFETY: the kernel hands uprobe programs a valid pt_regs for their whole run.
    unsafe { &*ctx.regs }
}

/// `bpf_ringbuf_query`'s BPF_RB_AVAIL_DATA, and `bpf_ringbuf_output`'s BPF_RB_NO_WAKEUP and
/// BPF_RB_FORCE_WAKEUP (include/uapi/linux/bpf.h).
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Whether this record wakes the collector: only once `Config::wake_bytes` wait in the ring.
#[inline(always)]
fn wake_flags() -> u64 {
    match CONFIG.get(0) {
        Some(cfg) if cfg.wake_bytes != 0 => {
            if RECORDS.query(BPF_RB_AVAIL_DATA) >= u64::from(cfg.wake_bytes) {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            }
        }
        _ => 0,
    }
}

#[inline(always)]
fn emit(record: Record) {
    if RECORDS.output(&record, wake_flags()).is_err() {
        bump(Counter::Lost);
    }
}

/// Each probe twice: a per-point uprobe, and a multi-uprobe (Linux 6.6+) that userspace loads
/// instead where the kernel has them: a multi-uprobe link's removal takes the breakpoints out
/// of the target before the kernel's grace period, a per-point link's after it (the target
/// then traps, unrecorded, for 100-580 ms after each probe window).
macro_rules! uprobe_pair {
    ($($single:ident, $multi:ident => $body:ident;)*) => {$(
        #[uprobe]
        pub fn $single(ctx: ProbeContext) -> u32 {
            $body(ctx)
        }
        #[uprobe(multi)]
        pub fn $multi(ctx: ProbeContext) -> u32 {
            $body(ctx)
        }
    )*};
}

uprobe_pair! {
    gopark, gopark_multi => gopark_body;
    ready, ready_multi => ready_body;
    newproc1_ret, newproc1_ret_multi => newproc1_ret_body;
    goexit1, goexit1_multi => goexit1_body;
    chansend, chansend_multi => chansend_body;
    chanrecv, chanrecv_multi => chanrecv_body;
    closechan, closechan_multi => closechan_body;
    selectgo, selectgo_multi => selectgo_body;
    site, site_multi => site_body;
    casgstatus, casgstatus_multi => casgstatus_body;
    malloc, malloc_multi => malloc_body;
    refill, refill_multi => refill_body;
    alloc_large, alloc_large_multi => alloc_large_body;
}

/// `runtime.gopark(unlockf, lock, reason waitReason, traceReason, traceskip)`:
/// lock in RBX, reason in CL, the parking g in R14, gopark's caller at [RSP].
#[inline(always)]
fn gopark_body(ctx: ProbeContext) -> u32 {
    bump(Counter::GoparkHits);
    let Some(cfg) = config_for_current() else {
        return 0;
    };
    let r = regs(&ctx);
    let (Some(goid), Some(caller)) = (read_u64(r.r14 + cfg.g_goid), read_u64(r.rsp)) else {
        bump(Counter::ReadErrors);
        return 0;
    };
    emit(Record {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        goid,
        addr: r.rbx,
        pc: caller,
        tid: bpf_get_current_pid_tgid() as u32,
        kind: RecordKind::Park as u8,
        reason: r.rcx as u8,
        seq: read_u8(r.r14 + cfg.g_tracking_seq)
            .unwrap_or(0)
            .wrapping_add(1),
        ..Record::default()
    });
    0
}

/// `runtime.ready(gp *g, traceskip int, next bool)`: runs on g0 (from goready's
/// systemstack), so the woken g is the RAX argument and the waker is `R14 -> m -> curg`.
#[inline(always)]
fn ready_body(ctx: ProbeContext) -> u32 {
    bump(Counter::ReadyHits);
    let Some(cfg) = config_for_current() else {
        return 0;
    };
    let r = regs(&ctx);
    let Some(goid) = read_u64(r.rax + cfg.g_goid) else {
        bump(Counter::ReadErrors);
        return 0;
    };
    let waker = read_u64(r.r14 + cfg.g_m)
        .filter(|&m| m != 0)
        .and_then(|m| read_u64(m + cfg.m_curg))
        .filter(|&curg| curg != 0)
        .and_then(|curg| read_u64(curg + cfg.g_goid))
        .unwrap_or(0);
    emit(Record {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        goid,
        other_goid: waker,
        tid: bpf_get_current_pid_tgid() as u32,
        kind: RecordKind::Wake as u8,
        seq: read_u8(r.rax + cfg.g_tracking_seq).unwrap_or(0),
        ..Record::default()
    });
    0
}

/// The current user goroutine's id, for programs that run on a user g (R14 is that g).
#[inline(always)]
fn current_goid(r: &pt_regs, cfg: &Config) -> Option<u64> {
    read_u64(r.r14 + cfg.g_goid)
}

/// What every program on a user goroutine starts with: count the hit, check it is the
/// target, and read the goroutine's id (a failed read is counted, and the hit dropped).
#[inline(always)]
fn on_goroutine<'a>(ctx: &'a ProbeContext, hits: Counter) -> Option<(&'a pt_regs, u64)> {
    bump(hits);
    let cfg = config_for_current()?;
    let r = regs(ctx);
    match current_goid(r, cfg) {
        Some(goid) => Some((r, goid)),
        None => {
            bump(Counter::ReadErrors);
            None
        }
    }
}

#[inline(always)]
fn record(kind: RecordKind, goid: u64) -> Record {
    Record {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        goid,
        tid: bpf_get_current_pid_tgid() as u32,
        kind: kind as u8,
        ..Record::default()
    }
}

/// At each `RET` of `runtime.newproc1` (found by disassembly; uretprobes would corrupt Go
/// stacks): RAX holds the new g, whose goid, parentGoid, gopc and startpc are set by then.
/// newproc1 runs on g0.
#[inline(always)]
fn newproc1_ret_body(ctx: ProbeContext) -> u32 {
    bump(Counter::CreateHits);
    let Some(cfg) = config_for_current() else {
        return 0;
    };
    let g = regs(&ctx).rax;
    let (Some(goid), Some(parent), Some(gopc), Some(startpc)) = (
        read_u64(g + cfg.g_goid),
        read_u64(g + cfg.g_parent_goid),
        read_u64(g + cfg.g_gopc),
        read_u64(g + cfg.g_startpc),
    ) else {
        bump(Counter::ReadErrors);
        return 0;
    };
    emit(Record {
        other_goid: parent,
        pc: gopc,
        addr: startpc,
        ..record(RecordKind::Create, goid)
    });
    0
}

/// `runtime.goexit1()`, on the exiting goroutine (R14).
#[inline(always)]
fn goexit1_body(ctx: ProbeContext) -> u32 {
    if let Some((_, goid)) = on_goroutine(&ctx, Counter::ExitHits) {
        emit(record(RecordKind::Exit, goid));
    }
    0
}

/// `runtime.chansend(c *hchan, ep, block bool, callerpc uintptr)`: RAX, RBX, CL, RDI.
#[inline(always)]
fn chansend_body(ctx: ProbeContext) -> u32 {
    if let Some((r, goid)) = on_goroutine(&ctx, Counter::ChanSendHits) {
        emit(Record {
            addr: r.rax,
            pc: r.rdi,
            reason: r.rcx as u8,
            ..record(RecordKind::ChanSend, goid)
        });
    }
    0
}

/// `runtime.chanrecv(c *hchan, ep, block bool)`: RAX, RBX, CL. It has no caller PC
/// argument; RBP is still the frame of chanrecv1/chanrecv2, so the user call site is at
/// [RBP+8].
#[inline(always)]
fn chanrecv_body(ctx: ProbeContext) -> u32 {
    if let Some((r, goid)) = on_goroutine(&ctx, Counter::ChanRecvHits) {
        let pc = read_u64(r.rbp + 8).unwrap_or(0);
        emit(Record {
            addr: r.rax,
            pc,
            reason: r.rcx as u8,
            ..record(RecordKind::ChanRecv, goid)
        });
    }
    0
}

/// `runtime.closechan(c *hchan)`: RAX; the caller at [RSP].
#[inline(always)]
fn closechan_body(ctx: ProbeContext) -> u32 {
    if let Some((r, goid)) = on_goroutine(&ctx, Counter::ChanCloseHits) {
        let pc = read_u64(r.rsp).unwrap_or(0);
        emit(Record {
            addr: r.rax,
            pc,
            ..record(RecordKind::ChanClose, goid)
        });
    }
    0
}

/// `runtime.selectgo(cas0, order0, pc0, nsends, nrecvs int, block bool)`: RAX, RBX, RCX,
/// RDI, RSI, R8B; the caller at [RSP].
#[inline(always)]
fn selectgo_body(ctx: ProbeContext) -> u32 {
    if let Some((r, goid)) = on_goroutine(&ctx, Counter::SelectHits) {
        let cases = (r.rdi + r.rsi).min(255) as u8;
        let pc = read_u64(r.rsp).unwrap_or(0);
        emit(Record {
            addr: r.rax,
            pc,
            reason: cases,
            ..record(RecordKind::Select, goid)
        });
    }
    0
}

/// A targeted probe on an instruction of user code (after a blocking call, or after a `go`
/// statement's call into the runtime): the goroutine passing it, and where.
#[inline(always)]
fn site_body(ctx: ProbeContext) -> u32 {
    bump(Counter::SiteHits);
    let Some(cfg) = config_for_current() else {
        return 0;
    };
    let r = regs(&ctx);
    let goid = current_goid(r, cfg).unwrap_or(0);
    emit(Record {
        pc: r.rip,
        ..record(RecordKind::Site, goid)
    });
    0
}

/// `runtime.casgstatus(gp *g, oldval, newval uint32)`: RAX, EBX, ECX. Every waiting ->
/// runnable transition is a wake-up, including those that bypass `ready` (netpoll results
/// through injectglist, timers, startTheWorld). `_Gwaiting` = 4, `_Grunnable` = 1, the scan
/// bit 0x1000 (runtime/runtime2.go, Go 1.21-1.27).
#[inline(always)]
fn casgstatus_body(ctx: ProbeContext) -> u32 {
    bump(Counter::WakeAnyHits);
    let r = regs(&ctx);
    if (r.rbx as u32) & !0x1000 != 4 || r.rcx as u32 != 1 {
        return 0;
    }
    let Some(cfg) = config_for_current() else {
        return 0;
    };
    let Some(goid) = read_u64(r.rax + cfg.g_goid) else {
        bump(Counter::ReadErrors);
        return 0;
    };
    emit(Record {
        seq: read_u8(r.rax + cfg.g_tracking_seq).unwrap_or(0),
        ..record(RecordKind::Wake, goid)
    });
    0
}

/// Entry of `runtime.mallocgc(size, typ, needzero)` or, in Go 1.27, of each size-specialized
/// allocation function that compiled code calls directly: the size is in RAX in every one.
/// Runs on the allocating goroutine (R14). Aggregated per goroutine in `ALLOCS`. The probe
/// sits past the function's stack check, on its frame push: a call whose check fails (the
/// stack must grow, or the runtime asked the goroutine to stop there) runs morestack and
/// starts again from the entry, and is seen once, when it gets past the check.
#[inline(always)]
fn malloc_body(ctx: ProbeContext) -> u32 {
    bump(Counter::AllocHits);
    let Some(cfg) = config_for_current() else {
        return 0;
    };
    let r = regs(&ctx);
    let size = r.rax;
    add(Counter::AllocBytes, size);
    let Some(goid) = current_goid(r, cfg) else {
        bump(Counter::ReadErrors);
        return 0;
    };
    match ALLOCS.get_ptr_mut(&goid) {
        // SAFETY: a map value; a goroutine runs on one CPU at a time, so its entry has no
        // concurrent writer.
        Some(stat) => unsafe {
            (*stat).count += 1;
            (*stat).bytes += size;
        },
        None => {
            let _ = ALLOCS.insert(
                &goid,
                &AllocStat {
                    count: 1,
                    bytes: size,
                },
                0,
            );
        }
    }
    0
}

/// Adds a count and bytes to `map[key]`, inserting the key when it is new; false when the
/// map is full.
trait Accumulate<K> {
    fn accumulate(&self, key: &K, count: u64, bytes: u64) -> bool;
}

impl Accumulate<SampleKey> for HashMap<SampleKey, AllocStat> {
    #[inline(always)]
    fn accumulate(&self, key: &SampleKey, count: u64, bytes: u64) -> bool {
        match self.get_ptr_mut(key) {
            // SAFETY: a map value; two CPUs may add to one key at once and lose an update,
            // which a sample count tolerates.
            Some(stat) => unsafe {
                (*stat).count += count;
                (*stat).bytes += bytes;
                true
            },
            None => self.insert(key, &AllocStat { count, bytes }, 0).is_ok(),
        }
    }
}

impl Accumulate<u64> for LruHashMap<u64, AllocStat> {
    #[inline(always)]
    fn accumulate(&self, key: &u64, count: u64, bytes: u64) -> bool {
        match self.get_ptr_mut(key) {
            // SAFETY: a map value keyed by goroutine; a goroutine runs on one CPU at a time.
            Some(stat) => unsafe {
                (*stat).count += count;
                (*stat).bytes += bytes;
                true
            },
            None => self.insert(key, &AllocStat { count, bytes }, 0).is_ok(),
        }
    }
}

/// One sampled allocation event: the user stack (frame pointers, which Go keeps on amd64),
/// aggregated by stack and class, and the bytes added to the allocating goroutine.
#[inline(always)]
fn sample(ctx: &ProbeContext, hits: Counter, span_class: u32, size: u64, bytes: u64) {
    let Some((_, goid)) = on_goroutine(ctx, hits) else {
        return;
    };
    let stack_id = match ctx.get_stackid(&STACKS, aya_ebpf::bindings::BPF_F_USER_STACK as u64) {
        Ok(id) => id as u32,
        Err(_) => {
            bump(Counter::SampleStackErrors);
            NO_STACK
        }
    };
    let key = SampleKey {
        stack_id,
        span_class,
        size,
    };
    if !SAMPLES.accumulate(&key, 1, bytes) {
        bump(Counter::SampleStackErrors);
    }
    SAMPLED.accumulate(&goid, 1, bytes);
}

/// `runtime.(*mcache).refill(c *mcache, spc spanClass)`: the goroutine's allocations used up
/// a span of class `spc` (in BL), and a new one is taken; about one hit per span (8 KiB or
/// more) allocated, so its stack samples where small objects are allocated.
#[inline(always)]
fn refill_body(ctx: ProbeContext) -> u32 {
    let spc = (regs(&ctx).rbx & 0xff) as u32;
    let bytes = SPAN_BYTES.get(spc).copied().unwrap_or(0);
    sample(&ctx, Counter::RefillHits, spc, 0, bytes);
    0
}

/// `runtime.(*mcache).allocLarge(c *mcache, size uintptr, noscan bool)`: an allocation above
/// 32 KiB, with its size in RBX.
#[inline(always)]
fn alloc_large_body(ctx: ProbeContext) -> u32 {
    let size = regs(&ctx).rbx;
    sample(&ctx, Counter::LargeHits, LARGE_CLASS, size, size);
    0
}

/// The `syscalls:sys_enter_madvise` tracepoint, for the target only: bytes and calls per
/// advice, aggregated per CPU. Field offsets from the tracepoint's format file:
/// `len_in` at 24, `behavior` at 32.
#[tracepoint]
pub fn madvise(ctx: TracePointContext) -> u32 {
    if config_for_current().is_none() {
        return 0;
    }
    // SAFETY: reads of the tracepoint record at the offsets its format file gives.
    let (Ok(len), Ok(advice)) = (unsafe { ctx.read_at::<u64>(24) }, unsafe {
        ctx.read_at::<u64>(32)
    }) else {
        return 0;
    };
    let slot = madvise_slot(advice);
    for (index, n) in [(slot, len), (slot + MADVISE_ADVICES, 1)] {
        if let Some(v) = MADVISE.get_ptr_mut(index) {
            // SAFETY: per-CPU slot of a map value; no other writer on this CPU while we run.
            unsafe { *v += n };
        }
    }
    let mut rec = record(RecordKind::Madvise, 0);
    rec.addr = len;
    rec.reason = slot as u8;
    emit(rec);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
