"""model.hooks.get_act_name: TransformerLens's short names map onto this model's hook points."""

import pytest
from toy_models import random_gpt

from model.hooks import get_act_name, mlp_input_hook, mlp_output_hook


def test_short_names_are_hook_points_of_the_model():
    model = random_gpt()
    expected = {
        ("resid_pre", 1, None): "blocks.1.hook_resid_pre",
        ("resid_mid", 1, None): "blocks.1.hook_resid_mid",
        ("resid_post", 0, None): "blocks.0.hook_resid_post",
        ("attn_out", 0, None): "blocks.0.hook_attn_out",
        ("mlp_out", 1, None): "blocks.1.hook_mlp_out",
        ("pattern", 0, None): "blocks.0.attn.hook_pattern",
        ("pre", 1, None): "blocks.1.mlp.hook_pre",
        ("post", 1, None): "blocks.1.mlp.hook_post",
        ("normalized", 1, "ln2"): "blocks.1.ln2.hook_normalized",
        ("normalized", 0, "ln1"): "blocks.0.ln1.hook_normalized",
        ("normalized", None, "ln_final"): "ln_f.hook_normalized",
        ("embed", None, None): "hook_embed",
    }
    for (name, layer, layer_type), full in expected.items():
        assert get_act_name(name, layer, layer_type) == full
        assert full in model.hook_dict
    assert mlp_input_hook(1) == "blocks.1.ln2.hook_normalized"
    assert mlp_output_hook(0) == "blocks.0.hook_mlp_out"
    assert get_act_name("blocks.0.hook_mlp_out") == "blocks.0.hook_mlp_out"


def test_bad_names_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown hook name 'resid'"):
        get_act_name("resid", 0)
    with pytest.raises(ValueError, match="needs a layer index"):
        get_act_name("mlp_out")
    with pytest.raises(ValueError, match="layer_type"):
        get_act_name("normalized", 0)
