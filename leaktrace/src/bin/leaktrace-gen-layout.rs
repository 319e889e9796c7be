//! Prints the runtime layout read from a Go binary's DWARF, as JSON. Not for users: `cargo
//! xtask gen-layouts` runs it on the layout probe built with each Go toolchain to write
//! `leaktrace/layouts/go1.X.json`.
//!
//! Usage: `leaktrace-gen-layout [--table] BINARY`. With `--table` the output is a table
//! entry: its source is the table and it names its generator.
use std::process::ExitCode;

use leaktrace::tracee::layout;

fn main() -> ExitCode {
    let mut table = false;
    let mut path = None;
    for arg in std::env::args_os().skip(1) {
        if arg == "--table" {
            table = true;
        } else if path.is_none() {
            path = Some(arg);
        } else {
            eprintln!("usage: leaktrace-gen-layout [--table] BINARY");
            return ExitCode::from(2);
        }
    }
    let Some(path) = path else {
        eprintln!("usage: leaktrace-gen-layout [--table] BINARY");
        return ExitCode::from(2);
    };
    let shown = path.to_string_lossy().into_owned();
    let data = match std::fs::read(&path) {
        Ok(data) => data,
        Err(e) => {
            eprintln!("leaktrace-gen-layout: reading {shown}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match layout::from_dwarf(&data) {
        Ok(Some(found)) => {
            let found = if table {
                found.into_table_entry()
            } else {
                found
            };
            print!("{}", found.to_json());
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("leaktrace-gen-layout: {shown} has no DWARF (built with -ldflags=-w?)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("leaktrace-gen-layout: {shown}: {e}");
            ExitCode::FAILURE
        }
    }
}
