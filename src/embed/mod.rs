//! Embedding providers for remediation audits.
//!
//! * [`LocalEmbedder`] — all-MiniLM-L6-v2 (384 dims) run in-process on the CPU by ONNX Runtime
//!   (default; fp32 or int8) or candle, on a dedicated worker thread that coalesces concurrent
//!   requests into batches.
//! * [`HashEmbedder`] — deterministic *lexical* feature hashing; not semantic, dependency-free.
//! * [`OpenAiEmbedder`] — any OpenAI-compatible `POST {endpoint}/v1/embeddings` service.
//! * [`CachedEmbedder`] — in-memory (moka) + optional shared Redis cache in front of any of them.
//!
//! Every provider returns unit-length (L2-normalised) vectors, so cosine similarity equals the
//! dot product and pgvector's `<=>` (cosine distance) and `<#>` (negative inner product) agree.
//!
//! The text embedded for an audit is built by [`embedding_text`] from semantic fields only.

mod cache;
mod candle;
mod cli;
mod config;
mod hash;
mod local;
mod metrics;
mod onnx;
mod openai;

pub use crate::audit::embedding_text::{EmbeddingInput, embedding_text, target_kind};
pub use cache::{CacheOptions, CachedEmbedder, REDIS_KEY_PREFIX, cache_key};
pub use cli::{EmbedArgs, run_cli};
pub use config::{IMAGE_MODEL_DIR, build};
pub use hash::HashEmbedder;
pub use local::{
    LocalEmbedder, LocalOptions, LocalPrecision, LocalRuntime, MAX_DEFAULT_THREADS,
    bert_flops_per_token, local_model_id,
};
pub use metrics::EmbedMetrics;
pub use onnx::{ONNXRUNTIME_LIBRARY, runtime_library};
pub use openai::{MAX_IN_FLIGHT as OPENAI_MAX_IN_FLIGHT, OpenAiEmbedder, OpenAiOptions};

/// Errors from any embedding provider.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    /// The model (or tokenizer/config) could not be loaded.
    #[error("failed to load embedding model: {0}")]
    Load(String),
    /// Running the model failed.
    #[error("embedding inference failed: {0}")]
    Inference(String),
    /// The remote embedding service failed or answered something unusable.
    #[error("embedding service error: {0}")]
    Http(String),
    /// The remote embedding service did not answer in time (after retries).
    #[error("embedding request timed out")]
    Timeout,
    /// Invalid configuration.
    #[error("invalid embedding configuration: {0}")]
    Config(String),
}

/// A text-embedding provider. Object safe: store it as `Arc<dyn Embedder>`.
#[async_trait::async_trait]
pub trait Embedder: Send + Sync {
    /// Stable id of model+dims, e.g. "local:all-MiniLM-L6-v2:384" or "hash:v1:384" or
    /// "openai:<model>:<dims>"; stored next to each vector; a change triggers re-embedding.
    fn model_id(&self) -> &str;
    /// Length of every vector returned by [`Embedder::embed`].
    fn dimensions(&self) -> usize;
    /// Whether vectors are semantic (false for Hash).
    fn semantic(&self) -> bool;
    /// One unit-length vector per input text, same order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Scales `v` to unit L2 norm in place (leaves an all-zero vector untouched).
pub(crate) fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        for x in v.iter_mut() {
            *x /= norm;
        }
    }
}

/// Dot product; equals cosine similarity for the unit vectors every provider returns.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;

    /// The model directory for tests. Fails loudly (never skips) when it is not configured.
    pub fn model_dir() -> PathBuf {
        match std::env::var_os("DATASTORAGE_MODEL_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => panic!(
                "DATASTORAGE_MODEL_DIR is not set: the embedding tests need the all-MiniLM-L6-v2 \
                 model files. Run `make setup`, then \
                 `export DATASTORAGE_MODEL_DIR=$(hack/python-deps.sh model-dir)`"
            ),
        }
    }

    pub fn norm(v: &[f32]) -> f32 {
        v.iter().map(|x| x * x).sum::<f32>().sqrt()
    }

    pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    pub fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|s| s.to_string()).collect()
    }
}
