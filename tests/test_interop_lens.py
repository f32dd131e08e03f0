"""An exported tnt model in TransformerLens (4.x TransformerBridge) and nnsight, against tnt's own hooks."""

import pytest
import torch
from toy_models import random_gpt

from model.export import export
from model.io import save_model

pytest.importorskip("transformers", reason="the interop extra is not installed: pip install -e '.[interop]'")

IDS = torch.tensor(
    [[15496, 995, 11, 428, 318, 257, 1332, 286, 262, 17755]]
)  # "Hello world, this is a test of the…"
HOOKS = [
    "hook_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.0.hook_mlp_out",
    "blocks.1.hook_resid_post",
    "blocks.1.mlp.hook_pre",
    "blocks.1.mlp.hook_pre_linear",
    "blocks.1.mlp.hook_post",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(tnt model, transformers folder): a bilinear model with norm gains."""
    root = tmp_path_factory.mktemp("lens")
    model = random_gpt(0, vocab_size=50304, logit_softcap=None)
    save_model(model, root / "ckpt", extra_config={"vocab": {"tokenizer": "gpt2", "token_ids": None}})
    return model, export(root / "ckpt", root / "hf")


def centered(logits):
    return logits - logits.mean(-1, keepdim=True)  # TransformerLens may centre the unembedding


def test_transformer_lens_bridge_caches_tnt_activations(exported):
    bridge_mod = pytest.importorskip(
        "transformer_lens.model_bridge", reason="transformer-lens is not installed"
    )
    model, folder = exported
    bridge = bridge_mod.TransformerBridge.boot_transformers(str(folder), device="cpu")
    assert bridge.to_tokens("Hello world, this is a test of the")[0].tolist() == IDS[0, :-1].tolist()
    logits, cache = bridge.run_with_cache(IDS)
    ref_logits, ref = model.run_with_cache(IDS)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    for name in HOOKS:  # TransformerLens names on both sides
        torch.testing.assert_close(cache[name], ref[name], atol=1e-5, rtol=0, msg=name)
    # Norms: tnt's ln.hook_normalized is after the gain, the bridge's before it (its hook_out is after).
    tnt_norm, gain = ref["blocks.1.ln2.hook_normalized"], model.mlp_norm_gain(1).detach()
    torch.testing.assert_close(cache["blocks.1.ln2.hook_out"], tnt_norm, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache["blocks.1.ln2.hook_normalized"], tnt_norm / gain, atol=1e-5, rtol=0)


def test_transformer_lens_compatibility_mode_maps_linear_to_silu(exported):
    """The bug: compatibility mode's gated MLP resolves hidden_act='linear' to SiLU; wrong logits for bilinear.

    Workarounds (README): keep the default bridge, or enable_compatibility_mode(no_processing=True), or map
    'linear' to the identity in transformer_lens' gated_mlp.resolve_activation_fn (checked here).
    """
    bridge_mod = pytest.importorskip(
        "transformer_lens.model_bridge", reason="transformer-lens is not installed"
    )
    from transformer_lens.model_bridge.generalized_components import gated_mlp

    model, folder = exported
    ref = centered(model(IDS))

    def compat(**kw):
        bridge = bridge_mod.TransformerBridge.boot_transformers(str(folder), device="cpu")
        bridge.enable_compatibility_mode(disable_warnings=True, **kw)
        return bridge

    assert (centered(compat()(IDS)) - ref).abs().max() > 0.1  # the bug
    torch.testing.assert_close(centered(compat(no_processing=True)(IDS)), ref, atol=1e-5, rtol=0)

    original = gated_mlp.resolve_activation_fn

    def resolve(config):
        if gated_mlp._resolve_activation_fn_name(config) == "linear":
            return lambda x: x
        return original(config)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gated_mlp, "resolve_activation_fn", resolve)
        bridge = compat()  # folded norms, centred weights: exact again, up to the centred unembedding
        logits, cache = bridge.run_with_cache(IDS)
    torch.testing.assert_close(centered(logits), ref, atol=1e-5, rtol=0)
    _, tnt_cache = model.run_with_cache(IDS)
    torch.testing.assert_close(
        cache["blocks.1.mlp.hook_post"], tnt_cache["blocks.1.mlp.hook_post"], atol=1e-5, rtol=0
    )


def test_nnsight_traces_and_ablates_an_mlp(exported):
    nnsight = pytest.importorskip("nnsight", reason="nnsight is not installed")
    model, folder = exported
    lm = nnsight.TransformersModel(str(folder), task="text-generation", dispatch=True)  # 0.8's LanguageModel
    with lm.trace(IDS):
        lm.model.layers[0].mlp.output[:] = 0
        mlp1 = lm.model.layers[1].mlp.output.save()
        logits = lm.output.logits.save()

    def zero(x, hook):
        return torch.zeros_like(x)

    with model.hooks([("blocks.0.hook_mlp_out", zero)]):
        ref_logits, ref = model.run_with_cache(IDS)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(mlp1, ref["blocks.1.hook_mlp_out"], atol=1e-5, rtol=0)
    assert (ref_logits - model(IDS)).abs().max() > 0.1  # the ablation changed something
