# FLOps developer commands. `make demo` and `make test` are the two set-up commands in README.md.
# The virtualenv is reused when present (FLOPS_VENV), and built when not.
FLOPS_VENV ?= /opt/flops-venv
PY := $(FLOPS_VENV)/bin/python
PIP := $(PY) -m pip
WORKDIR ?= $(CURDIR)/.flops

.PHONY: install containers demo test test-fast

$(PY):
	python3 -m venv $(FLOPS_VENV)

# torch==2.13.0 is the CPU build this machine family carries; a bare `torch` would pull CUDA.
install: $(PY)
	$(PIP) install --disable-pip-version-check -q -e '.[test,inference]'

# System packages and services the image-builder tests need: buildah, skopeo, podman, registry, dockerd.
containers:
	bash .ci/setup-containers.sh

# Install, then run the digits example end to end on the embedded default (local processes, SQLite MLflow).
demo: install
	$(FLOPS_VENV)/bin/flops submit examples/digits-cnn --config examples/digits-cnn/flops.yaml --workdir $(WORKDIR)

# Install everything the tests need, then run the whole suite (real processes, registry, buildah).
test: install containers
	$(FLOPS_VENV)/bin/pytest -p no:cacheprovider -ra --basetemp=/tmp/flops-pytest

test-fast: install
	$(FLOPS_VENV)/bin/pytest -p no:cacheprovider -ra tests/unit
