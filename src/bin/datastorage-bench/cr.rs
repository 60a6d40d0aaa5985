//! `cr_to_persisted`: RemediationAudit applied → `status.state: Persisted` on the real control plane
//! (`hack/cp.sh`), with the operator running in this process (release build, the local MiniLM, so every audit
//! gets a fresh embedding: all texts are distinct), against the API server's floor measured in the same run: the
//! bare apply + status patch of a trivial CR (a bench-only CRD with a status subresource and no controller).
//!
//! - latency at moderate load: CRs applied at a fixed rate (open loop), each timed from just before its apply to
//!   the moment a watch on the namespace sees `status.state == Persisted`; p50 and p95.
//! - sustained throughput: N CRs applied with bounded concurrency, CRs/s until the watch has seen all persisted.
//!
//! Where the time goes is printed per phase: per-CR splits (apply call, apply → finalizer seen, finalizer →
//! Persisted seen) and the operator's own histograms (reconcile, embedding call, write transaction).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Client, Config, CustomResourceExt};
use serde_json::{Value, json};

use datastorage::controller::audit::FINALIZER;
use datastorage::crd::{DataStorage, RemediationAudit, StorePhase};
use datastorage::operator;

use super::{Bench, percentile, spec};

const NS: &str = "bench-cr";
const DATASTORAGE: &str = "bench";
const SCHEMA: &str = "bench_cr";
const MANAGER: &str = "datastorage-bench";
const TRIVIAL_GROUP: &str = "bench.datastorage.kubernaut.ai";
const TRIVIAL_KIND: &str = "BenchItem";
const TRIVIAL_PLURAL: &str = "benchitems";

/// Sizes of one run. Overridable for diagnosis (the values used go into the results' params):
/// `BENCH_CR_RATE` (CRs/s, latency phases), `BENCH_CR_SECS` (seconds per latency phase), `BENCH_CR_N` (CRs per
/// throughput phase), `BENCH_CR_EMBED_TIMEOUT` (the DataStorage's `embedding.timeout`; default: its default).
pub struct Params {
    /// CRs per second in the latency phases.
    pub rate: f64,
    /// Seconds each latency phase lasts.
    pub latency_secs: f64,
    /// CRs in each throughput phase.
    pub throughput_n: usize,
    /// Applies in flight in the throughput phases.
    pub concurrency: usize,
    /// `spec.embedding.timeout` of the bench's DataStorage (`None`: the CRD's default).
    pub embed_timeout: Option<String>,
}

impl Params {
    pub fn new(large: bool) -> anyhow::Result<Self> {
        fn env<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
                Err(_) => Ok(default),
            }
        }
        Ok(Self {
            rate: env("BENCH_CR_RATE", 10.0)?,
            latency_secs: env("BENCH_CR_SECS", if large { 60.0 } else { 30.0 })?,
            throughput_n: env("BENCH_CR_N", if large { 5_000 } else { 1_500 })?,
            concurrency: 16,
            embed_timeout: std::env::var("BENCH_CR_EMBED_TIMEOUT").ok(),
        })
    }
}

/// What the watch saw of one object, by name.
#[derive(Default, Clone, Copy)]
struct Seen {
    finalizer: Option<Instant>,
    persisted: Option<Instant>,
    /// `status.embedding` was `Stored` in the first event that showed `Persisted` (the vector was written in the
    /// same transaction, within the operator's embedding time budget).
    embedded_in_write: bool,
}

type SeenMap = Arc<Mutex<HashMap<String, Seen>>>;

/// One apply (and, for the trivial CR, its status patch) as the load generator saw it.
struct Sample {
    name: String,
    sent: Instant,
    returned: Instant,
}

/// The two kinds under test: the real RemediationAudit (the operator persists it) and the trivial CR (the load
/// generator patches its status itself, right after applying it).
#[derive(Clone)]
struct Target {
    api: Api<DynamicObject>,
    resource: ApiResource,
    seen: SeenMap,
    trivial: bool,
}

