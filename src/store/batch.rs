//! Group commit: many new audits in one transaction.
//!
//! Each audit still gets exactly what [`Store::write_audit`] gives it (current row, first history entry with its
//! chain hash, the vector when it came with one), but new audits arriving together share one transaction and a
//! handful of array-bound statements (`INSERT … SELECT FROM UNNEST(…)`) instead of 3–4 round trips each. Anything
//! that is not a plain new audit (a newer generation of a stored audit, a replay, a duplicate
//! `remediationRequestId`) is recognised by `ON CONFLICT DO NOTHING` and handed to the one-audit path, which owns
//! those rules. When a batch fails for a reason other than the connection, every audit is retried alone so one
//! bad row cannot fail its neighbours.
//!
//! [`WriteBatcher`] feeds it from concurrent callers (the reconciles): a caller sends its audit and awaits the
//! reply; a writer task takes everything that is waiting (up to `max_batch`) and writes it as one batch. No timer:
//! batches form while the previous one is being written, so a lone audit is written at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use pgvector::Vector;
use sqlx::Row;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{AuditWrite, EmbeddingRow, Store, StoreError, StoredAudit, WriteOutcome, check_dims};
use crate::audit::{Prepared, record};

impl Store {
    /// Writes many audit generations; the result of each, in order. New audits share one transaction; the others
    /// take the one-audit path ([`Store::write_audit`]).
    pub async fn write_audits(
        &self,
        writes: &[AuditWrite<'_>],
    ) -> Vec<Result<WriteOutcome, StoreError>> {
        let mut results: Vec<Option<Result<WriteOutcome, StoreError>>> =
            writes.iter().map(|_| None).collect();
        // Rows the batch can take: a valid uid (unique within the batch) and a vector of the right size.
        let mut batch: Vec<(usize, Uuid)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, w) in writes.iter().enumerate() {
            match Uuid::parse_str(&w.prepared.record.uid) {
                Err(_) => {
                    results[i] = Some(Err(StoreError::InvalidUid(w.prepared.record.uid.clone())))
                }
                Ok(uid) => match w.embedding.as_ref().map(check_dims) {
                    Some(Err(e)) => results[i] = Some(Err(e)),
                    _ if seen.insert(uid) => batch.push((i, uid)),
                    _ => {} // the same object twice: the later one takes the one-audit path
                },
            }
        }
        if batch.len() > 1 {
            match self.insert_new(writes, &batch).await {
                Ok(stored) => {
                    for (i, s) in stored {
                        results[i] = Some(Ok(WriteOutcome::Stored(s)));
                    }
                }
                Err(e) if is_connection_error(&e) => {
                    for &(i, _) in &batch {
                        results[i] = Some(Err(same_connection_error(&e)));
                    }
                }
                // Anything else: each audit alone below, so the row at fault fails by itself.
                Err(_) => {}
            }
        }
        let mut out = Vec::with_capacity(writes.len());
        for (i, w) in writes.iter().enumerate() {
            out.push(match results[i].take() {
                Some(r) => r,
                None => self.write_audit(w).await,
            });
        }
        out
    }

