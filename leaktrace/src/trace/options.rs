//! What a trace is asked to do (the command line, parsed), and how it ended.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use crate::{alloc::AllocMode, probes::Probe, report::schema::Report};

/// What to trace.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// A running process.
    Pid(u32),
    /// Spawn this command and trace it from its first instruction.
    Spawn(Vec<OsString>),
}

#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub target: TargetSpec,
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub snapshot_interval: Duration,
    pub min_age: Duration,
    /// The probes to place; any of them is shed if the probes together cost more than
    /// `max_overhead`.
    pub probes: Vec<Probe>,
    /// The most of one CPU the probes may cost the target, as a fraction (0.01 = 1%);
    /// infinite for `--max-overhead off`.
    pub max_overhead: f64,
    /// Write every record as a JSON line here (`-`: stdout).
    pub events: Option<PathBuf>,
    /// Write report.txt, report.json and the exports here.
    pub output: Option<PathBuf>,
    /// The size of the ring buffer records pass through, in bytes (a power of two, at least
    /// a page); records that find it full are counted as lost.
    pub ring_bytes: u32,
    /// How allocations are seen.
    pub alloc: AllocMode,
    /// Serve metrics for Prometheus here.
    pub prometheus: Option<std::net::SocketAddr>,
    /// `leaktrace top`: an [`Observer`](super::Observer) shows each interval instead of the
    /// live lines, and stdout is its screen (a spawned command writes its stdout to stderr).
    pub top: bool,
}

impl TraceOptions {
    /// `--events -`: the event lines go to stdout, and nothing else does.
    pub fn events_to_stdout(&self) -> bool {
        self.events.as_deref() == Some(std::path::Path::new("-"))
    }

    /// Something other than the person reading leaktrace's output reads its stdout.
    pub fn stdout_taken(&self) -> bool {
        self.top || self.events_to_stdout()
    }

    /// Prints what a person reads (the live lines, the report): on stdout, or on stderr
    /// when stdout carries the event lines.
    pub fn say(&self, s: &str) {
        if self.events_to_stdout() {
            eprint!("{s}");
        } else {
            print!("{s}");
        }
    }
}

/// Why tracing stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Duration,
    Signal(&'static str),
    TargetExited,
    TargetExeced,
}

impl Stop {
    /// Stopped on leaktrace's own terms (the target is still there to look at).
    pub fn by_leaktrace(self) -> bool {
        matches!(self, Stop::Duration | Stop::Signal(_))
    }

    /// Why, as the stop line and report.json's `stopped` say it (`exited` completes a
    /// target's exit).
    pub fn wording(self, pid: u32, exited: Option<i32>) -> String {
        match self {
            Stop::Duration => "duration reached".to_string(),
            Stop::Signal(s) => format!("{s} received"),
            Stop::TargetExited => match exited {
                Some(code) => format!("PID {pid} exited with status {code}"),
                None => format!("PID {pid} exited"),
            },
            Stop::TargetExeced => format!("PID {pid} exec'd another program"),
        }
    }
}

/// What a trace produced.
#[derive(Debug)]
pub struct Outcome {
    pub stop: Stop,
    pub report: Report,
}
