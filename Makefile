# Every target does its own set-up: a fresh clone needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch 2.13.0 lies on this kind of machine's disk; elsewhere any torch>=2.4 works.
	$(BIN)/python -m pip install -q torch==2.13.0 || $(BIN)/python -m pip install -q 'torch>=2.4'
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ckpt_path.demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests converters benchmarks
	$(BIN)/ruff format --check src tests converters benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# Coverage follows the processes the tests start (pyproject's [tool.coverage.run] patch); each
# writes a .coverage.* file. COVERAGE_FILE is absolute so every one lands here, whatever directory
# the process runs in; combine merges them into .coverage and removes them.
pytest: export COVERAGE_FILE := $(CURDIR)/.coverage
pytest: $(STAMP)
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -q
	$(BIN)/coverage combine -q
	rm -f $(CURDIR)/.coverage.*  # left by processes killed before they wrote (tests of interrupted work)
	$(BIN)/coverage report

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .coverage .coverage.*
