//! report.json: the report as data, one struct per section. The text report
//! (`report::text`), the exports and the Prometheus metrics render it; the README documents
//! it ("report.json").

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    alloc::{Allocated, AllocationSites},
    census::activity::ActivityEstimate,
    detect::{LeakGroup, verdict::MemoryVerdict},
    model::{MemoryPoint, histograms::Percentiles},
};

/// What the probes did during the trace.
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct ProbeSummary {
    /// Runtime functions probed at the end of the trace.
    pub attached: Vec<String>,
    /// Hits per probed function over the whole trace.
    pub hits: BTreeMap<String, u64>,
    pub lost_records: u64,
    /// Each time probes were shed to stay under --max-overhead, and why.
    pub shed: Vec<String>,
    /// What one probe hit costs on this machine, measured at start-up, on an instruction
    /// the kernel single-steps out of line (a return, most targeted sites): the budget
    /// multiplies such hits by it.
    pub hit_cost_us: f64,
    /// And on a `push`, which the kernel emulates (Linux 6.12+): where the probes on a
    /// function's entry trap (its frame push, after the stack check).
    pub hit_cost_push_us: f64,
    /// Of each of the two above, what the calibration's own BPF program ran (0 where the
    /// kernel's BPF statistics could not be turned on).
    pub hit_cost_program_us: f64,
    /// What one hit of each probe that fired cost, by probed function: one of the two
    /// above (the targeted sites at the single-stepped figure, the most they cost), or,
    /// where its program was timed (`program_us_by_function`), the trap with that program
    /// in place of the calibration's.
    pub hit_cost_us_by_function: BTreeMap<String, f64>,
    /// What each probe's own BPF program ran per hit in the target, by probed function,
    /// timed by the kernel's BPF statistics over its first runs (absent where they could not
    /// be turned on or the probe ran too seldom): the fallback allocation sampler's programs
    /// walk the target's stack, and cost more than the calibration's.
    pub program_us_by_function: BTreeMap<String, f64>,
    /// The target's activity, read just before any probe was placed on a running target:
    /// what judged which probes fit the budget.
    pub estimated_before_attach: Option<ActivityEstimate>,
    /// How each probe was placed: continuously, or in windows (whose counts the report
    /// scales by the duty cycle).
    pub sampling: BTreeMap<String, Sampling>,
    /// Park durations, when park/wake ran in windows: how many were measured exactly (a
    /// park and its wake-up in one window: the histograms hold only these), how many
    /// outlasted their window (the wake-up was seen, the park began earlier) and how many
    /// were still open when the last window closed (right-censored).
    pub park_durations: Option<ParkDurations>,
    /// How the park and wake-up counts were scaled, when park/wake ran in windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub park_scaling: Option<CountScaling>,
    /// The targeted probes tried at suspects' sites (`--probes` with `sites`, the
    /// default), in the order they were tried: each is placed for a short trial first and
    /// kept only if the rate the trial measured fits its share of the budget.
    pub sites: Vec<TargetedProbe>,
}

/// A targeted probe at a leak group's site, as report.json's `probes.sites` says it.
#[derive(Clone, Debug, Serialize, PartialEq, schemars::JsonSchema)]
pub struct TargetedProbe {
    /// The call the probed instruction follows: the group's blocking call, or the call
    /// into the runtime of its `go` statement.
    pub function: String,
    pub file: String,
    pub line: u32,
    /// "continuous": it fit and stayed (until the end, or until a budget check shed
    /// every site: then "shed"); "off": the trial measured more than its share of the
    /// budget, and it was removed after the trial (a site passed by every request of a
    /// busy service: its silence between windows would prove nothing, so it is not placed
    /// in windows either).
    pub mode: &'static str,
    /// What the trial measured: hits per second over `trial_ms`.
    pub trial_hits_per_second: f64,
    pub trial_ms: f64,
    /// The cost at that rate and the most a site may cost, as fractions of a CPU.
    pub cost: f64,
    pub allowed: f64,
}

