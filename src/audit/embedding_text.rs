//! The text an audit's embedding is computed from.
//!
//! Only *semantic* fields go in (action, alert, target kind, phase, outcome, severity, error message), never ids,
//! names or timestamps: two audits of the same situation produce the same text, share one cache entry, and land
//! next to each other in the vector space. Words are spelled out ("restart pod", not "restart-pod") because the
//! sentence-embedding model was trained on natural language.

/// The semantic fields of one audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddingInput<'a> {
    pub action_type: &'a str,
    pub alert_name: Option<&'a str>,
    pub target_kind: Option<&'a str>,
    pub phase: &'a str,
    pub outcome: &'a str,
    pub severity: &'a str,
    pub error_message: Option<&'a str>,
}

/// At most this many bytes of the error message are embedded (the model reads ~256 tokens anyway).
const MAX_ERROR_BYTES: usize = 1024;

/// Builds the embedding text, deterministically.
pub fn embedding_text(input: &EmbeddingInput<'_>) -> String {
    let mut parts = Vec::with_capacity(7);
    parts.push(format!("action: {}", words(input.action_type)));
    if let Some(alert) = input.alert_name.filter(|a| !a.trim().is_empty()) {
        parts.push(format!("alert: {}", split_camel(alert)));
    }
    if let Some(kind) = input.target_kind {
        parts.push(format!("target: {}", kind.to_lowercase()));
    }
    parts.push(format!(
        "phase: {}, outcome: {}, severity: {}",
        input.phase.to_lowercase(),
        input.outcome.to_lowercase(),
        input.severity.to_lowercase()
    ));
    if let Some(err) = input.error_message.map(str::trim).filter(|e| !e.is_empty()) {
        parts.push(format!("error: {}", truncate_bytes(err, MAX_ERROR_BYTES)));
    }
    parts.join(". ")
}

/// The Kind of a `group/version/Kind/namespace/name` (or `version/Kind/...`, `Kind/name`) target reference.
pub fn target_kind(target_resource: &str) -> Option<&str> {
    target_resource
        .split('/')
        .find(|seg| seg.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
}

fn words(identifier: &str) -> String {
    identifier.replace(['-', '_', '.'], " ")
}

/// `KubePodOOMKilled` → `kube pod OOM killed`: natural words embed better than one long token.
fn split_camel(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        if i > 0 && c.is_uppercase() {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push(' ');
            }
        }
        if c == '_' || c == '-' {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.split_whitespace()
        .map(|w| {
            if w.chars().all(|c| c.is_uppercase() || c.is_ascii_digit()) {
                w.to_string()
            } else {
                w.to_lowercase()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semantic_fields_only_and_readable() {
        let text = embedding_text(&EmbeddingInput {
            action_type: "restart-pod",
            alert_name: Some("KubePodOOMKilled"),
            target_kind: target_kind("apps/v1/Deployment/payments/api"),
            phase: "Completed",
            outcome: "Success",
            severity: "critical",
            error_message: Some("container api exceeded memory limit"),
        });
        assert_eq!(
            text,
            "action: restart pod. alert: kube pod OOM killed. target: deployment. \
             phase: completed, outcome: success, severity: critical. error: container api exceeded memory limit"
        );
    }

    #[test]
    fn target_kinds() {
        assert_eq!(
            target_kind("apps/v1/Deployment/payments/api"),
            Some("Deployment")
        );
        assert_eq!(target_kind("v1/Pod/ns/name"), Some("Pod"));
        assert_eq!(target_kind("Node/worker-1"), Some("Node"));
        assert_eq!(target_kind("worker-1"), None);
    }

    #[test]
    fn long_error_is_cut_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let text = embedding_text(&EmbeddingInput {
            action_type: "a",
            alert_name: None,
            target_kind: None,
            phase: "Failed",
            outcome: "Failure",
            severity: "warning",
            error_message: Some(&long),
        });
        assert!(text.len() < 1200);
    }
}
