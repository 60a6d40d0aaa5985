//! Unit tests of the sanitizer as a whole (the per-rule vectors are tested in `vectors.rs`).

use std::borrow::Cow;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::engine::{force_all, prefilter};
use super::keys::is_placeholder;
use super::*;

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
fn kind_names_are_stable() {
    let names: Vec<&str> = SecretKind::ALL.iter().map(|k| k.as_str()).collect();
    // The first 22 are the spec's kinds, stored in audits and used as metric labels since the first release;
    // new kinds are appended.
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
            "generic_secret",
            "jwt",
            "slack_token",
            "slack_webhook",
            "stripe_key",
            "gitlab_token",
            "google_api_key",
            "google_oauth",
            "azure_storage_key",
            "azure_sas_token",
            "azure_client_secret",
            "npm_token",
            "pypi_token",
            "sendgrid_key",
            "twilio_key",
            "huggingface_token",
            "docker_auth",
        ]
    );
    force_all();
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

#[test]
fn placeholders_already_present_are_kept() {
    for s in [
        "password=[REDACTED:password_kv] user=bob",
        "postgres://app:[REDACTED:postgres_url]@db:5432/x",
        "Authorization: [REDACTED:authorization_header]",
        r#"{"password": "[REDACTED:password_json]"}"#,
        "data:\n  password: [REDACTED:k8s_secret_data]",
        "map[password:[REDACTED:password_kv]]",
        "token=[REDACTED:jwt] slack [REDACTED:slack_token]",
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
        prop_assume!(prefilter(&s) == 0);
        let mut r = Vec::new();
        prop_assert_eq!(sanitize_free_text("f", &s, HtmlPolicy::Reject, &mut r), Ok(s.clone()));
        prop_assert!(r.is_empty());
    }
}

// -- added with the rule table ------------------------------------------------

#[test]
fn entity_encoded_javascript_is_removed() {
    for (input, expected) in [
        ("click &#106;avascript:alert(1) now", "click  now"),
        (
            "see &#x6A;ava&#115;cript&colon;alert(document.cookie)",
            "see ",
        ),
        (
            "<a href=\"&#106;avascript:alert(1)\">x</a>",
            "<a href=\"\">x</a>",
        ),
        (
            "<a href=\"java&#x09;script:alert(1)\">x</a>",
            "<a href=\"\">x</a>",
        ),
        (
            "&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114&#0000105&#0000112&#0000116&#0000058alert(1)",
            "",
        ),
    ] {
        let (out, changed) = strip_dangerous_html(input);
        assert_eq!(out, expected, "{input:?}");
        assert!(changed);
        assert_idempotent(input);
    }
    assert!(contains_markup("&#106;avascript:alert(1)"));
    for safe in [
        "AT&amp;T",
        "R&D",
        "&#169; 2026 Acme",
        "javascript developers wanted",
    ] {
        assert!(!strip_dangerous_html(safe).1, "{safe:?}");
    }
}

fn spec() -> crate::crd::RemediationAuditSpec {
    serde_json::from_value(json!({
        "remediationRequestId": "rr-1", "alertFingerprint": "fp", "phase": "Completed", "outcome": "Success",
        "actionType": "restart-pod", "severity": "critical", "environment": "prod", "clusterName": "c1",
        "targetResource": "apps/v1/Deployment/payments/api", "startTime": "2026-03-01T11:00:00Z",
        "alertName": "token=abc123",
        "errorMessage": "<script>x</script>connect failed: password=hunter2",
        "details": {"<b onclick=x>k</b>": "v", "env": [{"name": "DB_PASSWORD", "value": "hunter2"}],
                    "docker": {"auths": {"r": {"auth": "ZGVwbG95OlMzY3IzdFBhc3M="}}}}
    }))
    .unwrap()
}

#[test]
fn sanitize_spec_is_the_one_entry_point() {
    let s = sanitize_spec(&spec(), SanitizeConfig::default()).unwrap();
    assert_eq!(
        s.value.alert_name.as_deref(),
        Some("token=[REDACTED:token]")
    );
    assert_eq!(
        s.value.error_message.as_deref(),
        Some("connect failed: password=[REDACTED:password_kv]")
    );
    let d = Value::Object(s.value.details.clone().unwrap());
    assert_eq!(d["env"][0]["value"], json!("[REDACTED:password_json]"));
    assert_eq!(
        d["docker"]["auths"]["r"]["auth"],
        json!("[REDACTED:docker_auth]")
    );
    assert!(d.get("<b>k</b>").is_some(), "{d}");
    assert!(s.markup_removed);
    let fields: Vec<(&str, &str)> = s
        .redactions
        .iter()
        .map(|r| (r.field.as_str(), r.kind.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("alertName", "token"),
            ("errorMessage", "password_kv"),
            ("details.docker.auths.r.auth", "docker_auth"),
            ("details.env[0].value", "password_json"),
        ]
    );
    assert_eq!(s.value.remediation_request_id, "rr-1");
    // A fixpoint.
    let again = sanitize_spec(&s.value, SanitizeConfig::default()).unwrap();
    assert_eq!(again.value, s.value);
    assert!(again.redactions.is_empty() && !again.markup_removed);
    // Reject names every field holding markup.
    let reject = SanitizeConfig {
        redact_secrets: true,
        html: HtmlPolicy::Reject,
    };
    let err = sanitize_spec(&spec(), reject).unwrap_err();
    let fields: Vec<&str> = err.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["errorMessage", "details.<b onclick=x>k</b>"]);
    // Without redaction only markup is handled, in keys too.
    let strip_only = SanitizeConfig {
        redact_secrets: false,
        html: HtmlPolicy::Strip,
    };
    let plain = sanitize_spec(&spec(), strip_only).unwrap();
    assert!(plain.redactions.is_empty() && plain.markup_removed);
    assert_eq!(plain.value.alert_name.as_deref(), Some("token=abc123"));
    assert_eq!(
        plain.value.error_message.as_deref(),
        Some("connect failed: password=hunter2")
    );
    assert!(plain.value.details.unwrap().contains_key("<b>k</b>"));
}

#[test]
fn details_generic_and_placeholder_values() {
    let input = json!({
        "mySecretString": "Zx8fJ3kLq9Wm2Np5",
        "passwordPolicy": "strict",
        "password": "${DB_PASSWORD}",
        "token": "{{ .Values.token }}",
        "max_tokens": 1000,
        "tokenizer": "bert-base-uncased-v2",
        "kind": "SecretStore",
        "data": {"mode": "test"}
    });
    let (out, r) = details(&input);
    let mut expected = input.clone();
    expected["mySecretString"] = json!("[REDACTED:generic_secret]");
    assert_eq!(out, expected);
    assert_eq!(r.len(), 1);
    // The same map in a `kind: Secret` is redacted.
    let (out, _) = details(&json!({"kind": "Secret", "data": {"mode": "test"}}));
    assert_eq!(out["data"]["mode"], json!("[REDACTED:k8s_secret_data]"));
}
