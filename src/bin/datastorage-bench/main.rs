//! `make bench`: each figure measured next to a baseline in the same run, written to `target/bench/results.json`
//! and summarized in `docs/benchmarks.md`. Sizes scale with `BENCH_SCALE` (`small` default, `large`).
//!
//! One module per benchmark family; `BENCH_ONLY=a,b` runs a subset.
#![allow(clippy::print_stdout)]

mod cr;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use chrono::Utc;
use datastorage::audit::{AuditMeta, Prepared, SanitizeConfig, prepare};
use datastorage::crd::{AuditOutcome, AuditPhase, RemediationAuditSpec};
use datastorage::embed::{
    Embedder, LocalEmbedder, LocalOptions, LocalPrecision, LocalRuntime, MAX_DEFAULT_THREADS,
    bert_flops_per_token,
};
use datastorage::store::batch::WriteBatcher;
use datastorage::store::list::Cursor;
use datastorage::store::search::AuditFilters;
use datastorage::store::{Store, StoreConfig, WriteOutcome};
use serde_json::{Value, json};

mod vectors;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bench {
    results: Vec<Value>,
    started_at: String,
}

impl Bench {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        name: &str,
        value: f64,
        unit: &str,
        base_name: &str,
        base: f64,
        base_unit: &str,
        params: Value,
    ) {
        let ratio = if base != 0.0 { value / base } else { 0.0 };
        println!(
            "  {name}: {value:.3} {unit}  |  baseline {base_name}: {base:.3} {base_unit}  |  ratio {ratio:.3}"
        );
        self.results.push(json!({
            "name": name, "value": value, "unit": unit,
            "baseline": {"name": base_name, "value": base, "unit": base_unit},
            "ratio": ratio, "params": params, "started_at": self.started_at,
        }));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn spec(i: usize) -> RemediationAuditSpec {
    RemediationAuditSpec {
        remediation_request_id: format!("rr-bench-{i}-{}", uuid::Uuid::new_v4().simple()),
        alert_fingerprint: format!("fp-{i}"),
        alert_name: Some("KubePodOOMKilled".into()),
        phase: AuditPhase::Completed,
        outcome: AuditOutcome::Success,
        action_type: "restart-pod".into(),
        severity: "critical".into(),
        environment: "production".into(),
        cluster_name: "prod-eu-1".into(),
        target_resource: format!("apps/v1/Deployment/ns-{}/api", i % 100),
        start_time: "2026-10-01T10:00:00Z".into(),
        end_time: Some("2026-10-01T10:00:30Z".into()),
        error_message: Some(format!(
            "container api was OOMKilled: memory limit 512Mi exceeded (pod api-{i})"
        )),
        details: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL is not set (hack/bench.sh starts PostgreSQL)")?;
    let model_dir =
        std::env::var("DATASTORAGE_MODEL_DIR").context("DATASTORAGE_MODEL_DIR is not set")?;
    let large = std::env::var("BENCH_SCALE").is_ok_and(|s| s == "large");
    let out_dir =
        PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| "target/bench".into()));
    let mut bench = Bench {
        results: Vec::new(),
        started_at: Utc::now().to_rfc3339(),
    };

    // BENCH_ONLY=name,name runs a subset (handy while working on one benchmark).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let selected = |name: &str| only.is_empty() || only.split(',').any(|n| n.trim() == name);

    if selected("store_throughput") {
        println!("== store_throughput");
        store_throughput(&mut bench, &url, if large { 20_000 } else { 4_000 }).await?;
    }
    if selected("embed_throughput") {
        println!("== embed_throughput");
        embed_throughput(&mut bench, &model_dir, if large { 1024 } else { 256 }).await?;
    }
    if selected("list_query") {
        println!("== list_query");
        list_query(&mut bench, &url, 1_000_000).await?;
    }
    if selected("vector_write") {
        println!("== vector_write");
        vectors::vector_write(&mut bench, &url, &model_dir).await?;
    }
    if selected("semantic_search") {
        println!("== semantic_search");
        vectors::semantic_search(&mut bench, &url, &model_dir).await?;
    }
    if selected("cr_to_persisted") {
        println!("== cr_to_persisted");
        let kubeconfig = std::env::var("BENCH_KUBECONFIG")
            .context("BENCH_KUBECONFIG is not set (hack/bench.sh starts the control plane)")?;
        cr::cr_to_persisted(
            &mut bench,
            &kubeconfig,
            &url,
            &model_dir,
            &cr::Params::new(large)?,
        )
        .await?;
    }
    if selected("metrics_overhead") {
        println!("== metrics_overhead");
        metrics_overhead(&mut bench)?;
    }

    std::fs::create_dir_all(&out_dir)?;
    let results = Value::Array(bench.results.clone());
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!("wrote {}", out_dir.join("results.json").display());
    if let Ok(md) = std::env::var("BENCH_MARKDOWN") {
        std::fs::write(&md, markdown(&bench.results))?;
        println!("wrote {md}");
    }
    Ok(())
}

