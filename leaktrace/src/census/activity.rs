//! How busy the target's scheduler is, estimated from two quick reads of its goroutine
//! structs and scheduler counters (no stacks, no probes): goroutines created per second from
//! the growth of the largest goid, and state changes per second from the largest of three
//! estimates of parks and wake-ups:
//! - the runtime's own sample of them: `sched.timeToRun` records one scheduling latency for
//!   every eighth time each goroutine stops running (parks, yields, preemptions), so eight
//!   times its growth counts them all, hand-offs included (needs the `runtime.sched` symbol);
//! - the Ps' `schedtick` counters: one per goroutine started on a fresh time slice (a
//!   hand-off through `runnext` inherits the slice and is not counted);
//! - the goroutines whose status or saved PC moved (one that parks and wakes twice between
//!   the reads counts once).
//!
//! That decides whether a runtime-wide probe would fit the overhead budget before it is
//! placed.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::goroutines::{MAX_PS, all_gs, pointer_slice, read_gs};
use serde::Serialize;

use crate::tracee::{Target, globals};

/// The `_Gscan` bit, masked off (runtime/runtime2.go, Go 1.21-1.27).
const G_SCAN: u32 = 0x1000;
/// `_Gdead`: a free g kept for reuse.
const G_DEAD: u32 = 6;

struct Reading {
    at: Instant,
    max_goid: u64,
    /// goid -> (status, saved PC)
    state: HashMap<u64, (u32, u64)>,
    /// p address -> `p.schedtick`; empty where `runtime.allp` cannot be found or read.
    schedticks: HashMap<u64, u32>,
    /// Samples in `sched.timeToRun`, where `runtime.sched` can be found and read.
    runs_sampled: Option<u64>,
}

/// The runtime samples one in this many stops of each goroutine into `sched.timeToRun`
/// (`gTrackingPeriod`, runtime/runtime2.go, Go 1.21-1.27).
const G_TRACKING_PERIOD: u64 = 8;

/// How many scheduling latencies `sched.timeToRun` holds: the sum of its counters.
fn runs_sampled(target: &Target) -> anyhow::Result<u64> {
    let sched = target
        .binary
        .data_symbol("runtime.sched")
        .ok_or_else(|| anyhow::anyhow!("no symbol runtime.sched"))?;
    let l = &target.layout.sched;
    let mut hist = vec![0u8; l.time_histogram_size as usize];
    target
        .process
        .read(sched.addr + target.load_bias + l.time_to_run, &mut hist)?;
    Ok(hist
        .as_chunks::<8>()
        .0
        .iter()
        .fold(0u64, |n, c| n.wrapping_add(u64::from_le_bytes(*c))))
}

/// `schedt.goidgen`, the last goroutine id handed out (to a P's cache, 16 at a time), is
/// the first field of `runtime.schedt` (runtime/runtime2.go, Go 1.21-1.27).
const GOIDGEN_OFFSET: u64 = 0;

/// The runtime's own counts of what its goroutines do, read off `runtime.sched`: the
/// ground truth that sampled park counts are scaled by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedCounters {
    /// Goroutine stops (parks, yields, preemptions) and first runs of new goroutines: the
    /// samples in `sched.timeToRun` times `G_TRACKING_PERIOD`.
    pub stops: u64,
    /// `sched.goidgen`: goroutines created (to within a P's cache of ids).
    pub goids: u64,
}

impl SchedCounters {
    pub fn read(target: &Target) -> anyhow::Result<Self> {
        let sched = target
            .binary
            .data_symbol("runtime.sched")
            .ok_or_else(|| anyhow::anyhow!("no symbol runtime.sched"))?;
        let mut goidgen = [0u8; 8];
        target
            .process
            .read(sched.addr + target.load_bias + GOIDGEN_OFFSET, &mut goidgen)?;
        Ok(Self {
            stops: runs_sampled(target)?.wrapping_mul(G_TRACKING_PERIOD),
            goids: u64::from_le_bytes(goidgen),
        })
    }

    /// Stops counted since `earlier` that are not a new goroutine's first run: parks,
    /// mostly, and the odd yield or preemption. A new goroutine's first run is sampled into
    /// `timeToRun` when its g is tracked: when its fresh `trackingSeq` says so (one in 8),
    /// or when it was left tracked by the exit of the goroutine that last used the g (one
    /// in 8 of those, and nothing resets it): 15 in 64 of them in a program that reuses
    /// its gs, as a busy one does, and so 15/8 of a stop each once multiplied by 8.
    pub fn parks_since(&self, earlier: &Self) -> u64 {
        let stops = self.stops.wrapping_sub(earlier.stops);
        let created = self.created_since(earlier);
        stops.saturating_sub(created.saturating_mul(15) / 8)
    }

