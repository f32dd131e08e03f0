"""Fused kernels for MLPs: act(a) ⊙ b (⊙ c …), optionally fused into the up-projection GEMM.

Public API::

    kernels.ACTIVATIONS                                   # ("identity", "relu", "relu2", "gelu", "silu")
    kernels.gated_product(up, act, order=2)               # [..., k·h] → [..., h]; order 1 is act(up)
    kernels.fused_up_product(x, w_up, act, order=2, *, recompute=None)
                                                          # x [..., d], w_up [k·h, d] → [..., h]
    kernels.set_backend / get_backend / use_backend       # "auto" | "triton" | "torch"
    kernels.set_recompute / get_recompute                 # fused backward: save factors (default) or recompute
    kernels.TRITON_DTYPES                                 # float32, float16, bfloat16 (others: torch path)

The relu2 MLP is ``fused_up_product(x, w, "relu2", 1)``; bilinear ``(x, w, "identity", 2)``; swiglu
``(x, w, "silu", 2)``; multilinear of order k ``(x, w, "identity", k)``.
Layout: ``reference`` (pure torch, the oracle and CPU path), ``triton_gated`` / ``triton_matmul`` (kernels),
``ops`` (torch.library custom ops), ``api`` (checks + dispatch), ``backend`` (selection), ``aot``
(ahead-of-time compilation for a GPU target, on a machine without one).
"""

from kernels.api import fused_up_product, gated_product
from kernels.backend import (
    BACKENDS,
    TRITON_DTYPES,
    get_backend,
    get_recompute,
    set_backend,
    set_recompute,
    use_backend,
)
from kernels.reference import ACTIVATIONS

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "TRITON_DTYPES",
    "fused_up_product",
    "gated_product",
    "get_backend",
    "get_recompute",
    "set_backend",
    "set_recompute",
    "use_backend",
]
