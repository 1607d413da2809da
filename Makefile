# ragloop: `make run` builds the index of the sample knowledge base with `dvc repro`; `make test` runs every check.
# Both start from nothing but Python 3.11 and the package registries.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Offline and quiet: Prefect, MLflow, DVC, Chroma and Hugging Face all phone home otherwise
# (an HF hub lookup hangs ~70 s before failing on a machine with no route to the hub).
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export PREFECT_LOGGING_LEVEL ?= WARNING
export MLFLOW_DISABLE_TELEMETRY = true
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR = false
export MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT = true
export DVC_NO_ANALYTICS = 1
export ANONYMIZED_TELEMETRY = False
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY = 1
export HF_HUB_DISABLE_PROGRESS_BARS = 1
export TOKENIZERS_PARALLELISM = false
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help install browser run stop test lint format typecheck unit docs bench bench-behaviour bench-peers clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or: make PYTHON=/path/to/python3.11 ...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: a plain `torch` requirement would pull the multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with the pinned stack

# The browser tests drive Debian's Chromium through Playwright (`playwright install` fetches browsers from a CDN).
CHROMIUM ?= /usr/bin/chromium
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo -n) env DEBIAN_FRONTEND=noninteractive apt-get
browser: ## install Debian's chromium for the browser tests (tests/browser), unless it is there
	@test -x $(CHROMIUM) || $(APT_GET) install -y -q --no-install-recommends chromium \
		|| { $(APT_GET) update -q && $(APT_GET) install -y -q --no-install-recommends chromium; }

# The stages' `ragloop` commands reuse the project's Prefect server (.prefect); it keeps running for its UI.
run: $(STAMP) ## the whole loop: dvc repro (base model, index, evaluate, finetune, gate), then dvc metrics show
	@test -d .git || { git init -q && git add -A && git -c user.name=ragloop -c user.email=ragloop@localhost commit -qm "initial"; }
	$(BIN)/ragloop server start
	dvc repro
	dvc metrics show
	@echo "Prefect UI, with the runs above: $$($(BIN)/ragloop server status --json | \
		$(BIN)/python -c 'import json, sys; print(json.load(sys.stdin)["url"])') (make stop ends the server)"

stop: ## stop the project's Prefect server (started by make run or by any ragloop command that runs a flow)
	@if test -x $(BIN)/ragloop; then $(BIN)/ragloop server stop; fi

# The suite runs in TEST_WORKERS pytest-xdist processes, one test file per worker at a time (a file's tests share
# their module fixtures and run in order; the files with slow tests go first, tests/conftest.py). Most of its time
# is servers starting and flows waiting on states, which overlap well; torch runs one thread in each (conftest.py).
# TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP) browser lint typecheck ## lint, type-check and run the whole test suite
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests; rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

unit: $(STAMP) ## only the fast unit tests
	$(BIN)/pytest -q tests/unit

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP) ## mypy on components/ and flows/ (pyproject.toml [tool.mypy] files)
	$(BIN)/mypy

docs: $(STAMP) ## regenerate docs/cli.md from the command-line app (tests/unit/test_cli_reference.py checks it)
	$(BIN)/python -m flows.cli.reference docs/cli.md

bench: $(STAMP) ## knowledge-path and scale-out benchmarks (need ../shared/data); figures in bench/README.md
	for b in index_throughput no_change churn scale_out; do $(BIN)/python bench/$$b.py || exit 1; done

bench-behaviour: $(STAMP) ## behaviour-path benchmarks: regression -> promotion time, banking77 intent accuracy
	test -f data/models/base/model.safetensors || $(BIN)/ragloop base-model
	for b in regression_to_promotion banking77; do $(BIN)/python bench/$$b.py || exit 1; done

bench-peers: $(STAMP) ## head-to-head with LangChain and LlamaIndex: speed, store contents, retrieval quality, long requests
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/head_to_head.py && $(BIN)/python bench/retrieval_quality.py && $(BIN)/python bench/long_queries.py

clean: stop ## remove local state (index, metrics, MLflow store, Prefect home); keeps .venv
	rm -rf data/index data/metrics .mlflow .prefect
