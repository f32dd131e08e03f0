"""Implicit CP-ALS: compress a CP tensor T = [[w; A_0..A_N]] (rank R) to rank r without the dense tensor.

Everything goes through Gram and cross-Gram matrices of the factors (A_n [I_n, R], B_n [I_n, r]):

    MTTKRP_n = A_n diag(w) (⊛_{k≠n} A_kᵀB_k) diag(λ)                      [I_n, r]
    B_n      = MTTKRP_n (λλᵀ ⊙ ⊛_{k≠n} B_kᵀB_k)⁻¹                           (a linear solve)
    ‖T‖²     = Σ_{h,h'} w_h w_h' Π_n (A_nᵀA_n)[h, h']                       (once, in row blocks)
    ‖B‖²     = Σ λλᵀ ⊙ Π_n B_nᵀB_n,   ⟨T, B⟩ = Σ MTTKRP_N ⊙ B_N           (last mode's MTTKRP)

Per iteration O(Σ_n I_n·R·r) against O(Π_n I_n · r) for ALS on the dense tensor. The target may also be a
`decomp.network.TensorNetwork` (e.g. the order-5 tensor of two stacked layers, whose CP rank would be h²·h):
then ‖T‖², the MTTKRPs and the unfolding Grams of the svd init are contractions of the network. The update order (modes
0..N in turn), the solve, the error formula, the stopping rule (|Δ rel. error| < tol after the second
iteration) and `normalize_factors` follow `tensorly.decomposition.parafac`, so with the same initial
factors the iterates are equal to parafac's on the dense tensor (up to rounding). The error formula loses
precision by cancellation: like parafac's, it cannot go below ≈ 1e-8 (sqrt of the float64 epsilon) even
for an exact fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from tensorly.cp_tensor import CPTensor
from tqdm.auto import tqdm

from decomp.cp import (
    DEFAULT_BLOCK,
    blocked_gram_sum,
    check_cp,
    cp_normalize,
    cp_relative_error,
    make_cp,
    relative_error_from_inner,
)
from decomp.eigen import svd_flip
from decomp.errors import DecompError
from decomp.network import TensorNetwork


@dataclass
class ALSResult:
    """Result of `cp_als`.

    cp: rank-r CPTensor (torch tensors on the target's device, in the working dtype).
    rel_error: ‖T − B‖/‖T‖ after the last iteration (computed implicitly).
    errors: the relative error after each iteration. n_iter: iterations run.
    converged: True when the tol-based stop fired (or a callback asked to stop) before n_iter_max.
    """

    cp: CPTensor
    rel_error: float
    errors: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False


def cp_als(
    target: CPTensor | TensorNetwork,
    rank: int,
    *,
    n_iter_max: int = 100,
    init: Literal["svd", "random"] | CPTensor = "svd",
    tol: float = 1e-8,
    random_state: int | None = 0,
    normalize_factors: bool = False,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    verbose: bool = False,
    callback: Callable[[int, CPTensor, float], bool | None] | None = None,
    block: int = DEFAULT_BLOCK,
) -> ALSResult:
    """Rank-`rank` CP approximation of a CP tensor by ALS, computed only from factor Gram matrices.

    Args:
        target: CPTensor (e.g. a layer, its symmetric part, a weight difference) or TensorNetwork; order ≥ 2.
        rank: r > 0.
        n_iter_max: maximum number of sweeps. tol: stop when |Δ relative error| < tol (0 = run all sweeps).
        init: a CPTensor of the target's shape and rank r (weights pulled into the last factor, as parafac
            does), "svd" (leading left singular vectors of each unfolding, from its Gram matrix computed
            implicitly; mode 0 scaled by the singular values; signs as tensorly's svd_flip; random columns
            when I_n < r) or "random" (uniform [0, 1) factors, torch generator seeded with random_state).
        normalize_factors: after each sweep, normalise columns to unit norm, scales kept in the weights.
        dtype: working dtype (float64 by default; float32 ALS drifts). The device follows the target's.
        progress: tqdm progress bar. verbose: print the error of each sweep.
        callback: called as callback(iteration, cp, rel_error) after each sweep; returning True stops.
        block: row-block size of the R×R Gram products (memory O(block·R)).
    Returns: ALSResult.
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise DecompError(f"rank must be a positive integer, got {rank!r}")
    if not isinstance(n_iter_max, int) or n_iter_max < 0:
        raise DecompError(f"n_iter_max must be a non-negative integer, got {n_iter_max!r}")
    tgt = (
        _NetworkTarget(target, dtype)
        if isinstance(target, TensorNetwork)
        else _CPTarget(target, dtype, block)
    )
    n_modes = len(tgt.shape)
    if n_modes < 2:
        raise DecompError("CP-ALS needs a tensor of order ≥ 2")
    norm_t_sq = tgt.norm_sq()
    if tgt.is_zero(norm_t_sq):
        raise DecompError("the target tensor is zero (e.g. identical checkpoints): nothing to approximate")

    lam, b = _initial_factors(tgt, rank, init, random_state, dtype)
    if normalize_factors and isinstance(init, str):
        lam, b = _normalize(lam, b)  # parafac normalises computed inits, never a given CPTensor
    tgt.start(b)
    gram = [bn.T @ bn for bn in b]  # B_kᵀ B_k  [r, r]

    errors: list[float] = []
    converged = False
    bar = tqdm(range(n_iter_max), desc="cp_als", disable=not progress, leave=False)
    for iteration in bar:
        mttkrp = None
        for n in range(n_modes):
            lhs = _hadamard([gram[k] for k in range(n_modes) if k != n])
            lhs = lam[:, None] * lhs * lam[None, :]
            mttkrp = tgt.mttkrp(n) * lam
            b[n] = _solve_right(mttkrp, lhs)
            tgt.update(n, b[n])
            gram[n] = b[n].T @ b[n]

        norm_b_sq = (lam[:, None] * _hadamard(gram) * lam[None, :]).sum()
        inner = (mttkrp * b[-1]).sum()
        rel_error = float(relative_error_from_inner(norm_t_sq, norm_b_sq, inner))
        errors.append(rel_error)
        if progress:
            bar.set_postfix(rel_error=f"{rel_error:.6g}")
        if verbose:
            tqdm.write(f"cp_als iteration {iteration + 1}: relative error {rel_error:.10g}")

        stop = bool(callback(iteration, make_cp(lam, list(b)), rel_error)) if callback else False
        if stop or (tol and iteration >= 1 and abs(errors[-2] - errors[-1]) < tol):
            converged = True
            break  # before normalising, as parafac does
        if normalize_factors:
            lam, b = _normalize(lam, b)
            tgt.start(b)
            gram = [bn.T @ bn for bn in b]
    bar.close()

    if not errors:
        final = make_cp(lam, b)
        return ALSResult(final, tgt.relative_error(norm_t_sq, final), [], 0, False)
    return ALSResult(make_cp(lam, b), errors[-1], errors, len(errors), converged)


