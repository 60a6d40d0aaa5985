//! Validation of a `RemediationAudit` spec: every rule of the spec, all failures reported together.
//!
//! Pure: the caller passes the current time. Lengths are counted in bytes (what PostgreSQL stores), which is why
//! these rules live here and not in the CRD's OpenAPI schema (whose `maxLength` counts characters).

use std::fmt;
use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use regex::Regex;
use serde::Serialize;

use super::sanitize::{contains_markup, redact_secrets};
use crate::crd::RemediationAuditSpec;

/// Why a field was rejected; the label values of `datastorage_validation_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Required,
    Invalid,
    LengthExceeded,
    XssDetected,
    Duplicate,
    TooLarge,
    TimeOrder,
    FutureTime,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Required,
        Reason::Invalid,
        Reason::LengthExceeded,
        Reason::XssDetected,
        Reason::Duplicate,
        Reason::TooLarge,
        Reason::TimeOrder,
        Reason::FutureTime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Required => "required",
            Reason::Invalid => "invalid",
            Reason::LengthExceeded => "length_exceeded",
            Reason::XssDetected => "xss_detected",
            Reason::Duplicate => "duplicate",
            Reason::TooLarge => "too_large",
            Reason::TimeOrder => "time_order",
            Reason::FutureTime => "future_time",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broken rule. `field` is the spec field's JSON name (a bounded set, used as a metric label); `message`
/// says what is wrong in words, including any nested path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub reason: Reason,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spec.{}: {} ({})", self.field, self.message, self.reason)
    }
}

/// The field names that can appear in `FieldError::field` (plus `spec` for objects that do not parse).
pub const FIELDS: [&str; 15] = [
    "spec",
    "remediationRequestId",
    "alertFingerprint",
    "alertName",
    "phase",
    "outcome",
    "actionType",
    "severity",
    "environment",
    "clusterName",
    "targetResource",
    "startTime",
    "endTime",
    "errorMessage",
    "details",
];

pub const MAX_ERROR_MESSAGE_BYTES: usize = 8192;
pub const MAX_DETAILS_BYTES: usize = 64 * 1024;
pub const MAX_DETAILS_DEPTH: usize = 32;
/// How far in the future a start time may lie (clock skew between the remediating system and the cluster).
pub const MAX_FUTURE: Duration = Duration::hours(1);
/// The earliest start time accepted (the Unix epoch): nothing was remediated by this kind of system before it, and
/// a start time of year 1 or 9999 BC is a bug or a probe (PostgreSQL and the monthly partitions have limits too).
pub const MIN_START: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// Characters that are invisible or reorder text: bidirectional overrides/isolates/marks, zero-width characters,
/// the BOM, soft hyphen, line/paragraph separators, interlinear annotations. Identifiers carrying them display as
/// something they are not (`payments\u{202e}gnp.exe`); they are rejected there, and the CLI escapes them everywhere.
pub fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

static ACTION_TYPE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(ACTION_TYPE_PATTERN).ok());

/// The spec's times, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Times {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

/// One text field of the spec and its rules. The same table drives [`validate`] and the CRD's schema
/// ([`crate::crd`]: `maxLength` and the `x-kubernetes-validations` that the API server checks at apply time), so
/// both report the same limits with the same messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRule {
    /// The spec field's JSON name.
    pub field: &'static str,
    pub max_bytes: usize,
    /// Required and not blank.
    pub required: bool,
    /// Identifiers: no control characters, no markup.
    pub identifier: bool,
}

const fn text(field: &'static str, max_bytes: usize, required: bool, identifier: bool) -> TextRule {
    TextRule {
        field,
        max_bytes,
        required,
        identifier,
    }
}

/// Every text field of the spec with its rules, in the order the errors are reported.
pub const TEXT_RULES: [TextRule; 9] = [
    text("remediationRequestId", 255, true, true),
    text("alertFingerprint", 255, true, true),
    text("alertName", 255, false, true),
    text("actionType", 100, true, true),
    text("severity", 50, true, true),
    text("environment", 50, true, true),
    text("clusterName", 255, true, true),
    text("targetResource", 512, true, true),
    text("errorMessage", MAX_ERROR_MESSAGE_BYTES, false, false),
];

/// `actionType`'s pattern (the same in Rust's `regex` and the API server's RE2).
pub const ACTION_TYPE_PATTERN: &str = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$";

