"""Triton kernels for the gated product of factors stored side by side in one buffer, and its backward.

Forward  up: [M, k·h] → out: [M, h],   out = act(f₀) ⊙ f₁ ⊙ … ⊙ f_{k-1},   f_j = up[:, j·h:(j+1)·h].
Backward grad: [M, h] → d_up: [M, k·h], d f₀ = act'(f₀)·(grad ⊙ Π_{j≥1} f_j),  d f_j = grad ⊙ Π_{i≠j} f̃_i
(f̃₀ = act(f₀)). k = 1 is the plain activation. The factors are read through a row stride, so they can be
halves of a wider buffer. The activation is recomputed in backward; nothing but ``up`` is needed.
``gated_fwd_launch`` / ``gated_bwd_launch`` describe a launch (kernel, grid, arguments) without running it:
the launchers here run them, ``kernels.aot`` compiles them for a GPU target.
"""

import torch
import triton
import triton.language as tl

from kernels.triton_common import ACT_CODES, act_fwd, act_grad, elementwise_blocks, rows_2d


@triton.jit
def _gated_fwd_kernel(
    up_ptr,
    out_ptr,
    M,
    N,
    stride_up,
    stride_out,
    ACT: tl.constexpr,
    ORDER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    ptrs = up_ptr + rows.to(tl.int64)[:, None] * stride_up + cols[None, :]
    out = act_fwd(tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), ACT)
    for j in tl.static_range(1, ORDER):
        out = out * tl.load(ptrs + j * N, mask=mask, other=0.0).to(tl.float32)
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_out + cols[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_bwd_kernel(
    grad_ptr,
    up_ptr,
    dup_ptr,
    M,
    N,
    stride_grad,
    stride_up,
    stride_dup,
    ACT: tl.constexpr,
    ORDER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    g = tl.load(grad_ptr + rows64 * stride_grad + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    up_ptrs = up_ptr + rows64 * stride_up + cols[None, :]
    dup_ptrs = dup_ptr + rows64 * stride_dup + cols[None, :]
    out_ty = dup_ptr.dtype.element_ty
    if ORDER == 1:
        a = tl.load(up_ptrs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dup_ptrs, act_grad(a, g, ACT).to(out_ty), mask=mask)
    elif ORDER == 2:
        # Both loads precede both stores, so d_up may alias up (in-place backward).
        a = tl.load(up_ptrs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(up_ptrs + N, mask=mask, other=0.0).to(tl.float32)
        tl.store(dup_ptrs, act_grad(a, g * b, ACT).to(out_ty), mask=mask)
        tl.store(dup_ptrs + N, (g * act_fwd(a, ACT)).to(out_ty), mask=mask)
    else:
        # k > 2: product of the other k-1 factors, reloaded per output (k is small; loads hit cache).
        for j in tl.static_range(ORDER):
            d = g
            for i in tl.static_range(ORDER):
                if i != j:
                    f = tl.load(up_ptrs + i * N, mask=mask, other=0.0).to(tl.float32)
                    if i == 0:
                        f = act_fwd(f, ACT)
                    d = d * f
            if j == 0:
                d = act_grad(tl.load(up_ptrs, mask=mask, other=0.0).to(tl.float32), d, ACT)
            tl.store(dup_ptrs + j * N, d.to(out_ty), mask=mask)


def _grid_and_blocks(m: int, h: int) -> tuple[tuple[int, int], dict]:
    block_m, block_n, num_warps = elementwise_blocks(m, h)
    grid = (triton.cdiv(m, block_m), triton.cdiv(h, block_n))
    return grid, {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps}


def gated_fwd_launch(up2: torch.Tensor, out2: torch.Tensor, act: str, order: int) -> tuple:
    """(kernel, grid, args, meta) of the forward on 2-D up2 [M, k·h] (unit column stride) → out2 [M, h]."""
    m, h = out2.shape
    grid, blocks = _grid_and_blocks(m, h)
    args = (up2, out2, m, h, up2.stride(0), out2.stride(0))
    return _gated_fwd_kernel, grid, args, {"ACT": ACT_CODES[act], "ORDER": order, **blocks}


def gated_bwd_launch(
    grad2: torch.Tensor, up2: torch.Tensor, dup2: torch.Tensor, act: str, order: int
) -> tuple:
    """(kernel, grid, args, meta) of the backward: grad2 [M, h], up2 [M, k·h] → dup2 [M, k·h]."""
    m, h = grad2.shape
    grid, blocks = _grid_and_blocks(m, h)
    args = (grad2, up2, dup2, m, h, grad2.stride(0), up2.stride(0), dup2.stride(0))
    return _gated_bwd_kernel, grid, args, {"ACT": ACT_CODES[act], "ORDER": order, **blocks}


def gated_product_fwd(
    up: torch.Tensor, act: str, order: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """up: [..., k·h] (any leading strides) → [..., h], contiguous, dtype of ``up`` (or written to ``out``)."""
    h = up.shape[-1] // order
    if out is None:
        out = torch.empty((*up.shape[:-1], h), dtype=up.dtype, device=up.device)
    if out.numel() == 0:
        return out
    kernel, grid, args, meta = gated_fwd_launch(rows_2d(up), rows_2d(out), act, order)
    kernel[grid](*args, **meta)
    return out


def gated_product_bwd(
    grad: torch.Tensor, up: torch.Tensor, act: str, order: int, inplace: bool = False
) -> torch.Tensor:
    """grad: [..., h], up: [..., k·h] → d_up: [..., k·h].

    With ``inplace`` (order ≤ 2, ``up`` a contiguous buffer the caller owns) d_up overwrites ``up``.
    """
    up2 = rows_2d(up)
    if inplace and order <= 2 and up2.is_contiguous():
        dup2 = up2
    else:
        dup2 = torch.empty(up2.shape, dtype=up.dtype, device=up.device)
    if dup2.numel() > 0:
        kernel, grid, args, meta = gated_bwd_launch(rows_2d(grad), up2, dup2, act, order)
        kernel[grid](*args, **meta)
    return dup2.view(up.shape)
