"""Training checkpoints: ``run_dir/ckpt_{step}/`` with weights, config, optimizer, loader and RNG state.

Writing (``save_checkpoint``) survives kill -9, a full disk and divergence:

- nothing non-finite is saved: the weights and optimizer moments are checked first (``NonFiniteError``);
- a folder is assembled under ``.ckpt_N.tmp`` and renamed into place when complete, then ``LATEST`` (one line
  naming it) is replaced atomically; a failed write removes the temporary folder and leaves the previous
  checkpoint and ``LATEST`` as they were;
- a pruned checkpoint is first renamed out of the ``ckpt_*`` namespace (``.trash_ckpt_N``), then deleted, so no
  half-deleted ``ckpt_*`` folder is ever seen; ``clean_run_dir`` removes what a crash left behind.

Reading (``read_training_state`` / ``load_training_state``) validates every file against what it must hold
(``state.json`` fields and ranges, the optimizer state's structure, shapes and finiteness, the RNG tensors) before
anything is applied, and raises ``CheckpointError("<file>: <what is wrong>")``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import re
import shutil
import types
import typing
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch

from data.loader import DistributedLoader, LoaderError
from errors import StorageError, TntError, atomic_write_bytes, atomic_write_json, fsync_dir, require, writing
from model import GPT
from model.io import (
    CONFIG_FILE,
    LATEST,
    WEIGHTS_FILE,
    CheckpointError,
    describe_nonfinite,
    first_nonfinite,
    load_tensors,
    missing_files,
    read_json,
    read_latest,
    save_model,
    save_tensors,
)

OPTIMIZER_FILE, RNG_FILE, STATE_FILE = "optimizer.pt", "rng.safetensors", "state.json"
CHECKPOINT_FILES = (WEIGHTS_FILE, CONFIG_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE)
CHECKPOINT_RE = re.compile(r"ckpt_(\d+)")
TRASH_PREFIX = ".trash_"
# What a crash can leave in a run folder: a checkpoint being assembled, one set aside while its name is re-used,
# one being deleted, and atomic-write temporaries of LATEST.
_STALE_RE = re.compile(r"\.(ckpt_\d+\.tmp|ckpt_\d+\.old|trash_.+|LATEST\..*tmp)")


class NonFiniteError(TntError):
    """The weights or optimizer moments hold inf or NaN: the run diverged, and nothing was saved."""


def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:06d}"


def checkpoint_step(folder: Path) -> int | None:
    m = CHECKPOINT_RE.fullmatch(folder.name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: str | Path, complete: bool = True) -> list[Path]:
    """``ckpt_*`` folders of ``run_dir`` by increasing step; only those holding every checkpoint file if
    ``complete``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    if complete:
        found = [p for p in found if not missing_files(p, CHECKPOINT_FILES)]
    return sorted(found, key=checkpoint_step)


# ------------------------------------------------------------------ divergence


def _param_names(model: GPT | None) -> dict[int, str]:
    return {} if model is None else {id(p): n for n, p in model.named_parameters()}


def _optimizer_tensors(
    optimizers: list[torch.optim.Optimizer], names: dict[int, str]
) -> Iterable[tuple[str, torch.Tensor]]:
    for k, opt in enumerate(optimizers):
        for p, st in opt.state.items():
            pname = names.get(id(p), f"a {tuple(p.shape)} parameter")
            for key, v in st.items():
                if isinstance(v, torch.Tensor):
                    yield f"optimizer {k} ({type(opt).__name__}) state {key!r} of {pname!r}", v


def find_nonfinite(model: GPT, optimizers: list[torch.optim.Optimizer] = ()) -> str | None:
    """A description of the first parameter or optimizer moment holding inf/NaN; None when all are finite."""
    names = _param_names(model)
    named = chain(
        ((f"parameter {n!r}", p) for n, p in model.named_parameters()),
        _optimizer_tensors(list(optimizers), names),
    )
    bad = first_nonfinite(named)
    return None if bad is None else f"{bad[0]} holds non-finite values ({describe_nonfinite(bad[1])})"


