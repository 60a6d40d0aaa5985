//! The RemediationAudit status the operator writes, computed from what happened. Pure.
//!
//! Conditions follow `metav1.Condition` rules: `lastTransitionTime` changes only when a condition's `status`
//! changes, so re-applying an unchanged result produces an identical status (and the controller skips the patch).

use crate::audit::validate::{FieldError, summarize};
use crate::crd::{AuditState, Condition, EmbeddingState, RemediationAuditStatus};

/// What the reconcile of one generation came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stored (now or by an earlier replay of the same generation).
    Persisted {
        audit_id: i64,
        content_hash: String,
        chain_hash: String,
        persisted_at: String,
        embedding: EmbeddingState,
        /// Secrets redacted / markup removed, for the message.
        redactions: usize,
        markup_removed: bool,
        /// What the admission webhook redacted before the object reached etcd (`jwt=1,password_kv=2`; empty: none).
        redacted_at_admission: String,
    },
    /// Invalid; not retried until the spec changes.
    Rejected { errors: Vec<FieldError> },
    /// Could not be stored right now (database down, store not ready); retried with backoff.
    Retrying {
        reason: &'static str,
        message: String,
    },
    /// A persisted generation's vector state changed (found stored, or the provider changed); nothing else does.
    Embedded(EmbeddingState),
}

/// Computes the new status from the previous one, the object's generation and the outcome.
pub fn compute(
    previous: Option<&RemediationAuditStatus>,
    generation: Option<i64>,
    outcome: &Outcome,
    now: &str,
) -> RemediationAuditStatus {
    let prev = previous.cloned().unwrap_or_default();
    let mut conditions = prev.conditions.clone();
    let mut set = |type_: &str, status: bool, reason: &str, message: &str| {
        set_condition(
            &mut conditions,
            Condition {
                type_: type_.to_string(),
                status: if status { "True" } else { "False" }.to_string(),
                reason: reason.to_string(),
                message: message.to_string(),
                last_transition_time: now.to_string(),
                observed_generation: generation,
            },
        )
    };
    let mut status = match outcome {
        Outcome::Persisted {
            audit_id,
            content_hash,
            chain_hash,
            persisted_at,
            embedding,
            redactions,
            markup_removed,
            redacted_at_admission,
        } => {
            set("Validated", true, "Valid", "all rules passed");
            set("Persisted", true, "Stored", "stored with its history entry");
            let (embedded, reason, msg) = embedded_condition(*embedding);
            set("Embedded", embedded, reason, msg);
            let mut message = "stored".to_string();
            if *redactions > 0 {
                message.push_str(&format!("; {redactions} secret(s) redacted"));
            }
            if *markup_removed {
                message.push_str("; active markup removed from free text");
            }
            if !redacted_at_admission.is_empty() {
                message.push_str(&format!("; redacted at admission: {redacted_at_admission}"));
            }
            RemediationAuditStatus {
                state: Some(AuditState::Persisted),
                audit_id: Some(*audit_id),
                content_hash: Some(content_hash.clone()),
                chain_hash: Some(chain_hash.clone()),
                embedding: Some(*embedding),
                persisted_at: Some(persisted_at.clone()),
                observed_generation: generation,
                message: Some(message),
                conditions: Vec::new(),
            }
        }
        Outcome::Rejected { errors } => {
            let message = summarize(errors);
            let reason = errors
                .first()
                .map(|e| reason_camel(e.reason.as_str()))
                .unwrap_or_default();
            set("Validated", false, &reason, &message);
            set(
                "Persisted",
                false,
                "Rejected",
                "not stored: the spec is invalid",
            );
            // A previously stored generation stays stored: keep its ids so users can still find it.
            RemediationAuditStatus {
                state: Some(AuditState::Rejected),
                observed_generation: generation,
                message: Some(message),
                ..prev.clone()
            }
        }
        Outcome::Embedded(embedding) => {
            let (embedded, reason, msg) = embedded_condition(*embedding);
            set("Embedded", embedded, reason, msg);
            RemediationAuditStatus {
                embedding: Some(*embedding),
                ..prev.clone()
            }
        }
        Outcome::Retrying { reason, message } => {
            set("Validated", true, "Valid", "all rules passed");
            set("Persisted", false, reason, message);
            RemediationAuditStatus {
                state: Some(AuditState::Retrying),
                observed_generation: generation,
                message: Some(format!("not stored yet, retrying: {message}")),
                ..prev.clone()
            }
        }
    };
    status.conditions = conditions;
    status
}

