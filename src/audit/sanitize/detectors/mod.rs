//! Structural detectors: one file each, with the kinds it can emit and its own vectors. A new structural rule is
//! one file here plus its line in [`ALL`].

pub(crate) mod authorization;
pub(crate) mod docker_auth;
pub(crate) mod env_pair;
pub(crate) mod function_arg;
pub(crate) mod k8s_secret;
pub(crate) mod key_value;
pub(crate) mod keyed_json;
pub(crate) mod url_userinfo;
pub(crate) mod xml_element;

use super::engine::Detector;

/// Every structural detector.
pub(crate) const ALL: &[Detector] = &[
    url_userinfo::DETECTOR,
    authorization::DETECTOR,
    keyed_json::DETECTOR,
    key_value::DETECTOR,
    env_pair::DETECTOR,
    xml_element::DETECTOR,
    function_arg::DETECTOR,
    k8s_secret::DETECTOR,
    docker_auth::DETECTOR,
];

/// The first capture group among `names` that matched.
pub(crate) fn first_group<'h>(c: &regex::Captures<'h>, names: &[&str]) -> Option<regex::Match<'h>> {
    names.iter().find_map(|n| c.name(n))
}

/// Kinds a keyed detector can emit (every [`super::keys::KeyClass`]'s kinds).
pub(crate) const KEYED_JSON_KINDS: &[super::SecretKind] = {
    use super::SecretKind::*;
    &[
        PasswordJson,
        ApiKeyJson,
        TokenJson,
        SecretJson,
        AwsSecretKey,
        PemPrivateKey,
        AuthorizationHeader,
        GenericSecret,
    ]
};

/// Kinds a `key=value` detector can emit.
pub(crate) const KEYED_PLAIN_KINDS: &[super::SecretKind] = {
    use super::SecretKind::*;
    &[
        PasswordKv,
        ApiKey,
        Token,
        Secret,
        AwsSecretKey,
        PemPrivateKey,
        AuthorizationHeader,
        GenericSecret,
    ]
};
