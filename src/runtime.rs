//! The application's shared state: what the DataStorage controller builds ([`StoreRuntime`]) and what the audit
//! controller, the backfill, the query API and the operations endpoints share ([`Context`]).
//!
//! The DataStorage controller turns the cluster's `DataStorage` resource into a [`StoreRuntime`] (connected store,
//! sanitization settings, embedder) and publishes it on a watch channel; everyone else reads the current runtime
//! when they need it, so configuration changes apply without a restart. While no runtime is ready, audits wait in
//! `state: Retrying` — the CR is the durable inbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use tokio::sync::watch;

use crate::audit::SanitizeConfig;
use crate::embed::Embedder;
use crate::events::EventSink;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::batch::WriteBatcher;

/// Field manager of every server-side apply the operator makes, and the reporting controller of its Events.
pub const MANAGER: &str = "datastorage-operator";
/// Bound of [`Context::note_own_write`]'s memory.
const OWN_WRITES_CAP: usize = 100_000;
/// How long the audit watch may fail without a single success before `/readyz` reports it.
pub const WATCH_FAILING_UNREADY: Duration = Duration::from_secs(30);

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

/// Counts the objects the audit controller still has to settle (published by the controller while it runs).
pub type QueueDepth = Box<dyn Fn() -> usize + Send + Sync>;

/// Shared by the controllers, the backfill and the HTTP servers.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Kubernetes Events about RemediationAudits (rate limited).
    pub events: EventSink,
    pub runtime: watch::Receiver<Option<Arc<StoreRuntime>>>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// When a write last asked for an embedding (ms since `started`): the backfill yields to writes.
    write_embedding_at: AtomicU64,
    started: Instant,
    /// resourceVersion of this replica's last status write per object uid, kept until the watch cache catches up.
    own_writes: Mutex<OwnWrites>,
    /// The RemediationAudit controller's queue depth while this replica runs it (the leader).
    queue_depth: Arc<Mutex<Option<QueueDepth>>>,
    /// Since when the RemediationAudit watch has failed without a success in between (`None`: healthy).
    watch_failing_since: Mutex<Option<Instant>>,
    /// Where the signed chain-head checkpoints are kept, when configured (set once at start-up).
    checkpoint: std::sync::OnceLock<Arc<crate::checkpoint::CheckpointConfig>>,
    /// The DataStorage this replica serves (set once at start-up): `/readyz` names it when it is not Ready.
    datastorage: std::sync::OnceLock<String>,
    /// This replica's Pod (in a pod: POD_NAMESPACE/POD_NAME): why it is not ready is published as a Warning Event
    /// on it, where `kubectl describe pod` and `kubectl get events` show it (the kubelet's own probe event only
    /// says "statuscode: 503").
    self_pod: std::sync::OnceLock<k8s_openapi::api::core::v1::ObjectReference>,
    /// The not-ready reason last published on the pod, and when.
    not_ready_noted: Mutex<Option<(String, Instant)>>,
    /// Cancelled when the process is asked to stop (SIGTERM, or [`crate::operator::Running::shutdown`]):
    /// `/readyz` answers 503 at once, the controllers finish the reconciles in progress and stop, and the HTTP
    /// ports drain (see [`crate::operator::ShutdownTimes`]).
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// A not-ready reason that has not changed is published again after this long (an Event expires after an hour).
pub const NOT_READY_EVENT_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Unpublishes the audit controller's queue depth when the controller stops (or is aborted).
pub struct PublishedQueue(Arc<Mutex<Option<QueueDepth>>>);

impl Drop for PublishedQueue {
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
        let events = EventSink::new(
            client.clone(),
            MANAGER,
            std::env::var("POD_NAME").ok(),
            metrics.events_dropped.clone(),
        );
        let ctx = Self {
            client,
            metrics,
            events,
            runtime,
            failures: Mutex::new(HashMap::new()),
            write_embedding_at: AtomicU64::new(0),
            started: Instant::now(),
            own_writes: Mutex::new(OwnWrites::default()),
            queue_depth: Arc::new(Mutex::new(None)),
            watch_failing_since: Mutex::new(None),
            checkpoint: std::sync::OnceLock::new(),
            datastorage: std::sync::OnceLock::new(),
            self_pod: std::sync::OnceLock::new(),
            not_ready_noted: Mutex::new(None),
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        if let (Ok(ns), Ok(name)) = (std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME")) {
            ctx.set_self_pod(&ns, &name);
        }
        ctx
    }

    /// Where checkpoints are kept, when configured.
    pub fn checkpoint(&self) -> Option<&Arc<crate::checkpoint::CheckpointConfig>> {
        self.checkpoint.get()
    }

    /// Names this replica's Pod (once; a second call is ignored). Context::new takes it from POD_NAMESPACE and
    /// POD_NAME when both are set.
    pub fn set_self_pod(&self, namespace: &str, name: &str) {
        let _ = self
            .self_pod
            .set(k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(namespace.to_string()),
                name: Some(name.to_string()),
                ..Default::default()
            });
    }

    /// `/readyz` answered not ready for `reason`: a Warning Event `NotReady` on this replica's Pod when the reason
    /// changed or [`NOT_READY_EVENT_EVERY`] passed (probes run every few seconds; one event per reason, not per
    /// probe). `None`: ready again, so the next not-ready reason is published at once.
    pub fn note_readiness(&self, reason: Option<&str>) {
        let Some(pod) = self.self_pod.get() else {
            return;
        };
        let mut noted = self
            .not_ready_noted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(reason) = reason.map(str::trim) else {
            *noted = None;
            return;
        };
        // Compared without digits: "failing for 31s", "3 of 10 connections busy" are the same reason a probe later.
        let key: String = reason.chars().filter(|c| !c.is_ascii_digit()).collect();
        let now = Instant::now();
        if noted
            .as_ref()
            .is_some_and(|(k, at)| *k == key && now.duration_since(*at) < NOT_READY_EVENT_EVERY)
        {
            return;
        }
        *noted = Some((key, now));
        self.events.emit(
            pod.clone(),
            crate::events::Notice {
                warning: true,
                reason: "NotReady".into(),
                action: "CheckReadiness",
                note: reason.to_string(),
            },
        );
    }

    /// The DataStorage this replica serves, once set.
    pub fn datastorage_name(&self) -> Option<&str> {
        self.datastorage.get().map(String::as_str)
    }

    /// Names the DataStorage this replica serves (once; a second call is ignored).
    pub fn set_datastorage_name(&self, name: &str) {
        let _ = self.datastorage.set(name.to_string());
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

    /// Makes the audit controller's queue depth visible to [`Context::reconcile_queue_depth`] until the guard
    /// drops.
    pub fn publish_queue_depth(&self, depth: QueueDepth) -> PublishedQueue {
        *self.queue_depth.lock().unwrap_or_else(|p| p.into_inner()) = Some(depth);
        PublishedQueue(self.queue_depth.clone())
    }

    /// RemediationAudits the audit controller still has to settle; 0 on a replica that does not run it and until
    /// its watch cache is synced.
    pub fn reconcile_queue_depth(&self) -> usize {
        self.queue_depth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |f| f())
    }

    /// The RemediationAudit watch answered (an event or a completed list).
    pub fn note_watch_ok(&self) {
        *self
            .watch_failing_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The RemediationAudit watch failed (a list or watch request, or a response that does not decode).
    pub fn note_watch_error(&self) {
        self.metrics.watch_errors.inc();
        self.watch_failing_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
    }

    /// How long the RemediationAudit watch has been failing without a success in between.
    pub fn watch_failing_for(&self) -> Option<Duration> {
        self.watch_failing_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
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
