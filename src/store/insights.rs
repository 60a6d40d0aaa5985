//! Remediation insight: for the past audits most like a situation, which actions were tried, how often each
//! worked, how long it took and when it was last seen ("have we seen this before, and what fixed it?").
//!
//! The neighbours are chosen in one of two ways and then aggregated per `action_type` in the same statement, on
//! the read pool, in one transaction (planner settings with `set_config(…, true)` as in [`super::search`]):
//! - **by vector**: the `limit` audits nearest to a query vector through the HNSW index (iterative scan, so the
//!   namespace scope keeps its recall), then the filters and `minSimilarity`, narrowed to the incidents (alerts)
//!   the nearest [`SEEDS`] of them are about (see [`BY_VECTOR`] for why and what it measured);
//! - **by alert**: the `limit` most recent audits of one `alertName` (and target kind, when given), exactly.
//!
//! The namespace scope is applied before anything is counted, so an audit the caller may not read never counts,
//! not even in an aggregate (a count would leak that it exists). The ranking (Wilson lower bound) is in
//! `crate::api::insight`; this module only counts.

use chrono::{DateTime, Utc};
use pgvector::Vector;
use sqlx::Row;

use super::search::AuditFilters;
use super::{Store, StoreError};

/// How the neighbours of an insight query are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Neighbours {
    /// The nearest audits to this vector (of this model).
    Vector {
        vector: Vec<f32>,
        model_id: String,
        /// Leave this audit out (for "similar to audit N").
        exclude_id: Option<i64>,
        min_similarity: Option<f64>,
        ef_search: i32,
        /// Search the halfvec expression index.
        halfvec: bool,
    },
    /// The most recent audits of one alert (and target kind: the first `/`-segment of `targetResource` that
    /// starts with an upper-case letter, as in `crate::audit::embedding_text::target_kind`).
    Alert {
        alert_name: String,
        target_kind: Option<String>,
    },
}

/// The counts of one action type among the neighbours.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionCounts {
    pub action_type: String,
    /// Neighbours with this action.
    pub attempts: i64,
    /// Of them, finished (`phase` Completed or Failed).
    pub completed: i64,
    /// `outcome` Success.
    pub succeeded: i64,
    /// `outcome` Failure.
    pub failed: i64,
    pub median_duration_ms: Option<f64>,
    pub p90_duration_ms: Option<f64>,
    pub last_seen: DateTime<Utc>,
    pub clusters: i64,
    pub namespaces: i64,
    /// Up to three audit ids, nearest (by vector) or newest (by alert) first.
    pub examples: Vec<i64>,
    /// Similarity range of this action's neighbours (by vector only).
    pub min_similarity: Option<f64>,
    pub max_similarity: Option<f64>,
}

/// The most neighbours one insight query may consider.
pub const MAX_NEIGHBOURS: i64 = 1000;

