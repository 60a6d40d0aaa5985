//! Vector benchmarks at 100k audits: `vector_write` (embeddings/s into the HNSW index, `vector` and `halfvec`) and
//! `semantic_search` (p50/p95 latency and recall@10 vs exact search, unfiltered and filtered to a namespace holding
//! 1 % of the rows, at several `ef_search`).
//!
//! Recall only means something with real embeddings, so the audits come from a deterministic, seeded generator of
//! realistic audits (alerts, actions, targets, error messages with the variety of real clusters), their text is
//! built by the product's `prepare()` (→ `embedding_text`), and the vectors come from the real MiniLM. Embedding
//! the ~35k distinct texts of the 104k audits took ~33 min on 2 shared cores, so the first run computes them and
//! caches them on disk (see [`cache_path`], ~160 MB), keyed by the model file's sha256, the generator version and
//! the count; later runs take a few minutes.
//!
//! Environment: `BENCH_VECTORS=N` (rows, default 100000; smaller for development), `BENCH_HNSW=m,ef_construction`
//! (default: the DataStorage defaults 16,64), `DATASTORAGE_CACHE` (cache root, default `~/.cache/datastorage`).

use std::collections::HashMap;
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, TimeZone as _, Utc};
use datastorage::audit::record::{chain_hash, sha256_hex};
use datastorage::audit::{AuditMeta, Prepared, SanitizeConfig, prepare};
use datastorage::crd::{AuditOutcome, AuditPhase, RemediationAuditSpec, VectorIndexSpec};
use datastorage::embed::{Embedder, LocalEmbedder, LocalOptions};
use datastorage::store::index::{INDEX_NAME, IndexParams};
use datastorage::store::search::{AuditFilters, SearchParams};
use datastorage::store::{EmbeddingRow, Store, StoreConfig};
use pgvector::Vector;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Bump whenever the generated audits change: old caches are then ignored (their key no longer matches).
const GENERATOR_VERSION: u32 = 1;
const SEED: u64 = 0x0da7_a570_4a6e_2026;
const DIMS: usize = 384;
/// The namespace that holds exactly 1 % of the rows (every row with `i % 100 == FILTER_SLOT`).
pub const FILTER_NAMESPACE: &str = "payments";
const FILTER_SLOT: u64 = 42;

// ---------------------------------------------------------------------------------------------------------------
// Deterministic randomness (SplitMix64: fixed algorithm, so caches stay valid across dependency upgrades).

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// An independent stream for item `i` of stream `stream`.
    fn for_item(stream: u64, i: u64) -> Self {
        let mut r = Self(SEED ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.0 = r.0.wrapping_add(i.wrapping_mul(0xd1b5_4a32_d192_ed03));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn range(&mut self, lo: u64, hi_incl: u64) -> u64 {
        lo + self.next() % (hi_incl - lo + 1)
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b"0123456789abcdef"[self.below(16)]))
            .collect()
    }
    fn alnum(&mut self, len: usize) -> String {
        // Kubernetes' random suffix alphabet (no vowels, no ambiguous characters).
        (0..len)
            .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[self.below(27)]))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The generator: scenarios of real-world alerts, what was done about them, and what the errors looked like.

struct Scenario {
    alert: &'static str,
    severity: &'static str,
    /// `group/version/Kind` prefixes (the namespace and a name are appended).
    kinds: &'static [&'static str],
    actions: &'static [&'static str],
    /// Error message templates; `{slot}`s are filled by [`fill`].
    errors: &'static [&'static str],
    /// How an operator would search for this (free text).
    queries: &'static [&'static str],
}

const DEPLOY: &str = "apps/v1/Deployment";
const STS: &str = "apps/v1/StatefulSet";
const DS: &str = "apps/v1/DaemonSet";
const NODE: &str = "v1/Node";
const PVC: &str = "v1/PersistentVolumeClaim";
const SVC: &str = "v1/Service";
const POD: &str = "v1/Pod";

