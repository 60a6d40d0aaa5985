//! Embeddings for real: the MiniLM model through the store's semantic search (relevance and filtered recall), a
//! shared Redis cache on a real redis-server, and degradation + backfill with a real HTTP provider that fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::TestDb;
use crate::support::kube::{EnvOptions, TestEnv, audit_yaml, eventually};
use async_trait::async_trait;
use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use chrono::Utc;
use datastorage::audit::{AuditMeta, SanitizeConfig, prepare};
use datastorage::crd::{AuditOutcome, AuditPhase, RemediationAuditSpec};
use datastorage::embed::{
    CacheOptions, CachedEmbedder, EmbedError, EmbedMetrics, Embedder, HashEmbedder, LocalEmbedder,
    LocalOptions,
};
use datastorage::store::search::{AuditFilters, SearchParams};
use datastorage::store::{AuditWrite, EmbeddingRow, WriteOutcome};
use serde_json::{Value, json};

fn model_dir() -> PathBuf {
    PathBuf::from(std::env::var("DATASTORAGE_MODEL_DIR").unwrap_or_else(|_| {
        panic!("DATASTORAGE_MODEL_DIR is not set: export DATASTORAGE_MODEL_DIR=$(hack/python-deps.sh model-dir)")
    }))
}

fn fixture() -> Value {
    serde_json::from_str(include_str!("../fixtures/relevance.json")).unwrap()
}

fn spec_of(a: &Value, i: usize) -> RemediationAuditSpec {
    let s = |k: &str| a[k].as_str().unwrap().to_string();
    RemediationAuditSpec {
        remediation_request_id: format!("rr-rel-{i}"),
        alert_fingerprint: format!("fp-{i}"),
        alert_name: Some(s("alertName")),
        phase: AuditPhase::Completed,
        outcome: if s("outcome") == "Success" {
            AuditOutcome::Success
        } else {
            AuditOutcome::Failure
        },
        action_type: s("actionType"),
        severity: s("severity"),
        environment: "production".into(),
        cluster_name: "prod-eu-1".into(),
        target_resource: s("targetResource"),
        start_time: "2026-10-01T10:00:00Z".into(),
        end_time: None,
        error_message: Some(s("errorMessage")),
        details: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_set_ranks_the_right_family_first_and_filtered_recall_holds() {
    let embedder = LocalEmbedder::load(&model_dir(), LocalOptions::default()).unwrap();
    let db = TestDb::new().await;
    let store = db.store().await;
    let data = fixture();
    let audits = data["audits"].as_array().unwrap();
    let queries = data["queries"].as_array().unwrap();
    assert!(audits.len() >= 40 && queries.len() >= 20);

    let prepared: Vec<_> = audits
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let meta = AuditMeta {
                uid: uuid::Uuid::new_v4().to_string(),
                namespace: a["namespace"].as_str().unwrap().into(),
                name: format!("audit-{i}"),
                generation: 1,
            };
            prepare(&meta, &spec_of(a, i), SanitizeConfig::default(), Utc::now()).unwrap()
        })
        .collect();
    let texts: Vec<String> = prepared.iter().map(|p| p.embedding_text.clone()).collect();
    let vectors = embedder.embed(&texts).await.unwrap();
    let mut family_of = HashMap::new();
    let mut namespace_of = HashMap::new();
    for ((p, v), a) in prepared.iter().zip(vectors).zip(audits) {
        let row = EmbeddingRow {
            model_id: embedder.model_id().into(),
            vector: v,
        };
        let WriteOutcome::Stored(s) = store
            .write_audit(&AuditWrite {
                prepared: p,
                embedding: Some(row),
            })
            .await
            .unwrap()
        else {
            panic!()
        };
        family_of.insert(s.audit_id, a["family"].as_str().unwrap().to_string());
        namespace_of.insert(s.audit_id, a["namespace"].as_str().unwrap().to_string());
    }

    let query_texts: Vec<String> = queries
        .iter()
        .map(|q| q["text"].as_str().unwrap().to_string())
        .collect();
    let query_vectors = embedder.embed(&query_texts).await.unwrap();
    let params = SearchParams {
        limit: 10,
        min_similarity: None,
        ef_search: 40,
        exclude_id: None,
        halfvec: false,
        model_id: embedder.model_id().into(),
    };
    let mut correct = 0;
    let mut misses = Vec::new();
    for (q, v) in queries.iter().zip(&query_vectors) {
        let hits = store
            .search(v, &AuditFilters::default(), &params)
            .await
            .unwrap();
        let top = &family_of[&hits[0].id];
        if top == q["family"].as_str().unwrap() {
            correct += 1;
        } else {
            misses.push(format!(
                "{:?} → {top} ({:.3})",
                q["text"], hits[0].similarity
            ));
        }
    }
    println!(
        "relevance: {correct}/{} queries rank their family first; misses: {misses:#?}",
        queries.len()
    );
    assert!(
        correct * 10 >= queries.len() * 9,
        "only {correct}/{} correct: {misses:#?}",
        queries.len()
    );

    // Filtered to one namespace: the iterative index scan keeps recall@10 against exact search.
    let mut total_recall = 0.0;
    let mut n = 0.0;
    for ns in ["platform", "checkout", "data"] {
        let filters = AuditFilters {
            namespaces: Some(vec![ns.to_string()]),
            ..AuditFilters::default()
        };
        for v in &query_vectors {
            let approx: Vec<i64> = store
                .search(v, &filters, &params)
                .await
                .unwrap()
                .iter()
                .map(|h| h.id)
                .collect();
            let exact = store
                .search_exact(v, Some(&[ns.to_string()]), 10)
                .await
                .unwrap();
            let found = exact.iter().filter(|id| approx.contains(id)).count() as f64;
            total_recall += found / exact.len().max(1) as f64;
            n += 1.0;
            assert!(
                approx.iter().all(|id| namespace_of[id] == ns),
                "a result from outside {ns} leaked"
            );
        }
    }
    let recall = total_recall / n;
    println!("filtered recall@10 = {recall:.3}");
    assert!(recall >= 0.95, "filtered recall@10 {recall}");
}

