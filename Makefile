# The README's two commands: `make repro` (the main job) and `make test` (the test suite).
# Both create or update the local virtual environment .venv first, from the lock file (every package at an exact
# version; `make lock` regenerates it); a stamp file makes re-runs skip the install unless the dependency
# declarations or the lock changed.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip's local mirrors print one warning per missing index entry; keep the log readable (pip's own exit status
# still fails the recipe: pipefail).
QUIET_PIP := { grep -v '^WARNING: Location' || true; }
# The dev environment (settings.ini: requirements + dev_requirements), every package pinned; made by pip-compile.
LOCK := requirements.lock
# torch and torchvision at the releases the development machines hold (a newer torch cannot be installed there).
LOCK_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: system venv lock plots-template test test-notebooks test-python check-sync test-slow repro data bench export \
  clean-nbs

# pip first (at the lock's version), then every locked package, then incres itself without dependencies, built
# with the locked setuptools.
$(STAMP): settings.ini setup.py pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$$(grep -E '^pip==' $(LOCK))" 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q -r $(LOCK) 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c 'import incres, torch, nbdev, papermill, dvc'
	touch $@

venv: $(STAMP)

## Regenerate the lock from settings.ini with pip-compile (pip-tools), keeping the locked versions that still fit;
## `make lock UPGRADE=1` moves every package to its newest allowed release. Commit the result.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/pip-compile || \
	  $(BIN)/pip install -q "$$(grep -sE '^pip-tools==' $(LOCK) || echo pip-tools)" 2>&1 | $(QUIET_PIP)
	CUSTOM_COMPILE_COMMAND='make lock' $(BIN)/pip-compile -q --extra dev --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) $(addprefix -P ,$(LOCK_PINS)) \
	  -o $(LOCK) setup.py 2>&1 | $(QUIET_PIP)

## System packages the tests and the pipeline use, from Debian (installed only when missing and possible):
## headless Chromium for the report's browser test, the official Fashion-MNIST files.
system:
	@if ! command -v chromium >/dev/null || [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q chromium dataset-fashion-mnist >/dev/null 2>&1 || \
	      echo "warning: apt-get install chromium dataset-fashion-mnist failed"; \
	  else echo "note: install chromium and dataset-fashion-mnist (Debian) for the browser test and offline" \
	    "Fashion-MNIST"; fi; \
	fi

## Tests: notebooks and package in sync, notebooks as tests, then the pytest suite.
test: $(STAMP) system check-sync test-notebooks test-python

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

## The main job: prepare the datasets if missing (offline sources, else the torchvision download), then run
## the DVC pipeline (dvc.yaml; profile in params.yaml) and point at the HTML report.
# Offline CIFAR-10 source when torchvision's download is unreachable: override with
# `make repro CIFAR10_SOURCE=/path/to/cifar-10-python.tar.gz`; by default the JPEG copy beside this checkout
# (../shared/datasets, the location incres looks at itself) or on the development machines (/work/shared/datasets).
CIFAR10_SOURCE ?= $(firstword \
  $(wildcard ../shared/datasets/cifar10-jpg.tar.gz /work/shared/datasets/cifar10-jpg.tar.gz))

data: $(STAMP) system
	$(BIN)/incres data prepare fashion_mnist --if-missing
	$(BIN)/incres data prepare cifar10 --if-missing $(if $(CIFAR10_SOURCE),--source $(CIFAR10_SOURCE))
	$(BIN)/dvc commit -q -f data.dvc

# One torch thread per process unless OMP_NUM_THREADS says otherwise: a CPU's results depend on the thread count
# (reduction order), and the committed outputs were made with one, so `make repro` reproduces them bit for bit on a
# machine of the same kind whatever its number of cores (the runs record it: metrics.json's machine.torch_threads).
REPRO_THREADS ?= $(or $(OMP_NUM_THREADS),1)

repro: $(STAMP) data
	OMP_NUM_THREADS=$(REPRO_THREADS) PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro
	@echo "Report: reports/html/index.html (figures and tables in reports/<dataset>/; metrics: .venv/bin/dvc metrics show)"

## The `gpu` profile on one CUDA GPU (params.yaml's profiles.gpu, benchmarks/gpu/dvc.yaml; benchmarks/README.md):
## ResNet-56 on the whole of CIFAR-10, e2e and two growth recipes, one seed, sized for at most 8 minutes on an
## H100-class GPU. A pipeline of its own, so params.yaml stays as it is and the main pipeline's results are not
## touched; results in benchmarks/gpu/.
.PHONY: repro-gpu
repro-gpu: $(STAMP) data
	@$(BIN)/python -c 'import sys, torch; torch.cuda.is_available() or sys.exit("repro-gpu: torch sees no CUDA GPU; \
	the gpu profile would train ResNet-56 for hours on the CPU")'
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro benchmarks/gpu/dvc.yaml
	@for f in benchmarks/gpu/reports/*/compute_to_accuracy.md; do echo "$$f:"; cat "$$f"; done
	@$(BIN)/python benchmarks/mfu.py --show benchmarks/gpu/results/mfu-gpu.json
	@echo "Runs: benchmarks/gpu/runs/<dataset>/<strategy>/; figures: benchmarks/gpu/reports/<dataset>/;" \
	  "metrics: .venv/bin/dvc metrics show"

## The performance benchmarks (benchmarks/README.md), each writing benchmarks/results/<name>.json; about 1 hour on
## 2 CPU cores, almost all of it compute_to_accuracy (21 ResNet-20 runs). Run on an otherwise idle machine, then
## `make repro` re-renders reports/performance from the new results.
bench: $(STAMP) data
	$(BIN)/python benchmarks/engine_overhead.py
	$(BIN)/python benchmarks/mfu.py
	$(BIN)/python benchmarks/compute_to_accuracy.py

## The page `dvc plots show` writes draws offline: its template (.dvc/plots/offline/index.html, .dvc/config) carries
## vega, vega-lite and vega-embed inline. Rebuild it (npm registry) when dvc-render moves to other versions of them.
plots-template: $(STAMP)
	$(BIN)/python .dvc/plots/offline/build.py

## Developer helpers.
export: $(STAMP)
	$(BIN)/nbdev_export
clean-nbs: $(STAMP)
	$(BIN)/nbdev_clean

## The documentation site, without Quarto (.ci/docs.py): every notebook under nbs/ as one HTML page in _docs/
## (nbconvert, figures embedded), each with a sidebar in nbs/index.ipynb's reading order. Open _docs/index.html.
.PHONY: docs
docs: $(STAMP)
	$(BIN)/python .ci/docs.py _docs
