"""Orders of a weight difference: ΔB of a CP layer, and attention's QK / OV circuits, split into exact terms.

A fine-tune moves every factor of a layer's CP tensor, A_m → A_m + dA_m (m = 0..n−1; a bilinear layer has
n = 3 modes (P, Wᵀ, Vᵀ), a multilinear layer of order k has n = k + 1). Multilinearity expands the change
exactly into one term per non-empty set S of changed modes,

    ΔB = B_ft − B_base = Σ_{∅≠S⊆{0..n−1}} T_S,    T_S = [[ dA_m for m ∈ S, A_m for m ∉ S ]],

and order k collects |S| = k: for a bilinear layer
    T_1 = dP⊗W⊗V + P⊗dW⊗V + P⊗W⊗dV    (linear in the change; what a small step produces),
    T_2 = dP⊗dW⊗V + dP⊗W⊗dV + P⊗dW⊗dV,   T_3 = dP⊗dW⊗dV.
T_S is a rank-R CP tensor, so order k is an exact CP tensor of rank C(n,k)·R. The split pairs component h of
the base with component h of the fine-tune: it is meaningful when the fine-tune grew out of the base (the same
hidden units), which is what the shape and rank checks can enforce; the sum is exact in any case.

Norms are implicit (Gram matrices of the factors through `decomp.cp.cp_inner`, float64; never the dense
tensor). ‖ΔB‖ is evaluated through the expansion Σ_S T_S, whose factors hold the differences dA_m: computing
‖B_ft − B_base‖ from ‖B_ft‖², ‖B_base‖² and ⟨B_ft, B_base⟩ would cancel to an absolute error ≈ 1e-8·‖B‖.
The residual ‖(B_ft − B_base) − Σ_S T_S‖ is computed from the two layers' own factors (`cp_difference`), an
independent check of the expansion; it sits at that same cancellation floor (≈ 1e-8·‖B‖), not at 1e-16.

Shares: share(k) = ‖T_k‖ / ‖ΔB‖ (the orders are not orthogonal, so these need not add up to 1) and
projected_share(k) = ⟨T_k, ΔB⟩ / ‖ΔB‖², which sums to 1 over k. When ΔB = 0 (the layer did not change) both
are NaN: there is nothing to split; `is_zero` says so.

Attention circuits, per head h with D = head_dim, W^h = rows [h·D, (h+1)·D) of W_Q / W_K / W_V and W_O^h =
columns [h·D, (h+1)·D) of W_O (the RMSNorm gain g of ln1 folded into the inputs: W_Q' = W_Q·diag(g), ...):

    QK^h = W_Q^hᵀ W_K^h [d, d],   ΔQK^h = dQᵀK + QᵀdK + dQᵀdK      (first_a, first_b, second)
    OV^h = W_O^h W_V^h  [d, d],   ΔOV^h = dO·V + O·dV + dO·dV.

Each is the n = 2 case of the expansion above: QK^h is the rank-D CP matrix with factors (W_Q^hᵀ, W_K^hᵀ),
OV^h the one with factors (W_O^h, W_V^hᵀ), and ‖AᵀB‖² = Σ (A Aᵀ) ∘ (B Bᵀ) is their implicit norm. QK^h is the
weight-level circuit, as TransformerLens's QK circuit (x_qᵀ W_Q^hᵀ W_K^h x_k): not the attention score. The
real model puts QK-norm (a per-head RMSNorm of q and k), rotary and the softmax scale between the projections
and the score, and scales v by the learned λ0 where the layer has value lambdas; none of these is folded in.
A layer's share aggregates its heads as the Frobenius norm of the stacked [H, d, d] terms:
‖term‖_layer = sqrt(Σ_h ‖term^h‖²), share = ‖term‖_layer / sqrt(Σ_h ‖ΔQK^h‖²) (heads have separate softmaxes,
so the sum Σ_h QK^h is not a meaningful object); projected shares Σ_h ⟨term^h, Δ^h⟩ / Σ_h ‖Δ^h‖² sum to 1.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from tensorly.cp_tensor import CPTensor

from decomp.cp import DEFAULT_BLOCK, check_cp, cp_difference, cp_inner, cp_norm, cp_to, make_cp
from decomp.errors import DecompError
from decomp.layers import cp_from_model

F64 = torch.float64
CIRCUITS = ("qk", "ov")
CIRCUIT_TERMS = ("first_a", "first_b", "first", "second")


def cp_diff_terms(base: CPTensor, ft: CPTensor) -> dict[tuple[int, ...], CPTensor]:
    """The exact terms T_S of ft − base, one per non-empty set S of changed modes (module docstring).

    base, ft: CP tensors of the same shape, the same number of modes n and the same rank R; the weights are
    folded into mode 0 first, so dA_0 = w_ft·A_0,ft − w_base·A_0,base. ft is converted to base's dtype/device.
    Returns {S (sorted mode indices): rank-R CPTensor [[dA_m, m ∈ S; A_m, m ∉ S]]}, S in order of size,
    then lexicographic; Σ_S T_S = ft − base.
    """
    base, ft = check_cp(base), check_cp(ft)
    n_base, n_ft = len(base.factors), len(ft.factors)
    if n_base != n_ft:
        raise DecompError(
            f"CP tensors have {n_base} (base) and {n_ft} (fine-tuned) modes; the orders need the same number"
        )
    if tuple(base.shape) != tuple(ft.shape):
        raise DecompError(
            f"CP tensors differ in shape: base {tuple(base.shape)} vs fine-tuned {tuple(ft.shape)}"
        )
    r_base, r_ft = base.weights.shape[0], ft.weights.shape[0]
    if r_base != r_ft:
        raise DecompError(
            f"CP tensors have ranks {r_base} (base) and {r_ft} (fine-tuned); the orders pair component h of "
            "one with component h of the other, so the ranks must be equal"
        )
    ft = cp_to(ft, base.weights.dtype, base.weights.device)
    a = _folded(base)
    delta = [f - fa for f, fa in zip(_folded(ft), a, strict=True)]
    n = len(a)
    terms = {}
    for k in range(1, n + 1):
        for s in itertools.combinations(range(n), k):
            terms[s] = make_cp(None, [delta[m] if m in s else a[m] for m in range(n)])
    return terms


def cp_diff_orders(base: CPTensor, ft: CPTensor) -> dict[int, CPTensor]:
    """Order k ∈ 1..n of ft − base: the CP tensor Σ_{|S|=k} T_S of rank C(n,k)·R (see `cp_diff_terms`).

    Σ_k orders[k] = ft − base exactly. Bilinear layers (n = 3): orders 1, 2, 3; multilinear order k: 1..k+1.
    """
    by_order: dict[int, list[CPTensor]] = {}
    for s, t in cp_diff_terms(base, ft).items():
        by_order.setdefault(len(s), []).append(t)
    return {k: _concat(ts) for k, ts in by_order.items()}


@dataclass
class OrderShares:
    """Norms of the orders of ΔB = B_ft − B_base (all implicit, float64; see the module docstring).

    orders[k] = ‖T_k‖, inner[k] = ⟨T_k, ΔB⟩, diff_norm = ‖ΔB‖, residual_norm = ‖ΔB − Σ_k T_k‖ (≈ 0: the
    cancellation floor ≈ 1e-8·base_norm), base_norm = ‖B_base‖; terms[S] = ‖T_S‖ and term_inner[S] = ⟨T_S, ΔB⟩
    for each set S of changed modes (mode 0 = P, 1 = W, 2 = V, ...).
    """

    orders: dict[int, float]
    inner: dict[int, float]
    diff_norm: float
    residual_norm: float
    base_norm: float
    terms: dict[tuple[int, ...], float] = field(default_factory=dict)
    term_inner: dict[tuple[int, ...], float] = field(default_factory=dict)

    @property
    def is_zero(self) -> bool:
        """True when ΔB = 0 exactly (every factor unchanged): the shares are then NaN."""
        return self.diff_norm == 0.0

    def share(self, k: int) -> float:
        """‖T_k‖ / ‖ΔB‖ (NaN when ΔB = 0)."""
        return self.orders[self._check(k)] / self.diff_norm if not self.is_zero else math.nan

    def projected_share(self, k: int) -> float:
        """⟨T_k, ΔB⟩ / ‖ΔB‖²; sums to 1 over k (NaN when ΔB = 0)."""
        return self.inner[self._check(k)] / self.diff_norm**2 if not self.is_zero else math.nan

    @property
    def relative_diff(self) -> float:
        """‖ΔB‖ / ‖B_base‖ (NaN when the base layer is zero)."""
        return self.diff_norm / self.base_norm if self.base_norm > 0 else math.nan

    def _check(self, k: int) -> int:
        if k not in self.orders:
            raise DecompError(
                f"order {k!r} is not one of the orders {sorted(self.orders)} of this difference"
            )
        return k


def order_shares(base: CPTensor, ft: CPTensor, block: int = DEFAULT_BLOCK) -> OrderShares:
    """The norms and shares of each order of ft − base, implicit and in float64 (module docstring).

    Cost: one R×R Gram product per pair of terms (2ⁿ−1 terms), row-blocked by `block` (memory O(block·R)).
    """
    base, ft = cp_to(check_cp(base), F64), cp_to(check_cp(ft), F64)
    terms = cp_diff_terms(base, ft)
    keys = list(terms)
    gram: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
    for i, s in enumerate(keys):
        for t in keys[i:]:
            gram[s, t] = gram[t, s] = float(cp_inner(terms[s], terms[t], block))
    term_inner = {s: sum(gram[s, t] for t in keys) for s in keys}
    n = len(base.factors)
    orders = {
        k: _sqrt(sum(gram[s, t] for s in keys for t in keys if len(s) == len(t) == k))
        for k in range(1, n + 1)
    }
    inner = {k: sum(v for s, v in term_inner.items() if len(s) == k) for k in range(1, n + 1)}
    diff_sq = sum(term_inner.values())
    # ‖D − ΣT‖² with D = ft − base from the raw factors: the independent check of the expansion
    d = cp_difference(ft, base)
    cross = sum(float(cp_inner(d, terms[s], block)) for s in keys)
    residual = math.sqrt(abs(float(cp_inner(d, d, block)) - 2 * cross + diff_sq))
    return OrderShares(
        orders=orders,
        inner=inner,
        diff_norm=_sqrt(diff_sq),
        residual_norm=residual,
        base_norm=float(cp_norm(base, block)),
        terms={s: _sqrt(gram[s, s]) for s in keys},
        term_inner=term_inner,
    )


def layer_order_shares(model_base: Any, model_ft: Any, layer: int, fold_norm: bool = True) -> OrderShares:
    """`order_shares` of MLP `layer` of two models (`decomp.layers.cp_from_model`, float64).

    fold_norm folds each model's RMSNorm gain into its W and V (W' = W·diag(g)), so a change of the gain shows
    up in dW' and dV'. Raises DecompError when the models' layers cannot be paired (kind, order, widths).
    """
    layer = _check_pair(model_base, model_ft, layer)
    kinds = [(m.mlp_order(layer), m.mlp_kind(layer)) for m in (model_base, model_ft)]
    if kinds[0][0] != kinds[1][0]:
        raise DecompError(
            f"layer {layer}: base MLP has order {kinds[0][0]} ({kinds[0][1]!r}), "
            f"fine-tuned order {kinds[1][0]} ({kinds[1][1]!r})"
        )
    base = cp_from_model(model_base, layer, fold_norm)
    ft = cp_from_model(model_ft, layer, fold_norm)
    if base.weights.shape != ft.weights.shape:
        raise DecompError(
            f"layer {layer}: MLP hidden widths differ (base {base.weights.shape[0]}, fine-tuned "
            f"{ft.weights.shape[0]}); the orders split needs the same hidden units"
        )
    return order_shares(base, ft)


@dataclass
class CircuitOrders:
    """The orders of one layer's QK or OV circuit change, per head (each field a float64 tensor [H]).

    name "qk": first_a = ‖dQᵀK‖, first_b = ‖QᵀdK‖, second = ‖dQᵀdK‖; name "ov": first_a = ‖dO·V‖,
    first_b = ‖O·dV‖, second = ‖dO·dV‖. first = ‖first_a term + first_b term‖, diff = ‖Δ‖, base = ‖circuit of
    the base‖, residual = ‖Δ − Σ terms‖ (implicit check, ≈ 1e-8·base); inner[t] = ⟨term t, Δ⟩ per head for t in
    CIRCUIT_TERMS. Layer shares aggregate heads as the norm of the stacked [H, d, d] terms (module docstring).
    """

    name: str
    layer: int
    first_a: torch.Tensor
    first_b: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    diff: torch.Tensor
    base: torch.Tensor
    residual: torch.Tensor
    inner: dict[str, torch.Tensor]

    @property
    def n_head(self) -> int:
        return self.diff.shape[0]

    @property
    def diff_norm(self) -> float:
        """sqrt(Σ_h ‖Δ^h‖²): the norm of the stacked change."""
        return float(self.diff.square().sum().sqrt())

    @property
    def base_norm(self) -> float:
        return float(self.base.square().sum().sqrt())

    @property
    def is_zero(self) -> bool:
        """True when no head's circuit changed: the shares are then NaN."""
        return self.diff_norm == 0.0

    def share(self, term: str = "first") -> float:
        """sqrt(Σ_h ‖term^h‖²) / sqrt(Σ_h ‖Δ^h‖²) for term in CIRCUIT_TERMS (NaN when nothing changed)."""
        norms = self._norms(term)
        return float(norms.square().sum().sqrt()) / self.diff_norm if not self.is_zero else math.nan

    def projected_share(self, term: str = "first") -> float:
        """Σ_h ⟨term^h, Δ^h⟩ / Σ_h ‖Δ^h‖²; first_a + first_b + second sum to 1 (NaN when nothing changed)."""
        self._norms(term)
        return float(self.inner[term].sum()) / self.diff_norm**2 if not self.is_zero else math.nan

    def head_shares(self, term: str = "first") -> torch.Tensor:
        """‖term^h‖ / ‖Δ^h‖ per head [H] (NaN for heads that did not change)."""
        norms = self._norms(term)
        return torch.where(self.diff > 0, norms / self.diff.clamp_min(torch.finfo(F64).tiny), math.nan)

    def _norms(self, term: str) -> torch.Tensor:
        if term not in CIRCUIT_TERMS:
            raise DecompError(f"circuit term {term!r} is not one of {', '.join(CIRCUIT_TERMS)}")
        return getattr(self, term)


