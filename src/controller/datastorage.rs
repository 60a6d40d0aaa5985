//! The DataStorage controller: turns the cluster's `DataStorage` resource into a live [`StoreRuntime`] and tells,
//! condition by condition, what state the database is in.
//!
//! Each reconcile runs typed steps, each failure ([`StepError`]) mapped to one condition and reason: read the
//! database URL from the referenced Secret and connect (`DatabaseReachable`) → check PostgreSQL and pgvector
//! versions (`VersionsSupported`, blocking writes when False) → apply migrations and create monthly history
//! partitions (`SchemaReady`) → check the HNSW index (`IndexReady`) and `maintenance_work_mem` (`MemoryAdequate`,
//! a warning) → build the embedder (`EmbeddingReady`) → publish the runtime to the audit controller and the query
//! API → write the status, whose `Ready` condition summarizes the others (for `kubectl wait --for=condition=Ready`,
//! kstatus, Argo CD and Flux). It runs again every minute (or sooner while something is wrong), so fixing a Secret
//! or the database recovers without a restart.

mod steps;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use super::MANAGER;
use crate::audit::SanitizeConfig;
use crate::audit::sanitize::HtmlPolicy;
use crate::audit::status::set_condition;
use crate::crd::{
    Condition, DataStorage, DataStorageSpec, DataStorageStatus, EmbeddingProvider, HtmlPolicySpec,
    StorePhase, VectorElementType, parse_duration,
};
use crate::embed::{self, Embedder};
use crate::metrics::Metrics;
use crate::runtime::StoreRuntime;
use crate::store::Store;
use crate::store::batch::WriteBatcher;
pub use steps::StepError;

const CONTROLLER: &str = "datastorage";
const RECHECK_OK: Duration = Duration::from_secs(60);
const RECHECK_PROBLEM: Duration = Duration::from_secs(5);

/// State of the DataStorage controller.
pub struct DsContext {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub embed_metrics: embed::EmbedMetrics,
    /// Directory of the baked-in model, used when the spec names none.
    pub default_model_dir: Option<String>,
    pub publish: watch::Sender<Option<Arc<StoreRuntime>>>,
    /// The store (with its write batcher) and embedder built for the current settings, reused while they do not
    /// change.
    cache: Mutex<Cached>,
    /// Set while an HNSW index rebuild runs in the background.
    index_rebuild: Arc<AtomicBool>,
    /// Whether this replica holds the leader Lease: only the leader migrates, rebuilds, purges and writes status.
    leader: watch::Receiver<bool>,
}

#[derive(Default)]
struct Cached {
    store_key: Option<String>,
    store: Option<(Store, WriteBatcher)>,
    embed_key: Option<String>,
    embedder: Option<Arc<dyn Embedder>>,
}

impl DsContext {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        embed_metrics: embed::EmbedMetrics,
        default_model_dir: Option<String>,
        publish: watch::Sender<Option<Arc<StoreRuntime>>>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client,
            metrics,
            embed_metrics,
            default_model_dir,
            publish,
            cache: Mutex::new(Cached::default()),
            index_rebuild: Arc::new(AtomicBool::new(false)),
            leader,
        }
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs the controller for the DataStorage named `name` until shutdown.
///
/// Deleting the DataStorage stops writes and reads: the controller only reconciles objects that exist, so a
/// watch of the same object withdraws the published runtime on its deletion, and a reconcile that finds it gone
/// (a deletion missed across a watch restart) or being deleted does the same. Without this the last runtime
/// stayed published and writes went on against a store nobody had configured any more (issue 21).
pub async fn run(ctx: Arc<DsContext>, name: String, shutdown: tokio_util::sync::CancellationToken) {
    let api: Api<DataStorage> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let deletions = {
        let ctx = ctx.clone();
        watcher(api.clone(), config.clone())
            .default_backoff()
            .for_each(move |event| {
                if let Ok(watcher::Event::Delete(ds)) = event {
                    withdraw(&ctx, &ds.name_any(), "was deleted");
                }
                std::future::ready(())
            })
    };
    let controller = {
        let ctx = ctx.clone();
        Controller::new(api, config)
            .graceful_shutdown_on(shutdown.cancelled_owned())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(move |result| {
                if let Err(kube::runtime::controller::Error::ObjectNotFound(obj)) = result {
                    withdraw(&ctx, &obj.name, "no longer exists");
                }
                std::future::ready(())
            })
    };
    tokio::select! {
        () = controller => {}
        () = deletions => {}
    }
}

