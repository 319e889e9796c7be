//! The record and configuration types shared by leaktrace's BPF programs and its userspace:
//! one `#[repr(C)]` definition of each, used by both sides.
#![no_std]

/// What userspace tells the BPF programs before it attaches them: which process to follow
/// and where the runtime keeps the fields they read. Written once into the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Thread-group id of the target in the initial PID namespace (what the kernel reports).
    pub tgid: u32,
    /// A record wakes the collector only when at least this many bytes wait in the ring
    /// buffer (0: whenever it finds the ring empty, the kernel's default); below it the
    /// collector drains the ring on a timer. A wake-up is a context switch for the collector
    /// and work in the target's context for the probe: at thousands of hits a second they
    /// cost more than the records.
    pub wake_bytes: u32,
    /// Offset of `runtime.g.goid` (u64).
    pub g_goid: u64,
    /// Offset of `runtime.g.m` (*m).
    pub g_m: u64,
    /// Offset of `runtime.m.curg` (*g).
    pub m_curg: u64,
    /// Offset of `runtime.g.parentGoid` (u64).
    pub g_parent_goid: u64,
    /// Offset of `runtime.g.gopc` (uintptr): the `go` statement's PC.
    pub g_gopc: u64,
    /// Offset of `runtime.g.startpc` (uintptr).
    pub g_startpc: u64,
    /// Offset of `runtime.g.trackingSeq` (u8): one more each time the g stops running.
    pub g_tracking_seq: u64,
}

/// What a record says happened.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A goroutine entered `runtime.gopark`: it is about to block.
    Park = 1,
    /// `runtime.ready` made a parked goroutine runnable again.
    Wake = 2,
    /// `runtime.newproc1` returned a new goroutine: `goid` created by `other_goid` at the
    /// `go` statement `pc`, starting at `addr`.
    Create = 3,
    /// `runtime.goexit1`: goroutine `goid` is exiting.
    Exit = 4,
    /// `runtime.chansend` on channel `addr` from `pc`; `reason` is 1 for a blocking send.
    ChanSend = 5,
    /// `runtime.chanrecv` on channel `addr` from `pc`; `reason` is 1 for a blocking receive.
    ChanRecv = 6,
    /// `runtime.closechan` of channel `addr` from `pc`.
    ChanClose = 7,
    /// `runtime.selectgo` with `reason` cases (saturated at 255) from `pc`.
    Select = 8,
    /// A targeted probe at `pc` (the probed instruction, a runtime address) was passed by
    /// goroutine `goid`: it moved on past a blocking call, or ran a `go` statement.
    Site = 9,
    /// The target called madvise: `addr` is the length, `reason` the advice's slot (see
    /// [`madvise_slot`]).
    Madvise = 10,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Park),
            2 => Some(Self::Wake),
            3 => Some(Self::Create),
            4 => Some(Self::Exit),
            5 => Some(Self::ChanSend),
            6 => Some(Self::ChanRecv),
            7 => Some(Self::ChanClose),
            8 => Some(Self::Select),
            9 => Some(Self::Site),
            10 => Some(Self::Madvise),
            _ => None,
        }
    }
}

/// One event from the target, sent through the `RECORDS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the probe fired.
    pub ts_ns: u64,
    /// The goroutine the record is about: the one parking, or the one woken.
    pub goid: u64,
    /// Wake: the goroutine that did the waking (0 when it ran on a system stack with no user
    /// goroutine, such as the scheduler or a timer).
    pub other_goid: u64,
    /// Park: gopark's `lock` argument; for a channel operation it is the `hchan`.
    pub addr: u64,
    /// Park: the return address into gopark's caller (a runtime-absolute PC).
    pub pc: u64,
    /// The kernel thread that hit the probe.
    pub tid: u32,
    /// A [`RecordKind`].
    pub kind: u8,
    /// Park: gopark's `reason` argument, a `runtime.waitReason` value of the target's version.
    pub reason: u8,
    /// Park and wake: the goroutine's `g.trackingSeq` while it is parked (for a park, one
    /// more than at gopark's entry: `casgstatus` adds one as it stops running). A wake-up
    /// with its park's value ends that park, not a later one the probes did not see.
    pub seq: u8,
    pub _pad: u8,
}