def check_finite(
    model: GPT,
    optimizers: list[torch.optim.Optimizer] = (),
    run_dir: str | Path | None = None,
    step: int | None = None,
) -> None:
    """Raise NonFiniteError naming the first non-finite parameter or moment and the last good checkpoint.

    Call it on every rank before a save and at the end of training (the weights are the same on all ranks).
    """
    problem = find_nonfinite(model, optimizers)
    if problem is None:
        return
    at = f" at step {step}" if step is not None else ""
    good = last_finite_checkpoint(run_dir) if run_dir is not None else None
    where = (
        f"{Path(run_dir) / checkpoint_name(step)}: not saved: "
        if run_dir is not None and step is not None
        else ""
    )
    raise NonFiniteError(
        f"{where}{problem}{at}; the run diverged. Last good checkpoint: {good or 'none saved yet'}. "
        "Lower the learning rates or enable --grad-clip."
    )


def checkpoint_is_finite(ckpt: str | Path) -> bool:
    """Whether ``ckpt``'s weights and optimizer moments load and are all finite (a cheap, load-only check)."""
    ckpt = Path(ckpt)
    try:
        weights = load_tensors(ckpt / WEIGHTS_FILE)
        if first_nonfinite(weights.items()) is not None:
            return False
        opt_states = _torch_load(ckpt / OPTIMIZER_FILE)
    except TntError:
        return False
    tensors = [t for t in _walk_tensors(opt_states)]
    return first_nonfinite((str(i), t) for i, t in enumerate(tensors)) is None


def _walk_tensors(obj) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _walk_tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _walk_tensors(v)


def last_finite_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of ``run_dir`` whose weights and moments are finite: the one LATEST names,
    else the next older ones; None when there is none."""
    run_dir = Path(run_dir)
    folders = list_checkpoints(run_dir)
    try:
        latest = run_dir / read_latest(run_dir) if (run_dir / LATEST).is_file() else None
    except TntError:
        latest = None
    if (
        latest is not None and latest in folders
    ):  # LATEST first, then older checkpoints (not abandoned newer ones)
        folders = [p for p in folders if checkpoint_step(p) < checkpoint_step(latest)] + [latest]
    for folder in reversed(folders):
        if checkpoint_is_finite(folder):
            return folder
    return None


# ------------------------------------------------------------------ writing


def clean_run_dir(run_dir: str | Path) -> list[Path]:
    """Remove what an interrupted save left in ``run_dir``; returns the paths removed.

    ``.ckpt_N.tmp`` (a folder being assembled), ``.trash_*`` (being deleted) and LATEST temporaries go; a
    ``.ckpt_N.old`` (a complete checkpoint set aside while its name was re-used) is put back when ``ckpt_N`` is
    missing, and removed otherwise. Call it at start-up on rank 0; ``save_checkpoint`` calls it too.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = []
    for p in sorted(run_dir.iterdir()):
        if not _STALE_RE.fullmatch(p.name):
            continue
        if p.name.endswith(".old") and p.is_dir():
            final = run_dir / p.name[1 : -len(".old")]
            if not final.exists():
                with writing(final):
                    os.replace(p, final)
                continue
        _remove(p)
        removed.append(p)
    return removed


def _remove(p: Path) -> None:
    """Delete a file or folder; a folder is renamed to a .trash_ name first unless it already is one."""
    with writing(p):
        if p.is_dir() and not p.is_symlink():
            if not p.name.startswith(TRASH_PREFIX):
                trash = p.with_name(f"{TRASH_PREFIX}{p.name.lstrip('.')}")
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(p, trash)
                p = trash
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(
        obj, buf
    )  # into memory: the file itself is written by atomic_write_bytes (clear ENOSPC errors)
    return buf.getvalue()


