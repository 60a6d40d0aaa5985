#!/usr/bin/env bash
# `make image`: the operator image from the repo's Dockerfile, without Docker and without any registry.
#
#   1. A base made here from Debian packages (what distroless/cc holds: libc6, libgcc-s1, libstdc++6, base-files,
#      netbase, tzdata, CA certificates, plus /etc/passwd with nonroot 65532), fetched with apt-get download and
#      unpacked with dpkg-deb. Cached by the packages' versions under $DATASTORAGE_CACHE/image-base/<key>/.
#   2. An artefacts directory laid out as the image: /usr/local/bin/datastorage (the binary cargo built here,
#      stripped) and /opt/datastorage/model (hack/python-deps.sh model-dir).
#   3. buildah bud of the Dockerfile's runtime stage: --network none, runc, RUNTIME_IMAGE = the local base,
#      --build-context artefacts=<dir> (the builder stage is unused, so never built).
#   4. An OCI archive, imported into the node's containerd (ctr -n k8s.io images import) when a node runs
#      (hack/node.sh; NODE_DIR as there) or IMAGE_IMPORT=1.
#
# Usage: hack/image.sh            build; last stdout line: the image reference
# Environment:
#   IMAGE_PROFILE   release (default: cargo build --release) | debug (reuse the debug binary `cargo test` built)
#   IMAGE_BINARY    use this binary as is (no cargo build)
#   IMAGE_REPO      default localhost/datastorage/operator
#   IMAGE_TAG       default <Cargo version>-<git short sha>[-dirty][-debug]
#   IMAGE_ARCHIVE   where to write the OCI archive (default $DATASTORAGE_CACHE/images/<tag>.tar)
#   IMAGE_IMPORT    1: import into the node (fail when none runs); 0: never; default: when a node runs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_DIR="$PWD"

CACHE_ROOT="${DATASTORAGE_CACHE:-$HOME/.cache/datastorage}"
BASE_RECIPE=1
BASE_PKGS=(base-files netbase tzdata libc6 libgcc-s1 libstdc++6 ca-certificates)
IMAGE_PROFILE="${IMAGE_PROFILE:-release}"
IMAGE_REPO="${IMAGE_REPO:-localhost/datastorage/operator}"

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

command -v buildah >/dev/null || die "buildah is missing: run 'make setup-node'"
RUNC="$(command -v runc || true)"
[[ -x "$RUNC" ]] || die "runc is missing: run 'make setup-node'"
t0=$SECONDS

# ---------------------------------------------------------------------------------------------------------- base ---
pkg_versions() {
  local p v
  for p in "${BASE_PKGS[@]}"; do
    v="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [[ -n "$v" && "$v" != "(none)" ]] || die "no Debian candidate for $p (apt-get update?)"
    echo "$p=$v"
  done
}

