"""Interpolated bigram baseline: the loss any trained model should beat.

    p(b | a) = λ · c(a, b) / c(a) + (1 − λ) · p_uni(b)      when c(a) > 0
    p(b | a) = p_uni(b)                                      when a never precedes a token in training
    p_uni(b) = (n(b) + 1) / (N + vocab_size)                 (add-one smoothed unigram)

c(a, b) counts adjacent pairs, c(a) counts a as the first of a pair, n(b) counts occurrences, N tokens.
λ is picked from `LAMBDA_GRID` on the last `HELD_OUT_FRACTION` of the training tokens with counts from the
rest, then the counts are refit on all training tokens. Counting is sparse (pair keys a·V + b), so the
vocabulary size never enters memory quadratically.
"""

from __future__ import annotations

import numpy as np

LAMBDA_GRID = np.round(np.arange(0.05, 1.0, 0.05), 2)
HELD_OUT_FRACTION = 0.1


class BigramCounts:
    """Sparse bigram and unigram counts of a 1-D token array."""

    def __init__(self, tokens: np.ndarray, vocab_size: int):
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size < 2:
            raise ValueError(f"a bigram model needs at least 2 training tokens, got {tokens.size}")
        if tokens.min() < 0 or tokens.max() >= vocab_size:
            raise ValueError(f"training token ids must lie in [0, {vocab_size})")
        self.vocab_size = vocab_size
        self.n_tokens = tokens.size
        self.unigram = np.bincount(tokens, minlength=vocab_size)
        self.context = np.bincount(tokens[:-1], minlength=vocab_size)
        self.pair_keys, self.pair_counts = np.unique(
            tokens[:-1] * vocab_size + tokens[1:], return_counts=True
        )

    def unigram_prob(self, b: np.ndarray) -> np.ndarray:
        """Add-one smoothed p(b), same shape as `b`."""
        return (self.unigram[b] + 1) / (self.n_tokens + self.vocab_size)

    def pair_count(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """c(a, b) for aligned arrays `a`, `b` (same shape)."""
        keys = a * self.vocab_size + b
        idx = np.searchsorted(self.pair_keys, keys)
        idx_clipped = np.minimum(idx, self.pair_keys.size - 1)
        found = self.pair_keys[idx_clipped] == keys
        return np.where(found, self.pair_counts[idx_clipped], 0)

    def mean_nll(self, tokens: np.ndarray, lam: float | np.ndarray) -> np.ndarray:
        """Mean −log p(tokens[i+1] | tokens[i]) in nats, for one λ or each λ of a 1-D array."""
        tokens = np.asarray(tokens, dtype=np.int64)
        a, b = tokens[:-1], tokens[1:]
        p_uni = self.unigram_prob(b)
        c_a = self.context[a]
        p_bi = self.pair_count(a, b) / np.maximum(c_a, 1)
        has_context = c_a > 0
        lams = np.atleast_1d(np.asarray(lam, dtype=np.float64))
        nll = np.empty(lams.size)
        for i, lam_i in enumerate(lams):
            p = np.where(has_context, lam_i * p_bi + (1.0 - lam_i) * p_uni, p_uni)
            nll[i] = -np.log(p).mean()
        return nll if np.ndim(lam) else nll[0]


def choose_lambda(train_tokens: np.ndarray, vocab_size: int, grid: np.ndarray = LAMBDA_GRID) -> float:
    """The λ of `grid` with the lowest loss on the held-out tail of `train_tokens` (counts from the rest)."""
    train_tokens = np.asarray(train_tokens)
    split = int(round(train_tokens.size * (1.0 - HELD_OUT_FRACTION)))
    if split < 2 or train_tokens.size - split < 2:
        raise ValueError(f"{train_tokens.size} training tokens are too few to hold out a tail for λ")
    losses = BigramCounts(train_tokens[:split], vocab_size).mean_nll(train_tokens[split:], grid)
    return float(grid[int(np.argmin(losses))])


def bigram_baseline(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Validation loss (nats/token) of the interpolated bigram fit on `train_tokens` (1-D id arrays)."""
    val_tokens = np.asarray(val_tokens)
    if val_tokens.size < 2:
        raise ValueError(f"validation needs at least 2 tokens, got {val_tokens.size}")
    if val_tokens.min() < 0 or val_tokens.max() >= vocab_size:
        raise ValueError(f"validation token ids must lie in [0, {vocab_size})")
    lam = choose_lambda(train_tokens, vocab_size)
    return float(BigramCounts(train_tokens, vocab_size).mean_nll(val_tokens, lam))


def unigram_baseline(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Validation loss (nats/token) of the add-one unigram; scored on val_tokens[1:] like the bigram."""
    counts = BigramCounts(train_tokens, vocab_size)
    return float(-np.log(counts.unigram_prob(np.asarray(val_tokens, dtype=np.int64)[1:])).mean())
