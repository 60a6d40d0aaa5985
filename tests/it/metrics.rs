//! Every metric the spec names, scraped from a real `/metrics` after a workload with valid, invalid and failing
//! writes, an embedding provider that fails, and query API calls: present, with the expected labels, non-zero
//! where the workload moved it, and pre-initialised at 0 where it did not; plus build info and process metrics.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::kube::{
    EnvOptions, TestEnv, audit_yaml, dstore_condition, eventually, kubectl_raw, patch_dstore,
};

/// `name{labels} value` lines of a scrape, keyed by the whole series text.
fn parse(scrape: &str) -> HashMap<String, f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of `name` whose labels contain all of `labels`.
fn total(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> Option<f64> {
    let matching: Vec<f64> = m
        .iter()
        .filter(|(k, _)| {
            let base = k.split('{').next().unwrap_or("");
            base == name && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_named_metrics_move_with_the_workload() {
    let pg = crate::support::Service::postgres();
    let url = pg.url.clone();
    let env = TestEnv::with(
        "metrics",
        EnvOptions {
            url: Some(url),
            ..EnvOptions::default()
        },
    )
    .await;
    let wait = Duration::from_secs(60);

    // Valid audits (the second has the same embedding text: a cache hit), and an invalid one.
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("ok-1", "rr-m-1", "")),
    );
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("ok-2", "rr-m-2", "")),
    );
    let bad = audit_yaml("bad-1", "rr-m-3", "")
        .replace(
            "startTime: \"2026-01-10T10:00:00Z\"",
            // In the future: a rule only the operator checks (the API server refuses a blank severity itself).
            "startTime: \"2099-01-10T10:00:00Z\"",
        )
        .replace(
            "endTime: \"2026-01-10T10:00:42Z\"",
            "endTime: \"2099-01-10T10:00:42Z\"",
        );
    env.kubectl(&["apply", "-f", "-"], Some(&bad));
    env.wait_state("ok-1", "Persisted", wait).await;
    env.wait_state("ok-2", "Persisted", wait).await;
    env.wait_state("bad-1", "Rejected", wait).await;

    // Query API: one authorized list, one without a token.
    let (token, binding) = env.cluster_admin_token("metrics-reader");
    let http = reqwest::Client::new();
    let list = format!("{}/api/v1/audits?namespace={}", env.api_url(), env.ns);
    let ok = http.get(&list).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(http.get(&list).send().await.unwrap().status(), 401);

    // The embedding provider breaks: the next audit is stored without its vector (fallback, dual-write failure).
    patch_dstore(
        &env.ns,
        r#"{"spec":{"embedding":{"provider":"OpenAI","endpoint":"http://127.0.0.1:9","model":"gone","timeout":"300ms"}}}"#,
    );
    eventually(wait, "EmbeddingReady=False", || async {
        (dstore_condition(&env.ns, "EmbeddingReady")?["status"] == "False").then_some(())
    })
    .await;
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml(
            "fallback-1",
            "rr-m-4",
            "  errorMessage: different text\n",
        )),
    );
    let obj = env.wait_state("fallback-1", "Persisted", wait).await;
    assert_eq!(obj["status"]["embedding"], "Pending");

    // PostgreSQL goes away: a write fails and is counted.
    pg.run("stop");
    env.kubectl(
        &["apply", "-f", "-"],
        Some(&audit_yaml("during-outage", "rr-m-5", "")),
    );
    env.wait_state("during-outage", "Retrying", wait).await;

    let addr = env.operator.as_ref().unwrap().ops_addr;
    let scrape = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let m = parse(&scrape);
    let expect = |name: &str, labels: &[&str]| -> f64 {
        total(&m, name, labels)
            .unwrap_or_else(|| panic!("{name} with {labels:?} missing from /metrics:\n{scrape}"))
    };
    assert!(
        expect(
            "datastorage_write_total",
            &[r#"table="audits""#, r#"status="success""#]
        ) >= 3.0
    );
    assert!(
        expect(
            "datastorage_write_total",
            &[r#"table="audits""#, r#"status="failure""#]
        ) >= 1.0
    );
    assert!(
        expect(
            "datastorage_write_total",
            &[r#"table="audit_history""#, r#"status="success""#]
        ) >= 3.0
    );
    assert!(
        expect(
            "datastorage_write_duration_seconds_count",
            &[r#"table="audits""#]
        ) >= 4.0
    );
    assert!(expect("datastorage_dualwrite_success_total", &[]) >= 2.0);
    // A row-only write counts as a fallback (the provider failed: connection refused) or, when its retries
    // outlast the write's budget, as a dual-write timeout (src/metrics.rs: one counter per cause).
    let row_only = expect("datastorage_fallback_mode_total", &[])
        + expect(
            "datastorage_dualwrite_failure_total",
            &[r#"reason="timeout""#],
        );
    assert!(row_only >= 1.0, "{scrape}");
    assert!(expect("datastorage_cache_hits_total", &[]) >= 1.0);
    assert!(expect("datastorage_cache_misses_total", &[]) >= 1.0);
    assert!(
        expect(
            "datastorage_embedding_generation_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(
        expect(
            "datastorage_validation_failures_total",
            &[r#"field="startTime""#, r#"reason="future_time""#]
        ) >= 1.0
    );
    assert!(
        expect(
            "datastorage_query_total",
            &[r#"operation="list""#, r#"status="success""#]
        ) >= 1.0
    );
    assert!(
        expect(
            "datastorage_query_total",
            &[r#"operation="list""#, r#"status="unauthorized""#]
        ) >= 1.0
    );
    assert!(
        expect(
            "datastorage_query_duration_seconds_count",
            &[r#"operation="list""#]
        ) >= 1.0
    );
    // And the operational extras.
    assert!(
        expect(
            "datastorage_reconcile_total",
            &[r#"controller="remediationaudit""#]
        ) >= 1.0
    );
    assert_eq!(expect("datastorage_leader", &[]), 1.0);
    assert_eq!(expect("datastorage_audits_rejected_total", &[]), 1.0);
    assert_eq!(expect("datastorage_db_pool_max_connections", &[]), 5.0);
    assert!(!scrape.contains(r#"state="max""#), "{scrape}");
    assert_eq!(
        expect(
            "datastorage_build_info",
            &[&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(expect("process_resident_memory_bytes", &[]) > 0.0);
    assert!(expect("process_cpu_seconds_total", &[]) >= 0.0);
    // Label values of closed sets are there before their first event.
    assert_eq!(
        expect(
            "datastorage_query_total",
            &[r#"operation="search""#, r#"status="server_error""#]
        ),
        0.0
    );
    assert_eq!(
        expect(
            "datastorage_redactions_total",
            &[r#"kind="pem_private_key""#]
        ),
        0.0
    );

    let _ = kubectl_raw(&["delete", "clusterrolebinding", &binding], None);
    drop(env);
}
