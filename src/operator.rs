//! `datastorage run`: wires the controllers, the backfill and the HTTP endpoints together.

use std::net::SocketAddr;
use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

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
}

/// Where and with which certificate every replica serves the admission webhook (`POST /mutate`, TLS).
#[derive(Clone)]
pub struct Admission {
    pub addr: SocketAddr,
    pub tls: AdmissionTls,
}

/// The webhook's serving certificate.
#[derive(Clone)]
pub enum AdmissionTls {
    /// PEM files, read at start-up (cert-manager's Secret, mounted).
    Files {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
    /// Managed by the operator: CA and certificate in Secret `namespace/secret` (created by the first replica), for
    /// Service `service`; the CA goes into the `caBundle` of MutatingWebhookConfiguration `webhook_configuration`.
    SelfManaged {
        namespace: String,
        secret: String,
        service: String,
        webhook_configuration: String,
    },
    /// Given in memory (tests).
    Pem(crate::admission::server::TlsPem),
}

/// The webhook's certificate and key, per its [`AdmissionTls`]; with `SelfManaged`, also sets the CA bundle.
async fn admission_tls(
    client: &Client,
    tls: &AdmissionTls,
) -> anyhow::Result<crate::admission::server::TlsPem> {
    use crate::admission::{certs, server::TlsPem};
    Ok(match tls {
        AdmissionTls::Pem(p) => p.clone(),
        AdmissionTls::Files { cert, key } => TlsPem {
            cert_chain: std::fs::read_to_string(cert)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?,
            key: std::fs::read_to_string(key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?,
        },
        AdmissionTls::SelfManaged {
            namespace,
            secret,
            service,
            webhook_configuration,
        } => {
            let bundle = certs::ensure_secret(
                client,
                namespace,
                secret,
                &certs::service_dns_names(service, namespace),
            )
            .await?;
            // Not fatal: without the bundle the API server cannot call the webhook, and the failurePolicy (Ignore)
            // and the controller's in-place redaction take over; the next start tries again.
            if let Err(e) =
                certs::inject_ca_bundle(client, webhook_configuration, &bundle.ca_pem).await
            {
                warn!(error = %e, configuration = %webhook_configuration, "cannot set the webhook's caBundle");
            }
            bundle.serving
        }
    })
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
    let ops = crate::http::serve(
        listener,
        crate::http::ops_router(ctx.clone()),
        opts.ops_limits,
    );

    let api_listener = tokio::net::TcpListener::bind(opts.api_addr).await?;
    let api_addr = api_listener.local_addr()?;
    info!(addr = %api_addr, "serving the query API (/api/v1, /openapi.json)");
    let api = crate::http::serve(
        api_listener,
        crate::api::router(ctx.clone()),
        opts.api_limits,
    );

    // The webhook's port is bound now (so its address is known); its certificate may need the API server (the
    // self-managed Secret), which is retried in the background: the controllers never wait for the webhook, whose
    // absence the failurePolicy (Ignore) and the controller's in-place redaction cover.
    let mut admission_addr = None;
    let admission = match &opts.admission {
        None => None,
        Some(a) => {
            let listener = crate::admission::server::bind(a.addr).await?;
            admission_addr = Some(listener.local_addr()?);
            Some(serve_admission(ctx.clone(), a.tls.clone(), listener))
        }
    };
    let admission = async move {
        match admission {
            Some(serving) => serving.await,
            None => std::future::pending().await,
        }
    };

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
            () = admission => Ok(()),
        };
        info!("stopped");
        result
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
async fn serve_admission(ctx: Arc<Context>, tls: AdmissionTls, listener: tokio::net::TcpListener) {
    use crate::admission::server;
    let config = loop {
        match admission_tls(&ctx.client, &tls)
            .await
            .and_then(|pem| server::tls_config(&pem))
        {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %e, "admission webhook: no certificate yet; retrying in 10s");
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
        }
    };
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving the admission webhook (POST /mutate, TLS)");
    }
    let serving = server::serve(listener, config, server::router(ctx.clone()));
    let refresh = async {
        let AdmissionTls::SelfManaged { .. } = &tls else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            // Reads the same Secret (never regenerates an existing one) and patches only a missing or stale bundle.
            if let Err(e) = admission_tls(&ctx.client, &tls).await {
                debug!(error = %e, "admission webhook: caBundle refresh");
            }
        }
    };
    tokio::join!(serving, refresh);
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
