//! Loading, configuring, attaching and detaching leaktrace's BPF programs.
//!
//! [`Probes`] owns the loaded object. Every link lives inside it, and dropping it (a normal
//! return, an error, Ctrl-C) detaches every probe and unloads every program; if leaktrace is
//! killed outright, the kernel does the same when it closes our descriptors. Nothing is pinned.

use std::{collections::HashMap, num::NonZeroU32, path::Path};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeLinkId, UProbeScope},
    },
};
use leaktrace_common::{Config, Counter};

/// The BPF object built by build.rs from `leaktrace-ebpf`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leaktrace"));

/// A probe leaktrace can place: the BPF program and the Go runtime function it goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// Entry of `runtime.gopark`: a goroutine blocks, with its wait reason.
    Gopark,
    /// Entry of `runtime.ready`: a blocked goroutine is made runnable.
    Ready,
}

impl Probe {
    pub const ALL: [Probe; 2] = [Probe::Gopark, Probe::Ready];

    /// The BPF program's name in leaktrace-ebpf.
    pub fn program(self) -> &'static str {
        match self {
            Probe::Gopark => "gopark",
            Probe::Ready => "ready",
        }
    }

    /// The Go runtime function the probe is placed on.
    pub fn function(self) -> &'static str {
        match self {
            Probe::Gopark => "runtime.gopark",
            Probe::Ready => "runtime.ready",
        }
    }

    pub fn hits_counter(self) -> Counter {
        match self {
            Probe::Gopark => Counter::GoparkHits,
            Probe::Ready => Counter::ReadyHits,
        }
    }
}

/// Counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub gopark_hits: u64,
    pub ready_hits: u64,
    pub lost: u64,
    pub read_errors: u64,
}

/// The loaded BPF object, configured for one target process.
pub struct Probes {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    pid: NonZeroU32,
    links: HashMap<Probe, Vec<UProbeLinkId>>,
}

/// What one uprobe hit costs the target: the trap, the BPF program and the return, about
/// 5 us on this project's 2-vCPU VMs with kernel 6.18 (measured with an allocation loop, see
/// shared/design/TOOLCHAIN-NOTES.md), 0.3-0.9 us on bare metal. The budget uses the VM
/// figure so that it errs on the side of the target.
pub const HIT_COST: std::time::Duration = std::time::Duration::from_micros(5);

impl Probes {
    /// Loads the programs and writes `config` for them. Nothing is attached yet.
    pub fn load(config: Config) -> anyhow::Result<Self> {
        if BPF_OBJECT.is_empty() {
            bail!(
                "this leaktrace was built without its BPF programs (AYA_BUILD_SKIP); rebuild it without that variable"
            );
        }
        let pid =
            NonZeroU32::new(config.tgid).ok_or_else(|| anyhow!("config has no target PID"))?;
        let mut ebpf = EbpfLoader::new()
            .load(BPF_OBJECT)
            .context("loading leaktrace's BPF programs into the kernel")?;
        let mut cfg: Array<_, Config> = ebpf
            .map_mut("CONFIG")
            .ok_or_else(|| anyhow!("BPF object has no CONFIG map"))?
            .try_into()?;
        cfg.set(0, &config, 0)
            .context("writing the probe configuration")?;
        let counters: PerCpuArray<MapData, u64> = ebpf
            .take_map("COUNTERS")
            .ok_or_else(|| anyhow!("BPF object has no COUNTERS map"))?
            .try_into()?;
        for probe in Probe::ALL {
            let program: &mut UProbe = ebpf
                .program_mut(probe.program())
                .ok_or_else(|| anyhow!("BPF object has no program {}", probe.program()))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("the kernel refused the {} program", probe.program()))?;
        }
        Ok(Self {
            ebpf,
            counters,
            pid,
            links: HashMap::new(),
        })
    }

    /// Places `probe` at `file_offset` of `binary` (the runtime function's entry), firing
    /// only for the target process.
    pub fn attach(&mut self, probe: Probe, binary: &Path, file_offset: u64) -> anyhow::Result<()> {
        let program: &mut UProbe = self
            .ebpf
            .program_mut(probe.program())
            .ok_or_else(|| anyhow!("BPF object has no program {}", probe.program()))?
            .try_into()?;
        let link = program
            .attach([file_offset], binary, UProbeScope::OneProcess(self.pid))
            .with_context(|| {
                format!(
                    "attaching a uprobe to {} at offset {file_offset:#x} of {}",
                    probe.function(),
                    binary.display()
                )
            })?;
        self.links.entry(probe).or_default().push(link);
        Ok(())
    }

    /// Removes `probe` from the target; the maps and the other probes stay.
    pub fn detach(&mut self, probe: Probe) -> anyhow::Result<()> {
        let Some(links) = self.links.remove(&probe) else {
            return Ok(());
        };
        let program: &mut UProbe = self
            .ebpf
            .program_mut(probe.program())
            .ok_or_else(|| anyhow!("BPF object has no program {}", probe.program()))?
            .try_into()?;
        for link in links {
            program.detach(link)?;
        }
        Ok(())
    }

    pub fn attached(&self) -> Vec<Probe> {
        Probe::ALL
            .into_iter()
            .filter(|p| self.links.contains_key(p))
            .collect()
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
        Ok(Counts {
            gopark_hits: sum(Counter::GoparkHits)?,
            ready_hits: sum(Counter::ReadyHits)?,
            lost: sum(Counter::Lost)?,
            read_errors: sum(Counter::ReadErrors)?,
        })
    }
}
