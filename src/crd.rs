//! The two custom resources, `RemediationAudit` and `DataStorage` (group `datastorage.kubernaut.ai`, `v1alpha1`).
//!
//! The doc comments on every field become the CRD's OpenAPI descriptions, so `kubectl explain remediationaudit.spec`
//! reads like a manual. The API server enforces the structural rules (types, required fields, enums) and, at apply
//! time, every content rule of the operator's validator that CEL can express ([`audit_spec_rules`]: blank required
//! fields, byte lengths, NUL and control characters, markup in identifiers, the `actionType` pattern, `endTime` not
//! before `startTime`), with the validator's own messages. The rest (a start time in the future, credentials in the
//! opaque ids, the size and depth of `details`, duplicates) is the operator's: its validator still checks every rule
//! (objects admitted before these rules existed, or by an API server that skipped them) and reports each failure on
//! the resource's status.

use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// API group of both resources.
pub const GROUP: &str = "datastorage.kubernaut.ai";
/// API version of both resources.
pub const VERSION: &str = "v1alpha1";

// ---------------------------------------------------------------------------------------------------------------
// RemediationAudit
// ---------------------------------------------------------------------------------------------------------------

/// One automated remediation action (for example "restarted pod after OOMKilled"), to be stored durably.
///
/// The resource's namespace is the audit's namespace and its name is the audit's name. The operator validates and
/// sanitizes the spec, writes it to PostgreSQL with an immutable, hash-chained history, and reports the result in
/// `status`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "datastorage.kubernaut.ai",
    version = "v1alpha1",
    kind = "RemediationAudit",
    doc = "A record of one automated remediation action, stored durably and searchably by the datastorage operator.",
    plural = "remediationaudits",
    singular = "remediationaudit",
    namespaced,
    status = "RemediationAuditStatus",
    shortname = "raudit",
    category = "kubernaut",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".spec.phase"}"#,
    printcolumn = r#"{"name":"Outcome","type":"string","jsonPath":".spec.outcome"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Embedded","type":"string","jsonPath":".status.embedding"}"#,
    printcolumn = r#"{"name":"Audit-ID","type":"integer","jsonPath":".status.auditId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#,
    selectable = ".status.state"
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = audit_spec_rules)]
pub struct RemediationAuditSpec {
    /// Identifier of the remediation request that produced this action (1–255 bytes). Unique in the store: a
    /// second RemediationAudit with the same id is rejected as `duplicate`.
    pub remediation_request_id: String,
    /// Fingerprint of the alert that triggered the remediation (at most 255 bytes).
    pub alert_fingerprint: String,
    /// Name of the alert that triggered the remediation, e.g. `KubePodCrashLooping` (at most 255 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_name: Option<String>,
    /// Lifecycle phase of the remediation.
    pub phase: AuditPhase,
    /// Result of the remediation.
    pub outcome: AuditOutcome,
    /// What was done, lowercase, e.g. `restart-pod`, `scale-deployment`, `drain-node` (at most 100 bytes, matching
    /// `[a-z0-9]([a-z0-9._-]*[a-z0-9])?`).
    pub action_type: String,
    /// Severity of the triggering alert, e.g. `critical`, `warning` (at most 50 bytes).
    pub severity: String,
    /// Environment the action ran in, e.g. `production` (at most 50 bytes).
    pub environment: String,
    /// Name of the cluster the action ran in (at most 255 bytes).
    pub cluster_name: String,
    /// The object acted on, as `group/version/Kind/namespace/name`, e.g. `apps/v1/Deployment/payments/api`
    /// (at most 512 bytes).
    pub target_resource: String,
    /// When the remediation started (RFC 3339); not more than one hour in the future.
    #[schemars(extend("format" = "date-time"))]
    pub start_time: String,
    /// When the remediation ended (RFC 3339), not before `startTime`. The duration is derived and stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub end_time: Option<String>,
    /// Error output of a failed remediation, free text (at most 8192 bytes). Secrets are redacted and active
    /// markup (scripts, event handlers) removed before storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Free-form structured context (at most 64 KiB serialized). Every string in it is sanitized like
    /// `errorMessage`; values under secret-looking keys (password, token, …) are redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Lifecycle phase of a remediation.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AuditPhase {
    Pending,
    Processing,
    Completed,
    Failed,
}

/// Result of a remediation.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AuditOutcome {
    Success,
    Failure,
    Pending,
    Running,
    Unknown,
}

impl AuditPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Processing => "Processing",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
        }
    }
}

impl AuditOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::Failure => "Failure",
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Unknown => "Unknown",
        }
    }
}

