# Two commands matter: `make run` (start everything locally and run a demo job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')

.PHONY: install proto proto-check lint typecheck format test test-unit run up down bench bench-attacks soak clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# promtool (Debian's prometheus package) checks deploy/prometheus/rules.yaml in the tests.
	command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	touch $(STAMP)

# Regenerates the committed Python stubs under gen/.
proto: $(STAMP)
	$(PY) -m devstack.protogen gen

# Fails when the committed stubs differ from what the protos generate.
proto-check: $(STAMP)
	$(PY) -m devstack.protogen --check gen
	$(VENV)/bin/buf lint protos

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Strict on services/ (settings in pyproject.toml).
typecheck: $(STAMP)
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: $(STAMP) proto-check lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

run: $(STAMP)
	$(PY) -m devstack run

up: $(STAMP)
	$(PY) -m devstack up

down: $(STAMP)
	$(PY) -m devstack down

bench: $(STAMP)
	$(PY) -m bench.run

# The hardening review's attacks, measured (memory, answer times); not part of `bench`.
bench-attacks: $(STAMP)
	$(PY) -m bench.attacks

# Load with faults (not part of `test`): SOAK_JOBS jobs over SOAK_SECONDS while workers are killed
# and nats-server restarts; fails unless every job ends once with its outputs recorded once.
soak: $(STAMP)
	$(PY) -m bench.soak

clean:
	rm -rf .run $(VENV)
