//! The Grafana dashboard: the 13 panels of SPEC.md §4, every metric it (and every alert) references is exported by
//! the operator, and the chart ships an identical copy.

use std::collections::BTreeSet;

use crate::support::chart::repo_path;
use datastorage::embed::EmbedMetrics;
use datastorage::metrics::Metrics;
use regex::Regex;
use serde_json::Value;

fn dashboard() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo_path("config/grafana/datastorage-dashboard.json")).unwrap(),
    )
    .unwrap()
}

/// Every metric family a real registry exposes, after touching each labelled child once (vecs and histograms
/// only appear in the exposition after first use). Histograms contribute `_bucket`, `_sum` and `_count`.
pub fn exported_names() -> BTreeSet<String> {
    let m = Metrics::new().unwrap();
    let e = EmbedMetrics::register(&m.registry).unwrap();
    m.write_total
        .with_label_values(&["audits", "success"])
        .inc();
    m.write_duration
        .with_label_values(&["audits"])
        .observe(0.01);
    m.dualwrite_failure.with_label_values(&["timeout"]).inc();
    m.validation_failures
        .with_label_values(&["actionType", "required"])
        .inc();
    m.query_total
        .with_label_values(&["search", "success"])
        .inc();
    m.query_duration
        .with_label_values(&["search"])
        .observe(0.01);
    m.reconcile_total.with_label_values(&["audit", "ok"]).inc();
    m.reconcile_duration
        .with_label_values(&["audit"])
        .observe(0.01);
    m.redactions.with_label_values(&["bearer_token"]).inc();
    m.pool_connections.with_label_values(&["idle"]).set(1);
    e.generation_seconds.observe(0.02);
    let text = m.render();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every `datastorage_*` identifier in a PromQL expression.
fn referenced(expr: &str) -> BTreeSet<String> {
    let re = Regex::new(r"\bdatastorage_[a-z0-9_]+").unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

fn exprs(panel: &Value) -> Vec<String> {
    panel["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn dashboard_has_the_13_panels_of_the_spec() {
    let d = dashboard();
    let panels = d["panels"].as_array().unwrap();
    assert_eq!(panels.len(), 13);
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        [
            "Write rate by status",
            "Write latency p95 / p99",
            "Dual-write success vs failure",
            "Fallback to row-only writes",
            "Embedding cache hit rate",
            "Embedding generation p95 / p99",
            "Validation failures by field",
            "Query rate",
            "Query latency p95 by operation",
            "Semantic search latency p50 / p95 / p99",
            "Write error rate",
            "Query error rate",
            "Validation failure ratio",
        ]
    );
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "unique panel ids");
        assert!(!exprs(p).is_empty(), "{} has no query", p["title"]);
    }
    // The cache hit rate gauge: red below 0.5, yellow below 0.8, green above.
    let gauge = &panels[4];
    assert_eq!(gauge["type"], "gauge");
    let steps = &gauge["fieldConfig"]["defaults"]["thresholds"]["steps"];
    assert_eq!(steps[0]["color"], "red");
    assert_eq!(steps[1]["color"], "yellow");
    assert_eq!(steps[1]["value"], 0.5);
    assert_eq!(steps[2]["color"], "green");
    assert_eq!(steps[2]["value"], 0.8);
    // Percentiles asked for by the spec.
    let search = exprs(&panels[9]).join(" ");
    for q in ["0.5", "0.95", "0.99"] {
        assert!(search.contains(&format!("histogram_quantile({q},")), "{q}");
    }
    assert!(search.contains(r#"operation="search""#));
}

#[test]
fn every_metric_in_the_dashboard_and_alerts_is_exported() {
    let exported = exported_names();
    for name in [
        "datastorage_cache_hits_total",
        "datastorage_cache_misses_total",
        "datastorage_embedding_generation_duration_seconds_bucket",
        "datastorage_embedding_cache_redis_errors_total",
        "datastorage_write_total",
    ] {
        assert!(exported.contains(name), "{name} not in {exported:?}");
    }
    let mut used = BTreeSet::new();
    for p in dashboard()["panels"].as_array().unwrap() {
        for e in exprs(p) {
            used.extend(referenced(&e));
        }
    }
    let alerts: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_path("config/prometheus/alerts.yaml")).unwrap(),
    )
    .unwrap();
    for g in alerts["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            used.extend(referenced(r["expr"].as_str().unwrap()));
        }
    }
    assert!(used.len() >= 12, "{used:?}");
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "metrics referenced but not exported: {unknown:?}"
    );
    // The check can fail: a misspelt name is caught.
    assert!(!exported.contains("datastorage_writes_total"));
}

#[test]
fn chart_ships_the_same_dashboard_and_alerts() {
    for (src, copy) in [
        (
            "config/grafana/datastorage-dashboard.json",
            "charts/datastorage-operator/files/datastorage-dashboard.json",
        ),
        (
            "config/prometheus/alerts.yaml",
            "charts/datastorage-operator/files/alerts.yaml",
        ),
    ] {
        let a = std::fs::read_to_string(repo_path(src)).unwrap();
        let b = std::fs::read_to_string(repo_path(copy)).unwrap();
        assert!(a == b, "{copy} differs from {src}: run `make chart-files`");
    }
}
