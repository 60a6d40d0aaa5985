//! The mutating admission webhook for RemediationAudits: secrets are redacted before the object reaches etcd.
//!
//! On CREATE and UPDATE the API server sends the object; [`review`] answers (pure, no I/O):
//!
//! * **Invalid** (a rule of the validator the CRD's CEL rules cannot check: a start time in the future, a credential
//!   in an opaque id, `details` too large or too deep; or markup in free text under `sanitization.html: Reject`):
//!   denied with the message the status would show. Only when the spec is new or changed, so an object admitted
//!   before (with the webhook down, or before it existed) can still get its finalizer and be deleted.
//! * **Holding secrets** (or active markup in free text): admitted with a JSONPatch replacing each changed spec field
//!   by its sanitized value ([`sanitize_spec`], the sanitizer the store uses), the spec inside kubectl's
//!   `last-applied-configuration` annotation likewise, and the annotation [`REDACTED_ANNOTATION`] naming what was
//!   redacted (`jwt=1,password_kv=2`), which the controller turns into the status message and
//!   `datastorage_redacted_at_admission_total{kind}`. kubectl prints a warning naming the kinds.
//! * Otherwise admitted unchanged (and a [`REDACTED_ANNOTATION`] set by hand on a spec that holds nothing is dropped).
//!
//! Anything the webhook cannot read (a body that is not an AdmissionReview is an error; an object nested too deep to
//! decode, a spec that does not decode) is admitted unchanged: the API server's schema and the controller, which
//! sanitizes everything it stores and redacts the object's own spec, stay the safety net (see docs/sanitization.md).

pub mod server;

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::audit::sanitize::{SecretKind, redact_secrets, sanitize_spec};
use crate::audit::validate::{summarize, validate};
use crate::audit::{SanitizeConfig, html_rejections};
use crate::crd::RemediationAuditSpec;

/// Set on an object whose spec the webhook redacted: `kind=count` pairs, comma-separated, sorted by kind.
pub const REDACTED_ANNOTATION: &str = "datastorage.kubernaut.ai/redacted-at-admission";
/// kubectl's copy of the applied object (client-side apply), a JSON document in an annotation.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What [`review`] did, for the metric `datastorage_admission_reviews_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted with a patch.
    Redacted,
    /// Admitted unchanged.
    Clean,
    /// Denied (invalid).
    Denied,
    /// Admitted unchanged without looking (not a CREATE/UPDATE, or an object the webhook cannot decode).
    Skipped,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Redacted,
        Verdict::Clean,
        Verdict::Denied,
        Verdict::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Redacted => "redacted",
            Verdict::Clean => "clean",
            Verdict::Denied => "denied",
            Verdict::Skipped => "skipped",
        }
    }
}

/// The answer to one AdmissionReview.
#[derive(Debug, Clone, PartialEq)]
pub struct Reviewed {
    /// The AdmissionReview to send back.
    pub response: Value,
    pub verdict: Verdict,
    /// What was redacted from the spec (kind → count).
    pub redacted: BTreeMap<SecretKind, usize>,
}

#[derive(Deserialize)]
struct Review {
    request: Request,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    #[serde(default)]
    operation: String,
    // Raw: serde_json skips a raw value without recursing, so a deep `details` cannot fail the whole review.
    #[serde(default)]
    object: Option<Box<RawValue>>,
    #[serde(default)]
    old_object: Option<Box<RawValue>>,
}

/// The body is not an AdmissionReview (answered 400).
#[derive(Debug, thiserror::Error)]
#[error("not an AdmissionReview: {0}")]
pub struct NotAReview(String);

