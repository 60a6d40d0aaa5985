//! PostgreSQL: the schema (sqlx migrations), the write transaction of one audit generation, deletion marks and
//! hash-chain verification. Every statement is parameterized; the only dynamic SQL is DDL built from a
//! [`SchemaName`], which is validated to be a plain identifier.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgvector::Vector;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::audit::Prepared;
use crate::audit::record::{self, ChainCheck, HistoryEntry};
use crate::crd::TlsMode;

pub mod batch;
pub mod checkpoint;
pub mod index;
pub mod insights;
pub mod list;
pub mod probe;
pub mod search;
pub mod versions;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The unique index that scopes remediationRequestId per (clusterName, namespace) among undeleted audits.
pub const REQUEST_ID_SCOPE_KEY: &str = "audits_request_id_scope_key";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "invalid schema name {0:?}: use lowercase letters, digits and '_', starting with a letter or '_' (at most 63)"
    )]
    InvalidSchema(String),
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the pgvector extension is not installed in this database and could not be created ({0}); \
         ask a superuser to run CREATE EXTENSION vector"
    )]
    NoVector(String),
    #[error("invalid uid {0:?}")]
    InvalidUid(String),
    #[error("embedding has {got} dimensions, the store expects {expected}")]
    Dimensions { got: usize, expected: usize },
    #[error(
        "the write did not complete within {0:?} (database busy: connections exhausted or tables locked); it is retried"
    )]
    WriteTimeout(Duration),
}

impl StoreError {
    /// Short, bounded label for metrics (`datastorage_write_total{status}` etc.).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::InvalidSchema(_) | StoreError::InvalidUrl(_) => "config",
            StoreError::Database(sqlx::Error::PoolTimedOut) | StoreError::WriteTimeout(_) => {
                "pool_timeout"
            }
            StoreError::Database(sqlx::Error::Io(_))
            | StoreError::Database(sqlx::Error::PoolClosed) => "connection",
            StoreError::Database(_) => "postgres",
            StoreError::Migrate(_) => "migrate",
            StoreError::NoVector(_) => "extension",
            StoreError::InvalidUid(_) | StoreError::Dimensions { .. } => "invalid",
        }
    }
}

/// A validated PostgreSQL schema name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.starts_with("pg_");
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(StoreError::InvalidSchema(s.to_string()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub url: String,
    pub schema: SchemaName,
    /// Connections of the write pool (the leader's writers, migrations, status checks).
    pub pool_size: u32,
    /// Connections of the read pool (the query API); 0: half of `pool_size`, at least 2. Reads never take a
    /// write connection, so a flood of expensive queries waits (and times out) among itself while writes go on.
    pub read_pool_size: u32,
    /// How long a query API statement may run (`statement_timeout` of every read connection).
    pub read_statement_timeout: Duration,
    /// How long a read waits for a free read connection before the API answers 503.
    pub read_acquire_timeout: Duration,
    pub acquire_timeout: Duration,
    pub tls_mode: TlsMode,
}

impl StoreConfig {
    pub fn new(url: &str, schema: &str) -> Result<Self, StoreError> {
        Ok(Self {
            url: url.to_string(),
            schema: SchemaName::parse(schema)?,
            pool_size: 10,
            read_pool_size: 0,
            read_statement_timeout: Duration::from_secs(5),
            read_acquire_timeout: Duration::from_secs(2),
            acquire_timeout: Duration::from_secs(5),
            tls_mode: TlsMode::Prefer,
        })
    }
}

/// The vector to store with an audit.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRow {
    pub model_id: String,
    pub vector: Vec<f32>,
}

/// An audit waiting for its vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEmbedding {
    pub audit_id: i64,
    pub text: String,
    pub text_sha: String,
}

