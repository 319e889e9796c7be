//! The fallback allocation sampler: where the runtime's own heap profile cannot be read
//! (memory profiling disabled by the linker, or no symbol table), uprobes on span refills
//! and large allocations (`Probe::Refill`, `Probe::Large`) capture user stacks and bytes in
//! the kernel (`probes::Samples`); this turns them into sites, objects and sizes with the
//! target's own size-class tables.

use std::collections::HashMap;

use leaktrace_common::{AllocStat, LARGE_CLASS, SampleKey};

use super::profile::{AllocSite, allocating_frames, sorted};
use crate::{
    probes::Samples,
    tracee::{Target, binary::GoBinary, pclntab::Frame},
};

/// The target's size classes, from the tables the runtime allocates by
/// (`runtime.class_to_size` and `runtime.class_to_allocnpages`; in Go 1.25+
/// `internal/runtime/gc.SizeClassToSize` and `SizeClassToNPages`), read from the binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeClasses {
    /// Object size of each size class (class 0 is unused).
    pub size: Vec<u64>,
    /// Bytes of one span of each size class.
    pub span_bytes: Vec<u64>,
}

impl SizeClasses {
    pub fn read(binary: &GoBinary) -> Option<Self> {
        let table = |names: [&str; 2]| {
            names.iter().find_map(|n| {
                let s = binary.data_symbol(n)?;
                binary.read_vaddr(s.addr, s.size as usize)
            })
        };
        let sizes = table([
            "runtime.class_to_size",
            "internal/runtime/gc.SizeClassToSize",
        ])?;
        let pages = table([
            "runtime.class_to_allocnpages",
            "internal/runtime/gc.SizeClassToNPages",
        ])?;
        let size: Vec<u64> = sizes
            .as_chunks::<2>()
            .0
            .iter()
            .map(|c| u16::from_le_bytes(*c) as u64)
            .collect();
        let span_bytes: Vec<u64> = pages.iter().map(|&n| n as u64 * 8192).collect();
        (size.len() == span_bytes.len() && size.len() > 1).then_some(Self { size, span_bytes })
    }

    /// Bytes of one span of each span class (size class << 1 | noscan).
    pub fn by_span_class(&self) -> Vec<u64> {
        self.span_bytes.iter().flat_map(|&b| [b, b]).collect()
    }
}

/// Allocation sites from the fallback sampler (span refills and large allocations): bytes
/// are whole spans for refills, so small-object sites are estimated to a span; in-use bytes
/// are not known to it. Also returns (object size, objects) pairs for the size histogram.
pub fn sampled_sites(
    target: &Target,
    samples: &Samples,
    classes: Option<&SizeClasses>,
) -> (Vec<AllocSite>, Vec<(u64, u64)>) {
    let mut by_site: HashMap<(String, String, u32), AllocSite> = HashMap::new();
    let mut sizes = Vec::new();
    for (key, stack, stat) in &samples.stacks {
        let (objects, size) = objects_and_size(key, stat, classes);
        if size > 0 {
            sizes.push((size, objects));
        }
        let frames = sampled_frames(target, stack);
        let Some(f) = frames.first() else {
            continue;
        };
        let e = by_site
            .entry((f.function.clone(), f.file.clone(), f.line))
            .or_insert_with(|| AllocSite::at(f));
        e.alloc_objects += objects;
        e.alloc_bytes += stat.bytes;
    }
    (sorted(by_site), sizes)
}

/// A sampler stack as frames: its first entry is the probed function itself (the
/// instruction pointer), the rest return addresses.
pub fn sampled_frames(target: &Target, stack: &[u64]) -> Vec<Frame> {
    allocating_frames(target, stack.get(1..).unwrap_or_default())
}

/// The objects a sampler key stands for, and their size: a large allocation is one object of
/// its size; a refill is a span of objects of its size class (0 when the tables are unknown,
/// then one object per refill).
pub fn objects_and_size(
    key: &SampleKey,
    stat: &AllocStat,
    classes: Option<&SizeClasses>,
) -> (u64, u64) {
    if key.span_class == LARGE_CLASS {
        return (stat.count, key.size);
    }
    let class = (key.span_class >> 1) as usize;
    match classes.and_then(|c| Some((c.size.get(class)?, c.span_bytes.get(class)?))) {
        Some((&size, &span)) if size > 0 => (stat.count * (span / size), size),
        _ => (stat.count, 0),
    }
}
