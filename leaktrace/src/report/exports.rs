//! What `leaktrace record -o DIR` writes (documented in the README, "Exports"):
//!
//! - `report.txt`, `report.json`: the report;
//! - `report.html`: the report with plots, one self-contained page (`html`);
//! - `histograms.hlog`: every histogram per interval, an HdrHistogram interval log;
//! - `goroutines.pb.gz`: the leaked goroutines by stack, a pprof profile (`goroutine`/count,
//!   labelled with the wait reason and confidence);
//! - `goroutineleak.pb.gz`: the goroutines proven leaked by reachability, a pprof profile
//!   shaped like Go's own `goroutineleak` profile (`goroutineleak`/count);
//! - `allocations.pb.gz`: sampled allocations by stack, a pprof profile (the runtime's heap
//!   profile with alloc and in-use sample types, or the fallback sampler's allocations).
//!
//! Every file is written under a temporary name (mode 0644, never through a symlink) and
//! renamed into place, so that no reader and no abandoned report sees half a file.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

use super::{
    hlog::{self, HlogInterval},
    html, pprof,
    schema::Report,
    text,
};
use crate::{
    detect::{Confidence, LeakGroup},
    model::histograms::Histograms,
    signals::Interrupted,
};

/// Writes each file under a temporary name in `dir`, then renames them all into place, so
/// that no reader, and no signal abandoning the report, leaves half a file under the final
/// name. No symlink is ever followed: the temporary file is created with O_EXCL|O_NOFOLLOW,
/// and a symlink planted at a final name is refused rather than replaced.
pub fn write_outputs(
    dir: &Path,
    files: &[(&str, &[u8])],
    abandoned: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let mut written: Vec<(PathBuf, PathBuf)> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for (name, bytes) in files {
            let dest = dir.join(name);
            if fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
                bail!("refusing to replace {}: it is a symlink", dest.display());
            }
            let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            written.push((tmp.clone(), dest));
            file.write_all(bytes)
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        if abandoned() {
            let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
            return Err(Interrupted::now(format!(
                "again while finishing: {} not written to {}; all probes detached",
                names.join(" and "),
                dir.display()
            ))
            .into());
        }
        for (tmp, dest) in &written {
            fs::rename(tmp, dest)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (tmp, _) in &written {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

/// The leaked goroutines by stack.
pub fn goroutine_profile(report: &Report) -> pprof::Profile {
    leak_profile(report, "goroutine", |_| true)
}

/// The goroutines proven leaked by reachability, by stack, shaped like Go's own
/// `goroutineleak` profile (sample and period type `goroutineleak`/count).
pub fn goroutineleak_profile(report: &Report) -> pprof::Profile {
    goroutineleak_of(
        &report.leaks,
        report.pid,
        &report.executable,
        report.observed_seconds,
    )
}

/// [`goroutineleak_profile`] of the leak groups of PID (what `leaktrace agent` serves).
pub fn goroutineleak_of(
    leaks: &[LeakGroup],
    pid: u32,
    executable: &str,
    observed_seconds: f64,
) -> pprof::Profile {
    let mut p = leak_groups_profile(leaks, "goroutineleak", observed_seconds, |l| {
        l.confidence == Confidence::Proven
    });
    p.comments = vec![format!(
        "goroutines proven leaked by reachability in PID {pid} ({executable})"
    )];
    p
}

fn leak_profile(report: &Report, kind: &str, keep: impl Fn(&LeakGroup) -> bool) -> pprof::Profile {
    let mut p = leak_groups_profile(&report.leaks, kind, report.observed_seconds, keep);
    p.comments = vec![format!(
        "goroutines leaktrace suspects of leaking in PID {} ({})",
        report.pid, report.executable
    )];
    p
}

fn leak_groups_profile(
    leaks: &[LeakGroup],
    kind: &str,
    observed_seconds: f64,
    keep: impl Fn(&LeakGroup) -> bool,
) -> pprof::Profile {
    pprof::Profile {
        sample_types: vec![pprof::ValueType::new(kind, "count")],
        samples: leaks
            .iter()
            .filter(|l| keep(l))
            .map(|l| pprof::Sample {
                stack: pprof::frames(&l.stack),
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
        period_type: Some(pprof::ValueType::new(kind, "count")),
        period: 1,
        duration_nanos: (observed_seconds * 1e9) as i64,
        ..pprof::Profile::default()
    }
}

/// Writes every export to `dir` and says which; nothing is renamed into place once
/// `abandoned` says a second signal asked to stop.
pub fn write_all(
    dir: &Path,
    report: &Report,
    hist: &Histograms,
    allocations: Option<&pprof::Profile>,
    abandoned: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let text = text::text(report);
    let page = html::html(report);
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');

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
    let mut hlog_bytes = Vec::new();
    hlog::write_hlog(&mut hlog_bytes, start, &intervals).context("writing histograms.hlog")?;
    let goroutines = pprof::encode(&goroutine_profile(report));
    let goroutineleak = pprof::encode(&goroutineleak_profile(report));
    let allocations = allocations.map(pprof::encode);

    let mut files: Vec<(&str, &[u8])> = vec![
        ("report.txt", text.as_bytes()),
        ("report.json", json.as_bytes()),
        ("report.html", page.as_bytes()),
        ("histograms.hlog", &hlog_bytes),
        ("goroutines.pb.gz", &goroutines),
        ("goroutineleak.pb.gz", &goroutineleak),
    ];
    if let Some(a) = &allocations {
        files.push(("allocations.pb.gz", a));
    }
    write_outputs(dir, &files, abandoned)?;
    eprintln!(
        "leaktrace: wrote {} in {}",
        files.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        dir.display()
    );
    Ok(())
}