/// A real provider (the hash embedder) that counts how often it is asked.
struct Counting {
    inner: HashEmbedder,
    calls: AtomicUsize,
}

#[async_trait]
impl Embedder for Counting {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }
    fn semantic(&self) -> bool {
        false
    }
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.calls.fetch_add(texts.len(), Ordering::SeqCst);
        self.inner.embed(texts).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cache_is_shared_between_replicas_and_its_outage_never_fails_an_embed() {
    let redis_server = crate::support::Service::redis();
    let url = redis_server.url.clone();
    let options = || CacheOptions {
        memory_entries: 100,
        ttl: Duration::from_secs(60),
        redis_url: Some(url.clone()),
    };
    let text = vec![format!(
        "restart pod after OOMKilled {}",
        uuid::Uuid::new_v4()
    )];

    // Replica 1 computes and shares the vector.
    let inner1 = Arc::new(Counting {
        inner: HashEmbedder::new(384),
        calls: AtomicUsize::new(0),
    });
    let m1 = EmbedMetrics::unregistered().unwrap();
    let r1 = CachedEmbedder::new(inner1.clone(), options(), m1.clone())
        .await
        .unwrap();
    let v1 = r1.embed(&text).await.unwrap();
    assert_eq!(inner1.calls.load(Ordering::SeqCst), 1);
    assert_eq!(m1.cache_misses.get(), 1);

    // Replica 2 (empty memory) finds it in Redis: its model is never asked.
    let inner2 = Arc::new(Counting {
        inner: HashEmbedder::new(384),
        calls: AtomicUsize::new(0),
    });
    let m2 = EmbedMetrics::unregistered().unwrap();
    let r2 = CachedEmbedder::new(inner2.clone(), options(), m2.clone())
        .await
        .unwrap();
    let v2 = r2.embed(&text).await.unwrap();
    assert_eq!(v1, v2);
    assert_eq!(
        inner2.calls.load(Ordering::SeqCst),
        0,
        "a Redis hit must avoid the model"
    );
    assert_eq!(m2.cache_hits.get(), 1);

    // Redis goes away: embeds still work (memory + model), errors are counted.
    redis_server.run("stop");
    let other = vec![format!(
        "drain node after disk pressure {}",
        uuid::Uuid::new_v4()
    )];
    let v3 = r2.embed(&other).await.unwrap();
    assert_eq!(v3.len(), 1);
    assert_eq!(inner2.calls.load(Ordering::SeqCst), 1);
    assert!(m2.redis_errors.get() >= 1, "Redis failures are counted");
}

