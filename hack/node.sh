#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for `make demo` and the cluster suite: etcd + kube-apiserver
# (hack/cp.sh, bound to the node's bridge address so pods reach it), kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy (iptables), containerd 2 with runc, and the CNI bridge plugin. Everything lives under one
# state dir; `down` stops it all and restores the host (sysctls, iptables, bridge, mounts, netns, cgroups, files).
#
# Usage: NODE_DIR=/some/dir hack/node.sh up|down|env|status|check-clean
#   up           build/reuse the binaries (hack/kubebins/build.sh and build.sh node), prepare the host, start
#                everything, wait for the node to be Ready. Last stdout line: the admin kubeconfig path.
#                A no-op (prints the kubeconfig) when this NODE_DIR's node already runs.
#   down         stop everything and restore the host. Idempotent.
#   env          print `export KUBECONFIG=… PATH=…` for this node
#   status       print what runs; exit 0 when the node runs, 3 otherwise
#   check-clean  exit 1 (listing what) if anything a node leaves on the host is present: the bridge, our
#                iptables chains, mounts or netns under NODE_DIR, our cgroups, or a changed sysctl
#
# Environment:
#   NODE_DIR          state dir (default: ${TMPDIR:-/tmp}/datastorage-node-<hash of this checkout's path>)
#   NODE_READY_TIMEOUT seconds to wait for the node to be Ready (default 180)
#
# One node per machine: the bridge (cni0, 10.244.0.1/24), the Service range (10.96.0.0/24), the cgroup root and the
# kube-proxy/kubelet iptables chains are machine-wide, so `up` takes /run/datastorage-node.lock and records which
# NODE_DIR owns the host; a second `up` elsewhere fails with that path.
#
# Network containment (pods reach only this machine): the bridge is the pods' gateway, but IPAM gives them no
# default route (routes: the Service range only), FORWARD guards drop anything forwarded between the bridge and any
# other interface, ipMasq is never set, and `down` restores net.ipv4.ip_forward. Tests talk only to loopback and to
# the bridge/pod addresses. NetworkPolicies are accepted by the API but NOT enforced by the bridge CNI.
#
# Pitfalls of this machine kind handled here (see docs/local-node.md): no CAP_SYS_RESOURCE (containerd
# restrict_oom_score_adj, kubelet oomScoreAdj 0), hybrid cgroups (runc, failCgroupV1: false, a pre-created cgroup
# root in every v1 hierarchy), the kubelet's sysctls (protectKernelDefaults: false) and its leftover iptables chains.
set -Eeuo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$HACK_DIR/.." && pwd)"
checkout_hash="$(printf '%s' "$REPO_DIR" | sha256sum | cut -c1-8)"
NODE_DIR="${NODE_DIR:-${TMPDIR:-/tmp}/datastorage-node-$checkout_hash}"
case "$NODE_DIR" in /*) ;; *) NODE_DIR="$PWD/$NODE_DIR" ;; esac
NODE_DIR="$(realpath -m -- "$NODE_DIR")"
case "$NODE_DIR" in / | /tmp | /var/tmp | "${HOME:-/root}" | /root | /home) echo "[node] refusing NODE_DIR=$NODE_DIR" >&2; exit 1 ;; esac
NODE_READY_TIMEOUT="${NODE_READY_TIMEOUT:-180}"

NODE_NAME=datastorage-node
BRIDGE=cni0
GATEWAY=10.244.0.1
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SVC_IP=10.96.0.1
CGROUP_ROOT=datastorage-node
FWD_CHAIN=DATASTORAGE-NODE-FWD
PAUSE_IMAGE=localhost/datastorage/pause:1
HOST_LOCK=/run/datastorage-node.lock
HOST_OWNER=/run/datastorage-node.owner
# Host sysctls the kubelet (protectKernelDefaults: false), the bridge plugin (isGateway) or kube-proxy may change.
SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
# Paths outside NODE_DIR that the kubelet, containerd or libcni write regardless of their configured roots; removed at
# `down` when they did not exist before `up`.
OUTSIDE_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /run/netns
  /usr/libexec/kubernetes /etc/cni)

# hack/cp.sh's process, port and certificate helpers; its own state lives in $NODE_DIR/cp.
export CP_DIR="$NODE_DIR/cp"
# shellcheck source=hack/cp.sh
source "$HACK_DIR/cp.sh"
set -Eeuo pipefail
log() { printf '[node] %s\n' "$*" >&2; }
die() { printf '[node] ERROR: %s\n' "$*" >&2; exit 1; }

P="$NODE_DIR/proc" # pid files and logs of the node's processes
nstart() { CP_DIR="$P" start_proc "$@"; }
nstop() { CP_DIR="$P" stop_proc "$@"; }
nrunning() { CP_DIR="$P" running "$1"; }

KUBECONFIG_PATH_NODE="$NODE_DIR/kubeconfig"

# --------------------------------------------------------------------------------------------------------------------
# host state: sysctls, outside paths, iptables, bridge, cgroups

save_host_state() {
  local s f="$NODE_DIR/host.sysctl" p
  : >"$f"
  for s in "${SYSCTLS[@]}"; do
    if [[ -e "/proc/sys/${s//.//}" ]]; then printf '%s=%s\n' "$s" "$(sysctl -n "$s")" >>"$f"; fi
  done
  : >"$NODE_DIR/host.paths"
  for p in "${OUTSIDE_PATHS[@]}"; do
    [[ -e "$p" ]] || echo "$p" >>"$NODE_DIR/host.paths"
  done
  iptables-save 2>/dev/null | grep -v '^[#:]' | sed 's/\[[0-9:]*\]//' | sort >"$NODE_DIR/host.iptables" || true
}

restore_sysctls() {
  local f="$NODE_DIR/host.sysctl" line
  [[ -f "$f" ]] || return 0
  while IFS= read -r line; do
    [[ -n "$line" ]] || continue
    sysctl -q -w "$line" >/dev/null 2>&1 || log "could not restore sysctl $line"
  done <"$f"
}

changed_sysctls() { # prints the saved sysctls whose current value differs
  local f="$NODE_DIR/host.sysctl" line k v
  [[ -f "$f" ]] || return 0
  while IFS='=' read -r k v; do
    [[ -n "$k" ]] || continue
    [[ "$(sysctl -n "$k" 2>/dev/null)" == "$v" ]] || echo "sysctl $k=$(sysctl -n "$k" 2>/dev/null) (was $v)"
  done <"$f"
}

# Guards: nothing is forwarded between the bridge and any other interface (pods have no default route either).
add_forward_guards() {
  iptables -N "$FWD_CHAIN" 2>/dev/null || iptables -F "$FWD_CHAIN"
  iptables -A "$FWD_CHAIN" -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  iptables -A "$FWD_CHAIN" -o "$BRIDGE" ! -i "$BRIDGE" -j DROP
  # First in FORWARD (kube-proxy prepends its own jumps later: pin ours first again then).
  while iptables -D FORWARD -j "$FWD_CHAIN" 2>/dev/null; do :; done
  iptables -I FORWARD 1 -j "$FWD_CHAIN"
}

# Every KUBE-* chain (the kubelet's KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT and whatever kube-proxy
# --cleanup left) and our guard chain, in iptables and ip6tables. Only this node runs Kubernetes on this machine
# (the host lock), so every KUBE-* chain is ours.
remove_iptables() {
  local ipt table rule chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$ipt" -t "$table" -S >/dev/null 2>&1 || continue
      # Rules in any chain that jump to ours.
      while IFS= read -r rule; do
        # shellcheck disable=SC2086 # the rule is iptables -S output: words
        "$ipt" -t "$table" ${rule/#-A/-D} 2>/dev/null || true
      done < <("$ipt" -t "$table" -S 2>/dev/null | grep -E -- "^-A .* -j (KUBE-[A-Z0-9-]+|$FWD_CHAIN)( |$)" || true)
      while IFS= read -r chain; do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done < <("$ipt" -t "$table" -S 2>/dev/null | awk -v c="$FWD_CHAIN" '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 == c) {print $2}')
      while IFS= read -r chain; do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || log "could not delete $ipt -t $table chain $chain"
      done < <("$ipt" -t "$table" -S 2>/dev/null | awk -v c="$FWD_CHAIN" '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 == c) {print $2}')
    done
  done
}

our_chains() {
  local ipt table
  for ipt in iptables ip6tables; do
    for table in filter nat mangle raw; do
      "$ipt" -t "$table" -S 2>/dev/null | awk -v c="$FWD_CHAIN" -v t="$ipt -t $table" \
        '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 == c) {print t " chain " $2}'
    done
  done
}

v1_hierarchies() {
  local d
  for d in /sys/fs/cgroup/*/; do
    d="${d%/}"
    [[ -f "$d/cgroup.procs" ]] || continue
    echo "$d"
  done
}

