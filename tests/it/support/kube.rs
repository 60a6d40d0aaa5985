//! The real local control plane started by `hack/cp.sh up` (the Makefile's `test` target exports
//! DATASTORAGE_TEST_KUBECONFIG and DATASTORAGE_KUBEBIN), driven with the real `kubectl`, plus an in-process
//! operator scoped to one test namespace and one DataStorage.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use datastorage::operator::{self, Running};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::TestDb;

pub fn kubeconfig() -> String {
    std::env::var("DATASTORAGE_TEST_KUBECONFIG").unwrap_or_else(|_| {
        panic!(
            "DATASTORAGE_TEST_KUBECONFIG is not set. Start the local control plane with `hack/cp.sh up` (it prints \
             the kubeconfig path) and export DATASTORAGE_TEST_KUBECONFIG=<that path>, or run `make test`."
        )
    })
}

pub fn kubectl_path() -> String {
    match std::env::var("DATASTORAGE_KUBEBIN") {
        Ok(dir) => format!("{dir}/kubectl"),
        Err(_) => panic!(
            "DATASTORAGE_KUBEBIN is not set: export DATASTORAGE_KUBEBIN=$(hack/kubebins/build.sh --print-bindir)"
        ),
    }
}

/// Runs kubectl with the test kubeconfig; returns the output (not checked).
pub fn kubectl_raw(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(kubectl_path());
    cmd.arg("--kubeconfig").arg(kubeconfig()).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs kubectl and returns stdout; panics with stderr on failure.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl_raw(args, stdin);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub async fn client() -> Client {
    let kc = Kubeconfig::read_from(kubeconfig()).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Applies the CRDs from `crds/` once per test binary and waits until they are established.
pub fn ensure_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = format!("{}/crds", env!("CARGO_MANIFEST_DIR"));
        kubectl(
            &["apply", "--server-side", "--force-conflicts", "-f", &dir],
            None,
        );
        kubectl(
            &[
                "wait",
                "--for",
                "condition=Established",
                "--timeout=60s",
                "-f",
                &dir,
            ],
            None,
        );
    });
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `kubectl patch dstore NAME --type=merge -p PATCH`.
pub fn patch_dstore(name: &str, merge_patch: &str) {
    kubectl(
        &["patch", "dstore", name, "--type=merge", "-p", merge_patch],
        None,
    );
}

/// The DataStorage as JSON, or None while it cannot be read.
pub fn dstore(name: &str) -> Option<serde_json::Value> {
    let out = kubectl_raw(&["get", "dstore", name, "-o", "json"], None);
    serde_json::from_slice(&out.stdout).ok()
}

/// One condition of the DataStorage's status.
pub fn dstore_condition(name: &str, type_: &str) -> Option<serde_json::Value> {
    dstore(name)?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Waits until the DataStorage's phase is `phase`.
pub async fn wait_dstore_phase(name: &str, phase: &str, timeout: Duration) {
    eventually(timeout, &format!("DataStorage {name} {phase}"), || async {
        (dstore(name)?["status"]["phase"] == phase).then_some(())
    })
    .await;
}

/// One test's world: a namespace, a database, a Secret with its URL, a DataStorage named like the namespace,
/// and an operator serving exactly those.
pub struct TestEnv {
    pub ns: String,
    pub db: TestDb,
    pub operator: Option<Running>,
    pub client: Client,
    pub api_limits: datastorage::http::Limits,
    pub admission: Option<operator::Admission>,
    pub api_tls: Option<datastorage::tls::ServingTls>,
}

pub struct EnvOptions {
    /// Extra YAML merged under the DataStorage's spec (indented by 2 spaces), e.g. "  embedding:\n    provider: Hash\n".
    pub spec_extra: String,
    pub start_operator: bool,
    /// The database URL put in the Secret (defaults to the test database).
    pub url: Option<String>,
    /// What the operator's query API port tolerates (tests of the limits themselves shorten or lengthen them).
    pub api_limits: datastorage::http::Limits,
    /// Serve the admission webhook from the in-process operator.
    pub admission: Option<operator::Admission>,
    /// Serve the query API over TLS (`api_url` is then https).
    pub api_tls: Option<datastorage::tls::ServingTls>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            spec_extra: "  embedding:\n    provider: Hash\n".into(),
            start_operator: true,
            url: None,
            api_limits: datastorage::http::Limits::API,
            admission: None,
            api_tls: None,
        }
    }
}

impl TestEnv {
    pub async fn new(prefix: &str) -> Self {
        Self::with(prefix, EnvOptions::default()).await
    }

    pub async fn with(prefix: &str, opts: EnvOptions) -> Self {
        // Operator logs in test output when RUST_LOG is set (e.g. RUST_LOG=datastorage=debug).
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        ensure_crds();
        let ns = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        kubectl(&["create", "namespace", &ns], None);
        let db = TestDb::new().await;
        let url = opts.url.clone().unwrap_or_else(|| db.url.clone());
        kubectl(
            &[
                "-n",
                &ns,
                "create",
                "secret",
                "generic",
                "db",
                &format!("--from-literal=url={url}"),
            ],
            None,
        );
        let ds = format!(
            "apiVersion: datastorage.kubernaut.ai/v1alpha1\nkind: DataStorage\nmetadata:\n  name: {ns}\nspec:\n  \
             database:\n    urlSecretRef: {{name: db, namespace: {ns}, key: url}}\n    poolSize: 5\n{}",
            opts.spec_extra
        );
        kubectl(&["apply", "-f", "-"], Some(&ds));
        let client = client().await;
        let mut env = Self {
            ns,
            db,
            operator: None,
            client,
            api_limits: opts.api_limits,
            admission: opts.admission.clone(),
            api_tls: opts.api_tls.clone(),
        };
        if opts.start_operator {
            env.start_operator().await;
        }
        env
    }