/// What the operator has done with a RemediationAudit, written by the operator only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationAuditStatus {
    /// `Pending` (not processed yet), `Persisted` (stored durably), `Rejected` (invalid; fix the spec) or
    /// `Retrying` (the database is unavailable; the operator keeps trying and nothing is lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<AuditState>,
    /// Id of the stored audit in the query API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_id: Option<i64>,
    /// sha256 of the canonical sanitized record of the observed generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    /// Hash linking this generation's history entry to the previous one (sha256 of previous chain hash and
    /// content hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_hash: Option<String>,
    /// Whether the audit's semantic-search vector is stored: `Stored`, `Pending` (will be filled in by the
    /// backfill), `Unavailable` or `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingState>,
    /// When the observed generation was stored (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted_at: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Human-readable summary; for rejections it names each field and the rule it broke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Validated`, `Persisted` and `Embedded` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// State of a RemediationAudit in the store.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AuditState {
    Pending,
    Persisted,
    Rejected,
    Retrying,
}

/// State of an audit's embedding vector.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EmbeddingState {
    Stored,
    Pending,
    Unavailable,
    Disabled,
}

impl AuditState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Persisted => "Persisted",
            Self::Rejected => "Rejected",
            Self::Retrying => "Retrying",
        }
    }
}

impl EmbeddingState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stored => "Stored",
            Self::Pending => "Pending",
            Self::Unavailable => "Unavailable",
            Self::Disabled => "Disabled",
        }
    }
}

/// A standard Kubernetes condition (the shape of `metav1.Condition`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, e.g. `Validated`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable CamelCase reason.
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339); kept as is while the status stays the same.
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// The generation the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// ---------------------------------------------------------------------------------------------------------------
// DataStorage
// ---------------------------------------------------------------------------------------------------------------

/// Configuration of the audit store: database, schema, vector index, embeddings, sanitization and retention.
/// Cluster-scoped; the operator serves the one named by its `--datastorage` flag (default `default`).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "datastorage.kubernaut.ai",
    version = "v1alpha1",
    kind = "DataStorage",
    doc = "Configuration and observed state of the datastorage audit store (cluster-scoped).",
    plural = "datastorages",
    singular = "datastorage",
    status = "DataStorageStatus",
    shortname = "dstore",
    category = "kubernaut",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"PostgreSQL","type":"string","jsonPath":".status.postgresVersion"}"#,
    printcolumn = r#"{"name":"pgvector","type":"string","jsonPath":".status.pgvectorVersion"}"#,
    printcolumn = r#"{"name":"Schema","type":"integer","jsonPath":".status.schemaVersion"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Conditions","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DataStorageSpec {
    /// How to reach PostgreSQL.
    pub database: DatabaseSpec,
    /// PostgreSQL schema that holds the store's tables (a plain identifier, default `datastorage`).
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The HNSW vector index used by semantic search.
    #[serde(default)]
    pub vector_index: VectorIndexSpec,
    /// How embedding vectors are computed and cached.
    #[serde(default)]
    pub embedding: EmbeddingSpec,
    /// How free text is cleaned before storage.
    #[serde(default)]
    pub sanitization: SanitizationSpec,
    /// How long history is kept.
    #[serde(default)]
    pub retention: RetentionSpec,
    /// Minimum versions of PostgreSQL and pgvector; the operator does not write while they are not met.
    #[serde(default)]
    pub requirements: RequirementsSpec,
}

fn default_schema() -> String {
    "datastorage".to_string()
}

/// Connection settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Secret key holding the connection URL, e.g. `postgres://user:password@host:5432/db`.
    pub url_secret_ref: SecretKeyRef,
    /// Maximum connections per operator replica.
    #[serde(default = "default_pool_size")]
    pub pool_size: i32,
    /// TLS to PostgreSQL: `disable`, `prefer`, `require`, `verify-ca` or `verify-full`.
    #[serde(default)]
    pub tls_mode: TlsMode,
}

fn default_pool_size() -> i32 {
    10
}

/// A key in a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Namespace of the Secret.
    pub namespace: String,
    /// Key in the Secret's data.
    pub key: String,
}

/// TLS mode towards PostgreSQL (libpq's `sslmode`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// HNSW index parameters.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VectorIndexSpec {
    /// Vector dimensions; must match the embedding model (384 for all-MiniLM-L6-v2).
    #[serde(default = "default_dimensions")]
    pub dimensions: i32,
    /// Distance metric: `cosine`, `l2` or `innerProduct`.
    #[serde(default)]
    pub metric: VectorMetric,
    /// HNSW `m`: links per node (2–100).
    #[serde(default = "default_m")]
    pub m: i32,
    /// HNSW `ef_construction`: candidate list size while building (at least 2 × m).
    #[serde(default = "default_ef_construction")]
    pub ef_construction: i32,
    /// HNSW `ef_search`: candidate list size per query, applied with `SET LOCAL` in each search.
    #[serde(default = "default_ef_search")]
    pub ef_search: i32,
    /// Element type of stored vectors: `vector` (float32) or `halfvec` (float16, half the size).
    #[serde(default)]
    pub element_type: VectorElementType,
}

