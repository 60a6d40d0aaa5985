#!/usr/bin/env bash
# `make test`: lint, then every test suite against real services started here and always stopped on exit:
# PostgreSQL 18 + pgvector (hack/pg.sh), Redis (hack/redis.sh) and a local Kubernetes control plane (hack/cp.sh);
# then the cluster suite (tests/it/cluster.rs) on a real single node (hack/node.sh) with the image built here
# (hack/image.sh, reusing the debug binary `cargo test` just built) and a PostgreSQL the pods can reach; then the
# demo smoke test (make demo on its own node); then the fault-injection and load suite (tests/it/faults.rs), whose
# tests start their own private PostgreSQL and control plane and run one at a time.
# One node per machine: the cluster suite's node is down before the demo's comes up.
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
  PG_DIR="$run_dir/node-pg" hack/pg.sh down >/dev/null 2>&1 || true
  NODE_DIR="$run_dir/node" hack/node.sh down >/dev/null 2>&1 || true
  DATASTORAGE_DEMO_DIR="$run_dir/demo" hack/demo.sh down >/dev/null 2>&1 || true
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

# The cluster suite: node up, image (the debug binary cargo test built: no release build in CI) under two tags,
# PostgreSQL on the bridge with password auth for the pod subnet, the #[ignore]d tests of tests/it/cluster.rs.
run_cluster() {
  local log="$1" status t0=$SECONDS
  echo "== cluster suite on a real node (tests/it/cluster.rs: helm install --wait, helm test, leader pod kill, helm upgrade with a CRD change, kubectl audit, drain, uninstall)"
  export NODE_DIR="$run_dir/node"
  DATASTORAGE_NODE_KUBECONFIG="$(hack/node.sh up | tail -n1)"
  eval "$(hack/node.sh env)"
  echo "node up in $((SECONDS - t0))s"
  local t1=$SECONDS sha
  sha="$(git rev-parse --short=10 HEAD 2>/dev/null || echo nogit)"
  DATASTORAGE_NODE_IMAGE="$(IMAGE_BINARY="$CARGO_TARGET_DIR/debug/datastorage" IMAGE_TAG="test-$sha-a"     IMAGE_ARCHIVE="$run_dir/image.tar" IMAGE_IMPORT=1 hack/image.sh | tail -n1)"
  DATASTORAGE_NODE_IMAGE_UPGRADE="${DATASTORAGE_NODE_IMAGE%-a}-b"
  "$(hack/kubebins/build.sh node --print-bindir)/ctr" --address "$CONTAINERD_ADDRESS" -n k8s.io images tag     "$DATASTORAGE_NODE_IMAGE" "$DATASTORAGE_NODE_IMAGE_UPGRADE" >/dev/null
  rm -f "$run_dir/image.tar"
  echo "image $DATASTORAGE_NODE_IMAGE (+ tag ${DATASTORAGE_NODE_IMAGE_UPGRADE##*:}) in $((SECONDS - t1))s"
  local pw
  pw="$(openssl rand -hex 16)"
  DATASTORAGE_NODE_DATABASE_URL="$(PG_DIR="$run_dir/node-pg" PG_LISTEN_EXTRA=10.244.0.1 PG_PASSWORD_CIDR=10.244.0.0/24     PG_PASSWORD="$pw" hack/pg.sh up | tail -n1)"
  local port="${DATASTORAGE_NODE_DATABASE_URL##*:}"
  DATASTORAGE_NODE_POD_DATABASE_URL="postgres://postgres:$pw@10.244.0.1:${port%%/*}/postgres"
  export DATASTORAGE_NODE_KUBECONFIG DATASTORAGE_NODE_IMAGE DATASTORAGE_NODE_IMAGE_UPGRADE     DATASTORAGE_NODE_DATABASE_URL DATASTORAGE_NODE_POD_DATABASE_URL
  set +e
  cargo test --test it cluster:: -- --ignored --test-threads=1 --nocapture 2>&1 | tee "$log"
  status="${PIPESTATUS[0]}"
  set -e
  PG_DIR="$run_dir/node-pg" hack/pg.sh down >/dev/null 2>&1 || true
  hack/node.sh down >/dev/null
  hack/node.sh check-clean || { echo "the cluster suite's node left the above behind"; return 1; }
  unset NODE_DIR KUBECONFIG CONTAINERD_ADDRESS CONTAINERD_NAMESPACE CONTAINER_RUNTIME_ENDPOINT
  echo "== cluster suite summary ($((SECONDS - t0))s with node up/down)"
  grep -E '^SUMMARY \|' "$log" || true
  [[ "$status" -eq 0 ]] || { echo "cluster suite failed (exit $status)"; return "$status"; }
}
run_cluster "$run_dir/cluster.log"

echo "== demo smoke test (make demo on a real node with the debug binary, then make demo-down leaves nothing behind)"
demo_dir="$run_dir/demo"
DATASTORAGE_DEMO_DIR="$demo_dir" DEMO_IMAGE_PROFILE=debug hack/demo.sh up > "$run_dir/demo.log" 2>&1 || {
  cat "$run_dir/demo.log"; echo "make demo failed"; exit 1; }
demo_ok=1
grep -q "Persisted" "$run_dir/demo.log" || demo_ok=0
# Refused at apply time: by the admission webhook (it runs first on the node) or by the CRD's CEL rule.
grep -qE '"bad-action-type" is invalid: .*spec\.actionType' "$run_dir/demo.log" || demo_ok=0
grep -q "REDACTED:password_kv" "$run_dir/demo.log" || demo_ok=0
grep -q "api-oomkilled-restart" <(sed -n '/Semantic search/,$p' "$run_dir/demo.log") || demo_ok=0
grep -qE '^increase-memory-limit worked [0-9]+/[0-9]+ times' <(sed -n '/what fixed it/,$p' "$run_dir/demo.log") || demo_ok=0
DATASTORAGE_DEMO_DIR="$demo_dir" hack/demo.sh down > "$run_dir/demo-down.log" 2>&1 || { cat "$run_dir/demo-down.log"; demo_ok=0; }
if pgrep -f "$demo_dir" > /dev/null; then echo "demo left processes behind:"; pgrep -af "$demo_dir"; demo_ok=0; fi
[[ ! -e "$demo_dir" ]] || { echo "demo left $demo_dir behind"; demo_ok=0; }
if [[ "$demo_ok" -ne 1 ]]; then cat "$run_dir/demo.log"; echo "demo smoke test failed"; exit 1; fi
echo "demo smoke test passed"

run_faults "$run_dir/faults.log"

cat "$run_dir/cargo-test.log" "$run_dir/cluster.log" "$run_dir/faults.log" | grep -E '^test result:' \
  | awk '{p+=$4; f+=$6} END {printf "%d passed, %d failed\n", p, f}'

