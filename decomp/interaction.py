"""Interaction matrices Q(u) of an order-3 CP tensor (a bilinear layer) for output directions u.

For B = [[w; A_0, A_1, A_2]] (a layer: A_0 = P [d_out, h], A_1 = Wᵀ, A_2 = Vᵀ [d_in, h], w = 1):

    Q(u) = Σ_a u_a B^S[a] = ½(A_1 diag(c) A_2ᵀ + A_2 diag(c) A_1ᵀ),   c = w ⊙ (A_0ᵀ u),

i.e. ½(Wᵀ diag(Pᵀu) V + Vᵀ diag(Pᵀu) W), so that u · B(x, x) = xᵀ Q(u) x. Cost O(h·d²), never d³.
The matvec Q(u)y = ½(A_1 (c ⊙ (A_2ᵀy)) + A_2 (c ⊙ (A_1ᵀy))) costs O(h·d) (for Lanczos).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from tensorly.cp_tensor import CPTensor

from decomp.cp import DEFAULT_BLOCK, blocked_gram_sum, check_cp, make_cp
from decomp.errors import DecompError


def bilinear_factors(cp: CPTensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w [R], A_0 [d_out, R], A_1 [d_in, R], A_2 [d_in, R]) of an order-3 CP tensor, equal input modes."""
    cp = check_cp(cp)
    if len(cp.factors) != 3:
        raise DecompError(
            f"interaction matrices need an order-3 (bilinear) CP tensor, got order {len(cp.factors)}"
        )
    a0, a1, a2 = cp.factors
    if a1.shape[0] != a2.shape[0]:
        raise DecompError(f"the two input modes have different sizes {a1.shape[0]} and {a2.shape[0]}")
    return cp.weights, a0, a1, a2


def direction_coefficients(cp: CPTensor, u: torch.Tensor) -> torch.Tensor:
    """c = w ⊙ (A_0ᵀ u) for u [d_out] or [n, d_out]; returns [R] or [n, R]."""
    w, a0, _, _ = bilinear_factors(cp)
    if not isinstance(u, torch.Tensor) or u.ndim not in (1, 2) or u.shape[-1] != a0.shape[0]:
        shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise DecompError(
            f"output direction must have shape [{a0.shape[0]}] or [n, {a0.shape[0]}] (d_out), got {shape}"
        )
    return (u.to(a0) @ a0) * w


def interaction_matrix(cp: CPTensor, u: torch.Tensor) -> torch.Tensor:
    """Q(u) = ½(A_1 diag(c) A_2ᵀ + A_2 diag(c) A_1ᵀ) with c = w ⊙ (A_0ᵀu).

    Args: cp, order 3, shape (d_out, d_in, d_in); u [d_out] or a batch [n, d_out].
    Returns: [d_in, d_in] or [n, d_in, d_in], symmetric, with u·B(x, x) = xᵀQx.
    """
    _, _, a1, a2 = bilinear_factors(cp)
    c = direction_coefficients(cp, u)
    m = (a1 * c[..., None, :]) @ a2.T
    return 0.5 * (m + m.transpose(-1, -2))


def interaction_matvec(cp: CPTensor, u: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """y ↦ Q(u)y = ½(A_1 (c ⊙ (A_2ᵀy)) + A_2 (c ⊙ (A_1ᵀy))) for y [d_in] or [d_in, m]; O(R·d_in) each."""
    _, _, a1, a2 = bilinear_factors(cp)
    c = direction_coefficients(cp, u)
    if c.ndim != 1:
        raise DecompError("interaction_matvec takes a single output direction u [d_out]")

    def matvec(y: torch.Tensor) -> torch.Tensor:
        col = y.ndim == 1
        y2 = y[:, None] if col else y
        out = 0.5 * (a1 @ (c[:, None] * (a2.T @ y2)) + a2 @ (c[:, None] * (a1.T @ y2)))
        return out[:, 0] if col else out

    return matvec


def interaction_operator(cp: CPTensor, u: torch.Tensor) -> LinearOperator:
    """Q(u) as a float64 scipy `LinearOperator` (for `scipy.sparse.linalg.eigsh`); computes on CPU."""
    w, a0, a1, a2 = bilinear_factors(cp)
    cpu = make_cp(w.detach().cpu().double(), [f.detach().cpu().double() for f in (a0, a1, a2)])
    matvec = interaction_matvec(cpu, u.detach().cpu().double())
    d = a1.shape[0]

    def apply(y: np.ndarray) -> np.ndarray:
        out = matvec(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64)))
        return out.numpy()

    return LinearOperator((d, d), matvec=apply, matmat=apply, rmatvec=apply, dtype=np.float64)


def interaction_frobenius_sq(
    cp: CPTensor, u: torch.Tensor, block: int = DEFAULT_BLOCK, route: str = "auto"
) -> torch.Tensor:
    """‖Q(u)‖_F² without holding Q. Returns a scalar, or [n] for a batch of u.

    route "columns": Σ over column blocks of Q (each block is ½(A_1 (c ⊙ A_2[blk]ᵀ) + A_2 (c ⊙ A_1[blk]ᵀ))),
    cost O(R·d_in²). route "gram": with M = A_1 diag(c) A_2ᵀ and Q = ½(M + Mᵀ),
    ‖Q‖² = ½(‖M‖² + tr(M²)), ‖M‖² = cᵀ((A_1ᵀA_1)⊙(A_2ᵀA_2))c, tr(M²) = cᵀ((A_1ᵀA_2)⊙(A_2ᵀA_1))c, cost
    O(R²·d_in). "auto" takes the cheaper (columns when d_in ≤ R). Memory O(block·max(R, d_in)) either way.
    """
    _, _, a1, a2 = bilinear_factors(cp)
    c = direction_coefficients(cp, u)
    if route == "auto":
        route = "columns" if a1.shape[0] <= a1.shape[1] else "gram"
    if route not in ("columns", "gram"):
        raise DecompError(f"unknown route {route!r}; use 'auto', 'columns' or 'gram'")
    out = []
    for ci in c if c.ndim == 2 else c[None]:
        if route == "gram":
            mm = blocked_gram_sum(ci, ci, [(a1, a1), (a2, a2)], block)
            tr = blocked_gram_sum(ci, ci, [(a1, a2), (a2, a1)], block)
            out.append(0.5 * (mm + tr))
            continue
        total = torch.zeros((), dtype=a1.dtype, device=a1.device)
        for start in range(0, a1.shape[0], block):
            stop = start + block
            cols = a1 @ (ci[:, None] * a2[start:stop].T) + a2 @ (ci[:, None] * a1[start:stop].T)
            total = total + 0.25 * cols.pow(2).sum()
        out.append(total)
    res = torch.stack(out)
    return res if c.ndim == 2 else res[0]


def token_direction(w_u: torch.Tensor, token: int, final_gain: torch.Tensor | None = None) -> torch.Tensor:
    """Output direction of one token's logit: u = g_final ⊙ W_U[token] ([d]).

    The logit is W_U[token] · (g ⊙ x / rms(x)); through the final norm the MLP's contribution is linear in
    this u up to the positive factor 1/rms(x) of the final residual.
    """
    if not 0 <= token < w_u.shape[0]:
        raise DecompError(f"token {token} is out of range for a vocabulary of {w_u.shape[0]}")
    u = w_u[token]
    if final_gain is not None:
        if final_gain.shape != u.shape:
            raise DecompError(
                f"final norm gain has shape {tuple(final_gain.shape)}, expected {tuple(u.shape)}"
            )
        u = u * final_gain.to(u)
    return u
