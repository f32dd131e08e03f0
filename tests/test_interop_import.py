"""model.hf_import: tdooms bilinear checkpoints and transformers Qwen3/Llama folders, against independent forwards."""

import json
import math

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

import decomp
from analysis.checkpoint import load_checkpoint
from analysis.report import ReportOptions, run_analyses, summary_json
from analysis.tokens import TokenText
from data.shards import write_shard
from model import load_model
from model.hf_import import import_checkpoint, load_external

WORDS = ["[EOS]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "apple", "tree"]


def write_tdooms(root, seed=0, gate=None, n_layer=2, n_head=2, d=16, h=24, vocab=40, tokenizer="gpt2", **cfg):
    """A checkpoint in the tdooms/bilinear-decomposition format (config fields and tensor names of theirs)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    D = d // n_head
    tensors = {"transformer.wte.weight": rnd(vocab, d), "lm_head.weight": rnd(vocab, d)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        tensors[p + "attn.qkv.weight"] = rnd(3 * d, d)
        tensors[p + "attn.o.weight"] = rnd(d, d)
        tensors[p + "attn.rotary.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
        tensors[p + "mlp.w.weight"] = rnd(2 * h, d)
        tensors[p + "mlp.p.weight"] = rnd(d, h)
    config = dict(
        n_head=n_head, n_layer=n_layer, n_ctx=64, d_model=d, d_hidden=h, bilinear=True, gate=gate, bias=False,
        normalization=True, tokenizer=tokenizer, **cfg,
    )  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    safetensors.torch.save_file(tensors, str(root / "model.safetensors"))
    return config, tensors


def word_tokenizer(folder):
    """A word-level tokenizer over WORDS (not GPT-2), saved as folder/tokenizer.json by the tokenizers package."""
    tokenizers = pytest.importorskip("tokenizers", reason="the interop extra is not installed")
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[EOS]")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))


def tdooms_forward(config: dict, t: dict, ids: torch.Tensor) -> torch.Tensor:
    """Their forward, written from their source (not tnt's): HF rotary, 1/√(2L) on attention, eps 1e-8."""
    L, H, d = config["n_layer"], config["n_head"], config["d_model"]
    D, T = d // H, ids.shape[1]
    act = {None: lambda x: x, "relu": torch.relu, "silu": F.silu}[config["gate"]]

    def norm(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-8)

    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    freqs = torch.einsum("i,j->ij", torch.arange(T).float(), inv_freq)
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos(), emb.sin()

    def rotary(x):  # x [B, H, T, D]; (x cos) + (rotate_half(x) sin)
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat((-x2, x1), -1) * sin

    x = t["transformer.wte.weight"][ids]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(L):
        p = f"transformer.h.{i}."
        qkv = (
            norm(x) @ t[p + "attn.qkv.weight"].T
        )  # 'batch seq (n n_head d_head) -> n batch n_head seq d_head'
        q, k, v = qkv.view(*ids.shape, 3, H, D).permute(2, 0, 3, 1, 4)
        scores = torch.einsum("bhqd,bhkd->bhqk", rotary(q), rotary(k)) / math.sqrt(D)
        pattern = scores.masked_fill(~causal, -torch.inf).softmax(-1)
        z = torch.einsum("bhqk,bhkd->bqhd", pattern, v).reshape(*ids.shape, d)
        x = x + (z @ t[p + "attn.o.weight"].T) / math.sqrt(2 * L)
        left, right = (norm(x) @ t[p + "mlp.w.weight"].T).chunk(2, -1)
        x = x + (act(left) * right) @ t[p + "mlp.p.weight"].T
    return norm(x) @ t["lm_head.weight"].T


@pytest.mark.parametrize("gate", [None, "relu", "silu"])
def test_tdooms_logits_equal_their_forward(tmp_path, gate):
    config, tensors = write_tdooms(tmp_path / "src", gate=gate)
    imported = load_external(tmp_path / "src")
    cfg = imported.model.config
    assert (cfg.mlp, cfg.qk_norm, cfg.norm_eps, cfg.norm_gain) == (
        {None: "bilinear", "relu": "reglu", "silu": "swiglu"}[gate], False, 1e-8, False,
    )  # fmt: skip
    ids = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            imported.model(ids), tdooms_forward(config, tensors, ids), atol=1e-5, rtol=1e-5
        )


def test_tdooms_import_command_and_decomp(tmp_path):
    config, tensors = write_tdooms(tmp_path / "src")
    out = import_checkpoint(tmp_path / "src", tmp_path / "tnt")
    model = load_model(out)  # a plain tnt checkpoint now
    saved = json.loads((out / "config.json").read_text())
    assert (
        saved["vocab"] == {"tokenizer": "gpt2", "token_ids": None} and saved["source"]["format"] == "tdooms"
    )
    ids = torch.randint(0, 40, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), tdooms_forward(config, tensors, ids), atol=1e-5, rtol=1e-5)
    # decomp reads the layer as a CP tensor: B(x, x) must be their P((Wx) ⊙ (Vx)) on normalised inputs.
    cp = decomp.cp_from_model(model, layer=1)
    x = torch.randn(5, 16, dtype=torch.float64)
    w, v = tensors["transformer.h.1.mlp.w.weight"].double().chunk(2)
    expected = ((x @ w.T) * (x @ v.T)) @ tensors["transformer.h.1.mlp.p.weight"].double().T
    torch.testing.assert_close(decomp.cp_apply(cp, x), expected)


