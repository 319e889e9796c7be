//! The overhead budget (`--max-overhead`): which probes are placed on a running target,
//! judged before placing from its activity (`fitting`); the measured hit rates of those
//! placed, checked 20 ms after a placement and then four times a second, shedding as few
//! as needed (`Session::check_budget`), those that do not fit moved into windows
//! (`Session::window_tick`, planned as `windows` says). The targeted probes at suspects'
//! sites are tried before they stay (`sites`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use super::{
    session::Session,
    windows::{
        Closing, FIRST_WINDOW, LATENCY_SHARE, MAX_WINDOW, MIN_WINDOW, Open, PERIOD, SAMPLE_GAP,
        SAMPLE_POLL, SAMPLE_SHARE, SAMPLE_WINDOW, SATURATED_WINDOW, SETTLE, SchedRead,
    },
};
use crate::{
    census::{self, activity::ActivityEstimate},
    probes::{HitCosts, Probe, over_budget, thread_cpu_time},
    tracee::Target,
};

/// The first budget check after probes are placed.
pub(super) const QUICK_CHECK: Duration = Duration::from_millis(20);

/// Then the budget is checked this often.
pub(super) const BUDGET_PERIOD: Duration = Duration::from_millis(250);

/// What the pre-attach judgement decided.
pub(super) struct Fit {
    /// The probes to place.
    pub probes: Vec<Probe>,
    /// Why the others are not placed continuously.
    pub not_placed: Vec<String>,
    /// Those others, to be placed in windows, and how often they would fire together.
    pub windowed: Vec<Probe>,
    pub windowed_rate: Option<f64>,
    /// The rates it judged by, when they could be read.
    pub estimated: Option<ActivityEstimate>,
}

/// The probes of `wanted` whose estimated cost fits `budget`, judged before any is placed:
/// removing a probe that does not fit costs the target its hits for the ~100 ms the kernel
/// takes to unregister it. Rates come from two reads of the goroutine structs 100 ms apart
/// ([`census::activity`]); a channel probe fires at least as often as the parks. `exempt`
/// probes (`--alloc exact`) are placed whatever they cost.
pub(super) fn fitting(
    target: &Target,
    wanted: &[Probe],
    exempt: &[Probe],
    budget: f64,
    costs: &HitCosts,
) -> Fit {
    let heap_before = census::memory::read(target)
        .ok()
        .map(|m| (Instant::now(), m.total_alloc));
    let rates = match census::activity::estimate(target, Duration::from_millis(100)) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("cannot estimate the target's scheduling rate: {e:#}");
            return Fit {
                probes: wanted.to_vec(),
                not_placed: Vec::new(),
                windowed: Vec::new(),
                windowed_rate: None,
                estimated: None,
            };
        }
    };
    // Allocations/s from the heap's own byte counter, at a typical small object of 64 B;
    // unknown (as if hot) when the heap figures cannot be read.
    let allocs = match (heap_before, census::memory::read(target)) {
        (Some((t0, b0)), Ok(m)) => {
            m.total_alloc.saturating_sub(b0) as f64 / t0.elapsed().as_secs_f64().max(1e-3) / 64.0
        }
        _ => f64::INFINITY,
    };
    let estimated = ActivityEstimate {
        goroutines_created_per_second: rates.creations,
        state_changes_per_second: rates.transitions,
        allocations_per_second: allocs.is_finite().then_some(allocs),
    };
    let per_probe: HashMap<Probe, f64> = wanted
        .iter()
        .map(|&p| {
            let r = match p {
                Probe::Create | Probe::Exit => rates.creations,
                // casgstatus sees every state change: parks, wake-ups, runs, preemptions.
                Probe::WakeAny => rates.transitions * 4.0,
                // Placed later, at suspects' sites; judged by their measured rate.
                Probe::Site => 0.0,
                Probe::Alloc => allocs,
                // One refill per span, 8 KiB at least; large allocations are rarer.
                Probe::Refill | Probe::Large => allocs * 64.0 / 8192.0,
                _ => rates.transitions,
            };
            (p, r)
        })
        .collect();
    let judged: Vec<Probe> = wanted
        .iter()
        .copied()
        .filter(|p| !exempt.contains(p))
        .collect();
    let drop = over_budget(&per_probe, &judged, budget, costs);
    let mut not_placed = Vec::new();
    let (windowed, off): (Vec<Probe>, Vec<Probe>) = drop.iter().partition(|p| p.windowable());
    let names = |ps: &[Probe]| ps.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ");
    if !drop.is_empty() {
        let msg = format!(
            "the target creates about {:.0} goroutines/s, changes goroutine states at least {:.0} times/s and allocates about {:.0} objects/s: {} would cost more than --max-overhead {:.1}% of a CPU, {}",
            rates.creations,
            rates.transitions,
            allocs,
            names(&drop),
            budget * 100.0,
            match (windowed.is_empty(), off.is_empty()) {
                (true, _) => "not placed".to_string(),
                (false, true) => "placed in short windows".to_string(),
                (false, false) => format!(
                    "placed in short windows ({}), not placed ({})",
                    names(&windowed),
                    names(&off)
                ),
            }
        );
        eprintln!("leaktrace: {msg}; goroutine snapshots carry the picture between them");
        not_placed.push(msg);
    }
    let windowed_rate: f64 = windowed.iter().map(|p| per_probe[p]).sum();
    Fit {
        probes: wanted
            .iter()
            .copied()
            .filter(|p| !drop.contains(p))
            .collect(),
        not_placed,
        windowed_rate: windowed_rate.is_finite().then_some(windowed_rate),
        windowed,
        estimated: Some(estimated),
    }
}

