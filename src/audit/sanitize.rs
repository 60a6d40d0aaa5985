//! Sanitization of remediation-audit records (pure functions, no I/O).
//!
//! Three concerns, each exposed as a small pure function:
//!
//! * **Secret redaction** ([`redact_secrets`]): every free-text field and every
//!   string leaf of `details` is scanned for secrets; only the *secret part* is
//!   replaced by `[REDACTED:<kind>]` (see [`SecretKind`] for the 22 kinds).
//!   Everything around it (key names, quotes, spacing, newlines, URL user/host)
//!   is kept byte for byte.
//! * **Markup detection** ([`contains_markup`]) for identifier fields, which are
//!   rejected (`xss_detected`) instead of being rewritten.
//! * **Dangerous-HTML stripping** ([`strip_dangerous_html`]) for free text:
//!   script-like elements, `javascript:`/`vbscript:` URLs and `on*=` handlers
//!   inside tags are removed; everything else (including `<none>`, `a<b`,
//!   `x => y`) is left alone.
//!
//! There is deliberately **no SQL keyword stripping**: every query is
//! parameterized, so text such as `my-app-delete-jobs` or `DROP TABLE users; --`
//! is stored exactly as received.
//!
//! # How redaction works
//!
//! 1. A cheap case-insensitive keyword pre-check (one regex made of literals, so
//!    it runs on the regex crate's literal prefilter) rejects the common
//!    no-secret text; in that case the input is returned as `Cow::Borrowed`.
//! 2. Otherwise every rule below runs (all regexes are compiled once, in one
//!    `LazyLock`) and yields *candidate spans* `(start, end, kind)` that cover
//!    only the secret bytes.
//! 3. Candidates that overlap an existing `[REDACTED:<kind>]` placeholder are
//!    dropped (this is what makes redaction idempotent), the remaining
//!    overlapping candidates are merged into one span, and the span takes the
//!    kind of its **outermost** candidate (the longest one; ties are broken by
//!    a fixed specificity order: PEM key, PEM certificate, `Authorization`
//!    header, database URL, generic URL, Kubernetes Secret data, AWS secret,
//!    JSON-keyed, plain-keyed, GitHub, OpenAI, AWS key id, bearer). So
//!    `Authorization: Bearer x` is `authorization_header`, `"api_key": "sk-…"`
//!    is `api_key_json`, `token=ghp_…` is `token`, and a postgres URL is
//!    `postgres_url`.
//! 4. The pass is repeated until nothing changes (bounded), so the result is a
//!    fixpoint: sanitizing twice equals sanitizing once.
//!
//! # Rules per kind
//!
//! A *secret key name* ends (case-insensitively, ignoring `-`, `_`, `.`) with
//! `password`, `passwd`, `passphrase`, `pwd` (password), `apikey` (API key),
//! `token` (token), `secret`/`secretkey` (secret; also `credential(s)` in JSON),
//! `secretaccesskey`/`awssecretkey` (AWS secret), `privatekey` (private key) or
//! `authorization` (JSON only). So `db_password`, `DB_PASSWORD`, `adminPassword`,
//! `x-api-key`, `client_secret`, `access_token` are secret names; `passwordPolicy`,
//! `secretName`, `tokenType`, `max_tokens` are not.
//!
//! | kind | rule (only the secret part is replaced) |
//! |---|---|
//! | `password_json`, `api_key_json`, `token_json`, `secret_json` | `"<secret key name>": "<value>"` or a number, also `'k': 'v'` and one level of escaped JSON `\"k\":\"v\"`; also `{"name":"DB_PASSWORD","value":"…"}` |
//! | `password_kv`, `api_key`, `token`, `secret` | `<name>=<value>`, `--<name> <value>`, `<name>:<value>` (no space, Go maps), and `<name>: <value>` at the start of a line or after one of `, ; { ( [ \| & " '`, elsewhere only when the value plainly is a credential (so prose such as `failed to refresh token: oauth2: …` is kept); also YAML `name: DB_PASSWORD` + `value: …` |
//! | `password_url` | `scheme://user:PASSWORD@host` for any scheme other than the four databases |
//! | `postgres_url`, `mysql_url`, `mongodb_url`, `redis_url` | same, for `postgres(ql)`, `mysql`/`mariadb`, `mongodb(+srv)`, `redis(s)` (also `scheme+driver://`; `redis://:PASSWORD@host`) |
//! | `openai_key` | `sk-` (optionally `proj-`, `svcacct-`, `admin-`) + ≥ 20 of `[A-Za-z0-9_-]`, containing an upper-case letter and a digit (so `sk-learn-pipeline-worker-deployment` is kept) |
//! | `bearer_token` | `Bearer <token>` where the token looks like a credential (≥ 6 chars with a digit, one of `._~+/=`, or inner upper case; or ≥ 20 chars), so `bearer token expired` is kept |
//! | `github_token` | `gh[pousr]_` + ≥ 36 alphanumerics, `github_pat_` + ≥ 22 of `[A-Za-z0-9_]` |
//! | `authorization_header` | value of an `Authorization:` (or `Proxy-Authorization:`, `X-…-Authorization:`) header: a known scheme + credentials, or a single credential-looking value of ≥ 8 chars; `Authorization failed for user bob` is kept |
//! | `aws_access_key_id` | `AKIA`/`ASIA` + 16 `[A-Z0-9]` |
//! | `aws_secret_key` | value of `aws_secret_access_key`-like names (keyed rules), or a 40-char `[A-Za-z0-9/+]` value right after an access key id |
//! | `pem_certificate` | `-----BEGIN CERTIFICATE-----` … `-----END CERTIFICATE-----` (the whole block; a block without END is left alone: a truncated certificate is public data) |
//! | `pem_private_key` | `-----BEGIN [XXX ]PRIVATE KEY-----` … END (the whole block; without an END line everything up to the end of the text) |
//! | `k8s_secret_data` | values under a YAML `data:`/`binaryData:` block that are base64 (and either the text says `kind: Secret` or the value looks encoded), every value under `stringData:` (block scalars included), the same inside JSON `"data": {…}`, and any base64-encoded PEM (`LS0tLS1CRUdJTi…`) |
//!
//! Values that are never treated as secrets: empty values, `true`/`false`/
//! `null`/`nil`/`none`/`yes`/`no`/`~`, all-`*` masks (`password=***`), values
//! starting with `<` (`token: <none>`), a Secret *reference* under the bare key
//! `secret` (lower-case DNS-1123 name with a `-` or `/`: `secret=payments/db-creds`,
//! `Secret: db-creds`) and a directory under `pwd`/`oldpwd` (`PWD=/home/app`).
//!
//! # Known limitations
//!
//! * A password written in prose (`invalid password: too short`) is only redacted
//!   in the line-start/after-separator positions listed above, or when the value
//!   plainly is a credential (≥ 10 characters mixing letters and digits, or a
//!   ≥ 24-character non-word token: `login with password: Zq9xT4mPq2`); conversely a
//!   `key: value` line at the start of a line is always treated as a secret.
//! * Bare values stop at whitespace, `" ' < > , ; & \`; a secret containing one
//!   of those characters is only partly redacted unless it is quoted.
//! * Text that already contains a literal `[REDACTED:<kind>]` placeholder is
//!   trusted: a candidate overlapping it is not redacted again, so in
//!   `password=[REDACTED:password_kv]xyz` the `xyz` is kept.
//! * The outermost candidate wins, so `password=postgres://u:p@h/db` becomes
//!   `password=[REDACTED:password_kv]` (the whole value, URL structure lost).
//! * A JSON number under a secret key in free text is replaced by the bare
//!   placeholder (`"pin": 1234` style text stops being valid JSON).
//! * Kubernetes `data` maps are recognised in YAML and in plain JSON text, not
//!   in escaped JSON (`\"data\":{…}`); named keys (`\"password\":…`) still are.
//! * HTML handling is a conservative filter, not an HTML parser; HTML character
//!   references (`&#106;avascript:`) are not decoded.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// The 22 kinds of secret, in this order, with these snake_case names
/// ([`SecretKind::as_str`]), used in `[REDACTED:<kind>]` and in metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretKind {
    /// `"password": "x"` (also `passwd`, `pwd`, `db_password`, … keys) in JSON-looking text.
    PasswordJson,
    /// `password=x`, `password: x`, `PASSWORD=x`, `--password=x` in plain text.
    PasswordKv,
    /// Userinfo password in a generic URL `scheme://user:pass@host`.
    PasswordUrl,
    /// `"api_key"`/`"apiKey"`/`"api-key"`/`"x-api-key"`: `"…"` in JSON text.
    ApiKeyJson,
    /// `api_key=…`, `apikey: …`, `X-API-Key: …` in plain text.
    ApiKey,
    /// OpenAI-style `sk-…` / `sk-proj-…` keys.
    OpenaiKey,
    /// `Bearer <token>` (outside an `Authorization` header).
    BearerToken,
    /// `ghp_`/`gho_`/`ghs_`/`ghu_`/`ghr_` + 36 alphanumerics, `github_pat_…`.
    GithubToken,
    /// `"token"`/`"access_token"`/`"refresh_token"`/…: `"…"` in JSON text.
    TokenJson,
    /// `token=…`, `access_token=…`, `token: …` in plain text.
    Token,
    /// `"secret"`/`"client_secret"`/`"secret_key"`: `"…"` in JSON text.
    SecretJson,
    /// `secret=…`, `client_secret=…` in plain text.
    Secret,
    /// The value of an `Authorization:` header.
    AuthorizationHeader,
    /// `AKIA`/`ASIA` + 16 upper-case alphanumerics.
    AwsAccessKeyId,
    /// `aws_secret_access_key=…` or a 40-char value next to an access key id.
    AwsSecretKey,
    /// `postgres://user:pass@…` / `postgresql://…`.
    PostgresUrl,
    /// `mysql://user:pass@…`.
    MysqlUrl,
    /// `mongodb://…` and `mongodb+srv://…` with a password.
    MongodbUrl,
    /// `redis://…` and `rediss://…` with a password.
    RedisUrl,
    /// A whole `-----BEGIN CERTIFICATE-----` block.
    PemCertificate,
    /// A whole `-----BEGIN … PRIVATE KEY-----` block (to the end of the text if unterminated).
    PemPrivateKey,
    /// Values of Kubernetes Secret `data:`/`stringData:` entries.
    K8sSecretData,
}

impl SecretKind {
    /// All kinds, in declaration order.
    pub const ALL: [SecretKind; 22] = [
        SecretKind::PasswordJson,
        SecretKind::PasswordKv,
        SecretKind::PasswordUrl,
        SecretKind::ApiKeyJson,
        SecretKind::ApiKey,
        SecretKind::OpenaiKey,
        SecretKind::BearerToken,
        SecretKind::GithubToken,
        SecretKind::TokenJson,
        SecretKind::Token,
        SecretKind::SecretJson,
        SecretKind::Secret,
        SecretKind::AuthorizationHeader,
        SecretKind::AwsAccessKeyId,
        SecretKind::AwsSecretKey,
        SecretKind::PostgresUrl,
        SecretKind::MysqlUrl,
        SecretKind::MongodbUrl,
        SecretKind::RedisUrl,
        SecretKind::PemCertificate,
        SecretKind::PemPrivateKey,
        SecretKind::K8sSecretData,
    ];

