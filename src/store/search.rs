//! Semantic search over the HNSW index, on the store's read pool (see `list`). Each search runs in its own transaction so that `hnsw.ef_search` and
//! pgvector's iterative index scan are set with `set_config(…, true)` (= `SET LOCAL`) and never leak into pooled
//! sessions. The iterative scan keeps filtered searches (e.g. one namespace holding 1 % of the rows) at full
//! recall: the index scan goes on until enough rows pass the filter instead of stopping after `ef_search`.

use chrono::{DateTime, Utc};
use pgvector::Vector;
use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// Filters shared by list and search. `namespaces: None` means every namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilters {
    pub namespaces: Option<Vec<String>>,
    pub phase: Option<String>,
    pub outcome: Option<String>,
    pub severity: Option<String>,
    pub cluster: Option<String>,
    pub action_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// Search parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchParams {
    pub limit: i64,
    pub min_similarity: Option<f64>,
    pub ef_search: i32,
    /// Leave this audit out of the results (for "similar to audit N").
    pub exclude_id: Option<i64>,
    /// Search the halfvec expression index (DataStorage `vectorIndex.elementType: halfvec`).
    pub halfvec: bool,
    /// Only vectors of this model are compared with the query (a query vector of one model is meaningless against
    /// another's: while a model switch is being backfilled both are in the table).
    pub model_id: String,
}

