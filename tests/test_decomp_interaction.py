"""Interaction matrices Q(u), their eigendecomposition (dense and Lanczos), truncation and summaries."""

import pytest
import torch

from decomp import (
    DecompError,
    bilinear_cp,
    cp_apply,
    cp_to_dense,
    effective_rank,
    eigendecompose,
    eigh_sorted,
    interaction_frobenius_sq,
    interaction_matrix,
    interaction_matvec,
    symmetric_cp,
    token_direction,
    top_abs_sum,
)

F64 = torch.float64


def layer(d=8, h=12, d_out=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    w, v = torch.randn(h, d, generator=g, dtype=F64), torch.randn(h, d, generator=g, dtype=F64)
    return bilinear_cp(w, v, torch.randn(d_out, h, generator=g, dtype=F64))


def test_q_equals_dense_contraction_for_layer_and_symmetric_part():
    cp = layer()
    b = cp_to_dense(cp)
    u = torch.randn(7, dtype=F64)
    q = interaction_matrix(cp, u)
    expected = torch.einsum("a,aij->ij", u, 0.5 * (b + b.transpose(1, 2)))
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(interaction_matrix(symmetric_cp(cp), u), expected)
    # and the closed form ½(Wᵀdiag(Pᵀu)V + Vᵀdiag(Pᵀu)W)
    p, wt, vt = cp.factors
    c = p.T @ u
    torch.testing.assert_close(q, 0.5 * (wt @ torch.diag(c) @ vt.T + vt @ torch.diag(c) @ wt.T))


def test_q_batch_and_matvec_and_frobenius():
    cp = layer()
    us = torch.randn(3, 7, dtype=F64)
    qs = interaction_matrix(cp, us)
    assert qs.shape == (3, 8, 8)
    for i in range(3):
        torch.testing.assert_close(qs[i], interaction_matrix(cp, us[i]))
    y = torch.randn(8, 2, dtype=F64)
    torch.testing.assert_close(interaction_matvec(cp, us[0])(y), qs[0] @ y)
    torch.testing.assert_close(interaction_matvec(cp, us[0])(y[:, 0]), qs[0] @ y[:, 0])
    for route in ("columns", "gram"):
        torch.testing.assert_close(
            interaction_frobenius_sq(cp, us, block=5, route=route), (qs**2).sum((1, 2))
        )
    torch.testing.assert_close(interaction_frobenius_sq(cp, us[1]), (qs[1] ** 2).sum())


def test_quadratic_form_identity():
    cp = layer()
    u = torch.randn(7, dtype=F64)
    x = torch.randn(20, 8, dtype=F64)
    eig = eigendecompose(cp, u, method="dense")
    expected = cp_apply(cp, x) @ u  # u · B(x, x)
    torch.testing.assert_close(eig.quadratic_form(x), expected)
    torch.testing.assert_close(torch.einsum("ni,ij,nj->n", x, interaction_matrix(cp, u), x), expected)


def test_lanczos_top_k_equals_eigh():
    cp = layer(d=60, h=90, d_out=30, seed=3)
    u = torch.randn(30, dtype=F64)
    dense = eigendecompose(cp, u, method="dense")
    lanczos = eigendecompose(cp, u, k=6, method="lanczos")
    torch.testing.assert_close(lanczos.values, dense.values[:6], rtol=1e-9, atol=1e-9)
    # eigenvectors are sign-normalised (largest entry positive) so they compare directly
    torch.testing.assert_close(lanczos.vectors, dense.vectors[:, :6], rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(lanczos.frobenius_sq, dense.frobenius_sq)
    torch.testing.assert_close(lanczos.relative_error(), dense.relative_error(6))
    batch = eigendecompose(cp, torch.stack([u, -u]), k=4, method="lanczos")
    torch.testing.assert_close(batch.values[0], dense.values[:4], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(batch.values[1], -dense.values[:4], rtol=1e-9, atol=1e-9)


def test_truncation_error_and_summaries():
    cp = layer()
    u = torch.randn(7, dtype=F64)
    q = interaction_matrix(cp, u)
    eig = eigh_sorted(q)
    assert torch.all(eig.values.abs()[:-1] >= eig.values.abs()[1:])
    torch.testing.assert_close(eig.reconstruct(), q)
    for k in (1, 3, 8):
        rel = float((q - eig.reconstruct(k)).norm() / q.norm())
        assert float(eig.relative_error(k)) == pytest.approx(rel, abs=1e-10)
        assert float(eig.truncate(k).relative_error()) == pytest.approx(rel, abs=1e-7)  # from ‖Q‖² − Σλ²
    lam = eig.values
    assert float(eig.effective_rank()) == pytest.approx(float((lam.abs().sum() / lam.norm()) ** 2))
    assert float(effective_rank(torch.tensor([3.0, 0, 0]))) == pytest.approx(1.0)
    assert float(effective_rank(torch.tensor([-2.0, 2, 2, -2]))) == pytest.approx(4.0)
    assert float(top_abs_sum(torch.tensor([1.0, -5, 3]), 2)) == 8.0
    assert float(eig.top_abs_sum(3)) == pytest.approx(float(lam.abs()[:3].sum()))


def test_token_direction_applies_final_gain():
    w_u = torch.randn(11, 7, dtype=F64)
    g = torch.rand(7, dtype=F64)
    torch.testing.assert_close(token_direction(w_u, 4, g), w_u[4] * g)
    with pytest.raises(DecompError, match="out of range"):
        token_direction(w_u, 11)


def test_interaction_bad_inputs():
    cp = layer()
    with pytest.raises(DecompError, match=r"output direction must have shape \[7\]"):
        interaction_matrix(cp, torch.randn(8, dtype=F64))
    with pytest.raises(DecompError, match="order-3"):
        interaction_matrix(cp_order4(), torch.randn(3, dtype=F64))
    with pytest.raises(DecompError, match="k"):
        eigendecompose(cp, torch.randn(7, dtype=F64), k=0)
    with pytest.raises(DecompError, match="unknown eigen method"):
        eigendecompose(cp, torch.randn(7, dtype=F64), k=2, method="power")


def cp_order4():
    from decomp import multilinear_cp

    return multilinear_cp([torch.randn(2, 3, dtype=F64)] * 3, torch.randn(3, 2, dtype=F64))