/// The messages of the rules (shared with the CRD's validation rules).
pub mod messages {
    pub const REQUIRED: &str = "is required";
    pub const BLANK: &str = "is required and must not be blank";
    pub const NUL: &str = "contains a NUL character, which PostgreSQL cannot store";
    pub const CONTROL: &str = "contains control characters";
    pub const MARKUP: &str = "contains markup (HTML tags, javascript: URLs or event handlers), which identifiers never do";
    pub const ACTION_TYPE: &str = "must be lowercase letters, digits, '.', '_' or '-', starting and ending with a \
                                   letter or digit (e.g. restart-pod)";

    /// A value longer than its field's limit.
    pub fn too_long(len: usize, max_bytes: usize) -> String {
        too_long_format(max_bytes).replacen("%d", &len.to_string(), 1)
    }

    /// [`too_long`] as a CEL format string (`%d`: the length).
    pub fn too_long_format(max_bytes: usize) -> String {
        format!("is %d bytes long; the limit is {max_bytes} bytes")
    }

    /// `endTime` before `startTime` (both as written in the spec, as the API server shows them too).
    pub fn time_order(end: &str, start: &str) -> String {
        format!("{end} is before startTime {start}")
    }
}

fn text_value<'a>(spec: &'a RemediationAuditSpec, field: &str) -> Option<&'a str> {
    Some(match field {
        "remediationRequestId" => &spec.remediation_request_id,
        "alertFingerprint" => &spec.alert_fingerprint,
        "alertName" => return spec.alert_name.as_deref(),
        "actionType" => &spec.action_type,
        "severity" => &spec.severity,
        "environment" => &spec.environment,
        "clusterName" => &spec.cluster_name,
        "targetResource" => &spec.target_resource,
        "errorMessage" => return spec.error_message.as_deref(),
        _ => return None,
    })
}

/// Checks every rule of a spec. On success returns the parsed times; on failure every broken rule.
pub fn validate(spec: &RemediationAuditSpec, now: DateTime<Utc>) -> Result<Times, Vec<FieldError>> {
    let mut errors = Vec::new();
    for rule in &TEXT_RULES {
        let value = text_value(spec, rule.field);
        check_text(
            &mut errors,
            rule.field,
            value,
            rule.required,
            rule.max_bytes,
            rule.identifier,
        );
        if rule.field == "actionType"
            && !spec.action_type.is_empty()
            && spec.action_type.len() <= rule.max_bytes
            && !ACTION_TYPE
                .as_ref()
                .is_some_and(|re| re.is_match(&spec.action_type))
            && !errors.iter().any(|e| e.field == "actionType")
        {
            errors.push(FieldError::new(
                "actionType",
                Reason::Invalid,
                messages::ACTION_TYPE,
            ));
        }
    }
    if let Some(details) = &spec.details {
        check_details(&mut errors, details);
    }
    let times = check_times(&mut errors, &spec.start_time, spec.end_time.as_deref(), now);
    match times {
        Some(times) if errors.is_empty() => Ok(times),
        _ => Err(errors),
    }
}

fn check_text(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: Option<&str>,
    required: bool,
    max_bytes: usize,
    identifier: bool,
) {
    let Some(value) = value else {
        if required {
            errors.push(FieldError::new(field, Reason::Required, messages::REQUIRED));
        }
        return;
    };
    if value.trim().is_empty() {
        if required {
            errors.push(FieldError::new(field, Reason::Required, messages::BLANK));
        }
        return;
    }
    if value.len() > max_bytes {
        errors.push(FieldError::new(
            field,
            Reason::LengthExceeded,
            messages::too_long(value.len(), max_bytes),
        ));
        return;
    }
    if value.contains('\0') {
        errors.push(FieldError::new(field, Reason::Invalid, messages::NUL));
        return;
    }
    if identifier {
        if value.chars().any(|c| c.is_control()) {
            errors.push(FieldError::new(field, Reason::Invalid, messages::CONTROL));
        } else if let Some(c) = value.chars().find(|c| is_invisible_format(*c)) {
            errors.push(FieldError::new(
                field,
                Reason::Invalid,
                format!(
                    "contains an invisible or bidirectional formatting character (U+{:04X}), which makes an \
                     identifier display as something it is not",
                    c as u32
                ),
            ));
        } else if contains_markup(value) {
            errors.push(FieldError::new(
                field,
                Reason::XssDetected,
                messages::MARKUP,
            ));
        } else if OPAQUE_ID_FIELDS.contains(&field)
            && let Some(kind) = super::sanitize::redact_secrets(value).1.first()
        {
            // Opaque ids are stored verbatim (rewriting them would break uniqueness), so one that carries a
            // credential is refused instead. The message names the kind, never the value.
            errors.push(FieldError::new(
                field,
                Reason::Invalid,
                format!(
                    "looks like it carries a credential ({}); identifiers must not contain secrets",
                    kind.as_str()
                ),
            ));
        }
    }
}

