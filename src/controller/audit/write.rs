//! The steps that touch the store: write one generation ([`write`]) and recheck a missing vector
//! ([`recheck_embedding`]). They return what happened and never write the resource's status.

use std::sync::Arc;

use chrono::Utc;
use tracing::{debug, info, warn};

use crate::audit::validate::FieldError;
use crate::audit::{AuditMeta, Prepared, prepare};
use crate::crd::{EmbeddingState, RemediationAudit};
use crate::runtime::{Context, StoreRuntime};
use crate::store::{EmbeddingRow, StoreError, StoredAudit, WriteOutcome};

/// What writing one generation did.
#[derive(Debug)]
pub enum Written {
    /// Stored now, or found already stored (a replay).
    Persisted {
        stored: StoredAudit,
        /// Embedding state of the status (`Stored`, or the runtime's state for a row stored alone).
        embedding: EmbeddingState,
        redactions: usize,
        markup_removed: bool,
        /// The admission webhook's record of what it redacted from this generation (normalized; empty: none).
        redacted_at_admission: String,
    },
    /// The spec breaks validation rules.
    Invalid(Vec<FieldError>),
    /// Another RemediationAudit already holds this `remediationRequestId`.
    Duplicate {
        request_id: String,
        holder_namespace: String,
        holder_name: String,
    },
    /// The store failed; retried with backoff.
    Failed(StoreError),
}

/// Validates, sanitizes, embeds (within the runtime's budget) and writes the current generation of `ra`.
/// `seen_before`: the object carried the finalizer, so this generation may already be stored (by a write whose
/// status the cache does not show yet): look it up before embedding and writing again.
pub async fn write(
    ra: &RemediationAudit,
    meta: &AuditMeta,
    rt: &StoreRuntime,
    ctx: &Context,
    seen_before: bool,
) -> Written {
    ctx.metrics.prepare_total.inc();
    let at_admission: Vec<_> = ra
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::admission::REDACTED_ANNOTATION))
        .map(|v| crate::admission::parse_annotation(v))
        .unwrap_or_default();
    let prepared = match prepare(meta, &ra.spec, rt.sanitize, Utc::now()) {
        Ok(p) => Arc::new(p),
        Err(errors) => return Written::Invalid(errors),
    };
    let persisted = |stored: StoredAudit| Written::Persisted {
        embedding: embedding_state(rt, &stored),
        stored,
        redactions: prepared.redactions.len(),
        markup_removed: prepared.markup_removed,
        redacted_at_admission: crate::admission::annotation_value(
            &at_admission.iter().copied().collect(),
        ),
    };
    // (A failed lookup only means writing again: the write path handles replays.)
    if seen_before
        && let Ok(Some(stored)) = rt.store.stored_audit(&meta.uid).await
        && stored.generation >= meta.generation
    {
        return persisted(stored);
    }
    let key = format!("{}/{}", meta.namespace, meta.name);
    let embedding = embed_in_budget(rt, &prepared, ctx).await;
    let has_vector = embedding.is_some();
    let timer = ctx
        .metrics
        .write_duration
        .with_label_values(&["audits"])
        .start_timer();
    // (Group commit: audits reconciled at the same time share one transaction; see store::batch.)
    let written = rt.writer.write(prepared.clone(), embedding).await;
    timer.observe_duration();
    match written {
        Err(e) => {
            count_write(ctx, "failure");
            warn!(audit = %key, error = %e, "write failed; will retry");
            Written::Failed(e)
        }
        Ok(WriteOutcome::Duplicate { namespace, name }) => Written::Duplicate {
            request_id: prepared.record.remediation_request_id.clone(),
            holder_namespace: namespace,
            holder_name: name,
        },
        Ok(WriteOutcome::Stored(stored)) => {
            record_write(ctx, &prepared, has_vector);
            // Counted once per stored generation (a replay finds it stored and does not come here).
            for (kind, n) in &at_admission {
                ctx.metrics
                    .redacted_at_admission
                    .with_label_values(&[kind.as_str()])
                    .inc_by(*n as u64);
            }
            info!(audit = %key, id = stored.audit_id, generation = stored.generation, "stored");
            persisted(stored)
        }
        Ok(WriteOutcome::Unchanged(stored)) => {
            count_write(ctx, "unchanged");
            persisted(stored)
        }
    }
}

/// What a recheck of a persisted audit's missing vector found.
#[derive(Debug)]
pub enum Rechecked {
    /// The state the status should show now.
    Embedding(EmbeddingState),
    /// The store does not hold this generation (restored from an older backup, say): write it again.
    Missing,
    Failed(StoreError),
}

/// Reads the stored audit only (one indexed query): no validation, sanitization or embedding.
pub async fn recheck_embedding(
    uid: &str,
    generation: i64,
    rt: &StoreRuntime,
    ctx: &Context,
) -> Rechecked {
    let found = rt.store.stored_audit(uid).await;
    let result = match found {
        Err(e) => Rechecked::Failed(e),
        Ok(Some(stored)) if stored.generation >= generation => {
            Rechecked::Embedding(embedding_state(rt, &stored))
        }
        Ok(_) => Rechecked::Missing,
    };
    let label = match &result {
        Rechecked::Embedding(EmbeddingState::Stored) => "stored",
        Rechecked::Embedding(EmbeddingState::Pending) => "pending",
        Rechecked::Embedding(EmbeddingState::Unavailable) => "unavailable",
        Rechecked::Embedding(EmbeddingState::Disabled) => "disabled",
        Rechecked::Missing => "missing",
        Rechecked::Failed(_) => "failed",
    };
    ctx.metrics
        .embedding_recheck
        .with_label_values(&[label])
        .inc();
    result
}

fn embedding_state(rt: &StoreRuntime, stored: &StoredAudit) -> EmbeddingState {
    match (rt.embeddings_enabled, &rt.embedder, stored.embedding_stored) {
        (_, _, true) => EmbeddingState::Stored,
        (false, _, false) => EmbeddingState::Disabled,
        (true, None, false) => EmbeddingState::Unavailable,
        (true, Some(_), false) => EmbeddingState::Pending,
    }
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

fn count_write(ctx: &Context, status: &str) {
    ctx.metrics
        .write_total
        .with_label_values(&["audits", status])
        .inc();
}

fn record_write(ctx: &Context, prepared: &Prepared, has_vector: bool) {
    let m = &ctx.metrics;
    count_write(ctx, "success");
    m.write_total
        .with_label_values(&["audit_history", "success"])
        .inc();
    if has_vector {
        m.write_total
            .with_label_values(&["audit_embeddings", "success"])
            .inc();
        m.dualwrite_success.inc();
    }
    for r in &prepared.redactions {
        m.redactions.with_label_values(&[r.kind.as_str()]).inc();
    }
}
