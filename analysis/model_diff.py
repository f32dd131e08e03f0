"""Model diffing of a base and a fine-tuned checkpoint: from the weights and from activations.

Weight-based: for each CP layer, B_ft − B_base is an exact CP tensor (decomp's ``layer_diff_cp``, factors
[P_ft, −P_base], [W_ftᵀ, W_baseᵀ], [V_ftᵀ, V_baseᵀ]); it is compressed with decomp's
implicit CP-ALS (``cp_als``) and its largest rank-one terms, with unit-norm factors (``cp_normalize``), are read
as tokens by ``component_readouts`` (output: W_U a_r, inputs: W_E b_r, W_E c_r; the fine-tuned model's W_E and W_U·diag(g_f)).

Activation-based baseline: run both models on the first positions of unrelated text (validation windows)
and take, per lens point ℓ and position p, the mean difference of the residual stream
    δ_ℓ,p = mean over sequences (h_ft − h_base)[ℓ, p].
The first position is typically special (attention sink, large norm), so summaries average over p ≥ 1. The
per-sequence differences at one lens point are also analysed with PCA (uncentred second moment, so a
constant shift shows up as the first component), and δ and the principal directions are read through the
logit lens of the fine-tuned model (W_U · (g_f ⊙ δ), both signs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tensorly.cp_tensor import CPTensor

from analysis.errors import AnalysisError
from analysis.kl import kl_divergence
from analysis.logit_lens import lens_points
from analysis.spectra import readout_tables
from analysis.tokens import TokenText
from analysis.valdata import ValTokens
from decomp import (
    ComponentReadout,
    DecompError,
    TopTokens,
    component_readouts,
    cp_als,
    cp_normalize,
    layer_diff_cp,
    top_tokens,
)
from decomp.cp import cp_norm
from decomp.layers import cp_from_model
from model import GPT


def check_comparable(base: GPT, ft: GPT) -> None:
    """Raise unless the two models share the architecture (so their layers and tokens line up)."""
    a, b = base.config.to_dict(), ft.config.to_dict()
    diffs = [k for k in a if a[k] != b[k]]
    if diffs:
        raise AnalysisError(
            "the checkpoints differ in architecture ("
            + ", ".join(f"{k}: {a[k]} vs {b[k]}" for k in diffs)
            + ")"
        )


@dataclass
class LayerWeightDiff:
    """Weight diff of one CP layer. norms are Frobenius norms of the (norm-folded) CP tensors;
    rank_errors: [(r, ‖D − D_r‖/‖D‖)] of the ALS sweep; components: readouts of the rank-``rank`` fit."""

    layer: int
    base_norm: float
    diff_norm: float
    rank: int
    rel_error: float
    rank_errors: list[tuple[int, float]] = field(default_factory=list)
    components: list[ComponentReadout] = field(default_factory=list)
    note: str = ""
    cp: CPTensor | None = field(default=None, repr=False)  # the rank-``rank`` fit, unit factor columns

    @property
    def relative_change(self) -> float:
        return self.diff_norm / self.base_norm if self.base_norm else float("nan")


def weight_diff(
    base: GPT,
    ft: GPT,
    layer: int,
    token_text: TokenText,
    n_valid: int,
    rank: int = 8,
    sweep: tuple[int, ...] = (1, 2, 4, 8, 16),
    n_components: int = 4,
    k: int = 8,
    als_iters: int = 60,
    allowed: torch.Tensor | None = None,
) -> LayerWeightDiff:
    """Compress B_ft − B_base of ``layer`` to ``rank`` (implicit ALS) and read its top terms as tokens
    (input tokens only among ``allowed``, bool [≥ n_valid], when given)."""
    diff = layer_diff_cp(ft, base, layer)
    base_norm = float(cp_norm(cp_from_model(base, layer)))
    diff_norm = float(cp_norm(diff))
    if diff_norm <= 1e-12 * max(base_norm, 1e-30):
        return LayerWeightDiff(layer, base_norm, diff_norm, rank, 0.0, note="identical weights: no change")
    w_e, w_u = readout_tables(ft, n_valid)
    try:
        als = cp_als(diff, rank, n_iter_max=als_iters, tol=1e-8)
        errors = [(r, cp_als(diff, r, n_iter_max=als_iters, tol=1e-8).rel_error) for r in sweep if r != rank]
    except DecompError as e:
        return LayerWeightDiff(layer, base_norm, diff_norm, rank, float("nan"), note=str(e))
    fit = cp_normalize(als.cp)
    allowed = None if allowed is None else allowed[:n_valid]
    components = component_readouts(fit, w_e, w_u, n_components, k, token_text.display, allowed)
    errors = sorted([*errors, (rank, als.rel_error)])
    return LayerWeightDiff(layer, base_norm, diff_norm, rank, als.rel_error, errors, components, cp=fit)


@dataclass
class ActivationDiff:
    """Mean residual differences on the first positions of validation text.

    labels [n] lens points; mean_diff [n, P, d] = δ; diff_norm [n, P] = ‖δ‖; base_norm [n, P] = mean ‖h_base‖;
    cos_to_mean [n, P]: cosine of δ_p with the mean of δ over p ≥ 1; pca_point: the lens point of the PCA;
    pca_explained [c]: fraction of the second moment of the per-sequence differences (positions ≥ 1) along
    each principal direction; pca_directions [c, d]; mean_lens / pca_lens: logit-lens readouts of
    δ(p ≥ 1 averaged) per lens point, of δ at p = 0, and of each principal direction.
    kl_by_position [P]: mean KL(base ‖ ft) of next-token distributions; prob_change: readout of the mean change
    of next-token probabilities p_ft − p_base over all positions (where the fine-tune moved probability mass;
    unlike log-probabilities, not dominated by tokens that stay unlikely).
    """

    labels: list[str]
    mean_diff: torch.Tensor
    diff_norm: torch.Tensor
    base_norm: torch.Tensor
    cos_to_mean: torch.Tensor
    pca_point: str
    pca_explained: torch.Tensor
    pca_directions: torch.Tensor
    mean_lens: dict[str, TopTokens]
    first_lens: dict[str, TopTokens]
    pca_lens: list[TopTokens]
    kl_by_position: torch.Tensor
    prob_change: TopTokens


def activation_diff(
    base: GPT,
    ft: GPT,
    val: ValTokens,
    token_text: TokenText,
    n_valid: int,
    n_positions: int = 32,
    pca_point: int = -1,
    n_pca: int = 6,
    k: int = 8,
    batch_size: int = 8,
) -> ActivationDiff:
    """Mean activation differences on the first n_positions of each validation window (see module doc).

    pca_point indexes the lens points (-1 = the residual after the last block).
    """
    points = lens_points(base)
    names = [n for _, n in points]
    P = min(n_positions, val.x.shape[1])
    if P < 2:
        raise AnalysisError("activation diffing needs at least 2 positions per sequence")
    pca_index = range(len(points))[pca_point]
    n_seq = 0
    sum_diff = torch.zeros(len(points), P, base.config.d_model, dtype=torch.float64)
    sum_base_norm = torch.zeros(len(points), P, dtype=torch.float64)
    second = torch.zeros(base.config.d_model, base.config.d_model, dtype=torch.float64)
    kl_pos = torch.zeros(P, dtype=torch.float64)
    prob_change = torch.zeros(base.config.vocab_size, dtype=torch.float64)
    with torch.inference_mode():
        for x, _ in val.batches(batch_size):
            x = x[:, :P]
            logits_b, cache_b = base.run_with_cache(x, names_filter=names)
            logits_f, cache_f = ft.run_with_cache(x, names_filter=names)
            for j, name in enumerate(names):
                d = (cache_f[name] - cache_b[name]).double()
                sum_diff[j] += d.sum(0)
                sum_base_norm[j] += cache_b[name].double().norm(dim=-1).sum(0)
                if j == pca_index:
                    flat = d[:, 1:].reshape(-1, d.shape[-1])
                    second += flat.T @ flat
            kl_pos += kl_divergence(logits_b, logits_f).double().sum(0)
            change = torch.softmax(logits_f.float(), -1) - torch.softmax(logits_b.float(), -1)
            prob_change += change.double().sum((0, 1))
            n_seq += x.shape[0]
    mean_diff = sum_diff / n_seq
    rest = mean_diff[:, 1:].mean(1, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(mean_diff, rest.expand_as(mean_diff), dim=-1, eps=1e-30)
    # Where the models agree exactly (e.g. layers before the first changed weight) the direction is undefined.
    tiny = 1e-7 * (sum_base_norm / n_seq).clamp_min(1e-30)
    cos = torch.where((mean_diff.norm(dim=-1) <= tiny) | (rest.norm(dim=-1) <= tiny), float("nan"), cos)
    evals, evecs = torch.linalg.eigh(second)
    order = evals.argsort(descending=True)[:n_pca]
    explained = evals[order].clamp_min(0) / evals.clamp_min(0).sum().clamp_min(1e-30)
    directions = evecs[:, order].T
    _, w_u = readout_tables(ft, n_valid)
    labels = [label for label, _ in points]

    def lens(v: torch.Tensor) -> TopTokens:
        return top_tokens(w_u @ v, k, token_text.display)

    return ActivationDiff(
        labels=labels,
        mean_diff=mean_diff,
        diff_norm=mean_diff.norm(dim=-1),
        base_norm=sum_base_norm / n_seq,
        cos_to_mean=cos,
        pca_point=labels[pca_index],
        pca_explained=explained,
        pca_directions=directions,
        mean_lens={label: lens(rest[j, 0]) for j, label in enumerate(labels)},
        first_lens={label: lens(mean_diff[j, 0]) for j, label in enumerate(labels)},
        pca_lens=[lens(v) for v in directions],
        kl_by_position=kl_pos / n_seq,
        prob_change=top_tokens((prob_change / (n_seq * P))[:n_valid], k, token_text.display),
    )
