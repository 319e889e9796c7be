//! Record dispatch: each record the probes send goes into the model (parks, wake-ups,
//! goroutines' lives), the detector's evidence (wake-ups, exits, channel operations,
//! targeted sites), the histograms, and the event log.

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufWriter, Write},
    time::Duration,
};

use leaktrace_common::{Record, RecordKind};

use crate::{
    detect::{Touch, Tracker},
    model::{
        Applied, Model,
        histograms::{self, Histograms},
    },
    report::events,
    tracee::Target,
};

/// What the trace has learnt from records and snapshots.
pub(super) struct Findings {
    pub model: Model,
    pub tracker: Tracker,
    pub hist: Histograms,
    /// Park durations in `hist` that a snapshot closed (known to within the snapshot
    /// interval, not exactly), by histogram.
    pub closed_by_snapshot: BTreeMap<String, u64>,
    /// `--events FILE`.
    pub events: Option<BufWriter<Box<dyn Write>>>,
    /// Where each channel operation's return address is, symbolized once.
    sites: HashMap<u64, (String, String, u32)>,
    /// The trace's start on the BPF clock: records are placed in trace time with it.
    start_mono_ns: u64,
}

impl Findings {
    pub fn new(
        tracker: Tracker,
        events: Option<BufWriter<Box<dyn Write>>>,
        start_mono_ns: u64,
    ) -> Self {
        Self {
            model: Model::default(),
            tracker,
            hist: Histograms::default(),
            closed_by_snapshot: BTreeMap::new(),
            events,
            sites: HashMap::new(),
            start_mono_ns,
        }
    }

    /// Takes in one record.
    pub fn apply(&mut self, target: &Target, rec: Record) {
        let applied = self.model.apply(&rec);
        match applied {
            Applied::Woken {
                reason: Some(r),
                parked_ns: Some(ns),
            } => self
                .hist
                .record(&histograms::tag("park_ns", &target.reason_name(r)), ns),
            Applied::Exited {
                lifetime_ns: Some(ns),
            } => self.hist.record("lifetime_ns", ns),
            _ => {}
        }
        // A morestack re-entry of gopark is the same park, and casgstatus inside ready the
        // same wake-up: neither is logged twice.
        if matches!(applied, Applied::ReEntry | Applied::Duplicate) {
            return;
        }
        let at = Duration::from_nanos(rec.ts_ns.saturating_sub(self.start_mono_ns));
        match RecordKind::from_u8(rec.kind) {
            Some(RecordKind::Wake) => self.tracker.record_wake(rec.goid, at),
            Some(RecordKind::Exit) => self.tracker.record_exit(rec.goid),
            Some(RecordKind::Madvise) => self.hist.record("madvise_bytes", rec.addr),
            Some(RecordKind::Site) => self
                .tracker
                .record_site_hit(target.link_addr(rec.pc), rec.goid),
            Some(k @ (RecordKind::ChanSend | RecordKind::ChanRecv | RecordKind::ChanClose)) => {
                let (function, file, line) = self
                    .sites
                    .entry(rec.pc)
                    .or_insert_with(|| target.site_at_return(rec.pc))
                    .clone();
                let op = match k {
                    RecordKind::ChanSend => "send",
                    RecordKind::ChanRecv => "receive",
                    _ => "close",
                };
                self.tracker.record_touch(
                    rec.addr,
                    at,
                    Touch {
                        op,
                        at_seconds: at.as_secs_f64(),
                        goid: rec.goid,
                        function,
                        file,
                        line,
                        exited: false,
                    },
                );
            }
            _ => {}
        }
        if let Some(w) = self.events.as_mut() {
            let _ = writeln!(w, "{}", events::json(target, &rec));
        }
    }
}
