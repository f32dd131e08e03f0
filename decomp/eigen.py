"""Eigendecomposition of interaction matrices Q(u), truncation and summaries.

u · B(x, x) = xᵀQ(u)x = Σ_i λ_i (v_i · x)². Eigenpairs are ordered by |λ| descending and each eigenvector's
sign is fixed so that its largest-magnitude entry is positive (eigenvectors are only defined up to sign).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from tensorly.cp_tensor import CPTensor

from decomp.errors import DecompError
from decomp.interaction import (
    bilinear_factors,
    interaction_frobenius_sq,
    interaction_matrix,
    interaction_operator,
)

# Up to this input size the dense route is used by "auto": forming Q costs O(R·d²) once, whereas each Lanczos
# matvec streams all 2·R·d factor entries twice (memory-bound) and eigsh needs ~10²–10³ of them; Lanczos pays
# off when the d×d matrix itself is too big to hold.
DENSE_MAX_DIM = 4096


@dataclass
class Eigendecomposition:
    """Eigenpairs of a symmetric d×d matrix Q, or of a batch of them (leading batch dims ...).

    values: [..., k], sorted by |λ| descending;
    vectors: [..., d, k], orthonormal columns (v_i = vectors[..., i]);
    frobenius_sq: [...], ‖Q‖_F² of the whole matrix (so errors are exact even when only k pairs are kept).
    """

    values: torch.Tensor
    vectors: torch.Tensor
    frobenius_sq: torch.Tensor

    @property
    def k(self) -> int:
        return self.values.shape[-1]

    def truncate(self, k: int) -> Eigendecomposition:
        """Keep the top-k |λ| eigenpairs."""
        _check_k(k)
        return Eigendecomposition(self.values[..., :k], self.vectors[..., :k], self.frobenius_sq)

    def effective_rank(self) -> torch.Tensor:
        """(‖λ‖₁ / ‖λ‖₂)² over the kept eigenvalues; [...]."""
        return effective_rank(self.values)

    def top_abs_sum(self, k: int | None = None) -> torch.Tensor:
        """Σ of the top-k |λ| (all kept ones when k is None); [...]."""
        return top_abs_sum(self.values, k)

    def relative_error(self, k: int | None = None) -> torch.Tensor:
        """‖Q − Q_k‖_F / ‖Q‖_F with Q_k = Σ_{i<k} λ_i v_i v_iᵀ (k None: all kept pairs); [...].

        With the full spectrum at hand this is sqrt(Σ_{i≥k} λ_i²) / ‖Q‖; otherwise sqrt(‖Q‖² − Σ_{i<k} λ_i²) / ‖Q‖,
        which cannot resolve errors below ≈ 1e-8 (cancellation in float64).
        """
        k = self.k if k is None else k
        if self.k == self.vectors.shape[-2]:
            resid = (self.values[..., k:] ** 2).sum(-1)
        else:
            resid = (self.frobenius_sq - (self.values[..., :k] ** 2).sum(-1)).clamp_min(0)
        return resid.sqrt() / self.frobenius_sq.sqrt()

    def reconstruct(self, k: int | None = None) -> torch.Tensor:
        """Dense Q_k = V_k diag(λ_k) V_kᵀ, [..., d, d]."""
        e = self if k is None else self.truncate(k)
        return (e.vectors * e.values[..., None, :]) @ e.vectors.transpose(-1, -2)

    def quadratic_form(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_i λ_i (v_i · x)² for x [n, d]; returns [n] (or [..., n] for a batch of matrices)."""
        proj = x.to(self.vectors) @ self.vectors
        return (proj**2 * self.values[..., None, :]).sum(-1)


def effective_rank(values: torch.Tensor) -> torch.Tensor:
    """(‖λ‖₁ / ‖λ‖₂)² along the last dim (1 for a single spike, k for k equal |λ|)."""
    l1 = values.abs().sum(-1)
    l2 = values.pow(2).sum(-1).sqrt()
    return (l1 / l2) ** 2


