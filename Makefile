# One-command set-up: `make run` and `make test` each build .venv from nothing when it is absent.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run params test lint format bench clean-venv ui

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the dependency list changes.
# The distribution was called `glide` before it became `glide-pipeline`: drop that stale editable
# install first, so one distribution owns the `glide` package and command.
$(STAMP): pyproject.toml | $(BIN)/python
	-$(BIN)/pip uninstall --quiet --yes glide 2>/dev/null
	rm -rf src/glide.egg-info
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# params.yaml (what the stages' `params:` in dvc.yaml read) is conf/ composed: regenerated first so
# it never goes stale; `dvc exp run -S key=value` rewrites it with the overrides itself.
run: params
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

params: $(STAMP)
	$(BIN)/python pipelines/params.py

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/prepare.py

clean-venv:
	rm -rf $(VENV)

# MLflow UI on http://127.0.0.1:$(UI_PORT) over the default store (runs, registry, aliases).
UI_PORT ?= 5000
ui: $(STAMP)
	$(BIN)/mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--artifacts-destination $(CURDIR)/mlartifacts --host 127.0.0.1 --port $(UI_PORT) --workers 1
