# FLOps developer commands. `make demo` and `make test` are the two set-up commands in README.md.
# The virtualenv is reused when present (FLOPS_VENV), and built when not.
FLOPS_VENV ?= /opt/flops-venv
PY := $(FLOPS_VENV)/bin/python
PIP := $(PY) -m pip
WORKDIR ?= $(CURDIR)/.flops
# The wheel check: a wheel built from this tree, installed into a fresh venv, runs the example from there.
WHEEL_DIR ?= /tmp/flops-wheel
WHEEL_VENV ?= /tmp/flops-wheel-venv

.PHONY: install python-venv containers demo test test-fast test-wheel

# Debian's python3 has no `venv` module until python3-venv is installed.
python-venv:
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }

$(PY): | python-venv
	python3 -m venv $(FLOPS_VENV)

# torch==2.13.0 is the CPU build this machine family carries; a bare `torch` would pull CUDA.
install: $(PY)
	$(PIP) install --disable-pip-version-check -q -e '.[test,inference]'

# System packages and services the tests need: buildah, skopeo, podman, registry, dockerd; iproute2 (namespaces).
containers:
	bash .ci/setup-containers.sh

# Install, then run the digits example end to end on the embedded default (local processes, SQLite MLflow).
demo: install
	$(FLOPS_VENV)/bin/flops submit examples/digits-cnn --config examples/digits-cnn/flops.yaml --workdir $(WORKDIR)

# Install everything the tests need, then run the whole suite (real processes, registry, buildah, dockerd).
# CI=1: a container test whose tooling is missing fails instead of skipping (`containers` set it up).
test: install containers test-wheel
	CI=1 $(FLOPS_VENV)/bin/pytest -p no:cacheprovider -ra --durations=40 --basetemp=/tmp/flops-pytest

test-fast: install
	$(FLOPS_VENV)/bin/pytest -p no:cacheprovider -ra tests/unit

# Build a wheel (not editable), install it into a fresh venv, and run the example from it: 2 learners,
# 1 round, from / so nothing of this checkout is importable. Templates must have come with the wheel.
test-wheel: install
	rm -rf $(WHEEL_DIR) $(WHEEL_VENV) $(WHEEL_DIR)-work
	$(PIP) wheel --disable-pip-version-check -q --no-deps -w $(WHEEL_DIR) .
	python3 -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --disable-pip-version-check -q $(WHEEL_DIR)/flops-*.whl torch==2.13.0 scikit-learn
	cd / && $(WHEEL_VENV)/bin/flops submit $(CURDIR)/examples/digits-cnn --learners 2 --rounds 1 \
	  --workdir $(WHEEL_DIR)-work --json
