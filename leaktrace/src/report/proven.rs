//! `leaktrace dump --leaks`: the goroutines proven leaked by reachability, grouped like
//! `goroutine?debug=1`, with how the proof was made, as text or as JSON.
//!
//! The JSON schema (stable; fields are only ever added):
//! ```text
//! { "pid", "executable", "go_version",
//!   "proven_count",                      // goroutines proven leaked
//!   "not_proven": "why" | null,          // set when a pass hit its bound: nothing proven
//!   "proof": { "method", "gc_cycles_between": n | null, "between" (seconds),
//!              "holds_not_measured": "why" | null, // what the proven goroutines alone pin
//!              "passes": [ { "goroutines", "candidates", "revived", "objects_marked",
//!                            "bytes_marked", "bytes_read", "elapsed" (ms),
//!                            "bounded": "objects"|"bytes read"|"time"|null,
//!                            "roots": "gc bitmaps"|"conservative" (data and bss),
//!                            "conservative_why": "why" | null,
//!                            "stacks": { "mode": "stack maps"|"conservative", "stacks",
//!                                        "precise_frames", "conservative_frames",
//!                                        "conservative_stacks" },
//!                            "holds_bounded": "objects"|"bytes read"|"time"|null,
//!                            "unreachable": [ {"goid","wait_reason","wait_since"} ] } ] },
//!   "leaks": [ group as in `dump --json` "goroutines" ] }
//! ```

use std::fmt::Write as _;

use serde::Serialize;

use super::dump::{Group, text_groups};
use crate::detect::proof::Proof;

#[derive(Debug, Clone, Serialize)]
pub struct ProvenLeaks {
    pub pid: u32,
    pub executable: String,
    pub go_version: String,
    pub proven_count: usize,
    pub not_proven: Option<String>,
    pub proof: Proof,
    pub leaks: Vec<Group>,
}

/// Text for a person: a header, the evidence line, then the proven groups.
pub fn text(p: &ProvenLeaks) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "PID {} ({}, {}): {} goroutines proven leaked",
        p.pid, p.executable, p.go_version, p.proven_count
    );
    let _ = writeln!(out, "{}", p.proof.evidence());
    if let Some(why) = &p.not_proven {
        let _ = writeln!(out, "not proven: {why}");
    }
    let _ = writeln!(out);
    out.push_str(&text_groups(&p.leaks));
    out
}
