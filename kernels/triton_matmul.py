"""Triton GEMM with the gated product in its epilogue: the fused up-projection of an MLP.

x: [M, d], w_up: [k·h, d] (stacked [W₁; …; W_k], an nn.Linear weight) → out: [M, h],
out = act(x W₁ᵀ) ⊙ x W₂ᵀ ⊙ … ⊙ x W_kᵀ (k = 1: act(x Wᵀ), the relu2 / gelu MLP). Each program owns an output
tile and keeps the k factor tiles in fp32 accumulators. When ``save_up`` is set the epilogue also stores the
factors, up = x w_upᵀ [M, k·h], for backward (so backward needs no GEMM beyond dx and dw); otherwise the
[M, k·h] intermediate is never written. ``save_up`` is a runtime flag (a uniform branch in the epilogue), so
training and evaluation share one binary per config. For k = 2 the factors share one K loop (x is loaded
once per step); for k ≠ 2 each factor runs its own K loop.

Autotuning: ``configs_for(act, order)`` are pruned before launch for the device at hand
(``prune_configs``): shared memory within the device's per-block limit and fp32 accumulators within a
register budget, both computed from block sizes, dtype, order and stages. fp32 inputs use tf32 unless torch's matmul precision is
``highest``; then (on a GPU) cuBLAS computes the factors in exact fp32 and the elementwise kernel the
product: Triton's fp32 FMA GEMM spilled ~3 KB per thread and compiled 10× slower, for no use in training.
"""

import functools
import math

import torch
import triton
import triton.language as tl

from kernels.backend import interpreting
from kernels.triton_common import ACT_CODES, act_fwd
from kernels.triton_gated import gated_product_fwd


@triton.jit
def _load_x(x_ptrs, k_mask, UPCAST: tl.constexpr):
    x = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
    if UPCAST:  # the interpreter's tl.dot is wrong on bf16
        x = x.to(tl.float32)
    return x


@triton.jit
def _load_w(w_ptrs, k_mask, UPCAST: tl.constexpr):
    w = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
    if UPCAST:
        w = w.to(tl.float32)
    return w