build_base() { # -> $BASE_TAR
  local versions key dir
  versions="$(pkg_versions)"
  key="$( (echo "recipe=$BASE_RECIPE"; echo "$versions") | sha256sum | cut -c1-12)"
  BASE_KEY="debian$(cut -d. -f1 /etc/debian_version)-$key"
  dir="$CACHE_ROOT/image-base/$BASE_KEY"
  BASE_TAR="$dir/rootfs.tar"
  if [[ -f "$BASE_TAR" ]]; then
    log "base $BASE_KEY: cached ($(du -h "$BASE_TAR" | cut -f1))"
    return 0
  fi
  log "base $BASE_KEY: $(tr '\n' ' ' <<<"$versions")"
  local tmp
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/datastorage-base.XXXXXX")"
  mkdir -p "$tmp/debs" "$tmp/rootfs"
  # apt downloads as its sandbox user _apt.
  chmod 755 "$tmp"
  chmod 777 "$tmp/debs"
  # shellcheck disable=SC2046 # one word per package=version
  (cd "$tmp/debs" && apt-get download -qq $(tr '\n' ' ' <<<"$versions")) >&2 || { rm -rf "$tmp"; die "apt-get download failed"; }
  local deb
  for deb in "$tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$tmp/rootfs"; done
  local r="$tmp/rootfs"
  # What the packages' maintainer scripts would have made, and what distroless adds.
  mkdir -p "$r/etc/ssl/certs" "$r/tmp" "$r/home/nonroot" "$r/root" "$r/var/lib/dpkg/status.d"
  chmod 1777 "$r/tmp"
  chmod 700 "$r/root"
  find "$r/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z | xargs -0 cat >"$r/etc/ssl/certs/ca-certificates.crt"
  cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$r/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
EOF
  chown 65532:65532 "$r/home/nonroot"
  ln -sf /usr/share/zoneinfo/UTC "$r/etc/localtime"
  printf '%s\n' "$versions" >"$r/var/lib/dpkg/status.d/datastorage-base.versions"
  # No docs, manuals or maintainer leftovers in the image.
  rm -rf "$r/usr/share/doc" "$r/usr/share/man" "$r/usr/share/info" "$r/usr/share/lintian" "$r/usr/share/gcc" \
    "$r/usr/share/gdb" "$r/usr/share/locale"
  mkdir -p "$dir"
  tar --numeric-owner --sort=name --mtime=@0 -C "$r" -cf "$dir/.rootfs.tar.tmp" .
  mv -f "$dir/.rootfs.tar.tmp" "$BASE_TAR"
  printf '%s\n' "$versions" >"$dir/versions"
  rm -rf "$tmp"
  log "base $BASE_KEY: built ($(du -h "$BASE_TAR" | cut -f1))"
}

# ----------------------------------------------------------------------------------------------------- artefacts ---
find_binary() { # -> $BINARY
  # The commit the binary reports (datastorage_build_info, --version): build.rs reads git itself; passing it makes a
  # dirty tree visible too (the image's org.opencontainers.image.revision label says the same).
  export DATASTORAGE_GIT_COMMIT="$sha$dirty"
  if [[ -n "${IMAGE_BINARY:-}" ]]; then
    BINARY="$IMAGE_BINARY"
  else
    local target="${CARGO_TARGET_DIR:-target}"
    case "$IMAGE_PROFILE" in
      release)
        log "cargo build --release --bin datastorage"
        nice -n 10 cargo build --quiet --release --locked --bin datastorage >&2
        BINARY="$target/release/datastorage"
        ;;
      debug)
        log "cargo build --bin datastorage (debug profile; dependencies opt-level 1, the model's crates 3)"
        nice -n 10 cargo build --quiet --locked --bin datastorage >&2
        BINARY="$target/debug/datastorage"
        ;;
      *) die "IMAGE_PROFILE must be release or debug" ;;
    esac
  fi
  [[ -x "$BINARY" ]] || die "no binary at $BINARY"
}

# ---------------------------------------------------------------------------------------------------------- build ---
version="$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)"
sha="$(git rev-parse --short=10 HEAD 2>/dev/null || echo nogit)"
dirty=""
git diff --quiet HEAD -- src Cargo.toml Cargo.lock Dockerfile build.rs 2>/dev/null || dirty="-dirty"
build_base
find_binary
log "binary: $("$BINARY" version)"
MODEL_DIR="$(hack/python-deps.sh model-dir)"
[[ -f "$MODEL_DIR/model.safetensors" && -f "$MODEL_DIR/tokenizer.json" ]] || die "no model in $MODEL_DIR"

suffix=""
[[ -n "${IMAGE_BINARY:-}" || "$IMAGE_PROFILE" == release ]] || suffix="-$IMAGE_PROFILE"
IMAGE_TAG="${IMAGE_TAG:-$version-$sha$dirty$suffix}"
IMAGE_REF="$IMAGE_REPO:$IMAGE_TAG"
IMAGE_ARCHIVE="${IMAGE_ARCHIVE:-$CACHE_ROOT/images/${IMAGE_TAG}.tar}"
mkdir -p "$(dirname "$IMAGE_ARCHIVE")"