const SCENARIOS: &[Scenario] = &[
    Scenario {
        alert: "KubePodOOMKilled",
        severity: "critical",
        kinds: &[DEPLOY, DEPLOY, STS, POD],
        actions: &[
            "increase-memory-limit",
            "restart-pod",
            "rollback-deployment",
        ],
        errors: &[
            "container {container} in pod {pod} was OOMKilled: memory limit {mem} exceeded",
            "OOMKilled (exit code 137): container {container} used {memuse} of its {mem} limit",
            "Last State: Terminated, Reason: OOMKilled, Exit Code: 137; restarted {n} times in the last {dur}",
            "java.lang.OutOfMemoryError: Java heap space in container {container} (pod {pod}, -Xmx{mem})",
            "fatal error: runtime: out of memory; container {container} killed by the kernel OOM killer at {memuse}",
        ],
        queries: &[
            "pods killed because they ran out of memory",
            "container exceeded its memory limit and was OOM killed",
            "java heap space out of memory error",
            "raise memory limit after OOMKilled",
        ],
    },
    Scenario {
        alert: "KubePodCrashLooping",
        severity: "warning",
        kinds: &[DEPLOY, DEPLOY, STS],
        actions: &["restart-pod", "rollback-deployment", "delete-pod"],
        errors: &[
            "Back-off restarting failed container {container} in pod {pod} ({n} restarts)",
            "CrashLoopBackOff: container {container} exited with code {exit}: panic: runtime error: invalid memory address or nil pointer dereference",
            "container {container} failed liveness probe: Get \"http://{ip}:{port}/healthz\": dial tcp {ip}:{port}: connect: connection refused",
            "Error: failed to load config /etc/{app}/config.yaml: yaml: line {n}: mapping values are not allowed in this context",
            "CrashLoopBackOff: {container} exited with code {exit}: Error: Cannot find module '/app/dist/server.js'",
            "Traceback (most recent call last): ModuleNotFoundError: No module named '{pymod}' (container {container} exit code 1)",
        ],
        queries: &[
            "pod stuck in crash loop backoff",
            "container keeps restarting right after start",
            "liveness probe failing connection refused",
            "application crashes on startup with a config error",
        ],
    },
    Scenario {
        alert: "KubeContainerWaiting",
        severity: "warning",
        kinds: &[DEPLOY, STS, DS],
        actions: &[
            "rollback-deployment",
            "patch-image-pull-secret",
            "retry-image-pull",
        ],
        errors: &[
            "Failed to pull image \"{image}\": rpc error: code = NotFound desc = manifest unknown",
            "ImagePullBackOff: Back-off pulling image \"{image}\"",
            "failed to pull and unpack image \"{image}\": failed to resolve reference: unexpected status from HEAD request: 401 Unauthorized",
            "ErrImagePull: pull access denied for {image}, repository does not exist or may require authorization",
            "container {container} waiting: CreateContainerConfigError: secret \"{secret}\" not found",
        ],
        queries: &[
            "image pull backoff after a release",
            "cannot pull container image unauthorized",
            "image tag does not exist in the registry",
            "container stuck waiting because a secret is missing",
        ],
    },
    Scenario {
        alert: "KubeDeploymentReplicasMismatch",
        severity: "warning",
        kinds: &[DEPLOY],
        actions: &[
            "scale-deployment",
            "rollback-deployment",
            "restart-deployment",
            "add-node-capacity",
        ],
        errors: &[
            "deployment {app} has {n} of {m} replicas available for {dur}",
            "0/{nodes} nodes are available: {n} Insufficient cpu, {k} Insufficient memory. preemption: 0/{nodes} nodes are available",
            "ProgressDeadlineExceeded: ReplicaSet \"{rs}\" has timed out progressing",
            "0/{nodes} nodes are available: {nodes} node(s) had untolerated taint {node.kubernetes.io/unschedulable: }",
            "pods pending: 0/{nodes} nodes are available: {k} node(s) didn't match pod anti-affinity rules",
        ],
        queries: &[
            "deployment does not have enough available replicas",
            "pods pending because of insufficient cpu on nodes",
            "replica set timed out progressing",
            "pods unschedulable due to taints or anti affinity",
        ],
    },
    Scenario {
        alert: "KubeDeploymentRolloutStuck",
        severity: "warning",
        kinds: &[DEPLOY],
        actions: &["rollback-deployment", "restart-deployment"],
        errors: &[
            "rollout of deployment {app} to revision {n} is stuck: {k} old replicas are pending termination",
            "deployment \"{app}\" exceeded its progress deadline",
            "Readiness probe failed: HTTP probe failed with statuscode: {code}; new ReplicaSet {rs} never became ready",
        ],
        queries: &[
            "rollout stuck new version never becomes ready",
            "deployment exceeded progress deadline roll back",
        ],
    },
    Scenario {
        alert: "KubeNodeNotReady",
        severity: "critical",
        kinds: &[NODE],
        actions: &["cordon-node", "drain-node", "reboot-node", "replace-node"],
        errors: &[
            "node {node} status is NotReady: Kubelet stopped posting node status",
            "PLEG is not healthy: pleg was last seen active {dur} ago; threshold is 3m0s",
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
            "node {node} unreachable: node.kubernetes.io/unreachable taint applied, {n} pods marked for eviction",
            "kubelet on {node}: failed to get system container stats: failed to get cgroup stats for \"/system.slice/containerd.service\"",
        ],
        queries: &[
            "node not ready kubelet stopped posting status",
            "worker node went down and pods were evicted",
            "CNI plugin not initialized network not ready",
            "replace an unhealthy node",
        ],
    },
    Scenario {
        alert: "KubeNodeDiskPressure",
        severity: "warning",
        kinds: &[NODE],
        actions: &[
            "clean-image-cache",
            "drain-node",
            "expand-node-disk",
            "prune-container-logs",
        ],
        errors: &[
            "filesystem on {node} at /var/lib/containerd has only {pctl}% available space left",
            "The node was low on resource: ephemeral-storage. Container {container} was using {gb}Gi, which exceeds its request of 0.",
            "kubelet image garbage collection failed: wanted to free {gb}Gi bytes, but freed 0 bytes",
            "DiskPressure condition is True on {node}: nodefs.available < 10%",
        ],
        queries: &[
            "node disk almost full",
            "pods evicted because of ephemeral storage",
            "image garbage collection could not free space",
        ],
    },
    Scenario {
        alert: "KubePersistentVolumeFillingUp",
        severity: "critical",
        kinds: &[PVC, STS],
        actions: &["expand-pvc", "purge-old-data", "rotate-logs"],
        errors: &[
            "PersistentVolume claimed by {pvc} in namespace {ns} is only {pctl}% free",
            "could not write to file \"pg_wal/xlogtemp.{big}\": No space left on device",
            "resize of volume {pvc} failed: only dynamically provisioned pvc can be resized and the storageclass {sc} must support resize",
            "ERROR: could not extend file \"base/{big}/{big}\": No space left on device",
            "kafka log dir /var/lib/kafka/data failed: java.io.IOException: No space left on device",
        ],
        queries: &[
            "persistent volume is running out of space",
            "database disk full no space left on device",
            "expand the pvc of a statefulset",
        ],
    },
    Scenario {
        alert: "CPUThrottlingHigh",
        severity: "info",
        kinds: &[DEPLOY, STS],
        actions: &["increase-cpu-limit", "scale-deployment", "tune-hpa"],
        errors: &[
            "{pct}% throttling of CPU in namespace {ns} for container {container} in pod {pod}",
            "container {container} hit its CPU limit of {cpu} for {dur}; p99 latency rose to {ms}ms",
        ],
        queries: &[
            "cpu throttling is slowing the service",
            "container hits its cpu limit",
        ],
    },
    Scenario {
        alert: "KubeHpaMaxedOut",
        severity: "warning",
        kinds: &["autoscaling/v2/HorizontalPodAutoscaler", DEPLOY],
        actions: &["adjust-hpa-max", "scale-deployment", "add-node-capacity"],
        errors: &[
            "HPA {app} has been running at max replicas ({n}) for longer than 15 minutes",
            "failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API",
            "horizontal pod autoscaler {app}: desired replicas {m} capped at maxReplicas {n}",
        ],
        queries: &[
            "autoscaler is at max replicas",
            "hpa cannot get cpu metrics",
        ],
    },
    Scenario {
        alert: "KubeJobFailed",
        severity: "warning",
        kinds: &["batch/v1/Job", "batch/v1/CronJob"],
        actions: &["rerun-job", "delete-job", "suspend-cronjob"],
        errors: &[
            "Job {job} has failed: BackoffLimitExceeded after {n} failed pods",
            "Job {job} was active longer than specified deadline (DeadlineExceeded)",
            "pg_dump: error: connection to server at \"{host}\" ({ip}), port 5432 failed: FATAL: role \"backup\" does not exist",
            "backup upload to s3://{bucket}/{date}/ failed: RequestTimeout: Your socket connection to the server was not read from or written to within the timeout period",
            "migration job {job} failed: ERROR: relation \"{table}\" already exists",
        ],
        queries: &[
            "nightly backup job failed",
            "cron job exceeded its deadline",
            "database migration job failed",
        ],
    },
    Scenario {
        alert: "TargetDown",
        severity: "warning",
        kinds: &[SVC, DEPLOY],
        actions: &["restart-pod", "restart-deployment", "fix-servicemonitor"],
        errors: &[
            "{pct}% of the {app} targets in {ns} namespace are down",
            "scrape of http://{ip}:{port}/metrics failed: context deadline exceeded",
            "Get \"http://{ip}:{port}/metrics\": dial tcp {ip}:{port}: i/o timeout",
        ],
        queries: &[
            "prometheus target is down",
            "metrics endpoint scrape timeout",
        ],
    },
    Scenario {
        alert: "CertificateExpiringSoon",
        severity: "warning",
        kinds: &[
            "cert-manager.io/v1/Certificate",
            "v1/Secret",
            "networking.k8s.io/v1/Ingress",
        ],
        actions: &[
            "renew-certificate",
            "rotate-certificate",
            "restart-ingress-controller",
        ],
        errors: &[
            "certificate {cert} expires in {n} days (notAfter {date}T00:00:00Z)",
            "x509: certificate has expired or is not yet valid: current time {date}T{time}Z is after {date}T00:00:00Z",
            "ACME order failed: 429 urn:ietf:params:acme:error:rateLimited: too many certificates already issued for {domain}",
            "challenge for {domain} failed: DNS record _acme-challenge.{domain} not yet propagated",
            "tls: failed to verify certificate: x509: certificate signed by unknown authority (issuer {cert}-ca)",
        ],
        queries: &[
            "tls certificate expired",
            "cert-manager failed to renew certificate",
            "x509 certificate signed by unknown authority",
        ],
    },
    Scenario {
        alert: "HighErrorRate",
        severity: "critical",
        kinds: &["networking.k8s.io/v1/Ingress", DEPLOY, SVC],
        actions: &[
            "rollback-deployment",
            "restart-pod",
            "scale-deployment",
            "enable-circuit-breaker",
        ],
        errors: &[
            "HTTP {code} error rate for service {app} is {pct}% over the last 5 minutes",
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: delayed connect error: 111",
            "upstream timed out (110: Connection timed out) while reading response header from upstream, upstream: \"http://{ip}:{port}/api/v1/{path}\"",
            "{code} Service Unavailable from {app}: no healthy upstream",
            "error rate of {app} rose to {pct}% after deploy of {image}",
        ],
        queries: &[
            "lots of 5xx errors after a deploy",
            "service returns 503 no healthy upstream",
            "nginx upstream timed out",
            "error rate spike roll back",
        ],
    },
    Scenario {
        alert: "ServiceLatencyHigh",
        severity: "warning",
        kinds: &[DEPLOY, SVC],
        actions: &[
            "scale-deployment",
            "increase-cpu-limit",
            "restart-pod",
            "flush-cache",
        ],
        errors: &[
            "p99 latency of {app} is {ms}ms (SLO 300ms) for {dur}",
            "slow query: SELECT * FROM {table} WHERE customer_id = $1 took {ms}ms",
            "gRPC calls from {app} to {app2} exceed deadline: DeadlineExceeded after {ms}ms",
        ],
        queries: &[
            "service is slow p99 latency above slo",
            "slow database queries make the api slow",
            "grpc deadline exceeded between services",
        ],
    },
    Scenario {
        alert: "PostgreSQLReplicationLagHigh",
        severity: "critical",
        kinds: &[STS, "postgresql.cnpg.io/v1/Cluster"],
        actions: &["restart-replica", "rebuild-replica", "failover-database"],
        errors: &[
            "replica {pod} is {big} kB behind the primary (replay lag {dur})",
            "FATAL: could not receive data from WAL stream: ERROR: requested WAL segment {wal} has already been removed",
            "could not receive data from WAL stream: server closed the connection unexpectedly",
        ],
        queries: &[
            "postgres replica lagging behind primary",
            "wal segment already removed replica broken",
            "database failover",
        ],
    },
    Scenario {
        alert: "PostgreSQLTooManyConnections",
        severity: "critical",
        kinds: &[STS, DEPLOY],
        actions: &[
            "restart-pgbouncer",
            "terminate-idle-connections",
            "scale-deployment",
        ],
        errors: &[
            "FATAL: sorry, too many clients already",
            "FATAL: remaining connection slots are reserved for non-replication superuser connections",
            "{big} connections in use on {host} (max_connections {m}00)",
            "pool exhausted: timed out after {ms}ms waiting for a connection to {host}",
        ],
        queries: &["postgres too many connections", "connection pool exhausted"],
    },
    Scenario {
        alert: "PostgreSQLDeadlocksDetected",
        severity: "warning",
        kinds: &[STS, DEPLOY],
        actions: &["kill-blocking-query", "restart-pod"],
        errors: &[
            "ERROR: deadlock detected. DETAIL: Process {big} waits for ShareLock on transaction {big}; blocked by process {big}.",
            "canceling statement due to lock timeout on relation \"{table}\"",
        ],
        queries: &["database deadlocks", "queries blocked waiting for locks"],
    },
    Scenario {
        alert: "RedisOutOfMemory",
        severity: "critical",
        kinds: &[STS, DEPLOY],
        actions: &["flush-cache", "increase-memory-limit", "scale-statefulset"],
        errors: &[
            "OOM command not allowed when used memory > 'maxmemory' ({mem})",
            "redis {pod}: evicted {big} keys in {dur}, used_memory {memuse}",
            "MISCONF Redis is configured to save RDB snapshots, but it is currently not able to persist on disk",
        ],
        queries: &[
            "redis out of memory",
            "cache evicting keys maxmemory reached",
        ],
    },
    Scenario {
        alert: "KafkaConsumerGroupLagHigh",
        severity: "warning",
        kinds: &[DEPLOY, STS],
        actions: &[
            "scale-deployment",
            "restart-consumer",
            "reset-consumer-offset",
        ],
        errors: &[
            "consumer group {app}-consumer lag is {big} messages on topic {app}-events",
            "org.apache.kafka.common.errors.TimeoutException: Topic {app}-events not present in metadata after 60000 ms.",
            "consumer {pod} left group {app}-consumer: max.poll.interval.ms exceeded, rebalancing",
        ],
        queries: &[
            "kafka consumers falling behind",
            "consumer group lag growing",
            "kafka rebalancing max poll interval exceeded",
        ],
    },
    Scenario {
        alert: "CoreDNSErrorsHigh",
        severity: "critical",
        kinds: &[DEPLOY],
        actions: &["restart-coredns", "scale-deployment"],
        errors: &[
            "dial tcp: lookup {host} on 10.96.0.10:53: no such host",
            "dial tcp: lookup {host}: i/o timeout",
            "CoreDNS returned SERVFAIL for {pct}% of queries in the last 5 minutes",
        ],
        queries: &[
            "dns resolution failing in the cluster",
            "lookup no such host",
        ],
    },
    Scenario {
        alert: "ServiceUnreachable",
        severity: "warning",
        kinds: &[SVC, "networking.k8s.io/v1/NetworkPolicy"],
        actions: &["patch-networkpolicy", "rollback-networkpolicy"],
        errors: &[
            "connection to {host}:{port} timed out: traffic from {app2} blocked by NetworkPolicy {app}-deny-all",
            "dial tcp {ip}:{port}: connect: no route to host",
        ],
        queries: &[
            "network policy blocks traffic between services",
            "no route to host",
        ],
    },
    Scenario {
        alert: "KubePodNotReady",
        severity: "warning",
        kinds: &[DEPLOY, STS, POD],
        actions: &["recreate-secret", "rollback-deployment", "restart-pod"],
        errors: &[
            "MountVolume.SetUp failed for volume \"{app}-config\": configmap \"{app}-config\" not found",
            "MountVolume.SetUp failed for volume \"credentials\": secret \"{secret}\" not found",
            "Error: container has runAsNonRoot and image will run as root (pod: \"{pod}\", container: {container})",
            "Readiness probe failed: Get \"http://{ip}:{port}/ready\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
        ],
        queries: &[
            "pod not ready because a configmap is missing",
            "readiness probe timeout",
            "container runs as root but runAsNonRoot is set",
        ],
    },
    Scenario {
        alert: "KubePersistentVolumeErrors",
        severity: "critical",
        kinds: &[PVC, STS],
        actions: &["detach-volume", "delete-pod", "restart-statefulset"],
        errors: &[
            "AttachVolume.Attach failed for volume \"pvc-{uuid}\": rpc error: code = Internal desc = Could not attach volume \"vol-{hex17}\" to node \"{node}\": VolumeInUse",
            "Multi-Attach error for volume \"pvc-{uuid}\" Volume is already exclusively attached to one node and can't be attached to another",
            "MountVolume.MountDevice failed for volume \"pvc-{uuid}\": rpc error: code = DeadlineExceeded",
        ],
        queries: &[
            "volume stuck attached to another node",
            "multi attach error statefulset pod cannot start",
        ],
    },
    Scenario {
        alert: "etcdHighFsyncDurations",
        severity: "warning",
        kinds: &[POD, NODE],
        actions: &["defragment-etcd", "restart-etcd-member"],
        errors: &[
            "etcdserver: request timed out, possibly due to previous leader failure",
            "wal: sync duration of {secs}s, expected less than 1s",
            "etcd member {node} database size {gb}GB exceeds the quota; mvcc: database space exceeded",
        ],
        queries: &[
            "etcd slow disk fsync",
            "etcd database space exceeded defragment",
        ],
    },
    Scenario {
        alert: "KubePodEvicted",
        severity: "warning",
        kinds: &[DEPLOY, STS],
        actions: &["reschedule-pods", "increase-memory-request"],
        errors: &[
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: {big}Ki. Container {container} was using {memuse}, request is {mem}.",
            "pod {pod} evicted from {node}: node had condition MemoryPressure",
        ],
        queries: &[
            "pods evicted for memory pressure",
            "node memory pressure evictions",
        ],
    },
    Scenario {
        alert: "EnvoyClusterUnhealthy",
        severity: "warning",
        kinds: &[DEPLOY, "networking.istio.io/v1/DestinationRule"],
        actions: &["restart-pod", "adjust-destination-rule"],
        errors: &[
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "outlier detection ejected {n} of {m} hosts of cluster outbound|{port}||{host}",
            "istio-proxy: x-envoy-overloaded: upstream {app2} circuit breaker open",
        ],
        queries: &[
            "envoy circuit breaker open",
            "service mesh upstream reset overflow",
        ],
    },
    Scenario {
        alert: "KubeQuotaExceeded",
        severity: "warning",
        kinds: &[DEPLOY, "v1/ResourceQuota"],
        actions: &["raise-resource-quota", "scale-deployment"],
        errors: &[
            "pods \"{pod}\" is forbidden: exceeded quota: compute-resources, requested: limits.memory={mem}, used: limits.memory={memuse}, limited: limits.memory={mem2}",
            "namespace {ns} uses {pct}% of its cpu quota",
        ],
        queries: &[
            "namespace resource quota exceeded",
            "pods forbidden exceeded quota",
        ],
    },
    Scenario {
        alert: "HelmReleaseFailed",
        severity: "warning",
        kinds: &[
            "helm.toolkit.fluxcd.io/v2/HelmRelease",
            "kustomize.toolkit.fluxcd.io/v1/Kustomization",
        ],
        actions: &[
            "rollback-helm-release",
            "suspend-reconciliation",
            "retry-reconciliation",
        ],
        errors: &[
            "Helm upgrade failed: another operation (install/upgrade/rollback) is in progress",
            "Helm upgrade failed for release {ns}/{app} with chart {app}@{ver}: timed out waiting for the condition",
            "kustomize build failed: accumulating resources: accumulation err='accumulating resources from './{app}'': missing Resource metadata",
            "install retries exhausted: cannot patch \"{app}\" with kind Deployment: field is immutable",
        ],
        queries: &[
            "helm upgrade failed",
            "flux reconciliation failed kustomize",
            "field is immutable on upgrade",
        ],
    },
    Scenario {
        alert: "ElasticsearchClusterRed",
        severity: "critical",
        kinds: &[STS],
        actions: &["reallocate-shards", "expand-pvc", "delete-old-indices"],
        errors: &[
            "cluster health status changed from [YELLOW] to [RED]: {n} primary shards unassigned",
            "flood stage disk watermark [95%] exceeded on [{pod}]; all indices on this node will be marked read-only",
        ],
        queries: &[
            "elasticsearch cluster red unassigned shards",
            "search indices read only disk watermark",
        ],
    },
    Scenario {
        alert: "NodeClockSkewDetected",
        severity: "warning",
        kinds: &[NODE],
        actions: &["restart-chronyd", "cordon-node"],
        errors: &["clock skew of {ms}ms detected on {node}; chrony is not synchronised"],
        queries: &["node clock out of sync"],
    },
    Scenario {
        alert: "KubeDaemonSetRolloutStuck",
        severity: "warning",
        kinds: &[DS],
        actions: &["rollback-daemonset", "restart-daemonset"],
        errors: &[
            "daemonset {app} has {n} pods not scheduled and {k} unavailable",
            "daemonset {app} rollout stuck: pod on {node} in CrashLoopBackOff",
        ],
        queries: &["daemonset rollout stuck on some nodes"],
    },
    Scenario {
        alert: "NodeHighCPUUsage",
        severity: "warning",
        kinds: &[NODE],
        actions: &["drain-node", "scale-node-pool"],
        errors: &["CPU usage on {node} at {pct}% for {dur}; top process {proc}"],
        queries: &["node cpu saturated"],
    },
];

