"""Faithfulness of compressed MLPs under KL, next to a noise floor of random perturbations of equal size.

One layer's MLP output (hook ``blocks.{i}.hook_mlp_out``) is replaced by a compressed version computed from CP
factors applied to the layer's own input z = N(x) (hook ``blocks.{i}.ln2.hook_normalized``), and the change of
the next-token distributions is measured as

    KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)      p = original model, q = modified model, per position,

averaged over validation positions (nats). KL mostly ignores tokens the original model already found unlikely,
so it scores what matters for the model's behaviour. On its own a KL value has no scale; the noise floor gives
one: the original output plus a random perturbation with the same per-position error norm ‖Δ‖ as the
replacement (Δ = replacement − original; direction uniform on the sphere), averaged over seeds. A replacement
far below its noise floor errs in directions the rest of the network ignores; one near or above it does not.

Two families of replacements (both are CP tensors acting on z, so both use `decomp.cp_apply`):

* ``als_replacement`` (primary): the layer's CP tensor B = [[P, Wᵀ, Vᵀ]] (rank h) compressed to rank r with
  decomp's implicit CP-ALS; r ≥ h returns B itself (exact). Works for any order (multilinear layers too).
* ``truncation_replacement`` (bilinear): only the symmetric part B^S acts on z (z ↦ B(z, z)). Take the
  orthonormal basis u_1..u_d of output directions given by the left singular vectors of P (ordered by how
  strongly the layer writes to them); then B^S = Σ_j u_j ⊗ Q(u_j), and keeping the top-k |λ| eigencomponents
  of every Q(u_j) gives the best approximation (in Frobenius norm) whose slices along that basis have rank ≤ k:
  MLP_k(z) = Σ_j u_j Σ_{i<k} λ_ji (v_ji · z)², a symmetric CP tensor of rank d·k.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from tensorly.cp_tensor import CPTensor
from tqdm.auto import tqdm

from analysis.errors import AnalysisError
from analysis.kl import ReferenceLogits
from analysis.valdata import ValTokens
from decomp import (
    cp_als,
    cp_apply,
    cp_from_model,
    cp_relative_error,
    eigh_sorted,
    interaction_matrix,
    layer_kind,
    make_cp,
    symmetric_cp,
)
from decomp.errors import DecompError
from model import GPT
from model.hooks import mlp_input_hook, mlp_output_hook


def cp_layer_kinds(model: GPT) -> tuple[list[int], dict[int, str]]:
    """(layers with an exact CP form, {other layer: why it is skipped})."""
    layers, skipped = [], {}
    for i in range(model.config.n_layer):
        try:
            layer_kind(model, i)
            layers.append(i)
        except DecompError as e:
            skipped[i] = str(e)
    return layers, skipped


def layer_cp(model: GPT, layer: int) -> CPTensor:
    """The exact float64 CP tensor of MLP ``layer`` acting on its input z = N(x) (norm gain not folded)."""
    return cp_from_model(model, layer, fold_norm=False, dtype=torch.float64)


@dataclass
class Replacement:
    """A compressed MLP of one layer.

    family: "als" (param = CP rank r) or "truncation" (param = eigencomponents k per output direction).
    rel_error: ‖B − B̃‖ / ‖B‖ of the CP tensors; sym_rel_error: ‖B^S − B̃^S‖ / ‖B^S‖ of their symmetric parts
    (what acts on z). exact: the replacement is the layer itself (no compression).
    """

    family: str
    param: int
    cp: CPTensor = field(repr=False)
    rel_error: float
    sym_rel_error: float
    exact: bool = False
    n_iter: int = 0

    @property
    def label(self) -> str:
        return f"rank {self.param}" if self.family == "als" else f"top-{self.param} per direction"


def als_replacement(
    cp: CPTensor, rank: int, n_iter_max: int = 40, tol: float = 1e-7, seed: int = 0
) -> Replacement:
    """Rank-``rank`` CP approximation of the layer tensor by implicit ALS (svd init); exact if rank ≥ h."""
    if rank >= cp.rank:
        return Replacement("als", rank, cp, 0.0, 0.0, exact=True)
    result = cp_als(cp, rank, n_iter_max=n_iter_max, tol=tol, init="svd", random_state=seed)
    sym_err = cp_relative_error(symmetric_cp(cp), symmetric_cp(result.cp))
    return Replacement("als", rank, result.cp, result.rel_error, sym_err, n_iter=result.n_iter)


def truncation_replacement(cp: CPTensor, k: int) -> Replacement:
    """Top-k eigencomponents of Q(u_j) for each left singular vector u_j of P (see the module docstring).

    Only for order-3 tensors. Returns a symmetric CP tensor of rank d_out·k (weights λ_ji, factors
    (u_j, v_ji, v_ji)); k ≥ d_in keeps everything (exact B^S).
    """
    if len(cp.factors) != 3:
        raise AnalysisError("top-k eigen truncation needs a bilinear (order-3) layer")
    d_out, d_in = cp.factors[0].shape[0], cp.factors[1].shape[0]
    u_basis = torch.linalg.svd(cp.factors[0], full_matrices=True).U  # [d_out, d_out], columns u_j
    k = min(k, d_in)
    eig = eigh_sorted(interaction_matrix(cp, u_basis.T), k)  # values [d_out, k], vectors [d_out, d_in, k]
    weights = eig.values.reshape(-1)
    out_factor = u_basis.repeat_interleave(k, dim=1)  # column j·k + i is u_j
    in_factor = eig.vectors.permute(1, 0, 2).reshape(d_in, d_out * k)
    trunc = make_cp(weights, [out_factor, in_factor, in_factor])
    sym = symmetric_cp(cp)
    sym_err = 0.0 if k == d_in else cp_relative_error(sym, trunc)
    # B̃ is symmetric, so ‖B − B̃‖² = ‖B^S − B̃‖² + ‖B − B^S‖² (the antisymmetric part is orthogonal to it).
    full_err = cp_relative_error(cp, trunc)
    return Replacement("truncation", k, trunc, full_err, sym_err, exact=k == d_in)


def noise_like(delta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random vectors [..., d] with ‖noise[p]‖ = ‖delta[p]‖ at every position p, directions uniform on the sphere."""
    g = torch.randn(delta.shape, generator=generator, dtype=delta.dtype)
    scale = delta.norm(dim=-1, keepdim=True) / g.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return g * scale


