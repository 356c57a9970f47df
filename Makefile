# The two commands of the README: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: quickstart test lint bench clean wheelhouse

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

# The offline install for GPU nodes without network (docs/offline-install.md): one folder of
# parts of at most PART_MIB MiB per variant under WHEELHOUSE (gitignored build/).
PYTHON_VERSION ?= 3.12
PLATFORM ?= manylinux_2_28_x86_64
WHEELHOUSE ?= build/wheelhouse
VARIANTS ?= full torchless
PART_MIB ?= 60

wheelhouse: $(INSTALLED)
	$(BIN)/python deploy/wheelhouse.py --python-version $(PYTHON_VERSION) --platform $(PLATFORM) \
		--out $(WHEELHOUSE) $(foreach variant,$(VARIANTS),--variant $(variant)) --part-mib $(PART_MIB)