def qk_orders(model_base: Any, model_ft: Any, layer: int, fold_norm: bool = True) -> CircuitOrders:
    """Per-head orders of ΔQK^h = Δ(W_Q^hᵀ W_K^h) of attention `layer` (ln1 gain folded in when fold_norm)."""
    return _circuit_orders("qk", model_base, model_ft, layer, fold_norm)


def ov_orders(model_base: Any, model_ft: Any, layer: int, fold_norm: bool = True) -> CircuitOrders:
    """Per-head orders of ΔOV^h = Δ(W_O^h W_V^h) of attention `layer` (ln1 gain folded in when fold_norm)."""
    return _circuit_orders("ov", model_base, model_ft, layer, fold_norm)


def qk_terms(model_base: Any, model_ft: Any, layer: int, fold_norm: bool = True) -> dict[str, torch.Tensor]:
    """Dense [H, d, d] float64 matrices: "base" QK^h, "ft", "diff", "first_a" dQᵀK, "first_b" QᵀdK, "second"."""
    return _circuit_terms("qk", model_base, model_ft, layer, fold_norm)


def ov_terms(model_base: Any, model_ft: Any, layer: int, fold_norm: bool = True) -> dict[str, torch.Tensor]:
    """Dense [H, d, d] float64 matrices: "base" OV^h, "ft", "diff", "first_a" dO·V, "first_b" O·dV, "second"."""
    return _circuit_terms("ov", model_base, model_ft, layer, fold_norm)


