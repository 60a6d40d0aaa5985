//! The HTTP servers of the operator and the operations endpoints.
//!
//! [`serve`] runs one port (the query API, or the operations port) with hyper's HTTP/1 connection builder and a
//! timer, under [`Limits`]: a header-read timeout (which is also the idle keep-alive timeout: hyper's timer runs
//! whenever a connection waits for a request head, with or without partial bytes), a cap on header size, a
//! connection limit (a connection over it is answered 503 and closed at once, without a task), and, in the router,
//! a concurrency limit (503 + `Retry-After` past it), a whole-request timeout, a request-body deadline and a body
//! size limit (413 from `Content-Length` alone, before the body is read and before authentication). axum's own
//! `serve` runs hyper without a timer, which silently disables hyper's header-read timeout: one client holding
//! thousands of half-sent requests would then hold as many tasks and sockets forever. Optionally over TLS (the
//! query API in the chart's default, the admission webhook always), and drained on shutdown ([`Drain`]).
//!
//! The operations endpoints, on their own port: `/metrics`, `/healthz` (the process serves), `/readyz` (the
//! DataStorage is Ready for writes, the leader's RemediationAudit watch is not failing, and the database answers
//! through the pool within 2 s — so an exhausted pool, where writes wait too, reads not ready).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::{RequestBodyDeadlineLayer, TimeoutLayer};

use crate::api::problem::Problem;
use crate::runtime::Context;

/// What one port tolerates from its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request head (request line + headers) must arrive completely within this after the connection starts
    /// waiting for it; this is also how long an idle keep-alive connection is kept.
    pub header_read_timeout: Duration,
    /// Largest request head accepted (431 past it).
    pub max_header_bytes: usize,
    /// A request body must arrive completely within this.
    pub body_timeout: Duration,
    /// Largest request body accepted (413 past it).
    pub max_body_bytes: usize,
    /// A whole request (body, authentication, queries, response) must be answered within this (503 past it).
    pub request_timeout: Duration,
    /// Open connections at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Requests in progress at once; more are answered 503 with `Retry-After`.
    pub max_concurrency: usize,
}

impl Limits {
    /// The query API: bodies are search requests (a few KiB at most); a list or search answers in well under a
    /// second, a cold TokenReview + SubjectAccessReviews in a few.
    pub const API: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        max_header_bytes: 32 * 1024,
        body_timeout: Duration::from_secs(10),
        max_body_bytes: 64 * 1024,
        request_timeout: Duration::from_secs(30),
        max_connections: 512,
        max_concurrency: 64,
    };
    /// The operations port: GETs only, scraped by Prometheus and probed by the kubelet.
    pub const OPS: Limits = Limits {
        header_read_timeout: Duration::from_secs(5),
        max_header_bytes: 16 * 1024,
        body_timeout: Duration::from_secs(5),
        max_body_bytes: 1024,
        request_timeout: Duration::from_secs(10),
        max_connections: 64,
        max_concurrency: 16,
    };
}

/// The answer to a connection over [`Limits::max_connections`], written with one non-blocking write.
static TOO_MANY_CONNECTIONS: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body = serde_json::to_string(&Problem::unavailable("too many connections; retry shortly"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {}\r\nconnection: close\r\nretry-after: 1\r\n\
         content-length: {}\r\n\r\n{body}",
        crate::api::problem::CONTENT_TYPE,
        body.len()
    )
    .into_bytes()
});

/// Applies the per-request limits of `limits` to `router` (concurrency, request timeout, body deadline and size)
/// and answers every error without a problem body (405, 408, 413, 431, timeouts) with problem JSON.
pub fn limited(router: Router, limits: Limits) -> Router {
    let permits = Arc::new(Semaphore::new(limits.max_concurrency));
    router
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(RequestBodyDeadlineLayer::new(limits.body_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.request_timeout,
        ))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let permits = permits.clone();
                async move {
                    let Ok(_permit) = permits.try_acquire_owned() else {
                        let mut resp =
                            Problem::unavailable("too many requests in progress; retry shortly")
                                .into_response();
                        resp.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                        return resp;
                    };
                    as_problem(next.run(req).await)
                }
            },
        ))
}

