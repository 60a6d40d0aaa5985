//! The query API end to end: the in-process operator's HTTP API on the real PostgreSQL, authenticated and
//! authorized by the real kube-apiserver (TokenReview, SubjectAccessReview, RBAC created with kubectl, tokens from
//! `kubectl create token`), and the `kubectl audit` plugin run through the real kubectl.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::kube::{TestEnv, audit_yaml, eventually, kubeconfig, kubectl, kubectl_path};
use chrono::{DateTime, TimeZone, Utc};
use datastorage::audit::{AuditMeta, SanitizeConfig, prepare};
use datastorage::crd::{AuditOutcome, AuditPhase, RemediationAuditSpec};
use datastorage::runtime::StoreRuntime;
use datastorage::store::{AuditWrite, EmbeddingRow, Store, WriteOutcome};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
pub(crate) const RAUDIT: &str = "remediationaudits.datastorage.kubernaut.ai";

pub(crate) async fn runtime(env: &TestEnv) -> Arc<StoreRuntime> {
    let ctx = env.operator.as_ref().unwrap().context.clone();
    eventually(WAIT, "the store runtime", || {
        let ctx = ctx.clone();
        async move { ctx.current_runtime() }
    })
    .await
}

/// Stores one audit directly (with its vector from the runtime's embedder); returns its id.
pub(crate) async fn insert(
    rt: &StoreRuntime,
    ns: &str,
    name: &str,
    start: DateTime<Utc>,
    error: &str,
) -> i64 {
    let spec = RemediationAuditSpec {
        remediation_request_id: format!("rr-{ns}-{name}"),
        alert_fingerprint: "fp".into(),
        alert_name: Some("KubePodOOMKilled".into()),
        phase: AuditPhase::Completed,
        outcome: AuditOutcome::Success,
        action_type: "restart-pod".into(),
        severity: "critical".into(),
        environment: "production".into(),
        cluster_name: "prod-eu-1".into(),
        target_resource: "apps/v1/Deployment/payments/api".into(),
        start_time: start.to_rfc3339(),
        end_time: None,
        error_message: Some(error.into()),
        details: None,
    };
    let meta = AuditMeta {
        uid: uuid::Uuid::new_v4().to_string(),
        namespace: ns.into(),
        name: name.into(),
        generation: 1,
    };
    let prepared = prepare(&meta, &spec, SanitizeConfig::default(), Utc::now()).unwrap();
    let embedder = rt.embedder.as_ref().unwrap();
    let vector = embedder
        .embed(std::slice::from_ref(&prepared.embedding_text))
        .await
        .unwrap()
        .remove(0);
    let out = rt
        .store
        .write_audit(&AuditWrite {
            prepared: &prepared,
            embedding: Some(EmbeddingRow {
                model_id: embedder.model_id().to_string(),
                vector,
            }),
        })
        .await
        .unwrap();
    match out {
        WriteOutcome::Stored(s) => s.audit_id,
        other => panic!("{other:?}"),
    }
}

pub(crate) fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, 0).unwrap()
}

/// A ServiceAccount in `ns` and a token for it, minted for the query API's audience.
pub(crate) fn service_account(ns: &str, name: &str) -> String {
    kubectl(&["-n", ns, "create", "serviceaccount", name], None);
    api_token(ns, name)
}

/// A token of ServiceAccount `ns/name` for the query API (audience `datastorage`, one hour).
pub(crate) fn api_token(ns: &str, name: &str) -> String {
    kubectl(
        &[
            "-n",
            ns,
            "create",
            "token",
            name,
            "--duration=1h",
            "--audience",
            datastorage::api::auth::DEFAULT_AUDIENCE,
        ],
        None,
    )
    .trim()
    .to_string()
}

