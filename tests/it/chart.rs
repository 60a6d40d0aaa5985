//! The chart's rendered objects, with the real `helm template`/`helm lint` (no cluster): the DataStorage is a plain
//! release object and the CRDs come from crds/ (a pre-upgrade hook applies them), the PodDisruptionBudget never
//! blocks a drain, image by digest and overridable security contexts, embedding threads from the CPU limit,
//! NetworkPolicy egress derived from the values, RBAC for people, the `helm test` pod, and a values.schema.json that
//! documents every key (the chart README is generated from it and must be up to date).
//! tests/it/helm.rs installs the chart on a control plane; tests/it/cluster.rs runs it on a real node.

use crate::support::chart::{chart_dir, documents, kubebin, of_kind, repo_path, run_raw, template};
use serde_json::{Value, json};

fn rendered(set: &[&str]) -> Vec<Value> {
    let mut args = Vec::new();
    for s in set {
        args.extend(["--set", *s]);
    }
    documents(&template(&args))
}

fn refused(set: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec!["template", "ds", chart.to_str().unwrap()];
    for s in set {
        args.extend(["--set", *s]);
    }
    let out = run_raw(&kubebin("helm"), &args);
    assert!(!out.status.success(), "helm template accepted {set:?}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn pod_specs(docs: &[Value]) -> Vec<(&str, &Value)> {
    let mut out = Vec::new();
    for d in docs {
        let name = d["metadata"]["name"].as_str().unwrap();
        match d["kind"].as_str() {
            Some("Deployment" | "Job") => out.push((name, &d["spec"]["template"]["spec"])),
            Some("Pod") => out.push((name, &d["spec"])),
            _ => {}
        }
    }
    out
}

#[test]
fn the_datastorage_is_a_release_object_and_crds_come_from_crds_dir() {
    let docs = rendered(&[
        "dataStorage.create=true",
        "database.url=postgres://u:p@db:5432/audit",
    ]);
    let ds = of_kind(&docs, "DataStorage");
    assert_eq!(ds.len(), 1);
    assert!(
        ds[0]["metadata"]["annotations"]["helm.sh/hook"].is_null(),
        "the DataStorage must not be a hook: {}",
        ds[0]["metadata"]
    );
    // The pre-upgrade hook: every object a pre-upgrade hook; the ConfigMap holds crds/ byte for byte; the role may
    // only get/patch those CRDs by name.
    let hook = documents(&template(&[
        "--show-only",
        "templates/crd-upgrade-hook.yaml",
    ]));
    let kinds: Vec<&str> = hook.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            "Job"
        ]
    );
    for d in &hook {
        assert_eq!(d["metadata"]["annotations"]["helm.sh/hook"], "pre-upgrade");
    }
    let cm = of_kind(&hook, "ConfigMap")[0];
    let mut names = Vec::new();
    for file in std::fs::read_dir(chart_dir().join("crds")).unwrap() {
        let path = file.unwrap().path();
        let base = path.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            cm["data"][&base].as_str().unwrap().trim_end(),
            std::fs::read_to_string(&path).unwrap().trim_end(),
            "{base}"
        );
        names.push(base.trim_end_matches(".yaml").to_string());
    }
    names.sort();
    let role = of_kind(&hook, "ClusterRole")[0];
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                "resourceNames": names, "verbs": ["get", "patch"]}])
    );
    let off = documents(&template(&["--set", "crds.upgrade=false"]));
    assert!(
        of_kind(&off, "Job")
            .iter()
            .all(|j| j["metadata"]["annotations"]["helm.sh/hook"] != "pre-upgrade")
    );
}

