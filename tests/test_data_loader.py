"""TokenDataset / DistributedLoader / iter_val_batches: the data contract the trainer relies on."""

import json

import numpy as np
import pytest
import torch

from data.loader import (
    DistributedLoader,
    TokenDataset,
    count_utf8_bytes,
    iter_val_batches,
    val_bytes_per_token,
)
from data.shards import write_shard
from data.tokenizer import EOT_ID, get_encoding

SEQ = 16


@pytest.fixture
def position_shards(tmp_path) -> tuple[list, np.ndarray]:
    """Three shards of odd sizes; token i of the concatenation is i, so a window shows its start."""
    stream = np.arange(1000)
    cuts = [0, 333, 334, 1000]  # the 1-token middle shard forces windows across two boundaries
    files = []
    for k in range(3):
        files.append(tmp_path / f"pos_{k}.bin")
        write_shard(files[-1], stream[cuts[k] : cuts[k + 1]])
    return files, stream


@pytest.fixture
def document_shards(tmp_path) -> tuple[list, np.ndarray]:
    """Documents of random lengths (1..40 tokens), each preceded by EOT, split over two shards."""
    rng = np.random.default_rng(1)
    pieces = [np.r_[EOT_ID, rng.integers(0, 50000, rng.integers(1, 41))] for _ in range(80)]
    stream = np.concatenate(pieces)
    files = [tmp_path / "doc_0.bin", tmp_path / "doc_1.bin"]
    write_shard(files[0], stream[:700])
    write_shard(files[1], stream[700:])
    return files, stream


def starts_of(x: torch.Tensor) -> list[int]:
    return x[:, 0].tolist()


def test_batch_rows_are_stream_windows(position_shards):
    files, stream = position_shards
    ds = TokenDataset(files, SEQ, seed=3)
    assert ds.n_windows == (len(stream) - 1) // SEQ
    for index in range(5):
        x, y = ds.batch(index, 7)
        assert x.shape == y.shape == (7, SEQ) and x.dtype == y.dtype == torch.int64
        for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
            s = row_x[0]
            assert s % SEQ == 0
            np.testing.assert_array_equal(row_x, stream[s : s + SEQ])
            np.testing.assert_array_equal(row_y, stream[s + 1 : s + SEQ + 1])


