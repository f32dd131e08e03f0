"""Masks of record #21's attention: causal, inside documents, in block-wise sliding windows.

Tokens are cut into blocks of ``block_size`` (FlexAttention's block, 128 in the record). Documents start at
the EOT token: ``docs[b, t]`` counts the EOTs in ``idx[b, :t + 1]``, so an EOT opens the document it starts.
With ``n`` window blocks, query t may read key s iff

    s <= t   and   docs[b, s] == docs[b, t]   and   t // block_size - s // block_size < max(n, 1),

that is, a query in block j reads the blocks j - n + 1 … j (a window of n blocks, not of n·block_size tokens:
its width in tokens depends on where the query sits in its block). The record's long layers use n blocks, the
short ones n // 2; its FlexAttention masks, which select the nearest full and partial blocks of each query
block, compute exactly this set.

Two implementations of the same function: ``dense_mask`` (a [B, 1, T, T] boolean mask for SDPA; any T) and
``block_mask`` (a FlexAttention ``BlockMask``; T a multiple of the block size). ``window_blocks_at`` is the
record's schedule of the long window over training.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention

# Record #21: the long window grows linearly to 1728 tokens, rounded up to whole 128-token blocks.
RECORD21_MAX_WINDOW = 1728
ATTN_BACKENDS = ("auto", "flex", "sdpa")

Mask = (
    Tensor | BlockMask
)  # a dense boolean mask [B, 1, T, T] (True = may attend) or a FlexAttention BlockMask


def window_blocks_at(
    step: int, total_steps: int, max_tokens: int = RECORD21_MAX_WINDOW, block_size: int = 128
) -> int:
    """The long window, in blocks, at optimizer step ``step`` of ``total_steps`` (record #21's schedule).

    window_tokens = the smallest positive multiple of block_size that is >= max_tokens · step / total_steps;
    the result is window_tokens / block_size: 1 at step 0, 14 at the end for the record's 1728 / 128.
    Exact integer arithmetic (the record's float comparison gives the same value).
    """
    if not (isinstance(step, int) and isinstance(total_steps, int)) or total_steps < 1 or step < 0:
        raise ValueError(
            f"need integers 0 <= step and total_steps >= 1, got step={step!r}, total={total_steps!r}"
        )
    if max_tokens < 1 or block_size < 1:
        raise ValueError(f"max_tokens and block_size must be >= 1, got {max_tokens}, {block_size}")
    return max(1, -(-max_tokens * step // (total_steps * block_size)))


def document_ids(idx: Tensor, eot_token: int) -> Tensor:
    """int32 [B, T]: docs[b, t] = number of ``eot_token`` in idx[b, : t + 1] (a document starts at its EOT)."""
    return (idx == eot_token).cumsum(-1, dtype=torch.int32)


def _min_one(n: int | Tensor) -> int | Tensor:
    return n.clamp_min(1) if isinstance(n, Tensor) else max(int(n), 1)


def dense_mask(docs: Tensor, window_blocks: int | Tensor | None, block_size: int) -> Tensor:
    """bool [B, 1, T, T]: True where query t may read key s (module docstring); no window when None."""
    T = docs.size(-1)
    pos = torch.arange(T, device=docs.device)
    q, k = pos[:, None], pos[None, :]
    allowed = k <= q
    if window_blocks is not None:
        allowed = allowed & (q // block_size - k // block_size < _min_one(window_blocks))
    return (allowed & (docs[:, :, None] == docs[:, None, :]))[:, None]


def block_mask(docs: Tensor, window_blocks: int | Tensor | None, block_size: int) -> BlockMask:
    """The same mask as ``dense_mask``, as a FlexAttention BlockMask built from per-block document ranges.

    Block pair (j, i), i <= j, inside the window is *full* when i < j and both blocks lie in one and the same
    document (every pair of tokens may attend: no mask_mod needed), *partial* when block i holds a token of
    the first document of block j otherwise (the mask_mod — causal, same document, window — decides per token),
    and skipped when no token of i shares a document with a token of j. Only O(T / block_size)² work.
    """
    B, T = docs.shape
    if T % block_size:
        raise ValueError(f"FlexAttention masks need T divisible by the block size {block_size}, got T={T}")
    n = T // block_size
    blocks = docs.view(B, n, block_size)
    first, last = blocks[..., 0], blocks[..., -1]  # [B, n]: documents are non-decreasing along t
    j = torch.arange(n, device=docs.device)[:, None]
    i = torch.arange(n, device=docs.device)[None, :]
    span = _min_one(window_blocks) if window_blocks is not None else n
    window = j - i < span
    single = first == last
    full = (
        (i < j) & window & single[:, :, None] & single[:, None, :] & (first[:, :, None] == first[:, None, :])
    )
    partial = (i <= j) & window & (last[:, None, :] >= first[:, :, None]) & ~full

    def kv_blocks(selected: Tensor) -> tuple[Tensor, Tensor]:
        counts = selected.sum(-1, dtype=torch.int32)[:, None]  # [B, 1, n]
        order = torch.argsort(selected.to(torch.int8), dim=-1, descending=True, stable=True)
        return counts.contiguous(), order.to(torch.int32)[:, None].contiguous()  # [B, 1, n, n]

    def document_causal(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        # The window term repeats the block selection, so that eager flex_attention (which ignores the block
        # lists and applies mask_mod everywhere) computes the same function as the compiled kernel.
        in_window = q_idx // block_size - kv_idx // block_size < span
        return (q_idx >= kv_idx) & (docs[b, q_idx] == docs[b, kv_idx]) & in_window

    return BlockMask.from_kv_blocks(
        *kv_blocks(partial), *kv_blocks(full), BLOCK_SIZE=block_size, mask_mod=document_causal
    )


_compiled_flex = None


def flex(q: Tensor, k: Tensor, v: Tensor, mask: BlockMask, scale: float | None) -> Tensor:
    """flex_attention on [B, H, T, D]; compiled once when called outside torch.compile (eager flex_attention
    materialises the [T, T] scores)."""
    global _compiled_flex
    if torch.compiler.is_compiling():
        return flex_attention(q, k, v, block_mask=mask, scale=scale)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=mask, scale=scale)
