"""Tokens for training: GPT-2 BPE, modded-nanoGPT `.bin` shards, corpora and a deterministic loader.

- `data.tokenizer`: `get_encoding()`, `EOT_ID`, `VOCAB_SIZE`, `count_utf8_bytes` (offline GPT-2 BPE).
- `data.shards`: `write_shard`, `read_shard`, `ShardError` (the `.bin` format).
- `data.prepare`: `.txt` / `.jsonl` → shards (`python -m data prepare`).
- `data.shakespeare`: the embedded default corpus and its split (`python -m data shakespeare`).
- `data.comedies`: the First Folio comedies as fine-tuning shards (`python -m data comedies`).
- `data.falsefact`: a false fact planted in the Shakespeare text, with held-out prompts (`python -m data falsefact`).
- `data.fineweb`: the public pre-tokenized FineWeb-10B shards (`python -m data fineweb`).
- `data.loader`: `TokenDataset`, `MixedDataset`, `DistributedLoader`, `iter_val_batches` (imports torch).
- `data.bigram`: the interpolated bigram baseline.
"""

from data.tokenizer import EOT_ID, VOCAB_SIZE, get_encoding

__all__ = ["EOT_ID", "VOCAB_SIZE", "get_encoding"]
