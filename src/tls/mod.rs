//! TLS of the operator's Service: one serving certificate for the query API (HTTPS in the chart's default) and the
//! admission webhook, from mounted PEM files (cert-manager's Secret) or managed by the operator itself ([`certs`]).
//!
//! Both ports share one certificate because they are one Service: its DNS names are the certificate's SANs.

pub mod certs;

use std::sync::Arc;

use kube::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A serving certificate chain and its key, PEM.
#[derive(Clone)]
pub struct TlsPem {
    pub cert_chain: String,
    pub key: String,
}

/// Where a port's serving certificate comes from.
#[derive(Clone)]
pub enum ServingTls {
    /// PEM files, read at start-up (cert-manager's Secret, mounted).
    Files {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
    /// Managed by the operator: CA and certificate in Secret `namespace/secret` (created by the first replica), for
    /// Service `service`. The webhook also puts the CA into the `caBundle` of MutatingWebhookConfiguration
    /// `webhook_configuration`.
    SelfManaged {
        namespace: String,
        secret: String,
        service: String,
        webhook_configuration: String,
    },
    /// Given in memory (tests).
    Pem(TlsPem),
}

impl ServingTls {
    /// The certificate and key. `SelfManaged` creates the Secret when no replica has yet (never overwrites one).
    pub async fn load(&self, client: &Client) -> anyhow::Result<TlsPem> {
        Ok(match self {
            ServingTls::Pem(p) => p.clone(),
            ServingTls::Files { cert, key } => TlsPem {
                cert_chain: std::fs::read_to_string(cert)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?,
                key: std::fs::read_to_string(key)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?,
            },
            ServingTls::SelfManaged {
                namespace,
                secret,
                service,
                ..
            } => {
                self_managed_bundle(client, namespace, secret, service)
                    .await?
                    .serving
            }
        })
    }

    /// The CA and certificate of `SelfManaged`, from its Secret (created when no replica has yet); `None` for a
    /// certificate that is not the operator's.
    pub async fn self_managed(&self, client: &Client) -> anyhow::Result<Option<certs::Bundle>> {
        match self {
            ServingTls::SelfManaged {
                namespace,
                secret,
                service,
                ..
            } => Ok(Some(
                self_managed_bundle(client, namespace, secret, service).await?,
            )),
            _ => Ok(None),
        }
    }
}

/// Secret `namespace/secret`'s bundle for Service `service`, created when absent.
async fn self_managed_bundle(
    client: &Client,
    namespace: &str,
    secret: &str,
    service: &str,
) -> anyhow::Result<certs::Bundle> {
    let names = certs::service_dns_names(service, namespace);
    certs::ensure_secret(client, namespace, secret, &names).await
}

/// The rustls configuration of a serving port (TLS 1.2+, HTTP/1.1, ring).
pub fn server_config(pem: &TlsPem) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(pem.cert_chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("serving certificate: {e}"))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "serving certificate: no CERTIFICATE block"
    );
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
        .map_err(|e| anyhow::anyhow!("serving certificate's key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads the certificate of `tls`, retrying every 10 s until it can be had (the self-managed Secret needs the API
/// server; a mounted Secret may appear late), and returns its rustls configuration.
pub async fn server_config_when_ready(
    client: &Client,
    tls: &ServingTls,
    what: &str,
) -> Arc<rustls::ServerConfig> {
    loop {
        match tls.load(client).await.and_then(|pem| server_config(&pem)) {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, "{what}: no serving certificate yet; retrying in 10s");
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
        }
    }
}
