//! Markup: detection for identifier fields (rejected as `xss_detected`) and dangerous-HTML stripping for free text.
//!
//! Script-like elements, `javascript:`/`vbscript:` URLs (also written with HTML character references:
//! `&#106;avascript:`, `java&#x09;script&colon;`) and `on*=` handlers inside tags are removed; everything else
//! (including `<none>`, `a<b`, `x => y`) is left alone. A conservative filter, not an HTML parser.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

use super::engine::compile;

struct Html {
    danger_open: Regex,
    danger_close: Regex,
    tag: Regex,
    handler: Regex,
    js_in_tag: Regex,
    js_text: Regex,
    markup: Regex,
}

/// One character of a URL scheme as a browser reads it: itself (any case) or a decimal/hex character reference.
fn char_or_entity(c: char) -> String {
    let mut alts = vec![regex::escape(&c.to_string())];
    let mut codes = vec![c as u32];
    if c.is_ascii_alphabetic() {
        codes.push(c.to_ascii_uppercase() as u32);
        codes.push(c.to_ascii_lowercase() as u32);
    }
    codes.sort_unstable();
    codes.dedup();
    for code in codes {
        alts.push(format!("&#0*{code};?"));
        alts.push(format!("&#x0*{code:x};?"));
    }
    if c == ':' {
        alts.push("&colon;".to_owned());
    }
    format!("(?:{})", alts.join("|"))
}

/// `javascript` / `vbscript` + `:` with every character possibly a character reference; `gaps` allows the
/// tab/newline characters (raw or encoded) that browsers ignore inside a URL scheme.
fn scheme_pattern(gaps: bool) -> String {
    let gap = if gaps {
        r"(?:[\t\r\n]|&#0*(?:9|10|13);?|&#x0*(?:9|a|d);?|&tab;|&newline;)*"
    } else {
        ""
    };
    let word = |w: &str| w.chars().map(char_or_entity).collect::<Vec<_>>().join(gap);
    format!(
        "(?:{}|{}){gap}{}",
        word("javascript"),
        word("vbscript"),
        char_or_entity(':')
    )
}

/// The source of [`contains_markup`]'s regex.
fn markup_source() -> String {
    let in_tag = scheme_pattern(true);
    format!(
        r"(?i)<[a-z/!?][^<>]*>|<!--|<(?:script|iframe|object|embed|applet|frame|svg|img|style|link|meta|base|form|math|body|video|audio|input)(?-u:\b)|{in_tag}|(?-u:\b)on[a-z]+[ \t\r\n]*="
    )
}

/// [`contains_markup`]'s rule as an RE2 pattern for the API server (the CRD's validation rules use it through CEL's
/// `matches`): the same regex, with Rust's ASCII word boundary `(?-u:\b)` written as RE2's `\b` (ASCII only).
pub fn markup_pattern_re2() -> String {
    markup_source().replace(r"(?-u:\b)", r"\b")
}

static HTML: LazyLock<Html> = LazyLock::new(|| {
    let in_tag = scheme_pattern(true);
    Html {
        danger_open: compile(
            r"(?i)<(?P<name>script|iframe|object|embed|applet|frameset|frame)(?-u:\b)",
        ),
        danger_close: compile(
            r"(?i)</(?P<name>script|iframe|object|embed|applet|frameset|frame)(?-u:\b)[^>]*>",
        ),
        tag: compile(
            r#"<[A-Za-z][^\s/>]*(?:[^<>"'=]|=[ \t\r\n]*"[^"]*"|=[ \t\r\n]*'[^']*'|[="'])*>?"#,
        ),
        handler: compile(
            r#"(?i)(?P<sep>[\s/"'])on[a-z]+[ \t\r\n]*=[ \t\r\n]*(?:"[^"]*"|'[^']*'|[^\s>]*)"#,
        ),
        js_in_tag: compile(&format!("(?i){in_tag}")),
        js_text: compile(&format!(r#"(?i){}[^\s"'<>]+"#, scheme_pattern(false))),
        markup: compile(&markup_source()),
    }
});

/// True if `s` contains markup. Used to reject identifier fields (`xss_detected`).
///
/// The exact rule (case-insensitive): `s` contains
/// * a tag-like `<` + letter, `/`, `!` or `?`, followed by anything but `<`/`>`
///   and then a closing `>` (so `<b>x</b>`, `<img src=x>`, `</div>` and also
///   `<none>` are markup, while `a<b` and `x => y` are not), or
/// * `<!--`, or
/// * an opening of a dangerous element even without `>` (`<script`, `<iframe`,
///   `<object`, `<embed`, `<svg`, `<img`, `<style`, …), or
/// * a `javascript:` / `vbscript:` scheme (tabs/newlines inside tolerated), or
/// * an event-handler attribute: the word `on<letters>` starting at a word
///   boundary followed by `=` (`x onclick=foo()`).
///
/// Identifiers (names, namespaces, kinds, UIDs) never legitimately contain
/// these, so rejecting e.g. `<none>` in an identifier is intended.
pub fn contains_markup(s: &str) -> bool {
    HTML.markup.is_match(s)
}

fn remove_dangerous_elements<'a>(rules: &Html, s: &'a str) -> Cow<'a, str> {
    let mut out = String::new();
    let mut last = 0;
    let mut pos = 0;
    while pos < s.len() {
        let Some(c) = rules.danger_open.captures_at(s, pos) else {
            break;
        };
        let (Some(m), Some(name)) = (c.get(0), c.name("name")) else {
            break;
        };
        let name = name.as_str().to_ascii_lowercase();
        let gt = s[m.end()..].find('>').map(|i| m.end() + i + 1);
        let end = match gt {
            None => s.len(),
            Some(gt) if name == "embed" || name == "frame" => gt,
            Some(gt) => {
                let mut p = gt;
                let mut found = None;
                while let Some(cc) = rules.danger_close.captures_at(s, p) {
                    let (Some(cm), Some(cn)) = (cc.get(0), cc.name("name")) else {
                        break;
                    };
                    if cn.as_str().eq_ignore_ascii_case(&name) {
                        found = Some(cm.end());
                        break;
                    }
                    p = cm.end();
                }
                found.unwrap_or(s.len())
            }
        };
        out.push_str(&s[last..m.start()]);
        last = end;
        pos = end;
    }
    if last == 0 {
        return Cow::Borrowed(s);
    }
    out.push_str(&s[last..]);
    Cow::Owned(out)
}

