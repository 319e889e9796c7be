//! The runtime's own sampled heap profile, read from the target's memory: what
//! `go tool pprof -inuse_space` would show, without an HTTP endpoint and with no probe.
//!
//! The runtime samples about one allocation per `runtime.MemProfileRate` bytes (512 KiB by
//! default) and keeps, per allocation stack and size, a `bucket` on the list at
//! `runtime.mbuckets` (linked through `allnext`). Each bucket is followed by its stack
//! (`nstk` return PCs, one per logical frame: inlined calls already expanded) and its
//! `memRecord`: the counts as of the last GC mark termination (`active`), then three
//! cycles not yet published (`future`). Go 1.21-1.26 keep bytes beside counts in each
//! cycle; Go 1.27 keeps only counts (bytes = count x size). Layout checked against
//! `runtime/mprof.go` of every supported release.
//!
//! The linker sets `runtime.disableMemoryProfiling` when nothing in the program can read the
//! profile (no `runtime.MemProfile`, no `runtime/pprof`), and the runtime then sets
//! `MemProfileRate` to 0 and samples nothing: the profile says so instead of being empty.

use std::collections::HashMap;

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;

use crate::tracee::{Target, pclntab::Frame};

/// `bucket` header: next, allnext, typ, hash, size, nstk (six words).
const BUCKET_HEADER: u64 = 48;
const MEM_PROFILE: u64 = 1;
/// The most stack a bucket can hold (`maxProfStackDepth` is 1024 in 1.23+, 32 before).
const MAX_STACK: u64 = 1024 + 2;
/// A bound on the list walk, well above what real programs have (one bucket per distinct
/// allocation stack and size).
const MAX_BUCKETS: usize = 1 << 20;

/// Sampled allocations of one stack and size, as the runtime counts them (unscaled).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// The object size the runtime bucketed by.
    pub size: u64,
    /// Return PCs, innermost first, as runtime addresses.
    pub stack: Vec<u64>,
    /// As of the last GC: sampled allocations and frees.
    pub allocs: u64,
    pub frees: u64,
    /// Sampled allocations since then, not yet published by a GC.
    pub recent_allocs: u64,
}

/// The whole profile.
#[derive(Clone, Debug, Default)]
pub struct HeapProfile {
    /// `runtime.MemProfileRate`: the mean bytes between samples; 0 when sampling is off.
    pub rate: u64,
    /// The linker turned memory profiling off for this program.
    pub disabled: bool,
    pub buckets: Vec<Bucket>,
}

/// One allocation site of the profile, estimated from the samples the way `runtime/pprof`
/// scales them (`scaleHeapSample`).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct AllocSite {
    /// The first frame outside the runtime: the allocating call.
    pub function: String,
    pub file: String,
    pub line: u32,
    pub alloc_objects: u64,
    pub alloc_bytes: u64,
    pub inuse_objects: u64,
    pub inuse_bytes: u64,
}

/// Reads the profile. Errors say why there is none (a stripped binary has no symbols for
/// it).
pub fn read(target: &Target) -> anyhow::Result<HeapProfile> {
    let sym = |name: &str| {
        target
            .binary
            .data_symbol(name)
            .map(|s| s.addr + target.load_bias)
            .ok_or_else(|| {
                anyhow!(
                    "the heap profile needs the symbol {name}, and this binary has no symbol table (built with -ldflags=-s); rebuild without -s to see allocation sites"
                )
            })
    };
    let p = &target.process;
    let rate = p.read_u64(sym("runtime.MemProfileRate")?)?;
    let mut flag = [0u8; 1];
    p.read(sym("runtime.disableMemoryProfiling")?, &mut flag)?;
    let head = p.read_u64(sym("runtime.mbuckets")?)?;
    let v = target.binary.version();
    let cycle_words: u64 = if (v.major, v.minor) >= (1, 27) { 2 } else { 4 };
    let mut buckets = Vec::new();
    let mut next = head;
    while next != 0 {
        if buckets.len() >= MAX_BUCKETS {
            bail!("more than {MAX_BUCKETS} heap profile buckets: the list looks corrupt");
        }
        let mut hdr = [0u8; BUCKET_HEADER as usize];
        p.read(next, &mut hdr)
            .with_context(|| format!("reading heap profile bucket at {next:#x}"))?;
        let word = |i: usize| u64::from_le_bytes(hdr[i * 8..i * 8 + 8].try_into().unwrap());
        let (allnext, typ, size, nstk) = (word(1), word(2), word(4), word(5));
        if typ != MEM_PROFILE || nstk > MAX_STACK {
            bail!(
                "heap profile bucket at {next:#x} has type {typ} and {nstk} frames: not a memory profile bucket"
            );
        }
        // The stack, then memRecord: active and three future cycles.
        let words = nstk + 4 * cycle_words;
        let mut body = vec![0u8; (words * 8) as usize];
        p.read(next + BUCKET_HEADER, &mut body)?;
        let w = |i: u64| {
            let i = i as usize * 8;
            u64::from_le_bytes(body[i..i + 8].try_into().unwrap())
        };
        let cycle = |c: u64| nstk + c * cycle_words;
        buckets.push(Bucket {
            size,
            stack: (0..nstk).map(w).collect(),
            allocs: w(cycle(0)),
            frees: w(cycle(0) + 1),
            recent_allocs: (1..4).map(|c| w(cycle(c))).sum(),
        });
        next = allnext;
    }
    Ok(HeapProfile {
        rate,
        disabled: flag[0] != 0,
        buckets,
    })
}