/// What each figure means, in one line.
fn meaning(name: &str) -> &'static str {
    match name {
        "store_throughput" => {
            "audits/s through prepare (validate + sanitize + hash) and the group-commit write (row + chained history), 64 concurrent callers; baseline: the same prepared rows by batched raw INSERT into copies of both tables with the same indexes (target ratio ≥ 0.8)"
        }
        "embed_throughput" | "embed_throughput_int8" | "embed_throughput_candle" => {
            "MiniLM sentences/s in batches of 32 (no suffix: ONNX Runtime fp32, the default; _int8: ONNX Runtime int8 per-channel; _candle: candle), same threads; baseline: sentence-transformers (torch) on the same sentences, batch and threads (targets: default ≥ 1.3, int8 ≥ 2.0)"
        }
        n if n.starts_with("embed_single_p") => {
            "ms to embed one sentence alone (suffixes as embed_throughput); baseline: sentence-transformers' latency for the same sentences (target p50 ratio ≤ 0.5)"
        }
        "embed_compute_bound_fraction" => {
            "the default backend's sentences/s; baseline: FLOPs per sentence ÷ the best fp32 GEMM measured here (embed_gemm) (target ratio ≥ 0.7)"
        }
        "embed_gemm" => {
            "best fp32 GEMM at the model's feed-forward shape (batch×tokens × 384 · 384 × 1536) with the embedder's threads, of candle's gemm, torch's MKL/oneDNN sgemm and numpy's BLAS; baseline: candle's"
        }
        "list_query_p95" => {
            "p95 ms of fetching page 200 (50 rows) with the keyset cursor at 1M rows; baseline: the same page by OFFSET (target ≤ 5 ms)"
        }
        "cr_to_persisted_p50" | "cr_to_persisted_p95" => {
            "ms from applying a RemediationAudit to a watch seeing `state: Persisted` (operator in-process, fresh local embedding, 10 CRs/s; params.embedded_in_write = how many got their vector within the write's budget); baseline: apply + status patch of a trivial CR at the same rate (target p95 ≤ 250 ms)"
        }
        "cr_to_persisted_throughput" => {
            "RemediationAudits/s applied with 16 in flight until all are Persisted; baseline: apply + status patch of a trivial CR at the same concurrency"
        }
        "vector_write" | "vector_write_halfvec" => {
            "embeddings/s stored one by one through Store::store_embedding (the backfill's write) into the HNSW index (m 16, ef_construction 64; vector resp. halfvec) at 100k rows; baseline: single-row raw INSERTs of other audits' vectors into the same table, interleaved"
        }
        n if n.starts_with("semantic_search") && n.ends_with("_recall10") => {
            "recall@10 of Store::search (HNSW + iterative scan) vs exact search, 200 real MiniLM queries over 100k generated audits, index m 16 / ef_construction 64 (the DataStorage defaults; m32_: m 32 / ef_construction 128; ns1pct: filtered to a namespace holding 1 % of rows); baseline: exact search = 1.0 (target ≥ 0.95)"
        }
        n if n.starts_with("semantic_search") => {
            "ms per Store::search at 100k audits (ns1pct: filtered to a namespace holding 1 % of rows), one connection; baseline: exact search (search_exact) of the same queries and filter (target p95 ≤ 10 ms)"
        }
        "insight_p50" | "insight_p95" => {
            "ms per insight query (Store::insight_counts over the 200 nearest neighbours, the API's default, grouped per action type, then ranked) at 100k audits, index defaults, one connection; baseline: Store::search of the same query (ef_search 40), interleaved (target p95 ≤ 50 ms)"
        }
        "metrics_overhead" => {
            "ns per instrumented write (labelled counter + histogram); baseline: a plain atomic add"
        }
        _ => "",
    }
}

