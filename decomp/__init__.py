"""Weight-based decomposition of bilinear / multilinear MLP layers.

CP tensors are `tensorly.cp_tensor.CPTensor` objects holding torch tensors (decomp never changes tensorly's
global backend; wrap tensorly calls on them in ``tensorly.backend_context("pytorch")``). Nothing here builds
the dense d×d×d tensor except `cp_to_dense` (small tensors only).

Modules: cp (CP forms, symmetrisation, implicit norms), layers (read a `model.GPT`), interaction (Q(u)),
eigen (eigendecomposition, truncation, summaries), als (implicit CP-ALS, also on tensor networks), tokens
(token readouts), diff (weight diffs), network (implicit tensors as einsum networks), two_layer (two stacked
bilinear layers as orders 3, 4, 5), orders (a weight diff split into first / second / … order terms, and the
same split of attention's QK / OV circuits), io (save / load).
"""

from decomp.als import ALSResult, cp_als
from decomp.cp import (
    bilinear_cp,
    check_cp,
    cp_apply,
    cp_difference,
    cp_inner,
    cp_norm,
    cp_normalize,
    cp_relative_error,
    cp_to,
    cp_to_dense,
    make_cp,
    multilinear_cp,
    relative_error_from_inner,
    symmetric_cp,
)
from decomp.diff import layer_diff_cp, weight_diff_cp
from decomp.eigen import (
    Eigendecomposition,
    effective_rank,
    eigendecompose,
    eigh_sorted,
    svd_flip,
    top_abs_sum,
)
from decomp.errors import DecompError
from decomp.interaction import (
    interaction_frobenius_sq,
    interaction_matrix,
    interaction_matvec,
    interaction_operator,
    token_direction,
)
from decomp.io import load_cp, load_eigen, save_cp, save_eigen
from decomp.layers import (
    BilinearLayer,
    MultilinearLayer,
    bilinear_layer,
    cp_from_model,
    layer_kind,
    multilinear_layer,
)
from decomp.network import TensorNetwork
from decomp.orders import (
    CircuitOrders,
    OrderShares,
    cp_diff_orders,
    cp_diff_terms,
    layer_order_shares,
    order_shares,
    ov_orders,
    ov_terms,
    qk_orders,
    qk_terms,
)
from decomp.tokens import (
    ComponentReadout,
    EigenReadout,
    TokenScore,
    TopTokens,
    component_readouts,
    direct_path_map,
    eigen_readouts,
    input_tokens,
    output_tokens,
    top_tokens,
)
from decomp.two_layer import (
    ComposedDirection,
    NormScales,
    TwoLayerTensor,
    composed_readout,
    two_layer_from_model,
    two_layer_tensor,
)

__all__ = [
    "ALSResult",
    "BilinearLayer",
    "CircuitOrders",
    "ComponentReadout",
    "ComposedDirection",
    "DecompError",
    "EigenReadout",
    "Eigendecomposition",
    "MultilinearLayer",
    "NormScales",
    "OrderShares",
    "TensorNetwork",
    "TokenScore",
    "TopTokens",
    "TwoLayerTensor",
    "bilinear_cp",
    "bilinear_layer",
    "check_cp",
    "component_readouts",
    "composed_readout",
    "cp_als",
    "cp_apply",
    "cp_diff_orders",
    "cp_diff_terms",
    "cp_difference",
    "cp_from_model",
    "cp_inner",
    "cp_norm",
    "cp_normalize",
    "cp_relative_error",
    "cp_to",
    "cp_to_dense",
    "direct_path_map",
    "effective_rank",
    "eigen_readouts",
    "eigendecompose",
    "eigh_sorted",
    "input_tokens",
    "interaction_frobenius_sq",
    "interaction_matrix",
    "interaction_matvec",
    "interaction_operator",
    "layer_diff_cp",
    "layer_kind",
    "layer_order_shares",
    "load_cp",
    "load_eigen",
    "make_cp",
    "multilinear_cp",
    "multilinear_layer",
    "order_shares",
    "output_tokens",
    "ov_orders",
    "ov_terms",
    "qk_orders",
    "qk_terms",
    "relative_error_from_inner",
    "save_cp",
    "save_eigen",
    "svd_flip",
    "symmetric_cp",
    "token_direction",
    "top_abs_sum",
    "top_tokens",
    "two_layer_from_model",
    "two_layer_tensor",
    "weight_diff_cp",
]
