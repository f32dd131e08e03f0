"""Figures of the analysis report (matplotlib, Agg backend). Each function returns a `Figure`; `save_figure`
writes it as PNG atomically. Tokens are shown as their escaped text in quotes ("' the'", "'\\n'")."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis.diff_steering import SteeringResult  # noqa: E402
from analysis.faithfulness import LayerFaithfulness  # noqa: E402
from analysis.logit_lens import LogitLens  # noqa: E402
from analysis.model_diff import ActivationDiff, LayerWeightDiff  # noqa: E402
from analysis.spectra import LayerSpectra  # noqa: E402
from analysis.steering import SteeringCurve  # noqa: E402
from analysis.tokens import TokenText  # noqa: E402
from analysis.truncation import TokenTruncation  # noqa: E402
from decomp import TopTokens  # noqa: E402
from errors import atomic_write_bytes  # noqa: E402

# Decoded GPT-2 tokens include scripts DejaVu Sans lacks; a missing glyph is drawn as a box, not an error.
warnings.filterwarnings("ignore", message="Glyph .* missing from font")
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})

POS_COLOR, NEG_COLOR = "#2b6cb0", "#c53030"


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")  # nothing clipped (long titles)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def log_axis(ax, axis: str, *values, base: float = 10) -> bool:
    """Put ``axis`` ('x' or 'y') of ``ax`` on a log scale if the plotted ``values`` hold a positive finite number.

    Otherwise the axis stays linear with a note on the axes: a log axis with no positive data makes matplotlib
    fail at drawing time ("Data cannot be log-scaled"), e.g. for a barely trained checkpoint whose KLs all round
    to ≤ 0 in float32 or whose MLP outputs are still zero. Non-positive points among positive ones are masked.
    """
    flat = np.concatenate([np.asarray(v, dtype=float).ravel() for v in values]) if values else np.zeros(0)
    if np.any(np.isfinite(flat) & (flat > 0)):
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log", base=base)
        return True
    ax.text(
        0.5,
        0.97,
        "no positive values: linear scale, not log",
        transform=ax.transAxes,
        ha="center",
        va="top",
        fontsize=8,
        color="gray",
    )
    return False


def quoted(text: str | None) -> str:
    return f"'{text}'" if text is not None else "?"


def token_bars(ax, top: TopTokens, n: int, title: str, xlabel: str) -> None:
    """Horizontal bars: the n highest scores (blue, top) and the n lowest (red, bottom), labelled by token."""
    pos, neg = top.positive[:n], top.negative[:n]
    if all(e.score == 0 for e in pos + neg):
        ax.set_title(title, fontsize=9)
        ax.text(0.5, 0.5, "no difference (all scores 0)", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    entries = neg + pos[::-1]  # bottom to top: most negative … least negative, lowest … highest positive
    labels = [quoted(e.text) for e in entries]
    values = [e.score for e in entries]
    colors = [NEG_COLOR] * len(neg) + [POS_COLOR] * len(pos)
    y = np.arange(len(entries))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)


# ---------------------------------------------------------------- spectra


def plot_spectra(spec: LayerSpectra, n_show: int = 40) -> Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for ts in spec.tokens:
        v = ts.values.numpy()
        label = f"{ts.label}  (eff. rank {ts.effective_rank:.1f})"
        idx = np.arange(1, len(v) + 1)
        (line,) = a.plot(idx[:n_show], v[:n_show], marker="o", ms=3, lw=1, label=label)
        b.plot(idx, np.abs(v), color=line.get_color(), lw=1.2, label=label)
    a.axhline(0, color="black", lw=0.6)
    a.set_title(f"Layer {spec.layer}: leading eigenvalues of Q(u_token) (signed, by |λ|)")
    a.set_xlabel("eigenvalue index i (sorted by |λ| descending)")
    a.set_ylabel("λ_i  (logit units per rms-normalised input²)")
    a.legend(title="output token", fontsize=8)
    b.set_title(f"Layer {spec.layer}: full spectrum |λ_i| of Q(u_token)")
    b.set_xlabel("eigenvalue index i")
    b.set_ylabel("|λ_i| (log scale)")
    log_axis(b, "y", *[np.abs(ts.values.numpy()) for ts in spec.tokens])
    b.legend(title="output token", fontsize=8)
    fig.tight_layout()
    return fig


def plot_truncation(
    spec: LayerSpectra,
    faith: LayerFaithfulness | None,
    explained: dict[int, Sequence[float]] | None = None,
    token_trunc: TokenTruncation | None = None,
    random_basis: dict[int, Sequence[float]] | None = None,
) -> Figure:
    """Left: ‖Q − Q_k‖/‖Q‖ per token (solid) and, given explained {token: EV(k)}, 1 − EV(k) on data (dashed);
    given random_basis {token: EV(k)}, the same for the same eigenvalues on random eigenvectors (dotted).
    Right: KL of the whole-MLP top-k truncation, and of the per-output-token truncation when given."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for ts in spec.tokens:
        err = ts.truncation_error.numpy()
        (line,) = a.plot(np.arange(len(err)), err, lw=1.3, label=ts.label)
        if explained and ts.token in explained:
            ev = np.asarray(explained[ts.token], dtype=float)
            a.plot(np.arange(len(ev)), 1 - ev, ls="--", lw=1.3, color=line.get_color())
        if random_basis and ts.token in random_basis:
            ev = np.asarray(random_basis[ts.token], dtype=float)
            a.plot(np.arange(len(ev)), 1 - ev, ls=":", lw=1.1, color=line.get_color(), alpha=0.8)
    if explained:
        a.plot([], [], "k--", lw=1.0, label="dashed: 1 − EV(k) on data")
    if random_basis:
        a.plot([], [], "k:", lw=1.0, label="dotted: same λ, random eigenvectors")
    a.set_xscale("symlog", linthresh=1)
    a.set_title(f"Layer {spec.layer}: top-k truncation of Q(u_token)")
    a.set_xlabel("k = eigenpairs kept (largest |λ|)")
    a.set_ylabel("‖Q − Q_k‖_F / ‖Q‖_F (solid); unexplained variance (dashed)")
    a.set_ylim(0, 1.02)
    a.legend(title="output token", fontsize=8)
    pts = faith.family("truncation") if faith else []
    if pts:
        k = [p.param for p in pts]
        plot_kl_against_noise_floor(b, k, pts, faith, "KL(original ‖ top-k MLP)")
        if token_trunc is not None and token_trunc.points:
            tk = [p.k for p in token_trunc.points]
            b.plot(
                tk,
                [p.kl for p in token_trunc.points],
                "s-",
                color="#2f855a",
                label=f"per-output-token truncation ({len(token_trunc.tokens)} tokens, direct path)",
            )
            b.plot(
                tk,
                [p.kl_noise for p in token_trunc.points],
                "s--",
                color="#2f855a",
                alpha=0.6,
                label="its noise floor (random logit change, same norm)",
            )
        b.set_xscale("log", base=2)
        b.set_title(f"Layer {spec.layer}: whole-MLP top-k truncation (per output direction of P)")
        b.set_xlabel("k = eigencomponents kept per output direction")
        b.set_ylabel("mean KL per token (nats, log scale)")
        b.legend(fontsize=8)
        for p in pts:
            b.annotate(
                f"{p.sym_rel_error:.2f}",
                (p.param, p.kl),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
    else:
        b.axis("off")
        b.text(0.5, 0.5, "whole-MLP truncation not evaluated", ha="center", va="center")
    fig.tight_layout()
    return fig


def plot_eigen_readouts(spec: LayerSpectra, n_tokens: int = 5) -> Figure:
    rows = len(spec.tokens)
    cols = max(len(ts.readouts) for ts in spec.tokens)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    for r, ts in enumerate(spec.tokens):
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(ts.readouts):
                ax.axis("off")
                continue
            ro = ts.readouts[c]
            token_bars(
                ax,
                ro.inputs,
                n_tokens,
                f"Q({ts.label}), v_{ro.index + 1}: λ = {ro.eigenvalue:+.3g}",
                "input score ê·v, ê = e/rms(e) (blue: highest, red: lowest)",
            )
    fig.suptitle(
        f"Layer {spec.layer}: input tokens aligned with the leading eigenvectors (both signs)", fontsize=11
    )
    fig.tight_layout()
    return fig


def plot_effective_ranks(spectra: Sequence[LayerSpectra], d: int) -> Figure:
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(spectra) + 3), 3.8))
    labels = [ts.label for ts in spectra[0].tokens]
    width = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        values = [s.tokens[j].effective_rank for s in spectra]
        ax.bar(np.arange(len(spectra)) + j * width - 0.4 + width / 2, values, width, label=label)
    ax.set_xticks(np.arange(len(spectra)), [f"layer {s.layer}" for s in spectra])
    ax.set_ylabel(f"effective rank (‖λ‖₁/‖λ‖₂)²  (max {d})")
    ax.set_title("Effective rank of Q(u_token) per layer")
    ax.legend(title="output token", fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- faithfulness


def plot_kl_against_noise_floor(ax, x: list, pts: list, faith: LayerFaithfulness, label: str) -> None:
    """KL of the replacements, the noise floor (mean ± std over seeds) and the mean-ablation ceiling; log y."""
    ax.plot(x, [p.kl for p in pts], "o-", color=POS_COLOR, label=label)
    ax.errorbar(
        x,
        [p.kl_noise for p in pts],
        yerr=[p.kl_noise_std for p in pts],
        fmt="s--",
        color="gray",
        capsize=3,
        label="noise floor (random Δ, same ‖Δ‖ per position)",
    )
    ax.axhline(faith.kl_mean_ablation, color=NEG_COLOR, ls=":", label="mean-ablated MLP")
    log_axis(ax, "y", [p.kl for p in pts], [p.kl_noise for p in pts])


def plot_rank_sweep(faith: LayerFaithfulness, h: int) -> Figure:
    pts = faith.family("als")
    r = [p.param for p in pts]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    a.plot(r, [p.rel_error for p in pts], "o-", label="‖B − B_r‖/‖B‖ (CP tensor)")
    a.plot(r, [p.sym_rel_error for p in pts], "s--", label="‖B^S − B_r^S‖/‖B^S‖ (symmetric part)")
    a.plot(r, [p.rel_output_error for p in pts], "^:", label="mean ‖ΔMLP‖ / mean ‖MLP‖ (on val)")
    a.set_title(f"Layer {faith.layer}: CP-rank sweep (implicit ALS, layer rank h = {h})")
    a.set_xlabel("CP rank r")
    a.set_ylabel("relative error")
    a.set_ylim(0, 1.05)
    a.legend(fontsize=8)
    plot_kl_against_noise_floor(b, r, pts, faith, "KL(original ‖ rank-r MLP)")
    b.set_title(f"Layer {faith.layer}: faithfulness of the rank-r MLP")
    b.set_xlabel("CP rank r")
    b.set_ylabel("mean KL per token (nats, log scale)")
    b.legend(fontsize=8)
    c.plot(r, [p.loss for p in pts], "o-", color=POS_COLOR, label="rank-r MLP in layer")
    c.axhline(faith.base_loss, color="black", ls="--", label=f"original model ({faith.base_loss:.3f})")
    c.set_title(f"Layer {faith.layer}: downstream validation loss")
    c.set_xlabel("CP rank r")
    c.set_ylabel("cross-entropy (nats/token)")
    c.legend(fontsize=8)
    for ax in (a, b, c):
        ax.set_xscale("log", base=2)
    fig.tight_layout()
    return fig


def plot_faithfulness_overview(faiths: Sequence[LayerFaithfulness]) -> Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    kls, ratios, ratio_ranks = [], [], []
    for f in faiths:
        pts = f.family("als")
        r = [p.param for p in pts]
        (line,) = a.plot(r, [p.kl for p in pts], "o-", label=f"layer {f.layer}")
        a.plot(r, [p.kl_noise for p in pts], "--", color=line.get_color(), alpha=0.6)
        ratio = [p.kl / p.kl_noise if p.kl_noise > 0 else np.nan for p in pts]
        b.plot(r, ratio, "o-", color=line.get_color(), label=f"layer {f.layer}")
        kls += [p.kl for p in pts] + [p.kl_noise for p in pts]
        ratios += [q for q in ratio if np.isfinite(q)]
        ratio_ranks += [x for x, q in zip(r, ratio, strict=True) if np.isfinite(q)]
    log_axis(a, "y", kls)
    a.set_xscale("log", base=2)
    a.set_title("KL of rank-r MLPs (solid) vs their noise floors (dashed)")
    a.set_xlabel("CP rank r")
    a.set_ylabel("mean KL per token (nats, log scale)")
    a.legend(fontsize=8)
    b.axhline(1, color="black", lw=0.8, ls="--", label="= noise floor")
    log_axis(b, "x", ratio_ranks, base=2)  # no finite ratio (noise floors <= 0): nothing drawn, keep x linear
    log_axis(b, "y", ratios)
    b.set_title("KL relative to the noise floor (< 1: errors the network ignores)")
    b.set_xlabel("CP rank r")
    b.set_ylabel("KL / noise-floor KL (log scale)")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- logit lens


def plot_logit_lens(lens: LogitLens) -> Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1, 1.4]})
    x = np.arange(len(lens.labels))
    a.plot(x, lens.loss.numpy(), "o-", color=POS_COLOR, label="cross-entropy vs next token")
    a.plot(x, lens.kl_to_final.numpy(), "s--", color=NEG_COLOR, label="KL(model ‖ lens)")
    a.set_xticks(x, lens.labels, rotation=45, ha="right")
    a.set_xlabel("residual stream after (block, sublayer)")
    a.set_ylabel("nats per token")
    a.set_title("Logit lens: loss of the residual stream read through the unembedding")
    a.legend(fontsize=8)
    T = lens.loss_by_position.shape[1]
    edges = (
        [0, 1, 2] + [2**e for e in range(2, 16) if 2**e < T] + [T]
    )  # 0, 1, 2-3, 4-7, …: log-spaced buckets
    data = np.stack(
        [lens.loss_by_position[:, a:b].mean(1).numpy() for a, b in zip(edges, edges[1:], strict=False)], 1
    )
    names = [str(a) if b - a == 1 else f"{a}–{b - 1}" for a, b in zip(edges, edges[1:], strict=False)]
    im = b.imshow(data, aspect="auto", cmap="viridis_r", interpolation="nearest")
    lo, hi = float(data.min()), float(data.max())
    for j in range(data.shape[0]):
        for t in range(data.shape[1]):
            dark = (data[j, t] - lo) > 0.5 * (hi - lo)  # viridis_r: high values are dark
            b.text(
                t,
                j,
                f"{data[j, t]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    b.set_xticks(np.arange(len(names)), names)
    b.set_yticks(x, lens.labels)
    b.set_xlabel("position in the sequence (buckets)")
    b.set_ylabel("residual stream after")
    b.set_title("Logit-lens cross-entropy by layer and position (mean over sequences)")
    b.grid(False)
    fig.colorbar(im, ax=b, label="cross-entropy (nats)")
    fig.tight_layout()
    return fig


def plot_logit_lens_example(lens: LogitLens, token_text: TokenText, n_positions: int = 16) -> Figure:
    T = min(n_positions, lens.top1.shape[1])
    n = len(lens.labels)
    fig, ax = plt.subplots(figsize=(0.85 * T + 2.5, 0.45 * n + 2.4))
    im = ax.imshow(lens.p_true[:, :T].numpy(), aspect="auto", cmap="Blues", vmin=0, vmax=1)
    for j in range(n):
        for t in range(T):
            p = float(lens.p_true[j, t])
            label = token_text.label(int(lens.top1[j, t]))
            ax.text(
                t,
                j,
                _clip(label),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if p > 0.6 else "black",
            )
    ax.set_xticks(
        np.arange(T), [_clip(token_text.label(int(i))) for i in lens.example_x[:T]], rotation=45, ha="right"
    )
    ax.set_yticks(np.arange(n), lens.labels)
    ax.set_xlabel("input token at each position (the true next token is the one to its right)")
    ax.set_ylabel("residual stream after")
    ax.set_title(
        "Logit lens on one validation sequence: cell text = top-1 prediction, colour = p(true next token)"
    )
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="probability of the true next token", fraction=0.03, pad=0.02)
    fig.tight_layout()
    return fig


