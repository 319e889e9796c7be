//! The `leaktrace` command line.

use std::{ffi::OsString, io::IsTerminal as _, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use leaktrace::{
    agent::{AgentOptions, discover::Filters},
    alloc::AllocMode,
    detect::Confidence,
    dump::DumpOptions,
    probes::Probe,
    report::top::screen::Screen,
    signals::Interrupted,
    trace::{self, TargetSpec, TraceOptions},
    tracee::buildinfo::{MAX_TESTED, MIN_SUPPORTED},
};

/// Find goroutine leaks and the memory they pin in a running Go program, with eBPF.
///
/// `sudo leaktrace -p PID` attaches to a running Go process without restarting or changing
/// it, prints a line per second, and a report of suspected leaks when you press Ctrl-C.
#[derive(Parser, Debug)]
#[command(name = "leaktrace", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    trace: TraceArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Trace a running Go process live (the default when no command is given).
    Trace(TraceArgs),
    /// Trace for a bounded time (default 60 s, or until a spawned command exits) and write
    /// report.txt, report.json and report.html to a directory. `record [options] -- CMD ARGS` spawns the
    /// command and traces it from its first instruction.
    Record(RecordArgs),
    /// Trace live in a full-screen view: the leak groups, sorted (s), with their trends; the
    /// memory; the probes and their cost. Enter opens a group's stack, q quits and prints the
    /// report. `top [options] -- CMD ARGS` spawns the command. Without a terminal on stdout,
    /// prints the plain live lines instead.
    Top(TopArgs),
    /// Print every goroutine and the memory figures of a Go process, once, with no probe.
    Dump(DumpArgs),
    /// Watch every Go process of the host within one CPU budget, without probes, and serve
    /// their goroutines, leaks and profiles to Prometheus and profile stores (see the
    /// README, "Agent").
    Agent(AgentArgs),
    /// Print a shell completion script (e.g. `leaktrace completions bash >
    /// /etc/bash_completion.d/leaktrace`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command to DIR.
    #[command(hide = true)]
    Man {
        /// Write leaktrace.1 and leaktrace-COMMAND.1 here instead of printing leaktrace.1.
        dir: Option<PathBuf>,
    },
}

/// `leaktrace --version`: the release, the commit it was built from, and the Go releases it
/// reads (from the same constants that refuse older programs).
fn versions() -> (String, String) {
    let short = format!(
        "{} (commit {})",
        env!("CARGO_PKG_VERSION"),
        env!("LEAKTRACE_COMMIT")
    );
    let long = format!(
        "{short}\nreads Go {}.{} to {}.{} programs for linux/amd64 (tested with go{}.{}.x to {MAX_TESTED})",
        MIN_SUPPORTED.major,
        MIN_SUPPORTED.minor,
        MAX_TESTED.major,
        MAX_TESTED.minor,
        MIN_SUPPORTED.major,
        MIN_SUPPORTED.minor,
    );
    (short, long)
}

/// The command line's definition, with the versions filled in: parsing, completions and the
/// man page all come from it.
fn command() -> clap::Command {
    let (short, long) = versions();
    Cli::command()
        .version(short)
        .long_version(long)
        .after_long_help(REQUIREMENTS)
}

/// The end of `--help` and of the man page: what the kernel must have (leaktrace::kernel).
const REQUIREMENTS: &str = "Requirements: Linux 5.8 or newer on x86_64 (the BPF ring buffer) with \
uprobes and tracefs (mounted on /sys/kernel/tracing if it is not); run as root, or with CAP_BPF, \
CAP_PERFMON and CAP_SYS_PTRACE. `dump` and `agent` need only CAP_SYS_PTRACE.";

