//! The allocation figures of a trace: the sites of report.json (from the runtime's heap
//! profile or the fallback sampler), the sites that grew, and what each leak group's
//! goroutines allocated.

use std::collections::HashMap;

use anyhow::anyhow;
use leaktrace_common::AllocStat;
use serde::Serialize;

use super::{
    AllocPlan,
    profile::{self, AllocSite, HeapProfile},
    sampler,
};
use crate::{probes::Samples, tracee::Target};

/// What a group of goroutines allocated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Allocated {
    pub count: u64,
    pub bytes: u64,
    /// "exact": every allocation; "windows": every allocation in probe windows, scaled;
    /// "sampled": span refills (a whole span each) and large allocations, an estimate of the
    /// bytes the goroutines allocated; "sampled in windows": the same in probe windows,
    /// scaled.
    pub source: &'static str,
}

/// Where allocations happen (`report.json` `allocation_sites`).
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct AllocationSites {
    /// Where the figures come from.
    pub source: String,
    /// Why the runtime's own profile is not used, or is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// `runtime.MemProfileRate` when the runtime's profile is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// By estimated bytes allocated since the program started (the runtime's profile) or
    /// while traced (the fallback sampler), largest first.
    pub sites: Vec<AllocSite>,
}

/// What the goroutines `goids` allocated, from per-goroutine counts.
pub fn sum_allocations(
    goids: &[u64],
    per_goroutine: &HashMap<u64, AllocStat>,
    source: &'static str,
) -> Allocated {
    let mut a = Allocated {
        source,
        ..Allocated::default()
    };
    for s in goids.iter().filter_map(|g| per_goroutine.get(g)) {
        a.count += s.count;
        a.bytes += s.bytes;
    }
    a
}

/// The allocation sites of the report, with the sites that grew most during the trace and
/// the heap profile they came from.
pub struct AllocationOutcome {
    pub report: AllocationSites,
    pub growing: Vec<AllocSite>,
    /// (object size, objects) pairs seen, for the allocation-size histogram.
    pub sizes: Vec<(u64, u64)>,
    /// The runtime's profile the sites came from, when it was sampling: for
    /// `allocations.pb.gz` (the fallback sampler's samples serve there otherwise).
    pub profile: Option<HeapProfile>,
}

impl AllocationOutcome {
    /// No sites, and why.
    fn unknown(note: String) -> Self {
        Self {
            report: AllocationSites {
                source: "none".into(),
                note: Some(note),
                rate: None,
                sites: Vec::new(),
            },
            growing: Vec::new(),
            sizes: Vec::new(),
            profile: None,
        }
    }
}

/// Sites in report.json.
const REPORTED_SITES: usize = 20;

/// Allocation sites from the runtime's heap profile (read again now), or from the fallback
/// sampler, with the allocation sizes they saw.
pub fn report(
    target: &Target,
    plan: &AllocPlan,
    profile_start: &anyhow::Result<HeapProfile>,
    profile_last: Option<HeapProfile>,
    samples: Option<&Samples>,
) -> AllocationOutcome {
    if plan.fallback && samples.is_none() {
        return AllocationOutcome::unknown(format!(
            "{}; the sampler's probes were not placed, or were shed (over --max-overhead) before any window of theirs closed, so allocation sites are unknown for this trace",
            plan.note
                .as_deref()
                .unwrap_or("the runtime's heap profile cannot be read")
        ));
    }
    if let Some(smp) = samples {
        let (sites, sizes) = sampler::sampled_sites(target, smp, plan.classes.as_ref());
        return AllocationOutcome {
            report: AllocationSites {
                source: match smp.duty {
                    Some(d) => format!(
                        "span refills and large allocations (probes in windows, {:.1}% of the time, scaled)",
                        d * 100.0
                    ),
                    None => "span refills and large allocations (probes)".into(),
                },
                note: plan.note.clone(),
                rate: None,
                sites: sites.iter().take(REPORTED_SITES).cloned().collect(),
            },
            growing: sites,
            sizes,
            profile: None,
        };
    }
    let profile = match profile_last.ok_or_else(|| match profile_start {
        Ok(_) => anyhow!("the target could not be read again"),
        Err(e) => anyhow!("{e:#}"),
    }) {
        Ok(p) => p,
        Err(e) => return AllocationOutcome::unknown(format!("{e:#}")),
    };
    let sizes = profile.sizes();
    let sites = profile.sites(target);
    let growing = match profile_start {
        Ok(p0) => profile::growth(&p0.sites(target), &sites),
        Err(_) => sites.clone(),
    };
    let note = if profile.sampling() {
        plan.note.clone()
    } else {
        Some(format!(
            "the runtime's memory profiling is off (MemProfileRate {}{}): no allocation sites",
            profile.rate,
            if profile.disabled {
                ", disabled by the linker"
            } else {
                ""
            }
        ))
    };
    AllocationOutcome {
        report: AllocationSites {
            source: "runtime heap profile (read from the target's memory)".into(),
            note,
            rate: Some(profile.rate),
            sites: sites.into_iter().take(REPORTED_SITES).collect(),
        },
        growing,
        sizes,
        profile: profile.sampling().then_some(profile),
    }
}
