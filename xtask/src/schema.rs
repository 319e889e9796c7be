//! `cargo xtask gen-schema`: regenerates schema/report.schema.json and
//! schema/dump.schema.json from the Rust types (schemars), by running the test that
//! otherwise fails when they are stale, with LEAKTRACE_WRITE_SCHEMAS set.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::go;

pub fn gen_schema() -> anyhow::Result<()> {
    let status = Command::new("cargo")
        .args([
            "test",
            "-p",
            "leaktrace",
            "--test",
            "schema",
            "committed_schemas_are_what_the_types_generate",
        ])
        .current_dir(go::repo_root())
        .env("LEAKTRACE_WRITE_SCHEMAS", "1")
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("generating the schemas failed: {status}");
    }
    println!("wrote schema/report.schema.json and schema/dump.schema.json");
    Ok(())
}
