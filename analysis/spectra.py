"""Eigen-spectra of interaction matrices Q(u) of bilinear layers, for output directions of chosen tokens.

For a token t the output direction is u = g_f ⊙ W_U[t] (g_f the final norm gain), and with the RMSNorm gain
folded into the layer (decomp's ``fold_norm=True``: the tensor acts on x̂ = x / rms(x)),

    u · MLP(N(x)) = x̂ᵀ Q(u) x̂ = Σ_i λ_i (v_i · x̂)²,    Q(u) = ½(W'ᵀ diag(Pᵀu) V' + V'ᵀ diag(Pᵀu) W').

Per token: the eigenvalues (|λ| descending), the effective rank (‖λ‖₁/‖λ‖₂)², the truncation curve
k ↦ ‖Q − Q_k‖_F / ‖Q‖_F, the leading eigenvectors and their token readouts (inputs: Ê v with rms-normalised
embeddings ê_t = e_t/rms(e_t), both signs, only over the ``allowed`` (frequent) tokens; outputs: W_U B(v, v));
and, given each token's mean layer input on data m_t = mean of x̂ over the positions holding t, the readout
m_t·v (what v reads once attention has mixed the embeddings). All computed by `decomp` (eigendecompose,
eigen_readouts, input_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis.tokens import TokenText
from decomp import (
    Eigendecomposition,
    EigenReadout,
    TopTokens,
    cp_from_model,
    eigen_readouts,
    eigendecompose,
    input_tokens,
    token_direction,
)
from model import GPT


@dataclass
class TokenSpectrum:
    """Q(u_t) of one output token t: values [d] (|λ| descending), truncation_error [d + 1] (index k = kept
    eigenpairs, k = 0..d), effective_rank, readouts of the leading eigenvectors, the vectors themselves
    [d, n_eigen], and (given mean layer inputs) their readouts through each token's mean input on data."""

    token: int
    label: str
    values: torch.Tensor
    truncation_error: torch.Tensor
    effective_rank: float
    readouts: list[EigenReadout]
    vectors: torch.Tensor | None = None
    mean_input_readouts: list[TopTokens] | None = None


@dataclass
class LayerSpectra:
    layer: int
    tokens: list[TokenSpectrum]


def readout_tables(model: GPT, n_valid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ê, W_U·diag(g_f)) over the n_valid real vocabulary rows, float64.

    Ê holds the embeddings divided by their rms, ê_t = e_t / rms(e_t): the input a norm-folded layer sees for
    a lone token, and a readout W_E·v that is not dominated by the large random embeddings of rare tokens.
    """
    w_e = model.w_e.detach()[:n_valid].double()
    w_e = w_e / w_e.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    w_u = (model.w_u.detach() * model.final_norm_gain().detach()).double()[:n_valid]
    return w_e, w_u


def layer_spectra(
    model: GPT,
    layer: int,
    tokens: list[int],
    token_text: TokenText,
    n_valid: int,
    n_eigen: int = 3,
    n_top: int = 6,
    allowed: torch.Tensor | None = None,
    mean_inputs: torch.Tensor | None = None,
    mean_allowed: torch.Tensor | None = None,
) -> LayerSpectra:
    """Spectra of Q(u_t) for each token t in ``tokens`` at bilinear ``layer`` (dense eigh; d ≤ a few 1000).

    allowed: bool [≥ n_valid] tokens listed by the W_E readouts (None: all). mean_inputs [≥ n_valid, d]: each
    token's mean x̂ at this layer on data, read against the eigenvectors over the tokens in mean_allowed.
    """
    cp = cp_from_model(model, layer, fold_norm=True, dtype=torch.float64)
    w_u_raw = model.w_u.detach().double()
    u = torch.stack([token_direction(w_u_raw, t, model.final_norm_gain().detach().double()) for t in tokens])
    eig = eigendecompose(cp, u)  # values [n, d], vectors [n, d, d]
    w_e, w_u = readout_tables(model, n_valid)
    allowed = None if allowed is None else allowed[:n_valid]
    out = []
    for j, t in enumerate(tokens):
        single = Eigendecomposition(eig.values[j], eig.vectors[j], eig.frobenius_sq[j])
        d = single.k
        errors = torch.stack([single.relative_error(k) for k in range(d + 1)])
        readouts = eigen_readouts(
            single, cp, w_e, w_u, n=n_eigen, k=n_top, decode=token_text.display, allowed=allowed
        )
        vectors = single.vectors[:, : len(readouts)]
        mean_readouts = None
        if mean_inputs is not None:
            table, keep = mean_inputs[:n_valid].to(vectors), mean_allowed[:n_valid]
            mean_readouts = [input_tokens(v, table, n_top, token_text.display, keep) for v in vectors.T]
        out.append(
            TokenSpectrum(
                t,
                token_text.label(t),
                single.values,
                errors,
                float(single.effective_rank()),
                readouts,
                vectors,
                mean_readouts,
            )
        )
    return LayerSpectra(layer, out)


def top_eigenvector(model: GPT, layer: int, token: int) -> tuple[torch.Tensor, float]:
    """(v [d], λ): the leading (largest |λ|) eigenpair of Q(u_token) at ``layer`` (norm gain folded)."""
    cp = cp_from_model(model, layer, fold_norm=True, dtype=torch.float64)
    u = token_direction(model.w_u.detach().double(), token, model.final_norm_gain().detach().double())
    eig = eigendecompose(cp, u, k=1)
    return eig.vectors[:, 0], float(eig.values[0])