def test_tdooms_with_its_own_tokenizer_decodes_through_it_in_analysis(tmp_path, capsys):
    """A non-GPT-2 tokenizer: the checkpoint carries it, analysis decodes and encodes tokens with it."""
    word_tokenizer(tmp_path / "tok")
    write_tdooms(tmp_path / "src", vocab=len(WORDS), tokenizer="ts-4096")
    with pytest.raises(Exception, match="tokenizer 'ts-4096' is not GPT-2.*--tokenizer"):
        import_checkpoint(tmp_path / "src", tmp_path / "no")
    out = import_checkpoint(tmp_path / "src", tmp_path / "tnt", tokenizer=tmp_path / "tok")
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    ckpt = load_checkpoint(out)
    text = TokenText(ckpt.vocab, ckpt.model.config.vocab_size, ckpt.tokenizer)
    assert [text.text(i) for i in range(len(WORDS))] == WORDS
    assert text.encode_single("apple") == WORDS.index("apple")
    assert text.decode([1, 2, 3]) == "the cat sat"
    # decomp's readouts decode through it
    cp = decomp.cp_from_model(ckpt.model, layer=0)
    eig = decomp.eigendecompose(cp, ckpt.model.w_u[WORDS.index("cat")].double())
    readout = decomp.eigen_readouts(
        eig, cp, ckpt.model.w_e.double(), ckpt.model.w_u.double(), n=1, k=3, decode=text.text
    )
    assert {t.text for t in readout[0].inputs.positive + readout[0].inputs.negative} <= set(WORDS)
    # the report's analyses run on it, validation shards in the model's own ids; tokens read through its tokenizer
    write_shard(tmp_path / "val_000000.bin", np.random.default_rng(0).integers(0, len(WORDS), size=300))
    opts = ReportOptions(
        checkpoint=str(out), out=tmp_path / "report", val_files=str(tmp_path / "val_*.bin"), val_tokens=128,
        tokens=["apple", "tree"], ranks=(2,), ks=(1,), noise_seeds=1, steer_sequences=1, progress=False,
    )  # fmt: skip
    res = run_analyses(opts)
    assert [t["text"] for t in summary_json(opts, res)["tokens"]] == ["apple", "tree"]
    assert {t.text for t in res.spectra[0].tokens[0].readouts[0].inputs.positive} <= set(WORDS)


def qwen3_folder(tmp_path, hidden_act="silu", tie=False, model_type="qwen3", **extra):
    """A random transformers model saved by transformers (random norm gains), with a GPT-2 tokenizer."""
    transformers = pytest.importorskip("transformers", reason="the interop extra is not installed")
    from model.export import gpt2_tokenizer

    torch.manual_seed(0)
    fields = dict(
        vocab_size=50304, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, head_dim=8, hidden_act=hidden_act, tie_word_embeddings=tie, rms_norm_eps=1e-5,
        **extra,
    )  # fmt: skip
    cls = {"qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}.get(
        model_type, (transformers.LlamaConfig, transformers.LlamaForCausalLM)
    )
    hf = cls[1](cls[0](**fields)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.uniform_(0.5, 1.5)
            elif p.ndim == 2:
                p.normal_(0, 0.3)
    hf.save_pretrained(tmp_path / "hf")
    gpt2_tokenizer(None, 50304).save_pretrained(tmp_path / "hf")
    return hf


@pytest.mark.parametrize(
    ("kind", "kw"),
    [
        ("qwen3", {"hidden_act": "silu"}),
        (
            "qwen3",
            {"hidden_act": "linear", "use_sliding_window": True, "sliding_window": 3, "max_window_layers": 0},
        ),
        ("llama", {"hidden_act": "gelu_pytorch_tanh", "tie": True}),
    ],
    ids=["qwen3-swiglu", "qwen3-bilinear-window", "llama-geglu-tied"],
)
def test_transformers_folder_imports_with_its_logits(tmp_path, kind, kw):
    hf = qwen3_folder(tmp_path, model_type=kind, **kw)
    out = import_checkpoint(tmp_path / "hf", tmp_path / "tnt")
    model = load_model(out)
    assert model.config.qk_norm == (kind == "qwen3") and model.config.norm_gain
    ids = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=1e-5)
    assert (out / "tokenizer" / "tokenizer.json").is_file()  # its own tokenizer comes along
    ckpt = load_checkpoint(out)
    assert (
        TokenText(ckpt.vocab, model.config.vocab_size, ckpt.tokenizer).decode([15496, 995]) == "Hello world"
    )


def test_tdooms_model_exports_to_llama_with_its_tokenizer(tmp_path):
    """No QK-norm: the export is a LlamaForCausalLM; its own tokenizer travels with it."""
    transformers = pytest.importorskip("transformers", reason="the interop extra is not installed")
    from model.export import export

    config, tensors = write_tdooms(tmp_path / "src", gate="silu", vocab=len(WORDS), tokenizer="ts-4096")
    word_tokenizer(tmp_path / "src")  # in the source folder this time
    out = export(import_checkpoint(tmp_path / "src", tmp_path / "tnt"), tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = transformers.AutoTokenizer.from_pretrained(out)(
        "the cat sat on a mat", return_tensors="pt"
    ).input_ids
    assert ids[0].tolist() == [1, 2, 3, 4, 6, 5]
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, tdooms_forward(config, tensors, ids), atol=1e-5, rtol=1e-5)
