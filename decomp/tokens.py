"""Token readouts: eigenvectors and CP components read through W_E (inputs) and W_U (outputs).

Decoding ids to strings is the caller's: every function takes an optional ``decode: Callable[[int], str]``,
and an optional ``allowed`` mask (bool [vocab]) that restricts the listed tokens, e.g. to those frequent enough
in the training data for their embeddings to have been trained (a rare token keeps a large random embedding
and would otherwise top every readout through W_E). W_E, W_U are [vocab, d] (one row per token). None of these
builds a vocab × vocab × vocab object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tensorly.cp_tensor import CPTensor

from decomp.cp import check_cp, cp_apply
from decomp.eigen import Eigendecomposition
from decomp.errors import DecompError

Decode = Callable[[int], str]


@dataclass(frozen=True)
class TokenScore:
    token: int
    score: float
    text: str | None = None


@dataclass
class TopTokens:
    """positive: the k highest scores, descending; negative: the k lowest, most negative first."""

    positive: list[TokenScore]
    negative: list[TokenScore]


@dataclass
class EigenReadout:
    """Eigenpair i of Q(u): inputs = top tokens of W_E v (both signs); outputs = top tokens of W_U B(v, v)."""

    index: int
    eigenvalue: float
    inputs: TopTokens
    outputs: TopTokens


@dataclass
class ComponentReadout:
    """Rank-one term r of a CP tensor, λ_r a_r ⊗ b_r ⊗ c_r ….

    magnitude = |λ_r| Π_n ‖A_n[:, r]‖ (its Frobenius norm); output = tokens of W_U a_r; inputs = tokens of
    W_E b_r for each input mode. The signs of the factor columns are defined only jointly (a sign flip of two
    modes leaves the term unchanged), so read positive/negative lists relative to each other.
    """

    index: int
    magnitude: float
    output: TopTokens
    inputs: list[TopTokens]


def top_tokens(
    scores: torch.Tensor, k: int = 10, decode: Decode | None = None, allowed: torch.Tensor | None = None
) -> TopTokens:
    """The k highest and k lowest entries of scores [vocab] (among the ``allowed`` tokens, bool [vocab])."""
    if scores.ndim != 1:
        raise DecompError(f"token scores must be 1-D [vocab], got shape {tuple(scores.shape)}")
    if not isinstance(k, int) or k <= 0:
        raise DecompError(f"k must be a positive integer, got {k!r}")
    s = scores.detach().float().cpu()
    if allowed is None:
        ids = torch.arange(s.shape[0])
    else:
        if allowed.shape != s.shape or allowed.dtype != torch.bool:
            raise DecompError(
                f"allowed must be a bool mask of shape {tuple(s.shape)}, got {tuple(allowed.shape)}"
            )
        ids = allowed.cpu().nonzero()[:, 0]
    k = min(k, ids.shape[0])
    hi = ids[s[ids].topk(k).indices]
    lo = ids[(-s[ids]).topk(k).indices]

    def entries(idx: torch.Tensor) -> list[TokenScore]:
        return [TokenScore(int(i), float(s[i]), decode(int(i)) if decode else None) for i in idx]

    return TopTokens(entries(hi), entries(lo))


def input_tokens(
    v: torch.Tensor,
    w_e: torch.Tensor,
    k: int = 10,
    decode: Decode | None = None,
    allowed: torch.Tensor | None = None,
) -> TopTokens:
    """Tokens whose embedding aligns with v [d]: scores W_E v [vocab], both signs.

    Any [vocab, d] table of token vectors works in place of W_E, e.g. each token's mean layer input on data.
    """
    _check_vec(v, w_e, "W_E")
    return top_tokens(w_e @ v.to(w_e), k, decode, allowed)


def output_tokens(
    cp: CPTensor,
    v: torch.Tensor,
    w_u: torch.Tensor,
    k: int = 10,
    decode: Decode | None = None,
    allowed: torch.Tensor | None = None,
) -> TopTokens:
    """Tokens promoted / suppressed by feeding v [d_in] to every input: scores W_U B(v, …, v) [vocab].

    For a bilinear layer B(v, v) = P((Wv) ⊙ (Vv)).
    """
    out = cp_apply(cp, v)
    _check_vec(out, w_u, "W_U")
    return top_tokens(w_u @ out.to(w_u), k, decode, allowed)


def eigen_readouts(
    eig: Eigendecomposition,
    cp: CPTensor,
    w_e: torch.Tensor,
    w_u: torch.Tensor,
    n: int | None = None,
    k: int = 10,
    decode: Decode | None = None,
    allowed: torch.Tensor | None = None,
) -> list[EigenReadout]:
    """Token readouts of the first n eigenpairs (by |λ|) of one interaction matrix (unbatched `eig`).

    ``allowed`` (bool [vocab]) restricts the input tokens; outputs are scored over every token."""
    if eig.values.ndim != 1:
        raise DecompError("eigen_readouts takes the eigendecomposition of a single Q(u), not a batch")
    n = eig.k if n is None else min(n, eig.k)
    out = []
    for i in range(n):
        v = eig.vectors[:, i]
        out.append(
            EigenReadout(
                i,
                float(eig.values[i]),
                input_tokens(v, w_e, k, decode, allowed),
                output_tokens(cp, v, w_u, k, decode),
            )
        )
    return out


def component_readouts(
    cp: CPTensor,
    w_e: torch.Tensor,
    w_u: torch.Tensor,
    n: int | None = None,
    k: int = 10,
    decode: Decode | None = None,
    allowed: torch.Tensor | None = None,
) -> list[ComponentReadout]:
    """Token readouts of the n largest rank-one terms of a CP tensor (e.g. a compressed weight diff).

    ``allowed`` (bool [vocab]) restricts the input tokens; outputs are scored over every token."""
    cp = check_cp(cp)
    norms = torch.stack([f.norm(dim=0) for f in cp.factors]).prod(0)
    magnitude = (cp.weights * norms).abs()
    order = magnitude.argsort(descending=True)
    if not _fits(cp.factors[0], w_u):
        raise DecompError(f"W_U has width {w_u.shape[1]}, the output mode has size {cp.factors[0].shape[0]}")
    n = cp.rank if n is None else min(n, cp.rank)
    out = []
    for r in order[:n].tolist():
        output = top_tokens(w_u @ cp.factors[0][:, r].to(w_u), k, decode)
        inputs = [input_tokens(f[:, r], w_e, k, decode, allowed) for f in cp.factors[1:]]
        out.append(ComponentReadout(r, float(magnitude[r]), output, inputs))
    return out


def direct_path_map(
    cp: CPTensor,
    w_e: torch.Tensor,
    w_u: torch.Tensor,
    in_tokens: Sequence[int] | torch.Tensor,
    out_tokens: Sequence[int] | torch.Tensor,
    rms_normalize: bool = False,
) -> torch.Tensor:
    """Direct-path token map M[o, t] = W_U[o] · B(e_t, …, e_t) for t ∈ S_in, o ∈ S_out.

    For a bilinear layer M = (W_U[S_out] P)((W E) ⊙ (V E)) with E = W_E[S_in]ᵀ [d, |S_in|].
    Cost O((|S_in| + |S_out|)·h·d + |S_out|·h·|S_in|), never vocab³.
    rms_normalize divides each embedding row by its rms first (the input a norm-folded CP expects).
    Returns [|S_out|, |S_in|].
    """
    cp = check_cp(cp)
    t_in = _token_ids(in_tokens, w_e.shape[0], "input")
    t_out = _token_ids(out_tokens, w_u.shape[0], "output")
    a0 = cp.factors[0]
    if not _fits(a0, w_u):
        raise DecompError(f"W_U has width {w_u.shape[1]}, the output mode has size {a0.shape[0]}")
    for j, f in enumerate(cp.factors[1:]):
        if f.shape[0] != w_e.shape[1]:
            raise DecompError(f"W_E has width {w_e.shape[1]}, input mode {j + 1} has size {f.shape[0]}")
    e = w_e[t_in.to(w_e.device)].to(a0)
    if rms_normalize:
        e = e / e.pow(2).mean(-1, keepdim=True).sqrt()
    hidden = None
    for f in cp.factors[1:]:
        z = e @ f  # [|S_in|, R]
        hidden = z if hidden is None else hidden * z
    readout = (w_u[t_out.to(w_u.device)].to(a0) @ a0) * cp.weights  # [|S_out|, R]
    return readout @ hidden.T


def _token_ids(tokens: Sequence[int] | torch.Tensor, vocab: int, what: str) -> torch.Tensor:
    ids = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    if ids.numel() == 0:
        raise DecompError(f"the {what} token subset is empty")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise DecompError(
            f"{what} token ids must lie in [0, {vocab}), got range [{int(ids.min())}, {int(ids.max())}]"
        )
    return ids


def _fits(factor: torch.Tensor, table: torch.Tensor) -> bool:
    return table.ndim == 2 and table.shape[1] == factor.shape[0]


def _check_vec(v: torch.Tensor, table: torch.Tensor, name: str) -> None:
    if v.ndim != 1 or table.ndim != 2 or v.shape[0] != table.shape[1]:
        raise DecompError(
            f"vector of shape {tuple(v.shape)} does not fit {name} of shape {tuple(table.shape)}"
        )
