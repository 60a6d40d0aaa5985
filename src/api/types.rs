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