/// Withdraws the published runtime: the audit controller stops writing (audits wait, then go on once a
/// DataStorage is back), the query API answers 503 and `/readyz` fails.
fn withdraw(ctx: &DsContext, name: &str, why: &str) {
    let had = ctx.publish.send_replace(None).is_some();
    ctx.metrics.store_ready.set(0);
    if had {
        warn!(datastorage = %name, "DataStorage {why}: writes and queries stop until it is back");
    }
}

fn error_policy(_: Arc<DataStorage>, err: &Error, _: Arc<DsContext>) -> Action {
    warn!(error = %err, "DataStorage reconcile failed");
    Action::requeue(RECHECK_PROBLEM)
}

/// Condition results gathered during one reconcile.
pub(crate) struct Checks {
    conditions: Vec<Condition>,
    generation: Option<i64>,
    now: String,
}

impl Checks {
    fn new(ds: &DataStorage) -> Self {
        Self {
            conditions: ds
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default(),
            generation: ds.metadata.generation,
            now: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        }
    }

    fn set(&mut self, type_: &str, ok: bool, reason: &str, message: impl Into<String>) {
        set_condition(
            &mut self.conditions,
            Condition {
                type_: type_.to_string(),
                status: if ok { "True" } else { "False" }.to_string(),
                reason: reason.to_string(),
                message: message.into(),
                last_transition_time: self.now.clone(),
                observed_generation: self.generation,
            },
        );
    }

    /// A condition that holds.
    fn pass(&mut self, type_: &str, reason: &str, message: impl Into<String>) {
        self.set(type_, true, reason, message);
    }

    /// A step's failure, as its condition and reason.
    fn fail(&mut self, e: &StepError) {
        self.set(e.condition(), false, e.reason(), e.to_string());
    }

    fn is_true(&self, type_: &str) -> bool {
        self.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    }
}

async fn reconcile(ds: Arc<DataStorage>, ctx: Arc<DsContext>) -> Result<Action, Error> {
    super::instrumented(&ctx.metrics, CONTROLLER, reconcile_inner(&ds, &ctx)).await
}

async fn reconcile_inner(ds: &DataStorage, ctx: &DsContext) -> Result<Action, Error> {
    if ds.metadata.deletion_timestamp.is_some() {
        withdraw(ctx, &ds.name_any(), "is being deleted");
        return Ok(Action::await_change());
    }
    let mut checks = Checks::new(ds);
    let mut status = DataStorageStatus {
        observed_generation: ds.metadata.generation,
        ..ds.status.clone().unwrap_or_default()
    };
    let db = steps::database(ctx, &ds.spec, &mut checks, &mut status).await;
    let embedder = steps::embedder(ctx, ds, &mut checks).await;

    // Publish what the audit controller and the query API should use now.
    let runtime = db.map(|db| Arc::new(runtime(&ds.spec, db, embedder)));
    let ready = runtime.as_ref().is_some_and(|r| r.writable.is_ok());
    ctx.metrics.store_ready.set(i64::from(ready));
    ctx.publish.send_replace(runtime);

    let phase = phase(&checks);
    summarize(&mut checks, phase);
    status.phase = Some(phase);
    status.conditions = checks.conditions;
    if ds.status.as_ref() != Some(&status) && ctx.is_leader() {
        write_status(ctx, ds, &status).await?;
    }
    Ok(Action::requeue(if phase == StorePhase::Ready {
        RECHECK_OK
    } else {
        RECHECK_PROBLEM
    }))
}