/// Failure notes appended to the error message when a remediation did not work.
const FAILURES: &[&str] = &[
    "remediation failed: timed out after {dur} waiting for the rollout to finish",
    "remediation failed: admission webhook \"validate.kyverno.svc\" denied the request: {policy}",
    "remediation failed: deployments.apps \"{app}\" is forbidden: User \"system:serviceaccount:kubernaut:remediator\" cannot patch resource \"deployments\" in namespace \"{ns}\"",
    "remediation failed: Operation cannot be fulfilled on deployments.apps \"{app}\": the object has been modified; please apply your changes to the latest version and try again",
    "remediation aborted: the target is already being remediated by another workflow",
    "remediation failed: Cannot evict pod as it would violate the pod's disruption budget",
    "remediation failed: approval was not granted within {dur}",
    "remediation did not help: the alert fired again {n} minutes later",
];

const APPS: &[&str] = &[
    "api",
    "checkout",
    "cart",
    "orders",
    "payments-api",
    "ledger",
    "billing-worker",
    "invoice-renderer",
    "search-indexer",
    "catalog",
    "pricing",
    "recommendations",
    "notifications",
    "email-sender",
    "auth",
    "session-store",
    "user-profile",
    "gateway",
    "frontend",
    "web",
    "graphql",
    "inventory",
    "shipping",
    "fraud-detector",
    "risk-scoring",
    "reporting",
    "etl-runner",
    "postgres",
    "redis",
    "kafka",
    "zookeeper",
    "elasticsearch",
    "rabbitmq",
    "minio",
    "prometheus",
    "grafana",
    "loki",
    "fluent-bit",
    "coredns",
    "ingress-nginx-controller",
    "cert-manager",
    "keycloak",
    "vault",
    "argocd-repo-server",
    "image-resizer",
    "media-transcoder",
    "feature-flags",
    "audit-log",
];

