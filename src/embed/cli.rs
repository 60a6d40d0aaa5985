//! `datastorage embed TEXT…`: the operator's Local provider from the command line, for scripts and for checking
//! vectors against a reference (tests/it/embeddings.rs compares them with sentence-transformers').

use std::io::{BufRead, Write};
use std::process::ExitCode;

use super::{EmbedMetrics, IMAGE_MODEL_DIR, build};
use crate::crd::{EmbeddingProvider, EmbeddingSpec, LocalPrecision, LocalRuntime};

/// Arguments of `datastorage embed`.
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Texts to embed; none: every line of standard input.
    pub texts: Vec<String>,
    /// Model directory (as the DataStorage's `embedding.modelPath`).
    #[arg(long, env = "DATASTORAGE_MODEL_DIR", default_value = IMAGE_MODEL_DIR)]
    pub model_dir: String,
    /// `embedding.local.runtime`.
    #[arg(long, default_value = "onnx", value_parser = ["onnx", "candle"])]
    pub runtime: String,
    /// `embedding.local.precision`.
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "int8"])]
    pub precision: String,
    /// `embedding.local.threads` (default: the available cores, at most 4).
    #[arg(long)]
    pub threads: Option<i32>,
    /// `embedding.batchSize`.
    #[arg(long, default_value_t = 32)]
    pub batch_size: i32,
    /// Print the model id (what the store records next to each vector) on standard error first.
    #[arg(long)]
    pub print_model_id: bool,
}

impl EmbedArgs {
    /// The DataStorage `embedding` settings these flags stand for.
    pub fn spec(&self) -> EmbeddingSpec {
        let mut spec = EmbeddingSpec {
            provider: EmbeddingProvider::Local,
            model_path: Some(self.model_dir.clone()),
            batch_size: self.batch_size,
            ..EmbeddingSpec::default()
        };
        spec.local.runtime = if self.runtime == "candle" {
            LocalRuntime::Candle
        } else {
            LocalRuntime::Onnx
        };
        spec.local.precision = if self.precision == "int8" {
            LocalPrecision::Int8
        } else {
            LocalPrecision::Fp32
        };
        spec.local.threads = self.threads;
        spec
    }
}

/// Runs `datastorage embed`: exit 0 when every text got its vector, 1 when the model cannot load or run, 2 when
/// standard input is unreadable.
pub async fn run_cli(args: &EmbedArgs) -> ExitCode {
    let texts = if args.texts.is_empty() {
        match std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(lines) => lines,
            Err(e) => {
                eprintln!("error: cannot read standard input: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        args.texts.clone()
    };
    let metrics = match EmbedMetrics::unregistered() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let embedder = match build(&args.spec(), 384, None, None, None, metrics).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if args.print_model_id {
        eprintln!("{}", embedder.model_id());
    }
    let mut out = std::io::stdout().lock();
    for chunk in texts.chunks(usize::try_from(args.batch_size.clamp(1, 256)).unwrap_or(32)) {
        match embedder.embed(chunk).await {
            Ok(vectors) => {
                for v in vectors {
                    let line = serde_json::to_string(&v).unwrap_or_default();
                    if writeln!(out, "{line}").is_err() {
                        return ExitCode::from(1);
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
