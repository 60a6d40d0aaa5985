//! Secret key names and value predicates shared by the keyed detectors and the `details` walk.
//!
//! A *secret key name* ends (case-insensitively, ignoring `-`, `_`, `.` and spaces) with `password`, `passwd`,
//! `passphrase`, `pwd`, a separate `pass` (`db_pass`, `dbPass`) (password), `apikey` (API key), `token` (token),
//! `secret`/`secretkey`/`credential(s)` (secret), `secretaccesskey`/`awssecretkey` (AWS secret), `privatekey`/`tlskey`
//! (private key) or `authorization`. Such a key's value is a secret unless it is trivial, a placeholder/reference or
//! (for the two ambiguous names) a reference to something else. A key that merely *contains* one of the words
//! (`mySecretString`, `apikey_myservice`, `DBPASS`, `passwordPolicy`) is [`KeyClass::Generic`]: its value is a secret
//! only when it [`looks_generated`] (so `passwordPolicy: strict` and `tokenType: Bearer` are kept).

use super::SecretKind;

/// What a key name says about its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyClass {
    Password,
    ApiKey,
    Token,
    Secret,
    AwsSecret,
    PrivateKey,
    Authorization,
    /// The key contains a secret word somewhere else than at its end.
    Generic,
}

impl KeyClass {
    /// The kind for a value found in JSON-looking text or in `details`.
    pub(crate) fn json_kind(self) -> SecretKind {
        match self {
            KeyClass::Password => SecretKind::PasswordJson,
            KeyClass::ApiKey => SecretKind::ApiKeyJson,
            KeyClass::Token => SecretKind::TokenJson,
            KeyClass::Secret => SecretKind::SecretJson,
            KeyClass::AwsSecret => SecretKind::AwsSecretKey,
            KeyClass::PrivateKey => SecretKind::PemPrivateKey,
            KeyClass::Authorization => SecretKind::AuthorizationHeader,
            KeyClass::Generic => SecretKind::GenericSecret,
        }
    }

    /// The kind for a value found in `key=value`-style text.
    pub(crate) fn plain_kind(self) -> SecretKind {
        match self {
            KeyClass::Password => SecretKind::PasswordKv,
            KeyClass::ApiKey => SecretKind::ApiKey,
            KeyClass::Token => SecretKind::Token,
            KeyClass::Secret => SecretKind::Secret,
            other => other.json_kind(),
        }
    }

    /// Whether `value` under a key of this class (named `key`) is a secret. (Trivial bare values such as `true`
    /// are the callers' business: a quoted `"true"` can be a password.)
    pub(crate) fn takes(self, key: &str, value: &str) -> bool {
        if value.is_empty() || is_reference(value) || is_reference_value(key, value) {
            return false;
        }
        self != KeyClass::Generic || looks_generated(value)
    }
}

/// Secret key words as a regex alternation, for the keyed detectors (the key around it is matched by
/// `[A-Za-z0-9_.-]*`; [`classify_key`] decides).
pub(crate) const KW: &str =
    r"pass|pwd|secret|token|api[_.-]?key|private[_.-]?key|credentials?|authorization";
/// The same without `credential`/`authorization` (too common in prose: `error getting credentials: …`) for
/// `key=value`-style text.
pub(crate) const KW_PLAIN: &str = r"pass|pwd|secret|token|api[_.-]?key|private[_.-]?key";