def run_with_mlp_output(model: GPT, x: torch.Tensor, layer: int, new_out: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, vocab] of the model with MLP ``layer``'s output replaced by new_out [B, T, d]."""
    return model.run_with_hooks(x, [(mlp_output_hook(layer), lambda act, hook: new_out.to(act.dtype))])


@dataclass
class FaithfulnessPoint:
    """One replacement scored on validation tokens (means over positions; KL in nats, loss in nats/token).

    error_norm: mean ‖Δ‖ per position; rel_output_error: mean ‖Δ‖ / mean ‖MLP(z)‖.
    kl_noise: mean KL of the noise floor over seeds; kl_noise_std: its spread over seeds.
    """

    family: str
    param: int
    label: str
    rel_error: float
    sym_rel_error: float
    exact: bool
    kl: float
    kl_noise: float
    kl_noise_std: float
    loss: float
    error_norm: float
    rel_output_error: float


@dataclass
class LayerFaithfulness:
    """All replacements of one layer. base_loss: the unmodified model's loss on the same tokens;
    kl_mean_ablation: KL when the MLP output is replaced by its mean over the batch positions (a ceiling)."""

    layer: int
    base_loss: float
    kl_mean_ablation: float
    points: list[FaithfulnessPoint]

    def family(self, name: str) -> list[FaithfulnessPoint]:
        return sorted((p for p in self.points if p.family == name), key=lambda p: p.param)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Sums:
    kl: float = 0.0
    loss: float = 0.0
    err: float = 0.0
    out: float = 0.0
    noise: list[float] = field(default_factory=list)


