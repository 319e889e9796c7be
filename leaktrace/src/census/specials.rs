//! The roots the Go runtime keeps in mspan specials, read from outside: what the GC's
//! `markrootSpans` (runtime/mgcmark.go, Go 1.21-1.27) scans before anything else is marked.
//!
//! - A finalizer (`runtime.SetFinalizer`): the words of the object it is set on (what the
//!   object references stays alive until the finalizer has run; the object itself need not),
//!   and the special's own fields past its header (`fn`, the finalizer's closure).
//! - A weak handle (Go 1.23+) and a cleanup (`runtime.AddCleanup`, Go 1.24+): the special's
//!   fields past its header (the handle; the cleanup's closure and argument).
//!
//! Spans with specials are found as the GC finds them: `mheap_.allArenas`, each arena's
//! `pageSpecials` bitmap (a bit at the first page of each span with specials), the span at
//! that page, its `specials` list. The special's fields are scanned whole, conservatively
//! (a `nret` or a type pointer read as a word only adds reachability).

use anyhow::{Context as _, bail};

use super::goroutines::{pointer_slice, u64_at};
use crate::tracee::{Target, batch};

/// At most this many specials are followed over all spans: a program has one per finalizer,
/// cleanup, weak pointer and sampled allocation (one per 512 KiB allocated by default).
const MAX_SPECIALS: usize = 10_000_000;
/// At most this many arenas (64 MiB each): 64 TiB of heap.
const MAX_ARENAS: u64 = 1 << 20;

/// Ranges of the target (address, length) the GC scans from mspan specials.
pub(super) fn roots(target: &Target, mheap: u64) -> anyhow::Result<Vec<(u64, u64)>> {
    let l = &target.layout;
    let (a, sp) = (&l.arena, &l.special);
    // Arena index 0 is not a heap arena on amd64 (arenaBaseOffset puts the heap far above
    // it), and pointer_slice drops zeros.
    let arenas = pointer_slice(
        target,
        mheap + l.mheap.all_arenas,
        "runtime.mheap_.allArenas",
        MAX_ARENAS,
    )?;

    // The heapArena of each index: mheap_.arenas[l1][l2].
    let l2_mask = (1u64 << a.l2_bits) - 1;
    let mut l1s: Vec<u64> = arenas.iter().map(|ai| ai >> a.l2_bits).collect();
    l1s.sort_unstable();
    l1s.dedup();
    let l2s = read_words(target, l1s.iter().map(|l1| mheap + l.mheap.arenas + l1 * 8))?;
    let l2_of = |ai: u64| {
        l1s.binary_search(&(ai >> a.l2_bits))
            .ok()
            .map(|i| l2s[i])
            .filter(|&p| p != 0)
    };
    let slots: Vec<u64> = arenas
        .iter()
        .filter_map(|&ai| Some(l2_of(ai)? + (ai & l2_mask) * 8))
        .collect();
    let heap_arenas: Vec<u64> = read_words(target, slots.into_iter())?
        .into_iter()
        .filter(|&p| p != 0)
        .collect();

    // pageSpecials of each arena, then the span at each set bit.
    let bitmap_len = (a.pages_per_arena / 8) as usize;
    let ranges: Vec<(u64, usize)> = heap_arenas
        .iter()
        .map(|&ha| (ha + l.heap_arena.page_specials, bitmap_len))
        .collect();
    let bitmaps = read_exact(target, &ranges, "heapArena.pageSpecials")?;
    let mut span_slots = Vec::new();
    for (&ha, bits) in heap_arenas.iter().zip(bitmaps.chunks_exact(bitmap_len)) {
        for (i, &byte) in bits.iter().enumerate() {
            for j in (0..8).filter(|j| byte & (1 << j) != 0) {
                span_slots.push(ha + l.heap_arena.spans + (i as u64 * 8 + j) * 8);
            }
        }
    }
    let mut spans: Vec<u64> = read_words(target, span_slots.into_iter())?;
    spans.retain(|&s| s != 0);
    spans.sort_unstable();
    spans.dedup();

    // Each span's start, object size, noscan bit and first special.
    let m = &l.mspan;
    let ranges: Vec<(u64, usize)> = spans.iter().map(|&s| (s, m.size as usize)).collect();
    let headers = read_exact(target, &ranges, "mspans with specials")?;
    struct SpanInfo {
        start: u64,
        elemsize: u64,
        scan: bool,
    }
    let mut info = Vec::new();
    let mut frontier: Vec<(usize, u64)> = Vec::new();
    for b in headers.chunks_exact(m.size as usize) {
        let i = info.len();
        info.push(SpanInfo {
            start: u64_at(b, m.start_addr),
            elemsize: u64_at(b, m.elemsize),
            scan: b.get(m.spanclass as usize).is_some_and(|c| c & 1 == 0),
        });
        let first = u64_at(b, m.specials);
        if first != 0 {
            frontier.push((i, first));
        }
    }

    // The lists, a level at a time; each special read at the size of the largest root kind.
    let sizes = [
        Some((sp.finalizer_kind, sp.finalizer_size)),
        sp.weak_handle_kind.zip(sp.weak_handle_size),
        sp.cleanup_kind.zip(sp.cleanup_size),
    ];
    let read_len = sizes
        .iter()
        .flatten()
        .map(|&(_, s)| s)
        .max()
        .unwrap_or(0)
        .max(sp.size);
    let mut out = Vec::new();
    let mut seen = 0usize;
    while !frontier.is_empty() {
        seen += frontier.len();
        if seen > MAX_SPECIALS {
            bail!(
                "more than {MAX_SPECIALS} mspan specials (finalizers, cleanups, profiled \
                 allocations): the runtime layout does not match, or the lists changed while \
                 read"
            );
        }
        let ranges: Vec<(u64, usize)> = frontier
            .iter()
            .map(|&(_, s)| (s, read_len as usize))
            .collect();
        let (bytes, short) = read_specials(target, &ranges, sp.size as usize)?;
        let mut next = Vec::new();
        let specials = frontier.iter().zip(bytes.chunks_exact(read_len as usize));
        for ((&(i, addr), b), short) in specials.zip(short) {
            let kind = b.get(sp.kind as usize).copied().unwrap_or(0);
            if let Some(&(_, size)) = sizes.iter().flatten().find(|&&(k, _)| k == kind) {
                if short {
                    bail!(
                        "the mspan special at {addr:#x} (kind {kind}) could not be read whole; \
                         without it a root of the GC is missing and nothing can be proven"
                    );
                }
                out.push((addr + sp.size, size.saturating_sub(sp.size) & !7));
            }
            let s = &info[i];
            if kind == sp.finalizer_kind && s.scan && s.elemsize != 0 {
                let offset = match sp.offset_width {
                    2 => u64::from(u16::from_le_bytes([
                        b[sp.offset as usize],
                        b[sp.offset as usize + 1],
                    ])),
                    _ => u64_at(b, sp.offset),
                };
                out.push((s.start + offset / s.elemsize * s.elemsize, s.elemsize & !7));
            }
            let link = u64_at(b, sp.next);
            if link != 0 {
                next.push((i, link));
            }
        }
        frontier = next;
    }
    Ok(out)
}

