//! The redaction engine: the prefilter derived from the kind table, the rule registry (flat token rows and
//! structural detectors), candidate merging and the fixpoint loop.
//!
//! 1. The prefilter, one Aho-Corasick automaton over every kind's keywords (ASCII case-insensitive), tells which
//!    kinds can occur in the text; text matching no keyword is returned as `Cow::Borrowed` at once.
//! 2. Every rule that can emit one of those kinds runs and yields *candidate spans* `(start, end, kind)` covering
//!    only the secret bytes. Candidates that are a placeholder or a reference (`$VAR`, `{{ … }}`, `XXXX`: see
//!    [`super::keys::is_reference`]) are dropped.
//! 3. Candidates overlapping an existing `[REDACTED:<kind>]` placeholder are dropped (this makes redaction
//!    idempotent); the remaining overlapping candidates are merged into one span, which takes the kind of its
//!    **outermost** candidate (the longest; ties broken by the table's specificity). So `Authorization: Bearer x`
//!    is `authorization_header`, `"api_key": "sk-…"` is `api_key_json`, `token=ghp_…` is `token`.
//! 4. The pass is repeated until nothing changes (bounded), so the result is a fixpoint.

use std::borrow::Cow;
use std::sync::LazyLock;

use aho_corasick::AhoCorasick;
use regex::Regex;

use super::kinds::{KindSet, SecretKind, set_of};
use super::{detectors, keys, tokens};

/// A candidate secret span.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cand {
    pub start: usize,
    pub end: usize,
    pub kind: SecretKind,
}

/// Adds a non-empty candidate.
pub(crate) fn push(out: &mut Vec<Cand>, start: usize, end: usize, kind: SecretKind) {
    if end > start {
        out.push(Cand { start, end, kind });
    }
}

/// A structural detector: one file under `detectors/`, with the kinds it can emit and its vectors.
pub(crate) struct Detector {
    pub name: &'static str,
    pub kinds: &'static [SecretKind],
    pub scan: fn(&str, &mut Vec<Cand>),
    /// Texts holding secrets, each marked `«secret»` or `«kind:secret»` (see [`super::vectors`]).
    pub tps: &'static [&'static str],
    /// Texts the whole sanitizer must keep byte for byte.
    pub fps: &'static [&'static str],
}

/// One rule as the engine and the vector tests see it.
pub(crate) struct RuleRef {
    pub name: &'static str,
    pub kinds: KindSet,
    /// The kind of a vector's `«secret»` marker that names none.
    pub default_kind: SecretKind,
    pub tps: &'static [&'static str],
    pub fps: &'static [&'static str],
    run: Runner,
}

#[derive(Clone, Copy)]
enum Runner {
    Token(usize),
    Detector(fn(&str, &mut Vec<Cand>)),
}

struct Engine {
    prefilter: AhoCorasick,
    /// Kinds of each prefilter pattern.
    pattern_kinds: Vec<KindSet>,
    placeholder: Regex,
    rules: Vec<RuleRef>,
    token_regexes: Vec<Regex>,
}

#[allow(clippy::expect_used)]
pub(crate) fn compile(pattern: &str) -> Regex {
    // Every pattern is a constant; `every_rule_compiles` forces all of them.
    Regex::new(pattern).expect("constant sanitize pattern must compile")
}

#[allow(clippy::expect_used)]
static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let mut words: Vec<&'static str> = Vec::new();
    let mut pattern_kinds: Vec<KindSet> = Vec::new();
    for kind in SecretKind::ALL {
        for kw in kind.keywords() {
            match words.iter().position(|w| w == kw) {
                Some(i) => pattern_kinds[i] |= kind.bit(),
                None => {
                    words.push(kw);
                    pattern_kinds.push(kind.bit());
                }
            }
        }
    }
    let prefilter = AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(&words)
        // Built from the constant keyword table; `every_rule_compiles` forces it.
        .expect("keyword prefilter must build");
    let names = SecretKind::ALL.map(SecretKind::as_str).join("|");
    let mut rules = Vec::new();
    let mut token_regexes = Vec::new();
    for (i, row) in tokens::ROWS.iter().enumerate() {
        token_regexes.push(compile(row.pattern));
        rules.push(RuleRef {
            name: row.name,
            kinds: row.kind.bit(),
            default_kind: row.kind,
            tps: row.tps,
            fps: row.fps,
            run: Runner::Token(i),
        });
    }
    for d in detectors::ALL {
        rules.push(RuleRef {
            name: d.name,
            kinds: set_of(d.kinds),
            default_kind: d.kinds[0],
            tps: d.tps,
            fps: d.fps,
            run: Runner::Detector(d.scan),
        });
    }
    Engine {
        prefilter,
        pattern_kinds,
        placeholder: compile(&format!(r"\[REDACTED:(?:{names})\]")),
        rules,
        token_regexes,
    }
});