/// One generation of one audit to write.
#[derive(Debug, Clone)]
pub struct AuditWrite<'a> {
    pub prepared: &'a Prepared,
    pub embedding: Option<EmbeddingRow>,
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new generation was stored (history row appended).
    Stored(StoredAudit),
    /// This generation (or a newer one) was already stored: nothing changed.
    Unchanged(StoredAudit),
    /// Another object of the same (clusterName, namespace) already holds this remediationRequestId.
    /// `namespace` is always the writer's own; `name` is the holder's (empty when it went away meanwhile: the
    /// write can be tried again).
    Duplicate { namespace: String, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAudit {
    pub audit_id: i64,
    pub generation: i64,
    pub content_hash: String,
    pub chain_hash: String,
    pub persisted_at: DateTime<Utc>,
    /// Whether a vector for the current text and model is stored.
    pub embedding_stored: bool,
}

/// An audit's history and what verifying it from the database found ([`Store::verify_audit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAudit {
    /// The RemediationAudit's uid.
    pub uid: String,
    pub entries: Vec<HistoryEntry>,
    pub verification: record::Verification,
}

/// The audit store.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// The query API's pool: its own connections, read-only transactions, a statement timeout.
    read_pool: PgPool,
    schema: SchemaName,
}

impl Store {
    /// Connects lazily (the pool opens connections on demand, so a database that is down does not fail start-up).
    pub fn connect_lazy(config: &StoreConfig) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(&config.url)
            .map_err(|e| StoreError::InvalidUrl(redact_url_error(&e.to_string())))?
            .options([("search_path", format!("{},public", config.schema.as_str()))])
            .application_name("datastorage")
            .ssl_mode(match config.tls_mode {
                TlsMode::Disable => PgSslMode::Disable,
                TlsMode::Prefer => PgSslMode::Prefer,
                TlsMode::Require => PgSslMode::Require,
                TlsMode::VerifyCa => PgSslMode::VerifyCa,
                TlsMode::VerifyFull => PgSslMode::VerifyFull,
            });
        let read_options = options.clone().options([
            (
                "statement_timeout",
                format!("{}ms", config.read_statement_timeout.as_millis().max(1)),
            ),
            ("default_transaction_read_only", "on".to_string()),
            ("idle_in_transaction_session_timeout", "10s".to_string()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size.max(1))
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options);
        let read_size = match config.read_pool_size {
            0 => (config.pool_size / 2).max(2),
            n => n,
        };
        let read_pool = PgPoolOptions::new()
            .max_connections(read_size)
            .acquire_timeout(config.read_acquire_timeout)
            .connect_lazy_with(read_options.application_name("datastorage-api"));
        Ok(Self {
            pool,
            read_pool,
            schema: config.schema.clone(),
        })
    }

    /// The write pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The query API's read pool.
    pub fn read_pool(&self) -> &PgPool {
        &self.read_pool
    }

    pub fn schema(&self) -> &SchemaName {
        &self.schema
    }