/// The specials at `ranges`, each read at the largest root kind's size, and which were read
/// only in part: one that cannot be read that far (a smaller kind at the end of mapped
/// memory) is read again at the header's size, which is all a kind that is no root needs.
fn read_specials(
    target: &Target,
    ranges: &[(u64, usize)],
    header: usize,
) -> anyhow::Result<(Vec<u8>, Vec<bool>)> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    let mut buf = vec![0u8; total];
    let ok =
        batch::read_ranges(&target.process, ranges, &mut buf).context("reading mspan specials")?;
    let mut at = 0;
    for (&(addr, len), &ok) in ranges.iter().zip(&ok) {
        if !ok {
            let one = read_exact(target, &[(addr, header)], "an mspan special")?;
            buf[at..at + header].copy_from_slice(&one);
        }
        at += len;
    }
    Ok((buf, ok.into_iter().map(|ok| !ok).collect()))
}

/// The 8-byte words at `addrs`, in one batch; an address that cannot be read fails the whole.
fn read_words(target: &Target, addrs: impl Iterator<Item = u64>) -> anyhow::Result<Vec<u64>> {
    let ranges: Vec<(u64, usize)> = addrs.map(|a| (a, 8)).collect();
    let bytes = read_exact(target, &ranges, "the heap's arena index")?;
    Ok(bytes
        .as_chunks::<8>()
        .0
        .iter()
        .map(|c| u64::from_le_bytes(*c))
        .collect())
}

/// `ranges`, back to back; any one that cannot be read fails the whole: a root left unread
/// could make a live goroutine look leaked.
fn read_exact(target: &Target, ranges: &[(u64, usize)], what: &str) -> anyhow::Result<Vec<u8>> {
    let total: usize = ranges.iter().map(|r| r.1).sum();
    let mut buf = vec![0u8; total];
    let ok = batch::read_ranges(&target.process, ranges, &mut buf)
        .with_context(|| format!("reading {what}"))?;
    if let Some(i) = ok.iter().position(|&ok| !ok) {
        bail!(
            "reading {what}: {:#x} could not be read (freed while read?); without these \
             roots of the GC nothing can be proven",
            ranges[i].0
        );
    }
    Ok(buf)
}
