"""Record #21's attention: document masks, block windows and their schedule; FlexAttention against SDPA.

References: the mask from its definition pair by pair, the record's own block lists (record21_reference), and
the record's window formula as written.
"""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from record21_reference import expand_block_lists, loop_mask, record_mask
from torch.nn.attention.flex_attention import flex_attention

from model import attention
from model.attention import block_mask, dense_mask, document_ids, window_blocks_at

EOT = 5
BLOCK = 8


def tokens_with_documents(T: int, seed: int, batch: int = 1) -> torch.Tensor:
    """Random tokens in [0, 40) with EOTs at random places (documents of 1 to ~2 blocks), [batch, T]."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 40, (batch, T), generator=g)
    idx[idx == EOT] = 0
    idx[torch.rand(batch, T, generator=g) < 0.07] = EOT
    return idx


def record_window_size(step: int, total: int, max_tokens: int = 1728, n: int = 128) -> int:
    """The record's window in tokens: next_multiple_of_n(max_tokens * step / total, n=128), as it is written."""
    v = max_tokens * step / total
    return next(x for x in range(n, int(v) + 1 + n, n) if x >= v)


@pytest.mark.parametrize("total", [1770, 1000, 7])
def test_window_schedule_matches_the_record_formula(total):
    got = [window_blocks_at(step, total) for step in range(total + 1)]
    assert got == [record_window_size(step, total) // 128 for step in range(total + 1)]
    assert got[0] == 1 and got[-1] == 14  # 128 tokens at the start, 1792 = 14 blocks at the end
    assert all(a <= b for a, b in zip(got, got[1:], strict=False))


def test_window_schedule_other_sizes_and_bad_input():
    for step in range(0, 51):
        assert (
            window_blocks_at(step, 50, max_tokens=100, block_size=16)
            == record_window_size(step, 50, 100, 16) // 16
        )
    for bad in [(-1, 10), (3, 0), (1.5, 10)]:
        with pytest.raises(ValueError, match="step"):
            window_blocks_at(*bad)


def test_document_ids_count_eots_up_to_and_including_each_position():
    idx = torch.tensor([[1, EOT, 2, 3, EOT, EOT, 4]])
    assert document_ids(idx, EOT).tolist() == [[0, 1, 1, 1, 2, 3, 3]]


@pytest.mark.parametrize("n_blocks", [None, 0, 1, 2, 3, 100])
def test_dense_mask_equals_the_definition(n_blocks):
    idx = tokens_with_documents(48, seed=n_blocks or 0, batch=2)
    got = dense_mask(document_ids(idx, EOT), n_blocks, BLOCK)
    assert got.shape == (2, 1, 48, 48)
    for b in range(2):
        assert torch.equal(got[b, 0], loop_mask(idx[b], EOT, n_blocks, BLOCK))


@pytest.mark.parametrize("n_blocks", [1, 2, 3, 5])
def test_record_flex_masks_select_the_same_pairs_as_the_definition(n_blocks):
    """The record's FlexAttention masks (nearest full / partial blocks, clamped) are the block-window mask."""
    for seed in range(3):
        idx = tokens_with_documents(64, seed)[0]
        assert torch.equal(record_mask(idx, EOT, n_blocks, BLOCK), loop_mask(idx, EOT, n_blocks, BLOCK))
    # the record's short window at the first steps is 1 // 2 = 0 blocks: the diagonal block only, as 1 block
    idx = tokens_with_documents(64, seed=9)[0]
    assert torch.equal(record_mask(idx, EOT, 0, BLOCK), loop_mask(idx, EOT, 1, BLOCK))


def expand(bm, T: int) -> torch.Tensor:
    """The [B, T, T] pairs a block-sparse kernel visits with ``bm``: mask_mod on partial blocks, full blocks whole."""
    out = []
    for b in range(bm.kv_num_blocks.shape[0]):

        def mask_fn(rows, cols, b=b):
            zero = torch.zeros((), dtype=torch.int64)
            return bm.mask_mod(torch.tensor(b), zero, rows[:, None], cols[None, :])

        lists = (
            bm.kv_num_blocks[b, 0],
            bm.kv_indices[b, 0],
            bm.full_kv_num_blocks[b, 0],
            bm.full_kv_indices[b, 0],
        )
        out.append(expand_block_lists(*lists, mask_fn, T, BLOCK))
    return torch.stack(out)


@pytest.mark.parametrize("n_blocks", [None, 1, 2, 4])
def test_block_mask_lists_visit_exactly_the_allowed_pairs(n_blocks):
    idx = tokens_with_documents(64, seed=3, batch=2)
    window = None if n_blocks is None else torch.tensor(n_blocks, dtype=torch.int32)
    bm = block_mask(document_ids(idx, EOT), window, BLOCK)
    got = expand(bm, 64)
    for b in range(2):
        assert torch.equal(got[b], loop_mask(idx[b], EOT, n_blocks, BLOCK))


def test_block_mask_refuses_a_length_that_is_not_whole_blocks():
    with pytest.raises(ValueError, match="divisible by the block size 8"):
        block_mask(torch.zeros(1, 20, dtype=torch.int32), 2, BLOCK)


def sdpa_reference(q, k, v, allowed, scale):
    """softmax(scale·qkᵀ) v over the allowed pairs, written out."""
    scores = (q @ k.transpose(-1, -2)) * scale
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("n_blocks", [1, 3])
def test_flex_attention_eager_equals_masked_softmax(n_blocks):
    idx = tokens_with_documents(64, seed=5, batch=2)
    docs = document_ids(idx, EOT)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 64, 8, generator=g) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is unfused
        y = flex_attention(q, k, v, block_mask=block_mask(docs, torch.tensor(n_blocks), BLOCK), scale=0.12)
    allowed = torch.stack([loop_mask(idx[b], EOT, n_blocks, BLOCK) for b in range(2)])[:, None]
    torch.testing.assert_close(y, sdpa_reference(q, k, v, allowed, 0.12), atol=1e-5, rtol=1e-5)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(docs, n_blocks, BLOCK), scale=0.12)
    torch.testing.assert_close(sdpa, y, atol=1e-5, rtol=1e-5)


