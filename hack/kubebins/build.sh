#!/usr/bin/env bash
# Builds the pinned control-plane / tooling binaries used by tests and CI:
#   kube-apiserver, kubectl  (k8s.io/kubernetes, wrapper module ./k8s)
#   etcd                     (go.etcd.io/etcd/server/v3, wrapper module ./etcd)
#   helm                     (helm.sh/helm/v3, wrapper module ./helm)
#   promtool                 (github.com/prometheus/prometheus, wrapper module ./promtool)
#   prometheus               (the server, wrapper module ./prometheus; own cache key, linked into the bin dir)
# and, with `node`, the binaries of a real single node (hack/node.sh), in their own bin dir:
#   kubelet, kube-controller-manager, kube-scheduler, kube-proxy  (k8s.io/kubernetes, wrapper module ./node,
#                                                                 same version as ./k8s)
#   containerd, containerd-shim-runc-v2, ctr                      (go install ...@$CONTAINERD_VERSION)
#   crictl                                                        (go install ...@$CRICTL_VERSION)
#   pause                                                         (gcc -static of the k8s module's pause.c)
#
# Versions are pinned by the go.mod/go.sum of each wrapper module (the single
# source of truth). Binaries never go into the repo: they are written to
#   ${DATASTORAGE_CACHE:-$HOME/.cache/datastorage}/kubebins/<key>/bin/
# where <key> encodes every pinned version, the Go version and a hash of the
# wrapper modules. Go's module and build caches live under the same cache root.
#
# Usage:
#   hack/kubebins/build.sh               build missing binaries; last stdout line = bin dir
#   hack/kubebins/build.sh --print-bindir print the bin dir, build nothing
#   hack/kubebins/build.sh node [--print-bindir]   the same for the node binaries (own key and bin dir)
#
# Each binary is built only if missing (a partial earlier run resumes); a run
# with everything present is a no-op. Progress goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${DATASTORAGE_CACHE:-${HOME:?set HOME or DATASTORAGE_CACHE}/.cache/datastorage}"

# Bump when the build recipe (flags, ldflags, binary set) changes so that
# binaries built by an older recipe are not reused.
RECIPE=2

log() { printf '[kubebins] %s\n' "$*" >&2; }
die() { printf '[kubebins] ERROR: %s\n' "$*" >&2; exit 1; }

# Version of a required module, read from a wrapper go.mod.
modver() { # <wrapper dir> <module path>
  local v
  v="$(awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) && $0 !~ /=>/ {
         for (i = 1; i <= NF; i++) if ($i ~ /^v[0-9]/) { print $i; exit } }' "$HERE/$1/go.mod")"
  [[ -n "$v" ]] || die "cannot find $2 in $HERE/$1/go.mod"
  printf '%s\n' "$v"
}

K8S_MODV="$(modver k8s k8s.io/kubernetes)"           # v1.37.2
ETCD_MODV="$(modver etcd go.etcd.io/etcd/server/v3)"  # v3.6.16
HELM_MODV="$(modver helm helm.sh/helm/v3)"            # v3.22.0
PROM_MODV="$(modver promtool github.com/prometheus/prometheus)" # v0.316.0

K8S_VERSION="${K8S_MODV#v}"
K8S_MAJOR="${K8S_VERSION%%.*}"
K8S_MINOR="${K8S_VERSION#*.}"; K8S_MINOR="${K8S_MINOR%%.*}"
ETCD_VERSION="${ETCD_MODV#v}"
HELM_VERSION="${HELM_MODV#v}"
# Prometheus release vX.Y.Z is published as Go module v0.X0Y.Z (v0.316.0 = 3.16.0).
prom_minor_patch="${PROM_MODV#v0.}"              # 316.0
prom_xy="${prom_minor_patch%%.*}"                # 316
PROM_VERSION="$((10#$prom_xy / 100)).$((10#$prom_xy % 100)).${prom_minor_patch#*.}"

# Helm's built-in Kubernetes capabilities follow the client-go it is built with.
HELM_CLIENTGO="$(modver helm k8s.io/client-go)"  # v0.37.0 -> 1.37
HELM_K8S_MINOR="${HELM_CLIENTGO#v0.}"; HELM_K8S_MINOR="${HELM_K8S_MINOR%%.*}"

go_version() {
  (cd / && GOTOOLCHAIN=local GOFLAGS='' go env GOVERSION) || die "cannot run go (is Go installed and in PATH?)"
}

src_hash() {
  (
    cd "$HERE"
    echo "recipe=$RECIPE"
    cat k8s/go.mod k8s/go.sum etcd/go.mod etcd/go.sum helm/go.mod helm/go.sum \
        promtool/go.mod promtool/go.sum
  ) | sha256sum | cut -c1-10
}

