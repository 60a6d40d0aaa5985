//! The steps of a DataStorage reconcile, each failure one [`StepError`] variant with its condition and reason.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tracing::{info, warn};

use super::{Checks, Db, DsContext};
use crate::crd::{
    DataStorage, DataStorageSpec, DataStorageStatus, EmbeddingProvider, SecretKeyRef,
};
use crate::embed::{self, Embedder};
use crate::store::batch::WriteBatcher;
use crate::store::index::IndexParams;
use crate::store::versions::check_versions;
use crate::store::{Store, StoreConfig, StoreError};

/// Group commit: two writer tasks (one writes while the other gathers), batches of up to 128 new audits.
const WRITE_BATCHERS: usize = 2;
const WRITE_BATCH_MAX: usize = 128;
/// How long a reconcile waits for its write before it reports the database busy and retries later.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the embedder's health check may take.
const EMBED_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a step failed; each variant is one reason of one condition.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("Secret {namespace}/{name} not found")]
    SecretNotFound { namespace: String, name: String },
    #[error("cannot read Secret {namespace}/{name}: {source}")]
    SecretUnreadable {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("{0}")]
    InvalidConfig(StoreError),
    #[error("{0}")]
    ConnectionFailed(StoreError),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    MigrationFailed(StoreError),
    #[error("creating history partitions: {0}")]
    PartitionsFailed(StoreError),
    #[error("waiting for the leader to apply the schema{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    AwaitingLeader(Option<StoreError>),
    #[error("{0}")]
    InvalidIndexSpec(String),
    #[error("the HNSW index is being rebuilt concurrently")]
    IndexRebuilding,
    #[error("rebuilding the HNSW index with m={m}, efConstruction={ef_construction}")]
    IndexRebuildStarted { m: i32, ef_construction: i32 },
    #[error("{0}")]
    IndexCheckFailed(StoreError),
    #[error(
        "maintenance_work_mem is {have} bytes; building the HNSW index in memory needs ~{need}"
    )]
    MaintenanceWorkMemTooSmall { have: i64, need: i64 },
    #[error("{0}")]
    MemoryCheckFailed(StoreError),
    /// The provider cannot be built (or its Secret read): writes go without vectors.
    #[error("{0}")]
    ProviderUnavailable(String),
    /// The provider was built but does not answer: still used (writes fall back to row-only, the backfill retries).
    #[error("{0}")]
    ProviderFailing(String),
}

impl StepError {
    pub fn condition(&self) -> &'static str {
        use StepError::*;
        match self {
            SecretNotFound { .. }
            | SecretUnreadable { .. }
            | SecretKeyMissing { .. }
            | InvalidConfig(_)
            | ConnectionFailed(_) => "DatabaseReachable",
            Unsupported(_) => "VersionsSupported",
            MigrationFailed(_) | PartitionsFailed(_) | AwaitingLeader(_) => "SchemaReady",
            InvalidIndexSpec(_)
            | IndexRebuilding
            | IndexRebuildStarted { .. }
            | IndexCheckFailed(_) => "IndexReady",
            MaintenanceWorkMemTooSmall { .. } | MemoryCheckFailed(_) => "MemoryAdequate",
            ProviderUnavailable(_) | ProviderFailing(_) => "EmbeddingReady",
        }
    }

    pub fn reason(&self) -> &'static str {
        use StepError::*;
        match self {
            SecretNotFound { .. } => "SecretNotFound",
            SecretUnreadable { .. } => "SecretUnreadable",
            SecretKeyMissing { .. } => "SecretKeyMissing",
            InvalidConfig(_) => "InvalidConfig",
            ConnectionFailed(_) => "ConnectionFailed",
            Unsupported(_) => "Unsupported",
            MigrationFailed(_) | PartitionsFailed(_) | AwaitingLeader(_) => "MigrationFailed",
            InvalidIndexSpec(_) => "InvalidSpec",
            IndexRebuilding | IndexRebuildStarted { .. } => "Rebuilding",
            IndexCheckFailed(_) | MemoryCheckFailed(_) => "CheckFailed",
            MaintenanceWorkMemTooSmall { .. } => "MaintenanceWorkMemTooSmall",
            ProviderUnavailable(_) => "ProviderUnavailable",
            ProviderFailing(_) => "ProviderFailing",
        }
    }
}

