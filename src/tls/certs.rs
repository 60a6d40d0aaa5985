//! The Service's serving certificate (the query API and the admission webhook) when the operator manages it itself
//! (the chart's default; with cert-manager the certificate is a mounted Secret and the webhook's CA bundle is injected
//! by cert-manager's CA injector).
//!
//! Every replica must serve a certificate signed by the one CA in the webhook configuration's `caBundle`, so the CA
//! and the serving certificate live in one Secret of the release namespace: the first replica to start generates them
//! (rcgen, ECDSA P-256) and *creates* the Secret; a replica that loses that race (409 AlreadyExists) reads the
//! winner's. Nobody ever overwrites it, so replicas cannot fight. Each replica then sets the `caBundle` of the webhook
//! configuration (a strategic-merge patch of each webhook's `clientConfig`, the same value from every replica). To
//! rotate: delete the Secret and restart the operator.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::json;

use super::TlsPem;

/// The Secret's keys (those of a `kubernetes.io/tls` Secret, plus the CA).
pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";

/// A CA and a serving certificate it signed.
#[derive(Clone)]
pub struct Bundle {
    pub ca_pem: String,
    pub serving: TlsPem,
}

/// Generates a CA and a serving certificate for `dns_names` (IP addresses among them become IP SANs), with rcgen's
/// default validity (no expiry in practice: rotation is deleting the Secret).
pub fn generate(dns_names: &[String]) -> Result<Bundle, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "datastorage serving CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca_pem: ca_cert.pem(),
        serving: TlsPem {
            cert_chain: cert.pem(),
            key: key.serialize_pem(),
        },
    })
}

/// The DNS names of a Service: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn from_secret(s: &Secret) -> Option<Bundle> {
    let data = s.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|v| !v.is_empty())
    };
    Some(Bundle {
        ca_pem: get(CA_KEY)?,
        serving: TlsPem {
            cert_chain: get(CERT_KEY)?,
            key: get(KEY_KEY)?,
        },
    })
}

/// The bundle in Secret `namespace/name`, created (generated for `dns_names`) when absent. Create-if-absent only:
/// a replica that loses the creation race reads the winner's bundle.
pub async fn ensure_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    dns_names: &[String],
) -> anyhow::Result<Bundle> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(existing) = api.get_opt(name).await? {
        return from_secret(&existing).ok_or_else(|| {
            anyhow::anyhow!(
                "Secret {namespace}/{name} lacks {CA_KEY}, {CERT_KEY} or {KEY_KEY}; delete it to have a new CA made"
            )
        });
    }
    let bundle = generate(dns_names)?;
    let data: BTreeMap<String, ByteString> = [
        (CA_KEY, &bundle.ca_pem),
        (CERT_KEY, &bundle.serving.cert_chain),
        (KEY_KEY, &bundle.serving.key),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "datastorage-operator".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(bundle),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let winner = api.get(name).await?;
            from_secret(&winner)
                .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{name} is incomplete"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Sets `caBundle` of every webhook of the MutatingWebhookConfiguration `name` (strategic merge by webhook name).
pub async fn inject_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = api.get(name).await?;
    let ca = ByteString(ca_pem.as_bytes().to_vec());
    let webhooks: Vec<_> = config
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .filter(|w| w.client_config.ca_bundle.as_ref() != Some(&ca))
        .map(|w| json!({ "name": w.name, "clientConfig": { "caBundle": ca } }))
        .collect();
    if webhooks.is_empty() {
        return Ok(());
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({ "webhooks": webhooks })),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_certificate_serves_tls() {
        let b = generate(&service_dns_names("ds", "ds-system")).unwrap();
        assert!(b.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(b.serving.key.contains("PRIVATE KEY"));
        super::super::server_config(&b.serving).unwrap();
    }
}
