# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on disk here; an unpinned torch downloads a multi-GB CUDA build.
# On a GPU machine: make run TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
# `make run`: FRONTENDS share PORT; broker i binds BROKER_*_PORT + 2i; metrics ports are
# consecutive from METRICS_PORT (frontend-0 first, as Triton's 8002); METRICS=0 turns them off.
FRONTENDS ?= 1
WORKERS ?= auto
BROKERS ?= 1
DEMO_MODELS := models
MODELS ?= $(DEMO_MODELS)
HOST ?= 127.0.0.1
PORT ?= 8001
BROKER_FRONTEND_PORT ?= 5555
BROKER_WORKER_PORT ?= 5556
METRICS ?= 1
METRICS_PORT ?= 8002
# `make run ROUTING=routing.yaml`: every frontend gets --routing (canary, A/B, shadow routing).
ROUTING ?=
# Triton's --model-control-mode for every tier (read from the environment): the demo lets
# clients load and unload; the servers' own default is none.
MODEL_CONTROL_MODE ?= explicit
# Demo models are built only into the default directory; MODELS=dir is served as it is.
ifeq ($(MODELS),$(DEMO_MODELS))
RUN_NEEDS := models
else
RUN_NEEDS := install
endif
ifeq ($(METRICS),0)
RUN_METRICS_PORT := 0
else
RUN_METRICS_PORT := $(METRICS_PORT)
endif
PYTEST_ARGS ?=

.PHONY: install install-test run models protos protos-check lint test test-unit test-e2e bench bench-quick bench-peers bench-broker bench-gpu bench-large chaos clean k8s-render \
	docker-ready docker-base docker-context images image-deps image-torch image-broker image-frontend image-worker \
	image-lb image-prometheus \
	compose-up compose-down test-compose

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[worker]"
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[worker,test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.test-installed

models: install
	$(PY) -m worker.demo_models $(DEMO_MODELS)

run: $(RUN_NEEDS)
	MODEL_CONTROL_MODE=$(MODEL_CONTROL_MODE) $(PY) scripts/run_local.py --models $(MODELS) --frontends $(FRONTENDS) \
		--workers $(WORKERS) --brokers $(BROKERS) --host $(HOST) --port $(PORT) \
		--broker-frontend-port $(BROKER_FRONTEND_PORT) \
		--broker-worker-port $(BROKER_WORKER_PORT) --metrics-port $(RUN_METRICS_PORT) \
		$(if $(ROUTING),--routing $(ROUTING))

protos: install-test
	$(PY) -m protos.generate

protos-check: install-test
	$(PY) -m protos.generate --check

lint: install-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test-unit: install-test
	$(PY) -m pytest --group unit $(PYTEST_ARGS)

test-e2e: install-test
	$(PY) -m pytest --group e2e $(PYTEST_ARGS)

test: protos-check lint test-unit test-e2e

bench: install-test
	$(PY) -m bench.run

bench-quick: install-test
	$(PY) -m bench.run --quick

bench-peers: install-test
	$(PY) -m bench.peers

bench-broker: install-test
	$(PY) -m bench.broker_bench

# On a GPU host: installs GPU_TORCH_SPEC when torch cannot use CUDA, runs the gpu tests (a skip
# fails) and the CUDA benchmark, writes bench/results/gpu-*.json and gpu-latest.md. Elsewhere:
# a dry run on the CPU that says so.
GPU_TORCH_SPEC ?= torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128 \
	--extra-index-url https://pypi.org/simple
bench-gpu: install-test
	$(PY) -m bench.gpu --torch-spec "$(GPU_TORCH_SPEC)"

bench-large: install-test
	$(PY) -m bench.large

chaos: install-test
	$(PY) -m bench.chaos

# Render the Kubernetes manifests (OVERLAY=cpu or gpu); validated offline by tests/deploy.
OVERLAY ?= cpu
k8s-render:
	kubectl kustomize deploy/k8s/overlays/$(OVERLAY)

# ---- Images and docker compose (deploy/docker/, docker-compose.yml) --------------------------
# BASE_IMAGE is used when present or pullable; where no registry answers, a Debian base is made
# here (debootstrap + docker import, as root) under LOCAL_BASE_IMAGE. The CPU torch wheel, when
# on disk, goes into the worker image's own build context (no multi-GB CUDA download). A CUDA
# worker: make images WORKER_TAG=cuda WORKER_WHEELS= WORKER_TORCH_SPEC="torch==2.13.0
#   --index-url https://download.pytorch.org/whl/cu128 --extra-index-url https://pypi.org/simple"
DOCKER ?= docker
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
	else echo docker-compose; fi)