@triton.jit
def _factor_dot(
    x_ptrs, w_ptrs, K, stride_xk, stride_wk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One factor tile x[rows, :] @ W_j[cols, :]ᵀ in fp32."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        k_mask = rk < K - k0
        x = _load_x(x_ptrs, k_mask, UPCAST)
        acc = tl.dot(x, _load_w(w_ptrs, k_mask, UPCAST), acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    return acc


@triton.jit
def _store_factor(up_ptrs, acc, mask, save_up):
    if save_up != 0:
        tl.store(up_ptrs, acc.to(up_ptrs.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["save_up"])
def _fused_up_kernel(
    x_ptr, w_ptr, out_ptr, up_ptr, M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_um, factor_step, save_up,
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
    # Loads wrap rows and columns past the edge (their results are never stored): only K needs a mask.
    x_ptrs = x_ptr + (rm % M).to(tl.int64)[:, None] * stride_xm + rk[None, :] * stride_xk
    w_ptrs = (
        w_ptr + (rn % N).to(tl.int64)[None, :] * stride_wn + rk[:, None] * stride_wk
    )  # [BLOCK_K, BLOCK_N]
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    up_ptrs = up_ptr + rm.to(tl.int64)[:, None] * stride_um + rn[None, :]

    if ORDER == 2:
        acc_a = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_mask = rk < K - k0
            x = _load_x(x_ptrs, k_mask, UPCAST)
            acc_a = tl.dot(x, _load_w(w_ptrs, k_mask, UPCAST), acc_a, input_precision=PRECISION)
            acc_b = tl.dot(x, _load_w(w_ptrs + factor_step, k_mask, UPCAST), acc_b, input_precision=PRECISION)
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        _store_factor(up_ptrs, acc_a, mask, save_up)
        _store_factor(up_ptrs + N, acc_b, mask, save_up)
        out = act_fwd(acc_a, ACT) * acc_b
    else:
        acc = _factor_dot(
            x_ptrs, w_ptrs, K, stride_xk, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION
        )
        _store_factor(up_ptrs, acc, mask, save_up)
        out = act_fwd(acc, ACT)
        for j in tl.static_range(1, ORDER):
            acc = _factor_dot(
                x_ptrs, w_ptrs + j * factor_step, K, stride_xk, stride_wk,
                BLOCK_M, BLOCK_N, BLOCK_K, UPCAST, PRECISION,
            )  # fmt: skip
            _store_factor(up_ptrs + j * N, acc, mask, save_up)
            out = out * acc

    out_ptrs = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _config(bm: int, bn: int, bk: int, stages: int, warps: int) -> triton.Config:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=stages, num_warps=warps
    )


# BLOCK_N is per factor: 128×128 with two factors holds 128 fp32 accumulators per thread at 8 warps.
# modded-nanoGPT's ReLU² kernel uses 128×256×64 (4 stages, 8 warps); that tile only suits ReLU²'s cheap
# epilogue (with gelu's it spilled on sm_90), so only relu2 autotunes over it. Few configs keep the
# autotuning time (and the ahead-of-time checks) short; pruning removes what a device or dtype cannot hold.
GPU_CONFIGS: tuple[triton.Config, ...] = (
    _config(128, 128, 64, 4, 8),
    _config(128, 64, 64, 4, 4),
    _config(64, 64, 64, 3, 4),
)
RELU2_CONFIGS: tuple[triton.Config, ...] = (_config(128, 256, 64, 4, 8), *GPU_CONFIGS)
# fp32 accumulator values per thread above which ptxas spills on sm_90 (measured with kernels.aot).
ACC_REGISTER_BUDGET = 128


def configs_for(act: str, order: int) -> tuple[triton.Config, ...]:
    """The autotune configs of one product (before pruning)."""
    return RELU2_CONFIGS if (act, order) == ("relu2", 1) else GPU_CONFIGS


def config_name(c: triton.Config) -> str:
    """'128x128x64 s4 w8': BLOCK_M x BLOCK_N x BLOCK_K, pipeline stages, warps."""
    k = c.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} s{c.num_stages} w{c.num_warps}"


def _uses_mma(elem_bytes: int, precision: str) -> bool:
    return elem_bytes == 2 or precision == "tf32"


def shared_memory_bytes(
    c: triton.Config, elem_bytes: int, order: int, capability: int, precision: str
) -> int:
    """Shared memory of one program: the software pipeline's operand buffers.

    Per stage one x tile [BLOCK_M, BLOCK_K] and the weight tiles [BLOCK_K, BLOCK_N] of one K loop (two for
    k = 2, one otherwise). Hopper's wgmma pipeline keeps ``num_stages`` buffers; mma (sm_80) and the fp32
    "ieee" FMA path keep ``num_stages - 1``.
    """
    k = c.kwargs
    buffers = c.num_stages if capability >= 90 and _uses_mma(elem_bytes, precision) else c.num_stages - 1
    w_tiles = 2 if order == 2 else 1
    return buffers * (k["BLOCK_M"] * k["BLOCK_K"] + w_tiles * k["BLOCK_K"] * k["BLOCK_N"]) * elem_bytes


def accumulator_registers(c: triton.Config, order: int) -> int:
    """fp32 accumulator values per thread: k live [BLOCK_M, BLOCK_N] tiles.

    k = 1, 2: the accumulators of the one K loop. k ≥ 3 runs one K loop per factor, but ptxas still kept
    about k tiles live (measured: at k = 4, 128×128 tiles spilled 1.8 KB, 64×64 tiles nothing).
    """
    k = c.kwargs
    return order * k["BLOCK_M"] * k["BLOCK_N"] // (32 * c.num_warps)


def config_fits(
    c: triton.Config, *, elem_bytes: int, order: int, precision: str, capability: int, smem_limit: int
) -> bool:
    """Whether config ``c`` fits the device: shared memory ≤ ``smem_limit``, accumulators within budget."""
    return (
        shared_memory_bytes(c, elem_bytes, order, capability, precision) <= smem_limit
        and accumulator_registers(c, order) <= ACC_REGISTER_BUDGET
    )


def prune_configs(
    configs, *, elem_bytes: int, order: int, precision: str, capability: int, smem_limit: int
) -> list[triton.Config]:
    """The configs that fit the device (``config_fits``), in their order.

    Never empty: when nothing fits, the config with the smallest shared memory is kept (and will fail at
    launch with Triton's own out-of-resources error, rather than an empty autotuner).
    """
    device = {"elem_bytes": elem_bytes, "order": order, "precision": precision, "capability": capability}
    kept = [c for c in configs if config_fits(c, **device, smem_limit=smem_limit)]
    if kept:
        return kept
    return [min(configs, key=lambda c: shared_memory_bytes(c, elem_bytes, order, capability, precision))]


@functools.cache
def _device_limits(index: int) -> tuple[int, int]:
    """(compute capability as 10·major + minor, shared memory per block in bytes) of a CUDA device.

    The limit is the one Triton's launcher checks a kernel against (out of resources above it).
    """
    major, minor = torch.cuda.get_device_capability(index)
    smem = triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]
    return 10 * major + minor, smem


def _early_config_prune(configs, named_args: dict, **kwargs) -> list[triton.Config]:
    x = named_args["x_ptr"]
    capability, smem_limit = _device_limits(x.device.index if x.device.index is not None else 0)
    return prune_configs(
        configs,
        elem_bytes=x.element_size(),
        order=kwargs["ORDER"],
        precision=kwargs["PRECISION"],
        capability=capability,
        smem_limit=smem_limit,
    )


@functools.cache
def _autotuned_kernel(configs: tuple[triton.Config, ...]) -> triton.runtime.Autotuner:
    return triton.autotune(
        configs=list(configs),
        key=["M", "N", "K", "ORDER", "ACT", "PRECISION"],
        prune_configs_by={"early_config_prune": _early_config_prune},
    )(_fused_up_kernel)


def _interpreter_block(n: int) -> int:
    # One tile covers a small test problem: the interpreter costs milliseconds per program.
    return min(max(triton.next_power_of_2(n), 16), 128)


def matmul_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: tf32 for fp32 unless torch's matmul precision is 'highest'."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def fused_launch(
    x2: torch.Tensor, w_up: torch.Tensor, out2: torch.Tensor, up2: torch.Tensor | None, act: str, order: int
) -> tuple[tuple, dict]:
    """(args, meta) of the fused kernel: x2 [M, d], w_up [k·h, d] → out2 [M, h] (+ up2 [M, k·h] if given).

    ``meta`` holds the constexprs that do not depend on the autotune config.
    """
    m, h, d = x2.shape[0], out2.shape[1], x2.shape[1]
    save = up2 is not None
    up_arg = up2 if save else out2  # never written when save_up = 0
    # factor step: W_j starts j·h rows further down w_up.
    strides = (x2.stride(0), x2.stride(1), w_up.stride(0), w_up.stride(1), out2.stride(0))
    strides += (up2.stride(0) if save else 0, h * w_up.stride(0))
    args = (x2, w_up, out2, up_arg, m, h, d, *strides, int(save))
    meta = {"ACT": ACT_CODES[act], "ORDER": order, "PRECISION": matmul_precision(x2.dtype), "UPCAST": False}
    return args, meta


