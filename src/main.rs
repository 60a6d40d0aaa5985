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
    version,
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
    Run(RunArgs),
    /// Validate and sanitize RemediationAudit YAML/JSON documents without a cluster or database. Prints one JSON
    /// report per document; exit code 0 when all are valid, 1 when any is invalid, 2 when the input is unreadable.
    Check {
        /// File to check (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Embed texts with the operator's embedding code (the Local provider: all-MiniLM-L6-v2 by ONNX Runtime or
    /// candle). Prints one JSON array of floats per text, one per line, in order; without TEXT, embeds each line of
    /// standard input.
    Embed(Box<datastorage::embed::EmbedArgs>),
    /// Query the stored audits through the query API (same as the `kubectl audit` plugin).
    Query {
        #[command(flatten)]
        conn: Box<datastorage::api::client::Connection>,
        #[command(subcommand)]
        command: datastorage::api::client::QueryCommand,
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
        Command::Embed(args) => Ok(datastorage::embed::run_cli(&args).await),
        Command::Query { conn, command } => {
            Ok(datastorage::api::client::run(&conn, &command).await)
        }
        Command::Version => {
            println!("datastorage {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
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
