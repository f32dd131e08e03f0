"""Triton GEMM with the gated product in its epilogue: the fused up-projection of a gated MLP.

x: [M, d], w_up: [k·h, d] (stacked [W₁; …; W_k], an nn.Linear weight) → out: [M, h],
out = act(x W₁ᵀ) ⊙ x W₂ᵀ ⊙ … ⊙ x W_kᵀ. Each program owns an output tile and keeps the k factor tiles in fp32
accumulators, so the [M, k·h] intermediate is never written. For k = 2 the factors share one K loop (x is
loaded once per step); for k > 2 each factor runs its own K loop.
"""

import functools

import torch
import triton
import triton.language as tl

from kernels.backend import interpreting
from kernels.triton_common import ACT_CODES, act_fwd


@triton.jit
def _load_x(x_ptrs, row_mask, k_mask, UPCAST: tl.constexpr):
    x = tl.load(x_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
    if UPCAST:  # the interpreter's tl.dot is wrong on bf16
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_w(w_ptrs, col_mask, k_mask, UPCAST: tl.constexpr):
    w = tl.load(w_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
    if UPCAST:
        w = w.to(tl.float32)
    return w


@triton.jit
def _factor_dot(
    x_ptrs, w_ptrs, row_mask, col_mask, K, stride_xk, stride_wk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One factor tile x[rows, :] @ W_j[cols, :]ᵀ in fp32."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        k_mask = rk < K - k0
        x = _load_x(x_ptrs, row_mask, k_mask, UPCAST)
        acc = tl.dot(x, _load_w(w_ptrs, col_mask, k_mask, UPCAST), acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    return acc


@triton.jit
def _fused_up_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, factor_step,
    ACT: tl.constexpr, ORDER: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # Grouped tile order: GROUP_M row-tiles sweep the columns together, so their weight tiles stay in L2.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row_mask = rm < M
    col_mask = rn < N
    x_ptrs = x_ptr + rm.to(tl.int64)[:, None] * stride_xm + rk[None, :] * stride_xk
    w_ptrs = w_ptr + rn.to(tl.int64)[None, :] * stride_wn + rk[:, None] * stride_wk  # [BLOCK_K, BLOCK_N]

    if ORDER == 2:
        acc_a = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_mask = rk < K - k0
            x = _load_x(x_ptrs, row_mask, k_mask, UPCAST)
            wa = _load_w(w_ptrs, col_mask, k_mask, UPCAST)
            wb = _load_w(w_ptrs + factor_step, col_mask, k_mask, UPCAST)
            acc_a = tl.dot(x, wa, acc_a, input_precision=PRECISION)
            acc_b = tl.dot(x, wb, acc_b, input_precision=PRECISION)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        out = act_fwd(acc_a, ACT) * acc_b
    else:
        out = act_fwd(
            _factor_dot(x_ptrs, w_ptrs, row_mask, col_mask, K, stride_xk, stride_wk,
                        BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION),
            ACT,
        )  # fmt: skip
        for j in tl.static_range(1, ORDER):
            out = out * _factor_dot(
                x_ptrs, w_ptrs + j * factor_step, row_mask, col_mask, K, stride_xk, stride_wk,
                BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION,
            )  # fmt: skip

    out_ptrs = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def _gpu_configs() -> list[triton.Config]:
    def cfg(bm: int, bn: int, bk: int, stages: int, warps: int) -> triton.Config:
        return triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=stages, num_warps=warps
        )

    return [
        cfg(128, 128, 64, 3, 8),
        cfg(128, 64, 64, 4, 4),
        cfg(64, 128, 64, 4, 4),
        cfg(128, 64, 32, 4, 4),
        cfg(64, 64, 64, 3, 4),
    ]


@functools.cache
def _autotuned_kernel() -> triton.runtime.Autotuner:
    return triton.autotune(configs=_gpu_configs(), key=["M", "N", "K", "ORDER", "ACT", "PRECISION"])(
        _fused_up_kernel
    )


def _interpreter_block(n: int) -> int:
    # One tile covers a small test problem: the interpreter costs milliseconds per program.
    return min(max(triton.next_power_of_2(n), 16), 128)


def fused_up_product_fwd(x: torch.Tensor, w_up: torch.Tensor, act: str, order: int) -> torch.Tensor:
    """x: [..., d], w_up: [k·h, d] (same dtype) → [..., h], contiguous; fp32 accumulation."""
    h, d = w_up.shape[0] // order, w_up.shape[1]
    out = torch.empty((*x.shape[:-1], h), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if d == 0:
        return out.zero_()
    x2 = x.reshape(-1, d)
    m = x2.shape[0]
    out2 = out.view(m, h)
    fp32_precise = x.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    # factor step: W_j starts j·h rows further down w_up.
    strides = (x2.stride(0), x2.stride(1), w_up.stride(0), w_up.stride(1), out2.stride(0), h * w_up.stride(0))
    args = (x2, w_up, out2, m, h, d, *strides)
    meta = {"ACT": ACT_CODES[act], "ORDER": order, "PRECISION": "ieee" if fp32_precise else "tf32"}
    if interpreting():
        bm, bn, bk = _interpreter_block(m), _interpreter_block(h), _interpreter_block(d)
        grid = (triton.cdiv(m, bm) * triton.cdiv(h, bn),)
        _fused_up_kernel[grid](
            *args, **meta, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, UPCAST=x.dtype == torch.bfloat16
        )
    else:

        def grid(c: dict) -> tuple[int]:
            return (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(h, c["BLOCK_N"]),)

        _autotuned_kernel()[grid](*args, **meta, UPCAST=False)
    return out
