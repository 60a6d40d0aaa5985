//! Fuzzing of the pure pipeline (issue: faults, item 6): validation + sanitization + canonical hashing, run for a
//! bounded time (`DATASTORAGE_FUZZ_SECONDS` per target, default 20; `make fuzz` runs longer).
//!
//! Each target draws random cases from proptest strategies until its time is up, many runs with fresh seeds.
//! A failing case is shrunk by proptest and printed as JSON: append it to `tests/fixtures/fuzz_regressions.json`,
//! where `fuzz_regressions_replay` checks it on every `make test` forever after.
//!
//! Properties of `prepare()` on arbitrary specs (mostly well-formed, so sanitization is reached, with arbitrary
//! Unicode, markup, SQL and planted secrets in every text field and in nested `details`; the planted secrets include
//! every positive vector of every sanitizer rule, `datastorage::audit::sanitize::vectors::rule_vectors`):
//! - it never panics; a rejection lists at least one error and no error message echoes a planted secret;
//! - with `redactSecrets`, no planted secret survives in the stored record or the embedding text;
//! - `content_hash = sha256(canonical_json)`, the canonical JSON is the record's, parses back and is a fixpoint,
//!   and does not depend on the insertion order of `details` keys;
//! - preparing the same spec twice gives the same record (determinism).
//!
//! Properties of the hash chain on arbitrary records: an untouched chain verifies; changing any byte of any field of
//! one generation is detected at that generation and not before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use datastorage::audit::record::{
    HistoryEntry, canonical_json, chain_hash, sha256_hex, verify_chain,
};
use datastorage::audit::sanitize::HtmlPolicy;
use datastorage::audit::{AuditMeta, SanitizeConfig, prepare};
use datastorage::crd::{AuditOutcome, AuditPhase, RemediationAuditSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// One fuzz case: a spec, the secret values planted in it, and the sanitization settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Case {
    spec: RemediationAuditSpec,
    planted: Vec<String>,
    redact: bool,
    html_reject: bool,
}

fn budget() -> Duration {
    let secs = std::env::var("DATASTORAGE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// Runs `test` on cases from `strategy` until the time budget is spent (fresh random seed per round). On a failure,
/// panics with proptest's shrunk case as JSON so it can be added to the regression file.
fn fuzz<S, F>(name: &str, strategy: S, test: F)
where
    S: Strategy,
    S::Value: Serialize,
    F: Fn(S::Value) -> Result<(), TestCaseError>,
{
    let deadline = Instant::now() + budget();
    let mut cases = 0u64;
    let mut rounds = 0u64;
    while Instant::now() < deadline {
        let mut runner = TestRunner::new(Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        });
        match runner.run(&strategy, &test) {
            Ok(()) => {}
            Err(TestError::Fail(reason, value)) => panic!(
                "{name}: {reason}\nminimal failing case (append to tests/fixtures/fuzz_regressions.json \
                 under \"{name}\"):\n{}",
                serde_json::to_string(&value).unwrap_or_default()
            ),
            Err(TestError::Abort(reason)) => panic!("{name}: aborted: {reason}"),
        }
        cases += 256;
        rounds += 1;
    }
    println!("fuzz {name}: {cases} cases in {rounds} rounds, no failure");
    assert!(cases > 0, "{name}: the time budget allowed no case");
}

// ---------------------------------------------------------------------------------------------------------------
// Strategies

/// Bits of text that exercise the validator and the sanitizer: Unicode edge cases, markup, SQL, escapes.
const NOISE: &[&str] = &[
    "restarted pod",
    "OOMKilled",
    "exit code 137",
    "é",
    "日本語",
    "🔥",
    "\u{202e}",
    "\u{200b}",
    "\u{feff}",
    "\u{0301}",
    "\t",
    "\n",
    "\r\n",
    "\\",
    "\"",
    "'",
    "`",
    "{",
    "}",
    "[",
    "]",
    ":",
    "=",
    "<b>bold</b>",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<a href=\"javascript:alert(1)\">x</a>",
    "<iframe src=//evil>",
    "<!-- c -->",
    "&lt;script&gt;",
    "'; DROP TABLE audits; --",
    "1 OR 1=1",
    "$$; SELECT pg_sleep(1); $$",
    "%00",
    "\\u0000",
    "password",
    "token",
    "secret",
    "Bearer",
    "-----BEGIN",
    "://",
    "@",
];

fn noise() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(prop::sample::select(NOISE), 0..8).prop_map(|v| v.concat()),
        1 => any::<String>(),
        1 => "[a-zA-Z0-9 ._/-]{0,40}",
    ]
}

