//! The RemediationAudit controller: one audit's journey from the API server to PostgreSQL, top to bottom.
//!
//! 1. A malformed object (one that does not even deserialize) is marked `Rejected` and left until it changes.
//! 2. Deletion: the finalizer records `deleted_at` on the stored audit (never deletes it), then lets go.
//! 3. Nothing to do when the observed generation is already settled.
//! 4. `prepare` (pure): validate → sanitize → canonical record, content hash, embedding text.
//! 5. Embed within the time budget (cache hit or fast model); on failure or timeout the row goes alone.
//! 6. Write one transaction (current row, history entry with hash chain, vector when ready).
//! 7. Status by server-side apply, only when it changed; database errors → `Retrying` with exponential backoff.
//! 8. Optionally delete the CR once it has been persisted for `retention.crTtlAfterPersisted`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::{Context, MANAGER, StoreRuntime};
use crate::audit::status::{self, Outcome};
use crate::audit::validate::{FieldError, Reason};
use crate::audit::{AuditMeta, Prepared, prepare};
use crate::crd::{AuditState, EmbeddingState, RemediationAudit, RemediationAuditStatus};
use crate::store::{EmbeddingRow, StoreError, StoredAudit, WriteOutcome};

/// Finalizer that marks the stored audit deleted when its resource goes.
pub const FINALIZER: &str = "datastorage.kubernaut.ai/audit";
/// Set on a resource the operator deletes because its TTL after persistence passed.
pub const EXPIRED_ANNOTATION: &str = "datastorage.kubernaut.ai/expired";
const CONTROLLER: &str = "remediationaudit";
/// How often a persisted audit whose vector is still pending is looked at again.
const EMBEDDING_RECHECK: Duration = Duration::from_secs(15);
/// How often an audit rejected as a duplicate is tried again (the holder may be deleted meanwhile).
pub const DUPLICATE_RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the store is not ready: {0}")]
    NotReady(String),
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
}

/// The watch cache of the RemediationAudit controller.
pub type AuditCache = Store<DeserializeGuard<RemediationAudit>>;

/// Runs the controller until the stream ends (shutdown).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let api: Api<DeserializeGuard<RemediationAudit>> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    // What `Controller::new` does, with each object trimmed before it enters the cache, plus a reconcile of every
    // cached object after each (re)list. When a watch cannot resume (410 Gone after an API server restart, say),
    // the watcher lists again: the objects of that list trigger reconciles while the cache still holds the old
    // list (the new one is swapped in at its end), so an object created during the gap is "not found in the local
    // store", dropped by the controller, and never reconciled until it changes again. The reconcile-all after the
    // swap picks it up; for settled objects it costs a cache read.
    let (reader, writer) = kube::runtime::reflector::store();
    let (relisted_tx, relisted) = futures::channel::mpsc::unbounded();
    let objects = reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()).modify(trim_for_cache),
    )
    .inspect_ok(move |event| {
        if matches!(event, watcher::Event::InitDone) {
            let _ = relisted_tx.unbounded_send(());
        }
    })
    .applied_objects();
    let _published = ctx.publish_audit_cache(reader.clone());
    Controller::for_stream(objects, reader)
        .reconcile_all_on(relisted)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "reconcile stream");
            }
        })
        .await;
}

/// What the watch cache keeps of each RemediationAudit: everything the reconciler reads, without the server-side
/// apply bookkeeping (`managedFields`: one entry per writer, each a parsed JSON tree of field names) and kubectl's
/// last-applied copy of the object. Neither is read here; dropping them saved several KB of operator RSS per cached
/// audit in the load test of tests/it/faults.rs (98.6 → 85.7 MB at 2,000 audits).
pub fn trim_for_cache(obj: &mut DeserializeGuard<RemediationAudit>) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Whether the controller has nothing left to do for this object: its current generation is `Persisted` or
/// `Rejected` and it is not being deleted. (Malformed objects are rejected once and count as settled.)
pub fn is_settled(obj: &DeserializeGuard<RemediationAudit>) -> bool {
    let Ok(ra) = &obj.0 else {
        return true;
    };
    if ra.meta().deletion_timestamp.is_some() {
        return !ra.finalizers().iter().any(|f| f == FINALIZER);
    }
    ra.status.as_ref().is_some_and(|s| {
        s.observed_generation == ra.meta().generation
            && matches!(s.state, Some(AuditState::Persisted | AuditState::Rejected))
    })
}

