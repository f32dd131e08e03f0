"""Dashboards: a planted eigenvector's top contexts are exactly its token's positions; rendering; CP components."""

import pytest
import torch
from toy_models import random_gpt

from analysis.activations import collect_activations
from analysis.dashboards import build_dashboard, cards_html, cards_markdown, top_contexts
from analysis.faithfulness import Replacement
from analysis.readable import component_dashboards, eigen_dashboards
from analysis.spectra import layer_spectra
from analysis.tokens import TokenFrequency, TokenText
from data.vocab import CompactVocab
from decomp import make_cp
from model.hooks import get_act_name

VOCAB = CompactVocab(tuple(range(256, 320)))  # 64 GPT-2 ids as model ids 0..63
PLANTED, OUT_TOKEN = 5, 9


def planted_model():
    """Layer 0 reads the embedding direction e_0, which only token PLANTED has, with one strong hidden unit
    writing to OUT_TOKEN's unembedding: the leading eigenvector of Q(u_OUT) is e_0 (up to sign)."""
    model = random_gpt(seed=3)
    with torch.no_grad():
        model.blocks[0].attn.c_proj.weight.zero_()  # resid_mid of block 0 = the token embedding
        model.w_e[:, 0] = 0.0
        model.w_e[PLANTED] = 0.0
        model.w_e[PLANTED, 0] = 4.0
        w, v = model.w_in(0)
        w.mul_(0.01), v.mul_(0.01)
        w[0], v[0] = 0.0, 0.0
        w[0, 0], v[0, 0] = 3.0, 3.0
        model.w_p(0)[:, 0] = model.w_u[OUT_TOKEN] * 2.0
    return model


def test_planted_eigenvector_dashboard_shows_exactly_that_tokens_positions():
    model = planted_model()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (6, 20), generator=g)
    tokens[tokens == PLANTED] = 7
    where = [(0, 3), (1, 0), (2, 19), (4, 8), (4, 9)]
    for s, p in where:
        tokens[s, p] = PLANTED
    acts = collect_activations(model, tokens, [0], batch_size=4, progress=False)
    text = TokenText(VOCAB, 64)
    spec = layer_spectra(model, 0, [OUT_TOKEN], text, 64, n_eigen=2, n_top=3)
    v1 = spec.tokens[0].vectors[:, 0]
    assert abs(float(v1[0])) > 0.999  # the planted direction is the leading eigenvector
    freq = TokenFrequency(torch.full((64,), 100), 6400, "test", 20)
    dash = eigen_dashboards(spec, acts, freq, n_top=len(where))[(OUT_TOKEN, 0)]
    assert {(c.seq, c.pos) for c in dash.top} == set(where)
    # all planted positions carry the same activation, |v·x̂| = 4 (x̂ = 4·e_0), and nothing else comes close
    assert all(abs(abs(c.value) - 4.0) < 1e-2 for c in dash.top)
    x = acts.xhat[0]
    others = (x @ v1.float()).abs()
    others[tokens == PLANTED] = 0
    assert float(others.max()) < 0.1
    assert sum(dash.hist_counts) == tokens.numel()
    html = cards_html([dash], tokens, text, before=2, after=1)
    md = cards_markdown([dash], tokens, text, before=2, after=1)
    planted_text = text.text(PLANTED)
    assert f'id="{dash.anchor}"' in html and "<mark" in html and planted_text in html
    assert md.count(f"[[{planted_text}]]") == len(where)


def test_x_hat_is_the_normalised_residual_that_the_folded_layer_reads():
    model = random_gpt(seed=1)
    tokens = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(2))
    acts = collect_activations(model, tokens, [1], progress=False)
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=[get_act_name("resid_mid", 1)])
    x = cache[get_act_name("resid_mid", 1)]
    direct = x / x.pow(2).mean(-1, keepdim=True).add(model.config.norm_eps).sqrt()
    torch.testing.assert_close(acts.xhat[1], direct, rtol=2e-3, atol=2e-3)  # stored in float16
    torch.testing.assert_close(acts.rms[1], x.pow(2).mean(-1).sqrt())
    means, counts = acts.mean_input_by_token(1, 64)
    t = int(tokens[0, 0])
    mask = tokens == t
    torch.testing.assert_close(means[t].float(), acts.xhat[1][mask].mean(0), rtol=1e-5, atol=1e-6)
    assert int(counts[t]) == int(mask.sum())


def test_top_contexts_order_and_contribution():
    act = torch.tensor([[0.5, -3.0, 1.0], [2.0, 0.0, -2.0]])
    top = top_contexts(act, 3, lambda a: 0.5 * a**2)
    assert [(c.seq, c.pos) for c in top] == [(0, 1), (1, 0), (1, 2)]  # |−3|, then the tie 2, −2 in order
    assert [c.contribution for c in top] == [4.5, 2.0, 2.0]
    d = build_dashboard("a", "t", [], act, n_top=2, bins=4)
    assert sum(d.hist_counts) == 6 and d.hist_edges[0] == -3.0 and d.hist_edges[-1] == 2.0


def test_cp_component_dashboard_activation_is_its_hidden_product():
    model = random_gpt(seed=4)
    tokens = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(5))
    acts = collect_activations(model, tokens, [0], progress=False)
    g = torch.Generator().manual_seed(6)
    factors = [torch.randn(16, 2, generator=g, dtype=torch.float64) for _ in range(3)]
    cp = make_cp(torch.tensor([3.0, -0.5], dtype=torch.float64), factors)
    rep = Replacement("als", 2, cp, 0.5, 0.5)
    freq = TokenFrequency(torch.full((64,), 100), 6400, "test", 0)
    dashes = component_dashboards(model, 0, rep, acts, freq, TokenText(VOCAB, 64), 64, 2, n_top=1)
    z = acts.xhat[0].double() * model.mlp_norm_gain(0).detach().double()
    b, c = (f / f.norm(dim=0) for f in factors[1:])
    lam = 3.0 * factors[0][:, 0].norm() * factors[1][:, 0].norm() * factors[2][:, 0].norm()
    expected = (lam * (z @ b[:, 0]) * (z @ c[:, 0])).reshape(-1)  # the largest component, unit factors
    best = float(expected[expected.abs().argmax()])
    assert dashes[0].top[0].value == pytest.approx(best, rel=1e-6)
    assert len(dashes) == 2