    /// The snake_case name used in `[REDACTED:<kind>]` and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::PasswordJson => "password_json",
            SecretKind::PasswordKv => "password_kv",
            SecretKind::PasswordUrl => "password_url",
            SecretKind::ApiKeyJson => "api_key_json",
            SecretKind::ApiKey => "api_key",
            SecretKind::OpenaiKey => "openai_key",
            SecretKind::BearerToken => "bearer_token",
            SecretKind::GithubToken => "github_token",
            SecretKind::TokenJson => "token_json",
            SecretKind::Token => "token",
            SecretKind::SecretJson => "secret_json",
            SecretKind::Secret => "secret",
            SecretKind::AuthorizationHeader => "authorization_header",
            SecretKind::AwsAccessKeyId => "aws_access_key_id",
            SecretKind::AwsSecretKey => "aws_secret_key",
            SecretKind::PostgresUrl => "postgres_url",
            SecretKind::MysqlUrl => "mysql_url",
            SecretKind::MongodbUrl => "mongodb_url",
            SecretKind::RedisUrl => "redis_url",
            SecretKind::PemCertificate => "pem_certificate",
            SecretKind::PemPrivateKey => "pem_private_key",
            SecretKind::K8sSecretData => "k8s_secret_data",
        }
    }

    /// The replacement text, `[REDACTED:<kind>]`.
    pub fn placeholder(self) -> String {
        format!("[REDACTED:{}]", self.as_str())
    }

    /// Tie-break order when two candidates cover exactly the same bytes
    /// (lower is more specific).
    fn specificity(self) -> u8 {
        match self {
            SecretKind::PemPrivateKey => 0,
            SecretKind::PemCertificate => 1,
            SecretKind::AuthorizationHeader => 2,
            SecretKind::PostgresUrl
            | SecretKind::MysqlUrl
            | SecretKind::MongodbUrl
            | SecretKind::RedisUrl => 3,
            SecretKind::PasswordUrl => 4,
            SecretKind::K8sSecretData => 5,
            SecretKind::AwsSecretKey => 6,
            SecretKind::PasswordJson
            | SecretKind::ApiKeyJson
            | SecretKind::TokenJson
            | SecretKind::SecretJson => 7,
            SecretKind::PasswordKv
            | SecretKind::ApiKey
            | SecretKind::Token
            | SecretKind::Secret => 8,
            SecretKind::GithubToken => 9,
            SecretKind::OpenaiKey => 10,
            SecretKind::AwsAccessKeyId => 11,
            SecretKind::BearerToken => 12,
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with dangerous HTML in free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HtmlPolicy {
    /// Remove it (see [`strip_dangerous_html`]).
    #[default]
    Strip,
    /// Refuse the record ([`HtmlRejected`]).
    Reject,
}

/// One redaction performed while sanitizing a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    /// JSON-pointer-ish path, e.g. `errorMessage`, `details.env[2].value`.
    /// Built from *sanitized* keys, so it never contains the secret.
    pub field: String,
    /// What was redacted.
    pub kind: SecretKind,
}

/// Dangerous HTML was found in `field` under [`HtmlPolicy::Reject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtmlRejected {
    /// Path of the offending field.
    pub field: String,
}

impl fmt::Display for HtmlRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dangerous html in field {}", self.field)
    }
}

impl std::error::Error for HtmlRejected {}

/// Maximum nesting handled by [`sanitize_json`]; deeper sub-trees (the caller
/// limits depth to 32 anyway) are replaced by [`DEPTH_EXCEEDED`].
pub const MAX_JSON_DEPTH: usize = 64;

/// Replacement for a `details` sub-tree nested deeper than [`MAX_JSON_DEPTH`].
pub const DEPTH_EXCEEDED: &str = "[TRUNCATED:max_depth]";

// ---------------------------------------------------------------------------
// Patterns
// ---------------------------------------------------------------------------

/// Secret key names usable in JSON-looking text.
const KW_JSON: &str = r"password|passwd|passphrase|pwd|api[_.-]?key|token|secret|secret[_.-]?key|secret[_.-]?access[_.-]?key|private[_.-]?key|credentials?|authorization";
/// Secret key names usable in `key=value` text (no `credentials`/`authorization`:
/// those words are too common in prose such as `error getting credentials: …`).
const KW_PLAIN: &str = r"password|passwd|passphrase|pwd|api[_.-]?key|token|secret|secret[_.-]?key|secret[_.-]?access[_.-]?key|private[_.-]?key";

/// A value token inside an `Authorization` header.
const AUTH_TOK: &str = r#"(?:[^\s\]"',;\\]|"[^"\n]*")+"#;

struct Rules {
    prefilter: Regex,
    placeholder: Regex,
    pem_key: Regex,
    pem_cert: Regex,
    url: Regex,
    auth: Regex,
    json_dq: Regex,
    json_esc: Regex,
    json_sq: Regex,
    kv: Regex,
    env_yaml: Regex,
    env_json: Regex,
    bearer: Regex,
    github: Regex,
    openai: Regex,
    aws_id: Regex,
    aws_pair: Regex,
    b64_pem: Regex,
    k8s_json_block: Regex,
    k8s_json_pair: Regex,
    // html
    danger_open: Regex,
    danger_close: Regex,
    tag: Regex,
    handler: Regex,
    js_in_tag: Regex,
    js_text: Regex,
    markup: Regex,
}

#[allow(clippy::expect_used)]
fn compile(pattern: &str) -> Regex {
    // Every pattern is a constant; `all_patterns_compile` forces all of them.
    Regex::new(pattern).expect("constant sanitize pattern must compile")
}

/// `j\s*a\s*v…` tolerant of the tab/newline characters browsers ignore in URLs.
fn spaced(word: &str) -> String {
    let mut out = String::new();
    for (i, c) in word.chars().enumerate() {
        if i > 0 {
            out.push_str(r"[\t\r\n]*");
        }
        out.push(c);
    }
    out
}

static RULES: LazyLock<Rules> = LazyLock::new(|| {
    let kinds = SecretKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join("|");
    let kv_value = r#"(?:"(?P<dq>(?:[^"\\\n]|\\.)*)"|\\"(?P<eq>(?:[^"\\\n]|\\[^"\n])*)\\"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s"'<>,;&=\\][^\s"'<>,;&\\]*))"#;
    let js = format!(
        "(?i)(?:{}|{})[\\t\\r\\n]*:",
        spaced("javascript"),
        spaced("vbscript")
    );
    Rules {
        prefilter: compile(
            r#"(?i)pass|pwd|secret|token|api.?key|private.?key|credential|authorization|bearer|akia|asia|sk-|gh[pousr]_|github_pat_|://|-----begin|ls0tls1crudjti|data:|"data""#,
        ),
        placeholder: compile(&format!(r"\[REDACTED:(?:{kinds})\]")),
        pem_key: compile(
            r"(?s)-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\z)",
        ),
        pem_cert: compile(
            r"(?s)-----BEGIN (?:TRUSTED )?CERTIFICATE-----.*?-----END (?:TRUSTED )?CERTIFICATE-----",
        ),
        url: compile(
            r#"(?i)(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<user>[^\s:/?#@"'<>\[\]]*):(?P<pass>[^\s/?#"'<>]+)@"#,
        ),
        auth: compile(&format!(
            r"(?i)(?:^|[^A-Za-z0-9_])(?:[A-Za-z0-9_-]*-)?authorization[ \t]*:[ \t]*\[?[ \t]*(?P<val>(?P<scheme>basic|bearer|digest|token|negotiate|ntlm|aws4-hmac-sha256|apikey|api-key|key|hawk|oauth|dpop|ssws|splunk|mac|sso)[ \t]+(?P<cred>{AUTH_TOK})(?:[ \t]*,[ \t]*[A-Za-z0-9_-]+={AUTH_TOK})*|(?P<bare>{AUTH_TOK}))"
        )),
        json_dq: compile(&format!(
            r#"(?i)"(?P<key>[A-Za-z0-9_.-]*(?:{KW_JSON}))"\s*:\s*(?:"(?P<val>(?:[^"\\\n]|\\.)*)"|(?P<num>-?[0-9][0-9.eE+-]*))"#
        )),
        json_esc: compile(&format!(
            r#"(?i)\\"(?P<key>[A-Za-z0-9_.-]*(?:{KW_JSON}))\\"\s*:\s*(?:\\"(?P<val>(?:[^"\\\n]|\\[^"\n])*)\\"|(?P<num>-?[0-9][0-9.eE+-]*))"#
        )),
        json_sq: compile(&format!(
            r#"(?i)'(?P<key>[A-Za-z0-9_.-]*(?:{KW_JSON}))'\s*:\s*'(?P<val>[^'\n]*)'"#
        )),
        kv: compile(&format!(
            r#"(?i)(?:(?:^|[\n\r,;{{(\[|&"'])[ \t]*(?P<ckey>[A-Za-z0-9_.-]*(?:{KW_PLAIN}))[ \t]*:[ \t]*|(?P<ekey>[A-Za-z0-9_.-]*(?:{KW_PLAIN}))[ \t]*=[ \t]*|(?P<gkey>[A-Za-z0-9_.-]*(?:{KW_PLAIN})):|(?:^|[ \t\n\r])--(?P<fkey>[A-Za-z0-9_.-]*(?:{KW_PLAIN}))[ \t]+|(?:^|[ \t])(?P<pkey>[A-Za-z0-9_.-]*(?:{KW_PLAIN}))[ \t]*:[ \t]+){kv_value}"#
        )),
        env_yaml: compile(&format!(
            r#"(?i)(?:^|[^A-Za-z0-9_.-])name:[ \t]*["']?(?P<key>[A-Za-z0-9_.-]*(?:{KW_PLAIN}))["']?[ \t]*\r?\n[ \t]*(?:-[ \t]+)?value:[ \t]*(?:"(?P<dq>(?:[^"\\\n]|\\.)*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s"'#][^\n]*))"#
        )),
        env_json: compile(&format!(
            r#"(?i)"name"\s*:\s*"(?P<key>[A-Za-z0-9_.-]*(?:{KW_PLAIN}))"\s*,\s*"value"\s*:\s*(?:"(?P<val>(?:[^"\\\n]|\\.)*)"|(?P<num>-?[0-9][0-9.eE+-]*))"#
        )),
        bearer: compile(r"(?i)(?-u:\b)bearer[ \t]+(?P<tok>[A-Za-z0-9._~+/-]+=*)"),
        github: compile(
            r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})(?-u:\b)",
        ),
        openai: compile(
            r"(?-u:\b)sk-(?P<prefix>proj-|svcacct-|admin-)?(?P<body>[A-Za-z0-9_-]{20,})",
        ),
        aws_id: compile(r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)"),
        aws_pair: compile(r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}[ \t,:;|]+(?P<s>[A-Za-z0-9/+]{40})"),
        b64_pem: compile(r"LS0tLS1CRUdJTi[A-Za-z0-9+/]*={0,2}"),
        k8s_json_block: compile(
            r#""(?P<which>data|binaryData|stringData)"\s*:\s*\{(?P<body>[^{}]*)\}"#,
        ),
        k8s_json_pair: compile(r#""(?:[^"\\\n]|\\.)*"\s*:\s*"(?P<v>(?:[^"\\\n]|\\.)*)""#),
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
        js_in_tag: compile(&js),
        js_text: compile(r#"(?i)(?:javascript|vbscript):[^\s"'<>]+"#),
        markup: compile(&format!(
            r"(?i)<[a-z/!?][^<>]*>|<!--|<(?:script|iframe|object|embed|applet|frame|svg|img|style|link|meta|base|form|math|body|video|audio|input)(?-u:\b)|{}|(?-u:\b)on[a-z]+[ \t\r\n]*=",
            &js[4..]
        )),
    }
});

// ---------------------------------------------------------------------------
// Key-name classification (shared by free text and `details` keys)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyClass {
    Password,
    ApiKey,
    Token,
    Secret,
    AwsSecret,
    PrivateKey,
    Authorization,
}