/// `leaktrace man [DIR]`: the man page on stdout, or a page per command in DIR.
fn man(dir: Option<PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    match dir {
        None => clap_mangen::Man::new(command()).render(&mut std::io::stdout().lock())?,
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command(), &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
struct TraceArgs {
    /// The PID of the Go program to trace.
    #[arg(short, long)]
    pid: Option<u32>,
    /// Stop after this long (e.g. 30s, 5m, 500ms); default: until Ctrl-C or the target exits.
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How often to print the live line (`top`: to redraw the screen).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// How often to read every goroutine of the target (read-only; costs the target nothing).
    /// Stretched where a snapshot's CPU would take more than 0.5% of a CPU at this pace.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    snapshot_interval: Duration,
    /// A goroutine must have been blocked at least this long to be suspected of leaking.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    min_age: Duration,
    /// Probes to place, comma separated: park (runtime.gopark), wake (runtime.ready), create
    /// (runtime.newproc1 returns), exit (runtime.goexit1), send (runtime.chansend), recv
    /// (runtime.chanrecv), close (runtime.closechan), select (runtime.selectgo), wake-any
    /// (runtime.casgstatus: wake-ups that bypass ready, such as netpoll's), alloc
    /// (runtime.mallocgc, or Go 1.27's size-specialized entries), sites (targeted
    /// probes at suspected leaks' blocking calls and go statements); or `default`
    /// (park,wake,create,exit,sites), `all`, `none`. Each hit costs the target 5-10 us on a
    /// VM (measured at start-up): probes whose estimated or measured cost exceeds
    /// --max-overhead are not placed or are shed, as few as needed (park with wake, create
    /// with exit).
    #[arg(long, default_value = "default", value_parser = parse_probes)]
    probes: ProbeList,
    /// The most of one CPU the probes may cost the target, in percent (above 0, at most
    /// 100); `off` places every chosen probe and never sheds one, whatever it costs (for
    /// tests and short, deliberate traces).
    #[arg(long, default_value = "1", value_parser = parse_max_overhead, value_name = "PERCENT|off")]
    max_overhead: f64,
    /// How allocations are seen: `sampled` reads the runtime's own heap profile (about one
    /// sample per 512 KiB allocated, at no cost to the target) or, when the program disabled
    /// memory profiling, probes span refills and large allocations within the budget;
    /// `exact` probes every allocation (about 5 us each: its cost is stated before it starts,
    /// and it is not shed); `off`.
    #[arg(long, default_value = "sampled", value_parser = parse_alloc, value_name = "MODE")]
    alloc: AllocMode,
    /// Serve metrics for Prometheus at http://ADDR/metrics, refreshed at every snapshot.
    /// A bare port (`9464`) listens on 127.0.0.1 only; give an address (`0.0.0.0:9464`) to
    /// listen elsewhere.
    #[arg(long, value_name = "ADDR", value_parser = leaktrace::report::prometheus::parse_listen)]
    prometheus: Option<std::net::SocketAddr>,
    /// Also write every park and wake-up record as a JSON line to this file; `-` writes them
    /// to stdout, and then the live lines, the report and a spawned command's output go to
    /// stderr.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// The ring buffer the probes' records pass through (e.g. 4M, 256K, 4096: a power of
    /// two, at least 4096). Records that find it full are counted as lost, never waited for.
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_ring_bytes)]
    ring_buffer: u32,
    /// Exit with status 3 when the report has a leak group of at least this confidence
    /// (low, medium, high; alone: medium), for scripts and CI.
    #[arg(long, value_name = "CONFIDENCE", num_args = 0..=1, default_missing_value = "medium", value_parser = parse_confidence)]
    fail_on_leak: Option<Confidence>,
}