    pub async fn start_operator(&mut self) {
        let running = self.start_replica(None).await;
        self.operator = Some(running);
    }

    /// Starts one more in-process operator replica for this namespace, optionally with leader election.
    pub async fn start_replica(
        &self,
        leader_election: Option<operator::LeaderElection>,
    ) -> operator::Running {
        self.start_replica_with(leader_election, std::env::var("DATASTORAGE_MODEL_DIR").ok())
            .await
    }

    /// A replica whose default model directory (`--model-dir`) is `model_dir`.
    pub async fn start_replica_with(
        &self,
        leader_election: Option<operator::LeaderElection>,
        model_dir: Option<String>,
    ) -> operator::Running {
        operator::start(
            self.client.clone(),
            operator::Options {
                namespace: Some(self.ns.clone()),
                model_dir,
                leader_election,
                // Checkpoints in the test namespace, taken at the start of leadership and then when a test asks
                // (`checkpoint_now`), so that tests control what a checkpoint covers.
                checkpoint: Some(self.checkpoint_config()),
                api_limits: self.api_limits,
                admission: self.admission.clone(),
                api_tls: self.api_tls.clone(),
                ..operator::Options::local(self.ns.clone())
            },
        )
        .await
        .unwrap()
    }

    /// Where this environment's operators keep their signed checkpoints.
    pub fn checkpoint_config(&self) -> datastorage::checkpoint::CheckpointConfig {
        datastorage::checkpoint::CheckpointConfig {
            namespace: self.ns.clone(),
            config_map: "datastorage-checkpoints".into(),
            key: datastorage::store::checkpoint::CheckpointKey::new(
                format!("test-checkpoint-key-{}", self.ns).into_bytes(),
            )
            .unwrap(),
            interval: Duration::from_secs(3600),
        }
    }

    /// Takes and writes a signed checkpoint now (what the leader does every interval).
    pub async fn checkpoint_now(&self) -> datastorage::store::checkpoint::Checkpoint {
        let store = self.store().await;
        datastorage::checkpoint::take_and_save(&self.client, &store, &self.checkpoint_config())
            .await
            .unwrap()
    }

    /// A ServiceAccount `sa` of this namespace bound to cluster-admin (ClusterRoleBinding `<ns>-<sa>`, which the
    /// test deletes at its end) and a token of it for the query API's audience.
    pub fn cluster_admin_token(&self, sa: &str) -> (String, String) {
        self.kubectl(&["create", "serviceaccount", sa], None);
        let binding = format!("{}-{sa}", self.ns);
        kubectl(
            &[
                "create",
                "clusterrolebinding",
                &binding,
                "--clusterrole=cluster-admin",
                &format!("--serviceaccount={}:{sa}", self.ns),
            ],
            None,
        );
        let token = self
            .kubectl(
                &[
                    "create",
                    "token",
                    sa,
                    "--duration=1h",
                    "--audience",
                    datastorage::api::auth::DEFAULT_AUDIENCE,
                ],
                None,
            )
            .trim()
            .to_string();
        (token, binding)
    }

    /// Base URL of the in-process operator's query API, e.g. `http://127.0.0.1:41234`.
    pub fn api_url(&self) -> String {
        let op = self.operator.as_ref().expect("the operator is not running");
        let scheme = if self.api_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", op.api_addr)
    }

    pub fn stop_operator(&mut self) {
        if let Some(op) = self.operator.take() {
            op.task.abort();
        }
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut full = vec!["-n", self.ns.as_str()];
        full.extend_from_slice(args);
        kubectl(&full, stdin)
    }

    /// `kubectl get raudit NAME -o jsonpath=…`, empty when missing.
    pub fn jsonpath(&self, name: &str, path: &str) -> String {
        let out = kubectl_raw(
            &[
                "-n",
                &self.ns,
                "get",
                "raudit",
                name,
                "-o",
                &format!("jsonpath={path}"),
            ],
            None,
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits until the audit's status.state is `state` (for its current generation) and returns the status JSON.
    pub async fn wait_state(
        &self,
        name: &str,
        state: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        eventually(
            timeout,
            &format!("{}/{name} to be {state}", self.ns),
            || async {
                let out = kubectl_raw(&["-n", &self.ns, "get", "raudit", name, "-o", "json"], None);
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let generation = v["metadata"]["generation"].as_i64();
                let st = &v["status"];
                (st["state"] == state && st["observedGeneration"].as_i64() == generation)
                    .then(|| v.clone())
            },
        )
        .await
    }

    pub async fn store(&self) -> datastorage::store::Store {
        self.db.store().await
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop_operator();
        let _ = kubectl_raw(&["delete", "datastorage", &self.ns, "--wait=false"], None);
    }
}

/// A RemediationAudit manifest with sensible defaults; `extra` lines are appended under spec (indent 2).
pub fn audit_yaml(name: &str, request_id: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: datastorage.kubernaut.ai/v1alpha1
kind: RemediationAudit
metadata:
  name: {name}
spec:
  remediationRequestId: {request_id}
  alertFingerprint: fp-{request_id}
  alertName: KubePodOOMKilled
  phase: Completed
  outcome: Success
  actionType: restart-pod
  severity: critical
  environment: production
  clusterName: prod-eu-1
  targetResource: apps/v1/Deployment/payments/api
  startTime: "2026-01-10T10:00:00Z"
  endTime: "2026-01-10T10:00:42Z"
{extra}"#
    )
}
