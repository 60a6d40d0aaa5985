//! Kubernetes env-var style pairs: YAML `name: DB_PASSWORD` + `value: …` on the next line, and JSON
//! `{"name": "DB_PASSWORD", "value": "…"}`. The kind follows the name (`password_kv` in YAML, `password_json` in
//! JSON, …). The structured twin (in `details`) is in [`super::super::json`].

use std::sync::LazyLock;

use regex::Regex;

use super::super::SecretKind;
use super::super::engine::{Cand, Detector, compile, push};
use super::super::keys::{KW_PLAIN, classify_key, is_trivial_value};
use super::first_group;

struct Patterns {
    yaml: Regex,
    json: Regex,
}

static P: LazyLock<Patterns> = LazyLock::new(|| Patterns {
    yaml: compile(&format!(
        r#"(?i)(?:^|[^A-Za-z0-9_.-])name:[ \t]*["']?(?P<key>[A-Za-z0-9_.-]*(?:{KW_PLAIN})[A-Za-z0-9_.-]*)["']?[ \t]*\r?\n[ \t]*(?:-[ \t]+)?value:[ \t]*(?:"(?P<dq>(?:[^"\\\n]|\\.)*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s"'#][^\n]*))"#
    )),
    json: compile(&format!(
        r#"(?i)"name"\s*:\s*"(?P<key>[A-Za-z0-9_.-]*(?:{KW_PLAIN})[A-Za-z0-9_.-]*)"\s*,\s*"value"\s*:\s*(?:"(?P<val>(?:[^"\\\n]|\\.)*)"|(?P<num>-?[0-9][0-9.eE+-]*))"#
    )),
});

fn scan(text: &str, out: &mut Vec<Cand>) {
    let p = &*P;
    for c in p.yaml.captures_iter(text) {
        let Some(key) = c.name("key") else { continue };
        let Some(class) = classify_key(key.as_str()) else {
            continue;
        };
        let (start, end) = if let Some(v) = first_group(&c, &["dq", "sq"]) {
            (v.start(), v.end())
        } else if let Some(v) = c.name("bare") {
            let trimmed = v.as_str().trim_end();
            if is_trivial_value(trimmed) {
                continue;
            }
            (v.start(), v.start() + trimmed.len())
        } else {
            continue;
        };
        if class.takes(key.as_str(), &text[start..end]) {
            push(out, start, end, class.plain_kind());
        }
    }
    for c in p.json.captures_iter(text) {
        let (Some(key), Some(val)) = (c.name("key"), first_group(&c, &["val", "num"])) else {
            continue;
        };
        if let Some(class) = classify_key(key.as_str())
            && class.takes(key.as_str(), val.as_str())
        {
            push(out, val.start(), val.end(), class.json_kind());
        }
    }
}

pub(crate) const DETECTOR: Detector = Detector {
    name: "env-pair",
    kinds: &[
        SecretKind::PasswordKv,
        SecretKind::ApiKey,
        SecretKind::Token,
        SecretKind::Secret,
        SecretKind::PasswordJson,
        SecretKind::ApiKeyJson,
        SecretKind::TokenJson,
        SecretKind::SecretJson,
        SecretKind::AwsSecretKey,
        SecretKind::PemPrivateKey,
        SecretKind::GenericSecret,
    ],
    scan,
    tps: &[
        "env:\n- name: DB_PASSWORD\n  value: «hunter2 two»\n- name: MODE\n  value: prod",
        r#"[{"name":"API_TOKEN","value":"«token_json:abc»"},{"name":"X","value":"y"}]"#,
        "env:\n  - name: \"GITHUB_TOKEN\"\n    value: '«token:Zq9xT4mPq2»'",
    ],
    fps: &[
        "env:\n- name: DB_PASSWORD\n  value: ${DB_PASSWORD}\n- name: API_TOKEN\n  valueFrom:\n    secretKeyRef:\n      name: api\n      key: token",
        r#"[{"name":"DB_PASSWORD","value":"{{ .Values.db.password }}"}]"#,
    ],
};
