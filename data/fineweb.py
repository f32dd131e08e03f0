"""The public pre-tokenized FineWeb-10B GPT-2 shards used by modded-nanoGPT.

Same source and file names as modded-nanoGPT's `data/cached_fineweb10B.py`: the dataset repository
`kjj0/fineweb10B-gpt2` on the Hugging Face hub holds `fineweb_val_000000.bin` (validation, ≈100M tokens)
and `fineweb_train_000001.bin` … `fineweb_train_000103.bin` (≈100M tokens each), already in our shard format.
Needs network access and the `fineweb` extra (huggingface_hub): `make fineweb` installs it and downloads.
Nothing in the test suite downloads.
"""

from __future__ import annotations

from pathlib import Path

from data.shards import read_shard_header

HUB_REPO = "kjj0/fineweb10B-gpt2"
MAX_TRAIN_SHARDS = 103


def fineweb_filename(split: str, index: int) -> str:
    """`fineweb_{split}_{index:06d}.bin`; validation is index 0, training shards start at 1."""
    return f"fineweb_{split}_{index:06d}.bin"


def fineweb_filenames(train_shards: int) -> list[str]:
    """The validation shard followed by the first `train_shards` training shards."""
    if not 0 <= train_shards <= MAX_TRAIN_SHARDS:
        raise ValueError(f"train_shards must lie in [0, {MAX_TRAIN_SHARDS}], got {train_shards}")
    return [fineweb_filename("val", 0)] + [fineweb_filename("train", i) for i in range(1, train_shards + 1)]


def download_fineweb(out_dir: str | Path, train_shards: int = 8) -> list[Path]:
    """Download the validation shard and `train_shards` training shards into `out_dir` (existing files that
    pass the header check are kept); returns their paths, each checked with `read_shard_header`."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ImportError(
            "downloading FineWeb needs the huggingface_hub package: run 'make fineweb' (it installs the 'fineweb' "
            "extra), or pip install huggingface_hub"
        ) from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in fineweb_filenames(train_shards):
        path = out_dir / name
        if not path.exists():
            hf_hub_download(repo_id=HUB_REPO, filename=name, repo_type="dataset", local_dir=out_dir)
        read_shard_header(path)
        paths.append(path)
    return paths
