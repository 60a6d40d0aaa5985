//! The mutating admission webhook on the real kube-apiserver (hack/cp.sh): the in-process operator serves it on
//! 127.0.0.1 over TLS (a CA and certificate made by the operator's own `certs::generate`), registered with a
//! MutatingWebhookConfiguration whose `clientConfig.url` points at it and whose namespaceSelector is the test's own
//! namespace (concurrent suites are untouched). Issue 18, acceptance 1 (nothing leaked: spec, annotations, etcd;
//! status and metrics) and 3 (webhook down: admitted, redacted by the controller, nothing lost, nothing panics).

use std::time::Duration;

use base64::Engine;
use datastorage::operator::{Admission, ServingTls};
use datastorage::tls::certs;
use serde_json::Value;

use crate::support::kube::{EnvOptions, TestEnv, audit_yaml, eventually, kubectl, kubectl_raw};

const WAIT: Duration = Duration::from_secs(60);
const PASSWORD: &str = "Sup3rS3cret!";
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpkZWZhdWx0In0.Xq3bLxvK9mN2pQ7rS5tU8wY1zA4cE6gH0jJ2kL3nM5o";
const SLACK: &str = "xoxb-2048392012-1029384756102-Zq8WnV3xKp5RtY7uB2cD9eFg";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The audit carrying the three secrets, in the spec's free text and in `details`.
fn leaky(name: &str, request_id: &str) -> String {
    audit_yaml(
        name,
        request_id,
        &format!(
            "  errorMessage: \"image pull failed: password={PASSWORD} token {JWT}\"\n  details:\n    notify: \"slack {SLACK}\"\n"
        ),
    )
}

fn assert_clean(what: &str, text: &str) {
    for secret in [PASSWORD, JWT, SLACK] {
        assert!(
            !text.contains(secret),
            "{what} holds {secret:.12}…:\n{text}"
        );
    }
}

/// A MutatingWebhookConfiguration for the test namespace only, deleted on drop.
struct Webhook(String);

impl Webhook {
    fn register(ns: &str, url: &str, ca_pem: &str, failure_policy: &str) -> Self {
        let name = format!("datastorage-{ns}");
        let yaml = format!(
            r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {name}
webhooks:
- name: remediationaudits.datastorage.kubernaut.ai
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: {failure_policy}
  matchPolicy: Equivalent
  timeoutSeconds: 5
  reinvocationPolicy: IfNeeded
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {ns}
  rules:
  - apiGroups: ["datastorage.kubernaut.ai"]
    apiVersions: ["*"]
    operations: ["CREATE", "UPDATE"]
    resources: ["remediationaudits"]
    scope: Namespaced
  clientConfig:
    url: {url}
    caBundle: {}
"#,
            b64(ca_pem)
        );
        kubectl(&["apply", "-f", "-"], Some(&yaml));
        Self(name)
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = kubectl_raw(
            &[
                "delete",
                "mutatingwebhookconfiguration",
                &self.0,
                "--ignore-not-found",
            ],
            None,
        );
    }
}