def evaluate_replacements(
    model: GPT,
    val: ValTokens,
    replacements: dict[int, list[Replacement]],
    batch_size: int = 8,
    n_seeds: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> dict[int, LayerFaithfulness]:
    """Score every replacement of every layer by KL(original ‖ modified), its noise floor and the val loss.

    Per batch one unmodified forward caches the MLP inputs/outputs and the original logits; then each
    replacement costs 1 + n_seeds forwards (replacement, noise floor per seed), each layer one more (mean
    ablation). Noise seeds are seed, seed+1, … (the same draws for every replacement of a batch).
    """
    layers = sorted(replacements)
    names = [h for i in layers for h in (mlp_input_hook(i), mlp_output_hook(i))]
    sums = {i: [_Sums(noise=[0.0] * n_seeds) for _ in replacements[i]] for i in layers}
    base_loss_sum, ablation = 0.0, dict.fromkeys(layers, 0.0)
    n_pos = 0
    n_forwards = sum(len(r) for r in replacements.values()) * (1 + n_seeds) + len(layers)
    n_batches = -(-val.x.shape[0] // batch_size)
    bar = tqdm(total=n_batches * (1 + n_forwards), desc="KL faithfulness", unit="fwd", disable=not progress)
    with torch.inference_mode():
        for b, (x, y) in enumerate(val.batches(batch_size)):
            logits, cache = model.run_with_cache(x, names_filter=names)
            ref = ReferenceLogits(logits)
            del logits
            bar.update(1)
            n_pos += x.numel()
            base_loss_sum += _loss_sum(ref.logits, y)

            def score(layer: int, out: torch.Tensor, ref=ref, x=x, y=y) -> tuple[float, float]:
                kl, loss = ref.kl_and_loss(run_with_mlp_output(model, x, layer, out), y)
                bar.update(1)
                return float(kl.sum()), float(loss.sum())

            for i in layers:
                z, out = cache[mlp_input_hook(i)], cache[mlp_output_hook(i)]
                mean_out = out.mean(dim=(0, 1), keepdim=True).expand_as(out)
                ablation[i] += score(i, mean_out)[0]
                for rep, s in zip(replacements[i], sums[i], strict=True):
                    new = cp_apply(rep.cp, z).to(out.dtype)
                    delta = new - out
                    kl, loss = score(i, new)
                    s.kl += kl
                    s.loss += loss
                    s.err += float(delta.norm(dim=-1).sum())
                    s.out += float(out.norm(dim=-1).sum())
                    for j in range(n_seeds):
                        gen = torch.Generator().manual_seed(seed + j + 1000 * b)
                        s.noise[j] += score(i, out + noise_like(delta, gen))[0]
    bar.close()

    results = {}
    for i in layers:
        points = []
        for rep, s in zip(replacements[i], sums[i], strict=True):
            noise = torch.tensor(s.noise, dtype=torch.float64) / n_pos
            points.append(
                FaithfulnessPoint(
                    rep.family,
                    rep.param,
                    rep.label,
                    rep.rel_error,
                    rep.sym_rel_error,
                    rep.exact,
                    kl=s.kl / n_pos,
                    kl_noise=float(noise.mean()) if n_seeds else float("nan"),
                    kl_noise_std=float(noise.std()) if n_seeds > 1 else 0.0,
                    loss=s.loss / n_pos,
                    error_norm=s.err / n_pos,
                    rel_output_error=s.err / max(s.out, 1e-30),
                )
            )
        results[i] = LayerFaithfulness(i, base_loss_sum / n_pos, ablation[i] / n_pos, points)
    return results


def _loss_sum(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum")
    )


def build_replacements(
    model: GPT,
    layers: list[int],
    ranks: list[int],
    ks: list[int],
    als_iters: int = 40,
    progress: bool = True,
) -> dict[int, list[Replacement]]:
    """ALS replacements (every rank) for every layer, plus top-k truncations for the bilinear ones."""
    out: dict[int, list[Replacement]] = {}
    jobs = [(i, "als", r) for i in layers for r in ranks]
    jobs += [(i, "truncation", k) for i in layers for k in ks if model.mlp_order(i) == 2]
    cps = {i: layer_cp(model, i) for i in layers}
    for i, family, param in tqdm(jobs, desc="compress MLPs (ALS / top-k)", disable=not progress):
        rep = (
            als_replacement(cps[i], param, als_iters)
            if family == "als"
            else truncation_replacement(cps[i], param)
        )
        out.setdefault(i, []).append(rep)
    return out
