# Two entry points for a newcomer: `make train` and `make test` (and `make docs`). Each sets up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU machines get the CPU build of torch (never the multi-GB CUDA wheels). Where no local
# wheel is on hand, use e.g. TORCH_CPU="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch

# Use the datasets kept beside the checkout when present (offline machines, CI).
ifeq ($(FITVISION_DATA_DIR),)
ifneq ($(wildcard ../shared/datasets),)
export FITVISION_DATA_DIR := $(abspath ../shared/datasets)
endif
endif

.PHONY: setup train test docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/pip install -q $(TORCH_GPU); else $(BIN)/pip install -q $(TORCH_CPU); fi
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

train: setup
	$(BIN)/fitvision train $(ARGS)

# The suite in one worker process per core (pytest-xdist), each test file whole in one worker so that
# a module's fixtures (a trained model, a PostgreSQL server) are built once; TEST_WORKERS=0 runs it in one.
TEST_WORKERS ?= auto
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# The documentation site into site/ (strict: a warning fails the build; tests/test_docs_site.py runs it in CI).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache
