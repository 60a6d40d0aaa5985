//! Two-level embedding cache: in-process moka, then an optional Redis shared by all replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use super::{EmbedError, EmbedMetrics, Embedder};

/// Prefix of every Redis key written by [`CachedEmbedder`]: `datastorage:embedding:<cache_key>`.
pub const REDIS_KEY_PREFIX: &str = "datastorage:embedding:";

/// Budget for one Redis round trip (connect included); past it the cache is skipped.
const REDIS_OP_TIMEOUT: Duration = Duration::from_millis(300);
/// After a Redis failure, Redis is not tried again for this long (doubling up to the max),
/// so an outage costs one timeout per back-off period, not one per request.
const REDIS_BACKOFF_MIN: Duration = Duration::from_secs(1);
const REDIS_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At most one Redis warning per this interval (the rest are counted in the metric).
const REDIS_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// `sha256(model_id + "\n" + text)` as lower-case hex: the cache key of one text.
pub fn cache_key(model_id: &str, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(model_id.as_bytes());
    h.update(b"\n");
    h.update(text.as_bytes());
    hex::encode(h.finalize())
}

/// Configuration of [`CachedEmbedder`].
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Most vectors kept in process memory (~1.6 KB each at 384 dims).
    pub memory_entries: u64,
    /// Time to live of an entry, in memory and in Redis (Redis TTL is rounded up to seconds).
    pub ttl: Duration,
    /// e.g. `redis://127.0.0.1:6379/` (or `rediss://…`); `None` = memory only.
    pub redis_url: Option<String>,
}

/// Caches vectors of an inner [`Embedder`], keyed by [`cache_key`] (so a model change never
/// serves stale vectors).
///
/// Lookup order: in-memory moka cache (bounded, TTL) → Redis (optional, shared by replicas,
/// values are the vector as little-endian `f32` bytes, `SET … EX ttl`) → the inner embedder,
/// which gets all misses of a call in **one** `embed` call (duplicates sent once).
///
/// Redis is strictly best effort: any Redis error or timeout is counted in
/// `redis_errors`, logged as a rate-limited warning, and the call continues from memory / the
/// inner embedder; after a failure Redis is skipped for a back-off period (1 s doubling to 10 s)
/// and then retried, and the `ConnectionManager` reconnects by itself once Redis is back.
/// An embed never fails because of Redis.
pub struct CachedEmbedder {
    inner: Arc<dyn Embedder>,
    model_id: String,
    memory: moka::future::Cache<String, Arc<[f32]>>,
    redis: Option<RedisCache>,
    ttl_secs: u64,
    metrics: EmbedMetrics,
}

impl std::fmt::Debug for CachedEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedEmbedder")
            .field("model_id", &self.model_id)
            .field("memory_entries", &self.memory.entry_count())
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

