//! The Helm chart and the pinned helm/promtool binaries (next to kubectl in DATASTORAGE_KUBEBIN).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

pub const RELEASE_NAME: &str = "ds";

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn chart_dir() -> PathBuf {
    repo_path("charts/datastorage-operator")
}

/// A binary built by `hack/kubebins/build.sh` (helm, promtool, kubectl).
pub fn kubebin(name: &str) -> String {
    match std::env::var("DATASTORAGE_KUBEBIN") {
        Ok(dir) => format!("{dir}/{name}"),
        Err(_) => panic!(
            "DATASTORAGE_KUBEBIN is not set: export DATASTORAGE_KUBEBIN=$(hack/kubebins/build.sh --print-bindir)"
        ),
    }
}

/// Runs a binary, returning its output (not checked).
pub fn run_raw(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

/// Runs a binary; panics with its output on failure; returns stdout.
pub fn run(bin: &str, args: &[&str]) -> String {
    let out = run_raw(bin, args);
    assert!(
        out.status.success(),
        "{bin} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template` of the chart with extra arguments (e.g. `--set`, `--api-versions`).
pub fn template(extra: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE_NAME,
        chart.to_str().unwrap(),
        "--namespace",
        "ds-system",
    ];
    args.extend_from_slice(extra);
    run(&kubebin("helm"), &args)
}

/// Splits a multi-document YAML stream into JSON values, skipping empty (comment-only) documents.
pub fn documents(yaml: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    for chunk in format!("\n{yaml}").split("\n---") {
        let has_content = chunk
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if has_content {
            let v: Value = serde_saphyr::from_str(chunk)
                .unwrap_or_else(|e| panic!("cannot parse rendered YAML: {e}\n{chunk}"));
            docs.push(v);
        }
    }
    docs
}

/// The rendered objects of `kind`.
pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}
