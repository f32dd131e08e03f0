"""modded-nanoGPT `.bin` token shards.

Layout (unchanged from modded-nanoGPT, so its public FineWeb shards load as they are):
    header: 256 little-endian int32 = [MAGIC, VERSION, n_tokens, 0, ...]   (1024 bytes)
    body:   n_tokens little-endian uint16 token ids
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.tokenizer import VOCAB_SIZE
from errors import TntError, atomic_write_bytes, storage_error

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_TOKEN_ID = np.iinfo(TOKEN_DTYPE).max

# Tokens are range-checked this many at a time so validating a 100M-token shard never copies it whole.
_CHECK_CHUNK = 1 << 24


class ShardError(TntError, ValueError):
    """A shard file is missing, malformed, or holds token ids outside the vocabulary."""


def shard_header(n_tokens: int) -> np.ndarray:
    """int32 array [256]: the header of a shard holding `n_tokens` tokens."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, n_tokens)
    return header


def write_shard(path: str | Path, tokens: np.ndarray | Sequence[int], vocab_size: int = VOCAB_SIZE) -> None:
    """Write `tokens` (1-D, ids < vocab_size) to `path` atomically.

    The data goes to a temporary file in the same directory, is fsync'ed, then renamed over `path`, so a
    crash leaves either the old file or the complete new one, never a truncated shard.
    """
    path = Path(path)
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ShardError(f"{path}: tokens must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ShardError(f"{path}: tokens must be integers, got dtype {array.dtype}")
    limit = min(vocab_size, MAX_TOKEN_ID + 1)
    if array.size and (int(array.min()) < 0 or int(array.max()) >= limit):
        raise ShardError(
            f"{path}: token ids must lie in [0, {limit}), got range [{int(array.min())}, {int(array.max())}]"
        )
    if array.size > np.iinfo(np.int32).max:
        raise ShardError(f"{path}: {array.size} tokens do not fit the int32 token count of the header")
    body = array.astype(TOKEN_DTYPE, copy=False)

    # a full or read-only disk: StorageError naming the shard, no temporary file left
    atomic_write_bytes(path, shard_header(array.size).tobytes(), body.tobytes())


def read_shard_header(path: str | Path) -> int:
    """Validate the header and size of the shard at `path`; return its token count."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
            file_size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file not found") from None
    except IsADirectoryError:
        raise ShardError(f"{path}: is a directory, not a shard file") from None
    except OSError as e:
        raise storage_error(e, path) from None
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: truncated header ({len(raw)} bytes, a shard header is {HEADER_BYTES})")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise ShardError(f"{path}: wrong magic number {int(header[0])} (expected {MAGIC}); not a token shard")
    if header[1] != VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    n_tokens = int(header[2])
    if n_tokens < 0:
        raise ShardError(f"{path}: negative token count {n_tokens} in header")
    expected_size = HEADER_BYTES + n_tokens * TOKEN_DTYPE.itemsize
    if file_size != expected_size:
        body_tokens = (file_size - HEADER_BYTES) / TOKEN_DTYPE.itemsize
        problem = "truncated" if file_size < expected_size else "has trailing bytes"
        raise ShardError(
            f"{path}: {problem}: header says {n_tokens} tokens ({expected_size} bytes) but the file is "
            f"{file_size} bytes ({body_tokens:g} tokens)"
        )
    return n_tokens


def read_shard(path: str | Path, vocab_size: int = VOCAB_SIZE) -> np.ndarray:
    """Memory-map the tokens of the shard at `path`: read-only uint16 `np.memmap` [n_tokens], not copied.

    Header, file size and token range (< vocab_size) are all checked on open; the range check scans the
    map in chunks, so it reads the file once but never holds more than a chunk in memory.
    """
    path = Path(path)
    n_tokens = read_shard_header(path)
    if n_tokens == 0:
        # mmap cannot map zero bytes: map the header and take an empty slice of it.
        return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", shape=(HEADER_BYTES // TOKEN_DTYPE.itemsize,))[:0]
    tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))
    for start in range(0, n_tokens, _CHECK_CHUNK):
        chunk = tokens[start : start + _CHECK_CHUNK]
        top = int(chunk.max())
        if top >= vocab_size:
            where = start + int(np.argmax(chunk >= vocab_size))
            raise ShardError(
                f"{path}: token id {int(tokens[where])} at position {where} is outside the vocabulary "
                f"(vocab_size {vocab_size})"
            )
    return tokens
