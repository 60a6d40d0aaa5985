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
use sanitize::Redaction;
pub use sanitize::SanitizeConfig;
pub use validate::{FieldError, Reason};

/// Identity of the Kubernetes object an audit comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
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

/// The validation errors for free-text fields holding markup under the `Reject` policy: one per spec field
/// (`details.a[0].msg` is reported on `details`, the metric's `field` label being the spec field).
pub fn html_rejections(rejected: &[sanitize::HtmlRejected]) -> Vec<FieldError> {
    let mut fields: Vec<&str> = Vec::new();
    for r in rejected {
        let top = r.field.split(['.', '[']).next().unwrap_or("details");
        if !fields.contains(&top) {
            fields.push(top);
        }
    }
    fields
        .into_iter()
        .map(|field| {
            FieldError::new(
                field,
                Reason::XssDetected,
                "contains active markup (script/iframe/object elements, javascript: URLs or event handlers) \
                 and the DataStorage's sanitization.html policy is Reject",
            )
        })
        .collect()
}

/// Validates and sanitizes one generation of a RemediationAudit. Pure: `now` is passed in.
pub fn prepare(
    meta: &AuditMeta,
    spec: &RemediationAuditSpec,
    config: SanitizeConfig,
    now: DateTime<Utc>,
) -> Result<Prepared, Vec<FieldError>> {
    let times = validate::validate(spec, now)?;
    // Every free-text field and string of `details`: secrets redacted, markup stripped (or refused), in one pass.
    let clean =
        sanitize::sanitize_spec(spec, config).map_err(|rejected| html_rejections(&rejected))?;
    let sanitize::Sanitized {
        value: clean,
        redactions,
        markup_removed,
    } = clean;
    let record = AuditRecord {
        uid: meta.uid.clone(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        generation: meta.generation,
        remediation_request_id: clean.remediation_request_id,
        alert_fingerprint: clean.alert_fingerprint,
        alert_name: clean.alert_name,
        phase: spec.phase.as_str().to_string(),
        outcome: spec.outcome.as_str().to_string(),
        action_type: clean.action_type,
        severity: clean.severity,
        environment: clean.environment,
        cluster_name: clean.cluster_name,
        target_resource: clean.target_resource,
        start_time: times.start.to_rfc3339_opts(SecondsFormat::Millis, true),
        end_time: times
            .end
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        duration_ms: times.duration_ms,
        error_message: clean.error_message,
        details: clean.details.map(serde_json::Value::Object),
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