/// One reconcile of one object.
pub async fn reconcile(
    obj: Arc<DeserializeGuard<RemediationAudit>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    super::instrumented(&ctx.metrics, CONTROLLER, reconcile_inner(&obj, &ctx)).await
}

async fn reconcile_inner(
    obj: &DeserializeGuard<RemediationAudit>,
    ctx: &Context,
) -> Result<Action, Error> {
    // 1. Malformed objects.
    let ra = match &obj.0 {
        Ok(ra) => ra,
        Err(invalid) => return reject_malformed(invalid, ctx).await,
    };
    let namespace = ra.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<RemediationAudit> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = format!("{namespace}/{}", ra.name_any());

    // 2. Deletion.
    if ra.meta().deletion_timestamp.is_some() {
        return finalize(ra, &api, ctx).await;
    }
    // A cached object older than this replica's own last status write: the newer version (and its event) is on
    // its way; reconciling this one would write the same generation and status a second time.
    if let Some(uid) = ra.uid()
        && ctx.behind_own_write(&uid, ra.resource_version().as_deref())
    {
        debug!(audit = %key, "the cache is behind this replica's own write; waiting for the newer version");
        return Ok(Action::await_change());
    }
    // Without our finalizer this is the object's first reconcile: nothing of it can be stored yet.
    let seen_before = ra.finalizers().iter().any(|f| f == FINALIZER);
    if !seen_before {
        add_finalizer(ra, &api).await?;
    }

    // 3. Already settled?
    let generation = ra.meta().generation;
    let current = ra.status.as_ref();
    if let Some(s) = current
        && s.observed_generation == generation
    {
        match s.state {
            // A duplicate remediationRequestId is looked at again (its holder may have gone); other rejections
            // wait for a spec change.
            Some(AuditState::Rejected) if !status::rejected_as_duplicate(s) => {
                return Ok(Action::await_change());
            }
            Some(AuditState::Persisted)
                if !matches!(
                    s.embedding,
                    Some(EmbeddingState::Pending | EmbeddingState::Unavailable)
                ) =>
            {
                return after_persisted(ra, &api, ctx).await;
            }
            _ => {}
        }
    }

    let Some(rt) = ctx.current_runtime() else {
        let msg = "the DataStorage is not ready yet (see `kubectl get dstore`)".to_string();
        set_status(
            ra,
            &api,
            ctx,
            &Outcome::Retrying {
                reason: "StoreNotReady",
                message: msg.clone(),
            },
        )
        .await?;
        return Err(Error::NotReady(msg));
    };
    if let Err(msg) = &rt.writable {
        set_status(
            ra,
            &api,
            ctx,
            &Outcome::Retrying {
                reason: "StoreNotWritable",
                message: msg.clone(),
            },
        )
        .await?;
        return Err(Error::NotReady(msg.clone()));
    }

    // 4. Validate and sanitize (pure).
    let meta = AuditMeta {
        uid: ra.uid().ok_or(Error::MissingMetadata("uid"))?,
        namespace: namespace.clone(),
        name: ra.name_any(),
        generation: generation.unwrap_or(1),
    };
    let prepared = match prepare(&meta, &ra.spec, rt.sanitize, Utc::now()) {
        Ok(p) => p,
        Err(errors) => {
            count_rejections(ctx, &errors);
            set_status(ra, &api, ctx, &Outcome::Rejected { errors }).await?;
            return Ok(Action::await_change());
        }
    };

    // 5. Already stored? A reconcile that runs before the status of the write that stored this generation is seen
    //    (the finalizer's own watch event, a pending-vector recheck) takes the stored audit instead of embedding
    //    and writing again. (A failed lookup only means writing again: the write path handles replays.)
    let already = if seen_before {
        rt.store
            .stored_audit(&meta.uid)
            .await
            .ok()
            .flatten()
            .filter(|s| s.generation >= meta.generation)
    } else {
        None
    };
    let prepared = Arc::new(prepared);
    let outcome = match already {
        Some(stored) => stored,
        None => match embed_and_write(ra, &api, &rt, &prepared, ctx, &key).await? {
            Some(stored) => stored,
            None => return Ok(Action::requeue(DUPLICATE_RECHECK)),
        },
    };
    ctx.reset_backoff(&key);

    // 6. Status.
    let embedding_state = match (
        rt.embeddings_enabled,
        &rt.embedder,
        outcome.embedding_stored,
    ) {
        (_, _, true) => EmbeddingState::Stored,
        (false, _, false) => EmbeddingState::Disabled,
        (true, None, false) => EmbeddingState::Unavailable,
        (true, Some(_), false) => EmbeddingState::Pending,
    };
    let persisted = Outcome::Persisted {
        audit_id: outcome.audit_id,
        content_hash: outcome.content_hash,
        chain_hash: outcome.chain_hash,
        persisted_at: outcome
            .persisted_at
            .to_rfc3339_opts(SecondsFormat::Secs, true),
        embedding: embedding_state,
        redactions: prepared.redactions.len(),
        markup_removed: prepared.markup_removed,
    };
    set_status(ra, &api, ctx, &persisted).await?;
    if matches!(
        embedding_state,
        EmbeddingState::Pending | EmbeddingState::Unavailable
    ) {
        return Ok(Action::requeue(EMBEDDING_RECHECK));
    }
    // 7. TTL.
    after_persisted(ra, &api, ctx).await
}

