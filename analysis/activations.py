"""One activation pass over validation windows: the normalised MLP inputs of chosen layers, cached per checkpoint.

For layer i the pass keeps x̂ = x / rms(x) with x = ``blocks.{i}.hook_resid_mid`` (the residual entering the
MLP's RMSNorm), taken as N(x) / g from ``blocks.{i}.ln2.hook_normalized`` so that it is exactly what the
norm-folded CP tensor of the layer reads: MLP(N(x)) = B'(x̂, x̂), u·MLP(N(x)) = x̂ᵀQ(u)x̂. It also keeps
rms(x) per position (for the norms between stacked layers, `decomp.two_layer`).

The pass runs the blocks up to the last chosen layer only (no unembedding), in batches with a progress bar. Its
result is cached in a safetensors file named by a hash of the weights file, the token ids and the layers, so
a second report on the same checkpoint and data skips it. x̂ is stored (and, on a fresh pass, rounded) in
float16: ≈ 5·10⁻⁴ relative error, the same numbers either way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from tqdm.auto import tqdm

from errors import atomic_write_bytes
from model import GPT
from model.hooks import get_act_name, mlp_input_hook
from model.io import WEIGHTS_FILE

FORMAT_VERSION = 1
CACHE_PREFIX = "activations-"


@dataclass
class Activations:
    """tokens [n_seq, T] model ids; xhat {layer: [n_seq, T, d] float32}; rms {layer: [n_seq, T] float32}."""

    tokens: torch.Tensor
    xhat: dict[int, torch.Tensor]
    rms: dict[int, torch.Tensor]

    @property
    def n_positions(self) -> int:
        return self.tokens.numel()

    def flat(self, layer: int) -> torch.Tensor:
        """x̂ of ``layer`` as [n_seq·T, d] (position p = seq·T + t)."""
        x = self.xhat[layer]
        return x.reshape(-1, x.shape[-1])

    def mean_input_by_token(self, layer: int, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(means [n_rows, d] float64: mean x̂ of the positions holding each token; counts [n_rows])."""
        ids = self.tokens.reshape(-1)
        x = self.flat(layer).double()
        sums = torch.zeros(n_rows, x.shape[1], dtype=torch.float64).index_add_(0, ids, x)
        counts = torch.bincount(ids, minlength=n_rows)
        return sums / counts.clamp_min(1)[:, None], counts


def normalised_input(cache: dict[str, torch.Tensor], layer: int, gain: torch.Tensor) -> torch.Tensor:
    """x̂ = N(x) / g [..., d] from a cache holding ``blocks.{layer}.ln2.hook_normalized`` and ``…hook_resid_mid``."""
    if bool((gain.abs() > 1e-12).all()):
        return cache[mlp_input_hook(layer)].float() / gain
    # a zero gain hides that coordinate of x̂ from N(x): take x̂ from the residual itself
    resid = cache[get_act_name("resid_mid", layer)].float()
    return resid * resid.pow(2).mean(-1, keepdim=True).clamp_min(1e-30).rsqrt()


def collect_activations(
    model: GPT, tokens: torch.Tensor, layers: list[int], batch_size: int = 8, progress: bool = True
) -> Activations:
    """Run the blocks up to max(layers) on token windows [n_seq, T] and keep x̂ and rms(x) per layer."""
    names = [n for i in layers for n in (get_act_name("resid_mid", i), mlp_input_hook(i))]
    xhat = {i: [] for i in layers}
    rms = {i: [] for i in layers}
    gains = {i: model.mlp_norm_gain(i).detach().float() for i in layers}
    n_batches = -(-tokens.shape[0] // batch_size)
    with torch.inference_mode():
        for start in tqdm(
            range(0, tokens.shape[0], batch_size),
            total=n_batches,
            desc="activation pass",
            disable=not progress,
        ):
            x = tokens[start : start + batch_size]
            _, cache = model.run_with_cache(x, names_filter=names, stop_at_layer=max(layers) + 1)
            for i in layers:
                xhat[i].append(normalised_input(cache, i, gains[i]).half().float())
                rms[i].append(cache[get_act_name("resid_mid", i)].float().pow(2).mean(-1).sqrt())
    return Activations(
        tokens, {i: torch.cat(v) for i, v in xhat.items()}, {i: torch.cat(v) for i, v in rms.items()}
    )


def cache_key(checkpoint: Path, tokens: torch.Tensor, layers: list[int]) -> str:
    """16 hex digits of sha256(weights file, token ids, layers, format version)."""
    h = hashlib.sha256()
    with open(Path(checkpoint) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(tokens.to(torch.int64).contiguous().numpy().tobytes())
    h.update(
        json.dumps({"layers": sorted(layers), "shape": list(tokens.shape), "v": FORMAT_VERSION}).encode()
    )
    return h.hexdigest()[:16]


def cached_activations(
    model: GPT,
    checkpoint: Path,
    tokens: torch.Tensor,
    layers: list[int],
    cache_dir: Path | None,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[Activations, str]:
    """`collect_activations`, read from / written to ``cache_dir`` (None: no cache). Returns (acts, how):
    how is "cache" or "computed". Other activation files in cache_dir (older checkpoints) are removed."""
    layers = sorted(layers)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{CACHE_PREFIX}{cache_key(checkpoint, tokens, layers)}.safetensors"
        if path.is_file():
            try:
                return _load(path, tokens, layers), "cache"
            except (OSError, ValueError, KeyError, RuntimeError, safetensors.SafetensorError):
                pass  # unreadable or stale: compute again and overwrite
    acts = collect_activations(model, tokens, layers, batch_size, progress)
    if path is not None:
        tensors = {"tokens": tokens.contiguous()}
        for i in layers:
            tensors[f"xhat_{i}"] = acts.xhat[i].half().contiguous()
            tensors[f"rms_{i}"] = acts.rms[i].contiguous()
        atomic_write_bytes(path, safetensors.torch.save(tensors, metadata={"layers": json.dumps(layers)}))
        for old in path.parent.glob(f"{CACHE_PREFIX}*.safetensors"):
            if old != path:
                old.unlink(missing_ok=True)
    return acts, "computed"


def _load(path: Path, tokens: torch.Tensor, layers: list[int]) -> Activations:
    t = safetensors.torch.load_file(str(path))
    if not torch.equal(t["tokens"], tokens):
        raise ValueError(f"{path}: cached for other tokens")
    return Activations(
        t["tokens"], {i: t[f"xhat_{i}"].float() for i in layers}, {i: t[f"rms_{i}"].float() for i in layers}
    )