/// Connect → versions → schema (→ index, retention, memory on the leader). `None`: the database is not
/// reachable (nothing to publish).
pub(super) async fn database(
    ctx: &DsContext,
    spec: &DataStorageSpec,
    checks: &mut Checks,
    status: &mut DataStorageStatus,
) -> Option<Db> {
    let connected = match connect(ctx, spec).await {
        Ok(c) => c,
        Err(e) => {
            checks.fail(&e);
            return None;
        }
    };
    let (store, writer) = connected;
    let versions = match store.probe().await {
        Ok(v) => v,
        Err(e) => {
            checks.fail(&StepError::ConnectionFailed(e));
            return None;
        }
    };
    let pg_message = format!("PostgreSQL {}", versions.postgres);
    checks.pass("DatabaseReachable", "Connected", pg_message);
    status.postgres_version = Some(versions.postgres.clone());
    status.pgvector_version = versions.pgvector.clone();
    let db = |writable| {
        Some(Db {
            store: store.clone(),
            writer: writer.clone(),
            writable,
        })
    };
    // A missing extension is created by the migration below (and checked on the next pass); only a
    // present-but-old one, or an old PostgreSQL, blocks writes.
    let req = &spec.requirements;
    let have_vector = versions.pgvector.as_deref().unwrap_or(&req.min_pgvector);
    if let Err(msg) = check_versions(
        &versions.postgres,
        Some(have_vector),
        req.min_postgres_major,
        &req.min_pgvector,
    ) {
        checks.fail(&StepError::Unsupported(msg.clone()));
        return db(Err(format!("writes are blocked: {msg}")));
    }
    checks.pass(
        "VersionsSupported",
        "Supported",
        "PostgreSQL and pgvector meet the requirements",
    );
    match migrate_or_read(ctx, &store, spec).await {
        Ok(v) => {
            status.schema_version = Some(v);
            checks.pass(
                "SchemaReady",
                "Migrated",
                format!("schema {} at version {v}", spec.schema),
            );
        }
        Err(e) => {
            checks.fail(&e);
            return db(Err("the schema is not ready".into()));
        }
    }
    if versions.pgvector.is_none() {
        status.pgvector_version = store.probe().await.ok().and_then(|v| v.pgvector);
    }
    if ctx.is_leader() {
        check_index(ctx, &store, spec, checks).await;
        apply_retention(&store, spec).await;
        check_memory(&store, spec, checks).await;
    }
    db(Ok(()))
}

async fn read_secret(client: &kube::Client, r: &SecretKeyRef) -> Result<String, StepError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &r.namespace);
    let (namespace, name) = (r.namespace.clone(), r.name.clone());
    let secret = match api.get_opt(&r.name).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(StepError::SecretNotFound { namespace, name }),
        Err(source) => {
            return Err(StepError::SecretUnreadable {
                namespace,
                name,
                source,
            });
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
    value
        .filter(|v| !v.is_empty())
        .ok_or(StepError::SecretKeyMissing {
            namespace,
            name,
            key: r.key.clone(),
        })
}

/// Builds (or reuses) the store and its write batcher for the spec's Secret, schema and pool size. The batcher's
/// writer tasks live as long as the store: they stop when the last runtime holding the old pair is dropped.
async fn connect(
    ctx: &DsContext,
    spec: &DataStorageSpec,
) -> Result<(Store, WriteBatcher), StepError> {
    let url = read_secret(&ctx.client, &spec.database.url_secret_ref).await?;
    let key = format!(
        "{url}\n{}\n{}\n{:?}",
        spec.schema, spec.database.pool_size, spec.database.tls_mode
    );
    let mut cache = ctx.cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.store_key.as_deref() == Some(key.as_str())
        && let Some(pair) = &cache.store
    {
        return Ok(pair.clone());
    }
    let mut config = StoreConfig::new(&url, &spec.schema).map_err(StepError::InvalidConfig)?;
    config.pool_size = u32::try_from(spec.database.pool_size.clamp(1, 200)).unwrap_or(10);
    config.tls_mode = spec.database.tls_mode;
    let store = Store::connect_lazy(&config).map_err(StepError::InvalidConfig)?;
    let writer = WriteBatcher::spawn(
        store.clone(),
        WRITE_BATCHERS,
        WRITE_BATCH_MAX,
        WRITE_TIMEOUT,
    );
    cache.store_key = Some(key);
    cache.store = Some((store.clone(), writer.clone()));
    Ok((store, writer))
}