    /// Goroutines created since `earlier` (to within the ids the Ps hold in their caches).
    pub fn created_since(&self, earlier: &Self) -> u64 {
        self.goids.wrapping_sub(earlier.goids)
    }
}

/// Every P's `schedtick`, by the P's address.
fn schedticks(target: &Target) -> anyhow::Result<HashMap<u64, u32>> {
    let allp = globals::locate_heap(&target.binary)?
        .allp
        .wrapping_add(target.load_bias);
    let mut out = HashMap::new();
    for p in pointer_slice(target, allp, "runtime.allp", MAX_PS)? {
        let mut tick = [0u8; 4];
        target
            .process
            .read(p + target.layout.p.schedtick, &mut tick)?;
        out.insert(p, u32::from_le_bytes(tick));
    }
    Ok(out)
}

fn read(target: &Target) -> anyhow::Result<Reading> {
    let gs = read_gs(target, &all_gs(target)?)?;
    let at = Instant::now();
    let mut state = HashMap::with_capacity(gs.len());
    let mut max_goid = 0;
    for g in gs {
        max_goid = max_goid.max(g.goid);
        let status = g.status & !G_SCAN;
        if status != G_DEAD && g.goid != 0 {
            state.insert(g.goid, (status, g.sched_pc));
        }
    }
    let schedticks = schedticks(target).unwrap_or_else(|e| {
        log::debug!("the Ps' schedtick counters cannot be read: {e:#}");
        HashMap::new()
    });
    let runs_sampled = runs_sampled(target)
        .inspect_err(|e| log::debug!("sched.timeToRun cannot be read: {e:#}"))
        .ok();
    Ok(Reading {
        at,
        max_goid,
        state,
        schedticks,
        runs_sampled,
    })
}

/// Events per second, estimated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    pub creations: f64,
    /// A lower bound on parks (and as many wake-ups).
    pub transitions: f64,
}

/// Reads the goroutine structs twice, `gap` apart.
pub fn estimate(target: &Target, gap: Duration) -> anyhow::Result<Rates> {
    let a = read(target)?;
    std::thread::sleep(gap);
    let b = read(target)?;
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let mut changed = 0usize;
    for (goid, now) in &b.state {
        match a.state.get(goid) {
            Some(before) if before == now => {}
            _ => changed += 1, // moved, or new
        }
    }
    changed += a.state.keys().filter(|g| !b.state.contains_key(g)).count(); // exited
    // u32 counters: a wrap between the reads is a small difference, not a huge one.
    let scheduled: u64 = b
        .schedticks
        .iter()
        .filter_map(|(p, now)| Some(u64::from(now.wrapping_sub(*a.schedticks.get(p)?))))
        .sum();
    let stops = match (a.runs_sampled, b.runs_sampled) {
        (Some(a), Some(b)) => b.wrapping_sub(a).saturating_mul(G_TRACKING_PERIOD),
        _ => 0,
    };
    Ok(Rates {
        creations: b.max_goid.saturating_sub(a.max_goid) as f64 / secs,
        transitions: (changed as u64).max(scheduled).max(stops) as f64 / secs,
    })
}

/// Rates read off the target's runtime in 100 ms, without probes (`census::activity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ActivityEstimate {
    pub goroutines_created_per_second: f64,
    /// Parks, wake-ups and other goroutine state changes per second (a lower bound).
    pub state_changes_per_second: f64,
    /// From the heap's byte counter at 64 B an object; absent when it cannot be read.
    pub allocations_per_second: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::SchedCounters;

    #[test]
    fn parks_are_the_stops_less_new_goroutines_first_runs() {
        let a = SchedCounters {
            stops: 8_000,
            goids: 100,
        };
        let b = SchedCounters {
            stops: 8_000 + 8 * 500,
            goids: 100 + 800,
        };
        assert_eq!(b.created_since(&a), 800);
        // 4,000 stops, 1,500 of them the first runs of 800 new goroutines.
        assert_eq!(b.parks_since(&a), 2_500);
        // More goroutines than stops: none parked, not a wrap.
        assert_eq!(a.parks_since(&SchedCounters { stops: 0, goids: 0 }), 7_813);
        let c = SchedCounters {
            stops: 8_000,
            goids: 10_000,
        };
        assert_eq!(c.parks_since(&a), 0);
    }
}
