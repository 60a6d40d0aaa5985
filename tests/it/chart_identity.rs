//! The operator runs with exactly the identity the Helm chart gives it: install the chart (real helm, real
//! apiserver), take a token of its ServiceAccount, and run the operator in-process with that token only. Everything
//! it does — watch and patch RemediationAudits and DataStorages, read the database Secret, take the Lease, review
//! tokens and access for the query API — must succeed with the chart's RBAC.

use std::time::Duration;

use crate::support::TestDb;
use crate::support::chart::{chart_dir, kubebin, run};
use crate::support::kube::{
    audit_yaml, ensure_crds, eventually, kubeconfig, kubectl, kubectl_raw, patch_dstore,
    wait_dstore_phase,
};
use datastorage::operator::{self, LeaderElection};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};

fn helm(args: &[&str]) -> String {
    let config = kubeconfig();
    let mut full = vec!["--kubeconfig", config.as_str()];
    full.extend_from_slice(args);
    run(&kubebin("helm"), &full)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_works_with_the_charts_service_account_only() {
    ensure_crds();
    let db = TestDb::new().await;
    let ns = format!(
        "chartid-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    kubectl(&["create", "namespace", &ns], None);
    let values = format!(
        "dataStorage.create=true,dataStorage.tlsMode=disable,database.url={},operator.dataStorageName={ns},operator.watchNamespace={ns}",
        db.url
    );
    helm(&[
        "install",
        // Its own release name: helm::chart_installs… installs `ds` at the same time, and the cluster-scoped objects
        // (ClusterRoles, the webhook configuration) are named after the release.
        "dsid",
        chart_dir().to_str().unwrap(),
        "-n",
        &ns,
        "--take-ownership",
        "--set",
        &values,
    ]);
    let token = kubectl(
        &["-n", &ns, "create", "token", "dsid-datastorage-operator"],
        None,
    )
    .trim()
    .to_string();

    // A client that authenticates as the ServiceAccount and nothing else.
    let kc = Kubeconfig::read_from(kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info = AuthInfo {
        token: Some(token.clone().into()),
        ..AuthInfo::default()
    };
    let client = kube::Client::try_from(config).unwrap();
    let running = operator::start(
        client,
        operator::Options {
            namespace: Some(ns.clone()),
            leader_election: Some(LeaderElection {
                namespace: ns.clone(),
                lease_name: "dsid-datastorage-operator-leader".into(),
                identity: "chart-identity-test".into(),
                duration_seconds: 10,
            }),
            checkpoint: Some(checkpoint_config(&ns)),
            ..operator::Options::local(ns.clone())
        },
    )
    .await
    .unwrap();
    let metrics = running.context.metrics.clone();
    eventually(
        Duration::from_secs(60),
        "leadership with the chart's Lease RBAC",
        || async { (metrics.leader.get() == 1).then_some(()) },
    )
    .await;

    // The chart's DataStorage asks for the Local model, which is not configured here: switch it to Hash (as the
    // test's admin) so the store becomes Ready; the operator reads the Secret and writes status as the SA.
    patch_dstore(&ns, r#"{"spec":{"embedding":{"provider":"Hash"}}}"#);
    wait_dstore_phase(&ns, "Ready", Duration::from_secs(60)).await;

    kubectl(
        &["-n", &ns, "apply", "-f", "-"],
        Some(&audit_yaml("as-sa", "rr-chart-identity", "")),
    );
    eventually(
        Duration::from_secs(60),
        "the audit Persisted by the SA-run operator",
        || async {
            let out = kubectl_raw(
                &[
                    "-n",
                    &ns,
                    "get",
                    "raudit",
                    "as-sa",
                    "-o",
                    "jsonpath={.status.state}",
                ],
                None,
            );
            (String::from_utf8_lossy(&out.stdout) == "Persisted").then_some(())
        },
    )
    .await;
    // The signed checkpoint ConfigMap is created, replaced and read as the SA (configmaps create, patch, get).
    let store = db.store().await;
    let cfg = checkpoint_config(&ns);
    for _ in 0..2 {
        datastorage::checkpoint::take_and_save(&running.context.client, &store, &cfg)
            .await
            .unwrap();
    }
    let latest = cfg
        .load_latest(&running.context.client)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.count, 1, "{latest:?}");

    // Deleting goes through the finalizer (patch) as the SA.
    kubectl(
        &[
            "-n",
            &ns,
            "delete",
            "raudit",
            "as-sa",
            "--wait=true",
            "--timeout=60s",
        ],
        None,
    );

    // The query API reviews tokens and access with the SA's identity (tokenreviews/subjectaccessreviews create);
    // the caller's token is one for the API's audience (the operator's own is for the API server).
    let url = format!("http://{}/api/v1/audits?namespace={ns}", running.api_addr);
    let api_token = crate::api::api_token(&ns, "dsid-datastorage-operator");
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&api_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(
        metrics
            .write_total
            .with_label_values(&["audits", "failure"])
            .get(),
        0
    );

    running.task.abort();
    // --no-hooks: the pre-delete hook is a Job, and this control plane has no kubelet to run it.
    helm(&["uninstall", "dsid", "-n", &ns, "--no-hooks"]);
    let _ = kubectl_raw(&["delete", "datastorage", &ns, "--wait=false"], None);
}

fn checkpoint_config(ns: &str) -> datastorage::checkpoint::CheckpointConfig {
    datastorage::checkpoint::CheckpointConfig {
        namespace: ns.to_string(),
        config_map: "datastorage-checkpoints".into(),
        key: datastorage::store::checkpoint::CheckpointKey::new(
            b"chart identity test key".to_vec(),
        )
        .unwrap(),
        interval: Duration::from_secs(3600),
    }
}