impl Target {
    async fn apply(&self, name: String, i: usize) -> anyhow::Result<Sample> {
        let body = if self.trivial {
            json!({
                "apiVersion": self.resource.api_version, "kind": self.resource.kind,
                "metadata": {"name": name}, "spec": {"n": i},
            })
        } else {
            json!({
                "apiVersion": self.resource.api_version, "kind": self.resource.kind,
                "metadata": {"name": name}, "spec": spec(i),
            })
        };
        let sent = Instant::now();
        self.api
            .patch(&name, &PatchParams::apply(MANAGER), &Patch::Apply(&body))
            .await
            .with_context(|| format!("apply {}/{name}", self.resource.kind))?;
        if self.trivial {
            let status = json!({
                "apiVersion": self.resource.api_version, "kind": self.resource.kind,
                "status": {"state": "Persisted"},
            });
            self.api
                .patch_status(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&status),
                )
                .await
                .with_context(|| format!("status patch {}/{name}", self.resource.kind))?;
        }
        Ok(Sample {
            name,
            sent,
            returned: Instant::now(),
        })
    }

    /// Waits until the watch has seen every name persisted; prints progress every 5 s.
    async fn wait_persisted(&self, names: &[String], timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last_print = Instant::now();
        loop {
            let done = {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                names
                    .iter()
                    .filter(|n| seen.get(*n).is_some_and(|s| s.persisted.is_some()))
                    .count()
            };
            if done == names.len() {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "only {done}/{} {} persisted after {timeout:?}",
                names.len(),
                self.resource.kind
            );
            if last_print.elapsed() >= Duration::from_secs(5) {
                println!("    {done}/{} persisted", names.len());
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn seen(&self, name: &str) -> Seen {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(name).copied().unwrap_or_default()
    }
}

/// Watches `api` and records, per name, when the finalizer and `state: Persisted` were first seen. Resolves the
/// returned receiver once the initial list is done (so nothing applied afterwards can be missed).
fn watch(
    api: Api<DynamicObject>,
    seen: SeenMap,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            let obj = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    println!("    watch error (retrying): {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let now = Instant::now();
            let Some(name) = obj.metadata.name.clone() else {
                continue;
            };
            let has_finalizer = obj
                .metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| f.iter().any(|x| x == FINALIZER));
            let status = &obj.data["status"];
            let mut map = seen.lock().unwrap_or_else(|p| p.into_inner());
            let entry = map.entry(name).or_default();
            if has_finalizer && entry.finalizer.is_none() {
                entry.finalizer = Some(now);
            }
            if status["state"] == "Persisted" && entry.persisted.is_none() {
                entry.persisted = Some(now);
                entry.embedded_in_write = status["embedding"] == "Stored";
            }
        }
    });
    (task, ready_rx)
}

