# The two commands a new user runs: `make run` (local stack) and `make test` (everything CI runs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test soak lint typecheck bench fake-azure clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

node_modules/.bin/azurite-table: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

deps: $(STAMP) node_modules/.bin/azurite-table

## Azurite + API (http://127.0.0.1:7071) + timers; Ctrl-C stops everything.
run: deps
	$(PY) scripts/run_local.py

## The whole test suite (starts Azurite and the Azure stand-in itself), then lint and types.
test: deps
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) --no-print-directory lint typecheck

## The concurrency harness over more seeds: `make soak SEEDS=500` (from SEED_START, default 1000),
## or replay one seed: `make soak SEED=1234`.
SEEDS ?= 100
soak: deps
	HARNESS_SEED=$(SEED) HARNESS_SEEDS=$(SEEDS) HARNESS_SEED_START=$(SEED_START) \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_concurrency_harness.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## Benchmarks, printed as tables.
bench: deps
	$(PY) -m bench

## The Azure stand-in on https://127.0.0.1:8443, for exploring the service by hand.
fake-azure: $(STAMP)
	$(PY) -m tests.azure_fake --port 8443

clean:
	rm -rf $(VENV) .venv-checkov node_modules .local .pytest_cache .mypy_cache .ruff_cache
