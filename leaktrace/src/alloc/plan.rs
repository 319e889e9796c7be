//! Where the allocation figures of a trace come from (`--alloc`), decided from the binary
//! before any probe is placed: the runtime's own heap profile, the fallback sampler's
//! probes, every allocation probed, or none.

use super::sampler::SizeClasses;
use crate::{probes::Probe, tracee::binary::GoBinary};

/// How allocations are seen (`--alloc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocMode {
    /// The runtime's own memory-profile samples, read from its memory at no cost; when the
    /// binary disabled memory profiling, span refills and large allocations, probed within
    /// the budget.
    Sampled,
    /// Every allocation, probed at each allocation entry point of the target's Go version;
    /// exempt from the budget, with its cost stated before it starts.
    Exact,
    /// No allocation figures beyond the heap totals.
    Off,
}

/// Where the allocation figures come from, decided from the binary before attaching.
pub struct AllocPlan {
    /// Probes to add to the chosen ones.
    pub probes: Vec<Probe>,
    /// Probes the budget does not shed (`--alloc exact`).
    pub exempt: Vec<Probe>,
    /// The fallback sampler (refill and large probes) is used.
    pub fallback: bool,
    pub classes: Option<SizeClasses>,
    /// Why the runtime's own profile is not used, when it is not.
    pub note: Option<String>,
}

impl AllocPlan {
    /// The runtime's heap profile is the source of allocation sites.
    pub fn reads_profile(&self) -> bool {
        !self.fallback && self.exempt.is_empty()
    }
}

/// The plan for `mode` on this binary.
pub fn plan(binary: &GoBinary, mode: AllocMode) -> AllocPlan {
    let mut plan = AllocPlan {
        probes: Vec::new(),
        exempt: Vec::new(),
        fallback: false,
        classes: SizeClasses::read(binary),
        note: None,
    };
    match mode {
        AllocMode::Off => {}
        AllocMode::Exact => {
            plan.probes.push(Probe::Alloc);
            plan.exempt.push(Probe::Alloc);
        }
        AllocMode::Sampled => {
            // The linker's choice is in the file: initialized data when true, .bss (no bytes
            // in the file) when false.
            let disabled = binary
                .data_symbol("runtime.disableMemoryProfiling")
                .map(|s| binary.read_vaddr(s.addr, 1).is_some_and(|b| b[0] != 0));
            let readable = binary.data_symbol("runtime.mbuckets").is_some();
            plan.note = match (disabled, readable) {
                (Some(false), true) => None,
                (Some(true), _) => Some(
                    "this program disabled the runtime's memory profiling (nothing in it can read the profile, e.g. no runtime/pprof), so allocations are sampled at span refills and large allocations instead".into(),
                ),
                _ => Some(
                    "the runtime's heap profile cannot be found without a symbol table (built with -ldflags=-s), so allocations are sampled at span refills and large allocations instead".into(),
                ),
            };
            if plan.note.is_some() {
                plan.fallback = true;
                plan.probes.extend([Probe::Refill, Probe::Large]);
            }
        }
    }
    plan
}
