//! Read-only snapshots of the target: every goroutine (`runtime.allgs`) and the memory
//! figures, read with `process_vm_readv` while the target runs. They cost the target nothing
//! per event and see what happened before leaktrace attached, which no probe can.

pub mod activity;
pub mod channels;
pub mod goroutines;
pub mod heapprofile;
pub mod memory;
pub mod retained;
mod unwind;

pub use goroutines::{CreatedBy, GoroutineSnapshot, StackFrame};
pub use memory::MemorySnapshot;
