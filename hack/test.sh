#!/usr/bin/env bash
# `make test`: lint, then every test suite against real services started here and always stopped on exit:
# PostgreSQL 18 + pgvector (hack/pg.sh), Redis (hack/redis.sh) and a local Kubernetes control plane (hack/cp.sh);
# then the fault-injection and load suite (tests/it/faults.rs), whose tests start their own private PostgreSQL and
# control plane and run one at a time.
# `hack/test.sh faults` (`make test-faults`): the fault-injection and load suite only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="${1:-all}"
case "$mode" in all | faults) ;; *) echo "usage: hack/test.sh [all|faults]" >&2; exit 2 ;; esac

# The fault suite: the `#[ignore]`d tests of tests/it/faults.rs, one at a time, its SUMMARY lines last.
run_faults() {
  local log="$1" status
  echo "== fault injection and load (tests/it/faults.rs; each test starts its own PostgreSQL and control plane)"
  # Fail loudly, before minutes of tests, when what the tests start cannot be found.
  hack/kubebins/build.sh --print-bindir > /dev/null || { echo "hack/kubebins/build.sh failed: no kube-apiserver/etcd"; return 1; }
  hack/python-deps.sh pg-home > /dev/null || { echo "hack/python-deps.sh pg-home failed: no PostgreSQL"; return 1; }
  set +e
  cargo test --test it faults:: -- --ignored --test-threads=1 --nocapture 2>&1 | tee "$log"
  status="${PIPESTATUS[0]}"
  set -e
  echo "== fault suite summary"
  grep -E '^SUMMARY \|' "$log" || true
  [[ "$status" -eq 0 ]] || { echo "fault suite failed (exit $status)"; return "$status"; }
}

if [[ "$mode" == faults ]]; then
  log="$(mktemp "${TMPDIR:-/tmp}/datastorage-faults.XXXXXX.log")"
  trap 'rm -f "$log"' EXIT
  run_faults "$log"
  grep -E '^test result:' "$log" | awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed\n", p, f}'
  exit 0
fi

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
[[ "$status" -eq 0 ]] || { echo "cargo test failed (exit $status)"; exit "$status"; }

echo "== demo smoke test (make demo, then make demo-down leaves nothing behind)"
demo_dir="$run_dir/demo"
DATASTORAGE_DEMO_DIR="$demo_dir" DEMO_METRICS_PORT=18981 DEMO_API_PORT=18980 hack/demo.sh up > "$run_dir/demo.log" 2>&1 || {
  cat "$run_dir/demo.log"; echo "make demo failed"; exit 1; }
demo_ok=1
grep -q "Persisted" "$run_dir/demo.log" && grep -q "Rejected" "$run_dir/demo.log" || demo_ok=0
grep -q "REDACTED:password_kv" "$run_dir/demo.log" || demo_ok=0
grep -q "api-oomkilled-restart" <(sed -n '/Semantic search/,$p' "$run_dir/demo.log") || demo_ok=0
DATASTORAGE_DEMO_DIR="$demo_dir" hack/demo.sh down > /dev/null
if pgrep -f "$demo_dir" > /dev/null; then echo "demo left processes behind:"; pgrep -af "$demo_dir"; demo_ok=0; fi
[[ ! -e "$demo_dir" ]] || { echo "demo left $demo_dir behind"; demo_ok=0; }
if [[ "$demo_ok" -ne 1 ]]; then cat "$run_dir/demo.log"; echo "demo smoke test failed"; exit 1; fi
echo "demo smoke test passed"

run_faults "$run_dir/faults.log"

cat "$run_dir/cargo-test.log" "$run_dir/faults.log" | grep -E '^test result:' \
  | awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed\n", p, f}'

