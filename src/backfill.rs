//! The embedding backfill: audits stored without a current vector (provider down, time budget exceeded, model
//! changed, text changed) get one, in batches, until none is missing. Progress goes to the log and to the
//! `datastorage_embedding_backlog` gauge.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::runtime::Context;
use crate::store::EmbeddingRow;

const IDLE: Duration = Duration::from_secs(5);
const BATCH: i64 = 32;
/// While writes are embedding their audits (within `WRITES_ACTIVE`), the backfill takes small batches so the
/// writes' embeddings keep their time budget; what it catches up with then is mostly in the embedding cache.
const BATCH_UNDER_WRITES: i64 = 4;
const WRITES_ACTIVE: Duration = Duration::from_secs(1);
const YIELD_TO_WRITES: Duration = Duration::from_millis(250);
const EMBED_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs until the task is aborted. Only the leader runs it.
pub async fn run(ctx: Arc<Context>) {
    let mut failures: u32 = 0;
    loop {
        match step(&ctx).await {
            Ok(0) => {
                failures = 0;
                tokio::time::sleep(IDLE).await;
            }
            Ok(_) => {
                failures = 0;
                if ctx.writes_embedding_within(WRITES_ACTIVE) {
                    tokio::time::sleep(YIELD_TO_WRITES).await;
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = crate::runtime::backoff_delay(failures).min(Duration::from_secs(60));
                warn!(error = %e, ?delay, "embedding backfill failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One batch. Returns how many vectors were stored.
pub async fn step(ctx: &Context) -> Result<usize, String> {
    let Some(rt) = ctx.current_runtime() else {
        return Ok(0);
    };
    let Some(embedder) = rt.embedder.clone() else {
        ctx.metrics.embedding_backlog.set(0);
        return Ok(0);
    };
    if rt.writable.is_err() {
        return Ok(0);
    }
    let model = embedder.model_id().to_string();
    let pending = rt
        .store
        .pending_embeddings(
            &model,
            if ctx.writes_embedding_within(WRITES_ACTIVE) {
                BATCH_UNDER_WRITES
            } else {
                BATCH
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    if pending.is_empty() {
        ctx.metrics.embedding_backlog.set(0);
        return Ok(0);
    }
    let texts: Vec<String> = pending.iter().map(|p| p.text.clone()).collect();
    let vectors = tokio::time::timeout(EMBED_TIMEOUT, embedder.embed(&texts))
        .await
        .map_err(|_| "the embedding provider timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let mut stored = 0;
    for (p, vector) in pending.iter().zip(vectors) {
        let row = EmbeddingRow {
            model_id: model.clone(),
            vector,
        };
        if rt
            .store
            .store_embedding(p.audit_id, &p.text_sha, &row)
            .await
            .map_err(|e| e.to_string())?
        {
            stored += 1;
        }
    }
    ctx.metrics.backfill_embedded.inc_by(stored as u64);
    ctx.metrics
        .write_total
        .with_label_values(&["audit_embeddings", "success"])
        .inc_by(stored as u64);
    let backlog = rt
        .store
        .embedding_backlog(&model)
        .await
        .map_err(|e| e.to_string())?;
    ctx.metrics.embedding_backlog.set(backlog);
    info!(stored, backlog, model = %model, "embedding backfill progress");
    Ok(stored)
}