impl Session {
    /// Judges the probes' hit rates since the last check and sheds those over budget.
    pub(super) fn check_budget(&mut self) -> anyhow::Result<()> {
        let (counts, now) = (self.probes.counts()?, Instant::now());
        let secs = now.duration_since(self.last_check).as_secs_f64();
        if secs < QUICK_CHECK.as_secs_f64() * 0.75 {
            return Ok(()); // too short a window to judge
        }
        let mut rates: HashMap<Probe, f64> = Probe::ALL
            .into_iter()
            .map(|p| {
                let hits = counts.hits(p).saturating_sub(self.last_counts.hits(p));
                (p, hits as f64 / secs)
            })
            .collect();
        // A site's trial, and its removal if it did not fit, are judged by the trial: the
        // site hits of this interval are not the continuous sites' rate.
        if self.sites.unjudged {
            self.sites.unjudged = self.sites.busy();
            rates.insert(Probe::Site, 0.0);
        }
        // --alloc exact is not shed: its cost was stated and chosen. Windowed probes are
        // judged by their windows.
        let attached: Vec<Probe> = self
            .probes
            .attached()
            .into_iter()
            .filter(|p| !self.plan.exempt.contains(p) && !self.windows.windowed(*p))
            .collect();
        let budget = self.opts.max_overhead;
        let shed_now = over_budget(&rates, &attached, budget, &self.costs);
        let cost = |ps: &[Probe]| self.costs.cpu(&rates, ps);
        let kept: Vec<Probe> = attached
            .iter()
            .copied()
            .filter(|p| !shed_now.contains(p))
            .collect();
        self.continuous_cost = cost(&kept);
        if !shed_now.is_empty() {
            let total: f64 = attached.iter().map(|p| rates[p]).sum();
            let msg = format!(
                "the probes fired {:.0} times/s, an estimated {:.1}% of a CPU, over --max-overhead {:.1}%: detached {}{}",
                total,
                cost(&attached) * 100.0,
                budget * 100.0,
                shed_now
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                if shed_now.iter().any(|p| p.windowable()) {
                    ", placed in short windows from now on"
                } else {
                    ""
                }
            );
            let t0 = Instant::now();
            self.probes.detach(&shed_now)?;
            log::debug!("shedding {} probes took {:?}", shed_now.len(), t0.elapsed());
            let tracker = &mut self.findings.tracker;
            if shed_now.contains(&Probe::Gopark) || shed_now.contains(&Probe::Ready) {
                tracker.probes_inactive();
            }
            if shed_now.iter().any(|p| Probe::CHANNEL_OPS.contains(p)) {
                tracker.chan_probes_inactive();
            }
            if shed_now.contains(&Probe::Site) {
                tracker.sites_inactive();
                self.sites.shed();
            }
            let mut windowed = Vec::new();
            for &p in shed_now.iter().filter(|p| p.windowable()) {
                if let Some(offs) = super::attach::offsets(&self.target.binary, p)? {
                    windowed.push((p, offs));
                }
            }
            let windowable: Vec<Probe> = shed_now
                .iter()
                .copied()
                .filter(|p| p.windowable())
                .collect();
            let windowed_rate = windowable.iter().map(|p| rates[p]).sum();
            self.windows.add(windowed, Some(windowed_rate), &self.costs);
            self.windows.read_sched(&self.target, SchedRead::Start);
            eprintln!("leaktrace: {msg}; goroutine snapshots carry on");
            self.shed.push(msg);
        }
        self.last_check = now; // when `counts` were read: hits during a detach count
        self.last_counts = counts;
        self.price_programs();
        Ok(())
    }
}

