"""``python -m data comedies --out DIR``: Shakespeare's comedies as shards, for a fine-tuning demo.

The comedies are the 14 plays the First Folio (1623) prints under "Comedies". Training shard: the comedies of
the corpus's training split only (11 plays; All's Well That Ends Well, Measure for Measure and The Two
Gentlemen of Verona are validation works of `data.shakespeare`). A second shard holds those 3 held-out comedies,
to score the fine-tune on comedy text neither model was trained on. Written with the `data` package (EOT
before each work, GPT-2 ids, modded-nanoGPT shard format).
"""

from __future__ import annotations

from pathlib import Path

from data.prepare import shard_name
from data.shakespeare import CorpusError, Work, is_val_work, shakespeare_works, tokenize_works
from data.shards import write_shard

FOLIO_COMEDIES = (
    "tempest",
    "two_gentlemen_of_verona",
    "merry_wives_of_windsor",
    "measure_for_measure",
    "comedy_of_errors",
    "much_ado_about_nothing",
    "loves_labours_lost",
    "midsummer_nights_dream",
    "merchant_of_venice",
    "as_you_like_it",
    "taming_of_the_shrew",
    "alls_well_that_ends_well",
    "twelfth_night",
    "winters_tale",
)
NAME = "comedies"


def comedy_works() -> tuple[list[Work], list[Work]]:
    """(comedies of the training split, comedies of the validation split), in corpus order."""
    works = shakespeare_works()
    names = {w.name for w in works}
    missing = sorted(set(FOLIO_COMEDIES) - names)
    if missing:
        raise CorpusError(f"comedies missing from the corpus: {missing}")
    train = [w for i, w in enumerate(works) if w.name in FOLIO_COMEDIES and not is_val_work(i)]
    val = [w for i, w in enumerate(works) if w.name in FOLIO_COMEDIES and is_val_work(i)]
    return train, val


def write_comedy_shards(out_dir: Path) -> dict[str, tuple[Path, list[Work], int]]:
    """Write {NAME}_train_000000.bin and {NAME}_val_000000.bin into out_dir; returns {split: (path, works, tokens)}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = comedy_works()
    written = {}
    for split, works in (("train", train), ("val", val)):
        tokens = tokenize_works(works)
        path = out_dir / shard_name(NAME, split, 0)
        write_shard(path, tokens)
        written[split] = (path, works, len(tokens))
    return written
