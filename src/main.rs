//! The `datastorage` binary.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use datastorage::crd;
use datastorage::store::{Store, StoreConfig};

/// mimalloc: ~25 % more batched embedding throughput than glibc malloc on candle's allocation pattern.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "datastorage",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DATASTORAGE_GIT_COMMIT"), ")"),
    about = "Remediation audits from Kubernetes into PostgreSQL + pgvector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the YAML of every CRD (or write one file per CRD with --out-dir).
    Crd {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Apply the database schema (idempotent).
    Migrate {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long, default_value = "datastorage")]
        schema: String,
    },
    /// Print the version.
    Version,
    /// Run the operator: the DataStorage and RemediationAudit controllers, the embedding backfill, and the
    /// operations endpoints (/metrics, /healthz, /readyz).
    Run(Box<RunArgs>),
    /// Validate and sanitize RemediationAudit YAML/JSON documents without a cluster or database. Prints one JSON
    /// report per document; exit code 0 when all are valid, 1 when any is invalid, 2 when the input is unreadable.
    Check {
        /// File to check (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Before `helm uninstall` (the chart's pre-delete hook): scale the operator's Deployment to zero, wait until its
    /// pods are gone, then remove the operator's finalizer from every RemediationAudit, so that no audit (and no
    /// namespace holding one) is left waiting for an operator that is no longer there. The audits and their stored
    /// rows stay; deletions made afterwards are not recorded as `deleted_at`.
    ReleaseFinalizers {
        /// The operator's Deployment.
        #[arg(long)]
        deployment: String,
        /// Namespace of the Deployment (in a pod: its own namespace).
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: String,
        /// Seconds to wait for the operator's pods to be gone.
        #[arg(long, default_value_t = 120)]
        timeout_seconds: u64,
    },
    /// Before `helm upgrade` (the chart's pre-upgrade hook): server-side apply every CRD in DIR (the chart's
    /// `crds/`, mounted from a ConfigMap), so that a chart's new CRD schema reaches the cluster: Helm installs
    /// `crds/` on the first install but never updates them. A CRD that does not exist is an error (the hook may
    /// patch the release's two CRDs, not create any: install them with `helm install` or `kubectl apply`).
    ApplyCrds {
        /// Directory of CRD YAML files (`*.yaml`, one CRD each).
        #[arg(long)]
        dir: PathBuf,
    },
    /// The chart's `helm test`: checks a running release through its Service: `/readyz` answers 200 (else prints
    /// why not), `/metrics` exports `datastorage_build_info`, and the query API answers and enforces
    /// authentication (401 without a token); over https, with a certificate of the release's CA for the Service's
    /// name, and not at all over plain HTTP.
    SmokeTest {
        /// Base URL of the operations endpoints, e.g. http://datastorage-operator.ns:8081
        #[arg(long)]
        metrics_url: String,
        /// Base URL of the query API, e.g. https://10.0.0.12:8080
        #[arg(long)]
        api_url: String,
        /// PEM of the CA the API's certificate must be signed by (https).
        #[arg(long, requires = "api_server_name")]
        api_ca_file: Option<PathBuf>,
        /// The name the API's certificate must be valid for (https), e.g. datastorage-operator.ns.svc; the
        /// connection goes to --api-url's host.
        #[arg(long, requires = "api_ca_file")]
        api_server_name: Option<String>,
        /// Seconds to wait for `/readyz` to answer 200.
        #[arg(long, default_value_t = 60)]
        timeout_seconds: u64,
    },
    /// Embed texts with the operator's embedding code (the Local provider: all-MiniLM-L6-v2 by ONNX Runtime or
    /// candle). Prints one JSON array of floats per text, one per line, in order; without TEXT, embeds each line of
    /// standard input.
    Embed(Box<datastorage::embed::EmbedArgs>),
    /// Query the stored audits through the query API (same as the `kubectl audit` plugin).
    Query {
        #[command(flatten)]
        conn: Box<datastorage::client::Connection>,
        #[command(subcommand)]
        command: datastorage::client::QueryCommand,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Name of the cluster-scoped DataStorage resource to serve.
    #[arg(long, env = "DATASTORAGE_NAME", default_value = "default")]
    datastorage: String,
    /// Watch RemediationAudits in this namespace only (default: all namespaces).
    #[arg(long, env = "DATASTORAGE_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the operations endpoints.
    #[arg(long, env = "DATASTORAGE_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    metrics_addr: std::net::SocketAddr,
    /// Address of the query API (served by every replica).
    #[arg(long, env = "DATASTORAGE_API_ADDR", default_value = "0.0.0.0:8080")]
    api_addr: std::net::SocketAddr,
    /// Directory of the embedding model used when the DataStorage names none.
    #[arg(long, env = "DATASTORAGE_MODEL_DIR")]
    model_dir: Option<String>,
    /// Log format.
    #[arg(long, env = "DATASTORAGE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Elect a leader among replicas with a Lease; only the leader writes (all replicas serve queries).
    #[arg(long, env = "DATASTORAGE_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "DATASTORAGE_LEASE_NAME",
        default_value = "datastorage-operator-leader"
    )]
    lease_name: String,
    /// Namespace of the leader Lease (in a pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease (in a pod: its name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds before a silent leader is replaced.
    #[arg(long, env = "DATASTORAGE_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Key (at least 16 bytes) that signs the chain-head checkpoints; without it none are taken (in a pod: from the
    /// chart's checkpoint Secret).
    #[arg(long, env = "DATASTORAGE_CHECKPOINT_KEY", hide_env_values = true)]
    checkpoint_key: Option<String>,
    /// ConfigMap (in the lease namespace: the operator's own) that keeps the latest signed checkpoints.
    #[arg(
        long,
        env = "DATASTORAGE_CHECKPOINT_CONFIGMAP",
        default_value = "datastorage-checkpoints"
    )]
    checkpoint_configmap: String,
    /// Seconds between two checkpoints.
    #[arg(long, env = "DATASTORAGE_CHECKPOINT_SECONDS", default_value_t = 300)]
    checkpoint_seconds: u64,
    /// Serve the mutating admission webhook (POST /mutate, TLS) on this address (default: not served).
    #[arg(long, env = "DATASTORAGE_ADMISSION_ADDR")]
    admission_addr: Option<std::net::SocketAddr>,
    /// Serve the query API over HTTPS (the Service's serving certificate, shared with the webhook).
    #[arg(long, env = "DATASTORAGE_API_TLS")]
    api_tls: bool,
    /// Audiences a bearer token must be valid for at the query API, comma-separated (TokenReview
    /// `spec.audiences`); "" accepts whatever the API server accepts for itself (its own audience: such a token
    /// can be replayed against the API server).
    #[arg(
        long,
        env = "DATASTORAGE_API_TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = datastorage::api::auth::DEFAULT_AUDIENCE
    )]
    api_token_audiences: Vec<String>,
    /// Seconds a stopping replica goes on accepting requests after SIGTERM (while /readyz answers 503 and the
    /// Service stops routing to it).
    #[arg(long, env = "DATASTORAGE_SHUTDOWN_DELAY_SECONDS", default_value_t = 5)]
    shutdown_delay_seconds: u64,
    /// Seconds a stopping replica then waits for the requests in progress.
    #[arg(
        long,
        env = "DATASTORAGE_SHUTDOWN_TIMEOUT_SECONDS",
        default_value_t = 20
    )]
    shutdown_timeout_seconds: u64,
    /// The serving certificate of the query API and the webhook (PEM, e.g. cert-manager's tls.crt); with
    /// --tls-key-file. Without them the operator manages its own CA and certificate (--tls-secret).
    #[arg(long, env = "DATASTORAGE_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "DATASTORAGE_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Secret (in the lease namespace: the operator's own) holding the self-managed CA and serving certificate.
    #[arg(
        long,
        env = "DATASTORAGE_TLS_SECRET",
        default_value = "datastorage-operator-tls"
    )]
    tls_secret: String,
    /// The Service the API server and clients reach the operator through (its DNS names go into the self-managed
    /// certificate).
    #[arg(
        long,
        env = "DATASTORAGE_TLS_SERVICE",
        default_value = "datastorage-operator"
    )]
    tls_service: String,
    /// The MutatingWebhookConfiguration whose caBundle the operator sets (self-managed certificate).
    #[arg(
        long,
        env = "DATASTORAGE_ADMISSION_WEBHOOK_CONFIGURATION",
        default_value = "datastorage-operator"
    )]
    admission_webhook_configuration: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd { out_dir } => {
            match out_dir {
                None => print!("{}", crd::crds_yaml()?),
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    for (file, doc) in crd::crd_documents()? {
                        std::fs::write(dir.join(file), doc)?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate {
            database_url,
            schema,
        } => {
            let store = Store::connect_lazy(&StoreConfig::new(&database_url, &schema)?)?;
            let version = store.migrate().await?;
            println!("schema {schema} at migration version {version}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            init_tracing(&args.log_format);
            let client = kube::Client::try_default().await?;
            let serving_tls = match (&args.tls_cert_file, &args.tls_key_file) {
                (Some(cert), Some(key)) => datastorage::tls::ServingTls::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ => datastorage::tls::ServingTls::SelfManaged {
                    namespace: args.lease_namespace.clone(),
                    secret: args.tls_secret.clone(),
                    service: args.tls_service.clone(),
                    webhook_configuration: args.admission_webhook_configuration.clone(),
                },
            };
            datastorage::operator::run(
                client,
                datastorage::operator::Options {
                    datastorage: args.datastorage,
                    namespace: args.namespace,
                    metrics_addr: args.metrics_addr,
                    api_addr: args.api_addr,
                    model_dir: args.model_dir,
                    leader_election: args.leader_elect.then(|| {
                        datastorage::operator::LeaderElection {
                            namespace: args.lease_namespace.clone(),
                            lease_name: args.lease_name.clone(),
                            identity: args
                                .identity
                                .clone()
                                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                            duration_seconds: args.lease_seconds,
                        }
                    }),
                    checkpoint: match &args.checkpoint_key {
                        None => None,
                        Some(key) => Some(datastorage::checkpoint::CheckpointConfig {
                            namespace: args.lease_namespace.clone(),
                            config_map: args.checkpoint_configmap.clone(),
                            key: datastorage::store::checkpoint::CheckpointKey::new(key.as_bytes())
                                .map_err(anyhow::Error::msg)?,
                            interval: std::time::Duration::from_secs(
                                args.checkpoint_seconds.max(1),
                            ),
                        }),
                    },
                    api_limits: datastorage::http::Limits::API,
                    ops_limits: datastorage::http::Limits::OPS,
                    admission: args
                        .admission_addr
                        .map(|addr| datastorage::operator::Admission {
                            addr,
                            tls: serving_tls.clone(),
                        }),
                    api_tls: args.api_tls.then(|| serving_tls.clone()),
                    token_audiences: args.api_token_audiences.clone(),
                    shutdown: datastorage::operator::ShutdownTimes {
                        drain_delay: std::time::Duration::from_secs(args.shutdown_delay_seconds),
                        drain_timeout: std::time::Duration::from_secs(
                            args.shutdown_timeout_seconds,
                        ),
                    },
                },
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file } => {
            let input = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            };
            let input = match input {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("error: cannot read {}: {e}", file.display());
                    return Ok(ExitCode::from(2));
                }
            };
            match datastorage::check::check_documents(&input, chrono::Utc::now()) {
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    Ok(ExitCode::from(2))
                }
                Ok(reports) => {
                    for r in &reports {
                        println!("{}", serde_json::to_string(r)?);
                    }
                    Ok(if reports.iter().all(|r| r.valid) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
            }
        }
        Command::ReleaseFinalizers {
            deployment,
            namespace,
            timeout_seconds,
        } => {
            let client = kube::Client::try_default().await?;
            let released = release_finalizers(
                client,
                &namespace,
                &deployment,
                std::time::Duration::from_secs(timeout_seconds),
            )
            .await?;
            println!("finalizer {FINALIZER} removed from {released} RemediationAudit(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::ApplyCrds { dir } => {
            let client = kube::Client::try_default().await?;
            for line in apply_crds(client, &dir).await? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::SmokeTest {
            metrics_url,
            api_url,
            api_ca_file,
            api_server_name,
            timeout_seconds,
        } => {
            let tls = match (api_ca_file, api_server_name) {
                (Some(ca), Some(name)) => Some((
                    std::fs::read(&ca)
                        .map_err(|e| anyhow::anyhow!("--api-ca-file {}: {e}", ca.display()))?,
                    name,
                )),
                _ => None,
            };
            let over = smoke_test(
                &metrics_url,
                &api_url,
                tls,
                std::time::Duration::from_secs(timeout_seconds),
            )
            .await?;
            println!(
                "smoke test passed: {metrics_url}/readyz 200, build info exported, {api_url} requires a token{over}"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed(args) => Ok(datastorage::embed::run_cli(&args).await),
        Command::Query { conn, command } => Ok(datastorage::client::run(&conn, &command).await),
        Command::Version => {
            println!(
                "datastorage {} ({})",
                datastorage::metrics::VERSION,
                datastorage::metrics::GIT_COMMIT
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

use datastorage::controller::audit::FINALIZER;

/// See `Command::ReleaseFinalizers`. Returns how many audits lost the finalizer.
async fn release_finalizers(
    client: kube::Client,
    namespace: &str,
    deployment: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<usize> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, Patch, PatchParams};

    // 1. No operator replica may re-add the finalizer while we remove it.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let selector = deployments
        .get(deployment)
        .await?
        .spec
        .selector
        .match_labels
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    anyhow::ensure!(
        !selector.is_empty(),
        "deployment {namespace}/{deployment} has no matchLabels selector"
    );
    deployments
        .patch_scale(
            deployment,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let start = std::time::Instant::now();
    loop {
        let left = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .len();
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "{left} operator pod(s) still present after {timeout:?}"
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }

    // 2. Every audit carrying our finalizer, conditional on its resourceVersion (a conflict re-reads it).
    let audits: Api<crd::RemediationAudit> = Api::all(client.clone());
    let mut released = 0;
    for ra in audits.list(&ListParams::default()).await?.items {
        let (Some(ns), Some(name)) = (ra.metadata.namespace.clone(), ra.metadata.name.clone())
        else {
            continue;
        };
        let api: Api<crd::RemediationAudit> = Api::namespaced(client.clone(), &ns);
        let mut current = ra;
        for attempt in 0..5 {
            let finalizers = current.metadata.finalizers.clone().unwrap_or_default();
            if !finalizers.iter().any(|f| f == FINALIZER) {
                break;
            }
            let keep: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            let patch = serde_json::json!({"metadata": {
                "finalizers": keep, "resourceVersion": current.metadata.resource_version}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    released += 1;
                    break;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => break,
                Err(kube::Error::Api(e)) if e.code == 409 && attempt < 4 => {
                    current = api.get(&name).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(released)
}

/// See `Command::ApplyCrds`. Returns one line per CRD applied.
async fn apply_crds(client: kube::Client, dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context as _;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};

    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no *.yaml in {}", dir.display());
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut done = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
            .with_context(|| format!("{} is not a CustomResourceDefinition", file.display()))?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        let context = || {
            format!(
                "cannot apply CustomResourceDefinition {name} (is it installed? `helm install` installs the \
                 chart's crds/; with --skip-crds, apply them yourself and set crds.upgrade=false)"
            )
        };
        // Force: the fields Helm's install wrote (manager "helm") change owner; nobody else is meant to own them.
        let params = PatchParams::apply("datastorage-crd-upgrade").force();
        // A dry run first: when the schema is the same (the generation would not move), nothing is written. A
        // write that changes only managedFields still makes the apiserver rebuild the CRD's handler, and requests
        // for its resources fail for a moment: not on every helm upgrade for nothing.
        let live = api.get(&name).await.with_context(context)?;
        let dry = api
            .patch(&name, &params.clone().dry_run(), &Patch::Apply(&crd))
            .await
            .with_context(context)?;
        if dry.metadata.generation == live.metadata.generation
            && dry.metadata.labels == live.metadata.labels
            && dry.metadata.annotations == live.metadata.annotations
        {
            done.push(format!(
                "customresourcedefinition {name} unchanged (generation {})",
                live.metadata.generation.unwrap_or_default()
            ));
            continue;
        }
        let applied = api
            .patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(context)?;
        let served: Vec<String> = applied
            .spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.clone())
            .collect();
        done.push(format!(
            "customresourcedefinition {name} applied (served {}, generation {})",
            served.join(","),
            applied.metadata.generation.unwrap_or_default()
        ));
    }
    Ok(done)
}

/// See `Command::SmokeTest`.
async fn smoke_test(
    metrics_url: &str,
    api_url: &str,
    tls: Option<(Vec<u8>, String)>,
    timeout: std::time::Duration,
) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let start = std::time::Instant::now();
    loop {
        let (status, body) = match http.get(format!("{metrics_url}/readyz")).send().await {
            Ok(r) => (Some(r.status()), r.text().await.unwrap_or_default()),
            Err(e) => (None, e.to_string()),
        };
        if status == Some(reqwest::StatusCode::OK) {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "{metrics_url}/readyz not ready after {timeout:?}: {} {}",
            status.map_or_else(|| "no answer".into(), |s| s.to_string()),
            body.trim()
        );
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    let metrics = http
        .get(format!("{metrics_url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    anyhow::ensure!(
        metrics.contains("datastorage_build_info{"),
        "{metrics_url}/metrics does not export datastorage_build_info"
    );
    let Some((ca_pem, server_name)) = tls else {
        let api = http.get(format!("{api_url}/api/v1/audits")).send().await?;
        anyhow::ensure!(
            api.status() == reqwest::StatusCode::UNAUTHORIZED,
            "{api_url}/api/v1/audits without a token answered {} (expected 401)",
            api.status()
        );
        return Ok(String::new());
    };
    // The connection goes to the URL's address, the certificate is checked for the Service's name.
    let url = reqwest::Url::parse(api_url)?;
    anyhow::ensure!(
        url.scheme() == "https",
        "--api-ca-file needs an https --api-url"
    );
    let addr = url
        .socket_addrs(|| Some(443))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("{api_url}: no address"))?;
    let mut verified = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .tls_built_in_root_certs(false)
        .resolve(&server_name, addr);
    for cert in reqwest::Certificate::from_pem_bundle(&ca_pem)? {
        verified = verified.add_root_certificate(cert);
    }
    let named = format!("https://{server_name}:{}/api/v1/audits", addr.port());
    let api = verified.build()?.get(&named).send().await?;
    anyhow::ensure!(
        api.status() == reqwest::StatusCode::UNAUTHORIZED,
        "{named} without a token answered {} (expected 401)",
        api.status()
    );
    let plain = format!("http://{addr}/api/v1/audits");
    if let Ok(answer) = http.get(&plain).send().await {
        anyhow::bail!(
            "{plain} answered {} over plain HTTP (expected no HTTP answer)",
            answer.status()
        );
    }
    Ok(format!(
        ", over TLS with the release's CA for {server_name} (plain HTTP: no answer)"
    ))
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
