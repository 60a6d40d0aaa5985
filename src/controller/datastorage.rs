//! The DataStorage controller: turns the cluster's `DataStorage` resource into a live [`StoreRuntime`] and tells,
//! condition by condition, what state the database is in.
//!
//! Each reconcile: read the database URL from the referenced Secret → connect (`DatabaseReachable`) → check
//! PostgreSQL and pgvector versions (`VersionsSupported`, blocking writes when False) → apply migrations and
//! create monthly history partitions (`SchemaReady`) → check the HNSW index (`IndexReady`) and
//! `maintenance_work_mem` (`MemoryAdequate`, a warning) → build the embedder (`EmbeddingReady`) → publish the
//! runtime to the audit controller and the query API → write the status. It runs again every minute (or sooner
//! while something is wrong), so fixing a Secret or the database recovers without a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use sqlx::Row;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{MANAGER, StoreRuntime};
use crate::audit::SanitizeConfig;
use crate::audit::sanitize::HtmlPolicy;
use crate::audit::status::set_condition;
use crate::crd::{
    Condition, DataStorage, DataStorageSpec, DataStorageStatus, EmbeddingProvider, HtmlPolicySpec,
    SecretKeyRef, StorePhase, VectorElementType, parse_duration,
};
use crate::embed::{self, Embedder};
use crate::metrics::Metrics;
use crate::store::batch::WriteBatcher;
use crate::store::index::IndexParams;
use crate::store::versions::check_versions;
use crate::store::{Store, StoreConfig};

const CONTROLLER: &str = "datastorage";
const RECHECK_OK: Duration = Duration::from_secs(60);
const RECHECK_PROBLEM: Duration = Duration::from_secs(5);
/// Group commit: two writer tasks (one writes while the other gathers), batches of up to 128 new audits.
const WRITE_BATCHERS: usize = 2;
const WRITE_BATCH_MAX: usize = 128;
/// How long a reconcile waits for its write before it reports the database busy and retries later.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// State of the DataStorage controller.
pub struct DsContext {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub embed_metrics: embed::EmbedMetrics,
    /// Directory of the baked-in model, used when the spec names none.
    pub default_model_dir: Option<String>,
    pub publish: watch::Sender<Option<Arc<StoreRuntime>>>,
    /// The store and embedder built for the current settings, reused while they do not change.
    cache: Mutex<Cached>,
    /// Set while an HNSW index rebuild runs in the background.
    index_rebuild: Arc<AtomicBool>,
    /// Whether this replica holds the leader Lease: only the leader migrates, rebuilds, purges and writes status.
    leader: watch::Receiver<bool>,
}

#[derive(Default)]
struct Cached {
    store_key: Option<String>,
    store: Option<Store>,
    embed_key: Option<String>,
    embedder: Option<Arc<dyn Embedder>>,
}

