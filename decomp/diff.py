"""Weight diffs: B_ft − B_base of two checkpoints' layers as an exact CP tensor, compressed, read as tokens.

For bilinear layers the difference has factors [P_ft, −P_base], [W_ftᵀ, W_baseᵀ], [V_ftᵀ, V_baseᵀ]
(rank h_ft + h_base, weights ones): exact, and ready for the implicit ALS (`decomp.als.cp_als`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensorly.cp_tensor import CPTensor

from decomp.als import ALSResult, cp_als
from decomp.cp import check_cp, cp_difference
from decomp.errors import DecompError
from decomp.layers import cp_from_model
from decomp.tokens import ComponentReadout, Decode, component_readouts


@dataclass
class DiffReport:
    """A compressed weight diff: the ALS result and token readouts of its largest rank-one terms."""

    als: ALSResult
    components: list[ComponentReadout]


def weight_diff_cp(ft: CPTensor, base: CPTensor) -> CPTensor:
    """Exact CP tensor of ft − base (mode 0 negated for base, other factors concatenated).

    Raises DecompError when the two layers' shapes differ.
    """
    ft, base = check_cp(ft), check_cp(base)
    if len(ft.factors) != len(base.factors) or tuple(ft.shape) != tuple(base.shape):
        raise DecompError(
            f"checkpoint layers differ in shape: fine-tuned {tuple(ft.shape)} vs base {tuple(base.shape)}"
        )
    return cp_difference(ft, base)


def layer_diff_cp(
    model_ft: Any,
    model_base: Any,
    layer: int,
    fold_norm: bool = True,
    dtype: torch.dtype | None = torch.float64,
) -> CPTensor:
    """CP tensor of MLP `layer` of model_ft minus the same layer of model_base (see `weight_diff_cp`)."""
    for name, m in (("fine-tuned", model_ft), ("base", model_base)):
        if not -m.config.n_layer <= layer < m.config.n_layer:
            raise DecompError(
                f"layer {layer} is out of range for the {name} model ({m.config.n_layer} layers)"
            )
    if model_ft.config.d_model != model_base.config.d_model:
        raise DecompError(
            f"checkpoints differ in d_model: fine-tuned {model_ft.config.d_model} "
            f"vs base {model_base.config.d_model}"
        )
    ft = cp_from_model(model_ft, layer, fold_norm, dtype)
    base = cp_from_model(model_base, layer, fold_norm, dtype)
    return weight_diff_cp(ft, base)


def diff_report(
    diff: CPTensor,
    rank: int,
    w_e: torch.Tensor,
    w_u: torch.Tensor,
    n_components: int = 10,
    k: int = 10,
    decode: Decode | None = None,
    **als_kwargs: Any,
) -> DiffReport:
    """Compress a diff CP tensor to `rank` with the implicit ALS and read its largest terms as tokens.

    als_kwargs go to `cp_als` (n_iter_max, init, tol, random_state, progress, ...).
    """
    als = cp_als(diff, rank, **als_kwargs)
    components = component_readouts(
        als.cp, w_e.to(als.cp.weights), w_u.to(als.cp.weights), n_components, k, decode
    )
    return DiffReport(als, components)