def top_abs_sum(values: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Σ of the k largest |λ| along the last dim."""
    a = values.abs()
    if k is None or k >= a.shape[-1]:
        return a.sum(-1)
    _check_k(k)
    return a.topk(k, dim=-1).values.sum(-1)


def eigh_sorted(q: torch.Tensor, k: int | None = None) -> Eigendecomposition:
    """Dense `torch.linalg.eigh` of symmetric q [..., d, d], sorted by |λ| descending, top-k kept."""
    if q.ndim < 2 or q.shape[-1] != q.shape[-2]:
        raise DecompError(f"expected square matrices [..., d, d], got shape {tuple(q.shape)}")
    values, vectors = torch.linalg.eigh(q)
    order = values.abs().argsort(dim=-1, descending=True)
    values = values.gather(-1, order)
    vectors = vectors.gather(-1, order[..., None, :].expand_as(vectors))
    eig = Eigendecomposition(values, svd_flip(vectors)[0], (q**2).sum((-2, -1)))
    return eig if k is None else eig.truncate(k)


def eigendecompose(
    cp: CPTensor,
    u: torch.Tensor,
    k: int | None = None,
    method: Literal["auto", "dense", "lanczos"] = "auto",
    tol: float = 0.0,
    seed: int = 0,
) -> Eigendecomposition:
    """Top-k |λ| eigenpairs of Q(u) for an order-3 CP tensor (a bilinear layer or its symmetric part).

    Args:
        cp: order-3 CPTensor (d_out, d_in, d_in).
        u: output direction [d_out] or a batch [n, d_out].
        k: number of eigenpairs (None = all d_in; needs the dense method).
        method: "dense" builds Q (O(R·d²)) and runs `torch.linalg.eigh`; "lanczos" runs
            `scipy.sparse.linalg.eigsh(which="LM")` on the implicit O(R·d) matvec (memory O(R·d), no d×d
            matrix); "auto" picks dense when d_in ≤ 4096 or k is None, Lanczos otherwise.
        tol: Lanczos tolerance (0 = machine precision). seed: Lanczos start vector seed.
    Returns: Eigendecomposition with values [(n,) k], vectors [(n,) d_in, k], frobenius_sq [(n,)].
    """
    _, _, a1, _ = bilinear_factors(cp)
    d = a1.shape[0]
    if k is not None:
        _check_k(k)
        k = min(k, d)
    if method == "auto":
        method = "dense" if k is None or d <= DENSE_MAX_DIM or k >= d - 1 else "lanczos"
    if method == "dense":
        return eigh_sorted(interaction_matrix(cp, u), k)
    if method != "lanczos":
        raise DecompError(f"unknown eigen method {method!r}; use 'auto', 'dense' or 'lanczos'")
    if k is None or k >= d - 1:
        raise DecompError(f"Lanczos needs k < d_in - 1 = {d - 1}; use method='dense' for all eigenpairs")
    batch = u if u.ndim == 2 else u[None]
    results = [_lanczos(cp, ui, k, tol, seed) for ui in batch]
    values = torch.stack([r[0] for r in results]).to(a1)
    vectors = torch.stack([r[1] for r in results]).to(a1)
    frob = interaction_frobenius_sq(cp, u)
    if u.ndim == 1:
        values, vectors = values[0], vectors[0]
    return Eigendecomposition(values, vectors, frob)


def _lanczos(
    cp: CPTensor, u: torch.Tensor, k: int, tol: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    op = interaction_operator(cp, u)
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
    values, vectors = eigsh(op, k=k, which="LM", tol=tol, v0=v0)
    order = np.argsort(-np.abs(values), kind="stable")
    vals = torch.from_numpy(values[order].copy())
    vecs = torch.from_numpy(vectors[:, order].copy())
    return vals, svd_flip(vecs)[0]


def svd_flip(u: torch.Tensor, v: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """tensorly's ``svd_flip`` (u-based) on torch tensors, batched: flip each column of u [..., n, k] so that
    its largest-magnitude entry (the first, on ties) is positive, and the matching rows of v [..., m, l]
    (m ≥ k; rows past k unchanged). Returns (u, v); v None stays None.
    """
    idx = u.abs().argmax(dim=-2, keepdim=True)
    signs = u.gather(-2, idx).sign()
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)  # [..., 1, k]
    if v is not None:
        row_signs = signs.transpose(-1, -2)  # [..., k, 1]
        pad = v.shape[-2] - row_signs.shape[-2]
        if pad < 0:
            raise DecompError(f"svd_flip: v has {v.shape[-2]} rows, fewer than u's {u.shape[-1]} columns")
        ones = torch.ones(*row_signs.shape[:-2], pad, 1, dtype=row_signs.dtype, device=row_signs.device)
        v = v * torch.cat([row_signs, ones], dim=-2)
    return u * signs, v


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise DecompError(f"k (number of eigenpairs) must be a positive integer, got {k!r}")