/// How counts sampled in windows were scaled to the whole trace.
#[derive(Clone, Debug, Serialize, PartialEq, schemars::JsonSchema)]
pub struct CountScaling {
    /// "runtime counter": divided by the share of the runtime's own count that fell in the
    /// windows (the target runs slower in a window, under the probes' hits, and does less
    /// there than outside, so the share of the time would undercount); "duty cycle":
    /// divided by the share of the time (the runtime's counters could not be read). The
    /// histograms are the windows' own, unscaled: they give the shape.
    pub method: &'static str,
    /// The divisor.
    pub share: f64,
    /// The share of the time the windows were open.
    pub duty: f64,
    /// The runtime's own count per second over the windowed time. Of parks: the samples
    /// in `sched.timeToRun` times 8 (one stop in 8 of each goroutine is sampled), less the
    /// first runs of new goroutines, which it samples too (15/8 of a stop per goroutine
    /// created, from `sched.goidgen`); yields and preemptions are in it too. Of goroutines
    /// created: `sched.goidgen`.
    pub runtime_per_second: Option<f64>,
    /// Windows whose runtime count was left out of `share`: the runtime's count of parks in
    /// the window and the probes' differed more than threefold (the runtime's count jumps
    /// by tens of thousands within milliseconds now and then). Their parks stand in the
    /// share at the other windows' ratio of the two. Always 0 for goroutines created.
    pub windows_set_aside: u32,
    /// The scaled count per second over the same time.
    pub per_second: f64,
    /// How long windowing lasted.
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, schemars::JsonSchema)]
pub struct ParkDurations {
    /// Parks whose beginning and end the probes saw (in `park_ns.*`).
    pub exact: u64,
    /// Of those, the parks that began in one window and ended in a later one.
    pub exact_across_windows: u64,
    /// Parks that outlasted their window and that a snapshot saw over (in `park_ns.*`
    /// too): their duration is known to within the time between snapshots.
    pub closed_by_snapshot: u64,
    /// The same, by histogram (`park_ns.chan_receive`, ...): the part of each that is not
    /// exact.
    pub closed_by_snapshot_in: BTreeMap<String, u64>,
    /// Wake-ups that ended a park the probes did not see begin (not in `park_ns.*`).
    pub outlasted_window: u64,
    /// Parks still open at the end: right-censored, not in `park_ns.*`.
    pub open_at_end: u64,
}

/// How a probe was placed, as report.json's `probes.sampling` says it.
#[derive(Clone, Debug, Serialize, PartialEq, schemars::JsonSchema)]
pub struct Sampling {
    /// "continuous" or "windows".
    pub mode: &'static str,
    /// The fraction of the traced time the probe was in place.
    pub duty: f64,
    pub windows: u32,
    /// Of those, the windows in which the target ran at under half its own pace (by the
    /// runtime's count of its parks): every hit trapped, and what it was doing waited.
    /// Such windows come seldom once the park sample is in.
    pub saturated: u32,
    /// The mean window's length.
    pub window_ms: f64,
    /// How long, in all, the windows' breakpoints were in the target's code: from the first
    /// probe placed to the kernel taking the last out, the grace period after each close
    /// included (the target traps on every hit until then, unrecorded). What the budget
    /// pays for; 0 for continuous probes.
    pub breakpoints_in_place_ms: f64,
}

/// report.json's `schema_version`: raised when a field is renamed or removed or changes
/// meaning; new fields do not raise it.
pub const SCHEMA_VERSION: u32 = 1;

/// `report.json`.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Report {
    /// The leaktrace that wrote the report.
    pub leaktrace_version: String,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// When the trace started, in RFC 3339 (UTC).
    pub started_at: String,
    pub pid: u32,
    pub executable: String,
    pub go_version: String,
    pub stopped: String,
    pub observed_seconds: f64,
    pub snapshots: usize,
    pub min_age_seconds: f64,
    /// Goroutines parked and woken while traced, by Go's wording of the wait reason.
    pub parks: BTreeMap<String, u64>,
    pub wakes: BTreeMap<String, u64>,
    /// Seen by the create/exit probes while they ran; when they ran in windows, what they
    /// saw scaled as `goroutines_scaling` says.
    pub goroutines_created: u64,
    pub goroutines_exited: u64,
    /// When the create/exit probes ran in windows: how their counts were scaled
    /// (`per_second` is of goroutines created).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goroutines_scaling: Option<CountScaling>,
    /// Every allocation the alloc probe saw, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocations: Option<Allocated>,
    pub probes: ProbeSummary,
    /// RSS, the Go heap and madvise at each snapshot: a heap in use that stays flat while
    /// pages are returned tells "not returned yet" from "still referenced".
    pub memory_timeline: Vec<MemoryPoint>,
    /// Leak, or memory not yet returned? See the README for the values of `kind`.
    pub memory_verdict: MemoryVerdict,
    pub allocation_sites: AllocationSites,
    /// Percentiles of every histogram, by tag (`histograms.hlog` has them per interval).
    pub histograms: BTreeMap<String, Percentiles>,
    /// Suspected leak groups, strongest first.
    pub leaks: Vec<LeakGroup>,
}

impl Report {
    /// The `started_at` of a trace that started at `t`.
    pub fn started_at(t: std::time::SystemTime) -> String {
        jiff::Timestamp::try_from(t)
            .map(|t| t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string())
            .unwrap_or_default()
    }
}

/// The JSON Schemas of report.json and of `dump --json` (draft 2020-12), by the file name
/// they are committed under in schema/; the schema test fails when those are stale.
pub fn json_schemas() -> [(&'static str, String); 2] {
    let text =
        |s: schemars::Schema| serde_json::to_string_pretty(&s).expect("a schema serializes") + "\n";
    [
        ("report.schema.json", text(schemars::schema_for!(Report))),
        (
            "dump.schema.json",
            text(schemars::schema_for!(super::dump::DumpJson)),
        ),
    ]
}
