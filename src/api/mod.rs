//! The query API, served by every replica on `--api-addr` (reads only; JSON; errors as RFC 7807 problem JSON):
//!
//! - `GET  /api/v1/audits` — filters + keyset pagination (`cursor`, `nextCursor`), newest first;
//! - `GET  /api/v1/audits/{id}` — the audit, its history and the verification of its hash chain;
//! - `POST /api/v1/audits/search` — semantic search by free text or "similar to audit N", with filters;
//! - `POST /api/v1/audits/insights` — for the audits most like a situation, which actions were tried and how
//!   often each worked (ranked by the Wilson lower bound, see [`insight`]);
//! - `GET  /openapi.json` — the OpenAPI 3 document (also checked in as `docs/openapi.json`).
//!
//! Every `/api/v1` request needs a bearer token (TokenReview); what it returns is limited to the namespaces in
//! which the caller may `list remediationaudits` (SubjectAccessReview), see [`auth`]. An audit in a namespace the
//! caller may not list is answered with 404, exactly like a missing one, so ids do not reveal other tenants' audits.
//! The wire types are in [`types`], shared with the client of `kubectl audit` and `datastorage query`
//! (`crate::client`). How the port is protected (timeouts, connection, concurrency and body limits) is in
//! [`crate::http`]; reads use the store's own read pool with a statement timeout, apart from the writers' pool.

pub mod auth;
pub mod insight;
pub mod params;
pub mod problem;
pub mod types;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::Value;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::runtime::{Context, StoreRuntime};
use crate::store::insights::Neighbours;
use crate::store::list::PageOptions;
use crate::store::search::SearchParams;
use auth::{Auth, FORWARDED_TOKEN_HEADER, Scope, User};
use params::{InsightQuery, SearchQuery};
use problem::Problem;
use types::{
    Audit, GetResponse, HistoryItem, InsightResponse, ListResponse, SearchHit, SearchResponse,
};

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

const EMBED_TIMEOUT: Duration = Duration::from_secs(10);

/// A list page, or a page of history, ends early once it holds about this many bytes of JSON (it always holds
/// one item): 1000 audits with 64 KiB `details` each would otherwise be ~65 MB built in memory per request.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest search body (a query is at most 4096 bytes, the filters a few hundred).
pub const MAX_SEARCH_BODY_BYTES: usize = 16 * 1024;

/// Requests one caller (one username) may have in progress at once; more are answered 429. The port-wide limit
/// ([`crate::http::Limits::API`]) still applies, so one caller can never take the whole API.
pub const PER_CALLER_CONCURRENCY: usize = 8;

/// List pages with `details` (up to [`MAX_PAGE_BYTES`] each: reading, decoding and encoding ~4 MiB of JSON is
/// the API's heaviest work, on the cores the leader's writers need, and PostgreSQL's) in progress at once,
/// API-wide. A page with details waits up to [`DETAIL_PAGE_WAIT`] for its turn (so a client paging one page after
/// another is only slowed), else is answered 429 with `Retry-After`. Pages without `details` are a few hundred
/// bytes an audit and not limited. Measured with the flood test's large-list phase (50 clients looping on 4 MiB
/// pages, `tests/it/flood.rs`) on an idle 2-core machine: write p95 510 ms without the limit (236× idle), 655 ms
/// with only a concurrency limit of 2 (the same ~950 pages were served), 10.2 / 8.5 ms in two runs with one page at
/// a time, [`DETAIL_PAGE_INTERVAL`] and [`DETAIL_PAGE_WAIT`] (4.9× / 3.6×; 60 pages served).
pub const DETAIL_PAGES_IN_PROGRESS: usize = 1;

/// A page with `details` holds its permit at least this long: at most 4 such pages a second API-wide.
pub const DETAIL_PAGE_INTERVAL: Duration = Duration::from_millis(250);

/// How long a page with `details` waits for its turn before it is answered 429.
pub const DETAIL_PAGE_WAIT: Duration = Duration::from_secs(1);

