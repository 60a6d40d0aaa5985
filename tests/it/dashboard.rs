//! The Grafana dashboard: the 13 panels of SPEC.md §4 and the operations panels, every exported metric family charted,
//! `cluster`/`namespace`/`job` variables on every query, thresholds equal to the alerts', every metric it (and every
//! alert) references exported by the operator, the chart ships an identical copy — and every panel's PromQL, with
//! Grafana's template variables expanded, returns series from a real Prometheus scraping a running operator after a
//! workload.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::chart::{kubebin, repo_path};
use crate::support::kube::{TestEnv, audit_yaml, eventually, kubectl_raw};
use datastorage::embed::EmbedMetrics;
use datastorage::metrics::Metrics;
use regex::Regex;
use serde_json::{Value, json};

fn dashboard() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(repo_path("config/grafana/datastorage-dashboard.json")).unwrap(),
    )
    .unwrap()
}

/// The exposition of a fresh registry with one observation in each family that needs one to appear
/// (`datastorage_validation_failures_total` and `datastorage_db_pool_connections` have no pre-initialised children,
/// `datastorage_store_ready` is absent until the DataStorage is seen).
fn exposition() -> String {
    let m = Metrics::new().unwrap();
    let e = EmbedMetrics::register(&m.registry).unwrap();
    m.count_rejection([("actionType", "required")]);
    m.pool_connections.with_label_values(&["idle"]).set(1);
    m.store_ready.set(1);
    e.generation_seconds.observe(0.02);
    m.render()
}

/// Every metric name a real registry exposes. Histograms contribute `_bucket`, `_sum` and `_count`.
fn exported_names() -> BTreeSet<String> {
    exposition()
        .lines()
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

const SPEC_PANELS: [&str; 13] = [
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
];

fn panel<'a>(d: &'a Value, title: &str) -> &'a Value {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"))
}

