//! Loading, configuring, attaching and detaching leaktrace's BPF programs.
//!
//! [`Probes`] owns the loaded object. Every link lives inside it, and dropping it (a normal
//! return, an error, Ctrl-C) detaches every probe and unloads every program; if leaktrace is
//! killed outright, the kernel does the same when it closes our descriptors. Nothing is pinned.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        TracePoint, UProbe,
        uprobe::{UProbeLinkId, UProbeScope},
    },
};
use leaktrace_common::{AllocStat, Config, Counter, MADVISE_ADVICES, SPAN_CLASSES, SampleKey};

use crate::tracee::{binary::GoBinary, code};
use calibrate::HitCost;

pub mod calibrate;

/// The BPF object built by build.rs from `leaktrace-ebpf`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));

/// The smallest ring buffer the kernel takes: one page.
pub const RING_BYTES_MIN: u32 = 4096;

/// A probe leaktrace can place: the BPF program and the Go runtime function it goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    /// Entry of `runtime.gopark`: a goroutine blocks, with its wait reason.
    Gopark,
    /// Entry of `runtime.ready`: a blocked goroutine is made runnable.
    Ready,
    /// Each RET of `runtime.newproc1`: a goroutine is created, by whom and where.
    Create,
    /// Entry of `runtime.goexit1`: a goroutine exits.
    Exit,
    /// Entry of `runtime.chansend`: every send, blocking or not (costly on busy channels).
    ChanSend,
    /// Entry of `runtime.chanrecv`: every receive.
    ChanRecv,
    /// Entry of `runtime.closechan`.
    ChanClose,
    /// Entry of `runtime.selectgo`: every blocking-capable select.
    Select,
    /// Entry of `runtime.casgstatus`, filtered to waiting -> runnable: every wake-up,
    /// including netpoll and injected ones that bypass `ready`. Hot: every state change of
    /// every goroutine passes through it.
    WakeAny,
    /// Every allocation: `runtime.mallocgc`, and in Go 1.27 (size-specialized malloc) the
    /// functions compiled code calls directly instead. Counted per goroutine in the kernel.
    /// The hottest probe of all (a small allocation takes ~30 ns; a hit ~5 us).
    Alloc,
    /// Entry of `runtime.(*mcache).refill`: a goroutine used up a span of one size class
    /// (8 KiB or more of small objects). With [`Probe::Large`], the fallback allocation
    /// sampler for programs that disabled the runtime's memory profiling: user stack and
    /// bytes per goroutine, aggregated in the kernel.
    Refill,
    /// Entry of `runtime.(*mcache).allocLarge`: an allocation above 32 KiB.
    Large,
    /// Targeted probes, placed while tracing at the sites of suspected leak groups: the
    /// instruction after the blocking call (fires only when a goroutine there moves on) and
    /// the instruction after the `go` statement (counts creations there).
    Site,
}

impl Probe {
    pub const ALL: [Probe; 13] = [
        Probe::Gopark,
        Probe::Ready,
        Probe::Create,
        Probe::Exit,
        Probe::ChanSend,
        Probe::ChanRecv,
        Probe::ChanClose,
        Probe::Select,
        Probe::WakeAny,
        Probe::Alloc,
        Probe::Refill,
        Probe::Large,
        Probe::Site,
    ];

    /// The order in which probes are shed when over budget: the channel probes fire on
    /// every operation and only sharpen evidence, park/wake next; creation and exit, which
    /// fire once per goroutine, go last.
    /// The channel-operation probes: the detector trusts their silence only when all three
    /// ran.
    pub const CHANNEL_OPS: [Probe; 3] = [Probe::ChanSend, Probe::ChanRecv, Probe::ChanClose];

    pub const SHED_ORDER: [Probe; 13] = [
        Probe::Alloc,
        Probe::WakeAny,
        Probe::Select,
        Probe::ChanRecv,
        Probe::ChanSend,
        Probe::ChanClose,
        Probe::Refill,
        Probe::Large,
        Probe::Ready,
        Probe::Gopark,
        Probe::Exit,
        Probe::Create,
        Probe::Site,
    ];

    /// The probe whose records this one's complete: a park is ended by a wake-up and a
    /// creation by an exit. One of a pair alone would leave the model holding goroutines it
    /// never hears of again, so the budget sheds both.
    pub fn partner(self) -> Option<Probe> {
        match self {
            Probe::Gopark => Some(Probe::Ready),
            Probe::Ready => Some(Probe::Gopark),
            Probe::Create => Some(Probe::Exit),
            Probe::Exit => Some(Probe::Create),
            _ => None,
        }
    }