struct ApiState {
    ctx: Arc<Context>,
    auth: Auth,
    callers: Arc<Mutex<HashMap<String, usize>>>,
    /// [`DETAIL_PAGES_IN_PROGRESS`] permits.
    detail_pages: Arc<tokio::sync::Semaphore>,
}

/// One of a caller's requests in progress; released on drop.
struct CallerPermit {
    callers: Arc<Mutex<HashMap<String, usize>>>,
    username: String,
}

impl Drop for CallerPermit {
    fn drop(&mut self) {
        let mut map = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.username) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.username);
            }
        }
    }
}

/// The query API's routes. Every answer carries `Cache-Control: no-store` (audit data must not be kept by
/// proxies or browsers) and `X-Content-Type-Options: nosniff`.
pub fn router(ctx: Arc<Context>, token_audiences: Vec<String>) -> Router {
    let state = Arc::new(ApiState {
        auth: Auth::new(ctx.client.clone(), token_audiences),
        ctx,
        callers: Arc::new(Mutex::new(HashMap::new())),
        detail_pages: Arc::new(tokio::sync::Semaphore::new(DETAIL_PAGES_IN_PROGRESS)),
    });
    Router::new()
        .route("/api/v1/audits", get(list))
        .route("/api/v1/audits/search", post(search))
        .route("/api/v1/audits/insights", post(insights))
        .route("/api/v1/audits/{id}", get(get_one))
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            Problem::not_found("no such endpoint; the API is described at /openapi.json")
        })
        .with_state(state)
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        // Request ids (`x-request-id`, echoed in the answer and in the access log line): the caller's own when it
        // is a plain token, a new UUID otherwise.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::from_fn(drop_unfit_request_id))
}

/// Removes a caller's `x-request-id` that is not 1–64 characters of `[A-Za-z0-9._-]`, so that what reaches the logs
/// as a request id cannot be made to look like other fields (the layer after this one then makes a UUID).
async fn drop_unfit_request_id(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let fit = |v: &HeaderValue| {
        let b = v.as_bytes();
        (1..=64).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
    };
    if req.headers().get(REQUEST_ID).is_some_and(|v| !fit(v)) {
        req.headers_mut().remove(REQUEST_ID);
    }
    next.run(req).await
}

const REQUEST_ID: &str = "x-request-id";

/// What one request read, for its access log line ([`ApiState::observe`]); a handler fills it in as it learns it.
#[derive(Debug, Default)]
struct Access {
    /// The TokenReview username.
    user: Option<String>,
    /// The namespace asked for (list, search) or the audit's (get, once the caller may read it).
    namespace: Option<String>,
    /// The audit read (get) or searched near (`similarToId`).
    id: Option<i64>,
    /// How many audits the answer holds.
    results: Option<usize>,
}