#[test]
fn dashboard_has_the_13_panels_of_the_spec_first_then_the_operations_panels() {
    let d = dashboard();
    let panels = d["panels"].as_array().unwrap();
    assert_eq!(panels.len(), 32);
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles[..13], SPEC_PANELS);
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "unique panel ids");
        assert!(!exprs(p).is_empty(), "{} has no query", p["title"]);
    }
    // The cache hit rate gauge: red below 0.5, yellow below 0.8, green above.
    let gauge = panel(&d, "Embedding cache hit rate");
    assert_eq!(gauge["type"], "gauge");
    let steps = &gauge["fieldConfig"]["defaults"]["thresholds"]["steps"];
    assert_eq!(steps[0]["color"], "red");
    assert_eq!(steps[1]["color"], "yellow");
    assert_eq!(steps[1]["value"], 0.5);
    assert_eq!(steps[2]["color"], "green");
    assert_eq!(steps[2]["value"], 0.8);
    // Percentiles asked for by the spec.
    let search = exprs(panel(&d, "Semantic search latency p50 / p95 / p99")).join(" ");
    for q in ["0.5", "0.95", "0.99"] {
        assert!(search.contains(&format!("histogram_quantile({q},")), "{q}");
    }
    assert!(search.contains(r#"operation="search""#));
    // The validation failure ratio divides audits by audits, not field failures by writes.
    let ratio = exprs(panel(&d, "Validation failure ratio")).join(" ");
    assert!(
        ratio.contains("datastorage_audits_rejected_total"),
        "{ratio}"
    );
    assert!(
        !ratio.contains("datastorage_validation_failures_total"),
        "{ratio}"
    );
}

#[test]
fn every_query_is_scoped_by_the_cluster_namespace_and_job_variables() {
    let d = dashboard();
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "cluster", "namespace", "job"]);
    let selector = Regex::new(r"\b((?:datastorage|process)_[a-z0-9_]+|up)\b(\{[^}]*\})?").unwrap();
    let mut checked = 0;
    for p in d["panels"].as_array().unwrap() {
        for e in exprs(p) {
            for c in selector.captures_iter(&e) {
                let labels = c.get(2).map_or("", |m| m.as_str());
                for want in [
                    r#"cluster=~"$cluster""#,
                    r#"namespace=~"$namespace""#,
                    r#"job=~"$job""#,
                ] {
                    assert!(
                        labels.contains(want),
                        "{}: {} lacks {want}",
                        p["title"],
                        &c[0]
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "{checked}");
}

/// (panel, alert, threshold): the panel's red/orange step is the alert's threshold, and the alert's expression
/// compares against that number.
const THRESHOLDS: [(&str, &str, f64, &str); 8] = [
    ("Write error rate", "HighWriteErrorRate", 0.05, "> 0.05"),
    ("Query error rate", "HighQueryErrorRate", 0.05, "> 0.05"),
    (
        "Semantic search latency p50 / p95 / p99",
        "SlowSemanticSearch",
        0.1,
        "> 0.1",
    ),
    ("Embedding cache hit rate", "LowCacheHitRate", 0.5, "< 0.5"),
    (
        "Database pool saturation",
        "DatabasePoolSaturated",
        0.9,
        ">= 0.9",
    ),
    ("Leader", "DatastorageNoLeader", 1.0, "< 1"),
    ("Fallback to row-only writes", "VectorDegraded", 1.0, "> 0"),
    ("Audits rejected", "AuditsRejected", 1.0, "> 0"),
];

#[test]
fn thresholds_are_the_alerts_thresholds() {
    let d = dashboard();
    let alerts: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_path("config/prometheus/alerts.yaml")).unwrap(),
    )
    .unwrap();
    let expr = |name: &str| -> String {
        alerts["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == name)
            .unwrap_or_else(|| panic!("no alert {name}"))["expr"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (title, alert, value, comparison) in THRESHOLDS {
        let steps = panel(&d, title)["fieldConfig"]["defaults"]["thresholds"]["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("{title} has no thresholds"))
            .clone();
        assert!(
            steps.iter().any(|s| s["value"].as_f64() == Some(value)),
            "{title}: no threshold step at {value}: {steps:?}"
        );
        assert!(
            expr(alert).contains(comparison),
            "{alert} does not compare {comparison}"
        );
    }
    // Stat panels of the states the critical alerts watch: red at 0.
    for title in ["Replicas up", "Leader", "Store ready"] {
        let steps = &panel(&d, title)["fieldConfig"]["defaults"]["thresholds"]["steps"];
        assert_eq!(steps[0]["color"], "red", "{title}");
        assert_eq!(steps[1]["value"], 1.0, "{title}");
    }
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
    // Every exported family is charted (a histogram through its `_bucket` series).
    let families: Vec<String> = exposition()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE datastorage_"))
        .map(|l| format!("datastorage_{}", l.split(' ').next().unwrap()))
        .collect();
    assert!(families.len() >= 24, "{families:?}");
    let uncharted: Vec<&String> = families
        .iter()
        .filter(|f| !used.iter().any(|u| u == *f || *u == format!("{f}_bucket")))
        .collect();
    assert!(
        uncharted.is_empty(),
        "exported but never charted: {uncharted:?}"
    );
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
            "config/grafana/remediation-effectiveness-dashboard.json",
            "charts/datastorage-operator/files/remediation-effectiveness-dashboard.json",
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

/// A real Prometheus server (`hack/kubebins/build.sh` builds it) scraping `target` every second as job
/// `datastorage-operator` with the target label `namespace`, in a temporary directory; killed on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

const JOB: &str = "datastorage-operator";

impl Prometheus {
    async fn start(target: std::net::SocketAddr, namespace: &str) -> Self {
        let bin = kubebin("prometheus");
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: run hack/kubebins/build.sh"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            json!({
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                "scrape_configs": [{
                    "job_name": JOB,
                    "static_configs": [{"targets": [target.to_string()], "labels": {"namespace": namespace}}],
                }],
            })
            .to_string(),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = std::process::Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let prom = Self {
            child,
            url,
            _dir: dir,
        };
        let ready = format!("{}/-/ready", prom.url);
        eventually(Duration::from_secs(60), "Prometheus to be ready", || {
            let ready = ready.clone();
            async move {
                let r = reqwest::get(&ready).await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        prom
    }

    /// `/api/v1/<path>` with form parameters; the `data` of a successful answer.
    async fn api(&self, path: &str, params: &[(&str, String)]) -> Value {
        let resp: Value = reqwest::Client::new()
            .post(format!("{}/api/v1/{path}", self.url))
            .form(params)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(resp["status"], "success", "{path} {params:?}: {resp}");
        resp["data"].clone()
    }

    /// The instant value of a scalar-like expression (the first series), `None` when it has no series.
    async fn value(&self, expr: &str) -> Option<f64> {
        let data = self.api("query", &[("query", expr.to_string())]).await;
        data["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Grafana's `label_values(selector, label)`: the values of `label` on the series `selector` matches.
    async fn label_values(&self, selector: &str, label: &str) -> BTreeSet<String> {
        let data = self
            .api("series", &[("match[]", selector.to_string())])
            .await;
        data.as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s[label].as_str().map(String::from))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `label_values(<selector>, <label>)` of a Grafana variable query.
fn parse_label_values(query: &str) -> (String, String) {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not a label_values query: {query}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    (selector.trim().to_string(), label.trim().to_string())
}

/// Expands Grafana's variables the way Grafana does for a single selected value (regex-escaped) or All (the
/// variable's `allValue`), and its built-ins for a range query of `range_s` seconds with a 1 s step and a 1 s
/// scrape interval (`$__rate_interval` = max(4 × scrape interval, step + scrape interval)).
fn expand(expr: &str, vars: &[(&str, String)], range_s: u64) -> String {
    let mut out = expr
        .replace("$__rate_interval", "4s")
        .replace("$__range", &format!("{range_s}s"))
        .replace("$__interval", "1s");
    for (name, value) in vars {
        out = out.replace(&format!("${name}"), value);
    }
    assert!(!out.contains('$'), "unexpanded variable in {out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_returns_series_from_a_real_prometheus_scraping_the_operator() {
    let env = TestEnv::new("dashboard").await;
    let ops_addr = env.operator.as_ref().unwrap().ops_addr;
    let prom = Prometheus::start(ops_addr, &env.ns).await;
    let started = Instant::now();
    let wait = Duration::from_secs(60);
    // A baseline before the workload, so every rate sees the counters move.
    eventually(wait, "two scrapes before the workload", || {
        let (prom, ns) = (&prom, &env.ns);
        async move {
            let n = prom
                .value(&format!(r#"count_over_time(up{{namespace="{ns}"}}[1m])"#))
                .await?;
            (n >= 2.0).then_some(())
        }
    })
    .await;

    // The workload: stored audits (two share an embedding text: a cache hit), one carrying a secret (a
    // redaction), one rejected; then a list, a get and a search through the query API.
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("d-1", "rr-d-1", "")),
    );
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("d-2", "rr-d-2", "")),
    );
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml(
            "d-secret",
            "rr-d-3",
            "  errorMessage: \"login failed: password=hunter2hunter2 for db\"\n",
        )),
    );
    let bad = audit_yaml("d-bad", "rr-d-4", "")
        .replace(
            "startTime: \"2026-01-10T10:00:00Z\"",
            // In the future: a rule only the operator checks (the API server refuses a blank severity itself).
            "startTime: \"2099-01-10T10:00:00Z\"",
        )
        .replace(
            "endTime: \"2026-01-10T10:00:42Z\"",
            "endTime: \"2099-01-10T10:00:42Z\"",
        );
    env.kubectl(&["apply", "-f", "-"], Some(&bad));
    let stored = env.wait_state("d-1", "Persisted", wait).await;
    env.wait_state("d-2", "Persisted", wait).await;
    env.wait_state("d-secret", "Persisted", wait).await;
    env.wait_state("d-bad", "Rejected", wait).await;

    let (token, binding) = env.cluster_admin_token("dashboard-reader");
    let http = reqwest::Client::new();
    let base = env.api_url();
    let id = stored["status"]["auditId"].as_i64().unwrap();
    // A few rounds, so the rates span several scrapes.
    for _ in 0..3 {
        let list = http
            .get(format!("{base}/api/v1/audits?namespace={}", env.ns))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(list.status(), 200);
        let get = http
            .get(format!("{base}/api/v1/audits/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200);
        let search = http
            .post(format!("{base}/api/v1/audits/search"))
            .bearer_auth(&token)
            .json(&json!({"query": "pod keeps getting OOM killed"}))
            .send()
            .await
            .unwrap();
        assert_eq!(search.status(), 200);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }

    // Prometheus has scraped the end of the workload.
    let scoped = format!(r#"namespace="{}",job="{JOB}""#, env.ns);
    eventually(wait, "Prometheus to scrape the workload", || {
        let (prom, scoped) = (&prom, &scoped);
        async move {
            let searches = prom
                .value(&format!(
                    r#"sum(datastorage_query_total{{{scoped},operation="search",status="success"}})"#
                ))
                .await?;
            let rejected = prom
                .value(&format!("sum(datastorage_audits_rejected_total{{{scoped}}})"))
                .await?;
            (searches >= 3.0 && rejected >= 1.0).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The variables, as Grafana resolves them: no cluster label here (All), this namespace, this job.
    let d = dashboard();
    let var = |name: &str| -> Value {
        d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
            .clone()
    };
    let all = |name: &str| var(name)["allValue"].as_str().unwrap().to_string();
    let mut vars: Vec<(&str, String)> = Vec::new();
    for (name, want) in [
        ("cluster", None),
        ("namespace", Some(env.ns.clone())),
        ("job", Some(JOB.to_string())),
    ] {
        let v = var(name);
        let (selector, label) = parse_label_values(v["query"]["query"].as_str().unwrap());
        let selector = expand(&selector, &vars, 1);
        let values = prom.label_values(&selector, &label).await;
        match want {
            None => {
                assert!(values.is_empty(), "{name}: {values:?}");
                vars.push((name, all(name)));
            }
            Some(want) => {
                assert!(values.contains(&want), "{name}: {want} not in {values:?}");
                // Namespace and job names are DNS labels: nothing for Grafana's regex escaping to change.
                assert!(
                    want.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                    "{want}"
                );
                vars.push((name, want));
            }
        }
    }

    // Every target of every panel, as a range query over the test: at least one series with a number.
    let end = Instant::now();
    let range_s = (end - started).as_secs().max(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut empty = Vec::new();
    let mut queried = 0;
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = expand(t["expr"].as_str().unwrap(), &vars, range_s);
            let data = prom
                .api(
                    "query_range",
                    &[
                        ("query", expr.clone()),
                        ("start", format!("{:.3}", now - range_s as f64)),
                        ("end", format!("{now:.3}")),
                        ("step", "1".into()),
                    ],
                )
                .await;
            queried += 1;
            let series = data["result"].as_array().unwrap();
            let numbers = series
                .iter()
                .flat_map(|s| s["values"].as_array().unwrap())
                .filter(|v| {
                    v[1].as_str()
                        .unwrap()
                        .parse::<f64>()
                        .is_ok_and(f64::is_finite)
                })
                .count();
            if numbers == 0 {
                empty.push(format!(
                    "{} [{}] ({} series, none with a number): {expr}",
                    p["title"],
                    t["refId"],
                    series.len()
                ));
            }
        }
    }
    assert!(empty.is_empty(), "empty panels:\n{}", empty.join("\n"));
    assert!(queried >= 30, "{queried}");
    eprintln!("{queried} targets of 30 panels all returned numbers");

    let _ = kubectl_raw(&["delete", "clusterrolebinding", &binding], None);
    drop(prom);
    drop(env);
}