    /// One transaction: inserts the audits that do not exist yet (by uid and by remediationRequestId), their
    /// first history entries and their vectors. Returns the stored ones by index; the rest were left alone.
    async fn insert_new(
        &self,
        writes: &[AuditWrite<'_>],
        batch: &[(usize, Uuid)],
    ) -> Result<Vec<(usize, StoredAudit)>, StoreError> {
        let rows: Vec<(usize, Uuid, &Prepared, String)> = batch
            .iter()
            .map(|&(i, uid)| {
                let p = writes[i].prepared;
                (i, uid, p, record::sha256_hex(p.embedding_text.as_bytes()))
            })
            .collect();
        // A first generation chains from "": chain_hash = sha256("" || content_hash).
        let chains: Vec<String> = rows
            .iter()
            .map(|(_, _, p, _)| record::chain_hash("", &p.content_hash))
            .collect();
        let col = |f: fn(&Prepared) -> String| rows.iter().map(|r| f(r.2)).collect::<Vec<_>>();

        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO audits (cr_uid, namespace, name, remediation_request_id, alert_fingerprint, alert_name,
                phase, outcome, action_type, severity, environment, cluster_name, target_resource, start_time,
                end_time, duration_ms, error_message, details, generation, content_hash, chain_hash,
                embedding_text, embedding_text_sha)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                $14::timestamptz[], $15::timestamptz[], $16::bigint[], $17::text[], $18::jsonb[], $19::bigint[],
                $20::text[], $21::text[], $22::text[], $23::text[])
             ON CONFLICT DO NOTHING
             RETURNING id, cr_uid, updated_at",
        )
        .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(col(|p| p.record.namespace.clone()))
        .bind(col(|p| p.record.name.clone()))
        .bind(col(|p| p.record.remediation_request_id.clone()))
        .bind(col(|p| p.record.alert_fingerprint.clone()))
        .bind(
            rows.iter()
                .map(|r| r.2.record.alert_name.clone())
                .collect::<Vec<_>>(),
        )
        .bind(col(|p| p.record.phase.clone()))
        .bind(col(|p| p.record.outcome.clone()))
        .bind(col(|p| p.record.action_type.clone()))
        .bind(col(|p| p.record.severity.clone()))
        .bind(col(|p| p.record.environment.clone()))
        .bind(col(|p| p.record.cluster_name.clone()))
        .bind(col(|p| p.record.target_resource.clone()))
        .bind(rows.iter().map(|r| r.2.start_time).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2.end_time).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.2.record.duration_ms)
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.2.record.error_message.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.2.record.details.clone().map(sqlx::types::Json))
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.2.record.generation)
                .collect::<Vec<_>>(),
        )
        .bind(col(|p| p.content_hash.clone()))
        .bind(&chains)
        .bind(col(|p| p.embedding_text.clone()))
        .bind(rows.iter().map(|r| r.3.clone()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;

        let mut by_uid: HashMap<Uuid, (i64, DateTime<Utc>)> = HashMap::new();
        for row in &inserted {
            by_uid.insert(
                row.try_get("cr_uid")?,
                (row.try_get("id")?, row.try_get("updated_at")?),
            );
        }
        // (row index, audit id, persisted at) of what was inserted.
        let stored: Vec<(usize, i64, DateTime<Utc>)> = rows
            .iter()
            .enumerate()
            .filter_map(|(k, r)| by_uid.get(&r.1).map(|&(id, at)| (k, id, at)))
            .collect();
        if stored.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }

        sqlx::query(
            "INSERT INTO audit_history (audit_id, cr_uid, namespace, generation, record, content_hash,
                prev_chain_hash, chain_hash)
             SELECT a, u, n, g, r, c, '', h
             FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[])
                AS t(a, u, n, g, r, c, h)",
        )
        .bind(stored.iter().map(|s| s.1).collect::<Vec<_>>())
        .bind(stored.iter().map(|s| rows[s.0].1).collect::<Vec<_>>())
        .bind(
            stored
                .iter()
                .map(|s| rows[s.0].2.record.namespace.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            stored
                .iter()
                .map(|s| rows[s.0].2.record.generation)
                .collect::<Vec<_>>(),
        )
        .bind(
            stored
                .iter()
                .map(|s| rows[s.0].2.canonical_json.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            stored
                .iter()
                .map(|s| rows[s.0].2.content_hash.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            stored
                .iter()
                .map(|s| chains[s.0].clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;

        // Vectors one statement each: an HNSW insert costs milliseconds, the round trip does not matter.
        for &(k, audit_id, _) in &stored {
            let (i, _, p, sha) = &rows[k];
            if let Some(e) = &writes[*i].embedding {
                sqlx::query(
                    "INSERT INTO audit_embeddings (audit_id, namespace, model_id, text_sha, embedding)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(audit_id)
                .bind(&p.record.namespace)
                .bind(&e.model_id)
                .bind(sha)
                .bind(Vector::from(e.vector.clone()))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;

        Ok(stored
            .into_iter()
            .map(|(k, audit_id, persisted_at)| {
                let (i, _, p, _) = &rows[k];
                (
                    *i,
                    StoredAudit {
                        audit_id,
                        generation: p.record.generation,
                        content_hash: p.content_hash.clone(),
                        chain_hash: chains[k].clone(),
                        persisted_at,
                        embedding_stored: writes[*i].embedding.is_some(),
                    },
                )
            })
            .collect())
    }
}

/// The database could not be reached (as opposed to refusing a statement).
fn is_connection_error(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Database(
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
        )
    )
}

/// A copy of a connection error for each audit of a failed batch (sqlx errors are not `Clone`).
fn same_connection_error(e: &StoreError) -> StoreError {
    StoreError::Database(match e {
        StoreError::Database(sqlx::Error::PoolTimedOut) => sqlx::Error::PoolTimedOut,
        StoreError::Database(sqlx::Error::PoolClosed) => sqlx::Error::PoolClosed,
        StoreError::Database(sqlx::Error::Io(io)) => {
            sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string()))
        }
        other => sqlx::Error::Protocol(other.to_string()),
    })
}

struct Job {
    prepared: Arc<Prepared>,
    embedding: Option<EmbeddingRow>,
    reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// Group commit for concurrent writers: see the module documentation.
#[derive(Clone)]
pub struct WriteBatcher {
    jobs: mpsc::Sender<Job>,
    batches: Arc<AtomicU64>,
    timeout: std::time::Duration,
}

impl WriteBatcher {
    /// Starts `writers` writer tasks (each writing batches of up to `max_batch` audits); they stop when the last
    /// clone of the batcher is dropped. A caller waits at most `timeout` for its write (see [`WriteBatcher::write`]).
    pub fn spawn(
        store: Store,
        writers: usize,
        max_batch: usize,
        timeout: std::time::Duration,
    ) -> Self {
        let max_batch = max_batch.max(1);
        let (jobs, rx) = mpsc::channel::<Job>(max_batch * writers.max(1) * 2);
        let rx = Arc::new(Mutex::new(rx));
        let batches = Arc::new(AtomicU64::new(0));
        for _ in 0..writers.max(1) {
            let (store, rx, counter) = (store.clone(), rx.clone(), batches.clone());
            tokio::spawn(async move {
                loop {
                    let mut jobs = Vec::new();
                    {
                        let mut rx = rx.lock().await;
                        match rx.recv().await {
                            Some(job) => jobs.push(job),
                            None => return,
                        }
                        while jobs.len() < max_batch {
                            match rx.try_recv() {
                                Ok(job) => jobs.push(job),
                                Err(_) => break,
                            }
                        }
                    }
                    let writes: Vec<AuditWrite<'_>> = jobs
                        .iter()
                        .map(|j| AuditWrite {
                            prepared: &j.prepared,
                            embedding: j.embedding.clone(),
                        })
                        .collect();
                    let results = store.write_audits(&writes).await;
                    counter.fetch_add(1, Ordering::Relaxed);
                    drop(writes);
                    for (job, result) in jobs.into_iter().zip(results) {
                        // The caller may have given up (its reconcile was cancelled): nothing to tell.
                        let _ = job.reply.send(result);
                    }
                }
            });
        }
        Self {
            jobs,
            batches,
            timeout,
        }
    }

    /// How many batches were written so far.
    pub fn batches_written(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Writes one audit generation as part of the next batch; the same outcome as [`Store::write_audit`].
    ///
    /// Past the batcher's timeout (database busy: every connection taken, tables locked) the caller gets
    /// [`StoreError::WriteTimeout`] and retries later. The write itself may still complete; the retry then finds
    /// it stored (`Unchanged`), so an audit is never stored twice.
    pub async fn write(
        &self,
        prepared: Arc<Prepared>,
        embedding: Option<EmbeddingRow>,
    ) -> Result<WriteOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let closed = || StoreError::Database(sqlx::Error::PoolClosed);
        let job = Job {
            prepared,
            embedding,
            reply,
        };
        let written = async {
            self.jobs.send(job).await.map_err(|_| closed())?;
            answer.await.map_err(|_| closed())?
        };
        tokio::time::timeout(self.timeout, written)
            .await
            .map_err(|_| StoreError::WriteTimeout(self.timeout))?
    }
}
