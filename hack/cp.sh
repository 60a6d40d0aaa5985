#!/usr/bin/env bash
# Local Kubernetes control plane for tests: etcd + kube-apiserver only (no
# controller-manager, scheduler or kubelet), all on 127.0.0.1, with a throwaway
# CA, x509 admin credentials, RBAC and service-account tokens.
#
# Usage: CP_DIR=/some/dir hack/cp.sh up|down|env|restart-apiserver|status
#
#   up                 build/reuse binaries (hack/kubebins/build.sh), generate
#                      certs, start etcd and kube-apiserver on free loopback
#                      ports, wait for /readyz, write CP_DIR/kubeconfig and
#                      CP_DIR/env. Last stdout line: the kubeconfig path.
#                      No-op (prints the kubeconfig path) if already running.
#   down               stop kube-apiserver and etcd (TERM, KILL after
#                      CP_STOP_GRACE seconds), wait for them, remove CP_DIR.
#                      Idempotent.
#   env                print the contents of CP_DIR/env:
#                        export KUBECONFIG=...; export PATH=<bindir>:$PATH
#                      (use: eval "$(hack/cp.sh env)")
#   restart-apiserver  stop and start kube-apiserver only, same port and flags,
#                      wait for /readyz. The last stdout line is the kubeconfig path.
#   status             print whether each process runs; exit 0 if both run,
#                      3 otherwise.
#
# Environment:
#   CP_DIR             state dir (default ${TMPDIR:-/tmp}/datastorage-cp). Must
#                      not exist, be empty, or be a dir created by this script.
#   CP_READY_TIMEOUT   seconds to wait for /readyz (default 180)
#   CP_STOP_GRACE      seconds between TERM and KILL (default 5)
#   DATASTORAGE_CACHE  binary/Go cache root, see hack/kubebins/build.sh
#   CP_BIND_ADDRESS    address kube-apiserver binds and advertises and the kubeconfig names (default 127.0.0.1;
#                      hack/node.sh passes its bridge address so that pods can reach it); etcd stays on loopback
#   CP_EXTRA_SANS      extra subjectAltNames of the serving cert, e.g. "IP:10.96.0.1,IP:10.244.0.1"
#   CP_APISERVER_EXTRA_ARGS  extra kube-apiserver flags, one per line (a later scalar flag wins over the defaults)
#   CP_AUTHORIZATION_MODE    default RBAC (hack/node.sh: Node,RBAC)
#
# hack/node.sh sources this file for its process and certificate helpers (nothing runs when sourced).
#
# Files in CP_DIR: ca.{crt,key} apiserver.{crt,key} admin.{crt,key} sa.{key,pub}
# kubeconfig env state etcd.pid kube-apiserver.pid kube-apiserver.args
# etcd.log kube-apiserver.log etcd-data/
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CP_DIR="${CP_DIR:-${TMPDIR:-/tmp}/datastorage-cp}"
CP_READY_TIMEOUT="${CP_READY_TIMEOUT:-180}"
CP_STOP_GRACE="${CP_STOP_GRACE:-5}"
MARKER=".datastorage-cp"
CP_BIND_ADDRESS="${CP_BIND_ADDRESS:-127.0.0.1}"
CP_EXTRA_SANS="${CP_EXTRA_SANS:-}"
CP_APISERVER_EXTRA_ARGS="${CP_APISERVER_EXTRA_ARGS:-}"
CP_AUTHORIZATION_MODE="${CP_AUTHORIZATION_MODE:-RBAC}"

log() { printf '[cp] %s\n' "$*" >&2; }
die() { printf '[cp] ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
  echo "usage: CP_DIR=/some/dir $0 up|down|env|restart-apiserver|status" >&2
  exit 2
}