def _circuit_orders(name: str, model_base: Any, model_ft: Any, layer: int, fold_norm: bool) -> CircuitOrders:
    layer, base_f, ft_f = _circuit_factors(name, model_base, model_ft, layer, fold_norm)
    per_head = [order_shares(make_cp(None, b), make_cp(None, f)) for b, f in zip(base_f, ft_f, strict=True)]

    def col(get) -> torch.Tensor:
        return torch.tensor([get(s) for s in per_head], dtype=F64)

    return CircuitOrders(
        name=name,
        layer=layer,
        first_a=col(lambda s: s.terms[(0,)]),
        first_b=col(lambda s: s.terms[(1,)]),
        first=col(lambda s: s.orders[1]),
        second=col(lambda s: s.orders[2]),
        diff=col(lambda s: s.diff_norm),
        base=col(lambda s: s.base_norm),
        residual=col(lambda s: s.residual_norm),
        inner={
            "first_a": col(lambda s: s.term_inner[(0,)]),
            "first_b": col(lambda s: s.term_inner[(1,)]),
            "first": col(lambda s: s.inner[1]),
            "second": col(lambda s: s.inner[2]),
        },
    )


def _circuit_terms(
    name: str, model_base: Any, model_ft: Any, layer: int, fold_norm: bool
) -> dict[str, torch.Tensor]:
    _, base_f, ft_f = _circuit_factors(name, model_base, model_ft, layer, fold_norm)
    x, y = (torch.stack([f[j] for f in base_f]) for j in (0, 1))  # [H, d, D]: circuit^h = x^h y^hᵀ
    x_ft, y_ft = (torch.stack([f[j] for f in ft_f]) for j in (0, 1))
    dx, dy = x_ft - x, y_ft - y
    mat = torch.bmm
    return {
        "base": mat(x, y.mT),
        "ft": mat(x_ft, y_ft.mT),
        "diff": mat(x_ft, y_ft.mT) - mat(x, y.mT),
        "first_a": mat(dx, y.mT),
        "first_b": mat(x, dy.mT),
        "second": mat(dx, dy.mT),
    }


