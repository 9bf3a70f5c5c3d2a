# Thin wrappers; the README names them. The first run creates .venv and installs freshrank.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

## The main job: local Ray, simulator, incremental training, hot-swapped serving, summary.
demo: venv
	$(PY) jobs/demo.py $(ARGS)

## Lint, format check, then every test (unit, integration on one local Ray, end to end).
test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash cluster/prometheus/install.sh
	bash cluster/browser/install.sh
	$(PY) -m pytest $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: venv
	$(PY) bench/bench_simulator.py
	$(PY) bench/bench_training.py
	$(PY) bench/bench_row_exchange.py
	$(PY) bench/bench_overhead.py
	$(PY) bench/bench_serving.py
	$(PY) bench/bench_swap.py
	$(PY) bench/bench_drift.py
	$(PY) bench/bench_coldstart.py

clean:
	rm -rf .freshrank .pytest_cache
