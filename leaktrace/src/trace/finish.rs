//! Finishing: the records still in the ring buffer, every probe detached, a last look at
//! the target, then the report (text, report.json and the exports). Finishing a large
//! target takes a second: a further SIGINT or SIGTERM abandons it.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    time::Instant,
};

use anyhow::Context as _;
use leaktrace_common::AllocStat;

use super::{
    Outcome, Stop, TraceOptions,
    apply::Findings,
    follow::Io,
    session::{Session, memory_point},
    snapshot,
    windows::{COUNTS_DISAGREE, Windows},
};
use crate::{
    alloc::{self, AllocPlan, Allocated, HeapProfile, sites::AllocationOutcome},
    census::{Census, activity::ActivityEstimate, retained::AddrMap},
    detect::{DetectOptions, LeakGroup, pinned::PinnedEstimates, verdict},
    model::{MemoryPoint, Tally},
    probes::{Counts, HitCosts, Probe, Samples},
    report::{
        exports, live, pprof,
        schema::{CountScaling, ParkDurations, ProbeSummary, Report, Sampling, TargetedProbe},
        text,
    },
    signals::{self, Interrupted},
    tracee::{Target, spawn},
};

/// What the probes left when they were detached.
struct ProbeTotals {
    counts: Counts,
    /// The runtime functions still probed at the end.
    attached: Vec<String>,
    /// Per-goroutine allocation counts, when the alloc probe counted any.
    allocations: Option<HashMap<u64, AllocStat>>,
    /// The fallback sampler's stacks and per-goroutine figures, when it sampled.
    samples: Option<Samples>,
    /// How each probe was placed.
    sampling: BTreeMap<String, Sampling>,
    /// The windows' duty cycle, for the probes in windows.
    alloc_duty: Option<f64>,
    /// How sampled counts are scaled (see [`CountScaling`]).
    park_scaling: Option<CountScaling>,
    lives_scaling: Option<CountScaling>,
    park_durations: Option<ParkDurations>,
    /// The targeted probes tried.
    sites: Vec<TargetedProbe>,
}

/// A session whose probes are gone: what the report is made of.
struct Ending {
    opts: TraceOptions,
    target: Target,
    plan: AllocPlan,
    costs: HitCosts,
    start: Instant,
    spawned: Option<u32>,
    findings: Findings,
    detect: DetectOptions,
    g_addrs: AddrMap<u64>,
    /// The trace's census, for the last look.
    census: Census,
    timeline: Vec<MemoryPoint>,
    profile_start: anyhow::Result<HeapProfile>,
    profile_last: Option<HeapProfile>,
    pinned: PinnedEstimates,
    shed: Vec<String>,
    estimated: Option<ActivityEstimate>,
    lost_reported: u64,
    /// Snapshots can be taken, and should be: stopped on leaktrace's terms, not while
    /// attaching.
    look_again: bool,
}

impl Session {
    pub(super) fn finish(mut self, stop: Stop, mut io: Io) -> anyhow::Result<Outcome> {
        let signals_at_stop = signals::received();
        let abandoned = || signals::received() > signals_at_stop;
        if stop.by_leaktrace() {
            eprintln!(
                "leaktrace: stopping ({}): detaching, then the report; SIGINT or SIGTERM again abandons it",
                stop.wording(self.target.process.pid(), None)
            );
        }
        self.close_sites();
        self.close_windows(io.records.get_mut())?;
        // What the programs sent before we stopped is still in the ring buffer.
        self.drain(io.records.get_mut());
        let totals = self.probe_totals()?;
        if stop.by_leaktrace() {
            self.timeline.extend(memory_point(
                &self.target,
                &self.probes,
                self.start.elapsed(),
                None,
            ));
        }
        drop(io);
        let mut end = self.detach(stop);
        if end.look_again && !abandoned() {
            end.last_look();
        }
        if let Some(w) = end.findings.events.as_mut() {
            w.flush().context("writing the event log")?;
        }
        if abandoned() {
            return Err(Interrupted::now(
                "again while finishing: the report was abandoned; all probes detached",
            )
            .into());
        }
        let pid = end.target.process.pid();
        let why = stop.wording(pid, end.spawned.and_then(spawn::reap));
        end.say_stopped(&totals, &why);
        let (report, allocations_pprof) = end.report(why, totals);
        end.opts.say(&format!("\n{}", text::text(&report)));
        if let Some(dir) = &end.opts.output {
            exports::write_all(
                dir,
                &report,
                &end.findings.hist,
                allocations_pprof.as_ref(),
                abandoned,
            )?;
        }
        Ok(Outcome { stop, report })
    }

