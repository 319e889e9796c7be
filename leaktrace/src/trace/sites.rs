//! Targeted probes at suspects' sites: the instruction after a leak group's blocking call
//! and after its `go` statement. A site is placed for a short trial first, one at a time,
//! and stays only if the rate the trial measured fits its share of the budget: on a busy
//! service the blocking call of a leak group is often passed by every request (the
//! benchmark's HTTP service sends on it ~90,000 times a second, a CPU's worth of hits),
//! and a probe there must not run until the next budget check. A site over its share is
//! removed after the trial and not placed again, in windows or otherwise: its evidence is
//! what it did not see (no goroutine of the group moved on), which only a probe in place
//! all the time can say.

use std::{
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::session::Session;
use crate::{
    probes::{Detached, Probe},
    report::schema::TargetedProbe,
};

/// How long a site's trial lasts at most: long enough to see a hot site (hundreds of hits),
/// short enough that the target pays for it about as much as for one probe window.
pub(super) const TRIAL: Duration = Duration::from_millis(5);

/// A trial ends sooner once it has this many hits at more than twice the rate allowed: the
/// verdict is in. A hot site (the benchmark's HTTP service passes its leak group's send
/// 50,000 times a second) is then in place for half a millisecond, not 5 ms of traps
/// slowing every request in flight. The counters are read every [`TRIAL_POLL`].
const TRIAL_HITS: u64 = 16;
const TRIAL_POLL: Duration = Duration::from_micros(250);

/// At most this many sites are tried in one trace: each placement writes a breakpoint into
/// the target's code under its mmap lock.
const MAX_SITES: usize = 32;

/// The most one site may cost continuously: this share of the budget the continuous probes
/// leave (the rest is the windows'). A leak fixture's site, passed only by the goroutines
/// that leak, costs a thousandth of that.
const SITE_SHARE: f64 = 0.25;

/// The targeted probes' state.
#[derive(Default)]
pub(super) struct Sites {
    /// Sites may be placed (`--probes` has them and no budget check shed them).
    pub enabled: bool,
    pub(super) tried: usize,
    /// Removals of sites that did not fit, on their threads.
    removing: Vec<JoinHandle<Detached>>,
    /// A trial or a removal ran since the last budget check: the site hits of that check's
    /// interval are the trial's, judged by it, not the continuous sites'.
    pub(super) unjudged: bool,
    /// What each site tried came to, for report.json.
    pub report: Vec<TargetedProbe>,
}

impl Sites {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// Whether a removal is under way.
    pub fn busy(&mut self) -> bool {
        self.removing.retain(|h| !h.is_finished());
        !self.removing.is_empty()
    }

    /// A budget check shed every site: those in place are "shed" from now on.
    pub fn shed(&mut self) {
        self.enabled = false;
        for s in self.report.iter_mut().filter(|s| s.mode == "continuous") {
            s.mode = "shed";
        }
    }
}

impl Session {
    /// Tries the sites the detector wants watched, one after the other; true when one was
    /// placed. A trial holds up the trace for its few ms (a snapshot, which comes just
    /// before, takes far longer): ended by the loop, it would last as long as whatever the
    /// loop does next, hundreds of ms on a busy machine.
    pub(super) fn place_sites(&mut self) -> anyhow::Result<bool> {
        let mut placed = false;
        for pc in self.findings.tracker.wanted_sites(&self.detect) {
            if !self.sites.enabled || self.sites.tried >= MAX_SITES {
                break;
            }
            placed |= self.try_site(pc)?;
        }
        Ok(placed)
    }

    /// Places a site for its trial, and keeps it if what it measured fits its share of
    /// the budget; true when it was placed.
    fn try_site(&mut self, pc: u64) -> anyhow::Result<bool> {
        let Some(off) = self.target.binary.file_offset(pc) else {
            log::warn!("targeted probe at {pc:#x}: not in a loadable segment");
            return Ok(false);
        };
        let exe = self.target.process.probe_path();
        let hits_before = self.probes.counts()?.hits(Probe::Site);
        if let Err(e) = self.probes.attach(Probe::Site, &exe, &[off]) {
            log::warn!("targeted probe at {pc:#x}: {e:#}");
            return Ok(false);
        }
        let placed = Instant::now();
        self.findings.tracker.site_placed(pc, self.start.elapsed());
        self.sites.tried += 1;
        self.sites.unjudged = true;
        let allowed = (self.opts.max_overhead - self.continuous_cost).max(0.0) * SITE_SHARE;
        let per_hit = self.costs.at(&self.target.binary, pc).as_secs_f64();
        // The continuous sites' hits count too: they are rare, or a budget check sheds them.
        let (hits, lasted, rate) = loop {
            std::thread::sleep(TRIAL_POLL.min(TRIAL.saturating_sub(placed.elapsed())));
            let hits = self
                .probes
                .counts()?
                .hits(Probe::Site)
                .saturating_sub(hits_before);
            let lasted = placed.elapsed();
            let rate = hits as f64 / lasted.as_secs_f64().max(1e-4);
            let clear = hits >= TRIAL_HITS && rate * per_hit > 2.0 * allowed;
            if clear || lasted >= TRIAL {
                break (hits, lasted, rate);
            }
        };
        let cost = rate * per_hit;
        let fits = cost <= allowed;
        let (function, file, line) = self.target.site_at_return(pc + self.target.load_bias);
        log::debug!(
            "targeted probe at {function} {file}:{line}: {hits} hits in {lasted:?}, {:.2}% of a CPU, {:.2}% allowed",
            cost * 100.0,
            allowed * 100.0
        );
        if !fits {
            let at = pc + self.target.load_bias;
            let removal = self.probes.detach_last_later(Probe::Site, vec![at])?;
            self.sites.removing.push(removal);
            self.findings.tracker.site_off(pc);
            let msg = format!(
                "the targeted probe after {function} ({file}:{line}) was passed {rate:.0} times/s in a {:.1} ms trial, {:.1}% of a CPU, over the {:.2}% a site may take: removed, not placed again",
                lasted.as_secs_f64() * 1e3,
                cost * 100.0,
                allowed * 100.0
            );
            eprintln!("leaktrace: {msg}");
            self.shed.push(msg);
        }
        self.sites.report.push(TargetedProbe {
            function,
            file,
            line,
            mode: if fits { "continuous" } else { "off" },
            trial_hits_per_second: rate,
            trial_ms: lasted.as_secs_f64() * 1e3,
            cost,
            allowed,
        });
        Ok(true)
    }

    /// Waits for the removals of sites that did not fit, before the report.
    pub(super) fn close_sites(&mut self) {
        for h in self.sites.removing.drain(..) {
            let _ = h.join();
        }
    }
}
