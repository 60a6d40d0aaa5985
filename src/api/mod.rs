//! The query API, served by every replica on `--api-addr` (reads only; JSON; errors as RFC 7807 problem JSON):
//!
//! - `GET  /api/v1/audits` — filters + keyset pagination (`cursor`, `nextCursor`), newest first;
//! - `GET  /api/v1/audits/{id}` — the audit, its history and the verification of its hash chain;
//! - `POST /api/v1/audits/search` — semantic search by free text or "similar to audit N", with filters;
//! - `GET  /openapi.json` — the OpenAPI 3 document (also checked in as `docs/openapi.json`).
//!
//! Every `/api/v1` request needs a bearer token (TokenReview); what it returns is limited to the namespaces in
//! which the caller may `list remediationaudits` (SubjectAccessReview), see [`auth`]. An audit in a namespace the
//! caller may not list is answered with 404, exactly like a missing one, so ids do not reveal other tenants' audits.
//! The shared client of `kubectl audit` and `datastorage query` is in [`client`].

pub mod auth;
pub mod client;
pub mod params;
pub mod problem;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::record::ChainCheck;
use crate::runtime::{Context, StoreRuntime};
use crate::store::search::SearchParams;
use auth::{Auth, FORWARDED_TOKEN_HEADER, Scope, User};
use params::SearchQuery;
use problem::Problem;

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

const EMBED_TIMEOUT: Duration = Duration::from_secs(10);

struct ApiState {
    ctx: Arc<Context>,
    auth: Auth,
}

/// The query API's routes.
pub fn router(ctx: Arc<Context>) -> Router {
    let state = Arc::new(ApiState {
        auth: Auth::new(ctx.client.clone()),
        ctx,
    });
    Router::new()
        .route("/api/v1/audits", get(list))
        .route("/api/v1/audits/search", post(search))
        .route("/api/v1/audits/{id}", get(get_one))
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            Problem::not_found("no such endpoint; the API is described at /openapi.json")
        })
        .with_state(state)
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

impl ApiState {
    /// Runs one operation and records `datastorage_query_total{operation,status}` and its duration.
    async fn observe<T: Serialize>(
        &self,
        operation: &'static str,
        f: impl Future<Output = Result<T, Problem>>,
    ) -> Response {
        let start = Instant::now();
        let result = f.await;
        let status = match &result {
            Ok(_) => "success",
            Err(p) => p.metric_status(),
        };
        let m = &self.ctx.metrics;
        m.query_total.with_label_values(&[operation, status]).inc();
        m.query_duration
            .with_label_values(&[operation])
            .observe(start.elapsed().as_secs_f64());
        match result {
            Ok(body) => Json(body).into_response(),
            Err(p) => p.into_response(),
        }
    }

    async fn user(&self, headers: &HeaderMap) -> Result<Arc<User>, Problem> {
        let value = headers
            .get(header::AUTHORIZATION)
            .or_else(|| headers.get(FORWARDED_TOKEN_HEADER))
            .map(|v| {
                v.to_str()
                    .map_err(|_| Problem::unauthorized("the Authorization header is not ASCII"))
            })
            .transpose()?;
        self.auth.authenticate(value).await
    }

    fn runtime(&self) -> Result<Arc<StoreRuntime>, Problem> {
        self.ctx.current_runtime().ok_or_else(|| {
            Problem::unavailable(
                "the store is not ready yet (the DataStorage is not Ready); retry shortly",
            )
        })
    }

    async fn scope(
        &self,
        user: &User,
        rt: &StoreRuntime,
        namespace: Option<&str>,
    ) -> Result<Scope, Problem> {
        self.auth
            .scope(user, namespace, || async {
                rt.store.audit_namespaces().await.map_err(Problem::from)
            })
            .await
    }

    /// Whether the caller may read audits of `namespace`.
    async fn may_read(&self, user: &User, namespace: &str) -> Result<bool, Problem> {
        Ok(self.auth.may_list(user, "").await? || self.auth.may_list(user, namespace).await?)
    }
}

