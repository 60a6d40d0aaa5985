//! Leader election on a real Lease: two operator replicas, only the holder writes; when it dies the other takes
//! over and every audit ends up stored exactly once.

use std::time::{Duration, Instant};

use crate::support::kube::{EnvOptions, TestEnv, audit_yaml, eventually};
use datastorage::operator::{LeaderElection, Running};

fn leader_of(replicas: &[&Running]) -> Vec<usize> {
    replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.context.metrics.leader.get() == 1)
        .map(|(i, _)| i)
        .collect()
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
    let election = |id: &str| LeaderElection {
        namespace: env.ns.clone(),
        lease_name: "datastorage-leader".into(),
        identity: id.into(),
        duration_seconds: 4,
    };
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
