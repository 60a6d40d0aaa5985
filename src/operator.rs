//! `datastorage run`: wires the controllers, the backfill and the HTTP endpoints together.

use std::net::SocketAddr;
use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

use crate::controller::datastorage::DsContext;
use crate::controller::{audit, datastorage};
use crate::metrics::Metrics;
use crate::runtime::Context;

pub struct Options {
    /// Name of the cluster-scoped DataStorage to serve.
    pub datastorage: String,
    /// Watch RemediationAudits in this namespace only (`None`: all namespaces).
    pub namespace: Option<String>,
    pub metrics_addr: SocketAddr,
    /// Where the query API (`/api/v1/…`, `/openapi.json`) is served; every replica serves it.
    pub api_addr: SocketAddr,
    pub model_dir: Option<String>,
    /// Lease-based leader election; `None` makes this replica the only writer (single replica, tests).
    pub leader_election: Option<LeaderElection>,
    /// Signed chain-head checkpoints outside PostgreSQL (`None`: none are taken, `verify` uses the database alone).
    pub checkpoint: Option<crate::checkpoint::CheckpointConfig>,
}

/// Where the leader Lease lives and who this replica is.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// Seconds a holder keeps the lease without renewing it (a crashed leader is replaced after this).
    pub duration_seconds: u64,
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

/// Starts everything and returns once the endpoints listen. Every replica serves the query API, metrics and
/// health, and keeps the store runtime current; only the Lease holder runs the writers (the RemediationAudit
/// controller, the backfill, and the DataStorage controller's migrations, index rebuilds, retention and status).
/// Losing the Lease aborts the writers at once; an interrupted write is a rolled-back transaction, replayed
/// idempotently by the next leader.
pub async fn start(client: Client, opts: Options) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new()?);
    let embed_metrics = crate::embed::EmbedMetrics::register(&metrics.registry)?;
    // Without leader election this replica is always the leader: the sender is kept alive (moved into the task
    // below) so the channel never reports "closed".
    let mut always_leader = None;
    let (leader_rx, lease_task) = match &opts.leader_election {
        None => {
            let (tx, rx) = watch::channel(true);
            always_leader = Some(tx);
            (rx, None)
        }
        Some(le) => {
            let manager = LeaseManagerBuilder::new(client.clone(), le.lease_name.clone())
                .with_namespace(le.namespace.clone())
                .with_identity(le.identity.clone())
                .with_duration(le.duration_seconds.max(2))
                .with_grace((le.duration_seconds / 3).max(1))
                .with_field_manager(crate::controller::MANAGER)
                .build()
                .await?;
            let (rx, task) = manager.watch().await;
            (rx, Some(task))
        }
    };
    let (tx, rx) = watch::channel(None);
    let ds_ctx = Arc::new(DsContext::new(
        client.clone(),
        metrics.clone(),
        embed_metrics,
        opts.model_dir,
        tx,
        leader_rx.clone(),
    ));
    let ctx = Arc::new(Context::new(client, metrics, rx));
    ctx.set_datastorage_name(&opts.datastorage);
    if let Some(c) = opts.checkpoint {
        info!(configmap = %format!("{}/{}", c.namespace, c.config_map), key = %c.key.id(), "chain-head checkpoints on");
        ctx.set_checkpoint(c);
    }

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
        // When this task ends (shutdown or abort) every receiver of the leader channel is dropped, and the lease
        // manager releases the Lease and exits on its own, so another replica takes over at once.
        drop(lease_task);
        let _always_leader = always_leader;
        info!(datastorage = %opts.datastorage, namespace = ?opts.namespace, "starting");
        let result = tokio::select! {
            _ = datastorage::run(ds_ctx, opts.datastorage) => Ok(()),
            _ = write_while_leader(task_ctx, opts.namespace, leader_rx) => Ok(()),
            r = ops => r.map_err(anyhow::Error::from),
            r = api => r.map_err(anyhow::Error::from),
        };
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

/// Runs the writers while `leader` is true and stops them as soon as it turns false.
async fn write_while_leader(
    ctx: Arc<Context>,
    namespace: Option<String>,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        if leader.wait_for(|is| *is).await.is_err() {
            return;
        }
        info!("this replica is the leader: starting the writers");
        ctx.metrics.leader.set(1);
        let mut writers = JoinSet::new();
        writers.spawn(audit::run(ctx.clone(), namespace.clone()));
        writers.spawn(crate::backfill::run(ctx.clone()));
        if let Some(c) = ctx.checkpoint() {
            writers.spawn(crate::checkpoint::run(ctx.clone(), c.clone()));
        }
        tokio::select! {
            r = leader.wait_for(|is| !*is) => {
                if r.is_err() {
                    return;
                }
                warn!("lost the leader lease: stopping the writers");
            }
            _ = writers.join_next() => {
                // A writer ended on its own (shutdown signal): stop the rest.
                ctx.metrics.leader.set(0);
                return;
            }
        }
        writers.abort_all();
        ctx.metrics.leader.set(0);
    }
}

/// Runs until a shutdown signal.
pub async fn run(client: Client, opts: Options) -> anyhow::Result<()> {
    let running = start(client, opts).await?;
    running.task.await?
}
