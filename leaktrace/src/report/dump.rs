//! `leaktrace dump`: the goroutine snapshot grouped like `goroutine?debug=1` (or listed one by
//! one like `debug=2` with `--all`), the memory figures, as text or as JSON.
//!
//! The JSON schema (stable; fields are only ever added):
//! ```text
//! { "pid", "executable", "go_version", "layout_source": "dwarf"|"table",
//!   "goroutine_count", "system_goroutines_hidden",
//!   "goroutines": [ { "wait_reason", "count", "goids": [..],
//!                     "waiting_seconds": {"min","max"} | null,
//!                     "stack": [ {"function","file","line"} ],   // innermost first
//!                     "elided_frames": 0,  // left out after the 50th frame, as Go does
//!                     "created_by": {"function","file","line","goid"} | null } ],
//!   "memory": { "rss_bytes", "rss_anon_bytes", "rss_file_bytes", "HeapAlloc", "HeapInuse",
//!               "HeapIdle", "HeapReleased", "HeapSys", "TotalAlloc", "NumGC",
//!               "PauseTotalNs", "LastGC" } | null }
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::Arc,
};

use serde::Serialize;

use crate::census::{
    CreatedBy, GoroutineSnapshot, MemorySnapshot, Seconds, StackFrame, goroutines::shown_by_go,
    memory,
};

/// Goroutines with the same state, stack and creation site.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Group {
    pub wait_reason: String,
    pub count: usize,
    pub goids: Vec<u64>,
    pub waiting_seconds: Option<Seconds>,
    pub stack: Vec<StackFrame>,
    /// Frames left out between `stack[49]` and `stack[50]` of a deep stack.
    pub elided_frames: usize,
    pub created_by: Option<CreatedBy>,
}

/// One goroutine of `dump --json --all`.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct EachGoroutine {
    pub goid: u64,
    pub wait_reason: String,
    pub waiting_seconds: Option<f64>,
    pub stack: Vec<StackFrame>,
    pub elided_frames: usize,
    pub created_by: Option<CreatedBy>,
    pub start_function: Option<String>,
}

/// `dump --json`: the snapshot, and with `--all` every goroutine on its own.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DumpJson {
    #[serde(flatten)]
    pub dump: Dump,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub each: Option<Vec<EachGoroutine>>,
}

#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Dump {
    pub pid: u32,
    pub executable: String,
    pub go_version: String,
    pub layout_source: String,
    pub goroutine_count: usize,
    pub system_goroutines_hidden: usize,
    pub goroutines: Vec<Group>,
    pub memory: Option<MemorySnapshot>,
}

/// Go prints this many innermost and outermost frames of a deeper stack, and how many it
/// left out between them (runtime/traceback.go, tracebackInnerFrames/tracebackOuterFrames,
/// Go 1.21-1.27).
const INNER_FRAMES: usize = 50;
const OUTER_FRAMES: usize = 50;

/// The frames of one goroutine as Go prints them.
pub struct ShownStack {
    pub frames: Vec<StackFrame>,
    /// Left out after `frames[INNER_FRAMES - 1]` ("...N frames elided...").
    pub elided: usize,
}

/// The frames to show: Go's traceback selection, or all of them, cut like Go cuts a deep
/// stack.
pub fn frames(g: &GoroutineSnapshot, runtime_frames: bool) -> ShownStack {
    let mut frames: Vec<StackFrame> = g
        .stack
        .iter()
        .filter(|f| runtime_frames || f.shown)
        .cloned()
        .collect();
    let elided = frames.len().saturating_sub(INNER_FRAMES + OUTER_FRAMES);
    if elided > 0 {
        frames.drain(INNER_FRAMES..INNER_FRAMES + elided);
    }
    ShownStack { frames, elided }
}

/// The creation site to show. Go prints it only when the function that ran the `go`
/// statement is one it shows (runtime/traceback.go `printcreatedby`), so not for goroutines
/// started inside the runtime.
pub fn created_by(g: &GoroutineSnapshot, runtime_frames: bool) -> Option<CreatedBy> {
    g.created_by
        .clone()
        .filter(|c| runtime_frames || shown_by_go(&c.function))
}