work="$(mktemp -d "${TMPDIR:-/tmp}/datastorage-image.XXXXXX")"
BAH=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver overlay)
cleanup() {
  "${BAH[@]}" rm -a >/dev/null 2>&1 || true
  "${BAH[@]}" rmi -a -f >/dev/null 2>&1 || true
  # containers/storage keeps a private bind mount of its overlay dir; nothing of it may outlive the build.
  local m
  for m in $(awk -v w="$work" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

log "artefacts: $BINARY ($(du -h "$BINARY" | cut -f1)), model $MODEL_DIR"
art="$work/artefacts"
mkdir -p "$art/usr/local/bin" "$art/opt/datastorage"
cp "$BINARY" "$art/usr/local/bin/datastorage"
strip "$art/usr/local/bin/datastorage"
cp -rL "$MODEL_DIR" "$art/opt/datastorage/model"
find "$art/opt/datastorage" -type d -name '__pycache__' -exec rm -rf {} +
find "$art/opt/datastorage" -type f -name '*.py' -delete

BASE_REF="localhost/datastorage/base:$BASE_KEY"
ctr="$("${BAH[@]}" from scratch)"
"${BAH[@]}" add "$ctr" "$BASE_TAR" / >/dev/null
"${BAH[@]}" config --label "io.datastorage.base-packages=$(tr '\n' ' ' <"$(dirname "$BASE_TAR")/versions")" "$ctr"
"${BAH[@]}" commit -q "$ctr" "$BASE_REF" >/dev/null
"${BAH[@]}" rm "$ctr" >/dev/null

mkdir -p "$work/context"
log "buildah bud (--network none, runc) -f Dockerfile --build-arg RUNTIME_IMAGE=$BASE_REF -> $IMAGE_REF"
"${BAH[@]}" bud --quiet --network none --runtime "$RUNC" --pull-never --layers=false \
  --build-arg "RUNTIME_IMAGE=$BASE_REF" --build-context "artefacts=$art" \
  --target runtime -f "$REPO_DIR/Dockerfile" -t "$IMAGE_REF" \
  --label "org.opencontainers.image.revision=$sha$dirty" --label "org.opencontainers.image.version=$version" \
  "$work/context" >/dev/null
rm -f "$IMAGE_ARCHIVE"
"${BAH[@]}" push -q "$IMAGE_REF" "oci-archive:$IMAGE_ARCHIVE:$IMAGE_REF" >/dev/null
log "image $IMAGE_REF: $(du -m "$IMAGE_ARCHIVE" | cut -f1) MB (gzipped OCI archive; unpacked: base $(du -m "$BASE_TAR" | cut -f1) MB, binary $(du -m "$art/usr/local/bin/datastorage" | cut -f1) MB, model $(du -sm "$art/opt/datastorage" | cut -f1) MB) built in $((SECONDS - t0))s"
mkdir -p "$CACHE_ROOT/images"
echo "$IMAGE_ARCHIVE" >"$CACHE_ROOT/images/last"

# ---------------------------------------------------------------------------------------------------- import ---
node_env() {
  NODE_DIR="${NODE_DIR:-}" hack/node.sh env 2>/dev/null
}
import="${IMAGE_IMPORT:-auto}"
if [[ "$import" != 0 ]]; then
  if envs="$(node_env)"; then
    eval "$envs"
    ctr_bin="$(hack/kubebins/build.sh node --print-bindir)/ctr"
    "$ctr_bin" --address "$CONTAINERD_ADDRESS" -n k8s.io images import "$IMAGE_ARCHIVE" >/dev/null
    log "imported into the node's containerd ($CONTAINERD_ADDRESS)"
  elif [[ "$import" == 1 ]]; then
    die "IMAGE_IMPORT=1 but no node runs (hack/node.sh up)"
  fi
fi
echo "$IMAGE_REF"
