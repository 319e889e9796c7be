//! The `leaktrace` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use leaktrace::{
    dump::DumpOptions,
    trace::{self, Stop, TraceOptions},
};

/// Find goroutine leaks and the memory they pin in a running Go program, with eBPF.
///
/// `sudo leaktrace -p PID` attaches to a running Go process without restarting or changing
/// it, prints a line per second, and a summary when you press Ctrl-C.
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
    /// Print every goroutine and the memory figures of a Go process, once, with no probe.
    Dump(DumpArgs),
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
}

#[derive(Args, Debug)]
struct TraceArgs {
    /// The PID of the Go program to trace.
    #[arg(short, long)]
    pid: Option<u32>,
    /// Stop after this long (e.g. 30s, 5m, 500ms); default: until Ctrl-C or the target exits.
    #[arg(short, long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How often to print the live line.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Also write every park and wake-up record as a JSON line to this file.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Trace(a)) => a,
        Some(Command::Dump(d)) => {
            let opts = DumpOptions {
                pid: d.pid,
                all: d.all,
                json: d.json,
                runtime: d.runtime,
            };
            return match leaktrace::dump::run(&opts) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("leaktrace: error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        None => cli.trace,
    };
    let Some(pid) = args.pid else {
        eprintln!("leaktrace: error: give the PID of the Go program to trace: leaktrace -p PID");
        return ExitCode::from(2);
    };
    let opts = TraceOptions {
        pid,
        duration: args.duration,
        interval: args.interval,
        events: args.events,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("leaktrace: error: cannot start the event loop: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(trace::run(opts)) {
        Ok(Stop::Duration | Stop::Signal(_) | Stop::TargetExited | Stop::TargetExeced) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("leaktrace: error: {e:#}");
            ExitCode::FAILURE
        }
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
}