fn markdown(results: &[Value]) -> String {
    let commit = std::env::var("BENCH_COMMIT").unwrap_or_else(|_| "unknown".into());
    let machine = std::env::var("BENCH_MACHINE").unwrap_or_else(|_| "unknown".into());
    let mut md = format!(
        "# Benchmarks\n\nGenerated by `make bench` from `target/bench/results.json` (do not edit by hand).\n\n\
         - commit: `{commit}`\n- machine: {machine}\n- started: {}\n\n\
         | benchmark | value | baseline | ratio | what it means |\n|---|---|---|---|---|\n",
        results
            .first()
            .and_then(|r| r["started_at"].as_str())
            .unwrap_or("")
    );
    for r in results {
        let name = r["name"].as_str().unwrap_or("");
        md.push_str(&format!(
            "| {name} | {:.2} {} | {} {:.2} {} | {:.3} | {} |\n",
            r["value"].as_f64().unwrap_or(0.0),
            r["unit"].as_str().unwrap_or(""),
            r["baseline"]["name"].as_str().unwrap_or(""),
            r["baseline"]["value"].as_f64().unwrap_or(0.0),
            r["baseline"]["unit"].as_str().unwrap_or(""),
            r["ratio"].as_f64().unwrap_or(0.0),
            meaning(name)
        ));
    }
    md.push_str(&targets(results));
    md
}