#[derive(Args, Debug)]
struct RecordArgs {
    #[command(flatten)]
    trace: TraceArgs,
    /// The directory to write report.txt, report.json, report.html and the exports to.
    #[arg(short, long, default_value = "leaktrace-out")]
    output: PathBuf,
    /// The command to spawn and trace (after --).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct TopArgs {
    #[command(flatten)]
    trace: TraceArgs,
    /// Also write report.txt, report.json, report.html and the exports to this directory
    /// when the trace stops.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The command to spawn and trace (after --).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Args, Debug)]
struct DumpArgs {
    /// The PID of the Go program to inspect.
    #[arg(short, long)]
    pid: u32,
    /// List every goroutine on its own, like `goroutine?debug=2`, instead of grouping
    /// identical stacks like `debug=1`.
    #[arg(long)]
    all: bool,
    /// Print JSON (schema in the README) instead of text.
    #[arg(long)]
    json: bool,
    /// Include runtime-internal goroutines and frames, which Go's tracebacks leave out.
    #[arg(long)]
    runtime: bool,
    /// Print only the goroutines proven leaked: two reachability passes over the heap a
    /// moment apart (a few seconds), like Go's goroutineleak profile.
    #[arg(long, conflicts_with = "all")]
    leaks: bool,
    /// Write the goroutines by stack as a pprof goroutine profile (gzipped protobuf, e.g.
    /// goroutines.pb.gz, for `go tool pprof`) instead of printing them.
    #[arg(short, long, value_name = "FILE", conflicts_with_all = ["json", "all"])]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// Watch only processes whose executable matches GLOB (its file name, or its whole path
    /// when GLOB has a `/`); repeat for alternatives.
    #[arg(long, value_name = "GLOB")]
    exe: Vec<String>,
    /// Watch only processes in this cgroup or below it (a path as in /proc/PID/cgroup, e.g.
    /// /system.slice/api.service); repeat for alternatives.
    #[arg(long, value_name = "PATH")]
    cgroup: Vec<String>,
    /// Watch only these processes; repeat for more.
    #[arg(short, long)]
    pid: Vec<u32>,
    /// Never watch processes whose executable matches GLOB.
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// More filters, one `key = value` a line (exe, cgroup, pid, exclude), read again on
    /// SIGHUP.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where to serve /metrics, /targets, /healthz and /debug/pprof/; a bare port (`9465`)
    /// listens on 127.0.0.1 only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9465", value_parser = leaktrace::report::prometheus::parse_listen)]
    listen: std::net::SocketAddr,
    /// How often each process is read and /proc scanned for new ones.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    interval: Duration,
    /// The most of one CPU the agent's watching may use, over all processes together, in
    /// percent; `off` for no limit. When the work costs more, processes are read less often,
    /// the fastest growing and busiest first.
    #[arg(long, default_value = "1", value_parser = parse_max_overhead, value_name = "PERCENT|off")]
    max_overhead: f64,
    /// A goroutine must have been blocked at least this long to be suspected of leaking.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    min_age: Duration,
    /// Leak groups per process served as series of their own; the rest are summed in one.
    #[arg(long, default_value = "5", value_name = "N")]
    top_groups: usize,
}

/// Parses `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: use e.g. 500ms, 30s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit '{unit}' in '{s}': use ms, s, m or h")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("'{s}' must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses --max-overhead: a percentage above 0 and at most 100, or `off` (no limit: an
/// infinite budget, which no estimated or measured rate exceeds).
fn parse_max_overhead(s: &str) -> Result<f64, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(f64::INFINITY);
    }
    match s.trim().trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!(
            "'{s}' is not a budget: give a percentage of one CPU above 0 and at most 100 (e.g. 1, 0.5, 10), or off for no limit"
        )),
    }
}

fn parse_confidence(s: &str) -> Result<Confidence, String> {
    match s {
        "low" => Ok(Confidence::Low),
        "medium" => Ok(Confidence::Medium),
        "high" => Ok(Confidence::High),
        "proven" => Ok(Confidence::Proven),
        _ => Err(format!(
            "unknown confidence '{s}': choose low, medium, high or proven"
        )),
    }
}

/// The exit status when --fail-on-leak finds a leak group of at least its confidence.
const EXIT_LEAK_FOUND: u8 = 3;

fn parse_alloc(s: &str) -> Result<AllocMode, String> {
    match s {
        "sampled" => Ok(AllocMode::Sampled),
        "exact" => Ok(AllocMode::Exact),
        "off" => Ok(AllocMode::Off),
        _ => Err(format!(
            "unknown --alloc '{s}': choose sampled, exact or off"
        )),
    }
}

