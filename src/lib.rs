//! datastorage: a Kubernetes operator that turns `RemediationAudit` resources into durable, searchable records in
//! PostgreSQL + pgvector.
//!
//! Map of the code:
//! - [`crd`]: the two custom resources (`RemediationAudit`, `DataStorage`).
//! - [`audit`]: the pure steps of one audit's journey (validate, sanitize, canonical record and hash chain,
//!   embedding text, status).
//! - [`store`]: PostgreSQL (migrations, the write transaction, verification).

pub mod audit;
pub mod crd;
pub mod store;
