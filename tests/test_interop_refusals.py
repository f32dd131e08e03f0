"""What the interop cannot represent exactly is refused with a one-line error naming the option (no extra needed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_interop_import import write_tdooms
from toy_models import random_gpt

from model import ConfigError, GPTConfig, load_model
from model.export import ExportError, check_exportable, hf_config, hf_state_dict, main
from model.hf_import import ExternalModelError, load_external
from model.hf_import import main as import_main
from model.io import save_model

REPO = Path(__file__).resolve().parents[1]
SMALL = {"vocab_size": 64, "n_layer": 2, "n_head": 2, "d_model": 16, "mlp": "bilinear", "logit_softcap": None}

REFUSED = [
    ({"logit_softcap": 30.0}, "logit_softcap=30.0"),
    ({"value_embeds": True}, "value_embeds=True"),
    ({"unet_skips": True}, "unet_skips=True"),
    ({"mlp": "relu2"}, "mlp='relu2'"),
    ({"mlp": "gelu"}, "mlp='gelu'"),
    ({"mlp": "multilinear", "mlp_order": 3}, "mlp_order=3"),
    ({"qk_norm": False, "window": 8}, "window=8"),
]


@pytest.mark.parametrize(("fields", "named"), REFUSED, ids=[r[1] for r in REFUSED])
def test_export_refuses_options_without_an_exact_equivalent(fields, named):
    with pytest.raises(ExportError, match=f"^GPTConfig.{named} has no exact transformers equivalent: [^;]*$"):
        check_exportable(GPTConfig(**{**SMALL, **fields}))


def test_export_names_every_refused_option():
    with pytest.raises(ExportError, match="logit_softcap=30.0.*; GPTConfig.unet_skips=True"):
        check_exportable(GPTConfig(**{**SMALL, "logit_softcap": 30.0, "unet_skips": True}))


def test_export_command_refuses_with_one_line(tmp_path, capsys):
    save_model(random_gpt(0, logit_softcap=30.0), tmp_path / "ckpt", extra_config={})
    assert main([str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: GPTConfig.logit_softcap=30.0") and "\n" not in err
    assert not (tmp_path / "hf").exists()


def test_old_checkpoints_load_with_the_original_norms(tmp_path):
    """Checkpoints written before norm_eps / qk_norm / qk_norm_eps existed load with the defaults."""
    model = random_gpt(0)
    save_model(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for k in ("norm_eps", "qk_norm", "qk_norm_eps"):
        cfg["model"].pop(k)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    assert (loaded.config.norm_eps, loaded.config.qk_norm, loaded.config.qk_norm_eps) == (1e-6, True, None)


@pytest.mark.parametrize(
    ("field", "value"), [("norm_eps", 0.0), ("norm_eps", None), ("qk_norm_eps", 2.0), ("qk_norm", "yes")]
)
def test_config_validates_the_new_fields(field, value):
    with pytest.raises(ConfigError, match=f"GPTConfig.{field}"):
        GPTConfig(**{**SMALL, field: value})


def write_hf(root, model, **config_changes):
    """A transformers folder written without transformers: export's config fields and tensors, then edited."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = {**hf_config(model.config), **config_changes}
    (root / "config.json").write_text(json.dumps(cfg))
    safetensors.torch.save_file(hf_state_dict(model), str(root / "model.safetensors"))
    (root / "tokenizer.json").write_text("{}")
    return root


HF_REFUSED = [
    ({"num_key_value_heads": 1}, "num_key_value_heads=1"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"attention_bias": True}, "attention_bias=True"),
    ({"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 4}, "layer_types="),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, "rope_type='linear'"),
    ({"model_type": "gpt2"}, "model_type='gpt2'"),
]


@pytest.mark.parametrize(("changes", "named"), HF_REFUSED, ids=[r[1] for r in HF_REFUSED])
def test_transformers_import_refuses(tmp_path, changes, named):
    src = write_hf(tmp_path / "hf", random_gpt(0, logit_softcap=None), **changes)
    with pytest.raises(ExternalModelError, match=f"config.json: {named}"):
        load_external(src)


def test_transformers_import_refuses_qk_norm_gains_and_unknown_tensors(tmp_path):
    model = random_gpt(0, logit_softcap=None)
    src = write_hf(tmp_path / "hf", model)
    tensors = hf_state_dict(model)
    tensors["model.layers.1.self_attn.k_norm.weight"] = torch.full((8,), 2.0)
    safetensors.torch.save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(ExternalModelError, match=r"layers\.1\.self_attn\.k_norm\.weight.*no gain"):
        load_external(src)
    tensors = {**hf_state_dict(model), "model.layers.0.mlp.extra.weight": torch.zeros(2)}
    safetensors.torch.save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(
        ExternalModelError, match=r"no tnt equivalent: \['model\.layers\.0\.mlp\.extra\.weight'\]"
    ):
        load_external(src)


TDOOMS_REFUSED = [
    ({"gate": "gelu"}, "gate='gelu'.*erf"),
    ({"bias": True}, "bias=True"),
    ({"bilinear": False}, "bilinear=False"),
    ({"normalization": False}, "normalization=False"),
]


@pytest.mark.parametrize(
    ("changes", "named"), TDOOMS_REFUSED, ids=[r[1].split(".")[0] for r in TDOOMS_REFUSED]
)
def test_tdooms_import_refuses(tmp_path, changes, named):
    write_tdooms(tmp_path / "src")
    cfg = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps({**cfg, **changes}))
    with pytest.raises(ExternalModelError, match=f"config.json: {named}"):
        load_external(tmp_path / "src")


def test_tdooms_import_refuses_wrong_shapes_with_one_line(tmp_path, capsys):
    _, tensors = write_tdooms(tmp_path / "src")
    tensors["transformer.h.1.mlp.p.weight"] = torch.zeros(16, 5)
    safetensors.torch.save_file(tensors, str(tmp_path / "src" / "model.safetensors"))
    assert import_main([str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "'transformer.h.1.mlp.p.weight' has shape (16, 5), config implies (16, 24)" in err and "\n" not in err
    )
    assert not (tmp_path / "out").exists()


def test_core_package_imports_none_of_the_interop_libraries():
    code = (
        "import sys, model, model.export, model.hf_import, decomp, analysis.report, data, kernels\n"
        "print(sorted(m for m in ('transformers', 'transformer_lens', 'nnsight', 'tokenizers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
