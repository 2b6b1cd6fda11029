# Every target creates the virtual environment itself and is idempotent.
#
# Installs are locked: uv.lock pins every direct and transitive dependency to an exact version with its
# hashes, `uv sync --locked` installs exactly that (and fails if pyproject.toml no longer matches the
# lock), so a new upstream release cannot change what `make test` runs. uv itself is pinned below and
# installed from PyPI into .tools/ by the system Python's pip.
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
UV_VERSION := 0.13.8
UV         := .tools/uv-$(UV_VERSION)/bin/uv
# The check targets depend on the locked .venv; test-latest runs them on another environment.
SETUP      ?= $(STAMP)

# uv uses the system Python (never downloads one) and syncs into $(VENV).
export UV_PYTHON := $(PYTHON)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_NO_PROGRESS := 1

.PHONY: demo demo-dynamo test lint typecheck unit bench lock test-latest clean

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target .tools/uv-$(UV_VERSION) uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra dev --quiet
	touch $(STAMP)

demo: $(SETUP)
	$(BIN)/cost-agent demo

# The agent running a real NVIDIA Dynamo deployment (frontend, mocker workers) on this machine.
demo-dynamo: $(SETUP)
	$(BIN)/cost-agent demo --engine dynamo

lint: $(SETUP)
	$(BIN)/ruff check agent schemas tests bench
	$(BIN)/ruff format --check agent schemas tests bench

typecheck: $(SETUP)
	$(BIN)/mypy agent schemas

# Two test processes, then the accelerated demos alone: a busy CPU stretches their simulated minutes.
unit: $(SETUP)
	$(BIN)/pytest -q -n 2 -m "not accelerated_demo"
	$(BIN)/pytest -q -m accelerated_demo

test: lint typecheck unit

bench: $(SETUP)
	$(BIN)/python bench/optimizer.py
	$(BIN)/python bench/forecast.py
	$(BIN)/python bench/backtest.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/dynamo_ingest.py

# Refresh uv.lock to the newest versions pyproject.toml's ranges allow (commit it after `make test`).
lock: | $(UV)
	$(UV) lock --upgrade

# The suite on the newest versions the ranges allow, in a throwaway environment; uv.lock is not touched.
test-latest: $(STAMP) | $(UV)
	UV=$(UV) .ci/test-latest

clean:
	rm -rf $(VENV) .venv-latest .tools .mypy_cache .pytest_cache .ruff_cache
