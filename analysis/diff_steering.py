"""Steering the base model with the activation difference of a fine-tune, and what that reproduces.

The steering vector s lives at one lens point of the residual stream (``analysis.logit_lens.lens_points``):
``embed`` (``blocks.0.hook_resid_pre``), ``"{i} attn"`` (``blocks.{i}.hook_resid_mid``, the input of block i's
MLP norm) or ``"{i} mlp"`` (``blocks.{i}.hook_resid_post``). From ``analysis.model_diff.activation_diff``'s
δ_p = mean over validation windows of (h_ft − h_base) at position p it is one of

    mean:  s = mean_{p ≥ 1} δ_p                        added at every position
    first: s = δ_0                                     added at position 0 only (the attention sink)
    pc1:   s = (v₁·s̄) v₁, s̄ = mean_{p ≥ 1} δ_p          added at every position; v₁ the top principal direction
                                                       of the per-window differences (uncentred, p ≥ 1): the
                                                       part of the mean shift along it

and the steered base computes h ← h + α·s at that hook (α = 1: the measured difference itself). Per α, on
validation windows: KL(ft ‖ steered base) (α = 0: KL(ft ‖ base)) and the steered base's loss; on the
fine-tune's own data (e.g. the false-fact validation shard): the steered base's loss minus the base's, next to
the fine-tune's own; and greedy samples from a fixed prompt.

Where a bilinear MLP follows the point, ``analysis.steering.steering_sweep`` gives the weight-only prediction
2α·M_s z + α²·B(s, s) of that MLP's response next to the measured one (s added at the MLP's resid_mid; after
an ``"{i} mlp"`` or ``embed`` point that skips the attention of the block in between).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from analysis.errors import AnalysisError
from analysis.kl import ReferenceLogits
from analysis.logit_lens import lens_points
from analysis.model_diff import ActivationDiff
from analysis.steering import SteeringCurve, steering_sweep
from analysis.valdata import ValTokens
from data.vocab import CompactVocab
from model import GPT
from sample import sample

STEER_KINDS = ("mean", "first", "pc1")
DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 2.0, 4.0)


def point_label(point: str, layer: int) -> str:
    """The lens-point label of ``point`` ('resid_mid' / 'resid_post' / 'embed') at block ``layer``."""
    if point == "embed":
        return "embed"
    if point == "resid_mid":
        return f"{layer} attn"
    if point == "resid_post":
        return f"{layer} mlp"
    raise AnalysisError(f"steering point must be resid_mid, resid_post or embed, got {point!r}")


def lens_hook(model: GPT, label: str) -> tuple[int, str]:
    """(index among the lens points, hook name) of lens-point ``label``."""
    points = lens_points(model)
    for j, (name, hook) in enumerate(points):
        if name == label:
            return j, hook
    raise AnalysisError(
        f"no lens point {label!r} in this {model.config.n_layer}-layer model (known: "
        + ", ".join(n for n, _ in points)
        + ")"
    )


def describe_point(label: str) -> str:
    """'the residual stream after block 2's attention (blocks.2.hook_resid_mid)' and the like."""
    if label == "embed":
        return "the embedding (blocks.0.hook_resid_pre)"
    layer, part = label.split()
    hook = "resid_mid" if part == "attn" else "resid_post"
    return f"the residual stream after block {layer}'s {'attention' if part == 'attn' else 'MLP'} (blocks.{layer}.hook_{hook})"


@dataclass
class SteeringVector:
    """s [d] (float64) at lens point ``label`` (hook ``hook``); first_only: added at position 0 only.

    mean_norm: ‖mean_{p≥1} δ_p‖ at that point; explained: PC1's fraction of the differences' second moment
    (kind pc1)."""

    label: str
    hook: str
    kind: str
    vector: torch.Tensor
    first_only: bool = False
    mean_norm: float = 0.0
    explained: float | None = None

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    def describe(self) -> str:
        what = {
            "mean": "s = mean over positions p ≥ 1 of δ_p, added at every position",
            "first": "s = δ_0 (first position only), added at position 0 only",
            "pc1": "s = the mean difference's component along the top principal direction of the per-window "
            f"differences (PC1 explains {self.explained or 0:.0%}), added at every position",
        }[self.kind]
        return f"{what}; at {describe_point(self.label)}; ‖s‖ = {self.norm:.4g}"


