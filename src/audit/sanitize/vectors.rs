//! The rules' own vectors, gitleaks-style: each token row and each detector carries true positives (`tps`) and
//! false positives (`fps`) beside its pattern. In a positive every secret is marked `«secret»` (the rule's own
//! kind) or `«kind:secret»` (when an enclosing rule names it, e.g. `TOKEN=«token:ghp_…»`); the expected output is the
//! text with each marked span replaced by `[REDACTED:<kind>]`. A negative must come out of the whole sanitizer byte
//! for byte. The tests below run every vector through the full sanitizer; the fuzz targets
//! (`tests/it/fuzz.rs`) plant the positives' secrets through [`rule_vectors`].

use super::SecretKind;
use super::engine::rules;

/// One positive vector, unmarked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleVector {
    /// The rule it belongs to (`github-token`, `key-value`, …).
    pub rule: &'static str,
    /// The text, markers removed.
    pub text: String,
    /// What the sanitizer must turn it into.
    pub expected: String,
    /// The marked secrets, in order.
    pub secrets: Vec<String>,
    /// Their kinds.
    pub kinds: Vec<SecretKind>,
}

/// Parses a marked positive.
pub(crate) fn parse(rule: &'static str, marked: &str, default: SecretKind) -> RuleVector {
    let mut v = RuleVector {
        rule,
        text: String::new(),
        expected: String::new(),
        secrets: Vec::new(),
        kinds: Vec::new(),
    };
    let mut rest = marked;
    while let Some(open) = rest.find('«') {
        let (before, after) = rest.split_at(open);
        let after = &after['«'.len_utf8()..];
        let close = after.find('»').unwrap_or(after.len());
        let inner = &after[..close];
        let (kind, secret) = match inner.split_once(':') {
            Some((name, s)) if SecretKind::from_name(name).is_some() => {
                (SecretKind::from_name(name).unwrap_or(default), s)
            }
            _ => (default, inner),
        };
        v.text.push_str(before);
        v.text.push_str(secret);
        v.expected.push_str(before);
        v.expected.push_str(&kind.placeholder());
        v.secrets.push(secret.to_owned());
        v.kinds.push(kind);
        rest = after.get(close + '»'.len_utf8()..).unwrap_or("");
    }
    v.text.push_str(rest);
    v.expected.push_str(rest);
    v
}

/// Every rule's positive vectors, unmarked.
pub fn rule_vectors() -> Vec<RuleVector> {
    rules()
        .iter()
        .flat_map(|r| r.tps.iter().map(|tp| parse(r.name, tp, r.default_kind)))
        .collect()
}

/// Every rule's negative vectors: (rule, text the whole sanitizer keeps byte for byte).
pub fn rule_negatives() -> impl Iterator<Item = (&'static str, &'static str)> {
    rules()
        .iter()
        .flat_map(|r| r.fps.iter().map(move |fp| (r.name, *fp)))
}

