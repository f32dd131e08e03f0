"""Two stacked bilinear layers as tensor networks of orders 3, 4, 5, against dense einsums at tiny d."""

import itertools
import math

import pytest
import tensorly as tl
import torch
from tensorly.decomposition import parafac
from toy_models import random_gpt

from decomp import bilinear_cp, cp_als, cp_apply, cp_from_model, cp_to_dense, eigendecompose, make_cp
from decomp.errors import DecompError
from decomp.network import TensorNetwork
from decomp.two_layer import NormScales, composed_readout, two_layer_from_model, two_layer_tensor

F64 = torch.float64
D, H1, H2 = 4, 3, 5


def layers(seed=0):
    g = torch.Generator().manual_seed(seed)
    first = bilinear_cp(*(torch.randn(*s, generator=g, dtype=F64) for s in [(H1, D), (H1, D), (D, H1)]))
    second = bilinear_cp(*(torch.randn(*s, generator=g, dtype=F64) for s in [(H2, D), (H2, D), (D, H2)]))
    # non-unit CP weights must be carried into the composition too
    second = make_cp(torch.rand(H2, generator=g, dtype=F64) + 0.5, second.factors)
    return first, second


def dense_orders(first, second):
    """The dense composition: B2(x + B1(x,x)) split by order (B[a, i, j] = a-th output of B(e_i, e_j))."""
    b1, b2 = cp_to_dense(first), cp_to_dense(second)
    t4 = torch.einsum("ayz,zjk->ayjk", b2, b1) + torch.einsum("ayz,yjk->azjk", b2, b1)
    t5 = torch.einsum("ayz,yij,zkl->aijkl", b2, b1, b1)
    return {3: b2, 4: t4, 5: t5}


def dense_symmetric(t):
    perms = list(itertools.permutations(range(1, t.ndim)))
    return sum(t.permute(0, *p) for p in perms) / len(perms)


def test_orders_equal_the_dense_composition():
    first, second = layers()
    two = two_layer_tensor(first, second)
    dense = dense_orders(first, second)
    for k in (3, 4, 5):
        assert two.orders[k].shape == (D,) * k
        torch.testing.assert_close(two.orders[k].to_dense(), dense[k], rtol=1e-12, atol=1e-12)


def test_the_orders_sum_to_the_stacked_layers():
    first, second = layers(1)
    x = torch.randn(7, D, generator=torch.Generator().manual_seed(3), dtype=F64)
    composed = cp_apply(second, x + cp_apply(first, x))  # the model's path, evaluated directly
    parts = two_layer_tensor(first, second).apply(x)
    torch.testing.assert_close(sum(parts.values()), composed, rtol=1e-11, atol=1e-11)
    # each order is homogeneous: scaling x by α scales order k by α^(k-1)
    scaled = two_layer_tensor(first, second).apply(2.0 * x)
    for k in (3, 4, 5):
        torch.testing.assert_close(scaled[k], 2.0 ** (k - 1) * parts[k])


def test_implicit_norms_equal_dense_norms():
    first, second = layers(2)
    scales = NormScales(0.5, 2.0, 3.0)
    two = two_layer_tensor(first, second, scales)
    dense = dense_orders(first, second)
    norms, sym = two.norms(), two.norms(symmetric=True)
    for k in (3, 4, 5):
        assert norms[k] == pytest.approx(scales[k] * float(dense[k].norm()), rel=1e-10)
        assert sym[k] == pytest.approx(scales[k] * float(dense_symmetric(dense[k]).norm()), rel=1e-10)
        assert sym[k] <= norms[k] * (1 + 1e-12)