/// Parses a --ring-buffer size: bytes, or with a K or M suffix (binary units).
fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, unit) = match t.strip_suffix(['K', 'k']) {
        Some(n) => (n, 1u64 << 10),
        None => match t.strip_suffix(['M', 'm']) {
            Some(n) => (n, 1 << 20),
            None => (t, 1),
        },
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use e.g. 4M, 256K or 65536"))?;
    let bytes = n.saturating_mul(unit);
    let min = leaktrace::probes::RING_BYTES_MIN;
    match u32::try_from(bytes) {
        Ok(b) if b.is_power_of_two() && b >= min => Ok(b),
        _ => Err(format!(
            "'{s}' must be a power of two of at least {min} bytes and at most 2G"
        )),
    }
}

/// The parsed --probes list (a newtype, so that clap takes it as one value).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProbeList(Vec<Probe>);

/// Parses the --probes list.
fn parse_probes(s: &str) -> Result<ProbeList, String> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "none" => {}
            "all" => out.extend(Probe::ALL),
            "default" => out.extend([
                Probe::Gopark,
                Probe::Ready,
                Probe::Create,
                Probe::Exit,
                Probe::Site,
            ]),
            n => out.push(Probe::from_name(n).ok_or_else(|| {
                format!(
                    "unknown probe '{n}': choose from {}, or default, all, none",
                    Probe::ALL.map(|p| p.name()).join(", ")
                )
            })?),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(ProbeList(out))
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("leaktrace: error: {e:#}");
    ExitCode::FAILURE
}

/// What `record` and `top` trace: a running process or a command to spawn.
fn target(pid: Option<u32>, command: Vec<OsString>) -> Result<TargetSpec, String> {
    match (pid, command.is_empty()) {
        (Some(pid), true) => Ok(TargetSpec::Pid(pid)),
        (None, false) => Ok(TargetSpec::Spawn(command)),
        (Some(_), false) => Err("give either -p PID or -- CMD ARGS, not both".into()),
        (None, true) => {
            Err("give the PID to trace (-p PID) or a command to spawn (-- CMD ARGS)".into())
        }
    }
}

