//! The chain covers what users see, and it is anchored outside the database (docs/security.md): the UPDATE guard
//! on the current row, verification of the current row against the head record, signed chain-head checkpoints
//! (rewrite, deletion, forgery), remediationRequestId scoped per (clusterName, namespace), the functions' fixed
//! search_path, and the tamper tests through `kubectl audit verify` against the checkpoint.

use std::process::Command;
use std::time::Duration;

use crate::support::TestDb;
use crate::support::kube::{TestEnv, audit_yaml, eventually, kubeconfig, kubectl, kubectl_path};
use chrono::Utc;
use datastorage::audit::{AuditMeta, Prepared, SanitizeConfig, prepare};
use datastorage::crd::{AuditOutcome, AuditPhase, RemediationAuditSpec};
use datastorage::store::checkpoint::CheckpointKey;
use datastorage::store::{AuditWrite, Store, WriteOutcome};

const WAIT: Duration = Duration::from_secs(60);

fn spec(request_id: &str, cluster: &str) -> RemediationAuditSpec {
    RemediationAuditSpec {
        remediation_request_id: request_id.into(),
        alert_fingerprint: "fp-1".into(),
        alert_name: Some("KubePodOOMKilled".into()),
        phase: AuditPhase::Completed,
        outcome: AuditOutcome::Success,
        action_type: "restart-pod".into(),
        severity: "critical".into(),
        environment: "production".into(),
        cluster_name: cluster.into(),
        target_resource: "apps/v1/Deployment/payments/api".into(),
        start_time: "2026-03-01T11:58:00.123456Z".into(),
        end_time: Some("2026-03-01T11:58:30Z".into()),
        error_message: Some("container api exceeded its memory limit".into()),
        details: serde_json::json!({"attempts": 2, "ratio": 1.0, "pods": ["a", "b"]})
            .as_object()
            .cloned(),
    }
}

