"""Save and load decompositions: tensors in safetensors, metadata in a JSON sidecar; never pickle.

``save_cp("out/layer3.safetensors", cp, {...})`` writes ``out/layer3.safetensors`` (tensors ``weights``,
``factor_0`` …) and ``out/layer3.json`` ({"format", "version", "kind", ..., "metadata": {...}}). Each file is
written atomically (temporary file in the same directory, fsync, ``os.replace``), the JSON last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from tensorly.cp_tensor import CPTensor

from decomp.cp import check_cp, make_cp
from decomp.eigen import Eigendecomposition
from decomp.errors import DecompError
from model.io import atomic_write_bytes

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
    order = header.get("order")
    if not isinstance(order, int) or order < 1:
        raise DecompError(f"{sidecar_path(path)}: bad CP order {order!r}")
    _require(path, tensors, ["weights"] + [f"factor_{n}" for n in range(order)])
    return make_cp(tensors["weights"], [tensors[f"factor_{n}"] for n in range(order)]), header["metadata"]


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
    doc = {"format": FORMAT, "version": VERSION, **header, "metadata": metadata or {}}
    try:
        text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise DecompError(f"metadata must be JSON-serialisable: {exc}") from exc
    data = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, safetensors.torch.save(data, metadata={"format": FORMAT}))
    atomic_write_bytes(sidecar_path(path), (text + "\n").encode())


def _load(path: str | Path, kind: str, device: str | torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    meta_path = sidecar_path(path)
    for p in (path, meta_path):
        if not p.is_file():
            raise DecompError(f"{p}: file not found")
    try:
        header = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DecompError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DecompError(f"{meta_path}: not a {FORMAT} metadata file")
    if header.get("kind") != kind:
        raise DecompError(f"{path}: holds a {header.get('kind')!r} decomposition, expected {kind!r}")
    if header.get("version") != VERSION:
        raise DecompError(f"{meta_path}: unsupported version {header.get('version')!r} (expected {VERSION})")
    try:
        tensors = safetensors.torch.load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for truncated / corrupt files
        raise DecompError(f"{path}: not a readable safetensors file ({exc})") from exc
    header.setdefault("metadata", {})
    return tensors, header


def _require(path: str | Path, tensors: dict[str, torch.Tensor], names: list[str]) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise DecompError(f"{path}: missing tensors {missing}")
