//! Authentication by Kubernetes TokenReview and authorization by SubjectAccessReview, both made with the
//! operator's own client and cached for [`CACHE_TTL`].
//!
//! The permission checked is `list remediationaudits.datastorage.kubernaut.ai` — exactly what `kubectl get raudit`
//! needs — first cluster-wide (namespace ""), which allows every namespace, then per namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use moka::future::Cache;
use sha2::{Digest, Sha256};

use super::problem::Problem;

pub const CACHE_TTL: Duration = Duration::from_secs(30);
pub const GROUP: &str = "datastorage.kubernaut.ai";
pub const RESOURCE: &str = "remediationaudits";
pub const VERB: &str = "list";

/// The audience the query API asks the TokenReview to check by default: a token minted for it
/// (`kubectl create token SA --audience datastorage`, `kubectl audit --service-account SA`) is accepted here and
/// refused by the API server itself, and a token minted for the API server (a kubeconfig's, a pod's own) is refused
/// here, so a token forwarded to this API cannot be replayed against the API server, nor the other way round.
pub const DEFAULT_AUDIENCE: &str = "datastorage";

/// Header that carries the caller's token through the apiserver's service proxy, which consumes (and strips) the
/// `Authorization` header after authenticating the proxy request itself.
pub const FORWARDED_TOKEN_HEADER: &str = "x-datastorage-authorization";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    fn cache_key(&self) -> String {
        let mut h = Sha256::new();
        for part in [&self.username, &self.uid] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for g in &self.groups {
            h.update(g.as_bytes());
            h.update([1]);
        }
        for (k, vs) in &self.extra {
            h.update(k.as_bytes());
            for v in vs {
                h.update([2]);
                h.update(v.as_bytes());
            }
            h.update([3]);
        }
        hex::encode(h.finalize())
    }
}

/// Which namespaces a caller may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Cluster-wide `list`: every namespace.
    All,
    /// Only these (possibly none).
    Namespaces(Vec<String>),
}

impl Scope {
    pub fn allows(&self, ns: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespaces(list) => list.iter().any(|n| n == ns),
        }
    }
}

#[derive(Clone)]
pub struct Auth {
    client: Client,
    /// The audiences a token must be valid for (empty: the API server's own).
    audiences: Vec<String>,
    /// sha256(token) → the user, or `None` for a token the apiserver rejected.
    tokens: Cache<String, Option<Arc<User>>>,
    /// (user key, namespace) → allowed.
    access: Cache<(String, String), bool>,
}

impl Auth {
    pub fn new(client: Client, audiences: Vec<String>) -> Self {
        Self {
            client,
            audiences: audiences.into_iter().filter(|a| !a.is_empty()).collect(),
            tokens: Cache::builder()
                .max_capacity(10_000)
                .time_to_live(CACHE_TTL)
                .build(),
            access: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(CACHE_TTL)
                .build(),
        }
    }

    /// The caller of a request with this `Authorization` value (or forwarded token header value).
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Arc<User>, Problem> {
        let Some(header) = header else {
            return Err(Problem::unauthorized(
                "missing bearer token: send `Authorization: Bearer <token>` (e.g. from `kubectl create token`)",
            ));
        };
        let token = bearer_token(header).ok_or_else(|| {
            Problem::unauthorized("the Authorization header is not `Bearer <token>`")
        })?;
        let key = hex::encode(Sha256::digest(token.as_bytes()));
        if let Some(cached) = self.tokens.get(&key).await {
            return cached.ok_or_else(|| self.invalid_token());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(self.audiences.clone()).filter(|a| !a.is_empty()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let result = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                Problem::unavailable(
                    "cannot verify the token: the Kubernetes API did not answer the TokenReview",
                )
            })?;
        // With audiences asked for, the answer names those the token is valid for (the API server wraps
        // audience-unaware authenticators so that they answer for its own audiences only).
        let user = result
            .status
            .filter(|s| s.authenticated == Some(true))
            .filter(|s| {
                self.audiences.is_empty()
                    || s.audiences
                        .iter()
                        .flatten()
                        .any(|a| self.audiences.contains(a))
            })
            .and_then(|s| s.user)
            .and_then(|u| {
                Some(Arc::new(User {
                    username: u.username.filter(|n| !n.is_empty())?,
                    uid: u.uid.unwrap_or_default(),
                    groups: u.groups.unwrap_or_default(),
                    extra: u.extra.unwrap_or_default(),
                }))
            });
        self.tokens.insert(key, user.clone()).await;
        user.ok_or_else(|| self.invalid_token())
    }

