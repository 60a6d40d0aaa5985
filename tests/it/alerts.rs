//! The alert rules with the real `promtool`: syntax (`check rules`), unit tests with a firing and a quiet case per
//! alert and a fresh install on which none fires (`test rules config/prometheus/alerts_test.yaml`), every alert
//! quiet on the series a real fresh install exports, the exposition format of a real `/metrics` scrape
//! (`check metrics`), HighWriteErrorRate evaluated on counters scraped from a real operator whose database went
//! away, and the chart's runbook URL override.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::chart::{documents, kubebin, of_kind, repo_path, run, run_raw, template};
use crate::support::kube::{EnvOptions, TestEnv, audit_yaml, eventually};
use datastorage::embed::EmbedMetrics;
use datastorage::metrics::Metrics;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn alert_rules() -> Vec<Value> {
    let doc: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_path("config/prometheus/alerts.yaml")).unwrap(),
    )
    .unwrap();
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

fn alert_expr(name: &str) -> String {
    alert_rules()
        .into_iter()
        .find(|r| r["alert"] == name)
        .unwrap_or_else(|| panic!("no alert {name}"))["expr"]
        .as_str()
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let promtool = kubebin("promtool");
    let rules = repo_path("config/prometheus/alerts.yaml");
    let out = run(&promtool, &["check", "rules", rules.to_str().unwrap()]);
    assert!(out.contains("SUCCESS: 12 rules found"), "{out}");
    let tests = repo_path("config/prometheus/alerts_test.yaml");
    run(&promtool, &["test", "rules", tests.to_str().unwrap()]);
}