class _CPTarget:
    """A CP target [[w; A_0..A_N]]: MTTKRPs from cached cross-Grams A_kᵀB_k [R, r]."""

    def __init__(self, target: CPTensor, dtype: torch.dtype, block: int) -> None:
        target = check_cp(target)
        self.shape = tuple(target.shape)
        self.w = target.weights.to(dtype)
        self.a = [f.to(dtype) for f in target.factors]
        self.device, self.block = self.w.device, block

    def norm_sq(self) -> torch.Tensor:
        return blocked_gram_sum(self.w, self.w, [(f, f) for f in self.a], self.block)

    def is_zero(self, norm_sq: torch.Tensor) -> bool:
        # ‖T‖ ≤ Σ_h |w_h| Π_n ‖A_n[:, h]‖; below ~1e-7 of that bound ‖T‖² is rounding noise (e.g. B − B).
        bound = (self.w.abs() * torch.stack([f.norm(dim=0) for f in self.a]).prod(0)).sum()
        return bool(norm_sq <= (1e-7 * bound) ** 2)

    def unfolding_gram(self, n: int) -> torch.Tensor:
        """T_(n) T_(n)ᵀ = A_n diag(w) (⊛_{k≠n} A_kᵀA_k) diag(w) A_nᵀ [I_n, I_n], built in row blocks."""
        an, w = self.a[n], self.w
        others = [self.a[k] for k in range(len(self.a)) if k != n]
        size, big_r = an.shape
        gram = torch.zeros(size, size, dtype=an.dtype, device=an.device)
        right = w[:, None] * an.T  # [R, I_n]
        for start in range(0, big_r, self.block):
            stop = min(start + self.block, big_r)
            s = _hadamard([f[:, start:stop].T @ f for f in others])  # [blk, R]
            gram += (an[:, start:stop] * w[start:stop]) @ (s @ right)
        return gram

    def start(self, b: list[torch.Tensor]) -> None:
        self.cross = [an.T @ bn for an, bn in zip(self.a, b, strict=True)]  # A_kᵀ B_k  [R, r]

    def update(self, n: int, bn: torch.Tensor) -> None:
        self.cross[n] = self.a[n].T @ bn

    def mttkrp(self, n: int) -> torch.Tensor:
        """A_n diag(w) (⊛_{k≠n} A_kᵀB_k) [I_n, r]."""
        cross_prod = _hadamard([self.cross[k] for k in range(len(self.a)) if k != n])
        return self.a[n] @ (self.w[:, None] * cross_prod)

    def relative_error(self, norm_sq: torch.Tensor, approx: CPTensor) -> float:
        return cp_relative_error(make_cp(self.w, self.a), approx, self.block)


