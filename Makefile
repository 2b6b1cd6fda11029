# Every target creates the virtual environment itself and is idempotent.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cost-agent demo

lint: $(STAMP)
	$(BIN)/ruff check agent schemas tests bench
	$(BIN)/ruff format --check agent schemas tests bench

typecheck: $(STAMP)
	$(BIN)/mypy agent schemas

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/optimizer.py
	$(BIN)/python bench/forecast.py
	$(BIN)/python bench/backtest.py
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
