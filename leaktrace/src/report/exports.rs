//! What `leaktrace record -o DIR` writes: the report as text and JSON. Every file is created
//! with mode 0644 and never through a symlink planted in the directory.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use anyhow::Context as _;

use super::{
    histograms::Histograms,
    leaks::{self, Report},
};
use crate::{census::heapprofile::HeapProfile, target::Target};

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

/// Writes every export to `dir` and says which.
pub fn write_all(
    dir: &Path,
    _target: &Target,
    report: &Report,
    _hist: &Histograms,
    _profile: Option<&HeapProfile>,
) -> anyhow::Result<()> {
    create_output(dir, "report.txt")?.write_all(leaks::text(report).as_bytes())?;
    let mut json = serde_json::to_string_pretty(report)?;
    json.push('\n');
    create_output(dir, "report.json")?.write_all(json.as_bytes())?;
    eprintln!(
        "leaktrace: wrote {0}/report.txt and {0}/report.json",
        dir.display()
    );
    Ok(())
}
