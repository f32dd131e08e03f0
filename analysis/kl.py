"""KL divergence of next-token distributions, and the reference logits many KL evaluations compare against.

KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)      p = original model, q = modified model, per position (nats).
"""

from __future__ import annotations

import torch


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per position, [...], from logits [..., vocab] (softmax taken here, in float32 or wider)."""
    logp = torch.log_softmax(logits_p.float(), dim=-1)
    logq = torch.log_softmax(logits_q.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


class ReferenceLogits:
    """The unmodified model's next-token distributions p of a batch, for many KL(p ‖ q) evaluations.

    With d = logits_p − logits_q, KL(p ‖ q) = Σ_v p_v d_v + log Σ_v p_v e^{−d_v}: both terms vanish with d, so
    a small KL does not come out of the cancellation of two O(1) numbers (as with Σ p log p − Σ p log q), and
    each evaluation takes a few passes over [positions, vocab]. The cross-entropy follows from the same sums.
    """

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits.float()
        self.lse = torch.logsumexp(self.logits, dim=-1)  # [B, T]
        self.p = torch.exp(self.logits - self.lse[..., None])
        # log Σ p = 0 up to rounding; formed by the same reduction as below so that KL(p ‖ p) = 0 exactly.
        self.log_p_sum = torch.log(torch.einsum("...v,...v->...", self.p, torch.ones_like(self.p)))

    def kl_and_loss(
        self, logits_q: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(KL(p ‖ q) [B, T], cross-entropy of q against targets y [B, T] or None)."""
        q = logits_q.float()
        d = self.logits - q
        first = torch.einsum("...v,...v->...", self.p, d)
        log_ratio = torch.log(torch.einsum("...v,...v->...", self.p, torch.exp(-d))) - self.log_p_sum
        if not bool(torch.isfinite(log_ratio).all()):  # e^{−d} overflowed: take the direct route
            log_ratio = torch.logsumexp(q, dim=-1) - self.lse
        kl = first + log_ratio
        loss = None if y is None else self.lse + log_ratio - q.gather(-1, y[..., None])[..., 0]
        return kl, loss
