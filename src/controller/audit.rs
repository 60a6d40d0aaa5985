//! The RemediationAudit controller: one audit's journey from the API server to PostgreSQL.
//!
//! Each reconcile gathers the facts (the cached object, the current store runtime, this replica's own writes),
//! asks the pure [`decide`](decide::decide) what to do next, runs that one step and writes the result through the
//! one place that writes to the resource ([`apply`]):
//!
//! 1. An object that does not decode (see [`object`]) is rejected by name and left until it changes.
//! 2. Deletion: the finalizer records `deleted_at` on the stored audit (never deletes it), then lets go; only the
//!    operator's own TTL deletion, proven against the store, is not recorded.
//! 3. Nothing to do when the observed generation is already settled.
//! 4. [`write`](write::write): `prepare` (pure: validate → sanitize → canonical record, content hash, embedding
//!    text), embed within the time budget, one transaction (current row, history entry with hash chain, vector
//!    when ready). It returns what happened; the status follows from it.
//! 5. A persisted audit whose vector is missing is rechecked from the stored row alone, never re-prepared.
//! 6. Optionally delete the CR once it has been persisted for `retention.crTtlAfterPersisted`.

pub mod apply;
pub mod decide;
pub mod object;
pub mod write;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{debug, warn};

use crate::audit::AuditMeta;
use crate::audit::status::Outcome;
use crate::audit::validate::{FieldError, Reason};
use crate::crd::{AuditState, EmbeddingState};
use crate::runtime::{Context, StoreRuntime};
use crate::store::StoreError;
use apply::Target;
use decide::{Decision, Facts, Next, ObjectView, RecordDeletion, StoreView};
pub use object::AuditObject;
use write::{Rechecked, Written};

/// Finalizer that marks the stored audit deleted when its resource goes.
pub const FINALIZER: &str = "datastorage.kubernaut.ai/audit";
/// Set on a resource the operator deletes because its TTL after persistence passed.
pub const EXPIRED_ANNOTATION: &str = "datastorage.kubernaut.ai/expired";
const CONTROLLER: &str = "remediationaudit";

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
pub type AuditCache = Store<AuditObject>;

/// Runs the controller until the stream ends (shutdown).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let api: Api<AuditObject> = match &namespace {
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
    let health = ctx.clone();
    let objects = reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()).modify(trim_for_cache),
    )
    .inspect(move |event| match event {
        Ok(watcher::Event::InitDone) => {
            health.note_watch_ok();
            let _ = relisted_tx.unbounded_send(());
        }
        Ok(_) => health.note_watch_ok(),
        Err(e) => {
            warn!(error = %e, "RemediationAudit watch failed; retrying");
            health.note_watch_error();
        }
    })
    .applied_objects();
    let depth = reader.clone();
    let _published = ctx.publish_queue_depth(Box::new(move || queue_depth(&depth)));
    let _health = WatchHealthReset(ctx.clone());
    Controller::for_stream(objects, reader)
        .reconcile_all_on(relisted)
        .reconcile_all_on(sanitizer_changes(ctx.runtime.clone()))
        .graceful_shutdown_on(ctx.shutdown.clone().cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "reconcile stream");
            }
        })
        .await;
}

/// Fires when the store runtime appears or its sanitization settings change: settled audits are looked at again
/// then, so the sweep (a settled audit whose spec still holds secrets is redacted in place) also covers the objects
/// first reconciled before the DataStorage was ready. The runtime is republished on every DataStorage reconcile;
/// only a change of what the sweep depends on fires.
fn sanitizer_changes(
    rx: tokio::sync::watch::Receiver<Option<Arc<StoreRuntime>>>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let seen = rx.borrow().as_ref().map(|rt| rt.sanitize);
    futures::stream::unfold((rx, seen), |(mut rx, mut seen)| async move {
        loop {
            rx.changed().await.ok()?;
            let now = rx.borrow_and_update().as_ref().map(|rt| rt.sanitize);
            if now != seen {
                seen = now;
                return Some(((), (rx, seen)));
            }
        }
    })
}

/// Forgets the watch's failures when the controller stops (or is aborted on losing the Lease): a replica that does
/// not watch is not unready because of a watch it no longer runs.
struct WatchHealthReset(Arc<Context>);

impl Drop for WatchHealthReset {
    fn drop(&mut self) {
        self.0.note_watch_ok();
    }
}