fn scope_filter(scope: Scope) -> Option<Vec<String>> {
    match scope {
        Scope::All => None,
        Scope::Namespaces(v) => Some(v),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListResponse {
    items: Vec<crate::store::list::AuditRow>,
    next_cursor: Option<String>,
}

async fn list(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    s.observe("list", async {
        let user = s.user(&headers).await?;
        let Query(pairs) =
            query.map_err(|e| Problem::bad_request(format!("unreadable query string: {e}")))?;
        let req = params::parse_list(&pairs)?;
        let rt = s.runtime()?;
        let scope = s
            .scope(&user, &rt, req.filters.namespace.as_deref())
            .await?;
        let mut filters = req.filters.filters;
        filters.namespaces = scope_filter(scope);
        let page = rt.store.list(&filters, req.cursor, req.limit).await?;
        Ok(ListResponse {
            items: page.items,
            next_cursor: page.next.map(|c| c.encode()),
        })
    })
    .await
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryItem {
    generation: i64,
    content_hash: String,
    prev_chain_hash: String,
    chain_hash: String,
    record: Value,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GetResponse {
    audit: crate::store::list::AuditRow,
    history: Vec<HistoryItem>,
    /// Everything below holds: every generation verifies, the current row's chain hash is the head, the current
    /// row shows exactly the head record, and the anchors outside the database agree.
    chain_verified: bool,
    chain_head_matches: bool,
    chain_checks: Vec<ChainCheck>,
    /// Fields in which the current row (what list/search/get show) differs from the head record.
    row_mismatches: Vec<String>,
    /// The RemediationAudit's status.chainHash and the latest signed checkpoint.
    anchors: crate::checkpoint::Anchors,
    /// What failed, one line each (empty when verified).
    problems: Vec<String>,
}

fn not_found(id: i64) -> Problem {
    Problem::not_found(format!(
        "audit {id} does not exist or is in a namespace you may not list"
    ))
}

async fn get_one(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    s.observe("get", async {
        let user = s.user(&headers).await?;
        let id: i64 = id
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| Problem::bad_parameter("id", "id must be a positive integer"))?;
        let rt = s.runtime()?;
        let Some(ns) = rt.store.namespace_of(id).await? else {
            // Gone from the store: say so when the signed checkpoint lists it (ids are sequential, so this tells
            // nothing about any namespace).
            return Err(match crate::checkpoint::listed_in_checkpoint(&s.ctx, id).await {
                Some(at) => Problem::not_found(format!(
                    "audit {id} is missing from the store, but the signed checkpoint of {at} lists it: it was deleted"
                )),
                None => not_found(id),
            });
        };
        if !s.may_read(&user, &ns).await? {
            return Err(not_found(id));
        }
        let audit = rt.store.get(id).await?.ok_or_else(|| not_found(id))?;
        let verified = rt.store.verify_audit(id).await?.ok_or_else(|| not_found(id))?;
        let hashes: Vec<&str> = verified
            .entries
            .iter()
            .map(|e| e.chain_hash.as_str())
            .collect();
        let anchors = crate::checkpoint::check_anchors(
            &s.ctx,
            &rt.store,
            id,
            (audit.namespace.as_str(), audit.name.as_str(), verified.uid.as_str()),
            &hashes,
        )
        .await;
        let v = verified.verification;
        let mut problems = v.problems();
        problems.extend(anchors.problems.iter().cloned());
        let history = verified
            .entries
            .into_iter()
            .map(|e| HistoryItem {
                generation: e.generation,
                record: serde_json::from_str(&e.record).unwrap_or(Value::String(e.record)),
                content_hash: e.content_hash,
                prev_chain_hash: e.prev_chain_hash,
                chain_hash: e.chain_hash,
            })
            .collect();
        Ok(GetResponse {
            audit,
            history,
            chain_verified: problems.is_empty(),
            chain_head_matches: v.head_matches,
            chain_checks: v.checks,
            row_mismatches: v.row_mismatches,
            anchors,
            problems,
        })
    })
    .await
}

async fn search(State(s): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    s.observe("search", async {
        let user = s.user(&headers).await?;
        let req = params::parse_search(&body)?;
        let rt = s.runtime()?;
        let scope = s
            .scope(&user, &rt, req.filters.namespace.as_deref())
            .await?;
        let (vector, exclude_id, model_id) = match &req.query {
            SearchQuery::Text(text) => {
                let embedder = rt.embedder.as_ref().ok_or_else(|| {
                    Problem::unavailable(
                        "semantic search is unavailable: embeddings are disabled in the DataStorage",
                    )
                })?;
                let texts = [text.clone()];
                let vectors = tokio::time::timeout(EMBED_TIMEOUT, embedder.embed(&texts))
                    .await
                    .map_err(|_| Problem::unavailable("the embedding provider did not answer in time"))?
                    .map_err(|e| Problem::unavailable(format!("the embedding provider failed: {e}")))?;
                let v = vectors.into_iter().next().ok_or_else(|| {
                    Problem::unavailable("the embedding provider returned no vector")
                })?;
                (v, None, embedder.model_id().to_string())
            }
            SearchQuery::SimilarTo(id) => {
                let id = *id;
                let missing = || {
                    let mut p = not_found(id);
                    p.parameter = Some("similarToId".into());
                    p
                };
                let ns = rt.store.namespace_of(id).await?.ok_or_else(missing)?;
                if !s.may_read(&user, &ns).await? {
                    return Err(missing());
                }
                let (v, model) = rt.store.embedding_of(id).await?.ok_or_else(|| {
                    Problem::bad_parameter(
                        "similarToId",
                        format!("audit {id} has no embedding vector yet (pending backfill or embeddings disabled)"),
                    )
                })?;
                // During a model switch an audit may still hold the old model's vector: it is comparable only with
                // the old model's vectors, which the backfill is replacing, so answer "not yet" rather than mix.
                if let Some(e) = rt.embedder.as_ref()
                    && e.model_id() != model
                {
                    return Err(Problem::bad_parameter(
                        "similarToId",
                        format!(
                            "audit {id}'s vector is from model {model}; the store now embeds with {} and the \
                             backfill has not re-embedded it yet",
                            e.model_id()
                        ),
                    ));
                }
                (v, Some(id), model)
            }
        };
        let mut filters = req.filters.filters;
        filters.namespaces = scope_filter(scope);
        if filters.namespaces.as_ref().is_some_and(Vec::is_empty) {
            return Ok(json!({ "results": [] }));
        }
        let params = SearchParams {
            limit: req.limit,
            min_similarity: req.min_similarity,
            ef_search: rt.ef_search,
            exclude_id,
            halfvec: rt.halfvec,
            model_id,
        };
        let results = rt.store.search(&vector, &filters, &params).await?;
        Ok(json!({ "results": results }))
    })
    .await
}
