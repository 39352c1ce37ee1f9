# effdl_lightning: `make train` (set up + default job), `make test` (set up + tests), `make lint`, `make bench`.
# Everything is installed into .venv from nothing. Torch is installed first, pinned (override TORCH_VERSION,
# or TORCH_SPEC for a custom wheel/index, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your index>").
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test lint format bench clean help

help:
	@echo "make train  - set up .venv and run the default job (LeNet-5 on the MNIST subset, offline)"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make lint   - ruff + mypy on the package"
	@echo "make bench  - run the benchmarks (writes benchmarks/results/)"
	@echo "variables: TORCH_VERSION=$(TORCH_VERSION) ARGS='<hydra overrides>' PYTEST_ARGS='<pytest args>'"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

train: setup
	$(PY) train.py $(ARGS)

test: setup
	WANDB_MODE=offline $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check effdl_lightning tests benchmarks train.py
	$(PY) -m ruff format --check effdl_lightning tests benchmarks train.py
	$(PY) -m mypy effdl_lightning

format: setup
	$(PY) -m ruff format effdl_lightning tests benchmarks train.py
	$(PY) -m ruff check --fix effdl_lightning tests benchmarks train.py

bench: setup
	$(PY) -m pip install --quiet -e .[bench]
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
