"""analysis.diff_steering: steering the base with a planted activation difference reproduces the fine-tune."""

import copy

import pytest
import torch
import torch.nn.functional as F
from toy_models import random_gpt

from analysis.diff_steering import (
    SteeringVector,
    bilinear_layer_after,
    lens_hook,
    point_label,
    steer,
    steered_logits,
    steering_vector,
)
from analysis.errors import AnalysisError
from analysis.model_diff import activation_diff
from analysis.tokens import TokenText
from analysis.valdata import ValTokens
from data.tokenizer import get_encoding
from data.vocab import CompactVocab

VOCAB = CompactVocab(tuple(range(1000, 1064)))
ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0)


def windows(seed: int, n: int = 6, T: int = 12) -> ValTokens:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (n, T + 1), generator=g)
    return ValTokens(x[:, :-1], x[:, 1:])


def embed_planted():
    """(base, ft, c): ft = base with W_E' = W_E + c (no embedding norm): h_ft = h_base + c after the embedding."""
    base = random_gpt(0)
    assert not base.config.embed_norm
    c = 0.8 * torch.randn(base.config.d_model, generator=torch.Generator().manual_seed(5))
    ft = copy.deepcopy(base)
    with torch.no_grad():
        ft.wte.weight += c
    return base, ft, c


def mlp_planted():
    """(base, ft, c): block 0's MLP of ft adds the constant c: h_ft = h_base + c after block 0 (up to eps/rms²).

    Units h < d read W_h = V_h = e_h/g_h, so Σ_h (W z)_h (V z)_h = Σ x_h² / (mean x² + eps) = d·(1 − O(eps)), and
    their output columns are 0 in the base, c/d in ft."""
    base = random_gpt(1, mlp_hidden=24)
    d = base.config.d_model
    c = 0.7 * torch.randn(d, generator=torch.Generator().manual_seed(6))
    g = base.mlp_norm_gain(0).detach()
    with torch.no_grad():
        base.w_l(0)[:d] = torch.diag(1 / g)
        base.w_r(0)[:d] = torch.diag(1 / g)
        base.w_p(0)[:, :d] = 0
    ft = copy.deepcopy(base)
    with torch.no_grad():
        ft.w_p(0)[:, :d] = c[:, None] / d
    return base, ft, c


@pytest.mark.parametrize(("build", "label"), [(embed_planted, "embed"), (mlp_planted, "0 mlp")])
def test_steering_with_the_planted_difference_reproduces_the_finetune(build, label):
    base, ft, c = build()
    val, fact = windows(0), windows(1)
    act = activation_diff(
        base, ft, val, TokenText(VOCAB, 64), 64, n_positions=12, pca_point=lens_hook(base, label)[0]
    )
    for kind in ("mean", "first", "pc1"):
        sv = steering_vector(base, act, label, kind)
        torch.testing.assert_close(sv.vector, c.double(), rtol=1e-4, atol=1e-5)
    sv = steering_vector(base, act, label, "mean")
    prompt = get_encoding().decode([1003, 1010, 1020])
    res = steer(
        base, ft, sv, val, ALPHAS, fact=fact, vocab=VOCAB, prompt=prompt, sample_tokens=6, progress=False
    )
    one = ALPHAS.index(1.0)
    with torch.no_grad():
        lf, lb = ft(val.x), base(val.x)
        with base.hooks([(lens_hook(base, label)[1], lambda a, h: a + c.to(a))]):
            torch.testing.assert_close(base(val.x), lf, rtol=1e-4, atol=1e-4)
    kl_hand = (lf.log_softmax(-1).exp() * (lf.log_softmax(-1) - lb.log_softmax(-1))).sum(-1).mean()
    assert res.kl[one] < 1e-6
    assert res.kl_base == pytest.approx(float(kl_hand), rel=1e-4)
    assert res.kl[0] == pytest.approx(res.kl_base, rel=1e-5)
    for i, a in enumerate(ALPHAS):
        if a != 1.0:
            assert res.kl[i] > 1e-3, (a, res.kl)
    assert res.kl[0] > res.kl[1] > res.kl[one] < res.kl[3] < res.kl[4]
    assert res.best_alpha == 1.0
    # the steered base at α = 1 scores the fine-tune's data like the fine-tune; at α = 0 like the base
    base_fact = F.cross_entropy(base(fact.x).flatten(0, 1), fact.y.flatten()).item()
    ft_fact = F.cross_entropy(ft(fact.x).flatten(0, 1), fact.y.flatten()).item()
    assert res.base_fact_loss == pytest.approx(base_fact, rel=1e-5)
    assert res.ft_fact_loss == pytest.approx(ft_fact, rel=1e-5)
    assert float(res.fact_loss[one]) == pytest.approx(ft_fact, rel=1e-4)
    assert float(res.fact_loss_change[0]) == pytest.approx(0.0, abs=1e-5)
    samples = dict(res.samples)
    assert samples["α = 1"] == samples["fine-tuned"] and samples["α = 0"] == samples["base"]
    assert res.curve is not None and res.curve.layer == (0 if label == "embed" else 1)


