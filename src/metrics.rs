//! Prometheus metrics, with the exact names of the product spec. Label values come from bounded sets only
//! (table names, status words, spec field names, reason words, secret kinds, operation names).
//!
//! Every label value the code can produce from a closed list is pre-initialised at 0 in [`Metrics::new`], so a
//! query (`rate(...)`, a ratio, an alert's `increase(...) > 0`) has a series before the first event instead of
//! "no data". `datastorage_validation_failures_total{field,reason}` is not: most of the 14 fields × 8 reasons
//! pairs cannot occur, and [`Metrics::count_rejection`] pre-creates nothing; `datastorage_audits_rejected_total`
//! (one per rejected audit, pre-initialised) is what alerts and ratios use.
//!
//! Row-only writes (the audit committed without its vector) are counted in exactly one of two counters, by cause
//! ([`Metrics::count_row_only`]): `datastorage_fallback_mode_total` when the embedding provider *failed* (an error:
//! the provider is broken, the `VectorDegraded` alert), `datastorage_dualwrite_failure_total{reason="timeout"}`
//! when it did not answer within the write's time budget (slow or saturated; the vector still lands in the cache
//! and the backfill adds it). Their sum is every audit stored without its vector while embeddings are enabled.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::audit::sanitize::SecretKind;

/// `operation` label values of `datastorage_query_total` / `datastorage_query_duration_seconds`.
pub const QUERY_OPERATIONS: [&str; 4] = ["list", "get", "search", "insights"];
/// `status` label values of `datastorage_query_total` (`success` and `Problem::metric_status`).
pub const QUERY_STATUSES: [&str; 5] = [
    "success",
    "unauthorized",
    "forbidden",
    "client_error",
    "server_error",
];
/// `result` values of `datastorage_admission_reviews_total` for reviews that failed.
pub const ADMISSION_ERRORS: [&str; 3] = ["bad_request", "internal", "timeout"];
/// `controller` label values of the reconcile metrics.
pub const CONTROLLERS: [&str; 2] = ["remediationaudit", "datastorage"];
/// `(table, status)` pairs of `datastorage_write_total` the code produces.
pub const WRITE_SERIES: [(&str, &str); 5] = [
    ("audits", "success"),
    ("audits", "failure"),
    ("audits", "unchanged"),
    ("audit_history", "success"),
    ("audit_embeddings", "success"),
];
/// The version this binary was built from, and its git commit: set by build.rs (the `DATASTORAGE_GIT_COMMIT`
/// environment variable of the build when given, else `git rev-parse --short=10 HEAD`, else `unknown`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("DATASTORAGE_GIT_COMMIT");

/// `datastorage_store_ready`: exported only once the operator has seen its DataStorage, so "no DataStorage yet"
/// (a fresh install) is an absent series and not a 0 that would page as a database failure.
pub struct StoreReady(IntGaugeVec);

impl StoreReady {
    pub fn set(&self, v: i64) {
        self.0.with_label_values(&[] as &[&str]).set(v);
    }
}

