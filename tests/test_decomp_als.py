"""Implicit CP-ALS against tensorly's parafac on the dense tensor (same init ⇒ same iterates)."""

import pytest
import tensorly as tl
import torch
from tensorly.cp_tensor import CPTensor
from tensorly.decomposition import parafac
from tensorly.decomposition._cp import initialize_cp

from decomp import (
    DecompError,
    bilinear_cp,
    cp_als,
    cp_difference,
    cp_to_dense,
    make_cp,
    multilinear_cp,
    symmetric_cp,
)

F64 = torch.float64


def layer(d=9, h=14, seed=0, k=2):
    g = torch.Generator().manual_seed(seed)
    w_in = [torch.randn(h, d, generator=g, dtype=F64) for _ in range(k)]
    return multilinear_cp(w_in, torch.randn(d, h, generator=g, dtype=F64))


def random_init(shape, rank, seed=1, weights=None):
    g = torch.Generator().manual_seed(seed)
    factors = [torch.rand(s, rank, generator=g, dtype=F64) for s in shape]
    return CPTensor((torch.ones(rank, dtype=F64) if weights is None else weights, factors))


def run_parafac(target, rank, init, n_iter, **kw):
    with tl.backend_context("pytorch"):
        dense = cp_to_dense(target)
        cp, errors = parafac(
            dense, rank, n_iter_max=n_iter, init=init.cp_copy(), tol=0, return_errors=True, **kw
        )
    return cp, [float(e) for e in errors]


def assert_same_cp(a, b, rtol=1e-10):
    for fa, fb in zip(a.factors, b.factors, strict=True):
        assert float((fa - fb).norm() / fb.norm()) < rtol
    assert float((a.weights - b.weights).norm() / b.weights.norm()) < rtol


@pytest.mark.parametrize("n_iter", [1, 2, 5])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.filterwarnings("ignore:It is not recommended to initialize:UserWarning")  # parafac + given init
def test_iterates_equal_parafac(n_iter, normalize):
    target = layer()
    init = random_init(target.shape, 4)
    ref, ref_errors = run_parafac(target, 4, init, n_iter, normalize_factors=normalize)
    res = cp_als(target, 4, n_iter_max=n_iter, init=init, tol=0, normalize_factors=normalize)
    assert res.n_iter == n_iter and not res.converged
    assert_same_cp(res.cp, ref)
    assert res.errors == pytest.approx(ref_errors, rel=1e-10)


@pytest.mark.parametrize("kind", ["symmetric", "difference", "order4", "weighted_init"])
def test_iterates_equal_parafac_other_targets(kind):
    base = layer()
    init_weights = None
    if kind == "symmetric":
        target = symmetric_cp(base)
    elif kind == "difference":
        target = cp_difference(layer(seed=1, h=10), base)
    elif kind == "order4":
        target = layer(d=5, h=6, k=3)
    else:
        target, init_weights = base, torch.linspace(0.5, 2, 3, dtype=F64)
    init = random_init(target.shape, 3, weights=init_weights)
    ref, _ = run_parafac(target, 3, init, 5)
    res = cp_als(target, 3, n_iter_max=5, init=init, tol=0)
    assert_same_cp(res.cp, ref)
    assert torch.equal(init.weights, init_weights if init_weights is not None else torch.ones(3, dtype=F64))


def test_svd_init_equals_tensorly_svd_init():
    target = layer(d=8, h=12)
    with tl.backend_context("pytorch"):
        ref = initialize_cp(cp_to_dense(target), 5, init="svd")
    res = cp_als(target, 5, n_iter_max=0, init="svd")
    assert_same_cp(res.cp, CPTensor((torch.ones(5, dtype=F64), ref.factors)), rtol=1e-8)
    # rank above a mode size: random columns are appended, as tensorly does
    wide = cp_als(layer(d=3, h=5), 4, n_iter_max=0, init="svd")
    assert [tuple(f.shape) for f in wide.cp.factors] == [(3, 4)] * 3


def test_relative_error_matches_dense_and_tol_stops():
    target = layer()
    res = cp_als(target, 6, n_iter_max=500, tol=1e-9, init="random", random_state=3)
    assert res.converged and res.n_iter < 500
    dense_t = cp_to_dense(target)
    dense_err = float((dense_t - cp_to_dense(res.cp)).norm() / dense_t.norm())
    assert res.rel_error == pytest.approx(dense_err, rel=1e-6, abs=1e-9)
    assert all(b <= a + 1e-12 for a, b in zip(res.errors, res.errors[1:], strict=False))
    again = cp_als(target, 6, n_iter_max=500, tol=1e-9, init="random", random_state=3)
    assert again.errors == res.errors  # seeded


def test_exact_rank_recovers_tensor():
    g = torch.Generator().manual_seed(5)
    truth = make_cp(None, [torch.randn(7, 3, generator=g, dtype=F64) for _ in range(3)])
    res = cp_als(truth, 3, n_iter_max=300, tol=0)
    assert res.rel_error < 1e-6


def test_callback_progress_and_float32_target():
    target = bilinear_cp(*(torch.randn(*s) for s in [(10, 6), (10, 6), (6, 10)]))
    seen = []
    res = cp_als(
        target, 2, n_iter_max=50, tol=0, progress=True, verbose=True, callback=lambda i, cp, e: i >= 2
    )
    res = cp_als(target, 2, n_iter_max=50, tol=0, callback=lambda i, cp, e: seen.append((i, e)) or i >= 2)
    assert res.n_iter == 3 and res.converged and [i for i, _ in seen] == [0, 1, 2]
    assert res.cp.weights.dtype == F64  # float64 working precision by default


def test_bad_inputs():
    target = layer()
    for rank in (0, -2, 1.5):
        with pytest.raises(DecompError, match="rank must be a positive integer"):
            cp_als(target, rank)
    with pytest.raises(DecompError, match="init is a rank-3"):
        cp_als(target, 4, init=random_init(target.shape, 3))
    with pytest.raises(DecompError, match="unknown init"):
        cp_als(target, 2, init="nope")
    zero = cp_difference(target, target)
    with pytest.raises(DecompError, match="zero"):
        cp_als(zero, 2)
