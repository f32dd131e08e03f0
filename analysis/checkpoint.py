"""Load a checkpoint for analysis: a run folder (follows its LATEST file) or a checkpoint folder.

A run folder ``runs/<name>/`` holds ``LATEST`` naming ``ckpt_<step>/``, which holds ``model.safetensors`` and
``config.json`` = {"model": GPTConfig fields, "train": TrainConfig fields, "vocab": CompactVocab entry}.
The trainer is not imported: this module only reads those files.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from analysis.errors import AnalysisError
from data.vocab import CompactVocab, VocabError
from model import GPT, CheckpointError, load_model
from model import io as model_io
from model.hf_import import HFTokenizer, load_tokenizer
from model.io import CONFIG_FILE, read_json

DEFAULT_SEQ_LEN = 128


def resolve_checkpoint(path: str | Path) -> Path:
    """``model.io.resolve_checkpoint`` with its errors as AnalysisError."""
    try:
        return model_io.resolve_checkpoint(path)
    except CheckpointError as e:
        raise AnalysisError(str(e)) from e


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, CPU, float32), its vocabulary and its config.json."""

    path: Path
    model: GPT
    vocab: CompactVocab
    config: dict = field(repr=False)
    tokenizer: HFTokenizer | None = None  # the model's own tokenizer (imported models); None: GPT-2 via vocab

    @property
    def train_config(self) -> dict:
        return self.config.get("train") or {}

    @property
    def seq_len(self) -> int:
        return int(self.train_config.get("seq_len") or DEFAULT_SEQ_LEN)

    @property
    def name(self) -> str:
        """'<run>/<ckpt>' for display."""
        return f"{self.path.parent.name}/{self.path.name}"

    def val_files(self, pattern: str | None = None) -> list[Path]:
        """Validation shards: ``pattern`` (a glob) or the checkpoint's train.val_files.

        A relative glob is tried against the working directory and then against each ancestor of the
        checkpoint folder (the trainer resolves it against the directory it was started in).
        """
        pattern = pattern or self.train_config.get("val_files")
        if not pattern:
            raise AnalysisError(
                f"{self.path / CONFIG_FILE} names no validation files (train.val_files); pass --val-files GLOB"
            )
        files = find_files(pattern, [Path.cwd(), *self.path.resolve().parents])
        if not files:
            raise AnalysisError(
                f"no validation shards match {pattern!r} (searched the working directory and the ancestors "
                f"of {self.path}); pass --val-files GLOB"
            )
        return files


def find_files(pattern: str, anchors: list[Path]) -> list[Path]:
    """Files matching ``pattern``: as given if absolute, else under the first anchor where anything matches."""
    if Path(pattern).is_absolute():
        return sorted(Path(f) for f in glob.glob(pattern))
    for anchor in anchors:
        files = sorted(Path(f) for f in glob.glob(str(anchor / pattern)))
        if files:
            return files
    return []


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Resolve ``path`` (run or checkpoint folder) and load the model in eval mode on the CPU."""
    ckpt = resolve_checkpoint(path)
    try:
        config = read_json(ckpt / CONFIG_FILE)
        model = load_model(ckpt).float().eval()
        tokenizer = load_tokenizer(ckpt, config)
    except CheckpointError as e:
        raise AnalysisError(str(e)) from e
    try:
        vocab = CompactVocab.from_config(config, source=ckpt / CONFIG_FILE)
    except VocabError as e:
        raise AnalysisError(str(e)) from e
    if vocab.token_ids is not None and vocab.size > model.config.vocab_size:
        raise AnalysisError(
            f"{ckpt / CONFIG_FILE}: the compact vocabulary has {vocab.size} tokens but the model only "
            f"{model.config.vocab_size} embedding rows"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return Checkpoint(ckpt, model, vocab, config, tokenizer)
