"""Two stacked bilinear layers as one polynomial: its parts of order 3, 4 and 5 as tensor networks.

Layer L maps its normalised input x̂ to B1(x̂, x̂), B1 = [[P1, W1ᵀ, V1ᵀ]] (norm gain folded in); layer L+1's
MLP reads the residual stream, which carries x̂ itself and B1(x̂, x̂). With every rms set to 1 (the *norm-free
composition*) layer L+1's MLP output is the exact polynomial

    B2(x̂ + B1(x̂,x̂)) = B2(x̂,x̂) + [B2(x̂, B1(x̂,x̂)) + B2(B1(x̂,x̂), x̂)] + B2(B1(x̂,x̂), B1(x̂,x̂))
                      =  T3(x̂,x̂)  +          T4(x̂,x̂,x̂)                +      T5(x̂,x̂,x̂,x̂)

with (X = W2·P1, Y = V2·P1 [h2, h1]; weights folded into P1, P2)

    T3[a,i,j]     = Σ_h P2[a,h] W2[h,i] V2[h,j]                                        (B2 itself, rank h2)
    T4[a,i,j,k]   = Σ_{h,g} P2[a,h] (W2[h,i] Y[h,g] + V2[h,i] X[h,g]) W1[g,j] V1[g,k]   (mode 1: the direct x̂)
    T5[a,i,j,k,l] = Σ_{h,g,g'} P2[a,h] X[h,g] Y[h,g'] W1[g,i] V1[g,j] W1[g',k] V1[g',l]

As CP tensors T4 and T5 would have ranks 2·h1·h2 and h1²·h2 (10⁵ and 3·10⁷ for h = 320); as networks every
norm, inner product, MTTKRP and evaluation costs O(h³) or less, and nothing of size d⁴ or d⁵ is formed.

Norms between the layers. In the model layer L's residual is s·x̂ (s = rms of ``resid_mid`` at L) and layer
L+1's MLP divides its input by ρ (rms of ``resid_mid`` at L+1); leaving out block L+1's attention, its input
is (s·x̂ + B1(x̂,x̂))/ρ, so the three orders carry the factors s²/ρ², s/ρ² and 1/ρ² at each position.
`NormScales.from_rms` takes their means over data positions (c3, c4, c5); `NormScales.norm_free()` is 1, 1, 1.

Readout for an output direction u: with (μ_i, w_i) the eigenpairs of Q2(u),
    u·T3 = Σ_i μ_i (w_i·x̂)²,   u·T4 = 2 Σ_i μ_i (w_i·x̂)(x̂ᵀQ1(w_i)x̂),   u·T5 = Σ_i μ_i (x̂ᵀQ1(w_i)x̂)²,
so each w_i is read directly (order 3) and through the eigenvectors of Q1(w_i) (orders 4, 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensorly.cp_tensor import CPTensor

from decomp.eigen import Eigendecomposition, eigendecompose
from decomp.errors import DecompError
from decomp.interaction import bilinear_factors
from decomp.layers import cp_from_model
from decomp.network import TensorNetwork

ORDERS = (3, 4, 5)


@dataclass(frozen=True)
class NormScales:
    """Scale of each order of the composition: c3 = E[s²/ρ²], c4 = E[s/ρ²], c5 = E[1/ρ²] (see the module doc)."""

    c3: float = 1.0
    c4: float = 1.0
    c5: float = 1.0

    @staticmethod
    def norm_free() -> NormScales:
        return NormScales(1.0, 1.0, 1.0)

    @staticmethod
    def from_rms(s: torch.Tensor, rho: torch.Tensor) -> NormScales:
        """Means over positions of s²/ρ², s/ρ², 1/ρ² from the rms of the two layers' inputs, s and ρ [...]."""
        s, rho = s.double().flatten(), rho.double().flatten()
        if s.shape != rho.shape or s.numel() == 0:
            raise DecompError(
                f"rms tensors must have the same, non-empty shape: {tuple(s.shape)}, {tuple(rho.shape)}"
            )
        inv = rho.pow(-2)
        return NormScales(float((s**2 * inv).mean()), float((s * inv).mean()), float(inv.mean()))

    def __getitem__(self, order: int) -> float:
        return {3: self.c3, 4: self.c4, 5: self.c5}[order]


