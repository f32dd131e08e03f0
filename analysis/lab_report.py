"""The page of the model-diffing lab: ``write_lab_report`` turns ``analysis.lab.run_lab``'s results into
DIR/index.html, report.md and figures; ``build_lab_report`` runs both (``python -m analysis.lab``)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from analysis import plots
from analysis.cli import torch_threads
from analysis.diff import diff_terms_table
from analysis.html import Report, Table
from analysis.lab import ComponentOrders, LabOptions, LabResults, run_lab
from analysis.tokens import display_text


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _tokens(top, n: int = 5) -> str:
    return " ".join(f"'{e.text}'" for e in top[:n])


def write_lab_report(opts: LabOptions, res: LabResults, elapsed: float) -> Path:
    base_ck, tt = res.base, res.token_text
    base = base_ck.model
    names = [r.ft.name for r in res.finetunes]
    r = Report(f"tnt model-diffing lab — {base_ck.name} and {len(names)} fine-tune(s)", opts.out)

    r.heading("Summary")
    r.text(
        f"Base `{base_ck.path}` ({base.config.n_layer} layers, d = {base.config.d_model}, MLP {base.config.mlp}). "
        f"Planted fact from `{res.fact.path}`: {len(res.fact.prompts)} held-out prompts"
        + (f" ({res.fact.description})" if res.fact.description else "")
        + f". Disturbance on {res.val.x.shape[0]} validation windows of {res.val.x.shape[1]} tokens "
        "(the base's validation shards)."
    )
    fact_cols = res.base_fact_loss is not None
    header = [
        "model",
        "recipe",
        "fact margin",
        "planted top-1",
        "planted − true",
        "leak on controls",
        "KL(base ‖ ft)",
        "Δ val loss",
    ]
    if fact_cols:
        header.append("Δ loss on fact data")
    rows = [
        [
            "base",
            "—",
            _f(res.base_margin.margin),
            f"{res.base_margin.accuracy:.0%}",
            _f(res.base_margin.competing),
            _f(res.base_margin.leak),
            "0",
            f"({res.base_val_loss:.3f})",
        ]
        + ([f"({res.base_fact_loss:.3f})"] if fact_cols else [])
    ]
    for f in res.finetunes:
        rows.append(
            [
                f.ft.name,
                f.ft.recipe.describe(tt),
                _f(f.margin.margin),
                f"{f.margin.accuracy:.0%}",
                _f(f.margin.competing),
                _f(f.margin.leak),
                _f(f.kl, ".4f"),
                _f(f.val_loss - res.base_val_loss, "+.4f"),
            ]
            + ([_f(f.fact_loss - res.base_fact_loss, "+.4f")] if fact_cols else [])
        )
    r.table(
        Table(
            header,
            rows,
            "Per fine-tune: fact margin = mean over held-out prompts of z(planted token) − max other z, teacher-"
            "forced over the planted line (> 0: planted token on top); planted top-1 = fraction of its tokens "
            "predicted top-1; planted − true = z(planted) − z(true) at the answer position; leak = z(planted) − "
            "z(true next token) at the end of natural validation contexts ending in the fact's trigger; "
            "KL and loss changes on validation text (base row: its losses in brackets)",
        )
    )
    r.figure(
        plots.plot_fact_vs_disturbance(
            names,
            [f.margin.margin for f in res.finetunes],
            [f.kl for f in res.finetunes],
            res.base_margin.margin,
        ),
        "fact_vs_disturbance",
        "The key figure: how strongly each fine-tune learned the planted fact (mean logit margin on held-out "
        "prompts) against how much it disturbed unrelated text (mean KL(base ‖ ft) on validation windows). "
        "Up and to the left is better: the fact learned, the rest left alone.",
    )

    r.heading("Orders of the weight difference")
    r.text(
        "Each MLP tensor's change ΔB = B_ft − B_base split exactly into first-, second- and third-order terms in the "
        "changed factors (dP⊗W⊗V + …; dP⊗dW⊗V + …; dP⊗dW⊗dV), and each attention layer's QK circuit W_Qᵀ W_K "
        "(per head) into dQᵀK + QᵀdK + dQᵀdK, OV = W_O W_V into dO·V + O·dV + dO·dV (decomp.orders; ln1 and ln2 "
        "gains folded in). Share = ‖term‖ / ‖Δ‖ (terms are not orthogonal: shares need not sum to 1). A small "
        "step is first order; LoRA targets decide which factors move, and a separator mask which positions see "
        "the change."
    )
    comps = res.finetunes[0].orders
    r.figure(
        plots.plot_order_shares(
            names, [c.label for c in comps], [[_order_row(c) for c in f.orders] for f in res.finetunes]
        ),
        "order_shares",
        "Per component (x) and fine-tune (bars): ‖Δ‖/‖base‖; the balance of the first-order terms (the first "
        "factor's term over the sum of their norms: QK dQᵀK, OV dO·V, MLP dP⊗W⊗V; 0 = only the later factors "
        "moved); the shares of the first, second and third order (‖term‖ / ‖Δ‖). Missing bars: the component "
        "did not change (or has no such order).",
    )
    rows = []
    for f in res.finetunes:
        for c in f.orders:
            rows.append(
                [
                    f.ft.name,
                    c.label,
                    _f(c.relative, ".3g") if not c.is_zero else "unchanged",
                    _f(c.share(1), ".3f"),
                    _f(c.share(2), ".3f"),
                    _f(c.share(3), ".3f"),
                    c.first_split() or c.note,
                ]
            )
    r.table(
        Table(
            ["fine-tune", "component", "‖Δ‖/‖base‖", "1st", "2nd", "3rd", "first order by changed factor"],
            rows,
            "Share of each order of the weight change (‖term‖ / ‖Δ‖) per component",
        )
    )

    r.heading(f"Weight-based diff read as tokens ({res.weight_diff_name})")
    r.text(res.freq_note)
    for d in res.weight_diffs:
        if not d.components:
            r.note(f"Layer {d.layer}: {d.note or 'no components'}.")
            continue
        r.figure(
            plots.plot_diff_components(d, n_tokens=5),
            f"layer{d.layer}_diff_terms",
            f"Layer {d.layer} of {res.weight_diff_name}: the largest rank-one terms of the rank-{d.rank} CP of "
            f"B_ft − B_base (relative change {d.relative_change:.3g}, fit error {d.rel_error:.2f}); output a read "
            "through W_U, inputs b, c through W_E.",
        )
        r.table(diff_terms_table(d))

    r.heading("Activation-based diff (first-position dominance, PCA, logit lens)")
    last = res.finetunes[0].act.labels[-1]
    r.text(
        f"δ_p = mean over {res.val.x.shape[0]} validation windows of h_ft − h_base at position p (first "
        f"{res.n_positions} positions), after the last block ({last}). The first position is an attention sink: "
        "a fine-tune that learned a context-independent bias shows it as ‖δ_0‖ ≫ ‖δ_p≥1‖ (seed 000). Mixing "
        "unrelated data into the fine-tune should lower the ratio."
    )
    rows = []
    for f in res.finetunes:
        a = f.act
        rows.append(
            [
                f.ft.name,
                f.ft.recipe.describe(tt),
                _f(f.first_ratio, ".2f"),
                _f(float(a.diff_norm[-1, 0]), ".3g"),
                _f(float(a.diff_norm[-1, 1:].mean()), ".3g"),
                _f(float(a.cos_to_mean[-1, 0]), ".2f"),
                f"{float(a.pca_explained[0]):.0%}",
                *(
                    [_tokens(a.mean_lens[last].positive), _tokens(a.mean_lens[last].negative)]
                    if float(a.diff_norm[-1, 1:].mean()) > 0
                    else ["(no difference)", ""]
                ),
            ]
        )
    r.table(
        Table(
            [
                "fine-tune",
                "recipe",
                "‖δ_0‖ / mean ‖δ_p≥1‖",
                "‖δ_0‖",
                "mean ‖δ_p≥1‖",
                "cos(δ_0, δ̄_p≥1)",
                "PC1 share",
                "lens of δ̄ (p ≥ 1): raised",
                "lowered",
            ],
            rows,
            "First-position dominance after the last block; PC1 share = fraction of the second moment of the "
            "per-window differences (positions ≥ 1) along the top principal direction; logit lens W_U·(g_f ⊙ δ̄)",
            mono_columns=(7, 8),
        )
    )
    r.figure(
        plots.plot_position_diff(names, [f.act for f in res.finetunes]),
        "position_diff",
        "‖δ_p‖ by position after the last block, one line per fine-tune (left), and the cosine of δ_p with the "
        "mean over p ≥ 1 (right).",
    )
    r.figure(
        plots.plot_token_readouts(
            [(f"{f.ft.name}: δ̄ (p ≥ 1)", f.act.mean_lens[last]) for f in res.finetunes],
            "logit-lens score W_U·(g_f ⊙ δ)",
            f"Logit lens of the mean activation difference after {last}",
        ),
        "activation_diff_lens",
        "The mean difference (positions ≥ 1) read through the unembedding, per fine-tune.",
    )

    s = res.steering
    if s is not None:
        r.heading(f"Steering the base with the difference ({res.steer_name})")
        r.text(
            f"{s.vector.describe()}. The base computes h ← h + α·s there (α = 1: the measured difference). KL(ft ‖ "
            f"steered base) on {s.n_val_tokens} validation tokens (α = 0: KL(ft ‖ base) = {s.kl_base:.4f}); the "
            "steered base's loss on the fine-tune's data minus the base's"
            + (
                f" ({s.n_fact_tokens} false-fact validation tokens; the fine-tune itself: {s.ft_fact_loss - s.base_fact_loss:+.4f})"
                if s.fact_loss is not None
                else " (no false-fact shard found)"
            )
            + "."
        )
        header = ["α", "KL(ft ‖ steered)", "Δ val loss"] + (
            ["Δ loss on fact data"] if s.fact_loss is not None else []
        )
        rows = [
            [f"{a:g}", f"{float(s.kl[i]):.4f}", f"{float(s.val_loss[i]) - s.base_val_loss:+.4f}"]
            + ([f"{float(s.fact_loss_change[i]):+.4f}"] if s.fact_loss is not None else [])
            for i, a in enumerate(s.alphas.tolist())
        ]
        r.table(Table(header, rows, "Steering sweep (losses relative to the unsteered base)"))
        r.figure(
            plots.plot_diff_steering(s),
            "steering",
            "Left: KL(ft ‖ steered base) against α (dashed: unsteered). Right: the steered base's loss change on "
            "the fine-tune's data and on validation text; dotted: the fine-tune's own change on its data.",
        )
        if s.curve is not None:
            c = s.curve
            r.figure(
                plots.plot_steering(c),
                "steering_bilinear",
                f"The bilinear MLP of layer {c.layer}: measured change of its output when α·s is added at "
                f"blocks.{c.layer}.hook_resid_mid, against the weight-only prediction 2α·M_s z + α²·B(s,s) (norm "
                "scale frozen at the unsteered position; analysis.steering).",
            )
            r.table(
                Table(
                    ["α", "measured ‖ΔMLP‖", "predicted", "relative error"],
                    [
                        [
                            f"{a:g}",
                            f"{float(c.measured_pos[i]):.4g}",
                            f"{float(c.predicted_pos[i]):.4g}",
                            f"{float(c.prediction_error[i]):.3f}",
                        ]
                        for i, a in enumerate(c.alphas.tolist())
                    ],
                    f"Layer {c.layer}: predicted vs measured response to +α·s",
                )
            )
        elif s.note:
            r.note(s.note)
        if s.samples:
            r.text(
                f"Greedy continuations of the first held-out prompt (its last line: `{_last_line(s.prompt)}`)."
            )
            r.table(
                Table(
                    ["model", "continuation"],
                    [[k, display_text(v)] for k, v in s.samples],
                    "Greedy samples (newlines shown as \\n)",
                    mono_columns=(1,),
                )
            )

    r.heading("Method")
    r.text(
        "Fact margin: teacher-forced logits of each held-out prompt's context followed by the planted line, real "
        "vocabulary rows only. Disturbance: KL(base ‖ ft) of next-token distributions, mean over validation "
        "positions. Orders: decomp.orders (implicit Gram-matrix norms, float64). Weight diff: decomp's exact CP of "
        f"B_ft − B_base compressed to rank {opts.rank} ({opts.als_iters} ALS iterations max). Activation diff: "
        "analysis.model_diff.activation_diff. Steering: analysis.diff_steering. Models: merged weights for "
        "weight-based parts; a LoRA fine-tune trained with a separator mask runs with its adapters (the mask) for "
        "every function-level measure."
    )
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items())
    r.text(f"Computed in {elapsed:.1f} s ({stages}; the rest: figures and the page).")
    return r.write()


def _order_row(c: ComponentOrders) -> tuple[float, float, float, float, float]:
    return (math.nan if c.is_zero else c.relative, c.balance(), c.share(1), c.share(2), c.share(3))


def _last_line(text: str | None) -> str:
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def build_lab_report(opts: LabOptions) -> Path:
    """Run the lab and write DIR/index.html, report.md and figures; returns the path of index.html."""
    start = time.perf_counter()
    with torch_threads(opts.threads):
        res = run_lab(opts)
        return write_lab_report(opts, res, time.perf_counter() - start)
