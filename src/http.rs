//! The operations endpoints, on their own port: `/metrics`, `/healthz` (the process serves), `/readyz` (the
//! DataStorage is Ready for writes and the database answers).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::controller::Context;

pub fn ops_router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(ctx)
}

async fn metrics(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
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
            .pool_connections
            .with_label_values(&["max"])
            .set(i64::from(pool.options().get_max_connections()));
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
}

async fn readyz(State(ctx): State<Arc<Context>>) -> (StatusCode, String) {
    let Some(rt) = ctx.current_runtime() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the DataStorage is not ready\n".into(),
        );
    };
    if let Err(msg) = &rt.writable {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{msg}\n"));
    }
    match tokio::time::timeout(std::time::Duration::from_secs(2), rt.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database: no answer within 2s\n".into(),
        ),
    }
}
