"""Top-k eigen-truncation judged on data: explained variance of u·MLP, and KL of a per-output-token truncation.

For an output direction u (a token's g_f ⊙ W_U row) and a bilinear layer with Q(u) = Σ_i λ_i v_i v_iᵀ, the
layer's contribution at position p is y_p = u·MLP(N(x_p)) = Σ_i λ_i (v_i·x̂_p)². Keeping the top-k |λ| gives
y_p^(k), and the *data-weighted* truncation curve is the explained variance over validation positions

    EV(k) = 1 − Var_p(y_p − y_p^(k)) / Var_p(y_p)          (sklearn's explained_variance_score),

next to the weight-only curve ‖Q − Q_k‖_F / ‖Q‖_F: a direction with a large eigenvalue that data never visits
explains no variance.

Per-output-token truncation (direct path). Every output token t of a set S keeps, in this layer's direct
contribution to its own logit, only the top-k eigencomponents of Q(u_t): with the rest of the network and the
final norm's scale r_f = rms of the final residual left as they are,

    logit_t ← logit_t + (y_t^(k) − y_t) / r_f      for t ∈ S        (before the soft-cap, if any),

and the KL(original ‖ modified) is averaged over positions, next to a noise floor that perturbs the same logits
by a random vector of the same norm at each position. S is the most frequent tokens (an eigendecomposition of
Q(u_t) per token); the report states S's share of the model's probability mass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from analysis.activations import normalised_input
from analysis.errors import AnalysisError
from analysis.kl import ReferenceLogits
from analysis.valdata import ValTokens
from decomp import Eigendecomposition, cp_apply, cp_from_model, eigh_sorted, interaction_matrix
from model import GPT
from model.hooks import get_act_name, mlp_input_hook


def explained_variance(eig: Eigendecomposition, xhat: torch.Tensor) -> torch.Tensor:
    """EV(k) for k = 0..K [K + 1] from the eigenpairs of one Q(u) (all of them for an exact EV(d) = 1) and x̂ [N, d]."""
    proj = xhat.to(eig.vectors) @ eig.vectors  # [N, K]
    contrib = proj.pow(2) * eig.values  # λ_i (v_i·x̂)²
    y = contrib.sum(-1)
    kept = torch.cat([torch.zeros_like(y)[:, None], contrib.cumsum(-1)], dim=1)  # y^(k), k = 0..K
    resid = y[:, None] - kept
    var_y = y.var(correction=0)
    return 1 - resid.var(dim=0, correction=0) / var_y.clamp_min(1e-300)


@dataclass
class TokenTruncationPoint:
    """Per-output-token truncation to k components (means over positions): kl, its noise floor, val loss."""

    k: int
    kl: float
    kl_noise: float
    loss: float


@dataclass
class TokenTruncation:
    """layer; tokens: the truncated set S (model ids); mass: mean Σ_{t∈S} p_t of the original model;
    base_loss: the original model's loss on the same positions; points by k."""

    layer: int
    tokens: list[int]
    mass: float
    base_loss: float
    points: list[TokenTruncationPoint]


