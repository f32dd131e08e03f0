"""Export a tnt model to a transformers folder: ``python -m model.export RUN_OR_CHECKPOINT --out DIR``.

The folder (``config.json``, ``model.safetensors``, tokenizer files, ``generation_config.json``) loads with
``AutoTokenizer`` + ``AutoModelForCausalLM`` and gives tnt's logits:

- QK-norm models become ``Qwen3ForCausalLM`` (q_norm/k_norm before rotary), models without QK-norm (imported
  ones) ``LlamaForCausalLM``. The gated MLP act(W x) ⊙ V x is gate_proj/up_proj with ``hidden_act`` linear
  (bilinear, multilinear of order 2), silu (swiglu), relu (reglu) or gelu_pytorch_tanh (geglu).
- Rotary: rows [D/2, D) of every head of W_Q, W_K are negated (``hf_import.flip_rotary_rows``).
- Qwen3 has one ``rms_norm_eps`` for block and QK norms. The QK-norm's own eps ε_qk (tnt's default: float32
  machine epsilon) is kept exactly by scaling W_Q, W_K by s = √(ε/ε_qk): rms_norm(s·q; ε) = rms_norm(q; ε/s²).
  The importer undoes the scale (recorded under ``tnt`` in config.json).
- GPT-2 vocabularies ship a byte-level BPE tokenizer built offline from tnt's GPT-2 files. A compact vocabulary
  (the CPU demo's) keeps the model's rows: the tokenizer maps each GPT-2 token of the vocabulary to its model id,
  so AutoTokenizer yields the ids the model expects and no probability changes; GPT-2 tokens outside the compact
  vocabulary get ids ≥ vocab_size (the model never saw them: the embedding refuses them).

Options with no exact equivalent stop the export with ``ExportError`` naming them: logit soft-cap, value
embeddings, U-net skips, relu2/gelu MLPs, multilinear of order > 2, sliding windows without QK-norm.
Needs the ``interop`` extra (transformers), imported only here.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import sys
from pathlib import Path

import torch

from .config import GPTConfig
from .gpt import GPT
from .hf_import import INSTALL_HINT, MLP_TO_HF_ACT, flip_rotary_rows, load_tokenizer, tokenizer_files
from .io import CONFIG_FILE, CheckpointError, load_model, read_json, resolve_checkpoint

DEFAULT_MAX_POSITIONS = 1024
EOT_TEXT = "<|endoftext|>"


class ExportError(ValueError):
    """The model has an option with no exact transformers equivalent; the message names it."""


def check_exportable(cfg: GPTConfig) -> None:
    """Raise ExportError naming every option of ``cfg`` that Qwen3/Llama cannot represent exactly."""
    refusals = [
        (
            "logit_softcap",
            cfg.logit_softcap,
            cfg.logit_softcap is not None,
            "Qwen3/Llama heads have no soft-cap",
        ),
        ("value_embeds", True, cfg.value_embeds, "no value embeddings in Qwen3/Llama attention"),
        ("unet_skips", True, cfg.unet_skips, "Qwen3/Llama blocks have no skip connections"),
        ("mlp", cfg.mlp, cfg.mlp in ("relu2", "gelu"), "Qwen3/Llama MLPs are gated (act(Wx) ⊙ Vx)"),
        ("mlp_order", cfg.mlp_order, cfg.order > 2, "a multilinear product of more than two factors"),
        ("window", cfg.window, cfg.window is not None and not cfg.qk_norm, "Llama has no sliding window"),
        (
            "attn_scale",
            cfg.attn_scale,
            cfg.attn_scale is not None,
            "Qwen3/Llama scale attention by 1/√head_dim",
        ),
        ("rope_kind", cfg.rope_kind, cfg.rope_kind != "standard", "Qwen3/Llama rotate every dimension"),
        ("embed_norm", True, cfg.embed_norm, "Qwen3/Llama do not normalise the embedding"),
        ("x0_lambdas", True, cfg.x0_lambdas, "Qwen3/Llama blocks do not mix in the embedding"),
        ("v_lambdas", True, cfg.v_lambdas, "no learned value scale in Qwen3/Llama attention"),
        ("no_attention", cfg.no_attention, bool(cfg.no_attention), "every Qwen3/Llama layer has attention"),
        ("doc_mask", True, cfg.doc_mask, "Qwen3/Llama attention does not stop at document starts"),
        ("window_blocks", cfg.window_blocks, cfg.window_blocks is not None, "a block-wise window"),
    ]
    found = [
        f"GPTConfig.{name}={value!r} has no exact transformers equivalent: {why}"
        for name, value, refused, why in refusals
        if refused
    ]
    if found:
        raise ExportError("; ".join(found))


def qk_scale(cfg: GPTConfig) -> float:
    """s = √(norm_eps / ε_qk): W_Q, W_K scaled by s make Qwen3's q/k norm (eps = norm_eps) equal tnt's (ε_qk)."""
    if not cfg.qk_norm:
        return 1.0
    eps_qk = cfg.qk_norm_eps if cfg.qk_norm_eps is not None else torch.finfo(torch.float32).eps
    return math.sqrt(cfg.norm_eps / eps_qk)


def hf_config(cfg: GPTConfig, max_positions: int = DEFAULT_MAX_POSITIONS, **extra) -> dict:
    """The transformers config fields (Qwen3 with QK-norm, else Llama) of a tnt model."""
    check_exportable(cfg)
    out = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        head_dim=cfg.head_dim,
        hidden_act=MLP_TO_HF_ACT["bilinear" if cfg.mlp == "multilinear" else cfg.mlp],
        max_position_embeddings=max_positions,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
        tie_word_embeddings=False,
        attention_bias=False,
        **extra,
    )
    if cfg.qk_norm:
        sliding = cfg.window is not None
        out.update(
            model_type="qwen3",
            architectures=["Qwen3ForCausalLM"],
            use_sliding_window=sliding,
            sliding_window=cfg.window,
            max_window_layers=0,
            layer_types=["sliding_attention" if sliding else "full_attention"] * cfg.n_layer,
        )
    else:
        out.update(model_type="llama", architectures=["LlamaForCausalLM"], mlp_bias=False)
    return out


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """tnt weights under Qwen3/Llama names, float32 (rotary rows flipped, W_Q/W_K scaled by ``qk_scale``)."""
    cfg = model.config
    check_exportable(cfg)
    d, H, s = cfg.d_model, cfg.n_head, qk_scale(cfg)
    ones = lambda n: torch.ones(n)  # noqa: E731
    out = {
        "model.embed_tokens.weight": model.w_e,
        "lm_head.weight": model.w_u,
        "model.norm.weight": model.final_norm_gain(),
    }
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = block.attn.c_qkv.weight.split(d)
        out[p + "self_attn.q_proj.weight"] = s * flip_rotary_rows(q, H)
        out[p + "self_attn.k_proj.weight"] = s * flip_rotary_rows(k, H)
        out[p + "self_attn.v_proj.weight"] = v
        out[p + "self_attn.o_proj.weight"] = block.attn.c_proj.weight
        if cfg.qk_norm:
            out[p + "self_attn.q_norm.weight"] = ones(cfg.head_dim)
            out[p + "self_attn.k_norm.weight"] = ones(cfg.head_dim)
        out[p + "mlp.gate_proj.weight"] = model.w_l(i)
        out[p + "mlp.up_proj.weight"] = model.w_r(i)
        out[p + "mlp.down_proj.weight"] = model.w_p(i)
        out[p + "input_layernorm.weight"] = model.attn_norm_gain(i)
        out[p + "post_attention_layernorm.weight"] = model.mlp_norm_gain(i)
    return {k: v.detach().float().cpu().contiguous().clone() for k, v in out.items()}


def _transformers():
    try:
        import transformers
    except ModuleNotFoundError as e:
        raise ExportError(f"exporting needs transformers: {INSTALL_HINT}") from e
    return transformers


def to_transformers(model: GPT, max_positions: int = DEFAULT_MAX_POSITIONS, **extra):
    """The transformers ``Qwen3ForCausalLM`` / ``LlamaForCausalLM`` (float32, eval) computing tnt's logits."""
    tf = _transformers()
    fields = hf_config(model.config, max_positions, **extra)
    kind = fields.pop("model_type")
    fields.pop("architectures")
    config_cls, model_cls = (
        (tf.Qwen3Config, tf.Qwen3ForCausalLM) if kind == "qwen3" else (tf.LlamaConfig, tf.LlamaForCausalLM)
    )
    hf = model_cls(config_cls(**fields)).float()
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    if missing or unexpected:  # buffers only (rotary inv_freq) may be absent from a state dict
        raise ExportError(
            f"transformers {kind} does not take tnt's weights: missing {missing}, unexpected {unexpected}"
        )
    return hf.eval()


