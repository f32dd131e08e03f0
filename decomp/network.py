"""Implicit tensors given as einsum networks, contracted with opt_einsum and never made dense.

A `TensorNetwork` is a list of operands (torch tensors), one subscript string of index letters per operand,
and the open indices ``modes`` (one letter per mode, in mode order). Its value is

    T[modes] = Σ_{hidden indices} Π_k operand_k[subscripts_k]        (the einsum "subs_0,subs_1,…->modes").

A CP tensor [[w; A_0..A_N]] is the network "r,ar,br,…->ab…" (`from_cp`); the composition of two bilinear
layers (`decomp.two_layer`) is a network whose CP rank would be h²·h but whose contractions cost O(h³).
Everything here is a contraction of the network with itself, with a CP tensor or with vectors; the path is
chosen by opt_einsum's "dp" optimiser, which keeps the intermediates of these networks small (its greedy one
can be 100× costlier on them), and cached per equation and shapes.
"""

from __future__ import annotations

import functools
import itertools
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass

import opt_einsum
import torch
from tensorly.cp_tensor import CPTensor

from decomp.cp import check_cp
from decomp.errors import DecompError

LETTERS = string.ascii_letters  # torch.einsum accepts only these; a contraction here uses far fewer
OPTIMIZE = "dp"


@functools.lru_cache(maxsize=512)
def _path(eq: str, shapes: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    """opt_einsum's contraction path for ``eq`` on operands of these shapes (cached: ALS repeats them).

    Tiny networks (every index combination < 10⁸ entries) take the greedy path: its search is ~100× faster
    and any path is cheap there."""
    sizes = {
        c: n
        for sub, shape in zip(eq.split("->")[0].split(","), shapes, strict=True)
        for c, n in zip(sub, shape, strict=True)
    }
    optimize = "greedy" if math.prod(sizes.values()) < 1e8 else OPTIMIZE
    return opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=optimize)[0]


