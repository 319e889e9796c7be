//! A trace's state from attach to report: the target and its probes, what was learnt
//! (`Findings`), the memory timeline, the heap profile, the budget's bookkeeping and the
//! outputs that run alongside (Prometheus, the event log). Attaching makes one
//! (`Session::start`, in `attach`); the other stages (`follow`, `snapshot`, `budget`,
//! `finish`) are its methods, and `apply` is its findings'.

use std::time::Instant;

use leaktrace_common::MADVISE_NAMES;

use super::{TraceOptions, apply::Findings, windows::Windows};
use crate::{
    alloc::{AllocPlan, HeapProfile},
    census::{self, Census, activity::ActivityEstimate, retained::AddrMap},
    detect::{DetectOptions, pinned::PinnedEstimates, proof::Prover},
    model::MemoryPoint,
    probes::{Counts, HitCosts, Probes},
    tracee::Target,
};

pub(super) struct Session {
    pub opts: TraceOptions,
    pub target: Target,
    pub probes: Probes,
    pub plan: AllocPlan,
    /// What a hit of each probe costs the target.
    pub costs: HitCosts,
    pub start: Instant,
    /// The spawned command's PID.
    pub spawned: Option<u32>,
    /// A signal came while attaching.
    pub interrupted_attaching: bool,
    pub findings: Findings,
    pub detect: DetectOptions,
    /// The g address of every goroutine of the last snapshot, by goid.
    pub g_addrs: AddrMap<u64>,
    /// Takes every snapshot: a goroutine that did not run since the last one keeps its
    /// stack unread.
    pub census: Census,
    /// Why goroutine snapshots cannot be taken, when they cannot.
    pub snapshot_error: Option<anyhow::Error>,
    pub next_snapshot: tokio::time::Instant,
    /// Snapshots came less often than `--snapshot-interval` because of their CPU, and it was
    /// said.
    pub snapshots_paced: bool,
    pub timeline: Vec<MemoryPoint>,
    /// The runtime's heap profile at the start and at the last snapshot (a target that
    /// exits can no longer be read at the end).
    pub profile_start: anyhow::Result<HeapProfile>,
    pub profile_last: Option<HeapProfile>,
    pub pinned: PinnedEstimates,
    pub pinned_next: Instant,
    /// The pinned estimates are shown while tracing (`top`, the Prometheus endpoint).
    pub pinned_shown: bool,
    /// The Prometheus endpoint's feed and server.
    pub metrics: Option<(
        tokio::sync::watch::Sender<String>,
        tokio::task::JoinHandle<()>,
    )>,
    /// The budget's last check: the counters then, and when.
    pub last_counts: Counts,
    pub last_check: Instant,
    /// Probes not placed or shed, and why.
    pub shed: Vec<String>,
    pub estimated: Option<ActivityEstimate>,
    /// The targeted probes at suspects' sites.
    pub sites: super::sites::Sites,
    /// Lost records already shown on a live line.
    pub lost_reported: u64,
    /// A proof by reachability under way, and when the next pass may run.
    pub prover: Option<Prover>,
    pub proof_next: Instant,
    pub proof_pace: super::snapshot::ProofPace,
    /// The leak groups the live output has named, and at what size.
    pub announced: crate::report::live::Announced,
    /// The probes placed in windows.
    pub windows: Windows,
    /// What the continuous probes cost at the last budget check (a fraction of a CPU): the
    /// windows have the rest of the budget.
    pub continuous_cost: f64,
    /// The kernel's BPF statistics, on while the probes' programs are timed.
    pub pricing: super::pricing::Pricing,
}

/// The target's memory now, with the madvise totals so far.
pub(super) fn memory_point(
    target: &Target,
    probes: &Probes,
    at: std::time::Duration,
    goroutines: Option<usize>,
) -> Option<MemoryPoint> {
    let m = census::memory::read(target).ok()?;
    let madvise = probes.madvise().ok()?;
    Some(MemoryPoint {
        seconds: at.as_secs_f64(),
        memory: m,
        madvise_bytes: MADVISE_NAMES
            .iter()
            .zip(madvise)
            .map(|(n, (bytes, _))| (n.to_string(), bytes))
            .collect(),
        goroutines,
    })
}