/// Inserts or replaces a condition by type, keeping `lastTransitionTime` when the status did not change.
/// The `Embedded` condition for an embedding state: (status, reason, message).
fn embedded_condition(embedding: EmbeddingState) -> (bool, &'static str, &'static str) {
    match embedding {
        EmbeddingState::Stored => (true, "Stored", "vector stored"),
        EmbeddingState::Pending => (
            false,
            "Pending",
            "stored without its vector; the backfill adds it",
        ),
        EmbeddingState::Unavailable => (false, "Unavailable", "no embedding provider is available"),
        EmbeddingState::Disabled => (
            false,
            "Disabled",
            "embeddings are disabled in the DataStorage",
        ),
    }
}

pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == new.type_) {
        if existing.status == new.status {
            new.last_transition_time = existing.last_transition_time.clone();
        }
        *existing = new;
    } else {
        conditions.push(new);
    }
}

/// Whether this status rejects its generation only because another audit of the same (clusterName, namespace)
/// holds its remediationRequestId. Unlike other rejections, that one is tried again (the holder may go away).
pub fn rejected_as_duplicate(status: &RemediationAuditStatus) -> bool {
    status.state == Some(AuditState::Rejected)
        && status.conditions.iter().any(|c| {
            c.type_ == "Validated" && c.status == "False" && c.reason == reason_camel("duplicate")
        })
}

/// `length_exceeded` → `LengthExceeded` (condition reasons are CamelCase).
fn reason_camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::validate::Reason;

    fn persisted() -> Outcome {
        Outcome::Persisted {
            audit_id: 7,
            content_hash: "c".into(),
            chain_hash: "h".into(),
            persisted_at: "2026-03-01T12:00:00Z".into(),
            embedding: EmbeddingState::Stored,
            redactions: 1,
            markup_removed: false,
            redacted_at_admission: String::new(),
        }
    }

    #[test]
    fn unchanged_outcome_gives_identical_status() {
        let first = compute(None, Some(1), &persisted(), "2026-03-01T12:00:00Z");
        let second = compute(Some(&first), Some(1), &persisted(), "2026-03-01T12:05:00Z");
        assert_eq!(first, second);
        assert_eq!(first.state, Some(AuditState::Persisted));
        assert_eq!(first.conditions.len(), 3);
        assert!(
            first
                .message
                .as_deref()
                .unwrap()
                .contains("1 secret(s) redacted")
        );
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let retry = Outcome::Retrying {
            reason: "DatabaseUnavailable",
            message: "connection refused".into(),
        };
        let a = compute(None, Some(1), &retry, "T1");
        let b = compute(Some(&a), Some(1), &persisted(), "T2");
        let get = |s: &RemediationAuditStatus, t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(get(&b, "Validated"), "T1");
        assert_eq!(get(&b, "Persisted"), "T2");
        assert_eq!(a.state, Some(AuditState::Retrying));
    }

    #[test]
    fn rejection_names_field_and_keeps_previous_ids() {
        let stored = compute(None, Some(1), &persisted(), "T1");
        let rejected = compute(
            Some(&stored),
            Some(2),
            &Outcome::Rejected {
                errors: vec![FieldError::new(
                    "actionType",
                    Reason::Invalid,
                    "must be lowercase",
                )],
            },
            "T2",
        );
        assert_eq!(rejected.state, Some(AuditState::Rejected));
        assert_eq!(rejected.audit_id, Some(7));
        assert_eq!(rejected.observed_generation, Some(2));
        assert!(rejected.message.unwrap().contains("spec.actionType"));
        let validated = rejected
            .conditions
            .iter()
            .find(|c| c.type_ == "Validated")
            .unwrap();
        assert_eq!(validated.reason, "Invalid");
        assert_eq!(validated.status, "False");
    }

    #[test]
    fn only_a_duplicate_rejection_is_tried_again() {
        let reject = |reason| {
            compute(
                None,
                Some(1),
                &Outcome::Rejected {
                    errors: vec![FieldError::new("remediationRequestId", reason, "x")],
                },
                "T",
            )
        };
        assert!(rejected_as_duplicate(&reject(Reason::Duplicate)));
        assert!(!rejected_as_duplicate(&reject(Reason::Invalid)));
        assert!(!rejected_as_duplicate(&compute(
            None,
            Some(1),
            &persisted(),
            "T"
        )));
    }
}
