# The README's two commands: `make repro` (the main job) and `make test` (the test suite).
# Both create or update the local virtual environment .venv first; a stamp file makes
# re-runs skip the install unless the dependency declarations changed.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip's local mirrors print one warning per missing index entry; keep the log readable.
QUIET_PIP := grep -v '^WARNING: Location' || true

.PHONY: venv test test-notebooks test-python check-sync test-slow repro data export clean-nbs

$(STAMP): settings.ini setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c 'import incres, torch, nbdev, papermill, dvc'
	touch $@

venv: $(STAMP)

## Tests: notebooks and package in sync, notebooks as tests, then the pytest suite.
test: $(STAMP) check-sync test-notebooks test-python

check-sync: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH .ci/check-sync

test-notebooks: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --timing

test-python: $(STAMP)
	$(BIN)/pytest -q -n 2 tests

## Also run the cells flagged slow (not part of `make test`).
test-slow: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --flags slow --timing
	$(BIN)/pytest -q -n 2 tests --runslow

## The main job.
repro: $(STAMP)
	mkdir -p runs/theory
	$(BIN)/papermill nbs/02_theory.ipynb runs/theory/02_theory.ipynb --cwd nbs
	@echo "Executed theory notebook: runs/theory/02_theory.ipynb"

## Developer helpers.
export: $(STAMP)
	$(BIN)/nbdev_export
clean-nbs: $(STAMP)
	$(BIN)/nbdev_clean