const SIDECARS: &[&str] = &[
    "istio-proxy",
    "envoy",
    "fluent-bit",
    "vault-agent",
    "linkerd-proxy",
    "cloud-sql-proxy",
];

/// Namespaces besides [`FILTER_NAMESPACE`], most used first (rows are spread with a Zipf-like skew).
const NAMESPACES: &[&str] = &[
    "default",
    "shop",
    "checkout",
    "platform",
    "monitoring",
    "data",
    "identity",
    "search",
    "kube-system",
    "ingress-nginx",
    "messaging",
    "media",
    "billing",
    "logistics",
    "fraud",
    "analytics",
    "ml-serving",
    "notifications",
    "cert-manager",
    "databases",
    "team-alpha",
    "team-bravo",
    "team-charlie",
    "team-delta",
    "team-echo",
    "staging-shop",
    "staging-checkout",
    "staging-platform",
    "dev-sandbox",
    "ci-runners",
    "argocd",
    "vault",
    "istio-system",
    "logging",
    "backups",
    "reporting",
    "partner-api",
    "mobile-backend",
    "b2b-portal",
    "experiments",
];

const CLUSTERS: &[(&str, &str)] = &[
    ("prod-eu-west-1", "production"),
    ("prod-us-east-2", "production"),
    ("prod-ap-southeast-1", "production"),
    ("staging-eu-west-1", "staging"),
    ("dev-eu-west-1", "development"),
];

const QUERY_SUFFIXES: &[&str] = &[
    " in production",
    " after the last deploy",
    " and the fix did not work",
    " last night",
    " on the payments service",
    " again",
    " how was it fixed",
    " during peak traffic",
];

/// One generated audit: its namespace and spec.
pub struct GenAudit {
    pub namespace: String,
    pub name: String,
    pub uid: uuid::Uuid,
    pub spec: RemediationAuditSpec,
}

/// The namespace of row `i` (index 0 = [`FILTER_NAMESPACE`], k + 1 = `NAMESPACES[k]`) and its share of the rows.
fn namespace_of(i: u64, rng: &mut Rng) -> (usize, f64) {
    if i % 100 == FILTER_SLOT {
        return (0, 0.01);
    }
    // Zipf-like (s = 0.9) over the other namespaces.
    let weights: Vec<f64> = (0..NAMESPACES.len())
        .map(|k| 1.0 / ((k + 1) as f64).powf(0.9))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut x = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (k, w) in weights.iter().enumerate() {
        if x < *w {
            return (k + 1, 0.99 * w / total);
        }
        x -= w;
    }
    (
        NAMESPACES.len(),
        0.99 * weights[NAMESPACES.len() - 1] / total,
    )
}

fn namespace_name(index: usize) -> &'static str {
    if index == 0 {
        FILTER_NAMESPACE
    } else {
        NAMESPACES[index - 1]
    }
}

/// Distinct situations (a target, its alert, what was done, the error seen) across all namespaces. Real audits
/// recur: the same workload hits the same problem again and produces the same text, which is why the product caches
/// embeddings by text. With 100k rows each situation occurs ~3 times (~30 % distinct texts).
const SITUATIONS: f64 = 30_000.0;

struct Ctx<'a> {
    app: &'a str,
    ns: &'a str,
    node: String,
}

fn node_name(rng: &mut Rng, cluster: &str) -> String {
    match rng.below(3) {
        0 => format!(
            "ip-10-{}-{}-{}.eu-west-1.compute.internal",
            rng.range(0, 31),
            rng.range(0, 255),
            rng.range(1, 254)
        ),
        1 => format!(
            "{cluster}-pool-{}-{}-{}",
            rng.range(1, 4),
            rng.hex(8),
            rng.alnum(4)
        ),
        _ => format!("worker-{:02}", rng.range(1, 60)),
    }
}

fn pod_name(rng: &mut Rng, app: &str) -> String {
    if rng.chance(0.7) {
        {
            let len = 9 + rng.below(2);
            format!("{app}-{}-{}", rng.hex(len), rng.alnum(5))
        }
    } else {
        format!("{app}-{}", rng.range(0, 5))
    }
}

/// Fills the `{slot}`s of a template.
fn fill(template: &str, rng: &mut Rng, ctx: &Ctx<'_>) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let slot = &after[..end];
        rest = &after[end + 1..];
        let mems = [
            "128Mi", "256Mi", "512Mi", "768Mi", "1Gi", "2Gi", "4Gi", "8Gi",
        ];
        let value = match slot {
            "app" => ctx.app.to_string(),
            "app2" => rng.pick(APPS).to_string(),
            "ns" => ctx.ns.to_string(),
            "node" => ctx.node.clone(),
            "container" => {
                if rng.chance(0.85) {
                    ctx.app.to_string()
                } else {
                    rng.pick(SIDECARS).to_string()
                }
            }
            "pod" => pod_name(rng, ctx.app),
            "rs" => {
                let len = 9 + rng.below(2);
                format!("{}-{}", ctx.app, rng.hex(len))
            }
            "mem" | "mem2" => rng.pick(&mems).to_string(),
            "memuse" => format!("{}Mi", rng.range(90, 8200)),
            "n" => rng.range(1, 60).to_string(),
            "k" => rng.range(1, 12).to_string(),
            "m" => rng.range(2, 40).to_string(),
            "nodes" => rng.range(3, 48).to_string(),
            "big" => rng.range(1000, 9_999_999).to_string(),
            "pct" => rng.range(80, 100).to_string(),
            "pctl" => rng.range(1, 9).to_string(),
            "gb" => rng.range(1, 120).to_string(),
            "secs" => format!("{}.{:03}", rng.range(1, 9), rng.range(0, 999)),
            "exit" => rng
                .pick(&["1", "2", "127", "137", "139", "143", "255"])
                .to_string(),
            "ip" => format!(
                "10.{}.{}.{}",
                rng.range(0, 255),
                rng.range(0, 255),
                rng.range(1, 254)
            ),
            "port" => rng
                .pick(&[
                    "80", "443", "3000", "5000", "5432", "6379", "8080", "8443", "9090", "9092",
                ])
                .to_string(),
            "code" => rng.pick(&["500", "502", "503", "504"]).to_string(),
            "dur" => match rng.below(3) {
                0 => format!("{}s", rng.range(10, 59)),
                1 => format!("{}m{}s", rng.range(1, 59), rng.range(0, 59)),
                _ => format!("{}h{}m", rng.range(1, 6), rng.range(0, 59)),
            },
            "ms" => rng.range(150, 12_000).to_string(),
            "cpu" => rng
                .pick(&["100m", "250m", "500m", "1", "2", "4"])
                .to_string(),
            "ver" => format!(
                "{}.{}.{}",
                rng.range(0, 4),
                rng.range(0, 40),
                rng.range(0, 20)
            ),
            "image" => {
                let registry = rng.pick(&[
                    "registry.example.com",
                    "ghcr.io/acme",
                    "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                    "europe-docker.pkg.dev/acme-prod/apps",
                ]);
                let tag = if rng.chance(0.6) {
                    format!(
                        "v{}.{}.{}",
                        rng.range(0, 4),
                        rng.range(0, 40),
                        rng.range(0, 20)
                    )
                } else {
                    format!("sha-{}", rng.hex(7))
                };
                format!("{registry}/{}:{tag}", ctx.app)
            }
            "pvc" => format!("data-{}-{}", ctx.app, rng.range(0, 3)),
            "sc" => rng
                .pick(&["standard", "gp2", "local-path", "premium-rwo"])
                .to_string(),
            "job" => {
                if rng.chance(0.5) {
                    format!("{}-backup-{}", ctx.app, rng.range(29_000_000, 29_999_999))
                } else {
                    format!("{}-migrate-{}", ctx.app, rng.alnum(5))
                }
            }
            "host" => {
                if rng.chance(0.6) {
                    format!("{}.{}.svc.cluster.local", rng.pick(APPS), ctx.ns)
                } else {
                    format!("db-{}.internal.example.com", rng.range(1, 9))
                }
            }
            "cert" => format!("{}-tls", ctx.app),
            "domain" => format!("{}.example.com", ctx.app),
            "secret" => format!(
                "{}-{}",
                ctx.app,
                rng.pick(&["credentials", "db-secret", "tls", "api-keys"])
            ),
            "date" => format!("2026-{:02}-{:02}", rng.range(1, 12), rng.range(1, 28)),
            "time" => format!(
                "{:02}:{:02}:{:02}",
                rng.range(0, 23),
                rng.range(0, 59),
                rng.range(0, 59)
            ),
            "bucket" => format!("backups-{}", ctx.ns),
            "table" => rng
                .pick(&[
                    "orders",
                    "payments",
                    "users",
                    "sessions",
                    "invoices",
                    "events",
                    "line_items",
                ])
                .to_string(),
            "wal" => format!(
                "0000000{}0000{}000000{}",
                rng.range(1, 9),
                rng.hex(4).to_uppercase(),
                rng.hex(2).to_uppercase()
            ),
            "uuid" => format!(
                "{}-{}-{}-{}-{}",
                rng.hex(8),
                rng.hex(4),
                rng.hex(4),
                rng.hex(4),
                rng.hex(12)
            ),
            "hex17" => rng.hex(17),
            "path" => rng
                .pick(&[
                    "orders",
                    "checkout/confirm",
                    "cart/items",
                    "users/me",
                    "search",
                    "payments/authorize",
                ])
                .to_string(),
            "pymod" => rng
                .pick(&["requests", "psycopg2", "numpy", "app.settings"])
                .to_string(),
            "policy" => rng
                .pick(&[
                    "require-resource-limits",
                    "disallow-latest-tag",
                    "require-run-as-non-root",
                    "restrict-image-registries",
                ])
                .to_string(),
            "proc" => rng
                .pick(&["java", "node", "python3", "containerd", "kubelet", "ffmpeg"])
                .to_string(),
            // A literal brace pair that is not a slot (e.g. a taint `{key: }`) stays as it is.
            other => format!("{{{other}}}"),
        };
        out.push_str(&value);
    }
    out.push_str(rest);
    out
}