def save_checkpoint(
    run_dir: Path, model: GPT, optimizers: list[torch.optim.Optimizer], state: dict, config: dict, keep: int
) -> Path:
    """Write ``run_dir/ckpt_{state['step']}`` and point LATEST at it; keep the newest ``keep`` checkpoints.

    ``config`` is stored in ``config.json`` beside the model's own fields (e.g. ``{"train": {...}, "vocab": ...}``);
    ``state`` (step, loader position, ...) goes to ``state.json``. Raises NonFiniteError (nothing written) when
    the weights or moments are not finite, and StorageError ``<checkpoint>: not saved: no space left on device
    ...`` when the disk is full or read-only; either way the previous checkpoint and LATEST are unchanged.
    """
    run_dir = Path(run_dir)
    step = state["step"]
    check_finite(model, optimizers, run_dir, step)
    name = checkpoint_name(step)
    final, tmp, aside = run_dir / name, run_dir / f".{name}.tmp", run_dir / f".{name}.old"
    try:
        clean_run_dir(run_dir)
        with writing(tmp):
            tmp.mkdir(parents=True)
        save_model(model, tmp, extra_config=config)
        atomic_write_bytes(tmp / OPTIMIZER_FILE, _torch_bytes([opt.state_dict() for opt in optimizers]))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_tensors(tmp / RNG_FILE, rng)
        atomic_write_json(tmp / STATE_FILE, state)
        with writing(final):
            if (
                final.exists()
            ):  # re-using a name (resumed from an older checkpoint): keep the old one until done
                os.replace(final, aside)
            os.replace(tmp, final)
        try:
            atomic_write_bytes(run_dir / LATEST, (name + "\n").encode())
        except BaseException:  # LATEST still names the previous checkpoint: put everything back as it was
            _remove(final)
            if aside.exists():
                os.replace(aside, final)
            raise
    except StorageError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = _previous(run_dir)
        raise StorageError(
            f"{final}: not saved: {e.reason} (writing {e.path}); {previous}", e.errno, e.path, e.reason
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(run_dir)
    if aside.exists():
        _remove(aside)
    _prune(run_dir, final, keep)
    return final


def _previous(run_dir: Path) -> str:
    try:
        name = read_latest(run_dir) if (run_dir / LATEST).is_file() else None
    except TntError:
        name = None
    return f"{LATEST} still names {run_dir / name}" if name else "no checkpoint was saved before"


def _prune(run_dir: Path, final: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``final`` always stays), each renamed to .trash_ first."""
    old = [p for p in list_checkpoints(run_dir, complete=False) if p != final]
    for p in old[: max(len(old) - (keep - 1), 0)]:
        with contextlib.suppress(StorageError):  # a folder that cannot be deleted now goes at the next save
            _remove(p)


# ------------------------------------------------------------------ reading


@dataclass
class TrainingState:
    """A checkpoint's training state, validated and not yet applied (see ``read_training_state``)."""

    path: Path
    state: dict
    optimizer_states: list[dict]
    rng: dict[str, torch.Tensor]


def read_state_json(ckpt: str | Path) -> dict:
    """``ckpt/state.json`` checked against its schema: step (int ≥ 0), train_time_ms (number ≥ 0), total_steps
    (int ≥ step, optional), world_size (int ≥ 1, optional) and the loader's position (ints)."""
    path = Path(ckpt) / STATE_FILE
    state = read_json(path)
    req = dict(where=path, error=CheckpointError)
    step = require(state, "step", "int", minimum=0, **req)
    require(state, "train_time_ms", "number", minimum=0, **req)
    require(state, "total_steps", "int", minimum=step, optional=True, **req)
    require(state, "world_size", "int", minimum=1, optional=True, **req)
    loader = require(state, "loader", "dict", **req)
    for key, low in (("step", 0), ("micro_step", 0), ("batch_size", 1), ("world_size", 1), ("grad_accum", 1)):
        require(loader, key, "int", minimum=low, prefix="loader.", **req)
    if loader["micro_step"] >= loader["grad_accum"]:
        raise CheckpointError(
            f"{path}: field 'loader.micro_step' must be < loader.grad_accum = {loader['grad_accum']}, "
            f"got {loader['micro_step']}"
        )
    return state


def _torch_load(path: Path):
    """``torch.load(weights_only=True)`` with tnt's own one-line messages (torch's suggest weights_only=False,
    which must never be done with a file from elsewhere: unpickling runs code)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():  # e.g. torch's note on the pickle protocol: not for the user
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: it holds Python objects other than tensors and plain containers "
            "(loading those would run code from the file)"
        ) from e
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable optimizer state ({type(e).__name__})") from e
    except Exception as e:  # zip-archive and unpickling errors of a truncated or corrupt file
        first = str(e).strip().splitlines()[0][:100] if str(e).strip() else ""
        detail = "" if not first or "weights_only" in first else f": {first}"
        raise CheckpointError(
            f"{path}: unreadable optimizer state (truncated or corrupt, {type(e).__name__}{detail})"
        ) from e


def _same_kind(current, saved) -> bool:
    if current is None:
        return True
    if isinstance(current, bool):
        return isinstance(saved, bool)
    if isinstance(current, int | float):
        return isinstance(saved, int | float) and not isinstance(saved, bool)
    if isinstance(current, list | tuple):
        return isinstance(saved, list | tuple) and len(saved) == len(current)
    if isinstance(current, torch.Tensor):
        return isinstance(saved, torch.Tensor) and saved.shape == current.shape
    return isinstance(saved, type(current))


def check_optimizer_states(
    path: Path, saved: object, optimizers: list[torch.optim.Optimizer], model: GPT | None = None
) -> None:
    """Refuse (CheckpointError naming ``path`` and the parameter) saved optimizer states that do not fit
    ``optimizers``: structure, hyper-parameter types, moment shapes and dtypes, and inf/NaN in the moments."""
    names = _param_names(model)
    if not isinstance(saved, list) or len(saved) != len(optimizers):
        got = f"a list of {len(saved)}" if isinstance(saved, list) else type(saved).__name__
        raise CheckpointError(f"{path}: expected a list of {len(optimizers)} optimizer states, got {got}")
    for k, (opt, s) in enumerate(zip(optimizers, saved, strict=True)):
        where = f"{path}: optimizer {k} ({type(opt).__name__})"
        if (
            not isinstance(s, dict)
            or not isinstance(s.get("state"), dict)
            or not isinstance(s.get("param_groups"), list)
        ):
            raise CheckpointError(f"{where}: not an optimizer state (expected 'state' and 'param_groups')")
        groups = s["param_groups"]
        if len(groups) != len(opt.param_groups):
            raise CheckpointError(
                f"{where}: {len(groups)} parameter groups, this model has {len(opt.param_groups)}"
            )
        ids: dict[object, torch.Tensor] = {}
        for j, (g, cur) in enumerate(zip(groups, opt.param_groups, strict=True)):
            if not isinstance(g, dict) or not isinstance(g.get("params"), list):
                raise CheckpointError(f"{where}: parameter group {j} is not a dict with a 'params' list")
            if len(g["params"]) != len(cur["params"]):
                raise CheckpointError(
                    f"{where}: parameter group {j} holds {len(g['params'])} parameters, this model {len(cur['params'])}"
                )
            for key, value in cur.items():
                if key in ("params", "param_names"):
                    continue
                if key not in g:
                    raise CheckpointError(f"{where}: parameter group {j} lacks {key!r}")
                if not _same_kind(value, g[key]):
                    raise CheckpointError(
                        f"{where}: parameter group {j}: {key!r} is {type(g[key]).__name__} {str(g[key])[:40]!r}, "
                        f"expected a value like {value!r}"
                    )
                if isinstance(g[key], float) and not torch.isfinite(torch.tensor(g[key])):
                    raise CheckpointError(f"{where}: parameter group {j}: {key!r} is {g[key]}")
            ids.update(zip(g["params"], cur["params"], strict=True))
        for idx, st in s["state"].items():
            if idx not in ids:
                raise CheckpointError(f"{where}: state for parameter index {idx!r}, which no group holds")
            p = ids[idx]
            pname = names.get(id(p), f"parameter {idx} {tuple(p.shape)}")
            if not isinstance(st, dict):
                raise CheckpointError(f"{where}: state of {pname!r} is {type(st).__name__}, not a dict")
            for key, v in st.items():
                if not isinstance(v, torch.Tensor):
                    continue
                if v.ndim > 0 and v.shape != p.shape:
                    raise CheckpointError(
                        f"{where}: {key!r} of {pname!r} has shape {tuple(v.shape)}, the parameter "
                        f"{tuple(p.shape)}; written for a different model"
                    )
                if v.ndim > 0 and not (v.is_floating_point() and p.is_floating_point()):
                    raise CheckpointError(f"{where}: {key!r} of {pname!r} has dtype {v.dtype}")
                if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
                    raise CheckpointError(
                        f"{where}: {key!r} of {pname!r} holds non-finite values ({describe_nonfinite(v)}); the run "
                        "had diverged when this was saved: use an earlier checkpoint"
                    )


def read_rng(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """``ckpt/rng.safetensors``: 'torch' (and 'cuda' from GPU runs), uint8 vectors of the RNGs' state sizes."""
    path = Path(ckpt) / RNG_FILE
    rng = load_tensors(path)
    if "torch" not in rng:
        raise CheckpointError(f"{path}: missing tensor 'torch' (the CPU generator state)")
    unknown = sorted(set(rng) - {"torch", "cuda"})
    if unknown:
        raise CheckpointError(
            f"{path}: unexpected tensors {unknown} (expected 'torch' and optionally 'cuda')"
        )
    sizes = {"torch": torch.get_rng_state().numel()}
    if "cuda" in rng and torch.cuda.is_available():
        sizes["cuda"] = torch.cuda.get_rng_state().numel()
    for key, t in rng.items():
        if t.dtype != torch.uint8 or t.ndim != 1:
            raise CheckpointError(
                f"{path}: tensor {key!r} must be a uint8 vector, got {t.dtype} {tuple(t.shape)}"
            )
        if key in sizes and t.numel() != sizes[key]:
            raise CheckpointError(
                f"{path}: tensor {key!r} holds {t.numel()} bytes, a {key} RNG state {sizes[key]}"
            )
    try:  # the CPU generator checks its state's contents too: try it on a throwaway generator
        torch.Generator().set_state(rng["torch"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: tensor 'torch' is not a valid CPU generator state ({e})") from e
    return rng


def read_training_state(
    ckpt: str | Path,
    optimizers: list[torch.optim.Optimizer],
    model: GPT | None = None,
    loader: DistributedLoader | None = None,
) -> TrainingState:
    """Read and validate ``ckpt``'s state.json, optimizer.pt and rng.safetensors against this run's optimizers
    (and ``loader``'s geometry) without changing anything. ``model`` only names parameters in messages."""
    ckpt = Path(ckpt)
    state = read_state_json(ckpt)
    if loader is not None:
        try:
            loader.check_state_dict(state["loader"])
        except LoaderError as e:
            raise CheckpointError(f"{ckpt / STATE_FILE}: loader: {e}") from e
    path = ckpt / OPTIMIZER_FILE
    opt_states = _torch_load(path)
    check_optimizer_states(path, opt_states, optimizers, model)
    return TrainingState(ckpt, state, opt_states, read_rng(ckpt))


def apply_training_state(
    ts: TrainingState, optimizers: list[torch.optim.Optimizer], loader: DistributedLoader | None = None
) -> dict:
    """Load validated state into ``optimizers`` (and ``loader``), set the RNGs; return the state.json dict."""
    path = ts.path / OPTIMIZER_FILE
    for k, (opt, s) in enumerate(zip(optimizers, ts.optimizer_states, strict=True)):
        try:
            opt.load_state_dict(s)
        except (
            ValueError,
            KeyError,
            TypeError,
            RuntimeError,
        ) as e:  # tnt's Muon: ValueError with a clear message
            raise CheckpointError(
                f"{path}: optimizer {k} ({type(opt).__name__}) state does not fit this model ({' '.join(str(e).split())})"
            ) from e
    if loader is not None:
        try:
            loader.load_state_dict(ts.state["loader"])
        except LoaderError as e:
            raise CheckpointError(f"{ts.path / STATE_FILE}: loader: {e}") from e
    torch.set_rng_state(ts.rng["torch"])
    if "cuda" in ts.rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(ts.rng["cuda"])
    return ts.state


def load_training_state(
    ckpt: Path,
    optimizers: list[torch.optim.Optimizer],
    model: GPT | None = None,
    loader: DistributedLoader | None = None,
) -> dict:
    """``read_training_state`` then ``apply_training_state``: optimizer, RNG (and loader) state from ``ckpt``
    loaded in place; returns its ``state.json``."""
    return apply_training_state(read_training_state(ckpt, optimizers, model, loader), optimizers, loader)


# ------------------------------------------------------------------ saved settings


def saved_train_settings(ckpt: str | Path, settings: type) -> dict:
    """The ``train`` object of ``ckpt/config.json``, each field checked against the dataclass ``settings``.

    Fields ``settings`` does not know are dropped; int, float, bool, str, ``X | None`` and ``tuple[...]`` fields
    are type-checked (lists become tuples), so a wrong type is a one-line error naming the file and field.
    """
    path = Path(ckpt) / CONFIG_FILE
    saved = read_json(path).get("train")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: no 'train' object with the run's settings to resume with")
    hints = typing.get_type_hints(settings)
    out = {}
    for f in dataclasses.fields(settings):
        if f.name in saved:
            out[f.name] = _check_setting(
                path, f"train.{f.name}", saved[f.name], hints.get(f.name, typing.Any)
            )
    return out


def _check_setting(path: Path, name: str, value, hint):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _check_setting(path, name, value, rest[0])
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or (
            args and args[-1] is not Ellipsis and len(value) != len(args)
        ):
            raise CheckpointError(
                f"{path}: field {name!r} must be a list of {len(args)} values, got {value!r}"
            )
        kinds = args[:1] * len(value) if args and args[-1] is Ellipsis else args
        return tuple(
            _check_setting(path, f"{name}[{i}]", v, a)
            for i, (v, a) in enumerate(zip(value, kinds, strict=True))
        )
    kind = {int: "int", float: "number", bool: "bool", str: "str"}.get(hint)
    if kind is None:
        return value
    return require({name: value}, name, kind, path, error=CheckpointError)