/// A secret body: long enough and mixed enough that every rule treats it as a credential.
fn secret_body() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{18,30}".prop_map(|s| format!("Zq9{s}"))
}

/// A planted secret in free-text form: (text to insert, value that must never be stored).
fn text_secret() -> impl Strategy<Value = (String, String)> {
    (secret_body(), 0usize..16).prop_map(|(s, form)| {
        let upper: String = s
            .to_uppercase()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        match form {
            0 => (format!("password={s}"), s),
            1 => (format!("password: {s}"), s),
            2 => (format!("{{\"token\": \"{s}\"}}"), s),
            3 => (format!("api_key={s}"), s),
            4 => (format!("postgres://app:{s}@db.internal:5432/orders"), s),
            5 => (format!("mysql://root:{s}@mysql:3306/db"), s),
            6 => (format!("mongodb://svc:{s}@mongo-0/admin"), s),
            7 => (format!("redis://:{s}@cache:6379/0"), s),
            8 => (format!("https://deploy:{s}@git.example.com/repo.git"), s),
            9 => (format!("Authorization: Bearer {s}"), s),
            10 => (format!("client_secret: {s}"), s),
            11 => {
                let key = format!("AKIA{}", &format!("{upper}QQQQQQQQQQQQQQQQ")[..16]);
                (key.clone(), key)
            }
            12 => (format!("aws_secret_access_key={s}{s}"), s),
            13 => {
                let token = format!("ghp_{}", &format!("{s}{s}")[..36]);
                (token.clone(), token)
            }
            14 => (
                format!("-----BEGIN PRIVATE KEY-----\nMIIE{s}{s}\n-----END PRIVATE KEY-----"),
                s,
            ),
            _ => (format!("--token {s}"), s),
        }
    })
}

/// The sanitizer's own rule vectors (every token family and structural detector, `src/audit/sanitize/vectors.rs`),
/// each as (text, its secrets long enough to be searched for in the stored record without matching by chance).
fn rule_vectors() -> &'static [(String, Vec<String>)] {
    static VECTORS: std::sync::LazyLock<Vec<(String, Vec<String>)>> =
        std::sync::LazyLock::new(|| {
            datastorage::audit::sanitize::vectors::rule_vectors()
                .into_iter()
                .map(|v| {
                    let planted = v
                        .secrets
                        .into_iter()
                        // JSON-escaped characters would make the absence check vacuous.
                        .filter(|s| s.len() >= 8 && !s.contains(['"', '\\', '\n', '\r', '\t']))
                        .collect();
                    // On lines of their own: a vector's context (a YAML block, a line start) is part of the rule.
                    (format!("\n{}\n", v.text), planted)
                })
                .collect()
        });
    &VECTORS
}

/// A planted secret: one of the generic forms above, or a rule vector.
fn planted_secret() -> impl Strategy<Value = (String, Vec<String>)> {
    prop_oneof![
        3 => text_secret().prop_map(|(t, v)| (t, vec![v])),
        2 => (0..rule_vectors().len()).prop_map(|i| rule_vectors()[i].clone()),
    ]
}

/// Free text: noise and planted secrets joined by whitespace (a secret glued to arbitrary bytes is a documented
/// limit of pattern-based redaction; see tests/bad_inputs.rs known issues).
fn free_text() -> impl Strategy<Value = (String, Vec<String>)> {
    (
        prop::collection::vec(noise(), 0..4),
        prop::collection::vec(planted_secret(), 0..3),
        prop::sample::select(&[" ", "\n", " \n "][..]),
    )
        .prop_map(|(noise, secrets, sep)| {
            let mut parts = noise;
            let mut planted = Vec::new();
            for (i, (text, values)) in secrets.into_iter().enumerate() {
                let at = (i * 7) % (parts.len() + 1);
                parts.insert(at, text);
                planted.extend(values);
            }
            (parts.join(sep), planted)
        })
}