GOVER="$(go_version)"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_prom-${PROM_VERSION}_${GOVER}_$(src_hash)"
BINDIR="$CACHE_ROOT/kubebins/$KEY/bin"
BINARIES=(kube-apiserver kubectl etcd helm promtool)
# The Prometheus server (tests/it/dashboard.rs scrapes a real operator with it) has its own wrapper module and
# cache key, so adding or bumping it never rebuilds the binaries above; it is linked into $BINDIR.
PROMSRV_BINDIR="$CACHE_ROOT/kubebins/prometheus-$(cd "$HERE" && cat prometheus/go.mod prometheus/go.sum |
  sha256sum | cut -c1-10)_${GOVER}_r${RECIPE}/bin"

# The node binaries: a key of their own, so adding them changed nothing for the binaries above.
NODE_RECIPE=1
CONTAINERD_VERSION=v2.4.2
CRICTL_VERSION=v1.37.0
node_src_hash() {
  (
    cd "$HERE"
    echo "recipe=$NODE_RECIPE containerd=$CONTAINERD_VERSION crictl=$CRICTL_VERSION"
    cat node/go.mod node/go.sum
  ) | sha256sum | cut -c1-10
}
NODE_K8S_MODV="$(modver node k8s.io/kubernetes)"
[[ "$NODE_K8S_MODV" == "$K8S_MODV" ]] || die "node/go.mod pins k8s.io/kubernetes $NODE_K8S_MODV but k8s/go.mod $K8S_MODV"
NODE_KEY="node-k8s-${K8S_VERSION}_containerd-${CONTAINERD_VERSION#v}_${GOVER}_$(node_src_hash)"
NODE_BINDIR="$CACHE_ROOT/kubebins/$NODE_KEY/bin"
NODE_BINARIES=(kubelet kube-controller-manager kube-scheduler kube-proxy containerd containerd-shim-runc-v2 ctr crictl pause)

MODE=default
if [[ "${1:-}" == "node" ]]; then
  MODE=node
  shift
  BINDIR="$NODE_BINDIR"
  BINARIES=("${NODE_BINARIES[@]}")
fi
if [[ "${1:-}" == "--print-bindir" ]]; then
  printf '%s\n' "$BINDIR"
  exit 0
