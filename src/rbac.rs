//! Every Kubernetes permission the operator needs, derived from the API calls in the code. The Helm chart's
//! ClusterRole and Role grant exactly these (checked by `tests/it/rbac.rs`, which renders the chart with `helm
//! template`, and `tests/it/helm.rs`, which asks the real apiserver with `kubectl auth can-i`).
//!
//! When a controller starts making a new call, add it here (next to a note of where the call is) and in
//! `charts/datastorage-operator/templates/rbac.yaml`; the tests fail until both agree.

/// Where a permission is granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// ClusterRole + ClusterRoleBinding (cluster-scoped resources, or namespaced ones in every namespace).
    Cluster,
    /// Role + RoleBinding in the release namespace (the operator's own namespace).
    ReleaseNamespace,
}

/// One RBAC rule: API group (`""` = core), resource (`x/status` for a subresource), verbs, scope.
#[derive(Clone, Copy, Debug)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
}

const fn p(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    scope: Scope,
) -> Permission {
    Permission {
        group,
        resource,
        verbs,
        scope,
    }
}

const GROUP: &str = "datastorage.kubernaut.ai";

/// Every permission the operator uses. Keep sorted by scope, group, resource.
pub const REQUIRED: &[Permission] = &[
    // controller/audit.rs: `Controller::for_stream(watcher(Api<AuditObject>, ..))` (list + watch, all namespaces
    // unless `--namespace`); controller/audit/apply.rs: finalizer and TTL annotation patches (`api.patch`), TTL
    // expiry (`api.delete`); the query API reads single audits (`get`).
    p(
        GROUP,
        "remediationaudits",
        &["delete", "get", "list", "patch", "watch"],
        Scope::Cluster,
    ),
    // controller/audit/apply.rs `set_status`: `api.patch_status`.
    p(
        GROUP,
        "remediationaudits/status",
        &["patch"],
        Scope::Cluster,
    ),
    // controller/datastorage.rs: `Controller::new(Api<DataStorage>::all, fields(metadata.name=..))` (list + watch;
    // get by name).
    p(
        GROUP,
        "datastorages",
        &["get", "list", "watch"],
        Scope::Cluster,
    ),
    // controller/datastorage.rs: readiness conditions via `api.patch_status`.
    p(GROUP, "datastorages/status", &["patch"], Scope::Cluster),
    // tls/certs.rs `inject_ca_bundle`: the self-managed CA goes into the webhook configuration's caBundle
    // (`get`, then a strategic-merge `patch`).
    p(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        &["get", "patch"],
        Scope::Cluster,
    ),
    // Query API: bearer-token authentication (TokenReview) ...
    p(
        "authentication.k8s.io",
        "tokenreviews",
        &["create"],
        Scope::Cluster,
    ),
    // ... and per-namespace authorization (SubjectAccessReview: can the caller list remediationaudits there?).
    p(
        "authorization.k8s.io",
        "subjectaccessreviews",
        &["create"],
        Scope::Cluster,
    ),
    // checkpoint.rs: the leader writes the signed chain-head checkpoints with server-side apply (`patch`, and
    // `create` the first time: an apply that creates is authorized as create); every replica `get`s them.
    p(
        "",
        "configmaps",
        &["create", "get", "patch"],
        Scope::ReleaseNamespace,
    ),
    // events.rs: kube-runtime's `Recorder::publish` creates an Event in the audit's namespace, then patches it to
    // count repeats (series).
    p(
        "events.k8s.io",
        "events",
        &["create", "patch"],
        Scope::Cluster,
    ),
    // controller/datastorage/steps.rs `read_secret`: `Api<Secret>::namespaced(..).get_opt(name)` for the database URL,
    // the embedding API key and the Redis URL. The chart only grants this in the release namespace, so every
    // Secret a DataStorage references must live there. tls/certs.rs `ensure_secret`: the self-managed serving
    // CA and certificate, read (`get_opt`) and created once (`create`; never updated).
    p("", "secrets", &["create", "get"], Scope::ReleaseNamespace),
    // Leader election (only the leader writes): the Lease in the release namespace. kube-lease-manager gets and
    // creates it, then takes and renews it with server-side apply / strategic merge patches (verb `patch`).
    p(
        "coordination.k8s.io",
        "leases",
        &["create", "get", "patch"],
        Scope::ReleaseNamespace,
    ),
];