    /// The probes' counters and kernel-side aggregates, read before they are detached.
    fn probe_totals(&self) -> anyhow::Result<ProbeTotals> {
        let counts = self.probes.counts()?;
        // Only what the sampler saw: where the budget did not place it, a group's
        // allocations and the sites are unknown, not zero.
        let w = &self.windows;
        let duty = |p: Probe| w.windowed(p).then(|| w.duty());
        let sampled = counts.hits(Probe::Refill) + counts.hits(Probe::Large) > 0
            || self.probes.attached().contains(&Probe::Refill)
            || w.windowed(Probe::Refill) && w.windows > 0;
        let samples = if self.plan.fallback && sampled {
            self.probes.samples().ok().map(|mut smp| {
                if let Some(d) = duty(Probe::Refill) {
                    smp.scale(d);
                }
                smp
            })
        } else {
            None
        };
        let alloc_duty = duty(Probe::Alloc);
        let allocations = (counts.hits(Probe::Alloc) > 0).then(|| {
            let mut a = self.probes.allocations().unwrap_or_default();
            if let Some(d) = alloc_duty {
                let s = |n: u64| (n as f64 / d.max(1e-6)).round() as u64;
                for v in a.values_mut() {
                    (v.count, v.bytes) = (s(v.count), s(v.bytes));
                }
            }
            a
        });
        let model = &self.findings.model;
        let park_duty = duty(Probe::Gopark);
        let park_scaling = park_duty.map(|d| {
            count_scaling(
                w,
                d,
                model.total.total_parks(),
                w.runtime_parks(),
                w.windows_set_aside,
            )
        });
        Ok(ProbeTotals {
            sites: self.sites.report.clone(),
            sampling: w.sampling(&self.probes.attached()),
            alloc_duty,
            lives_scaling: duty(Probe::Create)
                .map(|d| count_scaling(w, d, model.created, w.runtime_created(), 0)),
            park_scaling,
            park_durations: park_duty.map(|_| ParkDurations {
                exact: self
                    .findings
                    .hist
                    .percentiles()
                    .iter()
                    .filter(|(t, _)| t.starts_with("park_ns."))
                    .map(|(_, p)| p.count)
                    .sum::<u64>()
                    .saturating_sub(model.closed_by_snapshot),
                exact_across_windows: model.exact_across_windows,
                closed_by_snapshot: model.closed_by_snapshot,
                closed_by_snapshot_in: self.findings.closed_by_snapshot.clone(),
                outlasted_window: model.outlasted_window,
                open_at_end: model.open_parks(),
            }),
            attached: self
                .probes
                .attached()
                .iter()
                .map(|p| p.function().to_string())
                .collect(),
            counts,
            allocations,
            samples,
        })
    }