    /// Creates the `vector` extension (if allowed and missing) and the schema, then applies every migration.
    /// Idempotent; concurrent runs are serialized by sqlx's advisory lock. Returns the latest applied version.
    pub async fn migrate(&self) -> Result<i64, StoreError> {
        let has_vector: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')",
        )
        .fetch_one(&self.pool)
        .await?;
        if !has_vector {
            sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
                .execute(&self.pool)
                .await
                .map_err(|e| StoreError::NoVector(e.to_string()))?;
        }
        // Identifier validated by SchemaName::parse: lowercase ASCII, digits and '_' only.
        let ddl = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema.as_str());
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&self.pool)
            .await?;
        MIGRATOR.run(&self.pool).await?;
        self.schema_version().await
    }

    /// Latest successfully applied migration version (0 when none).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        Ok(v.unwrap_or(0))
    }

    /// Writes one generation of one audit in one transaction: lock/insert the current row, append the history
    /// entry (hash chain), and store the vector when one is given. Replaying a stored generation is a no-op.
    pub async fn write_audit(&self, write: &AuditWrite<'_>) -> Result<WriteOutcome, StoreError> {
        let p = write.prepared;
        let uid = Uuid::parse_str(&p.record.uid)
            .map_err(|_| StoreError::InvalidUid(p.record.uid.clone()))?;
        if let Some(e) = &write.embedding {
            check_dims(e)?;
        }
        // Two attempts: the second covers the race where another writer inserted the same uid concurrently.
        for _ in 0..2 {
            let mut tx = self.pool.begin().await?;
            match write_in_tx(&mut tx, uid, write).await {
                Ok(Some(outcome)) => {
                    if matches!(outcome, WriteOutcome::Stored(_)) {
                        tx.commit().await?;
                    } else {
                        tx.rollback().await?;
                    }
                    return Ok(outcome);
                }
                Ok(None) => {
                    tx.rollback().await?;
                    continue;
                }
                Err(StoreError::Database(sqlx::Error::Database(db)))
                    if db.constraint() == Some(REQUEST_ID_SCOPE_KEY) =>
                {
                    tx.rollback().await?;
                    return self.duplicate_of(&p.record).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Database(sqlx::Error::Protocol(
            "concurrent writers kept racing on the same audit".into(),
        )))
    }

    /// What is stored for the RemediationAudit with this uid (its current generation), if anything.
    pub async fn stored_audit(&self, uid: &str) -> Result<Option<StoredAudit>, StoreError> {
        let uid = Uuid::parse_str(uid).map_err(|_| StoreError::InvalidUid(uid.to_string()))?;
        let row = sqlx::query(
            "SELECT a.id, a.generation, a.content_hash, a.chain_hash, a.updated_at,
                    (e.text_sha IS NOT DISTINCT FROM a.embedding_text_sha) AS embedded
             FROM audits a LEFT JOIN audit_embeddings e ON e.audit_id = a.id
             WHERE a.cr_uid = $1",
        )
        .bind(uid)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(stored_from_row).transpose()
    }

    /// The audit holding `record`'s remediationRequestId in its (clusterName, namespace). The holder is looked up
    /// in that scope only, so a rejection names an audit of the writer's own namespace (never another one's).
    async fn duplicate_of(&self, record: &record::AuditRecord) -> Result<WriteOutcome, StoreError> {
        let name: Option<String> = sqlx::query_scalar(
            "SELECT name FROM audits
             WHERE cluster_name = $1 AND namespace = $2 AND remediation_request_id = $3 AND deleted_at IS NULL",
        )
        .bind(&record.cluster_name)
        .bind(&record.namespace)
        .bind(&record.remediation_request_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(WriteOutcome::Duplicate {
            namespace: record.namespace.clone(),
            name: name.unwrap_or_default(),
        })
    }

    /// Records that the RemediationAudit with this uid was deleted (the audit itself is kept). Returns whether a
    /// stored audit was marked.
    pub async fn mark_deleted(&self, uid: &str) -> Result<bool, StoreError> {
        let uid = Uuid::parse_str(uid).map_err(|_| StoreError::InvalidUid(uid.to_string()))?;
        let done = sqlx::query(
            "UPDATE audits SET deleted_at = COALESCE(deleted_at, now()), updated_at = now() WHERE cr_uid = $1",
        )
        .bind(uid)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Stores (or replaces) the vector of an audit if the audit's embedding text still has the given sha.
    pub async fn store_embedding(
        &self,
        audit_id: i64,
        text_sha: &str,
        embedding: &EmbeddingRow,
    ) -> Result<bool, StoreError> {
        check_dims(embedding)?;
        let done = sqlx::query(
            "INSERT INTO audit_embeddings (audit_id, namespace, model_id, text_sha, embedding)
             SELECT a.id, a.namespace, $2, $3, $4 FROM audits a WHERE a.id = $1 AND a.embedding_text_sha = $3
             ON CONFLICT (audit_id) DO UPDATE
                SET model_id = EXCLUDED.model_id, text_sha = EXCLUDED.text_sha,
                    embedding = EXCLUDED.embedding, created_at = now()",
        )
        .bind(audit_id)
        .bind(&embedding.model_id)
        .bind(text_sha)
        .bind(Vector::from(embedding.vector.clone()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Audits whose vector is missing, from another model, or computed from an older text — oldest first.
    pub async fn pending_embeddings(
        &self,
        model_id: &str,
        limit: i64,
    ) -> Result<Vec<PendingEmbedding>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.id, a.embedding_text, a.embedding_text_sha
             FROM audits a LEFT JOIN audit_embeddings e ON e.audit_id = a.id
             WHERE e.audit_id IS NULL OR e.model_id <> $1 OR e.text_sha <> a.embedding_text_sha
             ORDER BY a.id
             LIMIT $2",
        )
        .bind(model_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(PendingEmbedding {
                    audit_id: r.try_get("id")?,
                    text: r.try_get("embedding_text")?,
                    text_sha: r.try_get("embedding_text_sha")?,
                })
            })
            .collect()
    }

    /// How many audits lack a current vector for `model_id`.
    pub async fn embedding_backlog(&self, model_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM audits a LEFT JOIN audit_embeddings e ON e.audit_id = a.id
             WHERE e.audit_id IS NULL OR e.model_id <> $1 OR e.text_sha <> a.embedding_text_sha",
        )
        .bind(model_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The history of an audit, ordered by generation.
    pub async fn history(&self, audit_id: i64) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT generation, record, content_hash, prev_chain_hash, chain_hash
             FROM audit_history_all WHERE audit_id = $1 ORDER BY generation, id",
        )
        .bind(audit_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(HistoryEntry {
                    generation: r.try_get("generation")?,
                    record: r.try_get("record")?,
                    content_hash: r.try_get("content_hash")?,
                    prev_chain_hash: r.try_get("prev_chain_hash")?,
                    chain_hash: r.try_get("chain_hash")?,
                })
            })
            .collect()
    }

    /// Verifies an audit's hash chain in the database (SQL `verify_audit_chain`).
    pub async fn verify_chain_sql(&self, audit_id: i64) -> Result<Vec<ChainCheck>, StoreError> {
        let rows = sqlx::query("SELECT generation, ok, problem FROM verify_audit_chain($1)")
            .bind(audit_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ChainCheck {
                    generation: r.try_get("generation")?,
                    ok: r.try_get("ok")?,
                    problem: r.try_get("problem")?,
                })
            })
            .collect()
    }

    /// Verifies an audit's hash chain in Rust from the stored rows.
    pub async fn verify_chain(&self, audit_id: i64) -> Result<Vec<ChainCheck>, StoreError> {
        Ok(record::verify_chain(&self.history(audit_id).await?))
    }

    /// The record the current row of audit `id` shows (what list, search and get display), in the form the chain
    /// hashes, with the row's own content and chain hashes; `None` when there is no such row.
    pub async fn current_record(
        &self,
        id: i64,
    ) -> Result<Option<(record::AuditRecord, String, String)>, StoreError> {
        let mut conn = self.read_pool.acquire().await?;
        current_record_in(&mut conn, id).await
    }

    /// Verifies audit `id` from the database alone: its chain (every history entry), that the current row's chain
    /// hash is the chain's head, and that the current row shows exactly the head record. `None`: no such audit.
    pub async fn verify_audit(&self, id: i64) -> Result<Option<VerifiedAudit>, StoreError> {
        let Some((shown, content_hash, chain_hash)) = self.current_record(id).await? else {
            return Ok(None);
        };
        let entries = self.history(id).await?;
        let verification = record::verify_current(&entries, &shown, &content_hash, &chain_hash);
        Ok(Some(VerifiedAudit {
            uid: shown.uid,
            entries,
            verification,
        }))
    }

    /// Creates the monthly history partitions from this month to `months_ahead` months ahead.
    pub async fn ensure_partitions(&self, months_ahead: i32) -> Result<i32, StoreError> {
        Ok(sqlx::query_scalar("SELECT ensure_history_partitions($1)")
            .bind(months_ahead.clamp(0, 120))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Drops history partitions entirely older than `days`, keeping `legal_hold` namespaces' rows in
    /// `audit_history_legal_hold`. Returns `(partition, rows held)` per dropped partition.
    pub async fn apply_retention(
        &self,
        days: i32,
        legal_hold: &[String],
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT dropped, rows_held FROM apply_retention($1, $2)")
            .bind(days)
            .bind(legal_hold)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get("dropped")?, r.try_get("rows_held")?)))
            .collect()
    }

    /// The definition of the HNSW index, if it exists.
    pub async fn index_definition(&self) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = 'audit_embeddings_hnsw_idx'",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// [`Store::current_record`] on one connection (inside a caller's transaction).
