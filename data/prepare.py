"""Tokenize text files into modded-nanoGPT shards.

Inputs: `.txt` files (one document per file) and `.jsonl` files (one document per line, in a string field,
"text" by default). Each document becomes EOT followed by its GPT-2 tokens; documents are concatenated in
input order and cut into shards of at most `shard_tokens` tokens, named `{name}_{split}_{i:06d}.bin`.

Documents go to the validation split when their index i (counting non-empty documents from 0) satisfies
ceil((i + 1)·f) > ceil(i·f) for val_fraction f: every (1/f)-th document from the first, so f = 0.1 picks
documents 0, 10, 20, … exactly like the Shakespeare split.

All shards are first written into a hidden staging folder inside the output folder and only moved into
place once every document is tokenized, so an interrupted run leaves no partial set of shards behind.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data import shards
from data.tokenizer import EOT_ID, get_encoding
from errors import TntError, writing

SUFFIXES = (".txt", ".jsonl")
DEFAULT_SHARD_TOKENS = 100_000_000  # modded-nanoGPT's FineWeb shard size
SPLITS = ("train", "val")


class PrepareError(TntError, ValueError):
    """An input cannot be turned into shards; the message names the file (and line or byte offset)."""


@dataclass(frozen=True)
class Document:
    """One document's text, where it came from (for messages) and how many input bytes it took."""

    text: str
    source: str
    n_input_bytes: int


@dataclass
class PrepareConfig:
    """What `prepare` reads and writes. `val_fraction` = 0 writes only a train split."""

    inputs: list[Path]
    out_dir: Path
    name: str = "data"
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    workers: int = 1
    val_fraction: float = 0.0
    text_field: str = "text"
    progress: bool = True

    def __post_init__(self) -> None:
        self.inputs = [Path(p) for p in self.inputs]
        self.out_dir = Path(self.out_dir)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", self.name):
            raise PrepareError(f"name {self.name!r} must be letters, digits, '.' or '-' (no '_' or '/')")
        if self.shard_tokens < 1:
            raise PrepareError(f"shard_tokens must be >= 1, got {self.shard_tokens}")
        if self.workers < 1:
            raise PrepareError(f"workers must be >= 1, got {self.workers}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise PrepareError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")


@dataclass
class SplitStats:
    """What was written for one split: documents, tokens (EOTs included) and the shard files."""

    split: str
    documents: int = 0
    tokens: int = 0
    files: list[Path] = field(default_factory=list)


def shard_name(name: str, split: str, index: int) -> str:
    return f"{name}_{split}_{index:06d}.bin"