/// The product's performance targets (the "target" of each row in docs/benchmarks.md), each checked against this
/// run's rows.
fn targets(results: &[Value]) -> String {
    let get = |name: &str, field: &str| {
        results
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r[field].as_f64())
    };
    let check = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    };
    let search = |profile: &str, ef: i32| -> (Option<bool>, String) {
        let p95 = get(&format!("semantic_search_{profile}ef{ef}_p95"), "value");
        let recall = get(
            &format!("semantic_search_{profile}ef{ef}_recall10"),
            "value",
        );
        let ok = p95.zip(recall).map(|(p, r)| p <= 10.0 && r >= 0.95);
        let text = match p95.zip(recall) {
            Some((p, r)) => format!("p95 {p:.2} ms, recall@10 {r:.3}"),
            None => "-".into(),
        };
        (ok, text)
    };
    let mut rows = vec![
        (
            "store path ≥ 80 % of raw batched SQL insert".to_string(),
            get("store_throughput", "ratio").map(|r| r >= 0.8),
            get("store_throughput", "ratio").map_or("-".into(), |r| format!("ratio {r:.3}")),
        ),
        (
            "list p95 ≤ 5 ms at 1M rows (keyset)".to_string(),
            get("list_query_p95", "value").map(|v| v <= 5.0),
            get("list_query_p95", "value").map_or("-".into(), |v| format!("{v:.2} ms")),
        ),
        (
            "apply → Persisted p95 ≤ 250 ms incl. a fresh embedding, moderate load".to_string(),
            get("cr_to_persisted_p95", "value").map(|v| v <= 250.0),
            get("cr_to_persisted_p95", "value").map_or("-".into(), |v| format!("{v:.1} ms")),
        ),
        (
            "embedding throughput ≥ 70 % of the compute-bound rate (best GEMM)".to_string(),
            get("embed_compute_bound_fraction", "ratio").map(|r| r >= 0.7),
            get("embed_compute_bound_fraction", "ratio")
                .map_or("-".into(), |r| format!("ratio {r:.3}")),
        ),
        (
            "default embedding backend ≥ 1.3× sentence-transformers' batched throughput"
                .to_string(),
            get("embed_throughput", "ratio").map(|r| r >= 1.3),
            get("embed_throughput", "ratio").map_or("-".into(), |r| format!("{r:.2}×")),
        ),
        (
            "default embedding backend single-sentence p50 ≤ 0.5× sentence-transformers'"
                .to_string(),
            get("embed_single_p50", "ratio").map(|r| r <= 0.5),
            get("embed_single_p50", "ratio").map_or("-".into(), |r| format!("{r:.2}×")),
        ),
        (
            "fastest opt-in backend (int8) ≥ 2× sentence-transformers (SPEC.md §6: ≥ 2×)"
                .to_string(),
            get("embed_throughput_int8", "ratio").map(|r| r >= 2.0),
            get("embed_throughput_int8", "ratio").map_or("-".into(), |r| format!("{r:.2}×")),
        ),
    ];
    rows.push((
        "insight p95 ≤ 50 ms at 100k audits (200 neighbours)".to_string(),
        get("insight_p95", "value").map(|v| v <= 50.0),
        get("insight_p95", "value").map_or("-".into(), |v| format!("{v:.2} ms")),
    ));
    for (profile, what, efs) in [
        (
            "",
            "index defaults (m 16, ef_construction 64)",
            &[40, 100, 200, 400, 1000][..],
        ),
        ("m32_", "m 32, ef_construction 128", &[100, 200, 400][..]),
    ] {
        for &ef in efs {
            let (ok, text) = search(profile, ef);
            rows.push((
                format!("search p95 ≤ 10 ms and recall@10 ≥ 0.95 at 100k, unfiltered — {what}, ef_search {ef}"),
                ok,
                text,
            ));
        }
    }
    for ef in [40, 100, 200] {
        let (ok, text) = search("ns1pct_", ef);
        rows.push((
            format!("the same filtered to a 1 % namespace — index defaults, ef_search {ef}"),
            ok,
            text,
        ));
    }
    let mut md = String::from(
        "\n## Performance targets in this run\n\n| target | this run | |\n|---|---|---|\n",
    );
    for (target, ok, text) in rows {
        md.push_str(&format!("| {target} | {text} | {} |\n", check(ok)));
    }
    md
}

/// Binds the columns of an `audits` row from `cr_uid` to `embedding_text_sha` (in the table's order) for a raw
/// multi-VALUES insert.
pub(crate) fn bind_audit_row(
    b: &mut sqlx::query_builder::Separated<'_, sqlx::Postgres, &'static str>,
    p: &Prepared,
    chain_hash: String,
    text_sha: String,
) {
    let r = &p.record;
    b.push_bind(uuid::Uuid::parse_str(&r.uid).unwrap_or_default())
        .push_bind(&r.namespace)
        .push_bind(&r.name)
        .push_bind(&r.remediation_request_id)
        .push_bind(&r.alert_fingerprint)
        .push_bind(&r.alert_name)
        .push_bind(&r.phase)
        .push_bind(&r.outcome)
        .push_bind(&r.action_type)
        .push_bind(&r.severity)
        .push_bind(&r.environment)
        .push_bind(&r.cluster_name)
        .push_bind(&r.target_resource)
        .push_bind(p.start_time)
        .push_bind(p.end_time)
        .push_bind(r.duration_ms)
        .push_bind(&r.error_message)
        .push_bind(r.generation)
        .push_bind(&p.content_hash)
        .push_bind(chain_hash)
        .push_bind(&p.embedding_text)
        .push_bind(text_sha);
}