pub(crate) async fn current_record_in(
    conn: &mut sqlx::PgConnection,
    id: i64,
) -> Result<Option<(record::AuditRecord, String, String)>, StoreError> {
    let row = sqlx::query(
        "SELECT cr_uid::text AS uid, namespace, name, generation, remediation_request_id, alert_fingerprint,
                alert_name, phase, outcome, action_type, severity, environment, cluster_name, target_resource,
                start_time, end_time, duration_ms, error_message, details, content_hash, chain_hash
         FROM audits WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let millis = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let shown = record::AuditRecord {
        uid: r.try_get("uid")?,
        namespace: r.try_get("namespace")?,
        name: r.try_get("name")?,
        generation: r.try_get("generation")?,
        remediation_request_id: r.try_get("remediation_request_id")?,
        alert_fingerprint: r.try_get("alert_fingerprint")?,
        alert_name: r.try_get("alert_name")?,
        phase: r.try_get("phase")?,
        outcome: r.try_get("outcome")?,
        action_type: r.try_get("action_type")?,
        severity: r.try_get("severity")?,
        environment: r.try_get("environment")?,
        cluster_name: r.try_get("cluster_name")?,
        target_resource: r.try_get("target_resource")?,
        start_time: millis(r.try_get("start_time")?),
        end_time: r
            .try_get::<Option<DateTime<Utc>>, _>("end_time")?
            .map(millis),
        duration_ms: r.try_get("duration_ms")?,
        error_message: r.try_get("error_message")?,
        details: r
            .try_get::<Option<sqlx::types::Json<serde_json::Value>>, _>("details")?
            .map(|j| j.0),
    };
    Ok(Some((
        shown,
        r.try_get("content_hash")?,
        r.try_get("chain_hash")?,
    )))
}

const DIMENSIONS: usize = crate::crd::VECTOR_DIMENSIONS;

fn check_dims(e: &EmbeddingRow) -> Result<(), StoreError> {
    if e.vector.len() != DIMENSIONS {
        return Err(StoreError::Dimensions {
            got: e.vector.len(),
            expected: DIMENSIONS,
        });
    }
    Ok(())
}

/// The body of the write transaction. `Ok(None)` asks the caller to retry (lost an insert race).
/// A stored audit from a row of `id, generation, content_hash, chain_hash, updated_at, embedded`.
fn stored_from_row(row: &sqlx::postgres::PgRow) -> Result<StoredAudit, StoreError> {
    Ok(StoredAudit {
        audit_id: row.try_get("id")?,
        generation: row.try_get("generation")?,
        content_hash: row.try_get("content_hash")?,
        chain_hash: row.try_get("chain_hash")?,
        persisted_at: row.try_get("updated_at")?,
        embedding_stored: row.try_get::<Option<bool>, _>("embedded")?.unwrap_or(false),
    })
}

async fn write_in_tx(
    tx: &mut Transaction<'static, Postgres>,
    uid: Uuid,
    write: &AuditWrite<'_>,
) -> Result<Option<WriteOutcome>, StoreError> {
    let p = write.prepared;
    let r = &p.record;
    let text_sha = record::sha256_hex(p.embedding_text.as_bytes());

    let current = sqlx::query(
        "SELECT a.id, a.generation, a.content_hash, a.chain_hash, a.updated_at, a.embedding_text_sha,
                (e.text_sha IS NOT DISTINCT FROM a.embedding_text_sha) AS embedded
         FROM audits a LEFT JOIN audit_embeddings e ON e.audit_id = a.id
         WHERE a.cr_uid = $1 FOR UPDATE OF a",
    )
    .bind(uid)
    .fetch_optional(&mut **tx)
    .await?;

    let prev_chain = match &current {
        Some(row) => {
            let generation: i64 = row.try_get("generation")?;
            if generation >= r.generation {
                return Ok(Some(WriteOutcome::Unchanged(stored_from_row(row)?)));
            }
            row.try_get::<String, _>("chain_hash")?
        }
        None => String::new(),
    };
    let chain = record::chain_hash(&prev_chain, &p.content_hash);
    let details = r.details.clone().map(sqlx::types::Json);

    // An update appends the history entry first: the audits_guard_update trigger (migrations) lets the current
    // row change only to what the history entry just appended for the new generation says.
    if let Some(row) = &current {
        append_history(tx, row.try_get("id")?, uid, write, &prev_chain, &chain).await?;
    }
    let row = if current.is_some() {
        sqlx::query(
            "UPDATE audits SET namespace = $2, name = $3, remediation_request_id = $4, alert_fingerprint = $5,
                alert_name = $6, phase = $7, outcome = $8, action_type = $9, severity = $10, environment = $11,
                cluster_name = $12, target_resource = $13, start_time = $14, end_time = $15, duration_ms = $16,
                error_message = $17, details = $18, generation = $19, content_hash = $20, chain_hash = $21,
                embedding_text = $22, embedding_text_sha = $23, updated_at = now()
             WHERE cr_uid = $1
             RETURNING id, updated_at",
        )
    } else {
        sqlx::query(
            "INSERT INTO audits (cr_uid, namespace, name, remediation_request_id, alert_fingerprint, alert_name,
                phase, outcome, action_type, severity, environment, cluster_name, target_resource, start_time,
                end_time, duration_ms, error_message, details, generation, content_hash, chain_hash,
                embedding_text, embedding_text_sha)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
                $21, $22, $23)
             ON CONFLICT (cr_uid) DO NOTHING
             RETURNING id, updated_at",
        )
    }
    .bind(uid)
    .bind(&r.namespace)
    .bind(&r.name)
    .bind(&r.remediation_request_id)
    .bind(&r.alert_fingerprint)
    .bind(&r.alert_name)
    .bind(&r.phase)
    .bind(&r.outcome)
    .bind(&r.action_type)
    .bind(&r.severity)
    .bind(&r.environment)
    .bind(&r.cluster_name)
    .bind(&r.target_resource)
    .bind(p.start_time)
    .bind(p.end_time)
    .bind(r.duration_ms)
    .bind(&r.error_message)
    .bind(details)
    .bind(r.generation)
    .bind(&p.content_hash)
    .bind(&chain)
    .bind(&p.embedding_text)
    .bind(&text_sha)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let audit_id: i64 = row.try_get("id")?;
    let persisted_at: DateTime<Utc> = row.try_get("updated_at")?;
    if current.is_none() {
        append_history(tx, audit_id, uid, write, &prev_chain, &chain).await?;
    }

    let mut embedding_stored = false;
    if let Some(e) = &write.embedding {
        sqlx::query(
            "INSERT INTO audit_embeddings (audit_id, namespace, model_id, text_sha, embedding)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (audit_id) DO UPDATE
                SET namespace = EXCLUDED.namespace, model_id = EXCLUDED.model_id, text_sha = EXCLUDED.text_sha,
                    embedding = EXCLUDED.embedding, created_at = now()",
        )
        .bind(audit_id)
        .bind(&r.namespace)
        .bind(&e.model_id)
        .bind(&text_sha)
        .bind(Vector::from(e.vector.clone()))
        .execute(&mut **tx)
        .await?;
        embedding_stored = true;
    } else if let Some(row) = &current {
        // The vector of an earlier generation is still current if the embedding text did not change.
        let old_sha: String = row.try_get("embedding_text_sha")?;
        embedding_stored =
            old_sha == text_sha && row.try_get::<Option<bool>, _>("embedded")?.unwrap_or(false);
    }

    Ok(Some(WriteOutcome::Stored(StoredAudit {
        audit_id,
        generation: r.generation,
        content_hash: p.content_hash.clone(),
        chain_hash: chain,
        persisted_at,
        embedding_stored,
    })))
}

/// Appends the history entry of `write` (its canonical record and hashes) to the chain of `audit_id`.
async fn append_history(
    tx: &mut Transaction<'static, Postgres>,
    audit_id: i64,
    uid: Uuid,
    write: &AuditWrite<'_>,
    prev_chain: &str,
    chain: &str,
) -> Result<(), StoreError> {
    let p = write.prepared;
    sqlx::query(
        "INSERT INTO audit_history (audit_id, cr_uid, namespace, generation, record, content_hash,
            prev_chain_hash, chain_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(audit_id)
    .bind(uid)
    .bind(&p.record.namespace)
    .bind(p.record.generation)
    .bind(&p.canonical_json)
    .bind(&p.content_hash)
    .bind(prev_chain)
    .bind(chain)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// sqlx's URL parse errors may echo the URL; never let a password reach a log or a status.
fn redact_url_error(msg: &str) -> String {
    let (redacted, _) = crate::audit::sanitize::redact_secrets(msg);
    redacted.into_owned()
}
