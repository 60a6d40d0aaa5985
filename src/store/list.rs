//! Reads for the query API: keyset-paginated listing (newest first), one audit by id, and the namespaces that hold
//! audits. Listing never counts: each page is one index range scan on `audits (start_time DESC, id DESC)` or
//! `audits (namespace, start_time DESC, id DESC)` that starts strictly after the previous page's last
//! `(start_time, id)`, so rows inserted between page fetches never shift or repeat the pages of a walk.
//!
//! Every read here runs on the store's read pool (its own connections, read-only, with a statement timeout), so
//! the query API can never take the connections the writers need; pages are streamed from the database and cut at
//! a byte budget ([`PageOptions`]).
//!
//! The statements are assembled with [`sqlx::QueryBuilder`] from fixed fragments and bound values only (so that
//! absent filters do not appear in the plan at all); no caller text reaches the SQL.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Datelike, Utc};
use futures::TryStreamExt;
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
        // chrono reaches years ±262143, PostgreSQL only 4713 BC to 294276 AD: a crafted cursor outside that
        // would fail in the database (a 500) instead of here (a 400 naming the cursor).
        if !(1..=9999).contains(&start_time.year()) {
            return Err(CursorError("time out of range"));
        }
        if id < 1 {
            return Err(CursorError("malformed id"));
        }
        Ok(Self { start_time, id })
    }
}

/// What a page of a listing may hold besides its row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageOptions {
    /// Read (and return) `details`, up to 64 KiB per audit; without it the column is not even read.
    pub details: bool,
    /// The page ends early (with a next cursor) once its rows reach about this many bytes of JSON; the first row
    /// is always returned.
    pub max_bytes: usize,
}

impl PageOptions {
    /// Everything, unbounded (tools and benchmarks).
    pub const FULL: PageOptions = PageOptions {
        details: true,
        max_bytes: usize::MAX,
    };
}

fn history_entry(
    r: &sqlx::postgres::PgRow,
) -> Result<crate::audit::record::HistoryEntry, sqlx::Error> {
    Ok(crate::audit::record::HistoryEntry {
        generation: r.try_get("generation")?,
        record: r.try_get("record")?,
        content_hash: r.try_get("content_hash")?,
        prev_chain_hash: r.try_get("prev_chain_hash")?,
        chain_hash: r.try_get("chain_hash")?,
    })
}

/// What a get by id reads in one snapshot ([`Store::audit_page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    pub row: AuditRow,
    /// The record the row shows, in the form the chain hashes.
    pub shown: crate::audit::record::AuditRecord,
    pub row_content_hash: String,
    pub row_chain_hash: String,
    pub history: HistoryPage,
}

/// A page of one audit's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub entries: Vec<crate::audit::record::HistoryEntry>,
    /// The chain hash of the generation before the page's first entry ("" when the page starts the chain).
    pub prev_chain_hash: String,
    /// The generation to continue after; `None` on the last page.
    pub next_after: Option<i64>,
    /// The audit's latest history entry (the chain's head), whichever page this is: the current row is checked
    /// against it on every page.
    pub head: Option<crate::audit::record::HistoryEntry>,
    /// On the first page: the generations before the first one stored were dropped by retention, which recorded
    /// the chain hash the first stored one follows (`prev_chain_hash` is then that hash, not "").
    pub purged: Option<Purged>,
}

/// What retention dropped of one audit's history (migration 0005, `retention_purged`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    /// The last generation dropped.
    pub through_generation: i64,
    pub purged_at: DateTime<Utc>,
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
/// The same without `details` (NULL in its place).
const COLUMNS_NO_DETAILS: &str = "SELECT a.id, a.namespace, a.name, a.remediation_request_id, a.alert_fingerprint, \
     a.alert_name, a.phase, a.outcome, a.action_type, a.severity, a.environment, a.cluster_name, a.target_resource, \
     a.start_time, a.end_time, a.duration_ms, a.error_message, NULL::jsonb AS details, a.generation, a.content_hash, \
     a.chain_hash, a.created_at, a.updated_at, a.deleted_at FROM audits a";

