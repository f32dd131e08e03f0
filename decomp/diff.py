"""Weight diffs: B_ft − B_base of two checkpoints' layers as an exact CP tensor, compressed, ready for compression.

For bilinear layers the difference has factors [P_ft, −P_base], [W_ftᵀ, W_baseᵀ], [V_ftᵀ, V_baseᵀ]
(rank h_ft + h_base, weights ones): exact; compress it with the implicit ALS (`decomp.als.cp_als`) and read its terms with
`decomp.tokens.component_readouts`.
"""

from __future__ import annotations

from typing import Any

import torch
from tensorly.cp_tensor import CPTensor

from decomp.cp import check_cp, cp_difference
from decomp.errors import DecompError
from decomp.layers import cp_from_model


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
