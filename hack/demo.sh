#!/usr/bin/env bash
# `make demo` / `make demo-down`: the product the way users meet it, on one machine. A real single-node cluster
# (hack/node.sh: kubelet, containerd, CNI bridge), the operator image built here (hack/image.sh), `helm install` of
# charts/datastorage-operator (3 replicas, leader election, PDB, the chart's RBAC), PostgreSQL 18 + pgvector reachable
# from the pods, the sample audits, `kubectl get`, and search, hash-chain verify and insights with `kubectl audit` through the API
# server's service proxy (X-Datastorage-Authorization) as a ServiceAccount user.
#
# Environment: DATASTORAGE_DEMO_DIR (default ${TMPDIR:-/tmp}/datastorage-demo-<hash of this checkout's path>),
#   DEMO_IMAGE_PROFILE release (default) | debug (reuse the debug binary; what `make test`'s smoke test uses)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

checkout_hash="$(printf '%s' "$PWD" | sha256sum | cut -c1-8)"
DEMO_DIR="${DATASTORAGE_DEMO_DIR:-${TMPDIR:-/tmp}/datastorage-demo-$checkout_hash}"
case "$DEMO_DIR" in /*) ;; *) DEMO_DIR="$PWD/$DEMO_DIR" ;; esac
export NODE_DIR="$DEMO_DIR/node" PG_DIR="$DEMO_DIR/pg"
PROFILE="${DEMO_IMAGE_PROFILE:-release}"
NS=datastorage-system
RELEASE=datastorage-operator
GATEWAY=10.244.0.1
POD_CIDR=10.244.0.0/24

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
phase_t=$SECONDS
declare -a TIMES=()
phase_done() { TIMES+=("$(printf '%-34s %4ss' "$1" "$((SECONDS - phase_t))")"); phase_t=$SECONDS; }

down() {
  hack/pg.sh down >/dev/null 2>&1 || true
  hack/node.sh down >/dev/null || echo "hack/node.sh down failed"
  rm -rf "$DEMO_DIR"
  if NODE_DIR="$NODE_DIR" hack/node.sh check-clean; then
    echo "demo stopped; nothing left running, host restored"
  else
    echo "demo stopped, but the above was left behind"
    return 1
  fi
}

up() {
  local t0=$SECONDS
  if [[ -f "$DEMO_DIR/done" ]] && hack/node.sh status >/dev/null 2>&1; then
    echo "the demo is already running (make demo-down stops it)"
    cat "$DEMO_DIR/done"
    exit 0
  fi
  mkdir -p "$DEMO_DIR"
  # Cold or warm: were the node binaries and the image base already built?
  local warm=warm
  [[ -x "$(hack/kubebins/build.sh node --print-bindir)/kubelet" ]] || warm=cold
  ls "${DATASTORAGE_CACHE:-$HOME/.cache/datastorage}"/image-base/*/rootfs.tar >/dev/null 2>&1 || warm=cold

  say "A real single-node cluster (hack/node.sh: containerd + runc, CNI bridge $GATEWAY/24, kubelet, kube-proxy)"
  kubeconfig="$(hack/node.sh up | tail -n1)"
  eval "$(hack/node.sh env)"
  kubectl get nodes -o wide
  phase_done "node up"

  say "The operator image (hack/image.sh: buildah --network none, a Debian-package base, no registry)"
  image="$(IMAGE_PROFILE="$PROFILE" hack/image.sh | tail -n1)"
  echo "$image"
  nice -n 10 cargo build --quiet --locked $([[ "$PROFILE" == release ]] && echo --release) --bin kubectl-audit
  local plugin_dir
  plugin_dir="$(realpath "${CARGO_TARGET_DIR:-target}/$PROFILE")"
  phase_done "image build + import"

  say "PostgreSQL 18 + pgvector, reachable from the pods on $GATEWAY (password auth for $POD_CIDR)"
  local pw
  pw="$(openssl rand -hex 16)"
  db_url="$(PG_LISTEN_EXTRA=$GATEWAY PG_PASSWORD_CIDR=$POD_CIDR PG_PASSWORD=$pw hack/pg.sh up | tail -n1)"
  local port="${db_url##*:}"
  port="${port%%/*}"
  pod_db_url="postgres://postgres:$pw@$GATEWAY:$port/postgres"
  echo "pods use postgres://postgres:***@$GATEWAY:$port/postgres"
  phase_done "postgres"

  say "helm install $RELEASE charts/datastorage-operator (3 replicas, leader election, PDB, RBAC)"
  local t_install=$SECONDS
  helm install "$RELEASE" charts/datastorage-operator -n "$NS" --create-namespace \
    --set image.repository="${image%:*}" --set-string image.tag="${image##*:}" --set image.pullPolicy=Never \
    --set database.url="$pod_db_url" --set dataStorage.create=true --set dataStorage.tlsMode=disable \
    --wait --timeout 180s >/dev/null
  # --wait returns once the pods are Ready, i.e. once the DataStorage (a plain release object) is Ready.
  for _ in $(seq 1 240); do
    [[ "$(kubectl get dstore default -o jsonpath='{.status.phase}' 2>/dev/null)" == Ready ]] && break
    sleep 0.5
  done
  local install_ready=$((SECONDS - t_install))
  kubectl -n "$NS" get pods -o wide
  kubectl get dstore
  echo "leader: $(kubectl -n "$NS" get lease "$RELEASE-leader" -o jsonpath='{.spec.holderIdentity}')"
  kubectl -n "$NS" get pdb
  phase_done "helm install -> Ready"

  say "Applying the sample audits (valid ones and deliberately invalid ones)"
  for ns in payments checkout platform; do
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  done
  kubectl apply -f config/samples/audits.yaml
  # A month of one incident family, for the insight query at the end.
  kubectl apply -f config/samples/history.yaml >/dev/null
  # The invalid ones fail at once: the CRD's validation rules carry the operator's messages.
  say "kubectl apply of the invalid samples is refused at once (the CRD's validation rules)"
  if kubectl apply -f config/samples/invalid-audits.yaml 2>&1; then
    echo "ERROR: the invalid samples were admitted" >&2
    return 1
  fi
  for _ in $(seq 1 240); do
    states="$(kubectl get raudit -A -o jsonpath='{range .items[*]}{.status.state}{"\n"}{end}')"
    pending="$(grep -cvE '^(Persisted|Rejected)$' <<<"$states" || true)"
    [[ "$pending" == "0" ]] && break
    sleep 0.5
  done
  # Vectors that missed the write's time budget are added by the backfill within seconds.
  for _ in $(seq 1 120); do
    states="$(kubectl get raudit -A -o jsonpath='{range .items[*]}{.status.embedding}{"\n"}{end}')"
    grep -q '^Pending$' <<<"$states" || break
    sleep 1
  done
  phase_done "samples persisted"

  say "kubectl get remediationaudits -A"
  kubectl get remediationaudits -A

  say "Rejected by the operator (rules the API server cannot check, or objects admitted before the rules)"
  kubectl get raudit -A -o jsonpath='{range .items[?(@.status.state=="Rejected")]}{.metadata.namespace}/{.metadata.name}: {.status.message}{"\n"}{end}'

  say "Secrets never reach etcd either: the spec as stored (redacted by the admission webhook)"
  kubectl -n checkout get raudit image-pull-backoff-fix -o jsonpath='{.spec.errorMessage}{"\n"}{.metadata.annotations.datastorage\.kubernaut\.ai/redacted-at-admission}{"\n"}' || true

  say "Secrets never reach the database"
  hack/pg.sh psql -d postgres -Atc \
    "SELECT name || ': ' || error_message FROM datastorage.audits WHERE name = 'image-pull-backoff-fix'"

  say "A user: ServiceAccount demo-reader, may list audits and use the operator's service proxy"
  kubectl -n "$NS" create serviceaccount demo-reader --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl create clusterrole audit-reader --verb=list,get --resource=remediationaudits.datastorage.kubernaut.ai \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl create clusterrolebinding demo-reader --clusterrole=audit-reader \
    --serviceaccount="$NS:demo-reader" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$NS" create role datastorage-api-proxy --verb=get,create --resource=services/proxy \
    --resource-name="$RELEASE" --resource-name="$RELEASE:8080" --resource-name="https:$RELEASE:8080" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$NS" create rolebinding demo-reader-proxy --role=datastorage-api-proxy \
    --serviceaccount="$NS:demo-reader" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  local reader_kc="$DEMO_DIR/demo-reader.kubeconfig"
  server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$DEMO_DIR/ca.crt"
  (
    umask 077
    KUBECONFIG="$reader_kc" kubectl config set-cluster node --server="$server" --certificate-authority="$DEMO_DIR/ca.crt" --embed-certs >/dev/null
    KUBECONFIG="$reader_kc" kubectl config set-credentials demo-reader --token="$(kubectl -n "$NS" create token demo-reader --duration=2h)" >/dev/null
    KUBECONFIG="$reader_kc" kubectl config set-context node --cluster=node --user=demo-reader --namespace=payments >/dev/null
    KUBECONFIG="$reader_kc" kubectl config use-context node >/dev/null
  )
  export PATH="$plugin_dir:$PATH"
  unset DATASTORAGE_API_SERVER
  # The kubeconfig's token (for the API server) opens the service proxy; the query API takes only a token minted for
  # its audience (api.tokenAudiences), forwarded by kubectl audit.
  DATASTORAGE_TOKEN="$(kubectl -n "$NS" create token demo-reader --duration=2h --audience datastorage)"
  export DATASTORAGE_TOKEN

  say "Semantic search: \"pod keeps getting OOM killed\" (kubectl audit, through the apiserver's service proxy)"
  KUBECONFIG="$reader_kc" kubectl audit search "pod keeps getting OOM killed" -A --limit 3

  say "kubectl audit list -n payments"
  KUBECONFIG="$reader_kc" kubectl audit list -n payments

  say "Hash chain of audit 1 (kubectl audit verify 1)"
  KUBECONFIG="$reader_kc" kubectl audit verify 1 || true

  # The samples' startTimes are fixed dates, so the window is the longest (the default is the last 180 days).
  say "Have we seen this before, and what fixed it? (kubectl audit insights \"pod keeps getting OOM killed\" -A)"
  KUBECONFIG="$reader_kc" kubectl audit insights "pod keeps getting OOM killed" -A --window-days 2555
  phase_done "queries through the service proxy"

  say "Done ($warm run: $((SECONDS - t0))s in all; helm install -> pods Ready and DataStorage Ready: ${install_ready}s)"
  printf '  %s\n' "${TIMES[@]}"
  {
    echo "  export KUBECONFIG=$kubeconfig PATH=$(hack/kubebins/build.sh --print-bindir):$plugin_dir:\$PATH"
    echo "  as the user:   KUBECONFIG=$reader_kc DATASTORAGE_TOKEN=\$(kubectl -n $NS create token demo-reader --audience datastorage) kubectl audit search \"certificate expired\" -A"
    echo "  pods:          kubectl -n $NS get pods; kubectl -n $NS logs deploy/$RELEASE"
    echo "  stop everything: make demo-down"
  } | tee "$DEMO_DIR/done"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