impl DsContext {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        embed_metrics: embed::EmbedMetrics,
        default_model_dir: Option<String>,
        publish: watch::Sender<Option<Arc<StoreRuntime>>>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client,
            metrics,
            embed_metrics,
            default_model_dir,
            publish,
            cache: Mutex::new(Cached::default()),
            index_rebuild: Arc::new(AtomicBool::new(false)),
            leader,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs the controller for the DataStorage named `name` until shutdown.
pub async fn run(ctx: Arc<DsContext>, name: String) {
    let api: Api<DataStorage> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    Controller::new(api, config)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(_: Arc<DataStorage>, err: &Error, _: Arc<DsContext>) -> Action {
    warn!(error = %err, "DataStorage reconcile failed");
    Action::requeue(RECHECK_PROBLEM)
}

/// Condition results gathered during one reconcile.
struct Checks {
    conditions: Vec<Condition>,
    generation: Option<i64>,
    now: String,
}

impl Checks {
    fn set(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        set_condition(
            &mut self.conditions,
            Condition {
                type_: type_.to_string(),
                status: if ok { "True" } else { "False" }.to_string(),
                reason: reason.to_string(),
                message: message.into(),
                last_transition_time: self.now.clone(),
                observed_generation: self.generation,
            },
        );
    }
    fn is_true(&self, type_: &str) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    }
}

async fn reconcile(ds: Arc<DataStorage>, ctx: Arc<DsContext>) -> Result<Action, Error> {
    super::instrumented(&ctx.metrics, CONTROLLER, reconcile_inner(&ds, &ctx)).await
}

async fn reconcile_inner(ds: &DataStorage, ctx: &DsContext) -> Result<Action, Error> {
    let spec = &ds.spec;
    let mut checks = Checks {
        conditions: ds
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default(),
        generation: ds.metadata.generation,
        now: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    };
    let mut status = DataStorageStatus {
        observed_generation: ds.metadata.generation,
        ..ds.status.clone().unwrap_or_default()
    };

    let store = match connect(ctx, spec).await {
        Ok(store) => Some(store),
        Err((reason, message)) => {
            checks.set("DatabaseReachable", false, reason, message);
            None
        }
    };
    let mut writable: Result<(), String> = Err("the database is not reachable".into());
    let mut schema_ok = false;
    if let Some(store) = &store {
        match probe(store).await {
            Err(e) => checks.set("DatabaseReachable", false, "ConnectionFailed", e),
            Ok((pg, vector)) => {
                checks.set(
                    "DatabaseReachable",
                    true,
                    "Connected",
                    format!("PostgreSQL {pg}"),
                );
                status.postgres_version = Some(pg.clone());
                status.pgvector_version = vector.clone();
                // A missing extension is created by the migration below (and checked on the next pass); only a
                // present-but-old one, or an old PostgreSQL, blocks writes.
                let have_vector = vector.as_deref().unwrap_or(&spec.requirements.min_pgvector);
                let versions = check_versions(
                    &pg,
                    Some(have_vector),
                    spec.requirements.min_postgres_major,
                    &spec.requirements.min_pgvector,
                );
                match versions {
                    Ok(()) => {
                        checks.set(
                            "VersionsSupported",
                            true,
                            "Supported",
                            "PostgreSQL and pgvector meet the requirements",
                        );
                        match migrate_or_read(ctx, store, spec).await {
                            Ok(v) => {
                                status.schema_version = Some(v);
                                schema_ok = true;
                                checks.set(
                                    "SchemaReady",
                                    true,
                                    "Migrated",
                                    format!("schema {} at version {v}", spec.schema),
                                );
                                if vector.is_none() {
                                    status.pgvector_version =
                                        probe(store).await.ok().and_then(|(_, v)| v);
                                }
                                writable = Ok(());
                            }
                            Err(e) => {
                                checks.set("SchemaReady", false, "MigrationFailed", e);
                                writable = Err("the schema is not ready".into());
                            }
                        }
                    }
                    Err(msg) => {
                        checks.set("VersionsSupported", false, "Unsupported", msg.clone());
                        writable = Err(format!("writes are blocked: {msg}"));
                    }
                }
                if schema_ok && *ctx.leader.borrow() {
                    check_index(ctx, store, spec, &mut checks).await;
                    apply_retention(store, spec).await;
                    check_memory(store, &mut checks).await;
                }
            }
        }
    }

    // A provider that fails its probe is still used (writes fall back to row-only and the backfill retries);
    // only one that cannot even be built is left out.
    let embedder = match build_embedder(ctx, ds).await {
        Ok(None) => {
            checks.set(
                "EmbeddingReady",
                true,
                "Disabled",
                "embeddings are disabled",
            );
            None
        }
        Ok(Some(e)) => {
            match probe_embedder(e.as_ref()).await {
                Ok(()) => checks.set(
                    "EmbeddingReady",
                    true,
                    "Ready",
                    format!("provider {} answers", e.model_id()),
                ),
                Err(msg) => checks.set("EmbeddingReady", false, "ProviderFailing", msg),
            }
            Some(e)
        }
        Err(msg) => {
            checks.set("EmbeddingReady", false, "ProviderUnavailable", msg);
            None
        }
    };

    // Publish what the audit controller and the query API should use now.
    let runtime = match (&store, schema_ok || writable.is_err()) {
        (Some(store), true) if checks.is_true("DatabaseReachable") => {
            Some(Arc::new(StoreRuntime {
                store: store.clone(),
                writer: WriteBatcher::spawn(
                    store.clone(),
                    WRITE_BATCHERS,
                    WRITE_BATCH_MAX,
                    WRITE_TIMEOUT,
                ),
                sanitize: SanitizeConfig {
                    redact_secrets: spec.sanitization.redact_secrets,
                    html: match spec.sanitization.html {
                        HtmlPolicySpec::Strip => HtmlPolicy::Strip,
                        HtmlPolicySpec::Reject => HtmlPolicy::Reject,
                    },
                },
                embedder: embedder.clone(),
                embeddings_enabled: spec.embedding.provider != EmbeddingProvider::Disabled,
                embed_timeout: parse_duration(&spec.embedding.timeout)
                    .unwrap_or(Duration::from_millis(200)),
                writable: writable.clone(),
                cr_ttl: spec
                    .retention
                    .cr_ttl_after_persisted
                    .as_deref()
                    .and_then(|t| parse_duration(t).ok()),
                ef_search: spec.vector_index.ef_search,
                halfvec: spec.vector_index.element_type == VectorElementType::Halfvec,
            }))
        }
        _ => None,
    };
    let ready = runtime.as_ref().is_some_and(|r| r.writable.is_ok());
    ctx.metrics.store_ready.set(i64::from(ready));
    ctx.publish.send_replace(runtime);

    status.phase = Some(phase(&checks));
    status.conditions = checks.conditions;
    if ds.status.as_ref() != Some(&status) && *ctx.leader.borrow() {
        let api: Api<DataStorage> = Api::all(ctx.client.clone());
        let patch = json!({
            "apiVersion": "datastorage.kubernaut.ai/v1alpha1",
            "kind": "DataStorage",
            "status": status,
        });
        api.patch_status(
            &ds.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        info!(phase = ?status.phase, "DataStorage status updated");
    }
    Ok(Action::requeue(
        if status.phase == Some(StorePhase::Ready) {
            RECHECK_OK
        } else {
            RECHECK_PROBLEM
        },
    ))
}

/// The summary phase: Failed when the database cannot be used, Progressing while the schema is being prepared,
/// Degraded when writes work but the index or embeddings do not, Ready otherwise.
fn phase(checks: &Checks) -> StorePhase {
    if !checks.is_true("DatabaseReachable") || !checks.is_true("VersionsSupported") {
        StorePhase::Failed
    } else if !checks.is_true("SchemaReady") {
        StorePhase::Progressing
    } else if !checks.is_true("IndexReady") || !checks.is_true("EmbeddingReady") {
        StorePhase::Degraded
    } else {
        StorePhase::Ready
    }
}

async fn read_secret(client: &Client, r: &SecretKeyRef) -> Result<String, (&'static str, String)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &r.namespace);
    let secret = match api.get_opt(&r.name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err((
                "SecretNotFound",
                format!("Secret {}/{} not found", r.namespace, r.name),
            ));
        }
        Err(e) => {
            return Err((
                "SecretUnreadable",
                format!("cannot read Secret {}/{}: {e}", r.namespace, r.name),
            ));
        }
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .cloned()
        });
    value.filter(|v| !v.is_empty()).ok_or_else(|| {
        (
            "SecretKeyMissing",
            format!("Secret {}/{} has no key {:?}", r.namespace, r.name, r.key),
        )
    })
}

