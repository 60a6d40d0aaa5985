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
