//! The `datastorage` binary's offline commands: `check -f` on the shipped samples (exit codes 0/1/2) and `crd`.

use std::process::Command;

fn datastorage(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_datastorage"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn reports(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The demo's history sample (for `kubectl audit insights`): 24 valid audits of one incident family.
#[test]
fn the_history_sample_is_valid() {
    let (code, out, err) = datastorage(&["check", "-f", "config/samples/history.yaml"]);
    assert_eq!(code, 0, "{err}");
    let reports = reports(&out);
    assert_eq!(reports.len(), 24);
    assert!(reports.iter().all(|r| r["valid"] == true), "{out}");
}

#[test]
fn check_valid_samples_exits_zero_and_redacts() {
    let (code, out, err) = datastorage(&["check", "-f", "config/samples/audits.yaml"]);
    assert_eq!(code, 0, "{err}");
    let reports = reports(&out);
    assert_eq!(reports.len(), 7);
    assert!(
        reports
            .iter()
            .all(|r| r["valid"] == true && r["errors"].as_array().unwrap().is_empty())
    );
    // The image-pull sample carries a password and a Basic auth header: both redacted, both reported.
    let pull = reports
        .iter()
        .find(|r| r["name"] == "image-pull-backoff-fix")
        .unwrap();
    let text = pull["sanitized"].to_string();
    assert!(
        !text.contains("Sup3rS3cret") && !text.contains("dXNlcjpTdXAzclMzY3JldCE="),
        "{text}"
    );
    let kinds: Vec<&str> = pull["redactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"password_kv") && kinds.contains(&"authorization_header"),
        "{kinds:?}"
    );
    // Safe text is untouched.
    let oom = reports
        .iter()
        .find(|r| r["name"] == "api-oomkilled-restart")
        .unwrap();
    assert_eq!(
        oom["sanitized"]["errorMessage"],
        "container api was OOMKilled: memory limit 512Mi exceeded (working set 530Mi); raised limit to 768Mi"
    );
    assert_eq!(oom["sanitized"]["durationMs"], 41_000);
}

#[test]
fn check_invalid_samples_exits_one_naming_fields() {
    let (code, out, _) = datastorage(&["check", "-f", "config/samples/invalid-audits.yaml"]);
    assert_eq!(code, 1);
    let got: Vec<(String, String)> = reports(&out)
        .iter()
        .map(|r| {
            let e = &r["errors"][0];
            (
                e["field"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("actionType".to_string(), "invalid".to_string()),
            ("endTime".to_string(), "time_order".to_string()),
            ("clusterName".to_string(), "xss_detected".to_string()),
        ]
    );
}

#[test]
fn check_unreadable_input_exits_two() {
    let (code, _, err) = datastorage(&["check", "-f", "does/not/exist.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "kind: [unclosed").unwrap();
    let (code, _, err) = datastorage(&["check", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn crd_prints_both_crds() {
    let (code, out, _) = datastorage(&["crd"]);
    assert_eq!(code, 0);
    assert!(out.contains("name: remediationaudits.datastorage.kubernaut.ai"));
    assert!(out.contains("name: datastorages.datastorage.kubernaut.ai"));
}

/// build.rs gives the binary its commit (`--version`, `version`, `datastorage_build_info`): the checkout's HEAD,
/// or the DATASTORAGE_GIT_COMMIT the build was given.
#[test]
fn version_reports_the_git_commit() {
    let expected = match std::env::var("DATASTORAGE_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            let out = Command::new("git")
                .args(["rev-parse", "--short=10", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .expect("git is needed to check the commit build.rs records (apt-get install git)");
            assert!(
                out.status.success(),
                "git rev-parse failed: not a checkout?"
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        }
    };
    let want = format!("datastorage {} ({expected})", env!("CARGO_PKG_VERSION"));
    for args in [&["--version"][..], &["version"][..]] {
        let (code, out, err) = datastorage(args);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), want, "datastorage {args:?}");
    }
}
