//! `--events FILE`: every probe record as a JSON line, symbolized (wait reasons in Go's
//! wording, call sites as function, file and line).

use leaktrace_common::{MADVISE_NAMES, Record, RecordKind};

use crate::tracee::Target;

/// One record as a JSON object on one line.
pub fn json(target: &Target, r: &Record) -> String {
    match RecordKind::from_u8(r.kind) {
        Some(RecordKind::Park) => serde_json::json!({
            "ts_ns": r.ts_ns,
            "kind": "park",
            "goid": r.goid,
            "reason": target.reason_name(r.reason),
            "reason_value": r.reason,
            "wait_addr": format!("{:#x}", r.addr),
            "caller": target.function_at_return(r.pc),
            "tid": r.tid,
        }),
        Some(RecordKind::Wake) => serde_json::json!({
            "ts_ns": r.ts_ns,
            "kind": "wake",
            "goid": r.goid,
            "waker_goid": r.other_goid,
            "tid": r.tid,
        }),
        Some(RecordKind::Create) => serde_json::json!({
            "ts_ns": r.ts_ns,
            "kind": "create",
            "goid": r.goid,
            "parent_goid": r.other_goid,
            "go_statement": target.site_at_return(r.pc),
            "start": target.function_at_return(r.addr + 1),
        }),
        Some(RecordKind::Exit) => {
            serde_json::json!({ "ts_ns": r.ts_ns, "kind": "exit", "goid": r.goid })
        }
        Some(RecordKind::Madvise) => serde_json::json!({
            "ts_ns": r.ts_ns,
            "kind": "madvise",
            "bytes": r.addr,
            "advice": MADVISE_NAMES.get(r.reason as usize).copied().unwrap_or("other"),
        }),
        Some(RecordKind::Site) => serde_json::json!({
            "ts_ns": r.ts_ns,
            "kind": "site",
            "goid": r.goid,
            "at": target.site_at_return(r.pc + 1),
        }),
        Some(
            k @ (RecordKind::ChanSend
            | RecordKind::ChanRecv
            | RecordKind::ChanClose
            | RecordKind::Select),
        ) => {
            serde_json::json!({
                "ts_ns": r.ts_ns,
                "kind": format!("{k:?}").to_lowercase(),
                "goid": r.goid,
                "addr": format!("{:#x}", r.addr),
                "site": target.site_at_return(r.pc),
                "block_or_cases": r.reason,
            })
        }
        None => serde_json::json!({ "kind": "unknown", "raw_kind": r.kind }),
    }
    .to_string()
}
