//! Sanitization of remediation-audit records (pure functions, no I/O).
//!
//! * **Secret redaction** ([`redact_secrets`]): every free-text field and every string leaf of `details` is scanned
//!   for secrets; only the *secret part* is replaced by `[REDACTED:<kind>]`. Everything around it (key names,
//!   quotes, spacing, newlines, URL user/host) is kept byte for byte.
//! * **Markup detection** ([`contains_markup`]) for identifier fields, which are rejected (`xss_detected`).
//! * **Dangerous-HTML stripping** ([`strip_dangerous_html`]) for free text.
//!
//! There is deliberately **no SQL keyword stripping**: every query is parameterized, so text such as
//! `my-app-delete-jobs` or `DROP TABLE users; --` is stored exactly as received.
//!
//! # Layout
//!
//! | file | what |
//! |---|---|
//! | [`kinds`] | THE kind table: name, specificity, prefilter keywords of every kind |
//! | `tokens.rs` | flat token rules (GitHub, OpenAI, AWS, PEM, JWT, Slack, Stripe, GitLab, …), one row each with its vectors |
//! | `detectors/` | structural detectors, one file each with its vectors (keyed JSON, `key=value`, env pairs, URL userinfo, `Authorization`, Kubernetes Secret, Docker `auths`, XML elements, function arguments) |
//! | `keys.rs` | secret key names, placeholders/references, entropy |
//! | `engine.rs` | the prefilter derived from the table, candidate merging, the fixpoint |
//! | `html.rs` | markup detection and stripping |
//! | `json.rs` | the free-text pass and the `details` walk |
//! | `vectors.rs` | the vectors' marker syntax and the generic tests over every rule |
//!
//! A new kind is one row in [`kinds`] plus one row in `tokens.rs` (or one detector file) with its vectors. Every rule
//! and its known limitations are listed in `docs/sanitization.md`.
//!
//! The entry point is [`sanitize_spec`]: a whole `RemediationAudit` spec in, the clean spec, the redactions and
//! whether markup was removed out (what [`super::prepare`] stores and what an admission webhook would patch in).

mod detectors;
mod engine;
mod html;
mod json;
mod keys;
pub mod kinds;
mod tokens;
pub mod vectors;

#[cfg(test)]
mod tests;

use std::fmt;

use serde_json::Value;

use crate::crd::RemediationAuditSpec;
pub use engine::redact_secrets;
pub use html::{contains_markup, markup_pattern_re2, strip_dangerous_html};
pub use json::{DEPTH_EXCEEDED, MAX_JSON_DEPTH};
pub use kinds::SecretKind;

/// What to do with dangerous HTML in free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HtmlPolicy {
    /// Remove it (see [`strip_dangerous_html`]).
    #[default]
    Strip,
    /// Refuse the record ([`HtmlRejected`]).
    Reject,
}

/// Sanitization settings (from the DataStorage resource's `sanitization`).
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

/// One redaction performed while sanitizing a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    /// JSON-pointer-ish path, e.g. `errorMessage`, `details.env[2].value`. Built from *sanitized* keys, so it never
    /// contains the secret.
    pub field: String,
    /// What was redacted.
    pub kind: SecretKind,
}

/// Dangerous HTML was found in `field` under [`HtmlPolicy::Reject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtmlRejected {
    /// Path of the offending field.
    pub field: String,
}

impl fmt::Display for HtmlRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dangerous html in field {}", self.field)
    }
}

impl std::error::Error for HtmlRejected {}

/// A sanitized value with what was done to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sanitized<T> {
    pub value: T,
    /// Every secret that was redacted, with the field it was found in, in field order.
    pub redactions: Vec<Redaction>,
    /// Whether active markup was removed from free text (an `errorMessage`, a `details` leaf or key).
    pub markup_removed: bool,
}

/// The spec fields redacted as short text (secrets only: markup in them is rejected by validation).
const SHORT_FIELDS: [&str; 6] = [
    "alertName",
    "actionType",
    "severity",
    "environment",
    "clusterName",
    "targetResource",
];

