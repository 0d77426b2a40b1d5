# msa-debias-bench: every target runs inside $(VENV) (created by `make install`).
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
SEEDS ?= 1111 1112 1113
BENCH_DIR ?= runs/bench
export WANDB_MODE ?= offline

.PHONY: install bench test test-all lint clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

install: $(PY)  ## create .venv, install the CPU torch build, then the project with its dev extras
	$(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[dev]"

bench:  ## the main job: baseline x synthetic benchmark x 3 seeds, then the leaderboard
	@for seed in $(SEEDS); do \
		$(BIN)/msabench run --skip-existing method=baseline dataset=synthetic seed=$$seed \
			output.root=$(dir $(BENCH_DIR)) output.sweep=$(notdir $(BENCH_DIR)) || exit 1; \
	done
	$(BIN)/msabench leaderboard $(BENCH_DIR)

test:  ## fast tests (the README's test command; what CI runs)
	WANDB_MODE=disabled $(PY) -m pytest -m "not slow" -q

test-all:  ## every test, slow ones included
	WANDB_MODE=disabled $(PY) -m pytest -q

lint:  ## ruff
	$(BIN)/ruff check datamodules methods ood_splits benchmarks tests

clean:  ## remove caches and build files (keeps runs/ and .venv)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache lightning_logs
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
