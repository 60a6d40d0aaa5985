//! The store on the real PostgreSQL 18 + pgvector: migrations, the write transaction, the hash chain,
//! immutability, duplicates, deletion, and nearest-neighbour search through the HNSW index.

use crate::support::TestDb;
use chrono::{DateTime, Utc};
use datastorage::audit::{AuditMeta, Prepared, SanitizeConfig, prepare};
use datastorage::crd::{AuditOutcome, AuditPhase, RemediationAuditSpec};
use datastorage::store::{AuditWrite, EmbeddingRow, WriteOutcome};
use sqlx::Row;

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn spec(request_id: &str) -> RemediationAuditSpec {
    RemediationAuditSpec {
        remediation_request_id: request_id.into(),
        alert_fingerprint: "fp-1".into(),
        alert_name: Some("KubePodOOMKilled".into()),
        phase: AuditPhase::Completed,
        outcome: AuditOutcome::Success,
        action_type: "restart-pod".into(),
        severity: "critical".into(),
        environment: "production".into(),
        cluster_name: "prod-eu-1".into(),
        target_resource: "apps/v1/Deployment/payments/api".into(),
        start_time: "2026-03-01T11:58:00Z".into(),
        end_time: Some("2026-03-01T11:58:30Z".into()),
        error_message: Some("container api exceeded its memory limit".into()),
        details: None,
    }
}

fn prepared(uid: &str, generation: i64, spec: &RemediationAuditSpec) -> Prepared {
    let meta = AuditMeta {
        uid: uid.into(),
        namespace: "payments".into(),
        name: "oom-1".into(),
        generation,
    };
    prepare(&meta, spec, SanitizeConfig::default(), now()).unwrap()
}

fn unit_vector(seed: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..384)
        .map(|i| (((i * 31 + seed * 17) % 97) as f32) - 48.0)
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

#[tokio::test]
async fn migrations_run_twice_as_a_no_op() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let count = |store: datastorage::store::Store| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    let v1 = store.schema_version().await.unwrap();
    let n1 = count(store.clone()).await;
    let v2 = store.migrate().await.unwrap();
    let n2 = count(store.clone()).await;
    assert_eq!((v1, n1), (v2, n2));
    assert!(v1 >= 1);
    // The tables live in the configured schema.
    let schema: String = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'audits'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(schema, "datastorage");
}