def sparse_kl_and_loss(
    ref: ReferenceLogits, p_s: torch.Tensor, d: torch.Tensor, slot: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(p ‖ q) and the cross-entropy of q [B, T] when q's logits differ from p's only on a token set S.

    With d = logit_p − logit_q on S ([B, T, M]; 0 elsewhere) and p_s = p on S, exactly
        KL = Σ_S p d + log(1 + Σ_S p (e^{−d} − 1)),   −log q_y = lse_p + that log − logit_p[y] + d_y,
    at O(|S|) per position instead of O(vocab). slot [vocab]: index of each token in S, −1 outside.
    """
    log_ratio = torch.log1p((p_s * torch.expm1(-d)).sum(-1))
    kl = (p_s * d).sum(-1) + log_ratio
    j = slot[y]
    d_y = torch.where(j >= 0, d.gather(-1, j.clamp_min(0)[..., None])[..., 0], torch.zeros_like(log_ratio))
    loss = ref.lse + log_ratio - ref.logits.gather(-1, y[..., None])[..., 0] + d_y
    return kl, loss


def _softcap(raw: torch.Tensor, cap: float | None) -> torch.Tensor:
    # as GPT.unembed: logits = c·tanh(raw / c)
    return raw if cap is None else cap * torch.tanh(raw / cap)


def _truncated_spectra(cp, u: torch.Tensor, k_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ [M, K], V [d, M·K]): the top-K |λ| eigenpairs of Q(u_t) for each row u_t of u [M, d]."""
    values, vectors = [], []
    for chunk in u.split(256):
        eig = eigh_sorted(interaction_matrix(cp, chunk), k_max)
        values.append(eig.values)  # [m, K]
        vectors.append(eig.vectors)  # [m, d, K]
    return torch.cat(values), torch.cat(vectors).permute(1, 0, 2).reshape(u.shape[1], -1)


def per_token_truncation(
    model: GPT,
    val: ValTokens,
    layers: list[int],
    ks: list[int],
    token_ids: list[int],
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, TokenTruncation]:
    """KL of the per-output-token truncation of each bilinear layer (module docstring) for k in ks.

    One forward pass per batch serves every layer (each layer is truncated on its own)."""
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    g_f = model.final_norm_gain().detach().float()
    w_u = model.w_u.detach().float()
    u = w_u[ids] * g_f  # [M, d]
    k_max = min(max(ks), u.shape[1])
    cps = {i: cp_from_model(model, i, fold_norm=True, dtype=torch.float32) for i in layers}
    spectra = {i: _truncated_spectra(cps[i], u, k_max) for i in layers}
    gains = {i: model.mlp_norm_gain(i).detach().float() for i in layers}
    final = get_act_name("resid_post", model.config.n_layer - 1)
    names = [final, "ln_f.hook_normalized"]
    names += [n for i in layers for n in (get_act_name("resid_mid", i), mlp_input_hook(i))]
    cap = model.config.logit_softcap
    slot = torch.full((w_u.shape[0],), -1, dtype=torch.long)  # vocab id -> its index in S (−1: not in S)
    slot[ids] = torch.arange(len(ids))
    sums = {i: {k: [0.0, 0.0, 0.0] for k in ks} for i in layers}
    mass, base, n_pos = 0.0, 0.0, 0
    gen = torch.Generator().manual_seed(seed)
    n_batches = -(-val.x.shape[0] // batch_size)
    bar = tqdm(val.batches(batch_size), total=n_batches, desc="per-token truncation", disable=not progress)
    with torch.inference_mode():
        for x, y in bar:
            logits, cache = model.run_with_cache(x, names_filter=names)
            ref = ReferenceLogits(logits)
            n_f = cache["ln_f.hook_normalized"].float()
            raw = n_f @ w_u[ids].T  # the logits of S before the soft-cap [B, T, M]
            capped = _softcap(raw, cap)
            if n_pos == 0 and not torch.allclose(capped, logits[..., ids].float(), atol=1e-3, rtol=1e-3):
                raise AnalysisError("per-token truncation: W_U·N_f(x) does not reproduce the model's logits")
            # rms of the final residual: N_f(r) = g_f ⊙ r / rms(r)
            r_f = (g_f * cache[final].float()).norm(dim=-1) / n_f.norm(dim=-1).clamp_min(1e-30)
            p_s = ref.p[..., ids]
            mass += float(p_s.sum())
            base += float((ref.lse - ref.logits.gather(-1, y[..., None])[..., 0]).sum())
            n_pos += x.numel()
            for i in layers:
                lam, vec = spectra[i]
                xh = normalised_input(cache, i, gains[i])
                exact = cp_apply(cps[i], xh) @ u.T  # y_t = u_t·MLP [B, T, M]
                proj = (xh @ vec).view(*xh.shape[:-1], len(ids), k_max)
                cum = (proj.pow(2) * lam).cumsum(-1)  # y_t^(k) for k = 1..K
                for k in ks:
                    delta = (cum[..., min(k, k_max) - 1] - exact) / r_f[..., None]
                    kl, loss = sparse_kl_and_loss(ref, p_s, capped - _softcap(raw + delta, cap), slot, y)
                    noise = torch.randn(delta.shape, generator=gen)
                    noise *= delta.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True).clamp_min(
                        1e-30
                    )
                    kl_noise, _ = sparse_kl_and_loss(ref, p_s, capped - _softcap(raw + noise, cap), slot, y)
                    s = sums[i][k]
                    s[0] += float(kl.sum())
                    s[1] += float(kl_noise.sum())
                    s[2] += float(loss.sum())
    out = {}
    for i in layers:
        points = [
            TokenTruncationPoint(k, s[0] / n_pos, s[1] / n_pos, s[2] / n_pos) for k, s in sums[i].items()
        ]
        out[i] = TokenTruncation(i, [int(t) for t in ids], mass / n_pos, base / n_pos, points)
    return out
