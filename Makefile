# airflow-nx1-connect: `make demo` shows the product, `make test` runs the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PG_URL ?= postgresql://postgres@127.0.0.1:5432/test
export PATH := $(HOME)/.local/bin:$(PATH)
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)

.PHONY: help uv sync postgres redis test test-pythons lint demo bench bench-quick clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

uv:  ## Install uv with pip if it is missing
	@command -v uv >/dev/null 2>&1 || [ -x "$(HOME)/.local/bin/uv" ] || { \
	  echo "uv not found: installing it with pip"; \
	  python3 -m pip install --user --quiet uv || python3 -m pip install --quiet uv; }

sync: uv  ## Create .venv from the committed uv.lock
	@$(UV) sync --locked --quiet

postgres:  ## Make sure PostgreSQL at $(PG_URL) answers (start it if installed and stopped)
	@bash scripts/ensure-postgres.sh "$(PG_URL)"

redis:  ## Make sure Redis (the Celery broker of tests/distributed) answers; start it if stopped
	@bash scripts/ensure-redis.sh

test: sync postgres redis  ## Run the whole test suite (SQLite, PostgreSQL, a Celery cluster)
	@bash scripts/ensure-test-deps.sh
	@$(UV) run --locked pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest ran no tests: failing" >&2; exit 1; fi; exit $$rc

test-pythons: uv  ## pip install the wheel on Python 3.10-3.13 (no lock) and smoke-test each
	@bash scripts/test-pythons.sh

lint: sync  ## ruff, mypy and the import contracts (layers, no cycles; pyproject.toml)
	$(UV) run --locked ruff check airflow_nx1_connect tests dags_examples benchmarks scripts
	$(UV) run --locked ruff format --check airflow_nx1_connect
	$(UV) run --locked mypy
	$(UV) run --locked lint-imports

demo: sync  ## Airflow with the plugin, example DAGs run, a key made, a snapshot fetched
	@bash scripts/demo.sh

bench: sync postgres  ## Full benchmark harness (minutes)
	$(UV) run --locked python -m benchmarks.run --full

bench-quick: sync postgres  ## Short benchmark run, one Markdown table
	$(UV) run --locked python -m benchmarks.run --quick

clean:  ## Remove the demo AIRFLOW_HOME and caches
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