fn prepared(
    uid: &str,
    ns: &str,
    name: &str,
    generation: i64,
    spec: &RemediationAuditSpec,
) -> Prepared {
    let meta = AuditMeta {
        uid: uid.into(),
        namespace: ns.into(),
        name: name.into(),
        generation,
    };
    prepare(&meta, spec, SanitizeConfig::default(), Utc::now()).unwrap()
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn write(store: &Store, p: &Prepared) -> WriteOutcome {
    store
        .write_audit(&AuditWrite {
            prepared: p,
            embedding: None,
        })
        .await
        .unwrap()
}

async fn stored(store: &Store, p: &Prepared) -> i64 {
    match write(store, p).await {
        WriteOutcome::Stored(s) => s.audit_id,
        other => panic!("{other:?}"),
    }
}

/// Runs `sql` as a database owner who bypasses triggers (what the guards cannot stop; verification must catch it).
async fn as_owner(store: &Store, sql: &[&str]) {
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    for s in sql {
        sqlx::query(sqlx::AssertSqlSafe(s.to_string()))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

/// Failed before this change: `UPDATE audits SET outcome = …` succeeded (no guard on the current row).
#[tokio::test]
async fn the_current_row_changes_only_through_the_write_path() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let u = uid();
    let id = stored(
        &store,
        &prepared(&u, "payments", "oom-1", 1, &spec("rr-1", "c1")),
    )
    .await;
    // The write path itself: a new generation (one-audit path), the batch path, the deletion mark.
    let mut s2 = spec("rr-1", "c1");
    s2.outcome = AuditOutcome::Failure;
    assert!(matches!(
        write(&store, &prepared(&u, "payments", "oom-1", 2, &s2)).await,
        WriteOutcome::Stored(_)
    ));
    let (p3, pa, pb) = (
        prepared(&u, "payments", "oom-1", 3, &spec("rr-1", "c1")),
        prepared(&uid(), "payments", "a", 1, &spec("rr-a", "c1")),
        prepared(&uid(), "payments", "b", 1, &spec("rr-b", "c1")),
    );
    let writes: Vec<AuditWrite<'_>> = [&p3, &pa, &pb]
        .into_iter()
        .map(|p| AuditWrite {
            prepared: p,
            embedding: None,
        })
        .collect();
    for r in store.write_audits(&writes).await {
        assert!(matches!(r.unwrap(), WriteOutcome::Stored(_)));
    }
    let (_, v) = verified(&store, id).await;
    assert!(v.ok(), "{v:?}");
    assert!(store.mark_deleted(&u).await.unwrap());

    // Anything else is refused.
    for sql in [
        "UPDATE audits SET outcome = 'Failure' WHERE id = $1",
        "UPDATE audits SET error_message = NULL, details = NULL WHERE id = $1",
        "UPDATE audits SET chain_hash = repeat('0', 64) WHERE id = $1",
        "UPDATE audits SET generation = generation + 1 WHERE id = $1",
        "UPDATE audits SET deleted_at = NULL WHERE id = $1",
        "UPDATE audits SET cr_uid = gen_random_uuid() WHERE id = $1",
    ] {
        let err = sqlx::query(sql)
            .bind(id)
            .execute(store.pool())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("audits:"), "{sql}: {err}");
    }
    let err = sqlx::query("TRUNCATE audits CASCADE")
        .execute(store.pool())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused"), "{err}");
    // A forged "new generation" with a history entry that does not match the row is refused too.
    let err = sqlx::query(
        "WITH h AS (INSERT INTO audit_history (audit_id, cr_uid, namespace, generation, record, content_hash,
                        prev_chain_hash, chain_hash)
                    SELECT id, cr_uid, namespace, 9, record, content_hash, chain_hash, 'forged'
                    FROM (SELECT a.id, a.cr_uid, a.namespace, a.chain_hash, x.record, x.content_hash
                          FROM audits a JOIN audit_history x ON x.audit_id = a.id AND x.generation = a.generation
                          WHERE a.id = $1) s
                    RETURNING 1)
         UPDATE audits SET generation = 9, chain_hash = 'forged', outcome = 'Failure' WHERE id = $1",
    )
    .bind(id)
    .execute(store.pool())
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("audits:"), "{err}");
    let (_, v) = verified(&store, id).await;
    assert!(v.ok(), "{v:?}");
}

async fn verified(store: &Store, id: i64) -> (String, datastorage::audit::record::Verification) {
    let va = store.verify_audit(id).await.unwrap().unwrap();
    (va.uid, va.verification)
}

/// Failed before this change: a current row rewritten by the database owner (history untouched) still verified,
/// because verification looked at the history and `chain_hash` only, not at the fields users are shown.
#[tokio::test]
async fn verify_compares_the_current_row_with_the_head_record() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let u = uid();
    let id = stored(
        &store,
        &prepared(&u, "payments", "oom-1", 1, &spec("rr-1", "c1")),
    )
    .await;
    let (got_uid, v) = verified(&store, id).await;
    assert_eq!(got_uid, u);
    assert!(v.ok() && v.row_mismatches.is_empty(), "{v:?}");
    as_owner(
        &store,
        &[&format!(
            "UPDATE audits SET outcome = 'Failure', error_message = 'all good', \
             details = '{{\"attempts\": 3}}' WHERE id = {id}"
        )],
    )
    .await;
    let (_, v) = verified(&store, id).await;
    assert!(!v.ok());
    assert!(v.checks.iter().all(|c| c.ok) && v.head_matches, "{v:?}");
    assert_eq!(v.row_mismatches, ["details", "errorMessage", "outcome"]);
    assert!(
        v.problems()
            .iter()
            .any(|p| p.contains("differs from the head record in details, errorMessage, outcome")),
        "{:?}",
        v.problems()
    );
}