/// The leader migrates and creates partitions; other replicas only read the schema version (they serve queries).
async fn migrate_or_read(
    ctx: &DsContext,
    store: &Store,
    spec: &DataStorageSpec,
) -> Result<i64, StepError> {
    if ctx.is_leader() {
        let version = store.migrate().await.map_err(StepError::MigrationFailed)?;
        store
            .ensure_partitions(spec.retention.partitions_ahead)
            .await
            .map_err(StepError::PartitionsFailed)?;
        return Ok(version);
    }
    match store.schema_version().await {
        Ok(v) if v > 0 => Ok(v),
        Ok(_) => Err(StepError::AwaitingLeader(None)),
        Err(e) => Err(StepError::AwaitingLeader(Some(e))),
    }
}

/// Compares the HNSW index with the spec; a difference starts a background rebuild (writes continue).
async fn check_index(ctx: &DsContext, store: &Store, spec: &DataStorageSpec, checks: &mut Checks) {
    let params = match IndexParams::from_spec(&spec.vector_index) {
        Ok(p) => p,
        Err(msg) => return checks.fail(&StepError::InvalidIndexSpec(msg)),
    };
    if ctx.index_rebuild.load(Ordering::SeqCst) {
        return checks.fail(&StepError::IndexRebuilding);
    }
    let def = match store.index_definition().await {
        Ok(def) => def,
        Err(e) => return checks.fail(&StepError::IndexCheckFailed(e)),
    };
    if def.as_deref().is_some_and(|d| params.matches(d)) {
        return checks.pass("IndexReady", "Ready", "HNSW index matches the spec");
    }
    checks.fail(&StepError::IndexRebuildStarted {
        m: params.m,
        ef_construction: params.ef_construction,
    });
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

/// Warns when `maintenance_work_mem` is smaller than the HNSW graph of the current embeddings.
async fn check_memory(store: &Store, spec: &DataStorageSpec, checks: &mut Checks) {
    let index = &spec.vector_index;
    match store
        .index_memory(i64::from(index.dimensions), i64::from(index.m))
        .await
    {
        Ok(m) if m.adequate() => checks.pass(
            "MemoryAdequate",
            "Adequate",
            format!(
                "maintenance_work_mem {} bytes fits the index",
                m.maintenance_work_mem
            ),
        ),
        Ok(m) => checks.fail(&StepError::MaintenanceWorkMemTooSmall {
            have: m.maintenance_work_mem,
            need: m.needed,
        }),
        Err(e) => checks.fail(&StepError::MemoryCheckFailed(e)),
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

/// Builds (or reuses) the embedder and checks that it answers; sets `EmbeddingReady`. A provider that fails its
/// probe is still used (writes fall back to row-only and the backfill retries); only one that cannot even be
/// built is left out.
pub(super) async fn embedder(
    ctx: &DsContext,
    ds: &DataStorage,
    checks: &mut Checks,
) -> Option<Arc<dyn Embedder>> {
    if ds.spec.embedding.provider == EmbeddingProvider::Disabled {
        checks.pass("EmbeddingReady", "Disabled", "embeddings are disabled");
        return None;
    }
    let e = match build_embedder(ctx, ds).await {
        Ok(e) => e,
        Err(e) => {
            checks.fail(&e);
            return None;
        }
    };
    match probe_embedder(e.as_ref()).await {
        Ok(()) => checks.pass(
            "EmbeddingReady",
            "Ready",
            format!("provider {} answers", e.model_id()),
        ),
        Err(err) => checks.fail(&err),
    }
    Some(e)
}

async fn build_embedder(ctx: &DsContext, ds: &DataStorage) -> Result<Arc<dyn Embedder>, StepError> {
    let spec = &ds.spec.embedding;
    let unavailable = |e: StepError| StepError::ProviderUnavailable(e.to_string());
    let api_key = match &spec.api_key_secret_ref {
        Some(r) => Some(read_secret(&ctx.client, r).await.map_err(unavailable)?),
        None => None,
    };
    let redis_url = match &spec.cache.redis_url_secret_ref {
        Some(r) => Some(read_secret(&ctx.client, r).await.map_err(unavailable)?),
        None => None,
    };
    let digest = |v: &Option<String>| {
        v.as_deref()
            .map(|v| crate::audit::record::sha256_hex(v.as_bytes()))
            .unwrap_or_default()
    };
    let key = format!(
        "{}\n{}\n{}\n{}",
        serde_json::to_string(spec).unwrap_or_default(),
        digest(&api_key),
        digest(&redis_url),
        ds.spec.vector_index.dimensions
    );
    {
        let cache = ctx.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.embed_key.as_deref() == Some(key.as_str())
            && let Some(e) = &cache.embedder
        {
            return Ok(e.clone());
        }
    }
    let e = embed::build(
        spec,
        ds.spec.vector_index.dimensions,
        api_key,
        redis_url,
        ctx.default_model_dir.as_deref(),
        ctx.embed_metrics.clone(),
    )
    .await
    .map_err(|e| StepError::ProviderUnavailable(e.to_string()))?;
    let mut cache = ctx.cache.lock().unwrap_or_else(|p| p.into_inner());
    cache.embed_key = Some(key);
    cache.embedder = Some(e.clone());
    Ok(e)
}

/// Checks that the provider answers (a cache hit after the first success, so this stays cheap).
async fn probe_embedder(embedder: &dyn Embedder) -> Result<(), StepError> {
    let texts = ["health check".to_string()];
    match tokio::time::timeout(EMBED_PROBE_TIMEOUT, embedder.embed(&texts)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(StepError::ProviderFailing(format!(
            "provider {} failed: {e}",
            embedder.model_id()
        ))),
        Err(_) => Err(StepError::ProviderFailing(format!(
            "provider {} did not answer within {}s",
            embedder.model_id(),
            EMBED_PROBE_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_error_names_one_condition_and_reason() {
        let store = || StoreError::WriteTimeout(Duration::from_secs(1));
        let cases = [
            (
                StepError::SecretNotFound {
                    namespace: "n".into(),
                    name: "s".into(),
                },
                "DatabaseReachable",
                "SecretNotFound",
            ),
            (
                StepError::SecretKeyMissing {
                    namespace: "n".into(),
                    name: "s".into(),
                    key: "url".into(),
                },
                "DatabaseReachable",
                "SecretKeyMissing",
            ),
            (
                StepError::ConnectionFailed(store()),
                "DatabaseReachable",
                "ConnectionFailed",
            ),
            (
                StepError::Unsupported("old".into()),
                "VersionsSupported",
                "Unsupported",
            ),
            (
                StepError::AwaitingLeader(None),
                "SchemaReady",
                "MigrationFailed",
            ),
            (StepError::IndexRebuilding, "IndexReady", "Rebuilding"),
            (
                StepError::MaintenanceWorkMemTooSmall { have: 1, need: 2 },
                "MemoryAdequate",
                "MaintenanceWorkMemTooSmall",
            ),
            (
                StepError::ProviderFailing("x".into()),
                "EmbeddingReady",
                "ProviderFailing",
            ),
        ];
        for (e, condition, reason) in cases {
            assert_eq!((e.condition(), e.reason()), (condition, reason), "{e}");
        }
        assert_eq!(
            StepError::AwaitingLeader(None).to_string(),
            "waiting for the leader to apply the schema"
        );
        assert_eq!(
            StepError::SecretKeyMissing {
                namespace: "n".into(),
                name: "s".into(),
                key: "url".into()
            }
            .to_string(),
            "Secret n/s has no key \"url\""
        );
    }
}
