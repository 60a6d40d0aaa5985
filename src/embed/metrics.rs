//! Prometheus metrics of the embedding cache / providers.

use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

/// Buckets for one call into a provider: 1 ms (cached-ish / tiny batch) .. 2 s (large batch, slow
/// remote service); anything slower lands in +Inf.
const GENERATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0,
];

/// Metrics recorded by [`super::CachedEmbedder`]. Cloning shares the underlying counters.
#[derive(Clone, Debug)]
pub struct EmbedMetrics {
    /// `datastorage_cache_hits_total`: texts answered from the memory or Redis cache.
    pub cache_hits: IntCounter,
    /// `datastorage_cache_misses_total`: texts that had to be sent to the embedding provider.
    pub cache_misses: IntCounter,
    /// `datastorage_embedding_generation_duration_seconds`: wall time of each call into the
    /// provider (one call embeds all misses of one request).
    pub generation_seconds: Histogram,
    /// `datastorage_embedding_cache_redis_errors_total`: failed Redis operations (the embed
    /// itself still succeeds, from memory/provider).
    pub redis_errors: IntCounter,
    /// `datastorage_embedding_cache_evictions_total`: memory-cache entries evicted for lack of room (not TTL
    /// expiry). A low hit rate *with* evictions is a cache too small for the texts that repeat; a low hit rate
    /// without them is texts that are new (the `LowCacheHitRate` alert needs both).
    pub evictions: IntCounter,
}

impl EmbedMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.cache_hits.clone()))?;
        registry.register(Box::new(m.cache_misses.clone()))?;
        registry.register(Box::new(m.generation_seconds.clone()))?;
        registry.register(Box::new(m.redis_errors.clone()))?;
        registry.register(Box::new(m.evictions.clone()))?;
        Ok(m)
    }

    /// The same metrics, not registered anywhere (tests, or when metrics are not exported).
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        Ok(Self {
            cache_hits: IntCounter::new(
                "datastorage_cache_hits_total",
                "Embedding requests answered from the cache (memory or Redis), per text.",
            )?,
            cache_misses: IntCounter::new(
                "datastorage_cache_misses_total",
                "Embedding requests that had to be computed by the provider, per text.",
            )?,
            generation_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "datastorage_embedding_generation_duration_seconds",
                    "Duration of one call into the embedding provider (all cache misses of one request).",
                )
                .buckets(GENERATION_BUCKETS.to_vec()),
            )?,
            redis_errors: IntCounter::new(
                "datastorage_embedding_cache_redis_errors_total",
                "Failed operations against the shared Redis embedding cache.",
            )?,
            evictions: IntCounter::new(
                "datastorage_embedding_cache_evictions_total",
                "Entries evicted from the in-memory embedding cache for lack of room (not TTL expiry).",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_all_metric_names() {
        let registry = Registry::new();
        let m = EmbedMetrics::register(&registry).unwrap();
        m.cache_hits.inc();
        m.generation_seconds.observe(0.03);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        for want in [
            "datastorage_cache_hits_total",
            "datastorage_cache_misses_total",
            "datastorage_embedding_generation_duration_seconds",
            "datastorage_embedding_cache_redis_errors_total",
            "datastorage_embedding_cache_evictions_total",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        // Registering twice in the same registry is an error, not a silent duplicate.
        assert!(EmbedMetrics::register(&registry).is_err());
    }
}