/// Failed before this change: the second namespace's (and the second cluster's) audit was rejected as a
/// duplicate naming the first namespace's audit, and a rejected duplicate stayed rejected after its holder went.
#[tokio::test]
async fn request_ids_are_unique_per_cluster_and_namespace_only() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let holder = uid();
    stored(
        &store,
        &prepared(&holder, "team-a", "first", 1, &spec("rr-x", "c1")),
    )
    .await;
    // Another namespace, another cluster: no collision (one-audit path and batch path).
    stored(
        &store,
        &prepared(&uid(), "team-b", "other", 1, &spec("rr-x", "c1")),
    )
    .await;
    stored(
        &store,
        &prepared(&uid(), "team-a", "fleet", 1, &spec("rr-x", "c2")),
    )
    .await;
    let (pc, pd) = (
        prepared(&uid(), "team-c", "c", 1, &spec("rr-x", "c1")),
        prepared(&uid(), "team-d", "d", 1, &spec("rr-x", "c1")),
    );
    let writes = [
        AuditWrite {
            prepared: &pc,
            embedding: None,
        },
        AuditWrite {
            prepared: &pd,
            embedding: None,
        },
    ];
    for r in store.write_audits(&writes).await {
        assert!(matches!(r.unwrap(), WriteOutcome::Stored(_)));
    }
    // Same cluster and namespace: a duplicate that names only its own namespace's holder.
    let second = uid();
    let dup = prepared(&second, "team-a", "second", 1, &spec("rr-x", "c1"));
    assert_eq!(
        write(&store, &dup).await,
        WriteOutcome::Duplicate {
            namespace: "team-a".into(),
            name: "first".into()
        }
    );
    let batch = [
        AuditWrite {
            prepared: &dup,
            embedding: None,
        },
        AuditWrite {
            prepared: &pc,
            embedding: None,
        },
    ];
    let out = store.write_audits(&batch).await;
    assert!(
        matches!(&out[0], Ok(WriteOutcome::Duplicate { namespace, .. }) if namespace == "team-a"),
        "{out:?}"
    );
    // The holder's resource is deleted: the id is free, the duplicate is stored when tried again.
    assert!(store.mark_deleted(&holder).await.unwrap());
    assert!(matches!(write(&store, &dup).await, WriteOutcome::Stored(_)));
}

