"""analysis.model_diff: a planted rank-1 change in a synthetic fine-tune is recovered from the weights."""

import copy

import pytest
import torch

from analysis.errors import AnalysisError
from analysis.model_diff import activation_diff, check_comparable, weight_diff
from analysis.spectra import readout_tables
from analysis.tokens import TokenText
from analysis.valdata import ValTokens
from data.vocab import CompactVocab
from decomp import cp_als, cp_normalize, layer_diff_cp
from model import GPT, GPTConfig

VOCAB = CompactVocab(tuple(range(1000, 1064)))  # 64 GPT-2 ids as model ids 0..63
T_IN, T_OUT, LAYER, UNIT = 17, 42, 1, 3


def random_gpt(seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=64, n_layer=2, n_head=2, d_model=32, mlp="bilinear", mlp_hidden=8)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight") or name == "lm_head.weight":
                p.normal_(0, 0.5)
    return model


@pytest.fixture(scope="module")
def planted():
    """(base, fine-tuned, (a, b, c)): B_ft − B_base = a ⊗ b ⊗ c at LAYER, a reads T_OUT, b and c read T_IN."""
    base = random_gpt()
    with torch.no_grad():
        base.w_p(LAYER)[:, UNIT] = 0  # the unit contributes nothing in the base model
    ft = copy.deepcopy(base)
    e = base.w_e[T_IN].detach()
    u = base.w_u[T_OUT].detach()
    a = 2.0 * u / u.norm()
    b, c = 0.7 * e / e.norm(), -0.4 * e / e.norm()
    with torch.no_grad():
        ft.w_l(LAYER)[UNIT] = b
        ft.w_r(LAYER)[UNIT] = c
        ft.w_p(LAYER)[:, UNIT] = a
    return base, ft, (a, b, c)


def test_compressed_diff_recovers_the_planted_term(planted):
    base, ft, factors = planted
    diff = layer_diff_cp(ft, base, LAYER)
    result = cp_als(diff, 1, n_iter_max=50)
    assert result.rel_error < 1e-6
    cp = cp_normalize(result.cp)
    for got, want in zip(cp.factors, factors, strict=True):
        cos = torch.nn.functional.cosine_similarity(got[:, 0], want.double(), dim=0)
        assert abs(float(cos)) > 1 - 1e-8
    scale = float(cp.weights[0].abs())
    assert scale == pytest.approx(float(factors[0].norm() * factors[1].norm() * factors[2].norm()), rel=1e-6)


def test_weight_diff_readout_finds_the_planted_tokens(planted):
    base, ft, _ = planted
    text = TokenText(VOCAB, 64)
    d = weight_diff(base, ft, LAYER, text, 64, rank=2, sweep=(1, 2), n_components=1, k=3)
    assert d.rel_error < 1e-6 and d.rank_errors[0][0] == 1 and d.rank_errors[0][1] < 1e-6
    top = d.components[0]

    def strongest(tops):
        return max(tops.positive[:1] + tops.negative[:1], key=lambda s: abs(s.score)).token

    assert strongest(top.output) == T_OUT
    assert strongest(top.inputs[0]) == T_IN and strongest(top.inputs[1]) == T_IN
    assert top.inputs[0].positive[0].text == text.display(top.inputs[0].positive[0].token)
    unchanged = weight_diff(base, ft, 0, text, 64)
    assert unchanged.diff_norm == 0 and "identical" in unchanged.note and not unchanged.components


def test_activation_diff_starts_at_the_changed_layer(planted):
    base, ft, _ = planted
    tokens = torch.randint(0, 64, (6, 9), generator=torch.Generator().manual_seed(0))
    val = ValTokens(tokens[:, :-1], tokens[:, 1:])
    ad = activation_diff(base, ft, val, TokenText(VOCAB, 64), 64, n_positions=6, n_pca=3, batch_size=4)
    changed = ad.labels.index(f"{LAYER} mlp")
    assert ad.mean_diff.shape == (len(ad.labels), 6, 32)
    assert float(ad.diff_norm[:changed].abs().max()) == 0.0
    assert float(ad.diff_norm[changed].min()) > 0
    assert torch.isnan(ad.cos_to_mean[0]).all()
    assert float(ad.pca_explained.sum()) <= 1 + 1e-9 and (ad.kl_by_position >= -1e-6).all()
    # the planted output direction a ∝ W_U[T_OUT] writes T_OUT's logit (both signs of b·x are squared away)
    _, w_u = readout_tables(ft, 64)
    lens = ad.mean_lens[f"{LAYER} mlp"]
    assert T_OUT in {lens.positive[0].token, lens.negative[0].token}
    assert w_u.shape == (64, 32)


def test_models_of_different_shapes_are_refused():
    with pytest.raises(AnalysisError, match="architecture"):
        check_comparable(
            random_gpt(), GPT(GPTConfig(vocab_size=64, n_layer=3, n_head=2, d_model=32, mlp="bilinear"))
        )