/// Probe windows (`windows`): opening and closing them, each planned from the last.
impl Session {
    /// When the open window is to close, if not now: at its planned length, or, while it
    /// takes the sample, as soon as the runtime's count says the sample is in (not before
    /// [`SATURATED_WINDOW`]: shorter windows scale wrongly).
    fn window_due(&mut self) -> Option<Instant> {
        let w = &self.windows;
        let open = w.open.as_ref()?;
        let (lasted, end) = (open.at.elapsed(), open.at + w.length);
        if lasted >= w.length {
            return None;
        }
        if !w.sampling {
            return Some(end);
        }
        if lasted >= SATURATED_WINDOW && w.sample_in(&self.target) {
            return None;
        }
        Some(end.min((Instant::now() + SAMPLE_POLL).max(open.at + SATURATED_WINDOW)))
    }

    /// Closes the open window: its records are drained and its probes removed on a thread.
    fn close_window(&mut self, records: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        // A window's records are in before it closes: records wake the collector only in
        // bulk.
        self.drain(records);
        let now = Instant::now();
        let Some(open) = self.windows.open.take() else {
            return Ok(());
        };
        // A window closed before its sample started (the trace stopped) sampled nothing.
        if open.settled {
            let ts = census::goroutines::monotonic_ns() as u64;
            let model = &mut self.findings.model;
            if self.windows.windowed(Probe::Gopark) {
                model.close_window(ts);
            }
            if self.windows.windowed(Probe::Create) {
                model.close_lives_window(ts);
            }
            let probed_parks = self.findings.model.total.total_parks();
            self.windows
                .read_sched(&self.target, SchedRead::Close { probed_parks });
        }
        let probes = self.windows.probes.clone();
        let bias = self.target.load_bias;
        let breakpoints = probes
            .iter()
            .flat_map(|p| &self.windows.offsets[p])
            .filter_map(|off| self.target.binary.vaddr_of_offset(*off))
            .map(|v| v + bias)
            .collect();
        let detach = self.probes.detach_later(&probes, breakpoints)?;
        // The period was planned from the rate expected (at first the pre-attach
        // estimate, which can be far off); what the window cost is known now, but for
        // the detach on its way (about what the attach cost): the next comes as soon as
        // the budget has paid for this one, and never later than planned.
        let (_, hits_cpu) = self.windows.hits(&self.probes.counts()?, &open.counts);
        // The breakpoints outlast the close by about as long as the last window's did.
        let tail = self.windows.rate.unwrap_or(0.0)
            * self.windows.overrun.as_secs_f64()
            * self.windows.per_hit.as_secs_f64();
        let cost = hits_cpu + tail + self.windows.fixed.max(open.attach * 2).as_secs_f64();
        let share = (self.opts.max_overhead - self.continuous_cost).max(0.0);
        let w = &mut self.windows;
        if share > 0.0 {
            w.period = w
                .period
                .min(PERIOD.max(Duration::from_secs_f64(cost / share)));
        }
        w.closing = Some(Closing {
            detach,
            length: match open.settled {
                true => now.duration_since(open.at),
                false => Duration::ZERO,
            },
            placing: open.placing,
            attach: open.attach,
            counts_at_open: open.counts,
        });
        w.windows += 1;
        w.next = Some(open.at + w.period);
        Ok(())
    }

