# The two commands the README promises: `make book` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= cpu
# where MNIST-style data live (the paper profile reads MNIST); empty: $FLATNESS_DATA or ./data
DATA ?=
BOOK_ARGS ?=
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: book site test lint format bench clean clean-results

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

## Execute every chapter with papermill on PROFILE (default cpu) and render _build/html;
## PROFILE=paper renders from published runs and trains nothing (BOOK_ARGS=--train-missing does).
book: $(STAMP)
	$(BIN)/python -m flatness book --profile $(PROFILE) $(if $(DATA),--data-root $(DATA)) $(BOOK_ARGS)

## The book readers see online: each chapter at the largest profile it can show without training
## (paper where its runs or computations are published and DATA holds MNIST, else cpu).
site: $(STAMP)
	$(BIN)/python -m flatness book --best-evidence --profile cpu $(if $(DATA),--data-root $(DATA)) $(BOOK_ARGS)

## The whole test suite, including a smoke-profile build of the book.
test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf _build

clean-results:
	rm -rf results

## flatness.hessian against PyHessian, hessian-eigenthings and curvlinops at equal achieved accuracy,
## then training throughput against a plain torchvision DataLoader loop
## (prints a table, writes _build/bench/hessian.json); BENCH_ARGS=--quick for a short run.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	touch $@

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/hessian_bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/train_bench.py --out _build/bench/train.json
