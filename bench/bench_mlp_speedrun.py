"""CPU mini-speedrun: every MLP kind trained with the same recipe and wall-clock budget, side by side.

    .venv/bin/python bench/bench_mlp_speedrun.py --seconds 120
    .venv/bin/python bench/bench_mlp_speedrun.py --kinds relu2 bilinear --seconds 60 -- --d-model 96

Each kind runs the cpu-demo preset (Shakespeare, 4×128, compact vocabulary) through ``train.main`` with
``--max-train-seconds`` as the budget: the schedule follows the clock, compilation is excluded by the untimed
warm-up, and validation (the whole held-out split) runs after the budget. Runs are sequential in one process
so they share the machine's state; on a shared machine compare ratios, not absolute times.
Arguments after ``--`` are passed to train.py for every kind.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from model import MLP_KINDS  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    passthrough = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kinds", nargs="+", default=list(MLP_KINDS), choices=MLP_KINDS)
    parser.add_argument("--seconds", type=float, default=120.0, help="timed training budget per kind")
    parser.add_argument("--mlp-order", type=int, default=3, help="k for multilinear")
    parser.add_argument("--out-root", default="runs/bench_speedrun")
    args = parser.parse_args(argv)

    rows = []
    for kind in args.kinds:
        started = time.time()
        result = train.main(
            [
                "--mlp", kind, "--mlp-order", str(args.mlp_order if kind == "multilinear" else 2),
                "--run-name", kind, "--out-root", args.out_root, "--steps", "100000",
                "--max-train-seconds", str(args.seconds), "--sample-tokens", "0", "--save-every", "0",
                *passthrough,
            ]
        )  # fmt: skip
        cfg = train.parse_config(["--mlp", kind, *passthrough])
        tokens = result["step"] * cfg.batch_size * cfg.seq_len
        step_ms = result["train_time_ms"] / max(result["step"], 1)
        rows.append(
            (kind, result["val_loss"], result.get("bigram_val_loss"), result["step"], step_ms, tokens)
        )
        print(f"[{kind}] done in {time.time() - started:.0f}s wall", flush=True)

    base = {r[0]: r for r in rows}.get("relu2")
    print("\n| MLP | val loss | steps | step time (ms) | tokens/s | step time vs relu2 | val loss vs relu2 |")
    print("|---|---|---|---|---|---|---|")
    for kind, val, _, steps, step_ms, tokens in rows:
        rel_t = f"{step_ms / base[4]:.3f}×" if base else "–"
        rel_v = f"{val - base[1]:+.4f}" if base else "–"
        tps = tokens / (steps * step_ms / 1000)
        print(f"| {kind} | {val:.4f} | {steps} | {step_ms:.0f} | {tps:.0f} | {rel_t} | {rel_v} |")
    bigram = next((r[2] for r in rows if r[2] is not None), None)
    if bigram is not None:
        print(f"\ninterpolated bigram on the same split: {bigram:.4f} nats/token")


if __name__ == "__main__":
    from errors import run_cli  # tnt's error policy: one-line errors for bad input, tracebacks for bugs

    sys.exit(run_cli(main))
