"""Read bilinear / multilinear MLP layers out of a `model.GPT` through its weight accessors only.

A layer computes MLP(N(x)) with N(x) = g ⊙ x / rms(x) the RMSNorm before the MLP, and
    bilinear:    MLP(z) = P((Wz) ⊙ (Vz))          multilinear: MLP(z) = P((W_1z) ⊙ … ⊙ (W_kz)).
With ``fold_norm=True`` the gain is folded into the inputs (W' = W·diag(g)), so the CP tensor acts on
x̂ = x / rms(x): MLP(N(x)) = B'(x̂, x̂) = B'(x, x) / rms(x)².  With ``fold_norm=False`` it acts on N(x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensorly.cp_tensor import CPTensor

from decomp.cp import bilinear_cp, multilinear_cp
from decomp.errors import DecompError

CP_KINDS = ("bilinear", "multilinear")


@dataclass
class BilinearLayer:
    """One bilinear MLP: w = W [h, d], v = V [h, d], p = P [d, h], gain = g [d] of the RMSNorm before it."""

    w: torch.Tensor
    v: torch.Tensor
    p: torch.Tensor
    gain: torch.Tensor

    def cp(self, fold_norm: bool = True, dtype: torch.dtype | None = torch.float64) -> CPTensor:
        """Rank-h CPTensor (P, W'ᵀ, V'ᵀ) of shape (d, d, d); W' = W·diag(g) when fold_norm."""
        w, v, p, g = (_to(t, dtype) for t in (self.w, self.v, self.p, self.gain))
        return bilinear_cp(w, v, p, g if fold_norm else None)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """P((Wz) ⊙ (Vz)) for an already-normalised input z = N(x) [..., d] (gain applied)."""
        return ((z @ self.w.T) * (z @ self.v.T)) @ self.p.T


@dataclass
class MultilinearLayer:
    """One order-k multilinear MLP: w_in = [W_1..W_k], each [h, d]; p = P [d, h]; gain = g [d]."""

    w_in: list[torch.Tensor]
    p: torch.Tensor
    gain: torch.Tensor

    @property
    def order(self) -> int:
        return len(self.w_in)

    def cp(self, fold_norm: bool = True, dtype: torch.dtype | None = torch.float64) -> CPTensor:
        """Rank-h CPTensor (P, W_1'ᵀ, …, W_k'ᵀ) of order k+1; W_j' = W_j·diag(g) when fold_norm."""
        w_in = [_to(w, dtype) for w in self.w_in]
        return multilinear_cp(w_in, _to(self.p, dtype), _to(self.gain, dtype) if fold_norm else None)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """P((W_1z) ⊙ … ⊙ (W_kz)) for an already-normalised input z [..., d]."""
        hidden = None
        for w in self.w_in:
            a = z @ w.T
            hidden = a if hidden is None else hidden * a
        return hidden @ self.p.T


def layer_kind(model: Any, layer: int) -> str:
    """The MLP kind of `layer`, after checking the index; raises DecompError when it has no CP form."""
    n_layer = model.config.n_layer
    if not isinstance(layer, int) or not -n_layer <= layer < n_layer:
        raise DecompError(f"layer index {layer!r} is out of range for a model with {n_layer} layers")
    kind = model.mlp_kind(layer)
    if kind not in CP_KINDS:
        raise DecompError(
            f"layer {layer} has MLP kind {kind!r}, which has no exact CP form; "
            f"only {' and '.join(repr(k) for k in CP_KINDS)} layers can be decomposed"
        )
    return kind


def bilinear_layer(model: Any, layer: int) -> BilinearLayer:
    """The bilinear MLP of `layer` (order 2: kind 'bilinear', or 'multilinear' with k = 2)."""
    kind = layer_kind(model, layer)
    if model.mlp_order(layer) != 2:
        raise DecompError(
            f"layer {layer} is {kind!r} of order {model.mlp_order(layer)}, not bilinear "
            "(use multilinear_layer)"
        )
    w, v = (t.detach() for t in model.w_in(layer))
    return BilinearLayer(w, v, model.w_p(layer).detach(), _gain(model, layer, w))


def multilinear_layer(model: Any, layer: int) -> MultilinearLayer:
    """The multilinear (or bilinear, k = 2) MLP of `layer`."""
    layer_kind(model, layer)
    w_in = [t.detach() for t in model.w_in(layer)]
    return MultilinearLayer(w_in, model.w_p(layer).detach(), _gain(model, layer, w_in[0]))


def cp_from_model(
    model: Any, layer: int, fold_norm: bool = True, dtype: torch.dtype | None = torch.float64
) -> CPTensor:
    """Exact CP tensor of MLP `layer`: order 3 (P, W'ᵀ, V'ᵀ) for bilinear, order k+1 for multilinear.

    fold_norm folds the RMSNorm gain into the inputs (see the module docstring); dtype None keeps the model's.
    """
    return multilinear_layer(model, layer).cp(fold_norm=fold_norm, dtype=dtype)


def _gain(model: Any, layer: int, like: torch.Tensor) -> torch.Tensor:
    return model.mlp_norm_gain(layer).detach().to(like)


def _to(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    # Convert before folding the gain so the product is formed in the working precision.
    return t if dtype is None else t.to(dtype)
