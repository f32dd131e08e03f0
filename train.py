"""tnt trainer: the modded-nanoGPT recipe with a choice of tensor-network MLP.

    python train.py                                  # cpu-demo preset: Shakespeare on CPU, a bilinear model
    python train.py --preset speedrun --mlp bilinear # 124M track on FineWeb shards (8×H100 via torchrun)
    torchrun --standalone --nproc_per_node=8 train.py --preset speedrun
    python train.py --resume runs/demo               # continue from the latest checkpoint in a run directory
    python train.py --help                           # every flag

Reads top to bottom: configuration and presets, optimizers and schedule, checkpoints, evaluation, then ``main``:
set-up, an untimed warm-up followed by a state reset, and the timed loop with the clock paused for validation.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import glob
import json
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import kernels
from data.bigram import bigram_baseline
from data.loader import DistributedLoader, TokenDataset, bits_per_byte, iter_val_batches, val_bytes_per_token
from data.shards import read_shard
from data.vocab import CompactVocab, VocabError
from model import GPT, ConfigError, GPTConfig, load_model
from model.io import LATEST, CheckpointError, read_json, resolve_checkpoint
from sample import sample
from training.checkpoint import load_training_state, save_checkpoint

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
    # model (GPTConfig fields)
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
    bigram_baseline: bool = field(default=False, metadata={"help": "also score an interpolated bigram"})
    sample_tokens: int = field(default=0, metadata={"help": "print a sample of N tokens at the end"})
    sample_prompt: str = "\n"
    untimed_warmup_steps: int = field(default=10, metadata={"help": "compile warm-up, then state reset"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    compile: str = field(default="auto", metadata={"help": "auto (on CUDA), on, off"})
    kernels: str = field(
        default="auto", metadata={"help": "MLP product: auto (Triton on CUDA), triton, torch"}
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 = torch's default"})
    wandb: bool = field(default=False, metadata={"help": "log to wandb (honours WANDB_MODE)"})
    wandb_project: str = "tnt"

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(
            vocab_size=vocab_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            mlp=self.mlp,
            mlp_order=self.mlp_order if self.mlp == "multilinear" else 2,
            mlp_hidden=self.mlp_hidden or None,
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
    # modded-nanoGPT's 124M track: FineWeb-10B shards, ~0.5M tokens per step, 8×H100.
    "speedrun": dict(
        run_name="speedrun",
        train_files="data/fineweb10B/fineweb_train_*.bin",
        val_files="data/fineweb10B/fineweb_val_*.bin",
        vocab="full",
        n_layer=12,
        n_head=6,
        d_model=768,
        seq_len=1024,
        batch_size=512,
        micro_batch=64,
        bos_aligned=True,
        steps=1750,
        val_every=125,
        val_tokens=10_485_760,
        value_embeds=True,
        unet_skips=True,
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


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Flags override the preset, which overrides the dataclass defaults.

    With ``--resume``, the resumed run's saved settings replace preset and defaults, so only the flags given
    now change anything (e.g. a larger ``--steps``); the run continues in its own folder.
    """
    args = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    if "adam_betas" in args:
        args["adam_betas"] = tuple(args["adam_betas"])
    if "resume" in args:
        saved = read_json(resolve_checkpoint(args["resume"]) / "config.json").get("train")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{args['resume']}: config.json has no 'train' settings to resume with")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        saved = {k: tuple(v) if k == "adam_betas" else v for k, v in saved.items() if k in known}
        return TrainConfig(**{**saved, **args})
    preset = args.get("preset", TrainConfig.preset)
    if preset not in PRESETS:
        raise SystemExit(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    return TrainConfig(**{**PRESETS[preset], **args, "preset": preset})


# ------------------------------------------------------------------ optimizers and schedule


def build_optimizers(model: GPT, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """Muon for the hidden matrices (attention and MLP weights); Adam for embeddings, head and scalars."""
    hidden = [p for n, p in model.blocks.named_parameters() if p.ndim == 2]
    scalars = [p for n, p in model.named_parameters() if p.ndim < 2]
    embeds = [model.wte.weight, *(e.weight for e in model.value_embeds)]
    groups = [
        dict(params=embeds, lr=cfg.embed_lr),
        dict(params=[model.lm_head.weight], lr=cfg.head_lr),
        dict(params=scalars, lr=cfg.scalar_lr),
    ]
    groups = [g for g in groups if g["params"]]
    adam = torch.optim.Adam(groups, betas=cfg.adam_betas, eps=1e-10)
    muon = torch.optim.Muon(
        hidden,
        lr=cfg.muon_lr,
        momentum=cfg.muon_momentum,
        weight_decay=cfg.weight_decay,
        adjust_lr_fn="original",
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


# ------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(model, val_files, cfg, vocab, device, rank, world) -> tuple[float, int]:
    """Mean next-token loss (nats) over the validation budget, reduced over ranks; and the token count."""
    model.eval()
    total, count = torch.zeros(2, dtype=torch.float64, device=device), 0
    for x, y in iter_val_batches(val_files, cfg.micro_batch, cfg.seq_len, cfg.val_tokens, rank, world):
        x, y = vocab.encode_tensor(x).to(device), vocab.encode_tensor(y).to(device)
        with autocast(device):
            loss = model(x, y)
        total[0] += loss.double() * y.numel()
        total[1] += y.numel()
        count += y.numel()
    if world > 1:
        dist.all_reduce(total)
    model.train()
    return (total[0] / total[1]).item(), int(total[1].item())


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


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------ logging


class RunLog:
    """Prints on rank 0 and appends to ``run_dir/log.txt``; optionally mirrors metrics to wandb."""

    def __init__(self, enabled: bool, path: Path, use_wandb: bool, cfg: TrainConfig) -> None:
        self.enabled, self.path, self.wandb = enabled, path, None
        if use_wandb:
            import wandb  # lazy: importing wandb costs ~0.7 s

            self.wandb = wandb.init(
                project=cfg.wandb_project, name=cfg.run_name, config=dataclasses.asdict(cfg)
            )

    def __call__(self, msg: str, console: bool = True) -> None:
        if not self.enabled:
            return
        if console:
            print(msg, flush=True)
        with open(self.path, "a") as f:
            f.write(msg + "\n")

    def metrics(self, step: int, **values: float) -> None:
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def header(self, cfg: TrainConfig) -> None:
        """The run log starts with the code that produced it, versions and hardware."""
        root = Path(__file__).resolve().parent
        for src in [root / "train.py", *sorted((root / "model").glob("*.py"))]:
            self(f"==> {src.relative_to(root)}\n{src.read_text()}", console=False)
        hw = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
        self(f"python {platform.python_version()} torch {torch.__version__} on {hw}, {os.cpu_count()} cpus")
        self(json.dumps(dataclasses.asdict(cfg), sort_keys=True), console=False)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


# ------------------------------------------------------------------ main


class TrainingDiverged(RuntimeError):
    pass


def setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return rank, world, device


def files_of(pattern: str, what: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise SystemExit(
            f"no {what} shards match {pattern!r}; for the demo corpus run: python -m data shakespeare "
            f"--out runs/data/shakespeare (or pass --{what}-files)"
        )
    return files


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    kernels.set_backend(cfg.kernels)
    rank, world, device = setup_distributed(cfg)
    master = rank == 0
    if cfg.batch_size % (cfg.micro_batch * world):
        raise SystemExit(
            f"--batch-size {cfg.batch_size} must be a multiple of --micro-batch {cfg.micro_batch} × {world} ranks"
        )
    grad_accum = cfg.batch_size // (cfg.micro_batch * world)
    train_files, val_files = files_of(cfg.train_files, "train"), files_of(cfg.val_files, "val")

    # Vocabulary: full GPT-2, or compact (the ids present in the shards, renumbered) for CPU speed.
    resume_dir = resolve_checkpoint(cfg.resume) if cfg.resume else None
    init_dir = resolve_checkpoint(cfg.init_from) if cfg.init_from else None
    source = resume_dir or init_dir
    if source is not None:
        vocab = CompactVocab.from_config(read_json(source / "config.json"))
        vocab.check_covers(train_files + val_files, source=f"the vocabulary of {source}")
    else:
        vocab = (
            CompactVocab.from_shards(train_files + val_files)
            if cfg.vocab == "compact"
            else CompactVocab.full()
        )
    mcfg = cfg.model_config(vocab.model_vocab_size)

    torch.manual_seed(cfg.seed)
    if source is not None:
        model = load_model(source)
        if init_dir is not None and model.config != mcfg:
            print(f"--init-from: using the architecture of {init_dir} ({model.config.mlp})")
    else:
        model = GPT(mcfg)
    model.config.check_vocab(vocab.size - 1, source=f"the {vocab.size}-token vocabulary")
    model.to(device)
    optimizers = build_optimizers(model, cfg)
    run_dir = cfg.run_dir
    log = RunLog(master, run_dir / "log.txt", cfg.wandb and master, cfg)
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        log.header(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"model: {model.config.n_layer}×{model.config.d_model} mlp={model.config.mlp} "
            f"(h={model.config.hidden}, k={model.config.order}) vocab={model.config.vocab_size} "
            f"params={n_params / 1e6:.2f}M | {world} rank(s) × {grad_accum} accumulation step(s) × "
            f"{cfg.micro_batch}×{cfg.seq_len} tokens"
        )
    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")
    fwd = torch.compile(model) if use_compile else model

    dataset = TokenDataset(train_files, cfg.seq_len, seed=cfg.seed, bos_aligned=cfg.bos_aligned)
    loader = DistributedLoader(dataset, cfg.micro_batch, rank=rank, world_size=world, grad_accum=grad_accum)

    def train_step(mult: float) -> torch.Tensor:
        """One optimizer step at lr × ``mult`` over grad_accum micro-batches and all ranks; the mean loss."""
        for opt in optimizers:
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * mult
        total = torch.zeros((), device=device)
        for _ in range(grad_accum):
            x, y = loader.next_batch()
            with autocast(device):
                loss = fwd(vocab.encode_tensor(x).to(device), vocab.encode_tensor(y).to(device))
            (loss / grad_accum).backward()
            total += loss.detach() / grad_accum
        if world > 1:  # average gradients and loss over ranks in one flat all-reduce
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            flat = torch.cat([g.flatten() for g in grads] + [total.view(1)])
            dist.all_reduce(flat, op=dist.ReduceOp.AVG)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            total = flat[-1]
        if not torch.isfinite(total):  # stop before the optimizer touches the weights
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            return total
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return total

    # Untimed warm-up (compilation, allocator), then restore the initial state so it leaves no trace.
    if cfg.untimed_warmup_steps > 0:
        initial = {
            "model": copy.deepcopy(model.state_dict()),
            "opt": [copy.deepcopy(o.state_dict()) for o in optimizers],
            "loader": loader.state_dict(),
        }
        for s in range(cfg.untimed_warmup_steps):
            train_step(lr_multiplier(s / cfg.steps, cfg))
        model.load_state_dict(initial["model"])
        for o, s in zip(optimizers, initial["opt"], strict=True):
            o.load_state_dict(s)
        loader.load_state_dict(initial["loader"])

    step, train_time_ms, total_steps = 0, 0.0, cfg.steps
    if resume_dir is not None:
        state = load_training_state(resume_dir, optimizers)
        step, train_time_ms = state["step"], state["train_time_ms"]
        total_steps = (
            state.get("total_steps", cfg.steps) if "steps" not in explicit_flags(argv) else cfg.steps
        )
        loader.load_state_dict(state["loader"])
        log(f"resumed from {resume_dir} at step {step}")

    extra = {"vocab": vocab.to_config()}
    saved_at = -1

    def checkpoint() -> Path | None:
        nonlocal saved_at
        if not master or saved_at == step:
            return None
        saved_at = step
        state = {
            "step": step,
            "total_steps": total_steps,
            "train_time_ms": train_time_ms,
            "loader": loader.state_dict(),
            "world_size": world,
        }
        return save_checkpoint(
            run_dir,
            model,
            optimizers,
            state,
            {"train": dataclasses.asdict(cfg), **extra},
            cfg.keep_checkpoints,
        )

    bytes_per_token = val_bytes_per_token(val_files, cfg.micro_batch, cfg.seq_len, cfg.val_tokens, world)
    history: dict = {"train_loss": [], "val": []}
    last_val, n_val = float("nan"), 0
    budget_ms, mark_ms = 1000 * cfg.max_train_seconds, 0.0
    calibrating = bool(cfg.max_train_seconds) and step == 0
    calibrate_at_ms = [0.1 * budget_ms] + (
        [0.9 * (1 - cfg.cooldown_frac) * budget_ms] if cfg.cooldown_frac < 0.8 else []
    )
    stop_signal: list[int] = []
    handlers = {
        sig: signal.signal(sig, lambda signum, frame: stop_signal.append(signum)) for sig in STOP_SIGNALS
    }
    try:
        t0 = time.perf_counter()
        while True:
            last = step >= total_steps
            if last or (cfg.val_every and step % cfg.val_every == 0):
                sync(device)
                train_time_ms += 1000 * (time.perf_counter() - t0)  # pause the clock during validation
                last_val, n_val = evaluate(model, val_files, cfg, vocab, device, rank, world)
                bpb = bits_per_byte(last_val, bytes_per_token)
                log(
                    f"step:{step}/{total_steps} val_loss:{last_val:.4f} val_bpb:{bpb:.4f} "
                    f"train_time:{train_time_ms:.0f}ms step_avg:{train_time_ms / max(step, 1):.2f}ms"
                )
                log.metrics(step, val_loss=last_val, val_bpb=bpb, train_time_ms=train_time_ms)
                history["val"].append((step, last_val, train_time_ms))
                sync(device)
                t0 = time.perf_counter()
            if last:
                break
            loss = train_step(lr_multiplier(step / total_steps, cfg))
            if not torch.isfinite(loss):
                latest = run_dir / LATEST
                where = f"{run_dir / latest.read_text().strip()}" if latest.is_file() else "none saved yet"
                raise TrainingDiverged(
                    f"non-finite training loss ({loss.item()}) at step {step}; the weights were not updated. "
                    f"Last good checkpoint: {where}. Lower the learning rates or enable --grad-clip."
                )
            step += 1
            history["train_loss"].append(loss.item())
            elapsed_ms = train_time_ms + 1000 * (time.perf_counter() - t0)
            if calibrating and step == CALIBRATION_SKIP:
                mark_ms = elapsed_ms
            if (
                calibrating
                and step >= CALIBRATION_SKIP + CALIBRATION_STEPS
                and elapsed_ms >= calibrate_at_ms[0]
            ):
                # The wall-clock budget becomes a step count (timed after the first, slower steps), measured again
                # before the cool-down starts: the lr is constant until then, so the schedule is unchanged, and
                # from the last calibration on the run (and a resume) is deterministic.
                calibrate_at_ms.pop(0)
                calibrating = bool(calibrate_at_ms)
                ms_per_step = (elapsed_ms - mark_ms) / (step - CALIBRATION_SKIP)
                fit = step + int((budget_ms - elapsed_ms) / ms_per_step)
                total_steps = agree(max(min(cfg.steps, fit), step), device, world, dist.ReduceOp.MIN)
                log(f"budget {cfg.max_train_seconds:.0f}s at {ms_per_step:.0f}ms/step: {total_steps} steps")
            if cfg.train_log_every and step % cfg.train_log_every == 0:
                log(f"step:{step}/{total_steps} train_loss:{loss.item():.4f} train_time:{elapsed_ms:.0f}ms")
            stop = agree(int(bool(stop_signal)), device, world, dist.ReduceOp.MAX)  # all ranks stop together
            if stop or (cfg.save_every and step % cfg.save_every == 0):
                sync(device)
                train_time_ms += 1000 * (time.perf_counter() - t0)
                path = checkpoint()
                if stop:
                    signum = stop_signal[0] if stop_signal else signal.SIGTERM
                    log(f"signal {signum}: saved {path} at step {step}; resume with --resume {run_dir}")
                    raise SystemExit(128 + signum)
                t0 = time.perf_counter()
        ckpt = checkpoint() or (run_dir / f"ckpt_{step:06d}" if master else None)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    if master:
        log(f"peak memory: {peak_memory_mb(device):.0f} MiB; checkpoint: {ckpt}")
        if cfg.bigram_baseline:
            bigram = bigram_reference(train_files, val_files, vocab, n_val)
            verdict = "below" if last_val < bigram else "NOT below"
            log(
                f"val_loss {last_val:.4f} vs interpolated bigram {bigram:.4f} nats/token (same split): {verdict}"
            )
            history["bigram_val_loss"] = bigram
        if cfg.sample_tokens:
            log(
                "sample: "
                + repr(sample(model, vocab, cfg.sample_prompt, cfg.sample_tokens, device, cfg.seed))
            )
    log.close()
    if world > 1:
        dist.destroy_process_group()
    return {"val_loss": last_val, "step": step, "train_time_ms": train_time_ms, "checkpoint": ckpt, **history}


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A --max-train-seconds budget is turned into a step count from the time per step measured over at least
# CALIBRATION_STEPS steps and 10% of the budget, after skipping the first CALIBRATION_SKIP steps; it is measured
# again at 90% of the stable phase, before the cool-down.
CALIBRATION_SKIP, CALIBRATION_STEPS = 3, 10


def agree(value: int, device: torch.device, world: int, op) -> int:
    """The value all ranks agree on (reduced with ``op``); the value itself on one process."""
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=op)
    return int(t.item())


def explicit_flags(argv: list[str] | None) -> set[str]:
    """Names of the TrainConfig fields given on the command line."""
    return {k for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    try:
        main()
    except (TrainingDiverged, CheckpointError, ConfigError, VocabError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