@dataclass(frozen=True)
class TensorNetwork:
    """T[modes] = einsum(",".join(subscripts) + "->" + modes, *operands); see the module docstring."""

    operands: tuple[torch.Tensor, ...]
    subscripts: tuple[str, ...]
    modes: str

    def __post_init__(self) -> None:
        if len(self.operands) != len(self.subscripts) or not self.operands:
            raise DecompError(f"{len(self.operands)} operands but {len(self.subscripts)} subscripts")
        sizes: dict[str, int] = {}
        ref = self.operands[0]
        for k, (op, sub) in enumerate(zip(self.operands, self.subscripts, strict=True)):
            if not isinstance(op, torch.Tensor) or op.ndim != len(sub):
                raise DecompError(f"operand {k} has {getattr(op, 'ndim', '?')} dims but subscript {sub!r}")
            if op.dtype != ref.dtype or op.device != ref.device:
                raise DecompError(
                    f"operand {k} is {op.dtype}/{op.device}, operand 0 is {ref.dtype}/{ref.device}"
                )
            for letter, n in zip(sub, op.shape, strict=True):
                if letter not in LETTERS:
                    raise DecompError(f"index {letter!r} of operand {k} is not an ASCII letter")
                if sizes.setdefault(letter, n) != n:
                    raise DecompError(
                        f"index {letter!r} has size {n} in operand {k} but {sizes[letter]} before"
                    )
        if len(set(self.modes)) != len(self.modes) or any(m not in sizes for m in self.modes):
            raise DecompError(f"open modes {self.modes!r} must be distinct indices of the operands")
        object.__setattr__(self, "_sizes", sizes)

    # ------------------------------------------------------------------ structure

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._sizes[m] for m in self.modes)

    @property
    def order(self) -> int:
        return len(self.modes)

    @property
    def dtype(self) -> torch.dtype:
        return self.operands[0].dtype

    @property
    def hidden(self) -> str:
        """The summed (non-open) indices."""
        return "".join(sorted(set("".join(self.subscripts)) - set(self.modes)))

    @staticmethod
    def from_cp(cp: CPTensor) -> TensorNetwork:
        """The network "r,ar,br,…->ab…" of a CP tensor [[w; A_0..A_N]]."""
        cp = check_cp(cp)
        modes = LETTERS[: len(cp.factors)]
        rank = LETTERS[len(cp.factors)]
        return TensorNetwork((cp.weights, *cp.factors), (rank, *(m + rank for m in modes)), modes)

    def scaled(self, c: float) -> TensorNetwork:
        """c·T (the first operand scaled)."""
        return TensorNetwork((self.operands[0] * c, *self.operands[1:]), self.subscripts, self.modes)

    def to(self, dtype: torch.dtype) -> TensorNetwork:
        return TensorNetwork(tuple(op.to(dtype) for op in self.operands), self.subscripts, self.modes)

    def relabelled(self, modes: str, avoid: str = "") -> TensorNetwork:
        """The same tensor with open modes named ``modes`` and hidden indices renamed away from ``avoid``."""
        if len(modes) != self.order:
            raise DecompError(f"{len(modes)} mode letters for a tensor of order {self.order}")
        taken = set(avoid) | set(modes)
        fresh = (c for c in LETTERS if c not in taken)
        mapping = dict(zip(self.modes, modes, strict=True))
        try:
            mapping |= {h: next(fresh) for h in self.hidden}
        except StopIteration:
            raise DecompError("too many indices for one contraction (more than 52)") from None
        subs = tuple("".join(mapping[c] for c in s) for s in self.subscripts)
        return TensorNetwork(self.operands, subs, modes)

    # ------------------------------------------------------------------ contractions

    def contract_with(self, extra: Sequence[tuple[torch.Tensor, str]], out: str) -> torch.Tensor:
        """einsum of the network and extra (operand, subscript) pairs into ``out`` (via opt_einsum)."""
        ops = [*self.operands, *(t.to(self.dtype) for t, _ in extra)]
        eq = ",".join([*self.subscripts, *(s for _, s in extra)]) + "->" + out
        return opt_einsum.contract(eq, *ops, optimize=_path(eq, tuple(tuple(op.shape) for op in ops)))

    def to_dense(self, max_elements: int = 2**26) -> torch.Tensor:
        """The dense tensor (tests and tiny sizes only; refuses more than ``max_elements``)."""
        if math.prod(self.shape) > max_elements:
            raise DecompError(f"refusing to build a dense tensor of shape {self.shape}")
        return self.contract_with([], self.modes)

    def inner(self, other: TensorNetwork | CPTensor, perm: Sequence[int] | None = None) -> torch.Tensor:
        """⟨T, S∘perm⟩ = Σ T[i_0, …, i_N] · S[i_perm[0], …, i_perm[N]] (perm None: the identity)."""
        if not isinstance(other, TensorNetwork):
            other = TensorNetwork.from_cp(other)
        if other.shape != self.shape and perm is None:
            raise DecompError(f"inner product of tensors of shapes {self.shape} and {other.shape}")
        perm = list(range(self.order)) if perm is None else list(perm)
        if sorted(perm) != list(range(self.order)):
            raise DecompError(f"perm {perm} is not a permutation of the {self.order} modes")
        # S's mode m carries T's index i_perm[m].
        s = other.to(self.dtype).relabelled(
            "".join(self.modes[m] for m in perm), avoid="".join(self.subscripts)
        )
        if tuple(self.shape[m] for m in perm) != s.shape:
            raise DecompError(f"permuted shapes differ: {self.shape} vs {other.shape} under {perm}")
        return self.contract_with(list(zip(s.operands, s.subscripts, strict=True)), "")

    def norm(self) -> torch.Tensor:
        """Frobenius norm ‖T‖ = sqrt(⟨T, T⟩)."""
        return self.inner(self).clamp_min(0).sqrt()

    def symmetric_norm(self) -> torch.Tensor:
        """‖Sym T‖ with Sym averaging over all permutations of the input modes 1..N:
        ‖Sym T‖² = (1/N!) Σ_σ ⟨T, σT⟩. This is the norm of the polynomial x ↦ T(x, …, x) itself (the
        symmetric part is the only part it sees). N! contractions (24 for order 5)."""
        inputs = list(range(1, self.order))
        perms = [[0, *p] for p in itertools.permutations(inputs)]
        total = sum(self.inner(self, p) for p in perms)
        return (total / len(perms)).clamp_min(0).sqrt()

    def apply(self, *inputs: torch.Tensor) -> torch.Tensor:
        """T(x_1, …, x_N) [..., I_0] for inputs [..., I_n] (one input is reused for every input mode)."""
        k = self.order - 1
        if len(inputs) == 1:
            inputs = inputs * k
        if len(inputs) != k:
            raise DecompError(f"a tensor of order {self.order} takes {k} inputs, got {len(inputs)}")
        batch = inputs[0].shape[:-1]
        flat = [x.reshape(-1, x.shape[-1]) for x in inputs]
        for j, x in enumerate(flat):
            if x.shape[-1] != self.shape[j + 1] or x.shape[0] != flat[0].shape[0]:
                raise DecompError(
                    f"input {j} has shape {tuple(inputs[j].shape)}, mode {j + 1} has size {self.shape[j + 1]}"
                )
        b = next(c for c in LETTERS if c not in "".join(self.subscripts))
        extra = [(x, b + m) for x, m in zip(flat, self.modes[1:], strict=True)]
        return self.contract_with(extra, b + self.modes[0]).reshape(*batch, self.shape[0])

    def mttkrp(self, n: int, factors: Sequence[torch.Tensor]) -> torch.Tensor:
        """T_(n) · KR(B_k, k ≠ n) [I_n, r]: T contracted with every factor B_k [I_k, r] except mode n's."""
        if len(factors) != self.order:
            raise DecompError(f"{len(factors)} factors for a tensor of order {self.order}")
        r = next(c for c in LETTERS if c not in "".join(self.subscripts))
        extra = [(f, self.modes[k] + r) for k, f in enumerate(factors) if k != n]
        return self.contract_with(extra, self.modes[n] + r)

    def unfolding_gram(self, n: int) -> torch.Tensor:
        """T_(n) T_(n)ᵀ [I_n, I_n]: T contracted with itself over every mode but n."""
        used = "".join(self.subscripts)
        fresh = next(c for c in LETTERS if c not in used)
        letters = self.modes[:n] + fresh + self.modes[n + 1 :]
        s = self.relabelled(letters, avoid=used + fresh)
        return self.contract_with(list(zip(s.operands, s.subscripts, strict=True)), self.modes[n] + fresh)
