# The two Quickstart commands (`make demo`, `make test`) create the virtual environment on
# first use, so a fresh clone needs nothing else. Python 3.11+ must be on PATH as $(PYTHON).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

.PHONY: demo test bench serve clean
demo: $(BIN)/.installed
	$(BIN)/gateway demo

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/run.py $(ARGS)

serve: $(BIN)/.installed
	$(BIN)/gateway serve

clean:
	rm -rf $(VENV) data *.egg-info