class _NetworkTarget:
    """A TensorNetwork target: every quantity is a contraction of the network (`decomp.network`)."""

    def __init__(self, target: TensorNetwork, dtype: torch.dtype) -> None:
        self.net = target.to(dtype)
        self.shape = target.shape
        self.device = target.operands[0].device

    def norm_sq(self) -> torch.Tensor:
        return self.net.inner(self.net)

    def is_zero(self, norm_sq: torch.Tensor) -> bool:
        return bool(norm_sq <= 0)

    def unfolding_gram(self, n: int) -> torch.Tensor:
        return self.net.unfolding_gram(n)

    def start(self, b: list[torch.Tensor]) -> None:
        self.b = list(b)

    def update(self, n: int, bn: torch.Tensor) -> None:
        self.b[n] = bn

    def mttkrp(self, n: int) -> torch.Tensor:
        return self.net.mttkrp(n, self.b)

    def relative_error(self, norm_sq: torch.Tensor, approx: CPTensor) -> float:
        b_sq = TensorNetwork.from_cp(approx).inner(approx)
        return float(relative_error_from_inner(norm_sq, b_sq, self.net.inner(approx)))


def _initial_factors(
    tgt: _CPTarget | _NetworkTarget,
    rank: int,
    init: str | CPTensor,
    random_state: int | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(weights λ = ones, factors B_n [I_n, r]) as tensorly's initialize_cp would give them."""
    shape, device = tgt.shape, tgt.device
    generator = torch.Generator().manual_seed(0 if random_state is None else random_state)
    ones = torch.ones(rank, dtype=dtype, device=device)
    if isinstance(init, (CPTensor, tuple, list)):
        init = check_cp(init)
        if tuple(init.shape) != tuple(shape) or init.rank != rank:
            raise DecompError(
                f"init is a rank-{init.rank} CP tensor of shape {tuple(init.shape)}, "
                f"expected rank {rank} and shape {tuple(shape)}"
            )
        factors = [f.to(device=device, dtype=dtype).clone() for f in init.factors]
        weights = init.weights.to(device=device, dtype=dtype)
        if not bool((weights == 1).all()):
            factors[-1] = factors[-1] * weights[None, :]
        return ones, factors
    if init == "random":
        factors = [torch.rand(size, rank, generator=generator, dtype=dtype).to(device) for size in shape]
        return ones, factors
    if init == "svd":
        return ones, [_svd_init_factor(n, rank, tgt.unfolding_gram(n), generator) for n in range(len(shape))]
    raise DecompError(f"unknown init {init!r}; use 'svd', 'random' or a CPTensor")


def _svd_init_factor(n: int, rank: int, gram: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Leading `rank` left singular vectors of the mode-n unfolding T_(n), from its Gram T_(n) T_(n)ᵀ.

    Mode 0 is scaled by the singular values (as tensorly does when normalize_factors is False); signs as
    tensorly's svd_flip; random columns when I_n < rank.
    """
    size = gram.shape[0]
    evals, evecs = torch.linalg.eigh(0.5 * (gram + gram.T))
    keep = min(rank, size)
    u = evecs.flip(-1)[:, :keep]
    sing = evals.flip(-1)[:keep].clamp_min(0).sqrt()
    u, _ = svd_flip(u)
    if n == 0:
        u = u * sing
    if size < rank:
        extra = torch.rand(size, rank - size, generator=generator, dtype=gram.dtype).to(gram.device)
        u = torch.cat([u, extra], dim=1)
    return u


def _solve_right(mttkrp: torch.Tensor, lhs: torch.Tensor) -> torch.Tensor:
    """X with X·lhs = mttkrp, as parafac does (solve(lhsᵀ, mttkrpᵀ)ᵀ); pseudo-inverse if lhs is singular."""
    try:
        return torch.linalg.solve(lhs.T, mttkrp.T).T
    except torch.linalg.LinAlgError:
        return mttkrp @ torch.linalg.pinv(lhs)


def _hadamard(mats: list[torch.Tensor]) -> torch.Tensor:
    out = mats[0].clone()
    for m in mats[1:]:
        out *= m
    return out


def _normalize(lam: torch.Tensor, b: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(weights, factors) of `cp_normalize` applied to [[λ; B_0..B_N]]."""
    cp = cp_normalize(make_cp(lam, b))
    return cp.weights, list(cp.factors)
