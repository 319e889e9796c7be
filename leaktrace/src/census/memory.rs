//! The target's memory as the OS sees it (RSS and its parts, from /proc) and as the Go heap
//! has it (read from the runtime's own globals, `runtime.gcController` and
//! `runtime.memstats`), so that "not yet returned to the OS" can be told apart from "still
//! referenced".

use anyhow::Context as _;
use serde::Serialize;

use crate::tracee::Target;

/// Field names are those of Go's `runtime.MemStats`, plus the RSS figures from /proc.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct MemorySnapshot {
    /// Resident set size (VmRSS).
    pub rss_bytes: u64,
    /// Anonymous resident memory (RssAnon): the heap, stacks, and other runtime memory.
    pub rss_anon_bytes: u64,
    /// File-backed resident memory (RssFile): mostly the binary's own code and data.
    pub rss_file_bytes: u64,
    #[serde(rename = "HeapAlloc")]
    pub heap_alloc: u64,
    #[serde(rename = "HeapInuse")]
    pub heap_inuse: u64,
    #[serde(rename = "HeapIdle")]
    pub heap_idle: u64,
    #[serde(rename = "HeapReleased")]
    pub heap_released: u64,
    #[serde(rename = "HeapSys")]
    pub heap_sys: u64,
    #[serde(rename = "TotalAlloc")]
    pub total_alloc: u64,
    #[serde(rename = "NumGC")]
    pub num_gc: u32,
    #[serde(rename = "PauseTotalNs")]
    pub pause_total_ns: u64,
    /// Unix time of the last GC in ns (MemStats.LastGC); 0 before the first GC.
    #[serde(rename = "LastGC")]
    pub last_gc: u64,
}

fn kib(v: Option<u64>) -> u64 {
    v.unwrap_or(0) * 1024
}

/// Reads the memory figures. HeapAlloc is `totalAlloc - totalFree` as the runtime keeps them
/// between GCs; it lags `runtime.ReadMemStats` by what the per-P caches have not flushed
/// (GO-RUNTIME.md section 5), at most a few hundred KiB per P.
pub fn read(target: &Target) -> anyhow::Result<MemorySnapshot> {
    let pid = target.process.pid();
    let status = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let gc = target.globals()?.gc_controller + target.load_bias;
    let ms = target.globals()?.memstats + target.load_bias;
    let l = &target.layout;
    let p = &target.process;
    let rd = |addr: u64| {
        p.read_u64(addr)
            .context("reading the Go runtime's memory statistics")
    };
    let heap_inuse = rd(gc + l.gc_controller.heap_inuse)?;
    let heap_released = rd(gc + l.gc_controller.heap_released)?;
    let heap_free = rd(gc + l.gc_controller.heap_free)?;
    let total_alloc = rd(gc + l.gc_controller.total_alloc)?;
    let total_free = rd(gc + l.gc_controller.total_free)?;
    let mut numgc = [0u8; 4];
    p.read(ms + l.memstats.numgc, &mut numgc)?;
    Ok(MemorySnapshot {
        rss_bytes: kib(status.vmrss),
        rss_anon_bytes: kib(status.rssanon),
        rss_file_bytes: kib(status.rssfile),
        heap_alloc: total_alloc.saturating_sub(total_free),
        heap_inuse,
        heap_idle: heap_free + heap_released,
        heap_released,
        heap_sys: heap_inuse + heap_free + heap_released,
        total_alloc,
        num_gc: u32::from_le_bytes(numgc),
        pause_total_ns: rd(ms + l.memstats.pause_total_ns)?,
        last_gc: rd(ms + l.memstats.last_gc_unix)?,
    })
}

/// Bytes in MiB, for people.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