/// Embeds (within the runtime's budget) and writes one new generation. `None`: rejected as a duplicate (status
/// already set).
async fn embed_and_write(
    ra: &RemediationAudit,
    api: &Api<RemediationAudit>,
    rt: &StoreRuntime,
    prepared: &Arc<Prepared>,
    ctx: &Context,
    key: &str,
) -> Result<Option<StoredAudit>, Error> {
    // Embed within the budget.
    let embedding = embed_in_budget(rt, prepared, ctx).await;
    let has_vector = embedding.is_some();

    // One transaction.
    let timer = ctx
        .metrics
        .write_duration
        .with_label_values(&["audits"])
        .start_timer();
    // (Group commit: audits reconciled at the same time share one transaction; see store::batch.)
    let written = rt.writer.write(prepared.clone(), embedding).await;
    timer.observe_duration();
    Ok(Some(match written {
        Err(e) => {
            ctx.metrics
                .write_total
                .with_label_values(&["audits", "failure"])
                .inc();
            warn!(audit = %key, error = %e, "write failed; will retry");
            set_status(
                ra,
                api,
                ctx,
                &Outcome::Retrying {
                    reason: "DatabaseError",
                    message: e.to_string(),
                },
            )
            .await?;
            return Err(Error::Store(e));
        }
        Ok(WriteOutcome::Duplicate { namespace, name }) => {
            let errors = vec![FieldError::new(
                "remediationRequestId",
                Reason::Duplicate,
                format!(
                    "{:?} is already stored for RemediationAudit {namespace}/{name}",
                    prepared.record.remediation_request_id
                ),
            )];
            // Counted once, not at every re-evaluation of the same generation.
            let again = ra.status.as_ref().is_some_and(|s| {
                s.observed_generation == ra.meta().generation && status::rejected_as_duplicate(s)
            });
            if !again {
                count_rejections(ctx, &errors);
            }
            set_status(ra, api, ctx, &Outcome::Rejected { errors }).await?;
            return Ok(None);
        }
        Ok(WriteOutcome::Stored(stored)) => {
            record_write(ctx, prepared, has_vector, true);
            info!(audit = %key, id = stored.audit_id, generation = stored.generation, "stored");
            stored
        }
        Ok(WriteOutcome::Unchanged(stored)) => {
            ctx.metrics
                .write_total
                .with_label_values(&["audits", "unchanged"])
                .inc();
            stored
        }
    }))
}

