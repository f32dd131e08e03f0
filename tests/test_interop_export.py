"""model.export: tnt checkpoints as transformers folders, checked against transformers' own Qwen3/Llama forward."""

import pytest
import torch
from toy_models import random_gpt

from data.tokenizer import get_encoding
from data.vocab import CompactVocab
from model.export import export, main, qk_scale
from model.hf_import import load_external
from model.io import save_model

transformers = pytest.importorskip(
    "transformers", reason="the interop extra is not installed: pip install -e '.[interop]'"
)

TEXT = "Hello world, this is a test of the exporter.\nIt has two lines."
FULL = {"tokenizer": "gpt2", "token_ids": None}


def tnt_model(seed=0, **kw):
    """A random tnt model in the full (padded) GPT-2 vocabulary, exportable: no soft-cap."""
    return random_gpt(seed, **{"vocab_size": 50304, "logit_softcap": None, **kw})


def exported(model, tmp_path, vocab=FULL):
    ckpt = tmp_path / "ckpt"
    save_model(model, ckpt, extra_config={"vocab": vocab})
    out = export(ckpt, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    return hf, transformers.AutoTokenizer.from_pretrained(out), out


VARIANTS = {"gains": {}, "window": {"norm_gain": False, "window": 4}}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """exports(mlp, variant) -> (tnt model, transformers model, tokenizer, folder), each exported once."""
    cache = {}

    def get(mlp, variant):
        if (mlp, variant) not in cache:
            model = tnt_model(mlp=mlp, **VARIANTS[variant])
            cache[mlp, variant] = (model, *exported(model, tmp_path_factory.mktemp(f"{mlp}-{variant}")))
        return cache[mlp, variant]

    return get


@pytest.mark.parametrize("mlp", ["bilinear", "swiglu", "reglu", "geglu"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_logits_equal_tnt(exports, mlp, variant):
    model, hf, tok, _ = exports(mlp, variant)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    ids = tok(TEXT, return_tensors="pt").input_ids
    assert ids[0].tolist() == get_encoding().encode(TEXT)  # AutoTokenizer gives GPT-2's ids
    with torch.no_grad():
        ref, got = model(ids), hf(ids).logits
    assert ids.shape[1] > 8  # longer than the window: the sliding mask is exercised
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_window_is_exercised(exports):
    """Guard for the test above: without the window, tnt's logits differ from the export's."""
    model, hf, tok, _ = exports("bilinear", "window")
    ids = tok(TEXT, return_tensors="pt").input_ids
    full = tnt_model(**{**VARIANTS["window"], "window": None})
    full.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (full(ids) - hf(ids).logits).abs().max() > 1e-2


def test_qk_norm_eps_is_kept_when_q_is_small(tmp_path):
    """tnt's QK-norm eps (float32 machine epsilon) differs from rms_norm_eps=1e-6; with |q|² ~ eps it matters.

    The export scales W_Q, W_K so Qwen3's norm with eps 1e-6 equals tnt's; a plain copy would be far off.
    """
    model = tnt_model(mlp="swiglu")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.c_qkv.weight[: 2 * model.config.d_model] *= 2e-3  # q, k rms ~ 1e-3
    hf, tok, out = exported(model, tmp_path)
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids)
        torch.testing.assert_close(hf(ids).logits, ref, atol=1e-5, rtol=0)
        for layer in hf.model.layers:  # undo the scale: the eps mismatch shows
            layer.self_attn.q_proj.weight /= qk_scale(model.config)
            layer.self_attn.k_proj.weight /= qk_scale(model.config)
        assert (hf(ids).logits - ref).abs().max() > 1e-3


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_generation_is_identical(exports, variant):
    model, hf, tok, _ = exports("bilinear", variant)  # with a window, the KV cache slides
    ids = tok("ROMEO:", return_tensors="pt").input_ids
    hf.generation_config.eos_token_id = None  # 20 tokens whatever comes
    got = hf.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0)
    ref = ids
    with torch.no_grad():
        for _ in range(20):
            ref = torch.cat((ref, model(ref)[:, -1:].argmax(-1)), dim=1)
    assert got.tolist() == ref.tolist()


def test_compact_vocabulary_tokenizer_gives_model_ids(tmp_path):
    enc = get_encoding()
    gpt2 = sorted(set(enc.encode(TEXT)) | {50256})
    vocab = CompactVocab(tuple(gpt2))
    model = tnt_model(vocab_size=vocab.model_vocab_size)
    hf, tok, _ = exported(model, tmp_path, vocab.to_config())
    ids = tok(TEXT, return_tensors="pt").input_ids
    expected = vocab.encode_tensor(torch.tensor(enc.encode(TEXT)))
    assert ids[0].tolist() == expected.tolist()
    assert tok.decode(ids[0]) == TEXT
    assert tok.eos_token_id == hf.config.eos_token_id == vocab.encode_tensor(torch.tensor([50256])).item()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=0)
    unseen = tok(" zebra", add_special_tokens=False).input_ids  # no token of it is in the compact vocabulary
    assert min(unseen) >= model.config.vocab_size


def test_export_import_round_trip(exports):
    model, _, _, out = exports("geglu", "window")
    back = load_external(out)
    assert back.model.config == model.config  # qk_norm_eps None again: the export's scale is undone
    assert back.vocab == FULL and back.tokenizer_files == []
    ids = torch.tensor([get_encoding().encode(TEXT)])
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids), model(ids), atol=1e-5, rtol=0)


def test_export_command_writes_a_loadable_folder_from_a_run(tmp_path, capsys):
    model = tnt_model()
    run = tmp_path / "run"
    save_model(model, run / "ckpt_000010", extra_config={"vocab": FULL, "train": {"seq_len": 96}})
    (run / "LATEST").write_text("ckpt_000010\n")
    assert main([str(run), "--out", str(tmp_path / "hf")]) == 0
    assert "Qwen3ForCausalLM" in capsys.readouterr().out
    cfg = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert cfg.max_position_embeddings == 96 and cfg.hidden_act == "linear"
    assert {"tokenizer.json", "model.safetensors", "config.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()
    }


def test_multilinear_of_order_two_exports_as_bilinear(tmp_path):
    model = tnt_model(mlp="multilinear", mlp_order=2)
    hf, tok, _ = exported(model, tmp_path)
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-5, rtol=0)
