"""Forward + backward time of one MLP of every kind on one GPU: the Triton kernels vs cuBLAS + inductor.

Each MLP kind (relu2, gelu, bilinear, reglu, geglu, swiglu, multilinear k = 3 and 4) at the model's
parameter-matched width (``model.config.GPTConfig.hidden``: 4d, 8d/3, 8d/(k+1), rounded to 64) runs one
full MLP — up-projection, activation or product, down-projection — forward and backward in bf16 on M
tokens (default 49,152: one rank's batch in the record's recipe) with d = 768:

- Triton: ``kernels.fused_up_product`` (one GEMM with the product, or relu², in its epilogue; it saves its
  factors, so backward is an elementwise kernel and two cuBLAS GEMMs), then ``F.linear``; eager, since
  nothing is left for inductor to fuse;
- Triton, recompute: the same with ``recompute=True`` (backward repeats the up-projection GEMM);
- cuBLAS + inductor: ``torch.compile`` of the torch reference (``F.linear`` → product → ``F.linear``).

Times are medians of ``triton.testing.do_bench`` (ms) after a warm-up call (compilation, autotuning); the
outputs of the Triton and inductor paths are checked against each other first. Without a GPU it prints
"no GPU: skipped" (also into ``--out``) and exits 0.

    python3 bench/bench_mlp_kernels.py --out kernels.md
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels  # noqa: E402
from kernels import reference  # noqa: E402
from model.config import GATED_ACTIVATION, MLP_KINDS, GPTConfig  # noqa: E402

SKIPPED = "no GPU: skipped"
MULTILINEAR_ORDERS = (3, 4)
# Columns of the table: the timed implementations, in order.
IMPLS: dict[str, str] = {
    "triton": "Triton fused (ms)",
    "recompute": "Triton, recompute (ms)",
    "inductor": "cuBLAS + inductor (ms)",
}


@dataclass(frozen=True)
class MLPShape:
    """One MLP kind as the model builds it: product (act, order k) and hidden width h."""

    kind: str
    act: str
    order: int
    hidden: int


@dataclass
class Row:
    shape: MLPShape
    times: dict[str, float]  # impl name (a key of IMPLS) → median ms


def mlp_shapes(d: int) -> list[MLPShape]:
    """Every MLP kind at width d, with GPTConfig's order and parameter-matched hidden width.

    The activation is ``GATED_ACTIVATION[kind]`` for gated kinds; relu2 and gelu name their own.
    """
    shapes = []
    for kind in MLP_KINDS:
        for order in MULTILINEAR_ORDERS if kind == "multilinear" else (2,):
            cfg = GPTConfig(d_model=d, n_head=1, mlp=kind, mlp_order=order)
            name = f"{kind} k={order}" if kind == "multilinear" else kind
            shapes.append(MLPShape(name, GATED_ACTIVATION.get(kind, kind), cfg.order, cfg.hidden))
    return shapes


def markdown_table(rows: list[Row], header: str) -> str:
    """``header``, a blank line, then one markdown row per MLP: times and the Triton / inductor ratio."""
    lines = [
        header,
        "",
        "| MLP | k | h | " + " | ".join(IMPLS.values()) + " | Triton / inductor |",
        "|---|---:|---:|" + "---:|" * (len(IMPLS) + 1),
    ]
    for row in rows:
        s, t = row.shape, row.times
        cells = [f"{t[k]:.3f}" if k in t else "—" for k in IMPLS]
        ratio = f"{t['triton'] / t['inductor']:.2f}×" if "triton" in t and "inductor" in t else "—"
        lines.append(f"| {s.kind} | {s.order} | {s.hidden} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=_positive, default=49152, help="M, tokens per call (default 49152)")
    parser.add_argument("--d", type=_positive, default=768, help="model width (default 768)")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table to this file")
    return parser.parse_args(argv)


def _mlp(shape: MLPShape, impl: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    act, order = shape.act, shape.order
    if impl == "inductor":

        def ref(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
            return F.linear(reference.fused_up_product(x, w_up, act, order), w_down)

        return torch.compile(ref, fullgraph=True, dynamic=False)
    recompute = impl == "recompute"
    return lambda x, w_up, w_down: F.linear(
        kernels.fused_up_product(x, w_up, act, order, recompute=recompute), w_down
    )


def measure(shape: MLPShape, m: int, d: int) -> Row:
    """Median forward + backward ms of each implementation of one MLP on CUDA, bf16."""
    import triton.testing

    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    x = torch.randn(m, d, device=dev, dtype=dt, requires_grad=True)
    w_up = (torch.randn(shape.order * shape.hidden, d, device=dev) * d**-0.5).to(dt).requires_grad_()
    w_down = (torch.randn(d, shape.hidden, device=dev) * shape.hidden**-0.5).to(dt).requires_grad_()
    grad = torch.randn(m, d, device=dev, dtype=dt)
    leaves = [x, w_up, w_down]
    times, outputs = {}, {}
    with kernels.use_backend("auto"):
        for impl in IMPLS:
            fn = _mlp(shape, impl)
            outputs[impl] = fn(x, w_up, w_down).detach()  # compile / autotune outside the timing

            def step(fn=fn) -> None:
                fn(x, w_up, w_down).backward(grad)

            step()
            times[impl] = triton.testing.do_bench(step, grad_to_none=leaves, return_mode="median")
    for impl in ("triton", "recompute"):  # the same MLP, up to bf16 rounding
        torch.testing.assert_close(outputs[impl], outputs["inductor"], rtol=3e-2, atol=3e-2)
    return Row(shape, times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        text = f"{SKIPPED} (bench/bench_mlp_kernels.py needs a CUDA device)"
    else:
        rows = [measure(s, args.tokens, args.d) for s in mlp_shapes(args.d)]
        header = (
            f"Forward + backward of one MLP on {torch.cuda.get_device_name()}: M = {args.tokens} tokens, "
            f"d = {args.d}, bf16, torch {torch.__version__}; medians of triton.testing.do_bench"
        )
        text = markdown_table(rows, header)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    from errors import run_cli  # tnt's error policy: one-line errors for bad input, tracebacks for bugs

    sys.exit(run_cli(main))
