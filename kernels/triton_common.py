"""Triton building blocks shared by the kernels: activations (value and gradient) and launch helpers.

Activations are selected by a compile-time code (``ACT_CODES``); all maths is done in fp32.
tanh is computed as 2·sigmoid(2u) − 1, which Triton's interpreter supports (``libdevice.tanh`` does not).
NaN follows torch: relu and relu² use ``where(a <= 0, 0, …)``, not ``max(a, 0)`` (PTX ``max.f32`` returns
the non-NaN operand), and their gradients mask the incoming gradient as torch's ``threshold_backward`` does
(``where(a <= 0, 0, g)``), so a NaN in the other factors does not leak through a closed relu.
"""

import math

import torch
import triton
import triton.language as tl

from kernels.backend import interpreting

ACT_CODES: dict[str, int] = {"identity": 0, "relu": 1, "gelu": 2, "silu": 3, "relu2": 4}


@triton.jit
def _tanh(u):
    return 2.0 * tl.sigmoid(2.0 * u) - 1.0


# The gelu constants are literals: the compiler rejects plain globals, and the interpreter mishandles
# tl.constexpr globals in arithmetic. √(2/π) = 0.7978845608028654, c = 0.044715.
@triton.jit
def _gelu_u(a):
    return 0.7978845608028654 * (a + 0.044715 * a * a * a)


@triton.jit
def act_fwd(a, ACT: tl.constexpr):
    """act(a) for an fp32 block."""
    out = a
    if ACT == 1:
        out = tl.where(a <= 0.0, 0.0, a)
    elif ACT == 2:
        t = _tanh(_gelu_u(a))
        out = 0.5 * a * (1.0 + t)
    elif ACT == 3:
        out = a * tl.sigmoid(a)
    elif ACT == 4:
        r = tl.where(a <= 0.0, 0.0, a)
        out = r * r
    return out


@triton.jit
def act_grad(a, g, ACT: tl.constexpr):
    """g · act'(a) for fp32 blocks, with torch's semantics (relu'(0) = 0; relu kinds mask g)."""
    out = g
    if ACT == 1:
        out = tl.where(a <= 0.0, 0.0, g)
    elif ACT == 2:
        t = _tanh(_gelu_u(a))
        du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * a * a)
        out = g * (0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * du)
    elif ACT == 3:
        s = tl.sigmoid(a)
        out = g * (s * (1.0 + a * (1.0 - s)))
    elif ACT == 4:
        out = tl.where(a <= 0.0, 0.0, 2.0 * g * a)
    return out


def rows_2d(t: torch.Tensor) -> torch.Tensor:
    """[..., n] → [M, n] with last-dim stride 1, as a view when the leading dims allow (else one copy).

    M is the product of the leading dims, given explicitly: ``reshape(-1, 0)`` is ambiguous for n = 0.
    """
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(math.prod(t.shape[:-1]), t.shape[-1])


def elementwise_blocks(m: int, n: int, interpreter: bool | None = None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for a row-tiled elementwise kernel over an [m, n] grid of outputs.

    The interpreter (default: whether it is on) costs milliseconds of Python per program, so it gets the
    largest tiles Triton allows (2²⁰ elements).
    """
    block_n = min(triton.next_power_of_2(max(n, 1)), 1024)
    budget = 1 << 20 if (interpreting() if interpreter is None else interpreter) else 2048
    block_m = min(triton.next_power_of_2(max(m, 1)), max(1, budget // block_n))
    num_warps = 8 if block_m * block_n >= 4096 else 4
    return block_m, block_n, num_warps
