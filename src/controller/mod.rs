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

use kube::Client;
use tokio::sync::watch;

use crate::audit::SanitizeConfig;
use crate::embed::Embedder;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::batch::WriteBatcher;

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
        }
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
    fn backoff_doubles_and_caps() {
        let d: Vec<u64> = (1..=12).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
