//! Everything about the traced Go binary and process, learnt without touching the target:
//! its Go version and build settings, function addresses, the runtime's struct layout, and
//! the process's mappings.

pub mod batch;
pub mod binary;
pub mod buildinfo;
pub mod code;
pub mod globals;
pub mod layout;
pub mod pclntab;
pub mod process;
pub mod spawn;

use anyhow::{Context as _, anyhow};

use binary::GoBinary;
use process::Process;

/// What leaktrace learnt about the target before attaching.
pub struct Target {
    pub process: Process,
    pub binary: GoBinary,
    pub layout: layout::RuntimeLayout,
    /// Added to link-time addresses to get the target's runtime addresses (0 unless PIE).
    pub load_bias: u64,
    /// Link-time addresses of the globals `leaktrace dump` reads, or why they could not be
    /// found; tracing needs none of them, so a failure surfaces only through [`Target::globals`].
    pub globals: Result<globals::Globals, globals::GlobalsError>,
}

impl Target {
    /// Identifies PID's binary, Go version and runtime layout, refusing what leaktrace
    /// cannot trace with a message that says why.
    pub fn inspect(pid: u32) -> anyhow::Result<Self> {
        let process = Process::open(pid)?;
        let exe = process.exe_path();
        let binary =
            GoBinary::open(&exe).map_err(|e| anyhow!("PID {pid} ({}): {e}", process.exe_name()))?;
        Self::from_parts(process, binary)
    }

    /// A target from a process and the binary it runs (spawn mode opens the binary before
    /// the process runs it).
    pub fn from_parts(process: Process, binary: GoBinary) -> anyhow::Result<Self> {
        let pid = process.pid();
        let v = binary.version();
        let layout = layout::for_binary(binary.data(), v.major, v.minor)
            .map_err(|e| anyhow!("PID {pid} ({}): {e}", process.exe_name()))?;
        // A non-PIE binary is mapped at its link-time addresses; only a PIE one must be
        // found in the process's maps (which a spawned command that already ended no longer has).
        let load_bias = if binary.is_pie() {
            process.load_bias(first_load_vaddr(binary.data())?)?
        } else {
            0
        };
        let globals = globals::locate(&binary);
        Ok(Self {
            process,
            binary,
            layout,
            load_bias,
            globals,
        })
    }

    /// The located runtime globals (link-time addresses: add `load_bias`), or why they could
    /// not be found.
    pub fn globals(&self) -> anyhow::Result<&globals::Globals> {
        self.globals.as_ref().map_err(|e| {
            anyhow!(
                "PID {} ({}): {e}",
                self.process.pid(),
                self.process.exe_name()
            )
        })
    }

    /// Go's wording for a raw waitReason of this target.
    pub fn reason_name(&self, reason: u8) -> String {
        layout::reason_name(&self.layout.wait_reasons, reason)
    }

    /// The innermost function at a runtime return address, for messages and event logs.
    pub fn function_at_return(&self, pc: u64) -> Option<String> {
        let link = pc.checked_sub(self.load_bias)?.checked_sub(1)?;
        self.binary
            .symbolize(link)
            .last()
            .map(|f| f.function.clone())
    }
}

/// The link-time address of the segment that maps file offset 0: with the address the
/// kernel mapped it at, it gives the load bias.
fn first_load_vaddr(elf: &[u8]) -> anyhow::Result<u64> {
    use object::{Object as _, ObjectSegment as _};
    let file = object::File::parse(elf).context("parsing the target's ELF headers")?;
    file.segments()
        .find(|s| s.file_range().0 == 0)
        .map(|s| s.address())
        .ok_or_else(|| anyhow!("the target binary has no segment mapping its ELF header"))
}

impl Target {
    /// (function, file, line) of the call that returns to `pc` (a runtime return address),
    /// the innermost inlined frame first; "?" when it is in no known function.
    pub fn site_at_return(&self, pc: u64) -> (String, String, u32) {
        pc.checked_sub(self.load_bias)
            .and_then(|l| l.checked_sub(1))
            .and_then(|l| self.binary.symbolize(l).into_iter().next())
            .map(|f| (f.function, f.file, f.line))
            .unwrap_or_else(|| ("?".into(), "?".into(), 0))
    }

    /// A runtime address back to the binary's link-time address.
    pub fn link_addr(&self, runtime_addr: u64) -> u64 {
        runtime_addr.wrapping_sub(self.load_bias)
    }
}