impl Default for VectorIndexSpec {
    fn default() -> Self {
        Self {
            dimensions: default_dimensions(),
            metric: VectorMetric::default(),
            m: default_m(),
            ef_construction: default_ef_construction(),
            ef_search: default_ef_search(),
            element_type: VectorElementType::default(),
        }
    }
}

/// Dimensions of the stored vectors: the `vector(384)` column of the migrations, the CRD's default
/// `vectorIndex.dimensions` and the only value the store accepts today (all-MiniLM-L6-v2).
pub const VECTOR_DIMENSIONS: usize = 384;

fn default_dimensions() -> i32 {
    VECTOR_DIMENSIONS as i32
}
fn default_m() -> i32 {
    16
}
fn default_ef_construction() -> i32 {
    64
}
fn default_ef_search() -> i32 {
    40
}

/// Distance metric of the vector index.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum VectorMetric {
    #[default]
    Cosine,
    L2,
    InnerProduct,
}

/// Element type of stored vectors.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum VectorElementType {
    #[default]
    Vector,
    Halfvec,
}

/// Embedding provider settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingSpec {
    /// `Local` (in-process all-MiniLM-L6-v2), `OpenAI` (an OpenAI-compatible HTTP endpoint), `Hash` (lexical,
    /// not semantic; for environments without a model) or `Disabled`.
    #[serde(default)]
    pub provider: EmbeddingProvider,
    /// Directory with the model files (Local): `tokenizer.json`, `config.json`, and `model.onnx` /
    /// `model.int8.onnx` + `libonnxruntime.so` (runtime Onnx) or `model.safetensors` (runtime Candle); defaults to
    /// the model baked into the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_path: Option<String>,
    /// How the Local provider runs the model.
    #[serde(default)]
    pub local: LocalEmbeddingSpec,
    /// Base URL of the OpenAI-compatible endpoint (OpenAI); `/v1/embeddings` is appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Model name sent to the endpoint (OpenAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Secret key holding the API key (OpenAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,
    /// Most texts embedded in one batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: i32,
    /// Time budget for one embedding inside a write, as a duration (`250ms`, `2s`); past it the audit is stored
    /// without its vector and the backfill adds it later.
    #[serde(default = "default_embed_timeout")]
    pub timeout: String,
    /// Embedding cache.
    #[serde(default)]
    pub cache: EmbeddingCacheSpec,
}

impl Default for EmbeddingSpec {
    fn default() -> Self {
        Self {
            provider: EmbeddingProvider::default(),
            model_path: None,
            local: LocalEmbeddingSpec::default(),
            endpoint: None,
            model: None,
            api_key_secret_ref: None,
            batch_size: default_batch_size(),
            timeout: default_embed_timeout(),
            cache: EmbeddingCacheSpec::default(),
        }
    }
}

fn default_batch_size() -> i32 {
    32
}
fn default_embed_timeout() -> String {
    "200ms".to_string()
}

/// Embedding provider.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum EmbeddingProvider {
    #[default]
    Local,
    OpenAI,
    Hash,
    Disabled,
}

/// The Local provider's runtime and precision.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalEmbeddingSpec {
    /// `Onnx` (ONNX Runtime; the default, ~2× candle's throughput on the same CPU, see docs/benchmarks.md) or
    /// `Candle` (pure Rust). Both give the reference vectors (cosine ≥ 0.9999 to sentence-transformers) and share
    /// one model id, so switching between them re-embeds nothing.
    #[serde(default)]
    pub runtime: LocalRuntime,
    /// `Fp32` (default) or `Int8` (dynamically quantized weights, per channel; Onnx only): faster, mean cosine
    /// ~0.99 to the fp32 vectors but down to ~0.96 on texts of one to five tokens; stored under its own model id, so
    /// switching re-embeds every audit through the backfill.
    #[serde(default)]
    pub precision: LocalPrecision,
    /// Threads one forward pass uses (default: the available cores, at most 4). Spinning waits are off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
}

/// The Local provider's runtime.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LocalRuntime {
    #[default]
    Onnx,
    Candle,
}

/// The Local provider's weights.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LocalPrecision {
    #[default]
    Fp32,
    Int8,
}