fn note(access: &Mutex<Access>, f: impl FnOnce(&mut Access)) {
    f(&mut access.lock().unwrap_or_else(|p| p.into_inner()));
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

impl ApiState {
    /// Runs one operation and records `datastorage_query_total{operation,status}` and its duration.
    /// Also writes the access log line (target `datastorage::access`): request id, operation, who (the
    /// TokenReview username), which namespace and audit, how many results, the status and the duration.
    async fn observe<T: Serialize + Send + 'static>(
        &self,
        operation: &'static str,
        headers: &HeaderMap,
        access: &Mutex<Access>,
        f: impl Future<Output = Result<T, Problem>>,
    ) -> Response {
        let start = Instant::now();
        let result = f.await;
        {
            let a = access.lock().unwrap_or_else(|p| p.into_inner());
            let request_id = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok());
            tracing::info!(
                target: "datastorage::access",
                request_id,
                operation,
                user = a.user.as_deref(),
                namespace = a.namespace.as_deref(),
                id = a.id,
                results = a.results,
                status = result.as_ref().map_or_else(|p| p.status, |_| 200),
                duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                "query API read"
            );
        }
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
            Ok(body) => json_off_the_runtime(body).await,
            Err(p) => {
                let throttled = p.status == 429;
                let mut resp = p.into_response();
                if throttled {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                resp
            }
        }
    }

    /// The authenticated caller, holding one of its [`PER_CALLER_CONCURRENCY`] permits.
    async fn caller(&self, headers: &HeaderMap) -> Result<(Arc<User>, CallerPermit), Problem> {
        let value = headers
            .get(header::AUTHORIZATION)
            .or_else(|| headers.get(FORWARDED_TOKEN_HEADER))
            .map(|v| {
                v.to_str()
                    .map_err(|_| Problem::unauthorized("the Authorization header is not ASCII"))
            })
            .transpose()?;
        let user = self.auth.authenticate(value).await?;
        let permit = self.admit(&user.username)?;
        Ok((user, permit))
    }

    /// One of [`PER_CALLER_CONCURRENCY`] permits of `username`, or 429.
    fn admit(&self, username: &str) -> Result<CallerPermit, Problem> {
        let mut map = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(username.to_string()).or_insert(0);
        if *n >= PER_CALLER_CONCURRENCY {
            return Err(Problem::too_many_requests(format!(
                "{username:?} already has {PER_CALLER_CONCURRENCY} requests in progress; retry when one is answered"
            )));
        }
        *n += 1;
        Ok(CallerPermit {
            callers: self.callers.clone(),
            username: username.to_string(),
        })
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

    /// The caller's filters limited to the namespaces they may list (403 for a namespace asked for and not
    /// allowed; `Some(vec![])` when allowed nowhere).
    async fn scoped(
        &self,
        user: &User,
        rt: &StoreRuntime,
        asked: params::Filters,
    ) -> Result<crate::store::search::AuditFilters, Problem> {
        let scope = self.scope(user, rt, asked.namespace.as_deref()).await?;
        let mut filters = asked.filters;
        filters.namespaces = scope_filter(scope);
        Ok(filters)
    }

    /// Whether the caller may read audits of `namespace`.
    async fn may_read(&self, user: &User, namespace: &str) -> Result<bool, Problem> {
        Ok(self.auth.may_list(user, "").await? || self.auth.may_list(user, namespace).await?)
    }
}

/// `body` as a JSON answer, serialized on the blocking pool: a page is up to ~4 MiB of JSON, one long synchronous
/// stretch of CPU that would otherwise hold an async worker the leader's writers need. Measured with the flood
/// test's large-list phase on a 2-core machine at load 8–12: write p95 2.3 s before, 1.9 s after (against 22 and
/// 13 ms idle) — within that machine's noise, so this is not the cure for the large-list latency (see
/// docs/security.md, "Flood figures").
async fn json_off_the_runtime<T: Serialize + Send + 'static>(body: T) -> Response {
    match tokio::task::spawn_blocking(move || serde_json::to_vec(&body)).await {
        Ok(Ok(bytes)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Ok(Err(e)) => {
            Problem::internal(format!("the answer could not be serialized: {e}")).into_response()
        }
        Err(e) => Problem::internal(format!("serializing the answer failed: {e}")).into_response(),
    }
}

fn scope_filter(scope: Scope) -> Option<Vec<String>> {
    match scope {
        Scope::All => None,
        Scope::Namespaces(v) => Some(v),
    }
}

impl From<crate::store::list::AuditRow> for Audit {
    fn from(r: crate::store::list::AuditRow) -> Self {
        Audit {
            id: r.id,
            namespace: r.namespace,
            name: r.name,
            remediation_request_id: r.remediation_request_id,
            alert_fingerprint: r.alert_fingerprint,
            alert_name: r.alert_name,
            phase: r.phase,
            outcome: r.outcome,
            action_type: r.action_type,
            severity: r.severity,
            environment: r.environment,
            cluster_name: r.cluster_name,
            target_resource: r.target_resource,
            start_time: r.start_time,
            end_time: r.end_time,
            duration_ms: r.duration_ms,
            error_message: r.error_message,
            details: r.details,
            generation: r.generation,
            content_hash: r.content_hash,
            chain_hash: r.chain_hash,
            created_at: r.created_at,
            updated_at: r.updated_at,
            deleted_at: r.deleted_at,
        }
    }
}

