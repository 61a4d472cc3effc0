# kubemaas: every set-up step lives here, so a fresh clone needs only `make test` or `make demo`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv lint test test-unit test-integration demo tools cluster-up cluster-down \
        bench-server bench-overload bench-operator bench-autoscaling soak protos kind-up images images-cuda kind-load clean

help:
	@echo "make test   - lint, then the whole test suite (starts its own local control plane)"
	@echo "make demo   - the end-to-end demo on the local control plane"
	@echo "make lint   - ruff and mypy"
	@echo "make tools  - build the pinned Kubernetes binaries (cached under the user's cache dir)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the package metadata changes; pip's own cache keeps warm runs fast.
$(STAMP): pyproject.toml | $(BIN)/python
	@echo "installing kubemaas and its test dependencies into $(VENV) (first run downloads torch)"
	$(BIN)/python -m pip install --progress-bar off -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p kubemaas -p kubemaas_cluster -p kubemaas_server -p kubemaas_operator -p kubemaas_trainer
	$(BIN)/mypy tests examples benchmarks

tools: $(STAMP)
	$(BIN)/kubemaas cluster build

test: lint tools
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP) tools
	$(BIN)/python -m pytest tests/integration tests/e2e

demo: $(STAMP) tools
	$(BIN)/kubemaas demo

cluster-up: $(STAMP) tools
	$(BIN)/kubemaas cluster up

cluster-down: $(STAMP)
	$(BIN)/kubemaas cluster down

protos: $(STAMP)
	$(BIN)/python -m kubemaas_server.protogen

# kubemaas serve vs MLServer 1.7 vs the in-process limit; writes docs/benchmarks-server.md. MLServer
# gets its own venv under the user's cache dir on the first run. BENCH_SERVER_ARGS="--duration 5".
bench-server: $(STAMP)
	$(BIN)/python benchmarks/bench_server.py $(BENCH_SERVER_ARGS)

# Open-loop load from 0.5x to 4x of a fixed-cost model's capacity: admitted rate, shed share and
# admitted latency; writes the "Past saturation" section of docs/benchmarks-server.md.
bench-overload: $(STAMP)
	$(BIN)/python benchmarks/bench_overload.py $(BENCH_OVERLOAD_ARGS)

# 100,000 valid and malformed requests from reconnecting clients against a `kubemaas serve`
# process; fails when an answer is wrong or its RSS or open descriptors grow; writes the
# "Server soak" section of docs/reliability.md. SOAK_ARGS="--requests 20000 --no-write".
soak: $(STAMP)
	$(BIN)/python benchmarks/soak_server.py $(SOAK_ARGS)

bench-autoscaling: $(STAMP)
	$(BIN)/python benchmarks/bench_autoscaling.py

bench-operator: $(STAMP) tools
	$(BIN)/python benchmarks/bench_operator.py

# For people with Docker (see docs/images.md): build the images and load them into kind.
IMAGE_TAG ?= dev
images:
	docker build -f images/operator/Dockerfile    -t kubemaas-operator:$(IMAGE_TAG) .
	docker build -f images/server/Dockerfile.cpu  -t kubemaas-server:$(IMAGE_TAG) .
	docker build -f images/trainer/Dockerfile.cpu -t kubemaas-trainer:$(IMAGE_TAG) .

images-cuda:
	docker build -f images/server/Dockerfile.cuda  -t kubemaas-server:$(IMAGE_TAG)-cuda .
	docker build -f images/trainer/Dockerfile.cuda -t kubemaas-trainer:$(IMAGE_TAG)-cuda .

kind-load: images
	kind load docker-image kubemaas-operator:$(IMAGE_TAG) kubemaas-server:$(IMAGE_TAG) kubemaas-trainer:$(IMAGE_TAG) --name kubemaas

# For people with Docker: a kind cluster instead of the local control plane.
kind-up:
	kind create cluster --name kubemaas --config hack/kind-config.yaml

clean:
	rm -rf $(VENV) build dist *.egg-info