/// Every rule, token rows first, then the detectors.
pub(crate) fn rules() -> &'static [RuleRef] {
    &ENGINE.rules
}

/// The kinds whose keywords occur in `text` (the prefilter).
pub(crate) fn prefilter(text: &str) -> KindSet {
    let e = &*ENGINE;
    let mut set = 0;
    for m in e.prefilter.find_overlapping_iter(text) {
        set |= e.pattern_kinds[m.pattern().as_usize()];
    }
    set
}

fn run_token_row(e: &Engine, i: usize, text: &str, out: &mut Vec<Cand>) {
    let row = &tokens::ROWS[i];
    let re = &e.token_regexes[i];
    for c in re.captures_iter(text) {
        let m = match row.group {
            "" => c.get(0),
            g => c.name(g),
        };
        if let Some(m) = m
            && (row.check)(text, m.start(), m.end())
        {
            push(out, m.start(), m.end(), row.kind);
        }
    }
}

impl RuleRef {
    /// Runs this rule alone on `text`.
    pub(crate) fn scan(&self, text: &str, out: &mut Vec<Cand>) {
        match self.run {
            Runner::Token(i) => run_token_row(&ENGINE, i, text, out),
            Runner::Detector(f) => f(text, out),
        }
    }
}

/// One redaction pass. `None` when nothing was redacted.
fn redact_once(text: &str, kinds: &mut Vec<SecretKind>) -> Option<String> {
    let present = prefilter(text);
    if present == 0 {
        return None;
    }
    let e = &*ENGINE;
    let mut cands = Vec::new();
    for rule in e.rules.iter().filter(|r| r.kinds & present != 0) {
        rule.scan(text, &mut cands);
    }
    cands.retain(|c| !keys::is_reference(&text[c.start..c.end]));
    if cands.is_empty() {
        return None;
    }
    let placeholders: Vec<(usize, usize)> = e
        .placeholder
        .find_iter(text)
        .map(|m| (m.start(), m.end()))
        .collect();
    // placeholders are sorted and disjoint: the only one that can overlap a
    // candidate is the first one that ends after the candidate starts
    cands.retain(|c| {
        let i = placeholders.partition_point(|&(_, e)| e <= c.start);
        placeholders.get(i).is_none_or(|&(s, _)| s >= c.end)
    });
    if cands.is_empty() {
        return None;
    }
    cands.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));

    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut i = 0;
    while i < cands.len() {
        let first = cands[i];
        let (start, mut end, mut best) = (first.start, first.end, first);
        i += 1;
        while i < cands.len() && cands[i].start < end {
            let c = cands[i];
            end = end.max(c.end);
            let (cl, bl) = (c.end - c.start, best.end - best.start);
            if cl > bl || (cl == bl && c.kind.specificity() < best.kind.specificity()) {
                best = c;
            }
            i += 1;
        }
        out.push_str(&text[last..start]);
        out.push_str(&best.kind.placeholder());
        kinds.push(best.kind);
        last = end;
    }
    out.push_str(&text[last..]);
    Some(out)
}

const MAX_REDACT_PASSES: usize = 16;

/// Redacts every secret in `text`; returns the new text and one entry per redaction (kind, in order found). Safe
/// text is returned byte-for-byte unchanged (`Cow::Borrowed`). The result is a fixpoint: redacting it again
/// changes nothing.
pub fn redact_secrets(text: &str) -> (Cow<'_, str>, Vec<SecretKind>) {
    let mut kinds = Vec::new();
    let Some(mut cur) = redact_once(text, &mut kinds) else {
        return (Cow::Borrowed(text), kinds);
    };
    for _ in 1..MAX_REDACT_PASSES {
        match redact_once(&cur, &mut kinds) {
            Some(next) => cur = next,
            None => break,
        }
    }
    (Cow::Owned(cur), kinds)
}

/// Forces every lazily compiled pattern (tests).
#[cfg(test)]
pub(crate) fn force_all() {
    let e = &*ENGINE;
    assert_eq!(e.rules.len(), tokens::ROWS.len() + detectors::ALL.len());
    for d in detectors::ALL {
        (d.scan)("x", &mut Vec::new());
    }
}