/// `runtime/pprof`'s `scaleHeapSample`: a sampled count and byte total to an estimate of
/// the real ones. An object of size s is sampled with probability 1 - exp(-s / rate).
pub fn scale(count: u64, bytes: u64, rate: u64) -> (u64, u64) {
    if count == 0 || bytes == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, bytes);
    }
    let avg = bytes as f64 / count as f64;
    let s = 1.0 / (1.0 - (-avg / rate as f64).exp());
    ((count as f64 * s) as u64, (bytes as f64 * s) as u64)
}

impl HeapProfile {
    /// A bucket's stack as frames, innermost first, with the runtime's own frames above the
    /// allocating call left out (`mallocgc`, `newobject`, `growslice`...), as `runtime/pprof`
    /// does; all of them when the stack has nothing else.
    pub fn frames(&self, target: &Target, b: &Bucket) -> Vec<Frame> {
        allocating_frames(target, &b.stack)
    }

    /// Allocation sites by estimated bytes allocated since the program started, largest
    /// first; buckets of the same site (several sizes or callers) are added up.
    pub fn sites(&self, target: &Target) -> Vec<AllocSite> {
        let mut by_site: HashMap<(String, String, u32), AllocSite> = HashMap::new();
        for b in &self.buckets {
            let Some(f) = self.frames(target, b).into_iter().next() else {
                continue;
            };
            let allocs = b.allocs + b.recent_allocs;
            let (ao, ab) = scale(allocs, allocs * b.size, self.rate);
            let live = b.allocs.saturating_sub(b.frees);
            let (io, ib) = scale(live, live * b.size, self.rate);
            let e = by_site
                .entry((f.function.clone(), f.file.clone(), f.line))
                .or_insert_with(|| AllocSite::at(&f));
            e.alloc_objects += ao;
            e.alloc_bytes += ab;
            e.inuse_objects += io;
            e.inuse_bytes += ib;
        }
        sorted(by_site)
    }

    /// (object size, estimated objects allocated) of every bucket, for the size histogram.
    pub fn sizes(&self) -> Vec<(u64, u64)> {
        self.buckets
            .iter()
            .map(|b| {
                let n = b.allocs + b.recent_allocs;
                (b.size, scale(n, n * b.size, self.rate).0)
            })
            .collect()
    }

    /// Sampling is on: the runtime records allocations.
    pub fn sampling(&self) -> bool {
        self.rate > 0 && !self.disabled
    }
}

pub(super) fn sorted(by_site: HashMap<(String, String, u32), AllocSite>) -> Vec<AllocSite> {
    let mut v: Vec<AllocSite> = by_site.into_values().collect();
    v.sort_by(|a, b| {
        b.alloc_bytes
            .cmp(&a.alloc_bytes)
            .then_with(|| a.function.cmp(&b.function))
    });
    v
}

impl AllocSite {
    pub(super) fn at(f: &Frame) -> Self {
        Self {
            function: f.function.clone(),
            file: f.file.clone(),
            line: f.line,
            alloc_objects: 0,
            alloc_bytes: 0,
            inuse_objects: 0,
            inuse_bytes: 0,
        }
    }
}

/// Sites whose in-use bytes grew between two profiles, most first (by in-use growth; the
/// allocation figures are the growth of the allocated totals).
pub fn growth(before: &[AllocSite], after: &[AllocSite]) -> Vec<AllocSite> {
    let key = |s: &AllocSite| (s.function.clone(), s.file.clone(), s.line);
    let old: HashMap<_, &AllocSite> = before.iter().map(|s| (key(s), s)).collect();
    let mut v: Vec<AllocSite> = after
        .iter()
        .map(|s| {
            let mut d = s.clone();
            if let Some(o) = old.get(&key(s)) {
                d.alloc_objects = d.alloc_objects.saturating_sub(o.alloc_objects);
                d.alloc_bytes = d.alloc_bytes.saturating_sub(o.alloc_bytes);
                d.inuse_objects = d.inuse_objects.saturating_sub(o.inuse_objects);
                d.inuse_bytes = d.inuse_bytes.saturating_sub(o.inuse_bytes);
            }
            d
        })
        .filter(|s| s.inuse_bytes > 0 || s.alloc_bytes > 0)
        .collect();
    v.sort_by(|a, b| {
        b.inuse_bytes
            .cmp(&a.inuse_bytes)
            .then(b.alloc_bytes.cmp(&a.alloc_bytes))
    });
    v
}

/// Return addresses (runtime addresses, innermost first) as frames, with the runtime's own
/// frames above the allocating call left out (`mallocgc`, `newobject`, `growslice`...), as
/// `runtime/pprof` does; all of them when the stack has nothing else.
pub(super) fn allocating_frames(target: &Target, return_pcs: &[u64]) -> Vec<Frame> {
    let all: Vec<Frame> = return_pcs
        .iter()
        .filter_map(|&pc| {
            let link = pc.checked_sub(target.load_bias)?.checked_sub(1)?;
            target.binary.symbolize(link).into_iter().next()
        })
        .collect();
    let first = all
        .iter()
        .position(|f| !is_runtime(&f.function))
        .unwrap_or(0);
    all[first..].to_vec()
}

fn is_runtime(function: &str) -> bool {
    function.starts_with("runtime.") || function.starts_with("internal/runtime/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_matches_runtime_pprof() {
        // One 512 KiB object at the default rate is sampled with probability 1 - 1/e.
        let (n, b) = scale(1, 512 * 1024, 512 * 1024);
        assert_eq!(n, 1);
        assert_eq!(b, (512.0 * 1024.0 / (1.0 - (-1f64).exp())) as u64);
        // Small objects are scaled up by about rate / size.
        let (n, _) = scale(10, 10 * 64, 512 * 1024);
        assert!((81_900..82_000).contains(&n), "{n}");
        assert_eq!(scale(5, 500, 1), (5, 500));
        assert_eq!(scale(0, 0, 512 * 1024), (0, 0));
    }
}
