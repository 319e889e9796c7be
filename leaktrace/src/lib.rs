//! leaktrace: finds goroutine leaks and the memory they pin in a running Go program, with
//! read-only snapshots of its memory and uprobes on its runtime.
//!
//! The modules follow the data flow, and each imports only from those before it: `tracee`
//! (what the traced binary and process are) -> `probes` (BPF programs, attached within a
//! budget, and `collector`, their records decoded), `census` (read-only snapshots of the
//! target's goroutines and memory) and `alloc` (where allocations come from) -> `model`
//! (plain data: goroutines, histograms, the memory timeline) -> `detect` (leak groups and
//! their evidence, the memory verdict, pinned memory) -> `report` (renderers). `trace` runs
//! that flow for `leaktrace -p` and `record`; `dump` takes one snapshot; `agent` runs snapshots
//! of every Go process of the host within one budget and serves them over HTTP.

pub mod agent;
pub mod alloc;
pub mod census;
pub mod collector;
pub mod detect;
pub mod dump;
pub mod kernel;
pub mod model;
pub mod privileges;
pub mod probes;
pub mod report;
pub mod signals;
pub mod trace;
pub mod tracee;
