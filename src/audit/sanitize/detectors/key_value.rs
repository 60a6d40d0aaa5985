//! `<name>=<value>` and every assignment syntax (`:=`, `::=`, `?=`, `+=`, `=>`, quoted keys: `'password' => 'x'`),
//! `--<name> <value>`, `<name>:<value>` (no space, Go maps), and `<name>: <value>` at the start of a line or after
//! one of `, ; { ( [ | & " '`, elsewhere only when the value plainly is a credential (so prose such as `failed to
//! refresh token: oauth2: …` is kept). The kind follows the key (`password_kv`, `api_key`, `token`, `secret`, …).
//!
//! Bare values stop at whitespace, `" ' < > , ; & \`; a trailing unbalanced `)`/`]`/`}` is not part of them.

use std::sync::LazyLock;

use regex::{Captures, Regex};

use super::super::engine::{Cand, Detector, compile, push};
use super::super::keys::{
    KW_PLAIN, KeyClass, classify_key, is_reference, is_trivial_value, looks_like_prose_credential,
};
use super::{KEYED_PLAIN_KINDS, first_group};

static KV: LazyLock<Regex> = LazyLock::new(|| {
    let key = format!("[A-Za-z0-9_.-]*(?:{KW_PLAIN})[A-Za-z0-9_.-]*");
    let value = r#"(?:"(?P<dq>(?:[^"\\\n]|\\.)*)"|\\"(?P<eq>(?:[^"\\\n]|\\[^"\n])*)\\"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s"'<>,;&=:\\][^\s"'<>,;&\\]*))"#;
    compile(&format!(
        r#"(?i)(?:(?:^|[\n\r,;{{(\[|&"'])[ \t]*(?P<ckey>{key})[ \t]*:[ \t]*|[:"']?(?P<ekey>{key})["']?[ \t]*(?:=>|::=|:=|\?=|\+=|=)[ \t]*|(?:^|[\s\[{{(,;])(?P<gkey>[A-Za-z0-9_-]*(?:{KW_PLAIN})[A-Za-z0-9_-]*):|(?:^|[ \t\n\r])--(?P<fkey>{key})[ \t]+|(?:^|[ \t])(?P<pkey>{key})[ \t]*:[ \t]+){value}"#
    ))
});

/// Length of `s` without trailing `)`, `]`, `}` that have no opening partner in `s` (`hunter2]` in
/// `map[password:hunter2]`). Linear time.
fn trim_unbalanced(s: &str) -> usize {
    let b = s.as_bytes();
    let count = |c: u8| b.iter().filter(|x| **x == c).count();
    let mut bal = [
        count(b')') as isize - count(b'(') as isize,
        count(b']') as isize - count(b'[') as isize,
        count(b'}') as isize - count(b'{') as isize,
    ];
    let mut end = b.len();
    while end > 0 {
        let i = match b[end - 1] {
            b')' => 0,
            b']' => 1,
            b'}' => 2,
            _ => break,
        };
        if bal[i] <= 0 {
            break;
        }
        bal[i] -= 1;
        end -= 1;
    }
    end
}

/// A call or a subscript (`os.Getenv(`, `getpass()`, `os.environ[`) is code, not a secret.
fn is_call(v: &str) -> bool {
    if v.ends_with(['(', '[', '{']) {
        return true;
    }
    let ident = v.find('(').map(|i| &v[..i]);
    ident.is_some_and(|id| {
        !id.is_empty()
            && id.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':'))
    })
}

fn scan(text: &str, out: &mut Vec<Cand>) {
    // A match whose value is not taken (trivial, a reference, prose) resumes the scan right after its key, so a
    // value that is itself a key (`password:  password: Zq9xT4mPq2`) still gets its own match.
    let mut pos = 0;
    while let Some(c) = KV.captures_at(text, pos) {
        let Some(key) = first_group(&c, &["ckey", "ekey", "gkey", "fkey", "pkey"]) else {
            break;
        };
        let whole_end = c.get(0).map_or(text.len(), |m| m.end());
        pos = if value_taken(&c, key.as_str(), text, out) {
            whole_end
        } else {
            key.end()
        };
    }
}

