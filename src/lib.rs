//! datastorage: a Kubernetes operator that turns `RemediationAudit` resources into durable, searchable records in
//! PostgreSQL + pgvector.
//!
//! Map of the code:
//! - [`admission`]: the mutating admission webhook (secrets redacted before etcd); [`tls`]: the Service's serving
//!   certificate (query API and webhook).
//! - [`crd`]: the two custom resources (`RemediationAudit`, `DataStorage`).
//! - [`audit`]: the pure steps of one audit's journey (validate, sanitize, canonical record and hash chain,
//!   embedding text, status).
//! - [`controller`]: the RemediationAudit controller (`controller/audit.rs` reads as one audit's journey) and the
//!   DataStorage controller.
//! - [`store`]: PostgreSQL (migrations, the write transaction, verification, versions).
//! - [`embed`]: embedding providers (local MiniLM, OpenAI-compatible, hash) and the cache.
//! - [`checkpoint`]: signed chain-head checkpoints kept outside PostgreSQL (a ConfigMap), and the leader's loop.
//! - [`runtime`]: the shared application state (the published store runtime, own-write tracking, backoff).
//! - [`api`]: the query API (handlers, auth, wire types); [`client`]: its client, `kubectl audit` and
//!   `datastorage query`.
//! - [`backfill`], [`http`], [`metrics`], [`operator`] (wiring), [`check`] (`datastorage check`), [`rbac`] (the
//!   Kubernetes permissions the code needs; the Helm chart grants exactly these).

pub mod admission;
pub mod api;
pub mod audit;
pub mod backfill;
pub mod check;
pub mod checkpoint;
pub mod client;
pub mod controller;
pub mod crd;
pub mod embed;
pub mod events;
pub mod http;
pub mod metrics;
pub mod operator;
pub mod rbac;
pub mod runtime;
pub mod store;
pub mod tls;