    /// Detaches every uprobe and unloads the programs (dropping them), and stops serving
    /// metrics.
    fn detach(self, stop: Stop) -> Ending {
        let Session {
            opts,
            target,
            probes,
            plan,
            costs,
            start,
            spawned,
            interrupted_attaching,
            findings,
            detect,
            g_addrs,
            census,
            snapshot_error,
            timeline,
            profile_start,
            profile_last,
            pinned,
            metrics,
            shed,
            estimated,
            lost_reported,
            ..
        } = self;
        drop(probes);
        if let Some((_, server)) = metrics {
            server.abort();
        }
        Ending {
            opts,
            target,
            plan,
            costs,
            start,
            spawned,
            findings,
            detect,
            g_addrs,
            census,
            timeline,
            profile_start,
            profile_last,
            pinned,
            shed,
            estimated,
            lost_reported,
            // A last look, unless the target is gone: the verdict is about its state now.
            // Not after a Ctrl-C while attaching, whose snapshot is only just taken: stop
            // promptly.
            look_again: snapshot_error.is_none() && stop.by_leaktrace() && !interrupted_attaching,
        }
    }
}

impl Ending {
    /// One more snapshot for the detector, the timeline's last point its goroutine count.
    fn last_look(&mut self) {
        let Ok(s) = snapshot::take(&mut self.census, &self.target) else {
            return;
        };
        if let Some(p) = self.timeline.last_mut() {
            p.goroutines = Some(s.observed.len());
        }
        self.g_addrs = s.g_addrs;
        self.findings
            .tracker
            .observe(self.start.elapsed(), s.observed);
    }

    /// The last live line, the stop line and the park/wake summary.
    fn say_stopped(&mut self, totals: &ProbeTotals, why: &str) {
        let lost = totals.counts.lost;
        let wait_reasons = &self.target.layout.wait_reasons;
        let last = scaled(
            &self.findings.model.take_interval(),
            share(&totals.park_scaling),
        );
        if last.total_parks() + last.total_wakes() > 0 {
            self.opts.say(&format!(
                "{}\n",
                live::interval_line(
                    self.start.elapsed(),
                    &last,
                    wait_reasons,
                    lost - self.lost_reported
                )
            ));
        }
        eprintln!(
            "leaktrace: stopped after {:.1} s ({why}); all probes detached",
            self.start.elapsed().as_secs_f64()
        );
        let model = &self.findings.model;
        self.opts.say(&live::summary(
            &scaled(&model.total, share(&totals.park_scaling)),
            wait_reasons,
            lost,
            model.goroutines.len(),
        ));
        if let Some(s) = &totals.park_scaling {
            self.opts.say(&format!(
                "park/wake sampled, {:.1}% of the time: counts scaled to the whole trace{}\n",
                s.duty * 100.0,
                match s.runtime_per_second {
                    Some(_) => format!(
                        " by the runtime's own count of parks ({}% of them in the windows: the target slows under the probes){}",
                        percent(s.share),
                        match s.windows_set_aside {
                            0 => String::new(),
                            n => format!(
                                "; {n} window(s) set aside, where that count and the probes' differed more than {COUNTS_DISAGREE}x"
                            ),
                        }
                    ),
                    None => " by the share of the time".into(),
                }
            ));
        }
        if let Some(s) = &totals.lives_scaling {
            self.opts.say(&format!(
                "create/exit sampled, {:.1}% of the time: goroutines created and exited scaled to the whole trace by the {}\n",
                s.duty * 100.0,
                s.method
            ));
        }
        if totals.counts.read_errors > 0 {
            eprintln!(
                "leaktrace: {} probe hits could not read the target's memory and were not recorded",
                totals.counts.read_errors
            );
        }
    }

    /// The leak groups, with what each pins and allocated.
    fn leak_groups(&mut self, totals: &ProbeTotals) -> Vec<LeakGroup> {
        let mut leaks = self.findings.tracker.leaks(&self.detect);
        if self.target.process.is_alive() {
            self.pinned
                .update(&self.target, &leaks, &self.g_addrs, true);
        }
        for l in &mut leaks {
            l.pinned = self.pinned.get(l);
            if let Some(per_goroutine) = &totals.allocations {
                l.allocated = Some(alloc::sites::sum_allocations(
                    &l.goids,
                    per_goroutine,
                    if totals.alloc_duty.is_some() {
                        "windows"
                    } else {
                        "exact"
                    },
                ));
            } else if let Some(smp) = &totals.samples {
                l.allocated = Some(alloc::sites::sum_allocations(
                    &l.goids,
                    &smp.by_goroutine,
                    if smp.duty.is_some() {
                        "sampled in windows"
                    } else {
                        "sampled"
                    },
                ));
            }
            for age in &l.ages {
                self.findings
                    .hist
                    .record("leak_blocked_ms", age.as_millis() as u64);
            }
        }
        leaks
    }

