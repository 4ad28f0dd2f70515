# One-command set-up: `make run` and `make test` each build .venv from nothing when it is absent.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run distill params test test-numerics docs lint format bench clean-venv ui

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

# Distillation of the trained base and upsampler, its evaluation and registry versions
# (pipelines/distill/dvc.yaml): outside `make run`'s
# default pipeline (its 30-minute budget); brings models/base up to date first.
distill: params
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro pipelines/distill/dvc.yaml

params: $(STAMP)
	$(BIN)/python pipelines/params.py

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest

# The float-sensitive tests (marker `numerics`) again with the kernels of other CPUs: AVX2 without
# AVX-512 (what an AMD Zen 2/3 or an older Intel runs) and torch's plain C++ kernels, so a
# developer on one kind of CPU sees what another kind computes. docs/development.md.
NUMERICS_KERNELS := "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" \
	"ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41"
test-numerics: $(STAMP)
	@for kernels in $(NUMERICS_KERNELS); do \
		echo "== numerics tests with $$kernels"; \
		env $$kernels PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -m 'numerics and not slow' || exit 1; \
	done

# The docs check (tests/test_docs.py, also in the default suite): README.md and docs/*.md links and
# anchors resolve, the commands they show parse (CLI, Hydra overrides, Makefile targets), README
# under 15 KB. docs/development.md, "The docs check".
docs: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q tests/test_docs.py

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
