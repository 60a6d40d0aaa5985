//! The webhook's HTTPS port: `POST /mutate` (an AdmissionReview in, one out), served over TLS (rustls) by
//! [`crate::http::serve`] with the Service's serving certificate ([`crate::tls`]).
//!
//! Bounded: a request body of at most [`MAX_BODY_BYTES`] (an object is at most ~1.5 MiB in etcd and a review holds
//! the object and the old one), arriving within [`LIMITS`]' body deadline, [`REVIEW_TIMEOUT`] for the sanitizer (it
//! runs on the blocking pool), a TLS handshake and request head within [`HANDSHAKE_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] connections at once. The API
//! server calls with its own `timeoutSeconds` (the chart: 5 s); past it the request is admitted unchanged
//! (`failurePolicy: Ignore`) and the controller redacts the stored object.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tracing::warn;

use crate::runtime::Context;

pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(4);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: usize = 256;

/// The per-request limits of the API and ops ports, for this one: the port takes ingress from anywhere (the API
/// server is not a pod), so a client trickling a body must not hold one of the [`MAX_CONNECTIONS`] slots for long.
/// A body must arrive within 10 s (408) and a review be answered within 15 s (the API server's own
/// `timeoutSeconds` is at most 30 s; the chart's 5 s), at most 64 reviews in progress at once (503 past it).
pub const LIMITS: crate::http::Limits = crate::http::Limits {
    header_read_timeout: HANDSHAKE_TIMEOUT,
    max_header_bytes: 16 * 1024,
    body_timeout: Duration::from_secs(10),
    max_body_bytes: MAX_BODY_BYTES,
    request_timeout: Duration::from_secs(15),
    max_connections: MAX_CONNECTIONS,
    max_concurrency: 64,
};

/// The webhook's routes; [`crate::http::serve`] serves them over TLS under [`LIMITS`].
pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx)
}

async fn mutate(State(ctx): State<Arc<Context>>, body: axum::body::Body) -> Response {
    // 408 when the body does not arrive within the deadline, 413 past the size (a client trickling a body gives
    // its connection slot back at the deadline).
    let body = match crate::api::read_body(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(problem) => {
            ctx.metrics.admission_error("bad_request");
            return problem.into_response();
        }
    };
    let config = ctx
        .current_runtime()
        .map(|rt| rt.sanitize)
        .unwrap_or_default();
    let task =
        tokio::task::spawn_blocking(move || super::review(&body, config, chrono::Utc::now()));
    let reviewed = match tokio::time::timeout(REVIEW_TIMEOUT, task).await {
        Ok(Ok(Ok(r))) => r,
        Ok(Ok(Err(e))) => {
            ctx.metrics.admission_error("bad_request");
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
        Ok(Err(e)) => {
            warn!(error = %e, "admission review task failed");
            ctx.metrics.admission_error("internal");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Err(_) => {
            warn!(
                "admission review took longer than {REVIEW_TIMEOUT:?}; the API server applies its failurePolicy"
            );
            ctx.metrics.admission_error("timeout");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    ctx.metrics
        .admission_reviews
        .with_label_values(&[reviewed.verdict.as_str()])
        .inc();
    axum::Json(reviewed.response).into_response()
}
