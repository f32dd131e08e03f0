"""Checkpoint I/O for models: safetensors weights + JSON config, written atomically, never unpickled.

A model directory holds ``model.safetensors`` and ``config.json`` ({"model": GPTConfig fields, ...}). A run folder
holds checkpoint folders and ``LATEST``, one line naming the newest. Every file is validated where it is read:
a bad one raises ``CheckpointError("<file>: <what is wrong>")``; a full or read-only disk raises
``errors.StorageError("<file>: no space left on device")`` and leaves no temporary file behind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import safetensors.torch
import torch

from errors import TntError, atomic_write_bytes, atomic_write_json, storage_error

from .config import ConfigError, GPTConfig
from .gpt import GPT

if TYPE_CHECKING:  # model.lora imports this module's errors lazily; import it lazily here too
    from .lora import LoRAConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LORA_FILE = "lora.safetensors"  # a LoRA model's adapters and the base weights they adapt (model.lora)
MODEL_FILES = (WEIGHTS_FILE, CONFIG_FILE)  # what a folder needs to be a loadable model
LATEST = "LATEST"  # in a run folder: the name of its newest checkpoint folder
_LATEST_MAX_BYTES = 4096


class CheckpointError(TntError, ValueError):
    """A checkpoint file is missing, truncated, corrupt or does not fit the model; the message names it."""


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_json(path: str | Path, error: type[Exception] = CheckpointError) -> dict:
    """The JSON object in ``path``; ``error`` (one line naming the file) if it is missing, unreadable or not an
    object. NaN and Infinity, which Python's json would accept, are refused."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise storage_error(e, path) from e
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a text file (invalid UTF-8 at byte {e.start})") from e
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise error(f"{path}: not valid JSON ({' '.join(str(e).split())[:120]})") from e
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a JSON object, got {type(obj).__name__}")
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
    except OSError as e:
        raise storage_error(e, path) from e
    except Exception as e:  # safetensors raises its own error type for truncated/corrupt headers
        reason = " ".join(str(e).split())[:160]
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from e


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, torch.Tensor] | None:
    """The first (name, tensor) among floating tensors holding inf or NaN; None when all are finite.

    One device synchronisation for all tensors (the name is looked up only after a failure).
    """
    items = [
        (n, t) for n, t in named if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
    ]
    if not items:
        return None
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(items):
        by_device.setdefault(t.device, []).append(i)
    ok = torch.ones(len(items), dtype=torch.bool)
    for indices in by_device.values():  # one reduction and one copy to the host per device
        ok[indices] = torch.stack([torch.isfinite(items[i][1].detach()).all() for i in indices]).cpu()
    if bool(ok.all()):
        return None
    return items[int((~ok).nonzero()[0, 0])]


def describe_nonfinite(t: torch.Tensor) -> str:
    """'3 inf, 1 nan of 4096 values'."""
    t = t.detach()
    n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
    parts = [f"{n_inf} inf"] * bool(n_inf) + [f"{n_nan} nan"] * bool(n_nan)
    return f"{', '.join(parts)} of {t.numel()} values"


