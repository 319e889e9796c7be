//! SIGINT and SIGTERM, counted from the moment a trace starts.
//!
//! The live trace's event loop receives them through tokio. The phases around it are plain
//! code that cannot wait on a signal: attaching (loading the programs, the first snapshot,
//! placing probe after probe) and finishing (detaching, the last snapshot, writing the
//! report). They ask [`received`] between their steps, so that Ctrl-C while attaching places
//! no further probe, and Ctrl-C again while finishing abandons the report instead of being
//! ignored until it is written.

use std::{
    io,
    sync::{
        OnceLock,
        atomic::{AtomicI32, AtomicU32, Ordering},
    },
};

static COUNT: AtomicU32 = AtomicU32::new(0);
static LAST: AtomicI32 = AtomicI32::new(0);

/// Starts counting SIGINT and SIGTERM (once per process). From then on neither ends
/// leaktrace by itself: whoever is running decides how to stop.
pub fn watch() -> io::Result<()> {
    static WATCHING: OnceLock<Result<(), String>> = OnceLock::new();
    WATCHING
        .get_or_init(|| {
            for sig in [libc::SIGINT, libc::SIGTERM] {
                // SAFETY: the action only stores to atomics, which is async-signal-safe.
                unsafe {
                    signal_hook_registry::register(sig, move || {
                        LAST.store(sig, Ordering::SeqCst);
                        COUNT.fetch_add(1, Ordering::SeqCst);
                    })
                }
                .map_err(|e| format!("cannot handle {}: {e}", name(sig)))?;
            }
            Ok(())
        })
        .clone()
        .map_err(io::Error::other)
}

/// How many SIGINTs and SIGTERMs arrived since [`watch`].
pub fn received() -> u32 {
    COUNT.load(Ordering::SeqCst)
}

/// The last of them, 0 if none.
pub fn last() -> i32 {
    LAST.load(Ordering::SeqCst)
}

pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// A signal ended leaktrace before it could do what it was asked: before a spawned command
/// started, or while the report was being finished after it had stopped. Exits with
/// 128 + the signal's number, as a shell reports a command ended by it.
#[derive(Debug, thiserror::Error)]
#[error("{} received {what}", name(*.signal))]
pub struct Interrupted {
    pub signal: i32,
    pub what: String,
}

impl Interrupted {
    /// The last signal received, with what it interrupted.
    pub fn now(what: impl Into<String>) -> Self {
        Self {
            signal: last(),
            what: what.into(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        128u8.saturating_add(self.signal as u8)
    }
}
