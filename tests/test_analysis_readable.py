"""The frequency filter of token readouts, the activation cache and the two-layer section on small models."""

import numpy as np
import pytest
import torch
from toy_models import random_gpt

from analysis.activations import cached_activations, collect_activations
from analysis.composition import layer_pair_composition
from analysis.spectra import layer_spectra, readout_tables
from analysis.tokens import TokenFrequency, TokenText
from analysis.valdata import token_counts
from data.shards import write_shard
from data.vocab import CompactVocab
from decomp import input_tokens, top_tokens
from model import save_model

VOCAB = CompactVocab(tuple(range(256, 320)))


def test_top_tokens_keep_only_allowed_tokens():
    scores = torch.tensor([5.0, -4.0, 3.0, 1.0, -2.0, 0.5])
    allowed = torch.tensor([False, False, True, True, True, True])
    top = top_tokens(scores, 2, allowed=allowed)
    assert [e.token for e in top.positive] == [2, 3] and [e.token for e in top.negative] == [4, 5]
    assert len(top_tokens(scores, 10, allowed=allowed).positive) == 4  # fewer allowed than asked for


def test_rare_token_with_a_large_embedding_is_filtered_out_of_the_readouts():
    model = random_gpt(seed=7)
    text = TokenText(VOCAB, 64)
    counts = torch.full((64,), 100)
    rare = 13
    counts[rare] = 2
    freq = TokenFrequency(counts, 6400, "the test shards", 20)
    spec_all = layer_spectra(model, 0, [9], text, 64, n_eigen=1, n_top=3)
    v = spec_all.tokens[0].vectors[:, 0]
    with torch.no_grad():  # make the rare token the best match of v through Ê, with a huge raw embedding
        model.w_e[rare] = 50.0 * v.float()
    unfiltered = layer_spectra(model, 0, [9], text, 64, n_eigen=1, n_top=3)
    assert unfiltered.tokens[0].readouts[0].inputs.positive[0].token == rare
    filtered = layer_spectra(model, 0, [9], text, 64, n_eigen=1, n_top=3, allowed=freq.allowed)
    listed = [e.token for r in filtered.tokens[0].readouts for e in r.inputs.positive + r.inputs.negative]
    assert rare not in listed and all(freq.count(t) >= 20 for t in listed)
    # the same readout, computed directly: Ê·v over the allowed tokens
    w_e, _ = readout_tables(model, 64)
    scores = w_e @ filtered.tokens[0].vectors[:, 0]
    scores[~freq.allowed] = -float("inf")
    assert filtered.tokens[0].readouts[0].inputs.positive[0].token == int(scores.argmax())
    note = freq.describe(text, 64)
    assert "63 of 64 tokens" in note and "at least 20 times" in note and f"{text.label(rare)} ×2" in note


def test_token_counts_of_a_shard(tmp_path):
    ids = np.array([256, 256, 257, 300, 300, 300, 50256])  # the EOT is outside this vocabulary
    write_shard(tmp_path / "t_train_000000.bin", ids)
    counts = token_counts([tmp_path / "t_train_000000.bin"], VOCAB, 64, 10_000)
    assert counts[0] == 2 and counts[1] == 1 and counts[44] == 3 and int(counts.sum()) == 6


def test_mean_input_readout_reads_each_tokens_mean_layer_input():
    model = random_gpt(seed=8)
    tokens = torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(9))
    acts = collect_activations(model, tokens, [1], progress=False)
    means, counts = acts.mean_input_by_token(1, 64)
    keep = counts >= 2
    spec = layer_spectra(
        model, 1, [3], TokenText(VOCAB, 64), 64, n_eigen=1, n_top=2, mean_inputs=means, mean_allowed=keep
    )
    v = spec.tokens[0].vectors[:, 0]
    direct = input_tokens(v, means, 2, allowed=keep)
    assert [e.token for e in spec.tokens[0].mean_input_readouts[0].positive] == [
        e.token for e in direct.positive
    ]
    assert all(bool(keep[e.token]) for e in direct.positive + direct.negative)


def test_activation_cache_is_reused_and_invalidated_by_new_weights(tmp_path):
    model = random_gpt(seed=10)
    ckpt = tmp_path / "ckpt"
    save_model(model, ckpt)
    tokens = torch.randint(0, 64, (3, 8), generator=torch.Generator().manual_seed(11))
    first, how1 = cached_activations(model, ckpt, tokens, [0, 1], tmp_path / "cache", progress=False)
    again, how2 = cached_activations(model, ckpt, tokens, [0, 1], tmp_path / "cache", progress=False)
    assert (how1, how2) == ("computed", "cache")
    torch.testing.assert_close(first.xhat[1], again.xhat[1], rtol=0, atol=0)
    torch.testing.assert_close(first.rms[0], again.rms[0], rtol=0, atol=0)
    with torch.no_grad():
        model.w_e.add_(1.0)
    save_model(model, ckpt)
    changed, how3 = cached_activations(model, ckpt, tokens, [0, 1], tmp_path / "cache", progress=False)
    assert how3 == "computed" and not torch.equal(changed.xhat[0], first.xhat[0])
    assert len(list((tmp_path / "cache").glob("activations-*.safetensors"))) == 1  # the stale file is gone


def test_two_layer_polynomial_reproduces_the_next_mlp_without_attention():
    """With block 1's attention switched off, layer 1's MLP output is exactly the per-position polynomial."""
    model = random_gpt(seed=12)
    with torch.no_grad():
        model.blocks[1].attn.c_proj.weight.zero_()
    tokens = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(13))
    acts = collect_activations(model, tokens, [0, 1], progress=False)
    w_e, _ = readout_tables(model, 64)
    comp = layer_pair_composition(model, 0, acts, 3, w_e, None, str, ranks=(4,), als_iters=5)
    assert comp.explained == pytest.approx(1.0, abs=1e-4)  # x̂ is float16-rounded
    assert set(comp.norms) == {3, 4, 5} and all(v > 0 for v in comp.norms.values())
    assert 0 < comp.als[5][0][1] < 1
    with torch.no_grad():  # attention back on: the polynomial no longer explains everything
        model.blocks[1].attn.c_proj.weight.normal_(0, 0.5)
    acts = collect_activations(model, tokens, [0, 1], progress=False)
    assert layer_pair_composition(model, 0, acts, 3, w_e, None, str, ranks=()).explained < 0.999