async fn write_status(
    ctx: &DsContext,
    ds: &DataStorage,
    status: &DataStorageStatus,
) -> Result<(), Error> {
    let api: Api<DataStorage> = Api::all(ctx.client.clone());
    let patch = json!({
        "apiVersion": "datastorage.kubernaut.ai/v1alpha1",
        "kind": "DataStorage",
        "status": status,
    });
    api.patch_status(
        &ds.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    info!(phase = ?status.phase, "DataStorage status updated");
    Ok(())
}

/// The reachable database of one reconcile.
pub(crate) struct Db {
    store: Store,
    writer: WriteBatcher,
    /// `Err(why)` while writes are blocked (old versions, schema not ready).
    writable: Result<(), String>,
}

fn runtime(spec: &DataStorageSpec, db: Db, embedder: Option<Arc<dyn Embedder>>) -> StoreRuntime {
    StoreRuntime {
        store: db.store,
        writer: db.writer,
        sanitize: SanitizeConfig {
            redact_secrets: spec.sanitization.redact_secrets,
            html: match spec.sanitization.html {
                HtmlPolicySpec::Strip => HtmlPolicy::Strip,
                HtmlPolicySpec::Reject => HtmlPolicy::Reject,
            },
        },
        embedder,
        embeddings_enabled: spec.embedding.provider != EmbeddingProvider::Disabled,
        embed_timeout: parse_duration(&spec.embedding.timeout)
            .unwrap_or(Duration::from_millis(200)),
        writable: db.writable,
        cr_ttl: spec
            .retention
            .cr_ttl_after_persisted
            .as_deref()
            .and_then(|t| parse_duration(t).ok()),
        ef_search: spec.vector_index.ef_search,
        halfvec: spec.vector_index.element_type == VectorElementType::Halfvec,
    }
}

/// The conditions the phase and `Ready` summarize, in order.
const SUMMARIZED: [&str; 5] = [
    "DatabaseReachable",
    "VersionsSupported",
    "SchemaReady",
    "IndexReady",
    "EmbeddingReady",
];

/// The summary phase: Failed when the database cannot be used, Progressing while the schema is being prepared,
/// Degraded when writes work but the index or embeddings do not, Ready otherwise.
fn phase(checks: &Checks) -> StorePhase {
    if !checks.is_true("DatabaseReachable") || !checks.is_true("VersionsSupported") {
        StorePhase::Failed
    } else if !checks.is_true("SchemaReady") {
        StorePhase::Progressing
    } else if !checks.is_true("IndexReady") || !checks.is_true("EmbeddingReady") {
        StorePhase::Degraded
    } else {
        StorePhase::Ready
    }
}

/// The `Ready` condition: True in phase Ready; otherwise False with the phase as reason and the failing
/// conditions as message. (`MemoryAdequate` is a warning and never makes the store unready.)
fn summarize(checks: &mut Checks, phase: StorePhase) {
    if phase == StorePhase::Ready {
        return checks.pass(
            "Ready",
            "Ready",
            "the store is ready for writes and searches",
        );
    }
    let failing: Vec<String> = SUMMARIZED
        .iter()
        .filter(|t| !checks.is_true(t))
        .map(|t| {
            let reason = checks
                .conditions
                .iter()
                .find(|c| c.type_ == **t)
                .map_or("Unknown", |c| c.reason.as_str());
            format!("{t}: {reason}")
        })
        .collect();
    let reason = format!("{phase:?}");
    checks.set("Ready", false, &reason, failing.join("; "));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(failing: &[(&str, &str)]) -> Checks {
        let mut c = Checks {
            conditions: Vec::new(),
            generation: Some(1),
            now: "2026-06-01T00:00:00Z".into(),
        };
        for t in SUMMARIZED {
            match failing.iter().find(|(f, _)| *f == t) {
                Some((_, reason)) => c.set(t, false, reason, "x"),
                None => c.pass(t, "Fine", "x"),
            }
        }
        c
    }

    fn ready(c: &Checks) -> (String, String, String) {
        let r = c.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (r.status.clone(), r.reason.clone(), r.message.clone())
    }

    #[test]
    fn ready_summarizes_the_phase_and_names_what_fails() {
        for (failing, want_phase, want) in [
            (
                vec![],
                StorePhase::Ready,
                (
                    "True",
                    "Ready",
                    "the store is ready for writes and searches",
                ),
            ),
            (
                vec![("IndexReady", "Rebuilding")],
                StorePhase::Degraded,
                ("False", "Degraded", "IndexReady: Rebuilding"),
            ),
            (
                vec![("SchemaReady", "MigrationFailed")],
                StorePhase::Progressing,
                ("False", "Progressing", "SchemaReady: MigrationFailed"),
            ),
            (
                vec![
                    ("DatabaseReachable", "SecretNotFound"),
                    ("EmbeddingReady", "ProviderUnavailable"),
                ],
                StorePhase::Failed,
                (
                    "False",
                    "Failed",
                    "DatabaseReachable: SecretNotFound; EmbeddingReady: ProviderUnavailable",
                ),
            ),
        ] {
            let mut c = checks(&failing);
            let p = phase(&c);
            assert_eq!(p, want_phase, "{failing:?}");
            summarize(&mut c, p);
            let (s, r, m) = ready(&c);
            assert_eq!((s.as_str(), r.as_str(), m.as_str()), want, "{failing:?}");
        }
    }
}