/// RemediationAudits still to settle (see [`is_settled`]); 0 until the cache is synced (before its first full
/// list the cache is empty, not drained).
fn queue_depth(cache: &AuditCache) -> usize {
    use futures::FutureExt;
    let synced = cache
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok());
    if !synced {
        return 0;
    }
    cache.state().iter().filter(|o| !is_settled(o)).count()
}

/// What the watch cache keeps of each RemediationAudit: everything the reconciler reads, without the server-side
/// apply bookkeeping (`managedFields`: one entry per writer, each a parsed JSON tree of field names) and kubectl's
/// last-applied copy of the object. Neither is read here; dropping them saved several KB of operator RSS per cached
/// audit in the load test of tests/it/faults.rs (98.6 → 85.7 MB at 2,000 audits).
pub fn trim_for_cache(obj: &mut AuditObject) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn view(obj: &AuditObject) -> ObjectView<'_> {
    match obj {
        AuditObject::Audit(ra) => ObjectView {
            meta: ra.meta(),
            status: ra.status.as_ref(),
            undecodable: None,
        },
        AuditObject::Undecodable(u) => ObjectView {
            meta: &u.metadata,
            status: u.status.as_ref(),
            undecodable: Some(&u.error),
        },
    }
}

/// Whether the controller has nothing left to do for this object: its current generation is `Persisted` or
/// `Rejected` and it is not being deleted (an object waiting for its finalizer is not settled).
pub fn is_settled(obj: &AuditObject) -> bool {
    let v = view(obj);
    if v.meta.deletion_timestamp.is_some() {
        return !obj.finalizers().iter().any(|f| f == FINALIZER);
    }
    v.status.is_some_and(|s| {
        s.observed_generation == v.meta.generation
            && matches!(s.state, Some(AuditState::Persisted | AuditState::Rejected))
    })
}

/// One reconcile of one object.
pub async fn reconcile(obj: Arc<AuditObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::instrumented(&ctx.metrics, CONTROLLER, reconcile_inner(&obj, &ctx)).await
}

async fn reconcile_inner(obj: &AuditObject, ctx: &Context) -> Result<Action, Error> {
    let Some(target) = Target::new(ctx, obj) else {
        return Ok(Action::await_change());
    };
    let rt = ctx.current_runtime();
    let meta = obj.meta();
    let behind_own_write = meta
        .uid
        .as_deref()
        .is_some_and(|uid| ctx.behind_own_write(uid, meta.resource_version.as_deref()));
    let Decision {
        add_finalizer,
        next,
    } = decide::decide(&Facts {
        object: view(obj),
        store: rt.as_deref().map(StoreView::of),
        behind_own_write,
        now: Utc::now(),
    });
    if next == Next::Wait && behind_own_write {
        debug!(audit = %target.key(), "the cache is behind this replica's own write; waiting for the newer version");
    }
    if add_finalizer {
        apply::add_finalizer(&target).await?;
    }
    let settled = next == Next::Wait && is_settled(obj);
    let action = step(&target, next, rt.as_deref(), !add_finalizer, ctx).await?;
    // The sweep: a settled audit whose spec still holds secrets (admitted while the webhook was unreachable, or
    // before it existed) has them redacted in place. Every object is reconciled after each (re)list, so existing
    // CRs are cleaned once at start-up; the check is the pure sanitizer on the cached spec.
    if settled
        && let Some(rt) = rt.as_deref()
        && apply::holds_secrets(obj, rt.sanitize)
    {
        apply::redact_spec(&target, ctx, rt.sanitize).await?;
    }
    ctx.reset_backoff(&target.key());
    Ok(action)
}

/// Runs the step `decide` chose.
async fn step(
    t: &Target<'_>,
    next: Next,
    rt: Option<&StoreRuntime>,
    seen_before: bool,
    ctx: &Context,
) -> Result<Action, Error> {
    let not_ready = || Error::NotReady("the DataStorage is not ready".into());
    match next {
        Next::Wait => Ok(Action::await_change()),
        Next::RequeueAfter(d) => Ok(Action::requeue(d)),
        Next::RejectUndecodable => reject_undecodable(t, ctx).await,
        Next::DeferDeletion => Err(Error::NotReady(
            "cannot record the deletion: the DataStorage is not ready".into(),
        )),
        Next::Finalize(record) => finalize(t, record, rt).await,
        Next::Retry { reason, message } => {
            apply::set_status(
                t,
                ctx,
                &Outcome::Retrying {
                    reason,
                    message: message.clone(),
                },
            )
            .await?;
            Err(Error::NotReady(message))
        }
        Next::Write => write_current(t, rt.ok_or_else(not_ready)?, seen_before, ctx).await,
        Next::RecheckEmbedding => recheck(t, rt.ok_or_else(not_ready)?, ctx).await,
        Next::Expire => {
            apply::expire(t).await?;
            Ok(Action::await_change())
        }
    }
}