    /// Whether the probe can run in windows when it does not fit the budget: every probe
    /// whose counts scale with the time it is in place (the fallback allocation sampler's
    /// kernel-side stacks and per-goroutine figures too: they are scaled when read). Not
    /// the targeted sites, whose point is to see the one goroutine that moves on.
    pub fn windowable(self) -> bool {
        self != Probe::Site
    }

    /// The name used by `--probes`.
    pub fn name(self) -> &'static str {
        match self {
            Probe::Gopark => "park",
            Probe::Ready => "wake",
            Probe::Create => "create",
            Probe::Exit => "exit",
            Probe::ChanSend => "send",
            Probe::ChanRecv => "recv",
            Probe::ChanClose => "close",
            Probe::Select => "select",
            Probe::WakeAny => "wake-any",
            Probe::Alloc => "alloc",
            Probe::Refill => "refill",
            Probe::Large => "large",
            Probe::Site => "sites",
        }
    }

    pub fn from_name(name: &str) -> Option<Probe> {
        Probe::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The BPF program's name in leaktrace-ebpf: the per-point uprobe, or its multi-uprobe
    /// twin (`multi`).
    pub fn program(self, multi: bool) -> &'static str {
        let (single, twin) = match self {
            Probe::Gopark => ("gopark", "gopark_multi"),
            Probe::Ready => ("ready", "ready_multi"),
            Probe::Create => ("newproc1_ret", "newproc1_ret_multi"),
            Probe::Exit => ("goexit1", "goexit1_multi"),
            Probe::ChanSend => ("chansend", "chansend_multi"),
            Probe::ChanRecv => ("chanrecv", "chanrecv_multi"),
            Probe::ChanClose => ("closechan", "closechan_multi"),
            Probe::Select => ("selectgo", "selectgo_multi"),
            Probe::WakeAny => ("casgstatus", "casgstatus_multi"),
            Probe::Alloc => ("malloc", "malloc_multi"),
            Probe::Refill => ("refill", "refill_multi"),
            Probe::Large => ("alloc_large", "alloc_large_multi"),
            Probe::Site => ("site", "site_multi"),
        };
        if multi { twin } else { single }
    }

    /// The Go runtime function the probe is placed on.
    pub fn function(self) -> &'static str {
        match self {
            Probe::Gopark => "runtime.gopark",
            Probe::Ready => "runtime.ready",
            Probe::Create => "runtime.newproc1",
            Probe::Exit => "runtime.goexit1",
            Probe::ChanSend => "runtime.chansend",
            Probe::ChanRecv => "runtime.chanrecv",
            Probe::ChanClose => "runtime.closechan",
            Probe::Select => "runtime.selectgo",
            Probe::WakeAny => "runtime.casgstatus",
            Probe::Alloc => "runtime.mallocgc",
            Probe::Refill => "runtime.(*mcache).refill",
            Probe::Large => "runtime.(*mcache).allocLarge",
            Probe::Site => "(sites of suspected leaks)",
        }
    }

    pub fn hits_counter(self) -> Counter {
        match self {
            Probe::Gopark => Counter::GoparkHits,
            Probe::Ready => Counter::ReadyHits,
            Probe::Create => Counter::CreateHits,
            Probe::Exit => Counter::ExitHits,
            Probe::ChanSend => Counter::ChanSendHits,
            Probe::ChanRecv => Counter::ChanRecvHits,
            Probe::ChanClose => Counter::ChanCloseHits,
            Probe::Select => Counter::SelectHits,
            Probe::WakeAny => Counter::WakeAnyHits,
            Probe::Alloc => Counter::AllocHits,
            Probe::Refill => Counter::RefillHits,
            Probe::Large => Counter::LargeHits,
            Probe::Site => Counter::SiteHits,
        }
    }

    /// Link-time addresses to place the probe at in `binary`: the function's entry, or
    /// each of its RET instructions for [`Probe::Create`].
    pub fn addresses(self, binary: &GoBinary) -> anyhow::Result<Vec<u64>> {
        let missing = || {
            anyhow!(
                "no function {} in {}; is it a Go program built with a supported toolchain?",
                self.function(),
                binary.path()
            )
        };
        if self == Probe::Site {
            return Ok(Vec::new()); // placed while tracing, at the suspects' sites
        }
        if self == Probe::Alloc {
            return alloc_entries(binary);
        }
        if self == Probe::Create {
            let rets = code::return_probe_addresses(binary, self.function()).ok_or_else(missing)?;
            if rets.is_empty() {
                bail!(
                    "found no RET instruction in {} of {}",
                    self.function(),
                    binary.path()
                );
            }
            return Ok(rets);
        }
        let entry = binary.function(self.function()).ok_or_else(missing)?.addr;
        Ok(vec![code::entry_probe_address(binary, entry)])
    }
}