impl From<crate::store::search::SearchHit> for SearchHit {
    fn from(h: crate::store::search::SearchHit) -> Self {
        SearchHit {
            id: h.id,
            namespace: h.namespace,
            name: h.name,
            similarity: h.similarity,
            remediation_request_id: h.remediation_request_id,
            action_type: h.action_type,
            alert_name: h.alert_name,
            phase: h.phase,
            outcome: h.outcome,
            severity: h.severity,
            cluster_name: h.cluster_name,
            target_resource: h.target_resource,
            start_time: h.start_time,
            error_message: h.error_message,
        }
    }
}

fn query_pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, Problem> {
    let Query(pairs) =
        query.map_err(|e| Problem::bad_request(format!("unreadable query string: {e}")))?;
    Ok(pairs)
}

async fn list(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let access = Mutex::new(Access::default());
    s.observe("list", &headers, &access, async {
        let (user, _permit) = s.caller(&headers).await?;
        note(&access, |a| a.user = Some(user.username.clone()));
        let req = params::parse_list(&query_pairs(query)?)?;
        note(&access, |a| a.namespace = req.filters.namespace.clone());
        let rt = s.runtime()?;
        let filters = s.scoped(&user, &rt, req.filters).await?;
        let heavy = if req.details {
            let turn = tokio::time::timeout(
                DETAIL_PAGE_WAIT,
                s.detail_pages.clone().acquire_owned(),
            )
            .await;
            Some(turn.ok().and_then(Result::ok).ok_or_else(|| {
                Problem::too_many_requests(format!(
                    "list pages with details are served {} a second API-wide and the queue is full; retry \
                     shortly, or list without fields=details",
                    1000 / DETAIL_PAGE_INTERVAL.as_millis().max(1)
                ))
            })?)
        } else {
            None
        };
        let options = PageOptions {
            details: req.details,
            max_bytes: MAX_PAGE_BYTES,
        };
        let started = Instant::now();
        let page = rt
            .store
            .list_page(&filters, req.cursor, req.limit, options)
            .await?;
        if let Some(permit) = heavy {
            let hold = DETAIL_PAGE_INTERVAL.saturating_sub(started.elapsed());
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                drop(permit);
            });
        }
        note(&access, |a| a.results = Some(page.items.len()));
        Ok(ListResponse {
            items: page.items.into_iter().map(Audit::from).collect(),
            next_cursor: page.next.map(|c| c.encode()),
        })
    })
    .await
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
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let access = Mutex::new(Access::default());
    s.observe("get", &headers, &access, async {
        let (user, _permit) = s.caller(&headers).await?;
        note(&access, |a| a.user = Some(user.username.clone()));
        let id: i64 = id
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| Problem::bad_parameter("id", "id must be a positive integer"))?;
        let req = params::parse_history(&query_pairs(query)?)?;
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
        note(&access, |a| a.id = Some(id));
        if !s.may_read(&user, &ns).await? {
            return Err(not_found(id));
        }
        note(&access, |a| {
            a.namespace = Some(ns.clone());
            a.results = Some(1);
        });
        let Some(page) = rt
            .store
            .audit_page(id, req.after, req.limit, MAX_PAGE_BYTES)
            .await?
        else {
            return Err(not_found(id));
        };
        let v = crate::audit::record::verify_page(
            &page.history.prev_chain_hash,
            &page.history.entries,
            page.history.head.as_ref(),
            &page.shown,
            &page.row_content_hash,
            &page.row_chain_hash,
        );
        let anchors = crate::checkpoint::check_anchors(
            &s.ctx,
            &rt.store,
            id,
            (
                page.row.namespace.as_str(),
                page.row.name.as_str(),
                page.shown.uid.as_str(),
            ),
        )
        .await;
        let mut problems = v.problems();
        problems.extend(anchors.problems.iter().cloned());
        let history_purged = page.history.purged.map(|p| types::HistoryPurged {
            through_generation: p.through_generation,
            purged_at: p.purged_at,
        });
        let history = page
            .history
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
            audit: page.row.into(),
            history,
            history_next_cursor: page.history.next_after.map(|g| g.to_string()),
            chain_verified: problems.is_empty(),
            chain_head_matches: v.head_matches,
            chain_checks: v.checks.into_iter().map(Into::into).collect(),
            row_mismatches: v.row_mismatches,
            anchors,
            problems,
            history_purged,
        })
    })
    .await
}

