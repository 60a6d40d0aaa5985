//! The Helm chart on the real control plane (tests/support/kube.rs): lint, server-side validation of every
//! rendered object, install, RBAC sufficiency and least privilege of the chart's ServiceAccount (`kubectl auth
//! can-i`), an upgrade that changes a CRD, and uninstall. There is no kubelet, so pods never start: this tests the
//! objects, not the running operator.

use crate::support::chart::{chart_dir, documents, kubebin, of_kind, repo_path, run, run_raw};
use crate::support::kube::{ensure_crds, kubeconfig, kubectl, kubectl_raw};
use datastorage::rbac::{REQUIRED, Scope};
use serde_json::Value;

/// Minimal CRDs named like the Prometheus Operator's, so the monitoring templates render (the chart checks
/// `.Capabilities.APIVersions.Has "monitoring.coreos.com/v1"`) and their objects are accepted by the apiserver.
fn monitoring_crds() -> String {
    ["servicemonitors:ServiceMonitor", "prometheusrules:PrometheusRule"]
        .iter()
        .map(|pk| {
            let (plural, kind) = pk.split_once(':').unwrap();
            format!(
                "---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: \
                 {plural}.monitoring.coreos.com\nspec:\n  group: monitoring.coreos.com\n  scope: Namespaced\n  \
                 names: {{plural: {plural}, kind: {kind}, singular: {}, listKind: {kind}List}}\n  versions:\n  \
                 - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        \
                 type: object\n        properties:\n          spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
                kind.to_lowercase()
            )
        })
        .collect()
}

fn helm(args: &[&str]) -> String {
    let mut full = vec!["--kubeconfig", Box::leak(kubeconfig().into_boxed_str())];
    full.extend_from_slice(args);
    run(&kubebin("helm"), &full)
}

fn can_i(sa: &str, verb: &str, resource: &str, extra: &[&str]) -> bool {
    let mut args = vec!["auth", "can-i", verb, resource, "--as", sa];
    args.extend_from_slice(extra);
    let out = kubectl_raw(&args, None);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl {args:?}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn helm_lint_passes_and_the_schema_rejects_bad_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    run(&kubebin("helm"), &["lint", "--strict", chart]);
    run(
        &kubebin("helm"),
        &[
            "lint",
            "--strict",
            chart,
            "--set",
            "dataStorage.create=true,database.url=postgres://u:p@db:5432/audit",
        ],
    );
    for bad in [
        "replicaCount=0",
        "operator.logFormat=xml",
        "unknownKey=1",
        "database.url=mysql://x",
    ] {
        let out = run_raw(&kubebin("helm"), &["lint", chart, "--set", bad]);
        assert!(!out.status.success(), "values.schema.json accepts {bad}");
    }
    // A DataStorage needs a database.
    let out = run_raw(
        &kubebin("helm"),
        &["template", "x", chart, "--set", "dataStorage.create=true"],
    );
    assert!(!out.status.success());
}

