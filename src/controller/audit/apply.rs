//! The one place that writes to a RemediationAudit: its status (server-side apply, only when it changed) and the
//! Event of the change, its finalizer, and its deletion after the TTL.

use chrono::{SecondsFormat, Utc};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::object::AuditObject;
use super::{EXPIRED_ANNOTATION, Error, FINALIZER};
use crate::audit::SanitizeConfig;
use crate::audit::sanitize::sanitize_spec;
use crate::audit::status::{self, Outcome};
use crate::controller::MANAGER;
use crate::crd::{AuditState, EmbeddingState, RemediationAuditStatus};
use crate::events::Notice;
use crate::runtime::Context;

/// One object to write to. Writes go through `Api<AuditObject>`, whose responses decode whatever the object holds
/// (a status patch answers with the whole object, nested spec included).
pub struct Target<'a> {
    pub api: Api<AuditObject>,
    pub obj: &'a AuditObject,
    pub name: String,
}

impl<'a> Target<'a> {
    /// `None` for an object without name or namespace (nothing can be written to it).
    pub fn new(ctx: &Context, obj: &'a AuditObject) -> Option<Self> {
        let meta = obj.meta();
        let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.clone()) else {
            return None;
        };
        Some(Self {
            api: Api::namespaced(ctx.client.clone(), ns),
            obj,
            name,
        })
    }

    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.obj.meta().namespace.as_deref().unwrap_or_default(),
            self.name
        )
    }

    fn status(&self) -> Option<&RemediationAuditStatus> {
        match self.obj {
            AuditObject::Audit(ra) => ra.status.as_ref(),
            AuditObject::Undecodable(u) => u.status.as_ref(),
        }
    }
}

/// Applies the status computed for `outcome`, unless it equals the current one, and remembers the version it
/// produced (see [`Context::behind_own_write`]). A new rejection is counted in `datastorage_audits_rejected_total`
/// and `datastorage_validation_failures_total{field,reason}` (a duplicate tried again and still rejected is not
/// counted again: its status does not change).
pub async fn set_status(t: &Target<'_>, ctx: &Context, outcome: &Outcome) -> Result<(), Error> {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let new = status::compute(t.status(), t.obj.meta().generation, outcome, &now);
    if t.status() == Some(&new) {
        return Ok(());
    }
    if let Outcome::Rejected { errors } = outcome {
        ctx.metrics
            .count_rejection(errors.iter().map(|e| (e.field.as_str(), e.reason.as_str())));
    }
    let patch = json!({
        "apiVersion": "datastorage.kubernaut.ai/v1alpha1",
        "kind": "RemediationAudit",
        "status": new,
    });
    let written = t
        .api
        .patch_status(
            &t.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    if let Some(uid) = t.obj.uid() {
        ctx.note_own_write(&uid, written.resource_version().as_deref());
    }
    if let Some(n) = notice(t.status(), &new, outcome) {
        ctx.events.emit(t.obj.object_ref(&()), n);
    }
    Ok(())
}

/// The Event a status change deserves: `Persisted`, `Rejected` (with the rule's reason), `Retrying` (with its
/// cause, once per cause), `EmbeddingStored` (a missing vector arrived).
fn notice(
    old: Option<&RemediationAuditStatus>,
    new: &RemediationAuditStatus,
    outcome: &Outcome,
) -> Option<Notice> {
    let message = new.message.clone().unwrap_or_default();
    let condition_reason = |s: &RemediationAuditStatus, type_: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.reason.clone())
    };
    let (warning, reason, action, note) = match outcome {
        Outcome::Persisted { .. } => (false, "Persisted", "Store", message),
        Outcome::Rejected { .. } => {
            let why = condition_reason(new, "Validated").unwrap_or_default();
            (true, "Rejected", "Validate", format!("{why}: {message}"))
        }
        Outcome::Retrying { reason, .. } => {
            let same_cause = old.is_some_and(|o| {
                o.state == Some(AuditState::Retrying)
                    && condition_reason(o, "Persisted").as_deref() == Some(*reason)
            });
            if same_cause {
                return None;
            }
            (true, "Retrying", "Store", format!("{reason}: {message}"))
        }
        Outcome::Embedded(EmbeddingState::Stored) => {
            let was_missing = old.is_some_and(|o| o.embedding != Some(EmbeddingState::Stored));
            if !was_missing {
                return None;
            }
            (
                false,
                "EmbeddingStored",
                "Embed",
                "the vector is stored; the audit is searchable".into(),
            )
        }
        Outcome::Embedded(_) => return None,
    };
    Some(Notice {
        warning,
        reason: reason.to_string(),
        action,
        note,
    })
}

