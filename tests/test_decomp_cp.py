"""CP forms of layers: reconstruction, symmetrisation, implicit norms, against dense einsums and tensorly."""

import itertools
import math

import pytest
import tensorly as tl
import torch

from decomp import (
    DecompError,
    bilinear_cp,
    cp_apply,
    cp_difference,
    cp_inner,
    cp_norm,
    cp_relative_error,
    cp_to_dense,
    multilinear_cp,
    symmetric_cp,
)

F64 = torch.float64


def random_layer(d=6, h=9, d_out=None, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    w_in = [torch.randn(h, d, generator=g, dtype=F64) for _ in range(k)]
    p = torch.randn(d_out or d, h, generator=g, dtype=F64)
    gain = 1 + 0.5 * torch.randn(d, generator=g, dtype=F64)
    return w_in, p, gain


def tl_dense(cp):
    with tl.backend_context("pytorch"):
        return tl.cp_to_tensor(cp)


def test_bilinear_cp_equals_dense_einsum_and_tensorly():
    (w, v), p, gain = random_layer(d=5, h=7, d_out=4)
    cp = bilinear_cp(w, v, p)
    dense = torch.einsum("ah,hi,hj->aij", p, w, v)
    assert cp.shape == (4, 5, 5) and cp.rank == 7
    assert [tuple(f.shape) for f in cp.factors] == [(4, 7), (5, 7), (5, 7)]
    assert torch.equal(cp.weights, torch.ones(7, dtype=F64))
    torch.testing.assert_close(cp_to_dense(cp), dense)
    torch.testing.assert_close(tl_dense(cp), dense)
    x = torch.randn(3, 5, dtype=F64)
    torch.testing.assert_close(cp_apply(cp, x), ((x @ w.T) * (x @ v.T)) @ p.T)


def test_gain_is_folded_into_inputs():
    (w, v), p, gain = random_layer()
    folded = bilinear_cp(w, v, p, gain)
    x = torch.randn(4, 6, dtype=F64)
    # B'(x, x) with the gain folded equals the layer applied to g ⊙ x
    torch.testing.assert_close(cp_apply(folded, x), cp_apply(bilinear_cp(w, v, p), x * gain))
    dense = torch.einsum("ah,hi,hj,i,j->aij", p, w, v, gain, gain)
    torch.testing.assert_close(tl_dense(folded), dense)


def test_multilinear_cp_order_k_plus_one():
    w_in, p, gain = random_layer(d=4, h=5, k=3)
    cp = multilinear_cp(w_in, p, gain)
    assert cp.shape == (4, 4, 4, 4)
    g = [w * gain for w in w_in]
    dense = torch.einsum("ah,hi,hj,hk->aijk", p, *g)
    torch.testing.assert_close(cp_to_dense(cp), dense)
    torch.testing.assert_close(tl_dense(cp), dense)
    x = torch.randn(2, 4, dtype=F64)
    hidden = math.prod(x @ w.T for w in g)
    torch.testing.assert_close(cp_apply(cp, x), hidden @ p.T)


def test_symmetric_part_bilinear_identity():
    (w, v), p, _ = random_layer(d=6, h=8, d_out=5)
    cp = bilinear_cp(w, v, p)
    sym = symmetric_cp(cp)
    assert sym.rank == 16
    b = cp_to_dense(cp)
    expected = 0.5 * (b + b.transpose(1, 2))
    torch.testing.assert_close(cp_to_dense(sym), expected)
    torch.testing.assert_close(tl_dense(sym), expected)
    # the (W+V)/(W−V) form written out
    plus, minus = (w + v), (w - v)
    manual = 0.25 * (
        torch.einsum("ah,hi,hj->aij", p, plus, plus) - torch.einsum("ah,hi,hj->aij", p, minus, minus)
    )
    torch.testing.assert_close(cp_to_dense(sym), manual)


def test_symmetric_part_order_three_inputs():
    w_in, p, _ = random_layer(d=4, h=3, k=3)
    cp = multilinear_cp(w_in, p)
    b = cp_to_dense(cp)
    perms = list(itertools.permutations((1, 2, 3)))
    expected = sum(b.permute(0, *perm) for perm in perms) / len(perms)
    sym = symmetric_cp(cp)
    assert sym.rank == 4 * 3
    torch.testing.assert_close(cp_to_dense(sym), expected)


def test_implicit_inner_norm_and_error_match_dense():
    (w, v), p, _ = random_layer(d=5, h=7)
    a = bilinear_cp(w, v, p)
    (w2, v2), p2, _ = random_layer(d=5, h=4, seed=1)
    b = bilinear_cp(w2, v2, p2)
    da, db = cp_to_dense(a), cp_to_dense(b)
    torch.testing.assert_close(cp_inner(a, b, block=3), (da * db).sum())
    torch.testing.assert_close(cp_norm(a, block=2), da.norm())
    assert cp_relative_error(a, b) == pytest.approx(float((da - db).norm() / da.norm()), rel=1e-10)
    torch.testing.assert_close(cp_to_dense(cp_difference(a, b)), da - db)


def test_cp_validation_errors():
    (w, v), p, _ = random_layer()
    with pytest.raises(DecompError, match="input projection 1"):
        bilinear_cp(w, v[:, :3], p)
    with pytest.raises(DecompError, match="norm gain"):
        bilinear_cp(w, v, p, torch.ones(3, dtype=F64))
    big = bilinear_cp(torch.randn(2, 512), torch.randn(2, 512), torch.randn(512, 2))
    with pytest.raises(DecompError, match="refusing"):
        cp_to_dense(big)
    with pytest.raises(DecompError, match="different shapes"):
        cp_difference(bilinear_cp(w, v, p), big)


def test_tensorly_accepts_every_returned_cp(tmp_path):
    from decomp import cp_als, load_cp, save_cp, weight_diff_cp

    (w, v), p, gain = random_layer(d=5, h=6)
    layer = bilinear_cp(w, v, p, gain)
    save_cp(tmp_path / "layer.safetensors", layer)
    produced = [
        layer,
        multilinear_cp(random_layer(d=3, h=4, k=3)[0], random_layer(d=3, h=4)[1]),
        symmetric_cp(layer),
        cp_difference(layer, bilinear_cp(w, v, p)),
        weight_diff_cp(layer, bilinear_cp(v, w, p)),
        cp_als(layer, 2, n_iter_max=3).cp,
        cp_als(layer, 2, n_iter_max=3, normalize_factors=True, init="random").cp,
        load_cp(tmp_path / "layer.safetensors")[0],
    ]
    for cp in produced:
        torch.testing.assert_close(tl_dense(cp), cp_to_dense(cp))
        with tl.backend_context("pytorch"):
            assert float(tl.cp_norm(cp)) == pytest.approx(float(cp_norm(cp)), rel=1e-10)