/// Lower-cased key with `-`, `_`, `.` and spaces removed.
pub(crate) fn normalize_key(key: &str) -> String {
    key.chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// `db_pass`, `DB-PASS`, `dbPass`, `pass`: `pass` as its own last word (not `bypass`, `compass`).
fn ends_with_pass_word(key: &str) -> bool {
    let b = key.as_bytes();
    let n = b.len();
    if n < 4 || !b[n - 4..].eq_ignore_ascii_case(b"pass") {
        return false;
    }
    if n == 4 {
        return true;
    }
    let before = b[n - 5];
    matches!(before, b'_' | b'-' | b'.' | b' ')
        || (b[n - 4] == b'P' && (before.is_ascii_lowercase() || before.is_ascii_digit()))
}

/// Classifies a key name (see the module docs). `None`: not secret-like at all.
pub(crate) fn classify_key(key: &str) -> Option<KeyClass> {
    if key.len() > 256 {
        return None;
    }
    let n = normalize_key(key);
    let ends = |s: &str| n.ends_with(s);
    if ends("secretaccesskey") || ends("awssecretkey") {
        Some(KeyClass::AwsSecret)
    } else if ends("password")
        || ends("passwd")
        || ends("passphrase")
        || ends("pwd")
        || ends_with_pass_word(key)
    {
        Some(KeyClass::Password)
    } else if ends("apikey") {
        Some(KeyClass::ApiKey)
    } else if ends("token") {
        Some(KeyClass::Token)
    } else if ends("secret") || ends("secretkey") || ends("credentials") || ends("credential") {
        Some(KeyClass::Secret)
    } else if ends("privatekey") || n == "tlskey" {
        Some(KeyClass::PrivateKey)
    } else if ends("authorization") {
        Some(KeyClass::Authorization)
    } else if [
        "pass",
        "pwd",
        "secret",
        "token",
        "apikey",
        "credential",
        "privatekey",
    ]
    .iter()
    .any(|w| n.contains(w))
    {
        Some(KeyClass::Generic)
    } else {
        None
    }
}

/// A lower-case Kubernetes object reference such as `db-creds` or `payments/db-creds` (DNS-1123 names, at least
/// one `-` or `/`).
pub(crate) fn looks_like_k8s_ref(v: &str) -> bool {
    let segment_ok = |seg: &str| {
        let b = seg.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
    };
    let mut parts = v.split('/');
    let ok = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, _) => segment_ok(a),
        (Some(a), Some(b), None) => segment_ok(a) && segment_ok(b),
        _ => false,
    };
    ok && v.len() <= 253 && (v.contains('-') || v.contains('/'))
}

/// Values that name something rather than being a secret, for the two ambiguous key names: a bare `secret` key
/// holding a Secret *reference* (`secret=payments/db-creds`, `Secret: db-creds`), and `pwd`/`oldpwd` holding a
/// directory (`PWD=/home/app`).
pub(crate) fn is_reference_value(key: &str, value: &str) -> bool {
    let n = normalize_key(key);
    if n == "secret" {
        looks_like_k8s_ref(value)
    } else if n.ends_with("pwd") {
        value.starts_with('/') || value.starts_with('~')
    } else {
        false
    }
}

/// Bare values that are never secrets (`automountServiceAccountToken: false`, an already masked `***`).
pub(crate) fn is_trivial_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'*')
        || ["true", "false", "null", "nil", "none", "yes", "no", "~"]
            .iter()
            .any(|t| v.eq_ignore_ascii_case(t))
}

/// A placeholder or a reference to a value kept elsewhere, left byte for byte: `$VAR`, `${VAR}`, `$(cmd)`,
/// `${{ secrets.X }}`, `{{ .Values.x }}`, `<token>`, `%(password)s`, `#{password}`, `%{password}`, Terraform's
/// `var.x` / `local.x` / `data.x.y` / `module.x.y`, `env.X` / `secrets.X` / `process.env.X`, and masks made only of
/// `x`, `X`, `*`, `•`, `#` and separators (`XXXX`, `***`, `xxxx-xxxx`).
pub(crate) fn is_reference(v: &str) -> bool {
    let t = v.trim();
    if t.is_empty() {
        return false;
    }
    if let Some(rest) = t.strip_prefix('$') {
        return rest.starts_with('{')
            || rest.starts_with('(')
            || (rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }
    if t.starts_with("{{") || t.starts_with("%(") || t.starts_with("#{") || t.starts_with("%{") {
        return true;
    }
    if t.starts_with('<') && t.ends_with('>') {
        return true;
    }
    let is_ident_path = |s: &str| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'[' | b']'))
    };
    for prefix in [
        "var.",
        "local.",
        "data.",
        "module.",
        "env.",
        "secrets.",
        "vars.",
        "process.env.",
    ] {
        if let Some(rest) = t.strip_prefix(prefix)
            && is_ident_path(rest)
        {
            return true;
        }
    }
    t.chars().count() >= 3
        && t.chars()
            .all(|c| matches!(c, 'x' | 'X' | '*' | '•' | '#' | '-' | '_' | '.'))
        && t.chars().any(|c| matches!(c, 'x' | 'X' | '*' | '•' | '#'))
}

/// Heuristic "this is a credential, not a word": used for bearer tokens and `Authorization` values so that prose
/// (`bearer token expired`) is kept.
pub(crate) fn looks_like_credential(t: &str) -> bool {
    if is_reference(t) {
        return false;
    }
    let len = t.chars().count();
    if len >= 20 {
        return true;
    }
    if len < 6 {
        return false;
    }
    let has_digit = t.bytes().any(|b| b.is_ascii_digit());
    let has_sym = t.bytes().any(|b| b"._~+/=".contains(&b));
    let inner_upper = t.bytes().skip(1).any(|b| b.is_ascii_uppercase());
    let has_lower = t.bytes().any(|b| b.is_ascii_lowercase());
    has_digit || has_sym || (inner_upper && has_lower)
}

