//! Kubernetes Secret data: values under a YAML `data:`/`binaryData:` block that are base64 (and either the text
//! says `kind: Secret` or the value looks encoded), every value under `stringData:` (block scalars included), the
//! same inside JSON `"data": {…}` text, and (in `details`) a Secret-like object's `data`/`stringData` maps.
//! `kind: SecretStore` / `kind: SecretProviderClass` are not `kind: Secret`.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::super::engine::{Cand, Detector, compile, push};
use super::super::keys::{is_placeholder, is_reference};
use super::super::{Redaction, SecretKind};

struct Patterns {
    json_block: Regex,
    json_pair: Regex,
    kind_secret: Regex,
}

static P: LazyLock<Patterns> = LazyLock::new(|| Patterns {
    json_block: compile(r#""(?P<which>data|binaryData|stringData)"\s*:\s*\{(?P<body>[^{}]*)\}"#),
    json_pair: compile(r#""(?:[^"\\\n]|\\.)*"\s*:\s*"(?P<v>(?:[^"\\\n]|\\.)*)""#),
    kind_secret: compile(
        r#"(?m)(?:^[ \t]*kind:[ \t]*["']?Secret["']?[ \t]*\r?$|"kind"\s*:\s*"Secret")"#,
    ),
});

fn is_b64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// Base64 (standard alphabet, padded) that plausibly encodes a secret.
pub(crate) fn is_secret_base64(v: &str, secret_kind_known: bool) -> bool {
    let body = v.trim_end_matches('=');
    if v.len() < 4 || !v.len().is_multiple_of(4) || v.len() - body.len() > 2 || body.is_empty() {
        return false;
    }
    if !body.bytes().all(is_b64_char) {
        return false;
    }
    if secret_kind_known {
        return true;
    }
    let has_digit_or_sym = v.bytes().any(|b| b.is_ascii_digit() || b"+/=".contains(&b));
    let mixed = v.bytes().skip(1).any(|b| b.is_ascii_uppercase())
        && v.bytes().any(|b| b.is_ascii_lowercase());
    v.len() >= 8 && (has_digit_or_sym || mixed)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DataBlock {
    Base64,
    Plain,
}

/// `key: value` at the start of `content` (a YAML line without indentation). Returns the value span relative to
/// `content` and whether it is a block scalar.
fn parse_yaml_kv(content: &str) -> Option<(usize, usize, bool)> {
    let bytes = content.as_bytes();
    let mut i = 0;
    if let Some(&q) = bytes.first().filter(|b| **b == b'"' || **b == b'\'') {
        let close = content[1..].find(q as char)?;
        i = close + 2;
    } else {
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b"._-".contains(&bytes[i])) {
            i += 1;
        }
        if i == 0 {
            return None;
        }
    }
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let rest = &content[i..];
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let lead = rest.len() - rest.trim_start().len();
    let value = rest.trim();
    if value.is_empty() {
        return None;
    }
    let vs = i + lead;
    let ve = vs + value.len();
    if value.starts_with('|') || value.starts_with('>') {
        return Some((vs, ve, true));
    }
    let vb = value.as_bytes();
    if vb.len() >= 2 && (vb[0] == b'"' || vb[0] == b'\'') && vb[vb.len() - 1] == vb[0] {
        return Some((vs + 1, ve - 1, false));
    }
    Some((vs, ve, false))
}

/// The text declares a `kind: Secret` object (YAML or JSON), not a `SecretStore` or another kind.
fn mentions_secret_kind(text: &str) -> bool {
    text.contains("Secret") && P.kind_secret.is_match(text)
}

/// Kubernetes Secret `data:` / `binaryData:` / `stringData:` blocks in YAML.
fn scan_yaml(text: &str, out: &mut Vec<Cand>) {
    if !text.contains("ata:") {
        return;
    }
    let secret_known = mentions_secret_kind(text);
    let mut block: Option<(usize, DataBlock)> = None;
    // (indent of the key that opened the block scalar, span so far)
    let mut scalar: Option<(usize, Option<(usize, usize)>)> = None;
    let mut pos = 0;
    for raw in text.split('\n') {
        let line_start = pos;
        pos += raw.len() + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        let blank = content.trim().is_empty();
        if let Some((key_indent, span)) = scalar {
            if blank {
                continue;
            }
            if indent > key_indent {
                let s = span.map_or(line_start + indent, |(s, _)| s);
                scalar = Some((key_indent, Some((s, line_start + line.len()))));
                continue;
            }
            if let Some((s, e)) = span {
                push(out, s, e, SecretKind::K8sSecretData);
            }
            scalar = None;
        }
        if blank || content.starts_with('#') {
            continue;
        }
        if let Some((block_indent, kind)) = block {
            if indent > block_indent {
                if let Some((vs, ve, is_scalar)) = parse_yaml_kv(content) {
                    let base = line_start + indent;
                    let value = &content[vs..ve];
                    if is_scalar {
                        if kind == DataBlock::Plain {
                            scalar = Some((indent, None));
                        }
                    } else if match kind {
                        DataBlock::Base64 => is_secret_base64(value, secret_known),
                        DataBlock::Plain => !value.is_empty() && !is_reference(value),
                    } {
                        push(out, base + vs, base + ve, SecretKind::K8sSecretData);
                    }
                }
                continue;
            }
            block = None;
        }
        match content.trim_end() {
            "data:" | "binaryData:" => block = Some((indent, DataBlock::Base64)),
            "stringData:" => block = Some((indent, DataBlock::Plain)),
            _ => {}
        }
    }
    if let Some((_, Some((s, e)))) = scalar {
        push(out, s, e, SecretKind::K8sSecretData);
    }
}

/// Kubernetes Secret `"data": {…}` objects in JSON text.
fn scan_json(text: &str, out: &mut Vec<Cand>) {
    if !text.contains("\"data\"")
        && !text.contains("\"binaryData\"")
        && !text.contains("\"stringData\"")
    {
        return;
    }
    let p = &*P;
    let secret_known = mentions_secret_kind(text);
    for block in p.json_block.captures_iter(text) {
        let (Some(which), Some(body)) = (block.name("which"), block.name("body")) else {
            continue;
        };
        let plain = which.as_str() == "stringData";
        for pair in p.json_pair.captures_iter(body.as_str()) {
            let Some(v) = pair.name("v") else { continue };
            if (plain && !v.as_str().is_empty())
                || (!plain && is_secret_base64(v.as_str(), secret_known))
            {
                let s = body.start() + v.start();
                push(out, s, s + v.len(), SecretKind::K8sSecretData);
            }
        }
    }
}

fn scan(text: &str, out: &mut Vec<Cand>) {
    scan_yaml(text, out);
    scan_json(text, out);
}

/// The structured twin for `details`: a Kubernetes Secret's `data`/`binaryData` map (base64 values) or
/// `stringData` map (every non-empty value) under `key`, whose values carry no secret-looking key of their own
/// (`{"kind": "Secret", "data": {"username": "YWRtaW4="}}`). Returns the map with those values replaced, or `None`
/// when nothing was redacted.
pub(crate) fn redact_data_map(
    path: &str,
    key: &str,
    value: &Value,
    secret_kind: bool,
    redactions: &mut Vec<Redaction>,
) -> Option<Value> {
    let plain = match key {
        "stringData" => true,
        "data" | "binaryData" => false,
        _ => return None,
    };
    let Value::Object(map) = value else {
        return None;
    };
    let mut out = map.clone();
    let mut changed = false;
    for v in out.values_mut() {
        let Value::String(s) = v else { continue };
        let secret = if plain {
            !s.is_empty() && !is_reference(s)
        } else {
            is_secret_base64(s, secret_kind)
        };
        if !secret || is_placeholder(s) {
            continue;
        }
        // The field is the map's path: the entry's own key is not sanitized yet.
        redactions.push(Redaction {
            field: path.to_owned(),
            kind: SecretKind::K8sSecretData,
        });
        *v = Value::String(SecretKind::K8sSecretData.placeholder());
        changed = true;
    }
    changed.then_some(Value::Object(out))
}

pub(crate) const DETECTOR: Detector = Detector {
    name: "k8s-secret",
    kinds: &[SecretKind::K8sSecretData],
    scan,
    tps: &[
        "apiVersion: v1\nkind: Secret\ndata:\n  password: «cGFzc3dvcmQxMjM=»\n  tls.key: «LS0tLS1CRUdJTiBSU0E=»\nmetadata:\n  name: x",
        "data:\n  config.json: «eyJhdXRocyI6e319»\nstringData:\n  note: «plain text secret»\n  cert: |\n    «line one\n    line two»\ntype: Opaque",
        r#"{"kind":"Secret","data":{"username":"«YWRtaW4=»","ca.crt":"«LS0tLS1CRUdJTiBDRVJU»"}}"#,
        "kind: Secret\ndata:\n  mode: «dGVzdA==»",
        "kind: \"Secret\"\r\nbinaryData:\r\n  blob: «AAEC»\r\n",
    ],
    fps: &[
        "data:\n  LOG_LEVEL: debug\n  MODE: verification",
        "metadata:\n  name: db-creds\n  password: [REDACTED:password_kv]",
        "apiVersion: external-secrets.io/v1beta1\nkind: SecretStore\ndata:\n  mode: test\n  user: admin",
        "kind: SecretProviderClass\ndata:\n  role: abcd",
        "apiVersion: v1\nkind: ConfigMap\ndata:\n  LOG_LEVEL: info\n  replicas: \"3\"",
        "kind: Secret\nstringData:\n  password: ${DB_PASSWORD}\n  token: '{{ .Values.token }}'",
    ],
};