    /// Allocation sites from the runtime's profile (read once more) or the sampler, their
    /// sizes into the histogram, and their pprof form for `allocations.pb.gz`.
    fn allocation_sites(
        &mut self,
        totals: &ProbeTotals,
    ) -> (AllocationOutcome, Option<pprof::Profile>) {
        if self.plan.reads_profile() && self.target.process.is_alive() {
            self.profile_last = alloc::profile::read(&self.target)
                .ok()
                .or(self.profile_last.take());
        }
        let sites = alloc::sites::report(
            &self.target,
            &self.plan,
            &self.profile_start,
            self.profile_last.take(),
            totals.samples.as_ref(),
        );
        for &(size, n) in &sites.sizes {
            self.findings.hist.record_n("alloc_size_bytes", size, n);
        }
        let profile = match (&totals.samples, &sites.profile) {
            (Some(smp), _) => Some(pprof::sampled_allocations(
                &self.target,
                smp,
                self.plan.classes.as_ref(),
            )),
            (None, Some(p)) => Some(pprof::heap_allocations(p, &self.target)),
            (None, None) => None,
        };
        (sites, profile)
    }

    /// report.json, and the allocations' pprof profile.
    fn report(&mut self, why: String, totals: ProbeTotals) -> (Report, Option<pprof::Profile>) {
        let leaks = self.leak_groups(&totals);
        let (sites, allocations_pprof) = self.allocation_sites(&totals);
        self.findings.hist.close_interval(self.start.elapsed());
        let memory_verdict = verdict::judge(&self.timeline, &leaks, sites.growing.clone());
        let target = &self.target;
        let name = |m: &BTreeMap<u8, u64>| -> BTreeMap<String, u64> {
            m.iter()
                .map(|(r, n)| (target.reason_name(*r), *n))
                .collect()
        };
        let counts = &totals.counts;
        let model = &self.findings.model;
        let report = Report {
            leaktrace_version: env!("CARGO_PKG_VERSION").to_string(),
            schema_version: crate::report::schema::SCHEMA_VERSION,
            started_at: Report::started_at(std::time::SystemTime::now() - self.start.elapsed()),
            pid: target.process.pid(),
            executable: target.process.exe_name(),
            go_version: target.binary.build().version_string.clone(),
            stopped: why,
            observed_seconds: self.start.elapsed().as_secs_f64(),
            snapshots: self.findings.tracker.snapshots(),
            min_age_seconds: self.opts.min_age.as_secs_f64(),
            parks: name(&scaled(&model.total, share(&totals.park_scaling)).parks),
            wakes: name(&scaled(&model.total, share(&totals.park_scaling)).wakes),
            goroutines_created: scaled_count(model.created, share(&totals.lives_scaling)),
            goroutines_exited: scaled_count(model.exited, share(&totals.lives_scaling)),
            goroutines_scaling: totals.lives_scaling.clone(),
            memory_timeline: std::mem::take(&mut self.timeline),
            memory_verdict,
            probes: ProbeSummary {
                attached: totals.attached.clone(),
                hits: Probe::ALL
                    .into_iter()
                    .filter(|p| counts.hits(*p) > 0)
                    .map(|p| (p.function().to_string(), counts.hits(p)))
                    .collect(),
                lost_records: counts.lost,
                shed: std::mem::take(&mut self.shed),
                hit_cost_us: self.costs.measured.stepped.as_secs_f64() * 1e6,
                hit_cost_push_us: self.costs.measured.emulated.as_secs_f64() * 1e6,
                hit_cost_program_us: self.costs.measured.program.as_secs_f64() * 1e6,
                hit_cost_us_by_function: Probe::ALL
                    .into_iter()
                    .filter(|p| counts.hits(*p) > 0)
                    .map(|p| {
                        (
                            p.function().to_string(),
                            self.costs.of(p).as_secs_f64() * 1e6,
                        )
                    })
                    .collect(),
                program_us_by_function: Probe::ALL
                    .into_iter()
                    .filter_map(|p| {
                        let ran = self.costs.program(p)?;
                        Some((p.function().to_string(), ran.as_secs_f64() * 1e6))
                    })
                    .collect(),
                estimated_before_attach: self.estimated,
                sampling: totals.sampling.clone(),
                park_durations: totals.park_durations.clone(),
                park_scaling: totals.park_scaling.clone(),
                sites: totals.sites.clone(),
            },
            allocations: totals.allocations.is_some().then(|| {
                let s = |n: u64| (n as f64 / totals.alloc_duty.unwrap_or(1.0).max(1e-6)) as u64;
                Allocated {
                    count: s(counts.hits(Probe::Alloc)),
                    bytes: s(counts.alloc_bytes),
                    source: if totals.alloc_duty.is_some() {
                        "windows"
                    } else {
                        "exact"
                    },
                }
            }),
            allocation_sites: sites.report,
            histograms: self.findings.hist.percentiles(),
            leaks,
        };
        (report, allocations_pprof)
    }
}

