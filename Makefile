# Quick start: `make run` (small local job) and `make test` (every test). Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The sagemaker SDK (the [sdk] extra) pulls pyarrow, which libsumo must not see: its own venv.
SDK_VENV := .venv-sdk
SDK_STAMP := $(SDK_VENV)/.installed

.PHONY: setup run lint test test-fast test-sdk bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(SDK_STAMP): pyproject.toml
	$(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/pip install --quiet --upgrade pip
	$(SDK_VENV)/bin/pip install --quiet -e '.[dev,sdk]'
	touch $(SDK_STAMP)

# The main job on a small default: generate -> verify -> train -> evaluate -> package.
run: $(STAMP)
	$(BIN)/roadsense run --preset smoke --output runs/smoke

# ruff over the whole tree; mypy --strict on roadsense/ and launcher/ (pyproject.toml holds both configs).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m mypy

# Lint, then every test, slow ones included; the SDK's own tests run in the SDK's venv (they skip in the main one).
test: $(STAMP) lint test-sdk
	$(BIN)/python -m pytest

test-sdk: $(SDK_STAMP)
	ROADSENSE_SDK_TESTS=required $(SDK_VENV)/bin/python -m pytest tests/test_sdk.py

# Everything but the slow tests, for the edit-test loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/roadsense bench env
	$(BIN)/roadsense bench train

clean:
	rm -rf $(VENV) $(SDK_VENV) runs .pytest_cache
