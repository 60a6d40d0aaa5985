//! The integration tests: one binary (`cargo test --test it`), one module per suite, one test kit (`support`).
//! Every suite runs against real services (PostgreSQL + pgvector, Redis, kube-apiserver, helm, promtool) that
//! `make test` starts (hack/test.sh); a missing service fails the test with the command that starts it.
//!
//! `faults` is the fault-injection and load suite: its tests are `#[ignore]`d here because each starts its own
//! PostgreSQL and control plane and runs for minutes; `make test-faults` (and `make test`, after the other suites)
//! runs them with `cargo test --test it faults:: -- --ignored --test-threads=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod admission;
mod admission_policy;
mod alerts;
mod api;
mod bad_inputs;
mod chain;
mod chart;
mod chart_identity;
mod cli;
mod cluster;
mod controller;
mod crds;
mod dashboard;
mod effectiveness_dashboard;
mod embedding_backends;
mod embeddings;
mod faults;
mod flood;
mod fuzz;
mod helm;
mod hostile_api;
mod insights;
mod leader;
mod metrics;
mod rbac;
mod store;
mod transport;