/// The object as etcd stores it, read with etcd's own API (the JSON gateway of the cp.sh etcd, whose client port is
/// in `$DATASTORAGE_CP_DIR/state`).
async fn etcd_value(ns: &str, name: &str) -> String {
    let dir = std::env::var("DATASTORAGE_CP_DIR").unwrap_or_else(|_| {
        panic!(
            "DATASTORAGE_CP_DIR is not set: export DATASTORAGE_CP_DIR=<the CP_DIR of hack/cp.sh up> (make test does)"
        )
    });
    let state = std::fs::read_to_string(format!("{dir}/state")).unwrap();
    let port = state
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_CLIENT_PORT="))
        .unwrap();
    let key = format!("/registry/datastorage.kubernaut.ai/remediationaudits/{ns}/{name}");
    let resp: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v3/kv/range"))
        .json(&serde_json::json!({ "key": b64(&key) }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let value = resp["kvs"][0]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{key} not in etcd: {resp}"));
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .unwrap(),
    )
    .unwrap()
}

async fn scrape(env: &TestEnv) -> String {
    let op = env.operator.as_ref().unwrap();
    reqwest::get(format!("http://{}/metrics", op.ops_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the scrape"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_etcd_and_the_status_says_redacted_at_admission() {
    let bundle = certs::generate(&["127.0.0.1".into(), "localhost".into()]).unwrap();
    let env = TestEnv::with(
        "adm",
        EnvOptions {
            admission: Some(Admission {
                addr: "127.0.0.1:0".parse().unwrap(),
                tls: ServingTls::Pem(bundle.serving.clone()),
            }),
            ..EnvOptions::default()
        },
    )
    .await;
    let addr = env.operator.as_ref().unwrap().admission_addr.unwrap();
    // Fail: in this test a webhook that does not answer must fail the apply, not leave the work to the controller.
    let _hook = Webhook::register(
        &env.ns,
        &format!("https://{addr}/mutate"),
        &bundle.ca_pem,
        "Fail",
    );
    // Webhook configurations are loaded asynchronously: probe with server-side dry runs until the redaction shows.
    let probe = leaky("probe", "rr-adm-probe");
    eventually(WAIT, "the webhook to redact dry runs", || async {
        let out = kubectl_raw(
            &[
                "-n",
                &env.ns,
                "create",
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
            ],
            Some(&probe),
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && text.contains("[REDACTED:") && !text.contains(PASSWORD))
            .then_some(())
    })
    .await;

    // Client-side apply: kubectl keeps its last-applied copy in an annotation.
    let out = kubectl_raw(
        &["-n", &env.ns, "apply", "-f", "-"],
        Some(&leaky("a1", "rr-adm-1")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("secret(s) redacted from the spec before storage"),
        "kubectl shows the webhook's warning: {warning}"
    );

    // Straight from etcd, before anything else can touch the object.
    let stored = etcd_value(&env.ns, "a1").await;
    assert!(stored.contains("[REDACTED:"), "{stored}");
    assert_clean("etcd", &stored);

    let yaml = env.kubectl(&["get", "raudit", "a1", "-o", "yaml"], None);
    assert_clean("kubectl get -o yaml", &yaml);
    let obj: Value =
        serde_json::from_str(&env.kubectl(&["get", "raudit", "a1", "-o", "json"], None)).unwrap();
    let annotations = &obj["metadata"]["annotations"];
    let applied = annotations["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap();
    assert!(applied.contains("[REDACTED:"), "{applied}");
    let note = annotations[datastorage::admission::REDACTED_ANNOTATION]
        .as_str()
        .unwrap();
    for kind in ["jwt", "password_kv", "slack_token"] {
        assert!(note.contains(&format!("{kind}=")), "{note}");
    }
    assert_eq!(obj["metadata"]["generation"], 1);

    let persisted = env.wait_state("a1", "Persisted", WAIT).await;
    let message = persisted["status"]["message"].as_str().unwrap();
    assert!(message.contains("redacted at admission: "), "{message}");
    // The store never saw the secrets either.
    let store = env.store().await;
    let em: String = sqlx::query_scalar("SELECT error_message FROM audits WHERE name = 'a1'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_clean("the store", &em);

    let metrics = scrape(&env).await;
    for kind in ["jwt", "password_kv", "slack_token"] {
        let n = sample(
            &metrics,
            &format!("datastorage_redacted_at_admission_total{{kind=\"{kind}\"}}"),
        );
        assert!(n >= 1.0, "{kind}: {n}");
    }
    assert!(
        sample(
            &metrics,
            "datastorage_admission_reviews_total{result=\"redacted\"}"
        ) >= 2.0
    );
    assert_eq!(
        sample(&metrics, "datastorage_specs_redacted_total"),
        0.0,
        "the webhook did it: the controller had nothing to redact in place"
    );

    // An update carrying a new secret is redacted the same way; the operator's own writes pass.
    let out = kubectl_raw(
        &["-n", &env.ns, "apply", "-f", "-"],
        Some(&leaky("a1", "rr-adm-1").replace("image pull failed", "image pull failed again")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean("etcd after an update", &etcd_value(&env.ns, "a1").await);

    // A rule the CRD cannot check (no clock in CEL) is refused at apply time by the webhook.
    let future = audit_yaml("a2", "rr-adm-2", "")
        .replace("2026-01-10T10:00:00Z", "2099-01-10T10:00:00Z")
        .replace("2026-01-10T10:00:42Z", "2099-01-10T10:00:42Z");
    let out = kubectl_raw(&["-n", &env.ns, "apply", "-f", "-"], Some(&future));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "admitted: {err}");
    assert!(
        err.contains("spec.startTime") && err.contains("future_time"),
        "{err}"
    );
}

/// Acceptance 3: the webhook is registered (failurePolicy Ignore, the chart's) but unreachable. `kubectl apply`
/// succeeds at once, the audit is stored redacted, and the controller redacts the resource's own spec and
/// last-applied annotation in place (counted); an audit that was already settled with secrets in its spec is cleaned
/// by the controller's sweep when the operator starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_down_the_audit_is_admitted_stored_and_its_spec_redacted_by_the_controller() {
    let mut env = TestEnv::with(
        "admdown",
        EnvOptions {
            start_operator: false,
            ..EnvOptions::default()
        },
    )
    .await;
    let bundle = certs::generate(&["127.0.0.1".into()]).unwrap();
    // Nothing listens there (a port just bound and released).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _hook = Webhook::register(
        &env.ns,
        &format!("https://{dead}/mutate"),
        &bundle.ca_pem,
        "Ignore",
    );
    let t0 = std::time::Instant::now();
    let out = kubectl_raw(
        &["-n", &env.ns, "apply", "-f", "-"],
        Some(&leaky("d1", "rr-down-1")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    // With the webhook down the secret is in etcd until the controller comes.
    assert!(etcd_value(&env.ns, "d1").await.contains(PASSWORD));

    // An audit "settled before this version": its status says Persisted for its generation, its spec holds secrets.
    let out = kubectl_raw(
        &["-n", &env.ns, "apply", "-f", "-"],
        Some(&leaky("old", "rr-down-2")),
    );
    assert!(out.status.success());

    env.start_operator().await;
    env.wait_state("d1", "Persisted", WAIT).await;
    eventually(
        WAIT,
        "the controller to redact d1's spec in place",
        || async {
            let yaml = env.kubectl(&["get", "raudit", "d1", "-o", "yaml"], None);
            (![PASSWORD, JWT, SLACK].iter().any(|s| yaml.contains(s))).then_some(())
        },
    )
    .await;
    assert_clean("etcd", &etcd_value(&env.ns, "d1").await);
    let obj: Value =
        serde_json::from_str(&env.kubectl(&["get", "raudit", "d1", "-o", "json"], None)).unwrap();
    assert!(
        obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap()
            .contains("[REDACTED:")
    );
    // The redacted spec is a new generation, stored too: nothing lost, one audit.
    let st = env.wait_state("d1", "Persisted", WAIT).await;
    assert!(st["metadata"]["generation"].as_i64().unwrap() >= 2, "{st}");
    let store = env.store().await;
    let (n, em): (i64, String) =
        sqlx::query_as("SELECT count(*) OVER (), error_message FROM audits WHERE name = 'd1'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(n, 1);
    assert_clean("the store", &em);
    env.wait_state("old", "Persisted", WAIT).await;
    let metrics = scrape(&env).await;
    assert!(
        sample(&metrics, "datastorage_specs_redacted_total") >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "datastorage_redacted_at_admission_total{kind=\"jwt\"}"
        ),
        0.0
    );

    // The sweep: an audit settled (Persisted for its generation) while its spec still holds secrets — what an
    // operator before this version left behind — is cleaned once the controller looks at it again.
    env.stop_operator();
    let out = kubectl_raw(
        &["-n", &env.ns, "apply", "-f", "-"],
        Some(&leaky("swept", "rr-down-3")),
    );
    assert!(out.status.success());
    let status = serde_json::json!({ "status": {
        "state": "Persisted", "auditId": 999_999, "observedGeneration": 1, "message": "stored",
        "persistedAt": "2026-01-10T10:01:00Z", "embedding": "Disabled",
    }});
    env.kubectl(
        &[
            "patch",
            "raudit",
            "swept",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ],
        None,
    );
    env.start_operator().await;
    eventually(
        WAIT,
        "the sweep to redact the settled audit's spec",
        || async {
            let yaml = env.kubectl(&["get", "raudit", "swept", "-o", "yaml"], None);
            (!yaml.contains(PASSWORD) && yaml.contains("[REDACTED:")).then_some(())
        },
    )
    .await;
    env.wait_state("swept", "Persisted", WAIT).await;
}

/// The self-managed certificate: two replicas started against a webhook configuration without a caBundle. The first
/// creates the CA and serving certificate in one Secret; the second reads the same Secret (create-if-absent, never
/// overwritten); the caBundle is set, so the API server trusts whichever replica it calls (failurePolicy Fail here:
/// an untrusted certificate would fail the apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_certificate_is_shared_by_replicas_and_its_ca_injected() {
    let mut env = TestEnv::with(
        "admtls",
        EnvOptions {
            start_operator: false,
            ..EnvOptions::default()
        },
    )
    .await;
    let hook_name = format!("datastorage-{}", env.ns);
    // The "Service" is 127.0.0.1 (an IP SAN): the test's API server calls the in-process webhook by URL.
    let tls = ServingTls::SelfManaged {
        namespace: env.ns.clone(),
        secret: "admission-tls".into(),
        service: "127.0.0.1".into(),
        webhook_configuration: hook_name.clone(),
    };
    // Registered first, without a caBundle (what the chart renders on a fresh install); the port is chosen up
    // front so the URL is known.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _hook = Webhook::register(
        &env.ns,
        &format!("https://127.0.0.1:{port}/mutate"),
        "",
        "Fail",
    );
    env.admission = Some(Admission {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        tls: tls.clone(),
    });
    env.start_operator().await;
    let second = {
        let mut other = env.admission.clone().unwrap();
        other.addr = "127.0.0.1:0".parse().unwrap();
        datastorage::operator::start(
            env.client.clone(),
            datastorage::operator::Options {
                namespace: Some(env.ns.clone()),
                leader_election: Some(datastorage::operator::LeaderElection {
                    namespace: env.ns.clone(),
                    lease_name: "never-leader".into(),
                    identity: "second".into(),
                    duration_seconds: 15,
                }),
                admission: Some(other),
                ..datastorage::operator::Options::local(env.ns.clone())
            },
        )
        .await
        .unwrap()
    };
    let ca = eventually(WAIT, "the caBundle to be set", || async {
        let out = kubectl_raw(
            &[
                "get",
                "mutatingwebhookconfiguration",
                &hook_name,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ],
            None,
        );
        let b = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!b.is_empty()).then_some(b)
    })
    .await;
    let secret: Value =
        serde_json::from_str(&env.kubectl(&["get", "secret", "admission-tls", "-o", "json"], None))
            .unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["data"]["ca.crt"].as_str().unwrap(),
        ca,
        "the bundle is the Secret's CA"
    );
    // Both replicas serve a certificate of that CA: a TLS client trusting only it reaches each one.
    let ca_pem = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(&ca)
            .unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    for addr in [
        env.operator.as_ref().unwrap().admission_addr.unwrap(),
        second.admission_addr.unwrap(),
    ] {
        let resp = eventually(WAIT, "the replica to serve TLS", || async {
            client
                .post(format!("https://{addr}/mutate"))
                .body("{}")
                .send()
                .await
                .ok()
        })
        .await;
        assert_eq!(resp.status(), 400, "{addr}: not an AdmissionReview");
    }
    // A client that starts a body and never finishes it loses its connection slot at the body deadline (the port
    // takes ingress from anywhere): 408, not a connection held for as long as the client likes.
    let addr = env.operator.as_ref().unwrap().admission_addr.unwrap();
    let started = std::time::Instant::now();
    let answer = {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .unwrap();
        // Headers and 8 of the 1000 bytes announced, then nothing.
        tls.write_all(
            b"POST /mutate HTTP/1.1\r\nhost: webhook\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"kind\"",
        )
        .await
        .unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(60), tls.read(&mut answer))
            .await
            .expect("no answer within 60 s to a stalled body")
            .unwrap();
        String::from_utf8_lossy(&answer[..n]).to_string()
    };
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body: {answer}"
    );
    let waited = started.elapsed();
    assert!(
        waited < datastorage::admission::server::LIMITS.body_timeout + Duration::from_secs(10),
        "cut at the body deadline, not later: {waited:?}"
    );
    // And the API server calls it: the secret is redacted at admission.
    eventually(WAIT, "the webhook to redact dry runs", || async {
        let out = kubectl_raw(
            &[
                "-n",
                &env.ns,
                "create",
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
            ],
            Some(&leaky("probe", "rr-tls-probe")),
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && text.contains("[REDACTED:") && !text.contains(PASSWORD))
            .then_some(())
    })
    .await;
    second.task.abort();
}

// ---------------------------------------------------------------------------------------------------------------
// The chart's webhook objects (helm template, no cluster).
// ---------------------------------------------------------------------------------------------------------------

use crate::support::chart::{documents, kubebin, of_kind, run_raw, template};

fn env_value<'a>(deployment: &'a Value, name: &str) -> Option<&'a str> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