#[test]
fn the_pdb_never_blocks_a_drain() {
    for (replicas, min) in [(1, 0), (2, 1), (3, 2), (5, 4)] {
        let docs = rendered(&[&format!("replicaCount={replicas}")]);
        let pdb = of_kind(&docs, "PodDisruptionBudget")[0];
        assert_eq!(pdb["spec"]["minAvailable"], min, "{replicas} replicas");
        assert_eq!(pdb["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    }
    let docs = rendered(&["replicaCount=3", "podDisruptionBudget.minAvailable=1"]);
    assert_eq!(
        of_kind(&docs, "PodDisruptionBudget")[0]["spec"]["minAvailable"],
        1
    );
    let err = refused(&["replicaCount=1", "podDisruptionBudget.minAvailable=1"]);
    assert!(err.contains("would block every drain"), "{err}");
    refused(&["podDisruptionBudget.minAvailable=-1"]);
    refused(&["podDisruptionBudget.minAvailable=50%"]);
}

#[test]
fn probes_image_digest_security_contexts_and_threads() {
    let docs = rendered(&[]);
    let d = of_kind(&docs, "Deployment")[0];
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
    assert!(
        c["startupProbe"]["failureThreshold"].as_i64().unwrap()
            * c["startupProbe"]["periodSeconds"].as_i64().unwrap()
            >= 300,
        "a slow start gets 5 minutes"
    );
    assert_eq!(c["image"], "ghcr.io/kubernaut/datastorage:0.1.0");
    let threads: Vec<&Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "DATASTORAGE_EMBED_THREADS")
        .collect();
    assert_eq!(
        threads[0]["valueFrom"]["resourceFieldRef"],
        json!({"containerName": "operator", "resource": "limits.cpu", "divisor": "1"})
    );

    // By digest: every container of the release (operator, hooks, helm test) pulls the same immutable image.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let docs = rendered(&[&format!("image.digest={digest}"), "image.tag=ignored"]);
    let specs = pod_specs(&docs);
    assert_eq!(
        specs.len(),
        4,
        "operator, CRD hook, uninstall hook, helm test"
    );
    for (name, spec) in &specs {
        assert_eq!(
            spec["containers"][0]["image"],
            format!("ghcr.io/kubernaut/datastorage@{digest}"),
            "{name}"
        );
    }
    refused(&["image.digest=latest"]);

    // OpenShift: no fixed UID/GID/fsGroup anywhere once podSecurityContext drops them.
    let chart = chart_dir();
    let out = run_raw(
        &kubebin("helm"),
        &[
            "template",
            "ds",
            chart.to_str().unwrap(),
            "--set",
            "podSecurityContext.runAsUser=null,podSecurityContext.runAsGroup=null,podSecurityContext.fsGroup=null",
            "--set",
            "securityContext.runAsUser=1000700000",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    for (name, spec) in pod_specs(&docs) {
        assert_eq!(
            spec["securityContext"],
            json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}),
            "{name}"
        );
        let sc = &spec["containers"][0]["securityContext"];
        assert_eq!(sc["runAsUser"], 1_000_700_000, "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}: defaults kept");
    }
}

fn egress_tcp(docs: &[Value]) -> Vec<i64> {
    let np = of_kind(docs, "NetworkPolicy")[0];
    np["spec"]["egress"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["protocol"] == "TCP")
        .map(|p| p["port"].as_i64().unwrap())
        .collect()
}

#[test]
fn network_policy_egress_follows_the_values() {
    // Default: DNS, the Kubernetes API, PostgreSQL.
    assert_eq!(egress_tcp(&rendered(&[])), [53, 443, 6443, 5432]);
    // The database URL's port; the sample's OpenAI-compatible endpoint on 8080; Redis when a cache Secret is named.
    let chart = chart_dir();
    let out = run_raw(
        &kubebin("helm"),
        &[
            "template",
            "ds",
            chart.to_str().unwrap(),
            "--set",
            "dataStorage.create=true,database.url=postgres://u:p@db.example:6543/audit",
            "--set-json",
            r#"dataStorage.spec={"embedding":{"provider":"OpenAI","endpoint":"http://embeddings.ml.svc:8080","cache":{"redisUrlSecretRef":{"name":"r","namespace":"ds-system","key":"url"}}}}"#,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(egress_tcp(&docs), [53, 443, 6443, 6543, 8080, 6379]);
    // OpenAI itself (https, no port): 443, already there; extra ports for a DataStorage made outside the chart.
    let docs = rendered(&[
        "networkPolicy.egress.extraPorts[0]=8443",
        "networkPolicy.egress.databasePort=5433",
    ]);
    assert_eq!(egress_tcp(&docs), [53, 443, 6443, 5433, 8443]);
    refused(&["networkPolicy.egress.extraPorts[0]=70000"]);
    refused(&["networkPolicy.egressPorts[0]=53"]);

    // Narrowing apiFrom alone would silently cut off `kubectl audit` (the apiserver's service proxy): refused.
    let err = refused(&["networkPolicy.apiFrom[0].namespaceSelector.matchLabels.team=sre"]);
    assert!(err.contains("service proxy"), "{err}");
    let docs = rendered(&[
        "networkPolicy.apiFrom[0].namespaceSelector.matchLabels.team=sre",
        "networkPolicy.apiServerFrom[0].ipBlock.cidr=10.0.0.10/32",
    ]);
    let from = &of_kind(&docs, "NetworkPolicy")[0]["spec"]["ingress"][0]["from"];
    assert_eq!(from[0]["namespaceSelector"]["matchLabels"]["team"], "sre");
    assert_eq!(from[1]["ipBlock"]["cidr"], "10.0.0.10/32");
    assert_eq!(
        from[2]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "smoke-test",
        "the helm test pod is admitted"
    );
    let docs = rendered(&[
        "networkPolicy.apiFrom[0].namespaceSelector.matchLabels.team=sre",
        "networkPolicy.serviceProxy=false",
    ]);
    assert_eq!(
        of_kind(&docs, "NetworkPolicy")[0]["spec"]["ingress"][0]["from"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn rbac_for_people_is_aggregated_and_the_api_proxy_is_granted() {
    let docs = documents(&template(&["--show-only", "templates/rbac-users.yaml"]));
    let by_name = |kind: &str, name: &str| -> Value {
        of_kind(&docs, kind)
            .into_iter()
            .find(|d| d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let reader = by_name("ClusterRole", "ds-datastorage-operator-reader");
    let labels = &reader["metadata"]["labels"];
    for l in ["view", "edit", "admin"] {
        assert_eq!(
            labels[format!("rbac.authorization.k8s.io/aggregate-to-{l}")],
            "true"
        );
    }
    assert_eq!(reader["rules"][0]["verbs"], json!(["get", "list", "watch"]));
    let editor = by_name("ClusterRole", "ds-datastorage-operator-editor");
    assert!(editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"].is_null());
    assert_eq!(
        editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    let proxy = by_name("Role", "ds-datastorage-operator-api-proxy");
    assert_eq!(proxy["metadata"]["namespace"], "ds-system");
    assert_eq!(proxy["rules"][0]["resources"], json!(["services/proxy"]));
    assert!(
        proxy["rules"][0]["resourceNames"]
            .as_array()
            .unwrap()
            .contains(&json!("ds-datastorage-operator:8080"))
    );
    let binding = by_name("RoleBinding", "ds-datastorage-operator-api-proxy");
    assert_eq!(binding["subjects"][0]["name"], "system:authenticated");
    let off = documents(&template(&[
        "--show-only",
        "templates/rbac-users.yaml",
        "--set",
        "rbac.aggregate=false",
    ]));
    assert!(
        off.iter().all(
            |d| d["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"].is_null()
        )
    );
}

#[test]
fn helm_test_pod_checks_the_release_through_its_service() {
    let docs = documents(&template(&[
        "--show-only",
        "templates/tests/smoke-test.yaml",
    ]));
    let pod = of_kind(&docs, "Pod")[0];
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let args = &pod["spec"]["containers"][0]["args"];
    assert_eq!(args[0], "smoke-test");
    // The kubelet's service variables (no cluster DNS needed), expanded by the kubelet in args.
    assert_eq!(
        args[1],
        "--metrics-url=http://$(DS_DATASTORAGE_OPERATOR_SERVICE_HOST):8081"
    );
    // The query API over TLS (the default), verified against the release's CA (only ca.crt of the Secret is
    // mounted) for the Service's name.
    assert_eq!(
        args[2],
        "--api-url=https://$(DS_DATASTORAGE_OPERATOR_SERVICE_HOST):8080"
    );
    assert_eq!(args[3], "--api-ca-file=/etc/datastorage/ca/ca.crt");
    assert_eq!(
        args[4],
        "--api-server-name=ds-datastorage-operator.ds-system.svc"
    );
    let volume = &pod["spec"]["volumes"][0]["secret"];
    assert_eq!(volume["secretName"], "ds-datastorage-operator-tls");
    assert_eq!(
        volume["items"],
        serde_json::json!([{"key": "ca.crt", "path": "ca.crt"}])
    );
    assert_eq!(pod["spec"]["enableServiceLinks"], true);
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    // Without TLS, plain HTTP and no CA.
    let docs = documents(&template(&[
        "--show-only",
        "templates/tests/smoke-test.yaml",
        "--set",
        "api.tls.enabled=false",
    ]));
    let pod = of_kind(&docs, "Pod")[0];
    let args = &pod["spec"]["containers"][0]["args"];
    assert_eq!(
        args[2],
        "--api-url=http://$(DS_DATASTORAGE_OPERATOR_SERVICE_HOST):8080"
    );
    assert_eq!(args[3], "--timeout-seconds=60");
    assert!(pod["spec"].get("volumes").is_none());
}

/// Every key of values.schema.json has a description, and the chart README's values table is what
/// hack/chart-readme.py makes of them.
#[test]
fn every_value_is_described_and_the_readme_is_generated() {
    fn walk(node: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = node["properties"].as_object() {
            for (k, v) in props {
                let p = format!("{path}{k}");
                if v["description"].as_str().is_none_or(|d| d.trim().len() < 8) {
                    missing.push(p.clone());
                }
                walk(v, &format!("{p}."), missing);
            }
        }
    }
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let mut missing = Vec::new();
    walk(&schema, "", &mut missing);
    assert!(missing.is_empty(), "no description: {missing:?}");
    // Every key of values.yaml is in the schema (additionalProperties: false), so lint of the defaults covers it.
    let script = repo_path("hack/chart-readme.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg("--check")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 {}: {e} (apt-get install python3 python3-yaml)",
                script.display()
            )
        });
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Removed keys are refused, not ignored.
    refused(&["crds.install=false"]);
    refused(&["crds.keep=false"]);
}