/// Audit `i` of the generated population (independent of how many are generated).
pub fn audit(i: u64) -> GenAudit {
    let mut rng = Rng::for_item(1, i);
    let (ns_index, share) = namespace_of(i, &mut rng);
    let namespace = namespace_name(ns_index);
    // Which situation of this namespace recurs here; everything in the embedding text comes from it.
    let pool = (SITUATIONS * share).ceil().max(1.0) as usize;
    let mut sit = Rng::for_item(2 + ns_index as u64, rng.below(pool) as u64);
    let scenario = sit.pick(SCENARIOS);
    // Namespaces run a few apps each: a stable offset per namespace plus a small spread.
    let app = APPS[(ns_index * 13 + sit.below(5) * 11) % APPS.len()];
    let &(cluster, environment) = sit.pick(CLUSTERS);
    let kind = *sit.pick(scenario.kinds);
    let ctx = Ctx {
        app,
        ns: namespace,
        node: node_name(&mut sit, cluster),
    };
    let action = *sit.pick(scenario.actions);
    // The outcome mostly recurs with the situation; sometimes this occurrence went differently.
    let outcome_rng = if rng.chance(0.15) { &mut rng } else { &mut sit };
    let (phase, outcome) = match outcome_rng.below(100) {
        0..=79 => (AuditPhase::Completed, AuditOutcome::Success),
        80..=91 => (AuditPhase::Failed, AuditOutcome::Failure),
        92..=95 => (AuditPhase::Processing, AuditOutcome::Running),
        96..=97 => (AuditPhase::Pending, AuditOutcome::Pending),
        _ => (AuditPhase::Completed, AuditOutcome::Unknown),
    };
    let failure = *outcome_rng.pick(FAILURES);
    let failure = fill(failure, outcome_rng, &ctx);
    let severity = if sit.chance(0.75) {
        scenario.severity.to_string()
    } else {
        sit.pick(&["critical", "warning", "info", "high"])
            .to_string()
    };
    let mut error = if sit.chance(0.92) {
        let t = *sit.pick(scenario.errors);
        Some(fill(t, &mut sit, &ctx))
    } else {
        None
    };
    if outcome == AuditOutcome::Failure {
        error = Some(match error {
            Some(e) => format!("{e}; {failure}"),
            None => failure,
        });
    }
    let target_name = if kind == NODE {
        ctx.node.clone()
    } else {
        app.to_string()
    };
    let target_resource = if kind == NODE {
        format!("{kind}/{target_name}")
    } else {
        format!("{kind}/{namespace}/{target_name}")
    };
    // Spread over 2025, about one audit every 5 minutes.
    let start = Utc
        .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
        + chrono::Duration::seconds((i * 300 + rng.range(0, 299)) as i64 % (365 * 86_400));
    let end = start + chrono::Duration::seconds(rng.range(2, 900) as i64);
    let uid = uuid::Uuid::from_u64_pair(rng.next(), rng.next());
    GenAudit {
        namespace: namespace.to_string(),
        name: format!("{}-{}", action, rng.alnum(5)),
        uid,
        spec: RemediationAuditSpec {
            remediation_request_id: format!("rr-{i:07}-{}", rng.hex(8)),
            alert_fingerprint: rng.hex(16),
            alert_name: Some(scenario.alert.to_string()),
            phase,
            outcome,
            action_type: action.to_string(),
            severity,
            environment: environment.to_string(),
            cluster_name: cluster.to_string(),
            target_resource,
            start_time: start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            end_time: (phase != AuditPhase::Pending && phase != AuditPhase::Processing)
                .then(|| end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            error_message: error,
            details: None,
        },
    }
}

/// Audit `i` through the product's validate + sanitize + embedding-text step.
pub fn prepared(i: u64) -> anyhow::Result<Prepared> {
    let a = audit(i);
    let meta = AuditMeta {
        uid: a.uid.to_string(),
        namespace: a.namespace,
        name: a.name,
        generation: 1,
    };
    let now: DateTime<Utc> = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    prepare(&meta, &a.spec, SanitizeConfig::default(), now)
        .map_err(|e| anyhow::anyhow!("generated audit {i} does not validate: {e:?}"))
}

/// `n` distinct free-text queries an operator would type: phrasings per scenario, sometimes with a qualifier, and
/// about a quarter pasted error messages (fresh ones, not copied from the stored audits).
pub fn queries(n: usize) -> Vec<String> {
    let mut rng = Rng::new(SEED ^ 0x05ee_d0f9_e7e5);
    let mut out: Vec<String> = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    let mut attempts = 0;
    while out.len() < n && attempts < n * 100 {
        attempts += 1;
        let scenario = rng.pick(SCENARIOS);
        let q = if rng.chance(0.25) {
            let app = *rng.pick(APPS);
            let ns = *rng.pick(NAMESPACES);
            let ctx = Ctx {
                app,
                ns,
                node: node_name(&mut rng, "prod-eu-west-1"),
            };
            let t = *rng.pick(scenario.errors);
            fill(t, &mut rng, &ctx)
        } else {
            let mut q = rng.pick(scenario.queries).to_string();
            if rng.chance(0.4) {
                let suffix: &&str = rng.pick(QUERY_SUFFIXES);
                q.push_str(suffix);
            }
            q
        };
        if seen.insert(q.clone()) {
            out.push(q);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// The vector cache.

const MAGIC: &[u8; 8] = b"DSBVEC01";
const HEADER: usize = 8 + 4 + 4 + 8 + 32;

/// `${DATASTORAGE_CACHE:-$HOME/.cache/datastorage}/bench`.
fn cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("DATASTORAGE_CACHE") {
        return PathBuf::from(dir).join("bench");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/datastorage/bench")
}

/// sha256 of the model weights: a different model makes a different cache.
fn model_sha(model_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = model_dir.join("model.safetensors");
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h)?;
    Ok(h.finalize().into())
}

/// The cache file of `count` vectors: name and header carry the model hash, generator version and count.
pub fn cache_path(model_sha: &[u8; 32], count: usize) -> PathBuf {
    cache_dir().join(format!(
        "audit-vectors-g{GENERATOR_VERSION}-n{count}-{}.bin",
        &hex::encode(model_sha)[..16]
    ))
}

fn header(model_sha: &[u8; 32], count: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&GENERATOR_VERSION.to_le_bytes());
    h.extend_from_slice(&(DIMS as u32).to_le_bytes());
    h.extend_from_slice(&(count as u64).to_le_bytes());
    h.extend_from_slice(model_sha);
    h
}

/// The cached vectors, if the file is complete and for this model, generator and count.
fn load_cache(path: &Path, model_sha: &[u8; 32], count: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() != HEADER + count * DIMS * 4 || bytes[..HEADER] != header(model_sha, count)[..] {
        println!(
            "  cache {} is invalid ({} bytes); regenerating",
            path.display(),
            bytes.len()
        );
        return None;
    }
    Some(
        bytes[HEADER..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

fn write_cache(
    path: &Path,
    model_sha: &[u8; 32],
    count: usize,
    vectors: &[f32],
) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(&header(model_sha, count))?;
        for x in vectors {
            f.write_all(&x.to_le_bytes())?;
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `count` generated audits (prepared) and their MiniLM vectors (row-major, `count × 384`), from the cache or
/// computed now (printing progress) and cached.
pub struct Corpus {
    pub prepared: Vec<Prepared>,
    pub vectors: Vec<f32>,
    pub model_id: String,
}

impl Corpus {
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * DIMS..(i + 1) * DIMS]
    }
}

pub async fn corpus(model_dir: &str, count: usize) -> anyhow::Result<(Corpus, LocalEmbedder)> {
    let started = Instant::now();
    let prepared: Vec<Prepared> = (0..count as u64).map(prepared).collect::<Result<_, _>>()?;
    println!(
        "  generated {count} audits in {:.1?}, e.g.:",
        started.elapsed()
    );
    for p in prepared.iter().step_by(count / 3 + 1) {
        println!("    {}", p.embedding_text);
    }
    let embedder = LocalEmbedder::load(Path::new(model_dir), LocalOptions::default())?;
    let model_id = embedder.model_id().to_string();
    let sha = model_sha(Path::new(model_dir))?;
    let path = cache_path(&sha, count);
    if let Some(vectors) = load_cache(&path, &sha, count) {
        println!("  vectors from cache {}", path.display());
        return Ok((
            Corpus {
                prepared,
                vectors,
                model_id,
            },
            embedder,
        ));
    }
    // Embed each distinct text once (identical situations share a text, as in the product's cache).
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut unique: Vec<String> = Vec::new();
    let slots: Vec<usize> = prepared
        .iter()
        .map(|p| {
            *index.entry(p.embedding_text.as_str()).or_insert_with(|| {
                unique.push(p.embedding_text.clone());
                unique.len() - 1
            })
        })
        .collect();
    println!(
        "  embedding {} distinct texts of {count} audits with {model_id} (once; cached in {})",
        unique.len(),
        path.display()
    );
    let mut unique_vectors: Vec<Vec<f32>> = Vec::with_capacity(unique.len());
    let t = Instant::now();
    let mut last = Instant::now();
    for chunk in unique.chunks(256) {
        unique_vectors.extend(embedder.embed(chunk).await?);
        if last.elapsed() >= Duration::from_secs(15) || unique_vectors.len() == unique.len() {
            last = Instant::now();
            let done = unique_vectors.len();
            let rate = done as f64 / t.elapsed().as_secs_f64();
            let eta = (unique.len() - done) as f64 / rate.max(1e-9);
            println!(
                "  embedded {done}/{} ({rate:.0}/s, elapsed {:.0}s, ETA {:.0}s)",
                unique.len(),
                t.elapsed().as_secs_f64(),
                eta
            );
        }
    }
    let mut vectors = Vec::with_capacity(count * DIMS);
    for s in slots {
        anyhow::ensure!(
            unique_vectors[s].len() == DIMS,
            "model returned a vector of the wrong size"
        );
        vectors.extend_from_slice(&unique_vectors[s]);
    }
    write_cache(&path, &sha, count, &vectors)?;
    println!(
        "  cached {} ({} MB) after {:.0}s",
        path.display(),
        (HEADER + vectors.len() * 4) / 1_000_000,
        started.elapsed().as_secs_f64()
    );
    Ok((
        Corpus {
            prepared,
            vectors,
            model_id,
        },
        embedder,
    ))
}

/// Rows of the vector benchmarks: 100k (the spec's size) unless `BENCH_VECTORS=N` (for development).
pub fn rows() -> usize {
    std::env::var("BENCH_VECTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n >= 1000)
        .unwrap_or(100_000)
}

/// The HNSW parameters: the DataStorage defaults (m 16, ef_construction 64), or `BENCH_HNSW=m,ef_construction` to
/// try others (validated like a DataStorage's `vectorIndex`).
fn index_params() -> anyhow::Result<IndexParams> {
    let mut spec = VectorIndexSpec::default();
    if let Ok(v) = std::env::var("BENCH_HNSW") {
        let (m, efc) = v
            .split_once(',')
            .context("BENCH_HNSW must be m,ef_construction")?;
        spec.m = m.trim().parse()?;
        spec.ef_construction = efc.trim().parse()?;
    }
    IndexParams::from_spec(&spec).map_err(|e| anyhow::anyhow!("BENCH_HNSW: {e}"))
}

/// Further embeddings inserted into the `rows`-row index per element type by `vector_write` (half through the
/// product path, half by raw SQL).
fn extra(rows: usize) -> usize {
    (rows / 50).clamp(200, 2000)
}

/// Every vector the two benchmarks use: `rows` seeded ones plus the inserted ones of both element types.
fn corpus_size(rows: usize) -> usize {
    rows + 2 * extra(rows)
}

// ---------------------------------------------------------------------------------------------------------------
// Seeding (raw batched SQL into the product tables: setup, not what is measured).

/// Inserts the audits `range` of the corpus with ids `i + 1` (current rows only; no history is needed here).
async fn seed_audits(store: &Store, corpus: &Corpus, range: Range<usize>) -> anyhow::Result<()> {
    for chunk in range.collect::<Vec<_>>().chunks(1000) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO audits (id, cr_uid, namespace, name, remediation_request_id, alert_fingerprint, alert_name, \
             phase, outcome, action_type, severity, environment, cluster_name, target_resource, start_time, end_time, \
             duration_ms, error_message, generation, content_hash, chain_hash, embedding_text, embedding_text_sha) \
             OVERRIDING SYSTEM VALUE ",
        );
        qb.push_values(chunk, |mut b, &i| {
            let p = &corpus.prepared[i];
            b.push_bind(i as i64 + 1);
            super::bind_audit_row(
                &mut b,
                p,
                chain_hash("", &p.content_hash),
                sha256_hex(p.embedding_text.as_bytes()),
            );
        });
        qb.build().execute(store.pool()).await?;
    }
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('audits', 'id'), (SELECT max(id) FROM audits))",
    )
    .execute(store.pool())
    .await?;
    Ok(())
}

/// Inserts the vectors of audits `range` into `audit_embeddings`.
async fn seed_embeddings(
    store: &Store,
    corpus: &Corpus,
    range: Range<usize>,
) -> anyhow::Result<()> {
    for chunk in range.collect::<Vec<_>>().chunks(1000) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO audit_embeddings (audit_id, namespace, model_id, text_sha, embedding) ",
        );
        qb.push_values(chunk, |mut b, &i| {
            let p = &corpus.prepared[i];
            b.push_bind(i as i64 + 1)
                .push_bind(&p.record.namespace)
                .push_bind(&corpus.model_id)
                .push_bind(sha256_hex(p.embedding_text.as_bytes()))
                .push_bind(Vector::from(corpus.vector(i).to_vec()));
        });
        qb.build().execute(store.pool()).await?;
    }
    Ok(())
}

/// Builds the product's HNSW index on `audit_embeddings` (the exact DDL of [`IndexParams::create_sql`], replacing
/// the current one) in one go, with enough `maintenance_work_mem` for the graph to be built in memory. Returns the
/// build time in seconds.
async fn build_index(store: &Store, params: IndexParams) -> anyhow::Result<f64> {
    let mut conn = store.pool().acquire().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP INDEX IF EXISTS {INDEX_NAME}"
    )))
    .execute(&mut *conn)
    .await?;
    sqlx::query("SET maintenance_work_mem = '1GB'")
        .execute(&mut *conn)
        .await?;
    let t = Instant::now();
    sqlx::query(sqlx::AssertSqlSafe(params.create_sql(INDEX_NAME)))
        .execute(&mut *conn)
        .await?;
    let secs = t.elapsed().as_secs_f64();
    sqlx::query("RESET maintenance_work_mem")
        .execute(&mut *conn)
        .await?;
    sqlx::query("ANALYZE audit_embeddings")
        .execute(&mut *conn)
        .await?;
    Ok(secs)
}

/// A fresh schema holding audits `0..audits` and the vectors of `0..rows` (no HNSW index yet).
async fn seeded_store(
    url: &str,
    schema: &str,
    corpus: &Corpus,
    audits: usize,
    rows: usize,
) -> anyhow::Result<Store> {
    let store = super::fresh_store(url, schema).await?;
    // Loading 100k vectors into a live HNSW index would take ~10 min; the index is built afterwards.
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {INDEX_NAME}")))
        .execute(store.pool())
        .await?;
    let t = Instant::now();
    seed_audits(&store, corpus, 0..audits).await?;
    seed_embeddings(&store, corpus, 0..rows).await?;
    sqlx::query("ANALYZE audits").execute(store.pool()).await?;
    println!(
        "  seeded {audits} audits, {rows} vectors in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Ok(store)
}

// ---------------------------------------------------------------------------------------------------------------
// vector_write

/// Embeddings/s stored into the HNSW index at `rows` rows, through `Store::store_embedding` (what the backfill and
/// the write path's late vectors use), vs single-row raw INSERTs of other audits' vectors into the same table (same
/// indexes, same size). Both run interleaved in chunks of 100 (alternating which goes first) so that CPU noise from
/// other processes hits both alike.
pub async fn vector_write(
    bench: &mut super::Bench,
    url: &str,
    model_dir: &str,
) -> anyhow::Result<()> {
    let rows = rows();
    let w = extra(rows);
    let (corpus, embedder) = corpus(model_dir, corpus_size(rows)).await?;
    drop(embedder);
    let store = seeded_store(url, "bench_vecw", &corpus, corpus_size(rows), rows).await?;
    for (round, halfvec) in [false, true].into_iter().enumerate() {
        let params = IndexParams {
            halfvec,
            ..index_params()?
        };
        let kind = if halfvec { "halfvec" } else { "vector" };
        let build = build_index(&store, params).await?;
        let indexed: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_embeddings")
            .fetch_one(store.pool())
            .await?;
        println!(
            "  {kind}: HNSW index (m {}, ef_construction {}) over {indexed} rows built in {build:.1}s",
            params.m, params.ef_construction
        );
        // Each side inserts its own half of this round's new audits.
        let first = rows + round * w;
        let half = w / 2;
        let product_ids: Vec<usize> = (first..first + half).collect();
        let raw_ids: Vec<usize> = (first + half..first + 2 * half).collect();
        let (mut product_secs, mut raw_secs) = (0.0, 0.0);
        let started = Instant::now();
        for (c, (product_chunk, raw_chunk)) in
            product_ids.chunks(100).zip(raw_ids.chunks(100)).enumerate()
        {
            for side in [c % 2, (c + 1) % 2] {
                let t = Instant::now();
                if side == 0 {
                    for &i in product_chunk {
                        let stored = store
                            .store_embedding(
                                i as i64 + 1,
                                &sha256_hex(corpus.prepared[i].embedding_text.as_bytes()),
                                &EmbeddingRow {
                                    model_id: corpus.model_id.clone(),
                                    vector: corpus.vector(i).to_vec(),
                                },
                            )
                            .await?;
                        anyhow::ensure!(stored, "store_embedding did not store audit {}", i + 1);
                    }
                    product_secs += t.elapsed().as_secs_f64();
                } else {
                    for &i in raw_chunk {
                        sqlx::query(
                            "INSERT INTO audit_embeddings (audit_id, namespace, model_id, text_sha, embedding)
                             VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(i as i64 + 1)
                        .bind(&corpus.prepared[i].record.namespace)
                        .bind(&corpus.model_id)
                        .bind(sha256_hex(corpus.prepared[i].embedding_text.as_bytes()))
                        .bind(Vector::from(corpus.vector(i).to_vec()))
                        .execute(store.pool())
                        .await?;
                    }
                    raw_secs += t.elapsed().as_secs_f64();
                }
            }
            if started.elapsed() >= Duration::from_secs(10) && c % 5 == 4 {
                println!(
                    "  {kind}: {}/{} inserted on each side",
                    (c + 1) * 100,
                    product_ids.len()
                );
            }
        }
        let product_rate = product_ids.len() as f64 / product_secs;
        let raw_rate = raw_ids.len() as f64 / raw_secs;
        bench.record(
            if halfvec {
                "vector_write_halfvec"
            } else {
                "vector_write"
            },
            product_rate,
            "embeddings/s",
            "raw_single_row_insert",
            raw_rate,
            "rows/s",
            json!({"indexed_rows": indexed, "inserted_per_side": product_ids.len(), "element_type": kind, "m": params.m,
                   "ef_construction": params.ef_construction, "ms_per_embedding": 1000.0 / product_rate,
                   "index_build_s": build, "maintenance_work_mem": "1GB"}),
        );
    }
    sqlx::query("DROP SCHEMA bench_vecw CASCADE")
        .execute(store.pool())
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// semantic_search

const QUERIES: usize = 200;
const K: usize = 10;

fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    1.0 - dot / (na.sqrt() * nb.sqrt()).max(f64::MIN_POSITIVE)
}

/// Recall@k of `found` against the exact top-k `truth`: (strict id overlap, tie-aware). Identical texts give
/// identical vectors, so the exact top-k often has ties at its boundary; tie-aware recall counts a result as
/// correct when it is at least as near as the k-th exact neighbour (the ann-benchmarks definition).
fn recall(corpus: &Corpus, query: &[f32], found: &[i64], truth: &[i64]) -> (f64, f64) {
    if truth.is_empty() {
        return (1.0, 1.0);
    }
    let dist = |id: i64| cosine_distance(query, corpus.vector(id as usize - 1));
    let kth = truth.iter().map(|&id| dist(id)).fold(0.0f64, f64::max);
    let strict = found.iter().filter(|id| truth.contains(id)).count();
    let tie_aware = found.iter().filter(|&&id| dist(id) <= kth + 1e-6).count();
    (
        strict as f64 / truth.len() as f64,
        tie_aware.min(truth.len()) as f64 / truth.len() as f64,
    )
}

/// Scans of an index of `schema` so far, as seen by this (single-connection) store's backend.
async fn index_scans(store: &Store, index: &str) -> anyhow::Result<i64> {
    // Backends report their statistics lazily; make the next report immediate.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(store.pool())
        .await?;
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(idx_scan), 0)::bigint FROM pg_stat_user_indexes WHERE schemaname = $1 AND indexrelname = $2",
    )
    .bind(store.schema().as_str())
    .bind(index)
    .fetch_one(store.pool())
    .await?)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// p50/p95 latency and recall@10 of `Store::search` at `rows` audits for each `ef_search`, unfiltered and filtered
/// to [`FILTER_NAMESPACE`] (1 % of the rows), vs `Store::search_exact` for the same queries and filter.
pub async fn semantic_search(
    bench: &mut super::Bench,
    url: &str,
    model_dir: &str,
) -> anyhow::Result<()> {
    let rows = rows();
    let (corpus, embedder) = corpus(model_dir, corpus_size(rows)).await?;
    let texts = queries(QUERIES);
    let t = Instant::now();
    let mut query_vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        query_vectors.extend(embedder.embed(chunk).await?);
    }
    drop(embedder);
    println!(
        "  embedded {} queries in {:.1}s, e.g. {:?}, {:?}",
        texts.len(),
        t.elapsed().as_secs_f64(),
        texts[0],
        texts[1]
    );
    let schema = "bench_search";
    let store = seeded_store(url, schema, &corpus, rows, rows).await?;
    let index = IndexParams {
        halfvec: false,
        ..index_params()?
    };
    let in_namespace: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_embeddings WHERE namespace = $1")
            .bind(FILTER_NAMESPACE)
            .fetch_one(store.pool())
            .await?;
    // Profiles: the DataStorage defaults (or BENCH_HNSW), then — unless BENCH_HNSW picks one — a denser graph
    // (m 32, ef_construction 128), unfiltered only, to show which settings meet the recall target at 100k.
    let mut profiles = vec![(index, "", true, vec![40, 100, 200, 400, 1000])];
    if std::env::var("BENCH_HNSW").is_err() {
        profiles.push((
            IndexParams {
                m: 32,
                ef_construction: 128,
                ..index
            },
            "m32_",
            false,
            vec![100, 200, 400],
        ));
    }
    for (i, (index, profile, with_filtered, unfiltered_efs)) in profiles.into_iter().enumerate() {
        let build = build_index(&store, index).await?;
        println!(
            "  HNSW index (m {}, ef_construction {}) over {rows} rows built in {build:.1}s; namespace {FILTER_NAMESPACE} holds {in_namespace} rows",
            index.m, index.ef_construction
        );
        if i == 0 {
            insight_pass(bench, url, schema, &corpus, &query_vectors, index, rows).await?;
        }
        search_pass(
            bench,
            url,
            schema,
            &corpus,
            &query_vectors,
            index,
            profile,
            with_filtered,
            &unfiltered_efs,
            rows,
            in_namespace,
            build,
        )
        .await?;
    }
    sqlx::query("DROP SCHEMA bench_search CASCADE")
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Latency and recall of one index profile over the query set, unfiltered (at `unfiltered_efs`) and, when
/// `with_filtered`, filtered to the 1 % namespace (at ef_search 40/100/200).
#[allow(clippy::too_many_arguments)]
async fn search_pass(
    bench: &mut super::Bench,
    url: &str,
    schema: &str,
    corpus: &Corpus,
    query_vectors: &[Vec<f32>],
    index: IndexParams,
    profile: &str,
    with_filtered: bool,
    unfiltered_efs: &[i32],
    rows: usize,
    in_namespace: i64,
    build_secs: f64,
) -> anyhow::Result<()> {
    // Searches run one at a time on one connection, as one API request does.
    let mut config = StoreConfig::new(url, schema)?;
    config.pool_size = 1;
    let search_store = Store::connect_lazy(&config)?;
    let passes: &[bool] = if with_filtered {
        &[false, true]
    } else {
        &[false]
    };

    for &filtered in passes {
        let namespaces = filtered.then(|| vec![FILTER_NAMESPACE.to_string()]);
        let filters = AuditFilters {
            namespaces: namespaces.clone(),
            ..AuditFilters::default()
        };
        let label = format!("{profile}{}", if filtered { "ns1pct_" } else { "" });
        // Ground truth and the baseline latency.
        let mut truth = Vec::with_capacity(query_vectors.len());
        let mut exact_ms = Vec::with_capacity(query_vectors.len());
        for q in query_vectors {
            let t = Instant::now();
            truth.push(
                search_store
                    .search_exact(q, namespaces.as_deref(), K as i64)
                    .await?,
            );
            exact_ms.push(ms(t));
        }
        exact_ms.sort_by(f64::total_cmp);
        // Warm-up (index pages into memory), not measured.
        for q in query_vectors {
            search_store
                .search(q, &filters, &search_params(100, &corpus.model_id))
                .await?;
        }
        // The spec's settings (40 is the DataStorage default), and unfiltered also higher ones, to show where the
        // recall target is met. Filtered to 1 % of the rows the planner searches the namespace exactly (btree +
        // sort), so ef_search does not matter there.
        let efs: &[i32] = if filtered {
            &[40, 100, 200]
        } else {
            unfiltered_efs
        };
        for &ef in efs {
            let hnsw_before = index_scans(&search_store, INDEX_NAME).await?;
            let ns_before = index_scans(&search_store, "audit_embeddings_namespace_idx").await?;
            let mut lat = Vec::with_capacity(query_vectors.len());
            let (mut strict_sum, mut tie_sum) = (0.0, 0.0);
            let mut worst: f64 = 1.0;
            for (q, truth) in query_vectors.iter().zip(&truth) {
                let t = Instant::now();
                let hits = search_store
                    .search(q, &filters, &search_params(ef, &corpus.model_id))
                    .await?;
                lat.push(ms(t));
                let ids: Vec<i64> = hits.iter().map(|h| h.id).collect();
                if filtered {
                    anyhow::ensure!(
                        hits.iter().all(|h| h.namespace == FILTER_NAMESPACE),
                        "filtered search returned another namespace"
                    );
                }
                let (strict, tie) = recall(corpus, q, &ids, truth);
                strict_sum += strict;
                tie_sum += tie;
                worst = worst.min(tie);
            }
            let hnsw_scans = index_scans(&search_store, INDEX_NAME).await? - hnsw_before;
            let ns_scans =
                index_scans(&search_store, "audit_embeddings_namespace_idx").await? - ns_before;
            lat.sort_by(f64::total_cmp);
            let n = query_vectors.len() as f64;
            let recall_tie = tie_sum / n;
            println!(
                "  {}ef_search {ef}: HNSW index scans {hnsw_scans}/{} searches, namespace index scans {ns_scans}; strict id recall {:.3}, worst query {worst:.2}",
                if filtered { "filtered, " } else { "" },
                query_vectors.len(),
                strict_sum / n
            );
            if !filtered && hnsw_scans < query_vectors.len() as i64 {
                println!("  WARNING: not every unfiltered search used the HNSW index");
            }
            let params = json!({"rows": rows, "queries": query_vectors.len(), "k": K, "ef_search": ef,
                "namespace_filter": namespaces, "namespace_rows": if filtered { in_namespace } else { rows as i64 },
                "hnsw_index_scans": hnsw_scans, "namespace_index_scans": ns_scans,
                "recall_strict_ids": strict_sum / n, "worst_query_recall": worst,
                "m": index.m, "ef_construction": index.ef_construction, "element_type": "vector",
                "index_build_s": build_secs});
            bench.record(
                &format!("semantic_search_{label}ef{ef}_p50"),
                super::percentile(&lat, 0.5),
                "ms",
                "exact_search_p50",
                super::percentile(&exact_ms, 0.5),
                "ms",
                params.clone(),
            );
            bench.record(
                &format!("semantic_search_{label}ef{ef}_p95"),
                super::percentile(&lat, 0.95),
                "ms",
                "exact_search_p95",
                super::percentile(&exact_ms, 0.95),
                "ms",
                params.clone(),
            );
            bench.record(
                &format!("semantic_search_{label}ef{ef}_recall10"),
                recall_tie,
                "recall@10",
                "exact_search",
                1.0,
                "recall@10",
                params,
            );
        }
    }
    search_store.pool().close().await;
    Ok(())
}

/// Latency of an insight query (`Store::insight_counts` over the 200 nearest neighbours, the API's default, narrowed
/// to the incidents of the 20 nearest, plus the ranking) at the index defaults, interleaved with a plain search of the same query at ef_search 40 as the
/// baseline, one connection.
async fn insight_pass(
    bench: &mut super::Bench,
    url: &str,
    schema: &str,
    corpus: &Corpus,
    query_vectors: &[Vec<f32>],
    index: IndexParams,
    rows: usize,
) -> anyhow::Result<()> {
    use datastorage::store::insights::Neighbours;
    let mut config = StoreConfig::new(url, schema)?;
    config.pool_size = 1;
    let store = Store::connect_lazy(&config)?;
    let neighbours = datastorage::api::params::DEFAULT_INSIGHT_NEIGHBOURS;
    // Every corpus audit is inside the window (the API's default is the last 180 days; the filter costs the same).
    let filters = AuditFilters {
        since: Some(chrono::Utc::now() - chrono::Duration::days(3650)),
        ..AuditFilters::default()
    };
    let ef = 40;
    let (mut insight_ms, mut search_ms) = (Vec::new(), Vec::new());
    let mut counted = 0i64;
    // The first round over the queries warms the pages; only the second is measured.
    for round in 0..2 {
        for q in query_vectors {
            let by = Neighbours::Vector {
                vector: q.clone(),
                model_id: corpus.model_id.clone(),
                exclude_id: None,
                min_similarity: None,
                ef_search: ef,
                halfvec: false,
            };
            let t = Instant::now();
            let counts = store.insight_counts(&by, &filters, neighbours).await?;
            let (rows_out, n, _) = datastorage::api::insight::rank(counts.actions);
            let took = ms(t);
            anyhow::ensure!(!rows_out.is_empty(), "an insight query counted nothing");
            let t = Instant::now();
            store
                .search(q, &filters, &search_params(ef, &corpus.model_id))
                .await?;
            let search_took = ms(t);
            if round == 1 {
                insight_ms.push(took);
                search_ms.push(search_took);
                counted += n;
            }
        }
    }
    insight_ms.sort_by(f64::total_cmp);
    search_ms.sort_by(f64::total_cmp);
    let n = query_vectors.len() as i64;
    println!(
        "  insight over {neighbours} neighbours: p50 {:.2} ms, p95 {:.2} ms (search p95 {:.2} ms); {:.0} neighbours counted per query",
        super::percentile(&insight_ms, 0.5),
        super::percentile(&insight_ms, 0.95),
        super::percentile(&search_ms, 0.95),
        counted as f64 / n as f64
    );
    let params = json!({"rows": rows, "queries": n, "neighbours": neighbours, "ef_search": ef,
        "mean_neighbours_counted": counted as f64 / n as f64, "m": index.m, "ef_construction": index.ef_construction});
    for (p, name) in [(0.5, "p50"), (0.95, "p95")] {
        bench.record(
            &format!("insight_{name}"),
            super::percentile(&insight_ms, p),
            "ms",
            &format!("semantic_search_ef{ef}_{name}"),
            super::percentile(&search_ms, p),
            "ms",
            params.clone(),
        );
    }
    store.pool().close().await;
    Ok(())
}

fn search_params(ef_search: i32, model_id: &str) -> SearchParams {
    SearchParams {
        limit: K as i64,
        min_similarity: None,
        ef_search,
        exclude_id: None,
        halfvec: false,
        model_id: model_id.to_string(),
    }
}
