//! The CRDs: the checked-in YAML equals what the binary prints, and the schemas are structural.

use datastorage::crd::crd_documents;
use serde_json::Value;

#[test]
fn checked_in_crds_match_the_rust_types() {
    for (file, generated) in crd_documents().unwrap() {
        let path = format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR"));
        let checked_in = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}; run `make crds`"));
        assert!(
            checked_in == generated,
            "{path} differs from what `datastorage crd` prints: run `make crds` and commit the result"
        );
        // The Helm chart ships byte-copies in its crds/ (installed by `helm install`, applied by the pre-upgrade hook).
        let chart_path = format!(
            "{}/charts/datastorage-operator/crds/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let chart_copy = std::fs::read_to_string(&chart_path)
            .unwrap_or_else(|e| panic!("{chart_path}: {e}; run `make crds`"));
        assert!(
            chart_copy == generated,
            "{chart_path} differs from what `datastorage crd` prints: run `make crds` and commit the result"
        );
    }
    let chart_files = std::fs::read_dir(format!(
        "{}/charts/datastorage-operator/crds",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .count();
    assert_eq!(
        chart_files,
        crd_documents().unwrap().len(),
        "stale CRD files in the chart: run `make crds`"
    );
}

/// Walks a schema and returns every problem that makes it non-structural or noisy.
fn schema_problems(schema: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        out.push(format!("{path}: schema is not an object"));
        return;
    };
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !obj.contains_key("type") && !int_or_string {
        out.push(format!("{path}: no type"));
    }
    if let Some(Value::String(f)) = obj.get("format")
        && (f == "uint32" || f == "uint64" || f == "uint")
    {
        out.push(format!("{path}: format {f}"));
    }
    for banned in ["anyOf", "oneOf", "allOf", "$ref", "additionalProperties"] {
        if obj.contains_key(banned) {
            out.push(format!("{path}: uses {banned}"));
        }
    }
    if obj.get("type") == Some(&Value::String("object".into()))
        && !preserve
        && !obj.contains_key("properties")
    {
        out.push(format!(
            "{path}: object without properties or preserve-unknown-fields"
        ));
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (k, v) in props {
            schema_problems(v, &format!("{path}.{k}"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        schema_problems(items, &format!("{path}[]"), out);
    }
}

#[test]
fn schemas_are_structural_with_status_subresource() {
    let docs = crd_documents().unwrap();
    assert_eq!(docs.len(), 2);
    for (file, yaml) in docs {
        let crd: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(crd["spec"]["group"], "datastorage.kubernaut.ai");
        for version in crd["spec"]["versions"].as_array().unwrap() {
            assert_eq!(version["name"], "v1alpha1");
            assert!(
                version["subresources"]["status"].is_object(),
                "{file}: no status subresource"
            );
            let mut problems = Vec::new();
            schema_problems(&version["schema"]["openAPIV3Schema"], "root", &mut problems);
            assert!(problems.is_empty(), "{file}: {problems:#?}");
        }
    }
}

#[test]
fn remediation_audit_crd_shape() {
    let docs = crd_documents().unwrap();
    let crd: Value = serde_saphyr::from_str(&docs[0].1).unwrap();
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        serde_json::json!(["raudit"])
    );
    assert_eq!(
        crd["spec"]["names"]["categories"],
        serde_json::json!(["kubernaut"])
    );
    let v = &crd["spec"]["versions"][0];
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Phase", "Outcome", "State", "Embedded", "Audit-ID", "Age", "Message"
        ]
    );
    // The rejection message only in `-o wide`; `kubectl get raudit --field-selector status.state=Rejected` works.
    assert_eq!(v["additionalPrinterColumns"][6]["priority"], 1);
    assert_eq!(
        v["selectableFields"],
        serde_json::json!([{"jsonPath": ".status.state"}])
    );
    let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["properties"]["details"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert_eq!(spec["properties"]["details"]["type"], "object");
    for p in spec["properties"].as_object().unwrap().values() {
        assert!(
            p["description"].as_str().is_some_and(|d| d.len() > 10),
            "every field is documented"
        );
    }
    let dstore: Value = serde_saphyr::from_str(&docs[1].1).unwrap();
    assert_eq!(dstore["spec"]["scope"], "Cluster");
    assert_eq!(
        dstore["spec"]["names"]["shortNames"],
        serde_json::json!(["dstore"])
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Validation at apply time, on the real kube-apiserver (hack/cp.sh).
// ---------------------------------------------------------------------------------------------------------------

use crate::support::kube::{client, ensure_crds, kubectl, kubectl_raw};
use datastorage::audit::validate::validate;
use datastorage::crd::{RemediationAudit, RemediationAuditSpec};
use kube::api::{Api, PostParams};

fn repo_file(rel: &str) -> String {
    let path = format!("{}/{rel}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ensure_namespace(ns: &str) {
    let yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    kubectl(&["apply", "-f", "-"], Some(&yaml));
}

/// The documents of a sample file with their namespaces created.
fn sample_documents(rel: &str) -> Vec<(String, String)> {
    let text = repo_file(rel);
    let mut out = Vec::new();
    for chunk in text.split("\n---") {
        let doc: Value = serde_saphyr::from_str(chunk).unwrap();
        if doc.is_null() {
            continue;
        }
        ensure_namespace(doc["metadata"]["namespace"].as_str().unwrap());
        out.push((
            doc["metadata"]["name"].as_str().unwrap().to_string(),
            chunk.to_string(),
        ));
    }
    out
}

/// Acceptance 2 of issue 18: `kubectl apply --dry-run=server` of each invalid sample fails at once with the
/// operator's own message for that rule, on the field the status would name; the valid samples pass.
#[test]
fn invalid_samples_fail_kubectl_apply_with_the_rules_message() {
    ensure_crds();
    let invalid = sample_documents("config/samples/invalid-audits.yaml");
    assert_eq!(invalid.len(), 3);
    for (name, doc) in &invalid {
        // What the operator would put on the status.
        let ra: RemediationAudit = serde_saphyr::from_str(doc).unwrap();
        let errors = validate(&ra.spec, chrono::Utc::now()).unwrap_err();
        assert_eq!(errors.len(), 1, "{name}: {errors:?}");
        let out = kubectl_raw(&["apply", "--dry-run=server", "-f", "-"], Some(doc));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was admitted: {stderr}");
        let want = format!("spec.{}: Invalid value: ", errors[0].field);
        assert!(
            stderr.contains(&want),
            "{name}: wanted {want:?} in {stderr}"
        );
        assert!(
            stderr.contains(&errors[0].message),
            "{name}: wanted the operator's message {:?} in {stderr}",
            errors[0].message
        );
    }
    for (name, doc) in sample_documents("config/samples/audits.yaml") {
        let out = kubectl_raw(&["apply", "--dry-run=server", "-f", "-"], Some(&doc));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn spec_with(field: &str, value: &str) -> RemediationAuditSpec {
    let mut v = serde_json::json!({
        "remediationRequestId": "rr-parity", "alertFingerprint": "fp-parity", "alertName": "KubePodOOMKilled",
        "phase": "Completed", "outcome": "Success", "actionType": "restart-pod", "severity": "critical",
        "environment": "production", "clusterName": "prod-eu-1", "targetResource": "apps/v1/Deployment/a/b",
        "startTime": "2026-01-10T10:00:00Z", "endTime": "2026-01-10T10:00:42Z",
    });
    v[field] = Value::String(value.to_string());
    serde_json::from_value(v).unwrap()
}

/// The CRD's rules and the validator agree on the text rules: for each value the API server refuses exactly what
/// the validator refuses (per field), with the validator's message, and admits the rest — markup (also through
/// character references, case folding such as `ſ` for `s`, tabs inside `javascript:`), control characters, byte
/// lengths of multi-byte text, blank values, the `actionType` pattern, time order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_rules_agree_with_the_validator() {
    ensure_crds();
    let ns = "crd-parity";
    ensure_namespace(ns);
    let api: Api<RemediationAudit> = Api::namespaced(client().await, ns);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let long_multibyte = "é".repeat(200);
    let long_ascii = "x".repeat(8193);
    let cases: Vec<(&str, &str)> = vec![
        ("clusterName", "prod-eu-1"),
        ("clusterName", "<b>x</b>"),
        ("clusterName", "<none>"),
        ("clusterName", "a<b"),
        ("clusterName", "x => y"),
        ("clusterName", "<!-- c"),
        ("clusterName", "<svg"),
        ("clusterName", "<ſcript"),
        ("clusterName", "javascript:alert(1)"),
        ("clusterName", "java\tscript:alert(1)"),
        ("clusterName", "&#106;avascript:x"),
        ("clusterName", "JaVaScRiPt&colon;x"),
        ("clusterName", "x onclick=foo()"),
        ("clusterName", "onion=1"),
        ("clusterName", "common=1"),
        ("clusterName", "tab\there"),
        ("clusterName", "del\u{7f}"),
        ("clusterName", "c1\u{85}"),
        ("clusterName", "nul\u{0}"),
        ("clusterName", "   "),
        ("clusterName", &long_multibyte),
        ("targetResource", "v1/Node/worker-17"),
        ("alertName", ""),
        ("alertName", "\u{2003}"),
        ("actionType", "restart-pod"),
        ("actionType", "Restart Pod"),
        ("actionType", "restart-"),
        ("actionType", "scale.deployment_v2"),
        ("actionType", "a"),
        (
            "errorMessage",
            "<script>alert(1)</script> free text may hold markup",
        ),
        ("errorMessage", "line\nbreaks\tand tabs"),
        ("errorMessage", &long_ascii),
        ("endTime", "2026-01-10T09:59:59Z"),
        ("endTime", "2026-01-10T11:00:00+01:00"),
        ("endTime", "2026-01-10T10:00:00.001Z"),
    ];
    for (field, value) in cases {
        let spec = spec_with(field, value);
        let errors: Vec<_> = validate(&spec, chrono::Utc::now())
            .err()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.field == field)
            .collect();
        let ra = RemediationAudit::new("parity", spec);
        let result = api.create(&dry, &ra).await;
        match (errors.first(), result) {
            (None, Ok(_)) => {}
            (Some(e), Err(kube::Error::Api(status))) => {
                // A value with more characters than the limit's bytes meets the schema's maxLength first (the
                // API server's own "Too long" message); multi-byte text within it gets the validator's.
                let too_long = e.reason == datastorage::audit::Reason::LengthExceeded
                    && status.message.contains("Too long");
                assert!(
                    status.message.contains(&format!("spec.{field}"))
                        && (too_long || status.message.contains(&e.message)),
                    "{field}={value:?}: the validator says {:?}, the API server {:?}",
                    e.message,
                    status.message
                );
            }
            (None, Err(e)) => panic!("{field}={value:?}: valid for the validator, refused: {e}"),
            (Some(_), Err(e)) => panic!("{field}={value:?}: {e}"),
            (Some(e), Ok(_)) => panic!(
                "{field}={value:?}: the validator rejects it ({}), the API server admits it",
                e.message
            ),
        }
    }
}