/// THE entry point: sanitizes a whole `RemediationAudit` spec.
///
/// Short text fields ([`SHORT_FIELDS`]) have their secrets redacted; `errorMessage` is free text (markup stripped
/// or refused, secrets redacted, to a fixpoint); every string of `details` (keys too) likewise. The two opaque ids
/// (`remediationRequestId`, `alertFingerprint`) and the times are kept as they are (validation refuses an id that
/// carries a credential: rewriting it would break uniqueness). With `redact_secrets` off only markup is handled.
///
/// `Err` lists every free-text field holding markup under [`HtmlPolicy::Reject`] (paths such as
/// `details.a[0].msg`). Pure and total: it works on specs that do not validate too.
pub fn sanitize_spec(
    spec: &RemediationAuditSpec,
    config: SanitizeConfig,
) -> Result<Sanitized<RemediationAuditSpec>, Vec<HtmlRejected>> {
    let mut redactions = Vec::new();
    let mut pass = json::Pass {
        policy: config.html,
        redact: config.redact_secrets,
        redactions: &mut redactions,
        markup_removed: false,
    };
    let mut clean = spec.clone();
    if config.redact_secrets {
        let short: [(&str, &mut String); 5] = [
            (SHORT_FIELDS[1], &mut clean.action_type),
            (SHORT_FIELDS[2], &mut clean.severity),
            (SHORT_FIELDS[3], &mut clean.environment),
            (SHORT_FIELDS[4], &mut clean.cluster_name),
            (SHORT_FIELDS[5], &mut clean.target_resource),
        ];
        if let Some(v) = clean.alert_name.as_mut() {
            redact_short(SHORT_FIELDS[0], v, pass.redactions);
        }
        for (field, v) in short {
            redact_short(field, v, pass.redactions);
        }
    }
    let mut rejected = Vec::new();
    if let Some(v) = &spec.error_message {
        match pass.free_text("errorMessage", v) {
            Ok(c) => clean.error_message = Some(c),
            Err(e) => rejected.push(e),
        }
    }
    if let Some(map) = &spec.details {
        match pass.json("details", &Value::Object(map.clone()), 0) {
            Ok(Value::Object(c)) => clean.details = Some(c),
            Ok(_) => {}
            Err(e) => rejected.push(e),
        }
    }
    let markup_removed = pass.markup_removed;
    if !rejected.is_empty() {
        return Err(rejected);
    }
    Ok(Sanitized {
        value: clean,
        redactions,
        markup_removed,
    })
}

fn redact_short(field: &str, value: &mut String, redactions: &mut Vec<Redaction>) {
    let (redacted, kinds) = redact_secrets(value);
    if let std::borrow::Cow::Owned(r) = redacted {
        *value = r;
    }
    redactions.extend(kinds.into_iter().map(|kind| Redaction {
        field: field.to_owned(),
        kind,
    }));
}

/// Free text (e.g. `errorMessage`): strips dangerous HTML ([`HtmlPolicy::Strip`]) or refuses it
/// ([`HtmlPolicy::Reject`] → `Err(HtmlRejected)`), then redacts secrets, recording one [`Redaction`] per secret
/// under `field`; repeated until neither changes anything.
pub fn sanitize_free_text(
    field: &str,
    text: &str,
    policy: HtmlPolicy,
    redactions: &mut Vec<Redaction>,
) -> Result<String, HtmlRejected> {
    json::Pass {
        policy,
        redact: true,
        redactions,
        markup_removed: false,
    }
    .free_text(field, text)
}

/// `details`-like JSON: walks every string leaf and key (see `json.rs`) and sanitizes it as free text, redacting
/// the values that secret-named keys hold.
pub fn sanitize_json(
    field: &str,
    value: &Value,
    policy: HtmlPolicy,
    redactions: &mut Vec<Redaction>,
) -> Result<Value, HtmlRejected> {
    json::Pass {
        policy,
        redact: true,
        redactions,
        markup_removed: false,
    }
    .json(field, value, 0)
}