struct RedisCache {
    conn: ConnectionManager,
    /// Redacted URL (no password) for log messages.
    display_url: String,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// Skip Redis until then (set after a failure).
    skip_until: Option<Instant>,
    backoff: Duration,
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl CachedEmbedder {
    /// Wraps `inner`. With `redis_url`, a lazily connecting Redis client is created: an
    /// unreachable Redis is *not* an error (it is retried in the background); only a malformed
    /// URL is ([`EmbedError::Config`]). Must be called inside a Tokio runtime.
    pub async fn new(
        inner: Arc<dyn Embedder>,
        opts: CacheOptions,
        metrics: EmbedMetrics,
    ) -> Result<Self, EmbedError> {
        if opts.ttl.is_zero() {
            return Err(EmbedError::Config("cache ttl must be positive".into()));
        }
        let evictions = metrics.evictions.clone();
        let memory = moka::future::Cache::builder()
            .max_capacity(opts.memory_entries)
            .time_to_live(opts.ttl)
            // Entries pushed out for lack of room (not TTL expiry): a cache too small for the texts that repeat.
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        let redis = match opts
            .redis_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            None => None,
            Some(url) => {
                let client = redis::Client::open(url).map_err(|e| {
                    EmbedError::Config(format!("invalid redis url {}: {e}", redact_url(url)))
                })?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_OP_TIMEOUT))
                    .set_response_timeout(Some(REDIS_OP_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(200));
                let conn =
                    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
                        EmbedError::Config(format!(
                            "cannot create redis client for {}: {e}",
                            redact_url(url)
                        ))
                    })?;
                let rc = RedisCache {
                    conn,
                    display_url: redact_url(url),
                    health: Mutex::new(Health::default()),
                };
                // Connect now so the first request does not pay for it; failure is only logged.
                let mut c = rc.conn.clone();
                match tokio::time::timeout(
                    REDIS_OP_TIMEOUT,
                    redis::cmd("PING").query_async::<String>(&mut c),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        tracing::info!(redis = %rc.display_url, "embedding cache uses redis")
                    }
                    Ok(Err(e)) => rc.failed(&metrics, &e.to_string()),
                    Err(_) => rc.failed(&metrics, "timed out"),
                }
                Some(rc)
            }
        };
        Ok(Self {
            model_id: inner.model_id().to_string(),
            inner,
            memory,
            redis,
            ttl_secs: opts.ttl.as_secs_f64().ceil().max(1.0) as u64,
            metrics,
        })
    }

    /// The wrapped embedder.
    pub fn inner(&self) -> &Arc<dyn Embedder> {
        &self.inner
    }

    /// Looks up `keys` in Redis; `None` per key on miss, bad value or any Redis problem.
    async fn redis_get(&self, rc: &RedisCache, keys: &[&str]) -> Vec<Option<Arc<[f32]>>> {
        let none = || vec![None; keys.len()];
        if keys.is_empty() || !rc.available() {
            return none();
        }
        let redis_keys: Vec<String> = keys
            .iter()
            .map(|k| format!("{REDIS_KEY_PREFIX}{k}"))
            .collect();
        let mut conn = rc.conn.clone();
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&redis_keys);
        let fut = cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn);
        let values = match tokio::time::timeout(REDIS_OP_TIMEOUT, fut).await {
            Ok(Ok(v)) if v.len() == keys.len() => v,
            Ok(Ok(v)) => {
                rc.failed(
                    &self.metrics,
                    &format!("MGET returned {} values for {} keys", v.len(), keys.len()),
                );
                return none();
            }
            Ok(Err(e)) => {
                rc.failed(&self.metrics, &e.to_string());
                return none();
            }
            Err(_) => {
                rc.failed(&self.metrics, "MGET timed out");
                return none();
            }
        };
        rc.succeeded();
        let dims = self.inner.dimensions();
        values
            .into_iter()
            .map(|v| v.and_then(|bytes| decode(&bytes, dims)))
            .collect()
    }

    /// Stores vectors in Redis with the TTL; failures are only counted and logged.
    async fn redis_set(&self, rc: &RedisCache, entries: &[(&str, &Arc<[f32]>)]) {
        if entries.is_empty() || !rc.available() {
            return;
        }
        let mut pipe = redis::pipe();
        for (key, v) in entries {
            pipe.cmd("SET")
                .arg(format!("{REDIS_KEY_PREFIX}{key}"))
                .arg(encode(v))
                .arg("EX")
                .arg(self.ttl_secs)
                .ignore();
        }
        let mut conn = rc.conn.clone();
        match tokio::time::timeout(REDIS_OP_TIMEOUT, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => rc.succeeded(),
            Ok(Err(e)) => rc.failed(&self.metrics, &e.to_string()),
            Err(_) => rc.failed(&self.metrics, "SET timed out"),
        }
    }
}

impl RedisCache {
    fn available(&self) -> bool {
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        h.skip_until.is_none_or(|t| Instant::now() >= t)
    }