def steering_vector(model: GPT, act: ActivationDiff, label: str, kind: str = "mean") -> SteeringVector:
    """The steering vector of ``kind`` (see the module doc) at lens point ``label`` from an activation diff.

    kind pc1 needs ``act.pca_point == label`` (run activation_diff with that pca_point)."""
    if kind not in STEER_KINDS:
        raise AnalysisError(f"steering kind must be one of {', '.join(STEER_KINDS)}, got {kind!r}")
    j, hook = lens_hook(model, label)
    mean = act.mean_diff[j, 1:].mean(0)
    explained = None
    if kind == "mean":
        s = mean
    elif kind == "first":
        s = act.mean_diff[j, 0]
    else:
        if act.pca_point != label:
            raise AnalysisError(
                f"the activation diff's PCA is at {act.pca_point!r}, not at the steering point {label!r}"
            )
        v = act.pca_directions[0].to(mean)
        s = (v @ mean) * v
        explained = float(act.pca_explained[0])
    return SteeringVector(
        label, hook, kind, s.double().clone(), kind == "first", float(mean.norm()), explained
    )


def steering_hook(sv: SteeringVector, alpha: float) -> tuple[str, Callable]:
    """(hook name, fn) adding α·s at the vector's hook (position 0 only when ``first_only``)."""

    def add(act: torch.Tensor, hook) -> torch.Tensor:
        shift = (alpha * sv.vector).to(act)
        if not sv.first_only:
            return act + shift
        act = act.clone()
        act[:, 0] += shift
        return act

    return sv.hook, add


def steered_logits(model: GPT, x: torch.Tensor, sv: SteeringVector, alpha: float) -> torch.Tensor:
    """Logits [B, T, vocab] of ``model`` with α·s added at the steering point."""
    with model.hooks([steering_hook(sv, alpha)]):
        return model(x)


@dataclass
class SteeringResult:
    """Steering the base with α·s, per α of ``alphas`` [n] (means per token, nats).

    kl [n]: KL(ft ‖ steered base) on validation; kl_base: KL(ft ‖ base); val_loss [n]: the steered base's
    validation loss (base_val_loss, ft_val_loss: unsteered); fact_loss [n]: its loss on the fine-tune's data
    (base_fact_loss, ft_fact_loss), None without such data; samples: [(label, greedy continuation of
    ``prompt``)], 'base', 'fine-tuned' and 'α = …' in that order; curve: the bilinear MLP's predicted vs
    measured response (None: ``note`` says why).
    """

    vector: SteeringVector
    alphas: torch.Tensor
    kl: torch.Tensor
    kl_base: float
    val_loss: torch.Tensor
    base_val_loss: float
    ft_val_loss: float
    n_val_tokens: int
    fact_loss: torch.Tensor | None = None
    base_fact_loss: float | None = None
    ft_fact_loss: float | None = None
    n_fact_tokens: int = 0
    samples: list[tuple[str, str]] = field(default_factory=list)
    prompt: str | None = None
    curve: SteeringCurve | None = None
    note: str = ""

    @property
    def fact_loss_change(self) -> torch.Tensor | None:
        """Steered base's loss on the fine-tune's data minus the base's, per α."""
        return None if self.fact_loss is None else self.fact_loss - self.base_fact_loss

    @property
    def best_alpha(self) -> float:
        return float(self.alphas[int(self.kl.argmin())])


def _losses(
    base: GPT, ft: GPT, data: ValTokens, sv: SteeringVector, alphas: list[float], batch_size: int, bar
) -> tuple[torch.Tensor, torch.Tensor, float, float, float]:
    """Sums over data: (KL(ft ‖ steered) [n], steered loss [n], KL(ft ‖ base), base loss, ft loss), as means."""
    kls = torch.zeros(len(alphas), dtype=torch.float64)
    losses = torch.zeros(len(alphas), dtype=torch.float64)
    kl_base = base_loss = ft_loss = 0.0
    for x, y in data.batches(batch_size):
        lf = ft(x)
        ref = ReferenceLogits(lf)
        k0, l0 = ref.kl_and_loss(base(x), y)
        kl_base += float(k0.double().sum())
        base_loss += float(l0.double().sum())
        ft_loss += float(
            torch.nn.functional.cross_entropy(lf.flatten(0, 1).float(), y.flatten(), reduction="sum")
        )
        for i, a in enumerate(alphas):
            k, loss = ref.kl_and_loss(steered_logits(base, x, sv, a), y)
            kls[i] += k.double().sum()
            losses[i] += loss.double().sum()
        bar.update(1)
    n = data.n_tokens
    return kls / n, losses / n, kl_base / n, base_loss / n, ft_loss / n