    /// Opens or closes the window that is due.
    pub(super) fn window_tick(&mut self, records: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        if self.windows.open.as_ref().is_some_and(|o| !o.settled) {
            return self.start_sample();
        }
        if self.windows.open.is_some() {
            match self.window_due() {
                Some(later) => self.windows.next = Some(later),
                None => self.close_window(records)?,
            }
            return Ok(());
        }
        // The last window's records are in before the next opens (which drops what came
        // before it): records wake the collector only in bulk.
        self.drain(records);
        let now = Instant::now();
        let next_period = now + self.windows.period.max(PERIOD);
        if let Some(c) = self.windows.closing.take() {
            if !c.detach.is_finished() {
                // The kernel has not let go of the last window's probes yet.
                self.windows.closing = Some(c);
                self.windows.next = Some(next_period);
                return Ok(());
            }
            self.window_removed(c)?;
        }
        if let Some(t) = self.windows.not_before.filter(|t| *t > now) {
            self.windows.next = Some(t);
            return Ok(());
        }
        // The share of the budget the continuous probes leave.
        let share = (self.opts.max_overhead - self.continuous_cost).max(0.0);
        if !self.plan_window(share) {
            self.windows.next = Some(next_period);
            return Ok(());
        }
        let counts = self.probes.counts()?;
        let exe = self.target.process.probe_path();
        let placing = Instant::now();
        let cpu0 = thread_cpu_time();
        for p in self.windows.probes.clone() {
            match self.probes.attach(p, &exe, &self.windows.offsets[&p]) {
                Ok(()) => {}
                // Gone as the window opened: the trace stops at its exit, and its end
                // takes out what was placed.
                Err(_) if !self.target.process.is_alive() => {
                    self.windows.next = None;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let attach = thread_cpu_time().saturating_sub(cpu0);
        log::debug!(
            "window's probes placed in {:?} ({attach:?} of CPU)",
            placing.elapsed()
        );
        let w = &mut self.windows;
        // A window that saturates the target settles before its sample starts.
        let settle = match w.sampling || w.saturated() {
            true => SETTLE,
            false => Duration::ZERO,
        };
        w.open = Some(Open {
            at: Instant::now() + settle,
            settled: false,
            placing,
            attach,
            counts,
        });
        if settle.is_zero() {
            return self.start_sample();
        }
        w.next = Some(Instant::now() + settle);
        Ok(())
    }

    /// Starts the open window's sample, once every probe of the window is in place (and
    /// the target settled under them).
    fn start_sample(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let w = &mut self.windows;
        let Some(open) = w.open.as_mut() else {
            return Ok(());
        };
        if now < open.at {
            w.next = Some(open.at);
            return Ok(());
        }
        open.at = now;
        open.settled = true;
        w.next = Some(
            now + match w.sampling {
                true => SATURATED_WINDOW,
                false => w.length,
            },
        );
        // Only the records of probes in windows are judged by the sample: park/wake or
        // create/exit may run continuously beside windowed allocation probes.
        let ts = census::goroutines::monotonic_ns() as u64;
        let model = &mut self.findings.model;
        if self.windows.windowed(Probe::Gopark) {
            model.open_window(ts);
        }
        if self.windows.windowed(Probe::Create) {
            model.open_lives_window(ts);
        }
        let probed_parks = self.findings.model.total.total_parks();
        self.windows
            .read_sched(&self.target, SchedRead::Open { probed_parks });
        Ok(())
    }

    /// The last window's probes are gone: what it cost is known, and when the next may open.
    fn window_removed(&mut self, c: Closing) -> anyhow::Result<()> {
        let Ok(detached) = c.detach.join() else {
            anyhow::bail!("the thread removing the window's probes panicked");
        };
        let counts = self.probes.counts()?;
        let (hits, hits_cpu) = self.windows.hits(&counts, &c.counts_at_open);
        // Hits while the probes were placed and after the close, before the removal
        // began, cost the target too: they count in the rate and the cost, not in the
        // sample. So do the hits after that, until the kernel took the breakpoints out
        // at the end of its grace period: no record counts them, they are estimated at
        // the rate of the counted ones.
        let length = c.length;
        let counted = detached
            .began
            .saturating_duration_since(c.placing)
            .max(length);
        let in_place = detached
            .ended
            .saturating_duration_since(c.placing)
            .max(counted);
        let rate = hits as f64 / counted.as_secs_f64().max(1e-6);
        let trapped = rate * in_place.as_secs_f64();
        log::debug!(
            "window closed: {hits} hits counted in {counted:?} ({length:?} of it sampled), the breakpoints in place {in_place:?}: about {trapped:.0} hits"
        );
        let share = (self.opts.max_overhead - self.continuous_cost).max(0.0);
        let parks = counts
            .hits(Probe::Gopark)
            .saturating_sub(c.counts_at_open.hits(Probe::Gopark));
        let w = &mut self.windows;
        w.parks_inside = Some(parks as f64 / counted.as_secs_f64().max(1e-6));
        w.on += length;
        w.in_place += in_place;
        w.fixed = c.attach + detached.cpu;
        w.overrun = in_place - length;
        w.rate = Some(rate);
        if hits > 0 {
            w.per_hit = Duration::from_secs_f64(hits_cpu / hits as f64);
        }
        w.last_cost = trapped * w.per_hit.as_secs_f64() + w.fixed.as_secs_f64();
        // The budget is paid back in full before the next window: a window that cost more
        // than planned (the first, planned from the pre-attach estimate; one the loop held
        // open) used to skip one period only, and the windows cost 2% of a CPU in the
        // benchmark's 8 s at the 1% budget.
        let mut not_before = c.placing;
        if share > 0.0 {
            not_before += Duration::from_secs_f64(w.last_cost / share);
        }
        // A window that saturated the target slowed every request in flight while its
        // breakpoints were in place: few requests may meet one. Only while a sample window
        // can still take the sample do they come sooner (on the allocation loop, whose
        // park probe fires a thousand times a second, ten saturating windows 1.5 s apart
        // took 18% of its throughput: 0.82 of untraced).
        let gap = match (w.saturated(), w.missing_parks()) {
            (true, Some(0)) => in_place.div_f64(LATENCY_SHARE),
            (true, Some(m)) if w.windowed(Probe::Gopark) => match w.can_fill(m) {
                true => in_place.div_f64(SAMPLE_SHARE).min(SAMPLE_GAP),
                false => in_place.div_f64(LATENCY_SHARE),
            },
            _ => Duration::ZERO,
        };
        not_before = not_before.max(c.placing + gap);
        log::debug!(
            "window cost {:.2} ms of CPU, planned {:.2} ms; the next not before {:?} from now",
            w.last_cost * 1e3,
            w.planned * 1e3,
            not_before.saturating_duration_since(Instant::now())
        );
        w.not_before = Some(not_before);
        Ok(())
    }

    /// Plans the next window's length and period from the last one, within `share` of
    /// the budget (the continuous probes have the rest); false when nothing is left for it.
    fn plan_window(&mut self, share: f64) -> bool {
        if share <= 0.0 {
            return false;
        }
        let w = &mut self.windows;
        // The probes' CPU per second of window: the hits the target would make at its own
        // pace (a saturated window counts only those it managed under the probes). However
        // fast the target ran without them, hits cannot take more than every CPU it can run
        // on.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // Until the windows hold enough of the runtime's parks for the scaling to be right
        // (`SAMPLE_PARKS`), they are planned at the rate they measured: on a saturated
        // target, windows of 20-100 ms about once a second. Then at the target's own pace.
        let pace = match w.missing_parks() {
            Some(0) => w.pace.unwrap_or(1.0),
            _ => 1.0,
        };
        let per_second = (w.rate.unwrap_or(0.0) / pace * w.per_hit.as_secs_f64()).min(cpus);
        let length = if w.rate.is_none() {
            FIRST_WINDOW
        } else if per_second <= 0.0 {
            MAX_WINDOW
        } else {
            let fits = share * PERIOD.as_secs_f64() - w.fixed.as_secs_f64();
            Duration::from_secs_f64((fits / per_second - w.overrun.as_secs_f64()).max(0.0))
        };
        w.length = length.clamp(MIN_WINDOW, MAX_WINDOW);
        // A window that saturates the target is as long as the scaling needs (shorter ones
        // undercount the runtime's parks: 5-7 ms windows scaled parks to 1.4-3x its count).
        // Whether it does is known from the last window (the pre-attach estimate counts
        // state changes that are not parks: 2.5 million a second on the allocation loop,
        // which parks a few hundred times).
        if w.saturated() {
            w.length = SATURATED_WINDOW;
        }
        // The sample is taken in one window that closes once it is in: a few windows of
        // 40 ms a second or two apart slowed more requests, and fixed costs and boundaries
        // come once. It is taken when the last window saturated the target and its park
        // probe fired fast enough (not on the allocation loop, whose stops the runtime
        // counts are mostly preemptions: 50 parks in a window).
        let missing = w
            .missing_parks()
            .filter(|m| *m > 0 && w.windowed(Probe::Gopark));
        w.sampling = missing.is_some_and(|m| w.saturated() && w.can_fill(m));
        if w.sampling {
            w.length = SAMPLE_WINDOW;
        }
        // The first window, at a rate not yet measured, has no plan to exceed.
        w.planned = match w.rate {
            Some(_) => per_second * (w.length + w.overrun).as_secs_f64() + w.fixed.as_secs_f64(),
            None => f64::INFINITY,
        };
        // A window shorter than the shortest worth having comes less often than once a
        // period: as often as the budget pays for it. One that saturates the target comes
        // seldom (`window_removed`).
        w.period = match w.planned.is_finite() {
            true => PERIOD.max(Duration::from_secs_f64(w.planned / share)),
            false => PERIOD,
        };
        log::debug!(
            "window of {:?} every {:?}: {:.0} hits/s measured at {:.0}% of the target's pace, {:.2} ms of CPU planned, fixed cost {:?}",
            w.length,
            w.period,
            w.rate.unwrap_or(f64::NAN),
            pace * 100.0,
            w.planned * 1e3,
            w.fixed
        );
        true
    }

    /// Closes an open window and waits for the last one's probes to go, for the report;
    /// their records are taken from `records`.
    pub(super) fn close_windows(&mut self, records: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        self.close_window(records)?;
        // The counts are scaled to the trace, not to the time the report then takes.
        if self.windows.until.is_none() {
            self.windows.until = Some(Instant::now());
            self.windows.read_sched(&self.target, SchedRead::End);
        }
        if let Some(c) = self.windows.closing.take() {
            if let Ok(d) = c.detach.join() {
                self.windows.in_place += d.ended.saturating_duration_since(c.placing);
            }
            self.drain(records);
            self.windows.on += c.length;
        }
        self.windows.next = None;
        Ok(())
    }
}
