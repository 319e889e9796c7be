//! The program's data and bss as roots of a reachability pass, scanned as Go's GC scans them:
//! only the words its pointer bitmaps mark, where they can be read, every word otherwise.
//!
//! `runtime.firstmoduledata` gives the sections (`data..edata`, `bss..ebss`, words 26-29 in
//! Go 1.21-1.27) and, once `modulesinit` has run, their pointer masks `gcdatamask` and
//! `gcbssmask`: `bitvector{n int32, bytedata *uint8}`, one bit per pointer-sized word, set
//! where the word holds a pointer, least significant bit first (`runtime/symtab.go`,
//! `runtime/mgcmark.go` `markrootBlock` and `scanblock`). The linker stores the masks as GC
//! programs (`moduledata.gcdata`, `gcbss`); the runtime expands them at start-up with
//! `progToPointerMask`, whose `n` is the number of bits written, at most one per word. Reading
//! the expanded masks from the process is version-proof against the program encoding and
//! handles PIE, since the runtime has relocated them already.
//!
//! Where the masks sit in `moduledata` (word offsets, go1.21.13..go1.27.3 `symtab.go`):
//! 67 in 1.21-1.25 (after `hasmain`, and `bad` from 1.23, which share a word), 68 in 1.26
//! (`epclntab` was added after `gofunc`), 65 in 1.27 (`types` gained `typedesclen`,
//! `itaboffset` and `itabsize` were added, `typelinks` and `itablinks` were removed).
//!
//! The masks are used only when they pass checks: each `n` at most the section's words and
//! not zero for a non-empty section, readable, and the bss mask marking `runtime.allgs`,
//! which is a pointer in `.bss` of every Go program. Otherwise every aligned word is scanned
//! (conservative), and the pass says so and why. The masks are exactly what the target's GC
//! uses, so scanning only their words never makes a live object look unreachable; it drops
//! the words that only look like pointers (a `uintptr` holding an address, an integer).

use serde::Serialize;

use super::{goroutines::u64_at, retained::Heap};
use crate::tracee::Target;

/// `moduledata.data` is word 26 in Go 1.21-1.27 (`edata`, `bss`, `ebss` follow).
const MODULEDATA_DATA_WORD: u64 = 26;
/// Data or bss larger than this is not a Go program's (a layout mismatch): not scanned.
const MAX_SECTION: u64 = 1 << 30;

/// How the pass scanned the program's data and bss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum GlobalScan {
    /// Only the words the GC's pointer bitmaps mark.
    #[serde(rename = "gc bitmaps")]
    GcBitmaps,
    /// Every aligned word that points into the heap.
    #[default]
    #[serde(rename = "conservative")]
    Conservative,
}

impl GlobalScan {
    pub fn as_str(self) -> &'static str {
        match self {
            GlobalScan::GcBitmaps => "gc bitmaps",
            GlobalScan::Conservative => "conservative",
        }
    }
}

/// The data and bss sections of the target, as runtime addresses, and their pointer masks
/// when they could be read and checked.
pub(super) struct DataBss {
    /// (start, bytes) of data and of bss; whole words.
    ranges: [(u64, u64); 2],
    /// One bit per word of each range, or None: scanned conservatively.
    masks: Option<[Vec<u8>; 2]>,
    /// Why the masks are not used, when they are not.
    pub(super) conservative_why: Option<String>,
}

/// `moduledata.gcdatamask`'s word offset for Go 1.`minor` (see the module header).
fn mask_word(minor: u32) -> u64 {
    match minor {
        ..=25 => 67,
        26 => 68,
        _ => 65,
    }
}

/// Reads the target's data and bss, with their masks when `bitmaps` is asked for and they
/// pass the checks.
pub(super) fn data_and_bss(target: &Target, bitmaps: bool) -> anyhow::Result<DataBss> {
    use anyhow::Context as _;
    let md = target.binary.moduledata_addr().context(
        "the binary's runtime.firstmoduledata was not found, so its globals cannot be scanned",
    )? + target.load_bias;
    let mut b = [0u8; 32];
    target
        .process
        .read(md + MODULEDATA_DATA_WORD * 8, &mut b)
        .context("reading runtime.firstmoduledata")?;
    let mut ranges = [(0, 0); 2];
    for (i, (lo, hi)) in [
        (u64_at(&b, 0), u64_at(&b, 8)),
        (u64_at(&b, 16), u64_at(&b, 24)),
    ]
    .into_iter()
    .enumerate()
    {
        anyhow::ensure!(
            lo <= hi && hi - lo <= MAX_SECTION,
            "runtime.firstmoduledata gives an implausible data or bss range {lo:#x}..{hi:#x}: \
             the runtime layout does not match this binary"
        );
        // Whole words only: the words of all ranges are read as one run.
        ranges[i] = (lo & !7, (hi - (lo & !7)) & !7);
    }
    let (masks, conservative_why) = if !bitmaps {
        (None, Some("asked for".to_string()))
    } else {
        match read_masks(target, md, &ranges) {
            Ok(m) => (Some(m), None),
            Err(why) => (None, Some(why)),
        }
    };
    Ok(DataBss {
        ranges,
        masks,
        conservative_why,
    })
}