def bilinear_layer_after(model: GPT, label: str) -> tuple[int | None, str]:
    """(the MLP layer that reads the residual stream next after ``label``, why not when None)."""
    if label == "embed":
        layer = 0
    else:
        i, part = label.split()
        layer = int(i) if part == "attn" else int(i) + 1
    if layer >= model.config.n_layer:
        return None, "no MLP follows the steering point (it is the last block's output)"
    kind = model.mlp_kind(layer)
    if kind != "bilinear":
        return None, f"the next MLP (layer {layer}) is {kind}, not bilinear: no weight-only prediction"
    return layer, ""


def steer(
    base: GPT,
    ft: GPT,
    sv: SteeringVector,
    val: ValTokens,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    fact: ValTokens | None = None,
    vocab: CompactVocab | None = None,
    prompt: str | None = None,
    sample_tokens: int = 40,
    sweep_sequences: int = 4,
    batch_size: int = 8,
    progress: bool = True,
) -> SteeringResult:
    """Steer ``base`` with α·s for each α (see the module doc); samples need ``vocab`` and ``prompt``.

    base and ft are the models whose functions are compared (for a masked-LoRA fine-tune: the training-time
    model with its adapters)."""
    a = [float(v) for v in alphas]
    if not a:
        raise AnalysisError("steering needs at least one scale α")
    n_batches = -(-val.x.shape[0] // batch_size) + (0 if fact is None else -(-fact.x.shape[0] // batch_size))
    with (
        torch.inference_mode(),
        tqdm(total=n_batches, desc=f"steering ({sv.kind} at {sv.label})", disable=not progress) as bar,
    ):
        kl, val_loss, kl_base, base_val, ft_val = _losses(base, ft, val, sv, a, batch_size, bar)
        result = SteeringResult(sv, torch.tensor(a), kl, kl_base, val_loss, base_val, ft_val, val.n_tokens)
        if fact is not None:
            _, fl, _, base_fact, ft_fact = _losses(base, ft, fact, sv, a, batch_size, bar)
            result.fact_loss, result.base_fact_loss, result.ft_fact_loss = fl, base_fact, ft_fact
            result.n_fact_tokens = fact.n_tokens
    if prompt is not None and vocab is not None and sample_tokens > 0:
        result.prompt = prompt
        shown = sample(
            base, vocab, prompt, 0
        )  # the prompt as the models see it (tokens outside the vocab dropped)

        def continuation(model: GPT) -> str:
            text = sample(model, vocab, prompt, sample_tokens, temperature=0.0)
            return text[len(shown) :] if text.startswith(shown) else text

        result.samples = [("base", continuation(base)), ("fine-tuned", continuation(ft))]
        for alpha in a:
            with base.hooks([steering_hook(sv, alpha)]):
                result.samples.append((f"α = {alpha:g}", continuation(base)))
    layer, result.note = bilinear_layer_after(base, sv.label)
    positive = sorted({abs(v) for v in a if v != 0})
    if layer is not None and positive:
        x = val.x[:sweep_sequences]
        if sv.first_only:  # the MLP acts per position: s at position 0 only is the sweep on position 0
            x = x[:, :1]
        where = "position 0" if sv.first_only else f"{x.numel()} positions"
        desc = (
            f"s = {sv.kind} activation difference from {sv.label}, added at blocks.{layer}.hook_resid_mid "
            f"(α = 1: the measured difference); mean over {where} of {x.shape[0]} validation windows"
        )
        result.curve = steering_sweep(
            base, x, layer, sv.vector.float(), torch.tensor(positive), desc, residual_units=False
        )
    elif layer is not None:
        result.note = "no non-zero α: no MLP response to predict"
    return result
