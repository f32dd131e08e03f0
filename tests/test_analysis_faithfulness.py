"""analysis.faithfulness on small random GPTs: KL of MLP replacements, the rank sweep and the noise floor."""

import pytest
import torch
from toy_models import random_gpt

from analysis.faithfulness import (
    als_replacement,
    build_replacements,
    evaluate_replacements,
    layer_cp,
    noise_like,
    run_with_mlp_output,
    truncation_replacement,
)
from analysis.kl import ReferenceLogits, kl_divergence
from analysis.valdata import ValTokens
from decomp import cp_apply, cp_to_dense, symmetric_cp
from model.hooks import mlp_output_hook


@pytest.fixture(scope="module")
def toy():
    model = random_gpt()
    tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(1))
    return model, ValTokens(tokens[:, :-1], tokens[:, 1:])


def test_identity_replacement_has_zero_kl(toy):
    model, val = toy
    with torch.no_grad():
        logits, cache = model.run_with_cache(val.x, names_filter=[mlp_output_hook(1)])
        same = run_with_mlp_output(model, val.x, 1, cache[mlp_output_hook(1)])
    kl, loss = ReferenceLogits(logits).kl_and_loss(same, val.y)
    assert torch.equal(same, logits)
    assert kl.abs().max() < 1e-7
    assert kl_divergence(logits, same).abs().max() < 1e-7
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), val.y.flatten(), reduction="none")
    torch.testing.assert_close(loss.flatten(), ce, rtol=1e-5, atol=1e-5)


def test_reference_kl_matches_the_direct_formula():
    g = torch.Generator().manual_seed(0)
    p_logits, q_logits = torch.randn(3, 5, 40, generator=g) * 3, torch.randn(3, 5, 40, generator=g) * 3
    y = torch.randint(0, 40, (3, 5), generator=g)
    kl, loss = ReferenceLogits(p_logits).kl_and_loss(q_logits, y)
    p64, q64 = p_logits.double().log_softmax(-1), q_logits.double().log_softmax(-1)
    expected = (p64.exp() * (p64 - q64)).sum(-1)
    torch.testing.assert_close(kl.double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss.double(), -q64.gather(-1, y[..., None])[..., 0], rtol=1e-4, atol=1e-5)


def test_kl_falls_with_rank_and_vanishes_at_the_exact_rank(toy):
    model, val = toy
    reps = build_replacements(model, [0, 1], [1, 2, 4, 8], [16], progress=False)
    results = evaluate_replacements(model, val, reps, batch_size=2, n_seeds=2, progress=False)
    for layer, res in results.items():
        als = res.family("als")
        kls = [p.kl for p in als]
        assert kls[0] > kls[1] > kls[2] > 1e-4, (layer, kls)
        assert als[-1].exact and abs(kls[-1]) < 1e-6  # rank 8 = h: the layer itself
        errors = [p.rel_error for p in als]
        assert errors == sorted(errors, reverse=True)
        full_truncation = res.family("truncation")[0]  # k = d keeps the whole symmetric part
        assert full_truncation.exact and abs(full_truncation.kl) < 1e-6
        assert res.kl_mean_ablation > kls[0] * 0.5
        assert all(p.kl_noise > 0 for p in als[:-1])


def test_noise_floor_has_the_error_norm_of_the_replacement(toy):
    model, val = toy
    cp = layer_cp(model, 1)
    with torch.no_grad():
        _, cache = model.run_with_cache(val.x)
    z, out = cache["blocks.1.ln2.hook_normalized"], cache[mlp_output_hook(1)]
    torch.testing.assert_close(cp_apply(cp, z).float(), out, rtol=1e-4, atol=1e-5)  # the CP is the layer
    rep = als_replacement(cp, 2)
    delta = cp_apply(rep.cp, z).float() - out
    noise = noise_like(delta, torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise.norm(dim=-1), delta.norm(dim=-1), rtol=1e-5, atol=1e-7)
    cos = torch.nn.functional.cosine_similarity(noise, delta, dim=-1)
    assert cos.abs().mean() < 0.5  # a random direction, not the replacement's error


def test_truncation_is_the_top_k_eigen_truncation_of_each_output_slice():
    model = random_gpt(d_model=8, n_head=2, mlp_hidden=6)
    cp = layer_cp(model, 0)
    sym = cp_to_dense(symmetric_cp(cp))  # [d_out, d_in, d_in]
    u = torch.linalg.svd(cp.factors[0], full_matrices=True).U
    for k in (1, 3):
        rep = truncation_replacement(cp, k)
        dense = cp_to_dense(rep.cp)
        for j in range(8):
            q = torch.einsum("a,aij->ij", u[:, j], sym)
            vals, vecs = torch.linalg.eigh(q)
            keep = vals.abs().argsort(descending=True)[:k]
            q_k = (vecs[:, keep] * vals[keep]) @ vecs[:, keep].T
            torch.testing.assert_close(torch.einsum("a,aij->ij", u[:, j], dense), q_k, rtol=1e-9, atol=1e-9)
        expected = (sym - dense).norm() / sym.norm()
        assert rep.sym_rel_error == pytest.approx(float(expected), rel=1e-6)
    assert truncation_replacement(cp, 8).exact
