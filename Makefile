# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup tools images lint test test-unit test-integration demo kafka-up kafka-down bench schemas chart-docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,data,dev,kube,postgres]'
	touch $@

tools:
	bash k8s/install-tools.sh
	bash k8s/install-kubernetes.sh
	bash tests/install-debian-packages.sh

images: tools
	bash docker/build-images.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup tools images lint
	$(PY) -m pytest -q -ra

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration tests/e2e

demo: setup
	$(VENV)/bin/vlf demo

kafka-up: setup
	$(VENV)/bin/vlf kafka up

kafka-down: setup
	$(VENV)/bin/vlf kafka down

bench: setup
	$(PY) bench/bench_runtime.py
	$(PY) bench/bench_http_backend.py
	$(PY) bench/bench_transformers_backend.py
	$(PY) bench/bench_trainer_cpu.py
	$(PY) bench/bench_import.py

schemas: setup
	$(PY) -m shared.contracts.schema_export

chart-docs: setup
	$(PY) k8s/gen_docs.py

clean:
	rm -rf .vlf
