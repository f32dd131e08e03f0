"""tnt trainer: the modded-nanoGPT recipe with a choice of tensor-network MLP.

    python train.py                                  # cpu-demo preset: Shakespeare on CPU, a bilinear model
    python train.py --preset speedrun --mlp bilinear # 124M track on FineWeb shards (8×H100 via torchrun)
    torchrun --standalone --nproc_per_node=8 train.py --preset speedrun
    python train.py --resume runs/demo               # continue from the latest checkpoint in a run directory
    python train.py --help                           # every flag

Reads top to bottom: configuration and presets; set-up helpers (data, vocabulary, optimizers, schedule); the
``Trainer`` (``train_step``, ``validate``, ``maybe_save``, and ``fit``, the timed loop with the clock paused for
validation); then ``main``: set-up, an untimed warm-up followed by a state reset, ``fit`` and the final report.
The parts live in ``training/``: checkpoints, the step budget and stopwatch, ranks and collectives, the run log.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import glob
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import kernels
from data.bigram import bigram_baseline
from data.loader import (
    DistributedLoader,
    MixedDataset,
    SequentialDataset,
    TokenDataset,
    TokenStream,
    bits_per_byte,
    iter_val_batches,
    val_bytes_per_token,
)
from data.shards import read_shard
from data.tokenizer import EOT_ID, get_encoding
from data.vocab import CompactVocab
from errors import TntError
from model import GPT, ConfigError, GPTConfig, load_model
from model.attention import window_blocks_at
from model.config import RECORD21
from model.io import load_lora_config, read_json, resolve_checkpoint
from model.lora import LoRAConfig, apply_lora, lora_config, lora_parameters, parse_lora_targets
from sample import sample
from training.budget import CALIBRATION_SKIP, CALIBRATION_STEPS, StepBudget, Stopwatch
from training.checkpoint import (
    CHECKPOINT_FILES,
    TrainingState,
    apply_training_state,
    check_finite,
    clean_run_dir,
    last_finite_checkpoint,
    read_training_state,
    save_checkpoint,
    saved_train_settings,
)
from training.distributed import Dist, setup_distributed
from training.muon import Muon, momentum_at
from training.runlog import RunLog

__all__ = [
    "CALIBRATION_SKIP",
    "CALIBRATION_STEPS",
    "PRESETS",
    "TrainConfig",
    "Trainer",
    "main",
    "parse_config",
]

# ------------------------------------------------------------------ configuration


@dataclass
class TrainConfig:
    """Every training hyper-parameter; each is a command-line flag (``--snake-case``)."""

    preset: str = field(default="cpu-demo", metadata={"help": "cpu-demo or speedrun: sets defaults below"})
    run_name: str = field(default="demo", metadata={"help": "output folder runs/<run_name>"})
    out_root: str = field(default="runs", metadata={"help": "parent folder of run folders"})
    # data
    train_files: str = field(
        default="runs/data/shakespeare/shakespeare_train_*.bin", metadata={"help": "glob"}
    )
    val_files: str = field(default="runs/data/shakespeare/shakespeare_val_*.bin", metadata={"help": "glob"})
    vocab: str = field(
        default="full",
        metadata={"help": "full: GPT-2's 50257 ids; compact: only ids present in the shards (CPU speed)"},
    )
    seq_len: int = field(default=1024, metadata={"help": "tokens per sequence"})
    batch_size: int = field(
        default=512, metadata={"help": "sequences per optimizer step, all ranks together"}
    )
    micro_batch: int = field(default=64, metadata={"help": "sequences per forward pass per rank"})
    bos_aligned: bool = field(default=False, metadata={"help": "start every sequence at a document start"})
    data_order: str = field(
        default="shuffled",
        metadata={
            "help": "shuffled (seeded windows) or sequential (record #21: shards front to back, tokens once)"
        },
    )
    val_seq_len: int = field(default=0, metadata={"help": "tokens per validation sequence; 0 = --seq-len"})
    # model (GPTConfig fields)
    arch: str = field(
        default="tnt",
        metadata={"help": "tnt: the fields below; record21: modded-nanoGPT record #21's network (12 layers), "
                  "where only the MLP flags and --d-model/--n-head change anything"},
    )  # fmt: skip
    mlp: str = field(default="relu2", metadata={"help": "relu2 gelu bilinear reglu geglu swiglu multilinear"})
    mlp_order: int = field(default=2, metadata={"help": "k for --mlp multilinear"})
    mlp_hidden: int = field(default=0, metadata={"help": "MLP width h; 0 = parameter-matched default"})
    n_layer: int = 12
    n_head: int = 6
    d_model: int = 768
    window: int = field(default=0, metadata={"help": "sliding attention window; 0 = full causal"})
    value_embeds: bool = False
    unet_skips: bool = False
    logit_softcap: float = field(default=30.0, metadata={"help": "0 disables soft-capping"})
    norm_gain: bool = field(default=False, metadata={"help": "learnable RMSNorm gains"})
    # optimisation
    steps: int = field(default=1750, metadata={"help": "optimizer steps"})
    max_train_seconds: float = field(
        default=0.0, metadata={"help": "stop after this much timed training; 0=off"}
    )
    warmup_frac: float = field(default=0.0, metadata={"help": "fraction of steps with linear lr warm-up"})
    cooldown_frac: float = field(
        default=0.4, metadata={"help": "fraction of steps with linear decay to 0.1×"}
    )
    muon_lr: float = 0.05
    muon_momentum: float = 0.95
    muon_momentum_warmup: int = field(
        default=0, metadata={"help": "steps of Muon momentum warm-up from --muon-momentum-start; 0 = off"}
    )
    muon_momentum_start: float = 0.85
    embed_lr: float = 0.6
    head_lr: float = 0.008
    scalar_lr: float = 0.04
    adam_betas: tuple[float, float] = (0.8, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = field(default=0.0, metadata={"help": "global grad-norm clip; 0 = off"})
    seed: int = 0
    # evaluation, logging, checkpoints
    val_every: int = field(default=125, metadata={"help": "steps between validations; 0 = only at the end"})
    val_tokens: int = field(default=10485760, metadata={"help": "validation token budget"})
    train_log_every: int = field(default=0, metadata={"help": "print train loss every N steps; 0 = never"})
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps; 0 = only at the end"})
    keep_checkpoints: int = 2
    resume: str = field(default="", metadata={"help": "run folder (or checkpoint folder) to continue"})
    init_from: str = field(default="", metadata={"help": "checkpoint to finetune from (fresh optimizer)"})
    # finetuning: LoRA adapters and data mixing
    lora_rank: int = field(
        default=0, metadata={"help": "LoRA rank r for --init-from finetunes; 0 = full finetuning"}
    )
    lora_targets: str = field(
        default="all",
        metadata={"help": "comma list of q,k,v,o,mlp_w,mlp_v,mlp_p,head,embed; attn, mlp, all (= attn,mlp) "
                  "and -x (drop x): 'all,-k' is everything but K, 'k' only K"},
    )  # fmt: skip
    lora_alpha: float = field(default=0.0, metadata={"help": "LoRA scale alpha/r; 0 = r (scale 1)"})
    lora_lr: float = field(default=0.01, metadata={"help": "Adam learning rate of the LoRA adapters"})
    lora_mask_after: str = field(
        default="",
        metadata={"help": "a one-token separator: adapters act only at positions after its first occurrence"},
    )
    mix_files: str = field(default="", metadata={"help": "glob of unrelated shards mixed into every batch"})
    mix_frac: float = field(
        default=0.0, metadata={"help": "fraction of each batch's sequences taken from --mix-files"}
    )
    bigram_baseline: bool = field(default=False, metadata={"help": "also score an interpolated bigram"})
    sample_tokens: int = field(default=0, metadata={"help": "print a sample of N tokens at the end"})
    sample_prompt: str = "\n"
    untimed_warmup_steps: int = field(default=10, metadata={"help": "compile warm-up, then state reset"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    compile: str = field(default="auto", metadata={"help": "auto (on CUDA), on, off"})
    kernels: str = field(
        default="auto", metadata={"help": "MLP product: auto (Triton on CUDA), triton, torch"}
    )
    kernel_recompute: bool = field(
        default=False,
        metadata={"help": "fused MLP backward recomputes the up-projection (less memory, +FLOPs)"},
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 = torch's default"})
    wandb: bool = field(default=False, metadata={"help": "log to wandb (honours WANDB_MODE)"})
    wandb_project: str = "tnt"

    def __post_init__(self) -> None:
        """Range and choice checks, so a bad flag or saved setting is one line (ConfigError), not a traceback."""
        choices = {
            "preset": tuple(PRESETS),
            "vocab": ("full", "compact"),
            "device": ("auto", "cpu", "cuda"),
            "compile": ("auto", "on", "off"),
            "kernels": kernels.BACKENDS,
            "arch": ("tnt", "record21"),
            "data_order": ("shuffled", "sequential"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        positive = ("seq_len", "batch_size", "micro_batch", "steps", "val_tokens", "keep_checkpoints")
        non_negative = (
            "mlp_hidden", "window", "max_train_seconds", "warmup_frac", "cooldown_frac", "muon_momentum_warmup",
            "weight_decay", "grad_clip", "val_every", "train_log_every", "save_every", "sample_tokens",
            "untimed_warmup_steps", "threads", "logit_softcap", "val_seq_len",
        )  # fmt: skip
        for name in positive + non_negative:
            value, low = getattr(self, name), 1 if name in positive else 0
            if value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        if self.arch == "record21" and self.n_layer != RECORD21["n_layer"]:
            raise ConfigError(
                f"--arch record21 is a {RECORD21['n_layer']}-layer network, got --n-layer {self.n_layer}"
            )
        self._check_finetune_flags()
        if self.warmup_frac + self.cooldown_frac > 1:
            raise ConfigError(
                f"--warmup-frac + --cooldown-frac must be <= 1, got {self.warmup_frac} + {self.cooldown_frac}"
            )

    def _check_finetune_flags(self) -> None:
        if self.lora_rank < 0 or self.lora_alpha < 0 or self.lora_lr <= 0:
            raise ConfigError(
                f"--lora-rank and --lora-alpha must be >= 0 and --lora-lr > 0, got {self.lora_rank}, "
                f"{self.lora_alpha}, {self.lora_lr}"
            )
        if self.lora_rank:
            parse_lora_targets(self.lora_targets)  # ConfigError naming an unknown target
            if not (self.init_from or self.resume):
                raise ConfigError("--lora-rank adapts a trained model: give it --init-from CHECKPOINT")
        elif self.lora_mask_after:
            raise ConfigError("--lora-mask-after masks LoRA adapters: it needs --lora-rank >= 1")
        if not 0 <= self.mix_frac < 1:
            raise ConfigError(f"--mix-frac must lie in [0, 1), got {self.mix_frac}")
        if bool(self.mix_files) != bool(self.mix_frac):
            raise ConfigError("--mix-files and --mix-frac go together: give both (or neither)")
        if self.mix_files and self.data_order != "shuffled":
            raise ConfigError("--mix-files mixes shuffled windows: it needs --data-order shuffled")

    def lora_config(self, mask_token: int | None, mlp_order: int) -> LoRAConfig | None:
        """The adapters of a LoRA finetune (None: full finetuning); ``mask_token`` is the separator's model id,
        ``mlp_order`` the adapted model's (``mlp`` and ``all`` name no V for relu2/gelu)."""
        if not self.lora_rank:
            return None
        targets = parse_lora_targets(self.lora_targets, mlp_order)
        return LoRAConfig(self.lora_rank, targets, self.lora_alpha, mask_token)

    def model_config(self, vocab_size: int, eot_token: int = EOT_ID) -> GPTConfig:
        """The network: ``--arch tnt`` from the flags; ``--arch record21`` record #21's with this run's MLP.

        ``eot_token``: the model id of the document separator (record21's document mask), EOT for the full vocabulary.
        """
        mlp = dict(
            mlp=self.mlp,
            mlp_order=self.mlp_order if self.mlp == "multilinear" else 2,
            mlp_hidden=self.mlp_hidden or None,
        )
        if self.arch == "record21":
            size = dict(vocab_size=vocab_size, n_head=self.n_head, d_model=self.d_model, eot_token=eot_token)
            return GPTConfig(**{**RECORD21, **size, **mlp})
        return GPTConfig(
            vocab_size=vocab_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            **mlp,
            window=self.window or None,
            value_embeds=self.value_embeds,
            unet_skips=self.unet_skips,
            logit_softcap=self.logit_softcap or None,
            norm_gain=self.norm_gain,
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.out_root) / self.run_name


