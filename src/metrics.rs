//! Prometheus metrics, with the exact names of the product spec. Label values come from bounded sets only
//! (table names, status words, spec field names, reason words, secret kinds, operation names).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every metric the operator exports (embedding-cache metrics are registered by [`crate::embed`]).
pub struct Metrics {
    pub registry: Registry,
    /// `datastorage_write_total{table,status}`: rows written (`status` = success | failure | unchanged).
    pub write_total: IntCounterVec,
    /// `datastorage_write_duration_seconds{table}`.
    pub write_duration: HistogramVec,
    /// `datastorage_dualwrite_success_total`: audit row and vector written in the same transaction.
    pub dualwrite_success: IntCounter,
    /// `datastorage_dualwrite_failure_total{reason}`: the row committed without its vector.
    pub dualwrite_failure: IntCounterVec,
    /// `datastorage_fallback_mode_total`: writes that fell back to row-only because the provider failed.
    pub fallback_mode: IntCounter,
    /// `datastorage_validation_failures_total{field,reason}`.
    pub validation_failures: IntCounterVec,
    /// `datastorage_query_total{operation,status}`.
    pub query_total: IntCounterVec,
    /// `datastorage_query_duration_seconds{operation}`.
    pub query_duration: HistogramVec,
    /// `datastorage_reconcile_total{controller,result}`.
    pub reconcile_total: IntCounterVec,
    /// `datastorage_reconcile_duration_seconds{controller}`.
    pub reconcile_duration: HistogramVec,
    /// `datastorage_embedding_backlog`: stored audits whose vector is missing or stale.
    pub embedding_backlog: IntGauge,
    /// `datastorage_backfill_embedded_total`: vectors added by the backfill.
    pub backfill_embedded: IntCounter,
    /// `datastorage_redactions_total{kind}`.
    pub redactions: IntCounterVec,
    /// `datastorage_leader`: 1 while this replica holds the Lease (and writes).
    pub leader: IntGauge,
    /// `datastorage_db_pool_connections{state}` (state = idle | in_use | max).
    pub pool_connections: IntGaugeVec,
    /// `datastorage_store_ready`: 1 while the DataStorage is Ready for writes.
    pub store_ready: IntGauge,
    /// `datastorage_reconcile_queue_depth`: RemediationAudits the leader has yet to settle.
    pub reconcile_queue_depth: IntGauge,
    /// `datastorage_watch_errors_total`: failed list/watch requests of the RemediationAudit watch.
    pub watch_errors: IntCounter,
    /// `datastorage_undecodable_objects_total`: RemediationAudits the operator could not decode (rejected by name).
    pub undecodable_objects: IntCounter,
    /// `datastorage_prepare_total`: runs of the validate → sanitize → record step.
    pub prepare_total: IntCounter,
    /// `datastorage_embedding_recheck_total{result}`: looks at a persisted audit whose vector was missing
    /// (`result` = stored | pending | unavailable | disabled | missing | failed).
    pub embedding_recheck: IntCounterVec,
    /// `datastorage_events_dropped_total`: Kubernetes Events not published because they were over the rate limit.
    pub events_dropped: IntCounter,
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let m = Self {
            write_total: IntCounterVec::new(
                Opts::new(
                    "datastorage_write_total",
                    "Rows written to PostgreSQL, by table and status",
                ),
                &["table", "status"],
            )?,
            write_duration: HistogramVec::new(
                HistogramOpts::new(
                    "datastorage_write_duration_seconds",
                    "Duration of a store write transaction",
                )
                .buckets(latency_buckets()),
                &["table"],
            )?,
            dualwrite_success: IntCounter::new(
                "datastorage_dualwrite_success_total",
                "Audits written together with their embedding vector in one transaction",
            )?,
            dualwrite_failure: IntCounterVec::new(
                Opts::new(
                    "datastorage_dualwrite_failure_total",
                    "Audits committed without their vector (added later by the backfill), by reason",
                ),
                &["reason"],
            )?,
            fallback_mode: IntCounter::new(
                "datastorage_fallback_mode_total",
                "Writes that fell back to row-only because the embedding provider failed or timed out",
            )?,
            validation_failures: IntCounterVec::new(
                Opts::new(
                    "datastorage_validation_failures_total",
                    "Rejected RemediationAudit fields, by reason",
                ),
                &["field", "reason"],
            )?,
            query_total: IntCounterVec::new(
                Opts::new(
                    "datastorage_query_total",
                    "Query API requests, by operation and status",
                ),
                &["operation", "status"],
            )?,
            query_duration: HistogramVec::new(
                HistogramOpts::new(
                    "datastorage_query_duration_seconds",
                    "Query API latency, by operation",
                )
                .buckets(latency_buckets()),
                &["operation"],
            )?,
            reconcile_total: IntCounterVec::new(
                Opts::new(
                    "datastorage_reconcile_total",
                    "Reconciles, by controller and result",
                ),
                &["controller", "result"],
            )?,
            reconcile_duration: HistogramVec::new(
                HistogramOpts::new(
                    "datastorage_reconcile_duration_seconds",
                    "Reconcile duration, by controller",
                )
                .buckets(latency_buckets()),
                &["controller"],
            )?,
            embedding_backlog: IntGauge::new(
                "datastorage_embedding_backlog",
                "Stored audits whose embedding vector is missing or stale",
            )?,
            backfill_embedded: IntCounter::new(
                "datastorage_backfill_embedded_total",
                "Embedding vectors added by the backfill",
            )?,
            redactions: IntCounterVec::new(
                Opts::new(
                    "datastorage_redactions_total",
                    "Secrets redacted before storage, by kind",
                ),
                &["kind"],
            )?,
            leader: IntGauge::new(
                "datastorage_leader",
                "1 while this replica holds the leader Lease and writes",
            )?,
            pool_connections: IntGaugeVec::new(
                Opts::new(
                    "datastorage_db_pool_connections",
                    "PostgreSQL pool connections, by state",
                ),
                &["state"],
            )?,
            store_ready: IntGauge::new(
                "datastorage_store_ready",
                "1 while the DataStorage is Ready for writes",
            )?,
            reconcile_queue_depth: IntGauge::new(
                "datastorage_reconcile_queue_depth",
                "RemediationAudits in the leader's watch cache not yet Persisted or Rejected for their current \
                 generation, or awaiting their finalizer (0 on other replicas and until the cache is synced)",
            )?,
            watch_errors: IntCounter::new(
                "datastorage_watch_errors_total",
                "Failed list or watch requests of the RemediationAudit watch (readiness fails while they persist)",
            )?,
            undecodable_objects: IntCounter::new(
                "datastorage_undecodable_objects_total",
                "RemediationAudits that could not be decoded (e.g. nested too deep) and were rejected by name",
            )?,
            prepare_total: IntCounter::new(
                "datastorage_prepare_total",
                "Runs of validate, sanitize and canonical record (one per generation written)",
            )?,
            embedding_recheck: IntCounterVec::new(
                Opts::new(
                    "datastorage_embedding_recheck_total",
                    "Rechecks of persisted audits whose vector was missing, by result",
                ),
                &["result"],
            )?,
            events_dropped: IntCounter::new(
                "datastorage_events_dropped_total",
                "Kubernetes Events not published because they were over the rate limit",
            )?,
            registry,
        };
        m.registry.register(Box::new(m.write_total.clone()))?;
        m.registry.register(Box::new(m.write_duration.clone()))?;
        m.registry.register(Box::new(m.dualwrite_success.clone()))?;
        m.registry.register(Box::new(m.dualwrite_failure.clone()))?;
        m.registry.register(Box::new(m.fallback_mode.clone()))?;
        m.registry
            .register(Box::new(m.validation_failures.clone()))?;
        m.registry.register(Box::new(m.query_total.clone()))?;
        m.registry.register(Box::new(m.query_duration.clone()))?;
        m.registry.register(Box::new(m.reconcile_total.clone()))?;
        m.registry
            .register(Box::new(m.reconcile_duration.clone()))?;
        m.registry.register(Box::new(m.embedding_backlog.clone()))?;
        m.registry.register(Box::new(m.backfill_embedded.clone()))?;
        m.registry.register(Box::new(m.redactions.clone()))?;
        m.registry.register(Box::new(m.leader.clone()))?;
        m.registry.register(Box::new(m.pool_connections.clone()))?;
        m.registry.register(Box::new(m.store_ready.clone()))?;
        m.registry
            .register(Box::new(m.reconcile_queue_depth.clone()))?;
        m.registry.register(Box::new(m.watch_errors.clone()))?;
        m.registry
            .register(Box::new(m.undecodable_objects.clone()))?;
        m.registry.register(Box::new(m.prepare_total.clone()))?;
        m.registry.register(Box::new(m.embedding_recheck.clone()))?;
        m.registry.register(Box::new(m.events_dropped.clone()))?;
        Ok(m)
    }

    /// Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Starts a timer on a histogram child; observe by dropping or `observe_duration()`.
    pub fn timer(h: &Histogram) -> prometheus::HistogramTimer {
        h.start_timer()
    }
}