# Absolute, normalized CP_DIR (it may not exist yet).
case "$CP_DIR" in
  /*) ;;
  *) CP_DIR="$PWD/$CP_DIR" ;;
esac
CP_DIR="$(realpath -m -- "$CP_DIR")"
case "$CP_DIR" in
  / | /tmp | /var/tmp | "${HOME:-/root}" | /root | /home) die "refusing to use CP_DIR=$CP_DIR" ;;
esac

KUBECONFIG_PATH="$CP_DIR/kubeconfig"
STATE_FILE="$CP_DIR/state"

# --------------------------------------------------------------------------
# process helpers

# alive PID: the process exists and is not a zombie.
alive() {
  local pid="$1" stat
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat%% *}" != Z ]]
}

pid_of() { # name -> pid from CP_DIR/name.pid (empty if none)
  local f="$CP_DIR/$1.pid"
  if [[ -s "$f" ]]; then cat "$f" 2>/dev/null || true; fi
}

# is_ours NAME PID: PID is alive and was started by us as $BINDIR/NAME
# (protects against pid reuse).
is_ours() {
  local name="$1" pid="$2" argv0
  alive "$pid" || return 1
  argv0="$({ tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null | head -n1)" || return 1
  [[ "$argv0" == */"$name" ]]
}

running() { # name -> 0 if its tracked process runs
  local pid
  pid="$(pid_of "$1")"
  [[ -n "$pid" ]] && is_ours "$1" "$pid"
}

# start_proc NAME ARGV...: start detached (own session, survives the caller),
# stdin from /dev/null, output appended to CP_DIR/NAME.log, pid in CP_DIR/NAME.pid.
start_proc() {
  local name="$1"
  shift
  local pidfile="$CP_DIR/$name.pid"
  rm -f "$pidfile" "$pidfile.tmp"
  # The inner shell records its own pid (it is the session leader, so its pid
  # is also the process group id) then closes inherited fds > 2 (so no pipe
  # of the caller stays open) and execs the binary.
  # shellcheck disable=SC2016 # expanded by the inner shell
  setsid bash -c '
    echo $$ >"$0.tmp" && mv -f "$0.tmp" "$0"
    for fd in /proc/$$/fd/*; do
      fd="${fd##*/}"
      if [[ "$fd" -gt 2 ]]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec "$@"
  ' "$pidfile" "$@" </dev/null >>"$CP_DIR/$name.log" 2>&1 &
  local i
  for ((i = 0; i < 200; i++)); do
    [[ -s "$pidfile" ]] && return 0
    sleep 0.05
  done
  die "$name: did not start (no pid file)"
}

# stop_proc NAME: TERM its process group, KILL after CP_STOP_GRACE s, wait.
stop_proc() {
  local name="$1" pid i
  pid="$(pid_of "$name")"
  if [[ -z "$pid" ]] || ! is_ours "$name" "$pid"; then
    rm -f "$CP_DIR/$name.pid"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < CP_STOP_GRACE * 10; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    log "$name did not exit after ${CP_STOP_GRACE}s; killing"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    alive "$pid" && die "$name (pid $pid) is still running after KILL"
  fi
  # Anything else left in its process group (there should be nothing).
  kill -KILL -- "-$pid" 2>/dev/null || true
  # Wait until the zombie is reaped, so that "pgrep etcd" & co. really come
  # back empty: by us if it is our child (failed "up"), otherwise by its new
  # parent (init; some sandbox inits only reap every second or so).
  wait "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    [[ -e "/proc/$pid" ]] || break
    sleep 0.1
  done
  [[ -e "/proc/$pid" ]] && log "note: $name (pid $pid) has exited but was not reaped yet by its parent"
  rm -f "$CP_DIR/$name.pid"
}

# --------------------------------------------------------------------------
# ports

port_in_use() {
  local p="$1"
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
  fi
}

# A free port below the kernel's ephemeral range (so it cannot collide with
# outgoing connections), chosen at random so concurrent control planes are
# unlikely to race for the same one (a lost race is retried by the caller).
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    port_in_use "$p" || { echo "$p"; return 0; }
  done
  die "no free port found"
}

