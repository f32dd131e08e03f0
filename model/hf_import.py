"""Import external models into tnt: Hugging Face Qwen3/Llama folders and tdooms bilinear checkpoints.

``python -m model.hf_import SRC --out DIR [--tokenizer TOKENIZER_DIR]`` writes a tnt checkpoint folder
(``model.safetensors``, ``config.json`` and, for a tokenizer other than GPT-2, ``tokenizer/``) that
``model.load_model``, ``decomp`` and ``python -m analysis`` read like any other. A GPT-2 model keeps tnt's
``"vocab"`` entry; any other tokenizer is named by ``"tokenizer": {"kind": "hf", "dir": "tokenizer"}`` in
config.json, and its ids are the model's ids.

Sources (each a folder with ``config.json`` and ``model.safetensors``, as ``save_pretrained`` writes them):

- **Qwen3** (``model_type: qwen3``; the inverse of ``model.export``) and **Llama** (``model_type: llama``, no
  QK-norm) whose gated MLP uses ``hidden_act`` linear, silu, relu or gelu_pytorch_tanh — tnt's bilinear, swiglu,
  reglu and geglu. Grouped-query attention, biases, RoPE scaling, gains on q_norm/k_norm and mixed
  sliding/full layers have no tnt equivalent and are refused.
- **tdooms/bilinear-decomposition** language models (config fields n_head, n_layer, n_ctx, d_model, d_hidden,
  bilinear, gate, bias, normalization, tokenizer): no QK-norm, parameter-free RMSNorm with eps 1e-8, HF's rotary
  convention, and x + attn(n1(x))/√(2L): the 1/√(2L) folds into the output projection.

Rotary: tnt rotates (x₁, x₂) by −θ, HF by +θ. With F = diag(1, −1) on the two halves of a head,
HF(F x) = F tnt(x), and F is orthogonal and commutes with the parameter-free QK-norm, so negating rows
[D/2, D) of every head of W_Q and W_K maps one convention onto the other exactly (``flip_rotary_rows``).

Needs no transformers: config.json and safetensors are read directly. Decoding with a non-GPT-2 tokenizer needs
the ``tokenizers`` package (``pip install -e '.[interop]'``), imported only when used.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ConfigError, GPTConfig
from .gpt import GPT
from .io import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, load_tensors, read_json, save_model

# HF hidden_act of a gated MLP  <->  tnt MLP kind (ACT2FN["linear"] is the identity; gelu is the tanh form).
HF_ACT_TO_MLP = {"linear": "bilinear", "silu": "swiglu", "relu": "reglu", "gelu_pytorch_tanh": "geglu"}
MLP_TO_HF_ACT = {v: k for k, v in HF_ACT_TO_MLP.items()}
TDOOMS_GATE_TO_MLP = {None: "bilinear", "relu": "reglu", "silu": "swiglu"}
TDOOMS_EPS = 1e-8
TOKENIZER_DIR = "tokenizer"  # inside a tnt checkpoint: the files of a tokenizer other than GPT-2
TOKENIZER_ENTRY = {"kind": "hf", "dir": TOKENIZER_DIR}  # config.json "tokenizer" of such a checkpoint
INSTALL_HINT = "pip install -e '.[interop]'"


class ExternalModelError(CheckpointError):
    """An external checkpoint cannot be represented exactly by tnt; the message names the file and field."""


def flip_rotary_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Negate rows [D/2, D) of every head of a [n_head·D, d] projection (its own inverse).

    Maps W_Q, W_K between tnt's rotary (rotation by −θ) and HF's (+θ); see the module docstring.
    """
    D = w.shape[0] // n_head
    sign = torch.ones(D, dtype=w.dtype, device=w.device)
    sign[D // 2 :] = -1
    return (w.view(n_head, D, -1) * sign[None, :, None]).reshape(w.shape)


@dataclass
class Imported:
    """A model read from an external folder, and what its tnt checkpoint records beside it."""

    model: GPT
    vocab: dict | None  # GPT-2 models: the config.json "vocab" entry; None: the model's own tokenizer (files)
    source: dict  # provenance: {"format": ..., "path": ..., "n_ctx": ...}
    tokenizer_files: list[Path] = field(default_factory=list)  # copied into DIR/tokenizer/ on import


def detect_format(directory: str | Path) -> str:
    """'tnt', 'hf' (a transformers folder) or 'tdooms', from the folder's config.json."""
    cfg = read_json(Path(directory) / CONFIG_FILE)
    if isinstance(cfg.get("model"), dict):
        return "tnt"
    if {"n_layer", "d_model", "d_hidden", "bilinear"} <= set(cfg):  # their configs also carry model_type ""
        return "tdooms"
    if "model_type" in cfg and "hidden_size" in cfg:
        return "hf"
    raise ExternalModelError(
        f"{Path(directory) / CONFIG_FILE}: not a tnt, transformers (model_type, hidden_size) or tdooms "
        "(n_layer, d_model, d_hidden, bilinear) config"
    )


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors``, or of the shards named by ``model.safetensors.index.json``."""
    index = directory / f"{WEIGHTS_FILE}.index.json"
    if not (directory / WEIGHTS_FILE).is_file() and index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ExternalModelError(f"{index}: missing the 'weight_map' object")
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(load_tensors(directory / shard))
        return out
    return load_tensors(directory / WEIGHTS_FILE)


class _Weights:
    """Takes tensors by name, checking shapes; ``finish`` refuses any tensor left unused."""

    def __init__(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        self.tensors, self.path, self.used = tensors, path, set()

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in self.tensors:
            raise ExternalModelError(f"{self.path}: missing tensor {name!r}")
        t = self.tensors[name]
        if tuple(t.shape) != shape:
            raise ExternalModelError(
                f"{self.path}: tensor {name!r} has shape {tuple(t.shape)}, config implies {shape}"
            )
        self.used.add(name)
        return t.float()

    def has(self, name: str) -> bool:
        return name in self.tensors

    def finish(self, ignored: Iterable[str] = ()) -> None:
        extra = sorted(set(self.tensors) - self.used - set(ignored))
        if extra:
            raise ExternalModelError(
                f"{self.path}: tensors with no tnt equivalent: {extra[:5]}{'…' if len(extra) > 5 else ''}"
            )


def _field(cfg: dict, name: str, path: Path, types: type | tuple[type, ...] = int):
    if name not in cfg:
        raise ExternalModelError(f"{path}: missing field {name!r}")
    value = cfg[name]
    if (isinstance(value, bool) and types is int) or not isinstance(value, types):
        raise ExternalModelError(f"{path}: field {name!r} = {value!r} has the wrong type")
    return value


def _refuse(path: Path, name: str, value, why: str) -> None:
    raise ExternalModelError(f"{path}: {name}={value!r} is not supported: {why}")


def _is_ones(t: torch.Tensor) -> bool:
    return bool((t == 1).all())


# ---- transformers folders (Qwen3, Llama) ----


def _hf_layer_window(cfg: dict, path: Path, n_layer: int) -> int | None:
    """tnt's window from HF's layer_types / use_sliding_window (all layers alike, else refused)."""
    types = cfg.get("layer_types")
    if types is None:
        sliding = bool(cfg.get("use_sliding_window")) and cfg.get("sliding_window") is not None
        start = cfg.get("max_window_layers", 0) if sliding else n_layer
        types = ["sliding_attention" if sliding and i >= start else "full_attention" for i in range(n_layer)]
    if len(types) != n_layer or set(types) - {"sliding_attention", "full_attention"}:
        _refuse(path, "layer_types", types, "expected one 'full_attention'/'sliding_attention' per layer")
    if len(set(types)) > 1:
        _refuse(path, "layer_types", types, "tnt uses one attention span for every layer")
    if types[0] == "full_attention":
        return None
    window = cfg.get("sliding_window")
    if not isinstance(window, int) or window <= 0:
        _refuse(path, "sliding_window", window, "sliding layers need a positive window")
    return window


def _rope_base(cfg: dict, path: Path) -> float:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        _refuse(path, "rope_type", kind, "tnt's rotary has no scaling")
    base = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if not isinstance(base, int | float) or base <= 0:
        _refuse(path, "rope_theta", base, "must be a positive number")
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        _refuse(path, "partial_rotary_factor", cfg["partial_rotary_factor"], "tnt rotates the whole head")
    return float(base)


def load_hf(directory: str | Path, tokenizer: Path | None = None) -> Imported:
    """A transformers Qwen3/Llama folder -> a tnt GPT computing the same logits (see the module docstring)."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    cfg = read_json(path)
    model_type = cfg.get("model_type")
    if model_type not in ("qwen3", "llama"):
        _refuse(path, "model_type", model_type, "tnt imports qwen3 and llama folders")
    d = _field(cfg, "hidden_size", path)
    n_layer = _field(cfg, "num_hidden_layers", path)
    n_head = _field(cfg, "num_attention_heads", path)
    h = _field(cfg, "intermediate_size", path)
    vocab = _field(cfg, "vocab_size", path)
    act = cfg.get("hidden_act", "silu")
    if act not in HF_ACT_TO_MLP:
        _refuse(path, "hidden_act", act, f"tnt's gated MLPs use {', '.join(HF_ACT_TO_MLP)}")
    if cfg.get("num_key_value_heads", n_head) not in (None, n_head):
        _refuse(path, "num_key_value_heads", cfg["num_key_value_heads"], "grouped-query attention")
    head_dim = cfg.get("head_dim") or d // n_head
    if head_dim * n_head != d:
        _refuse(path, "head_dim", head_dim, f"tnt's heads split hidden_size={d} into {n_head}")
    for name in ("attention_bias", "mlp_bias"):
        if cfg.get(name):
            _refuse(path, name, True, "tnt's linear layers have no bias")
    if cfg.get("final_logit_softcapping") or cfg.get("attn_logit_softcapping"):
        _refuse(path, "softcapping", True, "not in a qwen3/llama forward")
    eps = cfg.get("rms_norm_eps", 1e-6)
    window = _hf_layer_window(cfg, path, n_layer)
    if model_type == "llama" and window is not None:
        _refuse(path, "sliding_window", window, "llama has no sliding window")
    qk_norm = model_type == "qwen3"
    # A tnt export scaled W_Q, W_K by s to keep its QK-norm eps (model.export.qk_scale): undo it.
    tnt = cfg.get("tnt") if isinstance(cfg.get("tnt"), dict) else {}
    s = float(tnt.get("qk_scale", 1.0)) if qk_norm else 1.0
    qk_eps = tnt.get("qk_norm_eps", eps) if "qk_scale" in tnt else eps

    w = _Weights(read_weights(directory), directory / WEIGHTS_FILE)
    state: dict[str, torch.Tensor] = {"wte.weight": w.take("model.embed_tokens.weight", (vocab, d))}
    gains: dict[str, torch.Tensor] = {}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        q = flip_rotary_rows(w.take(p + "self_attn.q_proj.weight", (d, d)), n_head) / s
        k = flip_rotary_rows(w.take(p + "self_attn.k_proj.weight", (d, d)), n_head) / s
        v = w.take(p + "self_attn.v_proj.weight", (d, d))
        state[f"blocks.{i}.attn.c_qkv.weight"] = torch.cat((q, k, v))
        state[f"blocks.{i}.attn.c_proj.weight"] = w.take(p + "self_attn.o_proj.weight", (d, d))
        if qk_norm:
            for name in ("q_norm", "k_norm"):
                if not _is_ones(w.take(p + f"self_attn.{name}.weight", (head_dim,))):
                    _refuse(
                        w.path, f"{p}self_attn.{name}.weight", "not all ones", "tnt's QK-norm has no gain"
                    )
        gate = w.take(p + "mlp.gate_proj.weight", (h, d))
        up = w.take(p + "mlp.up_proj.weight", (h, d))
        state[f"blocks.{i}.mlp.c_fc.weight"] = torch.cat((gate, up))
        state[f"blocks.{i}.mlp.c_proj.weight"] = w.take(p + "mlp.down_proj.weight", (d, h))
        gains[f"blocks.{i}.ln1.weight"] = w.take(p + "input_layernorm.weight", (d,))
        gains[f"blocks.{i}.ln2.weight"] = w.take(p + "post_attention_layernorm.weight", (d,))
    gains["ln_f.weight"] = w.take("model.norm.weight", (d,))
    if w.has("lm_head.weight"):
        state["lm_head.weight"] = w.take("lm_head.weight", (vocab, d))
    elif cfg.get("tie_word_embeddings", False):
        state["lm_head.weight"] = state["wte.weight"].clone()  # tnt's head is untied: a copy
    else:
        raise ExternalModelError(
            f"{w.path}: missing tensor 'lm_head.weight' (and tie_word_embeddings is false)"
        )
    w.finish(ignored={n for n in w.tensors if n.endswith("rotary_emb.inv_freq")})
    norm_gain = not all(_is_ones(g) for g in gains.values())
    if norm_gain:
        state.update(gains)

    gpt_cfg = _gpt_config(
        path,
        vocab_size=vocab,
        n_layer=n_layer,
        n_head=n_head,
        d_model=d,
        mlp=HF_ACT_TO_MLP[act],
        mlp_hidden=h,
        window=window,
        logit_softcap=None,
        norm_gain=norm_gain,
        rope_base=_rope_base(cfg, path),
        norm_eps=eps,
        qk_norm=qk_norm,
        qk_norm_eps=qk_eps if qk_norm else None,
    )
    vocab_entry, files = _tokenizer_entry(directory, tokenizer, tnt.get("vocab"), path, "of this folder")
    source = {"format": model_type, "path": str(directory), "n_ctx": cfg.get("max_position_embeddings")}
    return Imported(_build(gpt_cfg, state), vocab_entry, source, files)


# ---- tdooms/bilinear-decomposition checkpoints ----


def load_tdooms(directory: str | Path, tokenizer: Path | None = None) -> Imported:
    """A tdooms bilinear language model -> a tnt GPT computing the same logits.

    Their forward: x = wte(ids); per layer x += attn(N(x))/√(2L) with HF rotary and no QK-norm, then
    x += P(gate(W N(x)) ⊙ V N(x)) with [W; V] = mlp.w.weight; logits = lm_head(N(x)), N(x) = x/√(mean x² + 1e-8).
    """
    directory = Path(directory)
    path = directory / CONFIG_FILE
    cfg = read_json(path)
    n_layer, n_head, d, h = (_field(cfg, k, path) for k in ("n_layer", "n_head", "d_model", "d_hidden"))
    if cfg.get("bilinear") is not True:
        _refuse(path, "bilinear", cfg.get("bilinear"), "only the gated (bilinear) MLP has a tnt equivalent")
    gate = cfg.get("gate")
    if gate not in TDOOMS_GATE_TO_MLP:
        why = "nn.GELU is the exact erf form; tnt's geglu uses the tanh form" if gate == "gelu" else ""
        _refuse(path, "gate", gate, why or f"expected one of {list(TDOOMS_GATE_TO_MLP)}")
    if cfg.get("bias"):
        _refuse(path, "bias", True, "tnt's linear layers have no bias")
    if cfg.get("normalization", True) is not True:
        _refuse(path, "normalization", cfg.get("normalization"), "tnt's blocks always apply RMSNorm")
    if d % n_head or (d // n_head) % 2:
        _refuse(path, "n_head", n_head, f"must split d_model={d} into heads of even size")
    w = _Weights(read_weights(directory), directory / WEIGHTS_FILE)
    if "transformer.wte.weight" not in w.tensors:
        raise ExternalModelError(f"{w.path}: missing tensor 'transformer.wte.weight'")
    vocab = w.tensors["transformer.wte.weight"].shape[0]
    D = d // n_head
    expected_inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    scale = 1.0 / math.sqrt(2.0 * n_layer)
    state = {"wte.weight": w.take("transformer.wte.weight", (vocab, d))}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        qkv = w.take(p + "attn.qkv.weight", (3 * d, d))
        q, k, v = qkv.chunk(3)
        state[f"blocks.{i}.attn.c_qkv.weight"] = torch.cat(
            (flip_rotary_rows(q, n_head), flip_rotary_rows(k, n_head), v)
        )
        state[f"blocks.{i}.attn.c_proj.weight"] = scale * w.take(p + "attn.o.weight", (d, d))
        state[f"blocks.{i}.mlp.c_fc.weight"] = w.take(p + "mlp.w.weight", (2 * h, d))  # chunk(2): W, then V
        state[f"blocks.{i}.mlp.c_proj.weight"] = w.take(p + "mlp.p.weight", (d, h))
        name = p + "attn.rotary.inv_freq"
        if w.has(name) and not torch.allclose(w.take(name, (D // 2,)), expected_inv_freq, rtol=1e-6, atol=0):
            _refuse(w.path, name, "not base 10000", "their Rotary always uses base 10000")
    state["lm_head.weight"] = w.take("lm_head.weight", (vocab, d))
    w.finish()
    gpt_cfg = _gpt_config(
        path,
        vocab_size=vocab,
        n_layer=n_layer,
        n_head=n_head,
        d_model=d,
        mlp=TDOOMS_GATE_TO_MLP[gate],
        mlp_hidden=h,
        logit_softcap=None,
        norm_eps=TDOOMS_EPS,
        qk_norm=False,
    )
    name = cfg.get("tokenizer")
    gpt2 = {"tokenizer": "gpt2"} if name == "gpt2" else None
    vocab_entry, files = _tokenizer_entry(directory, tokenizer, gpt2, path, repr(name))
    source = {"format": "tdooms", "path": str(directory), "n_ctx": cfg.get("n_ctx"), "tokenizer": name}
    return Imported(_build(gpt_cfg, state), vocab_entry, source, files)


def _tokenizer_entry(
    directory: Path, override: Path | None, known: dict | None, path: Path, name: str
) -> tuple[dict, list[Path]]:
    """The "vocab" entry (GPT-2; else None) and the tokenizer files to copy.

    ``override`` (a folder holding tokenizer.json) wins; then GPT-2 when ``known`` says so (tnt decodes it with
    its own BPE, through a compact vocabulary if ``known`` has token_ids); then the source folder's tokenizer.json.
    """
    if override is None and known is not None and known.get("tokenizer", "gpt2") == "gpt2":
        return {"token_ids": None, **known, "tokenizer": "gpt2"}, []
    files = tokenizer_files(override if override is not None else directory)
    if override is not None and not files:
        raise ExternalModelError(
            f"{override}: no tokenizer.json here (expected a transformers tokenizer folder)"
        )
    if not files:
        raise ExternalModelError(
            f"{path}: the tokenizer {name} is not GPT-2 and {directory} holds no tokenizer.json; pass --tokenizer "
            "DIR, a local folder with that tokenizer's files (e.g. a saved copy of tdooms/ts-tokenizer-4096)"
        )
    return None, files


def _gpt_config(path: Path, **fields) -> GPTConfig:
    try:
        return GPTConfig(**fields)
    except ConfigError as e:
        raise ExternalModelError(f"{path}: {e}") from e


def _build(cfg: GPTConfig, state: dict[str, torch.Tensor]) -> GPT:
    model = GPT(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


# ---- tokenizers of imported models ----

TOKENIZER_FILE_NAMES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


def tokenizer_files(directory: Path) -> list[Path]:
    """The transformers tokenizer files in ``directory`` (empty unless it holds tokenizer.json)."""
    if not (directory / "tokenizer.json").is_file():
        return []
    return [directory / n for n in TOKENIZER_FILE_NAMES if (directory / n).is_file()]


class HFTokenizer:
    """A transformers ``tokenizer.json`` read with the ``tokenizers`` package: encode, decode, token text."""

    def __init__(self, file: str | Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ModuleNotFoundError as e:
            raise CheckpointError(
                f"{file}: reading this tokenizer needs the 'tokenizers' package: {INSTALL_HINT}"
            ) from e
        try:
            self.tokenizer = Tokenizer.from_file(str(file))
        except Exception as e:
            raise CheckpointError(f"{file}: not a readable tokenizer.json ({e})") from e
        self.file = Path(file)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        """The text of one token, its leading space kept (SentencePiece's '▁' decodes to a space here)."""
        text = self.decode([token_id])
        piece = self.tokenizer.id_to_token(int(token_id)) or ""
        if piece.startswith("▁") and not text.startswith(" "):
            text = " " + text
        return text


def load_tokenizer(checkpoint: str | Path, config: dict) -> HFTokenizer | None:
    """The tokenizer a tnt checkpoint names in ``config["tokenizer"]``; None: GPT-2 through ``config["vocab"]``."""
    entry = config.get("tokenizer")
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("kind") != "hf" or not isinstance(entry.get("dir"), str):
        raise CheckpointError(
            f'{Path(checkpoint) / CONFIG_FILE}: field \'tokenizer\' must be {{"kind": "hf", "dir": FOLDER}}, '
            f"got {entry!r}"
        )
    return HFTokenizer(Path(checkpoint) / entry["dir"] / "tokenizer.json")


# ---- the command ----


def load_external(directory: str | Path, tokenizer: str | Path | None = None) -> Imported:
    """Read a transformers (Qwen3/Llama) or tdooms folder; ``tokenizer`` overrides where tokenizer files are."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExternalModelError(f"{directory}: not a folder (expected config.json and model.safetensors)")
    fmt = detect_format(directory)
    if fmt == "tnt":
        raise ExternalModelError(f"{directory}: already a tnt checkpoint; load it with model.load_model")
    loader = load_tdooms if fmt == "tdooms" else load_hf
    return loader(directory, Path(tokenizer) if tokenizer is not None else None)


def import_checkpoint(src: str | Path, out: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Convert ``src`` into the tnt checkpoint folder ``out`` (weights, config.json, tokenizer/)."""
    imported = load_external(src, tokenizer)
    out = Path(out)
    extra = {"vocab": imported.vocab} if imported.vocab is not None else {"tokenizer": TOKENIZER_ENTRY}
    save_model(imported.model, out, extra_config={**extra, "source": imported.source})
    tok_dir = out / TOKENIZER_DIR
    if imported.tokenizer_files:
        tok_dir.mkdir(parents=True, exist_ok=True)
        for f in imported.tokenizer_files:
            shutil.copyfile(f, tok_dir / f.name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m model.hf_import",
        description="Convert a transformers Qwen3/Llama folder or a tdooms bilinear checkpoint into a tnt "
        "checkpoint folder that decomp and `python -m analysis` read. Options without an exact tnt "
        "equivalent stop the import with an error naming them.",
    )
    p.add_argument("source", type=Path, help="folder with config.json and model.safetensors")
    p.add_argument("--out", type=Path, required=True, help="tnt checkpoint folder to write")
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="folder with the model's tokenizer.json when SOURCE has none (tdooms checkpoints name theirs)",
    )
    args = p.parse_args(argv)
    try:
        out = import_checkpoint(args.source, args.out, args.tokenizer)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = json.loads((out / CONFIG_FILE).read_text())["model"]
    print(f"wrote {out}: {cfg['n_layer']}×{cfg['d_model']} {cfg['mlp']}, vocab {cfg['vocab_size']}")
    return 0


if __name__ == "__main__":
    from errors import run_cli  # tnt's error policy: one-line errors for bad input, tracebacks for bugs

    sys.exit(run_cli(main))
