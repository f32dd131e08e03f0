"""Benchmark of the fused MLP kernels: activation memory that autograd saves for backward, on any device.

Bytes saved for backward per token over one full MLP forward (up-projection, product, down-projection),
measured with ``torch.autograd.graph.saved_tensors_hooks`` as the sum of the unique storages' nbytes,
parameters excluded. Implementations of each MLP kind (the model's widths, ``bench_mlp_kernels.mlp_shapes``):
  reference          — plain autograd of ``kernels.reference`` (F.linear, act(a) [* b …], F.linear);
  gated op           — F.linear, then the ``tnt::gated_product`` custom op, then F.linear (gated kinds);
  fused op           — ``tnt::fused_up_product`` (saves its [M, k·h] factors: the default), then F.linear;
  fused op, recompute — the same with ``recompute=True`` (saves only its inputs; backward repeats the GEMM).
The custom ops run their Triton kernels (through Triton's interpreter on CPU). Time is measured on a GPU by
``bench/bench_mlp_kernels.py``.

    .venv/bin/python bench/bench_kernels.py --d 256 --tokens 64
"""

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must precede the first import of triton / torch._dynamo
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The interpreter's numpy sigmoid overflows to the right limit (0) for very negative inputs, noisily.
    warnings.filterwarnings("ignore", "overflow encountered in exp", RuntimeWarning)

import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_mlp_kernels import mlp_shapes  # noqa: E402

import kernels  # noqa: E402
from kernels import reference  # noqa: E402

IMPLS = ("reference", "gated op", "fused op", "fused op, recompute")


def mlp_fn(
    act: str, order: int, impl: str
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A full MLP x ↦ W_down · product(W_up x) for one implementation (one of ``IMPLS``)."""
    if impl == "reference":
        return lambda x, w_up, w_down: F.linear(reference.fused_up_product(x, w_up, act, order), w_down)
    if impl == "gated op":
        return lambda x, w_up, w_down: F.linear(kernels.gated_product(F.linear(x, w_up), act, order), w_down)
    if impl.startswith("fused op"):
        recompute = impl.endswith("recompute")
        return lambda x, w_up, w_down: F.linear(
            kernels.fused_up_product(x, w_up, act, order, recompute=recompute), w_down
        )
    raise ValueError(impl)


def saved_bytes(fn: Callable, x: torch.Tensor, params: tuple[torch.Tensor, ...]) -> tuple[int, torch.Tensor]:
    """(nbytes of the unique non-parameter storages saved for backward during fn(x, *params), output)."""
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in param_storages:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x, *params)
    return sum(storages.values()), out


def memory_table(d: int, tokens: int, dtype: torch.dtype, device: str) -> list[str]:
    rows = [
        f"Bytes saved for backward per token, one MLP (d={d}, {tokens} tokens, {dtype}, {device}; "
        "custom ops run their Triton kernels" + (" in the interpreter)" if device == "cpu" else ")"),
        "",
        "| MLP | k | h | reference autograd | up GEMM + tnt::gated_product | tnt::fused_up_product "
        "| fused, recompute | fused vs reference | recompute vs reference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    torch.manual_seed(0)
    for shape in mlp_shapes(d):
        act, order, h = shape.act, shape.order, shape.hidden
        x = torch.randn(tokens, d, device=device, dtype=dtype, requires_grad=True)
        w_up = (torch.randn(order * h, d, device=device) * d**-0.5).to(dtype).requires_grad_()
        w_down = (torch.randn(d, h, device=device) * h**-0.5).to(dtype).requires_grad_()
        per_token, outputs = {}, {}
        with kernels.use_backend("triton"):
            for impl in IMPLS:
                if impl == "gated op" and order == 1:
                    continue
                nbytes, outputs[impl] = saved_bytes(mlp_fn(act, order, impl), x, (w_up, w_down))
                per_token[impl] = nbytes / tokens
        for impl in outputs:  # the kernels must compute the same MLP
            torch.testing.assert_close(outputs[impl], outputs["reference"], rtol=3e-2, atol=3e-2)
        cells = [f"{per_token[i]:,.0f}" if i in per_token else "—" for i in IMPLS]
        ratios = [f"{per_token[i] / per_token['reference'] - 1:+.0%}" for i in IMPLS[2:]]
        rows.append(f"| {shape.kind} | {order} | {h} | {' | '.join(cells)} | {' | '.join(ratios)} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=256, help="model width (default 256)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens in the forward (default 64)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__}, triton interpreter: {os.environ.get('TRITON_INTERPRET', '0')}\n")
    print("\n".join(memory_table(args.d, args.tokens, getattr(torch, args.dtype), device)))


if __name__ == "__main__":
    from errors import run_cli  # tnt's error policy: one-line errors for bad input, tracebacks for bugs

    sys.exit(run_cli(main))