def _clip(label: str, width: int = 11) -> str:
    return label if len(label) <= width else label[: width - 2] + "…'"


# ---------------------------------------------------------------- steering


def plot_steering(curve: SteeringCurve) -> Figure:
    al = curve.alphas.numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12.5, 4.4))
    left = [curve.measured_pos, curve.measured_neg, curve.predicted_pos, curve.predicted_neg]
    right = [curve.odd_measured, curve.odd_predicted, curve.even_measured, curve.even_predicted]
    a.plot(al, curve.measured_pos.numpy(), "o-", color=POS_COLOR, label="measured, +α")
    a.plot(al, curve.measured_neg.numpy(), "o-", color=NEG_COLOR, label="measured, −α")
    a.plot(al, curve.predicted_pos.numpy(), "--", color=POS_COLOR, label="no-norm prediction, +α")
    a.plot(al, curve.predicted_neg.numpy(), "--", color=NEG_COLOR, label="no-norm prediction, −α")
    a.axhline(curve.saturation, color="black", ls=":", label="limit ‖B(ŝ,ŝ) − MLP(z)‖ (|α| → ∞)")
    if math.isclose(curve.s_rms, curve.resid_rms, rel_tol=1e-6):
        unit = "α = 1: rms(αs) = mean rms of the residual"
    else:
        unit = f"α = 1: s as given, rms {curve.s_rms:.3g} vs the residual's {curve.resid_rms:.3g}"
    a.set_xlabel(f"|α|  (steering vector s added at resid_mid; {unit})")
    a.set_ylabel("mean ‖ΔMLP‖ per position")
    a.set_title(f"Layer {curve.layer}: MLP output change under steering")
    a.legend(fontsize=8)
    b.plot(al, curve.odd_measured.numpy(), "o-", color="#6b46c1", label="odd part, measured")
    b.plot(al, curve.odd_predicted.numpy(), "--", color="#6b46c1", label="odd part, prediction 2α·M_s z")
    b.plot(al, curve.even_measured.numpy(), "o-", color="#2f855a", label="even part, measured")
    b.plot(al, curve.even_predicted.numpy(), "--", color="#2f855a", label="even part, prediction α²·B(s,s)")
    for ax, ys in ((a, left), (b, right)):
        log_axis(ax, "x", al)
        log_axis(ax, "y", *[y.numpy() for y in ys])
    b.set_xlabel("|α|")
    b.set_ylabel("mean norm")
    b.set_title("Sign loss: odd part ½‖Δ(α) − Δ(−α)‖ vanishes, even part saturates")
    b.legend(fontsize=8)
    fig.suptitle(curve.description, fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- diffing


def plot_weight_diff_overview(diffs: Sequence[LayerWeightDiff]) -> Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    layers = [d.layer for d in diffs]
    a.bar(np.arange(len(diffs)), [d.relative_change for d in diffs], color=POS_COLOR)
    a.set_xticks(np.arange(len(diffs)), [f"layer {i}" for i in layers])
    a.set_ylabel("‖B_ft − B_base‖ / ‖B_base‖")
    a.set_title("Relative change of each MLP tensor")
    for d in diffs:
        if d.rank_errors:
            r, e = zip(*d.rank_errors, strict=True)
            b.plot(r, e, "o-", label=f"layer {d.layer}")
    b.set_xscale("log", base=2)
    b.set_ylim(0, 1.05)
    b.set_xlabel("CP rank r of the compressed difference")
    b.set_ylabel("relative error ‖D − D_r‖/‖D‖")
    b.set_title("How low-rank is the weight difference D = B_ft − B_base?")
    if any(d.rank_errors for d in diffs):
        b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_diff_components(diff: LayerWeightDiff, n_tokens: int = 5) -> Figure:
    comps = diff.components
    fig, axes = plt.subplots(len(comps), 3, figsize=(13, 2.9 * len(comps)), squeeze=False)
    for r, comp in enumerate(comps):
        head = f"term {r + 1} (‖·‖ = {comp.magnitude:.3g})"
        token_bars(axes[r, 0], comp.output, n_tokens, f"{head}: output W_U·a", "logit score")
        for m, tops in enumerate(comp.inputs[:2]):
            token_bars(
                axes[r, m + 1], tops, n_tokens, f"{head}: input mode {m + 1}", "input score ê·b, ê = e/rms(e)"
            )
    fig.suptitle(
        f"Layer {diff.layer}: largest terms of the rank-{diff.rank} CP of B_ft − B_base "
        f"(rel. error {diff.rel_error:.2f}); signs of a term's factors are defined only jointly",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def plot_activation_diff(ad: ActivationDiff) -> Figure:
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    a, b, c, d = axes.ravel()
    P = ad.diff_norm.shape[1]
    pos = np.arange(P)
    chosen = [j for j, label in enumerate(ad.labels) if label == "embed" or label.endswith("mlp")]
    for j in chosen:
        (line,) = a.plot(pos, ad.diff_norm[j].numpy(), "o-", ms=3, label=f"after {ad.labels[j]}")
        b.plot(
            pos, ad.cos_to_mean[j].numpy(), "o-", ms=3, color=line.get_color(), label=f"after {ad.labels[j]}"
        )
    a.set_xlabel("position in the sequence")
    a.set_ylabel("‖δ_p‖ = ‖mean(h_ft − h_base)‖ (log scale)")
    log_axis(a, "y", *[ad.diff_norm[j].numpy() for j in chosen])
    a.set_title("Mean residual difference by position (first position: attention sink)")
    a.legend(fontsize=7)
    b.set_xlabel("position in the sequence")
    b.set_ylabel("cosine(δ_p, mean of δ over p ≥ 1)")
    b.set_ylim(-1.05, 1.05)
    b.set_title("Is the difference the same direction at every position?")
    b.legend(fontsize=7)
    n = len(ad.pca_explained)
    c.bar(np.arange(1, n + 1), ad.pca_explained.numpy(), color=POS_COLOR)
    c.set_xlabel("principal direction")
    c.set_ylabel("fraction of ‖h_ft − h_base‖² (positions ≥ 1)")
    c.set_title(f"PCA of per-sequence differences after {ad.pca_point}")
    d.plot(pos, ad.kl_by_position.numpy(), "o-", color=NEG_COLOR)
    d.set_xlabel("position in the sequence")
    d.set_ylabel("mean KL(base ‖ fine-tuned) (nats)")
    d.set_title("Output difference by position")
    fig.tight_layout()
    return fig


def plot_token_readouts(
    items: Sequence[tuple[str, TopTokens]], xlabel: str, suptitle: str, n_tokens: int = 6
) -> Figure:
    cols = min(3, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.1 * rows), squeeze=False)
    for ax, (title, top) in zip(axes.ravel(), items, strict=False):
        token_bars(ax, top, n_tokens, title, xlabel)
    for ax in axes.ravel()[len(items) :]:
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the model-diffing lab


def plot_fact_vs_disturbance(
    names: Sequence[str], margins: Sequence[float], kls: Sequence[float], base_margin: float | None = None
) -> Figure:
    """One point per fine-tune: fact margin (y) against KL(base ‖ ft) on validation text (x).

    The x axis is logarithmic, and symmetric-log down to 0 when a fine-tune leaves validation text exactly
    unchanged (KL = 0, e.g. LoRA behind a separator that never occurs there), so that point is drawn too.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5))
    x, y = np.asarray(kls, dtype=float), np.asarray(margins, dtype=float)
    colors = plt.get_cmap("tab10")(np.arange(len(x)) % 10)
    for i, (name, xi, yi) in enumerate(zip(names, x, y, strict=True)):
        ax.scatter(
            [xi], [yi], s=60, color=colors[i], zorder=3, label=f"{name} (KL {xi:.3g}, margin {yi:.2f})"
        )
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(6, 4 - 10 * (i % 2)), fontsize=8)
    if base_margin is not None and np.isfinite(base_margin):
        ax.axhline(base_margin, color="gray", ls="--", lw=1, label=f"base model (margin {base_margin:.2f})")
    ax.axhline(0, color="black", lw=0.6)
    positive = x[np.isfinite(x) & (x > 0)]
    if len(positive) and (x[np.isfinite(x)] <= 0).any():
        ax.set_xscale("symlog", linthresh=float(positive.min()) / 2, linscale=0.5)
        ax.set_xlim(left=-float(positive.min()) / 4)
    else:
        log_axis(ax, "x", x)
    if len(positive):
        ax.set_xlim(right=float(positive.max()) * 1.6)  # room for the labels of the rightmost points
    ax.legend(fontsize=7, loc="best")
    ax.set_xlabel("disturbance: mean KL(base ‖ ft) on validation text (nats/token)")
    ax.set_ylabel("fact strength: mean logit margin of the planted line")
    ax.set_title("Learned the fact vs disturbed the rest")
    fig.tight_layout()
    return fig


def plot_order_shares(
    names: Sequence[str],
    components: Sequence[str],
    rows: Sequence[Sequence[Sequence[float]]],
) -> Figure:
    """Grouped bars, one group per component, one bar per fine-tune. rows[f][c] = (‖Δ‖/‖base‖, first-order
    balance, share of order 1, 2, 3); panels: the relative change (log), the balance (0..1), the first-order
    share, and the second and third orders' shares (log: they are small for small steps). NaN: no bar."""
    data = np.asarray(rows, dtype=float)  # [n_ft, n_comp, 5]
    n_ft, n_comp = data.shape[:2]
    titles = [
        "‖Δ‖ / ‖base‖ (log)",
        "first-order balance\n(first factor's term)",
        "first-order share",
        "second-order share (log)",
        "third-order share (log, MLP)",
    ]
    fig, axes = plt.subplots(
        len(titles), 1, figsize=(max(9, 0.35 * n_comp * max(n_ft, 2) + 3), 13), sharex=True
    )
    width = 0.8 / max(n_ft, 1)
    x = np.arange(n_comp)
    for k, ax in enumerate(axes):
        for f in range(n_ft):
            vals = data[f, :, k]
            pos, ok = x + (f - (n_ft - 1) / 2) * width, np.isfinite(vals)
            bars = ax.bar(pos, np.where(ok, vals, 0.0), width, label=names[f])
            # a tick at each measured value, so a true 0 is told apart from a missing bar
            ax.plot(pos[ok], vals[ok], "_", ms=max(3.0, 60 * width), color=bars.patches[0].get_facecolor())
        ax.set_ylabel(titles[k], fontsize=8)
        if k in (0, 3, 4):
            log_axis(ax, "y", data[:, :, k])
        else:
            ax.set_ylim(-0.05, max(1.05, float(np.nanmax(np.append(data[:, :, k].ravel(), 0.0))) * 1.05))
    axes[0].legend(fontsize=7, ncol=min(n_ft, 5))
    axes[0].set_title("Orders of the weight difference per component")
    axes[-1].set_xticks(x, list(components), rotation=45, ha="right")
    fig.tight_layout()
    return fig


def plot_position_diff(names: Sequence[str], acts: Sequence[ActivationDiff], point: int = -1) -> Figure:
    """‖δ_p‖ by position at one lens point (default: after the last block), one line per fine-tune, and the
    cosine of δ_p with the mean over p ≥ 1."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.4))
    norms = []
    for name, act in zip(names, acts, strict=True):
        n = act.diff_norm[point].numpy()
        norms.append(n)
        label = name if np.any(n > 0) else f"{name} (no difference)"
        (line,) = a.plot(np.arange(len(n)), n, "o-", ms=2.5, lw=1, label=label)
        b.plot(np.arange(len(n)), act.cos_to_mean[point].numpy(), "o-", ms=2.5, lw=1, color=line.get_color())
    where = acts[0].labels[point] if acts else ""
    a.set_xlabel("position p in the window")
    a.set_ylabel(f"‖δ_p‖ after {where} (log scale)")
    log_axis(a, "y", *norms)
    a.set_title("Mean activation difference by position (p = 0: attention sink)")
    a.legend(fontsize=7)
    b.set_xlabel("position p in the window")
    b.set_ylabel("cosine(δ_p, mean of δ over p ≥ 1)")
    b.set_ylim(-1.05, 1.05)
    b.set_title("Same direction at every position?")
    fig.tight_layout()
    return fig


def plot_diff_steering(res: SteeringResult) -> Figure:
    """KL(ft ‖ steered base) against α; the steered base's loss change on the fine-tune's data and validation."""
    al = res.alphas.numpy()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12.5, 4.4))
    a.plot(al, res.kl.numpy(), "o-", color=POS_COLOR, label="KL(ft ‖ steered base)")
    a.axhline(res.kl_base, color="gray", ls="--", label=f"KL(ft ‖ base) = {res.kl_base:.3g}")
    a.set_xlabel("α (α = 1: the measured mean difference)")
    a.set_ylabel("mean KL per token (nats)")
    a.set_title(f"Steering with the {res.vector.kind} difference at {res.vector.label}")
    a.legend(fontsize=8)
    b.plot(al, res.val_loss.numpy() - res.base_val_loss, "s-", color="gray", label="validation text")
    if res.fact_loss is not None:
        b.plot(al, res.fact_loss_change.numpy(), "o-", color=NEG_COLOR, label="the fine-tune's data")
        b.axhline(
            res.ft_fact_loss - res.base_fact_loss,
            color=NEG_COLOR,
            ls=":",
            label="the fine-tune itself, its data",
        )
    b.axhline(0, color="black", lw=0.6)
    b.set_xlabel("α")
    b.set_ylabel("loss of the steered base − base (nats/token)")
    b.set_title("Does steering move the base towards the fine-tune's data?")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig
