//! Leader election on a real Lease: two operator replicas, only the holder writes; when it dies the other takes
//! over and every audit ends up stored exactly once.

use std::time::{Duration, Instant};

use crate::support::kube::{EnvOptions, TestEnv, audit_yaml, dstore, dstore_condition, eventually};
use datastorage::operator::{LeaderElection, Running};

fn leader_of(replicas: &[&Running]) -> Vec<usize> {
    replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.context.metrics.leader.get() == 1)
        .map(|(i, _)| i)
        .collect()
}

/// Replica `id`'s election on the environment's Lease (4 s, so handovers are quick).
fn election(env: &TestEnv, id: &str) -> LeaderElection {
    LeaderElection {
        namespace: env.ns.clone(),
        lease_name: "datastorage-leader".into(),
        identity: id.into(),
        duration_seconds: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_writes_and_a_dead_leader_is_replaced() {
    let env = TestEnv::with(
        "leader",
        EnvOptions {
            start_operator: false,
            ..EnvOptions::default()
        },
    )
    .await;
    let election = |id: &str| election(&env, id);
    let a = env.start_replica(Some(election("replica-a"))).await;
    let b = env.start_replica(Some(election("replica-b"))).await;
    let first = eventually(Duration::from_secs(30), "one leader", || async {
        let leaders = leader_of(&[&a, &b]);
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await;

    for i in 0..5 {
        env.kubectl(
            &["apply", "-f", "-"],
            Some(&audit_yaml(
                &format!("before-{i}"),
                &format!("rr-leader-a{i}"),
                "",
            )),
        );
    }
    for i in 0..5 {
        env.wait_state(&format!("before-{i}"), "Persisted", Duration::from_secs(60))
            .await;
    }
    let (leader, follower) = if first == 0 { (a, b) } else { (b, a) };
    let writes = |r: &Running| {
        r.context
            .metrics
            .write_total
            .with_label_values(&["audits", "success"])
            .get()
    };
    assert_eq!(writes(&leader), 5);
    assert_eq!(writes(&follower), 0, "the follower must not write");
    assert_eq!(follower.context.metrics.leader.get(), 0);
    // The follower still serves: its store runtime is ready for queries.
    assert!(follower.context.current_runtime().is_some());

    // The leader dies; audits keep arriving.
    let died = Instant::now();
    leader.task.abort();
    for i in 0..5 {
        env.kubectl(
            &["apply", "-f", "-"],
            Some(&audit_yaml(
                &format!("after-{i}"),
                &format!("rr-leader-b{i}"),
                "",
            )),
        );
    }
    eventually(
        Duration::from_secs(60),
        "the follower to take the lease",
        || async { (follower.context.metrics.leader.get() == 1).then_some(()) },
    )
    .await;
    println!("handover took {:?} (lease duration 4s)", died.elapsed());
    for i in 0..5 {
        env.wait_state(&format!("after-{i}"), "Persisted", Duration::from_secs(60))
            .await;
    }

    let store = env.store().await;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT a.remediation_request_id, (SELECT count(*) FROM audit_history h WHERE h.audit_id = a.id)
         FROM audits a ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let expected: Vec<(String, i64)> = (0..5)
        .map(|i| (format!("rr-leader-a{i}"), 1))
        .chain((0..5).map(|i| (format!("rr-leader-b{i}"), 1)))
        .collect();
    assert_eq!(rows, expected, "every applied audit stored exactly once");
    follower.task.abort();
}

/// Two replicas that see the store differently (only one has the model) do not take turns writing the DataStorage's
/// status (issue 21, item 10: "two non-elected instances ping-pong the DataStorage status"): only the Lease holder
/// writes it. The follower reconciles every 5 s with EmbeddingReady=False; for 20 s the status keeps the leader's
/// EmbeddingReady=True and its resourceVersion does not move. When the leader dies the follower's view is written
/// (so the two views do differ). Fails with the leader check in `controller::datastorage::reconcile_inner` removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_sees_the_store_differently_never_writes_the_status() {
    let env = TestEnv::with(
        "pingpong",
        EnvOptions {
            start_operator: false,
            // No modelPath: each replica's --model-dir decides whether the model loads.
            spec_extra: "  embedding:\n    provider: Local\n".into(),
            ..EnvOptions::default()
        },
    )
    .await;
    let election = |id: &str| election(&env, id);
    let with_model = env.start_replica(Some(election("with-model"))).await;
    eventually(
        Duration::from_secs(60),
        "the replica with the model to lead",
        || async { (with_model.context.metrics.leader.get() == 1).then_some(()) },
    )
    .await;
    let ready = |want: &'static str| {
        let ns = env.ns.clone();
        move || {
            let ns = ns.clone();
            async move {
                let c = dstore_condition(&ns, "EmbeddingReady")?;
                (c["status"] == want).then_some(c)
            }
        }
    };
    eventually(
        Duration::from_secs(60),
        "EmbeddingReady=True",
        ready("True"),
    )
    .await;
    let without_model = env
        .start_replica_with(
            Some(election("without-model")),
            Some("/nonexistent/model".into()),
        )
        .await;
    // The follower publishes its own (degraded) runtime: its view differs from the status.
    eventually(
        Duration::from_secs(30),
        "the follower's runtime",
        || async { without_model.context.current_runtime().map(|_| ()) },
    )
    .await;
    let version = |ns: &str| dstore(ns).map(|d| d["metadata"]["resourceVersion"].clone());
    let before = version(&env.ns);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(without_model.context.metrics.leader.get(), 0);
    let c = dstore_condition(&env.ns, "EmbeddingReady").unwrap();
    assert_eq!(c["status"], "True", "the follower wrote its view: {c}");
    assert_eq!(
        version(&env.ns),
        before,
        "the DataStorage changed while nothing happened"
    );

    with_model.task.abort();
    eventually(Duration::from_secs(60), "the follower to lead", || async {
        (without_model.context.metrics.leader.get() == 1).then_some(())
    })
    .await;
    let c = eventually(
        Duration::from_secs(60),
        "EmbeddingReady=False",
        ready("False"),
    )
    .await;
    assert!(
        c["message"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/model"),
        "{c}"
    );
    without_model.task.abort();
}

/// Issue 22, "two writers": leader election off on two replicas, so both write (a misconfiguration the chart
/// prevents, and what a split brain would look like). `TWO_WRITERS_AUDITS` (default 400) audits, one in ten edited
/// once, created with 32 requests in flight: every audit and every generation is stored exactly once and every
/// chain verifies (`verify_exactly_once`, the fault suite's check), both replicas did write, and the DataStorage's
/// status stays put for 10 s afterwards (no ping-pong).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_without_leader_election_store_each_audit_exactly_once() {
    use crate::support::faults::{
        StreamProgress, count_from_env, stream_audits, verify_exactly_once, wait_all_persisted,
    };
    let env = TestEnv::with(
        "twowriters",
        EnvOptions {
            start_operator: false,
            ..EnvOptions::default()
        },
    )
    .await;
    let a = env.start_replica(None).await;
    let b = env.start_replica(None).await;
    let n = count_from_env("TWO_WRITERS_AUDITS", 400);
    let started = Instant::now();
    let progress = std::sync::Arc::new(StreamProgress::default());
    stream_audits(env.client.clone(), env.ns.clone(), 0..n, 32, progress).await;
    wait_all_persisted(&env.client, &env.ns, n, Duration::from_secs(300)).await;
    let store = env.store().await;
    let verified = verify_exactly_once(&env.client, &store, &env.ns, n).await;
    let writes = |r: &Running| {
        let m = &r.context.metrics;
        (
            m.write_total
                .with_label_values(&["audits", "success"])
                .get(),
            m.write_total
                .with_label_values(&["audits", "failure"])
                .get(),
        )
    };
    let (wa, wb) = (writes(&a), writes(&b));
    println!(
        "two writers: {n} audits in {:.1}s, {verified:?}; writes (success, failure) a {wa:?}, b {wb:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        wa.0 > 0 && wb.0 > 0,
        "both replicas wrote: a {wa:?}, b {wb:?}"
    );
    // Two writers with the same view do not take turns on the DataStorage's status either.
    let version = || dstore(&env.ns).map(|d| d["metadata"]["resourceVersion"].clone());
    let before = version();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        version(),
        before,
        "the DataStorage changed while nothing happened"
    );
    a.task.abort();
    b.task.abort();
}
