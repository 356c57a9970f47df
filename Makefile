# The two commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: quickstart test lint bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

quickstart: $(INSTALLED)
	$(BIN)/sslpipe run pipelines/examples/quickstart.yaml

# Two test files at a time (pytest-xdist): Ray start-up leaves a core idle about 40 % of the time.
# Files go out in collection order, the slowest first (tests/conftest.py).
test: $(INSTALLED)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf runs .pytest_cache
