"""Token ids as readable text: model ids -> GPT-2 ids -> decoded strings, escaped for display.

A checkpoint's model ids map to GPT-2 ids through its `CompactVocab`; text comes from the offline GPT-2 BPE
(`data.tokenizer.get_encoding`); an imported model with its own tokenizer (`model.hf_import`) decodes through
that tokenizer instead. Display strings escape newlines, tabs and other control characters
('\\n', '\\t', '\\x0b') so a token never breaks a plot label or a table row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from analysis.errors import AnalysisError
from data.tokenizer import get_encoding
from data.vocab import CompactVocab
from model.hf_import import HFTokenizer

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def display_text(text: str) -> str:
    """Escape control characters and backslashes so `text` shows on one line, e.g. ' the\\n' -> ' the\\\\n'."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_text(text: str) -> str:
    """Undo `display_text` for the escapes a user types on a command line: \\n, \\r, \\t, \\\\, \\xNN."""
    out, i = [], 0
    simple = {v[1]: k for k, v in _ESCAPES.items()}
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            if nxt == "x" and i + 3 < len(text) and _is_hex(text[i + 2 : i + 4]):
                out.append(chr(int(text[i + 2 : i + 4], 16)))
                i += 4
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _is_hex(s: str) -> bool:
    return len(s) == 2 and all(c in "0123456789abcdefABCDEF" for c in s)


@dataclass
class TokenText:
    """Decodes a model's token ids. ``label(i)`` is the escaped text in quotes, e.g. "' the'" or "'\\n'"."""

    vocab: CompactVocab
    n_rows: int  # embedding rows of the model; ids past the vocabulary are untrained padding
    tokenizer: HFTokenizer | None = None  # the model's own tokenizer (imported models): ids are its ids
    _cache: dict[int, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.encoding = get_encoding() if self.tokenizer is None else None

    def text(self, model_id: int) -> str:
        """The decoded (unescaped) text of one model id."""
        model_id = int(model_id)
        if model_id not in self._cache:
            if self.tokenizer is not None:
                self._cache[model_id] = self.tokenizer.token_text(model_id)
            elif self.vocab.token_ids is not None and model_id >= self.vocab.size:
                self._cache[model_id] = f"<pad {model_id}>"
            else:
                gpt2 = int(self.vocab.decode_tensor(torch.tensor([model_id]))[0])
                self._cache[model_id] = self.encoding.decode([gpt2])
        return self._cache[model_id]

    def display(self, model_id: int) -> str:
        """Escaped text of one model id (no quotes)."""
        return display_text(self.text(model_id))

    def label(self, model_id: int) -> str:
        """Escaped text in single quotes, so leading spaces are visible: "' the'"."""
        return f"'{self.display(model_id)}'"

    def decode(self, model_ids: Iterable[int]) -> str:
        """The decoded text of a sequence of model ids (unescaped)."""
        ids = torch.as_tensor(list(model_ids), dtype=torch.long)
        if ids.numel() == 0:
            return ""
        ids = ids.clamp(max=self.n_rows - 1)
        if self.tokenizer is not None:
            return self.tokenizer.decode(ids.tolist())
        return self.encoding.decode(self.vocab.decode_tensor(ids).tolist())

    def encode_single(self, text: str) -> int:
        """The model id of `text`, which must be exactly one GPT-2 token present in the vocabulary."""
        if self.tokenizer is not None:
            return self._encode_single_own(text)
        gpt2 = self.encoding.encode(text, allowed_special="all")
        if len(gpt2) != 1:
            pieces = ", ".join(repr(self.encoding.decode([t])) for t in gpt2)
            raise AnalysisError(
                f"token text {display_text(text)!r} is {len(gpt2)} GPT-2 tokens ({pieces}), not one; "
                "pass the text of a single token, e.g. ' the' with its leading space"
            )
        if gpt2[0] not in self.vocab:
            raise AnalysisError(
                f"token {display_text(text)!r} (GPT-2 id {gpt2[0]}) is not in this model's vocabulary"
            )
        model_id = int(self.vocab.encode_tensor(torch.tensor(gpt2))[0])
        if model_id >= self.n_rows:
            raise AnalysisError(
                f"token {display_text(text)!r} has model id {model_id} ≥ {self.n_rows} embedding rows"
            )
        return model_id

    def _encode_single_own(self, text: str) -> int:
        ids = self.tokenizer.encode(text)
        if len(ids) != 1:
            pieces = ", ".join(repr(self.tokenizer.token_text(t)) for t in ids)
            raise AnalysisError(
                f"token text {display_text(text)!r} is {len(ids)} tokens of {self.tokenizer.file} ({pieces}), "
                "not one; pass the text of a single token"
            )
        if ids[0] >= self.n_rows:
            raise AnalysisError(
                f"token {display_text(text)!r} has id {ids[0]} ≥ {self.n_rows} embedding rows"
            )
        return ids[0]


def parse_token_texts(texts: Sequence[str], token_text: TokenText) -> list[int]:
    """Model ids of user-given token texts (command-line escapes \\n, \\t, \\xNN understood)."""
    return [token_text.encode_single(unescape_text(t)) for t in texts]


@dataclass
class TokenFrequency:
    """How often each model id occurs in a token sample: counts [n_rows] over ``n_tokens`` tokens of ``source``.

    ``allowed`` keeps the ids seen at least ``min_count`` times (min_count 0: every id): readouts through W_E
    list only those, since a rare token's embedding has barely moved from its random initialisation and its
    large norm would put it at the top of any readout.
    """

    counts: torch.Tensor
    n_tokens: int
    source: str
    min_count: int

    @property
    def allowed(self) -> torch.Tensor:
        return self.counts >= self.min_count

    def count(self, model_id: int) -> int:
        return int(self.counts[int(model_id)])

    def describe(self, token_text: TokenText, n_valid: int, n_examples: int = 5) -> str:
        """One sentence on what the filter keeps and drops (with the most frequent dropped tokens)."""
        kept = int(self.allowed[:n_valid].sum())
        if self.min_count <= 0:
            return f"Token readouts through W_E list every token (counts from {self.n_tokens:,} tokens of {self.source})."
        dropped = (~self.allowed[:n_valid]).nonzero()[:, 0]
        top = dropped[self.counts[dropped].argsort(descending=True)[:n_examples]]
        examples = ", ".join(f"{token_text.label(int(t))} ×{self.count(int(t))}" for t in top)
        return (
            f"Token readouts through W_E list only the {kept:,} of {n_valid:,} tokens seen at least "
            f"{self.min_count} times in {self.n_tokens:,} tokens of {self.source} (the other {n_valid - kept:,} "
            f"keep nearly random embeddings; the most frequent of them: {examples}). Counts are shown as ×n."
        )
