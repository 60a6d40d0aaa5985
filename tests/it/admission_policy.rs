//! The chart's MutatingAdmissionPolicy (templates/admissionpolicy.yaml) on the real kube-apiserver: the audit
//! finalizer is added at create, so the operator never patches it in (one API write less per audit); without the
//! policy the operator's own finalizer patch is the fallback (every other suite runs without the policy).

use std::time::Duration;

use crate::support::chart::template;
use crate::support::kube::{EnvOptions, TestEnv, audit_yaml, eventually, kubectl, kubectl_raw};
use datastorage::controller::audit::FINALIZER;
use serde_json::Value;

/// Managers of the audit's non-status managedFields entries.
fn main_resource_managers(env: &TestEnv, name: &str) -> Vec<String> {
    let obj: Value = serde_json::from_str(&env.kubectl(
        &["get", "raudit", name, "--show-managed-fields", "-o", "json"],
        None,
    ))
    .unwrap();
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.get("subresource").is_none())
        .map(|m| m["manager"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_policy_adds_the_finalizer_at_create_and_the_operator_writes_only_status() {
    let mut env = TestEnv::with(
        "map",
        EnvOptions {
            start_operator: false,
            ..EnvOptions::default()
        },
    )
    .await;
    // The policy bound to this test's namespace only (operator.watchNamespace), so concurrent suites are untouched.
    let policy = template(&[
        "--show-only",
        "templates/admissionpolicy.yaml",
        "--api-versions",
        "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy",
        "--set",
        &format!(
            "fullnameOverride={},operator.watchNamespace={}",
            env.ns, env.ns
        ),
    ]);
    assert!(
        policy.contains("kind: MutatingAdmissionPolicyBinding"),
        "{policy}"
    );
    kubectl(&["apply", "-f", "-"], Some(&policy));

    // Policies are loaded asynchronously: probe with server-side dry runs until the mutation shows.
    let probe = audit_yaml("probe", "rr-map-probe", "");
    eventually(
        Duration::from_secs(30),
        "the policy to mutate creates",
        || async {
            let out = kubectl_raw(
                &[
                    "-n",
                    &env.ns,
                    "create",
                    "--dry-run=server",
                    "-o",
                    "json",
                    "-f",
                    "-",
                ],
                Some(&probe),
            );
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            v["metadata"]["finalizers"]
                .as_array()?
                .iter()
                .any(|f| f == FINALIZER)
                .then_some(())
        },
    )
    .await;

    // Created with the finalizer already, before any operator runs.
    let created: Value = serde_json::from_str(&env.kubectl(
        &["create", "-o", "json", "-f", "-"],
        Some(&audit_yaml("a1", "rr-map-1", "")),
    ))
    .unwrap();
    assert_eq!(
        created["metadata"]["finalizers"],
        serde_json::json!([FINALIZER])
    );

    env.start_operator().await;
    let persisted = env
        .wait_state("a1", "Persisted", Duration::from_secs(60))
        .await;
    assert_eq!(
        persisted["metadata"]["finalizers"],
        serde_json::json!([FINALIZER])
    );
    // The operator wrote the status only: the main resource was written by its creator alone.
    assert_eq!(
        main_resource_managers(&env, "a1"),
        vec!["kubectl-create".to_string()]
    );

    // Deleting still records the deletion and releases the finalizer (the operator's usual path).
    env.kubectl(
        &["delete", "raudit", "a1", "--wait=true", "--timeout=60s"],
        None,
    );

    let _ = kubectl_raw(&["delete", "-f", "-"], Some(&policy));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_policy_the_operator_adds_the_finalizer_itself() {
    let env = TestEnv::new("nomap").await;
    let created: Value = serde_json::from_str(&env.kubectl(
        &["create", "-o", "json", "-f", "-"],
        Some(&audit_yaml("a1", "rr-nomap-1", "")),
    ))
    .unwrap();
    assert!(
        created["metadata"]["finalizers"].is_null(),
        "{}",
        created["metadata"]
    );
    let persisted = env
        .wait_state("a1", "Persisted", Duration::from_secs(60))
        .await;
    assert_eq!(
        persisted["metadata"]["finalizers"],
        serde_json::json!([FINALIZER])
    );
    assert_eq!(
        main_resource_managers(&env, "a1").len(),
        2,
        "the creator and the operator's finalizer patch"
    );
}
