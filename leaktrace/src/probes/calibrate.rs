//! What one uprobe hit costs on this machine, measured at start-up.
//!
//! The overhead budget multiplies probe hits by the cost of one hit, and that cost varies
//! twenty-fold between machines (1-12 us on this project's 2-vCPU VMs with kernel 6.18,
//! 0.3-0.9 us on bare metal), and seven-fold with the instruction trapped on. The kernel
//! emulates a few instructions (`push`, the branches), and single-steps the others out of
//! line, a second trap. leaktrace places its entry probes on a Go function's `push rbp`
//! ([`crate::tracee::code::entry_probe_address`]): 1.5 us a hit here, against 10-12 us on
//! the function's first instruction, its stack check's `cmp`. Return and site probes sit
//! on whatever instruction is there (a `RET`, a `mov`), mostly single-stepped.
//!
//! So leaktrace places its own `site` program (a trap, a few reads, one ring-buffer
//! record: what a park or wake probe does) on a function of its own binary that begins with
//! `push rbp; mov rbp, rsp`, calls it a thousand times with no probe, with a probe on the
//! `push`, and with a second probe on the `mov` too, timing each call, and takes the
//! differences of the median calls. It takes 30-90 ms; the probes are removed on a thread,
//! so that the kernel's grace period on removal does not delay the trace.

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

/// The function the calibration probes are placed on: exported under a fixed name, written
/// out instruction by instruction, so that its first instruction is a `push rbp` (which the
/// kernel may emulate, as at a Go function's frame push) and its second a `mov rbp, rsp`
/// (which it single-steps, as it does a Go function's first instruction).
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub extern "C" fn leaktrace_calibration_target(x: u64) -> u64 {
    core::arch::naked_asm!(
        "push rbp",
        "mov rbp, rsp",
        "mov rax, rdi",
        "movabs rcx, 0x9e3779b97f4a7c15",
        "imul rax, rcx",
        "rol rax, 17",
        "pop rbp",
        "ret",
    )
}

/// The offsets in [`leaktrace_calibration_target`] of its `push rbp` (1 byte) and of the
/// `mov rbp, rsp` after it.
const PUSH_AT: u64 = 0;
const MOV_AT: u64 = 1;

/// What one probe hit costs on this machine, by the instruction it traps on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HitCost {
    /// On a `push`, which the kernel emulates (Linux 6.12+; otherwise as `stepped`).
    pub emulated: Duration,
    /// On an instruction the kernel single-steps out of line.
    pub stepped: Duration,
    /// Of either, what the `site` program itself ran, by the kernel's BPF statistics (zero
    /// where they could not be read): a probe whose program does more (a user stack walk)
    /// costs the difference more ([`super::HitCosts::set_program`]).
    pub program: Duration,
}

impl HitCost {
    /// Both figures the same: assumed, or for tests.
    pub const fn uniform(d: Duration) -> Self {
        Self {
            emulated: d,
            stepped: d,
            program: Duration::ZERO,
        }
    }
}

