"""Record #21's attention masks and forward pass, re-derived in plain torch for the test_record_* tests.

Written from the record's description (records/track_1_short/2025-01-26_BatchSize/ in modded-nanoGPT), not from
tnt's code: the block lists are built the record's way (nearest full blocks clamped to n - 1, nearest partial
blocks to max(n - #full, 1)), the forward keeps its loop structure (encoder pushes, decoder pops, masks
L S S S L S then reversed, no attention in layer 7, value embeddings 0 1 2 … 0 1 2, logits 30·σ(z/7.5)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def loop_mask(idx: torch.Tensor, eot: int, n_blocks: int | None, block: int) -> torch.Tensor:
    """bool [T, T] from the definition, one pair at a time: causal, same document, block window."""
    T = idx.numel()
    doc, docs = 0, []
    for t in range(T):
        doc += int(idx[t] == eot)
        docs.append(doc)
    allowed = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        for k in range(q + 1):
            near = n_blocks is None or q // block - k // block < max(n_blocks, 1)
            allowed[q, k] = docs[q] == docs[k] and near
    return allowed


def record_block_lists(docs: torch.Tensor, n_blocks: int, block: int):
    """(partial counts, partial indices, full counts, full indices) for one sequence, the record's way."""
    nb = docs.numel() // block
    low, high = docs.view(nb, block)[:, 0], docs.view(nb, block)[:, -1]
    q = torch.arange(nb)[:, None]
    k = torch.arange(nb)[None, :]
    any_doc = (low[:, None] <= high[None, :]) & (high[:, None] >= low[None, :])
    all_doc = (low[:, None] == high[None, :]) & (high[:, None] == low[None, :])
    any_bm, all_bm = (q >= k) & any_doc, (q > k) & all_doc

    def nearest_first(row: torch.Tensor) -> list[int]:  # the selected blocks first, highest index first
        return sorted(range(nb), key=lambda i: (not bool(row[i]), -i))

    def ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dense.sum(-1), torch.tensor([nearest_first(dense[r]) for r in range(nb)])

    partial_n, partial_i = ordered(any_bm & ~all_bm)
    full_n, full_i = ordered(all_bm)
    partial_n = torch.minimum(partial_n, torch.clamp(n_blocks - full_n, min=1))
    full_n = torch.clamp(full_n, max=n_blocks - 1)
    return partial_n, partial_i, full_n, full_i


def expand_block_lists(partial_n, partial_i, full_n, full_i, mask_fn, T: int, block: int) -> torch.Tensor:
    """bool [T, T] a block-sparse kernel computes: mask_fn on the listed partial blocks, all of a full block."""
    allowed = torch.zeros(T, T, dtype=torch.bool)
    pos = torch.arange(block)
    for j in range(T // block):
        rows = j * block + pos
        for count, indices, is_full in ((partial_n, partial_i, False), (full_n, full_i, True)):
            for i in indices[j, : max(int(count[j]), 0)].tolist():
                cols = i * block + pos
                block_mask = torch.ones(block, block, dtype=torch.bool) if is_full else mask_fn(rows, cols)
                allowed[rows[:, None], cols[None, :]] |= block_mask
    return allowed


def record_mask(idx: torch.Tensor, eot: int, n_blocks: int, block: int) -> torch.Tensor:
    """bool [T, T] of the record's FlexAttention mask for one sequence with n_blocks window blocks."""
    docs = (idx == eot).cumsum(0)

    def document_causal(rows, cols):
        return (rows[:, None] >= cols[None, :]) & (docs[rows][:, None] == docs[cols][None, :])

    lists = record_block_lists(docs, n_blocks, block)
    return expand_block_lists(*lists, document_causal, idx.numel(), block)


def _rotary(x: torch.Tensor, base: float) -> torch.Tensor:
    """Half-truncated RoPE on [T, H, D]: D/4 frequencies (1/base)^linspace(0, 1), D/4 zeros."""
    T, D = x.shape[0], x.shape[-1]
    freq = (1 / base) ** torch.linspace(0, 1, steps=D // 4)
    freq = torch.cat([freq, torch.zeros(D // 4)])
    theta = torch.arange(T, dtype=torch.float32)[:, None] * freq[None, :]
    cos, sin = theta.cos()[:, None, :], theta.sin()[:, None, :]
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat((x1 * cos + x2 * sin, -x1 * sin + x2 * cos), dim=-1)


def record_forward(p: dict, idx: torch.Tensor, n_head: int, n_blocks: int, block: int, eot: int, base: float):
    """Record #21's logits 30·σ(z/7.5) [T, vocab] for one sequence idx [T], from tnt-named weights ``p``."""

    def norm(x):
        return F.rms_norm(x, (x.size(-1),))

    L = sum(1 for name in p if name.endswith("mlp.c_fc.weight"))
    d = p["wte.weight"].shape[1]
    T, D = idx.numel(), d // n_head
    long_mask = record_mask(idx, eot, n_blocks, block)
    short_mask = record_mask(idx, eot, n_blocks // 2, block)
    enc_masks = [long_mask, short_mask, short_mask, short_mask, long_mask, short_mask]
    layer_masks = enc_masks + enc_masks[::-1]
    ve = [p[f"value_embeds.{j}.weight"][idx] for j in range(3)]
    layer_ve = ve + [None] * (L - 6) + ve

    x = x0 = norm(p["wte.weight"][idx])
    skips = []
    for i in range(L):
        pre = f"blocks.{i}."
        if i >= L // 2:
            x = x + p["skip_weights"][i - L // 2] * skips.pop()
        lam = p[pre + "lambdas"]
        x = lam[0] * x + lam[1] * x0
        if i != 7:
            h = norm(x)
            qkv = (h @ p[pre + "attn.c_qkv.weight"].T).view(T, 3 * n_head, D)
            q, k, v = qkv[:, :n_head], qkv[:, n_head : 2 * n_head], qkv[:, 2 * n_head :]
            q, k = _rotary(norm(q), base), _rotary(norm(k), base)
            mu = p[pre + "attn.ve_lambdas"]
            v = mu[0] * v + mu[1] * layer_ve[i].view(T, n_head, D) if layer_ve[i] is not None else mu[0] * v
            scores = torch.einsum("qhd,khd->hqk", q, k) * 0.12
            weights = scores.masked_fill(~layer_masks[i], float("-inf")).softmax(-1)
            y = torch.einsum("hqk,khd->qhd", weights, v).reshape(T, d)
            x = x + y @ p[pre + "attn.c_proj.weight"].T
        h = norm(x)
        x = x + torch.relu(h @ p[pre + "mlp.c_fc.weight"].T).square() @ p[pre + "mlp.c_proj.weight"].T
        if i < L // 2:
            skips.append(x)
    logits = norm(x) @ p["lm_head.weight"].T
    return 30 * torch.sigmoid(logits / 7.5)
