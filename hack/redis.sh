#!/usr/bin/env bash
# hack/redis.sh — a throwaway Redis for tests, demos and benchmarks.
#
# Usage: REDIS_DIR=/some/dir hack/redis.sh COMMAND
#   up             install redis-server if missing (apt-get, as root), start on a free
#                  loopback port; last stdout line: the URL. No-op (prints the URL) when
#                  running; starts a stopped instance again on its port.
#   down           stop it and remove REDIS_DIR. Idempotent.
#   url            print the URL of the running instance (exit 1 if not running).
#   stop [kill]    stop it (SIGTERM; `kill`: SIGKILL, like a crash), keep REDIS_DIR and port.
#   start          start it again on the same port; prints the URL.
#   restart        stop + start.
#   status         print state; exit 0 if running, 3 if not.
#
# REDIS_DIR defaults to ${TMPDIR:-/tmp}/datastorage-redis. Layout:
#   REDIS_DIR/redis.conf  bind 127.0.0.1, no persistence (no RDB, no AOF), daemonized
#   REDIS_DIR/redis.pid   pidfile      REDIS_DIR/redis.log  log
#   REDIS_DIR/port        the port     REDIS_DIR/url        redis://127.0.0.1:PORT/
set -euo pipefail

log() { echo "redis.sh: $*" >&2; }
die() { echo "redis.sh: error: $*" >&2; exit 1; }
is_root() { [[ "$(id -u)" -eq 0 ]]; }

