//! What the DataStorage controller asks the database about itself: server versions and whether
//! `maintenance_work_mem` holds the HNSW graph of the stored vectors.

use sqlx::Row;

use super::{Store, StoreError};

/// PostgreSQL's version and the installed pgvector version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersions {
    /// `server_version`, e.g. "18.1".
    pub postgres: String,
    /// `None` when the extension is not installed (the migrations create it).
    pub pgvector: Option<String>,
}

/// `maintenance_work_mem` against the memory an in-memory HNSW build of the current vectors needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexMemory {
    pub maintenance_work_mem: i64,
    pub needed: i64,
}

impl IndexMemory {
    pub fn adequate(&self) -> bool {
        self.needed <= self.maintenance_work_mem
    }
}

/// Bytes per element of an HNSW graph of `dimensions`-float vectors with `m` links: the vector plus the
/// neighbour lists (2·m links of 8 bytes at layer 0) plus a small header.
pub fn hnsw_bytes_per_vector(dimensions: i64, m: i64) -> i64 {
    dimensions
        .saturating_mul(4)
        .saturating_add(m.saturating_mul(2 * 8))
        .saturating_add(64)
}

impl Store {
    pub async fn probe(&self) -> Result<ServerVersions, StoreError> {
        let row = sqlx::query(
            "SELECT current_setting('server_version') AS pg,
                    (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS vector",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(ServerVersions {
            postgres: row.try_get("pg")?,
            pgvector: row.try_get("vector")?,
        })
    }

    /// Compares `maintenance_work_mem` with the graph of the stored vectors (pgvector builds the index on disk,
    /// many times slower, when it does not fit).
    pub async fn index_memory(&self, dimensions: i64, m: i64) -> Result<IndexMemory, StoreError> {
        let row = sqlx::query(
            "SELECT pg_size_bytes(current_setting('maintenance_work_mem')) AS mwm,
                    (SELECT count(*) FROM audit_embeddings) AS n",
        )
        .fetch_one(self.pool())
        .await?;
        let n: i64 = row.try_get("n")?;
        Ok(IndexMemory {
            maintenance_work_mem: row.try_get("mwm")?,
            needed: n.saturating_mul(hnsw_bytes_per_vector(dimensions, m)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_dimensions_and_m() {
        // 384 floats + 2·16 links of 8 bytes + 64: the figure the controller used for MiniLM at m = 16.
        assert_eq!(hnsw_bytes_per_vector(384, 16), 384 * 4 + 2 * 16 * 8 + 64);
        assert_eq!(hnsw_bytes_per_vector(768, 16), 768 * 4 + 2 * 16 * 8 + 64);
        let m = IndexMemory {
            maintenance_work_mem: 100,
            needed: 100,
        };
        assert!(m.adequate());
        assert!(!IndexMemory { needed: 101, ..m }.adequate());
    }
}
