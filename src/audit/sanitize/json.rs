//! The one sanitization pass over free text and over `details` (the JSON walk), shared by [`super::sanitize_spec`],
//! [`super::sanitize_free_text`] and [`super::sanitize_json`].
//!
//! Free text: dangerous HTML is stripped ([`HtmlPolicy::Strip`]) or refused ([`HtmlPolicy::Reject`]), then secrets
//! are redacted, alternated until neither changes anything (redaction can, in contrived text, remove a `>` that hid
//! an `on*=` handler from its tag; stripping can join a secret back together).
//!
//! `details`: every string leaf (objects and arrays, nested up to [`MAX_JSON_DEPTH`]) is sanitized as free text
//! (paths like `details.a.b[3]`). Object keys are sanitized as free text too (two keys that become equal are kept
//! apart by a ` (2)`, ` (3)` … suffix). When a (sanitized) key *names* a secret ([`super::keys`]) and its value is a
//! non-empty string or a number, the whole value becomes `[REDACTED:<kind>]`; a placeholder or reference is kept.
//! The same applies to the `value` of a Kubernetes-style `{"name": "DB_PASSWORD", "value": "…"}` object, to every
//! string or number in a list under such a key (`{"password": ["a", "b"]}`), to the `auth` of a Docker config, and
//! to the values of a Secret-like object's `data`/`binaryData` (base64) and `stringData` maps.

use serde_json::{Map, Value};

use super::detectors::{docker_auth, k8s_secret};
use super::keys::{KeyClass, classify_key, is_placeholder};
use super::{HtmlPolicy, HtmlRejected, Redaction, SecretKind, html, redact_secrets};

/// Maximum nesting handled by the walk; deeper sub-trees (validation limits depth to 32 anyway) are replaced by
/// [`DEPTH_EXCEEDED`].
pub const MAX_JSON_DEPTH: usize = 64;

/// Replacement for a `details` sub-tree nested deeper than [`MAX_JSON_DEPTH`].
pub const DEPTH_EXCEEDED: &str = "[TRUNCATED:max_depth]";

const MAX_FREE_TEXT_PASSES: usize = 8;

/// Settings and results of one sanitization.
pub(crate) struct Pass<'r> {
    pub policy: HtmlPolicy,
    pub redact: bool,
    pub redactions: &'r mut Vec<Redaction>,
    pub markup_removed: bool,
}

/// How a key names its value.
#[derive(Clone, Copy)]
enum Named<'k> {
    Class(&'k str, KeyClass),
    DockerAuth,
}

