"""Download the pre-tokenized FineWeb-10B GPT-2 shards (modded-nanoGPT's `cached_fineweb10B.py`).

    python scripts/download_fineweb.py --out runs/data/fineweb10B --train-shards 8

Writes `fineweb_val_000000.bin` (validation) and `fineweb_train_000001.bin` … (≈100M tokens, 200 MB each;
103 make up the full 10B tokens) from the hub dataset repository `kjj0/fineweb10B-gpt2`. Needs network
access and `pip install huggingface_hub`. `python -m data fineweb` does the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from data.fineweb import MAX_TRAIN_SHARDS, download_fineweb  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the .bin shards")
    parser.add_argument(
        "--train-shards",
        type=int,
        default=8,
        help=f"number of ~100M-token training shards, 0..{MAX_TRAIN_SHARDS} (default: 8)",
    )
    args = parser.parse_args(argv)
    for path in download_fineweb(args.out, args.train_shards):
        print(path)


if __name__ == "__main__":
    main()