#[test]
fn every_alert_of_the_spec_has_a_firing_and_a_quiet_test_case() {
    let tests: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_path("config/prometheus/alerts_test.yaml")).unwrap(),
    )
    .unwrap();
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in tests["tests"].as_array().unwrap() {
        for c in t["alert_rule_test"].as_array().unwrap() {
            let name = c["alertname"].as_str().unwrap().to_string();
            if c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    let expected: BTreeSet<String> = ALERTS.map(String::from).into();
    let defined: BTreeSet<String> = alert_rules()
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(defined, expected);
    assert_eq!(firing, expected, "firing cases");
    assert_eq!(quiet, expected, "quiet cases");
    // The fresh-install case checks every alert.
    let fresh = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"].as_str().unwrap().starts_with("A fresh install"))
        .expect("a fresh-install test");
    let checked: BTreeSet<String> = fresh["alert_rule_test"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|c| assert_eq!(c["exp_alerts"], json!([]), "{c}"))
        .map(|c| c["alertname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(checked, expected, "fresh-install cases");
}

/// The spec's six alerts and the operational ones.
const ALERTS: [&str; 12] = [
    "DatastorageOperatorDown",
    "DatastorageNoLeader",
    "HighWriteErrorRate",
    "PostgreSQLFailure",
    "HighQueryErrorRate",
    "VectorDegraded",
    "LowCacheHitRate",
    "SlowSemanticSearch",
    "ReconcileQueueGrowing",
    "EmbeddingBacklogGrowing",
    "AuditsRejected",
    "DatabasePoolSaturated",
];

/// Every sample of an exposition as a promtool input series held at its value for 60 minutes, with the labels a
/// scrape adds.
fn held_series(exposition: &str) -> Vec<Value> {
    let target = r#"namespace="datastorage",job="datastorage-operator",instance="10.0.0.1:8081""#;
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let series = match series.split_once('{') {
                Some((name, "}")) => format!("{name}{{{target}}}"),
                Some((name, rest)) => format!("{name}{{{target},{rest}"),
                None => format!("{series}{{{target}}}"),
            };
            json!({"series": series, "values": format!("{value}x60")})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_alert_fires_on_the_series_of_a_real_fresh_install() {
    // An operator whose DataStorage does not exist (yet): what a fresh `helm install` runs.
    crate::support::kube::ensure_crds();
    let client = crate::support::kube::client().await;
    let missing = format!("absent-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let running = datastorage::operator::start(
        client,
        datastorage::operator::Options {
            namespace: Some(missing.clone()),
            ..datastorage::operator::Options::local(missing)
        },
    )
    .await
    .unwrap();
    let url = format!("http://{}/metrics", running.ops_addr);
    let exposition = eventually(WAIT, "the operator to lead", || {
        let url = url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.contains("datastorage_leader 1").then_some(text)
        }
    })
    .await;
    running.task.abort();
    assert!(
        !exposition.contains("datastorage_store_ready"),
        "{exposition}"
    );
    assert!(
        exposition.contains("datastorage_build_info{"),
        "{exposition}"
    );
    assert!(
        exposition.contains("process_cpu_seconds_total"),
        "{exposition}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut series = held_series(&exposition);
    series.push(json!({
        "series": r#"up{namespace="datastorage",job="datastorage-operator",instance="10.0.0.1:8081"}"#,
        "values": "1x60",
    }));
    let cases: Vec<Value> = ALERTS
        .iter()
        .flat_map(|a| {
            ["10m", "59m"].map(|t| json!({"eval_time": t, "alertname": a, "exp_alerts": []}))
        })
        .collect();
    let file = dir.path().join("fresh_install_test.yaml");
    std::fs::write(
        &file,
        json!({
            "rule_files": [repo_path("config/prometheus/alerts.yaml")],
            "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": cases}],
        })
        .to_string(),
    )
    .unwrap();
    run(
        &kubebin("promtool"),
        &["test", "rules", file.to_str().unwrap()],
    );

    // And the check can fail: the same install with the DataStorage stuck not ready pages PostgreSQLFailure.
    let mut failing = series.clone();
    failing.push(json!({
        "series": r#"datastorage_store_ready{namespace="datastorage",job="datastorage-operator",instance="10.0.0.1:8081"}"#,
        "values": "0x60",
    }));
    std::fs::write(
        &file,
        json!({
            "rule_files": [repo_path("config/prometheus/alerts.yaml")],
            "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": failing, "alert_rule_test": [
                {"eval_time": "10m", "alertname": "PostgreSQLFailure", "exp_alerts": []},
            ]}],
        })
        .to_string(),
    )
    .unwrap();
    let out = run_raw(
        &kubebin("promtool"),
        &["test", "rules", file.to_str().unwrap()],
    );
    assert!(
        !out.status.success(),
        "PostgreSQLFailure stays quiet with store_ready 0: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_chart_points_runbook_urls_at_the_configured_base() {
    let urls = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["--api-versions", "monitoring.coreos.com/v1"];
        args.extend_from_slice(extra);
        let docs = documents(&template(&args));
        let rule = of_kind(&docs, "PrometheusRule")[0].clone();
        rule["spec"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["annotations"]["runbook_url"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let default = urls(&[]);
    assert_eq!(default.len(), ALERTS.len());
    for (url, name) in default.iter().zip(ALERTS) {
        assert_eq!(
            url,
            &format!(
                "https://github.com/kubernaut/datastorage/blob/main/docs/runbook.md#{}",
                name.to_lowercase()
            )
        );
    }
    let custom = urls(&[
        "--set",
        "prometheusRule.runbookBaseUrl=https://wiki.example.com/sre/datastorage",
    ]);
    for (url, name) in custom.iter().zip(ALERTS) {
        assert_eq!(
            url,
            &format!(
                "https://wiki.example.com/sre/datastorage#{}",
                name.to_lowercase()
            )
        );
    }
}

#[test]
fn alerts_have_severity_and_a_runbook_section() {
    let runbook = std::fs::read_to_string(repo_path("docs/runbook.md")).unwrap();
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase().replace(' ', "-"))
        .collect();
    for r in alert_rules() {
        let name = r["alert"].as_str().unwrap();
        let severity = r["labels"]["severity"].as_str().unwrap();
        assert!(["critical", "warning"].contains(&severity), "{name}");
        let url = r["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = url
            .split_once("docs/runbook.md#")
            .unwrap_or_else(|| panic!("{name}: runbook_url {url}"))
            .1;
        assert_eq!(anchor, name.to_lowercase(), "{name}");
        assert!(
            anchors.contains(anchor),
            "{name}: no section #{anchor} in docs/runbook.md"
        );
    }
}

/// Runs `promtool check metrics` on an exposition; panics with its findings.
fn promtool_check_metrics(exposition: &str) {
    let mut child = Command::new(kubebin("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_exposition_of_every_metric_passes_promtool_check_metrics() {
    let m = Metrics::new().unwrap();
    let e = EmbedMetrics::register(&m.registry).unwrap();
    m.write_total
        .with_label_values(&["audits", "failure"])
        .inc();
    m.write_duration
        .with_label_values(&["audits"])
        .observe(0.01);
    m.count_row_only("timeout");
    m.count_row_only("provider_error");
    m.count_rejection([("actionType", "required")]);
    m.query_duration.with_label_values(&["search"]).observe(0.2);
    m.pool_connections.with_label_values(&["idle"]).set(1);
    m.pool_max_connections.set(5);
    m.store_ready.set(1);
    e.generation_seconds.observe(0.02);
    e.evictions.inc();
    let text = m.render();
    for line in [
        "datastorage_fallback_mode_total 1",
        r#"datastorage_dualwrite_failure_total{reason="timeout"} 1"#,
        "datastorage_audits_rejected_total 1",
        "datastorage_db_pool_max_connections 5",
        "datastorage_store_ready 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    assert!(text.contains("datastorage_embedding_generation_duration_seconds_bucket"));
    promtool_check_metrics(&text);
    // And the checker can fail.
    let out = {
        let mut child = Command::new(kubebin("promtool"))
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"# TYPE bad_counter counter\nbad_counter 1\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(
        !out.status.success(),
        "promtool accepts a counter without _total"
    );
}

/// `datastorage_write_total` samples of an exposition, keyed by their label set.
fn write_totals(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|l| l.starts_with("datastorage_write_total{"))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// Evaluates `count(<HighWriteErrorRate expr>)` with `promtool test rules` on series that start at `before`,
/// reach `after` one minute later and keep growing at that pace; returns whether the expression is non-empty
/// (i.e. the alert condition holds). Panics when promtool itself fails for another reason.
fn high_write_error_rate_holds(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> bool {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let series: Vec<Value> = names
        .into_iter()
        .map(|name| {
            let v0 = before.get(name).copied().unwrap_or(0.0);
            let v1 = after.get(name).copied().unwrap_or(0.0);
            let values: Vec<String> = (0..=8)
                .map(|i| {
                    if i == 0 {
                        v0.to_string()
                    } else {
                        (v1 + (v1 - v0) * f64::from(i - 1)).to_string()
                    }
                })
                .collect();
            json!({"series": name, "values": values.join(" ")})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("empty_rules.yaml");
    std::fs::write(&rules, "groups: []\n").unwrap();
    let case = |exp: Value| {
        json!({
            "rule_files": [rules.to_str().unwrap()],
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [{
                    "expr": format!("count({})", alert_expr("HighWriteErrorRate")),
                    "eval_time": "6m",
                    "exp_samples": exp,
                }],
            }],
        })
    };
    let file = dir.path().join("derived_test.yaml");
    std::fs::write(
        &file,
        case(json!([{"labels": "{}", "value": 1}])).to_string(),
    )
    .unwrap();
    let holds = run_raw(
        &kubebin("promtool"),
        &["test", "rules", file.to_str().unwrap()],
    );
    std::fs::write(&file, case(json!([])).to_string()).unwrap();
    let quiet = run_raw(
        &kubebin("promtool"),
        &["test", "rules", file.to_str().unwrap()],
    );
    assert!(
        holds.status.success() != quiet.status.success(),
        "exactly one of the two expectations must pass:\n{}\n{}",
        String::from_utf8_lossy(&holds.stdout),
        String::from_utf8_lossy(&quiet.stdout)
    );
    holds.status.success()
}

async fn scrape(env: &TestEnv) -> String {
    let addr = env.operator.as_ref().unwrap().ops_addr;
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_makes_high_write_error_rate_hold_on_real_counters() {
    // A private PostgreSQL, so stopping it does not disturb other tests.
    let pg = crate::support::Service::postgres();
    let url = pg.url.clone();
    let env = TestEnv::with(
        "alerts",
        EnvOptions {
            url: Some(url),
            ..EnvOptions::default()
        },
    )
    .await;
    let initial = scrape(&env).await;
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("ok", "rr-alerts-0", "")),
    );
    env.wait_state("ok", "Persisted", WAIT).await;
    let healthy = scrape(&env).await;
    promtool_check_metrics(&healthy);
    assert!(
        !high_write_error_rate_holds(&write_totals(&initial), &write_totals(&healthy)),
        "HighWriteErrorRate holds although every write succeeded"
    );

    pg.run("stop");
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("during", "rr-alerts-1", "")),
    );
    env.wait_state("during", "Retrying", WAIT).await;
    let failing = eventually(WAIT, "datastorage_write_total{status=failure} > 0", || {
        let env = &env;
        async move {
            let text = scrape(env).await;
            write_totals(&text)
                .iter()
                .any(|(k, v)| k.contains(r#"status="failure""#) && *v > 0.0)
                .then_some(text)
        }
    })
    .await;
    promtool_check_metrics(&failing);
    assert!(
        high_write_error_rate_holds(&write_totals(&healthy), &write_totals(&failing)),
        "HighWriteErrorRate does not hold on the counters of a failing write:\n{failing}"
    );
    drop(env);
}
