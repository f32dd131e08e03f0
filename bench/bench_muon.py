"""tnt's Muon against torch.optim.Muon, side by side in one run: optimizer step and full cpu-demo train step.

    .venv/bin/python bench/bench_muon.py                  # cpu-demo shape, torch.compile on (as the preset)
    .venv/bin/python bench/bench_muon.py --compile off --steps 10

The model is train.py's ``cpu-demo`` preset built directly with ``model.GPT`` (4 layers, d 128, 4 heads,
bilinear, compact vocabulary of 19,379 ids) on random tokens, 16×128 per step. One model, compiled once, is
trained by optimizer sets that differ only in Muon: Adam for embeddings, head and scalars (as train.py),
and ``training.muon.Muon`` (per-projection Polar Express) or ``torch.optim.Muon(adjust_lr_fn="original")``
(whole matrices, bf16 Newton–Schulz). The optimizers take
turns step by step, so bursts of load on a shared machine hit each alike. Reported: the median per step of
(a) the Muon ``step()`` alone, (b) the full train step (zero_grad, forward, backward, both optimizers) and
(c) its part without Muon, which should agree across rows (a check on the noise); and the ratios torch/tnt
(tnt at its default precision, ``training.muon.default_ns_dtype``; the other precision is timed too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import GPT  # noqa: E402
from train import PRESETS, TrainConfig  # noqa: E402
from training.muon import Muon, default_ns_dtype  # noqa: E402

COMPACT_VOCAB = 19_379  # the cpu-demo's compact vocabulary on the Shakespeare corpus


def build_optimizers(model: GPT, kind: str, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """Adam as in train.py, plus Muon of ``kind`` for every 2-D weight in the blocks.

    ``kind``: "torch" (torch.optim.Muon), "tnt" (training.muon.Muon, its default precision) or "tnt-fp32" /
    "tnt-bf16" (the iteration's precision pinned).
    """
    named = {n: p for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2}
    scalars = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        dict(params=[model.wte.weight, *(e.weight for e in model.value_embeds)], lr=cfg.embed_lr),
        dict(params=[model.lm_head.weight], lr=cfg.head_lr),
        dict(params=scalars, lr=cfg.scalar_lr),
    ]
    adam = torch.optim.Adam([g for g in groups if g["params"]], betas=cfg.adam_betas, eps=1e-10)
    if kind.startswith("tnt"):
        rows = model.projection_blocks()
        blocks = {p: rows[n] for n, p in named.items() if n in rows}
        dtype = {"tnt": None, "tnt-fp32": torch.float32, "tnt-bf16": torch.bfloat16}[kind]
        muon = Muon(
            list(named.values()), lr=cfg.muon_lr, momentum=cfg.muon_momentum, blocks=blocks, ns_dtype=dtype
        )
    else:
        muon = torch.optim.Muon(
            list(named.values()), lr=cfg.muon_lr, momentum=cfg.muon_momentum, adjust_lr_fn="original"
        )
    return [adam, muon]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--compile", choices=("on", "off"), default="on", help="torch.compile the model")
    parser.add_argument("--steps", type=int, default=40, help="timed train steps per optimizer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per optimizer first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    cfg = TrainConfig(**PRESETS["cpu-demo"])
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(cfg.model_config(COMPACT_VOCAB)).to(device)
    fwd = torch.compile(model) if args.compile == "on" else model
    auto = default_ns_dtype(device)
    pinned = "tnt-fp32" if auto == torch.bfloat16 else "tnt-bf16"  # the precision the default did not pick
    opts = {kind: build_optimizers(model, kind, cfg) for kind in ("torch", "tnt", pinned)}
    gen = torch.Generator().manual_seed(0)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, COMPACT_VOCAB, (cfg.batch_size, cfg.seq_len + 1), generator=gen).to(device)
        return t[:, :-1], t[:, 1:]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step(kind: str) -> tuple[float, float]:
        """One full step; (its seconds, the Muon step's seconds)."""
        adam, muon = opts[kind]
        x, y = batch()
        sync()
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = fwd(x, y)
        loss.backward()
        adam.step()
        sync()
        t1 = time.perf_counter()
        muon.step()
        sync()
        t2 = time.perf_counter()
        return t2 - t0, t2 - t1

    for kind in opts:
        for _ in range(args.warmup):
            train_step(kind)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in opts}
    for _ in range(args.steps):  # round-robin, one step each: contention bursts hit every optimizer alike
        for kind in opts:
            times[kind].append(train_step(kind))
    ms = {
        k: tuple(
            1000 * statistics.median(x) for x in ([m for _, m in t], [f for f, _ in t], [f - m for f, m in t])
        )
        for k, t in times.items()
    }
    print(
        f"cpu-demo shape: {cfg.n_layer}×{cfg.d_model}, {cfg.n_head} heads, {cfg.mlp}, vocab {COMPACT_VOCAB}, "
        f"batch {cfg.batch_size}×{cfg.seq_len}, device {device}, compile {args.compile}, "
        f"threads {torch.get_num_threads()}; median of {args.steps} steps each, interleaved; "
        f"tnt's default iteration precision here: {str(auto).removeprefix('torch.')}"
    )
    print("\n| Muon | Muon step (ms) | full train step (ms) | of which fwd+bwd+Adam (ms) |")
    print("|---|---:|---:|---:|")
    names = {
        "torch": "`torch.optim.Muon` (bf16 NS, whole matrices)",
        "tnt": f"`training.muon.Muon` (default: {str(auto).removeprefix('torch.')})",
        pinned: f"`training.muon.Muon`, {pinned.removeprefix('tnt-')} pinned",
    }
    for kind, (m, f, rest) in ms.items():
        print(f"| {names[kind]} | {m:.1f} | {f:.1f} | {rest:.1f} |")
    print(
        f"| ratio torch / tnt | {ms['torch'][0] / ms['tnt'][0]:.2f}× | {ms['torch'][1] / ms['tnt'][1]:.2f}× | |"
    )


if __name__ == "__main__":
    from errors import run_cli  # tnt's error policy: one-line errors for bad input, tracebacks for bugs

    sys.exit(run_cli(main))