/// Builds (or reuses) the store for the spec's Secret, schema and pool size.
async fn connect(ctx: &DsContext, spec: &DataStorageSpec) -> Result<Store, (&'static str, String)> {
    let url = read_secret(&ctx.client, &spec.database.url_secret_ref).await?;
    let key = format!(
        "{url}\n{}\n{}\n{:?}",
        spec.schema, spec.database.pool_size, spec.database.tls_mode
    );
    let mut cache = ctx.cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.store_key.as_deref() == Some(key.as_str())
        && let Some(store) = &cache.store
    {
        return Ok(store.clone());
    }
    let mut config =
        StoreConfig::new(&url, &spec.schema).map_err(|e| ("InvalidConfig", e.to_string()))?;
    config.pool_size = u32::try_from(spec.database.pool_size.clamp(1, 200)).unwrap_or(10);
    config.tls_mode = spec.database.tls_mode;
    let store = Store::connect_lazy(&config).map_err(|e| ("InvalidConfig", e.to_string()))?;
    cache.store_key = Some(key);
    cache.store = Some(store.clone());
    Ok(store)
}

/// PostgreSQL's version and the installed pgvector version (None when the extension is missing).
async fn probe(store: &Store) -> Result<(String, Option<String>), String> {
    let row = sqlx::query(
        "SELECT current_setting('server_version') AS pg,
                (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS vector",
    )
    .fetch_one(store.pool())
    .await
    .map_err(|e| e.to_string())?;
    let pg: String = row.try_get("pg").map_err(|e| e.to_string())?;
    let vector: Option<String> = row.try_get("vector").map_err(|e| e.to_string())?;
    Ok((pg, vector))
}

/// The leader migrates and creates partitions; other replicas only read the schema version (they serve queries).
async fn migrate_or_read(
    ctx: &DsContext,
    store: &Store,
    spec: &DataStorageSpec,
) -> Result<i64, String> {
    if *ctx.leader.borrow() {
        return migrate(store, spec).await;
    }
    match store.schema_version().await {
        Ok(v) if v > 0 => Ok(v),
        Ok(_) => Err("waiting for the leader to apply the schema".into()),
        Err(e) => Err(format!("waiting for the leader to apply the schema: {e}")),
    }
}

async fn migrate(store: &Store, spec: &DataStorageSpec) -> Result<i64, String> {
    let version = store.migrate().await.map_err(|e| e.to_string())?;
    store
        .ensure_partitions(spec.retention.partitions_ahead)
        .await
        .map_err(|e| format!("creating history partitions: {e}"))?;
    Ok(version)
}

/// Compares the HNSW index with the spec; a difference starts a background rebuild (writes continue).
async fn check_index(ctx: &DsContext, store: &Store, spec: &DataStorageSpec, checks: &mut Checks) {
    let params = match IndexParams::from_spec(&spec.vector_index) {
        Ok(p) => p,
        Err(msg) => return checks.set("IndexReady", false, "InvalidSpec", msg),
    };
    if ctx.index_rebuild.load(Ordering::SeqCst) {
        return checks.set(
            "IndexReady",
            false,
            "Rebuilding",
            "the HNSW index is being rebuilt concurrently",
        );
    }
    let def = match store.index_definition().await {
        Ok(def) => def,
        Err(e) => return checks.set("IndexReady", false, "CheckFailed", e.to_string()),
    };
    if def.as_deref().is_some_and(|d| params.matches(d)) {
        return checks.set("IndexReady", true, "Ready", "HNSW index matches the spec");
    }
    checks.set(
        "IndexReady",
        false,
        "Rebuilding",
        format!(
            "rebuilding the HNSW index with m={}, efConstruction={}",
            params.m, params.ef_construction
        ),
    );
    ctx.index_rebuild.store(true, Ordering::SeqCst);
    let store = store.clone();
    let flag = ctx.index_rebuild.clone();
    tokio::spawn(async move {
        info!(?params, "rebuilding the HNSW index");
        match store.rebuild_index(params).await {
            Ok(()) => info!("HNSW index rebuilt"),
            Err(e) => warn!(error = %e, "HNSW index rebuild failed; will retry"),
        }
        flag.store(false, Ordering::SeqCst);
    });
}

/// Warns when `maintenance_work_mem` is smaller than the HNSW graph of the current embeddings (pgvector then
/// builds the index on disk, many times slower).
async fn check_memory(store: &Store, checks: &mut Checks) {
    let row = sqlx::query(
        "SELECT pg_size_bytes(current_setting('maintenance_work_mem')) AS mwm,
                (SELECT count(*) FROM audit_embeddings) AS n",
    )
    .fetch_one(store.pool())
    .await;
    match row {
        Ok(row) => {
            let mwm: i64 = row.try_get("mwm").unwrap_or(0);
            let n: i64 = row.try_get("n").unwrap_or(0);
            // ~ vector bytes + neighbour lists (2·m links of 8 bytes at layer 0) per element.
            let need = n.saturating_mul(384 * 4 + 2 * 16 * 8 + 64);
            if need <= mwm {
                checks.set(
                    "MemoryAdequate",
                    true,
                    "Adequate",
                    format!("maintenance_work_mem {mwm} bytes fits the index"),
                );
            } else {
                checks.set(
                    "MemoryAdequate",
                    false,
                    "MaintenanceWorkMemTooSmall",
                    format!("maintenance_work_mem is {mwm} bytes; building the HNSW index in memory needs ~{need}"),
                );
            }
        }
        Err(e) => checks.set("MemoryAdequate", false, "CheckFailed", e.to_string()),
    }
}

/// Builds (or reuses) the embedder for the spec and checks that it answers.
async fn build_embedder(
    ctx: &DsContext,
    ds: &DataStorage,
) -> Result<Option<Arc<dyn Embedder>>, String> {
    let spec = &ds.spec.embedding;
    if spec.provider == EmbeddingProvider::Disabled {
        return Ok(None);
    }
    let api_key = match &spec.api_key_secret_ref {
        Some(r) => Some(read_secret(&ctx.client, r).await.map_err(|(_, m)| m)?),
        None => None,
    };
    let redis_url = match &spec.cache.redis_url_secret_ref {
        Some(r) => Some(read_secret(&ctx.client, r).await.map_err(|(_, m)| m)?),
        None => None,
    };
    let key = format!(
        "{}\n{}\n{}\n{}",
        serde_json::to_string(spec).unwrap_or_default(),
        api_key
            .as_deref()
            .map(|v: &str| crate::audit::record::sha256_hex(v.as_bytes()))
            .unwrap_or_default(),
        redis_url
            .as_deref()
            .map(|v: &str| crate::audit::record::sha256_hex(v.as_bytes()))
            .unwrap_or_default(),
        ds.spec.vector_index.dimensions
    );
    let cached = {
        let cache = ctx.cache.lock().unwrap_or_else(|p| p.into_inner());
        (cache.embed_key.as_deref() == Some(key.as_str()))
            .then(|| cache.embedder.clone())
            .flatten()
    };
    let embedder = match cached {
        Some(e) => e,
        None => {
            let e = embed::build(
                spec,
                ds.spec.vector_index.dimensions,
                api_key,
                redis_url,
                ctx.default_model_dir.as_deref(),
                ctx.embed_metrics.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut cache = ctx.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.embed_key = Some(key);
            cache.embedder = Some(e.clone());
            e
        }
    };
    Ok(Some(embedder))
}

/// Checks that the provider answers (a cache hit after the first success, so this stays cheap).
async fn probe_embedder(embedder: &dyn Embedder) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_secs(30),
        embedder.embed(&["health check".to_string()]),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("provider {} failed: {e}", embedder.model_id())),
        Err(_) => Err(format!(
            "provider {} did not answer within 30s",
            embedder.model_id()
        )),
    }
}

/// Drops history partitions older than `retention.days` (legal-hold namespaces' rows are kept).
async fn apply_retention(store: &Store, spec: &DataStorageSpec) {
    match store
        .apply_retention(spec.retention.days, &spec.retention.legal_hold)
        .await
    {
        Ok(dropped) => {
            for (partition, held) in dropped {
                info!(%partition, rows_kept_for_legal_hold = held, "retention dropped a history partition");
            }
        }
        Err(e) => warn!(error = %e, "retention failed; will retry"),
    }
}
