"""Data-weighted truncation: explained variance and the per-output-token truncation KL against direct,
dense computations on a small random GPT."""

import numpy as np
import pytest
import torch
from toy_models import random_gpt

from analysis.activations import collect_activations
from analysis.kl import ReferenceLogits, kl_divergence
from analysis.truncation import explained_variance, per_token_truncation, sparse_kl_and_loss
from analysis.valdata import ValTokens
from decomp import cp_from_model, cp_to_dense, eigendecompose, token_direction
from model.hooks import get_act_name, mlp_output_hook

F64 = torch.float64


def dense_top_k(q: np.ndarray, k: int) -> np.ndarray:
    """Q_k = the k largest-|λ| eigenpairs of a symmetric matrix (numpy)."""
    vals, vecs = np.linalg.eigh(q)
    keep = np.argsort(-np.abs(vals), kind="stable")[:k]
    return (vecs[:, keep] * vals[keep]) @ vecs[:, keep].T


def test_explained_variance_equals_a_direct_computation_on_the_models_own_outputs():
    model = random_gpt(seed=2)
    tokens = torch.randint(0, 64, (8, 24), generator=torch.Generator().manual_seed(3))
    layer, token = 1, 11
    acts = collect_activations(model, tokens, [layer], progress=False)
    cp = cp_from_model(model, layer)  # norm-folded: acts on x̂
    u = token_direction(model.w_u.detach().double(), token, model.final_norm_gain().detach().double())
    ev = explained_variance(eigendecompose(cp, u), acts.flat(layer))
    # direct: y_p from the model's own MLP output (hook) projected on u; Q from the dense tensor; numpy variances
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=[mlp_output_hook(layer)])
    y_model = (cache[mlp_output_hook(layer)].double() @ u).reshape(-1).numpy()
    dense = cp_to_dense(cp).numpy()
    q = np.einsum("a,aij->ij", u.numpy(), dense)
    q = 0.5 * (q + q.T)
    x = acts.flat(layer).double().numpy()
    y = np.einsum("pi,ij,pj->p", x, q, x)
    np.testing.assert_allclose(
        y, y_model, rtol=1e-2, atol=1e-2 * np.abs(y_model).max()
    )  # x̂ is float16-rounded
    for k in (0, 1, 3, 16):
        yk = np.einsum("pi,ij,pj->p", x, dense_top_k(q, k), x)
        direct = 1 - np.var(y - yk) / np.var(y)
        assert float(ev[k]) == pytest.approx(direct, abs=1e-9)
    assert float(ev[-1]) == pytest.approx(1.0, abs=1e-9)


def test_sparse_kl_and_loss_equal_the_dense_ones():
    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(2, 5, 40, generator=g)
    ids = torch.tensor([3, 7, 8, 20, 39])
    d = torch.randn(2, 5, 5, generator=g)
    q = logits.clone()
    q[..., ids] -= d
    y = torch.randint(0, 40, (2, 5), generator=g)
    y[0, 0], y[1, 1] = 7, 39  # targets inside S too
    slot = torch.full((40,), -1)
    slot[ids] = torch.arange(5)
    ref = ReferenceLogits(logits)
    kl, loss = sparse_kl_and_loss(ref, ref.p[..., ids], d, slot, y)
    torch.testing.assert_close(kl, kl_divergence(logits, q), rtol=1e-4, atol=1e-6)
    ce = torch.nn.functional.cross_entropy(q.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    torch.testing.assert_close(loss, ce, rtol=1e-5, atol=1e-5)


def test_per_token_truncation_kl_equals_a_direct_computation():
    model = random_gpt(seed=5)
    tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(6))
    val = ValTokens(tokens[:, :-1], tokens[:, 1:])
    layer, ids, ks = 0, [2, 5, 11, 30, 63], [1, 3, 16]
    res = per_token_truncation(model, val, [1, layer], ks, ids, batch_size=2, progress=False)[layer]
    # direct: dense Q(u_t) per token, truncated; logits patched by (y^(k) − y)/r_f, soft-capped; dense KL
    cp = cp_from_model(model, layer)
    dense = cp_to_dense(cp).numpy()
    g_f = model.final_norm_gain().detach().double()
    final = get_act_name("resid_post", model.config.n_layer - 1)
    names = [get_act_name("resid_mid", layer), final]
    with torch.inference_mode():
        logits, cache = model.run_with_cache(val.x, names_filter=names)
    resid = cache[get_act_name("resid_mid", layer)].double()
    x = (resid / resid.pow(2).mean(-1, keepdim=True).add(model.config.norm_eps).sqrt()).numpy()
    r = cache[final].double()
    r_f = r.pow(2).mean(-1).add(model.config.norm_eps).sqrt().numpy()
    raw = (g_f * r / torch.from_numpy(r_f)[..., None]) @ model.w_u.detach().double().T
    cap = model.config.logit_softcap
    torch.testing.assert_close((cap * torch.tanh(raw / cap)).float(), logits, rtol=1e-4, atol=1e-4)
    for point in res.points:
        mod = raw.clone()
        for t in ids:
            u = token_direction(model.w_u.detach().double(), t, g_f).numpy()
            q = np.einsum("a,aij->ij", u, dense)
            q = 0.5 * (q + q.T)
            y = np.einsum("bti,ij,btj->bt", x, q, x)
            yk = np.einsum("bti,ij,btj->bt", x, dense_top_k(q, point.k), x)
            mod[..., t] += torch.from_numpy((yk - y) / r_f)
        kl = kl_divergence(logits, cap * torch.tanh(mod / cap)).double().mean()
        assert point.kl == pytest.approx(float(kl), rel=2e-3, abs=1e-7)
    assert res.points[-1].kl == pytest.approx(0.0, abs=1e-6)  # k = d keeps everything
    assert res.points[0].kl > res.points[1].kl > 0
    p = torch.softmax(logits.double(), -1)
    assert res.mass == pytest.approx(float(p[..., ids].sum(-1).mean()), rel=1e-5)