make_cgroups() {
  local h
  while IFS= read -r h; do
    mkdir -p "$h/$CGROUP_ROOT"
    if [[ -f "$h/cpuset.cpus" && -f "$h/$CGROUP_ROOT/cpuset.cpus" ]]; then
      [[ -n "$(cat "$h/$CGROUP_ROOT/cpuset.cpus")" ]] || cat "$h/cpuset.cpus" >"$h/$CGROUP_ROOT/cpuset.cpus"
      [[ -n "$(cat "$h/$CGROUP_ROOT/cpuset.mems")" ]] || cat "$h/cpuset.mems" >"$h/$CGROUP_ROOT/cpuset.mems"
    fi
  done < <(v1_hierarchies)
}

remove_cgroups() {
  local h d pid
  while IFS= read -r h; do
    [[ -d "$h/$CGROUP_ROOT" ]] || continue
    # Anything still inside (there should be nothing once containerd's shims are gone) is killed first.
    while IFS= read -r pid; do
      [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true
    done < <(find "$h/$CGROUP_ROOT" -name cgroup.procs -exec cat {} + 2>/dev/null)
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      while IFS= read -r d; do rmdir "$d" 2>/dev/null || true; done < <(find "$h/$CGROUP_ROOT" -depth -type d 2>/dev/null)
      [[ -d "$h/$CGROUP_ROOT" ]] || break
      sleep 0.3
    done
    [[ -d "$h/$CGROUP_ROOT" ]] && log "could not remove cgroup $h/$CGROUP_ROOT"
  done < <(v1_hierarchies)
  return 0
}

our_mounts() { # mount points under NODE_DIR or /run/netns/cni-*, deepest first
  awk '{print $5}' /proc/self/mountinfo | while IFS= read -r m; do
    m="$(printf '%b' "$m")"
    case "$m" in "$NODE_DIR" | "$NODE_DIR"/* | /run/netns/cni-* | /var/lib/kubelet/*) echo "$m" ;; esac
  done | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-
}

unmount_all() {
  local m i
  for i in 1 2 3; do
    while IFS= read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(our_mounts)
    [[ -z "$(our_mounts)" ]] && return 0
    sleep 0.5
  done
  log "mounts left: $(our_mounts | tr '\n' ' ')"
}

# --------------------------------------------------------------------------------------------------------------------
# configuration files

b64() { base64 -w0 <"$1"; }

sign_client() { # name subject  -> $NODE_DIR/pki/name.{crt,key}, signed by hack/cp.sh's CA
  local d="$NODE_DIR/pki" sans="${3:-}"
  (
    cd "$d"
    umask 077
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key" 2>/dev/null
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    {
      echo "basicConstraints=critical,CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=clientAuth,serverAuth"
      [[ -n "$sans" ]] && echo "subjectAltName=$sans"
    } >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$CP_DIR/ca.crt" -CAkey "$CP_DIR/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -sha256 -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  ) || die "could not sign the $1 certificate"
}

write_component_kubeconfig() { # name -> $NODE_DIR/pki/name.kubeconfig
  local n="$1"
  (
    umask 077
    cat >"$NODE_DIR/pki/$n.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: node
  cluster:
    server: https://$GATEWAY:$APISERVER_PORT
    certificate-authority-data: $(b64 "$CP_DIR/ca.crt")
users:
- name: $n
  user:
    client-certificate-data: $(b64 "$NODE_DIR/pki/$n.crt")
    client-key-data: $(b64 "$NODE_DIR/pki/$n.key")
contexts:
- name: node
  context: {cluster: node, user: $n, namespace: default}
current-context: node
EOF
  )
}

write_containerd_config() {
  local c="$NODE_DIR/containerd"
  mkdir -p "$c"
  cat >"$c/config.toml" <<EOF
version = 3
root = "$c/root"
state = "$c/state"
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[debug]
  address = "$c/debug.sock"
  level = "info"
[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$c/opt"
  [plugins."io.containerd.image-verifier.v1.bindir"]
    bin_dir = "$c/image-verifier"
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "$PAUSE_IMAGE"
  [plugins."io.containerd.cri.v1.runtime"]
    disable_apparmor = true
    # Root has no CAP_SYS_RESOURCE here: without this every sandbox fails ("can't get final child's PID from pipe").
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = "$RUNC"
          Root = "$c/runc"
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["$CNI_BIN_DIR"]
      conf_dir = "$NODE_DIR/cni/net.d"
EOF
}

write_cni_config() {
  mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
  # No default route for pods (the Service range only); never ipMasq.
  cat >"$NODE_DIR/cni/net.d/10-bridge.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "datastorage-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$GATEWAY"}]],
        "dataDir": "$NODE_DIR/cni/ipam",
        "routes": [{"dst": "$SERVICE_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
}

write_kubelet_config() {
  mkdir -p "$NODE_DIR/kubelet/manifests" "$NODE_DIR/kubelet/pod-logs" "$NODE_DIR/kubelet/volume-plugins"
  cat >"$NODE_DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix://$NODE_DIR/containerd/containerd.sock
imageServiceEndpoint: unix://$NODE_DIR/containerd/containerd.sock
staticPodPath: $NODE_DIR/kubelet/manifests
podLogsDir: $NODE_DIR/kubelet/pod-logs
volumePluginDir: $NODE_DIR/kubelet/volume-plugins
address: $GATEWAY
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  x509: {clientCAFile: $CP_DIR/ca.crt}
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
failSwapOn: false
oomScoreAdj: 0
protectKernelDefaults: false
makeIPTablesUtilChains: true
serializeImagePulls: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
clusterDomain: cluster.local
registerNode: true
maxPods: 60
EOF
}

write_proxy_config() {
  cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $NODE_DIR/pki/proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $CLUSTER_CIDR
bindAddress: $GATEWAY
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: ["$GATEWAY/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false}
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

write_node_state() {
  cat >"$NODE_DIR/node.state" <<EOF
BINDIR=$(printf '%q' "$BINDIR")
NODE_BINDIR=$(printf '%q' "$NODE_BINDIR")
APISERVER_PORT=$APISERVER_PORT
EOF
  {
    printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_PATH_NODE"
    # shellcheck disable=SC2016 # expanded when sourced
    printf 'export PATH=%q:%q:"$PATH"\n' "$BINDIR" "$NODE_BINDIR"
    printf 'export CONTAINERD_ADDRESS=%q CONTAINERD_NAMESPACE=k8s.io\n' "$NODE_DIR/containerd/containerd.sock"
    printf 'export CONTAINER_RUNTIME_ENDPOINT=%q\n' "unix://$NODE_DIR/containerd/containerd.sock"
  } >"$NODE_DIR/env"
}

kc() { "$BINDIR/kubectl" --kubeconfig="$KUBECONFIG_PATH_NODE" --request-timeout=20s "$@"; }

# --------------------------------------------------------------------------------------------------------------------
# up

find_tools() {
  RUNC="$(command -v runc || true)"
  [[ -x "$RUNC" ]] || die "runc is missing: run 'make setup-node' (Debian package runc)"
  CNI_BIN_DIR=/usr/lib/cni
  [[ -x "$CNI_BIN_DIR/bridge" && -x "$CNI_BIN_DIR/host-local" && -x "$CNI_BIN_DIR/loopback" && -x "$CNI_BIN_DIR/portmap" ]] ||
    die "CNI plugins are missing in $CNI_BIN_DIR: run 'make setup-node' (Debian package containernetworking-plugins)"
  local t
  for t in iptables ip6tables conntrack buildah; do
    command -v "$t" >/dev/null || die "$t is missing: run 'make setup-node'"
  done
}

take_host() {
  exec 8>"$HOST_LOCK"
  flock -n 8 || die "another hack/node.sh is bringing a node up or down on this machine"
  if [[ -s "$HOST_OWNER" ]]; then
    local owner
    owner="$(cat "$HOST_OWNER")"
    if [[ "$owner" != "$NODE_DIR" ]]; then
      if [[ -e "$owner/.datastorage-node" ]]; then
        die "a node from $owner owns this machine (one node per machine: 'NODE_DIR=$owner hack/node.sh down' first)"
      fi
      log "note: stale owner record ($owner is gone); taking over"
    fi
  fi
  echo "$NODE_DIR" >"$HOST_OWNER"
}

build_pause_image() {
  # The sandbox image: scratch + the static pause binary, imported into the node's containerd.
  local b="$NODE_DIR/buildah" tar="$NODE_DIR/pause.tar"
  local -a bah=(buildah --root "$b/root" --runroot "$b/runroot" --storage-driver overlay)
  local ctr
  ctr="$("${bah[@]}" from scratch)"
  "${bah[@]}" copy "$ctr" "$NODE_BINDIR/pause" /pause >/dev/null
  "${bah[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  "${bah[@]}" commit -q "$ctr" "$PAUSE_IMAGE" >/dev/null
  "${bah[@]}" push -q "$PAUSE_IMAGE" "oci-archive:$tar:$PAUSE_IMAGE" >/dev/null
  "${bah[@]}" rm -a >/dev/null
  "${bah[@]}" rmi -a -f >/dev/null 2>&1 || true
  # buildah's overlay storage leaves a mount of its own root; drop it.
  umount "$b/root/overlay" 2>/dev/null || true
  rm -rf "$b"
  ctr_import "$tar"
  rm -f "$tar"
}

ctr_import() { # oci-archive tar -> k8s.io namespace of the node's containerd
  "$NODE_BINDIR/ctr" --address "$NODE_DIR/containerd/containerd.sock" -n k8s.io images import \
    --no-unpack=false --local "$1" >/dev/null 2>&1 ||
    "$NODE_BINDIR/ctr" --address "$NODE_DIR/containerd/containerd.sock" -n k8s.io images import "$1" >&2
}

wait_for() { # description seconds command...
  local what="$1" secs="$2" deadline
  shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out after ${secs}s waiting for $what"; return 1; }
    sleep 0.5
  done
}

proc_alive_or_die() {
  nrunning "$1" && return 0
  log "$1 exited; last lines of $P/$1.log:"
  tail -n 30 "$P/$1.log" >&2 || true
  return 1
}

# ERR trap of `up`: keep the logs beside NODE_DIR, tear everything down.
up_failed() {
  trap - ERR
  set +e
  log "up failed; tearing down (logs kept in ${NODE_DIR}.failed-logs)"
  rm -rf "${NODE_DIR}.failed-logs"
  cp -a "$P" "${NODE_DIR}.failed-logs" 2>/dev/null
  cp "$CP_DIR"/*.log "${NODE_DIR}.failed-logs/" 2>/dev/null
  cmd_down_locked
  exit 1
}

cmd_up() {
  if [[ -e "$NODE_DIR/.datastorage-node" && -f "$NODE_DIR/node.state" ]] && nrunning kubelet && nrunning containerd; then
    # shellcheck disable=SC1091
    source "$NODE_DIR/node.state"
    echo "$KUBECONFIG_PATH_NODE"
    return 0
  fi
  [[ "$(id -u)" -eq 0 ]] || die "hack/node.sh needs root (network namespaces, bridge, iptables, cgroups, mounts)"
  find_tools
  BINDIR="$("$HACK_DIR/kubebins/build.sh" --print-bindir)"
  [[ -x "$BINDIR/kubectl" ]] || BINDIR="$("$HACK_DIR/kubebins/build.sh" | tail -n1)"
  NODE_BINDIR="$(nice -n 19 "$HACK_DIR/kubebins/build.sh" node | tail -n1)"
  take_host
  if [[ -e "$NODE_DIR" ]]; then
    log "removing the leftovers of an earlier node in $NODE_DIR"
    cmd_down_locked
  fi
  mkdir -p "$NODE_DIR" "$P" "$NODE_DIR/pki"
  chmod 700 "$NODE_DIR"
  : >"$NODE_DIR/.datastorage-node"
  local t0=$SECONDS
  save_host_state
  trap up_failed ERR

  log "bridge $BRIDGE $GATEWAY, forward guards, cgroup root /$CGROUP_ROOT"
  ip link add "$BRIDGE" type bridge
  ip addr add "$GATEWAY/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  add_forward_guards
  make_cgroups

  log "etcd + kube-apiserver on $GATEWAY (hack/cp.sh, state in $CP_DIR)"
  # --enable-aggregator-routing: the API server runs on the host, outside cluster DNS; with it, admission webhooks
  # behind a Service (the operator's) are called at their endpoints' pod IPs, which the host routes over the bridge.
  CP_BIND_ADDRESS="$GATEWAY" CP_AUTHORIZATION_MODE=Node,RBAC CP_EXTRA_SANS="IP:$GATEWAY,IP:$KUBERNETES_SVC_IP" \
    CP_APISERVER_EXTRA_ARGS="--service-cluster-ip-range=$SERVICE_CIDR
--endpoint-reconciler-type=lease
--kubelet-client-certificate=$CP_DIR/admin.crt
--kubelet-client-key=$CP_DIR/admin.key
--kubelet-preferred-address-types=InternalIP
--enable-aggregator-routing=true" \
    "$HACK_DIR/cp.sh" up >/dev/null
  # shellcheck disable=SC1091
  source "$CP_DIR/state"
  cp "$CP_DIR/kubeconfig" "$KUBECONFIG_PATH_NODE"
  write_node_state

  log "certificates and kubeconfigs of the node's components"
  sign_client kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "IP:$GATEWAY,DNS:$NODE_NAME"
  sign_client controller-manager "/CN=system:kube-controller-manager"
  sign_client scheduler "/CN=system:kube-scheduler"
  sign_client proxy "/CN=system:kube-proxy"
  local n
  for n in kubelet controller-manager scheduler proxy; do write_component_kubeconfig "$n"; done

  KCM_PORT="$(free_port)"
  SCHED_PORT="$(free_port)"
  KUBELET_PORT="$(free_port)"
  KUBELET_HEALTHZ_PORT="$(free_port)"
  PROXY_HEALTHZ_PORT="$(free_port)"
  PROXY_METRICS_PORT="$(free_port)"

  log "containerd $("$NODE_BINDIR/containerd" --version | awk '{print $3}'), runc $("$RUNC" --version | awk 'NR==1 {print $3}')"
  write_containerd_config
  write_cni_config
  PATH="$NODE_BINDIR:$PATH" nstart containerd "$NODE_BINDIR/containerd" --config "$NODE_DIR/containerd/config.toml"
  wait_for "containerd" 60 "$NODE_BINDIR/ctr" --address "$NODE_DIR/containerd/containerd.sock" version ||
    { proc_alive_or_die containerd; false; }
  build_pause_image

  log "kube-controller-manager, kube-scheduler"
  nstart kube-controller-manager "$NODE_BINDIR/kube-controller-manager" \
    --kubeconfig="$NODE_DIR/pki/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$NODE_DIR/pki/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$NODE_DIR/pki/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --leader-elect=false \
    --use-service-account-credentials=true --service-account-private-key-file="$CP_DIR/sa.key" \
    --root-ca-file="$CP_DIR/ca.crt" --cluster-signing-cert-file="$CP_DIR/ca.crt" \
    --cluster-signing-key-file="$CP_DIR/ca.key" --allocate-node-cidrs=false \
    --service-cluster-ip-range="$SERVICE_CIDR" --v=1
  nstart kube-scheduler "$NODE_BINDIR/kube-scheduler" \
    --kubeconfig="$NODE_DIR/pki/scheduler.kubeconfig" \
    --authentication-kubeconfig="$NODE_DIR/pki/scheduler.kubeconfig" \
    --authorization-kubeconfig="$NODE_DIR/pki/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --leader-elect=false --v=1

  log "kubelet ($NODE_NAME on $GATEWAY)"
  write_kubelet_config
  PATH="$NODE_BINDIR:$PATH" nstart kubelet "$NODE_BINDIR/kubelet" --config="$NODE_DIR/kubelet/config.yaml" \
    --kubeconfig="$NODE_DIR/pki/kubelet.kubeconfig" --root-dir="$NODE_DIR/kubelet/root" \
    --cert-dir="$NODE_DIR/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$GATEWAY" --v=1

  log "kube-proxy (iptables)"
  kc create clusterrolebinding datastorage-node-proxier --clusterrole=system:node-proxier \
    --user=system:kube-proxy >/dev/null
  write_proxy_config
  nstart kube-proxy "$NODE_BINDIR/kube-proxy" --config="$NODE_DIR/kube-proxy.yaml" --v=1

  log "waiting for node $NODE_NAME to be Ready"
  local deadline=$((SECONDS + NODE_READY_TIMEOUT)) c
  while :; do
    for c in containerd kube-controller-manager kube-scheduler kubelet kube-proxy; do proc_alive_or_die "$c"; done
    [[ "$(kc get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]] && break
    ((SECONDS < deadline)) || { log "node not Ready after ${NODE_READY_TIMEOUT}s"; kc describe node "$NODE_NAME" >&2 || true; false; }
    sleep 1
  done
  wait_for "the default ServiceAccount" 60 kc -n default get serviceaccount default
  wait_for "kube-proxy's rules" 60 iptables -t nat -C PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
  add_forward_guards # first in FORWARD again, before kube-proxy's jumps
  trap - ERR
  log "node ready in $((SECONDS - t0))s: export KUBECONFIG=$KUBECONFIG_PATH_NODE (or: eval \"\$(hack/node.sh env)\")"
  echo "$KUBECONFIG_PATH_NODE"
}

# --------------------------------------------------------------------------------------------------------------------
# down

# Teardown runs every step even when one fails (a subshell with errexit off), so a half-broken node still leaves
# nothing behind; its exit status is that of the safety checks only.
cmd_down_locked() { (
  set +eE
  trap - ERR
  down_steps
); }

down_steps() {
  [[ -e "$NODE_DIR" ]] || return 0
  [[ -e "$NODE_DIR/.datastorage-node" ]] || {
    [[ -d "$NODE_DIR" && -z "$(ls -A "$NODE_DIR")" ]] && { rmdir "$NODE_DIR"; return 0; }
    die "NODE_DIR=$NODE_DIR was not created by $0; refusing to remove it"
  }
  # shellcheck disable=SC1091
  [[ -f "$NODE_DIR/node.state" ]] && source "$NODE_DIR/node.state"
  local sock="$NODE_DIR/containerd/containerd.sock"
  # 1. the kubelet first (it would restart what we remove), then every pod sandbox through CRI, which tears down
  #    the CNI netns and veths.
  nstop kubelet
  if nrunning containerd && [[ -x "${NODE_BINDIR:-}/crictl" ]]; then
    timeout 120 "$NODE_BINDIR/crictl" --runtime-endpoint "unix://$sock" --timeout 60s rmp -fa >/dev/null 2>&1 ||
      log "crictl rmp -fa failed"
  fi
  # 2. kube-proxy, then its own cleanup of its rules.
  nstop kube-proxy
  if [[ -x "${NODE_BINDIR:-}/kube-proxy" ]]; then
    "$NODE_BINDIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  fi
  # 3. everything else.
  nstop kube-scheduler
  nstop kube-controller-manager
  if nrunning containerd; then
    nstop containerd
  fi
  # containerd's shims outlive containerd by design: kill those started for this node (their argv has our socket).
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  CP_DIR="$NODE_DIR/cp" "$HACK_DIR/cp.sh" down >/dev/null 2>&1 || log "hack/cp.sh down failed"
  # 4. host state.
  remove_iptables
  unmount_all
  ip link del "$BRIDGE" 2>/dev/null || true
  # Veths of pods whose sandbox could not be removed die with their netns; any left on the bridge go with it.
  remove_cgroups
  restore_sysctls
  if [[ -f "$NODE_DIR/host.paths" ]]; then
    local p
    while IFS= read -r p; do
      [[ -n "$p" && -e "$p" ]] || continue
      if [[ -n "$(awk -v p="$p" 'index($5, p) == 1' /proc/self/mountinfo)" ]]; then
        log "not removing $p: something is mounted under it"
        continue
      fi
      rm -rf -- "$p"
    done <"$NODE_DIR/host.paths"
  fi
  rm -rf -- "$NODE_DIR"
  [[ -s "$HOST_OWNER" && "$(cat "$HOST_OWNER")" == "$NODE_DIR" ]] && rm -f "$HOST_OWNER"
  return 0
}

cmd_down() {
  [[ -e "$NODE_DIR" ]] || return 0
  exec 8>"$HOST_LOCK"
  flock -w 300 8 || die "another hack/node.sh holds $HOST_LOCK"
  cmd_down_locked
  log "node in $NODE_DIR removed; host restored"
}

cmd_check_clean() {
  local bad=0 m
  if ip link show "$BRIDGE" >/dev/null 2>&1; then echo "bridge $BRIDGE exists"; bad=1; fi
  m="$(our_chains)"; [[ -z "$m" ]] || { echo "$m"; bad=1; }
  m="$(our_mounts)"; [[ -z "$m" ]] || { echo "mounts: $m"; bad=1; }
  m="$(ls /run/netns 2>/dev/null | grep '^cni-' || true)"; [[ -z "$m" ]] || { echo "netns: $m"; bad=1; }
  m="$(ip -br link 2>/dev/null | awk '$1 ~ /^veth/ {print $1}')"; [[ -z "$m" ]] || { echo "veths: $m"; bad=1; }
  for m in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
    if [[ -d "$m" ]]; then echo "cgroup $m"; bad=1; fi
  done
  [[ "$(sysctl -n net.ipv4.ip_forward)" == 0 ]] || { echo "net.ipv4.ip_forward=$(sysctl -n net.ipv4.ip_forward)"; bad=1; }
  m="$(pgrep -af "$NODE_DIR/" || true)"; [[ -z "$m" ]] || { echo "processes: $m"; bad=1; }
  [[ ! -e "$NODE_DIR" ]] || { echo "$NODE_DIR exists"; bad=1; }
  return "$bad"
}

cmd_env() {
  [[ -f "$NODE_DIR/env" ]] || die "no node in $NODE_DIR (run '$0 up')"
  cat "$NODE_DIR/env"
}

cmd_status() {
  echo "node-dir: $NODE_DIR"
  [[ -e "$NODE_DIR/.datastorage-node" ]] || { echo "not running"; return 3; }
  local c ok=0
  for c in containerd kube-controller-manager kube-scheduler kubelet kube-proxy; do
    if nrunning "$c"; then echo "$c: running (pid $(cat "$P/$c.pid"))"; else echo "$c: not running"; ok=3; fi
  done
  CP_DIR="$NODE_DIR/cp" "$HACK_DIR/cp.sh" status || ok=3
  return "$ok"
}

# Sourced: define the functions only.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  check-clean) cmd_check_clean ;;
  *) echo "usage: NODE_DIR=/some/dir $0 up|down|env|status|check-clean" >&2; exit 2 ;;
esac
