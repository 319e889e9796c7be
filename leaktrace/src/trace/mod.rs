//! The live trace (`leaktrace -p PID`, `leaktrace record`), as stages that read as the
//! README's flow. `attach` identifies the target (or spawns it), takes the first snapshot
//! and places the probes that fit the budget; a `Session` (`trace::session`) then
//! `follow`s it: records into the model and the detector (`apply`), a snapshot each
//! `--snapshot-interval` (`snapshot`), the budget checked and suspects' sites probed
//! (`budget`), probes that do not fit placed in short windows (`windows`), a line per
//! interval (or an [`Observer`] is shown it: `leaktrace top`). It stops on Ctrl-C, SIGTERM,
//! `--duration`, or when the target exits or execs, and `finish` detaches every probe, then
//! reports.

mod apply;
mod attach;
mod budget;
mod finish;
mod follow;
mod options;
mod pricing;
mod session;
mod sites;
mod snapshot;
mod windows;

use anyhow::{Context as _, anyhow};

pub use options::{Outcome, Stop, TargetSpec, TraceOptions};
pub(crate) use snapshot::observed;

use crate::{
    probes::calibrate,
    report::top::{Interval, screen::Screen},
    signals,
};

/// Watches the trace in place of the live lines: each interval's state is handed to it, and
/// it gives the terminal back before the report is printed.
pub trait Observer {
    fn interval(&mut self, now: Interval);
    fn close(&mut self);
}

impl Observer for Screen {
    fn interval(&mut self, now: Interval) {
        self.show(now);
    }

    fn close(&mut self) {
        Screen::close(self);
    }
}

/// Traces as `opts` say; `observer`, when given, is shown each interval instead of the live
/// lines.
pub async fn run(
    opts: TraceOptions,
    mut observer: Option<&mut dyn Observer>,
) -> anyhow::Result<Outcome> {
    // From here on SIGINT and SIGTERM stop the trace instead of killing leaktrace: counted
    // for the phases around the event loop, and buffered by tokio for the loop itself.
    signals::watch().context("handling SIGINT and SIGTERM")?;
    let signals = follow::Io::signals()?;
    crate::privileges::check().map_err(|e| anyhow!(e))?;
    crate::kernel::check().map_err(|e| anyhow!(e))?;
    if let Some(dir) = &opts.output {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let measured = calibrate::hit_cost();
    let attached = attach::attach(&opts, measured)?;
    let (mut session, records) = session::Session::start(opts, attached).await?;
    let mut io = follow::Io::new(records, &session, signals)?;
    let stop = follow::follow(
        &mut session,
        &mut io,
        observer.as_mut().map(|o| &mut **o as _),
    )
    .await?;
    if let Some(o) = observer {
        o.close();
    }
    session.finish(stop, io)
}
