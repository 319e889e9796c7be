//! Allocations, in one place: where the figures come from (`plan`, chosen by `--alloc`
//! before attaching), the runtime's own heap profile read from the target's memory
//! (`profile`), the fallback sampler's kernel-side stacks turned into sites (`sampler`), and
//! the figures of the report: allocation sites, the sites that grew, what each leak group
//! allocated (`sites`). The pprof form is a renderer's (`report::pprof`).

pub mod plan;
pub mod profile;
pub mod sampler;
pub mod sites;

pub use plan::{AllocMode, AllocPlan};
pub use profile::{AllocSite, HeapProfile};
pub use sites::{Allocated, AllocationSites};
