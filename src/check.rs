//! `datastorage check -f FILE`: validation and sanitization of RemediationAudit documents without a cluster or a
//! database, for CI pipelines that want to know before they apply. Pure except for the clock.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::audit::{AuditMeta, FieldError, Reason, SanitizeConfig, prepare};
use crate::crd::RemediationAudit;

/// The report for one document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub name: String,
    pub valid: bool,
    pub errors: Vec<FieldError>,
    /// The spec as it would be stored (secrets redacted, markup removed); null when invalid.
    pub sanitized: Value,
    pub redactions: Vec<RedactionReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedactionReport {
    pub field: String,
    pub kind: &'static str,
}

/// Why the input could not be read at all (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("cannot parse the input as YAML or JSON: {0}")]
pub struct Unreadable(pub String);

/// Checks every document of a YAML (or JSON) stream. Empty documents are skipped.
pub fn check_documents(input: &str, now: DateTime<Utc>) -> Result<Vec<CheckReport>, Unreadable> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(input).map_err(|e| Unreadable(e.to_string()))?;
    Ok(docs
        .into_iter()
        .filter(|d| !d.is_null())
        .map(|d| check_one(d, now))
        .collect())
}

fn check_one(doc: Value, now: DateTime<Utc>) -> CheckReport {
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let invalid = |errors: Vec<FieldError>| CheckReport {
        name: name.clone(),
        valid: false,
        errors,
        sanitized: Value::Null,
        redactions: Vec::new(),
    };
    if doc.get("kind").and_then(Value::as_str) != Some("RemediationAudit") {
        return invalid(vec![FieldError::new(
            "spec",
            Reason::Invalid,
            "document is not a RemediationAudit",
        )]);
    }
    let ra: RemediationAudit = match serde_json::from_value(doc.clone()) {
        Ok(ra) => ra,
        Err(e) => return invalid(vec![schema_error(&e.to_string())]),
    };
    let meta = AuditMeta {
        uid: "00000000-0000-0000-0000-000000000000".into(),
        namespace: ra
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: name.clone(),
        generation: 1,
    };
    match prepare(&meta, &ra.spec, SanitizeConfig::default(), now) {
        Err(errors) => invalid(errors),
        Ok(p) => {
            let r = &p.record;
            let mut spec = serde_json::json!({
                "remediationRequestId": r.remediation_request_id,
                "alertFingerprint": r.alert_fingerprint,
                "phase": r.phase,
                "outcome": r.outcome,
                "actionType": r.action_type,
                "severity": r.severity,
                "environment": r.environment,
                "clusterName": r.cluster_name,
                "targetResource": r.target_resource,
                "startTime": r.start_time,
            });
            if let Some(obj) = spec.as_object_mut() {
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        obj.insert(k.to_string(), v);
                    }
                };
                put("alertName", r.alert_name.clone().map(Value::String));
                put("endTime", r.end_time.clone().map(Value::String));
                put("durationMs", r.duration_ms.map(Value::from));
                put("errorMessage", r.error_message.clone().map(Value::String));
                put("details", r.details.clone());
            }
            CheckReport {
                name,
                valid: true,
                errors: Vec::new(),
                sanitized: spec,
                redactions: p
                    .redactions
                    .iter()
                    .map(|x| RedactionReport {
                        field: x.field.clone(),
                        kind: x.kind.as_str(),
                    })
                    .collect(),
            }
        }
    }
}

/// Maps a deserialization error (missing field, wrong enum value, wrong type) to a field error.
fn schema_error(msg: &str) -> FieldError {
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_string);
    if let Some(rest) = msg.strip_prefix("missing field ")
        && let Some(field) = quoted(rest)
    {
        return FieldError::new(&field, Reason::Required, "is required");
    }
    FieldError::new(
        "spec",
        Reason::Invalid,
        format!("does not match the schema: {msg}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    const DOCS: &str = r#"
apiVersion: datastorage.kubernaut.ai/v1alpha1
kind: RemediationAudit
metadata: { name: good, namespace: payments }
spec:
  remediationRequestId: rr-1
  alertFingerprint: fp
  phase: Completed
  outcome: Success
  actionType: restart-pod
  severity: critical
  environment: production
  clusterName: prod
  targetResource: apps/v1/Deployment/payments/api
  startTime: "2026-03-01T11:00:00Z"
  errorMessage: "connect failed: postgres://app:hunter2@db:5432/app"
---
apiVersion: datastorage.kubernaut.ai/v1alpha1
kind: RemediationAudit
metadata: { name: bad }
spec:
  remediationRequestId: rr-2
  phase: Completed
  outcome: Success
  actionType: Restart Pod
  severity: critical
  environment: production
  clusterName: prod
  targetResource: x
  startTime: "2026-03-01T11:00:00Z"
"#;

    #[test]
    fn reports_each_document() {
        let reports = check_documents(DOCS, now()).unwrap();
        assert_eq!(reports.len(), 2);
        assert!(reports[0].valid);
        assert_eq!(
            reports[0].redactions,
            vec![RedactionReport {
                field: "errorMessage".into(),
                kind: "postgres_url"
            }]
        );
        assert!(!reports[0].sanitized.to_string().contains("hunter2"));
        assert!(!reports[1].valid);
        assert_eq!(reports[1].errors[0].field, "alertFingerprint");
        assert_eq!(reports[1].errors[0].reason, Reason::Required);
    }

    #[test]
    fn unreadable_input() {
        assert!(check_documents("key: [unclosed", now()).is_err());
    }
}
