"""Shard format, its validation, and `prepare` (text → shards) including its error messages."""

import json
import os
import re

import numpy as np
import pytest

from data import prepare as prepare_module
from data import shards
from data.__main__ import main
from data.prepare import PrepareConfig, PrepareError, prepare, validation_selector
from data.shards import ShardError, read_shard, write_shard
from data.tokenizer import EOT_ID, get_encoding


def reference_shard_bytes(tokens: np.ndarray, magic: int = 20240520, version: int = 1, count=None) -> bytes:
    """The format written independently: 256 little-endian int32, then little-endian uint16 tokens."""
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = magic, version, len(tokens) if count is None else count
    return header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes()


@pytest.fixture
def tokens() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 50257, size=1000)
    t[[0, 500]] = EOT_ID
    t[1] = 0
    return t


def test_write_then_read(tmp_path, tokens):
    path = tmp_path / "a.bin"
    write_shard(path, tokens)
    read = read_shard(path)
    assert isinstance(read, np.memmap) and read.dtype == np.uint16
    np.testing.assert_array_equal(read, tokens)


def test_written_bytes_match_reference_format(tmp_path, tokens):
    path = tmp_path / "a.bin"
    write_shard(path, tokens)
    assert path.read_bytes() == reference_shard_bytes(tokens)


def test_reads_reference_written_file(tmp_path, tokens):
    path = tmp_path / "ref.bin"
    path.write_bytes(reference_shard_bytes(tokens))
    np.testing.assert_array_equal(read_shard(path), tokens)


def test_empty_shard_round_trip(tmp_path):
    path = tmp_path / "empty.bin"
    write_shard(path, np.zeros(0, dtype=np.int64))
    assert path.read_bytes() == reference_shard_bytes(np.zeros(0))
    assert len(read_shard(path)) == 0


@pytest.mark.parametrize(
    "content, problem",
    [
        (lambda t: reference_shard_bytes(t, magic=12345), "wrong magic number 12345"),
        (lambda t: reference_shard_bytes(t, version=2), "unsupported shard version 2"),
        (lambda t: reference_shard_bytes(t)[:-10], "truncated: header says 1000 tokens"),
        (lambda t: reference_shard_bytes(t, count=1200), "truncated: header says 1200 tokens"),
        (lambda t: reference_shard_bytes(t, count=900), "has trailing bytes: header says 900 tokens"),
        (lambda t: reference_shard_bytes(t)[:100], "truncated header"),
        (lambda t: reference_shard_bytes(np.r_[t, 50257]), "token id 50257 at position 1000 is outside"),
        (lambda t: reference_shard_bytes(np.r_[t[:3], 65535, t]), "token id 65535 at position 3"),
    ],
)
def test_bad_shards_are_named_errors(tmp_path, tokens, content, problem):
    path = tmp_path / "bad.bin"
    path.write_bytes(content(tokens))
    with pytest.raises(ShardError) as info:
        read_shard(path)
    assert str(path) in str(info.value) and problem in str(info.value)


def test_vocab_size_argument_bounds_tokens(tmp_path):
    path = tmp_path / "small.bin"
    path.write_bytes(reference_shard_bytes(np.array([0, 1, 2, 7, 3])))
    assert len(read_shard(path, vocab_size=8)) == 5
    with pytest.raises(ShardError, match=r"token id 7 at position 3 .*vocab_size 7"):
        read_shard(path, vocab_size=7)


def test_missing_shard(tmp_path):
    path = tmp_path / "nope.bin"
    with pytest.raises(ShardError, match=re.escape(str(path)) + ": shard file not found"):
        read_shard(path)


@pytest.mark.parametrize("bad", [[1, 2, 50257], [1, -1], [70000]])
def test_write_rejects_out_of_range_ids(tmp_path, bad):
    path = tmp_path / "w.bin"
    with pytest.raises(ShardError, match="token ids must lie in"):
        write_shard(path, np.array(bad))
    assert not path.exists()


