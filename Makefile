# msa-debias-bench: every target runs inside $(VENV) (created by `make install`).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
BENCH_ROOT ?= runs
# extra options of `make perf`'s training throughput script, e.g. PERF_ARGS="--accelerator gpu" (docs/gpu.md)
PERF_ARGS ?=
export WANDB_MODE ?= offline
# Development checkouts: the real data in ../shared/data beside the checkout, when it exists and MSABENCH_DATA is
# unset (the product itself looks only at <dataset>.root, $$MSABENCH_DATA and the per-user data directory).
SHARED_DATA := $(abspath $(wildcard ../shared/data))
ifneq ($(SHARED_DATA),)
export MSABENCH_DATA ?= $(SHARED_DATA)
endif

.PHONY: install bench check splits perf test test-all lint clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

install: $(PY)  ## create .venv, install the CPU torch build, then the project (dev + offline text encoder extras)
	$(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[dev,encoder]"

bench:  ## the main job: every method x synthetic benchmark x 3 seeds (local pool), then the leaderboard
	$(BIN)/msabench sweep launch default root=$(BENCH_ROOT)
	$(BIN)/msabench leaderboard $(BENCH_ROOT)/default

check:  ## CI regression check: calibrated test of OOD accuracy against benchmarks/reference/ci.csv
	$(BIN)/msabench check

splits:  ## (maintainers) rebuild the committed mosi_utt OOD manifests and their reports in ood_splits/manifests
	$(BIN)/msabench splits build dataset=mosi_utt --modality text audio vision tav --report --out ood_splits/manifests

perf:  ## printed speed / memory figures: training throughput (vs the earlier kernels), split annealing, MMSA cache
	$(PY) -m benchmarks.perf_training --compare $(PERF_ARGS)
	$(PY) benchmarks/perf_annealing.py
	$(PY) benchmarks/perf_cache.py --scale 0.1

test:  ## fast tests (the README's test command; what CI runs)
	WANDB_MODE=disabled $(PY) -m pytest -m "not slow" -q

test-all:  ## every test, slow ones included
	WANDB_MODE=disabled $(PY) -m pytest -q

lint:  ## ruff
	$(BIN)/ruff check datamodules methods ood_splits benchmarks tests

clean:  ## remove caches and build files (keeps runs/ and .venv)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache lightning_logs
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