elif [[ $# -gt 0 ]]; then
  die "usage: $0 [node] [--print-bindir]"
fi

all_present() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$BINDIR/$b" ]] || return 1; done
}

if all_present && { [[ "$MODE" == node ]] || [[ -x "$BINDIR/prometheus" ]]; }; then
  printf '%s\n' "$BINDIR"
  exit 0
fi

# Go's own minimum version check (go.mod "go" lines) with a clearer message.
need_go="1.26.7"
have_go="${GOVER#go}"
if [[ "$(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -1)" != "$need_go" ]]; then
  die "Go >= $need_go is required (found $GOVER)"
fi

mkdir -p "$BINDIR" "$PROMSRV_BINDIR" "$CACHE_ROOT/go/mod" "$CACHE_ROOT/go/build"

# Serialize concurrent builders of the same key (e.g. two test binaries
# bringing up control planes at the same time).
exec 9>"$BINDIR/.lock"
if ! flock -n 9; then
  log "another build.sh is building $BINDIR; waiting for it"
  flock 9
fi

export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -modcacherw -buildvcs=false"
export GOWORK=off
unset GOOS GOARCH

build_one() { # <name> <wrapper dir> <package> <ldflags> [extra go build args...]
  local name="$1" dir="$2" pkg="$3" ldflags="$4"
  shift 4
  if [[ -x "$BINDIR/$name" ]]; then
    log "$name: present"
    return 0
  fi
  log "$name: building $pkg (module dir $dir) ..."
  local start tmp
  start="$(date +%s)"
  tmp="$BINDIR/.$name.tmp.$$"
  rm -f "$tmp"
  if ! (cd "$HERE/$dir" && go build -trimpath "$@" -ldflags "-s -w $ldflags" -o "$tmp" "$pkg") >&2; then
    rm -f "$tmp"
    die "$name: go build failed"
  fi
  mv -f "$tmp" "$BINDIR/$name"
  log "$name: built in $(( $(date +%s) - start ))s"
}

k8s_ldflags=""
for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  k8s_ldflags+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=$K8S_MAJOR -X $p.gitMinor=$K8S_MINOR"
  k8s_ldflags+=" -X $p.gitTreeState=clean"
done

helm_ldflags="-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$HELM_K8S_MINOR"
done

prom_ldflags="-X github.com/prometheus/common/version.Version=$PROM_VERSION"
prom_ldflags+=" -X github.com/prometheus/common/version.Revision=$PROM_MODV"
prom_ldflags+=" -X github.com/prometheus/common/version.Branch=HEAD"
prom_ldflags+=" -X github.com/prometheus/common/version.BuildUser=datastorage@kubebins"

# etcd's version is a compile-time constant; only GitSHA is settable and the
# module zip carries no commit, so it keeps its "Not provided" default.
etcd_ldflags=""

log "bin dir: $BINDIR"
if [[ "$MODE" == node ]]; then
  # containerd's and cri-tools' own modules (their go.mod and go.sum pin their dependencies); cgo as upstream
  # builds containerd.
  go_install() { # name package@version ldflags
    [[ -x "$BINDIR/$1" ]] && { log "$1: present"; return 0; }
    log "$1: go install $2 ..."
    local start tmpbin
    start="$(date +%s)"
    tmpbin="$BINDIR/.gobin.$$"
    mkdir -p "$tmpbin"
    (cd / && CGO_ENABLED=1 GOBIN="$tmpbin" go install -trimpath -ldflags "-s -w $3" "$2") >&2 ||
      { rm -rf "$tmpbin"; die "$1: go install failed"; }
    mv -f "$tmpbin/$1" "$BINDIR/$1"
    rm -rf "$tmpbin"
    log "$1: built in $(( $(date +%s) - start ))s"
  }
  for b in containerd containerd-shim-runc-v2 ctr; do
    go_install "$b" "github.com/containerd/containerd/v2/cmd/$b@$CONTAINERD_VERSION" \
      "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
  done
  go_install crictl "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
  # The sandbox ("pause") binary, from the same k8s.io/kubernetes module as the kubelet.
  if [[ ! -x "$BINDIR/pause" ]]; then
    pause_c="$(cd "$HERE/node" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
    [[ -f "$pause_c" ]] || (cd "$HERE/node" && go mod download k8s.io/kubernetes) >&2
    [[ -f "$pause_c" ]] || die "pause: no $pause_c"
    command -v gcc >/dev/null || die "pause: gcc is missing (make setup-node installs it)"
    log "pause: gcc -Os -static $pause_c"
    gcc -Os -Wall -Werror -static -DVERSION="v$K8S_VERSION" -o "$BINDIR/.pause.tmp" "$pause_c" >&2 || die "pause: gcc failed"
    strip "$BINDIR/.pause.tmp" 2>/dev/null || true
    mv -f "$BINDIR/.pause.tmp" "$BINDIR/pause"
  fi
  # The kubelet takes ~11 min cold on 2 cores (kube-controller-manager ~5, the others <1).
  build_one kube-scheduler          node k8s.io/kubernetes/cmd/kube-scheduler          "$k8s_ldflags"
  build_one kube-proxy              node k8s.io/kubernetes/cmd/kube-proxy              "$k8s_ldflags"
  build_one kube-controller-manager node k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
  build_one kubelet                 node k8s.io/kubernetes/cmd/kubelet                 "$k8s_ldflags"
  all_present || die "some binaries are missing in $BINDIR"
  printf '%s\n' "$BINDIR"
  exit 0
fi
build_one etcd           etcd     go.etcd.io/etcd/server/v3              "$etcd_ldflags"
build_one kube-apiserver k8s      k8s.io/kubernetes/cmd/kube-apiserver   "$k8s_ldflags"
build_one kubectl        k8s      k8s.io/kubernetes/cmd/kubectl          "$k8s_ldflags"
build_one helm           helm     helm.sh/helm/v3/cmd/helm               "$helm_ldflags"
# promtool is only used for rule checks/unit tests: leave out the cloud
# service-discovery plugins (Prometheus' own remove_all_sd build tag; keeps
# kubernetes SD), which saves ~250 packages (Azure/AWS/GCE/... SDKs).
build_one promtool       promtool github.com/prometheus/prometheus/cmd/promtool "$prom_ldflags" \
  -tags netgo,remove_all_sd,enable_kubernetes_sd

# The server: without the cloud service discovery plugins (the tests configure static targets) and without the
# web UI's embedded assets (the HTTP API is all the tests use).
BINDIR="$PROMSRV_BINDIR" build_one prometheus prometheus github.com/prometheus/prometheus/cmd/prometheus \
  "$prom_ldflags" -tags netgo,remove_all_sd
ln -sfn "$PROMSRV_BINDIR/prometheus" "$BINDIR/prometheus"

all_present || die "some binaries are missing in $BINDIR"
printf '%s\n' "$BINDIR"