impl Store {
    /// Nearest audits to `query` by cosine similarity, through the HNSW index, with filters.
    pub async fn search(
        &self,
        query: &[f32],
        filters: &AuditFilters,
        params: &SearchParams,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let limit = params.limit.clamp(1, 1000);
        // Candidates from the index (namespace filtered inside the iterative scan); the other filters are applied
        // to a generous candidate set, then results are ordered by exact distance.
        let candidates = (limit * 4).max(100);
        let mut tx = self.read_pool.begin().await?;
        hnsw_settings(&mut tx, i64::from(params.ef_search)).await?;
        let sql = if params.halfvec {
            SEARCH_HALFVEC
        } else {
            SEARCH_VECTOR
        };
        let rows = sqlx::query(sql)
            .bind(Vector::from(query.to_vec()))
            .bind(filters.namespaces.as_deref())
            .bind(candidates)
            .bind(filters.phase.as_deref())
            .bind(filters.outcome.as_deref())
            .bind(filters.severity.as_deref())
            .bind(filters.cluster.as_deref())
            .bind(filters.action_type.as_deref())
            .bind(filters.since)
            .bind(filters.until)
            .bind(params.min_similarity)
            .bind(params.exclude_id)
            .bind(limit)
            .bind(&params.model_id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.into_iter().map(|r| hit(&r)).collect()
    }

    /// Exact (sequential) nearest neighbours, the ground truth for recall measurements.
    pub async fn search_exact(
        &self,
        query: &[f32],
        namespaces: Option<&[String]>,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('enable_indexscan', 'off', true), set_config('enable_bitmapscan', 'off', true)")
            .execute(&mut *tx)
            .await?;
        let ids = sqlx::query_scalar(
            "SELECT audit_id FROM audit_embeddings
             WHERE ($2::text[] IS NULL OR namespace = ANY($2))
             ORDER BY embedding <=> $1, audit_id LIMIT $3",
        )
        .bind(Vector::from(query.to_vec()))
        .bind(namespaces)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// The stored vector of an audit and the model that made it (for "similar to audit N").
    pub async fn embedding_of(
        &self,
        audit_id: i64,
    ) -> Result<Option<(Vec<f32>, String)>, StoreError> {
        let v: Option<(Vector, String)> =
            sqlx::query_as("SELECT embedding, model_id FROM audit_embeddings WHERE audit_id = $1")
                .bind(audit_id)
                .fetch_optional(&self.read_pool)
                .await?;
        Ok(v.map(|(v, m)| (v.to_vec(), m)))
    }
}

/// The HNSW scan's settings for this transaction only (`set_config(…, true)` = `SET LOCAL`): `ef_search` (clamped
/// to pgvector's 1–1000) and the iterative scan that keeps filtered searches at full recall.
pub(super) async fn hnsw_settings(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ef_search: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT set_config('hnsw.ef_search', $1, true),
                set_config('hnsw.iterative_scan', 'relaxed_order', true),
                set_config('hnsw.max_scan_tuples', '50000', true)",
    )
    .bind(ef_search.clamp(1, 1000).to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The filters other than the namespace scope, on the audit `a` of a candidate `c` (with its `distance`): `$4`
/// phase, `$5` outcome, `$6` severity, `$7` cluster, `$8` actionType, `$9`/`$10` the start-time range, `$11`
/// minSimilarity, `$12` the audit left out. Search's and insight's statements share it.
macro_rules! candidate_filters {
    () => {
        "($4::text IS NULL OR a.phase = $4)
         AND ($5::text IS NULL OR a.outcome = $5)
         AND ($6::text IS NULL OR a.severity = $6)
         AND ($7::text IS NULL OR a.cluster_name = $7)
         AND ($8::text IS NULL OR a.action_type = $8)
         AND ($9::timestamptz IS NULL OR a.start_time >= $9)
         AND ($10::timestamptz IS NULL OR a.start_time < $10)
         AND ($11::float8 IS NULL OR 1 - c.distance >= $11)
         AND ($12::bigint IS NULL OR a.id <> $12)"
    };
}
pub(super) use candidate_filters;

/// Candidates from the index (namespace filtered inside the iterative scan), then the other filters, ordered by
/// exact distance. One text per element type, so that each matches its index expression.
macro_rules! search_sql {
    ($distance:literal) => {
        concat!(
            "WITH c AS MATERIALIZED (
                 SELECT e.audit_id, ", $distance, " AS distance
                 FROM audit_embeddings e
                 WHERE ($2::text[] IS NULL OR e.namespace = ANY($2)) AND e.model_id = $14
                 ORDER BY ", $distance, "
                 LIMIT $3
             )
             SELECT a.id, a.namespace, a.name, 1 - c.distance AS similarity, a.remediation_request_id, a.action_type,
                    a.alert_name, a.phase, a.outcome, a.severity, a.cluster_name, a.target_resource, a.start_time,
                    a.error_message
             FROM c JOIN audits a ON a.id = c.audit_id
             WHERE ", candidate_filters!(), "
             ORDER BY c.distance, a.id
             LIMIT $13"
        )
    };
}
const SEARCH_VECTOR: &str = search_sql!("e.embedding <=> $1");
/// (The cast's dimensions are [`crate::crd::VECTOR_DIMENSIONS`]; a literal because the statement is a const. A
/// test checks they agree.)
const SEARCH_HALFVEC: &str = search_sql!("e.embedding::halfvec(384) <=> $1::halfvec(384)");

fn hit(r: &sqlx::postgres::PgRow) -> Result<SearchHit, StoreError> {
    Ok(SearchHit {
        id: r.try_get("id")?,
        namespace: r.try_get("namespace")?,
        name: r.try_get("name")?,
        similarity: r.try_get("similarity")?,
        remediation_request_id: r.try_get("remediation_request_id")?,
        action_type: r.try_get("action_type")?,
        alert_name: r.try_get("alert_name")?,
        phase: r.try_get("phase")?,
        outcome: r.try_get("outcome")?,
        severity: r.try_get("severity")?,
        cluster_name: r.try_get("cluster_name")?,
        target_resource: r.try_get("target_resource")?,
        start_time: r.try_get("start_time")?,
        error_message: r.try_get("error_message")?,
    })
}

#[cfg(test)]
mod tests {
    /// Search's and insight's halfvec statements cast to the store's dimensions.
    #[test]
    fn the_halfvec_casts_have_the_store_dimensions() {
        let cast = format!("halfvec({})", crate::crd::VECTOR_DIMENSIONS);
        for sql in [
            super::SEARCH_HALFVEC,
            crate::store::insights::BY_VECTOR_HALFVEC,
        ] {
            let casts = sql.matches("halfvec(").count();
            assert!(casts > 0);
            assert_eq!(sql.matches(&cast).count(), casts, "{sql}");
        }
    }
}
