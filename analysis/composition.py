"""Two stacked bilinear layers in the report: decomp's orders 3, 4, 5 of the composition, measured on data.

For layers (L, L+1) (`decomp.two_layer`): the implicit Frobenius norm of each order's tensor network, its
scale from data (c3 = E[s²/ρ²], c4 = E[s/ρ²], c5 = E[1/ρ²] with s, ρ the rms of the two layers' residual
inputs), how large each scaled order is on validation inputs (mean ‖c_k T_k(x̂)‖), how much of layer L+1's
actual MLP output the path explains when each position uses its own factors (s²/ρ², s/ρ², 1/ρ²; the rest is
block L+1's attention and the norm's nonlinearity), the relative error of a rank-r implicit CP-ALS of each
order, and the composed readout for an output direction u: the eigenvectors w_i of Q2(u) read directly and
through the eigenvectors of Q1(w_i).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analysis.activations import Activations
from decomp import (
    ComposedDirection,
    DecompError,
    NormScales,
    TopTokens,
    composed_readout,
    cp_als,
    cp_apply,
    cp_from_model,
    input_tokens,
    token_direction,
    two_layer_tensor,
)
from model import GPT


@dataclass
class ComposedReadout:
    """One eigenpair (μ, w) of Q2(u): w read through Ê (direct) and the top eigenvectors of Q1(w) through Ê."""

    direction: ComposedDirection
    direct: TopTokens
    through: list[tuple[float, TopTokens]]


@dataclass
class LayerPairComposition:
    """Layers (first, first + 1). norms {k: ‖T_k‖} (unscaled, implicit); data_size {k: mean ‖c_k T_k(x̂)‖};
    explained: 1 − Σ‖y − ŷ‖² / Σ‖y − ȳ‖² of the actual MLP output y of the second layer by the per-position
    polynomial ŷ; als {k: [(rank, rel. error)]}; readout for the output token ``token``."""

    first: int
    scales: NormScales
    norms: dict[int, float]
    data_size: dict[int, float]
    explained: float
    actual_size: float
    als: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    token: int = -1
    readout: list[ComposedReadout] = field(default_factory=list)


def layer_pair_composition(
    model: GPT,
    first: int,
    acts: Activations,
    token: int,
    w_e: torch.Tensor,
    allowed: torch.Tensor | None,
    decode,
    ranks: tuple[int, ...] = (16, 64),
    als_iters: int = 20,
    n_directions: int = 3,
    n_through: int = 2,
    n_top: int = 6,
    max_positions: int = 4096,
) -> LayerPairComposition:
    """The composition of bilinear layers first and first + 1 (see the module docstring)."""
    cp1 = cp_from_model(model, first, fold_norm=True, dtype=torch.float64)
    cp2 = cp_from_model(model, first + 1, fold_norm=True, dtype=torch.float64)
    s, rho = acts.rms[first].reshape(-1).double(), acts.rms[first + 1].reshape(-1).double()
    scales = NormScales.from_rms(s, rho)
    two = two_layer_tensor(cp1, cp2, scales)
    norms = {k: float(t.norm()) for k, t in two.orders.items()}

    n = min(max_positions, acts.n_positions)
    x = acts.flat(first)[:n].double()
    parts = {k: t.apply(x) for k, t in two.orders.items()}  # unscaled T_k(x̂)
    data_size = {k: float((scales[k] * parts[k]).norm(dim=-1).mean()) for k in parts}
    s, rho = s[:n, None], rho[:n, None]
    predicted = (s**2 * parts[3] + s * parts[4] + parts[5]) / rho**2
    actual = cp_apply(cp2, acts.flat(first + 1)[:n].double())
    resid = (actual - predicted).pow(2).sum()
    explained = float(1 - resid / (actual - actual.mean(0)).pow(2).sum().clamp_min(1e-300))

    als = {}
    for k, t in two.orders.items():
        errs = []
        for r in ranks:
            try:
                errs.append((r, cp_als(t, r, n_iter_max=als_iters, tol=1e-6).rel_error))
            except DecompError:
                errs.append((r, float("nan")))
        als[k] = errs

    u = token_direction(model.w_u.detach().double(), token, model.final_norm_gain().detach().double())
    readout = []
    for d in composed_readout(cp1, cp2, u, n=n_directions, k=n_through):
        direct = input_tokens(d.vector, w_e, n_top, decode, allowed)
        fl = d.first_layer
        through = [
            (float(fl.values[j]), input_tokens(fl.vectors[:, j], w_e, n_top, decode, allowed))
            for j in range(fl.k)
        ]
        readout.append(ComposedReadout(d, direct, through))
    return LayerPairComposition(
        first, scales, norms, data_size, explained, float(actual.norm(dim=-1).mean()), als, token, readout
    )