@dataclass
class TwoLayerTensor:
    """The composition of bilinear layers (first, first + 1): orders {3: T3, 4: T4, 5: T5} (unscaled
    networks, shapes (d,)·k) and the scales applied by `apply` / `norms`."""

    orders: dict[int, TensorNetwork]
    scales: NormScales

    def apply(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """{k: c_k·T_k(x, …, x)} for x [..., d]; their sum is the composed output."""
        return {k: self.scales[k] * t.apply(x) for k, t in self.orders.items()}

    def norms(self, symmetric: bool = False) -> dict[int, float]:
        """{k: c_k·‖T_k‖} (Frobenius, implicit); symmetric: c_k·‖Sym T_k‖, the norm of the polynomial."""
        return {
            k: self.scales[k] * float(t.symmetric_norm() if symmetric else t.norm())
            for k, t in self.orders.items()
        }


def _factors(cp: CPTensor, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P·diag(w) [d_out, h], Wᵀ [d_in, h], Vᵀ [d_in, h]) of an order-3 CP tensor."""
    try:
        w, a0, a1, a2 = bilinear_factors(cp)
    except DecompError as e:
        raise DecompError(f"{name}: {e}") from e
    return a0 * w, a1, a2


def two_layer_tensor(first: CPTensor, second: CPTensor, scales: NormScales | None = None) -> TwoLayerTensor:
    """Orders 3, 4, 5 of second(x̂ + first(x̂, x̂)) as tensor networks (module docstring); float64.

    first, second: order-3 CP tensors (d, d, d) acting on normalised inputs (``cp_from_model(…,
    fold_norm=True)``). scales: the norm handling (default: norm-free, all 1).
    """
    p1, w1, v1 = (t.double() for t in _factors(first, "first layer"))
    p2, w2, v2 = (t.double() for t in _factors(second, "second layer"))
    d = p2.shape[0]
    if not (p1.shape[0] == w2.shape[0] == w1.shape[0] == d):
        raise DecompError(
            f"the layers do not compose: first maps {w1.shape[0]} -> {p1.shape[0]}, second reads {w2.shape[0]}"
        )
    x = w2.T @ p1  # X = W2·P1 [h2, h1]
    y = v2.T @ p1  # Y = V2·P1
    t3 = TensorNetwork((p2, w2, v2), ("ah", "ih", "jh"), "aij")
    a_stack = torch.stack([w2, v2])  # [2, d, h2]: the direct input enters B2 through W2 or V2 …
    z_stack = torch.stack([y, x])  # [2, h2, h1]: … and B1's output through the other one
    t4 = TensorNetwork((p2, a_stack, z_stack, w1, v1), ("ah", "sih", "shg", "jg", "kg"), "aijk")
    t5 = TensorNetwork((p2, x, y, w1, v1, w1, v1), ("ah", "hg", "hG", "ig", "jg", "kG", "lG"), "aijkl")
    return TwoLayerTensor({3: t3, 4: t4, 5: t5}, scales or NormScales.norm_free())


def two_layer_from_model(model: Any, layer: int, scales: NormScales | None = None) -> TwoLayerTensor:
    """`two_layer_tensor` of bilinear layers ``layer`` and ``layer + 1`` of a model (norm gains folded)."""
    if not 0 <= layer < model.config.n_layer - 1:
        raise DecompError(f"layer {layer} has no next layer in a model with {model.config.n_layer} layers")
    first = cp_from_model(model, layer, fold_norm=True, dtype=torch.float64)
    second = cp_from_model(model, layer + 1, fold_norm=True, dtype=torch.float64)
    for i, cp in ((layer, first), (layer + 1, second)):
        if len(cp.factors) != 3:
            raise DecompError(
                f"layer {i} is not bilinear (order {len(cp.factors) - 1}); two-layer tensors need two"
            )
    return two_layer_tensor(first, second, scales)


@dataclass
class ComposedDirection:
    """One eigenpair (μ, w) of Q2(u) and the eigendecomposition of Q1(w) (its reading through layer L)."""

    index: int
    value: float
    vector: torch.Tensor
    first_layer: Eigendecomposition


def composed_readout(
    first: CPTensor, second: CPTensor, u: torch.Tensor, n: int = 3, k: int | None = None
) -> list[ComposedDirection]:
    """The n leading eigenpairs (μ_i, w_i) of Q2(u) and, for each, the k leading eigenpairs of Q1(w_i)."""
    outer = eigendecompose(second, u.to(torch.float64), k=None)
    out = []
    for i in range(min(n, outer.k)):
        w = outer.vectors[:, i]
        out.append(ComposedDirection(i, float(outer.values[i]), w, eigendecompose(first, w, k=k)))
    return out