impl Store {
    /// Counts per action type over at most `limit` neighbours chosen by `neighbours`, within `filters` (the
    /// caller's namespace scope included). An empty scope (`Some(vec![])`) counts nothing.
    pub async fn insight_counts(
        &self,
        neighbours: &Neighbours,
        filters: &AuditFilters,
        limit: i64,
    ) -> Result<InsightCounts, StoreError> {
        if filters.namespaces.as_ref().is_some_and(Vec::is_empty) {
            return Ok(InsightCounts::default());
        }
        let limit = limit.clamp(1, MAX_NEIGHBOURS);
        let mut tx = self.read_pool.begin().await?;
        let rows = match neighbours {
            Neighbours::Vector {
                vector,
                model_id,
                exclude_id,
                min_similarity,
                ef_search,
                halfvec,
            } => {
                // The index is asked for twice the neighbours (the other filters drop some), and ef_search is at
                // least that candidate count: below it the scan returns fewer candidates than asked for.
                let candidates = (limit * 2).max(100);
                super::search::hnsw_settings(&mut tx, i64::from(*ef_search).max(candidates))
                    .await?;
                let sql = if *halfvec {
                    BY_VECTOR_HALFVEC
                } else {
                    BY_VECTOR
                };
                let q = sqlx::query(sql)
                    .bind(Vector::from(vector.clone()))
                    .bind(filters.namespaces.as_deref())
                    .bind(candidates);
                bind_filters(q, filters)
                    .bind(*min_similarity)
                    .bind(*exclude_id)
                    .bind(limit)
                    .bind(model_id)
                    .bind(SEEDS)
                    .fetch_all(&mut *tx)
                    .await?
            }
            Neighbours::Alert {
                alert_name,
                target_kind,
            } => {
                let q = sqlx::query(BY_ALERT)
                    .bind(alert_name)
                    .bind(filters.namespaces.as_deref())
                    .bind(target_kind.as_deref());
                bind_filters(q, filters)
                    .bind(None::<f64>)
                    .bind(None::<i64>)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?
            }
        };
        tx.commit().await?;
        let matched = match rows.first() {
            Some(r) => {
                let v: sqlx::types::Json<Vec<MatchedAlert>> = r.try_get("matched")?;
                v.0
            }
            None => Vec::new(),
        };
        Ok(InsightCounts {
            actions: rows.iter().map(counts).collect::<Result<_, _>>()?,
            matched,
        })
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds `$4`–`$10`: the filters other than the namespace scope.
fn bind_filters<'q>(q: PgQuery<'q>, f: &'q AuditFilters) -> PgQuery<'q> {
    q.bind(f.phase.as_deref())
        .bind(f.outcome.as_deref())
        .bind(f.severity.as_deref())
        .bind(f.cluster.as_deref())
        .bind(f.action_type.as_deref())
        .bind(f.since)
        .bind(f.until)
}

/// The statement of both ways: `c` (the candidates, `$1`–`$3`) joined to the audits and filtered (`$4`–`$12`) into
/// `f`, the first `$13` in `$order` (output columns of `f`, which also order each action's examples); `$family`
/// narrows `f` to the neighbours counted, `n`; then the aggregate per action type. Every row also carries the
/// alerts `n` was narrowed to (`matched`, the same on every row).
macro_rules! insight_sql {
    ($candidates:expr, $order:literal, $family:expr) => {
        concat!(
            "WITH c AS MATERIALIZED (", $candidates, "),
             f AS MATERIALIZED (
                 SELECT a.id, a.alert_name, a.action_type, a.phase, a.outcome, a.duration_ms, a.start_time,
                        a.cluster_name, a.namespace, c.distance
                 FROM c JOIN audits a ON a.id = c.audit_id
                 WHERE ", super::search::candidate_filters!(), "
                 ORDER BY ", $order, "
                 LIMIT $13
             ), ", $family, "
             SELECT action_type,
                    count(*) AS attempts,
                    count(*) FILTER (WHERE phase IN ('Completed', 'Failed')) AS completed,
                    count(*) FILTER (WHERE outcome = 'Success') AS succeeded,
                    count(*) FILTER (WHERE outcome = 'Failure') AS failed,
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS median_duration_ms,
                    percentile_cont(0.9) WITHIN GROUP (ORDER BY duration_ms) AS p90_duration_ms,
                    max(start_time) AS last_seen,
                    count(DISTINCT cluster_name) AS clusters,
                    count(DISTINCT namespace) AS namespaces,
                    (array_agg(id ORDER BY ", $order, "))[1:3] AS examples,
                    min(1 - distance) AS min_similarity,
                    max(1 - distance) AS max_similarity,
                    (SELECT coalesce(jsonb_agg(jsonb_build_object('alertName', m.alert_name, 'seeds', m.seeds)
                                               ORDER BY m.seeds DESC, m.alert_name), '[]'::jsonb)
                     FROM matched m) AS matched
             FROM n
             GROUP BY action_type
             ORDER BY action_type"
        )
    };
}

/// By vector: the candidates are `$1` the query vector, `$2` the namespace scope, `$3` how many, `$14` the model.
/// The neighbours counted are those of the incident the query is about: the alerts of the nearest `$15` ([`SEEDS`])
/// neighbours vote with their similarity, the alert with the largest vote wins (all of them on a tie; `matched`),
/// and `f` narrowed to it is `n` (an audit without alertName counts as the alert "none").
///
/// Why: audit texts are templated (the action, phase and outcome words are part of every embedding text), so the
/// 200 nearest audits of a query hold the incident's own audits *and* those of other incidents that merely share
/// words (a query about pods that cannot be scheduled is near "action: increase cpu limit"), whose actions then
/// win the ranking. Measured on the labelled evaluation of `tests/it/insights.rs` (32 incident families of 30–80
/// audits, 96 held-out queries; the effective action ranked first for how many):
///
/// | neighbours counted | score |
/// |---|---|
/// | the 200 nearest | 33 |
/// | the 10 / 20 / 30 / 50 nearest | 82 / 89 / 88 / 87 |
/// | the 200 nearest with minSimilarity 0.4 / 0.5 / 0.6 (a query's nearest similarity ranges 0.31–0.85) | 69 / 64 / 50 |
/// | the 200 nearest of the winning alert of the 5 / 10 / 20 / 40 nearest | 88 / 88 / 87 / 86 |
/// | the same with every alert of ≥ 0.7 / ≥ 0.5 of the winner's vote, 20 nearest | 85 / 86 |
///
/// The narrowed count keeps the 200-neighbour sample (rates from many audits) without the other incidents. What is
/// left (8 of 96) are queries whose nearest audits belong to another incident: a retrieval miss, which
/// `matchedAlerts` shows the caller.
macro_rules! by_vector {
    ($distance:literal) => {
        insight_sql!(
            concat!(
                "SELECT e.audit_id, ", $distance, " AS distance
                 FROM audit_embeddings e
                 WHERE ($2::text[] IS NULL OR e.namespace = ANY($2)) AND e.model_id = $14
                 ORDER BY ", $distance, "
                 LIMIT $3"
            ),
            "distance, id",
            "seed AS (SELECT alert_name, 1 - distance AS similarity FROM f ORDER BY distance, id LIMIT $15),
             votes AS (SELECT alert_name, count(*) AS seeds, sum(similarity) AS vote FROM seed GROUP BY alert_name),
             matched AS (SELECT alert_name, seeds FROM votes WHERE vote >= (SELECT max(vote) FROM votes)),
             n AS (SELECT f.* FROM f WHERE EXISTS (
                       SELECT 1 FROM matched m WHERE m.alert_name IS NOT DISTINCT FROM f.alert_name))"
        )
    };
}
const BY_VECTOR: &str = by_vector!("e.embedding <=> $1");
/// (The cast's dimensions are [`crate::crd::VECTOR_DIMENSIONS`], as in `search`, whose test checks both.)
pub(super) const BY_VECTOR_HALFVEC: &str =
    by_vector!("e.embedding::halfvec(384) <=> $1::halfvec(384)");

/// By alert: the candidates are `$1` the alert name, `$2` the namespace scope, `$3` the target kind (or NULL); the
/// distance is NULL (no similarity); the newest come first, and every one is counted.
const BY_ALERT: &str = insight_sql!(
    "SELECT a.id AS audit_id, NULL::float8 AS distance
     FROM audits a
     WHERE a.alert_name = $1
       AND ($2::text[] IS NULL OR a.namespace = ANY($2))
       AND ($3::text IS NULL OR substring(a.target_resource from '(?:^|/)([A-Z][^/]*)') = $3)",
    "start_time DESC, id DESC",
    "matched AS (SELECT $1::text AS alert_name, NULL::bigint AS seeds),
     n AS (SELECT * FROM f)"
);

/// How many of the nearest neighbours vote for the incident a query is about (see [`BY_VECTOR`]).
pub const SEEDS: i64 = 10;

/// An alert the neighbours were narrowed to: by vector, with how many of the [`SEEDS`] nearest carried it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchedAlert {
    pub alert_name: Option<String>,
    pub seeds: Option<i64>,
}

/// What an insight query counted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InsightCounts {
    pub actions: Vec<ActionCounts>,
    /// The alerts the neighbours were narrowed to (empty when nothing was found).
    pub matched: Vec<MatchedAlert>,
}

fn counts(r: &sqlx::postgres::PgRow) -> Result<ActionCounts, StoreError> {
    Ok(ActionCounts {
        action_type: r.try_get("action_type")?,
        attempts: r.try_get("attempts")?,
        completed: r.try_get("completed")?,
        succeeded: r.try_get("succeeded")?,
        failed: r.try_get("failed")?,
        median_duration_ms: r.try_get("median_duration_ms")?,
        p90_duration_ms: r.try_get("p90_duration_ms")?,
        last_seen: r.try_get("last_seen")?,
        clusters: r.try_get("clusters")?,
        namespaces: r.try_get("namespaces")?,
        examples: r.try_get("examples")?,
        min_similarity: r.try_get("min_similarity")?,
        max_similarity: r.try_get("max_similarity")?,
    })
}
