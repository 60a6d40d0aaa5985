//! The fault-injection suite's world (tests/faults.rs): a private control plane and a private PostgreSQL per test,
//! the operator as a real separate `datastorage run` process (so it can be SIGKILLed), a bounded-concurrency
//! stream of RemediationAudits through the kube client, and the "exactly N, 0 duplicates, chains intact" check.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use datastorage::crd::{DataStorage, RemediationAudit};
use datastorage::store::{Store, StoreConfig};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt, ResourceExt};
use serde_json::json;

use super::kube::eventually;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// A private etcd + kube-apiserver (`hack/cp.sh`), with the CRDs installed; brought down on drop.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    pub kubeconfig: String,
}

impl ControlPlane {
    pub async fn up() -> Self {
        let dir = tempfile::Builder::new().prefix("ds-cp-").tempdir().unwrap();
        let mut cp = Self {
            dir,
            kubeconfig: String::new(),
        };
        cp.kubeconfig = cp.script("up");
        cp.install_crds().await;
        cp
    }

    fn cp_dir(&self) -> PathBuf {
        self.dir.path().join("cp")
    }

    /// Runs `hack/cp.sh cmd` for this control plane; returns the last line it printed.
    fn script(&self, cmd: &str) -> String {
        let out = Command::new(format!("{MANIFEST_DIR}/hack/cp.sh"))
            .arg(cmd)
            .env("CP_DIR", self.cp_dir())
            .output()
            .unwrap_or_else(|e| panic!("cannot run hack/cp.sh: {e}"));
        assert!(
            out.status.success(),
            "`CP_DIR={} hack/cp.sh {cmd}` failed (it needs the binaries of hack/kubebins/build.sh):\n{}",
            self.cp_dir().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }

    /// The pid of `kube-apiserver` or `etcd`.
    pub fn pid_of(&self, name: &str) -> u32 {
        std::fs::read_to_string(self.cp_dir().join(format!("{name}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Stops kube-apiserver and starts it again on the same port (etcd keeps running); returns once it is ready.
    pub fn restart_apiserver(&self) {
        let started = Instant::now();
        let out = Command::new(format!("{MANIFEST_DIR}/hack/cp.sh"))
            .arg("restart-apiserver")
            .env("CP_DIR", self.cp_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hack/cp.sh restart-apiserver: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "hack/cp.sh restart-apiserver took {:.1}s: {}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " / ")
        );
    }

    /// Runs the real kubectl against this control plane; returns stdout (panics with stderr on failure).
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(format!("{}/kubectl", kube_bindir()))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        config.read_timeout = Some(Duration::from_secs(30));
        Client::try_from(config).unwrap()
    }

    async fn install_crds(&self) {
        let client = self.client().await;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        for crd in [RemediationAudit::crd(), DataStorage::crd()] {
            api.create(&PostParams::default(), &crd).await.unwrap();
            let name = crd.name_any();
            eventually(
                Duration::from_secs(60),
                &format!("CRD {name} established"),
                || async {
                    let c = api.get(&name).await.ok()?;
                    c.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                },
            )
            .await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(format!("{MANIFEST_DIR}/hack/cp.sh"))
            .arg("down")
            .env("CP_DIR", self.cp_dir())
            .output();
    }
}

/// The settings of the DataStorage a fault test serves.
pub struct StoreSpec {
    pub pool_size: i32,
    /// `Disabled` or `Hash`: CPU goes to the write path, the promise tested is durability.
    pub embedding: &'static str,
}

impl Default for StoreSpec {
    fn default() -> Self {
        Self {
            pool_size: 10,
            embedding: "Disabled",
        }
    }
}

/// Creates namespace `ns`, a Secret with the database URL and the cluster-scoped DataStorage `name`.
pub async fn create_datastorage(
    client: &Client,
    name: &str,
    ns: &str,
    url: &str,
    spec: &StoreSpec,
) {
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "db"}, "stringData": {"url": url}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let ds: DataStorage = serde_json::from_value(json!({
        "apiVersion": "datastorage.kubernaut.ai/v1alpha1",
        "kind": "DataStorage",
        "metadata": {"name": name},
        "spec": {
            "database": {"urlSecretRef": {"name": "db", "namespace": ns, "key": "url"}, "poolSize": spec.pool_size},
            "embedding": {"provider": spec.embedding},
        },
    }))
    .unwrap();
    Api::<DataStorage>::all(client.clone())
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
}

/// The directory of kubectl, kube-apiserver and etcd (`hack/kubebins/build.sh --print-bindir`).
pub fn kube_bindir() -> String {
    static DIR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(format!("{MANIFEST_DIR}/hack/kubebins/build.sh"))
            .arg("--print-bindir")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hack/kubebins/build.sh --print-bindir: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
    .clone()
}

/// A `datastorage run` process (the real binary), its output in `log`; SIGKILLed on drop.
pub struct Operator {
    child: Child,
    pub identity: String,
    pub log: PathBuf,
    pub ops_addr: SocketAddr,
}

/// How to start an operator process.
pub struct OperatorArgs<'a> {
    pub kubeconfig: &'a str,
    pub datastorage: &'a str,
    pub identity: &'a str,
    /// `(lease namespace, lease seconds)` to run with `--leader-elect`.
    pub lease: Option<(&'a str, u64)>,
    pub log_dir: &'a Path,
}

impl Operator {
    pub async fn start(args: &OperatorArgs<'_>) -> Self {
        let log = args.log_dir.join(format!("{}.log", args.identity));
        let out = File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_datastorage"));
        cmd.args([
            "run",
            "--datastorage",
            args.datastorage,
            "--metrics-addr",
            "127.0.0.1:0",
            "--api-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--identity",
            args.identity,
        ])
        .env("KUBECONFIG", args.kubeconfig)
        .env_remove("DATASTORAGE_WATCH_NAMESPACE")
        .env_remove("DATASTORAGE_LEADER_ELECT")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
        if let Some((ns, seconds)) = args.lease {
            cmd.args([
                "--leader-elect",
                "--lease-name",
                "datastorage-leader",
                "--lease-namespace",
                ns,
                "--lease-seconds",
                &seconds.to_string(),
            ]);
        }
        let mut child = cmd.spawn().unwrap();
        let started = Instant::now();
        let ops_addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let addr_of = |message: &str| {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .find(|v| v["fields"]["message"].as_str() == Some(message))
                    .and_then(|v| v["fields"]["addr"].as_str()?.parse::<SocketAddr>().ok())
            };
            if let (Some(ops), Some(_api)) = (
                addr_of("serving /metrics, /healthz, /readyz"),
                addr_of("serving the query API (/api/v1, /openapi.json)"),
            ) {
                break ops;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the operator exited ({status}) before serving:\n{text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the operator did not serve within 60s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Self {
            child,
            identity: args.identity.to_string(),
            log,
            ops_addr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// CPU seconds (user + system) the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Panics when the process has exited or logged a panic.
    pub fn assert_healthy(&mut self) {
        let log = self.log_text();
        assert!(
            !log.contains("panicked"),
            "operator {} panicked:\n{log}",
            self.identity
        );
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("operator {} exited ({status}):\n{log}", self.identity);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `/metrics` exposition.
    pub async fn scrape(&self) -> Option<String> {
        let resp = reqwest::get(format!("http://{}/metrics", self.ops_addr))
            .await
            .ok()?;
        resp.text().await.ok()
    }

    /// One sample of `/metrics` (sum over series whose text contains every label given), if present.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = self.scrape().await?;
        metric_value(&text, name, labels)
    }

    /// `GET /readyz`: status code and body.
    pub async fn readyz(&self) -> (u16, String) {
        match reqwest::get(format!("http://{}/readyz", self.ops_addr)).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// CPU seconds (user + system) process `pid` has used so far (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the command name); 100 ticks/s.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Sum of the series of `name` whose label text contains every one of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name && labels.iter().all(|x| series.contains(x)))
                .then(|| value.parse().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A small xorshift generator: the suite's "random points" come from a printed seed, so a failing run can be
/// replayed with `DATASTORAGE_FAULTS_SEED=<seed>`.
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Self {
        let seed = std::env::var("DATASTORAGE_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0 | 1);
        println!("random seed: {seed} (replay with DATASTORAGE_FAULTS_SEED={seed})");
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo).max(1) as u64) as usize
    }
}

/// A count from the environment (`DATASTORAGE_FAULTS_<NAME>`), the number by default.
pub fn count_from_env(name: &str, default: usize) -> usize {
    let var = format!("DATASTORAGE_FAULTS_{name}");
    match std::env::var(&var) {
        Ok(v) => {
            let n = v
                .parse()
                .unwrap_or_else(|_| panic!("{var}={v} is not a count"));
            println!("{var}={n} (default {default})");
            n
        }
        Err(_) => default,
    }
}

/// Name of the `i`-th audit of a stream.
pub fn audit_name(i: usize) -> String {
    format!("audit-{i:05}")
}

/// The `i`-th audit of a stream: a unique remediationRequestId, realistic free text.
pub fn audit_object(i: usize) -> RemediationAudit {
    let action = ["restart-pod", "scale-deployment", "drain-node"][i % 3];
    serde_json::from_value(json!({
        "apiVersion": "datastorage.kubernaut.ai/v1alpha1",
        "kind": "RemediationAudit",
        "metadata": {"name": audit_name(i)},
        "spec": {
            "remediationRequestId": format!("rr-{i:05}"),
            "alertFingerprint": format!("fp-{:05}", i % 977),
            "alertName": "KubePodOOMKilled",
            "phase": "Completed",
            "outcome": if i.is_multiple_of(7) { "Failure" } else { "Success" },
            "actionType": action,
            "severity": "critical",
            "environment": "production",
            "clusterName": "prod-eu-1",
            "targetResource": format!("apps/v1/Deployment/payments/api-{}", i % 50),
            "startTime": "2026-01-10T10:00:00Z",
            "endTime": "2026-01-10T10:00:42Z",
            "errorMessage": format!("container api-{i} exceeded its memory limit (512Mi) and was restarted"),
        },
    }))
    .unwrap()
}

/// Every `EDIT_EVERY`-th audit gets a second generation (a spec edit), made when the audit `EDIT_LAG` places later
/// is created (so the first generation has usually been stored by then) — the history chains being verified then
/// have two links. The last `EDIT_LAG` audits of a stream are edited right after their creation.
pub const EDIT_EVERY: usize = 10;
pub const EDIT_LAG: usize = 500;

/// Progress of a running stream.
#[derive(Default)]
pub struct StreamProgress {
    /// Audits created so far.
    pub created: AtomicUsize,
    /// Requests that failed and were retried (API server down, timeouts).
    pub retried: AtomicUsize,
}

/// Creates audits `range` in `ns` with at most `concurrency` requests in flight, retrying every failed request
/// (an API server restart is a failure of the client's request, not a reason to lose an audit) for up to 5 minutes
/// each. An "already exists" answer to a retried create counts as created.
pub async fn stream_audits(
    client: Client,
    ns: String,
    range: std::ops::Range<usize>,
    concurrency: usize,
    progress: Arc<StreamProgress>,
) {
    let api: Api<RemediationAudit> = Api::namespaced(client, &ns);
    let (start, end) = (range.start, range.end);
    futures::stream::iter(range)
        .map(|i| {
            let api = api.clone();
            let progress = progress.clone();
            async move {
                let obj = audit_object(i);
                retry(&progress, &format!("create {}", audit_name(i)), || async {
                    match api.create(&PostParams::default(), &obj).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                        Err(e) => Err(e),
                    }
                })
                .await;
                let mut edits = vec![];
                if i >= start + EDIT_LAG && (i - EDIT_LAG).is_multiple_of(EDIT_EVERY) {
                    edits.push(i - EDIT_LAG);
                }
                if i + EDIT_LAG >= end && i.is_multiple_of(EDIT_EVERY) {
                    edits.push(i);
                }
                for j in edits {
                    let patch = json!({"spec": {"errorMessage": format!("edited: container api-{j} was OOMKilled twice")}});
                    retry(&progress, &format!("edit {}", audit_name(j)), || async {
                        api.patch(&audit_name(j), &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map(|_| ())
                    })
                    .await;
                }
                progress.created.fetch_add(1, Ordering::SeqCst);
            }
        })
        .buffer_unordered(concurrency)
        .collect::<()>()
        .await;
}

async fn retry<F, Fut>(progress: &StreamProgress, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(()) => return,
            Err(e) => {
                progress.retried.fetch_add(1, Ordering::SeqCst);
                assert!(
                    start.elapsed() < Duration::from_secs(300),
                    "{what}: still failing after 5 minutes: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// A store on the private database (schema `datastorage`, what the DataStorage uses by default).
pub fn store(url: &str) -> Store {
    Store::connect_lazy(&StoreConfig::new(url, "datastorage").unwrap()).unwrap()
}

/// Audits stored so far (None while the database does not answer).
pub async fn stored_count(store: &Store) -> Option<i64> {
    tokio::time::timeout(
        Duration::from_secs(3),
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audits").fetch_one(store.pool()),
    )
    .await
    .ok()?
    .ok()
}

/// The audits of `ns` as the API server has them: name → (uid, generation, status).
pub async fn list_audits(client: &Client, ns: &str) -> BTreeMap<String, RemediationAudit> {
    let api: Api<RemediationAudit> = Api::namespaced(client.clone(), ns);
    let mut out = BTreeMap::new();
    let mut params = ListParams::default().limit(1000);
    loop {
        let page = api.list(&params).await.unwrap();
        let next = page.metadata.continue_.clone();
        for ra in page.items {
            out.insert(ra.name_any(), ra);
        }
        match next {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return out,
        }
    }
}

/// How many of `ns`'s audits are `Persisted` for their current generation.
pub async fn persisted_crs(client: &Client, ns: &str) -> usize {
    list_audits(client, ns)
        .await
        .values()
        .filter(|ra| settled_persisted(ra))
        .count()
}

fn settled_persisted(ra: &RemediationAudit) -> bool {
    ra.status.as_ref().is_some_and(|s| {
        s.state == Some(datastorage::crd::AuditState::Persisted)
            && s.observed_generation == ra.metadata.generation
    })
}

/// Waits until every one of the `n` audits of `ns` is `Persisted` for its current generation.
pub async fn wait_all_persisted(client: &Client, ns: &str, n: usize, timeout: Duration) {
    let start = Instant::now();
    loop {
        let done = persisted_crs(client, ns).await;
        if done == n {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "only {done} of {n} audits Persisted after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What [`verify_exactly_once`] found.
#[derive(Debug)]
pub struct Verified {
    pub rows: i64,
    pub history_rows: i64,
    pub multi_generation: i64,
    pub chain_links_checked: i64,
}

/// The promise "nothing lost, nothing duplicated, chains intact" for a stream of `n` audits in `ns`:
/// - the API server holds exactly `n` audits, each `Persisted` for its current generation, and its status names
///   the row that holds it;
/// - PostgreSQL holds exactly `n` audit rows, one per CR uid and per remediationRequestId, each at the CR's
///   generation;
/// - history holds each stored generation exactly once, up to the current one, and every audit's hash chain
///   verifies in SQL (`verify_audit_chain`) and, for the multi-generation audits, in Rust (`Store::verify_chain`).
pub async fn verify_exactly_once(client: &Client, store: &Store, ns: &str, n: usize) -> Verified {
    let crs = list_audits(client, ns).await;
    assert_eq!(crs.len(), n, "audits in the API server");
    let not_persisted: Vec<_> = crs
        .values()
        .filter(|ra| !settled_persisted(ra))
        .map(|ra| format!("{} {:?}", ra.name_any(), ra.status))
        .take(5)
        .collect();
    assert!(
        not_persisted.is_empty(),
        "audits not Persisted: {not_persisted:?}"
    );

    let pool = store.pool();
    let (rows, uids, request_ids): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT cr_uid), count(DISTINCT remediation_request_id) FROM audits",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(rows, n as i64, "rows in audits");
    assert_eq!(uids, rows, "duplicate CR uids in audits");
    assert_eq!(
        request_ids, rows,
        "duplicate remediationRequestIds in audits"
    );

    let db: HashMap<String, (i64, i64, String)> =
        sqlx::query_as::<_, (uuid::Uuid, i64, i64, String)>(
            "SELECT cr_uid, id, generation, name FROM audits",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(uid, id, generation, name)| (uid.to_string(), (id, generation, name)))
        .collect();
    let mut multi = 0;
    for ra in crs.values() {
        let uid = ra.uid().unwrap();
        let (id, generation, name) = db
            .get(&uid)
            .unwrap_or_else(|| panic!("{} ({uid}) has no row", ra.name_any()));
        assert_eq!(name, &ra.name_any());
        assert_eq!(
            Some(*generation),
            ra.metadata.generation,
            "{name}: stored generation"
        );
        assert_eq!(
            ra.status.as_ref().and_then(|s| s.audit_id),
            Some(*id),
            "{name}: status.auditId"
        );
        if *generation > 1 {
            multi += 1;
        }
    }

    let dup_generations: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT audit_id, generation FROM audit_history GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(dup_generations, 0, "generations stored twice in history");
    let history_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_history")
        .fetch_one(pool)
        .await
        .unwrap();
    let wrong_head: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audits a
         WHERE a.generation <> (SELECT max(h.generation) FROM audit_history h WHERE h.audit_id = a.id)
            OR a.chain_hash <> (SELECT h.chain_hash FROM audit_history h WHERE h.audit_id = a.id
                                ORDER BY h.generation DESC LIMIT 1)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        wrong_head, 0,
        "audits whose current row is not the head of their history"
    );
    let (checked, broken): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE NOT v.ok) FROM audits a, LATERAL verify_audit_chain(a.id) v",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(broken, 0, "broken hash-chain links");
    assert_eq!(checked, history_rows, "every history row was verified");
    let multi_ids: Vec<i64> =
        sqlx::query_scalar("SELECT audit_id FROM audit_history GROUP BY 1 HAVING count(*) > 1")
            .fetch_all(pool)
            .await
            .unwrap();
    for id in &multi_ids {
        let checks = store.verify_chain(*id).await.unwrap();
        assert!(checks.iter().all(|c| c.ok), "audit {id}: {checks:?}");
    }
    assert_eq!(
        multi,
        crs.values()
            .filter(|ra| ra.metadata.generation > Some(1))
            .count() as i64
    );
    Verified {
        rows,
        history_rows,
        multi_generation: multi_ids.len() as i64,
        chain_links_checked: checked,
    }
}

/// The private services one fault test runs on, and its operator's namespace and DataStorage.
pub struct World {
    pub cp: ControlPlane,
    pub pg: super::Service,
    pub client: Client,
    pub ns: String,
    pub datastorage: String,
    /// The operators' logs: kept when the test fails or DATASTORAGE_FAULTS_KEEP_LOGS is set (path printed).
    pub logs: PathBuf,
    pub store: Store,
}

impl World {
    pub async fn new(spec: StoreSpec) -> Self {
        let pg = super::Service::postgres();
        let cp = ControlPlane::up().await;
        let client = cp.client().await;
        let ns = "faults".to_string();
        let datastorage = "faults".to_string();
        create_datastorage(&client, &datastorage, &ns, &pg.url, &spec).await;
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("faults")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&logs).unwrap();
        println!("operator logs: {}", logs.display());
        let store = store(&pg.url);
        Self {
            cp,
            pg,
            client,
            ns,
            datastorage,
            logs,
            store,
        }
    }

    pub async fn operator(&self, identity: &str, lease_seconds: Option<u64>) -> Operator {
        Operator::start(&OperatorArgs {
            kubeconfig: &self.cp.kubeconfig,
            datastorage: &self.datastorage,
            identity,
            lease: lease_seconds.map(|s| (self.ns.as_str(), s)),
            log_dir: &self.logs,
        })
        .await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() && std::env::var_os("DATASTORAGE_FAULTS_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// Starts a stream in the background.
pub fn spawn_stream(
    client: &Client,
    ns: &str,
    from: usize,
    to: usize,
    concurrency: usize,
) -> (Arc<StreamProgress>, tokio::task::JoinHandle<()>) {
    let progress = Arc::new(StreamProgress::default());
    let task = tokio::spawn(stream_audits(
        client.clone(),
        ns.to_string(),
        from..to,
        concurrency,
        progress.clone(),
    ));
    (progress, task)
}
