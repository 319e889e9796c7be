//! How busy the target's scheduler is, estimated from two quick reads of its goroutine
//! structs (no stacks, no probes): goroutines created per second from the growth of the
//! largest goid, and state changes per second from goroutines whose status or saved PC
//! moved. The second is a lower bound on parks and wake-ups (a goroutine that parks and
//! wakes twice between the reads counts once), which is what decides whether a runtime-wide
//! probe would fit the overhead budget before it is placed.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::goroutines::{all_gs, read_gs};
use crate::target::Target;

/// The `_Gscan` bit, masked off (runtime/runtime2.go, Go 1.21-1.27).
const G_SCAN: u32 = 0x1000;
/// `_Gdead`: a free g kept for reuse.
const G_DEAD: u32 = 6;

struct Reading {
    at: Instant,
    max_goid: u64,
    /// goid -> (status, saved PC)
    state: HashMap<u64, (u32, u64)>,
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
    Ok(Reading {
        at,
        max_goid,
        state,
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
    Ok(Rates {
        creations: b.max_goid.saturating_sub(a.max_goid) as f64 / secs,
        transitions: changed as f64 / secs,
    })
}
