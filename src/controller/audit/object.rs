//! Decoding RemediationAudits so that one object cannot stop the watch.
//!
//! kube decodes a whole LIST page (and each watch event) with `serde_json`, whose recursion limit is 128 levels.
//! `spec.details` is free-form JSON the API server accepts at any depth, so a single object nested ~125 levels
//! deep made every list page that held it fail: after a restart or failover no audit of the cluster was stored.
//! kube's `DeserializeGuard` does not help, because it first buffers the object as a value tree and hits the same
//! limit. [`AuditObject`] instead captures each item as raw JSON (serde_json skips a raw value without recursing,
//! so the page decodes whatever an item holds), then decodes that one item on its own: an item that does not
//! decode becomes [`AuditObject::Undecodable`] with the metadata needed to reject it by name.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::crd::{RemediationAudit, RemediationAuditStatus};

/// One RemediationAudit as the operator's watch sees it.
#[derive(Debug, Clone)]
pub enum AuditObject {
    Audit(Box<RemediationAudit>),
    Undecodable(Box<Undecodable>),
}

/// An object the operator cannot decode, with what it needs to reject it.
#[derive(Debug, Clone)]
pub struct Undecodable {
    pub metadata: ObjectMeta,
    /// Why it does not decode (the decoder's message).
    pub error: String,
    /// Its status, when that decodes (the operator wrote it).
    pub status: Option<RemediationAuditStatus>,
}

impl AuditObject {
    /// Decodes one object from its JSON text. Never fails: what does not decode is [`AuditObject::Undecodable`].
    pub fn decode(json: &str) -> Self {
        match serde_json::from_str::<RemediationAudit>(json) {
            Ok(ra) => Self::Audit(Box::new(ra)),
            Err(e) => Self::Undecodable(Box::new(Undecodable::from_json(json, e))),
        }
    }
}

impl Undecodable {
    fn from_json(json: &str, error: serde_json::Error) -> Self {
        // Only shallow fields are read; everything else (spec, managedFields — whose fieldsV1 mirrors the spec's
        // depth —, the rest of the status) is skipped as raw JSON, at any depth.
        let lite: Lite = serde_json::from_str(json).unwrap_or_default();
        let status = lite
            .status
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        let error = if error.to_string().contains("recursion limit exceeded") {
            "the object is nested more than 128 levels deep".to_string()
        } else {
            error.to_string()
        };
        Self {
            metadata: lite.metadata.into(),
            error,
            status,
        }
    }
}

impl<'de> Deserialize<'de> for AuditObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Self::decode(raw.get()))
    }
}

impl Resource for AuditObject {
    type DynamicType = ();
    type Scope = <RemediationAudit as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        RemediationAudit::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        RemediationAudit::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        RemediationAudit::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        RemediationAudit::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Audit(ra) => ra.meta(),
            Self::Undecodable(u) => &u.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Audit(ra) => ra.meta_mut(),
            Self::Undecodable(u) => &mut u.metadata,
        }
    }
}

#[derive(Deserialize, Default)]
struct Lite {
    #[serde(default)]
    metadata: LiteMeta,
    #[serde(default)]
    status: Option<Box<RawValue>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct LiteMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    generation: Option<i64>,
    resource_version: Option<String>,
    finalizers: Option<Vec<String>>,
    deletion_timestamp: Option<Time>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

impl From<LiteMeta> for ObjectMeta {
    fn from(m: LiteMeta) -> Self {
        Self {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            generation: m.generation,
            resource_version: m.resource_version,
            finalizers: m.finalizers,
            deletion_timestamp: m.deletion_timestamp,
            labels: m.labels,
            annotations: m.annotations,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::ObjectList;

    fn nested(depth: usize) -> String {
        format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
    }

    fn item(name: &str, details: &str, status: &str) -> String {
        format!(
            r#"{{"apiVersion":"datastorage.kubernaut.ai/v1alpha1","kind":"RemediationAudit",
            "metadata":{{"name":"{name}","namespace":"ns","uid":"u-{name}","generation":3,"resourceVersion":"7",
              "managedFields":[{{"manager":"kubectl","fieldsV1":{details}}}]}},
            "spec":{{"remediationRequestId":"rr-{name}","alertFingerprint":"fp","phase":"Completed",
              "outcome":"Success","actionType":"restart-pod","severity":"critical","environment":"production",
              "clusterName":"c","targetResource":"apps/v1/Deployment/ns/api",
              "startTime":"2026-01-01T00:00:00Z","details":{details}}}{status}}}"#
        )
    }

    #[test]
    fn one_deep_item_does_not_fail_the_page_and_keeps_its_name() {
        let deep = nested(200);
        let page = format!(
            r#"{{"apiVersion":"v1","kind":"List","metadata":{{"resourceVersion":"9"}},"items":[{},{},{}]}}"#,
            item("good-1", "{}", ""),
            item(
                "deep",
                &deep,
                r#","status":{"state":"Rejected","observedGeneration":2}"#
            ),
            item("good-2", r#"{"k":"v"}"#, ""),
        );
        // What kube's list decoding does with the page.
        let list: ObjectList<AuditObject> = serde_json::from_str(&page).unwrap();
        let names: Vec<_> = list
            .items
            .iter()
            .map(|o| o.meta().name.clone().unwrap())
            .collect();
        assert_eq!(names, ["good-1", "deep", "good-2"]);
        assert!(matches!(&list.items[0], AuditObject::Audit(_)));
        assert!(matches!(&list.items[2], AuditObject::Audit(_)));
        let AuditObject::Undecodable(u) = &list.items[1] else {
            panic!("the deep item decoded");
        };
        assert_eq!(u.error, "the object is nested more than 128 levels deep");
        assert_eq!(u.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(u.metadata.uid.as_deref(), Some("u-deep"));
        assert_eq!(u.metadata.generation, Some(3));
        let status = u.status.as_ref().unwrap();
        assert_eq!(status.state, Some(crate::crd::AuditState::Rejected));
        assert_eq!(status.observed_generation, Some(2));
        // The same page through kube's DeserializeGuard fails as a whole (the defect this type fixes).
        assert!(
            serde_json::from_str::<ObjectList<kube::core::DeserializeGuard<RemediationAudit>>>(
                &page
            )
            .is_err()
        );
    }

    #[test]
    fn a_schema_error_is_undecodable_with_the_decoder_message() {
        let bad = item("bad", "{}", "").replace(r#""severity":"critical""#, r#""severity":7"#);
        let AuditObject::Undecodable(u) = AuditObject::decode(&bad) else {
            panic!("decoded");
        };
        assert!(u.error.contains("invalid type"), "{}", u.error);
        assert_eq!(u.metadata.name.as_deref(), Some("bad"));
        assert_eq!(u.status, None);
    }

    #[test]
    fn a_hostile_status_does_not_lose_the_name() {
        let odd = item(
            "odd",
            &nested(300),
            r#","status":{"state":{"x":[1]},"observedGeneration":"y"}"#,
        );
        let AuditObject::Undecodable(u) = AuditObject::decode(&odd) else {
            panic!("decoded");
        };
        assert_eq!(u.metadata.name.as_deref(), Some("odd"));
        assert_eq!(u.status, None);
    }
}