/// Applies `n` objects at `rate` per second (open loop: a slow apply does not delay the next one).
async fn paced(
    target: &Target,
    prefix: &str,
    first: usize,
    n: usize,
    rate: f64,
) -> anyhow::Result<Vec<Sample>> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(n);
    let started = Instant::now();
    let mut last_print = Instant::now();
    for k in 0..n {
        tick.tick().await;
        let t = target.clone();
        let name = format!("{prefix}-{k}");
        handles.push(tokio::spawn(async move { t.apply(name, first + k).await }));
        if last_print.elapsed() >= Duration::from_secs(10) {
            println!(
                "    {k}/{n} applied ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
    }
    let mut samples = Vec::with_capacity(n);
    for h in handles {
        samples.push(h.await??);
    }
    Ok(samples)
}

/// Applies `n` objects with at most `concurrency` applies in flight.
async fn bounded(
    target: &Target,
    prefix: &str,
    first: usize,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Sample>> {
    futures::stream::iter(0..n)
        .map(|k| {
            let t = target.clone();
            let name = format!("{prefix}-{k}");
            tokio::spawn(async move { t.apply(name, first + k).await })
        })
        .buffer_unordered(concurrency)
        .map(|r| r.map_err(anyhow::Error::from).and_then(|s| s))
        .try_collect()
        .await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Per-CR latencies (ms) of one phase: apply → Persisted seen, and its parts.
struct Latencies {
    total: Vec<f64>,
    apply_call: Vec<f64>,
    to_finalizer: Vec<f64>,
    finalizer_to_persisted: Vec<f64>,
    embedded_in_write: usize,
}

fn latencies(target: &Target, samples: &[Sample]) -> Latencies {
    let mut l = Latencies {
        total: Vec::new(),
        apply_call: Vec::new(),
        to_finalizer: Vec::new(),
        finalizer_to_persisted: Vec::new(),
        embedded_in_write: 0,
    };
    for s in samples {
        let seen = target.seen(&s.name);
        let Some(persisted) = seen.persisted else {
            continue;
        };
        l.total
            .push(ms(persisted.saturating_duration_since(s.sent)));
        l.apply_call
            .push(ms(s.returned.saturating_duration_since(s.sent)));
        if let Some(f) = seen.finalizer {
            l.to_finalizer.push(ms(f.saturating_duration_since(s.sent)));
            l.finalizer_to_persisted
                .push(ms(persisted.saturating_duration_since(f)));
        }
        if seen.embedded_in_write {
            l.embedded_in_write += 1;
        }
    }
    l.total = sorted(l.total);
    l.apply_call = sorted(l.apply_call);
    l.to_finalizer = sorted(l.to_finalizer);
    l.finalizer_to_persisted = sorted(l.finalizer_to_persisted);
    l
}

/// Per window of apply time: how many were embedded in the write, of how many, and their p95 latency.
fn windows(target: &Target, samples: &[Sample], width: Duration) -> String {
    let Some(start) = samples.iter().map(|s| s.sent).min() else {
        return String::new();
    };
    let mut buckets: Vec<(usize, usize, Vec<f64>)> = Vec::new();
    for s in samples {
        let idx =
            (s.sent.saturating_duration_since(start).as_secs_f64() / width.as_secs_f64()) as usize;
        if buckets.len() <= idx {
            buckets.resize_with(idx + 1, || (0, 0, Vec::new()));
        }
        let seen = target.seen(&s.name);
        let b = &mut buckets[idx];
        b.1 += 1;
        if seen.embedded_in_write {
            b.0 += 1;
        }
        if let Some(p) = seen.persisted {
            b.2.push(ms(p.saturating_duration_since(s.sent)));
        }
    }
    buckets
        .into_iter()
        .map(|(e, n, l)| format!("{e}/{n} {:.0}", percentile(&sorted(l), 0.95)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn p50_p95(v: &[f64]) -> String {
    format!(
        "p50 {:.1} ms, p95 {:.1} ms",
        percentile(v, 0.5),
        percentile(v, 0.95)
    )
}

/// One histogram's state: count, sum (s), cumulative buckets (upper bound s, count).
#[derive(Clone, Default)]
struct HistState {
    count: u64,
    sum: f64,
    buckets: Vec<(f64, u64)>,
}

/// Histograms and counters of the in-process operator, to say where the time goes. Keys: `name{label=value,…}`.
#[derive(Clone, Default)]
struct MetricsSnapshot {
    histograms: HashMap<String, HistState>,
    counters: HashMap<String, f64>,
}

fn snapshot(registry: &prometheus::Registry) -> MetricsSnapshot {
    let mut s = MetricsSnapshot::default();
    for family in registry.gather() {
        for m in family.get_metric() {
            let labels: Vec<String> = m
                .get_label()
                .iter()
                .map(|l| format!("{}={}", l.name(), l.value()))
                .collect();
            let key = format!("{}{{{}}}", family.name(), labels.join(","));
            match family.get_field_type() {
                prometheus::proto::MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let buckets = h
                        .get_bucket()
                        .iter()
                        .map(|b| (b.upper_bound(), b.cumulative_count()))
                        .collect();
                    s.histograms.insert(
                        key,
                        HistState {
                            count: h.sample_count(),
                            sum: h.sample_sum(),
                            buckets,
                        },
                    );
                }
                prometheus::proto::MetricType::COUNTER => {
                    s.counters.insert(key, m.get_counter().value());
                }
                _ => {}
            }
        }
    }
    s
}

/// Count, mean (ms) and the upper bound (ms) of the bucket holding the p95, of a histogram between two snapshots.
fn hist_delta(
    before: &MetricsSnapshot,
    after: &MetricsSnapshot,
    key: &str,
) -> Option<(u64, f64, f64)> {
    let a = after.histograms.get(key)?;
    let b = before.histograms.get(key).cloned().unwrap_or_default();
    let count = a.count.saturating_sub(b.count);
    if count == 0 {
        return Some((0, 0.0, 0.0));
    }
    let mean = (a.sum - b.sum) / count as f64 * 1000.0;
    let want = (count as f64 * 0.95).ceil() as u64;
    let mut p95 = f64::INFINITY;
    for (idx, (ub, cum)) in a.buckets.iter().enumerate() {
        let prev = b.buckets.get(idx).map_or(0, |x| x.1);
        if cum.saturating_sub(prev) >= want {
            p95 = ub * 1000.0;
            break;
        }
    }
    Some((count, mean, p95))
}

fn counter_delta(before: &MetricsSnapshot, after: &MetricsSnapshot, key: &str) -> f64 {
    after.counters.get(key).copied().unwrap_or(0.0)
        - before.counters.get(key).copied().unwrap_or(0.0)
}

/// Prints (and returns as JSON) what the operator did between two snapshots, for `n` audits.
fn operator_breakdown(before: &MetricsSnapshot, after: &MetricsSnapshot, n: usize) -> Value {
    let mut out = serde_json::Map::new();
    for (label, key) in [
        (
            "reconcile",
            "datastorage_reconcile_duration_seconds{controller=remediationaudit}",
        ),
        (
            "embedding_call",
            "datastorage_embedding_generation_duration_seconds{}",
        ),
        (
            "write_transaction",
            "datastorage_write_duration_seconds{table=audits}",
        ),
    ] {
        if let Some((count, mean, p95)) = hist_delta(before, after, key) {
            println!(
                "    operator {label}: {count} ({:.2} per audit), mean {mean:.1} ms, p95 ≤ {p95:.0} ms (bucket)",
                count as f64 / n.max(1) as f64
            );
            out.insert(
                label.into(),
                json!({"count": count, "mean_ms": mean, "p95_bucket_ms": p95}),
            );
        }
    }
    let misses = counter_delta(before, after, "datastorage_cache_misses_total{}");
    let hits = counter_delta(before, after, "datastorage_cache_hits_total{}");
    let fallbacks = counter_delta(before, after, "datastorage_fallback_mode_total{}");
    let timeouts = counter_delta(
        before,
        after,
        "datastorage_dualwrite_failure_total{reason=timeout}",
    );
    let backfilled = counter_delta(before, after, "datastorage_backfill_embedded_total{}");
    let rows_stored = counter_delta(
        before,
        after,
        "datastorage_write_total{status=success,table=audits}",
    );
    let rows_unchanged = counter_delta(
        before,
        after,
        "datastorage_write_total{status=unchanged,table=audits}",
    );
    let reconcile_errors = counter_delta(
        before,
        after,
        "datastorage_reconcile_total{controller=remediationaudit,result=error}",
    );
    println!(
        "    operator embedding cache: {misses} misses, {hits} hits; row-only fallbacks: {fallbacks} ({timeouts} \
         budget timeouts); vectors added by the backfill: {backfilled}\n    operator writes: {rows_stored} stored, \
         {rows_unchanged} unchanged (a repeated write of the same generation); reconcile errors: {reconcile_errors}"
    );
    out.insert("cache_misses".into(), json!(misses));
    out.insert("cache_hits".into(), json!(hits));
    out.insert("row_only_fallbacks".into(), json!(fallbacks));
    out.insert("embed_budget_timeouts".into(), json!(timeouts));
    out.insert("backfill_embedded".into(), json!(backfilled));
    out.insert("rows_stored".into(), json!(rows_stored));
    out.insert("rows_unchanged".into(), json!(rows_unchanged));
    out.insert("reconcile_errors".into(), json!(reconcile_errors));
    Value::Object(out)
}

/// `apiserver_request_total` for `resource` from the API server's /metrics, summed by `verb[/subresource]`.
async fn apiserver_requests(
    client: &Client,
    resource: &str,
) -> anyhow::Result<HashMap<String, f64>> {
    let text = client
        .request_text(axum::http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let label = |line: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        line.find(&key)
            .and_then(|i| {
                let rest = &line[i + key.len()..];
                rest.find('"').map(|j| rest[..j].to_string())
            })
            .unwrap_or_default()
    };
    let want = format!("resource=\"{resource}\"");
    let mut out = HashMap::new();
    for line in text.lines() {
        if !line.starts_with("apiserver_request_total{") || !line.contains(&want) {
            continue;
        }
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let sub = label(line, "subresource");
        let key = if sub.is_empty() {
            label(line, "verb")
        } else {
            format!("{}/{sub}", label(line, "verb"))
        };
        *out.entry(key).or_insert(0.0) += value;
    }
    Ok(out)
}

/// Prints (and returns) the API server requests per object between two scrapes, e.g. `PATCH/status: 2.1`.
fn requests_per_object(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    n: usize,
    what: &str,
) -> Value {
    let mut keys: Vec<&String> = after.keys().collect();
    keys.sort();
    let mut out = serde_json::Map::new();
    let mut parts = Vec::new();
    for k in keys {
        let d = after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
        if d > 0.0 && k != "WATCH" {
            let per = d / n.max(1) as f64;
            parts.push(format!("{k} {per:.2}"));
            out.insert(k.clone(), json!(per));
        }
    }
    println!("    API server requests per {what}: {}", parts.join(", "));
    Value::Object(out)
}

async fn client(kubeconfig: &str) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Server-side applies the CRD and waits until it is established.
async fn install_crd(client: &Client, crd: &CustomResourceDefinition) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(crd),
    )
    .await
    .with_context(|| format!("apply CRD {name}"))?;
    let started = Instant::now();
    loop {
        let established = api.get(&name).await?.status.is_some_and(|s| {
            s.conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "CRD {name} not established after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The trivial CR's definition: any spec, any status, a status subresource, no controller.
fn trivial_crd() -> anyhow::Result<CustomResourceDefinition> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{TRIVIAL_PLURAL}.{TRIVIAL_GROUP}")},
        "spec": {
            "group": TRIVIAL_GROUP,
            "scope": "Namespaced",
            "names": {"plural": TRIVIAL_PLURAL, "singular": "benchitem", "kind": TRIVIAL_KIND},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                }}},
            }],
        },
    }))?)
}

