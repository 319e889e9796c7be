//! Where the three runtime globals that `leaktrace dump` reads live: `runtime.allgs` (every g),
//! `runtime.gcController` and `runtime.memstats` (the heap figures).
//!
//! `.symtab` names them when the binary has one. A binary built with `-ldflags=-s` (or run
//! through `strip`) has no data symbols, but its functions are still in pclntab, and the
//! runtime's code addresses these globals RIP-relative, so their link-time addresses can be
//! read off the instructions of a few runtime functions chosen because their code shape has
//! held in every supported release (Go 1.21-1.27, default and PIE builds; checked against
//! `.symtab` by `tests/globals.rs`):
//!
//! - `runtime.allgs`: `forEachG` loads the slice's pointer and length after taking
//!   `allglock`, two 8-byte loads from X and X+8; `allgadd` appends to it and so touches
//!   X, X+8 and X+16 (ptr, len, cap).
//! - `runtime.gcController`: `gcControllerCommit` passes `&gcController` in RAX (a `lea`
//!   right before the call) to `(*gcControllerState).commit`, `revise` and `trigger`.
//! - `runtime.memstats`: `memstats.heapStats` (a `consistentHeapStats`) is its first field, and
//!   `(*mheap).grow`, `(*mcache).refill` and `(*mheap).allocSpan` call its `acquire` and
//!   `release` methods with a `lea` receiver.
//!
//! Every receiver or load found must agree, and the result must lie in the section such a
//! variable is linked into, with room for the whole struct.
//!
//! The pinned-memory estimate (`census::retained`) needs three more, found the same way
//! ([`locate_heap`]):
//!
//! - `runtime.mheap_`: `(*mcentral).grow` and `(*mcache).allocLarge` call
//!   `mheap_.alloc(...)` with a `lea` receiver.
//! - `runtime.allp`: `gcMarkTinyAllocs` ranges over it (loads of X and X+8); `flushmcache`
//!   indexes it and so reads X and X+8 too.
//! - `runtime.allm`: `mcommoninit` loads it (`mp.alllink = allm`) and `mexit` takes its
//!   address (`for pprev := &allm; ...`); the one address in both.

use std::ops::Range;

use iced_x86::{Decoder, DecoderOptions, Instruction, MemorySize, Mnemonic, OpKind, Register};
use object::{Object as _, ObjectSection as _};
use thiserror::Error;

use super::binary::GoBinary;

/// Link-time addresses of the runtime globals that `leaktrace dump` reads; add the load bias
/// to get the target's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Globals {
    /// `runtime.allgs`, a `[]*g` (ptr, len, cap).
    pub allgs: u64,
    /// `runtime.gcController`, a `gcControllerState`.
    pub gc_controller: u64,
    /// `runtime.memstats`, an `mstats`.
    pub memstats: u64,
}

/// Link-time addresses of the runtime globals the pinned-memory estimate reads; add the load
/// bias to get the target's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapGlobals {
    /// `runtime.mheap_`, the `mheap`.
    pub mheap: u64,
    /// `runtime.allp`, a `[]*p`.
    pub allp: u64,
    /// `runtime.allm`, a `*m`: the head of the list of every m.
    pub allm: u64,
}

/// A global that could not be located: which one, in which binary, why, and what to do.
#[derive(Debug, Clone, Error)]
#[error(
    "cannot find {global} in {path} ({version}, {symbols}): {reason}. Without a symbol, \
     leaktrace reads its address off the runtime's machine code, and that failed for this \
     build; rebuild the program without -ldflags=-s (-w alone is fine) so that leaktrace can \
     take it from the symbol table"
)]
pub struct GlobalsError {
    /// The Go name of the global, e.g. `runtime.allgs`.
    pub global: &'static str,
    path: String,
    version: String,
    /// "no symbol table", or what is missing from the one there is.
    symbols: String,
    reason: String,
}

/// One global: its Go name, the sections a variable of its type is linked into, and the
/// bytes it must have room for.
struct Wanted {
    name: &'static str,
    sections: &'static [&'static str],
    size: u64,
}

/// `[]*g` holds pointers, so the linker puts it in `.bss` (`.data` if it were initialised).
const ALLGS: Wanted = Wanted {
    name: "runtime.allgs",
    sections: &[".bss", ".data"],
    size: 24,
};

