//! The JSON Schemas of report.json and `dump --json` (schema/), generated from the Rust
//! types: the committed files are what the types generate, and real output from real Go
//! programs validates against them in Python's `jsonschema`, the reader a script would use.
//!
//! `./x gen-schema` (or `LEAKTRACE_WRITE_SCHEMAS=1 cargo test --test schema`) rewrites them.

mod support;

use std::{
    path::Path,
    process::{Command, Stdio},
};

use serde_json::Value;
use support::*;

/// `python check_schema.py SCHEMA DOC` in the readers venv: Python's verdict.
fn check(schema: &Path, doc: &Path) -> Value {
    let python = cache_dir().join("venv-readers/bin/python");
    assert!(
        python.exists(),
        "the Python readers are not installed at {}: run scripts/setup.sh",
        python.display()
    );
    let out = Command::new(&python)
        .arg(repo_root().join("leaktrace/tests/scripts/check_schema.py"))
        .arg(schema)
        .arg(doc)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check_schema.py failed:\n{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn committed_schemas_are_what_the_types_generate() {
    let dir = repo_root().join("schema");
    let write = std::env::var_os("LEAKTRACE_WRITE_SCHEMAS").is_some();
    for (name, text) in leaktrace::report::schema::json_schemas() {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is stale: the report types changed; regenerate it with ./x gen-schema",
            path.display()
        );
    }
}

/// report.json of a real leak and `dump --json --all` of a real program validate against
/// the committed schemas, and the validator catches a document that breaks one.
#[test]
fn real_output_validates_against_the_schemas() {
    let version = go_versions().pop().unwrap();
    let bin = build_fixture("classicleak", &version, &[]);
    let schemas = repo_root().join("schema");
    let bin_arg = bin.to_str().unwrap();
    let (report, _) = record(
        "schema",
        &[
            "--min-age",
            "1s",
            "--snapshot-interval",
            "300ms",
            "--",
            bin_arg,
            "-linger",
            "3s",
        ],
    );
    assert!(
        !report["leaks"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let dir = std::env::temp_dir().join(format!("leaktrace-record-{}-schema", std::process::id()));
    let written = dir.join("report.json");
    let verdict = check(&schemas.join("report.schema.json"), &written);
    assert_eq!(verdict["valid"], true, "report.json: {verdict:#}");

    // A script's mistakes are caught: an unknown field, a wrong type, a missing field.
    let mut broken = report.clone();
    broken["surprise"] = 1.into();
    broken["schema_version"] = "one".into();
    broken["leaks"][0].as_object_mut().unwrap().remove("stack");
    let broken_path = dir.join("broken.json");
    std::fs::write(&broken_path, broken.to_string()).unwrap();
    let verdict = check(&schemas.join("report.schema.json"), &broken_path);
    assert_eq!(verdict["valid"], false, "{verdict:#}");
    let errors = verdict["errors"].to_string();
    for what in ["surprise", "schema_version", "stack"] {
        assert!(errors.contains(what), "{what} not reported: {errors}");
    }

    // dump --json --all of the same program, holding its leak.
    let mut fixture = Fixture::start(&bin, &["-hold"]);
    fixture
        .stderr
        .wait_for("holding", std::time::Duration::from_secs(90));
    let out = Command::new(leaktrace_bin())
        .args(["dump", "--json", "--all", "-p", &fixture.pid().to_string()])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    fixture.finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        dump["each"].as_array().is_some_and(|e| e.len() >= 5),
        "{dump:#}"
    );
    let dump_path = dir.join("dump.json");
    std::fs::write(&dump_path, &out.stdout).unwrap();
    let verdict = check(&schemas.join("dump.schema.json"), &dump_path);
    assert_eq!(verdict["valid"], true, "dump --json: {verdict:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}