/// An object that does not decode: reject it by name, wait for a change.
async fn reject_undecodable(t: &Target<'_>, ctx: &Context) -> Result<Action, Error> {
    let AuditObject::Undecodable(u) = t.obj else {
        return Ok(Action::await_change());
    };
    ctx.metrics.undecodable_objects.inc();
    warn!(audit = %t.key(), error = %u.error, "rejecting a RemediationAudit that cannot be decoded");
    let errors = vec![FieldError::new(
        "spec",
        Reason::Invalid,
        format!("cannot be decoded: {}", u.error),
    )];
    apply::set_status(t, ctx, &Outcome::Rejected { errors }).await?;
    Ok(Action::await_change())
}

/// Writes the current generation and sets the status from what the write did.
async fn write_current(
    t: &Target<'_>,
    rt: &StoreRuntime,
    seen_before: bool,
    ctx: &Context,
) -> Result<Action, Error> {
    let AuditObject::Audit(ra) = t.obj else {
        return Ok(Action::await_change());
    };
    let meta = AuditMeta {
        uid: ra.uid().ok_or(Error::MissingMetadata("uid"))?,
        namespace: ra.namespace().ok_or(Error::MissingMetadata("namespace"))?,
        name: ra.name_any(),
        generation: ra.meta().generation.unwrap_or(1),
    };
    let (outcome, failed) = match write::write(ra, &meta, rt, ctx, seen_before).await {
        Written::Persisted {
            stored,
            embedding,
            redactions,
            markup_removed,
            redacted_at_admission,
        } => {
            let persisted = Outcome::Persisted {
                audit_id: stored.audit_id,
                content_hash: stored.content_hash,
                chain_hash: stored.chain_hash,
                persisted_at: stored
                    .persisted_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                embedding,
                redactions,
                markup_removed,
                redacted_at_admission,
            };
            (persisted, None)
        }
        Written::Invalid(errors) => (Outcome::Rejected { errors }, None),
        Written::Duplicate {
            request_id,
            holder_namespace,
            holder_name,
        } => (
            duplicate(&request_id, &holder_namespace, &holder_name),
            None,
        ),
        Written::Failed(e) => {
            let retrying = Outcome::Retrying {
                reason: "DatabaseError",
                message: e.to_string(),
            };
            (retrying, Some(e))
        }
    };
    apply::set_status(t, ctx, &outcome).await?;
    if let Some(e) = failed {
        return Err(Error::Store(e));
    }
    // Stored redacted; the resource's own spec still holds the secrets (no webhook at admission): redact it too.
    if let Outcome::Persisted {
        redactions,
        markup_removed,
        ..
    } = &outcome
        && (*redactions > 0 || *markup_removed)
    {
        apply::redact_spec(t, ctx, rt.sanitize).await?;
    }
    Ok(after_status(&outcome))
}

/// The status of a duplicate `remediationRequestId`.
fn duplicate(request_id: &str, holder_namespace: &str, holder_name: &str) -> Outcome {
    Outcome::Rejected {
        errors: vec![FieldError::new(
            "remediationRequestId",
            Reason::Duplicate,
            // The holder is always in the audit's own namespace (uniqueness is per clusterName + namespace);
            // its name is empty when it went away meanwhile (the next try stores this one).
            if holder_name.is_empty() {
                format!(
                    "{request_id:?} is already stored for another RemediationAudit of {holder_namespace}"
                )
            } else {
                format!(
                    "{request_id:?} is already stored for RemediationAudit {holder_namespace}/{holder_name}"
                )
            },
        )],
    }
}

/// After a status write: a persisted audit still missing its vector is looked at again; anything else
/// reconciles on its next event (the status write itself is one), where `decide` applies the TTL.
fn after_status(outcome: &Outcome) -> Action {
    match outcome {
        Outcome::Persisted {
            embedding: EmbeddingState::Pending | EmbeddingState::Unavailable,
            ..
        }
        | Outcome::Embedded(EmbeddingState::Pending | EmbeddingState::Unavailable) => {
            Action::requeue(decide::EMBEDDING_RECHECK)
        }
        Outcome::Rejected { errors } if errors.iter().any(|e| e.reason == Reason::Duplicate) => {
            Action::requeue(decide::DUPLICATE_RECHECK)
        }
        _ => Action::await_change(),
    }
}

