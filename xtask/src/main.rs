//! Project chores that are not part of the leaktrace binary: `cargo xtask <command>`.
//! Each command is a variant of [`Command`] and lives in its own module.
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod dist;
mod fuzz;
mod go;
mod layouts;
mod schema;
mod test;

#[derive(Parser)]
#[command(name = "xtask", about = "leaktrace's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure what leaktrace costs Go programs (an HTTP service, a channel pipeline, an
    /// allocation loop: untraced, default, exact allocation tracing, side by side), its
    /// collector's throughput and its memory at scale; write BENCHMARKS.md.
    Bench {
        /// Seconds of each measured window.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Repetitions of each workload, the modes alternating within each.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// A line to add to BENCHMARKS.md about the machine (e.g. that it was shared).
        #[arg(long)]
        note: Option<String>,
    },
    /// Measure `leaktrace agent` over many busy Go processes: their throughput watched and
    /// not, and the agent's CPU against its budget; writes its section of BENCHMARKS.md.
    BenchAgent {
        /// Busy copies of the channel pipeline to run at once.
        #[arg(long, default_value_t = 20)]
        processes: usize,
        /// Seconds per measured window.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Repetitions, watched and unwatched alternating.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// A line to add to BENCHMARKS.md about the machine (e.g. that it was shared).
        #[arg(long)]
        note: Option<String>,
    },
    /// Build everything, start the bundled leaky Go service, load it, and trace it.
    Demo {
        /// How long to trace the service.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Build a static leaktrace (musl) and pack dist/leaktrace-VERSION-x86_64-linux.tar.gz
    /// (binary, licenses, README, man pages, completions), dist/leaktrace_VERSION_amd64.deb
    /// and dist/SHA256SUMS.
    Dist,
    /// Run each fuzz target of fuzz/ for a bounded time from its committed corpus; fail on
    /// any crash.
    Fuzz {
        /// Seconds of fuzzing per target.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Targets to run (default: all of fuzz/fuzz_targets/).
        targets: Vec<String>,
    },
    /// cargo fmt --check, clippy with warnings denied, and every test (as root).
    Test {
        /// Load every CPU with a busy loop while the tests run: the suite must hold on a
        /// slower or busier machine.
        #[arg(long)]
        stress: bool,
        /// Run the tests this many times and say how many runs passed (formatting, clippy
        /// and fuzzing once).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Passed on to `cargo test` (e.g. `--test faults`, or `-- --nocapture`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Regenerate leaktrace/layouts/go1.X.json from the DWARF of a probe program built with
    /// every Go toolchain in scripts/versions.sh.
    GenLayouts {
        /// Write nothing; fail, printing the difference, if a committed table is stale.
        #[arg(long)]
        check: bool,
    },
    /// Regenerate schema/report.schema.json and schema/dump.schema.json (JSON Schema) from
    /// the report's Rust types; the schema test fails while they are stale.
    GenSchema,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench {
            seconds,
            reps,
            note,
        } => bench::bench(seconds, reps, note.as_deref()),
        Command::BenchAgent {
            processes,
            seconds,
            reps,
            note,
        } => bench::bench_agent(processes, seconds, reps, note.as_deref()),
        Command::Demo { seconds } => demo::demo(seconds),
        Command::Dist => dist::dist().map(drop),
        Command::Fuzz { seconds, targets } => fuzz::fuzz(seconds, &targets),
        Command::Test {
            stress,
            repeat,
            args,
        } => test::test(&test::TestPlan {
            stress,
            repeat,
            args: &args,
        }),
        Command::GenLayouts { check } => layouts::gen_layouts(check),
        Command::GenSchema => schema::gen_schema(),
    }
}
