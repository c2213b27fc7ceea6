# Every target sets up .venv itself from pyproject.toml, so a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install test lint typecheck unit integration schemas clean

help:
	@echo "make test    lint, type-check and run the whole test suite (unit + real broker)"
	@echo "make schemas regenerate schemas/ from the models"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check worker tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy worker

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration tests/e2e -q

test: lint typecheck $(STAMP)
	$(BIN)/pytest -q

schemas: $(STAMP)
	$(BIN)/feedback-worker schemas

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
