//! A string literal passed to a function whose name ends with a secret word: `setPassword("…")`,
//! `withToken('…')`, `auth.secret("…")`. Only values that plainly are credentials (≥ 10 characters mixing letters
//! and digits, or generated-looking), so `getToken("github")` and `readSecret("db-creds")` are kept. Keyword
//! arguments (`connect(password="…")`) are `key=value` ([`super::key_value`]).

use std::sync::LazyLock;

use regex::Regex;

use super::super::engine::{Cand, Detector, compile, push};
use super::super::keys::{
    KW_PLAIN, KeyClass, classify_key, looks_generated, looks_like_prose_credential,
};
use super::{KEYED_PLAIN_KINDS, first_group};

static CALL: LazyLock<Regex> = LazyLock::new(|| {
    compile(&format!(
        r#"(?i)(?:^|[^A-Za-z0-9_])(?P<name>[A-Za-z0-9_]*(?:{KW_PLAIN})[A-Za-z0-9_]*)[ \t]*\([ \t]*(?:"(?P<dq>(?:[^"\\\n]|\\.)*)"|'(?P<sq>[^'\n]*)')[ \t]*[,)]"#
    ))
});

fn scan(text: &str, out: &mut Vec<Cand>) {
    for c in CALL.captures_iter(text) {
        let (Some(name), Some(val)) = (c.name("name"), first_group(&c, &["dq", "sq"])) else {
            continue;
        };
        let Some(class) = classify_key(name.as_str()).filter(|c| *c != KeyClass::Generic) else {
            continue;
        };
        let v = val.as_str();
        if (looks_like_prose_credential(v) || looks_generated(v)) && class.takes(name.as_str(), v) {
            push(out, val.start(), val.end(), class.plain_kind());
        }
    }
}

pub(crate) const DETECTOR: Detector = Detector {
    name: "function-argument",
    kinds: KEYED_PLAIN_KINDS,
    scan,
    tps: &[
        "at Db.connect: setPassword(\"«Zq9xT4mPq2»\") failed",
        "client.withToken('«token:ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ»')",
        "auth.apiKey(\"«api_key:AbC123xyz789»\", timeout=5)",
    ],
    fps: &[
        "getToken(\"github\")",
        "readSecret(\"db-creds\")",
        "setPassword(\"\")",
        "withToken(process.env.TOKEN)",
    ],
};
