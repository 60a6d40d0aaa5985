//! `datastorage run`: wires the controllers, the backfill and the HTTP endpoints together.

use std::net::SocketAddr;
use std::sync::Arc;

use kube::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::controller::datastorage::DsContext;
use crate::controller::{Context, audit, datastorage};
use crate::metrics::Metrics;

pub struct Options {
    /// Name of the cluster-scoped DataStorage to serve.
    pub datastorage: String,
    /// Watch RemediationAudits in this namespace only (`None`: all namespaces).
    pub namespace: Option<String>,
    pub metrics_addr: SocketAddr,
    /// Where the query API (`/api/v1/…`, `/openapi.json`) is served; every replica serves it.
    pub api_addr: SocketAddr,
    pub model_dir: Option<String>,
}

/// A started operator.
pub struct Running {
    /// Where `/metrics`, `/healthz` and `/readyz` are served (useful with port 0).
    pub ops_addr: SocketAddr,
    /// Where the query API is served (useful with port 0).
    pub api_addr: SocketAddr,
    pub context: Arc<Context>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Starts everything and returns once the endpoints listen.
pub async fn start(client: Client, opts: Options) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new()?);
    let embed_metrics = crate::embed::EmbedMetrics::register(&metrics.registry)?;
    let (tx, rx) = watch::channel(None);
    let ds_ctx = Arc::new(DsContext::new(
        client.clone(),
        metrics.clone(),
        embed_metrics,
        opts.model_dir,
        tx,
    ));
    let ctx = Arc::new(Context::new(client, metrics, rx));

    let listener = tokio::net::TcpListener::bind(opts.metrics_addr).await?;
    let ops_addr = listener.local_addr()?;
    info!(addr = %ops_addr, "serving /metrics, /healthz, /readyz");
    let ops = axum::serve(listener, crate::http::ops_router(ctx.clone()));

    let api_listener = tokio::net::TcpListener::bind(opts.api_addr).await?;
    let api_addr = api_listener.local_addr()?;
    info!(addr = %api_addr, "serving the query API (/api/v1, /openapi.json)");
    let api = axum::serve(api_listener, crate::api::router(ctx.clone()));

    let task_ctx = ctx.clone();
    let task = tokio::spawn(async move {
        let backfill = tokio::spawn(crate::backfill::run(task_ctx.clone()));
        info!(datastorage = %opts.datastorage, namespace = ?opts.namespace, "starting controllers");
        let result = tokio::select! {
            _ = datastorage::run(ds_ctx, opts.datastorage) => Ok(()),
            _ = audit::run(task_ctx, opts.namespace) => Ok(()),
            r = ops => r.map_err(anyhow::Error::from),
            r = api => r.map_err(anyhow::Error::from),
        };
        backfill.abort();
        info!("stopped");
        result
    });
    Ok(Running {
        ops_addr,
        api_addr,
        context: ctx,
        task,
    })
}

/// Runs until a shutdown signal.
pub async fn run(client: Client, opts: Options) -> anyhow::Result<()> {
    let running = start(client, opts).await?;
    running.task.await?
}