/// Identifiers stored verbatim: never redacted by [`crate::audit::prepare`] (rewriting would break uniqueness),
/// so validation refuses one that carries a credential.
pub const OPAQUE_ID_FIELDS: [&str; 2] = ["remediationRequestId", "alertFingerprint"];

/// Depth, NUL characters and size of `details`. The paths in the messages (which end up in the CR's status, events
/// and logs) name each key with its secrets redacted: a key may itself hold one (`{"password=x": …}`).
fn check_details(
    errors: &mut Vec<FieldError>,
    details: &serde_json::Map<String, serde_json::Value>,
) {
    // Depth and NUL characters first: both must be known before the size is meaningful.
    let mut stack: Vec<(&serde_json::Value, usize, String)> = details
        .iter()
        .map(|(k, v)| (v, 1usize, format!("details.{}", redact_secrets(k).0)))
        .collect();
    for key in details.keys() {
        if key.contains('\0') {
            errors.push(FieldError::new(
                "details",
                Reason::Invalid,
                "a key contains a NUL character",
            ));
            return;
        }
    }
    while let Some((value, depth, path)) = stack.pop() {
        if depth > MAX_DETAILS_DEPTH {
            errors.push(FieldError::new(
                "details",
                Reason::TooLarge,
                format!("is nested deeper than {MAX_DETAILS_DEPTH} levels (at {path})"),
            ));
            return;
        }
        match value {
            serde_json::Value::String(s) if s.contains('\0') => {
                errors.push(FieldError::new(
                    "details",
                    Reason::Invalid,
                    format!("{path} contains a NUL character, which PostgreSQL cannot store"),
                ));
                return;
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    stack.push((item, depth + 1, format!("{path}[{i}]")));
                }
            }
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k.contains('\0') {
                        errors.push(FieldError::new(
                            "details",
                            Reason::Invalid,
                            format!("a key under {path} contains a NUL character"),
                        ));
                        return;
                    }
                    stack.push((v, depth + 1, format!("{path}.{}", redact_secrets(k).0)));
                }
            }
            _ => {}
        }
    }
    match serde_json::to_vec(details) {
        Ok(bytes) if bytes.len() > MAX_DETAILS_BYTES => errors.push(FieldError::new(
            "details",
            Reason::TooLarge,
            format!(
                "is {} bytes serialized; the limit is {MAX_DETAILS_BYTES} bytes",
                bytes.len()
            ),
        )),
        Ok(_) => {}
        Err(e) => errors.push(FieldError::new(
            "details",
            Reason::Invalid,
            format!("cannot be serialized: {e}"),
        )),
    }
}

fn parse_time(errors: &mut Vec<FieldError>, field: &str, value: &str) -> Option<DateTime<Utc>> {
    if value.trim().is_empty() {
        errors.push(FieldError::new(field, Reason::Required, messages::REQUIRED));
        return None;
    }
    match DateTime::parse_from_rfc3339(value) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(e) => {
            errors.push(FieldError::new(
                field,
                Reason::Invalid,
                format!("is not an RFC 3339 time like 2026-01-02T15:04:05Z ({e})"),
            ));
            None
        }
    }
}

