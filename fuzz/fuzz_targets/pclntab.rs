//! `.gopclntab`, the runtime's function table: what names uprobe targets in stripped binaries
//! and turns stack PCs into frames.
//!
//! Input: `text_start` (u64 LE), the Go minor version (u8), the section's length (u32 LE),
//! the section, then the bytes at `moduledata.gofunc` (where the inline trees are), which may
//! be empty. A length past the end of the input takes the rest as the section.
#![no_main]

use leaktrace::tracee::buildinfo::GoVersion;
use leaktrace::tracee::pclntab::Pclntab;
use libfuzzer_sys::fuzz_target;

/// Functions looked at in detail per input, spread evenly over the table: every one of a
/// real table's thousands would make each run slow for little more coverage.
const SAMPLED: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<13>() else {
        return;
    };
    let text_start = u64::from_le_bytes(head[..8].try_into().unwrap());
    let minor = u32::from(head[8]);
    let len = u32::from_le_bytes(head[9..].try_into().unwrap()) as usize;
    let (section, gofunc) = rest.split_at(len.min(rest.len()));
    let Ok(table) = Pclntab::new(section, text_start, GoVersion::new(1, minor, 0)) else {
        return;
    };
    let table = if gofunc.is_empty() {
        table
    } else {
        table.with_gofunc(gofunc)
    };
    let stride = (table.len() / SAMPLED).max(1);
    for f in table.functions().step_by(stride) {
        let mid = f.entry + (f.end - f.entry) / 2;
        for pc in [f.entry, mid, f.end.saturating_sub(1)] {
            let found = table.find_func(pc);
            let frames = table.symbolize(pc);
            // symbolize answers for exactly the PCs find_func places in a function, with the
            // physical function last and the inlining depth bounded.
            assert_eq!(frames.is_empty(), found.is_none(), "pc {pc:#x}");
            assert!(frames.len() <= 65, "{} frames at {pc:#x}", frames.len());
            if let Some(found) = found {
                assert_eq!(frames.last().unwrap().function, found.name);
            }
            let _ = table.sp_delta(&f, pc);
            let _ = table.file_line(&f, pc);
        }
        let _ = table.func_start_line(&f);
    }
    let _ = table.lookup_name("runtime.gopark");
    let _ = table.lookup_name("main.main");
    let _ = table.lookup_symbol("runtime.madvise.abi0");
    let _ = table.detect_wrapper_func_id();
    let _ = table.header_text_start();
});
