//! The RemediationAudit controller end to end: real kube-apiserver, real kubectl, real PostgreSQL.

use std::time::Duration;

use crate::support::kube::{
    EnvOptions, TestEnv, audit_yaml, dstore, dstore_condition, eventually, kubectl, kubectl_raw,
    patch_dstore, wait_dstore_phase,
};
use sqlx::Row;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_audit_is_persisted_with_a_row_and_printer_columns() {
    let env = TestEnv::new("persist").await;
    env.kubectl(&["apply", "-f", "-"], Some(&audit_yaml(
        "oom-1",
        "rr-persist-1",
        "  errorMessage: 'OOMKilled; DSN postgres://app:hunter2@db:5432/app'\n  details:\n    env:\n      DB_PASSWORD: s3cr3t\n",
    )));
    // No admission webhook here: the operator stores generation 1 redacted, then redacts the resource's own spec in
    // place (generation 2, stored too).
    let obj = eventually(
        WAIT,
        "generation 2 (the spec redacted in place) persisted",
        || async {
            let v = env.wait_state("oom-1", "Persisted", WAIT).await;
            (v["metadata"]["generation"] == 2).then_some(v)
        },
    )
    .await;
    let spec = obj["spec"].to_string();
    assert!(
        !spec.contains("hunter2") && !spec.contains("s3cr3t"),
        "{spec}"
    );
    let status = &obj["status"];
    let audit_id = status["auditId"].as_i64().unwrap();
    assert_eq!(status["embedding"], "Stored");
    assert_eq!(status["contentHash"].as_str().unwrap().len(), 64);
    assert!(
        obj["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "datastorage.kubernaut.ai/audit")
    );
    let conds: Vec<(String, String)> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(conds.contains(&("Validated".into(), "True".into())));
    assert!(conds.contains(&("Persisted".into(), "True".into())));
    assert!(conds.contains(&("Embedded".into(), "True".into())));

    // The row, its history and its vector are in PostgreSQL; the secrets are not.
    let store = env.store().await;
    let row = sqlx::query(
        "SELECT a.namespace, a.name, a.error_message, a.details::text AS details,
                (SELECT count(*) FROM audit_history h WHERE h.audit_id = a.id) AS history,
                (SELECT count(*) FROM audit_embeddings e WHERE e.audit_id = a.id) AS vectors
         FROM audits a WHERE a.id = $1",
    )
    .bind(audit_id)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("namespace"), env.ns);
    assert_eq!(row.get::<String, _>("name"), "oom-1");
    assert_eq!(row.get::<i64, _>("history"), 2);
    assert_eq!(row.get::<i64, _>("vectors"), 1);
    let error: String = row.get("error_message");
    let details: String = row.get("details");
    assert!(
        !error.contains("hunter2") && error.contains("[REDACTED:postgres_url]"),
        "{error}"
    );
    assert!(!details.contains("s3cr3t"), "{details}");

    // kubectl get shows the printer columns with values.
    let table = kubectl(&["get", "raudit", "-A"], None);
    let header = table.lines().next().unwrap();
    for col in ["PHASE", "OUTCOME", "STATE", "EMBEDDED", "AUDIT-ID", "AGE"] {
        assert!(header.contains(col), "{table}");
    }
    let line = table.lines().find(|l| l.contains(&env.ns)).unwrap();
    assert!(
        line.contains("Completed") && line.contains("Success") && line.contains("Persisted"),
        "{table}"
    );
    assert!(
        line.contains("Stored") && line.contains(&audit_id.to_string()),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_audit_is_rejected_naming_the_field() {
    let env = TestEnv::new("reject").await;
    // A rule the API server cannot check (CEL has no clock), so the object is admitted and the operator rejects it;
    // the rules it can check fail `kubectl apply` itself (tests/it/crds.rs).
    let yaml = audit_yaml("bad-1", "rr-reject-1", "")
        .replace(
            "startTime: \"2026-01-10T10:00:00Z\"",
            "startTime: \"2099-01-10T10:00:00Z\"",
        )
        .replace(
            "endTime: \"2026-01-10T10:00:42Z\"",
            "endTime: \"2099-01-10T10:00:42Z\"",
        );
    env.kubectl(&["apply", "-f", "-"], Some(&yaml));
    let obj = env.wait_state("bad-1", "Rejected", WAIT).await;
    let message = obj["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.startTime") && message.contains("future_time"),
        "{message}"
    );
    let validated = obj["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Validated")
        .unwrap();
    assert_eq!(validated["status"], "False");
    // A Warning Event names the rule, for `kubectl describe` and `kubectl get events`.
    let note = eventually(WAIT, "a Warning Event Rejected", || async {
        let out = env.kubectl(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=bad-1,type=Warning,reason=Rejected",
                "-o",
                "jsonpath={.items[*].message}",
            ],
            None,
        );
        (!out.trim().is_empty()).then_some(out)
    })
    .await;
    assert!(note.contains("spec.startTime"), "{note}");
    let store = env.store().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audits")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);

    // Fixing the spec stores it.
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("bad-1", "rr-reject-1", "")),
    );
    env.wait_state("bad-1", "Persisted", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_request_id_is_rejected() {
    let env = TestEnv::new("dup").await;
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("first", "rr-dup-1", "")),
    );
    env.wait_state("first", "Persisted", WAIT).await;
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("second", "rr-dup-1", "")),
    );
    let obj = env.wait_state("second", "Rejected", WAIT).await;
    let msg = obj["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("remediationRequestId") && msg.contains("duplicate") && msg.contains("first"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_edit_appends_history_and_delete_keeps_the_row() {
    let env = TestEnv::new("edit").await;
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("a1", "rr-edit-1", "")),
    );
    let first = env.wait_state("a1", "Persisted", WAIT).await;
    let id = first["status"]["auditId"].as_i64().unwrap();
    let edited = audit_yaml("a1", "rr-edit-1", "").replace("outcome: Success", "outcome: Failure");
    env.kubectl(&["apply", "-f", "-"], Some(&edited));
    let second = env.wait_state("a1", "Persisted", WAIT).await;
    assert_eq!(second["status"]["auditId"].as_i64(), Some(id));
    assert_ne!(second["status"]["chainHash"], first["status"]["chainHash"]);
    let store = env.store().await;
    let history = store.history(id).await.unwrap();
    assert_eq!(history.len(), 2);
    assert!(store.verify_chain(id).await.unwrap().iter().all(|c| c.ok));

    env.kubectl(
        &["delete", "raudit", "a1", "--wait=true", "--timeout=60s"],
        None,
    );
    let deleted: bool =
        sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM audits WHERE id = $1")
            .bind(id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(deleted);
    assert_eq!(store.history(id).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_gives_retrying_then_exactly_one_row() {
    // A private PostgreSQL cluster, so stopping it does not disturb other tests.
    let pg = crate::support::Service::postgres();
    let url = pg.url.clone();
    let env = TestEnv::with(
        "outage",
        EnvOptions {
            url: Some(url.clone()),
            ..EnvOptions::default()
        },
    )
    .await;
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("before", "rr-outage-0", "")),
    );
    env.wait_state("before", "Persisted", WAIT).await;

    pg.run("stop");
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("during", "rr-outage-1", "")),
    );
    let obj = env.wait_state("during", "Retrying", WAIT).await;
    assert!(
        obj["status"]["message"]
            .as_str()
            .unwrap()
            .contains("retrying")
    );

    pg.run("start");
    let obj = env
        .wait_state("during", "Persisted", Duration::from_secs(120))
        .await;
    let id = obj["status"]["auditId"].as_i64().unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM datastorage.audits WHERE remediation_request_id = 'rr-outage-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, 1);
    let hist: i64 =
        sqlx::query_scalar("SELECT count(*) FROM datastorage.audit_history WHERE audit_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(hist, 1);
    pool.close().await;
    drop(env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datastorage_reports_versions_and_recovers_from_a_broken_secret() {
    let env = TestEnv::with(
        "dstore",
        EnvOptions {
            spec_extra: "  embedding:\n    provider: Hash\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let ready = eventually(WAIT, "DataStorage Ready", || async {
        let v = dstore(&env.ns)?;
        (v["status"]["phase"] == "Ready").then_some(v)
    })
    .await;
    assert!(
        ready["status"]["postgresVersion"]
            .as_str()
            .unwrap()
            .starts_with("18.")
    );
    assert!(
        ready["status"]["pgvectorVersion"]
            .as_str()
            .unwrap()
            .starts_with("0.8")
    );
    let table = kubectl(&["get", "dstore", &env.ns], None);
    assert!(
        table.contains("Ready") && table.contains("18.") && table.contains("0.8"),
        "{table}"
    );

    // Break the Secret reference: DatabaseReachable=False with the reason.
    patch_dstore(
        &env.ns,
        r#"{"spec":{"database":{"urlSecretRef":{"name":"nope"}}}}"#,
    );
    eventually(WAIT, "DatabaseReachable=False/SecretNotFound", || async {
        let c = dstore_condition(&env.ns, "DatabaseReachable")?;
        let phase = dstore(&env.ns)?["status"]["phase"].clone();
        (c["status"] == "False" && c["reason"] == "SecretNotFound" && phase == "Failed")
            .then_some(())
    })
    .await;
    // Fix it: recovers without a restart.
    patch_dstore(
        &env.ns,
        r#"{"spec":{"database":{"urlSecretRef":{"name":"db"}}}}"#,
    );
    wait_dstore_phase(&env.ns, "Ready", WAIT).await;

    // Changing the index parameters rebuilds the index live; IndexReady comes back True with the new definition.
    patch_dstore(
        &env.ns,
        r#"{"spec":{"vectorIndex":{"m":24,"efConstruction":80}}}"#,
    );
    let store = env.store().await;
    eventually(WAIT, "the HNSW index rebuilt with m=24", || async {
        let def = store.index_definition().await.ok()??;
        let ready = dstore_condition(&env.ns, "IndexReady")?["status"] == "True";
        (def.contains("m='24'") && ready).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_versions_block_writes() {
    let env = TestEnv::with(
        "versions",
        EnvOptions {
            spec_extra: "  embedding:\n    provider: Hash\n  requirements:\n    minPostgresMajor: 99\n    minPgvector: \"9.0.0\"\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("blocked", "rr-blocked-1", "")),
    );
    // Until the DataStorage controller has checked the versions the audit waits as "not ready"; then the message
    // names the unmet requirement.
    let msg = eventually(
        WAIT,
        "a Retrying status naming the PostgreSQL requirement",
        || async {
            let obj = env.wait_state("blocked", "Retrying", WAIT).await;
            let msg = obj["status"]["message"].as_str()?.to_string();
            (msg.contains("PostgreSQL") && msg.contains("99")).then_some(msg)
        },
    )
    .await;
    assert!(msg.contains("writes are blocked"), "{msg}");
    let c = dstore_condition(&env.ns, "VersionsSupported").unwrap();
    assert_eq!(c["status"], "False");
    assert!(c["message"].as_str().unwrap().contains("pgvector 0.8"));

    // Lowering the requirement unblocks the write without a restart.
    patch_dstore(
        &env.ns,
        r#"{"spec":{"requirements":{"minPostgresMajor":16,"minPgvector":"0.5.1"}}}"#,
    );
    env.wait_state("blocked", "Persisted", Duration::from_secs(120))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cr_ttl_deletes_the_resource_and_keeps_the_row() {
    let env = TestEnv::with(
        "ttl",
        EnvOptions {
            spec_extra:
                "  embedding:\n    provider: Hash\n  retention:\n    crTtlAfterPersisted: 2s\n"
                    .into(),
            ..EnvOptions::default()
        },
    )
    .await;
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("short-lived", "rr-ttl-1", "")),
    );
    eventually(WAIT, "the CR to be deleted after its TTL", || async {
        let out = kubectl_raw(&["-n", &env.ns, "get", "raudit", "short-lived"], None);
        (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"))
            .then_some(())
    })
    .await;
    let store = env.store().await;
    let row = sqlx::query(
        "SELECT deleted_at IS NULL AS kept FROM audits WHERE remediation_request_id = 'rr-ttl-1'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(
        row.get::<bool, _>("kept"),
        "a TTL expiry is not a user's deletion"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_rejects_a_non_structural_crd_and_accepts_ours() {
    crate::support::kube::ensure_crds();
    let bad = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.broken.example.com
spec:
  group: broken.example.com
  names: {kind: Widget, plural: widgets}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            properties:
              anything: {}
"#;
    let out = kubectl_raw(&["apply", "-f", "-"], Some(bad));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("type: Required value") || err.contains("must not be empty"),
        "{err}"
    );
    let ours = kubectl(
        &[
            "get",
            "crd",
            "remediationaudits.datastorage.kubernaut.ai",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ],
        None,
    );
    assert_eq!(ours, "True");
}

/// A tenant who sets the operator's expiry annotation and then deletes does not hide the deletion: only the
/// operator's own TTL deletion (the TTL had passed by the store's `persisted_at`) goes unrecorded. Failed before
/// the fix (the annotation alone skipped the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_expiry_annotation_does_not_hide_a_deletion() {
    let env = TestEnv::with(
        "forged",
        EnvOptions {
            spec_extra:
                "  embedding:\n    provider: Hash\n  retention:\n    crTtlAfterPersisted: 1h\n"
                    .into(),
            ..EnvOptions::default()
        },
    )
    .await;
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("forged", "rr-forged-1", "")),
    );
    let obj = env.wait_state("forged", "Persisted", WAIT).await;
    let id = obj["status"]["auditId"].as_i64().unwrap();
    env.kubectl(
        &[
            "annotate",
            "raudit",
            "forged",
            "datastorage.kubernaut.ai/expired=true",
        ],
        None,
    );
    env.kubectl(
        &["delete", "raudit", "forged", "--wait=true", "--timeout=60s"],
        None,
    );
    let store = env.store().await;
    let deleted: bool =
        sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM audits WHERE id = $1")
            .bind(id)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(
        deleted,
        "a tenant's deletion before the TTL was hidden by the annotation"
    );
}

/// Deleting the DataStorage stops writes and queries until one is back (issue 21, item 10). Failed before the
/// change: the controller only reconciles objects that exist, so the last runtime stayed published after the
/// delete and new audits went on being stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_datastorage_stops_writes_until_it_is_back() {
    let env = TestEnv::new("ds-delete").await;
    let ns = env.ns.clone();
    let op = env.operator.as_ref().unwrap();
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("before", "rr-before", "")),
    );
    env.wait_state("before", "Persisted", WAIT).await;
    let saved = kubectl(&["get", "dstore", &ns, "-o", "yaml"], None);

    kubectl(&["delete", "dstore", &ns, "--wait=true"], None);
    eventually(WAIT, "the runtime withdrawn", || async {
        op.context.current_runtime().is_none().then_some(())
    })
    .await;
    let readyz = reqwest::get(format!("http://{}/readyz", op.ops_addr))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    let api = reqwest::get(format!("http://{}/api/v1/audits", op.api_addr))
        .await
        .unwrap();
    assert!(
        [401, 503].contains(&api.status().as_u16()),
        "{}",
        api.status()
    );

    // An audit created meanwhile is not stored...
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("during", "rr-during", "")),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let store = env.store().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM audits WHERE name = 'during'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0, "an audit was stored with no DataStorage");

    // ... and is, once the DataStorage is back.
    let recreated: String = saved
        .lines()
        .filter(|l| {
            !l.trim_start().starts_with("resourceVersion:") && !l.trim_start().starts_with("uid:")
        })
        .collect::<Vec<_>>()
        .join("\n");
    kubectl(&["apply", "-f", "-"], Some(&recreated));
    env.wait_state("during", "Persisted", WAIT).await;
}