fn check_times(
    errors: &mut Vec<FieldError>,
    start: &str,
    end: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Times> {
    let start_t = parse_time(errors, "startTime", start);
    let end_t = match end {
        Some(e) if !e.trim().is_empty() => Some(parse_time(errors, "endTime", e)),
        _ => None,
    };
    let start_t = start_t?;
    if start_t < MIN_START {
        errors.push(FieldError::new(
            "startTime",
            Reason::Invalid,
            format!(
                "{} is before {}, the earliest start time accepted",
                start_t.to_rfc3339(),
                MIN_START.to_rfc3339()
            ),
        ));
    }
    let limit = now + MAX_FUTURE;
    if start_t > limit {
        errors.push(FieldError::new(
            "startTime",
            Reason::FutureTime,
            format!(
                "{} is more than one hour in the future",
                start_t.to_rfc3339()
            ),
        ));
    }
    let end_t = match end_t {
        None => None,
        Some(None) => return None,
        Some(Some(e)) => Some(e),
    };
    if let Some(e) = end_t {
        if e < start_t {
            errors.push(FieldError::new(
                "endTime",
                Reason::TimeOrder,
                messages::time_order(end.unwrap_or_default().trim(), start.trim()),
            ));
        } else if e > limit {
            errors.push(FieldError::new(
                "endTime",
                Reason::FutureTime,
                format!("{} is more than one hour in the future", e.to_rfc3339()),
            ));
        }
    }
    Some(Times {
        start: start_t,
        end: end_t,
        duration_ms: end_t.map(|e| (e - start_t).num_milliseconds()),
    })
}

/// One line naming every field and rule, for the CR's `status.message`.
pub fn summarize(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("rejected: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AuditOutcome, AuditPhase};

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    pub(crate) fn spec() -> RemediationAuditSpec {
        RemediationAuditSpec {
            remediation_request_id: "rr-2026-0001".into(),
            alert_fingerprint: "a1b2c3d4".into(),
            alert_name: Some("KubePodOOMKilled".into()),
            phase: AuditPhase::Completed,
            outcome: AuditOutcome::Success,
            action_type: "restart-pod".into(),
            severity: "critical".into(),
            environment: "production".into(),
            cluster_name: "prod-eu-1".into(),
            target_resource: "apps/v1/Deployment/payments/api".into(),
            start_time: "2026-03-01T11:58:00Z".into(),
            end_time: Some("2026-03-01T11:58:30.250Z".into()),
            error_message: None,
            details: None,
        }
    }

    fn reasons(spec: &RemediationAuditSpec) -> Vec<(String, Reason)> {
        match validate(spec, now()) {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| (e.field, e.reason)).collect(),
        }
    }

    #[test]
    fn valid_spec_passes_and_derives_duration() {
        let t = validate(&spec(), now()).unwrap();
        assert_eq!(t.duration_ms, Some(30_250));
    }

    #[test]
    fn required_fields() {
        let mut s = spec();
        s.remediation_request_id = String::new();
        s.severity = "   ".into();
        s.start_time = String::new();
        assert_eq!(
            reasons(&s),
            vec![
                ("remediationRequestId".into(), Reason::Required),
                ("severity".into(), Reason::Required),
                ("startTime".into(), Reason::Required),
            ]
        );
    }

    #[test]
    fn lengths_are_bytes() {
        let mut s = spec();
        // 128 two-byte characters = 256 bytes > 255, although only 128 characters.
        s.remediation_request_id = "é".repeat(128);
        assert_eq!(
            reasons(&s),
            vec![("remediationRequestId".into(), Reason::LengthExceeded)]
        );
        s.remediation_request_id = "a".repeat(255);
        assert_eq!(reasons(&s), vec![]);
        s.error_message = Some("x".repeat(MAX_ERROR_MESSAGE_BYTES + 1));
        assert_eq!(
            reasons(&s),
            vec![("errorMessage".into(), Reason::LengthExceeded)]
        );
        s.error_message = Some("x".repeat(MAX_ERROR_MESSAGE_BYTES));
        assert_eq!(reasons(&s), vec![]);
        s.target_resource = "t".repeat(513);
        assert_eq!(
            reasons(&s),
            vec![("targetResource".into(), Reason::LengthExceeded)]
        );
    }

    #[test]
    fn action_type_pattern() {
        for ok in ["restart-pod", "a", "scale.deployment_v2", "drain-node-1"] {
            let mut s = spec();
            s.action_type = ok.into();
            assert_eq!(reasons(&s), vec![], "{ok}");
        }
        for bad in [
            "Restart-Pod",
            "-restart",
            "restart-",
            "restart pod",
            "restart/pod",
        ] {
            let mut s = spec();
            s.action_type = bad.into();
            assert_eq!(
                reasons(&s),
                vec![("actionType".into(), Reason::Invalid)],
                "{bad}"
            );
        }
    }

    #[test]
    fn markup_in_identifiers_is_xss() {
        let mut s = spec();
        s.cluster_name = "<script>alert(1)</script>".into();
        s.alert_name = Some("x\" onmouseover=alert(1)".into());
        assert_eq!(
            reasons(&s),
            vec![
                ("alertName".into(), Reason::XssDetected),
                ("clusterName".into(), Reason::XssDetected)
            ]
        );
    }

    #[test]
    fn times() {
        let mut s = spec();
        s.start_time = "yesterday".into();
        assert_eq!(reasons(&s), vec![("startTime".into(), Reason::Invalid)]);
        let mut s = spec();
        s.end_time = Some("2026-03-01T11:00:00Z".into());
        assert_eq!(reasons(&s), vec![("endTime".into(), Reason::TimeOrder)]);
        let mut s = spec();
        s.start_time = "2026-03-01T13:00:01Z".into();
        s.end_time = None;
        assert_eq!(reasons(&s), vec![("startTime".into(), Reason::FutureTime)]);
        s.start_time = "2026-03-01T13:00:00Z".into();
        assert_eq!(reasons(&s), vec![]);
        // Offsets are understood.
        s.start_time = "2026-03-01T13:30:00+01:00".into();
        assert_eq!(reasons(&s), vec![]);
        // A lower bound: the Unix epoch.
        s.start_time = "1969-12-31T23:59:59Z".into();
        assert_eq!(reasons(&s), vec![("startTime".into(), Reason::Invalid)]);
        s.start_time = "0001-01-01T00:00:00Z".into();
        assert_eq!(reasons(&s), vec![("startTime".into(), Reason::Invalid)]);
        s.start_time = "1970-01-01T00:00:00Z".into();
        assert_eq!(reasons(&s), vec![]);
    }

    #[test]
    fn invisible_and_bidi_characters_in_identifiers_are_invalid() {
        for c in [
            '\u{202E}', '\u{2066}', '\u{200B}', '\u{200D}', '\u{FEFF}', '\u{061C}', '\u{2028}',
        ] {
            let mut s = spec();
            s.cluster_name = format!("prod{c}-eu");
            s.remediation_request_id = format!("rr{c}1");
            s.target_resource = format!("apps/v1/Deployment/pay{c}ments/api");
            assert_eq!(
                reasons(&s),
                vec![
                    ("remediationRequestId".into(), Reason::Invalid),
                    ("clusterName".into(), Reason::Invalid),
                    ("targetResource".into(), Reason::Invalid),
                ],
                "U+{:04X}",
                c as u32
            );
        }
        // Free text keeps them (an error message may quote right-to-left text); the CLI escapes it on output.
        let mut s = spec();
        s.error_message = Some("\u{202B}שגיאה\u{202C} in pod".into());
        assert_eq!(reasons(&s), vec![]);
        // Ordinary non-ASCII identifiers are fine.
        s.cluster_name = "prod-zürich".into();
        assert_eq!(reasons(&s), vec![]);
    }

    #[test]
    fn details_limits() {
        let mut s = spec();
        let mut v = serde_json::json!("leaf");
        for _ in 0..40 {
            v = serde_json::json!({ "n": v });
        }
        s.details = Some(serde_json::Map::from_iter([("deep".to_string(), v)]));
        assert_eq!(reasons(&s), vec![("details".into(), Reason::TooLarge)]);
        s.details = Some(serde_json::Map::from_iter([(
            "big".to_string(),
            serde_json::json!("x".repeat(MAX_DETAILS_BYTES)),
        )]));
        assert_eq!(reasons(&s), vec![("details".into(), Reason::TooLarge)]);
        s.details = Some(serde_json::Map::from_iter([(
            "nul".to_string(),
            serde_json::json!(["ok", "bad\u{0}"]),
        )]));
        assert_eq!(reasons(&s), vec![("details".into(), Reason::Invalid)]);
    }

    #[test]
    fn details_messages_do_not_echo_secrets_in_keys() {
        // Found by the bad-input corpus: the paths in these messages repeated raw keys.
        let mut v = serde_json::json!("leaf");
        for _ in 0..40 {
            v = serde_json::json!({ "n": v });
        }
        let mut s = spec();
        s.details = Some(serde_json::Map::from_iter([(
            "password=hunter2".to_string(),
            v,
        )]));
        let msg = summarize(&validate(&s, now()).unwrap_err());
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(
            msg.contains("details.password=[REDACTED:password_kv].n"),
            "{msg}"
        );
        s.details = Some(serde_json::Map::from_iter([(
            "AKIAIOSFODNN7EXAMPLE".to_string(),
            serde_json::json!({"k\u{0}": 1}),
        )]));
        let msg = summarize(&validate(&s, now()).unwrap_err());
        assert!(!msg.contains("AKIAIOSFODNN7EXAMPLE"), "{msg}");
    }

    #[test]
    fn all_failures_reported_together_and_summarized() {
        let mut s = spec();
        s.action_type = "BAD".into();
        s.environment = String::new();
        s.end_time = Some("2026-02-01T00:00:00Z".into());
        let errors = validate(&s, now()).unwrap_err();
        assert_eq!(errors.len(), 3);
        let msg = summarize(&errors);
        assert!(msg.contains("spec.actionType"), "{msg}");
        assert!(msg.contains("spec.environment"), "{msg}");
        assert!(msg.contains("time_order"), "{msg}");
    }
}
