# Every target sets up .venv itself from pyproject.toml, so a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install test test-chaos lint typecheck unit integration schemas clean demo bench soak sdk-test docs docs-reference

help:
	@echo "make demo    the whole system on this machine for a minute, checked end to end"
	@echo "make test    lint, type-check and run the whole test suite (unit + real broker)"
	@echo "make bench   all benchmarks against same-run baselines; writes bench/REPORT.md"
	@echo "make test-chaos  the long chaos scenarios (kills, rebalances, outages, broker restart)"
	@echo "make soak    steady mixed load with faults for MINUTES (default 10); fails on growth"
	@echo "make schemas regenerate schemas/ from the models"
	@echo "make sdk-test the browser SDK: build, typecheck, unit tests, real-Chromium beacon test, size"
	@echo "make docs    build the documentation site into site/ (offline, --strict)"
	@echo "make docs-reference regenerate docs/reference/ from Settings, the CLI, the metrics and schemas/"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check worker tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy worker tests

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration tests/e2e -q

test: lint typecheck sdk-test $(STAMP)
	$(BIN)/pytest -q --durations=15

demo: $(STAMP)
	$(BIN)/feedback-worker demo

test-chaos: $(STAMP)
	CHAOS_FULL=1 $(BIN)/pytest -q -m chaos tests/chaos

bench: $(STAMP)
	$(BIN)/python bench/report.py

MINUTES ?= 10
soak: $(STAMP)
	$(BIN)/python bench/soak.py --minutes $(MINUTES)

schemas: $(STAMP)
	$(BIN)/feedback-worker schemas

# The site; `make test` builds it too (tests/unit/test_docs.py), with --strict, into a temp dir.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# docs/reference/ is generated from the code; a unit test fails when it is out of date.
docs-reference: $(STAMP)
	$(BIN)/python -m worker.devtools.reference

# Needs Node 20+ and npm; the real-browser test runs when /usr/bin/chromium exists.
sdk-test:
	cd sdk/browser && npm ci && npm test

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache site
