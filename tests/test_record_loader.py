"""SequentialDataset: record #21's data order, against the record's generator written out in the test."""

import numpy as np
import pytest

from data.loader import DistributedLoader, LoaderError, SequentialDataset
from data.shards import write_shard

SIZES = [100, 37, 250, 17]  # 17 tokens: too short for one step of 16 (+ 2), skipped


@pytest.fixture
def shards(tmp_path):
    """Shards whose tokens are all distinct: shard k holds 1000·k + 0, 1, 2, …"""
    files = []
    for k, n in enumerate(SIZES):
        files.append(tmp_path / f"train_{k}.bin")
        write_shard(files[-1], 1000 * k + np.arange(n))
    return files


def record_generator(sizes, batch_size: int, rank: int, world_size: int):
    """The record's distributed_data_generator over shards of ``sizes`` (the token-numbering of ``shards``),
    one epoch: per step, rank r reads tokens[pos + r·L :][: L + 1]; a shard is left when pos + S + 1 >= n."""
    local = batch_size // world_size
    for k, n in enumerate(sizes):
        tokens, pos = 1000 * k + np.arange(n), 0
        while pos + batch_size + 1 < n:
            buf = tokens[pos + rank * local :][: local + 1]
            yield buf[:-1], buf[1:]
            pos += batch_size


@pytest.mark.parametrize("world", [1, 2, 4])
def test_each_rank_reads_what_the_records_generator_gives_it(shards, world):
    seq = 16 // world
    ds = SequentialDataset(shards, seq_len=seq, batch_tokens=16)
    for rank in range(world):
        expected = list(record_generator(SIZES, 16, rank, world))
        loader = DistributedLoader(ds, batch_size=1, rank=rank, world_size=world)
        assert len(expected) == ds.steps_per_epoch
        for x_ref, y_ref in expected:
            x, y = loader.next_batch()
            assert x.tolist() == [x_ref.tolist()] and y.tolist() == [y_ref.tolist()]


def test_every_token_is_an_input_at_most_once_per_epoch(shards):
    ds = SequentialDataset(shards, seq_len=4, batch_tokens=16)
    loader = DistributedLoader(ds, batch_size=2, grad_accum=2)
    seen = []
    for _ in range(ds.steps_per_epoch * 2):
        x, y = loader.next_batch()
        assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()  # next tokens of one shard
        seen.extend(x.flatten().tolist())
    assert len(set(seen)) == len(seen) == ds.tokens_per_epoch  # one epoch: no token twice
    assert loader.step == ds.steps_per_epoch
    second = [loader.next_batch()[0].flatten().tolist() for _ in range(2)]  # epoch 2 starts over at token 0
    assert second == [list(range(8)), list(range(8, 16))]
    assert ds.epoch_of(ds.steps_per_epoch * 2 - 1, 2) == 0 and ds.epoch_of(ds.steps_per_epoch * 2, 2) == 1
    brute = sum(max(0, len(range(0, n - 16 - 1, 16))) for n in SIZES)
    assert ds.steps_per_epoch == brute == 6 + 2 + 15 + 0
    assert ds.tokens_per_epoch == 16 * brute and ds.n_tokens == sum(SIZES)


def test_one_rank_with_accumulation_reads_what_two_ranks_read(shards):
    ds = SequentialDataset(shards, seq_len=4, batch_tokens=16)
    one = DistributedLoader(ds, batch_size=2, world_size=1, grad_accum=2)
    two = [DistributedLoader(ds, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(ds.steps_per_epoch + 3):
        single = [one.next_batch()[0] for _ in range(2)]
        split = [loader.next_batch()[0] for loader in two]
        assert [b.tolist() for b in single] == [b.tolist() for b in split]


def test_resume_is_exact_and_may_change_the_split_at_a_step_boundary(shards):
    ds = SequentialDataset(shards, seq_len=4, batch_tokens=16)
    run = DistributedLoader(ds, batch_size=2, grad_accum=2)
    for _ in range(2 * 7 + 1):
        run.next_batch()
    resumed = DistributedLoader(ds, batch_size=2, grad_accum=2)
    resumed.load_state_dict(run.state_dict())
    for _ in range(5):
        assert run.next_batch()[0].tolist() == resumed.next_batch()[0].tolist()
    assert run.micro_step == 0  # 20 micro-batches: a step boundary, where 2 ranks × 1 may take over
    ranks = [DistributedLoader(ds, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for loader in ranks:
        loader.load_state_dict(run.state_dict())
    assert [run.next_batch()[0].tolist() for _ in range(2)] == [r.next_batch()[0].tolist() for r in ranks]


def test_budget_line_reports_available_per_epoch_and_trained(shards):
    ds = SequentialDataset(shards, seq_len=4, batch_tokens=16)
    line = ds.budget(46)
    assert "404 tokens in 4 shard(s)" in line and "368 per epoch (23 steps of 16)" in line
    assert "46 steps train 736 tokens = 2.000 epochs" in line


def test_bad_geometry_is_refused(shards):
    with pytest.raises(LoaderError, match="positive multiple"):
        SequentialDataset(shards, seq_len=5, batch_tokens=16)
    ds = SequentialDataset(shards, seq_len=4, batch_tokens=16)
    with pytest.raises(LoaderError, match="do not tile a step of 16 tokens"):
        ds.batch(0, 3)
    with pytest.raises(LoaderError, match="no shard holds one step of 1002 tokens"):
        SequentialDataset(shards, seq_len=4, batch_tokens=1000)
