"""Training checkpoints: ``run_dir/ckpt_{step}/`` with weights, config, optimizer, loader and RNG state.

A checkpoint folder is assembled under a temporary name and renamed when complete; ``LATEST`` (a one-line file
naming the newest folder) is replaced atomically afterwards, so an interrupted save leaves the previous checkpoint
as the latest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from model import GPT
from model.io import (
    LATEST,
    CheckpointError,
    atomic_write_json,
    load_tensors,
    read_json,
    save_model,
    save_tensors,
)


def save_checkpoint(
    run_dir: Path, model: GPT, optimizers: list[torch.optim.Optimizer], state: dict, config: dict, keep: int
) -> Path:
    """Write ``run_dir/ckpt_{state['step']}`` and point LATEST at it; keep the newest ``keep`` checkpoints.

    ``config`` is stored in ``config.json`` beside the model's own fields (e.g. ``{"train": {...}, "vocab": ...}``);
    ``state`` (step, loader position, ...) goes to ``state.json``.
    """
    name = f"ckpt_{state['step']:06d}"
    final, tmp = run_dir / name, run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp, extra_config=config)
    torch.save([opt.state_dict() for opt in optimizers], tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_tensors(tmp / "rng.safetensors", rng)
    atomic_write_json(tmp / "state.json", state)
    aside = run_dir / f".{name}.old"
    if final.exists():  # keep the old folder until the new one is in place
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    shutil.rmtree(aside, ignore_errors=True)
    (run_dir / f".{LATEST}.tmp").write_text(name + "\n")
    os.replace(run_dir / f".{LATEST}.tmp", run_dir / LATEST)
    old = sorted(p for p in run_dir.glob("ckpt_*") if p.is_dir() and p != final)
    for p in old[: max(len(old) - (keep - 1), 0)]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def load_training_state(ckpt: Path, optimizers: list[torch.optim.Optimizer]) -> dict:
    """Load optimizer and RNG state from ``ckpt`` in place; return its ``state.json``."""
    state = read_json(ckpt / "state.json")
    for key in ("step", "train_time_ms", "loader"):
        if key not in state:
            raise CheckpointError(f"{ckpt / 'state.json'}: missing field {key!r}")
    path = ckpt / "optimizer.pt"
    try:  # weights_only: plain tensors and containers, never arbitrary objects
        opt_states = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found") from e
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable optimizer state ({e})") from e
    if not isinstance(opt_states, list) or len(opt_states) != len(optimizers):
        raise CheckpointError(f"{path}: expected {len(optimizers)} optimizer states")
    for opt, s in zip(optimizers, opt_states, strict=True):
        try:
            opt.load_state_dict(s)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit this model ({e})") from e
    rng = load_tensors(ckpt / "rng.safetensors")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state
