#!/usr/bin/env bash
# `make test`: lint, then every test suite against real services started here and always stopped on exit:
# PostgreSQL 18 + pgvector (hack/pg.sh), Redis (hack/redis.sh) and a local Kubernetes control plane (hack/cp.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

run_dir="$(mktemp -d "${TMPDIR:-/tmp}/datastorage-test.XXXXXX")"
export PG_DIR="$run_dir/pg" REDIS_DIR="$run_dir/redis" CP_DIR="$run_dir/cp"
cleanup() {
  local rc=$?
  hack/cp.sh down >/dev/null 2>&1 || true
  hack/redis.sh down >/dev/null 2>&1 || true
  hack/pg.sh down >/dev/null 2>&1 || true
  rm -rf "$run_dir"
  exit "$rc"
}
trap cleanup EXIT INT TERM

echo "== lint"
make --no-print-directory lint

echo "== services"
DATASTORAGE_TEST_DATABASE_URL="$(hack/pg.sh up | tail -n1)"
DATASTORAGE_TEST_REDIS_URL="$(hack/redis.sh up | tail -n1)"
DATASTORAGE_TEST_KUBECONFIG="$(hack/cp.sh up | tail -n1)"
DATASTORAGE_MODEL_DIR="$(hack/python-deps.sh model-dir)"
DATASTORAGE_KUBEBIN="$(hack/kubebins/build.sh --print-bindir)"
export DATASTORAGE_TEST_DATABASE_URL DATASTORAGE_TEST_REDIS_URL DATASTORAGE_TEST_KUBECONFIG DATASTORAGE_MODEL_DIR \
  DATASTORAGE_KUBEBIN
export DATASTORAGE_PG_DIR="$PG_DIR" DATASTORAGE_REDIS_DIR="$REDIS_DIR" DATASTORAGE_CP_DIR="$CP_DIR"
echo "postgres: $DATASTORAGE_TEST_DATABASE_URL"
echo "redis:    $DATASTORAGE_TEST_REDIS_URL"
echo "kube:     $DATASTORAGE_TEST_KUBECONFIG"

echo "== cargo test"
set +e
cargo test --all-targets 2>&1 | tee "$run_dir/cargo-test.log"
status="${PIPESTATUS[0]}"
set -e
grep -E '^test result:' "$run_dir/cargo-test.log" | awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed\n", p, f}'
exit "$status"