def save_model(model: GPT, directory: str | Path, extra_config: dict | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (each atomically).

    A model with LoRA adapters (model.lora) writes its merged weights W + ΔW to ``model.safetensors`` (a plain
    GPT's, for every reader), the adapters and the base weights they adapt to ``lora.safetensors``, and its
    LoRAConfig to config.json's "lora".
    """
    from .lora import adapter_state_dict, lora_config, merged_state_dict

    directory = Path(directory)
    config = {"model": model.config.to_dict(), **(extra_config or {})}
    lora = lora_config(model)
    if lora is None:
        save_tensors(directory / WEIGHTS_FILE, model.state_dict())
        (directory / LORA_FILE).unlink(missing_ok=True)  # a stale one would contradict config.json
    else:
        save_tensors(directory / LORA_FILE, adapter_state_dict(model))
        save_tensors(directory / WEIGHTS_FILE, merged_state_dict(model))
        config["lora"] = lora.to_dict()
    atomic_write_json(directory / CONFIG_FILE, config)


def missing_files(folder: str | Path, files: Iterable[str] = MODEL_FILES) -> list[str]:
    """The names among ``files`` that are not regular files in ``folder`` (empty: the folder is complete)."""
    folder = Path(folder)
    return [f for f in files if not (folder / f).is_file()]


def read_latest(run_dir: str | Path) -> str:
    """The checkpoint folder name that ``run_dir/LATEST`` holds, checked to be one plain folder name."""
    path = Path(run_dir) / LATEST
    try:
        with open(path, "rb") as f:
            raw = f.read(_LATEST_MAX_BYTES + 1)
    except OSError as e:
        raise storage_error(e, path) from e
    hint = "it should hold one line naming a checkpoint folder, e.g. ckpt_000100"
    if len(raw) > _LATEST_MAX_BYTES:
        raise CheckpointError(f"{path}: too large for a {LATEST} file ({hint})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not a text file (binary data; {hint})") from None
    lines = text.strip().splitlines()
    name = lines[0].strip() if len(lines) == 1 else ""
    if not name:
        raise CheckpointError(f"{path}: {'empty' if not lines else 'more than one line'} ({hint})")
    if not name.isprintable() or "/" in name or "\\" in name or name.startswith("."):
        raise CheckpointError(f"{path}: {name[:60]!r} is not a checkpoint folder name ({hint})")
    return name


def resolve_checkpoint(path: str | Path, required: Iterable[str] = MODEL_FILES) -> Path:
    """A run folder (its LATEST file names the checkpoint) or a checkpoint folder -> the checkpoint folder.

    The folder must hold every file in ``required`` (a model's by default; the trainer asks for its own).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or folder (expected a run folder or a checkpoint folder)")
    if (p / LATEST).is_file():
        name = read_latest(p)
        if not (p / name).is_dir():
            raise CheckpointError(f"{p / LATEST}: names {name!r}, which is not a checkpoint folder in {p}")
        p = p / name
    elif not p.is_dir() or not (p / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{p}: no checkpoint here, not a checkpoint folder (expected a {LATEST} file or {CONFIG_FILE})"
        )
    missing = missing_files(p, required)
    if missing:
        raise CheckpointError(f"{p}: incomplete checkpoint folder (missing {', '.join(missing)})")
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


def load_lora_config(directory: str | Path) -> LoRAConfig | None:
    """The LoRAConfig in ``directory/config.json`` ("lora"), None when the model has no adapters."""
    from .lora import LoRAConfig

    path = Path(directory) / CONFIG_FILE
    obj = read_json(path)
    if "lora" not in obj:
        return None
    try:
        return LoRAConfig.from_dict(obj["lora"], source=str(path))
    except ConfigError as e:
        raise CheckpointError(str(e)) from e


def check_tensors(
    source: str | Path,
    tensors: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    against: str,
    allow_nonfinite: bool = False,
) -> None:
    """Refuse (CheckpointError naming ``source``) ``tensors`` that do not fit ``expected`` (what ``against``, e.g.
    "config.json", implies): missing or unexpected names, other shapes, integer for float, and inf/NaN values (a
    diverged run) unless ``allow_nonfinite``."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: tensors do not match {against} "
            f"(missing {missing[:5]}{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]})"
        )
    for name, tensor in tensors.items():
        want = expected[name]
        if tensor.shape != want.shape:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, {against} implies {tuple(want.shape)}"
            )
        if tensor.is_floating_point() != want.is_floating_point():
            raise CheckpointError(
                f"{source}: tensor {name!r} has dtype {tensor.dtype}, expected {want.dtype}"
            )
    if not allow_nonfinite and (bad := first_nonfinite(tensors.items())) is not None:
        raise CheckpointError(
            f"{source}: tensor {bad[0]!r} holds non-finite values ({describe_nonfinite(bad[1])}); the run had "
            "diverged when this was saved: use an earlier checkpoint"
        )


def load_trained_model(directory: str | Path, device: str | torch.device = "cpu") -> GPT:
    """The function ``directory`` was trained to compute: the plain GPT of its merged weights, except for a LoRA
    finetune behind a separator mask (``--lora-mask-after``), whose merged weights would act at every position:
    then base + adapters with the mask (``load_model(directory, adapters=True)``)."""
    lora = load_lora_config(directory)
    return load_model(directory, device, adapters=lora is not None and lora.mask_token is not None)


def load_model(
    directory: str | Path,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
    adapters: bool = False,
) -> GPT:
    """Build the GPT described by ``directory/config.json`` and load ``model.safetensors`` into it.

    Refused, naming the tensor: missing or unexpected tensors, wrong shapes or dtypes, and inf/NaN values (a
    diverged run; ``allow_nonfinite`` loads them anyway, for post-mortems). A LoRA checkpoint loads as a plain
    GPT with the merged weights; with ``adapters`` it is the training-time model (model.lora: frozen base,
    adapters, position mask) rebuilt from ``lora.safetensors``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    model = GPT(load_config(directory))
    path = directory / WEIGHTS_FILE
    state = load_tensors(path, device="cpu")
    check_tensors(path, state, model.state_dict(), "config.json", allow_nonfinite)
    model.load_state_dict(state)
    if adapters:
        _attach_saved_adapters(model, directory, state, allow_nonfinite)
    return model.to(device)


def _attach_saved_adapters(model: GPT, directory: Path, merged: dict, allow_nonfinite: bool) -> None:
    """apply_lora with config.json's LoRAConfig, then lora.safetensors; checked against the merged weights."""
    from .lora import apply_lora, load_adapters, merged_state_dict

    lora = load_lora_config(directory)
    if lora is None:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: no 'lora' entry: not a LoRA checkpoint (load it without adapters)"
        )
    try:  # a throwaway generator: the saved adapters replace the initialisation, the global RNG stays as it was
        apply_lora(model, lora, torch.Generator().manual_seed(0))
    except ConfigError as e:
        raise CheckpointError(f"{directory / CONFIG_FILE}: 'lora': {e}") from e
    path = directory / LORA_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (config.json names LoRA adapters: {lora})")
    load_adapters(model, load_tensors(path), source=str(path), allow_nonfinite=allow_nonfinite)
    if allow_nonfinite:
        return
    for name, w in merged_state_dict(model).items():
        if name in merged and w.is_floating_point():
            # rounding (another device, TF32) stays far below this; files of different checkpoints do not
            tol = (8 * torch.finfo(w.dtype).eps + 1e-3) * float(merged[name].abs().max())
            err = float((w - merged[name]).abs().max()) if w.numel() else 0.0
            if not err <= tol:  # also catches NaN
                raise CheckpointError(
                    f"{path}: base weights + adapters do not give {WEIGHTS_FILE}'s {name!r} (max error {err:.3g}): "
                    "the two files are from different checkpoints"
                )