/// Failed before this change: with a look-alike `audit_history_all` first on the caller's search_path,
/// `verify_audit_chain()` verified the look-alike's rows instead of the store's.
#[tokio::test]
async fn functions_ignore_the_callers_search_path() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let id = stored(
        &store,
        &prepared(&uid(), "payments", "oom-1", 1, &spec("rr-1", "c1")),
    )
    .await;
    as_owner(
        &store,
        &[&format!(
            "UPDATE audit_history SET record = record || ' ' WHERE audit_id = {id}"
        )],
    )
    .await;
    let mut conn = store.pool().acquire().await.unwrap();
    for sql in [
        "CREATE SCHEMA lookalike",
        "CREATE VIEW lookalike.audit_history_all AS SELECT * FROM datastorage.audit_history_all WHERE false",
        "SET search_path = lookalike, datastorage, public",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
    let rows: Vec<(i64, bool)> =
        sqlx::query_as("SELECT generation, ok FROM datastorage.verify_audit_chain($1)")
            .bind(id)
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert_eq!(rows, [(1, false)], "the function read the look-alike view");
    sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// Failed before this change (there were no checkpoints): a consistent rewrite of a whole chain and a deleted
/// audit both verified from the database alone.
#[tokio::test]
async fn a_signed_checkpoint_catches_rewrites_deletions_and_forgeries() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let key = CheckpointKey::new(b"a test key, 16+ bytes".to_vec()).unwrap();
    let mut ids = Vec::new();
    let mut uids = Vec::new();
    for i in 0..5 {
        let u = uid();
        ids.push(
            stored(
                &store,
                &prepared(
                    &u,
                    "payments",
                    &format!("a{i}"),
                    1,
                    &spec(&format!("rr-{i}"), "c1"),
                ),
            )
            .await,
        );
        uids.push(u);
    }
    let cp = store.take_checkpoint(&key).await.unwrap();
    assert_eq!(cp.count, 5);
    let report = store.verify_checkpoint(&cp, &key, None).await.unwrap();
    assert!(report.verified, "{report:?}");
    // Writes after the checkpoint do not disturb it: a new generation, a new audit.
    let mut s2 = spec("rr-0", "c1");
    s2.phase = AuditPhase::Failed;
    assert!(matches!(
        write(&store, &prepared(&uids[0], "payments", "a0", 2, &s2)).await,
        WriteOutcome::Stored(_)
    ));
    let late = stored(
        &store,
        &prepared(&uid(), "payments", "late", 1, &spec("rr-late", "c1")),
    )
    .await;
    let report = store.verify_checkpoint(&cp, &key, None).await.unwrap();
    assert!(report.verified, "{report:?}");
    let one = store
        .verify_checkpoint(&cp, &key, Some(late))
        .await
        .unwrap();
    assert_eq!((one.verified, one.covered), (true, Some(false)));

    // A consistent rewrite of audit 2's whole chain: new record, hashes recomputed, current row to match.
    let victim = ids[2];
    as_owner(
        &store,
        &[
            &format!(
                "UPDATE audit_history SET record = replace(record, '\"Success\"', '\"Failure\"') WHERE audit_id = {victim}"
            ),
            &format!(
                "UPDATE audit_history SET content_hash = encode(sha256(convert_to(record, 'UTF8')), 'hex') WHERE audit_id = {victim}"
            ),
            &format!(
                "UPDATE audit_history SET chain_hash = encode(sha256(convert_to(prev_chain_hash || content_hash, 'UTF8')), 'hex') WHERE audit_id = {victim}"
            ),
            &format!(
                "UPDATE audits a SET outcome = 'Failure', content_hash = h.content_hash, chain_hash = h.chain_hash \
                 FROM audit_history h WHERE h.audit_id = a.id AND a.id = {victim}"
            ),
        ],
    )
    .await;
    let (_, v) = verified(&store, victim).await;
    assert!(
        v.ok(),
        "the rewrite is consistent inside the database: {v:?}"
    );
    let report = store
        .verify_checkpoint(&cp, &key, Some(victim))
        .await
        .unwrap();
    assert!(
        !report.verified && report.missing_ids.is_empty(),
        "{report:?}"
    );
    assert!(report.problems[0].contains("rewritten"), "{report:?}");

    // A deleted audit (every row of it) is named.
    let gone = ids[4];
    as_owner(
        &store,
        &[
            &format!("DELETE FROM audit_history WHERE audit_id = {gone}"),
            &format!("DELETE FROM audits WHERE id = {gone}"),
        ],
    )
    .await;
    let report = store.verify_checkpoint(&cp, &key, None).await.unwrap();
    assert_eq!(report.missing_ids, [gone], "{report:?}");
    assert!(
        report.problems.iter().any(
            |p| p.contains(&format!("audit {gone} is in the checkpoint")) && p.contains("missing")
        ),
        "{report:?}"
    );

    // A checkpoint edited to hide the deletion fails its signature; another key is named as such.
    let mut forged = cp.clone();
    forged.ids = datastorage::store::checkpoint::encode_ranges(ids[..4].iter().copied());
    let report = store.verify_checkpoint(&forged, &key, None).await.unwrap();
    assert!(
        !report.verified && report.problems[0].contains("signature"),
        "{report:?}"
    );
    let other = CheckpointKey::new(b"somebody else's key".to_vec()).unwrap();
    let report = store.verify_checkpoint(&cp, &other, None).await.unwrap();
    assert!(
        !report.verified && report.problems[0].contains("key"),
        "{report:?}"
    );
}

