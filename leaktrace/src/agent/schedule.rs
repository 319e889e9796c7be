//! The host-wide budget: `--max-overhead` is a share of one CPU for all the agent's watching
//! (finding processes, snapshots, memory figures, heap profiles, reachability passes), over
//! every target together. The agent measures what its watching thread really used
//! (`getrusage(RUSAGE_THREAD)`) and, before each piece of work, waits until the CPU it used
//! since it started is back within `share x elapsed + BURST`. When work costs more than
//! the budget allows at `--interval`, each target is simply visited less often; the busiest
//! or fastest-growing targets are visited first (see [`priority`]).

use std::time::{Duration, Instant};

/// CPU time the watching may run ahead of its share, so that a first look at a new process
/// (its binary parsed, its runtime layout read) does not wait for the budget to accrue.
pub const BURST: Duration = Duration::from_millis(200);

/// CPU time used by the calling thread so far.
pub fn thread_cpu() -> Duration {
    rusage(libc::RUSAGE_THREAD)
}

/// CPU time used by the whole agent so far (its HTTP thread included).
pub fn process_cpu() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage writes into the struct we pass, nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The budget's bookkeeping.
#[derive(Debug)]
pub struct Budget {
    /// A share of one CPU (0.01 for 1 %); infinite for `off`.
    share: f64,
    start: Instant,
    cpu_start: Duration,
}

impl Budget {
    /// A budget that starts now, on the calling thread (the one that will do the work).
    pub fn new(share: f64) -> Self {
        Self {
            share,
            start: Instant::now(),
            cpu_start: thread_cpu(),
        }
    }

    pub fn share(&self) -> f64 {
        self.share
    }

    /// The watching's CPU since the start.
    pub fn used(&self) -> Duration {
        thread_cpu().saturating_sub(self.cpu_start)
    }

    /// How long to wait before the next piece of work.
    pub fn wait(&self) -> Duration {
        wait_for(self.share, self.used(), self.start.elapsed())
    }
}

/// How long work that has used `used` CPU in `elapsed` must wait so that it stays within
/// `share x elapsed + BURST`.
pub fn wait_for(share: f64, used: Duration, elapsed: Duration) -> Duration {
    if !share.is_finite() {
        return Duration::ZERO;
    }
    let ahead = used.as_secs_f64() - BURST.as_secs_f64() - share * elapsed.as_secs_f64();
    if ahead <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(ahead / share)
    }
}

/// Which due target goes first: the fastest growing (goroutines gained since its previous
/// snapshot), then the busiest (most goroutines); larger is first.
pub fn priority(goroutines: usize, previous: Option<usize>) -> (i64, usize) {
    let growth = previous.map_or(0, |p| goroutines as i64 - p as i64);
    (growth, goroutines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_until_the_share_is_back() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Within share x elapsed + burst: no wait.
        assert_eq!(wait_for(0.01, ms(250), s(10)), Duration::ZERO);
        // 1 % of a CPU, 0.5 s used after 10 s: 0.2 s over (0.5 - 0.2 - 0.1), 20 s to wait.
        let w = wait_for(0.01, ms(500), s(10));
        assert!((w.as_secs_f64() - 20.0).abs() < 1e-6, "{w:?}");
        assert_eq!(wait_for(f64::INFINITY, s(100), s(1)), Duration::ZERO);
    }

    #[test]
    fn growing_targets_come_first() {
        let mut order = [
            (1, priority(500, Some(500))),
            (2, priority(40, Some(10))),
            (3, priority(900, None)),
        ];
        order.sort_by_key(|a| std::cmp::Reverse(a.1));
        assert_eq!(order.map(|o| o.0), [2, 3, 1]);
    }
}