async fn fresh_store(url: &str, schema: &str) -> anyhow::Result<Store> {
    let mut config = StoreConfig::new(url, schema)?;
    config.pool_size = 16;
    let store = Store::connect_lazy(&config)?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(store.pool())
    .await?;
    store.migrate().await?;
    Ok(store)
}

/// Audits/s through the operator's write path: validate + sanitize (`prepare`) + the group-commit batcher (current
/// row + first history entry with its chain hash, no vector) from 64 concurrent callers, like concurrent reconciles.
/// Baseline: the same, already prepared rows inserted by batched raw SQL (500-row multi-VALUES statements) into
/// plain copies of both tables (no constraints checked, no hashes computed, no outcome per audit).
async fn store_throughput(bench: &mut Bench, url: &str, n: usize) -> anyhow::Result<()> {
    let store = fresh_store(url, "bench_store").await?;
    let now = Utc::now();
    let metas: Vec<AuditMeta> = (0..n)
        .map(|i| AuditMeta {
            uid: uuid::Uuid::new_v4().to_string(),
            namespace: format!("ns-{}", i % 100),
            name: format!("audit-{i}"),
            generation: 1,
        })
        .collect();
    let specs: Arc<Vec<_>> = Arc::new((0..n).map(spec).collect());
    let metas = Arc::new(metas);
    let batcher = WriteBatcher::spawn(store.clone(), 2, 128, std::time::Duration::from_secs(600));
    let callers = 64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..callers {
        let (batcher, metas, specs) = (batcher.clone(), metas.clone(), specs.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(callers) {
                let p = prepare(&metas[i], &specs[i], SanitizeConfig::default(), now)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                match batcher.write(Arc::new(p), None).await? {
                    WriteOutcome::Stored(_) => {}
                    other => anyhow::bail!("audit {i} not stored: {other:?}"),
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let store_rate = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "  store path: {n} audits in {:?} ({} batches)",
        started.elapsed(),
        batcher.batches_written()
    );

    let prepare_started = Instant::now();
    let prepared: Vec<_> = (0..n)
        .map(|i| {
            prepare(&metas[i], &specs[i], SanitizeConfig::default(), now)
                .map_err(|e| anyhow::anyhow!("{e:?}"))
        })
        .collect::<Result<_, _>>()?;
    let prepare_us = prepare_started.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("  prepare alone: {prepare_us:.1} µs per audit (one core)");
    sqlx::query("CREATE TABLE bench_raw (LIKE audits INCLUDING ALL)")
        .execute(store.pool())
        .await?;
    sqlx::query("CREATE TABLE bench_raw_history (LIKE audit_history INCLUDING ALL)")
        .execute(store.pool())
        .await?;
    let started = Instant::now();
    for (c, chunk) in prepared.chunks(500).enumerate() {
        let mut tx = store.pool().begin().await?;
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO bench_raw (cr_uid, namespace, name, remediation_request_id, alert_fingerprint, alert_name, \
             phase, outcome, action_type, severity, environment, cluster_name, target_resource, start_time, end_time, \
             duration_ms, error_message, generation, content_hash, chain_hash, embedding_text, embedding_text_sha) ",
        );
        qb.push_values(chunk.iter(), |mut b, p| {
            bind_audit_row(&mut b, p, p.content_hash.clone(), p.content_hash.clone());
        });
        qb.build().execute(&mut *tx).await?;
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO bench_raw_history (audit_id, cr_uid, namespace, generation, record, content_hash, \
             prev_chain_hash, chain_hash) ",
        );
        qb.push_values(chunk.iter().enumerate(), |mut b, (i, p)| {
            let r = &p.record;
            b.push_bind((c * 500 + i) as i64)
                .push_bind(uuid::Uuid::parse_str(&r.uid).unwrap_or_default())
                .push_bind(&r.namespace)
                .push_bind(r.generation)
                .push_bind(&p.canonical_json)
                .push_bind(&p.content_hash)
                .push_bind("")
                .push_bind(&p.content_hash);
        });
        qb.build().execute(&mut *tx).await?;
        tx.commit().await?;
    }
    let raw_rate = n as f64 / started.elapsed().as_secs_f64();
    bench.record(
        "store_throughput",
        store_rate,
        "audits/s",
        "raw_batched_insert",
        raw_rate,
        "rows/s",
        json!({"audits": n, "callers": callers, "batch_max": 128, "batch_writers": 2, "raw_batch": 500,
               "embedding": false, "prepare_us_per_audit": prepare_us}),
    );
    Ok(())
}

/// One local backend's figures on the bench sentences.
struct BackendRun {
    rate: f64,
    single: Vec<f64>,
    vectors: Vec<Vec<f32>>,
    model_id: String,
}

async fn run_backend(
    model_dir: &str,
    opts: LocalOptions,
    sentences: &[String],
    batch: usize,
) -> anyhow::Result<BackendRun> {
    let embedder = LocalEmbedder::load(std::path::Path::new(model_dir), opts)?;
    embedder.embed(&sentences[..4]).await?; // warm-up
    let mut single = Vec::new();
    for s in sentences.iter().take(50) {
        let t = Instant::now();
        embedder.embed(std::slice::from_ref(s)).await?;
        single.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    single.sort_by(f64::total_cmp);
    let started = Instant::now();
    let mut vectors = Vec::new();
    for chunk in sentences.chunks(batch) {
        vectors.extend(embedder.embed(chunk).await?);
    }
    let rate = sentences.len() as f64 / started.elapsed().as_secs_f64();
    Ok(BackendRun {
        rate,
        single,
        vectors,
        model_id: embedder.model_id().to_string(),
    })
}

/// The embedding family: every local backend (ONNX Runtime fp32 = the default, ONNX Runtime int8, candle) and
/// sentence-transformers (torch, the reference and what a user would run instead; hack/embed-reference.py) on the
/// same sentences, batch size and thread count, in this run; plus the compute bound from the best fp32 GEMM
/// measured here (candle's gemm, torch's MKL/oneDNN sgemm, numpy's BLAS at the model's feed-forward shape).
async fn embed_throughput(bench: &mut Bench, model_dir: &str, n: usize) -> anyhow::Result<()> {
    let batch = 32;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_DEFAULT_THREADS);
    let sentences: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "action: restart pod. alert: kube pod OOM killed. target: deployment. phase: completed, outcome: \
                 success, severity: critical. error: container api-{i} exceeded its memory limit of 512Mi"
            )
        })
        .collect();
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(PathBuf::from(model_dir).join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The shipped tokenizer.json pads to 128; count the sentence's real tokens (the embedder pads batch-longest).
    tokenizer.with_padding(None);
    let tokens = tokenizer
        .encode(sentences[0].as_str(), true)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .len();

    // The peer baseline and the machine's best GEMM, by the venv's python.
    let python = std::env::var("BENCH_PYTHON")
        .context("BENCH_PYTHON is not set (hack/bench.sh points it at the venv's python)")?;
    let input = tempfile_path("bench-sentences.json");
    std::fs::write(&input, serde_json::to_string(&sentences)?)?;
    let out = std::process::Command::new(&python)
        .arg("hack/embed-reference.py")
        .args([
            "bench",
            model_dir,
            &threads.to_string(),
            &batch.to_string(),
            &(batch * tokens).to_string(),
        ])
        .stdin(std::fs::File::open(&input)?)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let _ = std::fs::remove_file(&input);
    anyhow::ensure!(out.status.success(), "hack/embed-reference.py bench failed");
    let st: Value = serde_json::from_slice(&out.stdout)?;
    let st_rate = st["batched_rate"].as_f64().unwrap_or(0.0);
    let mut st_single: Vec<f64> = st["single_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    st_single.sort_by(f64::total_cmp);
    let st_vectors: Vec<Vec<f32>> = serde_json::from_value(st["vectors"].clone())?;

    let candle_gemm = measure_matmul_flops(batch * tokens)?;
    let mut gemm = vec![("candle_gemm".to_string(), candle_gemm)];
    if let Some(m) = st["gemm_flops"].as_object() {
        for (k, v) in m {
            gemm.push((k.clone(), v.as_f64().unwrap_or(0.0)));
        }
    }
    let (best_name, best_flops) = gemm
        .iter()
        .cloned()
        .fold((String::new(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
    let flops_per_sentence = bert_flops_per_token(6, 384, 1536, tokens) * tokens as f64;
    let bound = best_flops / flops_per_sentence;
    println!(
        "  GEMM ({}×384)·(384×1536), {threads} threads: {gemm:?}; best {best_name}",
        batch * tokens
    );
    bench.record(
        "embed_gemm",
        best_flops / 1e9,
        "GFLOP/s",
        "candle_gemm",
        candle_gemm / 1e9,
        "GFLOP/s",
        json!({"best": best_name, "all": gemm.iter().map(|(k, v)| json!({"gemm": k, "gflops": v / 1e9})).collect::<Vec<_>>(),
               "rows": batch * tokens, "threads": threads, "torch": st["torch"], "torch_config": st["torch_config"]}),
    );

    let p = |v: &[f64], q| percentile(v, q);
    for (suffix, runtime, precision) in [
        ("", LocalRuntime::Onnx, LocalPrecision::Fp32),
        ("_int8", LocalRuntime::Onnx, LocalPrecision::Int8),
        ("_candle", LocalRuntime::Candle, LocalPrecision::Fp32),
    ] {
        let opts = LocalOptions {
            threads: Some(threads),
            max_batch: batch,
            ..LocalOptions::with(runtime, precision)
        };
        let run = run_backend(model_dir, opts, &sentences, batch).await?;
        let min_cos = run
            .vectors
            .iter()
            .zip(&st_vectors)
            .map(|(a, b)| datastorage::embed::cosine(a, b))
            .fold(f32::MAX, f32::min);
        let params = json!({"runtime": format!("{runtime:?}"), "precision": format!("{precision:?}"),
            "model_id": run.model_id, "sentences": n, "batch": batch, "threads": threads,
            "tokens_per_sentence": tokens, "min_cosine_to_sentence_transformers": min_cos,
            "compute_bound": bound, "fraction_of_compute_bound": run.rate / bound});
        bench.record(
            &format!("embed_throughput{suffix}"),
            run.rate,
            "sentences/s",
            "sentence_transformers",
            st_rate,
            "sentences/s",
            params.clone(),
        );
        bench.record(
            &format!("embed_single_p50{suffix}"),
            p(&run.single, 0.5),
            "ms",
            "sentence_transformers_p50",
            p(&st_single, 0.5),
            "ms",
            params.clone(),
        );
        bench.record(
            &format!("embed_single_p95{suffix}"),
            p(&run.single, 0.95),
            "ms",
            "sentence_transformers_p95",
            p(&st_single, 0.95),
            "ms",
            params.clone(),
        );
        if suffix.is_empty() {
            bench.record(
                "embed_compute_bound_fraction",
                run.rate,
                "sentences/s",
                "compute_bound_estimate",
                bound,
                "sentences/s",
                json!({"gemm": best_name, "gemm_flops": best_flops, "flops_per_sentence": flops_per_sentence,
                       "tokens_per_sentence": tokens, "sentence_transformers_fraction": st_rate / bound}),
            );
        }
    }
    Ok(())
}

fn tempfile_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", std::process::id()))
}

/// FLOP/s of a (rows×384)·(384×1536) f32 matmul on this machine with candle (the model's feed-forward shape).
fn measure_matmul_flops(rows: usize) -> anyhow::Result<f64> {
    use candle_core::{Device, Tensor};
    let a = Tensor::randn(0f32, 1.0, (rows, 384), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (384, 1536), &Device::Cpu)?;
    a.matmul(&b)?;
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        a.matmul(&b)?;
    }
    let secs = t.elapsed().as_secs_f64();
    Ok((2.0 * rows as f64 * 384.0 * 1536.0 * reps as f64) / secs)
}

/// p95 of fetching page N of a listing at `rows` audits: keyset cursor vs OFFSET (what the replaced system did).
async fn list_query(bench: &mut Bench, url: &str, rows: i64) -> anyhow::Result<()> {
    let store = fresh_store(url, "bench_list").await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO audits (cr_uid, namespace, name, remediation_request_id, alert_fingerprint, phase, outcome,
             action_type, severity, environment, cluster_name, target_resource, start_time, generation, content_hash,
             chain_hash, embedding_text, embedding_text_sha)
         SELECT gen_random_uuid(), 'ns-' || (g % 100), 'a-' || g, 'rr-' || g, 'fp', 'Completed', 'Success',
             'restart-pod', 'critical', 'production', 'prod', 'apps/v1/Deployment/x/y',
             timestamptz '2026-01-01' + make_interval(secs => g), 1, 'c', 'h', 't', 's'
         FROM generate_series(1, $1) g",
    )
    .bind(rows)
    .execute(store.pool())
    .await?;
    sqlx::query("ANALYZE audits").execute(store.pool()).await?;
    println!("  loaded {rows} rows in {:?}", started.elapsed());
    let page_size = 50_i64;
    let page_n = 200_i64; // page 200: offset 10,000
    // The cursor that starts page N.
    let row: (chrono::DateTime<Utc>, i64) = sqlx::query_as(
        "SELECT start_time, id FROM audits ORDER BY start_time DESC, id DESC OFFSET $1 LIMIT 1",
    )
    .bind((page_n - 1) * page_size - 1)
    .fetch_one(store.pool())
    .await?;
    let cursor = Cursor {
        start_time: row.0,
        id: row.1,
    };
    let runs = 100;
    let mut keyset = Vec::new();
    let mut offset = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let page = store
            .list(&AuditFilters::default(), Some(cursor), page_size)
            .await?;
        keyset.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(page.items.len() as i64 == page_size, "short keyset page");
        let t = Instant::now();
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM audits ORDER BY start_time DESC, id DESC OFFSET $1 LIMIT $2",
        )
        .bind((page_n - 1) * page_size)
        .bind(page_size)
        .fetch_all(store.pool())
        .await?;
        offset.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(rows.len() as i64 == page_size, "short offset page");
    }
    keyset.sort_by(f64::total_cmp);
    offset.sort_by(f64::total_cmp);
    bench.record(
        "list_query_p95",
        percentile(&keyset, 0.95),
        "ms",
        "offset_pagination_p95",
        percentile(&offset, 0.95),
        "ms",
        json!({"rows": rows, "page": page_n, "page_size": page_size, "runs": runs}),
    );
    sqlx::query("DROP SCHEMA bench_list CASCADE")
        .execute(store.pool())
        .await?;
    Ok(())
}

/// ns per instrumented operation (a labelled counter increment + a histogram observation) vs a plain atomic add.
fn metrics_overhead(bench: &mut Bench) -> anyhow::Result<()> {
    let metrics = datastorage::metrics::Metrics::new()?;
    let n = 2_000_000u64;
    let t = Instant::now();
    for _ in 0..n {
        metrics
            .write_total
            .with_label_values(&["audits", "success"])
            .inc();
        metrics
            .write_duration
            .with_label_values(&["audits"])
            .observe(0.001);
    }
    let instrumented = t.elapsed().as_nanos() as f64 / n as f64;
    let counter = std::sync::atomic::AtomicU64::new(0);
    let t = Instant::now();
    for i in 0..n {
        counter.fetch_add(
            std::hint::black_box(i) & 1,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    let plain = t.elapsed().as_nanos() as f64 / n as f64;
    std::hint::black_box(counter.load(std::sync::atomic::Ordering::Relaxed));
    bench.record(
        "metrics_overhead",
        instrumented,
        "ns/op",
        "atomic_add",
        plain,
        "ns/op",
        json!({"ops": n}),
    );
    Ok(())
}