PRESETS: dict[str, dict] = {
    # Shakespeare on 2 CPU cores in a few minutes: a small bilinear model, compact vocabulary.
    "cpu-demo": dict(
        mlp="bilinear",
        vocab="compact",
        n_layer=4,
        n_head=4,
        d_model=128,
        seq_len=128,
        batch_size=16,
        micro_batch=16,
        steps=600,
        max_train_seconds=330,  # whichever ends first: ~600 steps at ~0.5 s/step on 2 idle cores
        cooldown_frac=0.5,
        warmup_frac=0.02,
        muon_lr=0.03,
        embed_lr=0.1,
        head_lr=0.004,
        scalar_lr=0.02,
        logit_softcap=0.0,  # the soft-cap's elementwise passes over [tokens, vocab] cost ~25% on CPU
        compile="on",  # inductor fuses the elementwise work on CPU: ~2x faster steps after ~30 s compiling
        val_every=0,
        val_tokens=200_000,  # the whole held-out split (189k tokens)
        bigram_baseline=True,
        untimed_warmup_steps=2,
        sample_tokens=60,
        save_every=200,
    ),
    # modded-nanoGPT record #21 (records/track_1_short/2025-01-26_BatchSize/, 3.2808 in 1770 steps on 8×H100):
    # its network (only the MLP swapped, parameter-matched), data order, batch, optimizers and schedule.
    "speedrun": dict(
        run_name="speedrun",
        train_files="data/fineweb10B/fineweb_train_*.bin",
        val_files="data/fineweb10B/fineweb_val_*.bin",
        vocab="full",
        arch="record21",
        mlp="relu2",
        n_layer=12,
        n_head=6,
        d_model=768,
        data_order="sequential",
        seq_len=48 * 1024,  # one 48K-token document-masked sequence per rank and micro-step
        batch_size=8,  # sequences per step, all ranks: 8 × 48K = 393,216 tokens
        micro_batch=1,
        val_seq_len=4 * 64 * 1024,
        steps=1770,
        warmup_frac=0.0,
        cooldown_frac=0.4,
        muon_lr=0.05,
        muon_momentum=0.95,
        muon_momentum_warmup=300,  # Muon momentum 0.85 -> 0.95 over the first 300 steps
        embed_lr=0.6,
        head_lr=0.008,
        scalar_lr=0.04,
        adam_betas=(0.8, 0.95),
        val_every=125,
        val_tokens=10_485_760,
        untimed_warmup_steps=10,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        elif f.name == "adam_betas":
            parser.add_argument(flag, type=float, nargs=2, default=None, metavar=("B1", "B2"), help=helptext)
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=None, help=f"{helptext} (default: %(default)s)")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """The run's settings and the names of the fields given on the command line.

    Flags override the preset, which overrides the dataclass defaults. With ``--resume``, the resumed run's saved
    settings replace preset and defaults, so only the flags given now change anything (e.g. a larger ``--steps``);
    the run continues in its own folder.
    """
    args = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    if "adam_betas" in args:
        args["adam_betas"] = tuple(args["adam_betas"])
    if "resume" in args:
        saved = saved_train_settings(resolve_checkpoint(args["resume"], CHECKPOINT_FILES), TrainConfig)
        return TrainConfig(**{**saved, **args}), set(args)
    preset = args.get("preset", TrainConfig.preset)
    if preset not in PRESETS:
        raise SystemExit(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return TrainConfig(**{**PRESETS[preset], **args, "preset": preset}), set(args)


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    return parse_args(argv)[0]


# ------------------------------------------------------------------ set-up: data, vocabulary, optimizers, schedule


def files_of(pattern: str, what: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(
            f"no {what} shards match {pattern!r}; for the demo corpus run: python -m data shakespeare "
            f"--out runs/data/shakespeare (or pass --{what}-files)"
        )
    return files


def load_vocab(cfg: TrainConfig, source: Path | None, files: list[str]) -> CompactVocab:
    """Full GPT-2, or compact (the ids present in the shards, renumbered) for CPU speed; a checkpoint's own."""
    if source is not None:
        vocab = CompactVocab.from_config(read_json(source / "config.json"), source=source / "config.json")
        vocab.check_covers(files, source=f"the vocabulary of {source}")
        return vocab
    return CompactVocab.from_shards(files) if cfg.vocab == "compact" else CompactVocab.full()


def separator_id(text: str, vocab: CompactVocab) -> int:
    """The model id of ``--lora-mask-after``'s separator, which must be one GPT-2 token of the vocabulary."""
    ids = get_encoding().encode(text, allowed_special="all")
    if len(ids) != 1:
        raise ConfigError(f"--lora-mask-after {text!r} is {len(ids)} GPT-2 tokens {ids}, not one")
    if ids[0] not in vocab:
        raise ConfigError(f"--lora-mask-after {text!r} (GPT-2 id {ids[0]}) is not in the model's vocabulary")
    return int(vocab.encode_tensor(torch.tensor(ids))[0])


def build_model(cfg: TrainConfig, vocab: CompactVocab, source: Path | None, resuming: bool) -> GPT:
    """A fresh model, the ``--init-from`` checkpoint (with new LoRA adapters for a LoRA finetune), or the
    ``--resume`` checkpoint (with its adapters and their frozen base weights, for an exact continuation)."""
    eot = int(vocab.encode_tensor(torch.tensor([EOT_ID]))[0])  # documents start at EOT (its model id)
    mcfg = cfg.model_config(vocab.model_vocab_size, eot)
    torch.manual_seed(cfg.seed)
    mask = separator_id(cfg.lora_mask_after, vocab) if cfg.lora_mask_after else None
    if source is None:
        model = GPT(mcfg)
    elif resuming:
        model = load_model(source, adapters=load_lora_config(source) is not None)
        lora = cfg.lora_config(mask, model.config.order)
        if lora_config(model) != lora:
            raise ConfigError(
                f"{source}: trained with LoRA {lora_config(model)}, asked to resume with {lora}: the adapters "
                "cannot change within a run"
            )
    else:
        model = load_model(source)
        if model.config != mcfg:
            print(f"--init-from: using the architecture of {source} ({model.config.mlp})")
        if (lora := cfg.lora_config(mask, model.config.order)) is not None:
            apply_lora(model, lora, torch.Generator().manual_seed(cfg.seed))
    model.config.check_vocab(vocab.size - 1, source=f"the {vocab.size}-token vocabulary")
    return model


def build_optimizers(model: GPT, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """Muon for the hidden matrices (attention and MLP weights); Adam for embeddings, head and scalars.

    Returns [adam, muon]; every param group carries ``initial_lr``, which ``Trainer.train_step`` scales. A LoRA
    finetune trains only its adapters, with one Adam at ``--lora-lr``: returns [adam].
    """
    if lora_config(model) is not None:
        adapters = lora_parameters(model)
        adam = torch.optim.Adam([dict(params=adapters, lr=cfg.lora_lr)], betas=cfg.adam_betas, eps=1e-10)
        adam.param_groups[0]["initial_lr"] = cfg.lora_lr
        return [adam]
    scalars = [p for n, p in model.named_parameters() if p.ndim < 2]
    embeds = [model.wte.weight, *(e.weight for e in model.value_embeds)]
    groups = [
        dict(params=embeds, lr=cfg.embed_lr),
        dict(params=[model.lm_head.weight], lr=cfg.head_lr),
        dict(params=scalars, lr=cfg.scalar_lr),
    ]
    groups = [g for g in groups if g["params"]]
    adam = torch.optim.Adam(groups, betas=cfg.adam_betas, eps=1e-10)
    # tnt's Muon orthogonalises each projection of the stacked weights (Q, K, V; W_1..W_k) separately.
    rows = model.projection_blocks()
    hidden = [(n, p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    muon = Muon(
        [p for _, p in hidden],
        lr=cfg.muon_lr,
        momentum=cfg.muon_momentum,
        weight_decay=cfg.weight_decay,
        blocks={p: rows[n] for n, p in hidden if n in rows},
    )
    for opt in (adam, muon):
        for g in opt.param_groups:
            g["initial_lr"] = g["lr"]
    return [adam, muon]


def lr_multiplier(progress: float, cfg: TrainConfig) -> float:
    """Warm-up / stable / cool-down over training progress in [0, 1]: linear ramp, constant, linear decay to 0.1."""
    if progress < cfg.warmup_frac:
        return (progress + 1e-9) / cfg.warmup_frac
    if progress < 1 - cfg.cooldown_frac:
        return 1.0
    return 0.1 + 0.9 * max((1 - progress) / cfg.cooldown_frac, 0.0)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM in the yielded list instead of dying, so the loop can save and stop cleanly."""
    caught: list[int] = []
    handlers = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield caught
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


class TrainingDiverged(TntError):
    pass


# ------------------------------------------------------------------ the trainer


class Trainer:
    """One run: the model, its optimizers and data, and where it stands (``step``, ``budget``, ``clock``).

    ``train_step`` does one optimizer step over all micro-batches and ranks, ``validate`` scores the held-out
    budget, ``maybe_save`` writes a checkpoint when one is due, and ``fit`` runs them until the budget is spent.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: GPT,
        vocab: CompactVocab,
        files: tuple[list[str], list[str], list[str]],
        dist_: Dist,
    ) -> None:
        self.cfg, self.model, self.vocab, self.dist = cfg, model.to(dist_.device), vocab, dist_
        self.train_files, self.val_files, self.mix_files = files
        self.device = dist_.device
        if cfg.batch_size % (cfg.micro_batch * dist_.world):
            raise SystemExit(
                f"--batch-size {cfg.batch_size} must be a multiple of --micro-batch {cfg.micro_batch} × "
                f"{dist_.world} ranks"
            )
        self.grad_accum = cfg.batch_size // (cfg.micro_batch * dist_.world)
        self.optimizers = build_optimizers(model, cfg)
        use_compile = cfg.compile == "on" or (cfg.compile == "auto" and self.device.type == "cuda")
        self.fwd = torch.compile(model) if use_compile else model
        if cfg.data_order == "sequential":
            dataset = SequentialDataset(self.train_files, cfg.seq_len, cfg.batch_size * cfg.seq_len)
        else:
            dataset = TokenDataset(self.train_files, cfg.seq_len, seed=cfg.seed, bos_aligned=cfg.bos_aligned)
        if self.mix_files:  # a fixed fraction of every batch's rows from unrelated data (own window order)
            mix = TokenDataset(self.mix_files, cfg.seq_len, seed=cfg.seed + 1, bos_aligned=cfg.bos_aligned)
            dataset = MixedDataset(dataset, mix, cfg.mix_frac)
        self.dataset = dataset
        self.loader = DistributedLoader(
            dataset, cfg.micro_batch, rank=dist_.rank, world_size=dist_.world, grad_accum=self.grad_accum
        )
        self.run_dir = cfg.run_dir
        self.log = RunLog(
            dist_.master,
            self.run_dir / "log.txt",
            dict(project=cfg.wandb_project, name=cfg.run_name, config=dataclasses.asdict(cfg))
            if cfg.wandb
            else None,
        )
        self.step, self.saved_at = 0, -1
        self._windows: dict[int, torch.Tensor] = {}
        self.budget = StepBudget.create(cfg.steps, cfg.max_train_seconds, cfg.cooldown_frac)
        self.clock = Stopwatch(self.device)
        self.history: dict = {"train_loss": [], "val": []}
        self.last_val, self.n_val = float("nan"), 0
        self.val_stream = TokenStream(self.val_files)  # opened (and checked) once per run
        self.val_seq_len = cfg.val_seq_len or cfg.seq_len
        self.bytes_per_token = val_bytes_per_token(
            self.val_stream, cfg.micro_batch, self.val_seq_len, cfg.val_tokens, dist_.world
        )

    def window(self, step: int) -> torch.Tensor | None:
        """Record #21's long-short sliding window at ``step``, in blocks, as a tensor (no recompiles); else None."""
        if self.cfg.arch != "record21":
            return None
        n = window_blocks_at(step, self.budget.total_steps)
        if n not in self._windows:
            self._windows[n] = torch.tensor(n, dtype=torch.int32, device=self.device)
        return self._windows[n]

    def train_step(self, lr_mult: float, step: int) -> torch.Tensor:
        """Optimizer step number ``step`` at lr × ``lr_mult`` over grad_accum micro-batches and all ranks; the mean
        loss. A non-finite loss leaves the weights untouched: the gradients are dropped before any optimizer step.
        """
        cfg = self.cfg
        for opt in self.optimizers:
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * lr_mult
        if cfg.muon_momentum_warmup and len(self.optimizers) > 1:
            for g in self.optimizers[1].param_groups:
                g["momentum"] = momentum_at(
                    step, cfg.muon_momentum_warmup, cfg.muon_momentum_start, cfg.muon_momentum
                )
        total, window = torch.zeros((), device=self.device), self.window(step)
        for _ in range(self.grad_accum):
            x, y = self.loader.next_batch()
            x, y = self.vocab.encode_tensor(x).to(self.device), self.vocab.encode_tensor(y).to(self.device)
            with autocast(self.device):
                loss = self.fwd(x, y, window_blocks=window)
            (loss / self.grad_accum).backward()
            total += loss.detach() / self.grad_accum
        total = self.dist.average_gradients(list(self.model.parameters()), total)
        if torch.isfinite(total):
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            for opt in self.optimizers:
                opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return total

    def warm_up(self, steps: int) -> None:
        """Untimed steps (compilation, allocator), then the initial state restored so they leave no trace."""
        if steps <= 0:
            return
        initial = {
            "model": copy.deepcopy(self.model.state_dict()),
            "opt": [copy.deepcopy(o.state_dict()) for o in self.optimizers],
            "loader": self.loader.state_dict(),
        }
        for s in range(steps):
            self.train_step(lr_multiplier(s / self.cfg.steps, self.cfg), s)
        self.model.load_state_dict(initial["model"])
        for o, s in zip(self.optimizers, initial["opt"], strict=True):
            o.load_state_dict(s)
        self.loader.load_state_dict(initial["loader"])

    def resume(self, pending: TrainingState, keep_saved_length: bool) -> None:
        """Continue from a validated checkpoint state (``read_training_state``): optimizer, RNG, loader, step
        and clock; its run length unless overridden."""
        ckpt = pending.path
        state = apply_training_state(pending, self.optimizers, self.loader)
        self.step = state["step"]
        self.clock = Stopwatch(self.device, state["train_time_ms"])
        total = state.get("total_steps", self.cfg.steps) if keep_saved_length else self.cfg.steps
        self.budget = StepBudget.create(
            self.cfg.steps, self.cfg.max_train_seconds, self.cfg.cooldown_frac, self.step, total
        )
        self.log(f"resumed from {ckpt} at step {self.step}")

    @torch.no_grad()
    def validate(self) -> float:
        """Mean next-token loss (nats) over the validation budget, reduced over ranks; logged with bits per byte.

        On CUDA through the compiled model, as the record does (on CPU eagerly: a second compile costs more than
        the demo's one validation); with the same step's attention window as training.
        """
        cfg, model = self.cfg, self.model
        net = self.fwd if self.device.type == "cuda" else model
        model.eval()
        total, window = torch.zeros(2, dtype=torch.float64, device=self.device), self.window(self.step)
        for x, y in iter_val_batches(
            self.val_stream,
            cfg.micro_batch,
            self.val_seq_len,
            cfg.val_tokens,
            self.dist.rank,
            self.dist.world,
        ):
            x, y = self.vocab.encode_tensor(x).to(self.device), self.vocab.encode_tensor(y).to(self.device)
            with autocast(self.device):
                loss = net(x, y, window_blocks=window)
            total[0] += loss.double() * y.numel()
            total[1] += y.numel()
        if self.dist.world > 1:
            dist.all_reduce(total)
        model.train()
        self.last_val, self.n_val = (total[0] / total[1]).item(), int(total[1].item())
        step, total_steps, ms = self.step, self.budget.total_steps, self.clock.elapsed_ms
        bpb = bits_per_byte(self.last_val, self.bytes_per_token)
        self.log(
            f"step:{step}/{total_steps} val_loss:{self.last_val:.4f} val_bpb:{bpb:.4f} "
            f"train_time:{ms:.0f}ms step_avg:{ms / max(step, 1):.2f}ms"
        )
        self.log.metrics(step, val_loss=self.last_val, val_bpb=bpb, train_time_ms=ms)
        self.history["val"].append((step, self.last_val, ms))
        return self.last_val

    def save_due(self) -> bool:
        return bool(self.cfg.save_every) and self.step % self.cfg.save_every == 0

    def maybe_save(self, force: bool = False) -> Path | None:
        """Checkpoint on rank 0 when ``force`` or every ``--save-every`` steps, once per step; its folder."""
        if not (force or self.save_due()) or self.saved_at == self.step:
            return None
        check_finite(self.model, self.optimizers, self.run_dir, self.step)  # every rank: all stop together
        if not self.dist.master:
            return None
        self.saved_at = self.step
        state = {
            "step": self.step,
            "total_steps": self.budget.total_steps,
            "train_time_ms": self.clock.elapsed_ms,
            "loader": self.loader.state_dict(),
            "world_size": self.dist.world,
        }
        config = {"train": dataclasses.asdict(self.cfg), "vocab": self.vocab.to_config()}
        return save_checkpoint(
            self.run_dir, self.model, self.optimizers, state, config, self.cfg.keep_checkpoints
        )

    def diverged(self, loss: torch.Tensor) -> TrainingDiverged:
        where = last_finite_checkpoint(self.run_dir) or "none saved yet"
        return TrainingDiverged(
            f"non-finite training loss ({loss.item()}) at step {self.step}; the weights were not updated. "
            f"Last good checkpoint: {where}. Lower the learning rates or enable --grad-clip."
        )

    def fit(self) -> Path | None:
        """Train until the budget is spent, validating every ``--val-every`` steps and at the end; the last checkpoint.

        SIGINT/SIGTERM save a checkpoint (all ranks agreeing to stop at the same step) and exit with 128 + signum.
        """
        cfg = self.cfg
        self.clock.start()  # the clock starts now, after set-up and the untimed warm-up
        with catch_stop_signals() as caught:
            while True:
                last = self.step >= self.budget.total_steps
                if last or (cfg.val_every and self.step % cfg.val_every == 0):
                    with self.clock.paused():
                        self.validate()
                if last:
                    break
                loss = self.train_step(lr_multiplier(self.step / self.budget.total_steps, cfg), self.step)
                if not torch.isfinite(loss):
                    raise self.diverged(loss)
                self.step += 1
                self.history["train_loss"].append(loss.item())
                elapsed_ms = self.clock.elapsed_ms
                if message := self.budget.update(self.step, elapsed_ms, self.dist.agree):
                    self.log(message)
                if cfg.train_log_every and self.step % cfg.train_log_every == 0:
                    self.log(
                        f"step:{self.step}/{self.budget.total_steps} train_loss:{loss.item():.4f} train_time:{elapsed_ms:.0f}ms"
                    )
                stop = self.dist.agree(int(bool(caught)), op=dist.ReduceOp.MAX)  # all ranks stop together
                if stop or self.save_due():
                    with self.clock.paused():
                        path = self.maybe_save(force=True)
                if stop:
                    signum = caught[0] if caught else signal.SIGTERM
                    self.log(
                        f"signal {signum}: saved {path} at step {self.step}; resume with --resume {self.run_dir}"
                    )
                    raise SystemExit(128 + signum)
        self.clock.stop()
        saved = self.maybe_save(force=True)
        return saved or (self.run_dir / f"ckpt_{self.step:06d}" if self.dist.master else None)


# ------------------------------------------------------------------ the final report


def bigram_reference(
    train_files: list[str], val_files: list[str], vocab: CompactVocab, n_targets: int
) -> float:
    """Interpolated-bigram loss (nats/token) on the validation targets the model is scored on, same vocabulary.

    Validation windows are contiguous from the start of the stream, so the model's n targets are tokens 1..n.
    """

    def tokens(files: list[str]) -> np.ndarray:
        ids = np.concatenate([np.asarray(read_shard(f)) for f in files]).astype(np.int64)
        return vocab.encode_tensor(torch.from_numpy(ids)).numpy()

    return bigram_baseline(tokens(train_files), tokens(val_files)[: n_targets + 1], vocab.size)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    cfg, explicit = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    kernels.set_backend(cfg.kernels)
    kernels.set_recompute(cfg.kernel_recompute)
    dist_ = setup_distributed(cfg.device)
    mix = files_of(cfg.mix_files, "mix") if cfg.mix_files else []
    files = files_of(cfg.train_files, "train"), files_of(cfg.val_files, "val"), mix
    resume_dir = resolve_checkpoint(cfg.resume, CHECKPOINT_FILES) if cfg.resume else None
    init_dir = resolve_checkpoint(cfg.init_from) if cfg.init_from else None
    source = resume_dir or init_dir
    vocab = load_vocab(cfg, source, [f for group in files for f in group])
    model = build_model(cfg, vocab, source, resuming=resume_dir is not None)

    trainer = Trainer(cfg, model, vocab, files, dist_)
    log = trainer.log
    if dist_.master:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        clean_run_dir(trainer.run_dir)  # what a crash (kill -9, full disk) left: temp and to-delete folders
        log.header(dataclasses.asdict(cfg))
        mc, n_params = model.config, sum(p.numel() for p in model.parameters())
        log(
            f"model: {mc.n_layer}×{mc.d_model} mlp={mc.mlp} (h={mc.hidden}, k={mc.order}) vocab={mc.vocab_size} "
            f"params={n_params / 1e6:.2f}M | {dist_.world} rank(s) × {trainer.grad_accum} accumulation step(s) × "
            f"{cfg.micro_batch}×{cfg.seq_len} tokens"
        )
        if (lora := lora_config(model)) is not None:
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log(f"LoRA: {lora} ({trainable:,} trainable parameters; the base weights are frozen)")
        if mix:
            log(
                f"mixing: {cfg.mix_frac:g} of every batch's sequences from {len(mix)} shard(s) {cfg.mix_files!r}"
            )
    if dist_.master and isinstance(trainer.dataset, SequentialDataset):
        log(trainer.dataset.budget(cfg.steps))  # tokens available vs tokens trained
    # Validate the whole checkpoint before any step runs; apply it after the warm-up's state reset.
    pending = (
        read_training_state(resume_dir, trainer.optimizers, model, trainer.loader) if resume_dir else None
    )
    trainer.warm_up(cfg.untimed_warmup_steps)
    if resume_dir is not None:
        trainer.resume(pending, keep_saved_length="steps" not in explicit)
    ckpt = trainer.fit()

    result = {
        "val_loss": trainer.last_val,
        "step": trainer.step,
        "train_time_ms": trainer.clock.elapsed_ms,
        "checkpoint": ckpt,
        **trainer.history,
    }
    if dist_.master:
        log(f"peak memory: {peak_memory_mb(dist_.device):.0f} MiB; checkpoint: {ckpt}")
        if cfg.bigram_baseline:
            bigram = bigram_reference(files[0], files[1], vocab, trainer.n_val)
            verdict = "below" if trainer.last_val < bigram else "NOT below"
            log(
                f"val_loss {trainer.last_val:.4f} vs interpolated bigram {bigram:.4f} nats/token (same split): {verdict}"
            )
            result["bigram_val_loss"] = bigram
        if cfg.sample_tokens:
            text = sample(model, vocab, cfg.sample_prompt, cfg.sample_tokens, dist_.device, cfg.seed)
            log("sample: " + repr(text))
    log.close()
    dist_.close()
    return result


if __name__ == "__main__":
    from errors import run_cli  # tnt's error policy: anticipated failures are one line, bugs keep tracebacks

    sys.exit(run_cli(main))