impl KeyClass {
    fn json_kind(self) -> SecretKind {
        match self {
            KeyClass::Password => SecretKind::PasswordJson,
            KeyClass::ApiKey => SecretKind::ApiKeyJson,
            KeyClass::Token => SecretKind::TokenJson,
            KeyClass::Secret => SecretKind::SecretJson,
            KeyClass::AwsSecret => SecretKind::AwsSecretKey,
            KeyClass::PrivateKey => SecretKind::PemPrivateKey,
            KeyClass::Authorization => SecretKind::AuthorizationHeader,
        }
    }

    fn plain_kind(self) -> SecretKind {
        match self {
            KeyClass::Password => SecretKind::PasswordKv,
            KeyClass::ApiKey => SecretKind::ApiKey,
            KeyClass::Token => SecretKind::Token,
            KeyClass::Secret => SecretKind::Secret,
            KeyClass::AwsSecret => SecretKind::AwsSecretKey,
            KeyClass::PrivateKey => SecretKind::PemPrivateKey,
            KeyClass::Authorization => SecretKind::AuthorizationHeader,
        }
    }
}

/// Lower-cased key with `-`, `_`, `.` and spaces removed.
fn normalize_key(key: &str) -> String {
    key.chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Classifies a key name: lower-cased, with `-`, `_`, `.` and spaces ignored,
/// the key must *end* with a secret word (see the module docs).
fn classify_key(key: &str) -> Option<KeyClass> {
    if key.len() > 256 {
        return None;
    }
    let n = normalize_key(key);
    let ends = |s: &str| n.ends_with(s);
    if ends("secretaccesskey") || ends("awssecretkey") {
        Some(KeyClass::AwsSecret)
    } else if ends("password") || ends("passwd") || ends("passphrase") || ends("pwd") {
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
    } else {
        None
    }
}

/// A lower-case Kubernetes object reference such as `db-creds` or
/// `payments/db-creds` (DNS-1123 names, at least one `-` or `/`).
fn looks_like_k8s_ref(v: &str) -> bool {
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

/// Values that name something rather than being a secret, for the two
/// ambiguous key names: a bare `secret` key holding a Secret *reference*
/// (`secret=payments/db-creds`, `Secret: db-creds`), and `pwd`/`oldpwd`
/// holding a directory (`PWD=/home/app`).
fn is_reference_value(key: &str, value: &str) -> bool {
    let n = normalize_key(key);
    if n == "secret" {
        looks_like_k8s_ref(value)
    } else if n.ends_with("pwd") {
        value.starts_with('/') || value.starts_with('~')
    } else {
        false
    }
}

/// True if `s` is exactly one `[REDACTED:<kind>]` placeholder.
fn is_placeholder(s: &str) -> bool {
    s.strip_prefix("[REDACTED:")
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|k| SecretKind::ALL.iter().any(|kind| kind.as_str() == k))
}

// ---------------------------------------------------------------------------
// Candidate collection
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Cand {
    start: usize,
    end: usize,
    kind: SecretKind,
}

fn push(out: &mut Vec<Cand>, start: usize, end: usize, kind: SecretKind) {
    if end > start {
        out.push(Cand { start, end, kind });
    }
}

/// Heuristic "this is a credential, not a word": used for bearer tokens and
/// `Authorization` values so that prose (`bearer token expired`) is kept.
fn looks_like_credential(t: &str) -> bool {
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

/// Length of `s` without trailing `)`, `]`, `}` that have no opening partner
/// in `s` (`hunter2]` in `map[password:hunter2]`). Linear time.
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

/// Bare values that are never secrets (`automountServiceAccountToken: false`,
/// an already masked `***`).
fn is_trivial_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'*')
        || ["true", "false", "null", "nil", "none", "yes", "no", "~"]
            .iter()
            .any(|t| v.eq_ignore_ascii_case(t))
}

fn first_group<'h>(c: &Captures<'h>, names: &[&str]) -> Option<regex::Match<'h>> {
    names.iter().find_map(|n| c.name(n))
}

fn collect_keyed_json(re: &Regex, text: &str, out: &mut Vec<Cand>) {
    for c in re.captures_iter(text) {
        let (Some(key), Some(val)) = (c.name("key"), first_group(&c, &["val", "num"])) else {
            continue;
        };
        if is_reference_value(key.as_str(), val.as_str()) {
            continue;
        }
        if let Some(class) = classify_key(key.as_str()) {
            push(out, val.start(), val.end(), class.json_kind());
        }
    }
}

fn collect_kv(rules: &Rules, text: &str, out: &mut Vec<Cand>) {
    // A match whose value is not taken (trivial, a reference, prose) resumes the scan right after its key, so a
    // value that is itself a key (`password:  password: Zq9xT4mPq2`) still gets its own match.
    let mut pos = 0;
    while let Some(c) = rules.kv.captures_at(text, pos) {
        let Some(key) = first_group(&c, &["ckey", "ekey", "gkey", "fkey", "pkey"]) else {
            break;
        };
        let whole_end = c.get(0).map_or(text.len(), |m| m.end());
        pos = if kv_value_taken(&c, key.as_str(), text, out) {
            whole_end
        } else {
            key.end()
        };
    }
}

/// Pushes the value of one `kv` match as a candidate; false when it is not a secret.
fn kv_value_taken(c: &Captures<'_>, key: &str, text: &str, out: &mut Vec<Cand>) -> bool {
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
        if is_trivial_value(&v.as_str()[..len]) {
            return false;
        }
        // `--password --token x`, `password= client_secret: x`: the next key is not this key's value.
        let value = &v.as_str()[..len];
        let next_key = value
            .strip_prefix("--")
            .or_else(|| value.strip_suffix(':'))
            .is_some_and(|k| classify_key(k).is_some());
        if next_key {
            return false;
        }
        (v.start(), v.start() + len)
    } else {
        return false;
    };
    if prose && !looks_like_prose_credential(&text[start..end]) {
        return false;
    }
    if is_reference_value(key, &text[start..end]) {
        return false;
    }
    push(out, start, end, class.plain_kind());
    true
}

/// Stricter than [`looks_like_credential`], for values after `password: ` in running prose: at least 10
/// characters mixing letters and digits (`Zq9xT4…`), or at least 24 characters of one token.
fn looks_like_prose_credential(t: &str) -> bool {
    let len = t.chars().count();
    let has_digit = t.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = t.bytes().any(|b| b.is_ascii_alphabetic());
    let word_like = t.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
    (len >= 10 && has_digit && has_alpha) || (len >= 24 && !word_like)
}

fn collect_env_pairs(rules: &Rules, text: &str, out: &mut Vec<Cand>) {
    for c in rules.env_yaml.captures_iter(text) {
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
        if !is_reference_value(key.as_str(), &text[start..end]) {
            push(out, start, end, class.plain_kind());
        }
    }
    for c in rules.env_json.captures_iter(text) {
        let (Some(key), Some(val)) = (c.name("key"), first_group(&c, &["val", "num"])) else {
            continue;
        };
        if is_reference_value(key.as_str(), val.as_str()) {
            continue;
        }
        if let Some(class) = classify_key(key.as_str()) {
            push(out, val.start(), val.end(), class.json_kind());
        }
    }
}

fn url_kind(scheme: &str) -> SecretKind {
    let base = scheme
        .split('+')
        .next()
        .unwrap_or(scheme)
        .to_ascii_lowercase();
    match base.as_str() {
        "postgres" | "postgresql" | "pgsql" => SecretKind::PostgresUrl,
        "mysql" | "mysqlx" | "mariadb" => SecretKind::MysqlUrl,
        "mongodb" => SecretKind::MongodbUrl,
        "redis" | "rediss" => SecretKind::RedisUrl,
        _ => SecretKind::PasswordUrl,
    }
}