#[tokio::test]
async fn write_replay_new_generation_and_chain() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let uid = uuid::Uuid::new_v4().to_string();
    let s1 = spec("rr-1");
    let p1 = prepared(&uid, 1, &s1);
    let first = store
        .write_audit(&AuditWrite {
            prepared: &p1,
            embedding: None,
        })
        .await
        .unwrap();
    let WriteOutcome::Stored(a1) = first else {
        panic!("{first:?}")
    };
    assert_eq!(
        a1.chain_hash,
        datastorage::audit::record::chain_hash("", &p1.content_hash)
    );

    // Replaying the same generation changes nothing.
    let replay = store
        .write_audit(&AuditWrite {
            prepared: &p1,
            embedding: None,
        })
        .await
        .unwrap();
    assert_eq!(replay, WriteOutcome::Unchanged(a1.clone()));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_history")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1);

    // A new generation appends history and links to the previous chain hash.
    let mut s2 = s1.clone();
    s2.outcome = AuditOutcome::Failure;
    let p2 = prepared(&uid, 2, &s2);
    let WriteOutcome::Stored(a2) = store
        .write_audit(&AuditWrite {
            prepared: &p2,
            embedding: None,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(a2.audit_id, a1.audit_id);
    assert_eq!(
        a2.chain_hash,
        datastorage::audit::record::chain_hash(&a1.chain_hash, &p2.content_hash)
    );
    // An older generation arriving late is stale: no change.
    assert!(matches!(
        store
            .write_audit(&AuditWrite {
                prepared: &p1,
                embedding: None
            })
            .await
            .unwrap(),
        WriteOutcome::Unchanged(_)
    ));

    let history = store.history(a1.audit_id).await.unwrap();
    assert_eq!(
        history.iter().map(|h| h.generation).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(
        store
            .verify_chain(a1.audit_id)
            .await
            .unwrap()
            .iter()
            .all(|c| c.ok)
    );
    assert!(
        store
            .verify_chain_sql(a1.audit_id)
            .await
            .unwrap()
            .iter()
            .all(|c| c.ok)
    );
    let current: String = sqlx::query_scalar("SELECT outcome FROM audits WHERE id = $1")
        .bind(a1.audit_id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(current, "Failure");
}

#[tokio::test]
async fn history_is_immutable_and_tampering_is_detected() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let uid = uuid::Uuid::new_v4().to_string();
    let p = prepared(&uid, 1, &spec("rr-imm"));
    let WriteOutcome::Stored(a) = store
        .write_audit(&AuditWrite {
            prepared: &p,
            embedding: None,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    let upd = sqlx::query("UPDATE audit_history SET record = '{}'")
        .execute(store.pool())
        .await;
    assert!(upd.unwrap_err().to_string().contains("immutable"));
    let del = sqlx::query("DELETE FROM audit_history")
        .execute(store.pool())
        .await;
    assert!(del.unwrap_err().to_string().contains("immutable"));
    let trunc = sqlx::query("TRUNCATE audit_history")
        .execute(store.pool())
        .await;
    assert!(trunc.unwrap_err().to_string().contains("immutable"));
    let del_audit = sqlx::query("DELETE FROM audits")
        .execute(store.pool())
        .await;
    assert!(del_audit.unwrap_err().to_string().contains("never deleted"));

    // A superuser can still bypass triggers; verification catches what they changed.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_history SET record = replace(record, 'Success', 'Failure') WHERE audit_id = $1")
        .bind(a.audit_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let sql = store.verify_chain_sql(a.audit_id).await.unwrap();
    assert!(!sql[0].ok, "{sql:?}");
    assert_eq!(
        sql[0].problem.as_deref(),
        Some("record does not match content_hash")
    );
    let rust = store.verify_chain(a.audit_id).await.unwrap();
    assert_eq!(rust, sql);
}

#[tokio::test]
async fn duplicate_request_id_from_another_object_is_rejected() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let p1 = prepared(&uuid::Uuid::new_v4().to_string(), 1, &spec("rr-dup"));
    assert!(matches!(
        store
            .write_audit(&AuditWrite {
                prepared: &p1,
                embedding: None
            })
            .await
            .unwrap(),
        WriteOutcome::Stored(_)
    ));
    let p2 = prepared(&uuid::Uuid::new_v4().to_string(), 1, &spec("rr-dup"));
    let out = store
        .write_audit(&AuditWrite {
            prepared: &p2,
            embedding: None,
        })
        .await
        .unwrap();
    assert_eq!(
        out,
        WriteOutcome::Duplicate {
            namespace: "payments".into(),
            name: "oom-1".into()
        }
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audits")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn deletion_keeps_the_audit() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let uid = uuid::Uuid::new_v4().to_string();
    let p = prepared(&uid, 1, &spec("rr-del"));
    store
        .write_audit(&AuditWrite {
            prepared: &p,
            embedding: None,
        })
        .await
        .unwrap();
    assert!(store.mark_deleted(&uid).await.unwrap());
    let row = sqlx::query("SELECT deleted_at IS NOT NULL AS deleted, (SELECT count(*) FROM audit_history) AS h FROM audits")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(row.get::<bool, _>("deleted"));
    assert_eq!(row.get::<i64, _>("h"), 1);
    // Unknown uids are not an error.
    assert!(
        !store
            .mark_deleted(&uuid::Uuid::new_v4().to_string())
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn nearest_neighbour_through_the_hnsw_index() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let p = prepared(
            &uuid::Uuid::new_v4().to_string(),
            1,
            &spec(&format!("rr-vec-{i}")),
        );
        let out = store
            .write_audit(&AuditWrite {
                prepared: &p,
                embedding: Some(EmbeddingRow {
                    model_id: "test:384".into(),
                    vector: unit_vector(i),
                }),
            })
            .await
            .unwrap();
        let WriteOutcome::Stored(a) = out else {
            panic!()
        };
        assert!(a.embedding_stored);
        ids.push(a.audit_id);
    }
    let query = pgvector::Vector::from(unit_vector(17));
    let mut tx = store.pool().begin().await.unwrap();
    // Make the planner prefer the index on this small table, inside this transaction only.
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT audit_id FROM audit_embeddings ORDER BY embedding <=> $1 LIMIT 5",
    )
    .bind(&query)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert!(
        plan.iter().any(|l| l.contains("audit_embeddings_hnsw_idx")),
        "{plan:#?}"
    );
    let nearest: i64 = sqlx::query_scalar(
        "SELECT audit_id FROM audit_embeddings ORDER BY embedding <=> $1 LIMIT 1",
    )
    .bind(&query)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(nearest, ids[17]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_parameter_change_rebuilds_while_writes_continue() {
    use datastorage::store::index::IndexParams;
    let db = TestDb::new().await;
    let store = db.store().await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                let p = prepared(
                    &uuid::Uuid::new_v4().to_string(),
                    1,
                    &spec(&format!("rr-rebuild-{i}")),
                );
                let row = EmbeddingRow {
                    model_id: "test:384".into(),
                    vector: unit_vector(i),
                };
                let out = store
                    .write_audit(&AuditWrite {
                        prepared: &p,
                        embedding: Some(row),
                    })
                    .await
                    .unwrap();
                assert!(matches!(out, WriteOutcome::Stored(_)));
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let params = IndexParams {
        m: 24,
        ef_construction: 80,
        halfvec: false,
    };
    assert!(!params.matches(&store.index_definition().await.unwrap().unwrap()));
    store.rebuild_index(params).await.unwrap();
    writer.await.unwrap();
    let def = store.index_definition().await.unwrap().unwrap();
    assert!(params.matches(&def), "{def}");
    let (rows, vectors): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audits), (SELECT count(*) FROM audit_embeddings)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        (rows, vectors),
        (300, 300),
        "nothing lost during the rebuild"
    );
    // Exactly one HNSW index remains and it is valid.
    let valid: Vec<bool> = sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname LIKE 'audit_embeddings_hnsw%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(valid, vec![true]);

    // halfvec: the expression index is built and used by the halfvec search.
    let half = IndexParams {
        m: 16,
        ef_construction: 64,
        halfvec: true,
    };
    store.rebuild_index(half).await.unwrap();
    assert!(half.matches(&store.index_definition().await.unwrap().unwrap()));
    let hits = store
        .search(
            &unit_vector(7),
            &datastorage::store::search::AuditFilters::default(),
            &datastorage::store::search::SearchParams {
                limit: 1,
                min_similarity: None,
                ef_search: 40,
                exclude_id: None,
                halfvec: true,
                model_id: "test:384".into(),
            },
        )
        .await
        .unwrap();
    assert!(hits[0].similarity > 0.999, "{hits:?}");
}

/// While a model switch is being backfilled the table holds two models' vectors; a query vector is compared only
/// with its own model's (the same vectors under another model id never come back), and "similar to" reports the
/// model of the audit's vector.
#[tokio::test]
async fn search_compares_a_query_only_with_vectors_of_its_own_model() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let mut by_model: std::collections::BTreeMap<&str, Vec<i64>> = Default::default();
    for (i, model) in ["old:384", "new:384"].iter().cycle().take(40).enumerate() {
        let p = prepared(
            &uuid::Uuid::new_v4().to_string(),
            1,
            &spec(&format!("rr-model-{i}")),
        );
        let out = store
            .write_audit(&AuditWrite {
                prepared: &p,
                embedding: Some(EmbeddingRow {
                    model_id: (*model).into(),
                    // The same 20 vectors under each model: only the model id tells them apart.
                    vector: unit_vector(i / 2),
                }),
            })
            .await
            .unwrap();
        let WriteOutcome::Stored(a) = out else {
            panic!("{out:?}")
        };
        by_model.entry(model).or_default().push(a.audit_id);
    }
    for model in ["old:384", "new:384"] {
        let hits = store
            .search(
                &unit_vector(7),
                &datastorage::store::search::AuditFilters::default(),
                &datastorage::store::search::SearchParams {
                    limit: 30,
                    min_similarity: None,
                    ef_search: 100,
                    exclude_id: None,
                    halfvec: false,
                    model_id: model.into(),
                },
            )
            .await
            .unwrap();
        assert_eq!(
            hits.len(),
            20,
            "{model}: every vector of the model, none of the other: {hits:?}"
        );
        assert!(
            hits.iter().all(|h| by_model[model].contains(&h.id)),
            "{model}: {hits:?}"
        );
        assert!(hits[0].similarity > 0.999, "{hits:?}");
    }
    let none = store
        .search(
            &unit_vector(7),
            &datastorage::store::search::AuditFilters::default(),
            &datastorage::store::search::SearchParams {
                limit: 10,
                min_similarity: None,
                ef_search: 40,
                exclude_id: None,
                halfvec: false,
                model_id: "unknown:384".into(),
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    let (v, model) = store
        .embedding_of(by_model["new:384"][3])
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.len(), model.as_str()), (384, "new:384"));
}

#[tokio::test]
async fn retention_drops_an_old_partition_but_keeps_legal_hold_rows() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let recent = prepared(&uuid::Uuid::new_v4().to_string(), 1, &spec("rr-recent"));
    store
        .write_audit(&AuditWrite {
            prepared: &recent,
            embedding: None,
        })
        .await
        .unwrap();
    sqlx::query("CREATE TABLE audit_history_2019_01 PARTITION OF audit_history FOR VALUES FROM ('2019-01-01') TO ('2019-02-01')")
        .execute(store.pool())
        .await
        .unwrap();
    // Two audits recorded in January 2019: one in a legal-hold namespace.
    for (audit_id, ns) in [(9001_i64, "held"), (9002, "other")] {
        let record = format!(r#"{{"namespace":"{ns}"}}"#);
        let content = datastorage::audit::record::sha256_hex(record.as_bytes());
        let chain = datastorage::audit::record::chain_hash("", &content);
        sqlx::query(
            "INSERT INTO audit_history (audit_id, cr_uid, namespace, generation, record, content_hash, prev_chain_hash,
                 chain_hash, recorded_at)
             VALUES ($1, $2, $3, 1, $4, $5, '', $6, '2019-01-15T00:00:00Z')",
        )
        .bind(audit_id)
        .bind(uuid::Uuid::new_v4())
        .bind(ns)
        .bind(&record)
        .bind(&content)
        .bind(&chain)
        .execute(store.pool())
        .await
        .unwrap();
    }
    let dropped = store
        .apply_retention(365, &["held".to_string()])
        .await
        .unwrap();
    assert_eq!(dropped, vec![("audit_history_2019_01".to_string(), 1)]);
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_history")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        live, 1,
        "only the recent audit's history stays in the partitions"
    );
    let held = store.history(9001).await.unwrap();
    assert_eq!(held.len(), 1, "legal-hold rows survive retention");
    assert!(
        store
            .verify_chain_sql(9001)
            .await
            .unwrap()
            .iter()
            .all(|c| c.ok)
    );
    assert!(store.history(9002).await.unwrap().is_empty());
    // Current partitions are never dropped; a second run is a no-op.
    assert!(store.apply_retention(365, &[]).await.unwrap().is_empty());
    let del = sqlx::query("DELETE FROM audit_history_legal_hold")
        .execute(store.pool())
        .await;
    assert!(del.unwrap_err().to_string().contains("immutable"));
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Group commit: a batch mixing new audits (with and without vectors), a newer generation, a replay, duplicates
/// (against a stored audit and inside the batch) and an invalid uid gives each write the outcome the one-audit
/// path gives it, and every stored chain verifies.
#[tokio::test]
async fn batch_write_gives_each_audit_its_own_outcome() {
    let db = TestDb::new().await;
    let store = db.store().await;
    // Already stored: one audit at generation 1 (to be updated and replayed) and one holding rr-taken.
    let (u_old, u_taken) = (uid(), uid());
    let old_g1 = prepared(&u_old, 1, &spec("rr-old"));
    let taken = prepared(&u_taken, 1, &spec("rr-taken"));
    for p in [&old_g1, &taken] {
        store
            .write_audit(&AuditWrite {
                prepared: p,
                embedding: None,
            })
            .await
            .unwrap();
    }

    let new_plain: Vec<Prepared> = (0..20)
        .map(|i| prepared(&uid(), 1, &spec(&format!("rr-new-{i}"))))
        .collect();
    let new_vec = prepared(&uid(), 1, &spec("rr-new-vec"));
    let mut g2_spec = spec("rr-old");
    g2_spec.outcome = AuditOutcome::Failure;
    let old_g2 = prepared(&u_old, 2, &g2_spec);
    let replay = prepared(&u_taken, 1, &spec("rr-taken"));
    let dup_stored = prepared(&uid(), 1, &spec("rr-taken"));
    let dup_a = prepared(&uid(), 1, &spec("rr-twice"));
    let dup_b = prepared(&uid(), 1, &spec("rr-twice"));
    let mut bad_uid = prepared(&uid(), 1, &spec("rr-bad-uid"));
    bad_uid.record.uid = "not-a-uuid".into();

    let mut writes: Vec<AuditWrite<'_>> = new_plain
        .iter()
        .map(|p| AuditWrite {
            prepared: p,
            embedding: None,
        })
        .collect();
    let vector = EmbeddingRow {
        model_id: "test-model".into(),
        vector: unit_vector(3),
    };
    for (p, e) in [
        (&new_vec, Some(vector.clone())),
        (&old_g2, None),
        (&replay, None),
        (&dup_stored, None),
        (&dup_a, None),
        (&dup_b, None),
        (&bad_uid, None),
    ] {
        writes.push(AuditWrite {
            prepared: p,
            embedding: e,
        });
    }
    let results = store.write_audits(&writes).await;
    assert_eq!(results.len(), writes.len());

    let mut ids = Vec::new();
    for r in &results[..20] {
        match r {
            Ok(WriteOutcome::Stored(s)) => {
                assert_eq!(s.generation, 1);
                assert!(!s.embedding_stored);
                ids.push(s.audit_id);
            }
            other => panic!("new audit not stored: {other:?}"),
        }
    }
    match &results[20] {
        Ok(WriteOutcome::Stored(s)) => {
            assert!(s.embedding_stored);
            assert_eq!(
                store
                    .embedding_of(s.audit_id)
                    .await
                    .unwrap()
                    .unwrap()
                    .0
                    .len(),
                384
            );
            ids.push(s.audit_id);
        }
        other => panic!("new audit with vector: {other:?}"),
    }
    match &results[21] {
        Ok(WriteOutcome::Stored(s)) => {
            assert_eq!(s.generation, 2);
            ids.push(s.audit_id);
        }
        other => panic!("newer generation: {other:?}"),
    }
    assert!(
        matches!(&results[22], Ok(WriteOutcome::Unchanged(_))),
        "{:?}",
        results[22]
    );
    assert!(
        matches!(&results[23], Ok(WriteOutcome::Duplicate { .. })),
        "{:?}",
        results[23]
    );
    // Exactly one of the two in-batch twins is stored, the other is its duplicate.
    let twins = [&results[24], &results[25]];
    assert_eq!(
        twins
            .iter()
            .filter(|r| matches!(r, Ok(WriteOutcome::Stored(_))))
            .count(),
        1,
        "{twins:?}"
    );
    assert_eq!(
        twins
            .iter()
            .filter(|r| matches!(r, Ok(WriteOutcome::Duplicate { .. })))
            .count(),
        1,
        "{twins:?}"
    );
    assert!(
        matches!(&results[26], Err(e) if e.kind() == "invalid"),
        "{:?}",
        results[26]
    );

    // 2 before + 20 + 1 + 1 twin; one history row per stored generation; every chain verifies, in Rust and SQL.
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM audits")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(audits, 24);
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_history")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(history, 25);
    for id in ids {
        assert!(store.verify_chain(id).await.unwrap().iter().all(|c| c.ok));
        assert!(
            store
                .verify_chain_sql(id)
                .await
                .unwrap()
                .iter()
                .all(|c| c.ok)
        );
    }
    // Same outcome as the one-audit path: writing a batch audit again alone is a replay.
    let again = store
        .write_audit(&AuditWrite {
            prepared: &new_plain[0],
            embedding: None,
        })
        .await
        .unwrap();
    assert!(matches!(again, WriteOutcome::Unchanged(_)));
}

/// Concurrent writers through the group-commit batcher: every audit stored exactly once, in shared batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batcher_stores_concurrent_writes_exactly_once() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let batcher = datastorage::store::batch::WriteBatcher::spawn(
        store.clone(),
        2,
        64,
        std::time::Duration::from_secs(60),
    );
    let mut tasks = Vec::new();
    for i in 0..300 {
        let batcher = batcher.clone();
        tasks.push(tokio::spawn(async move {
            let p = std::sync::Arc::new(prepared(&uid(), 1, &spec(&format!("rr-c-{i}"))));
            batcher.write(p, None).await
        }));
    }
    let mut stored = 0;
    for t in tasks {
        if let Ok(WriteOutcome::Stored(_)) = t.await.unwrap() {
            stored += 1;
        }
    }
    assert_eq!(stored, 300);
    // Writes that arrive together share transactions.
    assert!(
        batcher.batches_written() < 300,
        "{} batches for 300 concurrent writes",
        batcher.batches_written()
    );
    let (rows, distinct, history): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audits), (SELECT count(DISTINCT remediation_request_id) FROM audits),
                (SELECT count(*) FROM audit_history)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((rows, distinct, history), (300, 300, 300));
    let broken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audits a, LATERAL verify_audit_chain(a.id) v WHERE NOT v.ok",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(broken, 0);
}

/// A batch that cannot reach the database fails every audit with a connection error (none is reported stored).
#[tokio::test]
async fn batch_against_an_unreachable_database_fails_every_audit() {
    let mut config =
        datastorage::store::StoreConfig::new("postgres://nobody@127.0.0.1:1/none", "datastorage")
            .unwrap();
    config.acquire_timeout = std::time::Duration::from_secs(2);
    let store = datastorage::store::Store::connect_lazy(&config).unwrap();
    let ps: Vec<Prepared> = (0..5)
        .map(|i| prepared(&uid(), 1, &spec(&format!("rr-u-{i}"))))
        .collect();
    let writes: Vec<AuditWrite<'_>> = ps
        .iter()
        .map(|p| AuditWrite {
            prepared: p,
            embedding: None,
        })
        .collect();
    let results = store.write_audits(&writes).await;
    assert_eq!(results.len(), 5);
    for r in results {
        match r {
            Err(e) => assert!(
                ["connection", "pool_timeout"].contains(&e.kind()),
                "unexpected error kind {}: {e}",
                e.kind()
            ),
            Ok(o) => panic!("stored without a database: {o:?}"),
        }
    }
}