/// Tries to get the audit's vector within the runtime's time budget. `None` means "store the row alone".
///
/// The embedding runs as its own task: when the budget runs out the row is stored alone, but the vector is still
/// computed and lands in the embedding cache, where the backfill finds it instead of computing it again.
async fn embed_in_budget(
    rt: &StoreRuntime,
    prepared: &Prepared,
    ctx: &Context,
) -> Option<EmbeddingRow> {
    let embedder = rt.embedder.clone()?;
    ctx.note_write_embedding();
    let texts = [prepared.embedding_text.clone()];
    let model_id = embedder.model_id().to_string();
    let task = tokio::spawn(async move { embedder.embed(&texts).await });
    let reason = match tokio::time::timeout(rt.embed_timeout, task).await {
        Ok(Ok(Ok(mut vectors))) if vectors.len() == 1 => {
            let vector = vectors.pop().unwrap_or_default();
            return Some(EmbeddingRow { model_id, vector });
        }
        Ok(Ok(Ok(_))) => "provider_error",
        Ok(Ok(Err(e))) => {
            debug!(error = %e, "embedding failed; storing the row alone");
            "provider_error"
        }
        Ok(Err(e)) => {
            warn!(error = %e, "embedding task failed; storing the row alone");
            "provider_error"
        }
        Err(_) => "timeout",
    };
    ctx.metrics.count_row_only(reason);
    None
}

fn record_write(ctx: &Context, prepared: &Prepared, has_vector: bool, stored: bool) {
    let m = &ctx.metrics;
    m.write_total
        .with_label_values(&["audits", "success"])
        .inc();
    m.write_total
        .with_label_values(&["audit_history", "success"])
        .inc();
    if has_vector && stored {
        m.write_total
            .with_label_values(&["audit_embeddings", "success"])
            .inc();
        m.dualwrite_success.inc();
    }
    for r in &prepared.redactions {
        m.redactions.with_label_values(&[r.kind.as_str()]).inc();
    }
}

fn count_rejections(ctx: &Context, errors: &[FieldError]) {
    ctx.metrics
        .count_rejection(errors.iter().map(|e| (e.field.as_str(), e.reason.as_str())));
}

/// Applies the status computed for `outcome`, unless it equals the current one.
/// Applies the status computed for `outcome`, unless it equals the current one, and remembers the version it
/// produced (see [`Context::behind_own_write`]).
async fn set_status(
    ra: &RemediationAudit,
    api: &Api<RemediationAudit>,
    ctx: &Context,
    outcome: &Outcome,
) -> Result<(), Error> {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let new = status::compute(ra.status.as_ref(), ra.meta().generation, outcome, &now);
    if ra.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let written = apply_status(api, &ra.name_any(), &new).await?;
    if let Some(uid) = ra.uid() {
        ctx.note_own_write(&uid, written.resource_version().as_deref());
    }
    Ok(())
}