/// Every metric the operator exports (embedding-cache metrics are registered by [`crate::embed`]).
pub struct Metrics {
    pub registry: Registry,
    /// `datastorage_write_total{table,status}`: rows written (`status` = success | failure | unchanged).
    pub write_total: IntCounterVec,
    /// `datastorage_write_duration_seconds{table}`.
    pub write_duration: HistogramVec,
    /// `datastorage_dualwrite_success_total`: audit row and vector written in the same transaction.
    pub dualwrite_success: IntCounter,
    /// `datastorage_dualwrite_failure_total{reason}`: the row committed without its vector because the provider
    /// did not answer in the write's budget (`reason="timeout"`; see [`Metrics::count_row_only`]).
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
    /// `datastorage_redacted_at_admission_total{kind}`: secrets the admission webhook removed from a RemediationAudit
    /// before it reached etcd, counted by the controller when it stores that generation (from the webhook's
    /// annotation, so a replica serving the webhook and the leader agree, and dry runs are not counted).
    pub redacted_at_admission: IntCounterVec,
    /// `datastorage_specs_redacted_total`: RemediationAudits whose own spec the controller redacted in place (admitted
    /// while the webhook was unreachable, or before it existed).
    pub specs_redacted: IntCounter,
    /// `datastorage_admission_reviews_total{result}`: AdmissionReviews this replica answered (`redacted`, `clean`,
    /// `denied`, `skipped`) or failed (`bad_request`, `internal`, `timeout`; the API server then applies its
    /// failurePolicy).
    pub admission_reviews: IntCounterVec,
    /// `datastorage_leader`: 1 while this replica holds the Lease (and writes).
    pub leader: IntGauge,
    /// `datastorage_db_pool_connections{state}` (state = idle | in_use).
    pub pool_connections: IntGaugeVec,
    /// `datastorage_db_pool_max_connections`: the pool's size limit (a different unit from a state: the
    /// saturation ratio is `in_use / max`).
    pub pool_max_connections: IntGauge,
    /// `datastorage_store_ready`: 1 while the DataStorage is Ready for writes, 0 while not, absent before the
    /// operator has seen it.
    pub store_ready: StoreReady,
    /// `datastorage_reconcile_queue_depth`: RemediationAudits the leader has yet to settle.
    pub reconcile_queue_depth: IntGauge,
    /// `datastorage_audits_rejected_total`: RemediationAudits rejected (each a record that was not stored; the
    /// per-field causes are in `datastorage_validation_failures_total`).
    pub audits_rejected: IntCounter,
    /// `datastorage_build_info{version,git_commit}`: always 1.
    pub build_info: IntGaugeVec,
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
                    "Audits committed without their vector because the provider did not answer within the write's budget \
                     (added later by the backfill), by reason",
                ),
                &["reason"],
            )?,
            fallback_mode: IntCounter::new(
                "datastorage_fallback_mode_total",
                "Writes that fell back to row-only because the embedding provider failed (an error, not a timeout)",
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
            redacted_at_admission: IntCounterVec::new(
                Opts::new(
                    "datastorage_redacted_at_admission_total",
                    "Secrets redacted by the admission webhook before the RemediationAudit reached etcd, by kind",
                ),
                &["kind"],
            )?,
            specs_redacted: IntCounter::new(
                "datastorage_specs_redacted_total",
                "RemediationAudits whose spec the controller redacted in place (admitted without the webhook)",
            )?,
            admission_reviews: IntCounterVec::new(
                Opts::new(
                    "datastorage_admission_reviews_total",
                    "AdmissionReviews answered by the webhook, by result",
                ),
                &["result"],
            )?,
            leader: IntGauge::new(
                "datastorage_leader",
                "1 while this replica holds the leader Lease and writes",
            )?,
            pool_connections: IntGaugeVec::new(
                Opts::new(
                    "datastorage_db_pool_connections",
                    "PostgreSQL pool connections, by state (idle, in_use)",
                ),
                &["state"],
            )?,
            pool_max_connections: IntGauge::new(
                "datastorage_db_pool_max_connections",
                "The PostgreSQL pool's maximum number of connections",
            )?,
            store_ready: StoreReady(IntGaugeVec::new(
                Opts::new(
                    "datastorage_store_ready",
                    "1 while the DataStorage is Ready for writes, 0 while not (absent until it is seen)",
                ),
                &[] as &[&str],
            )?),
            audits_rejected: IntCounter::new(
                "datastorage_audits_rejected_total",
                "RemediationAudits rejected (records that were not stored)",
            )?,
            build_info: IntGaugeVec::new(
                Opts::new(
                    "datastorage_build_info",
                    "The operator's version and git commit (always 1)",
                ),
                &["version", "git_commit"],
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
        m.registry
            .register(Box::new(m.redacted_at_admission.clone()))?;
        m.registry.register(Box::new(m.admission_reviews.clone()))?;
        m.registry.register(Box::new(m.specs_redacted.clone()))?;
        m.registry.register(Box::new(m.leader.clone()))?;
        m.registry.register(Box::new(m.pool_connections.clone()))?;
        m.registry
            .register(Box::new(m.pool_max_connections.clone()))?;
        m.registry.register(Box::new(m.store_ready.0.clone()))?;
        m.registry
            .register(Box::new(m.reconcile_queue_depth.clone()))?;
        m.registry.register(Box::new(m.audits_rejected.clone()))?;
        m.registry.register(Box::new(m.build_info.clone()))?;
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, … (Linux /proc).
        #[cfg(target_os = "linux")]
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        m.build_info
            .with_label_values(&[VERSION, GIT_COMMIT])
            .set(1);
        m.preinitialise();
        m.registry.register(Box::new(m.watch_errors.clone()))?;
        m.registry
            .register(Box::new(m.undecodable_objects.clone()))?;
        m.registry.register(Box::new(m.prepare_total.clone()))?;
        m.registry.register(Box::new(m.embedding_recheck.clone()))?;
        m.registry.register(Box::new(m.events_dropped.clone()))?;
        Ok(m)
    }

    /// Creates every child of a closed label set at 0 (see the module comment).
    fn preinitialise(&self) {
        for (table, status) in WRITE_SERIES {
            self.write_total.with_label_values(&[table, status]);
        }
        self.write_duration.with_label_values(&["audits"]);
        self.dualwrite_failure.with_label_values(&["timeout"]);
        for op in QUERY_OPERATIONS {
            self.query_duration.with_label_values(&[op]);
            for status in QUERY_STATUSES {
                self.query_total.with_label_values(&[op, status]);
            }
        }
        for c in CONTROLLERS {
            self.reconcile_duration.with_label_values(&[c]);
            for result in ["success", "error"] {
                self.reconcile_total.with_label_values(&[c, result]);
            }
        }
        for kind in SecretKind::ALL {
            self.redactions.with_label_values(&[kind.as_str()]);
            self.redacted_at_admission
                .with_label_values(&[kind.as_str()]);
        }
        for v in crate::admission::Verdict::ALL {
            self.admission_reviews.with_label_values(&[v.as_str()]);
        }
        for e in ADMISSION_ERRORS {
            self.admission_reviews.with_label_values(&[e]);
        }
        for result in [
            "stored",
            "pending",
            "unavailable",
            "disabled",
            "missing",
            "failed",
        ] {
            self.embedding_recheck.with_label_values(&[result]);
        }
    }

    /// Counts one audit committed without its vector, in the one counter of its cause (module comment):
    /// `timeout` → `datastorage_dualwrite_failure_total{reason="timeout"}`, any other reason (the provider
    /// failed) → `datastorage_fallback_mode_total`.
    pub fn count_row_only(&self, reason: &str) {
        match reason {
            "timeout" => self.dualwrite_failure.with_label_values(&["timeout"]).inc(),
            _ => self.fallback_mode.inc(),
        }
    }

    /// Counts an AdmissionReview the webhook could not answer (`e` one of [`ADMISSION_ERRORS`]).
    pub fn admission_error(&self, e: &'static str) {
        self.admission_reviews.with_label_values(&[e]).inc();
    }

    /// Counts one rejected audit and each of its `(field, reason)` failures.
    pub fn count_rejection<'a>(&self, failures: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.audits_rejected.inc();
        for (field, reason) in failures {
            self.validation_failures
                .with_label_values(&[field, reason])
                .inc();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(m: &Metrics) -> Vec<String> {
        m.render().lines().map(String::from).collect()
    }

    #[test]
    fn closed_label_sets_are_exported_at_zero_before_the_first_event() {
        let m = Metrics::new().unwrap();
        let text = lines(&m);
        let has = |l: &str| text.iter().any(|t| t == l);
        for l in [
            r#"datastorage_write_total{status="failure",table="audits"} 0"#,
            r#"datastorage_write_total{status="success",table="audit_history"} 0"#,
            r#"datastorage_query_total{operation="search",status="server_error"} 0"#,
            r#"datastorage_query_total{operation="list",status="success"} 0"#,
            r#"datastorage_query_duration_seconds_count{operation="get"} 0"#,
            r#"datastorage_reconcile_total{controller="remediationaudit",result="error"} 0"#,
            r#"datastorage_reconcile_duration_seconds_count{controller="datastorage"} 0"#,
            r#"datastorage_redactions_total{kind="pem_private_key"} 0"#,
            r#"datastorage_dualwrite_failure_total{reason="timeout"} 0"#,
            "datastorage_audits_rejected_total 0",
            "datastorage_db_pool_max_connections 0",
        ] {
            assert!(has(l), "{l} missing");
        }
        let redactions = text
            .iter()
            .filter(|l| l.starts_with("datastorage_redactions_total{"))
            .count();
        assert_eq!(redactions, SecretKind::ALL.len());
        // No unbounded cross product, and no store readiness before the DataStorage is seen.
        assert!(
            !text
                .iter()
                .any(|l| l.starts_with("datastorage_validation_failures_total{"))
        );
        assert!(
            !text
                .iter()
                .any(|l| l.starts_with("datastorage_store_ready"))
        );
        assert!(!text.iter().any(|l| l.contains(r#"state="max""#)));
        m.store_ready.set(0);
        assert!(lines(&m).iter().any(|l| l == "datastorage_store_ready 0"));
    }

    #[test]
    fn build_info_and_process_metrics_are_exported() {
        let m = Metrics::new().unwrap();
        let text = m.render();
        assert!(
            text.contains(&format!(
                r#"datastorage_build_info{{git_commit="{GIT_COMMIT}",version="{VERSION}"}} 1"#
            )),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }

    #[test]
    fn each_row_only_write_counts_in_exactly_one_counter() {
        let m = Metrics::new().unwrap();
        m.count_row_only("timeout");
        m.count_row_only("timeout");
        m.count_row_only("provider_error");
        assert_eq!(m.dualwrite_failure.with_label_values(&["timeout"]).get(), 2);
        assert_eq!(m.fallback_mode.get(), 1);
        assert!(!m.render().contains(r#"reason="provider_error""#));
    }

    #[test]
    fn a_rejection_counts_one_audit_and_each_field() {
        let m = Metrics::new().unwrap();
        m.count_rejection([("severity", "required"), ("actionType", "invalid")]);
        assert_eq!(m.audits_rejected.get(), 1);
        assert_eq!(
            m.validation_failures
                .with_label_values(&["actionType", "invalid"])
                .get(),
            1
        );
    }
}
