//! The chart's RBAC grants exactly the permissions the code uses (`datastorage::rbac::REQUIRED`): rendered with the
//! real `helm template`, no cluster needed. tests/helm.rs checks the same list against a real apiserver.

use std::collections::BTreeSet;

use crate::support::chart::{documents, of_kind, template};
use datastorage::rbac::{REQUIRED, Scope};
use serde_json::Value;

type Grant = (Scope, String, String, String);

fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Every (scope, group, resource, verb) a rendered Role/ClusterRole grants; panics on wildcards and on
/// non-resource URLs.
fn grants(role: &Value, scope: Scope, out: &mut BTreeSet<Grant>) {
    for rule in role["rules"].as_array().unwrap() {
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "unexpected nonResourceURLs: {rule}"
        );
        let groups = strings(&rule["apiGroups"], "apiGroups");
        let resources = strings(&rule["resources"], "resources");
        let verbs = strings(&rule["verbs"], "verbs");
        for x in groups.iter().chain(&resources).chain(&verbs) {
            assert!(!x.contains('*'), "wildcard in rule {rule}");
        }
        for g in &groups {
            for r in &resources {
                for v in &verbs {
                    assert!(
                        out.insert((scope, g.clone(), r.clone(), v.clone())),
                        "granted twice: {scope:?} {g}/{r} {v}"
                    );
                }
            }
        }
    }
}

fn required() -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for p in REQUIRED {
        for v in p.verbs {
            assert!(out.insert((p.scope, p.group.into(), p.resource.into(), (*v).into())));
        }
    }
    out
}

#[test]
fn chart_rbac_grants_exactly_what_the_code_uses() {
    let docs = documents(&template(&["--show-only", "templates/rbac.yaml"]));
    let cluster_roles = of_kind(&docs, "ClusterRole");
    let roles = of_kind(&docs, "Role");
    assert_eq!(cluster_roles.len(), 1, "one ClusterRole");
    assert_eq!(roles.len(), 1, "one Role");
    assert_eq!(roles[0]["metadata"]["namespace"], "ds-system");
    let mut granted = BTreeSet::new();
    grants(cluster_roles[0], Scope::Cluster, &mut granted);
    grants(roles[0], Scope::ReleaseNamespace, &mut granted);
    let required = required();
    let extra: Vec<_> = granted.difference(&required).collect();
    let missing: Vec<_> = required.difference(&granted).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "chart RBAC differs from src/rbac.rs REQUIRED\n granted but not used: {extra:#?}\n used but not granted: {missing:#?}"
    );

    // Both bindings bind the chart's ServiceAccount to the roles above.
    for (kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let b = of_kind(&docs, kind);
        assert_eq!(b.len(), 1, "one {kind}");
        assert_eq!(b[0]["roleRef"]["kind"], role_kind);
        assert_eq!(
            b[0]["roleRef"]["name"],
            if role_kind == "Role" {
                roles[0]["metadata"]["name"].clone()
            } else {
                cluster_roles[0]["metadata"]["name"].clone()
            }
        );
        let subjects = b[0]["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["namespace"], "ds-system");
    }
}

#[test]
fn no_rbac_objects_when_disabled() {
    let all = documents(&template(&["--set", "rbac.create=false"]));
    for kind in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(
            of_kind(&all, kind).is_empty(),
            "{kind} rendered with rbac.create=false"
        );
    }
}

#[test]
fn required_list_is_well_formed() {
    for p in REQUIRED {
        assert!(!p.verbs.is_empty(), "{p:?}");
        let mut sorted = p.verbs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, p.verbs, "verbs sorted and unique: {p:?}");
        assert!(!p.resource.contains('*') && !p.group.contains('*'));
    }
}