const SECRET_KEYS: &[&str] = &[
    "password",
    "db_password",
    "apiKey",
    "api_key",
    "token",
    "access_token",
    "secret",
    "client_secret",
    "Authorization",
];

/// `details`: nested objects/arrays of noise, planted free-text secrets, secret-named keys and a Kubernetes Secret.
fn details() -> impl Strategy<Value = (Map<String, Value>, Vec<String>)> {
    let leaf = prop_oneof![
        free_text().prop_map(|(t, p)| (Value::String(t), p)),
        (secret_body(), prop::sample::select(SECRET_KEYS))
            .prop_map(|(s, k)| (json!({ k: s.clone() }), vec![s])),
        secret_body().prop_map(|s| (
            json!({"kind": "Secret", "apiVersion": "v1", "data": {"tls.key": s.clone()}}),
            vec![s]
        )),
        any::<i64>().prop_map(|n| (Value::from(n), vec![])),
        any::<bool>().prop_map(|b| (Value::Bool(b), vec![])),
        Just((Value::Null, vec![])),
    ];
    let tree = leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|items| {
                let mut planted = Vec::new();
                let arr = items
                    .into_iter()
                    .map(|(v, p)| {
                        planted.extend(p);
                        v
                    })
                    .collect();
                (Value::Array(arr), planted)
            }),
            prop::collection::vec((noise(), inner), 0..5).prop_map(|kvs| {
                let mut planted = Vec::new();
                let mut map = Map::new();
                for (k, (v, p)) in kvs {
                    // A key that is itself a credential is not a case the pipeline can see as one; keep keys noise.
                    if map.insert(k, v).is_none() {
                        planted.extend(p);
                    }
                }
                (Value::Object(map), planted)
            }),
        ]
    });
    prop::collection::vec(("[a-zA-Z_][a-zA-Z0-9_.-]{0,20}", tree), 0..6).prop_map(|kvs| {
        let mut planted = Vec::new();
        let mut map = Map::new();
        for (k, (v, p)) in kvs {
            if map.insert(k, v).is_none() {
                planted.extend(p);
            }
        }
        (map, planted)
    })
}

fn short_field() -> impl Strategy<Value = (String, Vec<String>)> {
    prop_oneof![
        12 => "[a-z][a-z0-9-]{0,30}".prop_map(|s| (s, vec![])),
        1 => noise().prop_map(|s| (s, vec![])),
        3 => text_secret().prop_map(|(t, v)| (format!("prod {t}"), vec![v])),
    ]
}

