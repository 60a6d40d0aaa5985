//! The two controllers.
//!
//! The DataStorage controller ([`datastorage`]) turns the cluster's `DataStorage` resource into a
//! [`StoreRuntime`](crate::runtime::StoreRuntime) and publishes it; the RemediationAudit controller ([`audit`])
//! reads the current runtime on every reconcile (see [`crate::runtime`]).

pub mod audit;
pub mod datastorage;

use crate::metrics::Metrics;
pub use crate::runtime::MANAGER;

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
