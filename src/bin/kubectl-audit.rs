//! `kubectl audit list|get|search|verify`: the kubectl plugin for the datastorage query API (install this binary
//! on PATH as `kubectl-audit`). See `datastorage::client` for how it reaches the API.
use std::process::ExitCode;

use clap::Parser;
use datastorage::client::{self, Connection, QueryCommand};

#[derive(Parser)]
#[command(
    name = "kubectl audit",
    bin_name = "kubectl audit",
    version,
    about = "Query stored remediation audits (datastorage)",
    after_help = "By default the API is reached through the kube-apiserver's service proxy \
                  (--service-namespace/--service-name/--service-port); use --server for direct access."
)]
struct Cli {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: QueryCommand,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    client::run(&cli.conn, &cli.command).await
}
