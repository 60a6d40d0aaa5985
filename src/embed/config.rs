//! Building the configured embedder from a DataStorage's `embedding` settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{
    CacheOptions, CachedEmbedder, EmbedError, EmbedMetrics, Embedder, HashEmbedder, LocalEmbedder,
    LocalOptions, OpenAiEmbedder, OpenAiOptions,
};
use crate::crd::{EmbeddingProvider, EmbeddingSpec, parse_duration};

/// Where the model is looked for when neither the spec nor `--model-dir` names one (the container image bakes it
/// in here).
pub const IMAGE_MODEL_DIR: &str = "/opt/datastorage/model";

/// Builds the provider for `spec`, wrapped in the content-addressed cache. `Ok(None)` when disabled.
pub async fn build(
    spec: &EmbeddingSpec,
    dimensions: i32,
    api_key: Option<String>,
    redis_url: Option<String>,
    default_model_dir: Option<&str>,
    metrics: EmbedMetrics,
) -> Result<Arc<dyn Embedder>, EmbedError> {
    let dims = usize::try_from(dimensions)
        .map_err(|_| EmbedError::Config(format!("invalid dimensions {dimensions}")))?;
    let batch = usize::try_from(spec.batch_size.clamp(1, 256)).unwrap_or(32);
    let inner: Arc<dyn Embedder> = match spec.provider {
        EmbeddingProvider::Disabled => {
            return Err(EmbedError::Config("embeddings are disabled".into()));
        }
        EmbeddingProvider::Hash => Arc::new(HashEmbedder::new(dims)),
        EmbeddingProvider::Local => {
            let dir = PathBuf::from(
                spec.model_path
                    .clone()
                    .or_else(|| default_model_dir.map(str::to_string))
                    .unwrap_or_else(|| IMAGE_MODEL_DIR.to_string()),
            );
            let threads = match spec.local.threads {
                None => threads_from_cpu_limit(),
                Some(t @ 1..=64) => usize::try_from(t).ok(),
                Some(t) => {
                    return Err(EmbedError::Config(format!(
                        "embedding.local.threads must be between 1 and 64, got {t}"
                    )));
                }
            };
            let opts = LocalOptions {
                runtime: spec.local.runtime,
                precision: spec.local.precision,
                max_batch: batch,
                threads,
                ..LocalOptions::default()
            };
            let local = tokio::task::spawn_blocking(move || LocalEmbedder::load(&dir, opts))
                .await
                .map_err(|e| EmbedError::Load(e.to_string()))??;
            if local.dimensions() != dims {
                return Err(EmbedError::Config(format!(
                    "the local model produces {} dimensions but vectorIndex.dimensions is {dims}",
                    local.dimensions()
                )));
            }
            Arc::new(local)
        }
        EmbeddingProvider::OpenAI => {
            let endpoint = spec.endpoint.clone().ok_or_else(|| {
                EmbedError::Config("embedding.endpoint is required for the OpenAI provider".into())
            })?;
            let model = spec.model.clone().ok_or_else(|| {
                EmbedError::Config("embedding.model is required for the OpenAI provider".into())
            })?;
            Arc::new(OpenAiEmbedder::new(OpenAiOptions {
                endpoint,
                model,
                api_key,
                dimensions: dims,
                timeout: parse_duration(&spec.timeout)
                    .unwrap_or(Duration::from_secs(2))
                    .max(Duration::from_secs(1)),
                max_retries: 2,
            })?)
        }
    };
    let cache = CacheOptions {
        memory_entries: u64::try_from(spec.cache.memory_entries.max(0)).unwrap_or(10_000),
        ttl: parse_duration(&spec.cache.ttl).map_err(EmbedError::Config)?,
        redis_url,
    };
    Ok(Arc::new(CachedEmbedder::new(inner, cache, metrics).await?))
}

/// `DATASTORAGE_EMBED_THREADS`: the container's CPU limit, rounded up (the chart sets it with a `resourceFieldRef`
/// to `limits.cpu`), so a forward pass never runs more threads than the cgroup lets run at once (more would only
/// be throttled, and would starve the reconciler sharing the limit). Capped at [`MAX_DEFAULT_THREADS`] like the
/// default; `embedding.local.threads` in the DataStorage overrides it. Unset, empty or invalid: the default
/// (the available cores, which std derives from the cgroup quota too).
fn threads_from_cpu_limit() -> Option<usize> {
    threads_from(&std::env::var("DATASTORAGE_EMBED_THREADS").ok()?)
}

fn threads_from(raw: &str) -> Option<usize> {
    match raw.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Some(n.min(crate::embed::MAX_DEFAULT_THREADS)),
        _ => {
            tracing::warn!(value = %raw, "DATASTORAGE_EMBED_THREADS is not a positive integer: ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::threads_from;

    #[test]
    fn embed_threads_follow_the_cpu_limit_capped_at_the_default_cap() {
        // What the kubelet writes for limits.cpu with divisor 1: the limit rounded up.
        assert_eq!(threads_from("1"), Some(1));
        assert_eq!(threads_from("2\n"), Some(2));
        assert_eq!(threads_from("16"), Some(crate::embed::MAX_DEFAULT_THREADS));
        for bad in ["0", "", "1.5", "-1", "many"] {
            assert_eq!(threads_from(bad), None, "{bad:?}");
        }
    }
}
