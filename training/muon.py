"""tnt's Muon: momentum, then each projection's update replaced by (approximately) its polar factor.

Why tnt writes its own rather than using ``torch.optim.Muon``:

- **One projection at a time.** tnt keeps projections stacked along the rows of one Parameter for speed
  (attention's [3d, d] = [W_Q; W_K; W_V], the MLP's [k·h, d] = [W_1; …; W_k]). Muon's geometry is per linear
  map: orthogonalising the stack as one matrix couples Q with K with V, and W with V. Here each row block is
  orthogonalised and scaled by its own shape, as modded-nanoGPT does with its separate matrices.
- **Distributed.** With ``torch.distributed`` initialised, each rank orthogonalises its share of the block
  matrices and the results are all-gathered, so no rank repeats the others' work.
- **Precision per device.** The iteration runs in bf16 on CUDA and in fp32 on CPU (``default_ns_dtype``):
  on an AVX2-only CPU a bf16 matmul is ~6× slower than fp32 (``torch.optim.Muon``'s bf16 iteration took half
  of a cpu-demo step there), and fp32 keeps CPU runs reproducible across rank counts.
- **The current iteration.** modded-nanoGPT's Polar Express coefficients (Amsel, Persson, Musco, Gower 2025,
  arXiv:2505.16932), five steps, instead of torch's fixed quintic.

The update for a parameter p with gradient g (averaged over ranks before ``step``) and momentum μ:

    B ← μB + (1-μ)g;   U = (1-μ)g + μB (Nesterov) or B
    for each row block U_j [m_j, n]:  p_j ← p_j(1 - lr·wd) - lr·√max(1, m_j/n)·PE(U_j)

where PE is the Polar Express iteration (``polar_express``). The per-parameter state is ``momentum_buffer``,
the same key and meaning as ``torch.optim.Muon``, whose checkpoints therefore load (``load_state_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

# modded-nanoGPT's Polar Express coefficients (num_iters=5, safety_factor=2e-2, cushion=2): one (a, b, c) per
# step of X ← aX + (bA + cA²)X with A = XXᵀ, i.e. σ ← aσ + bσ³ + cσ⁵ on each singular value.
POLAR_EXPRESS_COEFFS: tuple[tuple[float, float, float], ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
NORM_SAFETY = 2e-2  # X₀ = G / ((1 + safety)·‖G‖_F + eps): the spectral norm starts safely below 1
NORM_EPS = 1e-6

# Keys a torch.optim.Muon param group has that this optimizer does not use (its iteration is fixed here).
_TORCH_MUON_ONLY = ("ns_coefficients", "ns_steps", "eps", "adjust_lr_fn")


def polar_express(g: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Approximate polar factor of each matrix: g = U Σ Vᵀ [..., m, n] -> ≈ U Vᵀ [..., m, n] in ``dtype``.

    Exactly, the result is U f(Σ/((1 + 0.02)‖g‖_F + 1e-6)) Vᵀ with f the composition of the five quintics
    in ``POLAR_EXPRESS_COEFFS``; f maps [1e-3, 1] into [0.859, 1.141], so every singular value at least 1e-3
    of the Frobenius norm lands within ±14% of 1. Works on the short side (XXᵀ is min(m, n)²). ``dtype``
    defaults to g's; the norm is taken in g's precision before the cast.
    """
    x = g if g.ndim == 3 else g.reshape(-1, *g.shape[-2:])
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = (x / (x.norm(dim=(-2, -1), keepdim=True) * (1 + NORM_SAFETY) + NORM_EPS)).to(dtype or g.dtype)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # bA + cA²
        x = torch.baddbmm(x, poly, x, beta=a)  # aX + (bA + cA²)X
    if tall:
        x = x.mT
    return x.reshape(g.shape)