/// `/readyz` says why a replica is not ready: the DataStorage it serves does not exist (a default `helm install`,
/// which creates none), or which condition fails; and it is 200 once the store is Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_missing_or_failing_datastorage() {
    let mut env = TestEnv::with(
        "readyz",
        EnvOptions {
            start_operator: false,
            ..EnvOptions::default()
        },
    )
    .await;
    let missing = format!("{}-missing", env.ns);
    let lonely = datastorage::operator::start(
        env.client.clone(),
        datastorage::operator::Options {
            namespace: Some(env.ns.clone()),
            ..datastorage::operator::Options::local(missing.clone())
        },
    )
    .await
    .unwrap();
    let readyz = |addr: std::net::SocketAddr| async move {
        let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    // As if it ran in a pod: the reason is published as a Warning Event on it (once, not once per probe).
    lonely.context.set_self_pod(&env.ns, "readyz-pod");
    for _ in 0..3 {
        let (code, body) = readyz(lonely.ops_addr).await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains(&format!("DataStorage {missing:?} does not exist"))
                && body.contains("dataStorage.create=true"),
            "{body}"
        );
    }
    let events = eventually(WAIT, "a NotReady Warning Event on the pod", || async {
        let list: serde_json::Value = serde_json::from_str(&kubectl(
            &["-n", &env.ns, "get", "events.events.k8s.io", "-o", "json"],
            None,
        ))
        .ok()?;
        let on_pod: Vec<serde_json::Value> = list["items"]
            .as_array()?
            .iter()
            .filter(|e| e["regarding"]["name"] == "readyz-pod" && e["reason"] == "NotReady")
            .cloned()
            .collect();
        (!on_pod.is_empty()).then_some(on_pod)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["regarding"]["kind"], "Pod");
    assert!(
        events[0]["note"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{events:?}"
    );
    assert!(
        events[0]["series"].is_null(),
        "three probes, one reason: one event, no series: {events:?}"
    );
    lonely.task.abort();

    // A DataStorage whose Secret is missing: the reason names the phase and the Ready condition's message.
    patch_dstore(
        &env.ns,
        r#"{"spec":{"database":{"urlSecretRef":{"name":"nope"}}}}"#,
    );
    env.start_operator().await;
    let ops = env.operator.as_ref().unwrap().ops_addr;
    let body = eventually(WAIT, "/readyz naming the failing condition", || async {
        let (code, body) = readyz(ops).await;
        (code == 503 && body.contains("phase Failed")).then_some(body)
    })
    .await;
    assert!(
        body.contains(&format!("DataStorage {:?} is not Ready", env.ns))
            && body.contains("DatabaseReachable: SecretNotFound"),
        "{body}"
    );
    patch_dstore(
        &env.ns,
        r#"{"spec":{"database":{"urlSecretRef":{"name":"db"}}}}"#,
    );
    eventually(WAIT, "/readyz 200 once Ready", || async {
        (readyz(ops).await.0 == 200).then_some(())
    })
    .await;
}
