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
    macros::{map, uprobe},
    maps::{Array, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use leaktrace_common::{Config, Counter, RING_BYTES, Record, RecordKind};

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of a map value; no other writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
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
fn regs(ctx: &ProbeContext) -> &pt_regs {
    // SAFETY: the kernel hands uprobe programs a valid pt_regs for their whole run.
    unsafe { &*ctx.regs }
}

#[inline(always)]
fn emit(record: Record) {
    if RECORDS.output(&record, 0).is_err() {
        bump(Counter::Lost);
    }
}

/// `runtime.gopark(unlockf, lock, reason waitReason, traceReason, traceskip)`:
/// lock in RBX, reason in CL, the parking g in R14, gopark's caller at [RSP].
#[uprobe]
pub fn gopark(ctx: ProbeContext) -> u32 {
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
        ..Record::default()
    });
    0
}

/// `runtime.ready(gp *g, traceskip int, next bool)`: runs on g0 (from goready's
/// systemstack), so the woken g is the RAX argument and the waker is `R14 -> m -> curg`.
#[uprobe]
pub fn ready(ctx: ProbeContext) -> u32 {
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
        ..Record::default()
    });
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