/// How `n` (counted in windows open `duty` of the time) is scaled: by the share of the
/// runtime's own count (`runtime`: its total and share) the windows covered, when its
/// counters were read, else by `duty`.
fn count_scaling(
    w: &Windows,
    duty: f64,
    n: u64,
    runtime: Option<(u64, f64)>,
    windows_set_aside: u32,
) -> CountScaling {
    let seconds = w.lasted().as_secs_f64().max(1e-3);
    let share = runtime.map_or(duty, |(_, share)| share);
    CountScaling {
        method: if runtime.is_some() {
            "runtime counter"
        } else {
            "duty cycle"
        },
        share,
        duty,
        runtime_per_second: runtime.map(|(n, _)| n as f64 / seconds),
        windows_set_aside,
        per_second: n as f64 / share.max(1e-6) / seconds,
        seconds,
    }
}

/// `fraction` in percent to two significant digits (at least one decimal, at most four):
/// a share of the parks can be a hundredth of a percent.
fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    let decimals = if p > 0.0 {
        (1.0 - p.log10().floor()).clamp(1.0, 4.0) as usize
    } else {
        1
    };
    format!("{p:.decimals$}")
}

/// The divisor of counts scaled as `s` says.
fn share(s: &Option<CountScaling>) -> Option<f64> {
    s.as_ref().map(|s| s.share)
}

/// `n` scaled by the windows' duty cycle, when the probes that counted it ran in windows.
fn scaled_count(n: u64, duty: Option<f64>) -> u64 {
    match duty {
        Some(d) if d > 0.0 => (n as f64 / d).round() as u64,
        _ => n,
    }
}

/// `t` scaled by the windows' duty cycle, when the probes ran in windows.
fn scaled(t: &Tally, duty: Option<f64>) -> Tally {
    match duty {
        Some(d) if d > 0.0 => t.scaled(d),
        _ => t.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::percent;

    #[test]
    fn small_shares_keep_two_significant_digits() {
        assert_eq!(percent(0.5), "50.0");
        assert_eq!(percent(0.012), "1.2");
        assert_eq!(percent(0.0009), "0.090");
        assert_eq!(percent(0.0000995), "0.0100");
        assert_eq!(percent(0.0), "0.0");
    }
}