async fn apply_status(
    api: &Api<RemediationAudit>,
    name: &str,
    status: &RemediationAuditStatus,
) -> Result<RemediationAudit, Error> {
    let patch = json!({
        "apiVersion": "datastorage.kubernaut.ai/v1alpha1",
        "kind": "RemediationAudit",
        "status": status,
    });
    Ok(api
        .patch_status(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?)
}

/// An object whose spec does not deserialize: reject it once, wait for a change.
async fn reject_malformed(
    invalid: &kube::core::error_boundary::InvalidObject,
    ctx: &Context,
) -> Result<Action, Error> {
    let (Some(ns), Some(name)) = (
        invalid.metadata.namespace.as_deref(),
        invalid.metadata.name.as_deref(),
    ) else {
        return Ok(Action::await_change());
    };
    let errors = vec![FieldError::new(
        "spec",
        Reason::Invalid,
        format!("does not match the schema: {}", invalid.error),
    )];
    count_rejections(ctx, &errors);
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let status = status::compute(
        None,
        invalid.metadata.generation,
        &Outcome::Rejected { errors },
        &now,
    );
    let api: Api<RemediationAudit> = Api::namespaced(ctx.client.clone(), ns);
    apply_status(&api, name, &status).await?;
    Ok(Action::await_change())
}

async fn add_finalizer(ra: &RemediationAudit, api: &Api<RemediationAudit>) -> Result<(), Error> {
    set_finalizers(
        ra,
        api,
        ra.finalizers()
            .iter()
            .map(String::as_str)
            .chain([FINALIZER])
            .collect(),
    )
    .await
}

/// Replaces the finalizer list, conditional on the object's resourceVersion (a conflict retries the reconcile
/// instead of clobbering someone else's change).
async fn set_finalizers(
    ra: &RemediationAudit,
    api: &Api<RemediationAudit>,
    finalizers: Vec<&str>,
) -> Result<(), Error> {
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": ra.resource_version() } });
    match api
        .patch(
            &ra.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn remove_finalizer(ra: &RemediationAudit, api: &Api<RemediationAudit>) -> Result<(), Error> {
    set_finalizers(
        ra,
        api,
        ra.finalizers()
            .iter()
            .map(String::as_str)
            .filter(|f| *f != FINALIZER)
            .collect(),
    )
    .await
}

/// The resource is being deleted: mark the stored audit (if any) deleted, then release the finalizer.
async fn finalize(
    ra: &RemediationAudit,
    api: &Api<RemediationAudit>,
    ctx: &Context,
) -> Result<Action, Error> {
    if !ra.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let never_stored = ra.status.as_ref().is_none_or(|s| s.audit_id.is_none());
    let expired = ra
        .annotations()
        .get(EXPIRED_ANNOTATION)
        .is_some_and(|v| v == "true");
    if !never_stored && !expired {
        let Some(rt) = ctx.current_runtime() else {
            return Err(Error::NotReady(
                "cannot record the deletion: the DataStorage is not ready".into(),
            ));
        };
        let uid = ra.uid().ok_or(Error::MissingMetadata("uid"))?;
        rt.store.mark_deleted(&uid).await?;
    }
    remove_finalizer(ra, api).await?;
    Ok(Action::await_change())
}

/// Persisted and settled: delete the resource when its TTL has passed (the stored audit stays, not marked
/// deleted: only a user's deletion is recorded as one).
async fn after_persisted(
    ra: &RemediationAudit,
    api: &Api<RemediationAudit>,
    ctx: &Context,
) -> Result<Action, Error> {
    let Some(ttl) = ctx.current_runtime().and_then(|rt| rt.cr_ttl) else {
        return Ok(Action::await_change());
    };
    let persisted_at = ra
        .status
        .as_ref()
        .and_then(|s| s.persisted_at.as_deref())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let Some(persisted_at) = persisted_at else {
        return Ok(Action::await_change());
    };
    let age = Utc::now()
        .signed_duration_since(persisted_at)
        .to_std()
        .unwrap_or_default();
    if age < ttl {
        return Ok(Action::requeue(ttl - age + Duration::from_millis(500)));
    }
    // Mark the deletion as ours first, so the finalizer knows not to record it as the user's.
    let patch = json!({ "metadata": { "annotations": { EXPIRED_ANNOTATION: "true" } } });
    api.patch(
        &ra.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    match api.delete(&ra.name_any(), &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    info!(audit = %format!("{}/{}", ra.namespace().unwrap_or_default(), ra.name_any()), "deleted after TTL");
    Ok(Action::await_change())
}

/// Backoff on errors: 1 s doubling to 5 min per object.
pub fn error_policy(
    obj: Arc<DeserializeGuard<RemediationAudit>>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let key = match &obj.0 {
        Ok(ra) => format!("{}/{}", ra.namespace().unwrap_or_default(), ra.name_any()),
        Err(inv) => format!("{:?}/{:?}", inv.metadata.namespace, inv.metadata.name),
    };
    let delay = ctx.backoff(&key);
    debug!(audit = %key, error = %err, ?delay, "retrying");
    Action::requeue(delay)
}
