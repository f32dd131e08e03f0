"""Cost of a LoRA finetune step against a full one, side by side in one run, on the cpu-demo model.

    .venv/bin/python bench/bench_lora.py                  # torch.compile on (as the cpu-demo preset)
    .venv/bin/python bench/bench_lora.py --compile off --steps 10

The model is train.py's ``cpu-demo`` preset built directly with ``model.GPT`` (4 layers, d 128, bilinear,
compact vocabulary of 19,379 ids) on random tokens, 16×128 per step. Variants: full (every weight trainable),
LoRA r=8 on ``all`` (q, k, v, o, mlp_w, mlp_v, mlp_p), on ``all,-k``, on ``k``, and on ``all`` behind a separator
mask (``model.lora``). Each variant is its own model (the same base weights), compiled once; the variants take
turns step by step, so bursts of load on a shared machine hit each alike. Reported: the median forward +
backward time per variant and its ratio to the full step (optimizer steps are not timed: Adam over the
adapters is a few thousand elements).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import GPT  # noqa: E402
from model.lora import LoRAConfig, apply_lora, parse_lora_targets  # noqa: E402
from train import PRESETS, TrainConfig  # noqa: E402

COMPACT_VOCAB = 19_379  # the cpu-demo's compact vocabulary on the Shakespeare corpus
SEPARATOR = 7  # the masked variant's separator id: random tokens hold it near the start of most rows

VARIANTS = {  # name: (targets, masked)
    "full": (None, False),
    "LoRA all": ("all", False),
    "LoRA all,-k": ("all,-k", False),
    "LoRA k": ("k", False),
    "LoRA all, masked": ("all", True),
}


def variant(base: GPT, targets: str | None, masked: bool) -> GPT:
    model = copy.deepcopy(base)
    if targets is not None:
        cfg = LoRAConfig(
            8, parse_lora_targets(targets, model.config.order), mask_token=SEPARATOR if masked else None
        )
        apply_lora(model, cfg, torch.Generator().manual_seed(0))
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="timed steps per variant (after 3 warm-up steps)"
    )
    parser.add_argument("--compile", choices=("on", "off"), default="on")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(**PRESETS["cpu-demo"])
    torch.manual_seed(0)
    base = GPT(cfg.model_config(COMPACT_VOCAB))
    models = {name: variant(base, *spec) for name, spec in VARIANTS.items()}
    nets = {name: torch.compile(m) if args.compile == "on" else m for name, m in models.items()}
    x = torch.randint(0, COMPACT_VOCAB, (cfg.micro_batch, cfg.seq_len))
    times: dict[str, list[float]] = {name: [] for name in nets}
    for step in range(3 + args.steps):
        for name, net in nets.items():
            models[name].zero_grad(set_to_none=True)
            start = time.perf_counter()
            net(x, x).backward()
            if step >= 3:
                times[name].append(time.perf_counter() - start)
    full = statistics.median(times["full"])
    print(
        f"cpu-demo model, {cfg.micro_batch}×{cfg.seq_len} tokens, compile {args.compile}, {args.steps} steps"
    )
    print(f"{'variant':<18} {'trainable':>10} {'fwd+bwd ms':>11} {'vs full':>8}")
    for name, ts in times.items():
        trainable = sum(p.numel() for p in models[name].parameters() if p.requires_grad)
        med = statistics.median(ts)
        print(f"{name:<18} {trainable:>10,} {1000 * med:>11.1f} {med / full:>7.2f}×")


if __name__ == "__main__":
    from errors import run_cli

    sys.exit(run_cli(main))