/// `gcControllerState` has no pointers; 392 bytes in go1.21.13..go1.27.3 (`.symtab` size).
const GC_CONTROLLER: Wanted = Wanted {
    name: "runtime.gcController",
    sections: &[".noptrbss", ".noptrdata"],
    size: 392,
};

/// `mstats` has no pointers; 7744 bytes in go1.22-1.24, the smallest of go1.21.13..go1.27.3
/// (`.symtab` sizes: 9040, 7744, 7744, 7744, 8264, 10440, 10440).
const MEMSTATS: Wanted = Wanted {
    name: "runtime.memstats",
    sections: &[".noptrbss", ".noptrdata"],
    size: 7744,
};

/// `mheap` has pointers; 92792 bytes in go1.21.13, the smallest of go1.21.13..go1.27.3
/// (`.symtab` sizes 0x16a78 .. 0x16d18).
const MHEAP: Wanted = Wanted {
    name: "runtime.mheap_",
    sections: &[".bss", ".noptrbss"],
    size: 0x16a78,
};

/// `[]*p`.
const ALLP: Wanted = Wanted {
    name: "runtime.allp",
    sections: &[".bss", ".data"],
    size: 24,
};

/// `*m`.
const ALLM: Wanted = Wanted {
    name: "runtime.allm",
    sections: &[".bss", ".data"],
    size: 8,
};

/// The pinned-memory globals' link-time addresses: from `.symtab` when it names them, else
/// from the runtime's code (see the module header).
pub fn locate_heap(binary: &GoBinary) -> Result<HeapGlobals, GlobalsError> {
    locate_heap_with(binary, true)
}

/// [`locate_heap`] from the runtime's code alone, ignoring `.symtab`.
pub fn locate_heap_in_code(binary: &GoBinary) -> Result<HeapGlobals, GlobalsError> {
    locate_heap_with(binary, false)
}

fn locate_heap_with(binary: &GoBinary, use_symbols: bool) -> Result<HeapGlobals, GlobalsError> {
    let finder = Finder::new(binary, use_symbols);
    let globals = HeapGlobals {
        mheap: finder.find(&MHEAP, mheap_in_code)?,
        allp: finder.find(&ALLP, allp_in_code)?,
        allm: finder.find(&ALLM, allm_in_code)?,
    };
    check_disjoint(
        &finder,
        &[
            (&MHEAP, globals.mheap),
            (&ALLP, globals.allp),
            (&ALLM, globals.allm),
        ],
    )?;
    Ok(globals)
}

/// The globals' link-time addresses: from `.symtab` when it names them, else from the
/// runtime's code (see the module header).
pub fn locate(binary: &GoBinary) -> Result<Globals, GlobalsError> {
    locate_with(binary, true)
}

/// The globals' link-time addresses from the runtime's code alone, ignoring `.symtab`: what
/// [`locate`] does for a stripped binary. For tests that compare the two on one binary.
pub fn locate_in_code(binary: &GoBinary) -> Result<Globals, GlobalsError> {
    locate_with(binary, false)
}

fn locate_with(binary: &GoBinary, use_symbols: bool) -> Result<Globals, GlobalsError> {
    let finder = Finder::new(binary, use_symbols);
    let globals = Globals {
        allgs: finder.find(&ALLGS, allgs_in_code)?,
        gc_controller: finder.find(&GC_CONTROLLER, gc_controller_in_code)?,
        memstats: finder.find(&MEMSTATS, memstats_in_code)?,
    };
    check_disjoint(
        &finder,
        &[
            (&ALLGS, globals.allgs),
            (&GC_CONTROLLER, globals.gc_controller),
            (&MEMSTATS, globals.memstats),
        ],
    )?;
    Ok(globals)
}

