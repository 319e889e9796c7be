//! leaktrace: finds goroutine leaks and the memory they pin in a running Go program, with
//! read-only snapshots of its memory and uprobes on its runtime.
//!
//! The modules follow the data flow: `tracee` (what the traced binary and process are) ->
//! `probes` (BPF programs, attached and detached) -> `collector` (records decoded) -> `model`
//! -> `report`; `trace` runs that flow for `leaktrace -p`; `census` reads the target's goroutines and memory
//! without probes, for `dump`.

pub mod alloc;
pub mod census;
pub mod collector;
pub mod detect;
pub mod dump;
pub mod model;
pub mod privileges;
pub mod probes;
pub mod report;
pub mod signals;
pub mod trace;
pub mod tracee;
