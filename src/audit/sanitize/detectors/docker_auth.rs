//! The `auth` of a Docker config (`{"auths": {"registry": {"auth": "<base64 user:password>"}}}`, as in
//! `.dockerconfigjson` and `~/.docker/config.json`), in JSON text (also escaped) and in `details`. The value must
//! decode to `user:password`, so `"auth": "basic"` is kept. The base64-wrapped `.dockerconfigjson` itself is a token
//! row ([`super::super::tokens`]).

use std::sync::LazyLock;

use base64::Engine as _;
use regex::Regex;

use super::super::SecretKind;
use super::super::engine::{Cand, Detector, compile, push};

static AUTH: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r#"(?:"auth"\s*:\s*"(?P<v>[A-Za-z0-9+/]+={0,2})"|\\"auth\\"\s*:\s*\\"(?P<e>[A-Za-z0-9+/]+={0,2})\\")"#,
    )
});

/// Base64 of `user:password` (what Docker stores in `auth`).
pub(crate) fn is_docker_auth(v: &str) -> bool {
    v.len() >= 8
        && base64::engine::general_purpose::STANDARD
            .decode(v)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .is_some_and(|s| {
                s.split_once(':')
                    .is_some_and(|(u, p)| !u.is_empty() && !p.is_empty())
            })
}

fn scan(text: &str, out: &mut Vec<Cand>) {
    for c in AUTH.captures_iter(text) {
        if let Some(v) = c.name("v").or_else(|| c.name("e"))
            && is_docker_auth(v.as_str())
        {
            push(out, v.start(), v.end(), SecretKind::DockerAuth);
        }
    }
}

pub(crate) const DETECTOR: Detector = Detector {
    name: "docker-auth",
    kinds: &[SecretKind::DockerAuth],
    scan,
    tps: &[
        r#"{"auths":{"registry.example.com":{"auth":"«ZGVwbG95OlMzY3IzdFBhc3M=»"}}}"#,
        r#"config={\"auths\":{\"ghcr.io\":{\"auth\":\"«dXNlcjpTdXAzclMzY3JldCE=»\"}}}"#,
    ],
    fps: &[
        r#"{"auth": "basic"}"#,
        r#"{"auths": {}, "auth": "b2F1dGgy"}"#,
        r#"{"credsStore": "desktop", "auths": {"https://index.docker.io/v1/": {}}}"#,
    ],
};
