//! The canonical, sanitized record of one audit generation and its hashes.
//!
//! `content_hash = sha256(canonical JSON of the record)`, `chain_hash = sha256(prev_chain_hash || content_hash)`
//! with `prev_chain_hash = ""` for an audit's first stored generation. The same formulas are implemented in SQL by
//! `verify_audit_chain()` (migrations), so the database can check itself.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What is stored for one generation of a RemediationAudit (after validation and sanitization).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    pub remediation_request_id: String,
    pub alert_fingerprint: String,
    pub alert_name: Option<String>,
    pub phase: String,
    pub outcome: String,
    pub action_type: String,
    pub severity: String,
    pub environment: String,
    pub cluster_name: String,
    pub target_resource: String,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-03-01T11:58:00.000Z`.
    pub start_time: String,
    pub end_time: Option<String>,
    pub duration_ms: Option<i64>,
    pub error_message: Option<String>,
    pub details: Option<Value>,
}

impl AuditRecord {
    /// The canonical JSON text of the record: object keys sorted, no insignificant whitespace, `null` fields kept.
    pub fn canonical_json(&self) -> String {
        // Serializing a plain struct cannot fail; fall back to Null rather than panic.
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        canonical_json(&value)
    }

    /// sha256 (hex) of the canonical JSON.
    pub fn content_hash(&self) -> String {
        sha256_hex(self.canonical_json().as_bytes())
    }
}

/// Writes `value` as canonical JSON: keys sorted bytewise at every level, compact, strings escaped by serde_json.
/// Independent of whether serde_json preserves insertion order in this build.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(*k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The chain hash of a generation given the previous generation's chain hash ("" for the first).
pub fn chain_hash(prev_chain_hash: &str, content_hash: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_chain_hash.as_bytes());
    h.update(content_hash.as_bytes());
    hex::encode(h.finalize())
}

/// One stored history entry, as read back for verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub generation: i64,
    pub record: String,
    pub content_hash: String,
    pub prev_chain_hash: String,
    pub chain_hash: String,
}

/// Result of checking one history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainCheck {
    pub generation: i64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Verifies a history (ordered by generation) from its records alone; mirrors SQL `verify_audit_chain()`.
pub fn verify_chain(entries: &[HistoryEntry]) -> Vec<ChainCheck> {
    verify_chain_from("", entries)
}

/// [`verify_chain`] of a run of entries that follows the generation whose chain hash is `prev` ("" for the
/// chain's start): one page of a history verifies on its own.
pub fn verify_chain_from(prev: &str, entries: &[HistoryEntry]) -> Vec<ChainCheck> {
    let mut expected_prev = prev.to_string();
    entries
        .iter()
        .map(|e| {
            let problem = if sha256_hex(e.record.as_bytes()) != e.content_hash {
                Some("record does not match content_hash")
            } else if e.prev_chain_hash != expected_prev {
                Some("prev_chain_hash does not match the previous generation")
            } else if chain_hash(&e.prev_chain_hash, &e.content_hash) != e.chain_hash {
                Some("chain_hash does not match prev_chain_hash and content_hash")
            } else {
                None
            };
            expected_prev = e.chain_hash.clone();
            ChainCheck {
                generation: e.generation,
                ok: problem.is_none(),
                problem: problem.map(str::to_string),
            }
        })
        .collect()
}

/// What `verify` found for one audit: its chain, its head, and the current row against the head record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub checks: Vec<ChainCheck>,
    /// The current row's chain hash is the latest history entry's.
    pub head_matches: bool,
    /// Fields in which the current row (what list, search and get show) differs from the head record; the row's
    /// own content hash counts as `contentHash`.
    pub row_mismatches: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        !self.checks.is_empty()
            && self.checks.iter().all(|c| c.ok)
            && self.head_matches
            && self.row_mismatches.is_empty()
    }

    /// One line per failure, for people: what failed, not just that something did.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| {
                format!(
                    "generation {}: {}",
                    c.generation,
                    c.problem.as_deref().unwrap_or("failed")
                )
            })
            .collect();
        if self.checks.is_empty() {
            out.push("no history entries".into());
        }
        if !self.head_matches {
            out.push("the current row's chainHash is not the chain's head".into());
        }
        if !self.row_mismatches.is_empty() {
            out.push(format!(
                "the current row differs from the head record in {}",
                self.row_mismatches.join(", ")
            ));
        }
        out
    }
}

/// Verifies an audit: its history (ordered by generation), that the current row's `chain_hash` is the head, and
/// that the current row shows exactly what the head record (the hashed one) holds.
pub fn verify_current(
    entries: &[HistoryEntry],
    shown: &AuditRecord,
    row_content_hash: &str,
    row_chain_hash: &str,
) -> Verification {
    verify_page(
        "",
        entries,
        entries.last(),
        shown,
        row_content_hash,
        row_chain_hash,
    )
}

/// [`verify_current`] of one page of a history: the page's entries follow the generation whose chain hash is
/// `prev` ("" when the page starts the chain), and `head` is the chain's latest entry (on whichever page it is).
/// Every page of a history verifying, each linked to the one before, is the whole chain verifying.
pub fn verify_page(
    prev: &str,
    entries: &[HistoryEntry],
    head: Option<&HistoryEntry>,
    shown: &AuditRecord,
    row_content_hash: &str,
    row_chain_hash: &str,
) -> Verification {
    let checks = verify_chain_from(prev, entries);
    let head_matches = head.is_some_and(|e| e.chain_hash == row_chain_hash);
    let mut row_mismatches = match head {
        Some(h) => record_mismatches(shown, &h.record),
        None => Vec::new(),
    };
    if head.is_some_and(|h| h.content_hash != row_content_hash) {
        row_mismatches.push("contentHash".into());
    }
    Verification {
        checks,
        head_matches,
        row_mismatches,
    }
}

/// The fields (record names) in which the record a current row shows differs from a stored history record, sorted;
/// empty when the row shows exactly what the chain covers; `["record"]` when the stored record is unreadable.
/// Mirrors SQL `audit_row_mismatches()` (migrations), which guards updates of the current row.
pub fn record_mismatches(shown: &AuditRecord, stored_record: &str) -> Vec<String> {
    let shown = serde_json::to_value(shown).unwrap_or(Value::Null);
    let stored: Value = serde_json::from_str(stored_record).unwrap_or(Value::Null);
    let (Value::Object(shown), Value::Object(stored)) = (shown, &stored) else {
        return vec!["record".to_string()];
    };
    let mut keys: Vec<&String> = shown.keys().chain(stored.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| {
            let a = shown.get(*k).unwrap_or(&Value::Null);
            let b = stored.get(*k).unwrap_or(&Value::Null);
            !same_json(a, b)
        })
        .map(|k| k.to_string())
        .collect()
}

/// JSON equality with numbers compared by value (`1.0` read back from JSONB equals `1.0` as written, and an
/// integer written as `100` equals `100` read back whatever its representation).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || (x.as_f64().is_some() && x.as_f64() == y.as_f64())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":2}],"c":"é\n"}}"#).unwrap();
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"é\n","z":[{"x":2,"y":1}]},"b":1}"#
        );
    }

    #[test]
    fn chain_verifies_and_detects_tampering() {
        let mut prev = String::new();
        let mut entries = Vec::new();
        for g in 1..=3 {
            let record = format!(r#"{{"generation":{g}}}"#);
            let content = sha256_hex(record.as_bytes());
            let chain = chain_hash(&prev, &content);
            entries.push(HistoryEntry {
                generation: g,
                record,
                content_hash: content,
                prev_chain_hash: prev.clone(),
                chain_hash: chain.clone(),
            });
            prev = chain;
        }
        assert!(verify_chain(&entries).iter().all(|c| c.ok));
        let mut tampered = entries.clone();
        tampered[1].record = r#"{"generation":20}"#.into();
        let checks = verify_chain(&tampered);
        assert!(checks[0].ok && !checks[1].ok && checks[2].ok);
        let mut removed = entries.clone();
        removed.remove(1);
        let checks = verify_chain(&removed);
        assert!(checks[0].ok && !checks[1].ok);
    }

    fn sample() -> AuditRecord {
        AuditRecord {
            uid: "u".into(),
            namespace: "ns".into(),
            name: "n".into(),
            generation: 2,
            remediation_request_id: "r".into(),
            alert_fingerprint: "f".into(),
            alert_name: None,
            phase: "Completed".into(),
            outcome: "Success".into(),
            action_type: "restart".into(),
            severity: "high".into(),
            environment: "prod".into(),
            cluster_name: "c".into(),
            target_resource: "t".into(),
            start_time: "2026-03-01T11:58:00.000Z".into(),
            end_time: None,
            duration_ms: None,
            error_message: Some("boom".into()),
            details: Some(serde_json::json!({"a": 1.0, "b": [1, 2]})),
        }
    }

    #[test]
    fn a_row_that_shows_its_record_has_no_mismatches() {
        let r = sample();
        assert!(record_mismatches(&r, &r.canonical_json()).is_empty());
        // Details read back from JSONB: other key order, same numbers.
        let stored = r
            .canonical_json()
            .replace(r#"{"a":1.0,"b":[1,2]}"#, r#"{"b":[1,2],"a":1.0}"#);
        assert!(record_mismatches(&r, &stored).is_empty(), "{stored}");
    }

    #[test]
    fn a_row_that_was_changed_names_the_changed_fields() {
        let stored = sample().canonical_json();
        let mut shown = sample();
        shown.outcome = "Failure".into();
        shown.error_message = None;
        shown.details = Some(serde_json::json!({"a": 2}));
        assert_eq!(
            record_mismatches(&shown, &stored),
            ["details", "errorMessage", "outcome"]
        );
        assert_eq!(record_mismatches(&shown, "not json"), ["record"]);
    }

    #[test]
    fn chain_hash_is_sha256_of_concatenation() {
        assert_eq!(chain_hash("ab", "cd"), sha256_hex(b"abcd"));
    }
}
