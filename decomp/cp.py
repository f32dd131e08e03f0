"""CP tensors of bilinear / multilinear layers, and their algebra without the dense tensor.

Every CP tensor here is a `tensorly.cp_tensor.CPTensor` whose weights and factors are **torch tensors**
(always built with explicit weights, so no tensorly backend call is made and the global tensorly backend is
never touched). To run tensorly ops on them, wrap the call in ``tensorly.backend_context("pytorch")``.

Convention: a CP tensor T = [[w; A_0, A_1, ..., A_k]] has weights w [R] and factors A_n [I_n, R], and

    T[i_0, ..., i_k] = sum_h w_h * A_0[i_0, h] * ... * A_k[i_k, h].

For a layer, mode 0 is the output (A_0 = P) and modes 1..k are the inputs (A_j = W_jᵀ).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from tensorly.cp_tensor import CPTensor

from decomp.errors import DecompError

# Row-block size for the R×R Gram products: bounds memory to O(block · R).
DEFAULT_BLOCK = 512


def make_cp(weights: torch.Tensor | None, factors: Sequence[torch.Tensor]) -> CPTensor:
    """Build a validated `CPTensor` from torch tensors (weights default to ones of the factors' dtype)."""
    factors = list(factors)
    if not factors:
        raise DecompError("a CP tensor needs at least one factor")
    for n, f in enumerate(factors):
        if not isinstance(f, torch.Tensor) or f.ndim != 2:
            raise DecompError(f"CP factor {n} must be a 2-D torch tensor [size, rank], got {_describe(f)}")
    rank = factors[0].shape[1]
    for n, f in enumerate(factors):
        if f.shape[1] != rank:
            raise DecompError(f"CP factor {n} has {f.shape[1]} columns, factor 0 has {rank}")
        if f.dtype != factors[0].dtype or f.device != factors[0].device:
            raise DecompError(
                f"CP factor {n} has dtype/device {f.dtype}/{f.device}, "
                f"factor 0 has {factors[0].dtype}/{factors[0].device}"
            )
    if weights is None:
        weights = torch.ones(rank, dtype=factors[0].dtype, device=factors[0].device)
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (rank,):
        raise DecompError(f"CP weights must be a torch tensor of shape ({rank},), got {_describe(weights)}")
    return CPTensor((weights.to(factors[0]), factors))


def check_cp(cp: CPTensor | tuple) -> CPTensor:
    """Validate a CP tensor of torch tensors (a `CPTensor` or a (weights, factors) pair) and return it."""
    try:
        weights, factors = cp
    except (TypeError, ValueError) as exc:
        raise DecompError(f"expected a CPTensor or (weights, factors), got {type(cp).__name__}") from exc
    return make_cp(weights, factors)


def cp_to(
    cp: CPTensor, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> CPTensor:
    """The same CP tensor with weights and factors converted to `dtype` / moved to `device`."""
    cp = check_cp(cp)
    return make_cp(
        cp.weights.to(device=device, dtype=dtype), [f.to(device=device, dtype=dtype) for f in cp.factors]
    )


def bilinear_cp(
    w: torch.Tensor, v: torch.Tensor, p: torch.Tensor, gain: torch.Tensor | None = None
) -> CPTensor:
    """Exact CP form of x ↦ P((W'x)⊙(V'x)) with W' = W·diag(g), V' = V·diag(g).

    Args: w, v [h, d_in]; p [d_out, h]; gain g [d_in] (the RMSNorm gain folded in; None = no gain).
    Returns: rank-h CPTensor of shape (d_out, d_in, d_in), factors (P, W'ᵀ, V'ᵀ), weights ones, so that
    B[a, i, j] = Σ_h P[a, h] W'[h, i] V'[h, j].
    """
    return multilinear_cp([w, v], p, gain)


def multilinear_cp(
    w_in: Sequence[torch.Tensor], p: torch.Tensor, gain: torch.Tensor | None = None
) -> CPTensor:
    """Exact CP form of x ↦ P((W_1'x)⊙…⊙(W_k'x)) with W_j' = W_j·diag(g).

    Args: w_in, k tensors [h, d_in]; p [d_out, h]; gain [d_in] or None.
    Returns: rank-h CPTensor of order k+1, shape (d_out, d_in, ..., d_in), factors (P, W_1'ᵀ, ..., W_k'ᵀ).
    """
    if len(w_in) < 1:
        raise DecompError("a multilinear layer needs at least one input projection")
    if p.ndim != 2:
        raise DecompError(f"P must be 2-D [d_out, h], got shape {tuple(p.shape)}")
    h = p.shape[1]
    d_in = w_in[0].shape[-1]
    for j, w in enumerate(w_in):
        if w.ndim != 2 or w.shape != (h, d_in):
            raise DecompError(
                f"input projection {j} has shape {tuple(w.shape)}, "
                f"expected ({h}, {d_in}) to match P {tuple(p.shape)}"
            )
    if gain is not None:
        if gain.shape != (d_in,):
            raise DecompError(f"norm gain has shape {tuple(gain.shape)}, expected ({d_in},)")
        w_in = [w * gain.to(w)[None, :] for w in w_in]
    factors = [p.detach()] + [w.detach().T for w in w_in]
    dtype = torch.promote_types(p.dtype, w_in[0].dtype)
    return make_cp(None, [f.to(dtype) for f in factors])


def symmetric_cp(cp: CPTensor) -> CPTensor:
    """Symmetric part over the input modes 1..k, as an exact CP tensor.

    B^S = (1/k!) Σ_σ B with its input modes permuted by σ. Uses the polarisation identity
        sym(x_1⊗…⊗x_k) = 1/(k!·2^(k-1)) Σ_{ε∈{±1}^k, ε_1=+1} (Π ε) (Σ_j ε_j x_j)^{⊗k},
    so the rank grows from R to 2^(k-1)·R. For k = 2 this is
        B^S = Σ_h ¼ P_h ⊗ [(W_h+V_h)^{⊗2} − (W_h−V_h)^{⊗2}]   (rank 2R).
    Input modes must have equal sizes. Returns factors (A_0 repeated, (Σ ε_j A_j) for every mode).
    """
    cp = check_cp(cp)
    weights, factors = cp.weights, cp.factors
    k = len(factors) - 1
    if k < 1:
        raise DecompError("symmetrisation needs at least one input mode")
    sizes = {f.shape[0] for f in factors[1:]}
    if len(sizes) != 1:
        raise DecompError(f"input modes have different sizes {[f.shape[0] for f in factors[1:]]}")
    signs = [(1,) + rest for rest in itertools.product((1, -1), repeat=k - 1)]
    scale = 1.0 / (math.factorial(k) * 2 ** (k - 1))
    combos = [sum(e * f for e, f in zip(eps, factors[1:], strict=True)) for eps in signs]
    sym_weights = torch.cat([weights * (scale * math.prod(eps)) for eps in signs])
    out_factor = torch.cat([factors[0]] * len(signs), dim=1)
    sym_input = torch.cat(combos, dim=1)
    return make_cp(sym_weights, [out_factor] + [sym_input] * k)


def cp_difference(a: CPTensor, b: CPTensor) -> CPTensor:
    """Exact CP form of a − b: factors concatenated, mode 0 is [A_0, −B_0], weights [w_a, w_b].

    Raises DecompError when the two tensors' shapes differ.
    """
    a, b = check_cp(a), check_cp(b)
    if a.shape != b.shape:
        raise DecompError(f"cannot subtract CP tensors of different shapes {a.shape} and {b.shape}")
    b = cp_to(b, a.weights.dtype, a.weights.device)
    factors = [torch.cat([a.factors[0], -b.factors[0]], dim=1)]
    factors += [torch.cat([fa, fb], dim=1) for fa, fb in zip(a.factors[1:], b.factors[1:], strict=True)]
    return make_cp(torch.cat([a.weights, b.weights]), factors)


def cp_apply(cp: CPTensor, *inputs: torch.Tensor) -> torch.Tensor:
    """Evaluate the multilinear map: out[..., a] = Σ_h w_h A_0[a, h] Π_j (A_j[:, h] · x_j).

    Args: one input per input mode, each [..., I_j] (a single input is reused for every mode: B(x, x, ...)).
    Returns: [..., I_0]. For a bilinear layer, cp_apply(B, x) = P((Wx)⊙(Vx)).
    """
    cp = check_cp(cp)
    k = len(cp.factors) - 1
    if len(inputs) == 1:
        inputs = inputs * k
    if len(inputs) != k:
        raise DecompError(f"CP tensor of order {k + 1} takes {k} inputs, got {len(inputs)}")
    prod = None
    for j, (x, f) in enumerate(zip(inputs, cp.factors[1:], strict=True)):
        if x.shape[-1] != f.shape[0]:
            raise DecompError(f"input {j} has size {x.shape[-1]}, mode {j + 1} has size {f.shape[0]}")
        z = x.to(f) @ f
        prod = z if prod is None else prod * z
    return (prod * cp.weights) @ cp.factors[0].T


def cp_to_dense(cp: CPTensor, max_elements: int = 2**26) -> torch.Tensor:
    """Dense tensor of a small CP tensor (tests and small helpers only; refuses more than `max_elements`)."""
    cp = check_cp(cp)
    numel = math.prod(cp.shape)
    if numel > max_elements:
        raise DecompError(f"refusing to build a dense tensor of shape {cp.shape} ({numel} elements)")
    letters = "abcdefghijklmnopq"[: len(cp.factors)]
    spec = ",".join(f"{c}z" for c in letters) + ",z->" + letters
    return torch.einsum(spec, *cp.factors, cp.weights)


def cp_inner(a: CPTensor, b: CPTensor, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """⟨A, B⟩ = Σ_{h,h'} w_a[h] w_b[h'] Π_n (A_nᵀ B_n)[h, h'], in row blocks of A (memory O(block · R_b))."""
    a, b = check_cp(a), check_cp(b)
    if a.shape != b.shape:
        raise DecompError(f"inner product of CP tensors of different shapes {a.shape} and {b.shape}")
    b = cp_to(b, a.weights.dtype, a.weights.device)
    return blocked_gram_sum(a.weights, b.weights, list(zip(a.factors, b.factors, strict=True)), block)


def cp_norm(cp: CPTensor, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Frobenius norm ‖T‖ = sqrt(Σ_{h,h'} w_h w_h' Π_n (A_nᵀA_n)[h, h']), never dense."""
    return cp_inner(cp, cp, block).clamp_min(0).sqrt()


def cp_relative_error(target: CPTensor, approx: CPTensor, block: int = DEFAULT_BLOCK) -> float:
    """‖T − B‖ / ‖T‖ from ‖T‖², ‖B‖² and ⟨T, B⟩ (never dense)."""
    t2 = cp_inner(target, target, block)
    if t2 <= 0:
        raise DecompError("relative error is undefined: the target tensor is zero")
    return float(
        relative_error_from_inner(t2, cp_inner(approx, approx, block), cp_inner(target, approx, block))
    )


def relative_error_from_inner(t_sq: torch.Tensor, b_sq: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """‖T − B‖ / ‖T‖ = sqrt(|‖T‖² + ‖B‖² − 2⟨T, B⟩|) / ‖T‖, the error formula of tensorly's parafac.

    Cancellation limits it to ≈ 1e-8 in float64 (the square root of the machine epsilon).
    """
    return (t_sq + b_sq - 2 * inner).abs().sqrt() / t_sq.sqrt()


def cp_normalize(cp: CPTensor) -> CPTensor:
    """tensorly's ``cp_normalize`` on torch tensors: unit-norm factor columns, the scales in the weights.

    The weights are first folded into factor 0, then every column norm moves into the new weights (zero
    columns stay zero, with weight 0). The tensor is unchanged; readout scores of different terms become
    comparable.
    """
    cp = check_cp(cp)
    weights = torch.ones_like(cp.weights)
    factors = []
    for n, f in enumerate(cp.factors):
        if n == 0:
            f = f * cp.weights
        scales = f.norm(dim=0)
        weights = weights * scales
        factors.append(f / torch.where(scales == 0, torch.ones_like(scales), scales))
    return make_cp(weights, factors)


def blocked_gram_sum(
    left: torch.Tensor, right: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], block: int
) -> torch.Tensor:
    """Σ_{h,h'} left[h] right[h'] Π_j (X_jᵀ Y_j)[h, h'] for pairs (X_j [I_j, R], Y_j [I_j, R']).

    Computed over row blocks of the R×R' product, so memory is O(block · R') rather than O(R · R').
    """
    total = torch.zeros((), dtype=left.dtype, device=left.device)
    rows = pairs[0][0].shape[1]
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        prod = None
        for x, y in pairs:
            g = x[:, start:stop].T @ y
            prod = g if prod is None else prod * g
        total = total + left[start:stop] @ prod @ right
    return total


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    return type(x).__name__