/// Waits until RBAC answers `expected` for `kubectl auth can-i list remediationaudits` as that ServiceAccount.
pub(crate) fn wait_can_i(sa_ns: &str, sa: &str, ns_flag: &[&str], expected: bool) {
    let user = format!("system:serviceaccount:{sa_ns}:{sa}");
    for _ in 0..100 {
        let mut args = vec!["auth", "can-i", "list", RAUDIT, "--as", &user];
        args.extend_from_slice(ns_flag);
        let out = crate::support::kube::kubectl_raw(&args, None);
        let yes = String::from_utf8_lossy(&out.stdout).trim() == "yes";
        if yes == expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("RBAC for {user} {ns_flag:?} never became {expected}");
}

/// ServiceAccount `ns/sa` allowed to list audits in `ns` only (a Role and a RoleBinding named `sa`), once RBAC
/// says so; its token for the query API.
pub(crate) fn reader_in(ns: &str, sa: &str) -> String {
    let token = service_account(ns, sa);
    kubectl(
        &[
            "-n",
            ns,
            "create",
            "role",
            sa,
            "--verb=list",
            &format!("--resource={RAUDIT}"),
        ],
        None,
    );
    kubectl(
        &[
            "-n",
            ns,
            "create",
            "rolebinding",
            sa,
            &format!("--role={sa}"),
            &format!("--serviceaccount={ns}:{sa}"),
        ],
        None,
    );
    wait_can_i(ns, sa, &["-n", ns], true);
    token
}

/// ServiceAccount `ns/sa` allowed to list audits in every namespace (a ClusterRole and binding named `<ns>-<sa>`),
/// once RBAC says so; its token for the query API.
pub(crate) fn reader_everywhere(ns: &str, sa: &str) -> String {
    let token = service_account(ns, sa);
    let role = format!("{ns}-{sa}");
    kubectl(
        &[
            "create",
            "clusterrole",
            &role,
            "--verb=list",
            &format!("--resource={RAUDIT}"),
        ],
        None,
    );
    kubectl(
        &[
            "create",
            "clusterrolebinding",
            &role,
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={ns}:{sa}"),
        ],
        None,
    );
    wait_can_i(ns, sa, &["-A"], true);
    token
}

/// Removes what [`reader_everywhere`] made cluster-wide (the ServiceAccount goes with its namespace).
pub(crate) fn remove_reader_everywhere(ns: &str, sa: &str) {
    let role = format!("{ns}-{sa}");
    for kind in ["clusterrolebinding", "clusterrole"] {
        let _ = crate::support::kube::kubectl_raw(&["delete", kind, &role], None);
    }
}

pub(crate) struct Http {
    base: String,
    http: reqwest::Client,
}

impl Http {
    pub(crate) fn new(env: &TestEnv) -> Self {
        Self {
            base: env.api_url(),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn get(&self, token: Option<&str>, path: &str) -> (u16, String, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    pub(crate) async fn search(&self, token: &str, body: Value) -> (u16, String, Value) {
        self.post_json("/api/v1/audits/search", token, body).await
    }

    pub(crate) async fn insights(&self, token: &str, body: Value) -> (u16, String, Value) {
        self.post_json("/api/v1/audits/insights", token, body).await
    }

    pub(crate) async fn post_json(
        &self,
        path: &str,
        token: &str,
        body: Value,
    ) -> (u16, String, Value) {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body);
        Self::answer(req.send().await.unwrap()).await
    }

    async fn answer(resp: reqwest::Response) -> (u16, String, Value) {
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.bytes().await.unwrap();
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
        (status, ct, v)
    }
}

pub(crate) fn ids(items: &Value) -> Vec<i64> {
    let mut v: Vec<i64> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    v.sort();
    v
}

pub(crate) fn assert_problem(answer: &(u16, String, Value), status: u16, parameter: Option<&str>) {
    let (s, ct, body) = answer;
    assert_eq!(*s, status, "{body}");
    assert_eq!(ct, "application/problem+json", "{body}");
    assert_eq!(body["status"], status, "{body}");
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "{field} missing: {body}");
    }
    if let Some(p) = parameter {
        assert_eq!(body["parameter"], p, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_matrix_limits_every_caller_to_the_namespaces_they_may_list() {
    let env = TestEnv::new("api-rbac").await;
    let ns_a = env.ns.clone();
    let ns_b = format!("{ns_a}-b");
    kubectl(&["create", "namespace", &ns_b], None);
    let rt = runtime(&env).await;
    let a1 = insert(&rt, &ns_a, "a-1", at(10), "container api was OOM killed").await;
    let a2 = insert(&rt, &ns_a, "a-2", at(20), "pod keeps getting OOM killed").await;
    let b1 = insert(&rt, &ns_b, "b-1", at(30), "pod keeps getting OOM killed").await;

    // reader-a: list in A only (Role + RoleBinding); reader-all: cluster-wide; nobody: nothing.
    let reader_a = reader_in(&ns_a, "reader-a");
    let reader_all = reader_everywhere(&ns_a, "reader-all");
    let nobody = service_account(&ns_a, "nobody");

    let api = Http::new(&env);

    // reader-a
    let (s, _, page) = api.get(Some(&reader_a), "/api/v1/audits").await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(ids(&page["items"]), vec![a1, a2]);
    assert!(page["nextCursor"].is_null(), "{page}");
    let (s, _, page) = api
        .get(Some(&reader_a), &format!("/api/v1/audits?namespace={ns_a}"))
        .await;
    assert_eq!((s, ids(&page["items"])), (200, vec![a1, a2]));
    assert_problem(
        &api.get(Some(&reader_a), &format!("/api/v1/audits?namespace={ns_b}"))
            .await,
        403,
        None,
    );
    assert_problem(
        &api.get(Some(&reader_a), &format!("/api/v1/audits/{b1}"))
            .await,
        404,
        None,
    );
    let (s, _, detail) = api
        .get(Some(&reader_a), &format!("/api/v1/audits/{a2}"))
        .await;
    assert_eq!(s, 200, "{detail}");
    assert_eq!(detail["audit"]["name"], "a-2");
    assert_eq!(detail["chainVerified"], true, "{detail}");
    assert_eq!(detail["history"].as_array().unwrap().len(), 1);
    let (s, _, found) = api
        .search(&reader_a, json!({"query": "pod keeps getting OOM killed"}))
        .await;
    assert_eq!(s, 200, "{found}");
    assert_eq!(ids(&found["results"]), vec![a1, a2], "{found}");
    assert_problem(
        &api.search(&reader_a, json!({"query": "OOM", "namespace": ns_b}))
            .await,
        403,
        None,
    );
    assert_problem(
        &api.search(&reader_a, json!({"similarToId": b1})).await,
        404,
        Some("similarToId"),
    );
    let (s, _, similar) = api.search(&reader_a, json!({"similarToId": a1})).await;
    assert_eq!((s, ids(&similar["results"])), (200, vec![a2]), "{similar}");

    // reader-all
    let (s, _, page) = api.get(Some(&reader_all), "/api/v1/audits").await;
    assert_eq!((s, ids(&page["items"])), (200, vec![a1, a2, b1]));
    let (s, _, detail) = api
        .get(Some(&reader_all), &format!("/api/v1/audits/{b1}"))
        .await;
    assert_eq!(
        (s, detail["audit"]["namespace"].as_str()),
        (200, Some(ns_b.as_str()))
    );
    let (s, _, found) = api
        .search(
            &reader_all,
            json!({"query": "pod keeps getting OOM killed"}),
        )
        .await;
    assert_eq!((s, ids(&found["results"])), (200, vec![a1, a2, b1]));

    // nobody: empty without a namespace, 403 naming one, 404 by id.
    let (s, _, page) = api.get(Some(&nobody), "/api/v1/audits").await;
    assert_eq!((s, ids(&page["items"])), (200, vec![]));
    let (s, _, found) = api.search(&nobody, json!({"query": "OOM"})).await;
    assert_eq!((s, ids(&found["results"])), (200, vec![]));
    assert_problem(
        &api.get(Some(&nobody), &format!("/api/v1/audits?namespace={ns_a}"))
            .await,
        403,
        None,
    );
    assert_problem(
        &api.get(Some(&nobody), &format!("/api/v1/audits/{a1}"))
            .await,
        404,
        None,
    );

    // Authentication and parameters.
    assert_problem(&api.get(None, "/api/v1/audits").await, 401, None);
    assert_problem(
        &api.get(Some("garbage-token"), "/api/v1/audits").await,
        401,
        None,
    );
    assert_problem(
        &api.get(Some(&reader_all), "/api/v1/audits?limit=0").await,
        400,
        Some("limit"),
    );
    assert_problem(
        &api.get(Some(&reader_all), "/api/v1/audits?cursor=not-a-cursor")
            .await,
        400,
        Some("cursor"),
    );
    assert_problem(
        &api.get(Some(&reader_all), "/api/v1/audits/abc").await,
        400,
        Some("id"),
    );
    assert_problem(
        &api.search(&reader_all, json!({"query": "x", "limit": 0}))
            .await,
        400,
        Some("limit"),
    );

    // Every outcome is counted.
    let m = &env.operator.as_ref().unwrap().context.metrics;
    let count = |op: &str, status: &str| m.query_total.with_label_values(&[op, status]).get();
    assert!(count("list", "success") >= 4);
    assert!(count("list", "unauthorized") >= 2);
    assert!(count("list", "forbidden") >= 2);
    assert!(count("list", "client_error") >= 2);
    assert!(count("get", "client_error") >= 3);
    assert!(count("search", "forbidden") >= 1);
    assert!(
        m.query_duration
            .with_label_values(&["search"])
            .get_sample_count()
            >= 5
    );

    remove_reader_everywhere(&ns_a, "reader-all");
    let _ =
        crate::support::kube::kubectl_raw(&["delete", "namespace", &ns_b, "--wait=false"], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyset_pagination_returns_every_row_once_while_rows_are_inserted() {
    let env = TestEnv::new("api-page").await;
    let rt = runtime(&env).await;
    let ns = env.ns.clone();
    // 30 rows; pairs share a start_time so the id tie-break matters.
    let mut before = Vec::new();
    for i in 0..30 {
        before.push(
            insert(
                &rt,
                &ns,
                &format!("old-{i}"),
                at(1000 + (i / 2) * 10),
                "OOM",
            )
            .await,
        );
    }
    let token = reader_in(&ns, "pager");

    let api = Http::new(&env);
    let mut seen: Vec<i64> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    let mut inserted = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/audits?namespace={ns}&limit=7&cursor={c}"),
            None => format!("/api/v1/audits?namespace={ns}&limit=7"),
        };
        let (s, _, page) = api.get(Some(&token), &path).await;
        assert_eq!(s, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        // Newest first, ties by id descending.
        let keys: Vec<(String, i64)> = items
            .iter()
            .map(|i| {
                (
                    i["startTime"].as_str().unwrap().to_string(),
                    i["id"].as_i64().unwrap(),
                )
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(keys, sorted);
        seen.extend(keys.iter().map(|k| k.1));
        pages += 1;
        // Concurrent writers: one newer than everything, one inside the range, one older than everything.
        for (j, t) in [at(5000 + pages), at(1055), at(pages)]
            .into_iter()
            .enumerate()
        {
            insert(&rt, &ns, &format!("new-{pages}-{j}"), t, "OOM").await;
            inserted += 1;
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 50, "pagination does not end");
    }
    for id in &before {
        assert_eq!(
            seen.iter().filter(|s| *s == id).count(),
            1,
            "row {id} in {seen:?}"
        );
    }
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        dedup.len(),
        seen.len(),
        "a row was returned twice: {seen:?}"
    );
    assert!(pages >= 5 && inserted >= 15);
}

pub(crate) fn run_plugin(args: &[&str], path_dir: &str) -> std::process::Output {
    let path = format!("{path_dir}:{}", std::env::var("PATH").unwrap_or_default());
    Command::new(kubectl_path())
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_audit_plugin_searches_lists_gets_and_verifies() {
    let env = TestEnv::new("api-cli").await;
    let ns = env.ns.clone();
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml(
            "oom-api",
            &format!("rr-{ns}-1"),
            "  errorMessage: 'container api was OOMKilled, pod keeps getting killed'\n",
        )),
    );
    env.kubectl(
        &["apply", "-f", "-"],
        Some(
            &audit_yaml("drain-1", &format!("rr-{ns}-2"), "")
                .replace("actionType: restart-pod", "actionType: drain-node"),
        ),
    );
    let id = env.wait_state("oom-api", "Persisted", WAIT).await["status"]["auditId"]
        .as_i64()
        .unwrap();
    env.wait_state("drain-1", "Persisted", WAIT).await;
    let token = reader_in(&ns, "sre");

    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-audit"));
    let dir = bin.parent().unwrap().to_str().unwrap().to_string();
    let server = env.api_url();
    let common = [
        "-n",
        ns.as_str(),
        "--server",
        server.as_str(),
        "--token",
        token.as_str(),
    ];

    let mut args = vec!["audit", "search", "pod keeps getting OOM killed"];
    args.extend_from_slice(&common);
    let out = run_plugin(&args, &dir);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = stdout.lines().next().unwrap();
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "ID",
            "NAMESPACE",
            "NAME",
            "ACTION",
            "OUTCOME",
            "SEVERITY",
            "SIMILARITY",
            "AGE"
        ],
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.contains("oom-api"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..6],
        [
            id.to_string().as_str(),
            ns.as_str(),
            "oom-api",
            "restart-pod",
            "Success",
            "critical"
        ]
    );

    // list as JSON through `datastorage query` (same client code).
    let mut args = vec!["query", "list", "-o", "json", "--action-type", "drain-node"];
    args.extend_from_slice(&common);
    let out = Command::new(env!("CARGO_BIN_EXE_datastorage"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["drain-1"]);

    // get and verify; a tampered current row makes verify fail with exit code 1.
    let id_s = id.to_string();
    let mut args = vec!["audit", "get", id_s.as_str()];
    args.extend_from_slice(&common);
    let out = run_plugin(&args, &dir);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.contains("oom-api") && stdout.contains("verified"),
        "{stdout}"
    );
    let mut args = vec!["audit", "verify", id_s.as_str()];
    args.extend_from_slice(&common);
    let out = run_plugin(&args, &dir);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // (The audits_guard_update trigger refuses this UPDATE; a superuser bypasses triggers.)
    let store: Store = env.store().await;
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE audits SET chain_hash = repeat('0', 64) WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let out = run_plugin(&args, &dir);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("NOT VERIFIED"), "{stdout}");

    // Errors are readable: another namespace is forbidden.
    let out = run_plugin(
        &[
            "audit",
            "list",
            "-n",
            "kube-system",
            "--server",
            &server,
            "--token",
            &token,
        ],
        &dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && stderr.contains("403") && stderr.contains("kube-system"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_openapi_document_matches_the_checked_in_file() {
    let env = TestEnv::new("api-doc").await;
    let served = reqwest::get(format!("{}/openapi.json", env.api_url()))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served: Value = served.json().await.unwrap();
    let file = std::fs::read_to_string(format!("{}/docs/openapi.json", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    let checked_in: Value = serde_json::from_str(&file).unwrap();
    assert_eq!(
        served, checked_in,
        "docs/openapi.json differs from the served document: cp src/api/openapi.json docs/openapi.json"
    );
    assert_eq!(served["openapi"], "3.0.3");
    for path in [
        "/api/v1/audits",
        "/api/v1/audits/{id}",
        "/api/v1/audits/search",
    ] {
        assert!(served["paths"][path].is_object(), "{path}");
    }
    // Unknown endpoints answer with problem JSON too.
    let resp = reqwest::get(format!("{}/api/v1/nope", env.api_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}
