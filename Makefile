# The README's two commands are `make run` and `make test`; each installs what it needs, idempotently.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# CPython 3.13 (tools/find-python says what to install when there is none); `make PYTHON=...` picks one.
PYTHON_FOUND := $(shell PYTHON="$(PYTHON)" tools/find-python)
ifeq ($(PYTHON_FOUND),)
$(error no CPython 3.13 interpreter found (see above))
endif
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := devstack/node_modules/.installed
# checkov pins old libraries (pycep-parser 0.5.1, packaging<24, networkx<2.7): it gets its own venv.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_VERSION := 3.3.30
PYTEST_ARGS ?=

.PHONY: help run demo test bench compare lint typecheck unit integration doctor up clean infra stamps fuzz reliability

help:
	@echo "make run     start devstack (local Entra, managed identity, Key Vault, Graph) and run the doctor against it"
	@echo "make test    ruff + mypy + the whole pytest suite + make demo (smoke test)"
	@echo "make demo    start everything, run each capability once, print a summary, exit non-zero on failure"
	@echo "make doctor  run the identity doctor against a running devstack (.devstack/env)"
	@echo "make reliability  the fault matrix: the start-up sync and the webhooks under each fault, checked against the store"
	@echo "make fuzz    every parser of outside input fuzzed with 10,000 examples (make test runs 500)"
	@echo "make compare BASE=dir  every benchmark for another checkout and this one, side by side"
	@echo "make bench   every benchmark (throughput vs ceiling, calls, cold start, memory, CPU, webhooks) -> BENCHMARKS.md"

$(STAMP): requirements.txt requirements-dev.txt
	@$(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null || { rm -rf $(VENV); $(PYTHON_FOUND) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

$(CHECKOV_STAMP): Makefile
	@$(CHECKOV_VENV)/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null || { rm -rf $(CHECKOV_VENV); $(PYTHON_FOUND) -m venv $(CHECKOV_VENV); }
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	@touch $(CHECKOV_STAMP)

$(NODE_STAMP): devstack/package.json devstack/package-lock.json
	cd devstack && npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

# Validate the jobs and routes files and stamp them, so indexing need not load pydantic (shared/stamps.py).
stamps: $(STAMP)
	$(PY) -m shared.stamps

# Dataverse's timings run 20x faster than real (time_scale 0.05) so the first sync takes minutes, not an hour.
run: $(STAMP) $(NODE_STAMP) stamps
	$(PY) -m devstack run --time-scale 0.05

demo: $(STAMP) $(NODE_STAMP) stamps
	$(PY) -m devstack demo --dir .devstack/demo --host-port 0 --time-scale 0.05

# Benchmarks report ratios measured side by side in one run; never part of `make test`.
# Offline infrastructure checks (docs/infra.md): contract tests, the schema walk against the management SDK models,
# the Flex rules, identities, and checkov (also part of `make test`).
infra: $(STAMP) $(CHECKOV_STAMP)
	$(PY) -m pytest tests/infra -q

bench: $(STAMP) $(NODE_STAMP) stamps
	$(PY) -m bench.report

# Every benchmark for another checkout and this one, alternating; exit 1 when a figure is >5 % worse.
# BASE=<a worktree of the revision to compare with, with `python -m shared.stamps` run in it>
compare: $(STAMP) $(NODE_STAMP) stamps
	$(PY) -m bench.compare --base $(BASE)

up: $(STAMP) $(NODE_STAMP) stamps
	$(PY) -m devstack up

doctor: $(STAMP)
	$(PY) -m shared.identity.doctor --env-file .devstack/env

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy

# The fault matrix (RELIABILITY.md): 40k rows under each fault, then all together; rewrites the table.
reliability: $(STAMP) $(NODE_STAMP) stamps
	$(PY) -m tests.reliability.matrix --rows 40000 --write RELIABILITY.md
	$(PY) -m tests.reliability.webhook_matrix --writes 2000 --time-scale 0.25 --write RELIABILITY.md

# make test runs 500 examples per fuzz target; this runs 10,000 each (about an hour on 2 cores). The
# key-addressing properties (tests/fuzz/test_key_addressing.py) write through devstack: Azurite and the host.
fuzz: $(STAMP) $(NODE_STAMP) stamps
	FUZZ_EXAMPLES=10000 $(PY) -m pytest tests/fuzz -q --hypothesis-show-statistics

unit: $(STAMP)
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

integration: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

# Every step must pass; pytest's own exit status (including 5, "no tests collected") fails the target.
test: $(STAMP) $(NODE_STAMP) $(CHECKOV_STAMP) stamps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m bandit -q -r shared
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m devstack demo --dir .devstack/demo --host-port 0 --time-scale 0.02 --seed-accounts 2000

clean:
	rm -rf .devstack .mypy_cache .ruff_cache .pytest_cache tests/.artifacts