/// Answers one AdmissionReview (`admission.k8s.io/v1`) for a RemediationAudit. Pure: `now` is passed in.
pub fn review(
    body: &[u8],
    config: SanitizeConfig,
    now: DateTime<Utc>,
) -> Result<Reviewed, NotAReview> {
    let review: Review = serde_json::from_slice(body).map_err(|e| NotAReview(e.to_string()))?;
    let req = review.request;
    let answer = |response: Value, verdict, redacted| Reviewed {
        response: json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }),
        verdict,
        redacted,
    };
    let allow = || json!({ "uid": req.uid, "allowed": true });
    let skipped = || answer(allow(), Verdict::Skipped, BTreeMap::new());
    if req.operation != "CREATE" && req.operation != "UPDATE" {
        return Ok(skipped());
    }
    let Some(object) = req
        .object
        .as_ref()
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
    else {
        return Ok(skipped());
    };
    let Some(spec) = object
        .get("spec")
        .and_then(|s| serde_json::from_value::<RemediationAuditSpec>(s.clone()).ok())
    else {
        return Ok(skipped());
    };
    let old_spec = req
        .old_object
        .as_ref()
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .and_then(|o| o.get("spec").cloned());
    let spec_changed = old_spec.as_ref() != object.get("spec");

    // Validation: only what is new, so objects admitted before keep working (finalizers, deletion).
    let clean = sanitize_spec(&spec, config);
    if spec_changed {
        let mut errors = validate(&spec, now).err().unwrap_or_default();
        if let Err(rejected) = &clean {
            errors.extend(html_rejections(rejected));
        }
        if !errors.is_empty() {
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let response = json!({
                "uid": req.uid,
                "allowed": false,
                "status": {
                    "code": 422,
                    "reason": "Invalid",
                    "message": format!("RemediationAudit {name:?} is invalid: {}", summarize(&errors)),
                },
            });
            return Ok(answer(response, Verdict::Denied, BTreeMap::new()));
        }
    }
    let Ok(clean) = clean else {
        // Markup under the Reject policy in an unchanged spec: the controller reports it.
        return Ok(answer(allow(), Verdict::Clean, BTreeMap::new()));
    };

    let mut patch = Vec::new();
    let original = object.get("spec").cloned().unwrap_or(Value::Null);
    let sanitized = serde_json::to_value(&clean.value).unwrap_or(Value::Null);
    changed_fields(&original, &sanitized, "/spec", &mut patch);

    let mut redacted: BTreeMap<SecretKind, usize> = BTreeMap::new();
    for r in &clean.redactions {
        *redacted.entry(r.kind).or_default() += 1;
    }
    let mut annotations = object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let before = annotations.clone();
    if let Some(Value::String(applied)) = annotations.get(LAST_APPLIED)
        && let Some(clean_applied) = sanitize_last_applied(applied, config)
    {
        annotations.insert(LAST_APPLIED.into(), Value::String(clean_applied));
    }
    if !redacted.is_empty() {
        annotations.insert(
            REDACTED_ANNOTATION.into(),
            Value::String(annotation_value(&redacted)),
        );
    } else if spec_changed {
        // Only the webhook says what it redacted: one set by hand on a clean new spec goes.
        annotations.remove(REDACTED_ANNOTATION);
    }
    if annotations != before {
        patch.push(json!({ "op": "add", "path": "/metadata/annotations", "value": annotations }));
    }
    if patch.is_empty() {
        return Ok(answer(allow(), Verdict::Clean, redacted));
    }
    let mut response = allow();
    response["patchType"] = json!("JSONPatch");
    response["patch"] =
        json!(base64::engine::general_purpose::STANDARD.encode(Value::Array(patch).to_string()));
    let mut warnings = Vec::new();
    if !redacted.is_empty() {
        let kinds: Vec<&str> = redacted.keys().map(|k| k.as_str()).collect();
        warnings.push(format!(
            "datastorage: {} secret(s) redacted from the spec before storage ({})",
            clean.redactions.len(),
            kinds.join(", ")
        ));
    }
    if clean.markup_removed {
        warnings.push("datastorage: active markup removed from free text before storage".into());
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    Ok(answer(response, Verdict::Redacted, redacted))
}

/// `replace` operations for each top-level field of `new` that differs from `old` (both objects).
pub(crate) fn changed_fields(old: &Value, new: &Value, base: &str, out: &mut Vec<Value>) {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return;
    };
    for (k, v) in new {
        if old.get(k) != Some(v) {
            let op = if old.contains_key(k) {
                "replace"
            } else {
                "add"
            };
            out.push(
                json!({ "op": op, "path": format!("{base}/{}", pointer_escape(k)), "value": v }),
            );
        }
    }
}

