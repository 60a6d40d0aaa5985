//! The operations endpoints, on their own port: `/metrics`, `/healthz` (the process serves), `/readyz` (the
//! DataStorage is Ready for writes, the leader's RemediationAudit watch is not failing, and the database answers
//! through the pool within 2 s — so an exhausted pool, where writes wait too, reads not ready).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::runtime::Context;

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