COMPOSE_PROJECT ?= fabricserve
COMPOSE_FRONTENDS ?= 2
COMPOSE_WORKERS ?= 2
BASE_IMAGE ?= python:3.11-slim-bookworm
LOCAL_BASE_IMAGE ?= fabricserve-base:bookworm
WORKER_TORCH_SPEC ?= $(TORCH_SPEC)
WORKER_WHEELS ?= $(wildcard /opt/wheels/torch-*+cpu-*.whl)
WORKER_TAG ?= latest
HOST_CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
DOCKER_BUILD := deploy/docker/.build
BUILD_IMAGE = $(DOCKER) build --build-arg BASE_IMAGE=$$(cat $(DOCKER_BUILD)/base-image)

docker-ready:
	sh deploy/docker/ensure-docker.sh

docker-base: docker-ready
	@mkdir -p $(DOCKER_BUILD)
	@if $(DOCKER) image inspect $(BASE_IMAGE) >/dev/null 2>&1 \
		|| timeout 300 $(DOCKER) pull -q $(BASE_IMAGE) >/dev/null 2>&1; then \
		echo $(BASE_IMAGE) > $(DOCKER_BUILD)/base-image; \
	else \
		echo "$(BASE_IMAGE) cannot be had: using $(LOCAL_BASE_IMAGE)"; \
		$(DOCKER) image inspect $(LOCAL_BASE_IMAGE) >/dev/null 2>&1 \
			|| sh deploy/docker/make-base.sh $(LOCAL_BASE_IMAGE); \
		echo $(LOCAL_BASE_IMAGE) > $(DOCKER_BUILD)/base-image; \
	fi

# pip inside the builds trusts what the host trusts (an intercepting proxy's CA included).
docker-context:
	rm -rf $(DOCKER_BUILD)/pip $(DOCKER_BUILD)/wheels
	mkdir -p $(DOCKER_BUILD)/pip $(DOCKER_BUILD)/wheels
	printf '[global]\n' > $(DOCKER_BUILD)/pip/pip.conf
	if [ -f $(HOST_CA_BUNDLE) ]; then cp $(HOST_CA_BUNDLE) $(DOCKER_BUILD)/pip/ca.crt; \
		printf 'cert = /etc/fabricserve-build/ca.crt\n' >> $(DOCKER_BUILD)/pip/pip.conf; fi
	for w in $(WORKER_WHEELS); do ln -f $$w $(DOCKER_BUILD)/wheels/ 2>/dev/null \
		|| cp $$w $(DOCKER_BUILD)/wheels/; done

# One target per image, so that `make -j` builds the torch chain and the others side by side
# (apt and pip downloads overlap with unpacking on a small machine).
IMAGE_TARGETS := image-broker image-frontend image-worker image-lb image-prometheus

image-deps: docker-base docker-context
	$(BUILD_IMAGE) -q -f deploy/docker/Dockerfile --target deps -t fabricserve-build:deps .

image-torch: image-deps
	$(DOCKER) build -q -f deploy/docker/torch.Dockerfile \
		--build-arg DEPS_IMAGE=fabricserve-build:deps \
		--build-arg TORCH_SPEC="$(WORKER_TORCH_SPEC)" -t fabricserve-build:torch-$(WORKER_TAG) \
		$(DOCKER_BUILD)

image-broker image-frontend: image-%: image-deps
	$(BUILD_IMAGE) -q -f deploy/docker/Dockerfile --target $* -t fabricserve-$* .

image-worker: image-torch image-broker
	$(BUILD_IMAGE) -q -f deploy/docker/Dockerfile --target worker \
		--build-arg TORCH_IMAGE=fabricserve-build:torch-$(WORKER_TAG) \
		-t fabricserve-worker:$(WORKER_TAG) .

image-lb image-prometheus: image-%: docker-base docker-context
	$(BUILD_IMAGE) -q -f deploy/docker/$*.Dockerfile -t fabricserve-$* .

images:
	$(MAKE) --no-print-directory -j3 --output-sync=target $(IMAGE_TARGETS)

compose-up: images
	$(COMPOSE) -p $(COMPOSE_PROJECT) up -d --scale frontend=$(COMPOSE_FRONTENDS) \
		--scale worker=$(COMPOSE_WORKERS)

compose-down:
	$(COMPOSE) -p $(COMPOSE_PROJECT) --profile gpu --profile observability down --remove-orphans

# Its own compose project on free ports; tears itself down.
test-compose: install-test images
	FABRICSERVE_TEST_COMPOSE=1 COMPOSE="$(COMPOSE)" $(PY) -m pytest -p no:cacheprovider \
		tests/deploy/test_compose.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