def test_each_epoch_visits_every_window_once(position_shards):
    files, stream = position_shards
    ds = TokenDataset(files, SEQ, seed=0)
    n = ds.n_windows  # 62 windows; batches of 4 cross the epoch boundary at window 62
    seen = np.concatenate([starts_of(ds.batch(i, 4)[0]) for i in range(2 * n // 4 + 1)])
    expected = sorted(range(0, n * SEQ, SEQ))
    assert sorted(seen[:n]) == expected
    assert sorted(seen[n : 2 * n]) == expected
    assert list(seen[:n]) != list(seen[n : 2 * n])  # a fresh order each epoch


def test_same_seed_same_batches_other_seed_other_batches(position_shards):
    files, _ = position_shards
    a, b, c = (
        TokenDataset(files, SEQ, seed=1),
        TokenDataset(files, SEQ, seed=1),
        TokenDataset(files, SEQ, seed=2),
    )
    for i in [0, 3, 40, 7]:  # random access, in any order
        torch.testing.assert_close(a.batch(i, 5), b.batch(i, 5))
    assert not torch.equal(a.batch(0, 5)[0], c.batch(0, 5)[0])


def test_batch_is_pure_function_of_index(position_shards):
    files, _ = position_shards
    ds = TokenDataset(files, SEQ, seed=5)
    first = ds.batch(30, 3)
    for i in range(60):
        ds.batch(i, 3)
    torch.testing.assert_close(ds.batch(30, 3), first)


def test_too_little_data_is_an_error(tmp_path):
    write_shard(tmp_path / "tiny.bin", np.arange(SEQ))
    with pytest.raises(ValueError, match=r"tiny\.bin.*16 tokens hold no window of 17 tokens"):
        TokenDataset([tmp_path / "tiny.bin"], SEQ)
    write_shard(tmp_path / "ok.bin", np.arange(SEQ + 1))
    assert TokenDataset([tmp_path / "ok.bin"], SEQ).n_windows == 1
    with pytest.raises(ValueError, match="no EOT-aligned window"):
        TokenDataset([tmp_path / "ok.bin"], SEQ, bos_aligned=True)
    with pytest.raises(ValueError, match="no shard files"):
        TokenDataset([], SEQ)


def test_loader_resumes_exactly(position_shards):
    files, _ = position_shards
    ds = TokenDataset(files, SEQ, seed=9)
    uninterrupted = DistributedLoader(ds, batch_size=3, grad_accum=3)
    expected = [uninterrupted.next_batch() for _ in range(20)]

    first = DistributedLoader(ds, batch_size=3, grad_accum=3)
    got = [first.next_batch() for _ in range(7)]  # stops mid-step (micro-step 1 of 3)
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = DistributedLoader(TokenDataset(files, SEQ, seed=9), batch_size=3, grad_accum=3)
    resumed.load_state_dict(saved)
    got += [next(resumed) for _ in range(13)]
    for (xe, ye), (xg, yg) in zip(expected, got, strict=True):
        assert torch.equal(xe, xg) and torch.equal(ye, yg)


def test_loader_index_formula(position_shards):
    files, _ = position_shards
    ds = TokenDataset(files, SEQ, seed=4)
    loader = DistributedLoader(ds, batch_size=2, rank=1, world_size=3, grad_accum=2)
    for s in range(3):
        for a in range(2):
            assert torch.equal(loader.next_batch()[0], ds.batch(s * 6 + a * 3 + 1, 2)[0])


def test_two_ranks_equal_one_rank_with_accumulation(position_shards):
    files, _ = position_shards
    ds = TokenDataset(files, SEQ, seed=11)
    ranks = [DistributedLoader(ds, batch_size=4, rank=r, world_size=2) for r in range(2)]
    single = DistributedLoader(ds, batch_size=4, grad_accum=2)
    for _ in range(10):  # crosses the epoch boundary at 62 windows
        x0, x1 = ranks[0].next_batch()[0], ranks[1].next_batch()[0]
        if ranks[0].step <= 62 // 8:  # within one epoch, ranks read disjoint windows
            assert not set(starts_of(x0)) & set(starts_of(x1))
        assert torch.equal(torch.cat([x0, x1]), torch.cat([single.next_batch()[0], single.next_batch()[0]]))
    assert ranks[0].step == single.step == 10


def test_resume_across_geometry_change_at_step_boundary(position_shards):
    files, _ = position_shards
    ds = TokenDataset(files, SEQ)
    two = [DistributedLoader(ds, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        for loader in two:
            loader.next_batch()
    single = DistributedLoader(ds, batch_size=2, grad_accum=2)
    single.load_state_dict(two[0].state_dict())
    x0, x1 = two[0].next_batch()[0], two[1].next_batch()[0]
    assert torch.equal(torch.cat([single.next_batch()[0], single.next_batch()[0]]), torch.cat([x0, x1]))
    single.next_batch()  # now mid-step: its state cannot become a 2-rank state
    with pytest.raises(ValueError, match="cannot resume"):
        DistributedLoader(ds, batch_size=2, world_size=2).load_state_dict(single.state_dict())
    with pytest.raises(ValueError, match="batch_size"):
        DistributedLoader(ds, batch_size=3, grad_accum=2).load_state_dict(single.state_dict())


def reference_bos_starts(stream: np.ndarray, seq: int) -> list[int]:
    """Greedy non-overlapping EOT-aligned windows, by brute force over positions."""
    starts, pos = [], 0
    while pos + seq + 1 <= len(stream):
        if stream[pos] == EOT_ID:
            starts.append(pos)
            pos += seq
        else:
            pos += 1
    return starts


def test_bos_aligned_windows(document_shards):
    files, stream = document_shards
    ds = TokenDataset(files, SEQ, seed=2, bos_aligned=True)
    expected_starts = reference_bos_starts(stream, SEQ)
    assert ds.n_windows == len(expected_starts) > 20
    rows = [ds.batch(i, 5) for i in range(ds.n_windows // 5)]
    x = torch.cat([r[0] for r in rows])
    y = torch.cat([r[1] for r in rows])
    assert (x[:, 0] == EOT_ID).all()
    assert torch.equal(x[:, 1:], y[:, :-1])
    windows = {tuple(stream[s : s + SEQ + 1]) for s in expected_starts}
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        assert tuple(np.r_[row_x, row_y[-1]]) in windows


def test_val_batches_in_order_and_budget(position_shards):
    files, stream = position_shards
    batches = list(iter_val_batches(files, batch_size=4, seq_len=SEQ, max_tokens=10 * SEQ + 5))
    assert [b[0].shape for b in batches] == [(4, SEQ), (4, SEQ)]  # 10 windows floored to 2 batches of 4
    x = torch.cat([b[0] for b in batches]).numpy()
    y = torch.cat([b[1] for b in batches]).numpy()
    np.testing.assert_array_equal(x.ravel(), stream[: 8 * SEQ])
    np.testing.assert_array_equal(y.ravel(), stream[1 : 8 * SEQ + 1])

    everything = list(iter_val_batches(files, batch_size=4, seq_len=SEQ))
    assert len(everything) == ((len(stream) - 1) // SEQ) // 4

    small = list(iter_val_batches(files, batch_size=8, seq_len=SEQ, max_tokens=3 * SEQ))
    assert [b[0].shape for b in small] == [(3, SEQ)]  # less than one batch: one smaller batch, never nothing
    with pytest.raises(ValueError, match="less than one window"):
        list(iter_val_batches(files, batch_size=8, seq_len=SEQ, max_tokens=SEQ - 1))


def test_val_ranks_split_disjointly(position_shards):
    files, _ = position_shards
    one = list(iter_val_batches(files, batch_size=6, seq_len=SEQ, max_tokens=40 * SEQ))
    per_rank = [list(iter_val_batches(files, 3, SEQ, 40 * SEQ, rank=r, world_size=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == len(one) == 6
    for (x, _), (x0, _), (x1, _) in zip(one, per_rank[0], per_rank[1], strict=True):
        assert torch.equal(x, torch.cat([x0, x1]))
    tiny = [list(iter_val_batches(files, 8, SEQ, 5 * SEQ, rank=r, world_size=2)) for r in range(2)]
    assert [b[0][0].shape for b in tiny] == [(2, SEQ), (2, SEQ)]
    assert not set(starts_of(tiny[0][0][0])) & set(starts_of(tiny[1][0][0]))


def test_val_bytes_per_token(tmp_path):
    enc = get_encoding()
    text = "Validation text with accents (café) and CJK 東京 repeated. " * 30
    tokens = np.r_[EOT_ID, enc.encode_ordinary(text), EOT_ID, enc.encode_ordinary("second doc")]
    write_shard(tmp_path / "v.bin", tokens)
    ys = [y for _, y in iter_val_batches([tmp_path / "v.bin"], 2, SEQ)]
    targets = torch.cat(ys).ravel().tolist()
    expected = len(enc.decode_bytes([t for t in targets if t != EOT_ID])) / len(targets)
    assert count_utf8_bytes(torch.cat(ys)) / len(targets) == pytest.approx(expected)
    assert val_bytes_per_token([tmp_path / "v.bin"], 2, SEQ) == pytest.approx(expected)