fn rfc3339(secs: i64, ms: u32) -> String {
    Utc.timestamp_opt(1_700_000_000 + secs, ms * 1_000_000)
        .single()
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// (startTime, endTime): mostly a valid pair (end after start), sometimes noise or edge-case dates.
fn times() -> impl Strategy<Value = (String, Option<String>)> {
    let odd = prop_oneof![
        noise(),
        prop::sample::select(
            &[
                "2026-02-30T00:00:00Z",
                "9999-12-31T23:59:59Z",
                "0000-01-01T00:00:00Z",
                "2026-01-01T00:00:00+25:00",
                ""
            ][..]
        )
        .prop_map(str::to_string),
    ];
    prop_oneof![
        10 => (0i64..(5 * 365 * 86_400), 0u32..1000, prop::option::of(0i64..86_400))
            .prop_map(|(secs, ms, end)| (rfc3339(secs, ms), end.map(|d| rfc3339(secs + d, ms)))),
        1 => (odd.clone(), prop::option::of(odd)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    let ids = (
        prop_oneof![
            8 => "rr-[a-z0-9-]{1,40}",
            1 => noise(),
        ],
        prop_oneof![
            8 => "[a-f0-9]{8,64}",
            1 => text_secret().prop_map(|(t, _)| t),
        ],
    );
    let texts = (
        short_field(),
        short_field(),
        short_field(),
        short_field(),
        prop::option::of(free_text()),
        prop::option::of(details()),
    );
    let other = (
        times(),
        "[a-z][a-z0-9.-]{0,20}[a-z0-9]",
        prop::option::of(short_field()),
        prop::bool::weighted(0.9),
        any::<bool>(),
    );
    (ids, texts, other).prop_map(
        |(
            (request_id, fingerprint),
            (severity, environment, cluster, target, message, details),
            ((start, end), action, alert, redact, html_reject),
        )| {
            let mut planted = Vec::new();
            let mut take = |(v, p): (String, Vec<String>)| {
                planted.extend(p);
                v
            };
            let spec = RemediationAuditSpec {
                remediation_request_id: request_id,
                alert_fingerprint: fingerprint,
                alert_name: alert.map(&mut take),
                phase: AuditPhase::Completed,
                outcome: AuditOutcome::Success,
                action_type: action,
                severity: take(severity),
                environment: take(environment),
                cluster_name: take(cluster),
                target_resource: take(target),
                start_time: start,
                end_time: end,
                error_message: message.map(&mut take),
                details: details.map(|(map, p)| {
                    planted.extend(p);
                    map
                }),
            };
            Case {
                spec,
                planted,
                redact,
                html_reject,
            }
        },
    )
}

// ---------------------------------------------------------------------------------------------------------------
// Properties

fn meta() -> AuditMeta {
    AuditMeta {
        uid: "0b6f3f0e-4a4e-4f8e-9d55-7f1f3f7f0001".into(),
        namespace: "fuzz".into(),
        name: "audit".into(),
        generation: 1,
    }
}

fn reversed(map: &Map<String, Value>) -> Map<String, Value> {
    fn rev(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                Value::Object(m.iter().rev().map(|(k, v)| (k.clone(), rev(v))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(rev).collect()),
            other => other.clone(),
        }
    }
    map.iter().rev().map(|(k, v)| (k.clone(), rev(v))).collect()
}

/// How the cases went: accepted by prepare, rejected, and planted secrets checked in accepted records.
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static REJECTED: AtomicU64 = AtomicU64::new(0);
static SECRETS_CHECKED: AtomicU64 = AtomicU64::new(0);

fn check_prepare(case: &Case) -> Result<(), TestCaseError> {
    let config = SanitizeConfig {
        redact_secrets: case.redact,
        html: if case.html_reject {
            HtmlPolicy::Reject
        } else {
            HtmlPolicy::Strip
        },
    };
    let now = Utc.timestamp_opt(1_900_000_000, 0).single().unwrap();
    let first = prepare(&meta(), &case.spec, config, now);
    let again = prepare(&meta(), &case.spec, config, now);
    prop_assert_eq!(&first, &again, "prepare is not deterministic");
    match first {
        Err(errors) => {
            REJECTED.fetch_add(1, Ordering::Relaxed);
            prop_assert!(!errors.is_empty(), "rejected without an error");
            if case.redact {
                for e in &errors {
                    let text = e.to_string();
                    for s in &case.planted {
                        prop_assert!(
                            !text.contains(s.as_str()),
                            "error message echoes a secret: {}",
                            text
                        );
                    }
                }
            }
        }
        Ok(p) => {
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            prop_assert_eq!(&p.content_hash, &sha256_hex(p.canonical_json.as_bytes()));
            prop_assert_eq!(&p.canonical_json, &p.record.canonical_json());
            let parsed: Value = serde_json::from_str(&p.canonical_json)
                .map_err(|e| TestCaseError::fail(format!("canonical JSON does not parse: {e}")))?;
            prop_assert_eq!(
                &canonical_json(&parsed),
                &p.canonical_json,
                "not a fixpoint"
            );
            if case.redact {
                SECRETS_CHECKED.fetch_add(case.planted.len() as u64, Ordering::Relaxed);
                for s in &case.planted {
                    prop_assert!(
                        !p.canonical_json.contains(s.as_str()),
                        "secret {} stored: {}",
                        s,
                        p.canonical_json
                    );
                    prop_assert!(
                        !p.embedding_text.contains(s.as_str()),
                        "secret {} in embedding text",
                        s
                    );
                }
            }
            if let Some(details) = &case.spec.details {
                let mut spec = case.spec.clone();
                spec.details = Some(reversed(details));
                let other = prepare(&meta(), &spec, config, now).map_err(|e| {
                    TestCaseError::fail(format!("key order changed validity: {e:?}"))
                })?;
                prop_assert_eq!(
                    &other.content_hash,
                    &p.content_hash,
                    "hash depends on key order"
                );
            }
        }
    }
    Ok(())
}

/// A chain of arbitrary records and a tampering: (records, generation index, field, byte position).
fn chain_case() -> impl Strategy<Value = (Vec<Value>, usize, u8, usize)> {
    let record = prop_oneof![
        noise().prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        prop::collection::btree_map(noise(), noise(), 0..5).prop_map(|m| Value::Object(
            m.into_iter().map(|(k, v)| (k, Value::String(v))).collect()
        )),
    ];
    (
        prop::collection::vec(record, 1..8),
        any::<usize>(),
        0u8..4,
        any::<usize>(),
    )
}

fn build_chain(records: &[Value]) -> Vec<HistoryEntry> {
    let mut prev = String::new();
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let record = canonical_json(&json!({"generation": i + 1, "record": r}));
            let content_hash = sha256_hex(record.as_bytes());
            let chain = chain_hash(&prev, &content_hash);
            let entry = HistoryEntry {
                generation: i as i64 + 1,
                record,
                content_hash,
                prev_chain_hash: prev.clone(),
                chain_hash: chain.clone(),
            };
            prev = chain;
            entry
        })
        .collect()
}

/// Changes one character of `s` (or appends one to an empty string), always producing a different string.
fn tamper(s: &str, pos: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return "x".into();
    }
    let i = pos % chars.len();
    let mut out = chars.clone();
    out[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    out.into_iter().collect()
}

fn check_chain(
    (records, at, field, pos): (Vec<Value>, usize, u8, usize),
) -> Result<(), TestCaseError> {
    let mut entries = build_chain(&records);
    prop_assert!(
        verify_chain(&entries).iter().all(|c| c.ok),
        "an untouched chain fails"
    );
    let i = at % entries.len();
    let e = &mut entries[i];
    match field {
        0 => e.record = tamper(&e.record, pos),
        1 => e.content_hash = tamper(&e.content_hash, pos),
        2 => e.prev_chain_hash = tamper(&e.prev_chain_hash, pos),
        _ => e.chain_hash = tamper(&e.chain_hash, pos),
    }
    let checks = verify_chain(&entries);
    prop_assert!(
        checks[..i].iter().all(|c| c.ok),
        "tampering at {} flagged earlier",
        i
    );
    prop_assert!(
        !checks[i].ok,
        "tampering of field {} at generation {} not detected",
        field,
        i + 1
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Targets

#[test]
fn fuzz_prepare() {
    fuzz("prepare", case(), |c| check_prepare(&c));
    let (accepted, rejected) = (
        ACCEPTED.load(Ordering::Relaxed),
        REJECTED.load(Ordering::Relaxed),
    );
    let secrets = SECRETS_CHECKED.load(Ordering::Relaxed);
    println!(
        "fuzz prepare: {accepted} accepted, {rejected} rejected, {secrets} planted secrets checked absent"
    );
    // The generator must keep reaching sanitization and the hashing, not only the validator's rejections.
    assert!(
        accepted * 5 > accepted + rejected,
        "fewer than 20 % of fuzz cases were accepted"
    );
    assert!(
        secrets > accepted / 10,
        "too few planted secrets reached an accepted record"
    );
}

#[test]
fn fuzz_hash_chain() {
    fuzz("hash_chain", chain_case(), check_chain);
}

/// Every case a fuzz run ever failed on, replayed on every run.
#[test]
fn fuzz_regressions_replay() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fuzz_regressions.json"
    ))
    .unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let prepare_cases: Vec<Case> =
        serde_json::from_value(file["prepare"].clone()).expect("prepare cases");
    for (i, case) in prepare_cases.iter().enumerate() {
        if let Err(e) = check_prepare(case) {
            panic!("regression case prepare[{i}] fails again: {e}");
        }
    }
    let chain_cases: Vec<(Vec<Value>, usize, u8, usize)> =
        serde_json::from_value(file["hash_chain"].clone()).expect("hash_chain cases");
    for (i, case) in chain_cases.into_iter().enumerate() {
        if let Err(e) = check_chain(case) {
            panic!("regression case hash_chain[{i}] fails again: {e}");
        }
    }
    println!(
        "replayed {} prepare and {} hash_chain regression cases",
        prepare_cases.len(),
        file["hash_chain"].as_array().map_or(0, Vec::len)
    );
}