/// An error answer of the layers (axum's 405 and tower-http's timeouts, both without a body, and tower-http's
/// text/plain 413) made problem JSON. A handler's own error answer keeps its body: `/readyz`'s 503 says why the
/// replica is not ready (replacing it with "not answered in time" hid the reason; seen in
/// `controller::readyz_names_a_missing_or_failing_datastorage`).
fn as_problem(resp: Response) -> Response {
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE);
    let is_problem =
        content_type.is_some_and(|v| v.as_bytes() == crate::api::problem::CONTENT_TYPE.as_bytes());
    let from_a_layer = content_type.is_none() || status == StatusCode::PAYLOAD_TOO_LARGE;
    if status.as_u16() < 400 || is_problem || !from_a_layer {
        return resp;
    }
    let mut answer = Problem::from_status(status).into_response();
    for (name, value) in resp.headers() {
        if *name == header::ALLOW || *name == header::RETRY_AFTER {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// How a port stops: once `draining` is cancelled it accepts no more connections, asks each open one to close after
/// the request in progress (hyper's graceful shutdown: an idle keep-alive connection closes at once), and waits up
/// to `timeout` for them all.
#[derive(Clone)]
pub struct Drain {
    pub draining: tokio_util::sync::CancellationToken,
    pub timeout: Duration,
}

/// Serves `router` on `listener` under `limits` (over TLS with `tls`) until `drain` stops it. Accept errors (EMFILE)
/// are logged and retried after a short pause. Over TLS the handshake must end within the header-read timeout.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    drain: Drain,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192) + 1024)
        .max_header_size(limits.max_header_bytes);
    let router = limited(router, limits);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let stream = tokio::select! {
            biased;
            () = drain.draining.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the limit: one non-blocking write of a canned 503 (plain HTTP only), then close; no task, no
            // buffer.
            if acceptor.is_none() {
                let _ = stream.try_write(&TOO_MANY_CONNECTIONS);
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let draining = drain.draining.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = match acceptor {
                None => connection(&builder, TokioIo::new(stream), service, draining).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            connection(&builder, TokioIo::new(tls), service, draining).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Every permit back = every connection closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(drain.timeout, connections.acquire_many(all)).await {
        Ok(_) => {}
        Err(_) => tracing::warn!(
            open = limits.max_connections - connections.available_permits(),
            "connections still open after the drain timeout ({:?}); leaving them",
            drain.timeout
        ),
    }
    Ok(())
}

/// One connection, closed gracefully (after the request in progress) once `draining` is cancelled.
async fn connection<I>(
    builder: &hyper::server::conn::http1::Builder,
    io: TokioIo<I>,
    service: TowerToHyperService<Router>,
    draining: tokio_util::sync::CancellationToken,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = draining.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

pub fn ops_router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ctx)
}

async fn metrics(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    ctx.metrics
        .reconcile_queue_depth
        .set(i64::try_from(ctx.reconcile_queue_depth()).unwrap_or(i64::MAX));
    if let Some(rt) = ctx.current_runtime() {
        let pool = rt.store.pool();
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(0);
        ctx.metrics
            .pool_connections
            .with_label_values(&["idle"])
            .set(idle);
        ctx.metrics
            .pool_connections
            .with_label_values(&["in_use"])
            .set(size - idle);
        ctx.metrics
            .pool_max_connections
            .set(i64::from(pool.options().get_max_connections()));
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
}

async fn readyz(State(ctx): State<Arc<Context>>) -> (StatusCode, String) {
    let (code, body) = readiness(&ctx).await;
    ctx.note_readiness((code != StatusCode::OK).then_some(body.as_str()));
    (code, body)
}

async fn readiness(ctx: &Arc<Context>) -> (StatusCode, String) {
    if ctx.shutdown.is_cancelled() {
        // First thing on SIGTERM: the endpoints controller takes this replica out of the Service while its ports
        // still serve the requests already routed to it.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: this replica finishes the requests in progress and stops\n".into(),
        );
    }
    let Some(rt) = ctx.current_runtime() else {
        return (StatusCode::SERVICE_UNAVAILABLE, not_ready_reason(ctx).await);
    };
    if let Err(msg) = &rt.writable {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{msg}\n"));
    }
    if let Some(failing) = ctx
        .watch_failing_for()
        .filter(|d| *d >= crate::runtime::WATCH_FAILING_UNREADY)
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the RemediationAudit watch has been failing for {}s (see datastorage_watch_errors_total)\n",
                failing.as_secs()
            ),
        );
    }
    match tokio::time::timeout(std::time::Duration::from_secs(2), rt.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, no_answer(rt.store.pool())),
    }
}

/// Why the ping did not answer in time, naming an exhausted pool: every connection busy (slow queries, locks)
/// is the usual cause, and writes wait for the same connections.
fn no_answer(pool: &sqlx::PgPool) -> String {
    let max = pool.options().get_max_connections();
    let busy = (pool.size() as usize).saturating_sub(pool.num_idle());
    if busy >= max as usize {
        format!(
            "database: no connection within 2s: the pool is exhausted ({busy} of {max} connections busy)\n"
        )
    } else {
        format!("database: no answer within 2s ({busy} of {max} pool connections busy)\n")
    }
}

/// Why there is no store yet, naming the DataStorage and what to do: the first thing an operator installed
/// without one (`helm install` with `dataStorage.create=false`) is asked about. One GET of the DataStorage, bounded
/// to 2 s (the probe's timeout is 3 s); only while the replica is not ready.
async fn not_ready_reason(ctx: &Context) -> String {
    let Some(name) = ctx.datastorage_name() else {
        return "the DataStorage is not ready\n".into();
    };
    let api: kube::Api<crate::crd::DataStorage> = kube::Api::all(ctx.client.clone());
    match tokio::time::timeout(std::time::Duration::from_secs(2), api.get_opt(name)).await {
        Ok(Ok(None)) => format!(
            "DataStorage {name:?} does not exist: create it (`kubectl explain datastorage.spec`; the Helm chart \
             creates it with dataStorage.create=true and database.url or database.existingSecret)\n"
        ),
        Ok(Ok(Some(ds))) => {
            let status = ds.status.unwrap_or_default();
            let ready = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "no Ready condition yet".into());
            let phase = status
                .phase
                .map_or_else(|| "none".to_string(), |p| format!("{p:?}"));
            format!(
                "DataStorage {name:?} is not Ready (phase {phase}; {ready}); see `kubectl describe dstore {name}`\n"
            )
        }
        Ok(Err(e)) => format!("DataStorage {name:?} is not ready, and reading it failed: {e}\n"),
        Err(_) => format!("DataStorage {name:?} is not ready (reading it timed out)\n"),
    }
}