    fn invalid_token(&self) -> Problem {
        if self.audiences.is_empty() {
            return Problem::unauthorized(
                "the bearer token was not accepted by the Kubernetes API (TokenReview)",
            );
        }
        let audiences = self.audiences.join(", ");
        let first = self
            .audiences
            .first()
            .map_or(DEFAULT_AUDIENCE, String::as_str);
        Problem::unauthorized(format!(
            "the bearer token was not accepted for the audience {audiences} (TokenReview): a token the API server \
             accepts for itself is not enough here; mint one for this API with `kubectl create token <serviceaccount> \
             --audience {first}` or `kubectl audit --service-account <serviceaccount>`"
        ))
    }

    /// Whether `user` may list RemediationAudits in `namespace` ("" = cluster-wide).
    pub async fn may_list(&self, user: &User, namespace: &str) -> Result<bool, Problem> {
        let key = (user.cache_key(), namespace.to_string());
        if let Some(allowed) = self.access.get(&key).await {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.username.clone()),
                uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(VERB.into()),
                    group: Some(GROUP.into()),
                    resource: Some(RESOURCE.into()),
                    namespace: Some(namespace.to_string()).filter(|n| !n.is_empty()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let result = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "SubjectAccessReview failed");
                Problem::unavailable(
                    "cannot check permissions: the Kubernetes API did not answer the SubjectAccessReview",
                )
            })?;
        let allowed = result.status.is_some_and(|s| s.allowed);
        self.access.insert(key, allowed).await;
        Ok(allowed)
    }

    /// The scope of a request: `requested` = the namespace the request names, `candidates` = the namespaces that
    /// hold audits (only asked for when the request names none and the caller is not allowed cluster-wide).
    pub async fn scope<F, Fut>(
        &self,
        user: &User,
        requested: Option<&str>,
        candidates: F,
    ) -> Result<Scope, Problem>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<String>, Problem>>,
    {
        if self.may_list(user, "").await? {
            return Ok(match requested {
                Some(ns) => Scope::Namespaces(vec![ns.to_string()]),
                None => Scope::All,
            });
        }
        if let Some(ns) = requested {
            return if self.may_list(user, ns).await? {
                Ok(Scope::Namespaces(vec![ns.to_string()]))
            } else {
                Err(forbidden(user, Some(ns)))
            };
        }
        let namespaces = candidates().await?;
        let checks = futures::stream::iter(namespaces)
            .map(|ns| async move {
                let ok = self.may_list(user, &ns).await;
                ok.map(|ok| ok.then_some(ns))
            })
            .buffered(8)
            .collect::<Vec<_>>()
            .await;
        let mut allowed = Vec::new();
        for c in checks {
            if let Some(ns) = c? {
                allowed.push(ns);
            }
        }
        Ok(Scope::Namespaces(allowed))
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive (RFC 9110 §11.1).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains([' ', '\t']))
        .then_some(token)
}

pub fn forbidden(user: &User, namespace: Option<&str>) -> Problem {
    let place = match namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".to_string(),
    };
    Problem::forbidden(format!(
        "{:?} may not list {RESOURCE}.{GROUP} {place}",
        user.username
    ))
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for (header, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("bEaReR   abc  ", Some("abc")),
            ("Bearer\tabc", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
            ("Bearer a b", None),
        ] {
            assert_eq!(bearer_token(header), token, "{header:?}");
        }
    }
}
