"""``torch.library`` custom ops around the Triton kernels: ``tnt::gated_product``, ``tnt::fused_up_product``.

Each op has a fake (meta) implementation, so ``torch.compile(fullgraph=True)`` traces through it, and an
autograd formula; the backward passes are custom ops too.

- ``gated_product`` saves its input ``up`` and recomputes the activation in backward.
- ``fused_up_product(x, w_up, act, order, save_up)`` returns ``(out, up)``. With ``save_up`` its forward GEMM
  also writes the factors up = x w_upᵀ [M, k·h], which backward uses directly: backward is then one
  elementwise kernel and the two GEMMs dx = d_up w_up, dw = d_upᵀ x, the FLOPs of a plain linear layer.
  Without it ``up`` is empty, only x and w_up are saved, and backward recomputes up with one more GEMM.
  ``up`` is not differentiable (its gradient is never materialised).

Triton modules are imported on first use, after ``prepare_triton`` has chosen interpreter mode if needed.
"""

import math

import torch
from torch import Tensor


def _gated():
    from kernels import triton_gated

    return triton_gated


def _matmul():
    from kernels import triton_matmul

    return triton_matmul


def _hidden_shape(t: Tensor, n: int) -> list:
    return [*t.shape[:-1], n]


# --- gated_product: up [..., k·h] → [..., h] ---------------------------------------------------------------


@torch.library.custom_op("tnt::gated_product", mutates_args=())
def gated_product_op(up: Tensor, act: str, order: int) -> Tensor:
    """act(up[..., :h]) ⊙ up[..., h:2h] ⊙ … (Triton); up: [..., k·h] → [..., h]."""
    from kernels.backend import prepare_triton

    prepare_triton(up, "up")
    return _gated().gated_product_fwd(up, act, order)


@gated_product_op.register_fake
def _(up: Tensor, act: str, order: int) -> Tensor:
    return up.new_empty(_hidden_shape(up, up.shape[-1] // order))


@torch.library.custom_op("tnt::gated_product_backward", mutates_args=())
def gated_product_backward_op(grad: Tensor, up: Tensor, act: str, order: int) -> Tensor:
    """d_up: [..., k·h] from grad: [..., h] and the forward input up (Triton)."""
    from kernels.backend import prepare_triton

    prepare_triton(up, "up")
    return _gated().gated_product_bwd(grad, up, act, order)


@gated_product_backward_op.register_fake
def _(grad: Tensor, up: Tensor, act: str, order: int) -> Tensor:
    return up.new_empty(up.shape)


def _gated_setup(ctx, inputs: tuple, output: Tensor) -> None:
    up, ctx.act, ctx.order = inputs
    ctx.save_for_backward(up)


def _gated_backward(ctx, grad: Tensor) -> tuple:
    (up,) = ctx.saved_tensors
    return gated_product_backward_op(grad, up, ctx.act, ctx.order), None, None


gated_product_op.register_autograd(_gated_backward, setup_context=_gated_setup)


# --- fused_up_product: x [..., d], w_up [k·h, d] → [..., h] ------------------------------------------------


@torch.library.custom_op("tnt::fused_up_product", mutates_args=())
def fused_up_product_op(
    x: Tensor, w_up: Tensor, act: str, order: int, save_up: bool
) -> tuple[Tensor, Tensor]:
    """(gated_product(x @ w_upᵀ) [..., h], up [M, k·h] if ``save_up`` else empty) in one Triton GEMM."""
    from kernels.backend import prepare_triton

    prepare_triton(x, "x")
    return _matmul().fused_up_product_fwd(x, w_up, act, order, save_up)


@fused_up_product_op.register_fake
def _(x: Tensor, w_up: Tensor, act: str, order: int, save_up: bool) -> tuple[Tensor, Tensor]:
    out = x.new_empty(_hidden_shape(x, w_up.shape[0] // order))
    up = x.new_empty((math.prod(x.shape[:-1]), w_up.shape[0])) if save_up else x.new_empty(0)
    return out, up


@torch.library.custom_op("tnt::fused_up_product_backward", mutates_args=())
def fused_up_product_backward_op(
    grad: Tensor,
    x: Tensor,
    w_up: Tensor,
    up: Tensor | None,
    act: str,
    order: int,
    need_dx: bool,
    need_dw: bool,
) -> tuple[Tensor, Tensor]:
    """(dx [..., d], dw [k·h, d]); an input whose gradient is not needed gets an empty tensor.

    ``up`` is the saved [M, k·h] factors; when it is None they are recomputed with one GEMM into a scratch
    buffer that then holds d_up in place (order ≤ 2). Then dx = d_up w_up and dw = d_upᵀ x.
    """
    from kernels.backend import prepare_triton

    prepare_triton(x, "x")
    m, d = math.prod(x.shape[:-1]), x.shape[-1]
    x2 = x.reshape(m, d)
    grad2 = grad.reshape(m, grad.shape[-1])
    if up is None:
        d_up = _gated().gated_product_bwd(grad2, torch.mm(x2, w_up.t()), act, order, inplace=True)
    else:
        d_up = _gated().gated_product_bwd(grad2, up, act, order)
    dx = torch.mm(d_up, w_up).view(x.shape) if need_dx else x.new_empty(0)
    dw = torch.mm(d_up.t(), x2) if need_dw else w_up.new_empty(0)
    return dx, dw


@fused_up_product_backward_op.register_fake
def _(
    grad: Tensor,
    x: Tensor,
    w_up: Tensor,
    up: Tensor | None,
    act: str,
    order: int,
    need_dx: bool,
    need_dw: bool,
) -> tuple[Tensor, Tensor]:
    dx = x.new_empty(x.shape) if need_dx else x.new_empty(0)
    dw = w_up.new_empty(w_up.shape) if need_dw else w_up.new_empty(0)
    return dx, dw


def _fused_setup(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    x, w_up, ctx.act, ctx.order, save_up = inputs
    up = output[1]
    ctx.mark_non_differentiable(up)
    ctx.set_materialize_grads(False)  # no zero-filled [M, k·h] gradient for the unused ``up`` output
    ctx.save_for_backward(x, w_up, up if save_up else None)


def _fused_backward(ctx, grad: Tensor, _grad_up: Tensor | None) -> tuple:
    x, w_up, up = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad is None:  # the output was not used in the loss
        return None, None, None, None, None
    dx, dw = fused_up_product_backward_op(grad, x, w_up, up, ctx.act, ctx.order, need_dx, need_dw)
    return (dx if need_dx else None), (dw if need_dw else None), None, None, None


fused_up_product_op.register_autograd(_fused_backward, setup_context=_fused_setup)
