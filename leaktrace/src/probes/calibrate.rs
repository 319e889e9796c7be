//! What one uprobe hit costs on this machine, measured at start-up.
//!
//! The overhead budget multiplies probe hits by the cost of one hit, and that cost varies
//! twenty-fold between machines (5-10 us on this project's 2-vCPU VMs with kernel 6.18,
//! 0.3-0.9 us on bare metal). So leaktrace places its own `site` program (a trap, a few
//! reads, one ring-buffer record: what a park or wake probe does) on a function of its own
//! binary whose first instruction, like a Go function's stack check, is single-stepped out
//! of line, calls it a thousand times with and without the probe, timing each call, and
//! takes the difference of the median calls. It takes 20-60 ms; the probe is removed on a
//! thread, so that the kernel's grace period on removal does not delay the trace.

use std::{
    hint::black_box,
    num::NonZeroU32,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    EbpfLoader,
    maps::Array,
    programs::{UProbe, uprobe::UProbeScope},
};
use leaktrace_common::Config;

use super::BPF_OBJECT;

/// Assumed when the measurement fails: the figure measured on this project's VMs (an
/// allocation loop under a uprobe on mallocgc, shared/design/TOOLCHAIN-NOTES.md). It errs
/// on the side of the target on faster machines.
pub const FALLBACK_HIT_COST: Duration = Duration::from_micros(5);

/// A measured figure outside this range is taken as noise and clamped.
const PLAUSIBLE: (Duration, Duration) = (Duration::from_nanos(500), Duration::from_micros(50));

/// Calls timed, each on its own. The median call counts: a call during which leaktrace was
/// preempted (the target may be using every CPU) measures the scheduler, not the probe,
/// and at most a few calls in a thousand are.
const CALLS: usize = 1000;

/// The function the calibration probe is placed on: exported under a fixed name, never
/// inlined, so that every call is a call to this one instruction address.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn leaktrace_calibration_target(x: u64) -> u64 {
    black_box(x)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(17)
}

/// The cost of one probe hit: measured, clamped to a plausible range, or
/// [`FALLBACK_HIT_COST`] with a warning on stderr when it cannot be measured.
pub fn hit_cost() -> Duration {
    match measure() {
        Ok(d) if d < PLAUSIBLE.0 || d > PLAUSIBLE.1 => {
            let c = d.clamp(PLAUSIBLE.0, PLAUSIBLE.1);
            log::warn!("measured a probe hit at {d:?}: implausible, using {c:?}");
            c
        }
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "leaktrace: could not measure what a probe hit costs on this machine ({e:#}); assuming {} us",
                FALLBACK_HIT_COST.as_secs_f64() * 1e6
            );
            FALLBACK_HIT_COST
        }
    }
}

/// Nanoseconds per call of the target function, the median of `calls` calls (each timed
/// with the vDSO clock, which the bare and the probed figures both include).
fn per_call_ns(calls: usize) -> f64 {
    let mut x = 1u64;
    let mut each: Vec<f64> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            x = leaktrace_calibration_target(x);
            t.elapsed().as_nanos() as f64
        })
        .collect();
    black_box(x);
    each.sort_by(f64::total_cmp);
    each[each.len() / 2]
}

/// The calibration target's file and offset in it, from where our own mapping of it is.
fn own_location() -> anyhow::Result<(PathBuf, u64)> {
    let addr = leaktrace_calibration_target as *const () as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    for line in maps.lines() {
        // start-end perms offset dev inode path
        let mut f = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), _, _, Some(path)) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (start, end, offset) = (
            u64::from_str_radix(start, 16)?,
            u64::from_str_radix(end, 16)?,
            u64::from_str_radix(offset, 16)?,
        );
        if (start..end).contains(&addr) {
            return Ok((PathBuf::from(path), addr - start + offset));
        }
    }
    bail!("the calibration function at {addr:#x} is in no file mapping of leaktrace")
}

/// Places the `site` program on [`leaktrace_calibration_target`] in this process and
/// returns the added time per call.
fn measure() -> anyhow::Result<Duration> {
    let started = Instant::now();
    black_box(leaktrace_calibration_target(0));
    let bare = per_call_ns(CALLS);
    let (path, offset) = own_location()?;
    let pid = std::process::id();
    let mut ebpf = EbpfLoader::new()
        .load(BPF_OBJECT)
        .context("loading leaktrace's BPF programs")?;
    let mut cfg: Array<_, Config> = ebpf
        .map_mut("CONFIG")
        .ok_or_else(|| anyhow!("BPF object has no CONFIG map"))?
        .try_into()?;
    cfg.set(
        0,
        &Config {
            tgid: pid,
            ..Config::default()
        },
        0,
    )?;
    let program: &mut UProbe = ebpf
        .program_mut("site")
        .ok_or_else(|| anyhow!("BPF object has no site program"))?
        .try_into()?;
    program.load()?;
    program
        .attach(
            [offset],
            &path,
            UProbeScope::OneProcess(NonZeroU32::new(pid).unwrap()),
        )
        .with_context(|| format!("placing a uprobe on {}", path.display()))?;
    // The first hits set up the probe's out-of-line slot and wake an idle vCPU up: a round
    // to warm up, not counted.
    let attached = started.elapsed();
    per_call_ns(CALLS / 10);
    let probed = per_call_ns(CALLS);
    // Removing the uprobe waits for a kernel grace period; nothing here needs to wait.
    std::thread::spawn(move || drop(ebpf));
    log::debug!(
        "calibration: {bare:.0} ns per call bare, {probed:.0} ns probed, in {:?} ({attached:?} to place the probe)",
        started.elapsed()
    );
    if probed <= bare {
        bail!("the probe added nothing measurable ({probed:.0} ns vs {bare:.0} ns per call)");
    }
    Ok(Duration::from_nanos((probed - bare) as u64))
}
