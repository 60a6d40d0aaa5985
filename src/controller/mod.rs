//! The two controllers and what they share.
//!
//! The DataStorage controller ([`datastorage`]) turns the cluster's `DataStorage` resource into a [`StoreRuntime`]
//! (connected store, sanitization settings, embedder) and publishes it on a watch channel; the RemediationAudit
//! controller ([`audit`]) reads the current runtime on every reconcile, so configuration changes apply without a
//! restart. While no runtime is ready, audits wait in `state: Retrying` — the CR is the durable inbox.

pub mod audit;
pub mod datastorage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use kube::Client;
use tokio::sync::watch;

use crate::audit::SanitizeConfig;
use crate::embed::Embedder;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::batch::WriteBatcher;

/// Bound of [`Context::note_own_write`]'s memory.
const OWN_WRITES_CAP: usize = 100_000;

/// Field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "datastorage-operator";

/// What the audit controller needs to write, as configured by the DataStorage resource.
#[derive(Clone)]
pub struct StoreRuntime {
    pub store: Store,
    /// Group commit of new audits (the reconciles' writes go through it).
    pub writer: WriteBatcher,
    pub sanitize: SanitizeConfig,
    /// `None` when embeddings are disabled or the provider cannot be built.
    pub embedder: Option<Arc<dyn Embedder>>,
    /// Whether the DataStorage asks for embeddings (false: provider `Disabled`).
    pub embeddings_enabled: bool,
    /// Time budget of an embedding inside a write; past it the row is stored alone.
    pub embed_timeout: Duration,
    /// `Err(message)` while writes are blocked (e.g. unsupported PostgreSQL/pgvector versions).
    pub writable: Result<(), String>,
    /// Delete RemediationAudits this long after they were persisted.
    pub cr_ttl: Option<Duration>,
    pub ef_search: i32,
    /// Vectors are indexed as halfvec (searches must use the matching expression).
    pub halfvec: bool,
}

/// Shared by the controllers, the backfill and the HTTP servers.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub runtime: watch::Receiver<Option<Arc<StoreRuntime>>>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// When a write last asked for an embedding (ms since `started`): the backfill yields to writes.
    write_embedding_at: AtomicU64,
    started: Instant,
    /// resourceVersion of this replica's last status write per object uid, kept until the watch cache catches up.
    own_writes: Mutex<OwnWrites>,
    /// The RemediationAudit controller's watch cache while this replica runs it (the leader).
    audit_cache: Arc<Mutex<Option<audit::AuditCache>>>,
    /// Where the signed chain-head checkpoints are kept, when configured (set once at start-up).
    checkpoint: std::sync::OnceLock<Arc<crate::checkpoint::CheckpointConfig>>,
}

/// Unpublishes the audit controller's cache when the controller stops (or is aborted).
pub struct PublishedCache(Arc<Mutex<Option<audit::AuditCache>>>);