/// The entries through which every heap allocation passes exactly once (GO-RUNTIME.md §3):
/// `runtime.mallocgc` up to Go 1.26 (from 1.24 it dispatches to split functions, but stays a
/// complete choke point). With size-specialized malloc (on by default in 1.27, an experiment
/// in 1.26) compiled code calls `mallocgcTinySC*`, `mallocgcSmallNoScanSC*` and
/// `mallocgcSmallScanNoHeaderSC*` directly, so the leaves are probed instead: every
/// `runtime.mallocgc*` function except mallocgc itself (which only dispatches) and the slow
/// paths (reached only from the leaves).
fn alloc_entries(binary: &GoBinary) -> anyhow::Result<Vec<u64>> {
    let specialized = binary.version().minor >= 27
        && !binary
            .build()
            .version_string
            .contains("nosizespecializedmalloc")
        || binary
            .build()
            .version_string
            .contains("X:sizespecializedmalloc");
    if !specialized {
        let f = binary
            .function("runtime.mallocgc")
            .ok_or_else(|| anyhow!("no runtime.mallocgc in {}", binary.path()))?;
        return Ok(vec![code::entry_probe_address(binary, f.addr)]);
    }
    let mut addrs: Vec<u64> = binary
        .pclntab()
        .functions()
        .filter(|f| {
            f.name.starts_with("runtime.mallocgc")
                && f.name != "runtime.mallocgc"
                && !f.name.contains("SlowPath")
        })
        .map(|f| code::entry_probe_address(binary, f.entry))
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        bail!("no runtime.mallocgc* leaf functions in {}", binary.path());
    }
    Ok(addrs)
}

/// What the fallback allocation sampler (refill and large probes) aggregated.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// (key, user stack as return addresses innermost first, count and bytes).
    pub stacks: Vec<(SampleKey, Vec<u64>, AllocStat)>,
    pub by_goroutine: HashMap<u64, AllocStat>,
    /// The duty cycle of the windows the sampler ran in, when it did: the counts and bytes
    /// are then scaled by it ([`Samples::scale`]).
    pub duty: Option<f64>,
}

impl Samples {
    /// Scales every count and byte figure by the windows' `duty` cycle: what the sampler
    /// would have seen had it been in place all the time.
    pub fn scale(&mut self, duty: f64) {
        let s = |n: u64| (n as f64 / duty.max(1e-6)).round() as u64;
        let stats = self.stacks.iter_mut().map(|(_, _, a)| a);
        for a in stats.chain(self.by_goroutine.values_mut()) {
            (a.count, a.bytes) = (s(a.count), s(a.bytes));
        }
        self.duty = Some(duty);
    }
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub hits: HashMap<Probe, u64>,
    pub lost: u64,
    pub read_errors: u64,
    pub alloc_bytes: u64,
}

impl Counts {
    pub fn hits(&self, p: Probe) -> u64 {
        self.hits.get(&p).copied().unwrap_or(0)
    }
}