/// The cost of one probe hit: measured, each figure clamped to a plausible range, or
/// [`FALLBACK_HIT_COST`] for both with a warning on stderr when it cannot be measured.
pub fn hit_cost() -> HitCost {
    let plausible = |d: Duration, what: &str| {
        let c = d.clamp(PLAUSIBLE.0, PLAUSIBLE.1);
        if c != d {
            log::warn!("measured a probe hit {what} at {d:?}: implausible, using {c:?}");
        }
        c
    };
    match measure() {
        Ok(h) => {
            let stepped = plausible(h.stepped, "on a single-stepped instruction");
            HitCost {
                // An emulated hit costs no more than a single-stepped one.
                emulated: plausible(h.emulated, "on a push").min(stepped),
                stepped,
                program: h.program,
            }
        }
        Err(e) => {
            eprintln!(
                "leaktrace: could not measure what a probe hit costs on this machine ({e:#}); assuming {} us",
                FALLBACK_HIT_COST.as_secs_f64() * 1e6
            );
            HitCost::uniform(FALLBACK_HIT_COST)
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

/// Places the `site` program on [`leaktrace_calibration_target`] in this process, on its
/// `push` and then on its `mov` too, and returns the time each probe adds per call.
fn measure() -> anyhow::Result<HitCost> {
    let started = Instant::now();
    black_box(leaktrace_calibration_target(0));
    let bare = per_call_ns(CALLS);
    let (path, offset) = own_location()?;
    let pid = std::process::id();
    // The maps only the allocation probes fill are made as small as they may be: creating
    // them full size (tens of MiB, zeroed) would be most of the calibration's CPU.
    let mut loader = EbpfLoader::new();
    for map in ["ALLOCS", "SAMPLED", "STACKS", "SAMPLES"] {
        loader.map_max_entries(map, 64);
    }
    let mut ebpf = loader
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
    // The kernel times each run of a program while its statistics are on (a reference
    // count: they go off when the last holder closes its descriptor).
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .inspect_err(|e| log::debug!("BPF run-time statistics cannot be turned on: {e}"))
        .ok();
    let mut links = Vec::new();
    let mut ran: Option<Duration> = None;
    let mut probed = |at: u64| -> anyhow::Result<f64> {
        links.push(
            program
                .attach(
                    [offset + at],
                    &path,
                    UProbeScope::OneProcess(NonZeroU32::new(pid).unwrap()),
                )
                .with_context(|| format!("placing a uprobe on {}", path.display()))?,
        );
        // The first hits set up the probe (and its out-of-line slot) and wake an idle vCPU
        // up: a round to warm up, not counted.
        per_call_ns(CALLS / 10);
        let median = per_call_ns(CALLS);
        // With the one probe on the push, what its program runs: the least mean over
        // batches of calls, as the kernel times a run that was preempted with the time it
        // was off the CPU (the figures are medians of calls for the same reason).
        if at == PUSH_AT && stats.is_some() {
            let runs = || program.info().map(|i| (i.run_count(), i.run_time())).ok();
            for _ in 0..PROGRAM_BATCHES {
                let before = runs();
                per_call_ns(CALLS / 10);
                let (Some((n0, t0)), Some((n, t))) = (before, runs()) else {
                    break;
                };
                let batch = mean_run(n.saturating_sub(n0), t.saturating_sub(t0));
                ran = match (ran, batch) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Ok(median)
    };
    let push = probed(PUSH_AT)?;
    let both = probed(MOV_AT)?;
    drop(stats);
    // Removing a uprobe waits for a kernel grace period (about 100 ms each); nothing here
    // needs to wait. The programs' descriptors are closed now (the links keep them loaded
    // until they go), the links on threads, at once.
    let links = links
        .into_iter()
        .map(|id| program.take_link(id))
        .collect::<Result<Vec<_>, _>>()?;
    drop(ebpf);
    for link in links {
        std::thread::spawn(move || drop(link));
    }
    log::debug!(
        "calibration: {bare:.0} ns per call bare, {push:.0} ns with a probe on a push, {both:.0} ns with one on the next instruction too, the program {ran:?} a run, in {:?}",
        started.elapsed()
    );
    if push <= bare || both <= push {
        bail!(
            "a probe added nothing measurable ({bare:.0} ns per call bare, {push:.0} ns probed, {both:.0} ns probed twice)"
        );
    }
    Ok(HitCost {
        emulated: Duration::from_nanos((push - bare) as u64),
        stepped: Duration::from_nanos((both - push) as u64),
        program: ran.unwrap_or_default(),
    })
}

/// The batches of [`CALLS`]` / 10` calls the calibration program's run time is the least
/// mean of.
const PROGRAM_BATCHES: usize = 10;

/// A program's mean run time over `runs` runs that took `time`, when there were runs.
pub fn mean_run(runs: u64, time: Duration) -> Option<Duration> {
    (runs > 0).then(|| Duration::from_nanos((time.as_nanos() / u128::from(runs)) as u64))
}