impl Drop for PublishedCache {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        runtime: watch::Receiver<Option<Arc<StoreRuntime>>>,
    ) -> Self {
        Self {
            client,
            metrics,
            runtime,
            failures: Mutex::new(HashMap::new()),
            write_embedding_at: AtomicU64::new(0),
            started: Instant::now(),
            own_writes: Mutex::new(OwnWrites::default()),
            audit_cache: Arc::new(Mutex::new(None)),
            checkpoint: std::sync::OnceLock::new(),
        }
    }

    /// Where checkpoints are kept, when configured.
    pub fn checkpoint(&self) -> Option<&Arc<crate::checkpoint::CheckpointConfig>> {
        self.checkpoint.get()
    }

    /// Configures checkpoints (once; a second call is ignored).
    pub fn set_checkpoint(&self, config: crate::checkpoint::CheckpointConfig) {
        let _ = self.checkpoint.set(Arc::new(config));
    }

    /// A write is about to embed its audit.
    pub fn note_write_embedding(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.write_embedding_at.store(now.max(1), Ordering::Relaxed);
    }

    /// Whether a write asked for an embedding within `window`.
    pub fn writes_embedding_within(&self, window: Duration) -> bool {
        let at = self.write_embedding_at.load(Ordering::Relaxed);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        at != 0 && now.saturating_sub(at) <= u64::try_from(window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Remembers that this replica's write to object `uid` produced `resource_version`.
    pub fn note_own_write(&self, uid: &str, resource_version: Option<&str>) {
        self.own_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note(uid, resource_version);
    }

    /// Whether a cached object at `resource_version` is older than this replica's last write to it (see
    /// [`OwnWrites::behind`]).
    pub fn behind_own_write(&self, uid: &str, resource_version: Option<&str>) -> bool {
        self.own_writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .behind(uid, resource_version)
    }

    /// Makes the audit controller's cache visible to [`Context::reconcile_queue_depth`] until the guard drops.
    pub fn publish_audit_cache(&self, cache: audit::AuditCache) -> PublishedCache {
        *self.audit_cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(cache);
        PublishedCache(self.audit_cache.clone())
    }

    /// RemediationAudits the audit controller still has to settle (see [`audit::is_settled`]); 0 on a replica
    /// that does not run it and until its watch cache is synced.
    pub fn reconcile_queue_depth(&self) -> usize {
        let cache = self
            .audit_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Before its first full list the cache is empty, not drained: count nothing until it is synced.
        cache
            .filter(|c| {
                c.wait_until_ready()
                    .now_or_never()
                    .is_some_and(|r| r.is_ok())
            })
            .map_or(0, |c| {
                c.state().iter().filter(|o| !audit::is_settled(o)).count()
            })
    }

    pub fn current_runtime(&self) -> Option<Arc<StoreRuntime>> {
        self.runtime.borrow().clone()
    }

    /// Records one more failure of `key` and returns the delay before its next attempt: 1 s doubling to 5 min.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    pub fn reset_backoff(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }
}

/// The resourceVersion of this replica's last write per object uid, from the write until the watch cache shows
/// it. The cache lags behind the operator's own writes by the watch latency, and a reconcile triggered meanwhile
/// (by the event of the finalizer patch, say) would otherwise see the object without its new status and write
/// the same generation and status again — once for nearly every audit.
#[derive(Default)]
pub struct OwnWrites(HashMap<String, u64>);

impl OwnWrites {
    /// Remembers a write; resourceVersions that are not the integers the API server issues are not remembered.
    pub fn note(&mut self, uid: &str, resource_version: Option<&str>) {
        let Some(rv) = resource_version.and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        // Entries live from a write until the cache shows it (milliseconds); the cap only bounds pathologies.
        if self.0.len() >= OWN_WRITES_CAP {
            self.0.clear();
        }
        self.0.insert(uid.to_string(), rv);
    }

    /// Whether an object seen at `resource_version` is older than the last write to it. Once the cache shows the
    /// write (or anything newer, or something not comparable) it is forgotten.
    pub fn behind(&mut self, uid: &str, resource_version: Option<&str>) -> bool {
        let Some(&written) = self.0.get(uid) else {
            return false;
        };
        match resource_version.and_then(|v| v.parse::<u64>().ok()) {
            Some(rv) if rv < written => true,
            _ => {
                self.0.remove(uid);
                false
            }
        }
    }
}

/// Runs one reconcile, counting it in `datastorage_reconcile_total{controller,result}` and timing it in
/// `datastorage_reconcile_duration_seconds{controller}`.
pub(crate) async fn instrumented<T, E>(
    metrics: &Metrics,
    controller: &str,
    reconcile: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let timer = metrics
        .reconcile_duration
        .with_label_values(&[controller])
        .start_timer();
    let result = reconcile.await;
    timer.observe_duration();
    let label = if result.is_ok() { "success" } else { "error" };
    metrics
        .reconcile_total
        .with_label_values(&[controller, label])
        .inc();
    result
}

/// 1 s, 2 s, 4 s, … capped at 300 s.
pub fn backoff_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(9);
    Duration::from_secs((1u64 << exp).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_behind_the_own_write_is_recognised_until_it_catches_up() {
        let mut w = OwnWrites::default();
        assert!(!w.behind("u1", Some("5")), "nothing written yet");
        w.note("u1", Some("10"));
        assert!(w.behind("u1", Some("9")), "older than the write");
        assert!(w.behind("u1", Some("9")), "still older");
        assert!(!w.behind("u2", Some("1")), "another object");
        assert!(!w.behind("u1", Some("10")), "caught up");
        assert!(!w.behind("u1", Some("3")), "forgotten once caught up");
        w.note("u1", Some("20"));
        assert!(!w.behind("u1", Some("abc")), "not comparable: never behind");
        assert!(!w.behind("u1", Some("19")), "and forgotten");
        w.note("u1", Some("not-a-number"));
        assert!(
            !w.behind("u1", Some("1")),
            "an unparsable write is not remembered"
        );
        w.note("u1", None);
        assert!(!w.behind("u1", Some("1")));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let d: Vec<u64> = (1..=12).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
