#!/usr/bin/env bash
# `make demo` / `make demo-down`: the whole product on one machine, on embedded defaults:
# PostgreSQL 18 + pgvector, a local Kubernetes control plane, the operator, the sample audits, `kubectl get`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEMO_DIR="${DATASTORAGE_DEMO_DIR:-${TMPDIR:-/tmp}/datastorage-demo}"
export PG_DIR="$DEMO_DIR/pg" CP_DIR="$DEMO_DIR/cp"
BIN="${CARGO_TARGET_DIR:-target}/debug/datastorage"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

down() {
  if [[ -f "$DEMO_DIR/operator.pid" ]]; then
    pid="$(cat "$DEMO_DIR/operator.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  hack/cp.sh down >/dev/null 2>&1 || true
  hack/pg.sh down >/dev/null 2>&1 || true
  rm -rf "$DEMO_DIR"
  echo "demo stopped; nothing left running"
}

up() {
  if [[ -f "$DEMO_DIR/operator.pid" ]] && kill -0 "$(cat "$DEMO_DIR/operator.pid")" 2>/dev/null; then
    echo "the demo is already running (make demo-down stops it)"; exit 0
  fi
  mkdir -p "$DEMO_DIR"
  say "Building the operator"
  cargo build --quiet --bins

  say "Starting PostgreSQL 18 + pgvector"
  db_url="$(hack/pg.sh up | tail -n1)"
  echo "$db_url"

  say "Starting a local Kubernetes control plane (etcd + kube-apiserver)"
  kubeconfig="$(hack/cp.sh up | tail -n1)"
  export KUBECONFIG="$kubeconfig"
  export PATH="$(hack/kubebins/build.sh --print-bindir):$PATH"
  kubectl version 2>/dev/null | sed 's/^/  /'

  say "Installing the CRDs and a DataStorage"
  kubectl apply --server-side -f crds/ >/dev/null
  kubectl wait --for condition=Established --timeout=60s -f crds/ >/dev/null
  kubectl create namespace datastorage-system --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n datastorage-system create secret generic datastorage-db --from-literal=url="$db_url" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl apply -f config/samples/datastorage.yaml

  say "Starting the operator (log: $DEMO_DIR/operator.log)"
  model_dir="$(hack/python-deps.sh model-dir)"
  setsid "$BIN" run --metrics-addr "127.0.0.1:${DEMO_METRICS_PORT:-18081}" \
    --api-addr "127.0.0.1:${DEMO_API_PORT:-18080}" --model-dir "$model_dir" \
    >"$DEMO_DIR/operator.log" 2>&1 < /dev/null &
  echo $! > "$DEMO_DIR/operator.pid"
  for _ in $(seq 1 120); do
    phase="$(kubectl get dstore default -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    [[ "$phase" == "Ready" ]] && break
    sleep 0.5
  done
  kubectl get dstore

  say "Applying the sample audits (valid ones and deliberately invalid ones)"
  for ns in payments checkout platform; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  done
  kubectl apply -f config/samples/audits.yaml -f config/samples/invalid-audits.yaml
  for _ in $(seq 1 120); do
    states="$(kubectl get raudit -A -o jsonpath='{range .items[*]}{.status.state}{"\n"}{end}')"
    pending="$(grep -cvE '^(Persisted|Rejected)$' <<<"$states" || true)"
    [[ "$pending" == "0" ]] && break
    sleep 0.5
  done

  # Vectors that missed the write's time budget are added by the backfill within seconds.
  for _ in $(seq 1 60); do
    states="$(kubectl get raudit -A -o jsonpath='{range .items[*]}{.status.embedding}{"\n"}{end}')"
    grep -q '^Pending$' <<<"$states" || break
    sleep 1
  done

  say "kubectl get remediationaudits -A"
  kubectl get remediationaudits -A

  say "Why were some rejected?"
  kubectl get raudit -A -o jsonpath='{range .items[?(@.status.state=="Rejected")]}{.metadata.namespace}/{.metadata.name}: {.status.message}{"\n"}{end}'

  say "Secrets never reach the database"
  hack/pg.sh psql -d postgres -Atc \
    "SELECT name || ': ' || error_message FROM datastorage.audits WHERE name = 'image-pull-backoff-fix'"

  say "Semantic search: \"pod keeps getting OOM killed\" (as a ServiceAccount allowed to list audits)"
  kubectl -n datastorage-system create serviceaccount demo-reader --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl create clusterrole audit-reader --verb=list,get --resource=remediationaudits.datastorage.kubernaut.ai \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl create clusterrolebinding demo-reader --clusterrole=audit-reader \
    --serviceaccount=datastorage-system:demo-reader --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  token="$(kubectl -n datastorage-system create token demo-reader)"
  # The demo cluster has no pod network, so the CLI talks to the API directly instead of the service proxy.
  export DATASTORAGE_API_SERVER="http://127.0.0.1:${DEMO_API_PORT:-18080}" DATASTORAGE_TOKEN="$token"
  "$BIN" query search "pod keeps getting OOM killed" -A --limit 3

  say "Hash chain of audit 1"
  "$BIN" query verify 1 || true

  say "Done"
  echo "  export KUBECONFIG=$kubeconfig PATH=$(hack/kubebins/build.sh --print-bindir):\$PATH"
  echo "  metrics: curl -s 127.0.0.1:${DEMO_METRICS_PORT:-18081}/metrics | grep ^datastorage_"
  echo "  search:  DATASTORAGE_API_SERVER=$DATASTORAGE_API_SERVER DATASTORAGE_TOKEN=\$(kubectl -n datastorage-system create token demo-reader) \\"
  echo "           $BIN query search \"certificate expired\" -A"
  echo "  stop everything: make demo-down"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