impl Pass<'_> {
    /// Free text under `field`.
    pub(crate) fn free_text(&mut self, field: &str, text: &str) -> Result<String, HtmlRejected> {
        let mut cur = text.to_owned();
        let mut kinds = Vec::new();
        for _ in 0..MAX_FREE_TEXT_PASSES {
            let (stripped, removed) = html::strip_dangerous_html(&cur);
            if removed && self.policy == HtmlPolicy::Reject {
                return Err(HtmlRejected {
                    field: field.to_owned(),
                });
            }
            self.markup_removed |= removed;
            let found = if self.redact {
                let (redacted, found) = redact_secrets(&stripped);
                if !removed && found.is_empty() {
                    break;
                }
                cur = redacted.into_owned();
                found
            } else {
                if !removed {
                    break;
                }
                cur = stripped.into_owned();
                Vec::new()
            };
            kinds.extend(found);
        }
        self.redactions
            .extend(kinds.into_iter().map(|kind| Redaction {
                field: field.to_owned(),
                kind,
            }));
        Ok(cur)
    }

    fn named_value(&mut self, path: &str, named: Named<'_>, value: &Value) -> Option<Value> {
        // The value as the walk would leave it (markup stripped), so that a second pass finds nothing more to
        // redact (found by prop_json_idempotent: `"passwordBearer": ["p4ss\"name\":<iframe="]`).
        let stripped = match value {
            Value::String(s) => Some(html::strip_dangerous_html(s).0),
            _ => None,
        };
        let kind = match (named, value, stripped.as_deref()) {
            (Named::Class(key, class), Value::String(_), Some(s))
                if !is_placeholder(s) && class.takes(key, s) =>
            {
                class.json_kind()
            }
            (Named::Class(_, class), Value::Number(_), _) if class != KeyClass::Generic => {
                class.json_kind()
            }
            (Named::DockerAuth, Value::String(s), _) if docker_auth::is_docker_auth(s) => {
                SecretKind::DockerAuth
            }
            _ => return None,
        };
        self.redactions.push(Redaction {
            field: path.to_owned(),
            kind,
        });
        Some(Value::String(kind.placeholder()))
    }

    /// A list under a secret key (`{"password": ["a", "b"]}`, `{"pin_password": [1234]}`): every string or number
    /// in it, at any array depth, is redacted like a single value would be. Other elements (objects) are left to
    /// the generic walk. `None` when nothing was redacted.
    fn named_array(
        &mut self,
        path: &str,
        named: Named<'_>,
        value: &Value,
        depth: usize,
    ) -> Option<Value> {
        let Value::Array(items) = value else {
            return None;
        };
        if depth > MAX_JSON_DEPTH {
            return None;
        }
        let mut changed = false;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let new = match item {
                Value::Array(_) => self.named_array(&item_path, named, item, depth + 1),
                _ => self.named_value(&item_path, named, item),
            };
            changed |= new.is_some();
            out.push(new.unwrap_or_else(|| item.clone()));
        }
        changed.then_some(Value::Array(out))
    }

    /// The `details` walk.
    pub(crate) fn json(
        &mut self,
        path: &str,
        value: &Value,
        depth: usize,
    ) -> Result<Value, HtmlRejected> {
        if depth > MAX_JSON_DEPTH {
            return Ok(Value::String(DEPTH_EXCEEDED.to_owned()));
        }
        match value {
            Value::String(s) => Ok(Value::String(self.free_text(path, s)?)),
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(self.json(&format!("{path}[{i}]"), item, depth + 1)?);
                }
                Ok(Value::Array(out))
            }
            Value::Object(map) => self.object(path, map, depth),
            other => Ok(other.clone()),
        }
    }

    fn object(
        &mut self,
        path: &str,
        map: &Map<String, Value>,
        depth: usize,
    ) -> Result<Value, HtmlRejected> {
        // Kubernetes env var style: {"name": "DB_PASSWORD", "value": "…"}
        let pair = map
            .get("name")
            .and_then(Value::as_str)
            .and_then(|name| classify_key(name).map(|class| Named::Class(name, class)));
        let secret_kind = map.get("kind").and_then(Value::as_str) == Some("Secret");
        let mut out = Map::new();
        for (key, child) in map {
            let mut key_pass = Pass {
                policy: self.policy,
                redact: self.redact,
                redactions: &mut Vec::new(),
                markup_removed: false,
            };
            let new_key = match key_pass.free_text("", key) {
                Ok(k) => k,
                Err(_) => {
                    let (safe, _) = redact_secrets(key);
                    return Err(HtmlRejected {
                        field: format!("{path}.{safe}"),
                    });
                }
            };
            self.markup_removed |= key_pass.markup_removed;
            let key_kinds: Vec<SecretKind> = key_pass.redactions.iter().map(|r| r.kind).collect();
            let mut unique = new_key.clone();
            let mut n = 2;
            while out.contains_key(&unique) {
                unique = format!("{new_key} ({n})");
                n += 1;
            }
            let child_path = format!("{path}.{unique}");
            self.redactions
                .extend(key_kinds.into_iter().map(|kind| Redaction {
                    field: child_path.clone(),
                    kind,
                }));
            let named = if !self.redact {
                None
            } else if let Some(class) = classify_key(&new_key) {
                Some(Named::Class(new_key.as_str(), class))
            } else if key == "value" {
                pair
            } else if new_key.eq_ignore_ascii_case("auth") {
                Some(Named::DockerAuth)
            } else {
                None
            };
            let new_child = match named.and_then(|n| self.named_value(&child_path, n, child)) {
                Some(v) => v,
                None => {
                    let data = match named {
                        Some(n) => self.named_array(&child_path, n, child, depth + 1),
                        None if self.redact => k8s_secret::redact_data_map(
                            &child_path,
                            &new_key,
                            child,
                            secret_kind,
                            self.redactions,
                        ),
                        None => None,
                    };
                    let clean =
                        self.json(&child_path, data.as_ref().unwrap_or(child), depth + 1)?;
                    // A generated-looking value can appear once markup around it is stripped: decide on the clean
                    // text too, so that sanitizing twice changes nothing.
                    match (named, &clean) {
                        (Some(n @ Named::Class(_, KeyClass::Generic)), Value::String(_)) => {
                            self.named_value(&child_path, n, &clean).unwrap_or(clean)
                        }
                        _ => clean,
                    }
                }
            };
            out.insert(unique, new_child);
        }
        Ok(Value::Object(out))
    }
}
