//! The value of an `Authorization:` (or `Proxy-Authorization:`, `X-…-Authorization:`) header: a known scheme +
//! credentials, or a single credential-looking value of ≥ 8 chars; `Authorization failed for user bob` is kept.

use std::sync::LazyLock;

use regex::Regex;

use super::super::SecretKind;
use super::super::engine::{Cand, Detector, compile, push};
use super::super::keys::looks_like_credential;

/// A value token inside an `Authorization` header.
const AUTH_TOK: &str = r#"(?:[^\s\]"',;\\]|"[^"\n]*")+"#;

static AUTH: LazyLock<Regex> = LazyLock::new(|| {
    compile(&format!(
        r"(?i)(?:^|[^A-Za-z0-9_])(?:[A-Za-z0-9_-]*-)?authorization[ \t]*:[ \t]*\[?[ \t]*(?P<val>(?P<scheme>basic|bearer|digest|token|negotiate|ntlm|aws4-hmac-sha256|apikey|api-key|key|hawk|oauth|dpop|ssws|splunk|mac|sso)[ \t]+(?P<cred>{AUTH_TOK})(?:[ \t]*,[ \t]*[A-Za-z0-9_-]+={AUTH_TOK})*|(?P<bare>{AUTH_TOK}))"
    ))
});

fn scan(text: &str, out: &mut Vec<Cand>) {
    for c in AUTH.captures_iter(text) {
        let Some(val) = c.name("val") else { continue };
        let ok = match (c.name("cred"), c.name("bare")) {
            (Some(cred), _) => looks_like_credential(cred.as_str()),
            (None, Some(bare)) => bare.len() >= 8 && looks_like_credential(bare.as_str()),
            (None, None) => false,
        };
        if ok {
            push(out, val.start(), val.end(), SecretKind::AuthorizationHeader);
        }
    }
}

pub(crate) const DETECTOR: Detector = Detector {
    name: "authorization-header",
    kinds: &[SecretKind::AuthorizationHeader],
    scan,
    tps: &[
        "Authorization: «Bearer abc.def»",
        "request headers: map[Authorization:[«Basic dXNlcjpwYXNz»] Accept:[*/*]]",
        "proxy-authorization: «Digest username=\"bob\", response=\"6629fae4\"»\nnext",
        r#"{"Authorization": "«token ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ»"}"#,
        "Authorization: «Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl»",
        "-H 'X-Upstream-Authorization: «Zq9xT4mPq2Lk8»'",
    ],
    fps: &[
        "Authorization failed for user bob",
        "authorization: denied",
        "authorization: permission denied",
        "Authorization: token expired",
        "Authorization: Bearer ${TOKEN}",
        "Authorization: Bearer <token>",
        "Authorization: Bearer $GITHUB_TOKEN",
    ],
};
