//! What `leaktrace record -o DIR` writes (documented in the README, "Exports"):
//!
//! - `report.txt`, `report.json`: the report;
//! - `histograms.hlog`: every histogram per interval, an HdrHistogram interval log;
//! - `goroutines.pb.gz`: the leaked goroutines by stack, a pprof profile (`goroutine`/count,
//!   labelled with the wait reason and confidence);
//! - `allocations.pb.gz`: sampled allocations by stack, a pprof profile (the runtime's heap
//!   profile with alloc and in-use sample types, or the fallback sampler's allocations).
//!
//! Every file is created with mode 0644 and never through a symlink planted in the directory.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;

use super::{
    histograms::Histograms,
    hlog::{self, HlogInterval},
    leaks::{self, Report},
    pprof,
};
use crate::target::pclntab::Frame;

/// Creates `dir/name` for writing, refusing to follow a symlink planted there.
pub fn create_output(dir: &Path, name: &str) -> anyhow::Result<File> {
    let path = dir.join(name);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))
}

/// The leaked goroutines by stack.
pub fn goroutine_profile(report: &Report) -> pprof::Profile {
    pprof::Profile {
        sample_types: vec![pprof::ValueType::new("goroutine", "count")],
        samples: report
            .leaks
            .iter()
            .map(|l| pprof::Sample {
                stack: l
                    .stack
                    .iter()
                    .map(|f| Frame {
                        function: f.function.clone(),
                        file: f.file.clone(),
                        line: f.line,
                    })
                    .collect(),
                values: vec![l.count as i64],
                labels: vec![
                    ("wait_reason".into(), l.wait_reason.clone()),
                    (
                        "confidence".into(),
                        format!("{:?}", l.confidence).to_lowercase(),
                    ),
                ],
                num_labels: vec![(
                    "blocked_max".into(),
                    l.blocked_seconds.max as i64,
                    "seconds".into(),
                )],
            })
            .collect(),
        period_type: Some(pprof::ValueType::new("goroutine", "count")),
        period: 1,
        duration_nanos: (report.observed_seconds * 1e9) as i64,
        comments: vec![format!(
            "goroutines leaktrace suspects of leaking in PID {} ({})",
            report.pid, report.executable
        )],
        ..pprof::Profile::default()
    }
}

/// Writes every export to `dir` and says which.
pub fn write_all(
    dir: &Path,
    report: &Report,
    hist: &Histograms,
    allocations: Option<&pprof::Profile>,
) -> anyhow::Result<()> {
    let mut written = vec![
        "report.txt",
        "report.json",
        "histograms.hlog",
        "goroutines.pb.gz",
    ];
    create_output(dir, "report.txt")?.write_all(leaks::text(report).as_bytes())?;
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');
    create_output(dir, "report.json")?.write_all(json.as_bytes())?;

    let start = SystemTime::now() - Duration::from_secs_f64(report.observed_seconds);
    let histograms: Vec<_> = hist.intervals().iter().map(|i| i.histogram()).collect();
    let intervals: Vec<HlogInterval> = hist
        .intervals()
        .iter()
        .zip(&histograms)
        .map(|(i, h)| HlogInterval {
            tag: &i.tag,
            start: i.start,
            duration: i.end.saturating_sub(i.start),
            histogram: h,
        })
        .collect();
    let mut out = BufWriter::new(create_output(dir, "histograms.hlog")?);
    hlog::write_hlog(&mut out, start, &intervals).context("writing histograms.hlog")?;
    out.flush()?;

    create_output(dir, "goroutines.pb.gz")?
        .write_all(&pprof::encode(&goroutine_profile(report)))?;
    if let Some(p) = allocations {
        create_output(dir, "allocations.pb.gz")?.write_all(&pprof::encode(p))?;
        written.push("allocations.pb.gz");
    }
    eprintln!(
        "leaktrace: wrote {} in {}",
        written.join(", "),
        dir.display()
    );
    Ok(())
}