pub async fn add_finalizer(t: &Target<'_>) -> Result<(), Error> {
    let finalizers = t
        .obj
        .finalizers()
        .iter()
        .map(String::as_str)
        .chain([FINALIZER]);
    set_finalizers(t, finalizers.collect()).await
}

pub async fn release_finalizer(t: &Target<'_>) -> Result<(), Error> {
    let finalizers = t.obj.finalizers().iter().map(String::as_str);
    set_finalizers(t, finalizers.filter(|f| *f != FINALIZER).collect()).await
}

/// Replaces the finalizer list, conditional on the object's resourceVersion (a conflict retries the reconcile
/// instead of clobbering someone else's change).
async fn set_finalizers(t: &Target<'_>, finalizers: Vec<&str>) -> Result<(), Error> {
    let patch = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": t.obj.resource_version() }
    });
    match t
        .api
        .patch(&t.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the object's spec still holds what the sanitizer removes (secrets, active markup): an object admitted
/// while the admission webhook was unreachable, or before it existed.
pub fn holds_secrets(obj: &AuditObject, config: SanitizeConfig) -> bool {
    let AuditObject::Audit(ra) = obj else {
        return false;
    };
    sanitize_spec(&ra.spec, config).is_ok_and(|c| !c.redactions.is_empty() || c.markup_removed)
}

/// Redacts the resource's own spec in place: each field the sanitizer changes, and the spec inside kubectl's
/// last-applied annotation, with one JSON Patch conditional on the resourceVersion (a concurrent change wins and the
/// next reconcile looks again). What the webhook does at admission, done afterwards for objects admitted without it;
/// counted in `datastorage_specs_redacted_total`. Returns whether it patched.
pub async fn redact_spec(
    t: &Target<'_>,
    ctx: &Context,
    config: SanitizeConfig,
) -> Result<bool, Error> {
    use crate::admission::{LAST_APPLIED, changed_fields, pointer_escape, sanitize_last_applied};
    // The watch cache drops the last-applied annotation (trim_for_cache): read the object itself.
    let fresh = match t.api.get(&t.name).await {
        Ok(AuditObject::Audit(ra)) => ra,
        Ok(AuditObject::Undecodable(_)) => return Ok(false),
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if fresh.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    let Ok(clean) = sanitize_spec(&fresh.spec, config) else {
        return Ok(false);
    };
    let mut ops = vec![json!({
        "op": "test", "path": "/metadata/resourceVersion", "value": fresh.resource_version(),
    })];
    let original = serde_json::to_value(&fresh.spec).unwrap_or(Value::Null);
    let sanitized = serde_json::to_value(&clean.value).unwrap_or(Value::Null);
    changed_fields(&original, &sanitized, "/spec", &mut ops);
    if let Some(applied) = fresh.annotations().get(LAST_APPLIED)
        && let Some(clean_applied) = sanitize_last_applied(applied, config)
    {
        ops.push(json!({
            "op": "replace",
            "path": format!("/metadata/annotations/{}", pointer_escape(LAST_APPLIED)),
            "value": clean_applied,
        }));
    }
    if ops.len() == 1 {
        return Ok(false);
    }
    let patch: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
        Ok(p) => p,
        Err(e) => {
            warn!(audit = %t.key(), error = %e, "cannot build the spec redaction patch");
            return Ok(false);
        }
    };
    match t
        .api
        .patch(
            &t.name,
            &PatchParams::apply(MANAGER),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => {}
        // Gone, changed meanwhile (the test op), or refused (a redacted value over a field's limit): look again at
        // the next reconcile; the stored record is redacted either way.
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => {
            warn!(audit = %t.key(), error = %e.message, "the spec still holds secrets; not redacted in place");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    ctx.metrics.specs_redacted.inc();
    info!(audit = %t.key(), redactions = clean.redactions.len(), "redacted the resource's spec in place");
    Ok(true)
}

/// Deletes the resource after its TTL. The expiry annotation goes first, so the finalizer knows to check whether
/// the deletion is the operator's (see [`super::decide::own_ttl_deletion`]).
pub async fn expire(t: &Target<'_>) -> Result<(), Error> {
    let patch = json!({ "metadata": { "annotations": { EXPIRED_ANNOTATION: "true" } } });
    t.api
        .patch(&t.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    match t.api.delete(&t.name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    info!(audit = %t.key(), "deleted after TTL");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::validate::{FieldError, Reason};

    fn status_after(
        old: Option<&RemediationAuditStatus>,
        outcome: &Outcome,
    ) -> RemediationAuditStatus {
        status::compute(old, Some(1), outcome, "2026-06-01T00:00:00Z")
    }

    fn event(
        old: Option<&RemediationAuditStatus>,
        outcome: &Outcome,
    ) -> Option<(bool, String, String)> {
        let new = status_after(old, outcome);
        notice(old, &new, outcome).map(|n| (n.warning, n.reason, n.note))
    }

    #[test]
    fn each_status_change_has_its_event_and_a_repeated_cause_none() {
        let rejected = Outcome::Rejected {
            errors: vec![FieldError::new(
                "severity",
                Reason::Invalid,
                "must be one of critical, warning, info",
            )],
        };
        let (warning, reason, note) = event(None, &rejected).unwrap();
        assert!(warning);
        assert_eq!(reason, "Rejected");
        assert!(
            note.starts_with("Invalid: ") && note.contains("severity"),
            "{note}"
        );

        let retrying = Outcome::Retrying {
            reason: "DatabaseError",
            message: "connection refused".into(),
        };
        let (warning, reason, note) = event(None, &retrying).unwrap();
        assert!(
            warning && reason == "Retrying" && note.starts_with("DatabaseError: "),
            "{note}"
        );
        let already = status_after(None, &retrying);
        let again = Outcome::Retrying {
            reason: "DatabaseError",
            message: "connection reset".into(),
        };
        assert_eq!(
            event(Some(&already), &again),
            None,
            "same cause: no second event"
        );
        let other = Outcome::Retrying {
            reason: "StoreNotReady",
            message: "not ready".into(),
        };
        assert!(
            event(Some(&already), &other).is_some(),
            "a new cause is an event"
        );

        let persisted = Outcome::Persisted {
            audit_id: 7,
            content_hash: "h".into(),
            chain_hash: "c".into(),
            persisted_at: "2026-06-01T00:00:00Z".into(),
            embedding: EmbeddingState::Pending,
            redactions: 1,
            markup_removed: false,
            redacted_at_admission: String::new(),
        };
        let (warning, reason, _) = event(None, &persisted).unwrap();
        assert!(!warning && reason == "Persisted");
        let pending = status_after(None, &persisted);
        let (_, reason, _) =
            event(Some(&pending), &Outcome::Embedded(EmbeddingState::Stored)).unwrap();
        assert_eq!(reason, "EmbeddingStored");
        let stored = status_after(Some(&pending), &Outcome::Embedded(EmbeddingState::Stored));
        assert_eq!(
            event(Some(&stored), &Outcome::Embedded(EmbeddingState::Stored)),
            None
        );
        assert_eq!(
            event(
                Some(&pending),
                &Outcome::Embedded(EmbeddingState::Unavailable)
            ),
            None
        );
    }
}