def gpt2_tokenizer(token_ids: list[int] | None, vocab_size: int, max_positions: int = DEFAULT_MAX_POSITIONS):
    """GPT-2's byte-level BPE as a transformers tokenizer, from tnt's offline GPT-2 files.

    ``token_ids`` (a compact vocabulary: token_ids[m] is the GPT-2 id of model id m) renumbers the tokens:
    model ids for the vocabulary's tokens, ``vocab_size + j`` for the j-th GPT-2 token outside it.
    """
    tf = _transformers()
    from tokenizers import Tokenizer

    ids = tuple(token_ids) if token_ids is not None else None
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_gpt2_tokenizer_json(ids, vocab_size)),
        bos_token=EOT_TEXT,
        eos_token=EOT_TEXT,
        unk_token=EOT_TEXT,
        model_max_length=max_positions,
    )


@functools.lru_cache(maxsize=4)
def _gpt2_tokenizer_json(token_ids: tuple[int, ...] | None, vocab_size: int) -> str:
    """The tokenizer.json text of ``gpt2_tokenizer`` (cached: building the 50k-merge BPE takes about a second)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    from data.tokenizer import EOT_ID, bpe_files_dir, get_encoding

    get_encoding()  # checks the files' sha256 against GPT-2's
    files = bpe_files_dir()
    encoder: dict[str, int] = json.loads((files / "encoder.json").read_text(encoding="utf-8"))
    lines = (files / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # first line: "#version: 0.2"
    merges = [tuple(line.split(" ")) for line in lines if line]
    eot = EOT_ID
    if token_ids is not None:
        to_model = {g: m for m, g in enumerate(token_ids)}
        outside = iter(range(vocab_size, vocab_size + len(encoder)))
        renumber = {g: to_model[g] if g in to_model else next(outside) for g in sorted(encoder.values())}
        encoder = {tok: renumber[g] for tok, g in encoder.items()}
        if EOT_ID not in to_model:
            raise ExportError(
                f"the compact vocabulary (vocab.token_ids) lacks {EOT_TEXT} (GPT-2 id {EOT_ID})"
            )
        eot = to_model[EOT_ID]
    tok = Tokenizer(models.BPE(vocab=encoder, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(EOT_TEXT, special=True)])
    if tok.token_to_id(EOT_TEXT) != eot:
        raise ExportError(
            f"the tokenizer maps {EOT_TEXT} to {tok.token_to_id(EOT_TEXT)}, not to model id {eot}"
        )
    return tok.to_str()


def export(source: str | Path, out: str | Path, max_positions: int | None = None) -> Path:
    """Write the transformers folder of the checkpoint (or run's latest checkpoint) ``source`` into ``out``."""
    ckpt = resolve_checkpoint(source)
    config = read_json(ckpt / CONFIG_FILE)
    model = load_model(ckpt).float().eval()
    check_exportable(model.config)
    train, src = config.get("train") or {}, config.get("source") or {}
    max_positions = max_positions or train.get("seq_len") or src.get("n_ctx") or DEFAULT_MAX_POSITIONS
    own = config.get("tokenizer")  # an imported model's own tokenizer (model.hf_import), else GPT-2
    vocab = None if own else config.get("vocab") or {"tokenizer": "gpt2", "token_ids": None}
    tnt = {"vocab": vocab, "qk_scale": qk_scale(model.config), "qk_norm_eps": model.config.qk_norm_eps}
    if own:
        load_tokenizer(ckpt, config)  # checks the entry and that its tokenizer.json reads
        tok_dir, tokenizer = ckpt / own["dir"], None
        hf = to_transformers(model, max_positions, tnt=tnt)
    else:
        tokenizer = gpt2_tokenizer(vocab.get("token_ids"), model.config.vocab_size, max_positions)
        eot = tokenizer.eos_token_id
        hf = to_transformers(model, max_positions, bos_token_id=eot, eos_token_id=eot, tnt=tnt)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    else:
        for f in tokenizer_files(tok_dir):
            shutil.copyfile(f, out / f.name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m model.export",
        description="Write a transformers folder (Qwen3ForCausalLM, or LlamaForCausalLM without QK-norm) with "
        "tnt's weights and tokenizer; AutoModelForCausalLM gives tnt's logits. Options with no exact "
        "equivalent (soft-cap, value embeddings, U-net skips, relu2/gelu, multilinear k > 2) stop it.",
    )
    p.add_argument("checkpoint", help="run folder (its LATEST names the checkpoint) or checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    p.add_argument(
        "--max-positions",
        type=int,
        default=None,
        help=f"max_position_embeddings (default: the run's seq_len, else {DEFAULT_MAX_POSITIONS})",
    )
    args = p.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out, args.max_positions)
    except (ExportError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({json.loads((out / 'config.json').read_text())['architectures'][0]})")
    return 0


if __name__ == "__main__":
    from errors import run_cli  # tnt's error policy: one-line errors for bad input, tracebacks for bugs

    sys.exit(run_cli(main, status=2))