#[test]
fn chart_registers_the_webhook_through_the_service_never_for_its_own_namespace() {
    let docs = documents(&template(&[]));
    let hooks = of_kind(&docs, "MutatingWebhookConfiguration");
    assert_eq!(hooks.len(), 1);
    let cfg = hooks[0];
    let w = &cfg["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["matchPolicy"], "Equivalent");
    assert_eq!(w["timeoutSeconds"], 5);
    assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(
        w["rules"][0]["operations"],
        serde_json::json!(["CREATE", "UPDATE"])
    );
    assert_eq!(
        w["rules"][0]["resources"],
        serde_json::json!(["remediationaudits"])
    );
    let excluded = &w["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["key"], "kubernetes.io/metadata.name");
    assert_eq!(excluded["operator"], "NotIn");
    let values: Vec<&str> = excluded["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        values.contains(&"ds-system") && values.contains(&"kube-system"),
        "{values:?}"
    );
    // The Service routes its port to the container's admission port, where the operator is told to listen.
    let svc = &w["clientConfig"]["service"];
    assert_eq!(svc["path"], "/mutate");
    let service = of_kind(&docs, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == svc["name"])
        .unwrap();
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == svc["port"])
        .unwrap();
    assert_eq!(port["targetPort"], "admission");
    let deployment = of_kind(&docs, "Deployment")[0];
    let container_port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "admission")
        .unwrap()["containerPort"]
        .as_i64()
        .unwrap();
    assert_eq!(
        env_value(deployment, "DATASTORAGE_ADMISSION_ADDR"),
        Some(format!("0.0.0.0:{container_port}").as_str())
    );
    // Self-managed: the operator sets the caBundle of this configuration, for this Service's names.
    assert_eq!(
        env_value(deployment, "DATASTORAGE_ADMISSION_WEBHOOK_CONFIGURATION"),
        cfg["metadata"]["name"].as_str()
    );
    assert_eq!(
        env_value(deployment, "DATASTORAGE_TLS_SERVICE"),
        svc["name"].as_str()
    );
    assert!(env_value(deployment, "DATASTORAGE_TLS_CERT_FILE").is_none());
    // The NetworkPolicy lets the API server in.
    let np = of_kind(&docs, "NetworkPolicy")[0];
    assert!(
        np["spec"]["ingress"].to_string().contains("\"admission\""),
        "{np}"
    );

    // cert-manager: a Certificate into the mounted Secret, the CA injected by annotation.
    let docs = documents(&template(&["--set", "tls.certManager.enabled=true"]));
    let cfg = of_kind(&docs, "MutatingWebhookConfiguration")[0];
    let cert = of_kind(&docs, "Certificate")[0];
    assert_eq!(
        cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("ds-system/{}", cert["metadata"]["name"].as_str().unwrap())
    );
    assert!(cfg["webhooks"][0]["clientConfig"].get("caBundle").is_none());
    assert_eq!(
        of_kind(&docs, "Issuer").len(),
        1,
        "a self-signed Issuer by default"
    );
    let deployment = of_kind(&docs, "Deployment")[0];
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "serving-tls")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], cert["spec"]["secretName"]);
    assert_eq!(
        env_value(deployment, "DATASTORAGE_TLS_CERT_FILE"),
        Some("/etc/datastorage/tls/tls.crt")
    );
    let docs = documents(&template(&[
        "--set",
        "tls.certManager.enabled=true,tls.certManager.issuerRef.name=corp-ca,tls.certManager.issuerRef.kind=ClusterIssuer",
    ]));
    assert!(of_kind(&docs, "Issuer").is_empty());
    assert_eq!(
        of_kind(&docs, "Certificate")[0]["spec"]["issuerRef"]["name"],
        "corp-ca"
    );

    // Off: nothing of it.
    let docs = documents(&template(&["--set", "admissionWebhook.enabled=false"]));
    assert!(of_kind(&docs, "MutatingWebhookConfiguration").is_empty());
    let deployment = of_kind(&docs, "Deployment")[0];
    assert!(env_value(deployment, "DATASTORAGE_ADMISSION_ADDR").is_none());

    // failurePolicy is a choice between two words.
    let docs = documents(&template(&["--set", "admissionWebhook.failurePolicy=Fail"]));
    assert_eq!(
        of_kind(&docs, "MutatingWebhookConfiguration")[0]["webhooks"][0]["failurePolicy"],
        "Fail"
    );
    let chart = crate::support::chart::chart_dir();
    let out = run_raw(
        &kubebin("helm"),
        &[
            "template",
            "ds",
            chart.to_str().unwrap(),
            "--set",
            "admissionWebhook.failurePolicy=Sometimes",
        ],
    );
    assert!(
        !out.status.success(),
        "the schema accepted failurePolicy=Sometimes"
    );
}
