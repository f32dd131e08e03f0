"""decomp on real activations of small random GPTs built by `model/` (read through its accessors only)."""

import pytest
import tensorly as tl
import torch

from decomp import (
    DecompError,
    bilinear_layer,
    cp_apply,
    cp_from_model,
    cp_to_dense,
    eigendecompose,
    layer_diff_cp,
    layer_kind,
    multilinear_layer,
    token_direction,
)
from model import GPT, GPTConfig

F64 = torch.float64


def random_gpt(mlp="bilinear", seed=0, **kw):
    """A small GPT whose zero-initialised output projections and unit norm gains are randomised."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=50, n_layer=2, n_head=2, d_model=16, mlp=mlp, norm_gain=True, **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("c_proj.weight") or name == "lm_head.weight":
                param.normal_(0, 0.3)
            elif name.endswith("ln2.weight") or name.endswith("ln_f.weight"):
                param.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def bilinear_run():
    model = random_gpt()
    tokens = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return model, cache


@pytest.mark.parametrize("layer", [0, 1])
def test_u_dot_mlp_equals_eigen_sum_on_real_activations(bilinear_run, layer):
    model, cache = bilinear_run
    mlp_out = cache[f"blocks.{layer}.hook_mlp_out"].reshape(-1, 16).double()
    normalized = cache[f"blocks.{layer}.ln2.hook_normalized"].reshape(-1, 16).double()
    resid = cache[f"blocks.{layer}.hook_resid_mid"].reshape(-1, 16).double()
    x_hat = resid / resid.pow(2).mean(-1, keepdim=True).sqrt()  # x / rms(x): the input of the folded CP
    gain = model.mlp_norm_gain(layer).detach().double()
    torch.testing.assert_close(x_hat * gain, normalized, rtol=1e-4, atol=1e-4)

    cp = cp_from_model(model, layer, fold_norm=True)
    with tl.backend_context("pytorch"):
        torch.testing.assert_close(tl.cp_to_tensor(cp), cp_to_dense(cp))
    u_token = token_direction(model.w_u.detach().double(), 7, model.final_norm_gain().detach().double())
    for u in (torch.randn(16, dtype=F64), u_token):
        eig = eigendecompose(cp, u)
        expected = mlp_out @ u
        scale = expected.abs().max()
        torch.testing.assert_close(eig.quadratic_form(x_hat), expected, rtol=1e-4, atol=1e-4 * scale)
        # unfolded CP on the normalised input N(x)
        eig_raw = eigendecompose(cp_from_model(model, layer, fold_norm=False), u)
        torch.testing.assert_close(eig_raw.quadratic_form(normalized), expected, rtol=1e-4, atol=1e-4 * scale)
    # the adapter's layer reproduces the model's MLP
    layer_obj = bilinear_layer(model, layer)
    torch.testing.assert_close(layer_obj(normalized.float()), mlp_out.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cp_apply(cp, x_hat), mlp_out, rtol=1e-4, atol=1e-5)


def test_multilinear_model_cp_matches_mlp_output():
    model = random_gpt("multilinear", mlp_order=3)
    tokens = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    cp = cp_from_model(model, 1)
    assert len(cp.factors) == 4 and cp.shape == (16, 16, 16, 16)
    normalized = cache["blocks.1.ln2.hook_normalized"].reshape(-1, 16).double()
    x_hat = normalized / model.mlp_norm_gain(1).detach().double()
    mlp_out = cache["blocks.1.hook_mlp_out"].reshape(-1, 16).double()
    torch.testing.assert_close(cp_apply(cp, x_hat), mlp_out, rtol=1e-4, atol=1e-5)
    assert multilinear_layer(model, 1).order == 3
    with pytest.raises(DecompError, match="not bilinear"):
        bilinear_layer(model, 1)


def test_layer_diff_of_two_models():
    a, b = random_gpt(seed=0), random_gpt(seed=1)
    diff = layer_diff_cp(a, b, 1)
    torch.testing.assert_close(
        cp_to_dense(diff), cp_to_dense(cp_from_model(a, 1)) - cp_to_dense(cp_from_model(b, 1))
    )
    wide = random_gpt(seed=2, mlp_hidden=64)
    assert layer_diff_cp(wide, a, 0).rank == 64 + a.config.hidden  # different widths are fine


def test_model_bad_inputs():
    relu = random_gpt("relu2")
    with pytest.raises(DecompError, match=r"layer 1 has MLP kind 'relu2'"):
        cp_from_model(relu, 1)
    with pytest.raises(DecompError, match="swiglu"):
        layer_kind(random_gpt("swiglu"), 0)
    with pytest.raises(DecompError, match="out of range"):
        cp_from_model(random_gpt(), 5)
    torch.manual_seed(0)
    other = GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=2, d_model=32, mlp="bilinear"))
    with pytest.raises(DecompError, match="differ in d_model"):
        layer_diff_cp(other, random_gpt(), 0)
