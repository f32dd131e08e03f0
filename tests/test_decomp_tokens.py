"""Token readouts and the direct-path token map against dense computations on a small vocabulary."""

import pytest
import torch

from decomp import (
    DecompError,
    bilinear_cp,
    component_readouts,
    cp_to_dense,
    direct_path_map,
    eigen_readouts,
    eigendecompose,
    input_tokens,
    output_tokens,
    top_tokens,
)

F64 = torch.float64
VOCAB, D, H = 40, 6, 9


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    cp = bilinear_cp(*(torch.randn(*s, generator=g, dtype=F64) for s in [(H, D), (H, D), (D, H)]))
    w_e = torch.randn(VOCAB, D, generator=g, dtype=F64)
    w_u = torch.randn(VOCAB, D, generator=g, dtype=F64)
    return cp, w_e, w_u


def test_direct_path_map_equals_dense(setup):
    cp, w_e, w_u = setup
    b = cp_to_dense(cp)
    s_in, s_out = [3, 0, 17, 39, 5], [1, 2, 30]
    expected = torch.einsum("oa,aij,ti,tj->ot", w_u[s_out], b, w_e[s_in], w_e[s_in])
    got = direct_path_map(cp, w_e, w_u, s_in, s_out)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected)
    # the formula (W_U P)((W W_Eᵀ) ⊙ (V W_Eᵀ)) on the whole small vocabulary
    p, wt, vt = cp.factors
    full = (w_u @ p) @ ((wt.T @ w_e.T) * (vt.T @ w_e.T))
    torch.testing.assert_close(direct_path_map(cp, w_e, w_u, range(VOCAB), range(VOCAB)), full)
    e = w_e[s_in] / w_e[s_in].pow(2).mean(-1, keepdim=True).sqrt()
    expected_norm = torch.einsum("oa,aij,ti,tj->ot", w_u[s_out], b, e, e)
    torch.testing.assert_close(direct_path_map(cp, w_e, w_u, s_in, s_out, rms_normalize=True), expected_norm)


def test_eigenvector_readouts(setup):
    cp, w_e, w_u = setup
    eig = eigendecompose(cp, w_u[7])
    names = {i: f"tok{i}" for i in range(VOCAB)}
    readouts = eigen_readouts(eig, cp, w_e, w_u, n=2, k=3, decode=names.__getitem__)
    assert len(readouts) == 2
    v = eig.vectors[:, 0]
    in_scores = w_e @ v
    out_scores = w_u @ (cp.factors[0] @ ((cp.factors[1].T @ v) * (cp.factors[2].T @ v)))
    top = readouts[0]
    assert top.eigenvalue == pytest.approx(float(eig.values[0]))
    assert [t.token for t in top.inputs.positive] == in_scores.argsort(descending=True)[:3].tolist()
    assert [t.token for t in top.inputs.negative] == in_scores.argsort()[:3].tolist()
    assert [t.token for t in top.outputs.positive] == out_scores.argsort(descending=True)[:3].tolist()
    assert top.inputs.positive[0].text == f"tok{top.inputs.positive[0].token}"
    assert top.inputs.positive[0].score == pytest.approx(float(in_scores.max()))
    assert input_tokens(v, w_e, 2).positive[0].text is None
    assert output_tokens(cp, v, w_u, 1).negative[0].token == int(out_scores.argmin())


def test_component_readouts_sorted_by_magnitude(setup):
    cp, w_e, w_u = setup
    comps = component_readouts(cp, w_e, w_u, n=4, k=2)
    mags = [c.magnitude for c in comps]
    assert mags == sorted(mags, reverse=True) and len(comps) == 4
    r = comps[0].index
    expected = float(torch.stack([f[:, r].norm() for f in cp.factors]).prod())
    assert comps[0].magnitude == pytest.approx(expected)
    assert comps[0].output.positive[0].token == int((w_u @ cp.factors[0][:, r]).argmax())
    assert len(comps[0].inputs) == 2


def test_token_bad_inputs(setup):
    cp, w_e, w_u = setup
    with pytest.raises(DecompError, match="token ids must lie"):
        direct_path_map(cp, w_e, w_u, [0, VOCAB], [1])
    with pytest.raises(DecompError, match="empty"):
        direct_path_map(cp, w_e, w_u, [], [1])
    with pytest.raises(DecompError, match="W_E has width"):
        direct_path_map(cp, w_e[:, :4], w_u, [0], [1])
    with pytest.raises(DecompError, match="positive integer"):
        top_tokens(torch.randn(5), 0)
    with pytest.raises(DecompError, match="does not fit W_E"):
        input_tokens(torch.randn(D + 1, dtype=F64), w_e)