REDIS_DIR="${REDIS_DIR:-${TMPDIR:-/tmp}/datastorage-redis}"
[[ "$REDIS_DIR" == /* ]] || REDIS_DIR="$PWD/$REDIS_DIR"
REDIS_DIR="${REDIS_DIR%/}"
CONF_FILE="$REDIS_DIR/redis.conf"
PID_FILE="$REDIS_DIR/redis.pid"
LOG_FILE="$REDIS_DIR/redis.log"
PORT_FILE="$REDIS_DIR/port"
URL_FILE="$REDIS_DIR/url"

# --- install ----------------------------------------------------------------------
ensure_redis() {
  command -v redis-server >/dev/null && return 0
  if ! is_root; then
    die "redis-server is not installed; as root run 'apt-get install redis-server' (or run this script as root)"
  fi
  command -v apt-get >/dev/null || die "redis-server is missing and apt-get is unavailable"
  log "installing redis-server with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # Try with the current package lists first; refresh them if that fails (fresh machine).
  apt-get install -y -qq -o DPkg::Lock::Timeout=600 redis-server >&2 \
    || { apt-get update -qq -o DPkg::Lock::Timeout=600 >&2 && apt-get install -y -qq -o DPkg::Lock::Timeout=600 redis-server >&2; } \
    || die "apt-get install redis-server failed"
  command -v redis-server >/dev/null || die "redis-server still not found after install"
}

# --- helpers --------------------------------------------------------------------------
port() { cat "$PORT_FILE"; }
url_for() { echo "redis://127.0.0.1:$1/"; }

pid() { if [[ -f "$PID_FILE" ]]; then head -n1 "$PID_FILE"; fi; }

running() {
  local p; p="$(pid)"
  [[ "$p" =~ ^[0-9]+$ ]] && [[ -d "/proc/$p" ]] \
    && [[ "$(cat "/proc/$p/comm" 2>/dev/null)" == redis* ]]
}

# PING over a raw TCP socket (no dependency on redis-cli); in a subshell so a
# refused connection can't affect this shell.
ping() {
  local p; p="$(port)"
  (
    exec 3<>"/dev/tcp/127.0.0.1/$p" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || exit 1
    [[ "$reply" == "+PONG"* ]]
  ) 2>/dev/null
}

port_free() {
  local p="$1"
  if command -v python3 >/dev/null; then
    python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.close()' "$p" 2>/dev/null
  else
    # Free when nothing accepts connections there.
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then return 1; fi
    return 0
  fi
}

# A free loopback port below the kernel's ephemeral range (32768+), so client
# connections never take it while the server is stopped.
pick_port() {
  local p _
  for _ in $(seq 1 200); do
    p=$(( 20000 + (RANDOM % 12000) ))
    if port_free "$p"; then echo "$p"; return 0; fi
  done
  die "could not find a free port"
}

write_config() {
  local p="$1"
  cat > "$CONF_FILE" <<EOF
# Throwaway Redis for datastorage tests (hack/redis.sh)
bind 127.0.0.1
port $p
protected-mode yes
daemonize yes
supervised no
pidfile $PID_FILE
logfile $LOG_FILE
dir $REDIS_DIR
# No persistence at all.
save ""
appendonly no
EOF
  echo "$p" > "$PORT_FILE"
  url_for "$p" > "$URL_FILE"
}

# Start the daemon and wait until it answers PING (returns 1 if it died).
server_start() {
  rm -f "$PID_FILE"
  redis-server "$CONF_FILE" >>"$LOG_FILE" 2>&1 || return 1
  local i
  for i in $(seq 1 100); do
    if ping; then return 0; fi
    # The daemon exits if it can't bind; give it a moment to write its pidfile first.
    if (( i > 10 )) && ! running; then return 1; fi
    sleep 0.1
  done
  return 1
}

# --- commands ---------------------------------------------------------------------------
cmd_start() {
  [[ -f "$CONF_FILE" && -f "$PORT_FILE" ]] || die "no Redis in $REDIS_DIR; run 'REDIS_DIR=$REDIS_DIR hack/redis.sh up' first"
  ensure_redis
  if running; then log "already running on port $(port)"; cat "$URL_FILE"; return 0; fi
  server_start || { tail -n 20 "$LOG_FILE" >&2 || true; die "could not start Redis on port $(port) (log: $LOG_FILE)"; }
  log "started on port $(port)"
  cat "$URL_FILE"
}

cmd_stop() {
  local sig=TERM
  case "${1:-}" in ""|term) ;; kill) sig=KILL ;; *) die "stop takes no argument or 'kill'" ;; esac
  if ! running; then log "already stopped"; return 0; fi
  local p i; p="$(pid)"
  kill "-$sig" "$p" 2>/dev/null || true
  for i in $(seq 1 100); do
    [[ -d "/proc/$p" ]] || break
    if (( i == 50 )); then kill -KILL "$p" 2>/dev/null || true; fi
    sleep 0.1
  done
  [[ -d "/proc/$p" ]] && die "Redis (pid $p) did not stop"
  rm -f "$PID_FILE"
  log "stopped (SIG$sig); port $(port) kept"
}

cmd_up() {
  ensure_redis
  if [[ -f "$CONF_FILE" && -f "$URL_FILE" ]]; then
    running || cmd_start >/dev/null
    cat "$URL_FILE"
    return 0
  fi
  mkdir -p "$REDIS_DIR"
  # Pick a port; if someone takes it before Redis binds, try another.
  local attempt
  for attempt in 1 2 3 4 5; do
    write_config "$(pick_port)"
    if server_start; then
      log "Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2) up in $REDIS_DIR"
      cat "$URL_FILE"
      return 0
    fi
    log "could not start on port $(port) (attempt $attempt)"
    running && cmd_stop kill >/dev/null 2>&1
  done
  tail -n 20 "$LOG_FILE" >&2 || true
  die "could not start Redis (log: $LOG_FILE)"
}

cmd_down() {
  if [[ -d "$REDIS_DIR" ]]; then
    cmd_stop 2>/dev/null || true
  fi
  rm -rf "$REDIS_DIR"
  log "removed $REDIS_DIR"
}

cmd_url() {
  [[ -f "$URL_FILE" ]] || die "no Redis in $REDIS_DIR; run 'REDIS_DIR=$REDIS_DIR hack/redis.sh up' first"
  running || die "Redis in $REDIS_DIR is stopped; run 'REDIS_DIR=$REDIS_DIR hack/redis.sh start' (or 'hack/redis.sh up')"
  cat "$URL_FILE"
}

cmd_status() {
  if [[ ! -f "$PORT_FILE" ]]; then echo "no Redis in $REDIS_DIR"; return 3; fi
  if running; then echo "running: $(cat "$URL_FILE") (pid $(pid), dir $REDIS_DIR)"; return 0; fi
  echo "stopped: port $(port), dir $REDIS_DIR"
  return 3
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  up)      cmd_up ;;
  down)    cmd_down ;;
  url)     cmd_url ;;
  stop)    cmd_stop "$@" ;;
  start)   cmd_start ;;
  restart) cmd_stop; cmd_start ;;
  status)  cmd_status ;;
  ""|-h|--help|help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0" ;;
  *) die "unknown command '$cmd' (expected: up | down | url | stop | start | restart | status)" ;;
esac