/// Groups goroutines by (state, stack, creation site), the largest group first.
///
/// Goroutines are first grouped by what they share without a copy (the state, the census's
/// shared stack, the `go` statement's PC), then those groups by the frames they print: the
/// frames of a stack are compared once per distinct stack, not once per goroutine.
pub fn group(goroutines: &[&GoroutineSnapshot], runtime_frames: bool) -> Vec<Group> {
    type Shared<'a> = (&'a str, *const StackFrame, Option<u64>);
    let mut shared: HashMap<Shared, usize> = HashMap::new();
    // Each shared group's goroutines, in the order its first goroutine came.
    let mut members: Vec<Vec<&GoroutineSnapshot>> = Vec::new();
    for &g in goroutines {
        let key = (
            &*g.state,
            g.stack.as_ptr(),
            g.created_by.as_ref().map(|c| c.pc),
        );
        let i = *shared.entry(key).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[i].push(g);
    }
    type Site = (Arc<str>, Arc<str>, u32);
    type Key = (String, Vec<Site>, usize, Option<Site>);
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for gs in members {
        let first = gs[0];
        let ShownStack { frames, elided } = frames(first, runtime_frames);
        let created_by = created_by(first, runtime_frames);
        let key: Key = (
            first.state.to_string(),
            frames
                .iter()
                .map(|f| (f.function.clone(), f.file.clone(), f.line))
                .collect(),
            elided,
            created_by
                .as_ref()
                .map(|c| (c.function.clone(), c.file.clone(), c.line)),
        );
        let e = groups.entry(key).or_insert_with(|| Group {
            wait_reason: first.state.to_string(),
            count: 0,
            goids: Vec::new(),
            waiting_seconds: None,
            stack: frames,
            elided_frames: elided,
            created_by,
        });
        for g in gs {
            e.count += 1;
            e.goids.push(g.goid);
            if let Some(w) = g.waiting {
                let s = w.as_secs_f64();
                e.waiting_seconds.get_or_insert(Seconds::of(s)).take_in(s);
            }
        }
    }
    let mut v: Vec<Group> = groups.into_values().collect();
    for g in &mut v {
        g.goids.sort_unstable();
    }
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.goids.cmp(&b.goids)));
    v
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", memory::mib(b))
}

pub fn memory_line(m: &MemorySnapshot) -> String {
    format!(
        "memory: RSS {} (anon {}, file {}) | Go heap: in use {}, idle {}, released {}, allocated {} | {} GCs",
        mib(m.rss_bytes),
        mib(m.rss_anon_bytes),
        mib(m.rss_file_bytes),
        mib(m.heap_inuse),
        mib(m.heap_idle),
        mib(m.heap_released),
        mib(m.heap_alloc),
        m.num_gc
    )
}

/// A stack as Go's traceback prints it: each frame and its position, then `created by`.
/// `elided` frames are marked after the first INNER_FRAMES, as Go does.
pub(crate) fn write_frames(
    out: &mut String,
    stack: &[StackFrame],
    elided: usize,
    created_by: Option<&CreatedBy>,
    indent: &str,
) {
    for (i, f) in stack.iter().enumerate() {
        if i == INNER_FRAMES && elided > 0 {
            let _ = writeln!(out, "{indent}...{elided} frames elided...");
        }
        let _ = writeln!(
            out,
            "{indent}{}(...)\n{indent}\t{}:{}",
            f.function, f.file, f.line
        );
    }
    if let Some(c) = created_by {
        let parent = if c.goid != 0 {
            format!(" in goroutine {}", c.goid)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{indent}created by {}{parent}\n{indent}\t{}:{}",
            c.function, c.file, c.line
        );
    }
}

fn waiting_text(w: &Option<Seconds>) -> String {
    match w {
        Some(w) if w.max >= 1.0 => format!(", waiting {:.0}-{:.0} s", w.min, w.max),
        _ => String::new(),
    }
}

/// Text for a person: the header, memory, then groups (or each goroutine with `all`).
pub fn text(d: &Dump, all: &[&GoroutineSnapshot], list_each: bool, runtime_frames: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "PID {} ({}, {}): {} goroutines ({} runtime goroutines hidden)",
        d.pid, d.executable, d.go_version, d.goroutine_count, d.system_goroutines_hidden
    );
    if let Some(m) = &d.memory {
        let _ = writeln!(out, "{}", memory_line(m));
    }
    let _ = writeln!(out);
    if list_each {
        for g in all {
            let _ = writeln!(out, "{}", g.header());
            let shown = frames(g, runtime_frames);
            write_frames(
                &mut out,
                &shown.frames,
                shown.elided,
                created_by(g, runtime_frames).as_ref(),
                "",
            );
            let _ = writeln!(out);
        }
        return out;
    }
    out.push_str(&text_groups(&d.goroutines));
    out
}

/// Groups as text, each with its count, state, stack, creation site and goids.
pub fn text_groups(groups: &[Group]) -> String {
    let mut out = String::new();
    for grp in groups {
        let noun = if grp.count == 1 {
            "goroutine"
        } else {
            "goroutines"
        };
        let _ = writeln!(
            out,
            "{} {noun} [{}{}]:",
            grp.count,
            grp.wait_reason,
            waiting_text(&grp.waiting_seconds)
        );
        write_frames(
            &mut out,
            &grp.stack,
            grp.elided_frames,
            grp.created_by.as_ref(),
            "    ",
        );
        let ids: Vec<String> = grp.goids.iter().take(20).map(u64::to_string).collect();
        let more = if grp.goids.len() > 20 {
            format!(" ... ({} more)", grp.goids.len() - 20)
        } else {
            String::new()
        };
        let _ = writeln!(out, "    goroutines: {}{more}\n", ids.join(" "));
    }
    out
}