fn clean_tag(rules: &Html, tag: &str) -> Option<String> {
    let handlers = rules
        .handler
        .replace_all(tag, |c: &Captures| match c.name("sep") {
            Some(sep) if sep.as_str() == "\"" || sep.as_str() == "'" => sep.as_str().to_owned(),
            _ => String::new(),
        });
    let t: &str = &handlers;
    let mut out = String::new();
    let mut last = 0;
    for m in rules.js_in_tag.find_iter(t) {
        if m.start() < last {
            continue;
        }
        let quote = t[..m.start()].trim_end().chars().last();
        let rest = &t[m.end()..];
        let tail = usize::from(rest.ends_with('>'));
        let payload = match quote {
            Some(q @ ('"' | '\'')) => rest.find(q),
            _ => rest.find(|c: char| c.is_whitespace() || matches!(c, '>' | '"' | '\'')),
        }
        .unwrap_or(rest.len() - tail);
        out.push_str(&t[last..m.start()]);
        last = m.end() + payload;
    }
    if last == 0 {
        return match handlers {
            Cow::Borrowed(_) => None,
            Cow::Owned(h) => Some(h),
        };
    }
    out.push_str(&t[last..]);
    Some(out)
}

fn clean_tags<'a>(rules: &Html, s: &'a str) -> Cow<'a, str> {
    let mut out = String::new();
    let mut last = 0;
    for m in rules.tag.find_iter(s) {
        if let Some(cleaned) = clean_tag(rules, m.as_str()) {
            out.push_str(&s[last..m.start()]);
            out.push_str(&cleaned);
            last = m.end();
        }
    }
    if last == 0 {
        return Cow::Borrowed(s);
    }
    out.push_str(&s[last..]);
    Cow::Owned(out)
}

/// One stripping pass; `None` when nothing changed.
fn strip_once(rules: &Html, s: &str) -> Option<String> {
    let a = remove_dangerous_elements(rules, s);
    let b = clean_tags(rules, &a);
    let unchanged = matches!((&a, &b), (Cow::Borrowed(_), Cow::Borrowed(_)));
    match rules.js_text.replace_all(&b, "") {
        Cow::Borrowed(_) if unchanged => None,
        c => Some(c.into_owned()),
    }
}

const MAX_STRIP_PASSES: usize = 16;

/// Removes script/iframe/object/embed (and applet/frame/frameset) elements with
/// their content (to the end of the text when unterminated), `javascript:` /
/// `vbscript:` URLs (scheme and payload: inside a tag up to the end of the
/// attribute value, in plain text up to the next whitespace, quote or angle
/// bracket) and `on*=` event-handler attributes inside tags. Returns the new
/// text and whether anything was removed. Safe text (`if a<b and c>d`,
/// `x => y`, `<none>`, `jsonpath='{.items[*]}'`) is returned unchanged.
///
/// The result is a fixpoint (stripping it again changes nothing). Pathological
/// input that still changes after 16 passes (deeply nested fragments such as
/// `<scr<scr<script>…`) has all its `<` removed.
pub fn strip_dangerous_html(text: &str) -> (Cow<'_, str>, bool) {
    let rules = &*HTML;
    if !text.contains('<') && !rules.js_text.is_match(text) {
        return (Cow::Borrowed(text), false);
    }
    let Some(mut cur) = strip_once(rules, text) else {
        return (Cow::Borrowed(text), false);
    };
    for _ in 1..MAX_STRIP_PASSES {
        match strip_once(rules, &cur) {
            Some(next) => cur = next,
            None => return (Cow::Owned(cur), true),
        }
    }
    let no_tags = cur.replace('<', "");
    let out = rules.js_text.replace_all(&no_tags, "").into_owned();
    (Cow::Owned(out), true)
}
