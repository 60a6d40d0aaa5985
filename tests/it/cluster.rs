//! The delivery path on a real single node (`hack/node.sh`: kubelet, containerd, CNI bridge): `helm install` of the
//! chart with the image built here (`hack/image.sh`), 3 replicas electing a leader, audits streamed while the leader
//! pod is force-deleted and while `helm upgrade` rolls the pods to a second image tag (exactly once each time), the
//! `kubectl audit` plugin through the apiserver's service proxy with a user's token, and `helm uninstall` (CRDs and
//! audits stay; the pre-delete hook removes the finalizers, so a namespace holding audits can still be deleted).
//! The chart as a Kubernetes citizen: `helm install --wait` completes, `helm test` passes, the DataStorage is a
//! release object (the same uid across upgrades, gone after uninstall: no orphan), the pre-upgrade hook brings a
//! changed CRD to the cluster, and a `kubectl drain` of the node with 1 replica is not blocked by the PDB.
//!
//! `#[ignore]`d: hack/test.sh's cluster step brings the node, the image and PostgreSQL up and runs
//! `cargo test --test it cluster:: -- --ignored --nocapture`. It exports
//! DATASTORAGE_NODE_KUBECONFIG, DATASTORAGE_NODE_IMAGE, DATASTORAGE_NODE_IMAGE_UPGRADE (a second tag),
//! DATASTORAGE_NODE_DATABASE_URL (from the host) and DATASTORAGE_NODE_POD_DATABASE_URL (from the pods).
//! Counts: DATASTORAGE_FAULTS_CLUSTER_WARMUP (100), DATASTORAGE_FAULTS_CLUSTER_KILL (2000),
//! DATASTORAGE_FAULTS_CLUSTER_UPGRADE (1000), DATASTORAGE_FAULTS_CONCURRENCY (16).
//! Each phase prints a `SUMMARY |` line for docs/reliability.md.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};

use crate::support::chart::{documents, of_kind, template};
use crate::support::faults::{
    count_from_env, persisted_crs, spawn_stream, store, verify_exactly_once, wait_all_persisted,
};

const NS: &str = "datastorage-system";
const RELEASE: &str = "datastorage-operator";
const LEASE: &str = "datastorage-operator-leader";
/// The operator's default `--lease-seconds` (the chart does not change it).
const LEASE_SECONDS: u64 = 15;
const AUDITS_NS: &str = "cluster-audits";
/// The audit applied with secrets in it (phase 5b).
const ADMISSION_NS: &str = "cluster-admission";
const OTHER_NS: &str = "cluster-other";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the cluster suite runs on a real node that hack/test.sh brings up \
             (hack/node.sh up, hack/image.sh, hack/pg.sh with PG_LISTEN_EXTRA); run `make test`"
        )
    })
}

fn kubebin(name: &str) -> String {
    format!("{}/{name}", env("DATASTORAGE_KUBEBIN"))
}

fn run_raw(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("KUBECONFIG", env("DATASTORAGE_NODE_KUBECONFIG"))
        .output()
        .unwrap()
}

