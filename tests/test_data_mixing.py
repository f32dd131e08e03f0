"""MixedDataset: exact mix fractions per micro-batch and per prefix, rows from the right corpus, resumable."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from toy_data import write_corpus

from data.loader import DistributedLoader, MixedDataset, TokenDataset
from data.shards import read_shard, write_shard

SEQ = 16
MAIN_IDS = range(1000, 1040)  # write_corpus's ids
MIX_SHIFT = 1000  # the mix corpus is a second toy corpus moved to ids 2000..2039: disjoint from the main one


@pytest.fixture
def corpora(tmp_path) -> tuple[list, list]:
    """(main files, mix files): the toy corpus's train shard (312 windows of 16) and a shifted val shard
    (62 windows, so the mix stream wraps its epochs quickly)."""
    main = write_corpus(tmp_path / "main")["root"] / "syn_train_000000.bin"
    other = write_corpus(tmp_path / "other")["root"] / "syn_val_000000.bin"
    mix = tmp_path / "mix_000000.bin"
    write_shard(mix, np.asarray(read_shard(other)).astype(np.int64) + MIX_SHIFT)
    return [main], [mix]


def datasets(corpora, seed_main=1, seed_mix=2) -> tuple[TokenDataset, TokenDataset]:
    main, mix = corpora
    return TokenDataset(main, SEQ, seed=seed_main), TokenDataset(mix, SEQ, seed=seed_mix)


def reference_rows(main: TokenDataset, mix: TokenDataset, f: Fraction, n: int) -> tuple[torch.Tensor, list]:
    """The first n rows of the mixed stream by the definition, one row at a time: row g is a mix row iff
    floor((g+1)f) > floor(gf); each source is read in its own order through TokenDataset.batch(i, 1)."""
    rows, is_mix, i_main, i_mix = [], [], 0, 0
    for g in range(n):
        take_mix = math.floor((g + 1) * f) - math.floor(g * f) == 1
        if take_mix:
            rows.append(mix.batch(i_mix, 1)[0][0])
            i_mix += 1
        else:
            rows.append(main.batch(i_main, 1)[0][0])
            i_main += 1
        is_mix.append(take_mix)
    return torch.stack(rows), is_mix


FRACTIONS = [0.0, Fraction(1, 3), 0.25, 0.5, 0.1, 0.75]


@pytest.mark.parametrize("frac", FRACTIONS, ids=str)
def test_micro_batch_and_prefix_counts_are_exact(corpora, frac):
    f = Fraction(str(frac))
    ds = MixedDataset(*datasets(corpora), frac)
    b = f.denominator * 2  # f·b = 2·numerator, an integer
    for index in range(25):
        assert int(ds.mix_rows(index, b).sum()) == f * b
    flags = np.concatenate([ds.mix_rows(i, 7) for i in range(40)])  # 7 rows: f·7 is no integer for f ≠ 0
    for n in range(len(flags) + 1):
        assert int(flags[:n].sum()) == math.floor(n * f)


def test_float_fraction_is_read_exactly_from_its_decimal(corpora):
    ds = MixedDataset(*datasets(corpora), 1 / 3)  # 0.3333333333333333 exactly, not the binary float
    flags = np.concatenate([ds.mix_rows(i, 9) for i in range(30)])
    f = Fraction("0.3333333333333333")
    assert [int(flags[:n].sum()) for n in range(271)] == [math.floor(n * f) for n in range(271)]


@pytest.mark.parametrize("frac", [Fraction(1, 3), 0.25, 0.5], ids=str)
def test_rows_come_from_the_right_corpus_in_order(corpora, frac):
    main, mix = datasets(corpora)
    ds = MixedDataset(main, mix, frac)
    b, n_batches = 6, 40  # 240 rows: the mix stream (62 windows) wraps its epoch at least once
    got_x = torch.cat([ds.batch(i, b)[0] for i in range(n_batches)])
    got_y = torch.cat([ds.batch(i, b)[1] for i in range(n_batches)])
    expected, is_mix = reference_rows(main, mix, Fraction(str(frac)), b * n_batches)
    assert torch.equal(got_x, expected)
    assert torch.equal(got_x[:, 1:], got_y[:, :-1])
    flags = np.concatenate([ds.mix_rows(i, b) for i in range(n_batches)])
    assert flags.tolist() == is_mix
    in_mix = torch.isin(got_x, torch.arange(2000, 2040)).all(dim=1)
    in_main = torch.isin(got_x, torch.tensor(list(MAIN_IDS))).all(dim=1)
    assert in_mix.numpy().tolist() == is_mix and (in_main.numpy() == ~flags).all()


def test_zero_fraction_is_the_main_dataset(corpora):
    main, mix = datasets(corpora)
    ds = MixedDataset(main, mix, 0)
    for index in (0, 3, 77):  # 77·8 rows: past the main epoch end (312 windows)
        assert torch.equal(ds.batch(index, 8)[0], main.batch(index, 8)[0])


def test_mix_epochs_wrap_with_a_fresh_order(corpora):
    main, mix = datasets(corpora)
    ds = MixedDataset(main, mix, 0.5)
    rows = torch.cat([ds.batch(i, 8)[0] for i in range(40)])  # 320 rows, 160 mix rows
    mix_rows = rows[torch.from_numpy(np.concatenate([ds.mix_rows(i, 8) for i in range(40)]))]
    n = mix.n_windows  # 62
    all_windows = sorted(tuple(r) for r in mix.batch(0, n)[0].tolist())
    first, second = mix_rows[:n].tolist(), mix_rows[n : 2 * n].tolist()
    assert sorted(map(tuple, first)) == all_windows == sorted(map(tuple, second))
    assert first != second


def test_two_ranks_equal_one_rank_with_accumulation(corpora):
    ds = MixedDataset(*datasets(corpora), 0.25)
    ranks = [DistributedLoader(ds, batch_size=4, rank=r, world_size=2) for r in range(2)]
    single = DistributedLoader(ds, batch_size=4, grad_accum=2)
    for _ in range(30):
        x0, x1 = ranks[0].next_batch()[0], ranks[1].next_batch()[0]
        assert torch.equal(torch.cat([x0, x1]), torch.cat([single.next_batch()[0], single.next_batch()[0]]))
        step_rows = torch.cat([x0, x1])
        assert int(torch.isin(step_rows[:, 0], torch.arange(2000, 2040)).sum()) == 2  # 8 rows · 1/4


def test_loader_resumes_bitwise_mid_run(corpora):
    uninterrupted = DistributedLoader(MixedDataset(*datasets(corpora), 0.3), batch_size=5, grad_accum=3)
    expected = [uninterrupted.next_batch() for _ in range(50)]
    first = DistributedLoader(MixedDataset(*datasets(corpora), 0.3), batch_size=5, grad_accum=3)
    got = [first.next_batch() for _ in range(17)]  # mid-step: micro-step 2 of 3
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = DistributedLoader(MixedDataset(*datasets(corpora), 0.3), batch_size=5, grad_accum=3)
    resumed.load_state_dict(saved)
    got += [resumed.next_batch() for _ in range(33)]
    for (xe, ye), (xg, yg) in zip(expected, got, strict=True):
        assert torch.equal(xe, xg) and torch.equal(ye, yg)


@pytest.mark.parametrize("frac", [1, 1.0, -0.1, float("nan"), float("inf"), "abc", True])
def test_bad_fraction_is_one_line_error(corpora, frac):
    with pytest.raises(ValueError, match=r"mix fraction must") as info:
        MixedDataset(*datasets(corpora), frac)
    assert "\n" not in str(info.value)


def test_seq_len_mismatch_is_refused(corpora):
    main, mix = corpora
    with pytest.raises(ValueError, match="same seq_len.*16.*8"):
        MixedDataset(TokenDataset(main, SEQ), TokenDataset(mix, 8), 0.25)


def test_rows_gathers_arbitrary_positions(corpora):
    main, _ = datasets(corpora)
    positions = np.array([5, 700, 0, 311, 312, 5])  # two epochs (312 windows), unordered, repeated
    x, y = main.rows(positions)
    for k, p in enumerate(positions.tolist()):
        xb, yb = main.batch(p, 1)
        assert torch.equal(x[k], xb[0]) and torch.equal(y[k], yb[0])
