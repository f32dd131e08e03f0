"""The FP8 head of record #21: logits = x Wᵀ with x and W in float8_e4m3fn and the gradient in float8_e5m2.

Forward, with scales s_x, s_w, s_g (the record's: 2, 2⁹, 2¹⁹):

    x8 = e4m3(s_x·x),  w8 = e4m3(s_w·W),  out = bf16((x8 · w8ᵀ) / (s_x·s_w))          [M, N]

Backward, from the saved x8, w8 and the incoming gradient g [M, N]:

    g8 = e5m2(s_g·g),  ∂x = bf16((g8 · w8) / (s_g·s_w)),  ∂W = fp32((g8ᵀ · x8) / (s_g·s_x))

On a CUDA GPU with FP8 tensor cores (compute capability ≥ 8.9) and dimensions divisible by 16 the products run
in ``torch._scaled_mm`` (fast accumulation in the forward, as the record); elsewhere the same quantised values
are multiplied in float32 (``scaled_matmul(..., use_scaled_mm=False)``): the same function up to summation
order. Registered as ``torch.library`` custom ops (``tnt::fp8_mm``, ``tnt::fp8_mm_backward``) so that
``torch.compile`` treats them as single nodes.
"""

from __future__ import annotations

import torch
from torch import Tensor

X_SCALE, W_SCALE, GRAD_SCALE = 2.0, 2.0**9, 2.0**19  # record #21's lm_head scales


def quantize(t: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """dtype(scale · t): round to the nearest FP8 value (values beyond the format's range become NaN)."""
    return t.mul(scale).to(dtype)


def _use_scaled_mm(a: Tensor, b_t: Tensor) -> bool:
    return (
        a.is_cuda
        and torch.cuda.get_device_capability(a.device) >= (8, 9)
        and all(size % 16 == 0 for size in (*a.shape, b_t.shape[0]))
    )


def scaled_matmul(
    a: Tensor,
    b_t: Tensor,
    scale_a: float,
    scale_b: float,
    out_dtype: torch.dtype,
    fast_accum: bool = False,
    use_scaled_mm: bool | None = None,
) -> Tensor:
    """out_dtype((a · b_tᵀ) · scale_a · scale_b) for FP8 ``a`` [M, K] and ``b_t`` [N, K], both row-major.

    ``use_scaled_mm`` None picks ``torch._scaled_mm`` where it runs fast (see module docstring); False
    multiplies the FP8 values in float32; True forces ``torch._scaled_mm`` (which torch also has on CPU).
    """
    if use_scaled_mm is None:
        use_scaled_mm = _use_scaled_mm(a, b_t)
    if not use_scaled_mm:
        return (a.float() @ b_t.float().t()).mul_(scale_a * scale_b).to(out_dtype)
    return torch._scaled_mm(
        a,
        b_t.t(),  # column-major, as _scaled_mm wants its second operand
        scale_a=torch.tensor(scale_a, dtype=torch.float32, device=a.device),
        scale_b=torch.tensor(scale_b, dtype=torch.float32, device=a.device),
        out_dtype=out_dtype,
        use_fast_accum=fast_accum,
    )


@torch.library.custom_op("tnt::fp8_mm", mutates_args=())
def fp8_mm(x: Tensor, w: Tensor, x_s: float, w_s: float, grad_s: float) -> tuple[Tensor, Tensor, Tensor]:
    """x [M, K], w [N, K] -> (bf16 logits [M, N], x8, w8); see the module docstring."""
    x8 = quantize(x, x_s, torch.float8_e4m3fn)
    w8 = quantize(w, w_s, torch.float8_e4m3fn)
    return scaled_matmul(x8, w8, 1 / x_s, 1 / w_s, torch.bfloat16, fast_accum=True), x8, w8


@fp8_mm.register_fake
def _(x: Tensor, w: Tensor, x_s: float, w_s: float, grad_s: float) -> tuple[Tensor, Tensor, Tensor]:
    out = x.new_empty((x.shape[0], w.shape[0]), dtype=torch.bfloat16)
    return out, torch.empty_like(x, dtype=torch.float8_e4m3fn), torch.empty_like(w, dtype=torch.float8_e4m3fn)


@torch.library.custom_op("tnt::fp8_mm_backward", mutates_args=())
def fp8_mm_backward(
    g: Tensor, x8: Tensor, w8: Tensor, x_s: float, w_s: float, grad_s: float
) -> tuple[Tensor, Tensor]:
    """(∂x bf16 [M, K], ∂W fp32 [N, K]) from g [M, N] and the forward's FP8 operands."""
    g8 = quantize(g.contiguous(), grad_s, torch.float8_e5m2)
    grad_x = scaled_matmul(g8, w8.t().contiguous(), 1 / grad_s, 1 / w_s, torch.bfloat16)
    # ∂Wᵀ = x8ᵀ g8 as [K, N], transposed back: the faster orientation for the record's (50304, 768) head
    grad_w = scaled_matmul(x8.t().contiguous(), g8.t().contiguous(), 1 / x_s, 1 / grad_s, torch.float32).t()
    return grad_x, grad_w


@fp8_mm_backward.register_fake
def _(g: Tensor, x8: Tensor, w8: Tensor, x_s: float, w_s: float, grad_s: float) -> tuple[Tensor, Tensor]:
    grad_w = w8.new_empty((w8.shape[1], w8.shape[0]), dtype=torch.float32).t()
    return x8.new_empty(x8.shape, dtype=torch.bfloat16), grad_w


def _setup_context(ctx, inputs, output) -> None:
    x, w, x_s, w_s, grad_s = inputs
    _, x8, w8 = output
    ctx.save_for_backward(x8, w8)
    ctx.scales = (x_s, w_s, grad_s)
    ctx.dtypes = (x.dtype, w.dtype)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out: Tensor, *_):
    x8, w8 = ctx.saved_tensors
    grad_x, grad_w = torch.ops.tnt.fp8_mm_backward(grad_out, x8, w8, *ctx.scales)
    return grad_x.to(ctx.dtypes[0]), grad_w.to(ctx.dtypes[1]), None, None, None


fp8_mm.register_autograd(_backward, setup_context=_setup_context)


def fp8_linear(
    x: Tensor, w: Tensor, x_s: float = X_SCALE, w_s: float = W_SCALE, grad_s: float = GRAD_SCALE
) -> Tensor:
    """x [..., K], w [N, K] -> bf16 [..., N] ≈ x wᵀ through the FP8 products of the module docstring."""
    out = torch.ops.tnt.fp8_mm(x.flatten(0, -2).contiguous(), w.contiguous(), x_s, w_s, grad_s)[0]
    return out.view(*x.shape[:-1], w.shape[0])