/// The shared "safe text" corpus: real error messages, Maven coordinates, image references, digests, UUIDs,
/// base64 that is not a secret, Kubernetes objects. Every entry must survive the sanitizer untouched.
pub fn safe_corpus() -> impl Iterator<Item = &'static str> {
    include_str!("safe_corpus.txt")
        .split("\n%%\n")
        .map(|s| s.strip_suffix('\n').unwrap_or(s))
        .filter(|s| !s.is_empty() && !s.starts_with("%% "))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::super::engine::{prefilter, rules};
    use super::super::kinds::set_of;
    use super::super::{
        HtmlPolicy, Redaction, SecretKind, redact_secrets, sanitize_free_text, sanitize_json,
    };
    use super::*;

    fn free(text: &str) -> (String, Vec<Redaction>) {
        let mut r = Vec::new();
        let out = sanitize_free_text("errorMessage", text, HtmlPolicy::Strip, &mut r)
            .unwrap_or_else(|e| panic!("unexpected rejection: {e}"));
        (out, r)
    }

    /// The rule corpus: 100 % of the positives removed (exactly as marked), 100 % of the negatives and of the safe
    /// corpus kept byte for byte, each through the whole sanitizer (free text and as a `details` leaf).
    #[test]
    fn rule_corpus_through_the_full_sanitizer() {
        let mut failures = Vec::new();
        let (mut tps, mut tps_ok, mut fps, mut fps_ok, mut safe, mut safe_ok) = (0, 0, 0, 0, 0, 0);
        for v in rule_vectors() {
            tps += 1;
            let (out, r) = free(&v.text);
            let kinds: Vec<SecretKind> = r.iter().map(|x| x.kind).collect();
            let (again, r2) = free(&out);
            let (leaf, rl) = {
                let mut rl = Vec::new();
                let d = sanitize_json(
                    "details",
                    &json!({"l": [v.text.clone()]}),
                    HtmlPolicy::Strip,
                    &mut rl,
                );
                (d, rl)
            };
            if out == v.expected
                && kinds == v.kinds
                && again == out
                && r2.is_empty()
                && leaf == Ok(json!({"l": [v.expected.clone()]}))
                && rl.len() == v.kinds.len()
            {
                tps_ok += 1;
            } else {
                failures.push(format!(
                    "{}: positive {:?}\n   got {out:?} {kinds:?}\n  want {:?} {:?}",
                    v.rule, v.text, v.expected, v.kinds
                ));
            }
        }
        for (rule, fp) in rule_negatives() {
            fps += 1;
            let (out, r) = free(fp);
            if out == fp && r.is_empty() && matches!(redact_secrets(fp).0, Cow::Borrowed(_)) {
                fps_ok += 1;
            } else {
                failures.push(format!("{rule}: negative {fp:?} became {out:?} {r:?}"));
            }
        }
        for s in safe_corpus() {
            safe += 1;
            let (out, r) = free(s);
            let mut rl = Vec::new();
            let leaf = sanitize_json("details", &json!({"note": s}), HtmlPolicy::Reject, &mut rl);
            if out == s && r.is_empty() && leaf == Ok(json!({"note": s})) && rl.is_empty() {
                safe_ok += 1;
            } else {
                failures.push(format!("safe text {s:?} became {out:?} {r:?}"));
            }
        }
        let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
        println!(
            "rule corpus: {} rules; positives removed {tps_ok}/{tps} ({:.1} %); negatives kept {fps_ok}/{fps} ({:.1} %); \
             safe corpus kept {safe_ok}/{safe} ({:.1} %)",
            rules().len(),
            pct(tps_ok, tps),
            pct(fps_ok, fps),
            pct(safe_ok, safe)
        );
        assert!(
            failures.is_empty(),
            "{} vector failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert!(safe >= 60, "the safe corpus has only {safe} entries");
    }

    /// A rule runs only when the prefilter found one of its kinds' keywords: a positive without one would never be
    /// redacted, so it fails here, naming the rule.
    #[test]
    fn every_positive_passes_the_prefilter() {
        for rule in rules() {
            for tp in rule.tps {
                let v = parse(rule.name, tp, rule.default_kind);
                let present = prefilter(&v.text);
                assert!(
                    present & rule.kinds != 0,
                    "rule {}: positive {:?} contains none of its kinds' keywords; add one to the kind table",
                    rule.name,
                    v.text
                );
                for k in &v.kinds {
                    assert!(
                        present & k.bit() != 0,
                        "rule {}: {k} keywords missing from {:?}",
                        rule.name,
                        v.text
                    );
                }
            }
        }
    }

    #[test]
    fn kind_table_is_consistent() {
        let mut names = std::collections::BTreeSet::new();
        let all_rule_kinds = rules().iter().fold(0, |acc, r| acc | r.kinds);
        for k in SecretKind::ALL {
            assert!(names.insert(k.as_str()), "duplicate name {k}");
            assert!(
                k.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
            );
            assert!(!k.keywords().is_empty(), "{k} has no keyword");
            for kw in k.keywords() {
                assert_eq!(
                    *kw,
                    kw.to_ascii_lowercase(),
                    "keyword {kw:?} of {k} must be lower-case"
                );
            }
            assert!(all_rule_kinds & k.bit() != 0, "no rule emits {k}");
            assert_eq!(set_of(&[k]), k.bit());
        }
        let mut rule_names = std::collections::BTreeSet::new();
        for r in rules() {
            assert!(rule_names.insert(r.name), "duplicate rule name {}", r.name);
            assert!(!r.tps.is_empty(), "rule {} has no positive", r.name);
            assert!(!r.fps.is_empty(), "rule {} has no negative", r.name);
        }
    }

    #[test]
    fn every_kind_has_two_positives() {
        let mut seen = BTreeMap::<SecretKind, usize>::new();
        for v in rule_vectors() {
            for k in v.kinds {
                *seen.entry(k).or_default() += 1;
            }
        }
        for k in SecretKind::ALL {
            assert!(
                seen.get(&k).copied().unwrap_or(0) >= 2,
                "kind {k} has fewer than 2 positive vectors"
            );
        }
    }

    #[test]
    fn marker_syntax() {
        let v = parse("x", "a «token:b» c «d»", SecretKind::Secret);
        assert_eq!(v.text, "a b c d");
        assert_eq!(v.expected, "a [REDACTED:token] c [REDACTED:secret]");
        assert_eq!(v.kinds, [SecretKind::Token, SecretKind::Secret]);
        let v = parse("x", "«user:pw»", SecretKind::SecretJson);
        assert_eq!(v.secrets, ["user:pw"]);
    }
}