def default_ns_dtype(device: torch.device) -> torch.dtype:
    """The iteration's precision on ``device``: bf16 on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def momentum_at(step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """Record #21's momentum warm-up: linear from ``start`` at step 0 to ``end`` at ``warmup_steps``, then flat.

    The trainer sets ``group["momentum"] = momentum_at(step)`` on every Muon param group before each step.
    """
    frac = min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
    return (1 - frac) * start + frac * end


def update_scale(rows: int, cols: int) -> float:
    """Record #21's learning-rate factor for one [rows, cols] projection: √max(1, rows/cols)."""
    return max(1.0, rows / cols) ** 0.5


@dataclass
class _Block:
    """One row block of one parameter, waiting for its orthogonalised update."""

    param: Tensor
    row0: int
    update: Tensor  # [m, n] view of the Nesterov momentum
    lr: float

    @property
    def tall(self) -> bool:
        return self.update.size(0) > self.update.size(1)

    def wide(self) -> Tensor:
        return self.update.mT if self.tall else self.update


class Muon(torch.optim.Optimizer):
    """Muon over 2-D parameters whose row blocks are separate projections (see the module docstring).

    Args:
        params: 2-D tensors, or param groups; a group may carry ``blocks``, one tuple of row sizes per param.
        lr: learning rate; the update of an [m, n] block has spectral scale lr·√max(1, m/n).
        momentum: μ (modded-nanoGPT: 0.95, warmed up from 0.85 with ``momentum_at``).
        weight_decay: decoupled, p ← p(1 - lr·wd) before the update.
        nesterov: use (1-μ)g + μB rather than B.
        blocks: row sizes per parameter, e.g. ``{qkv: (d, d, d), c_fc: (h, h)}``; a parameter not given is
            one block. Sizes must sum to the parameter's row count.
        ns_dtype: precision of the iteration; default ``default_ns_dtype`` of each parameter's device.
        process_group: the ranks sharing the work; default the world group when distributed is initialised.

    Every rank must call ``step`` with identical (already averaged) gradients: each keeps all momentum
    buffers, so any rank's ``state_dict`` is complete.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        *,
        blocks: Mapping[Tensor, Sequence[int]] | None = None,
        ns_dtype: torch.dtype | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"Muon: lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"Muon: weight_decay must be >= 0, got {weight_decay}")
        self._blocks_by_param = dict(blocks or {})
        self.ns_dtype, self.process_group = ns_dtype, process_group
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        given = param_group.get("blocks") or [self._blocks_by_param.get(p) for p in params]
        if len(given) != len(params):
            raise ValueError(f"Muon: 'blocks' has {len(given)} entries for {len(params)} parameters")
        blocks = []
        for i, (p, rows) in enumerate(zip(params, given, strict=True)):
            if p.ndim != 2:
                raise ValueError(f"Muon: parameter {i} has shape {tuple(p.shape)}; only 2-D matrices")
            rows = (p.shape[0],) if rows is None else tuple(int(r) for r in rows)
            if sum(rows) != p.shape[0] or min(rows) <= 0:
                raise ValueError(
                    f"Muon: row blocks {rows} of parameter {i} must be positive and sum to its "
                    f"{p.shape[0]} rows (shape {tuple(p.shape)})"
                )
            blocks.append(rows)
        super().add_param_group({**param_group, "params": params, "blocks": blocks})

    def _ns_dtype(self, device: torch.device) -> torch.dtype:
        return self.ns_dtype or default_ns_dtype(device)

    def _world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(self.process_group), dist.get_world_size(self.process_group)
        return 0, 1

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        buckets: dict[tuple, list[_Block]] = {}
        for group in self.param_groups:
            mu, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
            for p, rows in zip(group["params"], group["blocks"], strict=True):
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                u = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                if wd:
                    p.mul_(1 - lr * wd)
                row0 = 0
                for u_j in u.split(rows):
                    block = _Block(p, row0, u_j, lr * update_scale(*u_j.shape))
                    key = (*block.wide().shape, p.device, self._ns_dtype(p.device))
                    buckets.setdefault(key, []).append(block)
                    row0 += u_j.size(0)
        rank, world = self._world()
        pending = [self._orthogonalise(key, blocks, rank, world) for key, blocks in buckets.items()]
        for blocks, result, handle in pending:
            if handle is not None:
                handle.wait()
            for block, o in zip(blocks, result, strict=False):
                o = o.mT if block.tall else o
                block.param[block.row0 : block.row0 + o.size(0)].add_(o, alpha=-block.lr)
        return loss

    def _orthogonalise(self, key: tuple, blocks: list[_Block], rank: int, world: int):
        """This rank's share of one same-shape bucket, orthogonalised; with world > 1 gathered asynchronously.

        Returns (blocks, [world·share, m, n] results in bucket order, the all-gather handle or None).
        """
        m, n, device, dtype = key
        share = math.ceil(len(blocks) / world)
        mine = [b.wide() for b in blocks[rank * share : (rank + 1) * share]]
        x = torch.zeros(share, m, n, device=device, dtype=blocks[0].update.dtype)  # zeros pad the last rank
        for i, u in enumerate(mine):
            x[i].copy_(u)
        local = polar_express(x, dtype)
        if world == 1:
            return blocks, local, None
        gathered = torch.empty(world * share, m, n, device=device, dtype=dtype)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in 2.13
        handle = gather(gathered, local.contiguous(), group=self.process_group, async_op=True)
        return blocks, gathered, handle

    def load_state_dict(self, state_dict: dict) -> None:
        """Load this optimizer's state, or ``torch.optim.Muon``'s (same ``momentum_buffer``).

        Raises ValueError (one line, for the caller to prefix with the file name) when the state is not a
        Muon state, was written with another learning-rate adjustment, or does not fit these parameters.
        The hyperparameters saved in the groups (lr, momentum, weight_decay, nesterov, initial_lr, …) are
        restored; the row blocks stay those of the live parameters.
        """
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError("not an optimizer state dict (expected keys 'state' and 'param_groups')")
        saved_groups, state = state_dict["param_groups"], state_dict["state"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"Muon state has {len(saved_groups)} param groups; this optimizer has {len(self.param_groups)}"
            )
        groups = []
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"Muon state group {gi} has {len(saved['params'])} parameters; "
                    f"this optimizer's has {len(group['params'])}"
                )
            if saved.get("adjust_lr_fn", "original") not in (None, "original"):
                raise ValueError(
                    f"Muon state was written by torch.optim.Muon with adjust_lr_fn="
                    f"{saved['adjust_lr_fn']!r}; only None/'original' (√max(1, rows/cols)) match this optimizer"
                )
            for idx, p in zip(saved["params"], group["params"], strict=True):
                self._check_param_state(state.get(idx, {}), p, gi, idx)
            kept = {k: v for k, v in saved.items() if k not in _TORCH_MUON_ONLY}
            groups.append({**group, **kept, "blocks": group["blocks"]})
        super().load_state_dict({"state": state, "param_groups": groups})

    @staticmethod
    def _check_param_state(s: object, p: Tensor, group: int, idx: object) -> None:
        where = f"Muon state for parameter {idx} (group {group}, shape {tuple(p.shape)})"
        if not isinstance(s, dict) or not set(s) <= {"momentum_buffer"}:
            keys = sorted(s) if isinstance(s, dict) else type(s).__name__
            raise ValueError(f"{where}: unexpected entries {keys}; a Muon state holds only 'momentum_buffer'")
        buf = s.get("momentum_buffer")
        if buf is None:
            return
        if not isinstance(buf, Tensor) or buf.shape != p.shape:
            shape = tuple(buf.shape) if isinstance(buf, Tensor) else type(buf).__name__
            raise ValueError(f"{where}: momentum_buffer has shape {shape}; written for a different model")
