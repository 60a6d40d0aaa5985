//! `"<secret key name>": "<value>"` (or a number) in JSON-looking text, also `'k': 'v'` and one level of escaped
//! JSON `\"k\":\"v\"`. The kind follows the key ([`super::super::keys::classify_key`]): `password_json`,
//! `api_key_json`, `token_json`, `secret_json`, `aws_secret_key`, `pem_private_key`, `authorization_header`, or
//! `generic_secret` for a generated value under a key that merely contains a secret word.

use std::sync::LazyLock;

use regex::Regex;

use super::super::engine::{Cand, Detector, compile, push};
use super::super::keys::{KW, classify_key};
use super::{KEYED_JSON_KINDS, first_group};

struct Patterns {
    dq: Regex,
    esc: Regex,
    sq: Regex,
}

static P: LazyLock<Patterns> = LazyLock::new(|| Patterns {
    dq: compile(&format!(
        r#"(?i)"(?P<key>[A-Za-z0-9_.-]*(?:{KW})[A-Za-z0-9_.-]*)"\s*:\s*(?:"(?P<val>(?:[^"\\\n]|\\.)*)"|(?P<num>-?[0-9][0-9.eE+-]*))"#
    )),
    esc: compile(&format!(
        r#"(?i)\\"(?P<key>[A-Za-z0-9_.-]*(?:{KW})[A-Za-z0-9_.-]*)\\"\s*:\s*(?:\\"(?P<val>(?:[^"\\\n]|\\[^"\n])*)\\"|(?P<num>-?[0-9][0-9.eE+-]*))"#
    )),
    sq: compile(&format!(
        r#"(?i)'(?P<key>[A-Za-z0-9_.-]*(?:{KW})[A-Za-z0-9_.-]*)'\s*:\s*'(?P<val>[^'\n]*)'"#
    )),
});

fn collect(re: &Regex, text: &str, out: &mut Vec<Cand>) {
    for c in re.captures_iter(text) {
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

fn scan(text: &str, out: &mut Vec<Cand>) {
    let p = &*P;
    collect(&p.dq, text, out);
    collect(&p.esc, text, out);
    collect(&p.sq, text, out);
}

pub(crate) const DETECTOR: Detector = Detector {
    name: "keyed-json",
    kinds: KEYED_JSON_KINDS,
    scan,
    tps: &[
        r#"{"password": "«hunter2»", "user": "bob"}"#,
        r#"config {"db_password":"«p@ss w0rd»","DB_PWD": «1234»}"#,
        r#"body={\"adminPassword\":\"«s3cr3t»\",\"x\":1}"#,
        "{'passwd': '«abc»', 'u': 'x'}",
        r#"{"api_key": "«api_key_json:abcd1234efgh»", "apiKey": "«api_key_json:zz9»", "x-api-key": "«api_key_json:k-1»"}"#,
        r#"{"api-key": "«api_key_json:sk-abcdefghijklmnopqrstuvwxyzABC123»"}"#,
        r#"{"access_token": "«token_json:ya29.a0AfH6SM»", "token_type": "Bearer", "refresh_token": "«token_json:1//0g»"}"#,
        r#"{"id_token":"«token_json:eyJ.x.y»","auth_token":"«token_json:t0k»"}"#,
        r#"{"client_secret": "«secret_json:s3cr3t»", "secret_key": "«secret_json:k»", "secretName": "db"}"#,
        r#"{"secret":"«secret_json:x»","credentials":"«secret_json:user:pw»"}"#,
        r#"{"AWS_SECRET_ACCESS_KEY": "«aws_secret_key:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY»"}"#,
        "a\tpassword = \"«password_kv:x y»\" ,\r\n  'token': '«token_json:z»'\n",
        r#"{"mySecretString": "«generic_secret:Zx8fJ3kLq9Wm2Np5»", "apikey_myservice": "«generic_secret:8f4kL2mN9pQ1rS3t»"}"#,
        r#"{"type": "service_account", "private_key_id": "«generic_secret:3f786850e387550fdab836ed7e6dc881de23001b»", "private_key": "«pem_private_key:-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n»", "client_email": "ci@proj.iam.gserviceaccount.com"}"#,
    ],
    fps: &[
        r#"{"passwordPolicy": "strict", "password": ""}"#,
        r#"{"password_hint": "your pet", "require_password": true}"#,
        r#"{"api_key_id": "k-123", "apiKeyName": "ci"}"#,
        r#"{"tokenType": "Bearer", "max_tokens": 100}"#,
        r#"{"secretName": "db-creds", "secretRef": "x"}"#,
        r#"{"secret": "payments/db-creds"}"#,
        r#"{"tokenType": "Bearer", "expires_in": 3600}"#,
        r#"{"password": "${DB_PASSWORD}", "token": "{{ .Values.token }}", "api_key": "<api-key>"}"#,
        r#"{"password": "XXXX", "client_secret": "***", "secretKey": "$(vault kv get -field=key x)"}"#,
        r#"{"tokenizer": "bert-base-uncased-v2", "secretVersion": "2026-03-01T12:00:00Z"}"#,
        r#"{"secretId": "123e4567-e89b-12d3-a456-426614174000"}"#,
    ],
};