#[test]
fn rendered_deployment_is_restricted_and_monitoring_needs_its_api() {
    let docs = documents(&crate::support::chart::template(&[]));
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert!(of_kind(&docs, kind).is_empty(), "{kind} without the API");
    }
    let docs = documents(&crate::support::chart::template(&[
        "--api-versions",
        "monitoring.coreos.com/v1",
    ]));
    assert_eq!(of_kind(&docs, "ServiceMonitor").len(), 1);
    assert_eq!(of_kind(&docs, "PrometheusRule").len(), 1);
    let dash: Vec<_> = of_kind(&docs, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    // The metrics dashboard and the remediation effectiveness one (SQL), one ConfigMap each.
    assert_eq!(dash.len(), 2);
    let shipped = |key: &str| -> Value {
        let cm = dash
            .iter()
            .find(|c| c["data"].get(key).is_some())
            .unwrap_or_else(|| panic!("no ConfigMap holds {key}"));
        assert_eq!(cm["data"].as_object().unwrap().len(), 1, "{key}");
        serde_json::from_str(cm["data"][key].as_str().unwrap()).unwrap()
    };
    // The chart ships the dashboards and the alert rules whole (as many panels and rules as the sources).
    for key in [
        "datastorage-dashboard.json",
        "remediation-effectiveness-dashboard.json",
    ] {
        let source: Value = serde_json::from_str(
            &std::fs::read_to_string(repo_path(&format!("config/grafana/{key}"))).unwrap(),
        )
        .unwrap();
        let json = shipped(key);
        assert_eq!(json["panels"], source["panels"], "{key}");
        assert_eq!(json, source, "{key}");
    }
    // The effectiveness dashboard has its own toggle.
    let without = documents(&crate::support::chart::template(&[
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--set",
        "grafanaDashboard.remediationEffectiveness.enabled=false",
    ]));
    let dash_without: Vec<_> = of_kind(&without, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dash_without.len(), 1);
    assert!(
        dash_without[0]["data"]
            .get("datastorage-dashboard.json")
            .is_some()
    );
    let rule_count = |groups: &Value| -> usize {
        groups
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["rules"].as_array().unwrap().len())
            .sum()
    };
    let alerts: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_path("config/prometheus/alerts.yaml")).unwrap(),
    )
    .unwrap();
    let shipped = rule_count(&of_kind(&docs, "PrometheusRule")[0]["spec"]["groups"]);
    assert_eq!(shipped, rule_count(&alerts["groups"]));
    assert!(shipped >= 12, "{shipped} rules");

    let d = of_kind(&docs, "Deployment")[0];
    assert_eq!(d["spec"]["replicas"], 3);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["args"][0], "run");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let ports: Vec<i64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    // The query API, the operations endpoints, the admission webhook.
    assert_eq!(ports, [8080, 8081, 9443]);
    assert!(c["resources"]["limits"]["memory"].is_string());
    let svc = of_kind(&docs, "Service")[0];
    assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 3);
    assert_eq!(of_kind(&docs, "PodDisruptionBudget").len(), 1);
    assert_eq!(of_kind(&docs, "NetworkPolicy").len(), 1);
    // The CRDs are the chart's crds/ (created by `helm install` before any template), not templates.
    assert!(of_kind(&docs, "CustomResourceDefinition").is_empty());
    let with = documents(&crate::support::chart::template(&["--include-crds"]));
    assert_eq!(of_kind(&with, "CustomResourceDefinition").len(), 2);
}