def test_network_inner_products_and_contractions_equal_dense():
    first, second = layers(4)
    t5 = two_layer_tensor(first, second).orders[5]
    dense = t5.to_dense()
    perm = [0, 3, 1, 4, 2]
    assert float(t5.inner(t5, perm)) == pytest.approx(float((dense * dense.permute(*perm)).sum()), rel=1e-10)
    g = torch.Generator().manual_seed(5)
    factors = [torch.randn(D, 2, generator=g, dtype=F64) for _ in range(5)]
    cp = make_cp(torch.tensor([1.5, -0.5], dtype=F64), factors)
    assert float(t5.inner(cp)) == pytest.approx(float((dense * cp_to_dense(cp)).sum()), rel=1e-10)
    unfold = dense.permute(2, 0, 1, 3, 4).reshape(D, -1)
    torch.testing.assert_close(t5.unfolding_gram(2), unfold @ unfold.T)
    kr = torch.einsum("ar,ir,kr,lr->aiklr", *(factors[i] for i in (0, 1, 3, 4))).reshape(-1, 2)
    torch.testing.assert_close(t5.mttkrp(2, factors), unfold @ kr)


@pytest.mark.filterwarnings("ignore:It is not recommended to initialize:UserWarning")
def test_als_on_the_network_equals_parafac_on_the_dense_order_five_tensor():
    first, second = layers(6)
    t5 = two_layer_tensor(first, second).orders[5]
    g = torch.Generator().manual_seed(7)
    init = make_cp(None, [torch.rand(D, 3, generator=g, dtype=F64) for _ in range(5)])
    res = cp_als(t5, 3, n_iter_max=4, init=init, tol=0)
    with tl.backend_context("pytorch"):
        ref, errors = parafac(t5.to_dense(), 3, n_iter_max=4, init=init.cp_copy(), tol=0, return_errors=True)
    for a, b in zip(res.cp.factors, ref.factors, strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-9
    assert res.errors == pytest.approx([float(e) for e in errors], rel=1e-8)


def test_composed_readout_reproduces_each_order_for_an_output_direction():
    first, second = layers(8)
    u = torch.randn(D, generator=torch.Generator().manual_seed(9), dtype=F64)
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(10), dtype=F64)
    parts = two_layer_tensor(first, second).apply(x)
    dirs = composed_readout(first, second, u, n=D)  # all of them: the sums are exact
    direct = torch.stack([d.vector @ x.T for d in dirs])  # w_i·x
    through = torch.stack([d.first_layer.quadratic_form(x) for d in dirs])  # xᵀQ1(w_i)x
    mu = torch.tensor([d.value for d in dirs], dtype=F64)[:, None]
    torch.testing.assert_close(parts[3] @ u, (mu * direct**2).sum(0))
    torch.testing.assert_close(parts[4] @ u, (2 * mu * direct * through).sum(0))
    torch.testing.assert_close(parts[5] @ u, (mu * through**2).sum(0))
    top = eigendecompose(second, u, k=1)
    assert dirs[0].value == pytest.approx(float(top.values[0]))


def test_model_layers_and_norm_scales():
    model = random_gpt(dtype=F64)
    two = two_layer_from_model(model, 0)
    dense = dense_orders(cp_from_model(model, 0), cp_from_model(model, 1))
    torch.testing.assert_close(two.orders[4].to_dense(), dense[4])
    s, rho = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([2.0, 2.0, 1.0])
    sc = NormScales.from_rms(s, rho)
    # s²/ρ² = (1/4, 1, 16), s/ρ² = (1/4, 1/2, 4), 1/ρ² = (1/4, 1/4, 1)
    assert (sc.c3, sc.c4, sc.c5) == pytest.approx((17.25 / 3, 4.75 / 3, 1.5 / 3))
    with pytest.raises(DecompError, match="no next layer"):
        two_layer_from_model(model, 1)


def test_never_dense_at_model_size():
    """d = 64, h = 160: norms and one ALS sweep of T5 run on the network (a dense T5 would be 1.1e9 entries)."""
    g = torch.Generator().manual_seed(11)
    d, h = 64, 160

    def big():
        return bilinear_cp(
            *(torch.randn(*s, generator=g, dtype=F64) / math.sqrt(d) for s in [(h, d), (h, d), (d, h)])
        )

    t5 = two_layer_tensor(big(), big()).orders[5]
    with pytest.raises(DecompError, match="refusing"):
        t5.to_dense()
    assert float(t5.norm()) > 0
    res = cp_als(t5, 4, n_iter_max=1, tol=0)
    assert 0 < res.rel_error < 1.0
    assert isinstance(t5, TensorNetwork)
