"""Save and load decompositions: tensors in safetensors, metadata in a JSON sidecar; never pickle.

``save_cp("out/layer3.safetensors", cp, {...})`` writes ``out/layer3.safetensors`` (tensors ``weights``,
``factor_0`` …) and ``out/layer3.json`` ({"format", "version", "kind", ..., "metadata": {...}}). Each file is
written atomically (temporary file in the same directory, fsync, ``os.replace``; on a full or read-only disk the
temporary file is removed and ``errors.StorageError`` names the file), the JSON last. Both carry the same random
``pair`` id, so a pair left mismatched by an interrupted save is refused on load rather than silently mixed.
Loading validates both files (JSON fields, tensor names, shapes against the JSON, finite values) and raises
``DecompError("<file>: <what is wrong>")``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from tensorly.cp_tensor import CPTensor

from decomp.cp import check_cp, make_cp
from decomp.eigen import Eigendecomposition
from decomp.errors import DecompError
from errors import atomic_write_bytes, storage_error
from model.io import first_nonfinite

FORMAT = "tnt.decomp"
VERSION = 1


def save_cp(path: str | Path, cp: CPTensor, metadata: dict[str, Any] | None = None) -> None:
    """Write a CP tensor to `path` (.safetensors) and its JSON sidecar; metadata must be JSON-serialisable."""
    cp = check_cp(cp)
    tensors = {"weights": cp.weights} | {f"factor_{n}": f for n, f in enumerate(cp.factors)}
    header = {"kind": "cp", "order": len(cp.factors), "rank": cp.rank, "shape": list(cp.shape)}
    _save(path, tensors, header, metadata)


def load_cp(path: str | Path, device: str | torch.device = "cpu") -> tuple[CPTensor, dict[str, Any]]:
    """Read what `save_cp` wrote: (CPTensor of torch tensors on `device`, metadata)."""
    tensors, header = _load(path, "cp", device)
    order, rank, shape = header.get("order"), header.get("rank"), header.get("shape")
    if not _is_int(order) or order < 1:
        raise DecompError(f"{sidecar_path(path)}: bad CP order {order!r}")
    _require(path, tensors, ["weights"] + [f"factor_{n}" for n in range(order)])
    try:
        cp = make_cp(tensors["weights"], [tensors[f"factor_{n}"] for n in range(order)])
    except DecompError as exc:
        raise DecompError(f"{path}: {exc}") from exc
    if rank != cp.rank or shape != list(cp.shape):
        raise DecompError(
            f"{path}: tensors of rank {cp.rank} and shape {list(cp.shape)} do not match {sidecar_path(path).name} "
            f"(rank {rank!r}, shape {shape!r})"
        )
    return cp, header["metadata"]


def save_eigen(path: str | Path, eig: Eigendecomposition, metadata: dict[str, Any] | None = None) -> None:
    """Write an Eigendecomposition (values, vectors, frobenius_sq) and its JSON sidecar."""
    tensors = {
        "values": eig.values,
        "vectors": eig.vectors,
        "frobenius_sq": torch.as_tensor(eig.frobenius_sq),
    }
    header = {"kind": "eigen", "k": eig.k, "dim": eig.vectors.shape[-2], "batch": list(eig.values.shape[:-1])}
    _save(path, tensors, header, metadata)


def load_eigen(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Eigendecomposition, dict[str, Any]]:
    """Read what `save_eigen` wrote: (Eigendecomposition on `device`, metadata)."""
    tensors, header = _load(path, "eigen", device)
    _require(path, tensors, ["values", "vectors", "frobenius_sq"])
    values, vectors = tensors["values"], tensors["vectors"]
    if (
        vectors.ndim < 2
        or values.shape != vectors.shape[:-2] + vectors.shape[-1:]
        or tensors["frobenius_sq"].shape != values.shape[:-1]
        or [header.get("k"), header.get("dim"), header.get("batch")]
        != [values.shape[-1], vectors.shape[-2], list(values.shape[:-1])]
    ):
        raise DecompError(
            f"{path}: tensor shapes values {tuple(values.shape)}, vectors {tuple(vectors.shape)}, frobenius_sq "
            f"{tuple(tensors['frobenius_sq'].shape)} are inconsistent or do not match {sidecar_path(path).name}"
        )
    return Eigendecomposition(tensors["values"], tensors["vectors"], tensors["frobenius_sq"]), header[
        "metadata"
    ]


def sidecar_path(path: str | Path) -> Path:
    """The JSON metadata file that goes with a .safetensors file."""
    return Path(path).with_suffix(".json")


def _save(path: str | Path, tensors: dict[str, torch.Tensor], header: dict, metadata: dict | None) -> None:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DecompError(f"{path}: decompositions are saved to a .safetensors file")
    pair = uuid.uuid4().hex  # the same id in both files: a mismatched pair is detected on load
    doc = {"format": FORMAT, "version": VERSION, **header, "pair": pair, "metadata": metadata or {}}
    try:
        text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise DecompError(f"metadata must be JSON-serialisable: {exc}") from exc
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, safetensors.torch.save(data, metadata={"format": FORMAT, "pair": pair}))
    atomic_write_bytes(sidecar_path(path), (text + "\n").encode())


def _load(path: str | Path, kind: str, device: str | torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    meta_path = sidecar_path(path)
    for p in (path, meta_path):
        if not p.is_file():
            raise DecompError(f"{p}: file not found")
    try:
        header = json.loads(meta_path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise storage_error(exc, meta_path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DecompError(f"{meta_path}: not valid JSON ({' '.join(str(exc).split())[:120]})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DecompError(f"{meta_path}: not a {FORMAT} metadata file")
    if header.get("kind") != kind:
        raise DecompError(f"{path}: holds a {header.get('kind')!r} decomposition, expected {kind!r}")
    if header.get("version") != VERSION:
        raise DecompError(f"{meta_path}: unsupported version {header.get('version')!r} (expected {VERSION})")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
        tensors = safetensors.torch.load_file(str(path), device=str(device))
    except OSError as exc:
        raise storage_error(exc, path) from exc
    except Exception as exc:  # safetensors raises its own error types for truncated / corrupt files
        reason = " ".join(str(exc).split())[:160]
        raise DecompError(f"{path}: not a readable safetensors file ({reason})") from exc
    if "pair" in header and stored.get("pair") != header["pair"]:
        raise DecompError(
            f"{path}: does not belong with {meta_path.name} (written by different saves, e.g. an interrupted one)"
        )
    if not isinstance(header.setdefault("metadata", {}), dict):
        raise DecompError(f"{meta_path}: field 'metadata' must be an object")
    bad = first_nonfinite(tensors.items())
    if bad is not None:
        raise DecompError(f"{path}: tensor {bad[0]!r} holds non-finite values")
    return tensors, header


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(path: str | Path, tensors: dict[str, torch.Tensor], names: list[str]) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DecompError(f"{path}: missing tensors {missing}")
