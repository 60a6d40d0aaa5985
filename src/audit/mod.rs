//! One audit's journey, as pure steps: `validate → sanitize → (embed) → write → status`.
//!
//! [`prepare`] turns a RemediationAudit's spec into the exact record that will be stored (or the list of every
//! rule it breaks). The controller ([`crate::controller::audit`]) adds the I/O around it: the embedding, the
//! database transaction ([`crate::store`]) and the status patch computed by [`status`].

pub mod embedding_text;
pub mod record;
pub mod sanitize;
pub mod status;
pub mod validate;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::crd::RemediationAuditSpec;
pub use embedding_text::{EmbeddingInput, embedding_text, target_kind};
pub use record::AuditRecord;
use sanitize::{HtmlPolicy, Redaction};
pub use validate::{FieldError, Reason};

/// Identity of the Kubernetes object an audit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
}

/// Sanitization settings (from the DataStorage resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SanitizeConfig {
    pub redact_secrets: bool,
    pub html: HtmlPolicy,
}

impl Default for SanitizeConfig {
    fn default() -> Self {
        Self {
            redact_secrets: true,
            html: HtmlPolicy::Strip,
        }
    }
}

/// An audit ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub record: AuditRecord,
    /// sha256 of the record's canonical JSON.
    pub content_hash: String,
    pub canonical_json: String,
    /// Text the embedding is computed from (semantic fields only).
    pub embedding_text: String,
    /// Every secret that was redacted, with the field it was found in.
    pub redactions: Vec<Redaction>,
    /// Whether active markup was removed from free text.
    pub markup_removed: bool,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
}

/// Validates and sanitizes one generation of a RemediationAudit. Pure: `now` is passed in.
pub fn prepare(
    meta: &AuditMeta,
    spec: &RemediationAuditSpec,
    config: SanitizeConfig,
    now: DateTime<Utc>,
) -> Result<Prepared, Vec<FieldError>> {
    let times = validate::validate(spec, now)?;
    let mut redactions = Vec::new();
    let mut errors = Vec::new();
    let mut markup_removed = false;
    let reject = |field: &str| {
        FieldError::new(
            field,
            Reason::XssDetected,
            "contains active markup (script/iframe/object elements, javascript: URLs or event handlers) and the \
             DataStorage's sanitization.html policy is Reject",
        )
    };

    // Short text fields: secrets are redacted (markup there was already rejected by validation).
    let mut short = |field: &str, value: &str| -> String {
        if !config.redact_secrets || validate::OPAQUE_ID_FIELDS.contains(&field) {
            return value.to_string();
        }
        let (redacted, kinds) = sanitize::redact_secrets(value);
        redactions.extend(kinds.into_iter().map(|kind| Redaction {
            field: field.to_string(),
            kind,
        }));
        redacted.into_owned()
    };
    let alert_name = spec.alert_name.as_deref().map(|v| short("alertName", v));
    let action_type = short("actionType", &spec.action_type);
    let severity = short("severity", &spec.severity);
    let environment = short("environment", &spec.environment);
    let cluster_name = short("clusterName", &spec.cluster_name);
    let target_resource = short("targetResource", &spec.target_resource);

    // Free text: markup stripped (or rejected) and secrets redacted, repeated to a fixpoint.
    let error_message = match spec.error_message.as_deref() {
        None => None,
        Some(v) if config.redact_secrets => {
            match sanitize::sanitize_free_text("errorMessage", v, config.html, &mut redactions) {
                Ok(clean) => {
                    markup_removed |= sanitize::strip_dangerous_html(v).1;
                    Some(clean)
                }
                Err(_) => {
                    errors.push(reject("errorMessage"));
                    None
                }
            }
        }
        Some(v) => {
            let (clean, removed) = sanitize::strip_dangerous_html(v);
            if removed && config.html == HtmlPolicy::Reject {
                errors.push(reject("errorMessage"));
            }
            markup_removed |= removed;
            Some(clean.into_owned())
        }
    };
    let details = match &spec.details {
        None => None,
        Some(map) => {
            let value = serde_json::Value::Object(map.clone());
            let result = if config.redact_secrets {
                sanitize::sanitize_json("details", &value, config.html, &mut redactions)
            } else {
                strip_json(&value, config.html)
            };
            match result {
                Ok(clean) => {
                    markup_removed |= strip_json(&value, HtmlPolicy::Strip)
                        .is_ok_and(|stripped| stripped != value);
                    Some(clean)
                }
                Err(_) => {
                    errors.push(reject("details"));
                    None
                }
            }
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }

    let record = AuditRecord {
        uid: meta.uid.clone(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        generation: meta.generation,
        remediation_request_id: spec.remediation_request_id.clone(),
        alert_fingerprint: spec.alert_fingerprint.clone(),
        alert_name,
        phase: spec.phase.as_str().to_string(),
        outcome: spec.outcome.as_str().to_string(),
        action_type,
        severity,
        environment,
        cluster_name,
        target_resource,
        start_time: times.start.to_rfc3339_opts(SecondsFormat::Millis, true),
        end_time: times
            .end
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        duration_ms: times.duration_ms,
        error_message,
        details,
    };
    let embedding_text = embedding_text(&EmbeddingInput {
        action_type: &record.action_type,
        alert_name: record.alert_name.as_deref(),
        target_kind: target_kind(&record.target_resource),
        phase: &record.phase,
        outcome: &record.outcome,
        severity: &record.severity,
        error_message: record.error_message.as_deref(),
    });
    let canonical_json = record.canonical_json();
    Ok(Prepared {
        content_hash: record::sha256_hex(canonical_json.as_bytes()),
        canonical_json,
        embedding_text,
        redactions,
        markup_removed,
        start_time: times.start,
        end_time: times.end,
        record,
    })
}

/// Markup stripping alone for `details` (when secret redaction is turned off in the DataStorage).
fn strip_json(
    value: &serde_json::Value,
    policy: HtmlPolicy,
) -> Result<serde_json::Value, sanitize::HtmlRejected> {
    use serde_json::Value;
    Ok(match value {
        Value::String(s) => {
            let (clean, removed) = sanitize::strip_dangerous_html(s);
            if removed && policy == HtmlPolicy::Reject {
                return Err(sanitize::HtmlRejected {
                    field: "details".to_string(),
                });
            }
            Value::String(clean.into_owned())
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| strip_json(v, policy))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), strip_json(v, policy)?)))
                .collect::<Result<_, sanitize::HtmlRejected>>()?,
        ),
        other => other.clone(),
    })
}
