//! Reading the target's machine code (never changing it): where a function returns, and
//! where a probe on its entry costs least.
//!
//! uretprobes replace a return address on the stack, which Go's stack copying and
//! tracebacks do not survive; the value a Go function returns is read instead by uprobes
//! at each of its returns ([`return_probe_addresses`]).

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

use super::binary::GoBinary;

/// How many bytes of a function's start [`entry_probe_address`] decodes: Go's stack check
/// (`lea`, `cmp`, `jbe`) and the `push rbp` after it take 4-18.
const PROLOGUE_BYTES: usize = 32;

/// Where a uprobe that must fire once per call of the function at `entry` is placed: on its
/// frame's `push rbp` when only Go's stack check comes before it, else on the entry.
///
/// A uprobe traps on an instruction and then executes it. The kernel emulates a `push`
/// (x86, Linux 6.12+) and the branches, but single-steps most others out of line, a second
/// trap: on this project's VMs a hit on `push rbp` costs 1.5 us, one on a Go function's
/// first instruction, the stack check's `cmp`, 10-12 us (measured with the same uprobe on
/// both). What comes before the `push` (`lea -N(rsp), r12`, `cmp rsp|r12, 16(r14)`,
/// `jbe morestack`) changes only the flags and R12, which no probe reads: the arguments,
/// the g in R14 and the return address at the stack pointer are as at the entry. And a call
/// that grows its stack passes the `push` once, where it enters twice (`morestack` jumps
/// back to the entry).
pub fn entry_probe_address(binary: &GoBinary, entry: u64) -> u64 {
    let Some(code) = binary.read_vaddr(entry, PROLOGUE_BYTES) else {
        return entry;
    };
    push_after_stack_check(code, entry).unwrap_or(entry)
}

/// The `push rbp` that `code` (at `ip`) begins with, or that follows Go's stack check there.
fn push_after_stack_check(code: &[u8], ip: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut checked = false;
    for _ in 0..4 {
        if !decoder.can_decode() {
            return None;
        }
        let instr = decoder.decode();
        if instr.is_invalid() {
            return None;
        }
        match instr.mnemonic() {
            Mnemonic::Push if instr.op0_register() == Register::RBP => return Some(instr.ip()),
            // Go's large-frame check computes SP - framesize into R12 first.
            Mnemonic::Lea if !checked && instr.op0_register() == Register::R12 => {}
            // CMP SP or R12 with g.stackguard0 (R14 is g in Go's register ABI).
            Mnemonic::Cmp
                if !checked
                    && matches!(instr.op0_register(), Register::RSP | Register::R12)
                    && instr.op1_kind() == OpKind::Memory
                    && instr.memory_base() == Register::R14 =>
            {
                checked = true
            }
            Mnemonic::Jbe if checked => {}
            _ => return None,
        }
    }
    None
}

/// Whether the kernel emulates `instr` when a uprobe traps on it (x86: a `push` of a
/// register, from Linux 6.12; a direct `jmp` or conditional jump) instead of single-stepping
/// it out of line ([`crate::probes::calibrate`]).
fn emulated(instr: &Instruction) -> bool {
    match instr.mnemonic() {
        Mnemonic::Push => instr.op0_kind() == OpKind::Register,
        _ => direct_branch(instr),
    }
}

/// A `jmp` or conditional jump to a fixed address.
fn direct_branch(instr: &Instruction) -> bool {
    matches!(
        instr.flow_control(),
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch
    ) && matches!(
        instr.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    )
}

/// Whether a uprobe at `addr` traps on an instruction the kernel emulates.
pub fn emulated_at(binary: &GoBinary, addr: u64) -> bool {
    let Some(code) = binary.read_vaddr(addr, 16) else {
        return false;
    };
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    decoder.can_decode() && emulated(&decoder.decode())
}

/// How many instructions before a `RET` [`return_probe_addresses`] looks at.
const RETURN_WINDOW: usize = 16;

/// Where uprobes that must see every return of `name`, with its result in RAX, are placed:
/// for each `RET`, on the last jump before it from which every path leads to that `RET`
/// without writing RAX or calling anything, when there is one (the kernel emulates a jump:
/// 1 us a hit here, against 9-12 us on the `RET`, which it single-steps); else on the `RET`.
/// A jump qualifies only if nothing else in the function jumps past it into the code up to
/// the `RET` (such a path would return unseen) and the function has no indirect jump (a
/// jump table might). None when the function is not in the binary.
pub fn return_probe_addresses(binary: &GoBinary, name: &str) -> Option<Vec<u64>> {
    let f = binary.function(name)?;
    let code = binary.read_vaddr(f.addr, usize::try_from(f.size).ok()?)?;
    let instrs: Vec<Instruction> = Decoder::with_ip(64, code, f.addr, DecoderOptions::NONE)
        .into_iter()
        .collect();
    let indirect = instrs
        .iter()
        .any(|i| i.flow_control() == FlowControl::IndirectBranch);
    let rets = instrs
        .iter()
        .enumerate()
        .filter(|(_, i)| i.mnemonic() == Mnemonic::Ret);
    Some(
        rets.map(|(r, ret)| match indirect {
            true => ret.ip(),
            false => jump_before_return(&instrs, r).unwrap_or(ret.ip()),
        })
        .collect(),
    )
}

/// The last direct jump before `instrs[ret]` every path from which reaches that `RET`
/// with RAX unchanged ([`return_probe_addresses`]).
fn jump_before_return(instrs: &[Instruction], ret: usize) -> Option<u64> {
    let mut info = InstructionInfoFactory::new();
    let end = instrs[ret].ip();
    let writes_rax = |i: &Instruction, info: &mut InstructionInfoFactory| {
        info.info(i).used_registers().iter().any(|u| {
            u.register().full_register() == Register::RAX
                && !matches!(u.access(), OpAccess::Read | OpAccess::NoMemAccess)
        })
    };
    for j in (ret.saturating_sub(RETURN_WINDOW)..ret).rev() {
        let instr = &instrs[j];
        if direct_branch(instr) {
            let (from, to) = (instr.ip(), instr.near_branch_target());
            // Its target, and what every other jump of the function lands on in the
            // stretch after it, must lie in that stretch and come from within it.
            let inside = |t: u64| t > from && t <= end;
            let entered_from_outside = instrs.iter().any(|k| {
                direct_branch(k) && inside(k.near_branch_target()) && !(from..end).contains(&k.ip())
            });
            if !inside(to) {
                return None; // a path leaves the stretch
            }
            if !entered_from_outside {
                return Some(from);
            }
            continue; // an earlier jump may hold the one entering
        }
        if instr.flow_control() != FlowControl::Next || writes_rax(instr, &mut info) {
            return None;
        }
    }
    None
}