/// Bytes of JSON an audit row takes in an answer, about: its text fields, its details, and ~700 bytes of keys,
/// hashes and times.
pub fn approx_json_bytes(r: &AuditRow) -> usize {
    let text = [
        &r.namespace,
        &r.name,
        &r.remediation_request_id,
        &r.alert_fingerprint,
        &r.phase,
        &r.outcome,
        &r.action_type,
        &r.severity,
        &r.environment,
        &r.cluster_name,
        &r.target_resource,
    ]
    .iter()
    .map(|s| s.len())
    .sum::<usize>()
        + r.alert_name.as_ref().map_or(0, String::len)
        + r.error_message.as_ref().map_or(0, String::len);
    let details = r.details.as_ref().map_or(0, |d| {
        let mut counter = ByteCounter(0);
        let _ = serde_json::to_writer(&mut counter, d);
        counter.0
    });
    700 + text + details
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Store {
    /// Audits matching `filters`, newest `start_time` first (ties: highest id first), after `cursor`, with
    /// `details`, unbounded in bytes. `namespaces: Some(vec![])` matches nothing. `limit` is clamped to 1..=1000.
    pub async fn list(
        &self,
        filters: &AuditFilters,
        cursor: Option<Cursor>,
        limit: i64,
    ) -> Result<Page, StoreError> {
        self.list_page(filters, cursor, limit, PageOptions::FULL)
            .await
    }

    /// [`Store::list`] on the read pool, bounded by `options`: rows are streamed from the database and the scan
    /// stops once the page reaches its byte budget, so a page of large audits is never held whole in memory.
    pub async fn list_page(
        &self,
        filters: &AuditFilters,
        cursor: Option<Cursor>,
        limit: i64,
        options: PageOptions,
    ) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, 1000);
        if filters.namespaces.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new(if options.details {
            COLUMNS
        } else {
            COLUMNS_NO_DETAILS
        });
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
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        {
            let mut rows = q.build().fetch(&self.read_pool);
            while let Some(row) = rows.try_next().await? {
                if items.len() as i64 >= limit {
                    more = true;
                    break;
                }
                let item = audit_row(&row)?;
                bytes = bytes.saturating_add(approx_json_bytes(&item));
                if !items.is_empty() && bytes > options.max_bytes {
                    more = true;
                    break;
                }
                items.push(item);
            }
        }
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
        let mut conn = self.read_pool.acquire().await?;
        get_in(&mut conn, id).await
    }

    /// Up to `limit` generations of an audit's history after generation `after` (oldest first), at most about
    /// `max_bytes` of records (the first entry always), with what a page needs to be verified on its own: the
    /// chain hash before it and the chain's head.
    pub async fn history_page(
        &self,
        audit_id: i64,
        after: Option<i64>,
        limit: i64,
        max_bytes: usize,
    ) -> Result<HistoryPage, StoreError> {
        let mut conn = self.read_pool.acquire().await?;
        history_page_in(&mut conn, audit_id, after, limit, max_bytes).await
    }

    /// What a get by id shows and verifies, read in one read-only REPEATABLE READ transaction: the row, the record
    /// it shows, and one page of its history with the chain's head. One snapshot, so a write landing between the
    /// reads cannot make the row and the head look different (a false "NOT VERIFIED"). `None`: no such audit.
    pub async fn audit_page(
        &self,
        id: i64,
        after: Option<i64>,
        limit: i64,
        max_bytes: usize,
    ) -> Result<Option<AuditPage>, StoreError> {
        let mut tx = self.read_pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let Some(row) = get_in(&mut tx, id).await? else {
            return Ok(None);
        };
        let Some((shown, row_content_hash, row_chain_hash)) =
            super::current_record_in(&mut tx, id).await?
        else {
            return Ok(None);
        };
        let history = history_page_in(&mut tx, id, after, limit, max_bytes).await?;
        tx.commit().await?;
        Ok(Some(AuditPage {
            row,
            shown,
            row_content_hash,
            row_chain_hash,
            history,
        }))
    }

    /// Whether `chain_hash` is one of audit `audit_id`'s stored chain hashes (one probe of its history rows,
    /// records not read).
    pub async fn chain_contains(
        &self,
        audit_id: i64,
        chain_hash: &str,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_history_all WHERE audit_id = $1 AND chain_hash = $2)",
        )
        .bind(audit_id)
        .bind(chain_hash)
        .fetch_one(&self.read_pool)
        .await?)
    }

    /// The namespace of an audit (cheap existence/authorization check).
    pub async fn namespace_of(&self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT namespace FROM audits WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.read_pool)
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
        .fetch_all(&self.read_pool)
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

