"""Steering through a bilinear MLP: predict the change of its output from the weights, compare with the model.

Adding α·s to the MLP input z (no norm in between) changes the output of MLP(z) = B(z, z) = P((Wz)⊙(Vz)) by

    ΔMLP = B(z + αs) − B(z) = α(B(z, s) + B(s, z)) + α² B(s, s) = 2α·M_s z + α²·B(s, s),
    M_s = ½(P diag(Vs) W + P diag(Ws) V)                                             (exact; B(αs) = α²B(s)).

In the model, s is added to the residual stream at ``blocks.{i}.hook_resid_mid``, before the RMSNorm
N(x) = g ⊙ x / rms(x) that feeds the MLP. The *no-norm prediction* freezes the norm's scale at the unsteered
position, i.e. steers z by α·s' with s' = g ⊙ s / rms(x). The measured change instead saturates: as |α| grows
N(x + αs) → ±g ⊙ s / rms(s), so ΔMLP → B(ŝ, ŝ) − MLP(z) with ŝ = g ⊙ s / rms(s), the same for +α and −α (the
linear term, the only one odd in α, disappears: the sign of α is lost).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensorly.cp_tensor import CPTensor

from analysis.faithfulness import layer_cp
from decomp import cp_apply
from model import GPT
from model.hooks import get_act_name, mlp_input_hook, mlp_output_hook


def steering_prediction(cp: CPTensor, z: torch.Tensor, s: torch.Tensor, alpha: float) -> torch.Tensor:
    """ΔMLP = α(B(z, s) + B(s, z)) + α² B(s, s) for an order-3 CP tensor B; z [..., d], s [d] or [..., d]."""
    s = s.expand_as(z).to(z) if s.ndim < z.ndim else s.to(z)
    return alpha * (cp_apply(cp, z, s) + cp_apply(cp, s, z)) + alpha**2 * cp_apply(cp, s, s)


@dataclass
class SteeringCurve:
    """Steering with α·s at ``blocks.{layer}.hook_resid_mid`` (means over positions; norms in residual units).

    alphas [n] (positive, the sweep is run at ±α); measured_pos/neg [n]: mean ‖ΔMLP‖ at +α / −α;
    predicted_pos/neg [n]: the no-norm prediction; saturation: mean ‖B(ŝ, ŝ) − MLP(z)‖ (the |α| → ∞ limit);
    odd_* / even_* [n]: mean ‖½(Δ(+α) − Δ(−α))‖ and ‖½(Δ(+α) + Δ(−α))‖, the parts of the effect that do and
    do not follow the sign of α (no norm: exactly 2α·M_s z and α²·B(s, s));
    prediction_error [n]: mean ‖Δ_measured − Δ_predicted‖ / mean ‖Δ_measured‖ at +α.
    s_rms: rms of s (α = 1 pushes by one s); resid_rms: mean rms of the residual at that hook.
    """

    layer: int
    description: str
    alphas: torch.Tensor
    measured_pos: torch.Tensor
    measured_neg: torch.Tensor
    predicted_pos: torch.Tensor
    predicted_neg: torch.Tensor
    saturation: float
    odd_measured: torch.Tensor
    odd_predicted: torch.Tensor
    even_measured: torch.Tensor
    even_predicted: torch.Tensor
    prediction_error: torch.Tensor
    s_rms: float
    resid_rms: float


def measured_mlp_change(
    model: GPT, x: torch.Tensor, layer: int, s: torch.Tensor, alpha: float
) -> torch.Tensor:
    """MLP output [B, T, d] of ``layer`` with α·s added at its resid_mid hook (blocks after it are not run)."""
    steer = (get_act_name("resid_mid", layer), lambda act, hook: act + alpha * s.to(act))
    with model.hooks([steer]):
        _, cache = model.run_with_cache(x, names_filter=[mlp_output_hook(layer)], stop_at_layer=layer + 1)
    return cache[mlp_output_hook(layer)]


def steering_sweep(
    model: GPT,
    x: torch.Tensor,
    layer: int,
    s: torch.Tensor,
    alphas: torch.Tensor,
    description: str = "",
    residual_units: bool = True,
) -> SteeringCurve:
    """Measure and predict ΔMLP of bilinear ``layer`` for α·s, α ∈ ±alphas, on token batch x [B, T].

    residual_units: rescale s so that rms(s) equals the mean rms of the residual at the hook (α = 1 is then a
    push as large as the residual stream itself); otherwise s is used as given.
    """
    cp = layer_cp(model, layer)  # acts on z = N(x), gain not folded
    names = [get_act_name("resid_mid", layer), mlp_input_hook(layer), mlp_output_hook(layer)]
    with torch.inference_mode():
        _, cache = model.run_with_cache(x, names_filter=names, stop_at_layer=layer + 1)
        resid = cache[get_act_name("resid_mid", layer)].double()
        z = cache[mlp_input_hook(layer)].double()
        out = cache[mlp_output_hook(layer)].double()
        gain = model.mlp_norm_gain(layer).detach().double()
        rms_x = resid.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        s = s.double()
        if residual_units:
            s = s * (rms_x.mean() / s.pow(2).mean().sqrt())
        s_frozen = gain * s / rms_x  # [B, T, d]: s as the frozen norm would scale it
        s_hat = gain * s / s.pow(2).mean().sqrt()
        saturation = (cp_apply(cp, s_hat) - out).norm(dim=-1).mean()
        rows = []
        for a in alphas.tolist():
            d_pos = measured_mlp_change(model, x, layer, s, a).double() - out
            d_neg = measured_mlp_change(model, x, layer, s, -a).double() - out
            p_pos = steering_prediction(cp, z, s_frozen, a)
            p_neg = steering_prediction(cp, z, s_frozen, -a)
            rows.append(
                [
                    d_pos.norm(dim=-1).mean(),
                    d_neg.norm(dim=-1).mean(),
                    p_pos.norm(dim=-1).mean(),
                    p_neg.norm(dim=-1).mean(),
                    _half_norm(d_pos - d_neg),
                    _half_norm(p_pos - p_neg),
                    _half_norm(d_pos + d_neg),
                    _half_norm(p_pos + p_neg),
                    (d_pos - p_pos).norm(dim=-1).mean() / d_pos.norm(dim=-1).mean().clamp_min(1e-30),
                ]
            )
    t = torch.tensor([[float(v) for v in r] for r in rows], dtype=torch.float64).T
    return SteeringCurve(
        layer,
        description,
        alphas.double(),
        *t[:4],
        float(saturation),
        *t[4:9],
        float(s.pow(2).mean().sqrt()),
        float(rms_x.mean()),
    )


def _half_norm(a: torch.Tensor) -> torch.Tensor:
    return (0.5 * a).norm(dim=-1).mean()