/// `gcdatamask` and `gcbssmask`, read and checked, or why they cannot be used.
fn read_masks(target: &Target, md: u64, ranges: &[(u64, u64); 2]) -> Result<[Vec<u8>; 2], String> {
    let word = mask_word(target.binary.version().minor);
    let mut b = [0u8; 32];
    target
        .process
        .read(md + word * 8, &mut b)
        .map_err(|e| format!("moduledata's pointer masks unreadable: {e}"))?;
    let mut masks = [Vec::new(), Vec::new()];
    for (i, &(lo, len)) in ranges.iter().enumerate() {
        let n = u64_at(&b, (i * 16) as u64) as u32 as i32;
        let ptr = u64_at(&b, (i * 16 + 8) as u64);
        let words = len / 8;
        if lo % 8 != 0 || n < 0 || n as u64 > words || (words > 0 && (n == 0 || ptr == 0)) {
            return Err(format!(
                "moduledata's pointer mask {i} does not fit its section ({n} bits at \
                 {ptr:#x} for {words} words)"
            ));
        }
        // The runtime allocated a byte per 8 words (and a sentinel); bits past `n` are zero.
        let mut mask = vec![0u8; words.div_ceil(8) as usize];
        if !mask.is_empty() {
            target
                .process
                .read(ptr, &mut mask)
                .map_err(|e| format!("pointer mask {i} unreadable at {ptr:#x}: {e}"))?;
        }
        masks[i] = mask;
    }
    // runtime.allgs is a pointer in .bss of every Go program: its bit must be set.
    if let Ok(g) = target.globals() {
        let allgs = g.allgs + target.load_bias;
        let (lo, len) = ranges[1];
        let marked = (lo..lo + len).contains(&allgs) && is_set(&masks[1], (allgs - lo) / 8);
        if !marked {
            return Err(format!(
                "the bss pointer mask does not mark runtime.allgs at {allgs:#x}"
            ));
        }
    }
    Ok(masks)
}

fn is_set(mask: &[u8], word: u64) -> bool {
    mask.get((word / 8) as usize)
        .is_some_and(|b| b & (1 << (word % 8)) != 0)
}

impl DataBss {
    pub(super) fn scan(&self) -> GlobalScan {
        if self.masks.is_some() {
            GlobalScan::GcBitmaps
        } else {
            GlobalScan::Conservative
        }
    }

    /// Appends to `out` the words of data and bss to follow: those the masks mark, or all.
    pub(super) fn words(&self, heap: &mut Heap, out: &mut Vec<u64>) {
        let Some(masks) = &self.masks else {
            heap.read_words(&self.ranges, out);
            return;
        };
        let mut words = Vec::new();
        for (&range, mask) in self.ranges.iter().zip(masks) {
            // Only the runs of marked words are read.
            words.clear();
            heap.read_words(&marked_runs(range, mask), &mut words);
            out.extend_from_slice(&words);
        }
    }
}

/// The runs of consecutive words of `range` whose bits are set in `mask`, as (addr, bytes).
fn marked_runs((lo, len): (u64, u64), mask: &[u8]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for w in 0..len / 8 {
        if !is_set(mask, w) {
            continue;
        }
        let addr = lo + w * 8;
        match runs.last_mut() {
            Some((start, n)) if *start + *n == addr => *n += 8,
            _ => runs.push((addr, 8)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_words_are_read_in_runs() {
        // Words 0, 1, 3 and 9 of ten marked.
        let mask = [0b0000_1011, 0b0000_0010];
        assert_eq!(
            marked_runs((0x1000, 80), &mask),
            vec![(0x1000, 16), (0x1018, 8), (0x1048, 8)]
        );
        assert!(marked_runs((0x1000, 80), &[0, 0]).is_empty());
    }

    #[test]
    fn the_masks_are_found_where_each_go_version_keeps_them() {
        assert_eq!(mask_word(21), 67);
        assert_eq!(mask_word(25), 67);
        assert_eq!(mask_word(26), 68);
        assert_eq!(mask_word(27), 65);
    }
}
