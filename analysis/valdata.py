"""Validation tokens in model ids: the windows the trainer scores, mapped through the checkpoint's vocabulary."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analysis.errors import AnalysisError
from data.loader import iter_val_batches
from data.shards import ShardError, read_shard
from data.vocab import CompactVocab, VocabError


@dataclass
class ValTokens:
    """x, y: int64 [n_seq, seq_len] model ids, y[:, t] the token after x[:, t]."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def n_tokens(self) -> int:
        return self.x.numel()

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.x.shape[0], batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def head(self, n_seq: int) -> ValTokens:
        return ValTokens(self.x[:n_seq], self.y[:n_seq])


def load_val_tokens(
    files: Sequence[str | Path], seq_len: int, max_tokens: int, vocab: CompactVocab, n_rows: int
) -> ValTokens:
    """The first max_tokens // seq_len validation windows (at least one), as model ids.

    Uses `data.loader.iter_val_batches` (windows at k·seq_len of the concatenated shards), like the trainer.
    """
    if max_tokens < seq_len:
        raise AnalysisError(f"--val-tokens {max_tokens} is less than one sequence of {seq_len} tokens")
    try:
        batches = list(iter_val_batches([str(f) for f in files], 1, seq_len, max_tokens))
    except (ShardError, ValueError) as e:
        raise AnalysisError(f"cannot read validation windows: {e}") from e
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    try:
        x, y = vocab.encode_tensor(x), vocab.encode_tensor(y)
    except VocabError as e:
        raise AnalysisError(f"validation data does not fit the checkpoint's vocabulary: {e}") from e
    top = int(max(x.max(), y.max()))
    if top >= n_rows:
        raise AnalysisError(f"validation token id {top} is outside the model's {n_rows} embedding rows")
    return ValTokens(x, y)


def token_counts(
    files: Sequence[str | Path], vocab: CompactVocab, n_rows: int, max_tokens: int
) -> torch.Tensor:
    """Counts [n_rows] of model ids over the first max_tokens tokens of the shards (ids outside the vocab skipped)."""
    counts = torch.zeros(n_rows, dtype=torch.long)
    left = max_tokens
    for f in files:
        if left <= 0:
            break
        ids = torch.from_numpy(np.asarray(read_shard(f)[:left]).astype(np.int64))
        left -= len(ids)
        keep = torch.tensor([int(i) in vocab for i in ids.unique()], dtype=torch.bool)
        allowed = ids.unique()[keep]
        ids = ids[torch.isin(ids, allowed)]
        model_ids = vocab.encode_tensor(ids)
        counts += torch.bincount(model_ids[model_ids < n_rows], minlength=n_rows)
    return counts
