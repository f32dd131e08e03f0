"""Toy data for trainer tests (imported by test modules; pytest puts tests/ on sys.path): a learnable corpus
written as shards, and a free TCP port for 2-process gloo runs."""

import socket
from pathlib import Path

import numpy as np

from data.shards import write_shard


def write_corpus(root: Path) -> dict:
    """A Markov chain over 40 GPT-2 ids (1000..1039, 3 successors each) as train and val shards in ``root``.

    Returns {"train": glob, "val": glob, "root": root}.
    """
    rng = np.random.default_rng(0)
    ids = np.arange(1000, 1040)
    nxt = rng.integers(0, 40, size=(40, 3))
    state, tokens = 0, []
    for _ in range(6000):
        state = nxt[state, rng.integers(0, 3)]
        tokens.append(ids[state])
    root.mkdir(parents=True, exist_ok=True)
    write_shard(root / "syn_train_000000.bin", np.array(tokens[:5000]))
    write_shard(root / "syn_val_000000.bin", np.array(tokens[5000:]))
    return {"train": str(root / "syn_train_*.bin"), "val": str(root / "syn_val_*.bin"), "root": root}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