def test_write_is_atomic(tmp_path, tokens, monkeypatch):
    path = tmp_path / "a.bin"
    write_shard(path, tokens[:10])
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(shards.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_shard(path, tokens)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


# --- prepare ----------------------------------------------------------------------------------------------


def expected_stream(docs: list[str]) -> np.ndarray:
    enc = get_encoding()
    return np.array([t for doc in docs for t in [EOT_ID] + enc.encode_ordinary(doc)], dtype=np.int64)


def read_split(out_dir, name: str, split: str) -> np.ndarray:
    files = sorted(out_dir.glob(f"{name}_{split}_*.bin"))
    return (
        np.concatenate([np.asarray(read_shard(f), dtype=np.int64) for f in files]) if files else np.zeros(0)
    )


def make_corpus(tmp_path) -> tuple[list, list[str]]:
    (tmp_path / "in").mkdir()
    a = tmp_path / "in" / "a.txt"
    a.write_text("First document.\nIt has two lines, café and 東京.", encoding="utf-8")
    b = tmp_path / "in" / "b.jsonl"
    lines = [{"text": f"JSON document number {i} 🙂", "id": i} for i in range(5)]
    b.write_text(
        "\n".join(json.dumps(r) for r in lines[:3]) + "\n\n" + "\n".join(json.dumps(r) for r in lines[3:])
    )
    docs = [a.read_text(encoding="utf-8")] + [r["text"] for r in lines]
    return [a, b], docs


def test_prepare_matches_reference_tokenization(tmp_path):
    inputs, docs = make_corpus(tmp_path)
    stats = prepare(PrepareConfig(inputs, tmp_path / "out", name="toy", progress=False))
    np.testing.assert_array_equal(read_split(tmp_path / "out", "toy", "train"), expected_stream(docs))
    assert stats["train"].documents == 6 and stats["val"].documents == 0
    assert [p.name for p in stats["train"].files] == ["toy_train_000000.bin"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["toy_train_000000.bin"]


def test_prepare_caps_shard_size(tmp_path):
    inputs, docs = make_corpus(tmp_path)
    stats = prepare(PrepareConfig(inputs, tmp_path / "out", name="toy", shard_tokens=7, progress=False))
    expected = expected_stream(docs)
    sizes = [len(read_shard(p)) for p in stats["train"].files]
    assert sizes == [7] * (len(expected) // 7) + ([len(expected) % 7] if len(expected) % 7 else [])
    assert [p.name for p in stats["train"].files] == [f"toy_train_{i:06d}.bin" for i in range(len(sizes))]
    np.testing.assert_array_equal(read_split(tmp_path / "out", "toy", "train"), expected)


def test_prepare_val_fraction_and_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    docs = [f"doc {i}: " + "word " * (i % 7) for i in range(31)]
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    prepare(PrepareConfig([path], tmp_path, name="j", val_fraction=0.1, text_field="body", progress=False))
    val = [d for i, d in enumerate(docs) if i % 10 == 0]
    train = [d for i, d in enumerate(docs) if i % 10 != 0]
    np.testing.assert_array_equal(read_split(tmp_path, "j", "val"), expected_stream(val))
    np.testing.assert_array_equal(read_split(tmp_path, "j", "train"), expected_stream(train))


@pytest.mark.parametrize("fraction, period", [(0.1, 10), (0.25, 4), (0.5, 2), (1 / 3, 3), (0.2, 5)])
def test_validation_selector_picks_every_kth_from_the_first(fraction, period):
    chosen = validation_selector(fraction)
    assert [i for i in range(1000) if chosen(i)] == list(range(0, 1000, period))


def test_prepare_with_worker_processes_equals_single_process(tmp_path):
    inputs, _ = make_corpus(tmp_path)
    prepare(PrepareConfig(inputs, tmp_path / "one", name="toy", shard_tokens=9, progress=False))
    prepare(PrepareConfig(inputs, tmp_path / "two", name="toy", shard_tokens=9, workers=2, progress=False))
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_prepare_replaces_stale_shards(tmp_path):
    inputs, docs = make_corpus(tmp_path)
    prepare(PrepareConfig(inputs, tmp_path / "out", name="toy", shard_tokens=5, progress=False))
    prepare(PrepareConfig(inputs, tmp_path / "out", name="toy", progress=False))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["toy_train_000000.bin"]
    np.testing.assert_array_equal(read_split(tmp_path / "out", "toy", "train"), expected_stream(docs))


def write_bytes(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "name, data, problem",
    [
        ("empty.txt", b"", "input file is empty"),
        ("bad.txt", "héllo".encode() + b" \xff\xfe world", "not valid UTF-8 at byte offset {ff}"),
        (
            "bad.jsonl",
            b'{"text": "ok"}\n{"text": "caf\xc3\xa9 \xff"}\n',
            "not valid UTF-8 at byte offset {ff}",
        ),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": "unterminated}\n', ":2: invalid JSON"),
        ("bad.jsonl", b'{"text": "ok"}\n\n{"body": "x"}\n', ":3: missing text field 'text' (fields: 'body')"),
        ("bad.jsonl", b'{"text": "ok"}\n[1, 2]\n', ":2: expected a JSON object"),
        ("bad.jsonl", b'{"text": 5}\n', ":1: field 'text' is int, not a string"),
        ("bad.csv", b"a,b\n", "unsupported input type '.csv'"),
    ],
)
def test_prepare_input_errors_name_file_and_problem(tmp_path, name, data, problem):
    path = write_bytes(tmp_path, name, data)
    problem = problem.replace("{ff}", str(data.find(b"\xff")))  # offset of the first invalid byte
    with pytest.raises(PrepareError) as info:
        prepare(PrepareConfig([path], tmp_path / "out", progress=False))
    assert str(path) in str(info.value) and problem in str(info.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))


def test_prepare_missing_input(tmp_path):
    with pytest.raises(PrepareError, match=re.escape(str(tmp_path / "gone.txt")) + ": input file not found"):
        prepare(PrepareConfig([tmp_path / "gone.txt"], tmp_path / "out", progress=False))


def test_prepare_empty_corpus(tmp_path):
    with pytest.raises(PrepareError, match="no input files given"):
        prepare(PrepareConfig([], tmp_path / "out", progress=False))
    path = write_bytes(tmp_path, "blank.jsonl", b'{"text": ""}\n\n')
    with pytest.raises(PrepareError, match="no non-empty document"):
        prepare(PrepareConfig([path], tmp_path / "out", progress=False))


def test_interrupted_prepare_leaves_no_valid_looking_shard(tmp_path, monkeypatch):
    inputs, _ = make_corpus(tmp_path)
    out = tmp_path / "out"
    real_write_shard = shards.write_shard
    calls = []

    def write_then_crash(path, tokens, *args):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write_shard(path, tokens, *args)

    monkeypatch.setattr(prepare_module.shards, "write_shard", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig(inputs, out, name="toy", shard_tokens=5, progress=False))
    assert len(calls) == 3
    assert list(out.rglob("*")) == []


def test_error_in_worker_pool_is_reported(tmp_path):
    good = write_bytes(tmp_path, "good.txt", b"fine text")
    bad = write_bytes(tmp_path, "bad.jsonl", b'{"text": "a"}\n{oops\n')
    with pytest.raises(PrepareError, match=re.escape(str(bad)) + ":2: invalid JSON"):
        prepare(PrepareConfig([good, bad], tmp_path / "out", workers=2, progress=False))
    assert list((tmp_path / "out").rglob("*")) == []


def test_cli_prepare_and_errors(tmp_path, capsys):
    inputs, docs = make_corpus(tmp_path)
    out = tmp_path / "out"
    args = ["prepare", *map(str, inputs), "--out", str(out), "--name", "cli", "--workers", "1", "--quiet"]
    assert main(args + ["--val-fraction", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "cli_train_000000.bin" in printed and "cli_val_000000.bin" in printed
    np.testing.assert_array_equal(read_split(out, "cli", "val"), expected_stream(docs[0::2]))
    assert main(["prepare", str(tmp_path / "missing.txt"), "--out", str(out), "--quiet"]) == 1
    assert "missing.txt: input file not found" in capsys.readouterr().err
    assert main(["check", *map(str, sorted(out.glob("*.bin")))]) == 0
    assert os.path.exists(out / "cli_val_000000.bin")