/// Pushes the value of one match as a candidate; false when it is not a secret.
fn value_taken(c: &Captures<'_>, key: &str, text: &str, out: &mut Vec<Cand>) -> bool {
    // `<name>: <value>` in the middle of prose: only a value that is plainly a credential, so that
    // `invalid password: too short` or `failed to refresh token: oauth2: …` are kept.
    let prose = c.name("pkey").is_some();
    let Some(class) = classify_key(key) else {
        return false;
    };
    let (start, end) = if let Some(v) = first_group(c, &["dq", "eq", "sq"]) {
        (v.start(), v.end())
    } else if let Some(v) = c.name("bare") {
        let len = trim_unbalanced(v.as_str());
        let value = &v.as_str()[..len];
        if is_trivial_value(value) || is_reference(value) || is_call(value) {
            return false;
        }
        // `--password --token x`, `password= client_secret: x`: the next key is not this key's value.
        let next_key = value
            .strip_prefix("--")
            .or_else(|| value.strip_suffix(':'))
            .is_some_and(|k| classify_key(k).is_some_and(|c| c != KeyClass::Generic));
        if next_key {
            return false;
        }
        // `io.jsonwebtoken:jjwt-jackson:0.11.2`: a dotted name glued to `:` is a Maven/Gradle coordinate.
        if key.contains('.') && text[..v.start()].ends_with(':') {
            return false;
        }
        (v.start(), v.start() + len)
    } else {
        return false;
    };
    let value = &text[start..end];
    if prose && !looks_like_prose_credential(value) {
        return false;
    }
    if !class.takes(key, value) {
        return false;
    }
    push(out, start, end, class.plain_kind());
    true
}

pub(crate) const DETECTOR: Detector = Detector {
    name: "key-value",
    kinds: KEYED_PLAIN_KINDS,
    scan,
    tps: &[
        "login failed with password: «Zq9xT4mPq2» for bob",
        "prod api_key: «api_key:ak_live_AbCdEfGhIjKlMnOpQrSt»",
        "password=«hunter2» user=bob",
        "PGPASSWORD=«abc123» psql -h db",
        "kubectl create secret generic x --from-literal=password=«abc»",
        "mysql --password «s3cret» -u root",
        "db:\n  host: db\n  password: \"«hunter 2»\"\n",
        "map[password:«hunter2» user:bob]",
        "GET /v1/data?api_key=«api_key:AbC123xyz»&limit=10",
        "X-API-Key: «api_key:0123456789abcdef»",
        "callback?code=x&access_token=«token:zzz9»&state=1",
        "token: «token:abc123»\nuser: bob",
        "TOKEN=«token:ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ»",
        "client_secret=«secret:abc» secret=«secret:def»",
        "env WEBHOOK_SECRET='«secret:x y z»' started",
        "aws_secret_access_key = «aws_secret_key:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY»",
        "password=«postgres://u:p@h/db»",
        "login password=«pw1» to postgres://a:«postgres_url:b»@h/d with Authorization: «authorization_header:Bearer xyz.123»",
        "db_pass=«hunter2» DB-PASS=«hunter3» dbPass: «Zq9xT4mPq2»",
        "DBPASS=«generic_secret:Zx8fJ3kLq9Wm2Np5» mySecretString=«generic_secret:Zx8fJ3kLq9Wm2Np6»",
        "password := \"«hunter2»\"",
        "'password' => '«hunter2»', :api_key => \"«api_key:AbC123xyz»\"",
        "PASSWORD ?= «hunter2»\nTOKEN ::= «token:abc123»\nSECRET += «secret:s3cr3t»",
        "connect(host=\"db\", password=\"«hunter2»\")",
    ],
    fps: &[
        "the password policy requires 12 characters",
        "invalid password: too short",
        "PASSWORD_FILE=/run/secrets/db",
        "api key rotation completed",
        "token bucket rate limit exceeded",
        "if token == \"\" { return }",
        "secret \"db-creds\" not found",
        "secretName: db-creds",
        "tokens: 5, max_tokens=1000",
        "passwordPolicy=strict",
        "password authentication failed for user \"app\"",
        "failed to refresh token: oauth2: cannot fetch token: 401 Unauthorized",
        "level=error msg=\"failed to sync secret\" secret=payments/db-creds error=\"context canceled\"",
        "Secret: db-creds (type Opaque)",
        "PWD=/home/app OLDPWD=/",
        "password=*** (masked), token: <none>",
        "spec:\n  automountServiceAccountToken: false\n  enableServiceLinks: true",
        "password=$DB_PASSWORD token=${API_TOKEN} secret=$(cat /run/secrets/x)",
        "password: {{ .Values.db.password }}\napi_key: <api-key>\nclient_secret: xxxx-xxxx-xxxx",
        "password = var.db_password\ntoken = local.token\nPASSWORD=XXXXXXXX",
        "password := os.Getenv(\"DB_PASSWORD\")",
        "password = getpass.getpass()",
        "io.jsonwebtoken:jjwt-jackson-0.11.2",
        "implementation 'io.jsonwebtoken:jjwt-jackson:0.11.2'",
        "tokenizer: bert-base-uncased-v2",
        "if password != expected { return errBadPassword }",
    ],
};
