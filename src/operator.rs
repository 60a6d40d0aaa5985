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
    /// What the query API port tolerates from its clients (`datastorage run`: [`crate::http::Limits::API`]).
    pub api_limits: crate::http::Limits,
    /// What the operations port tolerates (`datastorage run`: [`crate::http::Limits::OPS`]).
    pub ops_limits: crate::http::Limits,
    /// The mutating admission webhook (`None`: not served).
    pub admission: Option<Admission>,
    /// Serve the query API over TLS with this certificate (`None`: plain HTTP, e.g. behind a mesh or in tests).
    pub api_tls: Option<ServingTls>,
    /// The audiences a bearer token must be valid for at the query API (TokenReview `spec.audiences`; `datastorage
    /// run`: [`crate::api::auth::DEFAULT_AUDIENCE`]). Empty: whatever the API server accepts for itself.
    pub token_audiences: Vec<String>,
    /// How long a stopping replica keeps serving.
    pub shutdown: ShutdownTimes,
}

impl Options {
    /// The defaults of `datastorage run` for the DataStorage `datastorage`: every namespace, the ports of the
    /// chart (8081 operations, 8080 API, plain HTTP), no leader election, checkpoints or webhook, tokens for
    /// [`crate::api::auth::DEFAULT_AUDIENCE`].
    pub fn new(datastorage: impl Into<String>) -> Self {
        Self {
            datastorage: datastorage.into(),
            namespace: None,
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 8081)),
            api_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            model_dir: None,
            leader_election: None,
            checkpoint: None,
            api_limits: crate::http::Limits::API,
            ops_limits: crate::http::Limits::OPS,
            admission: None,
            api_tls: None,
            token_audiences: vec![crate::api::auth::DEFAULT_AUDIENCE.to_string()],
            shutdown: ShutdownTimes::DEFAULT,
        }
    }

    /// [`Options::new`] with both ports on 127.0.0.1, chosen by the kernel (tests, local runs).
    pub fn local(datastorage: impl Into<String>) -> Self {
        Self {
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::new(datastorage)
        }
    }
}

/// Where and with which certificate every replica serves the admission webhook (`POST /mutate`, TLS).
#[derive(Clone)]
pub struct Admission {
    pub addr: SocketAddr,
    pub tls: ServingTls,
}

pub use crate::tls::ServingTls;

/// How long a stopping replica keeps serving. On SIGTERM `/readyz` answers 503 at once and the controllers finish
/// their reconciles in progress and stop (the Lease is released once nothing holds the leader channel any more, at
/// the latest when the process ends); the HTTP ports go on accepting for `drain_delay` (the endpoints controller
/// and kube-proxy take the replica out of the Service in the meantime), then accept nothing more and wait up to
/// `drain_timeout` for the requests in progress. The chart's `terminationGracePeriodSeconds` (30) covers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownTimes {
    pub drain_delay: std::time::Duration,
    pub drain_timeout: std::time::Duration,
}

impl ShutdownTimes {
    pub const DEFAULT: ShutdownTimes = ShutdownTimes {
        drain_delay: std::time::Duration::from_secs(5),
        drain_timeout: std::time::Duration::from_secs(20),
    };
}

