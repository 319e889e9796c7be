//! `leaktrace dump -p PID`: one read-only snapshot of every goroutine and the memory
//! figures, with no probe loaded.

use std::{collections::HashSet, path::PathBuf, time::SystemTime};

use anyhow::{Context as _, anyhow};

use crate::{
    census::{self, GoroutineSnapshot},
    detect::proof::{ProofOptions, prove},
    report::{
        dump::{self, Dump},
        exports, pprof,
        proven::{self, ProvenLeaks},
    },
    tracee::{Target, layout::LayoutSource},
};

#[derive(Clone, Debug)]
pub struct DumpOptions {
    pub pid: u32,
    /// List each goroutine (like `debug=2`) instead of groups (like `debug=1`).
    pub all: bool,
    pub json: bool,
    /// Include runtime-internal frames and goroutines.
    pub runtime: bool,
    /// Print only the goroutines proven leaked by two reachability passes.
    pub leaks: bool,
    /// Write the goroutines as a pprof goroutine profile to this file instead of printing.
    pub output: Option<PathBuf>,
}

/// True when PID is gone or a zombie: its memory can no longer be read.
fn has_exited(pid: u32) -> bool {
    match procfs::process::Process::new(pid as i32).and_then(|p| p.stat()) {
        Ok(stat) => matches!(stat.state, 'Z' | 'X'),
        Err(_) => true,
    }
}

/// True when `e` came from the target exiting: `process_vm_readv` says ESRCH once its
/// memory is released, in do_exit before /proc shows a zombie; later, /proc says so.
fn exited_during(pid: u32, e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.raw_os_error() == Some(libc::ESRCH))
        || has_exited(pid)
}

pub fn snapshot(target: &Target, runtime: bool) -> anyhow::Result<(Dump, Vec<GoroutineSnapshot>)> {
    let goroutines = census::goroutines::walk(target)?;
    let memory = match census::memory::read(target) {
        Ok(m) => Some(m),
        Err(e) if exited_during(target.process.pid(), &e) => return Err(e),
        Err(e) => {
            log::warn!("memory figures unavailable: {e:#}");
            None
        }
    };
    let shown: Vec<&GoroutineSnapshot> =
        goroutines.iter().filter(|g| runtime || !g.system).collect();
    let dump = Dump {
        pid: target.process.pid(),
        executable: target.process.exe_name(),
        go_version: target.binary.build().version_string.clone(),
        layout_source: match target.layout.source {
            LayoutSource::Dwarf => "dwarf".into(),
            LayoutSource::Table { .. } => "table".into(),
        },
        goroutine_count: shown.len(),
        system_goroutines_hidden: goroutines.len() - shown.len(),
        goroutines: dump::group(&shown, runtime),
        memory,
    };
    Ok((dump, goroutines))
}

pub fn run(opts: &DumpOptions) -> anyhow::Result<String> {
    crate::privileges::check_read().map_err(|e| anyhow!(e))?;
    let pid = opts.pid;
    let existed = !has_exited(pid);
    // A target that exits while it is read fails in whichever read comes first (its
    // /proc entries, its memory); say what happened rather than which read failed.
    render(opts).map_err(|e| {
        if existed && exited_during(pid, &e) {
            anyhow!("PID {pid} exited while leaktrace was reading it; no snapshot was taken")
        } else {
            e
        }
    })
}

fn render(opts: &DumpOptions) -> anyhow::Result<String> {
    let target = Target::inspect(opts.pid)?;
    if opts.leaks {
        return render_leaks(&target, opts);
    }
    let (d, goroutines) = snapshot(&target, opts.runtime)?;
    if let Some(path) = &opts.output {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |t| t.as_nanos() as i64);
        let bytes = pprof::encode(&pprof::dump_goroutines(&d, now));
        let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(dir), Some(name)) => (
                if dir.as_os_str().is_empty() {
                    std::path::Path::new(".")
                } else {
                    dir
                },
                name,
            ),
            _ => anyhow::bail!(
                "-o {}: give a file name, e.g. goroutines.pb.gz",
                path.display()
            ),
        };
        exports::write_outputs(dir, &[(name, &bytes)], || false)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "leaktrace: wrote {} goroutines in {} stacks to {} (go tool pprof {})",
            d.goroutine_count,
            d.goroutines.len(),
            path.display(),
            path.display()
        );
        return Ok(String::new());
    }
    if opts.json {
        let each = opts.all.then(|| {
            goroutines
                .iter()
                .filter(|g| opts.runtime || !g.system)
                .map(|g| {
                    let shown = dump::frames(g, opts.runtime);
                    dump::EachGoroutine {
                        goid: g.goid,
                        wait_reason: g.state.to_string(),
                        waiting_seconds: g.waiting.map(|w| w.as_secs_f64()),
                        stack: shown.frames,
                        elided_frames: shown.elided,
                        created_by: dump::created_by(g, opts.runtime),
                        start_function: g.start_function.as_deref().map(String::from),
                    }
                })
                .collect()
        });
        let json = dump::DumpJson { dump: d, each };
        return Ok(serde_json::to_string_pretty(&json)? + "\n");
    }
    let shown: Vec<&GoroutineSnapshot> = goroutines
        .iter()
        .filter(|g| opts.runtime || !g.system)
        .collect();
    Ok(dump::text(&d, &shown, opts.all, opts.runtime))
}

/// `dump --leaks`: two reachability passes a moment apart, then the proven goroutines,
/// grouped by stack from a walk taken after the second pass.
fn render_leaks(target: &Target, opts: &DumpOptions) -> anyhow::Result<String> {
    let proof = prove(target, &ProofOptions::default())?;
    let goroutines = census::goroutines::walk(target)?;
    let proven: HashSet<(u64, u64)> = proof.proven.iter().map(|b| (b.goid, b.g_addr)).collect();
    let leaked: Vec<&GoroutineSnapshot> = goroutines
        .iter()
        .filter(|g| proven.contains(&(g.goid, g.g_addr)))
        .collect();
    let out = ProvenLeaks {
        pid: target.process.pid(),
        executable: target.process.exe_name(),
        go_version: target.binary.build().version_string.clone(),
        proven_count: leaked.len(),
        not_proven: proof.not_proven.clone(),
        leaks: dump::group(&leaked, opts.runtime),
        proof,
    };
    if opts.json {
        return Ok(serde_json::to_string_pretty(&out)? + "\n");
    }
    Ok(proven::text(&out))
}
