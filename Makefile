# The README's two commands: `make up` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PIP = $(VENV)/bin/pip

.PHONY: up test lint property fault storm registry-scale load zoo audit cluster-check compose-check clean

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is needed ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# pip puts the locked uv in the venv; uv installs the rest (scripts/install_locked.py passes it
# pip's index settings and constraints): the same pins, in a fraction of pip's time.
$(VENV)/bin/uv: $(VENV)/bin/python requirements.lock
	$(PIP) install --quiet -c requirements.lock uv
	@touch $@

# Bytecode compiled at install, as pip did: where PYTHONDONTWRITEBYTECODE is set (this CI), a
# venv without it compiles every module it imports again in every process (imports took 20 s, not
# 10). The compiling is most of the install's time.
INSTALL = $(VENV)/bin/python scripts/install_locked.py --quiet --compile-bytecode -c requirements.lock

$(VENV)/.stack: $(VENV)/bin/uv pyproject.toml requirements.lock
	@echo "Installing sigserve and its dependencies into $(VENV) (minutes the first time)..."
	$(INSTALL) -e '.[stack]'
	@touch $@

# One resolve for both extras, not .stack's then this one: it stands for .stack too.
$(VENV)/.dev: $(VENV)/bin/uv pyproject.toml requirements.lock
	@echo "Installing sigserve, its dependencies and the dev tools into $(VENV)..."
	$(INSTALL) -e '.[stack,dev]'
	@touch $(VENV)/.stack $@

up: $(VENV)/.stack
	$(VENV)/bin/sigserve up

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -ra --durations=25 -m "not fault and not load and not zoo and not cluster"

# The gate's property test with thousands of examples per property (minutes, not in `make test`).
property: $(VENV)/.dev
	HYPOTHESIS_PROFILE=thorough $(VENV)/bin/python -m pytest tests/property -q --hypothesis-show-statistics

# The fault suite (tests/fault): processes killed, stopped and locked on the real stack, outages
# waited out (minutes, not in `make test`). Each test's figures are listed at the end.
# One file or test: make fault FAULT=tests/fault/test_controller_faults.py
FAULT ?= tests/fault
fault: $(VENV)/.dev
	$(VENV)/bin/python -m pytest $(FAULT) -m fault -ra

# A storm of 1,000 registrations over 100 models, and 5 minutes of inference while versions land
# and pins move (tests/load; minutes, not in `make test`). They print their figures (-s).
storm: $(VENV)/.dev
	$(VENV)/bin/python -m pytest tests/load/test_storm.py -m load -ra -s

# A registry of 10,000 models (built once in ~25 s, cached in ~/.cache/sigserve-registry-scale):
# a fresh controller primes it, waits for the write-back to drain, then a resync with nothing
# changed, webhooks during resyncs, CPU and memory (benchmarks/registry_scale.py; priming
# 10,000 models x 5 versions took 307-313 s here, the write-back then ~45 min at ~4 models/s,
# --drain-timeout caps it; not in make test). REGISTRY_SCALE="--models 1000 --versions 5" runs
# in ~8 min.
REGISTRY_SCALE ?=
registry-scale: $(VENV)/.dev
	$(VENV)/bin/python benchmarks/registry_scale.py $(REGISTRY_SCALE)

load: $(VENV)/.dev
	$(VENV)/bin/python -m pytest tests/load/test_inference_load.py -m load -ra -s

# Real models from their own clients (tests/zoo): an MLflow 2.22 client's scikit-learn model,
# its venv built from PyPI once (~40 s) and cached in ~/.cache/sigserve-test-envs.
zoo: $(VENV)/.dev
	$(VENV)/bin/python -m pytest tests/zoo -m zoo -ra -s

# The locked dependencies against a vulnerability database (pip-audit, in a venv of its own so
# its dependencies stay out of the lock; AUDIT_SERVICE=osv for OSV). It fails when the database
# cannot be reached, rather than pass with nothing checked (scripts/audit_dependencies.py).
AUDIT_VENV ?= .audit-venv
$(AUDIT_VENV)/bin/pip-audit:
	$(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/pip install --quiet pip-audit==2.10.1

audit: $(VENV)/bin/python $(AUDIT_VENV)/bin/pip-audit
	$(VENV)/bin/python scripts/audit_dependencies.py $(AUDIT_VENV)/bin/pip-audit requirements.lock

# The serving app on a two-node Ray cluster of its own (`ray start` twice on this machine),
# deployed by `sigserve serve`: a replica on the second node answers, also with the controller
# down (tests/integration/test_ray_cluster.py; ~2 min, ~2.5 GB more memory while it runs).
cluster-check: $(VENV)/.dev
	$(VENV)/bin/python -m pytest tests/integration/test_ray_cluster.py -m cluster -ra -s

# The docker-compose demo, end to end (deploy/compose/check.py; ~2.5 min, ~5 with a cold build):
# builds the images (the stand-in base image and the wheelhouse where there are none), brings
# the stack up, runs the notebook's scenario, a webhook across containers and a controller
# restart from the host, prints the figures, and removes it all (volumes too), also on failure.
compose-check: $(VENV)/.stack
	$(VENV)/bin/python deploy/compose/check.py

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .sigserve
