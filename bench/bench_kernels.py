"""Benchmark of the fused MLP kernels: activation memory saved for backward, and (on CUDA) time and peak memory.

Part 1 (any device): bytes that autograd saves for backward per token over one full MLP forward
(up-projection, product, down-projection), measured with ``torch.autograd.graph.saved_tensors_hooks`` as the
sum of the unique storages' nbytes, parameters excluded. Three implementations of each gated MLP:
  reference — plain autograd of ``kernels.reference`` (F.linear, act(a) * b, F.linear);
  gated op  — F.linear, then the ``tnt::gated_product`` custom op, then F.linear;
  fused op  — the ``tnt::fused_up_product`` custom op, then F.linear.
The custom ops run their Triton kernels (through Triton's interpreter on CPU). relu2 is listed for context.
Hidden widths keep parameters equal to a relu2 MLP of width 4d: 8d/3 for two-factor kinds, 8d/(k+1) for order k.

Part 2 (CUDA only): forward + backward time (``triton.testing.do_bench``) and peak memory of the gated MLPs,
eager vs ``torch.compile`` of the reference vs the fused Triton op.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernels  # noqa: E402
from kernels import reference  # noqa: E402

# kind → (activation, order); order 1 marks the ungated relu2 baseline.
KINDS: dict[str, tuple[str, int]] = {
    "relu2": ("relu", 1),
    "bilinear": ("identity", 2),
    "reglu": ("relu", 2),
    "geglu": ("gelu", 2),
    "swiglu": ("silu", 2),
    "multilinear k=3": ("identity", 3),
}


def hidden_width(d: int, order: int) -> int:
    """Parameter-matched width: (order + 1)·h·d = 8d² (relu2 at h = 4d)."""
    return 4 * d if order == 1 else round(8 * d / (order + 1))


def mlp_fn(
    act: str, order: int, impl: str
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A full MLP x ↦ W_down · product(W_up x) for one implementation ('reference', 'gated op', 'fused op')."""
    if order == 1:
        return lambda x, w_up, w_down: F.linear(F.relu(F.linear(x, w_up)).square(), w_down)
    if impl == "reference":
        return lambda x, w_up, w_down: F.linear(reference.fused_up_product(x, w_up, act, order), w_down)
    if impl == "gated op":
        return lambda x, w_up, w_down: F.linear(kernels.gated_product(F.linear(x, w_up), act, order), w_down)
    if impl == "fused op":
        return lambda x, w_up, w_down: F.linear(kernels.fused_up_product(x, w_up, act, order), w_down)
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
        "| MLP | h | reference autograd | up GEMM + tnt::gated_product | tnt::fused_up_product "
        "| fused vs reference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    torch.manual_seed(0)
    for kind, (act, order) in KINDS.items():
        h = hidden_width(d, order)
        x = torch.randn(tokens, d, device=device, dtype=dtype, requires_grad=True)
        w_up = (torch.randn(max(order, 1) * h, d, device=device) * d**-0.5).to(dtype).requires_grad_()
        w_down = (torch.randn(d, h, device=device) * h**-0.5).to(dtype).requires_grad_()
        impls = ["reference"] if order == 1 else ["reference", "gated op", "fused op"]
        per_token, outputs = {}, {}
        with kernels.use_backend("triton"):
            for impl in impls:
                nbytes, outputs[impl] = saved_bytes(mlp_fn(act, order, impl), x, (w_up, w_down))
                per_token[impl] = nbytes / tokens
        for impl in impls[1:]:  # the kernels must compute the same MLP
            torch.testing.assert_close(outputs[impl], outputs["reference"], rtol=3e-2, atol=3e-2)
        cells = [
            f"{per_token[i]:,.0f}" if i in per_token else "—" for i in ("reference", "gated op", "fused op")
        ]
        saving = f"−{1 - per_token['fused op'] / per_token['reference']:.0%}" if order > 1 else "—"
        rows.append(f"| {kind} | {h} | {' | '.join(cells)} | {saving} |")
    return rows


def time_and_peak(
    fn: Callable, x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, grad: torch.Tensor
) -> str:
    """'ms / MiB' of one forward + backward on CUDA: do_bench time, then peak memory above the inputs."""
    import triton.testing

    leaves = [x, w_up, w_down]

    def step() -> None:
        fn(x, w_up, w_down).backward(grad)

    step()  # compile / autotune outside the measurements
    ms = triton.testing.do_bench(step, grad_to_none=leaves)
    for t in leaves:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    for t in leaves:
        t.grad = None
    return f"{ms:.3f} / {peak:.0f}"


def cuda_table(m: int, d: int, dtype: torch.dtype) -> list[str]:
    rows = [
        f"Forward + backward of one MLP on {torch.cuda.get_device_name()} (M={m}, d={d}, {dtype}): "
        "time (do_bench, ms) / peak memory above inputs (MiB)",
        "",
        "| MLP | h | eager reference | compiled reference | Triton fused | compiled Triton fused |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, (act, order) in KINDS.items():
        if order == 1:
            continue
        h = hidden_width(d, order)
        x = torch.randn(m, d, device="cuda", dtype=dtype, requires_grad=True)
        w_up = (torch.randn(order * h, d, device="cuda") * d**-0.5).to(dtype).requires_grad_()
        w_down = (torch.randn(d, h, device="cuda") * h**-0.5).to(dtype).requires_grad_()
        grad = torch.randn(m, d, device="cuda", dtype=dtype)
        ref, fused = mlp_fn(act, order, "reference"), mlp_fn(act, order, "fused op")
        variants = {
            "eager reference": ref,
            "compiled reference": torch.compile(ref, fullgraph=True),
            "Triton fused": fused,
            "compiled Triton fused": torch.compile(fused, fullgraph=True),
        }
        with kernels.use_backend("auto"):
            cells = [time_and_peak(fn, x, w_up, w_down, grad) for fn in variants.values()]
        rows.append(f"| {kind} | {h} | {' | '.join(cells)} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--d", type=int, default=256, help="model width for the saved-bytes table (default 256)"
    )
    parser.add_argument(
        "--tokens", type=int, default=64, help="tokens in the saved-bytes forward (default 64)"
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--cuda-m", type=int, default=8192, help="tokens for the CUDA timing (default 8192)")
    parser.add_argument(
        "--cuda-d", type=int, default=768, help="model width for the CUDA timing (default 768)"
    )
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    print(f"torch {torch.__version__}, triton interpreter: {os.environ.get('TRITON_INTERPRET', '0')}\n")
    print("\n".join(memory_table(args.d, args.tokens, dtype, device)))
    print()
    if device == "cuda":
        print("\n".join(cuda_table(args.cuda_m, args.cuda_d, dtype)))
    else:
        print(
            "Time and peak memory vs eager / torch.compile: not measured (needs a CUDA device; this run is CPU-only)."
        )


if __name__ == "__main__":
    main()
