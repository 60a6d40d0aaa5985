# datastorage — everything a fresh machine needs is installed by `make setup` (called by the other targets).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

RUST_VERSION := $(shell rustc --version 2>/dev/null | awk '{print $$2}')
export DATASTORAGE_CACHE ?= $(HOME)/.cache/datastorage
# One persistent target dir per toolchain, so CI's fresh clones reuse compiled dependencies.
export CARGO_TARGET_DIR ?= $(DATASTORAGE_CACHE)/target-rust-$(RUST_VERSION)
export CARGO_TERM_COLOR ?= never

.PHONY: help setup setup-node build release image node node-down crds chart-files lint test test-faults fuzz demo demo-down bench

help:
	@echo "make demo       a real single node, the image, helm install of the chart, PostgreSQL, samples, search"
	@echo "make demo-down  stop everything the demo started and restore the host"
	@echo "make image      the operator image from the Dockerfile, built with buildah from local bases (no registry)"
	@echo "make node       a real single-node cluster (hack/node.sh up); make node-down removes it"
	@echo "make test       lint + every test suite on real PostgreSQL, Redis and Kubernetes (test-faults included)"
	@echo "make test-faults  fault injection and load (tests/it/faults.rs): each test on its own PostgreSQL + control plane"
	@echo "make fuzz       fuzz validation + sanitization + hashing for FUZZ_SECONDS (default 600) per target"
	@echo "make bench      benchmarks (release build) -> target/bench/results.json, docs/benchmarks.md"
	@echo "make crds       regenerate crds/ from the Rust types (and the Helm chart's copies)"
	@echo "make setup      install everything the other targets need (idempotent)"

setup:
	@hack/setup.sh

# Only what the real node and the image build need (also part of `make setup`).
setup-node:
	@hack/setup.sh node

build: setup
	cargo build --bins

release: setup
	cargo build --release --bins

CHART := charts/datastorage-operator

crds:
	cargo run --quiet --bin datastorage -- crd --out-dir crds
	@$(MAKE) --no-print-directory chart-files

# The chart ships byte-copies of the CRDs (in its crds/: see the chart's README), the dashboards and the alert rules
# (tests fail when they drift), and a README generated from values.schema.json.
chart-files:
	mkdir -p $(CHART)/crds
	rm -f $(CHART)/crds/*.yaml
	cp crds/*.yaml $(CHART)/crds/
	cp config/grafana/datastorage-dashboard.json config/grafana/remediation-effectiveness-dashboard.json $(CHART)/files/
	cp config/prometheus/alerts.yaml $(CHART)/files/
	hack/chart-readme.py

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

test: setup
	hack/test.sh

test-faults: setup
	hack/test.sh faults

# `make test` fuzzes for 20 s per target; this is the long run. A failure prints the shrunk case to add to
# tests/fixtures/fuzz_regressions.json.
fuzz:
	DATASTORAGE_FUZZ_SECONDS=$${FUZZ_SECONDS:-600} cargo test --test it fuzz:: -- --nocapture

demo: setup
	hack/demo.sh up

image: setup
	hack/image.sh

node: setup
	hack/node.sh up

node-down:
	hack/node.sh down

demo-down:
	hack/demo.sh down

bench: setup
	hack/bench.sh
