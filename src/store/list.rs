//! Reads for the query API: keyset-paginated listing (newest first), one audit by id, and the namespaces that hold
//! audits. Listing never counts: each page is one index range scan on `audits (start_time DESC, id DESC)` or
//! `audits (namespace, start_time DESC, id DESC)` that starts strictly after the previous page's last
//! `(start_time, id)`, so rows inserted between page fetches never shift or repeat the pages of a walk.
//!
//! The statements are assembled with [`sqlx::QueryBuilder`] from fixed fragments and bound values only (so that
//! absent filters do not appear in the plan at all); no caller text reaches the SQL.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Postgres, QueryBuilder, Row};

use super::search::AuditFilters;
use super::{Store, StoreError};

/// One stored audit (current generation).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRow {
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
    pub details: Option<serde_json::Value>,
    pub generation: i64,
    pub content_hash: String,
    pub chain_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set when the RemediationAudit was deleted from Kubernetes (the audit is kept).
    pub deleted_at: Option<DateTime<Utc>>,
}

/// Position after the last row of a page: `(start_time, id)` of that row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub start_time: DateTime<Utc>,
    pub id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor: {0}")]
pub struct CursorError(&'static str);

impl Cursor {
    /// Opaque text form: base64url (no padding) of `<start_time in µs since the epoch>.<id>`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}.{}",
            self.start_time.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(s: &str) -> Result<Self, CursorError> {
        if s.is_empty() || s.len() > 64 {
            return Err(CursorError("wrong length"));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| CursorError("not base64url"))?;
        let text = std::str::from_utf8(&raw).map_err(|_| CursorError("not text"))?;
        let (micros, id) = text.split_once('.').ok_or(CursorError("malformed"))?;
        let micros: i64 = micros.parse().map_err(|_| CursorError("malformed time"))?;
        let id: i64 = id.parse().map_err(|_| CursorError("malformed id"))?;
        let start_time =
            DateTime::from_timestamp_micros(micros).ok_or(CursorError("time out of range"))?;
        if id < 1 {
            return Err(CursorError("malformed id"));
        }
        Ok(Self { start_time, id })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<AuditRow>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

const COLUMNS: &str = "SELECT a.id, a.namespace, a.name, a.remediation_request_id, a.alert_fingerprint, a.alert_name, \
     a.phase, a.outcome, a.action_type, a.severity, a.environment, a.cluster_name, a.target_resource, a.start_time, \
     a.end_time, a.duration_ms, a.error_message, a.details, a.generation, a.content_hash, a.chain_hash, \
     a.created_at, a.updated_at, a.deleted_at FROM audits a";

impl Store {
    /// Audits matching `filters`, newest `start_time` first (ties: highest id first), after `cursor`.
    /// `namespaces: Some(vec![])` matches nothing. `limit` is clamped to 1..=1000.
    pub async fn list(
        &self,
        filters: &AuditFilters,
        cursor: Option<Cursor>,
        limit: i64,
    ) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, 1000);
        if filters.namespaces.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(COLUMNS);
        q.push(" WHERE true");
        match filters.namespaces.as_deref() {
            Some([one]) => {
                q.push(" AND a.namespace = ").push_bind(one.clone());
            }
            Some(many) => {
                q.push(" AND a.namespace = ANY(")
                    .push_bind(many.to_vec())
                    .push(")");
            }
            None => {}
        }
        for (column, value) in [
            ("a.phase", &filters.phase),
            ("a.outcome", &filters.outcome),
            ("a.severity", &filters.severity),
            ("a.cluster_name", &filters.cluster),
            ("a.action_type", &filters.action_type),
        ] {
            if let Some(v) = value {
                q.push(" AND ")
                    .push(column)
                    .push(" = ")
                    .push_bind(v.clone());
            }
        }
        if let Some(since) = filters.since {
            q.push(" AND a.start_time >= ").push_bind(since);
        }
        if let Some(until) = filters.until {
            q.push(" AND a.start_time < ").push_bind(until);
        }
        if let Some(c) = cursor {
            q.push(" AND (a.start_time, a.id) < (")
                .push_bind(c.start_time)
                .push(", ")
                .push_bind(c.id)
                .push(")");
        }
        // One extra row tells whether there is a next page, without counting.
        q.push(" ORDER BY a.start_time DESC, a.id DESC LIMIT ")
            .push_bind(limit + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(audit_row).collect::<Result<Vec<_>, _>>()?;
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next = if more {
            items.last().map(|r| Cursor {
                start_time: r.start_time,
                id: r.id,
            })
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// One audit by id.
    pub async fn get(&self, id: i64) -> Result<Option<AuditRow>, StoreError> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(COLUMNS);
        q.push(" WHERE a.id = ").push_bind(id);
        let row = q.build().fetch_optional(&self.pool).await?;
        row.as_ref().map(audit_row).transpose()
    }

    /// The namespace of an audit (cheap existence/authorization check).
    pub async fn namespace_of(&self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT namespace FROM audits WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Every namespace holding at least one audit, sorted. A loose index scan (one index probe per namespace on
    /// `audits (namespace, start_time DESC, id DESC)`) instead of `SELECT DISTINCT`, which reads every row.
    pub async fn audit_namespaces(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "WITH RECURSIVE ns(namespace) AS (
                 (SELECT namespace FROM audits ORDER BY namespace LIMIT 1)
                 UNION ALL
                 SELECT (SELECT a.namespace FROM audits a WHERE a.namespace > ns.namespace
                         ORDER BY a.namespace LIMIT 1)
                 FROM ns WHERE ns.namespace IS NOT NULL
             )
             SELECT namespace FROM ns WHERE namespace IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

fn audit_row(r: &sqlx::postgres::PgRow) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        name: r.try_get("name")?,
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
        start_time: r.try_get("start_time")?,
        end_time: r.try_get("end_time")?,
        duration_ms: r.try_get("duration_ms")?,
        error_message: r.try_get("error_message")?,
        details: r
            .try_get::<Option<sqlx::types::Json<serde_json::Value>>, _>("details")?
            .map(|j| j.0),
        generation: r.try_get("generation")?,
        content_hash: r.try_get("content_hash")?,
        chain_hash: r.try_get("chain_hash")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        deleted_at: r.try_get("deleted_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor {
            start_time: DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap_or_default(),
            id: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        for bad in ["", "!!!", "bm9wZQ", &"A".repeat(100), "MTIzLjA"] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
