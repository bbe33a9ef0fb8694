# The single entry point. `make demo` runs the local stack end to end; `make test` runs every
# suite. Both install what they need into .venv on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOTSTRAP := $(shell scripts/find-python.sh)
VENV := .venv
PY := $(VENV)/bin/python
TOOLS_VENV := .venv-tools
SAM := $(TOOLS_VENV)/bin/sam
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-unit test-integration test-chaos test-infra lint typecheck bench sam-build clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml layers/deps/requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet -r layers/deps/requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)  ## Create .venv with the pinned dependencies

$(SAM): requirements-tools.txt
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON_BOOTSTRAP) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet -r requirements-tools.txt
	@touch $(SAM)

demo: $(STAMP)  ## Run the local stack end to end: Postgres, moto, fake provider, overlapping dispatchers
	$(PY) -m devstack.demo

test: $(STAMP) $(SAM)  ## Run every suite: lint, types, unit, integration, chaos, infra
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy shared devstack functions/*/app.py tests
	$(PY) -m pytest tests/unit
	@# The IAM test (tests/infra) checks the roles against the AWS calls these two suites record.
	rm -rf build/aws-calls
	$(PY) -m pytest tests/integration
	$(PY) -m pytest tests/chaos
	PATH="$(CURDIR)/$(TOOLS_VENV)/bin:$$PATH" $(PY) -m pytest tests/infra

test-unit: $(STAMP)  ## Unit tests only
	$(PY) -m pytest tests/unit

test-integration: $(STAMP)  ## Integration tests (real Postgres, moto)
	$(PY) -m pytest tests/integration

test-chaos: $(STAMP)  ## Overlap, crash and stale-lease tests across OS processes
	$(PY) -m pytest tests/chaos

test-infra: $(STAMP) $(SAM)  ## cfn-lint, sam validate --lint, sam build, template and IAM checks (IAM: after integration + chaos)
	PATH="$(CURDIR)/$(TOOLS_VENV)/bin:$$PATH" $(PY) -m pytest tests/infra

lint: $(STAMP)  ## ruff and mypy
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy shared devstack functions/*/app.py tests

bench: $(STAMP)  ## Throughput and per-stage time of overlapping dispatchers against the fake provider
	$(PY) -m devstack.bench $(BENCH_ARGS)

sam-build: $(SAM)  ## sam build (needs python3.12 on PATH, found by scripts/find-python.sh)
	PATH="$(dir $(PYTHON_BOOTSTRAP)):$$PATH" $(SAM) build

clean:  ## Remove build output and caches (keeps the venvs)
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache build
