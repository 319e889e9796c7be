//! Read-only snapshots of the target, read with `process_vm_readv` while it runs: every
//! goroutine (`runtime.allgs`) unwound and symbolized (`goroutines`), the channels they wait
//! on (`channels`), the memory figures (`memory`), the scheduling rates before probes are
//! placed (`activity`), and the heap a group of goroutines keeps alive (`retained`). They
//! cost the target nothing per event and see what happened before leaktrace attached, which
//! no probe can. `dump` prints one; the live trace takes one every snapshot interval.

pub mod activity;
pub mod channels;
pub mod data_roots;
pub mod goroutines;
pub mod memory;
pub mod reach;
pub mod retained;
mod snapshots;
mod specials;
pub mod stackmaps;
mod unwind;

pub use goroutines::{CreatedBy, GoroutineSnapshot, StackFrame};
pub use memory::MemorySnapshot;
pub use snapshots::Census;

/// The shortest and the longest of some durations, in seconds (how long a group of
/// goroutines has waited or been blocked).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Seconds {
    pub min: f64,
    pub max: f64,
}

impl Seconds {
    /// `s` alone.
    pub fn of(s: f64) -> Self {
        Self { min: s, max: s }
    }

    /// Widens the range to take in `s`.
    pub fn take_in(&mut self, s: f64) {
        self.min = self.min.min(s);
        self.max = self.max.max(s);
    }
}
