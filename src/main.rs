//! The `datastorage` binary.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use datastorage::crd;
use datastorage::store::{Store, StoreConfig};

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
        Command::Version => {
            println!("datastorage {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    }
}