/// Content-addressed embedding cache (key: sha256 of model id and text).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingCacheSpec {
    /// Entries kept in each replica's memory.
    #[serde(default = "default_memory_entries")]
    pub memory_entries: i64,
    /// How long an entry lives, as a duration (`24h`).
    #[serde(default = "default_cache_ttl")]
    pub ttl: String,
    /// Secret key holding a Redis URL for a cache shared by all replicas (optional; without it the cache is
    /// per replica). Redis being down never fails a write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url_secret_ref: Option<SecretKeyRef>,
}

impl Default for EmbeddingCacheSpec {
    fn default() -> Self {
        Self {
            memory_entries: default_memory_entries(),
            ttl: default_cache_ttl(),
            redis_url_secret_ref: None,
        }
    }
}

fn default_memory_entries() -> i64 {
    10_000
}
fn default_cache_ttl() -> String {
    "24h".to_string()
}

/// Sanitization settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SanitizationSpec {
    /// Replace secrets (passwords, tokens, keys, credentials in URLs, PEM blocks, …) with `[REDACTED:<kind>]`.
    #[serde(default = "default_true")]
    pub redact_secrets: bool,
    /// Active markup in free text: `Strip` removes scripts, iframes, objects, `javascript:` URLs and event
    /// handlers; `Reject` rejects the audit instead.
    #[serde(default)]
    pub html: HtmlPolicySpec,
}

impl Default for SanitizationSpec {
    fn default() -> Self {
        Self {
            redact_secrets: true,
            html: HtmlPolicySpec::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// What to do with active markup in free text.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HtmlPolicySpec {
    #[default]
    Strip,
    Reject,
}

/// Retention settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Days of history kept; older monthly partitions are dropped (legal-hold namespaces excepted).
    #[serde(default = "default_retention_days")]
    pub days: i32,
    /// Monthly history partitions created ahead of time.
    #[serde(default = "default_partitions_ahead")]
    pub partitions_ahead: i32,
    /// Namespaces whose audits are never purged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legal_hold: Vec<String>,
    /// Delete a RemediationAudit this long (`1h`, `30m`) after it was persisted, to keep etcd small; the record
    /// stays in PostgreSQL. Unset: keep the resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cr_ttl_after_persisted: Option<String>,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        Self {
            days: default_retention_days(),
            partitions_ahead: default_partitions_ahead(),
            legal_hold: Vec::new(),
            cr_ttl_after_persisted: None,
        }
    }
}

fn default_retention_days() -> i32 {
    2555
}
fn default_partitions_ahead() -> i32 {
    3
}

/// Minimum supported versions.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequirementsSpec {
    /// Minimum PostgreSQL major version.
    #[serde(default = "default_min_postgres")]
    pub min_postgres_major: i32,
    /// Minimum pgvector version.
    #[serde(default = "default_min_pgvector")]
    pub min_pgvector: String,
}

impl Default for RequirementsSpec {
    fn default() -> Self {
        Self {
            min_postgres_major: default_min_postgres(),
            min_pgvector: default_min_pgvector(),
        }
    }
}

fn default_min_postgres() -> i32 {
    16
}
fn default_min_pgvector() -> String {
    "0.5.1".to_string()
}

/// Observed state of the store.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataStorageStatus {
    /// `Progressing`, `Ready`, `Degraded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<StorePhase>,
    /// Version reported by PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<String>,
    /// Installed pgvector version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgvector_version: Option<String>,
    /// Latest applied schema migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `DatabaseReachable`, `VersionsSupported`, `SchemaReady`, `IndexReady`, `MemoryAdequate`, `EmbeddingReady`,
    /// and `Ready` summarizing them (True in phase Ready; otherwise its message names the failing conditions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Summary state of the store.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StorePhase {
    Progressing,
    Ready,
    Degraded,
    Failed,
}

/// Longest `startTime`/`endTime` accepted by the schema (RFC 3339 with nanoseconds and an offset is 35 bytes);
/// bounds the CEL cost of the time-order rule.
pub const MAX_TIME_LENGTH: usize = 64;