/// A persisted audit whose vector was missing: the stored row says whether it arrived.
async fn recheck(t: &Target<'_>, rt: &StoreRuntime, ctx: &Context) -> Result<Action, Error> {
    let (uid, generation) = (t.obj.uid(), t.obj.meta().generation.unwrap_or(1));
    let uid = uid.ok_or(Error::MissingMetadata("uid"))?;
    match write::recheck_embedding(&uid, generation, rt, ctx).await {
        Rechecked::Embedding(state) => {
            let outcome = Outcome::Embedded(state);
            apply::set_status(t, ctx, &outcome).await?;
            Ok(after_status(&outcome))
        }
        Rechecked::Missing => write_current(t, rt, true, ctx).await,
        Rechecked::Failed(e) => Err(Error::Store(e)),
    }
}

/// The resource is being deleted: mark the stored audit deleted (unless told otherwise), release the finalizer.
async fn finalize(
    t: &Target<'_>,
    record: RecordDeletion,
    rt: Option<&StoreRuntime>,
) -> Result<Action, Error> {
    if record != RecordDeletion::No {
        let rt = rt.ok_or_else(|| Error::NotReady("the DataStorage is not ready".into()))?;
        let uid = t.obj.uid().ok_or(Error::MissingMetadata("uid"))?;
        let skip = record == RecordDeletion::UnlessOwnTtl && own_ttl_deletion(t, &uid, rt).await?;
        if skip {
            debug!(audit = %t.key(), "the operator's own TTL deletion: not recorded as a user's");
        } else {
            rt.store.mark_deleted(&uid).await?;
        }
    }
    apply::release_finalizer(t).await?;
    Ok(Action::await_change())
}

/// Whether a deletion carrying the expiry annotation is the operator's own, by the store's `persisted_at`.
async fn own_ttl_deletion(t: &Target<'_>, uid: &str, rt: &StoreRuntime) -> Result<bool, Error> {
    let Some(stored) = rt.store.stored_audit(uid).await? else {
        return Ok(false);
    };
    let deleted_at = t.obj.meta().deletion_timestamp.as_ref().and_then(|t| {
        DateTime::<Utc>::from_timestamp(
            t.0.as_second(),
            u32::try_from(t.0.subsec_nanosecond()).ok()?,
        )
    });
    let own = decide::own_ttl_deletion(stored.persisted_at, rt.cr_ttl, deleted_at);
    if !own {
        warn!(audit = %t.key(), "deleted with the expiry annotation before its TTL passed: recording the deletion");
    }
    Ok(own)
}

/// Backoff on errors: 1 s doubling to 5 min per object.
pub fn error_policy(obj: Arc<AuditObject>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    );
    let delay = ctx.backoff(&key);
    debug!(audit = %key, error = %err, ?delay, "retrying");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_status_only_a_missing_vector_or_a_duplicate_requeues() {
        let persisted = |embedding| Outcome::Persisted {
            audit_id: 1,
            content_hash: String::new(),
            chain_hash: String::new(),
            persisted_at: String::new(),
            embedding,
            redactions: 0,
            markup_removed: false,
            redacted_at_admission: String::new(),
        };
        let recheck = Action::requeue(decide::EMBEDDING_RECHECK);
        assert_eq!(after_status(&persisted(EmbeddingState::Pending)), recheck);
        assert_eq!(
            after_status(&persisted(EmbeddingState::Unavailable)),
            recheck
        );
        assert_eq!(
            after_status(&Outcome::Embedded(EmbeddingState::Pending)),
            recheck
        );
        assert_eq!(
            after_status(&persisted(EmbeddingState::Stored)),
            Action::await_change()
        );
        assert_eq!(
            after_status(&Outcome::Embedded(EmbeddingState::Stored)),
            Action::await_change()
        );
        assert_eq!(
            after_status(&duplicate("rr", "ns", "a")),
            Action::requeue(decide::DUPLICATE_RECHECK)
        );
        let invalid = Outcome::Rejected {
            errors: vec![FieldError::new("actionType", Reason::Invalid, "x")],
        };
        assert_eq!(after_status(&invalid), Action::await_change());
    }
}
