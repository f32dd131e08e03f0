"""Public entry points: argument checks, then dispatch to the Triton custom ops or the torch reference."""

import torch
from torch import Tensor

from kernels import ops, reference
from kernels.backend import get_recompute, use_triton
from kernels.reference import ACTIVATIONS


def _check(n_up: int, act: str, order: int, what: str) -> None:
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an int >= 1, got {order!r}")
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")
    if order > 2 and act != "identity":
        raise ValueError(f"order {order} > 2 is the multilinear product: act must be 'identity', got {act!r}")
    if n_up % order != 0:
        raise ValueError(f"{what} = {n_up} is not divisible by order {order}")


def _check_float(t: Tensor, name: str) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def gated_product(up: Tensor, act: str, order: int = 2) -> Tensor:
    """[..., k·h] → [..., h] = act(up[..., 0:h]) ⊙ up[..., h:2h] ⊙ … ⊙ up[..., (k-1)h:kh], k = ``order``.

    ``act`` ∈ ``ACTIVATIONS`` (``gelu`` is the tanh form, ``relu2`` is relu²) and must be ``identity`` when
    k > 2; k = 1 is act(up). ``up`` may be any strided view (e.g. a slice of a wider buffer); the factors are
    read through strides, not copied.
    """
    _check_float(up, "up")
    _check(up.shape[-1], act, order, "up.shape[-1]")
    if use_triton(up, "up"):
        return ops.gated_product_op(up, act, order)
    return reference.gated_product(up, act, order)


def fused_up_product(
    x: Tensor, w_up: Tensor, act: str, order: int = 2, *, recompute: bool | None = None
) -> Tensor:
    """x: [..., d], w_up: [k·h, d] (stacked [W₁; …; W_k]) → [..., h] = gated_product(x w_upᵀ, act, k).

    k = 1 with ``relu2`` or ``gelu`` is the relu2 / gelu MLP's up-projection. On the Triton path one GEMM
    computes the k factors and applies the product in its epilogue. When a gradient is needed the epilogue
    also writes the factors [M, k·h] and backward uses them (no second up-projection GEMM); with
    ``recompute`` (default: ``kernels.get_recompute()``, False) backward saves only x and w_up and
    recomputes the factors instead. Under autocast both operands are cast to the autocast dtype, as
    ``F.linear`` would.
    """
    _check_float(x, "x")
    _check_float(w_up, "w_up")
    if w_up.dim() != 2 or w_up.shape[1] != x.shape[-1]:
        raise ValueError(
            f"w_up must be [order*h, d] with d = x.shape[-1] = {x.shape[-1]}; got {list(w_up.shape)}"
        )
    _check(w_up.shape[0], act, order, "w_up.shape[0]")
    if recompute is not None and not isinstance(recompute, bool):
        raise TypeError(f"recompute must be a bool or None, got {recompute!r}")
    if not use_triton(x, "x"):
        return reference.fused_up_product(x, w_up, act, order)
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w_up = x.to(dtype), w_up.to(dtype)
    if x.dtype != w_up.dtype:
        raise TypeError(f"x and w_up must have the same dtype, got {x.dtype} and {w_up.dtype}")
    recompute = get_recompute() if recompute is None else recompute
    save_up = not recompute and torch.is_grad_enabled() and (x.requires_grad or w_up.requires_grad)
    return ops.fused_up_product_op(x, w_up, act, order, save_up)[0]