fn run(bin: &str, args: &[&str]) -> String {
    let out = run_raw(bin, args);
    assert!(
        out.status.success(),
        "{bin} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kubectl(args: &[&str]) -> String {
    run(&kubebin("kubectl"), args)
}

fn helm(args: &[&str]) -> String {
    run(&kubebin("helm"), args)
}

async fn client() -> Client {
    let kc = Kubeconfig::read_from(env("DATASTORAGE_NODE_KUBECONFIG")).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn image_parts(image: &str) -> (String, String) {
    let (repo, tag) = image.rsplit_once(':').unwrap();
    (repo.to_string(), tag.to_string())
}

/// The operator's pods (not the uninstall hook's).
async fn operator_pods(client: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.list(&ListParams::default().labels(&format!(
        "app.kubernetes.io/name=datastorage-operator,app.kubernetes.io/instance={RELEASE}"
    )))
    .await
    .unwrap()
    .items
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_image(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

async fn ready_pods(client: &Client) -> Vec<Pod> {
    operator_pods(client)
        .await
        .into_iter()
        .filter(is_ready)
        .collect()
}

async fn lease_holder(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    leases.get_opt(LEASE).await.ok()??.spec?.holder_identity
}

/// `datastorage_leader` of one pod, read through the apiserver's pod proxy.
fn leader_metric(pod: &str) -> Option<f64> {
    let out = run_raw(
        &kubebin("kubectl"),
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{NS}/pods/{pod}:8081/proxy/metrics"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    crate::support::faults::metric_value(&text, "datastorage_leader", &[])
}

/// Waits until `n` operator pods are Ready (all with `image` when given) and one of them holds the Lease.
async fn wait_ready(client: &Client, n: usize, image: Option<&str>, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let pods = ready_pods(client).await;
        let all = operator_pods(client).await;
        let holder = lease_holder(client).await;
        let images_ok = image.is_none_or(|i| all.iter().all(|p| pod_image(p) == i));
        if pods.len() == n
            && all.len() == n
            && images_ok
            && let Some(h) = holder.filter(|h| pods.iter().any(|p| p.name_any() == *h))
        {
            return h;
        }
        assert!(
            start.elapsed() < timeout,
            "after {timeout:?}: {} of {n} pods Ready ({} present), lease holder {:?}",
            pods.len(),
            all.len(),
            lease_holder(client).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Resident memory (KiB) of each operator process on this machine, by pod name (the processes run here: read
/// /proc, POD_NAME from their environment).
fn rss_by_pod() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = entry.path();
        let Ok(cmdline) = std::fs::read(p.join("cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if argv.first() != Some(&&b"/usr/local/bin/datastorage"[..])
            || argv.get(1) != Some(&&b"run"[..])
        {
            continue;
        }
        let Ok(environ) = std::fs::read(p.join("environ")) else {
            continue;
        };
        let Some(pod) = environ
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"POD_NAME="))
            .map(|v| String::from_utf8_lossy(v).to_string())
        else {
            continue;
        };
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        {
            out.insert(pod, kib);
        }
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// The NetworkPolicy's shape (the node's bridge CNI does not enforce NetworkPolicies, so only the object is
/// checked): it selects exactly the operator's pods, admits ingress to the api, metrics and admission-webhook ports
/// only (the webhook's from anywhere: the API server is not a pod), and allows egress to the derived TCP ports
/// (tests/it/chart.rs varies them) and DNS over UDP.
#[test]
fn network_policy_shape() {
    let docs = documents(&template(&[
        "--set",
        "networkPolicy.apiFrom[0].namespaceSelector.matchLabels.team=sre",
        "--set",
        "networkPolicy.apiServerFrom[0].ipBlock.cidr=10.244.0.1/32",
    ]));
    let np = of_kind(&docs, "NetworkPolicy");
    assert_eq!(np.len(), 1);
    let spec = &np[0]["spec"];
    let deployment = of_kind(&docs, "Deployment")[0];
    assert_eq!(
        spec["podSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(spec["policyTypes"], json!(["Ingress", "Egress"]));
    let ingress = spec["ingress"].as_array().unwrap();
    let ports: Vec<&Value> = ingress.iter().map(|r| &r["ports"][0]["port"]).collect();
    assert_eq!(
        ports,
        [&json!("api"), &json!("metrics"), &json!("admission")]
    );
    assert!(
        ingress[2].get("from").is_none(),
        "the API server calls the webhook"
    );
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["team"],
        "sre"
    );
    assert!(
        ingress[1].get("from").is_none(),
        "metrics open to any pod by default"
    );
    let egress = spec["egress"][0]["ports"].as_array().unwrap();
    let tcp: Vec<i64> = egress
        .iter()
        .filter(|p| p["protocol"] == "TCP")
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(tcp, [53, 443, 6443, 5432]);
    assert!(
        egress
            .iter()
            .any(|p| p["protocol"] == "UDP" && p["port"] == 53)
    );
    let off = documents(&template(&["--set", "networkPolicy.enabled=false"]));
    assert!(of_kind(&off, "NetworkPolicy").is_empty());
}

/// The uninstall hook's shape: pre-delete hook objects only, its own ServiceAccount and roles, the operator's image.
#[test]
fn uninstall_hook_shape() {
    let docs = documents(&template(&["--show-only", "templates/uninstall-hook.yaml"]));
    assert_eq!(docs.len(), 6);
    for d in &docs {
        assert_eq!(
            d["metadata"]["annotations"]["helm.sh/hook"], "pre-delete",
            "{d}"
        );
    }
    let job = of_kind(&docs, "Job")[0];
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod["serviceAccountName"],
        "ds-datastorage-operator-uninstall"
    );
    assert_eq!(pod["containers"][0]["args"][0], "release-finalizers");
    assert_eq!(
        pod["containers"][0]["args"][1],
        "--deployment=ds-datastorage-operator"
    );
    let off = documents(&template(&["--set", "uninstallHook.enabled=false"]));
    assert!(
        of_kind(&off, "Job")
            .iter()
            .all(|j| j["metadata"]["annotations"]["helm.sh/hook"] != "pre-delete")
    );
}

/// The DataStorage's uid (empty when it does not exist).
fn dstore_uid() -> String {
    let out = run_raw(
        &kubebin("kubectl"),
        &["get", "dstore", "default", "-o", "jsonpath={.metadata.uid}"],
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A copy of the chart whose DataStorage CRD has one more field (what a new chart version with a CRD change is).
fn chart_with_changed_crd(dir: &std::path::Path) -> String {
    let copy = dir.join("datastorage-operator");
    let chart = crate::support::chart::chart_dir();
    let cp = Command::new("cp")
        .args(["-r", chart.to_str().unwrap(), copy.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(cp.success());
    let file = copy.join("crds/datastorages.datastorage.kubernaut.ai.yaml");
    let mut crd: Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["upgradeProbe"] =
        json!({"type": "string", "description": "added by tests/it/cluster.rs"});
    std::fs::write(&file, crd.to_string()).unwrap();
    copy.to_str().unwrap().to_string()
}

fn summary(start: Instant, line: String) {
    println!("{line} {:.0}s |", start.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "cluster suite: needs the real node that hack/test.sh brings up (make test)"]
async fn helm_on_a_real_node() {
    let test_start = Instant::now();
    // The SUMMARY lines must start a line (hack/test.sh greps them): end the test harness's "test … " line first.
    println!();
    let image = env("DATASTORAGE_NODE_IMAGE");
    let image2 = env("DATASTORAGE_NODE_IMAGE_UPGRADE");
    let (repo, tag) = image_parts(&image);
    let (repo2, tag2) = image_parts(&image2);
    assert_eq!(repo, repo2);
    let db_url = env("DATASTORAGE_NODE_DATABASE_URL");
    let pod_db_url = env("DATASTORAGE_NODE_POD_DATABASE_URL");
    let warmup = count_from_env("CLUSTER_WARMUP", 100);
    let kill_n = count_from_env("CLUSTER_KILL", 2000);
    let upgrade_n = count_from_env("CLUSTER_UPGRADE", 1000);
    let concurrency = count_from_env("CONCURRENCY", 16);
    let client = client().await;
    let chart = crate::support::chart::chart_dir();
    let chart = chart.to_str().unwrap();

    // 1. helm install --wait -> 3 pods Ready (so DataStorage Ready: it is a plain release object now, created with
    //    the Deployment), one Lease holder that is a pod; helm test passes.
    let t = Instant::now();
    helm(&[
        "install",
        RELEASE,
        chart,
        "-n",
        NS,
        "--create-namespace",
        "--set",
        &format!("image.repository={repo}"),
        "--set-string",
        &format!("image.tag={tag}"),
        "--set",
        "image.pullPolicy=Never",
        "--set",
        &format!("database.url={pod_db_url}"),
        "--set",
        "dataStorage.create=true",
        "--set",
        "dataStorage.tlsMode=disable",
        "--wait",
        "--timeout",
        "5m",
    ]);
    let helm_wait = t.elapsed();
    let holder = wait_ready(&client, 3, Some(&image), Duration::from_secs(300)).await;
    crate::support::kube::eventually(Duration::from_secs(120), "DataStorage Ready", || async {
        let phase = run_raw(
            &kubebin("kubectl"),
            &["get", "dstore", "default", "-o", "jsonpath={.status.phase}"],
        );
        (String::from_utf8_lossy(&phase.stdout) == "Ready").then_some(())
    })
    .await;
    let install_ready = t.elapsed();
    let ds_uid = dstore_uid();
    assert!(!ds_uid.is_empty());
    assert!(
        helm(&["get", "manifest", RELEASE, "-n", NS]).contains("kind: DataStorage"),
        "the DataStorage is in the release's manifest"
    );
    let t_test = Instant::now();
    // (No --logs: the pod is deleted once it succeeds, hook-succeeded, so that no test pod outlives the release.)
    let tested = helm(&["test", RELEASE, "-n", NS, "--timeout", "2m"]);
    assert!(
        tested.contains(&format!("{RELEASE}-smoke-test"))
            && tested
                .lines()
                .any(|l| l.trim_start().starts_with("Phase:") && l.contains("Succeeded")),
        "helm test: {tested}"
    );
    let helm_test = t_test.elapsed();
    let pods: Vec<String> = ready_pods(&client)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let leaders: Vec<&String> = crate::support::kube::eventually(
        Duration::from_secs(60),
        "exactly one pod reporting datastorage_leader 1",
        || async {
            let l: Vec<&String> = pods
                .iter()
                .filter(|p| leader_metric(p) == Some(1.0))
                .collect();
            (l.len() == 1).then_some(l)
        },
    )
    .await;
    assert_eq!(leaders[0], &holder, "the leader metric and the Lease agree");
    let rest = rss_by_pod();
    assert_eq!(
        rest.len(),
        3,
        "three operator processes on the node: {rest:?}"
    );
    summary(
        test_start,
        format!(
            "SUMMARY | helm install --wait, 3 replicas | `helm install --wait` returned after {:.1}s, pods Ready + \
             DataStorage Ready {:.1}s after it began; `helm test` passed in {:.1}s; Lease holder {holder} is one of \
             the pods and the only one with datastorage_leader 1; RSS at rest {} (requests 256Mi, limit 1Gi) |",
            helm_wait.as_secs_f64(),
            install_ready.as_secs_f64(),
            helm_test.as_secs_f64(),
            rest.values()
                .map(|k| mib(*k))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
    );

    ensure_namespace(&client, AUDITS_NS).await;
    let store = store(&db_url);
    let t = Instant::now();
    let (_, task) = spawn_stream(&client, AUDITS_NS, 0, warmup, concurrency);
    task.await.unwrap();
    wait_all_persisted(&client, AUDITS_NS, warmup, Duration::from_secs(300)).await;
    verify_exactly_once(&client, &store, AUDITS_NS, warmup).await;
    println!(
        "{warmup} audits persisted through the pods in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // 2. The leader pod force-deleted while kill_n audits stream in.
    let t = Instant::now();
    let mut total = warmup + kill_n;
    let (progress, task) = spawn_stream(&client, AUDITS_NS, warmup, total, concurrency);
    while progress.created.load(std::sync::atomic::Ordering::SeqCst) < kill_n / 4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut load_rss: BTreeMap<String, u64> = BTreeMap::new();
    let sample = |m: &mut BTreeMap<String, u64>| {
        for (p, k) in rss_by_pod() {
            let e = m.entry(p).or_insert(0);
            *e = (*e).max(k);
        }
    };
    sample(&mut load_rss);
    let killed_at = Instant::now();
    kubectl(&[
        "-n",
        NS,
        "delete",
        "pod",
        &holder,
        "--grace-period=0",
        "--force",
    ]);
    let new_leader = loop {
        if let Some(h) = lease_holder(&client).await.filter(|h| *h != holder) {
            break h;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(LEASE_SECONDS * 4),
            "no new leader {:?} after the leader pod was deleted",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let failover = killed_at.elapsed();
    // The new leader is a live operator pod other than the killed one: a survivor, or the ReplicaSet's
    // replacement when it starts before the old Lease expires (seen in CI at e9ebd5a; both are correct).
    let live: Vec<String> = operator_pods(&client)
        .await
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    assert!(
        new_leader != holder && live.contains(&new_leader),
        "the new leader {new_leader} is a live operator pod other than the killed {holder}: {live:?} (at install: {pods:?})"
    );
    while !task.is_finished() {
        sample(&mut load_rss);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    task.await.unwrap();
    wait_all_persisted(&client, AUDITS_NS, total, Duration::from_secs(600)).await;
    let v = verify_exactly_once(&client, &store, AUDITS_NS, total).await;
    wait_ready(&client, 3, Some(&image), Duration::from_secs(300)).await;
    summary(
        t,
        format!(
            "SUMMARY | leader pod force-deleted (--grace-period=0 --force) while {kill_n} audits streamed | exactly \
             once: {} rows, {} history rows, {} chain links checked; new leader {new_leader} {:.1}s after the delete \
             (Lease {LEASE_SECONDS}s); {} retried requests; RSS under load (max per pod) {} |",
            v.rows,
            v.history_rows,
            v.chain_links_checked,
            failover.as_secs_f64(),
            progress.retried.load(std::sync::atomic::Ordering::SeqCst),
            load_rss
                .values()
                .map(|k| mib(*k))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
    );
    assert!(
        failover < Duration::from_secs(LEASE_SECONDS * 2),
        "new leader after {failover:?}, more than twice the Lease time"
    );

    // 3. helm upgrade to a second image tag (a rolling update under the PDB) while upgrade_n audits stream in, with a
    //    chart whose DataStorage CRD has one more field: the pre-upgrade hook applies it; the DataStorage keeps its uid.
    let upgraded = tempfile::tempdir().unwrap();
    let chart2 = chart_with_changed_crd(upgraded.path());
    let t = Instant::now();
    let from = total;
    total += upgrade_n;
    let (progress, task) = spawn_stream(&client, AUDITS_NS, from, total, concurrency);
    while progress.created.load(std::sync::atomic::Ordering::SeqCst) < upgrade_n / 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t_roll = Instant::now();
    helm(&[
        "upgrade",
        RELEASE,
        &chart2,
        "-n",
        NS,
        "--reuse-values",
        "--set-string",
        &format!("image.tag={tag2}"),
        "--wait",
        "--timeout",
        "5m",
    ]);
    let leader2 = wait_ready(&client, 3, Some(&image2), Duration::from_secs(300)).await;
    let rollout = t_roll.elapsed();
    assert_eq!(
        kubectl(&[
            "get",
            "crd",
            "datastorages.datastorage.kubernaut.ai",
            "-o",
            "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.upgradeProbe.type}",
        ]),
        "string",
        "the pre-upgrade hook did not apply the chart's changed CRD"
    );
    assert_eq!(
        dstore_uid(),
        ds_uid,
        "helm upgrade recreated the DataStorage"
    );
    task.await.unwrap();
    wait_all_persisted(&client, AUDITS_NS, total, Duration::from_secs(600)).await;
    let v = verify_exactly_once(&client, &store, AUDITS_NS, total).await;
    let pdb = kubectl(&[
        "-n",
        NS,
        "get",
        "pdb",
        RELEASE,
        "-o",
        "jsonpath={.spec.minAvailable}",
    ]);
    summary(
        t,
        format!(
            "SUMMARY | helm upgrade to a second image tag and a changed CRD (rolling, PDB minAvailable {pdb}) while \
             {upgrade_n} audits streamed | exactly once: {} rows, {} history rows, {} chain links checked; all 3 pods \
             on the new tag {:.1}s after `helm upgrade`, leader {leader2}; the pre-upgrade hook applied the new CRD \
             field; DataStorage uid unchanged; {} retried requests |",
            v.rows,
            v.history_rows,
            v.chain_links_checked,
            rollout.as_secs_f64(),
            progress.retried.load(std::sync::atomic::Ordering::SeqCst)
        ),
    );

    // 4. kubectl audit list|search|verify through the service proxy, as a user who may read AUDITS_NS only: with
    //    the built-in `view` role there (the chart's reader ClusterRole is aggregated into it) and the chart's
    //    api-proxy Role (services/proxy on the operator's Service, bound to every authenticated user), nothing else.
    ensure_namespace(&client, OTHER_NS).await;
    // Indices after the stream's, so the remediationRequestIds stay unique.
    let (_, task) = spawn_stream(&client, OTHER_NS, total, total + 3, 3);
    task.await.unwrap();
    wait_all_persisted(&client, OTHER_NS, 3, Duration::from_secs(120)).await;
    kubectl(&["-n", NS, "create", "serviceaccount", "cluster-reader"]);
    kubectl(&[
        "-n",
        AUDITS_NS,
        "create",
        "rolebinding",
        "cluster-reader",
        "--clusterrole=view",
        &format!("--serviceaccount={NS}:cluster-reader"),
    ]);
    let reader = format!("system:serviceaccount:{NS}:cluster-reader");
    let can_i = |args: &[&str]| {
        let mut full = vec!["auth", "can-i", "--as", reader.as_str()];
        full.extend_from_slice(args);
        let out = run_raw(&kubebin("kubectl"), &full);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    // The clusterrole-aggregation controller adds the chart's rules to `view` shortly after the install.
    crate::support::kube::eventually(
        Duration::from_secs(60),
        "view aggregates the chart's reader role",
        || async {
            can_i(&[
                "list",
                "remediationaudits.datastorage.kubernaut.ai",
                "-n",
                AUDITS_NS,
            ])
            .then_some(())
        },
    )
    .await;
    assert!(
        can_i(&[
            "get",
            &format!("services/{RELEASE}:8080"),
            "--subresource=proxy",
            "-n",
            NS
        ]) && !can_i(&[
            "get",
            "services/kubernetes",
            "--subresource=proxy",
            "-n",
            "default"
        ]),
        "the chart's api-proxy Role grants services/proxy on the operator's Service, and on no other"
    );
    assert!(
        !can_i(&[
            "list",
            "remediationaudits.datastorage.kubernaut.ai",
            "-n",
            OTHER_NS
        ]),
        "the reader may list audits only where it may view"
    );
    let token = kubectl(&["-n", NS, "create", "token", "cluster-reader"]);
    let admin: Value = serde_json::from_str(&kubectl(&[
        "config", "view", "--minify", "--raw", "-o", "json",
    ]))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reader_kc = dir.path().join("reader.kubeconfig");
    std::fs::write(
        &reader_kc,
        serde_json::to_string(&json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "node", "cluster": admin["clusters"][0]["cluster"]}],
            "users": [{"name": "reader", "user": {"token": token.trim()}}],
            "contexts": [{"name": "node", "context": {"cluster": "node", "user": "reader", "namespace": AUDITS_NS}}],
            "current-context": "node",
        }))
        .unwrap(),
    )
    .unwrap();
    // The kubeconfig's token is for the API server's audience: it authenticates the proxy request, and the query
    // API (TLS, audience `datastorage` in the chart's default) refuses it; the forwarded token is one for its
    // audience.
    let api_token = kubectl(&[
        "-n",
        NS,
        "create",
        "token",
        "cluster-reader",
        "--audience",
        datastorage::api::auth::DEFAULT_AUDIENCE,
    ]);
    let audit_with = |token: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-audit"));
        cmd.args(args)
            .arg("--kubeconfig")
            .arg(&reader_kc)
            .env_remove("DATASTORAGE_API_SERVER")
            .env_remove("DATASTORAGE_TOKEN");
        if let Some(t) = token {
            cmd.env("DATASTORAGE_TOKEN", t.trim());
        }
        cmd.output().unwrap()
    };
    let refused = audit_with(None, &["list", "-o", "json", "--limit", "1"]);
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && refusal.contains("401")
            && refusal.contains("audience datastorage"),
        "a token minted for the API server's audience must be refused: {refusal}"
    );
    let plain = run_raw(
        &kubebin("kubectl"),
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{NS}/services/http:{RELEASE}:8080/proxy/api/v1/audits"),
        ],
    );
    assert!(
        !plain.status.success(),
        "the query API answered plain HTTP: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
    println!(
        "query API: plain HTTP refused ({}), an API-server-audience token refused (401)",
        String::from_utf8_lossy(&plain.stderr).trim()
    );
    let audit = |args: &[&str]| audit_with(Some(&api_token), args);
    let ok_json = |args: &[&str]| -> Value {
        let out = audit(args);
        assert!(
            out.status.success(),
            "kubectl audit {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let own = ok_json(&["list", "-o", "json", "--limit", "5"]);
    let items = own["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{own}");
    let all = ok_json(&["list", "-A", "-o", "json", "--limit", "200"]);
    let namespaces: std::collections::BTreeSet<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(
        namespaces,
        [AUDITS_NS].into(),
        "-A shows only what the user may list"
    );
    let other = audit(&["list", "-n", OTHER_NS, "-o", "json"]);
    let other_items = serde_json::from_slice::<Value>(&other.stdout)
        .ok()
        .and_then(|v| v["items"].as_array().map(|a| a.len()))
        .unwrap_or(0);
    assert!(
        !other.status.success() || other_items == 0,
        "the user read {OTHER_NS}: {}",
        String::from_utf8_lossy(&other.stdout)
    );
    let found = ok_json(&[
        "search",
        "container exceeded its memory limit and was restarted",
        "-o",
        "json",
        "--limit",
        "3",
    ]);
    let results = found["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{found}");
    assert!(results.iter().all(|r| r["namespace"] == AUDITS_NS));
    let id = items[0]["id"].as_i64().unwrap().to_string();
    let verified = ok_json(&["verify", &id, "-o", "json"]);
    assert_eq!(verified["chainVerified"], true, "{verified}");
    println!(
        "kubectl audit list/search/verify through the service proxy as {NS}:cluster-reader: RBAC scoped"
    );

    // 5. One replica: a drain of the node is not blocked by the PDB (minAvailable replicaCount - 1 = 0); the pod
    //    comes back once the node is uncordoned.
    let t = Instant::now();
    helm(&[
        "upgrade",
        RELEASE,
        &chart2,
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "replicaCount=1",
        "--wait",
        "--timeout",
        "5m",
    ]);
    wait_ready(&client, 1, Some(&image2), Duration::from_secs(120)).await;
    let pdb = kubectl(&[
        "-n",
        NS,
        "get",
        "pdb",
        RELEASE,
        "-o",
        "jsonpath={.spec.minAvailable} {.spec.unhealthyPodEvictionPolicy}",
    ]);
    assert_eq!(pdb, "0 AlwaysAllow");
    assert_eq!(
        dstore_uid(),
        ds_uid,
        "helm upgrade recreated the DataStorage"
    );
    let node = kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let t_drain = Instant::now();
    let drained = run_raw(
        &kubebin("kubectl"),
        &[
            "drain",
            &node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=120s",
        ],
    );
    let drain_time = t_drain.elapsed();
    // Uncordon before asserting: the node must not stay cordoned for what follows.
    kubectl(&["uncordon", &node]);
    assert!(
        drained.status.success(),
        "kubectl drain with 1 replica was blocked: {}{}",
        String::from_utf8_lossy(&drained.stdout),
        String::from_utf8_lossy(&drained.stderr)
    );
    assert!(
        String::from_utf8_lossy(&drained.stdout).contains("evicted"),
        "the operator pod was evicted: {}",
        String::from_utf8_lossy(&drained.stdout)
    );
    wait_ready(&client, 1, Some(&image2), Duration::from_secs(180)).await;
    summary(
        t,
        format!(
            "SUMMARY | kubectl drain with 1 replica | PDB minAvailable 0 (replicaCount - 1), AlwaysAllow; the drain \
             evicted the operator pod in {:.1}s, not blocked; Ready again after uncordon |",
            drain_time.as_secs_f64()
        ),
    );

    // 5b. Secrets stopped at admission on the real node: the API server calls the chart's webhook through its
    // Service (self-managed CA), so the object is stored redacted at generation 1 (the controller's own in-place
    // redaction would make a generation 2), and its status says so.
    let t = Instant::now();
    ensure_namespace(&client, ADMISSION_NS).await;
    let (password, jwt, slack) = (
        "Sup3rS3cret!",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDpkZWZhdWx0In0.Xq3bLxvK9mN2pQ7rS5tU8wY1zA4cE6gH0jJ2kL3nM5o",
        "xoxb-2048392012-1029384756102-Zq8WnV3xKp5RtY7uB2cD9eFg",
    );
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let (name, applied) = crate::support::kube::eventually(
        Duration::from_secs(60),
        "the webhook to answer through its Service (caBundle set by the operator)",
        || async {
            // A new object per attempt: one admitted while the webhook did not answer yet (failurePolicy Ignore)
            // is redacted by the controller in place instead, at generation 2, which is not what this checks.
            let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let name = format!("leaky-{n}");
            let leaky = crate::support::kube::audit_yaml(
                &name,
                &format!("rr-node-leaky-{n}"),
                &format!(
                    "  errorMessage: \"image pull failed: password={password} token {jwt}\"\n  details:\n    notify: \"slack {slack}\"\n"
                ),
            );
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), leaky).unwrap();
            let path = file.path().to_str().unwrap().to_string();
            let out = run_raw(&kubebin("kubectl"), &["-n", ADMISSION_NS, "apply", "-f", &path]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let obj: Value =
                serde_json::from_str(&kubectl(&["-n", ADMISSION_NS, "get", "raudit", &name, "-o", "json"]))
                    .unwrap();
            // The webhook's mark; without it the object was admitted while no replica answered yet (seen right
            // after `helm install --wait`, before the replicas set the caBundle): the controller then redacts it.
            if obj["metadata"]["annotations"][datastorage::admission::REDACTED_ANNOTATION].is_null() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                return None;
            }
            Some((name, obj))
        },
    )
    .await;
    let answered_after = t.elapsed();
    let yaml = kubectl(&["-n", ADMISSION_NS, "get", "raudit", &name, "-o", "yaml"]);
    for secret in [password, jwt, slack] {
        assert!(
            !yaml.contains(secret),
            "the stored object holds {secret:.12}…:\n{yaml}"
        );
    }
    assert_eq!(
        applied["metadata"]["generation"], 1,
        "redacted before it was stored: {applied}"
    );
    let note = applied["metadata"]["annotations"][datastorage::admission::REDACTED_ANNOTATION]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for kind in ["jwt", "password_kv", "slack_token"] {
        assert!(note.contains(&format!("{kind}=")), "{note}");
    }
    let message = crate::support::kube::eventually(
        Duration::from_secs(60),
        "the leaky audit Persisted",
        || async {
            let out = kubectl(&[
                "-n",
                ADMISSION_NS,
                "get",
                "raudit",
                &name,
                "-o",
                "jsonpath={.status.state} {.status.message}",
            ]);
            out.starts_with("Persisted").then_some(out)
        },
    )
    .await;
    assert!(message.contains("redacted at admission: "), "{message}");
    summary(
        t,
        format!(
            "SUMMARY | secrets stopped at admission on the node | a password, a JWT and a Slack token applied with \
             kubectl: the object is stored redacted at generation 1 (annotation {note}), `kubectl get -o yaml` holds \
             none of them, status \"{}\"; marked by the webhook after {:.1}s, {} attempt(s) (an object admitted \
             while no replica answers is stored unredacted under failurePolicy Ignore, then redacted by the \
             controller) |",
            message.trim(),
            answered_after.as_secs_f64(),
            attempt.load(std::sync::atomic::Ordering::SeqCst)
        ),
    );

    // 6. helm uninstall: the pre-delete hook scales the operator down and removes the finalizers; CRDs and audits
    //    stay; a namespace holding audits can be deleted; the DataStorage and every other release object are gone.
    let t = Instant::now();
    helm(&["uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "5m"]);
    assert!(operator_pods(&client).await.is_empty());
    let ds_left = run_raw(&kubebin("kubectl"), &["get", "dstore", "default"]);
    assert!(
        !ds_left.status.success(),
        "the DataStorage survived helm uninstall (an orphan)"
    );
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let release_objects = || -> Vec<String> {
        [
        kubectl(&[
            "-n",
            NS,
            "get",
            "all,configmaps,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets,networkpolicies,jobs",
            "-l",
            &selector,
            "-o",
            "name",
        ]),
        kubectl(&[
            "get",
            "clusterroles,clusterrolebindings,datastorages",
            "-l",
            &selector,
            "-o",
            "name",
        ]),
        ]
        .concat()
        .lines()
        .map(str::to_string)
        .collect()
    };
    // The hook Job's pod goes by garbage collection, shortly after its Job.
    let t_gc = Instant::now();
    let deadline = t_gc + Duration::from_secs(60);
    let mut left = release_objects();
    while left.len() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        left = release_objects();
    }
    println!(
        "release objects after helm uninstall settled in {:.1}s: {left:?}",
        t_gc.elapsed().as_secs_f64()
    );
    // The checkpoint HMAC key is kept on purpose (helm.sh/resource-policy: keep): without it the signed checkpoints
    // could not be verified again.
    assert_eq!(
        left,
        [format!("secret/{RELEASE}-checkpoint")],
        "release objects left after helm uninstall"
    );
    kubectl(&["get", "crd", "remediationaudits.datastorage.kubernaut.ai"]);
    assert_eq!(
        persisted_crs(&client, AUDITS_NS).await,
        total,
        "audits kept by helm uninstall"
    );
    let finalized = kubectl(&[
        "get",
        "raudit",
        "-A",
        "-o",
        "jsonpath={range .items[*]}{.metadata.finalizers}{\"\\n\"}{end}",
    ]);
    assert!(
        finalized.lines().all(|l| l.trim().is_empty()),
        "audits still carry finalizers after helm uninstall"
    );
    let rows = crate::support::faults::stored_count(&store).await;
    // + 3 in OTHER_NS, + those of phase 5b (one, or more when the webhook did not answer at once).
    let admission_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audits WHERE namespace = $1")
            .bind(ADMISSION_NS)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(admission_rows >= 1);
    assert_eq!(
        rows,
        Some(total as i64 + 3 + admission_rows),
        "stored audits kept"
    );
    kubectl(&["delete", "namespace", OTHER_NS, "--timeout=120s"]);
    summary(
        t,
        format!(
            "SUMMARY | helm uninstall | the pre-delete hook scaled the operator to 0 and released the finalizers; \
             CRDs, {} audits and their rows kept; the DataStorage and every release object gone (the checkpoint key \
             Secret kept on purpose); namespace {OTHER_NS} holding audits deleted |",
            total as i64 + 3 + admission_rows
        ),
    );
    kubectl(&["delete", "namespace", AUDITS_NS, "--wait=false"]);
    println!(
        "cluster suite: {:.0}s in all",
        test_start.elapsed().as_secs_f64()
    );
}
