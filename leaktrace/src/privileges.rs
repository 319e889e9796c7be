//! What leaktrace needs from the kernel, checked before anything else so that a missing
//! privilege is named instead of surfacing as a confusing EPERM from `bpf(2)`.

use std::fs;

/// Capability numbers from linux/capability.h.
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// For a snapshot without probes: reading another process's memory needs CAP_SYS_PTRACE.
pub fn check_read() -> Result<(), String> {
    let caps = effective_caps().ok_or("cannot read CapEff from /proc/self/status")?;
    if caps & (1u64 << CAP_SYS_PTRACE) != 0 {
        Ok(())
    } else {
        Err("missing privileges: CAP_SYS_PTRACE (to read the target's memory); run leaktrace as root (sudo leaktrace ...) or grant it".into())
    }
}

/// Checks the capabilities leaktrace needs; the error lists the missing ones and what to do.
pub fn check() -> Result<(), String> {
    let caps = effective_caps().ok_or("cannot read CapEff from /proc/self/status")?;
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        missing.push("CAP_BPF");
    }
    if !(has(CAP_PERFMON) || has(CAP_SYS_ADMIN)) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_SYS_PTRACE) {
        missing.push("CAP_SYS_PTRACE");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing privileges: {} (to load BPF programs, attach uprobes and read the target's memory); run leaktrace as root (sudo leaktrace ...) or grant those capabilities",
            missing.join(", ")
        ))
    }
}