/// The validator's text rules as the API server's: `maxLength` (characters, which never exceed bytes, so nothing the
/// validator accepts is refused) and one `x-kubernetes-validations` rule per check, each with the validator's message.
/// Each rule is guarded by the checks before it, so a value breaks at most one rule, the one the validator reports
/// (blank, then too long, NUL, control characters, markup, the `actionType` pattern). Plus `endTime >= startTime`
/// on the spec (both are `format: date-time`, timestamps in CEL), reported on `spec.endTime`.
fn audit_spec_rules(schema: &mut Schema) {
    use crate::audit::validate::{ACTION_TYPE_PATTERN, TEXT_RULES, messages};
    use serde_json::{Value, json};
    let markup = crate::audit::sanitize::markup_pattern_re2();
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for rule in &TEXT_RULES {
        let Some(prop) = props.get_mut(rule.field).and_then(Value::as_object_mut) else {
            continue;
        };
        let max = rule.max_bytes;
        prop.insert("maxLength".into(), json!(max));
        // (failure condition, message or message expression, reason) in the validator's order.
        let mut checks: Vec<(String, Value)> = vec![(
            format!("bytes(self).size() > {max}"),
            json!({
                "messageExpression": format!("'{}'.format([bytes(self).size()])", messages::too_long_format(max)),
                "message": messages::too_long(max + 1, max).replace(&format!("is {} bytes long", max + 1), "is too long"),
            }),
        )];
        checks.push((
            r"self.contains('\u0000')".into(),
            json!({ "message": messages::NUL }),
        ));
        if rule.identifier {
            checks.push((
                format!("self.matches({})", cel_raw(CONTROL_CHARACTERS)),
                json!({ "message": messages::CONTROL }),
            ));
            checks.push((
                format!("self.matches({})", cel_raw(&markup)),
                json!({ "message": messages::MARKUP }),
            ));
        }
        if rule.field == "actionType" {
            checks.push((
                format!("!self.matches({})", cel_raw(ACTION_TYPE_PATTERN)),
                json!({ "message": messages::ACTION_TYPE }),
            ));
        }
        let mut rules = Vec::new();
        if rule.required {
            rules.push(json!({
                "rule": "self.trim() != ''",
                "message": messages::BLANK,
                "reason": "FieldValueRequired",
            }));
        }
        let mut guards = vec!["self.trim() == ''".to_string()];
        for (fails, message) in checks {
            let mut r = json!({
                "rule": format!("{} || !({fails})", guards.join(" || ")),
                "reason": "FieldValueInvalid",
            });
            if let (Some(r), Some(m)) = (r.as_object_mut(), message.as_object()) {
                r.extend(m.clone());
            }
            rules.push(r);
            guards.push(fails);
        }
        prop.insert("x-kubernetes-validations".into(), Value::Array(rules));
    }
    for field in ["startTime", "endTime"] {
        if let Some(prop) = props.get_mut(field).and_then(Value::as_object_mut) {
            prop.insert("maxLength".into(), json!(MAX_TIME_LENGTH));
        }
    }
    schema.insert(
        "x-kubernetes-validations".into(),
        json!([{
            "rule": "!has(self.endTime) || self.endTime >= self.startTime",
            "messageExpression": format!("'{}'.format([self.endTime, self.startTime])", messages::time_order("%s", "%s")),
            "message": "is before startTime",
            "fieldPath": ".endTime",
            "reason": "FieldValueInvalid",
        }]),
    );
}

/// Control characters other than NUL (Rust's `char::is_control`: Unicode Cc), as an RE2 class.
const CONTROL_CHARACTERS: &str = r"[\x{01}-\x{1f}\x{7f}-\x{9f}]";

/// A CEL raw string literal holding `s` verbatim (`r'…'`: backslashes are not escapes). `s` must not contain `'`.
fn cel_raw(s: &str) -> String {
    debug_assert!(!s.contains('\''), "{s}");
    format!("r'{s}'")
}

fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Every CRD this operator serves, as `(file name under crds/, YAML document)`.
pub fn crd_documents() -> Result<Vec<(&'static str, String)>, serde_saphyr::ser::Error> {
    use kube::CustomResourceExt;
    Ok(vec![
        (
            "remediationaudits.datastorage.kubernaut.ai.yaml",
            serde_saphyr::to_string(&RemediationAudit::crd())?,
        ),
        (
            "datastorages.datastorage.kubernaut.ai.yaml",
            serde_saphyr::to_string(&DataStorage::crd())?,
        ),
    ])
}

/// The YAML of every CRD as one multi-document stream (what `datastorage crd` prints).
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for (_, doc) in crd_documents()? {
        out.push_str("---\n");
        out.push_str(&doc);
    }
    Ok(out)
}

/// Parses the durations used in DataStorage specs: an integer followed by `ms`, `s`, `m`, `h` or `d`
/// (`200ms`, `2s`, `30m`, `24h`, `7d`), or several concatenated (`1h30m`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {s:?}: expected a number, e.g. 200ms, 2s, 30m, 24h"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
            "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
            "d" => std::time::Duration::from_secs(n.saturating_mul(86_400)),
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unit must be ms, s, m, h or d"
                ));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }
}
