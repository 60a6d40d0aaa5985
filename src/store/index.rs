//! The HNSW index: what it should look like for a DataStorage's `vectorIndex`, and rebuilding it without
//! blocking writes (`CREATE INDEX CONCURRENTLY` under a temporary name, `DROP INDEX CONCURRENTLY` of the old one,
//! then a rename, which takes only a lock that does not conflict with inserts).

use super::{Store, StoreError};
use crate::crd::{VECTOR_DIMENSIONS, VectorElementType, VectorIndexSpec, VectorMetric};

pub const INDEX_NAME: &str = "audit_embeddings_hnsw_idx";
const BUILD_NAME: &str = "audit_embeddings_hnsw_build";

/// Validated index parameters (only integers and fixed keywords reach the DDL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexParams {
    pub m: i32,
    pub ef_construction: i32,
    pub halfvec: bool,
}

impl IndexParams {
    /// Checks the spec against pgvector's limits (m 2–100, ef_construction ≥ 2·m and ≤ 1000, cosine only).
    pub fn from_spec(spec: &VectorIndexSpec) -> Result<Self, String> {
        if spec.metric != VectorMetric::Cosine {
            return Err(format!(
                "metric {:?} is not supported yet; use cosine",
                spec.metric
            ));
        }
        if !(2..=100).contains(&spec.m) {
            return Err(format!("m must be between 2 and 100, got {}", spec.m));
        }
        if spec.ef_construction < 2 * spec.m || spec.ef_construction > 1000 {
            return Err(format!(
                "efConstruction must be between 2·m ({}) and 1000, got {}",
                2 * spec.m,
                spec.ef_construction
            ));
        }
        if usize::try_from(spec.dimensions).ok() != Some(VECTOR_DIMENSIONS) {
            return Err(format!(
                "dimensions {} are not supported yet (the store holds {VECTOR_DIMENSIONS})",
                spec.dimensions
            ));
        }
        Ok(Self {
            m: spec.m,
            ef_construction: spec.ef_construction,
            halfvec: spec.element_type == VectorElementType::Halfvec,
        })
    }

    /// `CREATE INDEX CONCURRENTLY` statement for these parameters under `name`.
    pub fn create_sql(&self, name: &str) -> String {
        let column = if self.halfvec {
            format!("((embedding::halfvec({VECTOR_DIMENSIONS})) halfvec_cosine_ops)")
        } else {
            "(embedding vector_cosine_ops)".to_string()
        };
        format!(
            "CREATE INDEX CONCURRENTLY {name} ON audit_embeddings USING hnsw {column} WITH (m = {}, ef_construction = {})",
            self.m, self.ef_construction
        )
    }

    /// Whether an existing index definition (from `pg_indexes.indexdef`) matches these parameters.
    pub fn matches(&self, indexdef: &str) -> bool {
        let def = indexdef.to_lowercase();
        def.contains("using hnsw")
            && def.contains(&format!("m='{}'", self.m))
            && def.contains(&format!("ef_construction='{}'", self.ef_construction))
            && def.contains("halfvec") == self.halfvec
    }
}

impl Store {
    /// Rebuilds the HNSW index with `params`; writes continue meanwhile.
    pub async fn rebuild_index(&self, params: IndexParams) -> Result<(), StoreError> {
        // A failed earlier concurrent build leaves an invalid index behind: clear it first.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {BUILD_NAME}"
        )))
        .execute(&self.pool)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(params.create_sql(BUILD_NAME)))
            .execute(&self.pool)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {INDEX_NAME}"
        )))
        .execute(&self.pool)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER INDEX {BUILD_NAME} RENAME TO {INDEX_NAME}"
        )))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_matches() {
        let spec = VectorIndexSpec::default();
        let p = IndexParams::from_spec(&spec).unwrap();
        assert_eq!(
            p,
            IndexParams {
                m: 16,
                ef_construction: 64,
                halfvec: false
            }
        );
        let def = "CREATE INDEX audit_embeddings_hnsw_idx ON datastorage.audit_embeddings USING hnsw \
                   (embedding vector_cosine_ops) WITH (m='16', ef_construction='64')";
        assert!(p.matches(def));
        assert!(!IndexParams { m: 24, ..p }.matches(def));
        assert!(!IndexParams { halfvec: true, ..p }.matches(def));
        assert!(
            IndexParams::from_spec(&VectorIndexSpec {
                m: 1,
                ..spec.clone()
            })
            .is_err()
        );
        assert!(
            IndexParams::from_spec(&VectorIndexSpec {
                ef_construction: 10,
                ..spec.clone()
            })
            .is_err()
        );
        assert!(
            IndexParams::from_spec(&VectorIndexSpec {
                metric: VectorMetric::L2,
                ..spec
            })
            .is_err()
        );
        assert!(
            p.create_sql("x")
                .contains("WITH (m = 16, ef_construction = 64)")
        );
    }
}