/// Sets the self-managed CA into the webhook configuration's `caBundle` (reads the Secret, creating it when no
/// replica has yet). Nothing to do for a mounted certificate: cert-manager's CA injector sets it.
async fn inject_ca_bundle(client: &Client, tls: &ServingTls) -> anyhow::Result<()> {
    let (
        ServingTls::SelfManaged {
            webhook_configuration,
            ..
        },
        Some(bundle),
    ) = (tls, tls.self_managed(client).await?)
    else {
        return Ok(());
    };
    crate::tls::certs::inject_ca_bundle(client, webhook_configuration, &bundle.ca_pem).await
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
    /// Where the admission webhook is served (when configured).
    pub admission_addr: Option<SocketAddr>,
    pub context: Arc<Context>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// What SIGTERM does: `/readyz` 503, the controllers stop after their reconciles in progress, the ports drain;
    /// `task` ends when all of it has.
    pub fn shutdown(&self) {
        self.context.shutdown.cancel();
    }
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

    // On shutdown the ports go on accepting for the drain delay, then drain.
    let shutdown = ctx.shutdown.clone();
    let drain = crate::http::Drain {
        draining: tokio_util::sync::CancellationToken::new(),
        timeout: opts.shutdown.drain_timeout,
    };
    {
        let (shutdown, draining, delay) = (
            shutdown.clone(),
            drain.draining.clone(),
            opts.shutdown.drain_delay,
        );
        tokio::spawn(async move {
            shutdown.cancelled().await;
            info!(
                ?delay,
                "shutting down: /readyz answers 503; the ports drain after the delay"
            );
            tokio::time::sleep(delay).await;
            draining.cancel();
        });
    }

    let listener = tokio::net::TcpListener::bind(opts.metrics_addr).await?;
    let ops_addr = listener.local_addr()?;
    info!(addr = %ops_addr, "serving /metrics, /healthz, /readyz");
    let ops = crate::http::serve(
        listener,
        crate::http::ops_router(ctx.clone()),
        opts.ops_limits,
        None,
        drain.clone(),
    );

    let api_listener = tokio::net::TcpListener::bind(opts.api_addr).await?;
    let api_addr = api_listener.local_addr()?;
    let api = {
        let (client, drain) = (ctx.client.clone(), drain.clone());
        let router = crate::api::router(ctx.clone(), opts.token_audiences.clone());
        let (tls, limits) = (opts.api_tls.clone(), opts.api_limits);
        async move {
            let config = match &tls {
                None => None,
                Some(tls) => tokio::select! {
                    c = crate::tls::server_config_when_ready(&client, tls, "query API") => Some(c),
                    () = drain.draining.cancelled() => return Ok(()),
                },
            };
            info!(addr = %api_addr, tls = config.is_some(), "serving the query API (/api/v1, /openapi.json)");
            crate::http::serve(api_listener, router, limits, config, drain).await
        }
    };

    // The webhook's port is bound now (so its address is known); its certificate may need the API server (the
    // self-managed Secret), which is retried in the background: the controllers never wait for the webhook, whose
    // absence the failurePolicy (Ignore) and the controller's in-place redaction cover.
    let mut admission_addr = None;
    let admission = match &opts.admission {
        None => None,
        Some(a) => {
            let listener = tokio::net::TcpListener::bind(a.addr).await?;
            admission_addr = Some(listener.local_addr()?);
            Some(serve_admission(
                ctx.clone(),
                a.tls.clone(),
                listener,
                drain.clone(),
            ))
        }
    };
    let admission = async move {
        match admission {
            Some(serving) => serving.await,
            None => Ok(()),
        }
    };

    let task_ctx = ctx.clone();
    let task = tokio::spawn(async move {
        // When this task ends (shutdown or abort) every receiver of the leader channel is dropped, and the lease
        // manager releases the Lease and exits on its own, so another replica takes over at once.
        drop(lease_task);
        let _always_leader = always_leader;
        info!(datastorage = %opts.datastorage, namespace = ?opts.namespace, "starting");
        let work = async {
            tokio::select! {
                () = datastorage::run(ds_ctx, opts.datastorage, shutdown.clone()) => {}
                () = write_while_leader(task_ctx, opts.namespace, leader_rx) => {}
            }
            // The controllers end on shutdown; should one end on its own, the process stops (and is restarted).
            shutdown.cancel();
        };
        let serving = async {
            let (ops, api, admission) = tokio::join!(ops, api, admission);
            ops.and(api).and(admission)
        };
        let ((), served) = tokio::join!(work, serving);
        info!("stopped");
        served.map_err(anyhow::Error::from)
    });
    Ok(Running {
        ops_addr,
        api_addr,
        admission_addr,
        context: ctx,
        task,
    })
}

/// Gets the webhook's certificate (retrying every 10 s), then serves it. With a self-managed certificate the CA bundle
/// is set again every minute: a `helm template | kubectl apply` (GitOps) of the webhook configuration has none.
async fn serve_admission(
    ctx: Arc<Context>,
    tls: ServingTls,
    listener: tokio::net::TcpListener,
    drain: crate::http::Drain,
) -> std::io::Result<()> {
    use crate::admission::server;
    let refresh = async {
        let ServingTls::SelfManaged { .. } = &tls else {
            return std::future::pending().await;
        };
        loop {
            // Not fatal: without the bundle the API server cannot call the webhook, and the failurePolicy (Ignore)
            // and the controller's in-place redaction take over. Reads the same Secret (never regenerates an
            // existing one) and patches only a missing or stale bundle.
            if let Err(e) = inject_ca_bundle(&ctx.client, &tls).await {
                warn!(error = %e, "admission webhook: cannot set the webhook's caBundle; retrying in 60s");
            }
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
    };
    let serving = async {
        let config = tokio::select! {
            c = crate::tls::server_config_when_ready(&ctx.client, &tls, "admission webhook") => c,
            () = drain.draining.cancelled() => return Ok(()),
        };
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving the admission webhook (POST /mutate, TLS)");
        }
        crate::http::serve(
            listener,
            server::router(ctx.clone()),
            server::LIMITS,
            Some(config),
            drain.clone(),
        )
        .await
    };
    tokio::select! {
        served = serving => served,
        () = refresh => Ok(()),
    }
}

/// Runs the writers while `leader` is true and stops them as soon as it turns false.
async fn write_while_leader(
    ctx: Arc<Context>,
    namespace: Option<String>,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            became = leader.wait_for(|is| *is) => if became.is_err() {
                return;
            },
            () = ctx.shutdown.cancelled() => return,
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

/// Runs until SIGTERM or SIGINT, then shuts down gracefully ([`ShutdownTimes`]).
pub async fn run(client: Client, opts: Options) -> anyhow::Result<()> {
    let running = start(client, opts).await?;
    let shutdown = running.context.shutdown.clone();
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        info!(%signal, "shutting down");
        shutdown.cancel();
    });
    running.task.await?
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops gracefully");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
