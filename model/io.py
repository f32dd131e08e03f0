"""Checkpoint I/O for models: safetensors weights + JSON config, written atomically, never unpickled.

A model directory holds ``model.safetensors`` and ``config.json`` ({"model": GPTConfig fields, ...}).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import safetensors.torch
import torch

from .config import ConfigError, GPTConfig
from .gpt import GPT

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LATEST = "LATEST"  # in a run folder: the name of its newest checkpoint folder


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or does not fit the model; the message names it."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``.

    A reader never sees a half-written file: the old file (if any) stays until the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; checkpoints are ordinary shared files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, safetensors.torch.save(data, metadata=metadata))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return safetensors.torch.load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error type for truncated/corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def save_model(model: GPT, directory: str | Path, extra_config: dict | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (each atomically)."""
    directory = Path(directory)
    save_tensors(directory / WEIGHTS_FILE, model.state_dict())
    atomic_write_json(directory / CONFIG_FILE, {"model": model.config.to_dict(), **(extra_config or {})})


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder (its LATEST file names the checkpoint) or a checkpoint folder -> the checkpoint folder."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder (expected a run folder or a checkpoint folder)")
    if (p / LATEST).is_file():
        name = (p / LATEST).read_text().strip()
        if not name or not (p / name).is_dir():
            raise CheckpointError(f"{p / LATEST} names {name!r}, which is not a checkpoint folder in {p}")
        p = p / name
    if not (p / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{p}: no checkpoint here, not a checkpoint folder (expected a {LATEST} file or {CONFIG_FILE})"
        )
    return p


def load_config(directory: str | Path) -> GPTConfig:
    path = Path(directory) / CONFIG_FILE
    obj = read_json(path)
    if not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path}: missing the 'model' object with the GPTConfig fields")
    try:
        return GPTConfig.from_dict(obj["model"], source=str(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from e


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> GPT:
    """Build the GPT described by ``directory/config.json`` and load ``model.safetensors`` into it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    model = GPT(load_config(directory))
    state = load_tensors(directory / WEIGHTS_FILE, device="cpu")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE}: tensors do not match config.json "
            f"(missing {missing[:5]}{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]})"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{directory / WEIGHTS_FILE}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state)
    return model.to(device)