#[test]
fn chart_installs_grants_least_privilege_upgrades_crds_and_uninstalls() {
    ensure_crds();
    kubectl(&["apply", "-f", "-"], Some(&monitoring_crds()));
    kubectl(
        &[
            "wait",
            "--for",
            "condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ],
        None,
    );
    let ns = format!("helm-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    kubectl(&["create", "namespace", &ns], None);
    // No controller-manager here makes a namespace's `default` ServiceAccount, which the `helm test` pod runs as.
    kubectl(&["-n", &ns, "create", "serviceaccount", "default"], None);
    let chart = chart_dir();
    let values = format!(
        "dataStorage.create=true,database.url=postgres://u:p@db.{ns}:5432/audit,operator.dataStorageName={ns}"
    );

    // Every rendered object passes server-side validation.
    let rendered = helm(&[
        "template",
        "ds",
        chart.to_str().unwrap(),
        "-n",
        &ns,
        "--api-versions",
        "monitoring.coreos.com/v1",
        "--set",
        &values,
    ]);
    let docs = documents(&rendered);
    assert!(docs.len() >= 17, "{} objects", docs.len());
    let out = kubectl(
        &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
        Some(&rendered),
    );
    assert_eq!(
        out.lines().count(),
        docs.len(),
        "every object validated:\n{out}"
    );

    // Install (the CRDs already exist from other suites: take them over).
    helm(&[
        "install",
        "ds",
        chart.to_str().unwrap(),
        "-n",
        &ns,
        "--take-ownership",
        "--set",
        &values,
    ]);
    for obj in [
        "deployment/ds-datastorage-operator",
        "service/ds-datastorage-operator",
        "serviceaccount/ds-datastorage-operator",
        "configmap/ds-datastorage-operator",
        "configmap/ds-datastorage-operator-dashboard",
        "configmap/ds-datastorage-operator-remediation-dashboard",
        "secret/ds-datastorage-operator-db",
        "servicemonitor/ds-datastorage-operator",
        "prometheusrule/ds-datastorage-operator",
        "networkpolicy/ds-datastorage-operator",
        "poddisruptionbudget/ds-datastorage-operator",
        "role/ds-datastorage-operator",
        "rolebinding/ds-datastorage-operator",
    ] {
        kubectl(&["-n", &ns, "get", obj], None);
    }
    let secret_ref = kubectl(
        &[
            "get",
            "datastorage",
            &ns,
            "-o",
            "jsonpath={.spec.database.urlSecretRef.namespace}/{.spec.database.urlSecretRef.name}",
        ],
        None,
    );
    assert_eq!(secret_ref, format!("{ns}/ds-datastorage-operator-db"));

    // RBAC: the ServiceAccount can do everything the code needs, and not more.
    let token = kubectl(
        &["-n", &ns, "create", "token", "ds-datastorage-operator"],
        None,
    );
    assert!(token.trim().split('.').count() == 3, "a JWT");
    let sa = format!("system:serviceaccount:{ns}:ds-datastorage-operator");
    for p in REQUIRED {
        let (resource, sub) = match p.resource.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (p.resource, None),
        };
        let full = if p.group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{}", p.group)
        };
        let mut extra: Vec<String> = Vec::new();
        if let Some(s) = sub {
            extra.push(format!("--subresource={s}"));
        }
        match p.scope {
            Scope::Cluster => extra.push("--all-namespaces".into()),
            Scope::ReleaseNamespace => extra.extend(["-n".into(), ns.clone()]),
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        for verb in p.verbs {
            assert!(
                can_i(&sa, verb, &full, &extra),
                "the chart's ServiceAccount may not {verb} {full} {extra:?}"
            );
        }
    }
    let other = ["-n", "default"];
    let here = ["-n", ns.as_str()];
    for (verb, resource, extra) in [
        ("get", "secrets", &other[..]),
        ("list", "secrets", &here[..]),
        ("delete", "secrets", &here[..]),
        ("list", "pods", &here[..]),
        ("create", "pods", &here[..]),
        (
            "create",
            "remediationaudits.datastorage.kubernaut.ai",
            &here[..],
        ),
        (
            "update",
            "remediationaudits.datastorage.kubernaut.ai",
            &here[..],
        ),
        ("delete", "datastorages.datastorage.kubernaut.ai", &[][..]),
        (
            "update",
            "customresourcedefinitions.apiextensions.k8s.io",
            &[][..],
        ),
        ("delete", "leases.coordination.k8s.io", &here[..]),
        ("get", "leases.coordination.k8s.io", &other[..]),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            &[][..],
        ),
    ] {
        assert!(
            !can_i(&sa, verb, resource, extra),
            "the chart's ServiceAccount may {verb} {resource} {extra:?}"
        );
    }

    // Upgrade with a chart whose DataStorage CRD has one more field: the apiserver's CRD gets it through the
    // pre-upgrade hook. There is no kubelet here to run the hook's Job, so the hook's own ServiceAccount and RBAC are
    // created from the rendered hook and `datastorage apply-crds` runs here with that ServiceAccount's token only
    // (tests/it/cluster.rs runs the real hook on a node); `helm upgrade --no-hooks` does the rest.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("datastorage-operator");
    let cp = std::process::Command::new("cp")
        .args(["-r", chart.to_str().unwrap(), copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(cp.success());
    let crd_file = copy.join("crds/datastorages.datastorage.kubernaut.ai.yaml");
    let mut crd: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&crd_file).unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["upgradeProbe"] =
        serde_json::json!({"type": "string", "description": "added by tests/helm.rs"});
    std::fs::write(&crd_file, crd.to_string()).unwrap();
    let hook = documents(&helm(&[
        "template",
        "ds",
        copy.to_str().unwrap(),
        "-n",
        &ns,
        "--set",
        &values,
        "--show-only",
        "templates/crd-upgrade-hook.yaml",
    ]));
    let job = of_kind(&hook, "Job")[0];
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!(["apply-crds", "--dir=/crds"])
    );
    let cm = of_kind(&hook, "ConfigMap")[0];
    assert!(
        cm["data"]["datastorages.datastorage.kubernaut.ai.yaml"]
            .as_str()
            .unwrap()
            .contains("upgradeProbe"),
        "the hook's ConfigMap carries the chart's crds/"
    );
    let rbac_only: Vec<String> = hook
        .iter()
        .filter(|d| d["kind"] != "Job" && d["kind"] != "ConfigMap")
        .map(|d| d.to_string())
        .collect();
    kubectl(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&rbac_only.join("\n---\n")),
    );
    let hook_sa = format!("system:serviceaccount:{ns}:ds-datastorage-operator-crds");
    for (verb, crd_name, allowed) in [
        ("patch", "datastorages.datastorage.kubernaut.ai", true),
        ("patch", "remediationaudits.datastorage.kubernaut.ai", true),
        ("patch", "servicemonitors.monitoring.coreos.com", false),
        ("delete", "datastorages.datastorage.kubernaut.ai", false),
    ] {
        assert_eq!(
            can_i(
                &hook_sa,
                verb,
                &format!("customresourcedefinitions.apiextensions.k8s.io/{crd_name}"),
                &[]
            ),
            allowed,
            "the CRD hook may {verb} {crd_name}: expected {allowed}"
        );
    }
    assert!(!can_i(
        &hook_sa,
        "create",
        "customresourcedefinitions.apiextensions.k8s.io",
        &[]
    ));
    let hook_token = kubectl(
        &["-n", &ns, "create", "token", "ds-datastorage-operator-crds"],
        None,
    );
    let admin: Value = serde_json::from_str(&kubectl(
        &["config", "view", "--minify", "--raw", "-o", "json"],
        None,
    ))
    .unwrap();
    let hook_kc = tmp.path().join("hook.kubeconfig");
    std::fs::write(
        &hook_kc,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "cp", "cluster": admin["clusters"][0]["cluster"]}],
            "users": [{"name": "hook", "user": {"token": hook_token.trim()}}],
            "contexts": [{"name": "cp", "context": {"cluster": "cp", "user": "hook"}}],
            "current-context": "cp",
        })
        .to_string(),
    )
    .unwrap();
    let applied = std::process::Command::new(env!("CARGO_BIN_EXE_datastorage"))
        .args(["apply-crds", "--dir", copy.join("crds").to_str().unwrap()])
        .env("KUBECONFIG", &hook_kc)
        .output()
        .unwrap();
    assert!(
        applied.status.success(),
        "datastorage apply-crds as the hook's ServiceAccount: {}{}",
        String::from_utf8_lossy(&applied.stdout),
        String::from_utf8_lossy(&applied.stderr)
    );
    // The changed CRD is applied; the unchanged one is not written at all (no handler rebuild for nothing).
    let report = String::from_utf8_lossy(&applied.stdout).to_string();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 2, "one line per CRD: {report}");
    assert!(
        lines[0]
            .starts_with("customresourcedefinition datastorages.datastorage.kubernaut.ai applied"),
        "{report}"
    );
    assert!(
        lines[1].starts_with(
            "customresourcedefinition remediationaudits.datastorage.kubernaut.ai unchanged"
        ),
        "{report}"
    );
    let uid_before = kubectl(
        &["get", "datastorage", &ns, "-o", "jsonpath={.metadata.uid}"],
        None,
    );
    helm(&[
        "upgrade",
        "ds",
        copy.to_str().unwrap(),
        "-n",
        &ns,
        "--no-hooks",
        "--set",
        &values,
    ]);
    let uid_after = kubectl(
        &["get", "datastorage", &ns, "-o", "jsonpath={.metadata.uid}"],
        None,
    );
    assert_eq!(
        uid_before, uid_after,
        "helm upgrade recreated the DataStorage"
    );
    let manifest = helm(&["get", "manifest", "ds", "-n", &ns]);
    assert!(
        manifest.contains("kind: DataStorage"),
        "the DataStorage is a release object"
    );
    let field = kubectl(
        &[
            "get",
            "crd",
            "datastorages.datastorage.kubernaut.ai",
            "-o",
            "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.upgradeProbe.type}",
        ],
        None,
    );
    assert_eq!(field, "string", "helm upgrade did not update the CRD");
    let revision = helm(&["status", "ds", "-n", &ns, "-o", "json"]);
    let status: Value = serde_json::from_str(&revision).unwrap();
    assert_eq!(status["version"], 2);
    assert_eq!(status["info"]["status"], "deployed");

    // Uninstall: the release's objects go, the CRDs stay (helm.sh/resource-policy: keep).
    // --no-hooks: the pre-delete hook is a Job, and without a kubelet it never runs (tests/it/cluster.rs runs it on a
    // real node).
    helm(&["uninstall", "ds", "-n", &ns, "--wait", "--no-hooks"]);
    let gone = kubectl_raw(
        &["-n", &ns, "get", "deployment/ds-datastorage-operator"],
        None,
    );
    assert!(
        !gone.status.success(),
        "the Deployment survived helm uninstall"
    );
    let gone = kubectl_raw(&["get", "clusterrole/ds-datastorage-operator"], None);
    assert!(
        !gone.status.success(),
        "the ClusterRole survived helm uninstall"
    );
    kubectl(
        &["get", "crd", "datastorages.datastorage.kubernaut.ai"],
        None,
    );
    let gone = kubectl_raw(&["get", "datastorage", &ns], None);
    assert!(
        !gone.status.success(),
        "the DataStorage survived helm uninstall (an orphan)"
    );

    // Leave the shared control plane as the other suites expect it (only the CRD this test changed: replacing the
    // other would make its resources unavailable for a moment to the suites running in parallel).
    kubectl(
        &[
            "replace",
            "-f",
            repo_path("crds/datastorages.datastorage.kubernaut.ai.yaml")
                .to_str()
                .unwrap(),
        ],
        None,
    );
    let _ = kubectl_raw(&["delete", "datastorage", &ns, "--wait=false"], None);
    let _ = kubectl_raw(&["delete", "namespace", &ns, "--wait=false"], None);
}