/// JSON Pointer escaping of one reference token (RFC 6901).
pub(crate) fn pointer_escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `jwt=1,password_kv=2` (sorted by kind).
pub fn annotation_value(redacted: &BTreeMap<SecretKind, usize>) -> String {
    let mut pairs: Vec<(&str, usize)> = redacted.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads [`REDACTED_ANNOTATION`]: the known kinds with their counts (anything else is ignored, so a hand-written
/// value cannot create metric series).
pub fn parse_annotation(value: &str) -> Vec<(SecretKind, usize)> {
    value
        .split(',')
        .take(SecretKind::COUNT)
        .filter_map(|pair| {
            let (kind, n) = pair.trim().split_once('=')?;
            Some((
                SecretKind::from_name(kind.trim())?,
                n.trim().parse::<usize>().ok()?.min(10_000),
            ))
        })
        .collect()
}

/// The last-applied annotation with the spec inside sanitized like the object's; `None` when nothing changes. The
/// annotation is a JSON document; when it is not one (or its spec does not decode) its whole text is redacted as free
/// text, so a secret never survives there either.
pub(crate) fn sanitize_last_applied(applied: &str, config: SanitizeConfig) -> Option<String> {
    let parsed: Option<Map<String, Value>> = serde_json::from_str(applied).ok();
    if let Some(mut doc) = parsed {
        let spec = doc
            .get("spec")
            .and_then(|s| serde_json::from_value::<RemediationAuditSpec>(s.clone()).ok());
        if let Some(spec) = spec
            && let Ok(clean) = sanitize_spec(&spec, config)
        {
            if clean.redactions.is_empty() && !clean.markup_removed {
                return None;
            }
            let sanitized = serde_json::to_value(&clean.value).ok()?;
            if let (Some(Value::Object(old)), Value::Object(new)) = (doc.get_mut("spec"), sanitized)
            {
                for (k, v) in new {
                    old.insert(k, v);
                }
            }
            return serde_json::to_string(&doc).ok();
        }
    }
    if !config.redact_secrets {
        return None;
    }
    match redact_secrets(applied).0 {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(s) => Some(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn spec(extra: Value) -> Value {
        let mut s = json!({
            "remediationRequestId": "rr-1", "alertFingerprint": "fp-1", "phase": "Completed",
            "outcome": "Failure", "actionType": "restart-pod", "severity": "critical",
            "environment": "production", "clusterName": "prod-eu-1",
            "targetResource": "apps/v1/Deployment/payments/api", "startTime": "2026-03-01T11:00:00Z",
        });
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    }

    fn request(op: &str, object: Value, old: Option<Value>) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": { "uid": "u-1", "operation": op, "object": object, "oldObject": old },
        })
        .to_string()
        .into_bytes()
    }

    fn object(spec: Value, annotations: Option<Value>) -> Value {
        let mut o = json!({
            "apiVersion": "datastorage.kubernaut.ai/v1alpha1", "kind": "RemediationAudit",
            "metadata": { "name": "a", "namespace": "ns" }, "spec": spec,
        });
        if let Some(a) = annotations {
            o["metadata"]["annotations"] = a;
        }
        o
    }

    /// Applies the response's JSONPatch to `object` (add/replace of object members only, what `review` emits).
    fn patched(object: &Value, r: &Reviewed) -> Value {
        let mut o = object.clone();
        let Some(p) = r.response["response"]["patch"].as_str() else {
            return o;
        };
        let ops: Vec<Value> =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(p).unwrap())
                .unwrap();
        for op in ops {
            let path = op["path"].as_str().unwrap();
            let (parent, last) = path.rsplit_once('/').unwrap();
            let last = last.replace("~1", "/").replace("~0", "~");
            o.pointer_mut(parent).unwrap()[&last] = op["value"].clone();
        }
        o
    }

    #[test]
    fn secrets_are_redacted_in_the_spec_and_the_last_applied_annotation() {
        let secret_spec = spec(json!({
            "errorMessage": "login failed: password=Sup3rS3cret! token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "details": { "slack": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx" },
        }));
        let applied = object(secret_spec.clone(), None).to_string();
        let obj = object(
            secret_spec,
            Some(json!({ LAST_APPLIED: applied, "keep": "me" })),
        );
        let r = review(
            &request("CREATE", obj.clone(), None),
            SanitizeConfig::default(),
            now(),
        )
        .unwrap();
        assert_eq!(r.verdict, Verdict::Redacted);
        assert_eq!(r.response["response"]["uid"], "u-1");
        assert_eq!(r.response["response"]["allowed"], true);
        let out = patched(&obj, &r).to_string();
        for secret in ["Sup3rS3cret!", "eyJhbGciOiJIUzI1NiJ9", "xoxb-123456789012"] {
            assert!(!out.contains(secret), "{secret} left in {out}");
        }
        let o = patched(&obj, &r);
        assert!(
            o["spec"]["errorMessage"]
                .as_str()
                .unwrap()
                .starts_with("login failed: password=[REDACTED:"),
            "{o}"
        );
        assert_eq!(o["metadata"]["annotations"]["keep"], "me");
        let note = o["metadata"]["annotations"][REDACTED_ANNOTATION]
            .as_str()
            .unwrap();
        let kinds: Vec<&str> = parse_annotation(note)
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert!(
            kinds.contains(&"jwt") && kinds.contains(&"slack_token"),
            "{note}"
        );
        let la: Value =
            serde_json::from_str(o["metadata"]["annotations"][LAST_APPLIED].as_str().unwrap())
                .unwrap();
        assert_eq!(
            la["spec"], o["spec"],
            "the annotation holds the sanitized spec"
        );
        assert!(
            r.response["response"]["warnings"][0]
                .as_str()
                .unwrap()
                .contains("redacted"),
            "{}",
            r.response
        );
        // Idempotent: the patched object needs nothing more.
        let again = review(
            &request("UPDATE", o.clone(), Some(o.clone())),
            SanitizeConfig::default(),
            now(),
        )
        .unwrap();
        assert_eq!(again.verdict, Verdict::Clean);
    }

    #[test]
    fn clean_objects_pass_unchanged_and_a_forged_annotation_goes() {
        let obj = object(spec(json!({})), None);
        let r = review(
            &request("CREATE", obj.clone(), None),
            SanitizeConfig::default(),
            now(),
        )
        .unwrap();
        assert_eq!(r.verdict, Verdict::Clean);
        assert!(r.response["response"].get("patch").is_none());
        let forged = object(
            spec(json!({})),
            Some(json!({ REDACTED_ANNOTATION: "jwt=9" })),
        );
        let r = review(
            &request("CREATE", forged.clone(), None),
            SanitizeConfig::default(),
            now(),
        )
        .unwrap();
        assert!(
            patched(&forged, &r)["metadata"]["annotations"]
                .get(REDACTED_ANNOTATION)
                .is_none()
        );
    }

    #[test]
    fn rules_the_crd_cannot_check_deny_new_specs_only() {
        let future = object(spec(json!({ "startTime": "2099-01-01T00:00:00Z" })), None);
        let r = review(
            &request("CREATE", future.clone(), None),
            SanitizeConfig::default(),
            now(),
        )
        .unwrap();
        assert_eq!(r.verdict, Verdict::Denied);
        let msg = r.response["response"]["status"]["message"]
            .as_str()
            .unwrap();
        assert!(
            msg.contains("spec.startTime") && msg.contains("future_time"),
            "{msg}"
        );
        assert_eq!(r.response["response"]["allowed"], false);
        // The same object admitted before (webhook down): its finalizer patch is not refused.
        let r = review(
            &request("UPDATE", future.clone(), Some(future)),
            SanitizeConfig::default(),
            now(),
        )
        .unwrap();
        assert_eq!(r.response["response"]["allowed"], true);
        // A credential in an opaque id names the kind, never the value.
        let id = object(
            spec(json!({ "remediationRequestId": "password=hunter2hunter2" })),
            None,
        );
        let r = review(
            &request("CREATE", id, None),
            SanitizeConfig::default(),
            now(),
        )
        .unwrap();
        let msg = r.response["response"]["status"]["message"]
            .as_str()
            .unwrap();
        assert!(
            !msg.contains("hunter2") && msg.contains("credential"),
            "{msg}"
        );
    }

    #[test]
    fn what_cannot_be_decoded_is_admitted_unchanged_and_garbage_is_an_error() {
        let deep = format!("{}1{}", r#"{"a":"#.repeat(300), "}".repeat(300));
        let body = format!(
            r#"{{"request":{{"uid":"u-2","operation":"CREATE","object":{{"spec":{{"details":{deep}}}}}}}}}"#
        );
        let r = review(body.as_bytes(), SanitizeConfig::default(), now()).unwrap();
        assert_eq!(r.verdict, Verdict::Skipped);
        assert_eq!(r.response["response"]["uid"], "u-2");
        let r = review(
            &request("DELETE", json!({}), None),
            SanitizeConfig::default(),
            now(),
        )
        .unwrap();
        assert_eq!(r.verdict, Verdict::Skipped);
        assert!(review(b"not json", SanitizeConfig::default(), now()).is_err());
    }

    #[test]
    fn an_unparsable_last_applied_annotation_is_redacted_as_text() {
        let got =
            sanitize_last_applied("{broken password=hunter2hunter2", SanitizeConfig::default())
                .unwrap();
        assert!(!got.contains("hunter2hunter2"), "{got}");
        assert_eq!(sanitize_last_applied("{}", SanitizeConfig::default()), None);
    }

    #[test]
    fn the_annotation_parser_is_bounded_to_known_kinds() {
        assert_eq!(
            parse_annotation("jwt=2, password_kv=1,made_up=5,slack_token=x"),
            vec![(SecretKind::Jwt, 2), (SecretKind::PasswordKv, 1)]
        );
        let mut m = BTreeMap::new();
        m.insert(SecretKind::Jwt, 2);
        m.insert(SecretKind::PasswordKv, 1);
        assert_eq!(annotation_value(&m), "jwt=2,password_kv=1");
    }
}