/// The trace's options, and the confidence --fail-on-leak fails at.
fn options(
    a: TraceArgs,
    target: TargetSpec,
    output: Option<PathBuf>,
) -> Result<(TraceOptions, Option<Confidence>), String> {
    let fail_on_leak = a.fail_on_leak;
    let opts = TraceOptions {
        target,
        duration: a.duration,
        interval: a.interval,
        snapshot_interval: a.snapshot_interval,
        min_age: a.min_age,
        probes: a.probes.0,
        max_overhead: a.max_overhead / 100.0,
        events: a.events,
        output,
        alloc: a.alloc,
        prometheus: a.prometheus,
        ring_bytes: a.ring_buffer,
        top: false,
    };
    Ok((opts, fail_on_leak))
}

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our output goes away
    // (`leaktrace dump -p PID | head`); the kernel then closes our descriptors, which
    // detaches every probe.
    // SAFETY: setting a signal disposition before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // One malloc arena: a snapshot walk runs on a thread of its own while this one drains
    // the ring buffer, and glibc would give that thread an arena whose freed walk memory
    // the rest never reuses (peak RSS at 100,000 goroutines: 380 MiB, 300 MiB with one).
    // musl's allocator has no arenas: the static build needs no such setting.
    // SAFETY: a malloc tunable, set before any thread is started.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    let opts = match cli.command {
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut command(), "leaktrace", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man { dir }) => {
            return match man(dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            };
        }
        Some(Command::Agent(a)) => {
            let opts = AgentOptions {
                filters: Filters {
                    exe: a.exe,
                    cgroup: a.cgroup,
                    pid: a.pid,
                    exclude: a.exclude,
                },
                config: a.config,
                listen: a.listen,
                interval: a.interval,
                max_overhead: a.max_overhead / 100.0,
                min_age: a.min_age,
                top_groups: a.top_groups,
            };
            return match leaktrace::agent::run(opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            };
        }
        Some(Command::Dump(d)) => {
            let opts = DumpOptions {
                pid: d.pid,
                all: d.all,
                json: d.json,
                runtime: d.runtime,
                leaks: d.leaks,
                output: d.output,
            };
            return match leaktrace::dump::run(&opts) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            };
        }
        Some(Command::Record(r)) => target(r.trace.pid, r.command).and_then(|target| {
            let mut a = r.trace;
            if a.duration.is_none() && matches!(target, TargetSpec::Pid(_)) {
                a.duration = Some(Duration::from_secs(60));
            }
            options(a, target, Some(r.output))
        }),
        Some(Command::Top(t)) => target(t.trace.pid, t.command).and_then(|target| {
            if t.trace.events.as_deref() == Some(std::path::Path::new("-")) {
                return Err("top draws on stdout: give --events a file, not -".into());
            }
            let (mut opts, fail_on_leak) = options(t.trace, target, t.output)?;
            opts.top = std::io::stdout().is_terminal();
            if !opts.top {
                eprintln!("leaktrace: stdout is not a terminal: printing the live lines instead of the top view");
            }
            Ok((opts, fail_on_leak))
        }),
        Some(Command::Trace(a)) => match a.pid {
            Some(pid) => options(a, TargetSpec::Pid(pid), None),
            None => Err("give the PID of the Go program to trace: leaktrace -p PID".into()),
        },
        None => match cli.trace.pid {
            Some(pid) => options(cli.trace, TargetSpec::Pid(pid), None),
            None => Err("give the PID of the Go program to trace: leaktrace -p PID".into()),
        },
    };
    let (opts, fail_on_leak) = match opts {
        Ok(o) => o,
        Err(e) => {
            eprintln!("leaktrace: error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(anyhow::anyhow!("cannot start the event loop: {e}")),
    };
    // `top`: its q and Ctrl-C raise SIGINT, which must stop the trace rather than end
    // leaktrace; the screen is up from before attaching until the trace stops, and down
    // again on every way out (an error drops it here, before it is printed).
    if opts.top
        && let Err(e) = leaktrace::signals::watch()
    {
        return fail(anyhow::anyhow!("handling SIGINT and SIGTERM: {e}"));
    }
    let mut screen = match opts.top {
        true => match Screen::open() {
            Ok(s) => Some(s),
            Err(e) => return fail(e),
        },
        false => None,
    };
    let observer = screen.as_mut().map(|s| s as &mut dyn trace::Observer);
    let result = runtime.block_on(trace::run(opts, observer));
    let screen_failed = screen.as_ref().is_some_and(Screen::failed);
    drop(screen);
    if screen_failed && result.is_ok() {
        return fail(anyhow::anyhow!(
            "the top screen failed (see above): the trace was stopped and reported"
        ));
    }
    match result {
        Ok(outcome) => match fail_on_leak {
            Some(at) if outcome.report.leaks.iter().any(|l| l.confidence >= at) => {
                eprintln!(
                    "leaktrace: a leak group of {} confidence or more was found (--fail-on-leak): exit status {EXIT_LEAK_FOUND}",
                    format!("{at:?}").to_lowercase()
                );
                ExitCode::from(EXIT_LEAK_FOUND)
            }
            _ => ExitCode::SUCCESS,
        },
        Err(e) => match e.downcast_ref::<Interrupted>() {
            Some(i) => {
                eprintln!("leaktrace: {i}");
                ExitCode::from(i.exit_code())
            }
            None => fail(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn budgets() {
        assert_eq!(parse_max_overhead("1"), Ok(1.0));
        assert_eq!(parse_max_overhead("0.5%"), Ok(0.5));
        assert_eq!(parse_max_overhead("off"), Ok(f64::INFINITY));
        assert!(parse_max_overhead("0").is_err());
        assert!(parse_max_overhead("101").is_err());
        assert!(parse_max_overhead("NaN").is_err());
        assert!(parse_max_overhead("lots").unwrap_err().contains("off"));
    }

    #[test]
    fn ring_buffer_sizes() {
        assert_eq!(parse_ring_bytes("4M"), Ok(4 << 20));
        assert_eq!(parse_ring_bytes("256k"), Ok(256 << 10));
        assert_eq!(parse_ring_bytes("4096"), Ok(4096));
        assert!(parse_ring_bytes("3000").is_err(), "not a power of two");
        assert!(parse_ring_bytes("2048").is_err(), "under a page");
        assert!(parse_ring_bytes("8G").is_err());
        assert!(parse_ring_bytes("lots").is_err());
    }
}