def _circuit_factors(
    name: str, model_base: Any, model_ft: Any, layer: int, fold_norm: bool
) -> tuple[int, list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Per head the two CP factors [d, D] of the circuit (QK: W_Q^hᵀ, W_K^hᵀ; OV: W_O^h, W_V^hᵀ), float64."""
    if name not in CIRCUITS:
        raise DecompError(f"circuit {name!r} is not one of {', '.join(CIRCUITS)}")
    layer = _check_pair(model_base, model_ft, layer)
    heads = [m.config.n_head for m in (model_base, model_ft)]
    if heads[0] != heads[1]:
        raise DecompError(f"models differ in n_head: base {heads[0]}, fine-tuned {heads[1]}")
    return layer, *(
        _head_factors(name, m, layer, fold_norm, who)
        for m, who in ((model_base, "base"), (model_ft, "fine-tuned"))
    )


def _head_factors(name: str, model: Any, layer: int, fold_norm: bool, who: str) -> list[list[torch.Tensor]]:
    try:
        gain = model.attn_norm_gain(layer).detach().to(F64)
        w = {key: getattr(model, f"w_{key}")(layer).detach().to(F64) for key in "qkvo"}
    except ValueError as exc:
        raise DecompError(f"{who} model: {exc}") from exc
    if fold_norm:
        for key in "qkv":
            w[key] = w[key] * gain[None, :]
    n_head, dim = model.config.n_head, model.config.head_dim
    rows = [slice(h * dim, (h + 1) * dim) for h in range(n_head)]
    if name == "qk":
        return [[w["q"][r].T, w["k"][r].T] for r in rows]
    return [[w["o"][:, r], w["v"][r].T] for r in rows]


def _check_pair(model_base: Any, model_ft: Any, layer: int) -> int:
    """The layer index (made non-negative) after checking that both models have it, with equal depth and width."""
    for who, m in (("base", model_base), ("fine-tuned", model_ft)):
        n_layer = m.config.n_layer
        if not isinstance(layer, int) or not -n_layer <= layer < n_layer:
            raise DecompError(f"layer index {layer!r} is out of range for the {who} model ({n_layer} layers)")
    for key in ("n_layer", "d_model"):
        v_base, v_ft = getattr(model_base.config, key), getattr(model_ft.config, key)
        if v_base != v_ft:
            raise DecompError(f"models differ in {key}: base {v_base}, fine-tuned {v_ft}")
    return layer % model_base.config.n_layer


def _folded(cp: CPTensor) -> list[torch.Tensor]:
    return [cp.factors[0] * cp.weights] + list(cp.factors[1:])


def _concat(terms: list[CPTensor]) -> CPTensor:
    factors = [torch.cat([t.factors[m] for t in terms], dim=1) for m in range(len(terms[0].factors))]
    return make_cp(None, factors)


def _sqrt(x: float) -> float:
    return math.sqrt(max(x, 0.0))