def fused_up_product_fwd(
    x: torch.Tensor, w_up: torch.Tensor, act: str, order: int, save_up: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [..., d], w_up: [k·h, d] (same dtype) → (out [..., h], up [M, k·h] or an empty tensor).

    ``up`` = x w_upᵀ flattened to M = prod(x.shape[:-1]) rows, written only when ``save_up``.
    """
    kh, d = w_up.shape
    h = kh // order
    m = math.prod(x.shape[:-1])
    out = torch.empty((*x.shape[:-1], h), dtype=x.dtype, device=x.device)
    up = x.new_empty((m, kh)) if save_up else x.new_empty(0)
    if out.numel() == 0:
        return out, up
    if d == 0:
        up.zero_()
        return out.zero_(), up
    x2 = x.reshape(m, d)
    if matmul_precision(x.dtype) == "ieee" and not interpreting():
        factors = torch.mm(x2, w_up.t(), out=up if save_up else None)
        gated_product_fwd(factors, act, order, out=out.view(m, h))
        return out, up
    args, meta = fused_launch(x2, w_up, out.view(m, h), up if save_up else None, act, order)
    if interpreting():
        bm, bn, bk = _interpreter_block(m), _interpreter_block(h), _interpreter_block(d)
        grid = (triton.cdiv(m, bm) * triton.cdiv(h, bn),)
        meta["UPCAST"] = x.dtype == torch.bfloat16
        _fused_up_kernel[grid](*args, **meta, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8)
    else:

        def grid(c: dict) -> tuple[int]:
            return (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(h, c["BLOCK_N"]),)

        _autotuned_kernel(configs_for(act, order))[grid](*args, **meta)
    return out, up