listening() { # port -> 0 if something accepts TCP connections on 127.0.0.1:port
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_listening NAME PORT: wait until NAME listens on PORT.
# Returns 1 if the process died, 2 on timeout.
wait_listening() {
  local name="$1" port="$2" i pid
  pid="$(pid_of "$name")"
  for ((i = 0; i < 1200; i++)); do
    alive "$pid" || return 1
    if command -v ss >/dev/null 2>&1; then
      # Listening socket owned by our process (if another process holds the
      # port, ours fails to bind and exits, which is detected above).
      ss -Hltnp "( sport = :$port )" 2>/dev/null | grep -q "pid=$pid," && return 0
    elif listening "$port"; then
      alive "$pid" && return 0
    fi
    sleep 0.1
  done
  return 2
}

# --------------------------------------------------------------------------
# certificates

gen_certs() {
  local d="$CP_DIR" days=3650
  (
    cd "$d"
    umask 077
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=datastorage-cp-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -addext "subjectKeyIdentifier=hash" \
      -out ca.crt 2>/dev/null

    sign() { # name subj extfile-content
      openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key" 2>/dev/null
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key \
        -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$days" \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }

    sign apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=IP:127.0.0.1,IP:10.0.0.1${CP_EXTRA_SANS:+,$CP_EXTRA_SANS},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"

    sign admin "/O=system:masters/CN=admin" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"

    # Service-account token signing key pair.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 644 ca.crt apiserver.crt admin.crt sa.pub
  ) || die "certificate generation failed"
}

b64() { base64 -w0 <"$1"; }

write_kubeconfig() {
  local tmp="$KUBECONFIG_PATH.tmp"
  (
    umask 077
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: datastorage-cp
  cluster:
    server: https://${CP_BIND_ADDRESS}:${APISERVER_PORT}
    certificate-authority-data: $(b64 "$CP_DIR/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$CP_DIR/admin.crt")
    client-key-data: $(b64 "$CP_DIR/admin.key")
contexts:
- name: datastorage-cp
  context:
    cluster: datastorage-cp
    user: admin
    namespace: default
current-context: datastorage-cp
EOF
  )
  mv -f "$tmp" "$KUBECONFIG_PATH"
}

write_env() {
  {
    printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_PATH"
    # shellcheck disable=SC2016 # $PATH is expanded when the file is sourced
    printf 'export PATH=%q:"$PATH"\n' "$BINDIR"
  } >"$CP_DIR/env"
}

write_state() {
  cat >"$STATE_FILE" <<EOF
BINDIR=$(printf '%q' "$BINDIR")
ETCD_CLIENT_PORT=$ETCD_CLIENT_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
CP_BIND_ADDRESS=$CP_BIND_ADDRESS
EOF
}

load_state() {
  [[ -f "$STATE_FILE" ]] || return 1
  # shellcheck disable=SC1090
  source "$STATE_FILE"
}

# --------------------------------------------------------------------------
# etcd / kube-apiserver

start_etcd() {
  local url_c="http://127.0.0.1:$ETCD_CLIENT_PORT" url_p="http://127.0.0.1:$ETCD_PEER_PORT"
  start_proc etcd "$BINDIR/etcd" \
    --name=default \
    --data-dir="$CP_DIR/etcd-data" \
    --listen-client-urls="$url_c" \
    --advertise-client-urls="$url_c" \
    --listen-peer-urls="$url_p" \
    --initial-advertise-peer-urls="$url_p" \
    --initial-cluster="default=$url_p" \
    --initial-cluster-state=new \
    --unsafe-no-fsync=true \
    --log-level=warn
}

apiserver_args() {
  cat <<EOF
--bind-address=$CP_BIND_ADDRESS
--advertise-address=$CP_BIND_ADDRESS
--endpoint-reconciler-type=none
--secure-port=$APISERVER_PORT
--etcd-servers=http://127.0.0.1:$ETCD_CLIENT_PORT
--cert-dir=$CP_DIR/apiserver-certs
--tls-cert-file=$CP_DIR/apiserver.crt
--tls-private-key-file=$CP_DIR/apiserver.key
--client-ca-file=$CP_DIR/ca.crt
--authorization-mode=$CP_AUTHORIZATION_MODE
--service-account-issuer=https://kubernetes.default.svc.cluster.local
--service-account-key-file=$CP_DIR/sa.pub
--service-account-signing-key-file=$CP_DIR/sa.key
--service-cluster-ip-range=10.0.0.0/24
--allow-privileged=true
--profiling=false
--v=1
EOF
  if [[ -n "$CP_APISERVER_EXTRA_ARGS" ]]; then printf '%s\n' "$CP_APISERVER_EXTRA_ARGS"; fi
}

start_apiserver() {
  local -a args
  mapfile -t args <"$CP_DIR/kube-apiserver.args"
  start_proc kube-apiserver "$BINDIR/kube-apiserver" "${args[@]}"
}

readyz() {
  "$BINDIR/kubectl" --kubeconfig="$KUBECONFIG_PATH" --request-timeout=5s \
    get --raw=/readyz >/dev/null 2>&1
}

wait_ready() {
  local deadline=$((SECONDS + CP_READY_TIMEOUT)) pid
  pid="$(pid_of kube-apiserver)"
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then
      log "kube-apiserver exited; last lines of $CP_DIR/kube-apiserver.log:"
      tail -n 40 "$CP_DIR/kube-apiserver.log" >&2 || true
      return 1
    fi
    readyz && return 0
    sleep 0.5
  done
  log "kube-apiserver not ready after ${CP_READY_TIMEOUT}s; last lines of $CP_DIR/kube-apiserver.log:"
  tail -n 40 "$CP_DIR/kube-apiserver.log" >&2 || true
  local readyz_verbose
  readyz_verbose=$("$BINDIR/kubectl" --kubeconfig="$KUBECONFIG_PATH" --request-timeout=5s \
    get --raw='/readyz?verbose' 2>&1 | grep -v '\[+\]' || true)
  [[ -n "$readyz_verbose" ]] && printf '%s\n' "$readyz_verbose" >&2
  return 1
}

# --------------------------------------------------------------------------
# commands

prepare_dir() {
  if [[ -e "$CP_DIR" && ! -d "$CP_DIR" ]]; then
    die "CP_DIR=$CP_DIR exists and is not a directory"
  fi
  if [[ -d "$CP_DIR" && ! -e "$CP_DIR/$MARKER" ]] && [[ -n "$(ls -A "$CP_DIR")" ]]; then
    die "CP_DIR=$CP_DIR is a non-empty directory not created by $0; refusing to use it"
  fi
  if [[ -e "$CP_DIR/$MARKER" ]]; then
    # Stale or half-started control plane: stop whatever runs, start afresh.
    log "cleaning stale control plane in $CP_DIR"
    stop_proc kube-apiserver
    stop_proc etcd
    find "$CP_DIR" -mindepth 1 -delete
  fi
  mkdir -p "$CP_DIR"
  chmod 700 "$CP_DIR"
  : >"$CP_DIR/$MARKER"
}

cmd_up() {
  if [[ -e "$CP_DIR/$MARKER" ]] && load_state && running etcd && running kube-apiserver; then
    wait_ready || die "control plane in $CP_DIR runs but is not ready"
    write_env
    echo "$KUBECONFIG_PATH"
    return 0
  fi

  # Only these three are needed here: do not wait for a build of the others (helm, promtool) in progress.
  BINDIR="$("$HACK_DIR/kubebins/build.sh" --print-bindir)"
  [[ -x "$BINDIR/kube-apiserver" && -x "$BINDIR/etcd" && -x "$BINDIR/kubectl" ]] ||
    BINDIR="$("$HACK_DIR/kubebins/build.sh" | tail -n1)"
  [[ -x "$BINDIR/kube-apiserver" && -x "$BINDIR/etcd" && -x "$BINDIR/kubectl" ]] ||
    die "build.sh did not produce binaries in '$BINDIR'"

  prepare_dir
  log "generating certificates in $CP_DIR"
  gen_certs

  local attempt rc
  for attempt in 1 2 3 4 5; do
    ETCD_CLIENT_PORT="$(free_port)"
    ETCD_PEER_PORT="$(free_port)"
    [[ "$ETCD_PEER_PORT" != "$ETCD_CLIENT_PORT" ]] || continue
    rm -rf "$CP_DIR/etcd-data"
    log "starting etcd on 127.0.0.1:$ETCD_CLIENT_PORT (peer $ETCD_PEER_PORT)"
    start_etcd
    rc=0
    wait_listening etcd "$ETCD_CLIENT_PORT" || rc=$?
    if ((rc == 0)); then break; fi
    stop_proc etcd
    if grep -q 'address already in use' "$CP_DIR/etcd.log" 2>/dev/null; then
      log "etcd port collision; retrying with other ports"
      mv -f "$CP_DIR/etcd.log" "$CP_DIR/etcd.log.$attempt"
      continue
    fi
    log "etcd failed to start; last lines of $CP_DIR/etcd.log:"
    tail -n 40 "$CP_DIR/etcd.log" >&2 || true
    die "etcd failed to start"
  done
  running etcd || die "etcd failed to start after retries"

  for attempt in 1 2 3 4 5; do
    APISERVER_PORT="$(free_port)"
    [[ "$APISERVER_PORT" != "$ETCD_CLIENT_PORT" && "$APISERVER_PORT" != "$ETCD_PEER_PORT" ]] || continue
    write_state
    apiserver_args >"$CP_DIR/kube-apiserver.args"
    write_kubeconfig
    log "starting kube-apiserver on https://$CP_BIND_ADDRESS:$APISERVER_PORT"
    start_apiserver
    rc=0
    wait_listening kube-apiserver "$APISERVER_PORT" || rc=$?
    if ((rc == 0)); then break; fi
    stop_proc kube-apiserver
    if grep -q 'address already in use' "$CP_DIR/kube-apiserver.log" 2>/dev/null; then
      log "kube-apiserver port collision; retrying with another port"
      mv -f "$CP_DIR/kube-apiserver.log" "$CP_DIR/kube-apiserver.log.$attempt"
      continue
    fi
    log "kube-apiserver failed to start; last lines of $CP_DIR/kube-apiserver.log:"
    tail -n 40 "$CP_DIR/kube-apiserver.log" >&2 || true
    stop_proc etcd
    die "kube-apiserver failed to start"
  done
  if ! running kube-apiserver; then
    stop_proc etcd
    die "kube-apiserver failed to start after retries"
  fi

  if ! wait_ready; then
    stop_proc kube-apiserver
    stop_proc etcd
    die "kube-apiserver did not become ready (logs kept in $CP_DIR; run '$0 down' to remove)"
  fi
  write_env
  log "control plane ready: KUBECONFIG=$KUBECONFIG_PATH"
  echo "$KUBECONFIG_PATH"
}

cmd_down() {
  if [[ ! -e "$CP_DIR" ]]; then
    return 0
  fi
  if [[ ! -e "$CP_DIR/$MARKER" ]]; then
    [[ -d "$CP_DIR" && -z "$(ls -A "$CP_DIR")" ]] && { rmdir "$CP_DIR"; return 0; }
    die "CP_DIR=$CP_DIR was not created by $0; refusing to remove it"
  fi
  stop_proc kube-apiserver
  stop_proc etcd
  rm -rf -- "$CP_DIR"
  log "control plane in $CP_DIR removed"
}

require_up() {
  if [[ ! -e "$CP_DIR/$MARKER" ]] || ! load_state; then
    die "no control plane in $CP_DIR (run '$0 up')"
  fi
}

cmd_env() {
  require_up
  [[ -f "$CP_DIR/env" ]] || die "control plane in $CP_DIR is not (fully) up"
  cat "$CP_DIR/env"
}

cmd_restart_apiserver() {
  require_up
  running etcd || die "etcd is not running in $CP_DIR"
  stop_proc kube-apiserver
  log "starting kube-apiserver on https://$CP_BIND_ADDRESS:$APISERVER_PORT"
  start_apiserver
  wait_ready || die "kube-apiserver did not become ready after restart"
  log "kube-apiserver restarted"
  echo "$KUBECONFIG_PATH"
}

cmd_status() {
  local ok=0 pid
  echo "cp-dir: $CP_DIR"
  if [[ ! -e "$CP_DIR/$MARKER" ]] || ! load_state; then
    echo "etcd: not running"
    echo "kube-apiserver: not running"
    return 3
  fi
  pid="$(pid_of etcd)"
  if running etcd; then
    echo "etcd: running (pid $pid, http://127.0.0.1:$ETCD_CLIENT_PORT)"
  else
    echo "etcd: not running"
    ok=3
  fi
  pid="$(pid_of kube-apiserver)"
  if running kube-apiserver; then
    local r=ready
    readyz || r="not ready"
    echo "kube-apiserver: running (pid $pid, https://$CP_BIND_ADDRESS:$APISERVER_PORT, $r)"
  else
    echo "kube-apiserver: not running"
    ok=3
  fi
  echo "kubeconfig: $KUBECONFIG_PATH"
  return "$ok"
}

# Sourced (by hack/node.sh): define the functions only.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  restart-apiserver) cmd_restart_apiserver ;;
  status) cmd_status ;;
  *) usage ;;
esac
