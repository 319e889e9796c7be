//! Each probe's hits priced at what its own program runs in the target.
//!
//! The calibration times a hit of the `site` program: a trap, a few reads, one record, what
//! a park or wake probe does. The fallback allocation sampler's programs (refill, large)
//! walk the target's user stack instead: 1.3-1.4 us a run on the allocation loop and
//! 2.6-3.3 us on the benchmark's HTTP service (deep stacks), against 0.3 us for the
//! calibration's, whose whole hit on a push cost 1.0-1.7 us: the budget counted a half to
//! a third of what their windows cost. The kernel times every run of every BPF program while its statistics are on (a
//! reference count: on while any holder keeps its descriptor). They are on from attach until
//! every probe in place, continuously or in windows, has run [`PRICE_RUNS`] times, or
//! [`PRICE_FOR`] has passed; each probe's hits are then priced at the trap with its own
//! program in place of the calibration's (`HitCosts::of`).

use std::{
    collections::HashMap,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use super::session::Session;
use crate::probes::{Probe, Probes, calibrate::mean_run};

/// The runs that price a probe's program: its run time hardly varies (no record waits on
/// anything), and the park probe of a program that seldom parks gets a few hundred runs a
/// minute in windows.
pub(super) const PRICE_RUNS: u64 = 200;

/// The statistics go off after this, priced or not: while they are on, every BPF program on
/// the machine reads the clock twice a run.
pub(super) const PRICE_FOR: Duration = Duration::from_secs(60);

/// The kernel's BPF statistics, held on while the probes are being priced.
pub(super) struct Pricing {
    /// They stay on while this is held.
    stats: Option<OwnedFd>,
    since: Instant,
    /// Each program's runs and run time when they went on.
    at_start: HashMap<Probe, (u64, Duration)>,
}

impl Pricing {
    /// Turns the statistics on, if the kernel lets leaktrace (Linux 5.8+, CAP_SYS_ADMIN).
    pub fn start(probes: &Probes) -> Self {
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .inspect_err(|e| {
                log::debug!(
                    "BPF run-time statistics cannot be turned on ({e}): every probe's hits priced as the calibration's"
                )
            })
            .ok();
        let at_start = match stats {
            Some(_) => Probe::ALL
                .into_iter()
                .filter(|p| *p != Probe::Site)
                .filter_map(|p| Some((p, probes.program_runs(p).ok()?)))
                .collect(),
            None => HashMap::new(),
        };
        Self {
            stats,
            since: Instant::now(),
            at_start,
        }
    }
}

impl Session {
    /// Prices the probes in place whose programs have run [`PRICE_RUNS`] times since the
    /// statistics went on, and turns them off once none is left to price.
    pub(super) fn price_programs(&mut self) {
        if self.pricing.stats.is_none() {
            return;
        }
        let attached = self.probes.attached();
        let in_place: Vec<Probe> = Probe::ALL
            .into_iter()
            .filter(|p| attached.contains(p) || self.windows.windowed(*p))
            .collect();
        let mut unpriced = 0;
        for p in in_place {
            let Some(&(n0, t0)) = self.pricing.at_start.get(&p) else {
                continue;
            };
            if self.costs.program(p).is_some() {
                continue;
            }
            let Ok((n, t)) = self.probes.program_runs(p) else {
                continue;
            };
            let runs = n.saturating_sub(n0);
            match mean_run(runs, t.saturating_sub(t0)) {
                Some(ran) if runs >= PRICE_RUNS => {
                    self.costs.set_program(p, ran);
                    let cost = self.costs.of(p);
                    self.windows.reprice(p, cost);
                    log::debug!(
                        "{}: its program ran {ran:?} a hit over {runs} hits: a hit costs {cost:?}",
                        p.function()
                    );
                }
                _ => unpriced += 1,
            }
        }
        if unpriced == 0 || self.pricing.since.elapsed() >= PRICE_FOR {
            self.pricing.stats = None;
            log::debug!("BPF run-time statistics off ({unpriced} probes not priced)");
        }
    }
}