/// Refuses globals found at overlapping addresses: one of them is wrong.
fn check_disjoint(finder: &Finder<'_>, ranges: &[(&Wanted, u64)]) -> Result<(), GlobalsError> {
    for (i, &(a, a_addr)) in ranges.iter().enumerate() {
        for &(b, b_addr) in &ranges[i + 1..] {
            if a_addr < b_addr.saturating_add(b.size) && b_addr < a_addr.saturating_add(a.size) {
                return Err(finder.error(
                    b,
                    format!(
                        "it would overlap {} at {a_addr:#x} (found at {b_addr:#x})",
                        a.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Looks the globals up in one binary.
struct Finder<'b> {
    binary: &'b GoBinary,
    use_symbols: bool,
    /// Name and link-time range of each allocated section.
    sections: Vec<(String, Range<u64>)>,
}

impl<'b> Finder<'b> {
    fn new(binary: &'b GoBinary, use_symbols: bool) -> Self {
        // GoBinary parsed these same bytes when it was opened, so this cannot fail; an empty
        // table would only make every address implausible.
        let sections = object::File::parse(binary.data())
            .map(|file| {
                file.sections()
                    .filter_map(|s| {
                        let name = s.name().ok()?.to_string();
                        Some((name, s.address()..s.address().checked_add(s.size())?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            binary,
            use_symbols,
            sections,
        }
    }

    /// `want`'s address from `.symtab`, else from `in_code`, checked for plausibility.
    fn find(
        &self,
        want: &Wanted,
        in_code: fn(&Self) -> Result<u64, String>,
    ) -> Result<u64, GlobalsError> {
        if self.use_symbols
            && let Some(sym) = self.binary.data_symbol(want.name)
        {
            return Ok(sym.addr);
        }
        let addr = in_code(self).map_err(|reason| self.error(want, reason))?;
        self.check_section(want, addr)
            .map_err(|reason| self.error(want, reason))?;
        Ok(addr)
    }

    /// Refuses an address that is unaligned or not inside one of `want`'s sections with
    /// room for the whole variable.
    fn check_section(&self, want: &Wanted, addr: u64) -> Result<(), String> {
        if !addr.is_multiple_of(8) {
            return Err(format!(
                "the address found, {addr:#x}, is not 8-byte aligned"
            ));
        }
        let end = addr.saturating_add(want.size);
        let inside = self.sections.iter().any(|(name, range)| {
            want.sections.contains(&name.as_str()) && range.start <= addr && end <= range.end
        });
        if inside {
            return Ok(());
        }
        let actual = self
            .sections
            .iter()
            .find(|(_, range)| range.contains(&addr))
            .map_or("no section", |(name, _)| name.as_str());
        Err(format!(
            "the address found, {addr:#x}, is in {actual}, but a {} B variable there belongs \
             wholly in {}",
            want.size,
            want.sections.join(" or ")
        ))
    }

    fn error(&self, want: &Wanted, reason: String) -> GlobalsError {
        GlobalsError {
            global: want.name,
            path: self.binary.path().to_string(),
            version: self.binary.build().version_string.clone(),
            symbols: if self.binary.is_stripped() {
                "no symbol table".to_string()
            } else if self.use_symbols {
                format!("no {} in its symbol table", want.name)
            } else {
                "symbol table ignored".to_string()
            },
            reason,
        }
    }

    /// The decoded instructions of runtime function `name`, or why there are none.
    fn decode(&self, name: &str) -> Result<Vec<Instruction>, String> {
        let f = self
            .binary
            .function(name)
            .ok_or_else(|| format!("{name} is not in the binary's function table"))?;
        let bytes = usize::try_from(f.size)
            .ok()
            .and_then(|len| self.binary.read_vaddr(f.addr, len))
            .ok_or_else(|| format!("the code of {name} is not in the file"))?;
        Ok(decode(bytes, f.addr))
    }

    /// Link-time entry addresses of the functions of `names` that exist.
    fn entries(&self, names: &[&str]) -> Vec<u64> {
        names
            .iter()
            .filter_map(|n| self.binary.function(n))
            .map(|f| f.addr)
            .collect()
    }
}

/// `runtime.allgs` from `forEachG`'s loads of its ptr and len, checked against `allgadd`'s
/// accesses to ptr, len and cap when those are found.
fn allgs_in_code(finder: &Finder<'_>) -> Result<u64, String> {
    const FOR_EACH_G: &str = "runtime.forEachG";
    const ALLGADD: &str = "runtime.allgadd";
    let code = finder.decode(FOR_EACH_G)?;
    let loads = rip_relative_loads(&code);
    let addr = first_slice_header(&loads).ok_or_else(|| {
        format!(
            "{FOR_EACH_G} has no pair of 8-byte loads from X and X+8 (a slice's pointer and \
             length) among its RIP-relative loads {}",
            hex_list(&loads)
        )
    })?;
    if let Ok(code) = finder.decode(ALLGADD) {
        let headers = slice_headers_touched(&code);
        if !headers.is_empty() && headers != [addr] {
            return Err(format!(
                "{FOR_EACH_G} reads a slice at {addr:#x}, but {ALLGADD} appends to {}",
                hex_list(&headers)
            ));
        }
    }
    Ok(addr)
}

/// `runtime.gcController` from the receiver `gcControllerCommit` passes to the
/// `gcControllerState` methods it calls.
fn gc_controller_in_code(finder: &Finder<'_>) -> Result<u64, String> {
    one_receiver(
        finder,
        &["runtime.gcControllerCommit"],
        &[
            "runtime.(*gcControllerState).commit",
            "runtime.(*gcControllerState).revise",
            "runtime.(*gcControllerState).trigger",
        ],
    )
}

/// `runtime.memstats` from the receiver of `memstats.heapStats.acquire()` and `release()`,
/// `heapStats` being `mstats`'s first field (offset 0 in go1.21.13..go1.27.3
/// `src/runtime/mstats.go`, `type mstats`).
fn memstats_in_code(finder: &Finder<'_>) -> Result<u64, String> {
    one_receiver(
        finder,
        &[
            "runtime.(*mheap).grow",
            "runtime.(*mcache).refill",
            "runtime.(*mheap).allocSpan",
        ],
        &[
            "runtime.(*consistentHeapStats).acquire",
            "runtime.(*consistentHeapStats).release",
        ],
    )
}

/// `runtime.mheap_` from the receiver of the `mheap_.alloc` calls that allocate spans.
fn mheap_in_code(finder: &Finder<'_>) -> Result<u64, String> {
    one_receiver(
        finder,
        &["runtime.(*mcentral).grow", "runtime.(*mcache).allocLarge"],
        &["runtime.(*mheap).alloc"],
    )
}

/// `runtime.allp` from `gcMarkTinyAllocs`'s `range allp` (pointer and length), checked
/// against `flushmcache`'s `allp[i]`, which reads both words too.
fn allp_in_code(finder: &Finder<'_>) -> Result<u64, String> {
    const RANGE: &str = "runtime.gcMarkTinyAllocs";
    const INDEX: &str = "runtime.flushmcache";
    let loads = rip_relative_loads(&finder.decode(RANGE)?);
    let addr = first_slice_header(&loads).ok_or_else(|| {
        format!(
            "{RANGE} has no pair of 8-byte loads from X and X+8 (a slice's pointer and \
             length) among its RIP-relative loads {}",
            hex_list(&loads)
        )
    })?;
    if let Ok(code) = finder.decode(INDEX) {
        let touched: Vec<u64> = code.iter().filter_map(rip_relative_qword).collect();
        if !touched.contains(&addr) || !touched.contains(&(addr + 8)) {
            return Err(format!(
                "{RANGE} ranges over a slice at {addr:#x}, but {INDEX} reads {}",
                hex_list(&touched)
            ));
        }
    }
    Ok(addr)
}

/// `runtime.allm`: the one address that `mcommoninit` loads 8 bytes from and `mexit` takes
/// or reads RIP-relative.
fn allm_in_code(finder: &Finder<'_>) -> Result<u64, String> {
    const LOAD: &str = "runtime.mcommoninit";
    const ADDRESS: &str = "runtime.mexit";
    let loads = rip_relative_loads(&finder.decode(LOAD)?);
    let referenced: Vec<u64> = finder
        .decode(ADDRESS)?
        .iter()
        .filter(|i| i.is_ip_rel_memory_operand())
        .map(|i| i.ip_rel_memory_address())
        .collect();
    let mut both: Vec<u64> = loads
        .iter()
        .copied()
        .filter(|a| referenced.contains(a))
        .collect();
    both.sort_unstable();
    both.dedup();
    match both[..] {
        [addr] => Ok(addr),
        _ => Err(format!(
            "expected one address that {LOAD} loads and {ADDRESS} references, found {} \
             ({LOAD} loads {}; {ADDRESS} references {})",
            hex_list(&both),
            hex_list(&loads),
            hex_list(&referenced)
        )),
    }
}

/// The one global that the `anchors` pass, RIP-relative, as receiver to the `methods`; an
/// error if none is found or if they disagree.
fn one_receiver(finder: &Finder<'_>, anchors: &[&str], methods: &[&str]) -> Result<u64, String> {
    let targets = finder.entries(methods);
    if targets.is_empty() {
        return Err(format!(
            "none of {} is in the binary's function table",
            methods.join(", ")
        ));
    }
    let mut found: Vec<(&str, u64)> = Vec::new();
    for anchor in anchors {
        if let Ok(code) = finder.decode(anchor) {
            found.extend(
                call_receivers(&code, &targets)
                    .into_iter()
                    .map(|r| (*anchor, r)),
            );
        }
    }
    let Some(&(_, addr)) = found.first() else {
        return Err(format!(
            "no call from {} to {} with a RIP-relative receiver",
            anchors.join(", "),
            methods.join(", ")
        ));
    };
    if let Some(&(anchor, other)) = found.iter().find(|&&(_, r)| r != addr) {
        return Err(format!(
            "the calls to {} disagree on the receiver: {addr:#x} from {}, {other:#x} from \
             {anchor}",
            methods.join(", "),
            found[0].0
        ));
    }
    Ok(addr)
}

/// Decodes x86-64 code at link-time address `ip`, up to the first byte that is no instruction.
fn decode(bytes: &[u8], ip: u64) -> Vec<Instruction> {
    Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE)
        .into_iter()
        .take_while(|i| !i.is_invalid())
        .collect()
}

/// An 8-byte memory operand addressed RIP-relative: the address it reads or writes.
fn rip_relative_qword(i: &Instruction) -> Option<u64> {
    let has_memory = (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory);
    (has_memory
        && i.is_ip_rel_memory_operand()
        && matches!(i.memory_size(), MemorySize::UInt64 | MemorySize::Int64))
    .then(|| i.ip_rel_memory_address())
}

/// The addresses of `mov r64, qword [rip+X]` loads, in code order.
fn rip_relative_loads(code: &[Instruction]) -> Vec<u64> {
    code.iter()
        .filter(|i| {
            i.mnemonic() == Mnemonic::Mov
                && i.op0_kind() == OpKind::Register
                && i.op1_kind() == OpKind::Memory
        })
        .filter_map(rip_relative_qword)
        .collect()
}

/// The first X loaded right before X+8: a slice's pointer, then its length.
fn first_slice_header(loads: &[u64]) -> Option<u64> {
    loads
        .windows(2)
        .find(|w| w[0].checked_add(8) == Some(w[1]))
        .map(|w| w[0])
}

/// Every X such that the code accesses 8 bytes at X, X+8 and X+16 (a slice header's
/// pointer, length and capacity), lowest first.
fn slice_headers_touched(code: &[Instruction]) -> Vec<u64> {
    let mut addrs: Vec<u64> = code.iter().filter_map(rip_relative_qword).collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs
        .iter()
        .copied()
        .filter(|&x| {
            [8, 16].iter().all(|d| {
                x.checked_add(*d)
                    .is_some_and(|y| addrs.binary_search(&y).is_ok())
            })
        })
        .collect()
}

/// The receivers of direct calls to `targets` that are set by `lea rax, [rip+X]` right before
/// the call (NOP padding between them allowed), in code order. Go's register ABI passes the
/// receiver in RAX.
fn call_receivers(code: &[Instruction], targets: &[u64]) -> Vec<u64> {
    let mut receivers = Vec::new();
    let mut rax = None;
    for i in code {
        match i.mnemonic() {
            Mnemonic::Nop => {}
            Mnemonic::Lea
                if i.op0_kind() == OpKind::Register
                    && i.op0_register() == Register::RAX
                    && i.is_ip_rel_memory_operand() =>
            {
                rax = Some(i.ip_rel_memory_address());
            }
            Mnemonic::Call => {
                if i.op0_kind() == OpKind::NearBranch64
                    && targets.contains(&i.near_branch_target())
                    && let Some(addr) = rax
                {
                    receivers.push(addr);
                }
                rax = None;
            }
            _ => rax = None,
        }
    }
    receivers
}

fn hex_list(addrs: &[u64]) -> String {
    if addrs.is_empty() {
        return "(none)".to_string();
    }
    addrs
        .iter()
        .map(|a| format!("{a:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `runtime.forEachG` of go1.21.13 (classicleak fixture, default build) from its entry at
    /// 0x434e80 up to the loop: allglock at 0x56f890, allgs at 0x541ba0.
    const FOR_EACH_G_1_21: &[u8] = &[
        0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
        0x76, 0x7d, // jbe
        0x55, // push rbp
        0x48, 0x89, 0xe5, // mov rbp, rsp
        0x48, 0x83, 0xec, 0x20, // sub rsp, 0x20
        0x48, 0x89, 0x44, 0x24, 0x30, // mov [rsp+0x30], rax
        0x90, // nop
        0x90, // nop
        0x48, 0x8d, 0x05, 0xf4, 0xa9, 0x13, 0x00, // lea rax, [rip+0x13a9f4] (allglock)
        0x0f, 0x1f, 0x40, 0x00, // nop dword [rax]
        0xe8, 0xdb, 0x5a, 0xfd, 0xff, // call runtime.lock2 (0x40a980)
        0x48, 0x8b, 0x0d, 0xf4, 0xcc, 0x10, 0x00, // mov rcx, [rip+0x10ccf4] (allgs)
        0x48, 0x89, 0x4c, 0x24, 0x18, // mov [rsp+0x18], rcx
        0x48, 0x8b, 0x15, 0xf0, 0xcc, 0x10, 0x00, // mov rdx, [rip+0x10ccf0] (allgs+8)
    ];

    #[test]
    fn slice_header_loads_after_the_lock() {
        let code = decode(FOR_EACH_G_1_21, 0x434e80);
        assert_eq!(rip_relative_loads(&code), [0x541ba0, 0x541ba8]);
        assert_eq!(
            first_slice_header(&rip_relative_loads(&code)),
            Some(0x541ba0)
        );
        // The lea of allglock is a receiver, through the NOP, of the call to lock2.
        assert_eq!(call_receivers(&code, &[0x40a980]), [0x56f890]);
        assert!(call_receivers(&code, &[0x40ab40]).is_empty());
    }

    #[test]
    fn receiver_is_lost_when_rax_may_change() {
        // lea rax, [rip+0x100]; mov rax, rbx; call +0
        let code = decode(
            &[
                0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00, //
                0x48, 0x89, 0xd8, //
                0xe8, 0x00, 0x00, 0x00, 0x00,
            ],
            0x1000,
        );
        assert!(call_receivers(&code, &[0x100f]).is_empty());
        // lea rcx, [rip+0x100]; call +0: not the receiver register.
        let code = decode(
            &[
                0x48, 0x8d, 0x0d, 0x00, 0x01, 0x00, 0x00, //
                0xe8, 0x00, 0x00, 0x00, 0x00,
            ],
            0x1000,
        );
        assert!(call_receivers(&code, &[0x100c]).is_empty());
    }

    #[test]
    fn slice_headers_need_all_three_words() {
        // Three 7-byte `mov r64, [rip+disp]` reading X+16, X+8 and X for X = 0x1010, as
        // allgadd reads allgs's cap, len and ptr before growing it.
        let code = decode(
            &[
                0x48, 0x8b, 0x0d, 0x19, 0x00, 0x00, 0x00, // 0x1000: [0x1020]
                0x48, 0x8b, 0x1d, 0x0a, 0x00, 0x00, 0x00, // 0x1007: [0x1018]
                0x48, 0x8b, 0x05, 0xfb, 0xff, 0xff, 0xff, // 0x100e: [0x1010]
            ],
            0x1000,
        );
        assert_eq!(slice_headers_touched(&code), [0x1010]);
        assert_eq!(slice_headers_touched(&code[..2]), Vec::<u64>::new());
    }
}