fn run_plugin(args: &[&str]) -> (Option<i32>, String) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-audit"));
    let dir = bin.parent().unwrap().to_str().unwrap();
    let path = format!("{dir}:{}", std::env::var("PATH").unwrap_or_default());
    let out = Command::new(kubectl_path())
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Acceptance: each tamper (an UPDATE of a current row, a consistent chain rewrite, a deleted audit) makes
/// `kubectl audit verify` exit 1 naming what failed, against the signed checkpoint in the ConfigMap; an untouched
/// audit is proven by it. Failed before this change: the row UPDATE and the rewrite exited 0, the deleted audit
/// exited 2 with "does not exist".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_audit_verify_detects_each_tamper_against_the_checkpoint() {
    let env = TestEnv::new("chain").await;
    let ns = env.ns.clone();
    for (name, rr) in [
        ("intact", "rr-1"),
        ("updated", "rr-2"),
        ("rewritten", "rr-3"),
        ("deleted", "rr-4"),
    ] {
        env.kubectl(
            &["apply", "-f", "-"],
            Some(&audit_yaml(name, &format!("{rr}-{ns}"), "")),
        );
    }
    let mut ids = std::collections::BTreeMap::new();
    for name in ["intact", "updated", "rewritten", "deleted"] {
        let st = env.wait_state(name, "Persisted", WAIT).await;
        ids.insert(name, st["status"]["auditId"].as_i64().unwrap());
    }
    let cp = env.checkpoint_now().await;
    assert!(cp.count >= 4, "{cp:?}");
    let (token, binding) = env.cluster_admin_token("auditor");
    let server = env.api_url();
    let verify = |id: i64| {
        let id = id.to_string();
        run_plugin(&[
            "audit", "verify", &id, "-n", &ns, "--server", &server, "--token", &token,
        ])
    };
    let (code, out) = eventually(WAIT, "RBAC for the auditor", || async {
        let r = verify(ids["intact"]);
        (r.0 == Some(0)).then_some(r)
    })
    .await;
    assert_eq!(code, Some(0));
    assert!(out.contains("proves this audit"), "{out}");

    let store = env.store().await;
    // 1. UPDATE of a current row (the owner bypasses the guard): the row no longer shows the head record.
    as_owner(
        &store,
        &[&format!(
            "UPDATE audits SET outcome = 'Failure' WHERE id = {}",
            ids["updated"]
        )],
    )
    .await;
    let (code, out) = verify(ids["updated"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("NOT VERIFIED") && out.contains("differs from the head record in outcome"),
        "{out}"
    );

    // 2. A consistent rewrite of a whole chain: verifies inside the database, not against the checkpoint (nor
    //    against the resource's status.chainHash).
    let v = ids["rewritten"];
    as_owner(
        &store,
        &[
            &format!("UPDATE audit_history SET record = replace(record, '\"Success\"', '\"Failure\"') WHERE audit_id = {v}"),
            &format!("UPDATE audit_history SET content_hash = encode(sha256(convert_to(record, 'UTF8')), 'hex') WHERE audit_id = {v}"),
            &format!("UPDATE audit_history SET chain_hash = encode(sha256(convert_to(prev_chain_hash || content_hash, 'UTF8')), 'hex') WHERE audit_id = {v}"),
            &format!(
                "UPDATE audits a SET outcome = 'Failure', content_hash = h.content_hash, chain_hash = h.chain_hash \
                 FROM audit_history h WHERE h.audit_id = a.id AND a.id = {v}"
            ),
        ],
    )
    .await;
    let (code, out) = verify(v);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("differ from the signed checkpoint") && out.contains("rewritten"),
        "{out}"
    );
    assert!(out.contains("status.chainHash"), "{out}");

    // 3. A deleted audit: named as missing, against the checkpoint.
    let d = ids["deleted"];
    as_owner(
        &store,
        &[
            &format!("DELETE FROM audit_embeddings WHERE audit_id = {d}"),
            &format!("DELETE FROM audit_history WHERE audit_id = {d}"),
            &format!("DELETE FROM audits WHERE id = {d}"),
        ],
    )
    .await;
    let (code, out) = verify(d);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("audit {d} is missing from the store")) && out.contains("checkpoint"),
        "{out}"
    );
    kubectl(&["delete", "clusterrolebinding", &binding], None);
}

