//! The memory each leak group pins, estimated from a read of the target
//! ([`census::retained`]) and kept per group: a group's estimate is made again only when it
//! changed size and its last one is [`PINNED_EVERY`] old, because a scan reads the target's
//! heap.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{GroupKey, LeakGroup, Pinned};
use crate::{census::retained, tracee::Target};

/// How often, at most, one leak group's pinned memory is estimated again while tracing.
pub const PINNED_EVERY: Duration = Duration::from_secs(10);

/// The latest estimate of each group: when it was made, for how many goroutines, and what.
#[derive(Default)]
pub struct PinnedEstimates {
    by_group: HashMap<GroupKey, (Instant, usize, Pinned)>,
}

impl PinnedEstimates {
    /// Estimates the memory each of `leaks` pins, unless a recent estimate of a group of the
    /// same size is at hand (or `fresh` says to redo them all). `g_addrs` gives each live
    /// goroutine's g address by goid. A target that has exited keeps its last estimates.
    pub fn update(
        &mut self,
        target: &Target,
        leaks: &[LeakGroup],
        g_addrs: &HashMap<u64, u64>,
        fresh: bool,
    ) {
        for l in leaks {
            let key = l.key();
            let stale = fresh
                || self
                    .by_group
                    .get(&key)
                    .is_none_or(|(at, count, _)| *count != l.count && at.elapsed() >= PINNED_EVERY);
            if !stale {
                continue;
            }
            let gs: Vec<u64> = l
                .goids
                .iter()
                .filter_map(|g| g_addrs.get(g).copied())
                .collect();
            match retained::estimate(target, &gs, retained::Limits::default()) {
                Ok(r) => {
                    let pinned = Pinned {
                        stack_bytes: r.stack_bytes,
                        heap_bytes: r.heap_bytes,
                        heap_objects: r.heap_objects,
                        truncated: r.truncated,
                        method: retained::METHOD.to_string(),
                    };
                    self.by_group.insert(key, (Instant::now(), l.count, pinned));
                }
                Err(e) => log::warn!("estimating the memory a leak group pins: {e:#}"),
            }
        }
    }

    /// The latest estimate for `group`.
    pub fn get(&self, group: &LeakGroup) -> Option<Pinned> {
        self.by_group.get(&group.key()).map(|(_, _, p)| p.clone())
    }
}