fn is_b64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// Base64 (standard alphabet, padded) that plausibly encodes a secret.
fn is_secret_base64(v: &str, secret_kind_known: bool) -> bool {
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

/// `key: value` at the start of `content` (a YAML line without indentation).
/// Returns the value span relative to `content` and whether it is a block scalar.
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

fn mentions_secret_kind(text: &str) -> bool {
    text.contains("kind: Secret")
        || text.contains("\"kind\":\"Secret\"")
        || text.contains("\"kind\": \"Secret\"")
}

/// Kubernetes Secret `data:` / `binaryData:` / `stringData:` blocks in YAML.
fn collect_k8s_yaml(text: &str, out: &mut Vec<Cand>) {
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
                        DataBlock::Plain => !value.is_empty(),
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
fn collect_k8s_json(rules: &Rules, text: &str, out: &mut Vec<Cand>) {
    if !text.contains("\"data\"")
        && !text.contains("\"binaryData\"")
        && !text.contains("\"stringData\"")
    {
        return;
    }
    let secret_known = mentions_secret_kind(text);
    for block in rules.k8s_json_block.captures_iter(text) {
        let (Some(which), Some(body)) = (block.name("which"), block.name("body")) else {
            continue;
        };
        let plain = which.as_str() == "stringData";
        for pair in rules.k8s_json_pair.captures_iter(body.as_str()) {
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

fn collect_candidates(rules: &Rules, text: &str, out: &mut Vec<Cand>) {
    for m in rules.pem_key.find_iter(text) {
        push(out, m.start(), m.end(), SecretKind::PemPrivateKey);
    }
    for m in rules.pem_cert.find_iter(text) {
        push(out, m.start(), m.end(), SecretKind::PemCertificate);
    }
    for c in rules.url.captures_iter(text) {
        if let (Some(scheme), Some(pass)) = (c.name("scheme"), c.name("pass")) {
            push(out, pass.start(), pass.end(), url_kind(scheme.as_str()));
        }
    }
    for c in rules.auth.captures_iter(text) {
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
    collect_keyed_json(&rules.json_dq, text, out);
    collect_keyed_json(&rules.json_esc, text, out);
    collect_keyed_json(&rules.json_sq, text, out);
    collect_kv(rules, text, out);
    collect_env_pairs(rules, text, out);
    for c in rules.bearer.captures_iter(text) {
        if let Some(t) = c.name("tok").filter(|t| looks_like_credential(t.as_str())) {
            push(out, t.start(), t.end(), SecretKind::BearerToken);
        }
    }
    for m in rules.github.find_iter(text) {
        push(out, m.start(), m.end(), SecretKind::GithubToken);
    }
    for c in rules.openai.captures_iter(text) {
        let (Some(m), Some(body)) = (c.get(0), c.name("body")) else {
            continue;
        };
        let b = body.as_str();
        if b.bytes().any(|x| x.is_ascii_uppercase()) && b.bytes().any(|x| x.is_ascii_digit()) {
            push(out, m.start(), m.end(), SecretKind::OpenaiKey);
        }
    }
    for m in rules.aws_id.find_iter(text) {
        push(out, m.start(), m.end(), SecretKind::AwsAccessKeyId);
    }
    for c in rules.aws_pair.captures_iter(text) {
        if let Some(s) = c.name("s") {
            let next = text.as_bytes().get(s.end()).copied();
            if !next.is_some_and(|b| is_b64_char(b) || b == b'=') {
                push(out, s.start(), s.end(), SecretKind::AwsSecretKey);
            }
        }
    }
    for m in rules.b64_pem.find_iter(text) {
        push(out, m.start(), m.end(), SecretKind::K8sSecretData);
    }
    collect_k8s_yaml(text, out);
    collect_k8s_json(rules, text, out);
}

/// One redaction pass. `None` when nothing was redacted.
fn redact_once(rules: &Rules, text: &str, kinds: &mut Vec<SecretKind>) -> Option<String> {
    if !rules.prefilter.is_match(text) {
        return None;
    }
    let mut cands = Vec::new();
    collect_candidates(rules, text, &mut cands);
    if cands.is_empty() {
        return None;
    }
    let placeholders: Vec<(usize, usize)> = rules
        .placeholder
        .find_iter(text)
        .map(|m| (m.start(), m.end()))
        .collect();
    // placeholders are sorted and disjoint: the only one that can overlap a
    // candidate is the first one that ends after the candidate starts
    cands.retain(|c| {
        let i = placeholders.partition_point(|&(_, e)| e <= c.start);
        placeholders.get(i).is_none_or(|&(s, _)| s >= c.end)
    });
    if cands.is_empty() {
        return None;
    }
    cands.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));

    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut i = 0;
    while i < cands.len() {
        let first = cands[i];
        let (start, mut end, mut best) = (first.start, first.end, first);
        i += 1;
        while i < cands.len() && cands[i].start < end {
            let c = cands[i];
            end = end.max(c.end);
            let (cl, bl) = (c.end - c.start, best.end - best.start);
            if cl > bl || (cl == bl && c.kind.specificity() < best.kind.specificity()) {
                best = c;
            }
            i += 1;
        }
        out.push_str(&text[last..start]);
        out.push_str(&best.kind.placeholder());
        kinds.push(best.kind);
        last = end;
    }
    out.push_str(&text[last..]);
    Some(out)
}

const MAX_REDACT_PASSES: usize = 16;

/// Redacts every secret in `text`; returns the new text and one entry per
/// redaction (kind, in order found). Safe text is returned byte-for-byte
/// unchanged (`Cow::Borrowed`). The result is a fixpoint: redacting it again
/// changes nothing.
pub fn redact_secrets(text: &str) -> (Cow<'_, str>, Vec<SecretKind>) {
    let rules = &*RULES;
    let mut kinds = Vec::new();
    let Some(mut cur) = redact_once(rules, text, &mut kinds) else {
        return (Cow::Borrowed(text), kinds);
    };
    for _ in 1..MAX_REDACT_PASSES {
        match redact_once(rules, &cur, &mut kinds) {
            Some(next) => cur = next,
            None => break,
        }
    }
    (Cow::Owned(cur), kinds)
}

// ---------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------

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
    RULES.markup.is_match(s)
}

fn remove_dangerous_elements<'a>(rules: &Rules, s: &'a str) -> Cow<'a, str> {
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

fn clean_tag(rules: &Rules, tag: &str) -> Option<String> {
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

fn clean_tags<'a>(rules: &Rules, s: &'a str) -> Cow<'a, str> {
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
fn strip_once(rules: &Rules, s: &str) -> Option<String> {
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
    let rules = &*RULES;
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

// ---------------------------------------------------------------------------
// Record-level sanitization
// ---------------------------------------------------------------------------

const MAX_FREE_TEXT_PASSES: usize = 8;

/// Free text (e.g. `errorMessage`): strips dangerous HTML ([`HtmlPolicy::Strip`])
/// or refuses it ([`HtmlPolicy::Reject`] → `Err(HtmlRejected)`), then redacts
/// secrets, recording one [`Redaction`] per secret under `field`.
///
/// Stripping and redaction are alternated until neither changes anything, so
/// the result is a fixpoint of both (redaction can, in contrived text, remove
/// a `>` that hid an `on*=` handler from the tag it belongs to).
pub fn sanitize_free_text(
    field: &str,
    text: &str,
    policy: HtmlPolicy,
    redactions: &mut Vec<Redaction>,
) -> Result<String, HtmlRejected> {
    let mut cur = text.to_owned();
    let mut kinds = Vec::new();
    for _ in 0..MAX_FREE_TEXT_PASSES {
        let (stripped, removed) = strip_dangerous_html(&cur);
        if removed && policy == HtmlPolicy::Reject {
            return Err(HtmlRejected {
                field: field.to_owned(),
            });
        }
        let (redacted, found) = redact_secrets(&stripped);
        if !removed && found.is_empty() {
            break;
        }
        kinds.extend(found);
        let next = redacted.into_owned();
        cur = next;
    }
    redactions.extend(kinds.into_iter().map(|kind| Redaction {
        field: field.to_owned(),
        kind,
    }));
    Ok(cur)
}

/// `details`: walks every string leaf (objects and arrays, nested up to
/// [`MAX_JSON_DEPTH`]) and sanitizes it as free text (`field` paths like
/// `details.a.b[3]`).
///
/// Object keys are sanitized as free text too (a key that contains a secret
/// is redacted; two keys that become equal are kept apart by a ` (2)`, ` (3)`
/// … suffix). When a (sanitized) key *names* a secret (see the module docs:
/// `password`, `db_password`, `client_secret`, `access_token`, `x-api-key`,
/// `private_key`, `credentials`, `authorization`, `aws_secret_access_key`, …)
/// and its value is a non-empty string or a number, the whole value becomes
/// `[REDACTED:<kind>]` (`password_json`, `token_json`, `secret_json`,
/// `api_key_json`, `aws_secret_key`, `pem_private_key`,
/// `authorization_header`); a value that already is a placeholder is kept. The
/// same applies to the `value` of a Kubernetes-style `{"name": "DB_PASSWORD",
/// "value": "…"}` object, and to every string or number in a list under such a
/// key (`{"password": ["a", "b"]}`). The values of a Secret-like object's
/// `data`/`binaryData` map (base64, as in JSON text) and `stringData` map (all
/// non-empty values) become `[REDACTED:k8s_secret_data]`.
pub fn sanitize_json(
    field: &str,
    value: &Value,
    policy: HtmlPolicy,
    redactions: &mut Vec<Redaction>,
) -> Result<Value, HtmlRejected> {
    walk(field, value, policy, redactions, 0)
}

fn redact_named_value(
    path: &str,
    key: &str,
    class: KeyClass,
    value: &Value,
    redactions: &mut Vec<Redaction>,
) -> Option<Value> {
    let secret = match value {
        Value::String(s) => !s.is_empty() && !is_placeholder(s) && !is_reference_value(key, s),
        Value::Number(_) => true,
        _ => false,
    };
    if !secret {
        return None;
    }
    let kind = class.json_kind();
    redactions.push(Redaction {
        field: path.to_owned(),
        kind,
    });
    Some(Value::String(kind.placeholder()))
}

/// A list under a secret key (`{"password": ["a", "b"]}`, `{"pin_password": [1234]}`): every string or number in
/// it, at any array depth, is redacted like a single value would be. Other elements (objects) are left to the
/// generic walk. Returns `None` when nothing was redacted.
fn redact_named_array(
    path: &str,
    key: &str,
    class: KeyClass,
    value: &Value,
    redactions: &mut Vec<Redaction>,
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
            Value::Array(_) => {
                redact_named_array(&item_path, key, class, item, redactions, depth + 1)
            }
            _ => redact_named_value(&item_path, key, class, item, redactions),
        };
        changed |= new.is_some();
        out.push(new.unwrap_or_else(|| item.clone()));
    }
    changed.then_some(Value::Array(out))
}

/// The structured twin of [`collect_k8s_json`]: a Kubernetes Secret's `data`/`binaryData` map (base64 values) or
/// `stringData` map (every non-empty value) inside `details`, whose values carry no secret-looking key of their own
/// (`{"kind": "Secret", "data": {"username": "YWRtaW4="}}`). Returns the map with those values replaced, or `None`
/// when nothing was redacted.
fn redact_k8s_data_map(
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
            !s.is_empty()
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

fn walk(
    path: &str,
    value: &Value,
    policy: HtmlPolicy,
    redactions: &mut Vec<Redaction>,
    depth: usize,
) -> Result<Value, HtmlRejected> {
    if depth > MAX_JSON_DEPTH {
        return Ok(Value::String(DEPTH_EXCEEDED.to_owned()));
    }
    match value {
        Value::String(s) => Ok(Value::String(sanitize_free_text(
            path, s, policy, redactions,
        )?)),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(walk(
                    &format!("{path}[{i}]"),
                    item,
                    policy,
                    redactions,
                    depth + 1,
                )?);
            }
            Ok(Value::Array(out))
        }
        Value::Object(map) => {
            // Kubernetes env var style: {"name": "DB_PASSWORD", "value": "…"}
            let pair = map
                .get("name")
                .and_then(Value::as_str)
                .and_then(|name| classify_key(name).map(|class| (name, class)));
            let secret_kind = map.get("kind").and_then(Value::as_str) == Some("Secret");
            let mut out = Map::new();
            for (key, child) in map {
                let mut key_redactions = Vec::new();
                let new_key = match sanitize_free_text("", key, policy, &mut key_redactions) {
                    Ok(k) => k,
                    Err(_) => {
                        let (safe, _) = redact_secrets(key);
                        return Err(HtmlRejected {
                            field: format!("{path}.{safe}"),
                        });
                    }
                };
                let mut unique = new_key.clone();
                let mut n = 2;
                while out.contains_key(&unique) {
                    unique = format!("{new_key} ({n})");
                    n += 1;
                }
                let child_path = format!("{path}.{unique}");
                redactions.extend(key_redactions.into_iter().map(|r| Redaction {
                    field: child_path.clone(),
                    kind: r.kind,
                }));
                let named = match classify_key(&new_key) {
                    Some(class) => Some((new_key.as_str(), class)),
                    None if key == "value" => pair,
                    None => None,
                };
                let new_child = match named.and_then(|(name, class)| {
                    redact_named_value(&child_path, name, class, child, redactions)
                }) {
                    Some(v) => v,
                    None => {
                        let data = match named {
                            Some((name, class)) => redact_named_array(
                                &child_path,
                                name,
                                class,
                                child,
                                redactions,
                                depth + 1,
                            ),
                            None => redact_k8s_data_map(
                                &child_path,
                                &new_key,
                                child,
                                secret_kind,
                                redactions,
                            ),
                        };
                        walk(
                            &child_path,
                            data.as_ref().unwrap_or(child),
                            policy,
                            redactions,
                            depth + 1,
                        )?
                    }
                };
                out.insert(unique, new_child);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn red(text: &str) -> (String, Vec<&'static str>) {
        let (out, kinds) = redact_secrets(text);
        (out.into_owned(), kinds.iter().map(|k| k.as_str()).collect())
    }

    fn free(text: &str) -> (String, Vec<Redaction>) {
        let mut r = Vec::new();
        let out = sanitize_free_text("errorMessage", text, HtmlPolicy::Strip, &mut r)
            .unwrap_or_else(|e| panic!("unexpected rejection: {e}"));
        (out, r)
    }

    fn details(v: &Value) -> (Value, Vec<Redaction>) {
        let mut r = Vec::new();
        let out = sanitize_json("details", v, HtmlPolicy::Strip, &mut r)
            .unwrap_or_else(|e| panic!("unexpected rejection: {e}"));
        (out, r)
    }

    fn assert_idempotent(text: &str) {
        let (once, _) = redact_secrets(text);
        let (twice, kinds) = redact_secrets(&once);
        assert_eq!(once, twice, "redact not idempotent for {text:?}");
        assert!(kinds.is_empty(), "second pass found {kinds:?} in {once:?}");
        let (s1, _) = strip_dangerous_html(text);
        let (s2, changed) = strip_dangerous_html(&s1);
        assert_eq!(s1, s2, "strip not idempotent for {text:?}");
        assert!(!changed);
        let (f1, _) = free(text);
        let (f2, r2) = free(&f1);
        assert_eq!(f1, f2, "sanitize_free_text not idempotent for {text:?}");
        assert!(r2.is_empty());
    }

    // -- patterns & kinds ----------------------------------------------------

    #[test]
    fn all_patterns_compile() {
        // Forces the single LazyLock holding every regex; a bad pattern panics here.
        let r = &*RULES;
        for re in [
            &r.prefilter,
            &r.placeholder,
            &r.pem_key,
            &r.pem_cert,
            &r.url,
            &r.auth,
            &r.json_dq,
            &r.json_esc,
            &r.json_sq,
            &r.kv,
            &r.env_yaml,
            &r.env_json,
            &r.bearer,
            &r.github,
            &r.openai,
            &r.aws_id,
            &r.aws_pair,
            &r.b64_pem,
            &r.k8s_json_block,
            &r.k8s_json_pair,
            &r.danger_open,
            &r.danger_close,
            &r.tag,
            &r.handler,
            &r.js_in_tag,
            &r.js_text,
            &r.markup,
        ] {
            let _ = re.is_match("x");
        }
    }

    #[test]
    fn kind_names_are_stable() {
        let names: Vec<&str> = SecretKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "password_json",
                "password_kv",
                "password_url",
                "api_key_json",
                "api_key",
                "openai_key",
                "bearer_token",
                "github_token",
                "token_json",
                "token",
                "secret_json",
                "secret",
                "authorization_header",
                "aws_access_key_id",
                "aws_secret_key",
                "postgres_url",
                "mysql_url",
                "mongodb_url",
                "redis_url",
                "pem_certificate",
                "pem_private_key",
                "k8s_secret_data",
            ]
        );
        let mut sorted = SecretKind::ALL.to_vec();
        sorted.sort();
        assert_eq!(
            sorted,
            SecretKind::ALL.to_vec(),
            "ALL is in declaration order"
        );
        for k in SecretKind::ALL {
            assert!(is_placeholder(&k.placeholder()));
            assert_eq!(k.to_string(), k.as_str());
            // a bare placeholder is never touched
            assert_idempotent(&k.placeholder());
            assert!(matches!(
                redact_secrets(&k.placeholder()).0,
                Cow::Borrowed(_)
            ));
        }
        assert!(!is_placeholder("[REDACTED:nope]"));
        assert_eq!(HtmlPolicy::default(), HtmlPolicy::Strip);
    }

    // -- safe text ------------------------------------------------------------

    const SAFE: &[&str] = &[
        "Back-off restarting failed container api in pod payments/api-7d9f8b-xk2lq",
        "my-app-delete-jobs",
        "error: pq: syntax error at or near \"DROP TABLE users; --\"",
        "SELECT * FROM pods WHERE name = 'x' OR 1=1",
        "OOMKilled: memory limit 512Mi exceeded (usage 530Mi)",
        "0/3 nodes are available: 3 Insufficient cpu.",
        "配置错误: 无法连接数据库",
        "ошибка: не удалось перезапустить под",
        "deployment scaled 🚀✅ to 3 replicas",
        "שגיאה בהפעלה מחדש של הפוד",
        "خطأ في إعادة تشغيل الحاوية",
        "image ghcr.io/acme/api@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "annotation checksum/config: 3f786850e387550fdab836ed7e6dc881de23001b",
        "checksum/config=YWJjZGVmZ2hpams=",
        "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7",
        "token bucket rate limit exceeded",
        "the password policy requires 12 characters",
        "secret \"db-creds\" not found",
        "failed to mount secret volume \"creds\": secret not found",
        "MountVolume.SetUp failed for volume \"db-creds\" : secret \"db-creds\" not found",
        "https://grafana.example.com/d/abc?orgId=1",
        "postgres://db.internal:5432/app",
        "connecting to redis://redis-master.cache.svc:6379/0",
        "contact user@example.com for access",
        "git@github.com:org/repo.git",
        "if a<b and c>d then",
        "x => y",
        "NAME   READY   STATUS    RESTARTS   AGE\napi    0/1     Pending   0          5s\nNOMINATED NODE: <none>",
        "Authorization failed for user bob",
        "authorization: denied",
        "apiVersion: v1",
        "2024-05-01T12:30:45.123Z level=error msg=\"probe failed\" pod=api-0",
        "dial tcp 10.96.0.12:5432: connect: connection refused",
        "goroutine 1 [running]:\nmain.main()\n\t/app/main.go:42 +0x1d\nexit status 2",
        "failed to refresh token: oauth2: cannot fetch token: 401 Unauthorized",
        "bearer token expired",
        "invalid bearer token",
        "tokens: 5, max_tokens=1000",
        "secretName: db-creds",
        "passwordPolicy=strict",
        "password authentication failed for user \"app\"",
        "error getting credentials: exec: executable aws failed with exit code 255",
        "kubectl get pods -o jsonpath='{.items[*].metadata.name}'",
        "sk-learn-pipeline-worker-deployment-7f9c",
        "risk-assessment-job-controller-manager",
        "the AKIA prefix identifies access keys",
        "data:\n  LOG_LEVEL: debug\n  MODE: verification",
        "Readiness probe failed: Get \"http://10.1.2.3:8080/healthz\": context deadline exceeded",
        "if token == nil { return errMissingToken }",
        "{\"tokenType\": \"Bearer\", \"expires_in\": 3600}",
        "x <= y && y >= z",
        "ghp_short_token_name",
        "spec:\n  automountServiceAccountToken: false\n  enableServiceLinks: true",
        "password=*** (masked), token: <none>",
        "level=error msg=\"failed to sync secret\" secret=payments/db-creds error=\"context canceled\"",
        "Secret: db-creds (type Opaque)",
        "PWD=/home/app OLDPWD=/",
        "Events:\n  Type     Reason   Age  From     Message\n  Warning  BackOff  1m   kubelet  Back-off pulling image",
    ];

    #[test]
    fn safe_text_is_unchanged() {
        assert!(SAFE.len() >= 40);
        for s in SAFE {
            let (out, kinds) = redact_secrets(s);
            assert!(
                matches!(out, Cow::Borrowed(_)) && kinds.is_empty(),
                "redacted safe text {s:?} -> {out:?}"
            );
            let (h, changed) = strip_dangerous_html(s);
            assert!(
                !changed && matches!(h, Cow::Borrowed(_)),
                "stripped safe text {s:?} -> {h:?}"
            );
            let (f, r) = free(s);
            assert_eq!(&f, s);
            assert!(r.is_empty());
        }
    }

    // -- every kind: positives (exact output) --------------------------------

    const POSITIVE: &[(&str, &str, &[&str])] = &[
        // password_json
        (
            r#"{"password": "hunter2", "user": "bob"}"#,
            r#"{"password": "[REDACTED:password_json]", "user": "bob"}"#,
            &["password_json"],
        ),
        (
            r#"config {"db_password":"p@ss w0rd","DB_PWD": 1234}"#,
            r#"config {"db_password":"[REDACTED:password_json]","DB_PWD": [REDACTED:password_json]}"#,
            &["password_json", "password_json"],
        ),
        (
            r#"body={\"adminPassword\":\"s3cr3t\",\"x\":1}"#,
            r#"body={\"adminPassword\":\"[REDACTED:password_json]\",\"x\":1}"#,
            &["password_json"],
        ),
        (
            "{'passwd': 'abc', 'u': 'x'}",
            "{'passwd': '[REDACTED:password_json]', 'u': 'x'}",
            &["password_json"],
        ),
        // password_kv
        (
            "login failed with password: Zq9xT4mPq2 for bob",
            "login failed with password: [REDACTED:password_kv] for bob",
            &["password_kv"],
        ),
        (
            "prod api_key: ak_live_AbCdEfGhIjKlMnOpQrSt",
            "prod api_key: [REDACTED:api_key]",
            &["api_key"],
        ),
        (
            "password=hunter2 user=bob",
            "password=[REDACTED:password_kv] user=bob",
            &["password_kv"],
        ),
        (
            "PGPASSWORD=abc123 psql -h db",
            "PGPASSWORD=[REDACTED:password_kv] psql -h db",
            &["password_kv"],
        ),
        (
            "kubectl create secret generic x --from-literal=password=abc",
            "kubectl create secret generic x --from-literal=password=[REDACTED:password_kv]",
            &["password_kv"],
        ),
        (
            "mysql --password s3cret -u root",
            "mysql --password [REDACTED:password_kv] -u root",
            &["password_kv"],
        ),
        (
            "db:\n  host: db\n  password: \"hunter 2\"\n",
            "db:\n  host: db\n  password: \"[REDACTED:password_kv]\"\n",
            &["password_kv"],
        ),
        (
            "map[password:hunter2 user:bob]",
            "map[password:[REDACTED:password_kv] user:bob]",
            &["password_kv"],
        ),
        // password_url
        (
            "amqp://guest:guest@rabbitmq:5672/vhost",
            "amqp://guest:[REDACTED:password_url]@rabbitmq:5672/vhost",
            &["password_url"],
        ),
        (
            "GET https://admin:Pa55w0rd@registry.example.com/v2/ failed",
            "GET https://admin:[REDACTED:password_url]@registry.example.com/v2/ failed",
            &["password_url"],
        ),
        // api_key_json
        (
            r#"{"api_key": "abcd1234efgh", "apiKey": "zz9", "x-api-key": "k-1"}"#,
            r#"{"api_key": "[REDACTED:api_key_json]", "apiKey": "[REDACTED:api_key_json]", "x-api-key": "[REDACTED:api_key_json]"}"#,
            &["api_key_json", "api_key_json", "api_key_json"],
        ),
        (
            r#"{"api-key": "sk-abcdefghijklmnopqrstuvwxyzABC123"}"#,
            r#"{"api-key": "[REDACTED:api_key_json]"}"#,
            &["api_key_json"],
        ),
        // api_key
        (
            "GET /v1/data?api_key=AbC123xyz&limit=10",
            "GET /v1/data?api_key=[REDACTED:api_key]&limit=10",
            &["api_key"],
        ),
        (
            "X-API-Key: 0123456789abcdef",
            "X-API-Key: [REDACTED:api_key]",
            &["api_key"],
        ),
        // openai_key
        (
            "using key sk-abcdefghijklmnopqrstuvwxyzABC123 for completion",
            "using key [REDACTED:openai_key] for completion",
            &["openai_key"],
        ),
        (
            "OPENAI=sk-proj-Ab3dEfGhIjKlMnOpQrStUvWx_yz-0123456789",
            "OPENAI=[REDACTED:openai_key]",
            &["openai_key"],
        ),
        // bearer_token
        (
            r#"curl -H "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig" https://api"#,
            r#"curl -H "Bearer [REDACTED:bearer_token]" https://api"#,
            &["bearer_token"],
        ),
        (
            "retrying with bearer abc123def456",
            "retrying with bearer [REDACTED:bearer_token]",
            &["bearer_token"],
        ),
        // github_token
        (
            "git clone https://ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ@github.com/o/r",
            "git clone https://[REDACTED:github_token]@github.com/o/r",
            &["github_token"],
        ),
        (
            "GH=github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz ok",
            "GH=[REDACTED:github_token] ok",
            &["github_token"],
        ),
        (
            "tokens ghs_abcdefghijklmnopqrstuvwxyz0123456789 gho_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
            "tokens [REDACTED:github_token] [REDACTED:github_token]",
            &["github_token", "github_token"],
        ),
        // token_json
        (
            r#"{"access_token": "ya29.a0AfH6SM", "token_type": "Bearer", "refresh_token": "1//0g"}"#,
            r#"{"access_token": "[REDACTED:token_json]", "token_type": "Bearer", "refresh_token": "[REDACTED:token_json]"}"#,
            &["token_json", "token_json"],
        ),
        (
            r#"{"id_token":"eyJ.x.y","auth_token":"t0k"}"#,
            r#"{"id_token":"[REDACTED:token_json]","auth_token":"[REDACTED:token_json]"}"#,
            &["token_json", "token_json"],
        ),
        // token
        (
            "callback?code=x&access_token=zzz9&state=1",
            "callback?code=x&access_token=[REDACTED:token]&state=1",
            &["token"],
        ),
        (
            "token: abc123\nuser: bob",
            "token: [REDACTED:token]\nuser: bob",
            &["token"],
        ),
        (
            "TOKEN=ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
            "TOKEN=[REDACTED:token]",
            &["token"],
        ),
        // secret_json
        (
            r#"{"client_secret": "s3cr3t", "secret_key": "k", "secretName": "db"}"#,
            r#"{"client_secret": "[REDACTED:secret_json]", "secret_key": "[REDACTED:secret_json]", "secretName": "db"}"#,
            &["secret_json", "secret_json"],
        ),
        (
            r#"{"secret":"x","credentials":"user:pw"}"#,
            r#"{"secret":"[REDACTED:secret_json]","credentials":"[REDACTED:secret_json]"}"#,
            &["secret_json", "secret_json"],
        ),
        // secret
        (
            "client_secret=abc secret=def",
            "client_secret=[REDACTED:secret] secret=[REDACTED:secret]",
            &["secret", "secret"],
        ),
        (
            "env WEBHOOK_SECRET='x y z' started",
            "env WEBHOOK_SECRET='[REDACTED:secret]' started",
            &["secret"],
        ),
        // authorization_header
        (
            "Authorization: Bearer abc.def",
            "Authorization: [REDACTED:authorization_header]",
            &["authorization_header"],
        ),
        (
            "request headers: map[Authorization:[Basic dXNlcjpwYXNz] Accept:[*/*]]",
            "request headers: map[Authorization:[[REDACTED:authorization_header]] Accept:[*/*]]",
            &["authorization_header"],
        ),
        (
            "proxy-authorization: Digest username=\"bob\", response=\"6629fae4\"\nnext",
            "proxy-authorization: [REDACTED:authorization_header]\nnext",
            &["authorization_header"],
        ),
        (
            r#"{"Authorization": "token ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"}"#,
            r#"{"Authorization": "[REDACTED:authorization_header]"}"#,
            &["authorization_header"],
        ),
        // aws_access_key_id
        (
            "using AKIAIOSFODNN7EXAMPLE in us-east-1",
            "using [REDACTED:aws_access_key_id] in us-east-1",
            &["aws_access_key_id"],
        ),
        (
            "Credential=ASIAY34FZKBOKMUTVV7A/20240501/us-east-1/s3/aws4_request",
            "Credential=[REDACTED:aws_access_key_id]/20240501/us-east-1/s3/aws4_request",
            &["aws_access_key_id"],
        ),
        // aws_secret_key
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_secret_access_key = [REDACTED:aws_secret_key]",
            &["aws_secret_key"],
        ),
        (
            "AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "[REDACTED:aws_access_key_id]:[REDACTED:aws_secret_key]",
            &["aws_access_key_id", "aws_secret_key"],
        ),
        (
            r#"{"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#,
            r#"{"AWS_SECRET_ACCESS_KEY": "[REDACTED:aws_secret_key]"}"#,
            &["aws_secret_key"],
        ),
        // postgres_url
        (
            "postgres://app:s3cr3t@db:5432/x",
            "postgres://app:[REDACTED:postgres_url]@db:5432/x",
            &["postgres_url"],
        ),
        (
            "dsn=postgresql+psycopg2://svc:p@ss@pg.internal/app?sslmode=require",
            "dsn=postgresql+psycopg2://svc:[REDACTED:postgres_url]@pg.internal/app?sslmode=require",
            &["postgres_url"],
        ),
        // mysql_url
        (
            "mysql://root:pw@mysql:3306/db",
            "mysql://root:[REDACTED:mysql_url]@mysql:3306/db",
            &["mysql_url"],
        ),
        (
            "jdbc:mysql://app:Secr3t!@10.0.0.5:3306/orders",
            "jdbc:mysql://app:[REDACTED:mysql_url]@10.0.0.5:3306/orders",
            &["mysql_url"],
        ),
        // mongodb_url
        (
            "mongodb+srv://u:p4ss@cluster0.x.net/db",
            "mongodb+srv://u:[REDACTED:mongodb_url]@cluster0.x.net/db",
            &["mongodb_url"],
        ),
        (
            "MONGO_URL=mongodb://admin:hunter2@mongo-0,mongo-1/admin",
            "MONGO_URL=mongodb://admin:[REDACTED:mongodb_url]@mongo-0,mongo-1/admin",
            &["mongodb_url"],
        ),
        // redis_url
        (
            "redis://:redispass@redis:6379/0",
            "redis://:[REDACTED:redis_url]@redis:6379/0",
            &["redis_url"],
        ),
        (
            "rediss://default:tls-pass@cache.example.com:6380",
            "rediss://default:[REDACTED:redis_url]@cache.example.com:6380",
            &["redis_url"],
        ),
        // pem_certificate
        (
            "ca:\n-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\nQk1+/abc=\n-----END CERTIFICATE-----\ndone",
            "ca:\n[REDACTED:pem_certificate]\ndone",
            &["pem_certificate"],
        ),
        (
            "chain -----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE----- -----BEGIN CERTIFICATE-----\\nMIIC\\n-----END CERTIFICATE-----",
            "chain [REDACTED:pem_certificate] [REDACTED:pem_certificate]",
            &["pem_certificate", "pem_certificate"],
        ),
        // pem_private_key
        (
            "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\nafter",
            "key:\n[REDACTED:pem_private_key]\nafter",
            &["pem_private_key"],
        ),
        (
            "truncated -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\npassword=x",
            "truncated [REDACTED:pem_private_key]",
            &["pem_private_key"],
        ),
        (
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIF\n-----END ENCRYPTED PRIVATE KEY-----",
            "[REDACTED:pem_private_key]",
            &["pem_private_key"],
        ),
        // k8s_secret_data
        (
            "apiVersion: v1\nkind: Secret\ndata:\n  password: cGFzc3dvcmQxMjM=\n  tls.key: LS0tLS1CRUdJTiBSU0E=\nmetadata:\n  name: x",
            "apiVersion: v1\nkind: Secret\ndata:\n  password: [REDACTED:k8s_secret_data]\n  tls.key: [REDACTED:k8s_secret_data]\nmetadata:\n  name: x",
            &["k8s_secret_data", "k8s_secret_data"],
        ),
        (
            "data:\n  config.json: eyJhdXRocyI6e319\nstringData:\n  note: plain text secret\n  cert: |\n    line one\n    line two\ntype: Opaque",
            "data:\n  config.json: [REDACTED:k8s_secret_data]\nstringData:\n  note: [REDACTED:k8s_secret_data]\n  cert: |\n    [REDACTED:k8s_secret_data]\ntype: Opaque",
            &["k8s_secret_data", "k8s_secret_data", "k8s_secret_data"],
        ),
        (
            r#"{"kind":"Secret","data":{"username":"YWRtaW4=","ca.crt":"LS0tLS1CRUdJTiBDRVJU"}}"#,
            r#"{"kind":"Secret","data":{"username":"[REDACTED:k8s_secret_data]","ca.crt":"[REDACTED:k8s_secret_data]"}}"#,
            &["k8s_secret_data", "k8s_secret_data"],
        ),
        (
            "caBundle: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t",
            "caBundle: [REDACTED:k8s_secret_data]",
            &["k8s_secret_data"],
        ),
        // env-var style pairs
        (
            "env:\n- name: DB_PASSWORD\n  value: hunter2 two\n- name: MODE\n  value: prod",
            "env:\n- name: DB_PASSWORD\n  value: [REDACTED:password_kv]\n- name: MODE\n  value: prod",
            &["password_kv"],
        ),
        (
            r#"[{"name":"API_TOKEN","value":"abc"},{"name":"X","value":"y"}]"#,
            r#"[{"name":"API_TOKEN","value":"[REDACTED:token_json]"},{"name":"X","value":"y"}]"#,
            &["token_json"],
        ),
        // several kinds together, order of appearance
        (
            "login password=pw1 to postgres://a:b@h/d with Authorization: Bearer xyz.123",
            "login password=[REDACTED:password_kv] to postgres://a:[REDACTED:postgres_url]@h/d with Authorization: [REDACTED:authorization_header]",
            &["password_kv", "postgres_url", "authorization_header"],
        ),
        // outermost candidate names the kind
        (
            "password=postgres://u:p@h/db",
            "password=[REDACTED:password_kv]",
            &["password_kv"],
        ),
    ];

    #[test]
    fn every_kind_positive_exact() {
        let mut seen = std::collections::BTreeMap::<&str, usize>::new();
        for (input, expected, kinds) in POSITIVE {
            let (out, got) = red(input);
            assert_eq!(&out, expected, "input {input:?}");
            assert_eq!(&got, kinds, "kinds for {input:?}");
            for k in got {
                *seen.entry(k).or_default() += 1;
            }
            assert_idempotent(input);
            // the same text as a nested `details` leaf
            let (d, r) = details(&json!({"ctx": {"lines": ["ok", input]}}));
            assert_eq!(
                d,
                json!({"ctx": {"lines": ["ok", expected]}}),
                "details for {input:?}"
            );
            assert_eq!(r.len(), kinds.len());
            assert!(r.iter().all(|x| x.field == "details.ctx.lines[1]"));
        }
        for k in SecretKind::ALL {
            assert!(
                seen.get(k.as_str()).copied().unwrap_or(0) >= 2,
                "kind {k} has fewer than 2 positive cases"
            );
        }
    }

    const NEGATIVE: &[(SecretKind, &str)] = &[
        (
            SecretKind::PasswordJson,
            r#"{"passwordPolicy": "strict", "password": ""}"#,
        ),
        (
            SecretKind::PasswordJson,
            r#"{"password_hint": "your pet", "require_password": true}"#,
        ),
        (
            SecretKind::PasswordKv,
            "the password policy requires 12 characters",
        ),
        (SecretKind::PasswordKv, "invalid password: too short"),
        (SecretKind::PasswordKv, "PASSWORD_FILE=/run/secrets/db"),
        (
            SecretKind::PasswordUrl,
            "https://grafana.example.com/d/abc?orgId=1",
        ),
        (SecretKind::PasswordUrl, "http://host:8080?next=a@b.com"),
        (
            SecretKind::ApiKeyJson,
            r#"{"api_key_id": "k-123", "apiKeyName": "ci"}"#,
        ),
        (SecretKind::ApiKey, "api key rotation completed"),
        (
            SecretKind::OpenaiKey,
            "sk-learn-pipeline-worker-deployment-xyz",
        ),
        (
            SecretKind::OpenaiKey,
            "task-abcdefghijklmnopqrstuvwxyz0123AB",
        ),
        (SecretKind::OpenaiKey, "sk-Short1"),
        (SecretKind::BearerToken, "bearer token expired"),
        (SecretKind::BearerToken, "Bearer realm"),
        (SecretKind::GithubToken, "ghp_tooshort123"),
        (
            SecretKind::GithubToken,
            "xghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
        ),
        (
            SecretKind::TokenJson,
            r#"{"tokenType": "Bearer", "max_tokens": 100}"#,
        ),
        (SecretKind::Token, "token bucket rate limit exceeded"),
        (SecretKind::Token, "if token == \"\" { return }"),
        (
            SecretKind::SecretJson,
            r#"{"secretName": "db-creds", "secretRef": "x"}"#,
        ),
        (SecretKind::Secret, "secret \"db-creds\" not found"),
        (SecretKind::Secret, "secretName: db-creds"),
        (SecretKind::SecretJson, r#"{"secret": "payments/db-creds"}"#),
        (
            SecretKind::AuthorizationHeader,
            "Authorization failed for user bob",
        ),
        (
            SecretKind::AuthorizationHeader,
            "authorization: permission denied",
        ),
        (
            SecretKind::AuthorizationHeader,
            "Authorization: token expired",
        ),
        (
            SecretKind::AwsAccessKeyId,
            "AKIAIOSFODNN7EXAMPL is 19 chars",
        ),
        (SecretKind::AwsAccessKeyId, "XAKIAIOSFODNN7EXAMPLE"),
        (SecretKind::AwsSecretKey, "aws_region=us-east-1"),
        (
            SecretKind::AwsSecretKey,
            "AKIA rotation: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        (SecretKind::PostgresUrl, "postgres://db.internal:5432/app"),
        (SecretKind::PostgresUrl, "postgresql://app@db/x"),
        (SecretKind::MysqlUrl, "mysql://mysql.db.svc:3306/orders"),
        (
            SecretKind::MongodbUrl,
            "mongodb://mongo-0.mongo:27017/?replicaSet=rs0",
        ),
        (SecretKind::RedisUrl, "redis://redis-master:6379/0"),
        (
            SecretKind::PemCertificate,
            "-----BEGIN CERTIFICATE REQUEST----- is a CSR header",
        ),
        (
            SecretKind::PemCertificate,
            "-----BEGIN CERTIFICATE-----\nMIIB truncated",
        ),
        (
            SecretKind::PemPrivateKey,
            "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        ),
        (
            SecretKind::PemPrivateKey,
            "BEGIN RSA PRIVATE KEY is the header",
        ),
        (
            SecretKind::K8sSecretData,
            "data:\n  LOG_LEVEL: debug\n  MODE: verification",
        ),
        (
            SecretKind::K8sSecretData,
            "metadata:\n  name: db-creds\n  password: [REDACTED:password_kv]",
        ),
    ];

    #[test]
    fn every_kind_negative() {
        for k in SecretKind::ALL {
            assert!(
                NEGATIVE.iter().any(|(nk, _)| *nk == k),
                "no negative for {k}"
            );
        }
        for (kind, input) in NEGATIVE {
            let (out, got) = red(input);
            assert!(
                !got.contains(&kind.as_str()),
                "{kind} wrongly found in {input:?} -> {out:?}"
            );
            assert_idempotent(input);
        }
        // the strongest negatives: nothing at all is changed
        for input in [
            "the password policy requires 12 characters",
            "bearer token expired",
            "postgres://db.internal:5432/app",
            "sk-learn-pipeline-worker-deployment-xyz",
            "Authorization failed for user bob",
        ] {
            assert!(matches!(redact_secrets(input).0, Cow::Borrowed(_)));
        }
    }

    #[test]
    fn redaction_keeps_surrounding_bytes() {
        let input = "a\tpassword = \"x y\" ,\r\n  'token': 'z'\n";
        let (out, _) = red(input);
        assert_eq!(
            out,
            "a\tpassword = \"[REDACTED:password_kv]\" ,\r\n  'token': '[REDACTED:token_json]'\n"
        );
        // placeholders already present are kept as they are
        for s in [
            "password=[REDACTED:password_kv] user=bob",
            "postgres://app:[REDACTED:postgres_url]@db:5432/x",
            "Authorization: [REDACTED:authorization_header]",
            r#"{"password": "[REDACTED:password_json]"}"#,
            "data:\n  password: [REDACTED:k8s_secret_data]",
            "map[password:[REDACTED:password_kv]]",
        ] {
            assert!(matches!(redact_secrets(s).0, Cow::Borrowed(_)), "{s:?}");
        }
    }

    // -- free text ----------------------------------------------------------

    #[test]
    fn free_text_records_redactions() {
        let mut r = Vec::new();
        let out = sanitize_free_text(
            "errorMessage",
            "<script>x</script>connect postgres://a:b@h/d failed, token=abc",
            HtmlPolicy::Strip,
            &mut r,
        );
        assert_eq!(
            out,
            Ok(
                "connect postgres://a:[REDACTED:postgres_url]@h/d failed, token=[REDACTED:token]"
                    .to_owned()
            )
        );
        assert_eq!(
            r,
            vec![
                Redaction {
                    field: "errorMessage".into(),
                    kind: SecretKind::PostgresUrl
                },
                Redaction {
                    field: "errorMessage".into(),
                    kind: SecretKind::Token
                },
            ]
        );
    }

    #[test]
    fn free_text_reject_policy() {
        let mut r = Vec::new();
        let err = sanitize_free_text(
            "errorMessage",
            "x<script>alert(1)</script> password=a",
            HtmlPolicy::Reject,
            &mut r,
        );
        assert_eq!(
            err,
            Err(HtmlRejected {
                field: "errorMessage".into()
            })
        );
        assert!(r.is_empty(), "nothing recorded on rejection");
        // harmless markup and safe text are accepted under Reject
        let ok = sanitize_free_text(
            "errorMessage",
            "<b>bold</b> if a<b and c>d password=a",
            HtmlPolicy::Reject,
            &mut r,
        );
        assert_eq!(
            ok,
            Ok("<b>bold</b> if a<b and c>d password=[REDACTED:password_kv]".to_owned())
        );
    }

    #[test]
    fn free_text_strip_and_redact_interplay() {
        // the `>` inside the secret hides the handler from its tag until the
        // secret is redacted; the fixpoint loop removes it afterwards
        let input = r#"<img "password": "a>b" onerror=alert(1)>"#;
        let (out, r) = free(input);
        assert!(!out.contains("onerror"), "{out}");
        assert!(!out.contains("a>b"), "{out}");
        assert_eq!(r.len(), 1);
        let mut rr = Vec::new();
        assert!(sanitize_free_text("f", input, HtmlPolicy::Reject, &mut rr).is_err());
        // stripping can join a secret back together; it is redacted afterwards
        let (out, _) = free("pass<script>x</script>word=hunter2");
        assert_eq!(out, "password=[REDACTED:password_kv]");
    }

    // -- details JSON ----------------------------------------------------------

    #[test]
    fn details_redacts_leaves_keys_and_named_values() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\nhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
        let input = json!({
            "error": "dial postgres://app:s3cr3t@db:5432/x: timeout",
            "password": "hunter2",
            "DB_PASSWORD": 12345,
            "client-secret": "",
            "apiKey": "[REDACTED:api_key_json]",
            "authorization": "Basic dXNlcjpwYXNz",
            "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "private_key": pem,
            "tls.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "credentials": {"username": "bob", "token": "abc"},
            "secretName": "db-creds",
            "require_password": true,
            "env": [
                {"name": "MODE", "value": "prod"},
                {"name": "LOG", "value": "debug"},
                {"name": "DB_PASSWORD", "value": "hunter2"}
            ],
            "nested": [[["ok", "Authorization: Bearer abc.def"]]],
            "token=abc123": "key with a secret",
            "notes": "my-app-delete-jobs",
        });
        let (out, r) = details(&input);
        assert_eq!(
            out,
            json!({
                "error": "dial postgres://app:[REDACTED:postgres_url]@db:5432/x: timeout",
                "password": "[REDACTED:password_json]",
                "DB_PASSWORD": "[REDACTED:password_json]",
                "client-secret": "",
                "apiKey": "[REDACTED:api_key_json]",
                "authorization": "[REDACTED:authorization_header]",
                "aws_secret_access_key": "[REDACTED:aws_secret_key]",
                "private_key": "[REDACTED:pem_private_key]",
                "tls.crt": "[REDACTED:pem_certificate]",
                "credentials": {"username": "bob", "token": "[REDACTED:token_json]"},
                "secretName": "db-creds",
                "require_password": true,
                "env": [
                    {"name": "MODE", "value": "prod"},
                    {"name": "LOG", "value": "debug"},
                    {"name": "DB_PASSWORD", "value": "[REDACTED:password_json]"}
                ],
                "nested": [[["ok", "Authorization: [REDACTED:authorization_header]"]]],
                "token=[REDACTED:token]": "key with a secret",
                "notes": "my-app-delete-jobs",
            })
        );
        let mut fields: Vec<(String, &str)> = r
            .iter()
            .map(|x| (x.field.clone(), x.kind.as_str()))
            .collect();
        fields.sort();
        let mut expected = vec![
            ("details.error".to_owned(), "postgres_url"),
            ("details.password".to_owned(), "password_json"),
            ("details.DB_PASSWORD".to_owned(), "password_json"),
            ("details.authorization".to_owned(), "authorization_header"),
            ("details.aws_secret_access_key".to_owned(), "aws_secret_key"),
            ("details.private_key".to_owned(), "pem_private_key"),
            ("details.tls.crt".to_owned(), "pem_certificate"),
            ("details.credentials.token".to_owned(), "token_json"),
            ("details.env[2].value".to_owned(), "password_json"),
            ("details.nested[0][0][1]".to_owned(), "authorization_header"),
            ("details.token=[REDACTED:token]".to_owned(), "token"),
        ];
        expected.sort();
        assert_eq!(fields, expected);
        // no field path leaks a secret
        assert!(r.iter().all(|x| !x.field.contains("abc123")));
        // idempotent
        let (again, r2) = details(&out);
        assert_eq!(again, out);
        assert!(r2.is_empty(), "{r2:?}");
    }

    #[test]
    fn details_multiline_pem_in_string_and_arrays() {
        let input = json!({
            "logs": [
                "line 1",
                ["deeper", {"blob": "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI\nAwEHoUQDQgAE\n-----END EC PRIVATE KEY-----"}],
                "sk-abcdefghijklmnopqrstuvwxyzABC123"
            ]
        });
        let (out, r) = details(&input);
        assert_eq!(
            out,
            json!({"logs": ["line 1", ["deeper", {"blob": "[REDACTED:pem_private_key]"}], "[REDACTED:openai_key]"]})
        );
        assert_eq!(
            r,
            vec![
                Redaction {
                    field: "details.logs[1][1].blob".into(),
                    kind: SecretKind::PemPrivateKey
                },
                Redaction {
                    field: "details.logs[2]".into(),
                    kind: SecretKind::OpenaiKey
                },
            ]
        );
    }

    #[test]
    fn details_lists_under_secret_keys() {
        // Found by the bad-input corpus: a list under a secret key was only scanned as free text.
        let input = json!({
            "password": ["hunter2", ["nested"], {"note": "password=x"}, true, ""],
            "pin_password": [1234],
            "secret": ["payments/db-creds"],
            "names": ["hunter2"]
        });
        let (out, r) = details(&input);
        assert_eq!(
            out,
            json!({
                "password": ["[REDACTED:password_json]", ["[REDACTED:password_json]"],
                             {"note": "password=[REDACTED:password_kv]"}, true, ""],
                "pin_password": ["[REDACTED:password_json]"],
                "secret": ["payments/db-creds"],
                "names": ["hunter2"]
            })
        );
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].field, "details.password[0]");
        assert_eq!(details(&out), (out.clone(), vec![]));
    }

    #[test]
    fn details_kubernetes_secret_object() {
        // Found by the bad-input corpus: a structured Secret object in details kept its base64 `data` values,
        // since each leaf was only scanned on its own.
        let input = json!({
            "secret": {"kind": "Secret", "data": {"username": "YWRtaW4=", "empty": ""},
                       "stringData": {"note": "plain text"}},
            "configmap": {"kind": "ConfigMap", "data": {"mode": "prod", "blob": "cHJvZDEyMw=="}}
        });
        let (out, r) = details(&input);
        assert_eq!(
            out,
            json!({
                "secret": {"kind": "Secret", "data": {"username": "[REDACTED:k8s_secret_data]", "empty": ""},
                           "stringData": {"note": "[REDACTED:k8s_secret_data]"}},
                "configmap": {"kind": "ConfigMap", "data": {"mode": "prod", "blob": "[REDACTED:k8s_secret_data]"}}
            })
        );
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|r| r.kind == SecretKind::K8sSecretData));
        // Idempotent.
        assert_eq!(details(&out), (out.clone(), vec![]));
    }

    #[test]
    fn details_key_collisions_and_scalars() {
        let input = json!({
            "password=a": 1,
            "password=b": 2,
            "n": 1.5,
            "b": false,
            "z": null,
            "s": "plain"
        });
        let (out, _) = details(&input);
        let obj = out.as_object().cloned().unwrap_or_default();
        assert_eq!(obj.len(), 6, "{out}");
        assert!(obj.contains_key("password=[REDACTED:password_kv]"));
        assert!(obj.contains_key("password=[REDACTED:password_kv] (2)"));
        assert_eq!(obj.get("n"), Some(&json!(1.5)));
        assert_eq!(obj.get("z"), Some(&Value::Null));
        let (again, r2) = details(&out);
        assert_eq!(again, out);
        assert!(r2.is_empty());
        // non-object roots
        let (s, r) = details(&json!("token=abc"));
        assert_eq!(s, json!("token=[REDACTED:token]"));
        assert_eq!(r[0].field, "details");
        assert_eq!(details(&json!(42)).0, json!(42));
    }

    #[test]
    fn details_html_policy() {
        let input = json!({"a": [{"msg": "<img src=x onerror=alert(1)>ok"}]});
        let (out, _) = details(&input);
        assert_eq!(out, json!({"a": [{"msg": "<img src=x>ok"}]}));
        let mut r = Vec::new();
        assert_eq!(
            sanitize_json("details", &input, HtmlPolicy::Reject, &mut r),
            Err(HtmlRejected {
                field: "details.a[0].msg".into()
            })
        );
        let bad_key = json!({"x": {"<script>k</script>": 1}});
        assert_eq!(
            sanitize_json("details", &bad_key, HtmlPolicy::Reject, &mut r),
            Err(HtmlRejected {
                field: "details.x.<script>k</script>".into()
            })
        );
        assert_eq!(details(&bad_key).0, json!({"x": {"": 1}}));
    }

    #[test]
    fn details_depth_guard() {
        let mut v = json!("password=deep");
        for _ in 0..(MAX_JSON_DEPTH + 10) {
            v = json!([v]);
        }
        let (out, _) = details(&v);
        let mut cur = &out;
        let mut depth = 0;
        while let Value::Array(a) = cur {
            cur = &a[0];
            depth += 1;
        }
        assert_eq!(depth, MAX_JSON_DEPTH + 1);
        assert_eq!(cur, &json!(DEPTH_EXCEEDED));
        // within the limit everything is walked
        let mut w = json!("password=deep");
        for _ in 0..32 {
            w = json!({"k": w});
        }
        let (out, r) = details(&w);
        assert!(out.to_string().contains("password=[REDACTED:password_kv]"));
        assert_eq!(r.len(), 1);
        assert!(r[0].field.starts_with("details.k.k.k"));
    }

    // -- HTML -------------------------------------------------------------------

    #[test]
    fn strip_dangerous_html_cases() {
        let cases: &[(&str, &str)] = &[
            ("<script>alert(1)</script>hello", "hello"),
            ("<img src=x onerror=alert(1)>", "<img src=x>"),
            (
                "<img src=\"x\" onerror=\"alert(1)\" alt=y>",
                "<img src=\"x\" alt=y>",
            ),
            ("<svg/onload=alert(1)>", "<svg>"),
            (
                "<a href=\"javascript:alert(1)\">x</a>",
                "<a href=\"\">x</a>",
            ),
            (
                "<a href='JaVaScRiPt:alert(\"x\")'>x</a>",
                "<a href=''>x</a>",
            ),
            ("<a href=java\tscript:alert(1)>x</a>", "<a href=>x</a>"),
            ("see [x](javascript:alert(1)) now", "see [x]( now"),
            ("<iframe src=https://evil></iframe>after", "after"),
            ("a<object data=x><param name=y></object>b", "ab"),
            ("a<embed src=x.swf>b", "ab"),
            ("<ScRiPt>alert(1)</sCrIpT>ok", "ok"),
            ("before <script>alert(1)", "before "),
            ("before <script src=//evil", "before "),
            ("<scr<script>x</script>ipt>alert(1)</script>done", "done"),
            (
                "<div title=\">\" onclick=\"steal()\">t</div>",
                "<div title=\">\">t</div>",
            ),
            ("<b onmouseover=x>bold</b>", "<b>bold</b>"),
        ];
        for (input, expected) in cases {
            let (out, changed) = strip_dangerous_html(input);
            assert_eq!(&out, expected, "input {input:?}");
            assert!(changed);
            assert_idempotent(input);
        }
        for safe in [
            "if a<b and c>d",
            "x => y",
            "kubectl get pods -o jsonpath='{.items[*]}'",
            "NODE: <none>",
            "<b>bold</b> and <i>it</i>",
            "javascript: unexpected token",
            "onboarding=done",
            "status=online",
            "vector<int> v; map<string, int> m;",
            "stray x</script>y",
        ] {
            let (out, changed) = strip_dangerous_html(safe);
            assert!(
                !changed && matches!(out, Cow::Borrowed(_)),
                "{safe:?} -> {out:?}"
            );
        }
    }

    #[test]
    fn strip_pathological_nesting_terminates() {
        let mut s = String::from("alert(1)");
        for _ in 0..40 {
            s = format!("<scr{s}ipt>");
        }
        s = format!("<script>{s}</script>");
        let (out, changed) = strip_dangerous_html(&s);
        assert!(changed);
        assert!(!out.to_ascii_lowercase().contains("<script"));
        let (again, changed2) = strip_dangerous_html(&out);
        assert_eq!(again, out);
        assert!(!changed2);
    }

    #[test]
    fn contains_markup_rule() {
        for yes in [
            "<b>x</b>",
            "<img src=x>",
            "</div>",
            "<!-- x",
            "<!doctype html>",
            "javascript:alert(1)",
            "JAVASCRIPT:x",
            "x onclick=foo()",
            "a onerror = b",
            "<none>",
            "name<script",
            "<svg",
            "vbscript:msgbox",
        ] {
            assert!(contains_markup(yes), "{yes:?}");
        }
        for no in [
            "apps/v1/Deployment/payments/api",
            "a<b",
            "x => y",
            "payments",
            "api-7d9f8b-xk2lq",
            "my-app-delete-jobs",
            "a <= b",
            "<3",
            "button=1",
            "cron=*/5",
            "配置",
        ] {
            assert!(!contains_markup(no), "{no:?}");
        }
    }

    // -- property tests ------------------------------------------------------

    const FRAGMENTS: &[&str] = &[
        "password",
        "PASSWORD",
        "pwd",
        "token",
        "access_token",
        "secret",
        "client_secret",
        "api_key",
        "apiKey",
        "aws_secret_access_key",
        "private_key",
        "credentials",
        "Authorization",
        "Bearer ",
        "bearer",
        "=",
        "==",
        ":",
        ": ",
        "@",
        "://",
        "postgres",
        "redis",
        "mongodb+srv",
        "mysql",
        "https",
        "u",
        "p4ss",
        "<",
        ">",
        "</",
        "\n",
        "\r\n",
        "\t",
        " ",
        "  ",
        "\"",
        "'",
        "\\\"",
        "\\",
        "{",
        "}",
        "[",
        "]",
        "(",
        ")",
        ",",
        ";",
        "&",
        "|",
        "-",
        "--",
        "#",
        "map[",
        "[REDACTED:password_kv]",
        "[REDACTED:token]",
        "[REDACTED:",
        "REDACTED",
        "]",
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----END RSA PRIVATE KEY-----",
        "-----BEGIN CERTIFICATE-----",
        "-----END CERTIFICATE-----",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "sk-",
        "sk-proj-",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        "ghp_",
        "github_pat_",
        "abc123",
        "hunter2",
        "x",
        "1",
        "=",
        "cGFzc3dvcmQxMjM=",
        "LS0tLS1CRUdJTi",
        "data:",
        "stringData:",
        "kind: Secret",
        "name: DB_PASSWORD",
        "value: ",
        "\"name\":",
        "\"value\":",
        "|",
        "  k: ",
        "<script>",
        "</script>",
        "<scr",
        "ipt>",
        "javascript:",
        "java\tscript:",
        " onerror=",
        "onclick=",
        "<img src=x",
        "<a href=\"",
        "<iframe",
        "<embed",
        "é",
        "配置",
        "🚀",
        "\u{202e}",
        "\u{0}",
    ];

    fn fragment_text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|v| v.concat())
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            fragment_text().prop_map(Value::String),
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            fragment_text(),
                            prop::sample::select(FRAGMENTS).prop_map(str::to_owned)
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn check_text_properties(s: &str) -> Result<(), TestCaseError> {
        let (r1, _) = redact_secrets(s);
        let (r2, k2) = redact_secrets(&r1);
        prop_assert_eq!(&r1, &r2);
        prop_assert!(k2.is_empty());
        let (h1, _) = strip_dangerous_html(s);
        let (h2, c2) = strip_dangerous_html(&h1);
        prop_assert_eq!(&h1, &h2);
        prop_assert!(!c2);
        let _ = contains_markup(s);
        let mut red1 = Vec::new();
        let f1 = sanitize_free_text("f", s, HtmlPolicy::Strip, &mut red1);
        prop_assert!(f1.is_ok());
        let f1 = f1.unwrap_or_default();
        let mut red2 = Vec::new();
        let f2 = sanitize_free_text("f", &f1, HtmlPolicy::Strip, &mut red2);
        prop_assert_eq!(Ok(f1.clone()), f2);
        prop_assert!(red2.is_empty());
        // Reject never rejects an already-sanitized text
        let mut red3 = Vec::new();
        prop_assert_eq!(
            sanitize_free_text("f", &f1, HtmlPolicy::Reject, &mut red3),
            Ok(f1)
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_arbitrary_unicode(s in any::<String>()) {
            check_text_properties(&s)?;
        }

        #[test]
        fn prop_fragments(s in fragment_text()) {
            check_text_properties(&s)?;
        }

        #[test]
        fn prop_json_idempotent(v in json_value()) {
            let mut r1 = Vec::new();
            let o1 = sanitize_json("details", &v, HtmlPolicy::Strip, &mut r1);
            prop_assert!(o1.is_ok());
            let o1 = o1.unwrap_or_default();
            let mut r2 = Vec::new();
            let o2 = sanitize_json("details", &o1, HtmlPolicy::Strip, &mut r2);
            prop_assert_eq!(Ok(o1.clone()), o2);
            prop_assert!(r2.is_empty(), "second pass redacted {:?}", r2);
            let mut r3 = Vec::new();
            prop_assert_eq!(sanitize_json("details", &o1, HtmlPolicy::Reject, &mut r3), Ok(o1));
        }

        #[test]
        fn prop_secret_never_survives(
            prefix in "[a-z ]{0,12}",
            suffix in "[a-z ]{0,12}",
            secret in "[A-Za-z0-9]{10,24}",
            form in 0usize..8,
        ) {
            let line = match form {
                0 => format!("{prefix} password={secret} {suffix}"),
                1 => format!("{prefix} {{\"token\": \"{secret}\"}} {suffix}"),
                2 => format!("{prefix} postgres://app:{secret}@db/x {suffix}"),
                3 => format!("{prefix}\nclient_secret: {secret}\n{suffix}"),
                4 => format!("{prefix} Authorization: Basic {secret}9 {suffix}"),
                5 => format!("{prefix} https://u:{secret}@h {suffix}"),
                6 => format!("{prefix} --token {secret} {suffix}"),
                _ => format!("{prefix} -H \"X-API-Key: {secret}\" {suffix}"),
            };
            let (out, kinds) = redact_secrets(&line);
            prop_assert!(!out.contains(&secret), "{} -> {}", line, out);
            prop_assert_eq!(kinds.len(), 1);
        }

        #[test]
        fn prop_plain_words_untouched(words in prop::collection::vec("[a-z]{1,8}|[0-9]{1,4}|[.,:;()/-]", 0..30)) {
            // lower-case prose without secret keywords or markup is never altered
            let s = words.join(" ");
            prop_assume!(!RULES.prefilter.is_match(&s));
            let mut r = Vec::new();
            prop_assert_eq!(sanitize_free_text("f", &s, HtmlPolicy::Reject, &mut r), Ok(s.clone()));
            prop_assert!(r.is_empty());
        }
    }
}