def test_first_position_vector_is_added_at_position_zero_only():
    base, ft, c = embed_planted()
    sv = SteeringVector("embed", lens_hook(base, "embed")[1], "first", c.double(), first_only=True)
    x = windows(2).x
    with torch.no_grad():
        got = steered_logits(base, x, sv, 1.0)
        ft0, plain = ft(x[:, :1]), base(x)
        # by hand: the fine-tune's embedding at position 0 only
        mixed = base.wte(x).clone()
        mixed[:, 0] = ft.wte(x[:, 0])
        with base.hooks([("hook_embed", lambda a, hook: mixed)]):
            want = base(x)
    torch.testing.assert_close(got[:, :1], ft0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[:, 1:], plain[:, 1:], atol=1e-3)  # later positions see position 0
    res = steer(base, ft, sv, windows(0), (0.0, 1.0), progress=False)
    assert res.curve is not None and res.curve.layer == 0  # the sweep runs on position 0


def half_space_model():
    """A model whose residual stream stays in the first d/2 dimensions (embeddings, attention and MLP outputs)."""
    model = random_gpt(3)
    h = model.config.d_model // 2
    with torch.no_grad():
        model.wte.weight[:, h:] = 0
        for i in range(model.config.n_layer):
            model.blocks[i].attn.c_proj.weight[h:] = 0
            model.w_p(i)[h:] = 0
    return model, h


def test_bilinear_prediction_is_shown_and_matches_when_the_norm_stays_put():
    """s ⟂ the residual at every position: rms(x + αs)² = rms(x)² + α² rms(s)², so to first order in α the norm
    does not intervene and the measured MLP change equals the weight-only prediction."""
    model, h = half_space_model()
    d, layer = model.config.d_model, 1
    s = torch.zeros(d, dtype=torch.float64)
    s[h:] = torch.randn(d - h, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    label = point_label("resid_mid", layer)
    sv = SteeringVector(label, lens_hook(model, label)[1], "mean", s)
    val = windows(4)
    alphas = (0.0, 0.01, 0.5)
    res = steer(model, model, sv, val, alphas, sweep_sequences=3, progress=False)
    curve = res.curve
    assert curve is not None and curve.layer == layer and res.note == ""
    torch.testing.assert_close(curve.alphas, torch.tensor([0.01, 0.5], dtype=torch.float64))
    # independent reference: the MLP evaluated by hand from its weights on the cached residual stream
    x = val.x[:3]
    _, cache = model.run_with_cache(x, names_filter=[f"blocks.{layer}.hook_resid_mid"])
    resid = cache[f"blocks.{layer}.hook_resid_mid"].double()
    g = model.mlp_norm_gain(layer).detach().double()
    W, V, P = (w.detach().double() for w in (model.w_l(layer), model.w_r(layer), model.w_p(layer)))

    def mlp(z):
        return ((z @ W.T) * (z @ V.T)) @ P.T

    def norm(r):
        return g * r / r.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()

    z = norm(resid)
    rms = resid.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    for i, a in enumerate([0.01, 0.5]):
        measured = (mlp(norm(resid + a * s)) - mlp(z)).norm(dim=-1).mean()
        predicted = (mlp(z + a * g * s / rms) - mlp(z)).norm(dim=-1).mean()
        assert float(curve.measured_pos[i]) == pytest.approx(float(measured), rel=1e-4)
        assert float(curve.predicted_pos[i]) == pytest.approx(float(predicted), rel=1e-6)
    assert float(curve.prediction_error[0]) < 0.02  # small α: prediction ≈ measurement
    assert float(curve.prediction_error[1]) > 5 * float(curve.prediction_error[0])  # the norm grows in


def test_no_prediction_after_the_last_block_and_bad_points():
    model = random_gpt(0)
    layer, note = bilinear_layer_after(model, point_label("resid_post", model.config.n_layer - 1))
    assert layer is None and "last block" in note
    relu = random_gpt(0, mlp="relu2")
    layer, note = bilinear_layer_after(relu, "0 attn")
    assert layer is None and "relu2" in note
    with pytest.raises(AnalysisError, match="no lens point '7 attn'"):
        lens_hook(model, "7 attn")
    with pytest.raises(AnalysisError, match="steering point must be"):
        point_label("resid_pre", 0)
