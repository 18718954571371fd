//! The JSON Schemas in `schemas/` are generated from the Rust types; these
//! tests fail when the checked-in files are stale, and validate every file of
//! `example-repo/` against them with an independent validator (the
//! `jsonschema` crate), so the schemas and the types cannot drift apart.

use std::path::Path;

use hadron_tests::{hadron_bin, run, workspace_root};
use serde_json::Value;

fn schema_for(kind: &str) -> jsonschema::Validator {
    let file = hadron::schema::file_for_kind(kind).unwrap_or_else(|| panic!("no schema for kind {kind}"));
    let text = std::fs::read_to_string(workspace_root().join("schemas").join(file)).expect("read schema");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn yaml_to_json(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("example file is YAML")
}

fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "targets") {
                yaml_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn checked_in_schemas_are_fresh() {
    for (name, text) in hadron::schema::all() {
        let path = workspace_root().join("schemas").join(name);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(current == text, "schemas/{name} is stale: run `cargo run -- schema --out schemas` and commit it");
    }
    // The CLI's own check agrees.
    let out = run(hadron_bin!(), &["schema", "--check", "--out", workspace_root().join("schemas").to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn schema_check_reports_a_stale_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_dir = dir.path().to_str().expect("utf-8");
    assert_eq!(run(hadron_bin!(), &["schema", "--out", out_dir]).status.code(), Some(0));
    std::fs::write(dir.path().join("agent.schema.json"), "{}\n").expect("write");
    let out = run(hadron_bin!(), &["schema", "--check", "--out", out_dir]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stale:"));
}

#[test]
fn every_example_file_validates_against_its_schema() {
    let mut files = Vec::new();
    yaml_files(&workspace_root().join("example-repo"), &mut files);
    assert!(files.len() >= 6, "expected the example's settings, agents and requests, found {files:?}");
    for path in files {
        let value = yaml_to_json(&std::fs::read_to_string(&path).expect("read"));
        let kind = value["kind"].as_str().expect("every example file has a kind").to_owned();
        let validator = schema_for(&kind);
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| format!("{e} at {}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{} does not match its schema: {errors:?}", path.display());
    }
}

#[test]
fn schemas_reject_what_the_loader_rejects() {
    let request = std::fs::read_to_string(workspace_root().join("example-repo/requests/add-healthz.yaml")).expect("read");
    let validator = schema_for("ChangeRequest");
    for (what, broken) in [
        ("unknown field", request.replace("  title:", "  titel:")),
        ("wrong kind", request.replace("kind: ChangeRequest", "kind: Agent")),
        ("bad name", request.replace("name: add-healthz", "name: Add_Healthz")),
        ("bad gate type", request.replace("type: approval", "type: manual")),
        ("bad duration", request.replace("maxWallTime: 15m", "maxWallTime: 15 minutes")),
    ] {
        let value = yaml_to_json(&broken);
        assert!(!validator.is_valid(&value), "the schema accepted a request with a {what}");
        let loaded = hadron::model::Catalog::load([("requests/add-healthz.yaml", broken.as_bytes())]);
        assert!(loaded.error_count() > 0, "the loader accepted a request with a {what}");
    }
}