/// Reads a request body of at most `limit` bytes (the router's deadline bounds how long that may take).
/// Reads a request body of at most `limit` bytes: 413 past it, 408 when the body deadline of
/// [`crate::http::limited`] passes first (also used by the admission webhook).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, Problem> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return Problem::too_large(format!("the body is larger than {limit} bytes"));
            }
            if err.is::<tower_http::timeout::TimeoutError>() {
                return Problem::request_timeout("the body did not arrive in time");
            }
            source = err.source();
        }
        Problem::bad_request(format!("the body could not be read: {inner}"))
    })
}

async fn search(State(s): State<Arc<ApiState>>, headers: HeaderMap, body: Body) -> Response {
    let access = Mutex::new(Access::default());
    s.observe("search", &headers, &access, async {
        // Authenticate before reading the body: an anonymous client cannot make the API buffer anything.
        let (user, _permit) = s.caller(&headers).await?;
        note(&access, |a| a.user = Some(user.username.clone()));
        let body = read_body(body, MAX_SEARCH_BODY_BYTES).await?;
        let req = params::parse_search(&body)?;
        note(&access, |a| {
            a.namespace = req.filters.namespace.clone();
            if let SearchQuery::SimilarTo(id) = req.query {
                a.id = Some(id);
            }
        });
        let rt = s.runtime()?;
        let filters = s.scoped(&user, &rt, req.filters).await?;
        // Scope first: a caller allowed nowhere gets nothing, without the model running for it.
        if filters.namespaces.as_ref().is_some_and(Vec::is_empty) {
            note(&access, |a| a.results = Some(0));
            return Ok(SearchResponse { results: vec![] });
        }
        let (vector, exclude_id, model_id) = match &req.query {
            SearchQuery::Text(text) => {
                let (v, model) = embed_query(&rt, text).await?;
                (v, None, model)
            }
            SearchQuery::SimilarTo(id) => {
                let (v, model) = s.vector_of(&user, &rt, *id).await?;
                (v, Some(*id), model)
            }
        };
        let params = SearchParams {
            limit: req.limit,
            min_similarity: req.min_similarity,
            ef_search: rt.ef_search,
            exclude_id,
            halfvec: rt.halfvec,
            model_id,
        };
        let results = rt.store.search(&vector, &filters, &params).await?;
        note(&access, |a| a.results = Some(results.len()));
        Ok(SearchResponse {
            results: results.into_iter().map(SearchHit::from).collect(),
        })
    })
    .await
}

/// The vector of a free-text query, from the DataStorage's embedder, and the model that made it.
async fn embed_query(rt: &StoreRuntime, text: &str) -> Result<(Vec<f32>, String), Problem> {
    let embedder = rt.embedder.as_ref().ok_or_else(|| {
        Problem::unavailable(
            "semantic search is unavailable: embeddings are disabled in the DataStorage",
        )
    })?;
    let texts = [text.to_string()];
    let vectors = tokio::time::timeout(EMBED_TIMEOUT, embedder.embed(&texts))
        .await
        .map_err(|_| Problem::unavailable("the embedding provider did not answer in time"))?
        .map_err(|e| Problem::unavailable(format!("the embedding provider failed: {e}")))?;
    let v = vectors
        .into_iter()
        .next()
        .ok_or_else(|| Problem::unavailable("the embedding provider returned no vector"))?;
    Ok((v, embedder.model_id().to_string()))
}