/// A RemediationAudit rejected as a duplicate is stored once its holder's resource is deleted (the controller
/// tries duplicates again). Failed before this change: it stayed Rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_duplicate_is_stored_once_the_holder_goes() {
    let env = TestEnv::new("chain-dup").await;
    let rr = format!("rr-{}", env.ns);
    env.kubectl(&["apply", "-f", "-"], Some(&audit_yaml("holder", &rr, "")));
    env.wait_state("holder", "Persisted", WAIT).await;
    env.kubectl(&["apply", "-f", "-"], Some(&audit_yaml("second", &rr, "")));
    let st = env.wait_state("second", "Rejected", WAIT).await;
    let msg = st["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("holder"), "{msg}");
    env.kubectl(&["delete", "raudit", "holder", "--wait=true"], None);
    env.wait_state("second", "Persisted", Duration::from_secs(120))
        .await;
}

/// Retention is not tampering (issue 22, "retention vs verification"): retention drops whole monthly partitions, so
/// an audit's early generations can go while later ones stay. Verification starts the chain at the chain end
/// retention recorded (migration 0005) and says so; a gap nobody recorded still fails. Failed before this change:
/// `kubectl audit verify` of the purged audit exited 1 ("prev_chain_hash does not match"), like a tampered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_tells_retention_from_tampering() {
    let env = TestEnv::new("retention").await;
    let ns = env.ns.clone();
    let store = env.store().await;
    let mut ids = Vec::new();
    for (name, generations) in [("purged", 3), ("gap", 2)] {
        let u = uid();
        let mut id = 0;
        for g in 1..=generations {
            let mut s = spec(&format!("rr-{name}-{ns}"), "prod-eu-1");
            s.error_message = Some(format!("generation {g} of {name}"));
            id = stored(&store, &prepared(&u, &ns, name, g, &s)).await;
        }
        ids.push(id);
    }
    let (purged, gap) = (ids[0], ids[1]);
    // The purged audit's first two generations were recorded in January 2019; retention (365 days) drops them.
    as_owner(
        &store,
        &[
            "CREATE TABLE audit_history_2019_01 PARTITION OF audit_history \
             FOR VALUES FROM ('2019-01-01') TO ('2019-02-01')",
            &format!(
                "UPDATE audit_history SET recorded_at = '2019-01-15T00:00:00Z' \
                 WHERE audit_id = {purged} AND generation < 3"
            ),
            // The other audit loses its first generation by hand: nothing explains the gap.
            &format!("DELETE FROM audit_history WHERE audit_id = {gap} AND generation = 1"),
        ],
    )
    .await;
    // (The operator's own retention run, 2555 days by default, may drop it first: either way it goes.)
    store.apply_retention(365, &[]).await.unwrap();
    let runs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM retention_runs WHERE partition = 'audit_history_2019_01'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(runs, 1, "retention dropped the January 2019 partition once");

    let (token, binding) = env.cluster_admin_token("retention-auditor");
    let server = env.api_url();
    let verify = |id: i64| {
        let id = id.to_string();
        run_plugin(&[
            "audit", "verify", &id, "-n", &ns, "--server", &server, "--token", &token,
        ])
    };
    let (code, out) = eventually(WAIT, "RBAC for the auditor", || async {
        let r = verify(purged);
        (r.0 != Some(2)).then_some(r)
    })
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("verified from generation 3; generations up to 2 purged by retention on"),
        "{out}"
    );
    let (code, out) = verify(gap);
    assert_eq!(
        code,
        Some(1),
        "a gap no retention explains must not verify: {out}"
    );
    // The API says the same, in JSON.
    let detail: serde_json::Value = reqwest::Client::new()
        .get(format!("{server}/api/v1/audits/{purged}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["chainVerified"], true, "{detail}");
    assert_eq!(detail["historyPurged"]["throughGeneration"], 2, "{detail}");
    let _ = crate::support::kube::kubectl_raw(&["delete", "clusterrolebinding", &binding], None);
}
