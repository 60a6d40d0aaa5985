//! The query API's wire types: what the server (this module's handlers) sends and what the CLI (`crate::client`)
//! reads, one definition for both, so a renamed field is a compile error on both sides instead of a silently empty
//! table column. `docs/openapi.json` describes the same shapes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One stored audit (its current generation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    pub id: i64,
    pub namespace: String,
    pub name: String,
    pub remediation_request_id: String,
    pub alert_fingerprint: String,
    pub alert_name: Option<String>,
    pub phase: String,
    pub outcome: String,
    pub action_type: String,
    pub severity: String,
    pub environment: String,
    pub cluster_name: String,
    pub target_resource: String,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub error_message: Option<String>,
    /// Only in a get by id, and in a list that asks for it with `fields=details`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    pub generation: i64,
    pub content_hash: String,
    pub chain_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set when the RemediationAudit was deleted from Kubernetes (the audit is kept).
    pub deleted_at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/audits`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse {
    pub items: Vec<Audit>,
    /// Where the next page starts; `null` on the last page. A page may hold fewer than `limit` items when the
    /// items reached the page's byte budget.
    pub next_cursor: Option<String>,
}

/// One generation of an audit's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItem {
    pub generation: i64,
    pub content_hash: String,
    pub prev_chain_hash: String,
    pub chain_hash: String,
    /// The canonical sanitized record of this generation.
    pub record: Value,
}

/// The check of one history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainCheck {
    pub generation: i64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl From<crate::audit::record::ChainCheck> for ChainCheck {
    fn from(c: crate::audit::record::ChainCheck) -> Self {
        Self {
            generation: c.generation,
            ok: c.ok,
            problem: c.problem,
        }
    }
}

/// `GET /api/v1/audits/{id}`: the audit, one page of its history (oldest generation first) and the verification
/// of that page and of the chain's head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetResponse {
    pub audit: Audit,
    pub history: Vec<HistoryItem>,
    /// Pass as `historyCursor` for the next page of history; `null` on the last page.
    pub history_next_cursor: Option<String>,
    /// Everything below holds: every generation of this page verifies and the page links to the generation
    /// before it; the current row's chain hash is the chain's head and the row shows exactly the head record; the
    /// anchors outside the database agree. `kubectl audit verify` walks every page.
    pub chain_verified: bool,
    pub chain_head_matches: bool,
    pub chain_checks: Vec<ChainCheck>,
    /// Fields in which the current row (what list/search/get show) differs from the head record.
    #[serde(default)]
    pub row_mismatches: Vec<String>,
    /// The RemediationAudit's status.chainHash and the latest signed checkpoint.
    #[serde(default)]
    pub anchors: crate::checkpoint::Anchors,
    /// What failed, one line each (empty when verified).
    #[serde(default)]
    pub problems: Vec<String>,
    /// The generations before the first one shown were dropped by retention (which recorded where the chain
    /// went on): the chain is verified from the first generation stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_purged: Option<HistoryPurged>,
}

/// What retention dropped of an audit's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPurged {
    /// The last generation dropped.
    pub through_generation: i64,
    pub purged_at: DateTime<Utc>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchHit {
    pub id: i64,
    pub namespace: String,
    pub name: String,
    pub similarity: f64,
    pub remediation_request_id: String,
    pub action_type: String,
    pub alert_name: Option<String>,
    pub phase: String,
    pub outcome: String,
    pub severity: String,
    pub cluster_name: String,
    pub target_resource: String,
    pub start_time: DateTime<Utc>,
    pub error_message: Option<String>,
}

/// `POST /api/v1/audits/search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    pub results: Vec<SearchHit>,
}

/// The filters of a search or insight body as the CLI sends them (flattened into the body).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilterFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// The body of `POST /api/v1/audits/search` as the CLI sends it (the server parses it field by field, naming the
/// offending field of a 400, see `params::parse_search`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similar_to_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_similarity: Option<f64>,
    #[serde(flatten)]
    pub filters: FilterFields,
}

/// The body of `POST /api/v1/audits/insights` as the CLI sends it (parsed field by field by
/// `params::parse_insight`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsightRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similar_to_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_kind: Option<String>,
    /// Neighbours considered (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_similarity: Option<f64>,
    /// The window, ending now (default 180).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_days: Option<i64>,
    #[serde(flatten)]
    pub filters: FilterFields,
}

/// One action type among the neighbours of an insight query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionInsight {
    pub action_type: String,
    /// Neighbours with this action.
    pub attempts: i64,
    /// Of them, finished (phase Completed or Failed).
    pub completed: i64,
    /// Outcome Success.
    pub succeeded: i64,
    /// Outcome Failure.
    pub failed: i64,
    /// succeeded / (succeeded + failed); `null` when none has either outcome.
    pub success_rate: Option<f64>,
    /// The Wilson score interval's lower bound (95 %) of the success rate: what the rows are ranked by, so that
    /// "1 of 1" does not outrank "45 of 50". `null` when none has either outcome.
    pub lower_bound: Option<f64>,
    /// Fewer than 10 audits with an outcome: read the rate with care.
    pub small_sample: bool,
    pub median_duration_ms: Option<f64>,
    pub p90_duration_ms: Option<f64>,
    pub last_seen: DateTime<Utc>,
    pub clusters: i64,
    pub namespaces: i64,
    /// Up to three audit ids: the nearest (by query or similarToId) or the newest (by alertName).
    pub examples: Vec<i64>,
}

/// The similarity range of an insight's neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SimilarityRange {
    pub min: f64,
    pub max: f64,
}

/// An incident (alert) the neighbours of an insight were narrowed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchedAlert {
    /// `null`: audits without an alertName.
    pub alert_name: Option<String>,
    /// By query or similarToId: how many of the 10 nearest audits carry it; `null` by alertName.
    pub seeds: Option<i64>,
}

/// `POST /api/v1/audits/insights`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsightResponse {
    /// The incident counted: by query or similarToId, the alert with the largest similarity-weighted vote among
    /// the 10 nearest audits (all of them on a tie); by alertName, that alert.
    pub matched_alerts: Vec<MatchedAlert>,
    /// Audits counted (at most the request's `limit`).
    pub neighbours: i64,
    /// The similarity range of the neighbours counted; `null` by alertName or when there are none.
    pub similarity: Option<SimilarityRange>,
    /// The window: audits that started from `since` (and before `until`, when given).
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    /// One row per action type, ranked by `lowerBound` (then successes, then name).
    pub actions: Vec<ActionInsight>,
    /// One line: "restart-pod worked 45/50 times on 12 clusters; scale-deployment 3/9".
    pub verdict: String,
}
