//! The memory timeline: the target's memory at each snapshot of the trace, with what it
//! returned to the OS.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::census::MemorySnapshot;

/// The target's memory at one moment of the trace.
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct MemoryPoint {
    pub seconds: f64,
    /// RSS and the Go heap, named as in `dump --json`.
    #[serde(flatten)]
    pub memory: MemorySnapshot,
    /// Bytes the target passed to madvise since the trace started, by advice
    /// ("DONTNEED", "FREE", "HUGEPAGE", "NOHUGEPAGE", "other").
    pub madvise_bytes: BTreeMap<String, u64>,
    /// Goroutines in the target at this moment (from the snapshot taken with it).
    pub goroutines: Option<usize>,
}
