"""Model vocabularies over GPT-2 token ids.

``full`` keeps GPT-2's ids (embedding padded to 50304 rows, as modded-nanoGPT does). ``compact`` keeps only the
ids that occur in a set of shards, renumbered 0..n-1: on CPU the 50k-wide head dominates the cost of a small
model, and Shakespeare uses ~19k distinct ids, so a compact head is ~2.6× cheaper. Shards always hold GPT-2
ids; the mapping is applied to batches and stored in the checkpoint so analysis can decode model ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from errors import TntError

from .shards import read_shard
from .tokenizer import EOT_ID, VOCAB_SIZE

FULL_VOCAB_PADDED = 50304  # 50257 rounded up to a multiple of 128


class VocabError(TntError, ValueError):
    """A vocabulary entry is malformed, or data holds ids outside a compact vocabulary; the message names the file."""


@dataclass(frozen=True)
class CompactVocab:
    """``token_ids[m]`` is the GPT-2 id of model id m; ``None`` means the identity (full vocabulary)."""

    token_ids: tuple[int, ...] | None = None

    @classmethod
    def full(cls) -> CompactVocab:
        return cls(None)

    @classmethod
    def from_shards(cls, files: Sequence[str | Path]) -> CompactVocab:
        """The ids present in ``files`` (plus EOT), in increasing order."""
        present = np.zeros(VOCAB_SIZE, dtype=bool)
        for f in files:
            present[np.unique(np.asarray(read_shard(f)))] = True
        present[EOT_ID] = True
        return cls(tuple(int(i) for i in np.flatnonzero(present)))

    @classmethod
    def from_config(cls, config: dict, source: str | Path = "config.json") -> CompactVocab:
        """Read the ``vocab`` entry of a checkpoint's config.json (absent = full), checked: ``token_ids`` is null
        or a non-empty list of distinct GPT-2 ids in [0, 50257). ``source`` (the file) prefixes messages."""
        entry = config.get("vocab")
        if entry is None:
            return cls(None)
        if not isinstance(entry, dict):
            raise VocabError(f"{source}: field 'vocab' must be an object, got {type(entry).__name__}")
        if entry.get("tokenizer", "gpt2") != "gpt2":
            raise VocabError(f"{source}: field 'vocab.tokenizer' must be 'gpt2', got {entry['tokenizer']!r}")
        ids = entry.get("token_ids")
        if ids is None:
            return cls(None)
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        ):
            raise VocabError(
                f"{source}: field 'vocab.token_ids' must be a non-empty list of integers or null"
            )
        bad = [i for i in ids if not 0 <= i < VOCAB_SIZE]
        if bad:
            raise VocabError(
                f"{source}: field 'vocab.token_ids' holds ids outside the GPT-2 range [0, {VOCAB_SIZE}): {bad[:5]}"
            )
        if len(set(ids)) != len(ids):
            raise VocabError(f"{source}: field 'vocab.token_ids' holds repeated ids")
        return cls(tuple(ids))

    def check_fits(self, embedding_rows: int, source: str | Path = "the model") -> None:
        """Raise unless every model id of this vocabulary has an embedding row (``embedding_rows`` of them)."""
        if self.size > embedding_rows:
            raise VocabError(
                f"{source}: the vocabulary has {self.size} tokens but the model only {embedding_rows} embedding rows"
            )

    def to_config(self) -> dict:
        return {
            "tokenizer": "gpt2",
            "token_ids": list(self.token_ids) if self.token_ids is not None else None,
        }

    @property
    def size(self) -> int:
        return VOCAB_SIZE if self.token_ids is None else len(self.token_ids)

    @property
    def model_vocab_size(self) -> int:
        """Rows of the embedding: the size rounded up to a multiple of 64 (128 for the full vocabulary)."""
        return FULL_VOCAB_PADDED if self.token_ids is None else -(-self.size // 64) * 64

    def check_covers(self, files: Sequence[str | Path], source: str = "the model's vocabulary") -> None:
        """Raise a VocabError naming the first shard holding an id outside this vocabulary."""
        if self.token_ids is None:
            return
        to_model = self._table()[0].numpy()
        for f in files:
            ids = np.unique(np.asarray(read_shard(f)))
            missing = ids[to_model[ids] < 0]
            if missing.size:
                raise VocabError(
                    f"{f}: holds {missing.size} token id(s) outside {source} (e.g. {missing[:5].tolist()}); "
                    "a compact vocabulary only covers the shards it was built from"
                )

    def __contains__(self, gpt2_id: int) -> bool:
        return self.token_ids is None or bool(self._table()[0][gpt2_id] >= 0)

    def encode_tensor(self, gpt2_ids: torch.Tensor) -> torch.Tensor:
        """GPT-2 ids -> model ids (same shape). Raises on ids outside the compact vocabulary."""
        if self.token_ids is None:
            return gpt2_ids
        out = self._table()[0][gpt2_ids]
        if (out < 0).any():
            bad = gpt2_ids[out < 0][:5].tolist()
            raise VocabError(f"token ids {bad} are not in this model's compact vocabulary")
        return out

    def decode_tensor(self, model_ids: torch.Tensor) -> torch.Tensor:
        """Model ids -> GPT-2 ids; padding rows (never trained) decode to EOT."""
        if self.token_ids is None:
            return model_ids.clamp(max=VOCAB_SIZE - 1)
        return self._table()[1][model_ids]

    def _table(self) -> tuple[torch.Tensor, torch.Tensor]:
        cached = getattr(self, "_cache", None)
        if cached is None:
            ids = torch.tensor(self.token_ids, dtype=torch.long)
            to_model = torch.full((VOCAB_SIZE,), -1, dtype=torch.long)
            to_model[ids] = torch.arange(len(ids))
            to_gpt2 = torch.full((self.model_vocab_size,), EOT_ID, dtype=torch.long)
            to_gpt2[: len(ids)] = ids
            cached = (to_model, to_gpt2)
            object.__setattr__(self, "_cache", cached)
        return cached