def test_compiled_flex_attention_on_cpu_equals_the_sdpa_mask_path():
    """The fused kernel (block lists honoured) against SDPA with the dense mask; one compile, two windows."""
    idx = tokens_with_documents(128, seed=6, batch=2)
    docs = document_ids(idx, EOT)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 128, 16, generator=g) for _ in range(3))
    compiled = torch.compile(flex_attention, dynamic=False)
    for n_blocks in (2, 5):
        window = torch.tensor(n_blocks, dtype=torch.int32)
        try:
            y = compiled(q, k, v, block_mask=block_mask(docs, window, BLOCK), scale=0.12)
        except Exception as e:  # noqa: BLE001 - a torch without CPU FlexAttention kernels
            pytest.skip(f"flex_attention does not compile on this CPU/torch: {type(e).__name__}: {e}"[:200])
        expected = F.scaled_dot_product_attention(
            q, k, v, attn_mask=dense_mask(docs, window, BLOCK), scale=0.12
        )
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_flex_wrapper_compiles_outside_torch_compile(monkeypatch):
    """model.attention.flex never runs flex_attention eagerly (eager ignores the block lists)."""
    calls, real_compile = [], torch.compile

    def fake_compile(fn, **kw):
        if fn is not flex_attention:  # eager flex_attention compiles its own helpers
            return real_compile(fn, **kw)
        calls.append(kw)
        return fn

    monkeypatch.setattr(attention, "_compiled_flex", None)
    monkeypatch.setattr(torch, "compile", fake_compile)
    idx = tokens_with_documents(16, seed=0)
    q = torch.randn(1, 1, 16, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attention.flex(q, q, q, block_mask(document_ids(idx, EOT), 1, BLOCK), None)
    assert calls == [{"dynamic": False}]


@pytest.mark.gpu
def test_flex_attention_on_cuda_equals_sdpa_forward_and_backward():
    idx = tokens_with_documents(1024, seed=7, batch=1).cuda()
    idx[:, ::300] = EOT
    docs = document_ids(idx, EOT)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 6, 1024, 128, device="cuda", generator=g, requires_grad=True) for _ in range(3))
    window = torch.tensor(3, dtype=torch.int32, device="cuda")
    y = attention.flex(q, k, v, block_mask(docs, window, 128), 0.12)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(docs, window, 128), scale=0.12)
    torch.testing.assert_close(y, ref, atol=2e-3, rtol=2e-3)
    grads = torch.autograd.grad(y.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=5e-3)
    assert math.isfinite(y.sum().item())