/// Namespace, Secret with the database URL, and a DataStorage using the local model with its defaults.
async fn install_datastorage(
    client: &Client,
    database_url: &str,
    embed_timeout: Option<&str>,
) -> anyhow::Result<()> {
    let pp = PatchParams::apply(MANAGER).force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            NS,
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
            ),
        )
        .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .patch(
            "db",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                "stringData": {"url": database_url},
            })),
        )
        .await?;
    let mut embedding = json!({"provider": "Local"});
    if let Some(t) = embed_timeout {
        embedding["timeout"] = json!(t);
    }
    let stores: Api<DataStorage> = Api::all(client.clone());
    stores
        .patch(
            DATASTORAGE,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "datastorage.kubernaut.ai/v1alpha1", "kind": "DataStorage",
                "metadata": {"name": DATASTORAGE},
                "spec": {
                    "database": {"urlSecretRef": {"name": "db", "namespace": NS, "key": "url"}},
                    "schema": SCHEMA,
                    "embedding": embedding,
                },
            })),
        )
        .await?;
    Ok(())
}

async fn wait_ready(client: &Client) -> anyhow::Result<()> {
    let stores: Api<DataStorage> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let ds = stores.get(DATASTORAGE).await?;
        if ds.status.as_ref().and_then(|s| s.phase) == Some(StorePhase::Ready) {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(180),
            "DataStorage {DATASTORAGE} not Ready after 180 s: {:?}",
            ds.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs every phase against the control plane at `kubeconfig`; the operator stops when this returns.
pub async fn cr_to_persisted(
    bench: &mut Bench,
    kubeconfig: &str,
    database_url: &str,
    model_dir: &str,
    p: &Params,
) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    // The load generator and the operator get separate clients (connection pools), as separate processes would.
    let bench_client = client(kubeconfig).await?;
    let operator_client = client(kubeconfig).await?;

    let started = Instant::now();
    install_crd(&bench_client, &RemediationAudit::crd()).await?;
    install_crd(&bench_client, &DataStorage::crd()).await?;
    install_crd(&bench_client, &trivial_crd()?).await?;
    install_datastorage(&bench_client, database_url, p.embed_timeout.as_deref()).await?;
    let running = operator::start(
        operator_client,
        // Checkpoints (every 300 s in the chart) take one short lock per interval: none within a bench run.
        operator::Options {
            namespace: Some(NS.into()),
            model_dir: Some(model_dir.into()),
            ..operator::Options::local(DATASTORAGE)
        },
    )
    .await?;
    // Abort the operator however this function ends.
    struct Abort(tokio::task::AbortHandle);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _abort = Abort(running.task.abort_handle());
    wait_ready(&bench_client).await?;
    println!(
        "  CRDs, DataStorage and operator ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let audit_resource = ApiResource::erase::<RemediationAudit>(&());
    let trivial_resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(TRIVIAL_GROUP, "v1", TRIVIAL_KIND),
        TRIVIAL_PLURAL,
    );
    let mut targets = Vec::new();
    let mut watches = Vec::new();
    for (resource, trivial) in [(audit_resource, false), (trivial_resource, true)] {
        let api = Api::namespaced_with(bench_client.clone(), NS, &resource);
        let seen: SeenMap = Arc::default();
        let (task, ready) = watch(api.clone(), seen.clone());
        ready.await.context("watch ended before its initial list")?;
        watches.push(task);
        targets.push(Target {
            api,
            resource,
            seen,
            trivial,
        });
    }
    let result = phases(bench, &bench_client, &targets, &running, p).await;
    for w in watches {
        w.abort();
    }
    result
}

async fn phases(
    bench: &mut Bench,
    client: &Client,
    targets: &[Target],
    running: &operator::Running,
    p: &Params,
) -> anyhow::Result<()> {
    let [audits, trivial] = targets else {
        anyhow::bail!("expected two targets");
    };
    let registry = &running.context.metrics.registry;
    // Every spec index is used once in the whole run: distinct texts, so no embedding is a cache hit.
    let mut next_index = 0usize;
    let mut take = |n: usize| {
        let first = next_index;
        next_index += n;
        first
    };

    // Warm-up (connections, the model's first batches, the apiserver's caches); not measured.
    for t in [audits, trivial] {
        let samples = bounded(t, "warmup", take(20), 20, 4).await?;
        let names: Vec<String> = samples.into_iter().map(|s| s.name).collect();
        t.wait_persisted(&names, Duration::from_secs(60)).await?;
    }
    println!("  warm-up done");

    // Latency at a fixed moderate rate.
    let n_lat = (p.rate * p.latency_secs).round() as usize;
    println!(
        "  latency, trivial CR (apply + status patch): {n_lat} at {}/s",
        p.rate
    );
    let samples = paced(trivial, "lat", take(n_lat), n_lat, p.rate).await?;
    let names: Vec<String> = samples.iter().map(|s| s.name.clone()).collect();
    trivial
        .wait_persisted(&names, Duration::from_secs(60))
        .await?;
    let base = latencies(trivial, &samples);
    println!(
        "    apply → Persisted seen: {}; apply + status patch calls: {}",
        p50_p95(&base.total),
        p50_p95(&base.apply_call)
    );

    println!(
        "  latency, RemediationAudit (operator, fresh embeddings): {n_lat} at {}/s",
        p.rate
    );
    let api_before = apiserver_requests(client, "remediationaudits").await?;
    let before = snapshot(registry);
    let samples = paced(audits, "lat", take(n_lat), n_lat, p.rate).await?;
    let names: Vec<String> = samples.iter().map(|s| s.name.clone()).collect();
    audits
        .wait_persisted(&names, Duration::from_secs(120))
        .await?;
    let after = snapshot(registry);
    let real = latencies(audits, &samples);
    println!(
        "    apply → Persisted seen: {}\n    apply call: {}\n    apply → finalizer seen: {}\n    finalizer seen → \
         Persisted seen: {}\n    embedded in the write: {}/{}",
        p50_p95(&real.total),
        p50_p95(&real.apply_call),
        p50_p95(&real.to_finalizer),
        p50_p95(&real.finalizer_to_persisted),
        real.embedded_in_write,
        real.total.len()
    );
    println!(
        "    per 5 s of the run (embedded in the write / applied, p95 ms): {}",
        windows(audits, &samples, Duration::from_secs(5))
    );
    let ops = operator_breakdown(&before, &after, n_lat);
    let api_after = apiserver_requests(client, "remediationaudits").await?;
    let requests = requests_per_object(&api_before, &api_after, n_lat, "RemediationAudit");
    let params = json!({
        "rate_per_s": p.rate, "crs": n_lat, "duration_s": p.latency_secs,
        "embedded_in_write": real.embedded_in_write,
        "apply_call_p50_ms": percentile(&real.apply_call, 0.5),
        "apply_to_finalizer_p50_ms": percentile(&real.to_finalizer, 0.5),
        "apply_to_finalizer_p95_ms": percentile(&real.to_finalizer, 0.95),
        "finalizer_to_persisted_p50_ms": percentile(&real.finalizer_to_persisted, 0.5),
        "finalizer_to_persisted_p95_ms": percentile(&real.finalizer_to_persisted, 0.95),
        "operator": ops, "apiserver_requests_per_audit": requests,
    });
    for (name, q) in [("cr_to_persisted_p50", 0.5), ("cr_to_persisted_p95", 0.95)] {
        bench.record(
            name,
            percentile(&real.total, q),
            "ms",
            &format!("trivial_cr_apply_status_patch_p{}", (q * 100.0) as u32),
            percentile(&base.total, q),
            "ms",
            params.clone(),
        );
    }

    // Sustained throughput with bounded concurrency.
    let n = p.throughput_n;
    println!(
        "  throughput, trivial CR (apply + status patch): {n}, {} in flight",
        p.concurrency
    );
    let started = Instant::now();
    let samples = bounded(trivial, "tput", take(n), n, p.concurrency).await?;
    let names: Vec<String> = samples.iter().map(|s| s.name.clone()).collect();
    trivial
        .wait_persisted(&names, Duration::from_secs(300))
        .await?;
    let base_rate = rate(trivial, &names, started);
    println!("    {base_rate:.1} CRs/s");

    println!(
        "  throughput, RemediationAudit (operator, fresh embeddings): {n}, {} in flight",
        p.concurrency
    );
    let api_before = apiserver_requests(client, "remediationaudits").await?;
    let before = snapshot(registry);
    let started = Instant::now();
    let samples = bounded(audits, "tput", take(n), n, p.concurrency).await?;
    println!(
        "    all {n} applied in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let names: Vec<String> = samples.iter().map(|s| s.name.clone()).collect();
    audits
        .wait_persisted(&names, Duration::from_secs(600))
        .await?;
    let real_rate = rate(audits, &names, started);
    let after = snapshot(registry);
    let l = latencies(audits, &samples);
    println!(
        "    {real_rate:.1} CRs/s; embedded in the write: {}/{n}; under this load: apply → Persisted seen {}, \
         apply call {}",
        l.embedded_in_write,
        p50_p95(&l.total),
        p50_p95(&l.apply_call)
    );
    let ops = operator_breakdown(&before, &after, n);
    let api_after = apiserver_requests(client, "remediationaudits").await?;
    let requests = requests_per_object(&api_before, &api_after, n, "RemediationAudit");
    bench.record(
        "cr_to_persisted_throughput",
        real_rate,
        "CRs/s",
        "trivial_cr_apply_status_patch",
        base_rate,
        "CRs/s",
        json!({"crs": n, "concurrency": p.concurrency, "embedded_in_write": l.embedded_in_write,
               "latency_under_load_p50_ms": percentile(&l.total, 0.5),
               "latency_under_load_p95_ms": percentile(&l.total, 0.95),
               "apply_call_p50_ms": percentile(&l.apply_call, 0.5),
               "apply_call_p95_ms": percentile(&l.apply_call, 0.95),
               "operator": ops, "apiserver_requests_per_audit": requests}),
    );
    Ok(())
}

/// Objects per second from `started` to the last Persisted the watch saw among `names`.
fn rate(target: &Target, names: &[String], started: Instant) -> f64 {
    let last = names
        .iter()
        .filter_map(|n| target.seen(n).persisted)
        .max()
        .unwrap_or(started);
    let secs = last.saturating_duration_since(started).as_secs_f64();
    if secs > 0.0 {
        names.len() as f64 / secs
    } else {
        0.0
    }
}
