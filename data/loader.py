"""Deterministic, resumable token loading for training and validation.

A dataset is a list of shards read as one logical token stream (memory-mapped, never copied whole). It is
cut into windows of seq_len + 1 tokens: x = window[:-1], y = window[1:]. Training reads windows in a fresh
random order each epoch; `TokenDataset.batch(index, batch_size)` is a pure function of its arguments, so a
loader's whole state is two integers and resuming is exact. `SequentialDataset` is the alternative order of
modded-nanoGPT record #21: the shards front to back in whole steps, every token once per epoch.
`MixedDataset` interleaves a deterministic fraction of rows from a second `TokenDataset` (data mixing).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from data.shards import read_shard
from data.tokenizer import EOT_ID, VOCAB_SIZE, count_utf8_bytes
from errors import TntError

Batch = tuple[torch.Tensor, torch.Tensor]
__all__ = [
    "Batch",
    "DistributedLoader",
    "LoaderError",
    "MixedDataset",
    "SequentialDataset",
    "TokenDataset",
    "TokenStream",
    "bits_per_byte",
    "count_utf8_bytes",
    "iter_val_batches",
    "mix_fraction",
    "val_bytes_per_token",
]


class LoaderError(TntError, ValueError):
    """The shards cannot serve what is asked (too few tokens for a window, a saved position that does not fit)."""


class TokenStream:
    """Shards concatenated logically: token i of the stream is token i - offsets[k] of shard k."""

    def __init__(self, files: Sequence[str | Path], vocab_size: int = VOCAB_SIZE):
        if isinstance(files, str | Path):
            raise TypeError("files must be a sequence of paths, not a single path")
        self.files = [Path(f) for f in files]
        if not self.files:
            raise LoaderError("no shard files given")
        self.shards = [read_shard(f, vocab_size) for f in self.files]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards], dtype=np.int64)
        self.n_tokens = int(self.offsets[-1])

    def describe(self) -> str:
        names = ", ".join(str(f) for f in self.files[:3]) + (", ..." if len(self.files) > 3 else "")
        return f"{len(self.files)} shard(s) [{names}] with {self.n_tokens} tokens"

    def gather(self, starts: np.ndarray, length: int) -> np.ndarray:
        """uint16 array [len(starts), length]: row i = stream[starts[i] : starts[i] + length]."""
        rows = np.empty((len(starts), length), dtype=np.uint16)
        for i, start in enumerate(np.asarray(starts, dtype=np.int64).tolist()):
            if start < 0 or start + length > self.n_tokens:
                raise IndexError(
                    f"window [{start}, {start + length}) is outside the {self.n_tokens}-token stream"
                )
            filled = 0
            while filled < length:  # more than one pass only when the window crosses a shard boundary
                pos = start + filled
                k = int(np.searchsorted(self.offsets, pos, side="right")) - 1
                local = pos - int(self.offsets[k])
                piece = self.shards[k][local : local + length - filled]
                rows[i, filled : filled + len(piece)] = piece
                filled += len(piece)
        return rows

    def eot_positions(self) -> np.ndarray:
        """int64 array: sorted stream positions of every EOT token."""
        found = [
            np.flatnonzero(shard == EOT_ID) + off
            for shard, off in zip(self.shards, self.offsets[:-1], strict=True)
        ]
        return np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)


def bos_window_starts(eot_positions: np.ndarray, seq_len: int, n_tokens: int) -> np.ndarray:
    """int64 array of window starts, each an EOT position, chosen greedily so windows do not overlap.

    From the first EOT, the next window starts at the first EOT at or after start + seq_len (the previous
    window's last target). Documents shorter than a window are packed after the one that starts it; the
    tail of a document longer than the room left in its window is skipped, as in modded-nanoGPT.
    """
    next_index = np.searchsorted(eot_positions, eot_positions + seq_len, side="left").tolist()
    positions = eot_positions.tolist()
    starts = []
    i = 0
    while i < len(positions) and positions[i] + seq_len + 1 <= n_tokens:
        starts.append(positions[i])
        i = next_index[i]
    return np.array(starts, dtype=np.int64)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed derived from (seed, epoch); distinct pairs give unrelated seeds."""
    digest = hashlib.blake2b(f"{seed}/{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class TokenDataset:
    """Training windows over shards, shuffled per epoch, addressed by global micro-batch index.

    Unaligned: window w starts at w * seq_len. BOS-aligned: windows start at EOT tokens (see
    `bos_window_starts`), so every sequence begins with EOT acting as BOS. Epoch e visits all windows in the
    order of `torch.randperm` under a generator seeded with `epoch_seed(seed, e)`.
    """

    def __init__(self, files: Sequence[str | Path], seq_len: int, seed: int = 0, bos_aligned: bool = False):
        if seq_len < 1:
            raise LoaderError(f"seq_len must be >= 1, got {seq_len}")
        self.stream = TokenStream(files)
        self.seq_len = seq_len
        self.seed = seed
        self.bos_aligned = bos_aligned
        if bos_aligned:
            self._starts: np.ndarray | None = bos_window_starts(
                self.stream.eot_positions(), seq_len, self.stream.n_tokens
            )
            self.n_windows = len(self._starts)
        else:
            self._starts = None
            self.n_windows = max(0, (self.stream.n_tokens - 1) // seq_len)
        if self.n_windows < 1:
            kind = (
                f"EOT-aligned window of {seq_len + 1} tokens"
                if bos_aligned
                else f"window of {seq_len + 1} tokens"
            )
            raise LoaderError(f"{self.stream.describe()} hold no {kind}")
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def files(self) -> list[Path]:
        return self.stream.files

    @property
    def n_tokens(self) -> int:
        return self.stream.n_tokens

    def window_starts(self, windows: np.ndarray) -> np.ndarray:
        """Stream positions (int64, same shape) of window ids `windows`."""
        windows = np.asarray(windows, dtype=np.int64)
        return self._starts[windows] if self._starts is not None else windows * self.seq_len

    def permutation(self, epoch: int) -> np.ndarray:
        """int64 array [n_windows]: the window order of `epoch`."""
        if epoch not in self._permutations:
            if len(self._permutations) >= 2:  # a batch spans at most two epochs unless B > n_windows
                self._permutations.pop(next(iter(self._permutations)))
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._permutations[epoch] = torch.randperm(self.n_windows, generator=generator).numpy()
        return self._permutations[epoch]

    def position_windows(self, positions: np.ndarray) -> np.ndarray:
        """Window ids (int64, same shape) at global row positions `positions` (>= 0) of the shuffled stream:
        position p is row p mod n_windows of epoch ⌊p / n_windows⌋, i.e. window permutation(epoch)[offset]."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and int(positions.min()) < 0:
            raise LoaderError(f"row positions must be >= 0, got {int(positions.min())}")
        epochs, offsets = np.divmod(positions, self.n_windows)
        windows = np.empty(positions.shape, dtype=np.int64)
        for epoch in np.unique(epochs).tolist():
            mask = epochs == epoch
            windows[mask] = self.permutation(epoch)[offsets[mask]]
        return windows

    def batch_windows(self, index: int, batch_size: int) -> np.ndarray:
        """int64 array [batch_size]: window ids of global micro-batch `index` (may span an epoch boundary)."""
        if index < 0 or batch_size < 1:
            raise LoaderError(
                f"need index >= 0 and batch_size >= 1, got index={index}, batch_size={batch_size}"
            )
        return self.position_windows(index * batch_size + np.arange(batch_size, dtype=np.int64))

    def epoch_of(self, index: int, batch_size: int) -> int:
        """Epoch of the first window of micro-batch `index`."""
        return index * batch_size // self.n_windows

    def batch(self, index: int, batch_size: int) -> Batch:
        """Global micro-batch `index`: (x, y), int64 tensors [batch_size, seq_len], y[:, t] = x[:, t + 1]."""
        return self.windows_batch(self.batch_windows(index, batch_size))

    def rows(self, positions: np.ndarray) -> Batch:
        """(x, y) int64 [len(positions), seq_len] of the rows at global row positions `positions` (any order,
        any epochs): ``batch(i, b)`` is ``rows(i·b + arange(b))``."""
        return self.windows_batch(self.position_windows(np.asarray(positions, dtype=np.int64).reshape(-1)))

    def windows_batch(self, windows: np.ndarray) -> Batch:
        """(x, y) int64 [len(windows), seq_len] of window ids `windows`."""
        rows = torch.from_numpy(
            self.stream.gather(self.window_starts(windows), self.seq_len + 1).astype(np.int64)
        )
        return rows[:, :-1], rows[:, 1:]


class MixedDataset:
    """A deterministic fraction f of every batch from a second dataset (data mixing, e.g. unrelated text mixed
    into a finetune), addressed like `TokenDataset` so `DistributedLoader` works (and resumes) unchanged.

    With f = p/q exact (``Fraction(str(frac))``), global row g = index·batch_size + j of the mixed stream is a
    mix row iff ⌊(g+1)·f⌋ − ⌊g·f⌋ = 1 (Bresenham's line: mix rows are spread evenly). A mix row reads row
    ⌊g·f⌋ of `mix`'s shuffled stream, a main row reads row g − ⌊g·f⌋ of `main`'s, so each dataset is consumed
    front to back in its own per-epoch orders (and wraps at its own epoch ends). Rows [0, N) hold exactly
    ⌊N·f⌋ mix rows; a micro-batch of b rows holds exactly f·b of them when f·b is an integer (b·p divisible by
    q), else ⌊f·b⌋ or ⌈f·b⌉. `batch` is a pure function of (index, batch_size): resuming is exact.
    """

    def __init__(self, main: TokenDataset, mix: TokenDataset, frac: float | Fraction | str):
        if not isinstance(main, TokenDataset) or not isinstance(mix, TokenDataset):
            raise LoaderError(
                "data mixing needs two shuffled TokenDatasets, got "
                f"{type(main).__name__} and {type(mix).__name__}"
            )
        if main.seq_len != mix.seq_len:
            raise LoaderError(
                f"mixed datasets need the same seq_len, got {main.seq_len} (main) and {mix.seq_len} (mix)"
            )
        self.main, self.mix = main, mix
        self.frac = mix_fraction(frac)
        self.seq_len = main.seq_len

    @property
    def files(self) -> list[Path]:
        """The main dataset's shards, then the mix dataset's (both must be covered by the vocabulary)."""
        return [*self.main.files, *self.mix.files]

    @property
    def n_tokens(self) -> int:
        return self.main.n_tokens + self.mix.n_tokens

    def _rows(self, index: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(g [b], ⌊g·f⌋ [b + 1] for g = index·b .. index·b + b) as int64; Python ints, so no overflow."""
        if index < 0 or batch_size < 1:
            raise LoaderError(
                f"need index >= 0 and batch_size >= 1, got index={index}, batch_size={batch_size}"
            )
        p, q = self.frac.numerator, self.frac.denominator
        first = index * batch_size
        g = range(first, first + batch_size + 1)
        return np.array(g[:-1], dtype=np.int64), np.array([k * p // q for k in g], dtype=np.int64)

    def mix_rows(self, index: int, batch_size: int) -> np.ndarray:
        """bool array [batch_size]: which rows of micro-batch `index` come from the mix dataset."""
        _, floors = self._rows(index, batch_size)
        return np.diff(floors) == 1

    def epoch_of(self, index: int, batch_size: int) -> int:
        """Epoch of the main dataset at the first main row of micro-batch `index` (or the row after it)."""
        g, floors = self._rows(index, batch_size)
        return int(g[0] - floors[0]) // self.main.n_windows

    def batch(self, index: int, batch_size: int) -> Batch:
        """Micro-batch `index`: (x, y) int64 [batch_size, seq_len], rows from main and mix as above."""
        g, floors = self._rows(index, batch_size)
        is_mix = np.diff(floors) == 1
        x = torch.empty(batch_size, self.seq_len, dtype=torch.int64)
        y = torch.empty_like(x)
        for dataset, mask, positions in (
            (self.main, ~is_mix, g - floors[:-1]),
            (self.mix, is_mix, floors[:-1]),
        ):
            if mask.any():
                rows = torch.from_numpy(np.flatnonzero(mask))
                x[rows], y[rows] = dataset.rows(positions[mask])
        return x, y


def mix_fraction(frac: float | Fraction | str) -> Fraction:
    """``Fraction(str(frac))`` (0.1 → 1/10 exactly, not the binary float), checked to lie in [0, 1)."""
    try:
        if isinstance(frac, bool):
            raise ValueError
        value = Fraction(str(frac))
    except (ValueError, ZeroDivisionError):
        raise LoaderError(f"mix fraction must be a number in [0, 1), got {frac!r}") from None
    if not 0 <= value < 1:
        raise LoaderError(f"mix fraction must lie in [0, 1), got {frac!r}")
    return value


class SequentialDataset:
    """Record #21's data order: the shards in the order given, each read front to back, every token once per epoch.

    An optimizer step reads ``batch_tokens`` + 1 consecutive tokens of one shard (S = batch_tokens), starting
    where the previous step ended; a shard holds ⌊(n − 2) / S⌋ steps, so when fewer than S + 2 tokens remain
    (the record's ``pos + S + 1 >= n`` test) the rest of the shard is skipped and the next one starts at its
    first token. After the last shard, epoch e + 1 repeats the same order. Within a step, micro-batch m of
    ``batch_size`` rows covers tokens [m·b·T, (m+1)·b·T] of the step (T = seq_len, inclusive end: the last
    target), row j its j-th T + 1 tokens: x = row[:-1], y = row[1:].

    With ``DistributedLoader`` (m = a·W + r for rank r of W at accumulation micro-step a) rank r of 8 reads the
    r-th contiguous 1/8 of each step as in the record, and 1 rank × 8 micro-steps reads the same tokens.
    ``batch(index, batch_size)`` is a pure function of its arguments, so a loader resumes exactly.
    """

    def __init__(self, files: Sequence[str | Path], seq_len: int, batch_tokens: int):
        if seq_len < 1 or batch_tokens < 1 or batch_tokens % seq_len:
            raise LoaderError(
                f"need seq_len >= 1 and batch_tokens a positive multiple of it, got {seq_len}, {batch_tokens}"
            )
        self.stream = TokenStream(files)
        self.seq_len, self.tokens_per_step = seq_len, batch_tokens
        sizes = np.diff(self.stream.offsets)
        self.shard_steps = np.maximum(0, (sizes - 2) // batch_tokens)  # steps each shard holds
        self._first_step = np.concatenate(([0], np.cumsum(self.shard_steps))).astype(np.int64)
        self.steps_per_epoch = int(self._first_step[-1])
        if self.steps_per_epoch < 1:
            raise LoaderError(
                f"{self.stream.describe()}: no shard holds one step of {batch_tokens + 2} tokens"
            )

    @property
    def files(self) -> list[Path]:
        return self.stream.files

    @property
    def n_tokens(self) -> int:
        """Tokens in the shards."""
        return self.stream.n_tokens

    @property
    def tokens_per_epoch(self) -> int:
        """Input tokens one epoch trains on (each at most once): steps_per_epoch × tokens_per_step."""
        return self.steps_per_epoch * self.tokens_per_step

    def budget(self, steps: int) -> str:
        """One line: tokens available, per epoch and trained in ``steps`` steps, and the epochs that makes."""
        trained = steps * self.tokens_per_step
        return (
            f"data: {self.n_tokens:,} tokens in {len(self.files)} shard(s), {self.tokens_per_epoch:,} per epoch "
            f"({self.steps_per_epoch} steps of {self.tokens_per_step:,}); {steps} steps train {trained:,} tokens "
            f"= {trained / self.tokens_per_epoch:.3f} epochs"
        )

    def _micro_batches_per_step(self, batch_size: int) -> int:
        per_batch = batch_size * self.seq_len
        if batch_size < 1 or self.tokens_per_step % per_batch:
            raise LoaderError(
                f"micro-batches of {batch_size} x {self.seq_len} tokens do not tile a step of "
                f"{self.tokens_per_step} tokens"
            )
        return self.tokens_per_step // per_batch

    def epoch_of(self, index: int, batch_size: int) -> int:
        """Epoch of micro-batch ``index``."""
        return index // self._micro_batches_per_step(batch_size) // self.steps_per_epoch

    def position(self, index: int, batch_size: int) -> tuple[int, int]:
        """(shard, first token in it) of micro-batch ``index`` of ``batch_size`` rows."""
        if index < 0:
            raise LoaderError(f"need index >= 0, got {index}")
        per_step = self._micro_batches_per_step(batch_size)
        step, m = divmod(index, per_step)
        s = step % self.steps_per_epoch
        shard = int(np.searchsorted(self._first_step, s, side="right")) - 1
        return shard, (
            s - int(self._first_step[shard])
        ) * self.tokens_per_step + m * batch_size * self.seq_len

    def batch(self, index: int, batch_size: int) -> Batch:
        """Micro-batch ``index``: (x, y) int64 [batch_size, seq_len], y[:, t] = x[:, t + 1]."""
        shard, start = self.position(index, batch_size)
        T = self.seq_len
        tokens = self.stream.shards[shard][start : start + batch_size * T + 1]
        rows = np.lib.stride_tricks.sliding_window_view(tokens, T + 1)[::T]
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]


class DistributedLoader:
    """Micro-batches for one rank (of a TokenDataset or SequentialDataset): at optimizer step s, accumulation micro-step a, rank r it yields
    `dataset.batch(s * world_size * grad_accum + a * world_size + r, batch_size)`.

    One optimizer step therefore consumes micro-batches [s·W·G, (s+1)·W·G) whatever the split between ranks
    (W) and accumulation (G): 1 process × 2 accumulation steps sees what 2 processes × 1 step see.
    """

    def __init__(
        self, dataset: TokenDataset, batch_size: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1
    ):
        if batch_size < 1 or world_size < 1 or grad_accum < 1:
            raise LoaderError(
                "batch_size, world_size and grad_accum must be >= 1, "
                f"got {batch_size}, {world_size}, {grad_accum}"
            )
        if not 0 <= rank < world_size:
            raise LoaderError(f"rank must lie in [0, {world_size}), got {rank}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.step = 0
        self.micro_step = 0

    def micro_batch_index(self) -> int:
        """Global index of the micro-batch the next call to `next_batch` returns."""
        return (self.step * self.grad_accum + self.micro_step) * self.world_size + self.rank

    def next_batch(self) -> Batch:
        """(x, y) int64 [batch_size, seq_len]; advances the micro-step (and the step every grad_accum)."""
        x, y = self.dataset.batch(self.micro_batch_index(), self.batch_size)
        self.micro_step += 1
        if self.micro_step == self.grad_accum:
            self.micro_step = 0
            self.step += 1
        return x, y

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return self.next_batch()

    def state_dict(self) -> dict[str, int]:
        """Plain ints (JSON-serialisable): the position plus the geometry it is expressed in."""
        return {
            "step": self.step,
            "micro_step": self.micro_step,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "grad_accum": self.grad_accum,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at `state`. The geometry may change (e.g. 2 ranks × 1 → 1 rank × 2) only at a step boundary
        with the same micro-batches per step, which keeps the data order identical."""
        self.check_state_dict(state)
        self.step = int(state["step"])
        self.micro_step = int(state["micro_step"])

    def check_state_dict(self, state: dict[str, int]) -> None:
        """Raise LoaderError unless `load_state_dict(state)` would resume this loader at a valid position."""
        if not isinstance(state, dict):
            raise LoaderError(f"a loader state is a dict of integers, got {type(state).__name__}")
        keys = ("step", "micro_step", "batch_size", "world_size", "grad_accum")
        for key in keys:
            value = state.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key in keys[2:] else 0):
                raise LoaderError(
                    f"field {key!r} must be an integer >= {1 if key in keys[2:] else 0}, got {value!r}"
                )
        if state["micro_step"] >= state["grad_accum"]:
            raise LoaderError(f"micro_step {state['micro_step']} must be < grad_accum {state['grad_accum']}")
        same_geometry = state["world_size"] == self.world_size and state["grad_accum"] == self.grad_accum
        per_step = state["world_size"] * state["grad_accum"]
        if state["batch_size"] != self.batch_size:
            raise LoaderError(
                f"saved batch_size {state['batch_size']} differs from this loader's {self.batch_size}"
            )
        if not same_geometry and (per_step != self.world_size * self.grad_accum or state["micro_step"] != 0):
            raise LoaderError(
                f"cannot resume a world_size={state['world_size']} x grad_accum={state['grad_accum']} loader "
                f"(micro_step {state['micro_step']}) as world_size={self.world_size} "
                f"x grad_accum={self.grad_accum}"
            )


def val_window_ids(
    n_windows: int, batch_size: int, max_windows: int, rank: int, world_size: int
) -> list[np.ndarray]:
    """Window ids of each validation batch of `rank`; same batch count and sizes on every rank."""
    used = min(n_windows, max_windows)
    per_step = batch_size * world_size
    n_steps = used // per_step
    if n_steps >= 1:
        return [(t * world_size + rank) * batch_size + np.arange(batch_size) for t in range(n_steps)]
    small = used // world_size
    if small < 1:
        raise LoaderError(f"{used} validation window(s) cannot be shared among {world_size} ranks")
    return [rank * small + np.arange(small)]


def iter_val_batches(
    files: Sequence[str | Path] | TokenStream,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Validation batches (x, y) int64 [b, seq_len], in stream order, windows at k * seq_len.

    Budget: min(all windows, max_tokens // seq_len) windows, floored to whole steps of batch_size per rank;
    if that leaves no whole step, one smaller batch per rank instead (never nothing). Step t of rank r holds
    windows [(t·world_size + r)·batch_size, … + batch_size), so ranks see disjoint windows whose union is
    what one rank with batch_size × world_size sees. Raises if the budget or data hold less than one window.
    ``files`` may be an open ``TokenStream``, so a trainer that validates often opens (and checks) its shards once.
    """
    if batch_size < 1 or seq_len < 1:
        raise LoaderError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    if not 0 <= rank < world_size:
        raise LoaderError(f"rank must lie in [0, {world_size}), got {rank}")
    stream = files if isinstance(files, TokenStream) else TokenStream(files)
    n_windows = max(0, (stream.n_tokens - 1) // seq_len)
    if n_windows < 1:
        raise LoaderError(f"{stream.describe()} hold no validation window of {seq_len + 1} tokens")
    max_windows = n_windows if max_tokens is None else max_tokens // seq_len
    if max_windows < 1:
        raise LoaderError(f"max_tokens={max_tokens} is less than one window of seq_len={seq_len} tokens")
    for windows in val_window_ids(n_windows, batch_size, max_windows, rank, world_size):
        rows = torch.from_numpy(stream.gather(windows * seq_len, seq_len + 1).astype(np.int64))
        yield rows[:, :-1], rows[:, 1:]


def val_bytes_per_token(
    files: Sequence[str | Path] | TokenStream,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None = None,
    world_size: int = 1,
) -> float:
    """Mean UTF-8 bytes per target token over the validation set `iter_val_batches` gives all ranks."""
    n_bytes = n_tokens = 0
    for rank in range(world_size):
        for _, y in iter_val_batches(files, batch_size, seq_len, max_tokens, rank, world_size):
            n_bytes += count_utf8_bytes(y)
            n_tokens += y.numel()
    return n_bytes / n_tokens


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """Convert a mean loss in nats/token to bits per UTF-8 byte."""
    return loss_nats / (bytes_per_token * math.log(2))
