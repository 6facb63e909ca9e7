# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on disk here; an unpinned torch downloads a multi-GB CUDA build.
# On a GPU machine: make run TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
WORKERS ?= 1
MODELS ?= models
HOST ?= 127.0.0.1
PORT ?= 8001
BROKER_FRONTEND_PORT ?= 5555
BROKER_WORKER_PORT ?= 5556
PYTEST_ARGS ?=

.PHONY: install install-test run models protos protos-check lint test test-unit test-e2e bench bench-quick bench-peers bench-broker chaos clean k8s-render

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
	$(PY) -m worker.demo_models $(MODELS)

run: models
	$(PY) scripts/run_local.py --workers $(WORKERS) --models $(MODELS) --host $(HOST) \
		--port $(PORT) --broker-frontend-port $(BROKER_FRONTEND_PORT) \
		--broker-worker-port $(BROKER_WORKER_PORT)

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

chaos: install-test
	$(PY) -m bench.chaos

# Render the Kubernetes manifests (OVERLAY=cpu or gpu); validated offline by tests/deploy.
OVERLAY ?= cpu
k8s-render:
	kubectl kustomize deploy/k8s/overlays/$(OVERLAY)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