    fn succeeded(&self) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if h.skip_until.take().is_some() {
            tracing::info!(redis = %self.display_url, "embedding cache: redis is reachable again");
        }
        h.backoff = Duration::ZERO;
    }

    fn failed(&self, metrics: &EmbedMetrics, err: &str) {
        metrics.redis_errors.inc();
        let now = Instant::now();
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        h.backoff = if h.backoff.is_zero() {
            REDIS_BACKOFF_MIN
        } else {
            (h.backoff * 2).min(REDIS_BACKOFF_MAX)
        };
        h.skip_until = Some(now + h.backoff);
        if h.last_warn
            .is_none_or(|t| now.duration_since(t) >= REDIS_WARN_INTERVAL)
        {
            tracing::warn!(
                redis = %self.display_url,
                error = %err,
                retry_in_ms = h.backoff.as_millis() as u64,
                suppressed_warnings = h.suppressed,
                "embedding cache: redis unavailable, using the in-memory cache only"
            );
            h.last_warn = Some(now);
            h.suppressed = 0;
        } else {
            h.suppressed += 1;
        }
    }
}

fn encode(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode(bytes: &[u8], dims: usize) -> Option<Arc<[f32]>> {
    if bytes.len() != dims * 4 {
        return None;
    }
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    v.iter().all(|x| x.is_finite()).then(|| v.into())
}

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

#[async_trait::async_trait]
impl Embedder for CachedEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }

    fn semantic(&self) -> bool {
        self.inner.semantic()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = texts.iter().map(|t| cache_key(&self.model_id, t)).collect();
        let mut found: Vec<Option<Arc<[f32]>>> = Vec::with_capacity(texts.len());
        for k in &keys {
            found.push(self.memory.get(k).await);
        }

        // Distinct keys still missing, in first-seen order, with one representative text each.
        let mut missing: Vec<(&str, &String)> = Vec::new();
        let mut seen: HashMap<&str, ()> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if found[i].is_none() && seen.insert(k.as_str(), ()).is_none() {
                missing.push((k.as_str(), &texts[i]));
            }
        }

        let mut resolved: HashMap<&str, Arc<[f32]>> = HashMap::new();
        if let (Some(rc), false) = (&self.redis, missing.is_empty()) {
            let ks: Vec<&str> = missing.iter().map(|(k, _)| *k).collect();
            for ((k, _), v) in missing.iter().zip(self.redis_get(rc, &ks).await) {
                if let Some(v) = v {
                    self.memory.insert(k.to_string(), v.clone()).await;
                    resolved.insert(k, v);
                }
            }
            missing.retain(|(k, _)| !resolved.contains_key(k));
        }

        let computed_texts = missing.len();
        if !missing.is_empty() {
            let batch: Vec<String> = missing.iter().map(|(_, t)| (*t).clone()).collect();
            let started = Instant::now();
            let vectors = self.inner.embed(&batch).await?;
            self.metrics
                .generation_seconds
                .observe(started.elapsed().as_secs_f64());
            if vectors.len() != batch.len() {
                return Err(EmbedError::Inference(format!(
                    "{} returned {} vectors for {} texts",
                    self.model_id,
                    vectors.len(),
                    batch.len()
                )));
            }
            let mut fresh: Vec<(&str, Arc<[f32]>)> = Vec::with_capacity(vectors.len());
            for ((k, _), v) in missing.iter().zip(vectors) {
                let v: Arc<[f32]> = v.into();
                self.memory.insert(k.to_string(), v.clone()).await;
                fresh.push((k, v));
            }
            if let Some(rc) = &self.redis {
                let entries: Vec<(&str, &Arc<[f32]>)> =
                    fresh.iter().map(|(k, v)| (*k, v)).collect();
                self.redis_set(rc, &entries).await;
            }
            resolved.extend(fresh);
        }

        self.metrics.cache_misses.inc_by(computed_texts as u64);
        self.metrics
            .cache_hits
            .inc_by((texts.len() - computed_texts) as u64);

        found
            .into_iter()
            .zip(&keys)
            .map(|(hit, k)| {
                hit.or_else(|| resolved.get(k.as_str()).cloned())
                    .map(|v| v.to_vec())
                    .ok_or_else(|| EmbedError::Inference("a text was left without a vector".into()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::HashEmbedder;
    use crate::embed::test_util::strings;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A real provider (HashEmbedder) that counts calls and texts.
    struct Counting {
        inner: HashEmbedder,
        calls: AtomicUsize,
        texts: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Embedder for Counting {
        fn model_id(&self) -> &str {
            self.inner.model_id()
        }
        fn dimensions(&self) -> usize {
            self.inner.dimensions()
        }
        fn semantic(&self) -> bool {
            false
        }
        async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.texts.fetch_add(texts.len(), Ordering::SeqCst);
            self.inner.embed(texts).await
        }
    }

    fn counting() -> Arc<Counting> {
        Arc::new(Counting {
            inner: HashEmbedder::new(64),
            calls: AtomicUsize::new(0),
            texts: AtomicUsize::new(0),
        })
    }

    fn mem_opts() -> CacheOptions {
        CacheOptions {
            memory_entries: 1000,
            ttl: Duration::from_secs(60),
            redis_url: None,
        }
    }

    #[test]
    fn key_is_sha256_of_model_and_text() {
        // sha256("hash:v1:64\nabc")
        let k = cache_key("hash:v1:64", "abc");
        assert_eq!(k.len(), 64);
        let mut h = Sha256::new();
        h.update(b"hash:v1:64\nabc");
        assert_eq!(k, hex::encode(h.finalize()));
        assert_ne!(k, cache_key("hash:v1:65", "abc"));
    }

    #[test]
    fn vector_bytes_roundtrip() {
        let v = vec![0.5f32, -1.25, 3.0e-8, 1.0];
        let b = encode(&v);
        assert_eq!(b.len(), 16);
        assert_eq!(&b[..4], &0.5f32.to_le_bytes());
        assert_eq!(&*decode(&b, 4).unwrap(), &v[..]);
        assert!(decode(&b, 3).is_none());
        assert_eq!(redact_url("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
    }

    #[tokio::test]
    async fn memory_hit_skips_inner_and_counts() {
        let inner = counting();
        let metrics = EmbedMetrics::unregistered().unwrap();
        let c = CachedEmbedder::new(inner.clone(), mem_opts(), metrics.clone())
            .await
            .unwrap();
        assert_eq!(c.model_id(), "hash:v1:64");
        assert_eq!(c.dimensions(), 64);
        assert!(!c.semantic());

        let t = strings(&["pod OOM killed"]);
        let first = c.embed(&t).await.unwrap();
        assert_eq!(metrics.cache_misses.get(), 1);
        assert_eq!(metrics.cache_hits.get(), 0);
        let second = c.embed(&t).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(first[0], inner.inner.embed_one("pod OOM killed"));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1, "inner called once");
        assert_eq!(metrics.cache_hits.get(), 1);
        assert_eq!(metrics.cache_misses.get(), 1);
        assert_eq!(metrics.generation_seconds.get_sample_count(), 1);
        assert_eq!(metrics.redis_errors.get(), 0);
    }

    #[tokio::test]
    async fn evictions_for_lack_of_room_are_counted_and_new_texts_alone_are_not() {
        let metrics = EmbedMetrics::unregistered().unwrap();
        let opts = CacheOptions {
            memory_entries: 4,
            ..mem_opts()
        };
        let c = CachedEmbedder::new(counting(), opts, metrics.clone())
            .await
            .unwrap();
        // Four new texts fit: misses, no eviction.
        c.embed(&strings(&["a", "b", "c", "d"])).await.unwrap();
        c.memory.run_pending_tasks().await;
        assert_eq!(metrics.cache_misses.get(), 4);
        assert_eq!(metrics.evictions.get(), 0);
        // Eight more do not: the cache evicts to stay at four entries.
        c.embed(&strings(&["e", "f", "g", "h", "i", "j", "k", "l"]))
            .await
            .unwrap();
        c.memory.run_pending_tasks().await;
        assert!(metrics.evictions.get() >= 8, "{}", metrics.evictions.get());
    }

    #[tokio::test]
    async fn misses_are_batched_deduplicated_and_ordered() {
        let inner = counting();
        let metrics = EmbedMetrics::unregistered().unwrap();
        let c = CachedEmbedder::new(inner.clone(), mem_opts(), metrics.clone())
            .await
            .unwrap();
        c.embed(&strings(&["b"])).await.unwrap();
        let texts = strings(&["a", "b", "c", "a", "d", "b"]);
        let v = c.embed(&texts).await.unwrap();
        // One inner call for the misses a, c, d (a only once).
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        assert_eq!(inner.texts.load(Ordering::SeqCst), 1 + 3);
        for (t, got) in texts.iter().zip(&v) {
            assert_eq!(got, &inner.inner.embed_one(t), "{t}");
        }
        assert_eq!(metrics.cache_misses.get(), 1 + 3);
        assert_eq!(metrics.cache_hits.get(), 3);
        assert!(c.embed(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn unreachable_redis_never_fails_embeds() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let inner = counting();
        let metrics = EmbedMetrics::unregistered().unwrap();
        let opts = CacheOptions {
            redis_url: Some(format!("redis://127.0.0.1:{port}/")),
            ..mem_opts()
        };
        let c = CachedEmbedder::new(inner.clone(), opts, metrics.clone())
            .await
            .unwrap();
        let t = strings(&["x y"]);
        let started = Instant::now();
        assert_eq!(c.embed(&t).await.unwrap()[0], inner.inner.embed_one("x y"));
        assert_eq!(c.embed(&t).await.unwrap()[0], inner.inner.embed_one("x y"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(metrics.redis_errors.get() >= 1);
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            1,
            "memory cache still works"
        );
        assert!(matches!(
            CachedEmbedder::new(
                inner.clone(),
                CacheOptions {
                    redis_url: Some("nope://".into()),
                    ..mem_opts()
                },
                metrics
            )
            .await,
            Err(EmbedError::Config(_))
        ));
    }

    /// Against a real Redis: `hack/test.sh` exports `DATASTORAGE_TEST_REDIS_URL` (from `hack/redis.sh up`).
    /// Fails loudly, never skips, when it is not set.
    #[tokio::test]
    async fn redis_shared_between_instances() {
        let url = std::env::var("DATASTORAGE_TEST_REDIS_URL").unwrap_or_else(|_| {
            panic!(
                "DATASTORAGE_TEST_REDIS_URL is not set: run the tests with `make test`, or \
                 `export DATASTORAGE_TEST_REDIS_URL=$(hack/redis.sh up | tail -n1)`"
            )
        });
        let unique = format!("redis shared test {:?}", std::time::SystemTime::now());
        let opts = CacheOptions {
            redis_url: Some(url.clone()),
            ..mem_opts()
        };
        let (i1, i2) = (counting(), counting());
        let (m1, m2) = (
            EmbedMetrics::unregistered().unwrap(),
            EmbedMetrics::unregistered().unwrap(),
        );
        let c1 = CachedEmbedder::new(i1.clone(), opts.clone(), m1.clone())
            .await
            .unwrap();
        let c2 = CachedEmbedder::new(i2.clone(), opts, m2.clone())
            .await
            .unwrap();
        let t = vec![unique.clone()];
        let v1 = c1.embed(&t).await.unwrap();
        let v2 = c2.embed(&t).await.unwrap();
        assert_eq!(v1, v2);
        assert_eq!(i1.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            i2.calls.load(Ordering::SeqCst),
            0,
            "second replica served from redis"
        );
        assert_eq!(m2.cache_hits.get(), 1);
        assert_eq!(m1.redis_errors.get() + m2.redis_errors.get(), 0);
        // Stored as little-endian f32 with a TTL.
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let key = format!("{REDIS_KEY_PREFIX}{}", cache_key("hash:v1:64", &unique));
        let bytes: Vec<u8> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(&*decode(&bytes, 64).unwrap(), &v1[0][..]);
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 60, "ttl {ttl}");
    }
}