/// When none of `breakpoints` (addresses in the target) holds an int3 any more, read every
/// half millisecond while `drops` run; None if they cannot be read or the drops end first.
fn breakpoints_gone<T>(
    mem: &std::fs::File,
    breakpoints: &[u64],
    drops: &[std::thread::ScopedJoinHandle<'_, T>],
) -> Option<Instant> {
    use std::os::unix::fs::FileExt;
    loop {
        let mut trapped = false;
        for &addr in breakpoints {
            let mut b = [0u8; 1];
            mem.read_exact_at(&mut b, addr).ok()?;
            trapped |= b[0] == 0xcc;
        }
        if !trapped {
            return Some(Instant::now());
        }
        if drops.iter().all(|d| d.is_finished()) {
            return None;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// A removal done on a thread ([`Probes::detach_later`]).
#[derive(Clone, Copy, Debug)]
pub struct Detached {
    /// The CPU time the removal took.
    pub cpu: Duration,
    /// When the last of the probes began to be removed: on a busy machine the thread may
    /// wait for a CPU, and the breakpoints stay in place, hit, until then.
    pub began: Instant,
    /// When the breakpoints were seen gone from the target's code (read back every half
    /// millisecond), or, if they could not be read, when the last removal returned. Per-point
    /// uprobe links kept the int3 through a grace period of 100-580 ms after the BPF program
    /// was detached, the target trapping on every hit unrecorded; multi-uprobe links take it
    /// out first, then wait.
    pub ended: Instant,
}

/// What a hit of each probe costs the target: the measured cost of a hit on an instruction
/// the kernel emulates for the probes placed only on such (the entry probes, on a Go
/// function's frame push; the create probe, on the jumps before `newproc1`'s returns), of a
/// hit on a single-stepped instruction for the others.
#[derive(Clone, Debug)]
pub struct HitCosts {
    pub measured: HitCost,
    /// The probes placed only on instructions the kernel emulates.
    emulated: HashSet<Probe>,
    /// What each probe's own program ran per hit in the target, where the kernel's BPF
    /// statistics measured it ([`crate::trace`]'s pricing).
    programs: HashMap<Probe, Duration>,
}

impl HitCosts {
    /// Each probe's cost where [`Probe::addresses`] places it in `binary`.
    pub fn for_binary(measured: HitCost, binary: &GoBinary) -> Self {
        let emulated = Probe::ALL
            .into_iter()
            .filter(|p| {
                p.addresses(binary).is_ok_and(|addrs| {
                    !addrs.is_empty() && addrs.iter().all(|a| code::emulated_at(binary, *a))
                })
            })
            .collect();
        Self {
            measured,
            emulated,
            programs: HashMap::new(),
        }
    }

    /// The same cost for every probe.
    pub fn uniform(d: Duration) -> Self {
        Self {
            measured: HitCost::uniform(d),
            emulated: HashSet::new(),
            programs: HashMap::new(),
        }
    }

    /// What one hit of `probe` costs (a site probe's, [`HitCosts::at`]): the trap, and its
    /// program where that was measured (the calibration's figures include the `site`
    /// program's run, [`HitCost::program`]).
    pub fn of(&self, probe: Probe) -> Duration {
        let trap = match self.emulated.contains(&probe) {
            true => self.measured.emulated,
            false => self.measured.stepped,
        };
        match self.programs.get(&probe) {
            Some(ran) => trap.saturating_sub(self.measured.program) + *ran,
            None => trap,
        }
    }

    /// Prices `probe`'s hits with what its program was measured to run per hit.
    pub fn set_program(&mut self, probe: Probe, ran: Duration) {
        self.programs.insert(probe, ran);
    }

    /// What `probe`'s program was measured to run per hit, if it was.
    pub fn program(&self, probe: Probe) -> Option<Duration> {
        self.programs.get(&probe).copied()
    }

    /// What one hit of a probe at `addr` (a link-time address of `binary`) costs.
    pub fn at(&self, binary: &GoBinary, addr: u64) -> Duration {
        if code::emulated_at(binary, addr) {
            self.measured.emulated
        } else {
            self.measured.stepped
        }
    }

    /// The CPU (a fraction of one) that `probes` firing at `rates` a second cost.
    pub fn cpu(&self, rates: &HashMap<Probe, f64>, probes: &[Probe]) -> f64 {
        probes
            .iter()
            .map(|p| rates.get(p).copied().unwrap_or(0.0) * self.of(*p).as_secs_f64())
            .sum()
    }
}

/// The loaded BPF object, configured for one target process.
pub struct Probes {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    madvise: PerCpuArray<MapData, u64>,
    /// Why the madvise tracepoint is not attached, if it is not.
    pub madvise_error: Option<String>,
    pid: NonZeroU32,
    links: HashMap<Probe, Vec<UProbeLinkId>>,
    /// Whether the multi-uprobe twin of each program is the one loaded (the kernel has
    /// multi-uprobe links with a process-wide PID filter: Linux 6.6+).
    multi: bool,
}

/// Records wake the collector once this fraction of the ring buffer waits in it; until then
/// the collector drains the ring on its own timer (`trace::follow`'s DRAIN_PERIOD), so that a
/// probe firing thousands of times a second wakes it a few dozen times, not at every hit.
pub const WAKE_AT_FRACTION: u32 = 4;

impl Probes {
    /// Loads the programs, with a ring buffer of `ring_bytes` for their records, and writes
    /// `config` for them. Nothing is attached yet.
    pub fn load(config: Config, ring_bytes: u32) -> anyhow::Result<Self> {
        if BPF_OBJECT.is_empty() {
            bail!(
                "this leaktrace was built without its BPF programs (AYA_BUILD_SKIP); rebuild it without that variable"
            );
        }
        let pid =
            NonZeroU32::new(config.tgid).ok_or_else(|| anyhow!("config has no target PID"))?;
        if !(ring_bytes.is_power_of_two() && ring_bytes >= RING_BYTES_MIN) {
            bail!(
                "a ring buffer of {ring_bytes} bytes: it must be a power of two of at least {RING_BYTES_MIN}"
            );
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("RECORDS", ring_bytes)
            .load(BPF_OBJECT)
            .context("loading leaktrace's BPF programs into the kernel")?;
        let mut cfg: Array<_, Config> = ebpf
            .map_mut("CONFIG")
            .ok_or_else(|| anyhow!("BPF object has no CONFIG map"))?
            .try_into()?;
        let config = Config {
            wake_bytes: ring_bytes / WAKE_AT_FRACTION,
            ..config
        };
        cfg.set(0, &config, 0)
            .context("writing the probe configuration")?;
        let counters: PerCpuArray<MapData, u64> = ebpf
            .take_map("COUNTERS")
            .ok_or_else(|| anyhow!("BPF object has no COUNTERS map"))?
            .try_into()?;
        let madvise: PerCpuArray<MapData, u64> = ebpf
            .take_map("MADVISE")
            .ok_or_else(|| anyhow!("BPF object has no MADVISE map"))?
            .try_into()?;
        // The target's madvise calls, from the syscall tracepoint: they are rare (the
        // scavenger returning pages), so it is always on. Without tracefs it is not fatal.
        let madvise_error = (|| -> anyhow::Result<()> {
            let tp: &mut TracePoint = ebpf
                .program_mut("madvise")
                .ok_or_else(|| anyhow!("BPF object has no madvise program"))?
                .try_into()?;
            tp.load()?;
            tp.attach("syscalls", "sys_enter_madvise")?;
            Ok(())
        })()
        .err()
        .map(|e| format!("{e:#} (is tracefs mounted on /sys/kernel/tracing?)"));
        // LEAKTRACE_PER_POINT_UPROBES=1 takes the per-point programs on any kernel, as one
        // without multi-uprobe links would (for tests, and a way out should they misbehave).
        let multi = std::env::var_os("LEAKTRACE_PER_POINT_UPROBES").is_none_or(|v| v == "0")
            && aya::sys::is_uprobe_multi_supported(
                aya::sys::UProbeMultiFeature::ProcessScopedPidFilter,
            )
            .unwrap_or(false);
        for probe in Probe::ALL {
            let name = probe.program(multi);
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("BPF object has no program {name}"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("the kernel refused the {name} program"))?;
        }
        Ok(Self {
            ebpf,
            counters,
            madvise,
            madvise_error,
            pid,
            links: HashMap::new(),
            multi,
        })
    }

    /// Places `probe` at each of `file_offsets` of `binary`, firing only for the target.
    pub fn attach(
        &mut self,
        probe: Probe,
        binary: &Path,
        file_offsets: &[u64],
    ) -> anyhow::Result<()> {
        let name = probe.program(self.multi);
        let program: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("BPF object has no program {name}"))?
            .try_into()?;
        let link = program
            .attach(
                file_offsets.iter().copied(),
                binary,
                UProbeScope::OneProcess(self.pid),
            )
            .with_context(|| {
                format!(
                    "attaching a uprobe to {} at offsets {file_offsets:#x?} of {}",
                    probe.function(),
                    binary.display()
                )
            })?;
        self.links.entry(probe).or_default().push(link);
        Ok(())
    }

    /// Removes `probes` from the target; the maps and the other probes stay.
    ///
    /// Each uprobe's removal ends with the kernel waiting for a grace period (about 100 ms
    /// on a loaded 2-vCPU VM). Removed one after the other, the probes still in place would
    /// go on costing the target the whole time (measured: 1.15 s for four on a busy
    /// service), so every link is taken first and all are dropped at once, on threads: the
    /// breakpoints go together and the waits overlap.
    pub fn detach(&mut self, probes: &[Probe]) -> anyhow::Result<()> {
        let links = self.take_links(probes)?;
        std::thread::scope(|s| {
            for link in links {
                s.spawn(move || drop(link));
            }
        });
        Ok(())
    }

    /// Takes the links of `probes` out of their programs (dropping a link removes its
    /// breakpoint).
    fn take_links(
        &mut self,
        probes: &[Probe],
    ) -> anyhow::Result<Vec<aya::programs::uprobe::UProbeLink>> {
        let mut links = Vec::new();
        for probe in probes {
            let Some(ids) = self.links.remove(probe) else {
                continue;
            };
            let name = probe.program(self.multi);
            let program: &mut UProbe = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("BPF object has no program {name}"))?
                .try_into()?;
            for id in ids {
                links.push(program.take_link(id)?);
            }
        }
        Ok(links)
    }

    /// Removes `probes` like [`Probes::detach`], without waiting for the kernel's grace
    /// period: the links are dropped on a thread, which says when the removal began and
    /// the CPU time it took (the breakpoints go at the start of it, the wait that follows
    /// costs no CPU). Used to close a probe window every second without holding up the
    /// trace.
    pub fn detach_later(
        &mut self,
        probes: &[Probe],
        breakpoints: Vec<u64>,
    ) -> anyhow::Result<std::thread::JoinHandle<Detached>> {
        let links = self.take_links(probes)?;
        Ok(self.drop_later(links, breakpoints))
    }

    /// Removes the link `probe` was attached with last (one targeted site after its trial)
    /// like [`Probes::detach_later`]; the others stay.
    pub fn detach_last_later(
        &mut self,
        probe: Probe,
        breakpoints: Vec<u64>,
    ) -> anyhow::Result<std::thread::JoinHandle<Detached>> {
        let Some(id) = self.links.get_mut(&probe).and_then(Vec::pop) else {
            bail!("no {} probe to remove", probe.name());
        };
        if self.links.get(&probe).is_some_and(Vec::is_empty) {
            self.links.remove(&probe);
        }
        let name = probe.program(self.multi);
        let program: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("BPF object has no program {name}"))?
            .try_into()?;
        let link = program.take_link(id)?;
        Ok(self.drop_later(vec![link], breakpoints))
    }

    /// Drops `links` on a thread, timing the removal and watching `breakpoints` go.
    fn drop_later(
        &self,
        links: Vec<aya::programs::uprobe::UProbeLink>,
        breakpoints: Vec<u64>,
    ) -> std::thread::JoinHandle<Detached> {
        let mem = std::fs::File::open(format!("/proc/{}/mem", self.pid)).ok();
        std::thread::spawn(move || {
            std::thread::scope(|s| {
                let drops: Vec<_> = links
                    .into_iter()
                    .map(|link| {
                        s.spawn(move || {
                            let began = Instant::now();
                            let cpu0 = thread_cpu_time();
                            drop(link);
                            Detached {
                                cpu: thread_cpu_time().saturating_sub(cpu0),
                                began,
                                ended: Instant::now(),
                            }
                        })
                    })
                    .collect();
                let started = Instant::now();
                let gone = mem.and_then(|m| breakpoints_gone(&m, &breakpoints, &drops));
                drops
                    .into_iter()
                    .filter_map(|d| d.join().ok())
                    .reduce(|all, d| Detached {
                        cpu: all.cpu + d.cpu,
                        began: all.began.max(d.began),
                        ended: all.ended.max(d.ended),
                    })
                    .map(|d| Detached {
                        ended: gone.unwrap_or(d.ended),
                        ..d
                    })
                    .unwrap_or(Detached {
                        cpu: Duration::ZERO,
                        began: started,
                        ended: started,
                    })
            })
        })
    }

    /// Whether any uprobe is in place (continuous, in a window, or at a site): the ones that
    /// fill the ring buffer fast.
    pub fn any_attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// How many times `probe`'s program has run and for how long in all, as far as the
    /// kernel's BPF statistics counted (only while they are on).
    pub fn program_runs(&self, probe: Probe) -> anyhow::Result<(u64, Duration)> {
        let name = probe.program(self.multi);
        let info = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("BPF object has no program {name}"))?
            .info()?;
        Ok((info.run_count(), info.run_time()))
    }

    pub fn attached(&self) -> Vec<Probe> {
        Probe::ALL
            .into_iter()
            .filter(|p| self.links.contains_key(p))
            .collect()
    }

    /// Bytes and calls of the target's madvise per advice (see `MADVISE_NAMES`).
    pub fn madvise(&self) -> anyhow::Result<[(u64, u64); MADVISE_ADVICES as usize]> {
        let mut out = [(0, 0); MADVISE_ADVICES as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let i = i as u32;
            slot.0 = self.madvise.get(&i, 0)?.iter().sum();
            slot.1 = self.madvise.get(&(i + MADVISE_ADVICES), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Allocations per goroutine seen by the alloc probe (goid -> count and bytes).
    pub fn allocations(&self) -> anyhow::Result<HashMap<u64, AllocStat>> {
        let map = self
            .ebpf
            .map("ALLOCS")
            .ok_or_else(|| anyhow!("BPF object has no ALLOCS map"))?;
        let allocs: aya::maps::HashMap<_, u64, AllocStat> = aya::maps::HashMap::try_from(map)?;
        Ok(allocs.iter().filter_map(Result::ok).collect())
    }

    /// Writes the bytes of one span of each span class (index = span class), for the
    /// fallback sampler's per-goroutine byte counts.
    pub fn set_span_bytes(&mut self, bytes: &[u64]) -> anyhow::Result<()> {
        let mut map: Array<_, u64> = self
            .ebpf
            .map_mut("SPAN_BYTES")
            .ok_or_else(|| anyhow!("BPF object has no SPAN_BYTES map"))?
            .try_into()?;
        for (i, b) in bytes.iter().take(SPAN_CLASSES as usize).enumerate() {
            map.set(i as u32, b, 0)?;
        }
        Ok(())
    }

    /// The fallback sampler's allocations: per (stack, span class, size) with the stack's
    /// return addresses (innermost first, runtime addresses), and per goroutine.
    pub fn samples(&self) -> anyhow::Result<Samples> {
        let map = |n: &str| {
            self.ebpf
                .map(n)
                .ok_or_else(|| anyhow!("BPF object has no {n} map"))
        };
        let keys: aya::maps::HashMap<_, SampleKey, AllocStat> =
            aya::maps::HashMap::try_from(map("SAMPLES")?)?;
        let stacks = aya::maps::StackTraceMap::try_from(map("STACKS")?)?;
        let by_goroutine: aya::maps::HashMap<_, u64, AllocStat> =
            aya::maps::HashMap::try_from(map("SAMPLED")?)?;
        let mut out = Samples::default();
        for (k, v) in keys.iter().filter_map(Result::ok) {
            let stack = stacks
                .get(&k.stack_id, 0)
                .map(|s| s.frames().iter().map(|f| f.ip).collect())
                .unwrap_or_default();
            out.stacks.push((k, stack, v));
        }
        out.by_goroutine = by_goroutine.iter().filter_map(Result::ok).collect();
        Ok(out)
    }

    /// The ring buffer the programs send records through. Can be taken once.
    pub fn take_records(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        Ok(self
            .ebpf
            .take_map("RECORDS")
            .ok_or_else(|| anyhow!("BPF object has no RECORDS map (already taken?)"))?
            .try_into()?)
    }

    pub fn counts(&self) -> anyhow::Result<Counts> {
        let sum = |c: Counter| -> anyhow::Result<u64> {
            Ok(self.counters.get(&(c as u32), 0)?.iter().sum())
        };
        let mut hits = HashMap::new();
        for p in Probe::ALL {
            hits.insert(p, sum(p.hits_counter())?);
        }
        Ok(Counts {
            hits,
            lost: sum(Counter::Lost)?,
            read_errors: sum(Counter::ReadErrors)?,
            alloc_bytes: sum(Counter::AllocBytes)?,
        })
    }
}

/// The CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Which probes to drop so that the estimated cost of the rest fits `budget` (a fraction of
/// one CPU), given each probe's hits per second and what one hit costs ([`calibrate`]): in
/// [`Probe::SHED_ORDER`], as few as needed, and a probe's [`Probe::partner`] with it. A probe
/// that did not fire (with its partner) is never shed: removing it would save nothing.
pub fn over_budget(
    rates: &HashMap<Probe, f64>,
    attached: &[Probe],
    budget: f64,
    costs: &HitCosts,
) -> Vec<Probe> {
    let cost = |p: &Probe| costs.cpu(rates, std::slice::from_ref(p));
    let mut total: f64 = attached.iter().map(cost).sum();
    let mut shed = Vec::new();
    for p in Probe::SHED_ORDER {
        if total <= budget {
            break;
        }
        let pair: Vec<Probe> = std::iter::once(p)
            .chain(p.partner())
            .filter(|q| attached.contains(q) && !shed.contains(q))
            .collect();
        if pair.iter().map(cost).sum::<f64>() <= 0.0 {
            continue;
        }
        for q in pair {
            total -= cost(&q);
            shed.push(q);
        }
    }
    shed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_probes_go_first_and_only_as_many_as_needed() {
        let rates = HashMap::from([
            (Probe::ChanSend, 1000.0),
            (Probe::Gopark, 1500.0),
            (Probe::Ready, 1500.0),
            (Probe::Create, 10.0),
        ]);
        let attached = [Probe::Gopark, Probe::Ready, Probe::Create, Probe::ChanSend];
        let hit = &HitCosts::uniform(Duration::from_micros(5));
        // 4010 hits/s x 5 us = 2.0%; without the sends 1.5%; without wake, and so park,
        // 0.05%.
        assert_eq!(
            over_budget(&rates, &attached, 0.01, hit),
            vec![Probe::ChanSend, Probe::Ready, Probe::Gopark]
        );
        // A hot targeted site goes alone: creation and exit, which did not fire, stay.
        let site = HashMap::from([(Probe::Site, 90_000.0)]);
        assert_eq!(
            over_budget(&site, &[Probe::Create, Probe::Exit, Probe::Site], 0.01, hit),
            vec![Probe::Site]
        );
        // Exit goes with creation.
        let churn = HashMap::from([(Probe::Create, 3000.0), (Probe::Exit, 3000.0)]);
        assert_eq!(
            over_budget(&churn, &[Probe::Create, Probe::Exit], 0.02, hit),
            vec![Probe::Exit, Probe::Create]
        );
        assert_eq!(
            over_budget(&rates, &attached, 0.05, hit),
            Vec::<Probe>::new()
        );
        // On a machine where a hit costs 1 us, all of them fit in 1%.
        assert_eq!(
            over_budget(
                &rates,
                &attached,
                0.01,
                &HitCosts::uniform(Duration::from_micros(1))
            ),
            Vec::<Probe>::new()
        );
        // Where park and wake trap on a push (1 us) and the rest are single-stepped (5 us),
        // 1000 x 5 us + 3000 x 1 us + 10 x 5 us = 0.8%: within 1%, and over 0.6% by the
        // sends alone (at 5 us a hit for all, park and wake would go too).
        let mixed = HitCosts {
            measured: HitCost {
                emulated: Duration::from_micros(1),
                stepped: Duration::from_micros(5),
                program: Duration::from_nanos(300),
            },
            emulated: HashSet::from([Probe::Gopark, Probe::Ready]),
            programs: HashMap::new(),
        };
        assert_eq!(
            over_budget(&rates, &attached, 0.01, &mixed),
            Vec::<Probe>::new()
        );
        assert_eq!(
            over_budget(&rates, &attached, 0.006, &mixed),
            vec![Probe::ChanSend]
        );
        assert_eq!(Probe::from_name("recv"), Some(Probe::ChanRecv));
    }

    /// A probe whose program was measured is priced at the trap less the calibration
    /// program's run, plus its own; the others at the calibration's figures.
    #[test]
    fn a_measured_program_prices_its_probes_hits() {
        let mut costs = HitCosts {
            measured: HitCost {
                emulated: Duration::from_nanos(1000),
                stepped: Duration::from_micros(10),
                program: Duration::from_nanos(300),
            },
            emulated: HashSet::from([Probe::Refill, Probe::Gopark]),
            programs: HashMap::new(),
        };
        assert_eq!(costs.of(Probe::Refill), Duration::from_nanos(1000));
        costs.set_program(Probe::Refill, Duration::from_nanos(1400));
        costs.set_program(Probe::Create, Duration::from_nanos(200));
        assert_eq!(costs.of(Probe::Refill), Duration::from_nanos(2100));
        assert_eq!(costs.of(Probe::Create), Duration::from_nanos(9900));
        assert_eq!(costs.of(Probe::Gopark), Duration::from_nanos(1000));
        assert_eq!(
            costs.program(Probe::Refill),
            Some(Duration::from_nanos(1400))
        );
        assert_eq!(costs.program(Probe::Gopark), None);
    }
}
