# Quick start: `make run` (small local job) and `make test` (every test). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on a small default: generate -> verify -> train -> evaluate -> package.
run: $(STAMP)
	$(BIN)/roadsense run --preset smoke --output runs/smoke

# Every test, slow ones included.
test: $(STAMP)
	$(BIN)/python -m pytest

# Everything but the slow tests, for the edit-test loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/roadsense bench env
	$(BIN)/roadsense bench train

clean:
	rm -rf $(VENV) runs .pytest_cache
