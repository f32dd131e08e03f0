"""Fused kernels for gated / multilinear MLPs: act(a) ⊙ b (⊙ c …), optionally fused into the up-projection.

Public API::

    kernels.ACTIVATIONS                                   # ("identity", "relu", "gelu", "silu")
    kernels.gated_product(up, act, order=2)               # [..., k·h] → [..., h]
    kernels.fused_up_product(x, w_up, act, order=2)       # x [..., d], w_up [k·h, d] → [..., h]
    kernels.set_backend / get_backend / use_backend       # "auto" | "triton" | "torch"

Layout: ``reference`` (pure torch, the oracle and CPU path), ``triton_gated`` / ``triton_matmul`` (kernels),
``ops`` (torch.library custom ops), ``api`` (checks + dispatch), ``backend`` (selection).
"""

from kernels.api import fused_up_product, gated_product
from kernels.backend import BACKENDS, get_backend, set_backend, use_backend
from kernels.reference import ACTIVATIONS

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "fused_up_product",
    "gated_product",
    "get_backend",
    "set_backend",
    "use_backend",
]