/// Indexes of the per-CPU `COUNTERS` array: hits per probe, and records that did not fit in
/// the ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    GoparkHits = 0,
    ReadyHits = 1,
    /// Records dropped because the ring buffer was full (userspace fell behind).
    Lost = 2,
    /// Probe hits whose reads of target memory failed (the record was not sent).
    ReadErrors = 3,
    CreateHits = 4,
    ExitHits = 5,
    ChanSendHits = 6,
    ChanRecvHits = 7,
    ChanCloseHits = 8,
    SelectHits = 9,
    SiteHits = 10,
    WakeAnyHits = 11,
    AllocHits = 12,
    /// Bytes requested by the allocations the alloc probe saw.
    AllocBytes = 13,
    /// `runtime.(*mcache).refill` hits: a span of one size class handed to an mcache.
    RefillHits = 14,
    /// `runtime.(*mcache).allocLarge` hits: an allocation above 32 KiB.
    LargeHits = 15,
    /// Sampled allocations whose stack could not be kept (stack map full or unwind failed).
    SampleStackErrors = 16,
}

impl Counter {
    pub const COUNT: u32 = 17;
}

/// Allocations of one goroutine seen by the alloc probe, aggregated in the kernel (`ALLOCS`,
/// keyed by goid): a count is all that is needed, so no record is sent per allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStat {
    pub count: u64,
    pub bytes: u64,
}

/// A stack of sampled allocations: what the fallback sampler (span refills and large
/// allocations) aggregates by, in the kernel, in `SAMPLES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SampleKey {
    /// An id in the `STACKS` stack-trace map (the user stack, by frame pointers), or
    /// [`NO_STACK`].
    pub stack_id: u32,
    /// The span class refilled (size class << 1 | noscan), or [`LARGE_CLASS`] for a large
    /// allocation.
    pub span_class: u32,
    /// A large allocation's size; 0 for a refill.
    pub size: u64,
}

/// [`SampleKey::stack_id`] when the stack was not kept.
pub const NO_STACK: u32 = u32::MAX;
/// [`SampleKey::span_class`] of a large allocation.
pub const LARGE_CLASS: u32 = u32::MAX;
/// Span classes (68 size classes, scan and noscan): the `SPAN_BYTES` array userspace fills
/// with each class's span size, so that the kernel can add up bytes per goroutine.
pub const SPAN_CLASSES: u32 = 2 * 68;
/// Distinct (stack, class, size) keys kept; further ones are counted in
/// `Counter::SampleStackErrors`.
pub const SAMPLE_KEYS: u32 = 1 << 14;
/// Distinct stacks kept.
pub const SAMPLE_STACKS: u32 = 1 << 14;

/// Slots of the per-CPU `MADVISE` array: bytes per advice in the first
/// [`MADVISE_ADVICES`] slots, calls per advice in the next as many.
pub const MADVISE_ADVICES: u32 = 5;
pub const MADVISE_SLOTS: u32 = 2 * MADVISE_ADVICES;

/// The slot of a madvise advice (include/uapi/asm-generic/mman-common.h): MADV_DONTNEED 4
/// (what the Go scavenger uses by default), MADV_FREE 8 (GODEBUG=madvdontneed=0),
/// MADV_HUGEPAGE 14, MADV_NOHUGEPAGE 15, anything else.
pub const fn madvise_slot(advice: u64) -> u32 {
    match advice {
        4 => 0,
        8 => 1,
        14 => 2,
        15 => 3,
        _ => 4,
    }
}

/// Names of the madvise slots, in order.
pub const MADVISE_NAMES: [&str; MADVISE_ADVICES as usize] =
    ["DONTNEED", "FREE", "HUGEPAGE", "NOHUGEPAGE", "other"];

/// Goroutines whose allocations are kept at once; the least recently allocating are
/// forgotten first (an LRU map).
pub const ALLOC_GOROUTINES: u32 = 1 << 16;

/// Default size of the ring buffer, in bytes (a power of two, as the kernel requires).
pub const RING_BYTES: u32 = 1 << 22;

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are plain `repr(C)` integers with explicit padding fields.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Record {}
    unsafe impl aya::Pod for super::AllocStat {}
    unsafe impl aya::Pod for super::SampleKey {}
}