def validation_selector(val_fraction: float) -> Callable[[int], bool]:
    """Predicate on document index: True for validation documents (see the module docstring)."""
    frac = Fraction(val_fraction).limit_denominator(1_000_000)

    def ceil_mul(i: int) -> int:
        return -(-i * frac.numerator // frac.denominator)

    return lambda i: ceil_mul(i + 1) > ceil_mul(i)


def decode_utf8(data: bytes, path: Path, base_offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrepareError(
            f"{path}: not valid UTF-8 at byte offset {base_offset + e.start} ({e.reason})"
        ) from None


def read_txt(path: Path) -> Iterator[Document]:
    """The whole file as one document."""
    data = path.read_bytes()
    if not data:
        raise PrepareError(f"{path}: input file is empty")
    yield Document(decode_utf8(data, path), str(path), len(data))


def read_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    """One document per non-blank line, from the string field `text_field` of each JSON object."""
    offset = 0
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            line = decode_utf8(raw, path, offset).strip()
            n_bytes, offset = len(raw), offset + len(raw)
            if not line:
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PrepareError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise PrepareError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if text_field not in record:
                fields = ", ".join(map(repr, list(record)[:10])) or "none"
                raise PrepareError(f"{where}: missing text field {text_field!r} (fields: {fields})")
            text = record[text_field]
            if not isinstance(text, str):
                raise PrepareError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
            yield Document(text, where, n_bytes)
    if offset == 0:
        raise PrepareError(f"{path}: input file is empty")


def check_inputs(inputs: list[Path]) -> None:
    if not inputs:
        raise PrepareError("no input files given")
    for path in inputs:
        if not path.exists():
            raise PrepareError(f"{path}: input file not found")
        if not path.is_file():
            raise PrepareError(f"{path}: not a regular file")
        if path.suffix not in SUFFIXES:
            raise PrepareError(f"{path}: unsupported input type {path.suffix!r}; expected .txt or .jsonl")


def iter_documents(inputs: list[Path], text_field: str = "text") -> Iterator[Document]:
    """Documents of all inputs, in order."""
    check_inputs(inputs)
    for path in inputs:
        yield from read_txt(path) if path.suffix == ".txt" else read_jsonl(path, text_field)


def tokenize_document(doc: Document) -> tuple[np.ndarray, int]:
    """(uint16 tokens [1 + n]: EOT then the document, input bytes consumed). Runs in worker processes.

    `encode_ordinary` treats a literal "<|endoftext|>" in the text as plain text, so documents cannot forge
    separators.
    """
    ids = get_encoding().encode_ordinary(doc.text)
    tokens = np.empty(len(ids) + 1, dtype=np.uint16)
    tokens[0] = EOT_ID
    tokens[1:] = ids
    return tokens, doc.n_input_bytes


class ShardWriter:
    """Accumulates tokens of one split and writes a shard each time `shard_tokens` are buffered."""

    def __init__(self, folder: Path, name: str, split: str, shard_tokens: int):
        self.folder, self.name = folder, name
        self.stats = SplitStats(split)
        self.buffer = np.empty(shard_tokens, dtype=np.uint16)
        self.filled = 0

    def add(self, tokens: np.ndarray) -> None:
        self.stats.documents += 1
        self.stats.tokens += len(tokens)
        while len(tokens):
            take = min(len(tokens), len(self.buffer) - self.filled)
            self.buffer[self.filled : self.filled + take] = tokens[:take]
            self.filled += take
            tokens = tokens[take:]
            if self.filled == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        if self.filled:
            path = self.folder / shard_name(self.name, self.stats.split, len(self.stats.files))
            shards.write_shard(path, self.buffer[: self.filled])
            self.stats.files.append(path)
            self.filled = 0


def write_documents(
    documents: Iterable[Document],
    out_dir: Path,
    name: str,
    is_val: Callable[[int], bool],
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    workers: int = 1,
    progress_total: int | None = None,
    progress: bool = True,
) -> dict[str, SplitStats]:
    """Tokenize `documents` (skipping empty ones) into `{name}_{split}_*.bin` shards in `out_dir`.

    Previous shards of the same name are replaced; shards of a split left empty are not written.
    """
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}-prepare-"))
    try:
        writers = {split: ShardWriter(staging, name, split, shard_tokens) for split in SPLITS}
        non_empty = (doc for doc in documents if doc.text)
        with (
            tqdm(total=progress_total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar,
            ordered_map(workers) as mapper,
        ):
            for index, (tokens, n_bytes) in enumerate(mapper(tokenize_document, non_empty)):
                writers["val" if is_val(index) else "train"].add(tokens)
                bar.update(n_bytes)
        for writer in writers.values():
            writer.flush()
        stats = {split: w.stats for split, w in writers.items()}
        if stats["train"].documents + stats["val"].documents == 0:
            raise PrepareError("the inputs hold no non-empty document")
        if stats["train"].documents == 0:
            raise PrepareError("every document went to validation; lower val_fraction or add documents")
        return _publish(stats, staging, out_dir, name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def ordered_map(workers: int) -> Iterator[Callable]:
    """An order-preserving, lazy `map`: the builtin for 1 worker, a process pool's `imap` otherwise."""
    if workers == 1:
        yield map
        return
    # spawn, not fork: the parent may hold threads (torch, tqdm) that a forked child would copy mid-lock.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield lambda fn, items: pool.imap(fn, items, chunksize=4)


def _publish(stats: dict[str, SplitStats], staging: Path, out_dir: Path, name: str) -> dict[str, SplitStats]:
    """Move staged shards into `out_dir`, then delete older shards of `name` the new set does not replace."""
    published = set()
    for split_stats in stats.values():
        moved = []
        for path in split_stats.files:
            target = out_dir / path.name
            path.replace(target)
            moved.append(target)
            published.add(target.name)
        split_stats.files = moved
    pattern = re.compile(rf"{re.escape(name)}_({'|'.join(SPLITS)})_\d{{6}}\.bin")
    for old in out_dir.iterdir():
        if pattern.fullmatch(old.name) and old.name not in published:
            old.unlink()
    return stats


def prepare(config: PrepareConfig) -> dict[str, SplitStats]:
    """Tokenize `config.inputs` into shards in `config.out_dir`; returns per-split statistics."""
    check_inputs(config.inputs)
    return write_documents(
        iter_documents(config.inputs, config.text_field),
        config.out_dir,
        config.name,
        validation_selector(config.val_fraction),
        shard_tokens=config.shard_tokens,
        workers=config.workers,
        progress_total=sum(p.stat().st_size for p in config.inputs),
        progress=config.progress,
    )