/// [`Store::get`] on one connection.
async fn get_in(conn: &mut sqlx::PgConnection, id: i64) -> Result<Option<AuditRow>, StoreError> {
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(COLUMNS);
    q.push(" WHERE a.id = ").push_bind(id);
    let row = q.build().fetch_optional(&mut *conn).await?;
    row.as_ref().map(audit_row).transpose()
}

/// [`Store::history_page`] on one connection.
async fn history_page_in(
    conn: &mut sqlx::PgConnection,
    audit_id: i64,
    after: Option<i64>,
    limit: i64,
    max_bytes: usize,
) -> Result<HistoryPage, StoreError> {
    let limit = limit.clamp(1, 1000);
    let after = after.unwrap_or(i64::MIN);
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    {
        let mut rows = sqlx::query(
            "SELECT generation, record, content_hash, prev_chain_hash, chain_hash
             FROM audit_history_all WHERE audit_id = $1 AND generation > $2 ORDER BY generation, id LIMIT $3",
        )
        .bind(audit_id)
        .bind(after)
        .bind(limit + 1)
        .fetch(&mut *conn);
        while let Some(r) = rows.try_next().await? {
            if entries.len() as i64 >= limit {
                more = true;
                break;
            }
            let e = history_entry(&r)?;
            bytes = bytes.saturating_add(e.record.len() + 400);
            if !entries.is_empty() && bytes > max_bytes {
                more = true;
                break;
            }
            entries.push(e);
        }
    }
    let prev_chain_hash: Option<String> =
        match entries.first() {
            Some(first) => sqlx::query_scalar(
                "SELECT chain_hash FROM audit_history_all WHERE audit_id = $1 AND generation < $2
                 ORDER BY generation DESC, id DESC LIMIT 1",
            )
            .bind(audit_id)
            .bind(first.generation)
            .fetch_optional(&mut *conn)
            .await?,
            None => None,
        };
    // No stored generation before the first one, yet it follows another: retention dropped the earlier ones if it
    // recorded exactly that chain end; otherwise the gap stays and verification fails on it.
    let purged = match (&prev_chain_hash, entries.first()) {
        (None, Some(first)) if !first.prev_chain_hash.is_empty() => {
            sqlx::query_as::<_, (i64, DateTime<Utc>)>(
                "SELECT through_generation, purged_at FROM retention_purged
             WHERE audit_id = $1 AND chain_hash = $2 AND through_generation < $3
             ORDER BY through_generation DESC LIMIT 1",
            )
            .bind(audit_id)
            .bind(&first.prev_chain_hash)
            .bind(first.generation)
            .fetch_optional(&mut *conn)
            .await?
            .map(|(through_generation, purged_at)| Purged {
                through_generation,
                purged_at,
            })
        }
        _ => None,
    };
    let prev_chain_hash = match (&purged, entries.first()) {
        (Some(_), Some(first)) => Some(first.prev_chain_hash.clone()),
        _ => prev_chain_hash,
    };
    let head = match (more, entries.last()) {
        // The page ends the history: its last entry is the head.
        (false, Some(last)) => Some(last.clone()),
        _ => sqlx::query(
            "SELECT generation, record, content_hash, prev_chain_hash, chain_hash FROM audit_history_all
             WHERE audit_id = $1 ORDER BY generation DESC, id DESC LIMIT 1",
        )
        .bind(audit_id)
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| history_entry(&r))
        .transpose()?,
    };
    Ok(HistoryPage {
        next_after: if more {
            entries.last().map(|e| e.generation)
        } else {
            None
        },
        entries,
        prev_chain_hash: prev_chain_hash.unwrap_or_default(),
        head,
        purged,
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
        // Times chrono accepts but PostgreSQL does not (year -188000, year 200000): rejected here, as a cursor.
        for micros in ["-6000000000000000000", "6000000000000000000"] {
            let crafted = URL_SAFE_NO_PAD.encode(format!("{micros}.5"));
            assert_eq!(
                Cursor::decode(&crafted),
                Err(CursorError("time out of range")),
                "{micros}"
            );
        }
    }
}