impl ApiState {
    /// The stored vector of audit `id` for "similar to audit N" (404 naming `similarToId` when it is missing or
    /// in a namespace the caller may not read), and its model.
    async fn vector_of(
        &self,
        user: &User,
        rt: &StoreRuntime,
        id: i64,
    ) -> Result<(Vec<f32>, String), Problem> {
        let missing = || {
            let mut p = not_found(id);
            p.parameter = Some("similarToId".into());
            p
        };
        let ns = rt.store.namespace_of(id).await?.ok_or_else(missing)?;
        if !self.may_read(user, &ns).await? {
            return Err(missing());
        }
        let (v, model) = rt.store.embedding_of(id).await?.ok_or_else(|| {
            Problem::bad_parameter(
                "similarToId",
                format!("audit {id} has no embedding vector yet (pending backfill or embeddings disabled)"),
            )
        })?;
        // During a model switch an audit may still hold the old model's vector: it is comparable only with the
        // old model's vectors, which the backfill is replacing, so answer "not yet" rather than mix.
        if let Some(e) = rt.embedder.as_ref()
            && e.model_id() != model
        {
            return Err(Problem::bad_parameter(
                "similarToId",
                format!(
                    "audit {id}'s vector is from model {model}; the store now embeds with {} and the backfill has \
                     not re-embedded it yet",
                    e.model_id()
                ),
            ));
        }
        Ok((v, model))
    }
}

/// Body of an insight query: a few hundred bytes, like a search.
pub const MAX_INSIGHT_BODY_BYTES: usize = MAX_SEARCH_BODY_BYTES;

async fn insights(State(s): State<Arc<ApiState>>, headers: HeaderMap, body: Body) -> Response {
    let access = Mutex::new(Access::default());
    s.observe("insights", &headers, &access, async {
        // As search: authenticate before the body is read, scope before the model runs.
        let (user, _permit) = s.caller(&headers).await?;
        note(&access, |a| a.user = Some(user.username.clone()));
        let body = read_body(body, MAX_INSIGHT_BODY_BYTES).await?;
        let req = params::parse_insight(&body, chrono::Utc::now())?;
        note(&access, |a| {
            a.namespace = req.filters.namespace.clone();
            if let InsightQuery::SimilarTo(id) = req.query {
                a.id = Some(id);
            }
        });
        let rt = s.runtime()?;
        let filters = s.scoped(&user, &rt, req.filters).await?;
        let since = filters.since.unwrap_or_else(chrono::Utc::now);
        let until = filters.until;
        let counts = if filters.namespaces.as_ref().is_some_and(Vec::is_empty) {
            crate::store::insights::InsightCounts::default()
        } else {
            let neighbours = match req.query {
                InsightQuery::Text(text) => {
                    let (vector, model_id) = embed_query(&rt, &text).await?;
                    Neighbours::Vector {
                        vector,
                        model_id,
                        exclude_id: None,
                        min_similarity: req.min_similarity,
                        ef_search: rt.ef_search,
                        halfvec: rt.halfvec,
                    }
                }
                InsightQuery::SimilarTo(id) => {
                    let (vector, model_id) = s.vector_of(&user, &rt, id).await?;
                    Neighbours::Vector {
                        vector,
                        model_id,
                        exclude_id: Some(id),
                        min_similarity: req.min_similarity,
                        ef_search: rt.ef_search,
                        halfvec: rt.halfvec,
                    }
                }
                InsightQuery::Alert {
                    alert_name,
                    target_kind,
                } => Neighbours::Alert {
                    alert_name,
                    target_kind,
                },
            };
            rt.store
                .insight_counts(&neighbours, &filters, req.limit)
                .await?
        };
        let matched_alerts = counts
            .matched
            .into_iter()
            .map(|m| types::MatchedAlert {
                alert_name: m.alert_name,
                seeds: m.seeds,
            })
            .collect();
        let (actions, neighbours, similarity) = insight::rank(counts.actions);
        note(&access, |a| a.results = Some(actions.len()));
        Ok(InsightResponse {
            matched_alerts,
            verdict: insight::verdict(&actions, neighbours),
            neighbours,
            similarity,
            since,
            until,
            actions,
        })
    })
    .await
}
