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
    let mut expected_prev = String::new();
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

    #[test]
    fn chain_hash_is_sha256_of_concatenation() {
        assert_eq!(chain_hash("ab", "cd"), sha256_hex(b"abcd"));
    }
}
