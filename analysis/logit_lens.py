"""Logit lens: read the residual stream after each sublayer through the final norm and the unembedding.

lens_ℓ(x) = model.unembed(resid_ℓ) = softcap(W_U N_f(resid_ℓ)); the last lens point (the residual after the
last block) gives exactly the model's logits. Lens points: the embedding (``blocks.0.hook_resid_pre``), then
for each block i the stream after its attention (``blocks.{i}.hook_resid_mid``) and after its MLP
(``blocks.{i}.hook_resid_post``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from analysis.kl import ReferenceLogits
from analysis.valdata import ValTokens
from model import GPT
from model.hooks import get_act_name


def lens_points(model: GPT) -> list[tuple[str, str]]:
    """[(label, hook name)] in forward order: 'embed', '0 attn', '0 mlp', '1 attn', …"""
    points = [("embed", get_act_name("resid_pre", 0))]
    for i in range(model.config.n_layer):
        points += [(f"{i} attn", get_act_name("resid_mid", i)), (f"{i} mlp", get_act_name("resid_post", i))]
    return points


@dataclass
class LogitLens:
    """labels [n]; loss [n] mean cross-entropy (nats) of the lens prediction vs the true next token;
    loss_by_position [n, T]; kl_to_final [n] mean KL(model ‖ lens); for the example sequence:
    top1 [n, T] (argmax model ids), p_true [n, T] (probability of the true next token), example_x [T]."""

    labels: list[str]
    loss: torch.Tensor
    loss_by_position: torch.Tensor
    kl_to_final: torch.Tensor
    top1: torch.Tensor
    p_true: torch.Tensor
    example_x: torch.Tensor


def lens_logits(model: GPT, cache: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Logits [B, T, vocab] of every lens point from a cache that holds the lens hooks."""
    return [model.unembed(cache[name]) for _, name in lens_points(model)]


def logit_lens(
    model: GPT, val: ValTokens, batch_size: int = 8, n_valid: int | None = None, example: int = 1
) -> LogitLens:
    """Logit lens over ``val``. The example is sequence ``example`` (the first window often holds a title page;
    clamped to the last); n_valid: the example's argmax skips padding rows."""
    example = min(example, val.x.shape[0] - 1)
    points = lens_points(model)
    names = [n for _, n in points]
    n, T = len(points), val.x.shape[1]
    loss_pos = torch.zeros(n, T, dtype=torch.float64)
    kl = torch.zeros(n, dtype=torch.float64)
    n_seq = 0
    top1 = p_true = None
    top1 = torch.zeros(n, T, dtype=torch.long)
    p_true = torch.zeros(n, T)
    with torch.inference_mode():
        for start, (x, y) in zip(range(0, val.x.shape[0], batch_size), val.batches(batch_size), strict=True):
            final, cache = model.run_with_cache(x, names_filter=names)
            ref = ReferenceLogits(final)
            for j, (_, name) in enumerate(points):
                logits = model.unembed(cache[name]).float()
                ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
                loss_pos[j] += ce.double().sum(0)
                kl[j] += float(ref.kl_and_loss(logits)[0].sum())
                if start <= example < start + x.shape[0]:
                    e = example - start
                    probs = logits[e].softmax(-1)
                    top1[j] = probs[:, :n_valid].argmax(-1)
                    p_true[j] = probs.gather(-1, y[e][:, None])[:, 0]
            n_seq += x.shape[0]
    loss_by_position = loss_pos / n_seq
    return LogitLens(
        [label for label, _ in points],
        loss_by_position.mean(1),
        loss_by_position,
        kl / (n_seq * T),
        top1,
        p_true,
        val.x[example],
    )
