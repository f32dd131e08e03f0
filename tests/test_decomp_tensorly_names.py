"""decomp's public versions of tensorly helpers (cp_normalize, svd_flip, the parafac error formula) against
tensorly's own functions on the numpy backend."""

import numpy as np
import pytest
import tensorly as tl
import torch
from tensorly.cp_tensor import cp_normalize as tl_cp_normalize
from tensorly.tenalg.svd import svd_flip as tl_svd_flip

from decomp import cp_normalize, cp_relative_error, cp_to_dense, make_cp, relative_error_from_inner, svd_flip

F64 = torch.float64


def random_cp(shape=(5, 4, 3), rank=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    factors = [torch.randn(n, rank, generator=g, dtype=F64) for n in shape]
    factors[1][:, 2] = 0.0  # a zero column: tensorly keeps it zero and gives it weight 0
    return make_cp(torch.randn(rank, generator=g, dtype=F64), factors)


def test_cp_normalize_matches_tensorly():
    cp = random_cp()
    got = cp_normalize(cp)
    with tl.backend_context("numpy"):
        want = tl_cp_normalize((cp.weights.numpy(), [f.numpy() for f in cp.factors]))
    np.testing.assert_allclose(got.weights.numpy(), want.weights, rtol=1e-12)
    for a, b in zip(got.factors, want.factors, strict=True):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(cp_to_dense(got), cp_to_dense(cp))


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_svd_flip_matches_tensorly(shape):
    g = torch.Generator().manual_seed(1)
    u, _, vh = torch.linalg.svd(torch.randn(*shape, generator=g, dtype=F64), full_matrices=False)
    got_u, got_v = svd_flip(u, vh)
    with tl.backend_context("numpy"):
        want_u, want_v = tl_svd_flip(u.numpy(), vh.numpy())
    np.testing.assert_allclose(got_u.numpy(), want_u)
    np.testing.assert_allclose(got_v.numpy(), want_v)
    torch.testing.assert_close(got_u @ got_v, u @ vh)  # a sign flip of matching columns and rows


def test_svd_flip_batched_equals_each_matrix():
    u = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    batched, _ = svd_flip(u)
    for i in range(3):
        with tl.backend_context("numpy"):
            want, _ = tl_svd_flip(u[i].numpy(), np.eye(4))
        np.testing.assert_allclose(batched[i].numpy(), want)


def test_relative_error_formula_equals_dense():
    a, b = random_cp(seed=3), random_cp(seed=4)
    ta, tb = cp_to_dense(a), cp_to_dense(b)
    direct = float((ta - tb).norm() / ta.norm())
    assert cp_relative_error(a, b) == pytest.approx(direct, rel=1e-10)
    formula = relative_error_from_inner((ta * ta).sum(), (tb * tb).sum(), (ta * tb).sum())
    assert float(formula) == pytest.approx(direct, rel=1e-10)
