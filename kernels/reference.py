"""Pure-torch reference of the gated products: the oracle for the Triton kernels and the CPU training path.

Everything here is plain differentiable torch: autograd, ``torch.compile`` and CPU training need nothing else.
Shapes: ``up`` is [..., k·h] holding the k factors side by side; the result is [..., h]. Order k = 1 is the
plain activation (the relu2 and gelu MLPs).
"""

import torch
import torch.nn.functional as F

ACTIVATIONS: tuple[str, ...] = ("identity", "relu", "relu2", "gelu", "silu")


def activation(a: torch.Tensor, act: str) -> torch.Tensor:
    """act(a) elementwise; ``relu2`` is relu(a)², ``gelu`` the tanh form 0.5·a·(1 + tanh(√(2/π)·(a + 0.044715·a³)))."""
    if act == "identity":
        return a
    if act == "relu":
        return F.relu(a)
    if act == "relu2":
        return F.relu(a).square()
    if act == "gelu":
        return F.gelu(a, approximate="tanh")
    if act == "silu":
        return F.silu(a)
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def gated_product(up: torch.Tensor, act: str, order: int = 2) -> torch.Tensor:
    """[..., k·h] → [..., h]: act(up[..., 0:h]) ⊙ up[..., h:2h] ⊙ … ⊙ up[..., (k-1)h:kh], with k = ``order``.

    The factors are views (slices) of ``up``; no copies.
    """
    h = up.shape[-1] // order
    out = activation(up[..., :h], act)
    for j in range(1, order):
        out = out * up[..., j * h : (j + 1) * h]
    return out


def fused_up_product(x: torch.Tensor, w_up: torch.Tensor, act: str, order: int = 2) -> torch.Tensor:
    """x: [..., d], w_up: [k·h, d] (the stacked [W₁; …; W_k]) → [..., h] = gated_product(x W_upᵀ)."""
    return gated_product(F.linear(x, w_up), act, order)