/// Stricter than [`looks_like_credential`], for values after `password: ` in running prose: at least 10
/// characters mixing letters and digits (`Zq9xT4…`), or at least 24 characters of one token.
pub(crate) fn looks_like_prose_credential(t: &str) -> bool {
    let len = t.chars().count();
    let has_digit = t.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = t.bytes().any(|b| b.is_ascii_alphabetic());
    let word_like = t.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
    (len >= 10 && has_digit && has_alpha) || (len >= 24 && !word_like)
}

/// Shannon entropy of `s` in bits per byte.
pub(crate) fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

/// `8-4-4-4-12` hex digits.
pub(crate) fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A machine-generated secret rather than a word, a name, a version, a date or an id: 10–4096 bytes without
/// whitespace, at least 3 letters and a digit, entropy ≥ 3 bits per byte, not a path, URL, UUID, Kubernetes name or
/// placeholder, and at most one lower-case word of ≥ 3 letters between separators (so `bert-base-uncased-v2`,
/// `nginx:1.25.3-alpine` and `2026-03-01T12:00:00Z` are kept).
pub(crate) fn looks_generated(v: &str) -> bool {
    let len = v.len();
    if !(10..=4096).contains(&len) || v.chars().any(char::is_whitespace) || !v.is_ascii() {
        return false;
    }
    if v.starts_with(['/', '~', '.'])
        || v.contains("://")
        || is_uuid(v)
        || looks_like_k8s_ref(v)
        || is_reference(v)
    {
        return false;
    }
    let letters = v.bytes().filter(u8::is_ascii_alphabetic).count();
    let digits = v.bytes().filter(u8::is_ascii_digit).count();
    if letters < 3 || digits == 0 {
        return false;
    }
    let words = v
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|seg| seg.len() >= 3 && seg.bytes().all(|b| b.is_ascii_lowercase()))
        .count();
    words <= 1 && entropy(v) >= 3.0
}

/// True if `s` is exactly one `[REDACTED:<kind>]` placeholder.
pub(crate) fn is_placeholder(s: &str) -> bool {
    s.strip_prefix("[REDACTED:")
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|k| SecretKind::from_name(k).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_classes() {
        for (key, class) in [
            ("password", Some(KeyClass::Password)),
            ("db_pass", Some(KeyClass::Password)),
            ("dbPass", Some(KeyClass::Password)),
            ("bypass", Some(KeyClass::Generic)),
            ("x-api-key", Some(KeyClass::ApiKey)),
            ("mySecretString", Some(KeyClass::Generic)),
            ("apikey_myservice", Some(KeyClass::Generic)),
            ("passwordPolicy", Some(KeyClass::Generic)),
            ("aws_secret_access_key", Some(KeyClass::AwsSecret)),
            ("tls.key", Some(KeyClass::PrivateKey)),
            ("name", None),
            ("kind", None),
            ("配置", None),
            ("配pass", Some(KeyClass::Generic)),
        ] {
            assert_eq!(classify_key(key), class, "{key}");
        }
    }

    #[test]
    fn references_and_generated_values() {
        for r in [
            "$API_KEY",
            "${API_KEY}",
            "$(vault read x)",
            "${{ secrets.TOKEN }}",
            "{{ .Values.x }}",
            "<token>",
            "var.db_password",
            "local.x",
            "XXXX",
            "***",
            "xxxx-xxxx",
            "%(password)s",
            "process.env.TOKEN",
        ] {
            assert!(is_reference(r), "{r}");
        }
        for s in ["hunter2", "Zq9xT4mPq2", "$", "data", "x"] {
            assert!(!is_reference(s), "{s}");
        }
        for g in [
            "Zq9xT4mPq2",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "3f786850e387550fdab836ed7e6dc881de23001b",
        ] {
            assert!(looks_generated(g), "{g}");
        }
        for w in [
            "strict",
            "bert-base-uncased-v2",
            "2026-03-01T12:00:00Z",
            "db-creds-2",
            "nginx:1.25.3-alpine",
            "123e4567-e89b-12d3-a456-426614174000",
            "/run/secrets/db",
            "1000000000",
            "Bearer",
        ] {
            assert!(!looks_generated(w), "{w}");
        }
    }
}