/// A real OpenAI-compatible HTTP embedding service on loopback that can be switched to failing.
async fn provider(healthy: Arc<AtomicBool>) -> String {
    let hash = Arc::new(HashEmbedder::new(384));
    let app = axum::Router::new().route(
        "/v1/embeddings",
        post(move |Json(body): Json<Value>| {
            let healthy = healthy.clone();
            let hash = hash.clone();
            async move {
                if !healthy.load(Ordering::SeqCst) {
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Json(json!({"error": {"message": "model overloaded"}})),
                    );
                }
                let inputs: Vec<String> = body["input"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect();
                let vectors = hash.embed(&inputs).await.unwrap();
                let data: Vec<Value> = vectors
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
                    .collect();
                (
                    StatusCode::OK,
                    Json(json!({"object": "list", "data": data, "model": body["model"]})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_provider_stores_rows_pending_then_backfill_fills_every_vector() {
    let healthy = Arc::new(AtomicBool::new(false));
    let endpoint = provider(healthy.clone()).await;
    let env = TestEnv::with(
        "degrade",
        EnvOptions {
            spec_extra: format!(
                "  embedding:\n    provider: OpenAI\n    endpoint: {endpoint}\n    model: test-embed\n    timeout: 300ms\n"
            ),
            ..EnvOptions::default()
        },
    )
    .await;
    let names = ["d1", "d2", "d3"];
    for (i, name) in names.iter().enumerate() {
        env.kubectl(
            &["apply", "-f", "-"],
            Some(&audit_yaml(name, &format!("rr-degrade-{i}"), "")),
        );
    }
    for name in names {
        let obj = env
            .wait_state(name, "Persisted", Duration::from_secs(60))
            .await;
        assert_eq!(
            obj["status"]["embedding"], "Pending",
            "{name}: {}",
            obj["status"]
        );
    }
    let metrics = env.operator.as_ref().unwrap().context.metrics.clone();
    // Each row-only write counts once, as a fallback (provider error) or a dual-write timeout (src/metrics.rs).
    let row_only = metrics.fallback_mode.get()
        + metrics
            .dualwrite_failure
            .with_label_values(&["timeout"])
            .get();
    assert!(row_only >= 3, "row-only writes counted: {row_only}");
    let store = env.store().await;
    let vectors: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_embeddings")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(vectors, 0);

    // The provider recovers: the backfill adds every vector and the statuses say so.
    healthy.store(true, Ordering::SeqCst);
    for name in names {
        eventually(
            Duration::from_secs(90),
            &format!("{name} embedding Stored"),
            || async { (env.jsonpath(name, "{.status.embedding}") == "Stored").then_some(()) },
        )
        .await;
    }
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT model_id, count(*) FROM audit_embeddings GROUP BY model_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(rows, vec![("openai:test-embed:384".to_string(), 3)]);
    assert_eq!(metrics.embedding_backlog.get(), 0);
    assert!(metrics.backfill_embedded.get() >= 3);
}

/// With the embedder unavailable (a broken model path), persisted audits cost at most one reconcile per audit per
/// recheck interval and no validation or sanitization work. Measured from the operator's own counters once all
/// `RECHECK_AUDITS` (default 2,000) audits are Persisted with `embedding: Unavailable`:
/// `datastorage_reconcile_total{controller="remediationaudit"}`, `datastorage_prepare_total` (runs of prepare()),
/// `datastorage_validation_failures_total` and `datastorage_embedding_recheck_total` (store lookups) over a window
/// of two recheck intervals. Before the fix every recheck re-ran prepare() and a database query every 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_embedder_rechecks_do_no_validation_work() {
    use datastorage::controller::audit::decide::EMBEDDING_RECHECK;
    use futures::StreamExt;
    use kube::api::{Api, ListParams, PostParams};
    let n = crate::support::faults::count_from_env("RECHECK_AUDITS", 2_000);
    let env = TestEnv::with(
        "recheck",
        EnvOptions {
            spec_extra: "  embedding:\n    provider: Local\n    modelPath: /nonexistent/model\n"
                .into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let api: Api<datastorage::crd::RemediationAudit> = Api::namespaced(env.client.clone(), &env.ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let obj = crate::support::faults::audit_object(i);
                api.create(&PostParams::default(), &obj).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<()>()
        .await;
    let unavailable = || async {
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .filter(|ra| {
                ra.status.as_ref().is_some_and(|s| {
                    s.state == Some(datastorage::crd::AuditState::Persisted)
                        && s.embedding == Some(datastorage::crd::EmbeddingState::Unavailable)
                })
            })
            .count()
    };
    eventually(
        Duration::from_secs(900),
        "every audit Persisted, embedding Unavailable",
        || async { (unavailable().await == n).then_some(()) },
    )
    .await;
    let m = env.operator.as_ref().unwrap().context.metrics.clone();
    let reconciles = || {
        ["success", "error"]
            .iter()
            .map(|r| {
                m.reconcile_total
                    .with_label_values(&["remediationaudit", r])
                    .get()
            })
            .sum::<u64>()
    };
    let validations = || {
        m.validation_failures
            .with_label_values(&["spec", "invalid"])
            .get()
    };
    let rechecks = || {
        [
            "stored",
            "pending",
            "unavailable",
            "disabled",
            "missing",
            "failed",
        ]
        .iter()
        .map(|r| m.embedding_recheck.with_label_values(&[r]).get())
        .sum::<u64>()
    };
    let (r0, p0, v0, c0) = (
        reconciles(),
        m.prepare_total.get(),
        validations(),
        rechecks(),
    );
    let window = EMBEDDING_RECHECK * 2 + Duration::from_secs(1);
    tokio::time::sleep(window).await;
    let (r1, p1, v1, c1) = (
        reconciles(),
        m.prepare_total.get(),
        validations(),
        rechecks(),
    );
    let intervals = window.as_secs_f64() / EMBEDDING_RECHECK.as_secs_f64();
    println!(
        "MEASURED | {n} persisted audits, embedder unavailable, {:.0}s window: {} reconciles ({:.2} per audit per \
         {}s interval), {} prepare() runs, {} store lookups |",
        window.as_secs_f64(),
        r1 - r0,
        (r1 - r0) as f64 / (n as f64 * intervals),
        EMBEDDING_RECHECK.as_secs(),
        p1 - p0,
        c1 - c0
    );
    assert_eq!(p1 - p0, 0, "prepare() ran during rechecks");
    assert_eq!(v1 - v0, 0, "validation failures counted during rechecks");
    assert_eq!(
        c1 - c0,
        0,
        "rechecks queried the store although no embedder can add a vector"
    );
    // A window of two intervals and a second touches at most three recheck deadlines per audit.
    let bound = n as u64 * (window.as_secs() / EMBEDDING_RECHECK.as_secs() + 1);
    assert!(r1 - r0 <= bound, "{} reconciles > {bound}", r1 - r0);
    assert!(
        r1 - r0 >= n as u64,
        "the audits were not rechecked at all: {}",
        r1 - r0
    );
}

/// An "OpenAI-compatible" endpoint that accepts connections, reads the request and never answers. Counts the
/// connections open now and the most open at once.
async fn silent_provider() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (open, most, accepted) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (o, m, a) = (open.clone(), most.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let now = o.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                // Read whatever comes and never write; the connection ends when the client gives up.
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (format!("http://{addr}"), open, most, accepted)
}

/// Issue 22, "embedding provider that accepts and never answers": 40 audits with distinct texts are all Persisted
/// (rows committed alone, `embedding: Pending`), each provider call gives up at the DataStorage's timeout and closes
/// its connection, at most `embed::OPENAI_MAX_IN_FLIGHT` are open at once (42 for 40 audits before that limit) while the
/// backfill keeps retrying, and a text search answers 503 naming the provider within the API's embed budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_never_answers_costs_timeouts_not_a_pile_up() {
    let (endpoint, open, most, accepted) = silent_provider().await;
    let env = TestEnv::with(
        "silent",
        EnvOptions {
            spec_extra: format!(
                "  embedding:\n    provider: OpenAI\n    endpoint: {endpoint}\n    model: test-embed\n    timeout: 300ms\n"
            ),
            ..EnvOptions::default()
        },
    )
    .await;
    let n = 40;
    for i in 0..n {
        env.kubectl(
            &["apply", "-f", "-"],
            Some(&audit_yaml(
                &format!("s{i}"),
                &format!("rr-silent-{i}"),
                &format!("  errorMessage: 'incident {i}: container was OOM killed'\n"),
            )),
        );
    }
    for i in 0..n {
        let obj = env
            .wait_state(&format!("s{i}"), "Persisted", Duration::from_secs(90))
            .await;
        assert_eq!(
            obj["status"]["embedding"], "Pending",
            "s{i}: {}",
            obj["status"]
        );
    }
    // The backfill keeps trying for 10 s: calls go on, connections do not accumulate.
    let before = accepted.load(Ordering::SeqCst);
    let mut open_samples = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        open_samples.push(open.load(Ordering::SeqCst));
    }
    let after = accepted.load(Ordering::SeqCst);
    println!(
        "silent provider: {after} connections accepted ({} during the 10 s window), open at once: at most {}, sampled {open_samples:?}",
        after - before,
        most.load(Ordering::SeqCst)
    );
    // The server sees a connection the client dropped at its timeout close a moment later (its FIN), while the
    // freed permit already opened the next one: hence the slack over the bound.
    let bound = datastorage::embed::OPENAI_MAX_IN_FLIGHT;
    assert!(
        most.load(Ordering::SeqCst) <= 2 * bound,
        "connections piled up: {} open at once (bound {bound})",
        most.load(Ordering::SeqCst)
    );
    assert!(
        open_samples.iter().all(|&o| o <= bound + 2),
        "{open_samples:?}"
    );
    assert!(after > before, "the backfill kept calling the provider");
    let store = env.store().await;
    let (rows, vectors): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audits), (SELECT count(*) FROM audit_embeddings)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((rows, vectors), (n, 0));

    // A text search needs the provider: 503 naming it, well within the API's budget.
    let (token, binding) = env.cluster_admin_token("silent-reader");
    let started = std::time::Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/audits/search", env.api_url()))
        .bearer_auth(&token)
        .json(&json!({"query": "pod keeps getting OOM killed"}))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("embedding provider"),
        "{body}"
    );
    assert!(took < Duration::from_secs(10), "search took {took:?}");
    let _ = crate::support::kube::kubectl_raw(&["delete", "clusterrolebinding", &binding], None);
}
