"""Data budget of record #21's data order (data.loader.SequentialDataset): tokens available, per epoch, trained.

    python bench/data_budget.py                                   # 9 FineWeb-10B-sized shards of 10^8 tokens
    python bench/data_budget.py --files 'data/fineweb10B/fineweb_train_*.bin'   # the real shards

Without --files the shards are sparse files with modded-nanoGPT headers (no disk, no download): the budget
depends only on their sizes. Rows: record #21 (1770 steps of 8 × 48K tokens) and the step count and batch given.
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.loader import SequentialDataset  # noqa: E402


def sparse_shards(folder: Path, n_shards: int, tokens: int) -> list[Path]:
    files = []
    for k in range(1, n_shards + 1):
        path = folder / f"fineweb_train_{k:06d}.bin"
        header = np.zeros(256, dtype=np.int32)
        header[:3] = (20240520, 1, tokens)
        with open(path, "wb") as f:
            f.write(header.tobytes())
            f.truncate(header.nbytes + 2 * tokens)
        files.append(path)
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", default="", help="glob of real shards; default: sparse stand-ins")
    p.add_argument("--shards", type=int, default=9, help="stand-in shard count (the README downloads 9)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per stand-in shard")
    p.add_argument("--steps", type=int, default=1750, help="steps of the second row")
    p.add_argument("--batch-tokens", type=int, default=512 * 1024, help="tokens per step of the second row")
    args = p.parse_args()
    rows = [(1770, 8 * 48 * 1024, "record #21, 1770 × 8 × 48K"), (args.steps, args.batch_tokens, "given")]
    with tempfile.TemporaryDirectory() as tmp:
        files = (
            sorted(glob.glob(args.files))
            if args.files
            else sparse_shards(Path(tmp), args.shards, args.shard_tokens)
        )
        for steps, batch_tokens, name in rows:
            ds = SequentialDataset(files, seq_len=batch_tokens, batch_tokens=batch_tokens)
            print(f"{name}: {ds.budget(steps)}; {int(ds.shard_steps.max())} steps per shard")


if __name__ == "__main__":
    main()
